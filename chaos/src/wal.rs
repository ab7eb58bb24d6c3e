//! Damage to a stopped manager's write-ahead log: what a crash mid-write (torn tail) or a
//! failing disk (flipped bit) leaves behind.
//!
//! The WAL is `DATA/**/wal/NNNNNNNN.log`, records `len | crc32 | payload`. A damaged tail of
//! the last segment must be cut back on restart (the record was never acknowledged); damage
//! before the end must stop the manager with the file and offset named (docs/architecture.md,
//! "Storage"). This module only damages; the harness checks the manager's reaction.

use std::path::{Path, PathBuf};

use crate::ChaosError;

/// What to do to the last segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WalDamage {
    /// Cut this many bytes off the end (a torn write).
    TornTail {
        /// Bytes removed (at least 1; capped at the segment's length).
        bytes: u64,
    },
    /// Flip one bit of the last byte (a corrupt last record).
    FlipLastByte,
}

/// Damage the last WAL segment under `data_dir`; returns a description of what was done.
pub fn damage_wal(data_dir: &Path, damage: WalDamage) -> Result<String, ChaosError> {
    let segment = last_segment(data_dir)?;
    let mut bytes = std::fs::read(&segment).map_err(|e| ChaosError::io(&segment, e))?;
    if bytes.is_empty() {
        return Err(ChaosError::Wal {
            dir: data_dir.to_path_buf(),
            message: format!("{} is empty", segment.display()),
        });
    }
    let what = match damage {
        WalDamage::TornTail { bytes: n } => {
            let n = n.clamp(1, bytes.len() as u64) as usize;
            bytes.truncate(bytes.len() - n);
            format!("cut {n} bytes off {}", segment.display())
        }
        WalDamage::FlipLastByte => {
            let i = bytes.len() - 1;
            bytes[i] ^= 0x01;
            format!("flipped bit 0 of byte {i} of {}", segment.display())
        }
    };
    std::fs::write(&segment, &bytes).map_err(|e| ChaosError::io(&segment, e))?;
    Ok(what)
}

/// The newest `*.log` file in a `wal` directory under `data_dir`.
pub fn last_segment(data_dir: &Path) -> Result<PathBuf, ChaosError> {
    let mut found = Vec::new();
    collect_segments(data_dir, &mut found, 0);
    found.sort();
    found.pop().ok_or_else(|| ChaosError::Wal {
        dir: data_dir.to_path_buf(),
        message: "no wal/*.log segment found".into(),
    })
}

fn collect_segments(dir: &Path, out: &mut Vec<PathBuf>, depth: usize) {
    if depth > 4 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            collect_segments(&p, out, depth + 1);
        } else if p.extension().is_some_and(|x| x == "log")
            && p.parent()
                .and_then(Path::file_name)
                .is_some_and(|n| n == "wal")
        {
            out.push(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn damages_the_newest_segment() {
        let dir = std::env::temp_dir().join(format!("ftc-wal-test-{}", std::process::id()));
        let wal = dir.join("wal");
        std::fs::create_dir_all(&wal).unwrap();
        std::fs::write(wal.join("00000001.log"), [1u8; 10]).unwrap();
        std::fs::write(wal.join("00000002.log"), [2u8; 10]).unwrap();
        damage_wal(&dir, WalDamage::TornTail { bytes: 3 }).unwrap();
        assert_eq!(std::fs::read(wal.join("00000002.log")).unwrap().len(), 7);
        damage_wal(&dir, WalDamage::FlipLastByte).unwrap();
        assert_eq!(std::fs::read(wal.join("00000002.log")).unwrap()[6], 3);
        assert_eq!(std::fs::read(wal.join("00000001.log")).unwrap(), [1u8; 10]);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(last_segment(&dir).is_err());
    }
}
