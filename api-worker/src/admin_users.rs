//! Operators' read routes for users and orders (the console's payments pages):
//! `GET /admin/users?q=&limit=&cursor=` finds users by email prefix or id, `GET /admin/users/{id}`
//! shows one with its derived balance, its ledger rows, subscriptions and tasks by status, and
//! `GET /admin/orders?status=&user_id=&limit=&cursor=` lists orders with their status. Read-only:
//! grants go through `POST /admin/users/{id}/grants` (audited).

use crate::app::{json, query, App, Ctx};
use crate::auth;
use crate::error::{ApiError, ApiResult};
use crate::ops::{limit_param, MAX_PAGE};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};
use shared::edge::rows;
use shared::ids::UserId;
use shared::sql::{Param, Stmt};
use worker::Request;

/// How many ledger rows a user's page shows (newest first); `ledger_more` says if there are more.
const LEDGER_ROWS: i64 = 200;

pub const ORDER_STATUSES: [&str; 8] = [
    "pending",
    "paid",
    "processing",
    "completed",
    "refunding",
    "refunded",
    "cancelled",
    "expired",
];

fn page_cursor(req: &Request) -> Result<Option<(i64, String)>, ApiError> {
    let Some(c) = query(req, "cursor") else {
        return Ok(None);
    };
    let bad = || ApiError::bad_request("invalid_cursor", "cursor is not one we issued");
    let raw =
        String::from_utf8(URL_SAFE_NO_PAD.decode(&c).map_err(|_| bad())?).map_err(|_| bad())?;
    let (at, id) = raw.split_once(':').ok_or_else(bad)?;
    Ok(Some((at.parse().map_err(|_| bad())?, id.to_owned())))
}

/// Keyset pagination params (?a = created_at, ?b = id, ?c = first page) after `base` params.
fn page_params(after: Option<(i64, String)>) -> [Param; 3] {
    let first = after.is_none();
    let (at, id) = after.unwrap_or((i64::MAX, String::new()));
    [
        Param::Int(at.min(1 << 52)),
        Param::Text(id),
        Param::Int(i64::from(first)),
    ]
}

fn next_cursor(rows_: &[Value], page: usize) -> Option<String> {
    if rows_.len() <= page {
        return None;
    }
    let last = rows_.get(page.checked_sub(1)?)?;
    Some(URL_SAFE_NO_PAD.encode(format!(
        "{}:{}",
        last["created_at"].as_i64().unwrap_or(0),
        last["id"].as_str().unwrap_or_default()
    )))
}

/// `GET /admin/users?q=&limit=&cursor=`: newest first; `q` is an email prefix or a user id.
pub async fn list(req: Request, app: &App) -> ApiResult {
    auth::admin(&req, app).await?;
    let q = query(&req, "q")
        .map(|q| q.trim().to_owned())
        .filter(|q| !q.is_empty());
    if q.as_ref().is_some_and(|q| q.len() > 320) {
        return Err(ApiError::bad_request(
            "invalid_filter",
            "q is at most 320 characters",
        ));
    }
    let limit = limit_param(&req, 50, MAX_PAGE)?;
    let [at, id, first] = page_params(page_cursor(&req)?);
    // the prefix is matched with LIKE, so its own wildcards are escaped
    let prefix = q.as_ref().map(|q| {
        format!(
            "{}%",
            q.replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        )
    });
    let found: Vec<Value> = app
        .db
        .all(
            "admin list users",
            &Stmt::new(
                "SELECT id, email, name, created_at FROM users
                 WHERE (?1 IS NULL OR id = ?1 OR email LIKE ?2 ESCAPE '\\')
                   AND (?5 = 1 OR created_at < ?3 OR (created_at = ?3 AND id < ?4))
                 ORDER BY created_at DESC, id DESC LIMIT ?6",
                vec![
                    q.into(),
                    prefix.into(),
                    at,
                    id,
                    first,
                    Param::Int(limit + 1),
                ],
            ),
        )
        .await?;
    let page = usize::try_from(limit).unwrap_or(0);
    let next = next_cursor(&found, page);
    let users: Vec<Value> = found.into_iter().take(page).collect();
    json(&json!({"users": users, "next_cursor": next}), 200)
}

/// `GET /admin/users/:id`: the user, the balance as `GET /api/balance` derives it, the newest
/// ledger rows (with what each grant has been drawn), subscriptions, and tasks by status.
pub async fn show(req: Request, ctx: &Ctx) -> ApiResult {
    let app = &ctx.data;
    auth::admin(&req, app).await?;
    let user = UserId::parse(ctx.param("id").map(String::as_str).unwrap_or_default())
        .map_err(|e| ApiError::bad_request("invalid_id", e.to_string()))?;
    let uid = user.to_string();
    let at = shared::edge::now();
    let results = app
        .db
        .batch(
            "admin user",
            &[
                Stmt::new(
                    "SELECT id, email, name, created_at, updated_at FROM users WHERE id = ?1",
                    vec![uid.clone().into()],
                ),
                shared::ledger::balance_query(&user, at),
                Stmt::new(
                    "SELECT r.id, r.type, r.amount, r.entity_type, r.entity_id, r.expires_at, r.note, r.created_at,
                            CASE WHEN r.amount > 0 THEN COALESCE((SELECT SUM(c.amount) FROM credit_consumptions c WHERE c.from_record_id = r.id), 0) END AS drawn
                     FROM credit_records r WHERE r.user_id = ?1 ORDER BY r.created_at DESC, r.id DESC LIMIT ?2",
                    vec![uid.clone().into(), Param::Int(LEDGER_ROWS + 1)],
                ),
                Stmt::new(
                    "SELECT id, plan_type, status, billing_cycle, product_id, third_party_subscription_id, current_period_start,
                            expires_at, cancelled_at, credits_per_period, created_at, updated_at
                     FROM subscriptions WHERE user_id = ?1 ORDER BY created_at DESC, id DESC",
                    vec![uid.clone().into()],
                ),
                Stmt::new(
                    "SELECT status, COUNT(*) AS n FROM ai_tasks WHERE user_id = ?1 GROUP BY status",
                    vec![uid.clone().into()],
                ),
                Stmt::new(
                    "SELECT status, COUNT(*) AS n FROM orders WHERE user_id = ?1 GROUP BY status",
                    vec![uid.into()],
                ),
            ],
        )
        .await?;
    let table = |i: usize| -> Result<Vec<Value>, ApiError> {
        Ok(results.get(i).map(rows).transpose()?.unwrap_or_default())
    };
    let mut view = table(0)?
        .into_iter()
        .next()
        .ok_or(ApiError::NotFound("user"))?;
    let balance = table(1)?
        .first()
        .and_then(|r| r["balance"].as_i64())
        .unwrap_or(0);
    let mut ledger = table(2)?;
    let more = ledger.len() > usize::try_from(LEDGER_ROWS).unwrap_or(0);
    ledger.truncate(usize::try_from(LEDGER_ROWS).unwrap_or(0));
    let by_status = |t: Vec<Value>| -> serde_json::Map<String, Value> {
        t.iter()
            .filter_map(|r| Some((r["status"].as_str()?.to_owned(), r["n"].clone())))
            .collect()
    };
    view["balance"] = json!(balance);
    view["ledger"] = json!(ledger);
    view["ledger_more"] = json!(more);
    view["subscriptions"] = json!(table(3)?);
    view["tasks_by_status"] = json!(by_status(table(4)?));
    view["orders_by_status"] = json!(by_status(table(5)?));
    json(&view, 200)
}

/// `GET /admin/orders?status=&user_id=&limit=&cursor=`: orders newest first with their status
/// and the terms they were created with.
pub async fn list_orders(req: Request, app: &App) -> ApiResult {
    auth::admin(&req, app).await?;
    let status = query(&req, "status");
    if status
        .as_deref()
        .is_some_and(|s| !ORDER_STATUSES.contains(&s))
    {
        return Err(ApiError::bad_request(
            "invalid_status",
            format!("status must be one of {}", ORDER_STATUSES.join(", ")),
        ));
    }
    let user = query(&req, "user_id")
        .map(|u| {
            UserId::parse(&u)
                .map(|u| u.to_string())
                .map_err(|e| ApiError::bad_request("invalid_id", e.to_string()))
        })
        .transpose()?;
    let limit = limit_param(&req, 50, MAX_PAGE)?;
    let [at, id, first] = page_params(page_cursor(&req)?);
    let found: Vec<Value> = app
        .db
        .all(
            "admin list orders",
            &Stmt::new(
                "SELECT id, user_id, status, product_id, product_kind, amount, currency, credits, credits_expire_days,
                        plan_type, billing_cycle, payment_provider, payment_id, provider_order_id, provider_transaction_id,
                        created_at, updated_at
                 FROM orders
                 WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR user_id = ?2)
                   AND (?5 = 1 OR created_at < ?3 OR (created_at = ?3 AND id < ?4))
                 ORDER BY created_at DESC, id DESC LIMIT ?6",
                vec![status.into(), user.into(), at, id, first, Param::Int(limit + 1)],
            ),
        )
        .await?;
    let page = usize::try_from(limit).unwrap_or(0);
    let next = next_cursor(&found, page);
    let orders: Vec<Value> = found.into_iter().take(page).collect();
    json(&json!({"orders": orders, "next_cursor": next}), 200)
}
