//! From probes of the members to findings: AuthRevision drift, data divergence (HashKV or key
//! counts at the same revision), active alarms (NOSPACE, CORRUPT), lagging and unreachable
//! members.
//!
//! Pure: it takes the recent probe rounds as values and returns findings. A member that is
//! still applying looks different from its peers for a moment, so two rules keep in-flight
//! changes from passing for divergence: members are only compared within a round where they
//! report the same applied index (nothing was in flight between them), and a finding counts
//! only once it has held in `consecutive` such rounds in a row.

use std::collections::{BTreeMap, BTreeSet};

/// A value a probe asked a member for. What could not be learned stays unknown, with the
/// reason: it is never read as zero.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fact<T> {
    /// The member said so.
    Known(T),
    /// The member's engine offers no way to tell (etcd before 3.4.8 has neither AuthStatus nor
    /// the `etcd_debugging_auth_revision` gauge): comparisons rely on the other facts.
    NotOffered,
    /// The probe failed or was not made; the text says which call and why.
    Unknown(String),
}

impl<T> Fact<T> {
    /// The value, when known.
    pub fn known(&self) -> Option<&T> {
        match self {
            Fact::Known(value) => Some(value),
            _ => None,
        }
    }

    /// Why the value is unknown, when it is (not offered is not unknown: nothing could tell).
    pub fn unknown(&self) -> Option<&str> {
        match self {
            Fact::Unknown(why) => Some(why),
            _ => None,
        }
    }
}

/// A HashKV and what it covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hash {
    /// The hash of every key-value revision up to `revision`.
    pub hash: u32,
    /// The revision it was computed at (the round's common revision).
    pub revision: i64,
    /// Live keys at `revision`.
    pub keys: u64,
}

/// The kinds of etcd alarm a finding reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AlarmKind {
    /// The member's backend reached its quota: writes that need space are refused.
    NoSpace,
    /// A corruption check found the member's data differing: every write is refused.
    Corrupt,
}

impl AlarmKind {
    /// The alarm's name as etcdctl prints it.
    pub fn name(self) -> &'static str {
        match self {
            AlarmKind::NoSpace => "NOSPACE",
            AlarmKind::Corrupt => "CORRUPT",
        }
    }
}

/// An active alarm: what and for which member (0: the whole cluster, as etcd names it when it
/// cannot tell).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Alarm {
    /// The member the alarm was raised for.
    pub member: u64,
    /// What it says.
    pub kind: AlarmKind,
}

/// What one probe of one member found. The health fields (`member` to `revision`) come from
/// one Status call and mean something only when `reachable`; the others are [`Fact`]s.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    /// The member's name where it lives (pod or process).
    pub name: String,
    /// The member's ID (0 when it did not answer).
    pub member: u64,
    /// Whether it answered Status.
    pub reachable: bool,
    /// Whether it leads.
    pub is_leader: bool,
    /// Whether it is a learner (replicates without voting).
    pub is_learner: bool,
    /// Database size in bytes.
    pub db_size: i64,
    /// Raft term it reports.
    pub raft_term: u64,
    /// Raft index it reports (the leader's is what followers must reach).
    pub raft_index: u64,
    /// Last applied index.
    pub applied_index: u64,
    /// Its key-value store revision.
    pub revision: i64,
    /// Its auth store's AuthRevision.
    pub auth_revision: Fact<u64>,
    /// Live keys it holds now.
    pub key_count: Fact<u64>,
    /// HashKV at the round's common revision.
    pub hash: Fact<Hash>,
    /// The cluster's active alarms, as this member lists them (in Status's `errors`).
    pub alarms: Fact<Vec<Alarm>>,
}

impl Observation {
    /// Member `name` did not answer: `why` says what failed.
    pub fn unreachable(name: &str, why: &str) -> Observation {
        Observation {
            name: name.to_string(),
            member: 0,
            reachable: false,
            is_leader: false,
            is_learner: false,
            db_size: 0,
            raft_term: 0,
            raft_index: 0,
            applied_index: 0,
            revision: 0,
            auth_revision: Fact::Unknown(why.to_string()),
            key_count: Fact::Unknown(why.to_string()),
            hash: Fact::Unknown(why.to_string()),
            alarms: Fact::Unknown(why.to_string()),
        }
    }

    /// Why this member cannot be judged, when it cannot: it did not answer, or a fact needed to
    /// compare it is unknown ("AuthRevision of node2 unknown (AuthStatus: deadline exceeded)").
    pub fn incomplete(&self) -> Option<String> {
        if !self.reachable {
            return Some(format!("{} did not answer", self.name));
        }
        let missing = [
            ("AuthRevision", self.auth_revision.unknown()),
            ("the key count", self.key_count.unknown()),
            ("HashKV", self.hash.unknown()),
            ("the alarm list", self.alarms.unknown()),
        ];
        missing.iter().find_map(|(what, why)| {
            why.map(|why| format!("{what} of {} unknown ({why})", self.name))
        })
    }
}

/// All members probed at about the same time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Round {
    /// One observation per member.
    pub members: Vec<Observation>,
}

/// Something wrong with the cluster's data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finding {
    /// Members disagree on the AuthRevision: writes through the lower ones are being dropped
    /// on the higher ones (etcd 11651).
    AuthRevisionDrift {
        /// Each member's AuthRevision.
        revisions: BTreeMap<u64, u64>,
    },
    /// Members hold different data at the same revision.
    DataDivergence {
        /// Members grouped by what they hold (HashKV, or key count when no hash was taken).
        groups: Vec<BTreeSet<u64>>,
    },
    /// A member applies far behind the others.
    Lagging {
        /// The member's name.
        name: String,
        /// How many entries behind the most advanced member it is.
        behind: u64,
    },
    /// An alarm is active. A CORRUPT alarm names a member whose data a corruption check found
    /// differing from the others' (the planner treats it as evidence of divergence, never as
    /// a reason to choose another source); NOSPACE needs compaction, defragment and a disarm.
    Alarm {
        /// The member it was raised for (0: the whole cluster).
        member: u64,
        /// Which alarm.
        alarm: AlarmKind,
    },
    /// A member did not answer.
    Unreachable {
        /// The member's name (its ID is not known when it does not answer).
        name: String,
    },
}

/// When a difference becomes a finding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tolerance {
    /// Rounds in a row a difference must persist.
    pub consecutive: usize,
    /// Applied entries a member may trail by before it counts as lagging.
    pub max_lag: u64,
}

impl Default for Tolerance {
    fn default() -> Self {
        Tolerance {
            consecutive: 3,
            max_lag: 1000,
        }
    }
}

/// Findings that held in each of the last `tolerance.consecutive` rounds (`history` is
/// oldest first). Fewer rounds than that give no findings: not enough evidence yet.
pub fn detect(history: &[Round], tolerance: Tolerance) -> Vec<Finding> {
    let needed = tolerance.consecutive.max(1);
    if history.len() < needed {
        return Vec::new();
    }
    let recent = &history[history.len() - needed..];
    let per_round: Vec<Vec<Finding>> = recent.iter().map(|r| in_round(r, tolerance)).collect();
    let mut findings = Vec::new();
    for finding in &per_round[needed - 1] {
        if per_round[..needed - 1]
            .iter()
            .all(|earlier| earlier.iter().any(|f| same_kind(f, finding)))
        {
            findings.push(finding.clone());
        }
    }
    findings
}

/// Whether two findings describe the same problem (values may move between rounds: an
/// AuthRevision drift stays a drift while revisions keep growing).
fn same_kind(a: &Finding, b: &Finding) -> bool {
    match (a, b) {
        (Finding::AuthRevisionDrift { .. }, Finding::AuthRevisionDrift { .. }) => true,
        (Finding::DataDivergence { groups: x }, Finding::DataDivergence { groups: y }) => x == y,
        (Finding::Lagging { name: x, .. }, Finding::Lagging { name: y, .. }) => x == y,
        (Finding::Unreachable { name: x }, Finding::Unreachable { name: y }) => x == y,
        (a @ Finding::Alarm { .. }, b @ Finding::Alarm { .. }) => a == b,
        _ => false,
    }
}

/// What one round shows by itself.
fn in_round(round: &Round, tolerance: Tolerance) -> Vec<Finding> {
    let mut findings = Vec::new();
    let up: Vec<&Observation> = round.members.iter().filter(|o| o.reachable).collect();
    for o in round.members.iter().filter(|o| !o.reachable) {
        findings.push(Finding::Unreachable {
            name: o.name.clone(),
        });
    }
    // Alarms are replicated state, so any member's list will do; a member that has not
    // applied a raise (or a disarm) yet differs for a moment, which the persistence rule
    // absorbs. A list that could not be read is no evidence.
    let alarms: BTreeSet<Alarm> = up
        .iter()
        .filter_map(|o| o.alarms.known())
        .flatten()
        .copied()
        .collect();
    let Some(newest) = up.iter().map(|o| o.applied_index).max() else {
        return findings;
    };
    for o in &up {
        let behind = newest - o.applied_index;
        if behind > tolerance.max_lag {
            findings.push(Finding::Lagging {
                name: o.name.clone(),
                behind,
            });
        }
    }
    // Compare data only between members that applied exactly the same entries, and only on
    // facts known of both: an unknown value is no evidence either way.
    let mut by_applied: BTreeMap<u64, Vec<&Observation>> = BTreeMap::new();
    for o in &up {
        by_applied.entry(o.applied_index).or_default().push(o);
    }
    let Some(settled) = by_applied.values().max_by_key(|g| g.len()) else {
        return findings;
    };
    let revisions: BTreeMap<u64, u64> = settled
        .iter()
        .filter_map(|o| o.auth_revision.known().map(|r| (o.member, *r)))
        .collect();
    let distinct: BTreeSet<u64> = revisions.values().copied().collect();
    if distinct.len() > 1 {
        findings.push(Finding::AuthRevisionDrift { revisions });
    }
    let groups = data_groups(settled);
    if groups.len() > 1 {
        findings.push(Finding::DataDivergence { groups });
    }
    findings.extend(alarms.into_iter().map(|a| Finding::Alarm {
        member: a.member,
        alarm: a.kind,
    }));
    findings
}

/// Members grouped by the data they hold. Members that applied the same entries must also
/// agree on the store revision and key count — a revision that differs at an equal applied
/// index is the seed's signature, which etcd's own checks skip — and, when every member hashed
/// at one common revision, on that HashKV too. A member whose key count or hash is unknown is
/// left out of the grouping.
fn data_groups(members: &[&Observation]) -> Vec<BTreeSet<u64>> {
    let comparable: Vec<&Observation> = members
        .iter()
        .copied()
        .filter(|o| o.key_count.unknown().is_none() && o.hash.unknown().is_none())
        .collect();
    let hashed_at: BTreeSet<Option<i64>> = comparable
        .iter()
        .map(|o| o.hash.known().map(|h| h.revision))
        .collect();
    let comparable_hashes = hashed_at.len() == 1 && !hashed_at.contains(&None);
    let mut groups: BTreeMap<(Option<u32>, i64, Option<u64>), BTreeSet<u64>> = BTreeMap::new();
    for o in comparable {
        let hash = o.hash.known().filter(|_| comparable_hashes).map(|h| h.hash);
        let key = (hash, o.revision, o.key_count.known().copied());
        groups.entry(key).or_default().insert(o.member);
    }
    let mut groups: Vec<BTreeSet<u64>> = groups.into_values().collect();
    // Largest group first, then by lowest member ID, so equal evidence gives equal output.
    groups.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, auth: u64, keys: u64, hash: u32) -> Observation {
        Observation {
            name: format!("node{id}"),
            member: id,
            reachable: true,
            is_leader: id == 1,
            is_learner: false,
            db_size: 4096,
            raft_term: 2,
            raft_index: 100,
            applied_index: 100,
            revision: 50,
            auth_revision: Fact::Known(auth),
            key_count: Fact::Known(keys),
            hash: Fact::Known(Hash {
                hash,
                revision: 50,
                keys,
            }),
            alarms: Fact::Known(Vec::new()),
        }
    }

    fn rounds(n: usize, round: Round) -> Vec<Round> {
        vec![round; n]
    }

    #[test]
    fn the_seed_signature_is_drift_and_divergence() {
        let round = Round {
            members: vec![
                member(1, 9, 3, 0xaaa),
                member(2, 8, 4, 0xbbb),
                member(3, 7, 5, 0xccc),
            ],
        };
        let findings = detect(&rounds(3, round), Tolerance::default());
        assert!(
            matches!(&findings[0], Finding::AuthRevisionDrift { revisions } if revisions[&3] == 7)
        );
        assert!(matches!(&findings[1], Finding::DataDivergence { groups } if groups.len() == 3));
    }

    #[test]
    fn equal_applied_index_with_a_different_revision_is_divergence() {
        // The hash at the common (older) revision agrees; the members' current data does not.
        let mut dropped = member(3, 5, 2, 7);
        dropped.revision = 49;
        let round = Round {
            members: vec![member(1, 5, 3, 7), member(2, 5, 3, 7), dropped],
        };
        let findings = detect(&rounds(3, round), Tolerance::default());
        assert_eq!(
            findings,
            vec![Finding::DataDivergence {
                groups: vec![BTreeSet::from([1, 2]), BTreeSet::from([3])]
            }]
        );
    }

    #[test]
    fn agreeing_members_give_no_finding() {
        let round = Round {
            members: vec![member(1, 5, 3, 7), member(2, 5, 3, 7), member(3, 5, 3, 7)],
        };
        assert!(detect(&rounds(5, round), Tolerance::default()).is_empty());
    }

    #[test]
    fn a_member_still_applying_is_not_divergent() {
        let mut behind = member(3, 4, 2, 1);
        behind.applied_index = 99;
        let round = Round {
            members: vec![member(1, 5, 3, 7), member(2, 5, 3, 7), behind],
        };
        assert!(detect(&rounds(3, round), Tolerance::default()).is_empty());
    }

    #[test]
    fn a_difference_must_persist_before_it_counts() {
        let bad = Round {
            members: vec![member(1, 6, 3, 7), member(2, 5, 3, 7), member(3, 5, 3, 7)],
        };
        let good = Round {
            members: vec![member(1, 5, 3, 7), member(2, 5, 3, 7), member(3, 5, 3, 7)],
        };
        let history = vec![bad.clone(), good, bad.clone()];
        assert!(detect(&history, Tolerance::default()).is_empty());
        assert!(
            detect(&rounds(2, bad.clone()), Tolerance::default()).is_empty(),
            "too few rounds"
        );
        assert_eq!(detect(&rounds(3, bad), Tolerance::default()).len(), 1);
    }

    #[test]
    fn unreachable_and_lagging_members_are_reported() {
        let mut down = member(3, 5, 3, 7);
        down.reachable = false;
        let mut slow = member(2, 5, 3, 7);
        slow.applied_index = 10;
        let round = Round {
            members: vec![member(1, 5, 3, 7), slow, down],
        };
        let findings = detect(
            &rounds(3, round),
            Tolerance {
                consecutive: 3,
                max_lag: 50,
            },
        );
        assert!(findings.contains(&Finding::Unreachable {
            name: "node3".into()
        }));
        assert!(findings.contains(&Finding::Lagging {
            name: "node2".into(),
            behind: 90
        }));
    }

    fn corrupt(member: u64) -> Alarm {
        Alarm {
            member,
            kind: AlarmKind::Corrupt,
        }
    }

    #[test]
    fn an_active_alarm_is_a_finding_naming_its_member() {
        let mut named = member(2, 5, 3, 7);
        named.alarms = Fact::Known(vec![corrupt(3)]);
        let mut other = member(3, 5, 3, 7);
        other.alarms = Fact::Known(vec![
            corrupt(3),
            Alarm {
                member: 1,
                kind: AlarmKind::NoSpace,
            },
        ]);
        let round = Round {
            members: vec![member(1, 5, 3, 7), named, other],
        };
        assert_eq!(
            detect(&rounds(3, round), Tolerance::default()),
            vec![
                Finding::Alarm {
                    member: 1,
                    alarm: AlarmKind::NoSpace
                },
                Finding::Alarm {
                    member: 3,
                    alarm: AlarmKind::Corrupt
                },
            ],
            "every alarm any member lists, once"
        );
    }

    #[test]
    fn an_alarm_must_persist_before_it_counts() {
        let mut alarmed = member(1, 5, 3, 7);
        alarmed.alarms = Fact::Known(vec![corrupt(2)]);
        let with = Round {
            members: vec![alarmed, member(2, 5, 3, 7)],
        };
        let without = Round {
            members: vec![member(1, 5, 3, 7), member(2, 5, 3, 7)],
        };
        let history = vec![with.clone(), without, with.clone()];
        assert!(detect(&history, Tolerance::default()).is_empty());
        assert_eq!(detect(&rounds(3, with), Tolerance::default()).len(), 1);
    }

    #[test]
    fn an_alarm_list_that_could_not_be_read_is_unknown_and_no_evidence() {
        let mut unread = member(2, 5, 3, 7);
        unread.alarms = Fact::Unknown("Status: unknown alarm \"alarm:LATER \"".into());
        assert_eq!(
            unread.incomplete().as_deref(),
            Some("the alarm list of node2 unknown (Status: unknown alarm \"alarm:LATER \")")
        );
        let round = Round {
            members: vec![member(1, 5, 3, 7), unread],
        };
        assert!(detect(&rounds(3, round), Tolerance::default()).is_empty());
    }
}
