//! One contract, two backends: every case runs against the memory store (which
//! needs no server), a real Redis (`VIGIL_TEST_REDIS_URL`, default
//! `redis://127.0.0.1:6379`) and a real Redis Cluster
//! (`VIGIL_TEST_REDIS_CLUSTER`, comma-separated seed nodes, default the three
//! nodes `scripts/services.sh` starts on 127.0.0.1:7001-7003), each as a test
//! of its own: `on_memory::CASE`, `on_redis::CASE`, `on_cluster::CASE`; and
//! the owned store (`mode = "owned"`) with its journal in each of the three,
//! snapshotting every few events so that the cases cross snapshots:
//! `on_owned_memory::CASE`, `on_owned_redis::CASE`, `on_owned_cluster::CASE`.

use std::sync::Arc;

use rust_decimal::Decimal;
use vigil_core::feature::{Aggregate, EntityKey, FeatureDef};
use vigil_core::{Event, FeatureValue, FeatureVector};

use crate::{FeatureStore, KeyLayout, LabelOutcome, MemoryStore, Plan, RedisStore};

const T0: &str = "2026-01-01T00:00:00Z";

fn plan() -> Plan {
    let f = |name: &str, entity: &str, aggregate, window_s| {
        FeatureDef::new(name, EntityKey::parse(entity).unwrap(), aggregate, window_s)
    };
    Plan::new(vec![
        f("card_count_10m", "card_id", Aggregate::Count, 600),
        f("card_sum_1h", "card_id", Aggregate::SumAmount, 3600),
        f("card_count_24h", "card_id", Aggregate::Count, 86_400),
        f("terminal_count_1h", "terminal_id", Aggregate::Count, 3600),
        f("card_merchant_count_24h", "card_id+merchant_id", Aggregate::Count, 86_400),
    ])
}

fn ev(id: &str, secs: i64, amount: &str, card: Option<&str>, terminal: &str) -> Event {
    let t = chrono::DateTime::parse_from_rfc3339(T0).unwrap() + chrono::Duration::seconds(secs);
    let card = card.map_or(String::new(), |c| format!(r#","card_id":"{c}""#));
    let json = format!(
        r#"{{"transaction_id":"{id}","timestamp":"{}","amount":"{amount}","currency":"EUR"{card},"terminal_id":"{terminal}","merchant_id":"m1"}}"#,
        t.to_rfc3339()
    );
    Event::from_json(json.as_bytes()).unwrap()
}

fn count(n: i64) -> FeatureValue {
    FeatureValue::Count(n)
}

fn money(s: &str) -> FeatureValue {
    FeatureValue::Money(s.parse::<Decimal>().unwrap())
}

async fn one(store: &dyn FeatureStore, e: &Event) -> FeatureVector {
    store.process(&[e]).await.unwrap().pop().unwrap()
}

fn redis_url() -> String {
    std::env::var("VIGIL_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn cluster_nodes() -> Vec<String> {
    std::env::var("VIGIL_TEST_REDIS_CLUSTER")
        .unwrap_or_else(|_| "redis://127.0.0.1:7001,redis://127.0.0.1:7002,redis://127.0.0.1:7003".into())
        .split(',')
        .map(str::to_owned)
        .collect()
}

/// A Redis store of either layout (`redis` or `redis-cluster`) on `prefix`.
async fn redis_store(kind: &str, plan: Plan, prefix: &str) -> RedisStore {
    match kind {
        "redis" => RedisStore::connect(&redis_url(), plan, prefix, 3600, 2000)
            .await
            .expect("these tests need Redis: run scripts/test.sh, or set VIGIL_TEST_REDIS_URL"),
        _ => RedisStore::connect_cluster(&cluster_nodes(), plan, prefix, 3600, 2000)
            .await
            .expect("these tests need a Redis Cluster: run scripts/test.sh, or set VIGIL_TEST_REDIS_CLUSTER"),
    }
}

/// An owned store's journal in Redis (`redis` or `redis-cluster`) on `prefix`.
pub(crate) async fn owned_journal(kind: &str, prefix: &str) -> crate::owned::RedisJournal {
    match kind {
        "redis" => crate::owned::RedisJournal::connect(&redis_url(), prefix, 2000)
            .await
            .expect("these tests need Redis: run scripts/test.sh, or set VIGIL_TEST_REDIS_URL"),
        _ => crate::owned::RedisJournal::connect_cluster(&cluster_nodes(), prefix, 2000)
            .await
            .expect("these tests need a Redis Cluster: run scripts/test.sh, or set VIGIL_TEST_REDIS_CLUSTER"),
    }
}

/// The backend a case runs on. The memory store's cases need no server.
#[derive(Debug, Clone, Copy)]
enum Backend {
    Memory,
    Redis,
    Cluster,
    OwnedMemory,
    OwnedRedis,
    OwnedCluster,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Memory => "memory",
            Backend::Redis => "redis",
            Backend::Cluster => "redis-cluster",
            Backend::OwnedMemory => "owned, memory journal",
            Backend::OwnedRedis => "owned, redis journal",
            Backend::OwnedCluster => "owned, cluster journal",
        }
    }

    /// A fresh store of this backend (on a prefix of its own) computing `plan`.
    async fn store(self, plan: fn() -> Plan) -> Arc<dyn FeatureStore> {
        let prefix = format!("vigiltest-{}", uuid::Uuid::new_v4());
        let journal: Arc<dyn crate::owned::Journal> = match self {
            Backend::Memory => return Arc::new(MemoryStore::new(plan(), 3600)),
            Backend::Redis => return Arc::new(redis_store("redis", plan(), &prefix).await),
            Backend::Cluster => return Arc::new(redis_store("redis-cluster", plan(), &prefix).await),
            Backend::OwnedMemory => Arc::new(crate::owned::MemoryJournal::default()),
            Backend::OwnedRedis => Arc::new(owned_journal("redis", &prefix).await),
            Backend::OwnedCluster => Arc::new(owned_journal("redis-cluster", &prefix).await),
        };
        let policy = crate::owned::SnapshotPolicy { events: 3, ..Default::default() };
        Arc::new(crate::OwnedStore::open(plan(), 3600, journal, policy).await.unwrap())
    }
}

/// One test per case and backend: `on_memory::CASE`, `on_redis::CASE` and
/// `on_cluster::CASE`.
macro_rules! on_every_backend {
    ($($case:ident),* $(,)?) => {
        mod on_memory {
            $(#[tokio::test] async fn $case() { super::$case(super::Backend::Memory).await })*
        }
        mod on_redis {
            $(#[tokio::test] async fn $case() { super::$case(super::Backend::Redis).await })*
        }
        mod on_cluster {
            $(#[tokio::test] async fn $case() { super::$case(super::Backend::Cluster).await })*
        }
        mod on_owned_memory {
            $(#[tokio::test] async fn $case() { super::$case(super::Backend::OwnedMemory).await })*
        }
        mod on_owned_redis {
            $(#[tokio::test] async fn $case() { super::$case(super::Backend::OwnedRedis).await })*
        }
        mod on_owned_cluster {
            $(#[tokio::test] async fn $case() { super::$case(super::Backend::OwnedCluster).await })*
        }
    };
}

/// One test per case and Redis layout, for what only Redis has (several
/// processes on one store, its scripts).
macro_rules! on_redis_backends {
    ($($case:ident),* $(,)?) => {
        mod on_redis_only {
            $(#[tokio::test] async fn $case() { super::$case("redis").await })*
        }
        mod on_cluster_only {
            $(#[tokio::test] async fn $case() { super::$case("redis-cluster").await })*
        }
    };
}

on_every_backend!(
    declared_aggregates_read_the_earlier_events,
    distinct_counts_are_exact_up_to_the_bound_then_estimated,
    reads_before_the_event_then_counts_it,
    redelivery_changes_nothing_and_returns_the_first_features,
    a_reused_id_keeps_the_first_fingerprint,
    late_events_see_only_earlier_time,
    absent_entities_are_missing_not_zero,
    batches_equal_one_by_one,
    labels_count_once_from_their_report_time_within_the_window,
    changed_compares_a_field_with_the_previous_event,
    matured_windows_end_their_delay_before_the_event,
    event_time_features_read_the_event_in_their_zone,
);

on_redis_backends!(concurrent_writers_stay_exact, concurrent_long_batches_stay_exact, a_flushed_script_is_loaded_again);

/// Every aggregate over one card, in declaration order.
fn rich_plan() -> Plan {
    let f = |name: &str, aggregate, window_s, of| FeatureDef {
        of,
        ..FeatureDef::new(name, EntityKey::parse("card_id").unwrap(), aggregate, window_s)
    };
    Plan::new(vec![
        f("mean", Aggregate::MeanAmount, 3600, None),
        f("min", Aggregate::MinAmount, 3600, None),
        f("max", Aggregate::MaxAmount, 3600, None),
        f("std", Aggregate::StdAmount, 3600, None),
        f("ratio", Aggregate::AmountOverMean, 3600, None),
        f("since", Aggregate::TimeSinceLast, 3600, None),
        f("previous", Aggregate::PreviousAmount, 3600, None),
        f("merchants", Aggregate::Distinct, 3600, Some(vigil_core::EventField::MerchantId)),
        f("count", Aggregate::Count, 3600, None),
    ])
}

fn card_event(id: &str, secs: i64, amount: &str, merchant: &str) -> Event {
    let t = chrono::DateTime::parse_from_rfc3339(T0).unwrap() + chrono::Duration::seconds(secs);
    let json = format!(
        r#"{{"transaction_id":"{id}","timestamp":"{}","amount":"{amount}","currency":"EUR","card_id":"c1","merchant_id":"{merchant}"}}"#,
        t.to_rfc3339()
    );
    Event::from_json(json.as_bytes()).unwrap()
}

async fn declared_aggregates_read_the_earlier_events(backend: Backend) {
    let missing = FeatureValue::Missing;
    let number = |s: &str| FeatureValue::Number(s.parse::<Decimal>().unwrap());
    let (name, store) = (backend.name(), backend.store(rich_plan).await);
    let store = store.as_ref();
    let first = one(store, &card_event("a", 0, "10.00", "m1")).await;
    assert_eq!(
        first.values,
        [vec![missing.clone(); 7], vec![count(0), count(0)]].concat(),
        "{name}: nothing before the first event"
    );
    one(store, &card_event("b", 60, "30.00", "m2")).await;
    let c = one(store, &card_event("c", 90, "40.00", "m1")).await;
    assert_eq!(
        c.values,
        vec![
            money("20"),
            money("10.00"),
            money("30.00"),
            money("10"),
            number("2"),
            FeatureValue::Seconds(30),
            money("30.00"),
            count(2),
            count(2)
        ],
        "{name}"
    );
    // A redelivery returns the same values of the same kinds.
    let again = one(store, &card_event("c", 90, "40.00", "m1")).await;
    assert!(again.replayed, "{name}");
    assert_eq!(again.values, c.values, "{name}");
    // Late by a minute: its predecessor is `a`, not the newest event.
    let late = one(store, &card_event("late", 30, "10.00", "m3")).await;
    assert_eq!(late.values[5], FeatureValue::Seconds(30), "{name}");
    assert_eq!(late.values[6], money("10.00"), "{name}");
    // Two hours later the hour window is empty and the predecessor too old.
    let d = one(store, &card_event("d", 7290, "5", "m1")).await;
    assert_eq!(d.values, [vec![missing.clone(); 7], vec![count(0), count(0)]].concat(), "{name}");
}

async fn distinct_counts_are_exact_up_to_the_bound_then_estimated(backend: Backend) {
    let (name, store) = (backend.name(), backend.store(rich_plan).await);
    let store = store.as_ref();
    // 2,000 merchants in 2,000 seconds, all inside the card's one-hour window.
    let events: Vec<Event> = (0..2000).map(|i| card_event(&format!("e{i}"), i, "1", &format!("m{i}"))).collect();
    let refs: Vec<&Event> = events.iter().collect();
    let out = store.process(&refs).await.unwrap();
    let limit = crate::state::DISTINCT_LIMIT;
    for i in [0, 1, 100, limit] {
        assert_eq!(out[i].values[7], count(i as i64), "{name}: exact at {i}");
    }
    // Beyond the bound, a sliding HyperLogLog of 128 registers (about 9% error).
    for i in [limit + 1, 300, 1000, 1999] {
        let FeatureValue::Count(n) = out[i].values[7] else { panic!("{name}: not a count") };
        let error = (n as f64 - i as f64).abs() / i as f64;
        assert!(error < 0.2, "{name}: {n} distinct estimated for {i}");
    }
    // A repeated value adds nothing to the estimate.
    let again = card_event("again", 2000, "1", "m5");
    let once_more = card_event("once-more", 2001, "1", "m7");
    let (a, b) = (one(store, &again).await, one(store, &once_more).await);
    let (FeatureValue::Count(x), FeatureValue::Count(y)) = (&a.values[7], &b.values[7]) else { panic!() };
    assert!(y - x <= 1, "{name}: {x} then {y}");
    // Once the window and the lateness bound have passed every forgotten
    // value, counts are exact again.
    let later = 2001 + 3600 + crate::state::LATENESS_S + 60;
    for k in 0..5 {
        let e = card_event(&format!("late{k}"), later + k, "1", &format!("n{k}"));
        assert_eq!(one(store, &e).await.values[7], count(k), "{name}: exact again");
    }
}

async fn reads_before_the_event_then_counts_it(backend: Backend) {
    let (name, store) = (backend.name(), backend.store(plan).await);
    let store = store.as_ref();
    let a = one(store, &ev("a", 0, "10.00", Some("c1"), "t1")).await;
    assert_eq!(a.values, vec![count(0), money("0"), count(0), count(0), count(0)], "{name}");
    let b = one(store, &ev("b", 60, "5.50", Some("c1"), "t1")).await;
    assert_eq!(b.values, vec![count(1), money("10.00"), count(1), count(1), count(1)], "{name}");
    // 11 minutes after the first: out of the 10-minute window, inside the hour.
    let c = one(store, &ev("c", 660, "1", Some("c1"), "t2")).await;
    assert_eq!(c.values, vec![count(1), money("15.50"), count(2), count(0), count(2)], "{name}");
    // Two hours later: only the 24-hour window remembers.
    let d = one(store, &ev("d", 7200 + 660, "1", Some("c1"), "t1")).await;
    assert_eq!(d.values, vec![count(0), money("0"), count(3), count(0), count(3)], "{name}");
    assert!(!d.replayed);
}

async fn redelivery_changes_nothing_and_returns_the_first_features(backend: Backend) {
    let (name, store) = (backend.name(), backend.store(plan).await);
    let store = store.as_ref();
    let first = one(store, &ev("a", 0, "10", Some("c1"), "t1")).await;
    one(store, &ev("b", 10, "10", Some("c1"), "t1")).await;
    let again = one(store, &ev("a", 0, "10", Some("c1"), "t1")).await;
    assert!(again.replayed, "{name}");
    assert_eq!(again.values, first.values, "{name}");
    let c = one(store, &ev("c", 20, "10", Some("c1"), "t1")).await;
    assert_eq!(c.values[0], count(2), "{name}: the redelivered event was counted twice");
    // The same id twice within one batch: counted once.
    let (x1, x2, y) =
        (ev("x", 30, "1", Some("c1"), "t1"), ev("x", 30, "1", Some("c1"), "t1"), ev("y", 40, "1", Some("c1"), "t1"));
    let out = store.process(&[&x1, &x2, &y]).await.unwrap();
    assert_eq!(out[0].values, out[1].values, "{name}");
    assert!(!out[0].replayed && out[1].replayed, "{name}");
    assert_eq!(out[2].values[0], count(4), "{name}");
}

async fn a_reused_id_keeps_the_first_fingerprint(backend: Backend) {
    let (name, store) = (backend.name(), backend.store(plan).await);
    let store = store.as_ref();
    let first = ev("a", 0, "10", Some("c1"), "t1");
    let fresh = one(store, &first).await;
    assert_eq!(fresh.fingerprint, first.fingerprint(), "{name}");
    let retry = one(store, &first).await;
    assert!(retry.replayed && retry.fingerprint == first.fingerprint(), "{name}: a retry");
    // Same id, another amount: not counted, and told apart by its fingerprint.
    let reused = ev("a", 0, "99", Some("c1"), "t1");
    assert_ne!(reused.fingerprint(), first.fingerprint());
    let out = one(store, &reused).await;
    assert!(out.replayed, "{name}");
    assert_eq!(out.fingerprint, first.fingerprint(), "{name}: the stored fingerprint is the first event's");
    // Within one batch as well.
    let (x1, x2) = (ev("x", 30, "1", Some("c1"), "t1"), ev("x", 30, "2", Some("c1"), "t1"));
    let out = store.process(&[&x1, &x2]).await.unwrap();
    assert_eq!(out[1].fingerprint, x1.fingerprint(), "{name}");
}

async fn late_events_see_only_earlier_time(backend: Backend) {
    let (name, store) = (backend.name(), backend.store(plan).await);
    let store = store.as_ref();
    one(store, &ev("a", 0, "1", Some("c1"), "t1")).await;
    one(store, &ev("b", 240, "1", Some("c1"), "t1")).await;
    // Arrives third, happened between the two: sees only `a`.
    let late = one(store, &ev("late", 120, "1", Some("c1"), "t1")).await;
    assert_eq!(late.values[0], count(1), "{name}");
    let next = one(store, &ev("n", 300, "1", Some("c1"), "t1")).await;
    assert_eq!(next.values[0], count(3), "{name}");
}

async fn absent_entities_are_missing_not_zero(backend: Backend) {
    let (name, store) = (backend.name(), backend.store(plan).await);
    let e = one(store.as_ref(), &ev("a", 0, "1", None, "t1")).await;
    assert_eq!(e.values[0], FeatureValue::Missing, "{name}");
    assert_eq!(e.values[3], count(0), "{name}");
    assert_eq!(e.values[4], FeatureValue::Missing, "{name}");
}

/// Any batching gives the features of one event at a time, as the memory
/// store computes them.
async fn batches_equal_one_by_one(backend: Backend) {
    let events: Vec<Event> = (0..60)
        .map(|i| {
            ev(
                &format!("e{i}"),
                i * 37,
                &format!("{}.{:02}", i % 7, i % 100),
                Some(&format!("c{}", i % 3)),
                &format!("t{}", i % 4),
            )
        })
        .collect();
    let name = backend.name();
    let mut reference = None;
    for (store, batch) in [(Backend::Memory, 1usize), (backend, 1), (backend, 7), (backend, 60)] {
        let store = store.store(plan).await;
        let mut out = Vec::new();
        for chunk in events.chunks(batch) {
            let refs: Vec<&Event> = chunk.iter().collect();
            out.extend(store.process(&refs).await.unwrap());
        }
        match &reference {
            None => reference = Some(out),
            Some(r) => assert_eq!(&out, r, "{name} with batches of {batch}"),
        }
    }
}

/// Runs `writer` for 4 writers (each its own store on one shared prefix) at
/// once, then returns the features of one more event on the shared card and
/// terminal: what the writers counted there.
async fn after_four_writers<Fut>(kind: &str, writer: impl Fn(usize, RedisStore) -> Fut) -> FeatureVector
where
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let prefix = format!("vigiltest-{}", uuid::Uuid::new_v4());
    let mut tasks = Vec::new();
    for w in 0..4 {
        let store = redis_store(kind, plan(), &prefix).await;
        tasks.push(tokio::spawn(writer(w, store)));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let store = redis_store(kind, plan(), &prefix).await;
    one(&store, &ev("last", 100, "1", Some("shared"), "t1")).await
}

async fn concurrent_writers_stay_exact(kind: &str) {
    let last = after_four_writers(kind, |w, store| async move {
        for i in 0..25 {
            let e = ev(&format!("w{w}-{i}"), i, "1", Some("shared"), "t1");
            store.process(&[&e]).await.unwrap();
        }
    })
    .await;
    assert_eq!(last.values[0], count(100), "{kind}");
    assert_eq!(last.values[1], money("100"), "{kind}");
}

/// Batches longer than the Redis store's transaction chunk, from several writers on
/// one shared entity, with an id repeated across chunks of one batch: every event
/// is counted once, and the repeat gets the first features back.
async fn concurrent_long_batches_stay_exact(kind: &str) {
    let last = after_four_writers(kind, |w, store| async move {
        let mut events: Vec<Event> = (0..50).map(|i| ev(&format!("w{w}-{i}"), i, "1", Some("shared"), "t1")).collect();
        // A redelivery inside the batch, chunks after the first delivery.
        events.insert(45, events[2].clone());
        let refs: Vec<&Event> = events.iter().collect();
        let out = store.process(&refs).await.unwrap();
        assert!(out[45].replayed);
        assert_eq!(out[45].values, out[2].values);
    })
    .await;
    assert_eq!(last.values[0], count(200), "{kind}");
    assert_eq!(last.values[1], money("200"), "{kind}");
}

/// Redis forgets scripts when it restarts or `SCRIPT FLUSH` runs: the store loads
/// its compare-and-set script again and the call goes through.
async fn a_flushed_script_is_loaded_again(kind: &str) {
    let prefix = format!("vigiltest-{}", uuid::Uuid::new_v4());
    let store = redis_store(kind, plan(), &prefix).await;
    one(&store, &ev("f1", 0, "1", Some("c"), "t")).await;
    let urls = if kind == "redis" { vec![redis_url()] } else { cluster_nodes() };
    for url in urls {
        let client = redis::Client::open(url).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let _: () = redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut conn).await.unwrap();
    }
    let second = one(&store, &ev("f2", 1, "1", Some("c"), "t")).await;
    assert_eq!(second.values[0], count(1), "{kind}");
}

#[tokio::test]
async fn memory_store_expires_markers_with_its_clock() {
    use std::sync::atomic::{AtomicI64, Ordering};
    let now = Arc::new(AtomicI64::new(1_000_000));
    let clock_now = now.clone();
    let store = MemoryStore::with_clock(plan(), 600, Box::new(move || clock_now.load(Ordering::SeqCst)));
    let e = ev("a", 0, "1", Some("c1"), "t1");
    assert!(!one(&store, &e).await.replayed);
    assert!(one(&store, &e).await.replayed);
    now.fetch_add(601, Ordering::SeqCst);
    // Past the de-duplication TTL the id is forgotten.
    assert!(!one(&store, &e).await.replayed);
}

/// In a cluster the entities count an event before its transaction marker is
/// written: a call cut short between the two (the marker is lost here) is
/// finished by the redelivery, which counts nothing again.
#[tokio::test]
async fn a_cluster_call_cut_before_its_marker_counts_once_on_redelivery() {
    let prefix = format!("vigiltest-{}", uuid::Uuid::new_v4());
    let store = redis_store("redis-cluster", plan(), &prefix).await;
    let first = one(&store, &ev("a", 0, "10", Some("c1"), "t1")).await;
    let client = redis::cluster::ClusterClient::new(cluster_nodes()).unwrap();
    let mut conn = client.get_async_connection().await.unwrap();
    let removed: i64 = redis::cmd("DEL").arg(KeyLayout::new(&prefix).marker("a")).query_async(&mut conn).await.unwrap();
    assert_eq!(removed, 1, "the transaction marker is where the store writes it");
    let again = one(&store, &ev("a", 0, "10", Some("c1"), "t1")).await;
    assert!(again.replayed);
    assert_eq!(again.values, first.values);
    let next = one(&store, &ev("b", 10, "10", Some("c1"), "t1")).await;
    assert_eq!(next.values[0], count(1), "the redelivery was counted again");
    assert_eq!(next.values[3], count(1));
    // Labels likewise: each entity counts a fraud once.
    let store = redis_store("redis-cluster", label_plan(), &prefix).await;
    let fraud = label("a", 5, "fraud", "t1");
    assert_eq!(store.apply_labels(&[&fraud]).await.unwrap(), [LabelOutcome::Counted]);
    let removed: i64 =
        redis::cmd("DEL").arg(KeyLayout::new(&prefix).label_marker("a")).query_async(&mut conn).await.unwrap();
    assert_eq!(removed, 1, "the label's transaction marker is where the store writes it");
    assert_eq!(store.apply_labels(&[&fraud]).await.unwrap(), [LabelOutcome::AlreadyCounted]);
}

/// A cluster node given as a single server's URL is named as such at connect,
/// not found out at the first key of another node's slot.
#[tokio::test]
async fn a_cluster_node_behind_a_single_server_url_is_refused() {
    let node = cluster_nodes().remove(0);
    let err = RedisStore::connect(&node, plan(), "x", 60, 2000).await.err().unwrap();
    assert!(err.to_string().contains("redis-cluster"), "{err}");
}

#[tokio::test]
async fn unreachable_redis_is_a_clear_error() {
    let err = RedisStore::connect("redis://127.0.0.1:1", plan(), "x", 60, 200).await.err().unwrap();
    assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
}

/// Label features over terminals: frauds in 1 hour and their rate over 1 hour.
fn label_plan() -> Plan {
    let f = |name: &str, aggregate| FeatureDef::new(name, EntityKey::parse("terminal_id").unwrap(), aggregate, 3600);
    Plan::new(vec![f("frauds", Aggregate::FraudCount), f("rate", Aggregate::FraudRate), f("count", Aggregate::Count)])
}

fn label(id: &str, secs: i64, verdict: &str, terminal: &str) -> vigil_core::Label {
    let t = chrono::DateTime::parse_from_rfc3339(T0).unwrap() + chrono::Duration::seconds(secs);
    let json = format!(
        r#"{{"transaction_id":"{id}","label":"{verdict}","reported_at":"{}","terminal_id":"{terminal}"}}"#,
        t.to_rfc3339()
    );
    vigil_core::Label::from_json(json.as_bytes()).unwrap()
}

async fn labels_count_once_from_their_report_time_within_the_window(backend: Backend) {
    use crate::LabelOutcome::*;
    let (name, store) = (backend.name(), backend.store(label_plan).await);
    let s = store.as_ref();
    // Four events at t1, then a fraud label for one of them at 100 s.
    for i in 0..4 {
        one(s, &ev(&format!("a{i}"), i * 10, "10", Some("c"), "t1")).await;
    }
    let fraud = label("a0", 100, "fraud", "t1");
    let genuine = label("a1", 100, "genuine", "t1");
    assert_eq!(s.apply_labels(&[&fraud, &genuine, &fraud]).await.unwrap(), [Counted, Recorded, AlreadyCounted]);
    assert_eq!(s.apply_labels(&[&fraud]).await.unwrap(), [AlreadyCounted], "{name}: a redelivered label");
    assert_eq!(s.apply_labels(&[&genuine]).await.unwrap(), [Recorded], "{name}: genuine verdicts alone");
    let rate = |n: i64, d: i64| FeatureValue::Number(Decimal::from(n) / Decimal::from(d));

    // An event before the report time does not see the label; one after does.
    let before = one(s, &ev("b", 50, "10", Some("c"), "t1")).await;
    assert_eq!(before.values, vec![count(0), rate(0, 4), count(4)], "{name}: before the report");
    let after = one(s, &ev("c", 200, "10", Some("c"), "t1")).await;
    assert_eq!(after.values, vec![count(1), rate(1, 5), count(5)], "{name}: after the report");
    // Another terminal knows nothing of it; a terminal with no events has no rate.
    let other = one(s, &ev("d", 200, "10", Some("c"), "t2")).await;
    assert_eq!(other.values, vec![count(0), FeatureValue::Missing, count(0)], "{name}: another terminal");
    // The label leaves the window an hour after it was reported.
    let later = one(s, &ev("e", 100 + 3600 + 60, "10", Some("c"), "t1")).await;
    assert_eq!(later.values[0], count(0), "{name}: label out of the window");
}

fn changed_plan() -> Plan {
    let f = |name: &str, aggregate, of| FeatureDef {
        of: Some(of),
        ..FeatureDef::new(name, EntityKey::parse("card_id").unwrap(), aggregate, 3600)
    };
    Plan::new(vec![
        f("country_changed", Aggregate::Changed, vigil_core::EventField::Country),
        f("device_changed", Aggregate::Changed, vigil_core::EventField::DeviceId),
        f("previous_country", Aggregate::Previous, vigil_core::EventField::Country),
    ])
}

fn travel(id: &str, secs: i64, country: Option<&str>, device: &str) -> Event {
    let t = chrono::DateTime::parse_from_rfc3339(T0).unwrap() + chrono::Duration::seconds(secs);
    let country = country.map_or(String::new(), |c| format!(r#","country":"{c}""#));
    let json = format!(
        r#"{{"transaction_id":"{id}","timestamp":"{}","amount":"1","currency":"EUR","card_id":"c1","device_id":"{device}"{country}}}"#,
        t.to_rfc3339()
    );
    Event::from_json(json.as_bytes()).unwrap()
}

async fn changed_compares_a_field_with_the_previous_event(backend: Backend) {
    let missing = || FeatureValue::Missing;
    let text = |t: &str| FeatureValue::Text(t.into());
    let (name, store) = (backend.name(), backend.store(changed_plan).await);
    let store = store.as_ref();
    let mut seen = Vec::new();
    for (e, want) in [
        // No previous event: nothing to compare.
        (travel("a", 0, Some("FR"), "d1"), [missing(), missing(), missing()]),
        (travel("b", 60, Some("FR"), "d1"), [count(0), count(0), text("FR")]),
        (travel("c", 120, Some("DE"), "d1"), [count(1), count(0), text("FR")]),
        // This event lacks the country; the next one's previous lacks it.
        (travel("d", 180, None, "d2"), [missing(), count(1), text("DE")]),
        (travel("e", 240, Some("DE"), "d2"), [missing(), count(0), missing()]),
        // Late, within the lateness bound: compared with the event before its time (c).
        (travel("late", 150, Some("DE"), "d1"), [count(0), count(0), text("DE")]),
        // More than the window after the previous event: nothing to compare.
        (travel("f", 240 + 3601, Some("US"), "d2"), [missing(), missing(), missing()]),
    ] {
        let got = one(store, &e).await;
        assert_eq!(got.values, want, "{name}: {}", e.transaction_id);
        seen.push(got);
    }
    // A redelivery gives back its first values and changes nothing.
    let again = one(store, &travel("c", 120, Some("DE"), "d1")).await;
    assert!(again.replayed && again.values == seen[2].values, "{name}");
    let g = one(store, &travel("g", 240 + 3660, Some("US"), "d3")).await;
    assert_eq!(g.values, [count(0), count(1), text("US")], "{name}");
}

/// Matured windows over terminals (an hour, ending an hour before the
/// event), a card count beside them (another record), and event-time features.
fn matured_plan() -> Plan {
    let terminal = |name: &str, aggregate| FeatureDef {
        delay_s: 3600,
        ..FeatureDef::new(name, EntityKey::parse("terminal_id").unwrap(), aggregate, 3600)
    };
    let at = |name: &str, aggregate, zone: &str| FeatureDef {
        time_zone: zone.parse().unwrap(),
        ..FeatureDef::new(name, EntityKey::none(), aggregate, 0)
    };
    Plan::new(vec![
        terminal("matured_count", Aggregate::Count),
        terminal("matured_sum", Aggregate::SumAmount),
        terminal("matured_frauds", Aggregate::FraudCount),
        terminal("matured_rate", Aggregate::FraudRate),
        FeatureDef::new("card_count_1h", EntityKey::parse("card_id").unwrap(), Aggregate::Count, 3600),
        at("hour_paris", Aggregate::HourOfDay, "Europe/Paris"),
        at("day", Aggregate::DayOfWeek, "UTC"),
        at("weekend", Aggregate::Weekend, "UTC"),
        at("night", Aggregate::Night, "UTC"),
    ])
}

/// A fraud label that names its transaction's time.
fn dated_label(id: &str, occurred: i64, reported: i64, terminal: &str) -> vigil_core::Label {
    let at = |secs| (chrono::DateTime::parse_from_rfc3339(T0).unwrap() + chrono::Duration::seconds(secs)).to_rfc3339();
    let json = format!(
        r#"{{"transaction_id":"{id}","label":"fraud","reported_at":"{}","timestamp":"{}","terminal_id":"{terminal}"}}"#,
        at(reported),
        at(occurred)
    );
    vigil_core::Label::from_json(json.as_bytes()).unwrap()
}

async fn matured_windows_end_their_delay_before_the_event(backend: Backend) {
    let (name, store) = (backend.name(), backend.store(matured_plan).await);
    let s = store.as_ref();
    let rate = |n: i64, d: i64| FeatureValue::Number(Decimal::from(n) / Decimal::from(d));
    let matured = |fv: &FeatureVector| fv.values[..4].to_vec();
    // Three payments on t1 in the first 20 minutes; the one at 600 s is a
    // fraud, reported at 5,400 s.
    for (id, secs) in [("a", 0), ("b", 600), ("c", 1200)] {
        let first = one(s, &ev(id, secs, "10", Some("c1"), "t1")).await;
        assert_eq!(matured(&first), [count(0), money("0"), count(0), FeatureValue::Missing], "{name}: {id}");
    }
    // At 4,300 s the window is (-2,900 s, 700 s]: a and b, no fraud reported yet.
    let x = one(s, &ev("x", 4300, "10", Some("c2"), "t1")).await;
    assert_eq!(matured(&x), [count(2), money("20"), count(0), rate(0, 2)], "{name}: before the report");
    let fraud = dated_label("b", 600, 5400, "t1");
    assert_eq!(s.apply_labels(&[&fraud]).await.unwrap(), [LabelOutcome::Counted], "{name}");
    // At 6,000 s, (-1,200 s, 2,400 s]: a, b and c, b a fraud.
    let y = one(s, &ev("y", 6000, "10", Some("c3"), "t1")).await;
    assert_eq!(matured(&y), [count(3), money("30"), count(1), rate(1, 3)], "{name}: after the report");
    // At 8,000 s, (800 s, 4,400 s]: c and x; b's fraud is out of the window
    // though it was reported later than c and x happened.
    let z = one(s, &ev("z", 8000, "10", Some("c3"), "t1")).await;
    assert_eq!(matured(&z), [count(2), money("20"), count(0), rate(0, 2)], "{name}: b out of the window");
    assert_eq!(z.values[4], count(1), "{name}: the card's own window ends at the event");
    // A redelivery gives back its first values.
    let again = one(s, &ev("y", 6000, "10", Some("c3"), "t1")).await;
    assert!(again.replayed && again.values == y.values, "{name}");
}

async fn event_time_features_read_the_event_in_their_zone(backend: Backend) {
    let (name, store) = (backend.name(), backend.store(matured_plan).await);
    let s = store.as_ref();
    let time = |fv: &FeatureVector| fv.values[5..].to_vec();
    // 2026-01-01 is a Thursday; Paris is an hour ahead of UTC in January.
    let thursday = one(s, &ev("a", 4300, "10", Some("c1"), "t1")).await;
    assert_eq!(time(&thursday), [count(2), count(4), count(0), count(1)], "{name}: 01:11 UTC on a Thursday");
    let saturday = one(s, &ev("b", 2 * 86_400 + 12 * 3600, "10", None, "t2")).await;
    assert_eq!(time(&saturday), [count(13), count(6), count(1), count(0)], "{name}: noon UTC on a Saturday");
    // Late on Sunday evening in UTC is Monday in Paris.
    let sunday = one(s, &ev("c", 3 * 86_400 + 23 * 3600 + 1800, "10", Some("c1"), "t1")).await;
    assert_eq!(time(&sunday), [count(0), count(7), count(1), count(0)], "{name}: 23:30 UTC on a Sunday");
}
