//! Shares of completed tasks (see `shared::sharing`): created and revoked by their owner, read by
//! anyone with their id. D1 `shares` is the truth; KV `share:{id}` holds the public record for
//! 30 days and is what a reader's request reads. A KV miss is answered from D1 and refilled;
//! every KV write is followed by a D1 check of the share, so a revoke racing the write never
//! leaves a revoked share in KV. Views are counted in the isolate and written in batches.

use crate::auth;
use crate::batch::rows_at;
use crate::context::{reply, App};
use crate::error::{json, json_response, ApiError, ApiResult};
use crate::links::{self, Source, SHARE_CACHE};
use crate::request::{page, task_id};
use crate::router::{Ctx, Routes};
use serde::Deserialize;
use serde_json::{json, Value};
use shared::edge::{log, now, now_ms, rows, StepExt};
use shared::page::{CursorFormat, PageRule};
use shared::sharing::{
    self, share_key, ShareId, ShareRecord, ShareRow, ViewBuffer, SHARE_KV_TTL_SECS,
};
use shared::sql::Stmt;
use std::cell::RefCell;
use worker::Request;

pub fn routes(r: Routes) -> Routes {
    r.post_async("/api/tasks/:id/shares", |req, ctx| async move {
        reply(create(&req, &ctx).await)
    })
    .get_async("/api/shares", |req, ctx| async move {
        reply(list(&req, &ctx.data).await)
    })
    .get_async("/api/shares/:id", |_, ctx| async move {
        reply(read(&ctx).await)
    })
    .delete_async("/api/shares/:id", |req, ctx| async move {
        reply(revoke(&req, &ctx).await)
    })
    .get_async("/api/shares/:id/images/:n", |req, ctx| async move {
        reply(image(&req, &ctx).await)
    })
}

thread_local! {
    /// Views counted in this isolate, not yet in D1.
    static VIEWS: RefCell<ViewBuffer> = RefCell::new(ViewBuffer::default());
}

fn share_param(ctx: &Ctx) -> Result<ShareId, ApiError> {
    let raw = ctx.param("id").map(String::as_str).unwrap_or_default();
    ShareId::parse(raw).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_id",
            format!(
                "`{}` is not a share id",
                raw.chars().take(64).collect::<String>()
            ),
        )
    })
}

fn share_url(app: &App, id: &str) -> String {
    format!("{}/api/shares/{id}", app.cfg.public_base_url)
}

/// What the owner sees of a share: the public view, plus its task, link and views.
fn owner_view(app: &App, row: &ShareRow) -> Value {
    let mut v = ShareRecord::from_row(row).public_view(&app.cfg.public_base_url);
    v["url"] = json!(share_url(app, &row.id));
    v["task_id"] = json!(row.task_id);
    v["view_count"] = json!(row.view_count);
    v["last_viewed_at"] = json!(row.last_viewed_at);
    v
}

#[derive(Deserialize)]
struct Status {
    status: String,
}

/// `POST /api/tasks/:id/shares`: shares one of the caller's completed tasks.
async fn create(req: &Request, ctx: &Ctx) -> ApiResult {
    let app = &ctx.data;
    let user = auth::user(req, app).await?;
    let task = task_id(ctx)?;
    let share = ShareId::new();
    let results = app
        .db
        .batch(
            "create share",
            &sharing::create_share(&share, &user, &task, now()),
        )
        .await?;
    let made: Option<ShareRow> = rows_at(&results, 2)?.into_iter().next();
    let Some(row) = made else {
        let state: Option<Status> = rows_at(&results, 1)?.into_iter().next();
        return Err(match state.map(|s| s.status) {
            None => ApiError::NotFound("task"),
            Some(s) if s == "failed" => ApiError::Conflict {
                code: "task_failed",
                message: "a failed task has no result to share".into(),
            },
            Some(s) => ApiError::Conflict {
                code: "task_not_completed",
                message: format!("the task is {s}; share it once it has completed"),
            },
        });
    };
    if !cache(app, &share, &ShareRecord::from_row(&row)).await? {
        // the task was deleted while the share was made
        return Err(ApiError::NotFound("task"));
    }
    json(&owner_view(app, &row), 201)
}

/// Writes a share's public record to KV, then checks D1 that the share is still live; if it is
/// not (revoked or its task deleted in between), takes the record out again. Returns whether the
/// share is live. A KV failure is logged: D1 answers the reads KV cannot.
async fn cache(app: &App, share: &ShareId, record: &ShareRecord) -> Result<bool, ApiError> {
    app.io.kv();
    let kv = app.kv()?;
    let put = match kv
        .put(
            &share_key(share),
            serde_json::to_string(record).unwrap_or_default(),
        )
        .step("kv put share")
    {
        Ok(p) => p
            .expiration_ttl(SHARE_KV_TTL_SECS)
            .execute()
            .await
            .step("kv put share"),
        Err(e) => Err(e),
    };
    if let Err(e) = put {
        log(
            json!({"level": "warn", "event": "share.cache_failed", "share_id": share.to_string(), "cause": e.to_string()}),
        );
    }
    let live = app
        .db
        .first::<Value>("share still live", &sharing::share_query(share))
        .await?
        .is_some();
    if !live {
        forget(app, &[share.to_string()]).await;
    }
    Ok(live)
}

/// Deletes shares' KV records (revoked, or their task deleted).
pub async fn forget(app: &App, shares: &[String]) {
    let deletes = shares.iter().map(|id| async move {
        if let Err(e) = app.delete_kv(&share_key(id)).await {
            log(json!({"level": "warn", "event": "share.forget_failed", "share_id": id, "cause": e.to_string()}));
        }
    });
    futures::future::join_all(deletes).await;
}

/// A live share's public record: KV, else D1 (and KV is refilled).
async fn load(app: &App, share: &ShareId) -> Result<Option<ShareRecord>, ApiError> {
    app.io.kv();
    match app
        .kv()?
        .get(&share_key(share))
        .json::<ShareRecord>()
        .await
        .step("kv get share")
    {
        Ok(Some(record)) => return Ok(Some(record)),
        Ok(None) => {}
        Err(e) => log(
            json!({"level": "warn", "event": "share.cache_unreadable", "share_id": share.to_string(), "cause": e.to_string()}),
        ),
    }
    let Some(row) = app
        .db
        .first::<ShareRow>("share by id", &sharing::share_query(share))
        .await?
    else {
        return Ok(None);
    };
    let record = ShareRecord::from_row(&row);
    Ok(cache(app, share, &record).await?.then_some(record))
}

/// `GET /api/shares/:id`: a share, for anyone; counts a view.
async fn read(ctx: &Ctx) -> ApiResult {
    let app = &ctx.data;
    let share = share_param(ctx)?;
    let record = load(app, &share)
        .await?
        .ok_or(ApiError::NotFound("share"))?;
    count_view(app, &share).await;
    let mut resp = json_response(&record.public_view(&app.cfg.public_base_url), 200);
    let _ = resp.headers_mut().set("cache-control", "no-store");
    Ok(resp)
}

/// `GET /api/shares/:id/images/:n`: image `n` of a share, for anyone, while the share lives.
async fn image(req: &Request, ctx: &Ctx) -> ApiResult {
    let app = &ctx.data;
    let share = share_param(ctx)?;
    let n = links::index(ctx)?;
    let record = load(app, &share)
        .await?
        .ok_or(ApiError::NotFound("image"))?;
    let key = record
        .result_keys
        .get(n)
        .ok_or(ApiError::NotFound("image"))?;
    links::serve(req, app, key, n, SHARE_CACHE, Source::Share(&share)).await
}

/// Counts a view in this isolate; writes the counts when they are due. A failed write keeps
/// them for the next one.
async fn count_view(app: &App, share: &ShareId) {
    let due = VIEWS.with(|v| {
        let mut v = v.borrow_mut();
        v.add(&share.to_string(), now_ms());
        v.due(now_ms())
    });
    if due {
        let taken = VIEWS.with(|v| v.borrow_mut().take());
        if taken.is_empty() {
            return;
        }
        if let Err(e) = app
            .db
            .run("add share views", &sharing::add_views(&taken, now()))
            .await
        {
            log(json!({"level": "warn", "event": "share.views_unwritten", "cause": e.to_string()}));
            VIEWS.with(|v| v.borrow_mut().restore(taken, now_ms()));
        }
    }
}

/// A share cursor names the last share of a page by when it was shared.
const SHARE_CURSOR: CursorFormat = CursorFormat::Tagged("h1");
const LIST_PAGE: PageRule = PageRule::new(20, 100).with_cursor(|c| {
    let (at, id) = SHARE_CURSOR.decode(c)?;
    Some((at, ShareId::parse(&id)?.to_string()))
});

/// `GET /api/shares?limit=&cursor=`: the caller's live shares, newest first, with their view
/// counts. Views this isolate counted are written in the same batch, first.
async fn list(req: &Request, app: &App) -> ApiResult {
    let user = auth::user(req, app).await?;
    let page = page(req, &LIST_PAGE)?;
    let taken = VIEWS.with(|v| v.borrow_mut().take());
    let mut stmts: Vec<Stmt> = Vec::new();
    if !taken.is_empty() {
        stmts.push(sharing::add_views(&taken, now()));
    }
    stmts.push(sharing::list_shares(&user, page.before.clone(), page.limit));
    let results = match app.db.batch("list shares", &stmts).await {
        Ok(r) => r,
        Err(e) => {
            VIEWS.with(|v| v.borrow_mut().restore(taken, now_ms()));
            return Err(e.into());
        }
    };
    let found: Vec<ShareRow> = match results.last() {
        Some(r) => rows(r)?,
        None => vec![],
    };
    let (found, next) = page.split(found, |r| SHARE_CURSOR.encode(r.shared_at, &r.id));
    json(
        &json!({"shares": found.iter().map(|r| owner_view(app, r)).collect::<Vec<_>>(), "next_cursor": next}),
        200,
    )
}

#[derive(Deserialize)]
struct Revoked {
    id: String,
}

/// `DELETE /api/shares/:id`: revokes one of the caller's shares. Refused for readers at once
/// where this lands (its KV record is deleted and a miss is checked against D1), elsewhere once
/// KV's edge caches let go (about 60 s).
async fn revoke(req: &Request, ctx: &Ctx) -> ApiResult {
    let app = &ctx.data;
    let user = auth::user(req, app).await?;
    let share = share_param(ctx)?;
    let revoked: Option<Revoked> = app
        .db
        .first("revoke share", &sharing::revoke_share(&share, &user, now()))
        .await?;
    let revoked = revoked.ok_or(ApiError::NotFound("share"))?;
    forget(app, std::slice::from_ref(&revoked.id)).await;
    json(&json!({"id": revoked.id, "revoked": true}), 200)
}
