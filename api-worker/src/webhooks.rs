//! Provider callbacks. A callback is never trusted for results: it proves (by the per-task
//! token, and kie.ai's signature when configured) that the provider has news, and prompts an
//! immediate poll of record-info, which the consumer trusts instead.

use crate::context::{reply, App};
use crate::error::{json, ApiError, ApiResult};
use crate::request::{body_bytes, query};
use crate::router::{Ctx, Routes};
use serde_json::json;
use shared::edge::{now, StepExt};
use shared::ids::TaskId;
use shared::kie;
use shared::messages::{TaskMessage, VERSION};
use shared::model::Model;
use shared::signing::{verify_callback_token, verify_kie_callback};
use shared::webhook_events::{self, Delivery};
use worker::Request;

pub fn routes(r: Routes) -> Routes {
    r.post_async("/webhooks/creem", |req, ctx| async move {
        reply(creem(req, &ctx.data).await)
    })
    .post_async("/webhooks/ai/:provider", |req, ctx| async move {
        reply(ai_callback(req, &ctx).await)
    })
}

/// How far a signed callback's timestamp may be from now.
const SIGNATURE_TOLERANCE_SECS: i64 = 300;

/// `POST /webhooks/ai/:provider?task=&deadline=&token=`
async fn ai_callback(mut req: Request, ctx: &Ctx) -> ApiResult {
    let app = &ctx.data;
    let model = ctx
        .param("provider")
        .and_then(|p| Model::parse(p))
        .ok_or(ApiError::NotFound("provider"))?;
    let task_raw = query(&req, "task").ok_or_else(|| {
        ApiError::bad_request("invalid_callback", "the task parameter is required")
    })?;
    let token = query(&req, "token").unwrap_or_default();
    let secret = app.cfg.files_signing_key.as_bytes();
    let deadline_at = query(&req, "deadline")
        .and_then(|d| d.parse::<i64>().ok())
        .filter(|d| verify_callback_token(secret, &task_raw, model.as_str(), *d, &token))
        .ok_or(ApiError::Unauthorized("invalid callback token"))?;
    let task =
        TaskId::parse(&task_raw).map_err(|e| ApiError::bad_request("invalid_id", e.to_string()))?;
    let body = body_bytes(&mut req, 64 * 1024).await?;
    let external_id =
        kie::parse_callback(&body).map_err(|e| ApiError::bad_request("invalid_callback", e))?;

    if let Some(secret) = &app.cfg.kie_webhook_secret {
        let header = |name: &str| req.headers().get(name).ok().flatten().unwrap_or_default();
        let (timestamp, signature) = (header("x-webhook-timestamp"), header("x-webhook-signature"));
        let fresh = timestamp
            .trim()
            .parse::<i64>()
            .is_ok_and(|t| (now() - t).abs() <= SIGNATURE_TOLERANCE_SECS);
        if !fresh
            || !verify_kie_callback(
                secret.as_bytes(),
                &external_id,
                timestamp.trim(),
                &signature,
            )
        {
            return Err(ApiError::Unauthorized(
                "invalid or stale callback signature",
            ));
        }
    }

    // Nothing is read from D1: the token proves the task, its model and its deadline. Which
    // provider task the body names it cannot prove; the consumer's poll asks the provider about
    // that id and acts only if D1 knows the task under it or under no id yet (`task::FOR_ANSWER`).
    // A task whose id D1 does not know yet learns it from this poll.
    let poll = TaskMessage::Poll {
        v: VERSION,
        task_id: task,
        model,
        external_id,
        deadline_at,
        attempt: 0,
        failures: 0,
        follow_up: false,
        record: true,
        lease_at: now(),
    };
    app.io.queue_send();
    app.tasks_queue()?
        .send(poll)
        .await
        .step("queue send callback poll")?;
    json(&json!({"received": true}), 200)
}

/// Largest webhook body we accept.
const MAX_WEBHOOK_BYTES: usize = 256 * 1024;
const STANDARD_WEBHOOK_TOLERANCE_SECS: i64 = 300;

/// `POST /webhooks/creem`: verify the signature over the raw body (Creem's signature in
/// `creem-signature` or `x-creem-signature`, hex with or without `sha256=`, as the official SDK
/// accepts it; or Standard Webhooks headers), store the event once per (provider, event id),
/// enqueue it, answer 200. Nothing is applied here; a bad signature stores nothing.
async fn creem(mut req: Request, app: &App) -> ApiResult {
    let body = body_bytes(&mut req, MAX_WEBHOOK_BYTES).await?;
    let header = |name: &str| req.headers().get(name).ok().flatten();
    let standard_id = header("webhook-id");
    let creem_signature = shared::signing::CREEM_SIGNATURE_HEADERS
        .iter()
        .find_map(|name| header(name));
    let verified = if let Some(sig) = creem_signature {
        shared::signing::verify_creem(&body, &sig, &app.cfg.creem_webhook_secrets)
    } else if let (Some(id), Some(ts), Some(sig)) = (
        &standard_id,
        header("webhook-timestamp"),
        header("webhook-signature"),
    ) {
        shared::signing::verify_standard_webhook(
            id,
            &ts,
            &sig,
            &body,
            &app.cfg.standard_webhook_secrets,
            now(),
            STANDARD_WEBHOOK_TOLERANCE_SECS,
        )
        .is_ok()
    } else {
        false
    };
    if !verified {
        return Err(ApiError::Unauthorized(
            "missing or invalid webhook signature",
        ));
    }
    let payload = String::from_utf8_lossy(&body).into_owned();
    let (event_id, event_type, status, error) = match shared::payments::parse_event(&body) {
        Ok(e) => (
            standard_id.unwrap_or(e.id),
            Some(e.event_type),
            "received",
            None,
        ),
        // Signed but unreadable: keep it for operators and acknowledge, or the provider would
        // retry it forever.
        Err(reason) => (
            standard_id.unwrap_or_else(|| {
                format!(
                    "unreadable:{}",
                    &shared::signing::token_digest(&payload)[..32]
                )
            }),
            None,
            "rejected",
            Some(reason),
        ),
    };
    let row_id = webhook_events::row_id("creem", &event_id);
    let delivery = Delivery {
        row_id: row_id.clone(),
        event_id,
        event_type,
        payload,
        status,
        error: error.clone(),
    };
    let inserted = app
        .db
        .run(
            "store webhook event",
            &webhook_events::store(delivery, now()),
        )
        .await?;
    if status == "rejected" {
        return json(
            &json!({"received": true, "accepted": false, "reason": error}),
            200,
        );
    }
    if inserted == 0 {
        // A repeat. If the first delivery was stored but never queued, queue it now.
        let stored: Option<serde_json::Value> = app
            .db
            .first("webhook event status", &webhook_events::status(&row_id))
            .await?;
        if stored.as_ref().and_then(|s| s["status"].as_str()) != Some("received") {
            return json(&json!({"received": true, "duplicate": true}), 200);
        }
    }
    app.io.queue_send();
    app.events_queue()?
        .send(shared::messages::EventMessage::apply(&row_id))
        .await
        .step("queue send webhook.apply")?;
    json(&json!({"received": true, "duplicate": inserted == 0}), 200)
}
