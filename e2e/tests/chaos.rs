//! Chaos against the fixed engine, in the spirit of the original investigation: a monkey
//! drives a 3-member cluster under `operator local` (healing `ObserveOnly`, so a divergence
//! would be reported, never repaired) with random users, roles, grants and role bindings,
//! writes through random members, and SIGKILLs of random members (the operator restarts
//! them). A watcher follows the operator's status all along. With the fix, members must never
//! diverge, and every acknowledged write must be on every member at the end.
//!
//! The monkey is seeded (printed; `MEND_CHAOS_SEED=N` replays a run) and its run is bounded by
//! a number of operations, not by time.

#[path = "../../storage-node/tests/cluster/mod.rs"]
mod cluster;
#[path = "../../operator/tests/common/local_operator.rs"]
mod local_operator;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use cluster::{etcdctl, ok, wait_until};
use local_operator::{LocalOperator, settled};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Operations the monkey makes.
const OPERATIONS: usize = 240;

/// Rounds in a row a drift must show in before the watcher calls it a divergence (the
/// operator's own default for reporting one).
const DRIFT_ROUNDS: usize = 3;

/// xorshift64*: small, seedable, good enough to pick operations.
struct Monkey(u64);

impl Monkey {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn seed() -> u64 {
    match std::env::var("MEND_CHAOS_SEED") {
        Ok(seed) => seed.parse().expect("MEND_CHAOS_SEED is a number"),
        Err(_) => {
            let mut bytes = [0u8; 8];
            getrandom::fill(&mut bytes).expect("randomness");
            u64::from_le_bytes(bytes) | 1
        }
    }
}

#[test]
fn the_fixed_engine_under_chaos_never_diverges_and_keeps_every_acknowledged_write() {
    let seed = seed();
    eprintln!("chaos seed {seed} (replay with MEND_CHAOS_SEED={seed})");
    let mut monkey = Monkey(seed);
    let op = Arc::new(LocalOperator::start_with("ObserveOnly", false));
    op.wait_status("the cluster to form with auth on", |s| {
        settled(s) && op.dir().join("root-credentials").exists() && op.auth_on()
    });
    let root = op.root();
    let endpoints = op.endpoints();

    // The watcher: any status reporting a divergence fails the run.
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (op, stop) = (op.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut diverged = Vec::new();
            // Distinct statuses in a row that show a drift on settled members. One alone can
            // be a probe race (a member applied an auth change between the Status and the
            // AuthStatus call of the same round); a real drift of the fixed engine never goes
            // away, so it shows in every round after it.
            let mut drifting: Vec<String> = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                if let Some(status) = op.status() {
                    let reported = status
                        .conditions
                        .iter()
                        .any(|c| c.type_ == "Diverged" && c.status == "True");
                    let shown = format!("{status:?}");
                    if reported {
                        diverged.push(shown);
                    } else if status.auth_revision_drift > 0 && settled_enough(&status) {
                        if drifting.last() != Some(&shown) {
                            drifting.push(shown);
                        }
                        if drifting.len() >= DRIFT_ROUNDS {
                            diverged.append(&mut drifting);
                        }
                    } else {
                        drifting.clear();
                    }
                }
                // Polling interval of the watcher, not synchronisation.
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            diverged
        })
    };

    let traffic = run_monkey(&op, &mut monkey, &endpoints, &root, |_| true);

    // Quiet now: members must agree (with the fix, without any heal).
    // With a real drift this never comes, and the wait fails.
    let last = op.wait_status("the members to agree after the chaos", |s| {
        settled(s)
            && s.members.windows(2).all(|w| {
                w[0].applied_index == w[1].applied_index
                    && w[0].auth_revision.is_some()
                    && w[0].auth_revision == w[1].auth_revision
            })
    });
    stop.store(true, Ordering::SeqCst);
    let diverged = watcher.join().expect("watcher");
    eprintln!("chaos: {traffic}");
    assert!(
        diverged.is_empty(),
        "members diverged: {:?}",
        diverged.first()
    );
    assert_eq!(last.auth_revision_drift, 0, "{last:?}");
    assert_eq!(last.healing.map(|h| h.count), Some(0), "nothing was healed");
    assert_everywhere(&endpoints, &root, &traffic.acknowledged);
}

/// The same monkey with the fault switch on (restarts replay auth changes: AuthRevisions
/// drift and writes are dropped, etcd 11651) and healing `Automatic`: every drift is healed,
/// members end up agreeing, and no acknowledged write is lost. The monkey kills a member only
/// once the cluster is healed and settled again: the fix for 11651 is the engine's, and
/// healing repairs one drift at a time.
#[test]
fn the_bugged_engine_under_chaos_is_healed_and_keeps_every_acknowledged_write() {
    let seed = seed();
    eprintln!("chaos seed {seed} (replay with MEND_CHAOS_SEED={seed})");
    let mut monkey = Monkey(seed);
    let op = LocalOperator::start_with_healing(
        "Automatic",
        "    backoff:\n      minSeconds: 1\n      maxSeconds: 4\n",
        true,
    );
    op.wait_status("the cluster to form with auth on", |s| {
        settled(s) && op.dir().join("root-credentials").exists() && op.auth_on()
    });
    let root = op.root();
    let endpoints = op.endpoints();
    let traffic = run_monkey(&op, &mut monkey, &endpoints, &root, |s| {
        settled(s) && s.healing.as_ref().is_none_or(|h| h.step.is_none())
    });
    let last = op.wait_status("the members to be healed and agree after the chaos", |s| {
        settled(s)
            && s.healing.as_ref().is_none_or(|h| h.step.is_none())
            && s.members
                .windows(2)
                .all(|w| w[0].applied_index == w[1].applied_index)
    });
    let heals = last.healing.map(|h| h.count).unwrap_or_default();
    eprintln!("chaos with the fault switch: {traffic}, {heals} heals");
    assert_everywhere(&endpoints, &root, &traffic.acknowledged);
}

/// What the monkey did.
struct Traffic {
    acknowledged: BTreeSet<String>,
    failed_writes: usize,
    auth_ops: usize,
    kills: usize,
}

impl std::fmt::Display for Traffic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{OPERATIONS} operations, {} acknowledged writes, {} failed, {} auth changes, {} kills",
            self.acknowledged.len(),
            self.failed_writes,
            self.auth_ops,
            self.kills
        )
    }
}

/// Runs the monkey's operations against `endpoints` as `root`; before each kill it waits
/// until every member answers and the status satisfies `ready_to_kill` (one fault at a time).
fn run_monkey(
    op: &LocalOperator,
    monkey: &mut Monkey,
    endpoints: &[String],
    root: &str,
    mut ready_to_kill: impl FnMut(&crds::StorageClusterStatus) -> bool,
) -> Traffic {
    let mut acknowledged = BTreeSet::new();
    let (mut kills, mut failed_writes, mut auth_ops) = (0, 0, 0);
    for n in 0..OPERATIONS {
        let endpoint = &endpoints[monkey.below(endpoints.len())];
        match monkey.below(100) {
            0..60 => {
                let key = format!("chaos/{n:04}");
                if etcdctl(endpoint, &["--user", root, "put", &key, "v"])
                    .status
                    .success()
                {
                    acknowledged.insert(key);
                } else {
                    failed_writes += 1;
                }
            }
            60..90 => {
                let (user, role) = (monkey.below(5), monkey.below(5));
                let args: Vec<String> = match monkey.below(4) {
                    0 => vec!["user".into(), "add".into(), format!("u{user}:pw")],
                    1 => vec!["role".into(), "add".into(), format!("r{role}")],
                    2 => vec![
                        "role".into(),
                        "grant-permission".into(),
                        format!("r{role}"),
                        "readwrite".into(),
                        format!("p{n}/"),
                        "--prefix".into(),
                    ],
                    _ => vec![
                        "user".into(),
                        "grant-role".into(),
                        format!("u{user}"),
                        format!("r{role}"),
                    ],
                };
                let mut with_user = vec!["--user".to_string(), root.to_string()];
                with_user.extend(args);
                let args: Vec<&str> = with_user.iter().map(String::as_str).collect();
                // Refusals (a user that exists, a role that does not) are part of the traffic.
                if etcdctl(endpoint, &args).status.success() {
                    auth_ops += 1;
                }
            }
            _ => {
                // One member down at a time: wait until the last one killed is back.
                let back = wait_until(cluster::DEADLINE * 2, || {
                    op.status()
                        .is_some_and(|s| s.members.iter().all(|m| m.healthy) && ready_to_kill(&s))
                });
                assert!(back, "a killed member did not come back:\n{}", op.log());
                let name = format!("node{}", monkey.below(3) + 1);
                if let Some(pid) = op.member_pid(&name) {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                    kills += 1;
                }
            }
        }
    }

    Traffic {
        acknowledged,
        failed_writes,
        auth_ops,
        kills,
    }
}

/// Every key in `acknowledged` is on every member (read from its own copy).
fn assert_everywhere(endpoints: &[String], root: &str, acknowledged: &BTreeSet<String>) {
    for endpoint in endpoints {
        let keys = ok(etcdctl(
            endpoint,
            &[
                "--user",
                root,
                "get",
                "chaos/",
                "--prefix",
                "--keys-only",
                "--consistency=s",
            ],
        ));
        let held: BTreeSet<String> = keys
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        let missing: Vec<&String> = acknowledged.difference(&held).collect();
        assert!(
            missing.is_empty(),
            "{endpoint} lacks {} acknowledged writes, e.g. {:?}",
            missing.len(),
            missing.first()
        );
    }
}

/// Whether every member answers at one applied index (an AuthRevision difference there is a
/// drift, not a change still being applied).
fn settled_enough(status: &crds::StorageClusterStatus) -> bool {
    status.members.iter().all(|m| m.healthy)
        && status
            .members
            .windows(2)
            .all(|w| w[0].applied_index == w[1].applied_index)
}
