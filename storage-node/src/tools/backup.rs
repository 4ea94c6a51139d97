//! Moving a member's data directory aside before it is rebuilt: the heal's "back up and wipe"
//! step. The directory is renamed into a backups directory (the same filesystem, so nothing is
//! copied and nothing is lost half-way), and only the newest backups are kept. Idempotent: with
//! the data already moved, it reports the existing backup and does nothing.

use std::path::{Path, PathBuf};

/// Why the data could not be moved aside.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The backup name could escape the backups directory.
    #[error("backup name {0:?} must be a plain file name")]
    BadName(String),
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io {
        action,
        path,
        source,
    }
}

/// Moves `data_dir` to `backups/name`, then deletes the oldest backups beyond `keep` (backups
/// sort by name, so names should sort by time; the one just made is always kept). Returns the
/// backup, or `None` when there was no data and no earlier backup of this name.
pub fn move_aside(
    data_dir: &Path,
    backups: &Path,
    name: &str,
    keep: usize,
) -> Result<Option<PathBuf>, Error> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(Error::BadName(name.to_string()));
    }
    let backup = backups.join(name);
    let has_data = std::fs::read_dir(data_dir)
        .map(|mut entries| entries.next().is_some())
        .unwrap_or(false);
    if !has_data {
        return Ok(backup.exists().then_some(backup));
    }
    std::fs::create_dir_all(backups).map_err(io("create", backups))?;
    std::fs::rename(data_dir, &backup).map_err(io("move", data_dir))?;
    prune(backups, keep, &backup)?;
    Ok(Some(backup))
}

/// Deletes the oldest entries of `backups` beyond `keep`, never `newest`.
fn prune(backups: &Path, keep: usize, newest: &Path) -> Result<(), Error> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(backups)
        .map_err(io("list", backups))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p != newest)
        .collect();
    entries.sort();
    let excess = (entries.len() + 1).saturating_sub(keep.max(1));
    for old in entries.into_iter().take(excess) {
        tracing::info!(backup = %old.display(), "deleting a backup beyond the retention");
        if old.is_dir() {
            std::fs::remove_dir_all(&old).map_err(io("delete", &old))?;
        } else {
            std::fs::remove_file(&old).map_err(io("delete", &old))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_moves_into_the_backups_and_only_the_newest_are_kept() {
        let root = tempfile::tempdir().expect("tempdir");
        let data = root.path().join("data");
        let backups = root.path().join("backups");
        for old in ["node1-0001", "node1-0002"] {
            std::fs::create_dir_all(backups.join(old)).expect("old backup");
        }
        std::fs::create_dir_all(&data).expect("data");
        std::fs::write(data.join("member.json"), "{}").expect("file");
        let backup = move_aside(&data, &backups, "node1-0003", 2)
            .expect("moved")
            .expect("a backup");
        assert!(backup.join("member.json").exists());
        assert!(!data.exists(), "the data directory is gone");
        assert!(
            !backups.join("node1-0001").exists(),
            "the oldest is deleted"
        );
        assert!(backups.join("node1-0002").exists());
    }

    #[test]
    fn moving_again_changes_nothing_and_reports_the_backup() {
        let root = tempfile::tempdir().expect("tempdir");
        let data = root.path().join("data");
        let backups = root.path().join("backups");
        std::fs::create_dir_all(&data).expect("data");
        std::fs::write(data.join("db"), "x").expect("file");
        let first = move_aside(&data, &backups, "b1", 3).expect("first");
        let again = move_aside(&data, &backups, "b1", 3).expect("again");
        assert_eq!(first, again);
        assert_eq!(
            std::fs::read_to_string(backups.join("b1").join("db")).expect("kept"),
            "x"
        );
        assert_eq!(move_aside(&data, &backups, "b2", 3).expect("nothing"), None);
    }

    #[test]
    fn a_name_that_leaves_the_backups_directory_is_refused() {
        let root = tempfile::tempdir().expect("tempdir");
        for name in ["", "..", "../x", "a/b"] {
            assert!(matches!(
                move_aside(root.path(), &root.path().join("b"), name, 1),
                Err(Error::BadName(_))
            ));
        }
    }
}
