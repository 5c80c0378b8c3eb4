//! The operators' routes (`/admin/…`), a module per concern. Every one starts with the guard
//! `auth::operator` (the admin token); every change writes an `admin_audit` row naming who made
//! it (`audit_log`). The catalogue's admin routes are in `catalog.rs`, beside its public one.
//!
//! - [`users`]: create users, open their sessions, grant credits, list sign-ins; find and show them.
//! - [`orders`]: the orders, by status and user.
//! - [`tasks`]: list, show and retry tasks, and one task's timeline.
//! - [`dead_letters`]: messages given up on: list, show, replay and discard (one or in bulk).
//! - [`queues`]: sending messages to a queue by hand.
//! - [`webhook_events`]: what payment providers told us and what became of it.
//! - [`cron`]: the scheduled jobs' runs, and running one now.
//! - [`stats`]: the console's overview, orders by status, and storage use.
//! - [`audit`]: the ledger auditor, run on demand.
//! - [`audit_log`]: the audit rows every change writes, and reading them back.

pub mod audit;
pub mod audit_log;
pub mod cron;
pub mod dead_letters;
pub mod orders;
pub mod queues;
pub mod stats;
pub mod tasks;
pub mod users;
pub mod webhook_events;

use crate::router::Routes;
use serde_json::Value;
use shared::page::{CursorFormat, PageRule};

pub fn routes(r: Routes) -> Routes {
    let r = users::routes(r);
    let r = orders::routes(r);
    let r = tasks::routes(r);
    let r = dead_letters::routes(r);
    let r = queues::routes(r);
    let r = webhook_events::routes(r);
    let r = cron::routes(r);
    let r = stats::routes(r);
    let r = audit::routes(r);
    audit_log::routes(r)
}

/// The page of an operators' list: 50 rows unless asked, at most 200.
const PAGE: PageRule = PageRule::new(50, 200);

/// The same, for the lists that continue by cursor: the last row's `{at}:{id}`, newest first.
const CURSOR_PAGE: PageRule = PAGE.with_cursor(|c| CURSOR.decode(c));

const CURSOR: CursorFormat = CursorFormat::Plain;

/// The cursor after a row of a list by creation (`created_at`, `id`).
fn created_cursor(row: &Value) -> String {
    CURSOR.encode(
        row["created_at"].as_i64().unwrap_or(0),
        row["id"].as_str().unwrap_or_default(),
    )
}
