//! The Redis backend.
//!
//! Arithmetic runs in Rust, not in Lua (Lua-side aggregation tops out near 13k
//! events/s on these machines; see shared/FINDINGS.md). A batch costs two round
//! trips: one pipelined read of every entity state and de-duplication marker it
//! touches, and one compare-and-set script that writes the new states and markers
//! only if no state changed and no marker appeared meanwhile. On a conflict (another
//! writer on the same entity) the batch is re-read and recomputed, so concurrent
//! writers stay exact.

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;
use vigil_core::{Event, FeatureVector, Label};

use crate::state::{decode_marker, encode_marker, EntityState, LabelOutcome, Plan};
use crate::{FeatureError, FeatureStore};

const VERSION_LEN: usize = 8;
/// Compare-and-set attempts before a batch gives up (with jittered exponential backoff,
/// at most about a second in all).
const MAX_ATTEMPTS: usize = 24;

/// KEYS: the state keys, then the marker keys.
/// ARGV: state count, state TTL (ms), marker TTL (s), expected versions (empty
/// when absent), new state values, marker values.
const CAS_SCRIPT: &str = r"
local n = tonumber(ARGV[1])
local m = #KEYS - n
for i = 1, n do
  local cur = redis.call('GET', KEYS[i])
  local ver = ''
  if cur then ver = string.sub(cur, 1, 8) end
  if ver ~= ARGV[3 + i] then return 0 end
end
for j = 1, m do
  if redis.call('EXISTS', KEYS[n + j]) == 1 then return 0 end
end
for i = 1, n do
  redis.call('SET', KEYS[i], ARGV[3 + n + i], 'PX', ARGV[2])
end
for j = 1, m do
  redis.call('SET', KEYS[n + j], ARGV[3 + 2 * n + j], 'EX', ARGV[3])
end
return 1
";

/// Features kept in Redis, shared by every Vigil process that uses the same prefix.
#[derive(Clone)]
pub struct RedisStore {
    plan: std::sync::Arc<Plan>,
    conn: ConnectionManager,
    script: Script,
    prefix: String,
    dedup_ttl_s: u64,
    timeout: Duration,
}

fn unavailable(e: redis::RedisError) -> FeatureError {
    FeatureError::Unavailable(e.to_string())
}

impl RedisStore {
    /// Connects and checks the server answers, failing within `timeout_ms` (a few
    /// times over, for the handshake) rather than hanging.
    pub async fn connect(
        url: &str,
        plan: Plan,
        prefix: &str,
        dedup_ttl_s: u64,
        timeout_ms: u64,
    ) -> Result<RedisStore, FeatureError> {
        let client = redis::Client::open(url).map_err(unavailable)?;
        let timeout = Duration::from_millis(timeout_ms);
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout.max(Duration::from_secs(2))))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(2);
        let connect = ConnectionManager::new_with_config(client, config);
        let conn = tokio::time::timeout(timeout.max(Duration::from_secs(2)) * 3, connect)
            .await
            .map_err(|_| FeatureError::Unavailable(format!("no answer from {url}")))?
            .map_err(|e| FeatureError::Unavailable(format!("cannot connect to {url}: {e}")))?;
        let store = RedisStore {
            plan: std::sync::Arc::new(plan),
            conn,
            script: Script::new(CAS_SCRIPT),
            prefix: prefix.to_owned(),
            dedup_ttl_s,
            timeout,
        };
        store.ping().await?;
        Ok(store)
    }

    fn state_key(&self, entity: &str) -> String {
        // The entity id is the hash tag, so one entity's keys share a cluster slot.
        format!("{}:s3:{{{}}}", self.prefix, entity)
    }

    fn marker_key(&self, transaction_id: &str) -> String {
        format!("{}:tx2:{{{}}}", self.prefix, transaction_id)
    }

    async fn timed<T>(&self, f: impl std::future::Future<Output = redis::RedisResult<T>>) -> Result<T, FeatureError> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(r) => r.map_err(unavailable),
            Err(_) => Err(FeatureError::Timeout(self.timeout.as_millis() as u64)),
        }
    }

    fn label_marker_key(&self, transaction_id: &str) -> String {
        format!("{}:lb3:{{{}}}", self.prefix, transaction_id)
    }

    /// One optimistic round: reads `entities`' states and the markers, lets
    /// `compute` update the states, then writes the changed states and the new
    /// markers in one compare-and-set. `None` when another writer got there first.
    async fn cas_round<T>(
        &self,
        entities: &[String],
        marker_keys: &[String],
        marker_ttl_s: u64,
        compute: impl FnOnce(&mut [EntityState], Vec<Option<Vec<u8>>>) -> Result<Round<T>, FeatureError>,
    ) -> Result<Option<T>, FeatureError> {
        let state_keys: Vec<String> = entities.iter().map(|e| self.state_key(e)).collect();
        let mut pipe = redis::pipe();
        if !state_keys.is_empty() {
            pipe.cmd("MGET").arg(&state_keys);
        }
        pipe.cmd("MGET").arg(marker_keys);
        let mut conn = self.conn.clone();
        let mut replies: Vec<Vec<Option<Vec<u8>>>> = self.timed(pipe.query_async(&mut conn)).await?;
        let raw_markers = replies.pop().unwrap_or_default();
        let raw_states = replies.pop().unwrap_or_default();

        let mut versions = Vec::with_capacity(raw_states.len());
        let mut states = Vec::with_capacity(raw_states.len());
        for raw in &raw_states {
            match raw {
                Some(bytes) if bytes.len() >= VERSION_LEN => {
                    let (v, body) = bytes.split_at(VERSION_LEN);
                    versions.push(v.to_vec());
                    states.push(EntityState::decode(body)?);
                }
                Some(_) => return Err(FeatureError::Corrupt("entity state shorter than its version".into())),
                None => {
                    versions.push(Vec::new());
                    states.push(EntityState::default());
                }
            }
        }
        let round = compute(&mut states, raw_markers)?;
        if round.dirty.is_empty() && round.markers.is_empty() {
            return Ok(Some(round.out));
        }
        let mut inv = self.script.prepare_invoke();
        for &i in &round.dirty {
            inv.key(&state_keys[i]);
        }
        for (i, _) in &round.markers {
            inv.key(&marker_keys[*i]);
        }
        inv.arg(round.dirty.len()).arg(self.plan.state_ttl_s() * 1000).arg(marker_ttl_s);
        for &i in &round.dirty {
            inv.arg(&versions[i]);
        }
        for &i in &round.dirty {
            let next =
                versions[i].as_slice().try_into().map_or(1u64, |v: [u8; 8]| u64::from_le_bytes(v).wrapping_add(1));
            let mut value = next.to_le_bytes().to_vec();
            value.extend_from_slice(&states[i].encode());
            inv.arg(value);
        }
        for (_, value) in round.markers {
            inv.arg(value);
        }
        let applied: i64 = self.timed(inv.invoke_async(&mut conn)).await?;
        Ok((applied == 1).then_some(round.out))
    }

    async fn attempt(&self, events: &[&Event]) -> Result<Option<Vec<FeatureVector>>, FeatureError> {
        let keys = self.plan.keys(events);
        let marker_keys: Vec<String> = events.iter().map(|e| self.marker_key(&e.transaction_id)).collect();
        self.cas_round(&keys.entities, &marker_keys, self.dedup_ttl_s, |states, raw_markers| {
            let seen = raw_markers
                .iter()
                .map(|m| m.as_deref().map(decode_marker).transpose())
                .collect::<Result<Vec<_>, _>>()?;
            let (out, changes) = self.plan.compute(events, &keys, states, &seen);
            let markers = changes.first_seen.iter().map(|&i| (i, encode_marker(&out[i]))).collect();
            Ok(Round { out, dirty: changes.dirty, markers })
        })
        .await
    }

    async fn attempt_labels(&self, labels: &[&Label]) -> Result<Option<Vec<LabelOutcome>>, FeatureError> {
        let keys = self.plan.label_keys(labels);
        let marker_keys: Vec<String> = labels.iter().map(|l| self.label_marker_key(&l.transaction_id)).collect();
        self.cas_round(&keys.entities, &marker_keys, self.plan.state_ttl_s(), |states, raw_markers| {
            let seen: Vec<bool> = raw_markers.iter().map(Option::is_some).collect();
            let (out, changes) = self.plan.apply_labels(labels, &keys, states, &seen);
            let markers = changes.first_seen.iter().map(|&i| (i, b"1".to_vec())).collect();
            Ok(Round { out, dirty: changes.dirty, markers })
        })
        .await
    }

    /// Repeats `attempt` with backoff until it is not outrun by another writer.
    async fn with_retries<T, F, Fut>(&self, mut attempt: F) -> Result<T, FeatureError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Option<T>, FeatureError>>,
    {
        for n in 1..=MAX_ATTEMPTS {
            if let Some(out) = attempt().await? {
                return Ok(out);
            }
            tracing::debug!(attempt = n, "feature state changed concurrently; retrying batch");
            tokio::time::sleep(backoff(n)).await;
        }
        Err(FeatureError::Contention(MAX_ATTEMPTS))
    }
}

/// What one compare-and-set round computed: its result, the indices of states it
/// changed, and the markers to set (index into the marker keys, value).
struct Round<T> {
    out: T,
    dirty: Vec<usize>,
    markers: Vec<(usize, Vec<u8>)>,
}

/// Jittered exponential backoff: 50 µs doubling up to 50 ms, times 0.5 to 1.5.
fn backoff(attempt: usize) -> Duration {
    let base_us = (50u64 << attempt.min(10)).min(50_000);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    // A cheap per-call jitter; the low bits of the clock differ between writers.
    let jitter = u64::from(nanos.wrapping_mul(2_654_435_761) % 1000);
    Duration::from_micros(base_us / 2 + base_us * jitter / 1000)
}

#[async_trait]
impl FeatureStore for RedisStore {
    async fn process(&self, events: &[&Event]) -> Result<Vec<FeatureVector>, FeatureError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        self.with_retries(|| self.attempt(events)).await
    }

    async fn apply_labels(&self, labels: &[&Label]) -> Result<Vec<LabelOutcome>, FeatureError> {
        // Nothing to count: no round trip (the outcome is what the plan gives).
        if !self.plan.has_label_features() || labels.iter().all(|l| l.verdict == vigil_core::Verdict::Genuine) {
            let (out, _) = self.plan.apply_labels(labels, &Default::default(), &mut [], &vec![false; labels.len()]);
            return Ok(out);
        }
        self.with_retries(|| self.attempt_labels(labels)).await
    }

    async fn ping(&self) -> Result<(), FeatureError> {
        let mut conn = self.conn.clone();
        let pong: String = self.timed(redis::cmd("PING").query_async(&mut conn)).await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(FeatureError::Unavailable(format!("unexpected PING reply `{pong}`")))
        }
    }
}
