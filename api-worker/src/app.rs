//! Request state and routing. Every handler returns `Result<Response, ApiError>`; this module
//! turns errors (and the router's own 404/405) into the one JSON error shape and logs one line
//! per request.

use crate::config::{self, Config};
use crate::error::{json_response, ApiError, ApiResult};
use crate::{admin, audit, catalog, files, ops, orders, tasks, webhooks};
use shared::edge::{log, now_ms, Db, IoCounts, IoError, StepExt};
use std::rc::Rc;
use worker::{Bucket, Env, KvStore, Queue, Request, Response, RouteContext, Router};

pub struct App {
    pub env: Env,
    /// Read from the environment once per isolate (`build`): variables and secrets do not change
    /// while an isolate lives.
    pub cfg: Rc<Config>,
    pub io: Rc<IoCounts>,
    pub db: Db,
    /// A renewed session token for this request's response (`auth::SESSION_TOKEN_HEADER`).
    pub session_token: std::cell::RefCell<Option<String>>,
}

impl App {
    pub fn kv(&self) -> Result<KvStore, IoError> {
        self.env.kv(config::KV).step("binding KV")
    }
    pub fn bucket(&self) -> Result<Bucket, IoError> {
        self.env.bucket(config::BUCKET).step("binding BUCKET")
    }
    pub fn tasks_queue(&self) -> Result<Queue, IoError> {
        self.env.queue(config::TASKS).step("binding TASKS")
    }
    /// Sends `token` (a renewal of the caller's session) back with this request's response.
    pub fn hand_over(&self, token: String) {
        *self.session_token.borrow_mut() = Some(token);
    }
}

pub type Ctx = RouteContext<Rc<App>>;

/// The OpenAPI document, served as committed: `openapi.rs` builds it and its test keeps
/// `api-worker/openapi.json` equal (the worker carries no code that builds it).
const OPENAPI_JSON: &str = include_str!("../openapi.json");

fn openapi_response() -> Response {
    let built = Response::ok(OPENAPI_JSON).and_then(|mut r| {
        r.headers_mut().set("content-type", "application/json")?;
        Ok(r)
    });
    built.unwrap_or_else(|_| {
        json_response(
            &serde_json::json!({"error": {"code": "unavailable", "message": "openapi.json"}}),
            503,
        )
    })
}

/// The rate limits, by binding name (see `[[ratelimits]]` in wrangler.toml).
#[derive(Clone, Copy)]
pub enum Limit {
    Submit,
    Order,
    AuthFailure,
    WebhookFailure,
}

impl Limit {
    fn binding(self) -> &'static str {
        match self {
            Limit::Submit => "SUBMIT_LIMIT",
            Limit::Order => "ORDER_LIMIT",
            Limit::AuthFailure => "AUTH_FAILURE_LIMIT",
            Limit::WebhookFailure => "WEBHOOK_FAILURE_LIMIT",
        }
    }
}

/// Every limit's period, in seconds: what `Retry-After` says.
const LIMIT_PERIOD_SECS: u32 = 60;

impl App {
    /// Counts one event against `limit` for `key`; over the limit it is a 429.
    pub async fn limit(&self, limit: Limit, key: &str) -> Result<(), ApiError> {
        let outcome = self
            .env
            .rate_limiter(limit.binding())
            .step(format!("binding {}", limit.binding()))?
            .limit(key.to_owned())
            .await
            .step("rate limit")?;
        if outcome.success {
            Ok(())
        } else {
            Err(ApiError::TooManyRequests(LIMIT_PERIOD_SECS))
        }
    }
}

/// The client's address as Cloudflare reports it.
pub fn client_ip(req: &Request) -> String {
    req.headers()
        .get("cf-connecting-ip")
        .ok()
        .flatten()
        .unwrap_or_else(|| "unknown".into())
}

pub async fn handle(req: Request, env: Env) -> Response {
    let started = now_ms();
    let method = req.method().to_string();
    let path = req.path();
    let io = Rc::new(IoCounts::default());
    // CORS (cors.rs): a preflight is answered before anything else; every other answer, errors
    // included, gets the headers its Origin calls for.
    let cors = crate::cors::decide(&req, &env);
    let response = match crate::cors::preflight(&cors) {
        Some(answer) => answer,
        None => crate::cors::apply(
            &cors,
            match build(&env, io.clone()) {
                Ok(app) => route(req, env, Rc::new(app)).await,
                Err(e) => e.into_response(),
            },
        ),
    };
    log(serde_json::json!({
        "event": "http",
        "method": method,
        "path": path,
        "status": response.status_code(),
        "ms": now_ms().saturating_sub(started),
        "io": io.to_json(),
    }));
    response
}

thread_local! {
    /// The configuration, once it has been read successfully in this isolate.
    static CONFIG: std::cell::RefCell<Option<Rc<Config>>> = const { std::cell::RefCell::new(None) };
}

fn build(env: &Env, io: Rc<IoCounts>) -> Result<App, ApiError> {
    let cfg = match CONFIG.with(|c| c.borrow().clone()) {
        Some(cfg) => cfg,
        None => {
            // a broken configuration is not kept: every request reports it until it is fixed
            let cfg = Rc::new(Config::from_env(env).map_err(ApiError::Misconfigured)?);
            CONFIG.with(|c| *c.borrow_mut() = Some(cfg.clone()));
            cfg
        }
    };
    let db = Db::new(env, config::DB, io.clone())?;
    Ok(App {
        env: env.clone(),
        cfg,
        io,
        db,
        session_token: Default::default(),
    })
}

fn reply(result: ApiResult) -> worker::Result<Response> {
    Ok(result.unwrap_or_else(ApiError::into_response))
}

async fn route(req: Request, env: Env, app: Rc<App>) -> Response {
    let ip = client_ip(&req);
    let webhook = req.path().starts_with("/webhooks/");
    let mut response = dispatch(req, env, app.clone()).await;
    if let Some(token) = app.session_token.borrow_mut().take() {
        let _ = response
            .headers_mut()
            .set(crate::auth::SESSION_TOKEN_HEADER, &token);
    }
    // Failed authentication and signatures are counted per client; past the limit the client
    // gets 429 instead of another 401, whatever it sends.
    if response.status_code() == 401 {
        let limit = if webhook {
            Limit::WebhookFailure
        } else {
            Limit::AuthFailure
        };
        if let Err(e) = app.limit(limit, &ip).await {
            return e.into_response();
        }
    }
    response
}

async fn dispatch(req: Request, env: Env, app: Rc<App>) -> Response {
    let router = Router::with_data(app)
        .get_async("/api/health", |_, ctx| async move {
            reply(tasks::health(&ctx.data).await)
        })
        .get("/api/openapi.json", |_, _| Ok(openapi_response()))
        .post_async("/api/tasks", |req, ctx| async move {
            reply(tasks::submit(req, &ctx.data).await)
        })
        .get_async("/api/tasks", |req, ctx| async move {
            reply(tasks::list(&req, &ctx.data).await)
        })
        .get_async("/api/tasks/:id", |req, ctx| async move {
            reply(tasks::get(&req, &ctx).await)
        })
        .get_async("/api/tasks/:id/results/:n", |req, ctx| async move {
            reply(tasks::result(&req, &ctx).await)
        })
        // history (issue 13): deleting, sharing, lasting links, the user's own view
        .delete_async("/api/tasks/:id", |req, ctx| async move {
            reply(crate::history::delete_one(&req, &ctx).await)
        })
        .post_async("/api/tasks/delete", |req, ctx| async move {
            reply(crate::history::delete_many(req, &ctx).await)
        })
        .post_async("/api/tasks/:id/shares", |req, ctx| async move {
            reply(crate::shares::create(&req, &ctx).await)
        })
        .get_async("/api/shares", |req, ctx| async move {
            reply(crate::shares::list(&req, &ctx.data).await)
        })
        .get_async("/api/shares/:id", |_, ctx| async move {
            reply(crate::shares::read(&ctx).await)
        })
        .delete_async("/api/shares/:id", |req, ctx| async move {
            reply(crate::shares::revoke(&req, &ctx).await)
        })
        .get_async("/api/shares/:id/images/:n", |req, ctx| async move {
            reply(crate::shares::image(&req, &ctx).await)
        })
        .get_async("/api/images/:id/:n", |req, ctx| async move {
            reply(crate::links::get(&req, &ctx).await)
        })
        .get_async("/api/me", |req, ctx| async move {
            reply(crate::me::me(&req, &ctx.data).await)
        })
        .get_async("/api/me/ledger", |req, ctx| async move {
            reply(crate::me::ledger(&req, &ctx.data).await)
        })
        .post_async("/api/auth/signout", |req, ctx| async move {
            reply(tasks::sign_out(&req, &ctx.data, false).await)
        })
        .post_async("/api/auth/signout-all", |req, ctx| async move {
            reply(tasks::sign_out(&req, &ctx.data, true).await)
        })
        .get_async("/api/auth/sessions", |req, ctx| async move {
            reply(crate::auth::list_sessions(req, &ctx.data).await)
        })
        .delete_async("/api/auth/sessions/:id", |req, ctx| async move {
            reply(crate::auth::revoke_session(req, &ctx).await)
        })
        .get_async("/api/balance", |req, ctx| async move {
            reply(tasks::balance(&req, &ctx.data).await)
        })
        .post_async("/admin/users", |req, ctx| async move {
            reply(admin::create_user(req, &ctx.data).await)
        })
        .post_async("/admin/users/:id/sessions", |req, ctx| async move {
            reply(admin::create_session(req, &ctx).await)
        })
        .post_async("/admin/users/:id/grants", |req, ctx| async move {
            reply(admin::grant(req, &ctx).await)
        })
        .get_async("/admin/users/:id/signins", |req, ctx| async move {
            reply(admin::signins(req, &ctx).await)
        })
        .get_async("/admin/users", |req, ctx| async move {
            reply(crate::admin_users::list(req, &ctx.data).await)
        })
        .get_async("/admin/users/:id", |req, ctx| async move {
            reply(crate::admin_users::show(req, &ctx).await)
        })
        .get_async("/admin/orders", |req, ctx| async move {
            reply(crate::admin_users::list_orders(req, &ctx.data).await)
        })
        .get_async("/admin/stats", |req, ctx| async move {
            reply(crate::admin_stats::stats(req, &ctx.data).await)
        })
        .get_async("/admin/tasks/:id/timeline", |req, ctx| async move {
            reply(crate::admin_tasks::timeline(req, &ctx).await)
        })
        .post_async("/api/orders", |req, ctx| async move {
            reply(orders::create(req, &ctx.data).await)
        })
        .get_async("/api/orders", |req, ctx| async move {
            reply(orders::list(req, &ctx.data).await)
        })
        .get_async("/api/orders/:id", |req, ctx| async move {
            reply(orders::get(req, &ctx).await)
        })
        .get_async("/api/subscription", |req, ctx| async move {
            reply(orders::subscription(req, &ctx.data).await)
        })
        .get_async("/api/catalog", |_, ctx| async move {
            reply(catalog::public(&ctx.data).await)
        })
        .get_async("/admin/catalog", |req, ctx| async move {
            reply(catalog::show(req, &ctx.data).await)
        })
        .put_async("/admin/catalog", |req, ctx| async move {
            reply(catalog::update(req, &ctx.data).await)
        })
        .post_async("/webhooks/creem", |req, ctx| async move {
            reply(webhooks::creem(req, &ctx.data).await)
        })
        .get_async("/admin/cron/runs", |req, ctx| async move {
            reply(ops::list_cron_runs(req, &ctx.data).await)
        })
        .post_async("/admin/cron/:job", |req, ctx| async move {
            reply(ops::run_cron_job(req, &ctx).await)
        })
        .get_async("/admin/orders/stats", |req, ctx| async move {
            reply(ops::order_stats(req, &ctx.data).await)
        })
        .get_async("/admin/storage", |req, ctx| async move {
            reply(ops::storage_stats(req, &ctx.data).await)
        })
        .get_async("/admin/webhook-events", |req, ctx| async move {
            reply(ops::list_webhook_events(req, &ctx.data).await)
        })
        .get_async("/admin/audit", |req, ctx| async move {
            reply(audit::run(req, &ctx.data).await)
        })
        .get_async("/admin/audit-log", |req, ctx| async move {
            reply(crate::audit_log::list(req, &ctx.data).await)
        })
        .post_async("/webhooks/ai/:provider", |req, ctx| async move {
            reply(webhooks::ai_callback(req, &ctx).await)
        })
        .get_async("/admin/dead-letters", |req, ctx| async move {
            reply(ops::list_dead_letters(req, &ctx.data).await)
        })
        .post_async("/admin/dead-letters/replay", |req, ctx| async move {
            reply(ops::bulk(req, &ctx.data, ops::Bulk::Replay).await)
        })
        .post_async("/admin/dead-letters/discard", |req, ctx| async move {
            reply(ops::bulk(req, &ctx.data, ops::Bulk::Discard).await)
        })
        .get_async("/admin/dead-letters/:id", |req, ctx| async move {
            reply(ops::show_dead_letter(req, &ctx).await)
        })
        .post_async("/admin/dead-letters/:id/replay", |req, ctx| async move {
            reply(ops::replay_one(req, &ctx).await)
        })
        .post_async("/admin/dead-letters/:id/discard", |req, ctx| async move {
            reply(ops::discard_one(req, &ctx).await)
        })
        .get_async("/admin/tasks", |req, ctx| async move {
            reply(ops::list_tasks(req, &ctx.data).await)
        })
        .get_async("/admin/tasks/:id", |req, ctx| async move {
            reply(ops::show_task(req, &ctx).await)
        })
        .post_async("/admin/tasks/:id/retry", |req, ctx| async move {
            reply(ops::retry_task(req, &ctx).await)
        })
        .post_async("/admin/queues/:queue/messages", |req, ctx| async move {
            reply(ops::send_messages(req, &ctx).await)
        })
        .get_async("/files/*key", |req, ctx| async move {
            reply(files::get(&req, &ctx).await)
        })
        .head_async("/files/*key", |req, ctx| async move {
            reply(files::get(&req, &ctx).await)
        });
    match router.run(req, env).await {
        Ok(r) if r.status_code() == 404 && !is_json(&r) => {
            ApiError::NotFound("route").into_response()
        }
        Ok(r) if r.status_code() == 405 && !is_json(&r) => {
            ApiError::MethodNotAllowed.into_response()
        }
        Ok(r) => r,
        Err(e) => ApiError::Unavailable(IoError {
            step: "router".into(),
            cause: e.to_string(),
        })
        .into_response(),
    }
}

fn is_json(r: &Response) -> bool {
    r.headers()
        .get("content-type")
        .ok()
        .flatten()
        .is_some_and(|c| c.starts_with("application/json"))
}

/// A JSON body with a status.
pub fn json(value: &serde_json::Value, status: u16) -> ApiResult {
    Ok(json_response(value, status))
}

/// A request body, read whole and capped. Over the cap is a 413 whatever the header said.
pub async fn body_bytes(req: &mut Request, cap: usize) -> Result<Vec<u8>, ApiError> {
    let declared = req
        .headers()
        .get("content-length")
        .ok()
        .flatten()
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > cap) {
        return Err(ApiError::TooLarge(format!("body larger than {cap} bytes")));
    }
    let bytes = req.bytes().await.map_err(|_| {
        ApiError::bad_request("unreadable_body", "the request body could not be read")
    })?;
    if bytes.len() > cap {
        return Err(ApiError::TooLarge(format!("body larger than {cap} bytes")));
    }
    Ok(bytes)
}

/// A JSON object body.
pub async fn json_body(req: &mut Request, cap: usize) -> Result<serde_json::Value, ApiError> {
    let bytes = body_bytes(req, cap).await?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request("invalid_json", format!("body is not valid JSON: {e}"))
    })?;
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "invalid_json",
            "body must be a JSON object",
        ));
    }
    Ok(value)
}

/// A query parameter.
pub fn query(req: &Request, name: &str) -> Option<String> {
    req.url()
        .ok()?
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}
