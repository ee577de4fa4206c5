//! Feature store harness: Vigil's Redis feature reads-and-updates beside Redis's
//! own ceiling, measured in one run against the same server.
//!
//! 1. **Ceiling**: `redis-benchmark` with pipelined `INCR` and `HINCRBY` (64
//!    commands a round trip), the most the server gives to the simplest updates.
//! 2. **Throughput**: generated events through `RedisStore::process` with the
//!    local pipeline's declared features, in batches of 500 from 4 concurrent
//!    writers, events split between writers by card (as Kafka partitions keyed by
//!    card would); merchants and terminals are shared, so writers contend on them.
//!    Then the same on the three-node Redis Cluster of `scripts/services.sh`,
//!    when it answers.
//!    Redis's own time per event in the single-server run comes from
//!    `INFO commandstats` (reset before it).
//!    Then the **same key traffic without a check**: for the same chunks of the
//!    same writers, pipelined `MGET`s of the states and markers the store reads
//!    and plain `SET`s of as many bytes as it writes, with no script, no
//!    version check and no feature computation. No exact store can move these
//!    keys faster, so it is the ceiling of this state layout on this machine.
//!    Then the **owned design's traffic** (issue 23, docs/design/feature-store.md):
//!    each writer owns its cards, loads a card's record on first touch, reads
//!    the other writers' stripes of the shared records a flush touched, and
//!    writes what the flush changed with one epoch-fenced script, at a few
//!    flush sizes, with three layouts (`Owned`: a key per record, the cards'
//!    records in a per-partition changelog, everything in the changelog). Redis's CPU per event (`INFO cpu`) is printed for the store
//!    and each traffic run.
//! 3. **Latency**: single-event calls at a fixed total rate from 4 paced callers
//!    sharing one store (as `vigil serve`'s requests do), each call timed
//!    (p50 / p99 / p99.9).
//! 4. **Memory**: the stored size of entity states by entity kind, from Redis's
//!    `STRLEN` and `MEMORY USAGE` over a sample of keys.
//!
//! Needs the Redis of `scripts/services.sh`. Run: `cargo bench --bench features`
//! (env: VIGIL_BENCH_EVENTS, default 200000; VIGIL_BENCH_RATE, default 10000;
//! VIGIL_BENCH_WRITERS, default 4).

#[path = "../tests/common/mod.rs"]
mod common;

/// The allocator the `vigil` binary ships with (src/main.rs): what runs in
/// this process is measured as it runs there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use vigil_core::{Event, PipelineConfig};
use vigil_features::owned::{Journal, RedisJournal, SnapshotPolicy};
use vigil_features::{FeatureError, FeatureStore, KeyLayout, OwnedStore, Plan, RedisStore};
use vigil_gen::GenConfig;

const URL: &str = "redis://127.0.0.1:6379";
const BATCH: usize = 500;
/// Events per compare-and-set in `RedisStore`.
const CHUNK: usize = vigil_features::CHUNK;

fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// `redis-benchmark`'s requests per second for one pipelined command.
fn redis_benchmark(args: &[&str]) -> Option<f64> {
    let out = std::process::Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", "6379", "-P", "64", "-n", "2000000", "-q"])
        .args(args)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // The last report line: "INCR: 1234567.50 requests per second, p50=...".
    let line = text.split(['\n', '\r']).rfind(|l| l.contains("requests per second"))?;
    let at = line.find(" requests per second")?;
    line[..at].split_whitespace().last()?.parse().ok()
}

async fn store(plan: &Plan, prefix: &str) -> RedisStore {
    RedisStore::connect(URL, plan.clone(), prefix, 3600, 2000).await.expect("the harness needs Redis on 127.0.0.1:6379")
}

/// The owned store (`mode = "owned"`) with its journal on one server or on
/// the cluster, with the default snapshot policy.
async fn owned_store(plan: &Plan, prefix: &str, cluster: bool) -> Result<Arc<dyn FeatureStore>, FeatureError> {
    let journal: Arc<dyn Journal> = if cluster {
        Arc::new(RedisJournal::connect_cluster(&common::cluster_nodes(), prefix, 2000).await?)
    } else {
        Arc::new(RedisJournal::connect(URL, prefix, 2000).await?)
    };
    Ok(Arc::new(OwnedStore::open(plan.clone(), 3600, journal, SnapshotPolicy::default()).await?))
}

/// Events split between `writers` by card, as Kafka partitions keyed by card would.
fn by_card(events: &[Event], writers: usize) -> Vec<Vec<Event>> {
    let mut shards: Vec<Vec<Event>> = vec![Vec::new(); writers];
    for e in events {
        let card = e.card_id.as_deref().unwrap_or_default();
        let shard = card.bytes().fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize)) % writers;
        shards[shard].push(e.clone());
    }
    shards
}

/// Every shard through its own store in batches of [`BATCH`], all at once: the
/// time taken and the events per writer.
async fn throughput<F, Fut>(shards: &[Vec<Event>], store: F) -> (Duration, Vec<usize>)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Arc<dyn FeatureStore>>,
{
    let mut writers = Vec::new();
    for shard in shards {
        // Each writer owns its events before the clock starts.
        writers.push((shard.clone(), store().await));
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (shard, s) in writers {
        tasks.push(tokio::spawn(async move {
            for chunk in shard.chunks(BATCH) {
                let refs: Vec<&Event> = chunk.iter().collect();
                s.process(&refs).await.expect("feature batch");
            }
            shard.len()
        }));
    }
    let mut counts = Vec::new();
    for t in tasks {
        counts.push(t.await.unwrap());
    }
    (start.elapsed(), counts)
}

/// The store's key traffic for `shards` with nothing else: per chunk of
/// [`CHUNK`] events, `MGET`s of its states and markers, then a plain `SET` of
/// each state and marker with the bytes the store's run left in Redis (400
/// for a key it lacks), pipelined with the next chunk's read as the store
/// does. Keys are listed and values read before the clock starts.
async fn raw_traffic(shards: &[Vec<Event>], plan: &Plan, prefix: &str) -> Duration {
    let client = redis::Client::open(URL).unwrap();
    let mut writers = Vec::new();
    for shard in shards {
        let mut con = client.get_multiplexed_async_connection().await.unwrap();
        let mut chunks = Vec::new();
        for chunk in shard.chunks(CHUNK) {
            let refs: Vec<&Event> = chunk.iter().collect();
            let entities = plan.keys(&refs).records;
            let ids: Vec<&str> = chunk.iter().map(|e| e.transaction_id.as_str()).collect();
            let mut keys: Vec<String> = entities.iter().map(|e| format!("{prefix}:raw:{{{e}}}")).collect();
            keys.extend(ids.iter().map(|id| format!("{prefix}:rawtx:{{{id}}}")));
            let layout = KeyLayout::new(prefix);
            let mut real: Vec<String> = entities.iter().map(|e| layout.state(e)).collect();
            real.extend(ids.iter().map(|id| layout.marker(id)));
            let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET").arg(&real).query_async(&mut con).await.unwrap();
            let values: Vec<Vec<u8>> = values.into_iter().map(|v| v.unwrap_or_else(|| vec![7; 400])).collect();
            chunks.push((keys, entities.len(), values));
        }
        writers.push((con, chunks));
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (mut con, chunks) in writers {
        tasks.push(tokio::spawn(async move {
            // States, then markers, as the store reads them.
            let read = |pipe: &mut redis::Pipeline, (keys, states, _): &(Vec<String>, usize, Vec<Vec<u8>>)| {
                pipe.cmd("MGET").arg(&keys[..*states]).cmd("MGET").arg(&keys[*states..]);
            };
            let mut first = redis::pipe();
            read(&mut first, &chunks[0]);
            let _: redis::Value = first.query_async(&mut con).await.unwrap();
            for (i, c) in chunks.iter().enumerate() {
                let (keys, states, values) = c;
                let mut pipe = redis::pipe();
                for (i, (k, v)) in keys.iter().zip(values).enumerate() {
                    let expiry = if i < *states { "PX" } else { "EX" };
                    let ttl = if i < *states { 3_600_000 } else { 3600 };
                    pipe.cmd("SET").arg(k).arg(v.as_slice()).arg(expiry).arg(ttl).ignore();
                }
                if let Some(next) = chunks.get(i + 1) {
                    read(&mut pipe, next);
                }
                let _: redis::Value = pipe.query_async(&mut con).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    start.elapsed()
}

/// Compare-and-set of an owned partition's flush (docs/design/feature-store.md,
/// option B): write every key only while the partition's epoch is the
/// flusher's. KEYS: the epoch key, the offset key, then the records and
/// stripes; ARGV: the epoch, the offset, then their values.
const FLUSH_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2])
for i = 3, #KEYS do
  redis.call('SET', KEYS[i], ARGV[i], 'PX', 3600000)
end
return 1
";

/// Where the owned design keeps what a flush changed.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Owned {
    /// A key per card record and per shared record's stripe.
    Keys,
    /// The cards' records appended to the partition's changelog as one value
    /// a flush (read back only after a crash); shared stripes as keys.
    CardLog,
    /// Everything a flush changed as one changelog value, and no stripe
    /// reads: the floor, as if shared entities had owners too.
    AllLog,
    /// Cards' records as keys (what the HTTP path reads), the shared
    /// stripes a flush changed as one value per partition (overwritten each
    /// flush), and each flush reads the other partitions' latest such value
    /// instead of per-record stripes.
    CardKeysSharedLog,
}

/// The Redis traffic of the owned design with nothing else (issue 23, step
/// 1 of docs/design/feature-store.md): each writer owns its cards; every
/// `flush` events it reads what it has not seen (a card's record on first
/// touch; the other writers' stripes of each shared record it touched, once a
/// flush, uncached), then one script checks its epoch and writes every record
/// and own stripe the flush changed, with the bytes today's store left for
/// that record, and its offset. No feature computation: the ceiling of the
/// design's Redis cost, as `raw_traffic` is today's layout's.
async fn owned_flush_traffic(
    shards: &[Vec<Event>],
    plan: &Plan,
    prefix: &str,
    flush: usize,
    layout_of: Owned,
) -> Duration {
    let client = redis::Client::open(URL).unwrap();
    let layout = KeyLayout::new(prefix);
    let writers = shards.len();
    let mut prepared = Vec::new();
    for (p, shard) in shards.iter().enumerate() {
        let mut con = client.get_multiplexed_async_connection().await.unwrap();
        let _: () =
            redis::cmd("SET").arg(format!("{prefix}:own:epoch:{{p{p}}}")).arg(1).query_async(&mut con).await.unwrap();
        let mut seen = std::collections::HashSet::new();
        let mut flushes = Vec::new();
        for (f, chunk) in shard.chunks(flush).enumerate() {
            let refs: Vec<&Event> = chunk.iter().collect();
            let records = plan.keys(&refs).records;
            let real: Vec<String> = records.iter().map(|r| layout.state(r)).collect();
            let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET").arg(&real).query_async(&mut con).await.unwrap();
            let mut loads = Vec::new();
            let mut others = Vec::new();
            let mut keys = vec![format!("{prefix}:own:epoch:{{p{p}}}"), format!("{prefix}:own:offset:{{p{p}}}")];
            let mut args: Vec<Vec<u8>> = vec![b"1".to_vec(), ((f + 1) * flush).to_string().into_bytes()];
            let mut log = Vec::new();
            for (r, v) in records.iter().zip(values) {
                let owned = r.starts_with("card_id=");
                let key = format!("{prefix}:own:{{p{p}}}:{r}");
                let v = v.unwrap_or_else(|| vec![7; 400]);
                // A card's record is read on its first touch where cards are keys.
                if owned && matches!(layout_of, Owned::Keys | Owned::CardKeysSharedLog) && seen.insert(r.clone()) {
                    loads.push(key.clone());
                }
                let logged = match layout_of {
                    Owned::Keys => false,
                    Owned::CardLog => owned,
                    Owned::AllLog => true,
                    Owned::CardKeysSharedLog => !owned,
                };
                if !owned && matches!(layout_of, Owned::Keys | Owned::CardLog) {
                    others.extend((0..writers).filter(|q| *q != p).map(|q| format!("{prefix}:own:{{p{q}}}:{r}")));
                }
                if logged {
                    log.extend_from_slice(&v);
                } else {
                    keys.push(key);
                    args.push(v);
                }
            }
            if layout_of == Owned::CardKeysSharedLog {
                // One value per partition, overwritten by each flush; the
                // others' latest are read once a flush.
                others.extend((0..writers).filter(|q| *q != p).map(|q| format!("{prefix}:own:shared:{{p{q}}}")));
                keys.push(format!("{prefix}:own:shared:{{p{p}}}"));
                args.push(std::mem::take(&mut log));
            }
            if !log.is_empty() {
                keys.push(format!("{prefix}:own:log:{{p{p}}}:{f}"));
                args.push(log);
            }
            flushes.push((loads, others, keys, args));
        }
        prepared.push((con, flushes));
    }
    let script = redis::Script::new(FLUSH_SCRIPT);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (mut con, flushes) in prepared {
        let script = script.clone();
        tasks.push(tokio::spawn(async move {
            for (loads, others, keys, args) in flushes {
                // Reads first (first touches, other stripes), then the flush.
                if !loads.is_empty() || !others.is_empty() {
                    let mut pipe = redis::pipe();
                    if !loads.is_empty() {
                        pipe.cmd("MGET").arg(&loads);
                    }
                    if !others.is_empty() {
                        pipe.cmd("MGET").arg(&others);
                    }
                    let _: redis::Value = pipe.query_async(&mut con).await.unwrap();
                }
                let mut call = script.prepare_invoke();
                for k in &keys {
                    call.key(k);
                }
                for a in &args {
                    call.arg(a.as_slice());
                }
                let written: i64 = call.invoke_async(&mut con).await.unwrap();
                assert_eq!(written, 1, "the epoch held");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    start.elapsed()
}

async fn admin() -> redis::aio::MultiplexedConnection {
    redis::Client::open(URL).unwrap().get_multiplexed_async_connection().await.unwrap()
}

async fn reset_command_stats() {
    let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query_async(&mut admin().await).await.unwrap();
}

/// (command, calls, total µs) for the commands the store sends, from `INFO commandstats`.
async fn command_stats() -> Vec<(String, u64, u64)> {
    let info: String = redis::cmd("INFO").arg("commandstats").query_async(&mut admin().await).await.unwrap();
    let mut out = Vec::new();
    for line in info.lines() {
        let Some((name, fields)) = line.strip_prefix("cmdstat_").and_then(|l| l.split_once(':')) else { continue };
        if !["mget", "evalsha", "get", "set", "exists"].contains(&name) {
            continue;
        }
        let field = |key: &str| {
            fields.split(',').find_map(|f| f.strip_prefix(key).and_then(|v| v.parse::<u64>().ok())).unwrap_or(0)
        };
        out.push((name.to_owned(), field("calls="), field("usec=")));
    }
    out
}

fn main() {
    let n = env_usize("VIGIL_BENCH_EVENTS", 200_000);
    let rate = env_usize("VIGIL_BENCH_RATE", 10_000);
    let writers = env_usize("VIGIL_BENCH_WRITERS", 4);
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let config = PipelineConfig::load(&root.join("pipelines/local.toml")).unwrap();
    let plan = Plan::new(config.features.clone());
    let gen = GenConfig { seed: 11, events: n, cards: 20_000, merchants: 1_000, days: 7, ..GenConfig::default() };
    let events: Vec<Event> = vigil_gen::generate(&gen).into_iter().map(|l| l.event).collect();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();

    println!("redis ceiling (redis-benchmark -P 64, same server):");
    for (name, args) in [("INCR", vec!["-t", "incr"]), ("HINCRBY", vec!["hincrby", "bench:h", "f", "1"])] {
        match redis_benchmark(&args) {
            Some(rps) => println!("  {name:8} {rps:>12.0} commands/s"),
            None => println!("  {name:8} (redis-benchmark did not run)"),
        }
    }

    let prefix = format!("bench-features-{}", std::process::id());
    let features = config.features.len();
    let shards = by_card(&events, writers);
    rt.block_on(reset_command_stats());
    let cpu = rt.block_on(common::redis_cpu_us());
    let (elapsed, per_writer) =
        rt.block_on(throughput(&shards, || async { Arc::new(store(&plan, &prefix).await) as Arc<dyn FeatureStore> }));
    let store_cpu = (rt.block_on(common::redis_cpu_us()) - cpu) / n as f64;
    println!(
        "vigil RedisStore::process, {features} features, batches of {BATCH}, {writers} writers {per_writer:?}: \
         {n} events in {:.2} s = {:.0} events/s; Redis CPU {store_cpu:.1} µs per event (INFO cpu)",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64()
    );
    println!("  Redis time per event in that run (INFO commandstats):");
    for (cmd, calls, usec) in rt.block_on(command_stats()) {
        println!("    {cmd:8} {calls:>8} calls  {:>6.2} µs per event", usec as f64 / n as f64);
    }
    let cpu = rt.block_on(common::redis_cpu_us());
    let raw = rt.block_on(raw_traffic(&shards, &plan, &prefix));
    let raw_cpu = (rt.block_on(common::redis_cpu_us()) - cpu) / n as f64;
    println!(
        "the same keys without a check (pipelined MGET and SET only, {writers} writers): \
         {n} events in {:.2} s = {:.0} events/s; Redis CPU {raw_cpu:.1} µs per event",
        raw.as_secs_f64(),
        n as f64 / raw.as_secs_f64()
    );
    // The owned store: one owner (as one `vigil run` holding every
    // partition) called by the same writers at once.
    let owned_prefix = format!("{prefix}-owned");
    let owned = rt.block_on(owned_store(&plan, &owned_prefix, false)).expect("the owned store");
    let cpu = rt.block_on(common::redis_cpu_us());
    let (elapsed, _) = rt.block_on(throughput(&shards, || async { owned.clone() }));
    let owned_cpu = (rt.block_on(common::redis_cpu_us()) - cpu) / n as f64;
    println!(
        "vigil OwnedStore::process (mode = \"owned\", one owner, journal in Redis, snapshot per 100,000 events), \
         same events and {writers} writers: {n} events in {:.2} s = {:.0} events/s; Redis CPU {owned_cpu:.1} µs per event",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64()
    );
    drop(owned);
    // Issue 23's owned design, its Redis traffic alone, at a few flush sizes
    // (VIGIL_BENCH_FLUSHES, events per flush per writer).
    let flushes = std::env::var("VIGIL_BENCH_FLUSHES").unwrap_or_else(|_| "100,500,2000".into());
    for layout_of in [Owned::Keys, Owned::CardLog, Owned::AllLog, Owned::CardKeysSharedLog] {
        for flush in flushes.split(',').filter_map(|f| f.trim().parse::<usize>().ok()) {
            let cpu = rt.block_on(common::redis_cpu_us());
            let owned = rt.block_on(owned_flush_traffic(&shards, &plan, &prefix, flush, layout_of));
            let owned_cpu = (rt.block_on(common::redis_cpu_us()) - cpu) / n as f64;
            println!(
                "owned design's traffic alone ({layout_of:?}, one fenced flush per {flush} events, {writers} writers): \
                 {n} events in {:.2} s = {:.0} events/s; Redis CPU {owned_cpu:.1} µs per event",
                owned.as_secs_f64(),
                n as f64 / owned.as_secs_f64()
            );
        }
    }
    // The same on the three-node cluster of scripts/services.sh, when it answers
    // (every node on this machine's cores: a cost figure, not a scaling one).
    let nodes = common::cluster_nodes();
    let cluster_prefix = format!("{prefix}-cluster");
    let cluster = rt.block_on(RedisStore::connect_cluster(&nodes, plan.clone(), &cluster_prefix, 3600, 2000));
    match cluster {
        Ok(_) => {
            let (elapsed, _) = rt.block_on(throughput(&shards, || async {
                Arc::new(RedisStore::connect_cluster(&nodes, plan.clone(), &cluster_prefix, 3600, 2000).await.unwrap())
                    as Arc<dyn FeatureStore>
            }));
            println!(
                "vigil RedisStore::process on a 3-node Redis Cluster (same cores), same events and writers: \
                 {n} events in {:.2} s = {:.0} events/s",
                elapsed.as_secs_f64(),
                n as f64 / elapsed.as_secs_f64()
            );
            let owned = rt.block_on(owned_store(&plan, &format!("{cluster_prefix}-owned"), true)).expect("owned");
            let (elapsed, _) = rt.block_on(throughput(&shards, || async { owned.clone() }));
            println!(
                "vigil OwnedStore::process, journal on the 3-node Redis Cluster, same events and writers: \
                 {n} events in {:.2} s = {:.0} events/s",
                elapsed.as_secs_f64(),
                n as f64 / elapsed.as_secs_f64()
            );
            rt.block_on(common::clean_cluster(&cluster_prefix));
            rt.block_on(common::clean_cluster(&format!("{cluster_prefix}-owned")));
        }
        Err(e) => println!("redis cluster: not measured ({e})"),
    }

    // Latency: fresh events (new ids, later times) one per call, at `rate` in all.
    let hist = rt.block_on(async {
        let callers = 4usize;
        let per_caller = (rate * 5) / callers; // five seconds
        let interval = Duration::from_secs_f64(callers as f64 / rate as f64);
        let mut tasks = Vec::new();
        // One store for every caller, as `vigil serve` has for its requests.
        let shared = store(&plan, &prefix).await;
        for c in 0..callers {
            let s = shared.clone();
            let mine: Vec<Event> = events
                .iter()
                .skip(c)
                .step_by(callers)
                .take(per_caller)
                .map(|e| {
                    let mut e = e.clone();
                    e.transaction_id = format!("lat-{}", e.transaction_id);
                    e.timestamp += chrono::Duration::days(8);
                    e
                })
                .collect();
            tasks.push(tokio::spawn(async move {
                let mut h = Histogram::<u64>::new(3).unwrap();
                let mut tick = tokio::time::interval(interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                for e in &mine {
                    tick.tick().await;
                    let t = Instant::now();
                    s.process(&[e]).await.expect("feature call");
                    h.record(t.elapsed().as_micros() as u64).unwrap();
                }
                h
            }));
        }
        let mut all = Histogram::<u64>::new(3).unwrap();
        for t in tasks {
            all.add(t.await.unwrap()).unwrap();
        }
        all
    });
    println!(
        "vigil single-event calls at {rate}/s (4 callers, {} calls): p50 {} µs, p99 {} µs, p99.9 {} µs, max {} µs",
        hist.len(),
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.99),
        hist.value_at_quantile(0.999),
        hist.max()
    );

    // Memory per entity, by kind (the text before `=` in the entity id).
    let sizes = rt.block_on(async {
        let keys = common::redis_keys(&format!("{prefix}:{}:*", vigil_features::layout::STATE_TAG), 20_000).await;
        let client = redis::Client::open(URL).unwrap();
        let mut con = client.get_multiplexed_async_connection().await.unwrap();
        let mut by_kind: BTreeMap<String, (usize, u64, u64)> = BTreeMap::new();
        for k in &keys {
            let kind = k.split('{').nth(1).and_then(|s| s.split('=').next()).unwrap_or("?").to_owned();
            let len: u64 = redis::cmd("STRLEN").arg(k).query_async(&mut con).await.unwrap();
            let usage: u64 = redis::cmd("MEMORY").arg("USAGE").arg(k).query_async(&mut con).await.unwrap();
            let e = by_kind.entry(kind).or_default();
            e.0 += 1;
            e.1 += len;
            e.2 += usage;
        }
        common::clean_redis(&prefix).await;
        common::clean_redis(&owned_prefix).await;
        let _: i64 = redis::cmd("DEL").arg("bench:h").query_async(&mut con).await.unwrap();
        by_kind
    });
    println!("stored entity state by kind (sampled keys: state bytes / Redis MEMORY USAGE per key):");
    for (kind, (count, len, usage)) in sizes {
        println!(
            "  {kind:24} {count:>6} keys  {:>6} B state  {:>6} B in Redis",
            len / count.max(1) as u64,
            usage / count.max(1) as u64
        );
    }
}
