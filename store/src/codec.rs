//! How the table stores values: postcard, with the table's name in a decoding error.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::StoreError;

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_allocvec(value).map_err(StoreError::Encode)
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8], tree: &str) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| StoreError::CorruptValue {
        tree: tree.to_string(),
        detail: e.to_string(),
    })
}
