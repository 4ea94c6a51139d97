//! Backups against the mocked API server: a backup asked for with the `mend.dev/backup`
//! annotation reads the S3 credentials Secret, snapshots a caught-up follower in the
//! background, records the attempt in `status.backup` and tells a failure in a Warning Event;
//! a backup due while the members diverged waits and says why; a directory store and a
//! restore are refused on Kubernetes as invalid specs.

use std::sync::atomic::Ordering;
use std::time::Duration;

use http::Method;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{Timestamp, ToSpan};
use serde_json::Value;

use super::super::Context;
use super::super::fixtures::{ApiServerVerifier, FakeMembers, cluster, observation};
use super::{Applied, EVENTS, NS, first_reconcile, reconcile_in_time, reconciled};
use crate::detector::Round;

const SECRET: &str = "s3-credentials";

/// A cluster as a first reconcile left it, backed up to S3 only on request (the yearly
/// schedule's last time is recorded), asked for a backup now, its members answering as
/// `round`.
async fn asked(
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
    running.spec.backup = Some(crds::Backup {
        schedule: "0 0 1 1 *".into(),
        store: crds::BackupStore {
            s3: Some(crds::S3Store {
                bucket: "backups".into(),
                endpoint: Some("http://127.0.0.1:9".into()),
                credentials_secret_ref: Some(SECRET.into()),
                ..Default::default()
            }),
            directory: None,
        },
        retention: crds::BackupRetention::default(),
    });
    running
        .metadata
        .annotations
        .get_or_insert_default()
        .insert("mend.dev/backup".into(), "2026-12-03".into());
    let mut status: crds::StorageClusterStatus =
        serde_json::from_value(applied.status.clone()).expect("status");
    status.backup = Some(crds::BackupStatus {
        last_schedule_time: Some(Time(Timestamp::now() - 2.hours())),
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

fn credentials_secret() -> Value {
    use k8s_openapi::ByteString;
    let secret = k8s_openapi::api::core::v1::Secret {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(SECRET.into()),
            namespace: Some("default".into()),
            ..Default::default()
        },
        data: Some(
            [
                ("accessKeyID".to_string(), ByteString(b"AKIA".to_vec())),
                (
                    "secretAccessKey".to_string(),
                    ByteString(b"secret".to_vec()),
                ),
            ]
            .into(),
        ),
        ..Default::default()
    };
    serde_json::to_value(secret).expect("secret json")
}

/// Waits (bounded) until the backup `ctx` runs for the cluster has ended.
async fn backup_ended(ctx: &Context) {
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let done = ctx
                .backups
                .lock()
                .expect("backups")
                .values()
                .all(|job| job.is_finished());
            if done {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(ended.is_ok(), "the backup did not end");
}

#[tokio::test]
async fn a_requested_backup_snapshots_a_follower_with_the_secrets_credentials_and_tells_a_failure()
{
    let (applied, mut running, ctx, mut verifier, members) = asked([
        observation(0x11, true, 2),
        observation(0x22, false, 2),
        observation(0x33, false, 2),
    ])
    .await;
    let reads = applied.clone();
    let server = tokio::spawn(async move {
        verifier.reads(&reads).await;
        verifier
            .expect(Method::GET, &format!("{NS}/secrets/{SECRET}"))
            .await
            .ok(&credentials_secret());
        let status = verifier.status().await;
        (status, verifier)
    });
    reconcile_in_time(running.clone(), &ctx)
        .await
        .expect("reconcile");
    let (status, mut verifier) = server.await.expect("scenario");
    assert_eq!(status["backup"]["active"], true, "{status}");
    assert_eq!(status["backup"]["lastRequest"], "2026-12-03");
    backup_ended(&ctx).await;
    assert_eq!(
        *members.calls.lock().expect("calls"),
        ["Snapshot http://demo-1.demo-peer.default.svc:2379"],
        "a follower, not the leader demo-0"
    );

    // The next pass records the failed attempt, tells it, and tries again.
    running.status = Some(serde_json::from_value(status).expect("status"));
    ctx.healers.lock().expect("healers").clear();
    let server = tokio::spawn(async move {
        verifier.reads(&applied).await;
        verifier
            .expect(Method::GET, &format!("{NS}/secrets/{SECRET}"))
            .await
            .error(404, "NotFound");
        let status = verifier.status().await;
        let seen = verifier.expect(Method::POST, EVENTS).await;
        let event = seen.body.clone();
        seen.echo();
        ((status, event), verifier)
    });
    reconcile_in_time(running.clone(), &ctx)
        .await
        .expect("reconcile");
    let ((status, event), verifier) = server.await.expect("scenario");
    assert_eq!(event["reason"], "BackupFailed");
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["action"], "Backup");
    let note = event["note"].as_str().unwrap_or_default();
    assert!(
        note.contains("take no snapshots") && note.contains("trying again"),
        "{note}"
    );
    let backup = &status["backup"];
    assert_eq!(backup["failures"], 1);
    assert_eq!(backup["active"], true);
    assert!(backup.get("lastBackup").is_none(), "{backup}");
    // The second attempt found no Secret: it fails before any member is asked.
    backup_ended(&ctx).await;
    assert_eq!(members.calls.lock().expect("calls").len(), 1);
    let job = ctx.backups.lock().expect("backups").drain().next();
    let (_, job) = job.expect("the second attempt");
    let outcome = job.await.expect("job");
    assert_eq!(
        outcome.err().as_deref(),
        Some("the S3 credentials Secret s3-credentials does not exist")
    );
    drop(ctx);
    verifier.no_more_requests().await;
}

#[tokio::test]
async fn a_backup_due_while_the_members_diverged_waits_and_says_why() {
    let (applied, mut running, ctx, mut verifier, members) = asked([
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
        let seen = verifier.expect(Method::POST, EVENTS).await;
        let event = seen.body.clone();
        seen.echo();
        ((status, event), verifier)
    });
    let (status, event) = reconciled(running, ctx, server).await;
    assert_eq!(event["reason"], "BackupWaiting");
    let note = event["note"].as_str().unwrap_or_default();
    assert!(note.contains("diverged"), "{note}");
    assert_eq!(status["phase"], "Diverged");
    assert_eq!(status["backup"]["active"], true);
    assert!(status["backup"]["waiting"].is_string());
    assert!(
        members.calls.lock().expect("calls").is_empty(),
        "no snapshot was taken"
    );
}

#[test]
fn a_directory_store_and_a_restore_are_refused_on_kubernetes() {
    let mut spec = cluster("demo", 3).spec;
    spec.backup = Some(crds::Backup {
        schedule: "@daily".into(),
        store: crds::BackupStore {
            s3: None,
            directory: Some("/backups".into()),
        },
        retention: crds::BackupRetention::default(),
    });
    let why = crate::backup::spec_problem(&spec, false).expect("refused");
    assert!(why.contains("operator local only"), "{why}");
    assert_eq!(crate::backup::spec_problem(&spec, true), None);
    spec.backup = None;
    spec.bootstrap = Some(crds::Bootstrap {
        from_backup: Some(crds::FromBackup {
            file: Some("/b.snapshot".into()),
            ..Default::default()
        }),
    });
    let why = crate::backup::spec_problem(&spec, false).expect("refused");
    assert!(why.contains("not supported on Kubernetes"), "{why}");
}
