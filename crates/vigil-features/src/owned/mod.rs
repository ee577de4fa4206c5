//! The owned store (`[store] mode = "owned"`): one process owns the whole
//! feature state, keeps it in memory, and writes Redis only what it needs to
//! come back after a crash (docs/design/feature-store.md).
//!
//! - **State in memory.** Features are computed over [`Local`], the in-memory
//!   backend's states and markers, by the computation every backend shares; a
//!   call reads no record from Redis.
//! - **A journal, not the records.** Each call appends one entry to the
//!   [`Journal`]: the events it counted for the first time (or the labels),
//!   with the clock it used. Redelivered events append nothing. Entries are
//!   written in the order their calls changed memory, every entry waiting
//!   in one append while the previous one travels (a group commit: many
//!   small calls, as the HTTP API makes, share a round trip). Every
//!   `snapshot_events` events or `snapshot_interval`, the records changed
//!   since the last snapshot and the counted labels are written (in Redis,
//!   in short parts that a reader sees all or none of: [`RedisJournal`]),
//!   and the entries they cover are trimmed. So Redis does one small append
//!   per call instead of reading and compare-and-setting every record of
//!   every event.
//! - **Fenced by an epoch.** Opening the store takes ownership: the journal's
//!   epoch goes up by one, and every append and snapshot checks it in the
//!   same script, so a process that lost ownership cannot write (its calls
//!   fail with [`FeatureError::Fenced`], and [`FeatureStore::ping`] says so).
//!   A second owner is a configuration error: this mode runs one process
//!   (`vigil run` or `vigil serve`) per pipeline.
//! - **Markers for the de-duplication TTL.** The append that journals a call
//!   also sets, in the same script, a marker per transaction it counted (its
//!   first features and fingerprint), kept for `dedup_ttl`; each call looks
//!   its transactions up there (one `MGET` for all the calls waiting
//!   together) where memory, which keeps the newest [`MARKER_LIMIT`], has
//!   none. So a retry is recognised for the
//!   whole TTL, as on the other backends, and snapshots carry no markers.
//! - **Back after a crash, exactly.** A new owner loads the snapshot and
//!   replays the journal's entries through the same computation with their
//!   recorded clocks, which gives the states the old owner had after its
//!   last append. An event redelivered from Kafka then finds its marker and
//!   gets its first features back, as on the other backends.
//! - **A failed journal write** leaves memory ahead of the journal: the next
//!   call reloads from the journal (keeping the epoch it holds), so memory
//!   never holds what the journal lacks. A call its caller abandons (a
//!   deadline) still has its entry written: once memory has changed, the
//!   write goes on in a task of its own.

mod journal;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::OwnedMutexGuard;
use vigil_core::{Event, FeatureVector, Label};

pub use journal::{Journal, Markers, MemoryJournal, RedisJournal, Snapshot, Taken};

use crate::memory::{wall_clock_s, Entry, Local};
use crate::state::EntityState;
use crate::{FeatureError, FeatureStore, LabelOutcome, Plan};

/// How many of the newest transactions' markers the owner keeps in memory
/// (the others are looked up in the journal's store).
pub const MARKER_LIMIT: usize = 20_000;

/// When the owner writes a snapshot.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotPolicy {
    /// After this many counted events.
    pub events: usize,
    /// Or after this long, when anything was counted.
    pub interval: Duration,
}

impl SnapshotPolicy {
    /// Whether a snapshot is due now.
    fn due(&self, owner: &Owner) -> bool {
        owner.events_since >= self.events || (owner.log_len > 0 && owner.since.elapsed() >= self.interval)
    }
}

impl Default for SnapshotPolicy {
    fn default() -> Self {
        SnapshotPolicy { events: 100_000, interval: Duration::from_secs(60) }
    }
}

/// What one call writes: its journal entry, how many events it counts, and
/// the markers of the transactions it counted first.
struct Write {
    op: Op,
    counted: usize,
    markers: Vec<(String, Vec<u8>)>,
}

/// One journal entry: what a call counted, with the clock it counted by.
#[derive(Serialize, Deserialize)]
enum Op {
    Events {
        now: i64,
        #[serde(serialize_with = "byte_strings")]
        events: Vec<Vec<u8>>,
    },
    Labels {
        now: i64,
        #[serde(serialize_with = "byte_strings")]
        labels: Vec<Vec<u8>>,
    },
}

impl Op {
    /// The entry, encoded into one buffer of about its size.
    fn encode(&self) -> Result<Vec<u8>, postcard::Error> {
        let (Op::Events { events: items, .. } | Op::Labels { labels: items, .. }) = self;
        // A length is at most 10 bytes, as is the clock.
        let size = 16 + items.iter().map(|i| i.len() + 10).sum::<usize>();
        postcard::to_extend(self, Vec::with_capacity(size))
    }
}

/// Bytes written whole: postcard encodes bytes as it encodes a sequence of
/// `u8` (a length, then the bytes), so they read back as `Vec<u8>`, but in
/// one copy rather than a call per byte.
struct Bytes<'a>(&'a [u8]);

impl Serialize for Bytes<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

/// A journal entry's events or labels, each written whole ([`Bytes`]).
fn byte_strings<S: serde::Serializer>(items: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(items.iter().map(|i| Bytes(i)))
}

/// A snapshot's markers, each marker's stored form written whole ([`Bytes`]).
fn markers_whole<S: serde::Serializer>(items: &[(String, i64, Vec<u8>)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(items.iter().map(|(id, expires, m)| (id, expires, Bytes(m))))
}

/// The markers a snapshot keeps, oldest first.
#[derive(Serialize, Deserialize, Default)]
struct Marks {
    /// (transaction id, expiry, the marker's stored form): the newest
    /// transactions, in snapshots written before their markers had keys of
    /// their own ([`Markers`]); read back into memory, written empty now.
    #[serde(serialize_with = "markers_whole")]
    markers: Vec<(String, i64, Vec<u8>)>,
    /// (transaction id, expiry) of counted fraud labels.
    labels: Vec<(String, i64)>,
}

impl Marks {
    /// The markers, encoded into one buffer of about their size (megabytes).
    fn encode(&self) -> Result<Vec<u8>, postcard::Error> {
        // A length is at most 10 bytes, as is an expiry.
        let markers = self.markers.iter().map(|(id, _, m)| id.len() + m.len() + 30).sum::<usize>();
        let labels = self.labels.iter().map(|(id, _)| id.len() + 20).sum::<usize>();
        postcard::to_extend(self, Vec::with_capacity(20 + markers + labels))
    }
}

struct Owner {
    /// Every reload from the journal takes a new epoch, so a snapshot written
    /// in the background meanwhile knows to leave the reloaded counters alone.
    epoch: u64,
    local: Local,
    /// Journal entries not covered by a written snapshot.
    log_len: u64,
    /// Events counted since the last snapshot began.
    events_since: usize,
    since: Instant,
}

/// A snapshot taken from memory, to be written while calls go on.
struct Captured {
    epoch: u64,
    /// The records it writes (to mark again if it fails).
    touched: HashSet<String>,
    events: usize,
    /// How many journal entries it covers.
    covered: u64,
    /// The records as they were (shared with memory, which copies one
    /// before changing it), or `None` where removed; encoded when written.
    states: Vec<(String, Option<Held>)>,
    marks: Vec<u8>,
}

/// A record as a snapshot holds it: its expiry and its state.
type Held = (i64, Arc<EntityState>);

/// The feature state of one owning process ([module docs](self)).
pub struct OwnedStore {
    plan: Plan,
    dedup_ttl_s: i64,
    journal: Arc<dyn Journal>,
    policy: SnapshotPolicy,
    owner: Arc<tokio::sync::Mutex<Owner>>,
    writer: Arc<Writer>,
    lookups: Arc<Lookups>,
    /// Held while a snapshot is written (in the background: calls go on).
    writing: Arc<tokio::sync::Mutex<()>>,
    /// This owner's token, recorded with each epoch it takes.
    taker: Arc<str>,
}

/// An entry computed and waiting for the journal.
struct Queued {
    epoch: u64,
    /// `None` for a call that counted nothing: it waits for the writes
    /// before it, since what it read may be what one of them loses.
    entry: Option<Vec<u8>>,
    markers: Vec<(String, Vec<u8>)>,
    done: tokio::sync::oneshot::Sender<Result<(), FeatureError>>,
}

/// Writes entries to the journal in the order their calls changed memory,
/// every entry waiting in one append (a group commit): while one append
/// travels, the calls that compute meanwhile queue for the next, so many
/// small calls (API requests) do not wait for one round trip each.
struct Writer {
    journal: Arc<dyn Journal>,
    /// How long transactions' markers are kept, in seconds.
    marker_ttl_s: u64,
    /// Held while an append is in flight, and by whoever needs every
    /// earlier entry written (a snapshot) or the waiting ones refused (a
    /// reload).
    turn: Arc<tokio::sync::Mutex<()>>,
    /// Computed entries not yet written, oldest first.
    waiting: Waiting<Queued>,
    /// Memory may hold what the journal never will (a write failed): the
    /// next call reloads from the journal first, and an entry computed on
    /// top of it is refused before it is written.
    stale: Arc<AtomicBool>,
}

fn earlier_write_failed() -> FeatureError {
    FeatureError::Unavailable(
        "an earlier batch's journal write failed: the owned state reloads from its journal".into(),
    )
}

/// What calls queued for the next group (an append, a lookup), oldest first.
struct Waiting<T>(std::sync::Mutex<Vec<T>>);

impl<T> Waiting<T> {
    fn new() -> Self {
        Waiting(std::sync::Mutex::new(Vec::new()))
    }

    fn items(&self) -> std::sync::MutexGuard<'_, Vec<T>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn push(&self, item: T) {
        self.items().push(item);
    }

    fn is_empty(&self) -> bool {
        self.items().is_empty()
    }

    /// Everything waiting now, for one group.
    fn take(&self) -> Vec<T> {
        std::mem::take(&mut *self.items())
    }

    /// Hands back a group's emptied buffer, so that the next call to queue
    /// finds room instead of allocating.
    fn give_back(&self, mut spent: Vec<T>) {
        spent.clear();
        let mut items = self.items();
        if items.capacity() == 0 {
            *items = spent;
        }
    }
}

impl Writer {
    /// Writes every waiting entry in one append, each call told how it went;
    /// the caller holds `turn`. Entries computed on memory that a failed
    /// write left stale are refused. Says whether memory and the journal
    /// agree afterwards.
    async fn write_waiting(&self) -> bool {
        let mut group = self.waiting.take();
        if group.is_empty() {
            return !self.stale.load(Ordering::SeqCst);
        }
        if self.stale.load(Ordering::SeqCst) {
            for q in group {
                let _ = q.done.send(Err(earlier_write_failed()));
            }
            return false;
        }
        // Should this write be dropped on the way (its caller cut), whether
        // the entries went in is unknown: memory reloads.
        let unsettled = Pending(&self.stale, false);
        // One epoch: a reload, the only thing that changes it, refuses
        // what waits before it takes the journal again.
        let epoch = group[0].epoch;
        let (mut entries, mut markers, mut told) = (Vec::with_capacity(group.len()), Vec::new(), Vec::new());
        for q in group.drain(..) {
            entries.extend(q.entry);
            markers.extend(q.markers);
            told.push((q.epoch, q.done));
        }
        self.waiting.give_back(group);
        let result = if told.iter().any(|(e, _)| *e != epoch) {
            Err(FeatureError::Unavailable("owned journal: entries of two epochs in one write".into()))
        } else if entries.is_empty() && markers.is_empty() {
            Ok(())
        } else {
            self.journal.append(epoch, entries, Markers { ttl_s: self.marker_ttl_s, items: markers }).await
        };
        if result.is_err() {
            self.stale.store(true, Ordering::SeqCst);
        }
        unsettled.done();
        for (_, done) in told {
            let _ = done.send(result.clone());
        }
        result.is_ok()
    }

    /// Refuses every waiting entry (memory is about to reload); the caller
    /// holds `turn`.
    fn refuse_waiting(&self) {
        for q in self.waiting.take() {
            let _ = q.done.send(Err(earlier_write_failed()));
        }
    }
}

/// Markers found for one call's transactions, in its order.
type Found = Result<Vec<Option<Vec<u8>>>, FeatureError>;

/// Looks transactions' markers up in the journal, the ids of every call
/// waiting together in one lookup: while one travels, the calls that arrive
/// meanwhile wait for the next, so concurrent API requests share a round
/// trip (as their entries share an append) instead of paying one each.
struct Lookups {
    journal: Arc<dyn Journal>,
    /// Held while a lookup is in flight.
    turn: tokio::sync::Mutex<()>,
    waiting: Waiting<(Vec<String>, tokio::sync::oneshot::Sender<Found>)>,
}

impl Lookups {
    /// The markers kept for `ids`, by id (`None` where none is).
    async fn find(self: &Arc<Self>, ids: Vec<String>) -> Found {
        let (done, found) = tokio::sync::oneshot::channel();
        self.waiting.push((ids, done));
        // In a task of its own: a caller cut short (a deadline) cannot take
        // the others' lookup down with it.
        let lookups = self.clone();
        tokio::spawn(async move {
            let _turn = lookups.turn.lock().await;
            let mut group = lookups.waiting.take();
            if group.is_empty() {
                return; // an earlier task looked these up with its own
            }
            let ids: Vec<&str> = group.iter().flat_map(|(ids, _)| ids.iter().map(String::as_str)).collect();
            let found = lookups.journal.markers(&ids).await.and_then(|all| {
                if all.len() == ids.len() {
                    Ok(all)
                } else {
                    Err(corrupt("marker lookup", format!("{} answers for {} ids", all.len(), ids.len())))
                }
            });
            let mut all = found.map(Vec::into_iter);
            for (ids, done) in group.drain(..) {
                let _ = done.send(match &mut all {
                    Ok(all) => Ok(all.by_ref().take(ids.len()).collect()),
                    Err(e) => Err(e.clone()),
                });
            }
            lookups.waiting.give_back(group);
        });
        found.await.map_err(|_| FeatureError::Unavailable("owned journal: marker lookup abandoned".into()))?
    }
}

/// Marks the store stale when dropped before [`Pending::done`]: a call that
/// changed memory and failed before its entry was queued.
struct Pending<'a>(&'a AtomicBool, bool);

impl Pending<'_> {
    fn done(mut self) {
        self.1 = true;
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if !self.1 {
            self.0.store(true, Ordering::SeqCst);
        }
    }
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> FeatureError {
    FeatureError::Corrupt(format!("owned store {what}: {e}"))
}

impl OwnedStore {
    /// Takes ownership of `journal` (fencing any earlier owner) and loads
    /// what it holds.
    pub async fn open(
        plan: Plan,
        dedup_ttl_s: u64,
        journal: Arc<dyn Journal>,
        policy: SnapshotPolicy,
    ) -> Result<OwnedStore, FeatureError> {
        // This process's token, recorded with each epoch it takes.
        let taker = uuid::Uuid::new_v4().simple().to_string();
        let taken = journal.take(None, &taker).await?;
        let owner = restore(&plan, dedup_ttl_s as i64, taken)?;
        let writer = Writer {
            journal: journal.clone(),
            marker_ttl_s: dedup_ttl_s.max(1),
            turn: Arc::new(tokio::sync::Mutex::new(())),
            waiting: Waiting::new(),
            stale: Arc::new(AtomicBool::new(false)),
        };
        let lookups =
            Arc::new(Lookups { journal: journal.clone(), turn: tokio::sync::Mutex::new(()), waiting: Waiting::new() });
        Ok(OwnedStore {
            plan,
            dedup_ttl_s: dedup_ttl_s as i64,
            journal,
            policy,
            owner: Arc::new(tokio::sync::Mutex::new(owner)),
            writer: Arc::new(writer),
            lookups,
            writing: Arc::new(tokio::sync::Mutex::new(())),
            taker: Arc::from(taker),
        })
    }

    /// The epoch this store holds.
    pub async fn epoch(&self) -> u64 {
        self.owner.lock().await.epoch
    }

    /// Writes a snapshot now (also what the policy does on its own, in the
    /// background), after the one being written, if any.
    pub async fn snapshot(&self) -> Result<(), FeatureError> {
        let _writing = self.writing.lock().await;
        let captured = {
            let mut owner = self.ready().await?;
            let _turn = self.writer.turn.lock().await;
            if !self.writer.write_waiting().await {
                return Err(earlier_write_failed());
            }
            capture(&mut owner)?
        };
        write_captured(self.journal.as_ref(), &self.owner, &self.writer.stale, captured).await
    }

    /// The owner, reloaded from the journal first when memory may be ahead
    /// of it (once the write in flight, if any, has ended). A reload runs as
    /// a task of its own: a caller cut short (a deadline) cannot leave it
    /// between taking the journal again and loading what it read.
    async fn ready(&self) -> Result<OwnedMutexGuard<Owner>, FeatureError> {
        let mut owner = self.owner.clone().lock_owned().await;
        if !self.writer.stale.load(Ordering::SeqCst) {
            return Ok(owner);
        }
        let (journal, writer, taker) = (self.journal.clone(), self.writer.clone(), self.taker.clone());
        let (plan, dedup_ttl_s) = (self.plan.clone(), self.dedup_ttl_s);
        let reload = tokio::spawn(async move {
            let _turn = writer.turn.lock().await;
            // Computed on the memory being thrown away.
            writer.refuse_waiting();
            let taken = journal.take(Some(owner.epoch), &taker).await?;
            *owner = restore(&plan, dedup_ttl_s, taken)?;
            writer.stale.store(false, Ordering::SeqCst);
            tracing::info!(epoch = owner.epoch, "owned feature state reloaded from its journal");
            Ok(owner)
        });
        reload.await.map_err(|e| FeatureError::Unavailable(format!("owned state reload: {e}")))?
    }

    /// One call: `change` updates memory and says what to journal (an entry,
    /// the events it counts and their markers). The entry is queued in the
    /// order memory changed and written with the others waiting then, while
    /// the next calls compute; the call answers once it is in.
    async fn call<T>(&self, change: impl FnOnce(&mut Owner, i64) -> (T, Option<Write>)) -> Result<T, FeatureError> {
        let mut owner = self.ready().await?;
        let now = wall_clock_s();
        let pending = Pending(&self.writer.stale, false);
        let (out, write) = change(&mut owner, now);
        let (entry, markers) = match write {
            Some(Write { op, counted, markers }) => {
                let entry = op.encode().map_err(|e| corrupt("entry", e))?;
                owner.log_len += 1;
                owner.events_since += counted;
                (Some(entry), markers)
            }
            None => (None, Vec::new()),
        };
        let due = entry.is_some() && self.policy.due(&owner);
        let (done, written) = tokio::sync::oneshot::channel();
        // Queued before the owner is let go: entries go out in the order
        // their calls changed memory.
        self.writer.waiting.push(Queued { epoch: owner.epoch, entry, markers, done });
        pending.done();
        drop(owner);
        // Whatever becomes of this call (a deadline may cut it), a task
        // writes what waits: an abandoned call's entry still goes out, so
        // memory is never left ahead of the journal for want of a caller.
        let writer = self.writer.clone();
        tokio::spawn(async move {
            let _turn = writer.turn.lock().await;
            writer.write_waiting().await;
        });
        written.await.map_err(|_| {
            self.writer.stale.store(true, Ordering::SeqCst);
            FeatureError::Unavailable("owned journal write abandoned".into())
        })??;
        if due {
            self.after_call().await;
        }
        Ok(out)
    }

    /// Starts a snapshot when one is due and none is being written: taken
    /// from memory now, written in the background while calls go on.
    async fn after_call(&self) {
        let Ok(writing) = self.writing.clone().try_lock_owned() else { return };
        let captured = {
            let Ok(mut owner) = self.ready().await else { return };
            // Every earlier entry is in the journal once the turn is ours
            // and nothing waits. Entries still waiting are left to their
            // writers (this call may be cut by its caller's deadline, and a
            // write must not be): the snapshot waits for a later call.
            let _turn = self.writer.turn.lock().await;
            if self.writer.stale.load(Ordering::SeqCst) || !self.writer.waiting.is_empty() || !self.policy.due(&owner) {
                return;
            }
            match capture(&mut owner) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "owned feature state: snapshot not taken");
                    return;
                }
            }
        };
        let (journal, owner, stale) = (self.journal.clone(), self.owner.clone(), self.writer.stale.clone());
        tokio::spawn(async move {
            let _writing = writing;
            // Failures are logged there; the journal still holds every entry.
            let _ = write_captured(journal.as_ref(), &owner, &stale, captured).await;
        });
    }
}

/// Takes a snapshot of memory: the records changed since the last one (they
/// start a new change set), the markers, and how much of the journal it
/// covers.
fn capture(owner: &mut Owner) -> Result<Captured, FeatureError> {
    let now = wall_clock_s();
    owner.local.sweep(now);
    // The states are shared, not copied or encoded here: the owner is held.
    let states = owner
        .local
        .touched
        .iter()
        .flatten()
        .map(|key| (key.clone(), owner.local.states.get(key).map(|e| (e.expires_at_s, e.value.clone()))))
        .collect();
    let marks = marks(&owner.local).encode().map_err(|e| corrupt("marks", e))?;
    let touched = owner.local.touched.replace(HashSet::new()).unwrap_or_default();
    let events = std::mem::take(&mut owner.events_since);
    owner.since = Instant::now();
    Ok(Captured { epoch: owner.epoch, touched, events, covered: owner.log_len, states, marks })
}

/// A captured snapshot's records, encoded (megabytes: on a blocking thread,
/// not the runtime's).
async fn encode_records(states: Vec<(String, Option<Held>)>) -> Result<Vec<(String, Option<Vec<u8>>)>, FeatureError> {
    let encode = move || {
        states
            .into_iter()
            .map(|(key, state)| {
                let value = match state {
                    Some((expires_at_s, s)) => {
                        Some(postcard::to_allocvec(&(expires_at_s, s.as_ref())).map_err(|e| corrupt("record", e))?)
                    }
                    None => None,
                };
                Ok((key, value))
            })
            .collect()
    };
    tokio::task::spawn_blocking(encode).await.map_err(|e| corrupt("records", e))?
}

/// Writes a captured snapshot, then settles the owner's counters: the
/// entries it covered are gone; or, when it failed, its records and events
/// count towards the next one, and unless it was fenced (a script that
/// refuses writes nothing), memory reloads before the next call (it may
/// have been written).
async fn write_captured(
    journal: &dyn Journal,
    owner: &tokio::sync::Mutex<Owner>,
    stale: &AtomicBool,
    c: Captured,
) -> Result<(), FeatureError> {
    let started = Instant::now();
    let covered = c.covered;
    let (mut count, mut bytes) = (0, 0);
    let written = match encode_records(c.states).await {
        Ok(records) => {
            count = records.len();
            bytes = records.iter().filter_map(|(_, v)| v.as_ref().map(Vec::len)).sum::<usize>();
            journal.snapshot(c.epoch, Snapshot { covered, records, marks: c.marks }).await
        }
        Err(e) => Err(e),
    };
    let mut o = owner.lock().await;
    // A reload meanwhile took a new epoch and settled the counters itself.
    let current = o.epoch == c.epoch;
    match written {
        Ok(()) => {
            tracing::info!(
                records = count,
                bytes,
                entries = covered,
                ms = started.elapsed().as_millis() as u64,
                "owned feature state: snapshot written"
            );
            if current {
                o.log_len -= covered.min(o.log_len);
            }
            Ok(())
        }
        Err(e) => {
            tracing::warn!(error = %e, "owned feature state: snapshot failed; the journal keeps every entry until one succeeds");
            if current {
                o.events_since += c.events;
                o.local.touched.get_or_insert_with(HashSet::new).extend(c.touched);
                if !matches!(e, FeatureError::Fenced(_)) {
                    stale.store(true, Ordering::SeqCst);
                }
            }
            Err(e)
        }
    }
}

/// The counted labels (transactions' markers have keys of their own, set
/// with their entries: [`Markers`]).
fn marks(local: &Local) -> Marks {
    let labels = local.label_markers.iter().map(|(id, m)| (id.clone(), m.expires_at_s)).collect();
    Marks { markers: Vec::new(), labels }
}

/// The owner's state from what the journal holds: the snapshot's records
/// and markers, then every entry replayed in order with its clock.
fn restore(plan: &Plan, dedup_ttl_s: i64, taken: Taken) -> Result<Owner, FeatureError> {
    let mut local = Local { marker_limit: Some(MARKER_LIMIT), ..Local::default() };
    for (key, bytes) in taken.records {
        if bytes.is_empty() {
            // Removed by a snapshot still being folded into the records.
            local.states.remove(&key);
            continue;
        }
        let (expires_at_s, value): (i64, EntityState) =
            postcard::from_bytes(&bytes).map_err(|e| corrupt(&format!("record {key}"), e))?;
        local.states.insert(key, Entry { value: Arc::new(value), expires_at_s });
    }
    if let Some(bytes) = taken.marks {
        let marks: Marks = postcard::from_bytes(&bytes).map_err(|e| corrupt("marks", e))?;
        for (id, expires_at_s, stored) in marks.markers {
            let value = crate::marker::decode(&stored)?;
            local.marker_order.push_back(id.clone());
            local.markers.insert(id, Entry { value, expires_at_s });
        }
        for (id, expires_at_s) in marks.labels {
            local.label_markers.insert(id, Entry { value: (), expires_at_s });
        }
    }
    local.touched = Some(HashSet::new());
    let log_len = taken.log.len() as u64;
    let mut events_since = 0;
    for (n, bytes) in taken.log.iter().enumerate() {
        let op: Op = postcard::from_bytes(bytes).map_err(|e| corrupt(&format!("journal entry {n}"), e))?;
        match op {
            Op::Events { now, events } => {
                let events = events
                    .iter()
                    .map(|j| Event::from_json(j).map_err(|e| corrupt(&format!("journal entry {n}"), e)))
                    .collect::<Result<Vec<_>, _>>()?;
                let refs: Vec<&Event> = events.iter().collect();
                local.process(plan, &refs, now, dedup_ttl_s, Vec::new());
                events_since += events.len();
            }
            Op::Labels { now, labels } => {
                let labels = labels
                    .iter()
                    .map(|j| Label::from_json(j).map_err(|e| corrupt(&format!("journal entry {n}"), e)))
                    .collect::<Result<Vec<_>, _>>()?;
                let refs: Vec<&Label> = labels.iter().collect();
                local.apply_labels(plan, &refs, now);
            }
        }
    }
    Ok(Owner { epoch: taken.epoch, local, log_len, events_since, since: Instant::now() })
}

#[async_trait]
impl FeatureStore for OwnedStore {
    async fn process(&self, events: &[&Event]) -> Result<Vec<FeatureVector>, FeatureError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        // The markers kept for these transactions, for those memory no
        // longer holds (or never did: an earlier owner counted them).
        let ids = events.iter().map(|e| e.transaction_id.clone()).collect();
        let kept = self
            .lookups
            .find(ids)
            .await?
            .into_iter()
            .map(|m| m.map(|m| crate::marker::decode_compact(&m)).transpose())
            .collect::<Result<Vec<_>, _>>()?;
        // Encoded before the owner is taken, so that callers encode at once;
        // only the first-seen ones go to the journal.
        let mut encoded: Vec<Option<Vec<u8>>> = events.iter().map(|e| Some(e.to_json())).collect();
        self.call(|owner, now| {
            let (out, first) = owner.local.process(&self.plan, events, now, self.dedup_ttl_s, kept);
            let write = (!first.is_empty()).then(|| {
                let markers = first
                    .iter()
                    .map(|&i| (events[i].transaction_id.clone(), crate::marker::encode_compact(&out[i])))
                    .collect();
                let events = first.iter().filter_map(|&i| encoded[i].take()).collect();
                Write { op: Op::Events { now, events }, counted: first.len(), markers }
            });
            (out, write)
        })
        .await
    }

    async fn apply_labels(&self, labels: &[&Label]) -> Result<Vec<LabelOutcome>, FeatureError> {
        self.call(|owner, now| {
            let (out, first) = owner.local.apply_labels(&self.plan, labels, now);
            let write = (!first.is_empty()).then(|| {
                let labels = first.iter().map(|&i| labels[i].to_json()).collect();
                Write { op: Op::Labels { now, labels }, counted: 0, markers: Vec::new() }
            });
            (out, write)
        })
        .await
    }

    /// Whether the journal answers and this store still owns it: a process
    /// fenced by a new owner stops being ready.
    async fn ping(&self) -> Result<(), FeatureError> {
        let epoch = self.owner.lock().await.epoch;
        self.journal.ping(epoch).await
    }
}

#[cfg(test)]
mod tests;
