//! Vigil's core types, at the start of the data flow.
//!
//! Everything downstream (rules, features, model, engine, stream, HTTP and offline
//! tools) speaks in these types: a validated [`Event`] goes in, a [`Decision`] comes
//! out. Feature definitions and the pipeline configuration live here too because
//! every later stage needs to agree on them; nothing here performs IO beyond reading
//! a config file.

mod currency;
pub mod decision;
pub mod event;
pub mod feature;
pub mod label;
pub mod pipeline;
pub mod suggest;

pub use decision::{Action, Decision, ModelFactor, Reason};
pub use event::{Event, EventError, EventField, Fields};
pub use feature::{Aggregate, EntityKey, FeatureDef, FeatureValue, FeatureVector};
pub use label::{Label, Verdict};
pub use pipeline::{ConfigError, PipelineConfig, Problem};
