//! The review store against the real PostgreSQL (127.0.0.1:5432, database
//! `test`, or `VIGIL_TEST_POSTGRES`): each test works in a schema of its own.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use vigil_core::{Decision, Verdict};
use vigil_review::{Action, Entity, ReviewError, ReviewSettings, ReviewStore, DEADLINE};

const LONG: Duration = Duration::from_secs(600);

fn database() -> String {
    std::env::var("VIGIL_TEST_POSTGRES").unwrap_or_else(|_| "host=127.0.0.1 user=postgres dbname=test".into())
}

/// A migrated store in a new schema, dropped again when the test ends well.
struct Fixture {
    store: ReviewStore,
    schema: String,
}

impl Fixture {
    async fn new(settings: ReviewSettings, pool: usize) -> Fixture {
        let schema = format!("review_test_{:016x}", rand::random::<u64>());
        let (client, conn) = tokio_postgres::connect(&database(), tokio_postgres::NoTls)
            .await
            .expect("PostgreSQL on 127.0.0.1:5432 (scripts/services.sh starts it)");
        tokio::spawn(conn);
        client.batch_execute(&format!("CREATE SCHEMA {schema}")).await.unwrap();
        let mut config: tokio_postgres::Config = database().parse().unwrap();
        config.options(format!("-c search_path={schema}"));
        let store = ReviewStore::with_config(config, pool, settings).unwrap();
        store.migrate().await.unwrap();
        Fixture { store, schema }
    }

    async fn sql(&self, statement: &str) -> Vec<tokio_postgres::Row> {
        let (client, conn) = tokio_postgres::connect(&database(), tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        client.batch_execute(&format!("SET search_path = {}", self.schema)).await.unwrap();
        client.query(statement, &[]).await.unwrap()
    }

    async fn count(&self, statement: &str) -> i64 {
        self.sql(statement).await[0].get(0)
    }

    async fn drop_schema(self) {
        self.sql(&format!("DROP SCHEMA {} CASCADE", self.schema)).await;
    }
}

fn decision(tx: &str, action: &str, card: Option<&str>, amount: &str, score: f64) -> Decision {
    let mut event = serde_json::json!({
        "transaction_id": tx, "timestamp": "2026-12-03T10:00:00Z", "amount": amount, "currency": "EUR",
        "merchant_id": "m-1", "country": "FR"
    });
    if let Some(c) = card {
        event["card_id"] = c.into();
    }
    let mut d = serde_json::json!({
        "transaction_id": tx, "decision": action, "score": score,
        "reasons": [{"rule": "card_burst", "code": "CARD_VELOCITY", "action": "review", "score": score}],
        "rules_version": "r1", "model_version": "m1", "model_score": 0.4,
        "features": {"card_count_1h": 3, "card_sum_1h": "410.20"}, "latency_us": 100
    });
    if action == "review" {
        d["event"] = event;
    }
    serde_json::from_value(d).unwrap()
}

fn review(tx: &str, card: &str) -> Decision {
    decision(tx, "review", Some(card), "120.50", 60.0)
}

#[tokio::test]
async fn a_review_opens_one_case_per_card_and_keeps_the_frozen_snapshot() {
    let f = Fixture::new(ReviewSettings::default(), 4).await;
    let batch = vec![
        review("t1", "card-a"),
        review("t2", "card-a"),
        review("t3", "card-b"),
        decision("t4", "approve", Some("card-c"), "10", 1.0),
        decision("t5", "decline", Some("card-a"), "10", 99.0),
        decision("t6", "review", None, "75.00", 55.0),
    ];
    let got = f.store.ingest(&batch).await.unwrap();
    assert_eq!((got.added, got.opened, got.repeated, got.not_review), (4, 3, 0, 2));
    let a = f.store.open_case_of("card", "card-a").await.unwrap().expect("card-a's case");
    let case = f.store.case(a).await.unwrap();
    assert_eq!(case.payments.len(), 2);
    assert_eq!(case.status, "open");
    let p = &case.payments[0];
    assert_eq!(p.transaction_id, "t1");
    assert_eq!(p.amount.to_string(), "120.50", "money is kept exact");
    assert_eq!(p.decision, batch[0], "the snapshot is the decision as published, event included");
    assert!(p.hold_until > chrono::Utc::now() + chrono::Duration::minutes(29));
    // A payment without a card gets a case of its own.
    assert!(f.store.open_case_of("transaction", "t6").await.unwrap().is_some());
    assert_eq!(f.count("SELECT count(*) FROM cases").await, 3);
    f.drop_schema().await;
}

#[tokio::test]
async fn redelivered_reviews_change_nothing_even_after_the_case_closed() {
    let f = Fixture::new(ReviewSettings::default(), 4).await;
    let batch: Vec<Decision> = (0..50).map(|i| review(&format!("t{i}"), &format!("card-{}", i % 7))).collect();
    let first = f.store.ingest(&batch).await.unwrap();
    assert_eq!((first.added, first.opened), (50, 7));
    // The same batch again, then a batch that overlaps it, with a copy inside.
    let again = f.store.ingest(&batch).await.unwrap();
    assert_eq!((again.added, again.opened, again.repeated), (0, 0, 50));
    let mut overlap: Vec<Decision> = (40..60).map(|i| review(&format!("t{i}"), &format!("card-{}", i % 7))).collect();
    overlap.push(review("t55", "card-6"));
    let third = f.store.ingest(&overlap).await.unwrap();
    assert_eq!((third.added, third.opened, third.repeated), (10, 0, 11));
    assert_eq!(f.count("SELECT count(*) FROM payments").await, 60);
    assert_eq!(f.count("SELECT sum(payments)::int8 FROM cases").await, 60, "counters follow the rows");
    // Once card-0's case is closed, a redelivery of one of its payments opens
    // nothing; a new payment of card-0 opens a new case.
    f.sql("UPDATE cases SET status = 'closed', closed_at = now() WHERE entity_id = 'card-0'").await;
    let late = f.store.ingest(&[review("t0", "card-0")]).await.unwrap();
    assert_eq!((late.added, late.opened, late.repeated), (0, 0, 1));
    assert!(f.store.open_case_of("card", "card-0").await.unwrap().is_none());
    let new = f.store.ingest(&[review("t100", "card-0")]).await.unwrap();
    assert_eq!((new.added, new.opened), (1, 1));
    assert_eq!(f.count("SELECT count(*) FROM cases WHERE entity_id = 'card-0'").await, 2);
    assert_eq!(f.count("SELECT count(*) FROM cases WHERE payments = 0").await, 0);
    f.drop_schema().await;
}

#[tokio::test]
async fn concurrent_ingesters_of_one_stream_add_each_payment_once() {
    let f = Fixture::new(ReviewSettings::default(), 8).await;
    // Six ingesters get overlapping slices of one stream of 3,000 reviews on
    // 40 cards, as after rebalances that hand partitions back and forth.
    let all: Arc<Vec<Decision>> =
        Arc::new((0..3000).map(|i| review(&format!("t{i:05}"), &format!("card-{:02}", (i * 7) % 40))).collect());
    let mut tasks = Vec::new();
    for w in 0..6usize {
        let (store, all) = (f.store.clone(), all.clone());
        tasks.push(tokio::spawn(async move {
            let mut added = 0;
            let from = w * 400;
            for chunk in all[from..(from + 1200).min(all.len())].chunks(100) {
                added += store.ingest(chunk).await.unwrap().added;
            }
            added
        }));
    }
    let mut added = 0;
    for t in tasks {
        added += t.await.unwrap();
    }
    let rest = f.store.ingest(&all).await.unwrap().added;
    assert_eq!(added + rest, 3000, "every payment added exactly once");
    assert_eq!(f.count("SELECT count(*) FROM payments").await, 3000);
    assert_eq!(f.count("SELECT count(*) FROM cases").await, 40, "one case per card, none empty");
    assert_eq!(f.count("SELECT sum(payments)::int8 FROM cases").await, 3000);
    f.drop_schema().await;
}

#[tokio::test]
async fn the_case_owner_can_be_another_entity() {
    let settings = ReviewSettings { entity: Entity::Merchant, hold: Duration::from_secs(60) };
    let f = Fixture::new(settings, 2).await;
    f.store.ingest(&[review("t1", "card-a"), review("t2", "card-b")]).await.unwrap();
    let m = f.store.open_case_of("merchant", "m-1").await.unwrap().expect("the merchant's case");
    let case = f.store.case(m).await.unwrap();
    assert_eq!(case.payments.len(), 2);
    assert!(case.payments[0].hold_until < chrono::Utc::now() + chrono::Duration::seconds(61));
    f.drop_schema().await;
}

#[tokio::test]
async fn concurrent_claims_never_give_one_case_to_two_analysts() {
    let f = Fixture::new(ReviewSettings::default(), 10).await;
    let batch: Vec<Decision> = (0..300).map(|i| review(&format!("t{i}"), &format!("card-{i}"))).collect();
    f.store.ingest(&batch).await.unwrap();
    let mut tasks = Vec::new();
    for a in 0..10 {
        let store = f.store.clone();
        tasks.push(tokio::spawn(async move {
            let analyst = format!("analyst-{a}");
            let mut held = Vec::new();
            while let Some(c) = store.claim_next(&analyst, &[], LONG).await.unwrap() {
                held.push(c.case);
            }
            (analyst, held)
        }));
    }
    let mut holder: HashMap<i64, String> = HashMap::new();
    for t in tasks {
        let (analyst, held) = t.await.unwrap();
        for case in held {
            if let Some(other) = holder.insert(case, analyst.clone()) {
                panic!("case {case} claimed by {other} and {analyst}");
            }
        }
    }
    assert_eq!(holder.len(), 300, "every case claimed once");
    let busy: HashSet<&String> = holder.values().collect();
    assert!(busy.len() > 1, "the claimers ran side by side");
    let stored = f.sql("SELECT id, lease_holder FROM cases").await;
    for row in stored {
        let (id, who): (i64, String) = (row.get(0), row.get(1));
        assert_eq!(holder[&id], who, "the database agrees on who holds case {id}");
    }
    f.drop_schema().await;
}

#[tokio::test]
async fn a_lease_that_runs_out_returns_the_case_and_its_holder_loses_it() {
    let f = Fixture::new(ReviewSettings::default(), 4).await;
    f.store.ingest(&[review("t1", "card-a"), review("t2", "card-b")]).await.unwrap();
    // Oldest first among equal priorities.
    let first = f.store.claim_next("ana", &[], Duration::from_millis(300)).await.unwrap().unwrap();
    assert_eq!(first.entity_id, "card-a");
    let second = f.store.claim_next("bo", &["default"], LONG).await.unwrap().unwrap();
    assert_eq!(second.entity_id, "card-b");
    assert!(f.store.claim_next("cy", &[], LONG).await.unwrap().is_none(), "both held");
    assert!(f.store.claim_next("cy", &["other"], LONG).await.unwrap().is_none(), "no such queue");
    // A renewal inside the lease holds; by someone else, it fails.
    f.store.renew(first.case, "ana", Duration::from_millis(300)).await.unwrap();
    assert!(f.store.renew(first.case, "cy", LONG).await.is_err());
    tokio::time::sleep(Duration::from_millis(450)).await;
    let taken = f.store.claim_next("cy", &[], LONG).await.unwrap().expect("the expired case is claimable");
    assert_eq!(taken.case, first.case);
    let lost = f.store.renew(first.case, "ana", LONG).await.unwrap_err();
    assert!(lost.to_string().contains("not held by ana"), "{lost}");
    // Giving a case back makes it claimable at once.
    f.store.release(second.case, "bo").await.unwrap();
    assert!(f.store.release(second.case, "bo").await.is_err(), "released twice");
    assert_eq!(f.store.claim_next("di", &[], LONG).await.unwrap().unwrap().case, second.case);
    f.drop_schema().await;
}

#[tokio::test]
async fn migrating_twice_or_at_once_is_harmless() {
    let f = Fixture::new(ReviewSettings::default(), 4).await;
    let (a, b) = tokio::join!(f.store.migrate(), f.store.migrate());
    a.unwrap();
    b.unwrap();
    let shipped = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations")).unwrap().count() as i64;
    assert_eq!(f.count("SELECT count(*) FROM refinery_schema_history").await, shipped, "each migration once");
    f.drop_schema().await;
}

#[tokio::test]
async fn a_verdict_resolves_its_payment_once_and_the_last_one_closes_the_case() {
    let f = Fixture::new(ReviewSettings::default(), 4).await;
    f.store.ingest(&[review("t1", "card-a"), review("t2", "card-a"), review("t3", "card-b")]).await.unwrap();
    let claim = f.store.claim_next("ana", &[], LONG).await.unwrap().unwrap();
    assert_eq!((claim.entity_id.as_str(), claim.payments), ("card-a", 2));
    let first = f.store.verdict(claim.case, "ana", "t1", Verdict::Fraud).await.unwrap();
    assert_eq!((first.action, first.case_closed), (Action::Stop, false));
    // Once only, and only in its own case, and only by the lease holder.
    let again = f.store.verdict(claim.case, "ana", "t1", Verdict::Genuine).await.unwrap_err();
    assert!(matches!(again, ReviewError::AlreadyResolved { .. }), "{again}");
    assert!(again.to_string().contains("stop by ana"), "{again}");
    let elsewhere = f.store.verdict(claim.case, "ana", "t3", Verdict::Fraud).await.unwrap_err();
    assert!(matches!(elsewhere, ReviewError::NoSuchPayment { .. }), "{elsewhere}");
    let stranger = f.store.verdict(claim.case, "bo", "t2", Verdict::Fraud).await.unwrap_err();
    assert!(matches!(stranger, ReviewError::LeaseLost { .. }), "{stranger}");
    let last = f.store.verdict(claim.case, "ana", "t2", Verdict::Genuine).await.unwrap();
    assert_eq!((last.action, last.case_closed), (Action::Release, true));
    assert!(last.seq > first.seq, "the outbox keeps the order of resolution");
    let case = f.store.case(claim.case).await.unwrap();
    assert_eq!(case.status, "closed");
    assert_eq!(case.lease_holder, None);
    let kept: Vec<(Option<String>, Option<Action>)> =
        case.payments.iter().map(|p| (p.verdict.clone(), p.resolution)).collect();
    assert_eq!(kept, [(Some("fraud".into()), Some(Action::Stop)), (Some("genuine".into()), Some(Action::Release))]);
    let closed = f.store.verdict(claim.case, "ana", "t2", Verdict::Fraud).await.unwrap_err();
    assert!(matches!(closed, ReviewError::CaseClosed(_)), "{closed}");
    // The card's next review opens a new case.
    let next = f.store.ingest(&[review("t4", "card-a")]).await.unwrap();
    assert_eq!(next.opened, 1);
    assert_eq!(f.count("SELECT count(*) FROM resolutions").await, 2);
    f.drop_schema().await;
}

#[tokio::test]
async fn a_hold_that_runs_out_is_resolved_by_the_deadline_policy() {
    let settings = ReviewSettings { entity: Entity::Card, hold: Duration::from_millis(300) };
    let f = Fixture::new(settings, 4).await;
    f.store.ingest(&[review("t1", "card-a"), review("t2", "card-a"), review("t3", "card-b")]).await.unwrap();
    assert!(f.store.resolve_due(Action::Release, 100).await.unwrap().is_empty(), "nothing due yet");
    let claim = f.store.claim_next("ana", &[], LONG).await.unwrap().unwrap();
    f.store.verdict(claim.case, "ana", "t1", Verdict::Fraud).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let due = f.store.resolve_due(Action::Release, 100).await.unwrap();
    let got: Vec<(&str, Action, &str, bool)> =
        due.iter().map(|r| (r.transaction_id.as_str(), r.action, r.resolved_by.as_str(), r.case_closed)).collect();
    assert_eq!(got, [("t2", Action::Release, DEADLINE, true), ("t3", Action::Release, DEADLINE, true)]);
    assert!(f.store.resolve_due(Action::Release, 100).await.unwrap().is_empty(), "resolved once");
    let late = f.store.verdict(claim.case, "ana", "t2", Verdict::Fraud).await.unwrap_err();
    assert!(matches!(late, ReviewError::CaseClosed(_)), "{late}");
    assert_eq!(f.count("SELECT count(*) FROM cases WHERE status = 'open'").await, 0);
    f.drop_schema().await;
}

#[tokio::test]
async fn verdicts_racing_the_deadline_give_every_payment_exactly_one_resolution() {
    let settings = ReviewSettings { entity: Entity::Card, hold: Duration::from_millis(200) };
    let f = Fixture::new(settings, 10).await;
    let batch: Vec<Decision> = (0..400).map(|i| review(&format!("t{i:03}"), &format!("card-{}", i % 40))).collect();
    f.store.ingest(&batch).await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let mut tasks = Vec::new();
    for a in 0..4 {
        let store = f.store.clone();
        tasks.push(tokio::spawn(async move {
            let analyst = format!("analyst-{a}");
            let mut given = 0;
            while let Some(c) = store.claim_next(&analyst, &[], LONG).await.unwrap() {
                for p in store.case(c.case).await.unwrap().payments {
                    match store.verdict(c.case, &analyst, &p.transaction_id, Verdict::Genuine).await {
                        Ok(_) => given += 1,
                        Err(ReviewError::AlreadyResolved { .. } | ReviewError::CaseClosed(_)) => {}
                        Err(e) => panic!("{e}"),
                    }
                }
            }
            given
        }));
    }
    let sweeper = {
        let store = f.store.clone();
        tokio::spawn(async move {
            let mut swept = 0;
            for _ in 0..40 {
                swept += store.resolve_due(Action::Stop, 7).await.unwrap().len();
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            swept
        })
    };
    let mut given = 0;
    for t in tasks {
        given += t.await.unwrap();
    }
    let swept = sweeper.await.unwrap() + f.store.resolve_due(Action::Stop, 1000).await.unwrap().len();
    assert_eq!(given + swept, 400, "each payment resolved once ({given} verdicts, {swept} deadlines)");
    assert_eq!(f.count("SELECT count(*) FROM resolutions").await, 400);
    assert_eq!(f.count("SELECT count(*) FROM payments WHERE resolution IS NULL").await, 0);
    let agree =
        "SELECT count(*) FROM payments p JOIN resolutions r USING (transaction_id) WHERE p.resolution = r.action";
    assert_eq!(f.count(agree).await, 400, "each payment's row agrees with its outbox row");
    assert_eq!(f.count("SELECT count(*) FROM cases WHERE status = 'open'").await, 0, "every case closed");
    f.drop_schema().await;
}
