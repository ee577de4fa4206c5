//! What can go wrong in the review store, said so that an operator or an
//! analyst knows what to do.

/// A review store failure.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// The connection settings do not parse.
    #[error("review database settings `{settings}`: {message}")]
    Settings { settings: String, message: String },
    /// PostgreSQL refused or failed a statement, or the connection broke.
    #[error("review database: {0}")]
    Database(#[from] tokio_postgres::Error),
    /// No connection could be taken from the pool.
    #[error("review database: no connection: {0}")]
    Pool(String),
    /// A schema migration failed; the database is left at its last good version.
    #[error("review database migration: {0}")]
    Migrate(String),
    /// The analyst's lease on the case ran out or another analyst holds it:
    /// claim the case again (or the next one) before acting on it.
    #[error("case {case}: not held by {analyst} (the lease ran out, or another analyst holds it)")]
    LeaseLost { case: i64, analyst: String },
    /// A colleague holds the case now.
    #[error("case {case}: {holder} holds it now")]
    HeldByOther { case: i64, holder: String },
    /// A request the store refuses as it stands (an empty note, a snooze
    /// past the hold): the message says why.
    #[error("{0}")]
    Invalid(String),
    /// The decisions topic could not be read (brokers away, topic missing).
    #[error("{0}")]
    Kafka(String),
    /// Verdicts could not be recorded as labels in the feature store.
    #[error("verdict labels: {0}")]
    Labels(String),
    /// The payment is not in that case.
    #[error("case {case}: no payment {transaction_id}")]
    NoSuchPayment { case: i64, transaction_id: String },
    /// The payment has its resolution already; a payment is resolved once.
    #[error("payment {transaction_id}: already resolved ({action} by {by})")]
    AlreadyResolved { transaction_id: String, by: String, action: String },
    /// The case is closed: every payment in it is resolved.
    #[error("case {0}: closed (every payment in it is resolved)")]
    CaseClosed(i64),
    /// A colleague's verdict on the payment waits for a second analyst:
    /// confirm it or not, rather than giving another.
    #[error("payment {transaction_id}: {by}'s verdict `{verdict}` waits for a second analyst; confirm it or not")]
    AwaitingSecond { transaction_id: String, verdict: String, by: String },
    /// Four-eyes: the proposer cannot also confirm.
    #[error("payment {transaction_id}: {analyst} proposed this verdict, so another analyst must confirm it")]
    SameAnalyst { transaction_id: String, analyst: String },
    /// The payment has no verdict waiting for confirmation.
    #[error("payment {0}: no verdict waits for confirmation")]
    NothingToConfirm(String),
    /// No payment under review has this transaction id.
    #[error("payment {0}: not under review")]
    NoSuchTransaction(String),
    /// The name and password do not open a session (unknown name, wrong
    /// password or disabled account: which, is not said).
    #[error("login failed: unknown user, wrong password, or a disabled account")]
    LoginFailed,
    /// No case has this id.
    #[error("case {0}: no such case")]
    NoSuchCase(i64),
    /// A stored snapshot no longer reads as a decision (a row written by hand).
    #[error("payment {transaction_id}: stored decision does not read: {message}")]
    Snapshot { transaction_id: String, message: String },
}

impl From<deadpool_postgres::PoolError> for ReviewError {
    fn from(e: deadpool_postgres::PoolError) -> ReviewError {
        match e {
            deadpool_postgres::PoolError::Backend(e) => ReviewError::Database(e),
            other => ReviewError::Pool(other.to_string()),
        }
    }
}

impl ReviewError {
    /// PostgreSQL refused a value the request carried rather than failing:
    /// text with a NUL character (which no `text` column holds), or a value
    /// out of a column's range. The request is at fault, not the database.
    pub fn is_refused_input(&self) -> bool {
        use tokio_postgres::error::SqlState;
        match self {
            ReviewError::Database(e) => matches!(
                e.code(),
                Some(c) if *c == SqlState::CHARACTER_NOT_IN_REPERTOIRE
                    || *c == SqlState::UNTRANSLATABLE_CHARACTER
                    || *c == SqlState::DATETIME_FIELD_OVERFLOW
                    || *c == SqlState::NUMERIC_VALUE_OUT_OF_RANGE
                    || *c == SqlState::STRING_DATA_RIGHT_TRUNCATION
            ),
            _ => false,
        }
    }

    /// A deadlock or serialisation failure: the transaction may be run again.
    pub(crate) fn is_retryable(&self) -> bool {
        use tokio_postgres::error::SqlState;
        match self {
            ReviewError::Database(e) => {
                matches!(e.code(), Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE)
            }
            _ => false,
        }
    }
}
