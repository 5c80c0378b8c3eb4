//! The consumer's writes to D1 and KV. Every change of a task is a conditional UPDATE from
//! `shared::task`'s transitions; the ledger rows ride in the same batch (`shared::ledger`).

use crate::batch::Ctx;
use serde::Deserialize;
use shared::edge::{cache_final_status, changes, now, CachedStatus, IoError};
use shared::ids::{Credits, TaskId, UserId};
use shared::keys::task_status_key;
use shared::ledger::{self, classify_conflict, SettleConflict, Stmt};
use shared::retry::Failure;
use shared::task::{TaskStatus, Transition};

/// What a claim returns: the task as the submit step needs it.
#[derive(Debug, Deserialize)]
pub struct Claimed {
    pub user_id: String,
    pub input_params: String,
    pub cost: i64,
    pub deadline_at: Option<i64>,
}

/// Who pays for a task and how much: enough to end it.
pub struct Ending {
    pub task: TaskId,
    pub user: UserId,
    pub cost: Credits,
}

pub fn storage(e: IoError) -> Failure {
    Failure::transient("storage", e.to_string())
}

/// `pending -> submitted`, returning the task; `None` if another delivery got there first.
pub async fn claim(ctx: &Ctx, task: &TaskId) -> Result<Option<Claimed>, IoError> {
    ctx.db
        .first(
            "claim task",
            &Stmt::new(
                format!(
                    "{} RETURNING user_id, input_params, cost, deadline_at",
                    Transition::Claim.update_sql("updated_at = ?2")
                ),
                vec![task.to_string().into(), now().into()],
            ),
        )
        .await
}

/// `submitted -> pending`: the provider did not take the task; let the retry claim it again.
pub async fn unclaim(ctx: &Ctx, task: &TaskId) -> Result<(), IoError> {
    ctx.db
        .run(
            "unclaim task",
            &Stmt::new(
                format!(
                    "{} AND external_task_id IS NULL",
                    Transition::Unclaim.update_sql("updated_at = ?2")
                ),
                vec![task.to_string().into(), now().into()],
            ),
        )
        .await
        .map(|_| ())
}

/// `submitted -> processing` with the provider's task id, once the provider reports the task as
/// generating. A task that finishes before its first poll skips this write: completing it
/// records the id.
pub async fn accept(ctx: &Ctx, task: &TaskId, external_id: &str) -> Result<(), IoError> {
    let at = now();
    ctx.db
        .run(
            "accept task",
            &Stmt::new(
                Transition::Accepted
                    .update_sql("external_task_id = ?2, submitted_at = ?3, updated_at = ?3"),
                vec![task.to_string().into(), external_id.into(), at.into()],
            ),
        )
        .await
        .map(|_| ())
}

/// Marks the task completed with its results and settles its hold, in one batch. Returns
/// whether this call did it (false: it was already ended, by a duplicate or another path).
pub async fn complete(
    ctx: &Ctx,
    end: &Ending,
    external_id: &str,
    urls: &[String],
    keys: &[String],
) -> Result<bool, Failure> {
    let at = now();
    let mut stmts = vec![Stmt::new(
        Transition::Succeeded.update_sql(
            "result_urls = ?2, result_keys = ?3, external_task_id = COALESCE(external_task_id, ?4),
             completed_at = ?5, updated_at = ?5, submitted_at = COALESCE(submitted_at, ?5)",
        ),
        vec![
            end.task.to_string().into(),
            serde_json::to_string(urls).unwrap_or_default().into(),
            serde_json::to_string(keys).unwrap_or_default().into(),
            external_id.into(),
            at.into(),
        ],
    )];
    stmts.extend(ledger::settle(&end.task, &end.user, end.cost, at));
    finish(ctx, end, stmts, TaskStatus::Completed, None, keys).await
}

/// Marks the task failed and releases its hold, in one batch. Returns whether this call did it.
pub async fn fail(ctx: &Ctx, end: &Ending, reason: &str) -> Result<bool, Failure> {
    let stmts = ledger::fail_task(&end.task, &end.user, end.cost, reason, now());
    finish(
        ctx,
        end,
        stmts.to_vec(),
        TaskStatus::Failed,
        Some(reason.chars().take(500).collect()),
        &[],
    )
    .await
}

async fn finish(
    ctx: &Ctx,
    end: &Ending,
    stmts: Vec<Stmt>,
    status: TaskStatus,
    reason: Option<String>,
    keys: &[String],
) -> Result<bool, Failure> {
    let won = match ctx.db.batch(&format!("end task as {status}"), &stmts).await {
        Ok(results) => results.first().map(changes) == Some(1),
        Err(e) => match classify_conflict(&e.cause) {
            Some(SettleConflict::AlreadyResolved) => false,
            Some(SettleConflict::GrantRaced) => {
                return Err(Failure::transient("grant_raced", e.to_string()))
            }
            None => return Err(storage(e)),
        },
    };
    if won {
        // Only the delivery that ended the task writes the cache: one KV write per task.
        let cached = CachedStatus {
            user_id: end.user.to_string(),
            status: status.as_str().into(),
            failure_reason: reason,
            result_keys: keys.to_vec(),
            completed_at: now(),
        };
        cache_final_status(&ctx.env, &ctx.io, &end.task, &cached).await;
    }
    Ok(won)
}

/// Whether KV already knows this task ended (a duplicate poll can stop early).
pub async fn known_ended(ctx: &Ctx, task: &TaskId) -> bool {
    match ctx.kv() {
        Ok(kv) => kv
            .get(&task_status_key(task))
            .text()
            .await
            .ok()
            .flatten()
            .is_some(),
        Err(_) => false,
    }
}
