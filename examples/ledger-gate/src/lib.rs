//! A reference ledger gate: what a payment service's ledger does with Vigil's
//! answers, so that no money moves before Vigil has decided.
//!
//! ```text
//! transactions topic (authorisations) ──┐
//! decisions topic (approve/review/decline) ──> Gate::apply ──> gate_holds, gate_accounts (PostgreSQL)
//! resolutions topic (release/stop) ─────┘            Gate::expire_due ──┘ (holds past the window)
//! ```
//!
//! Each authorisation places a **pending hold** on its account. The hold is
//! **posted** (captured) after an `approve` decision or a `release`
//! resolution of a review, **voided** after a `decline` or a `stop`, and
//! **expires** when neither came within the authorisation window. A hold ends
//! exactly once: its row is locked while a message is applied, and only a
//! `pending` hold moves. The three topics are not ordered against each other,
//! so a decision may arrive before its authorisation: the row is made by
//! whichever comes first (`awaiting`), and the hold ends as soon as it has
//! both. Accounts are updated by compare-and-set on a version column
//! (optimistic concurrency), so two gates never lose each other's money.
//! Messages are applied at least once (offsets stored after the database
//! commits) and applying one twice changes nothing.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Transaction};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::Message;
use rust_decimal::Decimal;
use tokio_postgres::NoTls;
use vigil_core::pipeline::{HoldAction, KafkaConfig};
use vigil_core::{Action, Decision, Event};
use vigil_kafka::SetIfAbsent as _;

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// Tries of one account's compare-and-set before the message is given up
/// for now (and applied again from the start).
const CAS_TRIES: usize = 64;

/// A gate failure.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error("ledger database: {0}")]
    Database(#[from] tokio_postgres::Error),
    #[error("ledger database: no connection: {0}")]
    Pool(String),
    #[error("ledger database settings `{settings}`: {message}")]
    Settings { settings: String, message: String },
    #[error("ledger database migration: {0}")]
    Migrate(String),
    #[error("account {0}: changed by others {CAS_TRIES} times in a row")]
    Contended(String),
    #[error("{0}")]
    Kafka(String),
}

impl From<deadpool_postgres::PoolError> for GateError {
    fn from(e: deadpool_postgres::PoolError) -> GateError {
        match e {
            deadpool_postgres::PoolError::Backend(e) => GateError::Database(e),
            other => GateError::Pool(other.to_string()),
        }
    }
}

/// One message for the ledger.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// A payment asks for its money: hold it.
    Authorisation(Box<Event>),
    /// Vigil's decision on it.
    Decision { transaction_id: String, action: Action },
    /// A review's resolution of it.
    Resolution { transaction_id: String, action: HoldAction },
}

/// Which topic a message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Authorisations,
    Decisions,
    Resolutions,
}

impl Input {
    /// Reads a message of `source`, or says why it is not one.
    pub fn read(source: Source, bytes: &[u8]) -> Result<Input, String> {
        match source {
            Source::Authorisations => {
                Event::from_json(bytes).map(|e| Input::Authorisation(Box::new(e))).map_err(|e| e.to_string())
            }
            Source::Decisions => {
                let d: Decision = serde_json::from_slice(bytes).map_err(|e| format!("not a decision: {e}"))?;
                Ok(Input::Decision { transaction_id: d.transaction_id, action: d.decision })
            }
            Source::Resolutions => {
                let v: serde_json::Value =
                    serde_json::from_slice(bytes).map_err(|e| format!("not a resolution: {e}"))?;
                let transaction_id = v["transaction_id"].as_str().ok_or("a resolution without transaction_id")?;
                let action = v["action"]
                    .as_str()
                    .and_then(HoldAction::parse)
                    .ok_or("a resolution whose action is not release or stop")?;
                Ok(Input::Resolution { transaction_id: transaction_id.to_owned(), action })
            }
        }
    }

    fn transaction_id(&self) -> &str {
        match self {
            Input::Authorisation(e) => &e.transaction_id,
            Input::Decision { transaction_id, .. } | Input::Resolution { transaction_id, .. } => transaction_id,
        }
    }
}

/// How a hold ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Captured, after `approve` or `release`.
    Posted,
    /// Released to the payer, after `decline` or `stop`.
    Voided,
    /// Nothing decided within the authorisation window.
    Expired,
}

/// What the gate has done since it started.
#[derive(Debug, Default)]
pub struct Stats {
    pub applied: AtomicU64,
    pub posted: AtomicU64,
    pub voided: AtomicU64,
    pub expired: AtomicU64,
    /// Account writes refused because another writer changed the account
    /// first, and done again.
    pub conflicts: AtomicU64,
    /// Messages that are not what their topic should hold: logged, skipped.
    pub unreadable: AtomicU64,
}

/// The gate: the ledger's database and its authorisation window.
#[derive(Clone)]
pub struct Gate {
    pool: Pool,
    window: Duration,
    pub stats: Arc<Stats>,
}

/// The row of a payment, locked.
struct Hold {
    state: String,
    account_id: Option<String>,
    amount: Option<Decimal>,
    decision: Option<String>,
    resolution: Option<String>,
}

impl Gate {
    /// A gate on `database` (a `postgresql://` URL or `key=value` settings);
    /// holds expire `window` after they are placed.
    pub fn connect(database: &str, pool_size: usize, window: Duration) -> Result<Gate, GateError> {
        let config: tokio_postgres::Config = database.parse().map_err(|e: tokio_postgres::Error| {
            GateError::Settings { settings: database.into(), message: e.to_string() }
        })?;
        let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool =
            Pool::builder(manager).max_size(pool_size.max(1)).build().map_err(|e| GateError::Pool(e.to_string()))?;
        Ok(Gate { pool, window, stats: Arc::default() })
    }

    /// Brings the ledger's schema up to date.
    pub async fn migrate(&self) -> Result<(), GateError> {
        let mut client = self.pool.get().await?;
        let client: &mut tokio_postgres::Client = &mut client;
        embedded::migrations::runner()
            .set_migration_table_name("gate_schema_history")
            .run_async(client)
            .await
            .map(|_| ())
            .map_err(|e| GateError::Migrate(e.to_string()))
    }

    /// Applies one message in one transaction; how the hold ended, when this
    /// message ended it. Applying a message again changes nothing.
    pub async fn apply(&self, input: &Input) -> Result<Option<End>, GateError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let id = input.transaction_id();
        tx.execute(
            "INSERT INTO gate_holds (transaction_id, state) VALUES ($1, 'awaiting') ON CONFLICT DO NOTHING",
            &[&id],
        )
        .await?;
        let row = tx
            .query_one(
                "SELECT state, account_id, amount, decision, resolution FROM gate_holds
                 WHERE transaction_id = $1 FOR UPDATE",
                &[&id],
            )
            .await?;
        let mut hold = Hold {
            state: row.get(0),
            account_id: row.get(1),
            amount: row.get(2),
            decision: row.get(3),
            resolution: row.get(4),
        };
        match input {
            Input::Authorisation(event) if hold.account_id.is_none() => {
                let account = account_of(event);
                tx.execute(
                    "INSERT INTO gate_accounts (id, currency) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    &[&account, &event.currency],
                )
                .await?;
                let window_s = self.window.as_secs_f64();
                tx.execute(
                    "UPDATE gate_holds SET state = CASE WHEN state = 'awaiting' THEN 'pending' ELSE state END,
                         account_id = $2, amount = $3, currency = $4, placed_at = now(),
                         expires_at = now() + make_interval(secs => $5)
                     WHERE transaction_id = $1",
                    &[&id, &account, &event.amount, &event.currency, &window_s],
                )
                .await?;
                self.move_money(&tx, &account, event.amount, Decimal::ZERO).await?;
                hold.state = "pending".into();
                hold.account_id = Some(account);
                hold.amount = Some(event.amount);
            }
            Input::Decision { action, .. } if hold.decision.is_none() => {
                tx.execute(
                    "UPDATE gate_holds SET decision = $2, decision_at = now() WHERE transaction_id = $1",
                    &[&id, &action.as_str()],
                )
                .await?;
                hold.decision = Some(action.as_str().to_owned());
            }
            Input::Resolution { action, .. } if hold.resolution.is_none() => {
                tx.execute(
                    "UPDATE gate_holds SET resolution = $2, resolution_at = now() WHERE transaction_id = $1",
                    &[&id, &action.as_str()],
                )
                .await?;
                hold.resolution = Some(action.as_str().to_owned());
            }
            // Delivered again: its fact is recorded already.
            _ => {}
        }
        let end = match (hold.state.as_str(), hold.account_id.as_deref(), hold.amount) {
            ("pending", Some(account), Some(amount)) => {
                let by = match (hold.decision.as_deref(), hold.resolution.as_deref()) {
                    (Some("approve"), _) => Some(("approve", End::Posted)),
                    (Some("decline"), _) => Some(("decline", End::Voided)),
                    (_, Some("release")) => Some(("release", End::Posted)),
                    (_, Some("stop")) => Some(("stop", End::Voided)),
                    // Under review, or not decided yet: the money stays held.
                    _ => None,
                };
                match by {
                    Some((by, end)) => {
                        self.end(&tx, id, account, amount, by, end).await?;
                        Some(end)
                    }
                    None => None,
                }
            }
            _ => None,
        };
        tx.commit().await?;
        self.stats.applied.fetch_add(1, Ordering::Relaxed);
        self.count(end, 1);
        Ok(end)
    }

    /// Expires up to `most` holds whose window has passed without an
    /// answer, oldest first; how many. Holds another gate is working on
    /// are left to the next call.
    pub async fn expire_due(&self, most: i64) -> Result<u64, GateError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let due = tx
            .query(
                "SELECT transaction_id, account_id, amount FROM gate_holds
                 WHERE state = 'pending' AND expires_at <= now()
                 ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED",
                &[&most],
            )
            .await?;
        for row in &due {
            let (id, account, amount): (String, String, Decimal) = (row.get(0), row.get(1), row.get(2));
            self.end(&tx, &id, &account, amount, "expiry", End::Expired).await?;
        }
        tx.commit().await?;
        self.count(Some(End::Expired), due.len() as u64);
        Ok(due.len() as u64)
    }

    fn count(&self, end: Option<End>, n: u64) {
        match end {
            Some(End::Posted) => self.stats.posted.fetch_add(n, Ordering::Relaxed),
            Some(End::Voided) => self.stats.voided.fetch_add(n, Ordering::Relaxed),
            Some(End::Expired) => self.stats.expired.fetch_add(n, Ordering::Relaxed),
            None => 0,
        };
    }

    /// Ends a pending hold (whose row lock the caller holds) and moves its money.
    async fn end(
        &self,
        tx: &Transaction<'_>,
        id: &str,
        account: &str,
        amount: Decimal,
        by: &str,
        end: End,
    ) -> Result<(), GateError> {
        let (state, posted) = match end {
            End::Posted => ("posted", amount),
            End::Voided => ("voided", Decimal::ZERO),
            End::Expired => ("expired", Decimal::ZERO),
        };
        tx.execute(
            "UPDATE gate_holds SET state = $2, ended_by = $3, ended_at = now() WHERE transaction_id = $1 AND state = 'pending'",
            &[&id, &state, &by],
        )
        .await?;
        self.move_money(tx, account, -amount, posted).await
    }

    /// Adds to an account's held and posted money by compare-and-set on its
    /// version: read, then write only if no one wrote in between; else again.
    async fn move_money(
        &self,
        tx: &Transaction<'_>,
        account: &str,
        held: Decimal,
        posted: Decimal,
    ) -> Result<(), GateError> {
        for _ in 0..CAS_TRIES {
            let row =
                tx.query_one("SELECT held, posted, version FROM gate_accounts WHERE id = $1", &[&account]).await?;
            let (was_held, was_posted, version): (Decimal, Decimal, i64) = (row.get(0), row.get(1), row.get(2));
            let written = tx
                .execute(
                    "UPDATE gate_accounts SET held = $2, posted = $3, version = version + 1
                     WHERE id = $1 AND version = $4",
                    &[&account, &(was_held + held), &(was_posted + posted), &version],
                )
                .await?;
            if written == 1 {
                return Ok(());
            }
            self.stats.conflicts.fetch_add(1, Ordering::Relaxed);
        }
        Err(GateError::Contended(account.to_owned()))
    }

    /// Follows the authorisations (the pipeline's input topic), decisions and
    /// resolutions topics in consumer group `group` until `shutdown`,
    /// expiring holds every second. A message whose database write fails is
    /// applied again until it succeeds: nothing is skipped but what cannot be
    /// read.
    pub async fn run(
        &self,
        kafka: &KafkaConfig,
        resolutions_topic: &str,
        group: &str,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), GateError> {
        let kafka_err = |e: rdkafka::error::KafkaError| GateError::Kafka(e.to_string());
        let consumer: StreamConsumer = vigil_kafka::client_config(kafka)
            .set("group.id", group)
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set_if_absent("fetch.wait.max.ms", "10")
            .set_if_absent("partition.assignment.strategy", "cooperative-sticky")
            .create()
            .map_err(kafka_err)?;
        let topics = [kafka.input_topic.as_str(), kafka.decisions_topic.as_str(), resolutions_topic];
        consumer.subscribe(&topics).map_err(kafka_err)?;
        let source = |topic: &str| match topic {
            t if t == kafka.input_topic => Source::Authorisations,
            t if t == kafka.decisions_topic => Source::Decisions,
            _ => Source::Resolutions,
        };
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tick.tick() => {
                    if let Err(e) = self.expire_due(500).await {
                        tracing::warn!(error = %e, "expiring holds failed; trying again");
                    }
                }
                m = consumer.recv() => {
                    let m = match m {
                        Ok(m) => m,
                        Err(e) => {
                            tracing::warn!(error = %e, "reading the topics");
                            continue;
                        }
                    };
                    match Input::read(source(m.topic()), m.payload().unwrap_or_default()) {
                        Ok(input) => self.apply_until_done(&input).await,
                        Err(why) => {
                            self.stats.unreadable.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(topic = m.topic(), partition = m.partition(), offset = m.offset(), %why, "skipped");
                        }
                    }
                    consumer.store_offset_from_message(&m).map_err(kafka_err)?;
                }
            }
        }
        consumer.commit_consumer_state(CommitMode::Sync).or_else(|e| match e {
            // Nothing was read, so there is nothing to commit.
            rdkafka::error::KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset) => Ok(()),
            e => Err(kafka_err(e)),
        })
    }

    async fn apply_until_done(&self, input: &Input) {
        let mut wait = Duration::from_millis(50);
        loop {
            match self.apply(input).await {
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!(transaction_id = input.transaction_id(), error = %e, "not applied yet; trying again");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

/// The account a payment draws on: its card, else its account, else its
/// customer (else the payment alone), in its currency.
pub fn account_of(event: &Event) -> String {
    let owner = event
        .card_id
        .as_deref()
        .or(event.account_id.as_deref())
        .or(event.customer_id.as_deref())
        .unwrap_or(&event.transaction_id);
    format!("{owner}:{}", event.currency)
}
