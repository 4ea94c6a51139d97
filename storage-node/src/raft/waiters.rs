//! Hands each applied command's local result to the request waiting for it.
//!
//! The member that proposes a command registers its request ID first, then proposes; when the
//! entry is applied here, the state machine completes the waiter with the engine's
//! [`Outcome`]. Registering before proposing means a fast apply can never complete a waiter
//! that does not exist yet. Request IDs must be unique across the cluster (etcd derives them
//! from the member ID), since every member applies every entry and completes any waiter it holds
//! for that ID.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use tokio::sync::oneshot;

use crate::store::Outcome;

/// Pending requests by ID, each with the channel its outcome goes to.
#[derive(Debug, Default)]
pub struct Waiters {
    pending: Mutex<HashMap<u64, oneshot::Sender<Outcome>>>,
}

impl Waiters {
    /// An empty registry.
    pub fn new() -> Waiters {
        Waiters::default()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, oneshot::Sender<Outcome>>> {
        // Every critical section is a single map operation, so a panic elsewhere cannot leave
        // the map half-changed: a poisoned lock still holds a usable map.
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers request `id`; call before proposing. A second registration of the same ID
    /// replaces the first, whose receiver then reports a closed channel.
    pub fn register(&self, id: u64) -> oneshot::Receiver<Outcome> {
        let (tx, rx) = oneshot::channel();
        self.lock().insert(id, tx);
        rx
    }

    /// Delivers `outcome` to whoever waits for `id`; does nothing when nobody does (entries
    /// proposed by other members, or a waiter that gave up).
    pub fn complete(&self, id: u64, outcome: Outcome) {
        let waiter = self.lock().remove(&id);
        if let Some(tx) = waiter {
            // A waiter that dropped its receiver no longer wants the outcome.
            let _ = tx.send(outcome);
        }
    }

    /// Forgets request `id` (the proposal failed or the caller gave up); its receiver, if
    /// still held, reports a closed channel.
    pub fn cancel(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// How many requests wait (for metrics, and to check that none leak).
    pub fn pending(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complete_delivers_to_the_registered_waiter_once() {
        let w = Waiters::new();
        let mut rx = w.register(7);
        w.complete(7, Outcome::Blank);
        assert!(matches!(rx.try_recv(), Ok(Outcome::Blank)));
        assert_eq!(w.pending(), 0);
        // A second completion of the same ID finds nobody and does nothing.
        w.complete(7, Outcome::Blank);
    }

    #[test]
    fn complete_without_a_waiter_is_a_no_op() {
        let w = Waiters::new();
        let mut rx = w.register(1);
        w.complete(2, Outcome::Membership);
        assert!(rx.try_recv().is_err(), "the other waiter got nothing");
        assert_eq!(w.pending(), 1);
    }

    #[test]
    fn cancel_closes_the_receiver() {
        let w = Waiters::new();
        let mut rx = w.register(3);
        w.cancel(3);
        assert_eq!(
            rx.try_recv().unwrap_err(),
            oneshot::error::TryRecvError::Closed
        );
        assert_eq!(w.pending(), 0);
    }

    #[test]
    fn a_waiter_that_gave_up_does_not_block_completion() {
        let w = Waiters::new();
        drop(w.register(4));
        w.complete(4, Outcome::Skipped);
        assert_eq!(w.pending(), 0);
    }

    #[test]
    fn registering_an_id_again_replaces_the_first_waiter() {
        let w = Waiters::new();
        let mut first = w.register(5);
        let mut second = w.register(5);
        w.complete(5, Outcome::Blank);
        assert_eq!(
            first.try_recv().unwrap_err(),
            oneshot::error::TryRecvError::Closed
        );
        assert!(matches!(second.try_recv(), Ok(Outcome::Blank)));
    }

    #[test]
    fn waiters_are_shared_across_threads() {
        let w = std::sync::Arc::new(Waiters::new());
        let rxs: Vec<_> = (0..8).map(|id| w.register(id)).collect();
        let handles: Vec<_> = (0..8)
            .map(|id| {
                let w = w.clone();
                std::thread::spawn(move || w.complete(id, Outcome::Blank))
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        for mut rx in rxs {
            assert!(matches!(rx.try_recv(), Ok(Outcome::Blank)));
        }
    }
}
