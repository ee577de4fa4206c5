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
    /// `/healthz` and `/readyz` on this address, as 127.0.0.1:9464. Without
    /// `--metrics-token-env` anyone who reaches it reads `/metrics`: bind it
    /// where only the scraper reaches.
    #[arg(long, value_name = "ADDRESS")]
    metrics_listen: Option<SocketAddr>,
    /// The environment variable holding a bearer token (16 bytes or more)
    /// that `/metrics` then asks for (`Authorization: Bearer TOKEN`);
    /// `/healthz` and `/readyz` stay open to the orchestrator.
    #[arg(long, value_name = "VARIABLE", requires = "metrics_listen")]
    metrics_token_env: Option<String>,
    #[command(flatten)]
    store_wait: super::StoreWait,
}

/// The `/metrics` token from `--metrics-token-env`, checked before the run starts.
fn metrics_token(variable: Option<&str>) -> anyhow::Result<Option<vigil_engine::metrics::MetricsToken>> {
    let Some(name) = variable else { return Ok(None) };
    let token = std::env::var(name)
        .map_err(|_| anyhow::anyhow!("--metrics-token-env {name}: ${name} is not set (or not UTF-8)"))?;
    let token = token.trim();
    if token.len() < 16 {
        anyhow::bail!(
            "--metrics-token-env {name}: the token is {} bytes; it must be at least 16, such as \
             `export {name}=$(openssl rand -hex 32)`",
            token.len()
        );
    }
    Ok(Some(vigil_engine::metrics::MetricsToken::new(token.as_bytes())))
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let token = metrics_token(args.metrics_token_env.as_deref())?;
    let config = load_pipeline(&args.pipeline)?;
    let kafka = vigil_kafka::settings(&config)?.clone();
    let shutdown = crate::signals::shutdown();
    tokio::pin!(shutdown);
    let wait = args.store_wait.duration();
    let Some(engine) = super::live_once_store_answers(&config, wait, &mut shutdown).await? else { return Ok(()) };
    let stats = match args.metrics_listen {
        Some(address) => {
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("--metrics-listen {address}: cannot listen there"))?;
            let (stats, registry) = vigil_stream::ops::stats_with_metrics(&engine);
            let stats = Arc::new(stats);
            let guarded = token.is_some();
            vigil_stream::ops::serve(listener, registry, token, stats.clone(), engine.clone());
            tracing::info!(%address, token = guarded, "serving /metrics, /healthz and /readyz");
            stats
        }
        None => Arc::new(vigil_stream::Stats::default()),
    };
    vigil_stream::run(&kafka, engine, stats, shutdown).await?;
    Ok(())
}
