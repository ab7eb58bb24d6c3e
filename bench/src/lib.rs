//! Firetower's load generator and peers (being moved here from the binary crate).
