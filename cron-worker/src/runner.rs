//! Runs jobs: gives each a time budget and a work limit, records the run in `cron_runs` (start,
//! finish, counts, errors, whether it stopped early, where the next run continues, and what it
//! found in `detail`) and logs the summary. Whatever happens, the error is recorded, never
//! returned into the void. Findings (the auditor's violations) are not errors: the run still
//! succeeded, but its log line is an error-level `audit.violations` so they are not missed.

use crate::jobs;
use serde::Serialize;
use shared::edge::{log, now, now_ms, number, Db, IoCounts, IoError};
use shared::schedule::{self, Cadence};
use shared::sql::Stmt;
use std::rc::Rc;
use worker::Env;

/// How far a run may go.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub until_ms: u64,
    pub max_items: u64,
}

impl Budget {
    pub fn time_left(&self) -> bool {
        now_ms() < self.until_ms
    }
    /// How many more items this run may take, given how many it has.
    pub fn room(&self, used: u64) -> u64 {
        self.max_items.saturating_sub(used)
    }
}

/// What a job did.
#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub examined: u64,
    pub changed: u64,
    pub errors: u64,
    pub error_text: Option<String>,
    pub stopped_early: bool,
    /// Where the next run continues (jobs that walk a listing).
    pub cursor: Option<String>,
    /// What the run found, as JSON, stored in `cron_runs.detail` (the auditor's report). Kept
    /// out of the log line, which carries only the count below.
    #[serde(skip)]
    pub detail: Option<String>,
    /// Invariant violations the run found (the auditor); not errors.
    #[serde(skip_serializing_if = "is_zero")]
    pub violations: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Summary {
    pub fn failed(&mut self, e: &IoError) {
        self.errors += 1;
        self.error_text = Some(e.to_string());
    }
}

/// The jobs of a cron expression, one after the other, sharing the schedule's budget.
pub async fn run_schedule(env: &Env, cron: &str) {
    let Some((cadence, names)) = schedule::for_schedule(cron) else {
        log(serde_json::json!({"level": "error", "event": "cron.unknown_schedule", "cron": cron}));
        return;
    };
    for name in names {
        run_job(env, name, cron, cadence).await;
    }
}

fn budget(env: &Env, cadence: Cadence) -> Budget {
    let (var, default) = match cadence {
        Cadence::Frequent => ("CRON_BUDGET_MS", 20_000),
        Cadence::Daily => ("CRON_DAILY_BUDGET_MS", 600_000),
    };
    let ms = number(env, var, default).unwrap_or(default).max(1);
    let items = number(env, "CRON_MAX_ITEMS", 50_000)
        .unwrap_or(50_000)
        .max(1);
    Budget {
        until_ms: now_ms() + u64::try_from(ms).unwrap_or(0),
        max_items: u64::try_from(items).unwrap_or(1),
    }
}

/// Runs one job, records and logs it, and returns the recorded row.
pub async fn run_job(env: &Env, name: &str, schedule: &str, cadence: Cadence) -> serde_json::Value {
    let started = now_ms();
    let io = Rc::new(IoCounts::default());
    let run_id = format!("run_{}", uuid::Uuid::new_v4().simple());
    let db = match Db::new(env, "DB", io.clone()) {
        Ok(db) => db,
        Err(e) => {
            let line = serde_json::json!({"level": "error", "event": "cron.run", "job": name, "error": e.to_string()});
            log(line.clone());
            return line;
        }
    };
    let mut summary = Summary::default();
    let recorded = db
        .run(
            "record cron start",
            &Stmt::new(
                "INSERT INTO cron_runs (id, job, schedule, started_at) VALUES (?1, ?2, ?3, ?4)",
                vec![
                    run_id.clone().into(),
                    name.into(),
                    schedule.into(),
                    i64::try_from(started).unwrap_or(0).into(),
                ],
            ),
        )
        .await;
    if let Err(e) = &recorded {
        summary.failed(e);
    }
    let cursor = last_cursor(&db, name).await.unwrap_or(None);
    let budget = budget(env, cadence);
    let ctx = jobs::JobCtx {
        env,
        db: &db,
        io: &io,
        now: now(),
    };
    jobs::run(name, &ctx, budget, cursor, &mut summary).await;
    let finished = now_ms();
    let stored = db
        .run(
            "record cron finish",
            &Stmt::new(
                "UPDATE cron_runs SET finished_at = ?2, examined = ?3, changed = ?4, errors = ?5, error_text = ?6, stopped_early = ?7, cursor = ?8,
                        detail = ?9
                 WHERE id = ?1",
                vec![
                    run_id.clone().into(),
                    i64::try_from(finished).unwrap_or(0).into(),
                    i64::try_from(summary.examined).unwrap_or(0).into(),
                    i64::try_from(summary.changed).unwrap_or(0).into(),
                    i64::try_from(summary.errors).unwrap_or(0).into(),
                    summary.error_text.clone().into(),
                    i64::from(summary.stopped_early).into(),
                    summary.cursor.clone().into(),
                    summary.detail.clone().into(),
                ],
            ),
        )
        .await;
    let mut line = serde_json::json!({
        "event": "cron.run",
        "run_id": run_id,
        "job": name,
        "schedule": schedule,
        "ms": finished.saturating_sub(started),
        "summary": summary,
        "io": io.to_json(),
    });
    if summary.violations > 0 {
        line["event"] = "audit.violations".into();
        line["violations"] = summary.violations.into();
    }
    if summary.errors > 0 || summary.violations > 0 || stored.is_err() {
        line["level"] = "error".into();
        if let Err(e) = stored {
            line["record_error"] = e.to_string().into();
        }
    }
    log(line.clone());
    // The caller (a manual run) also gets what the run found.
    if let Some(detail) = &summary.detail {
        line["detail"] = parse_detail(detail);
    }
    line
}

/// A stored `detail` as JSON (it is written as JSON; anything else stays text).
fn parse_detail(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|_| text.into())
}

/// The cursor the job's previous run left, if it stopped early.
async fn last_cursor(db: &Db, name: &str) -> Result<Option<String>, IoError> {
    let row: Option<serde_json::Value> = db
        .first(
            "last cron cursor",
            &Stmt::new(
                "SELECT cursor FROM cron_runs WHERE job = ?1 AND finished_at IS NOT NULL ORDER BY started_at DESC LIMIT 1",
                vec![name.into()],
            ),
        )
        .await?;
    Ok(row.and_then(|r| r["cursor"].as_str().map(str::to_owned)))
}

/// The latest recorded runs, newest first.
pub async fn recent_runs(env: &Env) -> serde_json::Value {
    let io = Rc::new(IoCounts::default());
    let rows = match Db::new(env, "DB", io) {
        Ok(db) => db
            .all::<serde_json::Value>(
                "recent cron runs",
                &Stmt::new(
                    "SELECT job, schedule, started_at, finished_at, examined, changed, errors, stopped_early, detail FROM cron_runs ORDER BY started_at DESC LIMIT 50",
                    vec![],
                ),
            )
            .await
            .map(|rows| {
                rows.into_iter()
                    .map(|mut r| {
                        if let Some(d) = r["detail"].as_str().map(parse_detail) {
                            r["detail"] = d;
                        }
                        r
                    })
                    .collect::<Vec<_>>()
            })
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match rows {
        Ok(r) => serde_json::json!({"runs": r}),
        Err(e) => serde_json::json!({"error": e}),
    }
}
