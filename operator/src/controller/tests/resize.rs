//! Resizing against the mocked API server: a grown `spec.replicas` plans one new member, whose
//! volume claim the next pass makes, and the member table takes it in; a shrink retires the
//! removed member (its pod gone, its claim deleted under `retentionPolicy: Delete`, by UID) and
//! the table lets it go, so nothing of it is made again.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use http::Method;
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

use super::super::Context;
use super::super::fixtures::{cluster, observation};
use super::{EVENTS, NS, first_reconcile, reconcile_in_time};
use crate::detector::{Observation, Round};
use crate::planner::{Listed, Plan, Step};

/// The next Event: its reason, and that it tells a resize; returns its note.
async fn scale_event(
    verifier: &mut super::super::fixtures::ApiServerVerifier,
    reason: &str,
) -> String {
    let seen = verifier.expect(Method::POST, EVENTS).await;
    assert_eq!(seen.body["reason"], reason, "{}", seen.body);
    assert_eq!(seen.body["action"], "Scale");
    let note = seen.body["note"].as_str().unwrap_or_default().to_string();
    seen.echo();
    note
}

fn names(status: &Value) -> Vec<String> {
    status["members"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter_map(|m| m["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_grown_spec_plans_one_new_member_and_the_next_pass_makes_its_claim() {
    let applied = first_reconcile().await;
    let mut running = cluster("demo", 5);
    running.status = Some(serde_json::from_value(applied.status.clone()).expect("status"));
    let (ctx, mut verifier, members) = Context::test();
    members.auth_enabled.store(true, Ordering::SeqCst);
    *members.round.lock().expect("round") = Round {
        members: [0x11, 0x22, 0x33]
            .map(|id| observation(id, id == 0x11, 5))
            .to_vec(),
    };
    let reads = applied.clone();
    let server = tokio::spawn(async move {
        verifier.reads(&reads).await;
        let status = verifier.status().await;
        let note = scale_event(&mut verifier, "ScaleStarted").await;
        (status, note, verifier)
    });
    reconcile_in_time(running.clone(), &ctx)
        .await
        .expect("reconcile");
    let (status, note, mut verifier) = server.await.expect("scenario");
    assert!(
        note.starts_with("adding demo-3 (3 members, spec.replicas 5)"),
        "{note}"
    );
    assert_eq!(status["phase"], "Scaling");
    assert_eq!(names(&status), ["demo-0", "demo-1", "demo-2"]);
    assert_eq!(
        status["healing"]["progress"]["steps"][0]["action"],
        "Create"
    );
    assert!(members.calls.lock().expect("calls").is_empty());

    // The next pass makes the new member's claim; the table takes it in, not yet answering.
    running.status = Some(serde_json::from_value(status).expect("status"));
    for cluster in ctx.healers.lock().expect("healers").values_mut() {
        cluster.last_pass = None;
    }
    let server = tokio::spawn(async move {
        verifier.reads(&applied).await;
        verifier
            .expect(
                Method::GET,
                &format!("{NS}/persistentvolumeclaims/data-demo-3"),
            )
            .await
            .error(404, "NotFound");
        let claim = verifier
            .apply(
                &format!("{NS}/persistentvolumeclaims/data-demo-3"),
                "PersistentVolumeClaim",
            )
            .await;
        let status = verifier.status().await;
        let note = scale_event(&mut verifier, "ScaleStep").await;
        ((claim, status, note), verifier)
    });
    reconcile_in_time(running, &ctx).await.expect("reconcile");
    drop(ctx);
    let ((claim, status, note), verifier) = server.await.expect("scenario");
    verifier.no_more_requests().await;
    assert_eq!(claim["metadata"]["labels"]["mend.dev/member"], "demo-3");
    assert!(note.contains("made the place of demo-3"), "{note}");
    assert_eq!(names(&status), ["demo-0", "demo-1", "demo-2", "demo-3"]);
    assert_eq!(status["members"][3]["healthy"], false);
    assert_eq!(status["healing"]["progress"]["next"], 1);
}

#[tokio::test]
async fn a_shrink_retires_the_removed_member_and_deletes_its_claim_under_the_delete_policy() {
    let applied = first_reconcile().await;
    let mut running = cluster("demo", 1);
    running.spec.storage.retention_policy = crds::RetentionPolicy::Delete;
    let mut status: crds::StorageClusterStatus =
        serde_json::from_value(applied.status.clone()).expect("status");
    let plan = Plan {
        source: 0x11,
        steps: vec![Step::Remove { member: 0x33 }, Step::Retire { member: 0x33 }],
    };
    let ids = BTreeMap::from([
        (0x11, "demo-0".to_string()),
        (0x22, "demo-1".to_string()),
        (0x33, "demo-2".to_string()),
    ]);
    let progress = crate::executor::Progress {
        next: 1,
        ..crate::executor::Progress::new(plan, ids, Timestamp::now().as_second())
    };
    status.healing = Some(crds::HealingStatus {
        progress: Some(progress.to_status()),
        ..crds::HealingStatus::default()
    });
    running.status = Some(status);
    let (ctx, mut verifier, members) = Context::test();
    members.auth_enabled.store(true, Ordering::SeqCst);
    *members.round.lock().expect("round") = Round {
        members: vec![
            observation(0x11, true, 5),
            observation(0x22, false, 5),
            Observation::unreachable("demo-2", "connect: refused"),
        ],
    };
    *members.listed.lock().expect("listed") = [0x11, 0x22]
        .map(|id| Listed {
            id,
            peer_urls: vec![format!(
                "http://demo-{}.demo-peer.default.svc:2380",
                id / 0x11 - 1
            )],
            is_learner: false,
        })
        .to_vec();
    // demo-2 was removed and stopped: its pod is gone, its claim is still there.
    let mut live = applied.clone();
    live.children
        .retain(|(list, o)| !(*list == "pods" && o["metadata"]["name"] == "demo-2"));
    let mut claim = applied
        .items("persistentvolumeclaims")
        .into_iter()
        .find(|c| c["metadata"]["name"] == "data-demo-2")
        .expect("claim");
    claim["metadata"]["uid"] = json!("uid-data-demo-2");
    let server = tokio::spawn(async move {
        verifier.reads(&live).await;
        // Stopped (checked right before), out of the member list: retired.
        for _ in 0..2 {
            verifier
                .expect(Method::GET, &format!("{NS}/pods/demo-2"))
                .await
                .error(404, "NotFound");
        }
        verifier
            .expect(
                Method::GET,
                &format!("{NS}/persistentvolumeclaims/data-demo-2"),
            )
            .await
            .ok(&claim);
        let deleted = verifier
            .expect(
                Method::DELETE,
                &format!("{NS}/persistentvolumeclaims/data-demo-2"),
            )
            .await;
        let precondition = deleted.body["preconditions"]["uid"].clone();
        deleted.ok(&claim);
        let status = verifier.status().await;
        let step = scale_event(&mut verifier, "ScaleStep").await;
        let scaled = scale_event(&mut verifier, "Scaled").await;
        ((precondition, status, step, scaled), verifier)
    });
    reconcile_in_time(running, &ctx).await.expect("reconcile");
    drop(ctx);
    let ((precondition, status, step, _), verifier) = server.await.expect("scenario");
    verifier.no_more_requests().await;
    assert_eq!(precondition, "uid-data-demo-2", "only the claim read");
    assert!(
        step.contains("retired demo-2: its volume claim data-demo-2 was deleted"),
        "{step}"
    );
    assert_eq!(names(&status), ["demo-0", "demo-1"], "the table lets it go");
    assert!(status["healing"]["progress"].is_null(), "{status}");
}

#[tokio::test]
async fn a_grown_spec_with_a_member_down_waits_and_says_why() {
    let applied = first_reconcile().await;
    let mut running = cluster("demo", 5);
    running.status = Some(serde_json::from_value(applied.status.clone()).expect("status"));
    let (ctx, mut verifier, members) = Context::test();
    members.auth_enabled.store(true, Ordering::SeqCst);
    *members.round.lock().expect("round") = Round {
        members: vec![
            observation(0x11, true, 5),
            observation(0x22, false, 5),
            Observation::unreachable("demo-2", "connect: refused"),
        ],
    };
    let server = tokio::spawn(async move {
        verifier.reads(&applied).await;
        let status = verifier.status().await;
        (status, verifier)
    });
    let status = super::reconciled(running, ctx, server).await;
    let progressing = super::condition(&status, "Progressing");
    assert_eq!(progressing["status"], "False");
    assert_eq!(progressing["reason"], "ScaleWaiting");
    assert_eq!(
        progressing["message"],
        "spec.replicas is 5 and the cluster has 3 members; resizing waits: demo-2 does not answer"
    );
    assert!(status["healing"]["progress"].is_null(), "nothing planned");
}
