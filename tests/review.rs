//! `vigil review ingest` against the real broker and PostgreSQL: the review
//! decisions of a `vigil run` become cases, each payment once, through a
//! `kill -9` and a restart, redelivered records and a record that is not a
//! decision.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message as _;
use vigil_core::{Action, Decision, Event};
use vigil_engine::Engine;
use vigil_gen::GenConfig;

struct Ingester(Child);

impl Ingester {
    fn start(pipeline: &std::path::Path, database: &str, log: &std::path::Path) -> Ingester {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        Ingester(
            Command::new(env!("CARGO_BIN_EXE_vigil"))
                .args(["review", "ingest", "--pipeline"])
                .arg(pipeline)
                .args(["--database", database, "--batch", "20"])
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        )
    }
}

impl Drop for Ingester {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn count(db: &tokio_postgres::Client, sql: &str) -> i64 {
    db.query_one(sql, &[]).await.unwrap().get(0)
}

async fn wait_for_payments(db: &tokio_postgres::Client, at_least: i64, limit: Duration) -> i64 {
    let start = Instant::now();
    loop {
        // The table exists once the ingester has migrated.
        let n = db.query_one("SELECT count(*) FROM payments", &[]).await.map(|r| r.get(0)).unwrap_or(0);
        if n >= at_least || start.elapsed() > limit {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_decisions_of_a_run_become_cases_once_through_a_kill_and_redeliveries() {
    let test = TestPipeline::local("review");
    let config = test.config();
    let kafka = config.kafka.clone().unwrap();
    vigil_kafka::create_topics(&kafka, 4).await.unwrap();
    let resolutions = config.review.resolutions_topic.clone().expect("local.toml names a resolutions topic");
    create_topic(&resolutions, 2).await;
    let gen = GenConfig { seed: 11, events: 3_000, cards: 300, merchants: 40, days: 5, ..GenConfig::default() };
    let events: Vec<Event> = vigil_gen::generate(&gen).into_iter().map(|l| l.event).collect();
    vigil_kafka::produce_lines(&kafka, &kafka.input_topic, events.iter().map(Event::to_json)).await.unwrap();
    let run = start(&config, Arc::new(Engine::connect(&config).await.unwrap()));
    let stats = run.stats.clone();
    wait_until(Duration::from_secs(180), "every event decided and delivered", || {
        stats.delivered.load(Ordering::SeqCst) >= 3_000
    })
    .await;
    run.finish().await.unwrap();
    let published =
        decisions(&read_all(&kafka.decisions_topic, 3_000, Duration::from_secs(5), Duration::from_secs(60)).await);
    let reviews: BTreeMap<String, Decision> = published
        .iter()
        .filter(|d| d.decision == Action::Review)
        .map(|d| (d.transaction_id.clone(), d.clone()))
        .collect();
    assert!(reviews.len() >= 20, "too few reviews to test with: {}", reviews.len());
    assert!(reviews.values().all(|d| d.event.is_some()), "a review decision carries its event");
    assert!(published.iter().filter(|d| d.decision != Action::Review).all(|d| d.event.is_none()));

    let tag = &config.store.key_prefix;
    let (db, settings) = schema(&format!("review_{}", tag.replace('-', "_"))).await;
    let file = repo().join(format!("pipelines/.test-{tag}.toml"));
    std::fs::write(&file, test.text()).unwrap();
    let log = std::env::temp_dir().join(format!("vigil-{tag}-review.log"));

    // First run: killed without warning once it has stored something.
    let first = Ingester::start(&file, &settings, &log);
    let seen = wait_for_payments(&db, 1, Duration::from_secs(60)).await;
    assert!(seen >= 1, "nothing ingested in 60 s: {}", std::fs::read_to_string(&log).unwrap_or_default());
    drop(first);
    // Second run, same group: resumes at the committed offsets.
    let mut second = Ingester::start(&file, &settings, &log);
    let all = reviews.len() as i64;
    assert_eq!(wait_for_payments(&db, all, Duration::from_secs(60)).await, all);

    // The review decisions again (a redelivery), a record that is not a
    // decision, then one new review per partition, last: once those four are
    // in, everything before them was read.
    let producer: FutureProducer = rdkafka::ClientConfig::new().set("bootstrap.servers", brokers()).create().unwrap();
    let send = |payload: Vec<u8>, partition: Option<i32>| {
        let producer = producer.clone();
        let topic = kafka.decisions_topic.clone();
        async move {
            let mut record = FutureRecord::<(), _>::to(&topic).payload(&payload);
            if let Some(p) = partition {
                record = record.partition(p);
            }
            producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();
        }
    };
    for d in reviews.values() {
        send(d.to_json(), None).await;
    }
    send(b"{not a decision".to_vec(), Some(0)).await;
    let template = reviews.values().next().unwrap().clone();
    for p in 0..4 {
        let mut d = template.clone();
        d.transaction_id = format!("last-{p}");
        if let Some(e) = d.event.as_mut() {
            e.transaction_id = d.transaction_id.clone();
            e.card_id = Some(format!("card-last-{p}"));
        }
        send(d.to_json(), Some(p)).await;
    }
    assert_eq!(wait_for_payments(&db, all + 4, Duration::from_secs(60)).await, all + 4);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(count(&db, "SELECT count(*) FROM payments").await, all + 4, "redelivered reviews added nothing");

    // One open case per card, holding exactly that card's reviews, each kept
    // as it was published.
    let cards: BTreeSet<String> = reviews.values().filter_map(|d| d.event.as_ref()?.card_id.clone()).collect();
    assert_eq!(count(&db, "SELECT count(*) FROM cases").await, cards.len() as i64 + 4);
    assert_eq!(count(&db, "SELECT sum(payments)::int8 FROM cases").await, all + 4);
    let stored = db.query("SELECT transaction_id, decision::text FROM payments", &[]).await.unwrap();
    for row in stored {
        let (tx, json): (String, String) = (row.get(0), row.get(1));
        if tx.starts_with("last-") {
            continue;
        }
        let kept: Decision = serde_json::from_str(&json).unwrap();
        assert_eq!(&kept, &reviews[&tx], "payment {tx}'s snapshot is the published decision");
    }

    // Each payment is in the queue the pipeline's [review] section gives it.
    let settings_of_pipeline = vigil_review::ReviewSettings::from_pipeline(&config).unwrap();
    let queued = db.query("SELECT transaction_id, queue FROM payments", &[]).await.unwrap();
    let mut queues = BTreeSet::new();
    for row in queued {
        let (tx, queue): (String, String) = (row.get(0), row.get(1));
        if let Some(d) = reviews.get(&tx) {
            assert_eq!(queue, settings_of_pipeline.queue_of(d, d.event.as_ref().unwrap()).0, "{tx}");
            queues.insert(queue);
        }
    }
    assert!(queues.len() >= 2, "the generated reviews fill more than one queue: {queues:?}");

    // An analyst's verdict reaches the resolutions topic and the labels topic
    // while the ingester runs.
    let store = vigil_review::ReviewStore::connect(&settings, 2, settings_of_pipeline.clone()).unwrap();
    let claim = store.claim_next("ana", &[], Duration::from_secs(60)).await.unwrap().unwrap();
    let case = store.case(claim.case).await.unwrap();
    let payment =
        case.payments.iter().find(|p| p.amount <= "5000".parse().unwrap()).expect("a payment below four-eyes");
    let v = store.verdict(claim.case, "ana", &payment.transaction_id, vigil_core::Verdict::Fraud).await.unwrap();
    assert!(v.resolution().is_some(), "{v:?}");
    let out = read_all(&resolutions, 1, Duration::from_secs(5), Duration::from_secs(60)).await;
    let record: serde_json::Value = serde_json::from_slice(out[0].payload().unwrap()).unwrap();
    assert_eq!(
        (record["transaction_id"].as_str(), record["action"].as_str()),
        (Some(payment.transaction_id.as_str()), Some("stop"))
    );
    let labels =
        read_all(kafka.labels_topic.as_ref().unwrap(), 1, Duration::from_secs(3), Duration::from_secs(30)).await;
    let label = vigil_core::Label::from_json(labels[0].payload().unwrap()).unwrap();
    assert_eq!(
        (label.transaction_id.as_str(), label.verdict),
        (payment.transaction_id.as_str(), vigil_core::Verdict::Fraud)
    );

    // The claim and the verdict are in the audit chain, which holds; a row
    // changed behind the trigger's back is named.
    let verify = || {
        Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args(["review", "audit", "verify", "--database", &settings])
            .output()
            .unwrap()
    };
    let out = verify();
    let said = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && said.contains("audit chain holds"), "{said}");
    db.batch_execute("ALTER TABLE audit_log DISABLE TRIGGER USER; UPDATE audit_log SET actor = 'mallory' WHERE action = 'verdict'; ALTER TABLE audit_log ENABLE TRIGGER USER").await.unwrap();
    let out = verify();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && said.contains("audit chain broken at row"), "{said}");

    // A graceful stop says what it did and exits cleanly.
    sigterm(second.0.id());
    let status = second.0.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "ingester stopped with {status}: {text}");
    assert!(text.contains("review ingest stopped"), "{text}");
    assert!(text.contains("not a decision"), "the unreadable record is logged: {text}");
    std::fs::remove_file(&file).ok();
    std::fs::remove_file(&log).ok();
    db.batch_execute(&format!("DROP SCHEMA review_{} CASCADE", tag.replace('-', "_"))).await.unwrap();
}

fn sigterm(pid: u32) {
    let status = Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
    assert!(status.success());
}

fn review_decision(tx: &str, card: &str) -> Decision {
    serde_json::from_value(serde_json::json!({
        "transaction_id": tx, "decision": "review", "score": 60.0,
        "reasons": [{"rule": "card_burst", "code": "CARD_VELOCITY", "action": "review", "score": 60.0}],
        "rules_version": "r1", "features": {}, "latency_us": 10,
        "event": {"transaction_id": tx, "timestamp": "2026-12-03T10:00:00Z", "amount": "19.99",
                  "currency": "EUR", "card_id": card}
    }))
    .unwrap()
}

async fn create_topic(topic: &str, partitions: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> =
        rdkafka::ClientConfig::new().set("bootstrap.servers", brokers()).create().unwrap();
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    for r in admin.create_topics(&[new], &AdminOptions::new()).await.unwrap() {
        r.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolutions_reach_their_topic_once_even_after_a_publisher_died_between_send_and_mark() {
    use vigil_core::Verdict;
    use vigil_review::{HoldAction, ReviewSettings, ReviewStore, SEQ_HEADER};
    let test = TestPipeline::local("resolutions");
    let config = test.config();
    let kafka = config.kafka.clone().unwrap();
    let topic = format!("resolutions-{}", config.store.key_prefix);
    create_topic(&topic, 3).await;
    create_topic(kafka.labels_topic.as_ref().unwrap(), 1).await;
    let name = format!("review_{}", config.store.key_prefix.replace('-', "_"));
    let (db, settings) = schema(&name).await;
    let store =
        ReviewStore::connect(&settings, 4, ReviewSettings { hold: Duration::from_millis(200), ..Default::default() })
            .unwrap();
    store.migrate().await.unwrap();
    let batch: Vec<Decision> =
        (0..30).map(|i| review_decision(&format!("t{i:02}"), &format!("card-{}", i % 6))).collect();
    store.ingest(&batch).await.unwrap();
    // Two analysts decide a case each; the holds of the others run out.
    for (analyst, verdict) in [("ana", Verdict::Fraud), ("bo", Verdict::Genuine)] {
        let claim = store.claim_next(analyst, &[], Duration::from_secs(60)).await.unwrap().unwrap();
        for p in store.case(claim.case).await.unwrap().payments {
            store.verdict(claim.case, analyst, &p.transaction_id, verdict).await.unwrap();
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let due = store.resolve_due(HoldAction::Release, 100).await.unwrap();
    assert_eq!(due.len(), 20);

    // A publisher that died after the broker took resolutions 1-5 but before
    // it marked them: they are on the topic, unmarked.
    let producer: FutureProducer = rdkafka::ClientConfig::new().set("bootstrap.servers", brokers()).create().unwrap();
    let early = db.query("SELECT seq, transaction_id FROM resolutions ORDER BY seq LIMIT 5", &[]).await.unwrap();
    for row in &early {
        let (seq, tx): (i64, String) = (row.get(0), row.get(1));
        let seq = seq.to_string();
        let headers = rdkafka::message::OwnedHeaders::new()
            .insert(rdkafka::message::Header { key: SEQ_HEADER, value: Some(seq.as_bytes()) });
        let payload = format!("{{\"transaction_id\":\"{tx}\",\"seq\":{seq}}}");
        let record = FutureRecord::to(&topic).key(tx.as_bytes()).payload(payload.as_bytes()).headers(headers);
        producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();
    }

    // Two publishers at once: one takes the lock, the other waits for it.
    let stop = Arc::new(tokio::sync::Notify::new());
    let publisher = |store: ReviewStore| {
        let (kafka, topic, stop) = (kafka.clone(), topic.clone(), stop.clone());
        tokio::spawn(async move {
            store.publish(&kafka, &topic, kafka.labels_topic.as_deref(), 10, stop.notified()).await.unwrap()
        })
    };
    let (a, b) = (publisher(store.clone()), publisher(store.clone()));
    let start = Instant::now();
    while count(&db, "SELECT count(*) FROM resolutions WHERE published_at IS NULL").await > 0 {
        assert!(start.elapsed() < Duration::from_secs(60), "resolutions still unpublished after 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.notify_waiters();
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    assert_eq!((a.sent + b.sent, a.found_sent + b.found_sent), (25, 5), "{a:?} {b:?}");
    assert!(a.sent == 0 || b.sent == 0, "one publisher at a time: {a:?} {b:?}");
    // Ana's five were on the topic already (a publisher sends a batch's labels
    // before its resolutions, so theirs had gone out before the crash); Bo's
    // five verdicts went out as labels; the deadline's releases make none.
    assert_eq!(a.labels + b.labels, 5);
    let labels =
        read_all(kafka.labels_topic.as_ref().unwrap(), 5, Duration::from_secs(3), Duration::from_secs(30)).await;
    assert_eq!(labels.len(), 5);
    for m in &labels {
        let label = vigil_core::Label::from_json(m.payload().unwrap()).unwrap();
        assert_eq!(label.verdict, Verdict::Genuine);
        assert_eq!(label.source.as_deref(), Some("review:bo"));
        assert!(label.fields.contains_key(&vigil_core::EventField::CardId), "{label:?}");
        assert!(label.occurred_at.is_some());
    }

    let records = read_all(&topic, 30, Duration::from_secs(3), Duration::from_secs(30)).await;
    let mut seen = BTreeMap::new();
    for m in &records {
        let tx = String::from_utf8(m.key().unwrap().to_vec()).unwrap();
        *seen.entry(tx).or_insert(0) += 1;
    }
    assert_eq!(records.len(), 30, "each resolution once on the topic");
    assert!(seen.values().all(|n| *n == 1), "{seen:?}");
    let full: Vec<serde_json::Value> = records
        .iter()
        .map(|m| serde_json::from_slice::<serde_json::Value>(m.payload().unwrap()).unwrap())
        .filter(|v| v.get("action").is_some())
        .collect();
    // The five found on the topic were Ana's (resolved first); the publisher
    // sent Bo's five releases and the 20 the deadline released.
    assert_eq!(full.len(), 25);
    assert!(full.iter().all(|v| v["action"] == "release"));
    assert_eq!(full.iter().filter(|v| v["resolved_by"] == "bo" && v["verdict"] == "genuine").count(), 5);
    assert_eq!(full.iter().filter(|v| v["resolved_by"] == "deadline" && v["verdict"].is_null()).count(), 20);
    assert!(full.iter().all(|v| v["amount"] == "19.99" && v["currency"] == "EUR"));
    let on_topic: BTreeSet<String> = seen.into_keys().collect();
    let resolved: BTreeSet<String> =
        db.query("SELECT transaction_id FROM resolutions", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(on_topic, resolved);
    db.batch_execute(&format!("DROP SCHEMA {name} CASCADE")).await.unwrap();
}

#[tokio::test]
async fn accounts_are_added_from_the_command_line_with_the_password_from_the_environment() {
    let name = format!("review_users_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let (db, settings) = schema(&name).await;
    let add = |user: &str, password: &str| {
        Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args(["review", "user", "add", "--database", &settings, "--name", user, "--role", "lead"])
            .args(["--password-env", "VIGIL_TEST_PASSWORD"])
            .env("VIGIL_TEST_PASSWORD", password)
            .output()
            .unwrap()
    };
    let out = add("lee", "a long enough password");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("added lead `lee`"));
    let again = add("lee", "a long enough password");
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("exists already"));
    let short = add("kim", "short");
    assert!(!short.status.success() && String::from_utf8_lossy(&short.stderr).contains("at least 12 characters"));
    let role: String = db.query_one("SELECT role FROM users WHERE name = 'lee'", &[]).await.unwrap().get(0);
    assert_eq!(role, "lead");
    db.batch_execute(&format!("DROP SCHEMA {name} CASCADE")).await.unwrap();
}
