//! Pipeline configuration (`pipelines/*.toml`): parse, then validate, with no IO
//! beyond reading the file. Every problem is reported at once, each with its
//! place ([`Diagnostic`]). One module per section, each with its types, its raw
//! (as parsed) form and its validation.

mod api;
mod features;
mod kafka;
mod model;
mod review;
mod rules;
mod store;
mod thresholds;
mod unknown_keys;

use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

pub use crate::diagnostic::Diagnostic;
use crate::diagnostic::Diagnostics;
use crate::feature::FeatureDef;
pub use api::{ApiClient, ApiConfig, JwtAlgorithm, JwtConfig, SecretSource, TlsFiles};
pub use features::{MAX_WINDOW_S, MIN_WINDOW_S, RESERVED_NAMES};
pub use kafka::KafkaConfig;
pub use model::ModelConfig;
pub use review::{
    CaseEntity, HoldAction, OidcConfig, QueueDef, QueueWhen, ReviewConfig, WebhookDef, WebhookEvent, DEFAULT_QUEUE,
};
pub use store::{DegradedPolicy, StoreBackend, StoreConfig, StoreMode};
pub use thresholds::{DecisionFeatures, Thresholds};

/// A config that could not be read or does not validate.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}", problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"))]
    Invalid { problems: Vec<Diagnostic> },
}

/// A validated pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineConfig {
    pub file: PathBuf,
    pub name: String,
    pub kafka: Option<KafkaConfig>,
    pub store: StoreConfig,
    /// Rule file or folder, resolved against the config file's folder.
    pub rules_path: PathBuf,
    pub model: Option<ModelConfig>,
    pub thresholds: Thresholds,
    /// Which decisions carry every feature value (`[decision] features`).
    pub decision_features: DecisionFeatures,
    pub features: Vec<FeatureDef>,
    /// The HTTP API, when the pipeline serves one.
    pub api: Option<ApiConfig>,
    /// The review server's settings; the defaults when the section is absent.
    pub review: ReviewConfig,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    name: Option<Spanned<String>>,
    kafka: Option<kafka::RawKafka>,
    store: Option<store::RawStore>,
    rules: Spanned<rules::RawRules>,
    model: Option<model::RawModel>,
    decision: Option<thresholds::RawDecision>,
    #[serde(default)]
    features: Vec<Spanned<features::RawFeature>>,
    api: Option<Spanned<api::RawApi>>,
    review: Option<review::RawReview>,
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

impl PipelineConfig {
    /// Reads and validates a pipeline file.
    pub fn load(path: &Path) -> Result<PipelineConfig, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Io { path: path.to_path_buf(), source })?;
        Self::parse(path, &text)
    }

    /// Validates pipeline text as if read from `path` (relative paths inside it are
    /// resolved against `path`'s folder).
    pub fn parse(path: &Path, text: &str) -> Result<PipelineConfig, ConfigError> {
        let mut p = Diagnostics::new(path, text);
        let Some(raw) = unknown_keys::read::<RawPipeline>(text, &mut p) else {
            return Err(ConfigError::Invalid { problems: p.list });
        };
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let resolve = |s: &str| {
            let candidate = PathBuf::from(s);
            if candidate.is_absolute() {
                candidate
            } else {
                base.join(candidate)
            }
        };
        let name = match &raw.name {
            Some(n) if n.get_ref().trim().is_empty() => {
                p.on(n, "name", "must not be empty");
                String::new()
            }
            Some(n) => n.get_ref().clone(),
            None => path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
        };
        let kafka = raw.kafka.as_ref().map(|k| kafka::validate(k, &mut p));
        let store = store::validate(raw.store.as_ref(), &mut p);
        let rules_path = rules::validate(raw.rules.get_ref(), &mut p, &resolve);
        let model = raw.model.as_ref().map(|m| model::validate(m, &mut p, &resolve));
        let (thresholds, decision_features) = thresholds::validate(raw.decision.as_ref(), &mut p);
        let features = features::validate(&raw.features, &mut p);
        let api = raw.api.as_ref().map(|a| api::validate(a, &mut p, &resolve));
        let review = raw.review.as_ref().map(|r| review::validate(r, &mut p)).unwrap_or_default();
        if !p.list.is_empty() {
            return Err(ConfigError::Invalid { problems: p.list });
        }
        Ok(PipelineConfig {
            file: path.to_path_buf(),
            name,
            kafka,
            store,
            rules_path,
            model,
            thresholds,
            decision_features,
            features,
            api,
            review,
        })
    }
}

#[cfg(test)]
mod tests;
