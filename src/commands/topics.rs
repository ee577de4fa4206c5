//! `vigil topics`: the pipeline's Kafka topics.

use std::path::PathBuf;

use clap::Subcommand;

use super::load_pipeline;

#[derive(Subcommand)]
pub enum Command {
    /// Create the input, decisions and dead-letter topics where missing.
    Create {
        /// The pipeline config whose `[kafka]` names the topics.
        #[arg(long)]
        pipeline: PathBuf,
        /// Partitions of each topic created.
        #[arg(long, default_value_t = 4)]
        partitions: i32,
    },
}

pub async fn run(command: Command) -> anyhow::Result<()> {
    let Command::Create { pipeline, partitions } = command;
    let config = load_pipeline(&pipeline)?;
    let kafka = vigil_kafka::settings(&config)?;
    let created = vigil_kafka::create_topics(kafka, partitions).await?;
    if created.is_empty() {
        println!("all topics exist");
    }
    for t in created {
        println!("created {t}");
    }
    Ok(())
}
