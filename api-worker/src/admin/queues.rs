//! `POST /admin/queues/:queue/messages`: sending messages to the tasks or events queue by hand,
//! as they are (to re-drive work, and for fault-injection tests). Audited.

use super::audit_log::audit;
use crate::auth;
use crate::context::reply;
use crate::error::{json, ApiError, ApiResult};
use crate::request::json_body;
use crate::router::{Ctx, Routes};
use serde_json::{json, Value};
use shared::edge::send_json_batch;
use shared::validation::FieldError;
use worker::Request;

pub fn routes(r: Routes) -> Routes {
    r.post_async("/admin/queues/:queue/messages", |req, ctx| async move {
        reply(send_messages(req, &ctx).await)
    })
}

/// `POST /admin/queues/:queue/messages {messages: [..], delay_seconds?}`: 1 to 100 bodies, each
/// at most 128 KB as JSON text.
async fn send_messages(mut req: Request, ctx: &Ctx) -> ApiResult {
    let app = &ctx.data;
    let actor = auth::operator(&req, app).await?.actor()?;
    let name = ctx.param("queue").cloned().unwrap_or_default();
    let queue = match name.as_str() {
        "tasks" => app.tasks_queue()?,
        "events" => app.events_queue()?,
        _ => return Err(ApiError::NotFound("queue")),
    };
    let body = json_body(&mut req, 1024 * 1024).await?;
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .filter(|m| !m.is_empty() && m.len() <= 100)
        .ok_or_else(|| {
            FieldError::new(
                "messages",
                "invalid_value",
                "must be an array of 1 to 100 JSON values",
            )
        })?;
    let delay = match body.get("delay_seconds") {
        None | Some(Value::Null) => 0,
        Some(v) => v
            .as_u64()
            .and_then(|d| u32::try_from(d).ok())
            .filter(|d| *d <= 43_200)
            .ok_or_else(|| {
                FieldError::new("delay_seconds", "invalid_value", "must be 0 to 43200")
            })?,
    };
    let texts: Vec<String> = messages.iter().map(Value::to_string).collect();
    if texts.iter().any(|t| t.len() > 128 * 1024) {
        return Err(ApiError::TooLarge(
            "a queue message is at most 128 KB".into(),
        ));
    }
    send_json_batch(&app.io, &queue, &texts, delay).await?;
    app.db
        .run(
            "audit send",
            &audit(
                &actor,
                "queue.send",
                &name,
                &json!({"count": texts.len(), "delay_seconds": delay}),
            ),
        )
        .await?;
    json(&json!({"sent": texts.len()}), 202)
}
