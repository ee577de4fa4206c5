//! Any bytes as a confirmed outcome, read as every entry point reads one
//! (checked against the demo pipeline's label features): a label or a reason,
//! never a panic; an accepted label round-trips through its JSON.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vigil_core::feature::FeatureDef;

fn features() -> &'static [FeatureDef] {
    static FEATURES: OnceLock<Vec<FeatureDef>> = OnceLock::new();
    FEATURES.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        vigil_core::PipelineConfig::load(&root.join("pipelines/demo.toml")).expect("demo pipeline").features
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(label) = vigil_features::labels::read(data, features()) {
        let again = vigil_features::labels::read(&label.to_json(), features()).expect("a valid label's own JSON must read");
        assert_eq!(label, again);
    }
});
