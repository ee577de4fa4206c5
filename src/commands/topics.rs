//! `vigil topics`: the pipeline's Kafka topics.

use std::path::PathBuf;

use clap::Subcommand;

use super::load_pipeline;

#[derive(Subcommand)]
pub enum Command {
    /// Create the input, decisions, dead-letter and labels topics where
    /// missing, and the review server's resolutions topic when `[review]`
    /// names one.
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
    let mut topics: Vec<String> = vigil_kafka::all_topics(kafka).into_iter().cloned().collect();
    topics.extend(config.review.resolutions_topic.iter().cloned());
    let created = vigil_kafka::create_named_topics(kafka, &topics, partitions).await?;
    if created.is_empty() {
        println!("all topics exist");
    }
    for t in created {
        println!("created {t}");
    }
    Ok(())
}
