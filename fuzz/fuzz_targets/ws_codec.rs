//! libFuzzer entry point of the `ws_codec` checks (`fuzz/checks/ws_codec.rs`, which say what must
//! hold); `cargo test --test fuzz_smoke` runs the same checks on the committed corpus.
#![no_main]

#[path = "../checks/ws_codec.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::run(data));
