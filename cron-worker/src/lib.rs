//! cron-worker: the jobs that keep the system consistent and small. Cron triggers reach
//! `scheduled`, which runs the jobs of that expression; operators reach the same jobs through the
//! api's `POST /admin/cron/{job}` over a service binding (this worker has no public route).
//! Every run is recorded in `cron_runs` and logged; no job's error is lost.

mod audit;
mod jobs;
mod runner;

use worker::{event, Context, Env, Method, Request, Response, ScheduleContext, ScheduledEvent};

#[event(scheduled)]
async fn scheduled(event: ScheduledEvent, env: Env, _ctx: ScheduleContext) {
    console_error_panic_hook::set_once();
    runner::run_schedule(&env, &event.cron()).await;
}

/// Reached only through the api's service binding: `POST /run/{job}` runs one job now with its
/// schedule's budget; `GET /runs` lists the latest recorded runs.
#[event(fetch)]
async fn fetch(req: Request, env: Env, _ctx: Context) -> worker::Result<Response> {
    console_error_panic_hook::set_once();
    let path = req.path();
    if req.method() == Method::Get && path == "/runs" {
        return Response::from_json(&runner::recent_runs(&env).await);
    }
    let job = path.strip_prefix("/run/").unwrap_or_default().to_owned();
    let cadence = shared::schedule::cadence_of(&job);
    let (Method::Post, Some(cadence)) = (req.method(), cadence) else {
        return Response::from_json(
            &serde_json::json!({"error": {"code": "not_found", "message": "no such job"}}),
        )
        .map(|r| r.with_status(404));
    };
    let summary = runner::run_job(&env, &job, "manual", cadence).await;
    Response::from_json(&summary)
}
