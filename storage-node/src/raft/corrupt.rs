//! Corruption checks (etcd's `--experimental-initial-corrupt-check` and
//! `--experimental-corrupt-check-time`): members compare their KV hashes at a common revision
//! over the peer protocol, and the members outside the majority are named.
//!
//! # How a check runs
//! 1. Positions: every member's current and compact revision ([`Rpc::HashKv`] without a
//!    revision; the checking member reads its own).
//! 2. The common revision: the lowest current revision among the members that reached the
//!    highest compact revision. A member below that compact revision is skipped, since the
//!    others can no longer hash where it is.
//! 3. Hashes at the common revision. A member that is unreachable, refuses, or answers with
//!    another compact revision than the checking member's (a compaction applied in between) is
//!    skipped and logged, never counted as disagreeing.
//! 4. [`judge`]: the compared members grouped by hash. A group of more than half of *all*
//!    members (compared or not, as etcd counts its quorum) is the majority, and every compared
//!    member outside it is named. Without such a group the log says so, and the compared
//!    members outside the checking member's own group are named.
//!
//! The periodic check runs on the leader and raises, through raft, a CORRUPT alarm for each
//! member it names (etcd ≥ 3.4.23 raises it for member 0 when it cannot tell, and only compares
//! peers with the leader). The initial check runs on a member whose data existed, before it
//! serves peers or clients, and refuses to start when the member is not in the majority group
//! (etcd refuses whenever any peer differs; a member that the majority agrees with starts, and
//! the log names the peers outside the majority for the leader's check to alarm on).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::network::{Peers, Rpc};
use super::node::Node;
use crate::api::{AlarmMember, AlarmType};
use crate::entry::Member;
use crate::mvcc;
use crate::store::Store;

/// Why a check could not run or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// This member could not hash its own KV store.
    #[error("hashing the local KV store: {0}")]
    Hash(#[source] mvcc::Error),
    /// A blocking task failed.
    #[error("hashing task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// This member's data differs from the majority's, or no majority agrees with it.
    #[error(
        "{member:x} found data inconsistency with peers at revision {revision} (hashes: {})",
        show_hashes(hashes)
    )]
    Inconsistent {
        /// This member.
        member: u64,
        /// The revision compared.
        revision: i64,
        /// The hash of every member compared.
        hashes: BTreeMap<u64, u32>,
    },
}

/// A peer's question: where the member is, or its KV hash at a revision.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct HashQuery {
    /// The asker's cluster: a member of another cluster refuses (etcd's cluster ID check).
    pub cluster_id: u64,
    /// `None`: only the position; `Some(r)`: the KV hash at revision `r`.
    pub revision: Option<i64>,
}

/// Where a member's KV store is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// Current revision.
    pub revision: i64,
    /// Revision of the last compaction.
    pub compact_revision: i64,
}

/// A member's answer to a [`HashQuery`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HashAnswer {
    /// Where the member is (the query named no revision).
    Position(Position),
    /// The KV hash at the revision asked, and the compaction it reflects.
    Hash {
        /// The hash.
        hash: u32,
        /// Compact revision when hashed.
        compact_revision: i64,
    },
    /// The revision asked is below the member's last compaction.
    Compacted(Position),
    /// The member has not reached the revision asked.
    Future(Position),
}

/// Where this member's KV store is now.
fn position(store: &Store) -> Position {
    let status = store.status();
    Position {
        revision: status.revision,
        compact_revision: status.compact_revision,
    }
}

/// Answers a query from this member's engine (blocking: it may hash the whole KV history).
fn local_answer(store: &Store, revision: Option<i64>) -> Result<HashAnswer, mvcc::Error> {
    let Some(revision) = revision else {
        return Ok(HashAnswer::Position(position(store)));
    };
    match store.hash_kv(revision) {
        Ok(h) => Ok(HashAnswer::Hash {
            hash: h.hash,
            compact_revision: h.compact_revision,
        }),
        Err(mvcc::Error::Compacted) => Ok(HashAnswer::Compacted(position(store))),
        Err(mvcc::Error::FutureRev) => Ok(HashAnswer::Future(position(store))),
        Err(e) => Err(e),
    }
}

async fn local(store: &Arc<Store>, revision: Option<i64>) -> Result<HashAnswer, Error> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || local_answer(&store, revision))
        .await?
        .map_err(Error::Hash)
}

/// The peer side of [`Rpc::HashKv`].
pub async fn answer(node: &Node, query: HashQuery) -> Result<HashAnswer, String> {
    if query.cluster_id != node.cluster_id {
        return Err(format!(
            "cluster ID mismatch: asked for {:x}, this member is in {:x}",
            query.cluster_id, node.cluster_id
        ));
    }
    local(&node.store, query.revision)
        .await
        .map_err(|e| e.to_string())
}

/// One comparison: the revision, the hashes compared, and the members skipped, with why.
#[derive(Debug, Default)]
pub struct Survey {
    /// The common revision hashed.
    pub revision: i64,
    /// The checking member's compact revision (every compared member had the same).
    pub compact_revision: i64,
    /// The hash of every member compared, the checking member included.
    pub hashes: BTreeMap<u64, u32>,
    /// Members not compared, and why.
    pub skipped: BTreeMap<u64, String>,
    /// Members in the cluster (the majority is judged against this).
    pub members: usize,
}

/// Who a comparison names.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every compared member has the same hash (or at most one was compared).
    Agree,
    /// More than half of all members share a hash; `culprits` are the compared members
    /// outside that group.
    Minority {
        /// The members whose data differs from the majority's.
        culprits: BTreeSet<u64>,
    },
    /// Hashes differ and no hash is shared by more than half of all members; `culprits` are
    /// the compared members outside the checking member's group (none if it was not compared).
    NoMajority {
        /// The members whose data differs from the checking member's.
        culprits: BTreeSet<u64>,
    },
}

/// Names the members whose hash is in the minority among `members` members, as judged by
/// member `me` (see the module doc).
pub fn judge(me: u64, members: usize, hashes: &BTreeMap<u64, u32>) -> Verdict {
    let mut groups: BTreeMap<u32, BTreeSet<u64>> = BTreeMap::new();
    for (id, hash) in hashes {
        groups.entry(*hash).or_default().insert(*id);
    }
    if groups.len() <= 1 {
        return Verdict::Agree;
    }
    let members = members.max(hashes.len());
    let outside = |group: Option<&BTreeSet<u64>>| -> BTreeSet<u64> {
        match group {
            Some(group) => hashes
                .keys()
                .filter(|id| !group.contains(id))
                .copied()
                .collect(),
            None => BTreeSet::new(),
        }
    };
    if let Some(majority) = groups.values().find(|g| 2 * g.len() > members) {
        return Verdict::Minority {
            culprits: outside(Some(majority)),
        };
    }
    let mine = hashes.get(&me).and_then(|h| groups.get(h));
    Verdict::NoMajority {
        culprits: outside(mine),
    }
}

fn show_hashes(hashes: &BTreeMap<u64, u32>) -> String {
    hashes
        .iter()
        .map(|(id, hash)| format!("{id:x}={hash}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn show_ids(ids: &BTreeSet<u64>) -> String {
    ids.iter()
        .map(|id| format!("{id:x}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// What a check needs: this member, its engine, and its way to the peers.
pub struct Checker {
    /// This member's ID.
    pub me: u64,
    /// The cluster's ID (peers of another cluster refuse).
    pub cluster_id: u64,
    /// This member's engine.
    pub store: Arc<Store>,
    /// Peer channels.
    pub peers: Peers,
    /// How long each peer may take to answer.
    pub timeout: Duration,
}

impl Checker {
    /// A checker for a running member.
    pub fn for_node(node: &Node) -> Checker {
        Checker {
            me: node.id,
            cluster_id: node.cluster_id,
            store: node.store.clone(),
            peers: node.peers().clone(),
            timeout: node.request_timeout(),
        }
    }

    /// Asks every member in `targets` at once; an unreachable one answers an error.
    async fn ask_all(
        &self,
        targets: &[(u64, Option<String>)],
        revision: Option<i64>,
    ) -> Vec<(u64, Result<HashAnswer, String>)> {
        let query = HashQuery {
            cluster_id: self.cluster_id,
            revision,
        };
        let calls = targets.iter().map(|(id, url)| async move {
            let answer = match url {
                None => Err("no peer URL".to_string()),
                Some(url) => self
                    .peers
                    .call::<_, HashAnswer>(url, Rpc::HashKv, &query, self.timeout)
                    .await
                    .map_err(|e| e.to_string()),
            };
            (*id, answer)
        });
        futures_util::future::join_all(calls).await
    }

    /// Compares this member's KV hash with every other member's at a common revision.
    pub async fn survey(&self, members: &BTreeMap<u64, Member>) -> Result<Survey, Error> {
        let peers: Vec<(u64, Option<String>)> = members
            .iter()
            .filter(|(id, _)| **id != self.me)
            .map(|(id, m)| (*id, m.peer_urls.first().cloned()))
            .collect();
        let mut survey = Survey {
            members: peers.len() + 1,
            ..Survey::default()
        };
        let mut positions = BTreeMap::from([(self.me, position(&self.store))]);
        for (id, answer) in self.ask_all(&peers, None).await {
            match answer {
                Ok(HashAnswer::Position(p)) => {
                    positions.insert(id, p);
                }
                Ok(other) => {
                    survey
                        .skipped
                        .insert(id, format!("answered {other:?} to a position query"));
                }
                Err(e) => {
                    survey.skipped.insert(id, e);
                }
            }
        }
        let floor = positions
            .values()
            .map(|p| p.compact_revision)
            .max()
            .unwrap_or_default();
        positions.retain(|id, p| {
            let keep = p.revision >= floor;
            if !keep {
                survey.skipped.insert(
                    *id,
                    format!(
                        "at revision {}, below another member's compact revision {floor}",
                        p.revision
                    ),
                );
            }
            keep
        });
        let Some(common) = positions.values().map(|p| p.revision).min() else {
            return Ok(survey);
        };
        if !positions.contains_key(&self.me) || common < 1 {
            return Ok(survey);
        }
        survey.revision = common;
        let HashAnswer::Hash {
            hash,
            compact_revision,
        } = local(&self.store, Some(common)).await?
        else {
            // Compacted past the common revision since the positions were read: next time.
            survey.skipped.insert(
                self.me,
                format!("compacted past revision {common} during the check"),
            );
            return Ok(survey);
        };
        survey.compact_revision = compact_revision;
        survey.hashes.insert(self.me, hash);
        let targets: Vec<(u64, Option<String>)> = peers
            .into_iter()
            .filter(|(id, _)| positions.contains_key(id))
            .collect();
        for (id, answer) in self.ask_all(&targets, Some(common)).await {
            let skipped = match answer {
                Ok(HashAnswer::Hash {
                    hash,
                    compact_revision,
                }) if compact_revision == survey.compact_revision => {
                    survey.hashes.insert(id, hash);
                    continue;
                }
                Ok(HashAnswer::Hash {
                    compact_revision, ..
                }) => format!(
                    "compact revision {compact_revision}, the checking member's is {}",
                    survey.compact_revision
                ),
                Ok(HashAnswer::Compacted(p)) => format!(
                    "compacted past revision {common} (compact revision {})",
                    p.compact_revision
                ),
                Ok(HashAnswer::Future(p)) => {
                    format!("at revision {}, below revision {common}", p.revision)
                }
                Ok(HashAnswer::Position(_)) => "answered a position to a hash query".into(),
                Err(e) => e,
            };
            survey.skipped.insert(id, skipped);
        }
        Ok(survey)
    }
}

fn log_skipped(survey: &Survey) {
    for (id, reason) in &survey.skipped {
        tracing::warn!(
            member_id = %format_args!("{id:x}"),
            revision = survey.revision,
            reason = %reason,
            "corruption check skipped a member"
        );
    }
}

/// The check before a member with data serves: refuses when this member's KV hash is not
/// in the majority group of the members it could compare with.
pub async fn initial_check(
    checker: &Checker,
    members: &BTreeMap<u64, Member>,
) -> Result<(), Error> {
    tracing::info!(timeout = ?checker.timeout, "starting initial corruption check");
    let survey = checker.survey(members).await?;
    log_skipped(&survey);
    match judge(checker.me, survey.members, &survey.hashes) {
        Verdict::Agree => {
            tracing::info!(
                revision = survey.revision,
                checked = survey.hashes.len(),
                "initial corruption check passed; no corruption"
            );
            Ok(())
        }
        Verdict::Minority { culprits } if !culprits.contains(&checker.me) => {
            tracing::warn!(
                revision = survey.revision,
                culprits = %show_ids(&culprits),
                hashes = %show_hashes(&survey.hashes),
                "initial corruption check: this member agrees with the majority; the members \
                 named differ from it"
            );
            Ok(())
        }
        _ => Err(Error::Inconsistent {
            member: checker.me,
            revision: survey.revision,
            hashes: survey.hashes,
        }),
    }
}

/// The leader's periodic check: every `every`, while this member leads, compares the members
/// and raises a CORRUPT alarm for each member named. Runs for the member's lifetime.
pub async fn run_periodic(node: Arc<Node>, every: Duration) {
    tracing::info!(interval = ?every, "enabled corruption checking");
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !node.is_leader() {
            continue;
        }
        let members: BTreeMap<u64, Member> = node
            .members()
            .into_iter()
            .map(|m| (m.id, m.member))
            .collect();
        match Checker::for_node(&node).survey(&members).await {
            Ok(survey) => act(&node, &survey).await,
            Err(e) => tracing::warn!(error = %e, "failed to check hash KV"),
        }
    }
}

/// Logs a periodic survey's outcome and raises the alarms it calls for.
async fn act(node: &Node, survey: &Survey) {
    log_skipped(survey);
    let culprits = match judge(node.id, survey.members, &survey.hashes) {
        Verdict::Agree => {
            tracing::info!(
                revision = survey.revision,
                checked = survey.hashes.len(),
                "finished peer corruption check"
            );
            return;
        }
        Verdict::Minority { culprits } => {
            tracing::error!(
                revision = survey.revision,
                compact_revision = survey.compact_revision,
                culprits = %show_ids(&culprits),
                hashes = %show_hashes(&survey.hashes),
                "found hash mismatch: the members named differ from the majority"
            );
            culprits
        }
        Verdict::NoMajority { culprits } => {
            tracing::error!(
                revision = survey.revision,
                compact_revision = survey.compact_revision,
                culprits = %show_ids(&culprits),
                hashes = %show_hashes(&survey.hashes),
                "found hash mismatch and no hash shared by a majority of the members: naming \
                 the members whose hash differs from the leader's"
            );
            culprits
        }
    };
    for id in culprits {
        let alarm = AlarmMember {
            member_id: id,
            alarm: AlarmType::Corrupt,
        };
        if node.store.alarms(AlarmType::Corrupt).contains(&alarm) {
            continue;
        }
        if let Err(e) = node.raise_alarm_for(id, AlarmType::Corrupt).await {
            tracing::warn!(
                member_id = %format_args!("{id:x}"),
                error = %e,
                "raising the CORRUPT alarm failed; the next check retries"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hashes(pairs: &[(u64, u32)]) -> BTreeMap<u64, u32> {
        pairs.iter().copied().collect()
    }

    fn ids(list: &[u64]) -> BTreeSet<u64> {
        list.iter().copied().collect()
    }

    #[test]
    fn equal_hashes_or_a_single_member_agree() {
        assert_eq!(
            judge(1, 3, &hashes(&[(1, 7), (2, 7), (3, 7)])),
            Verdict::Agree
        );
        assert_eq!(judge(1, 3, &hashes(&[(1, 7)])), Verdict::Agree);
        assert_eq!(judge(1, 3, &hashes(&[])), Verdict::Agree);
    }

    #[test]
    fn the_member_outside_the_majority_is_named_even_when_it_leads() {
        let h = hashes(&[(1, 7), (2, 7), (3, 9)]);
        let three = Verdict::Minority {
            culprits: ids(&[3]),
        };
        assert_eq!(judge(1, 3, &h), three);
        assert_eq!(
            judge(3, 3, &h),
            three,
            "the leader itself can be the culprit"
        );
        let five = hashes(&[(1, 7), (2, 7), (3, 7), (4, 9), (5, 8)]);
        assert_eq!(
            judge(5, 5, &five),
            Verdict::Minority {
                culprits: ids(&[4, 5])
            }
        );
    }

    #[test]
    fn a_majority_counts_every_member_not_only_those_compared() {
        // Five members, two unreachable: two equal hashes are not more than half of five.
        let h = hashes(&[(1, 7), (2, 7), (3, 9)]);
        assert_eq!(
            judge(1, 5, &h),
            Verdict::NoMajority {
                culprits: ids(&[3])
            }
        );
        assert_eq!(
            judge(3, 5, &h),
            Verdict::NoMajority {
                culprits: ids(&[1, 2])
            },
            "without a majority the checking member's group is kept"
        );
    }

    #[test]
    fn two_members_that_differ_have_no_majority() {
        let h = hashes(&[(1, 7), (2, 9)]);
        assert_eq!(
            judge(1, 2, &h),
            Verdict::NoMajority {
                culprits: ids(&[2])
            }
        );
        assert_eq!(
            judge(4, 2, &h),
            Verdict::NoMajority { culprits: ids(&[]) },
            "a checker that was not compared names nobody"
        );
    }

    #[test]
    fn four_members_split_two_two_have_no_majority() {
        let h = hashes(&[(1, 7), (2, 7), (3, 9), (4, 9)]);
        assert_eq!(
            judge(2, 4, &h),
            Verdict::NoMajority {
                culprits: ids(&[3, 4])
            }
        );
    }

    #[test]
    fn a_member_count_below_the_compared_count_is_raised_to_it() {
        let h = hashes(&[(1, 7), (2, 7), (3, 9)]);
        assert_eq!(
            judge(1, 0, &h),
            Verdict::Minority {
                culprits: ids(&[3])
            }
        );
    }
}
