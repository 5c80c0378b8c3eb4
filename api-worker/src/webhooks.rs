//! Provider callbacks. A callback is never trusted for results: it proves (by the per-task
//! token, and kie.ai's signature when configured) that the provider has news, and prompts an
//! immediate poll of record-info, which the consumer trusts instead.

use crate::app::{body_bytes, json, query, Ctx};
use crate::error::{ApiError, ApiResult};
use serde::Deserialize;
use serde_json::json;
use shared::edge::{now, StepExt};
use shared::ids::{Credits, TaskId, UserId};
use shared::kie;
use shared::ledger::Stmt;
use shared::messages::{TaskMessage, VERSION};
use shared::model::Model;
use shared::signing::{verify_callback_token, verify_kie_callback};
use shared::task::TaskStatus;
use worker::Request;

/// How far a signed callback's timestamp may be from now.
const SIGNATURE_TOLERANCE_SECS: i64 = 300;

#[derive(Deserialize)]
struct CallbackTask {
    user_id: String,
    status: String,
    external_provider: Option<String>,
    external_task_id: Option<String>,
    cost: i64,
    deadline_at: Option<i64>,
}

/// `POST /webhooks/ai/:provider?task=&token=`
pub async fn ai_callback(mut req: Request, ctx: &Ctx) -> ApiResult {
    let app = &ctx.data;
    let model = ctx.param("provider").and_then(|p| Model::parse(p)).ok_or(ApiError::NotFound("provider"))?;
    let task_raw = query(&req, "task").ok_or_else(|| ApiError::bad_request("invalid_callback", "the task parameter is required"))?;
    let token = query(&req, "token").unwrap_or_default();
    if !verify_callback_token(app.cfg.files_signing_key.as_bytes(), &task_raw, &token) {
        return Err(ApiError::Unauthorized("invalid callback token"));
    }
    let task = TaskId::parse(&task_raw).map_err(|e| ApiError::bad_request("invalid_id", e.to_string()))?;
    let body = body_bytes(&mut req, 64 * 1024).await?;
    let external_id = kie::parse_callback(&body).map_err(|e| ApiError::bad_request("invalid_callback", e))?;

    if let Some(secret) = &app.cfg.kie_webhook_secret {
        let header = |name: &str| req.headers().get(name).ok().flatten().unwrap_or_default();
        let (timestamp, signature) = (header("x-webhook-timestamp"), header("x-webhook-signature"));
        let fresh = timestamp.trim().parse::<i64>().is_ok_and(|t| (now() - t).abs() <= SIGNATURE_TOLERANCE_SECS);
        if !fresh || !verify_kie_callback(secret.as_bytes(), &external_id, timestamp.trim(), &signature) {
            return Err(ApiError::Unauthorized("invalid or stale callback signature"));
        }
    }

    let row: CallbackTask = app
        .db
        .first(
            "task for callback",
            &Stmt::new(
                "SELECT user_id, status, external_provider, external_task_id, cost, deadline_at FROM ai_tasks WHERE id = ?1",
                vec![task.to_string().into()],
            ),
        )
        .await?
        .ok_or(ApiError::NotFound("task"))?;
    if row.external_provider.as_deref() != Some(model.as_str()) {
        return Err(ApiError::NotFound("task"));
    }
    if row.external_task_id.as_deref().is_some_and(|known| known != external_id) {
        return Err(ApiError::Conflict { code: "task_mismatch", message: "the callback is for another provider task".into() });
    }
    if TaskStatus::parse(&row.status).is_some_and(TaskStatus::is_terminal) {
        return json(&json!({"received": true, "status": row.status}), 200);
    }
    let user = UserId::parse(&row.user_id).map_err(|e| ApiError::Unavailable(shared::edge::IoError { step: "task owner".into(), cause: e.to_string() }))?;
    let poll = TaskMessage::Poll {
        v: VERSION,
        task_id: task,
        user_id: user,
        model,
        external_id,
        cost: Credits(row.cost),
        deadline_at: row.deadline_at.unwrap_or(i64::MAX),
        attempt: 0,
        failures: 0,
        follow_up: false,
    };
    app.io.queue_send();
    app.tasks_queue()?.send(poll).await.step("queue send callback poll")?;
    json(&json!({"received": true}), 200)
}
