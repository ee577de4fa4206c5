//! Vigil's core types, at the start of the data flow.
//!
//! Everything downstream (rules, features, model, engine, stream, HTTP and offline
//! tools) speaks in these types: a validated [`Event`] goes in, a [`Decision`] comes
//! out. Feature definitions and the pipeline configuration live here too because
//! every later stage needs to agree on them; nothing here performs IO beyond reading
//! a config file.

mod currency;
pub mod decision;
pub mod diagnostic;
pub mod event;
pub mod feature;
pub mod label;
pub mod pipeline;
pub mod signature;
pub mod suggest;
pub mod trace;

/// FNV-1a: a hash that is the same in every process, version and platform, for
/// anything stored or derived from ids (distinct-value sets kept in Redis,
/// generated report delays).
pub fn stable_hash(text: &str) -> u64 {
    let mut h = StableHasher::default();
    h.write(text.as_bytes());
    h.finish()
}

/// [`stable_hash`] over several parts, fed one after another.
#[derive(Debug, Clone, Copy)]
pub struct StableHasher(u64);

impl Default for StableHasher {
    fn default() -> Self {
        StableHasher(0xcbf2_9ce4_8422_2325)
    }
}

impl StableHasher {
    pub fn write(&mut self, bytes: &[u8]) {
        self.0 = bytes.iter().fold(self.0, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3));
    }

    /// Writes `bytes` after their length, so that consecutive parts cannot run
    /// into each other (`"ab" + "c"` differs from `"a" + "bc"`).
    pub fn part(&mut self, bytes: &[u8]) {
        self.write(&(bytes.len() as u64).to_le_bytes());
        self.write(bytes);
    }

    pub fn finish(&self) -> u64 {
        self.0
    }
}

pub use decision::{Action, ChallengerScore, Decision, FeatureNames, Features, ModelFactor, Reason};
pub use diagnostic::Diagnostic;
pub use event::{Event, EventError, EventField, Fields};
pub use feature::{Aggregate, EntityKey, FeatureDef, FeatureValue, FeatureVector};
pub use label::{Label, Verdict};
pub use pipeline::{ConfigError, PipelineConfig};
