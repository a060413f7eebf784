//! Fault injection for tests: make this node's raft traffic to and from chosen peers disappear
//! (a partition), drop a fraction of it, or delay it by a random amount (which also reorders).
//!
//! The control API (`RaftNode::faults`) exists only with the `fault-injection` feature; without
//! it nothing can switch a fault on and the check on the send path is one atomic load. Faults
//! apply to raft traffic (message batches and snapshot streams), not to client RPCs.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// What to do with one message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Pass,
    Drop,
    Delay(Duration),
}

#[derive(Default)]
struct FaultState {
    cut_off: HashSet<u64>,
    drop_fraction: f64,
    delay: Option<(Duration, Duration)>,
}

/// The faults in force on one node.
#[derive(Default)]
pub struct FaultInjector {
    active: AtomicBool,
    state: Mutex<FaultState>,
}

impl FaultInjector {
    fn update(&self, f: impl FnOnce(&mut FaultState)) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut state);
        let active =
            !state.cut_off.is_empty() || state.drop_fraction > 0.0 || state.delay.is_some();
        self.active.store(active, Ordering::Release);
    }

    /// Lose every message between this node and `peers`, both ways (add to the current cut).
    pub fn partition_from(&self, peers: &[u64]) {
        self.update(|s| s.cut_off.extend(peers.iter().copied()));
    }

    /// Drop this fraction (0.0 to 1.0) of outgoing messages at random.
    pub fn set_drop_rate(&self, fraction: f64) {
        self.update(|s| s.drop_fraction = fraction.clamp(0.0, 1.0));
    }

    /// Delay every outgoing message by a random time in `[min, max]` (reorders them).
    pub fn set_delay(&self, min: Duration, max: Duration) {
        self.update(|s| s.delay = Some((min, max.max(min))));
    }

    /// Remove every fault.
    pub fn heal(&self) {
        self.update(|s| *s = FaultState::default());
    }

    /// Whether traffic with `peer` is cut (used for inbound traffic).
    pub(crate) fn is_cut_off(&self, peer: u64) -> bool {
        if !self.active.load(Ordering::Acquire) {
            return false;
        }
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.cut_off.contains(&peer)
    }

    /// What to do with an outgoing message to `peer`.
    pub(crate) fn verdict(&self, peer: u64) -> Verdict {
        if !self.active.load(Ordering::Acquire) {
            return Verdict::Pass;
        }
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.cut_off.contains(&peer)
            || (state.drop_fraction > 0.0 && rand::random::<f64>() < state.drop_fraction)
        {
            return Verdict::Drop;
        }
        match state.delay {
            Some((min, max)) if max > Duration::ZERO => {
                let span = (max - min).as_micros() as u64;
                let extra = if span == 0 {
                    0
                } else {
                    rand::random::<u64>() % span
                };
                Verdict::Delay(min + Duration::from_micros(extra))
            }
            _ => Verdict::Pass,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_drops_and_heal_restores() {
        let f = FaultInjector::default();
        assert_eq!(f.verdict(2), Verdict::Pass);
        f.partition_from(&[2]);
        assert_eq!(f.verdict(2), Verdict::Drop);
        assert_eq!(f.verdict(3), Verdict::Pass);
        assert!(f.is_cut_off(2));
        f.heal();
        assert_eq!(f.verdict(2), Verdict::Pass);
        f.set_drop_rate(1.0);
        assert_eq!(f.verdict(3), Verdict::Drop);
        f.heal();
        f.set_delay(Duration::from_millis(1), Duration::from_millis(2));
        assert!(matches!(f.verdict(3), Verdict::Delay(d) if d >= Duration::from_millis(1)));
    }
}
