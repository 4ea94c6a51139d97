//! etcd's Maintenance service: Status, Alarm, Hash, HashKV, Snapshot, Defragment, MoveLeader,
//! and Downgrade, answered as an etcd that cannot go to the requested version would.
//!
//! Snapshot streams the engine's own snapshot format ([`crate::snapshot`], checked end to end
//! by its final checksum), not a bbolt file: `storage-node snapshot status|restore` read it.
//! The stream comes from one read transaction opened at an applied position, so applies go on
//! while it streams, and a client that stops reading holds up nothing but its own stream.
//!
//! With auth on, as in etcd 3.5: Hash, HashKV, Snapshot, Defragment, MoveLeader, Downgrade and
//! raising or clearing an alarm need the root role; listing alarms needs a user; Status is open.

use tonic::{Request, Response, Status};

use super::{Api, convert, error};
use crate::api::{self, AlarmAction};
use crate::pb::etcdserverpb::{
    AlarmRequest, AlarmResponse, DefragmentRequest, DefragmentResponse, DowngradeRequest,
    DowngradeResponse, HashKvRequest, HashKvResponse, HashRequest, HashResponse, MoveLeaderRequest,
    MoveLeaderResponse, SnapshotRequest, SnapshotResponse, StatusRequest, StatusResponse,
    downgrade_request::DowngradeAction, maintenance_server::Maintenance,
};
use crate::server::error::ServerError;

/// The etcd API level this server implements, reported as Status's `version`. Clients gate
/// features on it (kube-apiserver, for one, reads it): Mend serves etcd 3.5's API, and says
/// 3.5.0 so that nothing expects fixes of later 3.5 patch releases it was not checked against.
pub const VERSION: &str = "3.5.0";

/// Bytes of snapshot per message (etcd sends 32 KiB; larger chunks cost fewer messages and stay
/// far below every client's default receive limit of 4 MiB).
const SNAPSHOT_CHUNK: usize = 1 << 20;

/// Chunks buffered ahead of a slow client.
const SNAPSHOT_CHUNKS_IN_FLIGHT: usize = 4;

/// Cuts the snapshot stream into messages. etcd fills `remaining_bytes` from the file's size;
/// Mend's stream is written as it is read, so until the last message it counts down from the
/// backend's size in use and never reaches 0 early; the last message says 0.
struct Chunks {
    tx: tokio::sync::mpsc::Sender<Result<SnapshotResponse, Status>>,
    buf: Vec<u8>,
    header: Option<crate::pb::etcdserverpb::ResponseHeader>,
    expected: u64,
    sent: u64,
}

impl Chunks {
    fn send(&mut self, last: bool) -> std::io::Result<()> {
        let blob = std::mem::replace(&mut self.buf, Vec::with_capacity(SNAPSHOT_CHUNK));
        self.sent += blob.len() as u64;
        let remaining_bytes = if last {
            0
        } else {
            self.expected.saturating_sub(self.sent).max(1)
        };
        let message = SnapshotResponse {
            header: self.header.take(),
            remaining_bytes,
            blob,
            version: VERSION.to_string(),
        };
        self.tx
            .blocking_send(Ok(message))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away"))
    }

    /// Sends what is left as the last message.
    fn finish(&mut self) -> std::io::Result<()> {
        self.send(true)
    }
}

impl std::io::Write for Chunks {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        // A full chunk is sent only once more data follows, so the last one is known as such.
        if self.buf.len() >= SNAPSHOT_CHUNK {
            self.send(false)?;
        }
        let n = data.len().min(SNAPSHOT_CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// etcd's text for an active alarm (the protobuf text form of its `AlarmMember`, trailing
/// space included), as Status lists it in `errors`.
fn alarm_text(a: api::AlarmMember) -> String {
    format!("memberID:{} alarm:{} ", a.member_id, a.alarm.name())
}

/// The major and minor version of a downgrade target, parsed as etcd does: a semantic version
/// (`3.4.0`, `3.4.1-rc.0+meta`) or `major.minor`; `None` when it is neither.
fn downgrade_target(version: &str) -> Option<(i64, i64)> {
    fn semver(v: &str) -> Option<(i64, i64)> {
        let v = v.split_once('+').map_or(v, |(v, _)| v);
        let (v, pre) = v.split_once('-').map_or((v, None), |(v, p)| (v, Some(p)));
        if let Some(pre) = pre {
            let valid = pre.split('.').all(|id| {
                !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
            if !valid {
                return None;
            }
        }
        let parts: Vec<&str> = v.split('.').collect();
        let [major, minor, patch] = parts.as_slice() else {
            return None;
        };
        patch.parse::<i64>().ok()?;
        Some((major.parse().ok()?, minor.parse().ok()?))
    }
    semver(version).or_else(|| semver(&format!("{version}.0")))
}

impl Api {
    /// The root role check of Hash, HashKV, Snapshot and Defragment. etcd answers these with the
    /// auth store's own error, not its gRPC mapping: code Unknown, "auth: ..." messages.
    fn check_admin_unmapped<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let info = Self::local_identity(self.caller(request)?);
        self.node
            .store
            .check_admin(&info)
            .map_err(|e| Status::unknown(e.to_string()))
    }

    /// With auth on, the caller must be a user (etcd's `requireAuthInfo`).
    fn require_user<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let (enabled, _) = self.node.store.auth_status();
        if enabled && self.caller(request)?.is_none() {
            return Err(ServerError::UserEmpty.into());
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl Maintenance for Api {
    type SnapshotStream =
        tonic::codegen::tokio_stream::wrappers::ReceiverStream<Result<SnapshotResponse, Status>>;

    #[tracing::instrument(level = "debug", skip_all)]
    async fn alarm(
        &self,
        request: Request<AlarmRequest>,
    ) -> Result<Response<AlarmResponse>, Status> {
        let req = convert::alarm_request(*request.get_ref())?;
        match req.action {
            AlarmAction::Get => self.require_user(&request)?,
            AlarmAction::Activate | AlarmAction::Deactivate => {
                self.check_cluster_admin(&request)?
            }
        }
        let caller = self.caller(&request)?;
        // Through raft even to list, as etcd does: the answer is linearizable.
        match self.propose(caller, api::Request::Alarm(req)).await? {
            api::Response::Alarm(resp) => Ok(Response::new(AlarmResponse {
                header: self.current_header(),
                alarms: resp.alarms.into_iter().map(convert::alarm_member).collect(),
            })),
            other => Err(error::unexpected(other)),
        }
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let status = self.node.store.status();
        let raft = self.node.raft_status();
        let db_size_in_use = self.node.store.db_size_in_use().unwrap_or(status.db_size);
        let mut errors = Vec::new();
        if raft.leader == 0 {
            errors.push("etcdserver: no leader".to_string());
        }
        errors.extend(status.alarms.iter().copied().map(alarm_text));
        if status.unsafe_reproduce_etcd_11651 {
            errors.push("FAULT SWITCH ON: unsafe-reproduce-etcd-11651".to_string());
        }
        if self.auth_status_fails() {
            errors.push("TEST FAULT ON: unsafe-test-fail-auth-status-if".to_string());
        }
        Ok(Response::new(StatusResponse {
            header: self.header(status.revision),
            version: VERSION.to_string(),
            db_size: status.db_size as i64,
            leader: raft.leader,
            raft_index: raft.committed_index,
            raft_term: raft.term,
            raft_applied_index: raft.applied_index,
            errors,
            db_size_in_use: db_size_in_use as i64,
            is_learner: raft.is_learner,
        }))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn defragment(
        &self,
        request: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        self.check_admin_unmapped(&request)?;
        let store = self.node.store.clone();
        let patience = self.node.request_timeout();
        tokio::task::spawn_blocking(move || store.defragment(patience))
            .await
            .map_err(|e| Status::internal(format!("defragment: {e}")))??;
        // etcd's answer carries no header.
        Ok(Response::new(DefragmentResponse { header: None }))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn hash(&self, request: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        self.check_admin_unmapped(&request)?;
        let store = self.node.store.clone();
        let (hash, revision) = tokio::task::spawn_blocking(move || store.hash())
            .await
            .map_err(|e| Status::internal(format!("hash: {e}")))??;
        Ok(Response::new(HashResponse {
            header: self.header(revision),
            hash,
        }))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn hash_kv(
        &self,
        request: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        self.check_admin_unmapped(&request)?;
        let revision = request.into_inner().revision;
        let store = self.node.store.clone();
        let hash = tokio::task::spawn_blocking(move || store.hash_kv(revision))
            .await
            .map_err(|e| Status::internal(format!("hash_kv: {e}")))??;
        Ok(Response::new(HashKvResponse {
            header: self.current_header(),
            hash: hash.hash,
            compact_revision: hash.compact_revision,
            hash_revision: hash.hash_revision,
        }))
    }

    async fn snapshot(
        &self,
        request: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        self.check_admin_unmapped(&request)?;
        let store = self.node.store.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(SNAPSHOT_CHUNKS_IN_FLIGHT);
        let header = self.current_header();
        tokio::task::spawn_blocking(move || {
            // Off the async threads: reading the size in use opens a write transaction, which
            // waits for an apply in progress.
            let mut out = Chunks {
                tx,
                buf: Vec::with_capacity(SNAPSHOT_CHUNK),
                header,
                expected: store.db_size_in_use().unwrap_or(0),
                sent: 0,
            };
            let mut sealed = crate::snapshot::Sealer::new(&mut out);
            let written = store
                .write_snapshot(&mut sealed)
                .and_then(|meta| Ok((meta, sealed.seal()?)));
            match written {
                Ok((meta, out)) => {
                    if out.finish().is_ok() {
                        tracing::info!(
                            applied_index = meta.applied.index,
                            bytes = out.sent,
                            "sent snapshot"
                        );
                    }
                }
                Err(e) => {
                    // The client may have gone away, which is also why writing failed.
                    tracing::warn!(error = %e, bytes = out.sent, "snapshot not sent");
                    let _ = out
                        .tx
                        .blocking_send(Err(Status::internal(format!("etcdserver: {e}"))));
                }
            }
        });
        Ok(Response::new(
            tonic::codegen::tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn move_leader(
        &self,
        request: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        self.check_cluster_admin(&request)?;
        let target = request.into_inner().target_id;
        self.node
            .move_leader(target)
            .await
            .map_err(error::node_status)?;
        Ok(Response::new(MoveLeaderResponse {
            header: self.current_header(),
        }))
    }

    /// Mend cannot run a cluster at an older etcd version, so it answers as etcd 3.5 answers a
    /// downgrade it cannot make: a target it cannot reach is invalid, and with no downgrade
    /// ever in progress there is none to cancel.
    #[tracing::instrument(level = "debug", skip_all)]
    async fn downgrade(
        &self,
        request: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        self.check_cluster_admin(&request)?;
        let req = request.into_inner();
        match DowngradeAction::try_from(req.action) {
            Ok(DowngradeAction::Validate | DowngradeAction::Enable) => {
                downgrade_target(&req.version).ok_or(ServerError::WrongDowngradeVersionFormat)?;
                // As etcd: the answer reflects the cluster as of a linearizable read.
                self.read_index().await?;
                Err(ServerError::InvalidDowngradeTargetVersion.into())
            }
            Ok(DowngradeAction::Cancel) => {
                self.read_index().await?;
                Err(ServerError::NoInflightDowngrade.into())
            }
            // etcd's ErrUnknownMethod, which its error table does not map.
            Err(_) => Err(ServerError::Unknown("etcdserver: unknown method".into()).into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downgrade_targets_parse_as_etcd_parses_them() {
        assert_eq!(downgrade_target("3.4"), Some((3, 4)));
        assert_eq!(downgrade_target("3.4.0"), Some((3, 4)));
        assert_eq!(downgrade_target("3.4.1-rc.0+build.5"), Some((3, 4)));
        for bad in ["", "3", "three.four", "3.4.0.1", "3.4-", "v3.4"] {
            assert_eq!(downgrade_target(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn alarms_read_as_in_etcd_status() {
        let a = api::AlarmMember {
            member_id: 13668033151171901709,
            alarm: api::AlarmType::NoSpace,
        };
        assert_eq!(
            alarm_text(a),
            "memberID:13668033151171901709 alarm:NOSPACE "
        );
    }
}
