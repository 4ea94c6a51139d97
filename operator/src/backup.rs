//! Backups of a cluster to an object store (`spec.backup`) and the restore of a new cluster
//! from one (`spec.bootstrap.fromBackup`).
//!
//! A backup is a snapshot of one healthy, caught-up member (storage-node's `Snapshot`, what
//! `etcdctl snapshot save` stores), streamed to a local file, checked whole (its seal and every
//! frame, as `storage-node snapshot status` does) and only then uploaded, beside a small JSON
//! record of what it holds. A backup is in the store once its record is: the record is written
//! after the snapshot, and deleted before it, so a listing never shows a backup that is not
//! all there. Restoring downloads the snapshot, checks its size and SHA-256 against the record
//! and its seal, then builds every member from it (`storage-node snapshot restore`).
//!
//! When a backup is due is decided from values ([`decide`], [`record`], [`prune`]), as
//! scheduled defragmentation is; the drivers run the backup itself ([`take`]) in the
//! background, so a long upload does not hold the healing loop up, and record the outcome in
//! `status.backup` when it ends. An operator that dies mid-backup finds the backup still due
//! and takes it again; an upload it left unfinished was never completed, so no one sees it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crds::{BackupRecord, BackupRetention, BackupStatus, BackupStore};
use futures_util::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use sha2::Digest;

use crate::detector::Round;
use crate::healing::Note;
use crate::maintenance::Schedule;
use crate::members::{Credentials, Members};

/// The annotation whose every new value asks for a backup now.
pub const REQUEST_ANNOTATION: &str = "mend.dev/backup";

/// Failed attempts in a row after which a due backup is given up until the next one.
pub const ATTEMPTS: u32 = 3;

/// What a snapshot object's key ends with; its record's key is the same with [`RECORD`].
const SNAPSHOT: &str = ".snapshot";
const RECORD: &str = ".json";

/// Upload parts (S3 asks at least 5 MiB of every part but the last).
const PART: usize = 16 << 20;

/// What is wrong with `spec.backup` and `spec.bootstrap`; `None` when they are absent or
/// valid. `local` says whether the cluster runs under `operator local` (the only place a
/// directory or a file can be used).
pub fn spec_problem(spec: &crds::StorageClusterSpec, local: bool) -> Option<String> {
    if let Some(backup) = &spec.backup {
        if let Err(why) = Schedule::parse(&backup.schedule) {
            return Some(format!("spec.backup.schedule: {why}"));
        }
        if let Some(why) = store_problem(&backup.store, local) {
            return Some(format!("spec.backup.store: {why}"));
        }
        if let Some(age) = &backup.retention.max_age
            && let Err(why) = max_age(age)
        {
            return Some(format!("spec.backup.retention.maxAge: {why}"));
        }
        if backup.retention.count == 0 {
            return Some("spec.backup.retention.count must be at least 1".to_string());
        }
    }
    let from = spec.bootstrap.as_ref()?.from_backup.as_ref()?;
    if !local {
        return Some(
            "spec.bootstrap.fromBackup is not supported on Kubernetes yet (operator local \
             restores from a backup): remove it, or restore locally and move the data"
                .to_string(),
        );
    }
    match (&from.store, &from.file) {
        (Some(store), None) => {
            store_problem(store, local).map(|why| format!("spec.bootstrap.fromBackup.store: {why}"))
        }
        (None, Some(_)) if local => None,
        (None, Some(_)) => Some(
            "spec.bootstrap.fromBackup.file is for operator local only: name a store".to_string(),
        ),
        _ => Some("spec.bootstrap.fromBackup needs exactly one of store and file".to_string()),
    }
}

fn store_problem(store: &BackupStore, local: bool) -> Option<String> {
    match (&store.s3, &store.directory) {
        (Some(s3), None) => s3
            .bucket
            .is_empty()
            .then(|| "s3.bucket must not be empty".to_string()),
        (None, Some(_)) if local => None,
        (None, Some(_)) => Some("a directory is for operator local only: use s3".to_string()),
        _ => Some("exactly one of s3 and directory must be set".to_string()),
    }
}

/// Reads `spec.backup.retention.maxAge`: a count of minutes, hours or days.
pub fn max_age(text: &str) -> Result<SignedDuration, String> {
    let bad = || format!("{text:?} is not a count of minutes, hours or days (such as 168h or 30d)");
    let unit = text.chars().last().ok_or_else(bad)?;
    let digits = &text[..text.len() - unit.len_utf8()];
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let count: i64 = digits.parse().map_err(|_| bad())?;
    let minutes = match unit {
        'm' => 1,
        'h' => 60,
        'd' => 24 * 60,
        _ => return Err(bad()),
    };
    count
        .checked_mul(minutes * 60)
        .map(SignedDuration::from_secs)
        .ok_or_else(bad)
}

/// S3 credentials (from the Secret `credentialsSecretRef` names).
#[derive(Clone, Debug, Default)]
pub struct S3Credentials {
    /// `accessKeyID`.
    pub access_key_id: String,
    /// `secretAccessKey`.
    pub secret_access_key: String,
    /// `sessionToken`, when given.
    pub session_token: Option<String>,
}

/// A store of backups: an object store and the prefix of this cluster's backups in it.
#[derive(Clone, Debug)]
pub struct Store {
    objects: Arc<dyn ObjectStore>,
    prefix: Key,
    /// Where it is, in words (`s3://bucket/prefix`, a directory).
    pub location: String,
}

/// Why a store could not be used, in words.
pub type StoreError = String;

impl Store {
    /// The store `spec` names; `default_prefix` is the prefix when `s3.prefix` is not set.
    /// Without `credentials`, S3 credentials come from the operator's environment
    /// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, or a web identity).
    pub fn open(
        spec: &BackupStore,
        default_prefix: &str,
        credentials: Option<&S3Credentials>,
    ) -> Result<Store, StoreError> {
        if let Some(dir) = &spec.directory {
            std::fs::create_dir_all(dir).map_err(|e| format!("{dir}: {e}"))?;
            let objects = object_store::local::LocalFileSystem::new_with_prefix(dir)
                .map_err(|e| format!("{dir}: {e}"))?;
            return Ok(Store {
                objects: Arc::new(objects),
                prefix: Key::default(),
                location: dir.clone(),
            });
        }
        let s3 = spec
            .s3
            .as_ref()
            .ok_or_else(|| "the store names neither s3 nor a directory".to_string())?;
        let mut builder = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(&s3.bucket)
            .with_region(s3.region.as_deref().unwrap_or("us-east-1"))
            .with_retry(object_store::RetryConfig {
                max_retries: 3,
                retry_timeout: Duration::from_secs(60),
                ..Default::default()
            });
        if let Some(endpoint) = &s3.endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        if let Some(c) = credentials {
            builder = builder
                .with_access_key_id(&c.access_key_id)
                .with_secret_access_key(&c.secret_access_key);
            if let Some(token) = &c.session_token {
                builder = builder.with_token(token);
            }
        }
        let objects = builder
            .build()
            .map_err(|e| format!("s3://{}: {e}", s3.bucket))?;
        let prefix = s3.prefix.as_deref().unwrap_or(default_prefix);
        let prefix =
            Key::parse(prefix.trim_matches('/')).map_err(|e| format!("prefix {prefix:?}: {e}"))?;
        Ok(Store {
            objects: Arc::new(objects),
            location: format!("s3://{}/{prefix}", s3.bucket),
            prefix,
        })
    }

    fn key(&self, name: &str) -> Key {
        self.prefix.clone().join(name)
    }

    fn record_key(snapshot: &str) -> Key {
        Key::from(format!(
            "{}{RECORD}",
            snapshot.strip_suffix(SNAPSHOT).unwrap_or(snapshot)
        ))
    }

    /// Every backup in the store, oldest first.
    pub async fn list(&self) -> Result<Vec<BackupRecord>, StoreError> {
        let prefix = (!self.prefix.as_ref().is_empty()).then_some(&self.prefix);
        let mut listing = self.objects.list(prefix);
        let mut keys = Vec::new();
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|e| format!("listing {}: {e}", self.location))?;
            // Only this prefix's own records, not those of a longer prefix beside it.
            if meta.location.as_ref().ends_with(RECORD)
                && meta.location.prefix_matches(&self.prefix)
                && meta.location.parts().count() == self.prefix.parts().count() + 1
            {
                keys.push(meta.location);
            }
        }
        let mut records = Vec::with_capacity(keys.len());
        for key in keys {
            let bytes = self
                .objects
                .get(&key)
                .await
                .map_err(|e| format!("reading {key}: {e}"))?
                .bytes()
                .await
                .map_err(|e| format!("reading {key}: {e}"))?;
            let record: BackupRecord = serde_json::from_slice(&bytes)
                .map_err(|e| format!("{key} is not a backup record: {e}"))?;
            records.push(record);
        }
        records.sort_by(|a, b| (&a.time, &a.key).cmp(&(&b.time, &b.key)));
        Ok(records)
    }

    /// Uploads the checked snapshot `file` as a backup described by `record` (whose `key` is
    /// the snapshot's), then its record.
    async fn upload(&self, file: &Path, record: &BackupRecord) -> Result<(), StoreError> {
        use tokio::io::AsyncReadExt;
        let key = Key::from(record.key.as_str());
        let failed = |e: &dyn std::fmt::Display| format!("uploading {key}: {e}");
        let upload = self
            .objects
            .put_multipart(&key)
            .await
            .map_err(|e| failed(&e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART);
        let mut input = tokio::fs::File::open(file).await.map_err(|e| failed(&e))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = match input.read(&mut buf).await {
                Ok(n) => n,
                Err(e) => {
                    let _ = writer.abort().await;
                    return Err(failed(&e));
                }
            };
            if n == 0 {
                break;
            }
            if let Err(e) = writer.wait_for_capacity(4).await {
                let _ = writer.abort().await;
                return Err(failed(&e));
            }
            writer.write(&buf[..n]);
        }
        writer.finish().await.map_err(|e| failed(&e))?;
        let json = serde_json::to_vec_pretty(record).map_err(|e| failed(&e))?;
        self.objects
            .put(&Store::record_key(&record.key), PutPayload::from(json))
            .await
            .map_err(|e| failed(&e))?;
        Ok(())
    }

    /// Deletes a backup: its record first (it is no longer listed), then the snapshot.
    pub async fn delete(&self, record: &BackupRecord) -> Result<(), StoreError> {
        let delete = async |key: Key| match self.objects.delete(&key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(format!("deleting {key}: {e}")),
        };
        delete(Store::record_key(&record.key)).await?;
        delete(Key::from(record.key.as_str())).await
    }

    /// The backup `key`, or the newest when `None`.
    pub async fn find(&self, key: Option<&str>) -> Result<BackupRecord, StoreError> {
        let records = self.list().await?;
        match key {
            None => records
                .into_iter()
                .next_back()
                .ok_or_else(|| format!("{} holds no backup", self.location)),
            Some(key) => records
                .into_iter()
                .find(|r| r.key == key)
                .ok_or_else(|| format!("{} holds no backup {key:?}", self.location)),
        }
    }

    /// Downloads the backup `record` into the new file `to`, checking its size and SHA-256
    /// against the record.
    pub async fn download(&self, record: &BackupRecord, to: &Path) -> Result<(), StoreError> {
        use tokio::io::AsyncWriteExt;
        let key = Key::from(record.key.as_str());
        let failed = |e: &dyn std::fmt::Display| format!("downloading {key}: {e}");
        let mut stream = self
            .objects
            .get(&key)
            .await
            .map_err(|e| failed(&e))?
            .into_stream();
        let file = tokio::fs::File::create(to).await.map_err(|e| failed(&e))?;
        let mut file = tokio::io::BufWriter::with_capacity(1 << 20, file);
        let mut hash = sha2::Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| failed(&e))?;
            hash.update(&chunk);
            size += chunk.len() as u64;
            file.write_all(&chunk).await.map_err(|e| failed(&e))?;
        }
        file.flush().await.map_err(|e| failed(&e))?;
        let sha256 = hex(&hash.finalize());
        if size != record.size || sha256 != record.sha256 {
            return Err(format!(
                "{key} is damaged: {size} bytes with SHA-256 {sha256}, but its record says {} \
                 bytes with {}",
                record.size, record.sha256
            ));
        }
        Ok(())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Why no backup may be taken now: a heal runs (it replaces members' data), or the members
/// diverged (which member holds the right data is what the heal settles).
pub fn held(findings: &[crate::detector::Finding], healing: bool) -> Option<String> {
    if healing {
        return Some("a heal is under way".into());
    }
    crate::status::divergence(findings).map(|(_, why)| format!("the cluster diverged: {why}"))
}

/// What a pass does about backups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Nothing is due (or a backup runs).
    Idle,
    /// Take a backup from this member now.
    Take(String),
    /// A backup is due but may not be taken now: why.
    Wait(String),
}

/// Decides, at `now`, what to do given `schedule`, the status recorded last (`None`: never),
/// `request` (the `mend.dev/backup` annotation), `round` (this pass's probe) and `held` (why
/// the cluster may not be backed up now: it diverged or a heal runs). `running`: a backup is
/// being taken (its outcome is recorded when it ends; nothing new starts meanwhile).
pub fn decide(
    schedule: &Schedule,
    previous: Option<&BackupStatus>,
    request: Option<&str>,
    round: &Round,
    held: Option<String>,
    running: bool,
    now: Timestamp,
) -> (BackupStatus, Next) {
    let mut status = previous.cloned().unwrap_or_default();
    status.next_schedule_time = schedule.next(now).map(Time);
    match status.last_schedule_time.as_ref().map(|t| t.0) {
        // First read of the schedule: it counts from now.
        None => status.last_schedule_time = Some(Time(schedule.latest(now).unwrap_or(now))),
        Some(last) if !status.active => {
            if let Some(due) = schedule.latest(now).filter(|due| *due > last) {
                status.last_schedule_time = Some(Time(due));
                status.active = true;
            }
        }
        Some(_) => {}
    }
    if let Some(request) = request
        && status.last_request.as_deref() != Some(request)
    {
        status.last_request = Some(request.to_string());
        status.active = true;
    }
    if !status.active || running {
        status.waiting = None;
        return (status, Next::Idle);
    }
    let next = match held.map_or_else(|| choose(round), Err) {
        Ok(member) => Next::Take(member),
        Err(why) => Next::Wait(why),
    };
    status.waiting = match &next {
        Next::Wait(why) => Some(why.clone()),
        _ => None,
    };
    (status, next)
}

/// The member to take a backup from: one that answers, votes and has applied as far as any
/// member has, a follower rather than the leader (whose disk serves every write); `Err` says
/// why there is none.
pub fn choose(round: &Round) -> Result<String, String> {
    let voters = || {
        round
            .members
            .iter()
            .filter(|m| m.reachable && !m.is_learner)
    };
    match round.members.iter().filter(|m| m.is_leader).count() {
        1 => {}
        0 => return Err("no member leads".to_string()),
        n => return Err(format!("{n} members claim to lead")),
    }
    let applied = voters().map(|m| m.applied_index).max().unwrap_or(0);
    let caught_up = || voters().filter(|m| m.applied_index == applied);
    caught_up()
        .find(|m| !m.is_leader)
        .or_else(|| caught_up().next())
        .map(|m| m.name.clone())
        .ok_or_else(|| "no member answers".to_string())
}

/// A backup running in the background.
pub type Job = tokio::task::JoinHandle<Outcome>;

/// The drivers' part of a pass before they act: records the backup `job` ran when it has
/// ended, then [`decide`]s. Returns the status to record, what to do (the driver starts a
/// [`Job`] of [`take`] on [`Next::Take`]) and what to tell.
pub async fn pass(
    job: &mut Option<Job>,
    schedule: &Schedule,
    previous: Option<&BackupStatus>,
    request: Option<&str>,
    round: &Round,
    held: Option<String>,
) -> (BackupStatus, Next, Vec<Note>) {
    let now = Timestamp::now();
    let mut notes = Vec::new();
    let mut recorded = previous.cloned();
    if let Some(ended) = job.take_if(|job| job.is_finished()) {
        let outcome = ended
            .await
            .unwrap_or_else(|e| Err(format!("the backup task failed: {e}")));
        let status = recorded.get_or_insert_default();
        notes.push(match (record(status, outcome, now), &status.last_backup) {
            (Recorded::Stored, Some(stored)) => Note::backup(
                false,
                "BackedUp",
                format!(
                    "stored {} ({} bytes, revision {}, from {}); {} backups in the store",
                    stored.key,
                    stored.size,
                    stored.revision,
                    stored.member,
                    status.stored.map_or("?".to_string(), |n| n.to_string())
                ),
            ),
            (recorded, _) => Note::backup(
                true,
                "BackupFailed",
                format!(
                    "{}{}",
                    status.last_failure.as_deref().unwrap_or("failed"),
                    if recorded == Recorded::Failed {
                        format!("; given up after {ATTEMPTS} attempts until the next one is due")
                    } else {
                        "; trying again in the next pass".to_string()
                    }
                ),
            ),
        });
    }
    let (status, next) = decide(
        schedule,
        recorded.as_ref(),
        request,
        round,
        held,
        job.is_some(),
        now,
    );
    if let Next::Wait(why) = &next
        && recorded.and_then(|r| r.waiting).as_ref() != Some(why)
    {
        notes.push(Note::backup(
            false,
            "BackupWaiting",
            format!("the backup due waits: {why}"),
        ));
    }
    (status, next, notes)
}

/// How a backup ended, as [`record`] tells it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// It is stored.
    Stored,
    /// It failed; it is tried again in the next pass.
    Retrying,
    /// It failed [`ATTEMPTS`] times in a row: given up until the next one is due.
    Failed,
}

/// What a backup that ended did: the backup stored, and how many backups the store holds
/// after pruning (`None` when pruning failed).
pub type Outcome = Result<(BackupRecord, Option<u32>), String>;

/// Records in `status` how the backup due ended.
pub fn record(status: &mut BackupStatus, outcome: Outcome, now: Timestamp) -> Recorded {
    match outcome {
        Ok((stored, count)) => {
            status.active = false;
            status.waiting = None;
            status.failures = 0;
            status.last_failure = None;
            status.last_successful_time = Some(Time(now));
            status.last_backup = Some(stored);
            if count.is_some() {
                status.stored = count;
            }
            Recorded::Stored
        }
        Err(why) => {
            status.failures += 1;
            status.last_failure = Some(why);
            if status.failures >= ATTEMPTS {
                status.active = false;
                status.failures = 0;
                Recorded::Failed
            } else {
                Recorded::Retrying
            }
        }
    }
}

/// The backups of `records` (oldest first) that `retention` no longer keeps at `now`: all but
/// the newest `count`, and those older than `maxAge`; never the newest.
pub fn prune(
    records: &[BackupRecord],
    retention: &BackupRetention,
    now: Timestamp,
) -> Vec<BackupRecord> {
    let age = retention.max_age.as_deref().and_then(|a| max_age(a).ok());
    let keep = (retention.count.max(1)) as usize;
    let newest_first = records.iter().rev().enumerate();
    newest_first
        .filter(|(i, r)| {
            *i > 0
                && (*i >= keep
                    || age.is_some_and(|age| {
                        r.time
                            .parse::<Timestamp>()
                            .is_ok_and(|t| now.duration_since(t) > age)
                    }))
        })
        .map(|(_, r)| r.clone())
        .collect()
}

/// The key a backup taken at `time` of `revision` gets under `store`'s prefix.
fn snapshot_name(time: Timestamp, revision: i64) -> String {
    format!(
        "{}-rev{revision}{SNAPSHOT}",
        time.strftime("%Y%m%dT%H%M%S%.3fZ")
    )
}

/// Takes a backup of member `member` (at `endpoint`) into `store`, then prunes the store to
/// `retention`. The snapshot is kept in a temporary file under `scratch` until it is stored.
pub async fn take(
    members: &dyn Members,
    member: &str,
    endpoint: String,
    credentials: Credentials,
    store: &Store,
    retention: &BackupRetention,
    scratch: &Path,
) -> Outcome {
    let time = Timestamp::now();
    let dir = tempfile::Builder::new()
        .prefix("mend-backup-")
        .tempdir_in(scratch)
        .map_err(|e| format!("a scratch directory in {}: {e}", scratch.display()))?;
    let file = dir.path().join("snapshot");
    let saved = members
        .snapshot(endpoint, credentials, file.clone())
        .await
        .map_err(|e| e.to_string())?;
    let summary = check(&file).await.map_err(|why| {
        format!("the snapshot {member} streamed is not whole ({why}); nothing was stored")
    })?;
    let record = BackupRecord {
        key: store
            .key(&snapshot_name(time, summary.revision))
            .to_string(),
        time: time.to_string(),
        member: member.to_string(),
        revision: summary.revision,
        size: saved.size,
        sha256: saved.sha256,
    };
    store.upload(&file, &record).await?;
    tracing::info!(key = %record.key, size = record.size, revision = record.revision, "backup stored");
    let count = match prune_store(store, retention, Timestamp::now()).await {
        Ok(count) => Some(count),
        Err(why) => {
            tracing::warn!(%why, "pruning backups failed; they are pruned after the next one");
            None
        }
    };
    Ok((record, count))
}

/// Deletes what `retention` no longer keeps; returns how many backups are left.
async fn prune_store(
    store: &Store,
    retention: &BackupRetention,
    now: Timestamp,
) -> Result<u32, StoreError> {
    let records = store.list().await?;
    let gone = prune(&records, retention, now);
    for record in &gone {
        store.delete(record).await?;
        tracing::info!(key = %record.key, "backup pruned");
    }
    Ok((records.len() - gone.len()) as u32)
}

/// Checks the snapshot file at `path` whole (seal and frames).
pub async fn check(path: &Path) -> Result<storage_node::snapshot::Summary, String> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        storage_node::snapshot::inspect_file(std::io::BufReader::with_capacity(1 << 20, file))
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Fetches the backup a new cluster starts from into `dir` (made if missing), checked whole:
/// the file named by `fromBackup.file`, or the backup from the store. Returns the file and
/// what it is.
pub async fn fetch(
    from: &crds::FromBackup,
    default_prefix: &str,
    credentials: Option<&S3Credentials>,
    dir: &Path,
) -> Result<(PathBuf, BackupRecord), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let (file, record) = match (&from.file, &from.store) {
        (Some(file), _) => {
            let path = PathBuf::from(file);
            let bytes = tokio::fs::read(&path)
                .await
                .map_err(|e| format!("{file}: {e}"))?;
            let record = BackupRecord {
                key: file.clone(),
                size: bytes.len() as u64,
                sha256: hex(&sha2::Sha256::digest(&bytes)),
                ..BackupRecord::default()
            };
            (path, record)
        }
        (None, Some(spec)) => {
            let store = Store::open(spec, default_prefix, credentials)?;
            let record = store.find(from.key.as_deref()).await?;
            let to = dir.join("restore.snapshot");
            store.download(&record, &to).await?;
            (to, record)
        }
        (None, None) => return Err("fromBackup names neither a store nor a file".to_string()),
    };
    let summary = check(&file)
        .await
        .map_err(|why| format!("the backup {} is not whole: {why}", record.key))?;
    Ok((
        file,
        BackupRecord {
            revision: summary.revision,
            ..record
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detector::Observation;

    fn member(name: &str, leader: bool, applied: u64) -> Observation {
        Observation {
            name: name.to_string(),
            member: 1,
            reachable: true,
            is_leader: leader,
            applied_index: applied,
            ..Observation::unreachable(name, "")
        }
    }

    fn at(text: &str) -> Timestamp {
        text.parse().expect("timestamp")
    }

    fn backup(time: &str) -> BackupRecord {
        BackupRecord {
            key: format!("c/{time}"),
            time: time.to_string(),
            ..BackupRecord::default()
        }
    }

    #[test]
    fn a_follower_that_applied_as_far_as_any_member_is_chosen() {
        let round = Round {
            members: vec![
                member("a", true, 10),
                member("b", false, 9),
                member("c", false, 10),
            ],
        };
        assert_eq!(choose(&round), Ok("c".to_string()));
        let behind = Round {
            members: vec![member("a", true, 10), member("b", false, 9)],
        };
        assert_eq!(choose(&behind), Ok("a".to_string()));
        let leaderless = Round {
            members: vec![member("a", false, 10), member("b", false, 10)],
        };
        assert_eq!(choose(&leaderless), Err("no member leads".to_string()));
    }

    #[test]
    fn a_schedule_counts_from_its_first_reading_and_a_request_is_taken_once() {
        let schedule = Schedule::parse("0 * * * *").expect("schedule");
        let round = Round {
            members: vec![member("a", true, 1), member("b", false, 1)],
        };
        let (first, next) = decide(
            &schedule,
            None,
            None,
            &round,
            None,
            false,
            at("2026-12-01T10:30:00Z"),
        );
        assert_eq!(next, Next::Idle);
        assert!(!first.active);
        let (due, next) = decide(
            &schedule,
            Some(&first),
            None,
            &round,
            None,
            false,
            at("2026-12-01T11:00:01Z"),
        );
        assert_eq!(next, Next::Take("b".to_string()));
        // Still due while it is running: nothing new starts.
        let (running, next) = decide(
            &schedule,
            Some(&due),
            None,
            &round,
            None,
            true,
            at("2026-12-01T11:00:02Z"),
        );
        assert_eq!(next, Next::Idle);
        assert!(running.active);
        let mut done = running.clone();
        let stored = (backup("2026-12-01T11:00:02Z"), Some(1));
        assert_eq!(
            record(&mut done, Ok(stored), at("2026-12-01T11:00:03Z")),
            Recorded::Stored
        );
        assert!(!done.active);
        let (idle, next) = decide(
            &schedule,
            Some(&done),
            None,
            &round,
            None,
            false,
            at("2026-12-01T11:30:00Z"),
        );
        assert_eq!(next, Next::Idle);
        let (asked, next) = decide(
            &schedule,
            Some(&idle),
            Some("now"),
            &round,
            None,
            false,
            at("2026-12-01T11:30:00Z"),
        );
        assert_eq!(next, Next::Take("b".to_string()));
        let mut done = asked.clone();
        record(
            &mut done,
            Ok((backup("2026-12-01T11:30:01Z"), Some(2))),
            at("2026-12-01T11:30:01Z"),
        );
        let (again, next) = decide(
            &schedule,
            Some(&done),
            Some("now"),
            &round,
            None,
            false,
            at("2026-12-01T11:31:00Z"),
        );
        assert_eq!(
            next,
            Next::Idle,
            "the same request value is not taken twice"
        );
        assert_eq!(again.last_request.as_deref(), Some("now"));
    }

    #[test]
    fn a_held_backup_waits_and_failures_give_up_after_three_attempts() {
        let schedule = Schedule::parse("0 * * * *").expect("schedule");
        let round = Round {
            members: vec![member("a", true, 1)],
        };
        let first = BackupStatus {
            last_schedule_time: Some(Time(at("2026-12-01T10:00:00Z"))),
            ..BackupStatus::default()
        };
        let (waiting, next) = decide(
            &schedule,
            Some(&first),
            None,
            &round,
            Some("a heal is under way".to_string()),
            false,
            at("2026-12-01T11:00:00Z"),
        );
        assert_eq!(next, Next::Wait("a heal is under way".to_string()));
        assert_eq!(waiting.waiting.as_deref(), Some("a heal is under way"));
        let mut status = waiting;
        let now = at("2026-12-01T11:01:00Z");
        assert_eq!(
            record(&mut status, Err("x".into()), now),
            Recorded::Retrying
        );
        assert_eq!(
            record(&mut status, Err("y".into()), now),
            Recorded::Retrying
        );
        assert_eq!(record(&mut status, Err("z".into()), now), Recorded::Failed);
        assert!(!status.active);
        assert_eq!(status.last_failure.as_deref(), Some("z"));
        let (_, next) = decide(
            &schedule,
            Some(&status),
            None,
            &round,
            None,
            false,
            at("2026-12-01T11:30:00Z"),
        );
        assert_eq!(next, Next::Idle, "given up until the next scheduled time");
    }

    #[test]
    fn retention_keeps_the_newest_count_and_drops_the_too_old_but_never_the_newest() {
        let records: Vec<_> = [
            "2026-11-01T00:00:00Z",
            "2026-11-20T00:00:00Z",
            "2026-11-29T00:00:00Z",
            "2026-11-30T00:00:00Z",
        ]
        .into_iter()
        .map(backup)
        .collect();
        let now = at("2026-12-01T00:00:00Z");
        let by_count = BackupRetention {
            count: 2,
            max_age: None,
        };
        let gone: Vec<_> = prune(&records, &by_count, now)
            .into_iter()
            .map(|r| r.time)
            .collect();
        assert_eq!(gone, ["2026-11-20T00:00:00Z", "2026-11-01T00:00:00Z"]);
        let by_age = BackupRetention {
            count: 10,
            max_age: Some("7d".into()),
        };
        let gone: Vec<_> = prune(&records, &by_age, now)
            .into_iter()
            .map(|r| r.time)
            .collect();
        assert_eq!(gone, ["2026-11-20T00:00:00Z", "2026-11-01T00:00:00Z"]);
        let all_old = BackupRetention {
            count: 10,
            max_age: Some("1h".into()),
        };
        assert_eq!(prune(&records, &all_old, now).len(), 3, "the newest stays");
    }

    #[test]
    fn max_age_reads_minutes_hours_and_days_and_refuses_the_rest() {
        assert_eq!(max_age("90m"), Ok(SignedDuration::from_secs(5400)));
        assert_eq!(max_age("2d"), Ok(SignedDuration::from_hours(48)));
        for bad in ["", "h", "7w", "-1d", "1.5h"] {
            assert!(max_age(bad).is_err(), "{bad:?}");
        }
    }
}
