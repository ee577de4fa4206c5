//! Review ingest harness: review decisions into cases in PostgreSQL, beside
//! the ceiling of the same rows written with none of the case logic, in one
//! run against the same server (issue 22's target: 5,000 review decisions a
//! second, exactly once under redelivery).
//!
//! 1. **Ceiling**: the same payment rows (the decision snapshot as `jsonb`,
//!    the amount as `numeric`, the card) by one `unnest` `INSERT ... ON
//!    CONFLICT DO NOTHING` per batch into a plain table keyed by transaction
//!    id: the least any exactly-once store of these snapshots must do.
//! 2. **Vigil**: `ReviewStore::ingest`, the same batches from the same
//!    writers: known ids set aside, one open case per card found or opened,
//!    the payments, the counters and the queue, in one transaction per batch.
//! 3. **Redelivery**: every decision again; nothing may be added (checked),
//!    and the rate is reported.
//!
//! Decisions are split between writers by card, as Kafka partitions keyed by
//! card would split them; each run works in a schema of its own, dropped at
//! the end. Needs the PostgreSQL of `scripts/services.sh`. Run:
//! `cargo bench --bench review` (env: VIGIL_BENCH_REVIEWS, default 200000;
//! VIGIL_BENCH_WRITERS, default 4; VIGIL_TEST_POSTGRES for another server).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "shared/review_data.rs"]
mod review_data;

use std::sync::Arc;
use std::time::Instant;

use review_data::decision;
use rust_decimal::Decimal;
use vigil_core::Decision;
use vigil_review::{ReviewSettings, ReviewStore};

const BATCH: usize = 500;

fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A new schema of its own, a client there, and a store on it.
async fn schema_store(name: &str) -> (tokio_postgres::Client, ReviewStore) {
    let (client, settings) = common::schema(name).await;
    let writers = env_usize("VIGIL_BENCH_WRITERS", 4);
    let store = ReviewStore::connect(&settings, writers + 1, ReviewSettings::default()).unwrap();
    (client, store)
}

/// Runs `work` on each writer's share (by card) of `decisions`, batch by
/// batch, all writers at once; decisions a second.
async fn timed<F, Fut>(decisions: &[Decision], writers: usize, work: F) -> f64
where
    F: Fn(usize, Vec<Decision>) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let mut shares: Vec<Vec<Decision>> = vec![Vec::new(); writers];
    for d in decisions {
        let card = d.event.as_ref().and_then(|e| e.card_id.as_deref()).unwrap_or_default();
        let w = card.bytes().fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize)) % writers;
        shares[w].push(d.clone());
    }
    let start = Instant::now();
    let tasks: Vec<_> = shares
        .into_iter()
        .enumerate()
        .map(|(w, share)| {
            let work = work.clone();
            tokio::spawn(async move {
                for chunk in share.chunks(BATCH) {
                    work(w, chunk.to_vec()).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    decisions.len() as f64 / start.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let n = env_usize("VIGIL_BENCH_REVIEWS", 200_000);
    let writers = env_usize("VIGIL_BENCH_WRITERS", 4).max(1);
    let cards = (n / 3).max(1);
    println!("review ingest: {n} review decisions, {cards} cards, {writers} writers, batches of {BATCH}");
    let decisions: Vec<Decision> = (0..n).map(|i| decision(i, cards)).collect();
    let tag = format!(
        "{:x}_{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos()
    );

    // 1. The ceiling: the same rows, no cases, one connection per writer.
    let ceiling = format!("review_bench_ceiling_{tag}");
    let (db, _) = common::schema(&ceiling).await;
    db.batch_execute(&format!(
        "CREATE TABLE {ceiling}.snapshots (transaction_id text PRIMARY KEY, card text NOT NULL,
             decision jsonb NOT NULL, amount numeric NOT NULL, received_at timestamptz NOT NULL DEFAULT now())"
    ))
    .await
    .unwrap();
    let mut clients = Vec::with_capacity(writers);
    for _ in 0..writers {
        let (client, conn) = tokio_postgres::connect(&common::database(), tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        client.batch_execute(&format!("SET search_path = {ceiling}")).await.unwrap();
        clients.push(client);
    }
    let clients = Arc::new(clients);
    let ceiling_rate = timed(&decisions, writers, move |w, batch| {
        let clients = clients.clone();
        async move {
            let ids: Vec<&str> = batch.iter().map(|d| d.transaction_id.as_str()).collect();
            let cards: Vec<&str> =
                batch.iter().map(|d| d.event.as_ref().and_then(|e| e.card_id.as_deref()).unwrap_or_default()).collect();
            let json: Vec<String> = batch.iter().map(|d| String::from_utf8(d.to_json()).unwrap()).collect();
            let amounts: Vec<Decimal> = batch.iter().map(|d| d.event.as_ref().map(|e| e.amount).unwrap_or_default()).collect();
            clients[w]
                .execute(
                    "INSERT INTO snapshots (transaction_id, card, decision, amount)
                     SELECT t, c, d::jsonb, a FROM unnest($1::text[], $2::text[], $3::text[], $4::numeric[]) AS u(t, c, d, a)
                     ON CONFLICT (transaction_id) DO NOTHING",
                    &[&ids, &cards, &json, &amounts],
                )
                .await
                .unwrap();
        }
    })
    .await;
    db.batch_execute(&format!("DROP SCHEMA {ceiling} CASCADE")).await.unwrap();

    // 2. Vigil's ingest, then 3. the same decisions again.
    let name = format!("review_bench_{tag}");
    let (db, store) = schema_store(&name).await;
    store.migrate().await.unwrap();
    let s = store.clone();
    let ingest_rate = timed(&decisions, writers, move |_, batch| {
        let s = s.clone();
        async move {
            s.ingest(&batch).await.unwrap();
        }
    })
    .await;
    db.batch_execute(&format!("SET search_path = {name}")).await.unwrap();
    let payments: i64 = db.query_one("SELECT count(*) FROM payments", &[]).await.unwrap().get(0);
    let cases: i64 = db.query_one("SELECT count(*) FROM cases", &[]).await.unwrap().get(0);
    assert_eq!(payments, n as i64, "each review decision once");
    let s = store.clone();
    let again_rate = timed(&decisions, writers, move |_, batch| {
        let s = s.clone();
        async move {
            let got = s.ingest(&batch).await.unwrap();
            assert_eq!(got.added, 0, "a redelivery adds nothing");
        }
    })
    .await;
    let after: i64 = db.query_one("SELECT count(*) FROM payments", &[]).await.unwrap().get(0);
    assert_eq!(after, n as i64, "redelivered decisions added nothing");
    db.batch_execute(&format!("SET search_path = public; DROP SCHEMA {name} CASCADE")).await.unwrap();

    println!("ceiling (plain keyed insert of the snapshots): {ceiling_rate:>9.0} decisions/s");
    println!(
        "vigil review ingest ({cases} cases):           {ingest_rate:>9.0} decisions/s ({:.2} of the ceiling)",
        ingest_rate / ceiling_rate
    );
    println!("redelivery of every decision (adds nothing):   {again_rate:>9.0} decisions/s");
}
