//! `cargo xtask bench`: edgeline against the platform's own answer to this job (the Cloudflare
//! Workflows peer in `bench/peer-workflows`, see `peer.rs`) and against floors that do no work,
//! all on the same machine, the same wrangler and the same workerd, in the same run.
//!
//!     cargo xtask bench [--runs 3] [--tasks 1000] [--requests 1000] [--events 1000] [--no-cron]
//!
//! Each run starts three `wrangler dev` sessions side by side: the hello/no-op floor
//! (`bench/floor-worker`), edgeline's stack (api, consumer, cron) and the peer, the last two on
//! one provider simulator. Then:
//!
//! - submit latency at 1, 8 and 32 clients: edgeline's and the peer's `POST /api/tasks` and the
//!   floor beside edgeline (a client per eight submit clients probing [`FLOOR_PATH`], the api's
//!   route that does no I/O) are driven at the same time, each by its own clients, each going on
//!   until all three sent their share (`--requests` submits, a third as many probes), so all are
//!   measured beside the same background load (both pipelines working through what was
//!   submitted, the simulator, the load generator). The floor shares edgeline's workerd, whose
//!   one JavaScript thread also runs its consumer and the local D1, KV and queues: a hello in a
//!   workerd of its own would leave that wait out of the floor and count it against edgeline.
//!   Error responses are counted apart from latencies;
//! - the pipeline: `--tasks` tasks through edgeline, then through the peer (instant provider),
//!   and as many messages through the floor's no-op consumer;
//! - cost per completed task, from the workers' own per-invocation counters, with a realistic
//!   generation time (9 s, the models' typical time both systems are told) and the provider's
//!   callbacks on, and with a generation twice as slow and its callback lost (polls only);
//! - webhook ingress; cron scaling once per size on seeded stacks.
//!
//! Every headline figure is a ratio taken inside one run; the summary gives the median over runs
//! with its range. A figure that would be computed over no samples is an error, not a zero. The
//! results record the commit they describe (`+changes` when the tree was dirty at the start).
//! Writes `bench/results.json`, `bench/RESULTS.md` and the block of [`BLOCK_FILE`]
//! (`docs/BENCHMARK.md`) between [`BLOCK_BEGIN`] and [`BLOCK_END`]; a test keeps that block equal
//! to what the results render.
//!
//! Here: the options, the budgets' limits, the list prices and [`run`]. Beside it, in the order
//! a run goes: `harness` (the systems, their stacks and logs), `scenarios` (one run: submit
//! latency, the pipeline, webhook ingress), `costs` (cost per completed task), `procfs` (threads'
//! CPU, memory and overlapping batches, from Linux `/proc` and the logs), `cron` (cron scaling),
//! `summary` (medians, ranges, budgets) and `report` (the markdown). `size` is `cargo xtask bench
//! size`: what takes the bytes of each worker's wasm.

use crate::load::{self, Load, Request, Target};
use crate::peer::{Peer, PeerOptions};
use crate::{root, Result};
use e2e::floor::Floor;
use e2e::stack::{Seed, Stack, StackOptions, ADMIN_TOKEN, CREEM_WEBHOOK_SECRET};
use serde_json::{json, Map, Value};
use std::collections::{HashMap, HashSet};
use std::fs;
use std::process::Command;
use std::time::{Duration, Instant};

const CONCURRENCY: [usize; 3] = [1, 8, 32];
const PIPELINE_CONCURRENCY: usize = 16;
const WEBHOOK_CONCURRENCY: usize = 8;
const USERS: usize = 64;
/// The cost scenarios: tasks per system and how long a generation takes.
const COST_TASKS: usize = 20;
const REALISTIC_GENERATION_MS: u64 = 9000;
/// The callbacks-lost scenario: a generation twice as slow as the typical one, so that polls
/// find tasks still generating (the cost of an unchanged poll needs those samples).
const SLOW_GENERATION_MS: u64 = 2 * REALISTIC_GENERATION_MS;
/// The poll schedule both systems get: the first poll waits for the models' typical generation
/// time (edgeline's `TYPICAL_GENERATION_SECS`; the peer's `waitForEvent` timeout for the
/// provider's callback), then every `POLL_MAX_SECS` (2 s, the `e2e::stack` default; the peer
/// sleeps as long between polls).
const FIRST_POLL_SECS: u64 = REALISTIC_GENERATION_MS / 1000;
const POLL_SECS: u64 = 2;
/// How long a cost scenario keeps counting after its last task ended: longer than the policy's
/// first wait that follows the typical time, plus a queue delivery.
const SETTLE_MS: u64 = 5000;
/// Cron scaling: base sizes, run at 1x, 10x and 100x.
const BASE_ORDERS: u64 = 1000;
const BASE_CACHE_OBJECTS: u64 = 100;
const CACHE_MAX_AGE_SECS: u64 = 3;
/// Budgets.
const SUBMIT_P99_VS_FLOOR: f64 = 2.0;
const PIPELINE_VS_PEER: f64 = 1.5;
const MAX_D1_ROUND_TRIPS: f64 = 3.0;
const WASM_VS_FLOOR: f64 = 2.0;
/// List prices per million operations (shared/PLATFORM.md, Workers Paid, late 2026).
const PRICES: [(&str, f64); 9] = [
    ("d1_rows_written", 1.00),
    ("d1_rows_read", 0.001),
    ("kv_writes", 5.00),
    ("kv_reads", 0.50),
    ("r2_class_a", 4.50),
    ("r2_class_b", 0.36),
    ("queue_operations", 0.40),
    ("invocations", 0.30),
    ("step_executions", 0.30),
];

/// The document that carries the generated block, relative to the repository's root.
pub const BLOCK_FILE: &str = "docs/BENCHMARK.md";
pub const BLOCK_BEGIN: &str =
    "<!-- bench:begin (generated by `cargo xtask bench` from bench/results.json; do not edit) -->";
pub const BLOCK_END: &str = "<!-- bench:end -->";

struct Options {
    runs: usize,
    tasks: usize,
    requests: usize,
    events: usize,
    cron: bool,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut o = Options {
        runs: 3,
        tasks: 1000,
        requests: 1000,
        events: 1000,
        cron: true,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut num = |name: &str| -> Result<usize> {
            it.next()
                .and_then(|v| v.parse().ok())
                .filter(|n| *n > 0)
                .ok_or(format!("{name} needs a positive number"))
        };
        match a.as_str() {
            "--runs" => o.runs = num("--runs")?,
            "--tasks" => o.tasks = num("--tasks")?,
            "--requests" => o.requests = num("--requests")?,
            "--events" => o.events = num("--events")?,
            "--no-cron" => o.cron = false,
            other => return Err(format!("unknown bench option {other}")),
        }
    }
    Ok(o)
}

pub fn run(args: &[String]) -> Result<()> {
    let o = parse(args)?;
    // what the results describe, read before this run writes anything
    let versions = versions();
    crate::peer::write_sql()?;
    crate::peer::ensure_npm()?;
    crate::peer::typecheck()?;
    let mut runs = Vec::new();
    for r in 0..o.runs {
        eprintln!("bench: run {} of {}", r + 1, o.runs);
        let v = one_run(&o, r)?;
        // each run as it ends, for a look while later ones go on (bench/tmp is not committed)
        let tmp = root().join("bench/tmp");
        let _ = fs::create_dir_all(&tmp);
        let _ = fs::write(tmp.join(format!("run-{r}.json")), v.to_string());
        runs.push(v);
    }
    let cron = if o.cron { cron_scaling()? } else { Value::Null };
    let report = summarise(&o, &runs, cron, versions)?;
    let dir = root().join("bench");
    let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    fs::write(dir.join("results.json"), text + "\n")
        .map_err(|e| format!("writing results.json: {e}"))?;
    let md = markdown(&report);
    fs::write(dir.join("RESULTS.md"), &md).map_err(|e| format!("writing RESULTS.md: {e}"))?;
    write_block(&report)?;
    println!("{md}");
    Ok(())
}

mod costs;
mod cron;
mod harness;
mod procfs;
mod report;
mod scenarios;
pub mod size;
mod summary;
#[cfg(test)]
mod tests;

use costs::*;
use cron::*;
use harness::*;
use procfs::*;
pub use report::render;
use report::*;
use scenarios::*;
use summary::*;
