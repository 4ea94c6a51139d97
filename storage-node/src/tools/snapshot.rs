//! `storage-node snapshot status` and `snapshot restore`: what etcdutl does for bbolt files,
//! for the snapshots Mend's `Maintenance.Snapshot` streams (and `etcdctl snapshot save`
//! stores).
//!
//! Both check the whole file (frames, end checksum, SHA-256 seal) before they report or
//! commit anything. A restore builds one member of a new cluster: its data directory holds the
//! snapshot's keys at their revisions, leases, users, roles and AuthRevision, the new
//! cluster's membership as the only configuration ever applied, and the member's identity.
//! It is assembled in a temporary directory beside the target and renamed into place, so a
//! failed restore leaves no data directory behind.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};

use crate::cli;
use crate::entry::{LogId, Membership, StoredMembership};
use crate::server::member::{self, Identity};
use crate::snapshot::{self, Summary};
use crate::store::{Store, StoreConfig};

/// Why a snapshot could not be read or restored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The snapshot file could not be opened.
    #[error("{path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not an intact Mend snapshot.
    #[error("{path}: {source}")]
    Snapshot {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: snapshot::Error,
    },
    /// A flag is wrong.
    #[error(transparent)]
    Flags(#[from] cli::Error),
    /// The target data directory exists (etcdutl refuses it too).
    #[error("data-dir {0:?} exists")]
    DataDirExists(PathBuf),
    /// Building the data directory failed.
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
    /// The engine could not be created.
    #[error("engine: {0}")]
    Store(#[from] crate::backend::Error),
    /// The member's identity could not be written.
    #[error(transparent)]
    Member(#[from] member::Error),
}

/// How `snapshot status` prints (etcdctl's `--write-out`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum WriteOut {
    /// `hash, revision, keys, size` on one line.
    #[default]
    Simple,
    /// A table with a header row.
    Table,
    /// One JSON object.
    Json,
}

/// Flags of `snapshot restore` (etcdutl's names and defaults).
#[derive(Args, Clone, Debug)]
pub struct RestoreArgs {
    /// The snapshot file.
    pub file: PathBuf,
    /// Name of the member being restored; must be in --initial-cluster.
    #[arg(long, default_value = "default")]
    pub name: String,
    /// Directory to create for the member (default: <name>.mend); must not exist.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The new cluster: name=peer-url pairs, comma-separated.
    #[arg(long, default_value = "default=http://localhost:2380")]
    pub initial_cluster: String,
    /// This member's peer URLs, as listed for it in --initial-cluster.
    #[arg(long, default_value = "http://localhost:2380", value_delimiter = ',')]
    pub initial_advertise_peer_urls: Vec<String>,
    /// Token that makes the new cluster's member and cluster IDs unique.
    #[arg(long, default_value = "etcd-cluster")]
    pub initial_cluster_token: String,
}

fn open(path: &Path) -> Result<BufReader<File>, Error> {
    File::open(path)
        .map(|f| BufReader::with_capacity(1 << 20, f))
        .map_err(|source| Error::Open {
            path: path.to_path_buf(),
            source,
        })
}

fn check(path: &Path) -> Result<Summary, Error> {
    snapshot::inspect_file(open(path)?).map_err(|source| Error::Snapshot {
        path: path.to_path_buf(),
        source,
    })
}

/// Checks the snapshot at `path` whole and prints its hash, revision, records and size as
/// etcdctl prints a bbolt snapshot's.
pub fn status(path: &Path, out: WriteOut) -> Result<String, Error> {
    let s = check(path)?;
    let size = human_size(s.total_size);
    Ok(match out {
        WriteOut::Simple => format!("{:x}, {}, {}, {size}\n", s.hash, s.revision, s.total_key),
        WriteOut::Table => {
            let row = [
                format!("{:x}", s.hash),
                s.revision.to_string(),
                s.total_key.to_string(),
                size,
            ];
            table(&["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"], &row)
        }
        WriteOut::Json => format!(
            "{}\n",
            serde_json::to_string(&s).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
        ),
    })
}

/// A size as etcdctl prints it (go-humanize's SI units: `20 kB`, `1.1 GB`).
fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "kB", "MB", "GB", "TB", "PB"];
    if bytes < 10 {
        return format!("{bytes} B");
    }
    let exp = ((bytes as f64).ln() / 1000f64.ln()).floor() as usize;
    let exp = exp.min(UNITS.len() - 1);
    let value = bytes as f64 / 1000f64.powi(exp as i32);
    // go-humanize: rounded to a tenth, shown with one decimal below 10.
    let shown = (value * 10.0 + 0.5).floor() / 10.0;
    if shown < 10.0 {
        format!("{shown:.1} {}", UNITS[exp])
    } else {
        format!("{shown:.0} {}", UNITS[exp])
    }
}

/// etcdctl's table: centred headers (an odd space goes to the right, as in Go's tablewriter),
/// right-aligned cells.
fn table(headers: &[&str], row: &[String]) -> String {
    let widths: Vec<usize> = headers
        .iter()
        .zip(row)
        .map(|(h, c)| h.len().max(c.len()) + 2)
        .collect();
    let rule: String = widths.iter().fold("+".to_string(), |mut s, w| {
        s.push_str(&"-".repeat(*w));
        s.push('+');
        s
    });
    let mut out = format!("{rule}\n|");
    for (h, w) in headers.iter().zip(&widths) {
        let pad = w - h.len();
        out.push_str(&format!(
            "{}{h}{}|",
            " ".repeat(pad / 2),
            " ".repeat(pad - pad / 2)
        ));
    }
    out.push_str(&format!("\n{rule}\n|"));
    for (c, w) in row.iter().zip(&widths) {
        out.push_str(&format!("{c:>width$} |", width = w - 1));
    }
    out.push_str(&format!("\n{rule}\n"));
    out
}

/// Builds one member of a new cluster from the snapshot, as `etcdutl snapshot restore` does;
/// returns what it restored.
pub fn restore(args: &RestoreArgs) -> Result<String, Error> {
    let members = cli::initial_members(
        &args.name,
        &args.initial_cluster,
        &args.initial_advertise_peer_urls,
    )?;
    let target = args
        .data_dir
        .clone()
        .unwrap_or_else(|| cli::default_data_dir(&args.name));
    if target.exists() {
        return Err(Error::DataDirExists(target));
    }

    let by_id = member::new_cluster(&members, &args.initial_cluster_token);
    let identity = Identity {
        member_id: cli::member_id(&members[&args.name], &args.initial_cluster_token),
        cluster_id: cli::cluster_id(by_id.keys().copied()),
    };
    let membership = first_membership(by_id);

    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "member".into());
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let building = parent.join(format!(".{name}.restoring"));
    let io = |action, path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io {
            action,
            path,
            source,
        }
    };
    std::fs::create_dir_all(&parent).map_err(io("create", &parent))?;
    if building.exists() {
        // Left by a restore that was killed: nothing in it was ever used.
        std::fs::remove_dir_all(&building).map_err(io("remove", &building))?;
    }
    std::fs::create_dir(&building).map_err(io("create", &building))?;
    let summary = match build(&args.file, &building, &membership, identity) {
        Ok(summary) => summary,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&building);
            return Err(e);
        }
    };
    std::fs::rename(&building, &target).map_err(io("rename into place", &target))?;
    File::open(&parent)
        .and_then(|d| d.sync_all())
        .map_err(io("sync", &parent))?;
    Ok(format!(
        "restored snapshot {} (revision {}, {} keys, AuthRevision {}) into {} as member {:x} \
         of cluster {:x}\n",
        args.file.display(),
        summary.revision,
        summary.key_count,
        summary.auth_revision,
        target.display(),
        identity.member_id,
        identity.cluster_id
    ))
}

/// The configuration a new cluster's bootstrap applies first: every initial member a voter,
/// at the entry `Raft::initialize` writes (openraft's index 0, term 0; the engine's index 1).
fn first_membership(members: BTreeMap<u64, crate::entry::Member>) -> StoredMembership {
    StoredMembership {
        log_id: LogId { term: 0, index: 1 },
        membership: Membership {
            configs: vec![members.keys().copied().collect()],
            members,
        },
    }
}

/// Restores the file into `dir` in one pass (the install checks the frames and the seal
/// before it commits) and writes the identity; returns the restored engine's status.
fn build(
    file: &Path,
    dir: &Path,
    membership: &StoredMembership,
    identity: Identity,
) -> Result<crate::store::Status, Error> {
    let store = Store::open(dir, StoreConfig::default())?;
    store
        .restore_snapshot(open(file)?, membership)
        .map_err(|source| Error::Snapshot {
            path: file.to_path_buf(),
            source,
        })?;
    store.sync()?;
    let status = store.status();
    drop(store);
    member::write_identity(dir, identity)?;
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_print_as_etcdctl_prints_them() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(20480), "20 kB");
        assert_eq!(human_size(1_100_000_000), "1.1 GB");
        assert_eq!(human_size(25_165_824), "25 MB");
        assert_eq!(human_size(1_000_000_000), "1.0 GB");
    }

    #[test]
    fn the_table_matches_etcdctl_layout() {
        let row = [
            "4ad39e5b".to_string(),
            "3".to_string(),
            "6".to_string(),
            "20 kB".to_string(),
        ];
        let expected = "\
+----------+----------+------------+------------+
|   HASH   | REVISION | TOTAL KEYS | TOTAL SIZE |
+----------+----------+------------+------------+
| 4ad39e5b |        3 |          6 |      20 kB |
+----------+----------+------------+------------+
";
        assert_eq!(
            table(&["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"], &row),
            expected
        );
        // A 7-digit hash: the odd space of the centred header goes to the right.
        let row = [
            "8472d91".to_string(),
            "2".into(),
            "5".into(),
            "544 B".into(),
        ];
        let header = table(&["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"], &row);
        assert!(header.contains("\n|  HASH   | REVISION |"), "{header}");
    }
}
