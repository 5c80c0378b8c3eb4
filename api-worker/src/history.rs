//! A user's history: deleting tasks (one or many) and the sync feed of what changed since a
//! point, deletions included (see `shared::history` for the rules and their SQL). The feed is
//! served by `GET /api/tasks` (`tasks.rs`) when it is asked for.

use crate::auth;
use crate::batch::{result_at, rows_at};
use crate::context::{reply, App};
use crate::error::{json, ApiError, ApiResult};
use crate::request::{json_body, page, query, task_id};
use crate::router::{Ctx, Routes};
use serde::Deserialize;
use serde_json::json;
use shared::edge::{log, now, rows, StepExt};
use shared::history::{
    self, assemble, delete_tasks, objects_to_remove, outcome, DeleteOutcome, DeletedTask, SyncPos,
    TaskState, MAX_SYNC_PAGE,
};
use shared::ids::{TaskId, UserId};
use shared::keys::task_status_key;
use shared::page::PageRule;
use shared::task_rows::{self, TaskRow};
use shared::validation::FieldError;
use worker::Request;

pub fn routes(r: Routes) -> Routes {
    r.delete_async("/api/tasks/:id", |req, ctx| async move {
        reply(delete_one(&req, &ctx).await)
    })
    .post_async("/api/tasks/delete", |req, ctx| async move {
        reply(delete_many(req, &ctx).await)
    })
}

/// What a delete did.
struct Report {
    outcomes: Vec<(String, DeleteOutcome)>,
    shares_revoked: usize,
    objects_removed: usize,
    /// Some objects could not be removed now; the retention job removes them.
    objects_pending: bool,
}

#[derive(Deserialize)]
struct Id {
    id: String,
}

#[derive(Deserialize)]
struct Inputs {
    input_params: String,
}

/// Deletes the caller's ended tasks among `ids` in one D1 batch, then their R2 objects and
/// their KV entries (final statuses, share records). Ledger rows are never touched.
async fn delete(app: &App, user: &UserId, ids: &[String]) -> Result<Report, ApiError> {
    let ids_json = json!(ids).to_string();
    let results = app
        .db
        .batch("delete tasks", &delete_tasks(user, &ids_json, now()))
        .await?;
    let part = |i: usize| result_at(&results, i, "delete tasks");
    let deleted: Vec<DeletedTask> = rows(part(0)?)?;
    let revoked: Vec<Id> = rows(part(1)?)?;
    let states: Vec<TaskState> = rows(part(2)?)?;
    let kept: Vec<String> = rows::<Inputs>(part(3)?)?
        .into_iter()
        .map(|i| i.input_params)
        .collect();

    let keys = objects_to_remove(&deleted, &kept);
    let mut pending = false;
    let mut removed = 0;
    let bucket = if keys.is_empty() {
        None
    } else {
        match app.bucket() {
            Ok(b) => Some(b),
            Err(e) => {
                pending = true;
                log(
                    json!({"level": "warn", "event": "history.objects_pending", "cause": e.to_string(), "keys": keys.len()}),
                );
                None
            }
        }
    };
    if let Some(bucket) = bucket {
        for chunk in keys.chunks(1000) {
            app.io.r2();
            match bucket
                .delete_multiple(chunk.to_vec())
                .await
                .step("r2 delete deleted tasks' objects")
            {
                Ok(()) => removed += chunk.len(),
                Err(e) => {
                    // The tasks are deleted in D1 either way; the retention job purges the rest.
                    pending = true;
                    log(
                        json!({"level": "warn", "event": "history.objects_pending", "cause": e.to_string(), "keys": chunk.len()}),
                    );
                }
            }
        }
    }
    let revoked_ids: Vec<String> = revoked.into_iter().map(|r| r.id).collect();
    crate::shares::forget(app, &revoked_ids).await;
    forget_statuses(app, &deleted).await;
    log(
        json!({"event": "history.deleted", "user_id": user.to_string(), "tasks": deleted.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
        "shares_revoked": revoked_ids.len(), "objects": keys.len(), "objects_pending": pending}),
    );
    Ok(Report {
        outcomes: ids
            .iter()
            .map(|id| (id.clone(), outcome(id, &deleted, &states)))
            .collect(),
        shares_revoked: revoked_ids.len(),
        objects_removed: removed,
        objects_pending: pending,
    })
}

/// Deletes the final statuses the consumer cached for deleted tasks: lasting links read them.
async fn forget_statuses(app: &App, deleted: &[DeletedTask]) {
    let Ok(kv) = app.kv() else { return };
    let deletes = deleted.iter().filter_map(|d| TaskId::parse(&d.id).ok()).map(|t| {
        app.io.kv();
        let kv = &kv;
        async move {
            if let Err(e) = kv.delete(&task_status_key(&t)).await.step("kv delete status") {
                log(json!({"level": "warn", "event": "history.status_not_forgotten", "task_id": t.to_string(), "cause": e.to_string()}));
            }
        }
    });
    futures::future::join_all(deletes).await;
}

/// `DELETE /api/tasks/:id`: deletes one of the caller's ended tasks; a running one is a 409
/// (`task_running`) until it ends, so its hold is settled or released by the consumer as usual.
async fn delete_one(req: &Request, ctx: &Ctx) -> ApiResult {
    let app = &ctx.data;
    let user = auth::user(req, app).await?;
    let task = task_id(ctx)?;
    let id = task.to_string();
    let report = delete(app, &user, std::slice::from_ref(&id)).await?;
    match report.outcomes.first().map(|(_, o)| *o) {
        Some(DeleteOutcome::Deleted) => json(
            &json!({"id": id, "deleted": true, "shares_revoked": report.shares_revoked,
                    "objects_removed": report.objects_removed, "objects_pending": report.objects_pending}),
            200,
        ),
        Some(DeleteOutcome::Running) => Err(ApiError::Conflict {
            code: "task_running",
            message: "the task is still running; delete it once it has completed or failed".into(),
        }),
        _ => Err(ApiError::NotFound("task")),
    }
}

/// `POST /api/tasks/delete {ids: [...]}`: deletes up to 100 of the caller's ended tasks at once;
/// says which were deleted, which are still running, and which were not found.
async fn delete_many(mut req: Request, ctx: &Ctx) -> ApiResult {
    let app = &ctx.data;
    let user = auth::user(&req, app).await?;
    let body = json_body(&mut req, 64 * 1024).await?;
    let ids = history::parse_ids(&body)
        .map_err(|message| FieldError::new("ids", "invalid_value", message))?;
    let report = delete(app, &user, &ids).await?;
    let pick = |want: DeleteOutcome| {
        report
            .outcomes
            .iter()
            .filter(|(_, o)| *o == want)
            .map(|(id, _)| id.clone())
            .collect::<Vec<_>>()
    };
    json(
        &json!({
            "deleted": pick(DeleteOutcome::Deleted),
            "running": pick(DeleteOutcome::Running),
            "not_found": pick(DeleteOutcome::NotFound),
            "shares_revoked": report.shares_revoked,
            "objects_removed": report.objects_removed,
            "objects_pending": report.objects_pending,
        }),
        200,
    )
}

/// Whether `GET /api/tasks` asks for the sync feed (`updated_since`, or a sync cursor), and from
/// where.
pub fn sync_start(req: &Request) -> Result<Option<SyncPos>, ApiError> {
    let cursor = query(req, "cursor");
    if let Some(c) = cursor.as_deref().and_then(SyncPos::decode) {
        return Ok(Some(c));
    }
    match query(req, "updated_since") {
        None => Ok(None),
        Some(_) if cursor.is_some() => Err(ApiError::bad_request(
            "invalid_cursor",
            "with updated_since, cursor must be a next_cursor of the sync feed",
        )),
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|t| (0..=1 << 40).contains(t))
            .map(|t| Some(SyncPos::since(t)))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_updated_since",
                    "updated_since must be unix seconds (a non-negative integer)",
                )
            }),
    }
}

/// The sync feed's page size.
const SYNC_PAGE: PageRule = PageRule::new(100, MAX_SYNC_PAGE);

#[derive(Deserialize)]
struct SyncRow {
    #[serde(flatten)]
    task: TaskRow,
    deleted_at: Option<i64>,
}

/// `GET /api/tasks?updated_since=&cursor=&limit=`: the caller's tasks that changed since a time
/// (or a cursor), oldest change first; deleted ones as tombstones `{id, deleted, updated_at}`.
/// Follow `next_cursor` while `more`; keep the last `next_cursor` for the next sync.
pub async fn sync(req: &Request, app: &App, user: &UserId, from: SyncPos) -> ApiResult {
    // the position is `from` (`sync_start`), so the rule reads no cursor
    let limit = page(req, &SYNC_PAGE)?.limit;
    let at = now();
    let results = app
        .db
        .batch(
            "sync tasks",
            &history::sync_queries(task_rows::COLUMNS, user, &from, limit, at),
        )
        .await?;
    let settled: Vec<SyncRow> = rows_at(&results, 0)?;
    let recent: Vec<SyncRow> = rows_at(&results, 1)?;
    let (page, next, more) = assemble(
        &from,
        settled,
        recent,
        usize::try_from(limit).unwrap_or(100),
        at,
        |r| SyncPos {
            at: r.task.updated_at,
            id: r.task.id.clone(),
        },
    );
    let tasks: Vec<serde_json::Value> = page
        .iter()
        .map(|r| match r.deleted_at {
            Some(_) => json!({"id": r.task.id, "deleted": true, "updated_at": r.task.updated_at}),
            None => crate::tasks::view(&r.task, app),
        })
        .collect();
    json(
        &json!({"tasks": tasks, "next_cursor": next.encode(), "more": more}),
        200,
    )
}
