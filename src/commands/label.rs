//! `vigil label`: confirmed outcomes (chargebacks, analyst verdicts) for the
//! label features, read as every entry point reads a label
//! (`vigil_features::labels`), then published to the pipeline's labels topic
//! or recorded in its Redis store.

use std::path::PathBuf;

use anyhow::{bail, Context as _};
use vigil_core::{Label, PipelineConfig};
use vigil_features::{labels, Plan};

use super::load_pipeline;

#[derive(clap::Args)]
pub struct Args {
    /// The pipeline config (TOML): Kafka, the feature store, rules, model,
    /// features.
    #[arg(long)]
    pipeline: PathBuf,
    /// A JSON-lines file of labels (or `-` for stdin), one per line.
    #[arg(long, conflicts_with_all = ["transaction_id", "fraud", "genuine"])]
    file: Option<PathBuf>,
    /// The labelled transaction.
    #[arg(long, required_unless_present = "file")]
    transaction_id: Option<String>,
    /// The transaction was a fraud (counted by the label features).
    #[arg(long, conflicts_with = "genuine")]
    fraud: bool,
    /// The transaction was genuine (recorded; it changes no feature).
    #[arg(long)]
    genuine: bool,
    /// When the outcome became known (RFC 3339); now by default.
    #[arg(long)]
    reported_at: Option<String>,
    /// When the labelled transaction happened (RFC 3339): label features
    /// with a `delay` count the fraud at that time, and need it.
    #[arg(long)]
    timestamp: Option<String>,
    /// Where it came from, such as `chargeback` or `analyst`.
    #[arg(long)]
    source: Option<String>,
    /// An entity field of the transaction, `name=value` (repeatable), such as
    /// `terminal_id=T1`: fraud labels carry those the label features count by.
    #[arg(long = "field", value_name = "NAME=VALUE")]
    fields: Vec<String>,
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let config = load_pipeline(&a.pipeline)?;
    let lines = match (&a.file, &a.transaction_id) {
        (Some(file), _) => super::read_lines(file)?,
        (None, Some(id)) => vec![("the label".to_owned(), one(&a, id)?)],
        (None, None) => bail!("give --file or --transaction-id"),
    };
    record(&config, lines).await
}

/// The label the flags describe, as JSON.
fn one(a: &Args, id: &str) -> anyhow::Result<Vec<u8>> {
    if a.fraud == a.genuine {
        bail!("say which outcome: --fraud or --genuine");
    }
    let mut map = serde_json::Map::new();
    map.insert("transaction_id".into(), id.into());
    map.insert("label".into(), if a.fraud { "fraud" } else { "genuine" }.into());
    let at = a.reported_at.clone().unwrap_or_else(|| chrono::Utc::now().to_rfc3339());
    map.insert("reported_at".into(), at.into());
    if let Some(t) = &a.timestamp {
        map.insert("timestamp".into(), t.as_str().into());
    }
    if let Some(s) = &a.source {
        map.insert("source".into(), s.as_str().into());
    }
    for f in &a.fields {
        let (k, v) = f.split_once('=').with_context(|| format!("--field `{f}` is not NAME=VALUE"))?;
        map.insert(k.trim().into(), v.into());
    }
    Ok(serde_json::to_vec(&map)?)
}

/// Checks every label first (refusing all if one is bad, with its place), then
/// publishes them to the labels topic or records them in the Redis store.
async fn record(config: &PipelineConfig, lines: Vec<(String, Vec<u8>)>) -> anyhow::Result<()> {
    let mut checked = Vec::with_capacity(lines.len());
    let mut problems = Vec::new();
    for (place, line) in &lines {
        match labels::read(line, &config.features) {
            Ok(l) => checked.push(l),
            Err(e) => problems.push(format!("{place}: {e}")),
        }
    }
    if !problems.is_empty() {
        bail!("{} label(s) refused, nothing recorded:\n{}", problems.len(), problems.join("\n"));
    }
    if let Some(topic) = config.kafka.as_ref().and_then(|k| k.labels_topic.as_ref().map(|t| (k, t))) {
        let (kafka, topic) = topic;
        let n = vigil_kafka::produce_lines(kafka, topic, checked.iter().map(Label::to_json)).await?;
        println!("published {n} label(s) to {topic}");
        return Ok(());
    }
    if matches!(config.store.backend, vigil_core::pipeline::StoreBackend::Memory) {
        bail!(
            "{}: no [kafka] labels_topic and an in-memory store: a label recorded by this command would vanish \
             with it; set kafka.labels_topic, or use a Redis store",
            config.file.display()
        );
    }
    vigil_features::refuse_owned(&config.store, "vigil label, with no labels topic,")
        .with_context(|| config.file.display().to_string())?;
    let store = vigil_features::connect(&config.store, Plan::new(config.features.clone())).await?;
    let refs: Vec<&Label> = checked.iter().collect();
    let recorded = labels::record(store.as_ref(), &refs).await?;
    println!(
        "applied {} label(s): {} fraud(s) newly counted, {} unchanged",
        checked.len(),
        recorded.counted(),
        recorded.unchanged()
    );
    Ok(())
}
