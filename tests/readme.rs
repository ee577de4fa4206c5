//! The README's commands, run as a newcomer runs them: every shell block, in
//! order, from a copy of the repository's root, against the test broker and
//! Redis. What the harness changes, and only that:
//! - the debug binary stands for `cargo run --release --` and
//!   `./target/release/vigil` (`cargo build --release` is skipped);
//! - histories are ten times smaller (`--events 200000` becomes 20000, and a
//!   training run on generated events gets `--events 20000`), so that the
//!   debug build runs them within the suite;
//! - the copy's `pipelines/local.toml` has this test's own topics, consumer
//!   group and Redis prefix;
//! - `vigil run` gets Ctrl-C (SIGINT) after 20 seconds, as the README says to
//!   stop it, and a server started in the background is waited for before
//!   the next line, and stopped at the end;
//! - `bash scripts/test.sh` (this very suite) is not run.

mod common;

use std::path::Path;
use std::process::Command;

/// The shell blocks of a Markdown text: fenced blocks with no language whose
/// first line is a command.
fn shell_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        let fence = line.trim_end().strip_prefix("```");
        match (&mut current, fence) {
            // A block in another language (```toml) is no shell block.
            (None, Some(language)) => current = Some(if language.is_empty() { String::new() } else { "#".into() }),
            (None, None) => {}
            (Some(block), Some(_)) => {
                let first = block.lines().next().unwrap_or_default();
                let command =
                    ["cargo ", "bash ", "V=", "$V ", "./target/", "export "].iter().any(|c| first.starts_with(c));
                if command {
                    blocks.push(std::mem::take(block));
                }
                current = None;
            }
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
        }
    }
    blocks
}

/// One README line as the harness runs it (module docs).
fn adapt(line: &str) -> Option<String> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') || line == "cargo build --release" || line == "bash scripts/test.sh" {
        return None;
    }
    let mut l = line
        .replace("cargo run --release --", "\"$VIGIL\"")
        .replace("V=./target/release/vigil", "V=\"$VIGIL\"")
        .replace("./target/release/vigil", "\"$VIGIL\"")
        .replace("--events 200000", "--events 20000");
    if l.contains(" train ") && !l.contains("--history") && !l.contains("--events") {
        l = l.replacen(" train ", " train --events 20000 ", 1);
    }
    if l.contains("$V run ") {
        let command = l.split(" #").next().unwrap_or(&l).to_owned();
        l = format!("timeout -s INT 20 {command} || test $? -eq 124");
    }
    if l.trim_end().ends_with('&') || l.contains("& ") && l.contains(" serve ") {
        let command = l.split(" #").next().unwrap_or(&l).trim_end().trim_end_matches('&').to_owned();
        l = format!(
            "{command} &\nfor _ in $(seq 300); do curl -sf http://127.0.0.1:8080/healthz >/dev/null && break; sleep 0.1; done"
        );
    }
    Some(l)
}

/// The README's blocks as one script, continued lines joined.
fn script(markdown: &str) -> String {
    let mut out = String::from("set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n");
    for block in shell_blocks(markdown) {
        let joined = block.replace("\\\n", " ");
        for line in joined.lines() {
            if let Some(l) = adapt(line) {
                out.push_str(&format!("echo '+ {}'\n{l}\n", line.trim().replace('\'', "'\\''")));
            }
        }
    }
    out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else if !entry.file_name().to_string_lossy().starts_with(".test-") {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[test]
fn the_readme_commands_work_as_written() {
    let repo = common::repo();
    let dir = std::env::temp_dir().join(format!("vigil-readme-{}", uuid::Uuid::new_v4()));
    for part in ["pipelines", "rules", "models"] {
        copy_dir(&repo.join(part), &dir.join(part));
    }
    let local = common::TestPipeline::local("readme");
    std::fs::write(dir.join("pipelines/local.toml"), local.text()).unwrap();
    let readme = std::fs::read_to_string(repo.join("README.md")).unwrap();
    let script = script(&readme);
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(&dir)
        .env("VIGIL", env!("CARGO_BIN_EXE_vigil"))
        .env("VIGIL_LOG", "warn")
        .output()
        .unwrap();
    let text = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the README's commands failed:\n{script}\n---\n{text}");
    for shown in [
        "Vigil demo: 100000 generated payments decided",
        "pipeline `local` is valid",
        "produced 10000 records",
        "published 1 label(s)",
        "AUC-ROC",
        "\"transaction_id\":\"tx-1\"",
    ] {
        assert!(text.contains(shown), "`{shown}` missing from:\n{text}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    let config = local.config();
    let prefix = config.store.key_prefix.clone();
    tokio::runtime::Runtime::new().unwrap().block_on(common::clean_redis(&prefix));
}
