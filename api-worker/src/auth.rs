//! Who is calling. Users present `Authorization: Bearer <token>`; the token's SHA-256 names a
//! session record in KV (as the seeds keep sessions) with an expiry. Operators present the
//! admin token from secrets.

use crate::app::App;
use crate::error::ApiError;
use serde::{Deserialize, Serialize};
use shared::edge::{now, StepExt};
use shared::ids::UserId;
use shared::keys::session_key;
use shared::signing::{ct_eq, token_digest};
use worker::Request;

#[derive(Debug, Serialize, Deserialize)]
pub struct SessionRecord {
    pub user_id: String,
    pub expires_at: i64,
}

fn bearer(req: &Request) -> Result<String, ApiError> {
    let header = req
        .headers()
        .get("authorization")
        .ok()
        .flatten()
        .ok_or(ApiError::Unauthorized("missing Authorization header"))?;
    let (scheme, token) = header.trim().split_once(' ').ok_or(ApiError::Unauthorized("malformed Authorization header"))?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() || token.len() > 512 {
        return Err(ApiError::Unauthorized("expected a Bearer token"));
    }
    Ok(token.to_owned())
}

async fn session(app: &App, token: &str) -> Result<Option<UserId>, ApiError> {
    app.io.kv();
    let record: Option<SessionRecord> =
        app.kv()?.get(&session_key(&token_digest(token))).json().await.step("kv get session")?;
    Ok(record.filter(|r| r.expires_at > now()).and_then(|r| UserId::parse(&r.user_id).ok()))
}

/// The user behind a request's token.
pub async fn user(req: &Request, app: &App) -> Result<UserId, ApiError> {
    let token = bearer(req)?;
    session(app, &token).await?.ok_or(ApiError::Unauthorized("invalid or expired token"))
}

/// Passes only the admin token. A valid user token is refused with 403, anything else 401.
pub async fn admin(req: &Request, app: &App) -> Result<(), ApiError> {
    let token = bearer(req)?;
    if ct_eq(&token, &app.cfg.admin_token) {
        return Ok(());
    }
    match session(app, &token).await? {
        Some(_) => Err(ApiError::Forbidden("admin routes need the admin token")),
        None => Err(ApiError::Unauthorized("invalid token")),
    }
}
