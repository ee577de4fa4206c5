//! Any text as a pipeline file: a checked configuration or located problems,
//! never a panic or a hang.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = vigil_core::PipelineConfig::parse(Path::new("pipelines/fuzz.toml"), text);
    }
});
