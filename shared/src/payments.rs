//! Payment events, top to bottom: what a Creem event means for orders, subscriptions and the
//! ledger. The consumer reads the rows an event refers to and asks [`plan`] what to write; the
//! answer is statements for one D1 batch, and every write is keyed so that repeating it, or
//! applying events out of order, lands in the same state.
//!
//! - `checkout.completed`: the order moves pending/expired -> paid -> completed (an order that
//!   expired still completes: the money was paid) and grants its pack's credits once per order;
//!   for a plan it also creates or extends the subscription and grants the period.
//! - `subscription.active` / `subscription.paid`: the subscription is created or extended to the
//!   new period's end, and that period's credits are granted once per (subscription, period).
//! - `subscription.canceled` / `scheduled_cancel`: cancelled, access kept to the period end;
//!   `subscription.expired`: expired; `past_due`, `paused`, `trialing`, `update`: the provider's
//!   status. A status only moves forward in event time (`last_event_at`), so a late old event
//!   never undoes a newer one.
//! - `refund.created`: the order is refunded and what it granted is clawed back by one negative
//!   entry; a refund that arrives before its checkout leaves nothing for the checkout to grant.
//! - `dispute.created`: recorded for operators. Anything else: stored and ignored.
//! - An event whose subject cannot be resolved yet (a subscription event before we know its
//!   user) waits: the consumer retries it with a delay a bounded number of times.

use crate::catalog::{Catalog, Product};
use crate::ids::Credits;
use crate::ledger::{self, EntryKind, NewGrant, Param, Stmt};
use serde_json::Value;

/// A parsed Creem event envelope.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: String,
    pub event_type: String,
    /// Event time in unix seconds (Creem sends milliseconds).
    pub created_at: i64,
    pub object: Value,
}

pub fn parse_event(body: &[u8]) -> Result<Event, String> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| format!("body is not valid JSON: {e}"))?;
    let id = v
        .get("id")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty() && s.len() <= 256)
        .ok_or("id is missing")?;
    let event_type = v
        .get("eventType")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty() && s.len() <= 128)
        .ok_or("eventType is missing")?;
    let created_ms = v
        .get("created_at")
        .and_then(Value::as_i64)
        .ok_or("created_at is missing")?;
    let object = v
        .get("object")
        .cloned()
        .filter(Value::is_object)
        .ok_or("object is missing")?;
    Ok(Event {
        id: id.to_owned(),
        event_type: event_type.to_owned(),
        created_at: created_ms.div_euclid(1000),
        object,
    })
}

/// Unix seconds from an ISO 8601 timestamp or a number (seconds, or milliseconds if huge).
fn time(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::String(s) => chrono::DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|d| d.timestamp()),
        Value::Number(n) => n
            .as_i64()
            .map(|t| if t > 100_000_000_000 { t / 1000 } else { t }),
        _ => None,
    }
}

/// A string, or the `id` of an embedded object (Creem expands some references).
fn id_of(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Object(o) => o.get("id").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    }
}

/// What an event refers to, so the consumer can read it before planning.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Refs {
    /// Our order id (`request_id`, or `metadata.order_id`).
    pub order_id: Option<String>,
    /// The provider's checkout id (we store it as `orders.payment_id`).
    pub checkout_id: Option<String>,
    /// The provider's order id.
    pub provider_order_id: Option<String>,
    /// The provider's subscription id.
    pub subscription_id: Option<String>,
}

pub fn refs(e: &Event) -> Refs {
    let o = &e.object;
    let meta = |k: &str| {
        o.pointer(&format!("/metadata/{k}"))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let kind = o.get("object").and_then(Value::as_str).unwrap_or("");
    let (checkout_id, subscription_id) = match kind {
        "checkout" => (
            o.get("id").and_then(Value::as_str).map(str::to_owned),
            id_of(o.get("subscription")),
        ),
        "subscription" => (None, o.get("id").and_then(Value::as_str).map(str::to_owned)),
        _ => (id_of(o.get("checkout")), id_of(o.get("subscription"))),
    };
    Refs {
        order_id: o
            .get("request_id")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or_else(|| meta("order_id")),
        checkout_id,
        provider_order_id: id_of(o.get("order")),
        subscription_id,
    }
}

/// The order an event refers to, as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct OrderRow {
    pub id: String,
    pub user_id: String,
    pub status: String,
    pub product_id: Option<String>,
    pub credits: i64,
}

/// The subscription an event refers to, as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct SubscriptionRow {
    pub id: String,
    pub user_id: String,
}

/// What to do with an event.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// Run these statements in one batch (the consumer adds the event's own status update).
    Apply {
        stmts: Vec<Stmt>,
        note: Option<String>,
    },
    /// Nothing to do for this event type or subject.
    Ignore(String),
    /// A thing it refers to is not known yet: retry later.
    Wait(String),
}

/// Period credits are granted once per (provider subscription, period start).
fn period_key(sub: &str, start: i64) -> String {
    format!("{sub}:{start}")
}

/// Creates the subscription or moves it forward: periods only extend, and status only changes
/// for an event newer than the last one applied.
#[allow(clippy::too_many_arguments)]
fn upsert_subscription(
    new_id: &str,
    user: &str,
    plan: Option<&crate::catalog::Plan>,
    status: &str,
    provider_sub: &str,
    product_id: Option<&str>,
    period: (Option<i64>, Option<i64>),
    cancelled_at: Option<i64>,
    event_at: i64,
    now: i64,
) -> Stmt {
    Stmt::new(
        "INSERT INTO subscriptions (id, user_id, plan_type, status, billing_cycle, third_party_subscription_id, product_id,
                                    enabled_at, expires_at, current_period_start, next_billing_at, cancelled_at, last_event_at,
                                    created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?9, ?11, ?12, ?13, ?13)
         ON CONFLICT (third_party_subscription_id) DO UPDATE SET
           status = CASE WHEN excluded.last_event_at >= COALESCE(subscriptions.last_event_at, 0) THEN excluded.status ELSE subscriptions.status END,
           expires_at = MAX(COALESCE(subscriptions.expires_at, excluded.expires_at), COALESCE(excluded.expires_at, subscriptions.expires_at)),
           next_billing_at = MAX(COALESCE(subscriptions.next_billing_at, excluded.next_billing_at), COALESCE(excluded.next_billing_at, subscriptions.next_billing_at)),
           current_period_start = MAX(COALESCE(subscriptions.current_period_start, excluded.current_period_start), COALESCE(excluded.current_period_start, subscriptions.current_period_start)),
           cancelled_at = COALESCE(subscriptions.cancelled_at, excluded.cancelled_at),
           enabled_at = MIN(COALESCE(subscriptions.enabled_at, excluded.enabled_at), COALESCE(excluded.enabled_at, subscriptions.enabled_at)),
           plan_type = COALESCE(subscriptions.plan_type, excluded.plan_type),
           product_id = COALESCE(subscriptions.product_id, excluded.product_id),
           last_event_at = MAX(COALESCE(subscriptions.last_event_at, 0), excluded.last_event_at),
           updated_at = excluded.updated_at",
        vec![
            new_id.into(),
            user.into(),
            plan.map_or_else(|| "unknown".to_owned(), |p| p.plan.clone()).into(),
            status.into(),
            plan.map_or_else(|| "monthly".to_owned(), |p| p.cycle.clone()).into(),
            provider_sub.into(),
            product_id.map(str::to_owned).into(),
            period.0.into(),
            period.1.into(),
            period.0.into(),
            cancelled_at.into(),
            event_at.into(),
            now.into(),
        ],
    )
}

/// The status a subscription event reports.
fn subscription_status(event_type: &str, object_status: Option<&str>) -> Option<String> {
    let s = match event_type {
        "subscription.active" | "subscription.paid" | "checkout.completed" => "active",
        "subscription.canceled" | "subscription.scheduled_cancel" => "cancelled",
        "subscription.expired" => "expired",
        "subscription.past_due" => "past_due",
        "subscription.paused" => "paused",
        "subscription.trialing" => "trialing",
        "subscription.update" => return Some(object_status.unwrap_or("active").to_owned()),
        _ => return None,
    };
    Some(s.to_owned())
}

/// The subscription part of an event: upsert plus, for a paid period, its grant.
fn subscription_effects(
    e: &Event,
    sub_obj: &Value,
    catalog: &Catalog,
    user: &str,
    existing: Option<&SubscriptionRow>,
    grants_period: bool,
    now: i64,
) -> Result<Vec<Stmt>, String> {
    let provider_sub = sub_obj
        .get("id")
        .and_then(Value::as_str)
        .ok_or("subscription id is missing")?;
    let product = id_of(sub_obj.get("product")).or_else(|| id_of(e.object.get("product")));
    let plan = match product.as_deref().and_then(|p| catalog.by_creem_id(p)) {
        Some(Product::Plan(p)) => Some(p),
        _ => None,
    };
    let start = time(sub_obj.get("current_period_start_date"));
    let end = time(sub_obj.get("current_period_end_date"));
    let status = subscription_status(&e.event_type, sub_obj.get("status").and_then(Value::as_str))
        .ok_or("not a subscription event")?;
    let cancelled_at =
        (status == "cancelled").then(|| time(sub_obj.get("canceled_at")).unwrap_or(e.created_at));
    let new_id = existing.map_or_else(
        || {
            format!(
                "sub_{}",
                crate::signing::token_digest(provider_sub)
                    .get(..24)
                    .unwrap_or("x")
                    .to_owned()
            )
        },
        |s| s.id.clone(),
    );
    let mut stmts = vec![upsert_subscription(
        &new_id,
        user,
        plan,
        &status,
        provider_sub,
        product.as_deref(),
        (start, end),
        cancelled_at,
        e.created_at,
        now,
    )];
    if grants_period {
        let plan = plan.ok_or_else(|| {
            format!(
                "product {} is not a plan in the catalogue",
                product.unwrap_or_default()
            )
        })?;
        let start = start.ok_or("current_period_start_date is missing")?;
        let key = period_key(provider_sub, start);
        stmts.push(ledger::grant_once(
            NewGrant {
                id: format!("subscription:{key}"),
                user,
                kind: EntryKind::Subscription,
                amount: Credits(plan.credits_per_period),
                entity: ("subscription_period", &key),
                expires_at: end,
                note: &format!("{} {} period", plan.plan, plan.cycle),
                now,
            },
            None,
        ));
    }
    Ok(stmts)
}

fn order_completion(
    order: &OrderRow,
    provider_order_id: Option<&str>,
    catalog: &Catalog,
    now: i64,
) -> Vec<Stmt> {
    let mut stmts = vec![
        Stmt::new(
            "UPDATE orders SET status = 'paid', provider_order_id = COALESCE(provider_order_id, ?2), updated_at = ?3
             WHERE id = ?1 AND status IN ('pending', 'expired', 'cancelled', 'processing')",
            vec![order.id.clone().into(), provider_order_id.map(str::to_owned).into(), now.into()],
        ),
        Stmt::new(
            "UPDATE orders SET status = 'completed', updated_at = ?2 WHERE id = ?1 AND status = 'paid'",
            vec![order.id.clone().into(), now.into()],
        ),
    ];
    if let Some(Product::Pack(pack)) = order.product_id.as_deref().and_then(|p| catalog.product(p))
    {
        let guard = format!(
            "AND EXISTS (SELECT 1 FROM orders WHERE id = '{}' AND status = 'completed')",
            order.id.replace('\'', "")
        );
        stmts.push(ledger::grant_once(
            NewGrant {
                id: format!("purchase:{}", order.id),
                user: &order.user_id,
                kind: EntryKind::Purchase,
                amount: Credits(order.credits),
                entity: ("order", &order.id),
                expires_at: pack.expires_in_days.map(|d| now + d * 86_400),
                note: &format!("pack {}", pack.id),
                now,
            },
            Some(&guard),
        ));
    }
    stmts
}

/// What to write for an event, given what it refers to.
pub fn plan(
    e: &Event,
    catalog: &Catalog,
    order: Option<&OrderRow>,
    sub: Option<&SubscriptionRow>,
    now: i64,
) -> Plan {
    let meta_user = e
        .object
        .pointer("/metadata/user_id")
        .and_then(Value::as_str)
        .map(str::to_owned);
    match e.event_type.as_str() {
        "checkout.completed" => {
            let Some(order) = order else {
                return Plan::Wait("the order this checkout is for is not known".into());
            };
            let provider_order = id_of(e.object.get("order"));
            let mut stmts = order_completion(order, provider_order.as_deref(), catalog, now);
            if let Some(sub_obj) = e.object.get("subscription").filter(|s| s.is_object()) {
                match subscription_effects(e, sub_obj, catalog, &order.user_id, sub, true, now) {
                    Ok(more) => stmts.extend(more),
                    Err(why) => return Plan::Ignore(why),
                }
            }
            Plan::Apply { stmts, note: None }
        }
        t if t.starts_with("subscription.") => {
            let Some(user) = sub
                .map(|s| s.user_id.clone())
                .or_else(|| order.map(|o| o.user_id.clone()))
                .or(meta_user)
            else {
                return Plan::Wait("the subscription's user is not known yet".into());
            };
            if subscription_status(t, None).is_none() {
                return Plan::Ignore(format!("unhandled subscription event {t}"));
            }
            let grants = matches!(t, "subscription.active" | "subscription.paid");
            match subscription_effects(e, &e.object, catalog, &user, sub, grants, now) {
                Ok(stmts) => Plan::Apply { stmts, note: None },
                Err(why) => Plan::Ignore(why),
            }
        }
        "refund.created" => {
            let Some(order) = order else {
                return Plan::Wait("the refunded order is not known".into());
            };
            Plan::Apply {
                stmts: vec![
                    Stmt::new(
                        "UPDATE orders SET status = 'refunded', updated_at = ?2 WHERE id = ?1 AND status != 'refunded'",
                        vec![order.id.clone().into(), now.into()],
                    ),
                    Stmt::new(
                        "INSERT INTO credit_records (id, user_id, amount, type, entity_type, entity_id, note, created_at)
                         SELECT ?2, g.user_id, -g.amount, 'clawback', 'order', g.entity_id, 'refund', ?3
                         FROM credit_records g WHERE g.entity_type = 'order' AND g.entity_id = ?1 AND g.type = 'purchase'
                         ON CONFLICT DO NOTHING",
                        vec![order.id.clone().into(), format!("clawback:{}", order.id).into(), Param::Int(now)],
                    ),
                ],
                note: None,
            }
        }
        "dispute.created" => Plan::Apply {
            stmts: vec![],
            note: Some(format!(
                "dispute on order {}",
                order.map_or("(unknown)", |o| o.id.as_str())
            )),
        },
        other => Plan::Ignore(format!("event type {other} is not handled")),
    }
}

/// Records what happened to a stored event.
pub fn mark_event(row_id: &str, status: &str, error: Option<&str>, now: i64) -> Stmt {
    Stmt::new(
        "UPDATE webhook_events SET status = ?2, error = ?3, processed_at = ?4 WHERE id = ?1",
        vec![
            row_id.into(),
            status.into(),
            error.map(str::to_owned).into(),
            now.into(),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn catalog() -> Catalog {
        Catalog::parse(
            r#"{"packs":[{"id":"pack_small","creem_product_id":"prod_pack","price":499,"currency":"USD","credits":50,"expires_in_days":30}],
                "plans":[{"id":"pro_monthly","plan":"pro","cycle":"monthly","creem_product_id":"prod_pro","price":1999,"currency":"USD","credits_per_period":300}]}"#,
        )
        .unwrap()
    }

    fn event(t: &str, object: Value) -> Event {
        Event {
            id: "evt_1".into(),
            event_type: t.into(),
            created_at: 1_000,
            object,
        }
    }

    fn order(product: &str) -> OrderRow {
        OrderRow {
            id: "ord_1".into(),
            user_id: "u1".into(),
            status: "pending".into(),
            product_id: Some(product.into()),
            credits: 50,
        }
    }

    #[test]
    fn envelopes_parse_and_refs_resolve() {
        let body = json!({"id": "evt_9", "eventType": "checkout.completed", "created_at": 1_700_000_000_123i64,
            "object": {"object": "checkout", "id": "ch_1", "request_id": "ord_1", "order": {"id": "or_1"}, "subscription": "sub_1"}});
        let e = parse_event(body.to_string().as_bytes()).unwrap();
        assert_eq!(
            (e.created_at, e.event_type.as_str()),
            (1_700_000_000, "checkout.completed")
        );
        assert_eq!(
            refs(&e),
            Refs {
                order_id: Some("ord_1".into()),
                checkout_id: Some("ch_1".into()),
                provider_order_id: Some("or_1".into()),
                subscription_id: Some("sub_1".into())
            }
        );
        assert!(parse_event(b"{").is_err());
        assert!(parse_event(br#"{"id":"e","eventType":"x","created_at":1}"#)
            .unwrap_err()
            .contains("object"));
        let refund = event(
            "refund.created",
            json!({"object": "refund", "id": "re_1", "order": {"id": "or_1"}, "checkout": {"id": "ch_1"}}),
        );
        assert_eq!(refs(&refund).checkout_id.as_deref(), Some("ch_1"));
    }

    #[test]
    fn a_pack_checkout_completes_the_order_and_grants_once_per_order() {
        let e = event(
            "checkout.completed",
            json!({"object": "checkout", "id": "ch_1", "request_id": "ord_1", "order": {"id": "or_1"}}),
        );
        let Plan::Apply { stmts, .. } =
            plan(&e, &catalog(), Some(&order("pack_small")), None, 5_000)
        else {
            panic!()
        };
        assert_eq!(stmts.len(), 3);
        assert!(
            stmts[0].sql.contains("'expired'"),
            "an expired order still completes"
        );
        assert!(
            stmts[2].sql.contains("ON CONFLICT DO NOTHING")
                && stmts[2].sql.contains("status = 'completed'")
        );
        assert_eq!(stmts[2].params[0], Param::Text("purchase:ord_1".into()));
        assert_eq!(
            stmts[2].params[6],
            Param::Int(5_000 + 30 * 86_400),
            "pack credits expire as configured"
        );
        assert_eq!(
            plan(&e, &catalog(), None, None, 0),
            Plan::Wait("the order this checkout is for is not known".into())
        );
    }

    #[test]
    fn subscription_periods_grant_once_and_status_follows_event_time() {
        let sub = json!({"object": "subscription", "id": "sub_1", "product": {"id": "prod_pro"}, "status": "active",
            "current_period_start_date": "2026-11-01T00:00:00Z", "current_period_end_date": "2026-12-01T00:00:00Z",
            "metadata": {"user_id": "u1"}});
        let Plan::Apply { stmts, .. } = plan(
            &event("subscription.paid", sub.clone()),
            &catalog(),
            None,
            None,
            9,
        ) else {
            panic!()
        };
        assert_eq!(stmts.len(), 2);
        assert!(stmts[0]
            .sql
            .contains("excluded.last_event_at >= COALESCE(subscriptions.last_event_at, 0)"));
        assert_eq!(
            stmts[1].params[0],
            Param::Text("subscription:sub_1:1793491200".into())
        );
        assert_eq!(stmts[1].params[2], Param::Int(300));
        assert_eq!(
            stmts[1].params[6],
            Param::Int(1_796_083_200),
            "period credits expire at the period end"
        );
        let Plan::Apply { stmts, .. } = plan(
            &event("subscription.canceled", sub.clone()),
            &catalog(),
            None,
            None,
            9,
        ) else {
            panic!()
        };
        assert_eq!(stmts.len(), 1, "cancelling grants nothing");
        assert_eq!(stmts[0].params[3], Param::Text("cancelled".into()));
        let mut anonymous = sub;
        anonymous.as_object_mut().unwrap().remove("metadata");
        assert!(
            matches!(
                plan(
                    &event("subscription.paid", anonymous),
                    &catalog(),
                    None,
                    None,
                    9
                ),
                Plan::Wait(_)
            ),
            "waits for its user"
        );
    }

    #[test]
    fn refunds_claw_back_and_others_are_recorded_or_ignored() {
        let e = event(
            "refund.created",
            json!({"object": "refund", "id": "re_1", "order": {"id": "or_1"}}),
        );
        let Plan::Apply { stmts, .. } = plan(&e, &catalog(), Some(&order("pack_small")), None, 1)
        else {
            panic!()
        };
        assert!(stmts[1].sql.contains("-g.amount, 'clawback'"));
        assert!(matches!(plan(&e, &catalog(), None, None, 1), Plan::Wait(_)));
        assert!(
            matches!(plan(&event("dispute.created", json!({})), &catalog(), None, None, 1), Plan::Apply { ref stmts, .. } if stmts.is_empty())
        );
        assert!(matches!(
            plan(
                &event("payment.mystery", json!({})),
                &catalog(),
                None,
                None,
                1
            ),
            Plan::Ignore(_)
        ));
    }
}
