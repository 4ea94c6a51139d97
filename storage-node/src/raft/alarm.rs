//! Raising this member's NOSPACE alarm when the state machine applied an entry past this
//! member's quota while no NOSPACE alarm was active, as etcd's apply loop does. The alarm goes
//! through raft, so every member refuses writes from the same log position on.

use std::sync::Arc;
use std::time::Duration;

use super::node::Node;
use crate::api::AlarmType;

/// Raises the alarm each time the state machine signals; runs for the member's lifetime.
pub async fn run(node: Arc<Node>) {
    let signal = node.listeners().over_quota.clone();
    loop {
        signal.notified().await;
        let mut wait = Duration::from_millis(100);
        // Until the alarm applied here (raised by this member or not, NOSPACE then holds).
        while node.store.alarms(AlarmType::NoSpace).is_empty() {
            tracing::warn!(
                quota_bytes = node.store.status().quota_bytes,
                "an applied request went past the backend quota; raising the NOSPACE alarm"
            );
            match node.raise_alarm(AlarmType::NoSpace).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "raising the NOSPACE alarm failed; will retry");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
}
