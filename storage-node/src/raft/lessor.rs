//! Lease expiry, as etcd's lessor: only the leader keeps deadlines; KeepAlive renews them
//! (followers forward renewals to the leader); an expired lease is revoked through raft, so
//! every member deletes its keys at the same log position. A new leader gives every lease a
//! full TTL again, as etcd does on promotion, so a leader change never expires leases early.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::node::Node;
use crate::api::{LeaseRevokeRequest, Request, RequestHeader};
use crate::auth::ROOT_USER;

/// How often the leader looks for expired leases.
const CHECK_INTERVAL: Duration = Duration::from_millis(250);

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

/// Deadlines of the leases this member tracks while it leads.
#[derive(Debug, Default)]
pub struct Lessor {
    deadlines: Mutex<Deadlines>,
}

#[derive(Debug, Default)]
struct Deadlines {
    /// The term these deadlines were set in; another term starts them afresh.
    term: u64,
    by_lease: HashMap<i64, Instant>,
}

impl Lessor {
    fn lock(&self) -> MutexGuard<'_, Deadlines> {
        self.deadlines.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Answers a query on the leader: renews or reports lease `id` granted with `ttl`
    /// seconds (`None`: no such lease).
    pub fn answer(
        &self,
        query: LeaseQuery,
        ttl: Option<i64>,
        term: u64,
        now: Instant,
    ) -> LeaseAnswer {
        let ttl = ttl?;
        let mut d = self.lock();
        if d.term != term {
            d.term = term;
            d.by_lease.clear();
        }
        let full = now + Duration::from_secs(ttl.max(0) as u64);
        let deadline = match query {
            LeaseQuery::Renew(id) => {
                d.by_lease.insert(id, full);
                full
            }
            LeaseQuery::TimeToLive(id) => *d.by_lease.entry(id).or_insert(full),
        };
        let left = deadline.saturating_duration_since(now);
        // etcd rounds the remaining time up to whole seconds.
        Some((
            ttl,
            left.as_secs() as i64 + i64::from(left.subsec_nanos() > 0),
        ))
    }

    /// The leases (of `granted`: ID and TTL) whose deadline has passed; leases seen for the
    /// first time in `term` get a full TTL.
    fn expired(&self, granted: &[(i64, i64)], term: u64, now: Instant) -> Vec<i64> {
        let mut d = self.lock();
        if d.term != term {
            d.term = term;
            d.by_lease.clear();
        }
        d.by_lease
            .retain(|id, _| granted.iter().any(|(g, _)| g == id));
        granted
            .iter()
            .filter_map(|(id, ttl)| {
                let deadline = *d
                    .by_lease
                    .entry(*id)
                    .or_insert(now + Duration::from_secs((*ttl).max(0) as u64));
                (deadline <= now).then_some(*id)
            })
            .collect()
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
        let granted: Vec<(i64, i64)> = node
            .store
            .leases()
            .into_iter()
            .map(|l| (l.id, l.ttl))
            .collect();
        for id in node.lessor().expired(&granted, status.term, Instant::now()) {
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
        let lessor = Lessor::default();
        let start = Instant::now();
        let granted = [(1, 5), (2, 5)];
        assert!(lessor.expired(&granted, 1, start).is_empty());
        lessor.answer(
            LeaseQuery::Renew(2),
            Some(5),
            1,
            start + Duration::from_secs(1),
        );
        let later = start + Duration::from_secs(5);
        assert_eq!(lessor.expired(&granted, 1, later), vec![1]);
        // A new term (a new leader) gives every lease a full TTL again.
        assert!(lessor.expired(&granted, 2, later).is_empty());
        assert_eq!(
            lessor.answer(LeaseQuery::TimeToLive(1), Some(5), 2, later),
            Some((5, 5))
        );
        assert_eq!(
            lessor.answer(
                LeaseQuery::TimeToLive(1),
                Some(5),
                2,
                later + Duration::from_millis(1500)
            ),
            Some((5, 4)),
            "remaining time rounds up to whole seconds"
        );
        assert_eq!(
            lessor.answer(LeaseQuery::TimeToLive(9), None, 2, later),
            None
        );
    }
}
