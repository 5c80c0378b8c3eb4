//! `cargo xtask bench`: edgeline's figures on the real local stack, each against a floor
//! measured on the same workerd in the same run (a hello-world Rust worker for HTTP, a consumer
//! that acks without work for queues). Writes `bench/results.json` and `bench/RESULTS.md`.
//!
//!     cargo xtask bench [--runs 3] [--tasks 1000] [--requests 400] [--events 1000] [--no-cron]
//!
//! Every repeated figure is the median of the runs with its range. Counts and times are
//! bounded; nothing here is part of `cargo xtask test`.

use crate::load::{self, Request};
use crate::{root, Result};
use e2e::floor::Floor;
use e2e::stack::{Seed, Stack, StackOptions, ADMIN_TOKEN, CREEM_WEBHOOK_SECRET};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::process::Command;
use std::time::{Duration, Instant};

const CONCURRENCY: [usize; 3] = [1, 8, 32];
const PIPELINE_CONCURRENCY: usize = 16;
const WEBHOOK_CONCURRENCY: usize = 8;
const USERS: usize = 64;
/// Tasks whose generation outlasts a few polls, for the cost of a poll that changes nothing.
const SLOW_TASKS: usize = 20;
const SLOW_GENERATION_MS: u64 = 9000;
/// Cron scaling: base sizes, run at 1x, 10x and 100x.
const BASE_ORDERS: u64 = 1000;
const BASE_CACHE_OBJECTS: u64 = 100;
const CACHE_MAX_AGE_SECS: u64 = 3;

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
        requests: 400,
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
    let mut runs = Vec::new();
    for r in 0..o.runs {
        eprintln!("bench: run {} of {}", r + 1, o.runs);
        runs.push(one_run(&o, r)?);
    }
    let cron = if o.cron { cron_scaling()? } else { Value::Null };
    let report = summarise(&o, &runs, cron);
    let dir = root().join("bench");
    let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    fs::write(dir.join("results.json"), text + "\n")
        .map_err(|e| format!("writing results.json: {e}"))?;
    let md = markdown(&report);
    fs::write(dir.join("RESULTS.md"), &md).map_err(|e| format!("writing RESULTS.md: {e}"))?;
    println!("{md}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// One run: a floor and a stack side by side, every scenario against both.

fn one_run(o: &Options, run: usize) -> Result<Value> {
    let floor = Floor::start()?;
    let stack = Stack::start(StackOptions::default())?;
    stack.sim.set_knobs(sim::Knobs {
        generation_ms: 0,
        ..sim::Knobs::default()
    });
    let c = stack.client();
    let tokens: Vec<String> = (0..USERS)
        .map(|_| c.new_user(ADMIN_TOKEN, 1_000_000).1)
        .collect();
    let mut ended = Ended::default();

    let mut submit = Vec::new();
    for conc in CONCURRENCY {
        let hello = load::run(
            conc,
            o.requests,
            200,
            Duration::from_secs(120),
            &|_| Request::get(format!("{}/", floor.url)),
            false,
        );
        let tasks = load::run(
            conc,
            o.requests,
            202,
            Duration::from_secs(300),
            &|i| submit_request(&stack, &tokens, i, &format!("latency r{run} c{conc} {i}")),
            true,
        );
        ended.expect(&tasks);
        let mut edgeline = latency(&tasks);
        // where the time went, from the api's own log lines: handling time and the D1 part of it
        let until = tasks.started_ms + u64::try_from(tasks.wall.as_millis()).unwrap_or(0) + 1000;
        let lines: Vec<Value> = stack
            .events(Some("http"))
            .into_iter()
            .filter(|h| {
                h["path"] == "/api/tasks"
                    && h["method"] == "POST"
                    && h["at_ms"]
                        .as_u64()
                        .is_some_and(|t| t >= tasks.started_ms && t <= until)
            })
            .collect();
        let mean = |f: &dyn Fn(&Value) -> Option<u64>| {
            lines.iter().filter_map(f).sum::<u64>() as f64 / lines.len().max(1) as f64
        };
        edgeline["server_ms"] = json!(mean(&|h| h["ms"].as_u64()));
        edgeline["server_d1_ms"] = json!(mean(&|h| h["io"]["d1_ms"].as_u64()));
        submit.push(json!({"concurrency": conc, "requests": o.requests, "edgeline": edgeline, "floor": latency(&hello)}));
        // let the consumer finish these before the next measurement
        ended.wait(&stack, Duration::from_secs(600))?;
    }

    let pipeline = pipeline(o, run, &stack, &floor, &tokens, &mut ended)?;
    let polls = unchanged_polls(&stack, &tokens, run, &mut ended)?;
    let webhooks = webhook_ingress(o, run, &stack)?;

    Ok(json!({
        "start_ms": {"edgeline": stack.started_in.as_secs_f64() * 1000.0, "floor": floor.started_in.as_secs_f64() * 1000.0},
        "peak_rss_kib": {"edgeline": peak_rss_kib(stack.pid()), "floor": peak_rss_kib(floor.pid())},
        "submit": submit,
        "pipeline": pipeline,
        "polls": polls,
        "webhooks": webhooks,
    }))
}

/// The i-th submission, from the users in turn.
fn submit_request(stack: &Stack, tokens: &[String], i: usize, prompt: &str) -> Request {
    Request {
        method: "POST",
        url: format!("{}/api/tasks", stack.api),
        headers: vec![
            (
                "authorization".into(),
                format!("Bearer {}", tokens[i % tokens.len()]),
            ),
            ("content-type".into(), "application/json".into()),
        ],
        body: Some(
            json!({"prompt": prompt, "model": "kie_4o"})
                .to_string()
                .into_bytes(),
        ),
    }
}

fn latency(l: &load::Load) -> Value {
    json!({"p50_ms": l.percentile(0.5), "p99_ms": l.percentile(0.99), "per_second": l.per_second(), "errors": l.errors})
}

/// Tasks submitted and not yet ended, by the workers' `task.final_status_cached` lines.
#[derive(Default)]
struct Ended {
    waiting: HashSet<String>,
}

impl Ended {
    fn expect(&mut self, l: &load::Load) {
        self.waiting
            .extend(l.samples.iter().filter_map(|s| task_id(s.body.as_deref())));
    }

    /// Ended tasks with the ms they ended at.
    fn seen(stack: &Stack) -> HashMap<String, (u64, String)> {
        stack
            .events(Some("task.final_status_cached"))
            .into_iter()
            .filter_map(|e| {
                Some((
                    e["task_id"].as_str()?.to_owned(),
                    (e["at_ms"].as_u64()?, e["status"].as_str()?.to_owned()),
                ))
            })
            .collect()
    }

    fn wait(&mut self, stack: &Stack, limit: Duration) -> Result<HashMap<String, (u64, String)>> {
        let started = Instant::now();
        loop {
            let seen = Self::seen(stack);
            self.waiting.retain(|t| !seen.contains_key(t));
            if self.waiting.is_empty() {
                return Ok(seen);
            }
            if started.elapsed() > limit {
                return Err(format!(
                    "{} tasks did not end in {}s:\n{}",
                    self.waiting.len(),
                    limit.as_secs(),
                    stack.log_tail(30)
                ));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

fn task_id(body: Option<&str>) -> Option<String> {
    serde_json::from_str::<Value>(body?).ok()?["id"]
        .as_str()
        .map(str::to_owned)
}

/// 1,000 tasks from submit to completed; then the floor's no-op consumer drains as many
/// messages as the pipeline handled.
fn pipeline(
    o: &Options,
    run: usize,
    stack: &Stack,
    floor: &Floor,
    tokens: &[String],
    ended: &mut Ended,
) -> Result<Value> {
    let submitted = load::run(
        PIPELINE_CONCURRENCY,
        o.tasks,
        202,
        Duration::from_secs(300),
        &|i| submit_request(stack, tokens, i, &format!("pipeline r{run} {i}")),
        true,
    );
    ended.expect(&submitted);
    let seen = ended.wait(stack, Duration::from_secs(900))?;
    std::thread::sleep(Duration::from_secs(3)); // the chain polls that find the task ended
    let sent_at: HashMap<String, u64> = submitted
        .samples
        .iter()
        .filter_map(|s| {
            Some((
                task_id(s.body.as_deref())?,
                submitted.started_ms + s.offset_ms,
            ))
        })
        .collect();
    let mut e2e: Vec<f64> = Vec::new();
    let mut completed = 0;
    let mut last = submitted.started_ms;
    for (id, sent) in &sent_at {
        if let Some((at, status)) = seen.get(id) {
            completed += usize::from(status == "completed");
            last = last.max(*at);
            e2e.push(at.saturating_sub(*sent) as f64);
        }
    }
    e2e.sort_by(f64::total_cmp);
    let wall_ms = last.saturating_sub(submitted.started_ms).max(1);
    let ids: HashSet<&str> = sent_at.keys().map(String::as_str).collect();
    let messages: Vec<Value> = stack
        .events(Some("message"))
        .into_iter()
        .filter(|m| m["task_id"].as_str().is_some_and(|t| ids.contains(t)))
        .collect();
    let (from, to) = (submitted.started_ms, last + 3000);
    let http: Vec<Value> = stack
        .events(Some("http"))
        .into_iter()
        .filter(|h| h["at_ms"].as_u64().is_some_and(|t| t >= from && t <= to))
        .collect();
    // how the consumer's time went: batch sizes and the time each batch was held
    let batches: Vec<Value> = stack
        .events(Some("batch"))
        .into_iter()
        .filter(|b| {
            b["queue"] == "edgeline-tasks"
                && b["at_ms"].as_u64().is_some_and(|t| t >= from && t <= to)
        })
        .collect();
    let batch_ms: u64 = batches.iter().filter_map(|b| b["ms"].as_u64()).sum();
    let batch_messages: u64 = batches.iter().filter_map(|b| b["messages"].as_u64()).sum();
    let floor_ms = floor.drain(messages.len(), Duration::from_secs(600))?;
    Ok(json!({
        "tasks": o.tasks,
        "completed": completed,
        "errors": submitted.errors,
        "wall_ms": wall_ms,
        "tasks_per_second": completed as f64 * 1000.0 / wall_ms as f64,
        "messages": messages.len(),
        "messages_per_second": messages.len() as f64 * 1000.0 / wall_ms as f64,
        "e2e_p50_ms": load::percentile(&e2e, 0.5),
        "e2e_p99_ms": load::percentile(&e2e, 0.99),
        "floor_messages_per_second": messages.len() as f64 * 1000.0 / floor_ms.max(1) as f64,
        "batches": batches.len(),
        "messages_per_batch": batch_messages as f64 / batches.len().max(1) as f64,
        "batch_ms_mean": batch_ms as f64 / batches.len().max(1) as f64,
        // above 1.0, batches overlapped; near 1.0, one batch at a time kept the consumer busy
        "consumer_busy": batch_ms as f64 / wall_ms as f64,
        "cost_per_task": {
            "api_submit": io_per(&http.iter().filter(|h| h["path"] == "/api/tasks").cloned().collect::<Vec<_>>(), completed),
            "api_callbacks": io_per(&http.iter().filter(|h| h["path"].as_str().is_some_and(|p| p.starts_with("/webhooks/ai/"))).cloned().collect::<Vec<_>>(), completed),
            "consumer": io_per(&messages, completed),
            "messages": messages.len() as f64 / completed.max(1) as f64,
            "api_requests": http.len() as f64 / completed.max(1) as f64,
        },
    }))
}

const IO_FIELDS: [&str; 6] = [
    "d1_round_trips",
    "d1_statements",
    "r2",
    "kv",
    "fetch",
    "queue_sends",
];

/// Each I/O counter summed over the lines and divided by `n`.
fn io_per(lines: &[Value], n: usize) -> Value {
    IO_FIELDS
        .iter()
        .map(|f| {
            let sum: u64 = lines.iter().filter_map(|l| l["io"][f].as_u64()).sum();
            ((*f).to_owned(), json!(sum as f64 / n.max(1) as f64))
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// Tasks that generate for a few seconds: what a poll that finds nothing new costs.
fn unchanged_polls(
    stack: &Stack,
    tokens: &[String],
    run: usize,
    ended: &mut Ended,
) -> Result<Value> {
    stack.sim.set_knobs(sim::Knobs {
        generation_ms: SLOW_GENERATION_MS,
        ..sim::Knobs::default()
    });
    let submitted = load::run(
        4,
        SLOW_TASKS,
        202,
        Duration::from_secs(60),
        &|i| submit_request(stack, tokens, i, &format!("slow r{run} {i}")),
        true,
    );
    ended.expect(&submitted);
    ended.wait(stack, Duration::from_secs(120))?;
    stack.sim.set_knobs(sim::Knobs {
        generation_ms: 0,
        ..sim::Knobs::default()
    });
    let ids: HashSet<String> = submitted
        .samples
        .iter()
        .filter_map(|s| task_id(s.body.as_deref()))
        .collect();
    let polls: Vec<Value> = stack
        .events(Some("message"))
        .into_iter()
        // the first poll that finds a task generating records it as processing: a change
        .filter(|m| {
            m["type"] == "task.poll"
                && m["decision"] == "send"
                && m["attempt"].as_u64().is_some_and(|a| a >= 1)
        })
        .filter(|m| m["task_id"].as_str().is_some_and(|t| ids.contains(t)))
        .collect();
    if polls.is_empty() {
        return Err(
            "no poll found a task still generating; the slow tasks finished too soon".into(),
        );
    }
    Ok(json!({"polls": polls.len(), "per_poll": io_per(&polls, polls.len())}))
}

/// Signed Creem events: accepted per second and latency, then how fast they were applied.
fn webhook_ingress(o: &Options, run: usize, stack: &Stack) -> Result<Value> {
    let c = stack.client();
    let (user, _) = c.new_user(ADMIN_TOKEN, 0);
    let applied_before = stack
        .events(Some("message"))
        .iter()
        .filter(|m| m["queue"] == "edgeline-events")
        .count();
    let make = |i: usize| {
        let event = json!({"id": format!("evt_bench_{run}_{i}"), "eventType": "subscription.paid", "created_at": 1_800_000_000_000u64 + i as u64,
            "object": {"object": "subscription", "id": format!("sub_bench_{run}_{}", i % 50), "product": {"id": "prod_basic_monthly"}, "status": "active",
                "current_period_start_date": format!("2027-01-{:02}T00:00:00Z", 1 + i % 28), "current_period_end_date": "2027-03-01T00:00:00Z",
                "metadata": {"user_id": user}}});
        let body = event.to_string();
        let sig = shared::signing::hmac_hex(CREEM_WEBHOOK_SECRET.as_bytes(), body.as_bytes());
        Request {
            method: "POST",
            url: format!("{}/webhooks/creem", stack.api),
            headers: vec![
                ("creem-signature".into(), sig),
                ("content-type".into(), "application/json".into()),
            ],
            body: Some(body.into_bytes()),
        }
    };
    let l = load::run(
        WEBHOOK_CONCURRENCY,
        o.events,
        200,
        Duration::from_secs(300),
        &make,
        false,
    );
    let started = Instant::now();
    let (applied, last) = loop {
        let lines: Vec<Value> = stack
            .events(Some("message"))
            .into_iter()
            .filter(|m| m["queue"] == "edgeline-events")
            .skip(applied_before)
            .collect();
        if lines.len() >= o.events || started.elapsed() > Duration::from_secs(300) {
            break (
                lines.len(),
                lines
                    .iter()
                    .filter_map(|m| m["at_ms"].as_u64())
                    .max()
                    .unwrap_or(l.started_ms),
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let mut v = latency(&l);
    v["events"] = json!(o.events);
    v["applied"] = json!(applied);
    v["applied_per_second"] =
        json!(applied as f64 * 1000.0 / last.saturating_sub(l.started_ms).max(1) as f64);
    Ok(v)
}

/// Peak resident memory (VmHWM) summed over the processes of a process group: wrangler's node
/// and the workerd it runs.
fn peak_rss_kib(group: Option<u32>) -> Option<u64> {
    let group = group?;
    let mut total = 0;
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let stat = fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // pid (comm) state ppid pgrp ...: fields after the command's closing parenthesis
        let pgrp = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(2))
            .and_then(|p| p.parse::<u32>().ok());
        if pgrp != Some(group) {
            continue;
        }
        let status = fs::read_to_string(entry.path().join("status")).unwrap_or_default();
        let cmd = fs::read_to_string(entry.path().join("cmdline")).unwrap_or_default();
        if !cmd.contains("workerd") {
            continue;
        }
        total += status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Some(total)
}

// ---------------------------------------------------------------------------------------------
// Cron scaling: one stack per size, seeded before it starts.

fn seed_cron(s: &Seed, factor: u64) -> std::result::Result<(), String> {
    let (orders, objects) = (BASE_ORDERS * factor, BASE_CACHE_OBJECTS * factor);
    s.d1(&format!(
        "INSERT INTO users (id, email, name, credits, created_at, updated_at) VALUES ('44444444-4444-4444-8444-444444444444', 'bench@e2e.test', 'Bench', 0, 0, 0);
         INSERT INTO orders (id, user_id, amount, currency, status, payment_provider, credits, product_id, created_at, updated_at)
           WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {orders})
           SELECT 'ord_bench_' || i, '44444444-4444-4444-8444-444444444444', 499, 'USD', 'pending', 'creem', 50, 'pack_starter',
                  CAST(strftime('%s','now') AS INTEGER) - 7200, 0 FROM n;"
    ))?;
    let png = sim::result_png("cached", 0);
    let old: Vec<(String, Vec<u8>)> = (0..objects)
        .map(|i| (format!("cache/bench/old-{i}.png"), png.clone()))
        .collect();
    s.r2(&old, "image/png")
}

fn run_job(stack: &Stack, job: &str) -> Result<(u64, u64)> {
    let c = stack.client();
    let (mut changed, mut ms) = (0, 0);
    for _ in 0..20 {
        let r = c.post_json(&format!("/admin/cron/{job}"), Some(ADMIN_TOKEN), &json!({}));
        if r.status != 200 {
            return Err(format!("{job}: {} {}", r.status, r.text()));
        }
        let v = r.json();
        changed += v["summary"]["changed"].as_u64().unwrap_or(0);
        ms += v["ms"].as_u64().unwrap_or(0);
        if v["summary"]["errors"].as_u64().unwrap_or(0) > 0 {
            return Err(format!("{job} failed: {v}"));
        }
        if v["summary"]["stopped_early"] == false {
            return Ok((changed, ms));
        }
    }
    Err(format!("{job} did not finish in 20 runs"))
}

fn cron_scaling() -> Result<Value> {
    let mut rows = Vec::new();
    for factor in [1u64, 10, 100] {
        eprintln!("bench: cron scaling at {factor}x");
        let mut options = StackOptions::default();
        for (k, v) in [
            ("CRON_MAX_ITEMS", "10000000"),
            ("CRON_BUDGET_MS", "25000"),
            ("CACHE_MAX_AGE_SECS", &CACHE_MAX_AGE_SECS.to_string()),
        ] {
            options.vars.insert(k.to_owned(), v.to_owned());
        }
        options.seed = Some((move |s: &Seed| seed_cron(s, factor)).into());
        let stack = Stack::start(options)?;
        // the seeded objects (uploaded before the stack started) must be older than the cache age;
        // the cleaner compares whole seconds
        std::thread::sleep(Duration::from_secs(CACHE_MAX_AGE_SECS + 2));
        for (job, items) in [
            ("expire_orders", BASE_ORDERS * factor),
            ("clean_r2_cache", BASE_CACHE_OBJECTS * factor),
        ] {
            let (changed, ms) = run_job(&stack, job)?;
            if changed != items {
                return Err(format!(
                    "{job} at {factor}x changed {changed} of {items} seeded items"
                ));
            }
            rows.push(
                json!({"job": job, "factor": factor, "items": items, "changed": changed, "ms": ms,
                "us_per_item": ms as f64 * 1000.0 / changed.max(1) as f64}),
            );
        }
    }
    Ok(Value::Array(rows))
}

// ---------------------------------------------------------------------------------------------
// Summary: medians with their range, budgets, the machine and the versions.

/// Median and range of one figure over the runs.
fn spread(values: Vec<f64>) -> Value {
    let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return Value::Null;
    }
    let median = if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    json!({"median": median, "min": v[0], "max": v[v.len() - 1], "n": v.len()})
}

fn med(v: &Value) -> f64 {
    v["median"].as_f64().unwrap_or(f64::NAN)
}

fn over(runs: &[Value], pointer: &str) -> Value {
    spread(
        runs.iter()
            .filter_map(|r| r.pointer(pointer).and_then(Value::as_f64))
            .collect(),
    )
}

fn budget(name: &str, limit: &str, measured: String, met: bool, margin: String) -> Value {
    json!({"budget": name, "limit": limit, "measured": measured, "met": met, "margin": margin})
}

fn summarise(o: &Options, runs: &[Value], cron: Value) -> Value {
    let mut budgets = Vec::new();
    let mut submit = Vec::new();
    for (i, conc) in CONCURRENCY.iter().enumerate() {
        let mut row: BTreeMap<&str, Value> = ["p50_ms", "p99_ms", "per_second", "errors"]
            .iter()
            .flat_map(|k| {
                [
                    (*k, over(runs, &format!("/submit/{i}/edgeline/{k}"))),
                    // keys for the floor are prefixed
                    (
                        match *k {
                            "p50_ms" => "floor_p50_ms",
                            "p99_ms" => "floor_p99_ms",
                            "per_second" => "floor_per_second",
                            _ => "floor_errors",
                        },
                        over(runs, &format!("/submit/{i}/floor/{k}")),
                    ),
                ]
            })
            .collect();
        row.insert(
            "server_ms",
            over(runs, &format!("/submit/{i}/edgeline/server_ms")),
        );
        row.insert(
            "server_d1_ms",
            over(runs, &format!("/submit/{i}/edgeline/server_d1_ms")),
        );
        let ratio = med(&row["p99_ms"]) / med(&row["floor_p99_ms"]);
        budgets.push(budget(
            &format!("submit p99 at {conc} clients"),
            "<= 2x the hello floor's p99",
            format!(
                "{:.2} ms vs floor {:.2} ms = {ratio:.1}x",
                med(&row["p99_ms"]),
                med(&row["floor_p99_ms"])
            ),
            ratio <= 2.0,
            format!("{:+.0}%", (ratio / 2.0 - 1.0) * 100.0),
        ));
        let mut v = json!(row);
        v["concurrency"] = json!(conc);
        v["requests"] = json!(o.requests);
        v["p99_ratio"] = json!(ratio);
        submit.push(v);
    }

    let pipeline = json!({
        "tasks": o.tasks,
        "completed": over(runs, "/pipeline/completed"),
        "tasks_per_second": over(runs, "/pipeline/tasks_per_second"),
        "messages_per_second": over(runs, "/pipeline/messages_per_second"),
        "floor_messages_per_second": over(runs, "/pipeline/floor_messages_per_second"),
        "e2e_p50_ms": over(runs, "/pipeline/e2e_p50_ms"),
        "e2e_p99_ms": over(runs, "/pipeline/e2e_p99_ms"),
        "messages_per_task": over(runs, "/pipeline/cost_per_task/messages"),
        "messages_per_batch": over(runs, "/pipeline/messages_per_batch"),
        "batch_ms_mean": over(runs, "/pipeline/batch_ms_mean"),
        "consumer_busy": over(runs, "/pipeline/consumer_busy"),
    });
    let share = med(&pipeline["messages_per_second"]) / med(&pipeline["floor_messages_per_second"]);
    budgets.push(budget(
        "pipeline messages/s",
        ">= 50% of the no-op consumer floor's",
        format!(
            "{:.1} vs floor {:.1} = {:.0}%",
            med(&pipeline["messages_per_second"]),
            med(&pipeline["floor_messages_per_second"]),
            share * 100.0
        ),
        share >= 0.5,
        format!("{:+.0} points", (share - 0.5) * 100.0),
    ));

    let mut cost = serde_json::Map::new();
    for side in ["api_submit", "api_callbacks", "consumer"] {
        let fields: serde_json::Map<String, Value> = IO_FIELDS
            .iter()
            .map(|f| {
                (
                    (*f).to_owned(),
                    over(runs, &format!("/pipeline/cost_per_task/{side}/{f}")),
                )
            })
            .collect();
        cost.insert(side.to_owned(), fields.into());
    }
    cost.insert(
        "per_unchanged_poll".into(),
        IO_FIELDS
            .iter()
            .map(|f| ((*f).to_owned(), over(runs, &format!("/polls/per_poll/{f}"))))
            .collect::<serde_json::Map<_, _>>()
            .into(),
    );
    cost.insert("unchanged_polls".into(), over(runs, "/polls/polls"));
    let trips =
        med(&cost["api_submit"]["d1_round_trips"]) + med(&cost["consumer"]["d1_round_trips"]);
    let callbacks = med(&cost["api_callbacks"]["d1_round_trips"]);
    budgets.push(budget(
        "D1 round trips per completed task (submit + consumer)",
        "<= 3",
        format!("{trips:.2}"),
        trips <= 3.0 + 1e-9,
        format!("{:+.2}", trips - 3.0),
    ));
    budgets.push(budget(
        "D1 round trips per completed task, provider callbacks included",
        "<= 3",
        format!("{:.2}", trips + callbacks),
        trips + callbacks <= 3.0 + 1e-9,
        format!("{:+.2}", trips + callbacks - 3.0),
    ));
    let poll_trips = med(&cost["per_unchanged_poll"]["d1_round_trips"]);
    budgets.push(budget(
        "D1 round trips per unchanged poll",
        "0",
        format!("{poll_trips:.2}"),
        poll_trips == 0.0,
        format!("{poll_trips:+.2}"),
    ));

    let bundle = bundle_sizes();
    let floor_gz = bundle["floor-worker"]["gzip"].as_f64().unwrap_or(f64::NAN);
    for w in crate::toolchain::WORKERS {
        let gz = bundle[w]["gzip"].as_f64().unwrap_or(f64::NAN);
        budgets.push(budget(
            &format!("{w} gzipped wasm"),
            "<= 2x the floor's",
            format!(
                "{:.0} KiB vs floor {:.0} KiB = {:.2}x",
                gz / 1024.0,
                floor_gz / 1024.0,
                gz / floor_gz
            ),
            gz <= 2.0 * floor_gz,
            format!("{:+.0}%", (gz / (2.0 * floor_gz) - 1.0) * 100.0),
        ));
    }

    if let Value::Array(rows) = &cron {
        for job in ["expire_orders", "clean_r2_cache"] {
            let per = |f: u64| {
                rows.iter()
                    .find(|r| r["job"] == job && r["factor"] == f)
                    .and_then(|r| r["us_per_item"].as_f64())
                    .unwrap_or(f64::NAN)
            };
            let ratio = per(100) / per(1);
            budgets.push(budget(
                &format!("{job} time per item, 100x vs 1x"),
                "flat (<= 1.5x)",
                format!("{:.1} µs vs {:.1} µs = {ratio:.2}x", per(100), per(1)),
                ratio <= 1.5,
                format!("{:+.0}%", (ratio / 1.5 - 1.0) * 100.0),
            ));
        }
    }

    json!({
        "command": format!("cargo xtask bench --runs {} --tasks {} --requests {} --events {}", o.runs, o.tasks, o.requests, o.events),
        "generated_at": shared::ids::iso8601(i64::try_from(e2e::now_ms() / 1000).unwrap_or(0)),
        "machine": machine(),
        "versions": versions(),
        "runs": o.runs,
        "submit_latency": submit,
        "pipeline": pipeline,
        "cost": cost,
        "bundle": bundle,
        "start_ms": {"edgeline": over(runs, "/start_ms/edgeline"), "floor": over(runs, "/start_ms/floor")},
        "peak_rss_kib": {"edgeline": over(runs, "/peak_rss_kib/edgeline"), "floor": over(runs, "/peak_rss_kib/floor")},
        "webhooks": {
            "events": o.events, "concurrency": WEBHOOK_CONCURRENCY,
            "per_second": over(runs, "/webhooks/per_second"), "p50_ms": over(runs, "/webhooks/p50_ms"), "p99_ms": over(runs, "/webhooks/p99_ms"),
            "applied_per_second": over(runs, "/webhooks/applied_per_second"), "errors": over(runs, "/webhooks/errors"),
        },
        "cron": cron,
        "budgets": budgets,
        "raw_runs": runs,
    })
}

fn bundle_sizes() -> Value {
    let root = root();
    let mut out = serde_json::Map::new();
    for (name, dir) in crate::toolchain::WORKERS
        .iter()
        .map(|w| (*w, root.join(w)))
        .chain([("floor-worker", root.join("bench/floor-worker"))])
    {
        let wasm = dir.join("build/index_bg.wasm");
        let raw = fs::metadata(&wasm).map(|m| m.len()).unwrap_or(0);
        let gzip = Command::new("gzip")
            .args(["-9", "-c"])
            .arg(&wasm)
            .output()
            .map(|o| o.stdout.len() as u64)
            .unwrap_or(0);
        out.insert(name.to_owned(), json!({"raw": raw, "gzip": gzip}));
    }
    out.into()
}

fn first_line(cmd: &mut Command) -> String {
    cmd.output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned()
        })
        .unwrap_or_default()
}

fn machine() -> Value {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    json!({
        "cpu": cpuinfo.lines().find_map(|l| l.strip_prefix("model name")).map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned()),
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "memory_gib": (mem_kib as f64 / 1024.0 / 1024.0 * 10.0).round() / 10.0,
        "kernel": fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
    })
}

fn package_version(path: &str) -> Value {
    fs::read_to_string(root().join(path))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .map(|v| v["version"].clone())
        .unwrap_or(Value::Null)
}

fn versions() -> Value {
    let commit =
        first_line(
            Command::new("git")
                .current_dir(root())
                .args(["rev-parse", "--short", "HEAD"]),
        );
    let dirty = !first_line(
        Command::new("git")
            .current_dir(root())
            .args(["status", "--porcelain"]),
    )
    .is_empty();
    json!({
        "edgeline": if dirty { format!("{commit}+changes") } else { commit },
        "rustc": first_line(Command::new("rustc").arg("--version")),
        "node": first_line(Command::new("node").arg("--version")),
        "wrangler": package_version("node_modules/wrangler/package.json"),
        "workerd": package_version("node_modules/workerd/package.json"),
        "worker_crate": crate::toolchain::locked_version("worker").ok(),
        "wasm_bindgen": crate::toolchain::locked_version("wasm-bindgen").ok(),
    })
}

// ---------------------------------------------------------------------------------------------
// The markdown table.

fn fmt(v: &Value, digits: usize) -> String {
    match (v["median"].as_f64(), v["min"].as_f64(), v["max"].as_f64()) {
        (Some(m), Some(lo), Some(hi)) if v["n"].as_u64().unwrap_or(0) > 1 => {
            format!("{m:.digits$} ({lo:.digits$}–{hi:.digits$})")
        }
        (Some(m), _, _) => format!("{m:.digits$}"),
        _ => "–".into(),
    }
}

fn markdown(r: &Value) -> String {
    let mut s = String::new();
    let mut line = |l: String| {
        s.push_str(&l);
        s.push('\n');
    };
    line("# edgeline benchmark".into());
    line(String::new());
    line(format!("`{}` on {} ({} cores, {} GiB, Linux {}); edgeline {}, {}, node {}, wrangler {}, workerd {}, worker {}.",
        r["command"].as_str().unwrap_or_default(), r["machine"]["cpu"].as_str().unwrap_or("?"), r["machine"]["cores"], r["machine"]["memory_gib"],
        r["machine"]["kernel"].as_str().unwrap_or("?"), r["versions"]["edgeline"].as_str().unwrap_or("?"), r["versions"]["rustc"].as_str().unwrap_or("?"),
        r["versions"]["node"].as_str().unwrap_or("?"), r["versions"]["wrangler"].as_str().unwrap_or("?"), r["versions"]["workerd"].as_str().unwrap_or("?"),
        r["versions"]["worker_crate"].as_str().unwrap_or("?")));
    line(format!("Generated {}. Figures are medians of {} runs with their range; each is measured against a floor on the same workerd in the same run.", r["generated_at"].as_str().unwrap_or_default(), r["runs"]));
    line(String::new());
    line("## Budgets".into());
    line(String::new());
    line("| budget | limit | measured | met | margin |".into());
    line("|---|---|---|---|---|".into());
    for b in r["budgets"].as_array().into_iter().flatten() {
        line(format!(
            "| {} | {} | {} | {} | {} |",
            b["budget"].as_str().unwrap_or_default(),
            b["limit"].as_str().unwrap_or_default(),
            b["measured"].as_str().unwrap_or_default(),
            if b["met"] == true {
                "met"
            } else {
                "**missed**"
            },
            b["margin"].as_str().unwrap_or_default()
        ));
    }
    line(String::new());
    line("## Submit latency (`POST /api/tasks`) against the hello floor".into());
    line(String::new());
    line("| clients | requests | p50 ms | p99 ms | req/s | floor p50 ms | floor p99 ms | floor req/s | p99 ratio | handled in, mean ms | of which D1 ms |".into());
    line("|---|---|---|---|---|---|---|---|---|---|---|".into());
    for row in r["submit_latency"].as_array().into_iter().flatten() {
        line(format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.1}x | {} | {} |",
            row["concurrency"],
            row["requests"],
            fmt(&row["p50_ms"], 2),
            fmt(&row["p99_ms"], 2),
            fmt(&row["per_second"], 0),
            fmt(&row["floor_p50_ms"], 2),
            fmt(&row["floor_p99_ms"], 2),
            fmt(&row["floor_per_second"], 0),
            row["p99_ratio"].as_f64().unwrap_or(f64::NAN),
            fmt(&row["server_ms"], 1),
            fmt(&row["server_d1_ms"], 1)
        ));
    }
    let p = &r["pipeline"];
    line(String::new());
    line(format!("## Pipeline: {} tasks from submit to completed (zero-latency provider, one result image each)", p["tasks"]));
    line(String::new());
    line("| completed | tasks/s | messages/s | floor messages/s | end-to-end p50 ms | end-to-end p99 ms | messages/task | messages/batch | batch held ms | batch time / wall |".into());
    line("|---|---|---|---|---|---|---|---|---|---|".into());
    line(format!(
        "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
        fmt(&p["completed"], 0),
        fmt(&p["tasks_per_second"], 1),
        fmt(&p["messages_per_second"], 1),
        fmt(&p["floor_messages_per_second"], 1),
        fmt(&p["e2e_p50_ms"], 0),
        fmt(&p["e2e_p99_ms"], 0),
        fmt(&p["messages_per_task"], 2),
        fmt(&p["messages_per_batch"], 1),
        fmt(&p["batch_ms_mean"], 0),
        fmt(&p["consumer_busy"], 2)
    ));
    line(String::new());
    line(
        "## Cost per completed task and per unchanged poll (the workers' per-invocation counters)"
            .into(),
    );
    line(String::new());
    line(
        "| where | D1 round trips | D1 statements | R2 ops | KV ops | fetches | queue sends |"
            .into(),
    );
    line("|---|---|---|---|---|---|---|".into());
    for (label, key) in [
        ("api, submit, per task", "api_submit"),
        ("api, provider callbacks, per task", "api_callbacks"),
        ("consumer, per task", "consumer"),
        ("consumer, per unchanged poll", "per_unchanged_poll"),
    ] {
        let c = &r["cost"][key];
        line(format!(
            "| {label} | {} | {} | {} | {} | {} | {} |",
            fmt(&c["d1_round_trips"], 2),
            fmt(&c["d1_statements"], 2),
            fmt(&c["r2"], 2),
            fmt(&c["kv"], 2),
            fmt(&c["fetch"], 2),
            fmt(&c["queue_sends"], 2)
        ));
    }
    line(String::new());
    line("## Bundle and start".into());
    line(String::new());
    line("| worker | wasm bytes | gzipped | vs floor gzipped |".into());
    line("|---|---|---|---|".into());
    let floor_gz = r["bundle"]["floor-worker"]["gzip"]
        .as_f64()
        .unwrap_or(f64::NAN);
    for w in [
        "api-worker",
        "consumer-worker",
        "cron-worker",
        "floor-worker",
    ] {
        let b = &r["bundle"][w];
        line(format!(
            "| {w} | {} | {} | {:.2}x |",
            b["raw"],
            b["gzip"],
            b["gzip"].as_f64().unwrap_or(f64::NAN) / floor_gz
        ));
    }
    line(String::new());
    line(format!("Start (spawning `wrangler dev` to the first 200): edgeline's three workers {} ms, the floor {} ms. Peak workerd memory: edgeline {} KiB, floor {} KiB.",
        fmt(&r["start_ms"]["edgeline"], 0), fmt(&r["start_ms"]["floor"], 0), fmt(&r["peak_rss_kib"]["edgeline"], 0), fmt(&r["peak_rss_kib"]["floor"], 0)));
    let w = &r["webhooks"];
    line(String::new());
    line(format!(
        "## Webhook ingress: {} signed Creem events from {} clients",
        w["events"], w["concurrency"]
    ));
    line(String::new());
    line("| accepted/s | p50 ms | p99 ms | applied/s |".into());
    line("|---|---|---|---|".into());
    line(format!(
        "| {} | {} | {} | {} |",
        fmt(&w["per_second"], 0),
        fmt(&w["p50_ms"], 2),
        fmt(&w["p99_ms"], 2),
        fmt(&w["applied_per_second"], 0)
    ));
    if let Some(rows) = r["cron"].as_array() {
        line(String::new());
        line("## Cron scaling (one run per size)".into());
        line(String::new());
        line("| job | size | items changed | ms | µs per item |".into());
        line("|---|---|---|---|---|".into());
        for row in rows {
            line(format!(
                "| {} | {}x ({}) | {} | {} | {:.1} |",
                row["job"].as_str().unwrap_or_default(),
                row["factor"],
                row["items"],
                row["changed"],
                row["ms"],
                row["us_per_item"].as_f64().unwrap_or(f64::NAN)
            ));
        }
    }
    s
}
