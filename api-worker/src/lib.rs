//! api-worker: the HTTP edge. Validates, authenticates, reserves credits, writes D1 and
//! enqueues work; it never waits on a provider.

mod admin;
mod admin_stats;
mod admin_tasks;
mod admin_users;
mod app;
mod audit;
mod audit_log;
mod auth;
mod catalog;
mod config;
mod cors;
mod error;
mod files;
mod history;
mod links;
mod me;
// The contract: built natively by its test, which keeps api-worker/openapi.json (what the worker
// serves, `app::OPENAPI_JSON`) equal to it. Not in the wasm.
#[cfg(test)]
mod openapi;
mod ops;
mod orders;
mod settings;
mod shares;
mod tasks;
mod webhooks;

use worker::{event, Context, Env, Request, Response, Result};

#[event(fetch)]
async fn fetch(req: Request, env: Env, _ctx: Context) -> Result<Response> {
    console_error_panic_hook::set_once();
    Ok(app::handle(req, env).await)
}
