//! The consumer's configuration, read once per batch.

use shared::edge::{number, required, ConfigError};
use shared::retry::Policy;
use std::time::Duration;
use worker::Env;

pub struct Config {
    pub kie_base_url: String,
    pub kie_api_key: String,
    pub public_base_url: String,
    pub files_signing_key: String,
    pub max_result_bytes: usize,
    pub poll: Policy,
    pub transient: Policy,
    /// Queue names as bound in wrangler.toml, to tell which queue a batch came from.
    pub tasks_queue: String,
    pub events_queue: String,
    pub dead_letter_queue: String,
    /// Fault injection for tests: send every follow-up message twice, as an at-least-once
    /// queue may deliver it. Off unless CHAOS_DUPLICATE_SENDS is "true".
    pub chaos_duplicate_sends: bool,
    /// What users can buy: how payment events map to packs and plans.
    pub catalog: shared::catalog::Catalog,
}

fn secs(env: &Env, name: &str, default: u64) -> Result<Duration, ConfigError> {
    let n = number(env, name, i64::try_from(default).unwrap_or(i64::MAX))?;
    u64::try_from(n)
        .ok()
        .filter(|n| *n > 0)
        .map(Duration::from_secs)
        .ok_or_else(|| ConfigError(format!("{name} must be a positive number of seconds")))
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let max_attempts = number(env, "MAX_TRANSIENT_ATTEMPTS", 8)?;
        Ok(Self {
            kie_base_url: required(env, "KIE_BASE_URL")?
                .trim_end_matches('/')
                .to_owned(),
            kie_api_key: required(env, "KIE_API_KEY")?,
            public_base_url: required(env, "PUBLIC_BASE_URL")?
                .trim_end_matches('/')
                .to_owned(),
            files_signing_key: required(env, "FILES_SIGNING_KEY")?,
            max_result_bytes: usize::try_from(number(env, "MAX_RESULT_BYTES", 20 * 1024 * 1024)?)
                .map_err(|_| {
                ConfigError("MAX_RESULT_BYTES must be positive".into())
            })?,
            poll: Policy {
                initial: secs(env, "POLL_INITIAL_SECS", Policy::POLL.initial.as_secs())?,
                max: secs(env, "POLL_MAX_SECS", Policy::POLL.max.as_secs())?,
                ..Policy::POLL
            },
            transient: Policy {
                initial: secs(
                    env,
                    "RETRY_INITIAL_SECS",
                    Policy::TRANSIENT.initial.as_secs(),
                )?,
                max: secs(env, "RETRY_MAX_SECS", Policy::TRANSIENT.max.as_secs())?,
                max_attempts: u32::try_from(max_attempts)
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| ConfigError("MAX_TRANSIENT_ATTEMPTS must be positive".into()))?,
                ..Policy::TRANSIENT
            },
            tasks_queue: required(env, "TASKS_QUEUE_NAME")?,
            events_queue: required(env, "EVENTS_QUEUE_NAME")?,
            dead_letter_queue: required(env, "DEAD_LETTER_QUEUE_NAME")?,
            chaos_duplicate_sends: shared::edge::var(env, "CHAOS_DUPLICATE_SENDS").as_deref()
                == Some("true"),
            catalog: shared::catalog::Catalog::parse(&required(env, "CATALOG")?)
                .map_err(ConfigError)?,
        })
    }
}

pub const DB: &str = "DB";
pub const BUCKET: &str = "BUCKET";
pub const KV: &str = "KV";
pub const TASKS: &str = "TASKS";
pub const EVENTS: &str = "EVENTS";
