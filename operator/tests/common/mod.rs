//! Helpers shared by the operator's real-process tests: settled probe rounds and the planner's
//! view of a round.

#![allow(dead_code)]

use std::collections::BTreeSet;

use std::collections::BTreeMap;

use operator::detector::Round;
use operator::executor::{Executor, Outcome, Progress};
use operator::members::Grpc;
use operator::planner::{Member, Plan};
use operator::platform::local::LocalPlatform;
use operator::probe::{Prober, Target};

/// Probes until `n` rounds in a row found every member reachable at one applied index (no
/// write in flight between them), or panics at `deadline`.
pub fn settled_rounds(
    runtime: &tokio::runtime::Runtime,
    prober: &Prober,
    n: usize,
    deadline: std::time::Duration,
) -> Vec<Round> {
    let end = std::time::Instant::now() + deadline;
    let mut rounds: Vec<Round> = Vec::new();
    loop {
        let round = runtime.block_on(prober.round());
        let applied: BTreeSet<u64> = round.members.iter().map(|o| o.applied_index).collect();
        if applied.len() == 1 && round.members.iter().all(|o| o.reachable) {
            rounds.push(round);
        } else {
            rounds.clear();
        }
        if rounds.len() >= n {
            return rounds;
        }
        assert!(
            std::time::Instant::now() < end,
            "members never settled: {rounds:?}"
        );
        // Polling interval between probe rounds, not synchronisation.
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The planner's view of the members in `round`.
pub fn members(round: &Round) -> Vec<Member> {
    round.members.iter().map(Member::observed).collect()
}

/// Member ID → name, pairing the round's observations with the platform's members (both in
/// endpoint order).
pub fn names(round: &Round, platform: &LocalPlatform) -> BTreeMap<u64, String> {
    round
        .members
        .iter()
        .zip(&platform.members)
        .map(|(o, m)| (o.member, m.name.clone()))
        .collect()
}

/// How the prober reaches each of `platform`'s members.
pub fn targets(platform: &LocalPlatform) -> Vec<Target> {
    platform
        .members
        .iter()
        .map(|m| platform.target(&m.name).expect("a member"))
        .collect()
}

/// Runs `plan` step by step as the healing loop does (a fresh probe round before every
/// step), logging in as `credentials`, until it is done; panics when a step stays blocked
/// or waiting past `deadline`.
pub fn heal(
    runtime: &tokio::runtime::Runtime,
    platform: &mut LocalPlatform,
    prober: &Prober,
    plan: Plan,
    names: BTreeMap<u64, String>,
    deadline: std::time::Duration,
) {
    let members = Grpc::new(std::time::Duration::from_secs(10));
    let replicas = platform.members.len();
    let mut executor = Executor {
        platform,
        members: &members,
        credentials: prober.credentials.clone(),
        replicas,
        max_lag: 1000,
    };
    let mut progress = Progress::new(plan, names, 0);
    let mut end = std::time::Instant::now() + deadline;
    while !progress.done() {
        let round = runtime.block_on(prober.round());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let outcome = runtime.block_on(executor.step(&mut progress, &round, now));
        match outcome {
            Outcome::Done(_) => end = std::time::Instant::now() + deadline,
            Outcome::Waiting(why) | Outcome::Blocked(why) => assert!(
                std::time::Instant::now() < end,
                "step {} of {:?} stuck: {why}",
                progress.next,
                progress.plan
            ),
        }
        // Polling interval between passes, as the supervisor's, not synchronisation.
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
