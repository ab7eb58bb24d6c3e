//! libFuzzer entry point of the `client_proto` checks (`fuzz/checks/client_proto.rs`, which say what must
//! hold); `cargo test --test fuzz_smoke` runs the same checks on the committed corpus.
#![no_main]

#[path = "../checks/client_proto.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::run(data));
