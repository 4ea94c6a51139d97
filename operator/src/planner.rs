//! From findings to a recovery plan: which member holds the complete data (the source), and
//! the steps that rebuild every other member from it, one member at a time; and, right before
//! each step, whether a fresh look at the cluster still allows it ([`check`]).
//!
//! Pure: findings, the cluster's members and the policy in, a decision out. The rules, as in
//! ../shared/DESIGN.md: after AuthRevision drift the member with the **lowest** AuthRevision is
//! the source (it rejected nothing); after divergence without drift, the strict majority's
//! data is; anything else is ambiguous and left to a human. A CORRUPT alarm naming a member is
//! evidence that it diverged, so it is rebuilt too, but it never chooses the source: under
//! drift the lowest AuthRevision holds the complete data even when the alarm names it (the
//! others dropped writes, so they hold the majority hash), and without drift a source the alarm
//! names, or an alarm without a divergence the probes confirm, is left to a human. A plan moves leadership to the
//! source first, then for each member that differs from it: remove, back up (its data directory
//! is moved aside, which also empties it), re-add as a learner, wait until caught up, promote,
//! verify. Nothing is planned without a healthy quorum, while a member is unreachable or
//! lagging (never two members out at once), or while any member is not fully observed: a plan
//! is made only from complete evidence.

use std::collections::BTreeSet;

use crate::detector::{AlarmKind, Fact, Finding, Hash, Observation};

/// A member as the planner sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Member ID.
    pub id: u64,
    /// Its name where it lives.
    pub name: String,
    /// Whether it answered the last probe.
    pub healthy: bool,
    /// Whether it leads.
    pub is_leader: bool,
    /// Whether it votes (learners do not).
    pub voter: bool,
    /// Its AuthRevision.
    pub auth_revision: Fact<u64>,
    /// Last applied index.
    pub applied_index: u64,
    /// Raft index it reports.
    pub raft_index: u64,
    /// Database size in bytes.
    pub db_size: i64,
    /// HashKV at the round's common revision.
    pub hash: Fact<Hash>,
    /// Why it cannot be judged (see [`Observation::incomplete`]), when it cannot.
    pub incomplete: Option<String>,
}

impl Member {
    /// The planner's view of a probed member.
    pub fn observed(o: &Observation) -> Member {
        Member {
            id: o.member,
            name: o.name.clone(),
            healthy: o.reachable,
            is_leader: o.is_leader,
            voter: !o.is_learner,
            auth_revision: o.auth_revision.clone(),
            applied_index: o.applied_index,
            raft_index: o.raft_index,
            db_size: o.db_size,
            hash: o.hash.clone(),
            incomplete: o.incomplete(),
        }
    }
}

/// What the operator may do on its own (the `StorageCluster`'s `healing.mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Heal.
    Automatic,
    /// Plan and report, never act.
    ObserveOnly,
    /// Neither plan nor act.
    Disabled,
}

impl Mode {
    /// The mode `healing.mode` names.
    pub fn of(mode: crds::HealingMode) -> Mode {
        match mode {
            crds::HealingMode::Automatic => Mode::Automatic,
            crds::HealingMode::ObserveOnly => Mode::ObserveOnly,
            crds::HealingMode::Disabled => Mode::Disabled,
        }
    }
}

/// One step of a recovery plan.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Step {
    /// Hand leadership to the member (MoveLeader).
    MoveLeader {
        /// The new leader.
        to: u64,
    },
    /// Remove the member from the cluster (MemberRemove) and stop it.
    Remove {
        /// The member.
        member: u64,
    },
    /// Move its data directory into the backups: the backup and the wipe in one rename, so
    /// the member's directory is empty afterwards and nothing is deleted.
    Backup {
        /// The member.
        member: u64,
    },
    /// Add it back as a learner (MemberAdd --learner) and start it empty.
    AddLearner {
        /// The member (its old ID; the new one is assigned by MemberAdd).
        member: u64,
    },
    /// Wait until it caught up with the leader (from a snapshot).
    WaitCaughtUp {
        /// The member.
        member: u64,
    },
    /// Make it a voter again (MemberPromote).
    Promote {
        /// The member.
        member: u64,
    },
    /// Check it now agrees with the source: HashKV and key count at a common revision, and
    /// AuthRevision.
    Verify {
        /// The member.
        member: u64,
    },
    /// Make the place of a new member where members live (its name and addresses; nothing
    /// starts). The member is [`NEW_MEMBER`] until AddLearner gives it an ID.
    Create {
        /// The member.
        member: u64,
    },
    /// Forget a member removed from the cluster where members live: its process or pod goes,
    /// its data is moved to the backups (locally) or its volume kept or deleted as
    /// `spec.storage.retentionPolicy` says (Kubernetes).
    Retire {
        /// The member.
        member: u64,
    },
}

/// The ID a plan gives the member it adds until MemberAdd assigns one (etcd never assigns 0).
pub const NEW_MEMBER: u64 = 0;

/// What a plan is for, told by its steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// Rebuild members from the source.
    Heal,
    /// Add one member.
    ScaleOut,
    /// Remove one member.
    ScaleIn,
}

impl Step {
    /// The member the step acts on.
    pub fn member(&self) -> u64 {
        match *self {
            Step::MoveLeader { to } => to,
            Step::Remove { member }
            | Step::Backup { member }
            | Step::AddLearner { member }
            | Step::WaitCaughtUp { member }
            | Step::Promote { member }
            | Step::Verify { member }
            | Step::Create { member }
            | Step::Retire { member } => member,
        }
    }

    /// The step's name, as the status records it.
    pub fn action(&self) -> &'static str {
        match self {
            Step::MoveLeader { .. } => "MoveLeader",
            Step::Remove { .. } => "Remove",
            Step::Backup { .. } => "Backup",
            Step::AddLearner { .. } => "AddLearner",
            Step::WaitCaughtUp { .. } => "WaitCaughtUp",
            Step::Promote { .. } => "Promote",
            Step::Verify { .. } => "Verify",
            Step::Create { .. } => "Create",
            Step::Retire { .. } => "Retire",
        }
    }

    /// The step named `action` on `member` (what [`Step::action`] recorded).
    pub fn from_action(action: &str, member: u64) -> Option<Step> {
        Some(match action {
            "MoveLeader" => Step::MoveLeader { to: member },
            "Remove" => Step::Remove { member },
            "Backup" => Step::Backup { member },
            "AddLearner" => Step::AddLearner { member },
            "WaitCaughtUp" => Step::WaitCaughtUp { member },
            "Promote" => Step::Promote { member },
            "Verify" => Step::Verify { member },
            "Create" => Step::Create { member },
            "Retire" => Step::Retire { member },
            _ => return None,
        })
    }

    /// The steps that rebuild `member` from the leader, in order.
    pub(crate) fn rebuild(member: u64) -> [Step; 6] {
        Step::then_join(Step::Remove { member }, member)
    }

    /// The steps that add `member`, a new one ([`NEW_MEMBER`]), in order.
    pub(crate) fn grow(member: u64) -> [Step; 6] {
        Step::then_join(Step::Create { member }, member)
    }

    /// `first`, then the steps that bring `member` in empty: move aside what its place holds,
    /// add it as a learner and start it, let it catch up, promote it, verify it.
    fn then_join(first: Step, member: u64) -> [Step; 6] {
        [
            first,
            Step::Backup { member },
            Step::AddLearner { member },
            Step::WaitCaughtUp { member },
            Step::Promote { member },
            Step::Verify { member },
        ]
    }
}

/// A recovery plan, or the resize of a cluster by one member.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Plan {
    /// The member whose data every other member is rebuilt from (a new member is compared
    /// with it; when one leaves, the member leadership stays with or moves to).
    pub source: u64,
    /// Steps in order.
    pub steps: Vec<Step>,
}

impl Plan {
    /// What the plan is for: a plan that creates a member adds one, one that retires a member
    /// removes one, any other rebuilds.
    pub fn purpose(&self) -> Purpose {
        if self.steps.iter().any(|s| matches!(s, Step::Create { .. })) {
            Purpose::ScaleOut
        } else if self.steps.iter().any(|s| matches!(s, Step::Retire { .. })) {
            Purpose::ScaleIn
        } else {
            Purpose::Heal
        }
    }
}

/// What to do about the findings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nothing is wrong.
    Healthy,
    /// Run this plan.
    Heal(Plan),
    /// This plan would run, but the mode only observes.
    Observe(Plan),
    /// Something is wrong but acting now would not be safe or the evidence is ambiguous.
    Wait(String),
}

/// Decides what to do about `findings` in a cluster of `members`.
pub fn plan(findings: &[Finding], members: &[Member], mode: Mode) -> Decision {
    if findings.is_empty() {
        return Decision::Healthy;
    }
    if mode == Mode::Disabled {
        return Decision::Wait("healing is disabled".into());
    }
    for finding in findings {
        match finding {
            Finding::Unreachable { name } => {
                return Decision::Wait(format!("{name} is unreachable"));
            }
            Finding::Lagging { name, behind } => {
                return Decision::Wait(format!("{name} is {behind} entries behind"));
            }
            _ => {}
        }
    }
    let voters: Vec<&Member> = members.iter().filter(|m| m.voter).collect();
    let healthy_voters = voters.iter().filter(|m| m.healthy).count();
    if healthy_voters * 2 <= voters.len() {
        return Decision::Wait("no healthy quorum".into());
    }
    if members.iter().any(|m| !m.healthy) {
        return Decision::Wait("a member is down; healing takes one member out at a time".into());
    }
    // The source is chosen by comparing every member: one unknown value could hide the member
    // that really holds the most complete data.
    if let Some(why) = members.iter().find_map(|m| m.incomplete.clone()) {
        return Decision::Wait(why);
    }
    let source = match choose_source(findings, members) {
        Ok(source) => source,
        Err(reason) => return Decision::Wait(reason),
    };
    let plan = rebuild_from(source, findings, members);
    if plan.steps.is_empty() {
        return Decision::Healthy;
    }
    match mode {
        Mode::Automatic => Decision::Heal(plan),
        Mode::ObserveOnly | Mode::Disabled => Decision::Observe(plan),
    }
}

/// Rebuilds `lost`, a member that lost its data (it can only rejoin as a new member), from the
/// leader: remove it, move aside what is left of its data, add it back as a learner, let it
/// catch up, promote, verify. Only while every other member answers, is fully observed and
/// they are a quorum of the voters, so nothing else is out while it is.
pub fn rebuild_lost(lost: u64, members: &[Member]) -> Result<Plan, String> {
    let others: Vec<&Member> = members.iter().filter(|m| m.id != lost).collect();
    if others.iter().any(|m| !m.healthy) {
        return Err("another member is down; rebuilding takes one member out at a time".into());
    }
    if let Some(why) = others.iter().find_map(|m| m.incomplete.clone()) {
        return Err(why);
    }
    let voters = members.iter().filter(|m| m.voter).count();
    let healthy_voters = others.iter().filter(|m| m.voter).count();
    if healthy_voters * 2 <= voters {
        return Err("no healthy quorum without the lost member".into());
    }
    let source = others
        .iter()
        .find(|m| m.is_leader)
        .map(|m| m.id)
        .ok_or("no leader among the other members")?;
    Ok(Plan {
        source,
        steps: Step::rebuild(lost).to_vec(),
    })
}

/// Whether the cluster of `members` can change size now: every member answers, is fully
/// observed and votes, and exactly one leads.
fn ready_to_resize(members: &[Member]) -> Result<&Member, String> {
    if let Some(m) = members.iter().find(|m| !m.healthy) {
        return Err(format!("{} does not answer", m.name));
    }
    if let Some(why) = members.iter().find_map(|m| m.incomplete.clone()) {
        return Err(why);
    }
    if let Some(m) = members.iter().find(|m| !m.voter) {
        return Err(format!("{} is a learner", m.name));
    }
    let mut leaders = members.iter().filter(|m| m.is_leader);
    match (leaders.next(), leaders.next()) {
        (Some(leader), None) => Ok(leader),
        (None, _) => Err("no member leads".into()),
        (Some(_), Some(_)) => Err("two members claim to lead".into()),
    }
}

/// The next step towards `desired` members for a cluster of `members` (in member order):
/// add one member, or remove the last one; `Ok(None)` at that size. One member at a time,
/// only while every member answers, is fully observed and votes, and one leads, so a quorum
/// answers throughout; `Err` says why not now.
///
/// A new member ([`NEW_MEMBER`]) has its place made, anything left there moved aside, is
/// added as a learner and started, catches up, is promoted and verified against the leader.
/// A leaving member hands leadership to the first other member if it leads, is removed, then
/// retired.
pub fn resize(desired: usize, members: &[Member]) -> Result<Option<Plan>, String> {
    if desired == members.len() {
        return Ok(None);
    }
    let leader = ready_to_resize(members)?;
    if desired > members.len() {
        return Ok(Some(Plan {
            source: leader.id,
            steps: Step::grow(NEW_MEMBER).to_vec(),
        }));
    }
    let leaving = members.last().ok_or("no members")?;
    let staying = members.first().filter(|m| m.id != leaving.id);
    let source = match staying {
        _ if !leaving.is_leader => leader,
        Some(first) => first,
        None => return Err("a single member cannot leave".into()),
    };
    let mut steps = Vec::new();
    if leaving.is_leader {
        steps.push(Step::MoveLeader { to: source.id });
    }
    steps.push(Step::Remove { member: leaving.id });
    steps.push(Step::Retire { member: leaving.id });
    Ok(Some(Plan {
        source: source.id,
        steps,
    }))
}

/// Members a CORRUPT alarm names.
fn named_corrupt(findings: &[Finding]) -> BTreeSet<u64> {
    findings
        .iter()
        .filter_map(|f| match f {
            Finding::Alarm {
                member,
                alarm: AlarmKind::Corrupt,
            } => Some(*member),
            _ => None,
        })
        .collect()
}

fn show_ids(ids: &BTreeSet<u64>) -> String {
    ids.iter()
        .map(|id| format!("{id:x}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The member holding the complete data.
fn choose_source(findings: &[Finding], members: &[Member]) -> Result<u64, String> {
    let drift = findings.iter().find_map(|f| match f {
        Finding::AuthRevisionDrift { revisions } => Some(revisions),
        _ => None,
    });
    if let Some(revisions) = drift {
        let lowest = revisions.values().min().copied().unwrap_or_default();
        // Every member at the lowest AuthRevision rejected nothing, so any of them is
        // complete; prefer the leader (no leadership move), then the lowest ID.
        let candidates: BTreeSet<u64> = revisions
            .iter()
            .filter(|(_, r)| **r == lowest)
            .map(|(id, _)| *id)
            .collect();
        let leader = members
            .iter()
            .find(|m| m.is_leader && candidates.contains(&m.id))
            .map(|m| m.id);
        return leader
            .or_else(|| candidates.first().copied())
            .ok_or_else(|| "AuthRevision drift without members".to_string());
    }
    let groups = findings.iter().find_map(|f| match f {
        Finding::DataDivergence { groups } => Some(groups),
        _ => None,
    });
    match groups {
        Some(groups) => {
            let total = members.len();
            let largest = groups.first().ok_or("divergence without members")?;
            if largest.len() * 2 <= total {
                return Err(format!(
                    "data diverged without AuthRevision drift and no majority agrees ({} of {total}); \
                     not choosing a source automatically",
                    largest.len()
                ));
            }
            let leader = members
                .iter()
                .find(|m| m.is_leader && largest.contains(&m.id))
                .map(|m| m.id);
            let source = leader
                .or_else(|| largest.first().copied())
                .ok_or_else(|| "empty majority".to_string())?;
            if named_corrupt(findings).contains(&source) {
                return Err(format!(
                    "the majority's member {source:x} is named by a CORRUPT alarm: the probes and \
                     the corruption check disagree; not choosing a source automatically"
                ));
            }
            Ok(source)
        }
        None => {
            let corrupt = named_corrupt(findings);
            if !corrupt.is_empty() {
                return Err(format!(
                    "a CORRUPT alarm names {} but the probes find no divergence to choose a \
                     source by; not healing automatically",
                    show_ids(&corrupt)
                ));
            }
            let no_space: BTreeSet<u64> = findings
                .iter()
                .filter_map(|f| match f {
                    Finding::Alarm {
                        member,
                        alarm: AlarmKind::NoSpace,
                    } => Some(*member),
                    _ => None,
                })
                .collect();
            if !no_space.is_empty() {
                return Err(format!(
                    "the NOSPACE alarm of {} is active: compact, defragment and disarm it \
                     (rebuilding members frees no space)",
                    show_ids(&no_space)
                ));
            }
            Err("nothing to heal from these findings".into())
        }
    }
}

/// Steps that rebuild every member differing from `source`.
fn rebuild_from(source: u64, findings: &[Finding], members: &[Member]) -> Plan {
    let source_revision = members
        .iter()
        .find(|m| m.id == source)
        .map(|m| m.auth_revision.clone());
    let same_data: BTreeSet<u64> = findings
        .iter()
        .find_map(|f| match f {
            Finding::DataDivergence { groups } => {
                groups.iter().find(|g| g.contains(&source)).cloned()
            }
            _ => None,
        })
        .unwrap_or_else(|| members.iter().map(|m| m.id).collect());
    let corrupt = named_corrupt(findings);
    let mut steps = Vec::new();
    let differing: Vec<u64> = members
        .iter()
        .filter(|m| m.id != source)
        .filter(|m| {
            Some(&m.auth_revision) != source_revision.as_ref()
                || !same_data.contains(&m.id)
                || corrupt.contains(&m.id)
        })
        .map(|m| m.id)
        .collect();
    if differing.is_empty() {
        return Plan { source, steps };
    }
    if !members.iter().any(|m| m.id == source && m.is_leader) {
        steps.push(Step::MoveLeader { to: source });
    }
    for member in differing {
        steps.extend(Step::rebuild(member));
    }
    Plan { source, steps }
}

/// A member as the cluster's member list names it (MemberList, asked right before a step).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    /// Member ID.
    pub id: u64,
    /// Peer URLs.
    pub peer_urls: Vec<String>,
    /// Whether it is a learner.
    pub is_learner: bool,
}

/// The member a step acts on, as the heal knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Its ID now (members re-added by the heal have a new one).
    pub id: u64,
    /// Its name where it lives.
    pub name: String,
    /// Its peer URL, which the platform derives from where it lives (pod, data directory).
    pub peer_url: String,
}

/// What the executor looked at right before a step, and what the heal knows.
#[derive(Clone, Debug)]
pub struct Fresh<'a> {
    /// This pass's probe of every member.
    pub members: &'a [Member],
    /// The member list, for the steps that change or depend on membership.
    pub listed: Option<&'a [Listed]>,
    /// Whether the target's process or pod is stopped (asked for Backup).
    pub stopped: Option<bool>,
    /// Members the cluster should have.
    pub replicas: usize,
    /// How far a member may trail the newest applied index and still count as caught up.
    pub max_lag: u64,
    /// The leader's raft index that WaitCaughtUp waited for the target to reach.
    pub mark: Option<u64>,
}

/// Whether `step` of a heal from `source` (its ID now) on `target` may run now, by the safety
/// rules of ../shared/DESIGN.md. `Err` names the rule that does not hold and why. The caller
/// checks the healing mode.
pub fn check(step: &Step, source: u64, target: &Target, fresh: &Fresh<'_>) -> Result<(), String> {
    source_holds_the_data(source, target, fresh)?;
    let listed = || {
        fresh.listed.ok_or_else(|| {
            format!(
                "{}: the member list is needed and was not read",
                step.action()
            )
        })
    };
    match step {
        Step::MoveLeader { .. }
        | Step::WaitCaughtUp { .. }
        | Step::Verify { .. }
        | Step::Create { .. } => Ok(()),
        Step::Remove { .. } => {
            if target.id == source {
                return Err("Remove: the target is the source".into());
            }
            let listed = listed()?;
            identity(target, listed, fresh.members)?;
            let others: Vec<&Listed> = listed.iter().filter(|l| l.id != target.id).collect();
            if let Some(out) = others.iter().find(|l| l.is_learner) {
                return Err(format!(
                    "Remove: member {:x} is a learner, out of the voting set: one member out at a time",
                    out.id
                ));
            }
            if others.len() + 1 < fresh.replicas {
                return Err(format!(
                    "Remove: the cluster lists {} of {} members: one member out at a time",
                    listed.len(),
                    fresh.replicas
                ));
            }
            let newest = newest_applied(fresh.members);
            let ready = others
                .iter()
                .filter(|l| {
                    fresh.members.iter().any(|m| {
                        m.id == l.id
                            && m.healthy
                            && m.incomplete.is_none()
                            && m.applied_index + fresh.max_lag >= newest
                    })
                })
                .count();
            if ready * 2 <= others.len() {
                return Err(format!(
                    "Remove: without {} only {ready} of the {} remaining voters answer and are \
                     caught up, not a quorum",
                    target.name,
                    others.len()
                ));
            }
            Ok(())
        }
        Step::Backup { .. } | Step::Retire { .. } => {
            let action = step.action();
            if target.id == source {
                return Err(format!("{action}: the target is the source"));
            }
            let listed = listed()?;
            if listed
                .iter()
                .any(|l| l.id == target.id || l.peer_urls.contains(&target.peer_url))
            {
                return Err(format!(
                    "{action}: {} is still a member of the cluster",
                    target.name
                ));
            }
            match fresh.stopped {
                Some(true) => Ok(()),
                Some(false) => Err(format!("{action}: {} still runs", target.name)),
                None => Err(format!("{action}: whether {} runs is unknown", target.name)),
            }
        }
        Step::AddLearner { .. } => {
            let listed = listed()?;
            let others: Vec<&Listed> = listed
                .iter()
                .filter(|l| !l.peer_urls.contains(&target.peer_url))
                .collect();
            if let Some(out) = others.iter().find(|l| l.is_learner) {
                return Err(format!(
                    "AddLearner: member {:x} is out of the voting set: one member out at a time",
                    out.id
                ));
            }
            if others.len() + 1 != fresh.replicas {
                return Err(format!(
                    "AddLearner: the cluster lists {} other members, expected {}",
                    others.len(),
                    fresh.replicas - 1
                ));
            }
            Ok(())
        }
        Step::Promote { .. } => {
            let leader = fresh.members.iter().find(|m| m.healthy && m.is_leader);
            let learner = fresh
                .members
                .iter()
                .find(|m| m.id == target.id && m.healthy);
            let Some(mark) = fresh.mark else {
                return Err("Promote: the target never caught up (no WaitCaughtUp mark)".into());
            };
            match (leader, learner) {
                (Some(leader), Some(learner))
                    if learner.applied_index >= mark
                        && learner.applied_index + fresh.max_lag >= leader.raft_index =>
                {
                    Ok(())
                }
                (Some(leader), Some(learner)) => Err(format!(
                    "Promote: {} applied {}, short of the leader's {} (waited for {mark})",
                    target.name, learner.applied_index, leader.raft_index
                )),
                (None, _) => Err("Promote: no leader answers".into()),
                (_, None) => Err(format!("Promote: {} does not answer", target.name)),
            }
        }
    }
}

/// The rule for every step: the source answers, is fully observed, is caught up, and no
/// member but the target holds a lower AuthRevision (which would mean it, not the source,
/// rejected nothing). Checked before a step makes any call.
pub fn source_holds_the_data(
    source: u64,
    target: &Target,
    fresh: &Fresh<'_>,
) -> Result<(), String> {
    let Some(s) = fresh.members.iter().find(|m| m.id == source && m.healthy) else {
        return Err(format!("the source {source:x} does not answer"));
    };
    if let Some(why) = &s.incomplete {
        return Err(format!("the source is not fully observed: {why}"));
    }
    let newest = newest_applied(fresh.members);
    if s.applied_index + fresh.max_lag < newest {
        return Err(format!(
            "the source {} applied {} of {}: not caught up",
            s.name, s.applied_index, newest
        ));
    }
    if let Fact::Known(own) = s.auth_revision {
        let lower = fresh.members.iter().find(|m| {
            m.healthy && m.id != target.id && m.auth_revision.known().is_some_and(|r| *r < own)
        });
        if let Some(m) = lower {
            return Err(format!(
                "the source {} no longer holds the most complete data: {} has AuthRevision {} < {own}",
                s.name,
                m.name,
                m.auth_revision.known().copied().unwrap_or_default()
            ));
        }
    }
    Ok(())
}

/// The target's ID and peer URL as the member list has them, and the probe of its name, if it
/// answers, as that member.
fn identity(target: &Target, listed: &[Listed], members: &[Member]) -> Result<(), String> {
    let Some(entry) = listed.iter().find(|l| l.id == target.id) else {
        return Err(format!(
            "Remove: member {:x} ({}) is not in the member list",
            target.id, target.name
        ));
    };
    if !entry.peer_urls.contains(&target.peer_url) {
        return Err(format!(
            "Remove: member {:x} has peer URLs {:?}, not {}'s {}",
            target.id, entry.peer_urls, target.name, target.peer_url
        ));
    }
    if let Some(probed) = members.iter().find(|m| m.name == target.name && m.healthy)
        && probed.id != target.id
    {
        return Err(format!(
            "Remove: {} answers as member {:x}, not {:x}",
            target.name, probed.id, target.id
        ));
    }
    Ok(())
}

fn newest_applied(members: &[Member]) -> u64 {
    members
        .iter()
        .filter(|m| m.healthy)
        .map(|m| m.applied_index)
        .max()
        .unwrap_or_default()
}

/// Whether `target` now holds what `source` holds: the same HashKV and key count at the same
/// revision, and the same AuthRevision. `Err` says what differs or is not known yet.
pub fn agrees(source: &Member, target: &Member) -> Result<(), String> {
    match (&source.hash, &target.hash) {
        (Fact::Known(a), Fact::Known(b)) if a == b => {}
        (Fact::Known(a), Fact::Known(b)) => {
            return Err(format!(
                "{} holds HashKV {:x} ({} keys) at revision {}, the source {:x} ({} keys) at {}",
                target.name, b.hash, b.keys, b.revision, a.hash, a.keys, a.revision
            ));
        }
        (a, b) => {
            return Err(format!(
                "HashKV not known of both ({}: {:?}, {}: {:?})",
                source.name, a, target.name, b
            ));
        }
    }
    match (&source.auth_revision, &target.auth_revision) {
        (Fact::Known(a), Fact::Known(b)) if a == b => Ok(()),
        (Fact::NotOffered, Fact::NotOffered) => Ok(()),
        (a, b) => Err(format!(
            "AuthRevision differs or is unknown ({}: {:?}, {}: {:?})",
            source.name, a, target.name, b
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    fn members(revisions: &[u64], leader: usize) -> Vec<Member> {
        revisions
            .iter()
            .enumerate()
            .map(|(i, r)| Member {
                id: i as u64 + 1,
                name: format!("node{}", i + 1),
                healthy: true,
                is_leader: i == leader,
                voter: true,
                auth_revision: Fact::Known(*r),
                applied_index: 100,
                raft_index: 100,
                db_size: 4096,
                hash: Fact::Known(Hash {
                    hash: 7,
                    revision: 50,
                    keys: 3,
                }),
                incomplete: None,
            })
            .collect()
    }

    #[test]
    fn growing_adds_one_new_member_through_the_learner_steps_and_compares_it_with_the_leader() {
        let m = members(&[1, 1, 1], 1);
        assert_eq!(resize(3, &m), Ok(None));
        let plan = resize(5, &m).expect("ready").expect("a plan");
        assert_eq!(plan.purpose(), Purpose::ScaleOut);
        assert_eq!(plan.source, 2, "the leader");
        let member = NEW_MEMBER;
        assert_eq!(
            plan.steps,
            [
                Step::Create { member },
                Step::Backup { member },
                Step::AddLearner { member },
                Step::WaitCaughtUp { member },
                Step::Promote { member },
                Step::Verify { member },
            ]
        );
    }

    #[test]
    fn shrinking_removes_the_last_member_moving_leadership_off_it_first() {
        let follower_leaves = resize(3, &members(&[1; 5], 0))
            .expect("ready")
            .expect("a plan");
        assert_eq!(follower_leaves.purpose(), Purpose::ScaleIn);
        assert_eq!(
            follower_leaves.steps,
            [Step::Remove { member: 5 }, Step::Retire { member: 5 }]
        );
        assert_eq!(follower_leaves.source, 1);
        let leader_leaves = resize(3, &members(&[1; 5], 4))
            .expect("ready")
            .expect("a plan");
        assert_eq!(
            leader_leaves.steps,
            [
                Step::MoveLeader { to: 1 },
                Step::Remove { member: 5 },
                Step::Retire { member: 5 }
            ]
        );
        assert_eq!(leader_leaves.source, 1);
    }

    #[test]
    fn no_resize_starts_unless_every_member_answers_votes_and_one_leads() {
        let mut down = members(&[1, 1, 1], 0);
        down[2].healthy = false;
        assert_eq!(resize(5, &down), Err("node3 does not answer".into()));
        let mut learner = members(&[1, 1, 1], 0);
        learner[1].voter = false;
        assert_eq!(resize(1, &learner), Err("node2 is a learner".into()));
        let mut unknown = members(&[1, 1, 1], 0);
        unknown[0].incomplete = Some("AuthRevision unknown".into());
        assert_eq!(resize(5, &unknown), Err("AuthRevision unknown".into()));
        assert_eq!(
            resize(5, &members(&[1, 1, 1], 9)),
            Err("no member leads".into())
        );
    }

    fn drift(members: &[Member]) -> Finding {
        Finding::AuthRevisionDrift {
            revisions: members
                .iter()
                .filter_map(|m| m.auth_revision.known().map(|r| (m.id, *r)))
                .collect(),
        }
    }

    #[test]
    fn a_lost_member_is_rebuilt_from_the_leader_only_while_the_others_answer() {
        let mut m = members(&[5, 5, 5], 1);
        m[2].healthy = false;
        let plan = rebuild_lost(3, &m).expect("a plan");
        assert_eq!(plan.source, 2);
        assert_eq!(plan.steps.first(), Some(&Step::Remove { member: 3 }));
        assert_eq!(plan.steps.last(), Some(&Step::Verify { member: 3 }));
        m[0].healthy = false;
        assert!(rebuild_lost(3, &m).is_err(), "two members out");
        let mut no_leader = members(&[5, 5, 5], 2);
        no_leader[2].healthy = false;
        assert!(rebuild_lost(3, &no_leader).is_err(), "the lost one led");
    }

    #[test]
    fn the_seed_is_healed_from_the_lowest_auth_revision() {
        let m = members(&[9, 8, 7], 0);
        let Decision::Heal(plan) = plan(&[drift(&m)], &m, Mode::Automatic) else {
            panic!("expected a plan");
        };
        assert_eq!(plan.source, 3);
        assert_eq!(plan.steps[0], Step::MoveLeader { to: 3 });
        assert_eq!(plan.steps.len(), 1 + 2 * 6);
        assert_eq!(plan.steps[1], Step::Remove { member: 1 });
        assert_eq!(plan.steps[7], Step::Remove { member: 2 });
    }

    #[test]
    fn observe_only_reports_the_plan_and_disabled_does_nothing() {
        let m = members(&[5, 6, 5], 0);
        assert!(
            matches!(plan(&[drift(&m)], &m, Mode::ObserveOnly), Decision::Observe(p) if p.source == 1)
        );
        assert!(matches!(
            plan(&[drift(&m)], &m, Mode::Disabled),
            Decision::Wait(_)
        ));
    }

    #[test]
    fn divergence_without_a_majority_is_left_to_a_human() {
        let m = members(&[5, 5], 0);
        let split = Finding::DataDivergence {
            groups: vec![BTreeSet::from([1]), BTreeSet::from([2])],
        };
        assert!(
            matches!(plan(&[split], &m, Mode::Automatic), Decision::Wait(r) if r.contains("no majority"))
        );
    }

    fn alarm(member: u64, alarm: AlarmKind) -> Finding {
        Finding::Alarm { member, alarm }
    }

    fn rebuilt(plan: &Plan) -> BTreeSet<u64> {
        plan.steps
            .iter()
            .filter_map(|s| match s {
                Step::Remove { member } => Some(*member),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_corrupt_alarm_alone_is_left_to_a_human() {
        let m = members(&[5, 5, 5], 0);
        let findings = [alarm(3, AlarmKind::Corrupt)];
        assert!(matches!(
            plan(&findings, &m, Mode::Automatic),
            Decision::Wait(r) if r.contains("CORRUPT alarm names 3") && r.contains("no divergence")
        ));
    }

    #[test]
    fn a_corrupt_alarm_never_moves_the_source_away_from_the_lowest_auth_revision() {
        // The seed: the others dropped the lowest's writes, so they share the majority hash
        // and the corruption check names the one member that holds everything.
        let m = members(&[9, 8, 7], 0);
        let findings = [drift(&m), alarm(3, AlarmKind::Corrupt)];
        let Decision::Heal(plan) = plan(&findings, &m, Mode::Automatic) else {
            panic!("expected a plan");
        };
        assert_eq!(plan.source, 3);
        assert_eq!(rebuilt(&plan), BTreeSet::from([1, 2]));
    }

    #[test]
    fn a_corrupt_alarm_with_divergence_rebuilds_the_named_member_too() {
        let m = members(&[5, 5, 5, 5, 5], 0);
        let split = Finding::DataDivergence {
            groups: vec![BTreeSet::from([1, 2, 3, 4]), BTreeSet::from([5])],
        };
        let findings = [split, alarm(4, AlarmKind::Corrupt)];
        let Decision::Heal(plan) = plan(&findings, &m, Mode::Automatic) else {
            panic!("expected a plan");
        };
        assert_eq!(plan.source, 1);
        assert_eq!(rebuilt(&plan), BTreeSet::from([4, 5]));
    }

    #[test]
    fn a_majority_source_named_by_a_corrupt_alarm_is_left_to_a_human() {
        let m = members(&[5, 5, 5], 0);
        let split = Finding::DataDivergence {
            groups: vec![BTreeSet::from([1, 2]), BTreeSet::from([3])],
        };
        let findings = [split, alarm(1, AlarmKind::Corrupt)];
        assert!(matches!(
            plan(&findings, &m, Mode::Automatic),
            Decision::Wait(r) if r.contains("disagree")
        ));
    }

    #[test]
    fn nospace_alone_is_left_to_a_human_with_what_to_do() {
        let m = members(&[5, 5, 5], 0);
        let findings = [alarm(2, AlarmKind::NoSpace)];
        assert!(matches!(
            plan(&findings, &m, Mode::Automatic),
            Decision::Wait(r) if r.contains("NOSPACE alarm of 2") && r.contains("defragment")
        ));
    }

    #[test]
    fn divergence_with_a_majority_rebuilds_the_minority() {
        let m = members(&[5, 5, 5], 2);
        let split = Finding::DataDivergence {
            groups: vec![BTreeSet::from([1, 2]), BTreeSet::from([3])],
        };
        let Decision::Heal(plan) = plan(&[split], &m, Mode::Automatic) else {
            panic!("expected a plan");
        };
        assert_eq!(plan.source, 1);
        assert_eq!(plan.steps[0], Step::MoveLeader { to: 1 });
        assert!(
            plan.steps
                .iter()
                .all(|s| !matches!(s, Step::Remove { member: 2 }))
        );
        assert!(plan.steps.contains(&Step::Remove { member: 3 }));
    }

    #[test]
    fn nothing_is_planned_without_quorum_or_with_a_member_down() {
        let mut m = members(&[7, 8, 9], 0);
        m[1].healthy = false;
        assert!(matches!(
            plan(&[drift(&m)], &m, Mode::Automatic),
            Decision::Wait(_)
        ));
        m[2].healthy = false;
        assert!(
            matches!(plan(&[drift(&m)], &m, Mode::Automatic), Decision::Wait(r) if r.contains("quorum"))
        );
    }

    #[test]
    fn a_member_with_an_unknown_auth_revision_is_never_planned_around() {
        let mut m = members(&[9, 8, 7], 0);
        // node3 holds the lowest AuthRevision, but its AuthStatus failed: it reads as unknown,
        // so the lowest known (node2) must not become the source.
        m[2].auth_revision = Fact::Unknown("AuthStatus: deadline exceeded".into());
        m[2].incomplete =
            Some("AuthRevision of node3 unknown (AuthStatus: deadline exceeded)".into());
        let decision = plan(&[drift(&m)], &m, Mode::Automatic);
        assert_eq!(
            decision,
            Decision::Wait("AuthRevision of node3 unknown (AuthStatus: deadline exceeded)".into())
        );
    }

    fn target(id: u64) -> Target {
        Target {
            id,
            name: format!("node{id}"),
            peer_url: format!("http://127.0.0.1:{}", 2380 + id),
        }
    }

    fn listed(ids: &[(u64, bool)]) -> Vec<Listed> {
        ids.iter()
            .map(|&(id, is_learner)| Listed {
                id,
                peer_urls: vec![format!("http://127.0.0.1:{}", 2380 + id)],
                is_learner,
            })
            .collect()
    }

    fn fresh<'a>(members: &'a [Member], listed: &'a [Listed]) -> Fresh<'a> {
        Fresh {
            members,
            listed: Some(listed),
            stopped: None,
            replicas: 3,
            max_lag: 10,
            mark: None,
        }
    }

    #[test]
    fn remove_needs_a_caught_up_quorum_without_the_target_and_the_planned_identity() {
        let m = members(&[5, 6, 6], 0);
        let all = listed(&[(1, false), (2, false), (3, false)]);
        let remove = Step::Remove { member: 2 };
        assert_eq!(check(&remove, 1, &target(2), &fresh(&m, &all)), Ok(()));
        // The only other voter is frozen: removing node2 would leave one of two answering.
        let mut frozen = m.clone();
        frozen[2].healthy = false;
        let why = check(&remove, 1, &target(2), &fresh(&frozen, &all)).expect_err("no quorum");
        assert!(why.contains("not a quorum"), "{why}");
        // Or it answers but trails far behind.
        let mut behind = m.clone();
        behind[2].applied_index = 10;
        assert!(check(&remove, 1, &target(2), &fresh(&behind, &all)).is_err());
        // The member list says another peer URL for that ID.
        let mut moved = all.clone();
        moved[1].peer_urls = vec!["http://127.0.0.1:9999".into()];
        let why = check(&remove, 1, &target(2), &fresh(&m, &moved)).expect_err("identity");
        assert!(why.contains("peer URLs"), "{why}");
        // Another member is already out of the voting set.
        let learner = listed(&[(1, false), (2, false), (3, true)]);
        assert!(check(&remove, 1, &target(2), &fresh(&m, &learner)).is_err());
        // The source itself is never removed.
        assert!(check(&Step::Remove { member: 1 }, 1, &target(1), &fresh(&m, &all)).is_err());
    }

    #[test]
    fn every_step_needs_the_source_to_answer_fully_and_hold_the_lowest_auth_revision() {
        let m = members(&[5, 6, 6], 0);
        let all = listed(&[(1, false), (2, false), (3, false)]);
        let step = Step::MoveLeader { to: 1 };
        let mut down = m.clone();
        down[0].healthy = false;
        assert!(check(&step, 1, &target(1), &fresh(&down, &all)).is_err());
        let mut half = m.clone();
        half[0].incomplete = Some("HashKV of node1 unknown (HashKV: deadline exceeded)".into());
        let why = check(&step, 1, &target(1), &fresh(&half, &all)).expect_err("incomplete");
        assert!(why.contains("not fully observed"), "{why}");
        let mut lower = m.clone();
        lower[2].auth_revision = Fact::Known(4);
        let why = check(&step, 1, &target(2), &fresh(&lower, &all)).expect_err("lower");
        assert!(
            why.contains("no longer holds the most complete data"),
            "{why}"
        );
    }

    #[test]
    fn backup_needs_the_target_out_of_the_cluster_and_stopped() {
        let m = members(&[5, 6, 6], 0);
        let without = listed(&[(1, false), (3, false)]);
        let backup = Step::Backup { member: 2 };
        let mut f = fresh(&m, &without);
        assert!(
            check(&backup, 1, &target(2), &f).is_err(),
            "running unknown"
        );
        f.stopped = Some(false);
        assert!(check(&backup, 1, &target(2), &f).is_err(), "still runs");
        f.stopped = Some(true);
        assert_eq!(check(&backup, 1, &target(2), &f), Ok(()));
        let with = listed(&[(1, false), (2, false), (3, false)]);
        let still = Fresh {
            stopped: Some(true),
            ..fresh(&m, &with)
        };
        assert!(
            check(&backup, 1, &target(2), &still).is_err(),
            "still listed"
        );
    }

    #[test]
    fn a_learner_is_added_only_with_everyone_else_voting_and_promoted_once_caught_up() {
        let m = members(&[5, 5, 5], 0);
        let two = listed(&[(1, false), (3, false)]);
        let add = Step::AddLearner { member: 2 };
        assert_eq!(check(&add, 1, &target(2), &fresh(&m, &two)), Ok(()));
        let one = listed(&[(1, false)]);
        assert!(check(&add, 1, &target(2), &fresh(&m, &one)).is_err());
        let promote = Step::Promote { member: 2 };
        let with = listed(&[(1, false), (2, true), (3, false)]);
        let mut f = fresh(&m, &with);
        assert!(check(&promote, 1, &target(2), &f).is_err(), "never waited");
        f.mark = Some(100);
        assert_eq!(check(&promote, 1, &target(2), &f), Ok(()));
        f.mark = Some(150);
        assert!(
            check(&promote, 1, &target(2), &f).is_err(),
            "short of the mark"
        );
    }

    #[test]
    fn a_rebuilt_member_agrees_only_on_hash_keys_and_auth_revision() {
        let m = members(&[5, 5, 6], 0);
        assert_eq!(agrees(&m[0], &m[1]), Ok(()));
        assert!(agrees(&m[0], &m[2]).is_err(), "AuthRevision differs");
        let mut other = m[1].clone();
        other.hash = Fact::Known(Hash {
            hash: 8,
            revision: 50,
            keys: 3,
        });
        assert!(agrees(&m[0], &other).is_err());
        other.hash = Fact::Unknown("HashKV: deadline exceeded".into());
        assert!(agrees(&m[0], &other).is_err());
    }

    proptest! {
        /// The safety rules hold for any drift: the source has the lowest AuthRevision and is
        /// never taken out; leadership moves first; each rebuilt member goes through the full
        /// sequence before the next one is removed; members equal to the source are untouched.
        #[test]
        fn plans_are_safe(revisions in prop::collection::vec(1u64..6, 1..8), leader in 0usize..8) {
            let leader = leader % revisions.len();
            let m = members(&revisions, leader);
            let finding = drift(&m);
            match plan(std::slice::from_ref(&finding), &m, Mode::Automatic) {
                Decision::Heal(p) => {
                    let lowest = *revisions.iter().min().unwrap_or(&0);
                    let source = m.iter().find(|x| x.id == p.source).expect("source is a member");
                    prop_assert_eq!(&source.auth_revision, &Fact::Known(lowest));
                    let mut out: Option<u64> = None;
                    let mut rebuilt = BTreeSet::new();
                    for (i, step) in p.steps.iter().enumerate() {
                        match step {
                            Step::MoveLeader { to } => {
                                prop_assert_eq!(i, 0);
                                prop_assert_eq!(*to, p.source);
                            }
                            Step::Remove { member } => {
                                prop_assert!(out.is_none(), "two members out at once");
                                prop_assert_ne!(*member, p.source);
                                prop_assert!(rebuilt.insert(*member), "member rebuilt twice");
                                out = Some(*member);
                            }
                            Step::Verify { member } => {
                                prop_assert_eq!(out, Some(*member));
                                out = None;
                            }
                            Step::Backup { member } | Step::AddLearner { member }
                            | Step::WaitCaughtUp { member } | Step::Promote { member } => {
                                prop_assert_eq!(out, Some(*member));
                            }
                            Step::Create { .. } | Step::Retire { .. } => {
                                prop_assert!(false, "a heal never resizes: {:?}", step);
                            }
                        }
                    }
                    prop_assert!(out.is_none());
                    let expected: BTreeSet<u64> = m.iter().filter(|x| x.auth_revision != Fact::Known(lowest)).map(|x| x.id).collect();
                    prop_assert_eq!(rebuilt, expected);
                }
                Decision::Healthy => {
                    let distinct: BTreeMap<u64, ()> = revisions.iter().map(|r| (*r, ())).collect();
                    prop_assert_eq!(distinct.len(), 1);
                }
                other => prop_assert!(false, "unexpected {:?}", other),
            }
        }
    }
}
