//! Adapters over the Workers runtime that every worker uses: counted D1 access that binds
//! [`Stmt`]s, counted outbound fetches with a timeout, I/O errors with context, JSON log lines,
//! clock and configuration.
//! Only built with the `edge` feature (the workers); the domain above stays runtime-free.

use crate::sql::{Param, Stmt};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::pin::pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::Duration;
use worker::wasm_bindgen::JsValue;
use worker::{
    AbortController, BatchMessageBuilder, D1Database, D1PreparedStatement, D1Result, Delay, Env,
    Fetch, Queue, QueueContentType, RawMessageBuilder, Response,
};

/// Calls this invocation made, by kind, for the per-message log line and the cost benchmark.
#[derive(Debug, Default)]
pub struct IoCounts {
    pub d1_round_trips: Cell<u32>,
    pub d1_statements: Cell<u32>,
    /// Rows D1 read and wrote (`meta.rows_read` / `rows_written`; index updates count as rows
    /// written): what D1 bills.
    pub d1_rows_read: Cell<u32>,
    pub d1_rows_written: Cell<u32>,
    pub r2: Cell<u32>,
    pub kv: Cell<u32>,
    pub fetch: Cell<u32>,
    pub queue_sends: Cell<u32>,
    /// Milliseconds spent waiting on D1 and on outbound fetches.
    pub d1_ms: Cell<u64>,
    pub fetch_ms: Cell<u64>,
}

fn bump(c: &Cell<u32>, n: u32) {
    c.set(c.get().saturating_add(n));
}

impl IoCounts {
    pub fn r2(&self) {
        bump(&self.r2, 1);
    }
    pub fn kv(&self) {
        bump(&self.kv, 1);
    }
    pub fn fetch(&self) {
        bump(&self.fetch, 1);
    }
    pub fn queue_send(&self) {
        bump(&self.queue_sends, 1);
    }
    /// Adds the time since `started_ms` to a duration counter.
    pub fn add_ms(counter: &Cell<u64>, started_ms: u64) {
        counter.set(
            counter
                .get()
                .saturating_add(now_ms().saturating_sub(started_ms)),
        );
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "d1_round_trips": self.d1_round_trips.get(),
            "d1_statements": self.d1_statements.get(),
            "d1_rows_read": self.d1_rows_read.get(),
            "d1_rows_written": self.d1_rows_written.get(),
            "r2": self.r2.get(),
            "kv": self.kv.get(),
            "fetch": self.fetch.get(),
            "queue_sends": self.queue_sends.get(),
            "d1_ms": self.d1_ms.get(),
            "fetch_ms": self.fetch_ms.get(),
        })
    }
}

/// An I/O step that failed, with what we were doing and the runtime's cause.
#[derive(Debug, Clone)]
pub struct IoError {
    pub step: String,
    pub cause: String,
}

impl fmt::Display for IoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.step, self.cause)
    }
}

impl std::error::Error for IoError {}

/// The message of a runtime error, with D1's SQLite cause when there is one.
pub fn cause_of(e: &worker::Error) -> String {
    match e {
        worker::Error::D1(d) => format!("{} ({})", d.cause(), e),
        other => other.to_string(),
    }
}

/// `.step("what we were doing")` on any runtime result.
pub trait StepExt<T> {
    fn step(self, step: impl Into<String>) -> Result<T, IoError>;
}

impl<T> StepExt<T> for Result<T, worker::Error> {
    fn step(self, step: impl Into<String>) -> Result<T, IoError> {
        self.map_err(|e| IoError {
            step: step.into(),
            cause: cause_of(&e),
        })
    }
}

impl<T> StepExt<T> for Result<T, worker::kv::KvError> {
    fn step(self, step: impl Into<String>) -> Result<T, IoError> {
        self.map_err(|e| IoError {
            step: step.into(),
            cause: e.to_string(),
        })
    }
}

/// D1, counted: every call is one round trip; a batch is one round trip of several statements.
#[derive(Clone)]
pub struct Db {
    db: Rc<D1Database>,
    pub io: Rc<IoCounts>,
}

fn js(p: &Param) -> JsValue {
    match p {
        Param::Text(s) => JsValue::from_str(s),
        // D1 numbers are JS numbers; every integer we store is far below 2^53
        #[allow(clippy::cast_precision_loss)]
        Param::Int(n) => JsValue::from_f64(*n as f64),
        Param::Null => JsValue::null(),
    }
}

impl Db {
    pub fn new(env: &Env, binding: &str, io: Rc<IoCounts>) -> Result<Self, IoError> {
        let db = env.d1(binding).step(format!("binding {binding}"))?;
        Ok(Self {
            db: Rc::new(db),
            io,
        })
    }

    /// The same database, counting into `io` (a statement run for several messages is counted
    /// on one message's line).
    pub fn counting_into(&self, io: Rc<IoCounts>) -> Self {
        Self {
            db: self.db.clone(),
            io,
        }
    }

    fn prepare(&self, stmt: &Stmt) -> Result<D1PreparedStatement, IoError> {
        let args: Vec<JsValue> = stmt.params.iter().map(js).collect();
        self.db
            .prepare(stmt.sql.as_str())
            .bind(&args)
            .step("bind statement")
    }

    /// Adds a result's billed rows to the counts.
    fn rows_billed(&self, result: &D1Result) {
        if let Ok(Some(meta)) = result.meta() {
            let n = |v: Option<usize>| u32::try_from(v.unwrap_or(0)).unwrap_or(u32::MAX);
            bump(&self.io.d1_rows_read, n(meta.rows_read));
            bump(&self.io.d1_rows_written, n(meta.rows_written));
        }
    }

    fn count(&self, statements: usize) {
        bump(&self.io.d1_round_trips, 1);
        bump(
            &self.io.d1_statements,
            u32::try_from(statements).unwrap_or(u32::MAX),
        );
    }

    /// All rows of a query.
    pub async fn all<T: DeserializeOwned>(
        &self,
        what: &str,
        stmt: &Stmt,
    ) -> Result<Vec<T>, IoError> {
        self.count(1);
        let started = now_ms();
        let result = self.prepare(stmt)?.all().await.step(format!("d1 {what}"));
        IoCounts::add_ms(&self.io.d1_ms, started);
        let result = result?;
        self.rows_billed(&result);
        result
            .results::<T>()
            .step(format!("d1 {what}: decode rows"))
    }

    /// The first row of a query, if any.
    pub async fn first<T: DeserializeOwned>(
        &self,
        what: &str,
        stmt: &Stmt,
    ) -> Result<Option<T>, IoError> {
        Ok(self.all::<T>(what, stmt).await?.into_iter().next())
    }

    /// Runs a write and returns how many rows it changed (`meta.changes`).
    pub async fn run(&self, what: &str, stmt: &Stmt) -> Result<usize, IoError> {
        self.count(1);
        let started = now_ms();
        let result = self.prepare(stmt)?.run().await.step(format!("d1 {what}"));
        IoCounts::add_ms(&self.io.d1_ms, started);
        let result = result?;
        self.rows_billed(&result);
        Ok(changes(&result))
    }

    /// Runs statements as one transaction (all or nothing) in one round trip.
    pub async fn batch(&self, what: &str, stmts: &[Stmt]) -> Result<Vec<D1Result>, IoError> {
        self.count(stmts.len());
        let prepared = stmts
            .iter()
            .map(|s| self.prepare(s))
            .collect::<Result<Vec<_>, _>>()?;
        let started = now_ms();
        let result = self.db.batch(prepared).await.step(format!("d1 {what}"));
        IoCounts::add_ms(&self.io.d1_ms, started);
        if let Ok(results) = &result {
            results.iter().for_each(|r| self.rows_billed(r));
        }
        result
    }
}

/// `meta.changes` of a write: how many rows it inserted, updated or deleted.
pub fn changes(result: &D1Result) -> usize {
    result
        .meta()
        .ok()
        .flatten()
        .and_then(|m| m.changes)
        .unwrap_or(0)
}

/// Rows of a statement inside a batch result.
pub fn rows<T: DeserializeOwned>(result: &D1Result) -> Result<Vec<T>, IoError> {
    result.results::<T>().step("decode batch rows")
}

/// Why a [`fetch_with_timeout`] got no response.
#[derive(Debug)]
pub enum FetchError {
    /// The runtime's fetch failed (DNS, connection, TLS, ...).
    Network(worker::Error),
    /// No response within the timeout; the fetch was aborted.
    TimedOut(Duration),
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FetchError::Network(e) => write!(f, "{e}"),
            FetchError::TimedOut(t) => write!(f, "no response within {}s", t.as_secs()),
        }
    }
}

impl std::error::Error for FetchError {}

/// Fetches `fetch` (a request or a URL), giving up after `timeout`, counted in `io` (`fetch`,
/// and the time waited in `fetch_ms`). A fetch that times out is aborted, so it gives its
/// connection back: an invocation has at most 6 connections open at once, and an abandoned
/// fetch would hold one until the invocation ends. Any HTTP status is a response: what it means
/// is the caller's.
pub async fn fetch_with_timeout(
    io: &IoCounts,
    fetch: Fetch,
    timeout: Duration,
) -> Result<Response, FetchError> {
    io.fetch();
    let started = now_ms();
    let controller = AbortController::default();
    let signal = controller.signal();
    let mut sent = pin!(fetch.send_with_signal(&signal));
    let mut timer = pin!(Delay::from(timeout));
    // the response wins a tie, as it would with `futures::select`
    let outcome = std::future::poll_fn(|cx| {
        if let Poll::Ready(r) = sent.as_mut().poll(cx) {
            return Poll::Ready(r.map_err(FetchError::Network));
        }
        if timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(FetchError::TimedOut(timeout)));
        }
        Poll::Pending
    })
    .await;
    if matches!(outcome, Err(FetchError::TimedOut(_))) {
        controller.abort();
    }
    IoCounts::add_ms(&io.fetch_ms, started);
    outcome
}

/// Unix seconds, from the runtime's clock (`SystemTime` panics on wasm).
pub fn now() -> i64 {
    i64::try_from(worker::Date::now().as_millis() / 1000).unwrap_or(0)
}

/// Milliseconds since the epoch, for durations.
pub fn now_ms() -> u64 {
    worker::Date::now().as_millis()
}

/// One structured log line, stamped with the runtime's clock (`at_ms`) so lines from different
/// workers can be put in order and timed against each other.
pub fn log(mut line: serde_json::Value) {
    if let Some(fields) = line.as_object_mut() {
        fields.insert("at_ms".into(), now_ms().into());
    }
    worker::console_log!("{}", line);
}

/// A string variable or secret, if set and not empty.
pub fn var(env: &Env, name: &str) -> Option<String> {
    env.var(name)
        .ok()
        .map(|v| v.to_string())
        .filter(|v| !v.is_empty())
}

/// A configuration value that is wrong or missing, reported once at startup.
#[derive(Debug, Clone)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A required string variable or secret.
pub fn required(env: &Env, name: &str) -> Result<String, ConfigError> {
    var(env, name).ok_or_else(|| ConfigError(format!("{name} is not set")))
}

/// A numeric variable with a default; present but not a number is an error.
pub fn number(env: &Env, name: &str, default: i64) -> Result<i64, ConfigError> {
    match var(env, name) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse()
            .map_err(|_| ConfigError(format!("{name} must be an integer, got {v:?}"))),
    }
}

/// The final state of a task as cached in KV once it is terminal.
#[derive(Debug, Clone, serde::Serialize, Deserialize)]
pub struct CachedStatus {
    pub user_id: String,
    pub status: String,
    pub failure_reason: Option<String>,
    pub result_keys: Vec<String>,
    pub completed_at: i64,
}

/// How long final statuses stay in KV.
pub const STATUS_TTL_SECS: u64 = 7 * 24 * 3600;

/// Caches a task's final status in KV. D1 holds the truth and the cache is an optimisation, so a
/// failure here is logged, never returned: the task has ended either way.
pub async fn cache_final_status(
    env: &Env,
    io: &IoCounts,
    task: &crate::ids::TaskId,
    cached: &CachedStatus,
) {
    io.kv();
    let value = serde_json::to_string(cached).unwrap_or_default();
    let put = match env.kv("KV").step("binding KV") {
        Ok(kv) => match kv
            .put(&crate::keys::task_status_key(task), value)
            .step("kv put status")
        {
            Ok(p) => p
                .expiration_ttl(STATUS_TTL_SECS)
                .execute()
                .await
                .step("kv put status"),
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    match put {
        Ok(()) => log(
            serde_json::json!({"event": "task.final_status_cached", "task_id": task.to_string(), "status": cached.status}),
        ),
        Err(e) => log(
            serde_json::json!({"level": "warn", "event": "status_cache_failed", "task_id": task.to_string(), "status": cached.status, "cause": e.to_string()}),
        ),
    }
}

/// Queue limits for one `send_batch`.
const BATCH_MAX_MESSAGES: usize = 100;
const BATCH_MAX_BYTES: usize = 250 * 1024;

/// Sends JSON bodies (as text, sent as JS objects) in as few batches as the queue's limits allow.
pub async fn send_json_batch(
    io: &IoCounts,
    queue: &Queue,
    bodies: &[String],
    delay_seconds: u32,
) -> Result<(), IoError> {
    let mut start = 0;
    while start < bodies.len() {
        let mut end = start;
        let mut bytes = 0;
        while end < bodies.len()
            && end - start < BATCH_MAX_MESSAGES
            && (end == start || bytes + bodies[end].len() <= BATCH_MAX_BYTES)
        {
            bytes += bodies[end].len();
            end += 1;
        }
        let mut messages = Vec::with_capacity(end - start);
        for text in &bodies[start..end] {
            let value = worker::js_sys::JSON::parse(text).map_err(|_| IoError {
                step: "queue send".into(),
                cause: "body is not JSON".into(),
            })?;
            messages.push(
                RawMessageBuilder::new(value)
                    .delay_seconds(delay_seconds)
                    .build_with_content_type(QueueContentType::Json),
            );
        }
        bump(&io.queue_sends, 1);
        queue
            .send_raw_batch(BatchMessageBuilder::new().messages(messages).build())
            .await
            .step("queue send batch")?;
        start = end;
    }
    Ok(())
}
