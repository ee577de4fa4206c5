//! `vigil-ledger-gate`: the reference ledger gate as a process (see the
//! library's documentation and README.md). Stops on SIGINT or SIGTERM.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use clap::Parser;
use vigil_core::PipelineConfig;
use vigil_ledger_gate::Gate;

/// Holds each authorisation's money until Vigil decides: posts it after
/// `approve` or a review's `release`, voids it after `decline` or `stop`,
/// expires it when nothing came within the authorisation window.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The Vigil pipeline whose `[kafka]` names the brokers, the input
    /// (authorisations) and decisions topics, and whose `[review]` names the
    /// resolutions topic and the authorisation window.
    #[arg(long)]
    pipeline: PathBuf,
    /// The ledger's PostgreSQL database (a `postgresql://` URL or
    /// `key=value` settings); its tables are made at start.
    #[arg(long, env = "VIGIL_LEDGER_DATABASE")]
    database: String,
    /// The consumer group; `<group_id>-ledger-gate` by default.
    #[arg(long)]
    group: Option<String>,
    /// How long a hold waits for an answer before it expires (`7d`, `90s`);
    /// the pipeline's `[review] authorisation_window` by default.
    #[arg(long)]
    window: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let config = PipelineConfig::load(&args.pipeline).map_err(|e| anyhow!("{e}"))?;
    let kafka = config.kafka.clone().ok_or_else(|| anyhow!("{}: no [kafka] section", args.pipeline.display()))?;
    let resolutions = config
        .review
        .resolutions_topic
        .clone()
        .ok_or_else(|| anyhow!("{}: no [review] resolutions_topic", args.pipeline.display()))?;
    let window_s = match &args.window {
        Some(w) => vigil_core::feature::parse_duration_s(w).map_err(|m| anyhow!("--window {w}: {m}"))?,
        None => config.review.authorisation_window_s,
    };
    let gate = Gate::connect(&args.database, 4, Duration::from_secs(window_s))?;
    gate.migrate().await.context("preparing the ledger database")?;
    let group = args.group.unwrap_or_else(|| format!("{}-ledger-gate", kafka.group_id));
    tracing::info!(%group, window_s, "ledger gate following authorisations, decisions and resolutions");
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
    };
    gate.run(&kafka, &resolutions, &group, shutdown).await?;
    let s = &gate.stats;
    let n = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    tracing::info!(
        applied = n(&s.applied),
        posted = n(&s.posted),
        voided = n(&s.voided),
        expired = n(&s.expired),
        conflicts = n(&s.conflicts),
        unreadable = n(&s.unreadable),
        "ledger gate stopped"
    );
    Ok(())
}
