//! How busy the threads that serve requests are: the CPU time the async
//! runtime's workers (which decode, route and answer every request) used,
//! over the time they could have used. Read from Linux's per-thread
//! `schedstat`; elsewhere nothing is known and nothing counts as busy.
//!
//! CPU time, not the runtime's own busy time: on a shared machine a worker
//! that waits for a core counts as busy to tokio, so at half load with a
//! neighbour on the cores it looked 70–80% busy; its CPU time (40–50%)
//! does not move with the neighbour.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Threads of the async runtime, by Linux thread id.
static IO_THREADS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

thread_local! {
    static REGISTERED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Counts the calling thread among the runtime's workers (once per thread;
/// call it from the runtime's `on_thread_park`, which only workers run).
pub fn register_io_thread() {
    if REGISTERED.with(|registered| registered.replace(true)) {
        return;
    }
    let id = std::fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|link| link.file_name()?.to_str()?.parse().ok());
    if let Some(id) = id {
        IO_THREADS.lock().expect("io thread list").push(id);
    }
}

/// CPU time a thread has used, from `/proc/self/task/ID/schedstat`.
fn cpu_time(thread: u32) -> Option<Duration> {
    let text = std::fs::read_to_string(format!("/proc/self/task/{thread}/schedstat")).ok()?;
    let nanos: u64 = text.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(nanos))
}

/// The runtime workers' CPU share over a span: sample it now and then.
#[derive(Debug)]
pub struct IoLoad {
    at: Instant,
    used: Duration,
    threads: usize,
}

impl Default for IoLoad {
    fn default() -> Self {
        let (used, threads) = Self::used();
        IoLoad {
            at: Instant::now(),
            used,
            threads,
        }
    }
}

impl IoLoad {
    /// CPU time of the registered workers, and how many were read.
    fn used() -> (Duration, usize) {
        let threads = IO_THREADS.lock().expect("io thread list").clone();
        let times: Vec<Duration> = threads.into_iter().filter_map(cpu_time).collect();
        (times.iter().sum(), times.len())
    }

    /// The workers' CPU share since the last sample (1.0: every worker
    /// running all the time), once `window` has passed; `None` before, or
    /// when no worker is known.
    pub fn sample(&mut self, window: Duration) -> Option<f64> {
        let elapsed = self.at.elapsed();
        if elapsed < window {
            return None;
        }
        let (used, threads) = Self::used();
        let known = threads == self.threads && threads > 0;
        let share = used.saturating_sub(self.used).as_secs_f64()
            / (elapsed.as_secs_f64() * threads.max(1) as f64);
        (self.at, self.used, self.threads) = (Instant::now(), used, threads);
        known.then_some(share)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spinning_worker_reads_busy_a_sleeping_one_idle_and_a_gone_one_unknown() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Barrier};
        let (step, stop) = (Arc::new(Barrier::new(2)), Arc::new(AtomicBool::new(false)));
        let (worker_step, halt) = (step.clone(), stop.clone());
        let worker = std::thread::spawn(move || {
            register_io_thread();
            register_io_thread();
            worker_step.wait(); // registered; now idle
            worker_step.wait(); // now spin
            while !halt.load(Ordering::Relaxed) {
                std::hint::spin_loop();
            }
        });
        step.wait();
        assert_eq!(IO_THREADS.lock().unwrap().len(), 1, "registered once");
        let mut load = IoLoad::default();
        assert_eq!(
            load.sample(Duration::from_secs(60)),
            None,
            "window not over"
        );
        std::thread::sleep(Duration::from_millis(300));
        let idle = load.sample(Duration::from_millis(100)).unwrap();
        step.wait();
        std::thread::sleep(Duration::from_millis(300));
        let busy = load.sample(Duration::from_millis(100)).unwrap();
        stop.store(true, Ordering::Relaxed);
        worker.join().unwrap();
        // The runner's other tests may share the spinner's core.
        assert!(idle < 0.1 && busy > 0.25, "idle {idle}, busy {busy}");
        // The thread is gone: its CPU time cannot be read, nothing is known.
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(load.sample(Duration::from_millis(100)), None);
    }
}
