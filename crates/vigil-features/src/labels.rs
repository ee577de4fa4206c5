//! The one path by which confirmed outcomes (chargebacks, analyst verdicts)
//! reach the label features, whether they come from the labels topic, the
//! HTTP API or the command line: [`read`] accepts a label as every entry point
//! does, [`record`] counts it in the store, once per transaction id.

use vigil_core::feature::FeatureDef;
use vigil_core::{EventError, Label};

use crate::{FeatureError, FeatureStore, LabelOutcome};

/// Reads a label (a JSON object) and checks it carries what the label
/// features need: a fraud label must name every entity field they count by.
pub fn read(bytes: &[u8], features: &[FeatureDef]) -> Result<Label, EventError> {
    let label = Label::from_json(bytes)?;
    label.missing_for(features)?;
    Ok(label)
}

/// What recording labels did, one outcome per label, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub outcomes: Vec<LabelOutcome>,
}

impl Recorded {
    /// Frauds newly counted by the label features.
    pub fn counted(&self) -> usize {
        self.outcomes.iter().filter(|o| **o == LabelOutcome::Counted).count()
    }

    /// Labels that changed nothing: redelivered frauds and genuine verdicts.
    pub fn unchanged(&self) -> usize {
        self.outcomes.len() - self.counted()
    }
}

/// Records checked labels ([`read`]) in `store`: each fraud is counted once
/// per transaction id, so a redelivered label changes nothing.
pub async fn record(store: &dyn FeatureStore, labels: &[&Label]) -> Result<Recorded, FeatureError> {
    Ok(Recorded { outcomes: store.apply_labels(labels).await? })
}
