//! The healing loop, one pass at a time, for both drivers: observe every member (a probe
//! round), assess the round ([`Healer`]: findings across rounds, the planner's decision, the
//! backoff), decide (start a heal, rebuild a member that lost its data, or carry on with the
//! heal in progress), run at most one step of it ([`Executor`], which re-checks the step's
//! safety rules on this pass's observation), and hand back what to record. The Kubernetes
//! controller and `operator local` differ only in their [`Platform`], in where they keep the
//! [`Progress`] (the resource's status, or `heal.json`) and in how they tell what happened
//! (Events, or log lines): nothing about deciding or sequencing a heal is written twice.
//!
//! A heal whose next step stays blocked by a safety rule for [`PAUSE_LIMIT`], or whose step
//! does not finish within its [`step_limit`], is abandoned: nothing more is removed, and only
//! the steps that bring back a member already taken out still run. A heal paused because the
//! mode is no longer `Automatic` waits for the mode, however long.

use std::collections::BTreeMap;
use std::time::Duration;

use crds::{DefragmentationStatus, HealingStatus, StorageClusterSpec};
use k8s_openapi::jiff::Timestamp;

use crate::detector::{Finding, Round};
use crate::executor::{Executor, Outcome, Pause, Progress};
use crate::healer::{Assessment, Healer};
use crate::maintenance;
use crate::members::{Credentials, Members};
use crate::metrics::HealMetrics;
use crate::planner::{self, Decision, Member, Mode, Purpose, Step};
use crate::platform::Platform;
use crate::probe::{Scope, Target};
use crate::status;

/// How long a safety rule may keep the next step blocked before the heal is abandoned.
pub const PAUSE_LIMIT: Duration = Duration::from_secs(15 * 60);

/// How long one step may run (waiting for the cluster, or retrying failed calls) before the
/// heal is abandoned: pods take time to go, and a large member takes time to catch up.
pub fn step_limit(step: &Step) -> Duration {
    match step {
        Step::Remove { .. } | Step::Backup { .. } | Step::AddLearner { .. } => {
            Duration::from_secs(10 * 60)
        }
        Step::Create { .. } | Step::Retire { .. } => Duration::from_secs(10 * 60),
        Step::WaitCaughtUp { .. } => Duration::from_secs(30 * 60),
        Step::MoveLeader { .. } | Step::Promote { .. } | Step::Verify { .. } => {
            Duration::from_secs(5 * 60)
        }
    }
}

/// Something worth telling a user (a Kubernetes Event, a log line locally).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    /// A warning rather than a normal event.
    pub warning: bool,
    /// What the operator was doing: `Heal`, `Scale`, `Defragment` or `Backup`.
    pub action: &'static str,
    /// `HealStarted`, `HealStep`, `HealPaused`, `Healed`, `HealFailed`; `ScaleStarted`,
    /// `ScaleStep`, `ScalePaused`, `Scaled`, `ScaleFailed`; `DefragmentationStarted`,
    /// `MemberDefragmented`, `Defragmented`, `DefragmentationWaiting`, `DefragmentFailed`,
    /// `DefragmentationFailed`; `BackedUp`, `BackupWaiting`, `BackupFailed`.
    pub reason: &'static str,
    /// What happened, in words.
    pub message: String,
}

impl Note {
    fn normal(reason: &'static str, message: String) -> Note {
        Note {
            warning: false,
            action: "Heal",
            reason,
            message,
        }
    }

    fn warning(reason: &'static str, message: String) -> Note {
        Note {
            warning: true,
            ..Note::normal(reason, message)
        }
    }

    /// A note of backups (action `Backup`).
    pub fn backup(warning: bool, reason: &'static str, message: String) -> Note {
        Note {
            warning,
            action: "Backup",
            reason,
            message,
        }
    }

    fn scaling(reason: &'static str, message: String) -> Note {
        Note {
            action: "Scale",
            ..Note::normal(reason, message)
        }
    }

    /// The note as a resize tells it: steps and pauses are the resize's, not a heal's.
    fn resizing(self) -> Note {
        let reason = match self.reason {
            "HealStep" => "ScaleStep",
            "HealPaused" => "ScalePaused",
            other => other,
        };
        Note {
            action: "Scale",
            reason,
            ..self
        }
    }
}

/// Timings of a heal that ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HealTimes {
    /// From the first round showing the divergence to the decision to heal.
    pub detection: Duration,
    /// From the heal's start to its end.
    pub heal: Duration,
    /// Members rebuilt.
    pub rebuilt: usize,
}

/// One cluster, as a driver hands it to a pass.
pub struct Cluster<'a, P: Platform> {
    /// The cluster's name (labels its metrics).
    pub name: &'a str,
    /// Its spec.
    pub spec: &'a StorageClusterSpec,
    /// Its members, in order, as the prober reaches them.
    pub targets: Vec<Target>,
    /// Where they live.
    pub platform: &'a mut P,
    /// Their etcd API.
    pub members: &'a dyn Members,
    /// The root user's, when auth is on.
    pub credentials: Credentials,
    /// Where healing metrics go.
    pub metrics: &'a HealMetrics,
    /// Why the cluster's auth is not the operator's, when it is not: nothing is healed then.
    pub auth_untrusted: Option<&'a str>,
    /// Scheduled defragmentation as recorded last (`None`: never).
    pub defragmentation: Option<&'a DefragmentationStatus>,
}

/// What one pass saw, decided and did: the driver records `progress`, builds the status from
/// the rest and tells the `notes`.
#[derive(Debug)]
pub struct Pass {
    /// The probe round taken at the start of the pass.
    pub round: Round,
    /// What the healer made of it.
    pub assessment: Assessment,
    /// The heal in progress after this pass (`None`: none).
    pub progress: Option<Progress>,
    /// What happened, in order.
    pub notes: Vec<Note>,
    /// A heal that ended in this pass, and whether it succeeded.
    pub ended: Option<(bool, HealTimes)>,
    /// The healing part of the status.
    pub healing: HealingStatus,
    /// Scheduled defragmentation, to record (`None`: no schedule).
    pub defragmentation: Option<DefragmentationStatus>,
    /// Why the resize `spec.replicas` asks for has not started, when it has not.
    pub resize_waits: Option<String>,
}

impl Pass {
    /// Whether a heal is under way and not paused (the driver comes back soon rather than after
    /// the probe interval; a paused heal is looked at again on the probe interval).
    pub fn busy(&self) -> bool {
        self.progress.as_ref().is_some_and(|p| p.paused.is_none())
    }
}

/// Whether `round`, a probe of all `members` of a cluster, allows taking one of them down for
/// a planned restart (a renewed certificate): every member answers, none is a learner, and
/// exactly one leads, so the others keep a quorum while it is away. The caller also holds
/// back while a heal runs and while a member restarted before is not back.
pub fn may_restart_one(round: &Round, members: usize) -> bool {
    round.members.len() == members
        && round.members.iter().all(|m| m.reachable && !m.is_learner)
        && round.members.iter().filter(|m| m.is_leader).count() == 1
}

/// Runs one pass of the loop over `cluster`; `progress` is the heal recorded so far, `lost` the
/// members the platform found without their data.
pub async fn pass<P: Platform>(
    mut cluster: Cluster<'_, P>,
    healer: &mut Healer,
    progress: Option<Progress>,
    lost: &[String],
) -> Pass {
    let now = Timestamp::now();
    let mode = Mode::of(cluster.spec.healing.mode);
    let scope = Scope::for_mode(cluster.spec.healing.mode);
    let round = cluster
        .members
        .probe(
            cluster.name.to_string(),
            cluster.targets.clone(),
            cluster.credentials.clone(),
            scope,
        )
        .await;
    let assessment = if mode == Mode::Disabled {
        Assessment::quiet()
    } else {
        healer.observe(round.clone(), now)
    };
    let mut notes = Vec::new();
    let resumed = progress.is_some();
    let mut progress = progress;
    let mut resize_waits = None;
    let resize_wanted =
        usize::try_from(cluster.spec.replicas).is_ok_and(|desired| desired != round.members.len());
    if progress.is_none() && resize_wanted {
        if let Some(why) = cluster.auth_untrusted {
            resize_waits = Some(format!("the cluster's auth is not the operator's: {why}"));
        } else if mode != Mode::Automatic {
            resize_waits = Some(format!(
                "healing mode is {:?}: resizing waits for Automatic",
                cluster.spec.healing.mode
            ));
        }
    }
    if progress.is_none() && mode == Mode::Automatic && cluster.auth_untrusted.is_none() {
        if let Some(rebuild) = plan_rebuild(&cluster, &round, lost).await {
            notes.push(Note::warning(
                "HealStarted",
                format!(
                    "{} lost its data: rebuilding it as a new member from {:x}: {}",
                    lost.first().map(String::as_str).unwrap_or(""),
                    rebuild.plan.source,
                    status::describe_plan(&rebuild.plan).join(", ")
                ),
            ));
            tracing::warn!(member = ?lost.first(), "member lost its data: rebuilding it as a new member");
            healer.heal_started(now);
            progress = Some(rebuild);
        } else if let Some(resize) =
            plan_resize(&cluster, &round, &assessment, lost, &mut resize_waits)
        {
            let plan = &resize.plan;
            let verb = match plan.purpose() {
                Purpose::ScaleOut => "adding",
                _ => "removing",
            };
            // The member the plan adds or removes, as `plan_resize` named it.
            let name = plan
                .steps
                .iter()
                .find_map(|s| match s {
                    Step::Create { member } | Step::Remove { member } => resize.names.get(member),
                    _ => None,
                })
                .cloned()
                .unwrap_or_default();
            notes.push(Note::scaling(
                "ScaleStarted",
                format!(
                    "{verb} {name} ({} members, spec.replicas {}): {}",
                    round.members.len(),
                    cluster.spec.replicas,
                    status::describe_plan(plan).join(", ")
                ),
            ));
            tracing::info!(member = %name, verb, "resizing the cluster by one member");
            progress = Some(resize);
        } else if let Decision::Heal(plan) = &assessment.decision {
            let detection = healer
                .diverged_since()
                .map(|since| now.duration_since(since).unsigned_abs())
                .unwrap_or_default();
            tracing::warn!(findings = ?assessment.findings, ?detection, "divergence confirmed: healing");
            cluster.metrics.detected(cluster.name, detection);
            notes.push(Note::normal(
                "HealStarted",
                format!(
                    "rebuilding from {:x}: {}",
                    plan.source,
                    status::describe_plan(plan).join(", ")
                ),
            ));
            let names = round
                .members
                .iter()
                .filter(|o| o.member != 0)
                .map(|o| (o.member, o.name.clone()))
                .collect();
            healer.heal_started(now);
            healer.detection = Some(detection);
            progress = Some(Progress::new(plan.clone(), names, now.as_second()));
        }
    }
    let mut ended = None;
    // A heal decided in this pass is recorded and told before anything acts: its first step
    // runs in the next pass, on a fresh observation.
    if resumed && let Some(mut heal) = progress.take() {
        let purpose = heal.plan.purpose();
        let first = notes.len();
        let diverged = status::divergence(&assessment.findings)
            .filter(|_| purpose != Purpose::Heal && before_membership_change(&heal));
        if let Some(why) = cluster.auth_untrusted {
            let why = format!("the cluster's auth is not the operator's: {why}");
            pause(&mut heal, why, &mut notes, now);
        } else if let Some((_, why)) = diverged {
            pause(
                &mut heal,
                format!("the cluster diverged: {why}"),
                &mut notes,
                now,
            );
        } else if mode == Mode::Automatic {
            step(&mut cluster, &mut heal, &round, &mut notes, now).await;
        } else {
            let why = format!(
                "healing mode is {:?}: the heal waits for Automatic",
                cluster.spec.healing.mode
            );
            pause(&mut heal, why, &mut notes, now);
        }
        match finish(&mut heal, mode, now) {
            None => progress = Some(heal),
            Some(result) if purpose != Purpose::Heal => {
                notes.push(match &result {
                    Ok(()) => Note::normal("Scaled", format!("succeeded at {now}")),
                    Err(why) => Note::warning("ScaleFailed", format!("failed at {now}: {why}")),
                });
                tracing::info!(?result, "resize ended");
            }
            Some(result) => {
                let took = match healer.started {
                    Some(start) => now.duration_since(start).unsigned_abs(),
                    // Resumed after a restart: the record's start, to the second.
                    None => Duration::from_secs(
                        now.as_second().saturating_sub(heal.started).unsigned_abs(),
                    ),
                };
                let times = HealTimes {
                    detection: healer.detection.take().unwrap_or_default(),
                    heal: took,
                    rebuilt: heal.rebuilt(),
                };
                cluster
                    .metrics
                    .heal_finished(cluster.name, result.is_ok(), took);
                notes.push(match &result {
                    Ok(()) => Note::normal("Healed", format!("succeeded at {now}")),
                    Err(why) => Note::warning("HealFailed", format!("failed at {now}: {why}")),
                });
                tracing::info!(?result, ?took, "heal ended");
                ended = Some((result.is_ok(), times));
                healer.heal_finished(now, result);
            }
        }
        if purpose != Purpose::Heal {
            for note in &mut notes[first..] {
                *note = note.clone().resizing();
            }
        }
    }
    let schedule = cluster
        .spec
        .defragmentation
        .as_ref()
        .map(|d| maintenance::Schedule::parse(&d.schedule));
    let defragmentation = match schedule {
        None => None,
        // Drivers refuse such a spec before a pass: keep what was recorded.
        Some(Err(_)) => cluster.defragmentation.cloned(),
        Some(Ok(schedule)) => {
            let held = defragmentation_held(&assessment, progress.is_some());
            Some(defragment(&cluster, &schedule, &round, held, &mut notes, now).await)
        }
    };
    let healing = healing_status(healer, progress.as_ref());
    let resize_waits = resize_waits.filter(|_| progress.is_none());
    Pass {
        round,
        assessment,
        progress,
        notes,
        ended,
        healing,
        defragmentation,
        resize_waits,
    }
}

/// Why no member may be defragmented now: a heal runs, the members diverged (defragmenting
/// changes no data, but a heal may need every member soon), or one lags far behind.
fn defragmentation_held(assessment: &Assessment, healing: bool) -> Option<String> {
    if healing {
        return Some("a heal is under way".into());
    }
    if let Some((_, why)) = status::divergence(&assessment.findings) {
        return Some(format!("the cluster diverged: {why}"));
    }
    assessment.findings.iter().find_map(|f| match f {
        Finding::Lagging { name, behind } => Some(format!("{name} is {behind} entries behind")),
        _ => None,
    })
}

/// Runs this pass's part of scheduled defragmentation on `cluster`: starts a pass when one is
/// due, defragments at most one member, and returns the status to record.
async fn defragment<P: Platform>(
    cluster: &Cluster<'_, P>,
    schedule: &maintenance::Schedule,
    round: &Round,
    held: Option<String>,
    notes: &mut Vec<Note>,
    now: Timestamp,
) -> DefragmentationStatus {
    let waited = cluster.defragmentation.and_then(|s| s.waiting.clone());
    let decision = maintenance::decide(schedule, cluster.defragmentation, round, held, now);
    let mut recorded = decision.status;
    let first = notes.len();
    if decision.started {
        let due = recorded
            .last_schedule_time
            .as_ref()
            .map(|t| t.0.to_string())
            .unwrap_or_default();
        notes.push(Note::normal(
            "DefragmentationStarted",
            format!(
                "defragmenting the {} members for the schedule's {due}: followers first, the \
                 leader last, one at a time",
                round.members.len()
            ),
        ));
    }
    match decision.next {
        maintenance::Next::Idle => {}
        maintenance::Next::Wait(why) => {
            if waited.as_deref() != Some(why.as_str()) {
                notes.push(Note::warning(
                    "DefragmentationWaiting",
                    format!("defragmentation waits: {why}"),
                ));
            }
        }
        maintenance::Next::Defragment(name) => {
            let before = round
                .members
                .iter()
                .find(|m| m.name == name)
                .map_or(0, |m| m.db_size);
            let result = match cluster.platform.endpoint(&name) {
                Ok(endpoint) => cluster
                    .members
                    .defragment(endpoint, cluster.credentials.clone())
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            tracing::info!(member = %name, ?result, "defragmentation");
            let members = round.members.len();
            let ended = maintenance::record(&mut recorded, &name, result.clone(), members, now);
            let why = result.err().unwrap_or_default();
            match ended {
                maintenance::Recorded::Member | maintenance::Recorded::Completed => {
                    notes.push(Note::normal(
                        "MemberDefragmented",
                        format!("defragmented {name} (its backend held {before} bytes before)"),
                    ));
                }
                maintenance::Recorded::Retrying => notes.push(Note::warning(
                    "DefragmentFailed",
                    format!("defragmenting {name} failed ({why}); trying again in the next pass"),
                )),
                maintenance::Recorded::Failed => notes.push(Note::warning(
                    "DefragmentationFailed",
                    recorded.last_failure.clone().unwrap_or_default(),
                )),
            }
            if ended == maintenance::Recorded::Completed {
                notes.push(Note::normal(
                    "Defragmented",
                    format!(
                        "defragmented every member, in this order: {}",
                        recorded.defragmented.join(", ")
                    ),
                ));
            }
        }
    }
    for note in &mut notes[first..] {
        note.action = "Defragment";
    }
    recorded
}

/// Runs (or looks again at) the next step of `heal`.
async fn step<P: Platform>(
    cluster: &mut Cluster<'_, P>,
    heal: &mut Progress,
    round: &Round,
    notes: &mut Vec<Note>,
    now: Timestamp,
) {
    let index = heal.next;
    let total = heal.plan.steps.len();
    let described = status::describe_plan(&heal.plan);
    heal.step_started.get_or_insert(now.as_second());
    let mut executor = Executor {
        platform: &mut *cluster.platform,
        members: cluster.members,
        credentials: cluster.credentials.clone(),
        // The members the cluster has where they live: a member being added is counted from
        // when its place is made, one leaving until it is retired.
        replicas: cluster.targets.len(),
        max_lag: crate::detector::Tolerance::default().max_lag,
    };
    match executor.step(heal, round, now.as_second()).await {
        Outcome::Done(what) => notes.push(Note::normal(
            "HealStep",
            format!(
                "step {} of {total} done: {}: {what}",
                index + 1,
                described.get(index).map(String::as_str).unwrap_or("")
            ),
        )),
        // The rules hold again: the pause is over, the step is under way.
        Outcome::Waiting(_) => heal.paused = None,
        Outcome::Blocked(why) => pause(heal, why, notes, now),
    }
}

/// Records that a safety rule (or the mode) keeps `heal` from going on, telling it when the
/// reason is new; the pause keeps the time it began while reasons change.
fn pause(heal: &mut Progress, why: String, notes: &mut Vec<Note>, now: Timestamp) {
    if heal.paused.as_ref().is_none_or(|p| p.why != why) {
        notes.push(Note::warning(
            "HealPaused",
            format!(
                "step {} of {} waits: {why}",
                heal.next + 1,
                heal.plan.steps.len()
            ),
        ));
    }
    let since = heal.paused.as_ref().map_or(now.as_second(), |p| p.since);
    heal.paused = Some(Pause { since, why });
}

/// Whether `heal` is over: `Some(Ok)` when every step ran, `Some(Err)` when it was abandoned
/// and nothing of it is left to run. A heal past its limits is abandoned here.
fn finish(heal: &mut Progress, mode: Mode, now: Timestamp) -> Option<Result<(), String>> {
    if heal.done() {
        return Some(match heal.abandoned.clone() {
            None => Ok(()),
            Some(why) => Err(why),
        });
    }
    let step = heal.step()?.clone();
    let paused_for = heal
        .paused
        .as_ref()
        .map(|p| now.as_second().saturating_sub(p.since).unsigned_abs());
    let running_for = heal
        .step_started
        .map(|s| now.as_second().saturating_sub(s).unsigned_abs());
    let reason = match (paused_for, running_for) {
        // A heal the user paused through the mode waits as long as the user wants.
        _ if mode != Mode::Automatic => None,
        (Some(paused), _) if paused > PAUSE_LIMIT.as_secs() => Some(format!(
            "{} for {paused} s: {}",
            step.action(),
            heal.paused.as_ref().map(|p| p.why.as_str()).unwrap_or("")
        )),
        (_, Some(running)) if running > step_limit(&step).as_secs() => Some(format!(
            "{} did not finish within {} s",
            step.action(),
            step_limit(&step).as_secs()
        )),
        _ => None,
    };
    if let Some(why) = reason
        && heal.abandoned.is_none()
    {
        tracing::error!(why, "heal abandoned: nothing more is removed");
        heal.abandon(format!("abandoned at step {} ({why})", heal.next + 1));
        if heal.done() {
            return heal.abandoned.clone().map(Err);
        }
    }
    None
}

/// Whether `heal`, a resize, has not changed the membership yet (its next step is the first
/// that would): a resize that has not started waits while the members diverged.
fn before_membership_change(heal: &Progress) -> bool {
    heal.plan.steps[..heal.next.min(heal.plan.steps.len())]
        .iter()
        .all(|s| matches!(s, Step::MoveLeader { .. }))
}

/// Plans the next member added or removed towards `spec.replicas`, when nothing else is
/// wrong: no finding, no member without its data, every member answering and voting.
/// When a resize is wanted but may not start now, `waits` says why.
fn plan_resize<P: Platform>(
    cluster: &Cluster<'_, P>,
    round: &Round,
    assessment: &Assessment,
    lost: &[String],
    waits: &mut Option<String>,
) -> Option<Progress> {
    let desired = usize::try_from(cluster.spec.replicas).ok()?;
    if desired == round.members.len() {
        return None;
    }
    if let Some(name) = lost.first() {
        *waits = Some(format!("{name} lost its data and is rebuilt first"));
        return None;
    }
    if let Some(finding) = assessment.findings.first() {
        *waits = Some(match finding {
            Finding::Unreachable { name } => format!("{name} does not answer"),
            Finding::Lagging { name, behind } => format!("{name} is {behind} entries behind"),
            Finding::Alarm { alarm, .. } => format!("the {} alarm is active", alarm.name()),
            Finding::AuthRevisionDrift { .. } | Finding::DataDivergence { .. } => {
                "the members diverged".to_string()
            }
        });
        return None;
    }
    let members: Vec<Member> = round.members.iter().map(Member::observed).collect();
    match planner::resize(desired, &members) {
        Ok(Some(plan)) => {
            let mut names: BTreeMap<u64, String> =
                members.iter().map(|m| (m.id, m.name.clone())).collect();
            if plan.purpose() == Purpose::ScaleOut {
                names.insert(planner::NEW_MEMBER, cluster.platform.next_member());
            }
            Some(Progress::new(plan, names, Timestamp::now().as_second()))
        }
        Ok(None) => None,
        Err(why) => {
            tracing::info!(why, desired, members = members.len(), "resize waits");
            *waits = Some(why);
            None
        }
    }
}

/// Plans the rebuild of the first member in `lost` (its data is gone: it can only come back as
/// a new member) from the leader, when the other members allow it.
async fn plan_rebuild<P: Platform>(
    cluster: &Cluster<'_, P>,
    round: &Round,
    lost: &[String],
) -> Option<Progress> {
    let lost = lost.first()?;
    let leader = round.members.iter().find(|o| o.reachable && o.is_leader)?;
    let leader_endpoint = cluster.platform.endpoint(&leader.name).ok()?;
    let peer = cluster.platform.peer_url(lost).ok()?;
    let listed = match cluster
        .members
        .member_list(leader_endpoint, cluster.credentials.clone())
        .await
    {
        Ok(listed) => listed,
        Err(e) => {
            tracing::debug!(error = %e, "member list for a rebuild");
            return None;
        }
    };
    let Some(id) = listed
        .iter()
        .find(|l| l.peer_urls.contains(&peer))
        .map(|l| l.id)
    else {
        tracing::warn!(member = %lost, "not a member of the cluster; leaving it stopped");
        return None;
    };
    let mut names = BTreeMap::new();
    let members: Vec<Member> = round
        .members
        .iter()
        .map(|o| {
            let id = if o.name == *lost { id } else { o.member };
            names.insert(id, o.name.clone());
            Member {
                id,
                ..Member::observed(o)
            }
        })
        .collect();
    match planner::rebuild_lost(id, &members) {
        Ok(plan) => Some(Progress::new(plan, names, Timestamp::now().as_second())),
        Err(why) => {
            tracing::debug!(member = %lost, why, "not rebuilding yet");
            None
        }
    }
}

/// The healing part of the status: the plan and its step while a heal runs, how the last one
/// ended, how many have run, and the record a restarted operator resumes from.
pub fn healing_status(healer: &Healer, progress: Option<&Progress>) -> HealingStatus {
    HealingStatus {
        plan: progress
            .map(|p| status::describe_plan(&p.plan))
            .unwrap_or_default(),
        step: progress.filter(|p| !p.done()).map(|p| p.next as u32),
        last_result: healer.last_result.clone(),
        count: healer.heals,
        progress: progress.map(Progress::to_status),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planner::Plan;

    fn heal(next: usize) -> Progress {
        let mut steps = vec![Step::MoveLeader { to: 1 }];
        steps.extend(Step::rebuild(2));
        steps.extend(Step::rebuild(3));
        let names = BTreeMap::from([
            (1, "node1".into()),
            (2, "node2".into()),
            (3, "node3".into()),
        ]);
        Progress {
            next,
            ..Progress::new(Plan { source: 1, steps }, names, 0)
        }
    }

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + second).expect("time")
    }

    #[test]
    fn a_heal_blocked_past_the_limit_is_abandoned_and_brings_back_only_the_member_it_took_out() {
        // node2 is out (removed, backed up); AddLearner is blocked.
        let mut p = heal(3);
        p.paused = Some(Pause {
            since: at(0).as_second(),
            why: "AddLearner: member 3 is out of the voting set".into(),
        });
        let limit = PAUSE_LIMIT.as_secs() as i64;
        assert_eq!(finish(&mut p, Mode::Automatic, at(limit)), None, "not yet");
        assert_eq!(p.abandoned, None);
        assert_eq!(
            finish(&mut p, Mode::Automatic, at(limit + 1)),
            None,
            "node2 still out"
        );
        assert!(
            p.abandoned
                .as_deref()
                .is_some_and(|w| w.contains("AddLearner"))
        );
        // node3's steps are gone: nothing more is removed.
        assert_eq!(p.plan.steps.len(), 7);
        assert_eq!(p.plan.steps.last(), Some(&Step::Verify { member: 2 }));
        assert!(!p.plan.steps.contains(&Step::Remove { member: 3 }));
        // Once node2 is back, the heal ends as failed, with the reason.
        p.next = p.plan.steps.len();
        let ended = finish(&mut p, Mode::Automatic, at(limit + 60));
        assert!(matches!(ended, Some(Err(why)) if why.contains("abandoned")));
    }

    #[test]
    fn a_heal_blocked_before_anyone_is_out_ends_at_once_when_abandoned() {
        let mut p = heal(1);
        p.paused = Some(Pause {
            since: at(0).as_second(),
            why: "Remove: not a quorum".into(),
        });
        let ended = finish(
            &mut p,
            Mode::Automatic,
            at(PAUSE_LIMIT.as_secs() as i64 + 1),
        );
        assert!(matches!(ended, Some(Err(_))), "{ended:?}");
        assert_eq!(p.plan.steps.len(), 1, "only the step already run is left");
    }

    #[test]
    fn a_heal_paused_by_the_mode_waits_however_long() {
        let mut p = heal(3);
        p.paused = Some(Pause {
            since: at(0).as_second(),
            why: "healing mode is Disabled".into(),
        });
        assert_eq!(finish(&mut p, Mode::Disabled, at(86_400)), None);
        assert_eq!(p.abandoned, None);
    }

    #[test]
    fn a_step_running_past_its_limit_abandons_the_heal() {
        let mut p = heal(4);
        p.step_started = Some(at(0).as_second());
        let limit = step_limit(&Step::WaitCaughtUp { member: 2 }).as_secs() as i64;
        assert_eq!(finish(&mut p, Mode::Automatic, at(limit + 1)), None);
        assert!(
            p.abandoned
                .as_deref()
                .is_some_and(|w| w.contains("did not finish"))
        );
    }
}
