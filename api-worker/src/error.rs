//! The API's answers: its one error type, and the JSON response every handler returns, error
//! or not. Caller faults carry a stable `code` and a message meant for the caller; unexpected
//! failures are logged with their cause and shown only as a generic message.

use shared::edge::{log, ConfigError, IoError};
use shared::page::PageError;
use shared::validation::FieldError;
use worker::Response;

#[derive(Debug)]
pub enum ApiError {
    /// 400: the request cannot be read (bad JSON, bad query, bad header).
    BadRequest { code: &'static str, message: String },
    /// 401: no usable credentials.
    Unauthorized(&'static str),
    /// 403: credentials are fine but not for this.
    Forbidden(&'static str),
    /// 404: nothing there, or not the caller's (indistinguishable on purpose).
    NotFound(&'static str),
    /// 405: the path exists, not with this method.
    MethodNotAllowed,
    /// 402: the balance does not cover the cost.
    PaymentRequired(String),
    /// 409: conflicts with existing state.
    Conflict { code: &'static str, message: String },
    /// 413: body or file too large.
    TooLarge(String),
    /// 429: over a rate limit; retry after this many seconds.
    TooManyRequests(u32),
    /// 416: the requested range lies outside the object (of this size).
    RangeNotSatisfiable(u64),
    /// 415: a body or file of a type we do not take.
    UnsupportedMediaType(String),
    /// 422: well-formed but invalid.
    Invalid(FieldError),
    /// 422 with a code of its own.
    Unprocessable { code: &'static str, message: String },
    /// 503: storage or a binding failed; safe to retry.
    Unavailable(IoError),
    /// 503: the worker's configuration is missing or wrong.
    Misconfigured(ConfigError),
}

impl From<IoError> for ApiError {
    fn from(e: IoError) -> Self {
        ApiError::Unavailable(e)
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        ApiError::Invalid(e)
    }
}

impl From<PageError> for ApiError {
    fn from(e: PageError) -> Self {
        ApiError::bad_request(e.code, e.message)
    }
}

impl ApiError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            code,
            message: message.into(),
        }
    }

    fn parts(&self) -> (u16, &'static str, String, Option<&str>) {
        match self {
            ApiError::BadRequest { code, message } => (400, code, message.clone(), None),
            ApiError::Unauthorized(m) => (401, "unauthorized", (*m).to_owned(), None),
            ApiError::Forbidden(m) => (403, "forbidden", (*m).to_owned(), None),
            ApiError::NotFound(what) => (404, "not_found", format!("{what} not found"), None),
            ApiError::MethodNotAllowed => (
                405,
                "method_not_allowed",
                "method not allowed on this path".into(),
                None,
            ),
            ApiError::PaymentRequired(m) => (402, "insufficient_credits", m.clone(), None),
            ApiError::Conflict { code, message } => (409, code, message.clone(), None),
            ApiError::TooLarge(m) => (413, "payload_too_large", m.clone(), None),
            ApiError::TooManyRequests(secs) => (
                429,
                "rate_limited",
                format!("too many requests; retry in {secs} s"),
                None,
            ),
            ApiError::RangeNotSatisfiable(size) => (
                416,
                "range_not_satisfiable",
                format!("the object has {size} bytes"),
                None,
            ),
            ApiError::UnsupportedMediaType(m) => (415, "unsupported_media_type", m.clone(), None),
            ApiError::Invalid(f) => (422, f.code, f.to_string(), Some(f.field.as_str())),
            ApiError::Unprocessable { code, message } => (422, code, message.clone(), None),
            ApiError::Unavailable(_) => (
                503,
                "unavailable",
                "a backing service failed; retry later".into(),
                None,
            ),
            ApiError::Misconfigured(_) => (
                503,
                "misconfigured",
                "the service is misconfigured".into(),
                None,
            ),
        }
    }

    /// The JSON response; server-side failures are logged with their cause, never shown.
    pub fn into_response(self) -> Response {
        match &self {
            ApiError::Unavailable(e) => log(
                serde_json::json!({"level": "error", "event": "api.unavailable", "step": e.step, "cause": e.cause}),
            ),
            ApiError::Misconfigured(e) => log(
                serde_json::json!({"level": "error", "event": "api.misconfigured", "cause": e.0}),
            ),
            _ => {}
        }
        let (status, code, message, field) = self.parts();
        let mut error = serde_json::json!({ "code": code, "message": message });
        if let Some(f) = field {
            error["field"] = serde_json::json!(f);
        }
        let mut resp = json_response(&serde_json::json!({ "error": error }), status);
        match self {
            ApiError::RangeNotSatisfiable(size) => {
                let _ = resp
                    .headers_mut()
                    .set("content-range", &format!("bytes */{size}"));
            }
            ApiError::TooManyRequests(secs) => {
                let _ = resp.headers_mut().set("retry-after", &secs.to_string());
            }
            _ => {}
        }
        resp
    }
}

/// A JSON response that cannot fail: serialization of our own values does not fail, and if the
/// runtime refuses to build a response we still return an empty one with the status.
pub fn json_response(value: &serde_json::Value, status: u16) -> Response {
    let body = value.to_string();
    let built = Response::ok(body).and_then(|r| {
        let mut r = r.with_status(status);
        r.headers_mut().set("content-type", "application/json")?;
        Ok(r)
    });
    built.unwrap_or_else(|_| {
        Response::empty()
            .map(|r| r.with_status(status))
            .unwrap_or_else(|_| fallback())
    })
}

/// A JSON body with a status: a handler's answer.
pub fn json(value: &serde_json::Value, status: u16) -> ApiResult {
    Ok(json_response(value, status))
}

#[allow(clippy::expect_used)]
fn fallback() -> Response {
    Response::empty().expect("an empty response always builds")
}

pub type ApiResult = Result<Response, ApiError>;
