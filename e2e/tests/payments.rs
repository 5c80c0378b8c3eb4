//! Payments end to end: orders with a checkout at the (simulated) payment provider, signed
//! Creem webhooks delivered late, twice and out of order (signed the ways the official SDK
//! accepts), subscriptions across periods, what was paid checked against the order, partial and
//! full refunds, forged deliveries, and concurrent submissions against a balance.

use e2e::check::{ensure, eq, Check};
use e2e::client::{Client, Reply};
use e2e::creem::{self, envelope};
use e2e::stack::{
    Stack, StackOptions, ADMIN_TOKEN, CREEM_OLD_SECRET, CREEM_WEBHOOK_SECRET,
    STANDARD_WEBHOOK_SECRET,
};
use e2e::{now_secs, tasks};
use libtest_mimic::Failed;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const DAY: i64 = 86_400;

fn iso(t: i64) -> String {
    shared::ids::iso8601(t)
}

/// Delivers an event signed with the current secret; it must be acknowledged.
fn delivered(c: &Client, event: &Value, what: &str) -> Check {
    eq(
        creem::deliver(c, event, CREEM_WEBHOOK_SECRET).status,
        200,
        what,
    )
}

/// An order through the API, and the checkout the simulated provider made for it.
fn order(stack: &Stack, token: &str, product: &str) -> Result<(String, String), String> {
    let c = stack.client();
    let r = c.post_json("/api/orders", Some(token), &json!({"product_id": product}));
    if r.status != 201 {
        return Err(format!("create order: {} {}", r.status, r.text()));
    }
    let order_id = r.json()["order_id"].as_str().unwrap_or_default().to_owned();
    ensure(
        r.json()["checkout_url"]
            .as_str()
            .is_some_and(|u| u.contains("/checkout/ch_")),
        "a checkout url",
    )?;
    let checkout = stack
        .sim
        .stats()
        .checkouts
        .get(&order_id)
        .cloned()
        .ok_or("the provider got the checkout")?;
    eq(
        checkout["body"]["request_id"].as_str(),
        Some(order_id.as_str()),
        "request id is the order id",
    )?;
    Ok((
        order_id,
        checkout["id"].as_str().unwrap_or_default().to_owned(),
    ))
}

/// An order's status, as its owner reads it.
fn order_status(c: &Client, token: &str, order: &str) -> Value {
    c.get(&format!("/api/orders/{order}"), Some(token)).json()["status"].clone()
}

/// Every checkout this suite asked Creem for was one Creem accepts: the strict simulator checks
/// `POST /v1/checkouts` against the documented create-checkout request (what
/// `api-worker/src/orders.rs` sends) and refused none.
fn no_checkout_refused(stack: &Stack) -> Check {
    let refused: Vec<(String, String)> = stack
        .sim
        .stats()
        .refused
        .into_iter()
        .filter(|(path, _)| path == "/v1/checkouts")
        .collect();
    ensure(
        refused.is_empty(),
        format!("Creem would refuse our checkouts: {refused:?}"),
    )
}

/// What Creem charges for a product (minor units, USD), as the seeded catalogue sells it and the
/// orders record it: a checkout pays exactly this.
fn price(product: &str) -> i64 {
    match product {
        "prod_pack_large" | "prod_pro_monthly" => 1999,
        "prod_basic_monthly" => 999,
        "prod_premium_yearly" => 19900,
        _ => 499, // prod_pack_starter, and the catalogue test's prod_e2e_terms
    }
}

fn checkout_completed(
    event_id: &str,
    order_id: &str,
    checkout: &str,
    product: &str,
    user: &str,
    sub: Option<Value>,
    at_ms: i64,
) -> Value {
    let mut object = json!({
        "object": "checkout", "id": checkout, "request_id": order_id, "status": "completed",
        "order": {"object": "order", "id": format!("or_{checkout}"), "transaction": format!("tran_{checkout}"),
                  "amount": price(product), "currency": "USD", "status": "paid", "type": if sub.is_some() { "recurring" } else { "onetime" }},
        "product": {"id": product, "billing_type": if sub.is_some() { "recurring" } else { "onetime" }},
        "customer": {"id": "cust_1", "email": "buyer@e2e.test"},
        "metadata": {"order_id": order_id, "user_id": user},
    });
    if let Some(s) = sub {
        object["subscription"] = s;
    }
    envelope(event_id, "checkout.completed", at_ms, object)
}

fn subscription(sub: &str, product: &str, user: &str, status: &str, period: (i64, i64)) -> Value {
    json!({"object": "subscription", "id": sub, "product": {"id": product}, "status": status,
           "current_period_start_date": iso(period.0), "current_period_end_date": iso(period.1),
           "customer": {"id": "cust_1"}, "metadata": {"user_id": user}})
}

/// The subscription a plan's `checkout.completed` nests, as Creem documents it: no period dates.
fn nested_subscription(sub: &str, product: &str, user: &str) -> Value {
    json!({"object": "subscription", "id": sub, "product": product, "status": "active",
           "customer": "cust_1", "metadata": {"user_id": user}})
}

/// `subscription.paid` for the payment `tx` (Creem order `provider_order`) of `period`.
fn paid_subscription(
    sub: &str,
    product: &str,
    user: &str,
    tx: &str,
    provider_order: &str,
    period: (i64, i64),
) -> Value {
    let mut s = subscription(sub, product, user, "active", period);
    s["last_transaction_id"] = json!(tx);
    s["last_transaction"] = json!({"object": "transaction", "id": tx, "order": provider_order, "amount": 1999,
        "currency": "USD", "type": "invoice", "status": "paid", "period_start": period.0 * 1000, "period_end": period.1 * 1000});
    s
}

/// Period `n` (0 the first) of a monthly plan whose first period started at `start`.
fn nth_period(start: i64, n: i64) -> (i64, i64) {
    (start + n * 30 * DAY, start + (n + 1) * 30 * DAY)
}

/// The transaction that paid period `n` of the plan ordered as `order_id`: the first period is
/// the checkout's own payment.
fn period_tx(checkout: &str, order_id: &str, n: i64) -> String {
    if n == 0 {
        format!("tran_{checkout}")
    } else {
        format!("tran_{order_id}_{n}")
    }
}

fn wait_for(what: &str, limit: Duration, mut check: impl FnMut() -> bool) -> Result<(), String> {
    let started = Instant::now();
    while !check() {
        if started.elapsed() > limit {
            return Err(format!("timed out waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

fn balance_becomes(c: &Client, token: &str, want: i64) -> Result<(), String> {
    let mut last = 0;
    wait_for(&format!("balance {want}"), Duration::from_secs(30), || {
        last = c.balance(token);
        last == want
    })
    .map_err(|e| format!("{e} (last {last})"))
}

fn buying_a_pack_grants_once(stack: &Stack) -> Result<(), Failed> {
    let c = stack.client();
    let (alice, a_token) = c.new_user(ADMIN_TOKEN, 0);
    let (bob, b_token) = c.new_user(ADMIN_TOKEN, 0);
    let (a_order, a_checkout) = order(stack, &a_token, "pack_starter")?;
    let (b_order, b_checkout) = order(stack, &b_token, "pack_large")?;
    eq(
        order_status(&c, &a_token, &a_order).as_str(),
        Some("pending"),
        "pending until paid",
    )?;
    let t = now_secs() * 1000;
    let a_paid = checkout_completed(
        &format!("evt_a_{a_order}"),
        &a_order,
        &a_checkout,
        "prod_pack_starter",
        &alice,
        None,
        t,
    );
    let b_paid = checkout_completed(
        &format!("evt_b_{b_order}"),
        &b_order,
        &b_checkout,
        "prod_pack_large",
        &bob,
        None,
        t,
    );
    // the same event three times, interleaved with another order's
    for (event, _) in [
        (&a_paid, 0),
        (&b_paid, 0),
        (&a_paid, 1),
        (&b_paid, 1),
        (&a_paid, 2),
    ] {
        let r = creem::deliver(&c, event, CREEM_WEBHOOK_SECRET);
        eq(r.status, 200, &format!("delivery: {}", r.text()))?;
    }
    balance_becomes(&c, &a_token, 50)?;
    balance_becomes(&c, &b_token, 250)?;
    std::thread::sleep(Duration::from_secs(2));
    eq(c.balance(&a_token), 50, "granted once")?;
    eq(
        order_status(&c, &a_token, &a_order).as_str(),
        Some("completed"),
        "order completed",
    )?;
    let listed = c.get("/api/orders", Some(&a_token)).json();
    eq(
        listed["orders"].as_array().map(Vec::len),
        Some(1),
        "alice sees her order only",
    )?;
    eq(
        c.get(&format!("/api/orders/{b_order}"), Some(&a_token))
            .status,
        404,
        "and not bob's",
    )?;
    // a key from the old secret is still accepted during rotation; the repeat changes nothing
    eq(
        creem::deliver(&c, &a_paid, CREEM_OLD_SECRET).json()["duplicate"].as_bool(),
        Some(true),
        "rotated secret, duplicate",
    )?;
    eq(
        c.post_json(
            "/api/orders",
            Some(&a_token),
            &json!({"product_id": "pack_nope"}),
        )
        .code(),
        "unknown_product".into(),
        "unknown product",
    )?;
    no_checkout_refused(stack)?;
    Ok(())
}

fn subscription_lifecycle(stack: &Stack) -> Result<(), Failed> {
    let c = stack.client();
    let (user, token) = c.new_user(ADMIN_TOKEN, 0);
    let (order_id, checkout) = order(stack, &token, "pro_monthly")?;
    let sub_id = format!("sub_{order_id}");
    let start = now_secs() - DAY;
    let period = |n: i64| nth_period(start, n);
    let tx = |n: i64| period_tx(&checkout, &order_id, n);
    let t = now_secs() * 1000;
    let status = |c: &Client| c.get("/api/subscription", Some(&token)).json();
    // the checkout of a plan, as Creem sends it: its subscription carries no period dates
    let first = checkout_completed(
        &format!("evt_s0_{order_id}"),
        &order_id,
        &checkout,
        "prod_pro_monthly",
        &user,
        Some(nested_subscription(&sub_id, "prod_pro_monthly", &user)),
        t,
    );
    delivered(&c, &first, "checkout")?;
    balance_becomes(&c, &token, 300)?;
    wait_for("the order completes", Duration::from_secs(20), || {
        order_status(&c, &token, &order_id) == "completed"
    })?;
    let s = status(&c);
    eq(
        s["subscription"]["status"].as_str(),
        Some("active"),
        "active",
    )?;
    eq(s["subscription"]["plan"].as_str(), Some("pro"), "plan")?;
    // the first period's own subscription.paid names the checkout's payment: nothing twice
    for n in 0..=2 {
        let paid = envelope(
            &format!("evt_s{n}p_{order_id}"),
            "subscription.paid",
            t + n * 1000 + 500,
            paid_subscription(
                &sub_id,
                "prod_pro_monthly",
                &user,
                &tx(n),
                &format!("or_{order_id}_{n}"),
                period(n),
            ),
        );
        delivered(&c, &paid, "period paid")?;
        balance_becomes(&c, &token, 300 * (n + 1))?;
        wait_for("the period is extended", Duration::from_secs(20), || {
            status(&c)["subscription"]["current_period_end"].as_i64() == Some(period(n).1)
        })?;
    }
    eq(status(&c)["access"].as_bool(), Some(true), "access")?;
    // the same payment reported again with a start date one second off grants nothing
    let mut skewed = paid_subscription(
        &sub_id,
        "prod_pro_monthly",
        &user,
        &tx(2),
        "or_x",
        (period(2).0 + 1, period(2).1),
    );
    skewed["id"] = json!(sub_id);
    let again = envelope(
        &format!("evt_s2b_{order_id}"),
        "subscription.paid",
        t + 2600,
        skewed,
    );
    delivered(&c, &again, "same payment again")?;
    // refunding the second renewal takes back that period, not the first order's
    let refund = envelope(
        &format!("evt_s2r_{order_id}"),
        "refund.created",
        t + 2800,
        json!({"object": "refund", "id": format!("re_{order_id}"), "status": "succeeded", "refund_amount": 1999,
               "refund_currency": "USD", "reason": "requested_by_customer", "subscription": sub_id,
               "transaction": {"object": "transaction", "id": tx(2), "order": format!("or_{order_id}_2"), "amount": 1999,
                               "currency": "USD", "type": "invoice", "status": "refunded"},
               "order": format!("or_{order_id}_2")}),
    );
    delivered(&c, &refund, "renewal refunded")?;
    balance_becomes(&c, &token, 600)?;
    eq(
        order_status(&c, &token, &order_id).as_str(),
        Some("completed"),
        "the first order is not the refunded payment",
    )?;
    let canceled = envelope(
        &format!("evt_s3_{order_id}"),
        "subscription.canceled",
        t + 3000,
        subscription(&sub_id, "prod_pro_monthly", &user, "canceled", period(2)),
    );
    delivered(&c, &canceled, "cancel")?;
    wait_for("cancelled", Duration::from_secs(20), || {
        status(&c)["subscription"]["status"] == "cancelled"
    })?;
    eq(
        status(&c)["access"].as_bool(),
        Some(true),
        "access kept to the period end",
    )?;
    eq(
        c.balance(&token),
        600,
        "three periods granted once each, one refunded",
    )?;
    let expired = envelope(
        &format!("evt_s4_{order_id}"),
        "subscription.expired",
        t + 4000,
        subscription(&sub_id, "prod_pro_monthly", &user, "expired", period(2)),
    );
    delivered(&c, &expired, "expire")?;
    wait_for("expired", Duration::from_secs(20), || {
        status(&c)["subscription"]["status"] == "expired"
    })?;
    eq(
        status(&c)["access"].as_bool(),
        Some(false),
        "no access once expired",
    )?;
    no_checkout_refused(stack)?;
    Ok(())
}

/// An event whose subject is not known yet is never lost: it waits, is dead-lettered while
/// still `received`, and is applied when the provider redelivers it or an operator replays it.
fn events_waiting_for_their_subject_are_never_lost(stack: &Stack) -> Result<(), Failed> {
    let c = stack.client();
    let (user, token) = c.new_user(ADMIN_TOKEN, 0);
    let (order_id, checkout) = order(stack, &token, "basic_monthly")?;
    let sub_id = format!("sub_w_{order_id}");
    let start = now_secs() - DAY;
    let t = now_secs() * 1000;
    // a renewal paid before we know the subscription (its checkout has not arrived)
    let renewal = envelope(
        &format!("evt_w1_{order_id}"),
        "subscription.paid",
        t + 1000,
        paid_subscription(
            &sub_id,
            "prod_basic_monthly",
            &user,
            &format!("tran_w_{order_id}"),
            "or_w",
            (start + 30 * DAY, start + 60 * DAY),
        ),
    );
    delivered(&c, &renewal, "renewal")?;
    let dead = |c: &Client| {
        c.get(
            "/admin/dead-letters?queue=edgeline-events&error_class=unresolved_reference",
            Some(ADMIN_TOKEN),
        )
        .json()["dead_letters"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .find(|d| {
                d["body"].as_str().unwrap_or_default().contains("whe_")
                    || d["message_type"] == "webhook.apply"
            })
    };
    wait_for(
        "the waiting event is dead-lettered",
        Duration::from_secs(60),
        || {
            stored_event(&c, &format!("evt_w1_{order_id}"))
                .is_some_and(|e| e["error"].as_str().is_some_and(|m| m.contains("gave up")))
        },
    )?;
    eq(
        stored_event(&c, &format!("evt_w1_{order_id}")).map(|e| e["status"].clone()),
        Some(json!("received")),
        "still received: nothing marked done that was not done",
    )?;
    ensure(dead(&c).is_some(), "an operator sees the dead letter")?;
    // the subscription becomes known
    let first = checkout_completed(
        &format!("evt_w0_{order_id}"),
        &order_id,
        &checkout,
        "prod_basic_monthly",
        &user,
        Some(nested_subscription(&sub_id, "prod_basic_monthly", &user)),
        t,
    );
    delivered(&c, &first, "checkout")?;
    balance_becomes(&c, &token, 100)?;
    // the provider's own redelivery is queued again, not answered "done"
    delivered(&c, &renewal, "redelivery")?;
    balance_becomes(&c, &token, 200)?;
    wait_for("applied", Duration::from_secs(20), || {
        stored_event(&c, &format!("evt_w1_{order_id}")).is_some_and(|e| e["status"] == "applied")
    })?;
    // replaying the dead letter now changes nothing
    if let Some(d) = dead(&c) {
        let id = d["id"].as_str().unwrap_or_default();
        let r = c.post_json(
            &format!("/admin/dead-letters/{id}/replay?force=true"),
            Some(ADMIN_TOKEN),
            &json!({}),
        );
        ensure(r.status < 300, format!("replay: {}", r.text()))?;
    }
    std::thread::sleep(Duration::from_secs(3));
    eq(c.balance(&token), 200, "granted once")?;
    no_checkout_refused(stack)?;
    Ok(())
}

fn forged_deliveries_store_nothing(stack: &Stack) -> Result<(), Failed> {
    let c = stack.client();
    let event = envelope(
        "evt_forged_1",
        "checkout.completed",
        now_secs() * 1000,
        json!({"object": "checkout", "id": "ch_x", "request_id": "ord_x"}),
    );
    let body = event.to_string();
    let good = shared::signing::hmac_hex(CREEM_WEBHOOK_SECRET.as_bytes(), body.as_bytes());
    let cases = [
        (
            "forged signature",
            creem::post(&c, &[("creem-signature", &"ab".repeat(32))], &body),
        ),
        (
            "body modified after signing",
            creem::post(
                &c,
                &[("creem-signature", &good)],
                &body.replace("ord_x", "ord_y"),
            ),
        ),
        (
            "another secret",
            creem::post(
                &c,
                &[(
                    "creem-signature",
                    &shared::signing::hmac_hex(b"not-ours", body.as_bytes()),
                )],
                &body,
            ),
        ),
        ("missing header", creem::post(&c, &[], &body)),
    ];
    for (what, r) in cases {
        eq(r.status, 401, what)?;
        eq(r.code(), "unauthorized".into(), what)?;
    }
    // Standard Webhooks: a fresh signature passes, a stale one does not
    let sign = |id: &str, ts: i64, body: &str| {
        use base64::Engine;
        let key = base64::engine::general_purpose::STANDARD
            .decode(STANDARD_WEBHOOK_SECRET.trim_start_matches("whsec_"))
            .unwrap_or_default();
        let mac = shared::signing::hmac_hex(&key, format!("{id}.{ts}.{body}").as_bytes());
        let raw = (0..mac.len())
            .step_by(2)
            .filter_map(|i| u8::from_str_radix(&mac[i..i + 2], 16).ok())
            .collect::<Vec<u8>>();
        format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    };
    let stale_ts = now_secs() - 3600;
    let stale = creem::post(
        &c,
        &[
            ("webhook-id", "msg_stale"),
            ("webhook-timestamp", &stale_ts.to_string()),
            ("webhook-signature", &sign("msg_stale", stale_ts, &body)),
        ],
        &body,
    );
    eq(stale.status, 401, "stale standard-webhooks timestamp")?;
    let ts = now_secs();
    let fresh = creem::post(
        &c,
        &[
            ("webhook-id", "msg_fresh_1"),
            ("webhook-timestamp", &ts.to_string()),
            ("webhook-signature", &sign("msg_fresh_1", ts, &body)),
        ],
        &body,
    );
    eq(
        fresh.status,
        200,
        &format!("a valid standard-webhooks delivery: {}", fresh.text()),
    )?;

    let stored = c
        .get("/admin/webhook-events?limit=200", Some(ADMIN_TOKEN))
        .json();
    let ids: Vec<String> = stored["webhook_events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|e| e["event_id"].as_str().map(str::to_owned))
        .collect();
    ensure(
        !ids.iter().any(|i| i == "evt_forged_1" || i == "msg_stale"),
        format!("nothing forged stored: {ids:?}"),
    )?;
    ensure(
        ids.iter().any(|i| i == "msg_fresh_1"),
        "the valid delivery was stored",
    )?;

    // signed but unreadable: stored as rejected, acknowledged, visible to operators
    let garbage = "{not json";
    let r = creem::post(
        &c,
        &[(
            "creem-signature",
            &shared::signing::hmac_hex(CREEM_WEBHOOK_SECRET.as_bytes(), garbage.as_bytes()),
        )],
        garbage,
    );
    eq(
        (r.status, r.json()["accepted"].as_bool()),
        (200, Some(false)),
        "acknowledged, not accepted",
    )?;
    let rejected = c
        .get("/admin/webhook-events?status=rejected", Some(ADMIN_TOKEN))
        .json();
    ensure(
        rejected["webhook_events"].as_array().is_some_and(|a| {
            a.iter().any(|e| {
                e["error"]
                    .as_str()
                    .is_some_and(|m| m.contains("not valid JSON"))
            })
        }),
        "rejected body visible",
    )?;
    // an event type we do not handle is stored and acknowledged; a dispute is recorded
    let unknown = envelope(
        "evt_unknown_1",
        "payout.sent",
        now_secs() * 1000,
        json!({"object": "payout", "id": "po_1"}),
    );
    delivered(&c, &unknown, "unknown type acknowledged")?;
    let dispute = envelope(
        "evt_dispute_1",
        "dispute.created",
        now_secs() * 1000,
        json!({"object": "dispute", "id": "dp_1", "order": {"id": "or_unknown"}}),
    );
    delivered(&c, &dispute, "dispute acknowledged")?;
    wait_for(
        "the unknown event is settled",
        Duration::from_secs(20),
        || stored_event(&c, "evt_unknown_1").is_some_and(|e| e["status"] == "ignored"),
    )?;
    wait_for("the dispute is recorded", Duration::from_secs(20), || {
        stored_event(&c, "evt_dispute_1").is_some_and(|e| {
            e["status"] == "applied" && e["error"].as_str().is_some_and(|n| n.contains("dispute"))
        })
    })?;
    let big = "x".repeat(300 * 1024);
    eq(
        creem::post(&c, &[("creem-signature", &good)], &big).status,
        413,
        "oversized body",
    )?;
    Ok(())
}

fn refund_after_spending_goes_negative(stack: &Stack) -> Result<(), Failed> {
    let c = stack.client();
    let (user, token) = c.new_user(ADMIN_TOKEN, 0);
    let (order_id, checkout) = order(stack, &token, "pack_starter")?;
    delivered(
        &c,
        &checkout_completed(
            &format!("evt_r_{order_id}"),
            &order_id,
            &checkout,
            "prod_pack_starter",
            &user,
            None,
            now_secs() * 1000,
        ),
        "paid",
    )?;
    balance_becomes(&c, &token, 50)?;
    for i in 0..3 {
        let r = tasks::submit(&c, &token, &format!("spend {i}"), "kie_4o");
        eq(r.status, 202, "spend")?;
        c.wait_task(
            &token,
            r.json()["id"].as_str().unwrap_or_default(),
            Duration::from_secs(60),
        );
    }
    eq(c.balance(&token), 44, "spent 6")?;
    let refund = envelope(
        &format!("evt_refund_{order_id}"),
        "refund.created",
        now_secs() * 1000,
        json!({"object": "refund", "id": "re_1", "status": "succeeded", "refund_amount": 499, "refund_currency": "USD",
               "order": format!("or_{checkout}"), "checkout": checkout,
               "transaction": {"object": "transaction", "id": format!("tran_{checkout}"), "order": format!("or_{checkout}"),
                               "amount": 499, "currency": "USD", "type": "payment", "status": "refunded"}}),
    );
    delivered(&c, &refund, "refund")?;
    balance_becomes(&c, &token, -6)?;
    eq(
        order_status(&c, &token, &order_id).as_str(),
        Some("refunded"),
        "order refunded",
    )?;
    let r = tasks::submit(&c, &token, "on credit", "kie_4o");
    eq(r.status, 402, "no tasks on a negative balance")?;
    delivered(&c, &refund, "refund again")?;
    std::thread::sleep(Duration::from_secs(2));
    eq(c.balance(&token), -6, "clawed back once")?;
    let (again, checkout2) = order(stack, &token, "pack_starter")?;
    delivered(
        &c,
        &checkout_completed(
            &format!("evt_r2_{again}"),
            &again,
            &checkout2,
            "prod_pack_starter",
            &user,
            None,
            now_secs() * 1000,
        ),
        "paid again",
    )?;
    balance_becomes(&c, &token, 44)?;
    eq(
        tasks::submit(&c, &token, "service restored", "kie_4o").status,
        202,
        "a new purchase restores service",
    )?;
    no_checkout_refused(stack)?;
    Ok(())
}

fn out_of_order_ends_in_the_same_state(stack: &Stack) -> Result<(), Failed> {
    let c = stack.client();
    let start = now_secs() - DAY;
    let period = |n: i64| nth_period(start, n);
    let t = now_secs() * 1000;
    let run = |order_of_delivery: &[usize]| -> Result<(Value, i64), String> {
        let (user, token) = c.new_user(ADMIN_TOKEN, 0);
        let (order_id, checkout) = order(stack, &token, "basic_monthly")?;
        let sub = format!("sub_{order_id}");
        let p = "prod_basic_monthly";
        let tx = |n: i64| period_tx(&checkout, &order_id, n);
        let paid = |id: &str, at: i64, n: i64, skew: i64| {
            let (s0, s1) = period(n);
            envelope(
                id,
                "subscription.paid",
                at,
                paid_subscription(&sub, p, &user, &tx(n), &format!("or_{n}"), (s0 + skew, s1)),
            )
        };
        let events = [
            checkout_completed(
                &format!("e0_{order_id}"),
                &order_id,
                &checkout,
                p,
                &user,
                Some(nested_subscription(&sub, p, &user)),
                t,
            ),
            paid(&format!("e1_{order_id}"), t + 1000, 1, 0),
            paid(&format!("e2_{order_id}"), t + 2000, 2, 0),
            // the same payment again, its period start a second off: granted once all the same
            paid(&format!("e2b_{order_id}"), t + 2100, 2, 1),
            envelope(
                &format!("e3_{order_id}"),
                "subscription.canceled",
                t + 3000,
                subscription(&sub, p, &user, "canceled", period(2)),
            ),
            // the same millisecond as the cancellation: the tie goes to the event id, not to
            // arrival order ("e4" > "e3")
            envelope(
                &format!("e4_{order_id}"),
                "subscription.expired",
                t + 3000,
                subscription(&sub, p, &user, "expired", period(2)),
            ),
        ];
        // Creem copies the checkout's metadata onto the subscription: every event names our
        // order, so one that arrives before the checkout is applied from the order's terms
        let mut events = events;
        for e in events.iter_mut().skip(1) {
            e["object"]["metadata"]["order_id"] = json!(order_id);
        }
        for &i in order_of_delivery {
            let r = creem::deliver(&c, &events[i], CREEM_WEBHOOK_SECRET);
            if r.status != 200 {
                return Err(format!("delivery {i}: {}", r.text()));
            }
        }
        balance_becomes(&c, &token, 300)?;
        wait_for("expired", Duration::from_secs(30), || {
            c.get("/api/subscription", Some(&token)).json()["subscription"]["status"] == "expired"
        })?;
        wait_for("every event applied", Duration::from_secs(30), || {
            c.get("/admin/webhook-events?limit=200", Some(ADMIN_TOKEN))
                .json()["webhook_events"]
                .as_array()
                .is_some_and(|a| {
                    a.iter()
                        .filter(|e| {
                            e["event_id"]
                                .as_str()
                                .is_some_and(|i| i.ends_with(order_id.as_str()))
                        })
                        .all(|e| e["status"] == "applied")
                })
        })?;
        let mut s = c.get("/api/subscription", Some(&token)).json()["subscription"].clone();
        // everything but the ids derived from this run's user is compared, times included
        for k in ["id", "provider_subscription_id"] {
            s.as_object_mut().map(|o| o.remove(k));
        }
        Ok((s, c.balance(&token)))
    };
    let in_order = run(&[0, 1, 2, 3, 4, 5])?;
    for shuffled in [[5, 2, 0, 4, 3, 1], [4, 1, 5, 0, 3, 2], [3, 5, 1, 4, 2, 0]] {
        let got = run(&shuffled)?;
        eq(
            got.clone(),
            in_order.clone(),
            &format!("delivered as {shuffled:?}"),
        )?;
    }
    eq(in_order.1, 300, "three periods of basic")?;
    eq(
        in_order.0["status"].as_str(),
        Some("expired"),
        "the tie went to the event id",
    )?;
    no_checkout_refused(stack)?;
    Ok(())
}

fn concurrent_submissions_never_overdraw(stack: &Stack) -> Result<(), Failed> {
    let c = stack.client();
    let (_, token) = c.new_user(ADMIN_TOKEN, 20);
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..50)
            .map(|i| {
                let token = token.clone();
                let base = c.base.clone();
                s.spawn(move || {
                    tasks::submit(
                        &Client::new(&base),
                        &token,
                        &format!("race {i} [sim:stuck]"),
                        "kie_4o",
                    )
                    .status
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0)).collect()
    });
    eq(
        statuses.iter().filter(|&&s| s == 202).count(),
        10,
        &format!("exactly 10 accepted: {statuses:?}"),
    )?;
    eq(
        statuses.iter().filter(|&&s| s == 402).count(),
        40,
        "the rest refused",
    )?;
    eq(c.balance(&token), 0, "never below zero")?;
    Ok(())
}

/// The operator who changes the catalogue in `operators_change_the_catalogue_and_orders_keep_their_terms`.
const CATALOG_ACTOR: &str = "ops.e2e-catalog";
/// The operator whose invalid changes must leave no trace.
const INVALID_ACTOR: &str = "ops.e2e-invalid";

/// `PUT /admin/catalog` as operator `actor`.
fn put_catalog(c: &Client, actor: &str, catalog: &Value, expected_version: i64) -> Reply {
    let body = json!({"catalog": catalog, "expected_version": expected_version}).to_string();
    c.send(
        "PUT",
        "/admin/catalog",
        Some(ADMIN_TOKEN),
        &[("x-actor", actor)],
        Some(("application/json", body.as_bytes())),
    )
}

/// The stored catalogue and its version, as operators read it.
fn stored_catalog(c: &Client) -> Result<(Value, i64), String> {
    let r = c.get("/admin/catalog", Some(ADMIN_TOKEN));
    eq(r.status, 200, &format!("GET /admin/catalog: {}", r.text()))?;
    let v = r.json();
    let version = v["version"].as_i64().ok_or("a version")?;
    Ok((v, version))
}

/// The product with `id` in a list of products.
fn product<'a>(products: &'a Value, id: &str) -> Option<&'a Value> {
    products
        .as_array()?
        .iter()
        .find(|p| p["id"].as_str() == Some(id))
}

fn the_public_catalogue_hides_provider_ids(stack: &Stack) -> Result<(), Failed> {
    let c = stack.client();
    let r = c.get("/api/catalog", None);
    eq(r.status, 200, &format!("public, no token: {}", r.text()))?;
    let v = r.json();
    ensure(
        v["version"].as_i64().is_some_and(|n| n >= 1),
        format!("a version: {v}"),
    )?;
    let products = &v["products"];
    let starter = product(products, "pack_starter").ok_or("pack_starter is listed")?;
    eq(
        (
            starter["kind"].as_str(),
            starter["price"].as_i64(),
            starter["currency"].as_str(),
            starter["credits"].as_i64(),
            starter["expires_in_days"].as_i64(),
        ),
        (Some("pack"), Some(499), Some("USD"), Some(50), Some(365)),
        "a pack's terms",
    )?;
    let large = product(products, "pack_large").ok_or("pack_large is listed")?;
    ensure(
        large["expires_in_days"].is_null(),
        "a permanent pack has no expiry",
    )?;
    let pro = product(products, "pro_monthly").ok_or("pro_monthly is listed")?;
    eq(
        (
            pro["kind"].as_str(),
            pro["price"].as_i64(),
            pro["credits_per_period"].as_i64(),
            pro["plan"].as_str(),
            pro["cycle"].as_str(),
        ),
        (
            Some("plan"),
            Some(1999),
            Some(300),
            Some("pro"),
            Some("monthly"),
        ),
        "a plan's terms",
    )?;
    ensure(
        !r.text().contains("creem"),
        format!("no provider product ids: {}", r.text()),
    )?;
    // operators see the stored catalogue, provider ids included; users may not
    let (admin, _) = stored_catalog(&c)?;
    ensure(
        admin["catalog"]["packs"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p["creem_product_id"].is_string())),
        "operators see provider ids",
    )?;
    let (_, token) = c.new_user(ADMIN_TOKEN, 0);
    eq(
        c.get("/admin/catalog", Some(&token)).status,
        403,
        "a user's token on the admin view",
    )?;
    Ok(())
}

/// An operator adds a pack, an order is made, the operator changes the pack's credits: a new
/// order gets the new credits, the earlier order keeps (and, once paid, grants) the old ones.
/// A change against a version that has moved on is refused.
fn operators_change_the_catalogue_and_orders_keep_their_terms(stack: &Stack) -> Result<(), Failed> {
    let c = stack.client();
    let pack_id = "pack_e2e_terms";
    let set_pack = |catalog: &mut Value, credits: i64| {
        let pack = json!({"id": pack_id, "creem_product_id": "prod_e2e_terms", "price": 499,
                          "currency": "USD", "credits": credits, "expires_in_days": 30});
        if let Some(packs) = catalog["packs"].as_array_mut() {
            packs.retain(|p| p["id"].as_str() != Some(pack_id));
            packs.push(pack);
        }
    };
    let (admin, v0) = stored_catalog(&c)?;
    let mut catalog = admin["catalog"].clone();
    set_pack(&mut catalog, 10);
    let added = put_catalog(&c, CATALOG_ACTOR, &catalog, v0);
    eq(added.status, 200, &format!("pack added: {}", added.text()))?;
    eq(
        added.json()["version"].as_i64(),
        Some(v0 + 1),
        "version bumped",
    )?;
    let listed = c.get("/api/catalog", None).json();
    eq(
        product(&listed["products"], pack_id).and_then(|p| p["credits"].as_i64()),
        Some(10),
        "users see the new pack",
    )?;

    let (user, token) = c.new_user(ADMIN_TOKEN, 0);
    let (before, before_checkout) = order(stack, &token, pack_id)?;
    let terms = |id: &str| {
        let o = c.get(&format!("/api/orders/{id}"), Some(&token)).json();
        (o["credits"].as_i64(), o["amount"].as_i64())
    };
    eq(
        terms(&before),
        (Some(10), Some(499)),
        "the first order's terms",
    )?;

    set_pack(&mut catalog, 25);
    let changed = put_catalog(&c, CATALOG_ACTOR, &catalog, v0 + 1);
    eq(
        changed.status,
        200,
        &format!("credits changed: {}", changed.text()),
    )?;
    eq(
        (
            changed.json()["version"].as_i64(),
            changed.json()["updated_by"].as_str(),
        ),
        (Some(v0 + 2), Some(CATALOG_ACTOR)),
        "the change answers with its version and actor",
    )?;
    let (shown, version) = stored_catalog(&c)?;
    eq(version, v0 + 2, "stored version")?;
    eq(
        shown["updated_by"].as_str(),
        Some(CATALOG_ACTOR),
        "the change is recorded with the X-Actor who made it",
    )?;
    eq(
        product(&shown["catalog"]["packs"], pack_id).and_then(|p| p["credits"].as_i64()),
        Some(25),
        "stored credits",
    )?;

    let created = c.post_json("/api/orders", Some(&token), &json!({"product_id": pack_id}));
    eq(
        created.status,
        201,
        &format!("second order: {}", created.text()),
    )?;
    eq(
        created.json()["credits"].as_i64(),
        Some(25),
        "a new order gets the new credits",
    )?;
    let after = created.json()["order_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    eq(terms(&after), (Some(25), Some(499)), "the new order's row")?;
    eq(
        terms(&before),
        (Some(10), Some(499)),
        "the earlier order keeps its terms",
    )?;

    // two operators at once: the one who read version v0 + 1 does not overwrite the change
    set_pack(&mut catalog, 99);
    let stale = put_catalog(&c, "ops.e2e-late", &catalog, v0 + 1);
    eq(
        (stale.status, stale.code()),
        (409, "version_conflict".to_owned()),
        &format!("stale version: {}", stale.text()),
    )?;
    let (shown, version) = stored_catalog(&c)?;
    eq(
        (version, shown["updated_by"].as_str()),
        (v0 + 2, Some(CATALOG_ACTOR)),
        "the stale write changed nothing",
    )?;
    eq(
        product(&shown["catalog"]["packs"], pack_id).and_then(|p| p["credits"].as_i64()),
        Some(25),
        "credits kept",
    )?;

    // paying the earlier order grants what it was sold with, not what the catalogue says now
    let paid = checkout_completed(
        &format!("evt_terms_{before}"),
        &before,
        &before_checkout,
        "prod_e2e_terms",
        &user,
        None,
        now_secs() * 1000,
    );
    delivered(&c, &paid, "payment delivered")?;
    balance_becomes(&c, &token, 10)?;
    no_checkout_refused(stack)?;
    Ok(())
}

/// Catalogues that do not parse, break a bound or are not catalogues at all are 4xx JSON errors
/// naming the problem, and nothing is stored.
fn invalid_catalogues_are_refused_and_change_nothing(stack: &Stack) -> Result<(), Failed> {
    let c = stack.client();
    let (before, version) = stored_catalog(&c)?;
    let good = before["catalog"].clone();
    let with_starter = |key: &str, value: Value| {
        let mut cat = good.clone();
        if let Some(p) = cat["packs"]
            .as_array_mut()
            .and_then(|ps| ps.iter_mut().find(|p| p["id"] == "pack_starter"))
        {
            p[key] = value;
        }
        cat
    };
    for (what, catalog, says) in [
        (
            "zero credits",
            with_starter("credits", json!(0)),
            "credits must be positive",
        ),
        (
            "a lower-case currency",
            with_starter("currency", json!("usd")),
            "currency",
        ),
        (
            "an unknown field",
            with_starter("colour", json!("red")),
            "unknown field",
        ),
        (
            "a price past the bound",
            with_starter("price", json!(1_000_000_000_000_i64)),
            "price",
        ),
        (
            "not a catalogue",
            json!({"packs": "none", "plans": []}),
            "not a valid catalogue",
        ),
    ] {
        let r = put_catalog(&c, INVALID_ACTOR, &catalog, version);
        eq(
            (r.status, r.code()),
            (422, "invalid_catalog".to_owned()),
            &format!("{what}: {}", r.text()),
        )?;
        eq(
            r.json()["error"]["field"].as_str(),
            Some("catalog"),
            &format!("{what}: names the field"),
        )?;
        ensure(
            r.json()["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(says)),
            format!("{what}: says {says:?}: {}", r.text()),
        )?;
    }
    // bodies that are not a change at all
    let missing_version = c.send(
        "PUT",
        "/admin/catalog",
        Some(ADMIN_TOKEN),
        &[("x-actor", INVALID_ACTOR)],
        Some((
            "application/json",
            json!({"catalog": good}).to_string().as_bytes(),
        )),
    );
    eq(
        (
            missing_version.status,
            missing_version.json()["error"]["field"].as_str(),
        ),
        (422, Some("expected_version")),
        &format!("no expected_version: {}", missing_version.text()),
    )?;
    let not_json = c.send(
        "PUT",
        "/admin/catalog",
        Some(ADMIN_TOKEN),
        &[("x-actor", INVALID_ACTOR)],
        Some(("application/json", b"{\"catalog\": ")),
    );
    eq(
        (not_json.status, not_json.code()),
        (400, "invalid_json".to_owned()),
        "unreadable body",
    )?;
    let (_, user_token) = c.new_user(ADMIN_TOKEN, 0);
    let by_user = c.send(
        "PUT",
        "/admin/catalog",
        Some(&user_token),
        &[],
        Some((
            "application/json",
            json!({"catalog": good, "expected_version": version})
                .to_string()
                .as_bytes(),
        )),
    );
    eq(by_user.status, 403, "a user cannot change the catalogue")?;

    let (after, after_version) = stored_catalog(&c)?;
    ensure(
        after["updated_by"].as_str() != Some(INVALID_ACTOR),
        "no refused change was stored",
    )?;
    // another case may change the catalogue meanwhile, but only as its own operator
    ensure(
        after_version == version || after["updated_by"].as_str() == Some(CATALOG_ACTOR),
        format!("version {version} -> {after_version}: {after}"),
    )?;
    eq(
        product(&after["catalog"]["packs"], "pack_starter").cloned(),
        product(&good["packs"], "pack_starter").cloned(),
        "pack_starter unchanged",
    )?;
    eq(
        product(
            &c.get("/api/catalog", None).json()["products"],
            "pack_starter",
        )
        .and_then(|p| p["credits"].as_i64()),
        Some(50),
        "users see the old terms",
    )?;
    Ok(())
}

/// Every operator change to users, sessions and grants is in the audit trail, naming the actor.
fn admin_writes_to_users_sessions_and_grants_are_audited(stack: &Stack) -> Result<(), Failed> {
    let c = stack.client();
    let actor = "ops.e2e-audit";
    let post = |path: &str, body: Value| {
        c.send(
            "POST",
            path,
            Some(ADMIN_TOKEN),
            &[("x-actor", actor)],
            Some(("application/json", body.to_string().as_bytes())),
        )
    };
    let created = post(
        "/admin/users",
        json!({"email": format!("audited-{}@e2e.test", now_secs()), "name": "Audited", "credits": 5}),
    );
    eq(created.status, 201, &created.text())?;
    let user = created.json()["id"].as_str().unwrap_or_default().to_owned();
    eq(
        post(&format!("/admin/users/{user}/sessions"), json!({})).status,
        201,
        "session",
    )?;
    let granted = post(
        &format!("/admin/users/{user}/grants"),
        json!({"credits": 7, "reference": "goodwill-1"}),
    );
    eq(granted.status, 201, &granted.text())?;
    // a repeated reference grants nothing and records nothing
    eq(
        post(
            &format!("/admin/users/{user}/grants"),
            json!({"credits": 7, "reference": "goodwill-1"}),
        )
        .status,
        409,
        "a grant once per reference",
    )?;
    let log = c.get(
        &format!("/admin/audit-log?target={user}"),
        Some(ADMIN_TOKEN),
    );
    eq(log.status, 200, &log.text())?;
    let entries = log.json()["entries"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut actions: Vec<String> = entries
        .iter()
        .filter(|e| e["actor"] == actor)
        .filter_map(|e| e["action"].as_str().map(str::to_owned))
        .collect();
    actions.sort();
    eq(
        actions,
        vec![
            "grant.create".to_owned(),
            "session.open".into(),
            "user.create".into(),
        ],
        &format!("one row per change: {entries:?}"),
    )?;
    Ok(())
}

/// The signature forms the official `creem` SDK accepts are accepted: `x-creem-signature` as
/// well as `creem-signature`, with or without `sha256=`; other forms are 401 and store nothing.
fn creem_signature_forms_the_sdk_accepts(stack: &Stack) -> Result<(), Failed> {
    let c = stack.client();
    let body_for = |id: &str| {
        envelope(
            id,
            "payout.sent",
            now_secs() * 1000,
            json!({"object": "payout", "id": id}),
        )
        .to_string()
    };
    let sig =
        |body: &str| shared::signing::hmac_hex(CREEM_WEBHOOK_SECRET.as_bytes(), body.as_bytes());
    /// A header and how the hex signature is written into it.
    type Form = (&'static str, fn(&str) -> String);
    let t = now_secs();
    let accepted: [Form; 4] = [
        ("x-creem-signature", |s| s.to_owned()),
        ("x-creem-signature", |s| format!("sha256={s}")),
        ("creem-signature", |s| format!("sha256={s}")),
        ("creem-signature", |s| s.to_uppercase()),
    ];
    let mut stored = Vec::new();
    for (n, (header, form)) in accepted.iter().enumerate() {
        let id = format!("evt_sigform_{t}_{n}");
        let body = body_for(&id);
        let r = creem::post(&c, &[(header, &form(&sig(&body)))], &body);
        eq(
            r.status,
            200,
            &format!("{header} {}: {}", form("HEX"), r.text()),
        )?;
        stored.push(id);
    }
    let refused: [Form; 4] = [
        ("x-creem-signature", |s| format!("SHA256={s}")),
        ("x-creem-signature", |s| format!("sha1={s}")),
        ("creem-signature", |s| format!("v1,{s}")),
        ("x-signature", |s| s.to_owned()),
    ];
    let mut forged = Vec::new();
    for (n, (header, form)) in refused.iter().enumerate() {
        let id = format!("evt_sigbad_{t}_{n}");
        let body = body_for(&id);
        let r = creem::post(&c, &[(header, &form(&sig(&body)))], &body);
        eq(r.status, 401, &format!("{header} {}", form("HEX")))?;
        forged.push(id);
    }
    // creem-signature wins over x-creem-signature, as in the SDK: a bad one is not rescued
    let id = format!("evt_sigboth_{t}");
    let body = body_for(&id);
    let r = creem::post(
        &c,
        &[
            ("creem-signature", &"ab".repeat(32)),
            ("x-creem-signature", &sig(&body)),
        ],
        &body,
    );
    eq(
        r.status,
        401,
        "a bad creem-signature beside a good x-creem-signature",
    )?;
    forged.push(id);
    let ids: Vec<String> = c
        .get("/admin/webhook-events?limit=200", Some(ADMIN_TOKEN))
        .json()["webhook_events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|e| e["event_id"].as_str().map(str::to_owned))
        .collect();
    for id in &stored {
        ensure(ids.contains(id), format!("{id} stored"))?;
    }
    for id in &forged {
        ensure(!ids.contains(id), format!("{id} not stored"))?;
    }
    Ok(())
}

/// The stored event `event_id`, as operators list it.
fn stored_event(c: &Client, event_id: &str) -> Option<Value> {
    c.get("/admin/webhook-events?limit=200", Some(ADMIN_TOKEN))
        .json()["webhook_events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .find(|e| e["event_id"] == event_id)
}

/// A checkout that paid another amount or currency than its order is held for an operator:
/// nothing granted, the order left as it was, the event still `received` with the reason, and a
/// dead letter of class `payment_mismatch`. A discount that explains the difference is accepted.
fn what_was_paid_is_checked_against_the_order(stack: &Stack) -> Result<(), Failed> {
    let c = stack.client();
    let (user, token) = c.new_user(ADMIN_TOKEN, 0);
    let t = now_secs() * 1000;
    let mut held = Vec::new();
    for (n, (field, value)) in [("amount", json!(99)), ("currency", json!("EUR"))]
        .into_iter()
        .enumerate()
    {
        let (order_id, checkout) = order(stack, &token, "pack_starter")?;
        let event_id = format!("evt_mismatch_{n}_{order_id}");
        let mut paid = checkout_completed(
            &event_id,
            &order_id,
            &checkout,
            "prod_pack_starter",
            &user,
            None,
            t,
        );
        paid["object"]["order"][field] = value;
        delivered(&c, &paid, "delivered")?;
        wait_for("the mismatch is held", Duration::from_secs(30), || {
            stored_event(&c, &event_id).is_some_and(|e| {
                e["error"]
                    .as_str()
                    .is_some_and(|m| m.contains("held for an operator (payment_mismatch)"))
            })
        })?;
        let e = stored_event(&c, &event_id).unwrap_or_default();
        eq(e["status"].as_str(), Some("received"), "never marked done")?;
        ensure(
            e["error"]
                .as_str()
                .is_some_and(|m| m.contains(&format!("order {order_id} is 499 USD"))),
            format!(
                "the note says what was paid and what the order is: {}",
                e["error"]
            ),
        )?;
        eq(
            order_status(&c, &token, &order_id).as_str(),
            Some("pending"),
            "the order is not completed",
        )?;
        held.push(order_id);
    }
    // the dead letter is archived just after the note is written
    let dead = || {
        c.get(
            "/admin/dead-letters?queue=edgeline-events&error_class=payment_mismatch&limit=200",
            Some(ADMIN_TOKEN),
        )
        .json()["dead_letters"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    for order_id in &held {
        wait_for(
            &format!("an operator sees the payment for {order_id} in the dead letters"),
            Duration::from_secs(20),
            || {
                dead().iter().any(|d| {
                    d["error_text"]
                        .as_str()
                        .is_some_and(|t| t.contains(&format!("order {order_id} is 499 USD")))
                })
            },
        )?;
    }
    eq(c.balance(&token), 0, "nothing granted for a mismatch")?;
    // a discount code: 399 paid of 499, the 100 difference said by discount_amount
    let (order_id, checkout) = order(stack, &token, "pack_starter")?;
    let event_id = format!("evt_discount_{order_id}");
    let mut paid = checkout_completed(
        &event_id,
        &order_id,
        &checkout,
        "prod_pack_starter",
        &user,
        None,
        t,
    );
    paid["object"]["order"]["amount"] = json!(399);
    paid["object"]["order"]["discount_amount"] = json!(100);
    delivered(&c, &paid, "discounted")?;
    balance_becomes(&c, &token, 50)?;
    wait_for("the discount is noted", Duration::from_secs(20), || {
        stored_event(&c, &event_id).is_some_and(|e| {
            e["status"] == "applied"
                && e["error"]
                    .as_str()
                    .is_some_and(|m| m.contains("paid 399 USD of 499 with a discount of 100"))
        })
    })?;
    no_checkout_refused(stack)?;
    Ok(())
}

/// A refund of `refunded` of a pack paid through `checkout` (Creem order `or_…`, transaction
/// `tran_…`), with the transaction's cumulative `refunded_amount` when given.
fn pack_refund(
    event_id: &str,
    refund_id: &str,
    checkout: &str,
    refunded: i64,
    total: Option<i64>,
    paid: i64,
) -> Value {
    let mut transaction = json!({"object": "transaction", "id": format!("tran_{checkout}"), "order": format!("or_{checkout}"),
                                 "amount": paid, "currency": "USD", "type": "payment", "status": "partialRefund"});
    if let Some(t) = total {
        transaction["refunded_amount"] = json!(t);
    }
    envelope(
        event_id,
        "refund.created",
        now_secs() * 1000,
        json!({"object": "refund", "id": refund_id, "status": "succeeded", "refund_amount": refunded,
               "refund_currency": "USD", "reason": "requested_by_customer", "order": format!("or_{checkout}"),
               "checkout": checkout, "transaction": transaction}),
    )
}

/// Several partial refunds of one pack, delivered out of order and more than once, claw back
/// exactly round(grant × refunded / paid) of it; the one that completes the refund takes the
/// whole grant and refunds the order; without Creem's cumulative figure the refunds are summed;
/// the auditor agrees.
fn partial_refunds_claw_back_their_share(stack: &Stack) -> Result<(), Failed> {
    let c = stack.client();
    let (user, token) = c.new_user(ADMIN_TOKEN, 0);
    let (large, large_checkout) = order(stack, &token, "pack_large")?;
    let paid = checkout_completed(
        &format!("evt_pl_{large}"),
        &large,
        &large_checkout,
        "prod_pack_large",
        &user,
        None,
        now_secs() * 1000,
    );
    delivered(&c, &paid, "paid")?;
    balance_becomes(&c, &token, 250)?;
    let r = |n: i64, amount: i64, total: i64| {
        pack_refund(
            &format!("evt_pr{n}_{large}"),
            &format!("re_{n}_{large}"),
            &large_checkout,
            amount,
            Some(total),
            1999,
        )
    };
    let (r1, r2, r3) = (r(1, 500, 500), r(2, 700, 1200), r(3, 799, 1999));
    for e in [&r2, &r1, &r2, &r1] {
        delivered(&c, e, "partial refund")?;
    }
    // 1200 of 1999 refunded: round(250 × 1200 / 1999) = round(150.08) = 150
    balance_becomes(&c, &token, 100)?;
    std::thread::sleep(Duration::from_secs(2));
    eq(c.balance(&token), 100, "clawed back once")?;
    eq(
        order_status(&c, &token, &large).as_str(),
        Some("completed"),
        "partly refunded: still completed",
    )?;
    for e in [&r3, &r1] {
        delivered(&c, e, "the rest refunded")?;
    }
    balance_becomes(&c, &token, 0)?;
    wait_for("the order is refunded", Duration::from_secs(20), || {
        order_status(&c, &token, &large) == "refunded"
    })?;
    // no cumulative refunded_amount: 100 + 150 of 499 refunded, summed: round(50 × 250 / 499) = 25
    let (starter, starter_checkout) = order(stack, &token, "pack_starter")?;
    let paid = checkout_completed(
        &format!("evt_ps_{starter}"),
        &starter,
        &starter_checkout,
        "prod_pack_starter",
        &user,
        None,
        now_secs() * 1000,
    );
    delivered(&c, &paid, "paid")?;
    balance_becomes(&c, &token, 50)?;
    let a = pack_refund(
        &format!("evt_psa_{starter}"),
        &format!("re_a_{starter}"),
        &starter_checkout,
        100,
        None,
        499,
    );
    let b = pack_refund(
        &format!("evt_psb_{starter}"),
        &format!("re_b_{starter}"),
        &starter_checkout,
        150,
        None,
        499,
    );
    for e in [&b, &a, &b] {
        delivered(&c, e, "refund without a cumulative figure")?;
    }
    balance_becomes(&c, &token, 25)?;
    // the auditor finds the clawbacks of these orders exact
    wait_for("every refund applied", Duration::from_secs(20), || {
        [&r1, &r2, &r3, &a, &b].iter().all(|e| {
            stored_event(&c, e["id"].as_str().unwrap_or_default())
                .is_some_and(|s| s["status"] == "applied")
        })
    })?;
    let report = c.get("/admin/audit", Some(ADMIN_TOKEN)).json();
    let about_these: Vec<&Value> = report["violations"]
        .as_array()
        .map(|v| {
            v.iter()
                .filter(|v| {
                    v["check"].as_str().is_some_and(|c| {
                        c.starts_with("refunded_") || c == "clawbacks_match_grants"
                    })
                })
                .filter(|v| {
                    v["subject"] == large.as_str()
                        || v["subject"] == starter.as_str()
                        || v["detail"]["entity_id"] == large.as_str()
                        || v["detail"]["entity_id"] == starter.as_str()
                })
                .collect()
        })
        .unwrap_or_default();
    ensure(
        about_these.is_empty(),
        format!("the auditor agrees: {about_these:?}"),
    )?;
    no_checkout_refused(stack)?;
    Ok(())
}

fn main() {
    e2e::suite::run(
        StackOptions::default(),
        |_| {},
        e2e::cases![
            buying_a_pack_grants_once,
            creem_signature_forms_the_sdk_accepts,
            what_was_paid_is_checked_against_the_order,
            partial_refunds_claw_back_their_share,
            admin_writes_to_users_sessions_and_grants_are_audited,
            subscription_lifecycle,
            events_waiting_for_their_subject_are_never_lost,
            forged_deliveries_store_nothing,
            refund_after_spending_goes_negative,
            out_of_order_ends_in_the_same_state,
            concurrent_submissions_never_overdraw,
            the_public_catalogue_hides_provider_ids,
            operators_change_the_catalogue_and_orders_keep_their_terms,
            invalid_catalogues_are_refused_and_change_nothing
        ],
    )
}
