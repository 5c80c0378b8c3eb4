//! The api worker's configuration, read and checked from `Env` once per isolate
//! (`context::App::build`). What users can buy is not configuration: it lives in D1 `settings`
//! (see `settings.rs`), changed without a redeploy.

use shared::cors::Origins;
use shared::edge::{number, required, var, ConfigError};
use worker::Env;

pub struct Config {
    /// Where this API is reachable from outside (for signed file URLs given to providers).
    pub public_base_url: String,
    /// Signs time-limited file URLs.
    pub files_signing_key: String,
    /// Operators' bearer token for `/admin/`.
    pub admin_token: String,
    /// Signs and verifies users' session tokens (HS256), shared with the app's login.
    pub jwt_secret: String,
    /// The `iss` our tokens carry and must carry.
    pub jwt_issuer: String,
    /// Seconds a task may take from submission before it fails.
    pub task_deadline_secs: i64,
    /// Largest request body we read.
    pub max_body_bytes: usize,
    /// Largest single uploaded image.
    pub max_upload_bytes: usize,
    /// Lifetime of a signed file URL.
    pub signed_url_ttl_secs: i64,
    /// Lifetime of a new session when none is asked for.
    pub session_ttl_secs: i64,
    /// When set, kie.ai callbacks must carry a valid `X-Webhook-Signature`.
    pub kie_webhook_secret: Option<String>,
    /// Queue names as bound in wrangler.toml (dead letters record which queue they came from).
    pub tasks_queue_name: String,
    pub events_queue_name: String,
    /// Fault injection for tests: every enqueue is sent twice. Off unless "true".
    pub chaos_duplicate_sends: bool,
    /// The payment provider (Creem's API, or the local simulator).
    pub creem_base_url: String,
    pub creem_api_key: String,
    /// Secrets that may have signed a Creem webhook (`creem-signature`); several during rotation.
    pub creem_webhook_secrets: Vec<String>,
    /// `whsec_…` secrets for Standard Webhooks deliveries (`webhook-signature`).
    pub standard_webhook_secrets: Vec<String>,
    /// Where Creem sends the buyer after paying.
    pub checkout_success_url: String,
}

/// A comma-separated list variable (empty entries dropped).
fn list(env: &Env, name: &str) -> Vec<String> {
    var(env, name)
        .map(|v| {
            v.split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

fn positive(env: &Env, name: &str, default: i64) -> Result<i64, ConfigError> {
    let n = number(env, name, default)?;
    if n <= 0 {
        return Err(ConfigError(format!("{name} must be positive, got {n}")));
    }
    Ok(n)
}

fn size(env: &Env, name: &str, default: i64) -> Result<usize, ConfigError> {
    usize::try_from(positive(env, name, default)?)
        .map_err(|_| ConfigError(format!("{name} is too large")))
}

/// The browser origins allowed to call the API with credentials (`CORS_ALLOWED_ORIGINS`:
/// comma-separated exact origins, `scheme://host[:port]`; unset or empty: none). Read on its own
/// by `cors.rs` before a request is routed, so that even a misconfigured answer carries CORS
/// headers; checked again by [`Config::from_env`] so a bad list is a 503 `misconfigured`.
pub fn cors_allowed_origins(env: &Env) -> Result<Origins, ConfigError> {
    Origins::parse(&var(env, "CORS_ALLOWED_ORIGINS").unwrap_or_default())
        .map_err(|e| ConfigError(format!("CORS_ALLOWED_ORIGINS: {e}")))
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        cors_allowed_origins(env)?;
        let public_base_url = required(env, "PUBLIC_BASE_URL")?
            .trim_end_matches('/')
            .to_owned();
        if !(public_base_url.starts_with("http://") || public_base_url.starts_with("https://")) {
            return Err(ConfigError(format!(
                "PUBLIC_BASE_URL must be an http(s) URL, got {public_base_url:?}"
            )));
        }
        let files_signing_key = required(env, "FILES_SIGNING_KEY")?;
        let admin_token = required(env, "ADMIN_TOKEN")?;
        if admin_token.len() < 16 || files_signing_key.len() < 16 {
            return Err(ConfigError(
                "ADMIN_TOKEN and FILES_SIGNING_KEY must be at least 16 characters".into(),
            ));
        }
        let jwt_secret = required(env, "JWT_SECRET")?;
        if jwt_secret.len() < 32 {
            return Err(ConfigError(
                "JWT_SECRET must be at least 32 characters".into(),
            ));
        }
        Ok(Self {
            public_base_url,
            files_signing_key,
            admin_token,
            jwt_secret,
            jwt_issuer: var(env, "JWT_ISSUER").unwrap_or_else(|| "edgeline".into()),
            task_deadline_secs: positive(env, "TASK_DEADLINE_SECS", 15 * 60)?,
            max_body_bytes: size(env, "MAX_BODY_BYTES", 25 * 1024 * 1024)?,
            max_upload_bytes: size(env, "MAX_UPLOAD_BYTES", 10 * 1024 * 1024)?,
            signed_url_ttl_secs: positive(env, "SIGNED_URL_TTL_SECS", 3600)?,
            session_ttl_secs: positive(env, "SESSION_TTL_SECS", 30 * 24 * 3600)?,
            kie_webhook_secret: var(env, "KIE_WEBHOOK_SECRET"),
            tasks_queue_name: var(env, "TASKS_QUEUE_NAME")
                .unwrap_or_else(|| "edgeline-tasks".into()),
            events_queue_name: var(env, "EVENTS_QUEUE_NAME")
                .unwrap_or_else(|| "edgeline-events".into()),
            chaos_duplicate_sends: var(env, "CHAOS_DUPLICATE_SENDS").as_deref() == Some("true"),
            creem_base_url: required(env, "CREEM_BASE_URL")?
                .trim_end_matches('/')
                .to_owned(),
            creem_api_key: required(env, "CREEM_API_KEY")?,
            creem_webhook_secrets: list(env, "CREEM_WEBHOOK_SECRETS"),
            standard_webhook_secrets: list(env, "STANDARD_WEBHOOK_SECRETS"),
            checkout_success_url: var(env, "CHECKOUT_SUCCESS_URL")
                .unwrap_or_else(|| "https://example.com/paid".into()),
        })
    }
}

/// Binding names, as in wrangler.toml.
pub const DB: &str = "DB";
pub const BUCKET: &str = "BUCKET";
pub const KV: &str = "KV";
pub const TASKS: &str = "TASKS";
pub const EVENTS: &str = "EVENTS";
