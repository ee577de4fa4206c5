//! `vigil run`: the Kafka stream.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;

use super::load_pipeline;

#[derive(clap::Args)]
pub struct Args {
    /// The pipeline config (TOML): Kafka, the feature store, rules, model,
    /// features.
    #[arg(long)]
    pipeline: PathBuf,
    /// Serve `/metrics` (Prometheus text: throughput, dead letters, consumer
    /// lag per partition, feature-store health, decisions by outcome),
    /// `/healthz` and `/readyz` on this address, as 127.0.0.1:9464. It has no
    /// authentication: bind it where only the scraper reaches.
    #[arg(long, value_name = "ADDRESS")]
    metrics_listen: Option<SocketAddr>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let config = load_pipeline(&args.pipeline)?;
    let kafka = vigil_kafka::settings(&config)?.clone();
    let engine = vigil_engine::watch::live(&config).await?;
    let stats = match args.metrics_listen {
        Some(address) => {
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("--metrics-listen {address}: cannot listen there"))?;
            let (stats, registry) = vigil_stream::ops::stats_with_metrics(&engine);
            let stats = Arc::new(stats);
            vigil_stream::ops::serve(listener, registry, stats.clone(), engine.clone());
            tracing::info!(%address, "serving /metrics, /healthz and /readyz");
            stats
        }
        None => Arc::new(vigil_stream::Stats::default()),
    };
    vigil_stream::run(&kafka, engine, stats, crate::signals::shutdown()).await?;
    Ok(())
}
