//! Scheduled defragmentation, decided from values: when a pass is due by its cron schedule,
//! which member goes next (followers first, the leader last, one member at a time) and what
//! holds a pass back. The healing loop ([`crate::healing`]) makes the calls, one member per
//! pass, and the drivers record what this module returns in `status.defragmentation`, so an
//! operator that restarts mid-pass goes on with the members left.
//!
//! As a CronJob does, a schedule counts from when the operator first reads it (the time it
//! had last is recorded, not run), and of the times missed while the operator was down (or a
//! pass was waiting) one is caught up.

use crds::DefragmentationStatus;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{Timestamp, Zoned, tz::TimeZone};

use crate::detector::Round;

/// Failed attempts in a row on one member after which the pass ends without the rest.
pub const ATTEMPTS: u32 = 3;

/// A parsed `spec.defragmentation.schedule`.
#[derive(Clone, Debug)]
pub struct Schedule {
    cron: croner::Cron,
}

impl Schedule {
    /// Parses a five-field cron schedule (`minute hour day-of-month month day-of-week`, or an
    /// alias such as `@daily`); `Err` says what is wrong, in the parser's words.
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let parser = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Disallowed)
            .year(croner::parser::Year::Disallowed)
            .build();
        parser
            .parse(text)
            .map(|cron| Schedule { cron })
            .map_err(|e| format!("{text:?} is not a five-field cron schedule: {e}"))
    }

    /// The latest scheduled time at or before `now`.
    pub fn latest(&self, now: Timestamp) -> Option<Timestamp> {
        self.cron
            .find_previous_occurrence(&now.to_zoned(TimeZone::UTC), true)
            .ok()
            .map(|z: Zoned| z.timestamp())
    }

    /// The first scheduled time after `now`.
    pub fn next(&self, now: Timestamp) -> Option<Timestamp> {
        self.cron
            .find_next_occurrence(&now.to_zoned(TimeZone::UTC), false)
            .ok()
            .map(|z: Zoned| z.timestamp())
    }
}

/// What is wrong with `spec.defragmentation`; `None` when it is absent or valid.
pub fn schedule_problem(spec: &crds::StorageClusterSpec) -> Option<String> {
    let schedule = &spec.defragmentation.as_ref()?.schedule;
    Schedule::parse(schedule)
        .err()
        .map(|why| format!("spec.defragmentation.schedule: {why}"))
}

/// What the loop does about defragmentation in this pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Nothing is due.
    Idle,
    /// Defragment this member now.
    Defragment(String),
    /// A pass is under way but may not go on now: why.
    Wait(String),
}

/// The decision of one pass: the status to record (with the pass started when one became due)
/// and what to do.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// The status, updated.
    pub status: DefragmentationStatus,
    /// What to do.
    pub next: Next,
    /// Whether this decision started a pass.
    pub started: bool,
}

/// Decides, at `now`, what defragmentation does given `schedule`, the status recorded last
/// (`None`: never), `round` (this pass's probe of every member) and `held` (why the cluster
/// may not be defragmented now: it diverged, a member lags or a heal runs).
pub fn decide(
    schedule: &Schedule,
    previous: Option<&DefragmentationStatus>,
    round: &Round,
    held: Option<String>,
    now: Timestamp,
) -> Decision {
    let mut status = previous.cloned().unwrap_or_default();
    status.next_schedule_time = schedule.next(now).map(Time);
    let mut started = false;
    let Some(last) = status.last_schedule_time.as_ref().map(|t| t.0) else {
        // First read of the schedule: it counts from now.
        status.last_schedule_time = Some(Time(schedule.latest(now).unwrap_or(now)));
        return Decision {
            status,
            next: Next::Idle,
            started,
        };
    };
    if !status.active {
        match schedule.latest(now) {
            Some(due) if due > last => {
                status.active = true;
                status.last_schedule_time = Some(Time(due));
                status.defragmented.clear();
                status.failures = 0;
                status.waiting = None;
                started = true;
            }
            _ => {
                return Decision {
                    status,
                    next: Next::Idle,
                    started,
                };
            }
        }
    }
    let next = match held.or_else(|| unfit(round)) {
        Some(why) => Next::Wait(why),
        None => match next_member(round, &status.defragmented) {
            Some(name) => Next::Defragment(name),
            // Every member is done (the cluster has fewer members than when the pass began).
            None => {
                status.active = false;
                status.last_successful_time = Some(Time(now));
                Next::Idle
            }
        },
    };
    status.waiting = match &next {
        Next::Wait(why) => Some(why.clone()),
        _ => None,
    };
    Decision {
        status,
        next,
        started,
    }
}

/// Why `round` does not allow taking a member's backend offline for a while: every member
/// must answer, none be a learner, and exactly one lead.
fn unfit(round: &Round) -> Option<String> {
    if let Some(m) = round.members.iter().find(|m| !m.reachable) {
        return Some(format!("{} does not answer", m.name));
    }
    if let Some(m) = round.members.iter().find(|m| m.is_learner) {
        return Some(format!("{} is a learner", m.name));
    }
    match round.members.iter().filter(|m| m.is_leader).count() {
        1 => None,
        0 => Some("no member leads".into()),
        n => Some(format!("{n} members claim to lead")),
    }
}

/// The next member of `round` not yet in `done`: followers first, in member order, then the
/// leader (whose pause stalls writes, so it goes once the others are done).
fn next_member(round: &Round, done: &[String]) -> Option<String> {
    let left = || round.members.iter().filter(|m| !done.contains(&m.name));
    left()
        .find(|m| !m.is_leader)
        .or_else(|| left().next())
        .map(|m| m.name.clone())
}

/// How a member's defragmentation ended, as [`record`] tells it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// The member is done; others are left.
    Member,
    /// The member was the last: the pass is over.
    Completed,
    /// It failed; it is tried again in the next pass.
    Retrying,
    /// It failed [`ATTEMPTS`] times in a row: the pass ends without the members left.
    Failed,
}

/// Records in `status` how defragmenting `name` ended at `now`, the cluster having `members`.
pub fn record(
    status: &mut DefragmentationStatus,
    name: &str,
    result: Result<(), String>,
    members: usize,
    now: Timestamp,
) -> Recorded {
    match result {
        Ok(()) => {
            status.failures = 0;
            status.waiting = None;
            if !status.defragmented.iter().any(|n| n == name) {
                status.defragmented.push(name.to_string());
            }
            if status.defragmented.len() >= members {
                status.active = false;
                status.last_successful_time = Some(Time(now));
                Recorded::Completed
            } else {
                Recorded::Member
            }
        }
        Err(why) => {
            status.failures = status.failures.saturating_add(1);
            if status.failures >= ATTEMPTS {
                status.active = false;
                status.waiting = None;
                status.failures = 0;
                status.last_failure = Some(format!(
                    "{name} failed {ATTEMPTS} times in a row ({why}); {} of {members} member(s) \
                     defragmented",
                    status.defragmented.len()
                ));
                Recorded::Failed
            } else {
                status.waiting = Some(format!("{name}: {why}"));
                Recorded::Retrying
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detector::Observation;

    fn at(text: &str) -> Timestamp {
        text.parse().expect("timestamp")
    }

    fn member(name: &str, leader: bool) -> Observation {
        Observation {
            name: name.into(),
            member: u64::from(name.as_bytes()[4]),
            reachable: true,
            is_leader: leader,
            ..Observation::unreachable(name, "")
        }
    }

    fn round(leader: usize) -> Round {
        Round {
            members: (1..=3)
                .map(|i| member(&format!("node{i}"), i == leader))
                .collect(),
        }
    }

    #[test]
    fn schedules_are_five_fields_in_utc() {
        let weekly = Schedule::parse("0 3 * * 0").expect("weekly");
        // 2026-12-03 is a Thursday.
        let now = at("2026-12-03T10:00:00Z");
        assert_eq!(weekly.latest(now), Some(at("2026-11-29T03:00:00Z")));
        assert_eq!(weekly.next(now), Some(at("2026-12-06T03:00:00Z")));
        assert!(Schedule::parse("@daily").is_ok());
        let seconds = Schedule::parse("0 0 3 * * 0").expect_err("six fields");
        assert!(seconds.contains("five-field"), "{seconds}");
        assert!(Schedule::parse("61 * * * *").is_err());
        assert!(Schedule::parse("").is_err());
    }

    #[test]
    fn a_new_schedule_counts_from_now_and_runs_at_its_next_time() {
        let schedule = Schedule::parse("0 3 * * *").expect("daily");
        let first = decide(&schedule, None, &round(1), None, at("2026-12-03T10:00:00Z"));
        assert_eq!(
            first.next,
            Next::Idle,
            "the time before it was read is not run"
        );
        assert!(!first.status.active);
        let recorded = first.status;
        let same_day = decide(
            &schedule,
            Some(&recorded),
            &round(1),
            None,
            at("2026-12-03T23:59:00Z"),
        );
        assert_eq!(same_day.next, Next::Idle);
        let next_day = decide(
            &schedule,
            Some(&recorded),
            &round(1),
            None,
            at("2026-12-04T03:00:30Z"),
        );
        assert!(next_day.started);
        assert_eq!(
            next_day.status.last_schedule_time,
            Some(Time(at("2026-12-04T03:00:00Z")))
        );
        assert_eq!(next_day.next, Next::Defragment("node2".into()));
    }

    #[test]
    fn followers_go_first_one_at_a_time_and_the_leader_last() {
        let schedule = Schedule::parse("* * * * *").expect("every minute");
        let now = at("2026-12-03T10:00:30Z");
        let mut status = DefragmentationStatus {
            last_schedule_time: Some(Time(at("2026-12-03T09:59:00Z"))),
            ..Default::default()
        };
        let mut order = Vec::new();
        let mut ended = None;
        for _ in 0..5 {
            let decision = decide(&schedule, Some(&status), &round(1), None, now);
            status = decision.status;
            let Next::Defragment(name) = decision.next else {
                break;
            };
            order.push(name.clone());
            ended = Some(record(&mut status, &name, Ok(()), 3, now));
            if ended == Some(Recorded::Completed) {
                break;
            }
        }
        assert_eq!(order, ["node2", "node3", "node1"]);
        assert_eq!(ended, Some(Recorded::Completed));
        assert!(!status.active);
        assert_eq!(status.last_successful_time, Some(Time(now)));
        let again = decide(&schedule, Some(&status), &round(1), None, now);
        assert_eq!(again.next, Next::Idle, "one pass per scheduled time");
    }

    #[test]
    fn a_pass_waits_while_a_member_is_down_or_the_cluster_is_held() {
        let schedule = Schedule::parse("* * * * *").expect("every minute");
        let now = at("2026-12-03T10:00:30Z");
        let status = DefragmentationStatus {
            last_schedule_time: Some(Time(at("2026-12-03T09:59:00Z"))),
            ..Default::default()
        };
        let mut down = round(1);
        down.members[2] = Observation::unreachable("node3", "connect: refused");
        let waiting = decide(&schedule, Some(&status), &down, None, now);
        assert_eq!(waiting.next, Next::Wait("node3 does not answer".into()));
        assert!(waiting.status.active, "the pass is due and waits");
        assert_eq!(
            waiting.status.waiting.as_deref(),
            Some("node3 does not answer")
        );
        let healing = decide(
            &schedule,
            Some(&waiting.status),
            &round(1),
            Some("a heal is under way".into()),
            now,
        );
        assert_eq!(healing.next, Next::Wait("a heal is under way".into()));
        let mut learner = round(1);
        learner.members[1].is_learner = true;
        assert!(matches!(
            decide(&schedule, Some(&healing.status), &learner, None, now).next,
            Next::Wait(w) if w.contains("learner")
        ));
        let leaderless = round(0);
        assert_eq!(
            decide(&schedule, Some(&healing.status), &leaderless, None, now).next,
            Next::Wait("no member leads".into())
        );
        let resumed = decide(&schedule, Some(&healing.status), &round(1), None, now);
        assert_eq!(resumed.next, Next::Defragment("node2".into()));
        assert_eq!(resumed.status.waiting, None);
    }

    #[test]
    fn a_member_that_keeps_failing_ends_the_pass_with_what_was_done() {
        let now = at("2026-12-03T10:00:30Z");
        let mut status = DefragmentationStatus {
            active: true,
            defragmented: vec!["node2".into()],
            ..Default::default()
        };
        assert_eq!(
            record(
                &mut status,
                "node3",
                Err("deadline exceeded".into()),
                3,
                now
            ),
            Recorded::Retrying
        );
        assert!(status.active);
        assert_eq!(
            record(
                &mut status,
                "node3",
                Err("deadline exceeded".into()),
                3,
                now
            ),
            Recorded::Retrying
        );
        assert_eq!(
            record(
                &mut status,
                "node3",
                Err("deadline exceeded".into()),
                3,
                now
            ),
            Recorded::Failed
        );
        assert!(!status.active);
        let failure = status.last_failure.clone().unwrap_or_default();
        assert!(
            failure.contains("node3") && failure.contains("1 of 3"),
            "{failure}"
        );
        assert_eq!(status.last_successful_time, None);
    }
}
