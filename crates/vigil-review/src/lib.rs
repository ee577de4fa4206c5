//! The review loop's store: every `review` decision opens a case or joins its
//! entity's open case, in PostgreSQL, exactly once under redelivery; analysts
//! take cases with claim-next and hold them with a lease
//! (`docs/design/review.md`).
//!
//! ```text
//! decisions topic ──> ReviewStore::ingest ──> cases, payments (PostgreSQL)
//!                                                   │
//!                     ReviewStore::claim_next <─────┘  (a lease per case)
//! ```

mod claim;
mod error;
mod ingest;
mod store;

pub use claim::Claim;
pub use error::ReviewError;
pub use ingest::{Entity, Ingested, ReviewSettings};
pub use store::{CaseView, PaymentView, ReviewStore};
