//! Payments end to end: orders with a checkout at the (simulated) payment provider, signed
//! Creem webhooks delivered late, twice and out of order, subscriptions across periods,
//! refunds, forged deliveries, and concurrent submissions against a balance.

use e2e::check::{ensure, eq};
use e2e::client::{Client, Reply};
use e2e::stack::{
    Stack, StackOptions, ADMIN_TOKEN, CREEM_OLD_SECRET, CREEM_WEBHOOK_SECRET,
    STANDARD_WEBHOOK_SECRET,
};
use libtest_mimic::Failed;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const DAY: i64 = 86_400;

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn iso(t: i64) -> String {
    shared::ids::iso8601(t)
}

/// Delivers an event the way Creem does: `creem-signature` = hex HMAC-SHA256 of the raw body.
fn deliver(c: &Client, event: &Value, secret: &str) -> Reply {
    let body = event.to_string();
    let sig = shared::signing::hmac_hex(secret.as_bytes(), body.as_bytes());
    c.send(
        "POST",
        "/webhooks/creem",
        None,
        &[("creem-signature", &sig)],
        Some(("application/json", body.as_bytes())),
    )
}

fn envelope(id: &str, kind: &str, created_ms: i64, object: Value) -> Value {
    json!({"id": id, "eventType": kind, "created_at": created_ms, "object": object})
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
        "order": {"id": format!("or_{checkout}"), "amount": 499, "currency": "USD", "status": "paid"},
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
        c.get(&format!("/api/orders/{a_order}"), Some(&a_token))
            .json()["status"]
            .as_str(),
        Some("pending"),
        "pending until paid",
    )?;
    let t = now() * 1000;
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
        let r = deliver(&c, event, CREEM_WEBHOOK_SECRET);
        eq(r.status, 200, &format!("delivery: {}", r.text()))?;
    }
    balance_becomes(&c, &a_token, 50)?;
    balance_becomes(&c, &b_token, 250)?;
    std::thread::sleep(Duration::from_secs(2));
    eq(c.balance(&a_token), 50, "granted once")?;
    eq(
        c.get(&format!("/api/orders/{a_order}"), Some(&a_token))
            .json()["status"]
            .as_str(),
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
        deliver(&c, &a_paid, CREEM_OLD_SECRET).json()["duplicate"].as_bool(),
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
    Ok(())
}

fn subscription_lifecycle(stack: &Stack) -> Result<(), Failed> {
    let c = stack.client();
    let (user, token) = c.new_user(ADMIN_TOKEN, 0);
    let (order_id, checkout) = order(stack, &token, "pro_monthly")?;
    let sub_id = format!("sub_{order_id}");
    let start = now() - DAY;
    let period = |n: i64| (start + n * 30 * DAY, start + (n + 1) * 30 * DAY);
    let t = now() * 1000;
    let status = |c: &Client| c.get("/api/subscription", Some(&token)).json();
    let first = checkout_completed(
        "evt_s0",
        &order_id,
        &checkout,
        "prod_pro_monthly",
        &user,
        Some(subscription(
            &sub_id,
            "prod_pro_monthly",
            &user,
            "active",
            period(0),
        )),
        t,
    );
    let first = {
        let mut e = first;
        e["id"] = json!(format!("evt_s0_{order_id}"));
        e
    };
    eq(
        deliver(&c, &first, CREEM_WEBHOOK_SECRET).status,
        200,
        "checkout",
    )?;
    balance_becomes(&c, &token, 300)?;
    let s = status(&c);
    eq(
        s["subscription"]["status"].as_str(),
        Some("active"),
        "active",
    )?;
    eq(s["subscription"]["plan"].as_str(), Some("pro"), "plan")?;
    eq(s["access"].as_bool(), Some(true), "access")?;
    for n in 1..=2 {
        let paid = envelope(
            &format!("evt_s{n}_{order_id}"),
            "subscription.paid",
            t + n * 1000,
            subscription(&sub_id, "prod_pro_monthly", &user, "active", period(n)),
        );
        eq(
            deliver(&c, &paid, CREEM_WEBHOOK_SECRET).status,
            200,
            "renewal",
        )?;
        balance_becomes(&c, &token, 300 * (n + 1))?;
        eq(
            status(&c)["subscription"]["current_period_end"].as_i64(),
            Some(period(n).1),
            "period extended",
        )?;
    }
    // the same period reported again under another event id grants nothing
    let again = envelope(
        &format!("evt_s2b_{order_id}"),
        "subscription.active",
        t + 2500,
        subscription(&sub_id, "prod_pro_monthly", &user, "active", period(2)),
    );
    eq(
        deliver(&c, &again, CREEM_WEBHOOK_SECRET).status,
        200,
        "same period again",
    )?;
    let canceled = envelope(
        &format!("evt_s3_{order_id}"),
        "subscription.canceled",
        t + 3000,
        subscription(&sub_id, "prod_pro_monthly", &user, "canceled", period(2)),
    );
    eq(
        deliver(&c, &canceled, CREEM_WEBHOOK_SECRET).status,
        200,
        "cancel",
    )?;
    wait_for("cancelled", Duration::from_secs(20), || {
        status(&c)["subscription"]["status"] == "cancelled"
    })?;
    eq(
        status(&c)["access"].as_bool(),
        Some(true),
        "access kept to the period end",
    )?;
    eq(c.balance(&token), 900, "three periods granted, once each")?;
    let expired = envelope(
        &format!("evt_s4_{order_id}"),
        "subscription.expired",
        t + 4000,
        subscription(&sub_id, "prod_pro_monthly", &user, "expired", period(2)),
    );
    eq(
        deliver(&c, &expired, CREEM_WEBHOOK_SECRET).status,
        200,
        "expire",
    )?;
    wait_for("expired", Duration::from_secs(20), || {
        status(&c)["subscription"]["status"] == "expired"
    })?;
    eq(
        status(&c)["access"].as_bool(),
        Some(false),
        "no access once expired",
    )?;
    Ok(())
}

fn forged_deliveries_store_nothing(stack: &Stack) -> Result<(), Failed> {
    let c = stack.client();
    let event = envelope(
        "evt_forged_1",
        "checkout.completed",
        now() * 1000,
        json!({"object": "checkout", "id": "ch_x", "request_id": "ord_x"}),
    );
    let body = event.to_string();
    let good = shared::signing::hmac_hex(CREEM_WEBHOOK_SECRET.as_bytes(), body.as_bytes());
    let post = |headers: &[(&str, &str)], body: &str| {
        c.send(
            "POST",
            "/webhooks/creem",
            None,
            headers,
            Some(("application/json", body.as_bytes())),
        )
    };
    let cases = [
        (
            "forged signature",
            post(&[("creem-signature", &"ab".repeat(32))], &body),
        ),
        (
            "body modified after signing",
            post(
                &[("creem-signature", &good)],
                &body.replace("ord_x", "ord_y"),
            ),
        ),
        (
            "another secret",
            post(
                &[(
                    "creem-signature",
                    &shared::signing::hmac_hex(b"not-ours", body.as_bytes()),
                )],
                &body,
            ),
        ),
        ("missing header", post(&[], &body)),
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
    let stale_ts = now() - 3600;
    let stale = post(
        &[
            ("webhook-id", "msg_stale"),
            ("webhook-timestamp", &stale_ts.to_string()),
            ("webhook-signature", &sign("msg_stale", stale_ts, &body)),
        ],
        &body,
    );
    eq(stale.status, 401, "stale standard-webhooks timestamp")?;
    let ts = now();
    let fresh = post(
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
    let r = post(
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
        now() * 1000,
        json!({"object": "payout", "id": "po_1"}),
    );
    eq(
        deliver(&c, &unknown, CREEM_WEBHOOK_SECRET).status,
        200,
        "unknown type acknowledged",
    )?;
    let dispute = envelope(
        "evt_dispute_1",
        "dispute.created",
        now() * 1000,
        json!({"object": "dispute", "id": "dp_1", "order": {"id": "or_unknown"}}),
    );
    eq(
        deliver(&c, &dispute, CREEM_WEBHOOK_SECRET).status,
        200,
        "dispute acknowledged",
    )?;
    let find = |id: &str| {
        c.get("/admin/webhook-events?limit=200", Some(ADMIN_TOKEN))
            .json()["webhook_events"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .find(|e| e["event_id"] == id)
    };
    wait_for(
        "the unknown event is settled",
        Duration::from_secs(20),
        || find("evt_unknown_1").is_some_and(|e| e["status"] == "ignored"),
    )?;
    wait_for("the dispute is recorded", Duration::from_secs(20), || {
        find("evt_dispute_1").is_some_and(|e| {
            e["status"] == "applied" && e["error"].as_str().is_some_and(|n| n.contains("dispute"))
        })
    })?;
    let big = "x".repeat(300 * 1024);
    eq(
        post(&[("creem-signature", &good)], &big).status,
        413,
        "oversized body",
    )?;
    Ok(())
}

fn refund_after_spending_goes_negative(stack: &Stack) -> Result<(), Failed> {
    let c = stack.client();
    let (user, token) = c.new_user(ADMIN_TOKEN, 0);
    let (order_id, checkout) = order(stack, &token, "pack_starter")?;
    eq(
        deliver(
            &c,
            &checkout_completed(
                &format!("evt_r_{order_id}"),
                &order_id,
                &checkout,
                "prod_pack_starter",
                &user,
                None,
                now() * 1000,
            ),
            CREEM_WEBHOOK_SECRET,
        )
        .status,
        200,
        "paid",
    )?;
    balance_becomes(&c, &token, 50)?;
    for i in 0..3 {
        let r = c.post_json(
            "/api/tasks",
            Some(&token),
            &json!({"prompt": format!("spend {i}"), "model": "kie_4o"}),
        );
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
        now() * 1000,
        json!({"object": "refund", "id": "re_1", "refund_amount": 499, "order": {"id": format!("or_{checkout}")}, "checkout": {"id": checkout}}),
    );
    eq(
        deliver(&c, &refund, CREEM_WEBHOOK_SECRET).status,
        200,
        "refund",
    )?;
    balance_becomes(&c, &token, -6)?;
    eq(
        c.get(&format!("/api/orders/{order_id}"), Some(&token))
            .json()["status"]
            .as_str(),
        Some("refunded"),
        "order refunded",
    )?;
    let r = c.post_json(
        "/api/tasks",
        Some(&token),
        &json!({"prompt": "on credit", "model": "kie_4o"}),
    );
    eq(r.status, 402, "no tasks on a negative balance")?;
    eq(
        deliver(&c, &refund, CREEM_WEBHOOK_SECRET).status,
        200,
        "refund again",
    )?;
    std::thread::sleep(Duration::from_secs(2));
    eq(c.balance(&token), -6, "clawed back once")?;
    let (again, checkout2) = order(stack, &token, "pack_starter")?;
    eq(
        deliver(
            &c,
            &checkout_completed(
                &format!("evt_r2_{again}"),
                &again,
                &checkout2,
                "prod_pack_starter",
                &user,
                None,
                now() * 1000,
            ),
            CREEM_WEBHOOK_SECRET,
        )
        .status,
        200,
        "paid again",
    )?;
    balance_becomes(&c, &token, 44)?;
    eq(
        c.post_json(
            "/api/tasks",
            Some(&token),
            &json!({"prompt": "service restored", "model": "kie_4o"}),
        )
        .status,
        202,
        "a new purchase restores service",
    )?;
    Ok(())
}

fn out_of_order_ends_in_the_same_state(stack: &Stack) -> Result<(), Failed> {
    let c = stack.client();
    let start = now() - DAY;
    let period = |n: i64| (start + n * 30 * DAY, start + (n + 1) * 30 * DAY);
    let t = now() * 1000;
    let run = |order_of_delivery: &[usize]| -> Result<(Value, i64), String> {
        let (user, token) = c.new_user(ADMIN_TOKEN, 0);
        let (order_id, checkout) = order(stack, &token, "basic_monthly")?;
        let sub = format!("sub_{order_id}");
        let p = "prod_basic_monthly";
        let events = [
            checkout_completed(
                &format!("e0_{order_id}"),
                &order_id,
                &checkout,
                p,
                &user,
                Some(subscription(&sub, p, &user, "active", period(0))),
                t,
            ),
            envelope(
                &format!("e1_{order_id}"),
                "subscription.paid",
                t + 1000,
                subscription(&sub, p, &user, "active", period(1)),
            ),
            envelope(
                &format!("e2_{order_id}"),
                "subscription.paid",
                t + 2000,
                subscription(&sub, p, &user, "active", period(2)),
            ),
            envelope(
                &format!("e3_{order_id}"),
                "subscription.canceled",
                t + 3000,
                subscription(&sub, p, &user, "canceled", period(2)),
            ),
            envelope(
                &format!("e4_{order_id}"),
                "subscription.expired",
                t + 4000,
                subscription(&sub, p, &user, "expired", period(2)),
            ),
        ];
        for &i in order_of_delivery {
            let r = deliver(&c, &events[i], CREEM_WEBHOOK_SECRET);
            if r.status != 200 {
                return Err(format!("delivery {i}: {}", r.text()));
            }
        }
        balance_becomes(&c, &token, 300)?;
        wait_for("expired", Duration::from_secs(30), || {
            c.get("/api/subscription", Some(&token)).json()["subscription"]["status"] == "expired"
        })?;
        std::thread::sleep(Duration::from_secs(1));
        let mut s = c.get("/api/subscription", Some(&token)).json()["subscription"].clone();
        for k in ["id", "provider_subscription_id", "updated_at"] {
            s.as_object_mut().map(|o| o.remove(k));
        }
        Ok((s, c.balance(&token)))
    };
    let in_order = run(&[0, 1, 2, 3, 4])?;
    for shuffled in [[4, 2, 0, 3, 1], [3, 1, 4, 0, 2], [2, 4, 1, 3, 0]] {
        let got = run(&shuffled)?;
        eq(
            got.clone(),
            in_order.clone(),
            &format!("delivered as {shuffled:?}"),
        )?;
    }
    eq(in_order.1, 300, "three periods of basic")?;
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
                    Client::new(&base)
                        .post_json(
                            "/api/tasks",
                            Some(&token),
                            &json!({"prompt": format!("race {i} [sim:stuck]"), "model": "kie_4o"}),
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

fn main() {
    e2e::suite::run(
        StackOptions::default(),
        |_| {},
        vec![
            ("buying_a_pack_grants_once", buying_a_pack_grants_once),
            ("subscription_lifecycle", subscription_lifecycle),
            (
                "forged_deliveries_store_nothing",
                forged_deliveries_store_nothing,
            ),
            (
                "refund_after_spending_goes_negative",
                refund_after_spending_goes_negative,
            ),
            (
                "out_of_order_ends_in_the_same_state",
                out_of_order_ends_in_the_same_state,
            ),
            (
                "concurrent_submissions_never_overdraw",
                concurrent_submissions_never_overdraw,
            ),
        ],
    )
}
