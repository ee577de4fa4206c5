//! The Kafka stream end to end, against the real broker and Redis.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rdkafka::message::Message;
use vigil_core::{Decision, Event, PipelineConfig};
use vigil_engine::Engine;
use vigil_gen::GenConfig;
use vigil_stream::{Stats, StreamError};

fn traffic(events: usize, seed: u64) -> Vec<Event> {
    let config = GenConfig { seed, events, cards: 600, merchants: 80, days: 7, ..GenConfig::default() };
    vigil_gen::generate(&config).into_iter().map(|l| l.event).collect()
}

/// Card-keyed features of every event, by transaction id. One card's events share
/// a partition and keep its order, so the stream must reproduce these exactly.
fn reference(config: &PipelineConfig, events: &[Event]) -> HashMap<String, Vec<(String, serde_json::Value)>> {
    events
        .iter()
        .zip(reference_features(config, events))
        .map(|(e, fv)| {
            let card: Vec<(String, serde_json::Value)> = config
                .features
                .iter()
                .zip(fv.values)
                .filter(|(d, _)| d.entity.to_string().starts_with("card_id"))
                .map(|(d, v)| (d.name.clone(), as_json(&v)))
                .collect();
            (e.transaction_id.clone(), card)
        })
        .collect()
}

fn card_features(d: &Decision) -> Vec<(String, serde_json::Value)> {
    d.features.iter().filter(|(k, _)| k.starts_with("card_")).map(|(k, v)| (k.clone(), as_json(v))).collect()
}

fn sorted(mut v: Vec<(String, serde_json::Value)>) -> Vec<(String, serde_json::Value)> {
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// The decisions of `events` in `out`, by transaction id, after checking that
/// every event has a decision and at most one without `replayed` (after a
/// kill, a decision whose record was never delivered is only seen replayed),
/// that every repeat
/// carries the first features and decision, and that card features are a
/// clean single pass's.
fn decided_once_each<'a>(
    config: &PipelineConfig,
    events: &[Event],
    out: &'a [Decision],
) -> HashMap<&'a str, Vec<&'a Decision>> {
    let mut by_id: HashMap<&str, Vec<&Decision>> = HashMap::new();
    for d in out {
        by_id.entry(d.transaction_id.as_str()).or_default().push(d);
    }
    assert_eq!(by_id.len(), events.len(), "an event was lost");
    let reference = reference(config, events);
    for (id, ds) in &by_id {
        assert!(ds.iter().filter(|d| !d.replayed).count() <= 1, "{id}: decided twice without `replayed`");
        for d in ds {
            assert_eq!(d.features, ds[0].features, "{id}: a redelivery changed its features");
            assert_eq!(d.decision, ds[0].decision, "{id}: a redelivery changed its decision");
        }
        assert_eq!(sorted(card_features(ds[0])), sorted(reference[*id].clone()), "features of {id}");
    }
    by_id
}

async fn start_stream(config: &PipelineConfig) -> Running {
    start(config, Arc::new(Engine::connect(config).await.unwrap()))
}

/// Runs the stream until it has decided `at_least` events, then kills it
/// without draining or committing; returns how many it had decided.
async fn killed_after(config: &PipelineConfig, at_least: u64) -> u64 {
    let run = start_stream(config).await;
    wait_until(Duration::from_secs(120), "the first run to decide some events", || {
        run.stats.decided.load(Ordering::SeqCst) >= at_least
    })
    .await;
    run.handle.abort();
    let _ = run.handle.await;
    let decided = run.stats.decided.load(Ordering::SeqCst);
    drop(run.stop);
    decided
}

/// Waits until the stream has read nothing new for `quiet`.
async fn until_idle(stats: &Stats, quiet: Duration, limit: Duration) {
    let start = std::time::Instant::now();
    let mut last = (u64::MAX, std::time::Instant::now());
    loop {
        let now = stats.consumed.load(Ordering::SeqCst);
        if now != last.0 {
            last = (now, std::time::Instant::now());
        } else if now > 0 && last.1.elapsed() >= quiet {
            return;
        }
        assert!(start.elapsed() < limit, "stream still busy after {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_give_one_decision_each_and_malformed_ones_dead_letters() {
    let config = pipeline("tenk");
    let kafka = config.kafka.clone().unwrap();
    vigil_kafka::create_topics(&kafka, 4).await.unwrap();
    let events = traffic(10_000, 7);
    let malformed: Vec<(String, &str)> = vec![
        ("{not json".into(), "malformed JSON"),
        (
            r#"{"timestamp":"2026-01-01T00:00:00Z","amount":1,"currency":"EUR"}"#.into(),
            "missing field `transaction_id`",
        ),
        (
            r#"{"transaction_id":"m3","timestamp":"2026-01-01T00:00:00Z","amount":"1,5","currency":"EUR"}"#.into(),
            "field `amount`",
        ),
        (
            r#"{"transaction_id":"m4","timestamp":"2026-01-01T00:00:00Z","amount":1,"currency":"EURO"}"#.into(),
            "field `currency`",
        ),
        (r#"{"transaction_id":"m5","timestamp":"yesterday","amount":1,"currency":"EUR"}"#.into(), "field `timestamp`"),
        (
            r#"{"transaction_id":"m6","timestamp":"2026-01-01T00:00:00Z","amount":1,"currency":"EUR","ammount":2}"#
                .into(),
            "unknown field `ammount`",
        ),
        ("[1,2,3]".into(), "invalid event"),
    ];
    let mut lines: Vec<Vec<u8>> = events.iter().map(Event::to_json).collect();
    for (i, (bad, _)) in malformed.iter().enumerate() {
        lines.insert(i * 1400 + 3, bad.clone().into_bytes());
    }
    let produced = vigil_kafka::produce_lines(&kafka, &kafka.input_topic, lines.into_iter()).await.unwrap();
    assert_eq!(produced as usize, events.len() + malformed.len());

    let run = start_stream(&config).await;
    let expected = (events.len() + malformed.len()) as u64;
    wait_until(Duration::from_secs(240), "every event decided", || total(&run.stats) >= expected).await;
    run.finish().await.unwrap();

    let out = decisions(
        &read_all(&kafka.decisions_topic, events.len(), Duration::from_secs(10), Duration::from_secs(180)).await,
    );
    assert_eq!(out.len(), events.len(), "exactly one decision per valid event");
    let ids: HashSet<&str> = out.iter().map(|d| d.transaction_id.as_str()).collect();
    let want: HashSet<&str> = events.iter().map(|e| e.transaction_id.as_str()).collect();
    assert_eq!(ids, want);
    assert!(out.iter().all(|d| !d.replayed));

    let reference = reference(&config, &events);
    for d in &out {
        assert_eq!(
            sorted(card_features(d)),
            sorted(reference[&d.transaction_id].clone()),
            "features of {}",
            d.transaction_id
        );
    }
    let flagged = out.iter().filter(|d| d.decision != vigil_core::Action::Approve).count();
    assert!(flagged > 0, "the shipped rules flagged nothing in 10,000 events");
    // The shipped trees score every decision of the stream and explain it:
    // baseline, factors and rest add up to the score's log-odds.
    let logit = |p: f64| (p / (1.0 - p)).ln();
    for d in &out {
        assert!(d.model_version.as_deref().is_some_and(|v| v.starts_with("card-fraud-gbdt@")), "{d:?}");
        let (score, baseline) = (d.model_score.unwrap(), d.model_baseline.unwrap());
        let sum = d.model_factors.iter().map(|f| f.contribution).sum::<f64>() + d.model_factors_rest.unwrap();
        assert!((logit(baseline) + sum - logit(score)).abs() < 1e-3, "{d:?}");
    }
    assert!(out.iter().filter(|d| !d.model_factors.is_empty()).count() > out.len() / 2);

    let dead =
        read_all(&kafka.dead_letter_topic, malformed.len(), Duration::from_secs(5), Duration::from_secs(60)).await;
    assert_eq!(dead.len(), malformed.len());
    for (bad, reason) in &malformed {
        let m = dead
            .iter()
            .find(|m| m.payload() == Some(bad.as_bytes()))
            .unwrap_or_else(|| panic!("{bad} not dead-lettered with its original bytes"));
        let error = header(m, vigil_stream::ERROR_HEADER).unwrap();
        assert!(error.contains(reason), "{bad}: reason `{error}` should mention {reason}");
        assert!(header(m, vigil_stream::SOURCE_HEADER).unwrap().starts_with(&kafka.input_topic));
    }
    clean_redis(&config.store.key_prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_and_restart_loses_no_event_and_double_counts_no_feature() {
    crash_and_restart(pipeline("restart")).await;
}

/// The same with the feature state owned by the stream (`mode = "owned"`):
/// the restart takes the state over from the journal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owned_state_a_crash_and_restart_loses_no_event_and_double_counts_no_feature() {
    crash_and_restart(owned(pipeline("restart-owned"))).await;
}

/// Two `vigil run`s on one owned pipeline: the second takes the state over,
/// and the first stops at its next batch with the fence's reason; the events
/// it read but did not decide go to the second, so none is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owned_state_a_second_owner_fences_the_first_which_stops_and_loses_nothing() {
    let config = owned(pipeline("fence-owned"));
    let kafka = config.kafka.clone().unwrap();
    vigil_kafka::create_topics(&kafka, 4).await.unwrap();
    let events = traffic(2_000, 5);
    let lines = |r: std::ops::Range<usize>| events[r].iter().map(Event::to_json).collect::<Vec<_>>().into_iter();
    vigil_kafka::produce_lines(&kafka, &kafka.input_topic, lines(0..1_000)).await.unwrap();
    let first = start_stream(&config).await;
    wait_until(Duration::from_secs(120), "the first owner to decide the first half", || {
        first.stats.decided.load(Ordering::SeqCst) >= 1_000
    })
    .await;

    let second = start_stream(&config).await;
    vigil_kafka::produce_lines(&kafka, &kafka.input_topic, lines(1_000..2_000)).await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(120), first.handle)
        .await
        .expect("the fenced owner stops")
        .expect("the stream task panicked");
    let why = ended.expect_err("the fenced owner stops with an error").to_string();
    assert!(why.contains("fenced"), "{why}");

    until_idle(&second.stats, Duration::from_secs(6), Duration::from_secs(240)).await;
    second.finish().await.unwrap();
    let out =
        decisions(&read_all(&kafka.decisions_topic, 2_000, Duration::from_secs(10), Duration::from_secs(180)).await);
    let decided: HashSet<&str> = out.iter().map(|d| d.transaction_id.as_str()).collect();
    let lost: Vec<&str> = events.iter().map(|e| e.transaction_id.as_str()).filter(|id| !decided.contains(id)).collect();
    assert!(lost.is_empty(), "{} events never decided, such as {:?}", lost.len(), &lost[..lost.len().min(5)]);
    clean_redis(&config.store.key_prefix).await;
}

/// `mode = "owned"`, snapshotting often enough that a test crosses several.
fn owned(mut config: PipelineConfig) -> PipelineConfig {
    config.store.mode = vigil_core::pipeline::StoreMode::Owned { snapshot_events: 400, snapshot_interval_s: 1 };
    config
}

async fn crash_and_restart(config: PipelineConfig) {
    let kafka = config.kafka.clone().unwrap();
    vigil_kafka::create_topics(&kafka, 4).await.unwrap();
    let events = traffic(3_000, 11);
    let lines = |r: std::ops::Range<usize>| events[r].iter().map(Event::to_json).collect::<Vec<_>>().into_iter();
    vigil_kafka::produce_lines(&kafka, &kafka.input_topic, lines(0..2_000)).await.unwrap();

    // First run: killed mid-stream, without draining or committing.
    killed_after(&config, 700).await;

    // More traffic, and the first 300 events delivered a second time.
    vigil_kafka::produce_lines(&kafka, &kafka.input_topic, lines(2_000..3_000)).await.unwrap();
    vigil_kafka::produce_lines(&kafka, &kafka.input_topic, lines(0..300)).await.unwrap();

    let second = start_stream(&config).await;
    until_idle(&second.stats, Duration::from_secs(6), Duration::from_secs(240)).await;
    let replayed = second.stats.replayed.load(Ordering::SeqCst);
    let snapshot = second.stats.snapshot();
    second.finish().await.unwrap();
    assert!(replayed >= 300, "{snapshot:?}");

    let out =
        decisions(&read_all(&kafka.decisions_topic, 3_300, Duration::from_secs(10), Duration::from_secs(180)).await);
    let by_id = decided_once_each(&config, &events, &out);
    for e in &events[..300] {
        assert!(by_id[e.transaction_id.as_str()].len() >= 2);
    }
    clean_redis(&config.store.key_prefix).await;
}

/// Two instances in one group: the second joins mid-stream and takes some
/// partitions, then the first leaves (it drains, commits and goes) and the
/// second takes the rest. Both moves drain on revoke, so every event is
/// decided exactly once (no redelivery at all), each card's decisions are in
/// its events' order across the moves, and card features are a clean pass's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_a_group_through_a_join_and_a_leave() {
    let config = pipeline("pair");
    let kafka = config.kafka.clone().unwrap();
    vigil_kafka::create_topics(&kafka, 4).await.unwrap();
    let events = traffic(7_000, 13);
    let lines = |r: std::ops::Range<usize>| events[r].iter().map(Event::to_json).collect::<Vec<_>>().into_iter();
    vigil_kafka::produce_lines(&kafka, &kafka.input_topic, lines(0..500)).await.unwrap();

    let a = start_stream(&config).await;
    wait_until(Duration::from_secs(120), "the first instance to decide some events", || {
        a.stats.decided.load(Ordering::SeqCst) >= 300
    })
    .await;
    let held = a.stats.broker.assigned();
    // Traffic keeps coming faster than one instance decides while the second
    // joins, so the first has batches in flight, and one filling, when its
    // partitions are revoked.
    let feeder = {
        let (kafka, chunks) = (kafka.clone(), events[500..5_500].chunks(250).map(|c| c.to_vec()).collect::<Vec<_>>());
        tokio::spawn(async move {
            for chunk in chunks {
                let lines = chunk.iter().map(Event::to_json).collect::<Vec<_>>();
                vigil_kafka::produce_lines(&kafka, &kafka.input_topic, lines.into_iter()).await.unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let b = start_stream(&config).await;
    wait_until(Duration::from_secs(120), "the second instance to take partitions", || {
        b.stats.broker.assigned() > 0 && a.stats.broker.assigned() + b.stats.broker.assigned() == held
    })
    .await;
    assert!(a.stats.broker.assigned() > 0, "the first instance kept none");
    feeder.await.unwrap();
    wait_until(Duration::from_secs(180), "both to decide what was sent", || total(&a.stats) + total(&b.stats) >= 5_500)
        .await;
    let first = a.stats.snapshot();
    a.finish().await.unwrap();
    wait_until(Duration::from_secs(120), "the second instance to take every partition", || {
        b.stats.broker.assigned() == held
    })
    .await;
    vigil_kafka::produce_lines(&kafka, &kafka.input_topic, lines(5_500..7_000)).await.unwrap();
    until_idle(&b.stats, Duration::from_secs(6), Duration::from_secs(240)).await;
    let second = b.stats.snapshot();
    b.finish().await.unwrap();
    eprintln!("first: {first:?}\nsecond: {second:?}");
    assert!(first["decided"] > 0 && second["decided"] > 0, "{first:?} {second:?}");

    let out =
        decisions(&read_all(&kafka.decisions_topic, 7_000, Duration::from_secs(10), Duration::from_secs(180)).await);
    let events_by_id: HashMap<&str, &Event> = events.iter().map(|e| (e.transaction_id.as_str(), e)).collect();
    // Nothing was killed and each revoke drained: nothing was decided twice.
    for (id, ds) in decided_once_each(&config, &events, &out) {
        assert_eq!(ds.len(), 1, "{id}: decided {} times across a clean move", ds.len());
    }
    assert_eq!(first["replayed"] + second["replayed"], 0, "{first:?} {second:?}");
    // One card's decisions share a partition of the decisions topic: they
    // arrive in the order of its events, whichever instance made them.
    let card = |id: &str| events_by_id[id].card_id.clone().unwrap_or_default();
    let mut decided: HashMap<String, Vec<&str>> = HashMap::new();
    for d in &out {
        decided.entry(card(&d.transaction_id)).or_default().push(d.transaction_id.as_str());
    }
    let mut sent: HashMap<String, Vec<&str>> = HashMap::new();
    for e in &events {
        sent.entry(card(&e.transaction_id)).or_default().push(e.transaction_id.as_str());
    }
    for (card, ids) in &sent {
        assert_eq!(&decided[card], ids, "card {card}: decisions out of its events' order");
    }
    clean_redis(&config.store.key_prefix).await;
}

/// Every declared feature, of every event, as a clean single pass computes it.
fn all_features(config: &PipelineConfig, events: &[Event]) -> HashMap<String, Vec<(String, serde_json::Value)>> {
    events
        .iter()
        .zip(reference_features(config, events))
        .map(|(e, fv)| {
            let all = config.features.iter().zip(fv.values).map(|(d, v)| (d.name.clone(), as_json(&v))).collect();
            (e.transaction_id.clone(), all)
        })
        .collect()
}

/// On one partition the stream sees history in order, so every feature, shared
/// entities (terminal, merchant, IP) included, must equal a clean single pass:
/// after a kill mid-stream, and after a restart that replays the topic from the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_then_a_replay_from_the_start_gives_every_feature_of_a_clean_pass() {
    let config = pipeline("replay");
    let prefix = config.store.key_prefix.clone();
    kill_then_replay(config).await;
    clean_redis(&prefix).await;
}

/// The same with the feature state owned by the stream, journaled to Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owned_state_a_kill_then_a_replay_gives_every_feature_of_a_clean_pass() {
    let config = owned(pipeline("replay-owned"));
    let prefix = config.store.key_prefix.clone();
    kill_then_replay(config).await;
    clean_redis(&prefix).await;
}

/// And journaled to a Redis Cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owned_state_on_a_redis_cluster_a_kill_then_a_replay_gives_every_feature_of_a_clean_pass() {
    let config = owned(on_cluster(pipeline("replay-owned-cluster")));
    let prefix = config.store.key_prefix.clone();
    kill_then_replay(config).await;
    clean_cluster(&prefix).await;
}

/// The same on a Redis Cluster, where every entity counts an event on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_redis_cluster_a_kill_then_a_replay_gives_every_feature_of_a_clean_pass() {
    let config = on_cluster(pipeline("replay-cluster"));
    let prefix = config.store.key_prefix.clone();
    kill_then_replay(config).await;
    clean_cluster(&prefix).await;
}

async fn kill_then_replay(mut config: PipelineConfig) {
    let kafka = config.kafka.clone().unwrap();
    vigil_kafka::create_topics(&kafka, 1).await.unwrap();
    let events = traffic(2_500, 23);
    vigil_kafka::produce_lines(&kafka, &kafka.input_topic, events.iter().map(Event::to_json)).await.unwrap();

    let decided_first = killed_after(&config, 800).await;
    assert!(decided_first < events.len() as u64, "the first run finished before it was killed");

    // A new consumer group: the restart reads the topic from its first record.
    config.kafka.as_mut().unwrap().group_id.push_str("-replay");
    let second = start_stream(&config).await;
    until_idle(&second.stats, Duration::from_secs(6), Duration::from_secs(240)).await;
    let replayed = second.stats.replayed.load(Ordering::SeqCst);
    let snapshot = second.stats.snapshot();
    second.finish().await.unwrap();
    assert!(replayed >= 800, "the replay should find the first run's events decided: {snapshot:?}");

    let out = decisions(
        &read_all(&kafka.decisions_topic, events.len() + 800, Duration::from_secs(10), Duration::from_secs(180)).await,
    );
    let clean = all_features(&config, &events);
    let mut seen = HashSet::new();
    for d in &out {
        let got: Vec<_> = d.features.iter().map(|(k, v)| (k.clone(), as_json(v))).collect();
        assert_eq!(got.len(), config.features.len(), "{}: every declared feature", d.transaction_id);
        assert_eq!(sorted(got), sorted(clean[&d.transaction_id].clone()), "features of {}", d.transaction_id);
        seen.insert(d.transaction_id.clone());
    }
    assert_eq!(seen.len(), events.len(), "an event was lost");
}

#[tokio::test]
async fn unreachable_broker_and_missing_topics_are_clear_errors() {
    let mut config = pipeline("unreachable");
    let mut kafka = config.kafka.clone().unwrap();
    let engine = Arc::new(Engine::connect(&config).await.unwrap());

    // Topics never created.
    let err = vigil_stream::run(&kafka, engine.clone(), Arc::new(Stats::default()), std::future::pending())
        .await
        .unwrap_err();
    assert!(matches!(err, StreamError::Kafka(vigil_kafka::Error::MissingTopic { .. })), "{err}");
    assert!(err.to_string().contains(&kafka.input_topic));

    kafka.brokers = "127.0.0.1:1".into();
    let started = std::time::Instant::now();
    let err = vigil_stream::run(&kafka, engine, Arc::new(Stats::default()), std::future::pending()).await.unwrap_err();
    assert!(matches!(err, StreamError::Kafka(vigil_kafka::Error::Unreachable { .. })), "{err}");
    assert!(err.to_string().contains("127.0.0.1:1"));
    assert!(started.elapsed() < Duration::from_secs(30));

    config.store.backend = vigil_core::pipeline::StoreBackend::Redis { url: "redis://127.0.0.1:1".into() };
    let err = Engine::connect(&config).await.err().unwrap().to_string();
    assert!(err.contains("127.0.0.1:1"), "{err}");
}

/// Confirmed frauds arrive on the labels topic (here partly through `vigil
/// label`), are counted once by the label features, reach the next decisions at
/// their terminal, and bad labels are dead-lettered with their reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_reach_the_next_decisions_once_and_bad_ones_dead_letter() {
    let text = pipeline_text("labels");
    let config = PipelineConfig::parse(&repo().join("pipelines/test.toml"), &text).unwrap();
    let file = repo().join(format!("pipelines/.test-{}.toml", config.store.key_prefix));
    std::fs::write(&file, &text).unwrap();
    let kafka = config.kafka.clone().unwrap();
    let labels_topic = kafka.labels_topic.clone().unwrap();
    vigil_kafka::create_topics(&kafka, 1).await.unwrap();
    let event = |id: &str, minute: u32| {
        format!(
            r#"{{"transaction_id":"{id}","timestamp":"2026-03-02T10:{minute:02}:00Z","amount":"20.00","currency":"EUR","card_id":"c-{id}","terminal_id":"T9"}}"#
        )
    };
    let first: Vec<Vec<u8>> =
        ["p1", "p2", "p3"].iter().zip([1, 2, 3]).map(|(id, m)| event(id, m).into_bytes()).collect();
    vigil_kafka::produce_lines(&kafka, &kafka.input_topic, first.into_iter()).await.unwrap();
    let run = start_stream(&config).await;
    wait_until(Duration::from_secs(60), "the first events decided", || run.stats.decided.load(Ordering::SeqCst) >= 3)
        .await;

    // p1 is confirmed fraud through the command line, and again on the topic.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["label", "--pipeline", file.to_str().unwrap(), "--transaction-id", "p1", "--fraud"])
        .args(["--reported-at", "2026-03-02T10:05:00Z", "--timestamp", "2026-03-02T10:01:00Z"])
        .args(["--field", "terminal_id=T9", "--source", "chargeback"])
        .current_dir(repo())
        .output()
        .unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success() && said.contains("published 1 label"), "{said}");
    // The command refuses a fraud label that lacks what the features count by.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["label", "--pipeline", file.to_str().unwrap(), "--transaction-id", "p2", "--fraud"])
        .current_dir(repo())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success() && said.contains("terminal_id") && said.contains("terminal_frauds_7d"), "{said}");
    std::fs::remove_file(&file).ok();

    let again = r#"{"transaction_id":"p1","label":"fraud","reported_at":"2026-03-02T10:05:00Z","timestamp":"2026-03-02T10:01:00Z","terminal_id":"T9"}"#;
    let genuine = r#"{"transaction_id":"p2","label":"genuine","reported_at":"2026-03-02T10:05:00Z"}"#;
    let lacking = r#"{"transaction_id":"p3","label":"fraud","reported_at":"2026-03-02T10:05:00Z"}"#;
    let malformed = r#"{"transaction_id":"p3","label":"stolen","reported_at":"2026-03-02T10:05:00Z"}"#;
    let lines = [again, genuine, lacking, malformed].map(|l| l.as_bytes().to_vec());
    vigil_kafka::produce_lines(&kafka, &labels_topic, lines.into_iter()).await.unwrap();
    wait_until(Duration::from_secs(60), "the labels handled", || {
        run.stats.labels_counted.load(Ordering::SeqCst) + run.stats.labels_unchanged.load(Ordering::SeqCst) >= 3
            && run.stats.dead_lettered() >= 2
    })
    .await;
    assert_eq!(run.stats.labels_counted.load(Ordering::SeqCst), 1, "{:?}", run.stats.snapshot());

    let later = vec![event("p4", 10).into_bytes()];
    vigil_kafka::produce_lines(&kafka, &kafka.input_topic, later.into_iter()).await.unwrap();
    wait_until(Duration::from_secs(60), "the later event decided", || run.stats.decided.load(Ordering::SeqCst) >= 4)
        .await;
    run.finish().await.unwrap();

    let out = decisions(&read_all(&kafka.decisions_topic, 4, Duration::from_secs(5), Duration::from_secs(60)).await);
    let p4 = out.iter().find(|d| d.transaction_id == "p4").expect("p4 decided");
    assert_eq!(as_json(&p4.features["terminal_frauds_7d"]), serde_json::json!(1));
    let rate: rust_decimal::Decimal = serde_json::from_value(as_json(&p4.features["terminal_fraud_rate_30d"])).unwrap();
    assert_eq!(rate, rust_decimal::Decimal::ONE / rust_decimal::Decimal::from(3), "one fraud among three payments");
    let p3 = out.iter().find(|d| d.transaction_id == "p3").unwrap();
    assert_eq!(as_json(&p3.features["terminal_frauds_7d"]), serde_json::json!(0), "no label before it was reported");

    let dead = read_all(&kafka.dead_letter_topic, 2, Duration::from_secs(5), Duration::from_secs(60)).await;
    let reasons: Vec<String> = dead.iter().map(|m| header(m, vigil_stream::ERROR_HEADER).unwrap()).collect();
    assert_eq!(dead.len(), 2, "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("label") && r.contains("terminal_id")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("`stolen`")), "{reasons:?}");
    clean_redis(&config.store.key_prefix).await;
}

/// The scraped value of the sample `name` (with its labels, if any) in a
/// Prometheus text page.
fn sample(page: &str, name: &str) -> Option<f64> {
    page.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// `vigil run --metrics-listen`: what `/metrics` says is what the run did, lag
/// falls to 0 once it has drained, and `/readyz` says it holds its partitions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vigil_run_serves_metrics_that_match_what_it_did() {
    let text = pipeline_text("ops");
    let config = PipelineConfig::parse(&repo().join("pipelines/test.toml"), &text).unwrap();
    let file = repo().join(format!("pipelines/.test-{}.toml", config.store.key_prefix));
    std::fs::write(&file, &text).unwrap();
    let kafka = config.kafka.clone().unwrap();
    vigil_kafka::create_topics(&kafka, 2).await.unwrap();
    let events = traffic(600, 3);
    // The last event comes with W3C trace context, which its decision carries.
    let (traced, untraced) = events.split_last().unwrap();
    let mut lines: Vec<Vec<u8>> = untraced.iter().map(Event::to_json).collect();
    for i in 0..3 {
        lines.insert(i * 100, format!("not an event {i}").into_bytes());
    }
    lines.push(br#"{"transaction_id":"no-amount","timestamp":"2026-01-01T00:00:00Z","currency":"EUR"}"#.to_vec());
    vigil_kafka::produce_lines(&kafka, &kafka.input_topic, lines.into_iter()).await.unwrap();
    let labels = kafka.labels_topic.clone().unwrap();
    let odd_label = br#"{"transaction_id":"x","label":"genuine","reported_at":"2026-01-01T00:00:00Z","colour":"red"}"#;
    vigil_kafka::produce_lines(&kafka, &labels, std::iter::once(odd_label.to_vec())).await.unwrap();
    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let producer: rdkafka::producer::FutureProducer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", brokers()).create().unwrap();
    let headers = rdkafka::message::OwnedHeaders::new()
        .insert(rdkafka::message::Header { key: "traceparent", value: Some(trace) });
    let payload = traced.to_json();
    let record = rdkafka::producer::FutureRecord::to(&kafka.input_topic)
        .key(traced.card_id.as_deref().unwrap_or_default())
        .payload(&payload)
        .headers(headers);
    producer.send(record, Duration::from_secs(10)).await.unwrap();

    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let log = std::env::temp_dir().join(format!("vigil-ops-{port}.log"));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["run", "--pipeline", file.to_str().unwrap(), "--metrics-listen", &address])
        .args(["--metrics-token-env", "VIGIL_TEST_METRICS_TOKEN"])
        .env("VIGIL_TEST_METRICS_TOKEN", "scrape-token-0123456789")
        .env("VIGIL_LOG_FORMAT", "json")
        .current_dir(repo())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let get_as = |path: &str, token: &'static str| {
        let (client, url) = (client.clone(), format!("http://{address}{path}"));
        async move {
            let r = client.get(url).bearer_auth(token).send().await.ok()?;
            Some((r.status().as_u16(), r.text().await.ok()?))
        }
    };
    let get = |path: &str| get_as(path, "scrape-token-0123456789");
    let mut page = String::new();
    let started = std::time::Instant::now();
    loop {
        if let Some((200, text)) = get("/metrics").await {
            // Both partitions of the input topic report their lag, and it is 0.
            let input_lag = format!("vigil_stream_consumer_lag{{topic=\"{}\",", kafka.input_topic);
            let lags: Vec<&str> = text.lines().filter(|l| l.starts_with(&input_lag)).collect();
            let lag_zero = lags.len() == 2 && lags.iter().all(|l| l.ends_with(" 0"));
            page = text;
            if sample(&page, "vigil_stream_events_decided_total") == Some(600.0) && lag_zero {
                break;
            }
        }
        if started.elapsed() > Duration::from_secs(180) {
            let _ = child.kill();
            panic!("the run did not drain in 180 s; /metrics said:\n{page}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(sample(&page, "vigil_stream_events_read_total"), Some(605.0), "{page}");
    let dead = |labels: &str| sample(&page, &format!("vigil_stream_dead_letters_total{{{labels}}}"));
    assert_eq!(dead(r#"input="event",reason="malformed_json",field="""#), Some(3.0), "{page}");
    assert_eq!(dead(r#"input="event",reason="invalid",field="""#), Some(1.0), "{page}");
    // A field the sender made up is not a label value.
    assert_eq!(dead(r#"input="label",reason="invalid_field",field="""#), Some(1.0), "{page}");
    assert_eq!(dead(r#"input="label",reason="malformed_json",field="""#), Some(0.0), "{page}");
    assert_eq!(sample(&page, r#"vigil_reloads_total{what="rules",outcome="refused"}"#), Some(0.0), "{page}");
    // The token guards /metrics only.
    assert_eq!(get_as("/metrics", "not-the-token-0123456789").await.map(|r| r.0), Some(401));
    let bare = client.get(format!("http://{address}/metrics")).send().await.unwrap();
    assert_eq!(bare.status().as_u16(), 401);
    assert_eq!(sample(&page, "vigil_stream_replayed_total"), Some(0.0), "{page}");
    // Two of the input topic and two of the labels topic.
    assert_eq!(sample(&page, "vigil_stream_partitions_assigned"), Some(4.0), "{page}");
    assert!(sample(&page, "vigil_stream_rebalances_total{kind=\"assign\"}").unwrap() >= 1.0, "{page}");
    assert_eq!(sample(&page, "vigil_stream_released_total"), Some(0.0), "{page}");
    assert_eq!(sample(&page, "vigil_feature_store_breaker_open"), Some(0.0), "{page}");
    let by_outcome: f64 = ["approve", "review", "decline"]
        .iter()
        .filter_map(|o| sample(&page, &format!("vigil_decisions_total{{decision=\"{o}\"}}")))
        .sum();
    assert_eq!(by_outcome, 600.0, "{page}");
    assert_eq!(sample(&page, "vigil_model_score_count"), Some(600.0), "{page}");
    assert_eq!(sample(&page, "vigil_stream_event_to_decision_seconds_count"), Some(600.0), "{page}");
    assert!(sample(&page, "vigil_stream_batch_seconds_count").unwrap() >= 1.0, "{page}");
    let (status, ready) = get("/readyz").await.unwrap();
    assert_eq!(status, 200, "{ready}");
    let ready: serde_json::Value = serde_json::from_str(&ready).unwrap();
    assert_eq!(ready["partitions_assigned"], 4, "{ready}");
    assert!(ready["model"].as_str().unwrap().starts_with("card-fraud-gbdt@"), "{ready}");
    assert_eq!(get("/healthz").await, Some((200, "ok\n".to_owned())));

    let _ = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status();
    let status = child.wait().unwrap();
    assert!(status.success(), "vigil run stopped with {status}");
    let out = decisions(&read_all(&kafka.decisions_topic, 600, Duration::from_secs(5), Duration::from_secs(60)).await);
    let with_trace: Vec<&Decision> = out.iter().filter(|d| d.traceparent.is_some()).collect();
    assert_eq!(with_trace.len(), 1);
    assert_eq!(
        (with_trace[0].transaction_id.as_str(), with_trace[0].traceparent.as_deref()),
        (traced.transaction_id.as_str(), Some(trace))
    );
    // VIGIL_LOG_FORMAT=json: every line is an object with a level and a message.
    let lines = std::fs::read_to_string(&log).unwrap();
    let logs: Vec<serde_json::Value> =
        lines.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    assert!(logs.iter().all(|l| l["level"].is_string() && l["timestamp"].is_string()), "{lines}");
    let stopped = logs.iter().find(|l| l["message"] == "stopped").unwrap_or_else(|| panic!("{lines}"));
    assert!(stopped["stats"].as_str().unwrap().contains("\"decided\": 600"), "{stopped}");
    std::fs::remove_file(&log).ok();
    std::fs::remove_file(&file).ok();
    clean_redis(&config.store.key_prefix).await;
}
