//! The raft storage on real files: the log surviving a reopen, and every raft message the
//! network will carry surviving postcard.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;

use openraft::errors::{ClientWriteError, ForwardToLeader, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, StreamAppendError, StreamAppendResult,
    TransferLeaderRequest, VoteRequest, VoteResponse,
};
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::type_config::TypeConfigExt;
use openraft::{EntryPayload, RaftLogReader};
use serde::Serialize;
use serde::de::DeserializeOwned;
use storage_node::api::{Command, Request, RequestHeader};
use storage_node::entry::Member;
use storage_node::raft::{
    Entry, LogId, LogStore, Membership, SnapshotMeta, StoredMembership, TypeConfig, Vote,
};

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
