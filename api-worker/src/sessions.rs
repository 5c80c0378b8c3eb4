//! The user's own sessions (`/api/auth/…`): list them, end one (the current one too), sign out
//! here or everywhere. Tokens of ended sessions are refused from then on; how sessions are
//! checked, renewed and ended is `auth.rs`.

use crate::auth;
use crate::context::{reply, App};
use crate::error::{json, ApiError, ApiResult};
use crate::router::{Ctx, Routes};
use serde_json::json;
use shared::edge::now;
use shared::session::{self, SessionRow};
use worker::Request;

pub fn routes(r: Routes) -> Routes {
    r.post_async("/api/auth/signout", |req, ctx| async move {
        reply(sign_out(&req, &ctx.data, false).await)
    })
    .post_async("/api/auth/signout-all", |req, ctx| async move {
        reply(sign_out(&req, &ctx.data, true).await)
    })
    .get_async("/api/auth/sessions", |req, ctx| async move {
        reply(list_sessions(req, &ctx.data).await)
    })
    .delete_async("/api/auth/sessions/:id", |req, ctx| async move {
        reply(revoke_session(req, &ctx).await)
    })
}

/// `POST /api/auth/signout`: ends the caller's session; `POST /api/auth/signout-all`: every session
/// of the caller.
async fn sign_out(req: &Request, app: &App, everywhere: bool) -> ApiResult {
    let caller = auth::caller(req, app).await?;
    let ended = auth::sign_out(app, &caller, everywhere).await?;
    json(&json!({"signed_out": ended}), 200)
}

/// `GET /api/auth/sessions`: the caller's live sessions, newest first, the current one marked.
async fn list_sessions(req: Request, app: &App) -> ApiResult {
    let caller = auth::authenticate(&req, app, true).await?;
    let sessions: Vec<SessionRow> = app
        .db
        .all("list sessions", &session::list(&caller.user, now()))
        .await?;
    let sessions: Vec<_> = sessions
        .iter()
        .map(|s| {
            json!({
                "id": s.id,
                "created_at": s.created_at,
                "last_used_at": s.last_used_at,
                "expires_at": s.expires_at,
                "user_agent": s.user_agent,
                "ip": s.ip,
                "current": s.id == caller.sid,
            })
        })
        .collect();
    json(&json!({ "sessions": sessions }), 200)
}

/// `DELETE /api/auth/sessions/:id`: revokes one of the caller's sessions (the current one too).
/// Another user's session, or none, is a 404; an already ended one of the caller's is a 200
/// that ended nothing.
async fn revoke_session(req: Request, ctx: &Ctx) -> ApiResult {
    let app = &ctx.data;
    let caller = auth::caller(&req, app).await?;
    let sid = ctx.param("id").map(String::as_str).unwrap_or_default();
    if !session::is_session_id(sid) {
        return Err(ApiError::NotFound("session"));
    }
    let ended = auth::revoke(app, &caller.user, sid)
        .await?
        .ok_or(ApiError::NotFound("session"))?;
    json(
        &json!({"id": sid, "signed_out": ended, "current": sid == caller.sid}),
        200,
    )
}
