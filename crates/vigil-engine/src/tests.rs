use std::path::PathBuf;
use std::sync::Arc;

use vigil_core::{Action, Event, PipelineConfig};
use vigil_features::{MemoryStore, Plan};

use super::*;
use crate::scoring::strongest;

impl Engine {
    /// One event, online.
    async fn decide_one(&self, event: &Event) -> Result<Decision, EngineError> {
        let mut out = self.decide(&[event], Options::online()).await?;
        Ok(out.remove(0))
    }

    /// A batch, online.
    async fn decide_batch(&self, events: &[&Event]) -> Result<Vec<Decision>, EngineError> {
        self.decide(events, Options::online()).await
    }
}

fn config(rules: &str) -> (PipelineConfig, tempdir::Dir) {
    config_with(rules, "")
}

/// A pipeline of `rules`, a card count over an hour, and the `features`
/// declared after it.
fn config_with(rules: &str, features: &str) -> (PipelineConfig, tempdir::Dir) {
    let dir = tempdir::Dir::new();
    std::fs::write(dir.path.join("r.rules"), rules).unwrap();
    let text = r#"
[rules]
path = "r.rules"
[decision]
review_score = 50
decline_score = 100
[[features]]
name = "card_count_1h"
entity = "card_id"
aggregate = "count"
window = "1h"
"#;
    let c = PipelineConfig::parse(&dir.path.join("p.toml"), &format!("{text}{features}")).unwrap();
    (c, dir)
}

mod tempdir {
    pub struct Dir {
        pub path: std::path::PathBuf,
    }
    impl Dir {
        pub fn new() -> Dir {
            let path = std::env::temp_dir().join(format!(
                "vigil-engine-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            std::fs::create_dir_all(&path).unwrap();
            Dir { path }
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

fn engine(rules: &str) -> (Engine, tempdir::Dir) {
    let (c, dir) = config(rules);
    let store = Arc::new(MemoryStore::new(Plan::new(c.features.clone()), 3600));
    (Engine::new(&c, store).unwrap(), dir)
}

fn ev(id: &str, amount: &str, country: &str) -> Event {
    ev_on(id, amount, country, id)
}

fn ev_on(id: &str, amount: &str, country: &str, card: &str) -> Event {
    Event::from_json(
        format!(r#"{{"transaction_id":"{id}","timestamp":"2026-01-01T10:00:00Z","amount":"{amount}","currency":"EUR","card_id":"{card}","country":"{country}"}}"#)
            .as_bytes(),
    )
    .unwrap()
}

const RULES: &str = r#"
rule big when amount >= 1000 then review BIG score 30
rule huge when amount >= 5000 then decline HUGE
rule trusted when country == "LU" then approve TRUSTED
rule risky_country when country == "XX" then review RISKY score 60
rule watch shadow when amount >= 10 then decline WATCH score 500
rule burst when card_count_1h >= 2 then review BURST score 80
"#;

#[tokio::test]
async fn decision_policy_table() {
    let (e, _dir) = engine(RULES);
    let cases = [
        ("a", "5", "FR", Action::Approve, vec![]),
        ("b", "20", "FR", Action::Approve, vec!["watch"]),
        ("c", "1500", "FR", Action::Review, vec!["big", "watch"]),
        ("d", "6000", "LU", Action::Decline, vec!["huge", "big", "trusted", "watch"]),
        ("e", "1500", "LU", Action::Approve, vec!["trusted", "big", "watch"]),
        // Third event on card `f` this hour: burst (80) + risky (60) = 140 >= 100.
        ("f", "5", "XX", Action::Decline, vec!["risky_country", "burst"]),
    ];
    e.decide_one(&ev_on("f1", "1", "FR", "f")).await.unwrap();
    e.decide_one(&ev_on("f2", "1", "FR", "f")).await.unwrap();
    for (id, amount, country, expected, reasons) in cases {
        let d = e.decide_one(&ev(id, amount, country)).await.unwrap();
        assert_eq!(d.decision, expected, "{id}: {d:?}");
        let names: Vec<&str> = d.reasons.iter().map(|r| r.rule.as_str()).collect();
        assert_eq!(names, reasons, "{id}");
        assert!(d.reasons.iter().filter(|r| r.rule == "watch").all(|r| r.shadow));
        assert_eq!(d.rules_version, e.rules().version());
    }
}

#[tokio::test]
async fn redelivered_event_gets_the_same_decision() {
    let (e, _dir) = engine(RULES);
    let first = e.decide_one(&ev_on("x", "5", "FR", "c")).await.unwrap();
    e.decide_one(&ev_on("y", "5", "FR", "c")).await.unwrap();
    let again = e.decide_one(&ev_on("x", "5", "FR", "c")).await.unwrap();
    assert!(again.replayed);
    assert_eq!((again.decision, &again.features, &again.reasons), (first.decision, &first.features, &first.reasons));
}

#[tokio::test]
async fn a_broken_reload_keeps_the_last_good_rules() {
    let (e, dir) = engine(RULES);
    let before = e.rules().version().to_owned();
    let path = dir.path.join("r.rules");
    std::fs::write(&path, "rule x when amount >> 1 then decline X").unwrap();
    let err = e.reload_rules(&path).unwrap_err().to_string();
    assert!(err.contains("r.rules:1:"), "{err}");
    assert_eq!(e.rules().version(), before);
    std::fs::write(&path, "rule x when amount > 1 then decline X").unwrap();
    let after = e.reload_rules(&path).unwrap();
    assert_ne!(after, before);
    assert_eq!(e.decide_one(&ev("z", "5", "FR")).await.unwrap().decision, Action::Decline);
}

#[test]
fn shipped_pipeline_and_rules_load() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let c = PipelineConfig::load(&root.join("pipelines/demo.toml")).unwrap();
    Engine::in_memory(&c).unwrap();
}

/// A memory store that can be switched off, counting the calls that reach it:
/// the engine's breaker and degraded policy are what is under test here (the
/// real Redis outage is exercised in tests/redis_outage.rs).
struct Switchable {
    inner: MemoryStore,
    down: std::sync::atomic::AtomicBool,
    calls: std::sync::atomic::AtomicU64,
}

#[async_trait::async_trait]
impl FeatureStore for Switchable {
    async fn process(&self, events: &[&Event]) -> Result<Vec<FeatureVector>, FeatureError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Err(FeatureError::Timeout(5));
        }
        self.inner.process(events).await
    }

    async fn apply_labels(
        &self,
        labels: &[&vigil_core::Label],
    ) -> Result<Vec<vigil_features::LabelOutcome>, FeatureError> {
        self.inner.apply_labels(labels).await
    }

    async fn ping(&self) -> Result<(), FeatureError> {
        Ok(())
    }
}

fn engine_with_policy(rules: &str, policy: DegradedPolicy) -> (Engine, Arc<Switchable>, tempdir::Dir) {
    let (mut c, dir) = config(rules);
    c.store.degraded = policy;
    let store = Arc::new(Switchable {
        inner: MemoryStore::new(Plan::new(c.features.clone()), 3600),
        down: false.into(),
        calls: 0.into(),
    });
    (Engine::new(&c, store.clone()).unwrap(), store, dir)
}

/// `[decision] features = "flagged"`: reviews and declines carry every
/// feature, approvals none (and no `features` key in their JSON); what is
/// counted and decided is the same as with every feature carried.
#[tokio::test]
async fn flagged_decisions_alone_carry_the_features_when_the_pipeline_says_so() {
    let (all, _d1) = engine(RULES);
    let (mut c, _d2) = config(RULES);
    c.decision_features = vigil_core::pipeline::DecisionFeatures::Flagged;
    let store = Arc::new(MemoryStore::new(Plan::new(c.features.clone()), 3600));
    let flagged = Engine::new(&c, store).unwrap();
    let events = [ev_on("a", "5", "FR", "f"), ev_on("b", "1500", "FR", "f"), ev_on("c", "6000", "FR", "g")];
    let refs: Vec<&Event> = events.iter().collect();
    let every = all.decide_batch(&refs).await.unwrap();
    let some = flagged.decide_batch(&refs).await.unwrap();
    let actions: Vec<Action> = some.iter().map(|d| d.decision).collect();
    assert_eq!(actions, [Action::Approve, Action::Review, Action::Decline]);
    assert_eq!(actions, every.iter().map(|d| d.decision).collect::<Vec<_>>());
    assert!(some[0].features.is_empty());
    let json: serde_json::Value = serde_json::from_slice(&some[0].to_json()).unwrap();
    assert!(json.get("features").is_none(), "{json}");
    assert_eq!(json["reasons"], serde_json::to_value(&every[0].reasons).unwrap());
    for (s, e) in some.iter().zip(&every).skip(1) {
        assert_eq!(s.features, e.features);
    }
    assert_eq!(some[1].features["card_count_1h"], vigil_core::FeatureValue::Count(1));
    // An approval read back has no features, and says so by their absence.
    let back: Decision = serde_json::from_slice(&some[0].to_json()).unwrap();
    assert!(back.features.is_empty());
}

/// The stream counts a batch and decides it later, on another thread, while
/// it counts the next: the decisions are those of deciding them in turn.
#[tokio::test]
async fn a_batch_gathered_then_finished_later_decides_as_in_one_call() {
    let (whole, _d1) = engine(RULES);
    let (split, _d2) = engine(RULES);
    let first = [ev_on("a", "5", "FR", "f"), ev_on("b", "1500", "XX", "f")];
    let second = [ev_on("c", "5", "XX", "f"), ev_on("a", "5", "FR", "f"), ev_on("d", "6000", "LU", "g")];
    let first_refs: Vec<&Event> = first.iter().collect();
    let second_refs: Vec<&Event> = second.iter().collect();
    let mut expected = whole.decide_batch(&first_refs).await.unwrap();
    expected.extend(whole.decide_batch(&second_refs).await.unwrap());

    let g1 = split.gather(&first_refs, None).await.unwrap();
    let g2 = split.gather(&second_refs, None).await.unwrap();
    let mut got = split.finish(&first_refs, g1).unwrap();
    got.extend(split.finish(&second_refs, g2).unwrap());
    let view = |d: &Decision| (d.transaction_id.clone(), d.decision, d.features.clone(), d.reasons.clone(), d.replayed);
    assert_eq!(got.iter().map(view).collect::<Vec<_>>(), expected.iter().map(view).collect::<Vec<_>>());
    assert!(got[3].replayed, "the redelivered `a` is recognised across the split");
    assert_eq!(got[2].decision, Action::Decline, "the third payment on card f: burst and risky");

    // Gathered features are for their own batch only.
    let g = split.gather(&first_refs, None).await.unwrap();
    let err = split.finish(&second_refs, g).unwrap_err();
    assert!(err.to_string().contains("3 events but 2 gathered"), "{err}");
}

#[tokio::test]
async fn degraded_policies_decide_without_features_and_say_so() {
    let rules = "rule big when amount > 1000 then decline BIG\nrule busy when card_count_1h >= 1 then review BUSY";
    let (review, store, _d1) = engine_with_policy(rules, DegradedPolicy::Review);
    store.down.store(true, Ordering::SeqCst);
    let d = review.decide_one(&ev("a", "10", "FR")).await.unwrap();
    assert!(d.degraded);
    assert_eq!((d.decision, d.reasons[0].code.as_str()), (Action::Review, DEGRADED_CODE));
    assert!(d.features.values().all(|v| *v == FeatureValue::Missing));
    // A rule on the event alone still declines.
    let d = review.decide_one(&ev("b", "5000", "FR")).await.unwrap();
    assert_eq!((d.decision, d.degraded), (Action::Decline, true));

    let (decide, store, _d2) = engine_with_policy(rules, DegradedPolicy::Decide);
    store.down.store(true, Ordering::SeqCst);
    let d = decide.decide_one(&ev("c", "10", "FR")).await.unwrap();
    assert_eq!((d.decision, d.degraded, d.reasons.len()), (Action::Approve, true, 0));
    assert_eq!(decide.store_stats().degraded_decisions.load(Ordering::SeqCst), 1);
    store.down.store(false, Ordering::SeqCst);
    assert!(!decide.decide_one(&ev("d", "10", "FR")).await.unwrap().degraded);

    let (fail, store, _d3) = engine_with_policy(rules, DegradedPolicy::Fail);
    store.down.store(true, Ordering::SeqCst);
    let err = fail.decide_one(&ev("e", "10", "FR")).await.unwrap_err();
    assert!(err.to_string().contains("timed out"), "{err}");
}

#[tokio::test]
async fn the_breaker_stops_calling_a_failing_store_then_tries_again() {
    let (engine, store, _dir) = engine_with_policy("rule big when amount > 1000 then review BIG", DegradedPolicy::Fail);
    store.down.store(true, Ordering::SeqCst);
    for i in 0..breaker::OPEN_AFTER {
        assert!(engine.decide_one(&ev(&format!("x{i}"), "1", "FR")).await.is_err());
    }
    assert!(engine.breaker_open());
    assert_eq!(store.calls.load(Ordering::SeqCst), breaker::OPEN_AFTER);
    // Open: calls fail at once without reaching the store.
    for i in 0..10 {
        let err = engine.decide_one(&ev(&format!("y{i}"), "1", "FR")).await.unwrap_err();
        assert!(err.to_string().contains("circuit breaker open"), "{err}");
    }
    assert_eq!(store.calls.load(Ordering::SeqCst), breaker::OPEN_AFTER);
    let stats = engine.store_stats();
    assert_eq!(stats.breaker_opened.load(Ordering::SeqCst), 1);
    assert_eq!(stats.short_circuited.load(Ordering::SeqCst), 10);
    assert_eq!(stats.timeouts.load(Ordering::SeqCst), breaker::OPEN_AFTER);
    // After the cool-down one trial goes through; the store is back, so it closes.
    store.down.store(false, Ordering::SeqCst);
    tokio::time::sleep(breaker::COOL_DOWN + std::time::Duration::from_millis(50)).await;
    assert!(engine.decide_one(&ev("z", "1", "FR")).await.is_ok());
    assert!(!engine.breaker_open());
    assert_eq!(store.calls.load(Ordering::SeqCst), breaker::OPEN_AFTER + 1);
}

#[tokio::test]
async fn model_decisions_name_their_strongest_inputs_and_a_swap_keeps_the_last_good_model() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let c = PipelineConfig::load(&root.join("pipelines/demo.toml")).unwrap();
    let engine = Engine::in_memory(&c).unwrap();
    let gen = vigil_gen::GenConfig { events: 3_000, cards: 200, merchants: 30, days: 3, ..Default::default() };
    let events: Vec<Event> = vigil_gen::generate(&gen).into_iter().map(|l| l.event).collect();
    let refs: Vec<&Event> = events.iter().collect();
    let decisions = engine.decide_batch(&refs).await.unwrap();
    let shipped = decisions[0].model_version.clone().expect("the demo pipeline has a model");
    let inputs = model_inputs(&c.features);
    let (mut explained, mut lowered) = (0, 0);
    for d in &decisions {
        assert!(d.model_factors.len() <= MODEL_FACTORS);
        let size = |f: &vigil_core::ModelFactor| f.contribution.abs();
        assert!(d.model_factors.windows(2).all(|w| size(&w[0]) >= size(&w[1])), "{d:?}");
        for f in &d.model_factors {
            assert!(f.contribution != 0.0 && inputs.contains(&f.input.as_str()), "{f:?}");
        }
        // Measured against a stated baseline, and signed: what lowered a score
        // shows too, and with the rest they add up to the score.
        let baseline = d.model_baseline.expect("a logistic regression states its baseline");
        let logit = |p: f64| (p / (1.0 - p)).ln();
        let sum = d.model_factors.iter().map(|f| f.contribution).sum::<f64>() + d.model_factors_rest.unwrap();
        let score = d.model_score.unwrap();
        if score > 1e-12 && score < 1.0 - 1e-12 {
            assert!((logit(baseline) + sum - logit(score)).abs() < 1e-3 * (1.0 + sum.abs()), "{d:?}");
        }
        lowered += usize::from(d.model_factors.iter().any(|f| f.contribution < 0.0));
        explained += usize::from(d.model_score.unwrap() > 0.5 && !d.model_factors.is_empty());
    }
    assert!(explained > 0, "some high scores are explained");
    assert!(lowered > 0, "some decisions name an input that lowered the score");

    // A corrupt file is refused and the shipped model keeps deciding.
    let dir = std::env::temp_dir().join(format!("vigil-engine-model-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let corrupt = dir.join("corrupt.json");
    let text = std::fs::read_to_string(root.join("models/card-fraud.json")).unwrap();
    std::fs::write(&corrupt, text.replacen("\"intercept\": ", "\"intercept\": 1", 1)).unwrap();
    assert!(engine.reload_model(&corrupt).is_err());
    assert_eq!(engine.decide_batch(&refs[..1]).await.unwrap()[0].model_version.as_deref(), Some(shipped.as_str()));
    // A valid new file changes the version on later decisions.
    let model = vigil_model::load(&root.join("models/card-fraud.json"), &inputs).unwrap();
    let renamed =
        vigil_model::TrainedModel::new(vigil_model::ModelBody { name: "renamed".into(), ..model.body().clone() })
            .unwrap();
    let next = dir.join("next.json");
    std::fs::write(&next, renamed.to_file_json()).unwrap();
    let version = engine.reload_model(&next).unwrap();
    assert!(version.starts_with("renamed@"), "{version}");
    let later = engine.decide_batch(&refs[1..2]).await.unwrap();
    assert_eq!(later[0].model_version.as_deref(), Some(version.as_str()));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn strongest_keeps_the_largest_parts_in_size_in_order() {
    let mut state = 11u64;
    for round in 0..500 {
        let parts: Vec<f64> = (0..(round % 30))
            .map(|_| {
                state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                ((state >> 40) as f64 / (1u64 << 24) as f64) - 0.5
            })
            .collect();
        let mut want: Vec<(usize, f64)> = parts.iter().copied().enumerate().filter(|(_, c)| *c != 0.0).collect();
        want.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()));
        want.truncate(MODEL_FACTORS);
        let (top, n) = strongest(|visit| parts.iter().enumerate().for_each(|(i, c)| visit(i, *c)));
        assert_eq!(top[..n], want[..], "{parts:?}");
    }
}

#[tokio::test]
async fn a_challenger_is_scored_and_reported_on_every_decision_and_never_decides() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut c = PipelineConfig::load(&root.join("pipelines/demo.toml")).unwrap();
    let inputs = model_inputs(&c.features);
    // The champion is the shipped logistic regression.
    c.model.as_mut().unwrap().path = root.join("models/card-fraud.json");
    let shipped = vigil_model::load(&root.join("models/card-fraud.json"), &inputs).unwrap();
    // A challenger that scores every event higher than the champion.
    let mut body = vigil_model::ModelBody { name: "challenger".into(), ..shipped.body().clone() };
    let vigil_model::Algorithm::Logistic(logistic) = &mut body.algorithm else { panic!("a logistic regression") };
    logistic.intercept += 4.0;
    let dir = std::env::temp_dir().join(format!("vigil-engine-challenger-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("challenger.json");
    std::fs::write(&path, vigil_model::TrainedModel::new(body).unwrap().to_file_json()).unwrap();
    let champion_only = Engine::in_memory(&c).unwrap();
    c.model.as_mut().unwrap().challenger = Some(path.clone());
    let engine = Engine::in_memory(&c).unwrap();
    let gen = vigil_gen::GenConfig { events: 2_000, cards: 200, merchants: 30, days: 3, ..Default::default() };
    let events: Vec<Event> = vigil_gen::generate(&gen).into_iter().map(|l| l.event).collect();
    let refs: Vec<&Event> = events.iter().collect();
    let with = engine.decide_batch(&refs).await.unwrap();
    let without = champion_only.decide_batch(&refs).await.unwrap();
    let mut stricter = 0;
    for (a, b) in with.iter().zip(&without) {
        // The champion's decision is untouched by the challenger.
        assert_eq!((a.decision, a.score, a.model_score), (b.decision, b.score, b.model_score));
        assert!(b.challenger.is_none());
        let ch = a.challenger.as_ref().expect("every decision carries the challenger");
        assert!(ch.model_version.starts_with("challenger@") && ch.score >= a.model_score.unwrap(), "{a:?}");
        assert!(ch.decision >= a.decision, "a higher score never loosens the decision: {a:?}");
        stricter += usize::from(ch.decision > a.decision);
    }
    assert!(stricter > 0, "the challenger's higher scores change some would-be decisions");
    // A refused challenger file keeps the last good challenger.
    std::fs::write(&path, "{").unwrap();
    assert!(engine.reload_challenger(&path).is_err());
    assert!(engine.challenger_version().unwrap().starts_with("challenger@"));
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn a_text_feature_reaches_rules_and_decisions_but_not_the_model() {
    let previous = "[[features]]\nname = \"card_previous_country\"\nentity = \"card_id\"\naggregate = \"previous\"\nof = \"country\"\nwindow = \"1h\"\n";
    let rules = "rule moved when card_previous_country != country then review MOVED score 60\n";
    let (c, _dir) = config_with(rules, previous);
    assert_eq!(model_inputs(&c.features), ["amount", "card_count_1h"], "text is not a model input");
    let store = Arc::new(MemoryStore::new(Plan::new(c.features.clone()), 3600));
    let engine = Engine::new(&c, store).unwrap();
    let (a, b) = (ev_on("a", "10", "FR", "c1"), ev_on("b", "10", "DE", "c1"));
    let decisions = engine.decide_batch(&[&a, &b]).await.unwrap();
    assert_eq!(decisions[0].features["card_previous_country"], FeatureValue::Missing);
    assert_eq!(decisions[1].features["card_previous_country"], FeatureValue::Text("FR".into()));
    assert_eq!(decisions[1].decision, Action::Review, "{:?}", decisions[1]);
    let json = serde_json::to_value(&decisions[1]).unwrap();
    assert_eq!(json["features"]["card_previous_country"], "FR");
}
