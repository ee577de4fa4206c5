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

fn stored(fv: &FeatureVector) -> Vec<StoredValue> {
    fv.values
        .iter()
        .map(|v| match v {
            FeatureValue::Count(c) => StoredValue::Count(*c),
            FeatureValue::Money(m) => StoredValue::Money(*m),
            FeatureValue::Number(n) => StoredValue::Number(*n),
            FeatureValue::Seconds(s) => StoredValue::Seconds(*s),
            FeatureValue::Text(t) => StoredValue::Text(t.clone()),
            FeatureValue::Missing => StoredValue::Missing,
        })
        .collect()
}

fn replayed(stored: Vec<StoredValue>, fingerprint: u64) -> FeatureVector {
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
    FeatureVector { values, replayed: true, fingerprint }
}

/// Encodes a transaction's first features for its marker.
pub(crate) fn encode(fv: &FeatureVector) -> Vec<u8> {
    serde_json::to_vec(&Marker::WithFingerprint { values: stored(fv), fingerprint: fv.fingerprint }).unwrap_or_default()
}

/// A feature value in the owned store's markers: postcard, with decimals
/// in their 16-byte form. Written with borrowed text (`&str`), read back
/// with owned (`String`): the same bytes.
#[derive(Serialize, Deserialize)]
enum CompactValue<T> {
    Count(i64),
    Money([u8; 16]),
    Number([u8; 16]),
    Seconds(i64),
    Missing,
    Text(T),
}

/// A feature vector's values as [`CompactValue`]s, serialised as a sequence
/// without collecting them first.
struct CompactValues<'a>(&'a [FeatureValue]);

impl Serialize for CompactValues<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(|v| match v {
            FeatureValue::Count(c) => CompactValue::Count(*c),
            FeatureValue::Money(m) => CompactValue::Money(m.serialize()),
            FeatureValue::Number(n) => CompactValue::Number(n.serialize()),
            FeatureValue::Seconds(s) => CompactValue::Seconds(*s),
            FeatureValue::Text(t) => CompactValue::Text(t.as_str()),
            FeatureValue::Missing => CompactValue::Missing,
        }))
    }
}

/// The owned store's markers (keys of their own, `o1:...:tx:ID`): the same
/// values and fingerprint, postcard-encoded (fewer bytes than the JSON, and
/// cheaper to write and read).
pub(crate) fn encode_compact(fv: &FeatureVector) -> Vec<u8> {
    // At most 17 bytes a value (a decimal and its tag), and a fingerprint.
    let room = Vec::with_capacity(fv.values.len() * 17 + 16);
    postcard::to_extend(&(CompactValues(&fv.values), fv.fingerprint), room).unwrap_or_default()
}

pub(crate) fn decode_compact(bytes: &[u8]) -> Result<FeatureVector, FeatureError> {
    let (stored, fingerprint): (Vec<CompactValue<String>>, u64) =
        postcard::from_bytes(bytes).map_err(|e| FeatureError::Corrupt(format!("marker: {e}")))?;
    let values = stored
        .into_iter()
        .map(|v| match v {
            CompactValue::Count(c) => FeatureValue::Count(c),
            CompactValue::Money(m) => FeatureValue::Money(Decimal::deserialize(m)),
            CompactValue::Number(n) => FeatureValue::Number(Decimal::deserialize(n)),
            CompactValue::Seconds(s) => FeatureValue::Seconds(s),
            CompactValue::Text(t) => FeatureValue::Text(t),
            CompactValue::Missing => FeatureValue::Missing,
        })
        .collect();
    Ok(FeatureVector { values, replayed: true, fingerprint })
}

/// The features a marker stores, as a replay: `replayed` is set.
pub(crate) fn decode(bytes: &[u8]) -> Result<FeatureVector, FeatureError> {
    let marker: Marker = serde_json::from_slice(bytes).map_err(|e| FeatureError::Corrupt(format!("marker: {e}")))?;
    let (stored, fingerprint) = match marker {
        Marker::WithFingerprint { values, fingerprint } => (values, fingerprint),
        Marker::ValuesOnly(values) => (values, 0),
    };
    Ok(replayed(stored, fingerprint))
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
        assert_eq!((back.values, back.fingerprint, back.replayed), (fv.values.clone(), 7, true));
        let compact = encode_compact(&fv);
        assert!(compact.len() < bytes.len(), "{} against {}", compact.len(), bytes.len());
        let back = decode_compact(&compact).unwrap();
        assert_eq!((back.values, back.fingerprint, back.replayed), (fv.values.clone(), 7, true));
        // The bytes markers written since the owned store began have: the
        // sequence's length, each value's variant and content, the fingerprint.
        let small = FeatureVector {
            values: vec![FeatureValue::Count(3), FeatureValue::Missing, FeatureValue::Text("FR".into())],
            replayed: false,
            fingerprint: 7,
        };
        assert_eq!(encode_compact(&small), [3, 0, 6, 4, 5, 2, b'F', b'R', 7]);
        let bare = decode(br#"[{"S":30},{"N":"0.5"}]"#).unwrap();
        assert_eq!(bare.values, [FeatureValue::Seconds(30), FeatureValue::Number(Decimal::new(5, 1))]);
        assert_eq!(bare.fingerprint, 0);
    }
}
