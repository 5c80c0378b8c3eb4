//! Archiving dead letters: the R2 body and the D1 row of `shared::dead_letters` (one row per
//! source queue and message id, large bodies in R2), and the dead-letter queue's own messages.

use crate::batch::{Handled, Next};
use crate::config::QueueNames;
use serde_json::Value;
use shared::dead_letters::{self, Dead};
use shared::edge::{now, Db, IoCounts, IoError, StepExt};
use shared::keys::dead_letter_body_key;
use shared::messages;
use worker::HttpMetadata;

/// What archiving needs: D1, and R2 for large bodies. Not the rest of the configuration, so a
/// consumer whose configuration is broken still archives what reaches its dead-letter queue.
pub struct Archive<'a> {
    pub env: &'a worker::Env,
    pub db: &'a Db,
    pub io: &'a IoCounts,
}

/// Archives one dead message. Redelivery updates the same row instead of adding one. A large
/// body is put in R2 before the row that points to it.
pub async fn archive(ctx: &Archive<'_>, dead: Dead<'_>) -> Result<(), IoError> {
    let r2_key = if dead.body_goes_to_r2() {
        let key = dead_letter_body_key(&dead.id());
        let meta = HttpMetadata {
            content_type: Some("application/json".into()),
            ..Default::default()
        };
        ctx.io.r2();
        ctx.env
            .bucket(crate::config::BUCKET)
            .step("binding BUCKET")?
            .put(key.clone(), dead.text.as_bytes().to_vec())
            .http_metadata(meta)
            .execute()
            .await
            .step("r2 put dead letter body")?;
        Some(key)
    } else {
        None
    };
    ctx.db
        .run(
            "archive dead letter",
            &dead_letters::archive(&dead, r2_key.as_deref(), now()),
        )
        .await?;
    Ok(())
}

/// A message the queue gave up on (its retries ran out): archive it under the queue it came
/// from, which its type tells.
pub async fn from_dead_letter_queue(
    ctx: &Archive<'_>,
    queues: &QueueNames,
    message_id: &str,
    body: &Value,
    text: &str,
) -> Handled {
    let source = match messages::type_of(body) {
        Some(t) if t.starts_with("task.") => queues.tasks.clone(),
        Some(t) if t.starts_with("webhook.") => queues.events.clone(),
        _ => "unknown".to_owned(),
    };
    let dead = Dead {
        queue: &source,
        message_id,
        body,
        text,
        class: "retries_exhausted",
        reason: "the queue's delivery retries ran out",
    };
    match archive(ctx, dead).await {
        Ok(()) => Handled {
            next: Next::Ack,
            task_id: None,
            error: None,
        },
        Err(e) => Handled {
            // retried by the DLQ consumer's own max_retries; logged each time
            next: Next::DeadLetter {
                class: "archive_failed".into(),
                reason: e.to_string(),
            },
            task_id: None,
            error: Some(("archive_failed".into(), e.to_string())),
        },
    }
}
