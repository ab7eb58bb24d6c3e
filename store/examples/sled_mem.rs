//! sled's resident memory for many small keys written in batches of a given size: the
//! measurement behind `MAX_BATCH_KEYS` (`store/src/follower.rs`).
//!
//! ```text
//! cargo run --release -p firetower-store --example sled_mem -- KEYS BATCH [CACHE_MIB]
//! cargo run --release -p firetower-store --example sled_mem -- 300000 6000   # ~960 MiB
//! cargo run --release -p firetower-store --example sled_mem -- 300000 256    # ~90 MiB
//! ```
//!
//! Keys look like the subscription table's (a tag byte, a topic, a gateway id), in hashed
//! order as topics arrive; values are empty. Prints the resident set after the writes and
//! after a flush.

use std::time::Duration;

fn rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        / 1024
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: sled_mem KEYS BATCH [CACHE_MIB]";
    let keys: u64 = args.first().ok_or(usage)?.parse()?;
    let batch: u64 = args.get(1).ok_or(usage)?.parse()?;
    let cache_mib: u64 = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(64);
    let dir = tempfile::tempdir()?;
    let db = sled::Config::default()
        .path(dir.path())
        .cache_capacity(cache_mib << 20)
        .open()?;
    let tree = db.open_tree("g0")?;
    let mut n = 0u64;
    while n < keys {
        let mut b = sled::Batch::default();
        for _ in 0..batch.max(1) {
            let h = n.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29);
            let key = format!("\x01room.{h:016x}.{n}\0{:08}", 1);
            b.insert(key.as_bytes(), &[]);
            n += 1;
        }
        tree.apply_batch(b)?;
    }
    println!(
        "{keys} keys in batches of {batch} (cache {cache_mib} MiB): RSS {} MiB",
        rss_mib()
    );
    db.flush()?;
    std::thread::sleep(Duration::from_secs(2));
    println!("after a flush and 2 s: RSS {} MiB", rss_mib());
    Ok(())
}
