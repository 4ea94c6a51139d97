//! Rolling updates against the mocked API server: a changed member template (here the image)
//! restarts one member per reconcile by evicting its pod, followers first; the leader's turn
//! first moves leadership off it, and only a later pass, where it no longer leads, evicts it.
//! The status shows each member's running and desired template revision.

use std::sync::atomic::Ordering;

use http::Method;
use serde_json::{Value, json};

use super::super::Context;
use super::super::fixtures::{ApiServerVerifier, FakeMembers, cluster, observation};
use super::{Applied, EVENTS, NS, first_reconcile, reconciled};
use crate::detector::Round;
use crate::platform::kube::resources;

/// The cluster after a first reconcile, its image changed since; its pods as the first
/// reconcile made them (on the old image), Ready, except those named in `current`, made from
/// the changed spec.
async fn changed(
    current: &[&str],
) -> (
    Applied,
    crds::StorageCluster,
    Vec<Value>,
    std::sync::Arc<Context>,
    ApiServerVerifier,
    std::sync::Arc<FakeMembers>,
) {
    let applied = first_reconcile().await;
    let mut running = cluster("demo", 3);
    running.spec.image = "registry.example/storage-node:next".into();
    running.status = Some(serde_json::from_value(applied.status.clone()).expect("status"));
    let pods = applied
        .items("pods")
        .into_iter()
        .map(|mut pod| {
            let name = pod["metadata"]["name"].as_str().expect("name").to_string();
            if current.contains(&name.as_str()) {
                pod = serde_json::to_value(resources::member_pod(
                    &running,
                    &name,
                    resources::ClusterState::New,
                ))
                .expect("pod");
            }
            pod["metadata"]["uid"] = json!(format!("uid-{name}"));
            pod["status"] = json!({ "conditions": [{ "type": "Ready", "status": "True" }] });
            pod
        })
        .collect();
    let (ctx, verifier, members) = Context::test();
    members.auth_enabled.store(true, Ordering::SeqCst);
    (applied, running, pods, ctx, verifier, members)
}

/// Every member answering, `leader` (an ID) leading.
fn answering(members: &FakeMembers, leader: u64) {
    *members.round.lock().expect("round") = Round {
        members: [0x11, 0x22, 0x33]
            .map(|id| observation(id, id == leader, 5))
            .to_vec(),
    };
}

/// The next Event: its reason and action; returns its note.
async fn event(verifier: &mut ApiServerVerifier, reason: &str, action: &str) -> String {
    let seen = verifier.expect(Method::POST, EVENTS).await;
    assert_eq!(seen.body["reason"], reason, "{}", seen.body);
    assert_eq!(seen.body["action"], action);
    let note = seen.body["note"].as_str().unwrap_or_default().to_string();
    seen.echo();
    note
}

#[tokio::test]
async fn a_changed_image_restarts_a_follower_first_by_evicting_its_pod() {
    let (applied, running, pods, ctx, mut verifier, members) = changed(&[]).await;
    answering(&members, 0x11);
    let server = tokio::spawn(async move {
        verifier.reads_with_pods(&applied, pods.clone()).await;
        let seen = verifier
            .expect(Method::POST, &format!("{NS}/pods/demo-1/eviction"))
            .await;
        assert_eq!(
            seen.body["deleteOptions"]["preconditions"]["uid"],
            "uid-demo-1"
        );
        seen.respond(
            http::StatusCode::CREATED,
            &json!({ "apiVersion": "v1", "kind": "Status", "status": "Success" }),
        );
        let note = event(&mut verifier, "MemberRestarted", "RollingUpdate").await;
        let status = verifier.status().await;
        ((note, status), verifier)
    });
    let (note, status) = reconciled(running, ctx, server).await;
    assert!(
        note.contains("restarted demo-1 on the current template"),
        "{note}"
    );
    let member = &status["members"][1];
    assert!(member["templateRevision"].is_string(), "{member}");
    assert_ne!(
        member["templateRevision"], member["desiredTemplateRevision"],
        "the status shows it runs an older template"
    );
    assert!(
        members.calls.lock().expect("calls").is_empty(),
        "no leader move"
    );
}

#[tokio::test]
async fn the_leader_hands_over_before_its_turn_and_is_restarted_once_it_follows() {
    let (applied, running, pods, ctx, mut verifier, members) = changed(&["demo-1", "demo-2"]).await;
    answering(&members, 0x11);
    let (first_reads, first_pods) = (applied.clone(), pods.clone());
    let server = tokio::spawn(async move {
        verifier.reads_with_pods(&first_reads, first_pods).await;
        let note = event(&mut verifier, "LeaderMoved", "RollingUpdate").await;
        let status = verifier.status().await;
        ((note, status), verifier)
    });
    let (note, status) = reconciled(running.clone(), ctx, server).await;
    assert_eq!(
        note,
        "moved leadership from demo-0 to demo-1 before restarting demo-0"
    );
    assert_eq!(*members.calls.lock().expect("calls"), ["MoveLeader 22"]);
    assert_eq!(
        status["members"][1]["templateRevision"],
        status["members"][1]["desiredTemplateRevision"]
    );

    // A pass later demo-1 leads: demo-0 is a follower now, and restarted.
    let (ctx, mut verifier, members) = Context::test();
    members.auth_enabled.store(true, Ordering::SeqCst);
    answering(&members, 0x22);
    let server = tokio::spawn(async move {
        verifier.reads_with_pods(&applied, pods.clone()).await;
        verifier
            .expect(Method::POST, &format!("{NS}/pods/demo-0/eviction"))
            .await
            .respond(
                http::StatusCode::CREATED,
                &json!({ "apiVersion": "v1", "kind": "Status", "status": "Success" }),
            );
        event(&mut verifier, "MemberRestarted", "RollingUpdate").await;
        verifier.status().await;
        ((), verifier)
    });
    reconciled(running, ctx, server).await;
    assert!(members.calls.lock().expect("calls").is_empty());
}
