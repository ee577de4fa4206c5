//! W3C Trace Context: the `traceparent` a caller sends with an event (as a
//! Kafka record header or an HTTP header) is carried onto its decision, so
//! that a decision can be found from the caller's trace.

/// The header's name, in Kafka and HTTP alike.
pub const TRACEPARENT: &str = "traceparent";

/// `value` when it is a valid `traceparent` (`version-trace_id-parent_id-flags`
/// in lowercase hex, neither id all zeros, version `ff` refused, a version-00
/// header exactly 55 characters), else `None`: a malformed header is ignored,
/// as the specification asks, and never refuses the event.
pub fn traceparent(value: &str) -> Option<&str> {
    let value = value.trim_matches([' ', '\t']);
    let mut parts = value.splitn(5, '-');
    let (version, trace_id, parent_id, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let zero = |s: &str| s.bytes().all(|b| b == b'0');
    let well_formed = hex(version, 2)
        && version != "ff"
        && hex(trace_id, 32)
        && !zero(trace_id)
        && hex(parent_id, 16)
        && !zero(parent_id)
        && hex(flags, 2);
    // A later version may append fields after another dash; version 00 may not.
    let rest_ok = match parts.next() {
        None => true,
        Some(_) => version != "00",
    };
    (well_formed && rest_ok).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::traceparent;

    #[test]
    fn a_valid_traceparent_is_kept_and_a_malformed_one_ignored() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(traceparent(good), Some(good));
        assert_eq!(traceparent(&format!(" {good}\t")), Some(good));
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-next";
        assert_eq!(traceparent(later), Some(later));
        for bad in [
            "",
            "00",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
        ] {
            assert_eq!(traceparent(bad), None, "{bad:?}");
        }
    }
}
