//! Published data as the client protocol carries it: JSON text or opaque bytes.
//!
//! It is protocol data, not gateway state: client frames carry it up, server frames carry it
//! down, and the gateway passes it to the cluster and back untouched.

use bytes::Bytes;

/// Published data: JSON text (from JSON clients: the raw text of `data`, validated JSON) or
/// opaque bytes (from protobuf clients).
///
/// Invariant relied on when encoding for JSON clients: `Json` holds valid JSON text. Every
/// parser in this crate validates it; the gateway's upstream implementations must only pass
/// on what a gateway produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// Valid JSON text, sent to JSON subscribers verbatim.
    Json(Bytes),
    /// Opaque bytes, sent to JSON subscribers as base64.
    Binary(Bytes),
}

impl Payload {
    /// The payload's bytes, whatever their kind.
    pub fn bytes(&self) -> &Bytes {
        match self {
            Payload::Json(b) | Payload::Binary(b) => b,
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.bytes().len()
    }

    /// True when it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.bytes().is_empty()
    }
}

/// JSON data: serialised once here, so the `Json` invariant holds by construction.
impl From<&serde_json::Value> for Payload {
    fn from(value: &serde_json::Value) -> Payload {
        Payload::Json(Bytes::from(value.to_string()))
    }
}

impl From<serde_json::Value> for Payload {
    fn from(value: serde_json::Value) -> Payload {
        Payload::from(&value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_values_become_their_text() {
        let p = Payload::from(serde_json::json!({"a": [1, null]}));
        assert_eq!(p, Payload::Json(Bytes::from_static(br#"{"a":[1,null]}"#)));
        assert_eq!(p.len(), 14);
        assert!(!p.is_empty());
        assert!(Payload::Binary(Bytes::new()).is_empty());
    }
}
