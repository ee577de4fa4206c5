//! A call as consecutive chunks of at most [`CHUNK`] events, each an
//! optimistic transaction: one read of its states and markers, the shared
//! computation in Rust, then a compare-and-set script (module docs of
//! [`super`]).

use std::collections::VecDeque;
use std::time::Duration;

use vigil_core::{Event, FeatureVector, Label};

use super::{unavailable, RedisStore};
use crate::marker;
use crate::plan::{BatchKeys, Plan};
use crate::state::EntityState;
use crate::{FeatureError, LabelOutcome};

/// Stored states begin with a version counter, bumped by every write.
const VERSION_LEN: usize = 8;
/// Compare-and-set attempts of one chunk before a call gives up (with jittered
/// exponential backoff, at most about a second in all).
const MAX_ATTEMPTS: usize = 24;
/// Events (or labels) per compare-and-set. Measured at 8, 16, 32 and 500
/// (RESULTS.md): small chunks conflict less and block Redis for less time.
pub const CHUNK: usize = 16;

/// KEYS: the state keys, then the marker keys.
/// ARGV: state count, state TTL (ms), marker TTL (s), expected versions (empty
/// when absent), new state values, marker values.
pub(super) const CAS_SCRIPT: &str = r"
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

impl RedisStore {
    /// Runs a call's chunks in order, each its own compare-and-set (module
    /// docs). A chunk whose script found a state changed or a marker set is read
    /// and computed again after a jittered backoff; chunks already written stay
    /// written (each carries its own markers, so a retried call replays them).
    async fn run_chunks<T>(
        &self,
        chunks: &[ChunkKeys],
        state_ttl_s: u64,
        marker_ttl_s: u64,
        mut compute: impl FnMut(usize, &mut [EntityState], &[Option<Vec<u8>>]) -> Result<Round<T>, FeatureError>,
    ) -> Result<Vec<T>, FeatureError> {
        let mut out = Vec::with_capacity(chunks.len());
        let mut reads: Option<Reads> = None;
        let (mut c, mut refused) = (0, 0);
        let ttls = (state_ttl_s * 1000, marker_ttl_s);
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
                self.push_write(&mut pipe, keys, (&round.dirty, &round.markers), (&versions, &states), ttls);
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

    /// Adds a chunk's compare-and-set to `pipe`: the `dirty` states (read at
    /// `versions`, now `states`) and the new `markers`, expiring after
    /// `ttls` (states in ms, markers in s).
    fn push_write(
        &self,
        pipe: &mut redis::Pipeline,
        keys: &ChunkKeys,
        (dirty, markers): (&[usize], &[(usize, Vec<u8>)]),
        (versions, states): (&[u64], &[EntityState]),
        (state_ttl_ms, marker_ttl_s): (u64, u64),
    ) {
        let mut inv = self.script.prepare_invoke();
        for &i in dirty {
            inv.key(&keys.states[i]);
        }
        for (i, _) in markers {
            inv.key(&keys.markers[*i]);
        }
        inv.arg(dirty.len()).arg(state_ttl_ms).arg(marker_ttl_s);
        for &i in dirty {
            match versions[i] {
                0 => inv.arg(""),
                v => inv.arg(&v.to_le_bytes()[..]),
            };
        }
        for &i in dirty {
            let mut value = versions[i].wrapping_add(1).to_le_bytes().to_vec();
            value.extend_from_slice(&states[i].encode());
            inv.arg(value);
        }
        for (_, value) in markers {
            inv.arg(value.as_slice());
        }
        pipe.invoke_script(&inv);
    }

    /// Splits `items` into chunks of [`CHUNK`] with the keys each touches:
    /// `keys` gives the entities of a chunk (given its first item's position),
    /// `marker` each item's marker key.
    fn chunked<'a, I>(
        &self,
        items: &'a [&'a I],
        keys: impl Fn(usize, &[&I]) -> BatchKeys,
        marker: impl Fn(&I) -> String,
    ) -> (Vec<(&'a [&'a I], BatchKeys)>, Vec<ChunkKeys>) {
        let batches: Vec<(&[&I], BatchKeys)> =
            items.chunks(CHUNK).enumerate().map(|(c, chunk)| (chunk, keys(c * CHUNK, chunk))).collect();
        let chunks = batches
            .iter()
            .map(|(chunk, keys)| ChunkKeys {
                states: keys.records.iter().map(|e| self.keys.state(e)).collect(),
                markers: chunk.iter().map(|i| marker(i)).collect(),
            })
            .collect();
        (batches, chunks)
    }

    /// Features of `events` under `plan`, the entities of a chunk given by
    /// `keys`, each event marked under `marker`.
    pub(super) async fn process_events(
        &self,
        plan: &Plan,
        events: &[&Event],
        keys: impl Fn(usize, &[&Event]) -> BatchKeys,
        marker: impl Fn(&Event) -> String,
    ) -> Result<Vec<FeatureVector>, FeatureError> {
        let (batches, chunks) = self.chunked(events, keys, marker);
        let outs = self
            .run_chunks(&chunks, plan.state_ttl_s(), self.dedup_ttl_s, |c, states, raw_markers| {
                let (events, keys) = &batches[c];
                let seen = raw_markers
                    .iter()
                    .map(|m| m.as_deref().map(marker::decode).transpose())
                    .collect::<Result<Vec<_>, _>>()?;
                let (out, changes) = plan.compute(events, keys, states, &seen);
                let markers = changes.first_seen.iter().map(|&i| (i, marker::encode(&out[i]))).collect();
                Ok(Round { out, dirty: changes.dirty, markers })
            })
            .await?;
        Ok(outs.into_iter().flatten().collect())
    }

    /// Counts `labels` under `plan`, the entities of a chunk given by `keys`,
    /// each label marked under `marker`.
    pub(super) async fn process_labels(
        &self,
        plan: &Plan,
        labels: &[&Label],
        keys: impl Fn(usize, &[&Label]) -> BatchKeys,
        marker: impl Fn(&Label) -> String,
    ) -> Result<Vec<LabelOutcome>, FeatureError> {
        let (batches, chunks) = self.chunked(labels, keys, marker);
        let outs = self
            .run_chunks(&chunks, plan.state_ttl_s(), plan.state_ttl_s(), |c, states, raw_markers| {
                let (labels, keys) = &batches[c];
                let seen: Vec<bool> = raw_markers.iter().map(Option::is_some).collect();
                let (out, changes) = plan.apply_labels(labels, keys, states, &seen);
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
