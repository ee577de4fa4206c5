//! The reference ledger gate (`examples/ledger-gate`) against the real broker
//! and PostgreSQL: payments go through `vigil run`, the review store resolves
//! the reviews (analysts' verdicts and hold deadlines), two gates follow the
//! three topics at once; a checker that reads the topics itself finds every
//! hold ended exactly once, by the answer it was given, never posted without
//! an `approve` or a `release`, and every account's money adding up.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rdkafka::Message as _;
use rust_decimal::Decimal;
use vigil_core::{Action, Event, Verdict};
use vigil_engine::Engine;
use vigil_gen::GenConfig;
use vigil_ledger_gate::{account_of, Gate};

struct Ingester(Child);

impl Drop for Ingester {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Every hold's state, by transaction id.
async fn states(db: &tokio_postgres::Client) -> Vec<(String, String)> {
    let rows = db.query("SELECT transaction_id, state FROM gate_holds ORDER BY 1", &[]).await.unwrap();
    rows.iter().map(|r| (r.get(0), r.get(1))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_payment_is_posted_before_its_decision_and_every_hold_ends_once() {
    let test = TestPipeline::local("gate");
    let config = test.config();
    let kafka = config.kafka.clone().unwrap();
    let resolutions = config.review.resolutions_topic.clone().unwrap();
    let tag = config.store.key_prefix.clone();
    let schema_name = format!("gate_{}", tag.replace('-', "_"));
    let (db, settings) = schema(&schema_name).await;
    let file = repo().join(format!("pipelines/.test-{tag}.toml"));
    std::fs::write(&file, test.text()).unwrap();
    let pipeline = file.to_str().unwrap().to_owned();
    let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["topics", "create", "--pipeline", &pipeline, "--partitions", "2"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Two gates, one group, started first: they see everything as it comes.
    let window = Duration::from_secs(45);
    let gate = Gate::connect(&settings, 4, window).unwrap();
    gate.migrate().await.unwrap();
    let other = Gate::connect(&settings, 4, window).unwrap();
    let stop = Arc::new(tokio::sync::Notify::new());
    let group = format!("gate-{tag}");
    let gates: Vec<_> = [gate.clone(), other.clone()]
        .into_iter()
        .map(|g| {
            let (kafka, resolutions, group, stop) = (kafka.clone(), resolutions.clone(), group.clone(), stop.clone());
            tokio::spawn(async move { g.run(&kafka, &resolutions, &group, stop.notified()).await })
        })
        .collect();

    // The review store: cases from the reviews, holds of 8 s (well inside the
    // gate's window) resolved by the
    // deadline (release) unless an analyst gets there first.
    let log = std::env::temp_dir().join(format!("vigil-{tag}-review.log"));
    let _ingester = Ingester(
        Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args(["review", "ingest", "--pipeline", &pipeline, "--database", &settings, "--hold", "8s"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );

    // Payments through Vigil.
    let gen = GenConfig { seed: 31, events: 1_200, cards: 120, merchants: 30, days: 3, ..GenConfig::default() };
    let events: Vec<Event> = vigil_gen::generate(&gen).into_iter().map(|l| l.event).collect();
    vigil_kafka::produce_lines(&kafka, &kafka.input_topic, events.iter().map(Event::to_json)).await.unwrap();
    let run = start(&config, Arc::new(Engine::connect(&config).await.unwrap()));
    let stats = run.stats.clone();
    wait_until(Duration::from_secs(180), "every event decided", || stats.delivered.load(Ordering::SeqCst) >= 1_200)
        .await;
    run.finish().await.unwrap();

    // An analyst decides a few cases before their deadline: a fraud stops,
    // a genuine payment is released.
    let store =
        vigil_review::ReviewStore::connect(&settings, 2, vigil_review::ReviewSettings::from_pipeline(&config).unwrap())
            .unwrap();
    let start_at = Instant::now();
    let mut decided = 0;
    while decided < 4 && start_at.elapsed() < Duration::from_secs(30) {
        let Ok(Some(claim)) = store.claim_next("ana", &[], Duration::from_secs(60)).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let verdict = if decided % 2 == 0 { Verdict::Fraud } else { Verdict::Genuine };
        for p in store.case(claim.case).await.unwrap().payments {
            if p.resolution.is_none() && store.verdict(claim.case, "ana", &p.transaction_id, verdict).await.is_ok() {
                decided += 1;
            }
        }
    }

    // Authorisations Vigil never decides (it has stopped): they expire.
    let orphans: Vec<Event> = events[..5]
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let mut e = e.clone();
            e.transaction_id = format!("orphan-{i}");
            e
        })
        .collect();
    vigil_kafka::produce_lines(&kafka, &kafka.input_topic, orphans.iter().map(Event::to_json)).await.unwrap();

    // The checker reads the topics on its own.
    let decisions: HashMap<String, Action> =
        decisions(&read_all(&kafka.decisions_topic, 1_200, Duration::from_secs(5), Duration::from_secs(60)).await)
            .into_iter()
            .map(|d| (d.transaction_id, d.decision))
            .collect();
    assert_eq!(decisions.len(), 1_200);
    let reviews = decisions.values().filter(|a| **a == Action::Review).count();
    assert!(reviews >= 10, "too few reviews to test with: {reviews}");
    let start_at = Instant::now();
    let total = 1_200 + orphans.len() as i64;
    loop {
        let row = db
            .query_one("SELECT count(*), count(*) FILTER (WHERE state IN ('pending', 'awaiting')) FROM gate_holds", &[])
            .await
            .unwrap();
        let (all, open): (i64, i64) = (row.get(0), row.get(1));
        if all == total && open == 0 {
            break;
        }
        assert!(
            start_at.elapsed() < Duration::from_secs(150),
            "{open} of {all} holds still open after 150 s: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let resolved: HashMap<String, String> =
        read_all(&resolutions, reviews, Duration::from_secs(3), Duration::from_secs(60))
            .await
            .iter()
            .map(|m| {
                let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
                (v["transaction_id"].as_str().unwrap().to_owned(), v["action"].as_str().unwrap().to_owned())
            })
            .collect();
    assert_eq!(resolved.len(), reviews, "each review resolved once");
    assert!(resolved.values().any(|a| a == "stop") && resolved.values().any(|a| a == "release"), "{resolved:?}");

    // Every hold ended once, by what the topics say.
    let rows =
        db.query("SELECT transaction_id, state, ended_by, amount, account_id FROM gate_holds", &[]).await.unwrap();
    let mut ends: BTreeMap<&str, usize> = BTreeMap::new();
    let mut posted_per_account: HashMap<String, Decimal> = HashMap::new();
    for r in &rows {
        let (tx, state, by, amount, account): (String, String, String, Decimal, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        let expected = match (decisions.get(&tx), resolved.get(&tx).map(String::as_str)) {
            (Some(Action::Approve), _) => ("posted", "approve"),
            (Some(Action::Decline), _) => ("voided", "decline"),
            (Some(Action::Review), Some("release")) => ("posted", "release"),
            (Some(Action::Review), Some("stop")) => ("voided", "stop"),
            (None, None) => ("expired", "expiry"),
            other => panic!("{tx}: the topics say {other:?}"),
        };
        assert_eq!((state.as_str(), by.as_str()), expected, "{tx}");
        *ends.entry(expected.0).or_default() += 1;
        if state == "posted" {
            *posted_per_account.entry(account).or_default() += amount;
        }
    }
    assert_eq!(ends.get("expired"), Some(&orphans.len()), "{ends:?}");
    assert!(ends.get("posted").is_some_and(|n| *n > 0) && ends.get("voided").is_some_and(|n| *n > 0), "{ends:?}");

    // Accounts: nothing left held, and posted money is what the posted
    // holds add up to, though two gates wrote them at once.
    let accounts = db.query("SELECT id, held, posted FROM gate_accounts", &[]).await.unwrap();
    for a in &accounts {
        let (id, held, posted): (String, Decimal, Decimal) = (a.get(0), a.get(1), a.get(2));
        assert_eq!(held, Decimal::ZERO, "{id}");
        assert_eq!(posted, posted_per_account.get(&id).copied().unwrap_or_default(), "{id}");
    }
    let cards: std::collections::BTreeSet<String> = events.iter().chain(&orphans).map(account_of).collect();
    assert_eq!(accounts.len(), cards.len());

    // Applying everything again changes nothing.
    let before = states(&db).await;
    for e in events.iter().take(50) {
        assert_eq!(gate.apply(&vigil_ledger_gate::Input::Authorisation(Box::new(e.clone()))).await.unwrap(), None);
        let action = decisions[&e.transaction_id];
        let again = vigil_ledger_gate::Input::Decision { transaction_id: e.transaction_id.clone(), action };
        assert_eq!(gate.apply(&again).await.unwrap(), None);
    }
    let after = states(&db).await;
    assert_eq!(before, after);

    stop.notify_waiters();
    for g in gates {
        g.await.unwrap().unwrap();
    }
    let applied = gate.stats.applied.load(Ordering::Relaxed) + other.stats.applied.load(Ordering::Relaxed);
    assert!(applied >= 1_200 * 2 + 5, "authorisations and decisions at least: {applied}");
    std::fs::remove_file(&file).ok();
    std::fs::remove_file(&log).ok();
    db.batch_execute(&format!("DROP SCHEMA {schema_name} CASCADE")).await.unwrap();
}
