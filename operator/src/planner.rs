//! From findings to a recovery plan: which member holds the complete data (the source), and
//! the steps that rebuild every other member from it, one member at a time.
//!
//! Pure: findings, the cluster's members and the policy in, a decision out. The rules, as in
//! ../shared/DESIGN.md: after AuthRevision drift the member with the **lowest** AuthRevision is
//! the source (it rejected nothing); after divergence without drift, the strict majority's
//! data is; anything else is ambiguous and left to a human. A plan moves leadership to the
//! source first, then for each member that differs from it: remove, back up, wipe, re-add as
//! a learner, wait until caught up, promote, verify. Nothing is planned without a healthy
//! quorum, or while a member is unreachable or lagging (never two members out at once).

use std::collections::BTreeSet;

use crate::detector::Finding;

/// A member as the planner sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Member ID.
    pub id: u64,
    /// Whether it answered the last probe.
    pub healthy: bool,
    /// Whether it leads.
    pub is_leader: bool,
    /// Whether it votes (learners do not).
    pub voter: bool,
    /// Its AuthRevision.
    pub auth_revision: u64,
}

impl Member {
    /// The planner's view of a probed member.
    pub fn observed(o: &crate::detector::Observation) -> Member {
        Member {
            id: o.member,
            healthy: o.reachable,
            is_leader: o.is_leader,
            voter: !o.is_learner,
            auth_revision: o.auth_revision,
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

/// One step of a recovery plan.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Step {
    /// Hand leadership to the member (MoveLeader).
    MoveLeader {
        /// The new leader.
        to: u64,
    },
    /// Remove the member from the cluster (MemberRemove).
    Remove {
        /// The member.
        member: u64,
    },
    /// Copy its data directory aside.
    Backup {
        /// The member.
        member: u64,
    },
    /// Delete its data directory.
    Wipe {
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
    /// Check it now agrees with the source (AuthRevision, HashKV).
    Verify {
        /// The member.
        member: u64,
    },
}

/// A recovery plan.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Plan {
    /// The member whose data every other member is rebuilt from.
    pub source: u64,
    /// Steps in order.
    pub steps: Vec<Step>,
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
            Finding::Unreachable { member } => {
                return Decision::Wait(format!("member {member:x} is unreachable"));
            }
            Finding::Lagging { member, behind } => {
                return Decision::Wait(format!("member {member:x} is {behind} entries behind"));
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

/// The member holding the complete data.
/// Rebuilds `lost`, a member that lost its data (it can only rejoin as a new member), from the
/// leader: remove it, move aside what is left of its data, add it back as a learner, let it
/// catch up, promote, verify. Only while every other member answers and they are a quorum of
/// the voters, so nothing else is out while it is.
pub fn rebuild_lost(lost: u64, members: &[Member]) -> Result<Plan, String> {
    let others: Vec<&Member> = members.iter().filter(|m| m.id != lost).collect();
    if others.iter().any(|m| !m.healthy) {
        return Err("another member is down; rebuilding takes one member out at a time".into());
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
        steps: vec![
            Step::Remove { member: lost },
            Step::Backup { member: lost },
            Step::Wipe { member: lost },
            Step::AddLearner { member: lost },
            Step::WaitCaughtUp { member: lost },
            Step::Promote { member: lost },
            Step::Verify { member: lost },
        ],
    })
}

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
            let total: usize = groups.iter().map(BTreeSet::len).sum();
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
            leader
                .or_else(|| largest.first().copied())
                .ok_or_else(|| "empty majority".to_string())
        }
        None => Err("nothing to heal from these findings".into()),
    }
}

/// Steps that rebuild every member differing from `source`.
fn rebuild_from(source: u64, findings: &[Finding], members: &[Member]) -> Plan {
    let source_revision = members
        .iter()
        .find(|m| m.id == source)
        .map(|m| m.auth_revision);
    let same_data: BTreeSet<u64> = findings
        .iter()
        .find_map(|f| match f {
            Finding::DataDivergence { groups } => {
                groups.iter().find(|g| g.contains(&source)).cloned()
            }
            _ => None,
        })
        .unwrap_or_else(|| members.iter().map(|m| m.id).collect());
    let mut steps = Vec::new();
    let differing: Vec<u64> = members
        .iter()
        .filter(|m| m.id != source)
        .filter(|m| Some(m.auth_revision) != source_revision || !same_data.contains(&m.id))
        .map(|m| m.id)
        .collect();
    if differing.is_empty() {
        return Plan { source, steps };
    }
    if !members.iter().any(|m| m.id == source && m.is_leader) {
        steps.push(Step::MoveLeader { to: source });
    }
    for member in differing {
        steps.extend([
            Step::Remove { member },
            Step::Backup { member },
            Step::Wipe { member },
            Step::AddLearner { member },
            Step::WaitCaughtUp { member },
            Step::Promote { member },
            Step::Verify { member },
        ]);
    }
    Plan { source, steps }
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
                healthy: true,
                is_leader: i == leader,
                voter: true,
                auth_revision: *r,
            })
            .collect()
    }

    fn drift(members: &[Member]) -> Finding {
        Finding::AuthRevisionDrift {
            revisions: members.iter().map(|m| (m.id, m.auth_revision)).collect(),
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
        assert_eq!(plan.steps.len(), 1 + 2 * 7);
        assert_eq!(plan.steps[1], Step::Remove { member: 1 });
        assert_eq!(plan.steps[8], Step::Remove { member: 2 });
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
                    prop_assert_eq!(source.auth_revision, lowest);
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
                            Step::Backup { member } | Step::Wipe { member } | Step::AddLearner { member }
                            | Step::WaitCaughtUp { member } | Step::Promote { member } => {
                                prop_assert_eq!(out, Some(*member));
                            }
                        }
                    }
                    prop_assert!(out.is_none());
                    let expected: BTreeSet<u64> = m.iter().filter(|x| x.auth_revision != lowest).map(|x| x.id).collect();
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
