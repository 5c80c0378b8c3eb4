//! R2 objects served over HTTP: to their owner through the API, or to anyone holding a
//! time-limited signed URL (`/files/{key}?exp=&sig=`), which is how providers fetch uploads.

use crate::app::{query, App, Ctx};
use crate::error::{ApiError, ApiResult};
use shared::edge::{now, StepExt};
use shared::signing::verify_file_signature;
use worker::{Request, Response};

/// `GET /files/*key?exp=&sig=`
pub async fn get(req: &Request, ctx: &Ctx) -> ApiResult {
    let app = &ctx.data;
    let key = ctx.param("key").cloned().unwrap_or_default();
    let exp = query(req, "exp").and_then(|e| e.parse::<i64>().ok());
    let sig = query(req, "sig");
    let (Some(exp), Some(sig)) = (exp, sig) else {
        return Err(ApiError::Forbidden("a signed URL needs exp and sig"));
    };
    if key.is_empty() || key.contains("..") || !verify_file_signature(app.cfg.files_signing_key.as_bytes(), &key, exp, &sig, now()) {
        return Err(ApiError::Forbidden("the URL is expired or its signature does not match"));
    }
    stream_object(app, &key, "private, max-age=300").await
}

/// Streams an object with its stored content type, length and ETag.
pub async fn stream_object(app: &App, key: &str, cache_control: &str) -> ApiResult {
    app.io.r2();
    let object = app.bucket()?.get(key).execute().await.step(format!("r2 get {key}"))?.ok_or(ApiError::NotFound("file"))?;
    let content_type = object.http_metadata().content_type.unwrap_or_else(|| "application/octet-stream".into());
    let size = object.size();
    let etag = object.http_etag();
    let body = object.body().ok_or(ApiError::NotFound("file"))?.response_body().step("r2 body")?;
    let mut resp = Response::from_body(body).step("build file response")?;
    let headers = resp.headers_mut();
    headers.set("content-type", &content_type).step("set header")?;
    headers.set("content-length", &size.to_string()).step("set header")?;
    headers.set("etag", &etag).step("set header")?;
    headers.set("cache-control", cache_control).step("set header")?;
    headers.set("x-content-type-options", "nosniff").step("set header")?;
    Ok(resp)
}
