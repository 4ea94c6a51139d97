//! `operator local` as users run it: the binary supervising real storage-node processes, its
//! work directory (`status.json`, `root-credentials`, `backups/`, `heal.json`) and its signals.
//! The etcd 11651 trigger is played with the fault switch on through the real `etcdctl`; every
//! test ends by checking that every acknowledged write is readable from every member.

#[path = "../../storage-node/tests/cluster/mod.rs"]
mod cluster;
#[path = "common/local_operator.rs"]
mod local_operator;

use std::path::Path;
use std::process::{Command, Stdio};

use cluster::{DEADLINE, etcdctl, ok, storage_node_bin, wait_until};
use crds::{Phase, StorageClusterStatus};
use local_operator::{LocalOperator, assert_everywhere, max_applied, settled};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The seed's trigger through etcdctl: a role and a grant with auth on, node1 killed and
/// restarted by the operator before any write, then writes through every member. Returns
/// the acknowledged keys.
fn play_seed(op: &LocalOperator) -> Vec<String> {
    play_seed_then(op, || {})
}

/// [`play_seed`], running `before_writes` once the drift exists and before any write.
fn play_seed_then(op: &LocalOperator, before_writes: impl FnOnce()) -> Vec<String> {
    op.wait_status("the cluster to form with auth on", |s| {
        settled(s) && op.dir().join("root-credentials").exists() && op.auth_on()
    });
    let root = op.root();
    let endpoints = op.endpoints();
    // Auth is on: without credentials a write is refused.
    let refused = op.etcdctl(&endpoints[0], &["put", "anonymous", "x"]);
    assert!(!refused.status.success(), "auth is not on");
    let start = op.status().map(|s| max_applied(&s)).unwrap_or_default();
    ok(op.etcdctl(&endpoints[1], &["--user", &root, "role", "add", "app"]));
    ok(op.etcdctl(
        &endpoints[1],
        &[
            "--user",
            &root,
            "role",
            "grant-permission",
            "app",
            "read",
            "x",
        ],
    ));
    // Two logins, the role and the grant: four entries. The grant must be on node1's disk
    // before the kill, as the seed needs (members sync applied entries within 100 ms), so the
    // status after the one that shows it applied everywhere is awaited too.
    let applied = |s: &StorageClusterStatus| {
        settled(s)
            && s.members.iter().all(|m| m.applied_index >= start + 4)
            && s.members
                .windows(2)
                .all(|w| w[0].applied_index == w[1].applied_index)
    };
    op.wait_status("every member to apply the grant", applied);
    op.wait_rewrites(1);
    let old_pid = op.member_pid("node1").expect("node1 pid");
    let _ = kill(Pid::from_raw(old_pid), Signal::SIGKILL);
    op.wait_status("the operator to restart the crashed node1", |s| {
        s.members.iter().all(|m| m.healthy) && op.member_pid("node1").is_some_and(|p| p != old_pid)
    });
    before_writes();
    let mut acknowledged = Vec::new();
    for (i, endpoint) in endpoints.iter().enumerate() {
        for n in 0..5 {
            let key = format!("k{i}-{n}");
            ok(op.etcdctl(endpoint, &["--user", &root, "put", &key, "v"]));
            acknowledged.push(key);
        }
    }
    acknowledged
}

/// The Healing condition's message.
fn healing_message(s: &StorageClusterStatus) -> String {
    s.conditions
        .iter()
        .find(|c| c.type_ == "Healing")
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

/// Waits until the heal is over and the members agree, then checks it rebuilt one member
/// (one backup) and lost no acknowledged write.
fn finish_one_rebuild(op: &LocalOperator, acknowledged: &[String]) {
    op.wait_status("the heal to finish", |s| {
        s.healing
            .as_ref()
            .is_some_and(|h| h.count >= 1 && h.step.is_none())
            && settled(s)
    });
    assert_eq!(op.backups(), 1);
    assert_everywhere(op, acknowledged);
}

/// The name of the member the heal in progress rebuilds from.
fn source_of(op: &LocalOperator) -> String {
    let record = op.heal_record().expect("a heal in progress");
    let source = record["plan"]["source"].as_u64().expect("source");
    op.name_of(source).expect("the source is a member")
}

#[test]
fn local_operator_heals_the_seed_and_every_acknowledged_write_survives() {
    let mut op = LocalOperator::start("Automatic");
    let acknowledged = play_seed(&op);
    let healed = op.wait_status("the drift to be healed", |s| {
        s.healing.as_ref().is_some_and(|h| h.count >= 1) && settled(s)
    });
    assert_eq!(healed.phase, Phase::Available);
    assert!(
        healed
            .healing
            .as_ref()
            .and_then(|h| h.last_result.as_deref())
            .is_some_and(|r| r.starts_with("succeeded")),
        "{healed:#?}"
    );
    assert_eq!(op.backups(), 1, "node1's wiped data is kept as a backup");
    assert_everywhere(&op, &acknowledged);
    let metrics = op.metrics();
    for line in [
        "mend_heals_total{cluster=\"seed\",result=\"succeeded\"} 1",
        "mend_cluster_auth_revision_drift{cluster=\"seed\"} 0",
        "mend_cluster_members_ready{cluster=\"seed\"} 3",
        "mend_divergence_detection_seconds_count{cluster=\"seed\"} 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line} in\n{metrics}"
        );
    }
    assert!(!op.dir().join("heal.json").exists());

    // Ctrl-C stops the operator and its members cleanly.
    let pids: Vec<i32> = ["node1", "node2", "node3"]
        .iter()
        .filter_map(|n| op.member_pid(n))
        .collect();
    assert!(op.interrupt(), "operator did not exit 0:\n{}", op.log());
    assert!(
        pids.iter().all(|p| !op.runs_member(*p)),
        "members left running"
    );
}

#[test]
fn an_operator_killed_at_every_step_boundary_resumes_and_backs_up_once() {
    let mut op = LocalOperator::start("Automatic");
    let acknowledged = play_seed(&op);
    let heal_file = op.dir().join("heal.json");
    assert!(
        wait_until(DEADLINE, || heal_file.exists()),
        "no heal started:\n{}",
        op.log()
    );
    // SIGKILL the operator right after each step boundary it reaches, then start it again.
    let mut kills = 0;
    let mut boundary = 1;
    while heal_file.exists() {
        let reached = wait_until(DEADLINE * 2, || {
            op.heal_record()
                .is_none_or(|p| p["next"].as_u64().is_some_and(|n| n >= boundary))
        });
        assert!(reached, "step {boundary} never ran:\n{}", op.log());
        let Some(record) = op.heal_record() else {
            break;
        };
        op.kill_operator();
        kills += 1;
        boundary = record["next"].as_u64().unwrap_or(boundary) + 1;
        op.spawn();
    }
    assert!(kills >= 3, "the heal ran past the kills: {kills}");
    let healed = op.wait_status("the resumed heal to finish", |s| {
        s.healing.as_ref().is_some_and(|h| h.count >= 1) && settled(s)
    });
    assert!(!heal_file.exists());
    assert_eq!(
        op.backups(),
        1,
        "a heal resumed {kills} times backs up once"
    );
    assert!(
        op.full_log()
            .contains("stopping a member an earlier operator left running")
    );
    assert_eq!(healed.auth_revision_drift, 0);
    assert_everywhere(&op, &acknowledged);
}

/// What four writers did: writes attempted, failed attempts (each write is retried up to 5
/// times) and the keys acknowledged.
struct Load {
    attempted: usize,
    failed: usize,
    written: Vec<String>,
}

/// Runs `work` while four writers write (as `root`) through `endpoints`: each through its own
/// member, the fourth through all of them, each write retried up to 5 times, at most `limit`
/// writes each; returns what `work` returned and what the writers did.
fn under_load<T>(
    root: &str,
    endpoints: &[String],
    limit: usize,
    work: impl FnOnce() -> T,
) -> (T, Load) {
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let done = &done;
                scope.spawn(move || {
                    let through = match w {
                        3 => endpoints.join(","),
                        i => endpoints[i].clone(),
                    };
                    let mut load = Load {
                        attempted: 0,
                        failed: 0,
                        written: Vec::new(),
                    };
                    while !done.load(std::sync::atomic::Ordering::SeqCst) && load.attempted < limit
                    {
                        let key = format!("load-{w}-{}", load.attempted);
                        load.attempted += 1;
                        let ok = (0..5).any(|_| {
                            let put = etcdctl(&through, &["--user", root, "put", &key, "v"]);
                            load.failed += usize::from(!put.status.success());
                            put.status.success()
                        });
                        if ok {
                            load.written.push(key);
                        }
                    }
                    load
                })
            })
            .collect();
        let result = work();
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut all = Load {
            attempted: 0,
            failed: 0,
            written: Vec::new(),
        };
        for writer in writers {
            let load = writer.join().expect("writer");
            all.attempted += load.attempted;
            all.failed += load.failed;
            all.written.extend(load.written);
        }
        (result, all)
    })
}

#[test]
fn a_heal_under_load_from_several_writers_loses_no_acknowledged_write() {
    let op = LocalOperator::start("Automatic");
    let mut acknowledged = play_seed(&op);
    let root = op.root();
    let endpoints = op.endpoints();
    let healed = |op: &LocalOperator| {
        op.status().is_some_and(|s| {
            s.healing
                .as_ref()
                .is_some_and(|h| h.count >= 1 && h.step.is_none())
                && settled(&s)
        })
    };
    // Four writers until the heal is over and the members agree again.
    let (finished, load) = under_load(&root, &endpoints, 2000, || {
        wait_until(DEADLINE * 2, || healed(&op))
    });
    assert!(finished, "the heal never finished:\n{}", op.log());
    let Load {
        attempted,
        failed,
        written,
    } = load;
    let heal_seconds = op
        .metrics()
        .lines()
        .find_map(|l| l.strip_prefix("mend_heal_duration_seconds_sum{cluster=\"seed\"} "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_default();
    eprintln!(
        "a heal under 4 writers: {attempted} writes attempted, {} acknowledged, {failed} failed \
         attempts (retried), heal {heal_seconds:.1} s",
        written.len()
    );
    acknowledged.extend(written);
    op.wait_status("the members to agree after the writes", settled);
    assert_everywhere(&op, &acknowledged);
}

#[test]
fn observe_only_reports_the_plan_and_changes_nothing() {
    let op = LocalOperator::start("ObserveOnly");
    let _ = play_seed(&op);
    let observed = op.wait_status("the plan to be reported", |s| {
        s.conditions.iter().any(|c| {
            c.type_ == "Diverged" && c.status == "True" && c.message.contains("the plan would be")
        })
    });
    assert_eq!(observed.phase, Phase::Diverged);
    assert_eq!(observed.auth_revision_drift, 1);
    // Several probes later, still nothing was done.
    op.wait_rewrites(3);
    let later = op.status().expect("status");
    assert_eq!(later.auth_revision_drift, 1);
    assert_eq!(later.healing.map(|h| h.count), Some(0));
    assert_eq!(op.backups(), 0);
}

#[test]
fn an_unreachable_source_holds_the_heal_back_with_a_reason_until_it_answers() {
    let op = LocalOperator::start("Automatic");
    let acknowledged = play_seed(&op);
    // node2 and node3 hold the lowest AuthRevision (the sources); freeze node2 so it neither
    // answers nor dies.
    let frozen = op.member_pid("node2").expect("node2 pid");
    kill(Pid::from_raw(frozen), Signal::SIGSTOP).expect("SIGSTOP");
    let waiting = op.wait_status("the reason not to heal", |s| {
        s.conditions.iter().any(|c| {
            c.type_ == "Diverged" && c.status == "True" && c.message.contains("not healing: node2")
        })
    });
    assert!(waiting.members.iter().any(|m| !m.healthy));
    assert_eq!(op.backups(), 0, "nothing is rebuilt while a member is out");
    kill(Pid::from_raw(frozen), Signal::SIGCONT).expect("SIGCONT");
    op.wait_status("the heal once every member answers", |s| {
        s.healing.as_ref().is_some_and(|h| h.count >= 1) && settled(s)
    });
    assert_everywhere(&op, &acknowledged);
}

/// Runs `operator local` on `spec` and returns its exit code and stderr.
fn run_local_on(spec: &str, workdir: &Path) -> (Option<i32>, String) {
    let path = workdir.with_extension("yaml");
    std::fs::write(&path, spec).expect("spec");
    let output = Command::new(env!("CARGO_BIN_EXE_operator"))
        .arg("local")
        .arg(&path)
        .arg("--workdir")
        .arg(workdir)
        .arg("--storage-node")
        .arg(storage_node_bin())
        .stdin(Stdio::null())
        .output()
        .expect("operator runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_bad_spec_is_refused_with_what_to_fix_and_nothing_starts() {
    let work = tempfile::tempdir().expect("workdir");
    let header =
        "apiVersion: mend.dev/v1alpha1\nkind: StorageCluster\nmetadata:\n  name: bad\nspec:\n";
    let typo = work.path().join("typo");
    let (code, stderr) = run_local_on(&format!("{header}  replica: 3\n"), &typo);
    assert_eq!(code, Some(1));
    assert!(stderr.contains(".spec.replica"), "{stderr}");
    assert!(!typo.exists(), "nothing may be created");
    let even = work.path().join("even");
    let (code, stderr) = run_local_on(&format!("{header}  replicas: 2\n"), &even);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("replicas must be odd"), "{stderr}");
    assert!(!even.join("node1").exists(), "no member may be created");
}

#[test]
fn disabled_healing_probes_health_only_and_never_acts() {
    let op = LocalOperator::start("Disabled");
    let _ = play_seed(&op);
    op.wait_rewrites(4);
    let status = op.status().expect("status");
    assert!(status.members.iter().all(|m| m.healthy), "{status:#?}");
    assert!(
        status
            .members
            .iter()
            .all(|m| m.hash_kv.is_none() && m.auth_revision.is_none()),
        "nothing is compared: {status:#?}"
    );
    assert_eq!(status.healing.map(|h| h.count), Some(0));
    assert_eq!(op.backups(), 0);
    assert!(!op.dir().join("heal.json").exists());
}

#[test]
fn a_member_that_lost_its_data_is_rebuilt_as_a_new_member() {
    let op = LocalOperator::start_with("Automatic", false);
    op.wait_status("the cluster to form with auth on", |s| {
        settled(s) && op.dir().join("root-credentials").exists() && op.auth_on()
    });
    let root = op.root();
    let endpoints = op.endpoints();
    let mut acknowledged = Vec::new();
    for n in 0..5 {
        let key = format!("before-{n}");
        ok(etcdctl(
            &endpoints[n % 3],
            &["--user", &root, "put", &key, "v"],
        ));
        acknowledged.push(key);
    }
    let old_id = op.status().expect("status").members[2].member_id.clone();

    // node3 dies and its data is gone. The operator is frozen meanwhile, so it cannot restart
    // node3 on its data first.
    let operator = Pid::from_raw(op.pid().expect("operator runs"));
    kill(operator, Signal::SIGSTOP).expect("SIGSTOP");
    let node3 = op.member_pid("node3").expect("node3 pid");
    let _ = kill(Pid::from_raw(node3), Signal::SIGKILL);
    assert!(wait_until(DEADLINE, || !op.runs_member(node3)));
    std::fs::remove_dir_all(op.dir().join("node3")).expect("wipe node3");
    kill(operator, Signal::SIGCONT).expect("SIGCONT");

    let rebuilt = op.wait_status("node3 to be rebuilt as a new member", |s| {
        settled(s)
            && s.members[2].member_id != old_id
            && s.healing.as_ref().is_some_and(|h| h.count >= 1)
    });
    assert!(rebuilt.members[2].healthy);
    assert!(
        op.full_log()
            .contains("member lost its data: rebuilding it as a new member")
    );
    assert_everywhere(&op, &acknowledged);
}

#[test]
fn an_auth_revision_that_cannot_be_read_is_unknown_and_no_healthy_member_is_wiped() {
    // node1's AuthStatus fails while node1/fail-auth-status exists. node1 holds the highest
    // AuthRevision and drops writes: read as 0, it would be the "most complete" member and the
    // healthy ones would be rebuilt from it.
    let op = LocalOperator::start_args(
        "Automatic",
        true,
        &["--unsafe-test-fail-auth-status-if=fail-auth-status"],
    );
    let fault = op.dir().join("node1").join("fail-auth-status");
    let acknowledged = play_seed_then(&op, || std::fs::write(&fault, "").expect("fault on"));
    let waiting = op.wait_status("the reason not to heal", |s| {
        s.conditions.iter().any(|c| {
            c.type_ == "Diverged"
                && c.status == "True"
                && c.message
                    .contains("not healing: AuthRevision of node1 unknown")
        })
    });
    assert_eq!(waiting.members[0].auth_revision, None, "unknown, not zero");
    assert!(
        waiting.members[0]
            .unknown
            .as_deref()
            .is_some_and(|u| u.contains("injected fault")),
        "{waiting:#?}"
    );
    op.wait_rewrites(3);
    assert_eq!(op.backups(), 0, "nothing is rebuilt on incomplete evidence");
    assert!(!op.dir().join("heal.json").exists());

    std::fs::remove_file(&fault).expect("fault off");
    op.wait_status("the heal once node1 is fully observed", |s| {
        s.healing.as_ref().is_some_and(|h| h.count >= 1) && settled(s)
    });
    assert_eq!(op.backups(), 1, "only node1 was rebuilt");
    assert_everywhere(&op, &acknowledged);
}

#[test]
fn a_frozen_source_pauses_the_heal_until_it_answers_again() {
    let op = LocalOperator::start("Automatic");
    let acknowledged = play_seed(&op);
    assert!(
        wait_until(DEADLINE, || op
            .heal_record()
            .is_some_and(|p| p["next"].as_u64().is_some_and(|n| n >= 1))),
        "no heal started:\n{}",
        op.log()
    );
    let source = source_of(&op);
    let frozen = op.member_pid(&source).expect("source pid");
    kill(Pid::from_raw(frozen), Signal::SIGSTOP).expect("SIGSTOP");
    let paused = op.wait_status("the heal to pause", |s| {
        healing_message(s).contains("paused: the source")
    });
    let at = op.heal_record().expect("record")["next"].clone();
    op.wait_rewrites(2);
    assert_eq!(
        op.heal_record().expect("record")["next"],
        at,
        "no step ran while the source was frozen: {paused:#?}"
    );
    kill(Pid::from_raw(frozen), Signal::SIGCONT).expect("SIGCONT");
    finish_one_rebuild(&op, &acknowledged);
}

#[test]
fn switching_to_disabled_mid_heal_stops_it_and_automatic_resumes_it() {
    let op = LocalOperator::start("Automatic");
    let acknowledged = play_seed(&op);
    assert!(
        wait_until(DEADLINE, || op.heal_record().is_some()),
        "no heal started:\n{}",
        op.log()
    );
    op.set_healing_mode("Disabled");
    op.wait_status("the heal to pause for the mode", |s| {
        healing_message(s).contains("paused: healing mode is Disabled")
    });
    let at = op.heal_record().expect("record")["next"].clone();
    let backups = op.backups();
    op.wait_rewrites(3);
    assert_eq!(
        op.heal_record().expect("record")["next"],
        at,
        "nothing further happened"
    );
    assert_eq!(op.backups(), backups);

    op.set_healing_mode("Automatic");
    finish_one_rebuild(&op, &acknowledged);
}

#[test]
fn a_recorded_remove_that_would_cost_quorum_waits_until_every_other_voter_answers() {
    let mut op = LocalOperator::start("ObserveOnly");
    let acknowledged = play_seed(&op);
    let observed = op.wait_status("the drift to be reported", |s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Diverged" && c.message.contains("the plan would be"))
    });
    // An operator that recorded a heal of node1 from node2 and stopped before its first step,
    // restarted with the heal held by the mode.
    op.kill_operator();
    let id = |name: &str| {
        let hex = &observed
            .members
            .iter()
            .find(|m| m.name == name)
            .expect("member")
            .member_id;
        u64::from_str_radix(hex, 16).expect("hex ID")
    };
    let (node1, node2, node3) = (id("node1"), id("node2"), id("node3"));
    let steps: Vec<serde_json::Value> = [
        "Remove",
        "Backup",
        "AddLearner",
        "WaitCaughtUp",
        "Promote",
        "Verify",
    ]
    .iter()
    .map(|action| serde_json::json!({ *action: { "member": node1 } }))
    .collect();
    let record = serde_json::json!({
        "plan": { "source": node2, "steps": steps },
        "next": 0,
        "names": { node1.to_string(): "node1", node2.to_string(): "node2", node3.to_string(): "node3" },
        "renamed": {},
    });
    std::fs::write(op.dir().join("heal.json"), record.to_string()).expect("heal.json");
    op.set_healing_mode("Disabled");
    op.spawn();
    op.wait_status("the recorded heal, held by the mode", |s| {
        healing_message(s).contains("paused: healing mode is Disabled") && settled_but_diverged(s)
    });
    // node3 freezes: removing node1 would leave node2 alone of two voters.
    let frozen = op.member_pid("node3").expect("pid");
    kill(Pid::from_raw(frozen), Signal::SIGSTOP).expect("SIGSTOP");
    op.set_healing_mode("Automatic");
    op.wait_status("the Remove to be held back", |s| {
        healing_message(s).contains("not a quorum")
    });
    let members = ok(etcdctl(
        &op.endpoints()[1],
        &["--user", &op.root(), "member", "list"],
    ));
    assert!(members.contains("node1"), "node1 was removed: {members}");
    assert_eq!(op.backups(), 0);
    kill(Pid::from_raw(frozen), Signal::SIGCONT).expect("SIGCONT");
    op.wait_status("the heal to finish", |s| {
        s.healing.as_ref().is_some_and(|h| h.step.is_none()) && settled(s)
    });
    assert_eq!(op.backups(), 1);
    assert_everywhere(&op, &acknowledged);
}

/// Every member answers (the drift may still be there).
fn settled_but_diverged(s: &StorageClusterStatus) -> bool {
    s.members.len() == 3 && s.members.iter().all(|m| m.healthy)
}

#[test]
fn a_cluster_of_real_etcd_is_probed_and_a_member_that_lost_its_data_is_rebuilt() {
    let etcd = std::path::PathBuf::from("/usr/bin/etcd");
    assert!(
        etcd.exists(),
        "etcd 3.4 from Debian is needed (.ci/test installs it)"
    );
    let op = LocalOperator::start_on(etcd, "Automatic", false, &[]);
    let formed = op.wait_status("the etcd cluster to form with auth on", |s| {
        settled(s)
            && op.dir().join("root-credentials").exists()
            && op.auth_on()
            && s.members
                .iter()
                .all(|m| m.auth_revision.is_some_and(|r| r >= 2))
    });
    // etcd 3.4 has no AuthStatus: the AuthRevision comes from its metrics gauge.
    assert!(
        formed.members.iter().all(|m| m.unknown.is_none()),
        "{formed:#?}"
    );
    let root = op.root();
    let endpoints = op.endpoints();
    let mut acknowledged = Vec::new();
    for n in 0..9 {
        let key = format!("before-{n}");
        ok(etcdctl(
            &endpoints[n % 3],
            &["--user", &root, "put", &key, "v"],
        ));
        acknowledged.push(key);
    }
    let old_id = formed.members[2].member_id.clone();
    let operator = Pid::from_raw(op.pid().expect("operator runs"));
    kill(operator, Signal::SIGSTOP).expect("SIGSTOP");
    let node3 = op.member_pid("node3").expect("node3 pid");
    let _ = kill(Pid::from_raw(node3), Signal::SIGKILL);
    assert!(wait_until(DEADLINE, || !op.runs_member(node3)));
    std::fs::remove_dir_all(op.dir().join("node3")).expect("wipe node3");
    kill(operator, Signal::SIGCONT).expect("SIGCONT");
    let rebuilt = op.wait_status("node3 to be rebuilt as a new etcd member", |s| {
        settled(s)
            && s.members[2].member_id != old_id
            && s.healing
                .as_ref()
                .is_some_and(|h| h.count >= 1 && h.step.is_none())
    });
    assert!(
        rebuilt
            .members
            .iter()
            .all(|m| m.auth_revision == formed.members[0].auth_revision)
    );
    assert_everywhere(&op, &acknowledged);
}

#[test]
fn a_tls_cluster_is_healed_over_tls_and_clients_without_a_certificate_are_refused() {
    let op = LocalOperator::start_tls("Automatic", true);
    let acknowledged = play_seed(&op);
    let endpoints = op.endpoints();
    assert!(
        endpoints
            .iter()
            .all(|e| e.starts_with("https://127.0.0.1:")),
        "{endpoints:?}"
    );
    let pki = op.dir().join("pki");
    let root = op.root();
    // The CA alone (no client certificate) and plain text are both refused.
    let ca = format!("--cacert={}", pki.join("ca.pem").display());
    let no_cert = etcdctl(&endpoints[0], &[&ca, "--user", &root, "get", "k0-0"]);
    assert!(!no_cert.status.success(), "served without a certificate");
    let plain = endpoints[0].replace("https://", "http://");
    assert!(
        !etcdctl(&plain, &["--user", &root, "get", "k0-0"])
            .status
            .success()
    );
    finish_one_rebuild(&op, &acknowledged);
    for entry in std::fs::read_dir(&pki).expect("pki") {
        let path = entry.expect("entry").path();
        if path.to_string_lossy().ends_with("-key.pem") {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("key").permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", path.display());
        }
    }
}

/// Replaces member `name`'s certificate in `pki/` with one signed by the same CA that expires
/// in `days` (the running member keeps the one it loaded).
fn reissue_expiring(pki: &Path, name: &str, days: i64) {
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(pki.join("ca-key.pem")).expect("CA key"))
            .expect("CA key");
    let ca_pem = std::fs::read_to_string(pki.join("ca.pem")).expect("CA");
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, ca_key).expect("CA");
    let mut params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .expect("params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days);
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &issuer).expect("certificate");
    storage_node::tls::write_private(
        &pki.join(format!("{name}-key.pem")),
        key.serialize_pem().as_bytes(),
    )
    .expect("key");
    std::fs::write(pki.join(format!("{name}.pem")), cert.pem()).expect("certificate");
}

/// Counts, every few milliseconds until `stop`, how many of `endpoints` answer a Status call
/// within a second; returns the fewest seen in one sample.
fn fewest_answering(
    endpoints: Vec<String>,
    tls: operator::client::ClientCert,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<usize> {
    use storage_node::pb::etcdserverpb::{StatusRequest, maintenance_client::MaintenanceClient};
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        runtime.block_on(async {
            let mut fewest = endpoints.len();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let mut answering = 0;
                for endpoint in &endpoints {
                    let timeout = std::time::Duration::from_secs(1);
                    let Ok(channel) =
                        operator::client::connect(endpoint, Some(&tls), timeout).await
                    else {
                        continue;
                    };
                    let status = MaintenanceClient::new(channel)
                        .status(StatusRequest {})
                        .await;
                    answering += usize::from(status.is_ok());
                }
                fewest = fewest.min(answering);
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            fewest
        })
    })
}

#[test]
fn certificates_due_for_renewal_are_renewed_one_member_at_a_time_and_quorum_holds() {
    // The fault switch off: a restart must not replay auth entries and start a heal.
    let op = LocalOperator::start_tls("Automatic", false);
    op.wait_status("the cluster to form with auth on", |s| {
        settled(s) && op.dir().join("root-credentials").exists() && op.auth_on()
    });
    let root = op.root();
    let endpoints = op.endpoints();
    let mut acknowledged = Vec::new();
    for (i, endpoint) in endpoints.iter().enumerate() {
        let key = format!("before-{i}");
        ok(op.etcdctl(endpoint, &["--user", &root, "put", &key, "v"]));
        acknowledged.push(key);
    }
    let pki = op.dir().join("pki");
    let user = operator::client::ClientCert::from_issued(&operator::pki::Issued {
        cert: pki.join("client.pem"),
        key: pki.join("client-key.pem"),
        ca: pki.join("ca.pem"),
    })
    .expect("the users' client certificate");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let observer = fewest_answering(endpoints.clone(), user, stop.clone());
    let pids: Vec<i32> = ["node1", "node2", "node3"]
        .iter()
        .map(|n| op.member_pid(n).expect("pid"))
        .collect();
    // 20 days left: inside the renewal window (the last 30 days), so due.
    for name in ["node1", "node2", "node3"] {
        reissue_expiring(&pki, name, 20);
    }
    let renewed = |name: &str| {
        std::fs::read_to_string(pki.join(format!("{name}.pem")))
            .ok()
            .and_then(|pem| operator::pki::expiry(&pem))
            .is_some_and(|t| t - time::OffsetDateTime::now_utc() > time::Duration::days(60))
    };
    op.wait_status("every member restarted on a renewed certificate", |s| {
        settled(s)
            && ["node1", "node2", "node3"].iter().all(|n| renewed(n))
            && ["node1", "node2", "node3"]
                .iter()
                .zip(&pids)
                .all(|(n, old)| op.member_pid(n).is_some_and(|p| p != *old))
    });
    op.wait_rewrites(1);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let fewest = observer.join().expect("observer");
    assert!(
        fewest >= 2,
        "only {fewest} of 3 members answered at one point: quorum was lost\n{}",
        op.log()
    );
    let restarts = op.full_log().matches("certificate due for renewal").count();
    assert_eq!(restarts, 3, "{}", op.log());
    for (i, endpoint) in op.endpoints().iter().enumerate() {
        let key = format!("after-{i}");
        ok(op.etcdctl(endpoint, &["--user", &root, "put", &key, "v"]));
        acknowledged.push(key);
    }
    assert_everywhere(&op, &acknowledged);
}

#[test]
fn scheduled_defragmentation_goes_member_by_member_leader_last_and_gives_space_back() {
    let mut op = LocalOperator::start_with("Automatic", false);
    op.wait_status("the cluster to form with auth on", |s| {
        settled(s) && op.auth_on()
    });
    let root = op.root();
    let endpoint = op.endpoints()[0].clone();
    let value = vec![b'v'; 75_000];
    for i in 0..60 {
        let key = format!("k{}", i % 5);
        ok(cluster::etcdctl_with_input(
            &endpoint,
            &["--user", &root, "put", &key],
            Some(&value),
        ));
    }
    let status = ok(op.etcdctl(
        &endpoint,
        &["--user", &root, "endpoint", "status", "-w", "json"],
    ));
    let revision = serde_json::from_str::<serde_json::Value>(&status).expect("status json")[0]
        ["Status"]["header"]["revision"]
        .as_i64()
        .expect("revision");
    ok(op.etcdctl(
        &endpoint,
        &["--user", &root, "compaction", &revision.to_string()],
    ));
    ok(op.etcdctl(&endpoint, &["--user", &root, "put", "after", "v"]));
    let before = op.wait_status("every member to hold the history", |s| {
        settled(s) && s.members.iter().all(|m| m.db_size > 3_000_000)
    });

    op.set_defragmentation("Automatic", "* * * * *");
    let done = op.wait_status("a scheduled pass to defragment every member", |s| {
        s.defragmentation
            .as_ref()
            .is_some_and(|d| d.last_successful_time.is_some())
    });
    let pass = done.defragmentation.clone().unwrap_or_default();
    let mut names = pass.defragmented.clone();
    names.sort();
    assert_eq!(names, ["node1", "node2", "node3"], "each member once");
    assert_eq!(
        pass.defragmented.last(),
        done.leader.as_ref(),
        "the leader goes last"
    );
    let size_before = |name: &str| {
        before
            .members
            .iter()
            .find(|m| m.name == name)
            .map_or(0, |m| m.db_size)
    };
    op.wait_status("every member's backend to shrink", |s| {
        s.members
            .iter()
            .all(|m| m.healthy && m.db_size * 2 < size_before(&m.name))
    });
    assert_everywhere(&op, &["after".to_string()]);
    for endpoint in op.endpoints() {
        let held = ok(op.etcdctl(&endpoint, &["--user", &root, "get", "k4", "--keys-only"]));
        assert_eq!(held, "k4\n\n", "{endpoint}");
    }
}

/// Every member answers and agrees, no heal or resize runs, and the cluster has `n` members.
fn settled_at(s: &StorageClusterStatus, n: usize) -> bool {
    s.members.len() == n
        && operator::supervisor::settled(s)
        && s.healing.as_ref().is_none_or(|h| h.step.is_none())
}

#[test]
fn scaling_three_to_five_and_back_under_write_load_loses_no_acknowledged_write() {
    let mut op = LocalOperator::start_with("Automatic", false);
    op.wait_status("the cluster to form with auth on", |s| {
        settled(s) && op.auth_on()
    });
    let root = op.root();
    // node1 to node3 stay members throughout: three writers write through them, one through
    // all of them, each write retried up to 5 times.
    let endpoints = op.endpoints();
    let mut scaling_seen = false;
    let (timings, load) = under_load(&root, &endpoints, 5000, || {
        let mut timings = Vec::new();
        for (replicas, members) in [
            (5, ["node1", "node2", "node3", "node4", "node5"].as_slice()),
            (3, &["node1", "node2", "node3"]),
        ] {
            let started = std::time::Instant::now();
            op.set_replicas("Automatic", replicas);
            let resized = wait_until(DEADLINE * 3, || {
                op.status().is_some_and(|s| {
                    scaling_seen |= s.phase == Phase::Scaling;
                    settled_at(&s, members.len())
                        && s.members
                            .iter()
                            .map(|m| m.name.as_str())
                            .eq(members.iter().copied())
                })
            });
            assert!(resized, "never reached {replicas} members:\n{}", op.log());
            timings.push(started.elapsed());
        }
        timings
    });
    let Load {
        attempted,
        failed,
        written,
    } = load;
    eprintln!(
        "3 -> 5 in {:.1} s, 5 -> 3 in {:.1} s under 4 writers: {attempted} writes attempted, {} \
         acknowledged, {failed} failed attempts (retried)",
        timings[0].as_secs_f64(),
        timings[1].as_secs_f64(),
        written.len()
    );
    assert!(scaling_seen, "the status said Scaling while it resized");
    let listed = ok(op.etcdctl(&endpoints[0], &["--user", &root, "member", "list"]));
    assert_eq!(listed.lines().count(), 3, "{listed}");
    assert!(!listed.contains("true"), "no learner is left: {listed}");
    assert_eq!(
        op.backups(),
        2,
        "the data of node4 and node5 is kept in backups/"
    );
    assert_everywhere(&op, &written);
}

/// Sets `spec.replicas` to `members.len()` and, until the cluster has exactly `members`,
/// SIGKILLs the operator right after each step boundary a resize records, starting it again
/// each time; returns the kills.
fn resize_killing_the_operator_at_every_step(op: &mut LocalOperator, members: &[&str]) -> usize {
    op.set_replicas("Automatic", members.len() as u32);
    let resized = |op: &LocalOperator| {
        op.status().is_some_and(|s| {
            settled_at(&s, members.len())
                && s.members
                    .iter()
                    .map(|m| m.name.as_str())
                    .eq(members.iter().copied())
        })
    };
    let mut kills = 0;
    loop {
        let mut record = None;
        let looked = wait_until(DEADLINE * 2, || {
            record = op.heal_record();
            record.is_some() || resized(op)
        });
        assert!(looked, "no resize started:\n{}", op.log());
        let Some(record) = record else {
            // The status read may be the killed operator's last: the one started after it
            // restarts the members, so it is waited for settled on its own status.
            op.wait_rewrites(1);
            op.wait_status("the restarted operator to settle", |s| {
                settled_at(s, members.len())
            });
            return kills;
        };
        let next = record["next"].as_u64().unwrap_or_default();
        let boundary = wait_until(DEADLINE * 2, || {
            op.heal_record().is_none_or(|p| {
                p["started"] != record["started"] || p["next"].as_u64().is_some_and(|n| n > next)
            })
        });
        assert!(boundary, "step {} never ran:\n{}", next + 1, op.log());
        op.kill_operator();
        kills += 1;
        op.spawn();
    }
}

#[test]
fn a_resize_resumes_after_the_operator_is_killed_at_every_step_boundary() {
    let mut op = LocalOperator::start_with("Automatic", false);
    op.wait_status("the cluster to form with auth on", |s| {
        settled(s) && op.auth_on()
    });
    let root = op.root();
    let endpoints = op.endpoints();
    ok(op.etcdctl(&endpoints[0], &["--user", &root, "put", "before", "v"]));
    let out = resize_killing_the_operator_at_every_step(
        &mut op,
        &["node1", "node2", "node3", "node4", "node5"],
    );
    // A restarted `operator local` restarts the members its predecessor left running: the
    // write is retried until one is acknowledged.
    let put = || {
        op.etcdctl(&endpoints[1], &["--user", &root, "put", "between", "v"])
            .status
            .success()
    };
    assert!(wait_until(DEADLINE, put), "no write acknowledged");
    let back = resize_killing_the_operator_at_every_step(&mut op, &["node1", "node2", "node3"]);
    assert!(
        out >= 10 && back >= 3,
        "the resizes ran past the kills: {out}, {back}"
    );
    let listed = ok(op.etcdctl(&endpoints[0], &["--user", &root, "member", "list"]));
    assert_eq!(listed.lines().count(), 3, "{listed}");
    assert!(!listed.contains("true"), "no learner is left: {listed}");
    assert_eq!(op.backups(), 2, "each member that left is backed up once");
    assert_everywhere(&op, &["before".to_string(), "between".to_string()]);
}

/// The command line member `name` runs with now.
fn cmdline(op: &LocalOperator, name: &str) -> String {
    let pid = op.member_pid(name).expect("pid");
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .unwrap_or_default()
}

#[test]
fn a_changed_flag_is_rolled_out_one_member_at_a_time_the_leader_last() {
    let mut op = LocalOperator::start_with("Automatic", false);
    op.wait_status("the cluster to form with auth on", |s| {
        settled(s) && op.auth_on()
    });
    let root = op.root();
    let endpoints = op.endpoints();
    let before = op.status().expect("status");
    let desired: Vec<_> = before
        .members
        .iter()
        .map(|m| m.desired_template_revision.clone())
        .collect();
    assert!(
        before
            .members
            .iter()
            .all(|m| m.template_revision.is_some()
                && m.template_revision == m.desired_template_revision),
        "every member runs the current template: {:?}",
        before.members
    );

    op.set_extra_spec(
        "Automatic",
        "  autoCompaction:\n    mode: Revision\n    retention: \"1000\"\n",
    );
    // One writer through every member, each write retried up to 5 times, until the rollout
    // is over.
    let rolled = |s: &StorageClusterStatus| {
        settled(s)
            && s.members.iter().zip(&desired).all(|(m, old)| {
                m.template_revision.is_some()
                    && m.template_revision == m.desired_template_revision
                    && m.desired_template_revision != *old
            })
    };
    let (mut written, mut failed) = (Vec::new(), 0);
    let mut n = 0;
    let finished = wait_until(DEADLINE * 2, || {
        let key = format!("roll-{n}");
        n += 1;
        let ok = (0..5).any(|_| {
            let put = etcdctl(&endpoints.join(","), &["--user", &root, "put", &key, "v"]);
            failed += usize::from(!put.status.success());
            put.status.success()
        });
        if ok {
            written.push(key);
        }
        op.status().is_some_and(|s| rolled(&s))
    });
    assert!(finished, "the rollout never finished:\n{}", op.log());
    eprintln!(
        "rolling update of 3 members under 1 writer: {n} writes attempted, {} acknowledged, \
         {failed} failed attempts (retried)",
        written.len()
    );
    for name in ["node1", "node2", "node3"] {
        assert!(
            cmdline(&op, name).contains("--auto-compaction-mode=revision"),
            "{name} runs the new flag: {}",
            cmdline(&op, name)
        );
    }
    // Each member restarted once, the one that led last and only after it handed over.
    let log = op.plain_log();
    let restarts: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("restarting the member on the current template"))
        .filter_map(|l| l.split("member=").nth(1)?.split_whitespace().next())
        .collect();
    let mut once = restarts.clone();
    once.sort_unstable();
    assert_eq!(once, ["node1", "node2", "node3"], "{restarts:?}");
    let last = restarts[2];
    let handed_over = log.lines().position(|l| {
        l.contains("leadership moved off the leader") && l.contains(&format!("from={last}"))
    });
    let last_restart = log.lines().position(|l| {
        l.contains("restarting the member on the current template")
            && l.contains(&format!("member={last}"))
    });
    assert!(
        handed_over.is_some() && handed_over < last_restart,
        "{last} led and handed over before its restart:\n{log}"
    );
    assert_everywhere(&op, &written);
}
