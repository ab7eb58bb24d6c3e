//! The identity of a data directory: which manager it belongs to and which cluster it joined.
//!
//! Written once when the manager first starts on the directory and again when it joins a
//! cluster, atomically (temp file, fsync, rename, fsync of the directory). A manager refuses a
//! directory that records another id, so two managers never share a log by mistake.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::StartError;

const FILE_NAME: &str = "manager.json";

/// Contents of `DATA_DIR/manager.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeMeta {
    /// The manager id this directory belongs to.
    pub node_id: u64,
    /// Empty until the manager joined a cluster.
    #[serde(default)]
    pub cluster_id: String,
    /// Number of groups of the cluster; 0 until joined.
    #[serde(default)]
    pub groups: u32,
    /// Hex secret the QUIC stateless-reset key is derived from; kept across restarts so that
    /// peers of the previous run learn at once that their connections are gone.
    #[serde(default)]
    pub quic_reset_secret: String,
}

impl NodeMeta {
    /// True once the manager belongs to a cluster.
    pub fn joined(&self) -> bool {
        !self.cluster_id.is_empty()
    }
}

/// Read the directory's identity, creating it for a fresh directory.
pub(crate) fn load_or_create(dir: &Path, node_id: u64) -> Result<NodeMeta, StartError> {
    fs::create_dir_all(dir).map_err(|source| StartError::DataDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let path = dir.join(FILE_NAME);
    match fs::read(&path) {
        Ok(bytes) => {
            let meta: NodeMeta = serde_json::from_slice(&bytes).map_err(|e| {
                StartError::WrongDataDir(format!(
                    "{} is not a valid manager identity file ({e}); this directory was not \
                     written by a Firetower manager or is damaged: use an empty directory, or \
                     restore it from a backup",
                    path.display()
                ))
            })?;
            if meta.node_id != node_id {
                return Err(StartError::WrongDataDir(format!(
                    "data directory {} belongs to manager {}{}, not manager {node_id}: start \
                     manager {node_id} on its own directory, or on an empty one to add it anew",
                    dir.display(),
                    meta.node_id,
                    if meta.joined() {
                        format!(" of cluster {}", meta.cluster_id)
                    } else {
                        String::new()
                    },
                )));
            }
            Ok(meta)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if dir_has_foreign_files(dir)? {
                return Err(StartError::WrongDataDir(format!(
                    "data directory {} is not empty and has no {FILE_NAME}: refusing to mix a \
                     manager's data with other files; use an empty directory",
                    dir.display()
                )));
            }
            let meta = NodeMeta {
                node_id,
                cluster_id: String::new(),
                groups: 0,
                quic_reset_secret: String::new(),
            };
            store(dir, &meta)?;
            Ok(meta)
        }
        Err(source) => Err(StartError::DataDir { path, source }),
    }
}

fn dir_has_foreign_files(dir: &Path) -> Result<bool, StartError> {
    let entries = fs::read_dir(dir).map_err(|source| StartError::DataDir {
        path: dir.to_path_buf(),
        source,
    })?;
    Ok(entries.flatten().any(|e| {
        let name = e.file_name();
        let name = name.to_string_lossy();
        !name.starts_with('.') && name != "LOCK"
    }))
}

/// Give `meta` a stateless-reset secret if it has none (a fresh directory, or one written
/// before the secret existed), and store it. Call with the data directory locked.
pub(crate) fn ensure_reset_secret(dir: &Path, mut meta: NodeMeta) -> Result<NodeMeta, StartError> {
    if meta.quic_reset_secret.len() == 64 {
        return Ok(meta);
    }
    let mut secret = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret).map_err(
        |_| StartError::DataDir {
            path: dir.to_path_buf(),
            source: std::io::Error::other("no system randomness for the QUIC reset secret"),
        },
    )?;
    meta.quic_reset_secret = secret.iter().map(|b| format!("{b:02x}")).collect();
    store(dir, &meta)?;
    Ok(meta)
}

/// Write the identity atomically.
pub(crate) fn store(dir: &Path, meta: &NodeMeta) -> Result<(), StartError> {
    let io = |path: PathBuf| move |source| StartError::DataDir { path, source };
    let tmp = dir.join(format!("{FILE_NAME}.tmp"));
    let path = dir.join(FILE_NAME);
    // Serializing a struct of plain fields cannot fail.
    let bytes = serde_json::to_vec_pretty(meta).unwrap_or_default();
    let mut f = fs::File::create(&tmp).map_err(io(tmp.clone()))?;
    f.write_all(&bytes).map_err(io(tmp.clone()))?;
    f.sync_all().map_err(io(tmp.clone()))?;
    fs::rename(&tmp, &path).map_err(io(path.clone()))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir.to_path_buf()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_dir_gets_identity_and_other_id_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let meta = load_or_create(dir.path(), 3).unwrap();
        assert_eq!(meta.node_id, 3);
        assert!(!meta.joined());
        let again = load_or_create(dir.path(), 3).unwrap();
        assert_eq!(again, meta);
        let err = load_or_create(dir.path(), 4).unwrap_err().to_string();
        assert!(err.contains("belongs to manager 3"), "{err}");
    }

    #[test]
    fn reset_secret_is_created_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let meta = load_or_create(dir.path(), 1).unwrap();
        assert!(meta.quic_reset_secret.is_empty());
        let meta = ensure_reset_secret(dir.path(), meta).unwrap();
        assert_eq!(meta.quic_reset_secret.len(), 64);
        let again = load_or_create(dir.path(), 1).unwrap();
        assert_eq!(again.quic_reset_secret, meta.quic_reset_secret);
        let same = ensure_reset_secret(dir.path(), again).unwrap();
        assert_eq!(same.quic_reset_secret, meta.quic_reset_secret);
    }

    #[test]
    fn non_empty_foreign_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("something"), b"x").unwrap();
        let err = load_or_create(dir.path(), 1).unwrap_err().to_string();
        assert!(err.contains("not empty"), "{err}");
    }

    #[test]
    fn garbage_identity_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(FILE_NAME), b"{nope").unwrap();
        let err = load_or_create(dir.path(), 1).unwrap_err().to_string();
        assert!(err.contains("not a valid manager identity"), "{err}");
    }
}
