//! The wake-up probe: how late the machine wakes a sleeping thread while a
//! run is measured.
//!
//! Every hop of a delivery (publisher → pod → peer → user) ends with a
//! thread being woken. On shared cores the tail of the latency histogram
//! follows how long a woken thread waits for a core, whichever server is
//! measured, so each report carries that figure beside the latency: a p99
//! that moves with the probe's is the machine's, not the server's.
//!
//! The probe is one plain thread sleeping [`INTERVAL`] at a time and
//! recording by how much each sleep overran (Linux's default timer slack,
//! 50 µs, is in the figure).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::micros::micros_histogram;

/// How long the probe sleeps each time: 200 wake-ups a second, little
/// next to what a run does.
pub const INTERVAL: Duration = Duration::from_millis(5);

/// A running probe; [`Probe::finish`] stops it and returns its samples.
pub struct Probe {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Histogram<u64>>,
}

impl Probe {
    /// Starts the probe's thread.
    pub fn start() -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = thread::Builder::new()
            .name("wakeup-probe".into())
            .spawn(move || {
                let mut late = micros_histogram();
                loop {
                    let asleep = Instant::now();
                    thread::sleep(INTERVAL);
                    let over = asleep.elapsed().saturating_sub(INTERVAL);
                    late.saturating_record(over.as_micros().try_into().unwrap_or(u64::MAX));
                    if flag.load(Ordering::Relaxed) {
                        return late;
                    }
                }
            })?;
        Ok(Self { stop, thread })
    }

    /// Stops the probe (after the sleep under way, at least one) and returns
    /// how late each wake-up was, in microseconds (empty if its thread
    /// panicked, which recording cannot).
    pub fn finish(self) -> Histogram<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_else(|_| micros_histogram())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_each_wake_up_until_stopped() {
        let probe = Probe::start().expect("spawning the probe");
        let started = Instant::now();
        thread::sleep(INTERVAL * 10);
        let late = probe.finish();
        let whole_sleeps = started.elapsed().as_micros() / INTERVAL.as_micros();
        // Every sample is one sleep of at least INTERVAL, all within the
        // time the probe ran, and it always completes the one under way.
        assert!(!late.is_empty(), "no samples");
        assert!(
            u128::from(late.len()) <= whole_sleeps + 1,
            "{} samples",
            late.len()
        );
    }
}
