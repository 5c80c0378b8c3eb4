//! Request state and routing. Every handler returns `Result<Response, ApiError>`; this module
//! turns errors (and the router's own 404/405) into the one JSON error shape and logs one line
//! per request.

use crate::config::{self, Config};
use crate::error::{json_response, ApiError, ApiResult};
use crate::{admin, files, ops, orders, tasks, webhooks};
use shared::edge::{log, now_ms, Db, IoCounts, IoError, StepExt};
use std::rc::Rc;
use worker::{Bucket, Env, KvStore, Queue, Request, Response, RouteContext, Router};

pub struct App {
    pub env: Env,
    pub cfg: Config,
    pub io: Rc<IoCounts>,
    pub db: Db,
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
}

pub type Ctx = RouteContext<Rc<App>>;

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
    let response = match build(&env, io.clone()) {
        Ok(app) => route(req, env, Rc::new(app)).await,
        Err(e) => e.into_response(),
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

fn build(env: &Env, io: Rc<IoCounts>) -> Result<App, ApiError> {
    let cfg = Config::from_env(env).map_err(ApiError::Misconfigured)?;
    let db = Db::new(env, config::DB, io.clone())?;
    Ok(App {
        env: env.clone(),
        cfg,
        io,
        db,
    })
}

fn reply(result: ApiResult) -> worker::Result<Response> {
    Ok(result.unwrap_or_else(ApiError::into_response))
}

async fn route(req: Request, env: Env, app: Rc<App>) -> Response {
    let ip = client_ip(&req);
    let webhook = req.path().starts_with("/webhooks/");
    let response = dispatch(req, env, app.clone()).await;
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
        .get("/api/openapi.json", |_, _| {
            Ok(json_response(&crate::openapi::document(), 200))
        })
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
        .post_async("/api/auth/signout", |req, ctx| async move {
            reply(tasks::sign_out(&req, &ctx.data, false).await)
        })
        .post_async("/api/auth/signout-all", |req, ctx| async move {
            reply(tasks::sign_out(&req, &ctx.data, true).await)
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
