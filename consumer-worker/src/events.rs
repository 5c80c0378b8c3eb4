//! Applying stored payment events. The planning is `shared::payments` and the stored row's
//! statements `shared::webhook_events`; here we read the event and what it refers to, run the plan and the event's own status change in one D1 batch, and decide
//! what happens to the message. The amounts come from the order and subscription rows, never
//! from configuration: the consumer needs no catalogue. An event whose subject is not known yet
//! is retried with a delay, then dead-lettered (`unresolved_reference`); one the plan holds
//! (`Plan::Hold`: what was paid does not match the order, a refund says no amount) is
//! dead-lettered at once (`payment_mismatch`). Both stay `received`, with the reason as their
//! note, for the event reconciler and the operators.

use crate::batch::{Ctx, Handled, Next};
use crate::config;
use crate::store::storage;
use serde_json::Value;
use shared::edge::now;
use shared::messages::{self, EventMessage};
use shared::payments::{self, Plan, Subjects};
use shared::retry::Failure;
use shared::webhook_events::{self, StoredEvent};

/// How many times an event whose subject is not known yet is tried before it is dead-lettered.
const MAX_WAITS: u32 = 6;

/// The dead-letter class of an event held for an operator (`Plan::Hold`).
const HELD_CLASS: &str = "payment_mismatch";

/// What became of an event.
enum Outcome {
    /// Applied, ignored or rejected (or already was): nothing more to do.
    Done,
    /// Its subject is not known yet: try again later.
    Wait(String),
    /// It cannot be applied as it stands: an operator must look at it.
    Hold(String),
}

fn done(event_row: &str) -> Handled {
    Handled {
        next: Next::Ack,
        task_id: Some(event_row.to_owned()),
        error: None,
    }
}

pub async fn handle(ctx: &Ctx, body: &Value) -> Handled {
    let msg: EventMessage = match messages::parse(body) {
        Ok(m) => m,
        Err(e) => return Handled::dead(e.class(), e.to_string()),
    };
    let EventMessage::Apply {
        event_row, attempt, ..
    } = &msg;
    let again = |delay: u32| Next::Send {
        binding: config::EVENTS,
        message: serde_json::to_string(&EventMessage::Apply {
            v: messages::VERSION,
            event_row: event_row.clone(),
            attempt: attempt + 1,
        })
        .unwrap_or_default(),
        delay,
    };
    let dead_letter = |class: &str, reason: String| Handled {
        next: Next::DeadLetter {
            class: class.into(),
            reason: reason.clone(),
        },
        task_id: Some(event_row.clone()),
        error: Some((class.into(), reason)),
    };
    match apply(ctx, event_row).await {
        Ok(Outcome::Done) => done(event_row),
        Ok(Outcome::Wait(waiting_for)) if attempt + 1 < MAX_WAITS => Handled {
            next: again(ctx.cfg.transient.delay_secs(*attempt)),
            task_id: Some(event_row.clone()),
            error: Some(("waiting".into(), waiting_for)),
        },
        Ok(Outcome::Wait(waiting_for)) => {
            // The event stays `received` (only its note changes): the provider's redelivery
            // re-queues it, the event reconciler finds it, and replaying the dead letter
            // applies it once its subject is known. Nothing marks it done that was not done.
            let reason = format!("gave up after {MAX_WAITS} tries: {waiting_for}");
            note(ctx, event_row, &reason).await;
            dead_letter("unresolved_reference", reason)
        }
        Ok(Outcome::Hold(why)) => {
            // Waiting would not change it (what was paid does not match the order, or a refund
            // says no amount): the event stays `received` with the reason, and goes to the
            // operators at once. Like a waiting event, it is never marked done.
            let reason = format!("held for an operator ({HELD_CLASS}): {why}");
            note(ctx, event_row, &reason).await;
            dead_letter(HELD_CLASS, reason)
        }
        Err(failure) => {
            let error = Some((failure.class().to_owned(), failure.detail().to_owned()));
            let next = match shared::retry::decide(&failure, *attempt, &ctx.cfg.transient) {
                shared::retry::Decision::RetryAfter { seconds } => again(seconds),
                shared::retry::Decision::DeadLetter { class, reason } => {
                    Next::DeadLetter { class, reason }
                }
                shared::retry::Decision::Ack => Next::Ack,
            };
            Handled {
                next,
                task_id: Some(event_row.clone()),
                error,
            }
        }
    }
}

/// Notes on a `received` event why it is not applied; a failure to note is logged, not fatal
/// (the dead letter carries the same reason).
async fn note(ctx: &Ctx, event_row: &str, reason: &str) {
    if let Err(e) = ctx
        .db
        .run(
            "note waiting event",
            &payments::note_waiting(event_row, reason),
        )
        .await
    {
        shared::edge::log(
            serde_json::json!({"level": "warn", "event": "event_note_failed", "event_row": event_row, "cause": e.to_string()}),
        );
    }
}

/// Applies one stored event.
async fn apply(ctx: &Ctx, event_row: &str) -> Result<Outcome, Failure> {
    let stored: Option<StoredEvent> = ctx
        .db
        .first("stored event", &webhook_events::load(event_row))
        .await
        .map_err(storage)?;
    let Some(stored) = stored else {
        return Err(Failure::permanent(
            "unknown_event",
            format!("no stored event {event_row}"),
        ));
    };
    if stored.status != "received" {
        return Ok(Outcome::Done); // applied, ignored or rejected already: a redelivery changes nothing
    }
    let at = now();
    let event = match payments::parse_event(stored.payload.as_bytes()) {
        Ok(e) => e,
        Err(why) => {
            ctx.db
                .run(
                    "reject event",
                    &payments::mark_event(&stored.id, "rejected", Some(&why), at),
                )
                .await
                .map_err(storage)?;
            return Ok(Outcome::Done);
        }
    };
    let lookups = ctx
        .db
        .batch("event subjects", &payments::subject_lookups(&event))
        .await
        .map_err(storage)?;
    let read = |i: usize| -> Result<Vec<Value>, Failure> {
        lookups
            .get(i)
            .map(shared::edge::rows::<Value>)
            .transpose()
            .map_err(storage)
            .map(Option::unwrap_or_default)
    };
    let subjects = Subjects {
        order: read(0)?.into_iter().next().map(parse).transpose()?,
        subscription: read(1)?.into_iter().next().map(parse).transpose()?,
        payment_grants: read(2)?.into_iter().map(parse).collect::<Result<_, _>>()?,
        // a stored payload that is not an event is a rejected one: it says nothing
        refunds: read(3)?
            .into_iter()
            .filter_map(|row| row["payload"].as_str().and_then(payments::stored_refund))
            .collect(),
    };

    match payments::plan(&event, &subjects, at) {
        Plan::Apply { mut stmts, note } => {
            // The event's own status goes in the same batch: applied exactly when its effects are.
            stmts.push(payments::mark_event(
                &stored.id,
                "applied",
                note.as_deref(),
                at,
            ));
            ctx.db
                .batch(&format!("apply {}", event.event_type), &stmts)
                .await
                .map_err(storage)?;
            Ok(Outcome::Done)
        }
        Plan::Ignore(why) => {
            ctx.db
                .run(
                    "ignore event",
                    &payments::mark_event(&stored.id, "ignored", Some(&why), at),
                )
                .await
                .map_err(storage)?;
            Ok(Outcome::Done)
        }
        Plan::Wait(why) => Ok(Outcome::Wait(why)),
        Plan::Hold(why) => Ok(Outcome::Hold(why)),
    }
}

/// A row as its type; a row that does not fit is our fault and no retry mends it.
fn parse<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, Failure> {
    serde_json::from_value(v).map_err(|e| Failure::permanent("corrupt_row", e.to_string()))
}
