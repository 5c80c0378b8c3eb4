//! Routing, and what wraps every request: CORS, building its [`App`], the renewed session token,
//! counting failed authentication, the one JSON shape of the router's own 404/405, and one log
//! line per request. Each module registers its own routes (`routes`); handlers return
//! `Result<Response, ApiError>` and `context::reply` turns their errors into responses.

use crate::context::{App, Limit};
use crate::error::{json_response, ApiError};
use crate::request::client_ip;
use crate::router::{Ctx, Route, Routes};
use crate::{
    admin, catalog, files, health, history, links, me, orders, sessions, shares, tasks, webhooks,
};
use shared::edge::{log, now_ms, IoCounts, IoError};
use std::rc::Rc;
use worker::{Env, Request, Response};

/// Every route. The table matches paths by their shape (matchit), not by the order they are
/// added in, and refuses a path added twice for one method.
pub fn routes(r: Routes) -> Routes {
    let r = r.get_async("/api/openapi.json", |_, _| async { Ok(openapi_response()) });
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
                Ok(app) => route(req, Rc::new(app)).await,
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

async fn route(req: Request, app: Rc<App>) -> Response {
    let ip = client_ip(&req);
    let webhook = req.path().starts_with("/webhooks/");
    let mut response = dispatch(req, app.clone()).await;
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

thread_local! {
    /// The route table, built at this isolate's first request (`router`).
    static ROUTES: Routes = {
        let table = routes(Routes::default());
        for refused in &table.refused {
            log(serde_json::json!({"level": "error", "event": "route_refused", "route": refused}));
        }
        table
    };
}

async fn dispatch(req: Request, app: Rc<App>) -> Response {
    let (handler, params) = match ROUTES.with(|r| r.find(&req.method(), &req.path())) {
        Route::To(handler, params) => (handler, params),
        Route::MethodNotAllowed => return ApiError::MethodNotAllowed.into_response(),
        Route::NotFound => return ApiError::NotFound("route").into_response(),
    };
    // a handler's own bare 404/405 (none is meant to send one) still gets the one error shape
    match handler(req, Ctx::new(app, params)).await {
        Ok(r) if r.status_code() == 404 && !is_json(&r) => {
            ApiError::NotFound("route").into_response()
        }
        Ok(r) if r.status_code() == 405 && !is_json(&r) => {
            ApiError::MethodNotAllowed.into_response()
        }
        Ok(r) => r,
        Err(e) => ApiError::Unavailable(IoError {
            step: "handler".into(),
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
