//! One reconcile of one `StorageCluster`, read top to bottom as the procedure:
//! refuse an invalid spec, ensure the root credentials, create what is missing (except the pods
//! a heal in progress took out, and the pod of a member whose volume was lost), then, once per
//! probe interval or at once while a heal runs, one pass of the healing loop
//! ([`crate::healing::pass`]: probe, assess, decide, at most one step of the heal the status
//! records), bootstrap auth, write the status (with the heal's progress, so a restarted or newly
//! elected operator resumes it) and publish an Event for each thing the pass did.
//!
//! # A second reconcile is a no-op
//! Children are applied only when missing, or, for Services, the PodDisruptionBudget and the
//! NetworkPolicy, when their
//! [`APPLIED_HASH`](crate::platform::kube::resources::APPLIED_HASH) differs from the desired
//! object's.
//! Pods and volume claims are never re-applied: their specs are immutable where it matters
//! (flags, volume), and changing a running member is the healing loop's one-at-a-time job. The
//! status is written only when it differs from the one stored. So a reconcile of a cluster whose
//! children and members are as the last reconcile left them makes reads only: no create, no
//! patch, no Event.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use crds::{RetentionPolicy, StorageCluster, StorageClusterStatus, condition};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::finalizer::{self, Event as FinalizerEvent, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{info, instrument, warn};

use crate::detector::Observation;
use crate::executor::Progress;
use crate::healer::Healer;
use crate::healing;
use crate::platform::kube::KubePlatform;
use crate::probe::Target;
use crate::status::{self, MemberView};

use super::certificates::{self, Certificates};
use super::resources;
use super::stalls::{self, Stall};
use super::{Context, Error, FIELD_MANAGER, FINALIZER, Result};
use crate::platform::kube::tls;

/// How soon to look again at a root credentials Secret that was missing or incomplete.
const SECRET_RETRY: Action = Action::requeue(Duration::from_secs(30));

/// How long a member a rolling restart evicted may take to be Ready again before the rollout
/// is reported stalled (`RolloutStalled`).
const ROLL_LIMIT: Duration = Duration::from_secs(10 * 60);

/// How soon to look again while a heal runs (each reconcile runs at most one step of it).
const HEAL_PASS: Duration = Duration::from_secs(2);

/// Reconciles `cluster`: the entry point the Controller calls. Behind the operator's
/// finalizer: a new cluster first gets it (and nothing else; the change brings the next
/// reconcile), a live one is reconciled, a deleted one cleaned up (its data kept or deleted as
/// `spec.storage.retentionPolicy` says) before the finalizer is removed.
#[instrument(skip_all, fields(cluster = %cluster.name_any(), namespace = cluster.namespace().unwrap_or_default()))]
pub async fn reconcile(cluster: Arc<StorageCluster>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile();
    let object = ObjectRef::from_obj(cluster.as_ref());
    let api: Api<StorageCluster> =
        Api::namespaced(ctx.client.clone(), &cluster.namespace().unwrap_or_default());
    let action = finalizer(&api, FINALIZER, cluster, |event| async {
        match event {
            FinalizerEvent::Apply(cluster) => {
                let reconciler = Reconciler::new(&cluster, &ctx);
                let result = reconciler.run().await;
                if let Err(error) = &result {
                    reconciler.report_failure(error).await;
                }
                result
            }
            FinalizerEvent::Cleanup(cluster) => Reconciler::new(&cluster, &ctx).cleanup().await,
        }
    })
    .await
    .map_err(|e| match e {
        finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer(Box::new(other)),
    })?;
    ctx.succeeded(&object);
    Ok(action)
}

/// Counts the failure, tells it in a Warning Event on the cluster (`ReconcileFailed`, the error
/// as its note: a repeat of the same error joins that Event's series) and retries `cluster`
/// after a backoff that doubles with each failure in a row (conflicts and unreachable API
/// servers included).
///
/// The Controller calls this synchronously, so the Event is published by a task of its own;
/// a failure to publish it is logged and counted like any other. No condition: writing the
/// status here would race the next reconcile's status write. The stalls a user can fix
/// (spec, Secret, scheduling, volumes, refusals) are conditions, written by the reconcile.
pub fn error_policy(cluster: Arc<StorageCluster>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.failure(error.label());
    let delay = ctx.backoff(ObjectRef::from_obj(cluster.as_ref()));
    warn!(cluster = %cluster.name_any(), %error, ?delay, "reconcile failed");
    let event = Event {
        type_: EventType::Warning,
        reason: "ReconcileFailed".to_string(),
        note: Some(format!(
            "{error}; retrying with a backoff that doubles per failure in a row, up to 5 minutes"
        )),
        action: "Reconcile".to_string(),
        secondary: None,
    };
    let regarding = cluster.object_ref(&());
    tokio::spawn(async move {
        if let Err(error) = ctx.events.publish(&event, &regarding).await {
            ctx.metrics.event_failed(&event.reason);
            warn!(%error, reason = %event.reason, "publishing an Event failed");
        }
    });
    Action::requeue(delay)
}

/// The live children of one cluster, by name, and what stalls their members, if anything.
struct Live {
    pods: BTreeMap<String, ObjectMeta>,
    pvcs: BTreeMap<String, ObjectMeta>,
    services: BTreeMap<String, ObjectMeta>,
    pdbs: BTreeMap<String, ObjectMeta>,
    network_policies: BTreeMap<String, ObjectMeta>,
    /// The member pods whose Ready condition is True.
    ready: BTreeSet<String>,
    stall: Option<Stall>,
}

struct Reconciler<'a> {
    cluster: &'a StorageCluster,
    ctx: &'a Context,
    namespace: String,
}

impl<'a> Reconciler<'a> {
    fn new(cluster: &'a StorageCluster, ctx: &'a Context) -> Self {
        Reconciler {
            cluster,
            ctx,
            namespace: cluster.namespace().unwrap_or_default(),
        }
    }

    fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.ctx.client.clone(), &self.namespace)
    }

    async fn run(&self) -> Result<Action> {
        if let Some(problem) = resources::spec_problem(self.cluster) {
            return self
                .refuse("InvalidSpec", "Validate", problem, Action::await_change())
                .await;
        }
        let credentials = match self.root_credentials().await {
            // The Secret is not watched: look again after a while.
            Err(Error::Secret { name, reason }) => {
                let problem = format!("root credentials Secret {name}: {reason}");
                return self
                    .refuse(
                        "RootSecretUnusable",
                        "ReadRootSecret",
                        problem,
                        SECRET_RETRY,
                    )
                    .await;
            }
            credentials => credentials?,
        };
        let certificates = match self.certificates().await {
            // Secrets are not watched: look again after a while.
            Err(Error::Certificate {
                name,
                reason,
                waiting,
            }) => {
                let why = if waiting {
                    "CertificatesNotIssued"
                } else {
                    "CertificatesUnusable"
                };
                let problem = format!("certificate {name}: {reason}");
                return self
                    .refuse(why, "IssueCertificates", problem, SECRET_RETRY)
                    .await;
            }
            certificates => certificates?,
        };
        let live = self.live_children().await?;
        // A heal in progress (recorded in the status) owns the pods of the members it took out.
        let resumed = self
            .cluster
            .status
            .as_ref()
            .and_then(|s| s.healing.as_ref())
            .and_then(|h| h.progress.as_ref())
            .and_then(Progress::from_status);
        let held_out = resumed.as_ref().map(Progress::held_out).unwrap_or_default();
        // A member a resize removed is retired next: nothing of it is made again.
        let leaving: Vec<String> = resumed
            .as_ref()
            .map(|p| {
                p.plan
                    .steps
                    .iter()
                    .filter_map(|s| match s {
                        crate::planner::Step::Retire { member } => p.names.get(&p.current(*member)),
                        _ => None,
                    })
                    .filter(|name| held_out.contains(name))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let healing_before = resumed.is_some();
        let (lost, refused, created) = self
            .apply_children(&live, &held_out, &leaving, certificates.as_ref())
            .await?;
        let stall = refused.or_else(|| live.stall.clone());
        // Whatever woke this reconcile (a child changed, a pod became ready), the members are
        // probed, and the status written, once per probe interval.
        if let Some(left) = self.next_pass_in(resumed.as_ref()) {
            return Ok(Action::requeue(left));
        }

        let names = resources::member_names(self.cluster);
        let endpoints: Vec<String> = names
            .iter()
            .map(|m| resources::client_url(self.cluster, m))
            .collect();
        let targets = names
            .iter()
            .map(|m| Target {
                name: m.clone(),
                endpoint: resources::client_url(self.cluster, m),
                metrics: Some(resources::metrics_url(self.cluster, m)),
            })
            .collect();
        let key = format!("{}/{}", self.namespace, self.cluster.name_any());
        let mut healer = self.take_healer();
        // Untrusted auth, as the last pass found it: no heal starts or goes on meanwhile.
        let untrusted_before = self.auth_untrusted();
        let mut platform = KubePlatform::new(self.ctx.client.clone(), self.cluster.clone())
            .with_certificates(
                certificates
                    .as_ref()
                    .map(|c| c.members.clone())
                    .unwrap_or_default(),
            );
        let operator_cert = certificates.as_ref().map(|c| c.operator.clone());
        let pass = healing::pass(
            healing::Cluster {
                name: &key,
                spec: &self.cluster.spec,
                targets,
                platform: &mut platform,
                members: self.ctx.members.as_ref(),
                credentials: crate::members::Credentials {
                    login: credentials.clone(),
                    tls: operator_cert.clone(),
                },
                metrics: &self.ctx.metrics.heal,
                auth_untrusted: untrusted_before.as_deref(),
                defragmentation: self
                    .cluster
                    .status
                    .as_ref()
                    .and_then(|s| s.defragmentation.as_ref()),
            },
            &mut healer,
            resumed,
            &lost,
        )
        .await;
        self.put_healer(healer);
        let mut untrusted = untrusted_before.clone();
        if let Some((user, password)) = &credentials {
            let reachable = pass.round.members.iter().filter(|m| m.reachable).count();
            if reachable == names.len() {
                untrusted = self
                    .bootstrap_auth(&endpoints, user, password, operator_cert.clone())
                    .await?;
                if untrusted.is_some() && untrusted != untrusted_before {
                    let why = untrusted.clone().unwrap_or_default();
                    warn!(%why, "the cluster's auth is not the operator's; not healing");
                    self.event(EventType::Warning, "AuthUntrusted", "BootstrapAuth", why)
                        .await?;
                }
            }
        }
        let mut stall = stall;
        let defragmenting = pass.defragmentation.as_ref().is_some_and(|d| d.active);
        if untrusted.is_none() && !healing_before && pass.progress.is_none() && !defragmenting {
            let access = crate::members::Credentials {
                login: credentials.clone(),
                tls: operator_cert.clone(),
            };
            let held = self
                .roll_members(&live, &pass.round, certificates.as_ref(), access)
                .await?;
            stall = stall.or(held);
        }
        let access = crate::members::Credentials {
            login: credentials.clone(),
            tls: operator_cert.clone(),
        };
        let (backup, backup_notes) = self.backup_pass(&pass, access).await;
        // The member table after this pass: a resize may have made or retired a member.
        let members = platform.members();
        let mut status = self.status(&members, (&live, &created), &pass, untrusted.as_deref());
        if backup.is_some() {
            status.backup = backup;
        }
        let status = self.report_stall(status, stall).await?;
        self.ctx
            .metrics
            .heal
            .observe_status(&key, self.cluster.spec.replicas, &status);
        self.write_status(status).await?;
        for note in pass.notes.iter().chain(&backup_notes) {
            let kind = if note.warning {
                EventType::Warning
            } else {
                EventType::Normal
            };
            self.event(kind, note.reason, note.action, note.message.clone())
                .await?;
        }
        if pass.busy() {
            return Ok(Action::requeue(HEAL_PASS));
        }
        Ok(Action::requeue(Duration::from_secs(u64::from(
            self.cluster.spec.healing.probe_interval_seconds,
        ))))
    }

    /// The cluster is being deleted. Its workload goes with it (owner references); its data,
    /// the volume claims and the generated root Secret, is deleted under the `Delete`
    /// retention policy and kept under `Retain`, and an Event says which (and, when kept, how
    /// to delete it). Idempotent: it may run again after a failure or a restart.
    async fn cleanup(&self) -> Result<Action> {
        let selector = resources::owned_selector(self.cluster);
        let params = ListParams::default().labels(&selector);
        let pvcs: Api<PersistentVolumeClaim> = self.api();
        let claims: Vec<String> = pvcs
            .list_metadata(&params)
            .await?
            .items
            .iter()
            .map(ResourceExt::name_any)
            .collect();
        let secret = resources::generated_secret_name(self.cluster);
        let claims_text = if claims.is_empty() {
            "no volume claims".to_string()
        } else {
            format!("volume claims {}", claims.join(", "))
        };
        match self.cluster.spec.storage.retention_policy {
            RetentionPolicy::Retain => {
                info!(claims = ?claims, "deleted; keeping its data (retentionPolicy Retain)");
                self.event(
                    EventType::Normal,
                    "DataRetained",
                    "Cleanup",
                    format!(
                        "kept {claims_text} and the generated root Secret {secret}{}, if any \
                         (spec.storage.retentionPolicy Retain): a StorageCluster created again \
                         as {}/{} starts on this data; to delete it: kubectl delete \
                         pvc,secret -n {} -l {selector}",
                        if self.cluster.spec.tls.is_some() {
                            format!(" and CA Secret {}", tls::ca_secret_name(self.cluster))
                        } else {
                            String::new()
                        },
                        self.namespace,
                        self.cluster.name_any(),
                        self.namespace
                    ),
                )
                .await?;
            }
            RetentionPolicy::Delete => {
                for claim in &claims {
                    delete_if_present(&pvcs, claim, &DeleteParams::default()).await?;
                }
                // Only the Secret the operator generated, never one the spec names.
                let named = self.cluster.spec.auth.root_secret_ref.as_deref() == Some(&secret);
                let generated = !named && self.delete_generated(&secret).await?;
                // The CA the operator made for spec.tls: with the data it signed for.
                let own_ca = self
                    .cluster
                    .spec
                    .tls
                    .as_ref()
                    .is_some_and(|t| t.cert_manager.is_none());
                let ca = tls::ca_secret_name(self.cluster);
                let ca_deleted = own_ca && self.delete_generated(&ca).await?;
                info!(claims = ?claims, generated, "deleted with its data (retentionPolicy Delete)");
                self.event(
                    EventType::Normal,
                    "DataDeleted",
                    "Cleanup",
                    format!(
                        "deleted {claims_text}{}{} (spec.storage.retentionPolicy Delete)",
                        if generated {
                            format!(" and the generated root Secret {secret}")
                        } else {
                            String::new()
                        },
                        if ca_deleted {
                            format!(" and the cluster's CA Secret {ca}")
                        } else {
                            String::new()
                        }
                    ),
                )
                .await?;
            }
        }
        Ok(Action::await_change())
    }

    /// Deletes the Secret `name` if the operator generated it for this cluster (it bears the
    /// cluster's labels), and only the very object looked at (its UID as a precondition: one
    /// replaced in between is not deleted). Returns whether it deleted.
    async fn delete_generated(&self, name: &str) -> Result<bool> {
        let secrets: Api<Secret> = self.api();
        let found = secrets
            .get_opt(name)
            .await?
            .filter(|s| resources::made_for(self.cluster, &s.metadata));
        let Some(found) = found else {
            return Ok(false);
        };
        let exactly = DeleteParams {
            preconditions: Some(Preconditions {
                uid: found.metadata.uid,
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        delete_if_present(&secrets, name, &exactly).await?;
        Ok(true)
    }

    /// How long until this cluster's next pass is due: `None` when it is due now (a pass
    /// interval has passed since the last one, or the spec changed). The interval is the probe
    /// interval, or [`HEAL_PASS`] while a heal runs and is not paused.
    fn next_pass_in(&self, heal: Option<&Progress>) -> Option<Duration> {
        let interval = match heal {
            Some(p) if p.paused.is_none() => HEAL_PASS,
            _ => Duration::from_secs(u64::from(self.cluster.spec.healing.probe_interval_seconds)),
        };
        let healers = self.ctx.healers.lock().unwrap_or_else(|p| p.into_inner());
        let cluster = healers.get(&ObjectRef::from_obj(self.cluster))?;
        if cluster.generation != self.cluster.metadata.generation {
            return None;
        }
        let since = cluster.last_pass?.elapsed();
        interval.checked_sub(since).filter(|left| !left.is_zero())
    }

    /// This cluster's healing loop, made afresh when the spec changed (the mode or the evidence
    /// asked for may have), with the heal count the status carries.
    fn take_healer(&self) -> Healer {
        let generation = self.cluster.metadata.generation;
        let mut healers = self.ctx.healers.lock().unwrap_or_else(|p| p.into_inner());
        match healers.remove(&ObjectRef::from_obj(self.cluster)) {
            Some(cluster) if cluster.generation == generation => cluster.healer,
            _ => {
                let mut healer = Healer::for_spec(&self.cluster.spec.healing);
                if let Some(h) = self
                    .cluster
                    .status
                    .as_ref()
                    .and_then(|s| s.healing.as_ref())
                {
                    healer.heals = h.count;
                    healer.last_result = h.last_result.clone();
                }
                healer
            }
        }
    }

    /// Keeps `healer` for the next pass, noting that this one probed now.
    fn put_healer(&self, healer: Healer) {
        let generation = self.cluster.metadata.generation;
        self.ctx
            .healers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                ObjectRef::from_obj(self.cluster),
                super::ClusterLoop {
                    generation,
                    healer,
                    last_pass: Some(tokio::time::Instant::now()),
                },
            );
    }

    /// The status for `pass` over the members `names`, whose pods are `live` or were `created`
    /// by this reconcile (from the current template).
    fn status(
        &self,
        names: &[String],
        (live, created): (&Live, &[String]),
        pass: &healing::Pass,
        auth_untrusted: Option<&str>,
    ) -> StorageClusterStatus {
        let views: Vec<MemberView> = names
            .iter()
            .map(|name| MemberView {
                revisions: {
                    let desired = resources::template_revision(self.cluster, name);
                    let running = match live.pods.get(name) {
                        Some(pod) => resources::running_revision(pod).map(str::to_string),
                        None => created.contains(name).then(|| desired.clone()),
                    };
                    (running, Some(desired))
                },
                name: name.clone(),
                endpoint: resources::client_url(self.cluster, name),
                observation: pass
                    .round
                    .members
                    .iter()
                    .find(|o| o.name == *name)
                    .cloned()
                    .unwrap_or_else(|| Observation::unreachable(name, "not probed")),
            })
            .collect();
        status::build(&status::Inputs {
            generation: self.cluster.metadata.generation,
            replicas: self.cluster.spec.replicas,
            members: &views,
            findings: &pass.assessment.findings,
            decision: &pass.assessment.decision,
            healing: Some(pass.healing.clone()),
            held_back: pass.assessment.held_back.clone(),
            auth_untrusted,
            selector: resources::selector(self.cluster),
            defragmentation: pass.defragmentation.clone(),
            rollout: None,
            resize_waits: pass.resize_waits.clone(),
            quorum_lost: None,
            previous: self.cluster.status.as_ref(),
            now: Time(Timestamp::now()),
        })
    }

    /// Something only the user can fix (an invalid spec, an unusable Secret): say what to fix in
    /// the Progressing condition (False, `reason`) and a Warning Event, create nothing, and
    /// reconcile again as `then` says. Repeats of the same problem write nothing.
    async fn refuse(
        &self,
        reason: &str,
        action: &str,
        problem: String,
        then: Action,
    ) -> Result<Action> {
        warn!(%problem, reason, "cannot proceed");
        let previous = self.cluster.status.clone().unwrap_or_default();
        let mut conditions: Vec<_> = previous
            .conditions
            .iter()
            .filter(|c| c.type_ != condition::PROGRESSING)
            .cloned()
            .collect();
        conditions.push(self.not_progressing(reason, problem.clone()));
        let status = StorageClusterStatus {
            observed_generation: self.cluster.metadata.generation,
            conditions,
            ..previous
        };
        if self.write_status(status).await? {
            self.event(EventType::Warning, reason, action, problem)
                .await?;
        }
        Ok(then)
    }

    /// The Progressing condition of the stored status.
    fn stored_progressing(&self) -> Option<&Condition> {
        self.cluster
            .status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| c.type_ == condition::PROGRESSING)
    }

    /// `Progressing=False` for `reason`, saying `message`; since the stored condition's time
    /// when it was False already.
    fn not_progressing(&self, reason: &str, message: String) -> Condition {
        let unchanged = self.stored_progressing().filter(|c| c.status == "False");
        Condition {
            type_: condition::PROGRESSING.to_string(),
            status: "False".to_string(),
            reason: reason.to_string(),
            message,
            observed_generation: self.cluster.metadata.generation,
            last_transition_time: unchanged.map_or_else(
                || Time(Timestamp::now()),
                |c| c.last_transition_time.clone(),
            ),
        }
    }

    /// A reconcile that failed says so in the Progressing condition (False, `ReconcileFailed`,
    /// the error), beside the Warning Event of [`error_policy`]. Best effort: the API server
    /// may be what failed.
    async fn report_failure(&self, error: &Error) {
        let previous = self.cluster.status.clone().unwrap_or_default();
        let mut conditions: Vec<Condition> = previous
            .conditions
            .iter()
            .filter(|c| c.type_ != condition::PROGRESSING)
            .cloned()
            .collect();
        conditions.push(self.not_progressing(
            "ReconcileFailed",
            format!("{error}; retrying with a backoff that doubles per failure, up to 5 minutes"),
        ));
        let status = StorageClusterStatus {
            observed_generation: self.cluster.metadata.generation,
            conditions,
            ..previous
        };
        if let Err(e) = self.write_status(status).await {
            warn!(error = %e, "recording the failure in the status failed too");
        }
    }

    /// `status` with a stall, if any, in its Progressing condition (False, the stall's reason
    /// and message, whatever the healing loop said), told by a Warning Event when the stored
    /// condition did not say it yet. The rest of the status (members, phase) is the healing
    /// loop's: the members that run are still probed and reported.
    async fn report_stall(
        &self,
        mut status: StorageClusterStatus,
        stall: Option<Stall>,
    ) -> Result<StorageClusterStatus> {
        let Some(stall) = stall else {
            return Ok(status);
        };
        let told = self
            .stored_progressing()
            .is_some_and(|c| c.reason == stall.reason && c.message == stall.message);
        let stalled = self.not_progressing(stall.reason, stall.message.clone());
        match status
            .conditions
            .iter_mut()
            .find(|c| c.type_ == condition::PROGRESSING)
        {
            Some(progressing) => *progressing = stalled,
            None => status.conditions.push(stalled),
        }
        if !told {
            warn!(reason = stall.reason, message = %stall.message, "members cannot start");
            self.event(
                EventType::Warning,
                stall.reason,
                "StartMembers",
                stall.message,
            )
            .await?;
        }
        Ok(status)
    }

    /// This pass's part of scheduled backups (`spec.backup`): records a backup that ended,
    /// starts one when due, in the background (the reconcile goes on while it streams), and
    /// returns the status to record (`None`: no `spec.backup`) and what to tell. The S3
    /// credentials Secret is read when a backup starts; a Secret that is missing or incomplete
    /// fails that attempt, saying so.
    async fn backup_pass(
        &self,
        pass: &healing::Pass,
        access: crate::members::Credentials,
    ) -> (Option<crds::BackupStatus>, Vec<healing::Note>) {
        use crate::backup::{self, Next};
        let Some(spec) = self.cluster.spec.backup.clone() else {
            return (None, Vec::new());
        };
        let Ok(schedule) = crate::maintenance::Schedule::parse(&spec.schedule) else {
            return (None, Vec::new());
        };
        let object = ObjectRef::from_obj(self.cluster);
        let mut job = self.ctx.backup_job(&object);
        let held = backup::held(&pass.assessment.findings, pass.progress.is_some());
        let request = self.cluster.annotations().get(backup::REQUEST_ANNOTATION);
        let previous = self.cluster.status.as_ref().and_then(|s| s.backup.as_ref());
        let (status, next, notes) = backup::pass(
            &mut job,
            &schedule,
            previous,
            request.map(String::as_str),
            &pass.round,
            held,
        )
        .await;
        if let Next::Take(member) = next {
            info!(%member, "taking a backup");
            let credentials = self.s3_credentials(&spec.store).await;
            let endpoint = resources::client_url(self.cluster, &member);
            let prefix = format!("{}/{}", self.namespace, self.cluster.name_any());
            let members = self.ctx.members.clone();
            job = Some(tokio::spawn(async move {
                let store = backup::Store::open(&spec.store, &prefix, credentials?.as_ref())?;
                backup::take(
                    &*members,
                    &member,
                    endpoint,
                    access,
                    &store,
                    &spec.retention,
                    &std::env::temp_dir(),
                )
                .await
            }));
        }
        self.ctx.put_backup_job(object, job);
        (Some(status), notes)
    }

    /// The S3 credentials `store.s3.credentialsSecretRef` names (`None`: none named, the
    /// operator's environment is used); `Err` says what is wrong with the Secret.
    async fn s3_credentials(
        &self,
        store: &crds::BackupStore,
    ) -> std::result::Result<Option<crate::backup::S3Credentials>, String> {
        let Some(name) = store
            .s3
            .as_ref()
            .and_then(|s| s.credentials_secret_ref.clone())
        else {
            return Ok(None);
        };
        let secrets: Api<Secret> = self.api();
        let secret = match secrets.get_opt(&name).await {
            Ok(Some(secret)) => secret,
            Ok(None) => return Err(format!("the S3 credentials Secret {name} does not exist")),
            Err(e) => return Err(format!("reading the S3 credentials Secret {name}: {e}")),
        };
        let field = |key: &str| {
            resources::secret_text(&secret, key)
                .map(str::to_string)
                .ok_or_else(|| format!("the S3 credentials Secret {name} has no UTF-8 {key}"))
        };
        Ok(Some(crate::backup::S3Credentials {
            access_key_id: field("accessKeyID")?,
            secret_access_key: field("secretAccessKey")?,
            session_token: field("sessionToken").ok(),
        }))
    }

    /// The root user's name and password when auth is on: from `spec.auth.rootSecretRef`, or
    /// from the Secret the operator generates (once: an existing one is never overwritten).
    /// The operator reads Secrets only by name (these, the certificate Secrets and the S3
    /// credentials Secret `spec.backup` names): it may neither list nor watch Secrets
    /// (`manifests/rbac.yaml` says why RBAC cannot narrow it further).
    async fn root_credentials(&self) -> Result<Option<(String, String)>> {
        let auth = &self.cluster.spec.auth;
        if !auth.enabled {
            return Ok(None);
        }
        let secrets: Api<Secret> = self.api();
        let name = match &auth.root_secret_ref {
            Some(name) => name.clone(),
            None => resources::generated_secret_name(self.cluster),
        };
        let secret = match secrets.get_opt(&name).await? {
            Some(secret) if auth.root_secret_ref.is_none() => {
                self.disown(&secrets, &secret.metadata).await?;
                secret
            }
            Some(secret) => secret,
            None if auth.root_secret_ref.is_some() => {
                return Err(Error::Secret {
                    name,
                    reason: "not found: create it with keys username and password, or remove \
                             spec.auth.rootSecretRef to have one generated"
                        .to_string(),
                });
            }
            None => {
                let password = crate::bootstrap::generate_password()
                    .map_err(|e| Error::Random(e.to_string()))?;
                let secret = resources::root_secret(self.cluster, &password);
                // A create, not an apply: a Secret of that name made since the read above is
                // refused (409, retried and read next time), never overwritten.
                let params = PostParams {
                    field_manager: Some(FIELD_MANAGER.to_string()),
                    ..PostParams::default()
                };
                secrets.create(&params, &secret).await?;
                info!(secret = %name, "generated root credentials");
                secret
            }
        };
        let field = |key: &str| {
            resources::secret_text(&secret, key)
                .map(str::to_string)
                .ok_or_else(|| Error::Secret {
                    name: name.clone(),
                    reason: format!("no UTF-8 value under key {key}"),
                })
        };
        Ok(Some((field("username")?, field("password")?)))
    }

    async fn list<K>(&self) -> Result<Vec<K>>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug,
    {
        let params = ListParams::default().labels(&resources::selector(self.cluster));
        Ok(self.api::<K>().list(&params).await?.items)
    }

    async fn live_children(&self) -> Result<Live> {
        let pods = self.list::<Pod>().await?;
        let pvcs = self.list::<PersistentVolumeClaim>().await?;
        let ready = pods
            .iter()
            .filter(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .map(ResourceExt::name_any)
            .collect();
        Ok(Live {
            ready,
            stall: stalls::find(&pods, &pvcs, Timestamp::now()),
            pods: by_name(pods),
            pvcs: by_name(pvcs),
            services: by_name(self.list::<Service>().await?),
            pdbs: by_name(self.list::<PodDisruptionBudget>().await?),
            network_policies: by_name(self.list::<NetworkPolicy>().await?),
        })
    }

    /// Server-side apply of `object` under the operator's field manager, taking over fields
    /// someone else set (the operator owns its children).
    async fn apply<K>(&self, api: &Api<K>, object: &K) -> Result<()>
    where
        K: Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
    {
        let params = PatchParams::apply(FIELD_MANAGER).force();
        api.patch(&object.name_any(), &params, &Patch::Apply(object))
            .await?;
        Ok(())
    }

    /// Removes the owner reference to this cluster from a child holding data (a volume claim,
    /// the generated root Secret) that an operator before the retention policy made owned, so
    /// that the garbage collector does not delete the data with the cluster. A merge patch of
    /// the remaining references at the `resourceVersion` read: a concurrent change makes it
    /// fail (and the reconcile retry) rather than drop someone else's reference.
    async fn disown<K>(&self, api: &Api<K>, meta: &ObjectMeta) -> Result<()>
    where
        K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
    {
        let uid = self.cluster.metadata.uid.as_deref();
        let references = meta.owner_references.as_deref().unwrap_or_default();
        if uid.is_none() || !references.iter().any(|r| Some(r.uid.as_str()) == uid) {
            return Ok(());
        }
        let remaining: Vec<_> = references
            .iter()
            .filter(|r| Some(r.uid.as_str()) != uid)
            .collect();
        let patch = serde_json::json!({
            "metadata": {
                "resourceVersion": meta.resource_version,
                "ownerReferences": if remaining.is_empty() {
                    serde_json::Value::Null
                } else {
                    serde_json::json!(remaining)
                },
            }
        });
        let name = meta.name.clone().unwrap_or_default();
        api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        info!(object = %name, "no longer owned by the cluster: kept or deleted as the retention policy says");
        Ok(())
    }

    /// Applies `object` unless `live` holds it with the same applied hash.
    async fn apply_if_changed<K>(
        &self,
        live: &BTreeMap<String, ObjectMeta>,
        object: &K,
    ) -> Result<bool>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + DeserializeOwned
            + Serialize
            + std::fmt::Debug,
    {
        let current = live
            .get(&object.name_any())
            .and_then(resources::applied_hash);
        if current.is_some() && current == resources::applied_hash(object.meta()) {
            return Ok(false);
        }
        self.apply(&self.api::<K>(), object).await?;
        Ok(true)
    }

    /// Creates missing children and updates changed Services, the PodDisruptionBudget and the
    /// NetworkPolicy (first, so that no member pod ever runs unprotected).
    /// Returns the members that lost their volume, and the first refusal of the API server to
    /// create a member's claim or pod (a quota, a LimitRange, admission): the other members are
    /// still created, the refused one is tried again at the next reconcile. A member that ran
    /// (the status knows its ID) and whose claim is gone gets a new, empty claim marked for a
    /// rebuild and no pod: the healing loop rebuilds it as a new member, and only its rejoin
    /// starts the pod.
    async fn apply_children(
        &self,
        live: &Live,
        held_out: &[String],
        leaving: &[String],
        certificates: Option<&Certificates>,
    ) -> Result<(Vec<String>, Option<Stall>, Vec<String>)> {
        let cluster = self.cluster;
        let policy = resources::network_policy(cluster, &self.ctx.operator_namespace);
        self.apply_if_changed(&live.network_policies, &policy)
            .await?;
        self.apply_if_changed(&live.services, &resources::peer_service(cluster))
            .await?;
        self.apply_if_changed(&live.services, &resources::client_service(cluster))
            .await?;
        self.apply_if_changed(&live.pdbs, &resources::pod_disruption_budget(cluster))
            .await?;
        let names = resources::member_names(cluster);
        let pvcs: Api<PersistentVolumeClaim> = self.api();
        let pods: Api<Pod> = self.api();
        let with_data: BTreeSet<&str> = names
            .iter()
            .filter(|m| live.pvcs.contains_key(&resources::pvc_name(m)))
            .map(String::as_str)
            .collect();
        for meta in live.pvcs.values() {
            self.disown(&pvcs, meta).await?;
        }
        let ran: BTreeSet<&str> = cluster
            .status
            .iter()
            .flat_map(|s| &s.members)
            .filter(|m| !m.member_id.is_empty())
            .map(|m| m.name.as_str())
            .collect();
        let mut created = Vec::new();
        let mut lost = Vec::new();
        let mut refused = None;
        // With TLS, a member starts only on a certificate (cert-manager may not have issued
        // it yet).
        let waiting = certificates.map(|c| c.waiting(&names)).unwrap_or_default();
        if !waiting.is_empty() {
            refused = Some(Stall {
                reason: "CertificatesNotIssued",
                message: format!(
                    "cert-manager has not issued the certificates of {} yet: their pods start \
                     once it has (see `kubectl describe certificate -n {} {}`)",
                    waiting.join(", "),
                    self.namespace,
                    waiting
                        .iter()
                        .map(|m| tls::Holder::Member(m.to_string()).secret_name(cluster))
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
            });
        }
        for member in names.iter().filter(|m| !leaving.contains(m)) {
            let state = resources::start_state(member, &with_data);
            match live.pvcs.get(&resources::pvc_name(member)) {
                None => {
                    let mut claim = resources::pvc(cluster, member);
                    let was_lost = ran.contains(member.as_str());
                    if was_lost {
                        warn!(member = %member, "the member's volume is gone: it will be rebuilt as a new member");
                        claim
                            .metadata
                            .labels
                            .get_or_insert_default()
                            .insert(resources::REBUILD_LABEL.to_string(), "true".to_string());
                    }
                    if let Some(stall) = self.apply_or_refused(&pvcs, &claim).await? {
                        // Without its claim the pod could not start: not created either.
                        refused.get_or_insert(stall);
                        continue;
                    }
                    if was_lost {
                        lost.push(member.clone());
                    }
                }
                Some(meta) if resources::awaits_rebuild(meta) => lost.push(member.clone()),
                Some(_) => {}
            }
            if !live.pods.contains_key(member)
                && !held_out.contains(member)
                && !lost.contains(member)
                && !waiting.contains(&member.as_str())
            {
                let mut pod = resources::member_pod(cluster, member, state);
                if let Some(digests) = certificates.and_then(|c| c.members.get(member)) {
                    pod = digests.annotate(pod);
                }
                match self.apply_or_refused(&pods, &pod).await? {
                    Some(stall) => {
                        refused.get_or_insert(stall);
                    }
                    None => created.push(member.clone()),
                }
            }
        }
        if !created.is_empty() {
            info!(members = ?created, "created member pods");
            self.event(
                EventType::Normal,
                "MembersCreated",
                "CreateMembers",
                format!("created member pods {}", created.join(", ")),
            )
            .await?;
        }
        Ok((lost, refused, created))
    }

    /// Applies a member's `object`; the API server refusing it (403 or 422: a ResourceQuota,
    /// a LimitRange, admission) is the [`Stall`] returned, not an error.
    async fn apply_or_refused<K>(&self, api: &Api<K>, object: &K) -> Result<Option<Stall>>
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
    {
        match self.apply(api, object).await {
            Ok(()) => Ok(None),
            Err(Error::Kube(kube::Error::Api(status))) if matches!(status.code, 403 | 422) => {
                let name = object.name_any();
                warn!(object = %name, code = status.code, message = %status.message, "refused");
                Ok(Some(stalls::refused(
                    &K::kind(&()),
                    &name,
                    status.code,
                    &status.message,
                )))
            }
            Err(e) => Err(e),
        }
    }

    /// Turns auth on when it is not; `Some(why)` when the cluster's auth is not the
    /// operator's (see [`crate::bootstrap`]).
    async fn bootstrap_auth(
        &self,
        endpoints: &[String],
        user: &str,
        password: &str,
        tls: Option<crate::client::ClientCert>,
    ) -> Result<Option<String>> {
        let enabled = match self
            .ctx
            .members
            .bootstrap_auth(
                endpoints.to_vec(),
                user.to_string(),
                password.to_string(),
                tls,
            )
            .await
        {
            Ok(enabled) => enabled,
            Err(crate::bootstrap::Error::Untrusted { why, .. }) => return Ok(Some(why)),
            Err(e) => return Err(e.into()),
        };
        if enabled {
            info!("auth enabled");
            self.event(
                EventType::Normal,
                "AuthEnabled",
                "BootstrapAuth",
                "created the root user, granted it the root role and enabled authentication"
                    .to_string(),
            )
            .await?;
        }
        Ok(None)
    }

    /// With `spec.tls`, the cluster's certificates, made or requested where missing and
    /// renewed where due (see [`certificates`]), told by an Event when any was issued.
    async fn certificates(&self) -> Result<Option<Certificates>> {
        if self.cluster.spec.tls.is_none() {
            return Ok(None);
        }
        let certificates = certificates::ensure(&self.ctx.client, self.cluster).await?;
        if !certificates.issued.is_empty() {
            self.event(
                EventType::Normal,
                "CertificatesIssued",
                "IssueCertificates",
                format!(
                    "issued certificates into Secrets {} (signed by the CA in Secret {}; a \
                     renewed member certificate is picked up by restarting the member, one \
                     at a time)",
                    certificates.issued.join(", "),
                    tls::ca_secret_name(self.cluster)
                ),
            )
            .await?;
        }
        Ok(Some(certificates))
    }

    /// One pass of a rolling restart: a member whose pod runs an older template (its
    /// [`resources::TEMPLATE_REVISION`]: image, flags, resources, placement) or, with
    /// `spec.tls`, an older certificate than its Secret now holds (renewed by the operator or
    /// by cert-manager) is restarted, by evicting its pod (the next reconcile creates it again
    /// from the current spec). One member at a time, followers first and the leader last after
    /// leadership moved off it ([`crate::rollout::next`]), only when every member pod is Ready
    /// and none is terminating and `round` shows every member answering, voting and caught up;
    /// the caller holds it back while a heal, a resize or a defragmentation pass runs. The
    /// stalls it returns: a certificate signed by another CA than the one the running members
    /// trust is never rolled out (they would not trust each other), and a restarted member
    /// whose pod has not been Ready for [`ROLL_LIMIT`] stops the rollout.
    async fn roll_members(
        &self,
        live: &Live,
        round: &crate::detector::Round,
        certificates: Option<&Certificates>,
        access: crate::members::Credentials,
    ) -> Result<Option<Stall>> {
        let names = resources::member_names(self.cluster);
        let renewed = |m: &String| {
            let running = tls::Digests::of_pod(live.pods.get(m)?)?;
            let current = certificates?.members.get(m)?;
            (running != *current).then_some((running, current.clone()))
        };
        if let Some((member, (running, current))) =
            names.iter().find_map(|m| Some((m, renewed(m)?)))
            && running.ca != current.ca
        {
            return Ok(Some(Stall {
                reason: "CertificateAuthorityChanged",
                message: format!(
                    "the certificate of {member} is now signed by another CA than the one the \
                     running members trust: restarted one at a time, they would not trust each \
                     other, so none is restarted; have the issuer sign with the former CA's \
                     key again (or restore Secret {})",
                    tls::ca_secret_name(self.cluster)
                ),
            }));
        }
        let stale_template = |m: &String| {
            live.pods.get(m).is_some_and(|pod| {
                resources::running_revision(pod)
                    != Some(resources::template_revision(self.cluster, m).as_str())
            })
        };
        let outdated: Vec<String> = names
            .iter()
            .filter(|m| renewed(m).is_some() || stale_template(m))
            .cloned()
            .collect();
        if outdated.is_empty() {
            return Ok(None);
        }
        let now = Timestamp::now();
        let not_back = names.iter().find(|m| {
            !outdated.contains(m)
                && !live.ready.contains(*m)
                && live
                    .pods
                    .get(*m)
                    .and_then(|p| p.creation_timestamp.as_ref())
                    .is_some_and(|created| {
                        now.duration_since(created.0).unsigned_abs() > ROLL_LIMIT
                    })
        });
        if let Some(member) = not_back {
            return Ok(Some(Stall {
                reason: "RolloutStalled",
                message: format!(
                    "{member} was restarted on the current template or certificate and has not \
                     been Ready for {} s; {} left to restart wait ({})",
                    ROLL_LIMIT.as_secs(),
                    outdated.len(),
                    outdated.join(", ")
                ),
            }));
        }
        let settled = names.iter().all(|m| {
            live.ready.contains(m)
                && live
                    .pods
                    .get(m)
                    .is_some_and(|p| p.deletion_timestamp.is_none())
        });
        if !settled {
            info!(outdated = ?outdated, "rolling restart waits for every member pod to be Ready");
            return Ok(None);
        }
        let max_lag = crate::detector::Tolerance::default().max_lag;
        let member = match crate::rollout::next(&outdated, round, max_lag) {
            crate::rollout::Roll::Done => return Ok(None),
            crate::rollout::Roll::Wait(why) => {
                info!(outdated = ?outdated, why, "rolling restart waits");
                return Ok(None);
            }
            crate::rollout::Roll::MoveLeader { from, to_id, to } => {
                let endpoint = resources::client_url(self.cluster, &from);
                match self.ctx.members.move_leader(endpoint, access, to_id).await {
                    Ok(()) => {
                        self.event(
                            EventType::Normal,
                            "LeaderMoved",
                            "RollingUpdate",
                            format!(
                                "moved leadership from {from} to {to} before restarting {from}"
                            ),
                        )
                        .await?;
                    }
                    Err(e) => {
                        warn!(error = %e, "moving leadership before a restart failed; trying again next pass")
                    }
                }
                return Ok(None);
            }
            crate::rollout::Roll::Restart(member) => member,
        };
        // An eviction, not a delete: the PodDisruptionBudget (one member down at most) is
        // checked by the API server at this very moment, so a member drained or lost since
        // the pods were listed makes it refuse (429) rather than take a second one down. Only
        // the pod looked at (its UID as a precondition).
        let eviction = k8s_openapi::api::policy::v1::Eviction {
            metadata: ObjectMeta {
                name: Some(member.clone()),
                namespace: Some(self.namespace.clone()),
                ..ObjectMeta::default()
            },
            delete_options: Some(
                k8s_openapi::apimachinery::pkg::apis::meta::v1::DeleteOptions {
                    preconditions: Some(
                        k8s_openapi::apimachinery::pkg::apis::meta::v1::Preconditions {
                            uid: live.pods.get(&member).and_then(|p| p.uid.clone()),
                            resource_version: None,
                        },
                    ),
                    ..Default::default()
                },
            ),
        };
        let evicted: std::result::Result<serde_json::Value, _> = self
            .api::<Pod>()
            .create_subresource("eviction", &member, &PostParams::default(), &eviction)
            .await;
        match evicted {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if matches!(status.code, 404 | 409 | 429) => {
                info!(member = %member, code = status.code, message = %status.message, "restart refused for now; trying again next pass");
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        }
        let (why, action) = if renewed(&member).is_some() {
            ("its renewed certificate", "RenewCertificate")
        } else {
            ("the current template", "RollingUpdate")
        };
        info!(member = %member, why, "restarting the member");
        self.event(
            EventType::Normal,
            "MemberRestarted",
            action,
            format!(
                "restarted {member} on {why}; the next member waits until it is back and a \
                 leader leads"
            ),
        )
        .await?;
        Ok(None)
    }

    /// Why the cluster's auth is not the operator's, as the status last said.
    fn auth_untrusted(&self) -> Option<String> {
        let status = self.cluster.status.as_ref()?;
        let condition = status
            .conditions
            .iter()
            .find(|c| c.type_ == crds::condition::AUTH_UNTRUSTED)?;
        (condition.status == "True").then(|| condition.message.clone())
    }

    /// Writes `status` with server-side apply on the status subresource, unless it is the
    /// stored one. Returns whether it wrote.
    async fn write_status(&self, status: StorageClusterStatus) -> Result<bool> {
        if self.cluster.status.as_ref() == Some(&status) {
            return Ok(false);
        }
        let patch = serde_json::json!({
            "apiVersion": StorageCluster::api_version(&()),
            "kind": StorageCluster::kind(&()),
            "status": status,
        });
        let params = PatchParams::apply(FIELD_MANAGER).force();
        self.api::<StorageCluster>()
            .patch_status(&self.cluster.name_any(), &params, &Patch::Apply(&patch))
            .await?;
        Ok(true)
    }

    /// Publishes an Event about the cluster. Never fails the reconcile: an Event reports the
    /// work, it is not part of it, so a refused or lost publish is logged and counted
    /// (`mend_operator_event_failures_total`) and the work goes on. (The `Result` only keeps
    /// the callers' `?`.)
    async fn event(
        &self,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) -> Result<()> {
        let event = Event {
            type_,
            reason: reason.to_string(),
            note: Some(note),
            action: action.to_string(),
            secondary: None,
        };
        if let Err(error) = self
            .ctx
            .events
            .publish(&event, &self.cluster.object_ref(&()))
            .await
        {
            self.ctx.metrics.event_failed(reason);
            warn!(%error, reason, "publishing an Event failed");
        }
        Ok(())
    }
}

/// The metadata of `objects`, by name.
fn by_name<K: Resource>(objects: Vec<K>) -> BTreeMap<String, ObjectMeta> {
    objects
        .into_iter()
        .map(|o| (o.name_any(), o.meta().clone()))
        .collect()
}

/// Deletes `name` through `api` with `params`; one already gone is not an error.
async fn delete_if_present<K>(api: &Api<K>, name: &str, params: &DeleteParams) -> Result<()>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
        Err(e) => Err(e.into()),
    }
}
