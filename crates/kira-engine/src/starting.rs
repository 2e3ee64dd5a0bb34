//! The runs starting at once: claimed, and still preparing their first
//! model call (context pack, session, prompt). That work is this process's
//! CPU, and a pass that claims more of it than the machine can do at once
//! makes every one of those runs wait for the others: thirty runs claimed
//! together on two cores each take about fifteen times as long to start.
//! So a pass claims at most [`StartGate::room`] more; the rest stay in the
//! queue (another process may take them), and a run reaching its first call
//! frees its place and wakes the scheduler if a pass was held back.

use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;

#[derive(Debug, Default)]
struct State {
    starting: usize,
    /// A pass left claimable tasks for want of room: the next place freed
    /// wakes the scheduler.
    held_back: bool,
}

#[derive(Debug)]
pub(crate) struct StartGate {
    max: usize,
    state: Mutex<State>,
    wake: Arc<Notify>,
}

/// One run's place among those starting; freed when dropped.
#[derive(Debug)]
pub(crate) struct Starting {
    gate: Arc<StartGate>,
}

impl StartGate {
    pub(crate) fn new(max: usize, wake: Arc<Notify>) -> Arc<Self> {
        Arc::new(Self {
            max: max.max(1),
            state: Mutex::default(),
            wake,
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many more runs may start now.
    pub(crate) fn room(&self) -> usize {
        self.max.saturating_sub(self.state().starting)
    }

    /// A place for a run just claimed (taken even past the limit: the claim
    /// is made, and the run must start).
    pub(crate) fn enter(self: &Arc<Self>) -> Starting {
        self.state().starting += 1;
        Starting { gate: self.clone() }
    }

    /// Called by a pass that leaves claimable tasks: whether there is still
    /// no room. If so, the next place freed wakes the scheduler; if a place
    /// was freed meanwhile, the pass may go on claiming.
    pub(crate) fn hold_back(&self) -> bool {
        let mut s = self.state();
        if s.starting < self.max {
            return false;
        }
        s.held_back = true;
        true
    }
}

impl Drop for Starting {
    fn drop(&mut self) {
        let wake = {
            let mut s = self.gate.state();
            s.starting = s.starting.saturating_sub(1);
            std::mem::take(&mut s.held_back)
        };
        if wake {
            self.gate.wake.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_place_freed_after_a_pass_was_held_back_wakes_the_scheduler() {
        let wake = Arc::new(Notify::new());
        let gate = StartGate::new(2, wake.clone());
        assert_eq!(gate.room(), 2);
        let a = gate.enter();
        let b = gate.enter();
        assert_eq!(gate.room(), 0);
        // No pass was held back: freeing a place wakes nobody.
        drop(a);
        assert_eq!(gate.room(), 1);
        assert!(!gate.hold_back(), "there is room: the pass goes on");
        let c = gate.enter();
        assert!(gate.hold_back());
        drop(b);
        // The wake was stored for the scheduler's next wait.
        tokio::time::timeout(std::time::Duration::from_secs(5), wake.notified())
            .await
            .expect("woken");
        // Once: a second place freed without a pass held back wakes nobody.
        drop(c);
        assert_eq!(gate.room(), 2);
        assert!(
            tokio::time::timeout(std::time::Duration::ZERO, wake.notified())
                .await
                .is_err()
        );
    }

    #[test]
    fn a_run_claimed_past_the_limit_still_takes_a_place() {
        let gate = StartGate::new(1, Arc::new(Notify::new()));
        let a = gate.enter();
        let b = gate.enter();
        assert_eq!(gate.room(), 0);
        drop(a);
        assert_eq!(gate.room(), 0);
        drop(b);
        assert_eq!(gate.room(), 1);
    }
}
