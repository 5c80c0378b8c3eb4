//! Stored payment events (`webhook_events`): one row per (provider, event id), stored by the
//! api's webhook route as `received` and queued as `webhook.apply`. What an event means is
//! `payments`; this module is the row's life around it, and its statements:
//!
//! - the consumer loads the stored row ([`load`]); `payments::mark_event` ends it as `applied`,
//!   `ignored` or `rejected`, and `payments::note_waiting` notes why it is still `received`;
//! - the event reconciler finds events still `received` past their lease ([`stuck`]) and marks
//!   each once per lease ([`mark_reconciled`]) before queueing it again: applying is idempotent,
//!   so a repeat changes nothing;
//! - retention deletes handled events (`retention::WEBHOOK_EVENTS`), never a `received` one.
//!
//! The api stores each verified delivery once per (provider, event id) ([`row_id`], [`store`]):
//! a repeat stores nothing, and is queued again only while its row is still `received`
//! ([`status`]). A signed body that does not read as an event is stored `rejected`, for
//! operators, who list what providers told us ([`list`]).

use crate::signing::token_digest;
use crate::sql::{Param, Stmt};
use serde::Deserialize;

/// The row of an event: the same for every delivery of the same event from the same provider.
pub fn row_id(provider: &str, event_id: &str) -> String {
    format!(
        "whe_{}",
        &token_digest(&format!("{provider}\n{event_id}"))[..32]
    )
}

/// A verified delivery from Creem, as the api stores it.
pub struct Delivery {
    /// [`row_id`] of the provider and `event_id`.
    pub row_id: String,
    pub event_id: String,
    /// None for a body that does not read as an event.
    pub event_type: Option<String>,
    /// The body as received.
    pub payload: String,
    /// `received`, or `rejected` with the reason in `error`.
    pub status: &'static str,
    pub error: Option<String>,
}

/// Stores `delivery` at `at` unless its event is stored already: `changes` is 0 for a repeat.
pub fn store(delivery: Delivery, at: i64) -> Stmt {
    Stmt::new(
        "INSERT INTO webhook_events (id, provider, event_id, event_type, payload, status, error, received_at)
         VALUES (?1, 'creem', ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO NOTHING",
        vec![
            delivery.row_id.into(),
            delivery.event_id.into(),
            delivery.event_type.into(),
            delivery.payload.into(),
            delivery.status.into(),
            delivery.error.into(),
            at.into(),
        ],
    )
}

/// The stored event's status (`status`), if any.
pub fn status(row_id: &str) -> Stmt {
    Stmt::new(
        "SELECT status FROM webhook_events WHERE id = ?1",
        vec![row_id.into()],
    )
}

/// The `limit` newest events, in `status` and of `event_type` when given, without their bodies:
/// what operators read.
pub fn list(status: Option<String>, event_type: Option<String>, limit: i64) -> Stmt {
    Stmt::new(
        "SELECT id, provider, event_id, event_type, status, error, received_at, processed_at FROM webhook_events
         WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR event_type = ?2)
         ORDER BY received_at DESC, id DESC LIMIT ?3",
        vec![status.into(), event_type.into(), Param::Int(limit)],
    )
}

/// A stored event as the consumer reads it.
#[derive(Debug, Deserialize)]
pub struct StoredEvent {
    pub id: String,
    pub payload: String,
    pub status: String,
}

/// The stored event `row_id` ([`StoredEvent`]), if any.
pub fn load(row_id: &str) -> Stmt {
    Stmt::new(
        "SELECT id, payload, status FROM webhook_events WHERE id = ?1",
        vec![row_id.into()],
    )
}

/// An event the reconciler found still `received`.
#[derive(Debug, Deserialize)]
pub struct StuckEvent {
    pub id: String,
}

/// Up to `limit` events still `received` that arrived before `stale_before` (the lease) and
/// were not reconciled in this lease, oldest first ([`StuckEvent`]).
pub fn stuck(stale_before: i64, limit: i64) -> Stmt {
    Stmt::new(
        "SELECT id FROM webhook_events
                     WHERE status = 'received' AND received_at < ?1 AND (reconciled_at IS NULL OR reconciled_at < ?1)
                     ORDER BY received_at LIMIT ?2",
        vec![stale_before.into(), limit.into()],
    )
}

/// Marks a stuck event as reconciled in this lease: it changes one row only for the run that
/// got there first, so two runs never both queue it again.
pub fn mark_reconciled(id: &str, now: i64, stale_before: i64) -> Stmt {
    Stmt::new(
        "UPDATE webhook_events SET reconciled_at = ?2
                     WHERE id = ?1 AND status = 'received' AND (reconciled_at IS NULL OR reconciled_at < ?3)",
        vec![id.into(), now.into(), stale_before.into()],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::tests::{db, event, exec};
    use crate::history::tests::rows;

    #[test]
    fn load_reads_the_stored_row() {
        let conn = db();
        event(&conn, "whe_1", "checkout.completed", "received", "{}", 5);
        let found = rows(&conn, &load("whe_1"));
        let stored: StoredEvent = serde_json::from_value(found[0].clone()).unwrap();
        assert_eq!(
            (
                stored.id.as_str(),
                stored.payload.as_str(),
                stored.status.as_str()
            ),
            ("whe_1", "{}", "received")
        );
        assert!(rows(&conn, &load("whe_none")).is_empty());
    }

    #[test]
    fn a_delivery_is_stored_once_per_event_and_operators_list_them() {
        let conn = db();
        let id = row_id("creem", "evt_1");
        assert_eq!(id, row_id("creem", "evt_1"));
        assert!(id.starts_with("whe_") && id.len() == 36);
        assert_ne!(id, row_id("creem", "evt_2"));
        let delivery = |row_id: &str, event_id: &str, status: &'static str| Delivery {
            row_id: row_id.to_owned(),
            event_id: event_id.to_owned(),
            event_type: (status == "received").then(|| "checkout.completed".to_owned()),
            payload: "{}".to_owned(),
            status,
            error: (status == "rejected").then(|| "unreadable".to_owned()),
        };
        assert_eq!(
            exec(&conn, &store(delivery(&id, "evt_1", "received"), 10)),
            1
        );
        assert_eq!(
            exec(&conn, &store(delivery(&id, "evt_1", "received"), 11)),
            0,
            "a repeat"
        );
        let bad = row_id("creem", "unreadable:x");
        assert_eq!(
            exec(
                &conn,
                &store(delivery(&bad, "unreadable:x", "rejected"), 12)
            ),
            1
        );
        assert_eq!(rows(&conn, &status(&id))[0]["status"], "received");
        assert!(rows(&conn, &status("whe_none")).is_empty());

        let ids = |s: &Stmt| -> Vec<serde_json::Value> {
            rows(&conn, s)
                .into_iter()
                .map(|r| r["id"].clone())
                .collect()
        };
        assert_eq!(
            ids(&list(None, None, 10)),
            [serde_json::json!(bad), serde_json::json!(id)]
        );
        assert_eq!(ids(&list(None, None, 1)).len(), 1, "bounded");
        assert_eq!(
            ids(&list(Some("received".into()), None, 10)),
            [serde_json::json!(id)]
        );
        assert_eq!(
            ids(&list(None, Some("checkout.completed".into()), 10)),
            [serde_json::json!(id)]
        );
        let rejected = rows(&conn, &list(Some("rejected".into()), None, 10)).remove(0);
        assert_eq!(
            (
                &rejected["error"],
                &rejected["event_type"],
                &rejected["received_at"],
                rejected.get("payload")
            ),
            (
                &serde_json::json!("unreadable"),
                &serde_json::Value::Null,
                &serde_json::json!(12),
                None
            )
        );
    }

    #[test]
    fn stuck_events_are_the_old_received_ones_and_each_is_marked_once_per_lease() {
        let conn = db();
        event(
            &conn,
            "whe_late",
            "checkout.completed",
            "received",
            "{}",
            20,
        );
        event(&conn, "whe_older", "refund.created", "received", "{}", 10);
        event(&conn, "whe_done", "checkout.completed", "applied", "{}", 10);
        event(&conn, "whe_new", "checkout.completed", "received", "{}", 95);
        event(
            &conn,
            "whe_seen",
            "checkout.completed",
            "received",
            "{}",
            15,
        );
        conn.execute(
            "UPDATE webhook_events SET reconciled_at = 92 WHERE id = 'whe_seen'",
            [],
        )
        .unwrap();
        let (now, stale_before) = (100, 90);
        let ids = |s: &Stmt| -> Vec<String> {
            rows(&conn, s)
                .into_iter()
                .map(|r| serde_json::from_value::<StuckEvent>(r).unwrap().id)
                .collect()
        };
        assert_eq!(ids(&stuck(stale_before, 10)), ["whe_older", "whe_late"]);
        assert_eq!(ids(&stuck(stale_before, 1)), ["whe_older"], "bounded");
        assert_eq!(
            exec(&conn, &mark_reconciled("whe_older", now, stale_before)),
            1
        );
        assert_eq!(
            exec(&conn, &mark_reconciled("whe_older", now, stale_before)),
            0
        );
        assert_eq!(
            exec(&conn, &mark_reconciled("whe_done", now, stale_before)),
            0
        );
        assert_eq!(ids(&stuck(stale_before, 10)), ["whe_late"]);
        // the next lease finds them all again
        assert_eq!(
            ids(&stuck(now + 1, 10)),
            ["whe_older", "whe_seen", "whe_late", "whe_new"]
        );
    }
}
