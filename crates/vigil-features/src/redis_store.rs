//! The Redis backend.
//!
//! Arithmetic runs in Rust, not in Lua (Lua-side aggregation tops out near 13k
//! events/s on these machines; see shared/FINDINGS.md). A call runs as consecutive
//! chunks of at most [`CHUNK`] events, each an optimistic transaction:
//!
//! 1. one `MGET` of every entity state and de-duplication marker the chunk touches;
//! 2. Rust computes the features and the new states;
//! 3. one compare-and-set script writes the changed states and new markers only if
//!    no state's version changed and no marker appeared meanwhile.
//!
//! The script of one chunk and the read of the next go out in one pipeline (a
//! connection runs its commands in order), so a call of `n` chunks costs `n + 1`
//! round trips. When another writer changed a state first, only that chunk is
//! read and computed again, so concurrent writers stay exact and a conflict costs
//! a few events' work, not a whole batch's; short scripts also keep Redis from
//! stalling other clients behind one long batch.
//!
//! Every call shares one multiplexed connection, so concurrent calls (the HTTP
//! API's single events) reach Redis pipelined together. Compare-and-set by version
//! needs no per-connection state, so reconnecting at any point is safe.
//! `WATCH`/`MULTI`/`EXEC` was measured as the alternative (2026-11-29, RESULTS.md):
//! the same server time per key, and it needs a connection per call in flight,
//! which cost the API a fifth of its throughput.

use std::collections::VecDeque;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;
use vigil_core::{Event, FeatureVector, Label};

use crate::state::{decode_marker, encode_marker, BatchKeys, EntityState, LabelOutcome, Plan};
use crate::{FeatureError, FeatureStore};

/// Stored states begin with a version counter, bumped by every write.
const VERSION_LEN: usize = 8;
/// Compare-and-set attempts of one chunk before a call gives up (with jittered
/// exponential backoff, at most about a second in all).
const MAX_ATTEMPTS: usize = 24;
/// Events (or labels) per compare-and-set. Measured at 8, 16, 32 and 500
/// (RESULTS.md): small chunks conflict less and block Redis for less time.
const CHUNK: usize = 16;

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
        store.load_script().await?;
        Ok(store)
    }

    fn state_key(&self, entity: &str) -> String {
        // The entity id is the hash tag, so one entity's keys share a cluster slot.
        format!("{}:s4:{{{}}}", self.prefix, entity)
    }

    fn marker_key(&self, transaction_id: &str) -> String {
        format!("{}:tx2:{{{}}}", self.prefix, transaction_id)
    }

    /// Sends `pipe` within the call timeout.
    async fn query<T: redis::FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T, FeatureError> {
        self.query_raw(pipe).await?.map_err(unavailable)
    }

    /// As `query`, with Redis's own error left for the caller to look at.
    async fn query_raw<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<redis::RedisResult<T>, FeatureError> {
        let mut conn = self.conn.clone();
        tokio::time::timeout(self.timeout, pipe.query_async(&mut conn))
            .await
            .map_err(|_| FeatureError::Timeout(self.timeout.as_millis() as u64))
    }

    /// Loads the compare-and-set script (Redis forgets it when it restarts).
    async fn load_script(&self) -> Result<(), FeatureError> {
        let mut load = redis::pipe();
        load.load_script(&self.script);
        self.query::<Vec<redis::Value>>(&load).await.map(drop)
    }

    fn label_marker_key(&self, transaction_id: &str) -> String {
        format!("{}:lb3:{{{}}}", self.prefix, transaction_id)
    }

    /// Runs a call's chunks in order, each its own compare-and-set (module
    /// docs). A chunk whose script found a state changed or a marker set is read
    /// and computed again after a jittered backoff; chunks already written stay
    /// written (each carries its own markers, so a retried call replays them).
    async fn run_chunks<T>(
        &self,
        chunks: &[ChunkKeys],
        marker_ttl_s: u64,
        mut compute: impl FnMut(usize, &mut [EntityState], &[Option<Vec<u8>>]) -> Result<Round<T>, FeatureError>,
    ) -> Result<Vec<T>, FeatureError> {
        let mut out = Vec::with_capacity(chunks.len());
        let mut reads: Option<Reads> = None;
        let (mut c, mut refused) = (0, 0);
        let state_ttl_ms = self.plan.state_ttl_s() * 1000;
        while c < chunks.len() {
            let keys = &chunks[c];
            let read = match reads.take() {
                Some(r) => r,
                None => {
                    let mut pipe = redis::pipe();
                    keys.push_read(&mut pipe);
                    Reads::parse(self.query::<Vec<redis::Value>>(&pipe).await?.into(), keys)?
                }
            };
            let (versions, mut states) = decode_states(&read.states)?;
            let round = compute(c, &mut states, &read.markers)?;
            let writes = !(round.dirty.is_empty() && round.markers.is_empty());
            let next = chunks.get(c + 1);
            if !writes && next.is_none() {
                out.push(round.out);
                break;
            }
            let mut pipe = redis::pipe();
            if writes {
                let mut inv = self.script.prepare_invoke();
                for &i in &round.dirty {
                    inv.key(&keys.states[i]);
                }
                for (i, _) in &round.markers {
                    inv.key(&keys.markers[*i]);
                }
                inv.arg(round.dirty.len()).arg(state_ttl_ms).arg(marker_ttl_s);
                for &i in &round.dirty {
                    match versions[i] {
                        0 => inv.arg(""),
                        v => inv.arg(&v.to_le_bytes()[..]),
                    };
                }
                for &i in &round.dirty {
                    let mut value = versions[i].wrapping_add(1).to_le_bytes().to_vec();
                    value.extend_from_slice(&states[i].encode());
                    inv.arg(value);
                }
                for (_, value) in &round.markers {
                    inv.arg(value.as_slice());
                }
                pipe.invoke_script(&inv);
            }
            if let Some(next) = next {
                next.push_read(&mut pipe);
            }
            let mut replies: VecDeque<redis::Value> = match self.query_raw::<Vec<redis::Value>>(&pipe).await? {
                Ok(r) => r.into(),
                Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                    // Redis restarted or its scripts were flushed: load it, redo the chunk.
                    refused += 1;
                    if refused >= MAX_ATTEMPTS {
                        return Err(unavailable(e));
                    }
                    self.load_script().await?;
                    continue;
                }
                Err(e) => return Err(unavailable(e)),
            };
            // The script answers 1 when it wrote, 0 when a state or marker changed first.
            let applied = !writes
                || match replies.pop_front() {
                    Some(redis::Value::Int(1)) => true,
                    Some(redis::Value::Int(0)) => false,
                    other => {
                        return Err(FeatureError::Unavailable(format!("unexpected compare-and-set reply {other:?}")))
                    }
                };
            if applied {
                out.push(round.out);
                c += 1;
                refused = 0;
                reads = next.map(|k| Reads::parse(replies, k)).transpose()?;
            } else {
                refused += 1;
                if refused >= MAX_ATTEMPTS {
                    return Err(FeatureError::Contention(MAX_ATTEMPTS));
                }
                tracing::debug!(attempt = refused, "feature state changed concurrently; retrying chunk");
                tokio::time::sleep(backoff(refused)).await;
            }
        }
        Ok(out)
    }

    /// Splits `items` into chunks of [`CHUNK`] with the keys each touches:
    /// `keys` gives a chunk's entities, `marker` each item's marker key.
    fn chunked<'a, I>(
        &self,
        items: &'a [&'a I],
        keys: impl Fn(&[&I]) -> BatchKeys,
        marker: impl Fn(&I) -> String,
    ) -> (Vec<(&'a [&'a I], BatchKeys)>, Vec<ChunkKeys>) {
        let batches: Vec<(&[&I], BatchKeys)> = items.chunks(CHUNK).map(|chunk| (chunk, keys(chunk))).collect();
        let chunks = batches
            .iter()
            .map(|(chunk, keys)| ChunkKeys {
                states: keys.entities.iter().map(|e| self.state_key(e)).collect(),
                markers: chunk.iter().map(|i| marker(i)).collect(),
            })
            .collect();
        (batches, chunks)
    }

    async fn process_events(&self, events: &[&Event]) -> Result<Vec<FeatureVector>, FeatureError> {
        let (batches, chunks) =
            self.chunked(events, |c| self.plan.keys(c), |e: &Event| self.marker_key(&e.transaction_id));
        let outs = self
            .run_chunks(&chunks, self.dedup_ttl_s, |c, states, raw_markers| {
                let (events, keys) = &batches[c];
                let seen = raw_markers
                    .iter()
                    .map(|m| m.as_deref().map(decode_marker).transpose())
                    .collect::<Result<Vec<_>, _>>()?;
                let (out, changes) = self.plan.compute(events, keys, states, &seen);
                let markers = changes.first_seen.iter().map(|&i| (i, encode_marker(&out[i]))).collect();
                Ok(Round { out, dirty: changes.dirty, markers })
            })
            .await?;
        Ok(outs.into_iter().flatten().collect())
    }

    async fn process_labels(&self, labels: &[&Label]) -> Result<Vec<LabelOutcome>, FeatureError> {
        let (batches, chunks) =
            self.chunked(labels, |c| self.plan.label_keys(c), |l: &Label| self.label_marker_key(&l.transaction_id));
        let outs = self
            .run_chunks(&chunks, self.plan.state_ttl_s(), |c, states, raw_markers| {
                let (labels, keys) = &batches[c];
                let seen: Vec<bool> = raw_markers.iter().map(Option::is_some).collect();
                let (out, changes) = self.plan.apply_labels(labels, keys, states, &seen);
                let markers = changes.first_seen.iter().map(|&i| (i, b"1".to_vec())).collect();
                Ok(Round { out, dirty: changes.dirty, markers })
            })
            .await?;
        Ok(outs.into_iter().flatten().collect())
    }
}

/// The keys one chunk reads and may write.
struct ChunkKeys {
    states: Vec<String>,
    markers: Vec<String>,
}

impl ChunkKeys {
    /// Reads the chunk's states and markers.
    fn push_read(&self, pipe: &mut redis::Pipeline) {
        if !self.states.is_empty() {
            pipe.cmd("MGET").arg(&self.states);
        }
        pipe.cmd("MGET").arg(&self.markers);
    }
}

/// What a chunk's read returned: raw states and raw markers, in key order.
struct Reads {
    states: Vec<Option<Vec<u8>>>,
    markers: Vec<Option<Vec<u8>>>,
}

impl Reads {
    /// The replies of `ChunkKeys::push_read`, in order.
    fn parse(mut replies: VecDeque<redis::Value>, keys: &ChunkKeys) -> Result<Reads, FeatureError> {
        let mut next = || -> Result<Vec<Option<Vec<u8>>>, FeatureError> {
            let value = replies.pop_front().ok_or_else(|| FeatureError::Unavailable("missing MGET reply".into()))?;
            redis::from_redis_value(value).map_err(|e| FeatureError::Unavailable(e.to_string()))
        };
        let states = if keys.states.is_empty() { Vec::new() } else { next()? };
        let markers = next()?;
        Ok(Reads { states, markers })
    }
}

/// Splits stored states into their versions and decoded states (absent: version 0,
/// an empty state).
fn decode_states(raw: &[Option<Vec<u8>>]) -> Result<(Vec<u64>, Vec<EntityState>), FeatureError> {
    let mut versions = Vec::with_capacity(raw.len());
    let mut states = Vec::with_capacity(raw.len());
    for r in raw {
        match r {
            Some(bytes) if bytes.len() >= VERSION_LEN => {
                let (v, body) = bytes.split_at(VERSION_LEN);
                versions.push(u64::from_le_bytes(v.try_into().expect("eight bytes")));
                states.push(EntityState::decode(body)?);
            }
            Some(_) => return Err(FeatureError::Corrupt("entity state shorter than its version".into())),
            None => {
                versions.push(0);
                states.push(EntityState::default());
            }
        }
    }
    Ok((versions, states))
}

/// What one chunk computed: its result, the indices of states it changed, and the
/// markers to set (index into the chunk's marker keys, value).
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
        self.process_events(events).await
    }

    async fn apply_labels(&self, labels: &[&Label]) -> Result<Vec<LabelOutcome>, FeatureError> {
        // Nothing to count: no round trip (the outcome is what the plan gives).
        if !self.plan.has_label_features() || labels.iter().all(|l| l.verdict == vigil_core::Verdict::Genuine) {
            let (out, _) = self.plan.apply_labels(labels, &Default::default(), &mut [], &vec![false; labels.len()]);
            return Ok(out);
        }
        self.process_labels(labels).await
    }

    async fn ping(&self) -> Result<(), FeatureError> {
        let mut pipe = redis::pipe();
        pipe.cmd("PING");
        let (pong,): (String,) = self.query(&pipe).await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(FeatureError::Unavailable(format!("unexpected PING reply `{pong}`")))
        }
    }
}
