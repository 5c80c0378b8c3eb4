//! Operators' routes for tasks: list them (`GET /admin/tasks?status=&older_than_secs=`), show
//! one with its ledger rows, their allocation and its stored objects, retry a failed one as a new
//! task (audited), and one task's timeline.
//!
//! The timeline, `GET /admin/tasks/{id}/timeline`: what happened to one task, in time order, from
//! what D1 keeps: its transitions (created, accepted by the provider with its id, ended), the
//! provider create calls counted by the claim (`provider_submissions`, at most 1), the
//! reconciler's re-sends, its ledger rows (hold, release, consumption), the dead letters of its
//! messages with their delivery attempts and what operators did to them, retries (`retry_of` both
//! ways) and every audited operator action on it. Dead letters are matched by the task id in
//! their stored body; bodies large enough to go to R2 are not searched.

use super::audit_log::audit;
use super::{CURSOR, CURSOR_PAGE};
use crate::auth;
use crate::batch::rows_at;
use crate::context::{reply, App};
use crate::error::{json, ApiError, ApiResult};
use crate::request::{page, query, task_id};
use crate::router::{Ctx, Routes};
use crate::tasks::{enqueue_submit, hold_and_insert, view, Created};
use serde_json::{json, Value};
use shared::admin_audit::{self, detail_as_json};
use shared::edge::{now, StepExt};
use shared::ids::{IdempotencyKey, TaskId, UserId};
use shared::submit::TaskInput;
use shared::task::TaskStatus;
use shared::task_rows::{self, OperatorTaskRow};
use shared::{dead_letters, ledger};
use worker::Request;

pub fn routes(r: Routes) -> Routes {
    r.get_async("/admin/tasks", |req, ctx| async move {
        reply(list(req, &ctx.data).await)
    })
    .get_async("/admin/tasks/:id", |req, ctx| async move {
        reply(show(req, &ctx).await)
    })
    .post_async("/admin/tasks/:id/retry", |req, ctx| async move {
        reply(retry(req, &ctx).await)
    })
    .get_async("/admin/tasks/:id/timeline", |req, ctx| async move {
        reply(timeline(req, &ctx).await)
    })
}

fn admin_view(app: &App, row: &OperatorTaskRow) -> Value {
    let mut v = view(&row.task, app);
    v["user_id"] = json!(row.user_id);
    v["external_task_id"] = json!(row.external_task_id);
    v["retry_of"] = json!(row.retry_of);
    v
}

/// `GET /admin/tasks?status=&older_than_secs=&limit=&cursor=`: oldest problems first is a
/// filter away; the list is newest first like the users' own.
async fn list(req: Request, app: &App) -> ApiResult {
    auth::operator(&req, app).await?;
    let status = query(&req, "status");
    if status
        .as_deref()
        .is_some_and(|s| TaskStatus::parse(s).is_none())
    {
        return Err(ApiError::bad_request(
            "invalid_status",
            "status must be pending, submitted, processing, completed or failed",
        ));
    }
    let older_than = match query(&req, "older_than_secs") {
        None => 0,
        Some(v) => v.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_filter",
                "older_than_secs must be a non-negative integer",
            )
        })?,
    };
    let page = page(&req, &CURSOR_PAGE)?;
    let rows: Vec<OperatorTaskRow> = app
        .db
        .all(
            "admin list tasks",
            &task_rows::list_for_operators(status, now() - older_than, &page),
        )
        .await?;
    let (rows, next) = page.split(rows, |r| CURSOR.encode(r.task.created_at, &r.task.id));
    let items: Vec<Value> = rows.iter().map(|r| admin_view(app, r)).collect();
    json(&json!({"tasks": items, "next_cursor": next}), 200)
}

async fn load_task(app: &App, task: &TaskId) -> Result<OperatorTaskRow, ApiError> {
    app.db
        .first("admin task", &task_rows::for_operators(task))
        .await?
        .ok_or(ApiError::NotFound("task"))
}

/// `GET /admin/tasks/:id`: the task with its ledger rows, their allocation and its stored objects.
async fn show(req: Request, ctx: &Ctx) -> ApiResult {
    let app = &ctx.data;
    auth::operator(&req, app).await?;
    let task = task_id(ctx)?;
    let row = load_task(app, &task).await?;
    let id = task.to_string();
    let ledger = app
        .db
        .batch(
            "task ledger",
            &[ledger::task_entries(&task), ledger::task_allocation(&task)],
        )
        .await?;
    let records: Vec<Value> = rows_at(&ledger, 0)?;
    let consumptions: Vec<Value> = rows_at(&ledger, 1)?;
    let model = row.task.external_provider.clone().unwrap_or_default();
    app.io.r2();
    let listed = app
        .bucket()?
        .list()
        .prefix(format!("result/{model}/{id}/"))
        .execute()
        .await
        .step("r2 list task results")?;
    let objects: Vec<Value> = listed
        .objects()
        .iter()
        .map(|o| json!({"key": o.key(), "size": o.size()}))
        .collect();
    let mut view = admin_view(app, &row);
    view["ledger"] = json!(records);
    view["consumptions"] = json!(consumptions);
    view["objects"] = json!(objects);
    json(&view, 200)
}

/// `POST /admin/tasks/:id/retry`: a failed task runs again as a new task (linked by
/// `retry_of`) with a new hold; retrying the same task twice returns the same new task.
async fn retry(req: Request, ctx: &Ctx) -> ApiResult {
    let app = &ctx.data;
    let actor = auth::operator(&req, app).await?.actor()?;
    let task = task_id(ctx)?;
    let row = load_task(app, &task).await?;
    if row.task.status != TaskStatus::Failed.as_str() {
        return Err(ApiError::Conflict {
            code: "task_not_failed",
            message: format!(
                "only failed tasks are retried; this one is {}",
                row.task.status
            ),
        });
    }
    let input: TaskInput =
        serde_json::from_str(&row.task.input_params).map_err(|e| ApiError::Unprocessable {
            code: "unreadable_task",
            message: format!("stored input does not parse: {e}"),
        })?;
    let user = UserId::parse(&row.user_id).map_err(|e| ApiError::Unprocessable {
        code: "unreadable_task",
        message: e.to_string(),
    })?;
    let key = IdempotencyKey::parse(&format!("retry:{task}"))
        .map_err(|e| ApiError::bad_request("invalid_id", e.to_string()))?;
    let (new_row, created) =
        match hold_and_insert(app, &user, &input, Some(&key), Some(&task)).await? {
            Created::New(r) => (r, true),
            Created::Replayed(r) => (r, false),
        };
    if created {
        if let Ok(new_id) = TaskId::parse(&new_row.id) {
            enqueue_submit(app, &new_id).await;
        }
        app.db
            .run(
                "audit retry",
                &audit(
                    &actor,
                    "task.retry",
                    &task.to_string(),
                    &json!({"new_task": new_row.id}),
                ),
            )
            .await?;
    }
    json(
        &json!({"retry_of": task.to_string(), "created": created, "task": view(&new_row, app)}),
        if created { 202 } else { 200 },
    )
}

/// Dead letters and audit rows shown per task (a task has a handful at most).
const MAX_ROWS: i64 = 100;

fn event(at: Option<i64>, kind: &str, text: String, detail: Value) -> Option<Value> {
    at.map(|at| json!({"at": at, "kind": kind, "text": text, "detail": detail}))
}

/// `GET /admin/tasks/{id}/timeline` (see the module's header).
async fn timeline(req: Request, ctx: &Ctx) -> ApiResult {
    let app = &ctx.data;
    auth::operator(&req, app).await?;
    let task = task_id(ctx)?;
    let id = task.to_string();
    let results = app
        .db
        .batch(
            "task timeline",
            &[
                task_rows::timeline(&task),
                ledger::task_entries(&task),
                dead_letters::of_task(&task, MAX_ROWS),
                task_rows::retries_of(&task),
                admin_audit::of_task(&task, MAX_ROWS),
            ],
        )
        .await?;
    let table = |i: usize| rows_at::<Value>(&results, i);
    let t = table(0)?
        .into_iter()
        .next()
        .ok_or(ApiError::NotFound("task"))?;
    let int = |v: &Value, k: &str| v[k].as_i64();
    let mut events: Vec<Value> = Vec::new();
    events.extend(event(
        int(&t, "created_at"),
        "created",
        format!("created, {} credits held", t["cost"].as_i64().unwrap_or(0)),
        json!({"retry_of": t["retry_of"]}),
    ));
    events.extend(event(
        int(&t, "submitted_at"),
        "accepted",
        format!(
            "accepted by {} as {}",
            t["external_provider"].as_str().unwrap_or("the provider"),
            t["external_task_id"].as_str().unwrap_or("(no id yet)")
        ),
        json!({"external_task_id": t["external_task_id"], "provider_submissions": t["provider_submissions"]}),
    ));
    events.extend(event(
        int(&t, "reconciled_at"),
        "reconciled",
        "the reconciler re-sent its step (no sign of life for a lease)".into(),
        json!({}),
    ));
    for r in table(1)? {
        events.extend(event(
            int(&r, "created_at"),
            "ledger",
            format!(
                "ledger {} {}",
                r["type"].as_str().unwrap_or_default(),
                r["amount"].as_i64().unwrap_or(0)
            ),
            r.clone(),
        ));
    }
    let dead_letters = table(2)?;
    for d in &dead_letters {
        events.extend(event(
            int(d, "last_failed_at"),
            "dead_letter",
            format!(
                "{} dead-lettered after {} attempts: {} {}",
                d["message_type"].as_str().unwrap_or("message"),
                d["attempts"].as_i64().unwrap_or(0),
                d["error_class"].as_str().unwrap_or_default(),
                d["error_text"].as_str().unwrap_or_default()
            ),
            d.clone(),
        ));
    }
    for r in table(3)? {
        events.extend(event(
            int(&r, "created_at"),
            "retried",
            format!(
                "retried as task {} ({})",
                r["id"].as_str().unwrap_or_default(),
                r["status"].as_str().unwrap_or_default()
            ),
            r.clone(),
        ));
    }
    for mut a in table(4)? {
        detail_as_json(&mut a);
        events.extend(event(
            int(&a, "created_at"),
            "operator",
            format!(
                "{} by {} on {}",
                a["action"].as_str().unwrap_or_default(),
                a["actor"].as_str().unwrap_or_default(),
                a["target"].as_str().unwrap_or_default()
            ),
            a.clone(),
        ));
    }
    let ended = match t["status"].as_str() {
        Some("completed") => Some("completed".to_owned()),
        Some("failed") => Some(format!(
            "failed: {}",
            t["failure_reason"].as_str().unwrap_or("no reason recorded")
        )),
        _ => None,
    };
    if let Some(text) = ended {
        events.extend(event(int(&t, "completed_at"), "ended", text, json!({})));
    }
    events.sort_by_key(|e| e["at"].as_i64().unwrap_or(0));
    let attempts: i64 = dead_letters
        .iter()
        .filter_map(|d| d["attempts"].as_i64())
        .sum();
    json(
        &json!({
            "task_id": id,
            "status": t["status"],
            "external_task_id": t["external_task_id"],
            "provider_submissions": t["provider_submissions"],
            "deadline_at": t["deadline_at"],
            "dead_letter_attempts": attempts,
            "dead_letters": dead_letters,
            "events": events,
        }),
        200,
    )
}
