//! `vigil serve`: the HTTP API.

use std::path::PathBuf;

use super::load_pipeline;

#[derive(clap::Args)]
pub struct Args {
    /// The pipeline config (TOML): Kafka, the feature store, rules, model,
    /// features.
    #[arg(long)]
    pipeline: PathBuf,
    /// Listen here instead of `api.listen`.
    #[arg(long)]
    listen: Option<String>,
    #[command(flatten)]
    store_wait: super::StoreWait,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let mut config = load_pipeline(&args.pipeline)?;
    let Some(api) = config.api.as_mut() else {
        return Err(vigil_api::ApiError::NotConfigured(args.pipeline).into());
    };
    if let Some(l) = args.listen {
        api.listen = l;
    }
    let api = api.clone();
    if let vigil_core::pipeline::StoreMode::Owned { .. } = config.store.mode {
        tracing::info!(
            "[store] mode = \"owned\": this server takes the pipeline's feature state from any process that held it; \
             a `vigil run` or another `vigil serve` on this pipeline would take it back (one owner at a time)"
        );
    }
    let mut shutdown = Box::pin(crate::signals::shutdown());
    let wait = args.store_wait.duration();
    let Some(engine) = super::live_once_store_answers(&config, wait, &mut shutdown).await? else { return Ok(()) };
    let listener = vigil_api::bind(&api).await?;
    vigil_api::serve(&config, engine, listener, shutdown).await?;
    tracing::info!("stopped");
    Ok(())
}
