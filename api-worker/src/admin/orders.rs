//! `GET /admin/orders?status=&user_id=&limit=&cursor=`: the orders, newest first, with their
//! status and the terms they were created with (the console's payments pages). Read-only.

use super::{created_cursor, CURSOR_PAGE};
use crate::auth;
use crate::context::{reply, App};
use crate::error::{json, ApiError, ApiResult};
use crate::request::{page, query};
use crate::router::Routes;
use serde_json::{json, Value};
use shared::ids::UserId;
use shared::orders::{self, STATUSES};
use worker::Request;

pub fn routes(r: Routes) -> Routes {
    r.get_async("/admin/orders", |req, ctx| async move {
        reply(list(req, &ctx.data).await)
    })
}

async fn list(req: Request, app: &App) -> ApiResult {
    auth::operator(&req, app).await?;
    let status = query(&req, "status");
    if status.as_deref().is_some_and(|s| !STATUSES.contains(&s)) {
        return Err(ApiError::bad_request(
            "invalid_status",
            format!("status must be one of {}", STATUSES.join(", ")),
        ));
    }
    let user = query(&req, "user_id")
        .map(|u| {
            UserId::parse(&u)
                .map(|u| u.to_string())
                .map_err(|e| ApiError::bad_request("invalid_id", e.to_string()))
        })
        .transpose()?;
    let page = page(&req, &CURSOR_PAGE)?;
    let found: Vec<Value> = app
        .db
        .all("admin list orders", &orders::list(status, user, &page))
        .await?;
    let (orders, next) = page.split(found, created_cursor);
    json(&json!({"orders": orders, "next_cursor": next}), 200)
}
