//! The consumer's writes to D1 and KV. Every change of a task is a conditional UPDATE of one of
//! `shared::task`'s transitions, built there; the ledger rows ride in the same batch
//! (`shared::ledger`).

use crate::batch::Ctx;
use crate::group::Ticket;
use shared::edge::{cache_final_status, now, rows, CachedStatus, IoError};
use shared::ids::TaskId;
use shared::keys::task_status_key;
use shared::ledger::{self, classify_conflict, SettleConflict};
use shared::retry::Failure;
use shared::sql::Stmt;
use shared::task::{self, Claimed, TaskStatus};

/// A failed D1, KV or R2 call: transient, the step is retried.
pub fn storage(e: IoError) -> Failure {
    Failure::transient("storage", e.to_string())
}

/// `pending -> submitted`, returning the task; `None` if another delivery got there first. The
/// claim counts a create call that may reach the provider (`provider_submissions`). With a
/// ticket, it goes to D1 with the batch's other claims.
pub async fn claim(
    ctx: &Ctx,
    task: &TaskId,
    grouped: Option<Ticket>,
) -> Result<Option<Claimed>, IoError> {
    let stmt = task::claim(task, now());
    match grouped {
        Some(ticket) => Ok(rows::<Claimed>(&ticket.run(stmt, &ctx.io).await?)?
            .into_iter()
            .next()),
        None => ctx.db.first("claim task", &stmt).await,
    }
}

/// `submitted -> pending`: the provider answered that it did not take the task; let the retry
/// claim it again. That create call is no longer counted.
pub async fn unclaim(ctx: &Ctx, task: &TaskId) -> Result<(), IoError> {
    ctx.db
        .run("unclaim task", &task::unclaim(task, now()))
        .await
        .map(|_| ())
}

/// `submitted -> processing` with the provider's task id, written as soon as the provider
/// returns it: from here on recovery polls this id and never creates the task again.
/// With a ticket, it goes to D1 with the batch's other accepts.
pub async fn accept(
    ctx: &Ctx,
    task: &TaskId,
    external_id: &str,
    grouped: Option<Ticket>,
) -> Result<(), IoError> {
    let stmt = task::accept(task, external_id, now());
    match grouped {
        Some(ticket) => ticket.run(stmt, &ctx.io).await.map(|_| ()),
        None => ctx.db.run("accept task", &stmt).await.map(|_| ()),
    }
}

/// Tells D1 a poll chain is alive for this task (its lease): the reconciler leaves tasks with a
/// live chain alone. Not a state change; one write per half lease, not per poll.
pub async fn renew_lease(ctx: &Ctx, task: &TaskId) -> Result<(), IoError> {
    ctx.db
        .run("renew task lease", &task::renew_lease(task, now()))
        .await
        .map(|_| ())
}

/// Marks the task completed with its results and settles its hold, in one batch. Returns
/// whether this call did it (false: it was already ended, by a duplicate or another path).
pub async fn complete(
    ctx: &Ctx,
    task: &TaskId,
    external_id: &str,
    urls: &[String],
    keys: &[String],
) -> Result<bool, Failure> {
    let at = now();
    let mut stmts = vec![task::succeed(task, external_id, urls, keys, at)];
    stmts.extend(ledger::settle(task, at));
    finish(ctx, task, stmts, TaskStatus::Completed, None, keys).await
}

/// Marks the task failed and releases its hold, in one batch. Returns whether this call did it.
pub async fn fail(ctx: &Ctx, task: &TaskId, reason: &str) -> Result<bool, Failure> {
    end_failed(ctx, task, ledger::fail_task(task, reason, now()), reason).await
}

/// [`fail`] on the provider's answer about task `external_id`: it fails nothing if D1 knows the
/// task under another id (`ledger::fail_on_answer`).
pub async fn fail_on_answer(
    ctx: &Ctx,
    task: &TaskId,
    external_id: &str,
    reason: &str,
) -> Result<bool, Failure> {
    let stmts = ledger::fail_on_answer(task, external_id, reason, now());
    end_failed(ctx, task, stmts, reason).await
}

async fn end_failed(
    ctx: &Ctx,
    task: &TaskId,
    stmts: [Stmt; 2],
    reason: &str,
) -> Result<bool, Failure> {
    let reason = reason.chars().take(500).collect();
    finish(
        ctx,
        task,
        stmts.to_vec(),
        TaskStatus::Failed,
        Some(reason),
        &[],
    )
    .await
}

async fn finish(
    ctx: &Ctx,
    task: &TaskId,
    stmts: Vec<Stmt>,
    status: TaskStatus,
    reason: Option<String>,
    keys: &[String],
) -> Result<bool, Failure> {
    let owner = match ctx.db.batch(&format!("end task as {status}"), &stmts).await {
        // the transition's RETURNING row: present only when this call moved the task
        Ok(results) => match results.first().map(shared::edge::rows::<ledger::TaskOwner>) {
            Some(Ok(rows)) => rows.into_iter().next(),
            _ => None,
        },
        Err(e) => match classify_conflict(&e.cause) {
            Some(SettleConflict::AlreadyResolved) => None,
            Some(SettleConflict::GrantRaced) => {
                return Err(Failure::transient("grant_raced", e.to_string()))
            }
            None => return Err(storage(e)),
        },
    };
    let Some(owner) = owner else {
        return Ok(false);
    };
    // Only the delivery that ended the task writes the cache: one KV write per task. The owner
    // comes from the row, never from the message.
    let cached = CachedStatus {
        user_id: owner.user_id,
        status: status.as_str().into(),
        failure_reason: reason,
        result_keys: keys.to_vec(),
        completed_at: now(),
    };
    cache_final_status(&ctx.env, &ctx.io, task, &cached).await;
    crate::ended::remember(task);
    Ok(true)
}

/// Whether the task is known to have ended (a duplicate or late poll can stop early): this
/// isolate's memory first (`ended`), then KV, whose answer is remembered.
pub async fn known_ended(ctx: &Ctx, task: &TaskId) -> bool {
    if crate::ended::knows(task) {
        return true;
    }
    let in_kv = match ctx.kv() {
        Ok(kv) => kv
            .get(&task_status_key(task))
            .text()
            .await
            .ok()
            .flatten()
            .is_some(),
        Err(_) => false,
    };
    if in_kv {
        crate::ended::remember(task);
    }
    in_kv
}
