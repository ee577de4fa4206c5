//! Editing rules under a running stream changes later decisions; a broken edit
//! changes nothing.

mod common;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use vigil_core::{Action, Decision, Event};
use vigil_engine::watch::{watch_rules, ReloadStats};
use vigil_engine::Engine;
use vigil_gen::GenConfig;

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let target = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &target);
        } else {
            std::fs::copy(&p, &target).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_rules_under_a_running_stream() {
    let rules = std::env::temp_dir().join(format!("vigil-reload-{}", uuid::Uuid::new_v4()));
    copy_dir(&repo().join("rules"), &rules);
    let mut config = pipeline("reload");
    config.rules_path = rules.clone();
    let kafka = config.kafka.clone().unwrap();
    vigil_stream::create_topics(&kafka, 4).await.unwrap();
    let gen = GenConfig { seed: 9, events: 600, cards: 200, merchants: 40, days: 3, ..GenConfig::default() };
    let events: Vec<Event> = vigil_gen::generate(&gen).into_iter().map(|l| l.event).collect();
    let batch = |i: usize| events[i * 200..(i + 1) * 200].iter().map(Event::to_json).collect::<Vec<_>>().into_iter();

    let engine = Arc::new(Engine::connect(&config).await.unwrap());
    let reloads = Arc::new(ReloadStats::default());
    let (stop_watch, watch_rx) = tokio::sync::oneshot::channel::<()>();
    let watcher =
        tokio::spawn(watch_rules(engine.clone(), rules.clone(), Duration::from_millis(200), reloads.clone(), async {
            let _ = watch_rx.await;
        }));
    let run = start(&config, engine.clone());
    let stats = run.stats.clone();
    let decided = |n: u64| {
        let stats = stats.clone();
        move || stats.delivered.load(Ordering::SeqCst) >= n
    };

    vigil_stream::produce_lines(&kafka, &kafka.input_topic, batch(0)).await.unwrap();
    wait_until(Duration::from_secs(120), "the first batch", decided(200)).await;
    let v1 = engine.rules().version().to_owned();

    let file = rules.join("velocity.rules");
    let mut text = std::fs::read_to_string(&file).unwrap();
    text.push_str("\nrule test_block_all\n  when amount >= 0\n  then decline TEST_BLOCK_ALL\n");
    std::fs::write(&file, &text).unwrap();
    wait_until(Duration::from_secs(30), "the edit to load", || reloads.reloaded.load(Ordering::SeqCst) >= 1).await;
    let v2 = engine.rules().version().to_owned();
    assert_ne!(v1, v2);
    vigil_stream::produce_lines(&kafka, &kafka.input_topic, batch(1)).await.unwrap();
    wait_until(Duration::from_secs(120), "the second batch", decided(400)).await;

    text.push_str("\nrule broken when amount >> 1 then decline BROKEN\n");
    std::fs::write(&file, &text).unwrap();
    wait_until(Duration::from_secs(30), "the broken edit to be refused", || {
        reloads.refused.load(Ordering::SeqCst) >= 1
    })
    .await;
    assert_eq!(engine.rules().version(), v2, "a broken edit replaced the rules");
    vigil_stream::produce_lines(&kafka, &kafka.input_topic, batch(2)).await.unwrap();
    wait_until(Duration::from_secs(120), "the third batch", decided(600)).await;

    run.finish().await.unwrap();
    stop_watch.send(()).unwrap();
    watcher.await.unwrap();

    let out =
        decisions(&read_all(&kafka.decisions_topic, 600, Duration::from_secs(10), Duration::from_secs(120)).await);
    let by_id: HashMap<&str, &Decision> = out.iter().map(|d| (d.transaction_id.as_str(), d)).collect();
    assert_eq!(by_id.len(), 600);
    for (i, e) in events.iter().enumerate() {
        let d = by_id[e.transaction_id.as_str()];
        let blocked = d.reasons.iter().any(|r| r.code == "TEST_BLOCK_ALL");
        if i < 200 {
            assert_eq!(d.rules_version, v1, "{}", e.transaction_id);
            assert!(!blocked);
        } else {
            assert_eq!(d.rules_version, v2, "{}", e.transaction_id);
            assert!(blocked && d.decision == Action::Decline, "{d:?}");
        }
    }
    let _ = std::fs::remove_dir_all(&rules);
    clean_redis(&config.store.key_prefix).await;
}
