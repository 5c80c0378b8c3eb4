//! End-to-end tests of the task pipeline on the real local stack: wrangler dev (workerd with
//! local D1, R2, KV and Queues) running all three workers, and the kie.ai simulator.
//! One stack for the whole run; tests isolate themselves by user.

use e2e::check::{ensure, eq};
use e2e::client::{jwt_claims, multipart, Reply};
use e2e::stack::{Stack, StackOptions, ADMIN_TOKEN, FILES_SIGNING_KEY};
use e2e::tasks;
use libtest_mimic::Failed;
use serde_json::{json, Value};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

/// The simulator refuses what the real kie.ai would refuse: our code must have sent nothing of it.
fn nothing_refused_by_the_provider(stack: &Stack) -> Result<(), Failed> {
    let refused = stack.sim.stats().refused;
    ensure(
        refused.is_empty(),
        format!("the provider refused our requests: {refused:?}"),
    )?;
    Ok(())
}

fn golden_path_4o(stack: &Stack) -> Result<(), Failed> {
    let c = stack.client();
    let (_, token) = c.new_user(ADMIN_TOKEN, 10);
    let prompt = "golden path: a red fox in snow";
    let r = tasks::submit(&c, &token, prompt, "kie_4o");
    eq(r.status, 202, &format!("submit {}", r.text()))?;
    let created = r.json();
    eq(
        created["status"].as_str(),
        Some("pending"),
        "initial status",
    )?;
    ensure(
        created["task_no"]
            .as_str()
            .is_some_and(|n| n.starts_with('T')),
        "task_no",
    )?;
    let id = created["id"].as_str().unwrap_or_default().to_owned();

    let task = c.wait_task(&token, &id, WAIT);
    eq(
        task["status"].as_str(),
        Some("completed"),
        &format!("final status {task}"),
    )?;
    ensure(
        task["submitted_at"].is_i64() && task["completed_at"].is_i64(),
        "timestamps set",
    )?;
    let results = task["results"].as_array().cloned().unwrap_or_default();
    eq(results.len(), 1, "one result")?;

    // the bytes in R2 are exactly what the provider served
    let stored = c.get(&format!("/api/tasks/{id}/results/0"), Some(&token));
    eq(stored.status, 200, "result download")?;
    eq(
        stored.header("content-type"),
        Some("image/png"),
        "content type kept",
    )?;
    ensure(
        stored.body == sim::result_png(prompt, 0),
        "stored bytes equal the simulator's",
    )?;
    // and the signed URL serves the same bytes without a token
    let signed = results[0]["signed_url"].as_str().unwrap_or_default();
    let via_signed = c.get(signed, None);
    eq(via_signed.status, 200, "signed url")?;
    ensure(via_signed.body == stored.body, "signed url bytes")?;

    // ranges, validators and cache headers
    let etag = stored.header("etag").unwrap_or_default().to_owned();
    ensure(
        !etag.is_empty()
            && stored
                .header("cache-control")
                .is_some_and(|c| c.contains("private")),
        "etag and cache-control",
    )?;
    eq(
        stored.header("accept-ranges"),
        Some("bytes"),
        "ranges advertised",
    )?;
    let path = format!("/api/tasks/{id}/results/0");
    let part = c.send("GET", &path, Some(&token), &[("range", "bytes=0-7")], None);
    eq(part.status, 206, "a range")?;
    ensure(part.body == stored.body[..8], "the first 8 bytes")?;
    eq(
        part.header("content-range").map(str::to_owned),
        Some(format!("bytes 0-7/{}", stored.body.len())),
        "content-range",
    )?;
    let tail = c.send("GET", &path, Some(&token), &[("range", "bytes=-4")], None);
    ensure(
        tail.status == 206 && tail.body == stored.body[stored.body.len() - 4..],
        "a suffix range",
    )?;
    let past = c.send(
        "GET",
        &path,
        Some(&token),
        &[("range", "bytes=999999-")],
        None,
    );
    eq(
        (past.status, past.code()),
        (416, "range_not_satisfiable".to_owned()),
        "a range past the end",
    )?;
    let cached = c.send(
        "GET",
        &path,
        Some(&token),
        &[("if-none-match", &etag)],
        None,
    );
    ensure(
        cached.status == 304 && cached.body.is_empty(),
        format!("if-none-match: {}", cached.status),
    )?;
    let signed_part = c.send("GET", signed, None, &[("range", "bytes=0-3")], None);
    ensure(
        signed_part.status == 206 && signed_part.body == stored.body[..4],
        "ranges on signed urls too",
    )?;

    // charged exactly the cost, once
    eq(c.balance(&token), 8, "balance after one kie_4o task")?;
    std::thread::sleep(Duration::from_secs(3));
    eq(c.balance(&token), 8, "balance stays settled")?;
    eq(
        stack.provider_creates(prompt),
        Some(1),
        "one provider submission",
    )?;
    nothing_refused_by_the_provider(stack)
}

fn kontext_with_upload(stack: &Stack) -> Result<(), Failed> {
    let c = stack.client();
    let (_, token) = c.new_user(ADMIN_TOKEN, 10);
    let prompt = "kontext with an uploaded photo";
    let input = sim::result_png("an input image", 0);
    let (ct, body) = multipart(
        &[("prompt", prompt), ("model", "kie_kontext")],
        &[("file", "me.png", "image/png", &input)],
    );
    let r = c.send("POST", "/api/tasks", Some(&token), &[], Some((&ct, &body)));
    eq(r.status, 202, &format!("multipart submit {}", r.text()))?;
    let id = tasks::id(&r);
    let task = c.wait_task(&token, &id, WAIT);
    eq(
        task["status"].as_str(),
        Some("completed"),
        &format!("final {task}"),
    )?;
    eq(c.balance(&token), 7, "kontext costs 3")?;
    // the provider got a signed URL for the upload, and it serves the uploaded bytes
    let inputs = stack
        .sim
        .stats()
        .inputs_by_prompt
        .get(prompt)
        .cloned()
        .unwrap_or_default();
    eq(inputs.len(), 1, "one input image sent")?;
    ensure(
        inputs[0].contains("/files/cache/") && inputs[0].contains("sig="),
        format!("signed upload url: {}", inputs[0]),
    )?;
    let fetched = c.get(&inputs[0], None);
    eq(fetched.status, 200, "provider can fetch the upload")?;
    ensure(fetched.body == input, "upload bytes round-trip")?;
    nothing_refused_by_the_provider(stack)
}

/// Each model takes the sizes its provider API accepts: a size it does not is a 422 naming
/// `size` and listing that model's sizes, never changed into another, and nothing is held or
/// sent. A size it accepts goes through to the provider as it is.
fn sizes_are_checked_per_model(stack: &Stack) -> Result<(), Failed> {
    let c = stack.client();
    let (_, token) = c.new_user(ADMIN_TOKEN, 10);
    let kontext_sizes = "21:9, 16:9, 4:3, 1:1, 3:4, 9:16";
    for (model, size, listed) in [
        ("kie_kontext", "3:2", kontext_sizes),
        ("kie_kontext", "2:3", kontext_sizes),
        ("kie_4o", "16:9", "1:1, 3:2, 2:3"),
    ] {
        let prompt = format!("sizes: {model} at {size}");
        let r = tasks::submit_json(
            &c,
            &token,
            &json!({"prompt": prompt, "model": model, "size": size}),
        );
        let err = r.json();
        eq(
            (
                r.status,
                err.pointer("/error/field").and_then(Value::as_str),
            ),
            (422, Some("size")),
            &format!("{model} {size}: {}", r.text()),
        )?;
        let message = err
            .pointer("/error/message")
            .and_then(Value::as_str)
            .unwrap_or_default();
        ensure(
            message.contains(model) && message.contains(listed),
            format!("{model} {size}: the message lists what {model} accepts: {message}"),
        )?;
        eq(
            stack.provider_creates(&prompt),
            None,
            "nothing sent to the provider",
        )?;
    }
    // the same through a multipart submission
    let (ct, body) = multipart(
        &[
            ("prompt", "sizes: multipart"),
            ("model", "kie_kontext"),
            ("size", "3:2"),
        ],
        &[],
    );
    let r = c.send("POST", "/api/tasks", Some(&token), &[], Some((&ct, &body)));
    eq(
        (
            r.status,
            r.json()
                .pointer("/error/field")
                .and_then(Value::as_str)
                .map(str::to_owned),
        ),
        (422, Some("size".to_owned())),
        &format!("multipart kontext 3:2: {}", r.text()),
    )?;
    eq(c.balance(&token), 10, "refused submissions hold nothing")?;

    // sizes only one model has go through for that model, unchanged
    let mut ids = Vec::new();
    for (model, size) in [("kie_kontext", "9:16"), ("kie_4o", "3:2")] {
        let prompt = format!("sizes: {model} at {size}");
        let r = tasks::submit_json(
            &c,
            &token,
            &json!({"prompt": prompt, "model": model, "size": size}),
        );
        eq(r.status, 202, &format!("{model} {size}: {}", r.text()))?;
        ids.push((prompt, size, tasks::id(&r)));
    }
    for (prompt, size, id) in &ids {
        let task = c.wait_task(&token, id, WAIT);
        eq(
            task["status"].as_str(),
            Some("completed"),
            &format!("final {task}"),
        )?;
        eq(
            stack.sim.stats().sizes_by_prompt.get(prompt).cloned(),
            Some((*size).to_owned()),
            &format!("{prompt}: the provider got the size asked for"),
        )?;
    }
    eq(c.balance(&token), 5, "kontext 3 + 4o 2")?;

    // and the contract says the same, per model
    let doc = c.get("/api/openapi.json", None).json();
    let documented: Vec<(String, Value)> = doc
        .pointer("/components/schemas/NewTask/oneOf")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|v| {
            (
                v.pointer("/properties/model/const")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                v.pointer("/properties/size/enum")
                    .cloned()
                    .unwrap_or_default(),
            )
        })
        .collect();
    eq(
        documented,
        vec![
            ("kie_4o".to_owned(), json!(["1:1", "3:2", "2:3"])),
            (
                "kie_kontext".to_owned(),
                json!(["21:9", "16:9", "4:3", "1:1", "3:4", "9:16"]),
            ),
        ],
        "NewTask documents each model's sizes",
    )?;
    nothing_refused_by_the_provider(stack)
}

fn failed_generation_restores_balance(stack: &Stack) -> Result<(), Failed> {
    let c = stack.client();
    let (_, token) = c.new_user(ADMIN_TOKEN, 5);
    let r = tasks::submit(&c, &token, "this one fails [sim:fail]", "kie_4o");
    eq(r.status, 202, "submit")?;
    eq(c.balance(&token), 3, "held while running")?;
    let id = tasks::id(&r);
    let task = c.wait_task(&token, &id, WAIT);
    eq(task["status"].as_str(), Some("failed"), "failed")?;
    ensure(
        task["failure_reason"]
            .as_str()
            .is_some_and(|r| r.contains("generate_failed")),
        format!("reason: {}", task["failure_reason"]),
    )?;
    eq(c.balance(&token), 5, "hold released")?;

    let refused = tasks::submit(&c, &token, "refused [sim:refuse]", "kie_kontext");
    let id = tasks::id(&refused);
    let task = c.wait_task(&token, &id, WAIT);
    eq(
        task["status"].as_str(),
        Some("failed"),
        "refused task failed",
    )?;
    ensure(
        task["failure_reason"]
            .as_str()
            .is_some_and(|r| r.contains("content_policy")),
        format!("reason: {}", task["failure_reason"]),
    )?;
    eq(c.balance(&token), 5, "balance untouched by failures")?;
    Ok(())
}

fn idempotent_submit(stack: &Stack) -> Result<(), Failed> {
    let c = stack.client();
    let (_, token) = c.new_user(ADMIN_TOKEN, 10);
    let body = json!({"prompt": "idempotent please", "model": "kie_4o"});
    let key = [("idempotency-key", "submit-once-1")];
    let first = c.send(
        "POST",
        "/api/tasks",
        Some(&token),
        &key,
        Some(("application/json", body.to_string().as_bytes())),
    );
    let second = c.send(
        "POST",
        "/api/tasks",
        Some(&token),
        &key,
        Some(("application/json", body.to_string().as_bytes())),
    );
    eq(first.status, 202, "first")?;
    eq(second.status, 202, "repeat")?;
    eq(
        first.json()["id"].clone(),
        second.json()["id"].clone(),
        "same task",
    )?;
    eq(
        second.header("idempotent-replayed"),
        Some("true"),
        "marked as replay",
    )?;
    eq(c.balance(&token), 8, "reserved once")?;
    let other = json!({"prompt": "something else", "model": "kie_4o"});
    let reused = c.send(
        "POST",
        "/api/tasks",
        Some(&token),
        &key,
        Some(("application/json", other.to_string().as_bytes())),
    );
    eq(reused.status, 422, "key reused for another body")?;
    eq(reused.code(), "idempotency_key_reused".into(), "code")?;
    let id = tasks::id(&first);
    c.wait_task(&token, &id, WAIT);
    eq(c.balance(&token), 8, "charged once")?;
    let list = c.get("/api/tasks", Some(&token)).json();
    eq(
        list["tasks"].as_array().map(Vec::len),
        Some(1),
        "one task exists",
    )?;
    eq(
        stack.provider_creates("idempotent please"),
        Some(1),
        "submitted once",
    )?;
    Ok(())
}

fn short_balance_is_402_and_writes_nothing(stack: &Stack) -> Result<(), Failed> {
    let c = stack.client();
    let (user, token) = c.new_user(ADMIN_TOKEN, 1);
    let r = tasks::submit(&c, &token, "too expensive", "kie_4o");
    eq(r.status, 402, "402")?;
    eq(r.code(), "insufficient_credits".into(), "code")?;
    eq(c.balance(&token), 1, "balance unchanged")?;
    eq(
        c.get("/api/tasks", Some(&token)).json()["tasks"]
            .as_array()
            .map(Vec::len),
        Some(0),
        "no task written",
    )?;
    // expired grants do not count
    let g = c.post_json(
        &format!("/admin/users/{user}/grants"),
        Some(ADMIN_TOKEN),
        &json!({"credits": 50, "reference": "old-promo", "expires_at": 1_000}),
    );
    eq(g.status, 201, &format!("grant {}", g.text()))?;
    eq(c.balance(&token), 1, "expired grant not in balance")?;
    eq(
        tasks::submit(&c, &token, "still too expensive", "kie_4o").status,
        402,
        "still 402",
    )?;
    // a live grant does
    let g = c.post_json(
        &format!("/admin/users/{user}/grants"),
        Some(ADMIN_TOKEN),
        &json!({"credits": 1, "reference": "top-up"}),
    );
    eq(g.status, 201, "grant")?;
    let again = c.post_json(
        &format!("/admin/users/{user}/grants"),
        Some(ADMIN_TOKEN),
        &json!({"credits": 1, "reference": "top-up"}),
    );
    eq(again.status, 409, "same grant reference twice")?;
    eq(c.balance(&token), 2, "live grant counts once")?;
    eq(
        tasks::submit(&c, &token, "affordable now", "kie_4o").status,
        202,
        "now affordable",
    )?;
    Ok(())
}

fn other_users_tasks_are_404(stack: &Stack) -> Result<(), Failed> {
    let c = stack.client();
    let (_, alice) = c.new_user(ADMIN_TOKEN, 10);
    let (_, bob) = c.new_user(ADMIN_TOKEN, 10);
    let r = tasks::submit(&c, &alice, "alice's private cat", "kie_4o");
    let id = tasks::id(&r);
    c.wait_task(&alice, &id, WAIT);
    let missing = c.get(&format!("/api/tasks/{id}"), Some(&bob));
    eq(missing.status, 404, "bob reads alice's task")?;
    eq(missing.code(), "not_found".into(), "code")?;
    let nobody = c.get(
        &format!("/api/tasks/{}", "00000000-0000-4000-8000-000000000000"),
        Some(&bob),
    );
    eq(
        nobody.text(),
        missing.text(),
        "indistinguishable from a missing task",
    )?;
    eq(
        c.get(&format!("/api/tasks/{id}/results/0"), Some(&bob))
            .status,
        404,
        "bob reads alice's result",
    )?;
    eq(
        c.get("/api/tasks", Some(&bob)).json()["tasks"]
            .as_array()
            .map(Vec::len),
        Some(0),
        "bob's list is empty",
    )?;
    // orders and subscriptions too
    let order = c.post_json(
        "/api/orders",
        Some(&alice),
        &json!({"product_id": "pack_starter"}),
    );
    eq(order.status, 201, "alice orders")?;
    let order_id = order.json()["order_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let theirs = c.get(&format!("/api/orders/{order_id}"), Some(&bob));
    eq(
        theirs.text(),
        c.get("/api/orders/ord_does_not_exist", Some(&bob)).text(),
        "another's order is a plain 404",
    )?;
    eq(theirs.status, 404, "404")?;
    eq(
        c.get("/api/orders", Some(&bob)).json()["orders"]
            .as_array()
            .map(Vec::len),
        Some(0),
        "bob sees no orders",
    )?;
    eq(
        c.get("/api/subscription", Some(&bob)).json()["subscription"].clone(),
        Value::Null,
        "nor a subscription",
    )?;
    // bob signing out ends only bob's session
    eq(
        c.post_json("/api/auth/signout", Some(&bob), &json!({}))
            .status,
        200,
        "bob signs out",
    )?;
    eq(
        c.get("/api/tasks", Some(&alice)).status,
        200,
        "alice is still signed in",
    )?;
    Ok(())
}

fn bad_input_gets_json_4xx(stack: &Stack) -> Result<(), Failed> {
    let c = stack.client();
    let (_, token) = c.new_user(ADMIN_TOKEN, 10);
    let raw =
        |ct: &str, body: &[u8]| c.send("POST", "/api/tasks", Some(&token), &[], Some((ct, body)));
    let cases: Vec<(&str, Reply, u16, &str)> = vec![
        (
            "malformed json",
            raw("application/json", b"{\"prompt\": "),
            400,
            "invalid_json",
        ),
        (
            "not an object",
            raw("application/json", b"[1,2]"),
            400,
            "invalid_json",
        ),
        (
            "unknown model",
            tasks::submit(&c, &token, "x", "dall-e"),
            422,
            "unknown_model",
        ),
        (
            "empty prompt",
            tasks::submit(&c, &token, "   ", "kie_4o"),
            422,
            "empty",
        ),
        (
            "unknown field",
            tasks::submit_json(
                &c,
                &token,
                &json!({"prompt": "x", "model": "kie_4o", "seed": 1}),
            ),
            422,
            "unknown_field",
        ),
        (
            "wrong content type",
            raw("text/plain", b"hello"),
            415,
            "unsupported_media_type",
        ),
        (
            "no token",
            c.post_json("/api/tasks", None, &json!({})),
            401,
            "unauthorized",
        ),
        (
            "bad token",
            c.post_json("/api/tasks", Some("not-a-token"), &json!({})),
            401,
            "unauthorized",
        ),
        (
            "unknown route",
            c.get("/api/nothing-here", Some(&token)),
            404,
            "not_found",
        ),
        (
            "wrong method",
            c.delete("/api/balance", Some(&token)),
            405,
            "method_not_allowed",
        ),
        (
            "bad task id",
            c.get("/api/tasks/not-a-uuid", Some(&token)),
            400,
            "invalid_id",
        ),
        (
            "bad cursor",
            c.get("/api/tasks?cursor=%%%", Some(&token)),
            400,
            "invalid_cursor",
        ),
        (
            "bad limit",
            c.get("/api/tasks?limit=1000", Some(&token)),
            400,
            "invalid_limit",
        ),
    ];
    for (what, reply, status, code) in cases {
        eq(reply.status, status, &format!("{what}: {}", reply.text()))?;
        eq(reply.code(), code.to_owned(), what)?;
        ensure(
            reply
                .header("content-type")
                .is_some_and(|t| t.starts_with("application/json")),
            format!("{what}: JSON"),
        )?;
    }
    let field = tasks::submit(&c, &token, "x", "dall-e").json();
    eq(
        field["error"]["field"].as_str(),
        Some("model"),
        "error names the field",
    )?;

    // uploads: too big, not an image
    let big = vec![0u8; 10 * 1024 * 1024 + 1];
    let (ct, body) = multipart(
        &[("prompt", "big"), ("model", "kie_4o")],
        &[("file", "big.png", "image/png", &big)],
    );
    let r = c.send("POST", "/api/tasks", Some(&token), &[], Some((&ct, &body)));
    eq(r.status, 413, &format!("oversized upload {}", r.text()))?;
    let (ct, body) = multipart(
        &[("prompt", "html"), ("model", "kie_4o")],
        &[("file", "x.png", "image/png", b"<html>not an image</html>")],
    );
    let r = c.send("POST", "/api/tasks", Some(&token), &[], Some((&ct, &body)));
    eq(r.status, 415, &format!("non-image upload {}", r.text()))?;
    eq(c.balance(&token), 10, "nothing was charged")?;
    eq(
        c.get("/api/tasks", Some(&token)).json()["tasks"]
            .as_array()
            .map(Vec::len),
        Some(0),
        "nothing was created",
    )?;
    Ok(())
}

fn listing_is_newest_first_and_paginated(stack: &Stack) -> Result<(), Failed> {
    let c = stack.client();
    let (_, token) = c.new_user(ADMIN_TOKEN, 20);
    let mut ids = Vec::new();
    for i in 0..3 {
        let r = tasks::submit(&c, &token, &format!("list me {i} [sim:stuck]"), "kie_4o");
        ids.push(tasks::id(&r));
        std::thread::sleep(Duration::from_millis(1100));
    }
    let page1 = c.get("/api/tasks?limit=2", Some(&token)).json();
    let got: Vec<&str> = page1["tasks"]
        .as_array()
        .map(|a| a.iter().filter_map(|t| t["id"].as_str()).collect())
        .unwrap_or_default();
    eq(
        got,
        vec![ids[2].as_str(), ids[1].as_str()],
        "first page, newest first",
    )?;
    let cursor = page1["next_cursor"].as_str().unwrap_or_default().to_owned();
    ensure(!cursor.is_empty(), "a cursor for more")?;
    let page2 = c
        .get(&format!("/api/tasks?limit=2&cursor={cursor}"), Some(&token))
        .json();
    let got: Vec<&str> = page2["tasks"]
        .as_array()
        .map(|a| a.iter().filter_map(|t| t["id"].as_str()).collect())
        .unwrap_or_default();
    eq(got, vec![ids[0].as_str()], "second page")?;
    ensure(page2["next_cursor"].is_null(), "no more pages")?;
    Ok(())
}

fn tokens_are_checked_and_revocable(stack: &Stack) -> Result<(), Failed> {
    use shared::session::mint;
    let c = stack.client();
    let (user, token) = c.new_user(ADMIN_TOKEN, 3);
    let uid = shared::ids::UserId::parse(&user).map_err(|e| e.to_string())?;
    let now = e2e::now_secs();
    eq(
        c.get("/api/balance", Some(&token)).status,
        200,
        "a live session",
    )?;
    let jwt = e2e::stack::JWT_SECRET.as_bytes();
    let sid = jwt_claims(&token)["sid"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let expired =
        mint(jwt, "edgeline", &uid, &sid, now - 7200, now - 3600).map_err(|e| e.to_string())?;
    let wrong_key = mint(
        b"not-our-secret-not-our-secret-xxxx",
        "edgeline",
        &uid,
        &sid,
        now,
        now + 3600,
    )
    .map_err(|e| e.to_string())?;
    let wrong_issuer =
        mint(jwt, "someone-else", &uid, &sid, now, now + 3600).map_err(|e| e.to_string())?;
    let unknown_session =
        mint(jwt, "edgeline", &uid, "never-opened", now, now + 3600).map_err(|e| e.to_string())?;
    let none = {
        use base64::Engine;
        let b = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.",
            b.encode(br#"{"alg":"none","typ":"JWT"}"#),
            token.split('.').nth(1).unwrap_or_default()
        )
    };
    for (what, t) in [
        ("expired", expired.as_str()),
        ("wrongly signed", &wrong_key),
        ("another issuer", &wrong_issuer),
        ("a session never opened", &unknown_session),
        ("alg none", &none),
        ("malformed", "abc.def"),
    ] {
        let r = c.get("/api/balance", Some(t));
        eq((r.status, r.code()), (401, "unauthorized".to_owned()), what)?;
    }
    // sign out one session: that token is refused, the other still works; then everywhere
    let other = c.session(ADMIN_TOKEN, &user);
    let r = c.post_json("/api/auth/signout", Some(&token), &json!({}));
    eq(
        (r.status, r.json()["signed_out"].as_i64()),
        (200, Some(1)),
        "signed out",
    )?;
    eq(
        c.get("/api/balance", Some(&token)).status,
        401,
        "revoked at once",
    )?;
    eq(
        c.get("/api/balance", Some(&other)).status,
        200,
        "the other session lives",
    )?;
    let third = c.session(ADMIN_TOKEN, &user);
    eq(
        c.post_json("/api/auth/signout-all", Some(&other), &json!({}))
            .json()["signed_out"]
            .as_i64(),
        Some(2),
        "everywhere",
    )?;
    eq(c.get("/api/balance", Some(&other)).status, 401, "this one")?;
    eq(
        c.get("/api/balance", Some(&third)).status,
        401,
        "and every other",
    )?;
    eq(
        c.post_json(
            "/admin/users",
            Some(&c.session(ADMIN_TOKEN, &user)),
            &json!({}),
        )
        .status,
        403,
        "a user token never reaches /admin/",
    )?;
    Ok(())
}

fn admin_and_files_are_guarded(stack: &Stack) -> Result<(), Failed> {
    let c = stack.client();
    let (user, token) = c.new_user(ADMIN_TOKEN, 0);
    eq(
        c.post_json("/admin/users", Some(&token), &json!({})).status,
        403,
        "user token on admin route",
    )?;
    eq(
        c.post_json("/admin/users", None, &json!({})).status,
        401,
        "no token on admin route",
    )?;
    eq(
        c.post_json("/admin/users", Some("guess"), &json!({}))
            .status,
        401,
        "wrong admin token",
    )?;
    let dup = c.post_json(
        "/admin/users",
        Some(ADMIN_TOKEN),
        &json!({"email": "dup@e2e.test", "name": "a"}),
    );
    let dup2 = c.post_json(
        "/admin/users",
        Some(ADMIN_TOKEN),
        &json!({"email": "dup@e2e.test", "name": "b"}),
    );
    eq(
        (dup.status, dup2.status),
        (201, 409),
        "duplicate email is a conflict",
    )?;
    eq(
        c.post_json(
            &format!("/admin/users/{user}/sessions"),
            Some(ADMIN_TOKEN),
            &json!({"ttl_secs": 5}),
        )
        .status,
        422,
        "ttl too short",
    )?;
    let extra = c.post_json(
        "/admin/users",
        Some(ADMIN_TOKEN),
        &json!({"email": "extra@e2e.test", "name": "x", "role": "admin"}),
    );
    eq(
        (
            extra.status,
            extra.code(),
            extra.json()["error"]["field"].as_str().map(str::to_owned),
        ),
        (422, "unknown_field".to_owned(), Some("role".to_owned())),
        "unknown admin field",
    )?;

    let exp = 4_000_000_000i64;
    let sig = shared::signing::file_signature(
        FILES_SIGNING_KEY.as_bytes(),
        "result/kie_4o/x/result_0.png",
        exp,
    );
    let tampered = c.get(
        &format!("/files/result/kie_4o/y/result_0.png?exp={exp}&sig={sig}"),
        None,
    );
    eq(tampered.status, 403, "signature for another key")?;
    let expired_sig = shared::signing::file_signature(
        FILES_SIGNING_KEY.as_bytes(),
        "result/kie_4o/x/result_0.png",
        1000,
    );
    eq(
        c.get(
            &format!("/files/result/kie_4o/x/result_0.png?exp=1000&sig={expired_sig}"),
            None,
        )
        .status,
        403,
        "expired",
    )?;
    eq(
        c.get("/files/result/kie_4o/x/result_0.png", None).status,
        403,
        "unsigned",
    )?;
    let health = c.get("/api/health", None);
    eq(health.status, 200, "health")?;
    eq(
        health.json()["checks"].clone(),
        json!({"d1": "ok", "r2": "ok", "kv": "ok", "queue": "ok"}),
        "all checks",
    )?;
    Ok(())
}

/// The routes the api worker registers, from its router's source, in OpenAPI form.
/// The api's source, every file: each module registers its own routes.
fn api_source() -> String {
    fn walk(dir: &std::path::Path, out: &mut String) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|x| x == "rs") {
                out.push_str(&std::fs::read_to_string(&path).unwrap_or_default());
            }
        }
    }
    let mut src = String::new();
    walk(&e2e::stack::root().join("api-worker/src"), &mut src);
    src
}

fn registered_routes() -> std::collections::BTreeSet<(String, String)> {
    let src = api_source();
    let mut routes = std::collections::BTreeSet::new();
    for method in ["get", "post", "put", "patch", "delete"] {
        for pattern in [format!(".{method}_async(\""), format!(".{method}(\"")] {
            for part in src.split(pattern.as_str()).skip(1) {
                let path = part.split('"').next().unwrap_or_default();
                if !path.starts_with('/') {
                    continue; // a header lookup, not a route
                }
                let openapi: Vec<String> = path
                    .split('/')
                    .map(
                        |seg| match seg.strip_prefix(':').or_else(|| seg.strip_prefix('*')) {
                            Some(name) => format!("{{{name}}}"),
                            None => seg.to_owned(),
                        },
                    )
                    .collect();
                routes.insert((method.to_owned(), openapi.join("/")));
            }
        }
    }
    routes
}

fn the_contract_matches_the_routes(stack: &Stack) -> Result<(), Failed> {
    let c = stack.client();
    let doc = c.get("/api/openapi.json", None);
    eq(doc.status, 200, "served")?;
    let doc = doc.json();
    eq(doc["openapi"].as_str(), Some("3.1.0"), "OpenAPI 3")?;
    let mut documented = std::collections::BTreeSet::new();
    for (path, item) in doc["paths"].as_object().cloned().unwrap_or_default() {
        for method in item
            .as_object()
            .map(|o| o.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_default()
        {
            documented.insert((method, path.clone()));
        }
    }
    let registered = registered_routes();
    ensure(
        registered.len() > 30,
        format!("the router's routes were read: {}", registered.len()),
    )?;
    let undocumented: Vec<_> = registered.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&registered).collect();
    ensure(
        undocumented.is_empty() && unserved.is_empty(),
        format!("routes without docs: {undocumented:?}; docs without routes: {unserved:?}"),
    )?;
    // every documented operation is routed, answers without a 5xx, and errors have one shape
    for (method, path) in &documented {
        let concrete = path
            .replace("{id}", "00000000-0000-4000-8000-000000000000")
            .replace("{n}", "0")
            .replace("{key}", "cache/x.png")
            .replace("{provider}", "kie_4o")
            .replace("{queue}", "tasks")
            .replace("{job}", "retention");
        let r = c.send(
            &method.to_uppercase(),
            &concrete,
            None,
            &[],
            if method == "post" {
                Some(("application/json", b"{}"))
            } else {
                None
            },
        );
        ensure(
            r.status < 500 || (path == "/api/health" && r.status == 503),
            format!("{method} {path}: {}", r.status),
        )?;
        ensure(
            !(r.status == 404 && r.json()["error"]["message"] == "route not found")
                && r.status != 405,
            format!("{method} {path} is routed"),
        )?;
        if r.status >= 400 {
            ensure(
                r.json()["error"]["code"].is_string() && r.json()["error"]["message"].is_string(),
                format!("{method} {path}: JSON error: {}", r.text()),
            )?;
        }
    }
    Ok(())
}

/// Property-based fuzzing of every documented operation with schemathesis, as a signed-in user:
/// no 5xx, and every response's status, content type and body conform to the document.
fn fuzzing_finds_nothing_the_contract_does_not_allow(stack: &Stack) -> Result<(), Failed> {
    let bin = e2e::fuzz::schemathesis()?;
    let c = stack.client();
    let (_, token) = c.new_user(ADMIN_TOKEN, 1000);
    let out = std::process::Command::new(bin)
        .args(["run", &format!("{}/api/openapi.json", stack.api), "--url", &stack.api])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args(["--checks", "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"])
        .args(["--exclude-path-regex", "^/api/auth/signout"])
        .args(["--max-examples", "15", "--generation-deterministic", "--workers", "1", "--request-timeout", "15"])
        .env("NO_COLOR", "1")
        .output()
        .map_err(|e| format!("schemathesis did not run: {e}"))?;
    let report = String::from_utf8_lossy(&out.stdout);
    let tail: Vec<&str> = report.lines().rev().take(40).collect();
    ensure(
        out.status.success(),
        format!(
            "schemathesis found problems:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ),
    )?;
    Ok(())
}

/// Settlement allocates in SQL (`ledger::ALLOCATION_SQL`, in the settle batch) as
/// `ledger::allocate` specifies: live grants by earliest expiry whatever order they were granted
/// in, grants without expiry after them, and a grant that lapsed while the task ran last.
fn settlement_draws_grants_in_allocation_order(stack: &Stack) -> Result<(), Failed> {
    let c = stack.client();
    let now = e2e::now_secs();
    let grant = |user: &str,
                 reference: &str,
                 credits: i64,
                 expires_at: Option<i64>|
     -> Result<String, Failed> {
        let r = c.post_json(
            &format!("/admin/users/{user}/grants"),
            Some(ADMIN_TOKEN),
            &json!({"credits": credits, "reference": reference, "expires_at": expires_at}),
        );
        eq(r.status, 201, &format!("grant {reference}: {}", r.text()))?;
        Ok(r.json()["id"].as_str().unwrap_or_default().to_owned())
    };
    let (a, token_a) = c.new_user(ADMIN_TOKEN, 0);
    let forever = grant(&a, "forever", 1, None)?;
    let lapsing = grant(&a, "lapsing", 5, Some(now + 4))?;
    let soon = grant(&a, "soon", 1, Some(now + 1000))?;
    let (b, token_b) = c.new_user(ADMIN_TOKEN, 0);
    let later = grant(&b, "later", 1, Some(now + 2000))?;
    let sooner = grant(&b, "sooner", 1, Some(now + 1000))?;
    grant(&b, "forever", 5, None)?;

    let a_task = tasks::submit(&c, &token_a, "allocation a [sim:slow=7000]", "kie_kontext");
    eq(a_task.status, 202, &a_task.text())?;
    let b_task = tasks::submit(&c, &token_b, "allocation b", "kie_4o");
    eq(b_task.status, 202, &b_task.text())?;
    let drawn = |token: &str, task: &Reply| -> Result<Vec<(String, i64)>, Failed> {
        let id = tasks::id(task);
        eq(
            c.wait_task(token, &id, WAIT)["status"].as_str(),
            Some("completed"),
            "completed",
        )?;
        let detail = c
            .get(&format!("/admin/tasks/{id}"), Some(ADMIN_TOKEN))
            .json();
        let mut rows: Vec<(String, i64)> = detail["consumptions"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|r| {
                (
                    r["from_record_id"].as_str().unwrap_or_default().to_owned(),
                    r["amount"].as_i64().unwrap_or(0),
                )
            })
            .collect();
        rows.sort();
        Ok(rows)
    };
    let mut want_a = vec![(soon, 1), (forever, 1), (lapsing, 1)];
    want_a.sort();
    eq(
        drawn(&token_a, &a_task)?,
        want_a,
        "a: expiring, then permanent, then the grant that lapsed while the task ran",
    )?;
    let mut want_b = vec![(sooner, 1), (later, 1)];
    want_b.sort();
    eq(
        drawn(&token_b, &b_task)?,
        want_b,
        "b: earliest expiry first, never the permanent grant",
    )?;
    eq(c.balance(&token_b), 5, "b keeps the permanent grant")?;
    Ok(())
}

/// The `task.submit` messages of one batch claim their tasks in one D1 round trip and record the
/// providers' ids in another (`consumer-worker/src/group.rs`): ten tasks submitted at once cost
/// the consumer far fewer than the twenty round trips they would alone, and each completes.
fn submits_in_one_batch_share_their_writes(stack: &Stack) -> Result<(), Failed> {
    const N: usize = 10;
    let c = stack.client();
    let (_, token) = c.new_user(ADMIN_TOKEN, 2 * N as i64);
    let ids: Vec<String> = (0..N)
        .map(|i| tasks::submitted(&c, &token, &format!("grouped {i}"), "kie_4o"))
        .collect();
    for id in &ids {
        eq(
            c.wait_task(&token, id, WAIT)["status"].as_str(),
            Some("completed"),
            &format!("task {id}"),
        )?;
    }
    let submit_lines: Vec<Value> = stack
        .events(Some("message"))
        .into_iter()
        .filter(|m| {
            m["type"] == "task.submit"
                && m["task_id"]
                    .as_str()
                    .is_some_and(|t| ids.iter().any(|i| i == t))
        })
        .collect();
    eq(submit_lines.len(), N, "one task.submit line per task")?;
    // A grouped round trip is counted on the line of the message that sent it, which may be
    // another case's (the suite's cases run at once): these lines can only count fewer. Alone,
    // each task's claim and accept are two round trips.
    let round_trips: u64 = submit_lines
        .iter()
        .filter_map(|m| m["io"]["d1_round_trips"].as_u64())
        .sum();
    println!("FIGURE {N} submits: {round_trips} D1 round trips on their task.submit lines");
    ensure(
        round_trips < 2 * N as u64,
        format!("claims and accepts grouped per batch: {round_trips} round trips for {N} tasks"),
    )?;
    eq(c.balance(&token), 0, "each charged once")?;
    Ok(())
}

fn main() {
    e2e::suite::run(
        StackOptions::default(),
        |_| {},
        e2e::cases![
            golden_path_4o,
            submits_in_one_batch_share_their_writes,
            kontext_with_upload,
            sizes_are_checked_per_model,
            failed_generation_restores_balance,
            settlement_draws_grants_in_allocation_order,
            idempotent_submit,
            short_balance_is_402_and_writes_nothing,
            other_users_tasks_are_404,
            bad_input_gets_json_4xx,
            listing_is_newest_first_and_paginated,
            admin_and_files_are_guarded,
            tokens_are_checked_and_revocable,
            the_contract_matches_the_routes,
            fuzzing_finds_nothing_the_contract_does_not_allow
        ],
    )
}
