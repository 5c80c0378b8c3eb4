//! `GET /api/health`: whether D1, R2, KV and the queue binding answer. No authentication: it
//! says which dependency fails, never why (the cause is logged).

use crate::context::{reply, App};
use crate::error::{json, ApiResult};
use crate::router::Routes;
use serde_json::{json, Value};
use shared::edge::{log, StepExt};
use shared::sql::Stmt;

pub fn routes(r: Routes) -> Routes {
    r.get_async("/api/health", |_, ctx| async move {
        reply(health(&ctx.data).await)
    })
}

async fn health(app: &App) -> ApiResult {
    let d1 = app
        .db
        .run("health", &Stmt::new("SELECT 1", vec![]))
        .await
        .map(|_| ());
    app.io.r2();
    let r2 = match app.bucket() {
        Ok(b) => b.head("health/probe").await.step("r2 head").map(|_| ()),
        Err(e) => Err(e),
    };
    app.io.kv();
    let kv = match app.kv() {
        Ok(k) => k
            .get("health:probe")
            .text()
            .await
            .step("kv get")
            .map(|_| ()),
        Err(e) => Err(e),
    };
    let queue = app.tasks_queue().map(|_| ());
    let checks = [("d1", d1), ("r2", r2), ("kv", kv), ("queue", queue)];
    let ok = checks.iter().all(|(_, r)| r.is_ok());
    let detail: serde_json::Map<String, Value> = checks
        .iter()
        .map(|(name, r)| {
            (
                (*name).to_owned(),
                json!(if r.is_ok() { "ok" } else { "failing" }),
            )
        })
        .collect();
    for (name, r) in &checks {
        if let Err(e) = r {
            log(
                json!({"level": "error", "event": "health_check_failed", "check": name, "cause": e.to_string()}),
            );
        }
    }
    json(
        &json!({ "status": if ok { "ok" } else { "degraded" }, "checks": detail }),
        if ok { 200 } else { 503 },
    )
}
