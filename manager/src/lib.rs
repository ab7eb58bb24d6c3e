//! The Firetower topic-manager server.
