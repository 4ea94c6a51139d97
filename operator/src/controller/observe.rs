//! From what the controller saw (member pods, a probe round) to the `StorageCluster` status.
//! Pure: the reconciler passes the previous status and the time, so unchanged conditions keep
//! their `lastTransitionTime` and an unchanged cluster yields an identical status.
//!
//! Kept to one function ([`status`]) on purpose: the healing issue brings a fuller mapping
//! (`operator::status`) that replaces it.

use std::collections::BTreeMap;

use crds::{MemberStatus, Phase, Role, StorageClusterStatus, condition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::detector::Round;

/// What the reconciler knows about one cluster's members.
#[derive(Debug)]
pub struct Seen<'a> {
    /// `metadata.generation` of the resource.
    pub generation: Option<i64>,
    /// Member names in order, as the spec wants them.
    pub names: &'a [String],
    /// Client URL of each member, same order.
    pub endpoints: &'a [String],
    /// Member pods that exist.
    pub pods: i32,
    /// The label selector of the member pods.
    pub selector: String,
    /// The probe round (same order as `names`), `None` when probing is disabled.
    pub round: Option<&'a Round>,
}

/// The status for what was `seen`, given the `previous` status and the time `now`.
pub fn status(
    seen: &Seen<'_>,
    previous: Option<&StorageClusterStatus>,
    now: &Time,
) -> StorageClusterStatus {
    let wanted = seen.names.len();
    let members: Vec<MemberStatus> = seen
        .names
        .iter()
        .zip(seen.endpoints)
        .enumerate()
        .map(|(i, (name, endpoint))| {
            let observation = seen.round.and_then(|r| r.members.get(i));
            match observation.filter(|o| o.reachable) {
                Some(o) => MemberStatus {
                    name: name.clone(),
                    member_id: format!("{:x}", o.member),
                    endpoint: endpoint.clone(),
                    role: Some(if o.is_leader {
                        Role::Leader
                    } else {
                        Role::Follower
                    }),
                    healthy: true,
                    auth_revision: o.auth_revision,
                    revision: o.revision,
                    raft_index: o.raft_index,
                    applied_index: o.applied_index,
                    db_size: 0,
                    key_count: o.key_count,
                    hash_kv: o.hash.map(|(h, _)| h),
                    hash_revision: o.hash.map(|(_, r)| r),
                },
                None => MemberStatus {
                    name: name.clone(),
                    endpoint: endpoint.clone(),
                    ..MemberStatus::default()
                },
            }
        })
        .collect();
    let healthy: Vec<&MemberStatus> = members.iter().filter(|m| m.healthy).collect();
    let leader = healthy
        .iter()
        .find(|m| m.role == Some(Role::Leader))
        .map(|m| m.name.clone());
    let drift = match (
        healthy.iter().map(|m| m.auth_revision).max(),
        healthy.iter().map(|m| m.auth_revision).min(),
    ) {
        (Some(max), Some(min)) => max - min,
        _ => 0,
    };
    let mut hashes: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
    for m in &healthy {
        if let (Some(hash), Some(revision)) = (m.hash_kv, m.hash_revision) {
            hashes.entry(revision).or_default().push(hash);
        }
    }
    let hash_mismatch = hashes.values().any(|h| h.windows(2).any(|w| w[0] != w[1]));
    let ready = healthy.len();
    let was_serving =
        previous.is_some_and(|p| !matches!(p.phase, Phase::Pending | Phase::Bootstrapping));

    let phase = if seen.pods == 0 {
        Phase::Pending
    } else if seen.round.is_none() {
        // Probing disabled: only the pods are known.
        if seen.pods < wanted as i32 {
            Phase::Bootstrapping
        } else {
            Phase::Available
        }
    } else if drift > 0 || hash_mismatch {
        Phase::Diverged
    } else if ready == wanted && leader.is_some() {
        Phase::Available
    } else if !was_serving {
        Phase::Bootstrapping
    } else if ready > wanted / 2 && leader.is_some() {
        Phase::Degraded
    } else {
        Phase::Failed
    };

    let old = previous
        .map(|p| p.conditions.as_slice())
        .unwrap_or_default();
    let cond = |type_: &str, on: bool, reason: &str, message: String| {
        condition(old, type_, on, reason, message, seen.generation, now)
    };
    let available = matches!(phase, Phase::Available);
    let conditions = vec![
        cond(
            condition::AVAILABLE,
            available,
            if available {
                "MembersServing"
            } else {
                "MembersNotServing"
            },
            format!(
                "{ready} of {wanted} members answer; leader: {}",
                leader.as_deref().unwrap_or("none")
            ),
        ),
        match phase {
            Phase::Pending | Phase::Bootstrapping => cond(
                condition::PROGRESSING,
                true,
                "MembersStarting",
                format!(
                    "{} of {wanted} member pods exist, {ready} answer",
                    seen.pods
                ),
            ),
            _ => cond(
                condition::PROGRESSING,
                false,
                "Reconciled",
                "every member pod exists".to_string(),
            ),
        },
        match phase {
            Phase::Degraded | Phase::Failed => cond(
                condition::DEGRADED,
                true,
                "MembersUnreachable",
                format!(
                    "unreachable: {}",
                    members
                        .iter()
                        .filter(|m| !m.healthy)
                        .map(|m| m.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
            _ => cond(
                condition::DEGRADED,
                false,
                "MembersReachable",
                "no member is known to be down".to_string(),
            ),
        },
        if drift > 0 {
            cond(
                condition::DIVERGED,
                true,
                "AuthRevisionDrift",
                format!("members' AuthRevisions differ by {drift}"),
            )
        } else if hash_mismatch {
            cond(
                condition::DIVERGED,
                true,
                "HashKVMismatch",
                "members hold different data at the same revision".to_string(),
            )
        } else {
            cond(
                condition::DIVERGED,
                false,
                "MembersAgree",
                "no divergence seen".to_string(),
            )
        },
    ];

    StorageClusterStatus {
        observed_generation: seen.generation,
        conditions,
        phase,
        replicas: seen.pods,
        ready_replicas: ready as i32,
        selector: seen.selector.clone(),
        leader,
        members,
        auth_revision_drift: drift,
        // Written by the healing loop; carried over so this status does not drop it.
        healing: previous.and_then(|p| p.healing.clone()),
    }
}

/// A condition of `type_`, keeping the `lastTransitionTime` of the one in `old` when its status
/// is unchanged (Kubernetes API conventions).
pub fn condition(
    old: &[Condition],
    type_: &str,
    on: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let status = if on { "True" } else { "False" }.to_string();
    let last_transition_time = old
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.to_string(),
        status,
        reason: reason.to_string(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::fixtures::{observation, time};

    fn seen<'a>(names: &'a [String], endpoints: &'a [String], round: &'a Round) -> Seen<'a> {
        Seen {
            generation: Some(1),
            names,
            endpoints,
            pods: 3,
            selector: "s".to_string(),
            round: Some(round),
        }
    }

    fn three() -> (Vec<String>, Vec<String>) {
        let names: Vec<String> = (0..3).map(|i| format!("m-{i}")).collect();
        let endpoints = names.iter().map(|n| format!("http://{n}:2379")).collect();
        (names, endpoints)
    }

    #[test]
    fn all_members_answering_with_a_leader_is_available() {
        let (names, endpoints) = three();
        let round = Round {
            members: vec![
                observation(1, true, 5),
                observation(2, false, 5),
                observation(3, false, 5),
            ],
        };
        let s = status(&seen(&names, &endpoints, &round), None, &time(0));
        assert_eq!(s.phase, Phase::Available);
        assert_eq!(s.leader.as_deref(), Some("m-0"));
        assert_eq!(s.ready_replicas, 3);
        assert_eq!(s.members[1].member_id, "2");
        let available = s
            .conditions
            .iter()
            .find(|c| c.type_ == "Available")
            .expect("Available");
        assert_eq!(available.status, "True");
    }

    #[test]
    fn auth_revision_drift_is_diverged_with_the_drift() {
        let (names, endpoints) = three();
        let round = Round {
            members: vec![
                observation(1, true, 7),
                observation(2, false, 6),
                observation(3, false, 5),
            ],
        };
        let s = status(&seen(&names, &endpoints, &round), None, &time(0));
        assert_eq!(s.phase, Phase::Diverged);
        assert_eq!(s.auth_revision_drift, 2);
        let diverged = s
            .conditions
            .iter()
            .find(|c| c.type_ == "Diverged")
            .expect("Diverged");
        assert_eq!(
            (diverged.status.as_str(), diverged.reason.as_str()),
            ("True", "AuthRevisionDrift")
        );
    }

    #[test]
    fn an_unchanged_condition_keeps_its_transition_time() {
        let (names, endpoints) = three();
        let round = Round {
            members: vec![
                observation(1, true, 5),
                observation(2, false, 5),
                observation(3, false, 5),
            ],
        };
        let first = status(&seen(&names, &endpoints, &round), None, &time(0));
        let second = status(&seen(&names, &endpoints, &round), Some(&first), &time(60));
        assert_eq!(first, second);
        let mut down = round.clone();
        down.members[2].reachable = false;
        let third = status(&seen(&names, &endpoints, &down), Some(&second), &time(120));
        assert_eq!(third.phase, Phase::Degraded);
        let degraded = third
            .conditions
            .iter()
            .find(|c| c.type_ == "Degraded")
            .expect("Degraded");
        assert_eq!(degraded.last_transition_time, time(120));
        assert!(degraded.message.contains("m-2"), "{}", degraded.message);
    }
}
