//! Editing rules or replacing a model file under a running stream changes later
//! decisions; a broken edit or a corrupt model file changes nothing.

mod common;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use vigil_core::pipeline::KafkaConfig;
use vigil_core::{Action, Decision, Event};
use vigil_engine::watch::{watch_models, watch_rules, ModelRole, ReloadStats};
use vigil_engine::Engine;
use vigil_engine::Reloaded;
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

/// 600 generated payments, sent in three batches of 200.
fn traffic(seed: u64) -> Vec<Event> {
    let gen = GenConfig { seed, events: 600, cards: 200, merchants: 40, days: 3, ..GenConfig::default() };
    vigil_gen::generate(&gen).into_iter().map(|l| l.event).collect()
}

/// Sends batch `i` of `events` and waits until the stream has delivered it.
async fn send_batch(kafka: &KafkaConfig, events: &[Event], i: usize, stats: &vigil_stream::Stats) {
    let lines: Vec<Vec<u8>> = events[i * 200..(i + 1) * 200].iter().map(Event::to_json).collect();
    vigil_kafka::produce_lines(kafka, &kafka.input_topic, lines.into_iter()).await.unwrap();
    let delivered = 200 * (i as u64 + 1);
    wait_until(Duration::from_secs(120), &format!("batch {i} to be decided"), || {
        stats.delivered.load(Ordering::SeqCst) >= delivered
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_rules_under_a_running_stream() {
    let rules = std::env::temp_dir().join(format!("vigil-reload-{}", uuid::Uuid::new_v4()));
    copy_dir(&repo().join("rules"), &rules);
    let mut config = pipeline("reload");
    config.rules_path = rules.clone();
    let kafka = config.kafka.clone().unwrap();
    vigil_kafka::create_topics(&kafka, 4).await.unwrap();
    let events = traffic(9);

    let engine = Arc::new(Engine::connect(&config).await.unwrap());
    let reloads = Arc::new(ReloadStats::default());
    let (stop_watch, watch_rx) = tokio::sync::oneshot::channel::<()>();
    let watcher =
        tokio::spawn(watch_rules(engine.clone(), rules.clone(), Duration::from_millis(200), reloads.clone(), async {
            let _ = watch_rx.await;
        }));
    let run = start(&config, engine.clone());

    send_batch(&kafka, &events, 0, &run.stats).await;
    let v1 = engine.rules().version().to_owned();

    let file = rules.join("velocity.rules");
    let mut text = std::fs::read_to_string(&file).unwrap();
    text.push_str("\nrule test_block_all\n  when amount >= 0\n  then decline TEST_BLOCK_ALL\n");
    std::fs::write(&file, &text).unwrap();
    wait_until(Duration::from_secs(30), "the edit to load", || reloads.reloaded.load(Ordering::SeqCst) >= 1).await;
    let v2 = engine.rules().version().to_owned();
    assert_ne!(v1, v2);
    send_batch(&kafka, &events, 1, &run.stats).await;

    text.push_str("\nrule broken when amount >> 1 then decline BROKEN\n");
    std::fs::write(&file, &text).unwrap();
    wait_until(Duration::from_secs(30), "the broken edit to be refused", || {
        reloads.refused.load(Ordering::SeqCst) >= 1
    })
    .await;
    assert_eq!(engine.rules().version(), v2, "a broken edit replaced the rules");
    // What /metrics reports (`vigil_reloads_total`): every attempt, by outcome.
    let (taken, refused) = engine.reloads().of(Reloaded::Rules);
    assert!(taken >= 1 && refused >= 1, "reloads counted: {taken} taken, {refused} refused");
    assert_eq!(engine.reloads().of(Reloaded::Model), (0, 0));
    send_batch(&kafka, &events, 2, &run.stats).await;

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

/// The shipped model under another name, its intercept moved by `shift`: a
/// valid model file with another version and other scores.
fn variant(name: &str, shift: f64) -> String {
    let shipped = vigil_model::load_any(&repo().join("models/card-fraud.json")).unwrap();
    let mut body = shipped.body().clone();
    body.name = name.to_owned();
    let vigil_model::Algorithm::Logistic(logistic) = &mut body.algorithm else { panic!("a logistic regression") };
    logistic.intercept += shift;
    vigil_model::TrainedModel::new(body).unwrap().to_file_json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_the_model_file_under_a_running_stream() {
    let dir = std::env::temp_dir().join(format!("vigil-models-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let (champion, challenger) = (dir.join("champion.json"), dir.join("challenger.json"));
    std::fs::write(&champion, variant("champion-one", 0.0)).unwrap();
    std::fs::write(&challenger, variant("challenger", 2.0)).unwrap();
    let mut config = pipeline("model-reload");
    let model = config.model.as_mut().unwrap();
    model.path = champion.clone();
    model.challenger = Some(challenger.clone());
    let kafka = config.kafka.clone().unwrap();
    vigil_kafka::create_topics(&kafka, 4).await.unwrap();
    let events = traffic(10);

    let engine = Arc::new(Engine::connect(&config).await.unwrap());
    let v1 = engine.model_version().unwrap();
    let c1 = engine.challenger_version().unwrap();
    let reloads = Arc::new(ReloadStats::default());
    let (stop_watch, watch_rx) = tokio::sync::oneshot::channel::<()>();
    let files = vec![(ModelRole::Champion, champion.clone()), (ModelRole::Challenger, challenger.clone())];
    let watcher =
        tokio::spawn(watch_models(engine.clone(), files, Duration::from_millis(200), reloads.clone(), async {
            let _ = watch_rx.await;
        }));
    let run = start(&config, engine.clone());

    send_batch(&kafka, &events, 0, &run.stats).await;

    std::fs::write(&champion, variant("champion-two", 0.0)).unwrap();
    wait_until(Duration::from_secs(30), "the new model to load", || reloads.reloaded.load(Ordering::SeqCst) >= 1).await;
    let v2 = engine.model_version().unwrap();
    assert!(v2.starts_with("champion-two@"), "{v2}");
    send_batch(&kafka, &events, 1, &run.stats).await;

    // A half-written file, then one whose checksum does not match its content.
    std::fs::write(&champion, &variant("champion-three", 0.0)[..500]).unwrap();
    wait_until(Duration::from_secs(30), "the truncated file to be refused", || {
        reloads.refused.load(Ordering::SeqCst) >= 1
    })
    .await;
    std::fs::write(&champion, variant("champion-three", 0.0).replace("champion-three", "champion-tampered")).unwrap();
    wait_until(Duration::from_secs(30), "the tampered file to be refused", || {
        reloads.refused.load(Ordering::SeqCst) >= 2
    })
    .await;
    assert_eq!(engine.model_version().unwrap(), v2, "a corrupt file replaced the model");
    let (taken, refused) = engine.reloads().of(Reloaded::Model);
    assert!(taken >= 1 && refused >= 2, "model reloads counted: {taken} taken, {refused} refused");
    send_batch(&kafka, &events, 2, &run.stats).await;

    run.finish().await.unwrap();
    stop_watch.send(()).unwrap();
    watcher.await.unwrap();
    assert_eq!(reloads.reloaded.load(Ordering::SeqCst), 1);

    let out =
        decisions(&read_all(&kafka.decisions_topic, 600, Duration::from_secs(10), Duration::from_secs(120)).await);
    let by_id: HashMap<&str, &Decision> = out.iter().map(|d| (d.transaction_id.as_str(), d)).collect();
    assert_eq!(by_id.len(), 600);
    let mut higher = 0;
    for (i, e) in events.iter().enumerate() {
        let d = by_id[e.transaction_id.as_str()];
        let expected = if i < 200 { &v1 } else { &v2 };
        assert_eq!(d.model_version.as_ref(), Some(expected), "{}", e.transaction_id);
        // The challenger is scored on every decision and never decides.
        let c = d.challenger.as_ref().expect("every decision carries the challenger");
        assert_eq!(c.model_version, c1);
        let champion_score = d.model_score.unwrap();
        assert!(c.score >= champion_score, "{d:?}");
        higher += usize::from(c.score > champion_score);
        if c.decision != d.decision {
            // Only the model part differs: the decision follows the champion's score.
            let rules: f64 = d.reasons.iter().filter(|r| !r.shadow).map(|r| r.score).sum();
            assert!((d.score - (rules + champion_score * config.model.as_ref().unwrap().weight)).abs() < 1e-9);
        }
    }
    assert!(higher > 500, "the challenger's shifted intercept raised {higher} of 600 scores");
    let _ = std::fs::remove_dir_all(&dir);
    clean_redis(&config.store.key_prefix).await;
}
