//! Any bytes as a model file: a checked model or a reason, never a panic or a
//! hang. The checksum is not compared on a second read, so damaged content
//! reaches the checks behind it; a model that passes them scores and explains
//! any input (zeros, missing values, extremes) with a score in [0, 1].
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use vigil_model::Model;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("models/fuzz.json");
    let _ = vigil_model::file::parse(path, data, None);
    if let Ok(model) = vigil_model::file::parse_ignoring_checksum(path, data) {
        let n = model.inputs().len();
        for x in [0.0, f64::NAN, 1e300, -1e300] {
            let inputs = vec![x; n];
            let score = model.score(&inputs);
            assert!((0.0..=1.0).contains(&score) || score.is_nan(), "score {score} out of [0, 1]");
            model.contributions(&inputs, &mut |i, _| assert!(i < n, "contribution for input {i} of {n}"));
        }
        let _ = model.baseline();
    }
});
