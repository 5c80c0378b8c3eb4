//! api-worker: the HTTP edge. Validates, authenticates, reserves credits, writes D1 and
//! enqueues work; it never waits on a provider.
//!
//! - `app`: every module's routes in one table, and what wraps every request (CORS, the log
//!   line, error shapes).
//! - `context`: what a handler is given (`App`) and how it answers (`reply`).
//! - `router`: the route table (built once per isolate), what a module registers its routes on
//!   (`Routes`), and a route's `Ctx`.
//! - `request`: reading a request (query, page, ids in the path, capped bodies).
//! - `error`: the one error type and the JSON answers.
//! - `auth`: who is calling: users' sessions, and the operators' guard.
//! - `batch`: the results of a D1 batch, statement by statement.
//! - The users' routes, a module per resource: `tasks`, `history`, `shares`, `links`, `files`,
//!   `me`, `sessions`, `orders`, `catalog` (its admin routes too), `webhooks`, `health`.
//! - `admin`: the operators' routes, a module per concern.
//! - `config`, `settings`, `cors`: the configuration, the runtime settings (the catalogue), CORS.

mod admin;
mod app;
mod auth;
mod batch;
mod catalog;
mod config;
mod context;
mod cors;
mod error;
mod files;
mod health;
mod history;
mod links;
mod me;
// The contract: built natively by its test, which keeps api-worker/openapi.json (what the worker
// serves, `app::OPENAPI_JSON`) equal to it. Not in the wasm.
#[cfg(test)]
mod openapi;
mod orders;
mod request;
mod router;
mod sessions;
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
