//! One batch in, one decision per message out. A message's fate never depends on its
//! neighbours' (a poll may wait for a neighbour's poll of the same task, `turns`, and then
//! decides from what KV says), and nothing here returns an error to the runtime.

use crate::config::{self, Config};
use crate::group::SubmitWrites;
use crate::turns::Turns;
use crate::{dead_letters, tasks};
use serde_json::{json, Value};
use shared::budget::{ByteBudget, BATCH_BUDGET_BYTES};
use shared::edge::{log, now_ms, send_json_batch, Db, IoCounts, IoError, StepExt};
use shared::messages;
use std::rc::Rc;
use worker::{Env, MessageBatch, MessageExt, QueueRetryOptionsBuilder, RawMessage};

/// What one message's handling needs.
pub struct Ctx {
    pub env: Env,
    pub cfg: Rc<Config>,
    pub io: Rc<IoCounts>,
    pub db: Db,
    /// Result bytes this batch's messages may hold at once (they run concurrently in one
    /// isolate of 128 MB): shared by every message of the batch.
    pub downloads: Rc<ByteBudget>,
    /// One poll of a task at a time in the batch.
    pub turns: Rc<Turns>,
}

impl Ctx {
    pub fn kv(&self) -> Result<worker::KvStore, IoError> {
        self.io.kv();
        self.env.kv(config::KV).step("binding KV")
    }
    pub fn bucket(&self) -> Result<worker::Bucket, IoError> {
        self.io.r2();
        self.env.bucket(config::BUCKET).step("binding BUCKET")
    }
    pub fn archive(&self) -> dead_letters::Archive<'_> {
        dead_letters::Archive {
            env: &self.env,
            db: &self.db,
            io: &self.io,
        }
    }
}

/// What to do with a message once handled.
#[derive(Debug)]
pub enum Next {
    /// Done: acknowledge.
    Ack,
    /// Send this follow-up (JSON text, to the queue bound as `binding`) after `delay` seconds,
    /// then acknowledge. If the send fails the message itself is retried by the queue.
    Send {
        binding: &'static str,
        message: String,
        delay: u32,
    },
    /// Archive for operators, then acknowledge.
    DeadLetter { class: String, reason: String },
}

/// The outcome of one message plus what the log line needs.
pub struct Handled {
    pub next: Next,
    pub task_id: Option<String>,
    pub error: Option<(String, String)>,
}

impl Next {
    /// A task message to send to the tasks queue.
    pub fn task(msg: &messages::TaskMessage, delay: u32) -> Next {
        Next::Send {
            binding: config::TASKS,
            message: serde_json::to_string(msg).unwrap_or_default(),
            delay,
        }
    }
}

impl Handled {
    pub fn dead(class: &str, reason: impl Into<String>) -> Self {
        let reason = reason.into();
        Handled {
            next: Next::DeadLetter {
                class: class.to_owned(),
                reason: reason.clone(),
            },
            task_id: None,
            error: Some((class.to_owned(), reason)),
        }
    }
}

pub async fn handle(batch: MessageBatch<Value>, env: Env) {
    let queue = batch.queue();
    let cfg = match Config::from_env(&env) {
        Ok(c) => Rc::new(c),
        Err(e) => return misconfigured(batch, &env, &queue, &e.0).await,
    };
    let started = now_ms();
    let messages: Vec<RawMessage> = batch.raw_iter().collect();
    let bodies: Vec<(Value, String)> = messages.iter().map(body_of).collect();
    let downloads = Rc::new(ByteBudget::new(BATCH_BUDGET_BYTES));
    let turns = Rc::new(Turns::default());
    // the batch's task.submit messages claim and accept their tasks in one round trip each
    let is_submit: Vec<bool> = bodies
        .iter()
        .map(|(b, _)| queue == cfg.queues.tasks && messages::type_of(b) == Some("task.submit"))
        .collect();
    let submits = is_submit.iter().filter(|s| **s).count();
    let mut writes = match Db::new(&env, config::DB, Rc::new(IoCounts::default())) {
        Ok(db) if submits > 0 => SubmitWrites::for_batch(&db, submits),
        _ => Vec::new(),
    }
    .into_iter();
    let shared = BatchShared {
        queue: &queue,
        cfg: &cfg,
        env: &env,
        downloads: &downloads,
        turns: &turns,
    };
    let work = messages
        .iter()
        .zip(bodies)
        .zip(is_submit)
        .map(|((m, (body, text)), submit)| {
            let mine = if submit { writes.next() } else { None };
            handle_one(m, body, text, mine, &shared)
        });
    futures::future::join_all(work.collect::<Vec<_>>()).await;
    // batch sizes and how long the slowest message held the batch: what throughput is made of
    log(
        json!({"event": "batch", "queue": queue, "messages": messages.len(), "ms": now_ms().saturating_sub(started)}),
    );
}

/// Nothing but archiving can be done without configuration. Task and event messages go back to
/// their queue with a delay (after its retries, to the dead-letter queue); the dead-letter queue
/// archives what reaches it in D1, which needs no configuration. Once the configuration is
/// fixed, the reconcilers find the tasks and events those messages were about (they are still
/// live in D1) and send them again: nothing is lost.
async fn misconfigured(batch: MessageBatch<Value>, env: &Env, queue: &str, cause: &str) {
    log(
        json!({"level": "error", "event": "consumer.misconfigured", "queue": queue, "cause": cause}),
    );
    let queues = config::QueueNames::from_env(env);
    let io = Rc::new(IoCounts::default());
    let db = match Db::new(env, config::DB, io.clone()) {
        Ok(db) if queue == queues.dead_letters => db,
        _ => {
            batch.retry_all_with_options(
                &QueueRetryOptionsBuilder::new()
                    .with_delay_seconds(60)
                    .build(),
            );
            return;
        }
    };
    let archive = dead_letters::Archive {
        env,
        db: &db,
        io: &io,
    };
    for msg in batch.raw_iter() {
        let (body, text) = body_of(&msg);
        let handled =
            dead_letters::from_dead_letter_queue(&archive, &queues, &msg.id(), &body, &text).await;
        match handled.next {
            Next::Ack => msg.ack(),
            _ => msg.retry_with_options(
                &QueueRetryOptionsBuilder::new()
                    .with_delay_seconds(30)
                    .build(),
            ),
        }
    }
}

fn body_of(msg: &RawMessage) -> (Value, String) {
    let raw = msg.body();
    let text = worker::js_sys::JSON::stringify(&raw)
        .ok()
        .and_then(|s| s.as_string())
        .unwrap_or_default();
    let value = serde_json::from_str(&text).unwrap_or(Value::Null);
    (value, text)
}

/// What every message of a batch shares.
struct BatchShared<'a> {
    queue: &'a str,
    cfg: &'a Rc<Config>,
    env: &'a Env,
    downloads: &'a Rc<ByteBudget>,
    turns: &'a Rc<Turns>,
}

async fn handle_one(
    msg: &RawMessage,
    body: Value,
    text: String,
    writes: Option<SubmitWrites>,
    batch: &BatchShared<'_>,
) {
    let BatchShared {
        queue,
        cfg,
        env,
        downloads,
        turns,
    } = *batch;
    let started = now_ms();
    let io = Rc::new(IoCounts::default());
    let kind = messages::type_of(&body).map(str::to_owned);
    let attempt = body.get("attempt").and_then(Value::as_u64).unwrap_or(0);

    let handled = match Db::new(env, config::DB, io.clone()) {
        Err(e) => Handled::dead("misconfigured", e.to_string()),
        Ok(db) => {
            let ctx = Ctx {
                env: env.clone(),
                cfg: cfg.clone(),
                io: io.clone(),
                db,
                downloads: downloads.clone(),
                turns: turns.clone(),
            };
            if queue == cfg.queues.tasks {
                tasks::handle(&ctx, &body, writes).await
            } else if queue == cfg.queues.events {
                crate::events::handle(&ctx, &body).await
            } else if queue == cfg.queues.dead_letters {
                dead_letters::from_dead_letter_queue(
                    &ctx.archive(),
                    &cfg.queues,
                    &msg.id(),
                    &body,
                    &text,
                )
                .await
            } else {
                Handled::dead("unknown_queue", format!("no handler for queue {queue}"))
            }
            .finish(&ctx, msg, queue, &body, &text)
            .await
        }
    };
    let (decision, delay) = match &handled.next {
        Next::Ack => ("ack", None),
        Next::Send { delay, .. } => ("send", Some(*delay)),
        Next::DeadLetter { .. } => ("dead_letter", None),
    };
    log(json!({
        "event": "message",
        "queue": queue,
        "message_id": msg.id(),
        "type": kind,
        "task_id": handled.task_id,
        "attempt": attempt,
        "decision": decision,
        "delay_secs": delay,
        "error_class": handled.error.as_ref().map(|e| e.0.clone()),
        "error": handled.error.as_ref().map(|e| e.1.clone()),
        "ms": now_ms().saturating_sub(started),
        "io": io.to_json(),
    }));
}

impl Handled {
    /// Carries out the decision on the message itself.
    async fn finish(
        self,
        ctx: &Ctx,
        msg: &RawMessage,
        queue: &str,
        body: &Value,
        text: &str,
    ) -> Handled {
        let retry_later = |secs: u32| {
            msg.retry_with_options(
                &QueueRetryOptionsBuilder::new()
                    .with_delay_seconds(secs)
                    .build(),
            )
        };
        match &self.next {
            Next::Ack => msg.ack(),
            Next::Send {
                binding,
                message,
                delay,
            } => {
                let copies = if ctx.cfg.chaos_duplicate_sends { 2 } else { 1 };
                let bodies = vec![message.clone(); copies];
                let sent = match ctx.env.queue(binding).step(format!("binding {binding}")) {
                    Ok(q) => send_json_batch(&ctx.io, &q, &bodies, *delay).await,
                    Err(e) => Err(e),
                };
                match sent {
                    Ok(()) => msg.ack(),
                    Err(e) => {
                        log(
                            json!({"level": "error", "event": "follow_up_send_failed", "cause": e.to_string()}),
                        );
                        retry_later(*delay);
                    }
                }
            }
            Next::DeadLetter { class, reason } => {
                let archived = dead_letters::archive(
                    &ctx.archive(),
                    shared::dead_letters::Dead {
                        queue,
                        message_id: &msg.id(),
                        body,
                        text,
                        class,
                        reason,
                    },
                )
                .await;
                match archived {
                    Ok(()) => msg.ack(),
                    Err(e) => {
                        log(
                            json!({"level": "error", "event": "archive_failed", "cause": e.to_string()}),
                        );
                        retry_later(30);
                    }
                }
            }
        }
        self
    }
}
