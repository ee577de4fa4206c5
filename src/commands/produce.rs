//! `vigil produce`: events from a file onto the pipeline's input topic.

use std::io::BufRead;
use std::path::PathBuf;

use super::load_pipeline;

#[derive(clap::Args)]
pub struct Args {
    /// The pipeline config (TOML): Kafka, the feature store, rules, model,
    /// features.
    #[arg(long)]
    pipeline: PathBuf,
    /// A JSON-lines file of events, one per line, or `-` for stdin.
    file: PathBuf,
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let config = load_pipeline(&a.pipeline)?;
    let kafka = vigil_kafka::settings(&config)?;
    let lines = super::open_input(&a.file)?.split(b'\n').map_while(Result::ok);
    let n = vigil_kafka::produce_lines(kafka, &kafka.input_topic, lines).await?;
    println!("produced {n} records to {}", kafka.input_topic);
    Ok(())
}
