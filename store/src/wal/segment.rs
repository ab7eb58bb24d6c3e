//! Segment files: naming, listing, and what each segment holds.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use crate::error::WalError;

/// Suffix of segment files: `00000001.log`, `00000002.log`, ...
const SUFFIX: &str = ".log";

/// A segment of the log and the newest entry of each group in it. A segment may be deleted
/// once every group's purge point has passed its newest entry there.
#[derive(Debug, Clone)]
pub(crate) struct Segment {
    pub id: u64,
    pub path: PathBuf,
    /// Group -> highest entry index appended to this segment (truncation never lowers it:
    /// that only delays deletion).
    pub max_index: HashMap<u32, u64>,
}

impl Segment {
    pub(super) fn new(dir: &Path, id: u64) -> Segment {
        Segment {
            id,
            path: path_of(dir, id),
            max_index: HashMap::new(),
        }
    }

    pub(super) fn note_append(&mut self, group: u32, index: u64) {
        let max = self.max_index.entry(group).or_insert(index);
        *max = (*max).max(index);
    }

    /// True when every entry of this segment is at or below its group's purge point.
    pub(super) fn is_purged(&self, purged_index: impl Fn(u32) -> Option<u64>) -> bool {
        self.max_index
            .iter()
            .all(|(group, max)| purged_index(*group).is_some_and(|purged| purged >= *max))
    }
}

/// The path of segment `id` in `dir`.
pub(crate) fn path_of(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:08}{SUFFIX}"))
}

/// The segments in `dir`, oldest first. Other files are ignored.
pub(crate) fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>, WalError> {
    let io = |source| WalError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut found = Vec::new();
    for item in fs::read_dir(dir).map_err(io)? {
        let item = item.map_err(io)?;
        let name = item.file_name();
        let Some(id) = name
            .to_str()
            .and_then(|n| n.strip_suffix(SUFFIX))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        found.push((id, item.path()));
    }
    found.sort_unstable_by_key(|(id, _)| *id);
    Ok(found)
}

/// Makes a created or removed directory entry durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), WalError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| WalError::Io {
            path: dir.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_and_parse() {
        let dir = tempfile::tempdir().unwrap();
        for id in [10u64, 2, 1] {
            fs::write(path_of(dir.path(), id), b"").unwrap();
        }
        fs::write(dir.path().join("notes.txt"), b"").unwrap();
        let ids: Vec<u64> = list(dir.path())
            .unwrap()
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(ids, vec![1, 2, 10]);
        assert!(path_of(dir.path(), 1).ends_with("00000001.log"));
    }

    #[test]
    fn purged_only_when_every_group_passed() {
        let mut seg = Segment::new(Path::new("/x"), 1);
        seg.note_append(0, 10);
        seg.note_append(1, 5);
        assert!(!seg.is_purged(|g| if g == 0 { Some(10) } else { None }));
        assert!(!seg.is_purged(|g| if g == 0 { Some(10) } else { Some(4) }));
        assert!(seg.is_purged(|g| if g == 0 { Some(10) } else { Some(5) }));
    }
}
