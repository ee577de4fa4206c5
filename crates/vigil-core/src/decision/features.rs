//! A decision's feature values by name ([`Features`]): the names are the
//! pipeline's, sorted once and shared by every decision ([`FeatureNames`]),
//! so deciding does not copy each name into a map of its own. In JSON a
//! decision's features are an object of name to value, in name order.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::feature::FeatureValue;

/// A pipeline's feature names in name order, with where each one's value
/// sits in the pipeline's feature vectors (declaration order).
#[derive(Debug, Clone)]
pub struct FeatureNames {
    names: Arc<[String]>,
    /// `order[k]`: the position in a feature vector of the `k`-th name.
    order: Arc<[usize]>,
}

impl FeatureNames {
    /// The names of features declared in this order. A name declared twice
    /// names its last declaration, as in a map.
    pub fn new<'a>(declared: impl IntoIterator<Item = &'a str>) -> FeatureNames {
        let mut by_name: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, name) in declared.into_iter().enumerate() {
            by_name.insert(name, i);
        }
        FeatureNames {
            names: by_name.keys().map(|n| (*n).to_owned()).collect(),
            order: by_name.values().copied().collect(),
        }
    }

    /// A decision's features from one feature vector's values (declaration
    /// order; a value past the vector's end reads as missing).
    pub fn features(&self, values: &[FeatureValue]) -> Features {
        let values = self.order.iter().map(|&i| values.get(i).cloned().unwrap_or(FeatureValue::Missing)).collect();
        Features { names: self.names.clone(), values }
    }
}

/// Feature values by name, in name order. The default has none (a decision
/// that leaves them out, `[decision] features = "flagged"`).
#[derive(Clone, Default)]
pub struct Features {
    names: Arc<[String]>,
    /// By position in `names`.
    values: Vec<FeatureValue>,
}

impl Features {
    /// The value of the feature named `name`.
    pub fn get(&self, name: &str) -> Option<&FeatureValue> {
        let at = self.names.binary_search_by(|n| n.as_str().cmp(name)).ok()?;
        self.values.get(at)
    }

    /// (name, value) pairs in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &FeatureValue)> {
        self.into_iter()
    }

    /// The values, in name order.
    pub fn values(&self) -> impl Iterator<Item = &FeatureValue> {
        self.values.iter()
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

impl<'a> IntoIterator for &'a Features {
    type Item = (&'a String, &'a FeatureValue);
    type IntoIter = std::iter::Zip<std::slice::Iter<'a, String>, std::slice::Iter<'a, FeatureValue>>;

    fn into_iter(self) -> Self::IntoIter {
        self.names.iter().zip(&self.values)
    }
}

impl<Q: AsRef<str> + ?Sized> std::ops::Index<&Q> for Features {
    type Output = FeatureValue;

    /// The value of a feature, which must be there (as a map's index).
    fn index(&self, name: &Q) -> &FeatureValue {
        let name = name.as_ref();
        self.get(name).unwrap_or_else(|| panic!("no feature named `{name}`"))
    }
}

impl From<BTreeMap<String, FeatureValue>> for Features {
    fn from(map: BTreeMap<String, FeatureValue>) -> Features {
        let (names, values): (Vec<String>, Vec<FeatureValue>) = map.into_iter().unzip();
        Features { names: names.into(), values }
    }
}

impl PartialEq for Features {
    fn eq(&self, other: &Features) -> bool {
        self.values == other.values && (Arc::ptr_eq(&self.names, &other.names) || self.names == other.names)
    }
}

impl fmt::Debug for Features {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl Serialize for Features {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Features {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Features, D::Error> {
        BTreeMap::<String, FeatureValue>::deserialize(deserializer).map(Features::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_read_by_name_and_write_as_the_map_they_replace() {
        let names = FeatureNames::new(["b_count", "a_sum", "c_country"]);
        let values = [FeatureValue::Count(3), FeatureValue::Missing, FeatureValue::Text("FR".into())];
        let features = names.features(&values);
        assert_eq!(features.get("b_count"), Some(&FeatureValue::Count(3)));
        assert_eq!(features["c_country"], FeatureValue::Text("FR".into()));
        assert_eq!(features.get("d"), None);
        let map: BTreeMap<String, FeatureValue> =
            [("b_count", &values[0]), ("a_sum", &values[1]), ("c_country", &values[2])]
                .into_iter()
                .map(|(n, v)| (n.to_owned(), v.clone()))
                .collect();
        let json = serde_json::to_string(&features).unwrap();
        assert_eq!(json, serde_json::to_string(&map).unwrap());
        assert_eq!(json, r#"{"a_sum":null,"b_count":3,"c_country":"FR"}"#);
        let back: Features = serde_json::from_str(&json).unwrap();
        assert_eq!(back, features);
        assert_eq!(back, Features::from(map));
        let pairs: Vec<_> = back.iter().map(|(n, v)| (n.as_str(), v.clone())).collect();
        assert_eq!(pairs[0], ("a_sum", FeatureValue::Missing));
    }

    #[test]
    fn a_name_declared_twice_names_its_last_declaration() {
        let names = FeatureNames::new(["x", "y", "x"]);
        let features = names.features(&[FeatureValue::Count(1), FeatureValue::Count(2), FeatureValue::Count(3)]);
        assert_eq!(features.len(), 2);
        assert_eq!(features["x"], FeatureValue::Count(3));
        // A vector shorter than the names reads as missing.
        assert_eq!(names.features(&[]).get("y"), Some(&FeatureValue::Missing));
    }
}
