//! Offline equals online: the features that backtests and training compute over
//! history (vigil-offline, in memory) are, for every feature of every event,
//! those the live Redis store computes for the same events in the same order;
//! and replaying the whole history through Redis returns them unchanged.

mod common;

use common::*;
use vigil_core::Event;
use vigil_features::{FeatureStore, Plan, RedisStore};
use vigil_gen::GenConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_feature_of_every_event_agrees_between_offline_and_redis() {
    let config = pipeline("offon");
    assert!(config.features.len() >= 20, "the local pipeline declares the full feature set");
    let gen = GenConfig { seed: 5, events: 6_000, cards: 400, merchants: 60, days: 5, ..GenConfig::default() };
    let events: Vec<Event> = vigil_gen::generate(&gen).into_iter().map(|l| l.event).collect();
    let offline = reference_features(&config, &events);

    let prefix = config.store.key_prefix.clone();
    let store = RedisStore::connect(&redis_url(), Plan::new(config.features.clone()), &prefix, 3600, 5000)
        .await
        .expect("this test needs Redis: run scripts/test.sh");
    let mut online = Vec::with_capacity(events.len());
    for chunk in events.chunks(250) {
        let refs: Vec<&Event> = chunk.iter().collect();
        online.extend(store.process(&refs).await.unwrap());
    }
    let mut kinds = std::collections::HashSet::new();
    for ((e, off), on) in events.iter().zip(&offline).zip(&online) {
        assert!(!on.replayed, "{} was new", e.transaction_id);
        for ((def, a), b) in config.features.iter().zip(&off.values).zip(&on.values) {
            assert_eq!(a, b, "{} of {}", def.name, e.transaction_id);
            kinds.insert(std::mem::discriminant(a));
        }
    }
    // Counts, money, plain numbers, seconds and missing values all occurred.
    assert_eq!(kinds.len(), 5, "the history exercises every kind of value");

    // A full replay (a consumer group reset to the start) changes nothing.
    for (chunk, expected) in events.chunks(500).zip(online.chunks(500)) {
        let refs: Vec<&Event> = chunk.iter().collect();
        let again = store.process(&refs).await.unwrap();
        for (a, b) in again.iter().zip(expected) {
            assert!(a.replayed);
            assert_eq!(a.values, b.values);
        }
    }
    clean_redis(&prefix).await;
}
