//! What only the owned store has: a new owner carries on exactly where the
//! journal left off, a stale owner is fenced, and a failed journal write
//! never leaves memory ahead of the journal. Each case runs with the journal
//! in memory, in Redis and in a Redis Cluster (the conformance suite's
//! servers).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use vigil_core::feature::{Aggregate, EntityKey, FeatureDef};
use vigil_core::{Event, FeatureVector, Label};

use super::*;
use crate::MemoryStore;

fn plan() -> Plan {
    let f = |name: &str, entity: &str, aggregate, window_s, of| FeatureDef {
        of,
        ..FeatureDef::new(name, EntityKey::parse(entity).unwrap(), aggregate, window_s)
    };
    Plan::new(vec![
        f("card_count_1h", "card_id", Aggregate::Count, 3600, None),
        f("card_sum_24h", "card_id", Aggregate::SumAmount, 86_400, None),
        f("card_std_24h", "card_id", Aggregate::StdAmount, 86_400, None),
        f("card_since", "card_id", Aggregate::TimeSinceLast, 86_400, None),
        f("card_merchants", "card_id", Aggregate::Distinct, 86_400, Some(vigil_core::EventField::MerchantId)),
        f("card_merchant_count", "card_id+merchant_id", Aggregate::Count, 86_400, None),
        f("terminal_count_1h", "terminal_id", Aggregate::Count, 3600, None),
        f("terminal_frauds", "terminal_id", Aggregate::FraudCount, 86_400, None),
    ])
}

/// `n` events over 17 cards, 5 terminals and 3 merchants, a minute apart.
fn history(n: usize) -> Vec<Event> {
    (0..n)
        .map(|i| {
            let t = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap()
                + chrono::Duration::seconds(60 * i as i64);
            let json = format!(
                r#"{{"transaction_id":"t{i}","timestamp":"{}","amount":"{}.{:02}","currency":"EUR","card_id":"c{}","terminal_id":"p{}","merchant_id":"m{}"}}"#,
                t.to_rfc3339(),
                (i * 37) % 400 + 1,
                i % 100,
                (i * 7) % 17,
                i % 5,
                (i / 3) % 3
            );
            Event::from_json(json.as_bytes()).unwrap()
        })
        .collect()
}

/// A fraud label for event `i`, reported when event `i + 5` happens.
fn fraud(events: &[Event], i: usize) -> Label {
    let e = &events[i];
    let reported = e.timestamp + chrono::Duration::seconds(5 * 60);
    let json = format!(
        r#"{{"transaction_id":"{}","label":"fraud","reported_at":"{}","timestamp":"{}","terminal_id":"{}"}}"#,
        e.transaction_id,
        reported.to_rfc3339(),
        e.timestamp.to_rfc3339(),
        e.terminal_id.as_deref().unwrap_or_default()
    );
    Label::from_json(json.as_bytes()).unwrap()
}

async fn journal(kind: &str) -> Arc<dyn Journal> {
    let prefix = format!("vigiltest-{}", uuid::Uuid::new_v4());
    match kind {
        "memory" => Arc::new(MemoryJournal::default()),
        redis => Arc::new(crate::conformance::owned_journal(redis, &prefix).await),
    }
}

fn policy(events: usize) -> SnapshotPolicy {
    SnapshotPolicy { events, ..Default::default() }
}

/// Feeds `events[range]` in batches that end at every seventh event of the
/// history (so that any range meets labels at the same places), with every
/// eleventh event's fraud label applied after its batch; returns each
/// event's features.
async fn feed(store: &dyn FeatureStore, events: &[Event], range: std::ops::Range<usize>) -> Vec<FeatureVector> {
    let mut out = Vec::new();
    let ids: Vec<usize> = range.collect();
    for chunk in ids.chunk_by(|a, b| a / 7 == b / 7) {
        let batch: Vec<&Event> = chunk.iter().map(|&i| &events[i]).collect();
        out.extend(store.process(&batch).await.unwrap());
        let labels: Vec<Label> = chunk.iter().filter(|&&i| i % 11 == 0).map(|&i| fraud(events, i)).collect();
        let refs: Vec<&Label> = labels.iter().collect();
        store.apply_labels(&refs).await.unwrap();
    }
    out
}

/// Every event's features from one pass over the memory store: what the
/// owned store must give, whatever happens to it.
async fn one_pass(events: &[Event]) -> Vec<FeatureVector> {
    feed(&MemoryStore::new(plan(), 3600), events, 0..events.len()).await
}

fn values(fv: &[FeatureVector]) -> Vec<(Vec<vigil_core::FeatureValue>, u64)> {
    fv.iter().map(|f| (f.values.clone(), f.fingerprint)).collect()
}

async fn a_new_owner_carries_on_exactly(kind: &str) {
    let events = history(400);
    let expected = one_pass(&events).await;

    let journal = journal(kind).await;
    // The first owner snapshots every 50 events and dies after 250, with
    // entries appended since its last snapshot.
    let first = OwnedStore::open(plan(), 3600, journal.clone(), policy(50)).await.unwrap();
    let before = feed(&first, &events, 0..250).await;
    assert_eq!(values(&before), values(&expected[..250]), "{kind}: the first owner");
    drop(first);

    let second = OwnedStore::open(plan(), 3600, journal.clone(), policy(50)).await.unwrap();
    // Kafka redelivers what the first owner decided after its last commit:
    // the same features, marked replayed, counted once.
    let redelivered = feed(&second, &events, 230..250).await;
    assert!(redelivered.iter().all(|f| f.replayed), "{kind}: redeliveries are replays");
    assert_eq!(values(&redelivered), values(&expected[230..250]), "{kind}: redelivered");
    let after = feed(&second, &events, 250..400).await;
    assert!(after.iter().all(|f| !f.replayed), "{kind}");
    assert_eq!(values(&after), values(&expected[250..400]), "{kind}: the second owner");

    // A third owner, after a snapshot written on demand, the same again.
    second.snapshot().await.unwrap();
    drop(second);
    let third = OwnedStore::open(plan(), 3600, journal, policy(50)).await.unwrap();
    let again = feed(&third, &events, 390..400).await;
    assert_eq!(values(&again), values(&expected[390..400]), "{kind}: the third owner");
}

async fn a_stale_owner_is_fenced(kind: &str) {
    let events = history(20);
    let journal = journal(kind).await;
    let old = OwnedStore::open(plan(), 3600, journal.clone(), policy(5)).await.unwrap();
    feed(&old, &events, 0..7).await;
    let new = OwnedStore::open(plan(), 3600, journal.clone(), policy(5)).await.unwrap();
    assert!(new.epoch().await > old.epoch().await);
    assert!(matches!(old.ping().await, Err(FeatureError::Fenced(_))), "{kind}: the old owner is not ready");
    new.ping().await.unwrap();
    for _ in 0..2 {
        let refused = old.process(&[&events[7]]).await.unwrap_err();
        assert!(matches!(refused, FeatureError::Fenced(_)), "{kind}: {refused}");
        assert!(!refused.is_retryable());
    }
    // The old owner's refused event was never counted: the new one counts it.
    let expected = one_pass(&events).await;
    let after = feed(&new, &events, 7..20).await;
    assert_eq!(values(&after), values(&expected[7..20]), "{kind}");
}

/// A journal whose appends fail on demand: before writing (`lost`) or after
/// (`unanswered`: written, but the owner never hears so).
#[derive(Default)]
struct Flaky {
    inner: MemoryJournal,
    lost: AtomicUsize,
    unanswered: AtomicUsize,
    /// Milliseconds every append takes.
    slow_ms: AtomicUsize,
    /// Snapshots wait for `release` while set.
    hold: std::sync::atomic::AtomicBool,
    release: tokio::sync::Notify,
    /// Snapshots to fail (after waiting), and how many were begun.
    fail_snapshots: AtomicUsize,
    snapshots: AtomicUsize,
    /// Marker lookups made.
    lookups: AtomicUsize,
}

#[async_trait]
impl Journal for Flaky {
    async fn take(&self, held: Option<u64>, taker: &str) -> Result<Taken, FeatureError> {
        self.inner.take(held, taker).await
    }

    async fn append(&self, epoch: u64, entries: Vec<Vec<u8>>, markers: Markers) -> Result<(), FeatureError> {
        let slow = self.slow_ms.load(Ordering::SeqCst) as u64;
        tokio::time::sleep(std::time::Duration::from_millis(slow)).await;
        if self.lost.swap(0, Ordering::SeqCst) > 0 {
            return Err(FeatureError::Unavailable("lost".into()));
        }
        self.inner.append(epoch, entries, markers).await?;
        if self.unanswered.swap(0, Ordering::SeqCst) > 0 {
            return Err(FeatureError::Timeout(1));
        }
        Ok(())
    }

    async fn markers(&self, ids: &[&str]) -> Result<Vec<Option<Vec<u8>>>, FeatureError> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        self.inner.markers(ids).await
    }

    async fn ping(&self, epoch: u64) -> Result<(), FeatureError> {
        self.inner.ping(epoch).await
    }

    async fn snapshot(&self, epoch: u64, snapshot: Snapshot) -> Result<(), FeatureError> {
        self.snapshots.fetch_add(1, Ordering::SeqCst);
        if self.hold.load(Ordering::SeqCst) {
            self.release.notified().await;
        }
        if self.fail_snapshots.swap(0, Ordering::SeqCst) > 0 {
            return Err(FeatureError::Unavailable("snapshot lost".into()));
        }
        self.inner.snapshot(epoch, snapshot).await
    }
}

impl OwnedStore {
    /// Waits for the snapshot being written, if any.
    async fn settled(&self) {
        drop(self.writing.lock().await);
    }
}

#[tokio::test]
async fn a_failed_append_never_leaves_memory_ahead_of_the_journal() {
    let events = history(60);
    let expected = one_pass(&events).await;
    let journal = Arc::new(Flaky::default());
    let store = OwnedStore::open(plan(), 3600, journal.clone(), policy(9)).await.unwrap();
    let mut got = feed(&store, &events, 0..21).await;

    // Lost before the journal had it: the retried batch is counted fresh.
    journal.lost.store(1, Ordering::SeqCst);
    let batch: Vec<&Event> = events[21..28].iter().collect();
    assert!(store.process(&batch).await.is_err());
    let retried = feed(&store, &events, 21..28).await;
    assert!(retried.iter().all(|f| !f.replayed));
    got.extend(retried);

    // In the journal but unanswered: the retry finds them counted.
    journal.unanswered.store(1, Ordering::SeqCst);
    let batch: Vec<&Event> = events[28..35].iter().collect();
    assert!(store.process(&batch).await.is_err());
    let retried = feed(&store, &events, 28..35).await;
    assert!(retried.iter().all(|f| f.replayed));
    got.extend(retried);

    got.extend(feed(&store, &events, 35..60).await);
    assert_eq!(values(&got), values(&expected));
    store.settled().await;
    assert!(journal.inner.log_len() < 9, "snapshots trim the journal");
}

/// A snapshot is written in the background: calls go on while it waits.
/// One that fails leaves its records and events to the next, memory reloads
/// (the failed write may have landed), and a new owner carries on exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_go_on_while_a_snapshot_is_written() {
    let events = history(120);
    let expected = one_pass(&events).await;
    let journal = Arc::new(Flaky::default());
    journal.hold.store(true, Ordering::SeqCst);
    let store = OwnedStore::open(plan(), 3600, journal.clone(), policy(20)).await.unwrap();
    let fed = tokio::time::timeout(std::time::Duration::from_secs(20), feed(&store, &events, 0..63));
    let mut got = fed.await.expect("calls go on while a snapshot waits");
    for _ in 0..500 {
        if journal.snapshots.load(Ordering::SeqCst) > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(journal.snapshots.load(Ordering::SeqCst), 1, "one snapshot at a time");
    assert_eq!(journal.inner.log_len(), 15, "nothing trimmed yet: 9 batches of events, 6 of labels");
    // (Ranges end at multiples of 7, as `feed`'s batches do.)

    journal.fail_snapshots.store(1, Ordering::SeqCst);
    journal.hold.store(false, Ordering::SeqCst);
    journal.release.notify_one();
    store.settled().await;
    got.extend(feed(&store, &events, 63..98).await);
    store.snapshot().await.unwrap();
    assert_eq!(journal.inner.log_len(), 0, "the snapshot after the failed one covers its entries too");
    drop(store);
    let second = OwnedStore::open(plan(), 3600, journal.clone(), policy(20)).await.unwrap();
    got.extend(feed(&second, &events, 98..120).await);
    assert_eq!(values(&got), values(&expected));
}

/// Events 21..28 are counted in a call whose entry is slow, then lost; 50
/// ms into its write, a second call over `next` must fail before answering.
/// Retried, events 21..42 give what one pass gives, all counted afresh.
async fn behind_a_lost_entry(next: std::ops::Range<usize>) {
    let events = history(42);
    let expected = one_pass(&events).await;
    let journal = Arc::new(Flaky::default());
    let store = Arc::new(OwnedStore::open(plan(), 3600, journal.clone(), policy(1000)).await.unwrap());
    let mut got = feed(store.as_ref(), &events, 0..21).await;
    journal.slow_ms.store(200, Ordering::SeqCst);
    journal.lost.store(1, Ordering::SeqCst);
    let first = {
        let (store, events) = (store.clone(), events.clone());
        tokio::spawn(async move { store.process(&events[21..28].iter().collect::<Vec<_>>()).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let second = store.process(&events[next.clone()].iter().collect::<Vec<_>>()).await;
    assert!(first.await.unwrap().is_err(), "the lost entry's call fails");
    let why = second.expect_err("the call behind the lost entry fails").to_string();
    assert!(why.contains("earlier batch"), "{next:?}: {why}");
    journal.slow_ms.store(0, Ordering::SeqCst);
    let retried = feed(store.as_ref(), &events, 21..42).await;
    assert!(retried.iter().all(|f| !f.replayed), "{next:?}: counted afresh after the reload");
    got.extend(retried);
    assert_eq!(values(&got), values(&expected));
}

/// A call computes while the previous one's entry travels; when that entry
/// is lost, the call computed on top of it fails too, before writing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_computed_on_a_lost_entry_fails_before_writing() {
    behind_a_lost_entry(28..35).await;
}

/// A call that counts nothing (all redeliveries) right behind a write that
/// is then lost is refused too: the features it would answer with were
/// counted by the lost entry, and come out afresh after the reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivery_read_from_a_lost_entry_is_refused() {
    behind_a_lost_entry(21..28).await;
}

/// A call dropped while its entry was on the way (a deadline cut it): the
/// entry still goes out, so the retried batch finds its events counted
/// (replayed, with their first features), and nothing reloads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_call_still_writes_its_entry() {
    let events = history(35);
    let expected = one_pass(&events).await;
    let journal = Arc::new(Flaky::default());
    let store = OwnedStore::open(plan(), 3600, journal.clone(), policy(1000)).await.unwrap();
    let mut got = feed(&store, &events, 0..21).await;
    journal.slow_ms.store(300, Ordering::SeqCst);
    let batch: Vec<&Event> = events[21..28].iter().collect();
    let cut = tokio::time::timeout(std::time::Duration::from_millis(50), store.process(&batch)).await;
    assert!(cut.is_err(), "the call was cut before its entry went out");
    journal.slow_ms.store(0, Ordering::SeqCst);
    let retried = feed(&store, &events, 21..28).await;
    assert!(retried.iter().all(|f| f.replayed), "the cut call's events were counted");
    assert_eq!(values(&retried), values(&expected[21..28]));
    assert!(!store.writer.stale.load(Ordering::SeqCst), "nothing to reload");
    let epoch = store.epoch().await;
    got.extend(retried);
    got.extend(feed(&store, &events, 28..35).await);
    assert_eq!(values(&got), values(&expected));
    assert_eq!(store.epoch().await, epoch, "no reload took the journal again");
}

/// A retry long after its transaction (memory keeps only the newest
/// markers) is still recognised: its first features come back from the
/// journal's markers, replayed, with the first event's fingerprint, and
/// nothing is counted again; so after a takeover whose snapshot covers it.
async fn a_retry_is_recognised_after_memory_let_it_go(kind: &str) {
    let events = history(90);
    let expected = one_pass(&events).await;
    let journal = journal(kind).await;
    let store = OwnedStore::open(plan(), 3600, journal.clone(), policy(1000)).await.unwrap();
    let mut got = feed(&store, &events, 0..42).await;
    {
        // What memory does with markers beyond the newest `MARKER_LIMIT`.
        let mut owner = store.owner.lock().await;
        owner.local.markers.clear();
        owner.local.marker_order.clear();
    }
    let retried = feed(&store, &events, 7..21).await;
    assert!(retried.iter().all(|f| f.replayed), "{kind}: retries found in the journal's markers");
    assert_eq!(values(&retried), values(&expected[7..21]), "{kind}: their first features");
    got.extend(feed(&store, &events, 42..63).await);

    // A new owner after a snapshot (which carries no markers): the same.
    store.snapshot().await.unwrap();
    drop(store);
    let second = OwnedStore::open(plan(), 3600, journal, policy(1000)).await.unwrap();
    let retried = feed(&second, &events, 28..35).await;
    assert!(retried.iter().all(|f| f.replayed), "{kind}: after a takeover");
    assert_eq!(values(&retried), values(&expected[28..35]), "{kind}");
    got.extend(feed(&second, &events, 63..90).await);
    assert_eq!(values(&got), values(&expected), "{kind}: nothing counted twice");
}

/// Calls made together share one marker lookup, and each gets its own
/// transactions' markers back.
#[tokio::test]
async fn calls_made_together_share_a_marker_lookup() {
    let events = history(40);
    let expected = one_pass(&events).await;
    let journal = Arc::new(Flaky::default());
    let store = Arc::new(OwnedStore::open(plan(), 3600, journal.clone(), policy(1000)).await.unwrap());
    feed(store.as_ref(), &events, 0..40).await;
    {
        let mut owner = store.owner.lock().await;
        owner.local.markers.clear();
        owner.local.marker_order.clear();
    }
    let before = journal.lookups.load(Ordering::SeqCst);
    // Retries one event per call, all at once: only the journal's markers know them.
    let calls: Vec<_> = (3..33)
        .map(|i| {
            let (store, event) = (store.clone(), events[i].clone());
            tokio::spawn(async move { store.process(&[&event]).await.unwrap().remove(0) })
        })
        .collect();
    let mut retried = Vec::new();
    for c in calls {
        retried.push(c.await.unwrap());
    }
    assert!(retried.iter().all(|f| f.replayed), "every retry recognised");
    assert_eq!(values(&retried), values(&expected[3..33]), "each call its own first features");
    let lookups = journal.lookups.load(Ordering::SeqCst) - before;
    assert!(lookups <= 2, "30 calls made together looked markers up {lookups} times");
}

macro_rules! on_every_journal {
    ($($case:ident),* $(,)?) => {
        mod memory_journal {
            $(#[tokio::test] async fn $case() { super::$case("memory").await })*
        }
        mod redis_journal {
            $(#[tokio::test] async fn $case() { super::$case("redis").await })*
        }
        mod cluster_journal {
            $(#[tokio::test] async fn $case() { super::$case("redis-cluster").await })*
        }
    };
}

on_every_journal!(
    a_new_owner_carries_on_exactly,
    a_stale_owner_is_fenced,
    a_retry_is_recognised_after_memory_let_it_go
);

/// Entries and markers written before byte strings were encoded whole read
/// back the same, and new ones are the same bytes.
#[test]
fn journal_entries_keep_their_encoding() {
    #[derive(serde::Serialize)]
    enum Plain {
        Events { now: i64, events: Vec<Vec<u8>> },
        Labels { now: i64, labels: Vec<Vec<u8>> },
    }
    let items = vec![b"{\"transaction_id\":\"t1\"}".to_vec(), Vec::new(), vec![0u8, 255, 7]];
    let pairs = [
        (Op::Events { now: -3, events: items.clone() }, Plain::Events { now: -3, events: items.clone() }),
        (
            Op::Labels { now: 1_700_000_000, labels: items.clone() },
            Plain::Labels { now: 1_700_000_000, labels: items.clone() },
        ),
    ];
    for (op, plain) in pairs {
        let new = op.encode().unwrap();
        assert_eq!(new, postcard::to_allocvec(&plain).unwrap());
        let back: Op = postcard::from_bytes(&new).unwrap();
        match back {
            Op::Events { events: got, .. } | Op::Labels { labels: got, .. } => assert_eq!(got, items),
        }
    }

    #[derive(serde::Serialize)]
    struct PlainMarks {
        markers: Vec<(String, i64, Vec<u8>)>,
        labels: Vec<(String, i64)>,
    }
    let markers = vec![("t1".to_owned(), 1_700_000_000, items[0].clone()), ("t2".to_owned(), -1, Vec::new())];
    let labels = vec![("t3".to_owned(), 5)];
    let new = Marks { markers: markers.clone(), labels: labels.clone() }.encode().unwrap();
    assert_eq!(new, postcard::to_allocvec(&PlainMarks { markers: markers.clone(), labels: labels.clone() }).unwrap());
    let back: Marks = postcard::from_bytes(&new).unwrap();
    assert_eq!((back.markers, back.labels), (markers, labels));
}
