//! `GET /admin/audit?stuck_secs=`: the ledger auditor (`shared::audit`) run now, on demand.
//! Admin token only. It only reads (one D1 batch of every check), so it writes nothing to
//! `admin_audit`; the answer is 200 with the report whether or not it found violations, since
//! finding them is the route working. `stuck_secs` (default 3600, 60..=604800) is how long a
//! live task may stay past its deadline, or an event stay `received`, before it is a violation.

use crate::auth;
use crate::context::{reply, App};
use crate::error::{json, ApiError, ApiResult};
use crate::request::query;
use crate::router::Routes;
use shared::audit;
use shared::edge::now;
use worker::Request;

pub fn routes(r: Routes) -> Routes {
    r.get_async("/admin/audit", |req, ctx| async move {
        reply(run(req, &ctx.data).await)
    })
}

async fn run(req: Request, app: &App) -> ApiResult {
    auth::operator(&req, app).await?;
    let stuck_secs = audit::parse_stuck_secs(query(&req, "stuck_secs").as_deref())
        .map_err(|message| ApiError::bad_request("invalid_stuck_secs", message))?;
    let report = audit::run(&app.db, now(), stuck_secs).await?;
    json(
        &serde_json::to_value(&report).unwrap_or(serde_json::Value::Null),
        200,
    )
}
