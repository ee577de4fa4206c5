//! The connection pool, the schema's migrations, and reading cases back.

use chrono::{DateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use rust_decimal::Decimal;
use tokio_postgres::NoTls;
use vigil_core::pipeline::HoldAction;
use vigil_core::Decision;

use crate::error::ReviewError;
use crate::settings::ReviewSettings;

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// A PostgreSQL advisory lock scoped to the store's schema (the first
/// schema of its `search_path`): the review stores of two pipelines that
/// share a database, a schema each, never wait on each other's migrations,
/// publisher or label sender. The lock is held by the connection that took
/// it, and goes with it.
///
/// Builds before the thirty-first session took one key for the whole
/// database (`legacy`), exclusively. This one takes that key shared as
/// well: shared holds never conflict with each other, so pipelines stay
/// apart, but during a rolling upgrade a new server waits while an old one
/// holds the old key, and the other way round, so no two servers of one
/// schema ever publish at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SchemaLock {
    class: i32,
    legacy: i64,
}

/// The lock's second key: the store's schema.
const SCHEMA_KEY: &str = "hashtext(coalesce(current_schema(), ''))";

impl SchemaLock {
    /// Serialises the migrations of concurrent starts.
    pub(crate) const MIGRATION: SchemaLock = SchemaLock { class: 0x7669_6d67, legacy: 0x7669_6769_6c72_7631 };
    /// One resolutions publisher at a time.
    pub(crate) const PUBLISH: SchemaLock = SchemaLock { class: 0x7669_7075, legacy: 0x7669_6769_6c70_7562 };
    /// One label sender at a time.
    pub(crate) const LABELS: SchemaLock = SchemaLock { class: 0x7669_6c61, legacy: 0x7669_6769_6c6c_6162 };

    /// Takes the lock if no other connection holds it; whether it did.
    pub(crate) async fn try_take(self, client: &tokio_postgres::Client) -> Result<bool, ReviewError> {
        let shared: bool = client.query_one("SELECT pg_try_advisory_lock_shared($1)", &[&self.legacy]).await?.get(0);
        if !shared {
            return Ok(false);
        }
        let sql = format!("SELECT pg_try_advisory_lock($1, {SCHEMA_KEY})");
        let got: bool = client.query_one(&sql, &[&self.class]).await?.get(0);
        if !got {
            client.execute("SELECT pg_advisory_unlock_shared($1)", &[&self.legacy]).await?;
        }
        Ok(got)
    }

    /// Waits for the lock and takes it.
    pub(crate) async fn take(self, client: &tokio_postgres::Client) -> Result<(), ReviewError> {
        client.execute("SELECT pg_advisory_lock_shared($1)", &[&self.legacy]).await?;
        client.execute(&format!("SELECT pg_advisory_lock($1, {SCHEMA_KEY})"), &[&self.class]).await?;
        Ok(())
    }

    /// Gives the lock back.
    pub(crate) async fn release(self, client: &tokio_postgres::Client) -> Result<(), ReviewError> {
        client.execute(&format!("SELECT pg_advisory_unlock($1, {SCHEMA_KEY})"), &[&self.class]).await?;
        client.execute("SELECT pg_advisory_unlock_shared($1)", &[&self.legacy]).await?;
        Ok(())
    }
}

/// The review store: a PostgreSQL pool and the review settings.
#[derive(Clone)]
pub struct ReviewStore {
    pub(crate) pool: Pool,
    pub(crate) settings: ReviewSettings,
}

/// A case as stored, with its payments.
#[derive(Debug, Clone)]
pub struct CaseView {
    pub id: i64,
    pub entity_kind: String,
    pub entity_id: String,
    pub status: String,
    pub queue: String,
    pub top_score: f64,
    pub lease_holder: Option<String>,
    pub lease_until: Option<DateTime<Utc>>,
    pub snoozed_until: Option<DateTime<Utc>>,
    pub escalated: bool,
    pub opened_at: DateTime<Utc>,
    pub closed_at: Option<DateTime<Utc>>,
    /// Oldest first.
    pub payments: Vec<PaymentView>,
}

/// One payment of a case: its frozen decision and its hold.
#[derive(Debug, Clone)]
pub struct PaymentView {
    pub transaction_id: String,
    pub amount: Decimal,
    pub currency: String,
    pub hold_until: DateTime<Utc>,
    /// `fraud` or `genuine`, once an analyst gave it.
    pub verdict: Option<String>,
    /// What happened to the money, once resolved.
    pub resolution: Option<HoldAction>,
    /// A verdict waiting for a second analyst (four-eyes), and who gave it.
    pub proposed: Option<(String, String)>,
    /// The analyst who gave the verdict, and the second one under four-eyes.
    pub verdict_by: Option<String>,
    pub confirmed_by: Option<String>,
    /// The decision record as it was published, event included.
    pub decision: Decision,
}

impl ReviewStore {
    /// Connects to the database named by `settings` (a `postgresql://` URL
    /// or `key=value` pairs), with at most `pool_size` connections. Nothing is
    /// sent until first use; [`ReviewStore::migrate`] is the usual first call.
    pub fn connect(database: &str, pool_size: usize, settings: ReviewSettings) -> Result<ReviewStore, ReviewError> {
        let config: tokio_postgres::Config = database.parse().map_err(|e: tokio_postgres::Error| {
            ReviewError::Settings { settings: database.into(), message: e.to_string() }
        })?;
        Self::with_config(config, pool_size, settings)
    }

    /// As [`ReviewStore::connect`], from parsed connection settings.
    pub fn with_config(
        config: tokio_postgres::Config,
        pool_size: usize,
        settings: ReviewSettings,
    ) -> Result<ReviewStore, ReviewError> {
        let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool =
            Pool::builder(manager).max_size(pool_size.max(1)).build().map_err(|e| ReviewError::Pool(e.to_string()))?;
        Ok(ReviewStore { pool, settings })
    }

    /// Brings the schema to this build's version. Concurrent starts take
    /// turns (an advisory lock); an applied migration is never run again.
    pub async fn migrate(&self) -> Result<(), ReviewError> {
        // Off the pool, so that the lock goes with the connection whatever
        // ends this call.
        let mut client = deadpool_postgres::Object::take(self.pool.get().await?);
        let client: &mut tokio_postgres::Client = &mut client;
        SchemaLock::MIGRATION.take(client).await?;
        let report = embedded::migrations::runner().run_async(client).await;
        SchemaLock::MIGRATION.release(client).await?;
        let report = report.map_err(|e| {
            // refinery says which migration; PostgreSQL's own words are in the sources.
            let mut message = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                message.push_str(&format!(": {s}"));
                source = s.source();
            }
            ReviewError::Migrate(message)
        })?;
        for m in report.applied_migrations() {
            tracing::info!(migration = %m, "review database migrated");
        }
        Ok(())
    }

    /// Whether the database answers: a readiness check.
    pub async fn ping(&self) -> Result<(), ReviewError> {
        self.pool.get().await?.execute("SELECT 1", &[]).await?;
        Ok(())
    }

    /// The settings this store ingests with.
    pub fn settings(&self) -> &ReviewSettings {
        &self.settings
    }

    /// One case with its payments.
    pub async fn case(&self, id: i64) -> Result<CaseView, ReviewError> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT id, entity_kind, entity_id, status, queue, top_score, lease_holder, lease_until, opened_at,
                        snoozed_until, escalated, closed_at
                 FROM cases WHERE id = $1",
                &[&id],
            )
            .await?
            .ok_or(ReviewError::NoSuchCase(id))?;
        let payments = client
            .query(
                "SELECT transaction_id, amount, currency, hold_until, decision::text, verdict, resolution,
                        proposed, proposed_by, verdict_by, confirmed_by FROM payments
                 WHERE case_id = $1 ORDER BY received_at, transaction_id",
                &[&id],
            )
            .await?
            .into_iter()
            .map(|p| {
                let transaction_id: String = p.get(0);
                let text: String = p.get(4);
                let decision = serde_json::from_str(&text).map_err(|e| ReviewError::Snapshot {
                    transaction_id: transaction_id.clone(),
                    message: e.to_string(),
                })?;
                let resolution: Option<String> = p.get(6);
                let proposed: Option<String> = p.get(7);
                let proposed_by: Option<String> = p.get(8);
                Ok(PaymentView {
                    transaction_id,
                    amount: p.get(1),
                    currency: p.get(2),
                    hold_until: p.get(3),
                    verdict: p.get(5),
                    resolution: resolution.as_deref().and_then(HoldAction::parse),
                    proposed: proposed.zip(proposed_by),
                    verdict_by: p.get(9),
                    confirmed_by: p.get(10),
                    decision,
                })
            })
            .collect::<Result<Vec<_>, ReviewError>>()?;
        Ok(CaseView {
            id: row.get(0),
            entity_kind: row.get(1),
            entity_id: row.get(2),
            status: row.get(3),
            queue: row.get(4),
            top_score: row.get(5),
            lease_holder: row.get(6),
            lease_until: row.get(7),
            opened_at: row.get(8),
            snoozed_until: row.get(9),
            escalated: row.get(10),
            closed_at: row.get(11),
            payments,
        })
    }

    /// The id of the entity's open case, if it has one.
    pub async fn open_case_of(&self, entity_kind: &str, entity_id: &str) -> Result<Option<i64>, ReviewError> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT id FROM cases WHERE entity_kind = $1 AND entity_id = $2 AND status = 'open'",
                &[&entity_kind, &entity_id],
            )
            .await?;
        Ok(row.map(|r| r.get(0)))
    }
}
