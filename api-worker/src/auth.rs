//! Who is calling. Users present `Authorization: Bearer <JWT>`: an HS256 token from the app's
//! login (minted here by `POST /admin/users/{id}/sessions`), checked for signature, algorithm,
//! issuer and expiry, whose session must still be in the user's KV session list (so sign-out
//! revokes it). Operators present the admin token from secrets, compared in constant time.

use crate::app::{App, Limit};
use crate::error::ApiError;
use shared::edge::{now, IoError, StepExt};
use shared::ids::UserId;
use shared::session::{self, SessionList, TokenError};
use shared::signing::ct_eq;
use worker::Request;

/// An authenticated user and the session their token names.
pub struct Caller {
    pub user: UserId,
    pub sid: String,
}

fn bearer(req: &Request) -> Result<String, ApiError> {
    let header = req
        .headers()
        .get("authorization")
        .ok()
        .flatten()
        .ok_or(ApiError::Unauthorized("missing Authorization header"))?;
    let (scheme, token) = header
        .trim()
        .split_once(' ')
        .ok_or(ApiError::Unauthorized("malformed Authorization header"))?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() || token.len() > 4096 {
        return Err(ApiError::Unauthorized("expected a Bearer token"));
    }
    Ok(token.to_owned())
}

fn token_error(e: TokenError) -> ApiError {
    ApiError::Unauthorized(match e {
        TokenError::Malformed => "the token is not a well-formed JWT",
        TokenError::BadSignature => "the token's signature or algorithm is not valid",
        TokenError::Expired => "the token has expired",
        TokenError::WrongIssuer => "the token was not issued by this service",
    })
}

async fn sessions(app: &App, user: &UserId) -> Result<SessionList, IoError> {
    app.io.kv();
    Ok(app
        .kv()?
        .get(&session::sessions_key(user))
        .json::<SessionList>()
        .await
        .step("kv get sessions")?
        .unwrap_or_default())
}

async fn store_sessions(app: &App, user: &UserId, list: &SessionList) -> Result<(), IoError> {
    app.io.kv();
    let kv = app.kv()?;
    let key = session::sessions_key(user);
    match list.expires_at() {
        // the entry lives as long as its longest session (KV wants at least 60 s ahead)
        Some(until) => kv
            .put(&key, serde_json::to_string(list).unwrap_or_default())
            .step("kv put sessions")?
            .expiration(u64::try_from(until.max(now() + 61)).unwrap_or(0))
            .execute()
            .await
            .step("kv put sessions"),
        None => kv.delete(&key).await.step("kv delete sessions"),
    }
}

/// The user and session a bearer token names, if its signature, issuer and expiry hold.
fn claimed(req: &Request, app: &App) -> Result<(UserId, String), ApiError> {
    let token = bearer(req)?;
    session::verify(
        app.cfg.jwt_secret.as_bytes(),
        &app.cfg.jwt_issuer,
        &token,
        now(),
    )
    .map_err(token_error)
}

fn live(list: Result<SessionList, IoError>, sid: &str) -> Result<(), ApiError> {
    if list?.is_live(sid, now()) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized("the session has been signed out"))
    }
}

/// The caller behind a user token.
pub async fn caller(req: &Request, app: &App) -> Result<Caller, ApiError> {
    let (user, sid) = claimed(req, app)?;
    live(sessions(app, &user).await, &sid)?;
    Ok(Caller { user, sid })
}

/// The user behind a request's token.
pub async fn user(req: &Request, app: &App) -> Result<UserId, ApiError> {
    caller(req, app).await.map(|c| c.user)
}

/// The user behind a request's token, counted against their `limit`. The token's signature names
/// the user, so the session lookup and the rate limiter run side by side: one wait instead of
/// two on the hot path. A signed-out session is still a 401, whatever the limiter says.
pub async fn user_within(req: &Request, app: &App, limit: Limit) -> Result<UserId, ApiError> {
    let (user, sid) = claimed(req, app)?;
    let key = user.to_string();
    let (list, limited) = futures::join!(sessions(app, &user), app.limit(limit, &key));
    live(list, &sid)?;
    limited?;
    Ok(user)
}

/// Passes only the admin token. A user's token is refused with 403, anything else 401.
pub async fn admin(req: &Request, app: &App) -> Result<(), ApiError> {
    let token = bearer(req)?;
    if ct_eq(&token, &app.cfg.admin_token) {
        return Ok(());
    }
    match session::verify(
        app.cfg.jwt_secret.as_bytes(),
        &app.cfg.jwt_issuer,
        &token,
        now(),
    ) {
        Ok(_) => Err(ApiError::Forbidden("admin routes need the admin token")),
        Err(_) => Err(ApiError::Unauthorized("invalid token")),
    }
}

/// Opens a session for `user`: records it in the user's KV list and returns its token.
pub async fn open_session(
    app: &App,
    user: &UserId,
    ttl_secs: i64,
) -> Result<(String, i64), ApiError> {
    let at = now();
    let expires_at = at + ttl_secs;
    let sid = uuid::Uuid::new_v4().simple().to_string();
    let mut list = sessions(app, user).await?;
    list.add(&sid, expires_at, at);
    store_sessions(app, user, &list).await?;
    let token = session::mint(
        app.cfg.jwt_secret.as_bytes(),
        &app.cfg.jwt_issuer,
        user,
        &sid,
        at,
        expires_at,
    )
    .map_err(|e| {
        ApiError::Unavailable(IoError {
            step: "mint token".into(),
            cause: e.to_string(),
        })
    })?;
    Ok((token, expires_at))
}

/// Ends the caller's session, or every session of the user. Returns how many ended.
pub async fn sign_out(app: &App, caller: &Caller, everywhere: bool) -> Result<usize, ApiError> {
    let mut list = sessions(app, &caller.user).await?;
    let before = list.sessions.len();
    if everywhere {
        list.sessions.clear();
    } else {
        list.remove(&caller.sid);
    }
    store_sessions(app, &caller.user, &list).await?;
    Ok(before - list.sessions.len())
}
