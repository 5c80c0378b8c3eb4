//! Image links that last (see `shared::sharing`): the owner's signed link to a result
//! (`/api/images/{task}/{n}?sig=`), which an `<img>` loads with no bearer header, and the
//! serving both it and a share's images go through: the stored R2 object with its ETag,
//! `Cache-Control` and ranges (`files::stream_object`), or, when the object is missing, the
//! provider's own URL proxied (never redirected: the reader gets our headers, never a provider
//! URL that may have expired, and nothing but an image) while D1 says the result may still be
//! served. Every fallback is logged (`link.fallback`).

use crate::context::{reply, App};
use crate::error::{ApiError, ApiResult};
use crate::request::{query, task_id};
use crate::router::{Ctx, Routes};
use shared::edge::{fetch_with_timeout, log, CachedStatus, FetchError, StepExt};
use shared::ids::TaskId;
use shared::keys::task_status_key;
use shared::sharing::{
    self, json_list, provider_url, verify_link_signature, ShareId, StoredResults,
};
use std::time::Duration;
use worker::{Fetch, Headers, Request, Url};

/// The owner's results: the bytes at a key never change, so browsers may keep them a day.
pub const OWNER_CACHE: &str = "private, max-age=86400";
/// A share's images: revalidated on every display (a 304 while the share lives), so a revoked
/// share stops showing at once even in a reader's cache.
pub const SHARE_CACHE: &str = "private, no-cache";
/// What the provider's copy is served with: a stopgap, kept briefly.
const FALLBACK_CACHE: &str = "private, max-age=300";
const FALLBACK_TIMEOUT: Duration = Duration::from_secs(20);

pub fn routes(r: Routes) -> Routes {
    r.get_async("/api/images/:id/:n", |req, ctx| async move {
        reply(get(&req, &ctx).await)
    })
}

/// A result index from the path.
pub fn index(ctx: &Ctx) -> Result<usize, ApiError> {
    ctx.param("n")
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|n| *n < 64)
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_index",
                "result index must be an integer from 0 to 63",
            )
        })
}

/// Where a served result comes from, for the fallback's D1 check and its log line.
#[derive(Clone, Copy)]
pub enum Source<'a> {
    Task(&'a TaskId),
    Share(&'a ShareId),
}

/// `GET /api/images/:id/:n?sig=`: result `n` of a task, for anyone holding its signed link.
/// A wrong signature, a deleted task, a missing result: 404, alike.
async fn get(req: &Request, ctx: &Ctx) -> ApiResult {
    let app = &ctx.data;
    let task = task_id(ctx)?;
    let n = index(ctx)?;
    let sig = query(req, "sig").unwrap_or_default();
    if !verify_link_signature(
        app.cfg.files_signing_key.as_bytes(),
        &task.to_string(),
        n,
        &sig,
    ) {
        return Err(ApiError::NotFound("image"));
    }
    let key = match cached_result_key(app, &task, n).await {
        Some(key) => key,
        None => stored_result_key(app, &task, n).await?,
    };
    serve(req, app, &key, n, OWNER_CACHE, Source::Task(&task)).await
}

/// The key of result `n` from the final status the consumer cached in KV (deleting a task
/// deletes it), if it is there.
async fn cached_result_key(app: &App, task: &TaskId, n: usize) -> Option<String> {
    app.io.kv();
    let cached = app
        .kv()
        .ok()?
        .get(&task_status_key(task))
        .json::<CachedStatus>()
        .await
        .ok()
        .flatten()?;
    (cached.status == "completed")
        .then(|| cached.result_keys.get(n).cloned())
        .flatten()
}

/// The task's stored results and provider URLs from D1, if it is completed and not deleted.
async fn stored(app: &App, task: &TaskId) -> Result<Option<StoredResults>, ApiError> {
    Ok(app
        .db
        .first("task results for a link", &sharing::link_results(task))
        .await?)
}

async fn stored_result_key(app: &App, task: &TaskId, n: usize) -> Result<String, ApiError> {
    stored(app, task)
        .await?
        .and_then(|s| json_list(s.result_keys.as_deref()).into_iter().nth(n))
        .ok_or(ApiError::NotFound("image"))
}

/// Serves the object at `key`; when it is missing, the provider's copy of result `n`, if D1
/// says it may still be served.
pub async fn serve(
    req: &Request,
    app: &App,
    key: &str,
    n: usize,
    cache_control: &str,
    source: Source<'_>,
) -> ApiResult {
    match crate::files::stream_object(req, app, key, cache_control).await {
        Err(ApiError::NotFound(_)) => fallback(app, key, n, source).await,
        other => other,
    }
}

/// The provider's URL of result `n` and the task it belongs to, checked against D1 now: the
/// task completed and not deleted, and for a share, the share not revoked.
async fn provider_source(
    app: &App,
    n: usize,
    source: Source<'_>,
) -> Result<Option<(String, Option<String>)>, ApiError> {
    Ok(match source {
        Source::Task(task) => stored(app, task)
            .await?
            .map(|s| (task.to_string(), provider_url(s.result_urls.as_deref(), n))),
        Source::Share(share) => app
            .db
            .first::<sharing::ShareRow>("share for a fallback", &sharing::share_query(share))
            .await?
            .map(|row| {
                let url = provider_url(row.result_urls.as_deref(), n);
                (row.task_id, url)
            }),
    })
}

async fn fallback(app: &App, key: &str, n: usize, source: Source<'_>) -> ApiResult {
    let Some((task_id, url)) = provider_source(app, n, source).await? else {
        return Err(ApiError::NotFound("image"));
    };
    let via = match source {
        Source::Task(_) => "link",
        Source::Share(_) => "share",
    };
    let Some(url) = url else {
        log(
            serde_json::json!({"level": "warn", "event": "link.fallback", "task_id": task_id, "index": n,
            "via": via, "key": key, "outcome": "no_provider_url"}),
        );
        return Err(ApiError::NotFound("image"));
    };
    match fetch_provider(app, &url).await {
        Ok(resp) => {
            log(
                serde_json::json!({"level": "warn", "event": "link.fallback", "task_id": task_id, "index": n,
                "via": via, "key": key, "outcome": "proxied", "provider_status": resp.status_code()}),
            );
            Ok(resp)
        }
        Err(why) => {
            log(
                serde_json::json!({"level": "warn", "event": "link.fallback", "task_id": task_id, "index": n,
                "via": via, "key": key, "outcome": "provider_url_dead", "cause": why}),
            );
            Err(ApiError::NotFound("image"))
        }
    }
}

/// Fetches the provider's copy (with a timeout); only a 2xx image is passed on, with our own
/// headers. An expired provider URL answers 4xx, which is the "no longer valid" signal.
async fn fetch_provider(app: &App, url: &str) -> Result<worker::Response, String> {
    let parsed = Url::parse(url).map_err(|e| format!("bad url: {e}"))?;
    let outcome = fetch_with_timeout(&app.io, Fetch::Url(parsed), FALLBACK_TIMEOUT)
        .await
        .map_err(|e| match e {
            FetchError::Network(e) => format!("network: {e}"),
            FetchError::TimedOut(t) => format!("no answer within {}s", t.as_secs()),
        });
    let resp = outcome?;
    let status = resp.status_code();
    let content_type = resp
        .headers()
        .get("content-type")
        .ok()
        .flatten()
        .unwrap_or_default();
    if !(200..300).contains(&status) || !content_type.to_ascii_lowercase().starts_with("image/") {
        if let worker::ResponseBody::Stream(stream) = resp.body() {
            let _ = worker::wasm_bindgen_futures::JsFuture::from(stream.cancel()).await;
        }
        return Err(format!("provider answered {status} {content_type}"));
    }
    let headers = Headers::new();
    let set = |k: &str, v: &str| headers.set(k, v).step("set header");
    set("content-type", &content_type).map_err(|e| e.to_string())?;
    set("cache-control", FALLBACK_CACHE).map_err(|e| e.to_string())?;
    set("x-content-type-options", "nosniff").map_err(|e| e.to_string())?;
    set("x-edgeline-source", "provider").map_err(|e| e.to_string())?;
    Ok(resp.with_headers(headers).with_status(200))
}
