//! From what the operator saw and decided to a `StorageCluster` status: the members table,
//! the leader, the AuthRevision drift, the phase and the conditions, in Kubernetes API
//! conventions. The same status goes to the resource on Kubernetes and to `status.json`
//! locally.
//!
//! Pure: probe observations, findings, the planner's decision and the heal's progress in, a
//! status out. A condition keeps its `lastTransitionTime` while its status stays the same.

use crds::{
    DefragmentationStatus, HealingStatus, MemberStatus, Phase, Role, StorageClusterStatus,
    condition,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::detector::{AlarmKind, Finding, Observation};
use crate::planner::{Decision, NEW_MEMBER, Plan, Step};

/// One member: its name and client URL where it lives, and what the last probe saw.
#[derive(Clone, Debug)]
pub struct MemberView {
    /// Pod or process name.
    pub name: String,
    /// Client URL.
    pub endpoint: String,
    /// The last probe of it.
    pub observation: Observation,
    /// The template revision it runs and the one it should run (`None`: unknown).
    pub revisions: (Option<String>, Option<String>),
}

/// Everything a status is made of.
#[derive(Clone, Debug)]
pub struct Inputs<'a> {
    /// `metadata.generation` of the resource (none locally).
    pub generation: Option<i64>,
    /// Members the spec asks for (the cluster has `members`, more or fewer while it is
    /// resized).
    pub replicas: i32,
    /// The members as last probed.
    pub members: &'a [MemberView],
    /// Findings of the detector.
    pub findings: &'a [Finding],
    /// What the planner decided about them.
    pub decision: &'a Decision,
    /// Progress of the heal: the plan, the running step, the last result and the count.
    pub healing: Option<HealingStatus>,
    /// Why healing is held back, when it is (backoff after drift came back).
    pub held_back: Option<String>,
    /// Why the cluster's auth is not the operator's, when it is not.
    pub auth_untrusted: Option<&'a str>,
    /// Label selector of the members (for the scale subresource).
    pub selector: String,
    /// Scheduled defragmentation, as the pass left it.
    pub defragmentation: Option<DefragmentationStatus>,
    /// A rolling update under way: whether it stalled (a restarted member did not come back),
    /// and how it stands.
    pub rollout: Option<(bool, String)>,
    /// Why the resize the spec asks for has not started, when it has not.
    pub resize_waits: Option<String>,
    /// A majority of members gone for good, in words ([`crate::quorum::Loss::message`]).
    pub quorum_lost: Option<String>,
    /// The status written last, for condition transition times.
    pub previous: Option<&'a StorageClusterStatus>,
    /// Now.
    pub now: Time,
}

/// The status for `inputs`.
pub fn build(inputs: &Inputs<'_>) -> StorageClusterStatus {
    let members: Vec<MemberStatus> = inputs
        .members
        .iter()
        .map(|m| member_status(m, inputs.findings))
        .collect();
    let ready = members.iter().filter(|m| m.healthy).count() as i32;
    // The members the cluster has (more or fewer than the spec asks for while it is resized);
    // before any was probed, those the spec asks for.
    let size = match inputs.members.len() {
        0 => inputs.replicas,
        n => n as i32,
    };
    let leader = inputs
        .members
        .iter()
        .find(|m| m.observation.reachable && m.observation.is_leader)
        .map(|m| m.name.clone());
    let revisions: Vec<u64> = inputs
        .members
        .iter()
        .filter(|m| m.observation.reachable)
        .filter_map(|m| m.observation.auth_revision.known().copied())
        .collect();
    let drift = match (revisions.iter().max(), revisions.iter().min()) {
        (Some(max), Some(min)) => max - min,
        _ => 0,
    };
    let running = inputs
        .healing
        .as_ref()
        .filter(|h| h.step.is_some() && !h.plan.is_empty());
    // A resize runs through the same record as a heal; its steps tell it apart.
    let resizing_now = running.and_then(|h| h.progress.as_ref()).is_some_and(|p| {
        p.steps
            .iter()
            .any(|s| s.action == "Create" || s.action == "Retire")
    });
    let healing_now = running.is_some() && !resizing_now;
    let diverged = divergence(inputs.findings);
    let member_down = inputs
        .findings
        .iter()
        .any(|f| matches!(f, Finding::Unreachable { .. } | Finding::Lagging { .. }))
        || ready < size;
    let no_space = inputs.findings.iter().any(|f| {
        matches!(
            f,
            Finding::Alarm {
                alarm: AlarmKind::NoSpace,
                ..
            }
        )
    });
    let degraded = member_down || no_space;
    let quorum = ready * 2 > size;
    let was_starting = inputs
        .previous
        .is_none_or(|p| matches!(p.phase, Phase::Pending | Phase::Bootstrapping));
    let phase = if healing_now {
        Phase::Healing
    } else if resizing_now {
        Phase::Scaling
    } else if !quorum && was_starting {
        Phase::Bootstrapping
    } else if !quorum {
        Phase::Failed
    } else if diverged.is_some() {
        Phase::Diverged
    } else if degraded {
        Phase::Degraded
    } else {
        Phase::Available
    };

    let mut conditions = Vec::new();
    let mut set = |type_: &str, status: bool, reason: &str, message: String| {
        conditions.push(condition(
            inputs.previous,
            type_,
            status,
            reason,
            message,
            &inputs.now,
            inputs.generation,
        ));
    };
    match &inputs.quorum_lost {
        Some(why) => set(condition::AVAILABLE, false, "QuorumLost", why.clone()),
        None => set(
            condition::AVAILABLE,
            quorum,
            if quorum { "QuorumReady" } else { "NoQuorum" },
            format!("{ready} of {size} members answer"),
        ),
    }
    let starting = !quorum && was_starting;
    let rolling = inputs
        .rollout
        .as_ref()
        .filter(|_| !healing_now && !resizing_now);
    let resize_waits = inputs
        .resize_waits
        .as_ref()
        .filter(|_| !healing_now && !resizing_now && rolling.is_none() && !starting);
    set(
        condition::PROGRESSING,
        starting || healing_now || resizing_now || rolling.is_some_and(|(stalled, _)| !stalled),
        if healing_now {
            "Healing"
        } else if resizing_now {
            "Scaling"
        } else if let Some((stalled, _)) = rolling {
            if *stalled {
                "RolloutStalled"
            } else {
                "RollingUpdate"
            }
        } else if resize_waits.is_some() {
            "ScaleWaiting"
        } else if starting {
            "Bootstrapping"
        } else {
            "Stable"
        },
        if healing_now {
            "rebuilding members from the source of truth".to_string()
        } else if let Some((_, message)) = rolling {
            message.clone()
        } else if let Some(why) = resize_waits {
            format!(
                "spec.replicas is {} and the cluster has {size} members; resizing waits: {why}",
                inputs.replicas
            )
        } else if resizing_now {
            format!(
                "resizing to {} members, one member at a time ({size} now, a member being \
                 added included)",
                inputs.replicas
            )
        } else if starting {
            "members are starting".to_string()
        } else {
            "nothing in progress".to_string()
        },
    );
    let degraded_message = inputs
        .findings
        .iter()
        .filter_map(|f| match f {
            Finding::Unreachable { name } => Some(format!("{name} is unreachable")),
            Finding::Lagging { name, behind } => Some(format!("{name} is {behind} entries behind")),
            Finding::Alarm {
                member,
                alarm: AlarmKind::NoSpace,
            } => Some(format!(
                "the NOSPACE alarm of {member:x} is active: writes that need space are refused \
                 until compaction, defragment and `etcdctl alarm disarm`"
            )),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("; ");
    set(
        condition::DEGRADED,
        degraded,
        if member_down {
            "MemberDown"
        } else if no_space {
            "NoSpace"
        } else {
            "AllMembersUp"
        },
        if degraded_message.is_empty() {
            format!("{ready} of {size} members answer")
        } else {
            degraded_message
        },
    );
    let (diverged_status, diverged_reason, mut diverged_message) = match &diverged {
        Some((reason, message)) => (true, *reason, message.clone()),
        None => (false, "MembersAgree", "members agree".to_string()),
    };
    let diverged_reason = match &inputs.held_back {
        // The heal is held back because drift came right back after earlier heals.
        Some(_) if diverged_status => "DriftRecurred",
        _ => diverged_reason,
    };
    match inputs.decision {
        Decision::Wait(why) if diverged_status => {
            diverged_message.push_str(&format!("; not healing: {why}"));
        }
        Decision::Observe(plan) => {
            diverged_message.push_str(&format!(
                "; healing mode ObserveOnly, the plan would be: {}",
                describe_plan(plan).join(", ")
            ));
        }
        _ => {}
    }
    set(
        condition::DIVERGED,
        diverged_status,
        diverged_reason,
        diverged_message,
    );
    set(
        condition::AUTH_UNTRUSTED,
        inputs.auth_untrusted.is_some(),
        if inputs.auth_untrusted.is_some() {
            "NotTheOperatorsAuth"
        } else {
            "OperatorsAuth"
        },
        match inputs.auth_untrusted {
            Some(why) => format!("{why}; not healing"),
            None => "the operator's credentials are the cluster's".to_string(),
        },
    );
    let last_result = inputs.healing.as_ref().and_then(|h| h.last_result.clone());
    set(
        condition::HEALING,
        healing_now,
        if healing_now {
            "HealRunning"
        } else if last_result.is_some() {
            "HealFinished"
        } else {
            "NoHealNeeded"
        },
        match (&inputs.healing, healing_now) {
            (Some(h), true) => {
                let step = h.step.unwrap_or_default() as usize;
                let progress = h.progress.as_ref();
                let paused = progress
                    .and_then(|p| p.paused_because.as_deref())
                    .map(|why| format!(" (paused: {why})"))
                    .unwrap_or_default();
                let abandoned = progress
                    .and_then(|p| p.abandoned.as_deref())
                    .map(|why| format!(" (heal {why}; bringing the member back)"))
                    .unwrap_or_default();
                format!(
                    "step {} of {}: {}{paused}{abandoned}",
                    step + 1,
                    h.plan.len(),
                    h.plan.get(step).map(String::as_str).unwrap_or("")
                )
            }
            _ => last_result.unwrap_or_else(|| "no heal has run".to_string()),
        },
    );

    StorageClusterStatus {
        observed_generation: inputs.generation,
        conditions,
        phase,
        replicas: inputs.members.len() as i32,
        ready_replicas: ready,
        selector: inputs.selector.clone(),
        leader,
        members,
        auth_revision_drift: drift,
        healing: inputs.healing.clone(),
        defragmentation: inputs.defragmentation.clone(),
        // The drivers set what this pass did; until then it stands as recorded.
        backup: inputs.previous.and_then(|p| p.backup.clone()),
        restored_from: inputs.previous.and_then(|p| p.restored_from.clone()),
    }
}

/// The reason and message of the Diverged condition, when members disagree.
pub(crate) fn divergence(findings: &[Finding]) -> Option<(&'static str, String)> {
    let compared = findings.iter().find_map(|f| match f {
        Finding::AuthRevisionDrift { revisions } => Some((
            "AuthRevisionDrift",
            format!(
                "members disagree on the AuthRevision ({})",
                revisions
                    .iter()
                    .map(|(id, r)| format!("{id:x}={r}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
        Finding::DataDivergence { groups } => Some((
            "DataDivergence",
            format!(
                "members hold different data at the same revision (groups: {})",
                groups
                    .iter()
                    .map(|g| g
                        .iter()
                        .map(|id| format!("{id:x}"))
                        .collect::<Vec<_>>()
                        .join("+"))
                    .collect::<Vec<_>>()
                    .join(" vs ")
            ),
        )),
        _ => None,
    });
    // A CORRUPT alarm alone (the probes saw the members agree, or could not compare them)
    // still says a corruption check found data differing.
    let corrupt: Vec<String> = findings
        .iter()
        .filter_map(|f| match f {
            Finding::Alarm {
                member,
                alarm: AlarmKind::Corrupt,
            } => Some(format!("{member:x}")),
            _ => None,
        })
        .collect();
    match (compared, corrupt.is_empty()) {
        (Some((reason, message)), true) => Some((reason, message)),
        (Some((reason, message)), false) => Some((
            reason,
            format!("{message}; a CORRUPT alarm names {}", corrupt.join(", ")),
        )),
        (None, false) => Some((
            "CorruptAlarm",
            format!(
                "a CORRUPT alarm names {}: a corruption check found its data differing, and \
                 every write is refused",
                corrupt.join(", ")
            ),
        )),
        (None, true) => None,
    }
}

fn member_status(view: &MemberView, findings: &[Finding]) -> MemberStatus {
    let o = &view.observation;
    let role = o.reachable.then_some(if o.is_leader {
        Role::Leader
    } else if o.is_learner {
        Role::Learner
    } else {
        Role::Follower
    });
    MemberStatus {
        name: view.name.clone(),
        member_id: if o.member == 0 {
            String::new()
        } else {
            format!("{:x}", o.member)
        },
        endpoint: view.endpoint.clone(),
        role,
        healthy: o.reachable,
        auth_revision: o.auth_revision.known().copied(),
        revision: o.revision,
        raft_index: o.raft_index,
        applied_index: o.applied_index,
        db_size: o.db_size,
        key_count: o.key_count.known().copied(),
        hash_kv: o.hash.known().map(|h| h.hash),
        hash_revision: o.hash.known().map(|h| h.revision),
        unknown: o.incomplete(),
        template_revision: view.revisions.0.clone(),
        desired_template_revision: view.revisions.1.clone(),
        alarms: findings
            .iter()
            .filter_map(|f| match f {
                Finding::Alarm { member, alarm } if o.member != 0 && *member == o.member => {
                    Some(alarm.name().to_string())
                }
                _ => None,
            })
            .collect(),
    }
}

fn condition(
    previous: Option<&StorageClusterStatus>,
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    now: &Time,
    generation: Option<i64>,
) -> Condition {
    let status = if status { "True" } else { "False" }.to_string();
    let last_transition_time = previous
        .and_then(|p| p.conditions.iter().find(|c| c.type_ == type_))
        .filter(|c| c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    Condition {
        type_: type_.to_string(),
        status,
        reason: reason.to_string(),
        message,
        last_transition_time,
        observed_generation: generation,
    }
}

/// One line per step of `plan`, as the status lists it.
pub fn describe_plan(plan: &Plan) -> Vec<String> {
    let who = |member: u64| match member {
        NEW_MEMBER => "the new member".to_string(),
        id => format!("{id:x}"),
    };
    plan.steps
        .iter()
        .map(|step| match step {
            Step::MoveLeader { to } => format!("move leadership to {to:x}"),
            Step::Remove { member } => format!("remove {member:x}"),
            Step::Backup { member } => format!("back up and wipe {}", who(*member)),
            Step::AddLearner { member: NEW_MEMBER } => "add the new member as a learner".into(),
            Step::AddLearner { member } => format!("add {member:x} back as a learner"),
            Step::WaitCaughtUp { member } => format!("wait for {} to catch up", who(*member)),
            Step::Promote { member } => format!("promote {}", who(*member)),
            Step::Verify { member } => format!("verify {} agrees with the source", who(*member)),
            Step::Create { .. } => "make the new member's place".to_string(),
            Step::Retire { member } => format!("retire {member:x}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::detector::Fact;

    fn now(second: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(second).expect("valid time"))
    }

    fn view(id: u64, auth_revision: u64, leader: bool, reachable: bool) -> MemberView {
        MemberView {
            revisions: (None, None),
            name: format!("node{id}"),
            endpoint: format!("http://127.0.0.1:{}", 2379 + id),
            observation: Observation {
                name: format!("node{id}"),
                member: id,
                reachable,
                is_leader: leader,
                is_learner: false,
                db_size: 8192,
                raft_term: 2,
                raft_index: 40,
                applied_index: 40,
                revision: 10,
                auth_revision: Fact::Known(auth_revision),
                key_count: Fact::Known(9),
                hash: Fact::Known(crate::detector::Hash {
                    hash: 77,
                    revision: 10,
                    keys: 9,
                }),
                alarms: Fact::Known(Vec::new()),
            },
        }
    }

    fn inputs<'a>(
        members: &'a [MemberView],
        findings: &'a [Finding],
        decision: &'a Decision,
        previous: Option<&'a StorageClusterStatus>,
        second: i64,
    ) -> Inputs<'a> {
        Inputs {
            generation: Some(4),
            replicas: 3,
            members,
            findings,
            decision,
            healing: None,
            held_back: None,
            auth_untrusted: None,
            selector: "app=x".into(),
            defragmentation: None,
            rollout: None,
            resize_waits: None,
            quorum_lost: None,
            previous,
            now: now(second),
        }
    }

    fn condition_of<'a>(status: &'a StorageClusterStatus, type_: &str) -> &'a Condition {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
            .unwrap_or_else(|| panic!("no {type_} condition"))
    }

    #[test]
    fn agreeing_members_are_available_with_a_leader_and_no_drift() {
        let members = [
            view(1, 5, true, true),
            view(2, 5, false, true),
            view(3, 5, false, true),
        ];
        let status = build(&inputs(&members, &[], &Decision::Healthy, None, 100));
        assert_eq!(status.phase, Phase::Available);
        assert_eq!(status.leader.as_deref(), Some("node1"));
        assert_eq!((status.replicas, status.ready_replicas), (3, 3));
        assert_eq!(status.auth_revision_drift, 0);
        assert_eq!(status.observed_generation, Some(4));
        assert_eq!(status.members[0].member_id, "1");
        assert_eq!(status.members[0].role, Some(Role::Leader));
        assert_eq!(status.members[1].role, Some(Role::Follower));
        assert_eq!(status.members[2].hash_kv, Some(77));
        assert_eq!(condition_of(&status, condition::AVAILABLE).status, "True");
        assert_eq!(condition_of(&status, condition::DIVERGED).status, "False");
        assert_eq!(
            condition_of(&status, condition::AUTH_UNTRUSTED).status,
            "False"
        );
        assert_eq!(status.conditions.len(), 6);
    }

    #[test]
    fn untrusted_auth_sets_its_condition_with_the_reason() {
        let members = [view(1, 5, true, true), view(2, 5, false, true)];
        let why = "users the operator did not create exist before auth is on: [\"mallory\"]";
        let status = build(&Inputs {
            auth_untrusted: Some(why),
            ..inputs(&members, &[], &Decision::Healthy, None, 100)
        });
        let untrusted = condition_of(&status, condition::AUTH_UNTRUSTED);
        assert_eq!(untrusted.status, "True");
        assert_eq!(untrusted.reason, "NotTheOperatorsAuth");
        assert!(untrusted.message.contains("mallory") && untrusted.message.contains("not healing"));
    }

    #[test]
    fn drift_sets_diverged_with_the_revisions_and_the_reason_not_to_heal() {
        let members = [
            view(1, 7, true, true),
            view(2, 6, false, true),
            view(3, 5, false, true),
        ];
        let findings = [Finding::AuthRevisionDrift {
            revisions: BTreeMap::from([(1, 7), (2, 6), (3, 5)]),
        }];
        let decision = Decision::Wait("healing is disabled".into());
        let status = build(&inputs(&members, &findings, &decision, None, 100));
        assert_eq!(status.phase, Phase::Diverged);
        assert_eq!(status.auth_revision_drift, 2);
        let diverged = condition_of(&status, condition::DIVERGED);
        assert_eq!(diverged.status, "True");
        assert_eq!(diverged.reason, "AuthRevisionDrift");
        assert!(
            diverged.message.contains("1=7, 2=6, 3=5"),
            "{}",
            diverged.message
        );
        assert!(
            diverged
                .message
                .ends_with("not healing: healing is disabled")
        );
    }

    #[test]
    fn a_corrupt_alarm_sets_diverged_and_names_the_member_in_its_row() {
        let members = [
            view(1, 5, true, true),
            view(2, 5, false, true),
            view(3, 5, false, true),
        ];
        let findings = [Finding::Alarm {
            member: 3,
            alarm: AlarmKind::Corrupt,
        }];
        let decision = Decision::Wait("a CORRUPT alarm names 3".into());
        let status = build(&inputs(&members, &findings, &decision, None, 100));
        assert_eq!(status.phase, Phase::Diverged);
        let diverged = condition_of(&status, condition::DIVERGED);
        assert_eq!(
            (diverged.status.as_str(), diverged.reason.as_str()),
            ("True", "CorruptAlarm")
        );
        assert!(diverged.message.contains("names 3"), "{}", diverged.message);
        assert_eq!(status.members[2].alarms, vec!["CORRUPT".to_string()]);
        assert!(status.members[0].alarms.is_empty());
    }

    #[test]
    fn a_corrupt_alarm_is_added_to_the_divergence_the_probes_saw() {
        let members = [view(1, 5, true, true), view(2, 5, false, true)];
        let findings = [
            Finding::DataDivergence {
                groups: vec![BTreeSet::from([1]), BTreeSet::from([2])],
            },
            Finding::Alarm {
                member: 2,
                alarm: AlarmKind::Corrupt,
            },
        ];
        let status = build(&inputs(&members, &findings, &Decision::Healthy, None, 100));
        let diverged = condition_of(&status, condition::DIVERGED);
        assert_eq!(diverged.reason, "DataDivergence");
        assert!(
            diverged.message.ends_with("a CORRUPT alarm names 2"),
            "{}",
            diverged.message
        );
    }

    #[test]
    fn a_nospace_alarm_degrades_without_divergence() {
        let members = [
            view(1, 5, true, true),
            view(2, 5, false, true),
            view(3, 5, false, true),
        ];
        let findings = [Finding::Alarm {
            member: 2,
            alarm: AlarmKind::NoSpace,
        }];
        let decision = Decision::Wait("the NOSPACE alarm of 2 is active".into());
        let status = build(&inputs(&members, &findings, &decision, None, 100));
        assert_eq!(status.phase, Phase::Degraded);
        let degraded = condition_of(&status, condition::DEGRADED);
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "NoSpace")
        );
        assert!(
            degraded.message.contains("NOSPACE alarm of 2"),
            "{}",
            degraded.message
        );
        assert_eq!(condition_of(&status, condition::DIVERGED).status, "False");
        assert_eq!(status.members[1].alarms, vec!["NOSPACE".to_string()]);
    }

    #[test]
    fn a_running_heal_shows_its_step_and_phase() {
        let members = [
            view(1, 5, true, true),
            view(2, 5, false, true),
            view(3, 5, false, true),
        ];
        let plan = Plan {
            source: 1,
            steps: vec![Step::Remove { member: 2 }, Step::Backup { member: 2 }],
        };
        let mut i = inputs(&members, &[], &Decision::Healthy, None, 100);
        i.healing = Some(HealingStatus {
            plan: describe_plan(&plan),
            step: Some(1),
            last_result: None,
            count: 0,
            progress: None,
        });
        let status = build(&i);
        assert_eq!(status.phase, Phase::Healing);
        let healing = condition_of(&status, condition::HEALING);
        assert_eq!(healing.status, "True");
        assert_eq!(healing.message, "step 2 of 2: back up and wipe 2");
        assert_eq!(condition_of(&status, condition::PROGRESSING).status, "True");
    }

    #[test]
    fn an_unreachable_member_degrades_and_losing_quorum_fails() {
        let one_down = [
            view(1, 5, true, true),
            view(2, 5, false, true),
            view(3, 0, false, false),
        ];
        let findings = [Finding::Unreachable {
            name: "node3".into(),
        }];
        let previous = build(&inputs(&one_down, &[], &Decision::Healthy, None, 50));
        let status = build(&inputs(
            &one_down,
            &findings,
            &Decision::Wait("node3 is unreachable".into()),
            Some(&previous),
            100,
        ));
        assert_eq!(status.phase, Phase::Degraded);
        assert_eq!(status.members[2].role, None);
        assert_eq!(
            condition_of(&status, condition::DEGRADED).message,
            "node3 is unreachable"
        );
        let two_down = [
            view(1, 5, true, true),
            view(2, 0, false, false),
            view(3, 0, false, false),
        ];
        let status = build(&inputs(
            &two_down,
            &[],
            &Decision::Healthy,
            Some(&status),
            150,
        ));
        assert_eq!(status.phase, Phase::Failed);
        assert_eq!(condition_of(&status, condition::AVAILABLE).status, "False");
    }

    #[test]
    fn members_not_answering_yet_are_bootstrapping() {
        let none = [
            view(1, 0, false, false),
            view(2, 0, false, false),
            view(3, 0, false, false),
        ];
        let status = build(&inputs(&none, &[], &Decision::Healthy, None, 100));
        assert_eq!(status.phase, Phase::Bootstrapping);
        assert_eq!(
            condition_of(&status, condition::PROGRESSING).reason,
            "Bootstrapping"
        );
    }

    #[test]
    fn a_condition_keeps_its_transition_time_until_its_status_changes() {
        let members = [
            view(1, 5, true, true),
            view(2, 5, false, true),
            view(3, 5, false, true),
        ];
        let first = build(&inputs(&members, &[], &Decision::Healthy, None, 100));
        let second = build(&inputs(
            &members,
            &[],
            &Decision::Healthy,
            Some(&first),
            200,
        ));
        assert_eq!(
            condition_of(&second, condition::AVAILABLE).last_transition_time,
            now(100)
        );
        let findings = [Finding::AuthRevisionDrift {
            revisions: BTreeMap::from([(1, 5), (2, 6)]),
        }];
        let third = build(&inputs(
            &members,
            &findings,
            &Decision::Healthy,
            Some(&second),
            300,
        ));
        assert_eq!(
            condition_of(&third, condition::DIVERGED).last_transition_time,
            now(300)
        );
        assert_eq!(
            condition_of(&third, condition::AVAILABLE).last_transition_time,
            now(100)
        );
    }

    #[test]
    fn drift_held_back_by_the_backoff_says_it_recurred_and_when_the_next_heal_may_run() {
        let members = [
            view(1, 6, true, true),
            view(2, 5, false, true),
            view(3, 5, false, true),
        ];
        let findings = [Finding::AuthRevisionDrift {
            revisions: BTreeMap::from([(1, 6), (2, 5), (3, 5)]),
        }];
        let why = "drift came back 1 time(s) after a heal: the next heal waits until T (backoff)";
        let decision = Decision::Wait(why.into());
        let mut i = inputs(&members, &findings, &decision, None, 100);
        i.held_back = Some(why.into());
        let status = build(&i);
        let diverged = condition_of(&status, condition::DIVERGED);
        assert_eq!(diverged.reason, "DriftRecurred");
        assert_eq!(
            diverged.message.matches("drift came back").count(),
            1,
            "{}",
            diverged.message
        );
    }

    #[test]
    fn observe_only_reports_the_plan_it_would_run() {
        let members = [
            view(1, 6, true, true),
            view(2, 5, false, true),
            view(3, 5, false, true),
        ];
        let findings = [Finding::AuthRevisionDrift {
            revisions: BTreeMap::from([(1, 6), (2, 5), (3, 5)]),
        }];
        let decision = Decision::Observe(Plan {
            source: 2,
            steps: vec![Step::MoveLeader { to: 2 }, Step::Remove { member: 1 }],
        });
        let status = build(&inputs(&members, &findings, &decision, None, 100));
        let diverged = condition_of(&status, condition::DIVERGED);
        assert!(
            diverged
                .message
                .ends_with("the plan would be: move leadership to 2, remove 1"),
            "{}",
            diverged.message
        );
        assert_eq!(status.phase, Phase::Diverged);
    }
}
