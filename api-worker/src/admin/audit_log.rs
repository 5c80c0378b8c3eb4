//! Who changed what: every operator change writes one `admin_audit` row naming the actor (the
//! `X-Actor` header, else "admin": `auth::Operator::actor`), the action, its target and a JSON
//! detail, written now (the rules and statements are `shared::admin_audit`). Where the change is
//! a D1 write, its audit row goes in the same batch, so a change is never without its record and
//! a record never without its change. `GET /admin/audit-log` reads them back.

use crate::auth;
use crate::context::{reply, App};
use crate::error::{json, ApiResult};
use crate::request::{page, query};
use crate::router::Routes;
use serde_json::{json, Value};
use shared::admin_audit::{self, detail_as_json};
use shared::edge::now;
use shared::sql::{Param, Stmt};
use worker::Request;

pub fn routes(r: Routes) -> Routes {
    r.get_async("/admin/audit-log", |req, ctx| async move {
        reply(list(req, &ctx.data).await)
    })
}

/// One audit row, written now.
pub fn audit(actor: &str, action: &str, target: &str, detail: &Value) -> Stmt {
    admin_audit::record(actor, action, target, detail, now())
}

/// One audit row, written now and only if `when` holds (`admin_audit::record_when`).
pub fn audit_when(
    actor: &str,
    action: &str,
    target: &str,
    detail: &Value,
    when: &'static str,
    when_params: Vec<Param>,
) -> Stmt {
    admin_audit::record_when(actor, action, target, detail, now(), when, when_params)
}

/// `GET /admin/audit-log?target=&action=&actor=&limit=`: who changed what, newest first.
async fn list(req: Request, app: &App) -> ApiResult {
    auth::operator(&req, app).await?;
    let limit = page(&req, &super::PAGE)?.limit;
    let rows: Vec<Value> = app
        .db
        .all(
            "list admin audit",
            &admin_audit::list(
                query(&req, "target"),
                query(&req, "action"),
                query(&req, "actor"),
                limit,
            ),
        )
        .await?;
    let entries: Vec<Value> = rows
        .into_iter()
        .map(|mut r| {
            detail_as_json(&mut r);
            r
        })
        .collect();
    json(&json!({"entries": entries}), 200)
}
