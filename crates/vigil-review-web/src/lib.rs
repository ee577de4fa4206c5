//! The review server: the analysts' pages under `/review` and the REST API
//! they call under `/api/v1/review/`, over
//! the review store (`docs/review-openapi.yaml` is its contract), behind
//! session cookies with a CSRF token and roles (`docs/design/review.md`).
//!
//! ```text
//! POST /api/v1/review/session ──> a session cookie + its CSRF token
//! every other route ──> session::authenticate (cookie; CSRF on changes) ──> routes::* ──> ReviewStore
//! ```

pub mod counts;
pub mod error;
pub mod oidc;
pub mod pages;
pub mod routes;
pub mod session;
pub mod view;

use std::sync::Arc;
use std::time::Duration;

use axum::routing::{get, post, put};
use axum::{middleware, Router};
use vigil_review::ReviewStore;

pub use error::Failure;

/// Where the API's routes live.
pub const PREFIX: &str = "/api/v1/review";

/// What the handlers share.
pub struct Web {
    pub store: ReviewStore,
    /// How long a login lasts.
    pub session_ttl: Duration,
    /// Whether the session cookie says `Secure` (browsers then send it only
    /// over HTTPS, and to `localhost` over plain HTTP).
    pub secure_cookie: bool,
    /// Logins through the pipeline's OpenID Connect provider, when it has one.
    pub oidc: Option<oidc::Oidc>,
    /// The queue counts, refreshed by one task while [`serve`] runs.
    pub counts: Arc<counts::QueueCounts>,
}

impl Web {
    /// A server over `store`: logins last `session_ttl`, the session cookie
    /// is `Secure`, no single sign-on, and the queue counts are at most a
    /// second old. Change the fields for anything else.
    pub fn new(store: ReviewStore, session_ttl: Duration) -> Web {
        Web {
            store,
            session_ttl,
            secure_cookie: true,
            oidc: None,
            counts: Arc::new(counts::QueueCounts::new(Duration::from_secs(1))),
        }
    }
}

/// The review server's routes over `web`.
pub fn router(web: Arc<Web>) -> Router {
    use routes as r;
    let authed = Router::new()
        .route("/session", get(r::me).delete(r::logout))
        .route("/queues", get(r::queues))
        .route("/cases", get(r::cases))
        .route("/search", get(r::search))
        .route("/cases/{id}", get(r::case))
        .route("/cases/{id}/history", get(r::history))
        .route("/cases/{id}/audit", get(r::case_audit))
        .route("/claims", post(r::claim_next))
        .route("/cases/{id}/claim", post(r::claim).delete(r::release))
        .route("/cases/{id}/claim/renew", post(r::renew))
        .route("/cases/{id}/verdicts", post(r::verdict))
        .route("/cases/{id}/notes", post(r::note))
        .route("/cases/{id}/tags/{tag}", put(r::tag).delete(r::untag))
        .route("/cases/{id}/snooze", post(r::snooze))
        .route("/cases/{id}/escalation", post(r::escalate))
        .route("/proposals", get(r::proposals))
        .route("/proposals/{transaction_id}", post(r::confirm))
        .route("/bulk", post(r::bulk))
        .route("/users", post(r::add_user))
        .route("/users/{name}", axum::routing::delete(r::disable_user))
        .route("/audit/verify", get(r::verify_audit))
        .route_layer(middleware::from_fn_with_state(web.clone(), session::authenticate));
    // Logging in is the one change made without a session (and so without a
    // CSRF token): it takes only a JSON body, which no other site's form can
    // send, and the cookie it sets is SameSite=Strict.
    let open = Router::new().route("/session", post(r::login));
    let pages = Router::new()
        .route("/", get(pages::queue_page))
        .route("/login", get(pages::login_page))
        .route("/oidc/login", get(oidc::login))
        .route("/oidc/callback", get(oidc::callback))
        .route("/search", get(pages::search_page))
        .route("/cases/{id}", get(pages::case_page))
        .route("/assets/review.js", get(pages::script))
        .route("/assets/review.css", get(pages::style));
    Router::new()
        .nest(PREFIX, authed.merge(open))
        .nest(pages::PAGES, pages)
        .route("/", get(|| async { axum::response::Redirect::to(pages::PAGES) }))
        // Browsers ask for it on every page; there is none.
        .route("/favicon.ico", get(|| async { axum::http::StatusCode::NO_CONTENT }))
        .route("/healthz", get(r::healthz))
        .route("/readyz", get(r::readyz))
        .with_state(web)
}

/// Serves `web` on `listener` until `shutdown` completes, then finishes the
/// requests in progress.
pub async fn serve(
    web: Arc<Web>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let address = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    tracing::info!(%address, "serving the review API");
    let counting = tokio::spawn(web.counts.clone().refresh_every(web.store.clone()));
    let served = axum::serve(listener, router(web)).with_graceful_shutdown(shutdown).await;
    counting.abort();
    served
}
