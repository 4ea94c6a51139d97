//! The backend quota (`--quota-backend-bytes`), as etcd defines it: a request that needs space
//! is admitted while the backend file's size plus an estimate of what the request adds stays
//! below the quota. Past it, a member raises the NOSPACE alarm.
//!
//! Only puts (alone or in a txn) and lease grants need space; deletes, compactions and
//! everything else are always admitted, so a full member can still be emptied.

use crate::api::{Request, RequestOp, TxnRequest};

/// The quota when none is given (etcd's `DefaultQuotaBytes`, 2 GiB).
pub const DEFAULT_QUOTA_BYTES: u64 = 2 * 1024 * 1024 * 1024;
/// Largest quota etcd recommends (`MaxQuotaBytes`, 8 GiB); larger ones only log a warning.
pub const MAX_QUOTA_BYTES: u64 = 8 * 1024 * 1024 * 1024;
/// Estimated cost of storing a key's metadata (etcd's `kvOverhead`).
const KV_OVERHEAD: u64 = 256;
/// Estimated cost of storing a lease (etcd's `leaseOverhead`).
const LEASE_OVERHEAD: u64 = 64;

/// How much space the backend may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quota {
    /// No limit (a negative `--quota-backend-bytes`).
    Unlimited,
    /// Requests that need space are refused once the file would reach this many bytes.
    Bytes(u64),
}

impl Default for Quota {
    fn default() -> Self {
        Quota::Bytes(DEFAULT_QUOTA_BYTES)
    }
}

impl Quota {
    /// The quota `--quota-backend-bytes` asks for: 0 means the default, a negative value none.
    pub fn from_flag(bytes: i64) -> Quota {
        match bytes {
            0 => Quota::default(),
            b if b < 0 => Quota::Unlimited,
            b => Quota::Bytes(b.unsigned_abs()),
        }
    }

    /// The limit in bytes, `None` when unlimited.
    pub fn bytes(self) -> Option<u64> {
        match self {
            Quota::Unlimited => None,
            Quota::Bytes(b) => Some(b),
        }
    }

    /// Whether a request costing `cost` fits a backend of `size` bytes (etcd's `Available`:
    /// a request that needs no space always fits).
    pub fn available(self, size: u64, cost: u64) -> bool {
        match self {
            _ if cost == 0 => true,
            Quota::Unlimited => true,
            Quota::Bytes(max) => size.saturating_add(cost) < max,
        }
    }
}

/// The space `request` is estimated to need (etcd's `Cost`): 0 for requests that add nothing.
pub fn cost(request: &Request) -> u64 {
    match request {
        Request::Put(p) => put_cost(&p.key, &p.value),
        Request::Txn(t) => txn_cost(t),
        Request::LeaseGrant(_) => LEASE_OVERHEAD,
        _ => 0,
    }
}

fn put_cost(key: &[u8], value: &[u8]) -> u64 {
    KV_OVERHEAD + key.len() as u64 + value.len() as u64
}

/// The dearer of the two branches: only one runs.
pub(crate) fn txn_cost(t: &TxnRequest) -> u64 {
    let branch = |ops: &[RequestOp]| -> u64 {
        ops.iter()
            .map(|op| match op {
                RequestOp::Put(p) => put_cost(&p.key, &p.value),
                RequestOp::Txn(nested) => txn_cost(nested),
                RequestOp::Range(_) | RequestOp::DeleteRange(_) => 0,
            })
            .sum()
    };
    branch(&t.success).max(branch(&t.failure))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{DeleteRangeRequest, LeaseGrantRequest, PutRequest, RangeRequest};

    fn put(key: &str, value: &str) -> PutRequest {
        PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_flag_means_what_it_means_in_etcd() {
        assert_eq!(Quota::from_flag(0), Quota::Bytes(2 << 30));
        assert_eq!(Quota::from_flag(-1), Quota::Unlimited);
        assert_eq!(Quota::from_flag(4096), Quota::Bytes(4096));
    }

    #[test]
    fn only_requests_that_add_data_cost_space() {
        assert_eq!(cost(&Request::Put(put("k", "vv"))), 256 + 3);
        assert_eq!(
            cost(&Request::LeaseGrant(LeaseGrantRequest { ttl: 5, id: 1 })),
            64
        );
        assert_eq!(
            cost(&Request::DeleteRange(DeleteRangeRequest {
                key: b"k".to_vec(),
                ..Default::default()
            })),
            0
        );
        let txn = TxnRequest {
            compare: vec![],
            success: vec![
                RequestOp::Put(put("a", "1")),
                RequestOp::Range(RangeRequest::default()),
            ],
            failure: vec![
                RequestOp::Put(put("b", "1")),
                RequestOp::Txn(TxnRequest {
                    compare: vec![],
                    success: vec![RequestOp::Put(put("c", "1"))],
                    failure: vec![],
                }),
            ],
        };
        assert_eq!(cost(&Request::Txn(txn)), 2 * 258, "the dearer branch");
        let read_only = TxnRequest {
            compare: vec![],
            success: vec![RequestOp::Range(RangeRequest::default())],
            failure: vec![],
        };
        assert_eq!(txn_cost(&read_only), 0);
    }

    #[test]
    fn a_request_fits_while_the_file_stays_below_the_quota() {
        let q = Quota::Bytes(1000);
        assert!(q.available(700, 299));
        assert!(!q.available(700, 300), "reaching the quota is past it");
        assert!(
            q.available(5000, 0),
            "a request that adds nothing always fits"
        );
        assert!(Quota::Unlimited.available(u64::MAX, 10));
    }
}
