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
        tokio::spawn(async move { store.publish(&kafka, &topic, 10, stop.notified()).await.unwrap() })
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
    // The verdicts go out as labels on their own path, one sender at a time:
    // Ana's five frauds and Bo's five genuine payments; the deadline's
    // releases carry no verdict, so no label.
    let labels_topic = kafka.labels_topic.clone().unwrap();
    let sender = |store: ReviewStore| {
        let (kafka, labels_topic, stop) = (kafka.clone(), labels_topic.clone(), stop.clone());
        tokio::spawn(async move {
            let sink = vigil_review::TopicLabels::new(&kafka, &labels_topic).unwrap();
            store.send_labels(&sink, 4, stop.notified()).await.unwrap()
        })
    };
    let (a, b) = (sender(store.clone()), sender(store.clone()));
    let start = Instant::now();
    while count(&db, "SELECT count(*) FROM resolutions WHERE label_sent_at IS NULL AND verdict IS NOT NULL").await > 0 {
        assert!(start.elapsed() < Duration::from_secs(60), "labels still unsent after 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.notify_waiters();
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    assert_eq!((a + b, a.min(b)), (10, 0), "ten labels, by one sender: {a} {b}");
    let labels = read_all(&labels_topic, 10, Duration::from_secs(3), Duration::from_secs(30)).await;
    assert_eq!(labels.len(), 10);
    let mut by = BTreeMap::new();
    for m in &labels {
        let label = vigil_core::Label::from_json(m.payload().unwrap()).unwrap();
        *by.entry((label.source.clone().unwrap_or_default(), label.verdict.name())).or_insert(0) += 1;
        assert!(label.fields.contains_key(&vigil_core::EventField::CardId), "{label:?}");
        assert!(label.occurred_at.is_some());
    }
    assert_eq!(by, BTreeMap::from([(("review:ana".to_owned(), "fraud"), 5), (("review:bo".to_owned(), "genuine"), 5)]));

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

/// Webhook requests received: the signature header and the body's bytes.
type Hooks = Arc<std::sync::Mutex<Vec<(String, Vec<u8>)>>>;

/// A process of the real binary, killed when the test ends (stopped with
/// SIGTERM first by [`Proc::stop`]).
struct Proc(Child, std::path::PathBuf);

impl Proc {
    fn spawn(args: &[&str], log: std::path::PathBuf) -> Proc {
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args(args)
            .env("RUST_LOG", "info")
            .env("VIGIL_TEST_HOOK_SECRET", "the hook's secret")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        Proc(child, log)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.1).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the binary to its end; its standard output, or a panic with both outputs.
fn vigil(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_vigil")).args(args).envs(env.iter().copied()).output().unwrap();
    assert!(
        out.status.success(),
        "vigil {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The README's walk, with the real binaries: `vigil run` decides generated
/// payments, `vigil review serve` makes cases of its reviews, an analyst
/// logs in over HTTP, claims a case and calls a payment a fraud; the
/// resolution is on the resolutions topic (`vigil topics read`), and the
/// next payment at the same terminal counts the fraud in its features. With
/// `labels_topic`, the verdict travels as a label through the labels topic
/// that `vigil run` reads; without, straight into the Redis feature store.
async fn walk(labels_topic: bool) {
    let mut test = TestPipeline::local(if labels_topic { "walk" } else { "walk-nolabels" });
    if !labels_topic {
        test = test.without("kafka.labels_topic");
    }
    let tag = test.config().store.key_prefix.clone();
    let name = format!("review_{}", tag.replace('-', "_"));
    let (db, settings) = schema(&name).await;
    let mut test = test.set("review.database", settings.as_str());
    // A webhook receiver, told of every case opened, signed with its secret.
    let hooks: Hooks = Arc::default();
    let received = hooks.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let received = received.clone();
            async move {
                let signature = headers.get("vigil-signature").and_then(|v| v.to_str().ok()).unwrap_or_default();
                received.lock().unwrap().push((signature.to_owned(), body.to_vec()));
                axum::http::StatusCode::OK
            }
        }),
    );
    let hook_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_url = format!("http://{}/hook", hook_listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(hook_listener, app).await });
    if labels_topic {
        let mut hook = toml::Table::new();
        hook.insert("name".into(), "crm".into());
        hook.insert("url".into(), hook_url.into());
        hook.insert("secret_env".into(), "VIGIL_TEST_HOOK_SECRET".into());
        hook.insert("events".into(), toml::Value::Array(vec!["case.opened".into()]));
        test = test.add("review.webhooks", toml::Value::Array(vec![hook.into()]));
    }
    let config = test.config();
    let file = repo().join(format!("pipelines/.test-{tag}.toml"));
    std::fs::write(&file, test.text()).unwrap();
    let pipeline = file.to_str().unwrap();
    let logs = std::env::temp_dir();

    let created = vigil(&["topics", "create", "--pipeline", pipeline, "--partitions", "2"], &[]);
    assert!(created.contains(&format!("created {}", config.review.resolutions_topic.as_ref().unwrap())), "{created}");
    let run = Proc::spawn(&["run", "--pipeline", pipeline], logs.join(format!("vigil-{tag}-run.log")));
    vigil(
        &["review", "user", "add", "--pipeline", pipeline, "--name", "ana", "--password-env", "ANA_PASSWORD"],
        &[("ANA_PASSWORD", "ana's long password")],
    );
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let serve = Proc::spawn(
        &["review", "serve", "--pipeline", pipeline, "--listen", &listen],
        logs.join(format!("vigil-{tag}-serve.log")),
    );
    let gen = GenConfig { seed: 21, events: 1_500, cards: 150, merchants: 30, days: 3, ..GenConfig::default() };
    let events: Vec<Event> = vigil_gen::generate(&gen).into_iter().map(|l| l.event).collect();
    let events_file = logs.join(format!("vigil-{tag}-events.jsonl"));
    std::fs::write(
        &events_file,
        events.iter().map(|e| String::from_utf8(e.to_json()).unwrap() + "\n").collect::<String>(),
    )
    .unwrap();
    vigil(&["produce", "--pipeline", pipeline, events_file.to_str().unwrap()], &[]);

    // The analyst logs in and claims the next case once the reviews are in.
    let http = reqwest::Client::new();
    let api = format!("http://{listen}/api/v1/review");
    let start = Instant::now();
    let login = loop {
        let r = http
            .post(format!("{api}/session"))
            .json(&serde_json::json!({"name": "ana", "password": "ana's long password"}))
            .send()
            .await;
        if let Some(r) = r.ok().filter(|r| r.status().is_success()) {
            break r;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "no login in 60 s: {}", serve.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let cookie = login.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
    let csrf = login.json::<serde_json::Value>().await.unwrap()["csrf_token"].as_str().unwrap().to_owned();
    let post = |path: String, body: serde_json::Value| {
        http.post(format!("{api}{path}")).header("cookie", &cookie).header("x-csrf-token", &csrf).json(&body).send()
    };
    // Claim-next until a case holds a payment below four-eyes, at a terminal
    // (online payments have none).
    let (case_id, payment) = loop {
        let r = post("/claims".into(), serde_json::json!({})).await.unwrap();
        assert!(start.elapsed() < Duration::from_secs(180), "no case to claim in 180 s: {}", run.log());
        if r.status() != reqwest::StatusCode::OK {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        let claim = r.json::<serde_json::Value>().await.unwrap();
        let case_id = claim["claim"]["case"].as_i64().unwrap();
        let case: serde_json::Value = http
            .get(format!("{api}/cases/{case_id}"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let fits = case["payments"].as_array().unwrap().iter().find(|p| {
            p["amount"].as_str().unwrap().parse::<rust_decimal::Decimal>().unwrap()
                <= rust_decimal::Decimal::from(5_000)
                && p["decision"]["event"]["terminal_id"].is_string()
        });
        if let Some(p) = fits {
            break (case_id, p.clone());
        }
    };
    let tx = payment["transaction_id"].as_str().unwrap().to_owned();
    let terminal = payment["decision"]["event"]["terminal_id"].as_str().unwrap().to_owned();
    assert_eq!(payment["decision"]["features"]["terminal_frauds_7d"], 0, "no fraud known at the terminal yet");
    let verdict =
        post(format!("/cases/{case_id}/verdicts"), serde_json::json!({"transaction_id": tx, "verdict": "fraud"}))
            .await
            .unwrap();
    assert!(verdict.status().is_success(), "{:?}", verdict.text().await);

    // The resolution is on the resolutions topic, once.
    let start = Instant::now();
    let resolution = loop {
        let out = vigil(&["topics", "read", "--pipeline", pipeline, "resolutions"], &[]);
        let found: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|r| r["transaction_id"] == tx.as_str())
            .collect();
        if let Some(r) = found.first() {
            assert_eq!(found.len(), 1, "{out}");
            break r.clone();
        }
        assert!(start.elapsed() < Duration::from_secs(60), "no resolution in 60 s: {}", serve.log());
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!((resolution["action"].as_str(), resolution["resolved_by"].as_str()), (Some("stop"), Some("ana")));
    assert_eq!(resolution["amount"], payment["amount"]);

    // The next payment at that terminal counts the fraud. The label may
    // still be on its way: each try is a new payment, and the first to see
    // it must see exactly one.
    let start = Instant::now();
    for i in 0.. {
        let next_tx = format!("next-{tag}-{i}");
        let event = serde_json::json!({
            "transaction_id": next_tx, "timestamp": chrono::Utc::now().to_rfc3339(), "amount": "12.50",
            "currency": "EUR", "card_id": format!("card-next-{i}"), "terminal_id": terminal,
        });
        let one = logs.join(format!("vigil-{tag}-next.jsonl"));
        std::fs::write(&one, format!("{event}\n")).unwrap();
        vigil(&["produce", "--pipeline", pipeline, one.to_str().unwrap()], &[]);
        let decided = loop {
            let out = vigil(&["topics", "read", "--pipeline", pipeline, "decisions", "--last", "20"], &[]);
            if let Some(d) =
                out.lines().map(|l| serde_json::from_str::<Decision>(l).unwrap()).find(|d| d.transaction_id == next_tx)
            {
                break d;
            }
            assert!(start.elapsed() < Duration::from_secs(120), "{next_tx} not decided: {}", run.log());
            tokio::time::sleep(Duration::from_millis(300)).await;
        };
        let frauds = serde_json::to_value(&decided.features["terminal_frauds_7d"]).unwrap();
        if frauds == 1 {
            break;
        }
        assert_eq!(frauds, 0, "{decided:?}");
        assert!(start.elapsed() < Duration::from_secs(120), "the verdict never reached the features: {}", serve.log());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if labels_topic {
        // The claimed case's opening reached the webhook, signed, with the case.
        let start = Instant::now();
        loop {
            let got = hooks.lock().unwrap().clone();
            let ours = got.iter().find_map(|(signature, bytes)| {
                let body: serde_json::Value = serde_json::from_slice(bytes).unwrap();
                (body["case"]["id"] == case_id).then(|| (signature.clone(), bytes.clone(), body))
            });
            if let Some((signature, bytes, body)) = ours {
                assert!(
                    vigil_core::signature::verify(&signature, b"the hook's secret", "POST", "/hook", &bytes).is_some()
                );
                assert_eq!(body["event"], "case.opened");
                assert!(!body["case"]["payments"].as_array().unwrap().is_empty());
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "no webhook for case {case_id}: {}", serve.log());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let said = serve.log();
    let to = if labels_topic { "the labels topic" } else { "the feature store" };
    assert!(said.contains("analysts' verdicts go out as labels") && said.contains(to), "{said}");

    drop(serve);
    drop(run);
    std::fs::remove_file(&file).ok();
    db.batch_execute(&format!("DROP SCHEMA {name} CASCADE")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_walk_a_verdict_stops_the_payment_and_the_next_decision_counts_it() {
    walk(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_labels_topic_a_verdict_reaches_the_features_through_the_store() {
    walk(false).await;
}
