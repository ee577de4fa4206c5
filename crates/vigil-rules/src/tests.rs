use std::path::PathBuf;

use rust_decimal::Decimal;
use vigil_core::feature::{Aggregate, EntityKey, FeatureDef};
use vigil_core::{Event, FeatureValue};

use super::*;

fn schema() -> Schema {
    let f = |name: &str, aggregate, window_s| {
        FeatureDef::new(name, EntityKey::parse("card_id").unwrap(), aggregate, window_s)
    };
    Schema {
        features: vec![
            f("card_count_10m", Aggregate::Count, 600),
            f("card_sum_24h", Aggregate::SumAmount, 86_400),
            FeatureDef {
                of: Some(vigil_core::EventField::Country),
                ..f("card_previous_country", Aggregate::Previous, 86_400)
            },
        ],
    }
}

fn set(text: &str) -> Result<RuleSet, RuleErrors> {
    RuleSet::from_sources(&[(PathBuf::from("t.rules"), text.to_owned())], &schema())
}

fn event(json: &str) -> Event {
    Event::from_json(json.as_bytes()).unwrap()
}

/// A seeded linear congruential generator: `next(n)` is in `0..n`.
fn seeded(mut state: u64) -> impl FnMut(usize) -> usize {
    move |n| {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        ((state >> 33) as usize) % n.max(1)
    }
}

fn fired(rules: &RuleSet, e: &Event, features: &[FeatureValue], model_score: Option<f64>) -> Vec<String> {
    let ctx = Context { event: e, features, model_score };
    let mut out = Vec::new();
    rules.evaluate(&ctx, |_, r| out.push(r.name.clone()));
    out
}

#[test]
fn table_of_conditions() {
    let e = event(
        r#"{"transaction_id":"t","timestamp":"2026-01-01T00:00:00Z","amount":"250.00","currency":"EUR",
            "card_id":"c","country":"FR","attributes":{"email_domain":"mail.example","age_days":3}}"#,
    );
    let features =
        [FeatureValue::Count(4), FeatureValue::Money(Decimal::new(90_000, 2)), FeatureValue::Text("DE".into())];
    let cases: &[(&str, bool)] = &[
        ("amount > 249.99", true),
        ("amount >= 250", true),
        ("amount == 250.0", true),
        ("amount > 250", false),
        ("amount + card_sum_24h > 1000", true),
        ("amount + card_sum_24h > 1150", false),
        ("amount * 4 == 1000", true),
        ("card_sum_24h / amount > 3.5", true),
        ("card_count_10m >= 4 and country == \"FR\"", true),
        ("card_count_10m >= 5 or country != \"FR\"", false),
        ("not (country in [\"FR\", \"DE\"])", false),
        ("country not in [\"US\"]", true),
        ("mcc is missing", true),
        ("card_id is present", true),
        ("mcc == \"5411\"", false),
        ("not (mcc == \"5411\")", false),
        ("mcc == \"5411\" or amount > 100", true),
        ("attributes.email_domain == \"mail.example\"", true),
        ("attributes.age_days < 7", true),
        ("attributes.nope == 1", false),
        ("model_score > 0.5", true),
        ("-amount < 0", true),
        ("amount / 0 > 1", false),
        ("lower(country) == \"fr\"", true),
        ("upper(attributes.email_domain) == \"MAIL.EXAMPLE\"", true),
        ("ends_with(attributes.email_domain, \".example\")", true),
        ("starts_with(country, \"D\")", false),
        ("contains(attributes.email_domain, \"ail\")", true),
        ("contains(mcc, \"54\") or not contains(mcc, \"54\")", false),
        // 2026-01-01T00:00:00Z is a Thursday, at midnight UTC.
        ("hour(timestamp) < 6", true),
        ("weekday(timestamp) == \"thu\"", true),
        ("weekday(timestamp) in [\"sat\", \"sun\"]", false),
        // A text feature: the card's previous country.
        ("card_previous_country != country", true),
        ("card_previous_country in [\"DE\", \"AT\"]", true),
        ("lower(card_previous_country) == \"de\"", true),
    ];
    for (cond, expect) in cases {
        let rules = set(&format!("rule r when {cond} then review R")).unwrap_or_else(|e| panic!("{cond}: {e}"));
        let got = !fired(&rules, &e, &features, Some(0.75)).is_empty();
        assert_eq!(got, *expect, "condition `{cond}`");
    }
}

#[test]
fn missing_model_score_never_fires() {
    let e = event(r#"{"transaction_id":"t","timestamp":"2026-01-01T00:00:00Z","amount":1,"currency":"EUR"}"#);
    let rules =
        set("rule a when model_score > 0.1 then review A\nrule b when not (model_score > 0.1) then review B").unwrap();
    assert!(fired(&rules, &e, &[FeatureValue::Missing, FeatureValue::Missing], None).is_empty());
}

#[test]
fn type_errors_are_caught_at_load_with_places() {
    let text = "rule a\n  when amount > card_count_10m\n  then review A\n\
                rule b when country > 3 then review B\n\
                rule c when amount + \"x\" > 1 then review C\n\
                rule d when amount then review D\n\
                rule e when card_cnt_10m > 1 then review E\n\
                rule f when amount * card_sum_24h > 1 then review F\n\
                rule g when card_previous_country > 3 then review G\n";
    let errors = set(text).unwrap_err().0;
    let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    assert_eq!(errors.len(), 7, "{text:#?}");
    assert_eq!(
        text[0],
        "t.rules:2:15: cannot compare money with a count: `amount` on the left is money, `card_count_10m` on the \
         right is a count; compare money with money (`amount`, an amount feature, or a number such as 250.00), and a \
         count with a count or a whole number such as 3"
    );
    assert!(text[1].starts_with("t.rules:4:21: cannot compare text with a number"), "{}", text[1]);
    assert!(text[2].contains("cannot do arithmetic on text"));
    assert!(text[3].contains("`when` needs a condition"));
    assert!(text[4].contains("unknown name `card_cnt_10m`; did you mean `card_count_10m`?"));
    assert!(text[5].contains("cannot multiply money by money"));
    assert!(text[6].starts_with("t.rules:9:35: cannot compare text with a number"), "{}", text[6]);
}

#[test]
fn duplicate_names_and_versions() {
    let err = set("rule a when amount > 1 then review A\nrule a when amount > 2 then review B").unwrap_err();
    assert!(err.to_string().contains("already defined at t.rules:1"));
    let a = set("rule a when amount > 1 then review A").unwrap();
    let b = set("rule a when amount > 1 then review A").unwrap();
    let c = set("rule a when amount > 2 then review A").unwrap();
    assert_eq!(a.version(), b.version());
    assert_ne!(a.version(), c.version());
}

#[test]
fn rule_attributes_are_kept() {
    let rules = set("rule big shadow when amount > 1 then decline BIG score -2.5 description \"why\"").unwrap();
    let r = &rules.rules()[0];
    assert_eq!((r.action, r.code.as_str(), r.score, r.shadow), (Action::Decline, "BIG", -2.5, true));
    assert_eq!(r.description.as_deref(), Some("why"));
    assert_eq!(r.location, "t.rules:1");
}

#[test]
fn shipped_rules_check() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../rules");
    let config = vigil_core::PipelineConfig::load(&dir.join("../pipelines/demo.toml")).unwrap();
    let rules = RuleSet::load(&dir, &Schema { features: config.features }).unwrap();
    assert!(rules.rules().len() >= 5);
}

#[test]
fn list_files_are_looked_up_by_name() {
    let lists = vec![
        (PathBuf::from("lists/risky_countries.txt"), "# watch list\nBR\n\n  NG \n".to_owned()),
        (PathBuf::from("lists/blocked_cards.txt"), "c1\n".to_owned()),
    ];
    let rules = RuleSet::build(
        &[(PathBuf::from("t.rules"), "rule a when country in @risky_countries or card_id in @blocked_cards then decline A\nrule b when country not in @risky_countries then review B".to_owned())],
        &lists,
        &schema(),
    )
    .unwrap();
    let e = |country: &str, card: &str| {
        event(&format!(
            r#"{{"transaction_id":"t","timestamp":"2026-01-01T00:00:00Z","amount":1,"currency":"EUR","country":"{country}","card_id":"{card}"}}"#
        ))
    };
    assert_eq!(fired(&rules, &e("NG", "c9"), &[], None), vec!["a"]);
    assert_eq!(fired(&rules, &e("FR", "c1"), &[], None), vec!["a", "b"]);
    assert_eq!(fired(&rules, &e("FR", "c9"), &[], None), vec!["b"]);
    // Lists are part of the version: the same rules with another list decide differently.
    let other = RuleSet::build(
        &[(PathBuf::from("t.rules"), "rule a when country in @risky_countries or card_id in @blocked_cards then decline A\nrule b when country not in @risky_countries then review B".to_owned())],
        &[(PathBuf::from("lists/risky_countries.txt"), "BR\n".to_owned()), lists[1].clone()],
        &schema(),
    )
    .unwrap();
    assert_ne!(rules.version(), other.version());
}

#[test]
fn function_time_and_list_errors_are_located() {
    let text = "rule a when timestamp > 5 then review A\n\
                rule b when hour(amount) > 5 then review B\n\
                rule c when lowr(country) == \"fr\" then review C\n\
                rule d when starts_with(country) then review D\n\
                rule e when country in @riskyy then review E\n";
    let errors = RuleSet::build(
        &[(PathBuf::from("t.rules"), text.to_owned())],
        &[(PathBuf::from("lists/risky.txt"), "BR\n".to_owned())],
        &schema(),
    )
    .unwrap_err()
    .0;
    let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    assert_eq!(errors.len(), 5, "{text:#?}");
    assert!(text[0].starts_with("t.rules:1:23: cannot compare a time"), "{}", text[0]);
    assert!(text[1].contains("`hour` takes `timestamp`, not money"), "{}", text[1]);
    assert!(text[2].contains("unknown function `lowr`; did you mean `lower`?"), "{}", text[2]);
    assert!(text[3].contains("`starts_with` takes 2 arguments, not 1"), "{}", text[3]);
    assert!(text[4].contains("unknown list `@riskyy`; did you mean `risky`?"), "{}", text[4]);
}

/// Seeded mutations of the shipped rules: whatever the input, loading returns
/// rules or errors, never a panic.
#[test]
fn corrupted_rule_files_never_panic() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../rules");
    let base: String = ["amount.rules", "velocity.rules", "geo.rules"]
        .iter()
        .map(|f| std::fs::read_to_string(dir.join(f)).unwrap())
        .collect();
    let alphabet: Vec<char> =
        "rule when then and or not in is ( ) [ ] @ . , \" # - + * / < > = ! 0 9 _ a Z \n\u{e9}".chars().collect();
    let mut next = seeded(0x5eed);
    let lists = vec![(PathBuf::from("lists/high_risk_countries.txt"), "BR\n".to_owned())];
    for _ in 0..2_000 {
        let mut chars: Vec<char> = base.chars().collect();
        for _ in 0..=next(8) {
            let at = next(chars.len());
            match next(3) {
                0 => {
                    chars.remove(at);
                }
                1 => chars.insert(at, alphabet[next(alphabet.len())]),
                _ => {
                    let end = (at + next(40)).min(chars.len());
                    chars.drain(at..end);
                }
            }
        }
        let text: String = chars.into_iter().collect();
        let _ = RuleSet::build(&[(PathBuf::from("m.rules"), text)], &lists, &schema());
    }
}

/// The compiled program (shared nodes, threshold groups) decides exactly as the
/// tree-walking reference evaluator, rule by rule, over seeded events whose
/// values sit on, around and away from the rules' thresholds, with features and
/// model scores sometimes missing.
#[test]
fn compiled_program_agrees_with_reference() {
    let mut next = seeded(0xdec1de);
    let conditions = [
        "amount > 100",
        "amount >= 100.00",
        "100 < amount",
        "amount == 250",
        "amount != 250",
        "amount <= -5",
        "-amount > -100",
        "amount < 1000 and amount > 100",
        "card_count_10m >= 3",
        "card_count_10m > 2.5",
        "3 <= card_count_10m",
        "card_count_10m == 3 or card_count_10m == 7",
        "card_sum_24h + amount > 1000",
        "card_sum_24h / card_count_10m >= 100",
        "card_sum_24h > amount * 3",
        "model_score > 0.5",
        "model_score <= 0.5",
        "not (model_score > 0.5)",
        "country in [\"BR\", \"NG\"]",
        "country not in [\"FR\"] and amount > 100",
        "country in @risky or card_id in @blocked",
        "channel == \"ecom\" and card_count_10m >= 3",
        "channel == \"ecom\" or model_score > 0.9",
        "mcc is missing",
        "mcc is present and mcc == \"5411\"",
        "attributes.age_days < 7",
        "attributes.age_days == \"x\"",
        "attributes.email_domain == \"mail.example\"",
        "lower(country) == \"br\"",
        "starts_with(card_id, \"c1\") and not ends_with(card_id, \"9\")",
        "contains(attributes.email_domain, \"ail\")",
        "hour(timestamp) < 6 or weekday(timestamp) in [\"sat\", \"sun\"]",
        "hour(timestamp) >= 22",
        "card_count_10m is missing or card_sum_24h is missing",
        "not (country == \"FR\") and not (card_count_10m < 3)",
    ];
    let text: String =
        conditions.iter().enumerate().map(|(i, c)| format!("rule r{i} when {c} then review R{i}\n")).collect();
    let rules = RuleSet::build(
        &[(PathBuf::from("t.rules"), text)],
        &[
            (PathBuf::from("lists/risky.txt"), "BR\nNG\n".to_owned()),
            (PathBuf::from("lists/blocked.txt"), "c17\n".to_owned()),
        ],
        &schema(),
    )
    .unwrap();
    // Shared sub-expressions are one node: fewer nodes than the trees hold.
    assert!(rules.program.len() < 4 * conditions.len(), "{} nodes", rules.program.len());

    let amounts = ["0", "5", "99.99", "100", "100.00", "100.01", "250", "250.0", "999.99", "1000", "5000"];
    let countries = ["BR", "NG", "FR", "DE", "US"];
    let mut hits = vec![0usize; conditions.len()];
    for _ in 0..5_000 {
        let mut json = format!(
            r#"{{"transaction_id":"t","timestamp":"2026-01-{:02}T{:02}:00:00Z","amount":"{}","currency":"EUR","card_id":"c{}","country":"{}","channel":"{}""#,
            1 + next(28),
            next(24),
            amounts[next(amounts.len())],
            next(20),
            countries[next(countries.len())],
            ["ecom", "pos"][next(2)],
        );
        if next(2) == 0 {
            json.push_str(r#","mcc":"5411""#);
        }
        match next(3) {
            0 => json.push_str(r#","attributes":{"age_days":3,"email_domain":"mail.example"}"#),
            1 => json.push_str(r#","attributes":{"age_days":"x"}"#),
            _ => {}
        }
        json.push('}');
        let e = event(&json);
        let count = match next(6) {
            0 => FeatureValue::Missing,
            n => FeatureValue::Count(n as i64 + 1),
        };
        let sum = match next(4) {
            0 => FeatureValue::Missing,
            n => FeatureValue::Money(Decimal::new(n as i64 * 40_000, 2)),
        };
        let features = [count, sum];
        let score = [None, Some(0.1), Some(0.5), Some(0.95)][next(4)];
        let ctx = Context { event: &e, features: &features, model_score: score };
        let mut got = Vec::new();
        rules.evaluate(&ctx, |i, _| got.push(i));
        let want: Vec<usize> = rules
            .rules()
            .iter()
            .enumerate()
            .filter(|(_, r)| crate::eval::reference::truth(&r.when, &ctx) == Some(true))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(got, want, "event {json} with {features:?}, score {score:?}");
        for i in got {
            hits[i] += 1;
        }
    }
    // The events exercise both outcomes of every rule but the one that cannot
    // fire (amounts are never negative).
    for (i, h) in hits.iter().enumerate() {
        let never = conditions[i] == "amount <= -5";
        assert!(if never { *h == 0 } else { *h > 0 && *h < 5_000 }, "`{}` fired {h} times", conditions[i]);
    }
}

#[test]
fn durations_are_typed_lengths_of_time() {
    let e = event(r#"{"transaction_id":"t","timestamp":"2026-01-01T00:00:00Z","amount":1,"currency":"EUR"}"#);
    for (cond, expect) in [("90s < 2m", true), ("24h == 1d", true), ("2w > 13d", true), ("30d / 1d == 30", true)] {
        let rules = set(&format!("rule r when {cond} then review R")).unwrap_or_else(|e| panic!("{cond}: {e}"));
        assert_eq!(!fired(&rules, &e, &[], None).is_empty(), expect, "{cond}");
    }
    let errors = set("rule a when amount > 10m then review A\n\
         rule b when 10m > 600 then review B\n\
         rule c when card_count_10m >= 5x then review C\n")
    .unwrap_err()
    .0;
    let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    assert_eq!(text.len(), 3, "{text:#?}");
    assert!(text[0].contains("cannot compare money with a duration"), "{}", text[0]);
    assert!(text[1].contains("a duration with a plain number; give it a unit"), "{}", text[1]);
    assert!(text[2].starts_with("t.rules:3:31: `5x` is neither a number, a duration"), "{}", text[2]);
}

#[test]
fn a_condition_outside_a_rule_file_checks_and_evaluates_like_a_rule() {
    let file = PathBuf::from("pipeline.toml");
    let big =
        Condition::compile(&file, 7, 9, r#"amount >= 1000 and country in ["BR", "NG"]"#, &schema(), &Lists::new())
            .unwrap();
    let burst = Condition::compile(&file, 8, 9, "card_count_10m >= 3", &schema(), &Lists::new()).unwrap();
    let e = event(
        r#"{"transaction_id":"t","timestamp":"2026-01-01T00:00:00Z","amount":"1500.00","currency":"EUR","country":"BR"}"#,
    );
    let features = [FeatureValue::Count(2), FeatureValue::Missing, FeatureValue::Missing];
    let ctx = Context { event: &e, features: &features, model_score: None };
    assert!(big.holds(&ctx));
    // Unknown is not true: a missing feature never puts a payment in a queue.
    assert!(!burst.holds(&ctx));
    assert!(!burst.holds(&Context {
        event: &e,
        features: &[FeatureValue::Missing, FeatureValue::Missing, FeatureValue::Missing],
        model_score: None
    }));

    // Errors name their place in the pipeline file, across lines too.
    let err = Condition::compile(&file, 7, 9, "amount >= 10 and card_count_10m > \"x\"", &schema(), &Lists::new())
        .unwrap_err();
    assert_eq!((err.0[0].line, err.0[0].column), (7, 41), "at the comparison: {err}");
    let err =
        Condition::compile(&file, 7, 9, "amount >= 10 and\n  card_cnt_10m > 1", &schema(), &Lists::new()).unwrap_err();
    assert_eq!((err.0[0].line, err.0[0].column), (8, 3), "{err}");
    assert!(err.to_string().contains("card_count_10m"), "a hint: {err}");
    let err = Condition::compile(&file, 7, 9, "amount", &schema(), &Lists::new()).unwrap_err();
    assert!(err.to_string().contains("needs a condition"), "{err}");
    let err = Condition::compile(&file, 7, 9, "amount > 1 then", &schema(), &Lists::new()).unwrap_err();
    assert!(err.to_string().contains("end of the condition"), "{err}");
    // The rule set's list files, by name.
    let mut lists = Lists::new();
    lists.insert("watch".into(), Arc::new(["BR".to_string()].into_iter().collect()));
    let watched = Condition::compile(&file, 7, 9, "country in @watch", &schema(), &lists).unwrap();
    assert!(watched.holds(&ctx));
    let err = Condition::compile(&file, 7, 9, "country in @nope", &schema(), &lists).unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
}
