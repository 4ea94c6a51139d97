//! The operator on a real Kubernetes cluster: install `manifests/` (the CRD, then what `kubectl
//! apply -k manifests/` installs), create a three-member `StorageCluster` in a fresh namespace,
//! and wait until it reports `Available`.
//!
//! Needs a cluster reachable through `KUBECONFIG` (kind works) holding the images under their
//! default, versioned names (README, "Kubernetes": `docker build --target operator|storage-node`
//! and `kind load docker-image`); then it runs with
//!
//! ```sh
//! cargo test -p e2e --test kubernetes -- --ignored --nocapture
//! ```
//!
//! `MEND_OPERATOR_IMAGE` and `MEND_STORAGE_NODE_IMAGE` name other images. Without a reachable
//! cluster the test prints why and passes.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use crds::StorageCluster;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Client, Config};
use serde_json::{Value, json};

/// Field manager of what the test applies.
const MANAGER: &str = "mend-e2e";
/// Bound on any single call to the API server.
const CALL: Duration = Duration::from_secs(30);

/// A client for the cluster `KUBECONFIG` names, or why there is none.
async fn reachable_cluster() -> Result<Client, String> {
    let config = tokio::time::timeout(CALL, Config::infer())
        .await
        .map_err(|_| "reading the Kubernetes configuration timed out".to_string())?
        .map_err(|e| format!("no Kubernetes configuration ({e})"))?;
    let client = Client::try_from(config).map_err(|e| format!("no client: {e}"))?;
    match tokio::time::timeout(Duration::from_secs(10), client.apiserver_version()).await {
        Ok(Ok(_)) => Ok(client),
        Ok(Err(e)) => Err(format!("the API server did not answer: {e}")),
        Err(_) => Err("the API server did not answer within 10 s".to_string()),
    }
}

/// The API resource and scope of a manifest's kind.
fn resource(kind: &str) -> anyhow::Result<(ApiResource, bool)> {
    Ok(match kind {
        "Namespace" => (ApiResource::erase::<Namespace>(&()), false),
        "CustomResourceDefinition" => (ApiResource::erase::<CustomResourceDefinition>(&()), false),
        "ServiceAccount" => (ApiResource::erase::<ServiceAccount>(&()), true),
        "ClusterRole" => (ApiResource::erase::<ClusterRole>(&()), false),
        "ClusterRoleBinding" => (ApiResource::erase::<ClusterRoleBinding>(&()), false),
        "Role" => (ApiResource::erase::<Role>(&()), true),
        "RoleBinding" => (ApiResource::erase::<RoleBinding>(&()), true),
        "Deployment" => (ApiResource::erase::<Deployment>(&()), true),
        other => bail!("no API resource known for kind {other}"),
    })
}

/// Server-side applies one manifest object.
async fn apply(client: &Client, object: Value) -> anyhow::Result<()> {
    let kind = object["kind"].as_str().unwrap_or_default().to_string();
    let (resource, namespaced) = resource(&kind)?;
    let object: DynamicObject = serde_json::from_value(object)?;
    let name = object
        .metadata
        .name
        .clone()
        .context("a manifest without a name")?;
    let api: Api<DynamicObject> = match (&object.metadata.namespace, namespaced) {
        (Some(ns), true) => Api::namespaced_with(client.clone(), ns, &resource),
        _ => Api::all_with(client.clone(), &resource),
    };
    let params = PatchParams::apply(MANAGER).force();
    tokio::time::timeout(CALL, api.patch(&name, &params, &Patch::Apply(&object)))
        .await
        .with_context(|| format!("applying {kind} {name}: timed out"))?
        .with_context(|| format!("applying {kind} {name}"))?;
    Ok(())
}

/// The files the kustomization in `dir` lists, in its order, with those of the directories it
/// lists (which have no patches or namespace of their own in the cluster-wide install).
fn kustomized(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let kustomization: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(dir.join("kustomization.yaml"))?)?;
    let mut files = Vec::new();
    for resource in kustomization["resources"]
        .as_array()
        .context("kustomization resources")?
        .iter()
        .filter_map(Value::as_str)
    {
        let path = dir.join(resource);
        if path.is_dir() {
            files.extend(kustomized(&path)?);
        } else {
            files.push(path);
        }
    }
    Ok(files)
}

/// Installs what the README's install steps install (`crd.yaml`, then what `kubectl apply -k
/// manifests/` installs), with the operator image overridden by `MEND_OPERATOR_IMAGE` when set.
async fn install(client: &Client) -> anyhow::Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests");
    let files = std::iter::once(dir.join("crd.yaml")).chain(kustomized(&dir)?);
    for file in files {
        let docs: Vec<Value> = serde_saphyr::from_multiple(&std::fs::read_to_string(&file)?)?;
        for mut doc in docs.into_iter().filter(|d| !d.is_null()) {
            if let (Some("Deployment"), Ok(image)) =
                (doc["kind"].as_str(), std::env::var("MEND_OPERATOR_IMAGE"))
            {
                doc["spec"]["template"]["spec"]["containers"][0]["image"] = json!(image);
                doc["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] =
                    json!("IfNotPresent");
            }
            apply(client, doc).await?;
        }
    }
    Ok(())
}

/// Polls `check` every two seconds until it returns `Some`, or fails after `within`.
async fn wait_for<T, F, Fut>(what: &str, within: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Whether the StorageCluster reports `Available=True`, and its status for the log.
async fn available(api: &Api<StorageCluster>, name: &str) -> anyhow::Result<Option<()>> {
    let cluster = tokio::time::timeout(CALL, api.get(name)).await??;
    let status = cluster.status.unwrap_or_default();
    eprintln!(
        "phase {:?}, {} of {} ready, leader {:?}",
        status.phase, status.ready_replicas, cluster.spec.replicas, status.leader
    );
    let up = status
        .conditions
        .iter()
        .any(|c| c.type_ == crds::condition::AVAILABLE && c.status == "True");
    Ok(up.then_some(()))
}

async fn run(client: Client) -> anyhow::Result<()> {
    install(&client).await?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    wait_for(
        "the StorageCluster CRD to be established",
        Duration::from_secs(60),
        || async {
            let crd = tokio::time::timeout(CALL, crds.get("storageclusters.mend.dev")).await??;
            let established = crd
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            Ok(established.then_some(()))
        },
    )
    .await?;

    let namespace = format!("mend-e2e-{}", std::process::id());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: kube::api::ObjectMeta {
            name: Some(namespace.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    tokio::time::timeout(CALL, namespaces.create(&PostParams::default(), &ns)).await??;

    let mut spec: crds::StorageClusterSpec = serde_json::from_value(json!({ "replicas": 3 }))?;
    if let Ok(image) = std::env::var("MEND_STORAGE_NODE_IMAGE") {
        spec.image = image;
    }
    let mut cluster = StorageCluster::new("e2e", spec);
    cluster.metadata.namespace = Some(namespace.clone());
    let clusters: Api<StorageCluster> = Api::namespaced(client.clone(), &namespace);
    tokio::time::timeout(CALL, clusters.create(&PostParams::default(), &cluster)).await??;

    let outcome = wait_for(
        "the StorageCluster to be Available",
        Duration::from_secs(600),
        || available(&clusters, "e2e"),
    )
    .await;
    // Best effort: the namespace goes either way, with the cluster (the running operator's
    // finalizer lets it go) and its volume claims (kept by the cluster's deletion, not by the
    // namespace's).
    let _ = tokio::time::timeout(
        CALL,
        namespaces.delete(&namespace, &DeleteParams::default()),
    )
    .await;
    outcome
}

#[tokio::test]
#[ignore = "needs a cluster (KUBECONFIG)"]
async fn a_storage_cluster_becomes_available_on_a_real_cluster() -> anyhow::Result<()> {
    let client = match reachable_cluster().await {
        Ok(client) => client,
        Err(why) => {
            eprintln!("skipped: no reachable Kubernetes cluster: {why}");
            return Ok(());
        }
    };
    run(client).await
}
