use std::path::{Path, PathBuf};

use super::*;
use crate::event::EventField;
use crate::feature::Aggregate;

const GOOD: &str = r#"
name = "test"
[kafka]
brokers = "127.0.0.1:9092"
group_id = "g"
input_topic = "in"
decisions_topic = "out"
dead_letter_topic = "dlq"
[store]
backend = "redis"
redis_url = "redis://127.0.0.1:6379"
[rules]
path = "../rules"
[decision]
review_score = 40
decline_score = 80
[[features]]
name = "card_count_10m"
entity = "card_id"
aggregate = "count"
window = "10m"
"#;

#[test]
fn good_config_validates() {
    let c = PipelineConfig::parse(Path::new("pipelines/x.toml"), GOOD).unwrap();
    assert_eq!(c.rules_path, PathBuf::from("pipelines/../rules"));
    assert_eq!(c.features[0].window_s, 600);
    assert_eq!(c.kafka.unwrap().batch_size, 500);
    assert_eq!(c.store.backend, StoreBackend::Redis { url: "redis://127.0.0.1:6379".into() });
}

#[test]
fn a_redis_cluster_is_named_by_its_seed_nodes() {
    let cluster = GOOD.replace(
        "backend = \"redis\"\nredis_url = \"redis://127.0.0.1:6379\"",
        "backend = \"redis-cluster\"\nredis_nodes = [\"redis://10.0.0.1:6379\", \"redis://10.0.0.2:6379\"]",
    );
    let c = PipelineConfig::parse(Path::new("p.toml"), &cluster).unwrap();
    let nodes = vec!["redis://10.0.0.1:6379".to_string(), "redis://10.0.0.2:6379".to_string()];
    assert_eq!(c.store.backend, StoreBackend::RedisCluster { nodes });
    let problems = |text: &str| match PipelineConfig::parse(Path::new("p.toml"), text) {
        Err(ConfigError::Invalid { problems }) => problems.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    let bad = problems(&cluster.replace("redis://10.0.0.2", "10.0.0.2"));
    assert!(bad.iter().any(|p| p.contains("store.redis_nodes") && p.contains("redis://")), "{bad:?}");
    let empty = problems(
        &cluster.replace("redis_nodes = [\"redis://10.0.0.1:6379\", \"redis://10.0.0.2:6379\"]", "redis_nodes = []"),
    );
    assert!(empty.iter().any(|p| p.contains("at least one node")), "{empty:?}");
    let mixed = problems(&GOOD.replace("redis_url =", "redis_nodes = [\"redis://a:1\"]\nredis_url ="));
    assert!(mixed.iter().any(|p| p.contains("only the redis-cluster backend")), "{mixed:?}");
    let typo = problems(&GOOD.replace("backend = \"redis\"", "backend = \"redis-clutser\""));
    assert!(typo.iter().any(|p| p.contains("did you mean `redis-cluster`")), "{typo:?}");
}

#[test]
fn degraded_policy_is_checked() {
    let c =
        PipelineConfig::parse(Path::new("x.toml"), &GOOD.replace("[rules]", "degraded = \"review\"\n[rules]")).unwrap();
    assert_eq!(c.store.degraded, DegradedPolicy::Review);
    let text = PipelineConfig::parse(Path::new("x.toml"), &GOOD.replace("[rules]", "degraded = \"reveiw\"\n[rules]"))
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("store.degraded: unknown policy `reveiw`") && text.contains("did you mean `review`?"),
        "{text}"
    );
}

#[test]
fn which_decisions_carry_the_features_is_checked() {
    let parse = |decision: &str| {
        let text = GOOD.replace("[decision]\nreview_score = 40\ndecline_score = 80\n", decision);
        PipelineConfig::parse(Path::new("x.toml"), &text)
    };
    let c = parse("").unwrap();
    assert_eq!((c.decision_features, c.thresholds), (DecisionFeatures::All, Thresholds::default()));
    // Either threshold may be left to its default.
    let c = parse("[decision]\nfeatures = \"flagged\"\nreview_score = 30\n").unwrap();
    assert_eq!(c.decision_features, DecisionFeatures::Flagged);
    assert_eq!(c.thresholds, Thresholds { review_score: 30.0, decline_score: 100.0 });
    assert!(DecisionFeatures::Flagged.carried_by(crate::Action::Review));
    assert!(DecisionFeatures::Flagged.carried_by(crate::Action::Decline));
    assert!(!DecisionFeatures::Flagged.carried_by(crate::Action::Approve));
    let text = parse("[decision]\nfeatures = \"flaged\"\n").unwrap_err().to_string();
    assert!(
        text.contains("x.toml:15:12: decision.features: unknown choice `flaged` (known: all, flagged)")
            && text.contains("did you mean `flagged`?"),
        "{text}"
    );
    // A default threshold is still checked against the one the file sets.
    let text = parse("[decision]\nreview_score = 120\n").unwrap_err().to_string();
    assert!(text.contains("decision.review_score: 120 is above the default decline_score 100"), "{text}");
}

#[test]
fn breaker_settings_are_read_and_checked() {
    let c = PipelineConfig::parse(Path::new("x.toml"), GOOD).unwrap();
    assert_eq!((c.store.breaker_failures, c.store.breaker_cool_down_ms), (5, 2000));
    let with = |extra: &str| GOOD.replace("[rules]", &format!("{extra}\n[rules]"));
    let c =
        PipelineConfig::parse(Path::new("x.toml"), &with("breaker_failures = 3\nbreaker_cool_down = \"30s\"")).unwrap();
    assert_eq!((c.store.breaker_failures, c.store.breaker_cool_down_ms), (3, 30_000));
    let text = PipelineConfig::parse(Path::new("x.toml"), &with("breaker_failures = 0\nbreaker_cool_down = \"1h\""))
        .unwrap_err()
        .to_string();
    assert!(text.contains("store.breaker_failures: must be between 1 and 1000"), "{text}");
    assert!(text.contains("store.breaker_cool_down: must be between 1s and 10m"), "{text}");
}

#[test]
fn the_store_mode_is_read_and_checked() {
    let with = |extra: &str| GOOD.replace("[rules]", &format!("{extra}\n[rules]"));
    assert_eq!(PipelineConfig::parse(Path::new("x.toml"), GOOD).unwrap().store.mode, StoreMode::Shared);
    let c = PipelineConfig::parse(Path::new("x.toml"), &with("mode = \"owned\"")).unwrap();
    assert_eq!(c.store.mode, StoreMode::Owned { snapshot_events: 100_000, snapshot_interval_s: 60 });
    let c = PipelineConfig::parse(
        Path::new("x.toml"),
        &with("mode = \"owned\"\nsnapshot_events = 5000\nsnapshot_interval = \"10s\""),
    )
    .unwrap();
    assert_eq!(c.store.mode, StoreMode::Owned { snapshot_events: 5000, snapshot_interval_s: 10 });
    let problems = |text: &str| PipelineConfig::parse(Path::new("x.toml"), text).unwrap_err().to_string();
    let text = problems(&with("mode = \"ownd\""));
    assert!(text.contains("store.mode: unknown mode `ownd`") && text.contains("did you mean `owned`?"), "{text}");
    let text = problems(&with("snapshot_events = 5000"));
    assert!(text.contains("only mode = \"owned\" takes snapshot_events"), "{text}");
    let text = problems(&with("mode = \"owned\"\nsnapshot_interval = \"2h\""));
    assert!(text.contains("store.snapshot_interval: must be between 1s and 1h"), "{text}");
    let memory = GOOD.replace("backend = \"redis\"\nredis_url = \"redis://127.0.0.1:6379\"", "backend = \"memory\"");
    let text = problems(&memory.replace("[rules]", "mode = \"owned\"\n[rules]"));
    assert!(text.contains("the memory backend is already owned by its process"), "{text}");
}

#[test]
fn distinct_features_name_the_field_they_count() {
    let with = |extra: &str| format!("{GOOD}{extra}");
    let good = with("[[features]]\nname = \"card_merchants_24h\"\nentity = \"card_id\"\naggregate = \"distinct\"\nof = \"merchant_id\"\nwindow = \"24h\"\n");
    let c = PipelineConfig::parse(Path::new("x.toml"), &good).unwrap();
    assert_eq!((c.features[1].aggregate, c.features[1].of), (Aggregate::Distinct, Some(EventField::MerchantId)));
    let bad = with(
        "[[features]]\nname = \"a\"\nentity = \"card_id\"\naggregate = \"distinct\"\nwindow = \"24h\"\n\
         [[features]]\nname = \"b\"\nentity = \"card_id\"\naggregate = \"count\"\nof = \"ip\"\nwindow = \"24h\"\n\
         [[features]]\nname = \"c\"\nentity = \"card_id\"\naggregate = \"distinct\"\nof = \"merchnt_id\"\nwindow = \"24h\"\n\
         [[features]]\nname = \"d\"\nentity = \"card_id\"\naggregate = \"changed\"\nwindow = \"24h\"\n\
         [[features]]\nname = \"e\"\nentity = \"card_id\"\naggregate = \"changed\"\nof = \"amount\"\nwindow = \"24h\"\n",
    );
    let text = PipelineConfig::parse(Path::new("x.toml"), &bad).unwrap_err().to_string();
    assert!(text.contains("features[1].of: `distinct` needs `of`"), "{text}");
    assert!(text.contains("features[4].of: `changed` needs `of`"), "{text}");
    assert!(text.contains("features[5].of: `changed` reads text fields, not amount or timestamp"), "{text}");
    let changed = with("[[features]]\nname = \"country_changed\"\nentity = \"card_id\"\naggregate = \"changed\"\nof = \"country\"\nwindow = \"30d\"\n");
    let c = PipelineConfig::parse(Path::new("x.toml"), &changed).unwrap();
    assert_eq!((c.features[1].aggregate, c.features[1].of), (Aggregate::Changed, Some(EventField::Country)));
    let previous = with("[[features]]\nname = \"previous_country\"\nentity = \"card_id\"\naggregate = \"previous\"\nof = \"country\"\nwindow = \"30d\"\n");
    let c = PipelineConfig::parse(Path::new("x.toml"), &previous).unwrap();
    assert_eq!((c.features[1].aggregate, c.features[1].of), (Aggregate::Previous, Some(EventField::Country)));
    let amount = with("[[features]]\nname = \"p\"\nentity = \"card_id\"\naggregate = \"previous\"\nof = \"amount\"\nwindow = \"30d\"\n");
    let err = PipelineConfig::parse(Path::new("x.toml"), &amount).unwrap_err().to_string();
    assert!(err.contains("features[1].of: `previous` reads text fields, not amount or timestamp; the previous amount is `previous_amount`"), "{err}");
    assert!(text.contains("features[2].of: only `distinct`, `changed` and `previous` take `of`"), "{text}");
    assert!(text.contains("features[3].of: unknown field `merchnt_id`; did you mean `merchant_id`?"), "{text}");
}

#[test]
fn every_problem_is_reported_with_its_place() {
    let bad = GOOD
        .replace("window = \"10m\"", "window = \"10x\"")
        .replace("aggregate = \"count\"", "aggregate = \"cuont\"")
        .replace("decline_score = 80", "decline_score = 20")
        .replace("redis://127", "http://127");
    let Err(ConfigError::Invalid { problems }) = PipelineConfig::parse(Path::new("p.toml"), &bad) else {
        panic!("accepted a bad config")
    };
    let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    assert_eq!(problems.len(), 4, "{text:#?}");
    assert!(text.iter().any(|t| t.starts_with("p.toml:11:13: store.redis_url")), "{text:#?}");
    assert!(text.iter().any(|t| t.contains("features[0].aggregate") && t.contains("did you mean `count`")));
    assert!(text.iter().any(|t| t.contains("features[0].window") && t.contains("unknown unit")));
    assert!(text.iter().any(|t| t.contains("decision.decline_score")));
}

#[test]
fn api_sections_are_checked() {
    let with = |api: &str| format!("{GOOD}\n{api}");
    let good = with(
        "[api]\nlisten = \"0.0.0.0:9000\"\ndeadline_ms = 5\n[[api.clients]]\nid = \"shop\"\n\
         secrets_env = [\"A\", \"B\"]\n[api.jwt]\nalgorithm = \"RS256\"\npublic_key_file = \"keys/pub.pem\"\n",
    );
    let api = PipelineConfig::parse(Path::new("pipelines/x.toml"), &good).unwrap().api.unwrap();
    assert_eq!((api.listen.as_str(), api.deadline_ms, api.signature_tolerance_s), ("0.0.0.0:9000", 5, 120));
    assert_eq!(api.clients[0].secrets, [SecretSource::Env("A".into()), SecretSource::Env("B".into())]);
    assert_eq!(api.jwt.unwrap().public_key_file, Some(PathBuf::from("pipelines/keys/pub.pem")));
    assert_eq!((api.metrics_token, api.tls), (None, None));
    let token =
        PipelineConfig::parse(Path::new("p.toml"), &good.replace("deadline_ms = 5", "metrics_token_env = \"M\""));
    assert_eq!(token.unwrap().api.unwrap().metrics_token, Some(SecretSource::Env("M".into())));

    let bad = with(
        "[api]\nlisten = \"localhost\"\nmax_concurrency = 0\nsignature_tolerance = \"2d\"\n\
         metrics_token = \"short\"\n\
         [[api.clients]]\nid = \"a b\"\nsecrets = [\"short\"]\n\
         [[api.clients]]\nid = \"x\"\nsecrets_env = [\"A\", \"B\", \"C\"]\n\
         [api.jwt]\nalgorithm = \"HS512\"\n\
         [api.tls]\ncert_file = \"no/such/cert.pem\"\nkey_file = \"no/such/key.pem\"\n",
    );
    let text = PipelineConfig::parse(Path::new("p.toml"), &bad).unwrap_err().to_string();
    for expected in [
        "api.listen: must be an address and port",
        "api.max_concurrency: must be between 1 and",
        "api.signature_tolerance: must be between 1s and 1h",
        "api.clients[0].id: must be letters",
        "api.clients[0].secrets: a secret must be at least 16 bytes",
        "api.clients[1].secrets_env: needs one or two secrets",
        "api.jwt.algorithm: unknown algorithm `HS512`",
        "api.metrics_token: a token must be at least 16 bytes",
        "api.tls.cert_file: no such file: no/such/cert.pem",
        "api.tls.key_file: no such file: no/such/key.pem",
    ] {
        assert!(text.contains(expected), "no `{expected}` in\n{text}");
    }
    let none = PipelineConfig::parse(Path::new("p.toml"), &with("[api]\n")).unwrap_err().to_string();
    assert!(none.contains("api: declares no way in"), "{none}");
}

#[test]
fn a_challenger_model_resolves_beside_the_champion() {
    let with = |model: &str| format!("{GOOD}\n[model]\npath = \"../models/a.json\"\n{model}");
    let c = PipelineConfig::parse(Path::new("pipelines/x.toml"), &with("challenger = \"../models/b.json\"\n")).unwrap();
    let m = c.model.unwrap();
    assert_eq!((m.weight, m.challenger), (100.0, Some(PathBuf::from("pipelines/../models/b.json"))));
    let none = PipelineConfig::parse(Path::new("p.toml"), &with("")).unwrap();
    assert_eq!(none.model.unwrap().challenger, None);
    let err = PipelineConfig::parse(Path::new("p.toml"), &with("challenger = \" \"\n")).unwrap_err().to_string();
    assert!(err.contains("model.challenger: must not be empty"), "{err}");
}

#[test]
fn syntax_and_unknown_keys_are_located() {
    let bad = GOOD.replace("group_id", "group");
    let err = PipelineConfig::parse(Path::new("p.toml"), &bad).unwrap_err().to_string();
    assert!(err.starts_with("p.toml:5:1:") && err.contains("unknown field `group`"), "{err}");
}

#[test]
fn unknown_keys_are_reported_with_the_other_problems() {
    let bad = GOOD
        .replace("window = \"10m\"", "windw = \"10m\"\nwindow = \"10 minutes\"")
        .replace("aggregate = \"count\"", "aggregate = \"cuont\"")
        .replace("[decision]", "[decisions]")
        .replace("group_id = \"g\"", "group_id = \"g\"\nbatch = [\n  1,\n  2,\n]");
    let Err(ConfigError::Invalid { problems }) = PipelineConfig::parse(Path::new("p.toml"), &bad) else {
        panic!("the config validated")
    };
    let shown: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    let joined = shown.join("\n");
    // Every problem at once: three unknown keys (one a multi-line value, one
    // a whole table), a misspelt aggregate and a bad window.
    assert_eq!(shown.len(), 5, "{joined}");
    assert!(joined.contains("p.toml:6:1: kafka.batch: unknown field `batch`; did you mean `batch_size`?"), "{joined}");
    assert!(joined.contains("p.toml:18:2: decisions: unknown field `decisions`; did you mean `decision`?"), "{joined}");
    assert!(
        joined.contains("p.toml:25:1: features[0].windw: unknown field `windw`; did you mean `window`?"),
        "{joined}"
    );
    assert!(joined.contains("(known here: name, entity, aggregate, window, of, delay, time_zone)"), "{joined}");
    assert!(joined.contains("features[0].aggregate: unknown aggregate `cuont`"), "{joined}");
    assert!(joined.contains("features[0].window"), "{joined}");
}

#[test]
fn matured_windows_and_event_time_features_are_read_and_checked() {
    let with = |extra: &str| format!("{GOOD}{extra}");
    let good = with(
        r#"
[[features]]
name = "terminal_rate_7d_matured"
entity = "terminal_id"
aggregate = "fraud_rate"
window = "7d"
delay = "7d"
[[features]]
name = "hour"
aggregate = "hour_of_day"
time_zone = "Europe/Paris"
[[features]]
name = "weekend"
aggregate = "weekend"
"#,
    );
    let c = PipelineConfig::parse(Path::new("p.toml"), &good).unwrap();
    assert_eq!((c.features[1].window_s, c.features[1].delay_s), (7 * 86_400, 7 * 86_400));
    assert_eq!(c.features[2].aggregate, Aggregate::HourOfDay);
    assert_eq!(c.features[2].time_zone, chrono_tz::Tz::Europe__Paris);
    assert_eq!(c.features[3].time_zone, chrono_tz::Tz::UTC);
    assert!(c.features[2].entity.fields().is_empty());
    let problems = |text: &str| match PipelineConfig::parse(Path::new("p.toml"), text) {
        Err(ConfigError::Invalid { problems }) => problems.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    let bad = problems(&with(
        r#"
[[features]]
name = "since"
entity = "card_id"
aggregate = "time_since_last"
window = "1h"
delay = "1h"
[[features]]
name = "far"
entity = "card_id"
aggregate = "count"
window = "60d"
delay = "31d"
[[features]]
name = "hour"
entity = "card_id"
aggregate = "hour_of_day"
time_zone = "Europe/Pariss"
[[features]]
name = "nowhere"
aggregate = "count"
[[features]]
name = "zoned"
entity = "card_id"
aggregate = "count"
window = "1h"
time_zone = "UTC"
"#,
    ));
    let has = |key: &str, text: &str| bad.iter().any(|p| p.contains(key) && p.contains(text));
    assert!(has("features[1].delay", "`time_since_last` takes no delay"), "{bad:?}");
    assert!(has("features[2].delay", "90d"), "{bad:?}");
    assert!(has("features[3].entity", "leave `entity` out"), "{bad:?}");
    assert!(has("features[3].time_zone", "did you mean `Europe/Paris`"), "{bad:?}");
    assert!(has("features[4].entity", "is required"), "{bad:?}");
    assert!(has("features[4].window", "is required"), "{bad:?}");
    assert!(has("features[5].time_zone", "only event-time features"), "{bad:?}");
}

#[test]
fn the_review_section_names_its_queues_and_its_policy() {
    let text = format!(
        "{GOOD}\n[review]\nentity = \"account\"\nhold = \"20m\"\non_deadline = \"stop\"\nfour_eyes_above = \"5000.00\"\n\
         four_eyes_release_of_decline = true\n\n[[review.queues]]\nname = \"velocity\"\npriority = 10\n\
         reasons = [\"CARD_VELOCITY_10M\"]\n\n[[review.queues]]\nname = \"big\"\npriority = 50\n\
         when = 'amount >= 1000'\nmin_score = 60\n\n[[review.queues]]\nname = \"multi\"\npriority = 5\n\
         when = '''\namount > 1 and\n  country == \"FR\"'''\n"
    );
    let c = PipelineConfig::parse(Path::new("p.toml"), &text).unwrap();
    let r = &c.review;
    assert_eq!((r.entity, r.hold_s, r.on_deadline), (CaseEntity::Account, 1200, HoldAction::Stop));
    assert_eq!(r.four_eyes_above, Some(rust_decimal::Decimal::new(500000, 2)));
    assert!(r.four_eyes_release_of_decline);
    let names: Vec<&str> = r.queues.iter().map(|q| q.name.as_str()).collect();
    assert_eq!(names, ["big", "velocity", "multi"], "highest priority first");
    // The place of the condition's first character, for the rule checker's errors.
    let big = r.queues[0].when.as_ref().unwrap();
    let line = text.lines().position(|l| l.starts_with("when = 'amount")).unwrap() + 1;
    assert_eq!((big.line, big.column, big.text.as_str()), (line, 9, "amount >= 1000"));
    let multi = r.queues[2].when.as_ref().unwrap();
    let line = text.lines().position(|l| l == "amount > 1 and").unwrap() + 1;
    assert_eq!((multi.line, multi.column), (line, 1));
    // Absent, the section has its defaults.
    let c = PipelineConfig::parse(Path::new("p.toml"), GOOD).unwrap();
    assert_eq!(c.review, ReviewConfig::default());
}

#[test]
fn a_bad_review_section_is_refused_with_every_problem_placed() {
    let problems = |extra: &str| match PipelineConfig::parse(Path::new("p.toml"), &format!("{GOOD}\n{extra}")) {
        Err(ConfigError::Invalid { problems }) => problems.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        other => panic!("{extra}: {other:?}"),
    };
    let bad = problems(
        "[review]\nentity = \"crad\"\nhold = \"8d\"\non_deadline = \"capture\"\nfour_eyes_above = \"lots\"\n\
         [[review.queues]]\nname = \"default\"\npriority = 0\n[[review.queues]]\nname = \"a\"\npriority = 1\n\
         when = ' '\n[[review.queues]]\nname = \"a\"\npriority = 2\n",
    );
    let has = |key: &str, words: &str| bad.iter().any(|p| p.contains(key) && p.contains(words));
    assert!(has("review.entity", "did you mean `card`"), "{bad:?}");
    assert!(has("review.hold", "authorisation window"), "{bad:?}");
    assert!(has("review.on_deadline", "neither release nor stop"), "{bad:?}");
    assert!(has("review.four_eyes_above", "not an amount"), "{bad:?}");
    assert!(has("review.queues[0].name", "match no other"), "{bad:?}");
    assert!(has("review.queues[0].priority", "between 1 and 1000"), "{bad:?}");
    assert!(has("review.queues[1].when", "must not be empty"), "{bad:?}");
    assert!(has("review.queues[2].name", "declared twice"), "{bad:?}");
    assert!(bad.iter().all(|p| p.starts_with("p.toml:")), "{bad:?}");
    let unknown = problems("[review]\nhold_for = \"10m\"\n");
    assert!(unknown.iter().any(|p| p.contains("hold_for")), "{unknown:?}");
}

#[test]
fn webhooks_are_read_with_their_events_and_refused_with_their_places() {
    use super::review::{WebhookDef, WebhookEvent};
    let text = format!(
        "{GOOD}\n[review]\n[[review.webhooks]]\nname = \"crm\"\nurl = \"https://crm.example/hooks/vigil?x=1\"\n\
         secret_env = \"CRM_SECRET\"\n[[review.webhooks]]\nname = \"slack\"\nurl = \"http://127.0.0.1:9000/\"\n\
         secret_env = \"SLACK_SECRET\"\nevents = [\"case.resolved\"]\n"
    );
    let c = PipelineConfig::parse(Path::new("p.toml"), &text).unwrap();
    assert_eq!(
        c.review.webhooks,
        [
            WebhookDef {
                name: "crm".into(),
                url: "https://crm.example/hooks/vigil?x=1".into(),
                secret_env: "CRM_SECRET".into(),
                events: vec![WebhookEvent::CaseOpened, WebhookEvent::CaseResolved],
            },
            WebhookDef {
                name: "slack".into(),
                url: "http://127.0.0.1:9000/".into(),
                secret_env: "SLACK_SECRET".into(),
                events: vec![WebhookEvent::CaseResolved],
            },
        ]
    );
    let bad = match PipelineConfig::parse(
        Path::new("p.toml"),
        &format!(
            "{GOOD}\n[review]\n[[review.webhooks]]\nname = \"Crm\"\nurl = \"ftp://x\"\nsecret_env = \"\"\n\
             events = [\"case.closed\"]\n[[review.webhooks]]\nname = \"b\"\nurl = \"https:///x\"\nsecret_env = \"B\"\n\
             events = []\n[[review.webhooks]]\nname = \"b\"\nurl = \"http://h\"\nsecret_env = \"B\"\n"
        ),
    ) {
        Err(ConfigError::Invalid { problems }) => problems.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    let has = |key: &str, words: &str| bad.iter().any(|p| p.contains(key) && p.contains(words));
    assert!(has("review.webhooks[0].name", "lower-case"), "{bad:?}");
    assert!(has("review.webhooks[0].url", "not an http:// or https:// address"), "{bad:?}");
    assert!(has("review.webhooks[0].secret_env", "environment variable"), "{bad:?}");
    assert!(has("review.webhooks[0].events", "unknown event `case.closed`"), "{bad:?}");
    assert!(has("review.webhooks[1].url", "names no host"), "{bad:?}");
    assert!(has("review.webhooks[1].events", "at least one event"), "{bad:?}");
    assert!(has("review.webhooks[2].name", "declared twice"), "{bad:?}");
}

#[test]
fn an_oidc_section_is_read_with_its_role_map_and_refused_with_its_places() {
    let text = format!(
        "{GOOD}\n[review.oidc]\nissuer = \"https://login.example.com/realms/risk/\"\nclient_id = \"vigil-review\"\n\
         client_secret_env = \"VIGIL_OIDC_SECRET\"\nredirect_url = \"https://review.example.com/review/oidc/callback\"\n\
         role_claim = \"groups\"\n[review.oidc.roles]\nlead = [\"fraud-leads\"]\nanalyst = [\"fraud-analysts\", \"ops\"]\n"
    );
    let c = PipelineConfig::parse(Path::new("p.toml"), &text).unwrap();
    let o = c.review.oidc.unwrap();
    assert_eq!(o.issuer, "https://login.example.com/realms/risk");
    assert_eq!((o.role_claim.as_str(), o.name_claim.as_str()), ("groups", "preferred_username"));
    assert_eq!(
        o.roles,
        [
            ("lead".to_owned(), vec!["fraud-leads".to_owned()]),
            ("analyst".to_owned(), vec!["fraud-analysts".into(), "ops".into()])
        ],
        "highest role first"
    );
    let bad = match PipelineConfig::parse(
        Path::new("p.toml"),
        &format!(
            "{GOOD}\n[review.oidc]\nissuer = \"login.example.com\"\nclient_id = \"\"\nclient_secret_env = \"\"\n\
             redirect_url = \"https://review.example.com/callback\"\n[review.oidc.roles]\nboss = [\"x\"]\nlead = []\n"
        ),
    ) {
        Err(ConfigError::Invalid { problems }) => problems.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    let has = |key: &str, words: &str| bad.iter().any(|p| p.contains(key) && p.contains(words));
    assert!(has("review.oidc.issuer", "not an http:// or https:// address"), "{bad:?}");
    assert!(has("review.oidc.redirect_url", "/review/oidc/callback"), "{bad:?}");
    assert!(has("review.oidc.client_id", "must not be empty"), "{bad:?}");
    assert!(has("review.oidc.client_secret_env", "environment variable"), "{bad:?}");
    assert!(has("review.oidc.roles", "`boss` is not a role"), "{bad:?}");
    assert!(has("review.oidc.roles", "`lead` needs one or more claim values"), "{bad:?}");
}
