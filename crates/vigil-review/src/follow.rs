//! Following the decisions topic into the review store (`vigil review
//! ingest`): batches of records are read, their `review` decisions ingested,
//! and only then are the batch's offsets committed.
//!
//! Delivery is at least once and ingest is idempotent (the transaction id is
//! the payments' primary key), so the effect is exactly once: a crash, a
//! failed commit or a rebalance that hands a partition over mid-batch makes
//! the next owner read some records again, and reading them again changes
//! nothing. That is why this consumer needs no drain on revoke, unlike
//! `vigil run`, whose redeliveries would be decided twice.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use vigil_core::pipeline::KafkaConfig;
use vigil_core::Decision;
use vigil_kafka::{BrokerHealth, SetIfAbsent, Watched};

use crate::error::ReviewError;
use crate::ingest::Ingested;
use crate::store::ReviewStore;

/// How long a batch waits for more records once it has one.
const FILL: Duration = Duration::from_millis(50);
/// The longest pause between tries while the database is away.
const MOST_BACKOFF: Duration = Duration::from_secs(8);

/// What following did, in all.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Followed {
    /// Records read from the decisions topic.
    pub records: u64,
    /// Records that do not read as a decision: logged and passed over.
    pub unreadable: u64,
    /// Batches the database refused for a while before taking them.
    pub retried: u64,
    pub ingested: Ingested,
}

/// Where and how to follow.
pub struct Follow<'a> {
    pub kafka: &'a KafkaConfig,
    /// The consumer group: its own, not the pipeline's (`<group_id>-review`
    /// by default), so the review store reads every decision.
    pub group: String,
    /// Most records per batch (and per database transaction).
    pub batch: usize,
}

impl ReviewStore {
    /// Follows the decisions topic until `shutdown` completes, then commits
    /// what was ingested and returns the totals.
    pub async fn follow(&self, how: Follow<'_>, shutdown: impl Future<Output = ()>) -> Result<Followed, ReviewError> {
        let health = BrokerHealth::new();
        let consumer: StreamConsumer<Watched> = vigil_kafka::client_config(how.kafka)
            .set("group.id", &how.group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set_if_absent("fetch.wait.max.ms", "100")
            .create_with_context(Watched::new(&health))
            .map_err(|e| ReviewError::Kafka(e.to_string()))?;
        vigil_kafka::check_topic(how.kafka, &consumer, &how.kafka.decisions_topic)
            .map_err(|e| ReviewError::Kafka(e.to_string()))?;
        consumer.subscribe(&[how.kafka.decisions_topic.as_str()]).map_err(|e| ReviewError::Kafka(e.to_string()))?;
        let mut totals = Followed::default();
        tokio::pin!(shutdown);
        let batch_size = how.batch.max(1);
        loop {
            let mut decisions = Vec::with_capacity(batch_size);
            let mut next: BTreeMap<(String, i32), i64> = BTreeMap::new();
            tokio::select! {
                m = consumer.recv() => read(m, &mut decisions, &mut next, &mut totals),
                _ = &mut shutdown => break,
            }
            for _ in 1..batch_size {
                match tokio::time::timeout(FILL, consumer.recv()).await {
                    Ok(m) => read(m, &mut decisions, &mut next, &mut totals),
                    Err(_) => break,
                }
            }
            if !self.ingest_until_taken(&decisions, &mut totals, &mut shutdown).await {
                // Stopped before the database took the batch: its offsets
                // stay uncommitted, so the next start reads it again.
                return Ok(totals);
            }
            commit(&consumer, &next);
        }
        Ok(totals)
    }

    /// Ingests a batch, trying again while the database is away; `false`
    /// when `shutdown` came first.
    async fn ingest_until_taken(
        &self,
        decisions: &[Decision],
        totals: &mut Followed,
        shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> bool {
        let mut pause = Duration::from_millis(250);
        loop {
            match self.ingest(decisions).await {
                Ok(got) => {
                    totals.ingested += got;
                    return true;
                }
                Err(e) => {
                    totals.retried += 1;
                    tracing::warn!(error = %e, retry_in_ms = pause.as_millis() as u64, "review batch not stored; trying again");
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = shutdown.as_mut() => return false,
                    }
                    pause = (pause * 2).min(MOST_BACKOFF);
                }
            }
        }
    }
}

/// Takes one received record into the batch.
fn read(
    m: Result<rdkafka::message::BorrowedMessage<'_>, rdkafka::error::KafkaError>,
    decisions: &mut Vec<Decision>,
    next: &mut BTreeMap<(String, i32), i64>,
    totals: &mut Followed,
) {
    let m = match m {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %e, "decisions topic: read error");
            return;
        }
    };
    totals.records += 1;
    next.insert((m.topic().to_owned(), m.partition()), m.offset() + 1);
    match m.payload().map(serde_json::from_slice::<Decision>) {
        Some(Ok(d)) => decisions.push(d),
        Some(Err(e)) => {
            totals.unreadable += 1;
            tracing::warn!(partition = m.partition(), offset = m.offset(), error = %e, "decisions topic: record is not a decision; passed over");
        }
        None => totals.unreadable += 1,
    }
}

/// Commits the offsets after a stored batch. A failure (a partition revoked
/// meanwhile, a broker away) is logged: the records are read again later,
/// which is harmless.
fn commit(consumer: &StreamConsumer<Watched>, next: &BTreeMap<(String, i32), i64>) {
    if next.is_empty() {
        return;
    }
    let mut list = TopicPartitionList::new();
    for ((topic, partition), offset) in next {
        if let Err(e) = list.add_partition_offset(topic, *partition, Offset::Offset(*offset)) {
            tracing::warn!(error = %e, "offset not committed");
        }
    }
    if let Err(e) = consumer.commit(&list, CommitMode::Sync) {
        tracing::warn!(error = %e, "decisions topic: offsets not committed; the records will be read again (harmless)");
    }
}
