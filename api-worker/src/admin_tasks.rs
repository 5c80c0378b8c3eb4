//! `GET /admin/tasks/{id}/timeline`: what happened to one task, in time order, from what D1
//! keeps: its transitions (created, accepted by the provider with its id, ended), the provider
//! create calls counted by the claim (`provider_submissions`, at most 1), the reconciler's
//! re-sends, its ledger rows (hold, release, consumption), the dead letters of its messages with
//! their delivery attempts and what operators did to them, retries (`retry_of` both ways) and
//! every audited operator action on it. Dead letters are matched by the task id in their stored
//! body; bodies large enough to go to R2 are not searched.

use crate::app::{json, Ctx};
use crate::auth;
use crate::error::{ApiError, ApiResult};
use serde_json::{json, Value};
use shared::edge::rows;
use shared::ids::TaskId;
use shared::sql::{Param, Stmt};
use worker::Request;

/// Dead letters and audit rows shown per task (a task has a handful at most).
const MAX_ROWS: i64 = 100;

fn event(at: Option<i64>, kind: &str, text: String, detail: Value) -> Option<Value> {
    at.map(|at| json!({"at": at, "kind": kind, "text": text, "detail": detail}))
}

pub async fn timeline(req: Request, ctx: &Ctx) -> ApiResult {
    let app = &ctx.data;
    auth::admin(&req, app).await?;
    let task = TaskId::parse(ctx.param("id").map(String::as_str).unwrap_or_default())
        .map_err(|e| ApiError::bad_request("invalid_id", e.to_string()))?;
    let id = task.to_string();
    let results = app
        .db
        .batch(
            "task timeline",
            &[
                Stmt::new(
                    "SELECT id, status, external_provider, external_task_id, provider_submissions, failure_reason, cost,
                            created_at, updated_at, submitted_at, completed_at, deadline_at, reconciled_at, retry_of
                     FROM ai_tasks WHERE id = ?1",
                    vec![id.clone().into()],
                ),
                Stmt::new(
                    "SELECT id, type, amount, created_at FROM credit_records
                     WHERE entity_type = 'task' AND entity_id = ?1 ORDER BY created_at, id",
                    vec![id.clone().into()],
                ),
                Stmt::new(
                    "SELECT id, source_queue, message_type, attempts, error_class, error_text, first_failed_at, last_failed_at,
                            status, replayed_at, replayed_by, replay_count, discarded_at, discarded_by
                     FROM dead_letters WHERE body LIKE '%' || ?1 || '%' ORDER BY first_failed_at, id LIMIT ?2",
                    vec![id.clone().into(), Param::Int(MAX_ROWS)],
                ),
                Stmt::new(
                    "SELECT id, status, created_at FROM ai_tasks WHERE retry_of = ?1 ORDER BY created_at, id",
                    vec![id.clone().into()],
                ),
                Stmt::new(
                    "SELECT actor, action, target, detail, created_at FROM admin_audit
                     WHERE target = ?1 OR target IN (SELECT id FROM dead_letters WHERE body LIKE '%' || ?1 || '%')
                     ORDER BY created_at, id LIMIT ?2",
                    vec![id.clone().into(), Param::Int(MAX_ROWS)],
                ),
            ],
        )
        .await?;
    let table = |i: usize| -> Result<Vec<Value>, ApiError> {
        Ok(results.get(i).map(rows).transpose()?.unwrap_or_default())
    };
    let t = table(0)?
        .into_iter()
        .next()
        .ok_or(ApiError::NotFound("task"))?;
    let int = |v: &Value, k: &str| v[k].as_i64();
    let mut events: Vec<Value> = Vec::new();
    events.extend(event(
        int(&t, "created_at"),
        "created",
        format!("created, {} credits held", t["cost"].as_i64().unwrap_or(0)),
        json!({"retry_of": t["retry_of"]}),
    ));
    events.extend(event(
        int(&t, "submitted_at"),
        "accepted",
        format!(
            "accepted by {} as {}",
            t["external_provider"].as_str().unwrap_or("the provider"),
            t["external_task_id"].as_str().unwrap_or("(no id yet)")
        ),
        json!({"external_task_id": t["external_task_id"], "provider_submissions": t["provider_submissions"]}),
    ));
    events.extend(event(
        int(&t, "reconciled_at"),
        "reconciled",
        "the reconciler re-sent its step (no sign of life for a lease)".into(),
        json!({}),
    ));
    for r in table(1)? {
        events.extend(event(
            int(&r, "created_at"),
            "ledger",
            format!(
                "ledger {} {}",
                r["type"].as_str().unwrap_or_default(),
                r["amount"].as_i64().unwrap_or(0)
            ),
            r.clone(),
        ));
    }
    let dead_letters = table(2)?;
    for d in &dead_letters {
        events.extend(event(
            int(d, "last_failed_at"),
            "dead_letter",
            format!(
                "{} dead-lettered after {} attempts: {} {}",
                d["message_type"].as_str().unwrap_or("message"),
                d["attempts"].as_i64().unwrap_or(0),
                d["error_class"].as_str().unwrap_or_default(),
                d["error_text"].as_str().unwrap_or_default()
            ),
            d.clone(),
        ));
    }
    for r in table(3)? {
        events.extend(event(
            int(&r, "created_at"),
            "retried",
            format!(
                "retried as task {} ({})",
                r["id"].as_str().unwrap_or_default(),
                r["status"].as_str().unwrap_or_default()
            ),
            r.clone(),
        ));
    }
    for mut a in table(4)? {
        if let Some(d) = a["detail"]
            .as_str()
            .and_then(|d| serde_json::from_str::<Value>(d).ok())
        {
            a["detail"] = d;
        }
        events.extend(event(
            int(&a, "created_at"),
            "operator",
            format!(
                "{} by {} on {}",
                a["action"].as_str().unwrap_or_default(),
                a["actor"].as_str().unwrap_or_default(),
                a["target"].as_str().unwrap_or_default()
            ),
            a.clone(),
        ));
    }
    let ended = match t["status"].as_str() {
        Some("completed") => Some("completed".to_owned()),
        Some("failed") => Some(format!(
            "failed: {}",
            t["failure_reason"].as_str().unwrap_or("no reason recorded")
        )),
        _ => None,
    };
    if let Some(text) = ended {
        events.extend(event(int(&t, "completed_at"), "ended", text, json!({})));
    }
    events.sort_by_key(|e| e["at"].as_i64().unwrap_or(0));
    let attempts: i64 = dead_letters
        .iter()
        .filter_map(|d| d["attempts"].as_i64())
        .sum();
    json(
        &json!({
            "task_id": id,
            "status": t["status"],
            "external_task_id": t["external_task_id"],
            "provider_submissions": t["provider_submissions"],
            "deadline_at": t["deadline_at"],
            "dead_letter_attempts": attempts,
            "dead_letters": dead_letters,
            "events": events,
        }),
        200,
    )
}
