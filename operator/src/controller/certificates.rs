//! The certificates of a cluster with `spec.tls`, made sure of at the start of each reconcile,
//! before any member pod is created: the Secret of each member, of the operator and of the
//! users' clients ([`tls::holders`]), issued by the operator's own CA (`<cluster>-ca`, made
//! once) or requested from cert-manager with `Certificate` resources (`spec.tls.certManager`).
//!
//! What it never does, each a rule with a test: overwrite or take over a Secret or
//! `Certificate` it did not make (one of the same name without the cluster's labels is refused
//! with what to do); make a new CA while certificates the old one signed remain (members on
//! certificates of two CAs do not trust each other: the cluster would split as they restart);
//! reissue a certificate before its last month unless its Secret is incomplete. A renewal
//! replaces the Secret's data at the `resourceVersion` read, so a concurrent change is never
//! overwritten (the reconcile fails and reads again).

use std::collections::BTreeMap;

use crds::{IssuerRef, StorageCluster};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Client, Resource, ResourceExt};
use time::OffsetDateTime;
use tracing::info;

use super::resources;
use super::{Error, FIELD_MANAGER, Result};
use crate::client::ClientCert;
use crate::pki;
use crate::platform::kube::tls::{self, Digests, Holder};

/// The cluster's certificates, as this reconcile found or made them.
pub struct Certificates {
    /// The operator's client certificate, with the CA it trusts members by.
    pub operator: ClientCert,
    /// What each member's current certificate Secret holds; a member missing has none issued
    /// yet (cert-manager has not written its Secret).
    pub members: BTreeMap<String, Digests>,
    /// Secrets issued or renewed by this reconcile.
    pub issued: Vec<String>,
}

impl Certificates {
    /// The members still waiting for a certificate, among `names`.
    pub fn waiting<'n>(&self, names: &'n [String]) -> Vec<&'n str> {
        names
            .iter()
            .filter(|m| !self.members.contains_key(*m))
            .map(String::as_str)
            .collect()
    }
}

fn refused(name: &str, reason: impl Into<String>) -> Error {
    Error::Certificate {
        name: name.to_string(),
        reason: reason.into(),
        waiting: false,
    }
}

fn not_ours(cluster: &StorageCluster, name: &str, kind: &str) -> Error {
    refused(
        name,
        format!(
            "a {kind} of that name exists and was not made by the operator (it lacks the labels \
             of {selector}); the operator never takes one over: delete or rename it",
            selector = resources::owned_selector(cluster)
        ),
    )
}

/// The certificates of `cluster` (which has `spec.tls`), made or requested where missing and
/// renewed where due.
pub async fn ensure(client: &Client, cluster: &StorageCluster) -> Result<Certificates> {
    let namespace = cluster.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let holders = tls::holders(cluster);
    let mut found = Vec::with_capacity(holders.len());
    for holder in &holders {
        found.push(secrets.get_opt(&holder.secret_name(cluster)).await?);
    }
    if let Some(secret) = found
        .iter()
        .flatten()
        .find(|s| !resources::made_for(cluster, &s.metadata))
    {
        return Err(not_ours(cluster, &secret.name_any(), "Secret"));
    }
    let issuer = cluster
        .spec
        .tls
        .as_ref()
        .and_then(|t| t.cert_manager.as_ref())
        .map(|c| &c.issuer_ref);
    let issued = match issuer {
        Some(issuer) => {
            request(client, cluster, &holders, issuer).await?;
            Vec::new()
        }
        None => issue_own(&secrets, cluster, &holders, &mut found).await?,
    };
    let mut members = BTreeMap::new();
    let mut operator = None;
    for (holder, secret) in holders.iter().zip(&found) {
        let Some((cert, key, ca)) = secret.as_ref().and_then(tls::certificate_of) else {
            continue;
        };
        match holder {
            Holder::Member(member) => {
                if let Some(digests) = secret.as_ref().and_then(Digests::of) {
                    members.insert(member.clone(), digests);
                }
            }
            Holder::Operator => {
                let name = holder.secret_name(cluster);
                let cert =
                    ClientCert::from_pem(&name, ca.as_bytes(), cert.as_bytes(), key.as_bytes())
                        .map_err(|why| refused(&name, why))?;
                operator = Some(cert);
            }
            Holder::Client => {}
        }
    }
    let Some(operator) = operator else {
        return Err(Error::Certificate {
            name: Holder::Operator.secret_name(cluster),
            reason: "not issued yet by cert-manager (see `kubectl describe certificate` for \
                     why): the operator cannot reach the members without it"
                .to_string(),
            waiting: true,
        });
    };
    Ok(Certificates {
        operator,
        members,
        issued,
    })
}

/// The cert-manager `Certificate` of each holder, applied when missing or changed (a new
/// issuer): cert-manager then writes, and renews, the Secrets.
async fn request(
    client: &Client,
    cluster: &StorageCluster,
    holders: &[Holder],
    issuer: &IssuerRef,
) -> Result<()> {
    let api: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &cluster.namespace().unwrap_or_default(),
        &tls::certificate_resource(),
    );
    for holder in holders {
        let desired = tls::certificate(cluster, holder, issuer);
        let name = desired.name_any();
        let live = api.get_opt(&name).await?;
        if let Some(live) = &live {
            if !resources::made_for(cluster, &live.metadata) {
                return Err(not_ours(cluster, &name, "cert-manager Certificate"));
            }
            if resources::applied_hash(&live.metadata) == resources::applied_hash(desired.meta()) {
                continue;
            }
        }
        let params = PatchParams::apply(FIELD_MANAGER).force();
        match api.patch(&name, &params, &Patch::Apply(&desired)).await {
            Ok(_) => info!(certificate = %name, "requested from cert-manager"),
            Err(kube::Error::Api(status)) if status.code == 404 => {
                return Err(refused(
                    &name,
                    "the API server has no cert-manager Certificate resource \
                     (certificates.cert-manager.io/v1): install cert-manager, or remove \
                     spec.tls.certManager to have the operator issue the certificates",
                ));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The operator's own CA, read or made, and each holder's certificate issued from it where
/// missing, incomplete or due. `found` (each holder's Secret, as read) is updated with what
/// was written. Returns the Secrets written.
async fn issue_own(
    secrets: &Api<Secret>,
    cluster: &StorageCluster,
    holders: &[Holder],
    found: &mut [Option<Secret>],
) -> Result<Vec<String>> {
    let ca_name = tls::ca_secret_name(cluster);
    let create = PostParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..PostParams::default()
    };
    let ca = match secrets.get_opt(&ca_name).await? {
        Some(secret) => {
            let part = |key: &str| {
                resources::secret_text(&secret, key).ok_or_else(|| {
                    refused(
                        &ca_name,
                        format!("no PEM under key {key}: restore the CA Secret"),
                    )
                })
            };
            pki::Ca::from_pem(part(tls::CA_KEY)?, part(tls::CA_KEY_KEY)?)
                .map_err(|e| refused(&ca_name, format!("{e}: restore the CA Secret")))?
        }
        None => {
            let signed: Vec<String> = holders
                .iter()
                .zip(found.iter())
                .filter(|(_, s)| s.is_some())
                .map(|(h, _)| h.secret_name(cluster))
                .collect();
            if !signed.is_empty() {
                return Err(refused(
                    &ca_name,
                    format!(
                        "not found, while certificates it signed remain ({}): restore it from \
                         your backup; the operator does not make a new CA under running members, \
                         as members on certificates of two CAs do not trust each other",
                        signed.join(", ")
                    ),
                ));
            }
            let name = format!(
                "{}/{}",
                cluster.namespace().unwrap_or_default(),
                cluster.name_any()
            );
            let ca = pki::Ca::generate(&name).map_err(|e| refused(&ca_name, e.to_string()))?;
            // A create: a CA Secret made meanwhile is refused (409, read next time), never
            // overwritten.
            secrets
                .create(&create, &tls::ca_secret(cluster, &ca.to_pem()))
                .await?;
            info!(secret = %ca_name, "made the cluster's CA");
            ca
        }
    };
    let now = OffsetDateTime::now_utc();
    let mut written = Vec::new();
    for (holder, slot) in holders.iter().zip(found.iter_mut()) {
        let name = holder.secret_name(cluster);
        if let Some((cert, _, ca_cert)) = slot.as_ref().and_then(tls::certificate_of) {
            if !tls::same_ca(ca_cert, ca.cert_pem()) {
                return Err(refused(
                    &name,
                    format!(
                        "signed by another CA than the one in Secret {ca_name}: members on \
                         certificates of two CAs do not trust each other; restore {ca_name}"
                    ),
                ));
            }
            if !pki::needs_renewal(cert, now) {
                continue;
            }
        }
        let pem = tls::issue(cluster, holder, &ca).map_err(|e| refused(&name, e.to_string()))?;
        let secret = tls::certificate_secret(cluster, holder, &pem, ca.cert_pem());
        let stored = match slot.as_ref() {
            None => secrets.create(&create, &secret).await?,
            Some(live) => {
                let patch = serde_json::json!({
                    "metadata": { "resourceVersion": live.metadata.resource_version },
                    "data": secret.data,
                });
                let params = PatchParams {
                    field_manager: Some(FIELD_MANAGER.to_string()),
                    ..PatchParams::default()
                };
                secrets.patch(&name, &params, &Patch::Merge(&patch)).await?
            }
        };
        info!(secret = %name, renewed = slot.is_some(), "issued a certificate");
        *slot = Some(stored);
        written.push(name);
    }
    Ok(written)
}
