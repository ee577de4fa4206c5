//! Signed webhooks on case opened and case resolved, carrying the case
//! (`docs/design/review.md`, "Webhooks").
//!
//! The event is written to `webhook_outbox`, one row per receiver, in the
//! same transaction that opened or closed the case, so no event is lost and
//! none is made for a change that rolled back. A sender POSTs due rows as
//! JSON, with the case as it stands when sent (its payments, their frozen
//! decisions, verdicts and resolutions), signed with the scoring API's
//! scheme (`Vigil-Signature: client=NAME,t=MS,v1=HMAC`), and marks each
//! answered 2xx. Any other answer, or none within the timeout, is tried
//! again later, backing off from 1 s to an hour. Delivery is at least once
//! and not ordered: a receiver drops repeats by `Vigil-Webhook-Id`.

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::Transaction;
use serde_json::{json, Value};
use vigil_core::pipeline::{WebhookDef, WebhookEvent};

use crate::error::ReviewError;
use crate::store::ReviewStore;

/// The header naming the outbox row: the same on every try of one event.
pub const WEBHOOK_ID_HEADER: &str = "vigil-webhook-id";
/// The header naming the event (`case.opened`, `case.resolved`).
pub const WEBHOOK_EVENT_HEADER: &str = "vigil-webhook-event";
/// How long a receiver has to answer.
const TIMEOUT: Duration = Duration::from_secs(10);
/// The longest wait between tries.
const MAX_BACKOFF_S: f64 = 3600.0;
/// How often a sender without due events looks again.
const IDLE: Duration = Duration::from_millis(500);

/// Writes `event` for `cases` to the outbox of every receiver that wants it,
/// inside the caller's transaction.
pub(crate) async fn enqueue(
    tx: &Transaction<'_>,
    webhooks: &[WebhookDef],
    event: WebhookEvent,
    cases: &[i64],
) -> Result<(), ReviewError> {
    let endpoints: Vec<&str> = webhooks.iter().filter(|w| w.events.contains(&event)).map(|w| w.name.as_str()).collect();
    if endpoints.is_empty() || cases.is_empty() {
        return Ok(());
    }
    tx.execute(
        "INSERT INTO webhook_outbox (endpoint, event, case_id)
         SELECT e, $1, c FROM unnest($2::text[]) AS e, unnest($3::int8[]) AS c ORDER BY c, e",
        &[&event.as_str(), &endpoints, &cases],
    )
    .await?;
    Ok(())
}

/// One receiver, ready to send to.
pub struct Endpoint {
    pub name: String,
    pub url: reqwest::Url,
    secret: Vec<u8>,
}

/// The receivers of the pipeline's `[[review.webhooks]]`, with their secrets.
pub struct WebhookSender {
    endpoints: Vec<Endpoint>,
    client: reqwest::Client,
}

impl WebhookSender {
    /// The receivers of `webhooks`, each secret read from its variable by
    /// `secret_of` (the environment, in the binary); a missing or empty
    /// secret, or an address that does not parse, is refused by name.
    pub fn new(
        webhooks: &[WebhookDef],
        secret_of: impl Fn(&str) -> Option<String>,
    ) -> Result<WebhookSender, ReviewError> {
        let mut endpoints = Vec::with_capacity(webhooks.len());
        for w in webhooks {
            let secret = secret_of(&w.secret_env).filter(|s| !s.is_empty()).ok_or_else(|| {
                ReviewError::Invalid(format!("webhook `{}`: the variable {} holds no secret", w.name, w.secret_env))
            })?;
            let url = reqwest::Url::parse(&w.url)
                .map_err(|e| ReviewError::Invalid(format!("webhook `{}`: {}: {e}", w.name, w.url)))?;
            endpoints.push(Endpoint { name: w.name.clone(), url, secret: secret.into_bytes() });
        }
        let client = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .user_agent(concat!("vigil-review/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ReviewError::Invalid(format!("webhook client: {e}")))?;
        Ok(WebhookSender { endpoints, client })
    }

    /// Whether there is anyone to send to.
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    /// POSTs one event; `Err` says why it was not taken.
    async fn send(&self, endpoint: &Endpoint, id: i64, event: &str, body: &[u8]) -> Result<(), String> {
        let t_ms = Utc::now().timestamp_millis();
        let url = &endpoint.url;
        let path = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        };
        let signature = vigil_core::signature::sign(&endpoint.name, &endpoint.secret, t_ms, "POST", &path, body);
        let answer = self
            .client
            .post(url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(vigil_core::signature::HEADER, signature)
            .header(WEBHOOK_ID_HEADER, id.to_string())
            .header(WEBHOOK_EVENT_HEADER, event)
            .body(body.to_vec())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if answer.status().is_success() {
            Ok(())
        } else {
            Err(format!("answered {}", answer.status()))
        }
    }
}

/// What one due row needs to be sent.
struct Due {
    id: i64,
    endpoint: usize,
    event: String,
    case: i64,
    created_at: DateTime<Utc>,
}

impl ReviewStore {
    /// Sends due webhook events until `shutdown` completes; how many were
    /// delivered. Several review servers may run it at once: each row is
    /// sent by one of them at a time.
    pub async fn deliver_webhooks(
        &self,
        sender: &WebhookSender,
        shutdown: impl Future<Output = ()>,
    ) -> Result<u64, ReviewError> {
        tokio::pin!(shutdown);
        let mut delivered = 0;
        loop {
            match self.deliver_webhook_batch(sender, 32).await {
                Ok((0, 0)) => {}
                Ok((n, _)) => {
                    delivered += n;
                    if n > 0 {
                        continue;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "webhooks not sent yet; trying again"),
            }
            tokio::select! {
                _ = tokio::time::sleep(IDLE) => {}
                _ = &mut shutdown => return Ok(delivered),
            }
        }
    }

    /// Sends up to `most` due events at once and records each outcome:
    /// (delivered, refused or unanswered).
    pub async fn deliver_webhook_batch(&self, sender: &WebhookSender, most: i64) -> Result<(u64, u64), ReviewError> {
        if sender.is_empty() {
            return Ok((0, 0));
        }
        let names: Vec<&str> = sender.endpoints.iter().map(|e| e.name.as_str()).collect();
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let rows = tx
            .query(
                "SELECT id, endpoint, event, case_id, created_at FROM webhook_outbox
                 WHERE delivered_at IS NULL AND next_attempt_at <= now() AND endpoint = ANY($1)
                 ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED",
                &[&names, &most],
            )
            .await?;
        let due: Vec<Due> = rows
            .iter()
            .filter_map(|r| {
                let endpoint: String = r.get(1);
                Some(Due {
                    id: r.get(0),
                    endpoint: names.iter().position(|n| *n == endpoint)?,
                    event: r.get(2),
                    case: r.get(3),
                    created_at: r.get(4),
                })
            })
            .collect();
        if due.is_empty() {
            tx.commit().await?;
            return Ok((0, 0));
        }
        let mut bodies = Vec::with_capacity(due.len());
        for d in &due {
            let case = self.case(d.case).await?;
            let body = json!({
                "id": d.id,
                "event": d.event,
                "created_at": d.created_at,
                "case": case.to_json(),
            });
            bodies.push(serde_json::to_vec(&body).unwrap_or_default());
        }
        // Every event of the batch at once: one slow receiver costs the
        // batch one timeout, not one per event.
        let outcomes = futures::future::join_all(
            due.iter().zip(&bodies).map(|(d, body)| sender.send(&sender.endpoints[d.endpoint], d.id, &d.event, body)),
        )
        .await;
        let (mut ok, mut failed) = (0, 0);
        for (d, outcome) in due.iter().zip(outcomes) {
            match outcome {
                Ok(()) => {
                    ok += 1;
                    tx.execute(
                        "UPDATE webhook_outbox SET delivered_at = now(), attempts = attempts + 1, last_error = NULL
                         WHERE id = $1",
                        &[&d.id],
                    )
                    .await?;
                }
                Err(why) => {
                    failed += 1;
                    tracing::warn!(id = d.id, endpoint = names[d.endpoint], event = %d.event, %why, "webhook not taken; tried again later");
                    tx.execute(
                        "UPDATE webhook_outbox SET attempts = attempts + 1, last_error = $2,
                             next_attempt_at = now() + make_interval(secs => least(power(2::float8, least(attempts, 12)::float8), $3::float8))
                         WHERE id = $1",
                        &[&d.id, &why, &MAX_BACKOFF_S],
                    )
                    .await?;
                }
            }
        }
        tx.commit().await?;
        Ok((ok, failed))
    }
}

impl crate::store::CaseView {
    /// The case as the API and webhooks write it: amounts as decimal
    /// strings, times in RFC 3339, each payment's decision as published.
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "entity": {"kind": self.entity_kind, "id": self.entity_id},
            "status": self.status,
            "queue": self.queue,
            "top_score": self.top_score,
            "lease_holder": self.lease_holder,
            "lease_until": self.lease_until,
            "snoozed_until": self.snoozed_until,
            "escalated": self.escalated,
            "opened_at": self.opened_at,
            "closed_at": self.closed_at,
            "payments": self.payments.iter().map(crate::store::PaymentView::to_json).collect::<Vec<_>>(),
        })
    }
}

impl crate::store::PaymentView {
    /// One payment as the API and webhooks write it.
    pub fn to_json(&self) -> Value {
        json!({
            "transaction_id": self.transaction_id,
            "amount": self.amount,
            "currency": self.currency,
            "hold_until": self.hold_until,
            "verdict": self.verdict,
            "verdict_by": self.verdict_by,
            "confirmed_by": self.confirmed_by,
            "resolution": self.resolution.map(|a| a.as_str()),
            "proposal": self.proposed.as_ref().map(|(verdict, by)| json!({"verdict": verdict, "by": by})),
            "decision": serde_json::to_value(&self.decision).unwrap_or(Value::Null),
        })
    }
}
