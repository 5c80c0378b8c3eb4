//! Operators' routes for what went wrong: dead letters (list, show, replay, discard), tasks
//! (list, inspect, retry) and sending messages to a queue by hand. Every change is written to
//! `admin_audit` with who did it.

use crate::app::{json, json_body, query, App, Ctx};
use crate::audit_log::{actor, audit};
use crate::auth;
use crate::error::{ApiError, ApiResult};
use crate::tasks::{enqueue_submit, hold_and_insert, Created, TaskRow, TASK_COLUMNS};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use shared::edge::{changes, now, send_json_batch, IoError, StepExt};
use shared::ids::{IdempotencyKey, TaskId, UserId};
use shared::messages::fresh_for_replay;
use shared::sql::{Param, Stmt};
use shared::submit::TaskInput;
use shared::task::TaskStatus;
use worker::{Queue, Request};

pub const MAX_PAGE: i64 = 200;
const MAX_BULK: i64 = 500;

pub fn limit_param(req: &Request, default: i64, max: i64) -> Result<i64, ApiError> {
    match query(req, "limit") {
        None => Ok(default),
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_limit",
                    format!("limit must be an integer from 1 to {max}"),
                )
            }),
    }
}

fn cursor_param(req: &Request) -> Result<Option<(i64, String)>, ApiError> {
    let Some(c) = query(req, "cursor") else {
        return Ok(None);
    };
    let bad = || ApiError::bad_request("invalid_cursor", "cursor is not one we issued");
    let raw =
        String::from_utf8(URL_SAFE_NO_PAD.decode(&c).map_err(|_| bad())?).map_err(|_| bad())?;
    let (at, id) = raw.split_once(':').ok_or_else(bad)?;
    Ok(Some((at.parse().map_err(|_| bad())?, id.to_owned())))
}

fn cursor(at: i64, id: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{at}:{id}"))
}

// ---------------------------------------------------------------------------------------------
// Dead letters
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Serialize, Deserialize)]
struct DeadLetter {
    id: String,
    source_queue: String,
    message_id: String,
    message_type: Option<String>,
    body: Option<String>,
    body_r2_key: Option<String>,
    attempts: i64,
    error_class: Option<String>,
    error_text: Option<String>,
    first_failed_at: i64,
    last_failed_at: i64,
    status: String,
    replayed_at: Option<i64>,
    replayed_by: Option<String>,
    replay_count: i64,
    discarded_at: Option<i64>,
    discarded_by: Option<String>,
}

impl DeadLetter {
    fn summary(&self) -> Value {
        json!({
            "id": self.id, "source_queue": self.source_queue, "message_id": self.message_id,
            "message_type": self.message_type, "attempts": self.attempts, "error_class": self.error_class,
            "error_text": self.error_text, "first_failed_at": self.first_failed_at, "last_failed_at": self.last_failed_at,
            "status": self.status, "replayed_at": self.replayed_at, "replayed_by": self.replayed_by,
            "replay_count": self.replay_count, "discarded_at": self.discarded_at, "discarded_by": self.discarded_by,
        })
    }
}

const DL_COLUMNS: &str = "id, source_queue, message_id, message_type, body, body_r2_key, attempts, error_class, error_text,
    first_failed_at, last_failed_at, status, replayed_at, replayed_by, replay_count, discarded_at, discarded_by";

/// Which dead letters an operation is about. Every field is optional; `status` defaults per
/// operation (anything for listing, `dead` for replay and discard).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Filter {
    queue: Option<String>,
    #[serde(rename = "type")]
    message_type: Option<String>,
    error_class: Option<String>,
    status: Option<String>,
    since: Option<i64>,
    until: Option<i64>,
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    force: bool,
}

impl Filter {
    fn from_query(req: &Request) -> Result<Self, ApiError> {
        let num = |name: &str| -> Result<Option<i64>, ApiError> {
            query(req, name)
                .map(|v| {
                    v.parse::<i64>().map_err(|_| {
                        ApiError::bad_request(
                            "invalid_filter",
                            format!("{name} must be unix seconds"),
                        )
                    })
                })
                .transpose()
        };
        Ok(Filter {
            queue: query(req, "queue"),
            message_type: query(req, "type"),
            error_class: query(req, "error_class"),
            status: query(req, "status"),
            since: num("since")?,
            until: num("until")?,
            dry_run: false,
            force: false,
        })
    }

    fn check(&self) -> Result<(), ApiError> {
        if let Some(s) = &self.status {
            if !["dead", "replayed", "discarded"].contains(&s.as_str()) {
                return Err(ApiError::bad_request(
                    "invalid_filter",
                    "status must be dead, replayed or discarded",
                ));
            }
        }
        Ok(())
    }

    /// `WHERE` for this filter: params ?1..?6, the caller's own params start at ?7.
    fn clause(&self) -> (&'static str, Vec<Param>) {
        (
            "(?1 IS NULL OR source_queue = ?1) AND (?2 IS NULL OR message_type = ?2) AND (?3 IS NULL OR error_class = ?3)
             AND (?4 IS NULL OR status = ?4) AND (?5 IS NULL OR last_failed_at >= ?5) AND (?6 IS NULL OR last_failed_at <= ?6)",
            vec![
                self.queue.clone().into(),
                self.message_type.clone().into(),
                self.error_class.clone().into(),
                self.status.clone().into(),
                self.since.into(),
                self.until.into(),
            ],
        )
    }
}

/// `GET /admin/dead-letters?queue=&type=&error_class=&status=&since=&until=&limit=&cursor=`
pub async fn list_dead_letters(req: Request, app: &App) -> ApiResult {
    auth::admin(&req, app).await?;
    let filter = Filter::from_query(&req)?;
    filter.check()?;
    let limit = limit_param(&req, 50, MAX_PAGE)?;
    let after = cursor_param(&req)?;
    let (clause, mut params) = filter.clause();
    let (at, id) = after.clone().unwrap_or((i64::MAX, String::new()));
    params.extend([
        Param::Int(at.min(1 << 52)),
        Param::Text(id),
        Param::Int(i64::from(after.is_none())),
        Param::Int(limit + 1),
    ]);
    let rows: Vec<DeadLetter> = app
        .db
        .all(
            "list dead letters",
            &Stmt::new(
                format!(
                    "SELECT {DL_COLUMNS} FROM dead_letters WHERE {clause}
                     AND (?9 = 1 OR last_failed_at < ?7 OR (last_failed_at = ?7 AND id < ?8))
                     ORDER BY last_failed_at DESC, id DESC LIMIT ?10"
                ),
                params,
            ),
        )
        .await?;
    let page = usize::try_from(limit).unwrap_or(0);
    let next = (rows.len() > page)
        .then(|| rows.get(page - 1).map(|r| cursor(r.last_failed_at, &r.id)))
        .flatten();
    let items: Vec<Value> = rows.iter().take(page).map(DeadLetter::summary).collect();
    json(&json!({"dead_letters": items, "next_cursor": next}), 200)
}

async fn load_dead_letter(app: &App, id: &str) -> Result<DeadLetter, ApiError> {
    app.db
        .first(
            "dead letter",
            &Stmt::new(
                format!("SELECT {DL_COLUMNS} FROM dead_letters WHERE id = ?1"),
                vec![id.into()],
            ),
        )
        .await?
        .ok_or(ApiError::NotFound("dead letter"))
}

async fn body_text(app: &App, dl: &DeadLetter) -> Result<String, ApiError> {
    if let Some(b) = &dl.body {
        return Ok(b.clone());
    }
    let Some(key) = &dl.body_r2_key else {
        return Ok("null".into());
    };
    app.io.r2();
    let object = app
        .bucket()?
        .get(key)
        .execute()
        .await
        .step(format!("r2 get {key}"))?;
    let missing = || {
        ApiError::Unavailable(IoError {
            step: "dead letter body".into(),
            cause: format!("{key} is missing"),
        })
    };
    let object = object.ok_or_else(missing)?;
    let body = object.body().ok_or_else(missing)?;
    Ok(body.text().await.step("r2 read dead letter body")?)
}

/// `GET /admin/dead-letters/:id`: the row, its body and what operators did to it.
pub async fn show_dead_letter(req: Request, ctx: &Ctx) -> ApiResult {
    let app = &ctx.data;
    auth::admin(&req, app).await?;
    let id = ctx.param("id").cloned().unwrap_or_default();
    let dl = load_dead_letter(app, &id).await?;
    let text = body_text(app, &dl).await?;
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    #[derive(Deserialize, Serialize)]
    struct Event {
        actor: String,
        action: String,
        detail: Option<String>,
        created_at: i64,
    }
    let history: Vec<Event> = app
        .db
        .all(
            "dead letter history",
            &Stmt::new(
                "SELECT actor, action, detail, created_at FROM admin_audit WHERE target = ?1 ORDER BY created_at, id",
                vec![id.clone().into()],
            ),
        )
        .await?;
    let mut view = dl.summary();
    view["body"] = body;
    view["history"] = json!(history);
    json(&view, 200)
}

/// Runs one conditional UPDATE per row in one batch and returns the rows it changed: the rows
/// this call won, whatever else is acting on them.
async fn apply_each<'r>(
    app: &App,
    what: &str,
    rows: &'r [DeadLetter],
    stmt: impl Fn(&DeadLetter) -> Stmt,
) -> Result<Vec<&'r DeadLetter>, ApiError> {
    if rows.is_empty() {
        return Ok(vec![]);
    }
    let stmts: Vec<Stmt> = rows.iter().map(stmt).collect();
    let results = app.db.batch(what, &stmts).await?;
    Ok(rows
        .iter()
        .zip(&results)
        .filter(|(_, r)| changes(r) == 1)
        .map(|(row, _)| row)
        .collect())
}

/// One audit row per dead letter acted on.
async fn audit_each(
    app: &App,
    actor: &str,
    action: &str,
    rows: &[&DeadLetter],
    detail: impl Fn(&DeadLetter) -> Value,
) -> Result<(), ApiError> {
    let audits: Vec<Stmt> = rows
        .iter()
        .map(|r| audit(actor, action, &r.id, &detail(r)))
        .collect();
    if !audits.is_empty() {
        app.db.batch(&format!("audit {action}"), &audits).await?;
    }
    Ok(())
}

fn queue_for(app: &App, name: &str) -> Result<Queue, ApiError> {
    let binding = if name == app.cfg.tasks_queue_name {
        crate::config::TASKS
    } else if name == app.cfg.events_queue_name {
        crate::config::EVENTS
    } else {
        return Err(ApiError::Unprocessable {
            code: "unknown_queue",
            message: format!("cannot send to queue {name:?}"),
        });
    };
    Ok(app.env.queue(binding).step(format!("binding {binding}"))?)
}

/// Marks the given dead letters replayed (only those still `dead`, or any with `force`), sends
/// the ones this call marked, and audits it. Returns the ids sent.
async fn replay(
    app: &App,
    actor: &str,
    rows: Vec<DeadLetter>,
    force: bool,
) -> Result<Vec<String>, ApiError> {
    let at = now();
    let claimed = apply_each(app, "claim dead letters for replay", &rows, |r| {
        Stmt::new(
            "UPDATE dead_letters SET status = 'replayed', replayed_at = ?2, replayed_by = ?3, replay_count = replay_count + 1
             WHERE id = ?1 AND (status = 'dead' OR ?4 = 1)",
            vec![r.id.clone().into(), at.into(), actor.into(), Param::Int(i64::from(force))],
        )
    })
    .await?;

    let mut by_queue: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
    for row in &claimed {
        let mut body: Value =
            serde_json::from_str(&body_text(app, row).await?).unwrap_or(Value::Null);
        fresh_for_replay(&mut body);
        by_queue
            .entry(row.source_queue.as_str())
            .or_default()
            .push(body.to_string());
    }
    for (queue_name, bodies) in &by_queue {
        let queue = queue_for(app, queue_name)?;
        if let Err(e) = send_json_batch(&app.io, &queue, bodies, 0).await {
            // Give the claims back so a later replay can send them.
            let undo: Vec<Stmt> = claimed
                .iter()
                .filter(|r| r.source_queue == *queue_name)
                .map(|r| {
                    Stmt::new(
                        "UPDATE dead_letters SET status = ?2, replay_count = replay_count - 1 WHERE id = ?1",
                        vec![r.id.clone().into(), r.status.clone().into()],
                    )
                })
                .collect();
            let _ = app.db.batch("undo replay claims", &undo).await;
            return Err(e.into());
        }
    }
    audit_each(
        app,
        actor,
        "dead_letter.replay",
        &claimed,
        |r| json!({"queue": r.source_queue, "force": force}),
    )
    .await?;
    Ok(claimed.iter().map(|r| r.id.clone()).collect())
}

/// `POST /admin/dead-letters/:id/replay?force=true`
pub async fn replay_one(req: Request, ctx: &Ctx) -> ApiResult {
    let app = &ctx.data;
    auth::admin(&req, app).await?;
    let actor = actor(&req)?;
    let force = query(&req, "force").as_deref() == Some("true");
    let id = ctx.param("id").cloned().unwrap_or_default();
    let dl = load_dead_letter(app, &id).await?;
    let sent = replay(app, &actor, vec![dl], force).await?;
    let row = load_dead_letter(app, &id).await?;
    json(
        &json!({"id": id, "sent": !sent.is_empty(), "status": row.status, "replay_count": row.replay_count}),
        200,
    )
}

async fn matching(
    app: &App,
    filter: &Filter,
    default_status: &str,
) -> Result<(Vec<DeadLetter>, bool), ApiError> {
    let mut filter_status = Filter {
        status: filter
            .status
            .clone()
            .or_else(|| Some(default_status.into())),
        ..Filter::default()
    };
    filter_status.queue = filter.queue.clone();
    filter_status.message_type = filter.message_type.clone();
    filter_status.error_class = filter.error_class.clone();
    filter_status.since = filter.since;
    filter_status.until = filter.until;
    filter_status.check()?;
    let (clause, mut params) = filter_status.clause();
    params.push(Param::Int(MAX_BULK + 1));
    let mut rows: Vec<DeadLetter> = app
        .db
        .all(
            "dead letters matching filter",
            &Stmt::new(format!("SELECT {DL_COLUMNS} FROM dead_letters WHERE {clause} ORDER BY last_failed_at, id LIMIT ?7"), params),
        )
        .await?;
    let more = rows.len() > usize::try_from(MAX_BULK).unwrap_or(0);
    rows.truncate(usize::try_from(MAX_BULK).unwrap_or(0));
    Ok((rows, more))
}

async fn filter_body(req: &mut Request) -> Result<Filter, ApiError> {
    let body = json_body(req, 16 * 1024).await?;
    serde_json::from_value(body).map_err(|e| ApiError::bad_request("invalid_filter", e.to_string()))
}

/// What a bulk dead-letter operation does to the letters that match.
#[derive(Clone, Copy)]
pub enum Bulk {
    Replay,
    Discard,
}

/// `POST /admin/dead-letters/replay {queue?, type?, error_class?, since?, until?, dry_run?, force?}`
/// and `POST /admin/dead-letters/discard {…}`: up to 500 matching dead letters per call (`dry_run`
/// lists them first); `more` says whether to call again.
pub async fn bulk(mut req: Request, app: &App, action: Bulk) -> ApiResult {
    auth::admin(&req, app).await?;
    let actor = actor(&req)?;
    let filter = filter_body(&mut req).await?;
    let (rows, more) = matching(app, &filter, "dead").await?;
    if filter.dry_run {
        let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
        return json(
            &json!({"dry_run": true, "count": ids.len(), "ids": ids, "more": more}),
            200,
        );
    }
    let done = match action {
        Bulk::Replay => replay(app, &actor, rows, filter.force).await?,
        Bulk::Discard => discard(app, &actor, &rows).await?,
    };
    json(
        &json!({"dry_run": false, "count": done.len(), "ids": done, "more": more}),
        200,
    )
}

async fn discard(app: &App, actor: &str, rows: &[DeadLetter]) -> Result<Vec<String>, ApiError> {
    let at = now();
    let done = apply_each(app, "discard dead letters", rows, |r| {
        Stmt::new(
            "UPDATE dead_letters SET status = 'discarded', discarded_at = ?2, discarded_by = ?3 WHERE id = ?1 AND status = 'dead'",
            vec![r.id.clone().into(), at.into(), actor.into()],
        )
    })
    .await?;
    audit_each(app, actor, "dead_letter.discard", &done, |_| json!({})).await?;
    Ok(done.iter().map(|r| r.id.clone()).collect())
}

/// `POST /admin/dead-letters/:id/discard`
pub async fn discard_one(req: Request, ctx: &Ctx) -> ApiResult {
    let app = &ctx.data;
    auth::admin(&req, app).await?;
    let actor = actor(&req)?;
    let id = ctx.param("id").cloned().unwrap_or_default();
    let dl = load_dead_letter(app, &id).await?;
    let done = discard(app, &actor, &[dl]).await?;
    json(&json!({"id": id, "discarded": !done.is_empty()}), 200)
}

// ---------------------------------------------------------------------------------------------
// Tasks
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct AdminTaskRow {
    user_id: String,
    external_task_id: Option<String>,
    retry_of: Option<String>,
    #[serde(flatten)]
    task: TaskRow,
}

fn admin_view(app: &App, row: &AdminTaskRow) -> Value {
    let mut v = row.task.view(app);
    v["user_id"] = json!(row.user_id);
    v["external_task_id"] = json!(row.external_task_id);
    v["retry_of"] = json!(row.retry_of);
    v
}

/// `GET /admin/tasks?status=&older_than_secs=&limit=&cursor=`: oldest problems first is a
/// filter away; the list is newest first like the users' own.
pub async fn list_tasks(req: Request, app: &App) -> ApiResult {
    auth::admin(&req, app).await?;
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
    let limit = limit_param(&req, 50, MAX_PAGE)?;
    let after = cursor_param(&req)?;
    let (at, id) = after.clone().unwrap_or((i64::MAX, String::new()));
    let rows: Vec<AdminTaskRow> = app
        .db
        .all(
            "admin list tasks",
            &Stmt::new(
                format!(
                    "SELECT user_id, external_task_id, retry_of, {TASK_COLUMNS} FROM ai_tasks
                     WHERE (?1 IS NULL OR status = ?1) AND created_at <= ?2
                       AND (?5 = 1 OR created_at < ?3 OR (created_at = ?3 AND id < ?4))
                     ORDER BY created_at DESC, id DESC LIMIT ?6"
                ),
                vec![
                    status.into(),
                    (now() - older_than).into(),
                    Param::Int(at.min(1 << 52)),
                    id.into(),
                    Param::Int(i64::from(after.is_none())),
                    Param::Int(limit + 1),
                ],
            ),
        )
        .await?;
    let page = usize::try_from(limit).unwrap_or(0);
    let next = (rows.len() > page)
        .then(|| {
            rows.get(page - 1)
                .map(|r| cursor(r.task.created_at, &r.task.id))
        })
        .flatten();
    let items: Vec<Value> = rows.iter().take(page).map(|r| admin_view(app, r)).collect();
    json(&json!({"tasks": items, "next_cursor": next}), 200)
}

fn task_param(ctx: &Ctx) -> Result<TaskId, ApiError> {
    TaskId::parse(ctx.param("id").map(String::as_str).unwrap_or_default())
        .map_err(|e| ApiError::bad_request("invalid_id", e.to_string()))
}

async fn load_task(app: &App, task: &TaskId) -> Result<AdminTaskRow, ApiError> {
    app.db
        .first(
            "admin task",
            &Stmt::new(
                format!("SELECT user_id, external_task_id, retry_of, {TASK_COLUMNS} FROM ai_tasks WHERE id = ?1"),
                vec![task.to_string().into()],
            ),
        )
        .await?
        .ok_or(ApiError::NotFound("task"))
}

/// `GET /admin/tasks/:id`: the task with its ledger rows, their allocation and its stored objects.
pub async fn show_task(req: Request, ctx: &Ctx) -> ApiResult {
    let app = &ctx.data;
    auth::admin(&req, app).await?;
    let task = task_param(ctx)?;
    let row = load_task(app, &task).await?;
    let id = task.to_string();
    let ledger = app
        .db
        .batch(
            "task ledger",
            &[
                Stmt::new(
                    "SELECT id, type, amount, created_at FROM credit_records WHERE entity_type = 'task' AND entity_id = ?1 ORDER BY created_at, id",
                    vec![id.clone().into()],
                ),
                Stmt::new(
                    "SELECT from_record_id, amount FROM credit_consumptions WHERE entity_type = 'task' AND entity_id = ?1 ORDER BY id",
                    vec![id.clone().into()],
                ),
            ],
        )
        .await?;
    let records: Vec<Value> = ledger
        .first()
        .map(shared::edge::rows)
        .transpose()?
        .unwrap_or_default();
    let consumptions: Vec<Value> = ledger
        .get(1)
        .map(shared::edge::rows)
        .transpose()?
        .unwrap_or_default();
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
pub async fn retry_task(req: Request, ctx: &Ctx) -> ApiResult {
    let app = &ctx.data;
    auth::admin(&req, app).await?;
    let actor = actor(&req)?;
    let task = task_param(ctx)?;
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
        &json!({"retry_of": task.to_string(), "created": created, "task": new_row.view(app)}),
        if created { 202 } else { 200 },
    )
}

// ---------------------------------------------------------------------------------------------
// Queues
// ---------------------------------------------------------------------------------------------

/// `POST /admin/queues/:queue/messages {messages: [..], delay_seconds?}`: sends bodies as they
/// are (for re-driving work by hand, and for fault-injection tests).
pub async fn send_messages(mut req: Request, ctx: &Ctx) -> ApiResult {
    let app = &ctx.data;
    auth::admin(&req, app).await?;
    let actor = actor(&req)?;
    let name = ctx.param("queue").cloned().unwrap_or_default();
    let queue = match name.as_str() {
        "tasks" => app.env.queue(crate::config::TASKS).step("binding TASKS")?,
        "events" => app
            .env
            .queue(crate::config::EVENTS)
            .step("binding EVENTS")?,
        _ => return Err(ApiError::NotFound("queue")),
    };
    let body = json_body(&mut req, 1024 * 1024).await?;
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .filter(|m| !m.is_empty() && m.len() <= 100)
        .ok_or_else(|| {
            ApiError::Invalid(shared::validation::FieldError {
                field: "messages".into(),
                code: "invalid_value",
                message: "must be an array of 1 to 100 JSON values".into(),
            })
        })?;
    let delay = match body.get("delay_seconds") {
        None | Some(Value::Null) => 0,
        Some(v) => v
            .as_u64()
            .and_then(|d| u32::try_from(d).ok())
            .filter(|d| *d <= 43_200)
            .ok_or_else(|| {
                ApiError::Invalid(shared::validation::FieldError {
                    field: "delay_seconds".into(),
                    code: "invalid_value",
                    message: "must be 0 to 43200".into(),
                })
            })?,
    };
    let texts: Vec<String> = messages.iter().map(Value::to_string).collect();
    if texts.iter().any(|t| t.len() > 128 * 1024) {
        return Err(ApiError::TooLarge(
            "a queue message is at most 128 KB".into(),
        ));
    }
    send_json_batch(&app.io, &queue, &texts, delay).await?;
    app.db
        .run(
            "audit send",
            &audit(
                &actor,
                "queue.send",
                &name,
                &json!({"count": texts.len(), "delay_seconds": delay}),
            ),
        )
        .await?;
    json(&json!({"sent": texts.len()}), 202)
}

// ---------------------------------------------------------------------------------------------
// Webhook events
// ---------------------------------------------------------------------------------------------

/// `GET /admin/webhook-events?status=&type=&limit=`: what providers told us and what became of it
/// (rejected bodies and disputes included).
pub async fn list_webhook_events(req: Request, app: &App) -> ApiResult {
    auth::admin(&req, app).await?;
    let limit = limit_param(&req, 50, MAX_PAGE)?;
    let rows: Vec<Value> = app
        .db
        .all(
            "list webhook events",
            &Stmt::new(
                "SELECT id, provider, event_id, event_type, status, error, received_at, processed_at FROM webhook_events
                 WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR event_type = ?2)
                 ORDER BY received_at DESC, id DESC LIMIT ?3",
                vec![query(&req, "status").into(), query(&req, "type").into(), Param::Int(limit)],
            ),
        )
        .await?;
    json(&json!({"webhook_events": rows}), 200)
}

// ---------------------------------------------------------------------------------------------
// Scheduled jobs, and what they look after
// ---------------------------------------------------------------------------------------------

/// `GET /admin/cron/runs?job=&limit=`: recent runs, newest first.
pub async fn list_cron_runs(req: Request, app: &App) -> ApiResult {
    auth::admin(&req, app).await?;
    let limit = limit_param(&req, 50, MAX_PAGE)?;
    let rows: Vec<Value> = app
        .db
        .all(
            "list cron runs",
            &Stmt::new(
                "SELECT id, job, schedule, started_at, finished_at, examined, changed, errors, error_text, stopped_early, cursor
                 FROM cron_runs WHERE (?1 IS NULL OR job = ?1) ORDER BY started_at DESC, id DESC LIMIT ?2",
                vec![query(&req, "job").into(), Param::Int(limit)],
            ),
        )
        .await?;
    json(&json!({"runs": rows}), 200)
}

/// `POST /admin/cron/:job`: runs a job now in the cron worker (service binding), with the budget
/// of its schedule, and returns its recorded summary.
pub async fn run_cron_job(req: Request, ctx: &Ctx) -> ApiResult {
    let app = &ctx.data;
    auth::admin(&req, app).await?;
    let actor = actor(&req)?;
    let job = ctx.param("job").cloned().unwrap_or_default();
    if !job
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        || job.is_empty()
        || job.len() > 40
    {
        return Err(ApiError::NotFound("job"));
    }
    let cron = app.env.service("CRON").step("binding CRON")?;
    let mut init = worker::RequestInit::new();
    init.with_method(worker::Method::Post);
    app.io.fetch();
    let mut resp = cron
        .fetch(format!("https://cron/run/{job}"), Some(init))
        .await
        .step("cron worker")?;
    if resp.status_code() == 404 {
        return Err(ApiError::NotFound("job"));
    }
    let summary: Value = resp.json().await.step("cron worker answer")?;
    app.db
        .run(
            "audit cron run",
            &audit(&actor, "cron.run", &job, &summary["summary"]),
        )
        .await?;
    json(&summary, 200)
}

/// `GET /admin/orders/stats`: how many orders are in each status.
pub async fn order_stats(req: Request, app: &App) -> ApiResult {
    auth::admin(&req, app).await?;
    let rows: Vec<Value> = app
        .db
        .all(
            "order stats",
            &Stmt::new(
                "SELECT status, COUNT(*) AS n FROM orders GROUP BY status",
                vec![],
            ),
        )
        .await?;
    let counts: serde_json::Map<String, Value> = rows
        .iter()
        .filter_map(|r| Some((r["status"].as_str()?.to_owned(), r["n"].clone())))
        .collect();
    json(&json!({"orders": counts}), 200)
}

/// `GET /admin/storage?prefix=`: how many objects and bytes are under a prefix (up to 20,000
/// objects are counted; `truncated` says if there are more).
pub async fn storage_stats(req: Request, app: &App) -> ApiResult {
    auth::admin(&req, app).await?;
    let prefix = query(&req, "prefix").unwrap_or_default();
    if !["cache/", "result/", "dead-letters/", ""].contains(&prefix.as_str()) {
        return Err(ApiError::bad_request(
            "invalid_prefix",
            "prefix must be cache/, result/ or dead-letters/",
        ));
    }
    let bucket = app.bucket()?;
    let (mut objects, mut bytes, mut cursor, mut pages) = (0u64, 0u64, None::<String>, 0);
    loop {
        let mut list = bucket.list().prefix(prefix.clone()).limit(1000);
        if let Some(c) = cursor.clone() {
            list = list.cursor(c);
        }
        app.io.r2();
        let page = list.execute().await.step("r2 list")?;
        for o in page.objects() {
            objects += 1;
            bytes += o.size();
        }
        pages += 1;
        if !page.truncated() || pages >= 20 {
            return json(
                &json!({"prefix": prefix, "objects": objects, "bytes": bytes, "truncated": page.truncated()}),
                200,
            );
        }
        cursor = page.cursor();
    }
}
