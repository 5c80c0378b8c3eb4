//! Calls from browsers: applies `shared::cors` to every request, in `app::handle`, around routing.
//!
//! - A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) is answered here,
//!   on any path, before configuration, storage or routing: 204 with the CORS headers for an
//!   origin in `CORS_ALLOWED_ORIGINS`, 403 JSON without them for any other.
//! - Every other answer, errors included (the router's 404/405, 401s, 429s, a misconfigured 503),
//!   gets `Access-Control-Allow-Origin` (the exact origin), `-Allow-Credentials` and
//!   `-Expose-Headers` when its `Origin` is allowed, and no CORS header otherwise; `Vary: Origin`
//!   whenever origins are configured.
//!
//! The allowed origins are read from the environment here rather than from `Config`, so a
//! request whose configuration is broken still gets its 503 readable by an allowed page.

use crate::config;
use crate::error::ApiError;
use shared::cors::{vary_with_origin, Cors};
use worker::{Env, Headers, Request, Response};

/// The CORS decision for a request, made before it is routed.
pub fn decide(req: &Request, env: &Env) -> Cors {
    let origins = config::cors_allowed_origins(env).unwrap_or_default();
    let headers = req.headers();
    let origin = headers.get("origin").ok().flatten();
    let request_method = headers.get("access-control-request-method").ok().flatten();
    origins.decide(
        req.method().as_ref(),
        origin.as_deref(),
        request_method.as_deref(),
    )
}

/// The answer to a preflight, if the request is one; `None`: route it.
pub fn preflight(cors: &Cors) -> Option<Response> {
    match cors {
        Cors::Preflight(headers) => {
            let resp = Response::builder().with_status(204).empty();
            Some(with_headers(resp, headers, false))
        }
        Cors::Refuse { vary } => Some(with_headers(
            ApiError::Forbidden("this origin may not call the API from a browser").into_response(),
            &[],
            *vary,
        )),
        Cors::Pass { .. } => None,
    }
}

/// Adds the CORS headers the decision calls for to a routed answer.
pub fn apply(cors: &Cors, resp: Response) -> Response {
    match cors {
        Cors::Pass { headers, vary } => with_headers(resp, headers, *vary),
        _ => resp,
    }
}

/// `resp` with `add` set and `Origin` added to `Vary` when `vary`. The headers are copied into a
/// new `Headers`, since a response built from another (a fetch, an R2 body) may have immutable
/// ones.
fn with_headers(resp: Response, add: &[(&'static str, String)], vary: bool) -> Response {
    let vary = if vary {
        vary_with_origin(resp.headers().get("vary").ok().flatten().as_deref())
    } else {
        None
    };
    if add.is_empty() && vary.is_none() {
        return resp;
    }
    let headers = Headers::new();
    for (name, value) in resp.headers().entries() {
        let _ = headers.append(&name, &value);
    }
    for (name, value) in add {
        let _ = headers.set(name, value);
    }
    if let Some(v) = vary {
        let _ = headers.set("vary", &v);
    }
    resp.with_headers(headers)
}
