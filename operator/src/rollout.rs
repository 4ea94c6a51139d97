//! Rolling updates, decided from values: when the members' template (image, storage-node
//! flags, resources) changed, which member is restarted next on the new one. One member at a
//! time, followers first and the leader last, after leadership moved off it; and only while
//! every member answers, votes and has caught up, so the others keep a quorum while it is
//! away. Both drivers call [`next`] once per pass with what they see (pods' template
//! revisions on Kubernetes, `members.json` locally) and act on its answer; the state is the
//! world's, so an operator that restarts mid-rollout goes on from what runs.

use crate::detector::Round;

/// What a rollout does in this pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Roll {
    /// Every member runs the current template.
    Done,
    /// Restart this member on the current template.
    Restart(String),
    /// The next member to restart leads: hand leadership to this other member first.
    MoveLeader {
        /// The leader, outdated.
        from: String,
        /// Its member ID, for MoveLeader.
        to_id: u64,
        /// The member taking over.
        to: String,
    },
    /// A member is outdated but restarting one now is not safe: why.
    Wait(String),
}

/// The next step of a rollout over `round` (a fresh probe of every member), where `outdated`
/// names the members not running the current template, in member order; `max_lag` is how far
/// a member may trail the newest applied index and still count as caught up.
pub fn next(outdated: &[String], round: &Round, max_lag: u64) -> Roll {
    if outdated.is_empty() {
        return Roll::Done;
    }
    if let Some(m) = round.members.iter().find(|m| !m.reachable) {
        return Roll::Wait(format!("{} does not answer", m.name));
    }
    if let Some(m) = round.members.iter().find(|m| m.is_learner) {
        return Roll::Wait(format!("{} is a learner", m.name));
    }
    let newest = round
        .members
        .iter()
        .map(|m| m.applied_index)
        .max()
        .unwrap_or_default();
    if let Some(m) = round
        .members
        .iter()
        .find(|m| m.applied_index + max_lag < newest)
    {
        return Roll::Wait(format!(
            "{} applied {} of {newest}: not caught up",
            m.name, m.applied_index
        ));
    }
    let mut leaders = round.members.iter().filter(|m| m.is_leader);
    let leader = match (leaders.next(), leaders.next()) {
        (Some(leader), None) => leader,
        (None, _) => return Roll::Wait("no member leads".into()),
        (Some(_), Some(_)) => return Roll::Wait("two members claim to lead".into()),
    };
    let is_outdated = |name: &str| outdated.iter().any(|o| o == name);
    if let Some(follower) = round
        .members
        .iter()
        .find(|m| !m.is_leader && is_outdated(&m.name))
    {
        return Roll::Restart(follower.name.clone());
    }
    if !is_outdated(&leader.name) {
        // Outdated names the probe does not know (a member being added): nothing to restart.
        return Roll::Done;
    }
    match round.members.iter().find(|m| !m.is_leader) {
        Some(to) => Roll::MoveLeader {
            from: leader.name.clone(),
            to_id: to.member,
            to: to.name.clone(),
        },
        // A single member: restarting it is the only way, and it is down meanwhile.
        None => Roll::Restart(leader.name.clone()),
    }
}

/// A short, stable digest of `parts` (a member's template): the revision the status shows.
pub fn revision<'a>(parts: impl IntoIterator<Item = &'a str>) -> String {
    use sha2::Digest;
    let mut hash = sha2::Sha256::new();
    for part in parts {
        hash.update(part.len().to_le_bytes());
        hash.update(part.as_bytes());
    }
    hash.finalize()
        .iter()
        .take(5)
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detector::Observation;

    fn round(leader: usize) -> Round {
        Round {
            members: (1..=3)
                .map(|i| Observation {
                    name: format!("node{i}"),
                    member: i as u64,
                    reachable: true,
                    is_leader: i == leader,
                    applied_index: 100,
                    ..Observation::unreachable("", "")
                })
                .collect(),
        }
    }

    fn all() -> Vec<String> {
        ["node1", "node2", "node3"].map(String::from).to_vec()
    }

    #[test]
    fn followers_are_restarted_first_and_the_leader_after_it_hands_over() {
        assert_eq!(next(&all(), &round(1), 1000), Roll::Restart("node2".into()));
        let leader_left = vec!["node1".to_string()];
        assert_eq!(
            next(&leader_left, &round(1), 1000),
            Roll::MoveLeader {
                from: "node1".into(),
                to_id: 2,
                to: "node2".into()
            }
        );
        // Once it no longer leads, it is a follower like the others.
        assert_eq!(
            next(&leader_left, &round(2), 1000),
            Roll::Restart("node1".into())
        );
        assert_eq!(next(&[], &round(1), 1000), Roll::Done);
    }

    #[test]
    fn nothing_is_restarted_unless_every_member_answers_votes_and_caught_up() {
        let mut down = round(1);
        down.members[2] = Observation::unreachable("node3", "connect: refused");
        assert_eq!(
            next(&all(), &down, 1000),
            Roll::Wait("node3 does not answer".into())
        );
        let mut behind = round(1);
        behind.members[1].applied_index = 10;
        assert!(
            matches!(next(&all(), &behind, 50), Roll::Wait(w) if w.contains("node2 applied 10 of 100"))
        );
        let mut learner = round(1);
        learner.members[2].is_learner = true;
        assert!(matches!(next(&all(), &learner, 1000), Roll::Wait(w) if w.contains("learner")));
        assert_eq!(
            next(&all(), &round(0), 1000),
            Roll::Wait("no member leads".into())
        );
    }

    #[test]
    fn a_revision_changes_with_any_part_and_only_then() {
        let a = revision(["image:1", "--flag=a"]);
        assert_eq!(a, revision(["image:1", "--flag=a"]));
        assert_ne!(a, revision(["image:1", "--flag=b"]));
        assert_ne!(a, revision(["image:1--flag=a"]), "parts are delimited");
        assert_eq!(a.len(), 10);
    }
}
