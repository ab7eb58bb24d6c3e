//! libFuzzer entry point of the `wal_replay` checks (`fuzz/checks/wal_replay.rs`, which say what must
//! hold); `cargo test --test fuzz_smoke` runs the same checks on the committed corpus.
#![no_main]

#[path = "../checks/wal_replay.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::run(data));
