//! Review pages harness: the analysts' pages and API routes answered by
//! `vigil review serve`'s router over real HTTP with N cases in PostgreSQL
//! (issue 22's target: p99 under 50 ms for the queue and case pages with
//! 1,000,000 cases), beside `/healthz` of the same server in the same run
//! (the floor of one HTTP round trip here).
//!
//! The cases are written straight by SQL (half open, half closed, two per
//! card, four queues), each with one payment holding a full decision snapshot
//! (30 features, reasons, model factors, the event), then vacuumed and
//! analysed (the steady state autovacuum keeps, not a fresh bulk load). One
//! analyst asks each route in turn, `VIGIL_BENCH_REQUESTS` times (default
//! 300), then four analysts at once. Each run works in a schema of its own,
//! dropped at the end. Run: `cargo bench --bench review_pages` (env:
//! VIGIL_BENCH_CASES, default 1000000; VIGIL_TEST_POSTGRES for another server).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "shared/review_data.rs"]
mod review_data;

use std::sync::Arc;
use std::time::{Duration, Instant};

use vigil_review::{ReviewSettings, ReviewStore, Role};
use vigil_review_web::Web;

/// A route's path for the i-th request.
type Route = Box<dyn Fn(usize) -> String + Send + Sync>;

fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

fn settings() -> ReviewSettings {
    let text = "[rules]\npath = \"rules\"\n[review]\n\
        [[review.queues]]\nname = \"high_value\"\npriority = 90\nmin_score = 90.0\n\
        [[review.queues]]\nname = \"account_takeover\"\npriority = 70\nmin_score = 80.0\n\
        [[review.queues]]\nname = \"velocity\"\npriority = 50\nmin_score = 70.0\n";
    let config = vigil_core::PipelineConfig::parse(std::path::Path::new("bench.toml"), text).unwrap();
    ReviewSettings::from_pipeline(&config).unwrap()
}

#[tokio::main]
async fn main() {
    let n = env_usize("VIGIL_BENCH_CASES", 1_000_000) as i64;
    let requests = env_usize("VIGIL_BENCH_REQUESTS", 300);
    let name = format!("review_pages_{:x}", std::process::id());
    let (db, conn) = common::schema(&name).await;
    let store = ReviewStore::connect(&conn, 8, settings()).unwrap();
    store.migrate().await.unwrap();

    let started = Instant::now();
    let template = serde_json::to_string(&review_data::decision(0, 1)).unwrap();
    let half = n / 2;
    // Case g belongs to card g % half: the older half closed, the newer open,
    // so each card has one closed case and one open one.
    db.execute(
        "INSERT INTO cases (entity_kind, entity_id, status, queue, priority, payments, top_score, opened_at, closed_at)
         SELECT 'card', 'card-' || (g % $1::bigint), CASE WHEN g <= $1::bigint THEN 'closed' ELSE 'open' END,
                (ARRAY['default', 'velocity', 'account_takeover', 'high_value'])[1 + g % 4],
                (ARRAY[0, 50, 70, 90])[1 + g % 4], 1, 55 + g % 45,
                now() - make_interval(secs => ($2 - g)::double precision),
                CASE WHEN g <= $1::bigint THEN now() - make_interval(secs => ($2 - g)::double precision / 2) END
         FROM generate_series(1, $2::bigint) g",
        &[&half, &n],
    )
    .await
    .unwrap();
    db.execute(
        "INSERT INTO payments (transaction_id, case_id, decision, amount, currency, score, event_at, received_at,
                               hold_until, queue, queue_priority, verdict, verdict_by, resolution)
         SELECT 'tx-' || g, g,
                jsonb_set(jsonb_set(jsonb_set($3::text::jsonb, '{transaction_id}', to_jsonb('tx-' || g)),
                          '{event,transaction_id}', to_jsonb('tx-' || g)),
                          '{event,card_id}', to_jsonb('card-' || (g % $1::bigint))),
                (10 + g % 3000)::numeric + 0.25, 'EUR', 55 + g % 45, now(), now(),
                now() + interval '30 minutes' + make_interval(secs => g::double precision / 1000),
                (ARRAY['default', 'velocity', 'account_takeover', 'high_value'])[1 + g % 4], (ARRAY[0, 50, 70, 90])[1 + g % 4],
                CASE WHEN g <= $1::bigint THEN 'genuine' END, CASE WHEN g <= $1::bigint THEN 'bench' END,
                CASE WHEN g <= $1::bigint THEN 'release' END
         FROM generate_series(1, $2::bigint) g",
        &[&half, &n, &template],
    )
    .await
    .unwrap();
    // A live review database is vacuumed by autovacuum; right after a bulk
    // load it is not, and autovacuum would run during the measurement. So the
    // load is vacuumed first: the steady state (visibility map and hint bits
    // set), not the minutes after a bulk load.
    // (One statement each: several in one call would be one transaction,
    // where VACUUM may not run.)
    for table in ["cases", "payments"] {
        db.batch_execute(&format!("VACUUM (ANALYZE) {table}")).await.unwrap();
    }
    println!("review pages: {n} cases ({half} open), written and vacuumed in {:.0} s", started.elapsed().as_secs_f64());

    let password = "a long bench password";
    store.add_user("bench", "ana", Role::Lead, password).await.unwrap();
    let web = Arc::new(Web::new(store.clone(), Duration::from_secs(3600)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(vigil_review_web::serve(web, listener, std::future::pending()));
    let client = reqwest::Client::new();
    let login = client
        .post(format!("{base}/api/v1/review/session"))
        .json(&serde_json::json!({"name": "ana", "password": password}))
        .send()
        .await
        .unwrap();
    let cookie = login.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();

    // A page deep in the velocity queue: the cursor of its middle case.
    let mid: (i32, i64, i64) = {
        let r = db
            .query_one(
                "SELECT priority, (extract(epoch FROM opened_at) * 1000000)::bigint, id FROM cases
                 WHERE status = 'open' AND queue = 'velocity' ORDER BY priority DESC, opened_at, id
                 OFFSET (SELECT count(*) / 2 FROM cases WHERE status = 'open' AND queue = 'velocity') LIMIT 1",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    let deep = format!("{}.{}.{}", mid.0, mid.1, mid.2);
    let open_case = move |i: usize| half + 1 + (i as i64 * 7_919) % half;
    let routes: Vec<(&str, Route)> = vec![
        ("GET /healthz (floor)", Box::new(|_| "/healthz".to_owned())),
        ("queue page, every queue", Box::new(|_| "/review".to_owned())),
        ("queue page, deep in a queue", Box::new(move |_| format!("/review?queue=velocity&after={deep}"))),
        ("case page", Box::new(move |i| format!("/review/cases/{}", open_case(i)))),
        ("GET /api/v1/review/queues", Box::new(|_| "/api/v1/review/queues".to_owned())),
        ("GET /api/v1/review/cases/{id}", Box::new(move |i| format!("/api/v1/review/cases/{}", open_case(i)))),
        (
            "search by card",
            Box::new(move |i| format!("/api/v1/review/search?card=card-{}", (i as i64 * 104_729) % half)),
        ),
    ];
    let routes = Arc::new(routes);
    println!("{:<32} {:>9} {:>9} {:>9}   (one analyst; ms)", "route", "p50", "p99", "max");
    for (label, path) in routes.iter() {
        let mut times = Vec::with_capacity(requests);
        for i in 0..requests {
            let t = Instant::now();
            let r = client.get(format!("{base}{}", path(i))).header("cookie", &cookie).send().await.unwrap();
            assert!(r.status().is_success(), "{label}: {}", r.status());
            r.bytes().await.unwrap();
            times.push(t.elapsed());
        }
        times.sort();
        println!(
            "{label:<32} {:>9.2} {:>9.2} {:>9.2}",
            percentile(&times, 0.5),
            percentile(&times, 0.99),
            percentile(&times, 1.0)
        );
    }
    // The queue counts alone, straight from the store: what of the queue
    // routes' time is the database's.
    let mut times = Vec::with_capacity(requests);
    for _ in 0..requests {
        let t = Instant::now();
        store.queue_counts().await.unwrap();
        times.push(t.elapsed());
    }
    times.sort();
    println!(
        "{:<32} {:>9.2} {:>9.2} {:>9.2}",
        "queue counts, no HTTP",
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        percentile(&times, 1.0)
    );
    // Four analysts at once, each cycling through the page routes.
    let start = Instant::now();
    let tasks: Vec<_> = (0..4)
        .map(|a| {
            let (client, cookie, base, routes) = (client.clone(), cookie.clone(), base.clone(), routes.clone());
            tokio::spawn(async move {
                let mut times = Vec::new();
                for i in 0..requests {
                    let (_, path) = &routes[1 + (i + a) % 3];
                    let t = Instant::now();
                    let r = client
                        .get(format!("{base}{}", path(i * 4 + a)))
                        .header("cookie", &cookie)
                        .send()
                        .await
                        .unwrap();
                    assert!(r.status().is_success());
                    r.bytes().await.unwrap();
                    times.push(t.elapsed());
                }
                times
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    println!(
        "{:<32} {:>9.2} {:>9.2} {:>9.2}   ({:.0} pages/s)",
        "four analysts, the three pages",
        percentile(&all, 0.5),
        percentile(&all, 0.99),
        percentile(&all, 1.0),
        all.len() as f64 / start.elapsed().as_secs_f64()
    );
    db.batch_execute(&format!("SET search_path = public; DROP SCHEMA {name} CASCADE")).await.unwrap();
}
