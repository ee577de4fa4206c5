//! Failures as the review API answers them: `{"error": {"code", "message"}}`
//! with the status that says what the client can do (the scoring API's shape).

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use vigil_review::ReviewError;

/// A refused or failed request.
#[derive(Debug)]
pub struct Failure {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl Failure {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Failure {
        Failure { status, code, message: message.into() }
    }

    pub fn bad_request(message: impl Into<String>) -> Failure {
        Failure::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    pub fn unauthorized() -> Failure {
        Failure::new(StatusCode::UNAUTHORIZED, "unauthorized", "log in first (no session, or it expired)")
    }

    pub fn forbidden(message: impl Into<String>) -> Failure {
        Failure::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
}

/// The status and code a store failure is answered with.
pub fn kind(e: &ReviewError) -> (StatusCode, &'static str) {
    use ReviewError as E;
    if e.is_refused_input() {
        return (StatusCode::UNPROCESSABLE_ENTITY, "invalid");
    }
    match e {
        E::LeaseLost { .. } => (StatusCode::CONFLICT, "lease_lost"),
        E::HeldByOther { .. } => (StatusCode::CONFLICT, "held_by_other"),
        E::AlreadyResolved { .. } => (StatusCode::CONFLICT, "already_resolved"),
        E::CaseClosed(_) => (StatusCode::CONFLICT, "case_closed"),
        E::AwaitingSecond { .. } => (StatusCode::CONFLICT, "awaiting_second"),
        E::NothingToConfirm(_) => (StatusCode::CONFLICT, "nothing_to_confirm"),
        E::SameAnalyst { .. } => (StatusCode::FORBIDDEN, "same_analyst"),
        E::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid"),
        E::NoSuchCase(_) => (StatusCode::NOT_FOUND, "no_such_case"),
        E::NoSuchPayment { .. } => (StatusCode::NOT_FOUND, "no_such_payment"),
        E::NoSuchTransaction(_) => (StatusCode::NOT_FOUND, "no_such_transaction"),
        E::LoginFailed => (StatusCode::UNAUTHORIZED, "login_failed"),
        E::Database(_) | E::Pool(_) | E::Kafka(_) | E::Labels(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        E::Settings { .. } | E::Migrate(_) | E::Snapshot { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    }
}

impl From<ReviewError> for Failure {
    fn from(e: ReviewError) -> Failure {
        let (status, code) = kind(&e);
        if status.is_server_error() {
            tracing::warn!(error = %e, "review request failed");
        }
        let mut message = e.to_string();
        if e.is_refused_input() {
            // PostgreSQL's own words say which value it refused.
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                message.push_str(&format!(": {s}"));
                source = s.source();
            }
        }
        Failure::new(status, code, message)
    }
}

impl From<JsonRejection> for Failure {
    fn from(e: JsonRejection) -> Failure {
        let status = e.status();
        let code =
            if status == StatusCode::UNSUPPORTED_MEDIA_TYPE { "unsupported_media_type" } else { "invalid_request" };
        Failure::new(status, code, e.body_text())
    }
}

impl From<PathRejection> for Failure {
    fn from(e: PathRejection) -> Failure {
        Failure::bad_request(e.body_text())
    }
}

impl From<QueryRejection> for Failure {
    fn from(e: QueryRejection) -> Failure {
        Failure::bad_request(e.body_text())
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        let mut r = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from_static("1"));
        }
        r
    }
}
