//! The de-duplication marker codec: the first features of a transaction and
//! the fingerprint of its event, as JSON, so that a redelivery gets them back.
//! The one-letter names are the stored format (markers live for the
//! de-duplication TTL, across upgrades), so they stay as they are.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use vigil_core::{FeatureValue, FeatureVector};

use crate::FeatureError;

/// How a feature value is stored in a marker: tagged, so that a count, a
/// number of seconds and an amount read back as what they were.
#[derive(Serialize, Deserialize)]
enum StoredValue {
    #[serde(rename = "C")]
    Count(i64),
    #[serde(rename = "M")]
    Money(Decimal),
    #[serde(rename = "N")]
    Number(Decimal),
    #[serde(rename = "S")]
    Seconds(i64),
    #[serde(rename = "X")]
    Missing,
    #[serde(rename = "T")]
    Text(String),
}

/// A marker: the first features of a transaction and the fingerprint of its
/// event. Markers written before fingerprints were kept are bare lists of
/// values, read back with fingerprint 0 (unknown).
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Marker {
    WithFingerprint {
        #[serde(rename = "v")]
        values: Vec<StoredValue>,
        #[serde(rename = "h")]
        fingerprint: u64,
    },
    ValuesOnly(Vec<StoredValue>),
}

/// Encodes a transaction's first features for its marker.
pub(crate) fn encode(fv: &FeatureVector) -> Vec<u8> {
    let values: Vec<StoredValue> = fv
        .values
        .iter()
        .map(|v| match v {
            FeatureValue::Count(c) => StoredValue::Count(*c),
            FeatureValue::Money(m) => StoredValue::Money(*m),
            FeatureValue::Number(n) => StoredValue::Number(*n),
            FeatureValue::Seconds(s) => StoredValue::Seconds(*s),
            FeatureValue::Text(t) => StoredValue::Text(t.clone()),
            FeatureValue::Missing => StoredValue::Missing,
        })
        .collect();
    serde_json::to_vec(&Marker::WithFingerprint { values, fingerprint: fv.fingerprint }).unwrap_or_default()
}

/// The features a marker stores, as a replay: `replayed` is set.
pub(crate) fn decode(bytes: &[u8]) -> Result<FeatureVector, FeatureError> {
    let marker: Marker = serde_json::from_slice(bytes).map_err(|e| FeatureError::Corrupt(format!("marker: {e}")))?;
    let (stored, fingerprint) = match marker {
        Marker::WithFingerprint { values, fingerprint } => (values, fingerprint),
        Marker::ValuesOnly(values) => (values, 0),
    };
    let values = stored
        .into_iter()
        .map(|v| match v {
            StoredValue::Count(c) => FeatureValue::Count(c),
            StoredValue::Money(m) => FeatureValue::Money(m),
            StoredValue::Number(n) => FeatureValue::Number(n),
            StoredValue::Seconds(s) => FeatureValue::Seconds(s),
            StoredValue::Text(t) => FeatureValue::Text(t),
            StoredValue::Missing => FeatureValue::Missing,
        })
        .collect();
    Ok(FeatureVector { values, replayed: true, fingerprint })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stored bytes are the format markers already in Redis have.
    #[test]
    fn markers_keep_their_stored_format() {
        let fv = FeatureVector {
            values: vec![
                FeatureValue::Count(2),
                FeatureValue::Money(Decimal::new(1050, 2)),
                FeatureValue::Missing,
                FeatureValue::Text("FR".into()),
            ],
            replayed: false,
            fingerprint: 7,
        };
        let bytes = encode(&fv);
        assert_eq!(String::from_utf8_lossy(&bytes), r#"{"v":[{"C":2},{"M":"10.50"},"X",{"T":"FR"}],"h":7}"#);
        let back = decode(&bytes).unwrap();
        assert_eq!((back.values, back.fingerprint, back.replayed), (fv.values, 7, true));
        let bare = decode(br#"[{"S":30},{"N":"0.5"}]"#).unwrap();
        assert_eq!(bare.values, [FeatureValue::Seconds(30), FeatureValue::Number(Decimal::new(5, 1))]);
        assert_eq!(bare.fingerprint, 0);
    }
}
