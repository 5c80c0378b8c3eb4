//! The user's own view (`GET /api/me`, `GET /api/me/ledger`): profile, balance, task counts,
//! credits spent, the current subscription, and the ledger as a statement whose entries add up
//! to the balance (see `shared::statement`). One D1 batch.

use crate::app::{json, query, App};
use crate::auth;
use crate::error::{ApiError, ApiResult};
use serde::Deserialize;
use serde_json::{json, Value};
use shared::edge::{now, rows};
use shared::ids::UserId;
use shared::ledger::{self};
use shared::sql::Stmt;
use shared::statement::{self, Entry, Profile};
use worker::Request;

fn page_params(
    req: &Request,
    limit_name: &str,
    cursor_name: &str,
) -> Result<(i64, Option<(i64, String)>), ApiError> {
    let limit = match query(req, limit_name) {
        None => 20,
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=100).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_limit",
                    format!("{limit_name} must be an integer from 1 to 100"),
                )
            })?,
    };
    let before = match query(req, cursor_name) {
        None => None,
        Some(c) => Some(statement::decode_cursor(&c).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_cursor",
                format!("{cursor_name} is not one we issued"),
            )
        })?),
    };
    Ok((limit, before))
}

fn entry_view(e: &Entry) -> Value {
    json!({
        "id": e.id,
        "type": e.kind,
        "amount": e.amount,
        "at": e.at,
        "expires_at": e.expires_at,
        "entity_type": e.entity_type,
        "entity_id": e.entity_id,
        "note": e.note,
    })
}

/// A page of entries (the query asked one more than `limit`) and the cursor after it.
fn ledger_page(mut entries: Vec<Entry>, limit: i64) -> Value {
    let page = usize::try_from(limit).unwrap_or(20);
    let more = entries.len() > page;
    entries.truncate(page);
    let next = if more {
        entries.last().map(statement::encode_cursor)
    } else {
        None
    };
    json!({"entries": entries.iter().map(entry_view).collect::<Vec<_>>(), "next_cursor": next})
}

#[derive(Deserialize)]
struct Balance {
    balance: i64,
}

/// `GET /api/me?ledger_limit=&ledger_cursor=`
pub async fn me(req: &Request, app: &App) -> ApiResult {
    let user = auth::user(req, app).await?;
    let (limit, before) = page_params(req, "ledger_limit", "ledger_cursor")?;
    let at = now();
    let stmts: [Stmt; 4] = [
        statement::profile_query(&user),
        ledger::balance_query(&user, at),
        statement::subscription_query(&user, at),
        statement::statement_query(&user, at, before.as_ref(), limit),
    ];
    let results = app.db.batch("me", &stmts).await?;
    let part = |i: usize| {
        results.get(i).ok_or_else(|| {
            ApiError::Unavailable(shared::edge::IoError {
                step: "me".into(),
                cause: format!("batch returned no result {i}"),
            })
        })
    };
    let profile: Profile = rows::<Profile>(part(0)?)?
        .into_iter()
        .next()
        .ok_or(ApiError::NotFound("user"))?;
    let balance = rows::<Balance>(part(1)?)?
        .into_iter()
        .next()
        .map_or(0, |b| b.balance);
    let subscription: Option<Value> = rows::<Value>(part(2)?)?.into_iter().next();
    let access = subscription
        .as_ref()
        .is_some_and(|s| s["access"].as_f64() == Some(1.0));
    let subscription = subscription.map(|mut s| {
        s["access"] = json!(access);
        s
    });
    let entries: Vec<Entry> = rows(part(3)?)?;
    json(
        &json!({
            "user": {"id": profile.id, "email": profile.email, "name": profile.name,
                     "picture": profile.picture, "created_at": profile.created_at},
            "balance": balance,
            "tasks": {"total": profile.tasks_total, "completed": profile.tasks_completed,
                      "failed": profile.tasks_failed, "running": profile.tasks_running,
                      "deleted": profile.tasks_deleted},
            "credits_spent": profile.credits_spent,
            "subscription": subscription,
            "ledger": ledger_page(entries, limit),
        }),
        200,
    )
}

/// `GET /api/me/ledger?limit=&cursor=`: the next pages of the statement.
pub async fn ledger(req: &Request, app: &App) -> ApiResult {
    let user: UserId = auth::user(req, app).await?;
    let (limit, before) = page_params(req, "limit", "cursor")?;
    let entries: Vec<Entry> = app
        .db
        .all(
            "ledger page",
            &statement::statement_query(&user, now(), before.as_ref(), limit),
        )
        .await?;
    json(&ledger_page(entries, limit), 200)
}
