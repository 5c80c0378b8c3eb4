//! End users' task routes, balance and health.

use crate::app::{json, query, App, Ctx};
use crate::auth;
use crate::error::{ApiError, ApiResult};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};
use shared::edge::{changes, log, now, StepExt};
use shared::ids::{IdempotencyKey, TaskId, UploadId, UserId};
use shared::keys::{sniff_image, upload_key};
use shared::ledger::{self, NewTaskHold};
use shared::messages::TaskMessage;
use shared::model::Model;
use shared::signing::signed_file_url;
use shared::sql::{Param, Stmt};
use shared::submit::{self, TaskInput};
use shared::task::TaskStatus;
use worker::{FormEntry, HttpMetadata, Request};

pub const TASK_COLUMNS: &str =
    "id, task_no, status, input_params, external_provider, cost, result_keys, failure_reason,
     created_at, updated_at, submitted_at, completed_at, deadline_at";

/// A task row as the API reads it.
#[derive(Debug, Deserialize)]
pub struct TaskRow {
    pub id: String,
    pub task_no: String,
    pub status: String,
    pub input_params: String,
    pub external_provider: Option<String>,
    pub cost: i64,
    pub result_keys: Option<String>,
    pub failure_reason: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub submitted_at: Option<i64>,
    pub completed_at: Option<i64>,
    pub deadline_at: Option<i64>,
}

impl TaskRow {
    pub fn result_keys(&self) -> Vec<String> {
        self.result_keys
            .as_deref()
            .and_then(|k| serde_json::from_str(k).ok())
            .unwrap_or_default()
    }

    /// The public view of a task: what the owner sees.
    pub fn view(&self, app: &App) -> Value {
        let input: Option<TaskInput> = serde_json::from_str(&self.input_params).ok();
        let expires = now() + app.cfg.signed_url_ttl_secs;
        let results: Vec<Value> = self
            .result_keys()
            .iter()
            .enumerate()
            .map(|(n, key)| {
                json!({
                    "index": n,
                    "url": format!("/api/tasks/{}/results/{n}", self.id),
                    "signed_url": signed_file_url(&app.cfg.public_base_url, app.cfg.files_signing_key.as_bytes(), key, expires),
                    // lasts as long as the result: for <img> tags and history caches
                    "link": shared::sharing::lasting_link(&app.cfg.public_base_url, app.cfg.files_signing_key.as_bytes(), &self.id, n),
                })
            })
            .collect();
        json!({
            "id": self.id,
            "task_no": self.task_no,
            "status": self.status,
            "model": self.external_provider,
            "prompt": input.as_ref().map(|i| i.prompt.clone()),
            "size": input.as_ref().map(|i| i.size.clone()),
            "cost": self.cost,
            "failure_reason": self.failure_reason,
            "results": results,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "submitted_at": self.submitted_at,
            "completed_at": self.completed_at,
            "deadline_at": self.deadline_at,
        })
    }
}

/// An image that came in a multipart submission, checked and ready to store.
struct Upload {
    key: String,
    content_type: &'static str,
    bytes: Vec<u8>,
}

/// `POST /api/tasks`: validate, hold the cost and insert the task in one batch, enqueue.
pub async fn submit(mut req: Request, app: &App) -> ApiResult {
    let user = auth::user_within(&req, app, crate::app::Limit::Submit).await?;
    let idempotency_key = match req.headers().get("idempotency-key").ok().flatten() {
        None => None,
        Some(raw) => Some(
            IdempotencyKey::parse(&raw)
                .map_err(|e| ApiError::bad_request("invalid_idempotency_key", e.to_string()))?,
        ),
    };
    let content_type = req
        .headers()
        .get("content-type")
        .ok()
        .flatten()
        .unwrap_or_default()
        .to_ascii_lowercase();

    let (input, uploads) = if content_type.starts_with("application/json") {
        let body = crate::app::json_body(&mut req, 64 * 1024).await?;
        (submit::parse(&body, vec![])?, vec![])
    } else if content_type.starts_with("multipart/form-data") {
        read_multipart(&mut req, app, &user).await?
    } else {
        return Err(ApiError::UnsupportedMediaType(
            "send application/json or multipart/form-data".into(),
        ));
    };

    store_uploads(app, &user, &uploads).await?;
    let created = hold_and_insert(app, &user, &input, idempotency_key.as_ref(), None).await;
    let outcome = match created {
        Ok(outcome) => outcome,
        Err(e) => {
            discard_uploads(app, &uploads).await;
            return Err(e);
        }
    };
    match outcome {
        Created::New(row) => {
            if let Ok(task) = TaskId::parse(&row.id) {
                enqueue_submit(app, &task).await;
            }
            json(&row.view(app), 202)
        }
        Created::Replayed(row) => {
            discard_uploads(app, &uploads).await;
            let mut resp = json(&row.view(app), 202)?;
            let _ = resp.headers_mut().set("idempotent-replayed", "true");
            Ok(resp)
        }
    }
}

pub enum Created {
    New(Box<TaskRow>),
    Replayed(Box<TaskRow>),
}

/// Holds the cost and inserts the task in one batch; a repeated key returns the task it made.
pub async fn hold_and_insert(
    app: &App,
    user: &UserId,
    input: &TaskInput,
    key: Option<&IdempotencyKey>,
    retry_of: Option<&TaskId>,
) -> Result<Created, ApiError> {
    let task = TaskId::new();
    let at = now();
    let params = input.to_params();
    let task_no = task.task_no(at);
    let stmts = ledger::reserve_task(NewTaskHold {
        task: &task,
        task_no: &task_no,
        user,
        model: input.model.as_str(),
        input_params: &params,
        idempotency_key: key.map(IdempotencyKey::as_str),
        cost: input.model.cost(),
        deadline_at: at + app.cfg.task_deadline_secs,
        retry_of,
        now: at,
    });
    let results = app.db.batch("reserve and insert task", &stmts).await?;
    if results.first().map(changes) == Some(1) {
        return Ok(Created::New(Box::new(TaskRow {
            id: task.to_string(),
            task_no,
            status: TaskStatus::Pending.as_str().into(),
            input_params: params,
            external_provider: Some(input.model.as_str().into()),
            cost: input.model.cost().get(),
            result_keys: None,
            failure_reason: None,
            created_at: at,
            updated_at: at,
            submitted_at: None,
            completed_at: None,
            deadline_at: Some(at + app.cfg.task_deadline_secs),
        })));
    }
    // Nothing was written: either this key was used before, or the balance is short.
    if let Some(key) = key {
        let existing: Option<TaskRow> = app
            .db
            .first(
                "task by idempotency key",
                &Stmt::new(
                    format!("SELECT {TASK_COLUMNS} FROM ai_tasks WHERE user_id = ?1 AND idempotency_key = ?2"),
                    vec![user.to_string().into(), key.as_str().into()],
                ),
            )
            .await?;
        if let Some(row) = existing {
            if row.input_params != params {
                return Err(ApiError::Unprocessable {
                    code: "idempotency_key_reused",
                    message: "this Idempotency-Key was used for a different request".into(),
                });
            }
            return Ok(Created::Replayed(Box::new(row)));
        }
    }
    let balance = read_balance(app, user).await?;
    Err(ApiError::PaymentRequired(format!(
        "{} costs {} credits; the balance is {}",
        input.model,
        input.model.cost(),
        balance
    )))
}

pub async fn enqueue_submit(app: &App, task: &TaskId) {
    let copies = if app.cfg.chaos_duplicate_sends { 2 } else { 1 };
    let mut sent = Ok(());
    for _ in 0..copies {
        app.io.queue_send();
        sent = match app.tasks_queue() {
            Ok(q) => q
                .send(TaskMessage::submit(*task))
                .await
                .step("queue send task.submit"),
            Err(e) => Err(e),
        };
    }
    if let Err(e) = sent {
        // The task is durable and pending; the reconciler re-enqueues pending tasks it finds
        // without progress, so this is logged, not returned.
        log(
            json!({"level": "error", "event": "enqueue_failed", "task_id": task.to_string(), "step": e.step, "cause": e.cause}),
        );
    }
}

async fn read_multipart(
    req: &mut Request,
    app: &App,
    user: &UserId,
) -> Result<(TaskInput, Vec<Upload>), ApiError> {
    let declared = req
        .headers()
        .get("content-length")
        .ok()
        .flatten()
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > app.cfg.max_body_bytes) {
        return Err(ApiError::TooLarge(format!(
            "body larger than {} bytes",
            app.cfg.max_body_bytes
        )));
    }
    let form = req.form_data().await.map_err(|_| {
        ApiError::bad_request("invalid_multipart", "the multipart body could not be read")
    })?;
    let mut fields = serde_json::Map::new();
    for name in ["prompt", "model", "size"] {
        match form.get(name) {
            None => {}
            Some(FormEntry::Field(v)) => {
                fields.insert(name.into(), Value::String(v));
            }
            Some(FormEntry::File(_)) => {
                return Err(shared::validation::FieldError {
                    field: name.into(),
                    code: "invalid_type",
                    message: "must be a text field".into(),
                }
                .into())
            }
        }
    }
    let mut urls = Vec::new();
    for entry in form.get_all("images").unwrap_or_default() {
        match entry {
            FormEntry::Field(v) => urls.push(Value::String(v)),
            FormEntry::File(_) => {
                return Err(shared::validation::FieldError {
                    field: "images".into(),
                    code: "invalid_type",
                    message: "image URLs are text; send files as `file`".into(),
                }
                .into())
            }
        }
    }
    if !urls.is_empty() {
        fields.insert("images".into(), Value::Array(urls));
    }
    let mut uploads = Vec::new();
    for (i, entry) in form
        .get_all("file")
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        let FormEntry::File(file) = entry else {
            return Err(shared::validation::FieldError {
                field: format!("file[{i}]"),
                code: "invalid_type",
                message: "must be a file".into(),
            }
            .into());
        };
        if file.size() > app.cfg.max_upload_bytes {
            return Err(ApiError::TooLarge(format!(
                "file[{i}] is larger than {} bytes",
                app.cfg.max_upload_bytes
            )));
        }
        let bytes = file.bytes().await.map_err(|_| {
            ApiError::bad_request("invalid_multipart", format!("file[{i}] could not be read"))
        })?;
        if bytes.is_empty() {
            return Err(shared::validation::FieldError {
                field: format!("file[{i}]"),
                code: "empty",
                message: "is empty".into(),
            }
            .into());
        }
        let content_type = sniff_image(&bytes).ok_or_else(|| {
            ApiError::UnsupportedMediaType(format!(
                "file[{i}] is not a PNG, JPEG, WebP or GIF image"
            ))
        })?;
        let ext = shared::keys::image_extension(content_type).unwrap_or("bin");
        uploads.push(Upload {
            key: upload_key(user, &UploadId::new(), ext),
            content_type,
            bytes,
        });
    }
    let input = submit::parse(
        &Value::Object(fields),
        uploads.iter().map(|u| u.key.clone()).collect(),
    )?;
    Ok((input, uploads))
}

async fn store_uploads(app: &App, user: &UserId, uploads: &[Upload]) -> Result<(), ApiError> {
    if uploads.is_empty() {
        return Ok(());
    }
    let bucket = app.bucket()?;
    for u in uploads {
        app.io.r2();
        let meta = HttpMetadata {
            content_type: Some(u.content_type.into()),
            ..Default::default()
        };
        let custom = std::collections::HashMap::from([("user_id".to_owned(), user.to_string())]);
        bucket
            .put(u.key.clone(), u.bytes.clone())
            .http_metadata(meta)
            .custom_metadata(custom)
            .execute()
            .await
            .step(format!("r2 put {}", u.key))?;
    }
    Ok(())
}

/// Uploads of a submission that created nothing are removed again; failing that, they are
/// under `cache/` and the cache cleaner takes them.
async fn discard_uploads(app: &App, uploads: &[Upload]) {
    if uploads.is_empty() {
        return;
    }
    if let Ok(bucket) = app.bucket() {
        app.io.r2();
        let keys: Vec<String> = uploads.iter().map(|u| u.key.clone()).collect();
        if let Err(e) = bucket
            .delete_multiple(keys)
            .await
            .step("r2 delete unused uploads")
        {
            log(
                json!({"level": "warn", "event": "discard_uploads_failed", "cause": e.to_string()}),
            );
        }
    }
}

fn task_id(ctx: &Ctx) -> Result<TaskId, ApiError> {
    let raw = ctx.param("id").map(String::as_str).unwrap_or_default();
    TaskId::parse(raw).map_err(|e| ApiError::bad_request("invalid_id", e.to_string()))
}

async fn owned_task(app: &App, user: &UserId, task: &TaskId) -> Result<TaskRow, ApiError> {
    app.db
        .first(
            "task by id and owner",
            &Stmt::new(
                format!("SELECT {TASK_COLUMNS} FROM ai_tasks WHERE id = ?1 AND user_id = ?2 AND deleted_at IS NULL"),
                vec![task.to_string().into(), user.to_string().into()],
            ),
        )
        .await?
        .ok_or(ApiError::NotFound("task"))
}

/// `GET /api/tasks/:id`
pub async fn get(req: &Request, ctx: &Ctx) -> ApiResult {
    let app = &ctx.data;
    let user = auth::user(req, app).await?;
    let task = task_id(ctx)?;
    let row = owned_task(app, &user, &task).await?;
    json(&row.view(app), 200)
}

/// `GET /api/tasks?limit=&cursor=`: newest first; `next_cursor` continues the list. With
/// `updated_since` (or a sync cursor), the sync feed instead (`history::sync`).
pub async fn list(req: &Request, app: &App) -> ApiResult {
    let user = auth::user(req, app).await?;
    if let Some(from) = crate::history::sync_start(req)? {
        return crate::history::sync(req, app, &user, from).await;
    }
    let limit = match query(req, "limit") {
        None => 20,
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=100).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request("invalid_limit", "limit must be an integer from 1 to 100")
            })?,
    };
    let (before_at, before_id) = match query(req, "cursor") {
        None => (i64::MAX, String::new()),
        Some(c) => decode_cursor(&c).ok_or_else(|| {
            ApiError::bad_request("invalid_cursor", "cursor is not one we issued")
        })?,
    };
    let rows: Vec<TaskRow> = app
        .db
        .all(
            "list tasks",
            &Stmt::new(
                format!(
                    "SELECT {TASK_COLUMNS} FROM ai_tasks
                     WHERE user_id = ?1 AND deleted_at IS NULL
                       AND (created_at < ?2 OR (created_at = ?2 AND id < ?3) OR ?4 = 1)
                     ORDER BY created_at DESC, id DESC LIMIT ?5"
                ),
                vec![
                    user.to_string().into(),
                    Param::Int(before_at.min(1 << 52)),
                    before_id.clone().into(),
                    Param::Int(i64::from(before_id.is_empty())),
                    Param::Int(limit + 1),
                ],
            ),
        )
        .await?;
    let more = rows.len() > usize::try_from(limit).unwrap_or(usize::MAX);
    let page: Vec<&TaskRow> = rows
        .iter()
        .take(usize::try_from(limit).unwrap_or(0))
        .collect();
    let next = if more {
        page.last().map(|r| encode_cursor(r.created_at, &r.id))
    } else {
        None
    };
    json(
        &json!({ "tasks": page.iter().map(|r| r.view(app)).collect::<Vec<_>>(), "next_cursor": next }),
        200,
    )
}

fn encode_cursor(created_at: i64, id: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{created_at}:{id}"))
}

fn decode_cursor(c: &str) -> Option<(i64, String)> {
    let raw = String::from_utf8(URL_SAFE_NO_PAD.decode(c).ok()?).ok()?;
    let (at, id) = raw.split_once(':')?;
    Some((at.parse().ok()?, TaskId::parse(id).ok()?.to_string()))
}

/// `GET /api/tasks/:id/results/:n`: streams a stored result to its owner.
pub async fn result(req: &Request, ctx: &Ctx) -> ApiResult {
    let app = &ctx.data;
    let user = auth::user(req, app).await?;
    let task = task_id(ctx)?;
    let n: usize = ctx.param("n").and_then(|n| n.parse().ok()).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_index",
            "result index must be a non-negative integer",
        )
    })?;
    let row = owned_task(app, &user, &task).await?;
    let key = row
        .result_keys()
        .into_iter()
        .nth(n)
        .ok_or(ApiError::NotFound("result"))?;
    crate::files::stream_object(req, app, &key, "private, max-age=3600").await
}

/// The derived balance.
pub async fn read_balance(app: &App, user: &UserId) -> Result<i64, ApiError> {
    #[derive(Deserialize)]
    struct Row {
        balance: i64,
    }
    let row: Option<Row> = app
        .db
        .first("balance", &ledger::balance_query(user, now()))
        .await?;
    Ok(row.map_or(0, |r| r.balance))
}

/// `GET /api/balance`
pub async fn balance(req: &Request, app: &App) -> ApiResult {
    let user = auth::user(req, app).await?;
    let balance = read_balance(app, &user).await?;
    json(
        &json!({ "balance": balance, "costs": Model::ALL.iter().map(|m| (m.as_str(), m.cost().get())).collect::<std::collections::BTreeMap<_, _>>() }),
        200,
    )
}

/// `GET /api/health`: whether D1, R2, KV and the queue binding answer.
pub async fn health(app: &App) -> ApiResult {
    let d1 = app
        .db
        .run("health", &Stmt::new("SELECT 1", vec![]))
        .await
        .map(|_| ());
    app.io.r2();
    let r2 = match app.bucket() {
        Ok(b) => b.head("health/probe").await.step("r2 head").map(|_| ()),
        Err(e) => Err(e),
    };
    app.io.kv();
    let kv = match app.kv() {
        Ok(k) => k
            .get("health:probe")
            .text()
            .await
            .step("kv get")
            .map(|_| ()),
        Err(e) => Err(e),
    };
    let queue = app.tasks_queue().map(|_| ());
    let checks = [("d1", d1), ("r2", r2), ("kv", kv), ("queue", queue)];
    let ok = checks.iter().all(|(_, r)| r.is_ok());
    let detail: serde_json::Map<String, Value> = checks
        .iter()
        .map(|(name, r)| {
            (
                (*name).to_owned(),
                json!(if r.is_ok() { "ok" } else { "failing" }),
            )
        })
        .collect();
    for (name, r) in &checks {
        if let Err(e) = r {
            log(
                json!({"level": "error", "event": "health_check_failed", "check": name, "cause": e.to_string()}),
            );
        }
    }
    json(
        &json!({ "status": if ok { "ok" } else { "degraded" }, "checks": detail }),
        if ok { 200 } else { 503 },
    )
}

/// `POST /api/auth/signout`: ends the caller's session; `POST /api/auth/signout-all`: every session
/// of the caller. Tokens of ended sessions are refused from then on.
pub async fn sign_out(req: &Request, app: &App, everywhere: bool) -> ApiResult {
    let caller = auth::caller(req, app).await?;
    let ended = auth::sign_out(app, &caller, everywhere).await?;
    json(&json!({"signed_out": ended}), 200)
}
