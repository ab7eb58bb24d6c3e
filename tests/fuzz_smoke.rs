//! A short smoke of every cargo-fuzz target, run by `cargo test` (docs/fuzzing.md, "CI smoke").
//!
//! The fuzz targets in `fuzz/fuzz_targets/` are one-line libFuzzer entry points; what each
//! checks lives in `fuzz/checks/<target>.rs`, and this test compiles the very same files. For
//! every target it runs the committed corpus (`fuzz/corpus/<target>/`, seeds and the
//! regression inputs of crashes found earlier), then a fixed number of inputs mutated from it
//! with a seeded generator: bit flips, byte overwrites, insertions, deletions, truncations,
//! splices of two corpus inputs, and interesting integer values. It is not a fuzzer (no
//! coverage feedback: the ten-minute libFuzzer runs of docs/fuzzing.md are that), but it runs
//! every check on every change without the nightly toolchain and sanitizer build that
//! cargo-fuzz needs. A failure names the target, the input's origin and its bytes, so it can
//! be replayed with `cargo +nightly fuzz run <target> <file>`.

#[path = "../fuzz/checks/client_json.rs"]
mod client_json;
#[path = "../fuzz/checks/client_proto.rs"]
mod client_proto;
#[path = "../fuzz/checks/link_frame.rs"]
mod link_frame;
#[path = "../fuzz/checks/raft_wire.rs"]
mod raft_wire;
#[path = "../fuzz/checks/wal_replay.rs"]
mod wal_replay;
#[path = "../fuzz/checks/ws_codec.rs"]
mod ws_codec;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

/// The committed corpus of `target`, sorted by file name.
fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut inputs: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("the corpus {} must exist: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("a corpus entry").path();
            let bytes = std::fs::read(&path).expect("a readable corpus file");
            (path.display().to_string(), bytes)
        })
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "the corpus of {target} is empty");
    inputs
}

/// xorshift64*: small, seeded, the same sequence on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// Values that sit on the boundaries parsers get wrong: lengths, limits, sign bits.
const INTERESTING: [u64; 12] = [
    0,
    1,
    0x7f,
    0x80,
    0xff,
    0x7e,
    0xffff,
    0x1_0000,
    0x7fff_ffff,
    0xffff_ffff,
    0x8000_0000_0000_0000,
    u64::MAX,
];

/// One mutation of `base` (a few edits stacked), using `other` for splices.
fn mutate(rng: &mut Rng, base: &[u8], other: &[u8]) -> Vec<u8> {
    let mut data = base.to_vec();
    for _ in 0..1 + rng.below(4) {
        match rng.below(8) {
            0 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] ^= 1 << rng.below(8);
            }
            1 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] = rng.next() as u8;
            }
            2 => {
                let i = rng.below(data.len() + 1);
                let n = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                data.splice(i..i, bytes);
            }
            3 if !data.is_empty() => {
                let i = rng.below(data.len());
                let n = 1 + rng.below((data.len() - i).min(16));
                data.drain(i..i + n);
            }
            4 => {
                let n = rng.below(data.len() + 1);
                data.truncate(n);
            }
            5 if !other.is_empty() => {
                let i = rng.below(data.len() + 1);
                let from = rng.below(other.len());
                let to = from + 1 + rng.below(other.len() - from);
                data.truncate(i);
                data.extend_from_slice(&other[from..to]);
            }
            6 if !data.is_empty() => {
                let width = [1usize, 2, 4, 8][rng.below(4)];
                let value = INTERESTING[rng.below(INTERESTING.len())].to_le_bytes();
                let i = rng.below(data.len());
                let end = (i + width).min(data.len());
                let big_endian = rng.below(2) == 0;
                for (k, slot) in data[i..end].iter_mut().enumerate() {
                    *slot = if big_endian {
                        value[width - 1 - k]
                    } else {
                        value[k]
                    };
                }
            }
            _ => {
                let i = rng.below(data.len() + 1);
                let byte = rng.next() as u8;
                let n = 1 + rng.below(64);
                data.splice(i..i, std::iter::repeat_n(byte, n));
            }
        }
    }
    // libFuzzer's default -max_len for these targets.
    data.truncate(4096);
    data
}

/// Run `check` on every corpus input of `target`, then on `mutations` mutated inputs.
fn smoke(target: &str, mutations: usize, check: fn(&[u8])) {
    let inputs = corpus(target);
    let run = |origin: &str, data: &[u8]| {
        if catch_unwind(AssertUnwindSafe(|| check(data))).is_err() {
            panic!(
                "fuzz target {target} failed on {origin} ({} bytes): {:02x?}",
                data.len(),
                data
            );
        }
    };
    for (name, data) in &inputs {
        run(name, data);
    }
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ target.len() as u64);
    for i in 0..mutations {
        let (base_name, base) = &inputs[rng.below(inputs.len())];
        let (_, other) = &inputs[rng.below(inputs.len())];
        let data = mutate(&mut rng, base, other);
        run(&format!("mutation {i} of {base_name}"), &data);
    }
}

#[test]
fn ws_codec() {
    smoke("ws_codec", 20_000, ws_codec::run);
}

#[test]
fn client_json() {
    smoke("client_json", 20_000, client_json::run);
}

#[test]
fn client_proto() {
    smoke("client_proto", 20_000, client_proto::run);
}

#[test]
fn link_frame() {
    smoke("link_frame", 20_000, link_frame::run);
}

#[test]
fn raft_wire() {
    smoke("raft_wire", 20_000, raft_wire::run);
}

#[test]
fn wal_replay() {
    smoke("wal_replay", 2_000, wal_replay::run);
}

#[test]
fn mutations_change_inputs_and_stay_in_bounds() {
    // The generator must actually produce new inputs, or the smoke replays the corpus only.
    let mut rng = Rng(1);
    let base = b"{\"op\":\"subscribe\",\"id\":1,\"topics\":[\"a\"]}".to_vec();
    let mut changed = 0;
    for _ in 0..1_000 {
        let m = mutate(&mut rng, &base, b"other");
        assert!(m.len() <= 4096);
        if m != base {
            changed += 1;
        }
    }
    assert!(
        changed > 900,
        "only {changed} of 1000 mutations changed the input"
    );
}
