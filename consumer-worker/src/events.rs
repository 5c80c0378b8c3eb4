//! Applying stored payment events. The planning is `shared::payments`; here we read what an
//! event refers to, run the plan and the event's own status change in one D1 batch, and decide
//! what happens to the message.

use crate::batch::{Ctx, Handled, Next};
use crate::config;
use serde::Deserialize;
use serde_json::Value;
use shared::edge::now;
use shared::ledger::Stmt;
use shared::messages::{self, EventMessage};
use shared::payments::{self, OrderRow, Plan, SubscriptionRow};
use shared::retry::Failure;

/// How many times an event whose subject is not known yet is tried before it is dead-lettered.
const MAX_WAITS: u32 = 6;

#[derive(Deserialize)]
struct StoredEvent {
    id: String,
    payload: String,
    status: String,
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
    match apply(ctx, event_row).await {
        Ok(None) => done(event_row),
        Ok(Some(waiting_for)) if attempt + 1 < MAX_WAITS => {
            let next = EventMessage::Apply {
                v: messages::VERSION,
                event_row: event_row.clone(),
                attempt: attempt + 1,
            };
            Handled {
                next: Next::Send {
                    binding: config::EVENTS,
                    message: serde_json::to_string(&next).unwrap_or_default(),
                    delay: ctx.cfg.transient.delay_secs(*attempt),
                },
                task_id: Some(event_row.clone()),
                error: Some(("waiting".into(), waiting_for)),
            }
        }
        Ok(Some(waiting_for)) => {
            let reason = format!("gave up after {MAX_WAITS} tries: {waiting_for}");
            let _ = ctx
                .db
                .run(
                    "reject event",
                    &payments::mark_event(event_row, "rejected", Some(&reason), now()),
                )
                .await;
            Handled::dead("unresolved_reference", reason)
        }
        Err(failure) => {
            let error = Some((failure.class().to_owned(), failure.detail().to_owned()));
            match shared::retry::decide(&failure, *attempt, &ctx.cfg.transient) {
                shared::retry::Decision::RetryAfter { seconds } => {
                    let next = EventMessage::Apply {
                        v: messages::VERSION,
                        event_row: event_row.clone(),
                        attempt: attempt + 1,
                    };
                    Handled {
                        next: Next::Send {
                            binding: config::EVENTS,
                            message: serde_json::to_string(&next).unwrap_or_default(),
                            delay: seconds,
                        },
                        task_id: Some(event_row.clone()),
                        error,
                    }
                }
                shared::retry::Decision::DeadLetter { class, reason } => Handled {
                    next: Next::DeadLetter { class, reason },
                    task_id: Some(event_row.clone()),
                    error,
                },
                shared::retry::Decision::Ack => done(event_row),
            }
        }
    }
}

fn storage(e: shared::edge::IoError) -> Failure {
    Failure::transient("storage", e.to_string())
}

/// Applies one stored event. `Ok(Some(why))`: its subject is not known yet, try again later.
async fn apply(ctx: &Ctx, event_row: &str) -> Result<Option<String>, Failure> {
    let stored: Option<StoredEvent> = ctx
        .db
        .first(
            "stored event",
            &Stmt::new(
                "SELECT id, payload, status FROM webhook_events WHERE id = ?1",
                vec![event_row.into()],
            ),
        )
        .await
        .map_err(storage)?;
    let Some(stored) = stored else {
        return Err(Failure::permanent(
            "unknown_event",
            format!("no stored event {event_row}"),
        ));
    };
    if stored.status != "received" {
        return Ok(None); // applied, ignored or rejected already: a redelivery changes nothing
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
            return Ok(None);
        }
    };
    let refs = payments::refs(&event);
    let lookups = ctx
        .db
        .batch(
            "event subjects",
            &[
                Stmt::new(
                    "SELECT id, user_id, status, product_id, credits FROM orders
                     WHERE (?1 IS NOT NULL AND id = ?1) OR (?2 IS NOT NULL AND payment_id = ?2) OR (?3 IS NOT NULL AND provider_order_id = ?3)
                     LIMIT 1",
                    vec![refs.order_id.clone().into(), refs.checkout_id.clone().into(), refs.provider_order_id.clone().into()],
                ),
                Stmt::new(
                    "SELECT id, user_id FROM subscriptions WHERE third_party_subscription_id = ?1",
                    vec![refs.subscription_id.clone().unwrap_or_default().into()],
                ),
            ],
        )
        .await
        .map_err(storage)?;
    let order: Option<OrderRow> = lookups
        .first()
        .map(shared::edge::rows::<OrderRow>)
        .transpose()
        .map_err(storage)?
        .and_then(|r| r.into_iter().next());
    let sub: Option<SubscriptionRow> = lookups
        .get(1)
        .map(shared::edge::rows::<SubscriptionRow>)
        .transpose()
        .map_err(storage)?
        .and_then(|r| r.into_iter().next());

    match payments::plan(&event, &ctx.cfg.catalog, order.as_ref(), sub.as_ref(), at) {
        Plan::Apply { mut stmts, note } => {
            // The event's own status goes in the same batch: applied exactly when its effects are.
            let mark = payments::mark_event(&stored.id, "applied", note.as_deref(), at);
            stmts.push(Stmt::new(
                format!("{} AND status = 'received'", mark.sql),
                mark.params,
            ));
            ctx.db
                .batch(&format!("apply {}", event.event_type), &stmts)
                .await
                .map_err(storage)?;
            Ok(None)
        }
        Plan::Ignore(why) => {
            ctx.db
                .run(
                    "ignore event",
                    &payments::mark_event(&stored.id, "ignored", Some(&why), at),
                )
                .await
                .map_err(storage)?;
            Ok(None)
        }
        Plan::Wait(why) => Ok(Some(why)),
    }
}
