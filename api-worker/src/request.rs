//! Reading a request: query parameters, a list's page (`shared::page`), ids in the path, the
//! body (capped: whatever `Content-Length` says, no more than the cap is read), and the client's
//! address. Each read fails with the code its callers have always answered with.

use crate::error::ApiError;
use crate::router::Ctx;
use shared::ids::{TaskId, UserId};
use shared::page::{Page, PageRule};
use worker::Request;

/// A query parameter.
pub fn query(req: &Request, name: &str) -> Option<String> {
    req.url()
        .ok()?
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// The page a list is asked for, read by its `rule`; a bad limit or cursor is a 400.
pub fn page(req: &Request, rule: &PageRule) -> Result<Page, ApiError> {
    let limit = query(req, rule.limit_param);
    let cursor = query(req, rule.cursor_param);
    Ok(rule.parse(limit.as_deref(), cursor.as_deref())?)
}

fn id_param<T, E: ToString>(
    ctx: &Ctx,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> Result<T, ApiError> {
    parse(ctx.param("id").map(String::as_str).unwrap_or_default())
        .map_err(|e| ApiError::bad_request("invalid_id", e.to_string()))
}

/// The task id in the path (`:id`); a malformed one is 400 `invalid_id`.
pub fn task_id(ctx: &Ctx) -> Result<TaskId, ApiError> {
    id_param(ctx, TaskId::parse)
}

/// The user id in the path (`:id`); a malformed one is 400 `invalid_id`.
pub fn user_id(ctx: &Ctx) -> Result<UserId, ApiError> {
    id_param(ctx, UserId::parse)
}

/// A 413 before reading, when the body's declared length is over `cap`.
pub fn refuse_declared_over(req: &Request, cap: usize) -> Result<(), ApiError> {
    let declared = req
        .headers()
        .get("content-length")
        .ok()
        .flatten()
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > cap) {
        return Err(too_large(cap));
    }
    Ok(())
}

fn too_large(cap: usize) -> ApiError {
    ApiError::TooLarge(format!("body larger than {cap} bytes"))
}

/// A request body, read whole and capped. Over the cap is a 413 whatever the header said.
pub async fn body_bytes(req: &mut Request, cap: usize) -> Result<Vec<u8>, ApiError> {
    refuse_declared_over(req, cap)?;
    let bytes = req.bytes().await.map_err(|_| {
        ApiError::bad_request("unreadable_body", "the request body could not be read")
    })?;
    if bytes.len() > cap {
        return Err(too_large(cap));
    }
    Ok(bytes)
}

/// A JSON object body.
pub async fn json_body(req: &mut Request, cap: usize) -> Result<serde_json::Value, ApiError> {
    let bytes = body_bytes(req, cap).await?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request("invalid_json", format!("body is not valid JSON: {e}"))
    })?;
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "invalid_json",
            "body must be a JSON object",
        ));
    }
    Ok(value)
}

/// The client's address as Cloudflare reports it.
pub fn client_ip(req: &Request) -> String {
    req.headers()
        .get("cf-connecting-ip")
        .ok()
        .flatten()
        .unwrap_or_else(|| "unknown".into())
}
