//! The resolutions outbox to the resolutions topic, each resolution once.
//!
//! One publisher at a time per schema (a PostgreSQL advisory lock, held by
//! the connection it was taken on) sends the unpublished rows in `seq` order, a
//! batch at a time, keyed by transaction id, and marks them published once
//! every record of the batch is acknowledged. The librdkafka producer is
//! idempotent, so its own retries do not repeat a record.
//!
//! What remains is a crash (or a lost connection) between the broker's
//! acknowledgement and the mark: the rows are unmarked, yet on the topic. So
//! before its first batch, a publisher that has just taken the lock reads
//! back the tail of every partition (as many records as a batch holds, the
//! most that can be in doubt), marks the rows it finds there, and sends only
//! the rest. The position lives with the data, as in Kafka Connect's
//! exactly-once sources, without needing broker transactions.

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use serde_json::json;
use vigil_core::pipeline::KafkaConfig;
use vigil_kafka::{BrokerHealth, SetIfAbsent as _, Watched};

use crate::error::ReviewError;
use crate::store::{ReviewStore, SchemaLock};

/// The record header carrying a resolution's outbox number.
pub const SEQ_HEADER: &str = "vigil.resolution.seq";
/// How often a publisher without the lock, or without work, looks again.
const IDLE: Duration = Duration::from_millis(250);

/// What publishing did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Published {
    /// Resolutions sent and acknowledged.
    pub sent: u64,
    /// Resolutions found on the topic already after a crash: marked, not sent again.
    pub found_sent: u64,
}

impl ReviewStore {
    /// Publishes the outbox to `topic` until `shutdown` completes, `batch`
    /// resolutions at a time. Waits while another review server publishes.
    /// (Analysts' verdicts leave as labels on their own path:
    /// [`ReviewStore::send_labels`].)
    pub async fn publish(
        &self,
        kafka: &KafkaConfig,
        topic: &str,
        batch: i64,
        shutdown: impl Future<Output = ()>,
    ) -> Result<Published, ReviewError> {
        tokio::pin!(shutdown);
        let mut totals = Published::default();
        // Off the pool: the session's advisory lock goes with its connection,
        // so whatever ends this call (an error, a cancellation) drops the
        // connection and the lock with it, where a pooled connection would
        // keep the lock held.
        let lock = deadpool_postgres::Object::take(self.pool.get().await?);
        loop {
            if SchemaLock::PUBLISH.try_take(&lock).await? {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(IDLE * 8) => {}
                _ = &mut shutdown => return Ok(totals),
            }
        }
        let health = BrokerHealth::new();
        let producer: vigil_kafka::Producer = vigil_kafka::client_config(kafka)
            .set_if_absent("enable.idempotence", "true")
            .set_if_absent("linger.ms", "2")
            .set_if_absent("message.timeout.ms", "60000")
            .create_with_context(Watched::new(&health))
            .map_err(|e| ReviewError::Kafka(e.to_string()))?;
        totals.found_sent = self.mark_found_on_topic(kafka, topic, batch).await?;
        loop {
            let sent = self.publish_batch(&producer, topic, batch).await;
            match sent {
                Ok(0) => {}
                Ok(n) => {
                    totals.sent += n;
                    continue;
                }
                Err(e) => tracing::warn!(error = %e, "resolutions not published yet; trying again"),
            }
            tokio::select! {
                _ = tokio::time::sleep(IDLE) => {}
                _ = &mut shutdown => break,
            }
        }
        SchemaLock::PUBLISH.release(&lock).await?;
        Ok(totals)
    }

    /// Sends the next unpublished resolutions, in order; how many.
    async fn publish_batch(
        &self,
        producer: &vigil_kafka::Producer,
        topic: &str,
        batch: i64,
    ) -> Result<u64, ReviewError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT r.seq, r.transaction_id, r.case_id, r.action, r.resolved_by, r.verdict, r.resolved_at,
                        p.amount, p.currency, r.confirmed_by
                 FROM resolutions r JOIN payments p USING (transaction_id)
                 WHERE r.published_at IS NULL ORDER BY r.seq LIMIT $1",
                &[&batch],
            )
            .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut pending = Vec::with_capacity(rows.len());
        let mut seqs = Vec::with_capacity(rows.len());
        for r in &rows {
            let seq: i64 = r.get(0);
            let transaction_id: String = r.get(1);
            let record = json!({
                "transaction_id": transaction_id,
                "action": r.get::<_, String>(3),
                "resolved_by": r.get::<_, String>(4),
                "verdict": r.get::<_, Option<String>>(5),
                "confirmed_by": r.get::<_, Option<String>>(9),
                "case_id": r.get::<_, i64>(2),
                "resolved_at": r.get::<_, chrono::DateTime<chrono::Utc>>(6),
                "amount": r.get::<_, rust_decimal::Decimal>(7).to_string(),
                "currency": r.get::<_, String>(8),
                "seq": seq,
            });
            let payload = serde_json::to_vec(&record).unwrap_or_default();
            let seq_text = seq.to_string();
            let headers = OwnedHeaders::new().insert(Header { key: SEQ_HEADER, value: Some(seq_text.as_bytes()) });
            let future = vigil_kafka::enqueue(
                producer,
                FutureRecord::to(topic).key(transaction_id.as_bytes()).payload(payload.as_slice()).headers(headers),
            )
            .await
            .map_err(|e| ReviewError::Kafka(e.to_string()))?;
            pending.push(future);
            seqs.push(seq);
        }
        let n = vigil_kafka::delivered(pending, topic).await.map_err(|e| ReviewError::Kafka(e.to_string()))?;
        client.execute("UPDATE resolutions SET published_at = now() WHERE seq = ANY($1)", &[&seqs]).await?;
        Ok(n)
    }

    /// Marks the unpublished resolutions that the tail of `topic` holds
    /// already (sent before a crash, never marked); how many.
    async fn mark_found_on_topic(&self, kafka: &KafkaConfig, topic: &str, batch: i64) -> Result<u64, ReviewError> {
        let client = self.pool.get().await?;
        let unmarked: i64 =
            client.query_one("SELECT count(*) FROM resolutions WHERE published_at IS NULL", &[]).await?.get(0);
        if unmarked == 0 {
            return Ok(0);
        }
        let (k, t) = (kafka.clone(), topic.to_owned());
        let found = tokio::task::spawn_blocking(move || read_tail(&k, &t, batch))
            .await
            .map_err(|e| ReviewError::Kafka(format!("reading back `{topic}`: {e}")))??;
        if found.is_empty() {
            return Ok(0);
        }
        let found: Vec<i64> = found.into_iter().collect();
        let marked = client
            .execute(
                "UPDATE resolutions SET published_at = now() WHERE published_at IS NULL AND seq = ANY($1)",
                &[&found],
            )
            .await?;
        if marked > 0 {
            tracing::info!(marked, "resolutions found on the topic after an interrupted publish: not sent again");
        }
        Ok(marked)
    }
}

/// Checks that a topic the review server publishes to (resolutions, labels)
/// exists, failing within seconds with a clear error when it does not or the
/// brokers cannot be reached.
pub fn check_resolutions_topic(kafka: &KafkaConfig, topic: &str) -> Result<(), ReviewError> {
    let kafka_err = |e: vigil_kafka::Error| ReviewError::Kafka(e.to_string());
    vigil_kafka::read::partitions(&vigil_kafka::read::reader(kafka).map_err(kafka_err)?, kafka, topic)
        .map(|_| ())
        .map_err(kafka_err)
}

/// The outbox numbers of the last `most` records of each partition of `topic`.
fn read_tail(kafka: &KafkaConfig, topic: &str, most: i64) -> Result<BTreeSet<i64>, ReviewError> {
    let records = vigil_kafka::read::read(kafka, topic, Some(most), vigil_kafka::STARTUP_TIMEOUT)
        .map_err(|e| ReviewError::Kafka(format!("reading back `{topic}`: {e}")))?;
    Ok(records.iter().filter_map(|r| std::str::from_utf8(r.header(SEQ_HEADER)?).ok()?.parse().ok()).collect())
}
