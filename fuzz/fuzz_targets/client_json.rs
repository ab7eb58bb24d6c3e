//! libFuzzer entry point of the `client_json` checks (`fuzz/checks/client_json.rs`, which say what must
//! hold); `cargo test --test fuzz_smoke` runs the same checks on the committed corpus.
#![no_main]

#[path = "../checks/client_json.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::run(data));
