//! Rate limits, on the real Workers Rate Limiting binding that wrangler dev runs locally: per user
//! for task submissions and orders, per client for failed authentication and webhook signatures.
//! Over a limit: 429 with `Retry-After`, and nothing is written.

use e2e::check::{ensure, eq};
use e2e::stack::{Stack, StackOptions, ADMIN_TOKEN};
use e2e::{creem, tasks};
use libtest_mimic::Failed;
use serde_json::json;

fn submissions_and_orders_per_user(stack: &Stack) -> Result<(), Failed> {
    let c = stack.client();
    let (_, alice) = c.new_user(ADMIN_TOKEN, 100);
    let (_, bob) = c.new_user(ADMIN_TOKEN, 100);
    let submit =
        |t: &str, i: usize| tasks::submit(&c, t, &format!("limit {i} [sim:stuck]"), "kie_4o");
    for i in 0..3 {
        eq(submit(&alice, i).status, 202, "within the limit")?;
    }
    let over = submit(&alice, 3);
    eq(
        (over.status, over.code()),
        (429, "rate_limited".to_owned()),
        "over the limit",
    )?;
    eq(
        over.header("retry-after"),
        Some("60"),
        "says when to come back",
    )?;
    eq(
        c.balance(&alice),
        100 - 3 * 2,
        "the refused submission held nothing",
    )?;
    eq(
        c.get("/api/tasks", Some(&alice)).json()["tasks"]
            .as_array()
            .map(Vec::len),
        Some(3),
        "and created nothing",
    )?;
    eq(submit(&bob, 0).status, 202, "limits are per user")?;
    let order = || {
        c.post_json(
            "/api/orders",
            Some(&alice),
            &json!({"product_id": "pack_starter"}),
        )
        .status
    };
    for _ in 0..2 {
        eq(order(), 201, "order")?;
    }
    eq(order(), 429, "third order in a minute")?;
    eq(
        c.get("/api/orders", Some(&alice)).json()["orders"]
            .as_array()
            .map(Vec::len),
        Some(2),
        "no order written",
    )?;
    Ok(())
}

fn failures_per_client(stack: &Stack) -> Result<(), Failed> {
    let c = stack.client();
    let mut statuses = Vec::new();
    for _ in 0..7 {
        statuses.push(c.get("/api/balance", Some("forged.token.here")).status);
    }
    eq(
        statuses,
        vec![401, 401, 401, 401, 401, 429, 429],
        "bad tokens: 401 until the limit, then 429",
    )?;
    let mut statuses = Vec::new();
    for _ in 0..7 {
        statuses.push(creem::post(&c, &[("creem-signature", "00")], "{}").status);
    }
    eq(
        statuses,
        vec![401, 401, 401, 401, 401, 429, 429],
        "bad signatures: 401 until the limit, then 429",
    )?;
    let stored = c.get("/admin/webhook-events", Some(ADMIN_TOKEN)).json();
    ensure(
        stored["webhook_events"]
            .as_array()
            .is_some_and(Vec::is_empty),
        "nothing stored",
    )?;
    Ok(())
}

fn main() {
    let mut options = StackOptions::default();
    for (name, limit) in [
        ("SUBMIT_LIMIT", 3),
        ("ORDER_LIMIT", 2),
        ("AUTH_FAILURE_LIMIT", 5),
        ("WEBHOOK_FAILURE_LIMIT", 5),
    ] {
        options.rate_limits.insert(name.into(), limit);
    }
    e2e::suite::run(
        options,
        |_| {},
        e2e::cases![submissions_and_orders_per_user, failures_per_client],
    )
}
