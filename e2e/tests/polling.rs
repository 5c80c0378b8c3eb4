//! Polling is the fallback for a lost callback. The first poll waits for the models' typical
//! generation time (`TYPICAL_GENERATION_SECS`, 4 s here; the simulator takes 1.5 s), so a task
//! whose callback arrives is finished by the callback's poll alone, and the chain's poll that
//! comes later knows the task ended (this consumer isolate ended it) and stops without asking the
//! provider or reading KV, and the callback makes no D1 round trip. A task whose
//! callback is lost is finished by that first poll, not earlier. Two polls of one task that
//! arrive together take turns: only the first asks the provider and stores.

use e2e::check::{ensure, eq, wait_until};
use e2e::stack::{Stack, StackOptions, ADMIN_TOKEN};
use e2e::tasks::{self, submitted};
use libtest_mimic::Failed;
use serde_json::json;
use std::time::{Duration, Instant};

const TYPICAL_SECS: u64 = 4;
const GENERATION_MS: u64 = 1500;
const WAIT: Duration = Duration::from_secs(60);

/// The consumer's `task.poll` lines for a task: (asked the provider, decision).
fn polls(stack: &Stack, task: &str) -> Vec<(bool, String)> {
    tasks::polls_of(stack, task)
        .iter()
        .map(|m| {
            (
                m["io"]["fetch"].as_u64().is_some_and(|f| f > 0),
                m["decision"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn set_callbacks(stack: &Stack, callbacks: bool) {
    stack.sim.set_knobs(sim::Knobs {
        generation_ms: GENERATION_MS,
        callbacks,
        ..sim::Knobs::default()
    });
}

/// Waits until the task has `n` poll lines (or the time is up) and returns them.
fn wait_polls(stack: &Stack, task: &str, n: usize, limit: Duration) -> Vec<(bool, String)> {
    wait_until(limit, || polls(stack, task).len() >= n);
    polls(stack, task)
}

/// An I/O counter summed over the consumer's messages for a task.
fn io_sum(stack: &Stack, task: &str, counter: &str) -> u64 {
    stack
        .events(Some("message"))
        .iter()
        .filter(|m| m["task_id"] == task)
        .filter_map(|m| m["io"][counter].as_u64())
        .sum()
}

/// Both scenarios in one case: the simulator's callback knob is global.
fn polling_is_the_fallback(stack: &Stack) -> Result<(), Failed> {
    let c = stack.client();
    let (_, token) = c.new_user(ADMIN_TOKEN, 10);

    // callbacks on: the callback's poll finishes it; the chain's first poll, after the
    // typical time, stops without asking the provider
    set_callbacks(stack, true);
    let started = Instant::now();
    let id = submitted(&c, &token, "polling: callback first", "kie_4o");
    let task = c.wait_task(&token, &id, WAIT);
    eq(task["status"].as_str(), Some("completed"), "completed")?;
    ensure(
        started.elapsed() < Duration::from_secs(TYPICAL_SECS),
        format!(
            "the callback finished it before any scheduled poll ({:?})",
            started.elapsed()
        ),
    )?;
    let seen = wait_polls(stack, &id, 2, Duration::from_secs(TYPICAL_SECS + 10));
    eq(
        seen.len(),
        2,
        &format!("the callback's poll and the chain's: {seen:?}"),
    )?;
    eq(
        seen.iter().filter(|(asked, _)| *asked).count(),
        1,
        &format!("the provider was asked once: {seen:?}"),
    )?;
    ensure(
        seen.iter().all(|(_, decision)| decision == "ack"),
        format!("neither poll went on: {seen:?}"),
    )?;
    // D1 round trips of a lone task: the consumer claims it, records the provider's id and ends
    // it (a batch of several submits shares its claims and its accepts: see the pipeline suite),
    // and the callback reads nothing
    eq(
        io_sum(stack, &id, "d1_round_trips"),
        3,
        "the consumer's D1 round trips for the task",
    )?;
    let callbacks: Vec<u64> = tasks::callback_lines(stack)
        .iter()
        .filter_map(|e| e["io"]["d1_round_trips"].as_u64())
        .collect();
    eq(callbacks, vec![0], "one callback, no D1 round trip")?;
    // KV: the callback's poll reads the task's status key (not there yet) and writes it as the
    // task ends; the chain's poll knows from the isolate's memory that it ended, and reads none
    eq(
        io_sum(stack, &id, "kv"),
        2,
        "the task's KV calls: one read and the final status",
    )?;

    // callbacks lost: nothing asks before the typical time, and the first poll finishes it
    set_callbacks(stack, false);
    let started = Instant::now();
    let id = submitted(&c, &token, "polling: callback lost", "kie_4o");
    let task = c.wait_task(&token, &id, WAIT);
    eq(task["status"].as_str(), Some("completed"), "completed")?;
    ensure(
        started.elapsed() >= Duration::from_secs(TYPICAL_SECS),
        format!(
            "the first poll waited for the typical generation time ({:?})",
            started.elapsed()
        ),
    )?;
    // the poll's log line is written as its message is acked, just after the status it set
    let seen = wait_polls(stack, &id, 1, Duration::from_secs(10));
    eq(
        seen.iter().filter(|(asked, _)| *asked).count(),
        1,
        &format!("one poll asked the provider: {seen:?}"),
    )?;

    // two polls of one finished task in one batch (a callback's poll and the chain's, due at
    // the same moment, or a duplicate delivery): they run one at a time, so the later finds the
    // task ended instead of asking, downloading and storing again
    let id = submitted(&c, &token, "polling: two at once", "kie_4o");
    let detail = || {
        c.get(&format!("/admin/tasks/{id}"), Some(ADMIN_TOKEN))
            .json()
    };
    let submitted_at = Instant::now();
    wait_until(Duration::from_secs(10), || {
        detail()["external_task_id"].is_string()
    });
    let external = detail()["external_task_id"].clone();
    ensure(
        external.is_string(),
        format!("the provider's id is known: {}", detail()),
    )?;
    // the simulator has finished it; the chain's first poll is still seconds away
    std::thread::sleep(
        Duration::from_millis(GENERATION_MS + 300).saturating_sub(submitted_at.elapsed()),
    );
    let poll = json!({"v": 1, "type": "task.poll", "task_id": id, "model": "kie_4o",
        "external_id": external, "deadline_at": e2e::now_secs() + 600, "attempt": 0});
    let r = c.post_json(
        "/admin/queues/tasks/messages",
        Some(ADMIN_TOKEN),
        &json!({"messages": [poll, poll]}),
    );
    eq(r.status, 202, &format!("inject: {}", r.text()))?;
    let task = c.wait_task(&token, &id, WAIT);
    eq(task["status"].as_str(), Some("completed"), "completed")?;
    // both injected polls and the chain's first
    let seen = wait_polls(stack, &id, 3, Duration::from_secs(TYPICAL_SECS + 10));
    eq(seen.len(), 3, &format!("three polls: {seen:?}"))?;
    eq(
        seen.iter().filter(|(asked, _)| *asked).count(),
        1,
        &format!("one poll asked the provider: {seen:?}"),
    )?;
    eq(io_sum(stack, &id, "r2"), 1, "one R2 put")?;
    Ok(())
}

fn main() {
    let mut options = StackOptions::default();
    options
        .vars
        .insert("TYPICAL_GENERATION_SECS".into(), TYPICAL_SECS.to_string());
    e2e::suite::run(options, |_| {}, e2e::cases![polling_is_the_fallback])
}
