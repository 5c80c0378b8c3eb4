//! The pipeline under failure, end to end on the real local stack: flaky and stuck providers,
//! permanent refusals, deadlines, dead letters with operator replay (through the CLI), garbage
//! messages, and task retries. Callbacks are off here so polling does all the work.

use e2e::check::{ensure, eq};
use e2e::client::Client;
use e2e::stack::{Stack, StackOptions, ADMIN_TOKEN};
use e2e::tasks::submitted;
use libtest_mimic::Failed;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(90);
const DEADLINE_SECS: u64 = 40;

/// The dead letter archived for a task, once it shows up.
fn dead_letter_for(c: &Client, filter: &str, task: &str, limit: Duration) -> Option<Value> {
    let started = Instant::now();
    while started.elapsed() < limit {
        let list = c
            .get(&format!("/admin/dead-letters?{filter}"), Some(ADMIN_TOKEN))
            .json();
        for dl in list["dead_letters"].as_array().cloned().unwrap_or_default() {
            let id = dl["id"].as_str().unwrap_or_default();
            let shown = c
                .get(&format!("/admin/dead-letters/{id}"), Some(ADMIN_TOKEN))
                .json();
            if shown["body"]["task_id"] == task {
                return Some(shown);
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    None
}

fn flaky_provider_still_completes(stack: &Stack) -> Result<(), Failed> {
    let c = stack.client();
    let (_, token) = c.new_user(ADMIN_TOKEN, 100);
    let ids: Vec<String> = (0..5)
        .map(|i| {
            submitted(
                &c,
                &token,
                &format!("half the calls fail {i} [sim:flaky=50]"),
                "kie_4o",
            )
        })
        .collect();
    let worst = submitted(
        &c,
        &token,
        "three in four calls fail [sim:flaky=75]",
        "kie_4o",
    );
    for id in ids.iter().chain([&worst]) {
        let task = c.wait_task(&token, id, WAIT);
        eq(
            task["status"].as_str(),
            Some("completed"),
            &format!("{id}: {task}"),
        )?;
    }
    eq(c.balance(&token), 100 - 6 * 2, "each charged once")?;
    ensure(
        stack
            .sim
            .stats()
            .flaky_failures_by_prompt
            .values()
            .sum::<u64>()
            >= 10,
        "failures were injected",
    )?;

    // consecutive failures of one step wait longer each time
    let delays: Vec<u64> = e2e::tasks::polls_of(stack, &worst)
        .iter()
        .filter(|m| m["error_class"] == "server_error")
        .filter_map(|m| m["delay_secs"].as_u64())
        .collect();
    ensure(
        delays.len() >= 3,
        format!("three failed polls in a row: {delays:?}"),
    )?;
    let run = &delays[..3];
    ensure(
        run[0] <= run[1] && run[1] <= run[2] && run[2] > run[0],
        format!("growing delays: {run:?}"),
    )?;
    Ok(())
}

fn stuck_provider_fails_at_the_deadline(stack: &Stack) -> Result<(), Failed> {
    let c = stack.client();
    let (_, token) = c.new_user(ADMIN_TOKEN, 5);
    let id = submitted(&c, &token, "never finishes [sim:stuck]", "kie_4o");
    eq(c.balance(&token), 3, "held while running")?;
    let task = c.wait_task(&token, &id, Duration::from_secs(DEADLINE_SECS + 30));
    eq(task["status"].as_str(), Some("failed"), "failed")?;
    eq(
        task["failure_reason"].as_str(),
        Some("deadline_exceeded"),
        "reason",
    )?;
    eq(c.balance(&token), 5, "balance back where it was")?;
    Ok(())
}

fn permanent_failure_fails_at_once(stack: &Stack) -> Result<(), Failed> {
    let c = stack.client();
    let (_, token) = c.new_user(ADMIN_TOKEN, 5);
    let started = Instant::now();
    let id = submitted(&c, &token, "refused at once [sim:refuse]", "kie_4o");
    let task = c.wait_task(&token, &id, WAIT);
    eq(task["status"].as_str(), Some("failed"), "failed")?;
    ensure(
        started.elapsed() < Duration::from_secs(5),
        format!("failed without retrying: {:?}", started.elapsed()),
    )?;
    ensure(
        task["failure_reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("content_policy")),
        format!("reason {}", task["failure_reason"]),
    )?;
    eq(c.balance(&token), 5, "balance restored")?;
    let retries = stack
        .events(Some("message"))
        .iter()
        .filter(|m| m["task_id"] == id.as_str() && !m["error_class"].is_null())
        .count();
    eq(retries, 0, "no transient retries for a permanent failure")?;
    Ok(())
}

fn dead_letter_then_replay_completes_once(stack: &Stack) -> Result<(), Failed> {
    let c = stack.client();
    let (_, token) = c.new_user(ADMIN_TOKEN, 10);
    let prompt = "the provider is down for this one [sim:flaky=100]";
    let id = submitted(&c, &token, prompt, "kie_4o");
    let dl = dead_letter_for(
        &c,
        "type=task.submit&error_class=server_error&status=dead",
        &id,
        Duration::from_secs(60),
    )
    .ok_or("the failing message was not archived")?;
    let dl_id = dl["id"].as_str().unwrap_or_default().to_owned();
    eq(
        dl["source_queue"].as_str(),
        Some("edgeline-tasks"),
        "source queue",
    )?;
    eq(dl["attempts"].as_i64(), Some(4), "attempts recorded")?;
    ensure(
        dl["error_text"]
            .as_str()
            .is_some_and(|t| t.contains("gave up after 4 attempts")),
        format!("error text {}", dl["error_text"]),
    )?;
    let task = c.get(&format!("/api/tasks/{id}"), Some(&token)).json();
    eq(
        task["status"].as_str(),
        Some("pending"),
        "the task waits for an operator, its hold kept",
    )?;
    eq(c.balance(&token), 8, "still held")?;

    // the operator looks first, then replays once the fault is fixed
    let (ok, out) = stack.cli(&[
        "dlq",
        "replay",
        "--filter",
        "--type",
        "task.submit",
        "--error-class",
        "server_error",
        "--dry-run",
        "--json",
    ]);
    ensure(ok, format!("dry run: {out}"))?;
    let dry: Value = serde_json::from_str(out.trim()).map_err(|e| format!("{e}: {out}"))?;
    ensure(
        dry["ids"]
            .as_array()
            .is_some_and(|a| a.contains(&json!(dl_id))),
        format!("dry run lists it: {dry}"),
    )?;
    eq(
        c.get(&format!("/admin/dead-letters/{dl_id}"), Some(ADMIN_TOKEN))
            .json()["status"]
            .as_str(),
        Some("dead"),
        "dry run changed nothing",
    )?;

    stack.sim.heal(prompt);
    let (ok, out) = stack.cli(&["dlq", "replay", "--id", &dl_id]);
    ensure(ok && out.contains("replayed"), format!("replay: {out}"))?;
    let task = c.wait_task(&token, &id, WAIT);
    eq(
        task["status"].as_str(),
        Some("completed"),
        "replay completed the task",
    )?;
    eq(c.balance(&token), 8, "charged once")?;

    let (ok, out) = stack.cli(&["dlq", "replay", "--id", &dl_id]);
    ensure(
        ok && out.contains("not sent"),
        format!("second replay sends nothing: {out}"),
    )?;
    let shown = c
        .get(&format!("/admin/dead-letters/{dl_id}"), Some(ADMIN_TOKEN))
        .json();
    eq(shown["replay_count"].as_i64(), Some(1), "replayed once")?;
    eq(
        shown["replayed_by"].as_str(),
        Some("e2e-operator"),
        "actor recorded",
    )?;
    let history = shown["history"].as_array().cloned().unwrap_or_default();
    ensure(
        history
            .iter()
            .any(|h| h["action"] == "dead_letter.replay" && h["actor"] == "e2e-operator"),
        format!("audited: {history:?}"),
    )?;
    eq(c.balance(&token), 8, "still charged once")?;
    let stats = stack.sim.stats();
    eq(
        stats.flaky_failures_by_prompt.get(prompt).copied(),
        Some(4),
        "4 refused tries before dead-lettering",
    )?;
    eq(
        stats.creates_by_prompt.get(prompt).copied(),
        Some(1),
        "one accepted submission, after the replay",
    )?;

    let (ok, out) = stack.cli(&["dlq", "list", "--type", "task.submit"]);
    ensure(
        ok && out.contains(&dl_id) && out.contains("QUEUE"),
        format!("list shows it as a table: {out}"),
    )?;
    let (ok, out) = stack.cli(&["dlq", "show", "no-such-id"]);
    ensure(
        !ok && out.contains("404"),
        format!("a failure exits non-zero: {out}"),
    )?;
    Ok(())
}

fn garbage_is_archived_and_neighbours_complete(stack: &Stack) -> Result<(), Failed> {
    let c = stack.client();
    let (_, token) = c.new_user(ADMIN_TOKEN, 10);
    let id = submitted(&c, &token, "a neighbour of garbage", "kie_4o");
    let marker = format!("garbage-{id}");
    let r = c.post_json(
        "/admin/queues/tasks/messages",
        Some(ADMIN_TOKEN),
        &json!({"messages": [
            marker,
            {"v": 99, "type": "task.submit", "task_id": id, "attempt": 0},
            {"v": 1, "type": "task.submit", "task_id": id, "attempt": 0},
        ]}),
    );
    eq(r.status, 202, &format!("inject: {}", r.text()))?;
    let task = c.wait_task(&token, &id, WAIT);
    eq(
        task["status"].as_str(),
        Some("completed"),
        "the neighbour completed",
    )?;
    eq(c.balance(&token), 8, "and was charged once")?;
    let started = Instant::now();
    loop {
        let list = c
            .get(
                "/admin/dead-letters?error_class=parse_error",
                Some(ADMIN_TOKEN),
            )
            .json();
        let found = list["dead_letters"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .find_map(|dl| {
                let shown = c
                    .get(
                        &format!(
                            "/admin/dead-letters/{}",
                            dl["id"].as_str().unwrap_or_default()
                        ),
                        Some(ADMIN_TOKEN),
                    )
                    .json();
                (shown["body"] == json!(marker)).then_some(shown)
            });
        if let Some(dl) = found {
            ensure(
                dl["error_text"]
                    .as_str()
                    .is_some_and(|t| t.contains("not a JSON object")),
                format!("reason {}", dl["error_text"]),
            )?;
            // nothing to recover here: the operator discards it, once
            let dl_id = dl["id"].as_str().unwrap_or_default();
            let (ok, out) = stack.cli(&["dlq", "discard", "--id", dl_id]);
            ensure(ok && out.contains(": discarded"), format!("discard: {out}"))?;
            let (ok, out) = stack.cli(&["dlq", "discard", "--id", dl_id]);
            ensure(
                ok && out.contains("not discarded"),
                format!("second discard: {out}"),
            )?;
            let (ok, out) = stack.cli(&["dlq", "replay", "--id", dl_id]);
            ensure(
                ok && out.contains("not sent"),
                format!("a discarded letter is not replayed: {out}"),
            )?;
            let shown = c
                .get(&format!("/admin/dead-letters/{dl_id}"), Some(ADMIN_TOKEN))
                .json();
            eq(shown["status"].as_str(), Some("discarded"), "status")?;
            eq(shown["discarded_by"].as_str(), Some("e2e-operator"), "who")?;
            break;
        }
        ensure(
            started.elapsed() < Duration::from_secs(20),
            "the garbage message was archived",
        )?;
        std::thread::sleep(Duration::from_millis(300));
    }
    let versions = c
        .get(
            "/admin/dead-letters?error_class=unknown_version",
            Some(ADMIN_TOKEN),
        )
        .json();
    ensure(
        versions["dead_letters"]
            .as_array()
            .is_some_and(|a| !a.is_empty()),
        "the unknown version was archived",
    )?;
    // discard by filter: a dry run lists it, the real run discards it, a repeat finds nothing
    let (ok, out) = stack.cli(&[
        "dlq",
        "discard",
        "--filter",
        "--error-class",
        "unknown_version",
        "--dry-run",
        "--json",
    ]);
    let dry: Value = serde_json::from_str(out.trim()).map_err(|e| format!("{e}: {out}"))?;
    ensure(
        ok && dry["count"].as_u64().is_some_and(|n| n >= 1),
        format!("dry run: {out}"),
    )?;
    let (ok, out) = stack.cli(&[
        "dlq",
        "discard",
        "--filter",
        "--error-class",
        "unknown_version",
        "--json",
    ]);
    let done: Value = serde_json::from_str(out.trim()).map_err(|e| format!("{e}: {out}"))?;
    eq(
        (ok, done["count"].clone()),
        (true, dry["count"].clone()),
        "discarded what the dry run listed",
    )?;
    let (_, out) = stack.cli(&[
        "dlq",
        "discard",
        "--filter",
        "--error-class",
        "unknown_version",
        "--json",
    ]);
    eq(
        serde_json::from_str::<Value>(out.trim())
            .ok()
            .map(|v| v["count"].clone()),
        Some(json!(0)),
        "nothing left to discard",
    )?;
    Ok(())
}

fn failed_tasks_can_be_retried(stack: &Stack) -> Result<(), Failed> {
    let c = stack.client();
    let (_, token) = c.new_user(ADMIN_TOKEN, 4);
    let prompt = "fails until fixed [sim:fail]";
    let id = submitted(&c, &token, prompt, "kie_4o");
    eq(
        c.wait_task(&token, &id, WAIT)["status"].as_str(),
        Some("failed"),
        "first run fails",
    )?;
    let failed = c
        .get("/admin/tasks?status=failed", Some(ADMIN_TOKEN))
        .json();
    ensure(
        failed["tasks"]
            .as_array()
            .is_some_and(|a| a.iter().any(|t| t["id"] == id.as_str())),
        "listed as failed",
    )?;

    stack.sim.heal(prompt);
    let (ok, out) = stack.cli(&["tasks", "retry", &id, "--json"]);
    ensure(ok, format!("retry: {out}"))?;
    let retried: Value = serde_json::from_str(out.trim()).map_err(|e| format!("{e}: {out}"))?;
    eq(retried["created"].as_bool(), Some(true), "a new task")?;
    let new_id = retried["task"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    eq(
        c.wait_task(&token, &new_id, WAIT)["status"].as_str(),
        Some("completed"),
        "the retry completes",
    )?;
    eq(c.balance(&token), 2, "charged once, for the retry")?;
    let again = c.post_json(
        &format!("/admin/tasks/{id}/retry"),
        Some(ADMIN_TOKEN),
        &json!({}),
    );
    eq(
        (
            again.status,
            again.json()["task"]["id"].as_str().map(str::to_owned),
        ),
        (200, Some(new_id.clone())),
        "retrying twice gives the same task",
    )?;
    eq(
        c.post_json(
            &format!("/admin/tasks/{new_id}/retry"),
            Some(ADMIN_TOKEN),
            &json!({}),
        )
        .code(),
        "task_not_failed".into(),
        "only failed tasks",
    )?;
    let detail = c
        .get(&format!("/admin/tasks/{new_id}"), Some(ADMIN_TOKEN))
        .json();
    eq(
        detail["retry_of"].as_str(),
        Some(id.as_str()),
        "linked to the failed task",
    )?;

    // a retry needs the credits like any task
    let (_, poor) = c.new_user(ADMIN_TOKEN, 2);
    let failing = submitted(&c, &poor, "fails for the poor user [sim:fail]", "kie_4o");
    c.wait_task(&poor, &failing, WAIT);
    submitted(&c, &poor, "holds the last credits [sim:stuck]", "kie_4o");
    let r = c.post_json(
        &format!("/admin/tasks/{failing}/retry"),
        Some(ADMIN_TOKEN),
        &json!({}),
    );
    eq(
        r.status,
        402,
        &format!("retry without credits: {}", r.text()),
    )?;
    Ok(())
}

fn every_message_logs_one_structured_line(stack: &Stack) -> Result<(), Failed> {
    let c = stack.client();
    let (_, token) = c.new_user(ADMIN_TOKEN, 5);
    let id = submitted(&c, &token, "log me", "kie_4o");
    c.wait_task(&token, &id, WAIT);
    let lines: Vec<Value> = stack
        .events(Some("message"))
        .into_iter()
        .filter(|m| m["task_id"] == id.as_str())
        .collect();
    ensure(
        lines.len() >= 2,
        format!("a line per message: {}", lines.len()),
    )?;
    for l in &lines {
        for field in [
            "type",
            "attempt",
            "decision",
            "error_class",
            "ms",
            "io",
            "message_id",
        ] {
            ensure(l.get(field).is_some(), format!("{field} in {l}"))?;
        }
        for counter in [
            "d1_round_trips",
            "d1_statements",
            "r2",
            "kv",
            "fetch",
            "queue_sends",
        ] {
            ensure(l["io"][counter].is_u64(), format!("io.{counter} in {l}"))?;
        }
    }
    Ok(())
}

/// A provider that says it cannot answer for a task (record-info 404) ends it at once: failed
/// with the provider's word, hold released, not dead-lettered to wait for an operator.
fn a_permanent_record_error_fails_the_task_at_once(stack: &Stack) -> Result<(), Failed> {
    let c = stack.client();
    let (_, token) = c.new_user(ADMIN_TOKEN, 10);
    let id = submitted(
        &c,
        &token,
        "created then forgotten [sim:forgotten]",
        "kie_4o",
    );
    let task = c.wait_task(&token, &id, Duration::from_secs(30));
    eq(task["status"].as_str(), Some("failed"), &format!("{task}"))?;
    ensure(
        task["failure_reason"]
            .as_str()
            .is_some_and(|r| r.contains("404")),
        format!("the provider's answer is the reason: {task}"),
    )?;
    eq(c.balance(&token), 10, "hold released")?;
    let detail = c
        .get(&format!("/admin/tasks/{id}"), Some(ADMIN_TOKEN))
        .json();
    ensure(
        detail["external_task_id"]
            .as_str()
            .is_some_and(|e| e.starts_with("4o")),
        format!("the provider's id is recorded with the failure: {detail}"),
    )?;
    Ok(())
}

/// Who pays and how much come from the task row, never from a message: a hand-made message
/// carrying a user and an amount is refused as malformed, and settles nothing.
fn money_never_rides_in_a_message(stack: &Stack) -> Result<(), Failed> {
    let c = stack.client();
    let (victim, v_token) = c.new_user(ADMIN_TOKEN, 10);
    let (_, token) = c.new_user(ADMIN_TOKEN, 10);
    let id = submitted(&c, &token, "settled once", "kie_4o");
    let task = c.wait_task(&token, &id, WAIT);
    eq(task["status"].as_str(), Some("completed"), "completed")?;
    let r = c.post_json(
        "/admin/queues/tasks/messages",
        Some(ADMIN_TOKEN),
        &json!({"messages": [
            {"v": 1, "type": "task.store", "task_id": id, "user_id": victim, "cost": 1_000, "model": "kie_4o",
             "external_id": "x", "deadline_at": 9_999_999_999i64, "urls": [], "attempt": 0},
            {"v": 1, "type": "task.store", "task_id": id, "model": "kie_4o",
             "external_id": "x", "deadline_at": 9_999_999_999i64, "urls": [], "attempt": 0},
        ]}),
    );
    eq(r.status, 202, &format!("inject: {}", r.text()))?;
    ensure(
        dead_letter_for(&c, "error_class=parse_error", &id, Duration::from_secs(30)).is_some(),
        "the message with money in it is refused",
    )?;
    std::thread::sleep(Duration::from_secs(2));
    eq(c.balance(&v_token), 10, "nobody else pays")?;
    eq(c.balance(&token), 8, "and the owner once")?;
    Ok(())
}

fn main() {
    let mut options = StackOptions::default();
    for (k, v) in [
        ("RETRY_MAX_SECS", "8"),
        ("MAX_TRANSIENT_ATTEMPTS", "4"),
        ("TASK_DEADLINE_SECS", &DEADLINE_SECS.to_string()),
    ] {
        options.vars.insert(k.into(), v.to_string());
    }
    e2e::suite::run(
        options,
        |stack| {
            stack.sim.set_knobs(sim::Knobs {
                callbacks: false,
                ..sim::Knobs::default()
            })
        },
        e2e::cases![
            flaky_provider_still_completes,
            stuck_provider_fails_at_the_deadline,
            permanent_failure_fails_at_once,
            dead_letter_then_replay_completes_once,
            garbage_is_archived_and_neighbours_complete,
            failed_tasks_can_be_retried,
            a_permanent_record_error_fails_the_task_at_once,
            money_never_rides_in_a_message,
            every_message_logs_one_structured_line
        ],
    )
}
