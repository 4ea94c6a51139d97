//! Shared helpers for the engine's integration tests: a log that numbers entries, request
//! builders, and a deterministic mixed workload.

#![allow(dead_code)]

use storage_node::api::*;
use storage_node::auth::hash_password;
use storage_node::entry::{Entry, EntryPayload, LogId};
use storage_node::{Outcome, Store, StoreConfig};

/// bcrypt's cheapest cost keeps tests fast.
pub const COST: u32 = 4;

/// A log: entries numbered from 1 in term 1.
#[derive(Default)]
pub struct Log {
    pub entries: Vec<Entry>,
}

impl Log {
    pub fn next_id(&self) -> LogId {
        LogId {
            term: 1,
            index: self.entries.len() as u64 + 1,
        }
    }

    pub fn push_payload(&mut self, payload: EntryPayload) -> Entry {
        let entry = Entry {
            log_id: self.next_id(),
            payload,
        };
        self.entries.push(entry.clone());
        entry
    }

    /// Appends a request proposed with `header`.
    pub fn push(&mut self, header: RequestHeader, request: Request) -> Entry {
        self.push_payload(EntryPayload::Normal(Command { header, request }))
    }
}

/// The header a member with `store`'s state puts on a request from `user`.
pub fn header(store: &Store, user: &str) -> RequestHeader {
    let (enabled, revision) = store.auth_status();
    if enabled {
        RequestHeader {
            id: 0,
            username: user.into(),
            auth_revision: revision,
        }
    } else {
        RequestHeader::default()
    }
}

/// Proposes through `store`'s member and applies on it: returns the local response.
pub fn propose(
    store: &Store,
    log: &mut Log,
    user: &str,
    request: Request,
) -> Result<Response, String> {
    let entry = log.push(header(store, user), request);
    response(store.apply(&entry).expect("apply"))
}

pub fn response(outcome: Outcome) -> Result<Response, String> {
    match outcome {
        Outcome::Command { response, .. } => response.map_err(|e| e.to_string()),
        other => panic!("expected a command outcome, got {other:?}"),
    }
}

pub fn put(key: &str, value: &str) -> Request {
    Request::Put(PutRequest {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    })
}

pub fn del(key: &str, end: &str) -> Request {
    Request::DeleteRange(DeleteRangeRequest {
        key: key.into(),
        range_end: end.into(),
        prev_kv: false,
    })
}

pub fn auth(req: AuthRequest) -> Request {
    Request::Auth(req)
}

pub fn user_add(name: &str) -> Request {
    auth(AuthRequest::UserAdd {
        name: name.into(),
        hashed_password: Some(hash_password("pw", COST).expect("hash")),
    })
}

pub fn grant_role(user: &str, role: &str) -> Request {
    auth(AuthRequest::UserGrantRole {
        user: user.into(),
        role: role.into(),
    })
}

pub fn grant_perm(role: &str, key: &str, end: &str) -> Request {
    let perm = Permission {
        perm_type: PermissionType::ReadWrite,
        key: key.into(),
        range_end: end.into(),
    };
    auth(AuthRequest::RoleGrantPermission {
        name: role.into(),
        perm,
    })
}

/// Values of the keys in `[key, end)` as the store serves them now.
pub fn values(store: &Store, key: &str, end: &str) -> Vec<(String, String)> {
    let req = RangeRequest {
        key: key.into(),
        range_end: end.into(),
        ..Default::default()
    };
    let resp = store.range(&req).expect("range");
    resp.kvs
        .into_iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(&kv.key).into(),
                String::from_utf8_lossy(&kv.value).into(),
            )
        })
        .collect()
}

pub fn value(store: &Store, key: &str) -> Option<String> {
    values(store, key, "").pop().map(|(_, v)| v)
}

/// The seed's auth setup through `store`: root with the root role, role `app` with readwrite on
/// `app/`, user alice in it, auth enabled.
pub fn enable_auth(store: &Store, log: &mut Log) {
    for req in [
        user_add("root"),
        grant_role("root", "root"),
        auth(AuthRequest::RoleAdd { name: "app".into() }),
        grant_perm("app", "app/", "app0"),
        user_add("alice"),
        grant_role("alice", "app"),
        auth(AuthRequest::Enable),
    ] {
        propose(store, log, "root", req).expect("auth setup");
    }
}

pub fn config() -> StoreConfig {
    StoreConfig::default()
}

pub fn faulty() -> StoreConfig {
    StoreConfig {
        unsafe_reproduce_etcd_11651: true,
        ..StoreConfig::default()
    }
}

/// What must be equal between two members holding the same data.
#[derive(Debug, PartialEq, Eq)]
pub struct Fingerprint {
    pub hash: u32,
    pub revision: i64,
    pub compact_revision: i64,
    pub key_count: u64,
    pub auth_revision: u64,
    pub auth_enabled: bool,
    pub users: Vec<String>,
    pub roles: Vec<String>,
    pub leases: Vec<(i64, usize)>,
}

pub fn fingerprint(store: &Store) -> Fingerprint {
    let status = store.status();
    Fingerprint {
        hash: store.hash_kv(0).expect("hash").hash,
        revision: status.revision,
        compact_revision: status.compact_revision,
        key_count: status.key_count,
        auth_revision: status.auth_revision,
        auth_enabled: status.auth_enabled,
        users: store.users(),
        roles: store.roles(),
        leases: store
            .leases()
            .into_iter()
            .map(|l| (l.id, l.keys.len()))
            .collect(),
    }
}

/// Tiny deterministic generator (xorshift64*), so workloads repeat exactly.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A mixed workload of `n` entries after the auth setup: puts, deletes, txns, leases, auth
/// changes, compactions, blank entries, writes refused for lack of permission or for a stale
/// header. Built by proposing against `reference` (in memory), which ends holding the result.
pub fn workload(seed: u64, n: usize) -> (Log, Store) {
    let reference = Store::in_memory(config()).expect("reference store");
    let mut log = Log::default();
    enable_auth(&reference, &mut log);
    let mut rng = Rng::new(seed);
    let mut next_lease = 1i64;
    for i in 0..n {
        let key = format!("app/{}", rng.below(40));
        let value = format!("v{i}");
        let user = if rng.below(2) == 0 { "root" } else { "alice" };
        let mut h = header(&reference, user);
        let request = match rng.below(20) {
            0..=7 => put(&key, &value),
            8 => del(&key, ""),
            9 => del("app/1", "app/2"),
            10 => Request::Txn(TxnRequest {
                compare: vec![Compare {
                    result: CompareResult::Greater,
                    target: CompareTarget::Version(1),
                    key: key.clone().into(),
                    range_end: vec![],
                }],
                success: vec![RequestOp::DeleteRange(DeleteRangeRequest {
                    key: key.clone().into(),
                    ..Default::default()
                })],
                failure: vec![RequestOp::Put(PutRequest {
                    key: key.clone().into(),
                    value: value.into(),
                    ..Default::default()
                })],
            }),
            11 => {
                next_lease += 1;
                Request::LeaseGrant(LeaseGrantRequest {
                    id: next_lease,
                    ttl: 60,
                })
            }
            12 => Request::Put(PutRequest {
                key: key.into(),
                value: value.into(),
                lease: next_lease,
                ..Default::default()
            }),
            13 => Request::LeaseRevoke(LeaseRevokeRequest {
                id: 1 + rng.below(next_lease as u64) as i64,
            }),
            14 => {
                h = header(&reference, "root");
                grant_perm("app", &format!("extra/{}", rng.below(5)), "")
            }
            15 => put(&format!("other/{i}"), "denied for alice"),
            16 => {
                // A proposer that has not caught up with the latest auth change.
                h.auth_revision = h.auth_revision.saturating_sub(1);
                put(&key, "stale")
            }
            17 => Request::Compaction(CompactionRequest {
                revision: reference.status().revision - 3,
                physical: false,
            }),
            18 => {
                log.push_payload(EntryPayload::Blank);
                reference
                    .apply(log.entries.last().expect("entry"))
                    .expect("apply");
                continue;
            }
            _ => Request::Range(RangeRequest {
                key: "app/".into(),
                range_end: "app0".into(),
                ..Default::default()
            }),
        };
        let entry = log.push(h, request);
        reference.apply(&entry).expect("apply");
    }
    (log, reference)
}
