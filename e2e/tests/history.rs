//! The user's side of results (issue 13), end to end over HTTP on the real local stack: shares
//! (public reads that count views, revocation and how fast it bites), lasting image links (no
//! token, ETag/304, ranges, the provider fallback when the stored object is missing), deleting
//! history (R2 objects go, ledger rows and the balance stay, running tasks refused), syncing
//! history with tombstones and cursors, and `GET /api/me`. Prints the figures the issue asks
//! for: round trips per share read and per image-link read, and the time from a revoke to the
//! first refused read.

use e2e::check::{ensure, eq};
use e2e::client::{multipart, Client, Reply};
use e2e::stack::{free_port, Seed, Stack, StackOptions, ADMIN_TOKEN};
use e2e::tasks;
use libtest_mimic::Failed;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);

/// Owns the seeded tasks whose stored objects are missing.
const SEED_USER: &str = "44444444-4444-4444-8444-444444444444";
/// Completed, its R2 object missing, its provider URL alive.
const FALLBACK_TASK: &str = "f0f0f0f0-0000-4000-8000-000000000001";
/// Completed, its R2 object missing, its provider URL expired.
const EXPIRED_TASK: &str = "f0f0f0f0-0000-4000-8000-000000000002";
/// A dead letter past retention with a body in R2, and a recent one.
const OLD_DEAD_LETTER: &str = "dl_history_old";
const NEW_DEAD_LETTER: &str = "dl_history_new";

/// A stand-in for the provider's result host: `/provider/ok/0.png` serves an image, anything
/// else is 404 (an expired URL). Counts the requests it answered with the image.
struct Provider {
    served: AtomicU64,
}

static PROVIDER: OnceLock<Provider> = OnceLock::new();

fn provider_png() -> Vec<u8> {
    sim::result_png("the provider's copy", 0)
}

fn start_provider() -> Result<u16, String> {
    let port = free_port()?;
    let listener = TcpListener::bind(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    let _ = PROVIDER.set(Provider {
        served: AtomicU64::new(0),
    });
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&got);
                let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
                let reply = if path == "/provider/ok/0.png" {
                    if let Some(p) = PROVIDER.get() {
                        p.served.fetch_add(1, Ordering::SeqCst);
                    }
                    let png = provider_png();
                    let mut r = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: image/png\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        png.len()
                    )
                    .into_bytes();
                    r.extend_from_slice(&png);
                    r
                } else {
                    b"HTTP/1.1 404 Not Found\r\ncontent-type: text/plain\r\ncontent-length: 7\r\nconnection: close\r\n\r\nexpired"
                        .to_vec()
                };
                let _ = conn.write_all(&reply);
            });
        }
    });
    Ok(port)
}

fn seed(s: &Seed, provider_port: u16) -> Result<(), String> {
    let now = "CAST(strftime('%s','now') AS INTEGER)";
    let task = |id: &str, url_path: &str| {
        format!(
            "INSERT INTO ai_tasks (id, task_no, user_id, status, input_params, external_provider, external_task_id, cost,
                                   result_keys, result_urls, deadline_at, created_at, updated_at, submitted_at, completed_at)
             VALUES ('{id}', 'T-{id}', '{SEED_USER}', 'completed',
                     '{{\"prompt\":\"seeded {id}\",\"model\":\"kie_4o\",\"size\":\"1:1\",\"images\":[]}}', 'kie_4o', 'ext-{id}', 2,
                     '[\"result/kie_4o/{id}/result_0.png\"]', '[\"http://127.0.0.1:{provider_port}{url_path}\"]',
                     {now} + 900, {now} - 60, {now} - 60, {now} - 60, {now} - 60);"
        )
    };
    s.d1(&format!(
        "INSERT INTO users (id, email, name, credits, created_at, updated_at)
           VALUES ('{SEED_USER}', 'history-seed@e2e.test', 'Seeded', 0, 0, 0);
         {}
         {}
         INSERT INTO dead_letters (id, source_queue, message_id, message_type, body, body_r2_key, attempts, first_failed_at, last_failed_at, status)
           VALUES ('{OLD_DEAD_LETTER}', 'edgeline-tasks', 'm-hist-old', 'task.poll', NULL, 'dead-letters/{OLD_DEAD_LETTER}.json', 9,
                   {now} - 40 * 86400, {now} - 40 * 86400, 'discarded'),
                  ('{NEW_DEAD_LETTER}', 'edgeline-tasks', 'm-hist-new', 'task.poll', NULL, 'dead-letters/{NEW_DEAD_LETTER}.json', 9,
                   {now} - 86400, {now} - 86400, 'discarded');",
        task(FALLBACK_TASK, "/provider/ok/0.png"),
        task(EXPIRED_TASK, "/provider/expired/0.png"),
    ))?;
    let body = br#"{"v":1,"type":"task.poll","padding":"a large body kept in R2"}"#.to_vec();
    s.r2(
        &[
            (format!("dead-letters/{OLD_DEAD_LETTER}.json"), body.clone()),
            (format!("dead-letters/{NEW_DEAD_LETTER}.json"), body),
        ],
        "application/json",
    )
}

fn str_of(v: &Value, pointer: &str) -> String {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// Submits a task and waits for it to end.
fn run_task(c: &Client, token: &str, prompt: &str, model: &str) -> Result<Value, Failed> {
    let r = tasks::submit(c, token, prompt, model);
    eq(r.status, 202, &format!("submit {}", r.text()))?;
    let id = tasks::id(&r);
    Ok(c.wait_task(token, &id, WAIT))
}

fn completed(c: &Client, token: &str, prompt: &str) -> Result<(String, Value), Failed> {
    let task = run_task(c, token, prompt, "kie_4o")?;
    eq(
        task["status"].as_str(),
        Some("completed"),
        &format!("completed: {task}"),
    )?;
    Ok((str_of(&task, "/id"), task))
}

fn share(c: &Client, token: &str, task: &str) -> Reply {
    c.post_json(
        &format!("/api/tasks/{task}/shares"),
        Some(token),
        &json!({}),
    )
}

/// The api's request log lines for `method` and paths `path_matches` accepts, once at least
/// `want` are in the log (workers' logs reach the file a moment after the response).
fn requests(
    stack: &Stack,
    method: &str,
    path_matches: impl Fn(&str) -> bool,
    want: usize,
) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let found: Vec<Value> = stack
            .events(Some("http"))
            .into_iter()
            .filter(|e| e["method"] == method && path_matches(e["path"].as_str().unwrap_or("")))
            .collect();
        if found.len() >= want || started.elapsed() > Duration::from_secs(10) {
            return found;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Prints the figure `what`: mean D1 round trips, R2 and KV calls and fetches per request.
fn figure(what: &str, lines: &[Value]) {
    let n = lines.len().max(1) as f64;
    let sum = |k: &str| {
        lines
            .iter()
            .map(|l| l["io"][k].as_f64().unwrap_or(0.0))
            .sum::<f64>()
            / n
    };
    println!(
        "FIGURE {what}: {:.2} D1 round trips, {:.2} R2 calls, {:.2} KV calls, {:.2} fetches (mean of {} requests)",
        sum("d1_round_trips"),
        sum("r2"),
        sum("kv"),
        sum("fetch"),
        lines.len()
    );
}

fn no_user_data(text: &str, user_id: &str, task_id: &str) -> Result<(), Failed> {
    for secret in [user_id, task_id, "@e2e.test", "result/", "user_id", "email"] {
        ensure(
            !text.contains(secret),
            format!("a public share shows {secret}: {text}"),
        )?;
    }
    Ok(())
}

/// A share is read without a token (prompt, model, time, image links; no user data) and counts
/// its views; its images come with validators; revoking it refuses the next read.
fn shares_are_public_count_views_and_revoke_at_once(stack: &Stack) -> Result<(), Failed> {
    let c = stack.client();
    let (user_id, token) = c.new_user(ADMIN_TOKEN, 10);
    let prompt = "history: a shared lighthouse";
    let (task_id, _) = completed(&c, &token, prompt)?;

    let made = share(&c, &token, &task_id);
    eq(made.status, 201, &format!("share: {}", made.text()))?;
    let made = made.json();
    let share_id = str_of(&made, "/id");
    let public = str_of(&made, "/url");
    ensure(
        public.ends_with(&format!("/api/shares/{share_id}")),
        format!("share url: {made}"),
    )?;
    eq(made["view_count"].as_i64(), Some(0), "no views yet")?;

    for i in 0..3 {
        let r = c.get(&public, None);
        eq(r.status, 200, &format!("public read {i}: {}", r.text()))?;
        let v = r.json();
        eq(v["prompt"].as_str(), Some(prompt), "prompt")?;
        eq(v["model"].as_str(), Some("kie_4o"), "model")?;
        ensure(v["created_at"].is_i64() && v["shared_at"].is_i64(), "times")?;
        eq(v["images"].as_array().map(Vec::len), Some(1), "one image")?;
        no_user_data(&r.text(), &user_id, &task_id)?;
    }

    // its image: no token, the stored bytes, validators, ranges
    let image = str_of(&made, "/images/0/url");
    let img = c.get(&image, None);
    eq(img.status, 200, &format!("share image: {}", img.text()))?;
    ensure(img.body == sim::result_png(prompt, 0), "the stored bytes")?;
    eq(
        img.header("content-type"),
        Some("image/png"),
        "content type",
    )?;
    let etag = img.header("etag").unwrap_or_default().to_owned();
    ensure(!etag.is_empty(), "an etag")?;
    ensure(
        img.header("cache-control")
            .is_some_and(|v| v.contains("no-cache")),
        "revalidated on every display",
    )?;
    let again = c.send("GET", &image, None, &[("if-none-match", &etag)], None);
    eq(again.status, 304, "if-none-match")?;
    let part = c.send("GET", &image, None, &[("range", "bytes=0-3")], None);
    ensure(
        part.status == 206 && part.body == img.body[..4],
        format!("a range: {}", part.status),
    )?;

    // the owner sees the views (counted in the isolate, written before the list is read)
    let started = Instant::now();
    loop {
        let listed = c.get("/api/shares", Some(&token));
        eq(listed.status, 200, &listed.text())?;
        let views = listed.json()["shares"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["id"] == share_id.as_str()).cloned())
            .map(|s| s["view_count"].as_i64().unwrap_or(-1));
        if views == Some(3) {
            break;
        }
        ensure(
            started.elapsed() < Duration::from_secs(15),
            format!("three views counted, got {views:?}"),
        )?;
        std::thread::sleep(Duration::from_millis(300));
    }

    // another user can neither revoke it nor share the task
    let (_, other) = c.new_user(ADMIN_TOKEN, 0);
    eq(
        c.delete(&format!("/api/shares/{share_id}"), Some(&other))
            .status,
        404,
        "another user's revoke",
    )?;
    eq(
        share(&c, &other, &task_id).status,
        404,
        "another user's share",
    )?;
    eq(c.get(&public, None).status, 200, "still shared")?;

    // revoke, then read until refused
    let revoke_sent = Instant::now();
    let revoked = c.delete(&format!("/api/shares/{share_id}"), Some(&token));
    let revoke_ms = revoke_sent.elapsed().as_secs_f64() * 1000.0;
    eq(revoked.status, 200, &revoked.text())?;
    let mut reads = 0;
    let refused_after = loop {
        reads += 1;
        let r = c.get(&public, None);
        if r.status == 404 {
            eq(r.code(), "not_found".to_owned(), "a JSON 404")?;
            break revoke_sent.elapsed();
        }
        ensure(
            revoke_sent.elapsed() < Duration::from_secs(90),
            "refused within KV's propagation window",
        )?;
        std::thread::sleep(Duration::from_millis(50));
    };
    println!(
        "FIGURE revoke -> first refused read: {:.1} ms after the revoke was sent (the revoke itself took {revoke_ms:.1} ms; {reads} read(s))",
        refused_after.as_secs_f64() * 1000.0
    );
    eq(reads, 1, "refused at once where the revoke landed")?;
    eq(c.get(&image, None).status, 404, "its image too")?;
    eq(
        c.delete(&format!("/api/shares/{share_id}"), Some(&token))
            .status,
        404,
        "revoked once",
    )?;
    ensure(
        !c.get("/api/shares", Some(&token))
            .text()
            .contains(&share_id),
        "gone from the owner's list",
    )?;

    let reads = requests(stack, "GET", |p| p == format!("/api/shares/{share_id}"), 4);
    let served: Vec<Value> = reads.into_iter().filter(|l| l["status"] == 200).collect();
    figure("per share read (GET /api/shares/{id}, 200)", &served);
    let images = requests(
        stack,
        "GET",
        |p| p.starts_with(&format!("/api/shares/{share_id}/images/")),
        3,
    );
    let served: Vec<Value> = images.into_iter().filter(|l| l["status"] == 200).collect();
    figure("per share image read (200)", &served);
    Ok(())
}

/// Shares of another user's task, of a failed one, of a running one and of a deleted one are
/// refused with JSON errors.
fn shares_of_what_cannot_be_shared_are_refused(stack: &Stack) -> Result<(), Failed> {
    let c = stack.client();
    let (_, token) = c.new_user(ADMIN_TOKEN, 20);
    let failed = run_task(&c, &token, "history: refused share [sim:fail]", "kie_4o")?;
    eq(failed["status"].as_str(), Some("failed"), "failed")?;
    let r = share(&c, &token, &str_of(&failed, "/id"));
    eq(
        (r.status, r.code()),
        (409, "task_failed".to_owned()),
        "a failed task",
    )?;

    let running = tasks::submit(
        &c,
        &token,
        "history: still running [sim:slow=6000]",
        "kie_4o",
    );
    eq(running.status, 202, "submit")?;
    let running_id = tasks::id(&running);
    let r = share(&c, &token, &running_id);
    eq(
        (r.status, r.code()),
        (409, "task_not_completed".to_owned()),
        "a running task",
    )?;

    let (_, other) = c.new_user(ADMIN_TOKEN, 10);
    let (theirs, _) = completed(&c, &other, "history: not yours")?;
    eq(
        share(&c, &token, &theirs).status,
        404,
        "another user's task",
    )?;

    let (gone, _) = completed(&c, &token, "history: deleted before sharing")?;
    eq(
        c.delete(&format!("/api/tasks/{gone}"), Some(&token)).status,
        200,
        "delete",
    )?;
    eq(share(&c, &token, &gone).status, 404, "a deleted task")?;

    let bad = share(&c, &token, "not-a-uuid");
    eq(
        (bad.status, bad.code()),
        (400, "invalid_id".to_owned()),
        "a bad id",
    )?;
    eq(
        c.get("/api/shares/not-a-uuid", None).code(),
        "invalid_id".to_owned(),
        "a bad share id",
    )?;
    eq(
        c.get("/api/shares/00000000-0000-4000-8000-000000000000", None)
            .status,
        404,
        "no such share",
    )?;
    eq(
        c.post_json(&format!("/api/tasks/{theirs}/shares"), None, &json!({}))
            .status,
        401,
        "sharing needs a token",
    )?;
    c.wait_task(&token, &running_id, WAIT);
    Ok(())
}

/// The lasting link of a result serves an `<img>`-style fetch (no Authorization) with validators
/// and ranges; it cannot be moved to another index or forged.
fn lasting_links_serve_images_without_a_token(stack: &Stack) -> Result<(), Failed> {
    let c = stack.client();
    let (_, token) = c.new_user(ADMIN_TOKEN, 10);
    let prompt = "history: a lasting link";
    let (task_id, task) = completed(&c, &token, prompt)?;
    let link = str_of(&task, "/results/0/link");
    ensure(
        link.contains(&format!("/api/images/{task_id}/0?sig=")),
        format!("a lasting link in the task view: {task}"),
    )?;
    ensure(!link.contains("exp="), "it does not expire")?;
    let listed = c.get("/api/tasks?limit=100", Some(&token)).json();
    let in_list = listed["tasks"]
        .as_array()
        .and_then(|a| a.iter().find(|t| t["id"] == task_id.as_str()).cloned())
        .map(|t| str_of(&t, "/results/0/link"));
    eq(
        in_list.as_deref(),
        Some(link.as_str()),
        "the list has the same link",
    )?;

    let img = c.send("GET", &link, None, &[("accept", "image/*")], None);
    eq(img.status, 200, &format!("img fetch: {}", img.text()))?;
    ensure(img.body == sim::result_png(prompt, 0), "the stored bytes")?;
    eq(
        img.header("content-type"),
        Some("image/png"),
        "content type",
    )?;
    eq(img.header("accept-ranges"), Some("bytes"), "ranges")?;
    ensure(
        img.header("cache-control")
            .is_some_and(|v| v.contains("max-age")),
        "cacheable",
    )?;
    let etag = img.header("etag").unwrap_or_default().to_owned();
    ensure(!etag.is_empty(), "an etag")?;
    let cached = c.send("GET", &link, None, &[("if-none-match", &etag)], None);
    ensure(
        cached.status == 304 && cached.body.is_empty(),
        format!("if-none-match: {}", cached.status),
    )?;
    let part = c.send("GET", &link, None, &[("range", "bytes=0-9")], None);
    ensure(part.status == 206 && part.body == img.body[..10], "a range")?;
    let past = c.send("GET", &link, None, &[("range", "bytes=99999999-")], None);
    eq(
        (past.status, past.code()),
        (416, "range_not_satisfiable".to_owned()),
        "past the end",
    )?;

    let moved = link.replace(&format!("/{task_id}/0?"), &format!("/{task_id}/1?"));
    eq(
        c.get(&moved, None).status,
        404,
        "another index with this signature",
    )?;
    let sig = link.rsplit("sig=").next().unwrap_or_default().to_owned();
    let flipped: String = sig
        .chars()
        .enumerate()
        .map(|(i, ch)| {
            if i == 0 {
                if ch == 'a' {
                    'b'
                } else {
                    'a'
                }
            } else {
                ch
            }
        })
        .collect();
    eq(
        c.get(&link.replace(&sig, &flipped), None).status,
        404,
        "a forged signature",
    )?;
    eq(
        c.get(&format!("/api/images/{task_id}/0"), None).status,
        404,
        "no signature",
    )?;

    let reads = requests(stack, "GET", |p| p == format!("/api/images/{task_id}/0"), 6);
    let served: Vec<Value> = reads
        .iter()
        .filter(|l| l["status"] == 200 || l["status"] == 206)
        .cloned()
        .collect();
    figure("per image-link read (200/206)", &served);
    let revalidated: Vec<Value> = reads.into_iter().filter(|l| l["status"] == 304).collect();
    figure("per image-link revalidation (304)", &revalidated);
    Ok(())
}

/// A result whose stored object is missing is served from the provider's URL while it is valid
/// (proxied, logged); an expired provider URL is a 404.
fn a_missing_object_falls_back_to_the_provider(stack: &Stack) -> Result<(), Failed> {
    let c = stack.client();
    let token = c.session(ADMIN_TOKEN, SEED_USER);
    let provider = PROVIDER.get().ok_or("the provider stand-in runs")?;
    let before = provider.served.load(Ordering::SeqCst);

    let task = c.get(&format!("/api/tasks/{FALLBACK_TASK}"), Some(&token));
    eq(task.status, 200, &task.text())?;
    let link = str_of(&task.json(), "/results/0/link");
    let img = c.get(&link, None);
    eq(img.status, 200, &format!("fallback: {}", img.text()))?;
    ensure(img.body == provider_png(), "the provider's bytes")?;
    eq(
        img.header("content-type"),
        Some("image/png"),
        "its content type",
    )?;
    eq(
        img.header("x-edgeline-source"),
        Some("provider"),
        "marked as the provider's copy",
    )?;
    ensure(
        provider.served.load(Ordering::SeqCst) > before,
        "proxied from the provider's URL",
    )?;

    // a share of it falls back the same way
    let made = share(&c, &token, FALLBACK_TASK);
    eq(made.status, 201, &made.text())?;
    let shared = c.get(&str_of(&made.json(), "/images/0/url"), None);
    ensure(
        shared.status == 200 && shared.body == provider_png(),
        format!("share fallback: {}", shared.status),
    )?;

    let expired = c.get(&format!("/api/tasks/{EXPIRED_TASK}"), Some(&token));
    let dead = c.get(&str_of(&expired.json(), "/results/0/link"), None);
    eq(
        (dead.status, dead.code()),
        (404, "not_found".to_owned()),
        "an expired provider URL",
    )?;

    let started = Instant::now();
    loop {
        let logged: Vec<Value> = stack.events(Some("link.fallback"));
        let proxied = logged
            .iter()
            .any(|e| e["task_id"] == FALLBACK_TASK && e["outcome"] == "proxied");
        let refused = logged
            .iter()
            .any(|e| e["task_id"] == EXPIRED_TASK && e["outcome"] == "provider_url_dead");
        if proxied && refused {
            break;
        }
        ensure(
            started.elapsed() < Duration::from_secs(10),
            format!("fallbacks logged: {logged:?}"),
        )?;
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// Deleting a task removes its results and uploads from R2, hides it everywhere, revokes its
/// shares and links, and keeps its ledger rows and the balance.
fn deleting_removes_objects_and_keeps_the_ledger(stack: &Stack) -> Result<(), Failed> {
    let c = stack.client();
    let (_, token) = c.new_user(ADMIN_TOKEN, 10);
    let prompt = "history: deleted with its upload";
    let input = sim::result_png("history input", 0);
    let (ct, body) = multipart(
        &[("prompt", prompt), ("model", "kie_kontext")],
        &[("file", "me.png", "image/png", &input)],
    );
    let r = c.send("POST", "/api/tasks", Some(&token), &[], Some((&ct, &body)));
    eq(r.status, 202, &r.text())?;
    let id = str_of(&r.json(), "/id");
    let task = c.wait_task(&token, &id, WAIT);
    eq(task["status"].as_str(), Some("completed"), "completed")?;
    let balance = c.balance(&token);
    eq(balance, 7, "charged once")?;
    let link = str_of(&task, "/results/0/link");
    let made = share(&c, &token, &id).json();
    let public = str_of(&made, "/url");
    let upload = stack
        .sim
        .stats()
        .inputs_by_prompt
        .get(prompt)
        .and_then(|u| u.first().cloned())
        .ok_or("the provider got the upload")?;
    eq(c.get(&upload, None).status, 200, "the upload is stored")?;
    let admin_view = |what: &str| {
        c.get(&format!("/admin/tasks/{id}"), Some(ADMIN_TOKEN))
            .json()[what]
            .clone()
    };
    eq(
        admin_view("objects").as_array().map(Vec::len),
        Some(1),
        "its result in R2",
    )?;

    let deleted = c.delete(&format!("/api/tasks/{id}"), Some(&token));
    eq(deleted.status, 200, &deleted.text())?;
    let d = deleted.json();
    eq(d["shares_revoked"].as_i64(), Some(1), "its share revoked")?;
    eq(
        d["objects_removed"].as_i64(),
        Some(2),
        "result and upload removed",
    )?;

    eq(
        c.get(&format!("/api/tasks/{id}"), Some(&token)).status,
        404,
        "read",
    )?;
    eq(
        c.get(&format!("/api/tasks/{id}/results/0"), Some(&token))
            .status,
        404,
        "result",
    )?;
    ensure(
        !c.get("/api/tasks?limit=100", Some(&token))
            .text()
            .contains(&id),
        "hidden from the list",
    )?;
    eq(c.get(&link, None).status, 404, "its lasting link")?;
    eq(c.get(&public, None).status, 404, "its share")?;
    eq(
        c.get(&upload, None).status,
        404,
        "the upload is gone from R2",
    )?;
    eq(
        admin_view("objects").as_array().map(Vec::len),
        Some(0),
        "the result is gone from R2",
    )?;
    let kinds: BTreeSet<String> = admin_view("ledger")
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|r| str_of(r, "/type"))
        .collect();
    eq(
        kinds,
        ["consumption", "release", "reserve"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
        "every ledger row kept",
    )?;
    eq(c.balance(&token), balance, "the balance is unchanged")?;
    let me = c.get("/api/me", Some(&token)).json();
    eq(
        me["credits_spent"].as_i64(),
        Some(3),
        "what it cost is still spent",
    )?;
    eq(
        me["tasks"]["deleted"].as_i64(),
        Some(1),
        "counted as deleted",
    )?;
    eq(
        c.delete(&format!("/api/tasks/{id}"), Some(&token)).status,
        404,
        "deleted once",
    )?;
    let (_, other) = c.new_user(ADMIN_TOKEN, 10);
    let (theirs, _) = completed(&c, &other, "history: someone else's")?;
    eq(
        c.delete(&format!("/api/tasks/{theirs}"), Some(&token))
            .status,
        404,
        "another user's task",
    )?;
    eq(
        c.get(&format!("/api/tasks/{theirs}"), Some(&other)).status,
        200,
        "still theirs",
    )?;
    Ok(())
}

/// A running task cannot be deleted: 409 until it ends (its hold is settled as usual), then it
/// can; bulk delete reports it as running.
fn a_running_task_is_deleted_only_once_it_ends(stack: &Stack) -> Result<(), Failed> {
    let c = stack.client();
    let (_, token) = c.new_user(ADMIN_TOKEN, 10);
    let r = tasks::submit(&c, &token, "history: slow [sim:slow=8000]", "kie_4o");
    eq(r.status, 202, "submit")?;
    let id = tasks::id(&r);
    let refused = c.delete(&format!("/api/tasks/{id}"), Some(&token));
    eq(
        (refused.status, refused.code()),
        (409, "task_running".to_owned()),
        "running",
    )?;
    let (done, _) = completed(&c, &token, "history: done before the bulk")?;
    let missing = "00000000-0000-4000-8000-00000000abcd";
    let bulk = c.post_json(
        "/api/tasks/delete",
        Some(&token),
        &json!({"ids": [id, done, missing]}),
    );
    eq(bulk.status, 200, &bulk.text())?;
    let b = bulk.json();
    eq(b["deleted"].clone(), json!([done]), "the ended one")?;
    eq(
        b["running"].clone(),
        json!([id]),
        "the running one, untouched",
    )?;
    eq(b["not_found"].clone(), json!([missing]), "the missing one")?;
    let task = c.wait_task(&token, &id, WAIT);
    eq(
        task["status"].as_str(),
        Some("completed"),
        "it ran to the end",
    )?;
    eq(c.balance(&token), 6, "both charged once, nothing lost")?;
    let ok = c.delete(&format!("/api/tasks/{id}"), Some(&token));
    eq(
        ok.status,
        200,
        &format!("deleted once ended: {}", ok.text()),
    )?;
    eq(c.balance(&token), 6, "deleting moved no credits")?;

    // bulk input is checked
    for (body, what) in [
        (json!({}), "no ids"),
        (json!({"ids": []}), "empty"),
        (json!({"ids": ["nope"]}), "not an id"),
        (json!({"ids": [missing], "all": true}), "an unknown field"),
    ] {
        let r = c.post_json("/api/tasks/delete", Some(&token), &body);
        eq(
            (
                r.status,
                r.json()["error"]["field"].as_str().map(str::to_owned),
            ),
            (422, Some("ids".to_owned())),
            what,
        )?;
    }
    Ok(())
}

/// The sync feed: a second device follows cursors page by page, then, after changes elsewhere
/// (a delete, a new task), gets exactly what changed, the deletion as a tombstone, and ends up
/// with what the first device sees.
fn a_second_device_converges_through_the_sync_feed(stack: &Stack) -> Result<(), Failed> {
    let c = stack.client();
    let (_, token) = c.new_user(ADMIN_TOKEN, 20);
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(completed(&c, &token, &format!("history: synced {i}"))?.0);
    }
    // device B: everything, two at a time
    let mut device: BTreeMap<String, Value> = BTreeMap::new();
    let sync = |device: &mut BTreeMap<String, Value>, first: &str| -> Result<String, Failed> {
        let mut url = first.to_owned();
        for _ in 0..50 {
            let r = c.get(&url, Some(&token));
            eq(r.status, 200, &format!("sync {url}: {}", r.text()))?;
            let page = r.json();
            for t in page["tasks"].as_array().cloned().unwrap_or_default() {
                device.insert(str_of(&t, "/id"), t);
            }
            let next = str_of(&page, "/next_cursor");
            ensure(!next.is_empty(), "a cursor to continue from")?;
            if page["more"] != true {
                return Ok(next);
            }
            url = format!("/api/tasks?cursor={next}&limit=2");
        }
        Err("the feed never ended".into())
    };
    let cursor = sync(&mut device, "/api/tasks?updated_since=0&limit=2")?;
    for id in &ids {
        ensure(
            device.get(id).is_some_and(|t| t["status"] == "completed"),
            format!("device has {id}"),
        )?;
    }
    ensure(
        device.values().all(|t| t["results"][0]["link"].is_string()),
        "with lasting links",
    )?;

    // changes on device A
    let since = e2e::now_secs() - 1;
    eq(
        c.delete(&format!("/api/tasks/{}", ids[0]), Some(&token))
            .status,
        200,
        "delete",
    )?;
    let (fresh, _) = completed(&c, &token, "history: made after the first sync")?;

    let mut changed: BTreeMap<String, Value> = BTreeMap::new();
    sync(&mut changed, &format!("/api/tasks?cursor={cursor}&limit=2"))?;
    let tomb = changed.get(&ids[0]).cloned().unwrap_or(Value::Null);
    eq(
        tomb["deleted"].as_bool(),
        Some(true),
        &format!("a tombstone: {tomb}"),
    )?;
    ensure(
        tomb["updated_at"].is_i64() && tomb.get("prompt").is_none(),
        "only id, deleted, updated_at",
    )?;
    ensure(
        changed
            .get(&fresh)
            .is_some_and(|t| t["status"] == "completed"),
        "the new task",
    )?;
    for (id, t) in changed {
        device.insert(id, t);
    }
    let live: BTreeSet<String> = device
        .iter()
        .filter(|(_, t)| t["deleted"] != true)
        .map(|(id, _)| id.clone())
        .collect();
    let seen_by_a: BTreeSet<String> = c.get("/api/tasks?limit=100", Some(&token)).json()["tasks"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|t| str_of(t, "/id"))
        .collect();
    eq(live, seen_by_a, "device B converged on what device A sees")?;

    // updated_since alone returns the tombstone too; the future returns nothing
    let recent = c
        .get(
            &format!("/api/tasks?updated_since={since}&limit=500"),
            Some(&token),
        )
        .json();
    ensure(
        recent["tasks"].as_array().is_some_and(|a| {
            a.iter()
                .any(|t| t["id"] == ids[0].as_str() && t["deleted"] == true)
        }),
        format!("updated_since has the tombstone: {recent}"),
    )?;
    let future = c
        .get(
            &format!("/api/tasks?updated_since={}", since + 100_000),
            Some(&token),
        )
        .json();
    eq(
        future["tasks"].as_array().map(Vec::len),
        Some(0),
        "nothing from the future",
    )?;
    for (bad, code) in [
        (
            "/api/tasks?updated_since=yesterday",
            "invalid_updated_since",
        ),
        ("/api/tasks?updated_since=-5", "invalid_updated_since"),
        ("/api/tasks?updated_since=0&limit=501", "invalid_limit"),
        ("/api/tasks?updated_since=0&cursor=nope", "invalid_cursor"),
    ] {
        let r = c.get(bad, Some(&token));
        eq((r.status, r.code()), (400, code.to_owned()), bad)?;
    }
    // another user's feed has none of it
    let (_, other) = c.new_user(ADMIN_TOKEN, 0);
    let theirs = c.get("/api/tasks?updated_since=0", Some(&other)).json();
    eq(
        theirs["tasks"].as_array().map(Vec::len),
        Some(0),
        "per user",
    )?;
    Ok(())
}

/// `GET /api/me`: counts, spending, and a statement whose entries add up to the balance.
fn me_adds_up(stack: &Stack) -> Result<(), Failed> {
    let c = stack.client();
    let (user_id, token) = c.new_user(ADMIN_TOKEN, 10);
    completed(&c, &token, "history: me one")?;
    completed(&c, &token, "history: me two")?;
    let failed = run_task(&c, &token, "history: me fails [sim:fail]", "kie_4o")?;
    eq(failed["status"].as_str(), Some("failed"), "failed")?;
    // a promo granted after the tasks, left to lapse unspent: the statement shows its expiry
    let now = e2e::now_secs();
    let g = c.post_json(
        &format!("/admin/users/{user_id}/grants"),
        Some(ADMIN_TOKEN),
        &json!({"credits": 3, "reference": "history-promo", "expires_at": now + 2}),
    );
    eq(g.status, 201, &g.text())?;
    std::thread::sleep(Duration::from_secs(4));

    let me = c.get("/api/me?ledger_limit=2", Some(&token));
    eq(me.status, 200, &me.text())?;
    let me = me.json();
    eq(str_of(&me, "/user/id"), user_id.clone(), "profile")?;
    ensure(str_of(&me, "/user/email").contains("@e2e.test"), "email")?;
    let balance = c.balance(&token);
    eq(
        me["balance"].as_i64(),
        Some(balance),
        "the ledger's balance",
    )?;
    eq(
        me["tasks"].clone(),
        json!({"total": 3, "completed": 2, "failed": 1, "running": 0, "deleted": 0}),
        "task counts",
    )?;
    eq(me["credits_spent"].as_i64(), Some(4), "two kie_4o tasks")?;
    eq(balance, 6, "10 - 2 - 2, and the promo lapsed")?;
    eq(me["subscription"].clone(), Value::Null, "no subscription")?;

    // every page of the statement
    let mut entries: Vec<Value> = me["ledger"]["entries"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    eq(entries.len(), 2, "a page of two")?;
    let mut cursor = str_of(&me, "/ledger/next_cursor");
    let mut pages = 1;
    while !cursor.is_empty() {
        let page = c.get(
            &format!("/api/me/ledger?limit=2&cursor={cursor}"),
            Some(&token),
        );
        eq(page.status, 200, &page.text())?;
        let page = page.json();
        entries.extend(page["entries"].as_array().cloned().unwrap_or_default());
        cursor = str_of(&page, "/next_cursor");
        pages += 1;
        ensure(pages < 20, "the statement ends")?;
    }
    let sum: i64 = entries
        .iter()
        .map(|e| e["amount"].as_i64().unwrap_or(0))
        .sum();
    eq(
        sum,
        balance,
        &format!("the statement adds up to the balance: {entries:#?}"),
    )?;
    let kinds: Vec<String> = entries.iter().map(|e| str_of(e, "/type")).collect();
    eq(
        kinds.iter().filter(|k| *k == "consumption").count(),
        2,
        "two consumptions",
    )?;
    eq(
        kinds.iter().filter(|k| *k == "gift").count(),
        2,
        "two grants",
    )?;
    ensure(
        entries
            .iter()
            .any(|e| e["type"] == "expiry" && e["amount"] == -3),
        format!("the promo's expiry: {kinds:?}"),
    )?;
    ensure(
        !kinds.iter().any(|k| k == "release" || k == "hold"),
        "closed holds are left out",
    )?;
    let ids: BTreeSet<String> = entries.iter().map(|e| str_of(e, "/id")).collect();
    eq(ids.len(), entries.len(), "no entry twice")?;
    eq(
        c.get("/api/me?ledger_cursor=nope", Some(&token)).code(),
        "invalid_cursor".to_owned(),
        "a bad cursor",
    )?;
    eq(c.get("/api/me", None).status, 401, "needs a token")?;
    Ok(())
}

/// The retention job deletes dead letters past retention with their R2 bodies, and leaves the
/// recent ones and theirs.
fn retention_deletes_dead_letter_bodies(stack: &Stack) -> Result<(), Failed> {
    let c = stack.client();
    let stored = || {
        c.get("/admin/storage?prefix=dead-letters/", Some(ADMIN_TOKEN))
            .json()["objects"]
            .as_i64()
            .unwrap_or(-1)
    };
    eq(stored(), 2, "two seeded bodies")?;
    let run = c.post_json("/admin/cron/retention", Some(ADMIN_TOKEN), &json!({}));
    eq(run.status, 200, &run.text())?;
    eq(
        run.json()["summary"]["errors"].as_u64(),
        Some(0),
        &run.text(),
    )?;
    eq(
        c.get(
            &format!("/admin/dead-letters/{OLD_DEAD_LETTER}"),
            Some(ADMIN_TOKEN),
        )
        .status,
        404,
        "the old row is gone",
    )?;
    eq(
        c.get(
            &format!("/admin/dead-letters/{NEW_DEAD_LETTER}"),
            Some(ADMIN_TOKEN),
        )
        .status,
        200,
        "the recent row stays",
    )?;
    eq(
        stored(),
        1,
        "the old body went with its row; the recent one stays",
    )?;
    Ok(())
}

fn main() {
    let port = match start_provider() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("could not start the provider stand-in: {e}");
            std::process::exit(1);
        }
    };
    let options = StackOptions {
        seed: Some((move |s: &Seed| seed(s, port)).into()),
        ..StackOptions::default()
    };
    e2e::suite::run(
        options,
        |_| {},
        e2e::cases![
            shares_are_public_count_views_and_revoke_at_once,
            shares_of_what_cannot_be_shared_are_refused,
            lasting_links_serve_images_without_a_token,
            a_missing_object_falls_back_to_the_provider,
            deleting_removes_objects_and_keeps_the_ledger,
            a_running_task_is_deleted_only_once_it_ends,
            a_second_device_converges_through_the_sync_feed,
            me_adds_up,
            retention_deletes_dead_letter_bodies
        ],
    )
}
