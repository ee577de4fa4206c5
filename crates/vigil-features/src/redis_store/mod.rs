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
//! In a cluster, see [`cluster`]. The key names are in [`layout`].

mod chunks;
mod cluster;
pub mod layout;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::Script;
use vigil_core::{Event, FeatureVector, Label};

use crate::plan::{BatchKeys, Plan};
use crate::{FeatureError, FeatureStore, LabelOutcome};

use chunks::CAS_SCRIPT;
pub use chunks::CHUNK;
pub use layout::KeyLayout;

/// Features kept in Redis, shared by every Vigil process that uses the same prefix.
#[derive(Clone)]
pub struct RedisStore {
    plan: Arc<Plan>,
    conn: Conn,
    /// In a cluster: the plan split by record, each part with the positions of
    /// its features in the whole vector (module docs).
    parts: Option<Arc<Parts>>,
    script: Script,
    keys: KeyLayout,
    dedup_ttl_s: u64,
    timeout: Duration,
}

/// A plan split by record: each part's plan, and the positions of its
/// features in the whole feature vector.
type Parts = [(Plan, Vec<usize>)];

/// One server, or a cluster's nodes behind one routing connection.
#[derive(Clone)]
pub(crate) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    /// Connects to one server, failing within a few times `timeout` (the
    /// handshake's) rather than hanging.
    pub(crate) async fn single(url: &str, timeout: Duration) -> Result<Conn, FeatureError> {
        let client = redis::Client::open(url).map_err(unavailable)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout.max(Duration::from_secs(2))))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(2);
        let connect = ConnectionManager::new_with_config(client, config);
        let conn = tokio::time::timeout(timeout.max(Duration::from_secs(2)) * 3, connect)
            .await
            .map_err(|_| FeatureError::Unavailable(format!("no answer from {url}")))?
            .map_err(|e| FeatureError::Unavailable(format!("cannot connect to {url}: {e}")))?;
        Ok(Conn::Single(conn))
    }

    /// Connects to a cluster through any of its seed `nodes`.
    pub(crate) async fn cluster(nodes: &[String], timeout: Duration) -> Result<Conn, FeatureError> {
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
        Ok(Conn::Cluster(conn))
    }

    /// A cluster node answers single-slot commands and refuses the rest with
    /// MOVED: say so at connection rather than at the first key of another slot.
    pub(crate) async fn refuse_cluster_node(&self, url: &str, timeout: Duration) -> Result<(), FeatureError> {
        let mut info = redis::pipe();
        info.cmd("INFO").arg("cluster");
        let (info,): (String,) = tokio::time::timeout(timeout, self.pipe(&info))
            .await
            .map_err(|_| FeatureError::Timeout(timeout.as_millis() as u64))?
            .map_err(unavailable)?;
        if info.lines().any(|l| l.trim() == "cluster_enabled:1") {
            return Err(FeatureError::Unavailable(format!(
                "{url} is a Redis Cluster node: use backend = \"redis-cluster\" with redis_nodes"
            )));
        }
        Ok(())
    }

    pub(crate) async fn pipe<T: redis::FromRedisValue>(&self, pipe: &redis::Pipeline) -> redis::RedisResult<T> {
        match self {
            Conn::Single(c) => pipe.query_async(&mut c.clone()).await,
            Conn::Cluster(c) => pipe.query_async(&mut c.clone()).await,
        }
    }

    /// One command; in a cluster, keyless commands such as `SCRIPT LOAD` go to
    /// every primary.
    pub(crate) async fn cmd<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> redis::RedisResult<T> {
        match self {
            Conn::Single(c) => cmd.query_async(&mut c.clone()).await,
            Conn::Cluster(c) => cmd.query_async(&mut c.clone()).await,
        }
    }
}

pub(crate) fn unavailable(e: redis::RedisError) -> FeatureError {
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
        let timeout = Duration::from_millis(timeout_ms);
        let conn = Conn::single(url, timeout).await?;
        let store = RedisStore::new(conn, plan, None, prefix, dedup_ttl_s, timeout);
        store.ping().await?;
        store.conn.refuse_cluster_node(url, timeout).await?;
        store.load_script().await?;
        Ok(store)
    }

    /// Connects to a Redis Cluster through any of its `nodes` (seed URLs), and
    /// checks that every primary answers. Keys are laid out per record (module `cluster`).
    pub async fn connect_cluster(
        nodes: &[String],
        plan: Plan,
        prefix: &str,
        dedup_ttl_s: u64,
        timeout_ms: u64,
    ) -> Result<RedisStore, FeatureError> {
        let timeout = Duration::from_millis(timeout_ms);
        let conn = Conn::cluster(nodes, timeout).await?;
        let parts = Some(Arc::from(plan.by_record()));
        let store = RedisStore::new(conn, plan, parts, prefix, dedup_ttl_s, timeout);
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
            keys: KeyLayout::new(prefix),
            dedup_ttl_s,
            timeout,
        }
    }

    /// Sends `pipe` within the call timeout.
    pub(super) async fn query<T: redis::FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T, FeatureError> {
        self.query_raw(pipe).await?.map_err(unavailable)
    }

    /// As `query`, with Redis's own error left for the caller to look at.
    pub(super) async fn query_raw<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<redis::RedisResult<T>, FeatureError> {
        tokio::time::timeout(self.timeout, self.conn.pipe(pipe))
            .await
            .map_err(|_| FeatureError::Timeout(self.timeout.as_millis() as u64))
    }

    /// Loads the compare-and-set script (Redis forgets it when it restarts), on
    /// every primary of a cluster.
    pub(super) async fn load_script(&self) -> Result<(), FeatureError> {
        let mut load = redis::cmd("SCRIPT");
        load.arg("LOAD").arg(CAS_SCRIPT);
        tokio::time::timeout(self.timeout, self.conn.cmd::<String>(&load))
            .await
            .map_err(|_| FeatureError::Timeout(self.timeout.as_millis() as u64))?
            .map(drop)
            .map_err(unavailable)
    }

    /// Reads one key (in a cluster, any slot).
    pub(super) async fn get(&self, key: String) -> Result<Option<Vec<u8>>, FeatureError> {
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(key);
        let (value,): (Option<Vec<u8>>,) = self.query(&pipe).await?;
        Ok(value)
    }

    /// Sets one key unless it exists, expiring after `ttl_s`.
    pub(super) async fn set_once(&self, key: String, value: Vec<u8>, ttl_s: u64) -> Result<(), FeatureError> {
        let mut pipe = redis::pipe();
        pipe.cmd("SET").arg(key).arg(value).arg("NX").arg("EX").arg(ttl_s).ignore();
        self.query::<()>(&pipe).await
    }
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
                self.process_events(&self.plan, events, keys, |e| self.keys.marker(&e.transaction_id)).await
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
                self.process_labels(&self.plan, labels, keys, |l| self.keys.label_marker(&l.transaction_id)).await
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
