//! How long a busy session waits between two writes: the write delay,
//! fixed or following how late the pod's writes run.
//!
//! A fixed delay holds every busy session for the same time, whatever the
//! load. The adaptive one (`auto`) watches the *lateness* of each batch of
//! writes the hub makes (a fan-out chunk, or the flusher's turn) — how long
//! after its first message could have been written the batch started —
//! and holds busy sessions in proportion to it: on a
//! pod with cores to spare writes are a few microseconds late and nothing
//! is held; on one that is behind, each frame already waits for the CPU,
//! and holding a session a little longer packs more messages into its next
//! frame, which is what lets the pod catch up (every frame costs a system
//! call that on loopback also runs the receiver's side).

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The longest delay `auto` holds a session for, unless told otherwise.
pub const AUTO_MAX: Duration = Duration::from_millis(20);

/// The adaptive delay is this many times the average lateness (so 20 ms
/// once batches of writes start more than 0.6 ms late)...
const GAIN: u64 = 32;

/// ...and none at all below this: batches of writes starting within about
/// 30 µs of when they could mean the pod keeps up.
const MIN_DELAY: Duration = Duration::from_millis(1);

/// Each batch moves the average lateness by 1/2^`SMOOTHING` of the way to
/// its own: at thousands of batches a second, the average follows within
/// a fraction of a second.
const SMOOTHING: u32 = 8;

/// A held write waits on the runtime's timer, which fires up to a
/// millisecond after the instant asked for: that much of its lateness is
/// the timer's, not the pod's.
const TIMER_SLACK: Duration = Duration::from_millis(1);

/// The `--write-delay` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteDelay {
    /// Every busy session waits this long after a write (zero: never).
    Fixed(Duration),
    /// Busy sessions wait in proportion to how late the pod's writes run,
    /// at most `max`.
    Auto {
        /// The longest wait.
        max: Duration,
    },
}

impl Default for WriteDelay {
    fn default() -> Self {
        Self::Fixed(Duration::ZERO)
    }
}

/// Why a `--write-delay` value was refused.
#[derive(Debug, thiserror::Error)]
#[error("expected a duration (such as 20ms), `auto` or `auto:<max duration>`: {0}")]
pub struct BadWriteDelay(#[from] humantime::DurationError);

impl FromStr for WriteDelay {
    type Err = BadWriteDelay;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.strip_prefix("auto") {
            Some("") => Ok(Self::Auto { max: AUTO_MAX }),
            Some(rest) if rest.starts_with(':') => Ok(Self::Auto {
                max: humantime::parse_duration(&rest[1..])?,
            }),
            _ => Ok(Self::Fixed(humantime::parse_duration(s)?)),
        }
    }
}

impl fmt::Display for WriteDelay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Fixed(delay) => write!(f, "{}", humantime::format_duration(delay)),
            Self::Auto { max } if max == AUTO_MAX => f.write_str("auto"),
            Self::Auto { max } => write!(f, "auto:{}", humantime::format_duration(max)),
        }
    }
}

/// A hub's write delay and, for `auto`, the lateness it follows.
#[derive(Debug, Default)]
pub struct Pacing {
    setting: WriteDelay,
    /// Average lateness of the hub's writes, nanoseconds (`auto` only).
    lateness: AtomicU64,
}

impl Pacing {
    /// Pacing by `setting`.
    pub fn new(setting: WriteDelay) -> Self {
        Self {
            setting,
            lateness: AtomicU64::new(0),
        }
    }

    /// How long a session that has just written waits before its next
    /// write, now.
    pub fn delay(&self) -> Duration {
        match self.setting {
            WriteDelay::Fixed(delay) => delay,
            WriteDelay::Auto { max } => {
                let wanted = Duration::from_nanos(
                    self.lateness.load(Ordering::Relaxed).saturating_mul(GAIN),
                );
                if wanted < MIN_DELAY {
                    Duration::ZERO
                } else {
                    wanted.min(max)
                }
            }
        }
    }

    /// Whether batches of writes should [`record`](Self::record) their lateness
    /// (only `auto` uses it; a fixed delay needs no measuring).
    pub fn follows_lateness(&self) -> bool {
        matches!(self.setting, WriteDelay::Auto { .. })
    }

    /// Records one batch of writes that started `late` after its first
    /// message could have been written; `held` if the delay had held that
    /// session (then the timer's slack is not counted against the pod).
    pub fn record(&self, late: Duration, held: bool) {
        let late = if held {
            late.saturating_sub(TIMER_SLACK)
        } else {
            late
        };
        let sample = u64::try_from(late.as_nanos()).unwrap_or(u64::MAX);
        // Threads racing here may lose each other's update: one sample of
        // thousands, which an average can spare. No lock, no CAS loop.
        let average = self.lateness.load(Ordering::Relaxed);
        let next = if sample >= average {
            average + ((sample - average) >> SMOOTHING)
        } else {
            average - ((average - sample) >> SMOOTHING)
        };
        self.lateness.store(next, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Records enough writes `late` for the average to settle there.
    fn steady(pacing: &Pacing, late: Duration, held: bool) {
        for _ in 0..10_000 {
            pacing.record(late, held);
        }
    }

    #[test]
    fn settings_parse_and_print_back() {
        for (text, setting) in [
            ("0ms", WriteDelay::Fixed(Duration::ZERO)),
            ("20ms", WriteDelay::Fixed(ms(20))),
            ("auto", WriteDelay::Auto { max: AUTO_MAX }),
            ("auto:50ms", WriteDelay::Auto { max: ms(50) }),
        ] {
            let parsed: WriteDelay = text.parse().expect("a valid setting");
            assert_eq!(parsed, setting, "{text}");
            let printed = parsed.to_string();
            assert_eq!(printed.parse::<WriteDelay>().expect("prints back"), setting);
        }
        for bad in ["soon", "auto:", "auto:soon", "autumn", "-5ms"] {
            assert!(bad.parse::<WriteDelay>().is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn a_fixed_delay_ignores_lateness() {
        let pacing = Pacing::new(WriteDelay::Fixed(ms(20)));
        steady(&pacing, ms(100), false);
        assert_eq!(pacing.delay(), ms(20));
        assert_eq!(Pacing::default().delay(), Duration::ZERO);
    }

    #[test]
    fn auto_holds_nothing_while_writes_run_on_time() {
        let pacing = Pacing::new(WriteDelay::Auto { max: ms(20) });
        steady(&pacing, Duration::from_micros(20), false);
        assert_eq!(pacing.delay(), Duration::ZERO);
    }

    #[test]
    fn auto_holds_in_proportion_to_lateness_up_to_its_maximum() {
        let pacing = Pacing::new(WriteDelay::Auto { max: ms(20) });
        steady(&pacing, Duration::from_micros(100), false);
        let delay = pacing.delay();
        assert!(
            delay > ms(3) && delay <= Duration::from_micros(3200),
            "100 µs late gave {delay:?}"
        );
        steady(&pacing, ms(50), false);
        assert_eq!(pacing.delay(), ms(20));
    }

    #[test]
    fn auto_lets_go_once_the_pod_catches_up() {
        let pacing = Pacing::new(WriteDelay::Auto { max: ms(20) });
        steady(&pacing, ms(10), false);
        assert_eq!(pacing.delay(), ms(20));
        steady(&pacing, Duration::from_micros(20), false);
        assert_eq!(pacing.delay(), Duration::ZERO);
    }

    #[test]
    fn a_held_write_is_not_blamed_for_the_timers_slack() {
        let pacing = Pacing::new(WriteDelay::Auto { max: ms(20) });
        steady(&pacing, Duration::from_micros(900), true);
        assert_eq!(pacing.delay(), Duration::ZERO);
    }
}
