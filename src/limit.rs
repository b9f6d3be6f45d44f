//! A token bucket: at most `rate` events per second on average, bursts of
//! up to `burst`. Used for new connections per pod and for client
//! publishes per connection. Pure: the caller passes the time.

use std::time::{Duration, Instant};

/// Allows `rate` events per second with bursts of `burst`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket. A `rate` of zero allows nothing.
    pub fn new(rate: u32, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            rate: f64::from(rate),
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes one token if there is one at `now`.
    pub fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last);
        self.last = now;
        self.tokens = (self.tokens + elapsed.as_secs_f64() * self.rate).min(self.burst);
        if self.rate > 0.0 && self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A random share of `window`, to spread events (drain closes, retries)
/// over it.
pub fn jitter(window: Duration) -> Duration {
    window.mul_f64(rand::random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_allowed_then_the_rate_holds() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10, 3, start);
        assert!((0..3).all(|_| bucket.try_take(start)));
        assert!(!bucket.try_take(start));
        assert!(!bucket.try_take(start + Duration::from_millis(50)));
        assert!(bucket.try_take(start + Duration::from_millis(110)));
        assert!(!bucket.try_take(start + Duration::from_millis(120)));
    }

    #[test]
    fn an_idle_bucket_refills_only_to_its_burst() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(100, 2, start);
        let later = start + Duration::from_secs(60);
        assert!(bucket.try_take(later));
        assert!(bucket.try_take(later));
        assert!(!bucket.try_take(later));
    }

    #[test]
    fn a_zero_rate_allows_nothing() {
        let start = Instant::now();
        assert!(!TokenBucket::new(0, 5, start).try_take(start));
    }

    #[test]
    fn jitter_stays_inside_the_window() {
        let window = Duration::from_secs(10);
        assert!((0..100).all(|_| jitter(window) <= window));
    }
}
