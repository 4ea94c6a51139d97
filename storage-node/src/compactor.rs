//! Automatic history compaction, as etcd's `--auto-compaction-mode` and
//! `--auto-compaction-retention` do it (etcd's v3compactor):
//!
//! - **periodic** (retention a duration, a bare number meaning hours): the revision is sampled
//!   every tenth of the retention (at most every 6 minutes), and every retention (at most every
//!   hour) the oldest sample still kept, one taken a retention ago, is compacted to. The first
//!   compaction comes a whole retention after start.
//! - **revision** (retention a count): every 5 minutes, the current revision minus the
//!   retention is compacted to.
//!
//! Every member runs the schedule and keeps sampling, but only the leader compacts (etcd pauses
//! the compactor on followers), so a newly elected leader already has the history it needs. A
//! compaction goes through raft like `etcdctl compact`; one that finds the revision already
//! compacted counts as done, any other failure is retried at the next tick.

use std::collections::VecDeque;
use std::future::Future;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::time::Instant;

/// How history is kept, from the two flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retention {
    /// Keep this much time of history.
    Periodic(Duration),
    /// Keep this many revisions of history.
    Revision(i64),
}

/// How often revision mode looks (etcd's fixed interval).
pub const REVISION_INTERVAL: Duration = Duration::from_secs(5 * 60);

/// What `--auto-compaction-mode` and `--auto-compaction-retention` ask for: `None` when the
/// retention is zero (etcd's default: no automatic compaction). The errors are etcd's words.
pub fn from_flags(mode: &str, retention: &str) -> Result<Option<Retention>, String> {
    if mode != "periodic" && mode != "revision" {
        return Err(format!("unknown auto-compaction-mode {mode:?}"));
    }
    let retention = if retention.is_empty() { "0" } else { retention };
    let parsed = match retention.parse::<u64>() {
        Ok(0) => return Ok(None),
        Ok(n) if mode == "revision" => Retention::Revision(i64::try_from(n).unwrap_or(i64::MAX)),
        Ok(hours) => Retention::Periodic(Duration::from_secs(hours.saturating_mul(3600))),
        Err(_) => {
            // A duration in either mode, as etcd reads it (in revision mode, "1h" is a count
            // of nanoseconds), in Go's words when it is none.
            let unsigned = retention.strip_prefix('-').unwrap_or(retention);
            let duration = crate::cli::parse_duration(unsigned).map_err(|_| {
                let number = unsigned
                    .trim_end_matches(|c: char| c.is_ascii_digit() || c == '.')
                    .is_empty();
                let why = if number { "missing unit in" } else { "invalid" };
                format!("error parsing CompactionRetention: time: {why} duration {retention:?}")
            })?;
            // etcd takes a negative duration; Mend refuses it.
            if unsigned != retention && !duration.is_zero() {
                return Err(format!(
                    "error parsing CompactionRetention: a negative retention ({retention}) keeps \
                     no history"
                ));
            }
            if duration.is_zero() {
                return Ok(None);
            }
            // etcd panics on a retention under 10 ns and compacts continually under a second.
            if mode == "periodic" && duration < Duration::from_secs(1) {
                return Err(format!(
                    "error parsing CompactionRetention: a retention under 1s ({retention}) would \
                     compact continually"
                ));
            }
            match mode {
                "revision" => {
                    Retention::Revision(i64::try_from(duration.as_nanos()).unwrap_or(i64::MAX))
                }
                _ => Retention::Periodic(duration),
            }
        }
    };
    Ok(Some(parsed))
}

/// The periodic schedule: the revisions sampled over the last retention, and when it last
/// compacted.
#[derive(Debug)]
pub struct Periodic {
    retention: Duration,
    samples: VecDeque<i64>,
    keep: usize,
    last_success: Instant,
    wait: Duration,
    last_revision: i64,
}

impl Periodic {
    /// A schedule for `retention` started at `now`.
    pub fn new(retention: Duration, now: Instant) -> Periodic {
        let mut schedule = Periodic {
            retention,
            samples: VecDeque::new(),
            keep: 0,
            last_success: now,
            // The first compaction waits the whole retention.
            wait: retention,
            last_revision: 0,
        };
        schedule.keep =
            (retention.as_nanos() / schedule.sample_every().as_nanos().max(1)) as usize + 1;
        schedule
    }

    /// How often a compaction may happen: the retention, at most an hour.
    fn compact_every(&self) -> Duration {
        self.retention.min(Duration::from_secs(3600))
    }

    /// How often the revision is sampled (and a failed compaction retried).
    pub fn sample_every(&self) -> Duration {
        self.compact_every() / 10
    }

    /// Keeps `revision`, sampled now, and forgets what is older than the retention.
    pub fn sample(&mut self, revision: i64) {
        self.samples.push_back(revision);
        while self.samples.len() > self.keep {
            self.samples.pop_front();
        }
    }

    /// The revision to compact to at `now`, if one is due: the oldest sample kept, once enough
    /// time passed since the last compaction.
    pub fn due(&mut self, now: Instant) -> Option<i64> {
        let revision = *self.samples.front()?;
        if now.duration_since(self.last_success) < self.wait || revision == self.last_revision {
            return None;
        }
        self.wait = self.compact_every();
        Some(revision)
    }

    /// Compacting to `revision` at `now` succeeded (or it already was).
    pub fn compacted(&mut self, revision: i64, now: Instant) {
        self.last_success = now;
        self.last_revision = revision;
    }
}

/// The revision mode's rule: compact to `current - retention`, unless that is nothing or
/// what was compacted last.
pub fn revision_due(current: i64, retention: i64, last: i64) -> Option<i64> {
    let revision = current.saturating_sub(retention);
    (revision > 0 && revision != last).then_some(revision)
}

/// How a compaction ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Compacted, or the revision already was.
    Done,
    /// Anything else: tried again at the next tick.
    Failed(String),
}

/// What the compactor needs of its member.
pub trait Member: Send + Sync + 'static {
    /// The current revision.
    fn revision(&self) -> i64;
    /// Whether this member leads (only the leader compacts).
    fn is_leader(&self) -> bool;
    /// Compacts history below `revision` through raft.
    fn compact(&self, revision: i64) -> BoxFuture<'_, Outcome>;
}

impl Member for std::sync::Arc<crate::raft::node::Node> {
    fn revision(&self) -> i64 {
        self.store.revisions().0
    }

    fn is_leader(&self) -> bool {
        crate::raft::node::Node::is_leader(self)
    }

    fn compact(&self, revision: i64) -> BoxFuture<'_, Outcome> {
        use crate::api::{CompactionRequest, Request, RequestHeader};
        use crate::raft::node::NodeError;
        Box::pin(async move {
            let request = Request::Compaction(CompactionRequest {
                revision,
                physical: false,
            });
            // The member's own request, like an alarm it raises: no user to check.
            match self.propose(RequestHeader::default(), request).await {
                Ok(_)
                | Err(NodeError::Apply(crate::apply::ApplyError::Kv(
                    crate::mvcc::Error::Compacted,
                ))) => Outcome::Done,
                Err(e) => Outcome::Failed(e.to_string()),
            }
        })
    }
}

/// Runs `retention`'s schedule on `member` until `stop` resolves.
pub async fn run(retention: Retention, member: impl Member, stop: impl Future<Output = ()>) {
    tokio::pin!(stop);
    match retention {
        Retention::Periodic(period) => {
            let mut schedule = Periodic::new(period, Instant::now());
            tracing::info!(retention = ?period, every = ?schedule.sample_every(), "auto periodic compaction");
            loop {
                schedule.sample(member.revision());
                tokio::select! {
                    () = &mut stop => return,
                    () = tokio::time::sleep(schedule.sample_every()) => {}
                }
                if !member.is_leader() {
                    continue;
                }
                let now = Instant::now();
                let Some(revision) = schedule.due(now) else {
                    continue;
                };
                if compact(&member, revision, &format!("{period:?}")).await {
                    schedule.compacted(revision, now);
                }
            }
        }
        Retention::Revision(keep) => {
            tracing::info!(retention = keep, "auto revision compaction");
            let mut last = 0;
            loop {
                tokio::select! {
                    () = &mut stop => return,
                    () = tokio::time::sleep(REVISION_INTERVAL) => {}
                }
                if !member.is_leader() {
                    continue;
                }
                let Some(revision) = revision_due(member.revision(), keep, last) else {
                    continue;
                };
                if compact(&member, revision, &keep.to_string()).await {
                    last = revision;
                }
            }
        }
    }
}

/// One compaction to `revision`, logged as etcd logs it; whether it is done.
async fn compact(member: &impl Member, revision: i64, retention: &str) -> bool {
    tracing::info!(revision, retention, "starting auto compaction");
    let started = Instant::now();
    match member.compact(revision).await {
        Outcome::Done => {
            tracing::info!(revision, retention, took = ?started.elapsed(), "completed auto compaction");
            true
        }
        Outcome::Failed(error) => {
            tracing::warn!(revision, retention, %error, "failed auto compaction; retrying at the next tick");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use super::*;

    #[test]
    fn the_flags_read_as_etcd_reads_them() {
        let hours = |h: u64| Some(Retention::Periodic(Duration::from_secs(h * 3600)));
        assert_eq!(from_flags("periodic", "0"), Ok(None));
        assert_eq!(from_flags("periodic", ""), Ok(None));
        assert_eq!(from_flags("periodic", "0s"), Ok(None));
        assert_eq!(from_flags("periodic", "1"), Ok(hours(1)));
        assert_eq!(
            from_flags("periodic", "1h30m"),
            Ok(Some(Retention::Periodic(Duration::from_secs(5400))))
        );
        assert_eq!(
            from_flags("revision", "1000"),
            Ok(Some(Retention::Revision(1000)))
        );
        assert_eq!(
            from_flags("bogus", "1"),
            Err("unknown auto-compaction-mode \"bogus\"".to_string())
        );
        // etcd 3.4's words, checked against it (tests/cli.rs).
        assert_eq!(
            from_flags("periodic", "abc"),
            Err("error parsing CompactionRetention: time: invalid duration \"abc\"".to_string())
        );
        assert_eq!(
            from_flags("periodic", "1.5"),
            Err(
                "error parsing CompactionRetention: time: missing unit in duration \"1.5\""
                    .to_string()
            )
        );
        assert!(
            from_flags("periodic", "-1h").is_err(),
            "no negative history"
        );
    }

    #[test]
    fn revision_mode_keeps_the_retention_and_skips_what_it_did() {
        assert_eq!(revision_due(1500, 1000, 0), Some(500));
        assert_eq!(revision_due(1500, 1000, 500), None, "nothing new");
        assert_eq!(
            revision_due(900, 1000, 0),
            None,
            "not that much history yet"
        );
    }

    /// A member whose revision is one more than the minutes since `start` (revisions start
    /// at 1), recording its compactions as (minutes since start, the minute the revision
    /// compacted to was current).
    struct Clocked {
        start: Instant,
        leader: AtomicBool,
        fail_next: AtomicUsize,
        compactions: Mutex<Vec<(u64, i64)>>,
    }

    impl Clocked {
        fn minutes(&self) -> u64 {
            self.start.elapsed().as_secs() / 60
        }
    }

    impl Member for std::sync::Arc<Clocked> {
        fn revision(&self) -> i64 {
            self.minutes() as i64 + 1
        }
        fn is_leader(&self) -> bool {
            self.leader.load(Ordering::SeqCst)
        }
        fn compact(&self, revision: i64) -> BoxFuture<'_, Outcome> {
            Box::pin(async move {
                if self.fail_next.load(Ordering::SeqCst) > 0 {
                    self.fail_next.fetch_sub(1, Ordering::SeqCst);
                    return Outcome::Failed("no leader".into());
                }
                self.compactions
                    .lock()
                    .expect("compactions")
                    .push((self.minutes(), revision - 1));
                Outcome::Done
            })
        }
    }

    fn clocked(leader: bool) -> std::sync::Arc<Clocked> {
        std::sync::Arc::new(Clocked {
            start: Instant::now(),
            leader: AtomicBool::new(leader),
            fail_next: AtomicUsize::new(0),
            compactions: Mutex::new(Vec::new()),
        })
    }

    /// Runs `retention` on `member` for `minutes` of paused (virtual) time.
    async fn run_for(retention: Retention, member: &std::sync::Arc<Clocked>, minutes: u64) {
        run(
            retention,
            member.clone(),
            tokio::time::sleep(Duration::from_secs(minutes * 60)),
        )
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn periodic_compaction_keeps_a_retention_of_history_and_compacts_once_per_retention() {
        let member = clocked(true);
        // One hour: samples every 6 minutes, a compaction every hour.
        run_for(Retention::Periodic(Duration::from_secs(3600)), &member, 230).await;
        let compactions = member.compactions.lock().expect("compactions").clone();
        assert_eq!(compactions.len(), 3, "{compactions:?}");
        // The first a whole retention after start, to the revision sampled at start.
        assert_eq!(compactions[0], (60, 0));
        for pair in compactions.windows(2) {
            assert!(pair[1].0 - pair[0].0 >= 60, "{compactions:?}");
        }
        for (at, revision) in &compactions {
            // Never anything newer than the retention.
            assert!(*at as i64 - revision >= 60, "{compactions:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_compaction_is_retried_at_the_next_sample() {
        let member = clocked(true);
        member.fail_next.store(1, Ordering::SeqCst);
        run_for(Retention::Periodic(Duration::from_secs(3600)), &member, 90).await;
        let compactions = member.compactions.lock().expect("compactions").clone();
        // Failed at 60 minutes, done at the next sample, still to the revision of the start.
        assert_eq!(compactions, vec![(66, 0)]);
    }

    #[tokio::test(start_paused = true)]
    async fn only_the_leader_compacts_and_a_new_leader_has_the_history_at_once() {
        let member = clocked(false);
        let schedule = tokio::spawn({
            let member = member.clone();
            async move {
                run_for(
                    Retention::Periodic(Duration::from_secs(3600)),
                    &member,
                    3 * 60,
                )
                .await;
            }
        });
        tokio::time::sleep(Duration::from_secs(150 * 60)).await;
        assert!(member.compactions.lock().expect("compactions").is_empty());
        member.leader.store(true, Ordering::SeqCst);
        schedule.await.expect("schedule");
        let compactions = member.compactions.lock().expect("compactions").clone();
        // At its first tick as leader, to what it sampled an hour before.
        let (at, revision) = compactions.first().copied().expect("compacted");
        assert!((150..=156).contains(&at), "{compactions:?}");
        assert!(
            at as i64 - revision >= 60 && at as i64 - revision <= 66,
            "{compactions:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn revision_compaction_runs_every_five_minutes() {
        let member = clocked(true);
        run_for(Retention::Revision(8), &member, 16).await;
        let compactions = member.compactions.lock().expect("compactions").clone();
        // At 5 minutes, revision 6 keeps less than 8 of history: nothing yet.
        assert_eq!(compactions, vec![(10, 2), (15, 7)]);
    }
}
