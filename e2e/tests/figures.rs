//! Figures for the pipeline under failure, on the real local stack (not run by `cargo xtask
//! test`; timing is not asserted; the happy path's figures come from `cargo xtask bench`):
//!
//!     cargo xtask build && cargo test -p e2e --test figures -- --ignored --nocapture
//!
//! 200 tasks with no failures, then 200 with 30% of provider calls and result downloads failing
//! transiently, in one stack. Reports completed tasks, messages handled per task (attempts), D1
//! statements per completed task (api + consumer, from the workers' per-invocation counters)
//! and wall time.

use e2e::stack::{Stack, StackOptions, ADMIN_TOKEN};
use e2e::tasks;
use serde_json::Value;
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
    stack.sim.set_knobs(sim::Knobs {
        generation_ms: 300,
        api_fail_rate: fail_rate,
        download_fail_rate: fail_rate,
        ..sim::Knobs::default()
    });
    let c = stack.client();
    let (_, token) = c.new_user(ADMIN_TOKEN, 10 * TASKS as i64);
    let started = Instant::now();
    let ids: Vec<String> = (0..TASKS)
        .map(|i| {
            let r = tasks::submit(&c, &token, &format!("{name} {i}"), "kie_4o");
            assert_eq!(r.status, 202, "{}", r.text());
            tasks::id(&r)
        })
        .collect();
    let mut pending: HashSet<String> = ids.iter().cloned().collect();
    let (mut completed, mut failed) = (0, 0);
    while !pending.is_empty() && started.elapsed() < Duration::from_secs(600) {
        let page = c.get("/api/tasks?limit=100", Some(&token)).json();
        let mut cursor = page["next_cursor"].as_str().map(str::to_owned);
        let mut tasks = page["tasks"].as_array().cloned().unwrap_or_default();
        while let Some(cur) = cursor {
            let next = c
                .get(&format!("/api/tasks?limit=100&cursor={cur}"), Some(&token))
                .json();
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
    let sum = |rows: &[Value], k: &str| {
        rows.iter().filter_map(|r| r["io"][k].as_u64()).sum::<u64>() as f64
    };
    let per = |x: f64| x / completed.max(1) as f64;
    Phase {
        name,
        completed,
        failed,
        messages_per_task: messages.len() as f64 / TASKS as f64,
        // the api lines of both phases are in the log; each phase submits TASKS tasks
        d1_statements_per_task: per(sum(&messages, "d1_statements"))
            + sum(&api, "d1_statements") / api.len().max(1) as f64,
        d1_round_trips_per_task: per(sum(&messages, "d1_round_trips"))
            + sum(&api, "d1_round_trips") / api.len().max(1) as f64,
        wall,
    }
}

#[test]
#[ignore = "figures, run by hand"]
fn figures() {
    let mut options = StackOptions::default();
    options.vars.insert("RETRY_MAX_SECS".into(), "4".into());
    let stack = Stack::start(options).expect("stack starts");
    let phases = [
        phase(&stack, "no failures", 0.0),
        phase(&stack, "30% transient failures", 0.3),
    ];
    println!("\n| run | tasks | completed | failed | messages/task | D1 statements/task | D1 round trips/task | wall time |");
    println!("|---|---|---|---|---|---|---|---|");
    for p in &phases {
        println!(
            "| {} | {TASKS} | {} | {} | {:.2} | {:.2} | {:.2} | {:.1} s |",
            p.name,
            p.completed,
            p.failed,
            p.messages_per_task,
            p.d1_statements_per_task,
            p.d1_round_trips_per_task,
            p.wall.as_secs_f64()
        );
    }
    println!("injected failures: {}", stack.sim.stats().injected_failures);
}
