//! The named jobs and the schedules that run them. Each job works in bounded chunks, stops at its
//! budget (time or items) with `stopped_early`, and leaves a cursor where a listing must resume.
//! What a job reads and writes in D1 is built by the domain module it belongs to (`payments`,
//! `task`, `webhook_events`, `dead_letters`, `retention`, `history`); here it is run in chunks,
//! against the budget, with its R2 and queue side.

use crate::runner::{Budget, Summary};
use shared::edge::{
    cache_final_status, changes, number, rows, send_json_batch, CachedStatus, Db, IoCounts,
    IoError, StepExt,
};
use shared::ids::TaskId;
use shared::messages::{EventMessage, TaskMessage};
use shared::model::Model;
use shared::sql::Stmt;
use shared::task::{self, recovery, LiveTask, Recovery, TaskStatus};
use shared::{dead_letters, history, kv_deletes, ledger, payments, retention, webhook_events};
use worker::Env;

pub struct JobCtx<'a> {
    pub env: &'a Env,
    pub db: &'a Db,
    pub io: &'a IoCounts,
    pub now: i64,
}

const CHUNK: u64 = 500;

fn setting(ctx: &JobCtx<'_>, name: &str, default: i64) -> i64 {
    number(ctx.env, name, default).unwrap_or(default)
}

pub async fn run(
    name: &str,
    ctx: &JobCtx<'_>,
    budget: Budget,
    cursor: Option<String>,
    summary: &mut Summary,
) {
    match name {
        "expire_orders" => {
            let cutoff = ctx.now - setting(ctx, "ORDER_TTL_SECS", 30 * 60);
            chunked_update(ctx, budget, summary, "expire orders", |n| {
                payments::expire_orders(ctx.now, cutoff, n)
            })
            .await;
        }
        "expire_subscriptions" => {
            chunked_update(ctx, budget, summary, "expire subscriptions", |n| {
                payments::expire_subscriptions(ctx.now, n)
            })
            .await;
        }
        "reconcile_tasks" => reconcile_tasks(ctx, budget, summary).await,
        "reconcile_events" => reconcile_events(ctx, budget, summary).await,
        "clear_kv_keys" => clear_kv_keys(ctx, summary).await,
        "audit_ledger" => crate::audit::audit_ledger(ctx, budget, summary).await,
        "clean_r2_cache" => clean_r2_cache(ctx, budget, cursor, summary).await,
        "retention" => retention(ctx, budget, summary).await,
        other => summary.error_text = Some(format!("no job named {other}")),
    }
}

/// Repeats a `LIMIT n` update until it changes fewer rows than asked, or the budget is spent.
async fn chunked_update(
    ctx: &JobCtx<'_>,
    budget: Budget,
    summary: &mut Summary,
    what: &str,
    stmt: impl Fn(i64) -> Stmt,
) {
    loop {
        let n = CHUNK.min(budget.room(summary.changed));
        if n == 0 || !budget.time_left() {
            summary.stopped_early = true;
            return;
        }
        match ctx.db.run(what, &stmt(i64::try_from(n).unwrap_or(0))).await {
            Ok(changed) => {
                let changed = u64::try_from(changed).unwrap_or(0);
                summary.examined += changed;
                summary.changed += changed;
                if changed < n {
                    return;
                }
            }
            Err(e) => return summary.failed(&e),
        }
    }
}

/// Tasks past their deadline fail (reason `dead_lettered` if their message died, else
/// `deadline_exceeded`) and their hold is released; tasks without a sign of life beyond the lease
/// get the step `shared::task::recovery` names, once per lease: `task.submit` for one never
/// claimed, a poll of the provider's id for one the provider has, nothing for one whose create
/// call's outcome is unknown (the provider's callback or the deadline ends it). Nothing here
/// writes a status by hand: failing is the `Fail` transition, and re-sent steps move the task
/// through the table like any other delivery.
async fn reconcile_tasks(ctx: &JobCtx<'_>, budget: Budget, summary: &mut Summary) {
    // 1. past the deadline
    while budget.time_left() && budget.room(summary.examined) > 0 {
        let n = 50.min(budget.room(summary.examined));
        let overdue: Vec<LiveTask> = match ctx
            .db
            .all(
                "overdue tasks",
                &task::overdue(ctx.now, i64::try_from(n).unwrap_or(0)),
            )
            .await
        {
            Ok(rows) => rows,
            Err(e) => return summary.failed(&e),
        };
        if overdue.is_empty() {
            break;
        }
        summary.examined += u64::try_from(overdue.len()).unwrap_or(0);
        let mut stmts = Vec::new();
        let mut ends = Vec::new();
        for t in &overdue {
            let Ok(task) = TaskId::parse(&t.id) else {
                continue;
            };
            let reason = t.failure_reason();
            stmts.extend(ledger::fail_task(&task, reason, ctx.now));
            ends.push((task, reason));
        }
        let results = match ctx.db.batch("fail overdue tasks", &stmts).await {
            Ok(r) => r,
            Err(e) => return summary.failed(&e),
        };
        for (i, (task, reason)) in ends.iter().enumerate() {
            // the transition returns the owner only when this run ended the task
            let owner = results
                .get(i * 2)
                .and_then(|r| rows::<ledger::TaskOwner>(r).ok())
                .and_then(|r| r.into_iter().next());
            if let Some(owner) = owner {
                summary.changed += 1;
                let cached = CachedStatus {
                    user_id: owner.user_id,
                    status: "failed".into(),
                    failure_reason: Some((*reason).into()),
                    result_keys: vec![],
                    completed_at: ctx.now,
                };
                cache_final_status(ctx.env, ctx.io, task, &cached).await;
            }
        }
        if overdue.len() < usize::try_from(n).unwrap_or(0) {
            break;
        }
    }
    if !budget.time_left() || budget.room(summary.examined) == 0 {
        summary.stopped_early = true;
        return;
    }

    // 2. no sign of life within the lease
    let lease = setting(ctx, "TASK_LEASE_SECS", 300);
    let stale_before = ctx.now - lease;
    let n = 100.min(budget.room(summary.examined));
    let stalled: Vec<LiveTask> = match ctx
        .db
        .all(
            "stalled tasks",
            &task::stalled(ctx.now, stale_before, i64::try_from(n).unwrap_or(0)),
        )
        .await
    {
        Ok(rows) => rows,
        Err(e) => return summary.failed(&e),
    };
    summary.examined += u64::try_from(stalled.len()).unwrap_or(0);
    if stalled.is_empty() {
        return;
    }
    // Mark each as seen for this lease first (not a state change), so two runs never both
    // re-send its step.
    let claims: Vec<Stmt> = stalled
        .iter()
        .map(|t| task::mark_reconciled(&t.id, ctx.now, stale_before))
        .collect();
    let results = match ctx.db.batch("claim stalled tasks", &claims).await {
        Ok(r) => r,
        Err(e) => return summary.failed(&e),
    };
    let mut bodies = Vec::new();
    for (t, r) in stalled.iter().zip(&results) {
        if changes(r) != 1 {
            continue;
        }
        let (Ok(task), Some(status)) = (TaskId::parse(&t.id), TaskStatus::parse(&t.status)) else {
            continue;
        };
        let model = t.external_provider.as_deref().and_then(Model::parse);
        let msg = match (
            recovery(status, t.external_task_id.is_some()),
            &t.external_task_id,
            model,
        ) {
            (Some(Recovery::Resubmit), _, _) => TaskMessage::submit(task),
            (Some(Recovery::ResumePolling), Some(external_id), Some(model)) => {
                TaskMessage::first_poll(
                    task,
                    model,
                    external_id.clone(),
                    t.deadline_at.unwrap_or(i64::MAX),
                    false,
                    ctx.now,
                )
            }
            _ => continue, // awaiting the provider's callback, or its deadline
        };
        bodies.push(serde_json::to_string(&msg).unwrap_or_default());
    }
    if bodies.is_empty() {
        return;
    }
    resend(ctx, "TASKS", &bodies, summary).await;
}

/// Sends what a reconciler claimed to the queue bound as `binding`, counting it as changed; a
/// failed send is recorded (the claims then wait out their lease before the next try).
async fn resend(ctx: &JobCtx<'_>, binding: &str, bodies: &[String], summary: &mut Summary) -> bool {
    let sent = match ctx.env.queue(binding).step(format!("binding {binding}")) {
        Ok(q) => send_json_batch(ctx.io, &q, bodies, 0).await,
        Err(e) => Err(e),
    };
    match sent {
        Ok(()) => {
            summary.changed += u64::try_from(bodies.len()).unwrap_or(0);
            true
        }
        Err(e) => {
            summary.failed(&e);
            false
        }
    }
}

/// Payment events still `received` after `EVENT_LEASE_SECS` (default 10 minutes) are queued
/// again, once per lease: their message was lost, dead-lettered while their subject was unknown,
/// or never sent because the consumer was misconfigured. Applying is idempotent, so a repeat
/// changes nothing.
async fn reconcile_events(ctx: &JobCtx<'_>, budget: Budget, summary: &mut Summary) {
    let stale_before = ctx.now - setting(ctx, "EVENT_LEASE_SECS", 600);
    while budget.time_left() && budget.room(summary.examined) > 0 {
        let n = 100.min(budget.room(summary.examined));
        let stuck: Vec<webhook_events::StuckEvent> = match ctx
            .db
            .all(
                "stuck events",
                &webhook_events::stuck(stale_before, i64::try_from(n).unwrap_or(0)),
            )
            .await
        {
            Ok(rows) => rows,
            Err(e) => return summary.failed(&e),
        };
        if stuck.is_empty() {
            return;
        }
        summary.examined += u64::try_from(stuck.len()).unwrap_or(0);
        let claims: Vec<Stmt> = stuck
            .iter()
            .map(|e| webhook_events::mark_reconciled(&e.id, ctx.now, stale_before))
            .collect();
        let results = match ctx.db.batch("claim stuck events", &claims).await {
            Ok(r) => r,
            Err(e) => return summary.failed(&e),
        };
        let bodies: Vec<String> = stuck
            .iter()
            .zip(&results)
            .filter(|(_, r)| changes(r) == 1)
            .map(|(e, _)| serde_json::to_string(&EventMessage::apply(&e.id)).unwrap_or_default())
            .collect();
        if !bodies.is_empty() && !resend(ctx, "EVENTS", &bodies, summary).await {
            return;
        }
        if stuck.len() < usize::try_from(n).unwrap_or(0) {
            return;
        }
    }
    summary.stopped_early = true;
}

/// Deletes the KV keys whose delete KV refused (`shared::kv_deletes`), at most
/// `kv_deletes::MAX_PER_RUN` per run, oldest first; each key leaves the list once KV deleted it.
async fn clear_kv_keys(ctx: &JobCtx<'_>, summary: &mut Summary) {
    let pending: Vec<kv_deletes::Pending> = match ctx
        .db
        .all(
            "kv keys to delete",
            &kv_deletes::due(kv_deletes::MAX_PER_RUN),
        )
        .await
    {
        Ok(rows) => rows,
        Err(e) => return summary.failed(&e),
    };
    if pending.is_empty() {
        return;
    }
    let kv = match ctx.env.kv("KV").step("binding KV") {
        Ok(kv) => kv,
        Err(e) => return summary.failed(&e),
    };
    summary.examined += u64::try_from(pending.len()).unwrap_or(0);
    let deletes = pending.iter().map(|p| {
        ctx.io.kv();
        kv.delete(&p.key)
    });
    let outcomes = futures::future::join_all(deletes).await;
    let mut marks = Vec::with_capacity(pending.len());
    for (p, outcome) in pending.iter().zip(outcomes) {
        match outcome.step(format!("kv delete {}", p.key)) {
            Ok(()) => {
                summary.changed += 1;
                marks.push(kv_deletes::done(&p.key));
            }
            Err(e) => {
                summary.failed(&e);
                marks.push(kv_deletes::refused(&p.key));
            }
        }
    }
    if let Err(e) = ctx.db.batch("kv deletes done", &marks).await {
        summary.failed(&e);
    }
}

/// Deletes objects under `cache/` older than `CACHE_MAX_AGE_SECS` (default 7 days), listing with
/// a cursor and deleting at most 1,000 keys per call. `result/` is never listed here.
async fn clean_r2_cache(
    ctx: &JobCtx<'_>,
    budget: Budget,
    mut cursor: Option<String>,
    summary: &mut Summary,
) {
    let max_age_ms = setting(ctx, "CACHE_MAX_AGE_SECS", 7 * 86_400).saturating_mul(1000);
    let cutoff_ms =
        u64::try_from(ctx.now.saturating_mul(1000).saturating_sub(max_age_ms)).unwrap_or(0);
    let bucket = match ctx.env.bucket("BUCKET").step("binding BUCKET") {
        Ok(b) => b,
        Err(e) => return summary.failed(&e),
    };
    loop {
        let room = budget.room(summary.examined).min(1000);
        if room == 0 || !budget.time_left() {
            summary.stopped_early = true;
            summary.cursor = cursor;
            return;
        }
        let mut list = bucket
            .list()
            .prefix("cache/")
            .limit(u32::try_from(room).unwrap_or(1000));
        if let Some(c) = &cursor {
            list = list.cursor(c.clone());
        }
        ctx.io.r2();
        let page = match list.execute().await.step("r2 list cache/") {
            Ok(p) => p,
            Err(e) => return summary.failed(&e),
        };
        let objects = page.objects();
        summary.examined += u64::try_from(objects.len()).unwrap_or(0);
        let old: Vec<String> = objects
            .iter()
            .filter(|o| o.uploaded().as_millis() < cutoff_ms)
            .map(|o| o.key())
            .collect();
        if !old.is_empty() {
            ctx.io.r2();
            let n = u64::try_from(old.len()).unwrap_or(0);
            match bucket
                .delete_multiple(old)
                .await
                .step("r2 delete old cache objects")
            {
                Ok(()) => summary.changed += n,
                Err(e) => return summary.failed(&e),
            }
        }
        if !page.truncated() {
            summary.cursor = None;
            return;
        }
        cursor = page.cursor();
    }
}

/// Deletes what is past its retention (`shared::retention::RULES`, in that order), in chunks:
/// webhook events that were handled, dead letters already replayed or discarded (with their
/// bodies in R2), sign-in logs, and old cron runs; then removes what is left in R2 of tasks
/// their users deleted (`purge_deleted_tasks`).
async fn retention(ctx: &JobCtx<'_>, budget: Budget, summary: &mut Summary) {
    for rule in retention::RULES {
        let days = setting(ctx, rule.setting, rule.default_days);
        let cutoff = retention::cutoff(ctx.now, days);
        if rule.table == retention::DEAD_LETTERS.table {
            expire_dead_letters(ctx, budget, summary, cutoff).await;
        } else {
            chunked_update(
                ctx,
                budget,
                summary,
                &format!("retention {}", rule.table),
                |n| retention::delete(&rule, cutoff, n),
            )
            .await;
        }
        if summary.stopped_early || summary.errors > 0 {
            return;
        }
    }
    purge_deleted_tasks(ctx, budget, summary).await;
}

/// Deletes R2 objects, at most 1,000 keys per call (R2's limit); `step` names the calls in an
/// error. Nothing to delete makes no call, not even for the binding.
async fn delete_objects(ctx: &JobCtx<'_>, keys: Vec<String>, step: &str) -> Result<(), IoError> {
    if keys.is_empty() {
        return Ok(());
    }
    let bucket = ctx.env.bucket("BUCKET").step("binding BUCKET")?;
    for chunk in keys.chunks(1000) {
        ctx.io.r2();
        bucket.delete_multiple(chunk.to_vec()).await.step(step)?;
    }
    Ok(())
}

/// Runs the write that follows a chunk's R2 deletes (deleting or marking its rows), counting
/// the rows it changed as examined and changed; `false` if it failed (recorded).
async fn run_counted(ctx: &JobCtx<'_>, what: &str, stmt: &Stmt, summary: &mut Summary) -> bool {
    match ctx.db.run(what, stmt).await {
        Ok(changed) => {
            let changed = u64::try_from(changed).unwrap_or(0);
            summary.examined += changed;
            summary.changed += changed;
            true
        }
        Err(e) => {
            summary.failed(&e);
            false
        }
    }
}

/// Dead letters past retention go with their bodies: a chunk's R2 bodies are deleted first, then
/// its rows (a failed R2 delete leaves the rows for the next run, so no body is ever orphaned).
async fn expire_dead_letters(ctx: &JobCtx<'_>, budget: Budget, summary: &mut Summary, cutoff: i64) {
    loop {
        let n = CHUNK.min(budget.room(summary.changed));
        if n == 0 || !budget.time_left() {
            summary.stopped_early = true;
            return;
        }
        let found: Vec<dead_letters::Expired> = match ctx
            .db
            .all(
                "expired dead letters",
                &dead_letters::expired(cutoff, i64::try_from(n).unwrap_or(0)),
            )
            .await
        {
            Ok(rows) => rows,
            Err(e) => return summary.failed(&e),
        };
        if found.is_empty() {
            return;
        }
        let bodies: Vec<String> = found.iter().filter_map(|d| d.body_r2_key.clone()).collect();
        if let Err(e) = delete_objects(ctx, bodies, "r2 delete dead letter bodies").await {
            return summary.failed(&e);
        }
        let delete = dead_letters::delete_expired(&found, cutoff);
        if !run_counted(ctx, "retention dead_letters", &delete, summary).await {
            return;
        }
        if found.len() < usize::try_from(n).unwrap_or(0) {
            return;
        }
    }
}

/// What a user's delete left in R2 (a failed R2 call during the request), removed: deleted tasks
/// not yet confirmed purged get their results and freed uploads deleted again (deleting a missing
/// key is a no-op), then are marked purged. Ledger rows and the task rows themselves stay.
async fn purge_deleted_tasks(ctx: &JobCtx<'_>, budget: Budget, summary: &mut Summary) {
    loop {
        let n = 100.min(budget.room(summary.changed));
        if n == 0 || !budget.time_left() {
            summary.stopped_early = true;
            return;
        }
        let found: Vec<history::DeletedTask> = match ctx
            .db
            .all(
                "deleted tasks to purge",
                &history::purge_candidates(i64::try_from(n).unwrap_or(0)),
            )
            .await
        {
            Ok(rows) => rows,
            Err(e) => return summary.failed(&e),
        };
        if found.is_empty() {
            return;
        }
        let keys = history::objects_to_remove(&found, &[]);
        if let Err(e) = delete_objects(ctx, keys, "r2 delete deleted tasks' objects").await {
            return summary.failed(&e);
        }
        let ids =
            serde_json::json!(found.iter().map(|d| d.id.as_str()).collect::<Vec<_>>()).to_string();
        let mark = history::mark_purged(&ids, ctx.now);
        if !run_counted(ctx, "mark deleted tasks purged", &mark, summary).await {
            return;
        }
        if found.len() < usize::try_from(n).unwrap_or(0) {
            return;
        }
    }
}
