//! HTTP to the AI provider and to its result URLs. Every outcome becomes either a value or a
//! classified [`Failure`]; nothing here decides what to do about it.

use crate::batch::Ctx;
use futures::StreamExt;
use shared::budget::{ByteBudget, Permit};
use shared::edge::{fetch_with_timeout, FetchError};
use shared::ids::TaskId;
use shared::keys::image_extension;
use shared::kie::{self, Progress};
use shared::model::Model;
use shared::retry::{check_result_body, check_result_headers, classify_status, Failure};
use shared::signing::callback_token;
use std::time::Duration;
use worker::js_sys::futures::JsFuture;
use worker::wasm_bindgen::JsValue;
use worker::{Fetch, Headers, Method, Request, RequestInit, Response, ResponseBody};

const API_TIMEOUT: Duration = Duration::from_secs(30);
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(60);

/// A fetch with a timeout (`shared::edge::fetch_with_timeout`: counted, and aborted when it
/// times out, so a batch's invocation gets its connection back). No response is transient:
/// `network` or `timeout`.
async fn send(ctx: &Ctx, req: Request, timeout: Duration) -> Result<Response, Failure> {
    fetch_with_timeout(&ctx.io, Fetch::Request(req), timeout)
        .await
        .map_err(|e| match e {
            FetchError::Network(_) => Failure::transient("network", e.to_string()),
            FetchError::TimedOut(_) => Failure::transient("timeout", e.to_string()),
        })
}

fn api_request(
    ctx: &Ctx,
    method: Method,
    url: &str,
    body: Option<String>,
) -> Result<Request, Failure> {
    let headers = Headers::new();
    let set = |k: &str, v: &str| {
        headers
            .set(k, v)
            .map_err(|e| Failure::permanent("bad_request", e.to_string()))
    };
    set("authorization", &format!("Bearer {}", ctx.cfg.kie_api_key))?;
    set("accept", "application/json")?;
    if body.is_some() {
        set("content-type", "application/json")?;
    }
    let mut init = RequestInit::new();
    init.with_method(method).with_headers(headers);
    if let Some(b) = body {
        init.with_body(Some(JsValue::from_str(&b)));
    }
    Request::new_with_init(url, &init).map_err(|e| Failure::permanent("bad_request", e.to_string()))
}

/// Lets go of a response body we will not read. An unread body keeps its connection open
/// until the invocation ends, and the batch's other fetches would queue behind it.
async fn discard(resp: &Response) {
    if let ResponseBody::Stream(stream) = resp.body() {
        let _ = JsFuture::from(stream.cancel()).await;
    }
}

async fn read(ctx: &Ctx, req: Request) -> Result<Vec<u8>, Failure> {
    let mut resp = send(ctx, req, API_TIMEOUT).await?;
    let retry_after = resp.headers().get("retry-after").ok().flatten();
    if let Some(f) = classify_status(resp.status_code(), retry_after.as_deref()) {
        discard(&resp).await;
        return Err(f);
    }
    resp.bytes()
        .await
        .map_err(|e| Failure::transient("network", format!("reading provider response: {e}")))
}

/// Creates the provider task; returns its id.
pub async fn create(
    ctx: &Ctx,
    task: &TaskId,
    model: Model,
    prompt: &str,
    size: &str,
    image_urls: &[String],
    deadline_at: i64,
) -> Result<String, Failure> {
    let (create_path, _) = kie::endpoints(model);
    let task = task.to_string();
    let token = callback_token(
        ctx.cfg.files_signing_key.as_bytes(),
        &task,
        model.as_str(),
        deadline_at,
    );
    let callback = kie::callback_url(&ctx.cfg.public_base_url, model, &task, deadline_at, &token);
    let body = kie::create_body(model, prompt, size, image_urls, Some(&callback)).to_string();
    let req = api_request(
        ctx,
        Method::Post,
        &format!("{}{create_path}", ctx.cfg.kie_base_url),
        Some(body),
    )?;
    kie::parse_created(&read(ctx, req).await?)
}

/// Asks where a provider task stands.
pub async fn record(ctx: &Ctx, model: Model, external_id: &str) -> Result<Progress, Failure> {
    let url = kie::record_url(&ctx.cfg.kie_base_url, model, external_id);
    let req = api_request(ctx, Method::Get, &url, None)?;
    kie::parse_record(model, &read(ctx, req).await?)
}

/// A downloaded result image: bytes and their real content type.
pub struct Image<'b> {
    pub bytes: Vec<u8>,
    pub content_type: &'static str,
    pub extension: &'static str,
    /// The batch's budget held for these bytes, given back when the image is dropped: keep the
    /// image (moving only `bytes` out of it) until the bytes are written to R2.
    _permit: Permit<'b>,
}

/// Downloads a result, checked by `shared::retry::check_result_*`. Before reading the body it
/// holds, from the batch's `budget`, the bytes the body may take (its Content-Length, else the
/// size cap), waiting while the batch's other downloads hold too much: a batch's messages run
/// at once, and ten bodies at the cap would not fit in the isolate's memory.
pub async fn download<'b>(
    ctx: &Ctx,
    budget: &'b ByteBudget,
    url: &str,
) -> Result<Image<'b>, Failure> {
    let req = Request::new(url, Method::Get)
        .map_err(|e| Failure::permanent("bad_result_url", e.to_string()))?;
    let mut resp = send(ctx, req, DOWNLOAD_TIMEOUT).await?;
    let max = u64::try_from(ctx.cfg.max_result_bytes).unwrap_or(u64::MAX);
    let declared = resp
        .headers()
        .get("content-length")
        .ok()
        .flatten()
        .and_then(|v| v.parse::<u64>().ok());
    let declared_type = resp
        .headers()
        .get("content-type")
        .ok()
        .flatten()
        .unwrap_or_default();
    if let Err(f) = check_result_headers(resp.status_code(), declared, &declared_type, max) {
        discard(&resp).await;
        return Err(f);
    }
    // A compressed body is decoded on the way in, so its Content-Length (of the encoded bytes)
    // says nothing about what it takes in memory: hold the cap for it instead.
    let encoded = resp
        .headers()
        .get("content-encoding")
        .ok()
        .flatten()
        .is_some_and(|e| !e.trim().is_empty() && !e.trim().eq_ignore_ascii_case("identity"));
    let sized = if encoded { None } else { declared };
    let mut permit = budget.acquire(sized.map_or(max, |n| n.min(max))).await;
    let bytes = read_bounded(&mut resp, sized, max).await?;
    permit.shrink_to(u64::try_from(bytes.len()).unwrap_or(u64::MAX));
    let content_type = check_result_body(&bytes, max)?;
    let extension = image_extension(content_type).unwrap_or("bin");
    Ok(Image {
        bytes,
        content_type,
        extension,
        _permit: permit,
    })
}

/// Reads a body of at most its declared length `sized` (else the cap `max`) without ever
/// holding more: the read stops, and the rest of the body is cancelled, as soon as it passes
/// the limit. A body longer than the cap is permanent (`result_too_large`); one that disagrees
/// with its own Content-Length is a broken response, transient.
async fn read_bounded(
    resp: &mut Response,
    sized: Option<u64>,
    max: u64,
) -> Result<Vec<u8>, Failure> {
    let failed = |e: worker::Error| Failure::transient("download_failed", e.to_string());
    if !matches!(resp.body(), ResponseBody::Stream(_)) {
        return resp.bytes().await.map_err(failed);
    }
    let limit = sized.map_or(max, |n| n.min(max));
    let limit_len = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut stream = resp.stream().map_err(failed)?;
    // a declared length is allocated at once; otherwise grow, never past the limit
    let mut bytes: Vec<u8> = Vec::with_capacity(if sized.is_some() { limit_len } else { 0 });
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(failed)?;
        let len = bytes.len().saturating_add(chunk.len());
        if len > limit_len {
            // dropping the stream cancels the rest of the body
            drop(stream);
            return Err(if limit >= max {
                Failure::permanent(
                    "result_too_large",
                    format!("result is larger than {max} bytes"),
                )
            } else {
                Failure::transient(
                    "download_failed",
                    format!("result body is longer than its Content-Length ({limit})"),
                )
            });
        }
        if len > bytes.capacity() {
            let target = bytes.capacity().saturating_mul(2).max(len).min(limit_len);
            bytes.reserve_exact(target - bytes.len());
        }
        bytes.extend_from_slice(&chunk);
    }
    if sized.is_some_and(|n| u64::try_from(bytes.len()).unwrap_or(u64::MAX) < n) {
        return Err(Failure::transient(
            "download_failed",
            format!(
                "result body ended after {} of its {limit} bytes",
                bytes.len()
            ),
        ));
    }
    bytes.shrink_to_fit();
    Ok(bytes)
}
