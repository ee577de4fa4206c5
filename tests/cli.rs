//! The `vigil` command as a user runs it.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

use common::TestPipeline;

fn vigil(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vigil")).args(args).current_dir(env!("CARGO_MANIFEST_DIR")).output().unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn temp(name: &str, content: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vigil-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p
}

#[test]
fn help_lists_the_commands() {
    let out = text(&vigil(&["--help"]));
    for c in ["run", "gen", "demo", "validate", "rules"] {
        assert!(out.contains(&format!("  {c} ")), "{c} missing from:\n{out}");
    }
}

#[test]
fn shipped_pipelines_and_rules_validate() {
    // benches/raw/raw.toml is the raw-payments comparison's (benches/raw/compare.sh).
    for p in ["pipelines/demo.toml", "pipelines/local.toml", "benches/raw/raw.toml"] {
        let o = vigil(&["validate", "--pipeline", p]);
        assert!(o.status.success(), "{p}: {}", text(&o));
    }
    let o = vigil(&["rules", "check", "rules"]);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn validate_reports_every_problem_with_its_place_and_fails() {
    let bad = TestPipeline::shipped("local.toml")
        .set("features[0].window", "10 minutes")
        .each_feature(|f| {
            if f["aggregate"].as_str() == Some("sum_amount") {
                f.insert("aggregate".into(), "sum".into());
            }
        })
        .set("kafka.batch_size", 0)
        .set("rules.path", format!("{}/rules", env!("CARGO_MANIFEST_DIR")));
    let p = temp("bad.toml", &bad.text());
    let o = vigil(&["validate", "--pipeline", p.to_str().unwrap()]);
    assert!(!o.status.success());
    let out = text(&o);
    let located: Vec<&str> = out.lines().filter(|l| l.contains("bad.toml:")).collect();
    // One bad window, four `sum` aggregates, one batch size.
    assert_eq!(located.len(), 6, "{out}");
    assert!(out.contains("features[0].window"), "{out}");
    assert!(out.contains("kafka.batch_size"), "{out}");
}

#[test]
fn broken_rules_are_refused_with_file_line_column() {
    let p = temp(
        "bad.rules",
        "rule a\n  when amount > card_count_10m\n  then review A\nrule b when amuont > 1 then decline B\n",
    );
    let o = vigil(&["rules", "check", p.to_str().unwrap()]);
    assert!(!o.status.success());
    let out = text(&o);
    assert!(out.contains("bad.rules:2:15: cannot compare money with a count"), "{out}");
    assert!(out.contains("bad.rules:4:13: unknown name `amuont`; did you mean `amount`?"), "{out}");
}

#[test]
fn gen_is_reproducible_and_labelled() {
    let a = vigil(&["gen", "--events", "500", "--seed", "5"]);
    let b = vigil(&["gen", "--events", "500", "--seed", "5"]);
    assert!(a.status.success());
    assert_eq!(a.stdout, b.stdout);
    assert_eq!(a.stdout.iter().filter(|c| **c == b'\n').count(), 500);
    let labels = std::env::temp_dir().join(format!("vigil-labels-{}.csv", std::process::id()));
    let o = vigil(&["gen", "--events", "200", "--format", "csv", "--labels", labels.to_str().unwrap()]);
    assert!(o.status.success());
    let csv = String::from_utf8_lossy(&o.stdout);
    assert_eq!(csv.lines().count(), 201);
    let l = std::fs::read_to_string(&labels).unwrap();
    assert!(l.starts_with("transaction_id,is_fraud,fraud_scenario"));
    assert!(l.contains(",true,"));
}

#[test]
fn demo_decides_and_writes_every_event() {
    let out = std::env::temp_dir().join(format!("vigil-demo-{}.jsonl", std::process::id()));
    let o = vigil(&["demo", "--events", "3000", "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let summary = text(&o);
    assert!(summary.contains("labelled fraud caught") && summary.contains("events/s"), "{summary}");
    let written = std::fs::read_to_string(&out).unwrap();
    assert_eq!(written.lines().count(), 3000);
    let d: vigil_core::Decision = serde_json::from_str(written.lines().next().unwrap()).unwrap();
    assert!(!d.rules_version.is_empty());
}

/// The shipped local pipeline with a Redis that is not there.
fn without_redis() -> PathBuf {
    let bad = TestPipeline::shipped("local.toml")
        .set("store.redis_url", "redis://127.0.0.1:1")
        .set("rules.path", format!("{}/rules", env!("CARGO_MANIFEST_DIR")));
    temp("noredis.toml", &bad.text())
}

#[test]
fn run_without_redis_fails_fast_and_clearly() {
    let p = without_redis();
    let o = vigil(&["run", "--pipeline", p.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(text(&o).contains("redis://127.0.0.1:1"), "{}", text(&o));
}

/// On a pipeline whose feature state `vigil run` owns, the HTTP API and a
/// direct label would fence that owner: they refuse before touching Redis,
/// and say why.
#[test]
fn direct_labels_refuse_an_owned_pipeline() {
    let owned = TestPipeline::shipped("local.toml")
        .set("store.redis_url", "redis://127.0.0.1:1")
        .add("store.mode", "owned")
        .set("rules.path", format!("{}/rules", env!("CARGO_MANIFEST_DIR")))
        .without("kafka.labels_topic");
    let p = temp("owned.toml", &owned.text());
    let label =
        temp("owned-label.json", r#"{"transaction_id":"t1","label":"genuine","reported_at":"2026-01-01T00:00:00Z"}"#);
    let o = vigil(&["label", "--pipeline", p.to_str().unwrap(), "--file", label.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(text(&o).contains("mode = \"owned\"") && text(&o).contains("vigil label"), "{}", text(&o));
}

#[test]
fn run_and_serve_with_store_wait_give_up_after_it_and_say_so() {
    let p = without_redis();
    for command in ["run", "serve"] {
        let o = vigil(&[command, "--pipeline", p.to_str().unwrap(), "--store-wait", "1"]);
        assert!(!o.status.success());
        let said = text(&o);
        assert!(
            said.contains("did not answer within --store-wait 1 s") && said.contains("redis://127.0.0.1:1"),
            "{command}: {said}"
        );
    }
}

#[test]
fn shipped_rule_tests_pass() {
    let o = vigil(&["rules", "test", "rules"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains(" passed, 0 failed"), "{}", text(&o));
}

#[test]
fn a_failing_rule_test_shows_a_readable_diff() {
    let dir = std::env::temp_dir().join(format!("vigil-ruletest-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("tests")).unwrap();
    std::fs::write(
        dir.join("r.rules"),
        "rule big when amount > 100 then review BIG score 10\nrule watch shadow when amount > 400 then review WATCH\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("tests/t.toml"),
        "[[case]]\nname = \"wrongly expects a decline\"\nexpect = \"decline\"\nreasons = [\"HUGE\"]\n\
         [case.event]\ntransaction_id = \"t\"\ntimestamp = \"2026-01-01T00:00:00Z\"\namount = \"500\"\ncurrency = \"EUR\"\n\
         \n[[case]]\nname = \"passes\"\nexpect = \"review\"\nreasons = [\"BIG\"]\n\
         [case.event]\ntransaction_id = \"u\"\ntimestamp = \"2026-01-01T00:00:00Z\"\namount = \"500\"\ncurrency = \"EUR\"\n\
         [case.features]\ncard_count_10m = 1\n\
         \n[[case]]\nname = \"expects no shadow rule\"\nexpect = \"review\"\nreasons = [\"BIG\"]\nshadow = []\n\
         [case.event]\ntransaction_id = \"v\"\ntimestamp = \"2026-01-01T00:00:00Z\"\namount = \"500\"\ncurrency = \"EUR\"\n",
    )
    .unwrap();
    let o = vigil(&["rules", "test", dir.to_str().unwrap()]);
    assert!(!o.status.success());
    let out = text(&o);
    assert!(out.contains("FAIL") && out.contains("t.toml:1: wrongly expects a decline"), "{out}");
    assert!(out.contains("expected: decline [HUGE]"), "{out}");
    assert!(out.contains("got:      review [BIG] (score 10)"), "{out}");
    assert!(out.contains("missing reasons: HUGE") && out.contains("unexpected reasons: BIG"), "{out}");
    assert!(out.contains("expected shadow rules: []") && out.contains("got shadow rules:      [WATCH]"), "{out}");
    assert!(out.contains("1 passed, 2 failed"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn evaluate_reports_ranking_figures_and_the_decision_mix() {
    let dir = std::env::temp_dir().join(format!("vigil-cli-eval-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let history = dir.join("h.csv");
    let o = vigil(&["gen", "--events", "4000", "--seed", "3", "--inline-labels", "--out", history.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let evaluate = |extra: &[&str]| {
        let base = ["evaluate", "--model", "models/card-fraud.json", "--history", history.to_str().unwrap()];
        vigil(&base.iter().chain(extra).copied().collect::<Vec<_>>())
    };
    let o = evaluate(&["--format", "json"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["events"], 4000);
    let auc = v["auc_roc"].as_f64().unwrap();
    assert!(auc > 0.5 && auc <= 1.0, "{v}");
    assert!(v["recall_at_1pct_fpr"].as_f64().unwrap() > 0.0, "{v}");
    let decided: u64 = v["decisions"].as_object().unwrap().values().map(|n| n.as_u64().unwrap()).sum();
    assert_eq!(decided, 4000);
    // Card precision: the day's top cards, as a fraud team works them.
    let cp = &v["card_precision_at_k"];
    assert_eq!(cp["k"], 100, "{v}");
    assert!(cp["days"].as_u64().unwrap() >= 1 && (0.0..=1.0).contains(&cp["precision"].as_f64().unwrap()), "{v}");
    // Every event's score, for outside tools.
    let scores = dir.join("scores.csv");
    let o = evaluate(&["--scores", scores.to_str().unwrap()]);
    assert!(o.status.success() && text(&o).contains("card precision, top 100"), "{}", text(&o));
    let written = std::fs::read_to_string(&scores).unwrap();
    let mut lines = written.lines();
    assert_eq!(lines.next(), Some("transaction_id,timestamp,card_id,score,label"));
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 4000);
    let frauds = rows.iter().filter(|r| r.ends_with(",1")).count() as u64;
    assert_eq!(frauds, v["frauds"].as_u64().unwrap());
    // The table form with the pictures, and a clear refusal of a history without labels.
    let report = dir.join("report");
    let o = evaluate(&["--report", report.to_str().unwrap()]);
    assert!(text(&o).contains("AUC-ROC") && text(&o).contains("recall at 1% FPR"), "{}", text(&o));
    for (file, must) in [("roc.svg", "AUC "), ("pr.svg", "average precision"), ("scores.svg", "fraud (")] {
        let svg = std::fs::read_to_string(report.join(file)).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains(must) && (svg.contains("<polyline") || svg.contains("<rect")),
            "{file}"
        );
    }
    let page = std::fs::read_to_string(report.join("index.html")).unwrap();
    assert!(page.contains("roc.svg") && page.contains("AUC-ROC"), "{page}");
    let o = evaluate(&["--label", "nope"]);
    assert!(!o.status.success() && text(&o).contains("no labels"), "{}", text(&o));
    // A part of the history, chosen by a SQL predicate; a bad one says why.
    let o = evaluate(&["--format", "json", "--where", "channel = 'ecom' AND amount >= 50"]);
    assert!(o.status.success(), "{}", text(&o));
    let part: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(part["selection"], "channel = 'ecom' AND amount >= 50");
    let n = part["events"].as_u64().unwrap();
    assert!(n > 0 && n < 4000, "{part}");
    assert!(text(&o).contains(&format!("--where chose {n} of 4000 events")), "{}", text(&o));
    let o = evaluate(&["--where", "chanel = 'ecom'"]);
    assert!(!o.status.success() && text(&o).contains("--where `chanel = 'ecom'`") && text(&o).contains("chanel"));
    let o = vigil(&["backtest", "--rules", "rules", "--history", history.to_str().unwrap(), "--where", "is_fraud"]);
    assert!(o.status.success() && text(&o).contains("events where is_fraud"), "{}", text(&o));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn gen_picks_the_format_from_the_file_extension() {
    let dir = std::env::temp_dir().join(format!("vigil-cli-ext-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["h.parquet", "h.csv", "h.jsonl"] {
        let path = dir.join(name);
        let o = vigil(&["gen", "--events", "50", "--inline-labels", "--out", path.to_str().unwrap()]);
        assert!(o.status.success(), "{}", text(&o));
        let o = vigil(&["backtest", "--rules", "rules", "--history", path.to_str().unwrap()]);
        assert!(o.status.success() && text(&o).contains("over 50 events"), "{name}: {}", text(&o));
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn train_on_a_history_file_then_evaluate_the_model() {
    let dir = std::env::temp_dir().join(format!("vigil-cli-train-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (history, model) = (dir.join("h.jsonl"), dir.join("m.json"));
    let h = history.to_str().unwrap();
    let o = vigil(&["gen", "--events", "6000", "--days", "10", "--seed", "4", "--inline-labels", "--out", h]);
    assert!(o.status.success(), "{}", text(&o));
    let args = ["train", "--history", h, "--algorithm", "isolation-forest", "--trees", "20", "--out"];
    let o = vigil(&args.into_iter().chain([model.to_str().unwrap()]).collect::<Vec<_>>());
    assert!(o.status.success() && text(&o).contains("AUC-ROC"), "{}", text(&o));
    let o = vigil(&["evaluate", "--model", model.to_str().unwrap(), "--history", h, "--format", "json"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["model_version"].as_str().unwrap().starts_with("card-anomaly-iforest@"), "{v}");
    // A split by date: the first 7 of the 10 days train (gen starts on 2026-01-01).
    let m = model.to_str().unwrap();
    let o = vigil(&["train", "--history", h, "--before", "2026-01-08", "--out", m, "--format", "json"]);
    assert!(o.status.success(), "{}", text(&o));
    let t: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let (train, test) = (t["train_rows"].as_u64().unwrap(), t["test_rows"].as_u64().unwrap());
    assert!(train + test == 6000 && (3900..4500).contains(&train), "{t}");
    let file: serde_json::Value = serde_json::from_slice(&std::fs::read(&model).unwrap()).unwrap();
    assert_eq!(file["training"]["data"]["split_at"], "2026-01-08T00:00:00+00:00", "{}", file["training"]);
    // A split that leaves nothing to test, or a date that is not one, is refused.
    let o = vigil(&["train", "--history", h, "--before", "2027-01-01", "--out", m]);
    assert!(!o.status.success() && text(&o).contains("leaves no training or no test"), "{}", text(&o));
    let o = vigil(&["train", "--history", h, "--before", "next week", "--out", m]);
    assert!(!o.status.success() && text(&o).contains("`next week` is neither RFC 3339 nor a date"), "{}", text(&o));
    // Trained on a part of the history: the model file says which.
    let o = vigil(&["train", "--history", h, "--where", "channel = 'pos'", "--out", m, "--format", "json"]);
    assert!(o.status.success(), "{}", text(&o));
    let t: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let rows = t["train_rows"].as_u64().unwrap() + t["test_rows"].as_u64().unwrap();
    let file: serde_json::Value = serde_json::from_slice(&std::fs::read(&model).unwrap()).unwrap();
    let source = &file["training"]["data"]["from_history"];
    assert_eq!(source["where"], "channel = 'pos'", "{source}");
    assert!(rows < 6000 && source["selected_events"] == rows, "{t} {source}");
    // A history without the label column is refused, and says so.
    let o = vigil(&["train", "--history", h, "--label", "chargeback", "--out", model.to_str().unwrap()]);
    let said = "no valid event (6000 records refused, the first reasons above); a history holds one event per \
                record (docs/events.md); if `is_fraud` is the label column, give --label is_fraud";
    assert!(!o.status.success() && text(&o).contains(said), "{}", text(&o));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn train_and_evaluate_on_any_numeric_csv_with_a_label() {
    // A table that is not Vigil events: quoted header and values, a missing cell.
    let mut csv = String::from("\"x1\",\"x 2\",\"label\"\n");
    let mut state = 7u64;
    for i in 0..3000 {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        let u = (state >> 33) as f64 / (1u64 << 31) as f64;
        let fraud = i % 20 == 0;
        let x1 = if fraud { 2.0 + u } else { u };
        let x2 = if i % 97 == 0 { String::new() } else { format!("{:.3}", u * 3.0) };
        csv.push_str(&format!("\"{x1:.4}\",\"{x2}\",\"{}\"\n", u8::from(fraud)));
    }
    let data = temp("table.csv", &csv);
    let model = data.with_file_name("table-model.json");
    let (d, m) = (data.to_str().unwrap(), model.to_str().unwrap());
    let o =
        vigil(&["train", "--history", d, "--features", "x1,x 2", "--label", "label", "--out", m, "--format", "json"]);
    assert!(o.status.success(), "{}", text(&o));
    let t: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((t["train_rows"].as_u64(), t["test_rows"].as_u64()), (Some(2100), Some(900)), "{t}");
    assert!(t["fit_seconds"].as_f64().unwrap() >= 0.0 && t["model_version"].is_string(), "{t}");
    let o = vigil(&["evaluate", "--model", m, "--history", d, "--label", "label", "--format", "json"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((v["events"].as_u64(), v["frauds"].as_u64()), (Some(3000), Some(150)), "{v}");
    assert!(v["auc_roc"].as_f64().unwrap() > 0.95, "{v}");
    assert!(v["score_ns_per_event"].as_f64().unwrap() > 0.0, "{v}");
    // A column that is not there is named, with the ones that are.
    let o = vigil(&["train", "--history", d, "--features", "x3", "--label", "label", "--out", m]);
    assert!(!o.status.success() && text(&o).contains("no column `x3`"), "{}", text(&o));
    // Every row trains with a share of 1: no figures are claimed, and the
    // summary says where to evaluate instead.
    let all = ["train", "--history", d, "--features", "x1,x 2", "--label", "label", "--out", m, "--train-share", "1"];
    let o = vigil(&all);
    assert!(o.status.success() && text(&o).contains("trained on all 3000 rows"), "{}", text(&o));
    assert!(text(&o).contains("vigil evaluate"), "{}", text(&o));
    let o = vigil(&[&all[..], &["--format", "json"]].concat());
    let t: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((t["train_rows"].as_u64(), t["test_rows"].as_u64()), (Some(3000), Some(0)), "{t}");
    assert!(t["auc_roc"].is_null(), "{t}");
    let o =
        vigil(&["train", "--history", d, "--features", "x1", "--label", "label", "--out", m, "--train-share", "1.5"]);
    assert!(!o.status.success() && text(&o).contains("between 0.05 and 1"), "{}", text(&o));
}

#[test]
fn the_feature_table_is_what_train_fits_and_reads_back() {
    let dir = std::env::temp_dir().join(format!("vigil-cli-features-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (history, table, model) = (dir.join("h.jsonl"), dir.join("f.csv"), dir.join("m.json"));
    let (h, t, m) = (history.to_str().unwrap(), table.to_str().unwrap(), model.to_str().unwrap());
    let o = vigil(&["gen", "--events", "3000", "--days", "6", "--seed", "8", "--inline-labels", "--out", h]);
    assert!(o.status.success(), "{}", text(&o));
    let o = vigil(&["features", "--history", h, "--out", t]);
    assert!(o.status.success(), "{}", text(&o));
    let csv = std::fs::read_to_string(&table).unwrap();
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    assert_eq!(header[..3], ["transaction_id", "timestamp", "amount"]);
    assert!(header.contains(&"terminal_fraud_rate_30d") && header.last() == Some(&"label"), "{header:?}");
    assert_eq!(csv.lines().count(), 3001);
    let columns = header[2..header.len() - 1].join(",");
    let o = vigil(&["train", "--history", t, "--features", &columns, "--label", "label", "--out", m]);
    assert!(o.status.success() && text(&o).contains("AUC-ROC"), "{}", text(&o));
    // Split by date on the table's timestamp column (gen starts on 2026-01-01).
    let args = ["train", "--history", t, "--features", &columns, "--label", "label", "--before", "2026-01-05"];
    let o = vigil(&args.into_iter().chain(["--out", m, "--format", "json"]).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!((1700..2300).contains(&v["train_rows"].as_u64().unwrap()), "{v}");
    let o = vigil(&args.into_iter().chain(["--time-column", "when", "--out", m]).collect::<Vec<_>>());
    assert!(!o.status.success() && text(&o).contains("no column `when`"), "{}", text(&o));
    // Its inputs are the pipeline's own: `--table` scores the table's rows as they are.
    let o = vigil(&["evaluate", "--table", "--model", m, "--history", t, "--label", "label", "--format", "json"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["events"].as_u64(), Some(3000), "{v}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_reader_that_stops_early_ends_the_output_quietly() {
    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;
    let mut child = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["gen", "--events", "300000"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 64];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    // stdout is closed here, as `| head -1` would close it.
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{:?}: {stderr}", out.status);
    assert!(!stderr.contains("panicked") && !stderr.contains("error"), "{stderr}");
}
