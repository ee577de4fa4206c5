//! Where the owned store's state survives its process: an epoch, a snapshot
//! of records and markers, and the entries appended since. [`RedisJournal`]
//! keeps them in Redis (one server or a cluster: one hash tag, so every
//! script runs on one node); [`MemoryJournal`] in this process, for tests and
//! for two owners in one process.
//!
//! A snapshot in Redis is written in parts, so that no script holds Redis
//! (and every other client of it) for long: the changed records go to a
//! staging hash (`next`) and the markers to a staging string (`nextmarks`),
//! a part at a time; one small script then marks the stage committed,
//! renames the staged markers over the last ones and trims the entries it
//! covers; then the stage is folded into the records (`state`) a part at a
//! time. A reader overlays a committed stage on the records, so the state it
//! sees is whole at every step; a stage never committed (the owner died or
//! was fenced while writing it) is ignored and cleared by the next snapshot.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use redis::Script;

use crate::redis_store::{unavailable, Conn};
use crate::{FeatureError, KeyLayout};

/// Record ids and their stored forms.
type Records = Vec<(String, Vec<u8>)>;

/// What a new owner finds.
#[derive(Debug, Default, Clone)]
pub struct Taken {
    /// The epoch the new owner holds.
    pub epoch: u64,
    /// Record id and its stored form, as of the last snapshot, in the order
    /// to apply them: a later one of the same id replaces an earlier one,
    /// and an empty form removes the record.
    pub records: Vec<(String, Vec<u8>)>,
    /// The last snapshot's markers, if one was written.
    pub marks: Option<Vec<u8>>,
    /// Entries appended since the last snapshot, oldest first.
    pub log: Vec<Vec<u8>>,
}

/// What a snapshot writes (whole, as far as any reader can tell).
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    /// How many entries at the head of the log it covers (they are dropped).
    pub covered: u64,
    /// Records to set (`Some`: their stored form) or remove (`None`).
    pub records: Vec<(String, Option<Vec<u8>>)>,
    /// The markers, replacing the last snapshot's.
    pub marks: Vec<u8>,
}

/// The markers of the transactions one entry counted first: their first
/// features, kept apart from the entries for the de-duplication TTL, so that
/// a retry finds them after the entry was trimmed and after the owner's
/// memory let them go.
#[derive(Debug, Default, Clone)]
pub struct Markers {
    /// How long they are kept, in seconds.
    pub ttl_s: u64,
    /// Transaction id and its marker ([`crate::marker::encode_compact`]).
    pub items: Vec<(String, Vec<u8>)>,
}

/// The owned store's durable side. Every write checks the writer's epoch.
#[async_trait]
pub trait Journal: Send + Sync {
    /// Takes ownership for `taker` (a token of the owning process): the
    /// epoch goes up by one (only if it is still `held`, when given: a
    /// reload must not take back what another owner took; but the epoch
    /// past `held` that this taker took, in a take whose answer was lost,
    /// is its own), then reads everything.
    async fn take(&self, held: Option<u64>, taker: &str) -> Result<Taken, FeatureError>;
    /// Appends entries, in order, and their transactions' markers, all
    /// together, if `epoch` still owns the journal.
    async fn append(&self, epoch: u64, entries: Vec<Vec<u8>>, markers: Markers) -> Result<(), FeatureError>;
    /// The markers of these transactions that are kept (by id, in order;
    /// `None` where there is none or it expired).
    async fn markers(&self, ids: &[&str]) -> Result<Vec<Option<Vec<u8>>>, FeatureError>;
    /// Writes `snapshot`, if `epoch` still owns the journal: a reader sees
    /// all of it or none of it.
    async fn snapshot(&self, epoch: u64, snapshot: Snapshot) -> Result<(), FeatureError>;
    /// Whether the journal answers and `epoch` still owns it.
    async fn ping(&self, epoch: u64) -> Result<(), FeatureError>;
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
    /// Transaction id to its marker and when it expires (wall clock, s).
    markers: HashMap<String, (Vec<u8>, i64)>,
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
    async fn take(&self, held: Option<u64>, _taker: &str) -> Result<Taken, FeatureError> {
        // In memory no answer is lost.
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

    async fn append(&self, epoch: u64, entries: Vec<Vec<u8>>, markers: Markers) -> Result<(), FeatureError> {
        let mut h = self.held();
        if h.epoch != epoch {
            return Err(fenced(epoch));
        }
        h.log.extend(entries);
        let expires = crate::memory::wall_clock_s() + markers.ttl_s as i64;
        for (id, m) in markers.items {
            h.markers.insert(id, (m, expires));
        }
        Ok(())
    }

    async fn markers(&self, ids: &[&str]) -> Result<Vec<Option<Vec<u8>>>, FeatureError> {
        let h = self.held();
        let now = crate::memory::wall_clock_s();
        Ok(ids.iter().map(|id| h.markers.get(*id).filter(|(_, t)| *t > now).map(|(m, _)| m.clone())).collect())
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

    async fn ping(&self, epoch: u64) -> Result<(), FeatureError> {
        if self.held().epoch != epoch {
            return Err(fenced(epoch));
        }
        Ok(())
    }
}

/// Appends entries and sets their transactions' markers, if the epoch is
/// still the caller's. KEYS: meta, log, then the markers' keys. ARGV: epoch,
/// the markers' TTL in seconds, how many entries, the entries, then the
/// markers.
const APPEND: &str = r"
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return redis.error_reply('VIGILFENCED') end
local n = tonumber(ARGV[3])
for i = 4, 3 + n, 4000 do redis.call('RPUSH', KEYS[2], unpack(ARGV, i, math.min(i + 3999, 3 + n))) end
for i = 3, #KEYS do redis.call('SET', KEYS[i], ARGV[n + i + 1], 'EX', ARGV[2]) end
return 1
";

/// Takes the journal: the epoch goes up by one, and the taker (a token of
/// the process) is recorded with it. ARGV: the taker.
const TAKE: &str = r"
local n = redis.call('HINCRBY', KEYS[1], 'epoch', 1)
redis.call('HSET', KEYS[1], 'taker', ARGV[1])
return n
";

/// Takes the journal again only if the epoch is still the caller's (ARGV:
/// the epoch held, the taker). A take whose answer was lost (a timeout
/// after Redis ran it) is found again rather than refused: the epoch one
/// past the one held, taken by this very taker, is the caller's.
const TAKE_AGAIN: &str = r"
local e = redis.call('HGET', KEYS[1], 'epoch')
if e == ARGV[1] then
  local n = redis.call('HINCRBY', KEYS[1], 'epoch', 1)
  redis.call('HSET', KEYS[1], 'taker', ARGV[2])
  return n
end
if e and tonumber(e) == tonumber(ARGV[1]) + 1 and redis.call('HGET', KEYS[1], 'taker') == ARGV[2] then
  return tonumber(e)
end
return redis.error_reply('VIGILFENCED')
";

/// The most a snapshot part carries: a part is one short script.
const PART_BYTES: usize = 256 * 1024;
const PART_RECORDS: usize = 1000;
/// Records moved from the stage to the records per fold script (a hint to
/// `HSCAN`).
const FOLD_RECORDS: u32 = 500;

/// Stages part of a snapshot. KEYS: meta, next. ARGV: epoch, whether this is
/// the first part (an uncommitted stage left by a failed snapshot is cleared),
/// then pairs of record id and stored form (empty: removed).
const PART: &str = r"
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return redis.error_reply('VIGILFENCED') end
if redis.call('HEXISTS', KEYS[1], 'staged') == 1 then return redis.error_reply('VIGILSTAGED a committed stage is not folded yet') end
if ARGV[2] == '1' then redis.call('UNLINK', KEYS[2]) end
local i = 3
while i <= #ARGV do
  local args = {}
  for j = i, math.min(i + 511, #ARGV) do args[#args + 1] = ARGV[j] end
  redis.call('HSET', KEYS[2], unpack(args))
  i = i + #args
end
return 1
";

/// Stages part of a snapshot's markers (megabytes: 20,000 feature vectors).
/// KEYS: meta, nextmarks. ARGV: epoch, whether this is the first part, bytes.
const MARKS_PART: &str = r"
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return redis.error_reply('VIGILFENCED') end
if redis.call('HEXISTS', KEYS[1], 'staged') == 1 then return redis.error_reply('VIGILSTAGED a committed stage is not folded yet') end
if ARGV[2] == '1' then redis.call('UNLINK', KEYS[2]) end
redis.call('APPEND', KEYS[2], ARGV[3])
return 1
";

/// Commits a snapshot: its staged markers replace the last ones, the entries
/// it covers go, and its staged records (if any) are seen over the records.
/// KEYS: meta, log, marks, nextmarks. ARGV: epoch, entries covered, whether
/// records were staged.
const COMMIT: &str = r"
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return redis.error_reply('VIGILFENCED') end
if redis.call('EXISTS', KEYS[4]) == 1 then redis.call('RENAME', KEYS[4], KEYS[3]) end
redis.call('LTRIM', KEYS[2], tonumber(ARGV[2]), -1)
if ARGV[3] == '1' then redis.call('HSET', KEYS[1], 'staged', 1) end
return 1
";

/// Folds part of a committed stage into the records; at the end of the scan
/// the stage goes. Idempotent: a fold cut short is begun again. KEYS: meta,
/// next, state. ARGV: epoch, scan cursor, count. Returns the next cursor
/// (`0`: done, or nothing was staged).
const FOLD: &str = r"
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return redis.error_reply('VIGILFENCED') end
if redis.call('HEXISTS', KEYS[1], 'staged') == 0 then return '0' end
local r = redis.call('HSCAN', KEYS[2], ARGV[2], 'COUNT', ARGV[3])
local f = r[2]
for i = 1, #f, 2 do
  if f[i + 1] == '' then redis.call('HDEL', KEYS[3], f[i]) else redis.call('HSET', KEYS[3], f[i], f[i + 1]) end
end
if r[1] == '0' then
  redis.call('UNLINK', KEYS[2])
  redis.call('HDEL', KEYS[1], 'staged')
end
return r[1]
";

/// A journal in Redis (module docs; key names in [`crate::layout`]).
pub struct RedisJournal {
    /// meta, log, state, marks, next, nextmarks.
    keys: [String; 6],
    layout: KeyLayout,
    conn: Conn,
    timeout: Duration,
    append: Script,
    take: Script,
    take_again: Script,
    part: Script,
    marks_part: Script,
    commit: Script,
    fold: Script,
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
            keys: [
                k.owned("meta"),
                k.owned("log"),
                k.owned("state"),
                k.owned("marks"),
                k.owned("next"),
                k.owned("nextmarks"),
            ],
            layout: k,
            // A takeover moves more than one call's worth.
            timeout: timeout.max(Duration::from_secs(10)),
            append: Script::new(APPEND),
            take: Script::new(TAKE),
            take_again: Script::new(TAKE_AGAIN),
            part: Script::new(PART),
            marks_part: Script::new(MARKS_PART),
            commit: Script::new(COMMIT),
            fold: Script::new(FOLD),
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

    /// Every field of hash `key`, a page at a time.
    async fn scan(&self, key: &str, epoch: u64) -> Result<Records, FeatureError> {
        let mut records = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let mut pipe = redis::pipe();
            pipe.cmd("HSCAN").arg(key).arg(cursor).arg("COUNT").arg(1000);
            let ((next, page),): ((u64, Records),) = self.query(&pipe, epoch).await?;
            records.extend(page);
            if next == 0 {
                return Ok(records);
            }
            cursor = next;
        }
    }

    /// Stages `records` and `marks` in parts (clearing what an uncommitted
    /// snapshot left); says whether there were any records.
    async fn stage(
        &self,
        epoch: u64,
        records: &[(String, Option<Vec<u8>>)],
        marks: &[u8],
    ) -> Result<bool, FeatureError> {
        let [meta, _, _, _, next, next_marks] = &self.keys;
        let mut i = 0;
        while i < records.len() {
            let mut inv = self.part.key(meta);
            inv.key(next).arg(epoch).arg(u8::from(i == 0));
            let (mut bytes, start) = (0, i);
            while i < records.len() && i - start < PART_RECORDS && bytes < PART_BYTES {
                let (k, v) = &records[i];
                let v = v.as_deref().unwrap_or_default();
                inv.arg(k).arg(v);
                bytes += k.len() + v.len();
                i += 1;
            }
            self.run::<i64>(PART, &inv, epoch).await?;
        }
        // At least one part, so that empty markers replace the last ones too.
        let parts = marks.chunks(PART_BYTES).chain(marks.is_empty().then_some(marks));
        for (n, chunk) in parts.enumerate() {
            let mut inv = self.marks_part.key(meta);
            inv.key(next_marks).arg(epoch).arg(u8::from(n == 0)).arg(chunk);
            self.run::<i64>(MARKS_PART, &inv, epoch).await?;
        }
        Ok(!records.is_empty())
    }

    /// Commits a snapshot whose records were staged (if `staged`): from here a
    /// reader sees it.
    async fn commit(&self, epoch: u64, covered: u64, staged: bool) -> Result<(), FeatureError> {
        let [meta, log, _, marks, _, next_marks] = &self.keys;
        let mut inv = self.commit.key(meta);
        inv.key(log).key(marks).key(next_marks).arg(epoch).arg(covered).arg(u8::from(staged));
        self.run::<i64>(COMMIT, &inv, epoch).await.map(drop)
    }

    /// Folds a committed stage, if there is one, into the records.
    async fn fold_stage(&self, epoch: u64) -> Result<(), FeatureError> {
        let [meta, _, state, _, next, _] = &self.keys;
        let mut cursor = "0".to_owned();
        loop {
            let mut inv = self.fold.key(meta);
            inv.key(next).key(state).arg(epoch).arg(&cursor).arg(FOLD_RECORDS);
            cursor = self.run::<String>(FOLD, &inv, epoch).await?;
            if cursor == "0" {
                return Ok(());
            }
        }
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
    async fn take(&self, held: Option<u64>, taker: &str) -> Result<Taken, FeatureError> {
        let [meta, log, state, marks, next, _] = &self.keys;
        let epoch: u64 = match held {
            None => {
                let mut inv = self.take.key(meta);
                inv.arg(taker);
                self.run(TAKE, &inv, 0).await?
            }
            Some(e) => {
                let mut inv = self.take_again.key(meta);
                inv.arg(e).arg(taker);
                self.run(TAKE_AGAIN, &inv, e).await?
            }
        };
        // Fenced from here: nothing else changes what is read.
        let mut pipe = redis::pipe();
        pipe.cmd("HEXISTS").arg(meta).arg("staged");
        let (staged,): (bool,) = self.query(&pipe, epoch).await?;
        let mut records = self.scan(state, epoch).await?;
        if staged {
            records.extend(self.scan(next, epoch).await?);
        }
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(marks).cmd("LRANGE").arg(log).arg(0).arg(-1);
        let (marks, log): (Option<Vec<u8>>, Vec<Vec<u8>>) = self.query(&pipe, epoch).await?;
        Ok(Taken { epoch, records, marks, log })
    }

    async fn append(&self, epoch: u64, entries: Vec<Vec<u8>>, markers: Markers) -> Result<(), FeatureError> {
        if entries.is_empty() && markers.items.is_empty() {
            return Ok(());
        }
        let mut inv = self.append.key(&self.keys[0]);
        inv.key(&self.keys[1]).arg(epoch).arg(markers.ttl_s.max(1)).arg(entries.len());
        for e in &entries {
            inv.arg(e.as_slice());
        }
        for (id, m) in &markers.items {
            inv.key(self.layout.owned_marker(id)).arg(m.as_slice());
        }
        self.run::<i64>(APPEND, &inv, epoch).await.map(drop)
    }

    async fn markers(&self, ids: &[&str]) -> Result<Vec<Option<Vec<u8>>>, FeatureError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        let mget = pipe.cmd("MGET");
        for id in ids {
            mget.arg(self.layout.owned_marker(id));
        }
        Ok(self.query::<(Vec<Option<Vec<u8>>>,)>(&pipe, 0).await?.0)
    }

    async fn snapshot(&self, epoch: u64, Snapshot { covered, records, marks }: Snapshot) -> Result<(), FeatureError> {
        // A stage committed by a snapshot whose fold was cut short goes first.
        self.fold_stage(epoch).await?;
        let staged = self.stage(epoch, &records, &marks).await?;
        self.commit(epoch, covered, staged).await?;
        // Written: a reader sees the stage over the records until it is folded.
        if let Err(e) = self.fold_stage(epoch).await {
            tracing::warn!(error = %e, "owned feature state: snapshot written, its fold cut short; the next snapshot finishes it");
        }
        Ok(())
    }

    async fn ping(&self, epoch: u64) -> Result<(), FeatureError> {
        let mut pipe = redis::pipe();
        pipe.cmd("HGET").arg(&self.keys[0]).arg("epoch");
        let (held,): (Option<u64>,) = self.query(&pipe, epoch).await?;
        if held != Some(epoch) {
            return Err(fenced(epoch));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    async fn journal() -> RedisJournal {
        crate::conformance::owned_journal("redis", &format!("vigiltest-{}", uuid::Uuid::new_v4())).await
    }

    /// Records to set (`Some`) or remove (`None`), as a snapshot carries them.
    type Changes = Vec<(String, Option<Vec<u8>>)>;

    fn records(range: std::ops::Range<usize>, tag: &str) -> Changes {
        range.map(|i| (format!("r{i}"), Some(format!("{tag}{i}:{}", "x".repeat(300)).into_bytes()))).collect()
    }

    /// What a reader of `taken` sees: later records replace earlier ones,
    /// empty ones remove.
    fn seen(taken: &Taken) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        for (k, v) in &taken.records {
            if v.is_empty() {
                out.remove(k);
            } else {
                out.insert(k.clone(), v.clone());
            }
        }
        out
    }

    fn expect(sets: &[&Changes]) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        for set in sets {
            for (k, v) in *set {
                match v {
                    Some(v) => out.insert(k.clone(), v.clone()),
                    None => out.remove(k),
                };
            }
        }
        out
    }

    async fn hlen(j: &RedisJournal, key: &str) -> usize {
        let mut pipe = redis::pipe();
        pipe.cmd("HLEN").arg(key);
        j.query::<(usize,)>(&pipe, 0).await.unwrap().0
    }

    /// A reload whose take was run by Redis but whose answer was lost (a
    /// timeout) takes again without fencing itself; another taker cannot
    /// claim that epoch, and a newer owner fences the older one.
    #[tokio::test]
    async fn a_take_whose_answer_was_lost_is_found_again() {
        let j = journal().await;
        let e = j.take(None, "a").await.unwrap().epoch;
        assert_eq!(j.take(Some(e), "a").await.unwrap().epoch, e + 1);
        // The same reload again, as after a lost answer: the same epoch.
        assert_eq!(j.take(Some(e), "a").await.unwrap().epoch, e + 1);
        let refused = j.take(Some(e), "b").await.unwrap_err();
        assert!(matches!(refused, FeatureError::Fenced(_)), "{refused}");
        assert_eq!(j.take(None, "b").await.unwrap().epoch, e + 2);
        for held in [e, e + 1] {
            let refused = j.take(Some(held), "a").await.unwrap_err();
            assert!(matches!(refused, FeatureError::Fenced(_)), "{refused}");
        }
        assert_eq!(j.take(Some(e + 2), "b").await.unwrap().epoch, e + 3);
    }

    /// A snapshot of thousands of records goes in many short parts; a reader
    /// sees none of a snapshot cut before its commit and all of one cut after
    /// it, and the next snapshot finishes the fold.
    #[tokio::test]
    async fn a_snapshot_in_parts_is_seen_whole_or_not_at_all() {
        let j = journal().await;
        let epoch = j.take(None, "test").await.unwrap().epoch;
        for n in 0..3 {
            j.append(epoch, vec![format!("e{n}").into_bytes()], Markers::default()).await.unwrap();
        }
        let first = records(0..2_500, "a");
        j.snapshot(epoch, Snapshot { covered: 2, records: first.clone(), marks: b"m1".to_vec() }).await.unwrap();
        assert_eq!(hlen(&j, &j.keys[2]).await, 2_500);

        // Cut after its commit, before its fold: a new owner sees it.
        let mut second = records(2_000..3_000, "b");
        second.push(("r7".into(), None));
        // Markers of megabytes go in parts too.
        let marks: Vec<u8> = (0..3 * PART_BYTES + 17).map(|i| (i % 251) as u8).collect();
        assert!(j.stage(epoch, &second, &marks).await.unwrap());
        j.commit(epoch, 1, true).await.unwrap();
        let taken = j.take(None, "test").await.unwrap();
        let epoch = taken.epoch;
        assert_eq!(seen(&taken), expect(&[&first, &second]));
        assert_eq!((taken.marks.as_deref(), taken.log.len()), (Some(&marks[..]), 0));

        // No new stage while a committed one is not folded.
        let third = records(0..10, "c");
        let refused = j.stage(epoch, &third, b"m").await.unwrap_err();
        assert!(refused.to_string().contains("not folded"), "{refused}");

        // The next snapshot folds what was committed first.
        let fifth = records(2_900..3_100, "e");
        j.snapshot(epoch, Snapshot { covered: 0, records: fifth.clone(), marks: b"m3".to_vec() }).await.unwrap();
        let taken = j.take(None, "test").await.unwrap();
        assert_eq!(seen(&taken), expect(&[&first, &second, &fifth]));
        assert_eq!(taken.records.len(), 3_099, "folded: each record once, r7 gone");
        assert_eq!(hlen(&j, &j.keys[4]).await, 0, "the stage is gone");

        // A stage never committed is ignored, and cleared by the next one.
        let epoch = taken.epoch;
        j.fold_stage(epoch).await.unwrap();
        assert!(j.stage(epoch, &third, b"never").await.unwrap());
        let taken = j.take(None, "test").await.unwrap();
        assert_eq!(seen(&taken), expect(&[&first, &second, &fifth]));
        assert_eq!(taken.marks.as_deref(), Some(&b"m3"[..]));
        let sixth = records(0..1, "f");
        j.snapshot(taken.epoch, Snapshot { covered: 0, records: sixth.clone(), marks: b"m4".to_vec() }).await.unwrap();
        let taken = j.take(None, "test").await.unwrap();
        assert_eq!(seen(&taken), expect(&[&first, &second, &fifth, &sixth]));
    }
}
