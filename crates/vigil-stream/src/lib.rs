//! Vigil's Kafka entry point, at the end of the data flow: events in, decisions
//! and dead letters out, through the engine.
//!
//! Delivery is at-least-once and in order per partition:
//! - events are read in batches (bounded by `batch_size`) and decided with one
//!   feature-store call per batch; the reading loop reads and counts the next
//!   batch while a thread of its own (`vigil-decider`) scores and produces
//!   this one, so the stream keeps two cores busy, and batches still leave in
//!   the order they were read;
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
//! - when partitions are revoked (another instance joins or leaves the group),
//!   the revoke waits until every batch in flight is delivered and commits its
//!   offsets before the partitions go ([`vigil_kafka::Draining`]); records read
//!   from them but not decided yet are let go, and their new owner reads them
//!   from the committed offset. So a clean move redelivers nothing, and the
//!   decisions of one entity stay in order across it;
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

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{DeliveryFuture, FutureRecord, Producer as _};
use rdkafka::util::Timeout;
use tokio::sync::mpsc;
use vigil_core::pipeline::KafkaConfig;
use vigil_core::{Event, Label};
use vigil_engine::{Engine, EngineError, Gathered};
use vigil_kafka::{decision_key, enqueue, BrokerHealth, Draining, Producer, Watched};

pub mod ops;

/// Header carrying why an event was dead-lettered.
pub const ERROR_HEADER: &str = "vigil.error";
/// Header carrying where a dead-lettered event came from: `topic/partition/offset`.
pub const SOURCE_HEADER: &str = "vigil.source";

/// How long a batch waits to fill once its first event has arrived.
const BATCH_LINGER: Duration = Duration::from_millis(5);

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(transparent)]
    Kafka(#[from] vigil_kafka::Error),
    #[error("kafka client error: {0}")]
    Client(#[from] KafkaError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("internal error (a bug): {0}")]
    Internal(String),
}

/// Counters of a run, readable while it goes.
#[derive(Debug, Default)]
pub struct Stats {
    pub consumed: AtomicU64,
    pub decided: AtomicU64,
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
    /// Dead letters by why ([`DeadLetter`]), for the metrics.
    pub dead_letters: std::sync::Mutex<BTreeMap<DeadLetter, u64>>,
    /// Records read but let go undecided because their partition was revoked
    /// (the partition's next owner reads them).
    pub released: AtomicU64,
    /// Batches in flight, which a revoke waits for.
    pub drain: Arc<Draining>,
    /// Errors the consumer and producer met at the brokers; the consumer's
    /// assignment, rebalances and lag.
    pub broker: Arc<BrokerHealth>,
    /// Decisions by outcome, rule hits, scores and latency histograms, when
    /// `/metrics` is served.
    pub metrics: Option<Arc<ops::Metrics>>,
}

impl Stats {
    pub fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        BTreeMap::from([
            ("consumed", self.consumed.load(Ordering::Relaxed)),
            ("decided", self.decided.load(Ordering::Relaxed)),
            ("dead_lettered", self.dead_lettered()),
            ("replayed", self.replayed.load(Ordering::Relaxed)),
            ("store_retries", self.store_retries.load(Ordering::Relaxed)),
            ("delivered", self.delivered.load(Ordering::Relaxed)),
            ("committed_batches", self.committed_batches.load(Ordering::Relaxed)),
            ("labels_counted", self.labels_counted.load(Ordering::Relaxed)),
            ("labels_unchanged", self.labels_unchanged.load(Ordering::Relaxed)),
            ("released", self.released.load(Ordering::Relaxed)),
            ("broker_errors", self.broker.errors()),
        ])
    }
}

/// Why a record was dead-lettered, in bounded words: what it was read as
/// (`event` or `label`), [`vigil_core::EventError::kind`], and the field at
/// fault when it is a known one (else empty).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DeadLetter {
    pub input: &'static str,
    pub reason: &'static str,
    pub field: &'static str,
}

impl DeadLetter {
    fn of(input: &'static str, e: &vigil_core::EventError) -> DeadLetter {
        DeadLetter { input, reason: e.kind(), field: e.known_field().unwrap_or_default() }
    }
}

impl Stats {
    /// Dead letters so far, by why.
    pub fn dead_letters(&self) -> Vec<(DeadLetter, u64)> {
        let counts = self.dead_letters.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        counts.iter().map(|(k, n)| (k.clone(), *n)).collect()
    }

    /// Records sent to the dead-letter topic so far (events and labels).
    pub fn dead_lettered(&self) -> u64 {
        let counts = self.dead_letters.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        counts.values().sum()
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

/// Runs the pipeline until `shutdown` completes, then drains, commits and returns.
pub async fn run(
    kafka: &KafkaConfig,
    engine: Arc<Engine>,
    stats: Arc<Stats>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StreamError> {
    let consumer = vigil_kafka::consumer(kafka, &stats.broker, &stats.drain)?;
    let producer = vigil_kafka::producer(kafka, &stats.broker)?;
    vigil_kafka::check_topics(kafka, &consumer)?;
    let consumer = Arc::new(consumer);
    let inputs = vigil_kafka::input_topics(kafka);
    consumer.subscribe(&inputs)?;
    tracing::info!(topics = ?inputs, group = %kafka.group_id, "consuming");

    let (tx, rx) = mpsc::channel::<InFlight>(kafka.max_in_flight_batches);
    // The committer has a thread of its own: a revoke blocks the reading
    // loop's thread until the committer has stored what is in flight, which
    // must not depend on the runtime having another worker free.
    let (done, committed) = tokio::sync::oneshot::channel();
    {
        let consumer = consumer.clone();
        let stats = stats.clone();
        let topics = (kafka.decisions_topic.clone(), kafka.dead_letter_topic.clone());
        std::thread::Builder::new()
            .name("vigil-committer".into())
            .spawn(move || {
                let result = match tokio::runtime::Builder::new_current_thread().build() {
                    Ok(rt) => rt.block_on(commit_in_order(rx, &consumer, &stats, topics)),
                    Err(e) => Err(StreamError::Internal(format!("cannot start the offset committer: {e}"))),
                };
                stats.drain.close();
                let _ = done.send(result);
            })
            .map_err(|e| StreamError::Internal(format!("cannot start the offset committer: {e}")))?;
    }
    // The decider, for the same reason, has a thread of its own too: a batch
    // counted by the reading loop is handed over before a revoke can wait for
    // it.
    let (to_decide, counted) = mpsc::channel::<Counted>(1);
    let (decider_done, decided) = tokio::sync::oneshot::channel();
    {
        let (kafka, engine, producer, stats) = (kafka.clone(), engine.clone(), producer.clone(), stats.clone());
        std::thread::Builder::new()
            .name("vigil-decider".into())
            .spawn(move || {
                let result = match tokio::runtime::Builder::new_current_thread().enable_time().build() {
                    Ok(rt) => rt.block_on(decide_in_order(counted, &kafka, &engine, &producer, &stats, tx)),
                    Err(e) => Err(StreamError::Internal(format!("cannot start the decider: {e}"))),
                };
                let _ = decider_done.send(result);
            })
            .map_err(|e| StreamError::Internal(format!("cannot start the decider: {e}")))?;
    }

    let result = consume(kafka, &engine, &consumer, &stats, to_decide, shutdown).await;
    // The sender is dropped: the decider decides what it was handed, then the
    // committer finishes what is in flight, and both stop.
    let decided = decided.await.unwrap_or_else(|_| Err(StreamError::Internal("the decider stopped".into())));
    let committed =
        committed.await.unwrap_or_else(|_| Err(StreamError::Internal("the offset committer stopped".into())));
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
    result.and(decided).and(committed)
}

/// Awaits each batch's deliveries, in order, then stores its offsets and
/// tells the drain; stops at the first failed delivery.
async fn commit_in_order(
    mut rx: mpsc::Receiver<InFlight>,
    consumer: &StreamConsumer<Watched>,
    stats: &Stats,
    topics: (String, String),
) -> Result<(), StreamError> {
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
                Ok(Err((source, _))) => return Err(delivery(name(output), source)),
                Err(_) => return Err(delivery(name(output), KafkaError::Canceled)),
            }
        }
        for ((topic, partition), offset) in &batch.offsets {
            // librdkafka stores `offset + 1`, the next one to read. A partition
            // revoked meanwhile (a drain that timed out) refuses the store; its
            // new owner re-reads it.
            if let Err(e) = consumer.store_offset(topic, *partition, *offset) {
                tracing::debug!(%topic, partition, offset, error = %e, "offset not stored");
            }
        }
        stats.committed_batches.fetch_add(1, Ordering::Relaxed);
        stats.drain.stored();
    }
    Ok(())
}

async fn consume(
    kafka: &KafkaConfig,
    engine: &Engine,
    consumer: &StreamConsumer<Watched>,
    stats: &Stats,
    to_decide: mpsc::Sender<Counted>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StreamError> {
    tokio::pin!(shutdown);
    let drain = &stats.drain;
    loop {
        let first = tokio::select! {
            biased;
            _ = &mut shutdown => return Ok(()),
            m = consumer.recv() => m,
        };
        let mut batch: Vec<OwnedMessage> = Vec::with_capacity(kafka.batch_size);
        // A revoke runs inside `recv`: what this batch holds of a partition
        // revoked since it began is let go (see `release_revoked`).
        let mut seen = drain.revocations();
        match first {
            Ok(m) => batch.push(m.detach()),
            Err(e) => {
                tracing::warn!(error = %e, "consumer error");
                continue;
            }
        }
        let deadline = tokio::time::Instant::now() + BATCH_LINGER;
        while batch.len() < kafka.batch_size {
            let next = tokio::time::timeout_at(deadline, consumer.recv()).await;
            release_revoked(drain, &mut seen, &mut batch, stats);
            match next {
                Ok(Ok(m)) => batch.push(m.detach()),
                Ok(Err(e)) => tracing::warn!(error = %e, "consumer error"),
                Err(_) => break,
            }
        }
        if batch.is_empty() {
            continue;
        }
        stats.consumed.fetch_add(batch.len() as u64, Ordering::Relaxed);
        let Some(counted) = count_batch(kafka, engine, stats, batch, &mut shutdown).await? else {
            // Shut down while the feature store was failing: nothing of this batch
            // is stored, so it will be read again.
            return Ok(());
        };
        // Counted from here: a revoke waits until the committer has stored it.
        drain.handed_over();
        if to_decide.send(counted).await.is_err() {
            // The decider or the committer stopped on an error; it reports it.
            return Ok(());
        }
    }
}

/// Lets go of the records of `batch` whose partition was revoked since
/// revocation `seen` (librdkafka ran the revoke while the batch was filling).
/// They are neither decided nor stored; the partition's next owner reads them
/// from the offset committed at the revoke.
fn release_revoked(drain: &Draining, seen: &mut u64, batch: &mut Vec<OwnedMessage>, stats: &Stats) {
    let now = drain.revocations();
    if now == *seen {
        return;
    }
    let gone = drain.revoked_after(*seen);
    *seen = now;
    let before = batch.len();
    batch.retain(|m| !gone.iter().any(|(t, p)| t == m.topic() && *p == m.partition()));
    let released = before - batch.len();
    if released > 0 {
        stats.released.fetch_add(released as u64, Ordering::Relaxed);
        tracing::debug!(released, "records of revoked partitions let go before deciding");
    }
}

/// A batch's records, sorted: events to decide, labels to record, and what
/// goes to the dead-letter topic (the record's index and why).
struct Sorted {
    offsets: BTreeMap<(String, i32), i64>,
    events: Vec<(usize, Event)>,
    labels: Vec<Label>,
    dead: Vec<(usize, String, DeadLetter)>,
}

/// Reads a batch's records; a label is read as every entry point reads one
/// (`vigil_features::labels::read`).
fn sort(kafka: &KafkaConfig, engine: &Engine, batch: &[OwnedMessage]) -> Sorted {
    let mut sorted = Sorted {
        offsets: BTreeMap::new(),
        events: Vec::with_capacity(batch.len()),
        labels: Vec::new(),
        dead: Vec::new(),
    };
    for (i, m) in batch.iter().enumerate() {
        sorted
            .offsets
            .entry((m.topic().to_owned(), m.partition()))
            .and_modify(|o: &mut i64| *o = (*o).max(m.offset()))
            .or_insert(m.offset());
        let payload = m.payload().unwrap_or_default();
        if kafka.labels_topic.as_deref() == Some(m.topic()) {
            match vigil_features::labels::read(payload, engine.features()) {
                Ok(l) => sorted.labels.push(l),
                Err(e) => sorted.dead.push((i, format!("label: {e}"), DeadLetter::of("label", &e))),
            }
            continue;
        }
        match Event::from_json(payload) {
            Ok(e) => sorted.events.push((i, e)),
            Err(e) => sorted.dead.push((i, e.to_string(), DeadLetter::of("event", &e))),
        }
    }
    sorted
}

/// A batch read and counted by the feature store, waiting for the decider.
struct Counted {
    batch: Vec<OwnedMessage>,
    offsets: BTreeMap<(String, i32), i64>,
    events: Vec<(usize, Event)>,
    dead: Vec<(usize, String, DeadLetter)>,
    gathered: Gathered,
    started: std::time::Instant,
}

/// The reading loop's half of a batch: its labels recorded, its events'
/// features read and counted (retried while the store fails). `None` when
/// shut down meanwhile.
async fn count_batch(
    kafka: &KafkaConfig,
    engine: &Engine,
    stats: &Stats,
    batch: Vec<OwnedMessage>,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Result<Option<Counted>, StreamError> {
    let started = std::time::Instant::now();
    let Sorted { offsets, events, labels, dead } = sort(kafka, engine, &batch);
    if !labels.is_empty() {
        let refs: Vec<&Label> = labels.iter().collect();
        let Some(recorded) = retrying(stats, shutdown, || engine.record_labels(&refs)).await? else {
            return Ok(None);
        };
        stats.labels_counted.fetch_add(recorded.counted() as u64, Ordering::Relaxed);
        stats.labels_unchanged.fetch_add(recorded.unchanged() as u64, Ordering::Relaxed);
    }
    let refs: Vec<&Event> = events.iter().map(|(_, e)| e).collect();
    let Some(gathered) = retrying(stats, shutdown, || engine.gather(&refs, None)).await? else {
        return Ok(None);
    };
    Ok(Some(Counted { batch, offsets, events, dead, gathered, started }))
}

/// The decider: decides each counted batch, in the order read, produces its
/// decisions and dead letters, and hands its deliveries to the committer.
/// Stops at the first error, or when the reading loop stops.
async fn decide_in_order(
    mut counted: mpsc::Receiver<Counted>,
    kafka: &KafkaConfig,
    engine: &Engine,
    producer: &Producer,
    stats: &Stats,
    tx: mpsc::Sender<InFlight>,
) -> Result<(), StreamError> {
    while let Some(c) = counted.recv().await {
        let flight = deliver_batch(kafka, engine, producer, stats, c).await?;
        if tx.send(flight).await.is_err() {
            // The committer stopped on a delivery error; it reports it.
            return Ok(());
        }
    }
    Ok(())
}

/// The decider's half of a batch: the policy over its gathered features,
/// then its decisions and dead letters enqueued to the producer.
async fn deliver_batch(
    kafka: &KafkaConfig,
    engine: &Engine,
    producer: &Producer,
    stats: &Stats,
    counted: Counted,
) -> Result<InFlight, StreamError> {
    let Counted { batch, offsets, events, dead, gathered, started } = counted;
    let refs: Vec<&Event> = events.iter().map(|(_, e)| e).collect();
    let mut decisions = engine.finish(&refs, gathered)?;

    let mut deliveries = Vec::with_capacity(batch.len());
    if let Some(m) = &stats.metrics {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        for (i, _) in &events {
            if let Some(at) = batch[*i].timestamp().to_millis() {
                m.event_to_decision.observe((now_ms - at).max(0) as f64 / 1000.0);
            }
        }
        m.batch.observe(started.elapsed().as_secs_f64());
    }
    for ((i, event), decision) in events.iter().zip(decisions.iter_mut()) {
        decision.traceparent = traceparent(&batch[*i]);
        let payload = decision.to_json();
        let key = decision_key(event, &kafka.decision_key);
        let record = FutureRecord::to(&kafka.decisions_topic).key(key.as_bytes()).payload(payload.as_slice());
        let f = enqueue(producer, record).await?;
        deliveries.push((Output::Decisions, f));
        if decision.replayed {
            stats.replayed.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(m) = &stats.metrics {
            m.decisions.decided(decision);
        }
    }
    stats.decided.fetch_add(decisions.len() as u64, Ordering::Relaxed);
    for (i, reason, _) in &dead {
        let f = dead_letter(kafka, producer, &batch[*i], reason).await?;
        deliveries.push((Output::DeadLetter, f));
    }
    if !dead.is_empty() {
        let mut counts = stats.dead_letters.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for (_, _, why) in dead {
            *counts.entry(why).or_default() += 1;
        }
    }
    Ok(InFlight { deliveries, offsets })
}

/// The record's valid W3C `traceparent` header, if it has one.
fn traceparent(m: &OwnedMessage) -> Option<String> {
    let headers = m.headers()?;
    let h = headers.iter().find(|h| h.key == vigil_core::trace::TRACEPARENT)?;
    let value = std::str::from_utf8(h.value?).ok()?;
    vigil_core::trace::traceparent(value).map(str::to_owned)
}

/// Sends a record to the dead-letter topic with its original key, bytes and
/// headers, the reason in [`ERROR_HEADER`] and its origin in [`SOURCE_HEADER`].
async fn dead_letter(
    kafka: &KafkaConfig,
    producer: &Producer,
    m: &OwnedMessage,
    reason: &str,
) -> Result<DeliveryFuture, KafkaError> {
    let source = format!("{}/{}/{}", m.topic(), m.partition(), m.offset());
    tracing::debug!(%source, %reason, "dead-lettering event");
    let mut headers = OwnedHeaders::new()
        .insert(Header { key: ERROR_HEADER, value: Some(reason) })
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
    enqueue(producer, record).await
}

/// A delivery that failed: nothing after the last delivered batch is committed.
fn delivery(topic: String, source: KafkaError) -> StreamError {
    StreamError::Kafka(vigil_kafka::Error::Delivery { topic, source })
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
