//! The dead-letter archive: every message we gave up on, in D1 (large bodies in R2), once per
//! (source queue, message id).

use crate::batch::{Handled, Next};
use crate::config::QueueNames;
use serde_json::Value;
use shared::edge::{now, Db, IoCounts, IoError, StepExt};
use shared::keys::dead_letter_body_key;
use shared::messages;
use shared::signing::token_digest;
use shared::sql::Stmt;
use worker::HttpMetadata;

/// Bodies above this go to R2 and the row keeps the key.
const INLINE_BODY_BYTES: usize = 32 * 1024;

pub struct Dead<'a> {
    pub queue: &'a str,
    pub message_id: &'a str,
    pub body: &'a Value,
    pub text: &'a str,
    pub class: &'a str,
    pub reason: &'a str,
}

/// What archiving needs: D1, and R2 for large bodies. Not the rest of the configuration, so a
/// consumer whose configuration is broken still archives what reaches its dead-letter queue.
pub struct Archive<'a> {
    pub env: &'a worker::Env,
    pub db: &'a Db,
    pub io: &'a IoCounts,
}

/// Archives one dead message. Redelivery updates the same row instead of adding one.
pub async fn archive(ctx: &Archive<'_>, dead: Dead<'_>) -> Result<(), IoError> {
    let id = format!(
        "dl_{}",
        &token_digest(&format!("{}\n{}", dead.queue, dead.message_id))[..32]
    );
    let (inline, r2_key) = if dead.text.len() > INLINE_BODY_BYTES {
        let key = dead_letter_body_key(&id);
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
        (None, Some(key))
    } else {
        (Some(dead.text.to_owned()), None)
    };
    let attempts = dead
        .body
        .get("attempt")
        .and_then(Value::as_i64)
        .map_or(1, |a| a + 1);
    let at = now();
    ctx.db
        .run(
            "archive dead letter",
            &Stmt::new(
                "INSERT INTO dead_letters (id, source_queue, message_id, message_type, body, body_r2_key, attempts,
                                           error_class, error_text, first_failed_at, last_failed_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10)
                 ON CONFLICT (source_queue, message_id) DO UPDATE SET
                   last_failed_at = excluded.last_failed_at,
                   attempts = MAX(dead_letters.attempts, excluded.attempts),
                   error_class = excluded.error_class,
                   error_text = excluded.error_text",
                vec![
                    id.into(),
                    dead.queue.into(),
                    dead.message_id.into(),
                    messages::type_of(dead.body).map(str::to_owned).into(),
                    inline.into(),
                    r2_key.into(),
                    attempts.into(),
                    dead.class.into(),
                    dead.reason.chars().take(2000).collect::<String>().into(),
                    at.into(),
                ],
            ),
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
