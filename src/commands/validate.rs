//! `vigil validate`: a pipeline config, its rules and its model, every problem at once.

use std::path::{Path, PathBuf};

use anyhow::bail;
use vigil_core::PipelineConfig;
use vigil_rules::{RuleSet, Schema};

#[derive(clap::Args)]
pub struct Args {
    /// The pipeline config (TOML): Kafka, the feature store, rules, model,
    /// features.
    #[arg(long)]
    pipeline: PathBuf,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    validate(&a.pipeline)
}

/// Checks the config, then its rules and model, listing every problem found.
fn validate(path: &Path) -> anyhow::Result<()> {
    let config = match PipelineConfig::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            bail!("{} does not validate", path.display());
        }
    };
    let schema = Schema { features: config.features.clone() };
    let mut problems = Vec::new();
    let rules = match RuleSet::load(&config.rules_path, &schema) {
        Ok(r) => Some(r),
        Err(e) => {
            problems.extend(e.0.iter().map(|p| p.to_string()));
            None
        }
    };
    if let Some(m) = &config.model {
        if let Err(e) = vigil_model::load(&m.path, &vigil_engine::model_inputs(&config.features)) {
            problems.push(e.to_string());
        }
    }
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("{p}");
        }
        bail!("{} does not validate: {} problem(s)", path.display(), problems.len());
    }
    println!(
        "{}: pipeline `{}` is valid: {} features, {} rules in {} (version {}){}",
        path.display(),
        config.name,
        config.features.len(),
        rules.as_ref().map_or(0, |r| r.rules().len()),
        config.rules_path.display(),
        rules.as_ref().map_or("", |r| r.version()),
        if config.kafka.is_some() { ", kafka configured" } else { "" }
    );
    if let Some(api) = &config.api {
        println!(
            "  api on {}: {} signing client(s){}",
            api.listen,
            api.clients.len(),
            if api.jwt.is_some() { ", bearer JWTs" } else { "" }
        );
    }
    Ok(())
}
