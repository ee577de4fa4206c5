//! `vigil run`: the Kafka stream.

use std::path::PathBuf;
use std::sync::Arc;

use super::load_pipeline;

#[derive(clap::Args)]
pub struct Args {
    /// The pipeline config (TOML): Kafka, the feature store, rules, model,
    /// features.
    #[arg(long)]
    pipeline: PathBuf,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let config = load_pipeline(&args.pipeline)?;
    let kafka = vigil_kafka::settings(&config)?.clone();
    let engine = vigil_engine::watch::live(&config).await?;
    let stats = Arc::new(vigil_stream::Stats::default());
    vigil_stream::run(&kafka, engine, stats, crate::signals::shutdown()).await?;
    Ok(())
}
