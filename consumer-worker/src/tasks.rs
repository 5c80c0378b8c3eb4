//! The task pipeline's steps: submit, then poll until the provider answers, then store and
//! settle. Each step returns what comes next; failures are turned into a decision by
//! `shared::retry::decide`.

use crate::batch::{Ctx, Handled, Next};
use crate::group::SubmitWrites;
use crate::provider;
use crate::store::{self, storage};
use crate::turns::Turn;
use serde_json::Value;
use shared::edge::{now, StepExt};
use shared::ids::TaskId;
use shared::keys::result_key;
use shared::kie::Progress;
use shared::messages::{self, TaskMessage};
use shared::model::Model;
use shared::retry::{decide, Decision, Failure};
use shared::signing::signed_file_url;
use shared::submit::{ImageRef, TaskInput};
use std::collections::HashMap;
use worker::HttpMetadata;

/// What a step leads to.
enum Step {
    Done,
    Then(TaskMessage, u32),
}

/// How long signed upload URLs given to the provider stay valid.
const INPUT_URL_TTL_SECS: i64 = 3600;

/// Handles one task message; `writes` are a `task.submit`'s places in its batch's grouped
/// writes (dropped unused by any other message).
pub async fn handle(ctx: &Ctx, body: &Value, writes: Option<SubmitWrites>) -> Handled {
    let msg: TaskMessage = match messages::parse(body) {
        Ok(m) => m,
        Err(e) => return Handled::dead(e.class(), e.to_string()),
    };
    let task_id = Some(msg.task_id().to_string());
    let result = match &msg {
        TaskMessage::Submit { task_id, .. } => submit(ctx, task_id, writes).await,
        TaskMessage::Poll { .. } => poll(ctx, &msg).await,
        TaskMessage::Store { .. } => store(ctx, &msg).await,
    };
    match result {
        Ok(Step::Done) => Handled {
            next: Next::Ack,
            task_id,
            error: None,
        },
        Ok(Step::Then(next, delay)) => Handled {
            next: send(&next, delay),
            task_id,
            error: None,
        },
        Err(failure) => {
            let error = Some((failure.class().to_owned(), failure.detail().to_owned()));
            let next = match decide(&failure, msg.failures(), &ctx.cfg.transient) {
                Decision::Ack => Next::Ack,
                Decision::RetryAfter { seconds } => send(&msg.after_failure(), seconds),
                Decision::DeadLetter { class, reason } => Next::DeadLetter { class, reason },
            };
            Handled {
                next,
                task_id,
                error,
            }
        }
    }
}

fn send(msg: &TaskMessage, delay: u32) -> Next {
    Next::task(msg, delay)
}

async fn submit(ctx: &Ctx, task: &TaskId, writes: Option<SubmitWrites>) -> Result<Step, Failure> {
    let (claim, accept) = writes.map_or((None, None), |w| (Some(w.claim), Some(w.accept)));
    let Some(claimed) = store::claim(ctx, task, claim).await.map_err(storage)? else {
        // Another delivery claimed it, or it already ended: nothing to do.
        return Ok(Step::Done);
    };
    let deadline_at = claimed.deadline_at.unwrap_or(i64::MAX);
    if now() >= deadline_at {
        store::fail(ctx, task, "deadline_exceeded").await?;
        return Ok(Step::Done);
    }
    let input: TaskInput = match serde_json::from_str(&claimed.input_params) {
        Ok(i) => i,
        Err(e) => {
            store::fail(ctx, task, &format!("invalid_input: {e}")).await?;
            return Ok(Step::Done);
        }
    };
    let model = input.model;
    let urls: Vec<String> = input
        .images
        .iter()
        .map(|image| match image {
            ImageRef::Url(u) => u.clone(),
            ImageRef::Upload(key) => signed_file_url(
                &ctx.cfg.public_base_url,
                ctx.cfg.files_signing_key.as_bytes(),
                key,
                now() + INPUT_URL_TTL_SECS,
            ),
        })
        .collect();
    match provider::create(
        ctx,
        task,
        model,
        &input.prompt,
        &input.size,
        &urls,
        deadline_at,
    )
    .await
    {
        Ok(external_id) => {
            // D1 learns the provider's id now: from here on, recovery polls it and nothing
            // creates the task at the provider again. If this write fails, the poll carries the
            // id and records it first.
            let recorded = match store::accept(ctx, task, &external_id, accept).await {
                Ok(()) => true,
                Err(e) => {
                    shared::edge::log(
                        serde_json::json!({"level": "warn", "event": "accept_write_failed", "task_id": task.to_string(), "cause": e.to_string()}),
                    );
                    false
                }
            };
            let first_poll =
                TaskMessage::first_poll(*task, model, external_id, deadline_at, !recorded, now());
            let wait =
                shared::retry::first_poll_delay(&ctx.cfg.poll, ctx.cfg.typical_generation_secs);
            Ok(Step::Then(first_poll, wait))
        }
        Err(Failure::Permanent { class, detail }) => {
            store::fail(ctx, task, &format!("{class}: {detail}")).await?;
            Ok(Step::Done)
        }
        Err(uncertain) if shared::kie::create_may_have_reached_provider(&uncertain) => {
            // The provider may have taken it (no answer, or an answer we could not read):
            // creating it again could pay for it twice. The task stays `submitted`; the
            // provider's callback names its id, or the deadline fails it and releases the hold.
            shared::edge::log(
                serde_json::json!({"level": "warn", "event": "create_outcome_unknown", "task_id": task.to_string(),
                                   "error_class": uncertain.class(), "error": uncertain.detail()}),
            );
            Ok(Step::Done)
        }
        Err(transient) => {
            store::unclaim(ctx, task).await.map_err(storage)?;
            Err(transient)
        }
    }
}

async fn poll(ctx: &Ctx, msg: &TaskMessage) -> Result<Step, Failure> {
    let TaskMessage::Poll {
        task_id,
        model,
        external_id,
        deadline_at,
        attempt,
        follow_up,
        record,
        ..
    } = msg
    else {
        return Ok(Step::Done);
    };
    if now() >= *deadline_at {
        store::fail(ctx, task_id, "deadline_exceeded").await?;
        return Ok(Step::Done);
    }
    // A poll of a task that already ended (the chain after the callback's poll ended it, or a
    // repeated callback) would only cost a provider call: this isolate's memory of ended tasks
    // (`ended`), else a KV read, is cheaper, and D1 is not touched. This one check also stands
    // for the store step's when this poll stores.
    if store::known_ended(ctx, task_id).await {
        return Ok(Step::Done);
    }
    let Some(_turn) = take_turn(ctx, task_id).await else {
        return Ok(Step::Done);
    };
    let progress = match provider::record(ctx, *model, external_id).await {
        Ok(p) => p,
        // The provider says it cannot answer for this task, ever: it ends now.
        Err(Failure::Permanent { class, detail }) => Progress::Failed {
            class,
            reason: detail,
        },
        Err(transient) => return Err(transient),
    };
    // D1 may not know the id yet (the write after create failed, or a callback names it). A task
    // that ended takes it with its end (`task::succeed`, `ledger::fail_on_answer`); one that goes
    // on records it now, or this poll is retried.
    if *record && matches!(progress, Progress::Generating) {
        store::accept(ctx, task_id, external_id, None)
            .await
            .map_err(storage)?;
    }
    match progress {
        // a callback-prompted poll leaves the waiting to the chain that was already running
        Progress::Generating if !follow_up => Ok(Step::Done),
        Progress::Generating => {
            let at = now();
            let renewed = if msg.lease_due(at, ctx.cfg.task_lease_secs) {
                match store::renew_lease(ctx, task_id).await {
                    Ok(()) => Some(at),
                    Err(e) => {
                        // the next poll tries again; the worst case is a second chain
                        shared::edge::log(
                            serde_json::json!({"level": "warn", "event": "lease_renewal_failed", "task_id": task_id.to_string(), "cause": e.to_string()}),
                        );
                        None
                    }
                }
            } else {
                None
            };
            Ok(Step::Then(
                msg.next_poll(renewed),
                ctx.cfg.poll.delay_secs(attempt + 1),
            ))
        }
        Progress::Failed { class, reason } => {
            store::fail_on_answer(ctx, task_id, external_id, &format!("{class}: {reason}")).await?;
            Ok(Step::Done)
        }
        Progress::Succeeded { urls } => {
            let Some(next) = msg.store(urls) else {
                return Ok(Step::Done);
            };
            // Store now (KV was read above); if a download fails, the store step retries on
            // its own from here.
            match store_and_settle(ctx, &next).await {
                Err(f @ Failure::Transient { .. }) => {
                    let delay = ctx.cfg.transient.delay_secs(0);
                    shared::edge::log(
                        serde_json::json!({"event": "store_deferred", "task_id": task_id.to_string(), "error_class": f.class(), "error": f.detail()}),
                    );
                    Ok(Step::Then(next.after_failure(), delay))
                }
                other => other,
            }
        }
    }
}

/// The store step as its own message (a poll's store that was deferred): stops early when the
/// task is known to have ended (`store::known_ended`), else takes the task's turn in the batch
/// (`turns`) and [`store_and_settle`].
async fn store(ctx: &Ctx, msg: &TaskMessage) -> Result<Step, Failure> {
    if store::known_ended(ctx, &msg.task_id()).await {
        return Ok(Step::Done);
    }
    let Some(_turn) = take_turn(ctx, &msg.task_id()).await else {
        return Ok(Step::Done);
    };
    store_and_settle(ctx, msg).await
}

/// Takes the task's turn in the batch (`turns`): another poll of it in the batch goes first.
/// `None` when the one it waited for ended the task (`store::known_ended` says so).
async fn take_turn(ctx: &Ctx, task: &TaskId) -> Option<Turn> {
    let (turn, waited) = ctx.turns.take(&task.to_string()).await;
    if waited && store::known_ended(ctx, task).await {
        None
    } else {
        Some(turn)
    }
}

/// Downloads the results, stores them and settles the task. A result over the size cap fails
/// the task; other failures are transient and retried by the caller.
async fn store_and_settle(ctx: &Ctx, msg: &TaskMessage) -> Result<Step, Failure> {
    let TaskMessage::Store {
        task_id,
        model,
        external_id,
        deadline_at,
        urls,
        ..
    } = msg
    else {
        return Ok(Step::Done);
    };
    if now() >= *deadline_at {
        store::fail(ctx, task_id, "deadline_exceeded").await?;
        return Ok(Step::Done);
    }
    let keys = match store_results(ctx, *model, task_id, urls).await {
        Ok(keys) => keys,
        Err(Failure::Permanent { class, detail }) => {
            store::fail_on_answer(ctx, task_id, external_id, &format!("{class}: {detail}")).await?;
            return Ok(Step::Done);
        }
        Err(transient) => return Err(transient),
    };
    store::complete(ctx, task_id, external_id, urls, &keys).await?;
    Ok(Step::Done)
}

/// Downloads every result into R2 at its deterministic key; a repeat overwrites the same
/// objects instead of adding new ones.
async fn store_results(
    ctx: &Ctx,
    model: Model,
    task: &TaskId,
    urls: &[String],
) -> Result<Vec<String>, Failure> {
    let mut keys = Vec::with_capacity(urls.len());
    for (n, url) in urls.iter().enumerate() {
        let image = match provider::download(ctx, &ctx.downloads, url).await {
            Ok(i) => i,
            Err(Failure::Permanent { class, detail }) => {
                return Err(Failure::permanent(class, format!("result {n}: {detail}")));
            }
            Err(e) => return Err(e),
        };
        let key = result_key(model, task, n, image.extension);
        let meta = HttpMetadata {
            content_type: Some(image.content_type.into()),
            ..Default::default()
        };
        let custom = HashMap::from([
            (
                "source".to_owned(),
                url.chars().take(1024).collect::<String>(),
            ),
            ("task_id".to_owned(), task.to_string()),
        ]);
        ctx.bucket()
            .map_err(storage)?
            .put(key.clone(), image.bytes)
            .http_metadata(meta)
            .custom_metadata(custom)
            .execute()
            .await
            .step(format!("r2 put {key}"))
            .map_err(storage)?;
        keys.push(key);
    }
    Ok(keys)
}
