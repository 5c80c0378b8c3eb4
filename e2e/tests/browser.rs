//! Calls from a browser (CORS), from a real one: headless Chromium (Debian's `chromium`) driven by
//! playwright-core (`e2e/browser/cors.mjs`) opens a page (`e2e/browser/page.html`) that this test
//! serves itself on two other 127.0.0.1 ports: one origin is in the stack's
//! `CORS_ALLOWED_ORIGINS`, the other is not.
//!
//! - From the allowed origin the page signs in with a session token (given in the URL fragment),
//!   submits a task with `fetch` (bearer token, credentials included, so preflighted), polls it
//!   until completed, shows its image from the task's result link in an `<img crossorigin>` and
//!   reads its pixels, and reads what only CORS lets a script read: `ETag` and `Accept-Ranges`
//!   of a result, a JSON 404, `Retry-After` of a 429.
//! - From the other origin every call fails as the browser's CORS failure, and nothing is written.
//! - Beside it, the same rules over plain HTTP: preflights from an allowed origin, from others, and
//!   the headers of answers (errors included).
//!
//! Screenshots of both pages: `target/browser/{allowed,disallowed}.png`.

use e2e::check::{ensure, eq};
use e2e::client::Reply;
use e2e::stack::{root, Stack, StackOptions, ADMIN_TOKEN};
use e2e::tasks;
use libtest_mimic::Failed;
use serde_json::{json, Value};
use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const PAGE: &str = include_str!("../browser/page.html");
const CHROMIUM: &str = "/usr/bin/chromium";
/// Submissions per user per minute in this stack: the page reads `Retry-After` of the next one.
const SUBMIT_LIMIT: i64 = 3;

/// The origins of the two page servers: `allowed` is in `CORS_ALLOWED_ORIGINS`, `other` is not.
struct Pages {
    allowed: String,
    other: String,
}

static PAGES: OnceLock<Pages> = OnceLock::new();

fn pages() -> &'static Pages {
    PAGES.get_or_init(|| Pages {
        allowed: serve_page(),
        other: serve_page(),
    })
}

/// Serves `page.html` at `/` on a free 127.0.0.1 port, for as long as the test runs; returns its
/// origin.
fn serve_page() -> String {
    #[allow(clippy::expect_used)]
    let server = tiny_http::Server::http("127.0.0.1:0").expect("a page server starts");
    let port = server
        .server_addr()
        .to_ip()
        .map(|a| a.port())
        .unwrap_or_default();
    std::thread::spawn(move || {
        for req in server.incoming_requests() {
            let path = req.url().split(['?', '#']).next().unwrap_or("/").to_owned();
            let resp = if path == "/" || path == "/index.html" {
                tiny_http::Response::from_string(PAGE)
                    .with_header(header("content-type", "text/html; charset=utf-8"))
            } else {
                tiny_http::Response::from_string("not here").with_status_code(404)
            };
            let _ = req.respond(resp.with_header(header("cache-control", "no-store")));
        }
    });
    format!("http://127.0.0.1:{port}")
}

fn header(name: &str, value: &str) -> tiny_http::Header {
    #[allow(clippy::expect_used)]
    tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("a valid header")
}

/// The CORS headers of an answer (`access-control-*`).
fn cors_headers(r: &Reply) -> Vec<(String, String)> {
    r.headers
        .iter()
        .filter(|(k, _)| k.to_ascii_lowercase().starts_with("access-control-"))
        .cloned()
        .collect()
}

/// A comma-separated header value as a lower-case list.
fn list(r: &Reply, name: &str) -> Vec<String> {
    r.header(name)
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect()
}

fn preflight(stack: &Stack, path: &str, origin: &str, method: &str, headers: &str) -> Reply {
    stack.client().send(
        "OPTIONS",
        path,
        None,
        &[
            ("origin", origin),
            ("access-control-request-method", method),
            ("access-control-request-headers", headers),
        ],
        None,
    )
}

/// What an answer to an allowed origin must carry.
fn allowed_answer(r: &Reply, origin: &str, what: &str) -> Result<(), Failed> {
    eq(
        r.header("access-control-allow-origin"),
        Some(origin),
        &format!("{what}: the exact origin"),
    )?;
    eq(
        r.header("access-control-allow-credentials"),
        Some("true"),
        &format!("{what}: credentials"),
    )?;
    let exposed = list(r, "access-control-expose-headers");
    for name in [
        "retry-after",
        "etag",
        "content-range",
        "accept-ranges",
        "content-length",
        "x-session-token",
    ] {
        ensure(
            exposed.iter().any(|e| e == name),
            format!("{what}: {name} exposed in {exposed:?}"),
        )?;
    }
    ensure(
        list(r, "vary").iter().any(|v| v == "origin"),
        format!("{what}: Vary: Origin ({:?})", r.header("vary")),
    )?;
    Ok(())
}

fn preflight_from_an_allowed_origin_is_granted(stack: &Stack) -> Result<(), Failed> {
    let origin = &pages().allowed;
    for (path, method, headers) in [
        (
            "/api/orders",
            "POST",
            "authorization, content-type, idempotency-key",
        ),
        (
            "/api/orders/00000000-0000-4000-8000-000000000000",
            "GET",
            "authorization",
        ),
        (
            "/admin/users",
            "POST",
            "authorization, content-type, x-actor",
        ),
        ("/files/cache/x.png", "GET", "range, if-none-match"),
    ] {
        let r = preflight(stack, path, origin, method, headers);
        let what = format!("preflight {method} {path}");
        eq(r.status, 204, &what)?;
        ensure(r.body.is_empty(), format!("{what}: no body"))?;
        eq(
            r.header("access-control-allow-origin"),
            Some(origin.as_str()),
            &format!("{what}: the exact origin, never *"),
        )?;
        eq(
            r.header("access-control-allow-credentials"),
            Some("true"),
            &format!("{what}: credentials"),
        )?;
        let methods = list(&r, "access-control-allow-methods");
        for m in ["get", "post", "put", "patch", "delete"] {
            ensure(
                methods.iter().any(|x| x == m),
                format!("{what}: {m} in {methods:?}"),
            )?;
        }
        let allowed = list(&r, "access-control-allow-headers");
        for h in headers.split(", ") {
            ensure(
                allowed.iter().any(|a| a == h),
                format!("{what}: {h} in {allowed:?}"),
            )?;
        }
        eq(
            r.header("access-control-max-age"),
            Some("7200"),
            &format!("{what}: max age"),
        )?;
        ensure(
            list(&r, "vary").iter().any(|v| v == "origin"),
            format!("{what}: Vary: Origin"),
        )?;
    }
    Ok(())
}

fn preflight_from_other_origins_is_refused(stack: &Stack) -> Result<(), Failed> {
    let allowed_port = pages().allowed.rsplit(':').next().unwrap_or_default();
    for origin in [
        pages().other.clone(),
        format!("https://127.0.0.1:{allowed_port}"),
        format!("http://localhost:{allowed_port}"),
        format!("{}.evil.test", pages().allowed),
        "null".to_owned(),
    ] {
        let r = preflight(
            stack,
            "/api/orders",
            &origin,
            "POST",
            "authorization, content-type",
        );
        eq(r.status, 403, &format!("preflight from {origin}"))?;
        eq(
            cors_headers(&r),
            vec![],
            &format!("no CORS headers for {origin}"),
        )?;
        eq(r.code(), "forbidden".to_owned(), "JSON error")?;
    }
    Ok(())
}

fn answers_to_an_allowed_origin_carry_cors_headers(stack: &Stack) -> Result<(), Failed> {
    let c = stack.client();
    let origin = pages().allowed.as_str();
    let o = [("origin", origin)];
    let (_, token) = c.new_user(ADMIN_TOKEN, 100);
    let balance = c.send("GET", "/api/balance", Some(&token), &o, None);
    eq(balance.status, 200, "balance")?;
    allowed_answer(&balance, origin, "200")?;
    // errors too, or the browser hides them from the page
    let unauthorized = c.send("GET", "/api/balance", None, &o, None);
    eq(unauthorized.status, 401, "no token")?;
    allowed_answer(&unauthorized, origin, "401")?;
    let missing = c.send(
        "GET",
        "/api/tasks/00000000-0000-4000-8000-000000000000",
        Some(&token),
        &o,
        None,
    );
    eq(missing.code(), "not_found".to_owned(), "404")?;
    allowed_answer(&missing, origin, "404")?;
    let no_route = c.send("GET", "/api/nothing-here", None, &o, None);
    eq(no_route.status, 404, "unknown route")?;
    allowed_answer(&no_route, origin, "router 404")?;
    // OPTIONS without Access-Control-Request-Method is not a preflight: it is routed (405)
    let not_preflight = c.send("OPTIONS", "/api/balance", None, &o, None);
    eq(not_preflight.status, 405, "plain OPTIONS")?;
    allowed_answer(&not_preflight, origin, "405")?;
    let invalid = c.send(
        "POST",
        "/api/tasks",
        Some(&token),
        &o,
        Some((
            "application/json",
            b"{\"prompt\":\"\",\"model\":\"kie_4o\"}",
        )),
    );
    eq(invalid.status, 422, "invalid task")?;
    allowed_answer(&invalid, origin, "422")?;
    // a 429 with its Retry-After: submit until refused (within one more limit when the
    // limiter's fixed window ends on the way)
    let mut statuses = Vec::new();
    let mut last = None;
    for i in 0..=2 * SUBMIT_LIMIT {
        let r = c.send(
            "POST",
            "/api/tasks",
            Some(&token),
            &o,
            Some((
                "application/json",
                json!({"prompt": format!("cors limit {i}"), "model": "kie_4o"})
                    .to_string()
                    .as_bytes(),
            )),
        );
        statuses.push(r.status);
        if r.status == 202 {
            allowed_answer(&r, origin, "202")?;
        }
        let refused = r.status == 429;
        last = Some(r);
        if refused {
            break;
        }
    }
    eq(
        statuses.last().copied(),
        Some(429),
        &format!("rate limited: {statuses:?}"),
    )?;
    if let Some(r) = last {
        allowed_answer(&r, origin, "429")?;
        eq(r.header("retry-after"), Some("60"), "Retry-After")?;
    }
    // a stored file, with its caching headers, through the task's signed URL
    let (_, owner) = c.new_user(ADMIN_TOKEN, 100);
    let submitted = tasks::submit(&c, &owner, "cors file", "kie_4o");
    eq(submitted.status, 202, &submitted.text())?;
    let id = tasks::id(&submitted);
    let task = c.wait_task(&owner, &id, Duration::from_secs(60));
    eq(task["status"].as_str(), Some("completed"), "task")?;
    let signed = task["results"][0]["signed_url"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let file = c.send("GET", &signed, None, &o, None);
    eq(file.status, 200, "file")?;
    allowed_answer(&file, origin, "file")?;
    ensure(file.header("etag").is_some(), "the file has an ETag")?;
    let etag = file.header("etag").unwrap_or_default().to_owned();
    let not_modified = c.send(
        "GET",
        &signed,
        None,
        &[("origin", origin), ("if-none-match", &etag)],
        None,
    );
    eq(not_modified.status, 304, "If-None-Match")?;
    allowed_answer(&not_modified, origin, "304")?;
    let range = c.send(
        "GET",
        &signed,
        None,
        &[("origin", origin), ("range", "bytes=0-3")],
        None,
    );
    eq(range.status, 206, "Range")?;
    allowed_answer(&range, origin, "206")?;
    Ok(())
}

fn other_origins_and_plain_requests_get_no_cors_headers(stack: &Stack) -> Result<(), Failed> {
    let c = stack.client();
    let (_, token) = c.new_user(ADMIN_TOKEN, 100);
    for origin in [Some(pages().other.as_str()), Some("null"), None] {
        let headers: Vec<(&str, &str)> = origin.map(|o| ("origin", o)).into_iter().collect();
        for (path, token, status) in [
            ("/api/balance", Some(token.as_str()), 200),
            ("/api/balance", None, 401),
            ("/api/nothing-here", None, 404),
        ] {
            let r = c.send("GET", path, token, &headers, None);
            let what = format!("GET {path} from {origin:?}");
            eq(r.status, status, &what)?;
            eq(
                cors_headers(&r),
                vec![],
                &format!("{what}: no CORS headers"),
            )?;
            ensure(
                list(&r, "vary").iter().any(|v| v == "origin"),
                format!("{what}: still Vary: Origin, for caches"),
            )?;
        }
    }
    Ok(())
}

/// Runs `node e2e/browser/cors.mjs` and returns its JSON report.
fn drive_browser(
    allowed_url: &str,
    other_url: &str,
    shots: &std::path::Path,
) -> Result<Value, Failed> {
    ensure(
        std::path::Path::new(CHROMIUM).exists(),
        format!("{CHROMIUM} is missing: `cargo xtask test` installs it (apt-get install chromium)"),
    )?;
    ensure(
        root()
            .join("node_modules/playwright-core/package.json")
            .exists(),
        "playwright-core is missing: `cargo xtask test` installs the npm packages",
    )?;
    std::fs::create_dir_all(shots).map_err(|e| format!("{}: {e}", shots.display()))?;
    let mut child = Command::new("node")
        .current_dir(root())
        .arg(root().join("e2e/browser/cors.mjs"))
        .args([allowed_url, other_url])
        .arg(shots)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("node did not start: {e}"))?;
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let mut stderr = child.stderr.take().ok_or("no stderr")?;
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let started = Instant::now();
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break Some(status);
        }
        if started.elapsed() > Duration::from_secs(240) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let (out, err) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    match status {
        Some(s) if s.success() => {}
        Some(s) => return Err(format!("cors.mjs failed ({s}):\n{err}\n{out}").into()),
        None => return Err(format!("cors.mjs did not finish in 240 s:\n{err}\n{out}").into()),
    }
    serde_json::from_str(out.lines().last().unwrap_or_default())
        .map_err(|e| format!("cors.mjs printed no report ({e}):\n{out}\n{err}").into())
}

fn steps(report: &Value) -> Vec<(String, bool)> {
    report["steps"]
        .as_array()
        .map(|s| {
            s.iter()
                .map(|s| {
                    (
                        s["name"].as_str().unwrap_or_default().to_owned(),
                        s["ok"].as_bool() == Some(true),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn a_real_browser_page_submits_a_task_and_shows_its_image(stack: &Stack) -> Result<(), Failed> {
    let c = stack.client();
    let (_, token) = c.new_user(ADMIN_TOKEN, 100);
    let (_, stranger) = c.new_user(ADMIN_TOKEN, 100);
    let url = |origin: &str, token: &str, mode: &str| {
        format!("{origin}/#api={}&token={token}&mode={mode}", stack.api)
    };
    let shots = root().join("target/browser");
    let started = Instant::now();
    let report = drive_browser(
        &url(&pages().allowed, &token, "allowed"),
        &url(&pages().other, &stranger, "disallowed"),
        &shots,
    )?;
    eprintln!(
        "browser: {} in {:.1}s; allowed page {} ms, disallowed page {} ms; image from `{}`; screenshots in {}",
        report["browser"].as_str().unwrap_or("?"),
        started.elapsed().as_secs_f64(),
        report["allowed"]["ms"],
        report["disallowed"]["ms"],
        report["allowed"]["steps"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["name"] == "image"))
            .map(|s| s["detail"]["source"].clone())
            .unwrap_or(Value::Null),
        shots.display()
    );
    let show = |r: &Value| serde_json::to_string_pretty(r).unwrap_or_default();

    let allowed = &report["allowed"];
    eq(
        steps(allowed),
        [
            "sign_in",
            "submit",
            "completed",
            "exposed_headers",
            "image",
            "error_readable",
            "retry_after",
        ]
        .iter()
        .map(|s| ((*s).to_owned(), true))
        .collect(),
        &format!(
            "every step from the allowed origin worked:\n{}",
            show(allowed)
        ),
    )?;
    ensure(allowed["ok"] == true, show(allowed))?;
    // what the page did is really there
    let id = allowed["task_id"].as_str().unwrap_or_default();
    let task = c.get(&format!("/api/tasks/{id}"), Some(&token));
    eq(
        task.json()["status"].as_str(),
        Some("completed"),
        "the page's task",
    )?;
    let retry = allowed["steps"][6]["detail"].clone();
    // the limiter counts in fixed windows: refused at the limit, or within one more limit when
    // a window ended while the page was submitting
    let after = retry["after_submissions"].as_i64().unwrap_or(0);
    ensure(
        (SUBMIT_LIMIT..=2 * SUBMIT_LIMIT).contains(&after) && retry["retry_after"] == "60",
        format!("the page read Retry-After after the limit: {retry}"),
    )?;

    let disallowed = &report["disallowed"];
    eq(
        steps(disallowed),
        [
            "credentialed_call_blocked",
            "simple_get_blocked",
            "submit_blocked",
        ]
        .iter()
        .map(|s| ((*s).to_owned(), true))
        .collect(),
        &format!(
            "every call from the other origin failed CORS:\n{}",
            show(disallowed)
        ),
    )?;
    ensure(
        disallowed["console"].as_array().is_some_and(|l| {
            l.iter()
                .any(|m| m.as_str().is_some_and(|m| m.contains("CORS policy")))
        }),
        format!(
            "Chromium reported the CORS refusals: {}",
            show(&disallowed["console"])
        ),
    )?;
    eq(
        c.balance(&stranger),
        100,
        "the refused submission held nothing",
    )?;
    eq(
        c.get("/api/tasks", Some(&stranger)).json()["tasks"]
            .as_array()
            .map(Vec::len),
        Some(0),
        "and created nothing",
    )?;

    // the browser preflighted: granted for the allowed page, refused for the other
    let http = stack.events(Some("http"));
    let seen = |path: &str, status: u16| {
        http.iter()
            .any(|e| e["method"] == "OPTIONS" && e["path"] == path && e["status"] == status)
    };
    ensure(
        seen("/api/tasks", 204),
        "the page's POST was preflighted and granted",
    )?;
    ensure(
        seen("/api/tasks", 403),
        "the other page's POST was preflighted and refused",
    )?;
    Ok(())
}

fn main() {
    let pages = pages();
    let mut options = StackOptions::default();
    options
        .vars
        .insert("CORS_ALLOWED_ORIGINS".into(), pages.allowed.clone());
    options
        .rate_limits
        .insert("SUBMIT_LIMIT".into(), SUBMIT_LIMIT);
    e2e::suite::run(
        options,
        |_| {},
        e2e::cases![
            a_real_browser_page_submits_a_task_and_shows_its_image,
            preflight_from_an_allowed_origin_is_granted,
            preflight_from_other_origins_is_refused,
            answers_to_an_allowed_origin_carry_cors_headers,
            other_origins_and_plain_requests_get_no_cors_headers
        ],
    )
}
