//! The certificates of a `StorageCluster` with `spec.tls`, as pure functions of it: who holds
//! one ([`Holder`]: each member, the operator, the users' clients), the Secret each lives in,
//! the names it is issued for, and either the Secrets the operator fills from its own CA
//! (`<cluster>-ca`) or the cert-manager `Certificate` resources that have cert-manager fill
//! them. Nothing here talks to the API server; the controller's `tls` module does.
//!
//! Every certificate Secret has the layout cert-manager writes (`kubernetes.io/tls`:
//! `tls.crt`, `tls.key`, `ca.crt`), so a member pod mounts its Secret the same way whoever
//! issued it. A member reads its certificate at start; [`TLS_DIGEST`] on its pod names the
//! certificate it started with, so a renewed one (a different digest) is picked up by a
//! restart, one member at a time.

use std::collections::BTreeMap;

use crds::{IssuerRef, StorageCluster};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Pod, Secret, SecretVolumeSource, Volume, VolumeMount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};

use super::resources::{self, child_meta, data_meta};
use crate::pki::{self, Pem, Usage};

/// Where a member pod mounts its certificate Secret.
pub const TLS_MOUNT: &str = "/etc/mend/tls";
/// Annotation on a member pod: the digest of the certificate (and CA) it started with.
pub const TLS_DIGEST: &str = "mend.dev/tls-digest";
/// Annotation on a member pod: the digest of the CA it started trusting.
pub const TLS_CA_DIGEST: &str = "mend.dev/tls-ca-digest";
/// The certificate's key in a `kubernetes.io/tls` Secret.
pub const CERT_KEY: &str = "tls.crt";
/// The private key's key in a `kubernetes.io/tls` Secret.
pub const KEY_KEY: &str = "tls.key";
/// The CA certificate's key in the certificate Secrets (as cert-manager writes it) and in the
/// CA Secret.
pub const CA_KEY: &str = "ca.crt";
/// The CA private key's key in the CA Secret.
pub const CA_KEY_KEY: &str = "ca.key";

/// Who holds a certificate of the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Holder {
    /// A member: it serves clients and peers with it and presents it to the peers it dials.
    Member(String),
    /// The operator, probing and healing as a client.
    Operator,
    /// The users' clients (etcdctl, applications, kube-apiserver).
    Client,
}

impl Holder {
    /// The Secret holding its certificate.
    pub fn secret_name(&self, cluster: &StorageCluster) -> String {
        match self {
            Holder::Member(member) => format!("{member}-tls"),
            Holder::Operator => format!("{}-operator-tls", cluster.name_any()),
            Holder::Client => format!("{}-client-tls", cluster.name_any()),
        }
    }

    /// Its certificate's Common Name: with auth on and client-cert-auth, the user a client
    /// without a token acts as.
    pub fn common_name(&self) -> String {
        match self {
            Holder::Member(member) => member.clone(),
            Holder::Operator => pki::OPERATOR_CN.to_string(),
            Holder::Client => pki::CLIENT_CN.to_string(),
        }
    }

    /// The names its certificate is valid for: none for a client.
    pub fn hosts(&self, cluster: &StorageCluster) -> Vec<String> {
        match self {
            Holder::Member(member) => member_hosts(cluster, member),
            Holder::Operator | Holder::Client => Vec::new(),
        }
    }

    fn usage(&self) -> Usage {
        match self {
            Holder::Member(_) => Usage::ServerAndClient,
            Holder::Operator | Holder::Client => Usage::Client,
        }
    }
}

/// Every holder of a certificate in `cluster`: its members in order, the operator, the clients.
pub fn holders(cluster: &StorageCluster) -> Vec<Holder> {
    resources::member_names(cluster)
        .into_iter()
        .map(Holder::Member)
        .chain([Holder::Operator, Holder::Client])
        .collect()
}

/// The Secret of the operator's own CA (without cert-manager).
pub fn ca_secret_name(cluster: &StorageCluster) -> String {
    format!("{}-ca", cluster.name_any())
}

/// The names a member is reached by: its stable name under the peer Service (short and
/// fully qualified; peers dial `<member>.<cluster>-peer.<namespace>.svc`), the client Service
/// (clients dial that), and the loopback addresses (etcdctl inside the pod).
pub fn member_hosts(cluster: &StorageCluster, member: &str) -> Vec<String> {
    let namespace = cluster.namespace().unwrap_or_default();
    let under = |service: String| {
        [
            service.clone(),
            format!("{service}.{namespace}"),
            format!("{service}.{namespace}.svc"),
            format!("{service}.{namespace}.svc.cluster.local"),
        ]
    };
    under(format!(
        "{member}.{}",
        resources::peer_service_name(cluster)
    ))
    .into_iter()
    .chain(under(resources::client_service_name(cluster)))
    .chain(["localhost".to_string(), "127.0.0.1".to_string()])
    .collect()
}

/// The Secret of the operator's CA: never owned by the cluster (a CA replaced under running
/// members would split them, as old and new certificates do not trust each other), deleted
/// with the data under the `Delete` retention policy only.
pub fn ca_secret(cluster: &StorageCluster, ca: &Pem) -> Secret {
    Secret {
        metadata: data_meta(cluster, ca_secret_name(cluster)),
        type_: Some("Opaque".to_string()),
        data: Some(BTreeMap::from([
            (CA_KEY.to_string(), ByteString(ca.cert.clone().into_bytes())),
            (
                CA_KEY_KEY.to_string(),
                ByteString(ca.key.clone().into_bytes()),
            ),
        ])),
        ..Secret::default()
    }
}

/// The certificate `cert` of `holder`, signed by the CA `ca_cert`, as a `kubernetes.io/tls`
/// Secret owned by the cluster (issued again from the CA whenever needed).
pub fn certificate_secret(
    cluster: &StorageCluster,
    holder: &Holder,
    cert: &Pem,
    ca_cert: &str,
) -> Secret {
    Secret {
        metadata: child_meta(cluster, holder.secret_name(cluster)),
        type_: Some("kubernetes.io/tls".to_string()),
        data: Some(BTreeMap::from([
            (
                CERT_KEY.to_string(),
                ByteString(cert.cert.clone().into_bytes()),
            ),
            (
                KEY_KEY.to_string(),
                ByteString(cert.key.clone().into_bytes()),
            ),
            (CA_KEY.to_string(), ByteString(ca_cert.as_bytes().to_vec())),
        ])),
        ..Secret::default()
    }
}

/// Issues `holder`'s certificate from `ca`.
pub fn issue(cluster: &StorageCluster, holder: &Holder, ca: &pki::Ca) -> pki::Result<Pem> {
    ca.issue_pem(
        &holder.common_name(),
        &holder.hosts(cluster),
        holder.usage(),
    )
}

/// cert-manager's `Certificate` kind.
pub fn certificate_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("cert-manager.io", "v1", "Certificate"),
        "certificates",
    )
}

/// The cert-manager `Certificate` of `holder`, signed by `issuer`, owned by the cluster: the
/// same lifetime and renewal point as the operator's own certificates, a new key at each
/// renewal, and the Secret labelled for the cluster.
pub fn certificate(cluster: &StorageCluster, holder: &Holder, issuer: &IssuerRef) -> DynamicObject {
    let usages: &[&str] = match holder.usage() {
        Usage::ServerAndClient => &[
            "digital signature",
            "key encipherment",
            "server auth",
            "client auth",
        ],
        Usage::Client => &["digital signature", "key encipherment", "client auth"],
    };
    let hours = |d: std::time::Duration| format!("{}h", d.as_secs() / 3600);
    let mut spec = serde_json::json!({
        "secretName": holder.secret_name(cluster),
        "commonName": holder.common_name(),
        "usages": usages,
        "duration": hours(pki::CERT_VALIDITY),
        "renewBefore": hours(pki::RENEW_BEFORE),
        "privateKey": { "algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always" },
        "issuerRef": { "name": issuer.name, "kind": issuer.kind, "group": issuer.group },
        "secretTemplate": { "labels": resources::labels(cluster) },
    });
    let hosts = holder.hosts(cluster);
    let (ips, names): (Vec<String>, Vec<String>) = hosts
        .into_iter()
        .partition(|h| h.parse::<std::net::IpAddr>().is_ok());
    if !names.is_empty() {
        spec["dnsNames"] = serde_json::json!(names);
    }
    if !ips.is_empty() {
        spec["ipAddresses"] = serde_json::json!(ips);
    }
    let mut object = DynamicObject::new(&holder.secret_name(cluster), &certificate_resource())
        .data(serde_json::json!({ "spec": spec }));
    object.metadata = child_meta(cluster, holder.secret_name(cluster));
    resources::stamp(object)
}

/// The certificate, key and CA of a certificate Secret, when all three are there.
pub fn certificate_of(secret: &Secret) -> Option<(&str, &str, &str)> {
    let text = |key| resources::secret_text(secret, key);
    Some((text(CERT_KEY)?, text(KEY_KEY)?, text(CA_KEY)?))
}

/// What a certificate Secret holds, as digests: what a member pod started on it notes in its
/// [`TLS_DIGEST`] and [`TLS_CA_DIGEST`] annotations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Digests {
    /// Of the certificate and its CA (a new key always comes with a new certificate).
    pub cert: String,
    /// Of the CA alone.
    pub ca: String,
}

impl Digests {
    /// Of the certificate Secret `secret`, when it is complete. The CA's is of its subject and
    /// public key, not of its PEM: a CA certificate renewed on the same key (cert-manager's
    /// CA issuers do that by default) verifies the same certificates, so members on either
    /// trust each other.
    pub fn of(secret: &Secret) -> Option<Digests> {
        let (cert, _, ca) = certificate_of(secret)?;
        Some(Digests {
            cert: resources::digest(&(cert, ca)),
            ca: resources::digest(&ca_identity(ca)?),
        })
    }

    /// What a member pod (its metadata) notes it started on; `None` without both annotations.
    pub fn of_pod(meta: &ObjectMeta) -> Option<Digests> {
        let annotations = meta.annotations.as_ref()?;
        Some(Digests {
            cert: annotations.get(TLS_DIGEST)?.clone(),
            ca: annotations.get(TLS_CA_DIGEST)?.clone(),
        })
    }

    /// `pod` (a member's), noting that it starts on these.
    pub fn annotate(&self, mut pod: Pod) -> Pod {
        let annotations = pod.metadata.annotations.get_or_insert_with(BTreeMap::new);
        annotations.insert(TLS_DIGEST.to_string(), self.cert.clone());
        annotations.insert(TLS_CA_DIGEST.to_string(), self.ca.clone());
        pod
    }
}

/// Whether the CA certificates `a` and `b` are one CA to members: the same subject and public
/// key (see [`Digests::of`]).
pub fn same_ca(a: &str, b: &str) -> bool {
    matches!((ca_identity(a), ca_identity(b)), (Some(a), Some(b)) if a == b)
}

/// The subject and public key of the first certificate in `pem` (a CA bundle's first).
fn ca_identity(pem: &str) -> Option<(Vec<u8>, Vec<u8>)> {
    let (_, der) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    let cert = der.parse_x509().ok()?;
    Some((
        cert.subject().as_raw().to_vec(),
        cert.public_key().raw.to_vec(),
    ))
}

/// The member's flags for TLS on both ports, with client certificates required on both, from
/// the Secret mounted at [`TLS_MOUNT`].
pub fn member_args() -> Vec<String> {
    let file = |key: &str| format!("{TLS_MOUNT}/{key}");
    pki::member_flags(&file(CERT_KEY), &file(KEY_KEY), &file(CA_KEY))
}

/// The member pod's volume of its certificate Secret: readable by the member's group only
/// (the pod's `fsGroup`), not by the world.
pub fn volume(cluster: &StorageCluster, member: &str) -> Volume {
    Volume {
        name: "tls".to_string(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(Holder::Member(member.to_string()).secret_name(cluster)),
            default_mode: Some(0o440),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// Where [`volume`] is mounted, read-only.
pub fn volume_mount() -> VolumeMount {
    VolumeMount {
        name: "tls".to_string(),
        mount_path: TLS_MOUNT.to_string(),
        read_only: Some(true),
        ..VolumeMount::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::fixtures::cluster;

    #[test]
    fn a_member_certificate_names_every_way_peers_and_clients_reach_it() {
        let sc = cluster("demo", 3);
        let hosts = member_hosts(&sc, "demo-1");
        for host in [
            "demo-1.demo-peer.default.svc",
            "demo-1.demo-peer.default.svc.cluster.local",
            "demo-client",
            "demo-client.default.svc",
            "127.0.0.1",
        ] {
            assert!(hosts.contains(&host.to_string()), "{host} in {hosts:?}");
        }
        // The URL peers and the operator dial is covered.
        let url = resources::peer_url(&sc, "demo-1");
        let (host, _) = storage_node::tls::url_host_port(&url).expect("URL");
        assert!(hosts.contains(&host.to_string()), "{url}");
    }

    #[test]
    fn a_cert_manager_certificate_asks_for_the_holders_names_usages_and_secret() {
        let sc = cluster("demo", 3);
        let issuer = IssuerRef {
            name: "corp-ca".to_string(),
            kind: "ClusterIssuer".to_string(),
            group: "cert-manager.io".to_string(),
        };
        let member = certificate(&sc, &Holder::Member("demo-0".to_string()), &issuer);
        let json = serde_json::to_value(&member).expect("json");
        assert_eq!(json["apiVersion"], "cert-manager.io/v1");
        assert_eq!(json["kind"], "Certificate");
        let spec = &json["spec"];
        assert_eq!(spec["secretName"], "demo-0-tls");
        assert_eq!(spec["commonName"], "demo-0");
        assert_eq!(spec["issuerRef"]["kind"], "ClusterIssuer");
        assert_eq!(spec["renewBefore"], "720h");
        assert!(
            spec["usages"]
                .as_array()
                .expect("usages")
                .contains(&"server auth".into())
        );
        assert!(
            spec["dnsNames"]
                .as_array()
                .expect("names")
                .contains(&"demo-0.demo-peer.default.svc".into())
        );
        assert_eq!(spec["ipAddresses"], serde_json::json!(["127.0.0.1"]));
        assert_eq!(
            json["metadata"]["ownerReferences"][0]["kind"],
            "StorageCluster"
        );
        let operator =
            serde_json::to_value(certificate(&sc, &Holder::Operator, &issuer)).expect("json");
        assert_eq!(
            operator["spec"]["usages"],
            serde_json::json!(["digital signature", "key encipherment", "client auth"])
        );
        assert!(operator["spec"]["dnsNames"].is_null());
        assert_eq!(operator["spec"]["secretName"], "demo-operator-tls");
    }

    #[test]
    fn a_renewed_certificate_changes_the_digest_and_the_same_one_does_not() {
        let sc = cluster("demo", 3);
        let ca = pki::Ca::generate("demo").expect("CA");
        let holder = Holder::Member("demo-0".to_string());
        let first = issue(&sc, &holder, &ca).expect("issued");
        let secret = certificate_secret(&sc, &holder, &first, ca.cert_pem());
        let digests = Digests::of(&secret).expect("complete");
        let renewed = issue(&sc, &holder, &ca).expect("issued again");
        let again = certificate_secret(&sc, &holder, &renewed, ca.cert_pem());
        let renewed = Digests::of(&again).expect("complete");
        assert_ne!(digests.cert, renewed.cert);
        assert_eq!(digests.ca, renewed.ca, "the same CA");
        // A CA certificate issued again on the same key and name is the same CA to members.
        let key = rcgen::KeyPair::generate().expect("key");
        let ca_cert = |days: i64| {
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, "corp CA");
            params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(days);
            params.self_signed(&key).expect("CA").pem()
        };
        let with_ca = |pem: String| {
            let mut secret = again.clone();
            secret
                .data
                .as_mut()
                .expect("data")
                .insert(CA_KEY.to_string(), ByteString(pem.into_bytes()));
            Digests::of(&secret).expect("complete")
        };
        let (first, renewed_ca) = (with_ca(ca_cert(60)), with_ca(ca_cert(120)));
        assert_eq!(first.ca, renewed_ca.ca, "same CA");
        assert_ne!(
            first.cert, renewed_ca.cert,
            "a new CA file is still a restart"
        );
        let mut recertified = again.clone();
        let other = pki::Ca::generate("demo").expect("another CA");
        recertified.data.as_mut().expect("data").insert(
            CA_KEY.to_string(),
            ByteString(other.cert_pem().as_bytes().to_vec()),
        );
        assert_ne!(
            Digests::of(&recertified).expect("complete").ca,
            renewed.ca,
            "another key"
        );
        let mut partial = again.clone();
        partial.data.as_mut().expect("data").remove(CA_KEY);
        assert_eq!(
            Digests::of(&partial),
            None,
            "no CA, no certificate to start on"
        );
        // A pod started on it says so, and one without the annotations says nothing.
        let pod = renewed.annotate(Pod::default());
        assert_eq!(Digests::of_pod(&pod.metadata), Some(renewed));
        assert_eq!(Digests::of_pod(&ObjectMeta::default()), None);
    }
}
