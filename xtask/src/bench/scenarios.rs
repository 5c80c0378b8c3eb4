//! One run: submit latency, the pipeline and webhook ingress, each on the stacks the run started.

use super::*;

pub(super) fn one_run(o: &Options, run: usize) -> Result<Value> {
    let floor = Floor::start()?;
    let mut options = StackOptions::default();
    options.vars.insert(
        "TYPICAL_GENERATION_SECS".into(),
        FIRST_POLL_SECS.to_string(),
    );
    let stack = Stack::start(options)?;
    let peer = Peer::start(&PeerOptions {
        kie_base_url: stack.sim.base_url(),
        first_poll_secs: FIRST_POLL_SECS,
        poll_secs: POLL_SECS,
    })?;
    instant(&stack);
    let c = stack.client();
    let b = Bench {
        stack: &stack,
        peer: &peer,
        tokens: (0..USERS)
            .map(|_| c.new_user(ADMIN_TOKEN, 1_000_000).1)
            .collect(),
        peer_tokens: peer.seed_users(USERS, 1_000_000)?,
        logs: [
            std::sync::Mutex::new(Tail::new(stack.state_dir.join("wrangler.log"))),
            std::sync::Mutex::new(Tail::new(peer.state_dir.join("wrangler.log"))),
        ],
    };

    let submit = submit_latency(o, run, &b)?;
    let pipeline = pipeline(o, run, &b, &floor)?;

    stack.sim.set_knobs(sim::Knobs {
        generation_ms: REALISTIC_GENERATION_MS,
        callbacks: true,
        ..sim::Knobs::default()
    });
    let realistic = json!({
        "edgeline": cost_scenario(&b, System::Edgeline, &format!("realistic r{run}"))?,
        "peer": cost_scenario(&b, System::Peer, &format!("realistic r{run}"))?,
    });
    stack.sim.set_knobs(sim::Knobs {
        generation_ms: SLOW_GENERATION_MS,
        callbacks: false,
        ..sim::Knobs::default()
    });
    let lost = json!({
        "edgeline": cost_scenario(&b, System::Edgeline, &format!("no callbacks r{run}"))?,
        "peer": cost_scenario(&b, System::Peer, &format!("no callbacks r{run}"))?,
    });
    instant(&stack);
    let webhooks = webhook_ingress(o, run, &b)?;

    let ratio = |a: &Value, b: &Value| -> Result<f64> {
        match (a.as_f64(), b.as_f64()) {
            (Some(a), Some(b)) if b > 0.0 => Ok(a / b),
            _ => Err(format!("a ratio over a missing or zero figure ({a} / {b})")),
        }
    };
    let realistic_ratios = json!({
        "billed_usd_edgeline_vs_peer": ratio(&realistic["edgeline"]["usd_per_million_tasks"], &realistic["peer"]["usd_per_million_tasks"])?,
    });
    Ok(json!({
        "start_ms": {"edgeline": ms(stack.started_in), "peer": ms(peer.started_in), "floor": ms(floor.started_in)},
        "peak_rss_kib": {"edgeline": peak_rss_kib(stack.pid()), "peer": peak_rss_kib(peer.pid()), "floor": peak_rss_kib(floor.pid())},
        "submit": submit,
        "pipeline": pipeline,
        "cost": {"instant": pipeline_costs(&pipeline), "realistic": realistic, "callbacks_lost": lost, "ratios": realistic_ratios},
        "webhooks": webhooks,
    }))
}

pub(super) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub(super) fn instant(stack: &Stack) {
    stack.sim.set_knobs(sim::Knobs {
        generation_ms: 0,
        callbacks: true,
        ..sim::Knobs::default()
    });
}

/// The floor of submit latency: the api's route that does no I/O (it answers the committed
/// OpenAPI document). It comes through the same socket, proxy, isolate and JavaScript thread as a
/// submit and runs the same per-request code, so what a submit takes beyond it is its own work
/// and I/O. (A static file of the api's assets is no floor here: `wrangler dev` serves it through
/// several workers on that thread, and it measured slower than a submit.)
pub(super) const FLOOR_PATH: &str = "/api/openapi.json";

/// Submit latency: edgeline and the peer, and the floor probed beside edgeline, all driven at the
/// same time at each concurrency.
pub(super) fn submit_latency(o: &Options, run: usize, b: &Bench<'_>) -> Result<Value> {
    let mut rows = Vec::new();
    let floor_url = format!("{}{FLOOR_PATH}", b.stack.api);
    for conc in CONCURRENCY {
        let hello = |_: usize| Request::get(floor_url.clone());
        let edge = |i: usize| b.submit(System::Edgeline, i, &format!("latency r{run} c{conc} {i}"));
        let peer = |i: usize| b.submit(System::Peer, i, &format!("latency r{run} c{conc} {i}"));
        // the floor is a probe: a client per eight of the submits' (1, 1, 4), so it meets the
        // wait the submits meet without a load of its own that would slow edgeline's submits
        // beside the peer's. Its share is a third of theirs: a slow probe that had to send as
        // many would keep both systems submitting long past theirs, and the peer's local
        // Workflows engine runs out of SQLite memory under the instances that makes.
        let loads = load::together(
            &[
                Target {
                    concurrency: conc.div_ceil(8),
                    total: (o.requests / 3).max(1),
                    expect: 200,
                    make: &hello,
                    keep_bodies: false,
                },
                Target {
                    concurrency: conc,
                    total: o.requests,
                    expect: 202,
                    make: &edge,
                    keep_bodies: true,
                },
                Target {
                    concurrency: conc,
                    total: o.requests,
                    expect: 202,
                    make: &peer,
                    keep_bodies: true,
                },
            ],
            Duration::from_secs(900),
        );
        let [f, e, p] =
            <[Load; 3]>::try_from(loads).map_err(|_| "a load thread died".to_owned())?;
        let mut edgeline = latency(&e, &format!("edgeline submit at {conc} clients"))?;
        let floor_v = latency(&f, &format!("floor (no I/O) at {conc} clients"))?;
        let peer_v = latency(&p, &format!("peer submit at {conc} clients"))?;
        // where edgeline's time went, from the api's own log lines
        let until = e.started_ms + u64::try_from(e.wall.as_millis()).unwrap_or(0) + 1000;
        let lines: Vec<Value> = b
            .events(System::Edgeline, Some("http"))
            .into_iter()
            .filter(|h| {
                h["path"] == "/api/tasks"
                    && h["method"] == "POST"
                    && h["at_ms"]
                        .as_u64()
                        .is_some_and(|t| t >= e.started_ms && t <= until)
            })
            .collect();
        let mean = |f: &dyn Fn(&Value) -> Option<u64>, what: &str| {
            per(
                lines.iter().filter_map(f).sum::<u64>() as f64,
                lines.len(),
                what,
            )
        };
        edgeline["server_ms"] = json!(mean(&|h| h["ms"].as_u64(), "api handling time")?);
        edgeline["server_d1_ms"] = json!(mean(&|h| h["io"]["d1_ms"].as_u64(), "api D1 time")?);
        let r = |a: &Value, b: &Value, k: &str| {
            a[k].as_f64().unwrap_or(f64::NAN) / b[k].as_f64().unwrap_or(f64::NAN)
        };
        let ratios = json!({
            "edgeline_p99_vs_floor": r(&edgeline, &floor_v, "p99_ms"),
            "edgeline_p50_vs_peer": r(&edgeline, &peer_v, "p50_ms"),
            "edgeline_p99_vs_peer": r(&edgeline, &peer_v, "p99_ms"),
        });
        // why any request failed, from each system's own error lines in the window
        let causes = |sys: System, from: u64| -> Vec<String> {
            let mut seen: Vec<String> = b
                .events(sys, None)
                .into_iter()
                .filter(|l| {
                    l["level"] == "error"
                        && l["at_ms"].as_u64().is_some_and(|t| t >= from && t <= until)
                })
                .map(|l| {
                    format!(
                        "{} {}",
                        l["event"].as_str().unwrap_or("?"),
                        l["cause"].as_str().unwrap_or_default()
                    )
                })
                .collect();
            seen.sort();
            seen.dedup();
            seen.truncate(5);
            seen
        };
        edgeline["error_causes"] = json!(causes(System::Edgeline, e.started_ms));
        let mut peer_v = peer_v;
        peer_v["error_causes"] = json!(causes(System::Peer, p.started_ms));
        rows.push(json!({"concurrency": conc, "edgeline": edgeline, "peer": peer_v, "floor": floor_v, "ratios": ratios}));
        // let both pipelines finish these before the next measurement
        b.wait_ended(System::Edgeline, &task_ids(&e), Duration::from_secs(1200))?;
        b.wait_ended(System::Peer, &task_ids(&p), Duration::from_secs(1200))?;
    }
    Ok(Value::Array(rows))
}

/// `--tasks` tasks through each system in turn (instant provider); then the floor's no-op
/// consumer drains as many messages as edgeline handled.
pub(super) fn pipeline(o: &Options, run: usize, b: &Bench<'_>, floor: &Floor) -> Result<Value> {
    let edgeline = pipeline_one(o, run, b, System::Edgeline)?;
    let peer = pipeline_one(o, run, b, System::Peer)?;
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let messages = edgeline["messages"].as_f64().unwrap_or(0.0).round() as u64;
    if messages == 0 {
        return Err("edgeline handled no messages in the pipeline".into());
    }
    let floor_ms = floor.drain(
        usize::try_from(messages).unwrap_or(0),
        Duration::from_secs(600),
    )?;
    let floor_mps = per(
        messages as f64 * 1000.0,
        usize::try_from(floor_ms).unwrap_or(0),
        "floor drain time",
    )?;
    let tps = |v: &Value| v["tasks_per_second"].as_f64().unwrap_or(f64::NAN);
    Ok(json!({
        "tasks": o.tasks,
        "edgeline": edgeline,
        "peer": peer,
        "floor_messages_per_second": floor_mps,
        "ratios": {
            "tasks_per_second_edgeline_vs_peer": tps(&edgeline) / tps(&peer),
            "edgeline_messages_vs_floor": edgeline["messages_per_second"].as_f64().unwrap_or(f64::NAN) / floor_mps,
        },
    }))
}

pub(super) fn pipeline_one(o: &Options, run: usize, b: &Bench<'_>, s: System) -> Result<Value> {
    let name = if s == System::Edgeline {
        "edgeline"
    } else {
        "peer"
    };
    let cpu_before = thread_cpu(b.pid(s));
    let submitted = load::run(
        PIPELINE_CONCURRENCY,
        o.tasks,
        202,
        Duration::from_secs(600),
        &|i| b.submit(s, i, &format!("pipeline r{run} {i}")),
        true,
    );
    // A refused submission is counted, not fatal: under this load the peer refuses a few
    // (503 from creating a workflow instance). Tasks/s counts what was accepted and completed;
    // the table shows what was refused. More than one in ten refused means something is broken.
    if submitted.error_count() * 10 > o.tasks {
        return Err(format!(
            "{name}: {} submissions failed: {:?}",
            submitted.error_count(),
            submitted.errors
        ));
    }
    let ids = task_ids(&submitted);
    let seen = b.wait_ended(s, &ids, Duration::from_secs(1800))?;
    let cpu_after = thread_cpu(b.pid(s));
    let sent_at: HashMap<String, u64> = submitted
        .samples
        .iter()
        .filter_map(|x| {
            let id = serde_json::from_str::<Value>(x.body.as_deref()?).ok()?["id"]
                .as_str()?
                .to_owned();
            Some((id, submitted.started_ms + x.offset_ms))
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
    if e2e.is_empty() {
        return Err(format!("{name}: no task ended"));
    }
    let wall_ms = last.saturating_sub(submitted.started_ms).max(1);
    // What a task costs after it ended counts too: edgeline's chain poll comes after the typical
    // generation time from the task's submission (and finds the task ended). Keep the window
    // open until the last task's is due.
    let last_sent = sent_at
        .values()
        .copied()
        .max()
        .unwrap_or(submitted.started_ms);
    let window_end =
        (last + SETTLE_MS).max(last_sent + (FIRST_POLL_SECS + POLL_SECS) * 1000 + SETTLE_MS);
    std::thread::sleep(Duration::from_millis(
        window_end.saturating_sub(e2e::now_ms()),
    ));
    let cost = costs(b, s, &ids, completed, (submitted.started_ms, window_end))?;
    // the consumer's batches while the pipeline ran, for its throughput figures
    let window = (submitted.started_ms, last + 3000);
    let mut v = json!({
        "completed": completed,
        "refused_at_submit": submitted.error_count(),
        "wall_ms": wall_ms,
        "tasks_per_second": completed as f64 * 1000.0 / wall_ms as f64,
        "e2e_p50_ms": load::percentile(&e2e, 0.5),
        "e2e_p99_ms": load::percentile(&e2e, 0.99),
        "cost": cost,
        // the local runtime: how busy workerd's busiest thread was (1.0: one core, all the time)
        "busiest_thread_share": busiest_share(&cpu_before, &cpu_after, wall_ms),
    });
    if s == System::Edgeline {
        let messages = cost["messages"].as_f64().unwrap_or(0.0) * completed as f64;
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let count = messages.round() as u64;
        v["messages"] = json!(count);
        v["messages_per_second"] = json!(messages * 1000.0 / wall_ms as f64);
        let batches: Vec<Value> = b
            .events(s, Some("batch"))
            .into_iter()
            .filter(|x| {
                x["queue"] == "edgeline-tasks"
                    && x["at_ms"]
                        .as_u64()
                        .is_some_and(|t| t >= window.0 && t <= window.1)
            })
            .collect();
        let held: u64 = batches.iter().filter_map(|x| x["ms"].as_u64()).sum();
        let sizes: u64 = batches.iter().filter_map(|x| x["messages"].as_u64()).sum();
        v["batches"] = json!(batches.len());
        v["messages_per_batch"] = json!(per(sizes as f64, batches.len(), "consumer batches")?);
        v["batch_ms_mean"] = json!(per(held as f64, batches.len(), "consumer batches")?);
        // near 1.0 and never above: one batch at a time kept the consumer busy
        v["batch_time_share"] = json!(held as f64 / wall_ms as f64);
        v["max_overlapping_batches"] = json!(max_overlap(&batches));
    }
    Ok(v)
}

/// Signed Creem events: accepted per second and latency, then how fast they were applied.
pub(super) fn webhook_ingress(o: &Options, run: usize, b: &Bench<'_>) -> Result<Value> {
    let stack = b.stack;
    let c = stack.client();
    let (user, _) = c.new_user(ADMIN_TOKEN, 0);
    let applied_before = b
        .events(System::Edgeline, Some("message"))
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
        let lines: Vec<Value> = b
            .events(System::Edgeline, Some("message"))
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
        std::thread::sleep(Duration::from_secs(1));
    };
    let mut v = latency(&l, "webhook ingress")?;
    v["events"] = json!(o.events);
    v["applied"] = json!(applied);
    v["applied_per_second"] =
        json!(applied as f64 * 1000.0 / last.saturating_sub(l.started_ms).max(1) as f64);
    Ok(v)
}
