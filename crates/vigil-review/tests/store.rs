//! The review store against the real PostgreSQL (127.0.0.1:5432, database
//! `test`, or `VIGIL_TEST_POSTGRES`): each test works in a schema of its own.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use vigil_core::{Decision, Verdict};
use vigil_review::{CaseEntity, HoldAction, ReviewError, ReviewSettings, ReviewStore, Verdicted, DEADLINE};

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

    /// A second store on this fixture's schema: another review server of
    /// the same pipeline.
    fn another_store(&self, pool: usize) -> ReviewStore {
        let mut config: tokio_postgres::Config = database().parse().unwrap();
        config.options(format!("-c search_path={}", self.schema));
        ReviewStore::with_config(config, pool, ReviewSettings::default()).unwrap()
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

/// The resolution of a verdict that needed no second analyst.
fn resolved(v: Verdicted) -> vigil_review::Resolution {
    v.resolution().cloned().unwrap_or_else(|| panic!("resolved, not {v:?}"))
}

/// Review settings from a pipeline file's `[review]` section.
fn settings_of(review: &str) -> ReviewSettings {
    let text = format!(
        "[rules]\npath = \"rules\"\n[[features]]\nname = \"card_count_1h\"\nentity = \"card_id\"\naggregate = \"count\"\n\
         window = \"1h\"\n[[features]]\nname = \"card_sum_1h\"\nentity = \"card_id\"\naggregate = \"sum_amount\"\n\
         window = \"1h\"\n{review}"
    );
    let config = vigil_core::PipelineConfig::parse(std::path::Path::new("review.toml"), &text).unwrap();
    ReviewSettings::from_pipeline(&config).unwrap()
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
    let settings = ReviewSettings { entity: CaseEntity::Merchant, hold: Duration::from_secs(60), ..Default::default() };
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
    let first = resolved(f.store.verdict(claim.case, "ana", "t1", Verdict::Fraud).await.unwrap());
    assert_eq!((first.action, first.case_closed), (HoldAction::Stop, false));
    // Once only, and only in its own case, and only by the lease holder.
    let again = f.store.verdict(claim.case, "ana", "t1", Verdict::Genuine).await.unwrap_err();
    assert!(matches!(again, ReviewError::AlreadyResolved { .. }), "{again}");
    assert!(again.to_string().contains("stop by ana"), "{again}");
    let elsewhere = f.store.verdict(claim.case, "ana", "t3", Verdict::Fraud).await.unwrap_err();
    assert!(matches!(elsewhere, ReviewError::NoSuchPayment { .. }), "{elsewhere}");
    let stranger = f.store.verdict(claim.case, "bo", "t2", Verdict::Fraud).await.unwrap_err();
    assert!(matches!(stranger, ReviewError::LeaseLost { .. }), "{stranger}");
    let last = resolved(f.store.verdict(claim.case, "ana", "t2", Verdict::Genuine).await.unwrap());
    assert_eq!((last.action, last.case_closed), (HoldAction::Release, true));
    assert!(last.seq > first.seq, "the outbox keeps the order of resolution");
    let case = f.store.case(claim.case).await.unwrap();
    assert_eq!(case.status, "closed");
    assert_eq!(case.lease_holder, None);
    let kept: Vec<(Option<String>, Option<HoldAction>)> =
        case.payments.iter().map(|p| (p.verdict.clone(), p.resolution)).collect();
    assert_eq!(
        kept,
        [(Some("fraud".into()), Some(HoldAction::Stop)), (Some("genuine".into()), Some(HoldAction::Release))]
    );
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
    let settings = ReviewSettings { entity: CaseEntity::Card, hold: Duration::from_millis(300), ..Default::default() };
    let f = Fixture::new(settings, 4).await;
    f.store.ingest(&[review("t1", "card-a"), review("t2", "card-a"), review("t3", "card-b")]).await.unwrap();
    assert!(f.store.resolve_due(HoldAction::Release, 100).await.unwrap().is_empty(), "nothing due yet");
    let claim = f.store.claim_next("ana", &[], LONG).await.unwrap().unwrap();
    f.store.verdict(claim.case, "ana", "t1", Verdict::Fraud).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let due = f.store.resolve_due(HoldAction::Release, 100).await.unwrap();
    let got: Vec<(&str, HoldAction, &str, bool)> =
        due.iter().map(|r| (r.transaction_id.as_str(), r.action, r.resolved_by.as_str(), r.case_closed)).collect();
    assert_eq!(got, [("t2", HoldAction::Release, DEADLINE, true), ("t3", HoldAction::Release, DEADLINE, true)]);
    assert!(f.store.resolve_due(HoldAction::Release, 100).await.unwrap().is_empty(), "resolved once");
    let late = f.store.verdict(claim.case, "ana", "t2", Verdict::Fraud).await.unwrap_err();
    assert!(matches!(late, ReviewError::CaseClosed(_)), "{late}");
    assert_eq!(f.count("SELECT count(*) FROM cases WHERE status = 'open'").await, 0);
    f.drop_schema().await;
}

#[tokio::test]
async fn verdicts_racing_the_deadline_give_every_payment_exactly_one_resolution() {
    let settings = ReviewSettings { entity: CaseEntity::Card, hold: Duration::from_millis(200), ..Default::default() };
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
                swept += store.resolve_due(HoldAction::Stop, 7).await.unwrap().len();
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            swept
        })
    };
    let mut given = 0;
    for t in tasks {
        given += t.await.unwrap();
    }
    let swept = sweeper.await.unwrap() + f.store.resolve_due(HoldAction::Stop, 1000).await.unwrap().len();
    assert_eq!(given + swept, 400, "each payment resolved once ({given} verdicts, {swept} deadlines)");
    assert_eq!(f.count("SELECT count(*) FROM resolutions").await, 400);
    assert_eq!(f.count("SELECT count(*) FROM payments WHERE resolution IS NULL").await, 0);
    let agree =
        "SELECT count(*) FROM payments p JOIN resolutions r USING (transaction_id) WHERE p.resolution = r.action";
    assert_eq!(f.count(agree).await, 400, "each payment's row agrees with its outbox row");
    assert_eq!(f.count("SELECT count(*) FROM cases WHERE status = 'open'").await, 0, "every case closed");
    f.drop_schema().await;
}

const QUEUES: &str = r#"
[review]
[[review.queues]]
name = "big"
priority = 50
when = 'amount >= 1000 and card_count_1h >= 3'
[[review.queues]]
name = "velocity"
priority = 10
reasons = ["CARD_VELOCITY"]
min_score = 70
"#;

#[tokio::test]
async fn a_case_is_in_the_queue_of_its_most_urgent_open_payment() {
    let f = Fixture::new(settings_of(QUEUES), 4).await;
    f.store
        .ingest(&[
            decision("t1", "review", Some("card-a"), "1500.00", 60.0), // big
            decision("t2", "review", Some("card-a"), "20.00", 80.0),   // velocity
            decision("t3", "review", Some("card-b"), "20.00", 80.0),   // velocity
            decision("t4", "review", Some("card-c"), "20.00", 60.0),   // default
        ])
        .await
        .unwrap();
    let queue = |card: &'static str| {
        let f = &f;
        async move {
            let id = f.store.open_case_of("card", card).await.unwrap().unwrap();
            f.store.case(id).await.unwrap().queue
        }
    };
    assert_eq!(
        (queue("card-a").await, queue("card-b").await, queue("card-c").await),
        ("big".into(), "velocity".into(), "default".into())
    );
    // Claim-next by queue, most urgent first.
    let c = f.store.claim_next("ana", &["velocity", "big"], LONG).await.unwrap().unwrap();
    assert_eq!((c.entity_id.as_str(), c.queue.as_str()), ("card-a", "big"));
    let c2 = f.store.claim_next("bo", &["default"], LONG).await.unwrap().unwrap();
    assert_eq!(c2.entity_id, "card-c");
    // With its big payment resolved, card-a's case drops to its other payment's queue.
    f.store.verdict(c.case, "ana", "t1", Verdict::Fraud).await.unwrap();
    assert_eq!(queue("card-a").await, "velocity");
    // A later big payment lifts it again.
    f.store.ingest(&[decision("t5", "review", Some("card-a"), "5000.00", 60.0)]).await.unwrap();
    assert_eq!(queue("card-a").await, "big");
    f.drop_schema().await;
}

#[test]
fn a_queue_condition_that_does_not_check_is_refused_with_its_place_in_the_pipeline() {
    let text = "[rules]\npath = \"rules\"\n[review]\n[[review.queues]]\nname = \"q\"\npriority = 1\n\
                when = 'amount >= 10 and card_cnt > 2'\n";
    let config = vigil_core::PipelineConfig::parse(std::path::Path::new("p.toml"), text).unwrap();
    let err = ReviewSettings::from_pipeline(&config).unwrap_err().to_string();
    assert!(err.starts_with("p.toml:7:26: "), "{err}");
    assert!(err.contains("card_cnt"), "{err}");
}

#[tokio::test]
async fn four_eyes_holds_a_large_or_contrary_verdict_until_a_second_analyst_confirms_it() {
    let f =
        Fixture::new(settings_of("[review]\nfour_eyes_above = \"1000.00\"\nfour_eyes_release_of_decline = true\n"), 4)
            .await;
    let mut wanted_decline = decision("t3", "review", Some("card-a"), "20.00", 60.0);
    wanted_decline.reasons[0].action = vigil_core::Action::Decline;
    f.store
        .ingest(&[decision("t1", "review", Some("card-a"), "1500.00", 60.0), review("t2", "card-a"), wanted_decline])
        .await
        .unwrap();
    let c = f.store.claim_next("ana", &[], LONG).await.unwrap().unwrap();
    // Above the amount: proposed, whatever the verdict.
    let v = f.store.verdict(c.case, "ana", "t1", Verdict::Genuine).await.unwrap();
    assert_eq!(v, Verdicted::Proposed { transaction_id: "t1".into(), verdict: Verdict::Genuine, by: "ana".into() });
    // Small and not wanted declined: resolved at once.
    resolved(f.store.verdict(c.case, "ana", "t2", Verdict::Genuine).await.unwrap());
    // Releasing what a rule wanted declined needs a second analyst; stopping it does not.
    let v = f.store.verdict(c.case, "ana", "t3", Verdict::Genuine).await.unwrap();
    assert!(v.resolution().is_none(), "{v:?}");
    let pending = f.store.proposals(10).await.unwrap();
    assert_eq!(pending.iter().map(|p| p.transaction_id.as_str()).collect::<Vec<_>>(), ["t1", "t3"]);
    assert_eq!(f.count("SELECT count(*) FROM resolutions").await, 1, "the money waits");

    // The proposer cannot confirm; a colleague can, without holding the case.
    let same = f.store.confirm("ana", "t1", true).await.unwrap_err();
    assert!(matches!(same, ReviewError::SameAnalyst { .. }), "{same}");
    let r = f.store.confirm("cy", "t1", true).await.unwrap().unwrap();
    assert_eq!((r.resolved_by.as_str(), r.confirmed_by.as_deref(), r.action), ("ana", Some("cy"), HoldAction::Release));
    assert!(!r.case_closed);
    let again = f.store.confirm("dee", "t1", true).await.unwrap_err();
    assert!(matches!(again, ReviewError::AlreadyResolved { .. }), "{again}");
    // Not confirmed: the proposal goes, with a note, and the payment waits again.
    assert_eq!(f.store.confirm("cy", "t3", false).await.unwrap(), None);
    assert!(f.store.notes(c.case).await.unwrap()[0].body.contains("did not confirm ana's verdict `genuine`"));
    let none = f.store.confirm("cy", "t3", true).await.unwrap_err();
    assert!(matches!(none, ReviewError::NothingToConfirm(_)), "{none}");
    let r = resolved(f.store.verdict(c.case, "ana", "t3", Verdict::Fraud).await.unwrap());
    assert!(r.case_closed);
    let unknown = f.store.confirm("cy", "nope", true).await.unwrap_err();
    assert!(matches!(unknown, ReviewError::NoSuchTransaction(_)), "{unknown}");
    f.drop_schema().await;
}

#[tokio::test]
async fn a_colleagues_proposal_is_confirmed_or_not_never_overwritten() {
    let f = Fixture::new(settings_of("[review]\nfour_eyes_above = \"100.00\"\nlease = \"10s\"\n"), 4).await;
    f.store.ingest(&[review("t1", "card-a")]).await.unwrap();
    let c = f.store.claim_next("ana", &[], LONG).await.unwrap().unwrap();
    f.store.verdict(c.case, "ana", "t1", Verdict::Fraud).await.unwrap();
    f.store.release(c.case, "ana").await.unwrap();
    let c = f.store.claim_next("bo", &[], LONG).await.unwrap().unwrap();
    let err = f.store.verdict(c.case, "bo", "t1", Verdict::Genuine).await.unwrap_err();
    assert!(matches!(err, ReviewError::AwaitingSecond { .. }), "{err}");
    assert!(err.to_string().contains("ana's verdict `fraud`"), "{err}");
    let r = f.store.confirm("bo", "t1", true).await.unwrap().unwrap();
    assert_eq!((r.action, r.verdict), (HoldAction::Stop, Some(Verdict::Fraud)));
    f.drop_schema().await;
}

#[tokio::test]
async fn notes_tags_snooze_escalation_and_history() {
    let f = Fixture::new(ReviewSettings::default(), 4).await;
    f.store.ingest(&[review("t1", "card-a"), review("t2", "card-b"), review("t3", "card-c")]).await.unwrap();
    let a = f.store.claim_next("ana", &[], LONG).await.unwrap().unwrap();
    assert_eq!(a.entity_id, "card-a");
    f.store.note(a.case, "ana", "  called the cardholder  ").await.unwrap();
    assert!(matches!(f.store.note(a.case, "ana", " ").await, Err(ReviewError::Invalid(_))));
    assert!(matches!(f.store.note(999_999, "ana", "x").await, Err(ReviewError::NoSuchCase(_))));
    assert!(f.store.tag(a.case, "ana", "account-takeover").await.unwrap());
    assert!(!f.store.tag(a.case, "ana", "account-takeover").await.unwrap(), "once");
    assert!(matches!(f.store.tag(a.case, "ana", "no spaces").await, Err(ReviewError::Invalid(_))));
    assert_eq!(f.store.tags(a.case).await.unwrap(), ["account-takeover"]);
    assert_eq!(f.store.notes(a.case).await.unwrap()[0].body, "called the cardholder");

    // Snoozed: out of everyone's claim-next until it wakes; never past a hold.
    let past_hold = chrono::Utc::now() + chrono::Duration::hours(2);
    let err = f.store.snooze(a.case, "ana", past_hold).await.unwrap_err();
    assert!(err.to_string().contains("hold runs out"), "{err}");
    let soon = chrono::Utc::now() + chrono::Duration::milliseconds(700);
    f.store.snooze(a.case, "ana", soon).await.unwrap();
    let b = f.store.claim_next("bo", &[], LONG).await.unwrap().unwrap();
    assert_eq!(b.entity_id, "card-b", "the snoozed case is skipped");

    // Escalated: out of the analysts' claim-next, into the leads'.
    assert!(matches!(f.store.escalate(b.case, "ana", "why").await, Err(ReviewError::LeaseLost { .. })));
    f.store.escalate(b.case, "bo", "merchant looks like a mule").await.unwrap();
    let c = f.store.claim_next("cy", &[], LONG).await.unwrap().unwrap();
    assert_eq!(c.entity_id, "card-c");
    assert!(f.store.claim_next("dee", &[], LONG).await.unwrap().is_none(), "snoozed and escalated are not claimable");
    let lead = f.store.claim_next_escalated("lee", &[], LONG).await.unwrap().unwrap();
    assert_eq!(lead.entity_id, "card-b");
    assert!(f.store.notes(b.case).await.unwrap()[0].body.contains("mule"));
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(f.store.claim_next("dee", &[], LONG).await.unwrap().unwrap().entity_id, "card-a", "awake again");

    // The card's history: its closed and open cases, newest first.
    let d = f.store.claim(a.case, "dee", LONG).await;
    assert!(d.is_ok(), "already dee's: the lease is extended");
    f.store.verdict(a.case, "dee", "t1", Verdict::Fraud).await.unwrap();
    f.store.ingest(&[review("t4", "card-a")]).await.unwrap();
    let h = f.store.history("card", "card-a", 10).await.unwrap();
    assert_eq!(h.iter().map(|c| c.status.as_str()).collect::<Vec<_>>(), ["open", "closed"]);
    assert_eq!(
        (h[1].fraud, h[1].stopped, h[1].amounts.clone()),
        (1, 1, vec![("EUR".to_string(), "120.50".parse().unwrap())])
    );
    f.drop_schema().await;
}

#[tokio::test]
async fn a_bulk_verdict_works_each_case_it_can_and_says_why_it_left_the_others() {
    let f = Fixture::new(settings_of("[review]\nfour_eyes_above = \"1000.00\"\n"), 4).await;
    f.store
        .ingest(&[
            review("t1", "card-a"),
            review("t2", "card-a"),
            review("t3", "card-b"),
            decision("t4", "review", Some("card-c"), "5000.00", 60.0),
        ])
        .await
        .unwrap();
    let ids = |card: &'static str| {
        let f = &f;
        async move { f.store.open_case_of("card", card).await.unwrap().unwrap() }
    };
    let (a, b, c) = (ids("card-a").await, ids("card-b").await, ids("card-c").await);
    f.store.claim(b, "bo", LONG).await.unwrap();
    let out = f.store.bulk("ana", &[a, b, c, 424_242], &vigil_review::Bulk::Verdict(Verdict::Genuine)).await;
    let got: Vec<(usize, usize, bool)> = out.iter().map(|o| (o.resolved, o.proposed, o.error.is_some())).collect();
    assert_eq!(got, [(2, 0, false), (0, 0, true), (0, 1, false), (0, 0, true)]);
    assert!(
        matches!(out[1].error, Some(ReviewError::HeldByOther { ref holder, .. }) if holder == "bo"),
        "{:?}",
        out[1]
    );
    assert!(matches!(out[3].error, Some(ReviewError::NoSuchCase(_))));
    assert_eq!(f.store.case(a).await.unwrap().status, "closed");
    let c_view = f.store.case(c).await.unwrap();
    assert_eq!((c_view.status.as_str(), c_view.lease_holder.as_deref()), ("open", None), "left for the second analyst");
    let tagged = f.store.bulk("ana", &[b, c], &vigil_review::Bulk::Tag("first-party".into())).await;
    assert!(tagged.iter().all(|o| o.error.is_none()), "a tag needs no lease");
    // A bulk action that fails on a case never leaves it held: a verdict
    // over a colleague's proposal, a snooze past the hold.
    let over = f.store.bulk("cy", &[c], &vigil_review::Bulk::Verdict(Verdict::Fraud)).await;
    assert!(matches!(over[0].error, Some(ReviewError::AwaitingSecond { .. })), "{:?}", over[0]);
    assert_eq!(f.store.case(c).await.unwrap().lease_holder, None, "given back after the refusal");
    let late = chrono::Utc::now() + chrono::Duration::hours(2);
    let snoozed = f.store.bulk("cy", &[c], &vigil_review::Bulk::Snooze(late)).await;
    assert!(matches!(snoozed[0].error, Some(ReviewError::Invalid(_))), "{:?}", snoozed[0]);
    assert_eq!(f.store.case(c).await.unwrap().lease_holder, None, "given back after the refused snooze");
    f.drop_schema().await;
}

#[tokio::test]
async fn every_action_is_chained_in_the_audit_log_and_tampering_is_named() {
    let settings =
        ReviewSettings { hold: Duration::from_secs(2), ..settings_of("[review]\nfour_eyes_above = \"1000.00\"\n") };
    let f = Fixture::new(settings, 4).await;
    f.store
        .ingest(&[
            review("t1", "card-a"),
            decision("t2", "review", Some("card-a"), "2000.00", 60.0),
            review("t3", "card-b"),
        ])
        .await
        .unwrap();
    let c = f.store.claim_next("ana", &[], LONG).await.unwrap().unwrap();
    f.store.note(c.case, "ana", "looks like a takeover").await.unwrap();
    f.store.tag(c.case, "ana", "ato").await.unwrap();
    f.store.verdict(c.case, "ana", "t1", Verdict::Fraud).await.unwrap();
    f.store.verdict(c.case, "ana", "t2", Verdict::Fraud).await.unwrap();
    f.store.confirm("lee", "t2", true).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(f.store.resolve_due(HoldAction::Release, 100).await.unwrap().len(), 1);
    let actions: Vec<(String, String, Option<String>)> =
        f.store.audit_of(c.case).await.unwrap().into_iter().map(|e| (e.actor, e.action, e.transaction_id)).collect();
    let want = [
        ("ana", "claim", None),
        ("ana", "note", None),
        ("ana", "tag", None),
        ("ana", "verdict", Some("t1")),
        ("ana", "propose", Some("t2")),
        ("lee", "confirm", Some("t2")),
    ];
    let want: Vec<(String, String, Option<String>)> =
        want.iter().map(|(a, b, c)| (a.to_string(), b.to_string(), c.map(str::to_owned))).collect();
    assert_eq!(actions, want);
    let check = f.store.verify_audit(3).await.unwrap();
    assert_eq!(check, vigil_review::AuditCheck { good: 7, broken: None }, "six actions and t3's deadline");

    // The log refuses changes...
    let (client, conn) = tokio_postgres::connect(&database(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client.batch_execute(&format!("SET search_path = {}", f.schema)).await.unwrap();
    let refused = client.execute("UPDATE audit_log SET actor = 'bo' WHERE id = 4", &[]).await.unwrap_err();
    assert!(
        refused.to_string().contains("append-only") || format!("{refused:?}").contains("append-only"),
        "{refused:?}"
    );
    assert!(client.execute("DELETE FROM audit_log WHERE id = 4", &[]).await.is_err());
    // ...and whoever gets around the trigger is found out, at the row.
    client.batch_execute("ALTER TABLE audit_log DISABLE TRIGGER USER").await.unwrap();
    client.execute("UPDATE audit_log SET actor = 'bo' WHERE id = 4", &[]).await.unwrap();
    let check = f.store.verify_audit(100).await.unwrap();
    assert_eq!(check.good, 3);
    assert!(matches!(&check.broken, Some((4, why)) if why.contains("changed")), "{check:?}");
    client.execute("UPDATE audit_log SET actor = 'ana' WHERE id = 4", &[]).await.unwrap();
    assert_eq!(f.store.verify_audit(100).await.unwrap().broken, None, "put back, it holds again");
    client.execute("DELETE FROM audit_log WHERE id = 5", &[]).await.unwrap();
    let check = f.store.verify_audit(100).await.unwrap();
    assert!(matches!(&check.broken, Some((6, why)) if why.contains("missing")), "{check:?}");
    client.execute("DELETE FROM audit_log WHERE id >= 5", &[]).await.unwrap();
    let check = f.store.verify_audit(100).await.unwrap();
    assert!(matches!(&check.broken, Some((5, why)) if why.contains("head says row 7")), "a cut tail: {check:?}");
    client.batch_execute("ALTER TABLE audit_log ENABLE TRIGGER USER").await.unwrap();
    f.drop_schema().await;
}

#[tokio::test]
async fn accounts_log_in_with_argon2_and_sessions_need_their_csrf_token_for_changes() {
    use vigil_review::Role;
    let f = Fixture::new(ReviewSettings::default(), 4).await;
    f.store.add_user("admin", "ana", Role::Analyst, "correct horse battery").await.unwrap();
    assert!(matches!(
        f.store.add_user("admin", "ana", Role::Lead, "another long password").await,
        Err(ReviewError::Invalid(_))
    ));
    assert!(matches!(f.store.add_user("admin", "bo", Role::Lead, "short").await, Err(ReviewError::Invalid(_))));
    assert!(matches!(
        f.store.add_user("admin", "Bad Name", Role::Lead, "long enough password").await,
        Err(ReviewError::Invalid(_))
    ));
    let stored: String = f.sql("SELECT password_hash FROM users WHERE name = 'ana'").await[0].get(0);
    assert!(stored.starts_with("$argon2id$") && !stored.contains("horse"), "{stored}");

    let s = f.store.login("ana", "correct horse battery", Duration::from_secs(60)).await.unwrap();
    assert_eq!((s.user.as_str(), s.role), ("ana", Role::Analyst));
    assert_eq!((s.token.len(), s.csrf.len()), (64, 64));
    assert_ne!(s.token, s.csrf);
    let kept: String = f.sql("SELECT token_hash FROM sessions").await[0].get(0);
    assert_ne!(kept, s.token, "the database keeps a hash of the token, not the token");
    assert_eq!(f.store.session(&s.token).await.unwrap().unwrap().user, "ana");
    assert!(f.store.session_for_change(&s.token, &s.csrf).await.unwrap().is_some());
    assert!(
        f.store.session_for_change(&s.token, "forged").await.unwrap().is_none(),
        "no change without the CSRF token"
    );
    assert!(f.store.session("not-a-token").await.unwrap().is_none());

    // Wrong password, unknown name, disabled account: the same answer.
    for (name, password) in [("ana", "wrong password!!"), ("nobody", "correct horse battery")] {
        assert!(matches!(f.store.login(name, password, Duration::from_secs(60)).await, Err(ReviewError::LoginFailed)));
    }
    f.store.disable_user("admin", "ana").await.unwrap();
    assert!(f.store.session(&s.token).await.unwrap().is_none(), "disabling ends the sessions");
    assert!(matches!(
        f.store.login("ana", "correct horse battery", Duration::from_secs(60)).await,
        Err(ReviewError::LoginFailed)
    ));

    // Expired sessions are gone; logout ends one; all of it is audited.
    f.store.add_user("admin", "bo", Role::Lead, "a long password for bo").await.unwrap();
    let short = f.store.login("bo", "a long password for bo", Duration::from_millis(300)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(f.store.session(&short.token).await.unwrap().is_none(), "expired");
    let s = f.store.login("bo", "a long password for bo", Duration::from_secs(60)).await.unwrap();
    f.store.logout(&s.token).await.unwrap();
    assert!(f.store.session(&s.token).await.unwrap().is_none());
    let actions: Vec<String> =
        f.sql("SELECT action FROM audit_log ORDER BY id").await.iter().map(|r| r.get(0)).collect();
    assert_eq!(
        actions,
        [
            "add_user",
            "login",
            "login_failed",
            "login_failed",
            "disable_user",
            "login_failed",
            "add_user",
            "login",
            "login",
            "logout"
        ]
    );
    assert_eq!(f.store.verify_audit(100).await.unwrap().broken, None);
    f.drop_schema().await;
}

#[tokio::test]
async fn verdicts_reach_the_feature_store_as_labels_once_without_any_topic() {
    use vigil_core::{Aggregate, EntityKey, Event, FeatureDef, FeatureValue};
    use vigil_features::{FeatureStore, MemoryStore, Plan};
    use vigil_review::StoreLabels;
    let f = Fixture::new(ReviewSettings::default(), 2).await;
    let mut frauds =
        FeatureDef::new("card_frauds_7d", EntityKey::parse("card_id").unwrap(), Aggregate::FraudCount, 7 * 86_400);
    frauds.delay_s = 0;
    let features = Arc::new(MemoryStore::new(Plan::new(vec![frauds]), 86_400));
    let sink = StoreLabels::new(features.clone(), "the test's memory store");
    f.store
        .ingest(&[
            decision("l1", "review", Some("card-l"), "30.00", 60.0),
            decision("l2", "review", Some("card-l"), "20.00", 60.0),
        ])
        .await
        .unwrap();
    // Nothing decided yet: nothing to send.
    assert_eq!(f.store.send_label_batch(&sink, 100).await.unwrap(), 0);
    let claim = f.store.claim_next("ana", &[], LONG).await.unwrap().unwrap();
    f.store.verdict(claim.case, "ana", "l1", Verdict::Fraud).await.unwrap();
    f.store.verdict(claim.case, "ana", "l2", Verdict::Genuine).await.unwrap();
    assert_eq!(f.store.send_label_batch(&sink, 100).await.unwrap(), 2, "both verdicts go out as labels");
    assert_eq!(f.store.send_label_batch(&sink, 100).await.unwrap(), 0, "and are marked sent");
    assert_eq!(f.count("SELECT count(*) FROM resolutions WHERE label_sent_at IS NULL").await, 0);

    // The card's next payment sees the fraud (reported now, so a payment
    // made now counts it).
    let next = |tx: &str| -> Event {
        serde_json::from_value(serde_json::json!({
            "transaction_id": tx, "timestamp": chrono::Utc::now().to_rfc3339(), "amount": "5.00",
            "currency": "EUR", "card_id": "card-l"
        }))
        .unwrap()
    };
    let seen = features.process(&[&next("n1")]).await.unwrap();
    assert_eq!(seen[0].values, vec![FeatureValue::Count(1)]);

    // A sender that died between sending and marking sends again: the store
    // counts the fraud once.
    f.sql("UPDATE resolutions SET label_sent_at = NULL").await;
    assert_eq!(f.store.send_label_batch(&sink, 100).await.unwrap(), 2);
    let seen = features.process(&[&next("n2")]).await.unwrap();
    assert_eq!(seen[0].values, vec![FeatureValue::Count(1)], "a label sent twice is counted once");
    f.drop_schema().await;
}

/// Runs `store`'s label sender to `sink` in the background until the returned
/// sender is dropped or used; the handle gives how many labels it sent.
fn label_sender(
    store: &ReviewStore,
    sink: &Arc<vigil_review::StoreLabels>,
) -> (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<u64>) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (store, sink) = (store.clone(), sink.clone());
    let handle = tokio::spawn(async move {
        store
            .send_labels(sink.as_ref(), 100, async move {
                let _ = stopped.await;
            })
            .await
            .unwrap()
    });
    (stop, handle)
}

/// Gives a fraud verdict on a new review of `tx`.
async fn fraud_verdict(f: &Fixture, tx: &str) {
    f.store.ingest(&[decision(tx, "review", Some(&format!("card-{tx}")), "30.00", 60.0)]).await.unwrap();
    let claim = f.store.claim_next("ana", &[], LONG).await.unwrap().unwrap();
    f.store.verdict(claim.case, "ana", tx, Verdict::Fraud).await.unwrap();
}

/// Whether the label of `tx` is still to be sent.
async fn label_unsent(f: &Fixture, tx: &str) -> bool {
    f.count(&format!("SELECT count(*) FROM resolutions WHERE transaction_id = '{tx}' AND label_sent_at IS NULL")).await
        > 0
}

/// Gives a fraud verdict on a new review of `tx`, then waits (at most 20 s)
/// until a label sender has sent it.
async fn verdict_sent(f: &Fixture, tx: &str) {
    fraud_verdict(f, tx).await;
    let start = std::time::Instant::now();
    while label_unsent(f, tx).await {
        assert!(start.elapsed() < Duration::from_secs(20), "the label of {tx} in {} was never sent", f.schema);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn label_senders_take_turns_within_a_schema_and_never_wait_on_another_schemas() {
    use vigil_core::{Aggregate, EntityKey, FeatureDef};
    use vigil_features::{MemoryStore, Plan};
    // Two pipelines sharing one database, a schema each (as the tests do).
    let (a, b) = (Fixture::new(ReviewSettings::default(), 3).await, Fixture::new(ReviewSettings::default(), 3).await);
    let frauds = FeatureDef::new("card_frauds_7d", EntityKey::parse("card_id").unwrap(), Aggregate::FraudCount, 86_400);
    let features = Arc::new(MemoryStore::new(Plan::new(vec![frauds]), 86_400));
    let sink = Arc::new(vigil_review::StoreLabels::new(features, "the test's memory store"));

    let (stop_a1, a1) = label_sender(&a.store, &sink);
    verdict_sent(&a, "a1").await;
    // A second server of pipeline A waits for the first one's turn...
    let (stop_a2, a2) = label_sender(&a.another_store(3), &sink);
    // ...while pipeline B's sender works at once.
    let (stop_b, b1) = label_sender(&b.store, &sink);
    verdict_sent(&b, "b1").await;
    verdict_sent(&a, "a2").await;
    stop_b.send(()).unwrap();
    assert_eq!(b1.await.unwrap(), 1);
    stop_a1.send(()).unwrap();
    assert_eq!(a1.await.unwrap(), 2, "the first server of A sent A's labels while it held the turn");
    // The second server of A takes the turn once the first one stopped.
    verdict_sent(&a, "a3").await;
    stop_a2.send(()).unwrap();
    assert_eq!(a2.await.unwrap(), 1);
    a.drop_schema().await;
    b.drop_schema().await;
}

#[tokio::test]
async fn during_a_rolling_upgrade_a_label_sender_waits_for_an_older_builds_sender() {
    use vigil_core::{Aggregate, EntityKey, FeatureDef};
    use vigil_features::{MemoryStore, Plan};
    let f = Fixture::new(ReviewSettings::default(), 3).await;
    let frauds = FeatureDef::new("card_frauds_7d", EntityKey::parse("card_id").unwrap(), Aggregate::FraudCount, 86_400);
    let features = Arc::new(MemoryStore::new(Plan::new(vec![frauds]), 86_400));
    let sink = Arc::new(vigil_review::StoreLabels::new(features, "the test's memory store"));
    // A sender of a build before the thirty-first session: its one key for
    // the whole database, held exclusively.
    const OLDER_BUILDS_LABELS_KEY: i64 = 0x7669_6769_6c6c_6162;
    let (older, conn) = tokio_postgres::connect(&database(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let held: bool =
        older.query_one("SELECT pg_try_advisory_lock($1)", &[&OLDER_BUILDS_LABELS_KEY]).await.unwrap().get(0);
    assert!(held);
    let (stop, sender) = label_sender(&f.store, &sink);
    fraud_verdict(&f, "u1").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(label_unsent(&f, "u1").await, "a new sender went ahead beside an older one");
    older.execute("SELECT pg_advisory_unlock($1)", &[&OLDER_BUILDS_LABELS_KEY]).await.unwrap();
    let start = std::time::Instant::now();
    while label_unsent(&f, "u1").await {
        assert!(start.elapsed() < Duration::from_secs(20), "the new sender never took its turn");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.send(()).unwrap();
    assert_eq!(sender.await.unwrap(), 1);
    f.drop_schema().await;
}

/// What a webhook receiver got: the signature, id and event headers and the body.
type Received = Arc<std::sync::Mutex<Vec<(String, String, String, Vec<u8>)>>>;

/// A receiver on a free port that refuses its first request (500) and takes the rest.
async fn receiver() -> (String, Received) {
    use axum::http::{HeaderMap, StatusCode};
    let got: Received = Arc::default();
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (g, c) = (got.clone(), calls.clone());
    let app = axum::Router::new().route(
        "/hooks/vigil",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let (g, c) = (g.clone(), c.clone());
            async move {
                if c.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                    return StatusCode::INTERNAL_SERVER_ERROR;
                }
                let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
                // The body's bytes as sent: the signature is over them.
                g.lock().unwrap().push((
                    h("vigil-signature"),
                    h("vigil-webhook-id"),
                    h("vigil-webhook-event"),
                    body.to_vec(),
                ));
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks/vigil?source=vigil", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, got)
}

#[tokio::test]
async fn case_opened_and_resolved_reach_a_webhook_signed_with_the_case_and_retried_until_taken() {
    use vigil_review::{WebhookDef, WebhookEvent, WebhookSender};
    let (url, got) = receiver().await;
    let hooks = vec![
        WebhookDef {
            name: "crm".into(),
            url: url.clone(),
            secret_env: "CRM".into(),
            events: WebhookEvent::ALL.to_vec(),
        },
        // Wants only resolutions, and its address answers nothing: tried again, never lost.
        WebhookDef {
            name: "down".into(),
            url: "http://127.0.0.1:9/nowhere".into(),
            secret_env: "DOWN".into(),
            events: vec![WebhookEvent::CaseResolved],
        },
    ];
    let f = Fixture::new(ReviewSettings { webhooks: hooks.clone(), ..ReviewSettings::default() }, 4).await;
    let secrets = |var: &str| Some(format!("{var}-secret-value"));
    let sender = WebhookSender::new(&hooks, secrets).unwrap();
    assert!(WebhookSender::new(&hooks, |_| None).is_err(), "a receiver without its secret is refused");

    // Two payments of one card open one case: one `case.opened` for crm.
    f.store
        .ingest(&[
            decision("w1", "review", Some("card-w"), "30.00", 60.0),
            decision("w2", "review", Some("card-w"), "45.10", 70.0),
        ])
        .await
        .unwrap();
    f.store.ingest(&[decision("w1", "review", Some("card-w"), "30.00", 60.0)]).await.unwrap();
    assert_eq!(f.count("SELECT count(*) FROM webhook_outbox").await, 1, "a redelivery opens nothing");
    // The first try is refused (500): nothing delivered, tried again a second later.
    assert_eq!(f.store.deliver_webhook_batch(&sender, 10).await.unwrap(), (0, 1));
    assert_eq!(f.store.deliver_webhook_batch(&sender, 10).await.unwrap(), (0, 0), "not due yet");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(f.store.deliver_webhook_batch(&sender, 10).await.unwrap(), (1, 0));

    // Both verdicts close the case: `case.resolved` for both receivers.
    let claim = f.store.claim_next("ana", &[], LONG).await.unwrap().unwrap();
    f.store.verdict(claim.case, "ana", "w1", Verdict::Fraud).await.unwrap();
    assert_eq!(f.count("SELECT count(*) FROM webhook_outbox").await, 1, "the case is still open");
    f.store.verdict(claim.case, "ana", "w2", Verdict::Genuine).await.unwrap();
    assert_eq!(f.count("SELECT count(*) FROM webhook_outbox WHERE event = 'case.resolved'").await, 2);
    assert_eq!(f.store.deliver_webhook_batch(&sender, 10).await.unwrap(), (1, 1));
    let down = &f
        .sql("SELECT attempts, last_error, delivered_at IS NULL FROM webhook_outbox WHERE endpoint = 'down'")
        .await[0];
    assert_eq!((down.get::<_, i32>(0), down.get::<_, bool>(2)), (1, true));
    assert!(!down.get::<_, String>(1).is_empty());

    let got = got.lock().unwrap().clone();
    assert_eq!(got.len(), 2);
    let path = "/hooks/vigil?source=vigil";
    let got: Vec<(String, String, serde_json::Value)> = got
        .into_iter()
        .map(|(signature, id, event, bytes)| {
            let (client, _) = vigil_core::signature::verify(&signature, b"CRM-secret-value", "POST", path, &bytes)
                .expect("signed with crm's secret over the path and the body as sent");
            assert_eq!(client, "crm");
            (id, event, serde_json::from_slice(&bytes).unwrap())
        })
        .collect();
    for (id, event, body) in &got {
        assert_eq!(body["id"].to_string(), *id);
        assert_eq!(body["event"], event.as_str());
        assert_eq!(body["case"]["id"], claim.case);
        assert_eq!(body["case"]["entity"], serde_json::json!({"kind": "card", "id": "card-w"}));
        let payments = body["case"]["payments"].as_array().unwrap();
        assert_eq!(payments.len(), 2, "the case, not just its id");
        assert_eq!(payments[0]["decision"]["event"]["card_id"], "card-w");
    }
    assert_eq!(got[0].1, "case.opened");
    assert_eq!(got[1].1, "case.resolved");
    assert_eq!(got[1].2["case"]["status"], "closed");
    let verdicts: Vec<&str> =
        got[1].2["case"]["payments"].as_array().unwrap().iter().map(|p| p["resolution"].as_str().unwrap()).collect();
    assert_eq!(verdicts, ["stop", "release"]);
    f.drop_schema().await;
}

#[tokio::test]
async fn identity_provider_logins_make_one_account_per_subject_and_follow_its_role() {
    use vigil_review::Role;
    let f = Fixture::new(ReviewSettings::default(), 2).await;
    let ttl = Duration::from_secs(600);
    let iss = "https://login.example";
    // A login under way is taken once.
    f.store.oidc_begin("state-1", "verifier-1", "nonce-1").await.unwrap();
    assert_eq!(f.store.oidc_take("state-1").await.unwrap(), Some(("verifier-1".into(), "nonce-1".into())));
    assert_eq!(f.store.oidc_take("state-1").await.unwrap(), None, "a state is good for one callback");
    assert_eq!(f.store.oidc_take("forged").await.unwrap(), None);

    let s = f.store.oidc_login(iss, "sub-ana", "ana", Role::Analyst, ttl).await.unwrap();
    assert_eq!((s.user.as_str(), s.role), ("ana", Role::Analyst));
    assert!(f.store.session(&s.token).await.unwrap().is_some());
    // The provider made her a lead: the next login says so; the name stays.
    let s = f.store.oidc_login(iss, "sub-ana", "ana.renamed", Role::Lead, ttl).await.unwrap();
    assert_eq!((s.user.as_str(), s.role), ("ana", Role::Lead));
    // Her account has no password to log in with.
    assert!(matches!(f.store.login("ana", "any password at all", ttl).await, Err(ReviewError::LoginFailed)));
    // A local account's name, or another subject's, is not taken over.
    f.store.add_user("admin", "bo", Role::Analyst, "bo's long password").await.unwrap();
    assert!(matches!(f.store.oidc_login(iss, "sub-bo", "bo", Role::Admin, ttl).await, Err(ReviewError::Invalid(_))));
    assert!(matches!(
        f.store.oidc_login(iss, "sub-other", "ana", Role::Analyst, ttl).await,
        Err(ReviewError::Invalid(_))
    ));
    assert!(matches!(
        f.store.oidc_login(iss, "sub-x", "Not A Name", Role::Analyst, ttl).await,
        Err(ReviewError::Invalid(_))
    ));
    // Disabled: refused, and the provider cannot bring it back.
    f.store.disable_user("admin", "ana").await.unwrap();
    assert!(matches!(f.store.oidc_login(iss, "sub-ana", "ana", Role::Lead, ttl).await, Err(ReviewError::LoginFailed)));
    let actions: Vec<String> =
        f.sql("SELECT action FROM audit_log WHERE actor = 'ana' ORDER BY id").await.iter().map(|r| r.get(0)).collect();
    // Refused: the password, the name another subject wanted, the disabled account.
    assert_eq!(actions, ["add_user", "login", "role_changed", "login", "login_failed", "login_failed", "login_failed"]);
    f.drop_schema().await;
}
