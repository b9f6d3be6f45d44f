//! Churn: connections that join a topic and leave it again at a steady rate
//! while the measured load runs. It is the load that per-subscription state
//! (presence, later interest routing) pays for, so its cost and its effect on
//! the measured users' latency can be read beside a run without it.
//!
//! Each cycle is one new connection, spread round robin over the pods, that
//! subscribes to the churn topic, waits for the reply, and closes. At most
//! [`MAX_IN_FLIGHT`] cycles run at once; ticks that find them all busy are
//! skipped, so a server that cannot keep up shows as fewer cycles, not as a
//! growing backlog.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::args::ServerKind;
use crate::load::{self, Target, User};

/// Most cycles under way at once.
pub const MAX_IN_FLIGHT: usize = 256;

/// What the churn did over the run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ChurnReport {
    /// Cycles asked for per second.
    pub rate: f64,
    /// Connections that subscribed (one join and one leave each).
    pub cycles: u64,
    /// Cycles that could not connect or subscribe.
    pub failed: u64,
    /// Ticks skipped because every slot was busy.
    pub skipped: u64,
}

/// Runs cycles at `rate` per second on `targets` until `stop`, each
/// subscribing to `topic`; `source_ips` as for the measured users.
pub async fn run(
    targets: Vec<Target>,
    topic: String,
    rate: f64,
    source_ips: u8,
    stop: CancellationToken,
) -> ChurnReport {
    let cycles = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut skipped = 0;
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    for index in 0.. {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            skipped += 1;
            continue;
        };
        let target = targets[index % targets.len()].clone();
        let user = User {
            index,
            source: load::source_for(&target.addr, index, source_ips),
            target,
            server: ServerKind::Herald,
            topic: topic.clone(),
            stride: 1,
        };
        let (cycles, failed) = (Arc::clone(&cycles), Arc::clone(&failed));
        tokio::spawn(async move {
            // Dropping the client closes the connection: the leave.
            match load::connect_and_subscribe(&user).await {
                Ok(_) => cycles.fetch_add(1, Ordering::Relaxed),
                Err(_) => failed.fetch_add(1, Ordering::Relaxed),
            };
            drop(slot);
        });
    }
    // Let the cycles under way finish, so each counted join has its leave.
    let _all = slots.acquire_many(MAX_IN_FLIGHT as u32).await;
    ChurnReport {
        rate,
        cycles: cycles.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
        skipped,
    }
}
