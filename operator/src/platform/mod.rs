//! Where members live: the seam between the healing logic and processes or pods. The
//! executor asks a platform to stop a member, back up and wipe its data, start it again empty
//! to join the cluster, and make or retire a member when the cluster changes size; everything
//! else goes through the etcd API.

pub mod kube;
pub mod local;

/// Why a platform operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No member has that name.
    #[error("no member named {0}")]
    UnknownMember(String),
    /// A file or process operation failed.
    #[error(transparent)]
    Io(std::io::Error),
    /// A Kubernetes API call failed.
    #[error("{object}: {source}")]
    Kube {
        /// The object it was about.
        object: String,
        /// The API error.
        #[source]
        source: Box<::kube::Error>,
    },
    /// A wait ran out of time.
    #[error("timed out waiting for {0}")]
    Timeout(String),
    /// A member with TLS has no certificate issued yet (its pod would not start).
    #[error("no certificate issued yet for member {0}")]
    NoCertificate(String),
    /// Moving a member's data aside failed.
    #[error("backup failed: {0}")]
    BackupFailed(String),
}

/// What is wrong with `spec.autoCompaction`, in storage-node's (etcd's) words; `None` when
/// it is absent or valid. Both platforms pass it to every member as flags.
pub fn auto_compaction_problem(spec: &crds::StorageClusterSpec) -> Option<String> {
    let compaction = spec.auto_compaction.as_ref()?;
    let retention = compaction.retention.as_str();
    if let Err(why) = storage_node::compactor::from_flags(compaction.mode.flag(), retention) {
        return Some(format!("spec.autoCompaction: {why}"));
    }
    (compaction.mode == crds::CompactionMode::Revision && retention.parse::<u64>().is_err()).then(
        || {
            format!(
                "spec.autoCompaction: with mode Revision the retention is a count of revisions, \
                 not {retention:?}"
            )
        },
    )
}

/// Result of platform operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An operation that may take longer than one look: done, or still under way (the caller
/// asks again later; asking again never starts it twice).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op<T> {
    /// Finished, with its result.
    Done(T),
    /// Under way: what it waits for.
    InProgress(String),
}

/// Operations on members' processes and data. Each is idempotent: a resumed heal repeats the
/// step it was in.
pub trait Platform: Send {
    /// Stops member `name` (cleanly when possible); stopping a stopped member is a no-op.
    fn stop(&mut self, name: &str) -> impl Future<Output = Result<Op<()>>> + Send;
    /// Whether member `name`'s process or pod is gone.
    fn is_stopped(&mut self, name: &str) -> impl Future<Output = Result<bool>> + Send;
    /// Whether member `name`'s volume can hold the backups kept of it and a fresh copy of
    /// `data_bytes` after its rebuild; `Err` says why not (what to enlarge or lower).
    fn has_room(
        &mut self,
        name: &str,
        data_bytes: u64,
    ) -> impl Future<Output = Result<std::result::Result<(), String>>> + Send;
    /// Moves member `name`'s data aside (the backup) and leaves it empty; returns where the
    /// backup is. With no data left to move, nothing happens (and the answer may be empty).
    fn backup_and_wipe(&mut self, name: &str) -> impl Future<Output = Result<Op<String>>> + Send;
    /// Starts member `name` with empty data to join the existing cluster.
    fn start_joining(&mut self, name: &str) -> impl Future<Output = Result<()>> + Send;
    /// The name the next member added to the cluster gets.
    fn next_member(&self) -> String;
    /// Makes the place of a new member `name` (its name and addresses, with no process or pod
    /// yet); making it again is a no-op.
    fn create(&mut self, name: &str) -> impl Future<Output = Result<Op<()>>> + Send;
    /// Forgets member `name`, removed from the cluster and stopped: its process or pod goes
    /// and its data is kept as backup or deleted as the platform's retention says; returns
    /// what became of the data. A member no longer known is [`Error::UnknownMember`].
    fn retire(&mut self, name: &str) -> impl Future<Output = Result<Op<String>>> + Send;
    /// The peer URL member `name` is reached on.
    fn peer_url(&self, name: &str) -> Result<String>;
    /// The client URL of member `name`.
    fn endpoint(&self, name: &str) -> Result<String>;
}
