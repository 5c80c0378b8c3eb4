//! The cron worker's jobs end to end, on state seeded before the stack starts (10,000 orders,
//! 3,000 cached objects of two ages and 100 results, stuck tasks, old records), run the way an
//! operator runs them (`POST /admin/cron/{job}` and the CLI, over the service binding to the cron
//! worker; `/__scheduled` of a multi-worker `wrangler dev` only reaches the first worker). Every
//! run here is bounded to 1,500 items so jobs stop early and continue on the next run.

use e2e::check::{ensure, eq};
use e2e::client::Client;
use e2e::creem;
use e2e::stack::{Seed, Stack, StackOptions, ADMIN_TOKEN, CREEM_WEBHOOK_SECRET, JWT_SECRET};
use libtest_mimic::Failed;
use serde_json::{json, Value};
use std::time::Duration;

const ORDERS_USER: &str = "11111111-1111-4111-8111-111111111111";
const TASKS_USER: &str = "22222222-2222-4222-8222-222222222222";
const LOST: &str = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa";
const OVERDUE: &str = "bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb";
const DEAD: &str = "cccccccc-cccc-4ccc-8ccc-cccccccccccc";
/// Completed without its settlement: a violation the auditor must report.
const BROKEN: &str = "eeeeeeee-eeee-4eee-8eee-eeeeeeeeeeee";
/// Owns the broken task, so no other case's balance sees it.
const AUDIT_USER: &str = "33333333-3333-4333-8333-333333333333";
/// Claimed, but whether the provider took it is unknown (no provider id in D1).
const UNKNOWN: &str = "dddddddd-dddd-4ddd-8ddd-dddddddddddd";
const CACHE_MAX_AGE_SECS: u64 = 25;
const SESSION_USER: &str = "44444444-4444-4444-8444-444444444444";
const REVOKED_SESSION: &str = "0123456789abcdef0123456789abcdef";

fn seed(s: &Seed) -> Result<(), String> {
    let now = "CAST(strftime('%s','now') AS INTEGER)";
    let task = |id: &str, status: &str, deadline: &str, external: &str| {
        format!(
            "INSERT INTO ai_tasks (id, task_no, user_id, status, input_params, external_provider, external_task_id, cost, deadline_at, created_at, updated_at)
             VALUES ('{id}', 'T-{id}', '{TASKS_USER}', '{status}', '{{\"prompt\":\"reconcile {id}\",\"model\":\"kie_4o\",\"size\":\"1:1\",\"images\":[]}}',
                     'kie_4o', {external}, 2, {deadline}, {now} - 3600, {now} - 3600);
             INSERT INTO credit_records (id, user_id, amount, type, entity_type, entity_id, created_at)
             VALUES ('reserve:{id}', '{TASKS_USER}', -2, 'reserve', 'task', '{id}', {now} - 3600);"
        )
    };
    let sql = format!(
        "INSERT INTO users (id, email, name, credits, created_at, updated_at) VALUES
           ('{ORDERS_USER}', 'cron-orders@e2e.test', 'Orders', 0, 0, 0), ('{TASKS_USER}', 'cron-tasks@e2e.test', 'Tasks', 0, 0, 0),
           ('{AUDIT_USER}', 'cron-audit@e2e.test', 'Audit', 0, 0, 0);
         INSERT INTO orders (id, user_id, amount, currency, status, payment_provider, credits, product_id, created_at, updated_at)
           WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10000)
           SELECT 'ord_seed_' || i, '{ORDERS_USER}', 499, 'USD', CASE WHEN i <= 7000 THEN 'pending' ELSE 'completed' END,
                  'creem', 50, 'pack_starter', CASE WHEN i <= 4000 OR i > 7000 THEN {now} - 7200 ELSE {now} - 60 END, {now} - 60
           FROM n;
         UPDATE orders SET payment_id = 'ch_seed_late' WHERE id = 'ord_seed_1';
         INSERT INTO credit_records (id, user_id, amount, type, entity_type, entity_id, created_at)
           VALUES ('gift:seed', '{TASKS_USER}', 10, 'gift', 'signup', '{TASKS_USER}', 0);
         {}
         {}
         {}
         {}
         INSERT INTO dead_letters (id, source_queue, message_id, message_type, body, attempts, error_class, error_text, first_failed_at, last_failed_at)
           VALUES ('dl_seed_dead', 'edgeline-tasks', 'm-dead', 'task.submit', '{{\"v\":1,\"type\":\"task.submit\",\"task_id\":\"{DEAD}\",\"attempt\":3}}',
                   4, 'server_error', 'gave up', {now} - 100, {now} - 100);
         INSERT INTO subscriptions (id, user_id, plan_type, status, billing_cycle, third_party_subscription_id, expires_at, created_at, updated_at) VALUES
           ('sub_seed_1', '{TASKS_USER}', 'pro', 'active', 'monthly', 'tp_seed_1', {now} - 10, 0, 0),
           ('sub_seed_2', '{TASKS_USER}', 'basic', 'cancelled', 'monthly', 'tp_seed_2', {now} - 10, 0, 0),
           ('sub_seed_3', '{TASKS_USER}', 'premium', 'active', 'yearly', 'tp_seed_3', {now} + 86400, 0, 0);
         INSERT INTO webhook_events (id, provider, event_id, event_type, payload, status, received_at)
           WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 125)
           SELECT 'whe_seed_' || i, 'creem', 'evt_seed_' || i, 'checkout.completed', '{{}}', 'applied',
                  CASE WHEN i <= 120 THEN {now} - 100 * 86400 ELSE {now} - 60 END FROM n;
         INSERT INTO dead_letters (id, source_queue, message_id, message_type, body, attempts, first_failed_at, last_failed_at, status)
           WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 30)
           SELECT 'dl_old_' || i, 'edgeline-tasks', 'm-old-' || i, 'task.poll', '{{}}', 1, {now} - 40 * 86400, {now} - 40 * 86400, 'replayed' FROM n;
         INSERT INTO signin_logs (id, user_id, ip_address, created_at)
           WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 50)
           SELECT 'sl_' || i, '{ORDERS_USER}', '127.0.0.1', {now} - 200 * 86400 FROM n;
         INSERT INTO webhook_events (id, provider, event_id, event_type, payload, status, received_at) VALUES
           ('whe_stuck_1', 'creem', 'evt_stuck_1', 'dispute.created',
            '{{\"id\":\"evt_stuck_1\",\"eventType\":\"dispute.created\",\"created_at\":1700000000000,\"object\":{{\"object\":\"dispute\",\"id\":\"dp_stuck\"}}}}',
            'received', {now} - 7200);
         INSERT INTO ai_tasks (id, task_no, user_id, status, input_params, external_provider, external_task_id, cost, deadline_at, created_at, updated_at)
           VALUES ('{BROKEN}', 'T-{BROKEN}', '{AUDIT_USER}', 'completed', '{{}}', 'kie_4o', 'x', 2, {now}, {now}, {now});
         INSERT INTO credit_records (id, user_id, amount, type, entity_type, entity_id, created_at)
           VALUES ('reserve:{BROKEN}', '{AUDIT_USER}', -2, 'reserve', 'task', '{BROKEN}', {now});
         -- a ledger of 10,200 settled rows for the auditor to read (3,400 completed tasks)
         INSERT INTO ai_tasks (id, task_no, user_id, status, input_params, external_provider, external_task_id, cost, deadline_at, created_at, updated_at)
           WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3400)
           SELECT 'audit-task-' || i, 'T-audit-' || i, '{AUDIT_USER}', 'completed', '{{}}', 'kie_4o', 'x' || i, 2, {now}, {now}, {now} FROM n;
         INSERT INTO credit_records (id, user_id, amount, type, entity_type, entity_id, created_at)
           SELECT k.kind || ':' || t.id, '{AUDIT_USER}', CASE k.kind WHEN 'release' THEN 2 ELSE -2 END, k.kind, 'task', t.id, {now}
           FROM ai_tasks t, (SELECT 'reserve' AS kind UNION ALL SELECT 'release' UNION ALL SELECT 'consumption') k
           WHERE t.id LIKE 'audit-task-%';
         INSERT INTO cron_runs (id, job, schedule, started_at, finished_at)
           WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20)
           SELECT 'run_old_' || i, 'retention', '17 3 * * *', ({now} - 40 * 86400) * 1000, ({now} - 40 * 86400) * 1000 FROM n;",
        task(LOST, "pending", &format!("{now} + 600"), "NULL"),
        task(OVERDUE, "processing", &format!("{now} - 10"), "'stale-x'"),
        task(DEAD, "pending", &format!("{now} - 10"), "NULL"),
        task(UNKNOWN, "submitted", &format!("{now} + 600"), "NULL"),
    );
    s.d1(&sql)?;
    // a session revoked while its KV copy was being put back, whose delete KV refused: the copy
    // is still there, and the key is listed for `clear_kv_keys`
    s.d1(&format!(
        "INSERT INTO users (id, email, name, credits, created_at, updated_at)
           VALUES ('{SESSION_USER}', 'cron-session@e2e.test', 'Session', 0, 0, 0);
         INSERT INTO sessions (id, user_id, created_at, last_used_at, refreshed_at, expires_at, ttl_secs, revoked_at)
           VALUES ('{REVOKED_SESSION}', '{SESSION_USER}', {now} - 100, {now} - 100, {now} - 100, {now} + 86400, 86400, {now} - 50);
         INSERT INTO kv_deletes (key, since) VALUES ('session:{REVOKED_SESSION}', {now} - 50);"
    ))?;
    let at = e2e::now_secs();
    let copy = shared::session::CachedSession {
        user: SESSION_USER.into(),
        created_at: at - 100,
        refreshed_at: at - 100,
        expires_at: at + 86_400,
    };
    s.kv(
        &format!("session:{REVOKED_SESSION}"),
        &serde_json::to_string(&copy).map_err(|e| e.to_string())?,
    )?;
    let png = sim::result_png("cached", 0);
    let old: Vec<(String, Vec<u8>)> = (0..1500)
        .map(|i| (format!("cache/seed/old-{i}.png"), png.clone()))
        .collect();
    s.r2(&old, "image/png")?;
    // the old objects must be older than the cache age when the cleaner runs; the new ones not
    std::thread::sleep(Duration::from_secs(CACHE_MAX_AGE_SECS + 5));
    let mut new: Vec<(String, Vec<u8>)> = (0..1500)
        .map(|i| (format!("cache/seed/new-{i}.png"), png.clone()))
        .collect();
    new.extend((0..100).map(|i| (format!("result/kie_4o/seed-{i}/result_0.png"), png.clone())));
    s.r2(&new, "image/png")
}

fn run_job(c: &Client, job: &str) -> Result<Value, String> {
    c.run_cron_job(ADMIN_TOKEN, job)
}

/// Runs a job until a run finishes without stopping early; returns every run's summary.
fn run_to_completion(c: &Client, job: &str) -> Result<Vec<Value>, String> {
    let mut runs = Vec::new();
    for _ in 0..10 {
        let summary = run_job(c, job)?["summary"].clone();
        eq(
            summary["errors"].as_u64(),
            Some(0),
            &format!("{job} errors: {summary}"),
        )?;
        let done = summary["stopped_early"] == false;
        runs.push(summary);
        if done {
            return Ok(runs);
        }
    }
    Err(format!("{job} did not finish in 10 runs"))
}

fn total(runs: &[Value], field: &str) -> u64 {
    runs.iter().filter_map(|r| r[field].as_u64()).sum()
}

fn expire_orders_expires_exactly_the_stale_ones(stack: &Stack) -> Result<(), Failed> {
    let c = stack.client();
    let runs = run_to_completion(&c, "expire_orders")?;
    ensure(
        runs.len() >= 3 && runs[0]["stopped_early"] == true,
        format!("bounded runs: {runs:?}"),
    )?;
    eq(
        total(&runs, "changed"),
        4000,
        "exactly the stale pending orders",
    )?;
    let stats = c.get("/admin/orders/stats", Some(ADMIN_TOKEN)).json()["orders"].clone();
    eq(
        stats,
        json!({"expired": 4000, "pending": 3000, "completed": 3000}),
        "by status",
    )?;
    let again = run_job(&c, "expire_orders")?["summary"].clone();
    eq(
        again["changed"].as_u64(),
        Some(0),
        "a second run changes nothing",
    )?;

    // a payment for an order that expired still completes it
    let token = c.session(ADMIN_TOKEN, ORDERS_USER);
    let event = json!({"id": "evt_after_expiry", "eventType": "checkout.completed", "created_at": 1_800_000_000_000i64,
        "object": {"object": "checkout", "id": "ch_seed_late", "request_id": "ord_seed_1", "order": {"id": "or_late", "amount": 499, "currency": "USD"},
                   "product": {"id": "prod_pack_starter"}, "metadata": {"order_id": "ord_seed_1", "user_id": ORDERS_USER}}});
    eq(
        creem::deliver(&c, &event, CREEM_WEBHOOK_SECRET).status,
        200,
        "delivered",
    )?;
    let started = std::time::Instant::now();
    while c.get("/api/orders/ord_seed_1", Some(&token)).json()["status"] != "completed" {
        ensure(
            started.elapsed() < Duration::from_secs(20),
            "the expired order completed",
        )?;
        std::thread::sleep(Duration::from_millis(200));
    }
    eq(c.balance(&token), 50, "and granted its credits")?;
    Ok(())
}

fn clean_r2_cache_in_bounded_runs(stack: &Stack) -> Result<(), Failed> {
    let c = stack.client();
    let count = |prefix: &str| {
        c.get(
            &format!("/admin/storage?prefix={prefix}"),
            Some(ADMIN_TOKEN),
        )
        .json()["objects"]
            .as_u64()
    };
    eq(count("cache/"), Some(3000), "seeded cache")?;
    let runs = run_to_completion(&c, "clean_r2_cache")?;
    ensure(
        runs.len() >= 2 && runs[0]["stopped_early"] == true && runs[0]["cursor"].is_string(),
        format!("bounded runs with a cursor: {runs:?}"),
    )?;
    eq(
        total(&runs, "changed"),
        1500,
        "exactly the old cache objects",
    )?;
    eq(count("cache/"), Some(1500), "the new ones stay")?;
    eq(count("result/"), Some(100), "results are never touched")?;
    let recorded = c
        .get("/admin/cron/runs?job=clean_r2_cache", Some(ADMIN_TOKEN))
        .json();
    let ms: i64 = recorded["runs"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|r| Some(r["finished_at"].as_i64()? - r["started_at"].as_i64()?))
        .sum();
    println!(
        "clean_r2_cache: {} objects deleted in {} runs, {} ms ({:.0} deletions/s)",
        total(&runs, "changed"),
        runs.len(),
        ms,
        total(&runs, "changed") as f64 * 1000.0 / ms.max(1) as f64
    );
    Ok(())
}

fn reconcile_recovers_and_fails_stuck_tasks(stack: &Stack) -> Result<(), Failed> {
    let c = stack.client();
    let token = c.session(ADMIN_TOKEN, TASKS_USER);
    eq(c.balance(&token), 2, "four holds of 2 on a gift of 10")?;
    let first = run_job(&c, "reconcile_tasks")?["summary"].clone();
    eq(
        first["changed"].as_u64(),
        Some(3),
        &format!("two failed, one re-enqueued, the uncertain one left alone: {first}"),
    )?;
    let overdue = c.get(&format!("/api/tasks/{OVERDUE}"), Some(&token)).json();
    eq(
        overdue["failure_reason"].as_str(),
        Some("deadline_exceeded"),
        "past its deadline",
    )?;
    let dead = c.get(&format!("/api/tasks/{DEAD}"), Some(&token)).json();
    eq(
        dead["failure_reason"].as_str(),
        Some("dead_lettered"),
        "its message died",
    )?;
    let lost = c.wait_task(&token, LOST, Duration::from_secs(60));
    eq(
        lost["status"].as_str(),
        Some("completed"),
        "the task whose message was lost completed",
    )?;
    eq(
        c.balance(&token),
        6,
        "failed holds released, the completed task charged once, the uncertain one still held",
    )?;
    let again = run_job(&c, "reconcile_tasks")?["summary"].clone();
    eq(again["changed"].as_u64(), Some(0), "nothing left to do")?;
    // a task the provider may have taken is never created there again: it waits for the
    // provider's callback or its deadline
    let unknown = c.get(&format!("/api/tasks/{UNKNOWN}"), Some(&token)).json();
    eq(
        unknown["status"].as_str(),
        Some("submitted"),
        "left as it is",
    )?;
    eq(
        stack.provider_creates(&format!("reconcile {UNKNOWN}")),
        None,
        "not submitted again",
    )?;
    Ok(())
}

fn expire_subscriptions_and_retention(stack: &Stack) -> Result<(), Failed> {
    let c = stack.client();
    let (ok, out) = stack.cli(&["cron", "run", "expire_subscriptions"]);
    ensure(ok && out.contains("changed 2"), format!("cli run: {out}"))?;
    let (ok, out) = stack.cli(&["cron", "run", "expire_subscriptions"]);
    ensure(
        ok && out.contains("changed 0"),
        format!("second run: {out}"),
    )?;
    let token = c.session(ADMIN_TOKEN, TASKS_USER);
    eq(
        c.get("/api/subscription", Some(&token)).json()["subscription"]["plan"].as_str(),
        Some("premium"),
        "the live one is current",
    )?;

    let runs = run_to_completion(&c, "retention")?;
    eq(
        total(&runs, "changed"),
        120 + 30 + 50 + 20,
        "exactly the records past retention",
    )?;
    eq(
        run_job(&c, "retention")?["summary"]["changed"].as_u64(),
        Some(0),
        "a second run deletes nothing",
    )?;
    let events = c
        .get("/admin/webhook-events?limit=200", Some(ADMIN_TOKEN))
        .json();
    let seeded: Vec<&str> = events["webhook_events"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["id"].as_str())
                .filter(|i| i.starts_with("whe_seed_"))
                .collect()
        })
        .unwrap_or_default();
    eq(seeded.len(), 5, "recent events kept")?;
    let (ok, out) = stack.cli(&["cron", "runs", "--job", "retention"]);
    ensure(
        ok && out.contains("STOPPED EARLY") && out.contains("manual"),
        format!("cli runs: {out}"),
    )?;
    eq(
        c.post_json("/admin/cron/no_such_job", Some(ADMIN_TOKEN), &json!({}))
            .status,
        404,
        "unknown job",
    )?;
    Ok(())
}

/// An event whose message was lost is found and applied by the event reconciler; the auditor
/// reports a task that completed without its settlement, with its rows, through the route, the
/// CLI and the scheduled job.
fn stuck_events_are_requeued_and_the_auditor_reports_violations(
    stack: &Stack,
) -> Result<(), Failed> {
    let c = stack.client();
    let first = run_job(&c, "reconcile_events")?["summary"].clone();
    eq(
        first["changed"].as_u64(),
        Some(1),
        &format!("one stuck event re-queued: {first}"),
    )?;
    let applied = || {
        c.get(
            "/admin/webhook-events?status=applied&limit=200",
            Some(ADMIN_TOKEN),
        )
        .json()["webhook_events"]
            .as_array()
            .is_some_and(|a| a.iter().any(|e| e["event_id"] == "evt_stuck_1"))
    };
    let started = std::time::Instant::now();
    while !applied() {
        ensure(
            started.elapsed() < Duration::from_secs(30),
            "the stuck event is applied",
        )?;
        std::thread::sleep(Duration::from_millis(300));
    }
    let again = run_job(&c, "reconcile_events")?["summary"].clone();
    eq(
        again["changed"].as_u64(),
        Some(0),
        "nothing left to re-queue",
    )?;

    let report = c.get("/admin/audit", Some(ADMIN_TOKEN));
    eq(report.status, 200, &report.text())?;
    let report = report.json();
    eq(
        report["ok"].as_bool(),
        Some(false),
        "a violation is reported",
    )?;
    let found = report["violations"].as_array().cloned().unwrap_or_default();
    ensure(
        found
            .iter()
            .any(|v| v["check"] == "completed_tasks_settled" && v["subject"] == BROKEN),
        format!("the broken task, with its rows: {found:?}"),
    )?;
    ensure(
        !found.iter().any(|v| v["check"] == "no_event_stuck"),
        format!("no stuck event once reconciled: {found:?}"),
    )?;
    ensure(
        report["ledger_rows"].as_i64().is_some_and(|n| n > 10_000),
        "ledger rows counted",
    )?;
    let (ms, rows) = (
        report["ms"].as_f64().unwrap_or(0.0),
        report["ledger_rows"].as_f64().unwrap_or(1.0),
    );
    println!(
        "FIGURE auditor: {ms:.0} ms over {rows:.0} ledger rows ({:.1} ms per 10,000 ledger rows)",
        ms * 10_000.0 / rows
    );
    let (ok, out) = stack.cli(&["audit"]);
    ensure(
        !ok && out.contains(BROKEN),
        format!("the CLI fails and names it: {out}"),
    )?;
    let run = run_job(&c, "audit_ledger")?;
    ensure(
        run["summary"]["violations"]
            .as_u64()
            .is_some_and(|n| n >= 1),
        format!("the scheduled auditor records it: {run}"),
    )?;
    Ok(())
}

/// A key whose delete KV refused (a session revoked while its copy was being put back) is
/// deleted by `clear_kv_keys`: until then the stale copy lets the revoked session in; after it,
/// D1 is read and refuses it, and the key is off the list.
fn refused_kv_deletes_are_finished_by_the_job(stack: &Stack) -> Result<(), Failed> {
    let c = stack.client();
    let at = e2e::now_secs();
    let user = shared::ids::UserId::parse(SESSION_USER).map_err(|e| e.to_string())?;
    let token = shared::session::mint(
        JWT_SECRET.as_bytes(),
        "edgeline",
        &user,
        REVOKED_SESSION,
        at - 100,
        at + 86_400,
    )
    .map_err(|e| format!("{e:?}"))?;
    eq(
        c.get("/api/me", Some(&token)).status,
        200,
        "the stale copy still lets the revoked session in",
    )?;
    let run = run_job(&c, "clear_kv_keys")?["summary"].clone();
    eq(
        (
            run["examined"].as_u64(),
            run["changed"].as_u64(),
            run["errors"].as_u64(),
        ),
        (Some(1), Some(1), Some(0)),
        &format!("the listed key deleted: {run}"),
    )?;
    let refused = c.get("/api/me", Some(&token));
    eq(
        (refused.status, refused.code()),
        (401, "unauthorized".into()),
        "D1 refuses the revoked session once its copy is gone",
    )?;
    let again = run_job(&c, "clear_kv_keys")?["summary"].clone();
    eq(again["examined"].as_u64(), Some(0), "the list is empty")?;
    Ok(())
}

fn main() {
    let mut options = StackOptions::default();
    for (k, v) in [
        ("CRON_MAX_ITEMS", "1500".to_owned()),
        ("TASK_LEASE_SECS", "5".into()),
        ("CACHE_MAX_AGE_SECS", CACHE_MAX_AGE_SECS.to_string()),
    ] {
        options.vars.insert(k.into(), v);
    }
    options.seed = Some(seed.into());
    e2e::suite::run(
        options,
        |_| {},
        e2e::cases![
            expire_orders_expires_exactly_the_stale_ones,
            clean_r2_cache_in_bounded_runs,
            reconcile_recovers_and_fails_stuck_tasks,
            expire_subscriptions_and_retention,
            stuck_events_are_requeued_and_the_auditor_reports_violations,
            refused_kv_deletes_are_finished_by_the_job
        ],
    )
}
