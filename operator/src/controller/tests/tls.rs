//! `spec.tls` against the mocked API server: the certificates a first reconcile issues and
//! what the member pods start on, renewal rolled out one member at a time while a quorum
//! answers, and what the operator refuses to do (overwrite a Secret it did not make, make a new
//! CA under certificates the old one signed, restart members onto another CA), and the
//! cert-manager `Certificate`s it requests instead of issuing.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use http::Method;
use k8s_openapi::api::core::v1::Secret;
use serde_json::{Value, json};

use super::super::Context;
use super::super::fixtures::{ApiServerVerifier, cluster, observation};
use super::{Applied, LISTS, NS, condition, reconciled};
use crate::detector::Round;
use crate::pki;
use crate::platform::kube::tls::{self, Digests, Holder};

/// The certificate Secrets, in the order the operator reads them.
const HOLDERS: [&str; 5] = [
    "demo-0-tls",
    "demo-1-tls",
    "demo-2-tls",
    "demo-operator-tls",
    "demo-client-tls",
];
const MEMBERS: [&str; 3] = ["demo-0", "demo-1", "demo-2"];

fn tls_cluster() -> crds::StorageCluster {
    let mut sc = cluster("demo", 3);
    sc.spec.tls = Some(crds::Tls::default());
    sc
}

fn secret_of(value: &Value) -> Secret {
    serde_json::from_value(value.clone()).expect("a Secret")
}

fn text(value: &Value, key: &str) -> String {
    super::resources::secret_text(&secret_of(value), key)
        .unwrap_or_else(|| panic!("no {key} in {value}"))
        .to_string()
}

/// The Common Name and names of the certificate under `tls.crt` in `value`.
fn subject(value: &Value) -> (Option<String>, Vec<String>) {
    let pem = text(value, tls::CERT_KEY);
    let (_, der) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("PEM");
    storage_node::tls::subject(&rustls_pki_types::CertificateDer::from(der.contents))
}

/// What a first reconcile left: the cluster's objects as stored.
struct Stored {
    applied: Applied,
    /// The certificate Secrets by name, and the CA Secret.
    secrets: BTreeMap<String, Value>,
    ca: Value,
}

impl Stored {
    fn ca(&self) -> pki::Ca {
        pki::Ca::from_pem(
            &text(&self.ca, tls::CA_KEY),
            &text(&self.ca, tls::CA_KEY_KEY),
        )
        .expect("the CA")
    }

    /// The member pods as listed: Ready, each started on `started[i]`'s certificate (absent
    /// when `None`).
    fn pods(&self, started: [Option<&Value>; 3]) -> Vec<Value> {
        let pods = self.applied.items("pods");
        pods.into_iter()
            .zip(started)
            .filter_map(|(mut pod, secret)| {
                let secret = secret?;
                let name = pod["metadata"]["name"].as_str().expect("name").to_string();
                let digests = Digests::of(&secret_of(secret)).expect("complete");
                pod["metadata"]["uid"] = json!(format!("uid-{name}"));
                pod["metadata"]["annotations"][tls::TLS_DIGEST] = json!(digests.cert);
                pod["metadata"]["annotations"][tls::TLS_CA_DIGEST] = json!(digests.ca);
                pod["status"] = json!({ "conditions": [{ "type": "Ready", "status": "True" }] });
                Some(pod)
            })
            .collect()
    }
}

impl ApiServerVerifier {
    /// The operator's reads of the certificate Secrets, answered from `secrets` (404 for a
    /// name it does not hold).
    async fn certificate_reads(&mut self, secrets: &BTreeMap<String, Value>) {
        for name in HOLDERS {
            let seen = self
                .expect(Method::GET, &format!("{NS}/secrets/{name}"))
                .await;
            match secrets.get(name) {
                Some(secret) => seen.ok(secret),
                None => seen.error(404, "NotFound"),
            }
        }
    }

    /// The reads a reconcile of a stored TLS cluster starts with: its root Secret `root`, the
    /// certificate Secrets from `secrets`, then, with the operator's own CA, the CA Secret
    /// `ca`.
    async fn stored_reads(
        &mut self,
        root: &Value,
        secrets: &BTreeMap<String, Value>,
        ca: Option<&Value>,
    ) {
        self.expect(Method::GET, &format!("{NS}/secrets/demo-root"))
            .await
            .ok(root);
        self.certificate_reads(secrets).await;
        if let Some(ca) = ca {
            self.expect(Method::GET, &format!("{NS}/secrets/demo-ca"))
                .await
                .ok(ca);
        }
    }

    /// A create of Secret `name` (never an apply: an existing one is not overwritten).
    async fn secret_created(&mut self, name: &str) -> Value {
        let seen = self.expect(Method::POST, &format!("{NS}/secrets")).await;
        assert_eq!(seen.body["metadata"]["name"], name);
        assert!(
            seen.query.contains("fieldManager=mend-operator"),
            "{}",
            seen.query
        );
        let mut body = seen.body.clone();
        body["metadata"]["resourceVersion"] = json!("7");
        seen.respond(http::StatusCode::CREATED, &body);
        body
    }
}

/// A first reconcile of a new TLS cluster: what it stored.
async fn first_tls_reconcile() -> (Stored, std::sync::Arc<super::super::fixtures::FakeMembers>) {
    let (ctx, mut verifier, members) = Context::test();
    let server = tokio::spawn(async move {
        verifier
            .expect(Method::GET, &format!("{NS}/secrets/demo-root"))
            .await
            .error(404, "NotFound");
        let root = verifier.created_secret().await;
        verifier.certificate_reads(&BTreeMap::new()).await;
        verifier
            .expect(Method::GET, &format!("{NS}/secrets/demo-ca"))
            .await
            .error(404, "NotFound");
        let ca = verifier.secret_created("demo-ca").await;
        let mut secrets = BTreeMap::new();
        for name in HOLDERS {
            secrets.insert(name.to_string(), verifier.secret_created(name).await);
        }
        let note = verifier.event("CertificatesIssued", "Normal").await;
        assert!(
            note.contains("demo-1-tls") && note.contains("demo-ca"),
            "{note}"
        );
        for (_, path) in LISTS {
            verifier
                .expect(Method::GET, path)
                .await
                .ok(&json!({ "apiVersion": "v1", "kind": "List", "metadata": {}, "items": [] }));
        }
        let children = verifier.children_created().await;
        let status = verifier.status().await;
        let applied = Applied {
            secret: root,
            children,
            status,
        };
        (
            Stored {
                applied,
                secrets,
                ca,
            },
            verifier,
        )
    });
    let stored = reconciled(tls_cluster(), ctx, server).await;
    (stored, members)
}

#[tokio::test]
async fn a_tls_cluster_gets_a_ca_and_a_certificate_per_member_and_its_members_start_on_them() {
    let (stored, members) = first_tls_reconcile().await;
    // The CA outlives the cluster like the data; the certificates are reissued from it.
    assert!(
        stored.ca["metadata"]["ownerReferences"].is_null(),
        "{}",
        stored.ca
    );
    let ca = stored.ca();
    for name in HOLDERS {
        let secret = &stored.secrets[name];
        assert_eq!(secret["type"], "kubernetes.io/tls", "{name}");
        assert_eq!(
            secret["metadata"]["ownerReferences"][0]["kind"],
            "StorageCluster"
        );
        assert_eq!(
            text(secret, tls::CA_KEY).trim(),
            ca.cert_pem().trim(),
            "{name}"
        );
    }
    let (cn, names) = subject(&stored.secrets["demo-1-tls"]);
    assert_eq!(cn.as_deref(), Some("demo-1"));
    assert!(
        names.contains(&"demo-1.demo-peer.default.svc".to_string()),
        "{names:?}"
    );
    let (cn, names) = subject(&stored.secrets["demo-operator-tls"]);
    assert_eq!((cn.as_deref(), names.len()), (Some(pki::OPERATOR_CN), 0));

    let pods = stored.applied.items("pods");
    for (pod, member) in pods.iter().zip(MEMBERS) {
        let container = &pod["spec"]["containers"][0];
        let args: Vec<&str> = container["args"]
            .as_array()
            .expect("args")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        for flag in [
            "--listen-client-urls=https://0.0.0.0:2379",
            "--listen-peer-urls=https://0.0.0.0:2380",
            "--client-cert-auth",
            "--peer-client-cert-auth",
            "--trusted-ca-file=/etc/mend/tls/ca.crt",
            "--peer-cert-file=/etc/mend/tls/tls.crt",
        ] {
            assert!(args.contains(&flag), "{member}: {flag} in {args:?}");
        }
        let initial = args
            .iter()
            .find(|a| a.starts_with("--initial-cluster="))
            .expect("--initial-cluster");
        assert!(!initial.contains("http://"), "{initial}");
        let volume = pod["spec"]["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .find(|v| v["name"] == "tls")
            .expect("the tls volume")
            .clone();
        assert_eq!(volume["secret"]["secretName"], format!("{member}-tls"));
        assert_eq!(volume["secret"]["defaultMode"], 0o440);
        // Started on the certificate its Secret holds.
        let digests =
            Digests::of(&secret_of(&stored.secrets[&format!("{member}-tls")])).expect("complete");
        assert_eq!(
            pod["metadata"]["annotations"][tls::TLS_DIGEST],
            digests.cert
        );
        assert_eq!(
            pod["metadata"]["annotations"][tls::TLS_CA_DIGEST],
            digests.ca
        );
    }
    // The operator probes over TLS with its own certificate.
    let seen = members.credentials.lock().expect("credentials");
    let operator = &stored.secrets["demo-operator-tls"];
    let expected = crate::client::ClientCert::from_pem(
        "demo-operator-tls",
        text(operator, tls::CA_KEY).as_bytes(),
        text(operator, tls::CERT_KEY).as_bytes(),
        text(operator, tls::KEY_KEY).as_bytes(),
    )
    .expect("operator certificate");
    assert_eq!(seen.last().and_then(|c| c.tls.as_ref()), Some(&expected));
}

/// Every member answering, one leader, auth on.
fn healthy(members: &super::super::fixtures::FakeMembers) {
    members.auth_enabled.store(true, Ordering::SeqCst);
    *members.round.lock().expect("round") = Round {
        members: (1..=3).map(|id| observation(id, id == 1, 5)).collect(),
    };
}

#[tokio::test]
async fn renewed_member_certificates_restart_one_member_at_a_time_while_a_quorum_answers() {
    let (stored, _) = first_tls_reconcile().await;
    let ca = stored.ca();
    let sc = tls_cluster();
    // demo-1 and demo-2 run on certificates in their last ten days.
    let mut secrets = stored.secrets.clone();
    for member in ["demo-1", "demo-2"] {
        let holder = Holder::Member(member.to_string());
        let pem = ca
            .issue_pem_for(
                &holder.common_name(),
                &holder.hosts(&sc),
                pki::Usage::ServerAndClient,
                std::time::Duration::from_secs(10 * 24 * 3600),
            )
            .expect("issued");
        let mut secret =
            serde_json::to_value(tls::certificate_secret(&sc, &holder, &pem, ca.cert_pem()))
                .expect("json");
        secret["metadata"]["resourceVersion"] = json!("7");
        secrets.insert(format!("{member}-tls"), secret);
    }
    let running = secrets.clone();

    // Second reconcile: both renewed; demo-1 (the first) restarted, demo-2 not.
    let (ctx, mut verifier, members) = Context::test();
    healthy(&members);
    let applied = stored.applied.clone();
    let (pods, ca_secret, due) = (
        stored.pods([
            Some(&running["demo-0-tls"]),
            Some(&running["demo-1-tls"]),
            Some(&running["demo-2-tls"]),
        ]),
        stored.ca.clone(),
        secrets.clone(),
    );
    let server = tokio::spawn(async move {
        verifier
            .stored_reads(&applied.secret, &due, Some(&ca_secret))
            .await;
        let mut renewed = BTreeMap::new();
        for name in ["demo-1-tls", "demo-2-tls"] {
            let seen = verifier
                .expect(Method::PATCH, &format!("{NS}/secrets/{name}"))
                .await;
            // A replace of the data at the version read: a concurrent change is not lost.
            assert_eq!(seen.body["metadata"]["resourceVersion"], "7", "{name}");
            let mut secret = due[name].clone();
            secret["data"] = seen.body["data"].clone();
            secret["metadata"]["resourceVersion"] = json!("8");
            seen.ok(&secret);
            renewed.insert(name.to_string(), secret);
        }
        verifier.event("CertificatesIssued", "Normal").await;
        verifier.lists(&applied, pods).await;
        let seen = verifier
            .expect(Method::POST, &format!("{NS}/pods/demo-1/eviction"))
            .await;
        // An eviction, so the PodDisruptionBudget is checked now; only the pod looked at.
        assert_eq!(seen.body["kind"], "Eviction");
        assert_eq!(
            seen.body["deleteOptions"]["preconditions"]["uid"],
            "uid-demo-1"
        );
        seen.respond(
            http::StatusCode::CREATED,
            &json!({ "apiVersion": "v1", "kind": "Status", "status": "Success" }),
        );
        let note = verifier.event("MemberRestarted", "Normal").await;
        assert!(note.contains("demo-1"), "{note}");
        verifier.status().await;
        (renewed, verifier)
    });
    let renewed = reconciled(tls_cluster(), ctx, server).await;
    for (name, secret) in &renewed {
        let expires = pki::expiry(&text(secret, tls::CERT_KEY)).expect("expiry");
        assert!(
            !pki::needs_renewal(
                &text(secret, tls::CERT_KEY),
                time::OffsetDateTime::now_utc()
            ),
            "{name} expires {expires}"
        );
    }
    secrets.extend(renewed.clone());

    // Third reconcile: demo-1's pod is gone and comes back on its new certificate; demo-2 is
    // still on its old one, but waits: demo-1 is not back yet (the probe alone would not
    // know: a terminating member may still answer).
    let (ctx, mut verifier, members) = Context::test();
    healthy(&members);
    let applied = stored.applied.clone();
    let pods = stored.pods([
        Some(&running["demo-0-tls"]),
        None,
        Some(&running["demo-2-tls"]),
    ]);
    let (ca_secret, current) = (stored.ca.clone(), secrets.clone());
    let server = tokio::spawn(async move {
        verifier
            .stored_reads(&applied.secret, &current, Some(&ca_secret))
            .await;
        verifier.lists(&applied, pods).await;
        let pod = verifier.apply(&format!("{NS}/pods/demo-1"), "Pod").await;
        verifier.event("MembersCreated", "Normal").await;
        verifier.status().await;
        (pod, verifier)
    });
    let pod = reconciled(tls_cluster(), ctx, server).await;
    let digests = Digests::of(&secret_of(&renewed["demo-1-tls"])).expect("complete");
    assert_eq!(
        pod["metadata"]["annotations"][tls::TLS_DIGEST],
        digests.cert
    );
}

/// A reconcile of the stored TLS cluster whose certificate reads find `secrets` and CA
/// `ca`, refused with `reason`: the note of its Warning Event. Nothing is written but the
/// status and the Event.
async fn refused(secrets: BTreeMap<String, Value>, ca: Option<Value>, reason: &str) -> String {
    let (ctx, mut verifier, _) = Context::test();
    let root = resources_root();
    let reason = reason.to_string();
    let server = tokio::spawn(async move {
        verifier.stored_reads(&root, &secrets, None).await;
        if secrets
            .values()
            .all(|s| s["metadata"]["labels"].is_object())
        {
            let seen = verifier
                .expect(Method::GET, &format!("{NS}/secrets/demo-ca"))
                .await;
            match &ca {
                Some(ca) => seen.ok(ca),
                None => seen.error(404, "NotFound"),
            }
        }
        let status = verifier.status().await;
        assert_eq!(condition(&status, "Progressing")["reason"], reason.as_str());
        let note = verifier.event(&reason, "Warning").await;
        (note, verifier)
    });
    reconciled(tls_cluster(), ctx, server).await
}

fn resources_root() -> Value {
    serde_json::to_value(super::resources::root_secret(&tls_cluster(), "pw")).expect("json")
}

#[tokio::test]
async fn a_lost_ca_is_not_replaced_while_certificates_it_signed_remain() {
    let (stored, _) = first_tls_reconcile().await;
    let note = refused(stored.secrets.clone(), None, "CertificatesUnusable").await;
    assert!(note.contains("restore it"), "{note}");
    // A CA Secret replaced by another CA: its certificates are not reissued from it.
    let other = pki::Ca::generate("elsewhere").expect("CA");
    let replaced =
        serde_json::to_value(tls::ca_secret(&tls_cluster(), &other.to_pem())).expect("json");
    let note = refused(stored.secrets, Some(replaced), "CertificatesUnusable").await;
    assert!(note.contains("another CA"), "{note}");
}

#[tokio::test]
async fn a_secret_the_operator_did_not_make_is_never_overwritten() {
    let mine = json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": { "name": "demo-1-tls", "namespace": "default" },
        "data": {},
    });
    let note = refused(
        BTreeMap::from([("demo-1-tls".to_string(), mine)]),
        None,
        "CertificatesUnusable",
    )
    .await;
    assert!(note.contains("never takes one over"), "{note}");
}

#[tokio::test]
async fn with_cert_manager_the_operator_requests_certificates_and_waits_for_their_secrets() {
    let mut sc = tls_cluster();
    sc.spec.tls = Some(
        serde_json::from_value(json!({
            "certManager": { "issuerRef": { "name": "corp", "kind": "ClusterIssuer" } }
        }))
        .expect("tls"),
    );
    let (ctx, mut verifier, _) = Context::test();
    let root = resources_root();
    let server = tokio::spawn(async move {
        verifier.stored_reads(&root, &BTreeMap::new(), None).await;
        let certificates = "/apis/cert-manager.io/v1/namespaces/default/certificates";
        for name in HOLDERS {
            verifier
                .expect(Method::GET, &format!("{certificates}/{name}"))
                .await
                .error(404, "NotFound");
            let seen = verifier
                .expect(Method::PATCH, &format!("{certificates}/{name}"))
                .await;
            assert!(seen.is_forced_apply(), "{}", seen.query);
            assert_eq!(seen.body["spec"]["secretName"], name);
            assert_eq!(seen.body["spec"]["issuerRef"]["name"], "corp");
            assert_eq!(seen.body["spec"]["issuerRef"]["kind"], "ClusterIssuer");
            seen.echo();
        }
        // No CA of its own is made, and without its own certificate nothing is probed.
        let status = verifier.status().await;
        let progressing = condition(&status, "Progressing");
        assert_eq!(progressing["reason"], "CertificatesNotIssued");
        assert!(
            progressing["message"]
                .as_str()
                .is_some_and(|m| m.contains("demo-operator-tls")),
            "{progressing}"
        );
        verifier.event("CertificatesNotIssued", "Warning").await;
        ((), verifier)
    });
    reconciled(sc, ctx, server).await;
}

#[tokio::test]
async fn certificates_from_another_ca_are_not_rolled_out_under_running_members() {
    let (stored, _) = first_tls_reconcile().await;
    let mut sc = tls_cluster();
    sc.spec.tls = Some(
        serde_json::from_value(json!({
            "certManager": { "issuerRef": { "name": "other-ca" } }
        }))
        .expect("tls"),
    );
    // The issuer now signs with another CA: cert-manager reissued every Secret from it.
    let other = pki::Ca::generate("other").expect("CA");
    let mut reissued = BTreeMap::new();
    for holder in tls::holders(&sc) {
        let pem = tls::issue(&sc, &holder, &other).expect("issued");
        let secret = tls::certificate_secret(&sc, &holder, &pem, other.cert_pem());
        reissued.insert(
            holder.secret_name(&sc),
            serde_json::to_value(secret).expect("json"),
        );
    }
    let issuer = sc
        .spec
        .tls
        .as_ref()
        .and_then(|t| t.cert_manager.clone())
        .expect("issuer");
    let requested: Vec<Value> = tls::holders(&sc)
        .iter()
        .map(|h| serde_json::to_value(tls::certificate(&sc, h, &issuer.issuer_ref)).expect("json"))
        .collect();
    // The members still run on the first CA's certificates.
    let pods = stored.pods([
        Some(&stored.secrets["demo-0-tls"]),
        Some(&stored.secrets["demo-1-tls"]),
        Some(&stored.secrets["demo-2-tls"]),
    ]);
    let (ctx, mut verifier, members) = Context::test();
    healthy(&members);
    let applied = stored.applied.clone();
    let server = tokio::spawn(async move {
        verifier
            .stored_reads(&applied.secret, &reissued, None)
            .await;
        for (name, certificate) in HOLDERS.iter().zip(&requested) {
            verifier
                .expect(
                    Method::GET,
                    &format!("/apis/cert-manager.io/v1/namespaces/default/certificates/{name}"),
                )
                .await
                .ok(certificate);
        }
        verifier.lists(&applied, pods).await;
        // No pod deleted: a stall, told once.
        let note = verifier
            .event("CertificateAuthorityChanged", "Warning")
            .await;
        assert!(note.contains("would not trust each other"), "{note}");
        let status = verifier.status().await;
        assert_eq!(
            condition(&status, "Progressing")["reason"],
            "CertificateAuthorityChanged"
        );
        ((), verifier)
    });
    reconciled(sc, ctx, server).await;
}
