//! Vigil's Kafka entry point, at the end of the data flow: events in, decisions
//! and dead letters out, through the engine.
//!
//! Delivery is at-least-once and in order per partition:
//! - events are read in batches (bounded by `batch_size`) and decided with one
//!   feature-store call per batch;
//! - each decision is produced to the decisions topic, keyed by the event's first
//!   present `decision_key` field so that order per entity holds; each malformed
//!   event goes to the dead-letter topic with its original key and bytes and the
//!   reason in the `vigil.error` header;
//! - a batch's offsets are stored only once every record it produced is delivered,
//!   and batches complete in order; at most `max_in_flight_batches` await delivery;
//! - when the producer queue is full, reading stops until it drains;
//! - when the feature store fails, the batch is retried (with backoff) and never
//!   skipped; a redelivered event is recognised by its `transaction_id`, so it is
//!   counted once and gets the same features;
//! - shutdown stops reading, drains what is in flight, commits and returns;
//! - when `labels_topic` is set, confirmed outcomes read from it are applied to
//!   the label features (once per transaction id) before the batch's events are
//!   decided; a malformed label, or a fraud label without the entity fields the
//!   label features count by, is dead-lettered like a malformed event.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use tokio::sync::mpsc;
use vigil_core::pipeline::KafkaConfig;
use vigil_core::{Event, EventField, Label};
use vigil_engine::{Engine, EngineError};

/// Header carrying why an event was dead-lettered.
pub const ERROR_HEADER: &str = "vigil.error";
/// Header carrying where a dead-lettered event came from: `topic/partition/offset`.
pub const SOURCE_HEADER: &str = "vigil.source";

/// How long to wait for brokers at start before giving up with an error.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a batch waits to fill once its first event has arrived.
const BATCH_LINGER: Duration = Duration::from_millis(5);

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("cannot reach Kafka at {brokers}: {source}")]
    Unreachable { brokers: String, source: KafkaError },
    #[error("topic `{topic}` does not exist on {brokers}; create it first")]
    MissingTopic { topic: String, brokers: String },
    #[error("kafka client error: {0}")]
    Client(#[from] KafkaError),
    #[error("could not deliver to `{topic}`: {source}; offsets after the last delivered batch were not committed")]
    Delivery { topic: String, source: KafkaError },
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("the pipeline has no [kafka] section")]
    NoKafka,
    #[error("internal error (a bug): {0}")]
    Internal(String),
}

/// Counters of a run, readable while it goes.
#[derive(Debug, Default)]
pub struct Stats {
    pub consumed: AtomicU64,
    pub decided: AtomicU64,
    pub dead_lettered: AtomicU64,
    /// Events recognised as already processed (redeliveries).
    pub replayed: AtomicU64,
    /// Feature-store failures that made a batch wait and retry.
    pub store_retries: AtomicU64,
    /// Records (decisions and dead letters) the broker acknowledged.
    pub delivered: AtomicU64,
    /// Batches whose offsets were stored.
    pub committed_batches: AtomicU64,
    /// Fraud labels counted by the label features.
    pub labels_counted: AtomicU64,
    /// Labels that changed nothing: redelivered frauds and genuine verdicts.
    pub labels_unchanged: AtomicU64,
}

impl Stats {
    pub fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        BTreeMap::from([
            ("consumed", self.consumed.load(Ordering::Relaxed)),
            ("decided", self.decided.load(Ordering::Relaxed)),
            ("dead_lettered", self.dead_lettered.load(Ordering::Relaxed)),
            ("replayed", self.replayed.load(Ordering::Relaxed)),
            ("store_retries", self.store_retries.load(Ordering::Relaxed)),
            ("delivered", self.delivered.load(Ordering::Relaxed)),
            ("committed_batches", self.committed_batches.load(Ordering::Relaxed)),
            ("labels_counted", self.labels_counted.load(Ordering::Relaxed)),
            ("labels_unchanged", self.labels_unchanged.load(Ordering::Relaxed)),
        ])
    }
}

/// Which output a record went to.
#[derive(Clone, Copy)]
enum Output {
    Decisions,
    DeadLetter,
}

/// A batch whose records are being delivered, with the offsets it may store.
struct InFlight {
    deliveries: Vec<(Output, DeliveryFuture)>,
    /// `(topic, partition) -> last offset` consumed in the batch.
    offsets: BTreeMap<(String, i32), i64>,
}

fn client_config(k: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &k.brokers);
    for (key, value) in &k.properties {
        c.set(key, value);
    }
    c
}

/// Creates the consumer and producer and checks every topic exists, failing with
/// a clear error within seconds when the brokers cannot be reached.
fn connect(k: &KafkaConfig) -> Result<(StreamConsumer, FutureProducer), StreamError> {
    let consumer: StreamConsumer = client_config(k)
        .set("group.id", &k.group_id)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set_if_absent("auto.commit.interval.ms", "1000")
        // A decision is due before the ledger commits: do not let the broker hold
        // a fetch for librdkafka's default 500 ms when little is arriving.
        .set_if_absent("fetch.wait.max.ms", "10")
        .create()?;
    let producer: FutureProducer =
        client_config(k).set_if_absent("linger.ms", "2").set_if_absent("message.timeout.ms", "60000").create()?;
    for topic in all_topics(k) {
        let metadata = consumer
            .fetch_metadata(Some(topic), STARTUP_TIMEOUT)
            .map_err(|source| StreamError::Unreachable { brokers: k.brokers.clone(), source })?;
        let exists =
            metadata.topics().iter().any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty());
        if !exists {
            return Err(StreamError::MissingTopic { topic: topic.clone(), brokers: k.brokers.clone() });
        }
    }
    Ok((consumer, producer))
}

trait SetIfAbsent {
    fn set_if_absent(&mut self, key: &str, value: &str) -> &mut Self;
}

impl SetIfAbsent for ClientConfig {
    fn set_if_absent(&mut self, key: &str, value: &str) -> &mut Self {
        if self.get(key).is_none() {
            self.set(key, value);
        }
        self
    }
}

/// Every topic the pipeline reads or writes.
fn all_topics(k: &KafkaConfig) -> Vec<&String> {
    [&k.input_topic, &k.decisions_topic, &k.dead_letter_topic].into_iter().chain(k.labels_topic.as_ref()).collect()
}

/// A producer for the pipeline's brokers and properties, for the other entry
/// points that publish (the HTTP API's audit trail). It does not wait for the
/// brokers: records queue in librdkafka until they are delivered or time out.
pub fn producer(k: &KafkaConfig) -> Result<FutureProducer, StreamError> {
    Ok(client_config(k).set_if_absent("linger.ms", "2").set_if_absent("message.timeout.ms", "60000").create()?)
}

/// The key a decision is produced with: the first present `decision_key` field.
pub fn decision_key<'a>(event: &'a Event, fields: &[EventField]) -> &'a str {
    fields.iter().find_map(|f| event.text(*f)).unwrap_or(&event.transaction_id)
}

/// Enqueues a record, waiting while the producer queue is full (backpressure).
pub async fn enqueue(
    producer: &FutureProducer,
    mut record: FutureRecord<'_, [u8], [u8]>,
) -> Result<DeliveryFuture, KafkaError> {
    loop {
        match producer.send_result(record) {
            Ok(f) => return Ok(f),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// Runs the pipeline until `shutdown` completes, then drains, commits and returns.
pub async fn run(
    kafka: &KafkaConfig,
    engine: Arc<Engine>,
    stats: Arc<Stats>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StreamError> {
    let (consumer, producer) = connect(kafka)?;
    let consumer = Arc::new(consumer);
    let inputs: Vec<&str> = std::iter::once(kafka.input_topic.as_str()).chain(kafka.labels_topic.as_deref()).collect();
    consumer.subscribe(&inputs)?;
    tracing::info!(topics = ?inputs, group = %kafka.group_id, "consuming");

    let (tx, mut rx) = mpsc::channel::<InFlight>(kafka.max_in_flight_batches);
    let committer = {
        let consumer = consumer.clone();
        let stats = stats.clone();
        let topics = (kafka.decisions_topic.clone(), kafka.dead_letter_topic.clone());
        tokio::spawn(async move {
            let name = |o: Output| match o {
                Output::Decisions => topics.0.clone(),
                Output::DeadLetter => topics.1.clone(),
            };
            while let Some(batch) = rx.recv().await {
                for (output, d) in batch.deliveries {
                    match d.await {
                        Ok(Ok(_)) => {
                            stats.delivered.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(Err((source, _))) => return Err(StreamError::Delivery { topic: name(output), source }),
                        Err(_) => {
                            return Err(StreamError::Delivery { topic: name(output), source: KafkaError::Canceled })
                        }
                    }
                }
                for ((topic, partition), offset) in &batch.offsets {
                    // librdkafka stores `offset + 1`, the next one to read. A partition
                    // revoked meanwhile refuses the store; its new owner re-reads it.
                    if let Err(e) = consumer.store_offset(topic, *partition, *offset) {
                        tracing::debug!(%topic, partition, offset, error = %e, "offset not stored");
                    }
                }
                stats.committed_batches.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<(), StreamError>(())
        })
    };

    let result = consume(kafka, &engine, &consumer, &producer, &stats, tx, shutdown).await;
    // The sender is dropped: the committer finishes what is in flight, then stops.
    let committed =
        committer.await.unwrap_or_else(|e| Err(StreamError::Internal(format!("offset committer failed: {e}"))));
    if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
        // Nothing stored since the last commit is not an error.
        if !matches!(e, KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) {
            tracing::warn!(error = %e, "final commit failed; the uncommitted events will be redelivered");
        }
    }
    if let Err(e) = producer.flush(Timeout::After(Duration::from_secs(10))) {
        // Offsets were stored only for delivered batches, so nothing is lost:
        // undelivered records are decided again after the restart.
        tracing::warn!(error = %e, "producer flush at shutdown did not finish");
    }
    tracing::info!(stats = ?stats.snapshot(), store = %engine.store_stats().summary(), "stopped");
    result.and(committed)
}

async fn consume(
    kafka: &KafkaConfig,
    engine: &Engine,
    consumer: &StreamConsumer,
    producer: &FutureProducer,
    stats: &Stats,
    tx: mpsc::Sender<InFlight>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StreamError> {
    tokio::pin!(shutdown);
    loop {
        let first = tokio::select! {
            biased;
            _ = &mut shutdown => return Ok(()),
            m = consumer.recv() => m,
        };
        let mut batch: Vec<OwnedMessage> = Vec::with_capacity(kafka.batch_size);
        match first {
            Ok(m) => batch.push(m.detach()),
            Err(e) => {
                tracing::warn!(error = %e, "consumer error");
                continue;
            }
        }
        let deadline = tokio::time::Instant::now() + BATCH_LINGER;
        while batch.len() < kafka.batch_size {
            match tokio::time::timeout_at(deadline, consumer.recv()).await {
                Ok(Ok(m)) => batch.push(m.detach()),
                Ok(Err(e)) => tracing::warn!(error = %e, "consumer error"),
                Err(_) => break,
            }
        }
        stats.consumed.fetch_add(batch.len() as u64, Ordering::Relaxed);
        let Some(flight) = process_batch(kafka, engine, producer, stats, &batch, &mut shutdown).await? else {
            // Shut down while the feature store was failing: nothing of this batch
            // is stored, so it will be read again.
            return Ok(());
        };
        if tx.send(flight).await.is_err() {
            // The committer stopped on a delivery error; it reports it.
            return Ok(());
        }
    }
}

async fn process_batch(
    kafka: &KafkaConfig,
    engine: &Engine,
    producer: &FutureProducer,
    stats: &Stats,
    batch: &[OwnedMessage],
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Result<Option<InFlight>, StreamError> {
    let mut offsets = BTreeMap::new();
    let mut events = Vec::with_capacity(batch.len());
    let mut labels = Vec::new();
    let mut dead = Vec::new();
    for (i, m) in batch.iter().enumerate() {
        offsets
            .entry((m.topic().to_owned(), m.partition()))
            .and_modify(|o: &mut i64| *o = (*o).max(m.offset()))
            .or_insert(m.offset());
        let payload = m.payload().unwrap_or_default();
        if kafka.labels_topic.as_deref() == Some(m.topic()) {
            match Label::from_json(payload).and_then(|l| engine.check_label(&l).map(|()| l)) {
                Ok(l) => labels.push(l),
                Err(e) => dead.push((i, format!("label: {e}"))),
            }
            continue;
        }
        match Event::from_json(payload) {
            Ok(e) => events.push((i, e)),
            Err(e) => dead.push((i, e.to_string())),
        }
    }

    if !labels.is_empty() {
        let refs: Vec<&Label> = labels.iter().collect();
        let Some(outcomes) = retrying(stats, shutdown, || engine.apply_labels(&refs)).await? else {
            return Ok(None);
        };
        let counted = outcomes.iter().filter(|o| **o == vigil_engine::LabelOutcome::Counted).count() as u64;
        stats.labels_counted.fetch_add(counted, Ordering::Relaxed);
        stats.labels_unchanged.fetch_add(outcomes.len() as u64 - counted, Ordering::Relaxed);
    }
    let refs: Vec<&Event> = events.iter().map(|(_, e)| e).collect();
    let Some(decisions) = retrying(stats, shutdown, || engine.decide_batch(&refs)).await? else {
        return Ok(None);
    };

    let mut deliveries = Vec::with_capacity(batch.len());
    for ((_, event), decision) in events.iter().zip(&decisions) {
        let payload = decision.to_json();
        let key = decision_key(event, &kafka.decision_key);
        let record = FutureRecord::to(&kafka.decisions_topic).key(key.as_bytes()).payload(payload.as_slice());
        let f = enqueue(producer, record).await?;
        deliveries.push((Output::Decisions, f));
        if decision.replayed {
            stats.replayed.fetch_add(1, Ordering::Relaxed);
        }
    }
    stats.decided.fetch_add(decisions.len() as u64, Ordering::Relaxed);
    for (i, reason) in &dead {
        let m = &batch[*i];
        let source = format!("{}/{}/{}", m.topic(), m.partition(), m.offset());
        tracing::debug!(%source, %reason, "dead-lettering event");
        let mut headers = OwnedHeaders::new()
            .insert(Header { key: ERROR_HEADER, value: Some(reason.as_str()) })
            .insert(Header { key: SOURCE_HEADER, value: Some(source.as_str()) });
        if let Some(h) = m.headers() {
            for header in h.iter() {
                headers = headers.insert(header);
            }
        }
        let mut record =
            FutureRecord::to(&kafka.dead_letter_topic).payload(m.payload().unwrap_or_default()).headers(headers);
        if let Some(k) = m.key() {
            record = record.key(k);
        }
        let f = enqueue(producer, record).await?;
        deliveries.push((Output::DeadLetter, f));
    }
    stats.dead_lettered.fetch_add(dead.len() as u64, Ordering::Relaxed);
    Ok(Some(InFlight { deliveries, offsets }))
}

/// Runs `call` until it succeeds, waiting with backoff while the feature store
/// fails; `None` when shutdown came first (nothing of the batch is then stored).
async fn retrying<T, Fut>(
    stats: &Stats,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    mut call: impl FnMut() -> Fut,
) -> Result<Option<T>, StreamError>
where
    Fut: Future<Output = Result<T, EngineError>>,
{
    let mut attempt = 0u32;
    loop {
        match call().await {
            Ok(out) => return Ok(Some(out)),
            Err(EngineError::Features(e)) if e.is_retryable() => {
                attempt += 1;
                stats.store_retries.fetch_add(1, Ordering::Relaxed);
                let wait = Duration::from_millis(100u64 << attempt.min(6));
                tracing::warn!(error = %e, attempt, wait_ms = wait.as_millis() as u64, "feature store failed; retrying the batch");
                tokio::select! {
                    biased;
                    _ = shutdown.as_mut() => return Ok(None),
                    _ = tokio::time::sleep(wait) => {}
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Creates the pipeline's topics where they are missing.
pub async fn create_topics(kafka: &KafkaConfig, partitions: i32) -> Result<Vec<String>, StreamError> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = client_config(kafka).create()?;
    let metadata = admin
        .inner()
        .fetch_metadata(None, STARTUP_TIMEOUT)
        .map_err(|source| StreamError::Unreachable { brokers: kafka.brokers.clone(), source })?;
    let existing: Vec<&str> = metadata.topics().iter().map(|t| t.name()).collect();
    let wanted: Vec<&String> = all_topics(kafka).into_iter().filter(|t| !existing.contains(&t.as_str())).collect();
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let new: Vec<NewTopic<'_>> =
        wanted.iter().map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1))).collect();
    let opts = AdminOptions::new().operation_timeout(Some(STARTUP_TIMEOUT));
    let mut created = Vec::new();
    for r in admin.create_topics(&new, &opts).await? {
        match r {
            Ok(t) => created.push(t),
            Err((t, RDKafkaErrorCode::TopicAlreadyExists)) => tracing::debug!(topic = %t, "already exists"),
            Err((t, code)) => {
                return Err(StreamError::Client(KafkaError::AdminOp(code)))
                    .inspect_err(|_| tracing::error!(topic = %t, "cannot create"))
            }
        }
    }
    Ok(created)
}

/// Produces each line of `lines` as one record to `topic`, keyed by the event's
/// card (or transaction id) when the line parses; returns how many were delivered.
pub async fn produce_lines(
    kafka: &KafkaConfig,
    topic: &str,
    lines: impl Iterator<Item = Vec<u8>>,
) -> Result<u64, StreamError> {
    let producer: FutureProducer = client_config(kafka).set_if_absent("linger.ms", "5").create()?;
    let mut pending = Vec::new();
    let mut delivered = 0u64;
    for line in lines {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let key = Event::from_json(&line).ok().map(|e| decision_key(&e, &kafka.decision_key).to_owned());
        let mut record = FutureRecord::to(topic).payload(line.as_slice());
        if let Some(k) = &key {
            record = record.key(k.as_bytes());
        }
        pending.push(enqueue(&producer, record).await?);
        if pending.len() >= 10_000 {
            delivered += await_all(std::mem::take(&mut pending), topic).await?;
        }
    }
    delivered += await_all(pending, topic).await?;
    Ok(delivered)
}

async fn await_all(pending: Vec<DeliveryFuture>, topic: &str) -> Result<u64, StreamError> {
    let mut n = 0;
    for f in pending {
        match f.await {
            Ok(Ok(_)) => n += 1,
            Ok(Err((source, _))) => return Err(StreamError::Delivery { topic: topic.to_owned(), source }),
            Err(_) => return Err(StreamError::Delivery { topic: topic.to_owned(), source: KafkaError::Canceled }),
        }
    }
    Ok(n)
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_are_keyed_by_the_first_present_entity() {
        let e = Event::from_json(
            br#"{"transaction_id":"t","timestamp":"2026-01-01T00:00:00Z","amount":1,"currency":"EUR","customer_id":"u1"}"#,
        )
        .unwrap();
        assert_eq!(decision_key(&e, &[EventField::CardId, EventField::CustomerId]), "u1");
        assert_eq!(decision_key(&e, &[EventField::CardId]), "t");
    }
}
