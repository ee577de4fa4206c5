//! Logins through an OpenID Connect provider (`[review.oidc]`): the
//! authorisation code flow with PKCE, by the `openidconnect` crate.
//!
//! ```text
//! GET /review/oidc/login ──> 303 to the provider (state, nonce, PKCE challenge; state bound to a cookie)
//! GET /review/oidc/callback?code&state ──> code exchanged, ID token verified (signature, issuer,
//!     audience, expiry, nonce), role from its claims (or userinfo) ──> a session, as a password login gives
//! ```
//!
//! The state is single-use and kept server-side with its PKCE verifier and
//! nonce (ten minutes at most); a `SameSite=Lax` cookie binds it to the
//! browser that started the login, so a code injected into another browser
//! (login CSRF) is refused. The session cookie is `SameSite=Strict`, which a
//! browser does not send on a navigation that another site started, so the
//! callback answers a page that moves on to `/review` itself.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{html, DOCTYPE};
use openidconnect::core::{CoreAuthenticationFlow, CoreClient, CoreProviderMetadata};
use openidconnect::{
    AccessTokenHash, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointMaybeSet, EndpointNotSet,
    EndpointSet, IssuerUrl, Nonce, OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope,
    TokenResponse,
};
use serde::Deserialize;
use serde_json::Value;
use vigil_core::pipeline::OidcConfig;
use vigil_review::Role;

use crate::pages::PAGES;
use crate::Web;

/// The cookie that binds a login's state to the browser that began it.
const STATE_COOKIE: &str = "vigil_oidc_state";

type Client =
    CoreClient<EndpointSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointMaybeSet, EndpointMaybeSet>;

/// The provider, discovered, and how its claims name roles and accounts.
pub struct Oidc {
    client: Client,
    http: reqwest::Client,
    config: OidcConfig,
    /// Where the provider's userinfo answers, when it says.
    userinfo: Option<String>,
}

impl Oidc {
    /// Reads the provider's discovery document and keys (`issuer` +
    /// `/.well-known/openid-configuration`); `secret` is the client's.
    pub async fn discover(config: &OidcConfig, secret: String) -> Result<Oidc, String> {
        // Following redirects would let a provider's answer send this server
        // elsewhere (SSRF).
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|e| e.to_string())?;
        let issuer = IssuerUrl::new(config.issuer.clone()).map_err(|e| format!("issuer {}: {e}", config.issuer))?;
        let metadata = CoreProviderMetadata::discover_async(issuer, &http)
            .await
            .map_err(|e| format!("discovering {}: {}", config.issuer, error_chain(&e)))?;
        let userinfo = metadata.userinfo_endpoint().map(|u| u.url().to_string());
        let redirect = RedirectUrl::new(config.redirect_url.clone())
            .map_err(|e| format!("redirect_url {}: {e}", config.redirect_url))?;
        let client = CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(config.client_id.clone()),
            Some(ClientSecret::new(secret)),
        )
        .set_redirect_uri(redirect);
        Ok(Oidc { client, http, config: config.clone(), userinfo })
    }

    /// The role the claims give: the highest role one of the role claim's
    /// values names (through `[review.oidc.roles]`, or the role names
    /// themselves).
    fn role(&self, claims: &Value) -> Option<Role> {
        let values: Vec<&str> = match &claims[&self.config.role_claim] {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if self.config.roles.is_empty() {
            return values.iter().filter_map(|v| Role::parse(v)).max();
        }
        self.config
            .roles
            .iter()
            .filter(|(_, wanted)| wanted.iter().any(|w| values.contains(&w.as_str())))
            .filter_map(|(role, _)| Role::parse(role))
            .max()
    }

    /// The account name the claims give, lower-cased (the name claim, else
    /// the e-mail address).
    fn name(&self, claims: &Value) -> Option<String> {
        claims[&self.config.name_claim].as_str().or_else(|| claims["email"].as_str()).map(str::to_lowercase)
    }
}

/// Each cause of an error, joined: the crate's errors say little on their own.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

/// `GET /review/oidc/login`: off to the provider.
pub async fn login(State(web): State<Arc<Web>>) -> Response {
    let Some(oidc) = web.oidc.as_ref() else {
        return refused(StatusCode::NOT_FOUND, "single sign-on is not set up on this server ([review.oidc])");
    };
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (url, state, nonce) = oidc
        .client
        .authorize_url(CoreAuthenticationFlow::AuthorizationCode, CsrfToken::new_random, Nonce::new_random)
        .add_scope(Scope::new("profile".into()))
        .add_scope(Scope::new("email".into()))
        .set_pkce_challenge(challenge)
        .url();
    if let Err(e) = web.store.oidc_begin(state.secret(), verifier.secret(), nonce.secret()).await {
        return crate::pages::failure_page(e.into());
    }
    let mut r = Redirect::to(url.as_str()).into_response();
    let secure = if web.secure_cookie { "; Secure" } else { "" };
    let cookie =
        format!("{STATE_COOKIE}={}; Path={PAGES}/oidc; Max-Age=600; HttpOnly; SameSite=Lax{secure}", state.secret());
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

#[derive(Deserialize)]
pub struct Callback {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// `GET /review/oidc/callback`: the provider's answer.
pub async fn callback(State(web): State<Arc<Web>>, headers: HeaderMap, Query(c): Query<Callback>) -> Response {
    let Some(oidc) = web.oidc.as_ref() else {
        return refused(StatusCode::NOT_FOUND, "single sign-on is not set up on this server ([review.oidc])");
    };
    if let Some(error) = c.error {
        let why = c.error_description.unwrap_or_default();
        return refused(StatusCode::UNAUTHORIZED, &format!("the identity provider said no: {error} {why}"));
    }
    let (Some(code), Some(state)) = (c.code, c.state) else {
        return refused(StatusCode::BAD_REQUEST, "the identity provider's answer has no code or state");
    };
    let bound = crate::session::cookie(&headers, STATE_COOKIE).is_some_and(|c| same(c, &state));
    let taken = match web.store.oidc_take(&state).await {
        Ok(t) => t,
        Err(e) => return crate::pages::failure_page(e.into()),
    };
    let (true, Some((verifier, nonce))) = (bound, taken) else {
        return refused(
            StatusCode::BAD_REQUEST,
            "this login was not started here, was used already, or is older than ten minutes: log in again",
        );
    };
    let claims = match verify(oidc, code, verifier, nonce).await {
        Ok(c) => c,
        Err(why) => {
            tracing::warn!(%why, "single sign-on refused");
            return refused(StatusCode::UNAUTHORIZED, &format!("the identity provider's answer does not hold: {why}"));
        }
    };
    let (Some(name), Some(role)) = (oidc.name(&claims.extra), oidc.role(&claims.extra)) else {
        let what = format!(
            "the identity provider gives no account name (`{}` or `email`) or no Vigil role (`{}`) for you: ask an admin",
            oidc.config.name_claim, oidc.config.role_claim
        );
        return refused(StatusCode::FORBIDDEN, &what);
    };
    let session = match web.store.oidc_login(&claims.issuer, &claims.subject, &name, role, web.session_ttl).await {
        Ok(s) => s,
        Err(vigil_review::ReviewError::LoginFailed) => {
            return refused(StatusCode::FORBIDDEN, "this account is disabled here: ask an admin")
        }
        Err(vigil_review::ReviewError::Invalid(why)) => return refused(StatusCode::FORBIDDEN, &why),
        Err(e) => return crate::pages::failure_page(e.into()),
    };
    let max_age = (session.expires_at - chrono::Utc::now()).num_seconds().max(0);
    // A page that moves on by itself: the Strict session cookie is sent on
    // that same-site navigation, not on a redirect the provider started.
    let body = html! {
        (DOCTYPE)
        html lang="en" {
            head { meta charset="utf-8"; meta http-equiv="refresh" content={ "0;url=" (PAGES) }; title { "Logged in · Vigil review" } }
            body { p { "Logged in as " (session.user) ". " a href=(PAGES) { "Go on to the queues" } } }
        }
    };
    let mut r = crate::pages::page(StatusCode::OK, body);
    let h = r.headers_mut();
    h.append(header::SET_COOKIE, crate::session::set_cookie(&web, &session.token, max_age));
    let secure = if web.secure_cookie { "; Secure" } else { "" };
    if let Ok(v) =
        HeaderValue::from_str(&format!("{STATE_COOKIE}=; Path={PAGES}/oidc; Max-Age=0; HttpOnly; SameSite=Lax{secure}"))
    {
        h.append(header::SET_COOKIE, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// What a verified login says.
struct Verified {
    issuer: String,
    subject: String,
    /// Every claim of the ID token, then the userinfo's for those it lacks.
    extra: Value,
}

/// Exchanges the code, verifies the ID token (signature, issuer, audience,
/// expiry, nonce, access token hash) and gathers its claims; reads userinfo
/// too when the role or name claim is not in the token.
async fn verify(oidc: &Oidc, code: String, verifier: String, nonce: String) -> Result<Verified, String> {
    let tokens = oidc
        .client
        .exchange_code(AuthorizationCode::new(code))
        .map_err(|e| error_chain(&e))?
        .set_pkce_verifier(PkceCodeVerifier::new(verifier))
        .request_async(&oidc.http)
        .await
        .map_err(|e| format!("exchanging the code: {}", error_chain(&e)))?;
    let id_token = tokens.id_token().ok_or("no ID token in the answer")?;
    let token_verifier = oidc.client.id_token_verifier();
    let claims = id_token.claims(&token_verifier, &Nonce::new(nonce)).map_err(|e| error_chain(&e))?;
    if let Some(expected) = claims.access_token_hash() {
        let alg = id_token.signing_alg().map_err(|e| error_chain(&e))?;
        let key = id_token.signing_key(&token_verifier).map_err(|e| error_chain(&e))?;
        let actual = AccessTokenHash::from_token(tokens.access_token(), alg, key).map_err(|e| error_chain(&e))?;
        if actual != *expected {
            return Err("the access token is not the one the ID token was issued with".into());
        }
    }
    let subject = claims.subject().to_string();
    // The token is verified: its payload's other claims (the role) can be
    // read from it as it stands.
    let mut extra = payload(&id_token.to_string()).unwrap_or(Value::Null);
    if !extra.is_object() {
        extra = Value::Object(Default::default());
    }
    let lacks = |v: &Value| v[&oidc.config.role_claim].is_null() || v[&oidc.config.name_claim].is_null();
    if lacks(&extra) {
        if let Some(url) = &oidc.userinfo {
            let info: Value = oidc
                .http
                .get(url)
                .bearer_auth(tokens.access_token().secret())
                .send()
                .await
                .and_then(|r| r.error_for_status())
                .map_err(|e| format!("userinfo: {e}"))?
                .json()
                .await
                .map_err(|e| format!("userinfo: {e}"))?;
            // Userinfo must be about the token's subject (OpenID Connect Core 5.3.2).
            if info["sub"].as_str() != Some(subject.as_str()) {
                return Err("userinfo is about another subject".into());
            }
            if let (Some(to), Some(from)) = (extra.as_object_mut(), info.as_object()) {
                for (k, v) in from {
                    to.entry(k.clone()).or_insert_with(|| v.clone());
                }
            }
        }
    }
    Ok(Verified { issuer: claims.issuer().to_string(), subject, extra })
}

/// The JSON payload of a compact JWT (already verified by the caller).
fn payload(jwt: &str) -> Option<Value> {
    use base64::Engine as _;
    let part = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part.trim_end_matches('=')).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Equal strings, compared in time that does not depend on where they differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The login page again, saying why single sign-on did not log the analyst in.
fn refused(status: StatusCode, why: &str) -> Response {
    crate::pages::login_page_saying(status, why)
}
