//! Orders (`orders`) and the subscriptions plans start (`subscriptions`), as the api creates and
//! reads them. What a payment does to an order is `payments`; this module is the order's life
//! around it, and its statements:
//!
//! - an order keeps the terms it was sold on ([`create`]): price, currency, credits, product
//!   kind, how long a pack's credits last, a plan's plan and cycle, from the catalogue of that
//!   moment; payments grant from the row, and later catalogue changes never alter it;
//! - it is created `pending`, then gets its checkout at the provider ([`record_checkout`]); with
//!   no checkout it can never be paid, so it is closed at once ([`cancel_unpaid`]);
//! - a user reads only their own orders ([`list_owned`], [`owned`]); operators read them all, by
//!   status and user ([`list`]);
//! - a user's current subscription is the live one, else a cancelled one still in its period,
//!   else the latest to end ([`current_subscription`]); it gives access while it is live or
//!   cancelled but paid up to a time still ahead ([`has_access`]).

use crate::catalog::Product;
use crate::ids::UserId;
use crate::page::Page;
use crate::sql::{Param, Stmt};
use serde::Deserialize;
use serde_json::{json, Value};

/// Every status an order can be in (the schema's CHECK).
pub const STATUSES: [&str; 8] = [
    "pending",
    "paid",
    "processing",
    "completed",
    "refunding",
    "refunded",
    "cancelled",
    "expired",
];

/// What a user reads of an order ([`OrderRow`]).
const COLUMNS: &str =
    "id, status, product_id, amount, currency, credits, payment_url, created_at, updated_at";

/// An order as its owner reads it.
#[derive(Debug, Deserialize)]
pub struct OrderRow {
    pub id: String,
    pub status: String,
    pub product_id: Option<String>,
    pub amount: i64,
    pub currency: Option<String>,
    pub credits: i64,
    pub payment_url: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl OrderRow {
    /// The owner's view: the checkout URL is `checkout_url`.
    pub fn view(&self) -> Value {
        json!({
            "id": self.id, "status": self.status, "product_id": self.product_id, "amount": self.amount,
            "currency": self.currency, "credits": self.credits, "checkout_url": self.payment_url,
            "created_at": self.created_at, "updated_at": self.updated_at,
        })
    }
}

/// A new `pending` order `id` of `user` for `product`, with the product's terms as the catalogue
/// states them now, paid through Creem.
pub fn create(id: &str, user: &UserId, product: Product<'_>, at: i64) -> Stmt {
    let (kind, expire_days, plan, cycle) = match product {
        Product::Pack(p) => ("pack", p.expires_in_days, None, None),
        Product::Plan(p) => ("plan", None, Some(p.plan.clone()), Some(p.cycle.clone())),
    };
    Stmt::new(
        "INSERT INTO orders (id, user_id, amount, currency, status, payment_provider, credits, product_id,
                             product_kind, credits_expire_days, plan_type, billing_cycle, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, 'pending', 'creem', ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11)",
        vec![
            id.into(),
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
    )
}

/// Closes an order that got no checkout: it stays as it is unless still `pending`.
pub fn cancel_unpaid(id: &str, at: i64) -> Stmt {
    Stmt::new(
        "UPDATE orders SET status = 'cancelled', updated_at = ?2 WHERE id = ?1 AND status = 'pending'",
        vec![id.into(), at.into()],
    )
}

/// Records the order's checkout at the provider: its id and the URL the buyer pays at.
pub fn record_checkout(id: &str, checkout_id: &str, checkout_url: &str, at: i64) -> Stmt {
    Stmt::new(
        "UPDATE orders SET payment_id = ?2, payment_url = ?3, updated_at = ?4 WHERE id = ?1",
        vec![
            id.into(),
            checkout_id.into(),
            checkout_url.into(),
            at.into(),
        ],
    )
}

/// The `limit` newest orders of `user` ([`OrderRow`]), newest first.
pub fn list_owned(user: &UserId, limit: i64) -> Stmt {
    Stmt::new(
        format!("SELECT {COLUMNS} FROM orders WHERE user_id = ?1 ORDER BY created_at DESC, id DESC LIMIT ?2"),
        vec![user.to_string().into(), Param::Int(limit)],
    )
}

/// The order `id` if `user` owns it ([`OrderRow`]); anyone else's is not found.
pub fn owned(id: &str, user: &UserId) -> Stmt {
    Stmt::new(
        format!("SELECT {COLUMNS} FROM orders WHERE id = ?1 AND user_id = ?2"),
        vec![id.into(), user.to_string().into()],
    )
}

/// The operators' page of orders, newest first, with the terms they were created with: those in
/// `status` of `user` when given, after the page's position, `page.limit + 1` rows to learn
/// whether another page follows.
pub fn list(status: Option<String>, user: Option<String>, page: &Page) -> Stmt {
    let [at, id, first] = page.keyset();
    Stmt::new(
        "SELECT id, user_id, status, product_id, product_kind, amount, currency, credits, credits_expire_days,
                plan_type, billing_cycle, payment_provider, payment_id, provider_order_id, provider_transaction_id,
                created_at, updated_at
         FROM orders
         WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR user_id = ?2)
           AND (?5 = 1 OR created_at < ?3 OR (created_at = ?3 AND id < ?4))
         ORDER BY created_at DESC, id DESC LIMIT ?6",
        vec![status.into(), user.into(), at, id, first, Param::Int(page.limit + 1)],
    )
}

/// The current subscription of `user` at `now`, or none: live ones first, then cancelled ones
/// still in their period, then the latest to end.
pub fn current_subscription(user: &UserId, now: i64) -> Stmt {
    Stmt::new(
        "SELECT id, plan_type AS plan, status, billing_cycle, third_party_subscription_id AS provider_subscription_id,
                current_period_start, expires_at AS current_period_end, cancelled_at, enabled_at, updated_at
         FROM subscriptions WHERE user_id = ?1
         ORDER BY CASE WHEN status IN ('active','trialing','past_due') THEN 0 WHEN status = 'cancelled' AND expires_at > ?2 THEN 1 ELSE 2 END,
                  expires_at DESC
         LIMIT 1",
        vec![user.to_string().into(), now.into()],
    )
}

/// Whether the subscription `row` of [`current_subscription`] gives access at `now`: live or
/// cancelled, and its period ends after `now`.
pub fn has_access(row: &Value, now: i64) -> bool {
    let live = ["active", "trialing", "past_due", "cancelled"]
        .contains(&row["status"].as_str().unwrap_or(""));
    live && row["current_period_end"]
        .as_i64()
        .is_some_and(|end| end > now)
}

/// Every subscription of `user`, newest first, as operators read them.
pub fn subscriptions_of(user: &UserId) -> Stmt {
    Stmt::new(
        "SELECT id, plan_type, status, billing_cycle, product_id, third_party_subscription_id, current_period_start,
                expires_at, cancelled_at, credits_per_period, created_at, updated_at
         FROM subscriptions WHERE user_id = ?1 ORDER BY created_at DESC, id DESC",
        vec![user.to_string().into()],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::tests::{db, exec};
    use crate::catalog::{Pack, Plan};
    use crate::history::tests::{rows, user};
    use rusqlite::Connection;

    fn pack() -> Pack {
        Pack {
            id: "starter".into(),
            creem_product_id: "prod_1".into(),
            price: 499,
            currency: "USD".into(),
            credits: 100,
            expires_in_days: Some(30),
        }
    }

    fn plan() -> Plan {
        Plan {
            id: "pro_monthly".into(),
            plan: "pro".into(),
            cycle: "monthly".into(),
            creem_product_id: "prod_2".into(),
            price: 1999,
            currency: "USD".into(),
            credits_per_period: 1000,
        }
    }

    fn order(conn: &Connection, id: &str) -> Value {
        let q = Stmt::new(
            "SELECT status, amount, currency, credits, product_id, product_kind, credits_expire_days, plan_type,
                    billing_cycle, payment_provider, payment_id, payment_url, created_at, updated_at
             FROM orders WHERE id = ?1",
            vec![id.into()],
        );
        rows(conn, &q).remove(0)
    }

    #[test]
    fn an_order_keeps_its_terms_and_is_closed_without_a_checkout() {
        let conn = db();
        let u = user(&conn);
        let (pack, plan) = (pack(), plan());
        assert_eq!(
            exec(&conn, &create("ord_a", &u, Product::Pack(&pack), 10)),
            1
        );
        assert_eq!(
            exec(&conn, &create("ord_b", &u, Product::Plan(&plan), 11)),
            1
        );
        assert_eq!(
            order(&conn, "ord_a"),
            json!({"status": "pending", "amount": 499, "currency": "USD", "credits": 100, "product_id": "starter",
                   "product_kind": "pack", "credits_expire_days": 30, "plan_type": null, "billing_cycle": null,
                   "payment_provider": "creem", "payment_id": null, "payment_url": null, "created_at": 10, "updated_at": 10})
        );
        let b = order(&conn, "ord_b");
        assert_eq!(
            (
                &b["product_kind"],
                &b["credits"],
                &b["plan_type"],
                &b["billing_cycle"],
                &b["credits_expire_days"]
            ),
            (
                &json!("plan"),
                &json!(1000),
                &json!("pro"),
                &json!("monthly"),
                &Value::Null
            )
        );

        assert_eq!(
            exec(
                &conn,
                &record_checkout("ord_a", "ch_1", "https://pay/ch_1", 12)
            ),
            1
        );
        let a = order(&conn, "ord_a");
        assert_eq!(
            (&a["payment_id"], &a["payment_url"], &a["updated_at"]),
            (&json!("ch_1"), &json!("https://pay/ch_1"), &json!(12))
        );
        assert_eq!(exec(&conn, &cancel_unpaid("ord_b", 13)), 1);
        assert_eq!(order(&conn, "ord_b")["status"], "cancelled");
        conn.execute("UPDATE orders SET status = 'paid' WHERE id = 'ord_a'", [])
            .unwrap();
        assert_eq!(
            exec(&conn, &cancel_unpaid("ord_a", 14)),
            0,
            "only a pending order"
        );
        assert_eq!(order(&conn, "ord_a")["status"], "paid");
    }

    #[test]
    fn a_user_reads_only_their_orders_and_operators_page_through_all() {
        let conn = db();
        let (u, other) = (user(&conn), user(&conn));
        let pack = pack();
        for (id, who, at) in [
            ("ord_1", &u, 10),
            ("ord_2", &u, 20),
            ("ord_3", &other, 20),
            ("ord_4", &u, 20),
        ] {
            exec(&conn, &create(id, who, Product::Pack(&pack), at));
        }
        conn.execute("UPDATE orders SET status = 'paid' WHERE id = 'ord_2'", [])
            .unwrap();
        let ids = |s: &Stmt| -> Vec<String> {
            rows(&conn, s)
                .into_iter()
                .map(|r| serde_json::from_value::<OrderRow>(r).unwrap().id)
                .collect()
        };
        assert_eq!(ids(&list_owned(&u, 10)), ["ord_4", "ord_2", "ord_1"]);
        assert_eq!(ids(&list_owned(&u, 1)), ["ord_4"], "bounded");
        assert_eq!(ids(&owned("ord_1", &u)), ["ord_1"]);
        assert!(ids(&owned("ord_3", &u)).is_empty(), "another user's order");
        let row: OrderRow =
            serde_json::from_value(rows(&conn, &owned("ord_1", &u)).remove(0)).unwrap();
        assert_eq!(row.view()["checkout_url"], Value::Null);

        let listed = |status: Option<&str>, user: Option<&UserId>, page: Page| -> Vec<Value> {
            rows(
                &conn,
                &list(
                    status.map(str::to_owned),
                    user.map(ToString::to_string),
                    &page,
                ),
            )
            .into_iter()
            .map(|r| r["id"].clone())
            .collect()
        };
        let first = Page {
            limit: 2,
            before: None,
        };
        assert_eq!(
            listed(None, None, first.clone()),
            [json!("ord_4"), json!("ord_3"), json!("ord_2")]
        );
        let later = Page {
            limit: 2,
            before: Some((20, "ord_3".into())),
        };
        assert_eq!(listed(None, None, later), [json!("ord_2"), json!("ord_1")]);
        assert_eq!(listed(Some("paid"), None, first.clone()), [json!("ord_2")]);
        assert_eq!(listed(None, Some(&other), first), [json!("ord_3")]);
    }

    #[test]
    fn the_current_subscription_is_the_live_one_and_gives_access_within_its_period() {
        let conn = db();
        let u = user(&conn);
        let sub = |id: &str, status: &str, expires_at: i64, created_at: i64| {
            conn.execute(
                "INSERT INTO subscriptions (id, user_id, plan_type, status, expires_at, created_at) VALUES (?1, ?2, 'pro', ?3, ?4, ?5)",
                rusqlite::params![id, u.to_string(), status, expires_at, created_at],
            )
            .unwrap();
        };
        let now = 100;
        let current = || rows(&conn, &current_subscription(&u, now)).pop();
        assert_eq!(current(), None);
        sub("sub_old", "expired", 50, 1);
        sub("sub_cancelled", "cancelled", 150, 2);
        let row = current().unwrap();
        assert_eq!(row["id"], "sub_cancelled");
        assert!(has_access(&row, now) && !has_access(&row, 150));
        sub("sub_live", "active", 90, 3);
        let row = current().unwrap();
        assert_eq!(
            (&row["id"], &row["plan"], &row["current_period_end"]),
            (&json!("sub_live"), &json!("pro"), &json!(90))
        );
        assert!(!has_access(&row, now), "its period has ended");
        assert!(!has_access(
            &json!({"status": "expired", "current_period_end": 500}),
            now
        ));
        assert!(has_access(
            &json!({"status": "past_due", "current_period_end": 500}),
            now
        ));
        let all: Vec<Value> = rows(&conn, &subscriptions_of(&u))
            .into_iter()
            .map(|r| r["id"].clone())
            .collect();
        assert_eq!(
            all,
            [json!("sub_live"), json!("sub_cancelled"), json!("sub_old")]
        );
    }
}
