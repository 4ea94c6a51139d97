//! `operator local`: one `StorageCluster` run as local `storage-node` processes, with the same
//! probe → detector → planner → executor loop as on Kubernetes.
//!
//! Every tick the supervisor starts members that are not running (first start, crash), turns
//! auth on once members answer, probes them, and heals what the healer decides to heal. The
//! work directory holds all state: members' data, `backups/`, `members.json` (ports),
//! `root-credentials` (`user:password`), `heal.json` (a heal in progress, so a restarted
//! operator finishes it) and `status.json` (the resource's status shape).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crds::{HealingStatus, StorageClusterSpec, StorageClusterStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::bootstrap;
use crate::detector::Round;
use crate::executor::{Executor, Progress};
use crate::healer::{Assessment, Healer};
use crate::metrics::HealMetrics;
use crate::planner::{self, Decision, Member};
use crate::platform;
use crate::platform::local::{LocalPlatform, write_atomically, write_json};
use crate::probe::{Prober, Scope};
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
}

/// The user the operator creates and probes as.
pub const ROOT_USER: &str = "root";
/// Bound on every call the supervisor makes to a member.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
const CREDENTIALS_FILE: &str = "root-credentials";
const HEAL_FILE: &str = "heal.json";
const STATUS_FILE: &str = "status.json";

/// Timings of the last heal, for the demo's summary and logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HealTimes {
    /// From the first round showing the divergence to the decision to heal.
    pub detection: Duration,
    /// From the first step to the last.
    pub heal: Duration,
    /// Members rebuilt.
    pub rebuilt: usize,
}

/// One local cluster under supervision.
pub struct Supervisor {
    config: Config,
    platform: LocalPlatform,
    prober: Prober,
    healer: Healer,
    credentials: Option<(String, String)>,
    auth_on: bool,
    progress: Option<Progress>,
    status: Option<StorageClusterStatus>,
    views: Vec<MemberView>,
    last_table: String,
    last_times: Option<HealTimes>,
    refused_to_start: Vec<String>,
    metrics: Arc<HealMetrics>,
}

impl Supervisor {
    /// Opens (or creates) the work directory and its members; nothing starts until
    /// [`Supervisor::tick`].
    pub fn open(config: Config) -> Result<Supervisor> {
        let spec = &config.spec;
        if spec.replicas < 1 || spec.replicas > 7 || spec.replicas % 2 == 0 {
            return Err(Error::Spec(format!(
                "replicas must be odd and between 1 and 7, not {}",
                spec.replicas
            )));
        }
        std::fs::create_dir_all(&config.workdir).map_err(|source| Error::File {
            path: config.workdir.clone(),
            source,
        })?;
        let mut platform = LocalPlatform::open(
            config.storage_node.clone(),
            &config.workdir,
            spec.replicas as usize,
            config.node_args.clone(),
        )?;
        platform.set_backup_retention(spec.healing.backup_retention as usize);
        let credentials = if spec.auth.enabled {
            Some(credentials(&config.workdir)?)
        } else {
            None
        };
        let endpoints = platform.members.iter().map(|m| m.endpoint()).collect();
        let prober = Prober::new(endpoints, credentials.clone(), CALL_TIMEOUT);
        let healer = Healer::for_spec(&spec.healing);
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
        let status = std::fs::read(config.workdir.join(STATUS_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        Ok(Supervisor {
            config,
            platform,
            prober,
            healer,
            credentials,
            auth_on: false,
            progress,
            status,
            views: Vec::new(),
            last_table: String::new(),
            last_times: None,
            refused_to_start: Vec::new(),
            metrics: Arc::default(),
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

    /// How often to tick.
    pub fn interval(&self) -> Duration {
        Duration::from_secs(
            self.config
                .spec
                .healing
                .probe_interval_seconds
                .max(1)
                .into(),
        )
    }

    /// One pass: keep members running, turn auth on, finish or start a heal, probe, and
    /// write the status.
    pub async fn tick(&mut self) -> Result<()> {
        self.keep_running()?;
        self.bootstrap_auth().await;
        let scope = Scope::for_mode(self.config.spec.healing.mode);
        let mut round = self.prober.round_of(scope).await;
        self.views = self.views_of(&round);
        if self.progress.is_none() && self.config.spec.healing.mode == crds::HealingMode::Automatic
        {
            self.plan_rebuild_of_lost(&round).await?;
        }
        if self.progress.is_some() {
            self.heal(None).await?;
            round = self.prober.round().await;
            self.views = self.views_of(&round);
        }
        let now = Timestamp::now();
        let assessment = if self.config.spec.healing.mode == crds::HealingMode::Disabled {
            Assessment::quiet()
        } else {
            self.healer.observe(round.clone(), now)
        };
        if let Decision::Heal(plan) = &assessment.decision {
            let names = round
                .members
                .iter()
                .zip(&self.platform.members)
                .map(|(o, m)| (o.member, m.name.clone()))
                .collect();
            let detection = self
                .healer
                .diverged_since()
                .map(|since| now.duration_since(since).unsigned_abs())
                .unwrap_or_default();
            tracing::warn!(findings = ?assessment.findings, ?detection, "divergence confirmed: healing");
            self.metrics.detected(&self.config.name, detection);
            self.progress = Some(Progress::new(plan.clone(), names));
            self.save_progress()?;
            self.heal(Some(detection)).await?;
            // What the members look like now; the healer needs fresh rounds before judging.
            let round = self.prober.round().await;
            self.views = self.views_of(&round);
            return self.write_status(&Assessment::quiet());
        }
        self.write_status(&assessment)
    }

    /// A member left stopped because it has no data (see [`Supervisor::keep_running`]) lost
    /// it: the cluster still counts it, but it can only come back as a new member. Plans its
    /// rebuild from the leader into `self.progress` when the others allow it.
    async fn plan_rebuild_of_lost(&mut self, round: &Round) -> Result<()> {
        let Some(lost) = self.refused_to_start.first().cloned() else {
            return Ok(());
        };
        let leader = round
            .members
            .iter()
            .zip(&self.platform.members)
            .find(|(o, _)| o.reachable && o.is_leader)
            .map(|(_, m)| m.endpoint());
        let Some(leader) = leader else {
            return Ok(());
        };
        let executor = Executor::new(
            &mut self.platform,
            BTreeMap::new(),
            self.credentials.clone(),
            CALL_TIMEOUT,
        );
        let id = match executor.member_id(&leader, &lost).await {
            Ok(Some(id)) => id,
            Ok(None) => {
                tracing::warn!(member = %lost, "not a member of the cluster; leaving it stopped");
                return Ok(());
            }
            Err(e) => {
                tracing::debug!(error = %e, "member list for a rebuild");
                return Ok(());
            }
        };
        let mut names: BTreeMap<u64, String> = BTreeMap::new();
        let members: Vec<Member> = round
            .members
            .iter()
            .zip(&self.platform.members)
            .map(|(o, m)| {
                let id = if m.name == lost { id } else { o.member };
                names.insert(id, m.name.clone());
                Member {
                    id,
                    ..Member::observed(o)
                }
            })
            .collect();
        match planner::rebuild_lost(id, &members) {
            Ok(plan) => {
                tracing::warn!(member = %lost, "member lost its data: rebuilding it as a new member");
                self.refused_to_start.retain(|n| *n != lost);
                self.progress = Some(Progress::new(plan, names));
                self.save_progress()
            }
            Err(why) => {
                tracing::debug!(member = %lost, why, "not rebuilding yet");
                Ok(())
            }
        }
    }

    /// Starts members that should run and do not: on first start all of them; later those
    /// with data (crashed or stopped), and those a heal has re-added. A member without data
    /// that no heal is re-adding is left stopped: starting it would found a second cluster.
    fn keep_running(&mut self) -> Result<()> {
        let held_out = self
            .progress
            .as_ref()
            .map(Progress::held_out)
            .unwrap_or_default();
        let names: Vec<String> = self
            .platform
            .members
            .iter()
            .map(|m| m.name.clone())
            .collect();
        let fresh = !names.iter().any(|n| self.platform.has_data(n));
        for name in names {
            if held_out.contains(&name) || self.platform.is_running(&name) {
                continue;
            }
            let state = if fresh || self.platform.has_data(&name) {
                "new"
            } else if self.rejoining(&name) {
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

    /// Whether a heal in progress has added `name` back (it joins an existing cluster).
    fn rejoining(&self, name: &str) -> bool {
        self.progress.as_ref().is_some_and(|p| {
            p.plan.steps[..p.next.min(p.plan.steps.len())]
                .iter()
                .any(|step| match step {
                    crate::planner::Step::AddLearner { member } => {
                        p.renamed
                            .get(member)
                            .and_then(|id| p.names.get(id))
                            .map(String::as_str)
                            == Some(name)
                    }
                    _ => false,
                })
        })
    }

    /// Turns auth on once, when configured; failures are retried next tick.
    async fn bootstrap_auth(&mut self) {
        let Some((user, password)) = self.credentials.clone() else {
            return;
        };
        if self.auth_on {
            return;
        }
        for endpoint in self.endpoints() {
            match bootstrap::enable_auth(&endpoint, &user, &password, CALL_TIMEOUT).await {
                Ok(turned_on) => {
                    if turned_on {
                        tracing::info!(%endpoint, user, "auth enabled");
                    }
                    self.auth_on = true;
                    return;
                }
                Err(e) => tracing::debug!(error = %e, "auth not enabled yet"),
            }
        }
    }

    /// Runs (or resumes) the heal in `self.progress`, saving progress and status at every
    /// step. A failed heal keeps its progress: the next tick resumes it.
    async fn heal(&mut self, detection: Option<Duration>) -> Result<()> {
        let Some(mut progress) = self.progress.take() else {
            return Ok(());
        };
        let started = Timestamp::now();
        self.healer.heal_started(started);
        let heal_file = self.config.workdir.join(HEAL_FILE);
        let status_file = self.config.workdir.join(STATUS_FILE);
        let plan_lines = status::describe_plan(&progress.plan);
        let heals = self.healer.heals;
        let last_result = self.healer.last_result.clone();
        let views = self.views.clone();
        let replicas = self.config.spec.replicas;
        let mut previous = self.status.clone();
        let mut last_table = std::mem::take(&mut self.last_table);
        let print_table = self.config.print_table;
        let mut write_error = None;
        let result = {
            let mut executor = Executor::new(
                &mut self.platform,
                progress.names.clone(),
                self.credentials.clone(),
                CALL_TIMEOUT,
            );
            executor
                .resume(&mut progress, |p| {
                    let healing = HealingStatus {
                        plan: plan_lines.clone(),
                        step: (!p.done()).then_some(p.next as u32),
                        last_result: last_result.clone(),
                        count: heals,
                        progress: None,
                    };
                    let status = status::build(&status::Inputs {
                        generation: None,
                        replicas,
                        members: &views,
                        findings: &[],
                        decision: &Decision::Healthy,
                        healing: Some(healing),
                        held_back: None,
                        selector: String::new(),
                        previous: previous.as_ref(),
                        now: Time(Timestamp::now()),
                    });
                    let saved =
                        write_json(&heal_file, p).and_then(|()| write_json(&status_file, &status));
                    if let Err(e) = saved {
                        write_error.get_or_insert(e);
                    }
                    if print_table {
                        print_if_changed(&mut last_table, &status);
                    }
                    previous = Some(status);
                })
                .await
        };
        self.last_table = last_table;
        self.status = previous;
        if let Some(e) = write_error {
            return Err(e.into());
        }
        let ended = Timestamp::now();
        let took = ended.duration_since(started).unsigned_abs();
        self.metrics
            .heal_finished(&self.config.name, result.is_ok(), took);
        match result {
            Ok(()) => {
                let heal = took;
                let rebuilt = progress
                    .plan
                    .steps
                    .iter()
                    .filter(|s| matches!(s, crate::planner::Step::Remove { .. }))
                    .count();
                tracing::info!(?heal, rebuilt, "heal finished");
                self.last_times = Some(HealTimes {
                    detection: detection.unwrap_or_default(),
                    heal,
                    rebuilt,
                });
                self.healer.heal_finished(ended, Ok(()));
                let heal_file = self.config.workdir.join(HEAL_FILE);
                std::fs::remove_file(&heal_file).map_err(|source| Error::File {
                    path: heal_file,
                    source,
                })?;
            }
            Err(e) => {
                tracing::error!(error = %e, step = progress.next, "heal failed; it resumes next tick");
                self.healer.heal_finished(ended, Err(e.to_string()));
                self.progress = Some(progress);
            }
        }
        Ok(())
    }

    fn save_progress(&self) -> Result<()> {
        let Some(progress) = &self.progress else {
            return Ok(());
        };
        write_json(&self.config.workdir.join(HEAL_FILE), progress)?;
        Ok(())
    }

    fn views_of(&self, round: &Round) -> Vec<MemberView> {
        round
            .members
            .iter()
            .zip(&self.platform.members)
            .map(|(o, m)| MemberView {
                name: m.name.clone(),
                endpoint: m.endpoint(),
                observation: o.clone(),
            })
            .collect()
    }

    fn write_status(&mut self, assessment: &Assessment) -> Result<()> {
        let healing = HealingStatus {
            plan: Vec::new(),
            step: None,
            last_result: self.healer.last_result.clone(),
            count: self.healer.heals,
            progress: None,
        };
        let status = status::build(&status::Inputs {
            generation: None,
            replicas: self.config.spec.replicas,
            members: &self.views,
            findings: &assessment.findings,
            decision: &assessment.decision,
            healing: Some(healing),
            held_back: assessment.held_back.clone(),
            selector: String::new(),
            previous: self.status.as_ref(),
            now: Time(Timestamp::now()),
        });
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
            let mut bytes = [0u8; 18];
            getrandom::fill(&mut bytes)
                .map_err(|e| file_error(std::io::Error::other(e.to_string())))?;
            let password: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            let text = format!("{ROOT_USER}:{password}\n");
            write_atomically(&path, text.as_bytes())?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
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
            m.auth_revision,
            m.revision,
            m.applied_index,
            m.key_count,
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
