//! Serde helpers for the traces' lower-case hex strings (empty string = zero-length value).

use std::collections::BTreeMap;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

pub(crate) fn bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let text = String::deserialize(d)?;
    hex::decode(&text).map_err(|e| D::Error::custom(format!("not hex ({e}): {text}")))
}

pub(crate) fn opt_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
    bytes(d).map(Some)
}

/// A JSON object's hex values by name; what is not a hex string (notes, names, nested
/// objects) is left out, so a named field that is not hex reads as missing.
pub(crate) fn map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, Vec<u8>>, D::Error> {
    let raw = BTreeMap::<String, serde_json::Value>::deserialize(d)?;
    let mut out = BTreeMap::new();
    for (name, value) in raw {
        if let Some(text) = value.as_str() {
            if let Ok(bytes) = hex::decode(text) {
                out.insert(name, bytes);
            }
        }
    }
    Ok(out)
}
