//! Operators' routes for users: create users, grant credits, open sessions (what the app's login
//! calls) and list their sign-ins. Every route needs the admin token, and every change writes one
//! `admin_audit` row with who made it (`X-Actor`) in the same D1 batch as the change.

use crate::app::{json, json_body, query, App, Ctx};
use crate::audit_log::{actor, audit};
use crate::auth;
use crate::error::{ApiError, ApiResult};
use serde::Deserialize;
use serde_json::{json, Value};
use shared::edge::{now, IoError};
use shared::ids::{Credits, UserId};
use shared::ledger::{self, EntryKind, NewGrant};
use shared::session;
use shared::sql::Stmt;
use shared::validation::FieldError;
use worker::Request;

fn field_err(field: &str, code: &'static str, message: &str) -> ApiError {
    FieldError {
        field: field.into(),
        code,
        message: message.into(),
    }
    .into()
}

/// Refuses fields the route does not take, naming the first one.
fn only(body: &Value, allowed: &[&str]) -> Result<(), ApiError> {
    match body
        .as_object()
        .and_then(|o| o.keys().find(|k| !allowed.contains(&k.as_str())))
    {
        Some(unknown) => Err(field_err(
            unknown,
            "unknown_field",
            &format!("unknown field; expected one of {}", allowed.join(", ")),
        )),
        None => Ok(()),
    }
}

fn string_field(body: &Value, name: &str, max: usize) -> Result<String, ApiError> {
    let s = body
        .get(name)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            field_err(
                name,
                "required",
                "is required and must be a non-empty string",
            )
        })?;
    if s.len() > max {
        return Err(field_err(name, "too_long", "is too long"));
    }
    Ok(s.to_owned())
}

fn credits_field(body: &Value, name: &str, default: i64) -> Result<i64, ApiError> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_i64()
            .filter(|n| (0..=1_000_000_000).contains(n))
            .ok_or_else(|| {
                field_err(
                    name,
                    "invalid_value",
                    "must be an integer from 0 to 1000000000",
                )
            }),
    }
}

fn user_param(ctx: &Ctx) -> Result<UserId, ApiError> {
    UserId::parse(ctx.param("id").map(String::as_str).unwrap_or_default())
        .map_err(|e| ApiError::bad_request("invalid_id", e.to_string()))
}

/// `POST /admin/users {email, name, credits?}`: a user with an optional starting gift.
pub async fn create_user(mut req: Request, app: &App) -> ApiResult {
    auth::admin(&req, app).await?;
    let actor = actor(&req)?;
    let body = json_body(&mut req, 16 * 1024).await?;
    only(&body, &["email", "name", "credits"])?;
    let email = string_field(&body, "email", 320)?;
    if !email.contains('@') {
        return Err(field_err(
            "email",
            "invalid_value",
            "must be an email address",
        ));
    }
    let name = string_field(&body, "name", 200)?;
    let credits = credits_field(&body, "credits", 0)?;
    let user = UserId::new();
    let at = now();
    let mut stmts = vec![Stmt::new(
        "INSERT INTO users (id, email, name, credits, created_at, updated_at) VALUES (?1, ?2, ?3, 0, ?4, ?4)",
        vec![user.to_string().into(), email.clone().into(), name.clone().into(), at.into()],
    )];
    if credits > 0 {
        let uid = user.to_string();
        stmts.push(ledger::grant(NewGrant {
            id: format!("gift:{uid}:signup"),
            user: &uid,
            kind: EntryKind::Gift,
            amount: Credits(credits),
            entity: ("signup", &uid),
            expires_at: None,
            note: "starting credits",
            now: at,
        }));
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

fn is_unique(e: &IoError, constraint: &str) -> bool {
    e.cause.contains("UNIQUE constraint failed") && e.cause.contains(constraint)
}

async fn require_user(app: &App, user: &UserId) -> Result<(), ApiError> {
    let exists: Option<Value> = app
        .db
        .first(
            "user exists",
            &Stmt::new(
                "SELECT id FROM users WHERE id = ?1",
                vec![user.to_string().into()],
            ),
        )
        .await?;
    exists.map(|_| ()).ok_or(ApiError::NotFound("user"))
}

/// An optional string field, trimmed and cut to `max` characters; empty is absent.
fn optional_text(body: &Value, name: &str, max: usize) -> Result<Option<String>, ApiError> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            Ok(Some(s.trim().chars().take(max).collect::<String>()).filter(|s| !s.is_empty()))
        }
        Some(_) => Err(field_err(name, "invalid_value", "must be a string")),
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
pub async fn create_session(mut req: Request, ctx: &Ctx) -> ApiResult {
    let app = &ctx.data;
    auth::admin(&req, app).await?;
    let actor = actor(&req)?;
    let user = user_param(ctx)?;
    let body = json_body(&mut req, 4 * 1024).await.or_else(|e| match e {
        // an empty body means "defaults"
        ApiError::BadRequest { .. } => Ok(json!({})),
        other => Err(other),
    })?;
    only(&body, &["ttl_secs", "ip", "user_agent"])?;
    let ttl = match body.get("ttl_secs") {
        None | Some(Value::Null) => app.cfg.session_ttl_secs,
        Some(v) => v
            .as_i64()
            .filter(|n| (60..=365 * 24 * 3600).contains(n))
            .ok_or_else(|| {
                field_err(
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
pub async fn signins(req: Request, ctx: &Ctx) -> ApiResult {
    let app = &ctx.data;
    auth::admin(&req, app).await?;
    let user = user_param(ctx)?;
    let limit = match query(&req, "limit") {
        None => 50,
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=200).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request("invalid_query", "limit must be an integer from 1 to 200")
            })?,
    };
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
pub async fn grant(mut req: Request, ctx: &Ctx) -> ApiResult {
    let app = &ctx.data;
    auth::admin(&req, app).await?;
    let actor = actor(&req)?;
    let user = user_param(ctx)?;
    let body = json_body(&mut req, 16 * 1024).await?;
    only(&body, &["credits", "reference", "note", "expires_at"])?;
    let credits = credits_field(&body, "credits", 0)?;
    if credits == 0 {
        return Err(field_err("credits", "invalid_value", "must be positive"));
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
        Some(v) => Some(
            v.as_i64()
                .ok_or_else(|| field_err("expires_at", "invalid_value", "must be unix seconds"))?,
        ),
    };
    require_user(app, &user).await?;
    let id = format!("gift:{user}:{reference}");
    let uid = user.to_string();
    let stmt = ledger::grant(NewGrant {
        id: id.clone(),
        user: &uid,
        kind: EntryKind::Gift,
        amount: Credits(credits),
        entity: ("admin", &format!("{user}:{reference}")),
        expires_at,
        note: &note,
        now: now(),
    });
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
        Err(e) if e.cause.contains("UNIQUE constraint failed") => Err(ApiError::Conflict {
            code: "grant_exists",
            message: "a grant with this reference exists for this user".into(),
        }),
        Err(e) => Err(e.into()),
    }
}
