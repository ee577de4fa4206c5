//! What a newcomer reads when something is off: each message says what, where,
//! and what to do next, once. The exact text where it matters.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::TestPipeline;

fn vigil_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vigil")).args(args).current_dir(dir).output().unwrap()
}

fn vigil(args: &[&str]) -> Output {
    vigil_in(&common::repo(), args)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A folder of this test's own.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vigil-messages-{name}-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The error line a command ended with.
fn error_line(o: &Output) -> String {
    assert!(!o.status.success(), "it succeeded: {}{}", stdout(o), stderr(o));
    let text = stderr(o);
    text.lines().rfind(|l| l.starts_with("error: ")).unwrap_or_default().to_owned()
}

#[test]
fn outside_the_repository_a_default_pipeline_names_the_flag_and_the_folder() {
    let dir = scratch("outside");
    let here = dir.display().to_string();
    for args in [&["demo", "--events", "10"][..], &["rules", "test", "."], &["rules", "check", "."]] {
        let o = vigil_in(&dir, args);
        assert_eq!(
            error_line(&o),
            format!(
                "error: cannot read pipelines/demo.toml: No such file or directory (os error 2); give --pipeline FILE \
                 (a relative path is read from the current folder, {here})"
            ),
            "{args:?}"
        );
    }
    // In the rules folder: no check without the features, so no false unknown names.
    let o = vigil_in(&common::repo().join("rules"), &["rules", "check", "."]);
    assert!(error_line(&o).contains("give --pipeline FILE"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("unknown name"), "{}", stderr(&o));
    let o = vigil_in(&common::repo().join("rules"), &["rules", "check", ".", "--pipeline", "../pipelines/demo.toml"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn an_error_says_its_cause_once() {
    let o = vigil(&["backtest", "--rules", "rules", "--history", "nope.parquet"]);
    assert_eq!(error_line(&o), "error: cannot read nope.parquet: No such file or directory (os error 2)");
    let o = vigil(&["rules", "check", "nope/"]);
    assert_eq!(error_line(&o), "error: nope/: cannot read: No such file or directory (os error 2)");
    // Rules that do not check, run as tests: every problem once, on its own line.
    let dir = scratch("broken-rules");
    std::fs::write(dir.join("a.rules"), "rule a when amount > card_count_10m then review A\n").unwrap();
    let path = dir.display().to_string();
    let o = vigil(&["rules", "test", &path]);
    let text = stderr(&o);
    assert_eq!(text.matches("cannot compare money with a count").count(), 1, "{text}");
    assert!(text.contains(&format!("rules do not check:\n{path}/a.rules:1:20: cannot compare")), "{text}");
}

#[test]
fn a_taken_address_names_the_flag() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let o = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["serve", "--pipeline", "pipelines/demo.toml", "--listen", &address])
        .current_dir(common::repo())
        .env("VIGIL_DEMO_SECRET", "0123456789abcdef0123456789abcdef")
        .output()
        .unwrap();
    assert_eq!(
        error_line(&o),
        format!(
            "error: cannot listen on {address}: Address already in use (os error 98); another server holds it: give \
             --listen ADDR, or change api.listen"
        )
    );
}

#[test]
fn an_unreachable_broker_is_said_once() {
    let p = TestPipeline::local("unreachable-cli").set("kafka.brokers", "127.0.0.1:1");
    let dir = scratch("broker");
    let file = dir.join("p.toml");
    let text = p.text().replace("path = \"../", &format!("path = \"{}/", common::repo().display()));
    std::fs::write(&file, text).unwrap();
    let o = vigil(&["topics", "create", "--pipeline", file.to_str().unwrap()]);
    let line = error_line(&o);
    assert!(line.starts_with("error: cannot reach Kafka at 127.0.0.1:1: "), "{line}");
    assert_eq!(line.matches("127.0.0.1:1").count(), 1, "{line}");
}

#[test]
fn validate_lists_every_problem_of_every_kind_with_its_place() {
    let bad = TestPipeline::shipped("local.toml")
        .add("features[0].windw", "10m")
        .set("features[1].aggregate", "cuont")
        .set("features[2].window", "10 minutes")
        .add("kafka.batch", 10)
        .set("rules.path", format!("{}/rules", common::repo().display()));
    let dir = scratch("validate");
    std::fs::write(dir.join("bad.toml"), bad.text()).unwrap();
    let o = vigil_in(&dir, &["validate", "--pipeline", "bad.toml"]);
    let text = stderr(&o);
    assert!(!o.status.success());
    for expected in [
        "features[0].windw: unknown field `windw`; did you mean `window`? (known here: name, entity, aggregate, \
         window, of, delay, time_zone)",
        "kafka.batch: unknown field `batch`; did you mean `batch_size`?",
        "features[1].aggregate: unknown aggregate `cuont`",
        "; did you mean `count`?",
        "features[2].window: `10 minutes` has unknown unit",
    ] {
        assert!(text.contains(expected), "`{expected}` missing from:\n{text}");
    }
    assert_eq!(text.lines().filter(|l| l.starts_with("bad.toml:")).count(), 4, "{text}");
}

#[test]
fn a_type_mismatch_says_which_side_is_which_and_how_to_fix_it() {
    let dir = scratch("rule");
    let file = dir.join("r.rules");
    std::fs::write(&file, "rule a when amount > card_count_10m then review A\n").unwrap();
    let o = vigil(&["rules", "check", file.to_str().unwrap()]);
    assert_eq!(
        error_line(&o),
        format!(
            "error: {}:1:20: cannot compare money with a count: `amount` on the left is money, `card_count_10m` on \
             the right is a count; compare money with money (`amount`, an amount feature, or a number such as \
             250.00), and a count with a count or a whole number such as 3",
            file.display()
        )
    );
}

/// A generated history without its label columns.
fn unlabelled(dir: &Path) -> PathBuf {
    let labelled = dir.join("labelled.jsonl");
    let o = vigil(&["gen", "--events", "500", "--inline-labels", "--out", labelled.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text: String = std::fs::read_to_string(&labelled)
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            for k in ["is_fraud", "fraud_scenario", "fraud_reported_at"] {
                v.as_object_mut().unwrap().remove(k);
            }
            format!("{v}\n")
        })
        .collect();
    let path = dir.join("history.jsonl");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_history_without_labels_is_said_with_its_column_and_flag() {
    let dir = scratch("labels");
    let history = unlabelled(&dir);
    let h = history.to_str().unwrap();
    let why = |needed: &str| {
        format!(
            "{h}: no labels (no `is_fraud` column), so {needed}; give --label COLUMN if the labels are in another \
             column"
        )
    };
    let o = vigil(&["backtest", "--rules", "rules", "--history", h]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains(&format!("warning: {}", why("precision and recall are unknown"))), "{}", stderr(&o));
    assert!(stdout(&o).contains(&why("precision and recall are unknown")), "{}", stdout(&o));
    let o = vigil(&["evaluate", "--model", "models/card-fraud.json", "--history", h]);
    assert_eq!(error_line(&o), format!("error: {}", why("there is nothing to evaluate the model against")));
}

#[test]
fn a_backtest_names_its_pipeline_and_model_and_where_speaks_sql() {
    let dir = scratch("where");
    let history = dir.join("h.jsonl");
    let h = history.to_str().unwrap();
    assert!(vigil(&["gen", "--events", "500", "--inline-labels", "--out", h]).status.success());
    let o = vigil(&["backtest", "--rules", "rules", "--history", h]);
    assert!(stdout(&o).contains("\npipeline pipelines/demo.toml, model card-fraud-gbdt@"), "{}", stdout(&o));
    let o = vigil(&["backtest", "--rules", "rules", "--history", h, "--where", "channel = \"ecom\""]);
    let line = error_line(&o);
    assert!(line.starts_with("error: --where `channel = \"ecom\"`: No field named ecom. Valid fields are "), "{line}");
    assert!(line.ends_with("(in SQL, text takes single quotes: 'ecom'; double quotes name a column)"), "{line}");
    for internal in ["bad training data", "?table?", "vigil_row"] {
        assert!(!line.contains(internal), "{line}");
    }
}

#[test]
fn train_does_not_replace_the_shipped_model_unasked() {
    let dir = scratch("train");
    for part in ["pipelines", "rules", "models"] {
        let to = dir.join(part);
        std::fs::create_dir_all(&to).unwrap();
        for f in std::fs::read_dir(common::repo().join(part)).unwrap().flatten() {
            if f.path().is_file() {
                std::fs::copy(f.path(), to.join(f.file_name())).unwrap();
            }
        }
        std::fs::create_dir_all(dir.join("rules/lists")).unwrap();
    }
    let before = std::fs::read(dir.join("models/card-fraud.json")).unwrap();
    let o = vigil_in(&dir, &["train", "--events", "2000"]);
    assert_eq!(
        error_line(&o),
        "error: models/card-fraud.json exists (the shipped model): give --out FILE to write the new model \
         elsewhere, or --out models/card-fraud.json to replace it"
    );
    assert_eq!(std::fs::read(dir.join("models/card-fraud.json")).unwrap(), before);
}

/// A feature table's columns are the inputs: training on one needs no
/// pipeline, so it works from any folder.
#[test]
fn a_table_trains_outside_the_repository() {
    let dir = scratch("table");
    let rows: String = (0..400)
        .map(|i| format!("{},{}\n", f64::from(i % 13) + f64::from(u8::from(i % 10 == 0)) * 20.0, u8::from(i % 10 == 0)))
        .collect();
    std::fs::write(dir.join("t.csv"), format!("x,label\n{rows}")).unwrap();
    let o = vigil_in(&dir, &["train", "--history", "t.csv", "--features", "x", "--label", "label", "--out", "m.json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(dir.join("m.json").exists());
}

#[test]
fn sign_warns_about_a_final_newline() {
    let dir = scratch("sign");
    let body = dir.join("body.json");
    std::fs::write(&body, "{\"transaction_id\":\"t\"}\n").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["sign", "--client", "demo", "--secret-env", "VIGIL_MESSAGES_SECRET", body.to_str().unwrap()])
        .env("VIGIL_MESSAGES_SECRET", "0123456789abcdef0123456789abcdef")
        .output()
        .unwrap();
    assert!(o.status.success());
    assert!(stdout(&o).starts_with("client=demo,t="), "{}", stdout(&o));
    assert_eq!(
        stderr(&o).trim_end(),
        format!(
            "warning: {} ends in a newline, which the signature covers: send the body byte for byte (curl \
             --data-binary @FILE); curl -d @FILE strips newlines and the request would get 401",
            body.display()
        )
    );
}

#[test]
fn every_option_of_every_command_says_what_it_is() {
    let help = stdout(&vigil(&["--help"]));
    let commands: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    assert!(commands.len() >= 14, "{help}");
    let mut bare = Vec::new();
    for c in &commands {
        let sub = stdout(&vigil(&[c, "--help"]));
        let nested: Vec<String> = sub
            .lines()
            .skip_while(|l| !l.starts_with("Commands:"))
            .skip(1)
            .take_while(|l| l.starts_with("  "))
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .filter(|n| n != "help")
            .collect();
        let pages = if nested.is_empty() {
            vec![(c.to_string(), sub)]
        } else {
            nested.iter().map(|n| (format!("{c} {n}"), stdout(&vigil(&[c, n, "--help"])))).collect()
        };
        for (name, page) in pages {
            // An option or argument line starts with `-` or `<` (after its
            // indent); its help follows on the same line, or on the next,
            // further indented.
            let lines: Vec<&str> = page.lines().collect();
            let is_option = |t: &str| (t.starts_with('-') && !t.starts_with("- ")) || t.starts_with('<');
            for (i, line) in lines.iter().enumerate() {
                let t = line.trim_start();
                // `- value` lines list a value's choices, not options.
                if !is_option(t) || t.contains("--help") || t.contains("--version") {
                    continue;
                }
                let same_line = t.split("  ").filter(|p| !p.trim().is_empty()).count() > 1;
                let next = lines.get(i + 1).map(|l| l.trim_start()).unwrap_or_default();
                let next_line = !next.is_empty() && !is_option(next);
                if !same_line && !next_line {
                    bare.push(format!("{name}: {}", t.trim()));
                }
            }
        }
    }
    assert!(bare.is_empty(), "options without help:\n{}", bare.join("\n"));
}

#[test]
fn gen_refuses_a_format_its_file_contradicts_and_takes_a_date() {
    let dir = scratch("gen");
    let out = dir.join("x.parquet");
    let o = vigil(&["gen", "--events", "5", "--format", "csv", "--out", out.to_str().unwrap()]);
    assert_eq!(
        error_line(&o),
        format!(
            "error: --format csv but --out {} names another format: drop --format, or give the file the \
             extension of the format",
            out.display()
        )
    );
    assert!(!out.exists());
    let o = vigil(&["gen", "--events", "5", "--start", "2026-02-01"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("\"timestamp\":\"2026-02-"), "{}", stdout(&o));
}

#[test]
fn logs_off_a_terminal_are_plain_text() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["serve", "--pipeline", "pipelines/demo.toml", "--listen", "127.0.0.1:0"])
        .current_dir(common::repo())
        .env("VIGIL_DEMO_SECRET", "0123456789abcdef0123456789abcdef")
        .env("VIGIL_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = child.stderr.take().unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while !seen.contains("serving decisions") {
        let n = std::io::Read::read(&mut err, &mut buf).unwrap();
        assert!(n > 0, "the server stopped: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(seen.contains("engine ready"), "{seen}");
    assert!(!seen.contains('\u{1b}'), "colour codes in a log that is not a terminal: {seen:?}");
}
