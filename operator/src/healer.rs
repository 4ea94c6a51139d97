//! The healing loop's memory, shared by `operator local` and the Kubernetes controller: recent
//! probe rounds, what the detector and planner make of them, and the backoff that keeps the
//! operator from rebuilding members over and over when drift keeps coming back.
//!
//! Pure: rounds and the time come in as values; the caller probes and runs the plans.

use std::collections::VecDeque;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use crate::detector::{self, AlarmKind, Finding, Round, Tolerance};
use crate::planner::{self, Decision, Member, Mode};

/// A heal that ended within this long of the previous one means the drift came back.
pub const RECURRENCE_WINDOW: Duration = Duration::from_secs(600);

/// What the latest round amounts to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assessment {
    /// Findings that persisted across the required rounds.
    pub findings: Vec<Finding>,
    /// What to do (a heal held back by the backoff comes out as [`Decision::Wait`]).
    pub decision: Decision,
    /// Why healing is held back, when it is.
    pub held_back: Option<String>,
}

impl Assessment {
    /// Nothing found and nothing to do: what is reported when members are not compared.
    pub fn quiet() -> Assessment {
        Assessment {
            findings: Vec::new(),
            decision: Decision::Healthy,
            held_back: None,
        }
    }
}

/// The loop's state between rounds.
#[derive(Clone, Debug)]
pub struct Healer {
    tolerance: Tolerance,
    mode: Mode,
    history: VecDeque<Round>,
    /// When the current divergence was first seen in a round (not yet confirmed).
    first_seen: Option<Timestamp>,
    /// When the last heal ended, and how.
    last_heal: Option<(Timestamp, bool)>,
    /// Heals in a row that were followed by divergence within [`RECURRENCE_WINDOW`], or failed.
    repeats: u32,
    /// The wait before the first repeat heal; it doubles with every further repeat.
    backoff_min: Duration,
    /// The longest wait between heals.
    backoff_max: Duration,
    /// Heals started so far (a driver that restarts carries the count over from the status).
    pub heals: u32,
    /// How the last heal ended, in words.
    pub last_result: Option<String>,
    /// How long the divergence of the heal in progress took to confirm.
    pub detection: Option<Duration>,
    /// When the heal in progress started, if this loop started it.
    pub started: Option<Timestamp>,
}

impl Healer {
    /// A loop that needs `tolerance.consecutive` rounds of evidence and acts as `mode` allows.
    pub fn new(tolerance: Tolerance, mode: Mode) -> Healer {
        Healer {
            tolerance,
            mode,
            history: VecDeque::new(),
            first_seen: None,
            last_heal: None,
            repeats: 0,
            backoff_min: Duration::from_secs(30),
            backoff_max: Duration::from_secs(1800),
            heals: 0,
            last_result: None,
            detection: None,
            started: None,
        }
    }

    /// The loop a `StorageCluster`'s `spec.healing` asks for: the evidence it needs and the
    /// mode it allows.
    pub fn for_spec(healing: &crds::Healing) -> Healer {
        let tolerance = Tolerance {
            consecutive: healing.consecutive_probes.max(1) as usize,
            ..Tolerance::default()
        };
        let min = u64::from(healing.backoff.min_seconds.max(1));
        Healer {
            backoff_min: Duration::from_secs(min),
            backoff_max: Duration::from_secs(u64::from(healing.backoff.max_seconds).max(min)),
            ..Healer::new(tolerance, Mode::of(healing.mode))
        }
    }

    /// Takes one probe round at `now` and decides what to do about the cluster.
    pub fn observe(&mut self, round: Round, now: Timestamp) -> Assessment {
        let diverged_now = !detector::detect(std::slice::from_ref(&round), single(self.tolerance))
            .iter()
            .all(|f| {
                matches!(
                    f,
                    Finding::Unreachable { .. }
                        | Finding::Lagging { .. }
                        | Finding::Alarm {
                            alarm: AlarmKind::NoSpace,
                            ..
                        }
                )
            });
        match (diverged_now, self.first_seen) {
            (true, None) => self.first_seen = Some(now),
            (false, _) => self.first_seen = None,
            _ => {}
        }
        let members: Vec<Member> = round.members.iter().map(Member::observed).collect();
        self.history.push_back(round);
        while self.history.len() > self.tolerance.consecutive.max(1) {
            self.history.pop_front();
        }
        let history: Vec<Round> = self.history.iter().cloned().collect();
        let findings = detector::detect(&history, self.tolerance);
        let decision = planner::plan(&findings, &members, self.mode);
        let held_back = match (&decision, self.not_before()) {
            (Decision::Heal(_), Some(at)) if now < at => Some(format!(
                "drift came back {} time(s) after a heal: the next heal waits until {at} (backoff)",
                self.repeats
            )),
            _ => None,
        };
        let decision = match &held_back {
            Some(why) => Decision::Wait(why.clone()),
            None => decision,
        };
        Assessment {
            findings,
            decision,
            held_back,
        }
    }

    /// When the divergence now present was first seen, before the detector confirmed it.
    pub fn diverged_since(&self) -> Option<Timestamp> {
        self.first_seen
    }

    /// A heal starts at `now`: decide whether it repeats the last one.
    pub fn heal_started(&mut self, now: Timestamp) {
        self.heals += 1;
        self.started = Some(now);
        if let Some((ended, succeeded)) = self.last_heal {
            let recent = now.duration_since(ended).unsigned_abs() < RECURRENCE_WINDOW;
            if recent || !succeeded {
                self.repeats += 1;
            } else {
                self.repeats = 0;
            }
        }
    }

    /// The heal ended at `now`, with `result` (an error message when it failed). The probe
    /// history is dropped: rounds from before the heal say nothing about the rebuilt members.
    pub fn heal_finished(&mut self, now: Timestamp, result: Result<(), String>) {
        self.last_result = Some(match &result {
            Ok(()) => format!("succeeded at {now}"),
            Err(e) => format!("failed at {now}: {e}"),
        });
        self.last_heal = Some((now, result.is_ok()));
        self.started = None;
        self.history.clear();
        self.first_seen = None;
    }

    /// The earliest time the next heal may start: the backoff's minimum after the last one
    /// ended, doubled for every heal in a row that did not hold, at most its maximum.
    fn not_before(&self) -> Option<Timestamp> {
        let (ended, _) = self.last_heal?;
        let factor = 2u32.saturating_pow(self.repeats.min(16));
        let wait = self
            .backoff_min
            .saturating_mul(factor)
            .min(self.backoff_max);
        ended.checked_add(wait).ok()
    }
}

/// The tolerance for judging one round by itself.
fn single(tolerance: Tolerance) -> Tolerance {
    Tolerance {
        consecutive: 1,
        ..tolerance
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detector::{Fact, Observation};

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + second).expect("valid time")
    }

    fn round(auth_revisions: &[u64]) -> Round {
        Round {
            members: auth_revisions
                .iter()
                .enumerate()
                .map(|(i, r)| Observation {
                    name: format!("node{}", i + 1),
                    member: i as u64 + 1,
                    reachable: true,
                    is_leader: i == 0,
                    is_learner: false,
                    db_size: 4096,
                    raft_term: 2,
                    raft_index: 50,
                    applied_index: 50,
                    revision: 9,
                    auth_revision: Fact::Known(*r),
                    key_count: Fact::Known(3),
                    hash: Fact::Known(crate::detector::Hash {
                        hash: 1,
                        revision: 9,
                        keys: 3,
                    }),
                    alarms: Fact::Known(Vec::new()),
                })
                .collect(),
        }
    }

    fn healer() -> Healer {
        Healer::new(
            Tolerance {
                consecutive: 3,
                max_lag: 1000,
            },
            Mode::Automatic,
        )
    }

    #[test]
    fn drift_is_acted_on_only_after_the_required_rounds_and_its_start_is_remembered() {
        let mut h = healer();
        assert_eq!(
            h.observe(round(&[5, 5, 5]), at(0)).decision,
            Decision::Healthy
        );
        assert!(h.observe(round(&[6, 5, 5]), at(2)).findings.is_empty());
        assert_eq!(h.diverged_since(), Some(at(2)));
        assert!(h.observe(round(&[6, 5, 5]), at(4)).findings.is_empty());
        let third = h.observe(round(&[6, 5, 5]), at(6));
        assert!(matches!(third.decision, Decision::Heal(_)), "{third:?}");
        assert_eq!(h.diverged_since(), Some(at(2)));
    }

    #[test]
    fn drift_that_returns_right_after_a_heal_is_held_back_with_growing_waits() {
        let mut h = healer();
        for s in 0..3 {
            h.observe(round(&[6, 5, 5]), at(s));
        }
        h.heal_started(at(3));
        h.heal_finished(at(10), Ok(()));
        // It comes back at once: the next heal waits BACKOFF_BASE after the last one ended.
        for s in 11..13 {
            h.observe(round(&[7, 5, 5]), at(s));
        }
        let held = h.observe(round(&[7, 5, 5]), at(13));
        assert!(matches!(held.decision, Decision::Wait(_)), "{held:?}");
        assert!(held.held_back.is_some());
        let allowed = h.observe(round(&[7, 5, 5]), at(10 + 30));
        assert!(matches!(allowed.decision, Decision::Heal(_)), "{allowed:?}");
        h.heal_started(at(40));
        h.heal_finished(at(45), Ok(()));
        for s in 46..48 {
            h.observe(round(&[8, 5, 5]), at(s));
        }
        // The second repeat waits twice as long.
        assert!(
            h.observe(round(&[8, 5, 5]), at(45 + 59))
                .held_back
                .is_some()
        );
        let allowed = h.observe(round(&[8, 5, 5]), at(45 + 60));
        assert!(matches!(allowed.decision, Decision::Heal(_)), "{allowed:?}");
    }

    #[test]
    fn a_heal_long_after_the_last_one_starts_the_backoff_over() {
        let mut h = healer();
        h.heal_started(at(0));
        h.heal_finished(at(5), Ok(()));
        h.heal_started(at(40));
        h.heal_finished(at(50), Ok(()));
        assert_eq!(h.repeats, 1);
        h.heal_started(at(50 + RECURRENCE_WINDOW.as_secs() as i64 + 1));
        assert_eq!(h.repeats, 0);
        assert_eq!(h.heals, 3);
    }

    #[test]
    fn a_failed_heal_backs_off_and_says_why() {
        let mut h = healer();
        h.heal_started(at(0));
        h.heal_finished(at(5), Err("timed out waiting for node2 to catch up".into()));
        assert!(
            h.last_result
                .as_deref()
                .is_some_and(|r| r.contains("failed"))
        );
        h.heal_started(at(2000));
        assert_eq!(h.repeats, 1);
    }

    #[test]
    fn observe_only_never_turns_into_a_heal() {
        let mut h = Healer::new(Tolerance::default(), Mode::ObserveOnly);
        let mut last = None;
        for s in 0..3 {
            last = Some(h.observe(round(&[6, 5, 5]), at(s)));
        }
        assert!(matches!(
            last.map(|a| a.decision),
            Some(Decision::Observe(_))
        ));
    }
}
