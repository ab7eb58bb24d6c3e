//! The Firetower client protocol as a library (being moved here from the gateway).
