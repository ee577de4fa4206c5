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
    let engine = vigil_engine::watch::live(&config).await?;
    let listener = vigil_api::bind(&api).await?;
    vigil_api::serve(&config, engine, listener, crate::signals::shutdown()).await?;
    tracing::info!("stopped");
    Ok(())
}
