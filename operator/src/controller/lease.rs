//! Leader election on a `coordination.k8s.io/v1` Lease, so two operator replicas can run and
//! only one reconciles. The holder renews the Lease every `renew` interval; another replica
//! takes it over once `renewTime + leaseDurationSeconds` has passed. Writes go through `update`
//! with the `resourceVersion` read, so of two replicas racing for an expired Lease the API server
//! lets exactly one win (the other gets a conflict and stays a follower).
//!
//! The decision ([`decide`]) is a pure function of the Lease and the time; [`LeaseLock`] does
//! the I/O around it.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use kube::api::PostParams;

use super::Result;

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

/// What to do with `lease` (as read, `None` when absent), for the replica `identity` at `now`.
pub fn decide(lease: Option<&LeaseSpec>, identity: &str, now: Timestamp) -> Decision {
    let Some(spec) = lease else {
        return Decision::Create;
    };
    match spec.holder_identity.as_deref() {
        Some(holder) if holder == identity => Decision::Renew,
        None | Some("") => Decision::TakeOver,
        Some(_) => {
            let renewed = spec
                .renew_time
                .as_ref()
                .or(spec.acquire_time.as_ref())
                .map(|t| t.0);
            let duration = SignedDuration::from_secs(i64::from(
                spec.lease_duration_seconds.unwrap_or_default(),
            ));
            match renewed {
                Some(renewed) if renewed + duration > now => Decision::Follow,
                _ => Decision::TakeOver,
            }
        }
    }
}

/// One replica's handle on the election Lease.
pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
}

impl LeaseLock {
    /// The Lease `name` through `api`, held as `identity` for `duration` at a time.
    pub fn new(api: Api<Lease>, name: &str, identity: &str, duration: Duration) -> LeaseLock {
        LeaseLock {
            api,
            name: name.to_string(),
            identity: identity.to_string(),
            duration,
        }
    }

    /// How long a holding lasts without renewal.
    pub fn duration(&self) -> Duration {
        self.duration
    }

    /// Tries once to acquire or renew the Lease at `now`; `true` when this replica holds it.
    /// Losing a race (a conflict) is `false`, not an error.
    pub async fn try_acquire_or_renew(&self, now: Timestamp) -> Result<bool> {
        let current = self.api.get_opt(&self.name).await?;
        let spec = current.as_ref().and_then(|l| l.spec.as_ref());
        let seconds = i32::try_from(self.duration.as_secs()).unwrap_or(i32::MAX);
        let result = match decide(spec, &self.identity, now) {
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
                        acquire_time: Some(MicroTime(now)),
                        renew_time: Some(MicroTime(now)),
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
                    spec.acquire_time = Some(MicroTime(now));
                    spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                }
                spec.lease_duration_seconds = Some(seconds);
                spec.renew_time = Some(MicroTime(now));
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
            }
        };
        match result {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.is_conflict() => Ok(false),
            Err(e) => Err(e.into()),
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
    use super::*;
    use crate::controller::fixtures::lease_spec;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + seconds).expect("valid time")
    }

    #[test]
    fn no_lease_is_created() {
        assert_eq!(decide(None, "a", at(0)), Decision::Create);
    }

    #[test]
    fn the_holder_renews() {
        let spec = lease_spec(Some("a"), at(0), 15);
        assert_eq!(decide(Some(&spec), "a", at(5)), Decision::Renew);
    }

    #[test]
    fn a_fresh_lease_of_another_is_followed_and_an_expired_one_taken_over() {
        let spec = lease_spec(Some("b"), at(0), 15);
        assert_eq!(decide(Some(&spec), "a", at(14)), Decision::Follow);
        assert_eq!(decide(Some(&spec), "a", at(15)), Decision::TakeOver);
    }

    #[test]
    fn a_released_lease_is_taken_over_at_once() {
        let spec = lease_spec(None, at(0), 15);
        assert_eq!(decide(Some(&spec), "a", at(1)), Decision::TakeOver);
    }
}
