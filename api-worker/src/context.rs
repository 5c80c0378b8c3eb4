//! What every handler is given: the request's [`App`] (configuration, D1, I/O counts, the
//! bindings, rate limits, and a renewed session token to send back), and how it answers
//! ([`reply`]). Here, not in `app.rs`, so that handlers and the route table (`router`, which
//! carries the `App` in a route's `Ctx`) both depend on this module and not on each other.

use crate::config::{self, Config};
use crate::error::{ApiError, ApiResult};
use shared::edge::{Db, IoCounts, IoError, StepExt};
use std::cell::RefCell;
use std::rc::Rc;
use worker::{Bucket, Env, KvStore, Queue, Response};

pub struct App {
    pub env: Env,
    /// Read from the environment once per isolate (`build`): variables and secrets do not change
    /// while an isolate lives.
    pub cfg: Rc<Config>,
    pub io: Rc<IoCounts>,
    pub db: Db,
    /// A renewed session token for this request's response (`auth::SESSION_TOKEN_HEADER`).
    pub session_token: RefCell<Option<String>>,
}

/// A handler's answer as the route table takes it: an error becomes its JSON response here, so
/// no handler's error reaches the table.
pub fn reply(result: ApiResult) -> worker::Result<Response> {
    Ok(result.unwrap_or_else(ApiError::into_response))
}

thread_local! {
    /// The configuration, once it has been read successfully in this isolate.
    static CONFIG: RefCell<Option<Rc<Config>>> = const { RefCell::new(None) };
}

impl App {
    /// The state of one request, its I/O counted in `io`.
    pub fn build(env: &Env, io: Rc<IoCounts>) -> Result<App, ApiError> {
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

    pub fn kv(&self) -> Result<KvStore, IoError> {
        self.env.kv(config::KV).step("binding KV")
    }

    /// Deletes a KV key now, or, when KV refuses (one write per second per key: a delete just
    /// after a put of the same key), lists it for the cron's `clear_kv_keys` job
    /// (`shared::kv_deletes`) rather than waiting in the isolate. An error only if both failed.
    pub async fn delete_kv(&self, key: &str) -> Result<(), IoError> {
        self.io.kv();
        let refused = match self.kv()?.delete(key).await.step("kv delete") {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        shared::edge::log(
            serde_json::json!({"level": "warn", "event": "kv.delete_deferred",
                                             "key": key, "cause": refused.to_string()}),
        );
        self.db
            .run(
                "defer kv delete",
                &shared::kv_deletes::defer(key, shared::edge::now()),
            )
            .await
            .map(|_| ())
    }
    pub fn bucket(&self) -> Result<Bucket, IoError> {
        self.env.bucket(config::BUCKET).step("binding BUCKET")
    }
    pub fn tasks_queue(&self) -> Result<Queue, IoError> {
        self.env.queue(config::TASKS).step("binding TASKS")
    }
    pub fn events_queue(&self) -> Result<Queue, IoError> {
        self.env.queue(config::EVENTS).step("binding EVENTS")
    }

    /// Sends `token` (a renewal of the caller's session) back with this request's response.
    pub fn hand_over(&self, token: String) {
        *self.session_token.borrow_mut() = Some(token);
    }

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
