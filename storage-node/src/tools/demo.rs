//! etcd issue 11651, played on three members that apply one shared log.
//!
//! Replication is simulated the way raft delivers it: every entry reaches every member, a
//! restarted member is sent every entry again and skips those at or below its persisted
//! consistent index, and a client is answered from the apply result of the member it talks to.
//! The same script runs twice: with the fix (default) and with the fault switch.
//!
//! The script is the seed's trigger: auth enabled, a role grant, node2 restarted before any KV
//! write, a second grant, node1 restarted, then one write through each member.

use std::path::{Path, PathBuf};

use crate::api::{
    AuthRequest, Command, Permission, PermissionType, PutRequest, RangeRequest, Request,
    RequestHeader,
};
use crate::auth::hash_password;
use crate::entry::{Entry, EntryPayload, LogId};
use crate::store::{Outcome, Store, StoreConfig};

/// What one member looks like at the end of a round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberView {
    /// Member name.
    pub name: String,
    /// Its AuthRevision.
    pub auth_revision: u64,
    /// Last applied log index (what `endpoint status` shows as raft index).
    pub applied_index: u64,
    /// Its KV revision.
    pub revision: i64,
    /// Live keys.
    pub key_count: u64,
    /// HashKV at its current revision.
    pub hash: u32,
}

/// One client write and where it can be read afterwards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteView {
    /// Member the client wrote through.
    pub through: String,
    /// Key written.
    pub key: String,
    /// Whether the client was told the write succeeded.
    pub acknowledged: bool,
    /// Names of the members that serve the key.
    pub visible_on: Vec<String>,
}

/// The result of one round of the script.
#[derive(Clone, Debug)]
pub struct Round {
    /// Whether the fault switch was on.
    pub fault: bool,
    /// Members at the end.
    pub members: Vec<MemberView>,
    /// The three writes.
    pub writes: Vec<WriteView>,
}

impl Round {
    /// Max minus min AuthRevision across members.
    pub fn auth_revision_drift(&self) -> u64 {
        let revs = self.members.iter().map(|m| m.auth_revision);
        revs.clone().max().unwrap_or(0) - revs.min().unwrap_or(0)
    }

    /// Whether every member holds the same data (HashKV, key count, AuthRevision).
    pub fn members_agree(&self) -> bool {
        self.members.windows(2).all(|w| {
            (w[0].hash, w[0].key_count, w[0].auth_revision)
                == (w[1].hash, w[1].key_count, w[1].auth_revision)
        })
    }

    /// Whether writes were acknowledged yet are missing from some member.
    pub fn silently_dropped_writes(&self) -> usize {
        self.writes
            .iter()
            .filter(|w| w.acknowledged && w.visible_on.len() < self.members.len())
            .count()
    }
}

struct Member {
    name: String,
    dir: PathBuf,
    store: Option<Store>,
}

impl Member {
    fn store(&self) -> &Store {
        self.store
            .as_ref()
            .expect("a member is always open between steps")
    }
}

struct Cluster {
    config: StoreConfig,
    members: Vec<Member>,
    log: Vec<Entry>,
}

/// Demo failures: storage errors, or a step of the script refused.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

impl Cluster {
    fn new(root: &Path, config: StoreConfig) -> Result<Cluster, Error> {
        let mut members = Vec::new();
        for name in ["node1", "node2", "node3"] {
            let dir = root.join(name);
            let store = Store::open(&dir, config.clone())?;
            members.push(Member {
                name: name.into(),
                dir,
                store: Some(store),
            });
        }
        Ok(Cluster {
            config,
            members,
            log: Vec::new(),
        })
    }

    /// Proposes `request` through member `through` as `user`, replicates it to all members, and
    /// returns the proposing member's own apply result.
    fn propose(
        &mut self,
        through: usize,
        user: &str,
        request: Request,
    ) -> Result<Result<(), String>, Error> {
        let (enabled, revision) = self.members[through].store().auth_status();
        let header = if enabled {
            RequestHeader {
                id: 0,
                username: user.into(),
                auth_revision: revision,
            }
        } else {
            RequestHeader::default()
        };
        let entry = Entry {
            log_id: LogId {
                term: 1,
                index: self.log.len() as u64 + 1,
            },
            payload: EntryPayload::Normal(Command { header, request }),
        };
        self.log.push(entry.clone());
        let mut local = Ok(());
        for (i, member) in self.members.iter().enumerate() {
            let outcome = member.store().apply(&entry)?;
            if i == through
                && let Outcome::Command {
                    response: Err(e), ..
                } = outcome
            {
                local = Err(e.to_string());
            }
        }
        Ok(local)
    }

    fn admin(&mut self, request: Request) -> Result<(), Error> {
        self.propose(0, "root", request)?
            .map_err(|e| format!("demo setup step refused: {e}").into())
    }

    /// Restarts a member: reopen its files, then let the log deliver every entry again.
    fn restart(&mut self, i: usize) -> Result<(), Error> {
        let member = &mut self.members[i];
        member.store = None;
        let store = Store::open(&member.dir, self.config.clone())?;
        store.apply_batch(&self.log)?;
        member.store = Some(store);
        Ok(())
    }

    fn view(&self) -> Result<Vec<MemberView>, Error> {
        let mut views = Vec::new();
        for m in &self.members {
            let status = m.store().status();
            views.push(MemberView {
                name: m.name.clone(),
                auth_revision: status.auth_revision,
                applied_index: status.applied.index,
                revision: status.revision,
                key_count: status.key_count,
                hash: m.store().hash_kv(0)?.hash,
            });
        }
        Ok(views)
    }
}

/// Runs one round of the script in `root`.
pub fn round(root: &Path, fault: bool, bcrypt_cost: u32) -> Result<Round, Error> {
    let config = StoreConfig {
        unsafe_reproduce_etcd_11651: fault,
        ..StoreConfig::default()
    };
    let mut c = Cluster::new(root, config)?;
    let password = hash_password("demo", bcrypt_cost)?;
    let auth = Request::Auth;
    c.admin(auth(AuthRequest::UserAdd {
        name: "root".into(),
        hashed_password: Some(password.clone()),
    }))?;
    c.admin(auth(AuthRequest::UserGrantRole {
        user: "root".into(),
        role: "root".into(),
    }))?;
    c.admin(auth(AuthRequest::RoleAdd { name: "app".into() }))?;
    c.admin(auth(AuthRequest::Enable))?;
    let grant = |key: &str| {
        let end = format!("{}0", key.trim_end_matches('/'));
        auth(AuthRequest::RoleGrantPermission {
            name: "app".into(),
            perm: Permission {
                perm_type: PermissionType::ReadWrite,
                key: key.into(),
                range_end: end.into(),
            },
        })
    };
    c.admin(grant("/app/"))?;
    c.restart(1)?;
    c.admin(grant("/jobs/"))?;
    c.restart(0)?;

    let mut writes = Vec::new();
    for through in 0..c.members.len() {
        let key = format!("/demo/written-through-{}", c.members[through].name);
        let put = Request::Put(PutRequest {
            key: key.clone().into(),
            value: b"hello".to_vec(),
            ..Default::default()
        });
        let acknowledged = c.propose(through, "root", put)?.is_ok();
        let mut visible_on = Vec::new();
        for m in &c.members {
            let found = m.store().range(&RangeRequest {
                key: key.clone().into(),
                ..Default::default()
            })?;
            if !found.kvs.is_empty() {
                visible_on.push(m.name.clone());
            }
        }
        writes.push(WriteView {
            through: c.members[through].name.clone(),
            key,
            acknowledged,
            visible_on,
        });
    }
    Ok(Round {
        fault,
        members: c.view()?,
        writes,
    })
}

/// Renders a round as the demo prints it.
pub fn render(round: &Round) -> String {
    let mut out = String::new();
    let title = if round.fault {
        "with the fault switch (--unsafe-reproduce-etcd-11651): etcd before PR 11652"
    } else {
        "with the fix (default)"
    };
    out.push_str(&format!("{title}\n"));
    out.push_str("  member  AuthRevision  applied index  revision  keys  HashKV\n");
    for m in &round.members {
        out.push_str(&format!(
            "  {:<6}  {:>12}  {:>13}  {:>8}  {:>4}  {:08x}\n",
            m.name, m.auth_revision, m.applied_index, m.revision, m.key_count, m.hash
        ));
    }
    for w in &round.writes {
        let ack = if w.acknowledged {
            "acknowledged"
        } else {
            "refused"
        };
        out.push_str(&format!(
            "  write through {}: {ack}, visible on {}\n",
            w.through,
            if w.visible_on.is_empty() {
                "no member".to_string()
            } else {
                w.visible_on.join(", ")
            }
        ));
    }
    let verdict = if round.members_agree() {
        "members agree".to_string()
    } else {
        format!(
            "members DIVERGED: AuthRevision drift {}, {} acknowledged write(s) missing on some member",
            round.auth_revision_drift(),
            round.silently_dropped_writes()
        )
    };
    out.push_str(&format!("  => {verdict}\n"));
    out
}

/// Whether a pair of rounds shows what the demo promises: the fix keeps members equal, the
/// fault switch reproduces the seed exactly (node1 > node2 > node3 in AuthRevision; writes
/// through node1 on all, through node2 on node2 and node3, through node3 on node3 only; equal
/// applied indexes everywhere).
pub fn as_expected(fixed: &Round, faulty: &Round) -> bool {
    fn on(w: &WriteView) -> Vec<&str> {
        w.visible_on.iter().map(String::as_str).collect()
    }
    let revs: Vec<u64> = faulty.members.iter().map(|m| m.auth_revision).collect();
    let same_index = |r: &Round| {
        r.members
            .windows(2)
            .all(|w| w[0].applied_index == w[1].applied_index)
    };
    fixed.members_agree()
        && fixed
            .writes
            .iter()
            .all(|w| w.acknowledged && w.visible_on.len() == 3)
        && same_index(fixed)
        && revs.len() == 3
        && revs[0] > revs[1]
        && revs[1] > revs[2]
        && same_index(faulty)
        && faulty.writes.iter().all(|w| w.acknowledged)
        && on(&faulty.writes[0]) == ["node1", "node2", "node3"]
        && on(&faulty.writes[1]) == ["node2", "node3"]
        && on(&faulty.writes[2]) == ["node3"]
}
