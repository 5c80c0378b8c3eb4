//! Operators' routes for dead letters, the messages the consumer gave up on (`dead_letters` in
//! D1, a large body in R2): list them by queue, type, error class, status and time; show one with
//! its body and what operators did to it; replay (send the body again, fresh for the queue) or
//! discard them, one at a time or up to 500 matching a filter per call. Each letter is claimed by
//! a conditional update before it is sent or discarded, and only the letters a call claimed are
//! acted on and audited. The statements are `shared::dead_letters`.

use super::audit_log::audit;
use super::{CURSOR, CURSOR_PAGE};
use crate::auth;
use crate::context::{reply, App};
use crate::error::{json, ApiError, ApiResult};
use crate::request::{json_body, page, query};
use crate::router::{Ctx, Routes};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use shared::admin_audit;
use shared::dead_letters::{self, DeadLetter, Filter};
use shared::edge::{changes, now, send_json_batch, IoError, StepExt};
use shared::messages::fresh_for_replay;
use shared::sql::Stmt;
use worker::{Queue, Request};

pub fn routes(r: Routes) -> Routes {
    r.get_async("/admin/dead-letters", |req, ctx| async move {
        reply(list(req, &ctx.data).await)
    })
    .post_async("/admin/dead-letters/replay", |req, ctx| async move {
        reply(bulk(req, &ctx.data, Bulk::Replay).await)
    })
    .post_async("/admin/dead-letters/discard", |req, ctx| async move {
        reply(bulk(req, &ctx.data, Bulk::Discard).await)
    })
    .get_async("/admin/dead-letters/:id", |req, ctx| async move {
        reply(show(req, &ctx).await)
    })
    .post_async("/admin/dead-letters/:id/replay", |req, ctx| async move {
        reply(replay_one(req, &ctx).await)
    })
    .post_async("/admin/dead-letters/:id/discard", |req, ctx| async move {
        reply(discard_one(req, &ctx).await)
    })
}

/// The most dead letters one bulk call acts on (`more` says whether to call again).
const MAX_BULK: i64 = 500;

/// The dead letter's id in the path, as given: an unknown one is a 404 when it is looked up.
fn letter_id(ctx: &Ctx) -> String {
    ctx.param("id").cloned().unwrap_or_default()
}

/// The filter of a listing, from its query.
fn filter_from_query(req: &Request) -> Result<Filter, ApiError> {
    let num = |name: &str| -> Result<Option<i64>, ApiError> {
        query(req, name)
            .map(|v| {
                v.parse::<i64>().map_err(|_| {
                    ApiError::bad_request("invalid_filter", format!("{name} must be unix seconds"))
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

/// Refuses a filter by a status no letter can be in.
fn check(filter: &Filter) -> Result<(), ApiError> {
    filter
        .check()
        .map_err(|message| ApiError::bad_request("invalid_filter", message))
}

/// `GET /admin/dead-letters?queue=&type=&error_class=&status=&since=&until=&limit=&cursor=`
async fn list(req: Request, app: &App) -> ApiResult {
    auth::operator(&req, app).await?;
    let filter = filter_from_query(&req)?;
    check(&filter)?;
    let page = page(&req, &CURSOR_PAGE)?;
    let rows: Vec<DeadLetter> = app
        .db
        .all("list dead letters", &dead_letters::list(&filter, &page))
        .await?;
    let (rows, next) = page.split(rows, |r| CURSOR.encode(r.last_failed_at, &r.id));
    let items: Vec<Value> = rows.iter().map(DeadLetter::summary).collect();
    json(&json!({"dead_letters": items, "next_cursor": next}), 200)
}

async fn load_dead_letter(app: &App, id: &str) -> Result<DeadLetter, ApiError> {
    app.db
        .first("dead letter", &dead_letters::load(id))
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
async fn show(req: Request, ctx: &Ctx) -> ApiResult {
    let app = &ctx.data;
    auth::operator(&req, app).await?;
    let id = letter_id(ctx);
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
        .all("dead letter history", &admin_audit::of_target(&id))
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

/// The binding of the queue a dead letter came from, by the name it recorded.
fn queue_for(app: &App, name: &str) -> Result<Queue, ApiError> {
    if name == app.cfg.tasks_queue_name {
        Ok(app.tasks_queue()?)
    } else if name == app.cfg.events_queue_name {
        Ok(app.events_queue()?)
    } else {
        Err(ApiError::Unprocessable {
            code: "unknown_queue",
            message: format!("cannot send to queue {name:?}"),
        })
    }
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
        dead_letters::claim_for_replay(&r.id, at, actor, force)
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
                .map(|r| dead_letters::undo_replay_claim(&r.id, &r.status))
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
async fn replay_one(req: Request, ctx: &Ctx) -> ApiResult {
    let app = &ctx.data;
    let actor = auth::operator(&req, app).await?.actor()?;
    let force = query(&req, "force").as_deref() == Some("true");
    let id = letter_id(ctx);
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
    check(&filter_status)?;
    let mut rows: Vec<DeadLetter> = app
        .db
        .all(
            "dead letters matching filter",
            &dead_letters::matching(&filter_status, MAX_BULK + 1),
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
enum Bulk {
    Replay,
    Discard,
}

/// `POST /admin/dead-letters/replay {queue?, type?, error_class?, since?, until?, dry_run?, force?}`
/// and `POST /admin/dead-letters/discard {…}`: up to 500 matching dead letters per call (`dry_run`
/// lists them first); `more` says whether to call again.
async fn bulk(mut req: Request, app: &App, action: Bulk) -> ApiResult {
    let actor = auth::operator(&req, app).await?.actor()?;
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
        dead_letters::discard(&r.id, at, actor)
    })
    .await?;
    audit_each(app, actor, "dead_letter.discard", &done, |_| json!({})).await?;
    Ok(done.iter().map(|r| r.id.clone()).collect())
}

/// `POST /admin/dead-letters/:id/discard`
async fn discard_one(req: Request, ctx: &Ctx) -> ApiResult {
    let app = &ctx.data;
    let actor = auth::operator(&req, app).await?.actor()?;
    let id = letter_id(ctx);
    let dl = load_dead_letter(app, &id).await?;
    let done = discard(app, &actor, &[dl]).await?;
    json(&json!({"id": id, "discarded": !done.is_empty()}), 200)
}
