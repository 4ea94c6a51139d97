//! Members as pods on Kubernetes, each with its own volume claim (see the controller's module
//! doc for why not a StatefulSet). Stopping a member deletes its pod and waits until it is
//! gone; backing up and wiping runs a one-off pod on the member's volume that moves the data
//! directory into the volume's backups directory (`storage-node backup-data`, keeping
//! `spec.healing.backupRetention` of them); starting it to join applies its pod with
//! `--initial-cluster-state existing`. Every operation is idempotent, so a resumed heal may
//! repeat the step it was in.

use std::time::Duration;

use crds::StorageCluster;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};

use super::{Error, Platform, Result};
use crate::controller::FIELD_MANAGER;
use crate::controller::resources::{self, BACKUP_DIR, ClusterState};

/// The members of one `StorageCluster`, as pods.
pub struct KubePlatform {
    client: Client,
    cluster: StorageCluster,
    /// Bound on waiting for a pod to go or a backup to finish.
    timeout: Duration,
    /// Pause between looks at a pod the operator waits for.
    poll: Duration,
}

impl KubePlatform {
    /// The members of `cluster`, reached through `client`.
    pub fn new(client: Client, cluster: StorageCluster) -> KubePlatform {
        KubePlatform {
            client,
            cluster,
            timeout: Duration::from_secs(300),
            poll: Duration::from_secs(1),
        }
    }

    /// Waits at most `timeout` for a pod, looking every `poll`.
    pub fn with_waits(mut self, timeout: Duration, poll: Duration) -> KubePlatform {
        self.timeout = timeout;
        self.poll = poll;
        self
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(
            self.client.clone(),
            &self.cluster.namespace().unwrap_or_default(),
        )
    }

    fn known(&self, name: &str) -> Result<()> {
        if resources::member_names(&self.cluster)
            .iter()
            .any(|m| m == name)
        {
            Ok(())
        } else {
            Err(Error::UnknownMember(name.to_string()))
        }
    }

    /// Waits until `check` says the pod `name` is as wanted (`Some(value)`).
    async fn wait_for<T>(
        &self,
        name: &str,
        what: &str,
        mut check: impl FnMut(Option<&Pod>) -> Option<Result<T>>,
    ) -> Result<T> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let pod = self.pods().get_opt(name).await.map_err(api(name))?;
            if let Some(done) = check(pod.as_ref()) {
                return done;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Timeout(format!("pod {name} {what}")));
            }
            tokio::time::sleep(self.poll).await;
        }
    }

    async fn delete(&self, name: &str) -> Result<()> {
        match self.pods().delete(name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(e) => Err(api(name)(e)),
        }
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
    async fn stop(&mut self, name: &str) -> Result<()> {
        self.known(name)?;
        self.delete(name).await?;
        self.wait_for(name, "to be deleted", |pod| pod.is_none().then_some(Ok(())))
            .await
    }

    async fn backup_and_wipe(&mut self, name: &str) -> Result<String> {
        self.known(name)?;
        let pod_name = resources::backup_pod_name(name);
        // A resumed heal finds the backup pod an earlier attempt created, and its backup name.
        let backup = match self
            .pods()
            .get_opt(&pod_name)
            .await
            .map_err(api(&pod_name))?
        {
            Some(pod) => backup_name(&pod).unwrap_or_default(),
            None => {
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
                backup
            }
        };
        self.wait_for(&pod_name, "to finish the backup", |pod| {
            let status = pod?.status.as_ref();
            match status.and_then(|s| s.phase.as_deref()) {
                Some("Succeeded") => Some(Ok(())),
                Some("Failed") => Some(Err(Error::BackupFailed(format!(
                    "pod {pod_name}: {}",
                    status
                        .and_then(|s| s.message.clone())
                        .unwrap_or_else(|| "failed".to_string())
                )))),
                _ => None,
            }
        })
        .await?;
        self.delete(&pod_name).await?;
        Ok(format!(
            "{BACKUP_DIR}/{backup} on volume {}",
            resources::pvc_name(name)
        ))
    }

    async fn start_joining(&mut self, name: &str) -> Result<()> {
        self.known(name)?;
        let pod = resources::member_pod(&self.cluster, name, ClusterState::Existing);
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
        let platform = KubePlatform::new(client, cluster("demo", 3))
            .with_waits(Duration::from_secs(5), Duration::from_millis(1));
        (platform, verifier)
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
    async fn stop_deletes_the_members_pod_and_waits_until_it_is_gone() {
        let (mut platform, mut server) = platform();
        let api = tokio::spawn(async move {
            server
                .expect(Method::DELETE, &format!("{PODS}/demo-1"))
                .await
                .ok(&pod("demo-1", "Running"));
            server
                .expect(Method::GET, &format!("{PODS}/demo-1"))
                .await
                .ok(&pod("demo-1", "Running"));
            server
                .expect(Method::GET, &format!("{PODS}/demo-1"))
                .await
                .error(404, "NotFound");
            server
        });
        platform.stop("demo-1").await.expect("stopped");
        drop(platform);
        api.await.expect("api").no_more_requests().await;
    }

    #[tokio::test]
    async fn stopping_a_member_without_a_pod_is_done_at_once() {
        let (mut platform, mut server) = platform();
        let api = tokio::spawn(async move {
            server
                .expect(Method::DELETE, &format!("{PODS}/demo-2"))
                .await
                .error(404, "NotFound");
            server
                .expect(Method::GET, &format!("{PODS}/demo-2"))
                .await
                .error(404, "NotFound");
            server
        });
        platform.stop("demo-2").await.expect("stopped");
        drop(platform);
        api.await.expect("api").no_more_requests().await;
        let (mut platform, _server) = self::platform();
        assert!(matches!(
            platform.stop("other-0").await,
            Err(Error::UnknownMember(_))
        ));
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
        let backup = platform.backup_and_wipe("demo-1").await.expect("backed up");
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
    async fn a_resumed_backup_waits_for_the_earlier_pod_and_a_failed_one_says_why() {
        let (mut platform, mut server) = platform();
        let api = tokio::spawn(async move {
            server
                .expect(Method::GET, &format!("{PODS}/demo-1-backup"))
                .await
                .ok(&pod("demo-1-backup", "Running"));
            let mut failed = pod("demo-1-backup", "Failed");
            failed["status"]["message"] = json!("backup-data: move /var/lib/mend/data: denied");
            server
                .expect(Method::GET, &format!("{PODS}/demo-1-backup"))
                .await
                .ok(&failed);
            server
        });
        let error = platform
            .backup_and_wipe("demo-1")
            .await
            .expect_err("the backup failed");
        assert!(error.to_string().contains("denied"), "{error}");
        drop(platform);
        api.await.expect("api").no_more_requests().await;
    }

    #[tokio::test]
    async fn start_joining_applies_the_members_pod_to_join_the_running_cluster() {
        let (mut platform, mut server) = platform();
        let api = tokio::spawn(async move {
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
