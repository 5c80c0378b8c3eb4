//! `GET /admin/stats`: the numbers of the operator console's overview in one D1 batch: tasks by
//! status, tasks created, completed and failed per bucket over the last hour (5-minute buckets)
//! and the last day (hourly), dead letters by error class and status, webhook events by status.
//! Queue backlog is not among them: Cloudflare Queues reports it in the dashboard and its
//! analytics API, not to a worker, so the answer says so instead of guessing.

use crate::app::{json, App};
use crate::auth;
use crate::error::ApiResult;
use serde_json::{json, Map, Value};
use shared::edge::{now, rows};
use shared::sql::Stmt;
use worker::Request;

pub const TASK_STATUSES: [&str; 5] = ["pending", "submitted", "processing", "completed", "failed"];
pub const DEAD_LETTER_STATUSES: [&str; 3] = ["dead", "replayed", "discarded"];
pub const EVENT_STATUSES: [&str; 4] = ["received", "applied", "ignored", "rejected"];

/// (name, bucket seconds, buckets): the two windows of the throughput charts.
const WINDOWS: [(&str, i64, i64); 2] = [("hour", 300, 12), ("day", 3600, 24)];

pub const QUEUE_BACKLOG_NOTE: &str = "Cloudflare Queues does not report a queue's backlog to a worker (the dashboard and the GraphQL analytics API do); edgeline does not estimate it";

/// The first bucket's start: buckets are aligned to their size, the last one is the current one.
fn window_start(at: i64, size: i64, count: i64) -> i64 {
    at.div_euclid(size) * size - (count - 1) * size
}

fn counts(rows_: &[Value], key: &str, known: &[&str]) -> Map<String, Value> {
    let mut out: Map<String, Value> = known.iter().map(|s| ((*s).to_owned(), json!(0))).collect();
    for r in rows_ {
        if let Some(k) = r[key].as_str() {
            out.insert(k.to_owned(), json!(r["n"].as_i64().unwrap_or(0)));
        }
    }
    out
}

pub async fn stats(req: Request, app: &App) -> ApiResult {
    auth::admin(&req, app).await?;
    let at = now();
    let mut stmts = vec![
        Stmt::new("SELECT status, COUNT(*) AS n FROM ai_tasks GROUP BY status", vec![]),
        Stmt::new(
            "SELECT COALESCE(error_class, 'unknown') AS error_class, status, COUNT(*) AS n FROM dead_letters GROUP BY 1, 2 ORDER BY 1, 2",
            vec![],
        ),
        Stmt::new("SELECT status, COUNT(*) AS n FROM webhook_events GROUP BY status", vec![]),
    ];
    for (_, size, count) in WINDOWS {
        let start = window_start(at, size, count);
        // Ended tasks by the bucket of their end (updated_at >= completed_at, so the index on
        // (status, updated_at) narrows the scan); created tasks by the bucket of their creation.
        // D1 binds JS numbers as REAL: the bucket is cast back to an integer.
        stmts.push(Stmt::new(
            "SELECT CAST((completed_at - ?1) / ?2 AS INTEGER) AS bucket, status, COUNT(*) AS n FROM ai_tasks
             WHERE status IN ('completed', 'failed') AND updated_at >= ?1 AND completed_at >= ?1
             GROUP BY 1, 2",
            vec![start.into(), size.into()],
        ));
        stmts.push(Stmt::new(
            "SELECT CAST((created_at - ?1) / ?2 AS INTEGER) AS bucket, 'created' AS status, COUNT(*) AS n FROM ai_tasks
             WHERE created_at >= ?1 GROUP BY 1",
            vec![start.into(), size.into()],
        ));
    }
    let results = app.db.batch("admin stats", &stmts).await?;
    let table = |i: usize| -> Result<Vec<Value>, crate::error::ApiError> {
        Ok(results.get(i).map(rows).transpose()?.unwrap_or_default())
    };

    let tasks = counts(&table(0)?, "status", &TASK_STATUSES);
    let total: i64 = tasks.values().filter_map(Value::as_i64).sum();

    let mut classes: std::collections::BTreeMap<String, Value> = Default::default();
    for r in table(1)? {
        let class = r["error_class"].as_str().unwrap_or("unknown").to_owned();
        let status = r["status"].as_str().unwrap_or_default().to_owned();
        let n = r["n"].as_i64().unwrap_or(0);
        let entry = classes.entry(class.clone()).or_insert_with(|| {
            let mut e = json!({"error_class": class, "total": 0});
            for s in DEAD_LETTER_STATUSES {
                e[s] = json!(0);
            }
            e
        });
        entry[status.as_str()] = json!(entry[status.as_str()].as_i64().unwrap_or(0) + n);
        entry["total"] = json!(entry["total"].as_i64().unwrap_or(0) + n);
    }
    let by_class: Vec<Value> = classes.into_values().collect();
    let dead: i64 = by_class.iter().filter_map(|e| e["dead"].as_i64()).sum();
    let events = counts(&table(2)?, "status", &EVENT_STATUSES);

    let mut throughput = Map::new();
    for (w, (name, size, count)) in WINDOWS.iter().enumerate() {
        let start = window_start(at, *size, *count);
        let mut buckets: Vec<Value> = (0..*count)
            .map(|b| json!({"start": start + b * size, "created": 0, "completed": 0, "failed": 0}))
            .collect();
        for r in table(3 + 2 * w)?.into_iter().chain(table(4 + 2 * w)?) {
            let (Some(b), Some(s)) = (r["bucket"].as_i64(), r["status"].as_str()) else {
                continue;
            };
            if let Some(bucket) = usize::try_from(b).ok().and_then(|b| buckets.get_mut(b)) {
                bucket[s] = json!(r["n"].as_i64().unwrap_or(0));
            }
        }
        let sum = |k: &str| -> i64 { buckets.iter().filter_map(|b| b[k].as_i64()).sum() };
        throughput.insert(
            (*name).to_owned(),
            json!({"bucket_secs": size, "start": start, "end": start + count * size,
                   "created": sum("created"), "completed": sum("completed"), "failed": sum("failed"),
                   "buckets": buckets}),
        );
    }

    json(
        &json!({
            "at": at,
            "tasks": {"by_status": tasks, "total": total},
            "throughput": throughput,
            "dead_letters": {"by_class": by_class, "dead": dead},
            "webhook_events": {"by_status": events},
            "queue_backlog": null,
            "queue_backlog_note": QUEUE_BACKLOG_NOTE,
        }),
        200,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_end_with_the_current_bucket() {
        let at = 10_000_123;
        let start = window_start(at, 300, 12);
        assert_eq!(start % 300, 0);
        assert!(start + 11 * 300 <= at && at < start + 12 * 300);
    }
}
