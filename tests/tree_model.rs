//! A gradient-boosted tree model where the engine serves it: as champion
//! and as challenger, explained on every decision, swapped while serving, and
//! a damaged file refused while the last good one keeps deciding. No server:
//! the engine on its in-memory store, as `vigil run` and `vigil serve` build it.

use vigil_core::pipeline::ModelConfig;
use vigil_core::{Event, PipelineConfig};
use vigil_engine::{Engine, Options};
use vigil_model::{GbdtParams, TrainParams};
use vigil_offline::TrainConfig;

mod common;

fn logit(p: f64) -> f64 {
    (p / (1.0 - p)).ln()
}

#[tokio::test]
async fn a_tree_model_decides_explains_itself_swaps_and_refuses_a_damaged_file() {
    let root = common::repo();
    let mut config = PipelineConfig::load(&root.join("pipelines/demo.toml")).unwrap();
    let data =
        vigil_gen::GenConfig { events: 6_000, cards: 300, merchants: 40, days: 4, seed: 5, ..Default::default() };
    let train = TrainConfig {
        data: data.clone(),
        params: TrainParams::GradientBoostedTrees(GbdtParams::new().n_trees(40).seed(5)),
        ..TrainConfig::default()
    };
    let report = vigil_offline::train_on_generated(&config.features, &train).unwrap();
    let dir = std::env::temp_dir().join(format!("vigil-tree-model-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let trees = dir.join("trees.json");
    std::fs::write(&trees, report.model.to_file_json()).unwrap();

    // The trees decide; the shipped logistic regression is their challenger.
    config.model =
        Some(ModelConfig { path: trees.clone(), weight: 100.0, challenger: Some(root.join("models/card-fraud.json")) });
    let engine = Engine::in_memory(&config).unwrap();
    let events: Vec<Event> = vigil_gen::generate(&vigil_gen::GenConfig { seed: 6, ..data })
        .into_iter()
        .map(|l| l.event)
        .take(1_500)
        .collect();
    let refs: Vec<&Event> = events.iter().collect();
    let decisions = engine.decide(&refs, Options::online()).await.unwrap();
    let version = decisions[0].model_version.clone().unwrap();
    assert!(version.contains("@"), "{version}");
    let mut explained = 0;
    for d in &decisions {
        assert_eq!(d.model_version.as_deref(), Some(version.as_str()));
        let challenger = d.challenger.as_ref().expect("the challenger is scored on every decision");
        assert!(challenger.model_version.starts_with("card-fraud-logistic@"), "{challenger:?}");
        // Path attributions against the trees' baseline add up to the score's
        // log-odds, to the rounding of the reported parts (four places).
        let (score, baseline) = (d.model_score.unwrap(), d.model_baseline.expect("trees state their baseline"));
        let sum = d.model_factors.iter().map(|f| f.contribution).sum::<f64>() + d.model_factors_rest.unwrap();
        assert!((logit(baseline) + sum - logit(score)).abs() < 1e-3, "{d:?}");
        explained += usize::from(!d.model_factors.is_empty());
    }
    assert!(explained > decisions.len() / 2, "{explained} of {} decisions explained", decisions.len());

    // A damaged tree file is refused; the trees keep deciding.
    let text = std::fs::read_to_string(&trees).unwrap();
    let damaged = dir.join("damaged.json");
    std::fs::write(&damaged, text.replacen("\"right\": [", "\"right\": [7777,", 1)).unwrap();
    assert!(engine.reload_model(&damaged).is_err());
    let after = engine.decide(&refs[..1], Options::online()).await.unwrap();
    assert_eq!(after[0].model_version.as_deref(), Some(version.as_str()));
    // Other trees, swapped in while serving, decide the later events.
    let other =
        TrainConfig { params: TrainParams::GradientBoostedTrees(GbdtParams::new().n_trees(20).seed(9)), ..train };
    let next = dir.join("next.json");
    std::fs::write(&next, vigil_offline::train_on_generated(&config.features, &other).unwrap().model.to_file_json())
        .unwrap();
    let swapped = engine.reload_model(&next).unwrap();
    assert_ne!(swapped, version);
    let later = engine.decide(&refs[1..2], Options::online()).await.unwrap();
    assert_eq!(later[0].model_version.as_deref(), Some(swapped.as_str()));
    std::fs::remove_dir_all(&dir).ok();
}

/// The same through the `vigil serve` binary: trees decide a signed request
/// and explain it; a damaged file put in their place is refused on SIGHUP and
/// the trees keep deciding; a good new file is then taken.
#[tokio::test]
async fn vigil_serve_decides_with_trees_and_swaps_them_on_hangup() {
    const SECRET: &str = "tree-serve-secret-0123456789";
    let root = common::repo();
    let features = PipelineConfig::load(&root.join("pipelines/demo.toml")).unwrap().features;
    let data =
        vigil_gen::GenConfig { events: 4_000, cards: 200, merchants: 30, days: 3, seed: 5, ..Default::default() };
    let trained = |trees: usize, seed: u64| {
        let train = TrainConfig {
            data: data.clone(),
            params: TrainParams::GradientBoostedTrees(GbdtParams::new().n_trees(trees).seed(seed)),
            ..TrainConfig::default()
        };
        vigil_offline::train_on_generated(&features, &train).unwrap().model.to_file_json()
    };
    let dir = std::env::temp_dir().join(format!("vigil-tree-serve-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let model = dir.join("trees.json");
    std::fs::write(&model, trained(30, 5)).unwrap();
    let pipeline = dir.join("pipeline.toml");
    let text = common::TestPipeline::shipped("demo.toml")
        .set("rules.path", root.join("rules").display().to_string())
        .set("model.path", model.display().to_string())
        .without("api.clients[0].secrets_env")
        .add("api.clients[0].secrets", vec![SECRET])
        .text();
    std::fs::write(&pipeline, text).unwrap();
    let port = common::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut server = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["serve", "--pipeline", pipeline.to_str().unwrap(), "--listen", &format!("127.0.0.1:{port}")])
        .env("VIGIL_LOG", "warn")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The server's log, read as it comes: the refusal below must be seen there.
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let stderr = server.stderr.take().unwrap();
    let sink = log.clone();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            let mut log = sink.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
    let http = reqwest::Client::new();
    let mut up = false;
    for _ in 0..300 {
        if http.get(format!("{base}/healthz")).send().await.is_ok_and(|r| r.status().is_success()) {
            up = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(up, "vigil serve did not answer /healthz within 30 s");
    let mut n = 0;
    let mut decide = || {
        n += 1;
        let body = serde_json::json!({
            "transaction_id": format!("tree-serve-{n}"), "timestamp": "2026-01-05T10:00:00Z", "amount": "950.00",
            "currency": "EUR", "card_id": "c-serve", "terminal_id": "t-serve", "channel": "ecom", "country": "FR",
        })
        .to_string();
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
        let signature = vigil_api::auth::sign("demo", SECRET.as_bytes(), t, "POST", "/v1/decisions", body.as_bytes());
        let request = http.post(format!("{base}/v1/decisions")).header("vigil-signature", signature).body(body).send();
        async move {
            let r = request.await.unwrap();
            assert!(r.status().is_success(), "{}", r.status());
            r.json::<serde_json::Value>().await.unwrap()
        }
    };
    let hangup = |pid: u32| {
        let o = std::process::Command::new("kill").args(["-HUP", &pid.to_string()]).output().unwrap();
        assert!(o.status.success());
    };

    let first = decide().await;
    let version = first["model_version"].as_str().unwrap().to_owned();
    assert!(version.contains('@'), "{first}");
    let factors = first["model_factors"].as_array().expect("trees explain the decision");
    assert!(!factors.is_empty() && factors[0]["input"].is_string(), "{first}");
    assert!(first["model_baseline"].is_number() && first["model_factors_rest"].is_number(), "{first}");

    // A damaged file in the model's place: refused (said in the log), the
    // trees keep deciding.
    std::fs::write(&model, "{\"format_version\": 4, \"body\": ").unwrap();
    hangup(server.id());
    let mut refused = false;
    for _ in 0..150 {
        if log.lock().unwrap().contains("refused") {
            refused = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(refused, "no refusal logged within 15 s:\n{}", log.lock().unwrap());
    let after = decide().await;
    assert_eq!(after["model_version"].as_str(), Some(version.as_str()), "{after}");

    // Good new trees: taken on the next hangup.
    std::fs::write(&model, trained(20, 9)).unwrap();
    let mut swapped = None;
    for _ in 0..30 {
        hangup(server.id());
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let d = decide().await;
        if d["model_version"].as_str() != Some(version.as_str()) {
            swapped = Some(d);
            break;
        }
    }
    let swapped = swapped.expect("the new trees were not taken within 15 s");
    assert!(!swapped["model_factors"].as_array().unwrap().is_empty(), "{swapped}");
    server.kill().ok();
    server.wait().ok();
    std::fs::remove_dir_all(&dir).ok();
}
