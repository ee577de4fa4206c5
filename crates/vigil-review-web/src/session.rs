//! Who is asking: the session cookie, checked against the store on every
//! request, and the CSRF token every unsafe request must carry in
//! `X-CSRF-Token`. The cookie is `HttpOnly` (no script reads it),
//! `SameSite=Strict` (no other site's page sends it) and `Secure` unless the
//! server is told it runs on plain HTTP away from localhost.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use vigil_review::{Role, SessionUser};

use crate::error::Failure;
use crate::Web;

/// The session cookie's name.
pub const COOKIE: &str = "vigil_review";
/// The header an unsafe request carries its CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The session token in the request's cookies, if any.
pub fn token(headers: &HeaderMap) -> Option<&str> {
    cookie(headers, COOKIE)
}

/// The value of the cookie `name` in the request, if it is there and not empty.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, value)| value)
        .filter(|v| !v.is_empty())
}

/// The `Set-Cookie` value that gives a session to the browser.
pub fn set_cookie(web: &Web, token: &str, max_age_s: i64) -> HeaderValue {
    let secure = if web.secure_cookie { "; Secure" } else { "" };
    HeaderValue::from_str(&format!("{COOKIE}={token}; Path=/; Max-Age={max_age_s}; HttpOnly; SameSite=Strict{secure}"))
        .expect("a hex token makes a valid header")
}

/// The `Set-Cookie` value that takes it away again.
pub fn clear_cookie(web: &Web) -> HeaderValue {
    set_cookie(web, "", 0)
}

fn unsafe_method(m: &Method) -> bool {
    !matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Middleware of every route past login: finds the session (401 without
/// one), checks the CSRF token of unsafe requests (403), and hands the
/// session's user to the handler as an extension.
pub async fn authenticate(State(web): State<Arc<Web>>, mut req: Request, next: Next) -> Response {
    let Some(token) = token(req.headers()) else {
        return Failure::unauthorized().into_response();
    };
    let user = match web.store.session(token).await {
        Ok(Some(user)) => user,
        Ok(None) => return Failure::unauthorized().into_response(),
        Err(e) => return Failure::from(e).into_response(),
    };
    if unsafe_method(req.method()) {
        let sent = req.headers().get(CSRF_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("");
        if !user.allows_change(sent) {
            return Failure::new(
                axum::http::StatusCode::FORBIDDEN,
                "csrf",
                format!("a change needs the session's CSRF token in the {CSRF_HEADER} header"),
            )
            .into_response();
        }
    }
    req.extensions_mut().insert(user);
    next.run(req).await
}

/// Refuses a user below `role`.
pub fn require(user: &SessionUser, role: Role, what: &str) -> Result<(), Failure> {
    if user.role >= role {
        Ok(())
    } else {
        Err(Failure::forbidden(format!(
            "{what} needs the {} role; {} is {}",
            role.as_str(),
            user.user,
            user.role.as_str()
        )))
    }
}
