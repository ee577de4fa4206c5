//! Analysts' verdicts as labels, so that the label features and the training
//! history learn from them (`docs/design/review.md`, "Labels").
//!
//! Every resolution that carries a verdict (not a deadline's) is a label to
//! send. The `resolutions` row is the outbox here too, with a column of its
//! own (`label_sent_at`), so labels leave whether or not the pipeline has a
//! resolutions topic, and a slow labels topic never holds up the money's
//! resolutions. Where a label goes is a [`LabelSink`]: the pipeline's labels
//! topic ([`TopicLabels`]), or, without one, its feature store
//! ([`StoreLabels`]). A label sent twice (a crash between sending and
//! marking) is counted once either way: the store keeps a marker per
//! labelled transaction, and the stream records a topic's labels through the
//! same store.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::producer::FutureRecord;
use vigil_core::pipeline::KafkaConfig;
use vigil_core::{Event, Label, Verdict};
use vigil_features::FeatureStore;
use vigil_kafka::{BrokerHealth, SetIfAbsent as _, Watched};

use crate::error::ReviewError;
use crate::store::{ReviewStore, SchemaLock};

/// How often a sender without work, or without the lock, looks again.
const IDLE: Duration = Duration::from_millis(250);

/// Where analysts' verdicts go as labels.
#[async_trait::async_trait]
pub trait LabelSink: Send + Sync {
    /// Sends every label, or fails (then none is taken as sent, and the
    /// batch is sent again later: a sink must count a repeated label once).
    async fn send(&self, labels: &[Label]) -> Result<(), ReviewError>;

    /// Where the labels go, for the logs.
    fn describe(&self) -> String;
}

/// The pipeline's labels topic: `vigil run` (or `vigil serve`) counts them.
pub struct TopicLabels {
    producer: vigil_kafka::Producer,
    topic: String,
}

impl TopicLabels {
    /// An idempotent producer to `topic` (which must exist: see
    /// [`crate::check_resolutions_topic`]).
    pub fn new(kafka: &KafkaConfig, topic: &str) -> Result<TopicLabels, ReviewError> {
        let health = BrokerHealth::new();
        let producer = vigil_kafka::client_config(kafka)
            .set_if_absent("enable.idempotence", "true")
            .set_if_absent("linger.ms", "2")
            .set_if_absent("message.timeout.ms", "60000")
            .create_with_context(Watched::new(&health))
            .map_err(|e| ReviewError::Kafka(e.to_string()))?;
        Ok(TopicLabels { producer, topic: topic.to_owned() })
    }
}

#[async_trait::async_trait]
impl LabelSink for TopicLabels {
    async fn send(&self, labels: &[Label]) -> Result<(), ReviewError> {
        let mut pending = Vec::with_capacity(labels.len());
        for label in labels {
            let payload = label.to_json();
            let record = FutureRecord::to(&self.topic).key(label.transaction_id.as_bytes()).payload(payload.as_slice());
            pending.push(
                vigil_kafka::enqueue(&self.producer, record).await.map_err(|e| ReviewError::Kafka(e.to_string()))?,
            );
        }
        vigil_kafka::delivered(pending, &self.topic).await.map_err(|e| ReviewError::Kafka(e.to_string()))?;
        Ok(())
    }

    fn describe(&self) -> String {
        format!("the labels topic `{}`", self.topic)
    }
}

/// The pipeline's feature store itself, for a pipeline without a labels
/// topic: the label features of the next decision count the verdict.
pub struct StoreLabels {
    store: Arc<dyn FeatureStore>,
    what: String,
}

impl StoreLabels {
    /// Labels recorded in `store`; `what` names it in the logs.
    pub fn new(store: Arc<dyn FeatureStore>, what: impl Into<String>) -> StoreLabels {
        StoreLabels { store, what: what.into() }
    }
}

#[async_trait::async_trait]
impl LabelSink for StoreLabels {
    async fn send(&self, labels: &[Label]) -> Result<(), ReviewError> {
        let refs: Vec<&Label> = labels.iter().collect();
        vigil_features::labels::record(self.store.as_ref(), &refs)
            .await
            .map(|_| ())
            .map_err(|e| ReviewError::Labels(e.to_string()))
    }

    fn describe(&self) -> String {
        self.what.clone()
    }
}

impl ReviewStore {
    /// Sends analysts' verdicts to `sink` as labels, oldest first, `batch` at
    /// a time, until `shutdown` completes; how many it sent. Waits while
    /// another review server sends them. A failed batch is logged and sent
    /// again a moment later.
    pub async fn send_labels(
        &self,
        sink: &dyn LabelSink,
        batch: i64,
        shutdown: impl Future<Output = ()>,
    ) -> Result<u64, ReviewError> {
        tokio::pin!(shutdown);
        // Off the pool: the lock goes with its connection, whatever ends
        // this call (as the resolutions publisher's).
        let lock = deadpool_postgres::Object::take(self.pool.get().await?);
        loop {
            // One sender per schema, so two review servers do not send each label twice.
            if SchemaLock::LABELS.try_take(&lock).await? {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(IDLE * 8) => {}
                _ = &mut shutdown => return Ok(0),
            }
        }
        let mut sent = 0;
        loop {
            match self.send_label_batch(sink, batch).await {
                Ok(0) => {}
                Ok(n) => {
                    sent += n;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, to = %sink.describe(), "verdict labels not sent yet; trying again")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(IDLE) => {}
                _ = &mut shutdown => break,
            }
        }
        SchemaLock::LABELS.release(&lock).await?;
        Ok(sent)
    }

    /// Sends the next verdicts not sent yet and marks them; how many labels
    /// went out.
    pub async fn send_label_batch(&self, sink: &dyn LabelSink, batch: i64) -> Result<u64, ReviewError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT r.seq, r.transaction_id, r.verdict, r.resolved_by, r.resolved_at,
                        (p.decision -> 'event')::text
                 FROM resolutions r JOIN payments p USING (transaction_id)
                 WHERE r.label_sent_at IS NULL AND r.verdict IS NOT NULL ORDER BY r.seq LIMIT $1",
                &[&batch],
            )
            .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let labels: Vec<Label> = rows.iter().filter_map(label_of).collect();
        if !labels.is_empty() {
            sink.send(&labels).await?;
        }
        let seqs: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
        client.execute("UPDATE resolutions SET label_sent_at = now() WHERE seq = ANY($1)", &[&seqs]).await?;
        Ok(labels.len() as u64)
    }
}

/// The label of an analyst's verdict, from the payment's frozen event: every
/// entity field, the event's time, the verdict's time as `reported_at`,
/// `review:ANALYST` as its source (the proposer, under four-eyes).
fn label_of(row: &tokio_postgres::Row) -> Option<Label> {
    let transaction_id: String = row.get(1);
    let verdict = Verdict::parse(&row.get::<_, String>(2))?;
    let event: Event = match serde_json::from_str(&row.get::<_, Option<String>>(5)?) {
        Ok(e) => e,
        Err(e) => {
            // A snapshot written by hand, or by a Vigil whose event format
            // this one no longer reads: marked, so it does not come back.
            tracing::warn!(%transaction_id, error = %e, "verdict not sent as a label: its stored event does not read");
            return None;
        }
    };
    let by: String = row.get(3);
    Some(Label::for_event(&event, verdict, row.get(4), Some(&format!("review:{by}"))))
}
