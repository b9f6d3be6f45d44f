//! Histograms of microseconds: the one shape every measure of herald-bench
//! (and of `benches/floor.rs`, which includes this file) is kept in.

use hdrhistogram::Histogram;

/// Largest latency recorded exactly, in microseconds (a minute); slower
/// deliveries are recorded as this.
const MAX_LATENCY_MICROS: u64 = 60_000_000;

/// An empty histogram of microseconds, up to a minute at 3 significant
/// digits.
pub fn micros_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_MICROS, 3).expect("static bounds are valid")
}
