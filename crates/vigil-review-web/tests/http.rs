//! The review API against the real PostgreSQL (127.0.0.1:5432, database
//! `test`, or `VIGIL_TEST_POSTGRES`), each test in a schema of its own,
//! requests sent to the router as a browser or a client would send them.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;
use vigil_core::Decision;
use vigil_review::{ReviewSettings, ReviewStore, Role};
use vigil_review_web::{router, Web};

fn database() -> String {
    std::env::var("VIGIL_TEST_POSTGRES").unwrap_or_else(|_| "host=127.0.0.1 user=postgres dbname=test".into())
}

/// A migrated store in a new schema and the router over it.
struct Server {
    store: ReviewStore,
    app: axum::Router,
    schema: String,
}

/// What came back.
struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Value,
    /// The body as text (a page's HTML).
    text: String,
}

/// A logged-in client: its cookie and CSRF token.
struct Analyst {
    cookie: String,
    csrf: String,
}

impl Server {
    async fn new(settings: ReviewSettings) -> Server {
        let schema = format!("review_web_{:016x}", rand::random::<u64>());
        let (client, conn) = tokio_postgres::connect(&database(), tokio_postgres::NoTls)
            .await
            .expect("PostgreSQL on 127.0.0.1:5432 (scripts/services.sh starts it)");
        tokio::spawn(conn);
        client.batch_execute(&format!("CREATE SCHEMA {schema}")).await.unwrap();
        let mut config: tokio_postgres::Config = database().parse().unwrap();
        config.options(format!("-c search_path={schema}"));
        let store = ReviewStore::with_config(config, 4, settings).unwrap();
        store.migrate().await.unwrap();
        // Counted for every request: these tests read counts right after changes.
        let mut web = Web::new(store.clone(), Duration::from_secs(600));
        web.counts = Arc::new(vigil_review_web::counts::QueueCounts::new(Duration::ZERO));
        let web = Arc::new(web);
        Server { store, app: router(web), schema }
    }

    async fn drop_schema(self) {
        let (client, conn) = tokio_postgres::connect(&database(), tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        client.batch_execute(&format!("DROP SCHEMA {} CASCADE", self.schema)).await.unwrap();
    }

    async fn send(&self, who: Option<&Analyst>, method: Method, path: &str, body: Option<Value>) -> Answer {
        let mut req = Request::builder().method(method.clone()).uri(format!("/api/v1/review{path}"));
        if let Some(a) = who {
            req = req.header(header::COOKIE, &a.cookie);
            if method != Method::GET {
                req = req.header("x-csrf-token", &a.csrf);
            }
        }
        let req = match body {
            Some(b) => req.header(header::CONTENT_TYPE, "application/json").body(Body::from(b.to_string())),
            None => req.body(Body::empty()),
        }
        .unwrap();
        self.raw(req).await
    }

    async fn raw(&self, req: Request<Body>) -> Answer {
        let r = self.app.clone().oneshot(req).await.unwrap();
        let status = r.status();
        let headers = r.headers().clone();
        let bytes = r.into_body().collect().await.unwrap().to_bytes();
        let json =
            headers.get(header::CONTENT_TYPE).is_some_and(|t| t.to_str().unwrap().starts_with("application/json"));
        let body = if !json {
            assert!(
                status.is_redirection()
                    || status == StatusCode::NO_CONTENT
                    || headers.contains_key(header::CONTENT_TYPE),
                "{status}: no content type"
            );
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("{status}: not JSON ({e}): {}", String::from_utf8_lossy(&bytes)))
        };
        Answer { status, headers, body, text: String::from_utf8_lossy(&bytes).into_owned() }
    }

    async fn get(&self, who: &Analyst, path: &str) -> Answer {
        self.send(Some(who), Method::GET, path, None).await
    }

    async fn post(&self, who: &Analyst, path: &str, body: Value) -> Answer {
        self.send(Some(who), Method::POST, path, Some(body)).await
    }

    /// Adds an account and logs it in.
    async fn analyst(&self, name: &str, role: Role) -> Analyst {
        let password = format!("{name}'s long password");
        self.store.add_user("test", name, role, &password).await.unwrap();
        let a = self.send(None, Method::POST, "/session", Some(json!({"name": name, "password": password}))).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        let cookie = a.headers[header::SET_COOKIE].to_str().unwrap().split(';').next().unwrap().to_owned();
        Analyst { cookie, csrf: a.body["csrf_token"].as_str().unwrap().to_owned() }
    }
}

fn code(a: &Answer) -> &str {
    a.body["error"]["code"].as_str().unwrap_or_else(|| panic!("{}: no error code in {}", a.status, a.body))
}

fn review(tx: &str, card: &str, amount: &str, score: f64) -> Decision {
    serde_json::from_value(json!({
        "transaction_id": tx, "decision": "review", "score": score,
        "reasons": [{"rule": "card_burst", "code": "CARD_VELOCITY", "action": "review", "score": score}],
        "rules_version": "r1", "model_version": "m1", "model_score": 0.4,
        "features": {"card_count_1h": 3}, "latency_us": 100,
        "event": {"transaction_id": tx, "timestamp": "2026-12-04T10:00:00Z", "amount": amount, "currency": "EUR",
                  "merchant_id": "m-1", "terminal_id": "t-9", "country": "FR", "card_id": card}
    }))
    .unwrap()
}

fn settings_of(review: &str) -> ReviewSettings {
    let text = format!(
        "[rules]\npath = \"rules\"\n[[features]]\nname = \"card_count_1h\"\nentity = \"card_id\"\naggregate = \"count\"\n\
         window = \"1h\"\n{review}"
    );
    let config = vigil_core::PipelineConfig::parse(std::path::Path::new("review.toml"), &text).unwrap();
    ReviewSettings::from_pipeline(&config).unwrap()
}

#[tokio::test]
async fn a_login_gives_a_strict_http_only_cookie_and_every_change_needs_the_csrf_token() {
    let s = Server::new(ReviewSettings::default()).await;
    let none = s.send(None, Method::GET, "/queues", None).await;
    assert_eq!((none.status, code(&none)), (StatusCode::UNAUTHORIZED, "unauthorized"));

    s.store.add_user("test", "ana", Role::Analyst, "ana's long password").await.unwrap();
    let wrong =
        s.send(None, Method::POST, "/session", Some(json!({"name": "ana", "password": "not hers at all"}))).await;
    assert_eq!((wrong.status, code(&wrong)), (StatusCode::UNAUTHORIZED, "login_failed"));
    assert!(wrong.headers.get(header::SET_COOKIE).is_none());

    let ok =
        s.send(None, Method::POST, "/session", Some(json!({"name": "ana", "password": "ana's long password"}))).await;
    assert_eq!(ok.status, StatusCode::OK);
    let cookie = ok.headers[header::SET_COOKIE].to_str().unwrap().to_owned();
    for flag in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/"] {
        assert!(cookie.split("; ").any(|f| f == flag), "{flag} missing from {cookie}");
    }
    assert_eq!((ok.body["user"].as_str(), ok.body["role"].as_str()), (Some("ana"), Some("analyst")));
    let ana = Analyst {
        cookie: cookie.split(';').next().unwrap().to_owned(),
        csrf: ok.body["csrf_token"].as_str().unwrap().to_owned(),
    };
    let me = s.get(&ana, "/session").await;
    assert_eq!(me.body["csrf_token"], ok.body["csrf_token"]);

    // A change without the token, or with another, is refused and does nothing.
    for csrf in [None, Some("forged")] {
        let mut req = Request::post("/api/v1/review/claims")
            .header(header::COOKIE, &ana.cookie)
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(c) = csrf {
            req = req.header("x-csrf-token", c);
        }
        let a = s.raw(req.body(Body::from("{}")).unwrap()).await;
        assert_eq!((a.status, code(&a)), (StatusCode::FORBIDDEN, "csrf"));
    }
    let claimed = s.post(&ana, "/claims", json!({})).await;
    assert_eq!(claimed.status, StatusCode::NO_CONTENT, "nothing to claim, but allowed");

    let out = s.send(Some(&ana), Method::DELETE, "/session", None).await;
    assert_eq!(out.status, StatusCode::NO_CONTENT);
    assert!(out.headers[header::SET_COOKIE].to_str().unwrap().contains("Max-Age=0"));
    let after = s.get(&ana, "/queues").await;
    assert_eq!(after.status, StatusCode::UNAUTHORIZED, "the session is gone with the logout");
    s.drop_schema().await;
}

#[tokio::test]
async fn an_analyst_lists_claims_reads_notes_tags_and_decides_a_case_over_http() {
    let s = Server::new(settings_of(
        "[review]\n[[review.queues]]\nname = \"big\"\npriority = 50\nwhen = \"amount > 1000\"\n",
    ))
    .await;
    let ds = [
        review("tx-1", "card-1", "40.00", 70.0),
        review("tx-2", "card-1", "2500.00", 90.0),
        review("tx-3", "card-2", "15.00", 60.0),
        review("tx-4", "card-3", "12.00", 55.0),
    ];
    s.store.ingest(&ds).await.unwrap();
    let (ana, bo) = (s.analyst("ana", Role::Analyst).await, s.analyst("bo", Role::Analyst).await);

    let queues = s.get(&ana, "/queues").await;
    assert_eq!(queues.status, StatusCode::OK);
    let names: Vec<(&str, i64)> = queues.body["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| (q["name"].as_str().unwrap(), q["open"].as_i64().unwrap()))
        .collect();
    assert_eq!(names, [("big", 1), ("default", 2)]);

    // Pages in claim order, one and two at a time, following `next`: a
    // cursor leads on within its priority and down to the lower ones.
    for limit in [1, 2] {
        let mut seen = Vec::new();
        let mut path = format!("/cases?limit={limit}");
        loop {
            let page = s.get(&ana, &path).await;
            assert_eq!(page.status, StatusCode::OK, "{}", page.body);
            seen.extend(
                page.body["cases"].as_array().unwrap().iter().map(|c| c["entity"]["id"].as_str().unwrap().to_owned()),
            );
            match page.body["next"].as_str() {
                Some(next) => path = format!("/cases?limit={limit}&after={next}"),
                None => break,
            }
        }
        assert_eq!(seen, ["card-1", "card-2", "card-3"], "pages of {limit}");
    }
    let big = s.get(&ana, "/cases?queue=big").await;
    assert_eq!(big.body["cases"].as_array().unwrap().len(), 1);

    // Claim-next gives the most urgent case; a colleague cannot take it.
    let claim = s.post(&ana, "/claims", json!({})).await;
    assert_eq!(claim.status, StatusCode::OK, "{}", claim.body);
    assert_eq!(claim.body["claim"]["entity"]["id"], "card-1");
    let id = claim.body["claim"]["case"].as_i64().unwrap();
    let taken = s.post(&bo, &format!("/cases/{id}/claim"), json!({})).await;
    assert_eq!((taken.status, code(&taken)), (StatusCode::CONFLICT, "held_by_other"));
    let not_his =
        s.post(&bo, &format!("/cases/{id}/verdicts"), json!({"transaction_id": "tx-1", "verdict": "fraud"})).await;
    assert_eq!((not_his.status, code(&not_his)), (StatusCode::CONFLICT, "lease_lost"));

    // The case page's data: the frozen snapshots, event included.
    let case = s.get(&ana, &format!("/cases/{id}")).await;
    assert_eq!(case.status, StatusCode::OK);
    let payments = case.body["payments"].as_array().unwrap();
    assert_eq!(payments.len(), 2);
    assert_eq!(payments[1]["amount"], "2500.00");
    assert_eq!(payments[1]["decision"]["event"]["terminal_id"], "t-9");
    assert_eq!(payments[1]["decision"]["reasons"][0]["code"], "CARD_VELOCITY");
    assert_eq!(case.body["lease_holder"], "ana");

    let note = s.post(&ana, &format!("/cases/{id}/notes"), json!({"body": "called the cardholder"})).await;
    assert_eq!(note.status, StatusCode::CREATED, "{}", note.body);
    let tag = s.send(Some(&ana), Method::PUT, &format!("/cases/{id}/tags/callback"), None).await;
    assert_eq!(tag.body["added"], true);
    let renewed = s.post(&ana, &format!("/cases/{id}/claim/renew"), json!({})).await;
    assert_eq!(renewed.status, StatusCode::OK, "{}", renewed.body);

    for (tx, verdict, action) in [("tx-1", "genuine", "release"), ("tx-2", "fraud", "stop")] {
        let v = s.post(&ana, &format!("/cases/{id}/verdicts"), json!({"transaction_id": tx, "verdict": verdict})).await;
        assert_eq!(v.status, StatusCode::OK, "{}", v.body);
        assert_eq!(
            (v.body["outcome"].as_str(), v.body["resolution"]["action"].as_str()),
            (Some("resolved"), Some(action))
        );
    }
    let again =
        s.post(&ana, &format!("/cases/{id}/verdicts"), json!({"transaction_id": "tx-1", "verdict": "fraud"})).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.body);

    let closed = s.get(&ana, &format!("/cases/{id}")).await;
    assert_eq!(closed.body["status"], "closed");
    assert_eq!(closed.body["notes"][0]["body"], "called the cardholder");
    assert_eq!(closed.body["tags"], json!(["callback"]));
    let history = s.get(&ana, &format!("/cases/{id}/history")).await;
    assert_eq!(
        (history.body["cases"][0]["fraud"].as_i64(), history.body["cases"][0]["genuine"].as_i64()),
        (Some(1), Some(1))
    );
    let audit = s.get(&ana, &format!("/cases/{id}/audit")).await;
    let actions: Vec<&str> =
        audit.body["entries"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert!(actions.starts_with(&["claim"]) && actions.contains(&"verdict"), "{actions:?}");
    let closed_list = s.get(&ana, "/cases?status=closed").await;
    assert_eq!(closed_list.body["cases"][0]["id"].as_i64(), Some(id));

    for (q, want) in [("card=card-1", id), ("transaction=tx-2", id)] {
        let found = s.get(&ana, &format!("/search?{q}")).await;
        assert_eq!(found.body["cases"][0]["id"].as_i64(), Some(want), "{q}: {}", found.body);
    }
    let terminal = s.get(&ana, "/search?terminal=t-9").await;
    assert_eq!(terminal.body["cases"].as_array().unwrap().len(), 3);

    // A bulk verdict on the two cases left: each is taken and decided.
    let rest: Vec<i64> = s.get(&ana, "/cases").await.body["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_i64().unwrap())
        .collect();
    let bulk = s.post(&bo, "/bulk", json!({"cases": rest, "action": {"verdict": "genuine"}})).await;
    assert_eq!(bulk.status, StatusCode::OK, "{}", bulk.body);
    assert!(
        bulk.body["outcomes"].as_array().unwrap().iter().all(|o| o["resolved"] == 1 && o["error"].is_null()),
        "{}",
        bulk.body
    );
    s.drop_schema().await;
}

#[tokio::test]
async fn roles_decide_who_takes_escalated_cases_and_manages_accounts() {
    let s = Server::new(ReviewSettings::default()).await;
    s.store.ingest(&[review("tx-1", "card-1", "40.00", 70.0)]).await.unwrap();
    let (ana, lea, root) = (
        s.analyst("ana", Role::Analyst).await,
        s.analyst("lea", Role::Lead).await,
        s.analyst("root", Role::Admin).await,
    );
    let id = s.post(&ana, "/claims", json!({})).await.body["claim"]["case"].as_i64().unwrap();
    let up = s.post(&ana, &format!("/cases/{id}/escalation"), json!({"reason": "looks like a ring"})).await;
    assert_eq!(up.status, StatusCode::NO_CONTENT, "{}", up.body);

    let refused = s.post(&ana, "/claims", json!({"escalated": true})).await;
    assert_eq!((refused.status, code(&refused)), (StatusCode::FORBIDDEN, "forbidden"));
    let direct = s.post(&ana, &format!("/cases/{id}/claim"), json!({})).await;
    assert_eq!(direct.status, StatusCode::FORBIDDEN, "an escalated case is a lead's: {}", direct.body);
    let taken = s.post(&lea, "/claims", json!({"escalated": true})).await;
    assert_eq!(taken.body["claim"]["case"].as_i64(), Some(id), "{}", taken.body);

    let new_user = json!({"name": "cy", "role": "analyst", "password": "cy's long password"});
    for who in [&ana, &lea] {
        let a = s.post(who, "/users", new_user.clone()).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN);
        let a = s.get(who, "/audit/verify").await;
        assert_eq!(a.status, StatusCode::FORBIDDEN);
    }
    let added = s.post(&root, "/users", new_user).await;
    assert_eq!(added.status, StatusCode::CREATED, "{}", added.body);
    let cy =
        s.send(None, Method::POST, "/session", Some(json!({"name": "cy", "password": "cy's long password"}))).await;
    assert_eq!(cy.status, StatusCode::OK);
    let gone = s.send(Some(&root), Method::DELETE, "/users/ana", None).await;
    assert_eq!(gone.status, StatusCode::NO_CONTENT);
    assert_eq!(s.get(&ana, "/queues").await.status, StatusCode::UNAUTHORIZED, "a disabled account's session ends");
    let chain = s.get(&root, "/audit/verify").await;
    assert!(chain.body["broken"].is_null() && chain.body["good"].as_i64().unwrap() > 5, "{}", chain.body);
    s.drop_schema().await;
}

#[tokio::test]
async fn four_eyes_over_http_needs_a_second_analyst() {
    let s = Server::new(settings_of("[review]\nfour_eyes_above = \"1000.00\"\n")).await;
    s.store.ingest(&[review("tx-big", "card-1", "2500.00", 90.0)]).await.unwrap();
    let (ana, bo) = (s.analyst("ana", Role::Analyst).await, s.analyst("bo", Role::Analyst).await);
    let id = s.post(&ana, "/claims", json!({})).await.body["claim"]["case"].as_i64().unwrap();
    let v =
        s.post(&ana, &format!("/cases/{id}/verdicts"), json!({"transaction_id": "tx-big", "verdict": "genuine"})).await;
    assert_eq!(v.body["outcome"], "proposed", "{}", v.body);
    let waiting = s.get(&bo, "/proposals").await;
    assert_eq!(waiting.body["proposals"][0]["by"], "ana");
    let case = s.get(&bo, &format!("/cases/{id}")).await;
    assert_eq!(case.body["payments"][0]["proposal"], json!({"verdict": "genuine", "by": "ana"}));

    let own = s.post(&ana, "/proposals/tx-big", json!({"agree": true})).await;
    assert_eq!((own.status, code(&own)), (StatusCode::FORBIDDEN, "same_analyst"));
    let second = s.post(&bo, "/proposals/tx-big", json!({"agree": true})).await;
    assert_eq!(second.status, StatusCode::OK, "{}", second.body);
    assert_eq!(second.body["resolution"]["confirmed_by"], "bo");
    assert_eq!(second.body["resolution"]["action"], "release");
    s.drop_schema().await;
}

#[tokio::test]
async fn bad_requests_are_answered_in_the_error_shape_with_what_is_wrong() {
    let s = Server::new(ReviewSettings::default()).await;
    let ana = s.analyst("ana", Role::Analyst).await;
    let cases: [(Method, &str, Option<Value>, StatusCode); 8] = [
        (Method::GET, "/cases/abc", None, StatusCode::BAD_REQUEST),
        (Method::GET, "/cases/12345", None, StatusCode::NOT_FOUND),
        (Method::GET, "/cases?limit=0", None, StatusCode::BAD_REQUEST),
        (Method::GET, "/cases?after=1.2;drop", None, StatusCode::BAD_REQUEST),
        (Method::GET, "/cases?status=maybe", None, StatusCode::BAD_REQUEST),
        (Method::GET, "/search", None, StatusCode::BAD_REQUEST),
        (
            Method::POST,
            "/cases/1/verdicts",
            Some(json!({"transaction_id": "t", "verdict": "maybe"})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (Method::POST, "/claims", Some(json!({"queue": "typo for queues"})), StatusCode::UNPROCESSABLE_ENTITY),
    ];
    for (method, path, body, want) in cases {
        let a = s.send(Some(&ana), method, path, body).await;
        assert_eq!(a.status, want, "{path}: {}", a.body);
        assert!(!a.body["error"]["message"].as_str().unwrap_or("").is_empty(), "{path}: {}", a.body);
    }
    let not_json = Request::post("/api/v1/review/claims")
        .header(header::COOKIE, &ana.cookie)
        .header("x-csrf-token", &ana.csrf)
        .body(Body::from("queues=default"))
        .unwrap();
    let a = s.raw(not_json).await;
    assert_eq!((a.status, code(&a)), (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"));
    s.drop_schema().await;
}

/// A page, as a browser asks for it.
async fn page(s: &Server, who: Option<&Analyst>, path: &str) -> Answer {
    let mut req = Request::get(path);
    if let Some(a) = who {
        req = req.header(header::COOKIE, &a.cookie);
    }
    s.raw(req.body(Body::empty()).unwrap()).await
}

#[tokio::test]
async fn the_pages_need_a_login_escape_what_payers_wrote_and_carry_the_csrf_token() {
    let s = Server::new(ReviewSettings::default()).await;
    let mut d = review("tx-1", "card-1", "40.00", 70.0);
    if let Some(e) = d.event.as_mut() {
        e.merchant_id = Some("<script>alert(1)</script>".into());
    }
    s.store.ingest(&[d]).await.unwrap();
    let ana = s.analyst("ana", Role::Analyst).await;

    let away = page(&s, None, "/review").await;
    assert!(away.status.is_redirection(), "{}", away.status);
    assert_eq!(away.headers[header::LOCATION], "/review/login");
    let login = page(&s, None, "/review/login").await;
    assert_eq!(login.status, StatusCode::OK);
    assert!(login.text.contains("id=\"login\""), "{}", login.text);

    let queues = page(&s, Some(&ana), "/review").await;
    assert_eq!(queues.status, StatusCode::OK);
    assert!(queues.headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap().contains("script-src 'self'"));
    assert!(queues.text.contains(&format!("content=\"{}\"", ana.csrf)), "the page carries the CSRF token");
    assert!(queues.text.contains("card-1"), "{}", queues.text);

    let id = s.post(&ana, "/claims", json!({})).await.body["claim"]["case"].as_i64().unwrap();
    let case = page(&s, Some(&ana), &format!("/review/cases/{id}")).await;
    assert_eq!(case.status, StatusCode::OK);
    assert!(!case.text.contains("<script>alert"), "event text is escaped");
    assert!(case.text.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    for words in ["card_burst", "CARD_VELOCITY", "Fraud: stop it", "Genuine: release it", "40.00 EUR"] {
        assert!(case.text.contains(words), "{words} missing from the case page");
    }
    let found = page(&s, Some(&ana), "/review/search?by=transaction&q=tx-1").await;
    assert!(found.text.contains(&format!("/review/cases/{id}")));
    let script = page(&s, None, "/review/assets/review.js").await;
    assert!(script.headers[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/javascript"));
    s.drop_schema().await;
}
