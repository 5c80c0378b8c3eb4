//! End users' tasks: submitting one (JSON or multipart with uploads; the cost is held and the
//! task inserted in one D1 batch, then enqueued), listing them (or the sync feed, `history.rs`),
//! reading one and streaming its results. The task's public view, the hold and the enqueue live
//! here too: an operator's retry (`admin/tasks.rs`) goes through them. How a task is read is
//! `shared::task_rows`.

use crate::auth;
use crate::context::{reply, App, Limit};
use crate::error::{json, ApiError, ApiResult};
use crate::request::{json_body, page, refuse_declared_over, task_id};
use crate::router::{Ctx, Routes};
use serde_json::{json, Value};
use shared::edge::{changes, log, now, StepExt};
use shared::ids::{IdempotencyKey, TaskId, UploadId, UserId};
use shared::keys::{sniff_image, upload_key};
use shared::ledger::{self, NewTaskHold};
use shared::messages::TaskMessage;
use shared::page::{CursorFormat, PageRule};
use shared::signing::signed_file_url;
use shared::submit::{self, TaskInput};
use shared::task::TaskStatus;
use shared::task_rows::{self, TaskRow};
use shared::validation::FieldError;
use worker::{FormEntry, HttpMetadata, Request};

pub fn routes(r: Routes) -> Routes {
    r.post_async("/api/tasks", |req, ctx| async move {
        reply(submit(req, &ctx.data).await)
    })
    .get_async("/api/tasks", |req, ctx| async move {
        reply(list(&req, &ctx.data).await)
    })
    .get_async("/api/tasks/:id", |req, ctx| async move {
        reply(get(&req, &ctx).await)
    })
    .get_async("/api/tasks/:id/results/:n", |req, ctx| async move {
        reply(result(&req, &ctx).await)
    })
}

/// The public view of a task: what the owner sees.
pub fn view(row: &TaskRow, app: &App) -> Value {
    let input: Option<TaskInput> = serde_json::from_str(&row.input_params).ok();
    let expires = now() + app.cfg.signed_url_ttl_secs;
    let results: Vec<Value> = row
        .result_keys()
        .iter()
        .enumerate()
        .map(|(n, key)| {
            json!({
                "index": n,
                "url": format!("/api/tasks/{}/results/{n}", row.id),
                "signed_url": signed_file_url(&app.cfg.public_base_url, app.cfg.files_signing_key.as_bytes(), key, expires),
                // lasts as long as the result: for <img> tags and history caches
                "link": shared::sharing::lasting_link(&app.cfg.public_base_url, app.cfg.files_signing_key.as_bytes(), &row.id, n),
            })
        })
        .collect();
    json!({
        "id": row.id,
        "task_no": row.task_no,
        "status": row.status,
        "model": row.external_provider,
        "prompt": input.as_ref().map(|i| i.prompt.clone()),
        "size": input.as_ref().map(|i| i.size.clone()),
        "cost": row.cost,
        "failure_reason": row.failure_reason,
        "results": results,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
        "submitted_at": row.submitted_at,
        "completed_at": row.completed_at,
        "deadline_at": row.deadline_at,
    })
}

/// An image that came in a multipart submission, checked and ready to store.
struct Upload {
    key: String,
    content_type: &'static str,
    bytes: Vec<u8>,
}

/// `POST /api/tasks`: validate, hold the cost and insert the task in one batch, enqueue.
async fn submit(mut req: Request, app: &App) -> ApiResult {
    let user = auth::user_within(&req, app, Limit::Submit).await?;
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
        let body = json_body(&mut req, 64 * 1024).await?;
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
            json(&view(&row, app), 202)
        }
        Created::Replayed(row) => {
            discard_uploads(app, &uploads).await;
            let mut resp = json(&view(&row, app), 202)?;
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
                &task_rows::by_idempotency_key(user, key),
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
    let balance = crate::me::read_balance(app, user).await?;
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
    refuse_declared_over(req, app.cfg.max_body_bytes)?;
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
                return Err(FieldError::new(name, "invalid_type", "must be a text field").into())
            }
        }
    }
    let mut urls = Vec::new();
    for entry in form.get_all("images").unwrap_or_default() {
        match entry {
            FormEntry::Field(v) => urls.push(Value::String(v)),
            FormEntry::File(_) => {
                return Err(FieldError::new(
                    "images",
                    "invalid_type",
                    "image URLs are text; send files as `file`",
                )
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
            return Err(
                FieldError::new(format!("file[{i}]"), "invalid_type", "must be a file").into(),
            );
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
            return Err(FieldError::new(format!("file[{i}]"), "empty", "is empty").into());
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

async fn owned_task(app: &App, user: &UserId, task: &TaskId) -> Result<TaskRow, ApiError> {
    app.db
        .first("task by id and owner", &task_rows::owned(task, user))
        .await?
        .ok_or(ApiError::NotFound("task"))
}

/// `GET /api/tasks/:id`
async fn get(req: &Request, ctx: &Ctx) -> ApiResult {
    let app = &ctx.data;
    let user = auth::user(req, app).await?;
    let task = task_id(ctx)?;
    let row = owned_task(app, &user, &task).await?;
    json(&view(&row, app), 200)
}

/// `GET /api/tasks?limit=&cursor=`: newest first; `next_cursor` continues the list. With
/// `updated_since` (or a sync cursor), the sync feed instead (`history::sync`).
async fn list(req: &Request, app: &App) -> ApiResult {
    let user = auth::user(req, app).await?;
    if let Some(from) = crate::history::sync_start(req)? {
        return crate::history::sync(req, app, &user, from).await;
    }
    let page = page(req, &LIST_PAGE)?;
    let rows: Vec<TaskRow> = app
        .db
        .all("list tasks", &task_rows::list_owned(&user, &page))
        .await?;
    let (rows, next) = page.split(rows, |r| CursorFormat::Plain.encode(r.created_at, &r.id));
    json(
        &json!({ "tasks": rows.iter().map(|r| view(r, app)).collect::<Vec<_>>(), "next_cursor": next }),
        200,
    )
}

/// `GET /api/tasks?limit=&cursor=`: a list cursor names the last task of a page by its creation
/// (a sync cursor is told apart first, by `history::sync_start`).
const LIST_PAGE: PageRule = PageRule::new(20, 100).with_cursor(|c| {
    let (at, id) = CursorFormat::Plain.decode(c)?;
    Some((at, TaskId::parse(&id).ok()?.to_string()))
});

/// `GET /api/tasks/:id/results/:n`: streams a stored result to its owner.
async fn result(req: &Request, ctx: &Ctx) -> ApiResult {
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
