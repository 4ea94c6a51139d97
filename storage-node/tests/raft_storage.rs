//! The raft storage on real files: openraft's conformance suite against [`LogStore`] and
//! [`StateMachine`], the log surviving a reopen, commands applied through openraft's interface
//! reaching their waiters, snapshots moving a store's state to a fresh one, the fault switch
//! still making openraft replay auth entries, and every raft message the network will carry
//! surviving postcard.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::path::Path;
use std::sync::Arc;

use openraft::errors::{ClientWriteError, ForwardToLeader, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, StreamAppendError, StreamAppendResult,
    TransferLeaderRequest, VoteRequest, VoteResponse,
};
use openraft::storage::{IOFlushed, RaftLogStorage, RaftStateMachine};
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::type_config::TypeConfigExt;
use openraft::{EntryPayload, RaftLogReader, RaftSnapshotBuilder, StorageError};
use serde::Serialize;
use serde::de::DeserializeOwned;
use storage_node::api::{Command, Request, RequestHeader, Response};
use storage_node::entry::Member;
use storage_node::raft::{
    Entry, Listeners, LogId, LogStore, Membership, SnapshotMeta, StateMachine, StoredMembership,
    TypeConfig, Vote, Waiters,
};
use storage_node::{Outcome, Store, StoreConfig};
use tempfile::TempDir;

/// A fresh log store and state machine on one temporary data directory, as a member has them.
struct TempStores;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for TempStores {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = LogStore::open(dir.path()).expect("open raft log");
        let sm = state_machine(dir.path(), StoreConfig::default()).0;
        Ok((dir, log, sm))
    }
}

fn state_machine(dir: &Path, config: StoreConfig) -> (StateMachine, Arc<Store>, Arc<Waiters>) {
    let store = Arc::new(Store::open(dir, config).expect("open store"));
    let listeners = Listeners::new(&store);
    let waiters = listeners.waiters.clone();
    let sm = StateMachine::new(store.clone(), listeners);
    (sm, store, waiters)
}

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new_term_index(term, index)
}

fn member(id: u64) -> Member {
    Member {
        name: format!("m{id}"),
        peer_urls: vec![format!("http://127.0.0.1:{}", 2380 + id)],
        client_urls: vec![format!("http://127.0.0.1:{}", 2379 + id)],
    }
}

fn membership(configs: &[&[u64]], learners: &[u64]) -> Membership {
    let configs: Vec<BTreeSet<u64>> = configs
        .iter()
        .map(|c| c.iter().copied().collect())
        .collect();
    let nodes: BTreeMap<u64, Member> = configs
        .iter()
        .flatten()
        .chain(learners)
        .map(|&id| (id, member(id)))
        .collect();
    Membership::new(configs, nodes).expect("valid membership")
}

fn membership_entry(term: u64, index: u64, m: Membership) -> Entry {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Membership(m),
    }
}

fn blank(term: u64, index: u64) -> Entry {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Blank,
    }
}

fn command(term: u64, index: u64, id: u64, request: Request) -> Entry {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(Command {
            header: RequestHeader {
                id,
                ..Default::default()
            },
            request,
        }),
    }
}

/// Appends and waits for openraft's flush notification, as openraft's log IO does.
async fn append(log: &mut LogStore, entries: Vec<Entry>) {
    let (tx, rx) = TypeConfig::oneshot();
    log.append(entries, IOFlushed::signal(tx)).await.unwrap();
    rx.await.expect("callback called").expect("flushed");
}

/// Applies `entries` as one stream with no responders (the suite's way of calling apply).
async fn apply(sm: &mut StateMachine, entries: Vec<Entry>) {
    let items = entries.into_iter().map(|e| Ok((e, None)));
    sm.apply(futures_util::stream::iter(items)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_store_and_state_machine_pass_openraft_conformance_suite() {
    Suite::test_all(TempStores).await.unwrap();
}

#[tokio::test]
async fn reopened_log_keeps_vote_committed_purged_and_entries() {
    let dir = tempfile::tempdir().unwrap();
    let vote = Vote::new_committed(3, 2);
    let entries = vec![
        membership_entry(0, 0, membership(&[&[1, 2, 3]], &[])),
        blank(1, 1),
        command(1, 2, 7, common::put("a", "1")),
        command(1, 3, 8, common::put("b", "2")),
        command(1, 4, 9, common::put("c", "3")),
    ];
    {
        let mut log = LogStore::open(dir.path()).unwrap();
        log.save_vote(&vote).await.unwrap();
        append(&mut log, entries.clone()).await;
        log.save_committed(Some(log_id(1, 3))).await.unwrap();
        log.purge(log_id(0, 0)).await.unwrap();
        log.truncate_after(Some(log_id(1, 3))).await.unwrap();
    }
    let kept = entries[1..4].to_vec();

    let mut log = LogStore::open(dir.path()).unwrap();
    assert_eq!(log.read_vote().await.unwrap(), Some(vote));
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 3)));
    assert_eq!(log.try_get_log_entries(..).await.unwrap(), kept);
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(0, 0)));
    assert_eq!(state.last_log_id, Some(log_id(1, 3)));
    drop(log);

    let contents = LogStore::read_all(dir.path()).unwrap();
    assert_eq!(contents.vote, Some(vote));
    assert_eq!(contents.committed, Some(log_id(1, 3)));
    assert_eq!(contents.last_purged, Some(log_id(0, 0)));
    assert_eq!(contents.entries, kept);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applied_puts_reach_their_waiters_and_a_snapshot_rebuilds_the_same_store() {
    let dir = tempfile::tempdir().unwrap();
    let (mut sm, store, waiters) = state_machine(dir.path(), StoreConfig::default());
    let voters = membership(&[&[1, 2, 3]], &[4]);
    let mut entries = vec![membership_entry(0, 0, voters.clone()), blank(1, 1)];
    let mut receivers = Vec::new();
    for id in 1..=5u64 {
        receivers.push((id, waiters.register(id)));
        let key = format!("k{id}");
        entries.push(command(1, id + 1, id, common::put(&key, "v")));
    }
    apply(&mut sm, entries).await;

    for (id, rx) in receivers {
        match rx.await.expect("outcome delivered") {
            Outcome::Command {
                response: Ok(Response::Put(_)),
                events,
            } => assert_eq!(events[0].kv.key, format!("k{id}").into_bytes()),
            other => panic!("waiter {id} got {other:?}"),
        }
    }
    assert_eq!(waiters.pending(), 0);
    let applied = sm.applied_state().await.unwrap();
    assert_eq!(
        applied,
        (
            Some(log_id(1, 6)),
            StoredMembership::new(Some(log_id(0, 0)), voters)
        )
    );

    let snap = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    assert_eq!(snap.meta.last_log_id, Some(log_id(1, 6)));
    assert_eq!(
        sm.get_current_snapshot().await.unwrap().map(|s| s.meta),
        Some(snap.meta.clone())
    );

    let fresh_dir = tempfile::tempdir().unwrap();
    let (mut fresh, fresh_store, _) = state_machine(fresh_dir.path(), StoreConfig::default());
    fresh
        .install_snapshot(&snap.meta, snap.snapshot)
        .await
        .unwrap();
    assert_eq!(fresh.applied_state().await.unwrap(), applied);
    assert_eq!(fresh_store.hash_kv(0).unwrap(), store.hash_kv(0).unwrap());
    let (a, b) = (store.status(), fresh_store.status());
    assert_eq!(
        (a.revision, a.key_count, a.applied),
        (b.revision, b.key_count, b.applied)
    );
    let current = fresh.get_current_snapshot().await.unwrap().expect("kept");
    assert_eq!(current.meta, snap.meta);
}

#[tokio::test]
async fn an_installed_snapshot_whose_meta_disagrees_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut sm, _, _) = state_machine(dir.path(), StoreConfig::default());
    apply(&mut sm, vec![blank(1, 0), blank(1, 1)]).await;
    let snap = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let lying = SnapshotMeta {
        last_log_id: Some(log_id(1, 9)),
        last_membership: snap.meta.last_membership.clone(),
    };
    let fresh_dir = tempfile::tempdir().unwrap();
    let (mut fresh, _, _) = state_machine(fresh_dir.path(), StoreConfig::default());
    let err = fresh
        .install_snapshot(&lying, snap.snapshot)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
    assert!(fresh.get_current_snapshot().await.unwrap().is_none());
}

#[tokio::test]
async fn fault_switch_leaves_auth_entries_for_openraft_to_apply_again() {
    for (switch, applied_after_restart) in [(false, log_id(1, 2)), (true, log_id(1, 1))] {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig {
            unsafe_reproduce_etcd_11651: switch,
            ..StoreConfig::default()
        };
        {
            let (mut sm, _, _) = state_machine(dir.path(), config.clone());
            apply(
                &mut sm,
                vec![
                    blank(1, 0),
                    command(1, 1, 1, common::put("k", "v")),
                    command(1, 2, 2, common::user_add("root")),
                ],
            )
            .await;
            assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(1, 2)));
        }
        let (mut sm, _, _) = state_machine(dir.path(), config);
        assert_eq!(
            sm.applied_state().await.unwrap().0,
            Some(applied_after_restart),
            "fault switch {switch}"
        );
    }
}

fn round_trip<T: Serialize + DeserializeOwned>(value: &T) -> T {
    let bytes = postcard::to_stdvec(value).expect("encode");
    postcard::from_bytes(&bytes).expect("decode")
}

fn assert_round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(value: T) {
    assert_eq!(round_trip(&value), value);
}

#[test]
fn raft_messages_survive_postcard() {
    let joint = membership(&[&[1, 2, 3], &[3, 4]], &[5]);
    let entries = vec![
        membership_entry(0, 0, joint.clone()),
        blank(1, 1),
        command(1, 2, 42, common::put("k", "v")),
        command(1, 3, 43, common::user_add("root")),
    ];
    for entry in &entries {
        assert_round_trip(entry.clone());
    }
    assert_round_trip(Vote::new(2, 1));
    assert_round_trip(Vote::new_committed(2, 1));

    let request = AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(2, 1),
        prev_log_id: Some(log_id(1, 0)),
        entries: entries.clone(),
        leader_commit: Some(log_id(1, 1)),
    };
    let back = round_trip(&request);
    assert_eq!(
        (
            back.vote,
            back.prev_log_id,
            back.entries,
            back.leader_commit
        ),
        (
            request.vote,
            request.prev_log_id,
            request.entries,
            request.leader_commit
        )
    );
    for response in [
        AppendEntriesResponse::Success,
        AppendEntriesResponse::PartialSuccess(Some(log_id(1, 2))),
        AppendEntriesResponse::Conflict,
        AppendEntriesResponse::HigherVote(Vote::new_committed(3, 2)),
    ] {
        assert_round_trip::<AppendEntriesResponse<TypeConfig>>(response);
    }
    let results: [StreamAppendResult<TypeConfig>; 3] = [
        Ok(Some(log_id(1, 3))),
        Err(StreamAppendError::Conflict(log_id(1, 2))),
        Err(StreamAppendError::HigherVote(Vote::new(4, 3))),
    ];
    for result in results {
        assert_round_trip(result);
    }

    let mut vote_request = VoteRequest::<TypeConfig>::new(Vote::new(3, 2), Some(log_id(1, 3)));
    vote_request.leadership_transfer = true;
    assert_round_trip(vote_request);
    assert_round_trip(VoteResponse::<TypeConfig>::new(
        Vote::new_committed(3, 2),
        Some(log_id(1, 3)),
        true,
    ));
    assert_round_trip(TransferLeaderRequest::<TypeConfig>::new(
        Vote::new_committed(3, 2),
        4,
        Some(log_id(3, 9)),
    ));
    assert_round_trip(SnapshotMeta {
        last_log_id: Some(log_id(3, 9)),
        last_membership: StoredMembership::new(Some(log_id(0, 0)), joint),
    });
    let forward: RaftError<TypeConfig, ClientWriteError<TypeConfig>> = RaftError::APIError(
        ClientWriteError::ForwardToLeader(ForwardToLeader::new(2, member(2))),
    );
    assert_round_trip(forward);
}
