//! The review pages end to end in a real headless browser (Debian's
//! chromium driven by playwright-core: `scripts/browser.sh` installs both):
//! `vigil review serve` on the test PostgreSQL, an analyst logs in, claims
//! with the keyboard, notes, stops a payment, and the database shows the
//! verdict, its resolution in the outbox and the chained audit entries.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `serve` (a `vigil review serve` command) from the repository's
/// root, its log in `dir/serve.log`, and waits until it is ready on `listen`;
/// the server and its base URL.
async fn serve_until_ready(mut serve: Command, listen: &str, dir: &std::path::Path) -> (Server, String) {
    let log = std::fs::File::create(dir.join("serve.log")).unwrap();
    let server = Server(serve.current_dir(repo()).stdout(Stdio::null()).stderr(log).spawn().unwrap());
    let base = format!("http://{listen}");
    let start = Instant::now();
    while reqwest::get(format!("{base}/readyz")).await.map(|r| r.status().is_success()).ok() != Some(true) {
        let log = std::fs::read_to_string(dir.join("serve.log")).unwrap_or_default();
        assert!(start.elapsed() < Duration::from_secs(30), "vigil review serve did not become ready:\n{log}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (server, base)
}

fn review(tx: &str, card: &str, amount: &str, score: f64) -> String {
    serde_json::json!({
        "transaction_id": tx, "decision": "review", "score": score,
        "reasons": [{"rule": "card_burst", "code": "CARD_VELOCITY", "action": "review", "score": score}],
        "rules_version": "r1", "model_version": "m1", "model_score": 0.4, "model_baseline": 0.02,
        "model_factors": [{"input": "card_count_1h", "contribution": 1.7}],
        "features": {"card_count_1h": 3}, "latency_us": 100,
        "event": {"transaction_id": tx, "timestamp": "2026-12-04T10:00:00Z", "amount": amount, "currency": "EUR",
                  "merchant_id": "m-1", "terminal_id": "t-9", "country": "FR", "card_id": card}
    })
    .to_string()
}

fn vigil(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vigil"));
    c.args(args).current_dir(repo());
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    assert!(out.status.success(), "vigil {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

#[tokio::test]
async fn an_analyst_logs_in_claims_notes_and_stops_a_payment_in_a_real_browser() {
    let script = repo().join("tests/browser/review.mjs");
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists()
            && repo().join("tests/browser/node_modules/playwright-core").exists(),
        "the browser test needs chromium and playwright-core: run `bash scripts/browser.sh` (scripts/test.sh does)"
    );
    let name = format!("review_browser_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let (db, settings) = schema(&name).await;
    let dir = repo().join("target").join(&name);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("decisions.jsonl");
    let lines = [
        review("tx-b1", "card-1", "40.00", 70.0),
        review("tx-b2", "card-1", "95.10", 80.0),
        review("tx-b3", "card-2", "12.00", 55.0),
    ];
    std::fs::write(&file, lines.join("\n")).unwrap();
    let demo = "pipelines/demo.toml";
    vigil(
        &["review", "ingest", "--pipeline", demo, "--database", &settings, "--decisions", file.to_str().unwrap()],
        &[],
    );
    let password = "ana's long password";
    vigil(
        &[
            "review",
            "user",
            "add",
            "--database",
            &settings,
            "--name",
            "ana",
            "--role",
            "analyst",
            "--password-env",
            "VIGIL_TEST_PASSWORD",
        ],
        &[("VIGIL_TEST_PASSWORD", password)],
    );

    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut serve = Command::new(env!("CARGO_BIN_EXE_vigil"));
    serve.args(["review", "serve", "--pipeline", demo, "--database", &settings, "--no-follow", "--listen", &listen]);
    let (_server, base) = serve_until_ready(serve, &listen, &dir).await;

    let shot = repo().join("target/review-browser-failure.png");
    let run = Command::new("node").arg(&script).args([&base, "ana", password]).arg(&shot).output().unwrap();
    assert!(
        run.status.success(),
        "the browser run failed (screenshot: {}):\n{}\n--- server log:\n{}",
        shot.display(),
        String::from_utf8_lossy(&run.stderr),
        std::fs::read_to_string(dir.join("serve.log")).unwrap_or_default()
    );
    let did: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    let tx = did["transaction"].as_str().unwrap().to_owned();
    assert_eq!(tx, "tx-b1", "claim-next gave the most urgent case and the keyboard its first payment");

    let row = db
        .query_one("SELECT verdict, verdict_by, resolution, case_id FROM payments WHERE transaction_id = $1", &[&tx])
        .await
        .unwrap();
    let (verdict, by, resolution, case): (Option<String>, Option<String>, Option<String>, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!((verdict.as_deref(), by.as_deref(), resolution.as_deref()), (Some("fraud"), Some("ana"), Some("stop")));
    assert_eq!(Some(case), did["case"].as_i64());
    let tagged: i64 = db
        .query_one("SELECT count(*) FROM case_tags WHERE tag = 'bulk-checked' AND added_by = 'ana'", &[])
        .await
        .unwrap()
        .get(0);
    let open: i64 = db.query_one("SELECT count(*) FROM cases WHERE status = 'open'", &[]).await.unwrap().get(0);
    assert_eq!((Some(tagged), tagged), (did["bulk_tagged"].as_i64(), open), "the bulk form tagged every open case");
    let outbox: i64 =
        db.query_one("SELECT count(*) FROM resolutions WHERE transaction_id = $1", &[&tx]).await.unwrap().get(0);
    assert_eq!(outbox, 1, "one resolution waits in the outbox");
    let actions: Vec<String> = db
        .query("SELECT action FROM audit_log WHERE actor = 'ana' ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(actions, ["login_failed", "login", "claim", "note", "verdict", "tag", "tag"]);
    let chain = vigil(&["review", "audit", "verify", "--database", &settings], &[]);
    assert!(String::from_utf8_lossy(&chain.stdout).contains("audit chain holds"));
    db.batch_execute(&format!("DROP SCHEMA {name} CASCADE")).await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A process killed when the test ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn analysts_log_in_through_an_openid_connect_provider_in_a_real_browser() {
    let browser = repo().join("tests/browser");
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists() && browser.join("node_modules/oidc-provider").exists(),
        "the single sign-on test needs chromium, playwright-core and oidc-provider: run `bash scripts/browser.sh`"
    );
    let name = format!("review_sso_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let (db, settings) = schema(&name).await;
    let dir = repo().join("target").join(&name);
    std::fs::create_dir_all(&dir).unwrap();
    let (idp_port, port) = (free_port(), free_port());
    let (listen, issuer) = (format!("127.0.0.1:{port}"), format!("http://127.0.0.1:{idp_port}"));
    let callback = format!("http://{listen}/review/oidc/callback");

    // The provider first: the review server reads its discovery document at start.
    let mut idp = Killed(
        Command::new("node")
            .arg(browser.join("oidc-provider.mjs"))
            .args([&idp_port.to_string(), "vigil-review", "the client's long secret", &callback])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut said = String::new();
    use std::io::BufRead as _;
    // Kept open to the end: a provider writing to a closed pipe would die.
    let mut idp_out = std::io::BufReader::new(idp.0.stdout.take().unwrap());
    idp_out.read_line(&mut said).unwrap();
    assert_eq!(said.trim(), "listening", "the identity provider did not start");

    let mut oidc = toml::Table::new();
    oidc.insert("issuer".into(), issuer.clone().into());
    oidc.insert("client_id".into(), "vigil-review".into());
    oidc.insert("client_secret_env".into(), "VIGIL_TEST_OIDC_SECRET".into());
    oidc.insert("redirect_url".into(), callback.clone().into());
    let mut review = toml::Table::new();
    review.insert("oidc".into(), oidc.into());
    let pipeline = TestPipeline::shipped("demo.toml").add("review", review);
    let file = repo().join(format!("pipelines/.test-{name}.toml"));
    std::fs::write(&file, pipeline.text()).unwrap();
    let mut serve = Command::new(env!("CARGO_BIN_EXE_vigil"));
    serve
        .args(["review", "serve", "--pipeline"])
        .arg(&file)
        .args(["--database", &settings, "--no-follow", "--listen", &listen])
        .env("VIGIL_TEST_OIDC_SECRET", "the client's long secret");
    let (_server, base) = serve_until_ready(serve, &listen, &dir).await;
    let shot = repo().join("target/review-sso-failure.png");
    let run = Command::new("node").arg(browser.join("review-sso.mjs")).arg(&base).arg(&shot).output().unwrap();
    assert!(
        run.status.success(),
        "the single sign-on run failed (screenshot: {}):\n{}\n--- server log:\n{}",
        shot.display(),
        String::from_utf8_lossy(&run.stderr),
        std::fs::read_to_string(dir.join("serve.log")).unwrap_or_default()
    );

    // One account, the provider's, with the role its claim gave; no password.
    let row = db
        .query_one("SELECT role, oidc_issuer, oidc_subject, password_hash IS NULL FROM users WHERE name = 'lee'", &[])
        .await
        .unwrap();
    let (role, iss, sub, no_password): (String, String, String, bool) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!((role.as_str(), iss, sub.as_str(), no_password), ("lead", issuer, "lee", true));
    let users: i64 = db.query_one("SELECT count(*) FROM users", &[]).await.unwrap().get(0);
    assert_eq!(users, 1, "the account without a role was not made");
    let actions: Vec<(String, String)> = db
        .query("SELECT actor, action FROM audit_log ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(actions, [("lee".to_owned(), "add_user".to_owned()), ("lee".to_owned(), "login".to_owned())]);
    let left: i64 = db.query_one("SELECT count(*) FROM oidc_logins", &[]).await.unwrap().get(0);
    assert_eq!(left, 0, "each login's state was taken once");
    drop(idp_out);
    std::fs::remove_file(&file).ok();
    db.batch_execute(&format!("DROP SCHEMA {name} CASCADE")).await.unwrap();
}
