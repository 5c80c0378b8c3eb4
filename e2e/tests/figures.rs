//! Figures for the pipeline under failure, on the real local stack (not run by `cargo xtask
//! test`; timing is not asserted):
//!
//!     cargo xtask build && cargo test -p e2e --test figures -- --ignored --nocapture
//!
//! 200 tasks with no failures, then 200 with 30% of provider calls and result downloads failing
//! transiently, in one stack. Reports completed tasks, messages handled per task (attempts), D1
//! statements per completed task (api + consumer, from the workers' per-invocation counters)
//! and wall time.

use e2e::stack::{Stack, StackOptions, ADMIN_TOKEN};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::time::{Duration, Instant};

const TASKS: usize = 200;

struct Phase {
    name: &'static str,
    completed: usize,
    failed: usize,
    messages_per_task: f64,
    d1_statements_per_task: f64,
    d1_round_trips_per_task: f64,
    wall: Duration,
}

fn phase(stack: &Stack, name: &'static str, fail_rate: f64) -> Phase {
    stack.sim.set_knobs(sim::Knobs { generation_ms: 300, api_fail_rate: fail_rate, download_fail_rate: fail_rate, ..sim::Knobs::default() });
    let c = stack.client();
    let (_, token) = c.new_user(ADMIN_TOKEN, 10 * TASKS as i64);
    let started = Instant::now();
    let ids: Vec<String> = (0..TASKS)
        .map(|i| {
            let r = c.post_json("/api/tasks", Some(&token), &json!({"prompt": format!("{name} {i}"), "model": "kie_4o"}));
            assert_eq!(r.status, 202, "{}", r.text());
            r.json()["id"].as_str().unwrap_or_default().to_owned()
        })
        .collect();
    let mut pending: HashSet<String> = ids.iter().cloned().collect();
    let (mut completed, mut failed) = (0, 0);
    while !pending.is_empty() && started.elapsed() < Duration::from_secs(600) {
        let page = c.get("/api/tasks?limit=100", Some(&token)).json();
        let mut cursor = page["next_cursor"].as_str().map(str::to_owned);
        let mut tasks = page["tasks"].as_array().cloned().unwrap_or_default();
        while let Some(cur) = cursor {
            let next = c.get(&format!("/api/tasks?limit=100&cursor={cur}"), Some(&token)).json();
            tasks.extend(next["tasks"].as_array().cloned().unwrap_or_default());
            cursor = next["next_cursor"].as_str().map(str::to_owned);
        }
        for t in tasks {
            let id = t["id"].as_str().unwrap_or_default();
            if pending.contains(id) {
                match t["status"].as_str() {
                    Some("completed") => completed += 1,
                    Some("failed") => failed += 1,
                    _ => continue,
                }
                pending.remove(id);
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let wall = started.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let ids: HashSet<&str> = ids.iter().map(String::as_str).collect();
    let messages: Vec<Value> = stack
        .events(Some("message"))
        .into_iter()
        .filter(|m| m["task_id"].as_str().is_some_and(|t| ids.contains(t)))
        .collect();
    let api: Vec<Value> = stack
        .events(Some("http"))
        .into_iter()
        .filter(|h| h["method"] == "POST" && h["path"] == "/api/tasks")
        .collect();
    let sum = |rows: &[Value], k: &str| rows.iter().filter_map(|r| r["io"][k].as_u64()).sum::<u64>() as f64;
    let per = |x: f64| x / completed.max(1) as f64;
    Phase {
        name,
        completed,
        failed,
        messages_per_task: messages.len() as f64 / TASKS as f64,
        // the api lines of both phases are in the log; each phase submits TASKS tasks
        d1_statements_per_task: per(sum(&messages, "d1_statements")) + sum(&api, "d1_statements") / api.len().max(1) as f64,
        d1_round_trips_per_task: per(sum(&messages, "d1_round_trips")) + sum(&api, "d1_round_trips") / api.len().max(1) as f64,
        wall,
    }
}

#[test]
#[ignore = "figures, run by hand"]
fn figures() {
    let mut options = StackOptions::default();
    options.vars.insert("RETRY_MAX_SECS".into(), "4".into());
    let stack = Stack::start(options).expect("stack starts");
    let phases = [phase(&stack, "no failures", 0.0), phase(&stack, "30% transient failures", 0.3)];
    println!("\n| run | tasks | completed | failed | messages/task | D1 statements/task | D1 round trips/task | wall time |");
    println!("|---|---|---|---|---|---|---|---|");
    for p in &phases {
        println!(
            "| {} | {TASKS} | {} | {} | {:.2} | {:.2} | {:.2} | {:.1} s |",
            p.name, p.completed, p.failed, p.messages_per_task, p.d1_statements_per_task, p.d1_round_trips_per_task, p.wall.as_secs_f64()
        );
    }
    println!("injected failures: {}", stack.sim.stats().injected_failures);
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let last = sorted.len().saturating_sub(1);
    let i = (0..=last).min_by(|&a, &b| ((a as f64 - last as f64 * p).abs()).total_cmp(&(b as f64 - last as f64 * p).abs())).unwrap_or(0);
    sorted[i]
}

/// Webhook ingress: 500 signed Creem events, latency p50/p99 against the plain health
/// endpoint in the same stack, and D1 statements per applied event.
#[test]
#[ignore = "figures, run by hand"]
fn webhook_ingress() {
    let stack = Stack::start(StackOptions::default()).expect("stack starts");
    let c = stack.client();
    let (user, token) = c.new_user(ADMIN_TOKEN, 0);
    let timed = |f: &mut dyn FnMut() -> u16| {
        let t = Instant::now();
        let status = f();
        assert_eq!(status, 200);
        t.elapsed().as_secs_f64() * 1000.0
    };
    let mut health: Vec<f64> = (0..500).map(|_| timed(&mut || c.get("/api/health", None).status)).collect();
    let mut ingress: Vec<f64> = (0..500)
        .map(|i| {
            let event = json!({"id": format!("evt_fig_{i}"), "eventType": "subscription.paid", "created_at": 1_800_000_000_000i64 + i,
                "object": {"object": "subscription", "id": format!("sub_fig_{}", i % 50), "product": {"id": "prod_basic_monthly"}, "status": "active",
                    "current_period_start_date": format!("2027-01-{:02}T00:00:00Z", 1 + i % 28), "current_period_end_date": "2027-03-01T00:00:00Z",
                    "metadata": {"user_id": user}}});
            let body = event.to_string();
            let sig = shared::signing::hmac_hex(e2e::stack::CREEM_WEBHOOK_SECRET.as_bytes(), body.as_bytes());
            timed(&mut || c.send("POST", "/webhooks/creem", None, &[("creem-signature", &sig)], Some(("application/json", body.as_bytes()))).status)
        })
        .collect();
    health.sort_by(f64::total_cmp);
    ingress.sort_by(f64::total_cmp);
    std::thread::sleep(Duration::from_secs(8));
    let applied: Vec<Value> = stack.events(Some("message")).into_iter().filter(|m| m["queue"] == "edgeline-events").collect();
    let statements: u64 = applied.iter().filter_map(|m| m["io"]["d1_statements"].as_u64()).sum();
    let trips: u64 = applied.iter().filter_map(|m| m["io"]["d1_round_trips"].as_u64()).sum();
    println!("\n| endpoint | n | p50 ms | p99 ms |\n|---|---|---|---|");
    println!("| GET /api/health | 500 | {:.2} | {:.2} |", percentile(&health, 0.5), percentile(&health, 0.99));
    println!("| POST /webhooks/creem (signed) | 500 | {:.2} | {:.2} |", percentile(&ingress, 0.5), percentile(&ingress, 0.99));
    println!(
        "applied {} events: {:.2} D1 statements and {:.2} round trips per event; balance {}",
        applied.len(),
        statements as f64 / applied.len().max(1) as f64,
        trips as f64 / applied.len().max(1) as f64,
        c.balance(&token)
    );
}

fn seed_stale_orders(s: &e2e::stack::Seed, n: u64) -> Result<(), String> {
    s.d1(&format!(
        "INSERT INTO users (id, email, name, credits, created_at, updated_at) VALUES ('33333333-3333-4333-8333-333333333333', 'fig@e2e.test', 'Fig', 0, 0, 0);
         INSERT INTO orders (id, user_id, amount, currency, status, payment_provider, credits, product_id, created_at, updated_at)
           WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {n})
           SELECT 'ord_fig_' || i, '33333333-3333-4333-8333-333333333333', 499, 'USD', 'pending', 'creem', 50, 'pack_starter',
                  CAST(strftime('%s','now') AS INTEGER) - 7200, 0 FROM n;"
    ))
}

/// expire_orders at 10,000 and 100,000 stale rows: time per item should stay flat.
#[test]
#[ignore = "figures, run by hand"]
fn cron_scaling() {
    let mut rows = Vec::new();
    for (n, seed) in [(10_000u64, (|s: &e2e::stack::Seed| seed_stale_orders(s, 10_000)) as e2e::stack::Seeder), (100_000, |s| seed_stale_orders(s, 100_000))] {
        let mut options = StackOptions::default();
        options.vars.insert("CRON_MAX_ITEMS".into(), "1000000".into());
        options.vars.insert("CRON_BUDGET_MS".into(), "25000".into());
        options.seed = Some(seed);
        let stack = Stack::start(options).expect("stack starts");
        let c = stack.client();
        let r = c.post_json("/admin/cron/expire_orders", Some(ADMIN_TOKEN), &json!({})).json();
        let changed = r["summary"]["changed"].as_u64().unwrap_or(0);
        let ms = r["ms"].as_u64().unwrap_or(0);
        rows.push((n, changed, ms, r["summary"]["stopped_early"].clone()));
    }
    println!("\n| stale rows | expired | run ms | µs per row | stopped early |\n|---|---|---|---|---|");
    for (n, changed, ms, early) in &rows {
        println!("| {n} | {changed} | {ms} | {:.1} | {early} |", *ms as f64 * 1000.0 / (*changed).max(1) as f64);
    }
}
