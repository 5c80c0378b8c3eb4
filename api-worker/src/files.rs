//! R2 objects served over HTTP: to their owner through the API, or to anyone holding a
//! time-limited signed URL (`/files/{key}?exp=&sig=`), which is how providers fetch uploads.

use crate::context::{reply, App};
use crate::error::{ApiError, ApiResult};
use crate::request::query;
use crate::router::{Ctx, Routes};
use shared::edge::{now, StepExt};
use shared::http::{none_match, parse_range};
use shared::signing::verify_file_signature;
use worker::{Range as R2Range, Request, Response};

pub fn routes(r: Routes) -> Routes {
    r.get_async("/files/*key", |req, ctx| async move {
        reply(get(&req, &ctx).await)
    })
    .head_async("/files/*key", |req, ctx| async move {
        reply(get(&req, &ctx).await)
    })
}

/// `GET /files/*key?exp=&sig=` (and `HEAD`)
async fn get(req: &Request, ctx: &Ctx) -> ApiResult {
    let app = &ctx.data;
    let key = ctx.param("key").cloned().unwrap_or_default();
    let exp = query(req, "exp").and_then(|e| e.parse::<i64>().ok());
    let sig = query(req, "sig");
    let (Some(exp), Some(sig)) = (exp, sig) else {
        return Err(ApiError::Forbidden("a signed URL needs exp and sig"));
    };
    if key.is_empty()
        || key.contains("..")
        || !verify_file_signature(app.cfg.files_signing_key.as_bytes(), &key, exp, &sig, now())
    {
        return Err(ApiError::Forbidden(
            "the URL is expired or its signature does not match",
        ));
    }
    stream_object(req, app, &key, "private, max-age=300").await
}

/// Streams an object with its stored content type, length, ETag and cache headers; answers
/// `If-None-Match` with 304 and a single `Range` with 206 (416 if it lies outside the object).
pub async fn stream_object(req: &Request, app: &App, key: &str, cache_control: &str) -> ApiResult {
    let bucket = app.bucket()?;
    app.io.r2();
    let head = bucket
        .head(key)
        .await
        .step(format!("r2 head {key}"))?
        .ok_or(ApiError::NotFound("file"))?;
    let size = head.size();
    let etag = head.http_etag();
    let content_type = head
        .http_metadata()
        .content_type
        .unwrap_or_else(|| "application/octet-stream".into());
    let header = |name: &str| req.headers().get(name).ok().flatten();
    let set = |resp: &mut Response, name: &str, value: &str| {
        resp.headers_mut().set(name, value).step("set header")
    };
    if none_match(header("if-none-match").as_deref(), &etag) {
        let mut resp = Response::empty().step("build 304")?.with_status(304);
        set(&mut resp, "etag", &etag)?;
        set(&mut resp, "cache-control", cache_control)?;
        return Ok(resp);
    }
    let range = parse_range(header("range").as_deref(), size)
        .map_err(|()| ApiError::RangeNotSatisfiable(size))?;
    let mut get = bucket.get(key);
    if let Some(r) = range {
        get = get.range(R2Range::OffsetWithLength {
            offset: r.start,
            length: r.len(),
        });
    }
    app.io.r2();
    let object = get
        .execute()
        .await
        .step(format!("r2 get {key}"))?
        .ok_or(ApiError::NotFound("file"))?;
    let body = object
        .body()
        .ok_or(ApiError::NotFound("file"))?
        .response_body()
        .step("r2 body")?;
    let mut resp = Response::from_body(body).step("build file response")?;
    set(&mut resp, "content-type", &content_type)?;
    set(&mut resp, "etag", &etag)?;
    set(&mut resp, "cache-control", cache_control)?;
    set(&mut resp, "accept-ranges", "bytes")?;
    set(&mut resp, "x-content-type-options", "nosniff")?;
    match range {
        Some(r) => {
            set(&mut resp, "content-length", &r.len().to_string())?;
            set(&mut resp, "content-range", &r.content_range(size))?;
            Ok(resp.with_status(206))
        }
        None => {
            set(&mut resp, "content-length", &size.to_string())?;
            Ok(resp)
        }
    }
}
