//! The cluster-map epochs a process has seen, shared by its transport endpoints.
//!
//! Every request and every response on the wire carries the epoch of its sender's map
//! ([`crate::quic::RequestEnvelope`], [`crate::quic::ResponseEnvelope`]). The transport stamps
//! [`EpochClock::own`] on what it sends and records what it receives with
//! [`EpochClock::observe`]; whoever follows the map for the process (a node's Raft member, a
//! router's map follower) sets `own` and subscribes to the observed epoch, so that learning of a
//! newer map from any peer triggers an immediate refresh instead of waiting for the next poll.

use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::watch;

/// `0` means "no map yet".
#[derive(Debug)]
pub struct EpochClock {
    own: AtomicU64,
    observed: watch::Sender<u64>,
}

impl Default for EpochClock {
    fn default() -> Self {
        Self {
            own: AtomicU64::new(0),
            observed: watch::channel(0).0,
        }
    }
}

impl EpochClock {
    /// The epoch of this process's map.
    pub fn own(&self) -> u64 {
        self.own.load(Ordering::Relaxed)
    }

    /// Records that this process now follows a map of `epoch` (it is also observed).
    pub fn set_own(&self, epoch: u64) {
        self.own.store(epoch, Ordering::Relaxed);
        self.observe(epoch);
    }

    /// Records an epoch a peer stamped on a message; subscribers wake when it is the highest yet.
    pub fn observe(&self, epoch: u64) {
        self.observed.send_if_modified(|highest| {
            if epoch > *highest {
                *highest = epoch;
                true
            } else {
                false
            }
        });
    }

    /// The highest epoch seen, own or a peer's.
    pub fn observed(&self) -> u64 {
        *self.observed.borrow()
    }

    /// Wakes on every new highest observed epoch.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.observed.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_observed_epoch_only_rises() {
        let clock = EpochClock::default();
        let mut seen = clock.subscribe();
        clock.observe(5);
        assert!(seen.has_changed().unwrap());
        seen.borrow_and_update();
        clock.observe(3);
        assert!(!seen.has_changed().unwrap());
        clock.set_own(4);
        assert_eq!((clock.own(), clock.observed()), (4, 5));
    }
}
