//! Operators' routes for users: create users, grant credits, open sessions (what the app's login
//! calls) and list their sign-ins; find users (`GET /admin/users?q=`, by email prefix or id) and
//! show one with its derived balance, its ledger rows, subscriptions, and tasks and orders by
//! status. Every change writes one `admin_audit` row with who made it (`X-Actor`) in the same D1
//! batch as the change. The statements are `shared::users`, `shared::ledger` (gifts, the ledger
//! rows), `shared::orders` (subscriptions) and `shared::admin_views` (counts).

use super::audit_log::audit;
use super::stats::by_status;
use super::{created_cursor, CURSOR_PAGE};
use crate::auth;
use crate::batch::rows_at;
use crate::context::{reply, App};
use crate::error::{json, ApiError, ApiResult};
use crate::request::{json_body, page, query, user_id};
use crate::router::{Ctx, Routes};
use serde::Deserialize;
use serde_json::{json, Value};
use shared::edge::{now, IoError};
use shared::ids::{Credits, UserId};
use shared::page::PageRule;
use shared::validation::{only_fields, Expected, FieldError};
use shared::{admin_views, ledger, orders, session, users};
use worker::Request;

pub fn routes(r: Routes) -> Routes {
    r.post_async("/admin/users", |req, ctx| async move {
        reply(create_user(req, &ctx.data).await)
    })
    .post_async("/admin/users/:id/sessions", |req, ctx| async move {
        reply(create_session(req, &ctx).await)
    })
    .post_async("/admin/users/:id/grants", |req, ctx| async move {
        reply(grant(req, &ctx).await)
    })
    .get_async("/admin/users/:id/signins", |req, ctx| async move {
        reply(signins(req, &ctx).await)
    })
    .get_async("/admin/users", |req, ctx| async move {
        reply(list(req, &ctx.data).await)
    })
    .get_async("/admin/users/:id", |req, ctx| async move {
        reply(show(req, &ctx).await)
    })
}

/// How many ledger rows a user's page shows (newest first); `ledger_more` says if there are more.
const LEDGER_ROWS: i64 = 200;

/// A user's sign-ins: 50 unless asked, at most 200; this route's bad limit was always
/// `invalid_query`.
const SIGNINS_PAGE: PageRule = super::PAGE.with_limit_code("invalid_query");

fn string_field(body: &Value, name: &str, max: usize) -> Result<String, FieldError> {
    let s = body
        .get(name)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            FieldError::new(
                name,
                "required",
                "is required and must be a non-empty string",
            )
        })?;
    if s.len() > max {
        return Err(FieldError::new(name, "too_long", "is too long"));
    }
    Ok(s.to_owned())
}

fn credits_field(body: &Value, name: &str, default: i64) -> Result<i64, FieldError> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_i64()
            .filter(|n| (0..=1_000_000_000).contains(n))
            .ok_or_else(|| {
                FieldError::new(
                    name,
                    "invalid_value",
                    "must be an integer from 0 to 1000000000",
                )
            }),
    }
}

/// `POST /admin/users {email, name, credits?}`: a user with an optional starting gift.
async fn create_user(mut req: Request, app: &App) -> ApiResult {
    let actor = auth::operator(&req, app).await?.actor()?;
    let body = json_body(&mut req, 16 * 1024).await?;
    only_fields(&body, &["email", "name", "credits"], Expected::OneOf)?;
    let email = string_field(&body, "email", 320)?;
    if !email.contains('@') {
        return Err(FieldError::new("email", "invalid_value", "must be an email address").into());
    }
    let name = string_field(&body, "name", 200)?;
    let credits = credits_field(&body, "credits", 0)?;
    let user = UserId::new();
    let at = now();
    let mut stmts = vec![users::create(&user, &email, &name, at)];
    if credits > 0 {
        stmts.push(ledger::signup_gift(&user.to_string(), Credits(credits), at));
    }
    stmts.push(audit(
        &actor,
        "user.create",
        &user.to_string(),
        &json!({"credits": credits}),
    ));
    match app.db.batch("create user", &stmts).await {
        Ok(_) => json(
            &json!({"id": user.to_string(), "email": email, "name": name, "credits": credits}),
            201,
        ),
        Err(e) if is_unique(&e, "users.email") => Err(ApiError::Conflict {
            code: "email_taken",
            message: "a user with this email exists".into(),
        }),
        Err(e) => Err(e.into()),
    }
}

/// Whether D1 refused a write for a UNIQUE constraint: `constraint` (`table.column`), or any
/// when it is empty.
fn is_unique(e: &IoError, constraint: &str) -> bool {
    e.cause.contains("UNIQUE constraint failed") && e.cause.contains(constraint)
}

async fn require_user(app: &App, user: &UserId) -> Result<(), ApiError> {
    let exists: Option<Value> = app.db.first("user exists", &users::exists(user)).await?;
    exists.map(|_| ()).ok_or(ApiError::NotFound("user"))
}

/// An optional string field, trimmed and cut to `max` characters; empty is absent.
fn optional_text(body: &Value, name: &str, max: usize) -> Result<Option<String>, FieldError> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            Ok(Some(s.trim().chars().take(max).collect::<String>()).filter(|s| !s.is_empty()))
        }
        Some(_) => Err(FieldError::new(name, "invalid_value", "must be a string")),
    }
}

fn header_text(req: &Request, name: &str, max: usize) -> Option<String> {
    req.headers()
        .get(name)
        .ok()
        .flatten()
        .map(|v| v.trim().chars().take(max).collect::<String>())
        .filter(|v| !v.is_empty())
}

/// `POST /admin/users/:id/sessions {ttl_secs?, ip?, user_agent?}`: a session and its token for
/// the user (what the app's login does after it has authenticated someone). The sign-in is
/// logged in `signin_logs` with the client's ip (`cf-connecting-ip`) and `User-Agent`, or with
/// the `ip` and `user_agent` the login passes on for its own user.
async fn create_session(mut req: Request, ctx: &Ctx) -> ApiResult {
    let app = &ctx.data;
    let actor = auth::operator(&req, app).await?.actor()?;
    let user = user_id(ctx)?;
    let body = json_body(&mut req, 4 * 1024).await.or_else(|e| match e {
        // an empty body means "defaults"
        ApiError::BadRequest { .. } => Ok(json!({})),
        other => Err(other),
    })?;
    only_fields(&body, &["ttl_secs", "ip", "user_agent"], Expected::OneOf)?;
    let ttl = match body.get("ttl_secs") {
        None | Some(Value::Null) => app.cfg.session_ttl_secs,
        Some(v) => v
            .as_i64()
            .filter(|n| (60..=365 * 24 * 3600).contains(n))
            .ok_or_else(|| {
                FieldError::new(
                    "ttl_secs",
                    "invalid_value",
                    "must be an integer from 60 to 31536000",
                )
            })?,
    };
    let origin = auth::Origin {
        ip: optional_text(&body, "ip", session::MAX_IP_CHARS)?
            .or_else(|| header_text(&req, "cf-connecting-ip", session::MAX_IP_CHARS)),
        user_agent: optional_text(&body, "user_agent", session::MAX_USER_AGENT_CHARS)?
            .or_else(|| header_text(&req, "user-agent", session::MAX_USER_AGENT_CHARS)),
    };
    require_user(app, &user).await?;
    // The audit row is written in the session's own batch: no session without its record.
    let record = audit(
        &actor,
        "session.open",
        &user.to_string(),
        &json!({"ttl_secs": ttl, "ip": origin.ip, "user_agent": origin.user_agent}),
    );
    let opened = auth::open_session(app, &user, ttl, &origin, record).await?;
    json(
        &json!({
            "token": opened.token,
            "user_id": user.to_string(),
            "session_id": opened.sid,
            "created_at": opened.created_at,
            "expires_at": opened.expires_at,
        }),
        201,
    )
}

#[derive(Deserialize)]
struct SigninRow {
    id: String,
    ip: Option<String>,
    user_agent: Option<String>,
    created_at: i64,
}

/// `GET /admin/users/:id/signins?limit=`: the user's sign-ins (`signin_logs`), newest first.
async fn signins(req: Request, ctx: &Ctx) -> ApiResult {
    let app = &ctx.data;
    auth::operator(&req, app).await?;
    let user = user_id(ctx)?;
    let limit = page(&req, &SIGNINS_PAGE)?.limit;
    require_user(app, &user).await?;
    let found: Vec<SigninRow> = app
        .db
        .all("list signins", &session::signins(&user, limit))
        .await?;
    let signins: Vec<Value> = found
        .into_iter()
        .map(|r| json!({"id": r.id, "ip": r.ip, "user_agent": r.user_agent, "created_at": r.created_at}))
        .collect();
    json(
        &json!({"user_id": user.to_string(), "signins": signins}),
        200,
    )
}

/// `POST /admin/users/:id/grants {credits, expires_at?, reference, note?}`: gift credits once
/// per `reference`.
async fn grant(mut req: Request, ctx: &Ctx) -> ApiResult {
    let app = &ctx.data;
    let actor = auth::operator(&req, app).await?.actor()?;
    let user = user_id(ctx)?;
    let body = json_body(&mut req, 16 * 1024).await?;
    only_fields(
        &body,
        &["credits", "reference", "note", "expires_at"],
        Expected::OneOf,
    )?;
    let credits = credits_field(&body, "credits", 0)?;
    if credits == 0 {
        return Err(FieldError::new("credits", "invalid_value", "must be positive").into());
    }
    let reference = string_field(&body, "reference", 128)?;
    let note = body
        .get("note")
        .and_then(Value::as_str)
        .unwrap_or("operator grant")
        .chars()
        .take(500)
        .collect::<String>();
    let expires_at = match body.get("expires_at") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_i64().ok_or_else(|| {
            FieldError::new("expires_at", "invalid_value", "must be unix seconds")
        })?),
    };
    require_user(app, &user).await?;
    let uid = user.to_string();
    let id = ledger::operator_gift_id(&uid, &reference);
    let stmt = ledger::operator_gift(&uid, &reference, Credits(credits), expires_at, &note, now());
    // A repeated reference fails the grant's insert, and with it the whole batch: no audit row
    // for a grant that was not made.
    let record = audit(
        &actor,
        "grant.create",
        &uid,
        &json!({"grant_id": id, "credits": credits, "expires_at": expires_at, "reference": reference}),
    );
    match app.db.batch("grant credits", &[stmt, record]).await {
        Ok(_) => json(
            &json!({"id": id, "user_id": user.to_string(), "credits": credits, "expires_at": expires_at}),
            201,
        ),
        Err(e) if is_unique(&e, "") => Err(ApiError::Conflict {
            code: "grant_exists",
            message: "a grant with this reference exists for this user".into(),
        }),
        Err(e) => Err(e.into()),
    }
}

/// `GET /admin/users?q=&limit=&cursor=`: newest first; `q` is an email prefix or a user id.
async fn list(req: Request, app: &App) -> ApiResult {
    auth::operator(&req, app).await?;
    let q = query(&req, "q")
        .map(|q| q.trim().to_owned())
        .filter(|q| !q.is_empty());
    if q.as_ref().is_some_and(|q| q.len() > 320) {
        return Err(ApiError::bad_request(
            "invalid_filter",
            "q is at most 320 characters",
        ));
    }
    let page = page(&req, &CURSOR_PAGE)?;
    let found: Vec<Value> = app
        .db
        .all("admin list users", &users::search(q, &page))
        .await?;
    let (users, next) = page.split(found, created_cursor);
    json(&json!({"users": users, "next_cursor": next}), 200)
}

/// `GET /admin/users/:id`: the user, the balance as `GET /api/balance` derives it, the newest
/// ledger rows (with what each grant has been drawn), subscriptions, and tasks by status.
async fn show(req: Request, ctx: &Ctx) -> ApiResult {
    let app = &ctx.data;
    auth::operator(&req, app).await?;
    let user = user_id(ctx)?;
    let at = shared::edge::now();
    let results = app
        .db
        .batch(
            "admin user",
            &[
                users::row(&user),
                ledger::balance_query(&user, at),
                ledger::recent_entries(&user, LEDGER_ROWS + 1),
                orders::subscriptions_of(&user),
                admin_views::user_tasks_by_status(&user),
                admin_views::user_orders_by_status(&user),
            ],
        )
        .await?;
    let table = |i: usize| rows_at::<Value>(&results, i);
    let mut view = table(0)?
        .into_iter()
        .next()
        .ok_or(ApiError::NotFound("user"))?;
    let balance = table(1)?
        .first()
        .and_then(|r| r["balance"].as_i64())
        .unwrap_or(0);
    let mut ledger = table(2)?;
    let more = ledger.len() > usize::try_from(LEDGER_ROWS).unwrap_or(0);
    ledger.truncate(usize::try_from(LEDGER_ROWS).unwrap_or(0));
    view["balance"] = json!(balance);
    view["ledger"] = json!(ledger);
    view["ledger_more"] = json!(more);
    view["subscriptions"] = json!(table(3)?);
    view["tasks_by_status"] = json!(by_status(&table(4)?));
    view["orders_by_status"] = json!(by_status(&table(5)?));
    json(&view, 200)
}
