//! What users can buy: credit packs and subscription plans, read from configuration (`CATALOG`,
//! JSON) and checked once; an invalid catalogue is a startup error, never a wrong charge.
//!
//! The catalogue is stored in D1, the `settings` row [`SETTINGS_KEY`] ([`stored`]), with a
//! version that grows by one per change. A change applies only to the version its author read
//! ([`update`], a compare-and-set): of two changes made at once, one wins and the other changes
//! nothing. Its audit row goes before it in the same batch, on the same condition
//! ([`AT_VERSION`]).

use crate::sql::{Param, Stmt};
use serde::Deserialize;
use std::collections::HashSet;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pack {
    pub id: String,
    /// The payment provider's product.
    pub creem_product_id: String,
    /// Price in minor units (cents).
    pub price: i64,
    pub currency: String,
    pub credits: i64,
    /// Days the granted credits last; none: they do not expire.
    #[serde(default)]
    pub expires_in_days: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub id: String,
    /// `basic`, `pro` or `premium` (`subscriptions.plan_type`).
    pub plan: String,
    /// `monthly` or `yearly` (`subscriptions.billing_cycle`).
    pub cycle: String,
    pub creem_product_id: String,
    pub price: i64,
    pub currency: String,
    /// Credits granted once per billing period; they expire at the period's end.
    pub credits_per_period: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    pub packs: Vec<Pack>,
    pub plans: Vec<Plan>,
}

/// A product, whichever kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Product<'a> {
    Pack(&'a Pack),
    Plan(&'a Plan),
}

impl Product<'_> {
    pub fn id(&self) -> &str {
        match self {
            Product::Pack(p) => &p.id,
            Product::Plan(p) => &p.id,
        }
    }
    pub fn creem_product_id(&self) -> &str {
        match self {
            Product::Pack(p) => &p.creem_product_id,
            Product::Plan(p) => &p.creem_product_id,
        }
    }
    pub fn price(&self) -> i64 {
        match self {
            Product::Pack(p) => p.price,
            Product::Plan(p) => p.price,
        }
    }
    pub fn currency(&self) -> &str {
        match self {
            Product::Pack(p) => &p.currency,
            Product::Plan(p) => &p.currency,
        }
    }
    /// Credits an order of this product grants (per period for plans).
    pub fn credits(&self) -> i64 {
        match self {
            Product::Pack(p) => p.credits,
            Product::Plan(p) => p.credits_per_period,
        }
    }
}

impl Catalog {
    /// Parses and checks a catalogue; the error says what is wrong.
    pub fn parse(json: &str) -> Result<Catalog, String> {
        let c: Catalog = serde_json::from_str(json)
            .map_err(|e| format!("CATALOG is not a valid catalogue: {e}"))?;
        let mut ids = HashSet::new();
        let mut provider_ids = HashSet::new();
        let products = c
            .packs
            .iter()
            .map(Product::Pack)
            .chain(c.plans.iter().map(Product::Plan));
        for p in products {
            let id = p.id();
            if id.is_empty() || !ids.insert(id.to_owned()) {
                return Err(format!("CATALOG: product id {id:?} is empty or repeated"));
            }
            if p.creem_product_id().is_empty()
                || !provider_ids.insert(p.creem_product_id().to_owned())
            {
                return Err(format!(
                    "CATALOG: {id}: creem_product_id is empty or repeated"
                ));
            }
            if p.price() < 0 {
                return Err(format!("CATALOG: {id}: price must not be negative"));
            }
            if p.credits() <= 0 {
                return Err(format!("CATALOG: {id}: credits must be positive"));
            }
            let cur = p.currency();
            if cur.len() != 3 || !cur.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(format!(
                    "CATALOG: {id}: currency must be a 3-letter ISO code like USD"
                ));
            }
        }
        for pack in &c.packs {
            if pack.expires_in_days.is_some_and(|d| d <= 0) {
                return Err(format!(
                    "CATALOG: {}: expires_in_days must be positive",
                    pack.id
                ));
            }
        }
        for plan in &c.plans {
            if !["basic", "pro", "premium"].contains(&plan.plan.as_str()) {
                return Err(format!(
                    "CATALOG: {}: plan must be basic, pro or premium",
                    plan.id
                ));
            }
            if !["monthly", "yearly"].contains(&plan.cycle.as_str()) {
                return Err(format!(
                    "CATALOG: {}: cycle must be monthly or yearly",
                    plan.id
                ));
            }
        }
        Ok(c)
    }

    pub fn product(&self, id: &str) -> Option<Product<'_>> {
        self.packs
            .iter()
            .find(|p| p.id == id)
            .map(Product::Pack)
            .or_else(|| self.plans.iter().find(|p| p.id == id).map(Product::Plan))
    }

    pub fn by_creem_id(&self, creem_product_id: &str) -> Option<Product<'_>> {
        self.packs
            .iter()
            .find(|p| p.creem_product_id == creem_product_id)
            .map(Product::Pack)
            .or_else(|| {
                self.plans
                    .iter()
                    .find(|p| p.creem_product_id == creem_product_id)
                    .map(Product::Plan)
            })
    }
}

// -------------------------------------------------------------------------------------------------
// Stored in D1
// -------------------------------------------------------------------------------------------------

/// The `settings` row that holds the catalogue.
pub const SETTINGS_KEY: &str = "catalog";

/// The catalogue as stored ([`stored`]): its JSON (what operators wrote, provider ids included),
/// its version, when and by whom it was last changed.
#[derive(Debug, Deserialize)]
pub struct StoredCatalog {
    pub value: String,
    pub version: i64,
    pub updated_at: i64,
    pub updated_by: Option<String>,
}

/// The stored catalogue row ([`StoredCatalog`]).
pub fn stored() -> Stmt {
    Stmt::new(
        "SELECT value, version, updated_at, updated_by FROM settings WHERE key = ?1",
        vec![SETTINGS_KEY.into()],
    )
}

/// The condition under which [`update`] changes the row, for the audit row written before it
/// (`admin_audit::record_when`, whose own params end at ?6): the catalogue is still at the
/// version of [`at_version`]'s params.
pub const AT_VERSION: &str = "EXISTS (SELECT 1 FROM settings WHERE key = ?7 AND version = ?8)";

/// The params of [`AT_VERSION`]: the catalogue's row, at version `expected`.
pub fn at_version(expected: i64) -> Vec<Param> {
    vec![SETTINGS_KEY.into(), Param::Int(expected)]
}

/// Stores `value` (a checked catalogue's JSON) as the next version, by `actor` at `at`, only if
/// the stored catalogue is still at version `expected`: `changes` is 0 when another change came
/// first.
pub fn update(value: &str, expected: i64, actor: &str, at: i64) -> Stmt {
    Stmt::new(
        "UPDATE settings SET value = ?1, version = version + 1, updated_at = ?2, updated_by = ?3
         WHERE key = ?4 AND version = ?5",
        vec![
            value.into(),
            at.into(),
            actor.into(),
            SETTINGS_KEY.into(),
            Param::Int(expected),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"packs":[{"id":"pack_small","creem_product_id":"prod_1","price":499,"currency":"USD","credits":50,"expires_in_days":365}],
        "plans":[{"id":"pro_monthly","plan":"pro","cycle":"monthly","creem_product_id":"prod_2","price":1999,"currency":"USD","credits_per_period":300}]}"#;

    #[test]
    fn a_good_catalogue_parses_and_finds_products() {
        let c = Catalog::parse(GOOD).unwrap();
        assert_eq!(c.product("pack_small").unwrap().credits(), 50);
        assert!(matches!(c.by_creem_id("prod_2"), Some(Product::Plan(p)) if p.plan == "pro"));
        assert!(c.product("nope").is_none());
    }

    #[test]
    fn bad_catalogues_say_what_is_wrong() {
        let bad = |from: &str, to: &str| Catalog::parse(&GOOD.replace(from, to)).unwrap_err();
        assert!(bad("\"credits\":50", "\"credits\":0").contains("credits must be positive"));
        assert!(bad("\"USD\",\"credits\":50", "\"usd\",\"credits\":50").contains("currency"));
        assert!(bad("\"prod_2\"", "\"prod_1\"").contains("creem_product_id"));
        assert!(bad("\"pro_monthly\"", "\"pack_small\"").contains("repeated"));
        assert!(bad("\"cycle\":\"monthly\"", "\"cycle\":\"weekly\"").contains("cycle"));
        assert!(bad("\"plan\":\"pro\"", "\"plan\":\"gold\"").contains("plan must be"));
        assert!(bad("\"expires_in_days\":365", "\"expires_in_days\":0").contains("expires_in_days"));
        assert!(bad("\"price\":499", "\"price\":-1").contains("price"));
        assert!(Catalog::parse("{")
            .unwrap_err()
            .contains("not a valid catalogue"));
        assert!(bad("\"price\":499", "\"price\":499,\"colour\":1").contains("unknown field"));
    }

    #[test]
    fn the_stored_catalogue_changes_only_from_the_version_read_and_is_audited_with_it() {
        use crate::admin_audit::record_when;
        use crate::audit::tests::{db, exec};
        use crate::history::tests::rows;
        let conn = db();
        let read = |conn: &rusqlite::Connection| -> StoredCatalog {
            serde_json::from_value(rows(conn, &stored()).remove(0)).unwrap()
        };
        let seeded = read(&conn);
        assert_eq!(
            (seeded.version, seeded.updated_by.as_deref()),
            (1, Some("migration"))
        );
        assert!(
            Catalog::parse(&seeded.value).is_ok(),
            "the seed is a valid catalogue"
        );

        let change = |expected: i64, at: i64| -> (u64, u64) {
            let audit = record_when(
                "op",
                "catalog.update",
                "settings:catalog",
                &serde_json::json!({}),
                at,
                AT_VERSION,
                at_version(expected),
            );
            (
                exec(&conn, &audit),
                exec(&conn, &update(GOOD, expected, "op", at)),
            )
        };
        assert_eq!(change(1, 10), (1, 1));
        let now = read(&conn);
        assert_eq!(
            (
                now.value.as_str(),
                now.version,
                now.updated_at,
                now.updated_by.as_deref()
            ),
            (GOOD, 2, 10, Some("op"))
        );
        assert_eq!(
            change(1, 11),
            (0, 0),
            "another change came first: nothing, and no audit row"
        );
        assert_eq!(read(&conn).version, 2);
        let audited = rows(&conn, &crate::admin_audit::list(None, None, None, 10));
        assert_eq!(audited.len(), 1);
    }
}
