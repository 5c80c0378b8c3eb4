//! The operator console (`/admin/console/`, static files in `api-worker/assets/`) in a real
//! browser: headless Chromium (Debian's `chromium`) driven by playwright-core
//! (`e2e/browser/console.mjs`), against the real local stack, as an operator:
//!
//! - sign in (a wrong token is refused and said so; the token is kept in sessionStorage only);
//! - find a dead-lettered task by filter, dry-run the replay of the filter, confirm it, and see the
//!   task complete on its page, its timeline showing the dead letter and the operator's replay;
//! - discard injected garbage messages by filter: a cancelled confirmation changes nothing, a
//!   confirmed one discards them;
//! - bad input (a task id that is not one, credits that are not a number) and API errors (a
//!   missing task) are shown;
//! - a grant from a user's page, a cron job run from the cron page;
//! - the overview's numbers equal the API's (`GET /admin/stats`, itself checked against the
//!   lists: tasks by status, dead letters by class, the audit's violations).
//!
//! Screenshots of each page: `target/console/*.png`. Prints page load times and the suite's wall
//! time.

use e2e::check::{ensure, eq};
use e2e::client::Client;
use e2e::stack::{root, Stack, StackOptions, ADMIN_TOKEN};
use e2e::tasks::submitted;
use libtest_mimic::Failed;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

const ACTOR: &str = "console-e2e";
const FLAKY: &str = "the provider is down for this one [sim:flaky=100]";
const WAIT: Duration = Duration::from_secs(90);

/// Polls `GET path` (admin) until `done` holds for its JSON.
fn until(
    c: &Client,
    path: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Result<Value, Failed> {
    let started = Instant::now();
    loop {
        let v = c.get(path, Some(ADMIN_TOKEN)).json();
        if done(&v) {
            return Ok(v);
        }
        if started.elapsed() > WAIT {
            return Err(format!("{what}: not within {}s: {v}", WAIT.as_secs()).into());
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The overview's numbers as the API gives them (`data-stat` keys of the page).
fn api_numbers(stats: &Value, audit: &Value) -> BTreeMap<String, i64> {
    let mut m = BTreeMap::new();
    for (k, v) in stats["tasks"]["by_status"]
        .as_object()
        .cloned()
        .unwrap_or_default()
    {
        m.insert(format!("tasks.{k}"), v.as_i64().unwrap_or(-1));
    }
    m.insert(
        "tasks.total".into(),
        stats["tasks"]["total"].as_i64().unwrap_or(-1),
    );
    for w in ["hour", "day"] {
        for k in ["created", "completed", "failed"] {
            m.insert(
                format!("{w}.{k}"),
                stats["throughput"][w][k].as_i64().unwrap_or(-1),
            );
        }
    }
    m.insert(
        "dl.dead".into(),
        stats["dead_letters"]["dead"].as_i64().unwrap_or(-1),
    );
    for c in stats["dead_letters"]["by_class"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        let class = c["error_class"].as_str().unwrap_or_default();
        for k in ["dead", "replayed", "discarded", "total"] {
            m.insert(format!("dl.{class}.{k}"), c[k].as_i64().unwrap_or(-1));
        }
    }
    for (k, v) in stats["webhook_events"]["by_status"]
        .as_object()
        .cloned()
        .unwrap_or_default()
    {
        m.insert(format!("events.{k}"), v.as_i64().unwrap_or(-1));
    }
    m.insert(
        "audit.violations".into(),
        audit["violations"]
            .as_array()
            .map_or(-1, |a| i64::try_from(a.len()).unwrap_or(-1)),
    );
    m
}

/// `GET /admin/stats` against the lists it summarises.
fn stats_match_the_lists(c: &Client, stats: &Value) -> Result<(), Failed> {
    for status in ["pending", "submitted", "processing", "completed", "failed"] {
        let n = c
            .all(
                &format!("/admin/tasks?status={status}"),
                ADMIN_TOKEN,
                "tasks",
            )
            .len();
        eq(
            stats["tasks"]["by_status"][status].as_u64(),
            Some(n as u64),
            &format!("tasks {status}: stats and list"),
        )?;
    }
    for class in stats["dead_letters"]["by_class"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        let name = class["error_class"].as_str().unwrap_or_default();
        for status in ["dead", "replayed", "discarded"] {
            let n = c
                .all(
                    &format!("/admin/dead-letters?error_class={name}&status={status}"),
                    ADMIN_TOKEN,
                    "dead_letters",
                )
                .len();
            eq(
                class[status].as_u64(),
                Some(n as u64),
                &format!("dead letters {name} {status}"),
            )?;
        }
    }
    let events = c
        .get("/admin/webhook-events?limit=200", Some(ADMIN_TOKEN))
        .json();
    let applied = events["webhook_events"]
        .as_array()
        .map_or(0, |e| e.iter().filter(|e| e["status"] == "applied").count());
    eq(
        stats["webhook_events"]["by_status"]["applied"].as_u64(),
        Some(applied as u64),
        "applied webhook events",
    )?;
    Ok(())
}

fn the_console_as_an_operator(stack: &Stack) -> Result<(), Failed> {
    let c = stack.client();
    let email = format!("console-{}@e2e.test", std::process::id());
    let created = c.post_json(
        "/admin/users",
        Some(ADMIN_TOKEN),
        &json!({"email": email, "name": "Console", "credits": 20}),
    );
    eq(created.status, 201, "user created")?;
    let user = created.json()["id"].as_str().unwrap_or_default().to_owned();
    let token = c.session(ADMIN_TOKEN, &user);

    // a task whose submission keeps failing: dead-lettered, its hold kept
    let task = submitted(&c, &token, FLAKY, "kie_4o");
    // two that complete, one the provider refuses for good
    let done: Vec<String> = (0..2)
        .map(|i| submitted(&c, &token, &format!("a quiet harbour {i}"), "kie_4o"))
        .collect();
    let failed = submitted(&c, &token, "refused [sim:fail]", "kie_4o");
    // garbage injected into the tasks queue: archived as parse errors
    let sent = c.post_json(
        "/admin/queues/tasks/messages",
        Some(ADMIN_TOKEN),
        &json!({"messages": ["not a message", [1, 2, 3], 42]}),
    );
    eq(sent.status, 202, &format!("garbage sent: {}", sent.text()))?;
    for id in done.iter().chain([&failed]) {
        let t = c.wait_task(&token, id, WAIT);
        ensure(
            matches!(t["status"].as_str(), Some("completed" | "failed")),
            format!("task {id} ended: {t}"),
        )?;
    }
    until(
        &c,
        "/admin/dead-letters?error_class=parse_error&status=dead",
        "three parse errors archived",
        |v| v["dead_letters"].as_array().is_some_and(|a| a.len() == 3),
    )?;
    until(
        &c,
        "/admin/dead-letters?type=task.submit&error_class=server_error&status=dead",
        "the flaky task's submission dead-lettered",
        |v| v["dead_letters"].as_array().is_some_and(|a| a.len() == 1),
    )?;
    eq(
        c.get(&format!("/api/tasks/{task}"), Some(&token)).json()["status"].as_str(),
        Some("pending"),
        "the dead-lettered task waits for an operator",
    )?;
    // the provider is fixed before the operator replays
    stack.sim.heal(FLAKY);

    let shots = root().join("target/console");
    std::fs::create_dir_all(&shots).map_err(|e| e.to_string())?;
    let cfg = json!({
        "api": stack.api, "token": ADMIN_TOKEN, "actor": ACTOR, "task": task, "failed_task": failed,
        "user_email": email, "shots": shots.display().to_string(),
    });
    let started = Instant::now();
    let out = Command::new("node")
        .current_dir(root())
        .arg(root().join("e2e/browser/console.mjs"))
        .arg(cfg.to_string())
        .output()
        .map_err(|e| format!("node did not run: {e}"))?;
    let browser_ms = started.elapsed().as_millis();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let r: Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .ok_or_else(|| {
            format!(
                "console.mjs printed no report ({}):\n{stdout}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
    ensure(
        r["ok"] == true,
        format!(
            "the browser run failed at {:?}: {}\nconsole: {}",
            r["failed_step"], r["error"], r["console"]
        ),
    )?;

    // sign-in
    ensure(
        r["signin_error"]
            .as_str()
            .is_some_and(|e| e.contains("401")),
        format!(
            "a wrong token is refused with the API's answer: {}",
            r["signin_error"]
        ),
    )?;
    eq(
        r["token_kept_after_refusal"].clone(),
        Value::Null,
        "a refused token is not kept",
    )?;
    eq(
        r["storage"]["local"].clone(),
        json!([]),
        "nothing in localStorage",
    )?;
    ensure(
        r["storage"]["who"]
            .as_str()
            .is_some_and(|w| w.contains(ACTOR)),
        "signed in as the operator",
    )?;
    eq(r["charts"].as_u64(), Some(2), "two throughput charts")?;
    ensure(
        r["backlog"]
            .as_str()
            .is_some_and(|b| b.contains("Not reported")),
        format!(
            "the backlog says the platform does not report it: {}",
            r["backlog"]
        ),
    )?;

    // replay by filter after a dry run, and the task completes
    eq(
        r["listed_dead_letters"].as_array().map(Vec::len),
        Some(1),
        "found by filter",
    )?;
    ensure(
        r["replay_confirm"]["title"].as_str() == Some("Replay 1 dead letter?")
            && r["replay_confirm"]["text"]
                .as_str()
                .is_some_and(|t| t.contains("Dry run: 1 match")),
        format!("the dry run's count is confirmed: {}", r["replay_confirm"]),
    )?;
    eq(
        r["task_status"].as_str(),
        Some("completed"),
        "the replayed task completed",
    )?;
    eq(
        c.get(&format!("/api/tasks/{task}"), Some(&token)).json()["status"].as_str(),
        Some("completed"),
        "completed, as the API says",
    )?;
    let kinds: Vec<&str> = r["timeline"]
        .as_array()
        .map(|t| t.iter().filter_map(|e| e["kind"].as_str()).collect())
        .unwrap_or_default();
    for k in [
        "created",
        "accepted",
        "dead_letter",
        "operator",
        "ledger",
        "ended",
    ] {
        ensure(kinds.contains(&k), format!("timeline shows {k}: {kinds:?}"))?;
    }
    ensure(
        r["task_objects"].as_array().is_some_and(|o| !o.is_empty()),
        format!("its R2 objects: {}", r["task_objects"]),
    )?;
    eq(
        r["replayed_letter"]["status"].as_str(),
        Some("replayed"),
        "the letter is replayed",
    )?;
    ensure(
        r["replayed_letter"]["history"].as_array().is_some_and(|h| {
            h.iter().any(|l| {
                l.as_str()
                    .is_some_and(|l| l.contains(ACTOR) && l.contains("dead_letter.replay"))
            })
        }),
        format!("history names the operator: {}", r["replayed_letter"]),
    )?;
    let dl_id = r["listed_dead_letters"][0].as_str().unwrap_or_default();
    let dl = c
        .get(&format!("/admin/dead-letters/{dl_id}"), Some(ADMIN_TOKEN))
        .json();
    eq(
        dl["replayed_by"].as_str(),
        Some(ACTOR),
        "X-Actor recorded the replay",
    )?;
    eq(dl["replay_count"].as_i64(), Some(1), "replayed once")?;

    // discard with a confirmation
    eq(
        r["parse_errors_listed"].as_u64(),
        Some(3),
        "three parse errors listed",
    )?;
    ensure(
        r["discard_cancelled"]["title"].as_str() == Some("Discard 3 dead letters?"),
        format!("the confirmation counts them: {}", r["discard_cancelled"]),
    )?;
    eq(
        r["parse_errors_after_cancel"].as_u64(),
        Some(3),
        "cancel changed nothing",
    )?;
    eq(
        r["parse_errors_after_discard"].as_u64(),
        Some(0),
        "none left dead",
    )?;
    let discarded = c.all(
        "/admin/dead-letters?error_class=parse_error&status=discarded",
        ADMIN_TOKEN,
        "dead_letters",
    );
    eq(discarded.len(), 3, "discarded, as the API says")?;
    ensure(
        discarded.iter().all(|d| d["discarded_by"] == ACTOR),
        "by the operator",
    )?;

    // errors shown
    ensure(
        r["bad_input_error"]
            .as_str()
            .is_some_and(|e| e.contains("not-a-task-id")),
        format!("bad input shown: {}", r["bad_input_error"]),
    )?;
    ensure(
        r["api_error"]
            .as_str()
            .is_some_and(|e| e.contains("404") && e.contains("not_found")),
        format!("the API's 404 shown: {}", r["api_error"]),
    )?;
    eq(
        r["api_error_page_state"].as_str(),
        Some("error"),
        "the page says it failed",
    )?;
    ensure(
        r["failed_tasks_listed"]
            .as_array()
            .is_some_and(|a| a.contains(&json!(failed))),
        "the failed task listed by status",
    )?;
    eq(
        r["failed_task_has_retry"].as_bool(),
        Some(true),
        "a failed task can be retried",
    )?;

    // grant
    ensure(
        r["bad_grant_error"]
            .as_str()
            .is_some_and(|e| e.contains("credits")),
        format!("bad credits shown: {}", r["bad_grant_error"]),
    )?;
    eq(
        r["balance_after_grant"].as_i64(),
        r["balance_before_grant"].as_i64().map(|b| b + 5),
        "the grant shows in the balance",
    )?;
    eq(
        r["balance_after_grant"].as_i64(),
        Some(c.balance(&token)),
        "the user's own balance",
    )?;
    let log = c
        .get(
            &format!("/admin/audit-log?target={user}&action=grant.create"),
            Some(ADMIN_TOKEN),
        )
        .json();
    eq(
        log["entries"][0]["actor"].as_str(),
        Some(ACTOR),
        "the grant is audited with the operator",
    )?;

    // cron
    ensure(
        r["cron_notice"]
            .as_str()
            .is_some_and(|n| n.starts_with("expire_orders ran")),
        format!("run now: {}", r["cron_notice"]),
    )?;
    let runs = c
        .get("/admin/cron/runs?job=expire_orders", Some(ADMIN_TOKEN))
        .json();
    eq(
        runs["runs"].as_array().map(Vec::len),
        Some(1),
        "one run recorded",
    )?;

    // the overview's numbers equal the API's
    let stats = c.get("/admin/stats", Some(ADMIN_TOKEN)).json();
    let audit = c.get("/admin/audit", Some(ADMIN_TOKEN)).json();
    let want = api_numbers(&stats, &audit);
    let shown: BTreeMap<String, i64> = serde_json::from_value(r["stats_final"].clone())
        .map_err(|e| format!("the page's numbers: {e}"))?;
    eq(
        &shown,
        &want,
        "overview numbers = GET /admin/stats and GET /admin/audit",
    )?;
    stats_match_the_lists(&c, &stats)?;
    eq(
        shown.get("tasks.completed").copied(),
        Some(3),
        "three completed",
    )?;
    eq(shown.get("tasks.failed").copied(), Some(1), "one failed")?;
    eq(
        shown.get("dl.parse_error.discarded").copied(),
        Some(3),
        "three discarded",
    )?;
    let non_errors: Vec<&Value> = r["console"]
        .as_array()
        .map(|l| {
            l.iter()
                .filter(|l| l.as_str().is_some_and(|l| l.starts_with("pageerror")))
                .collect()
        })
        .unwrap_or_default();
    ensure(
        non_errors.is_empty(),
        format!("no script errors: {non_errors:?}"),
    )?;

    println!("console page load times on the local stack (ms, from navigation to the page's data shown):");
    for (k, v) in r["load_ms"].as_object().cloned().unwrap_or_default() {
        println!("  {k:24} {v:>6} (in-page render {})", r["page_ms"][&k]);
    }
    println!(
        "browser run: {browser_ms} ms ({} steps); screenshots in {}",
        r["steps"].as_array().map_or(0, Vec::len),
        shots.display()
    );
    Ok(())
}

/// The console lists the scheduled jobs by expression as `shared::schedule` does.
fn the_console_knows_the_schedule(_: &Stack) -> Result<(), Failed> {
    let js = std::fs::read_to_string(root().join("api-worker/assets/admin/console/console.js"))
        .map_err(|e| e.to_string())?;
    for (cron, _, jobs) in shared::schedule::SCHEDULES {
        let quoted: Vec<String> = jobs.iter().map(|j| format!("'{j}'")).collect();
        let line = format!("['{cron}', [{}]]", quoted.join(", "));
        ensure(js.contains(&line), format!("console.js lists {line}"))?;
    }
    Ok(())
}

/// The files are served as static assets with their types and headers, without a token.
fn the_console_is_served(stack: &Stack) -> Result<(), Failed> {
    let c = stack.client();
    for (path, ct) in [
        ("/admin/console/", "text/html"),
        ("/admin/console/console.js", "javascript"),
        ("/admin/console/console.css", "text/css"),
    ] {
        let r = c.get(path, None);
        eq(r.status, 200, path)?;
        ensure(
            r.header("content-type").is_some_and(|t| t.contains(ct)),
            format!("{path}: {:?}", r.header("content-type")),
        )?;
        ensure(
            r.header("content-security-policy")
                .is_some_and(|p| p.contains("default-src 'self'")),
            format!("{path} has a CSP: {:?}", r.headers),
        )?;
    }
    let r = c.get("/admin/console", None);
    ensure(
        r.status == 200 || (300..400).contains(&r.status),
        format!("/admin/console answers: {}", r.status),
    )?;
    // the data stays behind the token
    eq(
        c.get("/admin/stats", None).status,
        401,
        "no token, no numbers",
    )?;
    Ok(())
}

fn main() {
    let wall = Instant::now();
    let args = libtest_mimic::Arguments::from_args();
    let mut options = StackOptions::default();
    for (k, v) in [
        ("MAX_TRANSIENT_ATTEMPTS", "3"),
        ("TASK_DEADLINE_SECS", "600"),
    ] {
        options.vars.insert(k.into(), v.into());
    }
    let stack = e2e::suite::start(options);
    let trials = e2e::suite::trials(
        &stack,
        e2e::cases![
            the_console_is_served,
            the_console_knows_the_schedule,
            the_console_as_an_operator
        ],
    );
    let conclusion = libtest_mimic::run(&args, trials);
    if conclusion.has_failed() {
        stack.post_mortem(120);
    }
    drop(stack);
    println!(
        "console suite wall time: {:.1} s",
        wall.elapsed().as_secs_f64()
    );
    conclusion.exit()
}
