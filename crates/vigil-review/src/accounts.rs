//! Analysts' accounts and sessions: local users with argon2id password
//! hashes, roles, and sessions whose token lives only in the analyst's
//! cookie (the database keeps its SHA-256), each with a CSRF token that every
//! unsafe request must send back.
//!
//! A login with an unknown name costs the same hash work as one with a wrong
//! password, and both answer the same, so a login form does not tell which
//! names exist. Logins, failed logins, logouts and account changes go to the
//! audit log.

use std::sync::OnceLock;
use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use chrono::{DateTime, Utc};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::audit::{self, Audit};
use crate::error::ReviewError;
use crate::store::ReviewStore;

/// Shortest password accepted.
pub const MIN_PASSWORD_CHARS: usize = 12;

/// What an account may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Works cases: claims, verdicts, notes, tags, snoozes, escalations.
    Analyst,
    /// As an analyst, and takes escalated cases.
    Lead,
    /// As a lead, and manages accounts.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Analyst, Role::Lead, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Analyst => "analyst",
            Role::Lead => "lead",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// A logged-in session, as handed to the analyst once: `token` goes in an
/// `HttpOnly; Secure; SameSite=Strict` cookie, `csrf` in the pages' forms.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    pub token: String,
    pub csrf: String,
    pub user: String,
    pub role: Role,
    pub expires_at: DateTime<Utc>,
}

/// Who a session belongs to, as found from its token.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionUser {
    pub user: String,
    pub role: Role,
    pub csrf: String,
    pub expires_at: DateTime<Utc>,
}

impl SessionUser {
    /// Whether `csrf` is this session's CSRF token (compared in constant
    /// time): what every unsafe request must send.
    pub fn allows_change(&self, csrf: &str) -> bool {
        same(&self.csrf, csrf)
    }
}

fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn random_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

fn hash_password(password: &str) -> Result<String, ReviewError> {
    let chars = password.chars().count();
    if chars < MIN_PASSWORD_CHARS {
        return Err(ReviewError::Invalid(format!(
            "a password needs at least {MIN_PASSWORD_CHARS} characters, not {chars}"
        )));
    }
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())
        .map_err(|e| ReviewError::Invalid(format!("cannot make a salt: {e}")))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| ReviewError::Invalid(format!("cannot hash the password: {e}")))
}

/// Whether `password` matches the PHC string `hash`; a hash that does not
/// parse matches nothing.
fn password_matches(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

/// A hash of a random password, made once: an unknown name is checked
/// against it, so that it costs the same work as a known one.
fn stand_in_hash() -> String {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| hash_password(&random_token()).unwrap_or_default()).clone()
}

/// Equal strings, compared in time that does not depend on where they differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A new session of `user` for `ttl`, written and audited (`via` says how
/// the user logged in when not by password) in the caller's transaction.
async fn open_session(
    tx: &deadpool_postgres::Transaction<'_>,
    user: &str,
    role: Role,
    ttl: Duration,
    via: Option<&str>,
) -> Result<Session, ReviewError> {
    let (token, csrf) = (random_token(), random_token());
    let expires_at: DateTime<Utc> = tx
        .query_one(
            "INSERT INTO sessions (token_hash, user_name, csrf, expires_at)
             VALUES ($1, $2, $3, now() + make_interval(secs => $4)) RETURNING expires_at",
            &[&token_hash(&token), &user, &csrf, &ttl.as_secs_f64()],
        )
        .await?
        .get(0);
    let mut detail = json!({"expires_at": expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)});
    if let Some(via) = via {
        detail["via"] = via.into();
    }
    audit::append(tx, &[Audit { actor: user, action: "login", case: None, transaction_id: None, detail }]).await?;
    Ok(Session { token, csrf, user: user.to_owned(), role, expires_at })
}

impl ReviewStore {
    /// Adds an account (`by` is the admin who adds it, for the audit log).
    pub async fn add_user(&self, by: &str, name: &str, role: Role, password: &str) -> Result<(), ReviewError> {
        let hash = hash_password(password)?;
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let n = tx
            .execute(
                "INSERT INTO users (name, role, password_hash) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                &[&name, &role.as_str(), &hash],
            )
            .await
            .map_err(|e| match e.code() {
                Some(c) if *c == tokio_postgres::error::SqlState::CHECK_VIOLATION => ReviewError::Invalid(format!(
                    "user name `{name}`: 1 to 64 lower-case letters, digits, `.`, `_` or `-`, starting with a letter or digit"
                )),
                _ => ReviewError::Database(e),
            })?;
        if n == 0 {
            return Err(ReviewError::Invalid(format!("user `{name}` exists already")));
        }
        let detail = json!({"user": name, "role": role.as_str()});
        audit::append(&tx, &[Audit { actor: by, action: "add_user", case: None, transaction_id: None, detail }])
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Disables an account and ends its sessions.
    pub async fn disable_user(&self, by: &str, name: &str) -> Result<(), ReviewError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let n = tx.execute("UPDATE users SET disabled = true WHERE name = $1", &[&name]).await?;
        if n == 0 {
            return Err(ReviewError::Invalid(format!("no user `{name}`")));
        }
        tx.execute("DELETE FROM sessions WHERE user_name = $1", &[&name]).await?;
        let detail = json!({"user": name});
        audit::append(&tx, &[Audit { actor: by, action: "disable_user", case: None, transaction_id: None, detail }])
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Checks a name and password and opens a session for `ttl`. A wrong
    /// password, an unknown name and a disabled account all fail alike, as
    /// [`ReviewError::LoginFailed`], after the same hash work.
    pub async fn login(&self, name: &str, password: &str, ttl: Duration) -> Result<Session, ReviewError> {
        let client = self.pool.get().await?;
        let row = client.query_opt("SELECT role, password_hash, disabled FROM users WHERE name = $1", &[&name]).await?;
        // An account of the identity provider has no password: it fails
        // as an unknown name does, after the same work.
        let (hash, role, disabled) = match &row {
            Some(r) => match r.get::<_, Option<String>>(1) {
                Some(hash) => (hash, Role::parse(r.get(0)), r.get::<_, bool>(2)),
                None => (stand_in_hash(), None, true),
            },
            None => (stand_in_hash(), None, true),
        };
        let pw = password.to_owned();
        let matches = tokio::task::spawn_blocking(move || password_matches(&pw, &hash)).await.unwrap_or(false);
        let mut client = client;
        let tx = client.transaction().await?;
        let (Some(role), true, false) = (role, matches, disabled) else {
            let detail = json!({"user": name});
            audit::append(
                &tx,
                &[Audit { actor: name, action: "login_failed", case: None, transaction_id: None, detail }],
            )
            .await?;
            tx.commit().await?;
            return Err(ReviewError::LoginFailed);
        };
        let session = open_session(&tx, name, role, ttl, None).await?;
        tx.commit().await?;
        Ok(session)
    }

    /// Remembers a login sent to the identity provider: its `state`, PKCE
    /// verifier and nonce, for [`ReviewStore::oidc_take`]. Logins older than
    /// ten minutes are forgotten.
    pub async fn oidc_begin(&self, state: &str, verifier: &str, nonce: &str) -> Result<(), ReviewError> {
        let client = self.pool.get().await?;
        client.execute("DELETE FROM oidc_logins WHERE created_at < now() - interval '10 minutes'", &[]).await?;
        client
            .execute(
                "INSERT INTO oidc_logins (state_hash, pkce_verifier, nonce) VALUES ($1, $2, $3)",
                &[&token_hash(state), &verifier, &nonce],
            )
            .await?;
        Ok(())
    }

    /// The PKCE verifier and nonce of the login `state` began, once: a second
    /// call, or one after ten minutes, finds nothing.
    pub async fn oidc_take(&self, state: &str) -> Result<Option<(String, String)>, ReviewError> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "DELETE FROM oidc_logins WHERE state_hash = $1 AND created_at >= now() - interval '10 minutes'
                 RETURNING pkce_verifier, nonce",
                &[&token_hash(state)],
            )
            .await?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    /// Opens a session for `ttl` for the identity provider's user
    /// (`issuer`, `subject`), whose token the caller has verified. The first
    /// login makes the account `name`; later ones keep its name and take the
    /// role the provider gives now. A disabled account, or a name taken by a
    /// local account or another subject, is refused (and audited).
    pub async fn oidc_login(
        &self,
        issuer: &str,
        subject: &str,
        name: &str,
        role: Role,
        ttl: Duration,
    ) -> Result<Session, ReviewError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let known = tx
            .query_opt(
                "SELECT name, role, disabled FROM users WHERE oidc_issuer = $1 AND oidc_subject = $2 FOR UPDATE",
                &[&issuer, &subject],
            )
            .await?;
        let refuse = |why: &str| json!({"user": name, "via": "oidc", "subject": subject, "why": why});
        let user = match known {
            Some(r) if r.get::<_, bool>(2) => {
                let name: String = r.get(0);
                let detail = refuse("disabled");
                audit::append(
                    &tx,
                    &[Audit { actor: &name, action: "login_failed", case: None, transaction_id: None, detail }],
                )
                .await?;
                tx.commit().await?;
                return Err(ReviewError::LoginFailed);
            }
            Some(r) => {
                let (known_name, was): (String, String) = (r.get(0), r.get(1));
                if was != role.as_str() {
                    tx.execute("UPDATE users SET role = $2 WHERE name = $1", &[&known_name, &role.as_str()]).await?;
                    let detail = json!({"user": known_name, "role": role.as_str(), "was": was, "via": "oidc"});
                    audit::append(
                        &tx,
                        &[Audit {
                            actor: &known_name,
                            action: "role_changed",
                            case: None,
                            transaction_id: None,
                            detail,
                        }],
                    )
                    .await?;
                }
                known_name
            }
            None => {
                let added = tx
                    .execute(
                        "INSERT INTO users (name, role, oidc_issuer, oidc_subject) VALUES ($1, $2, $3, $4)
                         ON CONFLICT DO NOTHING",
                        &[&name, &role.as_str(), &issuer, &subject],
                    )
                    .await
                    .map_err(|e| match e.code() {
                        Some(c) if *c == tokio_postgres::error::SqlState::CHECK_VIOLATION => ReviewError::Invalid(
                            format!("the identity provider's name `{name}` is not a user name here (1 to 64 lower-case letters, digits, `.`, `_` or `-`)"),
                        ),
                        _ => ReviewError::Database(e),
                    })?;
                if added == 0 {
                    let detail = refuse("name taken");
                    audit::append(
                        &tx,
                        &[Audit { actor: name, action: "login_failed", case: None, transaction_id: None, detail }],
                    )
                    .await?;
                    tx.commit().await?;
                    return Err(ReviewError::Invalid(format!(
                        "the name `{name}` belongs to another account here; an admin must rename or remove it"
                    )));
                }
                let detail =
                    json!({"user": name, "role": role.as_str(), "via": "oidc", "issuer": issuer, "subject": subject});
                audit::append(
                    &tx,
                    &[Audit { actor: name, action: "add_user", case: None, transaction_id: None, detail }],
                )
                .await?;
                name.to_owned()
            }
        };
        let session = open_session(&tx, &user, role, ttl, Some("oidc")).await?;
        tx.commit().await?;
        Ok(session)
    }

    /// The live session of `token`, if it has one (not expired, its account
    /// not disabled).
    pub async fn session(&self, token: &str) -> Result<Option<SessionUser>, ReviewError> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT u.name, u.role, s.csrf, s.expires_at FROM sessions s JOIN users u ON u.name = s.user_name
                 WHERE s.token_hash = $1 AND s.expires_at > now() AND NOT u.disabled",
                &[&token_hash(token)],
            )
            .await?;
        Ok(row.and_then(|r| {
            Some(SessionUser { user: r.get(0), role: Role::parse(r.get(1))?, csrf: r.get(2), expires_at: r.get(3) })
        }))
    }

    /// The session of `token` when `csrf` is its CSRF token: what every
    /// unsafe request must pass. `None` otherwise, whatever the reason.
    pub async fn session_for_change(&self, token: &str, csrf: &str) -> Result<Option<SessionUser>, ReviewError> {
        Ok(self.session(token).await?.filter(|s| s.allows_change(csrf)))
    }

    /// Ends the session of `token`.
    pub async fn logout(&self, token: &str) -> Result<(), ReviewError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let row = tx
            .query_opt("DELETE FROM sessions WHERE token_hash = $1 RETURNING user_name", &[&token_hash(token)])
            .await?;
        if let Some(r) = row {
            let user: String = r.get(0);
            let entry = Audit { actor: &user, action: "logout", case: None, transaction_id: None, detail: json!({}) };
            audit::append(&tx, &[entry]).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
