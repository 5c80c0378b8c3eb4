//! The catalogue over HTTP: what users can buy (public), and the operators' view and change of
//! it (admin). The stored catalogue is in D1 `settings`; see `settings.rs` for how it is read.
//!
//! Invariants:
//! - The public view never shows provider product ids: it is built field by field, not copied.
//! - A change is accepted only if `Catalog::parse` and the bounds below accept it, and only
//!   against the version the operator read (`expected_version`): of two operators changing it at
//!   once, one wins and the other gets 409 `version_conflict`, never a silent overwrite.
//! - The change and its `admin_audit` row are one D1 batch: both or neither.
//! - Orders are rows with their own terms; changing the catalogue never touches them.

use crate::admin::audit_log::audit_when;
use crate::auth;
use crate::context::{reply, App};
use crate::error::{json, ApiError, ApiResult};
use crate::request::json_body;
use crate::router::Routes;
use crate::settings;
use serde_json::{json, Value};
use shared::catalog::{self, Catalog, Product, SETTINGS_KEY};
use shared::edge::{changes, now};
use shared::validation::{only_fields, Expected, FieldError};
use worker::Request;

pub fn routes(r: Routes) -> Routes {
    r.get_async("/api/catalog", |_, ctx| async move {
        reply(public(&ctx.data).await)
    })
    .get_async("/admin/catalog", |req, ctx| async move {
        reply(show(req, &ctx.data).await)
    })
    .put_async("/admin/catalog", |req, ctx| async move {
        reply(update(req, &ctx.data).await)
    })
}

/// Largest `PUT /admin/catalog` body.
const MAX_BODY_BYTES: usize = 64 * 1024;
/// Most products (packs and plans together) a catalogue may list.
const MAX_PRODUCTS: usize = 100;
const MAX_ID_LEN: usize = 64;
const MAX_PROVIDER_ID_LEN: usize = 128;
/// Highest price, in minor units (a million in major units).
const MAX_PRICE: i64 = 100_000_000;
/// Most credits one pack or one period grants (the admin grant's bound).
const MAX_CREDITS: i64 = 1_000_000_000;
/// Longest a pack's credits may last: ten years.
const MAX_EXPIRES_DAYS: i64 = 3650;
/// Versions stay exact as JS numbers.
const MAX_VERSION: i64 = 1 << 52;

/// A product as users see it: terms, no provider ids.
fn public_view(p: Product<'_>) -> Value {
    match p {
        Product::Pack(pack) => json!({
            "id": pack.id, "kind": "pack", "price": pack.price, "currency": pack.currency,
            "credits": pack.credits, "expires_in_days": pack.expires_in_days,
        }),
        Product::Plan(plan) => json!({
            "id": plan.id, "kind": "plan", "price": plan.price, "currency": plan.currency,
            "credits_per_period": plan.credits_per_period, "plan": plan.plan, "cycle": plan.cycle,
        }),
    }
}

/// `GET /api/catalog` (public): the products users can buy now and the settings version.
async fn public(app: &App) -> ApiResult {
    let (catalog, version) = settings::catalog(app).await?;
    let products: Vec<Value> = catalog
        .packs
        .iter()
        .map(Product::Pack)
        .chain(catalog.plans.iter().map(Product::Plan))
        .map(public_view)
        .collect();
    json(&json!({"version": version, "products": products}), 200)
}

/// `GET /admin/catalog`: the stored catalogue as operators wrote it, with its version (what a
/// change must name) and who changed it last. A stored catalogue that no longer parses is shown
/// with the problem, so it can be fixed through `PUT`.
async fn show(req: Request, app: &App) -> ApiResult {
    auth::operator(&req, app).await?;
    let row = settings::stored(app).await?;
    let problem = Catalog::parse(&row.value).err();
    let catalog: Value =
        serde_json::from_str(&row.value).unwrap_or_else(|_| Value::String(row.value.clone()));
    json(
        &json!({
            "catalog": catalog, "version": row.version, "updated_at": row.updated_at,
            "updated_by": row.updated_by, "valid": problem.is_none(), "problem": problem,
        }),
        200,
    )
}

/// Bounds `Catalog::parse` does not check: sizes and ranges, so a stored catalogue stays small
/// and every figure derived from it (expiry times, balances) stays far from overflow.
fn check_bounds(c: &Catalog) -> Result<(), FieldError> {
    let bad = |m: String| FieldError::new("catalog", "invalid_catalog", m);
    if c.packs.len() + c.plans.len() > MAX_PRODUCTS {
        return Err(bad(format!("at most {MAX_PRODUCTS} products")));
    }
    let products = c
        .packs
        .iter()
        .map(Product::Pack)
        .chain(c.plans.iter().map(Product::Plan));
    for p in products {
        let id = p.id();
        if id.len() > MAX_ID_LEN
            || !id
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "_.-".contains(ch))
        {
            return Err(bad(format!(
                "product id {:?} must be 1-{MAX_ID_LEN} characters of [A-Za-z0-9_.-]",
                id.chars().take(MAX_ID_LEN).collect::<String>()
            )));
        }
        let provider = p.creem_product_id();
        if provider.len() > MAX_PROVIDER_ID_LEN || provider.chars().any(char::is_control) {
            return Err(bad(format!(
                "{id}: creem_product_id must be at most {MAX_PROVIDER_ID_LEN} printable characters"
            )));
        }
        if p.price() > MAX_PRICE {
            return Err(bad(format!("{id}: price must be at most {MAX_PRICE}")));
        }
        if p.credits() > MAX_CREDITS {
            return Err(bad(format!("{id}: credits must be at most {MAX_CREDITS}")));
        }
        if let Product::Pack(pack) = p {
            if pack.expires_in_days.is_some_and(|d| d > MAX_EXPIRES_DAYS) {
                return Err(bad(format!(
                    "{id}: expires_in_days must be at most {MAX_EXPIRES_DAYS}"
                )));
            }
        }
    }
    Ok(())
}

/// `PUT /admin/catalog {catalog, expected_version}`: replaces the catalogue if it is still at
/// `expected_version`; 409 `version_conflict` if someone changed it since. Audited.
async fn update(mut req: Request, app: &App) -> ApiResult {
    let actor = auth::operator(&req, app).await?.actor()?;
    let body = json_body(&mut req, MAX_BODY_BYTES).await?;
    only_fields(&body, &["catalog", "expected_version"], Expected::All)?;
    let expected = match body.get("expected_version") {
        None | Some(Value::Null) => {
            return Err(FieldError::new(
                "expected_version",
                "required",
                "is required: the version you read from GET /admin/catalog",
            )
            .into())
        }
        Some(v) => v
            .as_i64()
            .filter(|n| (1..MAX_VERSION).contains(n))
            .ok_or_else(|| {
                FieldError::new(
                    "expected_version",
                    "invalid_value",
                    "must be a positive integer",
                )
            })?,
    };
    let value = body
        .get("catalog")
        .filter(|c| c.is_object())
        .ok_or_else(|| {
            FieldError::new("catalog", "required", "is required and must be an object")
        })?;
    let text = value.to_string();
    let parsed = Catalog::parse(&text).map_err(|e| {
        // the shared messages name the old CATALOG variable; here the field is named already
        let message = e
            .strip_prefix("CATALOG: ")
            .or_else(|| e.strip_prefix("CATALOG "))
            .unwrap_or(&e)
            .to_owned();
        FieldError::new("catalog", "invalid_catalog", message)
    })?;
    check_bounds(&parsed)?;

    let at = now();
    let next = expected + 1;
    // The audit row goes first, on the same condition as the update: within one batch nothing
    // else runs between them, so it is written exactly when the update changes the row.
    let stmts = [
        audit_when(
            &actor,
            "catalog.update",
            &format!("settings:{SETTINGS_KEY}"),
            &json!({"from_version": expected, "to_version": next, "catalog": value}),
            catalog::AT_VERSION,
            catalog::at_version(expected),
        ),
        catalog::update(&text, expected, &actor, at),
    ];
    let results = app.db.batch("update catalog", &stmts).await?;
    if results.get(1).map(changes) != Some(1) {
        let current = settings::stored(app).await?;
        return Err(ApiError::Conflict {
            code: "version_conflict",
            message: format!(
                "the catalogue is at version {}, not {expected}; read it again and reapply your change",
                current.version
            ),
        });
    }
    settings::write_snapshot(app, next, value).await;
    json(
        &json!({"catalog": value, "version": next, "updated_at": at, "updated_by": actor}),
        200,
    )
}
