//! Leader election on a `coordination.k8s.io/v1` Lease, so two operator replicas can run and
//! only one reconciles, as client-go's `leaderelection` does it.
//!
//! # Time
//! No replica reads another's clock. The times in the Lease (`renewTime`, `acquireTime`) are
//! written for people and other tools, never used to decide: a follower takes the Lease over
//! only once it has seen the same Lease record, unchanged, for `leaseDurationSeconds` by its
//! own monotonic clock (when this replica first read that record, not when the holder says it
//! renewed), so clock skew between replicas cannot open a window. The holder renews every
//! retry period and steps down when no renewal succeeded within the renew deadline, counted
//! from the start of its last successful renewal: shorter than the lease duration, so the
//! holder has stopped before any follower may take over. The margin (lease duration minus
//! renew deadline, 5 s by default) covers the difference in the rates of the replicas' clocks
//! and the time a step-down takes.
//!
//! Writes go through `update` with the `resourceVersion` read, so of two replicas racing for a
//! Lease the API server lets exactly one win (the other gets a conflict and stays a follower).
//!
//! The decision ([`decide`]) is a pure function of the Lease and of how long this replica has
//! seen it unchanged; [`LeaseLock`] does the I/O around it and the loops of
//! [`LeaseLock::acquire`] and [`LeaseLock::keep`].

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use tokio::time::Instant;
use tracing::warn;

use super::{Error, Result};

/// What a replica does with the Lease it read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// No Lease yet: create it, holding it.
    Create,
    /// It holds the Lease: renew it.
    Renew,
    /// Held by nobody, or its holder stopped renewing: take it over.
    TakeOver,
    /// Another replica holds it and renews it: stay a follower.
    Follow,
}

/// The election's timings, client-go's defaults unless configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// How long a follower waits, having seen the Lease unchanged, before taking it over.
    pub lease_duration: Duration,
    /// How long the holder keeps leading without a successful renewal.
    pub renew_deadline: Duration,
    /// How often the Lease is tried for or renewed.
    pub retry_period: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

impl Timing {
    /// Why these timings could let two replicas lead at once, if they could.
    pub fn problem(&self) -> Option<String> {
        let Timing {
            lease_duration,
            renew_deadline,
            retry_period,
        } = *self;
        if renew_deadline >= lease_duration {
            return Some(format!(
                "the renew deadline ({renew_deadline:?}) must be shorter than the lease duration \
                 ({lease_duration:?}), or the holder could still lead when a follower takes over"
            ));
        }
        if retry_period.is_zero() || retry_period >= renew_deadline {
            return Some(format!(
                "the retry period ({retry_period:?}) must be positive and shorter than the renew \
                 deadline ({renew_deadline:?}), or a single failed renewal would end the holding"
            ));
        }
        None
    }
}

/// What to do with `lease` (as read, `None` when absent) for the replica `identity`, which has
/// seen this very record unchanged for `unchanged_for` (by its own clock); `lease_duration`
/// when the Lease names none.
pub fn decide(
    lease: Option<&LeaseSpec>,
    identity: &str,
    unchanged_for: Duration,
    lease_duration: Duration,
) -> Decision {
    let Some(spec) = lease else {
        return Decision::Create;
    };
    match spec.holder_identity.as_deref() {
        Some(holder) if holder == identity => Decision::Renew,
        None | Some("") => Decision::TakeOver,
        Some(_) => {
            let duration = spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .filter(|s| *s > 0)
                .map_or(lease_duration, Duration::from_secs);
            if unchanged_for >= duration {
                Decision::TakeOver
            } else {
                Decision::Follow
            }
        }
    }
}

/// The wall clock the election writes into the Lease (for people; it never decides). The
/// monotonic clock that decides is tokio's, which the loops also sleep on.
pub type WallClock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// The Lease record this replica last read, and when it first read it so.
#[derive(Debug)]
struct Observed {
    record: Option<LeaseSpec>,
    since: Instant,
}

/// One replica's handle on the election Lease.
pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    identity: String,
    timing: Timing,
    wall: WallClock,
    observed: Mutex<Option<Observed>>,
}

impl LeaseLock {
    /// The Lease `name` through `api`, held as `identity` with `timing`.
    pub fn new(api: Api<Lease>, name: &str, identity: &str, timing: Timing) -> LeaseLock {
        LeaseLock {
            api,
            name: name.to_string(),
            identity: identity.to_string(),
            timing,
            wall: Arc::new(Timestamp::now),
            observed: Mutex::default(),
        }
    }

    /// The same lock writing the times of `wall` instead of the machine's.
    pub fn with_wall_clock(self, wall: WallClock) -> LeaseLock {
        LeaseLock { wall, ..self }
    }

    /// The election's timings.
    pub fn timing(&self) -> Timing {
        self.timing
    }

    /// Records `record`, read at `now`, and returns how long this replica has seen it
    /// unchanged: zero when it differs from the record read before.
    fn observe(&self, record: Option<&LeaseSpec>, now: Instant) -> Duration {
        let mut observed = self.observed.lock().unwrap_or_else(|p| p.into_inner());
        match observed.as_ref() {
            Some(o) if o.record.as_ref() == record => now.saturating_duration_since(o.since),
            _ => {
                *observed = Some(Observed {
                    record: record.cloned(),
                    since: now,
                });
                Duration::ZERO
            }
        }
    }

    /// Tries once to acquire or renew the Lease; `true` when this replica holds it. `wall` is
    /// written as `renewTime` (for people), `now` (this replica's monotonic clock) decides.
    /// Losing a race (a conflict) is `false`, not an error.
    pub async fn try_acquire_or_renew(&self, wall: Timestamp, now: Instant) -> Result<bool> {
        let current = self.api.get_opt(&self.name).await?;
        let spec = current.as_ref().and_then(|l| l.spec.as_ref());
        let unchanged_for = self.observe(spec, now);
        let seconds = i32::try_from(self.timing.lease_duration.as_secs()).unwrap_or(i32::MAX);
        let result = match decide(
            spec,
            &self.identity,
            unchanged_for,
            self.timing.lease_duration,
        ) {
            Decision::Follow => return Ok(false),
            Decision::Create => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.identity.clone()),
                        lease_duration_seconds: Some(seconds),
                        acquire_time: Some(MicroTime(wall)),
                        renew_time: Some(MicroTime(wall)),
                        lease_transitions: Some(0),
                        ..LeaseSpec::default()
                    }),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            decision @ (Decision::Renew | Decision::TakeOver) => {
                let mut lease = current.unwrap_or_default();
                let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
                if decision == Decision::TakeOver {
                    spec.holder_identity = Some(self.identity.clone());
                    spec.acquire_time = Some(MicroTime(wall));
                    spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                }
                spec.lease_duration_seconds = Some(seconds);
                spec.renew_time = Some(MicroTime(wall));
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
            }
        };
        match result {
            Ok(written) => {
                self.observe(written.spec.as_ref(), now);
                Ok(true)
            }
            Err(kube::Error::Api(status)) if status.is_conflict() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Tries for the Lease every retry period until this replica holds it, or `stop` resolves
    /// first (`None`). Returns when the winning attempt started, which [`LeaseLock::keep`]
    /// counts the renew deadline from. `answered` is called after each attempt the API server
    /// answered (this replica then takes part in the election, leading or not).
    pub async fn acquire(
        &self,
        answered: impl Fn(),
        stop: impl Future<Output = ()>,
    ) -> Option<Instant> {
        tokio::pin!(stop);
        loop {
            let started = Instant::now();
            let attempt = self.try_acquire_or_renew((self.wall)(), started);
            match tokio::time::timeout(self.timing.renew_deadline, attempt).await {
                Ok(Ok(held)) => {
                    answered();
                    if held {
                        return Some(started);
                    }
                }
                Ok(Err(e)) => warn!(error = %e, "leader lease"),
                Err(_) => warn!("leader lease: the API server did not answer in time"),
            }
            tokio::select! {
                () = &mut stop => return None,
                () = tokio::time::sleep(self.timing.retry_period) => {}
            }
        }
    }

    /// Renews the Lease, acquired by an attempt that started at `acquired`, every retry
    /// period for as long as this replica holds it. Returns (an error: stop leading now) when
    /// another replica holds it, or when no renewal succeeded within the renew deadline from
    /// the start of the last one that did: past that, a follower may soon take over.
    pub async fn keep(&self, acquired: Instant) -> Result<()> {
        let mut renewed = acquired;
        loop {
            tokio::time::sleep(self.timing.retry_period).await;
            let deadline = renewed + self.timing.renew_deadline;
            let renewal = async {
                loop {
                    let started = Instant::now();
                    match self.try_acquire_or_renew((self.wall)(), started).await {
                        Ok(held) => return (held, started),
                        Err(e) => warn!(error = %e, "renewing the leader lease"),
                    }
                    tokio::time::sleep(self.timing.retry_period).await;
                }
            };
            match tokio::time::timeout_at(deadline, renewal).await {
                Ok((true, started)) => renewed = started,
                Ok((false, _)) => return Err(Error::LostLease("another replica holds it".into())),
                Err(_) => {
                    return Err(Error::LostLease(format!(
                        "not renewed within the renew deadline ({:?})",
                        self.timing.renew_deadline
                    )));
                }
            }
        }
    }

    /// Gives the Lease up (on shutdown) if this replica holds it, so a follower takes over
    /// at once instead of after the lease duration.
    pub async fn release(&self) -> Result<()> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.is_conflict() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use k8s_openapi::jiff::SignedDuration;

    use super::*;
    use crate::controller::fixtures::{LeaseStore, lease_spec, mock_client};

    const D: Duration = Duration::from_secs(15);
    /// Each way, per request to the simulated API server.
    const LATENCY: Duration = Duration::from_millis(30);

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + seconds).expect("valid time")
    }

    #[test]
    fn no_lease_is_created() {
        assert_eq!(decide(None, "a", secs(0), D), Decision::Create);
    }

    #[test]
    fn the_holder_renews() {
        let spec = lease_spec(Some("a"), at(0), 15);
        assert_eq!(decide(Some(&spec), "a", secs(0), D), Decision::Renew);
    }

    #[test]
    fn another_holders_lease_is_followed_until_seen_unchanged_for_its_duration() {
        // The renew time says nothing here: an hour old by this machine's clock or not, only
        // how long this replica has seen the record unchanged counts.
        let spec = lease_spec(Some("b"), at(-3600), 15);
        assert_eq!(decide(Some(&spec), "a", secs(0), D), Decision::Follow);
        assert_eq!(decide(Some(&spec), "a", secs(14), D), Decision::Follow);
        assert_eq!(decide(Some(&spec), "a", secs(15), D), Decision::TakeOver);
        // The Lease's own duration wins over this replica's setting.
        let long = lease_spec(Some("b"), at(0), 60);
        assert_eq!(decide(Some(&long), "a", secs(30), D), Decision::Follow);
    }

    #[test]
    fn a_released_lease_is_taken_over_at_once() {
        let spec = lease_spec(None, at(0), 15);
        assert_eq!(decide(Some(&spec), "a", secs(0), D), Decision::TakeOver);
    }

    #[test]
    fn timings_that_could_let_two_replicas_lead_are_refused() {
        assert_eq!(Timing::default().problem(), None);
        let t = |lease, renew, retry| Timing {
            lease_duration: secs(lease),
            renew_deadline: secs(renew),
            retry_period: secs(retry),
        };
        assert!(
            t(15, 15, 2)
                .problem()
                .is_some_and(|p| p.contains("renew deadline"))
        );
        assert!(
            t(15, 10, 10)
                .problem()
                .is_some_and(|p| p.contains("retry period"))
        );
        assert!(t(15, 10, 0).problem().is_some());
    }

    #[tokio::test]
    async fn a_changed_record_starts_the_wait_again_and_an_unchanged_one_adds_up() {
        let (client, _verifier) = mock_client();
        let lock = LeaseLock::new(Api::namespaced(client, "ns"), "l", "a", Timing::default());
        let t0 = Instant::now();
        let first = lease_spec(Some("b"), at(0), 15);
        let renewed = lease_spec(Some("b"), at(2), 15);
        assert_eq!(lock.observe(Some(&first), t0), secs(0));
        assert_eq!(lock.observe(Some(&first), t0 + secs(9)), secs(9));
        assert_eq!(lock.observe(Some(&renewed), t0 + secs(10)), secs(0));
        assert_eq!(lock.observe(Some(&renewed), t0 + secs(25)), secs(15));
    }

    /// A replica cut off from the API server right after it won: it stops leading within the
    /// renew deadline of its winning attempt, before the lease duration ends.
    #[tokio::test(start_paused = true)]
    async fn a_holder_that_cannot_renew_steps_down_within_the_renew_deadline() {
        let store = Arc::new(LeaseStore::default());
        let cut = Arc::new(AtomicBool::new(false));
        let lock = LeaseLock::new(
            Api::namespaced(store.client(cut.clone(), LATENCY), "mend-system"),
            "mend-operator",
            "a",
            Timing::default(),
        );
        let acquired = lock
            .acquire(|| {}, std::future::pending())
            .await
            .expect("acquired");
        cut.store(true, Ordering::SeqCst);
        let lost = lock.keep(acquired).await;
        assert!(matches!(lost, Err(Error::LostLease(_))), "{lost:?}");
        let led = Instant::now().duration_since(acquired);
        assert!(led <= secs(10), "led {led:?} without a renewal");
        assert!(led < D);
    }

    /// Three replicas whose wall clocks disagree by ±40 s (so each writes renew times far in
    /// the others' past or future), started out of step (so their tries do not line up on one
    /// grid) and whose leader is cut off from the API server for 30 s every 40 s: leadership
    /// moves every round, and no replica ever starts leading while another still does.
    #[tokio::test(start_paused = true)]
    async fn skewed_clocks_and_cut_off_leaders_never_give_the_lease_to_two_replicas() {
        const REPLICAS: usize = 3;
        let store = Arc::new(LeaseStore::default());
        let leading = Arc::new(Mutex::new([false; REPLICAS]));
        let overlaps = Arc::new(AtomicUsize::new(0));
        let acquisitions = Arc::new(AtomicUsize::new(0));
        let cuts: Vec<Arc<AtomicBool>> = (0..REPLICAS).map(|_| Arc::default()).collect();
        let skews = [0, 40, -40];
        let mut replicas = Vec::new();
        for (i, cut) in cuts.iter().enumerate() {
            let (store, leading, overlaps, acquisitions, cut) = (
                store.clone(),
                leading.clone(),
                overlaps.clone(),
                acquisitions.clone(),
                cut.clone(),
            );
            let skew = SignedDuration::from_secs(skews[i]);
            replicas.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(700 * i as u64)).await;
                loop {
                    // A fresh lock each time, as a replica that stepped down exits and
                    // restarts with nothing remembered.
                    let lock = LeaseLock::new(
                        Api::namespaced(store.client(cut.clone(), LATENCY), "mend-system"),
                        "mend-operator",
                        &format!("replica-{i}"),
                        Timing::default(),
                    )
                    .with_wall_clock(Arc::new(move || Timestamp::now() + skew));
                    let Some(acquired) = lock.acquire(|| {}, std::future::pending()).await else {
                        return;
                    };
                    {
                        let mut leading = leading.lock().expect("flags");
                        if leading.iter().any(|l| *l) {
                            overlaps.fetch_add(1, Ordering::SeqCst);
                        }
                        leading[i] = true;
                        acquisitions.fetch_add(1, Ordering::SeqCst);
                    }
                    let _ = lock.keep(acquired).await;
                    leading.lock().expect("flags")[i] = false;
                }
            }));
        }
        let mut leaders = Vec::new();
        for _round in 0..6 {
            tokio::time::sleep(secs(40)).await;
            let flags = *leading.lock().expect("flags");
            let [leader]: [usize; 1] = (0..REPLICAS)
                .filter(|i| flags[*i])
                .collect::<Vec<_>>()
                .try_into()
                .expect("exactly one replica leads between partitions");
            leaders.push(leader);
            cuts[leader].store(true, Ordering::SeqCst);
            tokio::time::sleep(secs(30)).await;
            cuts[leader].store(false, Ordering::SeqCst);
        }
        for replica in replicas {
            replica.abort();
        }
        assert_eq!(
            overlaps.load(Ordering::SeqCst),
            0,
            "two replicas led at once"
        );
        // The first holding, then one takeover per cut-off leader, and no other change.
        assert_eq!(
            acquisitions.load(Ordering::SeqCst),
            7,
            "leaders: {leaders:?}"
        );
        assert!(
            leaders.windows(2).all(|w| w[0] != w[1]),
            "each round's leader was cut off, so the next one is another: {leaders:?}"
        );
    }
}
