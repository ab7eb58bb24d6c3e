//! sled following the in-memory tables: writes of every group are merged per key and
//! written as one atomic sled batch per group every [`FOLLOW_INTERVAL`], by one thread per
//! manager.
//!
//! ```text
//!   GroupTrees::write ──follow(group, writes)──▶ pending: group -> key -> value|removed
//!                                                     │ every FOLLOW_INTERVAL (or flush / drop)
//!                                                     ▼
//!                                   sled::Tree::apply_batch (one per group with writes)
//! ```
//!
//! Why: sled seals and writes an I/O buffer of its own for every `apply_batch` (that is how it
//! makes a batch atomic), so one batch per Raft apply cost each manager an extra disk write
//! per commit. Merged, it costs at most one per group and interval, whatever the commit rate.
//!
//! Memory: pending holds at most one value per key written since the last round, so it is
//! bounded by the size of the tables themselves. sled itself is the larger cost: it keeps what
//! a batch replaces until the batch ends, so its resident memory grows with the size of each
//! batch far faster than linearly (300,000 keys written in batches of 6,000 left sled at
//! 961 MiB resident, in batches of 300 at 94 MiB; `store/examples/sled_mem.rs`). A round
//! therefore goes to sled in batches of at most [`MAX_BATCH_KEYS`] keys.
//!
//! Atomicity across those batches: a round that needs more than one batch removes the group's
//! marker key (`last_applied`) in its first batch and writes it in its last. A crash in between
//! leaves a tree without the marker, which the state machine treats as partial: it restores the
//! latest snapshot, or with none, starts the group's table from empty, and openraft re-applies
//! the log (`state_machine.rs`). A round that fits one batch is one atomic batch, as before.
//!
//! Order: `replace` (a snapshot install) takes the write lock, drops the group's pending
//! writes and rewrites the tree; a round that took its writes earlier has finished by then,
//! so nothing older lands on top of a restored tree.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::error::StoreError;

/// How long sled may trail the in-memory tables in normal operation.
pub(crate) const FOLLOW_INTERVAL: Duration = Duration::from_millis(200);

/// Most keys in one sled batch (see the module documentation).
pub(crate) const MAX_BATCH_KEYS: usize = 256;

type Writes = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// One write as a batch takes it: a key and its value, or `None` for a removal.
type Item<'a> = (&'a [u8], Option<&'a [u8]>);

#[derive(Default)]
struct Pending {
    groups: HashMap<u32, (sled::Tree, Writes)>,
    stop: bool,
}

struct Shared {
    /// The key whose absence marks a group's tree as partial (written last in a round).
    marker: Vec<u8>,
    pending: Mutex<Pending>,
    wake: Condvar,
    /// Held while writing to sled, so that rounds and replacements never interleave.
    writing: Mutex<()>,
}

/// The sled writer of one manager's state store. Dropping it writes what is pending and
/// stops its thread.
pub(crate) struct SledFollower {
    shared: Arc<Shared>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl SledFollower {
    /// Starts the follower thread. `marker` is the key each group's tree holds only when it is
    /// whole (see the module documentation).
    pub(crate) fn start(marker: Vec<u8>) -> Result<Arc<SledFollower>, StoreError> {
        let shared = Arc::new(Shared {
            marker,
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            writing: Mutex::new(()),
        });
        let thread_shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("firetower-sled".into())
            .spawn(move || run(&thread_shared))
            .map_err(|source| StoreError::Io {
                path: Default::default(),
                source,
            })?;
        Ok(Arc::new(SledFollower { shared }))
    }

    /// Queue `writes` (tagged keys) of `group` for sled; later writes of a key replace earlier.
    pub(crate) fn follow(&self, group: u32, tree: &sled::Tree, writes: Writes) {
        let mut pending = lock(&self.shared.pending);
        let (_, queued) = pending
            .groups
            .entry(group)
            .or_insert_with(|| (tree.clone(), Writes::new()));
        if queued.is_empty() {
            *queued = writes;
        } else {
            queued.extend(writes);
        }
    }

    /// Replace `group`'s whole tree with `table` now (a snapshot install), dropping its
    /// pending writes.
    pub(crate) fn replace(
        &self,
        group: u32,
        tree: &sled::Tree,
        table: &BTreeMap<Vec<u8>, Vec<u8>>,
    ) -> Result<(), StoreError> {
        let _writing = lock(&self.shared.writing);
        lock(&self.shared.pending).groups.remove(&group);
        // A crash between the clear and the batch leaves no `last_applied`, so the next open
        // restores the snapshot again.
        tree.clear()?;
        let items: Vec<Item<'_>> = table
            .iter()
            .map(|(k, v)| (k.as_slice(), Some(v.as_slice())))
            .collect();
        for batch in batches(&items, &self.shared.marker, None, MAX_BATCH_KEYS) {
            tree.apply_batch(batch)?;
        }
        Ok(())
    }

    /// Write everything pending now.
    pub(crate) fn write_pending(&self) -> Result<(), StoreError> {
        self.shared.write_pending()
    }
}

impl Shared {
    fn write_pending(&self) -> Result<(), StoreError> {
        let _writing = lock(&self.writing);
        let mut groups = std::mem::take(&mut lock(&self.pending).groups);
        let order: Vec<u32> = groups.keys().copied().collect();
        for group in order {
            let Some((tree, writes)) = groups.remove(&group) else {
                continue;
            };
            let written = (|| {
                let items: Vec<Item<'_>> = writes
                    .iter()
                    .map(|(k, v)| (k.as_slice(), v.as_deref()))
                    .collect();
                let current = tree.get(&self.marker)?;
                for batch in batches(&items, &self.marker, current.as_deref(), MAX_BATCH_KEYS) {
                    tree.apply_batch(batch)?;
                }
                Ok::<(), sled::Error>(())
            })();
            if let Err(e) = written {
                // Put this group's writes and the unwritten groups back under anything queued
                // meanwhile (newer), so that sled never gets a later `last_applied` without
                // the writes before it.
                groups.insert(group, (tree, writes));
                let mut pending = lock(&self.pending);
                for (g, (tree, mut older)) in groups {
                    if let Some((_, newer)) = pending.groups.remove(&g) {
                        older.extend(newer);
                    }
                    pending.groups.insert(g, (tree, older));
                }
                return Err(e.into());
            }
        }
        Ok(())
    }
}

/// The sled batches that write `items` (key, value or removal), at most `max` keys each.
///
/// One batch when they fit. Otherwise the first batch also removes `marker` and the last writes
/// it: with its value among `items` if it is there, else with `current` (its value in the tree
/// now), so a round that does not change the marker still leaves it as it was.
fn batches(
    items: &[Item<'_>],
    marker: &[u8],
    current: Option<&[u8]>,
    max: usize,
) -> Vec<sled::Batch> {
    let fill = |chunk: &[Item<'_>], batch: &mut sled::Batch| {
        for (key, value) in chunk {
            match value {
                Some(v) => batch.insert(*key, *v),
                None => batch.remove(*key),
            }
        }
    };
    let max = max.max(2);
    if items.len() <= max {
        let mut batch = sled::Batch::default();
        fill(items, &mut batch);
        return vec![batch];
    }
    let marker_value = match items.iter().find(|(k, _)| *k == marker) {
        Some((_, value)) => *value,
        None => current,
    };
    let rest: Vec<Item<'_>> = items
        .iter()
        .filter(|(k, _)| *k != marker)
        .copied()
        .collect();
    let chunks: Vec<&[Item<'_>]> = rest.chunks(max - 1).collect();
    let last = chunks.len() - 1;
    chunks
        .iter()
        .enumerate()
        .map(|(i, chunk)| {
            let mut batch = sled::Batch::default();
            if i == 0 {
                batch.remove(marker);
            }
            fill(chunk, &mut batch);
            if i == last {
                match marker_value {
                    Some(v) => batch.insert(marker, v),
                    None => batch.remove(marker),
                }
            }
            batch
        })
        .collect()
}

impl Drop for SledFollower {
    fn drop(&mut self) {
        lock(&self.shared.pending).stop = true;
        self.shared.wake.notify_all();
        if let Err(e) = self.shared.write_pending() {
            tracing::warn!(
                error = %e,
                "could not write the last table changes to sled; the next start replays them \
                 from the log"
            );
        }
        // Whatever could not be written holds sled trees (and so the database) open: let go.
        lock(&self.shared.pending).groups.clear();
    }
}

fn run(shared: &Shared) {
    loop {
        {
            let pending = lock(&shared.pending);
            if pending.stop {
                return;
            }
            let (pending, _) = shared
                .wake
                .wait_timeout(pending, FOLLOW_INTERVAL)
                .unwrap_or_else(PoisonError::into_inner);
            if pending.stop {
                return;
            }
        }
        if let Err(e) = shared.write_pending() {
            // sled refuses writes (disk full, I/O error): the tables stay correct in memory
            // and the log keeps everything; say so and try again next round.
            tracing::error!(error = %e, "writing table changes to sled failed; retrying");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(pairs: &[(&str, Option<&str>)]) -> Writes {
        pairs
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.map(|v| v.as_bytes().to_vec())))
            .collect()
    }

    fn contents(tree: &sled::Tree) -> Vec<(String, String)> {
        tree.iter()
            .map(|kv| {
                let (k, v) = kv.unwrap();
                (
                    String::from_utf8(k.to_vec()).unwrap(),
                    String::from_utf8(v.to_vec()).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn later_writes_of_a_key_win_and_removals_remove() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let tree = db.open_tree("g1").unwrap();
        tree.insert("gone", "x").unwrap();
        let f = SledFollower::start(b"marker".to_vec()).unwrap();
        f.follow(1, &tree, w(&[("a", Some("1")), ("b", Some("1"))]));
        f.follow(1, &tree, w(&[("a", Some("2")), ("gone", None)]));
        f.write_pending().unwrap();
        assert_eq!(
            contents(&tree),
            vec![("a".into(), "2".into()), ("b".into(), "1".into())]
        );
    }

    #[test]
    fn a_replacement_drops_older_pending_writes_of_its_group_only() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let (g1, g2) = (db.open_tree("g1").unwrap(), db.open_tree("g2").unwrap());
        let f = SledFollower::start(b"marker".to_vec()).unwrap();
        f.follow(1, &g1, w(&[("stale", Some("1"))]));
        f.follow(2, &g2, w(&[("kept", Some("1"))]));
        let table: BTreeMap<Vec<u8>, Vec<u8>> = [(b"snap".to_vec(), b"1".to_vec())].into();
        f.replace(1, &g1, &table).unwrap();
        f.write_pending().unwrap();
        assert_eq!(contents(&g1), vec![("snap".into(), "1".into())]);
        assert_eq!(contents(&g2), vec![("kept".into(), "1".into())]);
    }

    #[test]
    fn dropping_the_follower_writes_what_is_pending_and_lets_go_of_the_database() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            let tree = db.open_tree("g1").unwrap();
            let f = SledFollower::start(b"marker".to_vec()).unwrap();
            f.follow(1, &tree, w(&[("a", Some("1"))]));
            drop(f);
        }
        // Reopening in the same process works only once every handle of the old one is gone.
        let db = sled::open(dir.path()).unwrap();
        let tree = db.open_tree("g1").unwrap();
        assert_eq!(contents(&tree), vec![("a".into(), "1".into())]);
    }

    fn items(n: usize) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        let mut items: Vec<(Vec<u8>, Option<Vec<u8>>)> = (0..n)
            .map(|i| (format!("k{i:05}").into_bytes(), Some(b"v".to_vec())))
            .collect();
        items.push((b"gone".to_vec(), None));
        items.push((b"marker".to_vec(), Some(b"new".to_vec())));
        items
    }

    fn borrowed(items: &[(Vec<u8>, Option<Vec<u8>>)]) -> Vec<Item<'_>> {
        items
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_deref()))
            .collect()
    }

    #[test]
    fn a_large_round_goes_in_small_batches_with_the_marker_last() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let tree = db.open_tree("g1").unwrap();
        tree.insert("gone", "x").unwrap();
        tree.insert("marker", "old").unwrap();
        let items = items(1000);
        let batches = batches(&borrowed(&items), b"marker", Some(b"old"), 100);
        assert_eq!(
            batches.len(),
            11,
            "1,001 keys besides the marker, 99 per batch"
        );
        let mut batches = batches.into_iter();
        // A crash after the first batch: the marker is gone, so the tree is known partial.
        tree.apply_batch(batches.next().unwrap()).unwrap();
        assert_eq!(tree.get("marker").unwrap(), None);
        for batch in batches.by_ref().take(9) {
            tree.apply_batch(batch).unwrap();
            assert_eq!(tree.get("marker").unwrap(), None);
        }
        tree.apply_batch(batches.next().unwrap()).unwrap();
        assert_eq!(tree.get("marker").unwrap().as_deref(), Some(&b"new"[..]));
        assert_eq!(tree.get("gone").unwrap(), None);
        assert_eq!(tree.len(), 1001, "1,000 keys and the marker");
    }

    #[test]
    fn a_large_round_without_the_marker_puts_the_old_one_back() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let tree = db.open_tree("g1").unwrap();
        tree.insert("marker", "old").unwrap();
        let mut items = items(500);
        items.pop();
        for batch in batches(&borrowed(&items), b"marker", Some(b"old"), 64) {
            tree.apply_batch(batch).unwrap();
        }
        assert_eq!(tree.get("marker").unwrap().as_deref(), Some(&b"old"[..]));
        assert_eq!(tree.len(), 501);
    }

    #[test]
    fn a_small_round_is_one_batch() {
        let items = items(10);
        assert_eq!(
            batches(&borrowed(&items), b"marker", None, MAX_BATCH_KEYS).len(),
            1
        );
    }

    #[test]
    fn the_follower_writes_a_large_round_whole() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let tree = db.open_tree("g1").unwrap();
        let f = SledFollower::start(b"marker".to_vec()).unwrap();
        f.follow(1, &tree, items(3 * MAX_BATCH_KEYS).into_iter().collect());
        f.write_pending().unwrap();
        assert_eq!(tree.len(), 3 * MAX_BATCH_KEYS + 1);
        assert_eq!(tree.get("marker").unwrap().as_deref(), Some(&b"new"[..]));
    }

    #[test]
    fn the_thread_writes_within_a_few_intervals() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let tree = db.open_tree("g1").unwrap();
        let f = SledFollower::start(b"marker".to_vec()).unwrap();
        f.follow(1, &tree, w(&[("a", Some("1"))]));
        // Not a timing assertion: wait as long as it takes (bounded), then check it happened.
        let deadline = std::time::Instant::now() + FOLLOW_INTERVAL * 50;
        while tree.is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(FOLLOW_INTERVAL / 4);
        }
        assert_eq!(contents(&tree), vec![("a".into(), "1".into())]);
    }
}
