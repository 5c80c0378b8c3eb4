//! `GET /admin/webhook-events`: the payment providers' events as stored, newest first, with what
//! became of each (applied, ignored, rejected, or still received). One page: no cursor.

use crate::auth;
use crate::context::{reply, App};
use crate::error::{json, ApiResult};
use crate::request::{page, query};
use crate::router::Routes;
use serde_json::{json, Value};
use shared::webhook_events;
use worker::Request;

pub fn routes(r: Routes) -> Routes {
    r.get_async("/admin/webhook-events", |req, ctx| async move {
        reply(list(req, &ctx.data).await)
    })
}

/// `GET /admin/webhook-events?status=&type=&limit=`: what providers told us and what became of it
/// (rejected bodies and disputes included).
async fn list(req: Request, app: &App) -> ApiResult {
    auth::operator(&req, app).await?;
    let limit = page(&req, &super::PAGE)?.limit;
    let rows: Vec<Value> = app
        .db
        .all(
            "list webhook events",
            &webhook_events::list(query(&req, "status"), query(&req, "type"), limit),
        )
        .await?;
    json(&json!({"webhook_events": rows}), 200)
}
