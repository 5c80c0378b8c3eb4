//! Tasks as their owner submits and follows them: `POST /api/tasks`, `GET /api/tasks/{id}`; and
//! the api's log lines of the provider's callbacks about them.

use crate::check::{ensure, Check};
use crate::client::{Client, Reply};
use crate::stack::Stack;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Submits `prompt` for `model`; the answer, whatever its status.
pub fn submit(c: &Client, token: &str, prompt: &str, model: &str) -> Reply {
    submit_json(c, token, &json!({"prompt": prompt, "model": model}))
}

/// Submits any JSON body (a size, fields that do not belong); the answer, whatever its status.
pub fn submit_json(c: &Client, token: &str, body: &Value) -> Reply {
    c.post_json("/api/tasks", Some(token), body)
}

/// Submits `prompt` for `model`, which must be accepted (202; a panic otherwise); the task's id.
#[track_caller]
pub fn submitted(c: &Client, token: &str, prompt: &str, model: &str) -> String {
    let r = submit(c, token, prompt, model);
    assert_eq!(r.status, 202, "submit: {}", r.text());
    id(&r)
}

/// The `id` of an answer's JSON body (empty when it has none).
pub fn id(r: &Reply) -> String {
    r.json()["id"].as_str().unwrap_or_default().to_owned()
}

/// Reads the task every 200 ms until its status is `status`; fails with `what` once `limit` has
/// passed.
pub fn wait_status(
    c: &Client,
    token: &str,
    id: &str,
    status: &str,
    limit: Duration,
    what: &str,
) -> Check {
    let started = Instant::now();
    while c.get(&format!("/api/tasks/{id}"), Some(token)).json()["status"] != status {
        ensure(started.elapsed() < limit, what)?;
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// The tasks `ids` as their owner reads them, in that order.
pub fn states(c: &Client, token: &str, ids: &[String]) -> Vec<Value> {
    ids.iter()
        .map(|id| c.get(&format!("/api/tasks/{id}"), Some(token)).json())
        .collect()
}

/// Whether every task has ended: completed or failed.
pub fn all_ended(tasks: &[Value]) -> bool {
    tasks
        .iter()
        .all(|t| matches!(t["status"].as_str(), Some("completed" | "failed")))
}

/// The api's log lines for provider callbacks (`POST /webhooks/ai/...`), oldest first.
pub fn callback_lines(stack: &Stack) -> Vec<Value> {
    stack
        .events(Some("http"))
        .into_iter()
        .filter(|e| {
            e["path"]
                .as_str()
                .is_some_and(|p| p.starts_with("/webhooks/ai/"))
        })
        .collect()
}

/// The consumer's log lines for every `task.poll` of `task` handled so far, oldest first.
pub fn polls_of(stack: &Stack, task: &str) -> Vec<Value> {
    stack
        .events(Some("message"))
        .into_iter()
        .filter(|m| m["task_id"] == task && m["type"] == "task.poll")
        .collect()
}
