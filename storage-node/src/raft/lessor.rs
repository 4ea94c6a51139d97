//! Lease expiry, as etcd's lessor: only the leader keeps deadlines; KeepAlive renews them
//! (followers forward renewals to the leader); an expired lease is revoked through raft, so
//! every member deletes its keys at the same log position. A new leader gives every lease a
//! full TTL again, as etcd does on promotion, so a leader change never expires leases early.
//!
//! # Cost
//! The lessor follows every grant and revoke as it applies on this member (and reloads from
//! the engine when a snapshot is installed), so finding expired leases never scans the engine.
//! Deadlines sit in a set ordered by time, as etcd's lease heap: a check looks only at the
//! leases that are due, and a renewal, grant or revoke costs O(log n). Only a new leader term
//! touches every lease, once.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::node::Node;
use crate::api::{LeaseRevokeRequest, Request, RequestHeader};
use crate::auth::ROOT_USER;

/// How often the leader looks for expired leases.
const CHECK_INTERVAL: Duration = Duration::from_millis(250);
/// Most revokes proposed per check: 1000 a second, etcd's `leaseRevokeRate`.
const MAX_REVOKES_PER_CHECK: usize = 250;
/// When an expired lease is looked at again if its revoke has not applied by then (etcd's
/// `expiredLeaseRetryInterval`).
const RETRY_INTERVAL: Duration = Duration::from_secs(3);

/// What a follower asks the leader about a lease.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub enum LeaseQuery {
    /// Renew (KeepAlive).
    Renew(i64),
    /// Remaining time (TimeToLive).
    TimeToLive(i64),
}

/// A lease as the leader sees it: granted TTL and seconds left, or `None` when unknown.
pub type LeaseAnswer = Option<(i64, i64)>;

/// Every granted lease with its deadline (meaningful while this member leads).
#[derive(Debug, Default)]
pub struct Lessor {
    leases: Mutex<Leases>,
}

#[derive(Debug, Default)]
struct Leases {
    /// The term the deadlines were set in; another term starts them afresh.
    term: u64,
    by_id: HashMap<i64, Tracked>,
    /// Every lease by when it is next looked at, soonest first.
    queue: BTreeSet<(Instant, i64)>,
}

#[derive(Clone, Copy, Debug)]
struct Tracked {
    /// Granted TTL in seconds.
    ttl: i64,
    /// When it expires unless renewed.
    deadline: Instant,
    /// Its place in the queue: the deadline, or a retry time once it expired.
    due: Instant,
}

/// `now` plus `ttl` seconds (a TTL too large for the clock never expires in practice).
fn full_ttl(now: Instant, ttl: i64) -> Instant {
    let ttl = Duration::from_secs(ttl.max(0).unsigned_abs());
    now.checked_add(ttl)
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 24 * 3600)))
        .unwrap_or(now)
}

impl Leases {
    fn track(&mut self, id: i64, ttl: i64, now: Instant) {
        let deadline = full_ttl(now, ttl);
        if let Some(old) = self.by_id.insert(
            id,
            Tracked {
                ttl,
                deadline,
                due: deadline,
            },
        ) {
            self.queue.remove(&(old.due, id));
        }
        self.queue.insert((deadline, id));
    }

    /// Moves lease `id` to be looked at again at `due`, and to expire at `deadline` when given.
    fn reschedule(&mut self, id: i64, due: Instant, deadline: Option<Instant>) {
        if let Some(t) = self.by_id.get_mut(&id) {
            self.queue.remove(&(t.due, id));
            t.due = due;
            if let Some(deadline) = deadline {
                t.deadline = deadline;
            }
            self.queue.insert((due, id));
        }
    }

    /// Starts every deadline afresh when `term` is new (a new leader, as etcd's `Promote`).
    fn enter_term(&mut self, term: u64, now: Instant) {
        if self.term == term {
            return;
        }
        self.term = term;
        let leases: Vec<(i64, i64)> = self.by_id.iter().map(|(id, t)| (*id, t.ttl)).collect();
        self.queue.clear();
        for (id, ttl) in leases {
            self.track(id, ttl, now);
        }
    }
}

impl Lessor {
    /// A lessor following `leases` (ID and TTL), as the engine holds them at start.
    pub fn new(leases: impl IntoIterator<Item = (i64, i64)>, now: Instant) -> Lessor {
        let lessor = Lessor::default();
        lessor.reload(leases, now);
        lessor
    }

    fn lock(&self) -> MutexGuard<'_, Leases> {
        // Each critical section leaves the map and the queue in step before it can panic.
        self.leases.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces every lease with `leases` (after a snapshot replaced the engine's).
    pub fn reload(&self, leases: impl IntoIterator<Item = (i64, i64)>, now: Instant) {
        let mut l = self.lock();
        l.by_id.clear();
        l.queue.clear();
        for (id, ttl) in leases {
            l.track(id, ttl, now);
        }
    }

    /// A lease was granted here (applied); a lease already known keeps its deadline.
    pub fn granted(&self, id: i64, ttl: i64, now: Instant) {
        let mut l = self.lock();
        if !l.by_id.contains_key(&id) {
            l.track(id, ttl, now);
        }
    }

    /// A lease was revoked here (applied).
    pub fn revoked(&self, id: i64) {
        let mut l = self.lock();
        if let Some(t) = l.by_id.remove(&id) {
            l.queue.remove(&(t.due, id));
        }
    }

    /// Whether lease `id` is known.
    #[cfg(test)]
    fn contains(&self, id: i64) -> bool {
        self.lock().by_id.contains_key(&id)
    }

    /// Answers a query on the leader in `term`: renews or reports lease `id` (`None`: no such
    /// lease).
    pub fn answer(&self, query: LeaseQuery, term: u64, now: Instant) -> LeaseAnswer {
        let mut l = self.lock();
        l.enter_term(term, now);
        let (id, renew) = match query {
            LeaseQuery::Renew(id) => (id, true),
            LeaseQuery::TimeToLive(id) => (id, false),
        };
        let tracked = *l.by_id.get(&id)?;
        let deadline = if renew {
            let full = full_ttl(now, tracked.ttl);
            l.reschedule(id, full, Some(full));
            full
        } else {
            tracked.deadline
        };
        let left = deadline.saturating_duration_since(now);
        // etcd rounds the remaining time up to whole seconds.
        Some((
            tracked.ttl,
            left.as_secs() as i64 + i64::from(left.subsec_nanos() > 0),
        ))
    }

    /// Up to `limit` leases whose deadline has passed, soonest first, for the leader in
    /// `term`. Each is looked at again only after [`RETRY_INTERVAL`], unless its revoke applies
    /// first.
    pub fn expired(&self, term: u64, now: Instant, limit: usize) -> Vec<i64> {
        let mut l = self.lock();
        l.enter_term(term, now);
        let mut due = Vec::new();
        while due.len() < limit {
            match l.queue.first() {
                Some(&(at, id)) if at <= now => due.push(id),
                _ => break,
            }
            let id = due[due.len() - 1];
            l.reschedule(id, now + RETRY_INTERVAL, None);
        }
        due
    }
}

/// Revokes expired leases while this member leads; runs for the member's lifetime.
pub async fn run(node: Arc<Node>) {
    let mut tick = tokio::time::interval(CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let status = node.raft_status();
        if !status.is_leader {
            continue;
        }
        let expired = node
            .lessor()
            .expired(status.term, Instant::now(), MAX_REVOKES_PER_CHECK);
        for id in expired {
            // etcd revokes as root (its fix for etcd 11689), so the revoke passes the
            // permission check on every member; the header carries this member's AuthRevision.
            let (_, auth_revision) = node.store.auth_status();
            let header = RequestHeader {
                id: 0,
                username: ROOT_USER.to_string(),
                auth_revision,
            };
            match node
                .propose(header, Request::LeaseRevoke(LeaseRevokeRequest { id }))
                .await
            {
                Ok(_) => tracing::info!(lease = %format_args!("{id:x}"), "revoked expired lease"),
                Err(e) => {
                    tracing::warn!(lease = %format_args!("{id:x}"), error = %e, "revoking expired lease failed")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_expire_after_their_ttl_unless_renewed_and_restart_on_a_new_term() {
        let start = Instant::now();
        let lessor = Lessor::new([(1, 5), (2, 5)], start);
        assert!(lessor.expired(1, start, 10).is_empty());
        lessor.answer(LeaseQuery::Renew(2), 1, start + Duration::from_secs(1));
        let later = start + Duration::from_secs(5);
        assert_eq!(lessor.expired(1, later, 10), vec![1]);
        // A new term (a new leader) gives every lease a full TTL again.
        assert!(lessor.expired(2, later, 10).is_empty());
        assert_eq!(
            lessor.answer(LeaseQuery::TimeToLive(1), 2, later),
            Some((5, 5))
        );
        assert_eq!(
            lessor.answer(
                LeaseQuery::TimeToLive(1),
                2,
                later + Duration::from_millis(1500)
            ),
            Some((5, 4)),
            "remaining time rounds up to whole seconds"
        );
        assert_eq!(lessor.answer(LeaseQuery::TimeToLive(9), 2, later), None);
    }

    #[test]
    fn expired_leases_come_soonest_first_and_are_retried_until_revoked() {
        let start = Instant::now();
        let lessor = Lessor::new([(1, 30), (2, 10), (3, 20)], start);
        lessor.expired(1, start, 10);
        let at = |s| start + Duration::from_secs(s);
        assert_eq!(lessor.expired(1, at(25), 10), vec![2, 3]);
        assert!(
            lessor.expired(1, at(26), 10).is_empty(),
            "not proposed again while the revokes are in flight"
        );
        assert_eq!(
            lessor.answer(LeaseQuery::TimeToLive(2), 1, at(26)),
            Some((10, 0)),
            "an expired lease has no time left"
        );
        lessor.revoked(2);
        assert_eq!(
            lessor.expired(1, at(28), 10),
            vec![3],
            "a revoke that did not apply is retried"
        );
        assert_eq!(lessor.expired(1, at(40), 1), vec![1], "at most `limit`");
    }

    #[test]
    fn grants_and_revokes_applied_here_are_followed() {
        let start = Instant::now();
        let lessor = Lessor::new([], start);
        lessor.granted(7, 10, start);
        lessor.granted(7, 99, start + Duration::from_secs(5));
        assert_eq!(
            lessor.answer(LeaseQuery::TimeToLive(7), 0, start + Duration::from_secs(5)),
            Some((10, 5)),
            "a second grant of a known lease changes nothing"
        );
        lessor.revoked(7);
        assert!(!lessor.contains(7));
        assert!(
            lessor
                .expired(0, start + Duration::from_secs(60), 10)
                .is_empty()
        );
        lessor.reload([(8, 1)], start);
        assert!(lessor.contains(8) && !lessor.contains(7));
    }
}
