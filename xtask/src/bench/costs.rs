//! Cost per completed task, from the workers' own per-invocation counters and the peer's steps.

use super::*;

/// The instant pipeline's cost per completed task, by system.
pub(super) fn pipeline_costs(p: &Value) -> Value {
    json!({"edgeline": p["edgeline"]["cost"], "peer": p["peer"]["cost"]})
}

/// The peer's workflow instances among `steps` (its `peer.step` lines): one per task.
pub(super) fn instances(steps: &[&Value]) -> usize {
    steps
        .iter()
        .filter_map(|x| x["task_id"].as_str())
        .collect::<HashSet<_>>()
        .len()
}

/// `COST_TASKS` tasks through one system with the simulator as it is set; their cost.
pub(super) fn cost_scenario(b: &Bench<'_>, s: System, label: &str) -> Result<Value> {
    let submitted = load::run(
        4,
        COST_TASKS,
        202,
        Duration::from_secs(120),
        &|i| b.submit(s, i, &format!("{label} {i}")),
        true,
    );
    if submitted.error_count() > 0 {
        return Err(format!(
            "{label}: {} submissions failed: {:?}",
            submitted.error_count(),
            submitted.errors
        ));
    }
    let ids = task_ids(&submitted);
    let seen = b.wait_ended(s, &ids, Duration::from_secs(300))?;
    // what a task still costs after it ended (a chain's poll due after the callback finished
    // it) counts too: wait for it, and keep it in the window
    std::thread::sleep(Duration::from_millis(SETTLE_MS));
    let completed = ids
        .iter()
        .filter(|t| seen.get(*t).is_some_and(|(_, st)| st == "completed"))
        .count();
    let last = ids
        .iter()
        .filter_map(|t| seen.get(t).map(|(at, _)| *at))
        .max()
        .unwrap_or(submitted.started_ms);
    costs(
        b,
        s,
        &ids,
        completed,
        (submitted.started_ms, last + SETTLE_MS),
    )
}

/// Cost per completed task of the tasks `ids`, from the lines logged in `window`.
pub(super) fn costs(
    b: &Bench<'_>,
    s: System,
    ids: &HashSet<String>,
    completed: usize,
    window: (u64, u64),
) -> Result<Value> {
    let in_window = |v: &Value| {
        v["at_ms"]
            .as_u64()
            .is_some_and(|t| t >= window.0 && t <= window.1)
    };
    let ours = |v: &Value| v["task_id"].as_str().is_some_and(|t| ids.contains(t));
    let http: Vec<Value> = b
        .events(s, Some("http"))
        .into_iter()
        .filter(in_window)
        .collect();
    let submits: Vec<&Value> = http
        .iter()
        .filter(|h| h["path"] == "/api/tasks" && h["method"] == "POST")
        .collect();
    let callbacks: Vec<&Value> = http
        .iter()
        .filter(|h| {
            h["path"]
                .as_str()
                .is_some_and(|p| p.starts_with("/webhooks/ai/"))
        })
        .collect();
    let sum = |lines: &[&Value], f: &str| -> f64 {
        lines.iter().filter_map(|l| l["io"][f].as_f64()).sum()
    };
    let has = |lines: &[&Value], f: &str| lines.iter().all(|l| l["io"][f].is_number());
    let n = completed;
    let what = |f: &str| format!("{f} per completed task");
    let mut out = Map::new();
    match s {
        System::Edgeline => {
            let messages: Vec<Value> = b
                .events(s, Some("message"))
                .into_iter()
                .filter(|m| ours(m))
                .collect();
            let m: Vec<&Value> = messages.iter().collect();
            let api: Vec<&Value> = submits.iter().chain(callbacks.iter()).copied().collect();
            let all: Vec<&Value> = api.iter().chain(m.iter()).copied().collect();
            if !has(&all, "d1_rows_written") {
                return Err(
                    "edgeline's log lines carry no d1_rows_written: rebuild the workers".into(),
                );
            }
            let batches = b
                .events(s, Some("batch"))
                .into_iter()
                .filter(|x| x["queue"] == "edgeline-tasks" && in_window(x))
                .count();
            let kv_writes = b
                .events(s, None)
                .into_iter()
                .filter(|e| {
                    (e["event"] == "task.final_status_cached"
                        || e["event"] == "status_cache_failed")
                        && ours(e)
                })
                .count() as f64;
            let deliveries = m.len() as f64;
            let acked = m.iter().filter(|x| x["decision"] != "retry").count() as f64;
            let unchanged: Vec<&Value> = m
                .iter()
                .filter(|x| {
                    x["type"] == "task.poll"
                        && x["decision"] == "send"
                        && x["attempt"].as_u64().is_some_and(|a| a >= 1)
                })
                .copied()
                .collect();
            for (k, v) in [
                ("d1_round_trips", sum(&all, "d1_round_trips")),
                ("d1_round_trips_submit", sum(&submits, "d1_round_trips")),
                (
                    "d1_round_trips_callbacks",
                    sum(&callbacks, "d1_round_trips"),
                ),
                ("d1_round_trips_consumer", sum(&m, "d1_round_trips")),
                ("d1_statements", sum(&all, "d1_statements")),
                ("d1_rows_written", sum(&all, "d1_rows_written")),
                ("d1_rows_read", sum(&all, "d1_rows_read")),
                ("kv_writes", kv_writes),
                ("kv_reads", sum(&all, "kv") - kv_writes),
                // the consumer's R2 calls on the task path are the result puts
                ("r2_class_a", sum(&m, "r2")),
                ("r2_class_b", 0.0),
                ("fetches", sum(&m, "fetch")),
                // a message written, read and deleted is three operations; a delayed re-send is a new write
                (
                    "queue_operations",
                    sum(&all, "queue_sends") + deliveries + acked,
                ),
                ("messages", deliveries),
                (
                    "invocations",
                    (submits.len() + callbacks.len() + batches) as f64,
                ),
                ("step_executions", 0.0),
                // a poll asks the provider; a chain's poll that finds the task ended (in KV)
                // by its callback stops without asking, but is still a message
                (
                    "polls",
                    m.iter()
                        .filter(|x| {
                            x["type"] == "task.poll"
                                && x["io"]["fetch"].as_f64().is_some_and(|f| f > 0.0)
                        })
                        .count() as f64,
                ),
                (
                    "poll_messages",
                    m.iter().filter(|x| x["type"] == "task.poll").count() as f64,
                ),
                ("callbacks", callbacks.len() as f64),
            ] {
                out.insert(k.into(), json!(per(v, n, &what(k))?));
            }
            // a batch's task.submit messages claim together and accept together: two grouped
            // round trips per batch, however many tasks it held
            let submit_lines: Vec<&Value> = m
                .iter()
                .filter(|x| x["type"] == "task.submit")
                .copied()
                .collect();
            let grouped = sum(&submit_lines, "d1_round_trips");
            if grouped > 0.0 {
                out.insert(
                    "tasks_per_grouped_write".into(),
                    json!(2.0 * submit_lines.len() as f64 / grouped),
                );
            }
            out.insert("unchanged_polls".into(), json!(unchanged.len()));
            if !unchanged.is_empty() {
                out.insert(
                    "d1_round_trips_per_unchanged_poll".into(),
                    json!(sum(&unchanged, "d1_round_trips") / unchanged.len() as f64),
                );
            }
        }
        System::Peer => {
            let steps: Vec<Value> = b
                .events(s, Some("peer.step"))
                .into_iter()
                .filter(|x| ours(x))
                .collect();
            let st: Vec<&Value> = steps.iter().collect();
            let api: Vec<&Value> = submits.iter().chain(callbacks.iter()).copied().collect();
            let all: Vec<&Value> = api.iter().chain(st.iter()).copied().collect();
            for (k, v) in [
                ("d1_round_trips", sum(&all, "d1_round_trips")),
                ("d1_round_trips_submit", sum(&submits, "d1_round_trips")),
                (
                    "d1_round_trips_callbacks",
                    sum(&callbacks, "d1_round_trips"),
                ),
                ("d1_round_trips_consumer", sum(&st, "d1_round_trips")),
                ("d1_statements", sum(&all, "d1_statements")),
                ("d1_rows_written", sum(&all, "d1_rows_written")),
                ("d1_rows_read", sum(&all, "d1_rows_read")),
                ("kv_writes", sum(&all, "kv_writes")),
                ("kv_reads", sum(&all, "kv_reads")),
                ("r2_class_a", sum(&all, "r2_class_a")),
                ("r2_class_b", sum(&all, "r2_class_b")),
                ("fetches", sum(&st, "fetch")),
                ("queue_operations", 0.0),
                ("messages", 0.0),
                // Cloudflare's Workflows pricing bills "the number of Workflow invocations"
                // as Workers requests: each task's instance is one, besides the submit and the
                // callback that reach the peer's fetch handler
                (
                    "invocations",
                    (submits.len() + callbacks.len() + instances(&st)) as f64,
                ),
                ("step_executions", st.len() as f64),
                (
                    "polls",
                    st.iter().filter(|x| x["step"] == "poll").count() as f64,
                ),
                (
                    "poll_messages",
                    st.iter().filter(|x| x["step"] == "poll").count() as f64,
                ),
                ("callbacks", callbacks.len() as f64),
            ] {
                out.insert(k.into(), json!(per(v, n, &what(k))?));
            }
        }
    }
    let usd: f64 = PRICES
        .iter()
        .map(|(k, price)| out.get(*k).and_then(Value::as_f64).unwrap_or(0.0) * price)
        .sum();
    out.insert("usd_per_million_tasks".into(), json!(usd));
    out.insert("completed".into(), json!(completed));
    Ok(Value::Object(out))
}
