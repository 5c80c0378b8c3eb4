//! Orders and subscriptions for end users: create an order for a catalogue product (with a
//! checkout at the payment provider), list and read them, read the current subscription.
//! An order row records the terms it was sold on (price, currency, credits, product kind, how
//! long a pack's credits last, a plan's plan and cycle) from the catalogue of that moment
//! (`settings::catalog`); payments grant from the row, and later catalogue changes never alter
//! an existing order.

use crate::app::{json, json_body, query, App, Ctx};
use crate::auth;
use crate::error::{ApiError, ApiResult};
use serde::Deserialize;
use serde_json::{json, Value};
use shared::catalog::Product;
use shared::edge::{now, IoError, StepExt};
use shared::ids::UserId;
use shared::sql::{Param, Stmt};
use shared::validation::FieldError;
use std::time::Duration;
use worker::wasm_bindgen::JsValue;
use worker::{AbortController, Delay, Fetch, Headers, Method, Request, RequestInit};

const ORDER_COLUMNS: &str =
    "id, status, product_id, amount, currency, credits, payment_url, created_at, updated_at";

#[derive(Deserialize)]
struct OrderRow {
    id: String,
    status: String,
    product_id: Option<String>,
    amount: i64,
    currency: Option<String>,
    credits: i64,
    payment_url: Option<String>,
    created_at: i64,
    updated_at: i64,
}

impl OrderRow {
    fn view(&self) -> Value {
        json!({
            "id": self.id, "status": self.status, "product_id": self.product_id, "amount": self.amount,
            "currency": self.currency, "credits": self.credits, "checkout_url": self.payment_url,
            "created_at": self.created_at, "updated_at": self.updated_at,
        })
    }
}

fn field(name: &str, code: &'static str, message: &str) -> ApiError {
    FieldError {
        field: name.into(),
        code,
        message: message.into(),
    }
    .into()
}

/// `POST /api/orders {product_id}` -> 201 `{order_id, checkout_url, …}`
pub async fn create(mut req: Request, app: &App) -> ApiResult {
    let user = auth::user_within(&req, app, crate::app::Limit::Order).await?;
    let body = json_body(&mut req, 4 * 1024).await?;
    if let Some(unknown) = body
        .as_object()
        .and_then(|o| o.keys().find(|k| k.as_str() != "product_id"))
    {
        return Err(field(
            unknown,
            "unknown_field",
            "unknown field; expected product_id",
        ));
    }
    let product_id = body
        .get("product_id")
        .and_then(Value::as_str)
        .ok_or_else(|| field("product_id", "required", "is required"))?;
    let (catalog, _version) = crate::settings::catalog(app).await?;
    let product = catalog.product(product_id).ok_or_else(|| {
        field(
            "product_id",
            "unknown_product",
            "no such product in the catalogue",
        )
    })?;
    // The order keeps its terms: a payment grants what the row says, whatever the catalogue
    // says by then.
    let (kind, expire_days, plan, cycle) = match product {
        Product::Pack(p) => ("pack", p.expires_in_days, None, None),
        Product::Plan(p) => ("plan", None, Some(p.plan.clone()), Some(p.cycle.clone())),
    };
    let order_id = format!("ord_{}", uuid::Uuid::new_v4().simple());
    let at = now();
    let email: Option<String> = app
        .db
        .first::<Value>(
            "user email",
            &Stmt::new(
                "SELECT email FROM users WHERE id = ?1",
                vec![user.to_string().into()],
            ),
        )
        .await?
        .and_then(|v| v["email"].as_str().map(str::to_owned));
    app.db
        .run(
            "insert order",
            &Stmt::new(
                "INSERT INTO orders (id, user_id, amount, currency, status, payment_provider, credits, product_id,
                                     product_kind, credits_expire_days, plan_type, billing_cycle, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, 'pending', 'creem', ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11)",
                vec![
                    order_id.clone().into(),
                    user.to_string().into(),
                    product.price().into(),
                    product.currency().into(),
                    product.credits().into(),
                    product.id().into(),
                    kind.into(),
                    expire_days.into(),
                    plan.into(),
                    cycle.into(),
                    at.into(),
                ],
            ),
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
                .run("cancel order", &Stmt::new("UPDATE orders SET status = 'cancelled', updated_at = ?2 WHERE id = ?1 AND status = 'pending'", vec![order_id.clone().into(), now().into()]))
                .await;
            return Err(ApiError::Unavailable(e));
        }
    };
    app.db
        .run(
            "record checkout",
            &Stmt::new(
                "UPDATE orders SET payment_id = ?2, payment_url = ?3, updated_at = ?4 WHERE id = ?1",
                vec![order_id.clone().into(), checkout.0.clone().into(), checkout.1.clone().into(), now().into()],
            ),
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
    app.io.fetch();
    let controller = AbortController::default();
    let signal = controller.signal();
    let fetcher = Fetch::Request(req);
    let sent = futures::future::select(
        Box::pin(fetcher.send_with_signal(&signal)),
        Box::pin(Delay::from(Duration::from_secs(15))),
    )
    .await;
    let mut resp = match sent {
        futures::future::Either::Left((r, _)) => r.step("creem create checkout")?,
        futures::future::Either::Right(_) => {
            controller.abort();
            return Err(err("no answer within 15 s".into()));
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

/// `GET /api/orders?limit=`: the caller's orders, newest first.
pub async fn list(req: Request, app: &App) -> ApiResult {
    let user = auth::user(&req, app).await?;
    let limit = match query(&req, "limit") {
        None => 20,
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=100).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request("invalid_limit", "limit must be an integer from 1 to 100")
            })?,
    };
    let rows: Vec<OrderRow> = app
        .db
        .all(
            "list orders",
            &Stmt::new(
                format!("SELECT {ORDER_COLUMNS} FROM orders WHERE user_id = ?1 ORDER BY created_at DESC, id DESC LIMIT ?2"),
                vec![user.to_string().into(), Param::Int(limit)],
            ),
        )
        .await?;
    json(
        &json!({"orders": rows.iter().map(OrderRow::view).collect::<Vec<_>>()}),
        200,
    )
}

/// `GET /api/orders/:id`: the caller's order; anyone else's is a 404.
pub async fn get(req: Request, ctx: &Ctx) -> ApiResult {
    let app = &ctx.data;
    let user = auth::user(&req, app).await?;
    let id = ctx.param("id").cloned().unwrap_or_default();
    if id.len() > 64 {
        return Err(ApiError::NotFound("order"));
    }
    let row: OrderRow = app
        .db
        .first(
            "order by id and owner",
            &Stmt::new(
                format!("SELECT {ORDER_COLUMNS} FROM orders WHERE id = ?1 AND user_id = ?2"),
                vec![id.into(), user.to_string().into()],
            ),
        )
        .await?
        .ok_or(ApiError::NotFound("order"))?;
    json(&row.view(), 200)
}

/// `GET /api/subscription`: the caller's current subscription (live ones first), or null.
pub async fn subscription(req: Request, app: &App) -> ApiResult {
    let user = auth::user(&req, app).await?;
    let row: Option<Value> = app
        .db
        .first(
            "current subscription",
            &Stmt::new(
                "SELECT id, plan_type AS plan, status, billing_cycle, third_party_subscription_id AS provider_subscription_id,
                        current_period_start, expires_at AS current_period_end, cancelled_at, enabled_at, updated_at
                 FROM subscriptions WHERE user_id = ?1
                 ORDER BY CASE WHEN status IN ('active','trialing','past_due') THEN 0 WHEN status = 'cancelled' AND expires_at > ?2 THEN 1 ELSE 2 END,
                          expires_at DESC
                 LIMIT 1",
                vec![user.to_string().into(), now().into()],
            ),
        )
        .await?;
    let active = row.as_ref().is_some_and(|r| {
        let live = ["active", "trialing", "past_due", "cancelled"]
            .contains(&r["status"].as_str().unwrap_or(""));
        live && r["current_period_end"].as_i64().is_some_and(|e| e > now())
    });
    json(&json!({"subscription": row, "access": active}), 200)
}
