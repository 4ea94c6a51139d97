//! `dump-db`: what a stopped member's database holds, in the spirit of etcd-dump-db.

use std::fmt::Write;
use std::path::Path;

use crate::api::PermissionType;
use crate::backend;
use crate::store::{Store, StoreConfig};

/// Renders the meta, auth, lease and key summary of the member data in `dir`.
pub fn dump_db(dir: &Path) -> Result<String, backend::Error> {
    if !dir.join(backend::DB_FILE).exists() {
        return Err(backend::Error::Io {
            path: dir.join(backend::DB_FILE),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no member database here"),
        });
    }
    let store = Store::open(dir, StoreConfig::default())?;
    let status = store.status();
    let mut out = String::new();
    let ci = status.consistent_index;
    // Writing into a String cannot fail.
    let _ = writeln!(out, "data dir:          {}", dir.display());
    let _ = writeln!(out, "db size:           {} bytes", status.db_size);
    let _ = writeln!(out, "consistent index:  {} (term {})", ci.index, ci.term);
    let _ = writeln!(out, "revision:          {}", status.revision);
    let _ = writeln!(out, "compact revision:  {}", status.compact_revision);
    let _ = writeln!(out, "keys:              {}", status.key_count);
    let _ = writeln!(
        out,
        "auth:              {}",
        if status.auth_enabled {
            "enabled"
        } else {
            "disabled"
        }
    );
    let _ = writeln!(out, "AuthRevision:      {}", status.auth_revision);
    let alarms: Vec<String> = status
        .alarms
        .iter()
        .map(|a| format!("{:x}:{}", a.member_id, a.alarm.name()))
        .collect();
    let alarms = if alarms.is_empty() {
        "none".to_string()
    } else {
        alarms.join(" ")
    };
    let _ = writeln!(out, "alarms:            {alarms}");
    let _ = writeln!(out, "users:");
    for name in store.users() {
        let roles = store
            .user(&name)
            .map(|u| u.roles.into_iter().collect::<Vec<_>>().join(","))
            .unwrap_or_default();
        let _ = writeln!(out, "  {name} roles=[{roles}]");
    }
    let _ = writeln!(out, "roles:");
    for name in store.roles() {
        let perms = store.role(&name).map(|r| r.permissions).unwrap_or_default();
        let perms: Vec<String> = perms
            .iter()
            .map(|p| {
                let t = match p.perm_type {
                    PermissionType::Read => "read",
                    PermissionType::Write => "write",
                    PermissionType::ReadWrite => "readwrite",
                };
                format!(
                    "{t} [{}, {})",
                    String::from_utf8_lossy(&p.key),
                    String::from_utf8_lossy(&p.range_end).escape_debug()
                )
            })
            .collect();
        let _ = writeln!(out, "  {name} {}", perms.join(" "));
    }
    let _ = writeln!(out, "leases:");
    for lease in store.leases() {
        let _ = writeln!(
            out,
            "  {:016x} ttl={}s keys={}",
            lease.id,
            lease.ttl,
            lease.keys.len()
        );
    }
    match store.membership() {
        Some(m) => {
            let _ = writeln!(out, "membership (applied at index {}):", m.log_id.index);
            for (id, member) in &m.membership.members {
                let role = if m.membership.is_voter(*id) {
                    "voter"
                } else {
                    "learner"
                };
                let _ = writeln!(
                    out,
                    "  {id:016x} {} {role} peers={} clients={}",
                    member.name,
                    member.peer_urls.join(","),
                    member.client_urls.join(",")
                );
            }
        }
        None => {
            let _ = writeln!(out, "membership:        none applied");
        }
    }
    Ok(out)
}

/// Renders the raft log of the stopped member in `dir` (etcd-dump-log's view): the vote, the
/// committed and purged positions, and one line per entry. Indexes are the engine's, as
/// `dump-db` and `endpoint status` show them.
pub fn dump_log(dir: &Path) -> Result<String, crate::raft::Error> {
    use crate::entry::EntryPayload;
    use crate::raft::{self, LogStore};

    let file = dir.join(raft::log_store::LOG_FILE);
    if !file.exists() {
        return Err(raft::Error::Io {
            path: file,
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no raft log here"),
        });
    }
    let contents = LogStore::read_all(dir)?;
    let position = |id: Option<raft::LogId>| match id {
        Some(id) => {
            let id = raft::log_id_to_engine(&id);
            format!("index {} (term {})", id.index, id.term)
        }
        None => "none".to_string(),
    };
    let mut out = String::new();
    let _ = writeln!(out, "data dir:   {}", dir.display());
    match &contents.vote {
        Some(vote) => {
            let _ = writeln!(out, "vote:       {vote}");
        }
        None => {
            let _ = writeln!(out, "vote:       none");
        }
    }
    let _ = writeln!(out, "committed:  {}", position(contents.committed));
    let _ = writeln!(out, "purged to:  {}", position(contents.last_purged));
    let _ = writeln!(out, "entries:    {}", contents.entries.len());
    let _ = writeln!(out, "{:>8} {:>6}  {:<12} detail", "index", "term", "type");
    for entry in contents.entries {
        let entry = raft::entry_to_engine(entry);
        let (kind, detail) = match &entry.payload {
            EntryPayload::Blank => ("blank", String::new()),
            EntryPayload::Membership(m) => {
                let voters: Vec<String> = m
                    .configs
                    .iter()
                    .map(|c| {
                        let ids: Vec<String> = c.iter().map(|id| format!("{id:x}")).collect();
                        format!("[{}]", ids.join(","))
                    })
                    .collect();
                let learners: Vec<String> = m
                    .members
                    .keys()
                    .filter(|id| !m.is_voter(**id))
                    .map(|id| format!("{id:x}"))
                    .collect();
                (
                    "membership",
                    format!(
                        "voters={} learners=[{}]",
                        voters.join("+"),
                        learners.join(",")
                    ),
                )
            }
            EntryPayload::Normal(cmd) => (
                cmd.request.kind(),
                format!(
                    "id={:x} user={:?} auth_revision={}",
                    cmd.header.id, cmd.header.username, cmd.header.auth_revision
                ),
            ),
        };
        let _ = writeln!(
            out,
            "{:>8} {:>6}  {kind:<12} {detail}",
            entry.log_id.index, entry.log_id.term
        );
    }
    Ok(out)
}
