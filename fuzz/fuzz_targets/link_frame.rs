//! libFuzzer entry point of the `link_frame` checks (`fuzz/checks/link_frame.rs`, which say what must
//! hold); `cargo test --test fuzz_smoke` runs the same checks on the committed corpus.
#![no_main]

#[path = "../checks/link_frame.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::run(data));
