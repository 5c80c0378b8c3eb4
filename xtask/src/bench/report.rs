//! Rendering: RESULTS.md and the block of docs/BENCHMARK.md, both from the results alone.

use super::*;

pub(super) struct Md(String);

impl Md {
    fn line(&mut self, l: impl AsRef<str>) {
        self.0.push_str(l.as_ref());
        self.0.push('\n');
    }
}

pub(super) fn budgets_table(r: &Value, md: &mut Md) {
    md.line("| budget | limit | measured: median of runs (range) | met |");
    md.line("|---|---|---|---|");
    for b in r["budgets"].as_array().into_iter().flatten() {
        md.line(format!(
            "| {} | {} | {} | {} |",
            b["budget"].as_str().unwrap_or_default(),
            b["limit"].as_str().unwrap_or_default(),
            b["measured"].as_str().unwrap_or_default(),
            if b["met"] == true {
                "met"
            } else {
                "**missed**"
            },
        ));
    }
}

pub(super) fn provenance(r: &Value) -> String {
    let v = &r["versions"];
    format!(
        "`{}` on {} ({} cores, {} GiB); edgeline {}{}, wrangler {}, workerd {}, worker {}, {}, node {}; generated {}. Medians of {} runs (range); every ratio is taken inside one run.",
        r["command"].as_str().unwrap_or_default(),
        r["machine"]["cpu"].as_str().unwrap_or("?"),
        r["machine"]["cores"],
        r["machine"]["memory_gib"],
        v["edgeline"].as_str().unwrap_or("?"),
        if v["clean"] == true { "" } else { " (uncommitted changes: these figures describe no commit)" },
        v["wrangler"].as_str().unwrap_or("?"),
        v["workerd"].as_str().unwrap_or("?"),
        v["worker_crate"].as_str().unwrap_or("?"),
        v["rustc"].as_str().unwrap_or("?"),
        v["node"].as_str().unwrap_or("?"),
        r["generated_at"].as_str().unwrap_or_default(),
        r["runs"],
    )
}

/// What binds locally, and whose limit it is, from the figures.
pub(super) fn limits(r: &Value, md: &mut Md) {
    let p = &r["summary"]["pipeline"];
    let busiest =
        med(&p["edgeline"]["busiest_thread_share"]).max(med(&p["peer"]["busiest_thread_share"]));
    md.line(format!(
        "- **The local runtime's**: `wrangler dev` runs every worker of a session in one workerd whose JavaScript runs on one thread. During the pipeline that thread was on a core {} of the wall time for edgeline and {} for the peer (1.00: one core, all the time, on a 2-core machine shared with the simulator and the load generator): {}",
        fmt(&p["edgeline"]["busiest_thread_share"], 2),
        fmt(&p["peer"]["busiest_thread_share"], 2),
        if busiest >= 0.8 {
            "near a full core, so that one thread is what bounds these runs; on Cloudflare each invocation gets its own isolate."
        } else {
            "well below a full core, so the thread is not what bounds these runs; the waits below are."
        }
    ));
    md.line(format!(
        "- **The local runtime's**: the local queue hands the consumer one batch at a time: at most {} batches overlapped, and batches were held {} of the wall time (the rest is the queue's delivery: `max_batch_timeout` 1 s, polls re-sent with a 1 s delay). A consumer that acks without work drains {} messages/s; edgeline's did {} messages/s ({} of it; the old 50% budget is retired). Cloudflare runs up to 250 consumer invocations of a queue at once, which local dev does not model; the peer's workflow instances do run side by side locally.",
        fmt(&p["edgeline"]["max_overlapping_batches"], 0),
        fmt(&p["edgeline"]["batch_time_share"], 2),
        fmt(&p["floor_messages_per_second"], 0),
        fmt(&p["edgeline"]["messages_per_second"], 1),
        fmt(&p["ratios"]["edgeline_messages_vs_floor"], 2)
    ));
    md.line(format!(
        "- **Ours**: a batch of {} messages is held {} ms (its slowest message: record-info, download, R2 put, one D1 batch, KV), each task takes {} messages and {} D1 round trips; the peer takes {} step executions and {} D1 round trips per task.",
        fmt(&p["edgeline"]["messages_per_batch"], 1),
        fmt(&p["edgeline"]["batch_ms_mean"], 0),
        fmt(&p["edgeline"]["cost"]["messages"], 2),
        fmt(&p["edgeline"]["cost"]["d1_round_trips"], 2),
        fmt(&p["peer"]["cost"]["step_executions"], 2),
        fmt(&p["peer"]["cost"]["d1_round_trips"], 2)
    ));
}

pub(super) const COST_ROWS: [(&str, &str); 16] = [
    ("D1 round trips", "d1_round_trips"),
    ("of which at submit", "d1_round_trips_submit"),
    ("of which in callbacks", "d1_round_trips_callbacks"),
    (
        "of which in the consumer / workflow",
        "d1_round_trips_consumer",
    ),
    (
        "tasks per grouped claim / accept round trip (edgeline)",
        "tasks_per_grouped_write",
    ),
    ("D1 rows written", "d1_rows_written"),
    ("D1 rows read", "d1_rows_read"),
    ("KV writes", "kv_writes"),
    ("KV reads", "kv_reads"),
    ("R2 class A", "r2_class_a"),
    ("queue operations", "queue_operations"),
    ("Workers invocations", "invocations"),
    ("Workflows step executions", "step_executions"),
    ("polls of the provider", "polls"),
    (
        "poll messages (edgeline: queue messages; peer: poll steps)",
        "poll_messages",
    ),
    (
        "list price, $ per million tasks (no CPU)",
        "usd_per_million_tasks",
    ),
];

pub(super) fn cost_table(r: &Value, md: &mut Md) {
    let c = &r["summary"]["cost"];
    md.line("| per completed task | edgeline, 9 s, callbacks | peer, 9 s, callbacks | edgeline, 18 s, no callbacks | peer, 18 s, no callbacks | edgeline, instant | peer, instant |");
    md.line("|---|---|---|---|---|---|---|");
    for (label, k) in COST_ROWS {
        md.line(format!(
            "| {label} | {} | {} | {} | {} | {} | {} |",
            fmt(&c["realistic"]["edgeline"][k], 2),
            fmt(&c["realistic"]["peer"][k], 2),
            fmt(&c["callbacks_lost"]["edgeline"][k], 2),
            fmt(&c["callbacks_lost"]["peer"][k], 2),
            fmt(&c["instant"]["edgeline"][k], 2),
            fmt(&c["instant"]["peer"][k], 2),
        ));
    }
}

pub(super) fn submit_table(r: &Value, md: &mut Md) {
    md.line("| clients | edgeline p50 / p99 ms | peer p50 / p99 ms | floor (the api's route without I/O, a client per eight) p50 / p99 ms | edgeline p99 / floor | edgeline p99 / peer | errors (edgeline, peer, floor) | samples per run (edgeline) | edgeline handled in, of which D1 (ms) |");
    md.line("|---|---|---|---|---|---|---|---|---|");
    for row in r["summary"]["submit"].as_array().into_iter().flatten() {
        md.line(format!(
            "| {} | {} / {} | {} / {} | {} / {} | {}x | {}x | {}, {}, {} | {} | {}, {} |",
            fmt(&row["concurrency"], 0),
            fmt(&row["edgeline"]["p50_ms"], 1),
            fmt(&row["edgeline"]["p99_ms"], 1),
            fmt(&row["peer"]["p50_ms"], 1),
            fmt(&row["peer"]["p99_ms"], 1),
            fmt(&row["floor"]["p50_ms"], 1),
            fmt(&row["floor"]["p99_ms"], 1),
            fmt(&row["ratios"]["edgeline_p99_vs_floor"], 2),
            fmt(&row["ratios"]["edgeline_p99_vs_peer"], 2),
            fmt(&row["edgeline"]["errors"], 0),
            fmt(&row["peer"]["errors"], 0),
            fmt(&row["floor"]["errors"], 0),
            fmt(&row["edgeline"]["samples"], 0),
            fmt(&row["edgeline"]["server_ms"], 1),
            fmt(&row["edgeline"]["server_d1_ms"], 1),
        ));
    }
}

pub(super) fn pipeline_table(r: &Value, md: &mut Md) {
    let p = &r["summary"]["pipeline"];
    md.line("| system | completed | refused at submit | tasks/s | end-to-end p50 / p99 ms | peak workerd memory KiB | start ms |");
    md.line("|---|---|---|---|---|---|---|");
    for s in ["edgeline", "peer"] {
        md.line(format!(
            "| {s} | {} | {} | {} | {} / {} | {} | {} |",
            fmt(&p[s]["completed"], 0),
            fmt(&p[s]["refused_at_submit"], 0),
            fmt(&p[s]["tasks_per_second"], 1),
            fmt(&p[s]["e2e_p50_ms"], 0),
            fmt(&p[s]["e2e_p99_ms"], 0),
            fmt(&r["summary"]["peak_rss_kib"][s], 0),
            fmt(&r["summary"]["start_ms"][s], 0),
        ));
    }
}

/// The block of [`BLOCK_FILE`]: budgets, headline tables and the limits, from the results alone.
pub fn block(r: &Value) -> String {
    let mut md = Md(String::new());
    md.line(BLOCK_BEGIN);
    md.line(String::new());
    md.line(provenance(r));
    md.line(String::new());
    budgets_table(r, &mut md);
    md.line(String::new());
    md.line(format!("Submit latency (`POST /api/tasks`; the floor: `GET {FLOOR_PATH}`, the api's route that does no I/O, in the same isolate, probed by a client per eight submit clients, driven at the same time):"));
    md.line(String::new());
    submit_table(r, &mut md);
    md.line(String::new());
    md.line(format!(
        "Pipeline, {} tasks from submit to completed, instant provider:",
        fmt(&r["summary"]["pipeline"]["tasks"], 0)
    ));
    md.line(String::new());
    pipeline_table(r, &mut md);
    md.line(String::new());
    md.line(
        "Cost per completed task (the workers' own counters; the peer's from its own log lines):",
    );
    md.line(String::new());
    cost_table(r, &mut md);
    md.line(String::new());
    md.line("Which limits are whose:");
    md.line(String::new());
    limits(r, &mut md);
    md.line(String::new());
    md.line(BLOCK_END);
    md.0
}

pub(super) fn markdown(r: &Value) -> String {
    let mut md = Md(String::new());
    md.line("# edgeline benchmark");
    md.line(String::new());
    md.line(provenance(r));
    if let Some(files) = r["versions"]["changed_files"]
        .as_array()
        .filter(|f| !f.is_empty())
    {
        md.line(String::new());
        md.line(format!(
            "Changed files at the start of the run: {}.",
            files
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    md.line(String::new());
    md.line("## Budgets");
    md.line(String::new());
    budgets_table(r, &mut md);
    md.line(String::new());
    md.line("## Submit latency");
    md.line(String::new());
    md.line(format!("Edgeline's and the peer's `POST /api/tasks` and the floor (a client per eight submit clients probing `GET {FLOOR_PATH}`, the api's route that does no I/O, through the same socket, proxy, isolate and JavaScript thread as a submit) are driven at the same time, each by its own clients, each until all three sent their share, beside both pipelines working through what was submitted. Error responses are counted apart; latencies are of the expected status only."));
    md.line(String::new());
    submit_table(r, &mut md);
    md.line(String::new());
    md.line("## Pipeline");
    md.line(String::new());
    pipeline_table(r, &mut md);
    md.line(String::new());
    md.line(format!(
        "edgeline: {} batches of {} messages, each held {} ms; the floor's no-op consumer drains {} messages/s.",
        fmt(&r["summary"]["pipeline"]["edgeline"]["batches"], 0),
        fmt(&r["summary"]["pipeline"]["edgeline"]["messages_per_batch"], 1),
        fmt(&r["summary"]["pipeline"]["edgeline"]["batch_ms_mean"], 0),
        fmt(&r["summary"]["pipeline"]["floor_messages_per_second"], 0),
    ));
    md.line(String::new());
    md.line("## Cost per completed task");
    md.line(String::new());
    md.line(format!(
        "{} tasks per system per scenario; 9 s: the provider generates for 9 s, the models' typical time; 18 s: a generation twice as slow, with its callback lost; both systems poll first after the typical time ({} s) and then every {} s; callbacks: the provider posts its callback when done (edgeline: the api verifies it and prompts a poll; the peer: `sendEvent` wakes the workflow's `waitForEvent`). Prices: shared/PLATFORM.md list prices per million (D1 rows written $1, KV writes $5, R2 class A $4.50, queue operations $0.40, invocations (the peer's: its submits, callbacks and workflow instances) and step executions $0.30), CPU not included.",
        r["settings"]["cost_tasks"], r["settings"]["first_poll_secs"], r["settings"]["poll_secs"]
    ));
    md.line(String::new());
    cost_table(r, &mut md);
    md.line(String::new());
    md.line("## Which limits are whose");
    md.line(String::new());
    limits(r, &mut md);
    md.line(String::new());
    md.line("## Bundles");
    md.line(String::new());
    md.line("| worker | wasm bytes | gzipped |");
    md.line("|---|---|---|");
    for w in [
        "api-worker",
        "consumer-worker",
        "cron-worker",
        "floor-worker",
    ] {
        md.line(format!(
            "| {w} | {} | {} |",
            r["bundle"][w]["raw"], r["bundle"][w]["gzip"]
        ));
    }
    let w = &r["summary"]["webhooks"];
    md.line(String::new());
    md.line("## Webhook ingress (signed Creem events, 8 clients)");
    md.line(String::new());
    md.line("| accepted/s | p50 ms | p99 ms | errors | applied/s |");
    md.line("|---|---|---|---|---|");
    md.line(format!(
        "| {} | {} | {} | {} | {} |",
        fmt(&w["per_second"], 0),
        fmt(&w["p50_ms"], 1),
        fmt(&w["p99_ms"], 1),
        fmt(&w["errors"], 0),
        fmt(&w["applied_per_second"], 0)
    ));
    if let Some(rows) = r["cron"].as_array() {
        md.line(String::new());
        md.line("## Cron scaling (one run per size)");
        md.line(String::new());
        md.line("| job | size | items changed | ms | µs per item |");
        md.line("|---|---|---|---|---|");
        for row in rows {
            md.line(format!(
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
    md.0
}

/// `doc` (the text of [`BLOCK_FILE`]) with its generated block replaced by `block`.
pub(super) fn with_block(doc: &str, block: &str) -> Result<String> {
    let start = doc
        .find(BLOCK_BEGIN)
        .ok_or(format!("{BLOCK_FILE} has no bench:begin marker"))?;
    let end = doc[start..]
        .find(BLOCK_END)
        .map(|i| start + i + BLOCK_END.len())
        .ok_or(format!("{BLOCK_FILE} has no bench:end marker"))?;
    let end = if doc[end..].starts_with('\n') {
        end + 1
    } else {
        end
    };
    Ok(format!("{}{}{}", &doc[..start], block, &doc[end..]))
}

/// `cargo xtask bench render`: RESULTS.md and the block of docs/BENCHMARK.md again from
/// bench/results.json
/// (after a change to how they are rendered; the figures stay those of the run).
pub fn render() -> Result<()> {
    let path = root().join("bench/results.json");
    let report: Value = serde_json::from_str(
        &fs::read_to_string(&path).map_err(|e| format!("reading {}: {e}", path.display()))?,
    )
    .map_err(|e| format!("{}: {e}", path.display()))?;
    fs::write(root().join("bench/RESULTS.md"), markdown(&report))
        .map_err(|e| format!("writing RESULTS.md: {e}"))?;
    write_block(&report)
}

pub(super) fn write_block(report: &Value) -> Result<()> {
    let path = root().join(BLOCK_FILE);
    let doc = fs::read_to_string(&path).map_err(|e| format!("reading {BLOCK_FILE}: {e}"))?;
    let updated = with_block(&doc, &block(report))?;
    if updated != doc {
        fs::write(&path, updated).map_err(|e| format!("writing {BLOCK_FILE}: {e}"))?;
    }
    Ok(())
}
