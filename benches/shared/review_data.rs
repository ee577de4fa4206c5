//! The review decisions the review benches work on.

use vigil_core::Decision;

/// A review decision as the stream publishes one for the local pipeline: 30
/// features, two reasons, model factors and the event.
pub fn decision(i: usize, cards: usize) -> Decision {
    let tx = format!("bench-{i:09}");
    let card = format!("card-{:07}", (i * 7_919) % cards);
    let mut features = serde_json::Map::new();
    for f in 0..30 {
        let value = if f % 3 == 0 {
            serde_json::json!(format!("{}.{:02}", (i + f) % 900, f))
        } else {
            serde_json::json!((i + f) % 40)
        };
        features.insert(format!("feature_{f:02}"), value);
    }
    serde_json::from_value(serde_json::json!({
        "transaction_id": tx, "decision": "review", "score": 55.0 + (i % 40) as f64,
        "reasons": [
            {"rule": "card_burst_10m", "code": "CARD_VELOCITY_10M", "action": "review", "score": 40.0},
            {"rule": "new_country_online", "code": "NEW_COUNTRY_ONLINE", "action": "review", "score": 30.0}
        ],
        "rules_version": "b72343546fa163b6", "model_version": "m-2026-12-01", "model_score": 0.41,
        "model_baseline": 0.02,
        "model_factors": [{"input": "card_count_10m", "contribution": 1.84}, {"input": "night", "contribution": 0.6}],
        "features": features, "latency_us": 212,
        "event": {"transaction_id": tx, "timestamp": "2026-12-03T10:00:00Z",
                  "amount": format!("{}.{:02}", 10 + i % 3000, i % 100), "currency": "EUR",
                  "card_id": card, "merchant_id": format!("m-{}", i % 500), "terminal_id": format!("t-{}", i % 900),
                  "country": "FR", "channel": "online", "ip": "203.0.113.7"}
    }))
    .expect("a valid decision")
}
