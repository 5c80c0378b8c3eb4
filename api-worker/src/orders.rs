//! Orders and subscriptions for end users: create an order for a catalogue product (with a
//! checkout at the payment provider), list and read them, read the current subscription.
//! An order row records the terms it was sold on from the catalogue of that moment
//! (`settings::catalog`); the rules and their statements are `shared::orders`.

use crate::auth;
use crate::context::{reply, App, Limit};
use crate::error::{json, ApiError, ApiResult};
use crate::request::{json_body, page};
use crate::router::{Ctx, Routes};
use serde_json::{json, Value};
use shared::edge::{now, IoError, StepExt};
use shared::ids::UserId;
use shared::orders::{self, OrderRow};
use shared::page::PageRule;
use shared::users;
use shared::validation::{only_fields, Expected, FieldError};
use std::time::Duration;
use worker::wasm_bindgen::JsValue;
use worker::{Fetch, Headers, Method, Request, RequestInit};

pub fn routes(r: Routes) -> Routes {
    r.post_async("/api/orders", |req, ctx| async move {
        reply(create(req, &ctx.data).await)
    })
    .get_async("/api/orders", |req, ctx| async move {
        reply(list(req, &ctx.data).await)
    })
    .get_async("/api/orders/:id", |req, ctx| async move {
        reply(get(req, &ctx).await)
    })
    .get_async("/api/subscription", |req, ctx| async move {
        reply(subscription(req, &ctx.data).await)
    })
}

/// `POST /api/orders {product_id}` -> 201 `{order_id, checkout_url, …}`
async fn create(mut req: Request, app: &App) -> ApiResult {
    let user = auth::user_within(&req, app, Limit::Order).await?;
    let body = json_body(&mut req, 4 * 1024).await?;
    only_fields(&body, &["product_id"], Expected::All)?;
    let product_id = body
        .get("product_id")
        .and_then(Value::as_str)
        .ok_or_else(|| FieldError::new("product_id", "required", "is required"))?;
    let (catalog, _version) = crate::settings::catalog(app).await?;
    let product = catalog.product(product_id).ok_or_else(|| {
        FieldError::new(
            "product_id",
            "unknown_product",
            "no such product in the catalogue",
        )
    })?;
    let order_id = format!("ord_{}", uuid::Uuid::new_v4().simple());
    let at = now();
    let email: Option<String> = app
        .db
        .first::<Value>("user email", &users::email(&user))
        .await?
        .and_then(|v| v["email"].as_str().map(str::to_owned));
    // The order keeps its terms: a payment grants what the row says, whatever the catalogue
    // says by then.
    app.db
        .run(
            "insert order",
            &orders::create(&order_id, &user, product, at),
        )
        .await?;

    let checkout = match create_checkout(
        app,
        &order_id,
        &user,
        product.creem_product_id(),
        email.as_deref(),
    )
    .await
    {
        Ok(c) => c,
        Err(e) => {
            // No checkout, no payment: the order cannot be paid, so it is closed at once.
            let _ = app
                .db
                .run("cancel order", &orders::cancel_unpaid(&order_id, now()))
                .await;
            return Err(ApiError::Unavailable(e));
        }
    };
    app.db
        .run(
            "record checkout",
            &orders::record_checkout(&order_id, &checkout.0, &checkout.1, now()),
        )
        .await?;
    json(
        &json!({"order_id": order_id, "checkout_url": checkout.1, "status": "pending", "product_id": product.id(),
                "amount": product.price(), "currency": product.currency(), "credits": product.credits()}),
        201,
    )
}

/// Creem's create-checkout: returns (checkout id, checkout URL).
async fn create_checkout(
    app: &App,
    order_id: &str,
    user: &UserId,
    creem_product: &str,
    email: Option<&str>,
) -> Result<(String, String), IoError> {
    let err = |cause: String| IoError {
        step: "creem create checkout".into(),
        cause,
    };
    let mut body = json!({
        "product_id": creem_product,
        "request_id": order_id,
        "success_url": app.cfg.checkout_success_url,
        "metadata": {"order_id": order_id, "user_id": user.to_string()},
    });
    if let Some(e) = email {
        body["customer"] = json!({"email": e});
    }
    let headers = Headers::new();
    headers
        .set("x-api-key", &app.cfg.creem_api_key)
        .step("header")?;
    headers
        .set("content-type", "application/json")
        .step("header")?;
    let mut init = RequestInit::new();
    init.with_method(Method::Post)
        .with_headers(headers)
        .with_body(Some(JsValue::from_str(&body.to_string())));
    let req = Request::new_with_init(&format!("{}/v1/checkouts", app.cfg.creem_base_url), &init)
        .step("build checkout request")?;
    let sent =
        shared::edge::fetch_with_timeout(&app.io, Fetch::Request(req), Duration::from_secs(15))
            .await;
    let mut resp = match sent {
        Ok(r) => r,
        Err(shared::edge::FetchError::Network(e)) => Err(e).step("creem create checkout")?,
        Err(shared::edge::FetchError::TimedOut(_)) => {
            return Err(err("no answer within 15 s".into()))
        }
    };
    let status = resp.status_code();
    let text = resp.text().await.step("read checkout response")?;
    if !(200..300).contains(&status) {
        return Err(err(format!(
            "HTTP {status}: {}",
            text.chars().take(300).collect::<String>()
        )));
    }
    let v: Value =
        serde_json::from_str(&text).map_err(|e| err(format!("unreadable response: {e}")))?;
    match (
        v.get("id").and_then(Value::as_str),
        v.get("checkout_url").and_then(Value::as_str),
    ) {
        (Some(id), Some(url)) => Ok((id.to_owned(), url.to_owned())),
        _ => Err(err("response has no id or checkout_url".into())),
    }
}

/// `GET /api/orders?limit=`: the caller's orders, newest first (one page: no cursor).
async fn list(req: Request, app: &App) -> ApiResult {
    let user = auth::user(&req, app).await?;
    let limit = page(&req, &PageRule::new(20, 100))?.limit;
    let rows: Vec<OrderRow> = app
        .db
        .all("list orders", &orders::list_owned(&user, limit))
        .await?;
    json(
        &json!({"orders": rows.iter().map(OrderRow::view).collect::<Vec<_>>()}),
        200,
    )
}

/// `GET /api/orders/:id`: the caller's order; anyone else's is a 404.
async fn get(req: Request, ctx: &Ctx) -> ApiResult {
    let app = &ctx.data;
    let user = auth::user(&req, app).await?;
    let id = ctx.param("id").cloned().unwrap_or_default();
    if id.len() > 64 {
        return Err(ApiError::NotFound("order"));
    }
    let row: OrderRow = app
        .db
        .first("order by id and owner", &orders::owned(&id, &user))
        .await?
        .ok_or(ApiError::NotFound("order"))?;
    json(&row.view(), 200)
}

/// `GET /api/subscription`: the caller's current subscription (live ones first), or null.
async fn subscription(req: Request, app: &App) -> ApiResult {
    let user = auth::user(&req, app).await?;
    let row: Option<Value> = app
        .db
        .first(
            "current subscription",
            &orders::current_subscription(&user, now()),
        )
        .await?;
    let active = row.as_ref().is_some_and(|r| orders::has_access(r, now()));
    json(&json!({"subscription": row, "access": active}), 200)
}
