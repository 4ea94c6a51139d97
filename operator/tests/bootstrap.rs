//! Turning auth on in a real member: the operator's root and nobody else's. A root someone
//! created before auth was on is replaced (their password stops working), other users make the
//! cluster untrusted and auth stays off, and a cluster whose auth is on with a root the
//! operator cannot log in as is untrusted too.

#[path = "../../storage-node/tests/cluster/mod.rs"]
mod cluster;

use std::time::Duration;

use cluster::{Cluster, Options, etcdctl, ok};
use operator::bootstrap::{Error, enable_auth};

const TIMEOUT: Duration = Duration::from_secs(10);

fn enable(cluster: &Cluster, password: &str) -> Result<bool, Error> {
    enable_proving(cluster, password, true)
}

fn enable_proving(cluster: &Cluster, password: &str, prove: bool) -> Result<bool, Error> {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let endpoint = cluster.members[0].endpoint();
    runtime.block_on(enable_auth(
        &endpoint, "root", password, prove, None, TIMEOUT,
    ))
}

fn can_log_in(cluster: &Cluster, password: &str) -> bool {
    let user = format!("--user=root:{password}");
    etcdctl(&cluster.members[0].endpoint(), &[&user, "get", "k"])
        .status
        .success()
}

fn auth_on(cluster: &Cluster) -> bool {
    // Without credentials, a user list is refused only when auth is on.
    !cluster.etcdctl(0, &["user", "list"]).status.success()
}

#[test]
fn a_fresh_cluster_gets_the_operators_root_once() {
    let cluster = Cluster::start(1, Options::default());
    assert!(enable(&cluster, "ours").expect("enabled"), "turned on");
    assert!(auth_on(&cluster) && can_log_in(&cluster, "ours"));
    assert!(
        !enable(&cluster, "ours").expect("already on"),
        "nothing to do"
    );
}

#[test]
fn a_root_created_before_auth_is_replaced_with_the_operators() {
    let cluster = Cluster::start(1, Options::default());
    ok(cluster.etcdctl(0, &["user", "add", "root:theirs"]));
    ok(cluster.etcdctl(0, &["user", "grant-role", "root", "root"]));
    assert!(enable(&cluster, "ours").expect("enabled"));
    assert!(can_log_in(&cluster, "ours"));
    assert!(
        !can_log_in(&cluster, "theirs"),
        "the stranger's password still works"
    );
}

#[test]
fn other_users_before_auth_leave_it_off_and_the_cluster_untrusted() {
    let cluster = Cluster::start(1, Options::default());
    ok(cluster.etcdctl(0, &["user", "add", "mallory:pw"]));
    ok(cluster.etcdctl(0, &["user", "grant-role", "mallory", "root"]));
    match enable(&cluster, "ours") {
        Err(Error::Untrusted { why, .. }) => assert!(why.contains("mallory"), "{why}"),
        other => panic!("expected untrusted, got {other:?}"),
    }
    assert!(
        !auth_on(&cluster),
        "auth was turned on for a cluster someone else set up"
    );
}

#[test]
fn auth_on_with_a_root_the_operator_cannot_log_in_as_is_untrusted() {
    let cluster = Cluster::start(1, Options::default());
    for args in [
        &["user", "add", "root:theirs"][..],
        &["user", "grant-role", "root", "root"],
        &["auth", "enable"],
    ] {
        ok(cluster.etcdctl(0, args));
    }
    match enable(&cluster, "ours") {
        Err(Error::Untrusted { why, .. }) => assert!(why.contains("cannot log in"), "{why}"),
        other => panic!("expected untrusted, got {other:?}"),
    }
    // Without the proof (credentials proven before) auth being on is all it checks.
    assert!(!enable_proving(&cluster, "ours", false).expect("auth is on"));
}
