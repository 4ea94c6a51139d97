//! Members as pods on Kubernetes, each with its own volume claim (see the controller's module
//! doc for why not a StatefulSet). Stopping a member deletes its pod; backing up and wiping runs
//! a one-off pod on the member's volume that moves the data directory into the volume's backups
//! directory (`storage-node backup-data`, keeping `spec.healing.backupRetention` of them);
//! starting it to join applies its pod with `--initial-cluster-state existing`. No operation
//! waits: each looks once and says whether it is done ([`Op`]), so a reconcile never blocks on
//! a pod. Every operation is idempotent, so a resumed heal may repeat the step it was in.

use crds::StorageCluster;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};

use super::{Error, Op, Platform, Result};
use resources::{BACKUP_DIR, ClusterState};

pub mod resources;
pub mod tls;

/// The field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "mend-operator";

/// The members of one `StorageCluster`, as pods.
pub struct KubePlatform {
    client: Client,
    cluster: StorageCluster,
    /// With `spec.tls`: the digest of each member's current certificate, which a pod started
    /// to join is annotated with.
    certificates: std::collections::BTreeMap<String, tls::Digests>,
    /// Members made (Create) and retired (Retire) through this platform: the member table the
    /// status records next has them in and out.
    made: Vec<String>,
    retired: Vec<String>,
}

impl KubePlatform {
    /// The members of `cluster`, reached through `client`.
    pub fn new(client: Client, cluster: StorageCluster) -> KubePlatform {
        KubePlatform {
            client,
            cluster,
            certificates: Default::default(),
            made: Vec::new(),
            retired: Vec::new(),
        }
    }

    /// The same, with the digests of the members' current certificates (`spec.tls`).
    pub fn with_certificates(
        mut self,
        certificates: std::collections::BTreeMap<String, tls::Digests>,
    ) -> KubePlatform {
        self.certificates = certificates;
        self
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(
            self.client.clone(),
            &self.cluster.namespace().unwrap_or_default(),
        )
    }

    /// The members after what this platform did: [`resources::member_names`] with the members
    /// it made and without those it retired.
    pub fn members(&self) -> Vec<String> {
        let mut names = resources::member_names(&self.cluster);
        for made in &self.made {
            if !names.contains(made) {
                names.push(made.clone());
            }
        }
        names.retain(|n| !self.retired.contains(n));
        names
    }

    fn known(&self, name: &str) -> Result<()> {
        if self.members().iter().any(|m| m == name) {
            Ok(())
        } else {
            Err(Error::UnknownMember(name.to_string()))
        }
    }

    fn claims(&self) -> Api<PersistentVolumeClaim> {
        Api::namespaced(
            self.client.clone(),
            &self.cluster.namespace().unwrap_or_default(),
        )
    }

    async fn get(&self, name: &str) -> Result<Option<Pod>> {
        self.pods().get_opt(name).await.map_err(api(name))
    }

    async fn delete(&self, name: &str) -> Result<()> {
        match self.pods().delete(name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(e) => Err(api(name)(e)),
        }
    }
}

fn claim_error(name: &str) -> impl FnOnce(kube::Error) -> Error {
    let name = name.to_string();
    move |source| Error::Kube {
        object: format!("persistentvolumeclaim {name}"),
        source: Box::new(source),
    }
}

fn api(name: &str) -> impl FnOnce(kube::Error) -> Error {
    let name = name.to_string();
    move |source| Error::Kube {
        object: format!("pod {name}"),
        source: Box::new(source),
    }
}

/// The `--name=` a backup pod was started with.
fn backup_name(pod: &Pod) -> Option<String> {
    pod.spec
        .as_ref()?
        .containers
        .first()?
        .args
        .as_ref()?
        .iter()
        .find_map(|a| a.strip_prefix("--name=").map(str::to_string))
}

impl Platform for KubePlatform {
    async fn stop(&mut self, name: &str) -> Result<Op<()>> {
        self.known(name)?;
        match self.get(name).await? {
            None => Ok(Op::Done(())),
            Some(pod) => {
                if pod.metadata.deletion_timestamp.is_none() {
                    self.delete(name).await?;
                }
                Ok(Op::InProgress(format!("pod {name} is terminating")))
            }
        }
    }

    async fn is_stopped(&mut self, name: &str) -> Result<bool> {
        self.known(name)?;
        Ok(self.get(name).await?.is_none())
    }

    /// The backups stay on the member's own volume (a rename, never a copy), so the volume must
    /// hold `healing.backupRetention` backups and the fresh copy the rebuilt member receives:
    /// checked against the claim's capacity before the data is moved.
    async fn has_room(
        &mut self,
        name: &str,
        data_bytes: u64,
    ) -> Result<std::result::Result<(), String>> {
        self.known(name)?;
        let claim = resources::pvc_name(name);
        let pvc = Api::<PersistentVolumeClaim>::namespaced(
            self.client.clone(),
            &self.cluster.namespace().unwrap_or_default(),
        )
        .get_opt(&claim)
        .await
        .map_err(|source| Error::Kube {
            object: format!("persistentvolumeclaim {claim}"),
            source: Box::new(source),
        })?;
        let size = pvc.as_ref().and_then(|p| {
            let capacity = p.status.as_ref()?.capacity.as_ref()?.get("storage")?;
            resources::quantity_bytes(&capacity.0)
        });
        let Some(size) = size else {
            return Ok(Err(format!(
                "the capacity of volume claim {claim} is not known yet"
            )));
        };
        let copies = u64::from(self.cluster.spec.healing.backup_retention) + 1;
        let needed = data_bytes.saturating_mul(copies);
        if needed > size {
            return Ok(Err(format!(
                "volume {claim} holds {size} bytes, too few for {copies} copies of {data_bytes} \
                 bytes of data ({} backups kept and the rebuilt member's): raise \
                 spec.storage.size (on a StorageClass that allows expansion) or lower \
                 spec.healing.backupRetention",
                copies - 1
            )));
        }
        Ok(Ok(()))
    }

    async fn backup_and_wipe(&mut self, name: &str) -> Result<Op<String>> {
        self.known(name)?;
        let pod_name = resources::backup_pod_name(name);
        let Some(pod) = self.get(&pod_name).await? else {
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or_default();
            let backup = format!("{stamp:016}-{name}");
            let pod = resources::backup_pod(&self.cluster, name, &backup);
            self.pods()
                .create(&PostParams::default(), &pod)
                .await
                .map_err(api(&pod_name))?;
            return Ok(Op::InProgress(format!("backup pod {pod_name} created")));
        };
        let backup = backup_name(&pod).unwrap_or_default();
        let status = pod.status.as_ref();
        match status.and_then(|s| s.phase.as_deref()) {
            Some("Succeeded") => {
                self.delete(&pod_name).await?;
                Ok(Op::Done(format!(
                    "{BACKUP_DIR}/{backup} on volume {}",
                    resources::pvc_name(name)
                )))
            }
            Some("Failed") => {
                // Deleted, so the next try starts a new backup pod rather than reading this
                // failure forever; the heal's step limit bounds the retries.
                self.delete(&pod_name).await?;
                Err(Error::BackupFailed(format!(
                    "pod {pod_name}: {}",
                    status
                        .and_then(|s| s.message.clone())
                        .unwrap_or_else(|| "failed".to_string())
                )))
            }
            phase => Ok(Op::InProgress(format!(
                "backup pod {pod_name} is {}",
                phase.unwrap_or("starting")
            ))),
        }
    }

    async fn start_joining(&mut self, name: &str) -> Result<()> {
        self.known(name)?;
        let digests = self.certificates.get(name);
        if self.cluster.spec.tls.is_some() && digests.is_none() {
            return Err(Error::NoCertificate(name.to_string()));
        }
        // First, so a claim still marked never makes the loop rebuild a member that rejoined.
        let claim = resources::pvc_name(name);
        let unmark =
            serde_json::json!({ "metadata": { "labels": { resources::REBUILD_LABEL: null } } });
        Api::<PersistentVolumeClaim>::namespaced(
            self.client.clone(),
            &self.cluster.namespace().unwrap_or_default(),
        )
        .patch(&claim, &PatchParams::default(), &Patch::Merge(&unmark))
        .await
        .map_err(|source| Error::Kube {
            object: format!("persistentvolumeclaim {claim}"),
            source: Box::new(source),
        })?;
        let mut pod = resources::member_pod(&self.cluster, name, ClusterState::Existing);
        if let Some(digests) = digests {
            pod = digests.annotate(pod);
        }
        self.pods()
            .patch(
                name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&pod),
            )
            .await
            .map_err(api(name))?;
        Ok(())
    }

    fn next_member(&self) -> String {
        let names = self.members();
        (0..)
            .map(|i| format!("{}-{i}", self.cluster.name_any()))
            .find(|name| !names.contains(name))
            .unwrap_or_default()
    }

    /// Applies the new member's volume claim (one kept from an earlier member of that name
    /// stays as it is: the Backup step moves its data aside); its pod starts at AddLearner.
    async fn create(&mut self, name: &str) -> Result<Op<()>> {
        let claim = resources::pvc(&self.cluster, name);
        let claim_name = resources::pvc_name(name);
        let existing = self
            .claims()
            .get_opt(&claim_name)
            .await
            .map_err(claim_error(&claim_name))?;
        if existing.is_none() {
            self.claims()
                .patch(
                    &claim_name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&claim),
                )
                .await
                .map_err(claim_error(&claim_name))?;
        }
        if !self.made.iter().any(|m| m == name) {
            self.made.push(name.to_string());
        }
        Ok(Op::Done(()))
    }

    /// Deletes the member's pod, and its volume claim when `spec.storage.retentionPolicy` is
    /// `Delete` (only the claim read, by UID, and only one labelled for the cluster); with
    /// `Retain` the claim and its data stay.
    async fn retire(&mut self, name: &str) -> Result<Op<String>> {
        self.known(name)?;
        if self.get(name).await?.is_some() {
            self.delete(name).await?;
            return Ok(Op::InProgress(format!("pod {name} is being deleted")));
        }
        let claim_name = resources::pvc_name(name);
        let claim = self
            .claims()
            .get_opt(&claim_name)
            .await
            .map_err(claim_error(&claim_name))?;
        let kept = match claim {
            None => format!("it had no volume claim {claim_name}"),
            Some(claim)
                if self.cluster.spec.storage.retention_policy == crds::RetentionPolicy::Delete
                    && resources::made_for(&self.cluster, &claim.metadata) =>
            {
                let params = DeleteParams {
                    preconditions: Some(kube::api::Preconditions {
                        uid: claim.metadata.uid.clone(),
                        resource_version: None,
                    }),
                    ..DeleteParams::default()
                };
                match self.claims().delete(&claim_name, &params).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(status)) if status.code == 404 => {}
                    Err(e) => return Err(claim_error(&claim_name)(e)),
                }
                format!("its volume claim {claim_name} was deleted (retentionPolicy Delete)")
            }
            Some(_) => format!("its volume claim {claim_name} is kept (retentionPolicy Retain)"),
        };
        self.retired.push(name.to_string());
        Ok(Op::Done(kept))
    }

    fn peer_url(&self, name: &str) -> Result<String> {
        self.known(name)?;
        Ok(resources::peer_url(&self.cluster, name))
    }

    fn endpoint(&self, name: &str) -> Result<String> {
        self.known(name)?;
        Ok(resources::client_url(&self.cluster, name))
    }
}

#[cfg(test)]
mod tests {
    use http::Method;
    use serde_json::{Value, json};

    use super::*;
    use crate::controller::fixtures::{cluster, mock_client};

    const PODS: &str = "/api/v1/namespaces/default/pods";

    fn platform() -> (KubePlatform, crate::controller::fixtures::ApiServerVerifier) {
        let (client, verifier) = mock_client();
        (KubePlatform::new(client, cluster("demo", 3)), verifier)
    }

    fn pod(name: &str, phase: &str) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": { "name": name, "namespace": "default" },
            "spec": { "containers": [{ "name": "backup", "args": ["backup-data", "--name=0001-demo-1"] }] },
            "status": { "phase": phase },
        })
    }

    #[tokio::test]
    async fn stop_deletes_the_members_pod_once_and_is_done_when_it_is_gone() {
        let (mut platform, mut server) = platform();
        let api = tokio::spawn(async move {
            server
                .expect(Method::GET, &format!("{PODS}/demo-1"))
                .await
                .ok(&pod("demo-1", "Running"));
            server
                .expect(Method::DELETE, &format!("{PODS}/demo-1"))
                .await
                .ok(&pod("demo-1", "Running"));
            // Terminating: looked at, not deleted again.
            let mut terminating = pod("demo-1", "Running");
            terminating["metadata"]["deletionTimestamp"] = json!("2026-12-01T00:00:00Z");
            server
                .expect(Method::GET, &format!("{PODS}/demo-1"))
                .await
                .ok(&terminating);
            server
                .expect(Method::GET, &format!("{PODS}/demo-1"))
                .await
                .error(404, "NotFound");
            server
        });
        assert!(matches!(
            platform.stop("demo-1").await,
            Ok(Op::InProgress(_))
        ));
        assert!(matches!(
            platform.stop("demo-1").await,
            Ok(Op::InProgress(_))
        ));
        assert_eq!(
            platform.stop("demo-1").await.expect("stopped"),
            Op::Done(())
        );
        drop(platform);
        api.await.expect("api").no_more_requests().await;
        let (mut platform, _server) = self::platform();
        assert!(matches!(
            platform.stop("other-0").await,
            Err(Error::UnknownMember(_))
        ));
    }

    #[tokio::test]
    async fn a_volume_too_small_for_the_backups_and_a_fresh_copy_holds_the_backup_back() {
        let (mut platform, mut server) = platform();
        let claim = json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": { "name": "data-demo-1", "namespace": "default" },
            "status": { "phase": "Bound", "capacity": { "storage": "1Gi" } },
        });
        let api = tokio::spawn(async move {
            for _ in 0..2 {
                server
                    .expect(
                        Method::GET,
                        "/api/v1/namespaces/default/persistentvolumeclaims/data-demo-1",
                    )
                    .await
                    .ok(&claim);
            }
            server
        });
        // Three backups kept and the rebuilt member's copy: four copies of the data.
        let why = platform
            .has_room("demo-1", 300 << 20)
            .await
            .expect("asked")
            .expect_err("4 x 300 MiB do not fit in 1 GiB");
        assert!(why.contains("raise spec.storage.size"), "{why}");
        assert_eq!(
            platform.has_room("demo-1", 200 << 20).await.expect("asked"),
            Ok(())
        );
        drop(platform);
        api.await.expect("api").no_more_requests().await;
    }

    #[tokio::test]
    async fn backup_runs_a_one_off_pod_on_the_members_volume_then_deletes_it() {
        let (mut platform, mut server) = platform();
        let api = tokio::spawn(async move {
            server
                .expect(Method::GET, &format!("{PODS}/demo-1-backup"))
                .await
                .error(404, "NotFound");
            let created = server.expect(Method::POST, PODS).await;
            let body = created.body.clone();
            let mut answer = body.clone();
            answer["status"] = json!({ "phase": "Pending" });
            created.ok(&answer);
            server
                .expect(Method::GET, &format!("{PODS}/demo-1-backup"))
                .await
                .ok(&answer);
            answer["status"] = json!({ "phase": "Succeeded" });
            server
                .expect(Method::GET, &format!("{PODS}/demo-1-backup"))
                .await
                .ok(&answer);
            server
                .expect(Method::DELETE, &format!("{PODS}/demo-1-backup"))
                .await
                .ok(&answer);
            (body, server)
        });
        assert!(matches!(
            platform.backup_and_wipe("demo-1").await,
            Ok(Op::InProgress(_))
        ));
        assert!(matches!(
            platform.backup_and_wipe("demo-1").await,
            Ok(Op::InProgress(_))
        ));
        let Op::Done(backup) = platform.backup_and_wipe("demo-1").await.expect("backed up") else {
            panic!("the backup pod succeeded");
        };
        drop(platform);
        let (body, server) = api.await.expect("api");
        server.no_more_requests().await;
        assert!(
            backup.ends_with("-demo-1 on volume data-demo-1"),
            "{backup}"
        );
        assert_eq!(body["metadata"]["name"], "demo-1-backup");
        assert_eq!(body["spec"]["restartPolicy"], "Never");
        assert_eq!(
            body["spec"]["automountServiceAccountToken"], false,
            "no service account token in the pod that holds the member's data"
        );
        assert_eq!(
            body["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"],
            "data-demo-1"
        );
        let args: Vec<&str> = body["spec"]["containers"][0]["args"]
            .as_array()
            .expect("args")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(args[0], "backup-data");
        assert!(args.contains(&"--data-dir=/var/lib/mend/data"), "{args:?}");
        assert!(
            args.contains(&"--backup-dir=/var/lib/mend/backups"),
            "{args:?}"
        );
        assert!(args.contains(&"--keep=3"), "{args:?}");
        assert_eq!(
            body["metadata"]["labels"]["mend.dev/backup-of"], "demo-1",
            "labelled for what it backs up"
        );
        assert!(
            body["metadata"]["labels"]["app.kubernetes.io/name"].is_null(),
            "not selected as a member"
        );
        assert_eq!(
            body["metadata"]["ownerReferences"][0]["kind"],
            "StorageCluster"
        );
    }

    #[tokio::test]
    async fn a_failed_backup_pod_says_why_and_is_deleted_so_the_next_try_starts_afresh() {
        let (mut platform, mut server) = platform();
        let api = tokio::spawn(async move {
            let mut failed = pod("demo-1-backup", "Failed");
            failed["status"]["message"] = json!("backup-data: move /var/lib/mend/data: denied");
            server
                .expect(Method::GET, &format!("{PODS}/demo-1-backup"))
                .await
                .ok(&failed);
            server
                .expect(Method::DELETE, &format!("{PODS}/demo-1-backup"))
                .await
                .ok(&failed);
            server
                .expect(Method::GET, &format!("{PODS}/demo-1-backup"))
                .await
                .error(404, "NotFound");
            let created = server.expect(Method::POST, PODS).await;
            let answer = created.body.clone();
            created.ok(&answer);
            server
        });
        let error = platform
            .backup_and_wipe("demo-1")
            .await
            .expect_err("the backup failed");
        assert!(error.to_string().contains("denied"), "{error}");
        assert!(matches!(
            platform.backup_and_wipe("demo-1").await,
            Ok(Op::InProgress(_))
        ));
        drop(platform);
        api.await.expect("api").no_more_requests().await;
    }

    #[tokio::test]
    async fn start_joining_unmarks_the_claim_then_applies_the_members_pod_to_join() {
        let (mut platform, mut server) = platform();
        let api = tokio::spawn(async move {
            let unmarked = server
                .expect(
                    Method::PATCH,
                    "/api/v1/namespaces/default/persistentvolumeclaims/data-demo-1",
                )
                .await;
            assert!(
                unmarked.body["metadata"]["labels"]["mend.dev/rebuild"].is_null()
                    && unmarked.body["metadata"]["labels"]
                        .as_object()
                        .is_some_and(|l| l.contains_key("mend.dev/rebuild")),
                "the rebuild mark is removed: {}",
                unmarked.body
            );
            unmarked.ok(&json!({
                "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": { "name": "data-demo-1", "namespace": "default", "labels": {} },
            }));
            let applied = server
                .expect(Method::PATCH, &format!("{PODS}/demo-1"))
                .await;
            assert!(applied.is_forced_apply(), "{}", applied.query);
            let body = applied.body.clone();
            applied.echo();
            (body, server)
        });
        platform.start_joining("demo-1").await.expect("started");
        drop(platform);
        let (body, server) = api.await.expect("api");
        server.no_more_requests().await;
        let args = body["spec"]["containers"][0]["args"].to_string();
        assert!(args.contains("--initial-cluster-state=existing"), "{args}");
        assert_eq!(
            body["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"],
            "data-demo-1"
        );
        let (platform, _server) = self::platform();
        assert_eq!(
            platform.peer_url("demo-1").expect("peer"),
            "http://demo-1.demo-peer.default.svc:2380"
        );
        assert_eq!(
            platform.endpoint("demo-1").expect("client"),
            "http://demo-1.demo-peer.default.svc:2379"
        );
    }
}
