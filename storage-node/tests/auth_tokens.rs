//! JWT auth tokens (`--auth-token jwt,...`) side by side with etcd 3.4: a token issued by one
//! member works on every member and after a restart, carries etcd's claims, and a token signed
//! with another key is refused. Mend issues them without a raft entry. And
//! `--ready-only-with-auth`: no readiness before auth is on.

mod cluster;

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as BASE64URL;
use cluster::{Cluster, DEADLINE, Etcd, HttpResponse, Options, etcdctl, ok, wait_until};

/// An ES256 key pair as PEM files in `dir`.
fn key_pair(dir: &Path, name: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("P-256 key");
    let (public, private) = (
        dir.join(format!("{name}.pub.pem")),
        dir.join(format!("{name}.pem")),
    );
    std::fs::write(&public, key.public_key_pem()).expect("write public key");
    std::fs::write(&private, key.serialize_pem()).expect("write private key");
    (public.display().to_string(), private.display().to_string())
}

fn jwt_flag(public: &str, private: &str) -> Vec<String> {
    vec![format!(
        "--auth-token=jwt,pub-key={public},priv-key={private},sign-method=ES256,ttl=10m"
    )]
}

/// Logs in through the JSON gateway on `port`: the token.
fn login(port: u16) -> String {
    let body = r#"{"name":"root","password":"rootpw"}"#;
    let response = HttpResponse::post(port, "/v3/auth/authenticate", None, body).expect("answer");
    let json: serde_json::Value = serde_json::from_str(&response.body()).expect("JSON");
    json["token"].as_str().expect("a token").to_string()
}

/// A range of `k` through the gateway on `port` with `token`: the answer's JSON.
fn range(port: u16, token: &str) -> serde_json::Value {
    let response =
        HttpResponse::post(port, "/v3/kv/range", Some(token), r#"{"key":"aw=="}"#).expect("answer");
    serde_json::from_str(&response.body()).expect("JSON")
}

fn claims(token: &str) -> serde_json::Value {
    let payload = token.split('.').nth(1).expect("a JWT has three parts");
    serde_json::from_slice(&BASE64URL.decode(payload).expect("base64url")).expect("JSON claims")
}

/// Root with a password, a key, auth on; then a token from the first member used on the last.
fn token_story(endpoints: &[String], ports: &[u16]) -> String {
    for args in [
        &["user", "add", "root:rootpw"][..],
        &["user", "grant-role", "root", "root"],
        &["put", "k", "v"],
        &["auth", "enable"],
    ] {
        ok(etcdctl(&endpoints[0], args));
    }
    let token = login(ports[0]);
    let claims = claims(&token);
    assert_eq!(claims["username"], "root", "{claims}");
    assert!(
        claims["revision"].as_u64().is_some_and(|r| r > 0),
        "{claims}"
    );
    assert!(claims["exp"].as_u64().is_some(), "{claims}");
    let last = *ports.last().expect("a member");
    let answer = range(last, &token);
    assert_eq!(answer["kvs"][0]["value"], "dg==", "{answer}");
    token
}

#[test]
fn jwt_tokens_work_on_every_member_and_refuse_other_keys_as_in_etcd() {
    let keys = tempfile::tempdir().expect("tempdir");
    let (public, private) = key_pair(keys.path(), "cluster");
    let (_, stranger_private) = key_pair(keys.path(), "stranger");
    let flags = jwt_flag(&public, &private);

    let etcd = Etcd::start(3, &flags);
    token_story(&etcd.endpoints, &etcd.client_ports);
    let etcd_refusal = range(etcd.client_ports[0], &forged(&stranger_private));
    drop(etcd);

    let mut mend = Cluster::start(
        3,
        Options {
            extra_args: flags,
            ..Options::default()
        },
    );
    let endpoints: Vec<String> = mend.members.iter().map(|m| m.endpoint()).collect();
    let ports: Vec<u16> = mend.members.iter().map(|m| m.client_port).collect();
    let token = token_story(&endpoints, &ports);
    let refusal = range(ports[0], &forged(&stranger_private));
    assert_eq!(refusal["message"], etcd_refusal["message"], "{refusal}");
    assert_eq!(refusal["code"], etcd_refusal["code"], "{refusal}");

    // No raft entry per login: every member's index stays where it is across many logins.
    let indexes = || -> Vec<u64> {
        endpoints
            .iter()
            .map(|e| {
                let out = ok(etcdctl(e, &["endpoint", "status", "-w", "json"]));
                let json: serde_json::Value = serde_json::from_str(&out).expect("status JSON");
                json[0]["Status"]["raftIndex"].as_u64().expect("raftIndex")
            })
            .collect()
    };
    let mut before = indexes();
    assert!(wait_until(DEADLINE, || {
        let now = indexes();
        let settled = now == before && now.iter().all(|i| *i == now[0]);
        before = now;
        settled
    }));
    for port in &ports {
        login(*port);
    }
    assert_eq!(indexes(), before, "logins reached the raft log");

    // Tokens are not kept in memory: a restarted member still takes one issued before.
    assert!(mend.member(2).stop(), "clean stop");
    mend.member(2).start();
    mend.wait_healthy();
    let answer = range(ports[2], &token);
    assert_eq!(answer["kvs"][0]["value"], "dg==", "{answer}");
}

/// A token with root's claims signed by a key the cluster does not know.
fn forged(private: &str) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let public = dir.path().join("unused.pub.pem");
    // The verifying half is not needed to sign; a key pair check needs a matching one.
    let key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(private).expect("key")).expect("PEM key");
    std::fs::write(&public, key.public_key_pem()).expect("write");
    let options = storage_node::auth::jwt::JwtOptions {
        public_key: Some(public),
        private_key: Some(private.into()),
        sign_method: "ES256".into(),
        ttl: std::time::Duration::from_secs(600),
    };
    let jwt = storage_node::auth::jwt::Jwt::new(&options).expect("stranger's signer");
    jwt.sign("root", 1 << 40).expect("signed")
}

#[test]
fn a_member_that_must_not_serve_before_auth_is_ready_only_once_auth_is_on() {
    let mend = Cluster::start(
        1,
        Options {
            extra_args: vec!["--ready-only-with-auth".into()],
            ..Options::default()
        },
    );
    let member = &mend.members[0];
    let (code, body) = member.http_get("/readyz").expect("an answer");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("[-]auth_enabled failed"), "{body}");
    assert!(
        member.healthy(),
        "it has a leader and serves the operator meanwhile"
    );
    for args in [
        &["user", "add", "root:rootpw"][..],
        &["user", "grant-role", "root", "root"],
        &["auth", "enable"],
    ] {
        ok(etcdctl(&member.endpoint(), args));
    }
    assert!(wait_until(DEADLINE, || {
        member
            .http_get("/readyz")
            .is_some_and(|(code, _)| code == 200)
    }));
}
