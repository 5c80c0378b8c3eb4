//! Who is calling. Users present `Authorization: Bearer <JWT>`: an HS256 token from the app's
//! login (minted here by `POST /admin/users/{id}/sessions`), checked for signature, algorithm,
//! issuer and expiry, whose session must be live. Operators present the admin token from
//! secrets, compared in constant time: [`operator`] is the guard of every admin route, and the
//! [`Operator`] it passes names who acts (`X-Actor`) for the audit rows of those that change
//! something.
//!
//! Sessions (`shared::session`): D1 `sessions` is the truth, KV `session:{id}` a cache of each
//! live session. The check reads that one KV key (beside the rate limiter where there is one);
//! D1 only when this location has no copy. Sliding renewal hands a token past its refresh time a
//! new one in [`SESSION_TOKEN_HEADER`], on every user route but the rate-limited writes (task
//! submission and orders, which stay at one KV read). Opening, renewing and ending sessions is
//! here as well; the user's routes over their sessions are `sessions.rs`.

use crate::batch::rows_at;
use crate::context::{App, Limit};
use crate::error::ApiError;
use serde::Deserialize;
use serde_json::json;
use shared::edge::{changes, log, now, number, ConfigError, IoError, StepExt};
use shared::ids::UserId;
use shared::session::{self, CachedSession, Renewal, SessionRow, TokenError, Verified};
use shared::signing::ct_eq;
use shared::sql::Stmt;
use worker::Request;

/// The response header that carries a renewed token. Clients replace their token with it; the
/// old one stays valid until its own expiry.
pub const SESSION_TOKEN_HEADER: &str = "x-session-token";

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

fn signed_out() -> ApiError {
    ApiError::Unauthorized("the session has been signed out")
}

/// What the request's token says, if its signature, issuer and expiry hold.
fn claimed(req: &Request, app: &App) -> Result<Verified, ApiError> {
    let token = bearer(req)?;
    session::verify_token(
        app.cfg.jwt_secret.as_bytes(),
        &app.cfg.jwt_issuer,
        &token,
        now(),
    )
    .map_err(token_error)
}

/// `SESSION_REFRESH_SECS`: how old a session's newest token may get before its next use renews it.
fn refresh_secs(app: &App) -> Result<i64, ApiError> {
    let n = number(
        &app.env,
        "SESSION_REFRESH_SECS",
        session::DEFAULT_REFRESH_SECS,
    )
    .map_err(ApiError::Misconfigured)?;
    if n <= 0 {
        return Err(ApiError::Misconfigured(ConfigError(format!(
            "SESSION_REFRESH_SECS must be positive, got {n}"
        ))));
    }
    Ok(n)
}

fn mint(
    app: &App,
    user: &UserId,
    sid: &str,
    issued_at: i64,
    expires_at: i64,
) -> Result<String, ApiError> {
    session::mint(
        app.cfg.jwt_secret.as_bytes(),
        &app.cfg.jwt_issuer,
        user,
        sid,
        issued_at,
        expires_at,
    )
    .map_err(|e| {
        ApiError::Unavailable(IoError {
            step: "mint token".into(),
            cause: e.to_string(),
        })
    })
}

// ---------------------------------------------------------------------------------------------
// The cache: one KV key per live session
// ---------------------------------------------------------------------------------------------

/// This location's KV copy of a session.
async fn cached(app: &App, sid: &str) -> Result<Option<CachedSession>, IoError> {
    app.io.kv();
    app.kv()?
        .get(&session::session_key(sid))
        .json::<CachedSession>()
        .await
        .step("kv get session")
}

/// Puts a session's key, expiring with the session.
async fn remember(app: &App, sid: &str, record: &CachedSession) -> Result<(), IoError> {
    app.io.kv();
    app.kv()?
        .put(
            &session::session_key(sid),
            serde_json::to_string(record).unwrap_or_default(),
        )
        .step("kv put session")?
        .expiration(u64::try_from(record.kv_expiration(now())).unwrap_or(0))
        .execute()
        .await
        .step("kv put session")
}

/// Deletes a session's key. KV takes one write per second per key, so a delete right after a put
/// of the same key may be refused: then the cron deletes it within its next run
/// (`App::delete_kv`).
async fn forget(app: &App, sid: &str) -> Result<(), IoError> {
    app.delete_kv(&session::session_key(sid)).await
}

/// Deletes the keys of sessions D1 has revoked; every key is tried, the first failure returned.
async fn forget_all(app: &App, sids: &[String]) -> Result<(), IoError> {
    let outcomes = futures::future::join_all(sids.iter().map(|sid| forget(app, sid))).await;
    outcomes.into_iter().collect::<Result<Vec<()>, IoError>>()?;
    Ok(())
}

/// The session as D1 has it.
async fn stored(app: &App, sid: &str) -> Result<Option<SessionRow>, IoError> {
    app.db.first("session", &session::lookup(sid)).await
}

/// Whether D1 says the session is live.
async fn live_in_d1(app: &App, sid: &str) -> Result<bool, IoError> {
    Ok(stored(app, sid).await?.is_some_and(|r| r.is_live(now())))
}

/// Puts a key that a revoke may have deleted meanwhile, then reads D1 again and deletes it if
/// the session is no longer live: a put never outlives a revoke. `Ok(false)` when it was revoked.
async fn put_then_confirm(app: &App, sid: &str, record: &CachedSession) -> Result<bool, IoError> {
    remember(app, sid, record).await?;
    match live_in_d1(app, sid).await {
        Ok(true) => Ok(true),
        Ok(false) => {
            // revoked meanwhile: refused whether or not its copy could be taken away now
            if let Err(e) = forget(app, sid).await {
                log_failure("session.forget_failed", sid, &e);
            }
            Ok(false)
        }
        Err(e) => {
            // unknown: drop the copy; the next use reads D1 again
            let _ = forget(app, sid).await;
            Err(e)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The check
// ---------------------------------------------------------------------------------------------

/// The token's session if it is live: this location's KV copy in the common case; D1 when there
/// is none (a session too new to have reached this location, or one that was revoked).
async fn check(
    app: &App,
    v: &Verified,
    copy: Result<Option<CachedSession>, IoError>,
) -> Result<CachedSession, ApiError> {
    let user = v.user.to_string();
    match copy? {
        Some(c) if c.user == user => Ok(c),
        Some(_) => Err(signed_out()),
        None => {
            let row = stored(app, &v.sid)
                .await?
                .filter(|r| r.user_id == user && r.is_live(now()))
                .ok_or_else(signed_out)?;
            let record = row.cached();
            // Missing here well after it was opened (lost put, or a renewal whose put failed):
            // put it back, so later requests read KV again.
            if now() - row.created_at > session::REFILL_AFTER_SECS {
                match put_then_confirm(app, &v.sid, &record).await {
                    Ok(true) => {}
                    Ok(false) => return Err(signed_out()),
                    Err(e) => log_failure("session.refill_failed", &v.sid, &e),
                }
            }
            Ok(record)
        }
    }
}

fn log_failure(event: &str, sid: &str, e: &IoError) {
    log(
        json!({"level": "error", "event": event, "session": sid, "step": e.step, "cause": e.cause}),
    );
}

/// Sliding renewal: a newer token in [`SESSION_TOKEN_HEADER`] when the session has one or is due.
/// A failed renewal is logged, not the request's failure: the presented token is still valid.
async fn renew_if_due(app: &App, v: &Verified, current: &CachedSession) -> Result<(), ApiError> {
    let refresh = refresh_secs(app)?;
    let at = now();
    match session::renewal(
        v.issued_at,
        current.refreshed_at,
        current.expires_at,
        at,
        refresh,
    ) {
        Renewal::Keep => {}
        Renewal::Newer {
            issued_at,
            expires_at,
        } => app.hand_over(mint(app, &v.user, &v.sid, issued_at, expires_at)?),
        Renewal::Due { newest } => match renew(app, v, newest, at, refresh).await {
            Ok(Some(token)) => app.hand_over(token),
            Ok(None) => {}
            Err(ApiError::Unavailable(e)) => log_failure("session.renew_failed", &v.sid, &e),
            Err(e) => return Err(e),
        },
    }
    Ok(())
}

#[derive(Deserialize)]
struct Renewed {
    created_at: i64,
    expires_at: i64,
}

/// Renews the session (compare-and-set in D1, once per refresh period), puts its new copy, and
/// returns the new token. `None` when another request renewed it first and D1 has nothing newer
/// for this token, or when it was revoked meanwhile.
async fn renew(
    app: &App,
    v: &Verified,
    newest: i64,
    at: i64,
    refresh: i64,
) -> Result<Option<String>, ApiError> {
    let won: Option<Renewed> = app
        .db
        .first(
            "renew session",
            &session::renew(&v.sid, &v.user, newest, at, refresh),
        )
        .await?;
    let Some(won) = won else {
        // Lost the race (or this location's copy is behind): hand over what D1 has, if newer.
        return Ok(match stored(app, &v.sid).await? {
            Some(r) if r.is_live(at) && r.refreshed_at > v.issued_at => {
                Some(mint(app, &v.user, &v.sid, r.refreshed_at, r.expires_at)?)
            }
            _ => None,
        });
    };
    let record = CachedSession {
        user: v.user.to_string(),
        created_at: won.created_at,
        refreshed_at: at,
        expires_at: won.expires_at,
    };
    match put_then_confirm(app, &v.sid, &record).await {
        Ok(true) => {}
        // revoked meanwhile: its key is gone again, and no token is handed out
        Ok(false) => return Ok(None),
        // D1 has renewed it, and the new token is valid; this location's copy catches up when
        // it expires (the check then reads D1 and puts it back)
        Err(e) => log_failure("session.renew_cache_failed", &v.sid, &e),
    }
    log(
        json!({"event": "session.renewed", "session": v.sid, "user": v.user.to_string(),
               "issued_at": at, "expires_at": won.expires_at}),
    );
    Ok(Some(mint(app, &v.user, &v.sid, at, won.expires_at)?))
}

/// The caller behind a user token; with `renew`, a token past its refresh time gets a new one.
pub async fn authenticate(req: &Request, app: &App, renew: bool) -> Result<Caller, ApiError> {
    let v = claimed(req, app)?;
    let copy = cached(app, &v.sid).await;
    let current = check(app, &v, copy).await?;
    if renew {
        renew_if_due(app, &v, &current).await?;
    }
    Ok(Caller {
        user: v.user,
        sid: v.sid,
    })
}

/// The caller behind a user token (no renewal: for signing out).
pub async fn caller(req: &Request, app: &App) -> Result<Caller, ApiError> {
    authenticate(req, app, false).await
}

/// The user behind a request's token; a token past its refresh time gets a new one.
pub async fn user(req: &Request, app: &App) -> Result<UserId, ApiError> {
    authenticate(req, app, true).await.map(|c| c.user)
}

/// The user behind a request's token, counted against their `limit`. The token's signature names
/// the session, so the session's KV read and the rate limiter run side by side: one wait instead
/// of two on the hot path, and no D1 unless this location has no copy of the session. A
/// signed-out session is still a 401, whatever the limiter says. No renewal here.
pub async fn user_within(req: &Request, app: &App, limit: Limit) -> Result<UserId, ApiError> {
    let v = claimed(req, app)?;
    let key = v.user.to_string();
    let (copy, limited) = futures::join!(cached(app, &v.sid), app.limit(limit, &key));
    check(app, &v, copy).await?;
    limited?;
    Ok(v.user)
}

// ---------------------------------------------------------------------------------------------
// Operators
// ---------------------------------------------------------------------------------------------

/// A request that carried the admin token ([`operator`]).
pub struct Operator {
    x_actor: Option<String>,
}

impl Operator {
    /// Who acts: the `X-Actor` header (an operator's name), else "admin". Bounded and of a small
    /// alphabet, so it is safe in logs and rows; anything else is 400 `invalid_actor`. Only the
    /// routes that change something ask (right after the guard), so only they refuse a bad one.
    pub fn actor(self) -> Result<String, ApiError> {
        match self.x_actor {
            None => Ok("admin".into()),
            Some(a)
                if !a.is_empty()
                    && a.len() <= 64
                    && a.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "._@-".contains(c)) =>
            {
                Ok(a)
            }
            Some(_) => Err(ApiError::bad_request(
                "invalid_actor",
                "X-Actor must be 1-64 characters of [A-Za-z0-9._@-]",
            )),
        }
    }
}

/// The guard of every admin route: passes only the admin token. A user's token is refused with
/// 403, anything else 401.
pub async fn operator(req: &Request, app: &App) -> Result<Operator, ApiError> {
    let token = bearer(req)?;
    if ct_eq(&token, &app.cfg.admin_token) {
        return Ok(Operator {
            x_actor: req.headers().get("x-actor").ok().flatten(),
        });
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

// ---------------------------------------------------------------------------------------------
// Opening and ending sessions
// ---------------------------------------------------------------------------------------------

/// Where a sign-in came from (kept in `sessions` and `signin_logs`).
pub struct Origin {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

/// A session just opened.
pub struct Opened {
    pub token: String,
    pub sid: String,
    pub created_at: i64,
    pub expires_at: i64,
}

#[derive(Deserialize)]
struct IdRow {
    id: String,
}

/// Opens a session for `user`, lasting `ttl_secs` per token: its KV key first, then one D1 batch
/// with the session, its `signin_logs` row, `audit` and the end of the oldest sessions beyond
/// the cap. The insert is refused when the user signed out everywhere after this sign-in began
/// (409 `signed_out_everywhere`); no token is handed out unless the batch committed.
pub async fn open_session(
    app: &App,
    user: &UserId,
    ttl_secs: i64,
    origin: &Origin,
    audit: Stmt,
) -> Result<Opened, ApiError> {
    let at = now();
    let expires_at = at + ttl_secs;
    let sid = uuid::Uuid::new_v4().simple().to_string();
    let token = mint(app, user, &sid, at, expires_at)?;
    let record = CachedSession {
        user: user.to_string(),
        created_at: at,
        refreshed_at: at,
        expires_at,
    };
    // The key before the row: nobody has the token yet, and any revoke needs the row, so any
    // revoke's delete comes after this put.
    remember(app, &sid, &record).await?;
    let new = session::NewSession {
        id: &sid,
        user,
        now: at,
        ttl_secs,
        user_agent: origin.user_agent.as_deref(),
        ip: origin.ip.as_deref(),
    };
    let log_id = uuid::Uuid::new_v4().simple().to_string();
    let stmts = [
        session::insert(&new),
        session::signin_log(&new, &log_id),
        audit,
        session::evict(user, &sid, at),
    ];
    let results = match app.db.batch("open session", &stmts).await {
        Ok(r) => r,
        Err(e) => {
            // the key of a session that never was (its token was never handed out)
            if let Err(f) = forget(app, &sid).await {
                log_failure("session.cleanup_failed", &sid, &f);
            }
            return Err(if e.cause.contains(session::REFUSED) {
                ApiError::Conflict {
                    code: "signed_out_everywhere",
                    message: "the user signed out everywhere while this session was being opened; open it again".into(),
                }
            } else {
                e.into()
            });
        }
    };
    let evicted: Vec<IdRow> = rows_at(&results, 3)?;
    let evicted: Vec<String> = evicted.into_iter().map(|r| r.id).collect();
    if let Err(e) = forget_all(app, &evicted).await {
        // D1 has ended them (the list and renewal say so); their copies expire with them
        log_failure("session.evict_failed", &sid, &e);
    }
    Ok(Opened {
        token,
        sid,
        created_at: at,
        expires_at,
    })
}

#[derive(Deserialize)]
struct OwnedRow {
    expires_at: i64,
}

/// Revokes one of the user's sessions and deletes its key. `None` when it is not the user's
/// (or does not exist); else how many sessions this call ended (0 if it was already ended: the
/// key is deleted again, so a retry after a KV failure finishes the job).
pub async fn revoke(app: &App, user: &UserId, sid: &str) -> Result<Option<usize>, ApiError> {
    let at = now();
    let results = app
        .db
        .batch(
            "revoke session",
            &[session::revoke(sid, user, at), session::owned(sid, user)],
        )
        .await?;
    let ended = results.first().map(changes).unwrap_or(0);
    let owned: Vec<OwnedRow> = rows_at(&results, 1)?;
    let Some(row) = owned.first() else {
        return Ok(None);
    };
    if row.expires_at > at || ended > 0 {
        forget(app, sid).await?;
    }
    Ok(Some(ended))
}

/// Sign-out-everywhere: raises the user's mark and revokes every session in one D1 batch, then
/// deletes their keys (and those of sessions revoked in the last hour, for a retry). How many
/// sessions it ended.
pub async fn sign_out_everywhere(app: &App, user: &UserId) -> Result<usize, ApiError> {
    let results = app
        .db
        .batch("sign out everywhere", &session::revoke_all(user, now()))
        .await?;
    let ended = results.get(1).map(changes).unwrap_or(0);
    let keys: Vec<IdRow> = rows_at(&results, 2)?;
    let keys: Vec<String> = keys.into_iter().map(|r| r.id).collect();
    forget_all(app, &keys).await?;
    Ok(ended)
}

/// Ends the caller's session, or every session of the user. Returns how many ended.
pub async fn sign_out(app: &App, caller: &Caller, everywhere: bool) -> Result<usize, ApiError> {
    if everywhere {
        sign_out_everywhere(app, &caller.user).await
    } else {
        Ok(revoke(app, &caller.user, &caller.sid)
            .await?
            .unwrap_or_default())
    }
}
