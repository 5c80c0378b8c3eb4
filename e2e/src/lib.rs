//! The real local stack for tests and development: `wrangler dev` running the three workers in
//! one session on workerd (local D1, R2, KV, Queues) with state in a directory of its own, and
//! the provider simulator beside it. Black-box: everything talks HTTP.

// Test support: a failed expectation should stop the test loudly.
#![allow(clippy::panic, clippy::expect_used)]

pub mod check;
pub mod client;
pub mod creem;
pub mod dev;
pub mod floor;
pub mod fuzz;
pub mod recovery;
pub mod stack;
pub mod suite;
pub mod tasks;

pub use client::Client;

/// Milliseconds since the epoch on this machine's clock (the workers' `at_ms` uses the same).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(0))
        .unwrap_or(0)
}

/// Seconds since the epoch on this machine's clock.
pub fn now_secs() -> i64 {
    i64::try_from(now_ms() / 1000).unwrap_or(0)
}

pub use stack::{Stack, StackOptions};
