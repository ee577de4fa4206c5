//! Where the owned store's state survives its process: an epoch, a snapshot
//! of records and markers, and the entries appended since. [`RedisJournal`]
//! keeps them in Redis (one server or a cluster: one hash tag, so every
//! script runs on one node); [`MemoryJournal`] in this process, for tests and
//! for two owners in one process.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use redis::Script;

use crate::redis_store::{unavailable, Conn};
use crate::{FeatureError, KeyLayout};

/// What a new owner finds.
#[derive(Debug, Default, Clone)]
pub struct Taken {
    /// The epoch the new owner holds.
    pub epoch: u64,
    /// Record id and its stored form, as of the last snapshot.
    pub records: Vec<(String, Vec<u8>)>,
    /// The last snapshot's markers, if one was written.
    pub marks: Option<Vec<u8>>,
    /// Entries appended since the last snapshot, oldest first.
    pub log: Vec<Vec<u8>>,
}

/// What a snapshot writes, in one step.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    /// How many entries at the head of the log it covers (they are dropped).
    pub covered: u64,
    /// Records to set (`Some`: their stored form) or remove (`None`).
    pub records: Vec<(String, Option<Vec<u8>>)>,
    /// The markers, replacing the last snapshot's.
    pub marks: Vec<u8>,
}

/// The owned store's durable side. Every write checks the writer's epoch.
#[async_trait]
pub trait Journal: Send + Sync {
    /// Takes ownership: the epoch goes up by one (only if it is still
    /// `held`, when given: a reload must not take back what another owner
    /// took), then reads everything.
    async fn take(&self, held: Option<u64>) -> Result<Taken, FeatureError>;
    /// Appends one entry, if `epoch` still owns the journal.
    async fn append(&self, epoch: u64, entry: Vec<u8>) -> Result<(), FeatureError>;
    /// Writes `snapshot` in one step, if `epoch` still owns the journal.
    async fn snapshot(&self, epoch: u64, snapshot: Snapshot) -> Result<(), FeatureError>;
    async fn ping(&self) -> Result<(), FeatureError> {
        Ok(())
    }
}

fn fenced(epoch: u64) -> FeatureError {
    FeatureError::Fenced(format!(
        "another process took the feature state after epoch {epoch}: mode = \"owned\" runs one owner per pipeline"
    ))
}

#[derive(Default)]
struct Held {
    epoch: u64,
    records: HashMap<String, Vec<u8>>,
    marks: Option<Vec<u8>>,
    log: Vec<Vec<u8>>,
}

/// A journal in this process's memory.
#[derive(Default)]
pub struct MemoryJournal {
    held: Mutex<Held>,
}

impl MemoryJournal {
    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Entries appended since the last snapshot.
    pub fn log_len(&self) -> usize {
        self.held().log.len()
    }
}

#[async_trait]
impl Journal for MemoryJournal {
    async fn take(&self, held: Option<u64>) -> Result<Taken, FeatureError> {
        let mut h = self.held();
        if held.is_some_and(|e| e != h.epoch) {
            return Err(fenced(h.epoch));
        }
        h.epoch += 1;
        Ok(Taken {
            epoch: h.epoch,
            records: h.records.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            marks: h.marks.clone(),
            log: h.log.clone(),
        })
    }

    async fn append(&self, epoch: u64, entry: Vec<u8>) -> Result<(), FeatureError> {
        let mut h = self.held();
        if h.epoch != epoch {
            return Err(fenced(epoch));
        }
        h.log.push(entry);
        Ok(())
    }

    async fn snapshot(&self, epoch: u64, Snapshot { covered, records, marks }: Snapshot) -> Result<(), FeatureError> {
        let mut h = self.held();
        if h.epoch != epoch {
            return Err(fenced(epoch));
        }
        for (k, v) in records {
            match v {
                Some(v) => h.records.insert(k, v),
                None => h.records.remove(&k),
            };
        }
        h.marks = Some(marks);
        let covered = (covered as usize).min(h.log.len());
        h.log.drain(..covered);
        Ok(())
    }
}

/// Appends an entry if the epoch is still the caller's.
const APPEND: &str = r"
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return redis.error_reply('VIGILFENCED') end
redis.call('RPUSH', KEYS[2], ARGV[2])
return 1
";

/// Takes the journal again only if the epoch is still the caller's.
const TAKE_AGAIN: &str = r"
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return redis.error_reply('VIGILFENCED') end
return redis.call('HINCRBY', KEYS[1], 'epoch', 1)
";

/// ARGV: epoch, entries covered, marks, records set (n), n pairs, then the
/// records removed.
const SNAPSHOT: &str = r"
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return redis.error_reply('VIGILFENCED') end
local n = tonumber(ARGV[4])
local i = 5
while n > 0 do
  local k = math.min(n, 256)
  local args = {}
  for j = 0, 2 * k - 1 do args[j + 1] = ARGV[i + j] end
  redis.call('HSET', KEYS[3], unpack(args))
  i = i + 2 * k
  n = n - k
end
while i <= #ARGV do
  local args = {}
  for j = i, math.min(i + 255, #ARGV) do args[#args + 1] = ARGV[j] end
  redis.call('HDEL', KEYS[3], unpack(args))
  i = i + #args
end
redis.call('SET', KEYS[4], ARGV[3])
redis.call('LTRIM', KEYS[2], tonumber(ARGV[2]), -1)
return 1
";

/// A journal in Redis (module docs; key names in [`crate::layout`]).
pub struct RedisJournal {
    conn: Conn,
    keys: [String; 4],
    timeout: Duration,
    append: Script,
    take_again: Script,
    snapshot: Script,
}

impl RedisJournal {
    /// A journal on one server.
    pub async fn connect(url: &str, prefix: &str, timeout_ms: u64) -> Result<RedisJournal, FeatureError> {
        let timeout = Duration::from_millis(timeout_ms);
        let conn = Conn::single(url, timeout).await?;
        conn.refuse_cluster_node(url, timeout).await?;
        Ok(Self::new(conn, prefix, timeout))
    }

    /// A journal on a cluster, through any of its seed `nodes`.
    pub async fn connect_cluster(
        nodes: &[String],
        prefix: &str,
        timeout_ms: u64,
    ) -> Result<RedisJournal, FeatureError> {
        let timeout = Duration::from_millis(timeout_ms);
        Ok(Self::new(Conn::cluster(nodes, timeout).await?, prefix, timeout))
    }

    fn new(conn: Conn, prefix: &str, timeout: Duration) -> RedisJournal {
        let k = KeyLayout::new(prefix);
        RedisJournal {
            conn,
            keys: [k.owned("meta"), k.owned("log"), k.owned("state"), k.owned("marks")],
            // A snapshot or a takeover moves more than one call's worth.
            timeout: timeout.max(Duration::from_secs(10)),
            append: Script::new(APPEND),
            take_again: Script::new(TAKE_AGAIN),
            snapshot: Script::new(SNAPSHOT),
        }
    }

    /// `call` within the journal's timeout.
    async fn within<T>(&self, call: impl std::future::Future<Output = T>) -> Result<T, FeatureError> {
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| FeatureError::Timeout(self.timeout.as_millis() as u64))
    }

    async fn query<T: redis::FromRedisValue>(&self, pipe: &redis::Pipeline, epoch: u64) -> Result<T, FeatureError> {
        self.within(self.conn.pipe(pipe)).await?.map_err(|e| refused(e, epoch))
    }

    /// Runs a script (`source`), loading it first when Redis forgot it (a
    /// restart, `SCRIPT FLUSH`).
    async fn run<T: redis::FromRedisValue>(
        &self,
        source: &'static str,
        invocation: &redis::ScriptInvocation<'_>,
        epoch: u64,
    ) -> Result<T, FeatureError> {
        let mut pipe = redis::pipe();
        pipe.invoke_script(invocation);
        for first in [true, false] {
            match self.within(self.conn.pipe::<(T,)>(&pipe)).await? {
                Ok((v,)) => return Ok(v),
                Err(e) if first && e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                    let mut load = redis::cmd("SCRIPT");
                    load.arg("LOAD").arg(source);
                    self.within(self.conn.cmd::<String>(&load)).await?.map_err(unavailable)?;
                }
                Err(e) => return Err(refused(e, epoch)),
            }
        }
        Err(FeatureError::Unavailable("script not loaded".into()))
    }
}

/// Redis's error, or the fence when a script refused the epoch.
fn refused(e: redis::RedisError, epoch: u64) -> FeatureError {
    if e.to_string().contains("VIGILFENCED") {
        fenced(epoch)
    } else {
        unavailable(e)
    }
}

#[async_trait]
impl Journal for RedisJournal {
    async fn take(&self, held: Option<u64>) -> Result<Taken, FeatureError> {
        let [meta, log, state, marks] = &self.keys;
        let epoch: u64 = match held {
            None => {
                let mut pipe = redis::pipe();
                pipe.cmd("HINCRBY").arg(meta).arg("epoch").arg(1);
                self.query::<(u64,)>(&pipe, 0).await?.0
            }
            Some(e) => {
                let mut inv = self.take_again.key(meta);
                inv.arg(e);
                self.run(TAKE_AGAIN, &inv, e).await?
            }
        };
        let mut records = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let mut pipe = redis::pipe();
            pipe.cmd("HSCAN").arg(state).arg(cursor).arg("COUNT").arg(1000);
            let ((next, page),): ((u64, Vec<(String, Vec<u8>)>),) = self.query(&pipe, epoch).await?;
            records.extend(page);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(marks).cmd("LRANGE").arg(log).arg(0).arg(-1);
        let (marks, log): (Option<Vec<u8>>, Vec<Vec<u8>>) = self.query(&pipe, epoch).await?;
        Ok(Taken { epoch, records, marks, log })
    }

    async fn append(&self, epoch: u64, entry: Vec<u8>) -> Result<(), FeatureError> {
        let mut inv = self.append.key(&self.keys[0]);
        inv.key(&self.keys[1]).arg(epoch).arg(entry);
        self.run::<i64>(APPEND, &inv, epoch).await.map(drop)
    }

    async fn snapshot(&self, epoch: u64, Snapshot { covered, records, marks }: Snapshot) -> Result<(), FeatureError> {
        let mut inv = self.snapshot.key(&self.keys[0]);
        inv.key(&self.keys[1]).key(&self.keys[2]).key(&self.keys[3]);
        let set: Vec<&(String, Option<Vec<u8>>)> = records.iter().filter(|(_, v)| v.is_some()).collect();
        inv.arg(epoch).arg(covered).arg(marks).arg(set.len());
        for (k, v) in &set {
            inv.arg(k).arg(v.as_deref().unwrap_or_default());
        }
        for (k, _) in records.iter().filter(|(_, v)| v.is_none()) {
            inv.arg(k);
        }
        self.run::<i64>(SNAPSHOT, &inv, epoch).await.map(drop)
    }

    async fn ping(&self) -> Result<(), FeatureError> {
        let mut pipe = redis::pipe();
        pipe.cmd("EXISTS").arg(&self.keys[0]);
        self.query::<(i64,)>(&pipe, 0).await.map(drop)
    }
}
