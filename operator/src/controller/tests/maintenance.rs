//! Scheduled defragmentation against the mocked API server: a due pass defragments one member
//! per reconcile, followers first and the leader last, records where it stands in the status
//! (so a restarted operator goes on with the members left) and tells each member in an Event;
//! a pass due while the members diverged waits and says why.

use std::sync::atomic::Ordering;

use http::Method;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{Timestamp, ToSpan};
use serde_json::Value;

use super::super::Context;
use super::super::fixtures::{ApiServerVerifier, FakeMembers, cluster, observation};
use super::{Applied, EVENTS, first_reconcile, reconcile_in_time, reconciled};
use crate::detector::Round;

/// A cluster as a first reconcile left it, defragmented every minute, with a pass due (the
/// last scheduled time recorded is two minutes old), and members answering as `round`.
async fn due(
    round: [crate::detector::Observation; 3],
) -> (
    Applied,
    crds::StorageCluster,
    std::sync::Arc<Context>,
    ApiServerVerifier,
    std::sync::Arc<FakeMembers>,
) {
    let applied = first_reconcile().await;
    let mut running = cluster("demo", 3);
    running.spec.defragmentation = Some(crds::Defragmentation {
        schedule: "* * * * *".into(),
    });
    let mut status: crds::StorageClusterStatus =
        serde_json::from_value(applied.status.clone()).expect("status");
    status.defragmentation = Some(crds::DefragmentationStatus {
        last_schedule_time: Some(Time(Timestamp::now() - 2.minutes())),
        ..Default::default()
    });
    running.status = Some(status);
    let (ctx, verifier, members) = Context::test();
    members.auth_enabled.store(true, Ordering::SeqCst);
    *members.round.lock().expect("round") = Round {
        members: round.to_vec(),
    };
    (applied, running, ctx, verifier, members)
}

/// The next Event: its reason, type and action are as given; returns its note.
async fn event(verifier: &mut ApiServerVerifier, reason: &str, type_: &str) -> String {
    let seen = verifier.expect(Method::POST, EVENTS).await;
    assert_eq!(seen.body["reason"], reason, "{}", seen.body);
    assert_eq!(seen.body["type"], type_);
    assert_eq!(seen.body["action"], "Defragment");
    let note = seen.body["note"].as_str().unwrap_or_default().to_string();
    seen.echo();
    note
}

#[tokio::test]
async fn a_due_pass_defragments_one_member_per_reconcile_followers_first_and_the_leader_last() {
    let (applied, mut running, ctx, mut verifier, members) = due([
        observation(0x11, false, 2),
        observation(0x22, false, 2),
        observation(0x33, true, 2),
    ])
    .await;
    let mut statuses = Vec::new();
    let mut notes = Vec::new();
    // Each reconcile after the first runs a pass later, from what the status recorded (as an
    // operator restarted meanwhile would).
    for (i, expected) in [
        &["DefragmentationStarted", "MemberDefragmented"][..],
        &["MemberDefragmented"],
        &["MemberDefragmented", "Defragmented"],
    ]
    .into_iter()
    .enumerate()
    {
        if let Some(status) = statuses.last() {
            running.status = Some(
                serde_json::from_value::<crds::StorageClusterStatus>(Value::clone(status))
                    .expect("status"),
            );
        }
        ctx.healers.lock().expect("healers").clear();
        let reads = applied.clone();
        let server = tokio::spawn(async move {
            verifier.reads(&reads).await;
            let status = verifier.status().await;
            let mut seen = Vec::new();
            for reason in expected {
                seen.push(event(&mut verifier, reason, "Normal").await);
            }
            (status, seen, verifier)
        });
        reconcile_in_time(running.clone(), &ctx)
            .await
            .expect("reconcile");
        let (status, seen, back) = server.await.expect("scenario");
        verifier = back;
        if i == 0 {
            assert!(seen[0].contains("followers first"), "{seen:?}");
            assert_eq!(status["defragmentation"]["active"], true);
            assert_eq!(
                status["defragmentation"]["defragmented"],
                serde_json::json!(["demo-0"])
            );
            assert!(status["defragmentation"]["nextScheduleTime"].is_string());
        }
        statuses.push(status);
        notes.extend(seen);
    }
    drop(ctx);
    verifier.no_more_requests().await;
    assert_eq!(
        *members.calls.lock().expect("calls"),
        [
            "Defragment http://demo-0.demo-peer.default.svc:2379",
            "Defragment http://demo-1.demo-peer.default.svc:2379",
            "Defragment http://demo-2.demo-peer.default.svc:2379",
        ],
        "the leader, demo-2, last"
    );
    assert!(notes[1].starts_with("defragmented demo-0"), "{notes:?}");
    assert!(
        notes[4].ends_with("in this order: demo-0, demo-1, demo-2"),
        "{notes:?}"
    );
    let recorded = &statuses[2]["defragmentation"];
    assert_eq!(recorded["active"], false);
    assert!(recorded["lastSuccessfulTime"].is_string(), "{recorded}");
}

#[tokio::test]
async fn a_pass_due_while_the_members_diverged_waits_and_says_why() {
    let (applied, mut running, ctx, mut verifier, members) = due([
        observation(0x11, true, 9),
        observation(0x22, false, 8),
        observation(0x33, false, 8),
    ])
    .await;
    running.spec.healing.consecutive_probes = 1;
    running.spec.healing.mode = crds::HealingMode::ObserveOnly;
    let server = tokio::spawn(async move {
        verifier.reads(&applied).await;
        let status = verifier.status().await;
        event(&mut verifier, "DefragmentationStarted", "Normal").await;
        let waits = event(&mut verifier, "DefragmentationWaiting", "Warning").await;
        ((status, waits), verifier)
    });
    let (status, waits) = reconciled(running, ctx, server).await;
    assert!(
        waits.contains("diverged") && waits.contains("AuthRevision"),
        "{waits}"
    );
    assert_eq!(status["phase"], "Diverged");
    assert_eq!(status["defragmentation"]["active"], true);
    assert!(status["defragmentation"]["waiting"].is_string());
    assert!(
        members.calls.lock().expect("calls").is_empty(),
        "no member was defragmented"
    );
}
