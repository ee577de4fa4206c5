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
    /// How long to wait for the feature store at start, in seconds. An
    /// instance started (or restarted by its orchestrator) while Redis is down
    /// then waits for it, retrying with backoff, as a running instance rides
    /// out an outage, instead of exiting at once. The default, 0, exits at
    /// once with the store's error. A signal ends the wait.
    #[arg(long, value_name = "SECONDS", default_value_t = 0)]
    store_wait: u64,
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
    let wait = std::time::Duration::from_secs(args.store_wait);
    let Some(engine) = connect(&config, wait, &mut shutdown).await? else { return Ok(()) };
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

/// The engine, once the feature store answers. While the store is unavailable
/// it retries with backoff (0.5 s doubling to 8 s) until `wait` has passed,
/// then fails with the store's error; any other error fails at once. `None`
/// when a signal came first.
async fn connect(
    config: &vigil_core::PipelineConfig,
    wait: std::time::Duration,
    shutdown: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> anyhow::Result<Option<Arc<vigil_engine::Engine>>> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut attempt = 0u32;
    loop {
        let why = match vigil_engine::watch::live(config).await {
            Ok(engine) => return Ok(Some(engine)),
            Err(vigil_engine::EngineError::Features(vigil_features::FeatureError::Unavailable(why))) => why,
            Err(e) => return Err(e.into()),
        };
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            let e = vigil_engine::EngineError::Features(vigil_features::FeatureError::Unavailable(why));
            return Err(match attempt {
                0 => e.into(),
                _ => anyhow::Error::new(e)
                    .context(format!("the feature store did not answer within --store-wait {} s", wait.as_secs())),
            });
        }
        attempt += 1;
        let pause = std::time::Duration::from_millis(250u64 << attempt.min(5)).min(left);
        tracing::warn!(error = %why, attempt, retry_in_ms = pause.as_millis() as u64,
            "the feature store is unavailable at start; waiting for it (--store-wait)");
        tokio::select! {
            _ = shutdown.as_mut() => return Ok(None),
            _ = tokio::time::sleep(pause) => {}
        }
    }
}
