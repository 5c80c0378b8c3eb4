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
    /// How long the models usually take to generate (`TYPICAL_GENERATION_SECS`, 0 if unset):
    /// the first poll waits that long and then the poll policy's first wait, since the
    /// provider's callback normally comes first (`shared::retry::first_poll_delay`).
    pub typical_generation_secs: u32,
    pub transient: Policy,
    /// Queue names as bound in wrangler.toml, to tell which queue a batch came from.
    pub queues: QueueNames,
    /// How long a task may go without a sign of life before the reconciler re-sends its step
    /// (`TASK_LEASE_SECS`, the cron worker's setting of the same name): a poll chain renews it.
    pub task_lease_secs: i64,
    /// Fault injection for tests: send every follow-up message twice, as an at-least-once
    /// queue may deliver it. Off unless CHAOS_DUPLICATE_SENDS is "true".
    pub chaos_duplicate_sends: bool,
}

/// The queues this worker consumes, by name. Read without the rest of the configuration, so a
/// misconfigured consumer still knows its dead-letter queue and archives what reaches it.
pub struct QueueNames {
    pub tasks: String,
    pub events: String,
    pub dead_letters: String,
}

impl QueueNames {
    pub fn from_env(env: &Env) -> Self {
        let name = |var: &str, default: &str| {
            shared::edge::var(env, var).unwrap_or_else(|| default.to_owned())
        };
        QueueNames {
            tasks: name("TASKS_QUEUE_NAME", "edgeline-tasks"),
            events: name("EVENTS_QUEUE_NAME", "edgeline-events"),
            dead_letters: name("DEAD_LETTER_QUEUE_NAME", "edgeline-dead-letters"),
        }
    }
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
            typical_generation_secs: u32::try_from(number(env, "TYPICAL_GENERATION_SECS", 0)?)
                .map_err(|_| {
                    ConfigError(
                        "TYPICAL_GENERATION_SECS must be a number of seconds, 0 or more".into(),
                    )
                })?,
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
            queues: QueueNames::from_env(env),
            task_lease_secs: secs(env, "TASK_LEASE_SECS", 300)?
                .as_secs()
                .try_into()
                .unwrap_or(300),
            chaos_duplicate_sends: shared::edge::var(env, "CHAOS_DUPLICATE_SENDS").as_deref()
                == Some("true"),
        })
    }
}

pub const DB: &str = "DB";
pub const BUCKET: &str = "BUCKET";
pub const KV: &str = "KV";
pub const TASKS: &str = "TASKS";
pub const EVENTS: &str = "EVENTS";
