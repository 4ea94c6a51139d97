//! Leases, apply side: grant, revoke, and which keys are attached to which lease.
//!
//! Expiry is decided by the leader (it proposes a revoke); nothing here looks at a clock. The
//! attached keys are not stored separately: they are derived from the KV records at open and
//! kept current from the events of every applied write.

use std::collections::{BTreeMap, BTreeSet};

use redb::{ReadTransaction, ReadableTable, WriteTransaction};
use thiserror::Error;

use crate::api::{Event, EventKind, LeaseGrantRequest};
use crate::backend;
use crate::schema::LEASES;

/// Largest TTL a lease may have, in seconds (etcd's `MaxLeaseTTL`).
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// A lease operation the store refuses.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// No lease has this ID.
    #[error("lease not found")]
    NotFound,
    /// A lease with this ID exists already.
    #[error("lease already exists")]
    Exists,
    /// The TTL exceeds [`MAX_LEASE_TTL`].
    #[error("too large lease TTL")]
    TtlTooLarge,
    /// Lease ID 0 means "no lease" and cannot be granted.
    #[error("lease ID 0 is reserved for no lease")]
    ZeroId,
    /// Storage failed.
    #[error(transparent)]
    Backend(#[from] backend::Error),
}

/// One granted lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// Lease ID.
    pub id: i64,
    /// Granted TTL in seconds.
    pub ttl: i64,
    /// Keys attached to it, sorted.
    pub keys: BTreeSet<Vec<u8>>,
}

/// Every granted lease with its attached keys.
#[derive(Default)]
pub(crate) struct Leases {
    leases: BTreeMap<i64, Lease>,
}

impl Leases {
    /// Loads the granted leases and attaches the live keys that name one.
    pub(crate) fn load(
        txn: &ReadTransaction,
        attached: Vec<crate::mvcc::Attached>,
    ) -> Result<Leases, backend::Error> {
        let mut leases = BTreeMap::new();
        for item in txn.open_table(LEASES)?.iter()? {
            let (id, ttl) = item?;
            let id = id.value();
            leases.insert(
                id,
                Lease {
                    id,
                    ttl: ttl.value(),
                    keys: BTreeSet::new(),
                },
            );
        }
        for (key, id) in attached {
            // A key whose lease is gone was written before the revoke reached it: etcd leaves
            // such keys alone too.
            if let Some(lease) = leases.get_mut(&id) {
                lease.keys.insert(key);
            }
        }
        Ok(Leases { leases })
    }

    /// Whether lease `id` exists.
    pub(crate) fn exists(&self, id: i64) -> bool {
        self.leases.contains_key(&id)
    }

    /// Lease `id`, if granted.
    pub(crate) fn get(&self, id: i64) -> Option<&Lease> {
        self.leases.get(&id)
    }

    /// All leases, by ID.
    pub(crate) fn all(&self) -> impl Iterator<Item = &Lease> {
        self.leases.values()
    }

    /// Grants a lease; TTLs below `min_ttl` are raised to it, as etcd does.
    pub(crate) fn grant(
        &mut self,
        txn: &WriteTransaction,
        req: &LeaseGrantRequest,
        min_ttl: i64,
    ) -> Result<Lease, Error> {
        if req.id == 0 {
            return Err(Error::ZeroId);
        }
        if req.ttl > MAX_LEASE_TTL {
            return Err(Error::TtlTooLarge);
        }
        if self.exists(req.id) {
            return Err(Error::Exists);
        }
        let ttl = req.ttl.max(min_ttl);
        txn.open_table(LEASES)
            .map_err(backend::Error::from)?
            .insert(req.id, ttl)
            .map_err(backend::Error::from)?;
        let lease = Lease {
            id: req.id,
            ttl,
            keys: BTreeSet::new(),
        };
        self.leases.insert(req.id, lease.clone());
        Ok(lease)
    }

    /// Removes lease `id` (the caller deletes its keys in the same transaction).
    pub(crate) fn remove(&mut self, txn: &WriteTransaction, id: i64) -> Result<Lease, Error> {
        let lease = self.leases.remove(&id).ok_or(Error::NotFound)?;
        txn.open_table(LEASES)
            .map_err(backend::Error::from)?
            .remove(id)
            .map_err(backend::Error::from)?;
        Ok(lease)
    }

    /// Follows the attachments changed by applied KV events.
    pub(crate) fn observe(&mut self, events: &[Event]) {
        for event in events {
            if let Some(prev) = &event.prev_kv
                && let Some(lease) = self.leases.get_mut(&prev.lease)
            {
                lease.keys.remove(&prev.key);
            }
            if event.kind == EventKind::Put
                && let Some(lease) = self.leases.get_mut(&event.kv.lease)
            {
                lease.keys.insert(event.kv.key.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::KeyValue;
    use crate::backend::Backend;

    fn grant(leases: &mut Leases, b: &Backend, id: i64, ttl: i64) -> Result<Lease, Error> {
        let txn = b.begin_write().unwrap();
        let r = leases.grant(&txn, &LeaseGrantRequest { id, ttl }, 2);
        txn.commit().unwrap();
        r
    }

    #[test]
    fn grant_raises_short_ttls_and_refuses_duplicates() {
        let b = Backend::in_memory().unwrap();
        let mut leases = Leases::default();
        assert_eq!(grant(&mut leases, &b, 7, 1).unwrap().ttl, 2);
        assert!(matches!(grant(&mut leases, &b, 7, 10), Err(Error::Exists)));
        assert!(matches!(
            grant(&mut leases, &b, 8, MAX_LEASE_TTL + 1),
            Err(Error::TtlTooLarge)
        ));
        assert!(matches!(grant(&mut leases, &b, 0, 10), Err(Error::ZeroId)));
    }

    #[test]
    fn revoking_an_unknown_lease_fails() {
        let b = Backend::in_memory().unwrap();
        let txn = b.begin_write().unwrap();
        assert!(matches!(
            Leases::default().remove(&txn, 5),
            Err(Error::NotFound)
        ));
    }

    #[test]
    fn events_move_keys_between_leases() {
        let b = Backend::in_memory().unwrap();
        let mut leases = Leases::default();
        grant(&mut leases, &b, 1, 10).unwrap();
        grant(&mut leases, &b, 2, 10).unwrap();
        let kv = |lease| KeyValue {
            key: b"k".to_vec(),
            lease,
            ..Default::default()
        };
        leases.observe(&[Event {
            kind: EventKind::Put,
            kv: kv(1),
            prev_kv: None,
        }]);
        assert!(leases.get(1).unwrap().keys.contains(b"k".as_slice()));
        leases.observe(&[Event {
            kind: EventKind::Put,
            kv: kv(2),
            prev_kv: Some(kv(1)),
        }]);
        assert!(leases.get(1).unwrap().keys.is_empty());
        assert!(leases.get(2).unwrap().keys.contains(b"k".as_slice()));
        leases.observe(&[Event {
            kind: EventKind::Delete,
            kv: kv(0),
            prev_kv: Some(kv(2)),
        }]);
        assert!(leases.get(2).unwrap().keys.is_empty());
    }
}
