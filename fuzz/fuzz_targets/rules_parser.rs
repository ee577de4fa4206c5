//! Any rule file text, checked against the shipped demo pipeline's features and a
//! list: loading returns rules or located errors, never a panic or a hang.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vigil_rules::{RuleSet, Schema};

fn schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let config = vigil_core::PipelineConfig::load(&root.join("pipelines/demo.toml")).expect("demo pipeline");
        Schema { features: config.features }
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let lists = [(PathBuf::from("lists/high_risk_countries.txt"), "BR\nNG\n".to_owned())];
        let _ = RuleSet::build(&[(PathBuf::from("fuzz.rules"), text.to_owned())], &lists, schema());
    }
});
