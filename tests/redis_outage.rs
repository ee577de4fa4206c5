//! The stream rides out a stalled Redis: batches wait and retry, nothing is lost,
//! nothing is counted twice. Uses a private redis-server so other tests are unaffected.

mod common;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use vigil_core::{Decision, Event};
use vigil_engine::Engine;
use vigil_gen::GenConfig;

struct PrivateRedis(Child);

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn private_redis() -> (PrivateRedis, String) {
    private_redis_on(free_port()).await
}

async fn private_redis_on(port: u16) -> (PrivateRedis, String) {
    // Owned by the guard at once, so every path (panics included) stops it.
    let guard = PrivateRedis(
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/services.sh installs it)"),
    );
    let url = format!("redis://127.0.0.1:{port}");
    let client = redis::Client::open(url.as_str()).unwrap();
    for _ in 0..100 {
        if client.get_multiplexed_async_connection().await.is_ok() {
            return (guard, url);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("private redis on {port} did not start");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_redis_delays_decisions_but_loses_and_double_counts_nothing() {
    let (_redis, url) = private_redis().await;
    let mut config = pipeline("outage");
    config.store.backend = vigil_core::pipeline::StoreBackend::Redis { url: url.clone() };
    config.store.timeout_ms = 200;
    let kafka = config.kafka.clone().unwrap();
    vigil_kafka::create_topics(&kafka, 4).await.unwrap();
    let gen = GenConfig { seed: 5, events: 4_000, cards: 400, merchants: 60, days: 5, ..GenConfig::default() };
    let events: Vec<Event> = vigil_gen::generate(&gen).into_iter().map(|l| l.event).collect();
    let lines = |r: std::ops::Range<usize>| events[r].iter().map(Event::to_json).collect::<Vec<_>>().into_iter();
    vigil_kafka::produce_lines(&kafka, &kafka.input_topic, lines(0..1_000)).await.unwrap();

    let run = start(&config, Arc::new(Engine::connect(&config).await.unwrap()));
    let stats = run.stats.clone();
    wait_until(Duration::from_secs(120), "the first events decided", || stats.decided.load(Ordering::SeqCst) >= 1_000)
        .await;

    // Stall Redis for three seconds while the rest of the traffic arrives.
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("CLIENT").arg("PAUSE").arg(3000).arg("ALL").query_async(&mut conn).await.unwrap();
    vigil_kafka::produce_lines(&kafka, &kafka.input_topic, lines(1_000..4_000)).await.unwrap();

    wait_until(Duration::from_secs(180), "every event decided", || stats.decided.load(Ordering::SeqCst) >= 4_000).await;
    wait_until(Duration::from_secs(60), "every decision delivered", || stats.delivered.load(Ordering::SeqCst) >= 4_000)
        .await;
    run.finish().await.unwrap();
    assert!(stats.store_retries.load(Ordering::SeqCst) > 0, "Redis never failed: {:?}", stats.snapshot());

    let out =
        decisions(&read_all(&kafka.decisions_topic, 4_000, Duration::from_secs(10), Duration::from_secs(120)).await);
    let by_id: HashMap<&str, &Decision> = out.iter().map(|d| (d.transaction_id.as_str(), d)).collect();
    assert_eq!(out.len(), 4_000, "one decision per event");
    assert_eq!(by_id.len(), 4_000);

    // Features as if Redis had never stalled.
    for (e, fv) in events.iter().zip(reference_features(&config, &events)) {
        let d = by_id[e.transaction_id.as_str()];
        for (def, v) in config.features.iter().zip(&fv.values) {
            if def.entity.to_string().starts_with("card_id") {
                assert_eq!(as_json(&d.features[&def.name]), as_json(v), "{} of {}", def.name, e.transaction_id);
            }
        }
    }
}

/// `vigil run --store-wait`: an instance started while Redis is down (as an
/// orchestrator restarts one during an outage) waits for it, then decides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vigil_run_started_before_redis_waits_for_it_and_then_decides() {
    let port = free_port();
    let text = TestPipeline::local("wait").set("store.redis_url", format!("redis://127.0.0.1:{port}")).text();
    let config = vigil_core::PipelineConfig::parse(&repo().join("pipelines/test.toml"), &text).unwrap();
    let file = repo().join(format!("pipelines/.test-{}.toml", config.store.key_prefix));
    std::fs::write(&file, &text).unwrap();
    let kafka = config.kafka.clone().unwrap();
    vigil_kafka::create_topics(&kafka, 2).await.unwrap();
    let gen = GenConfig { seed: 9, events: 300, cards: 50, merchants: 10, days: 2, ..GenConfig::default() };
    let events: Vec<Event> = vigil_gen::generate(&gen).into_iter().map(|l| l.event).collect();
    vigil_kafka::produce_lines(&kafka, &kafka.input_topic, events.iter().map(Event::to_json)).await.unwrap();

    let log = std::env::temp_dir().join(format!("vigil-store-wait-{port}.log"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["run", "--pipeline", file.to_str().unwrap(), "--store-wait", "120"])
        .current_dir(repo())
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let logged = |what: &str| std::fs::read_to_string(&log).unwrap_or_default().contains(what);
    wait_until(Duration::from_secs(60), "the instance saying it waits for the store", || {
        logged("waiting for it (--store-wait)")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "vigil run exited while waiting: {}",
        std::fs::read_to_string(&log).unwrap()
    );

    let (_redis, _) = private_redis_on(port).await;
    let out = decisions(&read_all(&kafka.decisions_topic, 300, Duration::from_secs(5), Duration::from_secs(120)).await);
    let _ = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
    let status = child.wait().unwrap();
    let logs = std::fs::read_to_string(&log).unwrap();
    std::fs::remove_file(&file).ok();
    assert!(status.success(), "vigil run stopped with {status}: {logs}");
    assert_eq!(out.len(), 300, "{logs}");
    assert!(out.iter().all(|d| !d.degraded && !d.replayed), "{logs}");
    std::fs::remove_file(&log).ok();
}
