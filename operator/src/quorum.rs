//! Quorum loss, decided from values: whether a majority of a cluster's members is gone for good
//! (their data lost), which surviving member holds the most, and whether recovering from it is
//! approved. Recovering (the drivers' part) restarts that member as a one-member cluster
//! keeping its data (storage-node's `--force-new-cluster`) and brings the others back as new
//! members, one at a time, as a resize does.
//!
//! A member that does not answer is never read as holding nothing: while any survivor cannot
//! be observed, no member is named and nothing is approved.

use crds::QuorumRecovery;

use crate::detector::Round;

/// The annotation that approves recovering from the member it names.
pub const APPROVAL_ANNOTATION: &str = "mend.dev/recover-quorum";

/// A majority gone for good.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loss {
    /// The members whose data is gone, in member order.
    pub gone: Vec<String>,
    /// The others.
    pub survivors: Vec<String>,
    /// The survivor holding the most (the highest last log index, then term), or why none can
    /// be named.
    pub source: Result<String, String>,
}

/// The loss `round` (a probe of every member in `members`) and `gone` (members without their
/// data) show, if a majority is gone and no member leads.
pub fn assess(members: &[String], gone: &[String], round: &Round) -> Option<Loss> {
    let gone: Vec<String> = members
        .iter()
        .filter(|m| gone.contains(m))
        .cloned()
        .collect();
    if gone.is_empty() || gone.len() * 2 < members.len() {
        return None;
    }
    if round.members.iter().any(|m| m.reachable && m.is_leader) {
        return None;
    }
    let survivors: Vec<String> = members
        .iter()
        .filter(|m| !gone.contains(m))
        .cloned()
        .collect();
    let observed = |name: &String| round.members.iter().find(|o| o.name == *name);
    let source = match survivors
        .iter()
        .find(|s| !observed(s).is_some_and(|o| o.reachable))
    {
        _ if survivors.is_empty() => Err("no member kept its data".to_string()),
        Some(silent) => Err(format!(
            "{silent} does not answer: which survivor holds the most cannot be told"
        )),
        None => survivors
            .iter()
            .filter_map(observed)
            .max_by_key(|o| (o.raft_index, o.raft_term, o.applied_index))
            .map(|o| o.name.clone())
            .ok_or_else(|| "no survivor was observed".to_string()),
    };
    Some(Loss {
        gone,
        survivors,
        source,
    })
}

impl Loss {
    /// What the status says about it.
    pub fn message(&self, mode: QuorumRecovery) -> String {
        let gone = self.gone.join(", ");
        let lost = format!(
            "{gone} lost {} data: {} of {} members are gone for good and the rest cannot elect \
             a leader",
            if self.gone.len() == 1 { "its" } else { "their" },
            self.gone.len(),
            self.gone.len() + self.survivors.len()
        );
        match (&self.source, mode) {
            (Err(why), _) => format!("{lost}; {why}"),
            (Ok(source), QuorumRecovery::Manual) => format!(
                "{lost}; {source} holds the most: to restart it as a one-member cluster with its \
                 data and re-add the others as new members (writes only the lost members had \
                 are gone), annotate {APPROVAL_ANNOTATION}={source}"
            ),
            (Ok(source), QuorumRecovery::Automatic) => {
                format!("{lost}; recovering from {source}, which holds the most")
            }
        }
    }

    /// The member to recover from now, when the recovery is approved: by `mode`, or by
    /// `approval` (the annotation's value) naming the member this loss names.
    pub fn approved(&self, mode: QuorumRecovery, approval: Option<&str>) -> Option<&str> {
        let source = self.source.as_deref().ok()?;
        (mode == QuorumRecovery::Automatic || approval == Some(source)).then_some(source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detector::Observation;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    fn answering(name: &str, index: u64, leader: bool) -> Observation {
        Observation {
            name: name.to_string(),
            member: 1,
            reachable: true,
            is_leader: leader,
            raft_index: index,
            raft_term: 2,
            ..Observation::unreachable(name, "")
        }
    }

    #[test]
    fn a_majority_gone_names_the_survivor_with_the_longest_log() {
        let members = names(&["a", "b", "c", "d", "e"]);
        let round = Round {
            members: vec![
                answering("a", 10, false),
                answering("b", 12, false),
                Observation::unreachable("c", "no data"),
                Observation::unreachable("d", "no data"),
                Observation::unreachable("e", "no data"),
            ],
        };
        let loss = assess(&members, &names(&["c", "d", "e"]), &round).expect("a loss");
        assert_eq!(loss.source, Ok("b".to_string()));
        assert_eq!(loss.survivors, names(&["a", "b"]));
        let message = loss.message(QuorumRecovery::Manual);
        assert!(
            message.contains("annotate mend.dev/recover-quorum=b"),
            "{message}"
        );
        assert_eq!(loss.approved(QuorumRecovery::Manual, None), None);
        assert_eq!(
            loss.approved(QuorumRecovery::Manual, Some("a")),
            None,
            "not the one named"
        );
        assert_eq!(loss.approved(QuorumRecovery::Manual, Some("b")), Some("b"));
        assert_eq!(loss.approved(QuorumRecovery::Automatic, None), Some("b"));
    }

    #[test]
    fn a_minority_gone_or_a_leader_is_no_loss() {
        let members = names(&["a", "b", "c"]);
        let round = Round {
            members: vec![answering("a", 1, false), answering("b", 1, false)],
        };
        assert_eq!(assess(&members, &names(&["c"]), &round), None);
        let led = Round {
            members: vec![answering("a", 1, true)],
        };
        assert_eq!(assess(&members, &names(&["b", "c"]), &led), None);
    }

    #[test]
    fn a_survivor_that_does_not_answer_means_no_member_is_named_or_approved() {
        let members = names(&["a", "b", "c", "d", "e"]);
        let round = Round {
            members: vec![
                answering("a", 10, false),
                Observation::unreachable("b", "timeout"),
            ],
        };
        let loss = assess(&members, &names(&["c", "d", "e"]), &round).expect("a loss");
        assert!(
            loss.source
                .as_ref()
                .is_err_and(|why| why.contains("b does not answer")),
            "{loss:?}"
        );
        assert_eq!(loss.approved(QuorumRecovery::Automatic, Some("a")), None);
    }
}
