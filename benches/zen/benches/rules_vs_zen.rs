//! Vigil's rule evaluation beside GoRules' zen-engine (JDM decision tables) on
//! the same events, features and rules, in one criterion run:
//!
//!     cargo bench --manifest-path benches/zen/Cargo.toml
//!
//! The rule sets are `vigil_gen::rule_set(n)`; the zen side is the equivalent
//! decision table (hit policy `collect`, so that every matching row is reported,
//! as Vigil reports every firing rule), with one column per field it tests and
//! one expression column for arithmetic and `or`. Before timing, both engines
//! evaluate every sample event and must agree on exactly which rules match.
//! Building each engine's input (Vigil's context, zen's `Variable`) happens
//! outside the timed loop for both.

use std::collections::BTreeSet;
use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::{json, Value};
use vigil_core::{Event, FeatureValue, PipelineConfig};
use vigil_features::{MemoryStore, Plan};
use vigil_gen::GenConfig;
use vigil_rules::{Context, RuleSet, Schema};
use zen_engine::model::{DecisionContent, GraphContent};
use zen_engine::{Decision, Variable};

/// The features the generated rules read.
const FEATURES: [&str; 4] = ["card_count_10m", "card_sum_24h", "terminal_count_1h", "ip_count_1h"];

/// The zen decision table equivalent to `vigil_gen::rule_set(n)`, row by row in
/// the order of `vigil_gen::RULE_SHAPES`.
fn zen_table(n: usize) -> Decision {
    let rows: Vec<Value> = (0..n)
        .map(|i| {
            let mut row = serde_json::Map::new();
            row.insert("_id".into(), json!(format!("r{i}")));
            let mut cell = |column: &str, expr: String| {
                row.insert(column.into(), json!(expr));
            };
            match i % 5 {
                0 => cell("amount", format!("> {}", 100 + i)),
                1 => {
                    cell("card_count_10m", format!(">= {}", i % 10 + 1));
                    cell("channel", "\"ecom\"".into());
                }
                2 => {
                    cell("country", format!("\"BR\", \"NG\", \"X{i}\""));
                    cell("amount", format!(">= {}", i % 50));
                }
                3 => cell("expression", format!("card_sum_24h + amount > {}", 1000 + i * 10)),
                _ => cell("expression", format!("terminal_count_1h >= {} or ip_count_1h >= {}", i % 7 + 2, i % 5 + 3)),
            }
            cell("code", format!("\"R{i}\""));
            Value::Object(row)
        })
        .collect();
    let column = |id: &str| json!({"id": id, "name": id, "field": id});
    let graph = json!({
        "nodes": [
            {"id": "request", "name": "request", "type": "inputNode"},
            {"id": "rules", "name": "rules", "type": "decisionTableNode", "content": {
                "hitPolicy": "collect",
                "inputs": [
                    column("amount"), column("card_count_10m"), column("channel"), column("country"),
                    {"id": "expression", "name": "expression"}
                ],
                "outputs": [{"id": "code", "name": "code", "field": "code"}],
                "rules": rows,
            }},
            {"id": "response", "name": "response", "type": "outputNode"}
        ],
        "edges": [
            {"id": "e1", "sourceId": "request", "targetId": "rules"},
            {"id": "e2", "sourceId": "rules", "targetId": "response"}
        ]
    });
    let content: DecisionContent = serde_json::from_value(graph).expect("a valid JDM graph");
    let mut graph: GraphContent = content.as_graph().expect("a graph").clone();
    graph.compile();
    Decision::from(graph)
}

/// The zen input for one event: the fields and features the rules read.
fn zen_input(e: &Event, features: &[(usize, &str)], values: &[FeatureValue]) -> Variable {
    let number = |text: String| serde_json::from_str::<Value>(&text).expect("a number");
    let mut map = serde_json::Map::new();
    map.insert("amount".into(), number(e.amount.to_string()));
    map.insert("channel".into(), e.channel.as_deref().map_or(Value::Null, |c| json!(c)));
    map.insert("country".into(), e.country.as_deref().map_or(Value::Null, |c| json!(c)));
    for (i, name) in features {
        let v = match &values[*i] {
            FeatureValue::Count(c) | FeatureValue::Seconds(c) => json!(c),
            FeatureValue::Money(m) | FeatureValue::Number(m) => number(m.to_string()),
            FeatureValue::Text(t) => json!(t),
            FeatureValue::Missing => Value::Null,
        };
        map.insert((*name).into(), v);
    }
    Variable::from(Value::Object(map))
}

/// The codes of the rows a zen response matched.
fn zen_codes(result: &Variable) -> BTreeSet<String> {
    let json: Value = result.to_value();
    json.as_array()
        .map(|rows| rows.iter().filter_map(|r| r["code"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

fn benches(c: &mut Criterion) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let config = PipelineConfig::load(&root.join("pipelines/demo.toml")).unwrap();
    let schema = Schema { features: config.features.clone() };
    let gen = GenConfig { seed: 3, events: 20_000, cards: 2_000, merchants: 200, days: 10, ..GenConfig::default() };
    let events: Vec<Event> = vigil_gen::generate(&gen).into_iter().map(|l| l.event).collect();
    let store = MemoryStore::new(Plan::new(config.features.clone()), 86_400);
    let sample: Vec<&Event> = events.iter().take(1000).collect();
    let fvs = store.process_sync(&sample).unwrap();
    let feature_index: Vec<(usize, &str)> = FEATURES
        .iter()
        .map(|name| (config.features.iter().position(|f| f.name == *name).expect("a demo feature"), *name))
        .collect();
    let inputs: Vec<Variable> =
        sample.iter().zip(&fvs).map(|(e, fv)| zen_input(e, &feature_index, &fv.values)).collect();
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();

    let mut g = c.benchmark_group("rules_vs_zen");
    g.throughput(Throughput::Elements(sample.len() as u64));
    for n in [1usize, 50, 500] {
        let vigil = RuleSet::from_sources(&[(PathBuf::from("generated.rules"), vigil_gen::rule_set(n))], &schema)
            .expect("the generated rules check");
        let zen = zen_table(n);

        // Both engines match the same rules on every sample event.
        let mut matched = 0usize;
        for ((e, fv), input) in sample.iter().zip(&fvs).zip(&inputs) {
            let ctx = Context { event: e, features: &fv.values, model_score: None };
            let mut ours = BTreeSet::new();
            vigil.evaluate(&ctx, |_, r| {
                ours.insert(r.code.clone());
            });
            let response = rt.block_on(zen.evaluate(input.clone())).expect("zen evaluates");
            let theirs = zen_codes(&response.result);
            assert_eq!(ours, theirs, "{n} rules disagree on {}", e.transaction_id);
            matched += ours.len();
        }
        assert!(matched > 0, "no rule matched any sample event");
        eprintln!("{n} rules: both engines matched the same {matched} (event, rule) pairs");

        g.bench_function(format!("vigil_{n}_rules_x1000"), |b| {
            b.iter(|| {
                let mut fired = 0usize;
                for (e, fv) in sample.iter().zip(&fvs) {
                    let ctx = Context { event: e, features: &fv.values, model_score: None };
                    vigil.evaluate(&ctx, |_, _| fired += 1);
                }
                fired
            })
        });
        g.bench_function(format!("zen_{n}_rules_x1000"), |b| {
            b.iter(|| {
                for input in &inputs {
                    let response = rt.block_on(zen.evaluate(input.clone())).expect("zen evaluates");
                    std::hint::black_box(response);
                }
            })
        });
    }
    g.finish();
}

criterion_group!(zen, benches);
criterion_main!(zen);
