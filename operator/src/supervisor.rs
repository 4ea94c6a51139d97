//! `operator local`: one `StorageCluster` run as local `storage-node` processes, with the same
//! probe → detector → planner → executor loop as on Kubernetes.
//!
//! Every tick the supervisor starts members that are not running (first start, crash), turns
//! auth on once members answer, probes them, and heals what the healer decides to heal. The
//! work directory holds all state: members' data, `backups/`, `members.json` (ports),
//! `root-credentials` (`user:password`), `heal.json` (a heal in progress, so a restarted
//! operator finishes it) and `status.json` (the resource's status shape).
//!
//! With `spec.tls` the members serve TLS with certificates from `pki/` (see
//! [`crate::platform::local`]), and a member certificate due for renewal is issued again and
//! its member restarted, one member a tick and only while every member answers and a leader
//! leads, so the cluster keeps its quorum.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crds::{HealingStatus, StorageClusterSpec, StorageClusterStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::detector::Round;
use crate::executor::Progress;
use crate::healer::{Assessment, Healer};
use crate::healing::{self, HealTimes};
use crate::members::{Grpc, Members};
use crate::metrics::HealMetrics;
use crate::platform;
use crate::platform::local::{LocalPlatform, write_json};
use crate::status::{self, MemberView};

/// Why the supervisor cannot go on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The spec cannot run locally.
    #[error("invalid spec: {0}")]
    Spec(String),
    /// A work-directory file could not be read or written.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Starting or stopping members failed.
    #[error(transparent)]
    Platform(#[from] platform::Error),
}

/// Result of supervisor operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How to run one cluster locally.
#[derive(Clone, Debug)]
pub struct Config {
    /// The cluster's name (the resource's `metadata.name`; labels its metrics).
    pub name: String,
    /// The cluster's spec (as in a `StorageCluster`).
    pub spec: StorageClusterSpec,
    /// Where everything is kept.
    pub workdir: PathBuf,
    /// The `storage-node` binary.
    pub storage_node: PathBuf,
    /// Extra flags for every member.
    pub node_args: Vec<String>,
    /// Print the status table when it changes.
    pub print_table: bool,
    /// The `StorageCluster` file the spec came from: read again when it changes, so a user
    /// can change `spec.healing` (pause a heal with `mode: Disabled`, for one) as they would
    /// with `kubectl apply`. `None`: the spec is fixed.
    pub spec_file: Option<PathBuf>,
    /// The resource's annotations (`mend.dev/backup`: each new value asks for a backup now;
    /// `mend.dev/recover-quorum`: approves recovering a lost majority from the member named).
    pub annotations: BTreeMap<String, String>,
}

/// The flags every member starts with: the operator's `--node-arg`s and what the spec asks.
fn node_args(config: &Config) -> Vec<String> {
    config
        .node_args
        .iter()
        .cloned()
        .chain(config.spec.auto_compaction.iter().flat_map(|c| c.flags()))
        .collect()
}

/// What is wrong with `replicas`, when something is.
fn replicas_problem(replicas: i32) -> Option<String> {
    (!(1..=7).contains(&replicas) || replicas % 2 == 0)
        .then(|| format!("replicas must be odd and between 1 and 7, not {replicas}"))
}

/// The user the operator creates and probes as.
pub const ROOT_USER: &str = "root";
/// Bound on every call the supervisor makes to a member.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
const CREDENTIALS_FILE: &str = "root-credentials";
const HEAL_FILE: &str = "heal.json";
/// Present while the members are being built from `spec.bootstrap.fromBackup` (the work
/// directory was new when it was written): until it is gone no member starts.
const RESTORE_FILE: &str = "restoring";
/// Present, naming the member kept, while a lost majority is recovered: from its writing until
/// that member leads a cluster of its own (a restarted operator finishes the recovery).
const QUORUM_FILE: &str = "quorum-recovery";
const STATUS_FILE: &str = "status.json";

/// How long a member a rolling update restarted may stay away before the rollout is reported
/// stalled (`Progressing=False`, `RolloutStalled`).
const ROLL_LIMIT: Duration = Duration::from_secs(5 * 60);

/// How soon to look again while a heal runs (each pass runs at most one step).
const HEAL_PASS: Duration = Duration::from_millis(200);

/// What the supervisor's own parts of a pass (beside the healing loop's) leave for the status.
struct Parts {
    /// A rolling update under way: whether it stalled, and how it stands.
    rollout: Option<(bool, String)>,
    /// Backups, as the pass left them.
    backup: Option<crds::BackupStatus>,
    /// A lost majority, in words.
    quorum_lost: Option<String>,
}

/// One local cluster under supervision.
pub struct Supervisor {
    config: Config,
    platform: LocalPlatform,
    members: Arc<Grpc>,
    healer: Healer,
    credentials: Option<(String, String)>,
    /// The operator's client certificate, with TLS.
    client_cert: Option<crate::client::ClientCert>,
    auth_on: bool,
    /// Why the cluster's auth is not the operator's, when the last bootstrap found so.
    auth_untrusted: Option<String>,
    progress: Option<Progress>,
    status: Option<StorageClusterStatus>,
    views: Vec<MemberView>,
    last_table: String,
    last_times: Option<HealTimes>,
    refused_to_start: Vec<String>,
    metrics: Arc<HealMetrics>,
    /// When the spec file was last read.
    spec_read: Option<std::time::SystemTime>,
    /// The member a rolling update restarted last, and when.
    rolling: Option<(String, std::time::Instant)>,
    /// The backup being taken, in the background.
    backup: Option<tokio::task::JoinHandle<crate::backup::Outcome>>,
}

impl Supervisor {
    /// Opens (or creates) the work directory and its members; nothing starts until
    /// [`Supervisor::tick`].
    pub fn open(config: Config) -> Result<Supervisor> {
        let spec = &config.spec;
        if let Some(problem) = replicas_problem(spec.replicas) {
            return Err(Error::Spec(problem));
        }
        if let Some(problem) = crate::platform::auto_compaction_problem(spec) {
            return Err(Error::Spec(problem));
        }
        if let Some(problem) = crate::maintenance::schedule_problem(spec) {
            return Err(Error::Spec(problem));
        }
        if let Some(problem) = crate::backup::spec_problem(spec, true) {
            return Err(Error::Spec(problem));
        }
        std::fs::create_dir_all(&config.workdir).map_err(|source| Error::File {
            path: config.workdir.clone(),
            source,
        })?;
        let new = !crate::platform::local::recorded(&config.workdir);
        if new
            && spec
                .bootstrap
                .as_ref()
                .is_some_and(|b| b.from_backup.is_some())
        {
            let marker = config.workdir.join(RESTORE_FILE);
            std::fs::write(&marker, b"").map_err(|source| Error::File {
                path: marker,
                source,
            })?;
        }
        let mut platform = LocalPlatform::open(
            config.storage_node.clone(),
            &config.workdir,
            spec.replicas as usize,
            node_args(&config),
        )?;
        platform.set_backup_retention(spec.healing.backup_retention as usize);
        platform.use_tls(spec.tls.is_some())?;
        let client_cert = platform.client_cert()?;
        let credentials = if spec.auth.enabled {
            Some(credentials(&config.workdir)?)
        } else {
            None
        };
        let mut healer = Healer::for_spec(&spec.healing);
        let heal_file = config.workdir.join(HEAL_FILE);
        let progress = match std::fs::read(&heal_file) {
            Ok(bytes) => Some(serde_json::from_slice(&bytes).map_err(|e| Error::File {
                path: heal_file.clone(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            })?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(Error::File {
                    path: heal_file,
                    source,
                });
            }
        };
        let status: Option<StorageClusterStatus> = std::fs::read(config.workdir.join(STATUS_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        if let Some(healing) = status.as_ref().and_then(|s| s.healing.as_ref()) {
            healer.heals = healing.count;
            healer.last_result = healing.last_result.clone();
        }
        Ok(Supervisor {
            config,
            platform,
            members: Arc::new(Grpc::new(CALL_TIMEOUT)),
            healer,
            credentials,
            client_cert,
            auth_on: false,
            auth_untrusted: None,
            progress,
            status,
            views: Vec::new(),
            last_table: String::new(),
            last_times: None,
            refused_to_start: Vec::new(),
            metrics: Arc::default(),
            spec_read: None,
            rolling: None,
            backup: None,
        })
    }

    /// The healing metrics (for `/metrics`).
    pub fn metrics(&self) -> Arc<HealMetrics> {
        self.metrics.clone()
    }

    /// The status written last.
    pub fn status(&self) -> Option<&StorageClusterStatus> {
        self.status.as_ref()
    }

    /// The operator's client certificate, when the members serve TLS.
    pub fn client_cert(&self) -> Option<&crate::client::ClientCert> {
        self.client_cert.as_ref()
    }

    /// The root user's name and password, when auth is configured.
    pub fn credentials(&self) -> Option<&(String, String)> {
        self.credentials.as_ref()
    }

    /// The members' processes (for the demo's restart).
    pub fn platform_mut(&mut self) -> &mut LocalPlatform {
        &mut self.platform
    }

    /// Client URLs of the members, in member order.
    pub fn endpoints(&self) -> Vec<String> {
        self.platform.members.iter().map(|m| m.endpoint()).collect()
    }

    /// Heals run so far (resumed ones included).
    pub fn heals(&self) -> u32 {
        self.healer.heals
    }

    /// Timings of the last heal that succeeded.
    pub fn last_heal_times(&self) -> Option<HealTimes> {
        self.last_times
    }

    /// How often to tick: the probe interval, or at once while a heal runs and is not paused.
    pub fn interval(&self) -> Duration {
        if self.progress.as_ref().is_some_and(|p| p.paused.is_none()) {
            return HEAL_PASS;
        }
        Duration::from_secs(
            self.config
                .spec
                .healing
                .probe_interval_seconds
                .max(1)
                .into(),
        )
    }

    /// One pass: keep members running, turn auth on, run one pass of the healing loop (which
    /// probes, decides and runs at most one step of a heal), record the heal and the status.
    pub async fn tick(&mut self) -> Result<()> {
        self.reload_spec();
        if self.config.workdir.join(RESTORE_FILE).exists() {
            self.restore().await?;
        }
        let recovering = self.quorum_recovery()?;
        if let Some(source) = &recovering
            && !self.platform.is_running(source)
        {
            self.recover_quorum(source).await?;
        }
        // Renewed when due (it is read once a tick: a renewal is no restart for the operator).
        self.client_cert = self.platform.client_cert()?;
        self.keep_running()?;
        self.bootstrap_auth().await;
        let targets = self
            .platform
            .members
            .iter()
            .map(|m| self.platform.target(&m.name))
            .collect::<platform::Result<Vec<_>>>()?;
        let lost = self.refused_to_start.clone();
        let credentials = self.access();
        let pass = healing::pass(
            healing::Cluster {
                name: &self.config.name,
                spec: &self.config.spec,
                targets,
                platform: &mut self.platform,
                members: &*self.members,
                credentials,
                metrics: &self.metrics,
                auth_untrusted: self.auth_untrusted.as_deref(),
                defragmentation: self
                    .status
                    .as_ref()
                    .and_then(|s| s.defragmentation.as_ref()),
            },
            &mut self.healer,
            self.progress.take(),
            &lost,
        )
        .await;
        for note in &pass.notes {
            if note.warning {
                tracing::warn!(reason = note.reason, "{}", note.message);
            } else {
                tracing::info!(reason = note.reason, "{}", note.message);
            }
        }
        if let Some((true, times)) = pass.ended {
            self.last_times = Some(times);
        }
        self.progress = pass.progress;
        if let Some(progress) = &self.progress {
            // The heal now owns the lost member: it is no longer refused, but rebuilt.
            self.refused_to_start
                .retain(|n| !progress.names.values().any(|m| m == n));
        }
        self.save_progress()?;
        let renewed = self.renew_one_certificate(&pass.round)?;
        let rollout = if renewed {
            None
        } else {
            self.roll_one(&pass.round, pass.defragmentation.as_ref())
                .await?
        };
        self.views = self.views_of(&pass.round);
        let held = crate::backup::held(&pass.assessment.findings, self.progress.is_some());
        let backup = self.backup_pass(&pass.round, held).await;
        let quorum_lost = self.quorum_pass(&pass.round, recovering).await?;
        self.write_status(
            &pass.assessment,
            pass.healing,
            pass.defragmentation,
            pass.resize_waits,
            Parts {
                rollout,
                backup,
                quorum_lost,
            },
        )
    }

    /// The member a recovery of a lost majority keeps, while one is under way.
    fn quorum_recovery(&self) -> Result<Option<String>> {
        let path = self.config.workdir.join(QUORUM_FILE);
        match std::fs::read_to_string(&path) {
            Ok(name) => Ok(Some(name.trim().to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(Error::File { path, source }),
        }
    }

    /// Whether a majority of the members is gone for good (`round` shows no leader and their
    /// data is gone); starts the recovery when it is approved, ends one whose member now leads.
    /// Returns what the status says (`None`: no loss).
    async fn quorum_pass(
        &mut self,
        round: &Round,
        recovering: Option<String>,
    ) -> Result<Option<String>> {
        if let Some(source) = recovering {
            if round
                .members
                .iter()
                .any(|m| m.name == source && m.is_leader)
            {
                let path = self.config.workdir.join(QUORUM_FILE);
                std::fs::remove_file(&path).map_err(|source| Error::File { path, source })?;
                tracing::info!(member = %source, "QuorumRecovered: it leads a cluster of its own; the others come back as new members");
                return Ok(None);
            }
            return Ok(Some(format!(
                "recovering a lost majority: {source} restarted as a one-member cluster with \
                 its data"
            )));
        }
        let names = self.platform.names();
        let Some(loss) = crate::quorum::assess(&names, &self.refused_to_start, round) else {
            return Ok(None);
        };
        let mode = self.config.spec.healing.quorum_recovery;
        let approval = self
            .config
            .annotations
            .get(crate::quorum::APPROVAL_ANNOTATION)
            .map(String::as_str);
        let message = loss.message(mode);
        let Some(source) = loss.approved(mode, approval).map(str::to_string) else {
            tracing::warn!(reason = "QuorumLost", "{message}");
            return Ok(Some(message));
        };
        if self.config.spec.healing.mode != crds::HealingMode::Automatic {
            return Ok(Some(format!(
                "{message} (approved, but healing.mode is not Automatic: nothing is changed)"
            )));
        }
        // Right before anything is stopped or moved: the members gone are still without data
        // and the member kept still has its own (this pass's probe named it moments ago).
        if loss.gone.iter().any(|n| self.platform.has_data(n)) || !self.platform.has_data(&source) {
            tracing::warn!(member = %source, "the members' data changed since this pass began; not recovering now");
            return Ok(Some(message));
        }
        tracing::warn!(member = %source, gone = ?loss.gone, "QuorumRecoveryStarted: restarting it as a one-member cluster with its data");
        self.recover_quorum(&source).await?;
        Ok(Some(format!(
            "recovering a lost majority: {source} restarted as a one-member cluster with its data"
        )))
    }

    /// Recovers a lost majority from `source`: records it (a restarted operator goes on),
    /// stops every member, retires the others (what data they kept goes to `backups/`), and
    /// starts `source` once with `--force-new-cluster`. The resize to `spec.replicas` then
    /// brings the others back as new members, one at a time.
    async fn recover_quorum(&mut self, source: &str) -> Result<()> {
        let path = self.config.workdir.join(QUORUM_FILE);
        std::fs::write(&path, source).map_err(|e| Error::File {
            path: path.clone(),
            source: e,
        })?;
        let names = self.platform.names();
        for name in &names {
            self.platform.stop_member(name)?;
        }
        for name in names.iter().filter(|n| *n != source) {
            let kept = platform::Platform::retire(&mut self.platform, name).await?;
            tracing::info!(member = %name, ?kept, "retired for the recovery: it comes back as a new member");
        }
        self.refused_to_start.clear();
        self.progress = None;
        self.save_progress()?;
        self.platform.start_forced(source)?;
        Ok(())
    }

    /// Builds every member from `spec.bootstrap.fromBackup` (the work directory is new): the
    /// backup is fetched and checked whole, then each member without data is restored from it,
    /// and only then may members start.
    async fn restore(&mut self) -> Result<()> {
        let Some(from) = self
            .config
            .spec
            .bootstrap
            .as_ref()
            .and_then(|b| b.from_backup.clone())
        else {
            return Err(Error::Spec(
                "the work directory is marked for a restore, but spec.bootstrap.fromBackup is \
                 gone"
                    .to_string(),
            ));
        };
        let scratch = tempfile::Builder::new()
            .prefix("restore-")
            .tempdir_in(&self.config.workdir)
            .map_err(|source| Error::File {
                path: self.config.workdir.clone(),
                source,
            })?;
        let (file, record) = crate::backup::fetch(&from, &self.config.name, None, scratch.path())
            .await
            .map_err(|why| Error::Spec(format!("spec.bootstrap.fromBackup: {why}")))?;
        tracing::info!(backup = %record.key, revision = record.revision, "restoring every member from a backup");
        let names = self.platform.names();
        for name in names {
            if !self.platform.has_data(&name) {
                self.platform.restore(&name, &file)?;
            }
        }
        let mut status = self.status.clone().unwrap_or_default();
        status.restored_from = Some(record);
        write_json(&self.config.workdir.join(STATUS_FILE), &status)?;
        self.status = Some(status);
        let marker = self.config.workdir.join(RESTORE_FILE);
        std::fs::remove_file(&marker).map_err(|source| Error::File {
            path: marker,
            source,
        })
    }

    /// This pass's part of scheduled backups: records a backup that ended, starts one when due
    /// (in the background: the loop goes on while it streams), and returns the status to
    /// record (`None`: no `spec.backup`).
    async fn backup_pass(
        &mut self,
        round: &Round,
        held: Option<String>,
    ) -> Option<crds::BackupStatus> {
        use crate::backup::{self, Next};
        let spec = self.config.spec.backup.clone()?;
        let schedule = crate::maintenance::Schedule::parse(&spec.schedule).ok()?;
        let previous = self.status.as_ref().and_then(|s| s.backup.clone());
        let (status, next, notes) = backup::pass(
            &mut self.backup,
            &schedule,
            previous.as_ref(),
            self.config
                .annotations
                .get(crate::backup::REQUEST_ANNOTATION)
                .map(String::as_str),
            round,
            held,
        )
        .await;
        for note in notes {
            if note.warning {
                tracing::warn!(reason = note.reason, "{}", note.message);
            } else {
                tracing::info!(reason = note.reason, "{}", note.message);
            }
        }
        match next {
            Next::Take(member) => {
                let Ok(endpoint) = self.platform.endpoint(&member) else {
                    return Some(status);
                };
                let members = self.members.clone();
                let credentials = self.access();
                let name = self.config.name.clone();
                let scratch = self.config.workdir.clone();
                tracing::info!(%member, "taking a backup");
                self.backup = Some(tokio::spawn(async move {
                    let store = backup::Store::open(&spec.store, &name, None)?;
                    backup::take(
                        &*members,
                        &member,
                        endpoint,
                        credentials,
                        &store,
                        &spec.retention,
                        &scratch,
                    )
                    .await
                }));
            }
            Next::Idle | Next::Wait(_) => {}
        }
        Some(status)
    }

    /// One pass of a rolling update: restarts at most one member running an older template
    /// (flags changed), or hands leadership off the leader before its turn, as
    /// [`crate::rollout::next`] decides on `round`; nothing while a heal, a resize or a
    /// defragmentation pass runs, or while the cluster's auth is not the operator's. Returns
    /// what the status says about it (whether it stalled, and how it stands), `None` when
    /// every member runs the current template.
    async fn roll_one(
        &mut self,
        round: &Round,
        defragmentation: Option<&crds::DefragmentationStatus>,
    ) -> Result<Option<(bool, String)>> {
        let outdated = self.platform.outdated();
        if outdated.is_empty() {
            self.rolling = None;
            return Ok(None);
        }
        let summary = format!(
            "rolling update: {} of {} members run an older template ({})",
            outdated.len(),
            self.platform.members.len(),
            outdated.join(", ")
        );
        let held = if self.progress.is_some() {
            Some("a heal or resize is under way".to_string())
        } else if let Some(why) = &self.auth_untrusted {
            Some(format!("the cluster's auth is not the operator's: {why}"))
        } else if defragmentation.is_some_and(|d| d.active) {
            Some("a defragmentation pass is under way".to_string())
        } else {
            None
        };
        if let Some(why) = held {
            return Ok(Some((false, format!("{summary}; waits: {why}"))));
        }
        let max_lag = crate::detector::Tolerance::default().max_lag;
        match crate::rollout::next(&outdated, round, max_lag) {
            crate::rollout::Roll::Done => Ok(None),
            crate::rollout::Roll::Wait(why) => {
                // The member restarted last has not come back within the limit.
                let stalled = self.rolling.as_ref().is_some_and(|(name, at)| {
                    at.elapsed() > ROLL_LIMIT && why.starts_with(name.as_str())
                });
                if stalled {
                    tracing::warn!(reason = "RolloutStalled", "{summary}; waits: {why}");
                }
                Ok(Some((stalled, format!("{summary}; waits: {why}"))))
            }
            crate::rollout::Roll::Restart(name) => {
                tracing::info!(member = %name, reason = "MemberRestarted", "restarting the member on the current template");
                self.platform.restart_on_template(&name)?;
                self.rolling = Some((name.clone(), std::time::Instant::now()));
                Ok(Some((false, format!("{summary}; restarted {name}"))))
            }
            crate::rollout::Roll::MoveLeader { from, to_id, to } => {
                let endpoint = self.platform.endpoint(&from)?;
                match self
                    .members
                    .move_leader(endpoint, self.access(), to_id)
                    .await
                {
                    Ok(()) => {
                        tracing::info!(from = %from, to = %to, "leadership moved off the leader before its restart")
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "moving leadership before a restart failed; trying again next pass")
                    }
                }
                Ok(Some((
                    false,
                    format!("{summary}; moving leadership from {from} to {to}"),
                )))
            }
        }
    }

    /// How the operator reaches the members.
    fn access(&self) -> crate::members::Credentials {
        crate::members::Credentials {
            login: self.credentials.clone(),
            tls: self.client_cert.clone(),
        }
    }

    /// Restarts one member whose certificate is due on a new one, when `round` shows every
    /// member answering, no learner, one leader and no heal running: so at most one member is
    /// down at a time, and only while the others hold a quorum. The next member waits for a
    /// round where the restarted one answers again.
    /// Whether it restarted one.
    fn renew_one_certificate(&mut self, round: &Round) -> Result<bool> {
        let Some(name) = self.platform.certificates_due().into_iter().next() else {
            return Ok(false);
        };
        if self.progress.is_some()
            || !crate::healing::may_restart_one(round, self.platform.members.len())
        {
            tracing::debug!(member = %name, "certificate due; waiting for every member and a leader");
            return Ok(false);
        }
        tracing::info!(member = %name, "certificate due for renewal: restarting the member on a new one");
        self.platform.renew_certificate(&name)?;
        Ok(true)
    }

    /// Takes a changed `spec.replicas` (the healing loop resizes the cluster one member at a
    /// time), `spec.autoCompaction` (rolled out one member at a time), `spec.healing` or
    /// `spec.defragmentation` from the spec file. Other changes are
    /// refused with a log line (the members, their ports and their data are made for the spec
    /// they started with), and so is a file that no longer parses: the running spec stays.
    fn reload_spec(&mut self) {
        let Some(path) = &self.config.spec_file else {
            return;
        };
        let Ok(modified) = std::fs::metadata(path).and_then(|m| m.modified()) else {
            return;
        };
        let first = self.spec_read.is_none();
        if self.spec_read.replace(modified) == Some(modified) || first {
            return;
        }
        let parsed = std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|yaml| crate::yaml::parse_strict::<crds::StorageCluster>(&yaml));
        let spec = match parsed {
            Ok(cluster) => {
                self.config.annotations = cluster.metadata.annotations.unwrap_or_default();
                cluster.spec
            }
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "spec not reloaded");
                return;
            }
        };
        let mut kept = spec.clone();
        kept.healing = self.config.spec.healing.clone();
        kept.defragmentation = self.config.spec.defragmentation.clone();
        kept.replicas = self.config.spec.replicas;
        kept.auto_compaction = self.config.spec.auto_compaction.clone();
        kept.backup = self.config.spec.backup.clone();
        // Read once, when the cluster is made.
        kept.bootstrap = self.config.spec.bootstrap.clone();
        if kept != self.config.spec {
            tracing::error!(
                file = %path.display(),
                "only spec.replicas, spec.healing, spec.defragmentation, spec.backup and \
                 spec.autoCompaction can change while operator local runs; other changes ignored"
            );
        }
        if spec.backup != self.config.spec.backup {
            let mut next = self.config.spec.clone();
            next.backup = spec.backup.clone();
            match crate::backup::spec_problem(&next, true) {
                Some(problem) => tracing::error!(file = %path.display(), "{problem}; not taken"),
                None => {
                    tracing::info!(backup = ?spec.backup, "spec.backup changed");
                    self.config.spec.backup = spec.backup.clone();
                }
            }
        }
        if spec.auto_compaction != self.config.spec.auto_compaction {
            match crate::platform::auto_compaction_problem(&spec) {
                Some(problem) => tracing::error!(file = %path.display(), "{problem}; not taken"),
                None => {
                    tracing::info!(compaction = ?spec.auto_compaction, "spec.autoCompaction changed: rolling it out one member at a time");
                    self.config.spec.auto_compaction = spec.auto_compaction.clone();
                    self.platform.set_node_args(node_args(&self.config));
                }
            }
        }
        if spec.replicas != self.config.spec.replicas {
            match replicas_problem(spec.replicas) {
                Some(problem) => tracing::error!(file = %path.display(), "{problem}; not taken"),
                None => {
                    tracing::info!(replicas = spec.replicas, "spec.replicas changed");
                    self.config.spec.replicas = spec.replicas;
                }
            }
        }
        if spec.defragmentation != self.config.spec.defragmentation {
            match crate::maintenance::schedule_problem(&spec) {
                Some(problem) => tracing::error!(file = %path.display(), "{problem}; not taken"),
                None => {
                    tracing::info!(schedule = ?spec.defragmentation, "spec.defragmentation changed");
                    self.config.spec.defragmentation = spec.defragmentation.clone();
                }
            }
        }
        if spec.healing == self.config.spec.healing {
            return;
        }
        tracing::info!(mode = ?spec.healing.mode, "spec.healing changed");
        let mut healer = Healer::for_spec(&spec.healing);
        healer.heals = self.healer.heals;
        healer.last_result = self.healer.last_result.clone();
        self.healer = healer;
        self.platform
            .set_backup_retention(spec.healing.backup_retention as usize);
        self.config.spec.healing = spec.healing;
    }

    /// Starts members that should run and do not: on first start all of them; later those
    /// with data (crashed or stopped), and those a heal has re-added. A member without data
    /// that no heal is re-adding is left stopped: starting it would found a second cluster;
    /// with healing `Automatic` the loop rebuilds it as a new member.
    fn keep_running(&mut self) -> Result<()> {
        let held_out = self
            .progress
            .as_ref()
            .map(Progress::held_out)
            .unwrap_or_default();
        let names = self.platform.names();
        let fresh = !names.iter().any(|n| self.platform.has_data(n));
        for name in names {
            if held_out.contains(&name) || self.platform.is_running(&name) {
                continue;
            }
            let state = if fresh || self.platform.has_data(&name) {
                "new"
            } else if self.progress.as_ref().is_some_and(|p| p.rejoined(&name)) {
                "existing"
            } else {
                if !self.refused_to_start.contains(&name) {
                    tracing::error!(
                        member = %name,
                        "member has no data and is not being re-added by a heal: not starting it"
                    );
                    self.refused_to_start.push(name);
                }
                continue;
            };
            tracing::info!(member = %name, state, "starting member");
            self.platform.start(&name, state)?;
        }
        Ok(())
    }

    /// Turns auth on once, when configured; failures are retried next tick.
    async fn bootstrap_auth(&mut self) {
        let Some((user, password)) = self.credentials.clone() else {
            return;
        };
        if self.auth_on {
            return;
        }
        match self
            .members
            .bootstrap_auth(
                self.endpoints(),
                user.clone(),
                password,
                self.client_cert.clone(),
            )
            .await
        {
            Ok(turned_on) => {
                if turned_on {
                    tracing::info!(user, "auth enabled");
                }
                self.auth_on = true;
                self.auth_untrusted = None;
            }
            Err(crate::bootstrap::Error::Untrusted { why, .. }) => {
                if self.auth_untrusted.as_deref() != Some(why.as_str()) {
                    tracing::warn!(reason = "AuthUntrusted", "{why}; not healing");
                }
                self.auth_untrusted = Some(why);
            }
            Err(e) => tracing::debug!(error = %e, "auth not enabled yet"),
        }
    }

    /// Records the heal in progress in `heal.json`, or removes the file when there is none.
    fn save_progress(&self) -> Result<()> {
        let path = self.config.workdir.join(HEAL_FILE);
        match &self.progress {
            Some(progress) => write_json(&path, progress)?,
            None => match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(Error::File { path, source }),
            },
        }
        Ok(())
    }

    /// The members of `round` the platform still has (a member retired in this pass is gone).
    fn views_of(&self, round: &Round) -> Vec<MemberView> {
        round
            .members
            .iter()
            .filter_map(|o| {
                let endpoint = self.platform.endpoint(&o.name).ok()?;
                let recorded = self.platform.members.iter().find(|m| m.name == o.name);
                Some(MemberView {
                    revisions: (
                        recorded.and_then(|m| m.template.clone()),
                        self.platform.desired_template(&o.name).ok(),
                    ),
                    name: o.name.clone(),
                    endpoint,
                    observation: o.clone(),
                })
            })
            .collect()
    }

    fn write_status(
        &mut self,
        assessment: &Assessment,
        healing: HealingStatus,
        defragmentation: Option<crds::DefragmentationStatus>,
        resize_waits: Option<String>,
        Parts {
            rollout,
            backup,
            quorum_lost,
        }: Parts,
    ) -> Result<()> {
        let mut status = status::build(&status::Inputs {
            generation: None,
            replicas: self.config.spec.replicas,
            members: &self.views,
            findings: &assessment.findings,
            decision: &assessment.decision,
            healing: Some(healing),
            held_back: assessment.held_back.clone(),
            auth_untrusted: self.auth_untrusted.as_deref(),
            selector: String::new(),
            defragmentation,
            rollout,
            resize_waits,
            quorum_lost,
            previous: self.status.as_ref(),
            now: Time(Timestamp::now()),
        });
        status.backup = backup;
        write_json(&self.config.workdir.join(STATUS_FILE), &status)?;
        self.metrics
            .observe_status(&self.config.name, self.config.spec.replicas, &status);
        if self.config.print_table {
            print_if_changed(&mut self.last_table, &status);
        }
        self.status = Some(status);
        Ok(())
    }

    /// Whether auth is on as configured (always true when auth is not configured).
    pub fn auth_ready(&self) -> bool {
        self.credentials.is_none() || self.auth_on
    }

    /// Ticks every [`Supervisor::interval`] until `done` holds (true) or `limit` passes (false).
    pub async fn tick_until(
        &mut self,
        limit: Duration,
        mut done: impl FnMut(&Supervisor) -> bool,
    ) -> Result<bool> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            self.tick().await?;
            if done(self) {
                return Ok(true);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(self.interval()).await;
        }
    }

    /// Stops every member cleanly (Ctrl-C); a heal in progress stays recorded.
    pub fn shutdown(&mut self) -> Result<()> {
        self.platform.stop_all()?;
        Ok(())
    }
}

/// The root credentials kept in `workdir`, created with a random password the first time.
fn credentials(workdir: &Path) -> Result<(String, String)> {
    let path = workdir.join(CREDENTIALS_FILE);
    let file_error = |source| Error::File {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let (user, password) = text.trim_end().split_once(':').ok_or_else(|| {
                file_error(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "expected user:password",
                ))
            })?;
            Ok((user.to_string(), password.to_string()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let password = crate::bootstrap::generate_password()
                .map_err(|e| file_error(std::io::Error::other(e.to_string())))?;
            let text = format!("{ROOT_USER}:{password}\n");
            // Created readable by its owner only, never for a moment by anyone else.
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut tmp = path.as_os_str().to_owned();
            tmp.push(".tmp");
            let _ = std::fs::remove_file(&tmp);
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .and_then(|mut f| f.write_all(text.as_bytes()).and_then(|()| f.sync_all()))
                .and_then(|()| std::fs::rename(&tmp, &path))
                .map_err(file_error)?;
            Ok((ROOT_USER.to_string(), password))
        }
        Err(e) => Err(file_error(e)),
    }
}

/// Prints the status as a table when it differs from the one printed last.
fn print_if_changed(last: &mut String, status: &StorageClusterStatus) {
    let table = table(status);
    if table != *last {
        println!("{}\n{table}", Timestamp::now().strftime("%H:%M:%S"));
        *last = table;
    }
}

/// The status as `kubectl get -o wide` would lay it out, plus the conditions that are not
/// as they should be.
pub fn table(status: &StorageClusterStatus) -> String {
    let mut out = format!(
        "phase {:?}  leader {}  ready {}/{}  auth-revision drift {}  heals {}\n",
        status.phase,
        status.leader.as_deref().unwrap_or("-"),
        status.ready_replicas,
        status.replicas,
        status.auth_revision_drift,
        status.healing.as_ref().map(|h| h.count).unwrap_or_default(),
    );
    out.push_str(&format!(
        "  {:<8} {:<17} {:<9} {:<4} {:>8} {:>8} {:>8} {:>6} {:>10}\n",
        "NAME", "MEMBER-ID", "ROLE", "UP", "AUTH-REV", "REVISION", "APPLIED", "KEYS", "HASHKV"
    ));
    for m in &status.members {
        out.push_str(&format!(
            "  {:<8} {:<17} {:<9} {:<4} {:>8} {:>8} {:>8} {:>6} {:>10}\n",
            m.name,
            if m.member_id.is_empty() {
                "-"
            } else {
                &m.member_id
            },
            m.role
                .map(|r| format!("{r:?}"))
                .unwrap_or_else(|| "-".into()),
            if m.healthy { "yes" } else { "no" },
            m.auth_revision
                .map(|r| r.to_string())
                .unwrap_or_else(|| "?".into()),
            m.revision,
            m.applied_index,
            m.key_count
                .map(|k| k.to_string())
                .unwrap_or_else(|| "?".into()),
            m.hash_kv
                .map(|h| h.to_string())
                .unwrap_or_else(|| "-".into()),
        ));
    }
    let expected: BTreeMap<&str, &str> = BTreeMap::from([
        (crds::condition::AVAILABLE, "True"),
        (crds::condition::PROGRESSING, "False"),
        (crds::condition::DEGRADED, "False"),
        (crds::condition::DIVERGED, "False"),
        (crds::condition::HEALING, "False"),
    ]);
    for c in &status.conditions {
        if expected.get(c.type_.as_str()) != Some(&c.status.as_str()) {
            out.push_str(&format!("  {} {}: {}\n", c.type_, c.reason, c.message));
        }
    }
    out
}

/// Whether `status` says every member answers and agrees.
pub fn settled(status: &StorageClusterStatus) -> bool {
    status.phase == crds::Phase::Available
        && status.auth_revision_drift == 0
        && status.members.iter().all(|m| m.healthy)
        && status
            .members
            .windows(2)
            .all(|w| w[0].hash_kv == w[1].hash_kv && w[0].hash_revision == w[1].hash_revision)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn root_credentials_are_made_once_readable_by_their_owner_only() {
        let work = tempfile::tempdir().expect("workdir");
        let (user, password) = credentials(work.path()).expect("created");
        assert_eq!(user, ROOT_USER);
        assert_eq!(password.len(), 32);
        let mode = std::fs::metadata(work.path().join(CREDENTIALS_FILE))
            .expect("file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(credentials(work.path()).expect("read"), (user, password));
    }

    #[test]
    fn a_bad_auto_compaction_is_refused_before_anything_is_made() {
        let work = tempfile::tempdir().expect("workdir");
        let spec: StorageClusterSpec = serde_json::from_value(serde_json::json!({
            "replicas": 3,
            "autoCompaction": { "mode": "Periodic", "retention": "abc" },
        }))
        .expect("spec");
        let config = Config {
            name: "c".to_string(),
            spec,
            workdir: work.path().join("w"),
            storage_node: PathBuf::from("/nonexistent/storage-node"),
            node_args: Vec::new(),
            print_table: false,
            spec_file: None,
            annotations: BTreeMap::new(),
        };
        let Err(Error::Spec(why)) = Supervisor::open(config) else {
            panic!("a bad spec.autoCompaction was taken");
        };
        assert!(
            why.contains("error parsing CompactionRetention: time: invalid duration"),
            "{why}"
        );
        assert!(!work.path().join("w").exists(), "nothing made");
    }
}
