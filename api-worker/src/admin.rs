//! Operators' routes. For now: create users, grant credits, open sessions (the stand-in for the
//! app's login until JWTs arrive). Every route needs the admin token.

use crate::app::{json, json_body, App, Ctx};
use crate::auth;
use crate::error::{ApiError, ApiResult};
use serde_json::{json, Value};
use shared::edge::{now, IoError};
use shared::ids::{Credits, UserId};
use shared::ledger::{self, EntryKind, NewGrant, Stmt};
use shared::submit::FieldError;
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

/// `POST /admin/users/:id/sessions {ttl_secs?}`: a session and its token for the user (what the
/// app's login does after it has authenticated someone).
pub async fn create_session(mut req: Request, ctx: &Ctx) -> ApiResult {
    let app = &ctx.data;
    auth::admin(&req, app).await?;
    let user = user_param(ctx)?;
    let body = json_body(&mut req, 4 * 1024).await.or_else(|e| match e {
        // an empty body means "defaults"
        ApiError::BadRequest { .. } => Ok(json!({})),
        other => Err(other),
    })?;
    only(&body, &["ttl_secs"])?;
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
    require_user(app, &user).await?;
    let (token, expires_at) = auth::open_session(app, &user, ttl).await?;
    json(
        &json!({"token": token, "user_id": user.to_string(), "expires_at": expires_at}),
        201,
    )
}

/// `POST /admin/users/:id/grants {credits, expires_at?, reference, note?}`: gift credits once
/// per `reference`.
pub async fn grant(mut req: Request, ctx: &Ctx) -> ApiResult {
    let app = &ctx.data;
    auth::admin(&req, app).await?;
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
    match app.db.run("grant credits", &stmt).await {
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
