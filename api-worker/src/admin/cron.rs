//! The scheduled jobs: their recorded runs (`GET /admin/cron/runs`), and running one now
//! (`POST /admin/cron/:job`), which the cron worker does over its service binding (`CRON`) with
//! the budget of the job's schedule. Running one is audited.

use super::audit_log::audit;
use crate::auth;
use crate::context::{reply, App};
use crate::error::{json, ApiError, ApiResult};
use crate::request::{page, query};
use crate::router::{Ctx, Routes};
use serde_json::{json, Value};
use shared::admin_views;
use shared::edge::StepExt;
use worker::Request;

pub fn routes(r: Routes) -> Routes {
    r.get_async("/admin/cron/runs", |req, ctx| async move {
        reply(list_runs(req, &ctx.data).await)
    })
    .post_async("/admin/cron/:job", |req, ctx| async move {
        reply(run_job(req, &ctx).await)
    })
}

/// `GET /admin/cron/runs?job=&limit=`: recent runs, newest first.
async fn list_runs(req: Request, app: &App) -> ApiResult {
    auth::operator(&req, app).await?;
    let limit = page(&req, &super::PAGE)?.limit;
    let rows: Vec<Value> = app
        .db
        .all(
            "list cron runs",
            &admin_views::cron_runs(query(&req, "job"), limit),
        )
        .await?;
    json(&json!({"runs": rows}), 200)
}

/// `POST /admin/cron/:job`: runs a job now in the cron worker (service binding), with the budget
/// of its schedule, and returns its recorded summary.
async fn run_job(req: Request, ctx: &Ctx) -> ApiResult {
    let app = &ctx.data;
    let actor = auth::operator(&req, app).await?.actor()?;
    let job = ctx.param("job").cloned().unwrap_or_default();
    if !job
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        || job.is_empty()
        || job.len() > 40
    {
        return Err(ApiError::NotFound("job"));
    }
    let cron = app.env.service("CRON").step("binding CRON")?;
    let mut init = worker::RequestInit::new();
    init.with_method(worker::Method::Post);
    app.io.fetch();
    let mut resp = cron
        .fetch(format!("https://cron/run/{job}"), Some(init))
        .await
        .step("cron worker")?;
    if resp.status_code() == 404 {
        return Err(ApiError::NotFound("job"));
    }
    let summary: Value = resp.json().await.step("cron worker answer")?;
    app.db
        .run(
            "audit cron run",
            &audit(&actor, "cron.run", &job, &summary["summary"]),
        )
        .await?;
    json(&summary, 200)
}
