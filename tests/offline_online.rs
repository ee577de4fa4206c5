//! Offline equals online: the features that backtests and training compute over
//! history (vigil-offline, in memory) are, for every feature of every event,
//! those the live Redis store computes for the same events and fraud labels in
//! the same order; and replaying the whole history through Redis returns them
//! unchanged.

mod common;

use common::*;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use vigil_core::{Event, Label};

use vigil_features::owned::{Journal, RedisJournal, SnapshotPolicy};
use vigil_features::{FeatureStore, LabelOutcome, OwnedStore, Plan, RedisStore, Step};
use vigil_gen::GenConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_feature_of_every_event_agrees_between_offline_and_redis() {
    let config = with_short_maturity(pipeline("offon"));
    let store =
        RedisStore::connect(&redis_url(), Plan::new(config.features.clone()), &config.store.key_prefix, 3600, 5000)
            .await
            .expect("this test needs Redis: run scripts/test.sh");
    agrees_offline_and_online(&config, Arc::new(store), None).await;
    clean_redis(&config.store.key_prefix).await;
}

/// The same against a Redis Cluster, where every entity is its own unit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_feature_of_every_event_agrees_between_offline_and_a_redis_cluster() {
    let config = with_short_maturity(pipeline("offon-cluster"));
    let plan = Plan::new(config.features.clone());
    let store = RedisStore::connect_cluster(&cluster_nodes(), plan, &config.store.key_prefix, 3600, 5000)
        .await
        .expect("this test needs a Redis Cluster: run scripts/test.sh");
    agrees_offline_and_online(&config, Arc::new(store), None).await;
    clean_cluster(&config.store.key_prefix).await;
}

/// A store still to be opened (a new owner taking over).
type Takeover = Pin<Box<dyn Future<Output = Arc<dyn FeatureStore>>>>;

/// An owned store (`mode = "owned"`, snapshotting every 700 events) with its
/// journal on the test Redis or cluster.
async fn owned_store(config: &vigil_core::PipelineConfig, cluster: bool) -> Arc<dyn FeatureStore> {
    let prefix = &config.store.key_prefix;
    let journal: Arc<dyn Journal> = match cluster {
        true => Arc::new(RedisJournal::connect_cluster(&cluster_nodes(), prefix, 5000).await.unwrap()),
        false => Arc::new(RedisJournal::connect(&redis_url(), prefix, 5000).await.unwrap()),
    };
    let policy = SnapshotPolicy { events: 700, ..Default::default() };
    Arc::new(OwnedStore::open(Plan::new(config.features.clone()), 3600, journal, policy).await.unwrap())
}

/// Owned state whose owner is replaced half way: the new owner takes the
/// state from the journal, and every feature of every event still equals
/// offline.
async fn owned_across_a_takeover(config: vigil_core::PipelineConfig, cluster: bool) {
    let first = owned_store(&config, cluster).await;
    let next = config.clone();
    let takeover: Takeover = Box::pin(async move { owned_store(&next, cluster).await });
    agrees_offline_and_online(&config, first, Some(takeover)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_feature_of_every_event_agrees_between_offline_and_owned_state_across_a_takeover() {
    let config = with_short_maturity(pipeline("offon-owned"));
    let prefix = config.store.key_prefix.clone();
    owned_across_a_takeover(config, false).await;
    clean_redis(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_feature_of_every_event_agrees_between_offline_and_owned_state_on_a_cluster_across_a_takeover() {
    let config = with_short_maturity(pipeline("offon-owned-cluster"));
    let prefix = config.store.key_prefix.clone();
    owned_across_a_takeover(config, true).await;
    clean_cluster(&prefix).await;
}

/// The shipped pipeline plus a terminal risk matured for a day, which a
/// five-day history reaches (the shipped ones wait a week).
fn with_short_maturity(mut config: vigil_core::PipelineConfig) -> vigil_core::PipelineConfig {
    use vigil_core::feature::{Aggregate, EntityKey, FeatureDef};
    let terminal = EntityKey::parse("terminal_id").unwrap();
    config.features.push(FeatureDef {
        delay_s: 86_400,
        ..FeatureDef::new("terminal_risk_1d_after_1d", terminal, Aggregate::FraudRate, 86_400)
    });
    config
}

/// Feeds the history with its labels through `store` (replaced by
/// `takeover` half way, when given) and compares every feature with offline.
async fn agrees_offline_and_online(
    config: &vigil_core::PipelineConfig,
    mut store: Arc<dyn FeatureStore>,
    mut takeover: Option<Takeover>,
) {
    assert!(config.features.len() >= 20, "the local pipeline declares the full feature set");
    let gen = GenConfig { seed: 5, events: 6_000, cards: 400, merchants: 60, days: 5, ..GenConfig::default() };
    let items = vigil_gen::generate(&gen);
    let labels = vigil_gen::labels(&items);
    let events: Vec<Event> = items.into_iter().map(|l| l.event).collect();
    let refs: Vec<&Event> = events.iter().collect();
    let label_refs: Vec<&Label> = labels.iter().collect();
    let offline = vigil_offline::features_over_history(&config.features, &refs, &label_refs).unwrap();

    let mut online = Vec::with_capacity(events.len());
    let mut counted = 0;
    let steps = vigil_features::interleave(&refs, &label_refs, 250);
    let half = steps.len() / 2;
    for (i, step) in steps.into_iter().enumerate() {
        if i == half {
            if let Some(next) = takeover.take() {
                store = next.await;
            }
        }
        match step {
            Step::Events(r) => online.extend(store.process(&refs[r]).await.unwrap()),
            Step::Labels(r) => {
                let outcomes = store.apply_labels(&label_refs[r]).await.unwrap();
                counted += outcomes.iter().filter(|o| **o == LabelOutcome::Counted).count();
            }
        }
    }
    assert!(counted > 10 && counted < labels.len(), "labels reported within the history count: {counted}");
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
    let frauds_seen = config.features.iter().position(|d| d.name == "terminal_frauds_7d").unwrap();
    assert!(
        online.iter().any(|fv| fv.values[frauds_seen] != vigil_core::FeatureValue::Count(0)
            && fv.values[frauds_seen] != vigil_core::FeatureValue::Missing),
        "some event saw a confirmed fraud at its terminal"
    );
    let matured = config.features.iter().position(|d| d.name == "terminal_risk_1d_after_1d").unwrap();
    let risky =
        online.iter().filter(|fv| matches!(&fv.values[matured], vigil_core::FeatureValue::Number(r) if !r.is_zero()));
    assert!(risky.count() > 10, "some events saw a matured fraud at their terminal");
    let hour = config.features.iter().position(|d| d.name == "hour").unwrap();
    let hours: std::collections::HashSet<_> =
        online.iter().filter_map(|fv| fv.values[hour].as_f64().map(|h| h as i64)).collect();
    assert_eq!(hours.len(), 24, "every hour of the day occurred");

    // A full replay (a consumer group reset to the start) changes nothing.
    for (chunk, expected) in events.chunks(500).zip(online.chunks(500)) {
        let refs: Vec<&Event> = chunk.iter().collect();
        let again = store.process(&refs).await.unwrap();
        for (a, b) in again.iter().zip(expected) {
            assert!(a.replayed);
            assert_eq!(a.values, b.values);
        }
    }
}
