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
    /// Print what a topic holds now, one record per line (its value, as
    /// sent: the decisions, resolutions and labels topics hold JSON), by
    /// partition and offset, then exit. Reads as no consumer group: nothing
    /// is committed, no pipeline's group is disturbed.
    Read {
        /// The pipeline config whose `[kafka]` names the brokers.
        #[arg(long)]
        pipeline: PathBuf,
        /// The topic: a name, or one of the pipeline's `input`, `decisions`,
        /// `dead-letter`, `labels` or `resolutions`.
        topic: String,
        /// Only the last N records of each partition.
        #[arg(long, value_name = "N")]
        last: Option<i64>,
        /// Print each record as a JSON object with its partition, offset and
        /// key, the value inside it (parsed when it is JSON).
        #[arg(long)]
        with_keys: bool,
        /// Give up when the brokers do not hand over every record within
        /// this many seconds.
        #[arg(long, default_value_t = 30)]
        timeout_s: u64,
    },
}

pub async fn run(command: Command) -> anyhow::Result<()> {
    let (pipeline, partitions) = match command {
        Command::Create { pipeline, partitions } => (pipeline, partitions),
        Command::Read { pipeline, topic, last, with_keys, timeout_s } => {
            return read(&pipeline, &topic, last, with_keys, timeout_s).await
        }
    };
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

/// `vigil topics read`.
async fn read(
    pipeline: &std::path::Path,
    topic: &str,
    last: Option<i64>,
    with_keys: bool,
    timeout_s: u64,
) -> anyhow::Result<()> {
    use std::io::Write as _;
    let config = load_pipeline(pipeline)?;
    let kafka = vigil_kafka::settings(&config)?.clone();
    let name = match topic {
        "input" => kafka.input_topic.clone(),
        "decisions" => kafka.decisions_topic.clone(),
        "dead-letter" => kafka.dead_letter_topic.clone(),
        "labels" => kafka
            .labels_topic
            .clone()
            .ok_or_else(|| anyhow::anyhow!("{}: no [kafka] labels_topic", pipeline.display()))?,
        "resolutions" => config
            .review
            .resolutions_topic
            .clone()
            .ok_or_else(|| anyhow::anyhow!("{}: no [review] resolutions_topic", pipeline.display()))?,
        other => other.to_owned(),
    };
    let timeout = std::time::Duration::from_secs(timeout_s);
    let records = tokio::task::spawn_blocking(move || vigil_kafka::read::read(&kafka, &name, last, timeout)).await??;
    let mut out = std::io::stdout().lock();
    for r in &records {
        let value = r.payload.as_deref().unwrap_or_default();
        if with_keys {
            let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            let value: serde_json::Value =
                serde_json::from_slice(value).unwrap_or_else(|_| serde_json::Value::String(text(value)));
            let line = serde_json::json!({
                "partition": r.partition, "offset": r.offset, "key": r.key.as_deref().map(text), "value": value
            });
            writeln!(out, "{line}")?;
        } else {
            out.write_all(value)?;
            out.write_all(b"\n")?;
        }
    }
    Ok(())
}
