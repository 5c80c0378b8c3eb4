//! Who changed what: every operator change writes one `admin_audit` row naming the actor (the
//! `X-Actor` header, else "admin"), the action, its target and a JSON detail. Where the change is
//! a D1 write, its audit row goes in the same batch, so a change is never without its record and
//! a record never without its change.

use crate::app::{json, query, App};
use crate::error::{ApiError, ApiResult};
use serde_json::{json, Value};
use shared::edge::now;
use shared::sql::{Param, Stmt};
use worker::Request;

/// Who is acting: the `X-Actor` header (an operator's name), else "admin". Bounded and of a
/// small alphabet, so it is safe in logs and rows.
pub fn actor(req: &Request) -> Result<String, ApiError> {
    match req.headers().get("x-actor").ok().flatten() {
        None => Ok("admin".into()),
        Some(a)
            if !a.is_empty()
                && a.len() <= 64
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._@-".contains(c)) =>
        {
            Ok(a)
        }
        Some(_) => Err(ApiError::bad_request(
            "invalid_actor",
            "X-Actor must be 1-64 characters of [A-Za-z0-9._@-]",
        )),
    }
}

const INSERT: &str = "INSERT INTO admin_audit (id, actor, action, target, detail, created_at)";

fn params(actor: &str, action: &str, target: &str, detail: &Value) -> Vec<Param> {
    vec![
        format!("aud_{}", uuid::Uuid::new_v4().simple()).into(),
        actor.into(),
        action.into(),
        target.into(),
        detail.to_string().into(),
        now().into(),
    ]
}

/// One audit row.
pub fn audit(actor: &str, action: &str, target: &str, detail: &Value) -> Stmt {
    Stmt::new(
        format!("{INSERT} VALUES (?1, ?2, ?3, ?4, ?5, ?6)"),
        params(actor, action, target, detail),
    )
}

/// One audit row, written only if `when` (a SQL condition over `when_params`, numbered from ?7)
/// holds when the statement runs. Placed before a conditional write in the same batch with the
/// same condition, it records the change exactly when the change happens: nothing else runs
/// between two statements of one batch. `when` is fixed SQL; values only ever travel as params.
pub fn audit_when(
    actor: &str,
    action: &str,
    target: &str,
    detail: &Value,
    when: &'static str,
    when_params: Vec<Param>,
) -> Stmt {
    let mut all = params(actor, action, target, detail);
    all.extend(when_params);
    Stmt::new(
        format!("{INSERT} SELECT ?1, ?2, ?3, ?4, ?5, ?6 WHERE {when}"),
        all,
    )
}

/// `GET /admin/audit-log?target=&action=&actor=&limit=`: who changed what, newest first.
pub async fn list(req: Request, app: &App) -> ApiResult {
    crate::auth::admin(&req, app).await?;
    let limit = crate::ops::limit_param(&req, 50, crate::ops::MAX_PAGE)?;
    let rows: Vec<Value> = app
        .db
        .all(
            "list admin audit",
            &Stmt::new(
                "SELECT id, actor, action, target, detail, created_at FROM admin_audit
                 WHERE (?1 IS NULL OR target = ?1) AND (?2 IS NULL OR action = ?2) AND (?3 IS NULL OR actor = ?3)
                 ORDER BY created_at DESC, id DESC LIMIT ?4",
                vec![
                    query(&req, "target").into(),
                    query(&req, "action").into(),
                    query(&req, "actor").into(),
                    Param::Int(limit),
                ],
            ),
        )
        .await?;
    let entries: Vec<Value> = rows
        .into_iter()
        .map(|mut r| {
            // the detail is stored as JSON text: hand it back as JSON
            if let Some(d) = r["detail"]
                .as_str()
                .and_then(|d| serde_json::from_str::<Value>(d).ok())
            {
                r["detail"] = d;
            }
            r
        })
        .collect();
    json(&json!({"entries": entries}), 200)
}
