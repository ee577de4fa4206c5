//! The review loop's store: every `review` decision opens a case or joins its
//! entity's open case, in PostgreSQL, exactly once under redelivery; analysts
//! take cases with claim-next and hold them with a lease; each payment ends in
//! one resolution (`release` or `stop`), by a verdict or by its hold deadline
//! (`docs/design/review.md`).
//!
//! ```text
//! decisions topic ──> ReviewStore::follow / ingest ──> cases, payments (PostgreSQL)
//!                                                            │
//!            ReviewStore::claim_next, renew, release <───────┤  (a lease per case)
//!            ReviewStore::verdict, resolve_due ──────────────┴─> resolutions (the outbox)
//!                                                                 │
//!            ReviewStore::publish: the resolutions topic <────────┤
//!            ReviewStore::send_labels: verdicts as labels <───────┘  (labels topic or feature store)
//! ```

mod accounts;
mod audit;
mod claim;
mod error;
mod follow;
mod ingest;
mod labels;
mod list;
mod publish;
mod settings;
mod store;
mod verdict;
mod webhook;
mod work;

pub use accounts::{Role, Session, SessionUser, MIN_PASSWORD_CHARS};
pub use audit::{AuditCheck, AuditEntry, GENESIS};
pub use claim::Claim;
pub use error::ReviewError;
pub use follow::{Follow, Followed};
pub use ingest::Ingested;
pub use labels::{LabelSink, StoreLabels, TopicLabels};
pub use list::{CaseFilter, CasePage, CaseRow, Cursor, QueueCount, Search, COUNT_LIMIT, MAX_PAGE};
pub use publish::{check_resolutions_topic, Published, SEQ_HEADER};
pub use settings::{FourEyes, Queue, ReviewSettings};
pub use store::{CaseView, PaymentView, ReviewStore};
pub use verdict::{Proposal, Resolution, Verdicted, DEADLINE};
pub use vigil_core::pipeline::{CaseEntity, HoldAction, WebhookDef, WebhookEvent};
pub use webhook::{WebhookSender, WEBHOOK_EVENT_HEADER, WEBHOOK_ID_HEADER};
pub use work::{Bulk, BulkOutcome, CaseSummary, Note, MAX_NOTE_CHARS, MAX_TAG_CHARS};
