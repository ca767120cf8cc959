//! Canonical JSON: the same value, whatever the order its object keys came in. A leaf.
//!
//! serde_json keeps insertion order (its `preserve_order` feature is on for the whole build,
//! via the mpp crate), so anything that hashes or compares JSON from outside (tool arguments
//! for a call's identity, an offer as a seller sent it) sorts keys first.

use serde_json::Value;

/// The value with every object's keys sorted: serde_json keeps insertion order (its
/// `preserve_order` feature is on for the whole build, via the mpp crate), and the same
/// arguments sent in another order must still be the same call.
pub fn canonical_json(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k.clone(), canonical_json(v)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.iter().map(canonical_json).collect()),
        other => other.clone(),
    }
}
