//! Routing, and what wraps every request: CORS, building its [`App`], the renewed session token,
//! counting failed authentication, the one JSON shape of the router's own 404/405, and one log
//! line per request. Each module registers its own routes (`routes`); handlers return
//! `Result<Response, ApiError>` and `context::reply` turns their errors into responses.

use crate::context::{App, Limit, Routes};
use crate::error::{json_response, ApiError};
use crate::request::client_ip;
use crate::{
    admin, catalog, files, health, history, links, me, orders, sessions, shares, tasks, webhooks,
};
use shared::edge::{log, now_ms, IoCounts, IoError};
use std::rc::Rc;
use worker::{Env, Request, Response, Router};

/// Every route. The router matches paths by their shape (matchit), not by the order they are
/// added in, and refuses a path added twice for one method.
fn routes(r: Routes<'_>) -> Routes<'_> {
    let r = r.get("/api/openapi.json", |_, _| Ok(openapi_response()));
    let r = health::routes(r);
    let r = tasks::routes(r);
    let r = history::routes(r);
    let r = shares::routes(r);
    let r = links::routes(r);
    let r = me::routes(r);
    let r = sessions::routes(r);
    let r = orders::routes(r);
    let r = catalog::routes(r);
    let r = webhooks::routes(r);
    let r = files::routes(r);
    admin::routes(r)
}

/// The OpenAPI document, served as committed: `openapi.rs` builds it and its test keeps
/// `api-worker/openapi.json` equal (the worker carries no code that builds it).
const OPENAPI_JSON: &str = include_str!("../openapi.json");

fn openapi_response() -> Response {
    let built = Response::ok(OPENAPI_JSON).and_then(|mut r| {
        r.headers_mut().set("content-type", "application/json")?;
        Ok(r)
    });
    built.unwrap_or_else(|_| {
        json_response(
            &serde_json::json!({"error": {"code": "unavailable", "message": "openapi.json"}}),
            503,
        )
    })
}

pub async fn handle(req: Request, env: Env) -> Response {
    let started = now_ms();
    let method = req.method().to_string();
    let path = req.path();
    let io = Rc::new(IoCounts::default());
    // CORS (cors.rs): a preflight is answered before anything else; every other answer, errors
    // included, gets the headers its Origin calls for.
    let cors = crate::cors::decide(&req, &env);
    let response = match crate::cors::preflight(&cors) {
        Some(answer) => answer,
        None => crate::cors::apply(
            &cors,
            match App::build(&env, io.clone()) {
                Ok(app) => route(req, env, Rc::new(app)).await,
                Err(e) => e.into_response(),
            },
        ),
    };
    log(serde_json::json!({
        "event": "http",
        "method": method,
        "path": path,
        "status": response.status_code(),
        "ms": now_ms().saturating_sub(started),
        "io": io.to_json(),
    }));
    response
}

async fn route(req: Request, env: Env, app: Rc<App>) -> Response {
    let ip = client_ip(&req);
    let webhook = req.path().starts_with("/webhooks/");
    let mut response = dispatch(req, env, app.clone()).await;
    if let Some(token) = app.session_token.borrow_mut().take() {
        let _ = response
            .headers_mut()
            .set(crate::auth::SESSION_TOKEN_HEADER, &token);
    }
    // Failed authentication and signatures are counted per client; past the limit the client
    // gets 429 instead of another 401, whatever it sends.
    if response.status_code() == 401 {
        let limit = if webhook {
            Limit::WebhookFailure
        } else {
            Limit::AuthFailure
        };
        if let Err(e) = app.limit(limit, &ip).await {
            return e.into_response();
        }
    }
    response
}

async fn dispatch(req: Request, env: Env, app: Rc<App>) -> Response {
    match routes(Router::with_data(app)).run(req, env).await {
        Ok(r) if r.status_code() == 404 && !is_json(&r) => {
            ApiError::NotFound("route").into_response()
        }
        Ok(r) if r.status_code() == 405 && !is_json(&r) => {
            ApiError::MethodNotAllowed.into_response()
        }
        Ok(r) => r,
        Err(e) => ApiError::Unavailable(IoError {
            step: "router".into(),
            cause: e.to_string(),
        })
        .into_response(),
    }
}

fn is_json(r: &Response) -> bool {
    r.headers()
        .get("content-type")
        .ok()
        .flatten()
        .is_some_and(|c| c.starts_with("application/json"))
}
