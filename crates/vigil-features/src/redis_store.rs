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
//!
//! **Redis Cluster** ([`RedisStore::connect_cluster`]) cannot run one script over
//! keys in several slots, and an event's records (card, terminal, merchant...)
//! hash to different slots. There every record of a call is its own unit: its
//! state and its own markers (`{entity}` hash tag) go through the same chunked
//! compare-and-set, so each entity counts an event exactly once on its own. A
//! transaction marker, written only after every entity has counted the event,
//! then records the event's whole features: a redelivery finds it and touches no
//! entity, and a call cut short between the two is finished by the redelivery,
//! whose entities replay the features they stored. The units of a call run
//! concurrently, so a call costs about three round trips whatever its size.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::try_join_all;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::Script;
use vigil_core::{Event, FeatureValue, FeatureVector, Label};

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
    plan: Arc<Plan>,
    conn: Conn,
    /// In a cluster: the plan split by entity, each part with the positions of
    /// its features in the whole vector (module docs).
    parts: Option<Arc<Parts>>,
    script: Script,
    prefix: String,
    dedup_ttl_s: u64,
    timeout: Duration,
}

/// A plan split by entity: each part's plan, and the positions of its
/// features in the whole feature vector.
type Parts = [(Plan, Vec<usize>)];

/// One server, or a cluster's nodes behind one routing connection.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    async fn pipe<T: redis::FromRedisValue>(&self, pipe: &redis::Pipeline) -> redis::RedisResult<T> {
        match self {
            Conn::Single(c) => pipe.query_async(&mut c.clone()).await,
            Conn::Cluster(c) => pipe.query_async(&mut c.clone()).await,
        }
    }

    /// One command; in a cluster, keyless commands such as `SCRIPT LOAD` go to
    /// every primary.
    async fn cmd<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> redis::RedisResult<T> {
        match self {
            Conn::Single(c) => cmd.query_async(&mut c.clone()).await,
            Conn::Cluster(c) => cmd.query_async(&mut c.clone()).await,
        }
    }
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
        let store = RedisStore::new(Conn::Single(conn), plan, None, prefix, dedup_ttl_s, timeout);
        store.ping().await?;
        // A cluster node answers single-slot commands and refuses the rest with
        // MOVED: say so now rather than at the first event of another slot.
        let mut info = redis::pipe();
        info.cmd("INFO").arg("cluster");
        let (info,): (String,) = store.query(&info).await?;
        if info.lines().any(|l| l.trim() == "cluster_enabled:1") {
            return Err(FeatureError::Unavailable(format!(
                "{url} is a Redis Cluster node: use backend = \"redis-cluster\" with redis_nodes"
            )));
        }
        store.load_script().await?;
        Ok(store)
    }

    /// Connects to a Redis Cluster through any of its `nodes` (seed URLs), and
    /// checks that every primary answers. Keys are laid out per entity (module docs).
    pub async fn connect_cluster(
        nodes: &[String],
        plan: Plan,
        prefix: &str,
        dedup_ttl_s: u64,
        timeout_ms: u64,
    ) -> Result<RedisStore, FeatureError> {
        let timeout = Duration::from_millis(timeout_ms);
        let named = nodes.join(", ");
        let client = ClusterClientBuilder::new(nodes.to_vec())
            .connection_timeout(timeout.max(Duration::from_secs(2)))
            .response_timeout(timeout)
            .retries(2)
            .build()
            .map_err(|e| FeatureError::Unavailable(format!("cluster {named}: {e}")))?;
        let connect = client.get_async_connection();
        let conn = tokio::time::timeout(timeout.max(Duration::from_secs(2)) * 3, connect)
            .await
            .map_err(|_| FeatureError::Unavailable(format!("no answer from cluster {named}")))?
            .map_err(|e| FeatureError::Unavailable(format!("cannot connect to cluster {named}: {e}")))?;
        let parts = Some(Arc::from(plan.by_entity()));
        let store = RedisStore::new(Conn::Cluster(conn), plan, parts, prefix, dedup_ttl_s, timeout);
        store.ping().await?;
        store.load_script().await?;
        Ok(store)
    }

    fn new(
        conn: Conn,
        plan: Plan,
        parts: Option<Arc<Parts>>,
        prefix: &str,
        dedup_ttl_s: u64,
        timeout: Duration,
    ) -> RedisStore {
        RedisStore {
            plan: Arc::new(plan),
            conn,
            parts,
            script: Script::new(CAS_SCRIPT),
            prefix: prefix.to_owned(),
            dedup_ttl_s,
            timeout,
        }
    }

    fn state_key(&self, entity: &str) -> String {
        // The entity id is the hash tag, so one entity's keys share a cluster slot.
        format!("{}:s5:{{{}}}", self.prefix, entity)
    }

    fn marker_key(&self, transaction_id: &str) -> String {
        format!("{}:tx2:{{{}}}", self.prefix, transaction_id)
    }

    /// In a cluster: an entity's own marker of a transaction, in the entity's slot.
    fn entity_marker_key(&self, entity: &str, transaction_id: &str) -> String {
        format!("{}:tx3:{{{}}}:{}", self.prefix, entity, transaction_id)
    }

    /// In a cluster: an entity's own marker of a counted fraud label.
    fn entity_label_marker_key(&self, entity: &str, transaction_id: &str) -> String {
        format!("{}:lb4:{{{}}}:{}", self.prefix, entity, transaction_id)
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
        tokio::time::timeout(self.timeout, self.conn.pipe(pipe))
            .await
            .map_err(|_| FeatureError::Timeout(self.timeout.as_millis() as u64))
    }

    /// Loads the compare-and-set script (Redis forgets it when it restarts), on
    /// every primary of a cluster.
    async fn load_script(&self) -> Result<(), FeatureError> {
        let mut load = redis::cmd("SCRIPT");
        load.arg("LOAD").arg(CAS_SCRIPT);
        tokio::time::timeout(self.timeout, self.conn.cmd::<String>(&load))
            .await
            .map_err(|_| FeatureError::Timeout(self.timeout.as_millis() as u64))?
            .map(drop)
            .map_err(unavailable)
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
        state_ttl_s: u64,
        marker_ttl_s: u64,
        mut compute: impl FnMut(usize, &mut [EntityState], &[Option<Vec<u8>>]) -> Result<Round<T>, FeatureError>,
    ) -> Result<Vec<T>, FeatureError> {
        let mut out = Vec::with_capacity(chunks.len());
        let mut reads: Option<Reads> = None;
        let (mut c, mut refused) = (0, 0);
        let state_ttl_ms = state_ttl_s * 1000;
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
                states: keys.entities.iter().map(|e| self.state_key(e)).collect(),
                markers: chunk.iter().map(|i| marker(i)).collect(),
            })
            .collect();
        (batches, chunks)
    }

    /// Features of `events` under `plan`, the entities of a chunk given by
    /// `keys`, each event marked under `marker`.
    async fn process_events(
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
                    .map(|m| m.as_deref().map(decode_marker).transpose())
                    .collect::<Result<Vec<_>, _>>()?;
                let (out, changes) = plan.compute(events, keys, states, &seen);
                let markers = changes.first_seen.iter().map(|&i| (i, encode_marker(&out[i]))).collect();
                Ok(Round { out, dirty: changes.dirty, markers })
            })
            .await?;
        Ok(outs.into_iter().flatten().collect())
    }

    /// Counts `labels` under `plan`, the entities of a chunk given by `keys`,
    /// each label marked under `marker`.
    async fn process_labels(
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

    /// Reads one key (in a cluster, any slot).
    async fn get(&self, key: String) -> Result<Option<Vec<u8>>, FeatureError> {
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(key);
        let (value,): (Option<Vec<u8>>,) = self.query(&pipe).await?;
        Ok(value)
    }

    /// Sets one key unless it exists, expiring after `ttl_s`.
    async fn set_once(&self, key: String, value: Vec<u8>, ttl_s: u64) -> Result<(), FeatureError> {
        let mut pipe = redis::pipe();
        pipe.cmd("SET").arg(key).arg(value).arg("NX").arg("EX").arg(ttl_s).ignore();
        self.query::<()>(&pipe).await
    }

    /// Runs `unit` for every record the `items` touch under each part of the
    /// plan (a part is one record key, [`Plan::by_entity`]), concurrently:
    /// each record's keys share one slot. A unit gets its part's plan, the
    /// items that touch the record and their keys over it alone
    /// ([`BatchKeys::of_entity`]; the record is their one key). Returns, per
    /// part and record, the items it covered and what its unit gave for them.
    async fn per_entity<'a, 'p, I, T, F, Fut>(
        &self,
        parts: &'p Parts,
        items: &[&'a I],
        keys: impl Fn(&Plan, &[&'a I]) -> BatchKeys,
        unit: F,
    ) -> Result<Vec<(usize, Vec<usize>, Vec<T>)>, FeatureError>
    where
        F: Fn(&'p Plan, BatchKeys, Vec<&'a I>) -> Fut,
        Fut: std::future::Future<Output = Result<Vec<T>, FeatureError>>,
    {
        let mut units = Vec::new();
        for (p, (plan, _)) in parts.iter().enumerate() {
            let keys = keys(plan, items);
            for (k, members) in keys.items_by_entity().into_iter().enumerate() {
                let run = unit(plan, keys.of_entity(k, &members), members.iter().map(|&i| items[i]).collect());
                units.push(async move { run.await.map(|out| (p, members, out)) });
            }
        }
        try_join_all(units).await
    }

    /// `process` on a cluster (module docs).
    async fn process_in_cluster(&self, parts: &Parts, events: &[&Event]) -> Result<Vec<FeatureVector>, FeatureError> {
        // A repeated id within the call is its first occurrence's replay.
        let mut first: HashMap<&str, usize> = HashMap::new();
        let origin: Vec<usize> =
            events.iter().enumerate().map(|(i, e)| *first.entry(&e.transaction_id).or_insert(i)).collect();
        let fresh: Vec<usize> = (0..events.len()).filter(|&i| origin[i] == i).collect();
        let committed =
            try_join_all(fresh.iter().map(|&i| self.get(self.marker_key(&events[i].transaction_id)))).await?;
        let mut out: Vec<Option<FeatureVector>> = vec![None; events.len()];
        let mut pending = Vec::new();
        for (&i, stored) in fresh.iter().zip(committed) {
            match stored {
                Some(bytes) => out[i] = Some(decode_marker(&bytes)?),
                None => pending.push(i),
            }
        }
        let todo: Vec<&Event> = pending.iter().map(|&i| events[i]).collect();
        let width = self.plan.defs().len();
        let mut merged: Vec<FeatureVector> = todo
            .iter()
            .map(|e| FeatureVector {
                values: vec![FeatureValue::Missing; width],
                replayed: false,
                fingerprint: e.fingerprint(),
            })
            .collect();
        // Whether every entity of the event had counted it before (a call cut short).
        let mut replayed: Vec<Option<bool>> = vec![None; todo.len()];
        let units = self
            .per_entity(
                parts,
                &todo,
                |plan, items| plan.keys(items),
                |plan, keys, evs| async move {
                    let entity = &keys.entities[0];
                    let chunk = |at, c: &[&Event]| keys.slice(at, c.len());
                    self.process_events(plan, &evs, chunk, |e| self.entity_marker_key(entity, &e.transaction_id)).await
                },
            )
            .await?;
        for (p, members, outs) in units {
            for (j, fv) in members.into_iter().zip(outs) {
                for (&at, v) in parts[p].1.iter().zip(fv.values) {
                    merged[j].values[at] = v;
                }
                if fv.replayed {
                    // The stored fingerprint tells a reused id from a retry.
                    merged[j].fingerprint = fv.fingerprint;
                }
                replayed[j] = Some(replayed[j].unwrap_or(true) && fv.replayed);
            }
        }
        // Every entity has counted the events: record their whole features.
        try_join_all(pending.iter().zip(&merged).map(|(&i, fv)| {
            self.set_once(self.marker_key(&events[i].transaction_id), encode_marker(fv), self.dedup_ttl_s)
        }))
        .await?;
        for ((&i, mut fv), again) in pending.iter().zip(merged).zip(replayed) {
            fv.replayed = again.unwrap_or(false);
            out[i] = Some(fv);
        }
        for (i, &o) in origin.iter().enumerate() {
            if o != i {
                out[i] = out[o].clone().map(|fv| FeatureVector { replayed: true, ..fv });
            }
        }
        Ok(out.into_iter().map(|fv| fv.expect("every event is decided")).collect())
    }

    /// `apply_labels` on a cluster (module docs): the plan tells fresh frauds
    /// from genuine verdicts and repeats, then each fresh fraud is counted by
    /// each of its entities, then marked as counted.
    async fn labels_in_cluster(&self, parts: &Parts, labels: &[&Label]) -> Result<Vec<LabelOutcome>, FeatureError> {
        // Only frauds count, so only theirs are looked up.
        let seen = try_join_all(labels.iter().map(|l| async move {
            match l.verdict {
                vigil_core::Verdict::Fraud => {
                    self.get(self.label_marker_key(&l.transaction_id)).await.map(|m| m.is_some())
                }
                vigil_core::Verdict::Genuine => Ok(false),
            }
        }))
        .await?;
        let (mut out, changes) = self.plan.apply_labels(labels, &BatchKeys::none(labels.len()), &mut [], &seen);
        let todo: Vec<&Label> = changes.first_seen.iter().map(|&i| labels[i]).collect();
        let mut again: Vec<Option<bool>> = vec![None; todo.len()];
        let units = self
            .per_entity(
                parts,
                &todo,
                |plan, items| plan.label_keys(items),
                |plan, keys, ls| async move {
                    let entity = &keys.entities[0];
                    let chunk = |at, c: &[&Label]| keys.slice(at, c.len());
                    self.process_labels(plan, &ls, chunk, |l| self.entity_label_marker_key(entity, &l.transaction_id))
                        .await
                },
            )
            .await?;
        for (_, members, outs) in units {
            for (j, outcome) in members.into_iter().zip(outs) {
                again[j] = Some(again[j].unwrap_or(true) && outcome == LabelOutcome::AlreadyCounted);
            }
        }
        let ttl = self.plan.state_ttl_s();
        try_join_all(todo.iter().map(|l| self.set_once(self.label_marker_key(&l.transaction_id), b"1".to_vec(), ttl)))
            .await?;
        for (&i, again) in changes.first_seen.iter().zip(again) {
            if again == Some(true) {
                out[i] = LabelOutcome::AlreadyCounted;
            }
        }
        Ok(out)
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
        match &self.parts {
            None => {
                let keys = |_, c: &[&Event]| self.plan.keys(c);
                self.process_events(&self.plan, events, keys, |e| self.marker_key(&e.transaction_id)).await
            }
            Some(parts) => self.process_in_cluster(parts, events).await,
        }
    }

    async fn apply_labels(&self, labels: &[&Label]) -> Result<Vec<LabelOutcome>, FeatureError> {
        // Nothing to count: no round trip (the outcome is what the plan gives).
        if !self.plan.has_label_features() || labels.iter().all(|l| l.verdict == vigil_core::Verdict::Genuine) {
            let (out, _) =
                self.plan.apply_labels(labels, &BatchKeys::none(labels.len()), &mut [], &vec![false; labels.len()]);
            return Ok(out);
        }
        match &self.parts {
            None => {
                let keys = |_, c: &[&Label]| self.plan.label_keys(c);
                self.process_labels(&self.plan, labels, keys, |l| self.label_marker_key(&l.transaction_id)).await
            }
            Some(parts) => self.labels_in_cluster(parts, labels).await,
        }
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
