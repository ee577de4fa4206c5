//! The Redis key layout, in one place: what each key holds and the tag that
//! names its layout's version. A tag changes when what a key stores changes,
//! so that keys of an older layout are left to expire rather than misread.
//!
//! Every key carries a Redis Cluster hash tag (`{...}`): a record's state and
//! the markers that go with it share one slot.

/// Tag of record states: `PREFIX:s6:{RECORD}`, a version counter then the
/// postcard-encoded [`crate::state::EntityState`].
pub const STATE_TAG: &str = "s6";
/// Tag of transaction markers: `PREFIX:tx2:{ID}`, a transaction's first
/// features and its event's fingerprint (JSON).
pub const MARKER_TAG: &str = "tx2";
/// Tag of a record's own marker of a transaction, in a cluster:
/// `PREFIX:tx3:{RECORD}:ID`, the features that record gave.
pub const RECORD_MARKER_TAG: &str = "tx3";
/// Tag of counted fraud labels: `PREFIX:lb3:{ID}`.
pub const LABEL_MARKER_TAG: &str = "lb3";
/// Tag of a record's own marker of a counted fraud label, in a cluster:
/// `PREFIX:lb4:{RECORD}:ID`.
pub const RECORD_LABEL_MARKER_TAG: &str = "lb4";

/// Tag of the owned store's journal (`mode = "owned"`):
/// `PREFIX:o1:{PREFIX}:meta` (a hash: the owner's `epoch`),
/// `PREFIX:o1:{PREFIX}:log` (a list of postcard-encoded batches since the
/// last snapshot), `PREFIX:o1:{PREFIX}:state` (a hash of record id to its
/// expiry and postcard-encoded state), `PREFIX:o1:{PREFIX}:marks` (the
/// counted labels; older snapshots also hold the newest transactions' first
/// features there) and `PREFIX:o1:{PREFIX}:tx:ID` (a transaction's first
/// features and its event's fingerprint, postcard-encoded, for the
/// de-duplication TTL). One hash tag for all: every script of the owner runs
/// on one node.
pub const OWNED_TAG: &str = "o1";

/// The keys of one store's prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyLayout {
    prefix: String,
}

impl KeyLayout {
    pub fn new(prefix: &str) -> KeyLayout {
        KeyLayout { prefix: prefix.to_owned() }
    }

    /// A record's state (`record`: `card_id=c1`).
    pub fn state(&self, record: &str) -> String {
        format!("{}:{STATE_TAG}:{{{record}}}", self.prefix)
    }

    /// One of the owned store's journal keys (`part`: `meta`, `log`, `state`, `marks`).
    pub fn owned(&self, part: &str) -> String {
        format!("{}:{OWNED_TAG}:{{{}}}:{part}", self.prefix, self.prefix)
    }

    /// The owned store's marker of a transaction: in the journal's slot, so
    /// that an entry and its markers are set by one script.
    pub fn owned_marker(&self, transaction_id: &str) -> String {
        format!("{}:{OWNED_TAG}:{{{}}}:tx:{transaction_id}", self.prefix, self.prefix)
    }

    /// A transaction's marker.
    pub fn marker(&self, transaction_id: &str) -> String {
        format!("{}:{MARKER_TAG}:{{{transaction_id}}}", self.prefix)
    }

    /// In a cluster: a record's own marker of a transaction, in the record's slot.
    pub fn record_marker(&self, record: &str, transaction_id: &str) -> String {
        format!("{}:{RECORD_MARKER_TAG}:{{{record}}}:{transaction_id}", self.prefix)
    }

    /// The marker of a counted fraud label.
    pub fn label_marker(&self, transaction_id: &str) -> String {
        format!("{}:{LABEL_MARKER_TAG}:{{{transaction_id}}}", self.prefix)
    }

    /// In a cluster: a record's own marker of a counted fraud label.
    pub fn record_label_marker(&self, record: &str, transaction_id: &str) -> String {
        format!("{}:{RECORD_LABEL_MARKER_TAG}:{{{record}}}:{transaction_id}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_laid_out_as_stored() {
        let k = KeyLayout::new("vigil");
        assert_eq!(k.state("card_id=c1"), "vigil:s6:{card_id=c1}");
        assert_eq!(k.marker("t1"), "vigil:tx2:{t1}");
        assert_eq!(k.owned("log"), "vigil:o1:{vigil}:log");
        assert_eq!(k.owned_marker("t1"), "vigil:o1:{vigil}:tx:t1");
        assert_eq!(k.record_marker("card_id=c1", "t1"), "vigil:tx3:{card_id=c1}:t1");
        assert_eq!(k.label_marker("t1"), "vigil:lb3:{t1}");
        assert_eq!(k.record_label_marker("terminal_id=x", "t1"), "vigil:lb4:{terminal_id=x}:t1");
    }
}
