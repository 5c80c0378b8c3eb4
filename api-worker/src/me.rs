//! The user's own account: the overview (`GET /api/me`: profile, balance, task counts, credits
//! spent, the current subscription, and the first page of the ledger as a statement whose
//! entries add up to the balance, see `shared::statement`; one D1 batch), the statement's next
//! pages (`GET /api/me/ledger`), and the balance with what each model costs (`GET /api/balance`).

use crate::auth;
use crate::batch::result_at;
use crate::context::{reply, App};
use crate::error::{json, ApiError, ApiResult};
use crate::request::page;
use crate::router::Routes;
use serde::Deserialize;
use serde_json::{json, Value};
use shared::edge::{now, rows};
use shared::ids::UserId;
use shared::ledger::{self};
use shared::model::Model;
use shared::page::{Page, PageRule};
use shared::sql::Stmt;
use shared::statement::{self, Entry, Profile};
use worker::Request;

pub fn routes(r: Routes) -> Routes {
    r.get_async("/api/me", |req, ctx| async move {
        reply(me(&req, &ctx.data).await)
    })
    .get_async("/api/me/ledger", |req, ctx| async move {
        reply(ledger(&req, &ctx.data).await)
    })
    .get_async("/api/balance", |req, ctx| async move {
        reply(balance(&req, &ctx.data).await)
    })
}

/// The statement's pages: `GET /api/me/ledger?limit=&cursor=`.
const LEDGER_PAGE: PageRule = PageRule::new(20, 100).with_cursor(statement::decode_cursor);
/// The statement's first page inside `GET /api/me`, under names of its own.
const ME_LEDGER_PAGE: PageRule = LEDGER_PAGE.named("ledger_limit", "ledger_cursor");

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

/// A page of entries (the query asked one more than the page) and the cursor after it.
fn ledger_page(page: &Page, entries: Vec<Entry>) -> Value {
    let (entries, next) = page.split(entries, statement::encode_cursor);
    json!({"entries": entries.iter().map(entry_view).collect::<Vec<_>>(), "next_cursor": next})
}

#[derive(Deserialize)]
struct Balance {
    balance: i64,
}

/// `GET /api/me?ledger_limit=&ledger_cursor=`
async fn me(req: &Request, app: &App) -> ApiResult {
    let user = auth::user(req, app).await?;
    let page = page(req, &ME_LEDGER_PAGE)?;
    let at = now();
    let stmts: [Stmt; 4] = [
        statement::profile_query(&user),
        ledger::balance_query(&user, at),
        statement::subscription_query(&user, at),
        statement::statement_query(&user, at, page.before.as_ref(), page.limit),
    ];
    let results = app.db.batch("me", &stmts).await?;
    let part = |i: usize| result_at(&results, i, "me");
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
            "ledger": ledger_page(&page, entries),
        }),
        200,
    )
}

/// `GET /api/me/ledger?limit=&cursor=`: the next pages of the statement.
async fn ledger(req: &Request, app: &App) -> ApiResult {
    let user: UserId = auth::user(req, app).await?;
    let page = page(req, &LEDGER_PAGE)?;
    let entries: Vec<Entry> = app
        .db
        .all(
            "ledger page",
            &statement::statement_query(&user, now(), page.before.as_ref(), page.limit),
        )
        .await?;
    json(&ledger_page(&page, entries), 200)
}

/// The derived balance.
pub async fn read_balance(app: &App, user: &UserId) -> Result<i64, ApiError> {
    let row: Option<Balance> = app
        .db
        .first("balance", &ledger::balance_query(user, now()))
        .await?;
    Ok(row.map_or(0, |r| r.balance))
}

/// `GET /api/balance`
async fn balance(req: &Request, app: &App) -> ApiResult {
    let user = auth::user(req, app).await?;
    let balance = read_balance(app, &user).await?;
    json(
        &json!({ "balance": balance, "costs": Model::ALL.iter().map(|m| (m.as_str(), m.cost().get())).collect::<std::collections::BTreeMap<_, _>>() }),
        200,
    )
}
