//! Why members cannot start, as far as the API server shows it, and what to do about it: a
//! member pod the scheduler cannot place, a volume claim that stays Pending (no StorageClass, a
//! provisioner that fails), a pod or claim the API server refused at create (a ResourceQuota, a
//! LimitRange, Pod Security admission). Each becomes `Progressing=False` with a reason and a
//! message saying what to do, and a Warning Event, instead of a log line only.
//!
//! Pure: the live pods and claims and the time in, the first [`Stall`] out.

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;

use super::resources;

/// How long a claim may stay Pending, or a pod unschedulable, before it is a stall rather than
/// a moment of provisioning or scheduling.
pub const GRACE: SignedDuration = SignedDuration::from_secs(60);

/// Why members cannot start, and what to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stall {
    /// The `Progressing` condition's reason and the Warning Event's.
    pub reason: &'static str,
    /// What is wrong and what to do about it.
    pub message: String,
}

/// What to do when a member's volume is not bound.
const VOLUME_HINT: &str = "check `kubectl describe pvc` for the provisioner's events; without \
    a default StorageClass, install one (claims without a class get the default later, on \
    Kubernetes 1.28 and newer) or create the StorageCluster again with \
    spec.storage.storageClassName set to a class of `kubectl get storageclass` (the class is \
    fixed at creation)";

/// The first stall among `pods` and `pvcs` (the cluster's members and their claims) at `now`,
/// if any: a member pod unschedulable for longer than [`GRACE`] (`VolumePending` when the
/// scheduler says its claim is the reason, `PodUnschedulable` otherwise), or a claim Pending
/// for longer than [`GRACE`] while its pod exists (`VolumePending`).
pub fn find(pods: &[Pod], pvcs: &[PersistentVolumeClaim], now: Timestamp) -> Option<Stall> {
    let mut pods: Vec<&Pod> = pods.iter().collect();
    pods.sort_by_key(|p| p.name_any());
    for pod in &pods {
        let Some(unschedulable) = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "PodScheduled"))
            .filter(|c| c.status == "False" && c.reason.as_deref() == Some("Unschedulable"))
        else {
            continue;
        };
        let since = unschedulable.last_transition_time.as_ref().map(|t| t.0);
        if !lasted(since, now) {
            continue;
        }
        let name = pod.name_any();
        let why = unschedulable.message.clone().unwrap_or_default();
        let claim = resources::pvc_name(&name);
        return Some(if mentions_volume(&why) {
            Stall {
                reason: "VolumePending",
                message: format!(
                    "member pod {name} cannot be scheduled because of its volume claim \
                     {claim}: {why}; {VOLUME_HINT}"
                ),
            }
        } else {
            Stall {
                reason: "PodUnschedulable",
                message: format!(
                    "member pod {name} cannot be scheduled: {why}; add or free node capacity \
                     for its requests (spec.resources), or relax spec.placement"
                ),
            }
        });
    }
    let mut pvcs: Vec<&PersistentVolumeClaim> = pvcs.iter().collect();
    pvcs.sort_by_key(|c| c.name_any());
    for claim in pvcs {
        let pending = claim
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_none_or(|p| p == "Pending");
        let created = claim.metadata.creation_timestamp.as_ref().map(|t| t.0);
        let member = claim.name_any().strip_prefix("data-").map(str::to_string);
        // A claim waits for its pod when its class binds on first use: no pod, no stall.
        let has_pod = member
            .as_ref()
            .is_some_and(|m| pods.iter().any(|p| p.name_any() == *m));
        if pending && has_pod && lasted(created, now) {
            return Some(Stall {
                reason: "VolumePending",
                message: format!(
                    "volume claim {} is still Pending: no volume is bound to it; {VOLUME_HINT}",
                    claim.name_any()
                ),
            });
        }
    }
    None
}

/// A stall from the API server refusing to create the member's `kind` (`Pod` or
/// `PersistentVolumeClaim`) `name` with `code` and `message` (403 or 422: a ResourceQuota, a
/// LimitRange, Pod Security admission, RBAC), saying what to change.
pub fn refused(kind: &str, name: &str, code: u16, message: &str) -> Stall {
    let (reason, hint) = if kind == "PersistentVolumeClaim" {
        (
            "VolumeRejected",
            "when a ResourceQuota limits requests.storage or the number of claims in this \
             namespace, raise it or lower spec.storage.size",
        )
    } else {
        (
            "PodRejected",
            "when a ResourceQuota or LimitRange applies in this namespace, set spec.resources \
             within it (members request 100m CPU and 256Mi memory by default, without limits) \
             or raise the quota",
        )
    };
    Stall {
        reason,
        message: format!(
            "the API server refused to create {} {name} ({code}): {message}; {hint}",
            kind_text(kind)
        ),
    }
}

fn kind_text(kind: &str) -> &str {
    match kind {
        "PersistentVolumeClaim" => "volume claim",
        "Pod" => "member pod",
        other => other,
    }
}

/// Whether something that began at `since` (unknown: not yet) has lasted past [`GRACE`].
fn lasted(since: Option<Timestamp>, now: Timestamp) -> bool {
    since.is_some_and(|since| now.duration_since(since) > GRACE)
}

/// Whether the scheduler's message blames a volume claim ("pod has unbound immediate
/// PersistentVolumeClaims", "persistentvolumeclaim ... not found", "didn't find available
/// persistent volumes to bind", ...).
fn mentions_volume(message: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    lower.contains("persistentvolumeclaim") || lower.contains("persistent volume")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + seconds).expect("valid time")
    }

    fn pod(name: &str, scheduled: Option<(&str, &str, i64)>) -> Pod {
        let conditions = scheduled.map(|(reason, message, since)| {
            json!([{ "type": "PodScheduled", "status": "False", "reason": reason,
                     "message": message, "lastTransitionTime": at(since).to_string() }])
        });
        serde_json::from_value(json!({
            "metadata": { "name": name },
            "status": { "phase": "Pending", "conditions": conditions.unwrap_or(json!([])) },
        }))
        .expect("pod")
    }

    fn claim(name: &str, phase: &str, created: i64) -> PersistentVolumeClaim {
        serde_json::from_value(json!({
            "metadata": { "name": name, "creationTimestamp": at(created).to_string() },
            "status": { "phase": phase },
        }))
        .expect("claim")
    }

    const UNBOUND: &str = "0/3 nodes are available: pod has unbound immediate \
        PersistentVolumeClaims. preemption: 0/3 nodes are available: 3 Preemption is not \
        helpful for scheduling.";

    #[test]
    fn a_pod_waiting_for_its_unbound_claim_is_a_pending_volume_after_the_grace() {
        let pods = [pod("demo-0", Some(("Unschedulable", UNBOUND, 0)))];
        let pvcs = [claim("data-demo-0", "Pending", 0)];
        assert_eq!(find(&pods, &pvcs, at(30)), None, "a moment is not a stall");
        let stall = find(&pods, &pvcs, at(61)).expect("stall");
        assert_eq!(stall.reason, "VolumePending");
        assert!(stall.message.contains("data-demo-0"), "{}", stall.message);
        assert!(
            stall.message.contains("unbound immediate"),
            "{}",
            stall.message
        );
        assert!(stall.message.contains("StorageClass"), "{}", stall.message);
    }

    #[test]
    fn a_pod_no_node_fits_is_unschedulable_with_the_schedulers_words() {
        let why = "0/3 nodes are available: 3 Insufficient cpu.";
        let pods = [
            pod("demo-0", None),
            pod("demo-1", Some(("Unschedulable", why, 0))),
        ];
        let stall = find(&pods, &[], at(120)).expect("stall");
        assert_eq!(stall.reason, "PodUnschedulable");
        assert!(
            stall.message.contains("demo-1") && stall.message.contains("Insufficient cpu"),
            "{}",
            stall.message
        );
    }

    #[test]
    fn a_claim_pending_past_the_grace_with_its_pod_there_is_a_pending_volume() {
        let pods = [pod("demo-0", None)];
        let stall = find(&pods, &[claim("data-demo-0", "Pending", 0)], at(90)).expect("stall");
        assert_eq!(stall.reason, "VolumePending");
        // Bound, young, or waiting for a pod that is not there (bind on first use): no stall.
        assert_eq!(
            find(&pods, &[claim("data-demo-0", "Bound", 0)], at(90)),
            None
        );
        assert_eq!(
            find(&pods, &[claim("data-demo-0", "Pending", 60)], at(90)),
            None
        );
        assert_eq!(
            find(&[], &[claim("data-demo-0", "Pending", 0)], at(90)),
            None
        );
    }

    #[test]
    fn a_refusal_names_the_object_the_servers_words_and_what_to_change() {
        let pod = refused(
            "Pod",
            "demo-0",
            403,
            "pods \"demo-0\" is forbidden: exceeded quota: compute, requested: requests.cpu=100m",
        );
        assert_eq!(pod.reason, "PodRejected");
        assert!(
            pod.message.contains("member pod demo-0 (403)")
                && pod.message.contains("exceeded quota")
                && pod.message.contains("spec.resources"),
            "{}",
            pod.message
        );
        let claim = refused(
            "PersistentVolumeClaim",
            "data-demo-0",
            403,
            "exceeded quota",
        );
        assert_eq!(claim.reason, "VolumeRejected");
        assert!(
            claim.message.contains("spec.storage.size"),
            "{}",
            claim.message
        );
    }
}
