//! Summary: every figure as the median of the runs with its range; budgets from per-run ratios;
//! what the results describe (bundles, machine, versions).

use super::*;

/// Median and range of one figure over the runs.
pub(super) fn spread(values: &[f64]) -> Value {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
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

/// The runs' tree with every number replaced by its spread over the runs that have it (a
/// figure computed only when there were samples, such as the cost of an unchanged poll, is
/// missing from a run that had none, and spreads over the others).
pub(super) fn spread_tree(runs: &[Value], pointer: &str) -> Value {
    let Some(first) = runs.iter().find_map(|r| r.pointer(pointer)) else {
        return Value::Null;
    };
    match first {
        Value::Object(_) => {
            let mut keys: Vec<&String> = Vec::new();
            for r in runs {
                if let Some(Value::Object(m)) = r.pointer(pointer) {
                    for k in m.keys() {
                        if !keys.contains(&k) {
                            keys.push(k);
                        }
                    }
                }
            }
            Value::Object(
                keys.into_iter()
                    .map(|k| (k.clone(), spread_tree(runs, &format!("{pointer}/{k}"))))
                    .collect(),
            )
        }
        Value::Array(a) => Value::Array(
            (0..a.len())
                .map(|i| spread_tree(runs, &format!("{pointer}/{i}")))
                .collect(),
        ),
        Value::Number(_) => spread(
            &runs
                .iter()
                .filter_map(|r| r.pointer(pointer).and_then(Value::as_f64))
                .collect::<Vec<_>>(),
        ),
        other => other.clone(),
    }
}

pub(super) fn med(v: &Value) -> f64 {
    v["median"].as_f64().unwrap_or(f64::NAN)
}

pub(super) fn budget(name: &str, limit: &str, measured: String, met: bool) -> Value {
    json!({"budget": name, "limit": limit, "measured": measured, "met": met})
}

/// `median (min–max)`, or the one value.
pub(super) fn fmt(v: &Value, digits: usize) -> String {
    // + 0.0: a sum of nothing printed as "-0.00" otherwise
    let f = |k: &str| v[k].as_f64().map(|x| x + 0.0);
    match (f("median"), f("min"), f("max")) {
        (Some(m), Some(lo), Some(hi)) if v["n"].as_u64().unwrap_or(0) > 1 => {
            format!("{m:.digits$} ({lo:.digits$}–{hi:.digits$})")
        }
        (Some(m), _, _) => format!("{m:.digits$}"),
        _ => match v.as_f64() {
            Some(x) => format!("{:.digits$}", x + 0.0),
            None => "–".into(),
        },
    }
}

/// At or within the limit, inclusive: 3.00 against "<= 3" is met.
pub(super) fn within(x: f64, limit: f64) -> bool {
    x.is_finite() && x <= limit + 1e-9
}

pub(super) fn summarise(
    o: &Options,
    runs: &[Value],
    cron: Value,
    versions: Value,
) -> Result<Value> {
    let s = spread_tree(runs, "");
    let mut budgets = Vec::new();

    let p = &s["pipeline"];
    let r = &p["ratios"]["tasks_per_second_edgeline_vs_peer"];
    budgets.push(budget(
        &format!(
            "pipeline tasks/s, {} tasks, edgeline vs the Workflows peer",
            o.tasks
        ),
        &format!(">= {PIPELINE_VS_PEER}x"),
        format!(
            "{}x ({} vs {} tasks/s)",
            fmt(r, 2),
            fmt(&p["edgeline"]["tasks_per_second"], 1),
            fmt(&p["peer"]["tasks_per_second"], 1)
        ),
        med(r) >= PIPELINE_VS_PEER,
    ));
    for (i, conc) in CONCURRENCY.iter().enumerate() {
        let row = &s["submit"][i];
        for q in ["p50", "p99"] {
            let k = format!("edgeline_{q}_vs_peer");
            budgets.push(budget(
                &format!("submit {q} at {conc} clients, edgeline vs peer"),
                "<= 1x",
                format!(
                    "{}x ({} vs {} ms)",
                    fmt(&row["ratios"][&k], 2),
                    fmt(&row["edgeline"][format!("{q}_ms")], 1),
                    fmt(&row["peer"][format!("{q}_ms")], 1)
                ),
                within(med(&row["ratios"][&k]), 1.0),
            ));
        }
        budgets.push(budget(
            &format!(
                "submit p99 at {conc} clients vs the floor beside it (the api's route without I/O)"
            ),
            &format!("<= {SUBMIT_P99_VS_FLOOR}x"),
            format!(
                "{}x ({} vs {} ms)",
                fmt(&row["ratios"]["edgeline_p99_vs_floor"], 2),
                fmt(&row["edgeline"]["p99_ms"], 1),
                fmt(&row["floor"]["p99_ms"], 1)
            ),
            within(
                med(&row["ratios"]["edgeline_p99_vs_floor"]),
                SUBMIT_P99_VS_FLOOR,
            ),
        ));
    }
    let c = &s["cost"]["realistic"];
    let trips = &c["edgeline"]["d1_round_trips"];
    budgets.push(budget(
        "D1 round trips per completed task, 9 s generation, callbacks on",
        &format!("<= {MAX_D1_ROUND_TRIPS}"),
        format!(
            "{} (submit {}, callbacks {}, consumer {}, its claims and accepts grouped {} tasks per round trip; peer {})",
            fmt(trips, 2),
            fmt(&c["edgeline"]["d1_round_trips_submit"], 2),
            fmt(&c["edgeline"]["d1_round_trips_callbacks"], 2),
            fmt(&c["edgeline"]["d1_round_trips_consumer"], 2),
            fmt(&c["edgeline"]["tasks_per_grouped_write"], 1),
            fmt(&c["peer"]["d1_round_trips"], 2)
        ),
        within(med(trips), MAX_D1_ROUND_TRIPS),
    ));
    let usd = &s["cost"]["ratios"]["billed_usd_edgeline_vs_peer"];
    budgets.push(budget(
        "billed operations per completed task (list price), edgeline vs peer, 9 s generation, callbacks on",
        "< 1x",
        format!("{}x (${} vs ${} per million tasks)", fmt(usd, 2), fmt(&c["edgeline"]["usd_per_million_tasks"], 0), fmt(&c["peer"]["usd_per_million_tasks"], 0)),
        med(usd) < 1.0,
    ));
    // callbacks make polling a fallback: the callback costs no D1 read, and one poll confirms it
    let e = &c["edgeline"];
    let per_callback = med(&e["d1_round_trips_callbacks"]) / med(&e["callbacks"]);
    budgets.push(budget(
        "D1 round trips per provider callback (its signed token proves the task)",
        "0",
        format!(
            "{per_callback:.2} ({} callbacks per task)",
            fmt(&e["callbacks"], 2)
        ),
        per_callback.is_finite() && per_callback == 0.0,
    ));
    budgets.push(budget(
        "polls of the provider per completed task, 9 s generation, callbacks on (the first poll waits for the typical generation time)",
        "<= 1",
        format!(
            "{} (peer {}); poll messages {}",
            fmt(&e["polls"], 2),
            fmt(&c["peer"]["polls"], 2),
            fmt(&e["poll_messages"], 2)
        ),
        within(med(&e["polls"]), 1.0),
    ));
    let lost = &s["cost"]["callbacks_lost"]["edgeline"];
    let unchanged = [&lost["unchanged_polls"], &c["edgeline"]["unchanged_polls"]];
    if unchanged.iter().all(|u| med(u).is_nan() || med(u) == 0.0) {
        return Err(
            "no poll found a task still generating: the cost of an unchanged poll has no sample"
                .into(),
        );
    }
    let poll_trips = &lost["d1_round_trips_per_unchanged_poll"];
    budgets.push(budget(
        "D1 round trips per poll that finds nothing new",
        "0",
        format!(
            "{} over {} polls per run",
            fmt(poll_trips, 2),
            fmt(&lost["unchanged_polls"], 0)
        ),
        med(poll_trips) == 0.0,
    ));

    let bundle = bundle_sizes();
    let floor_gz = bundle["floor-worker"]["gzip"].as_f64().unwrap_or(f64::NAN);
    for w in crate::toolchain::WORKERS {
        let gz = bundle[w]["gzip"].as_f64().unwrap_or(f64::NAN);
        budgets.push(budget(
            &format!("{w} gzipped wasm vs the floor's"),
            &format!("<= {WASM_VS_FLOOR}x"),
            format!(
                "{:.2}x ({:.0} vs {:.0} KiB)",
                gz / floor_gz,
                gz / 1024.0,
                floor_gz / 1024.0
            ),
            within(gz / floor_gz, WASM_VS_FLOOR),
        ));
    }
    if let Value::Array(rows) = &cron {
        for job in ["expire_orders", "clean_r2_cache"] {
            let per_item = |f: u64| {
                rows.iter()
                    .find(|r| r["job"] == job && r["factor"] == f)
                    .and_then(|r| r["us_per_item"].as_f64())
                    .unwrap_or(f64::NAN)
            };
            let ratio = per_item(100) / per_item(1);
            budgets.push(budget(
                &format!("{job} time per item, 100x vs 1x"),
                "flat (<= 1.5x)",
                format!(
                    "{ratio:.2}x ({:.1} vs {:.1} µs)",
                    per_item(100),
                    per_item(1)
                ),
                within(ratio, 1.5),
            ));
        }
    }

    Ok(json!({
        "command": format!("cargo xtask bench --runs {} --tasks {} --requests {} --events {}{}", o.runs, o.tasks, o.requests, o.events, if o.cron { "" } else { " --no-cron" }),
        "generated_at": shared::ids::iso8601(i64::try_from(e2e::now_ms() / 1000).unwrap_or(0)),
        "machine": machine(),
        "versions": versions,
        "runs": o.runs,
        "settings": {"requests_per_target": o.requests, "pipeline_concurrency": PIPELINE_CONCURRENCY, "cost_tasks": COST_TASKS,
                     "realistic_generation_ms": REALISTIC_GENERATION_MS, "slow_generation_ms": SLOW_GENERATION_MS, "first_poll_secs": FIRST_POLL_SECS, "poll_secs": POLL_SECS,
                     "prices_usd_per_million": PRICES.iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect::<Map<_, _>>()},
        "budgets": budgets,
        "summary": s,
        "bundle": bundle,
        "cron": cron,
        "raw_runs": runs,
    }))
}

pub(super) fn bundle_sizes() -> Value {
    let root = root();
    let mut out = Map::new();
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

pub(super) fn first_line(cmd: &mut Command) -> String {
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

pub(super) fn machine() -> Value {
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

pub(super) fn package_version(path: &str) -> Value {
    fs::read_to_string(root().join(path))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .map(|v| v["version"].clone())
        .unwrap_or(Value::Null)
}

/// The commit the results describe; `+changes` (and `clean: false`) when the tree differs from it.
pub(super) fn versions() -> Value {
    let git = |args: &[&str]| {
        Command::new("git")
            .current_dir(root())
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    let commit = git(&["rev-parse", "HEAD"]).trim().to_owned();
    let status = git(&["status", "--porcelain", "--untracked-files=normal"]);
    let changed: Vec<&str> = status.lines().map(|l| l.get(3..).unwrap_or(l)).collect();
    let short: String = commit.chars().take(7).collect();
    json!({
        "edgeline": if changed.is_empty() { short } else { format!("{short}+changes") },
        "commit": commit,
        "clean": changed.is_empty(),
        "changed_files": changed.iter().take(50).collect::<Vec<_>>(),
        "rustc": first_line(Command::new("rustc").arg("--version")),
        "node": first_line(Command::new("node").arg("--version")),
        "wrangler": package_version("node_modules/wrangler/package.json"),
        "workerd": package_version("node_modules/workerd/package.json"),
        "worker_crate": crate::toolchain::locked_version("worker").ok(),
        "wasm_bindgen": crate::toolchain::locked_version("wasm-bindgen").ok(),
    })
}
