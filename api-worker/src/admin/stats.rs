//! The operators' figures. `GET /admin/stats`: the numbers of the console's overview in one D1
//! batch: tasks by status, tasks created, completed and failed per bucket over the last hour
//! (5-minute buckets) and the last day (hourly), dead letters by error class and status, webhook
//! events by status. Queue backlog is not among them: Cloudflare Queues reports it in the
//! dashboard and its analytics API, not to a worker, so the answer says so instead of guessing.
//! `GET /admin/orders/stats`: orders by status. `GET /admin/storage`: objects and bytes in R2
//! under a prefix. The counts are `shared::admin_views`.

use crate::auth;
use crate::batch::rows_at;
use crate::context::{reply, App};
use crate::error::{json, ApiError, ApiResult};
use crate::request::query;
use crate::router::Routes;
use serde_json::{json, Map, Value};
use shared::admin_views;
use shared::edge::{now, StepExt};
use worker::Request;

pub fn routes(r: Routes) -> Routes {
    r.get_async("/admin/stats", |req, ctx| async move {
        reply(stats(req, &ctx.data).await)
    })
    .get_async("/admin/orders/stats", |req, ctx| async move {
        reply(order_stats(req, &ctx.data).await)
    })
    .get_async("/admin/storage", |req, ctx| async move {
        reply(storage_stats(req, &ctx.data).await)
    })
}

pub const TASK_STATUSES: [&str; 5] = ["pending", "submitted", "processing", "completed", "failed"];
pub const DEAD_LETTER_STATUSES: [&str; 3] = shared::dead_letters::STATUSES;
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

/// `{status: n}` of rows `{status, n}` (a `GROUP BY status` count), with only the statuses found.
pub fn by_status(rows: &[Value]) -> Map<String, Value> {
    rows.iter()
        .filter_map(|r| Some((r["status"].as_str()?.to_owned(), r["n"].clone())))
        .collect()
}

async fn stats(req: Request, app: &App) -> ApiResult {
    auth::operator(&req, app).await?;
    let at = now();
    let mut stmts = vec![
        admin_views::tasks_by_status(),
        admin_views::dead_letters_by_class(),
        admin_views::events_by_status(),
    ];
    for (_, size, count) in WINDOWS {
        // ended tasks by the bucket of their end, created ones by the bucket of their creation
        let start = window_start(at, size, count);
        stmts.push(admin_views::ended_per_bucket(start, size));
        stmts.push(admin_views::created_per_bucket(start, size));
    }
    let results = app.db.batch("admin stats", &stmts).await?;
    let table = |i: usize| rows_at::<Value>(&results, i);

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

/// `GET /admin/orders/stats`: how many orders are in each status.
async fn order_stats(req: Request, app: &App) -> ApiResult {
    auth::operator(&req, app).await?;
    let rows: Vec<Value> = app
        .db
        .all("order stats", &admin_views::orders_by_status())
        .await?;
    json(&json!({"orders": by_status(&rows)}), 200)
}

/// `GET /admin/storage?prefix=`: how many objects and bytes are under a prefix (up to 20,000
/// objects are counted; `truncated` says if there are more).
async fn storage_stats(req: Request, app: &App) -> ApiResult {
    auth::operator(&req, app).await?;
    let prefix = query(&req, "prefix").unwrap_or_default();
    if !["cache/", "result/", "dead-letters/", ""].contains(&prefix.as_str()) {
        return Err(ApiError::bad_request(
            "invalid_prefix",
            "prefix must be cache/, result/ or dead-letters/",
        ));
    }
    let bucket = app.bucket()?;
    let (mut objects, mut bytes, mut cursor, mut pages) = (0u64, 0u64, None::<String>, 0);
    loop {
        let mut list = bucket.list().prefix(prefix.clone()).limit(1000);
        if let Some(c) = cursor.clone() {
            list = list.cursor(c);
        }
        app.io.r2();
        let page = list.execute().await.step("r2 list")?;
        for o in page.objects() {
            objects += 1;
            bytes += o.size();
        }
        pages += 1;
        if !page.truncated() || pages >= 20 {
            return json(
                &json!({"prefix": prefix, "objects": objects, "bytes": bytes, "truncated": page.truncated()}),
                200,
            );
        }
        cursor = page.cursor();
    }
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
