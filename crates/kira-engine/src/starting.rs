//! The runs starting at once: claimed, and still preparing their first
//! model call (context pack, session, prompt). That work is this process's
//! CPU, and a pass that claims more of it than the machine can do at once
//! makes every one of those runs wait for the others: thirty agent runs
//! claimed together on two cores each took about fifteen times as long to
//! start. So a pass claims at most [`StartGate::room`] more; the rest stay
//! in the queue (another process may take them), and a run reaching its
//! first call frees its place and wakes the scheduler if a pass was held
//! back.
//!
//! How many may start at once adapts to how long starts take. A run's
//! start is timed from its first poll (not its claim, so time spent waiting
//! for the runtime is not counted) to its first call, in its thread's CPU
//! time where it ends on the thread it began on (so time the OS gives other
//! processes is not counted either: with several kira processes on two
//! cores, wall time had every start look slow and held every pass to
//! `max_starting` claims), and the limit is what
//! the cores can bring to their call within `scheduler.start_target` (2 ms):
//! `cores x start_target / (recent start time)`, never below
//! `scheduler.max_starting`. Starts that interleave on a busy machine take
//! longer each, so the limit narrows by itself where preparation is heavy
//! (agents building context packs) and widens where it is nothing (a run
//! whose executor prepares nothing, the queue benchmark's simulated runs):
//! there, a fixed small limit cut every pass to a few claims and the queue
//! ran four times slower.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// The widest the limit grows: far past what one pass claims
/// (`scheduler::CLAIM_BATCH` per batch, `scheduler.batch` per pass).
const MOST_STARTING: usize = 4096;

/// Weight of the newest start in the running average of start times.
const AVERAGE_WEIGHT: f64 = 0.2;

#[derive(Debug, Default)]
struct State {
    starting: usize,
    /// A pass left claimable tasks for want of room: the next place freed
    /// wakes the scheduler.
    held_back: bool,
    /// Running average of recent start times, in microseconds; None until
    /// a start has been timed.
    start_micros: Option<f64>,
}

#[derive(Debug)]
pub(crate) struct StartGate {
    /// The limit's floor (`scheduler.max_starting`).
    min: usize,
    /// How long the starts of one pass may take side by side
    /// (`scheduler.start_target`, by default 2 ms: well inside the 20 ms
    /// of its own time per task kira allows itself); zero: the limit stays
    /// at its floor.
    target: Duration,
    cores: usize,
    state: Mutex<State>,
    wake: Arc<Notify>,
}

/// One run's place among those starting; freed when dropped, which times
/// the start.
#[derive(Debug)]
pub(crate) struct Starting {
    gate: Arc<StartGate>,
    /// When the run began to prepare (its first poll).
    since: Instant,
    /// The thread it began on and that thread's CPU time then.
    cpu: Option<(std::thread::ThreadId, Duration)>,
}

impl StartGate {
    pub(crate) fn new(min: usize, target: Duration, wake: Arc<Notify>) -> Arc<Self> {
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
        Self::with_cores(min, target, cores, wake)
    }

    fn with_cores(min: usize, target: Duration, cores: usize, wake: Arc<Notify>) -> Arc<Self> {
        Arc::new(Self {
            min: min.max(1),
            target,
            cores: cores.max(1),
            state: Mutex::default(),
            wake,
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many runs may be starting at once now: what the cores bring to
    /// their first call within the target at the recent start time.
    fn limit(&self, s: &State) -> usize {
        let Some(micros) = s.start_micros.filter(|_| !self.target.is_zero()) else {
            return self.min;
        };
        #[allow(clippy::cast_precision_loss)]
        let budget = (self.cores as f64) * self.target.as_secs_f64() * 1e6;
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let fit = (budget / micros.max(1.0)).floor().min(MOST_STARTING as f64) as usize;
        fit.max(self.min)
    }

    /// How many more runs may start now.
    pub(crate) fn room(&self) -> usize {
        let s = self.state();
        self.limit(&s).saturating_sub(s.starting)
    }

    /// A place for a run just claimed (taken even past the limit: the claim
    /// is made, and the run must start).
    pub(crate) fn enter(self: &Arc<Self>) -> Starting {
        self.state().starting += 1;
        Starting {
            gate: self.clone(),
            since: Instant::now(),
            cpu: None,
        }
    }

    /// Called by a pass that leaves claimable tasks: whether there is still
    /// no room. If so, the next place freed wakes the scheduler; if a place
    /// was freed meanwhile, the pass may go on claiming.
    pub(crate) fn hold_back(&self) -> bool {
        let mut s = self.state();
        if s.starting < self.limit(&s) {
            return false;
        }
        s.held_back = true;
        true
    }

    fn leave(&self, took: Duration) {
        let wake = {
            let mut s = self.state();
            s.starting = s.starting.saturating_sub(1);
            let micros = took.as_secs_f64() * 1e6;
            s.start_micros = Some(match s.start_micros {
                None => micros,
                Some(avg) => avg + AVERAGE_WEIGHT * (micros - avg),
            });
            std::mem::take(&mut s.held_back)
        };
        if wake {
            self.wake.notify_one();
        }
    }
}

impl Starting {
    /// The run begins to prepare: its start is timed from here, so time
    /// spent waiting for the runtime after the claim does not count.
    pub(crate) fn begin(&mut self) {
        self.since = Instant::now();
        self.cpu = thread_cpu();
    }

    /// How long the start took: the CPU time of its thread when it ends on
    /// the thread it began on (time the OS gave other threads and
    /// processes is not the start's; work of other tasks on the same thread
    /// is, as it delayed the start), else the time that passed.
    fn took(&self) -> Duration {
        let wall = self.since.elapsed();
        match (self.cpu, thread_cpu()) {
            (Some((began_on, then)), Some((now_on, now))) if began_on == now_on => {
                now.saturating_sub(then).min(wall)
            }
            _ => wall,
        }
    }
}

/// The current thread and its CPU time, where the system reports it.
fn thread_cpu() -> Option<(std::thread::ThreadId, Duration)> {
    let t = cpu_time::ThreadTime::try_now().ok()?;
    Some((std::thread::current().id(), t.as_duration()))
}

impl Drop for Starting {
    fn drop(&mut self) {
        self.gate.leave(self.took());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS5: Duration = Duration::from_millis(5);

    /// A place whose start will have taken a second: slow enough that the
    /// limit stays at its floor.
    fn slow(gate: &Arc<StartGate>) -> Starting {
        let mut p = gate.enter();
        p.since = Instant::now()
            .checked_sub(Duration::from_secs(1))
            .expect("a second ago");
        p
    }

    #[tokio::test]
    async fn a_place_freed_after_a_pass_was_held_back_wakes_the_scheduler() {
        let wake = Arc::new(Notify::new());
        let gate = StartGate::with_cores(2, MS5, 2, wake.clone());
        assert_eq!(gate.room(), 2);
        let a = slow(&gate);
        let b = slow(&gate);
        assert_eq!(gate.room(), 0);
        // No pass was held back: freeing a place wakes nobody.
        drop(a);
        assert_eq!(gate.room(), 1);
        assert!(!gate.hold_back(), "there is room: the pass goes on");
        let c = slow(&gate);
        assert!(gate.hold_back());
        drop(b);
        // The wake was stored for the scheduler's next wait.
        tokio::time::timeout(Duration::from_secs(5), wake.notified())
            .await
            .expect("woken");
        // Once: a second place freed without a pass held back wakes nobody.
        drop(c);
        assert_eq!(gate.room(), 2);
        assert!(
            tokio::time::timeout(Duration::ZERO, wake.notified())
                .await
                .is_err()
        );
    }

    #[test]
    fn a_run_claimed_past_the_limit_still_takes_a_place() {
        let gate = StartGate::with_cores(1, MS5, 2, Arc::new(Notify::new()));
        let a = slow(&gate);
        let b = slow(&gate);
        assert_eq!(gate.room(), 0);
        drop(a);
        assert_eq!(gate.room(), 0);
        drop(b);
        assert_eq!(gate.room(), 1);
    }

    #[test]
    fn fast_starts_widen_the_limit_and_slow_ones_bring_it_back_to_its_floor() {
        let gate = StartGate::with_cores(4, MS5, 2, Arc::new(Notify::new()));
        // Nothing timed yet: the floor.
        assert_eq!(gate.room(), 4);
        // Starts of 50 us: two cores bring 200 to their call in 5 ms.
        gate.leave(Duration::from_micros(50));
        assert_eq!(gate.room(), 200);
        // Starts that take 20 ms each (heavy preparation, or many
        // interleaved): the average moves towards them, and the limit falls
        // to its floor, never below.
        for _ in 0..40 {
            gate.leave(Duration::from_millis(20));
        }
        assert_eq!(gate.room(), 4);
        // Instant starts are capped.
        for _ in 0..200 {
            gate.leave(Duration::ZERO);
        }
        assert_eq!(gate.room(), MOST_STARTING);
    }

    #[test]
    fn a_start_is_timed_from_its_first_poll_not_its_claim() {
        let gate = StartGate::with_cores(1, MS5, 2, Arc::new(Notify::new()));
        let mut p = slow(&gate);
        // Claimed a second ago, first polled now: the wait is not counted.
        p.begin();
        drop(p);
        assert!(
            gate.room() > 100,
            "a start of microseconds widens the limit"
        );
    }

    /// Works `cpu` of this thread's CPU time.
    fn spin(cpu: Duration) {
        let began = cpu_time::ThreadTime::now();
        while began.elapsed() < cpu {
            std::hint::spin_loop();
        }
    }

    /// A start is its thread's CPU time: time the thread spent off the CPU
    /// (here waiting for another thread, as when the OS runs other
    /// processes) is not counted, work on it is.
    #[test]
    fn a_start_is_timed_in_its_threads_cpu_time() {
        let gate = StartGate::with_cores(4, MS5, 2, Arc::new(Notify::new()));
        let mut p = gate.enter();
        p.begin();
        // Off the CPU while another thread works 20 ms of its own.
        let (done, woken) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            spin(Duration::from_millis(20));
            done.send(()).ok();
        });
        woken.recv().expect("woken");
        drop(p);
        // Timed by the clock, 20 ms would hold the limit at its floor (4);
        // the thread's own work (starting the other, waiting) is far less.
        assert!(
            gate.room() > 20,
            "20 ms off the CPU is not a slow start: room for {}",
            gate.room()
        );
        for _ in 0..40 {
            let mut p = gate.enter();
            p.begin();
            spin(Duration::from_millis(10));
            drop(p);
        }
        assert_eq!(gate.room(), 4, "10 ms of CPU each is a slow start");
    }

    #[test]
    fn a_zero_target_keeps_the_limit_at_its_floor() {
        let gate = StartGate::with_cores(3, Duration::ZERO, 2, Arc::new(Notify::new()));
        gate.leave(Duration::ZERO);
        assert_eq!(gate.room(), 3);
    }
}
