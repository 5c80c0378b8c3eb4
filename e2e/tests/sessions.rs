//! Sessions that are never lost: D1 is the truth, KV a per-session cache that never brings a
//! revoked session back. Concurrent sign-ins of one user all work; a sign-out-everywhere racing
//! sign-ins leaves every token issued before it refused and KV agreeing with D1; one session
//! signs out alone; the user lists and revokes their sessions by id (another user's is a 404);
//! a token past its refresh time (5 s here) gets a new one, written once; every sign-in is in
//! `signin_logs`.

use e2e::check::{ensure, eq};
use e2e::client::{jwt_claims, Client, Reply};
use e2e::stack::{Stack, StackOptions, ADMIN_TOKEN};
use e2e::tasks;
use libtest_mimic::Failed;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::sync::Barrier;
use std::time::Duration;

/// `SESSION_REFRESH_SECS` of this suite's stack.
const REFRESH_SECS: u64 = 5;
const HEADER: &str = "x-session-token";

/// A sign-in through the admin route the app's login calls, with a user agent.
fn sign_in(c: &Client, user: &str, agent: &str, body: &Value) -> Reply {
    c.send(
        "POST",
        &format!("/admin/users/{user}/sessions"),
        Some(ADMIN_TOKEN),
        &[("user-agent", agent)],
        Some(("application/json", body.to_string().as_bytes())),
    )
}

/// A session opened: (token, session id).
fn opened(r: &Reply) -> Result<(String, String), Failed> {
    eq(r.status, 201, &format!("sign-in: {}", r.text()))?;
    let j = r.json();
    Ok((
        j["token"].as_str().unwrap_or_default().to_owned(),
        j["session_id"].as_str().unwrap_or_default().to_owned(),
    ))
}

/// Whether a token is accepted (200) or refused (401) on a user route.
fn works(c: &Client, token: &str) -> Result<bool, Failed> {
    let r = c.get("/api/balance", Some(token));
    match r.status {
        200 => Ok(true),
        401 => Ok(false),
        s => Err(format!("balance answered {s}: {}", r.text()).into()),
    }
}

/// The caller's live sessions.
fn sessions(c: &Client, token: &str) -> Result<Vec<Value>, Failed> {
    let r = c.get("/api/auth/sessions", Some(token));
    eq(r.status, 200, &format!("list sessions: {}", r.text()))?;
    Ok(r.json()["sessions"].as_array().cloned().unwrap_or_default())
}

fn ids(list: &[Value]) -> BTreeSet<String> {
    list.iter()
        .filter_map(|s| s["id"].as_str().map(str::to_owned))
        .collect()
}

/// A request thread's reply; one that panicked is a status 0.
fn joined(h: std::thread::ScopedJoinHandle<'_, Reply>) -> Reply {
    h.join().unwrap_or_else(|_| Reply {
        status: 0,
        headers: vec![],
        body: b"the request thread panicked".to_vec(),
    })
}

fn ten_sign_ins_at_once_all_work(stack: &Stack) -> Result<(), Failed> {
    let c = stack.client();
    let (user, first) = c.new_user(ADMIN_TOKEN, 0);
    let barrier = Barrier::new(10);
    let replies: Vec<Reply> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..10)
            .map(|i| {
                let (api, user, barrier) = (&stack.api, &user, &barrier);
                s.spawn(move || {
                    let c = Client::new(api);
                    barrier.wait();
                    sign_in(&c, user, &format!("e2e-concurrent/{i}"), &json!({}))
                })
            })
            .collect();
        handles.into_iter().map(|h| joined(h)).collect()
    });
    let mut opened_ids = BTreeSet::new();
    for r in &replies {
        let (token, sid) = opened(r)?;
        ensure(
            works(&c, &token)?,
            format!("the token of session {sid} works"),
        )?;
        opened_ids.insert(sid);
    }
    eq(opened_ids.len(), 10, "ten distinct sessions")?;
    let list = sessions(&c, &first)?;
    let listed = ids(&list);
    ensure(
        opened_ids.is_subset(&listed) && listed.len() == 11,
        format!("all ten and the first are listed: {listed:?}"),
    )?;
    let current: Vec<&Value> = list.iter().filter(|s| s["current"] == true).collect();
    eq(current.len(), 1, "one current session")?;
    ensure(
        !opened_ids.contains(current[0]["id"].as_str().unwrap_or_default()),
        "the current one is the token making the request",
    )?;
    ensure(works(&c, &first)?, "the first session is still there")?;
    Ok(())
}

fn sign_out_everywhere_racing_sign_ins(stack: &Stack) -> Result<(), Failed> {
    let c = stack.client();
    for round in 0..3 {
        let (user, first) = c.new_user(ADMIN_TOKEN, 0);
        let mut before = vec![first];
        for _ in 0..3 {
            before.push(opened(&sign_in(&c, &user, "e2e-before", &json!({})))?.0);
        }
        // ten sign-ins and one sign-out-everywhere, released at once
        let barrier = Barrier::new(11);
        let (signout, racing): (Reply, Vec<Reply>) = std::thread::scope(|s| {
            let out = {
                let (api, token, barrier) = (&stack.api, &before[1], &barrier);
                s.spawn(move || {
                    let c = Client::new(api);
                    barrier.wait();
                    c.post_json("/api/auth/signout-all", Some(token), &json!({}))
                })
            };
            let ins: Vec<_> = (0..10)
                .map(|i| {
                    let (api, user, barrier) = (&stack.api, &user, &barrier);
                    s.spawn(move || {
                        let c = Client::new(api);
                        barrier.wait();
                        std::thread::sleep(Duration::from_millis(i * 3));
                        sign_in(&c, user, "e2e-racing", &json!({}))
                    })
                })
                .collect();
            (joined(out), ins.into_iter().map(|h| joined(h)).collect())
        });
        eq(
            signout.status,
            200,
            &format!("round {round}: sign-out-everywhere: {}", signout.text()),
        )?;
        ensure(
            signout.json()["signed_out"].as_i64() >= Some(4),
            format!(
                "round {round}: ended at least the four sessions from before: {}",
                signout.text()
            ),
        )?;
        for (i, t) in before.iter().enumerate() {
            ensure(
                !works(&c, t)?,
                format!(
                    "round {round}: token {i} issued before the sign-out-everywhere is refused"
                ),
            )?;
        }
        // each racing sign-in either landed after the sign-out (a live session) or was refused
        let mut issued = Vec::new();
        for r in &racing {
            match r.status {
                201 => issued.push(opened(r)?),
                409 => eq(
                    r.code(),
                    "signed_out_everywhere".to_owned(),
                    "refused sign-in",
                )?,
                s => {
                    return Err(
                        format!("round {round}: racing sign-in answered {s}: {}", r.text()).into(),
                    )
                }
            }
        }
        let fresh = opened(&sign_in(&c, &user, "e2e-after", &json!({})))?.0;
        ensure(works(&c, &fresh)?, "a sign-in after it works")?;
        // what the hot path (KV) accepts is exactly what D1 has live, now and a while later
        for pass in 0..2 {
            let live = ids(&sessions(&c, &fresh)?);
            for (token, sid) in &issued {
                eq(
                    works(&c, token)?,
                    live.contains(sid),
                    &format!("round {round}, pass {pass}: session {sid}: the token works exactly when D1 has it live"),
                )?;
            }
            for t in &before {
                ensure(!works(&c, t)?, "no session from before comes back")?;
            }
            std::thread::sleep(Duration::from_millis(1500));
        }
    }
    Ok(())
}

fn sign_out_of_one_session_leaves_the_others(stack: &Stack) -> Result<(), Failed> {
    let c = stack.client();
    let (user, a) = c.new_user(ADMIN_TOKEN, 0);
    let (b, b_sid) = opened(&sign_in(&c, &user, "e2e-b", &json!({})))?;
    let (d, d_sid) = opened(&sign_in(&c, &user, "e2e-d", &json!({})))?;
    let r = c.post_json("/api/auth/signout", Some(&a), &json!({}));
    eq(
        (r.status, r.json()["signed_out"].as_i64()),
        (200, Some(1)),
        "signed out",
    )?;
    ensure(!works(&c, &a)?, "that token is refused")?;
    ensure(works(&c, &b)? && works(&c, &d)?, "the others still work")?;
    eq(
        ids(&sessions(&c, &b)?),
        [b_sid, d_sid].into_iter().collect(),
        "and are the ones listed",
    )?;
    Ok(())
}

fn list_and_revoke_by_id(stack: &Stack) -> Result<(), Failed> {
    let c = stack.client();
    let (user, _) = c.new_user(ADMIN_TOKEN, 0);
    let (phone, phone_sid) = opened(&sign_in(&c, &user, "e2e-phone/1.0", &json!({})))?;
    let (laptop, laptop_sid) = opened(&sign_in(&c, &user, "e2e-laptop/2.0", &json!({})))?;
    let list = sessions(&c, &phone)?;
    let find = |sid: &str| list.iter().find(|s| s["id"] == sid).cloned();
    let p = find(&phone_sid).ok_or("the phone's session is listed")?;
    let l = find(&laptop_sid).ok_or("the laptop's session is listed")?;
    eq(
        (p["user_agent"].as_str(), p["current"].as_bool()),
        (Some("e2e-phone/1.0"), Some(true)),
        "the phone: its user agent, current",
    )?;
    eq(
        (l["user_agent"].as_str(), l["current"].as_bool()),
        (Some("e2e-laptop/2.0"), Some(false)),
        "the laptop: its user agent, not current",
    )?;
    for field in ["created_at", "last_used_at", "expires_at"] {
        ensure(
            p[field].as_i64().is_some_and(|t| t > 1_600_000_000),
            format!("{field} is a time: {p}"),
        )?;
    }
    let del = |token: &str, sid: &str| c.delete(&format!("/api/auth/sessions/{sid}"), Some(token));
    let r = del(&phone, &laptop_sid);
    eq(
        (
            r.status,
            r.json()["signed_out"].as_i64(),
            r.json()["current"].as_bool(),
        ),
        (200, Some(1), Some(false)),
        &format!("revoke the laptop: {}", r.text()),
    )?;
    ensure(!works(&c, &laptop)?, "the laptop's token is refused")?;
    ensure(works(&c, &phone)?, "the phone's still works")?;
    let listed = ids(&sessions(&c, &phone)?);
    ensure(
        listed.contains(&phone_sid) && !listed.contains(&laptop_sid),
        format!("the phone is listed, the laptop no more: {listed:?}"),
    )?;
    let again = del(&phone, &laptop_sid);
    eq(
        (again.status, again.json()["signed_out"].as_i64()),
        (200, Some(0)),
        "revoking it again ends nothing",
    )?;
    for bad in ["nope", "00000000000000000000000000000000"] {
        let r = del(&phone, bad);
        eq(
            (r.status, r.code()),
            (404, "not_found".to_owned()),
            &format!("{bad}: a JSON 404"),
        )?;
    }
    let r = del(&laptop, &phone_sid);
    eq(r.status, 401, "a revoked token cannot revoke")?;
    let own = del(&phone, &phone_sid);
    eq(
        (own.status, own.json()["current"].as_bool()),
        (200, Some(true)),
        "revoking the current session",
    )?;
    ensure(!works(&c, &phone)?, "signs it out")?;
    Ok(())
}

fn another_users_session_is_a_404(stack: &Stack) -> Result<(), Failed> {
    let c = stack.client();
    let (_, mine) = c.new_user(ADMIN_TOKEN, 0);
    let (theirs_user, theirs) = c.new_user(ADMIN_TOKEN, 0);
    let (_, their_sid) = opened(&sign_in(&c, &theirs_user, "e2e-theirs", &json!({})))?;
    let r = c.delete(&format!("/api/auth/sessions/{their_sid}"), Some(&mine));
    eq(
        (r.status, r.code()),
        (404, "not_found".to_owned()),
        "another user's session",
    )?;
    ensure(
        ids(&sessions(&c, &theirs)?).contains(&their_sid),
        "is untouched",
    )?;
    ensure(works(&c, &theirs)?, "and their token works")?;
    ensure(
        !ids(&sessions(&c, &mine)?).contains(&their_sid),
        "nor is it listed to me",
    )?;
    Ok(())
}

fn a_token_past_its_refresh_time_gets_a_new_one(stack: &Stack) -> Result<(), Failed> {
    let c = stack.client();
    let (_, t0) = c.new_user(ADMIN_TOKEN, 10);
    let sid = jwt_claims(&t0)["sid"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let r = c.get("/api/balance", Some(&t0));
    eq(
        (r.status, r.header(HEADER)),
        (200, None),
        "a fresh token is not renewed",
    )?;
    std::thread::sleep(Duration::from_secs(REFRESH_SECS + 1));
    // several requests at once with the old token: one renewal, one new token for all
    let replies: Vec<Reply> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..6)
            .map(|_| {
                let (api, t0) = (&stack.api, &t0);
                s.spawn(move || Client::new(api).get("/api/balance", Some(t0)))
            })
            .collect();
        hs.into_iter().map(|h| joined(h)).collect()
    });
    let mut handed: BTreeSet<String> = BTreeSet::new();
    for r in &replies {
        eq(r.status, 200, "the old token still works")?;
        if let Some(t) = r.header(HEADER) {
            handed.insert(t.to_owned());
        }
    }
    eq(handed.len(), 1, &format!("one new token: {handed:?}"))?;
    let t1 = handed.into_iter().next().unwrap_or_default();
    let (old, new) = (jwt_claims(&t0), jwt_claims(&t1));
    eq(new["sid"].as_str(), Some(sid.as_str()), "the same session")?;
    ensure(
        new["iat"].as_i64() > old["iat"].as_i64() && new["exp"].as_i64() > old["exp"].as_i64(),
        format!("issued later and expiring later: {old} -> {new}"),
    )?;
    let r = c.get("/api/balance", Some(&t1));
    eq(
        (r.status, r.header(HEADER)),
        (200, None),
        "the new token works, and is not renewed again",
    )?;
    let r = c.get("/api/balance", Some(&t0));
    eq(
        (r.status, r.header(HEADER)),
        (200, Some(t1.as_str())),
        "the old one still works and is handed the new one again",
    )?;
    let renewals = || {
        stack
            .events(Some("session.renewed"))
            .iter()
            .filter(|e| e["session"] == sid.as_str())
            .count()
    };
    for _ in 0..20 {
        if renewals() > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100)); // the log reaches its file a little later
    }
    eq(renewals(), 1, "renewal wrote once")?;
    let me = sessions(&c, &t1)?
        .into_iter()
        .find(|s| s["id"] == sid.as_str())
        .ok_or("the session is listed")?;
    eq(
        (me["last_used_at"].as_i64(), me["current"].as_bool()),
        (new["iat"].as_i64(), Some(true)),
        "last used: written with the renewal",
    )?;
    // task submission stays at one KV read: it does not renew
    std::thread::sleep(Duration::from_secs(REFRESH_SECS + 1));
    let r = tasks::submit(&c, &t1, "renewal [sim:stuck]", "kie_4o");
    eq(
        (r.status, r.header(HEADER)),
        (202, None),
        &format!("submission: {}", r.text()),
    )?;
    let r = c.get("/api/balance", Some(&t1));
    let t2 = r.header(HEADER).unwrap_or_default().to_owned();
    ensure(
        r.status == 200 && !t2.is_empty() && t2 != t1,
        "the next read renews",
    )?;
    ensure(works(&c, &t2)?, "and the newest token works")?;
    // a signed-out session is not renewed back to life
    let r = c.post_json("/api/auth/signout", Some(&t2), &json!({}));
    eq(r.status, 200, "signed out")?;
    for t in [&t0, &t1, &t2] {
        ensure(!works(&c, t)?, "every token of the session is refused")?;
    }
    Ok(())
}

fn sign_ins_are_logged(stack: &Stack) -> Result<(), Failed> {
    let c = stack.client();
    let (user, token) = c.new_user(ADMIN_TOKEN, 0);
    let (_, via_login) = opened(&sign_in(
        &c,
        &user,
        "app-login-server/1",
        &json!({"ip": "198.51.100.4", "user_agent": "e2e-browser/3.0"}),
    ))?;
    let (_, direct) = opened(&sign_in(&c, &user, "e2e-direct/1.0", &json!({})))?;
    let r = c.get(&format!("/admin/users/{user}/signins"), Some(ADMIN_TOKEN));
    eq(r.status, 200, &format!("signins: {}", r.text()))?;
    let rows = r.json()["signins"].as_array().cloned().unwrap_or_default();
    eq(rows.len(), 3, "one row per session opened")?;
    ensure(
        rows.iter()
            .any(|s| s["ip"] == "198.51.100.4" && s["user_agent"] == "e2e-browser/3.0"),
        format!("the login's user's ip and agent: {rows:?}"),
    )?;
    ensure(
        rows.iter()
            .any(|s| s["user_agent"] == "e2e-direct/1.0" && s["ip"].is_string()),
        format!("the caller's agent and address: {rows:?}"),
    )?;
    ensure(
        rows.iter().all(|s| s["created_at"].as_i64().is_some()),
        "with times",
    )?;
    let list = sessions(&c, &token)?;
    let ua = |sid: &str| {
        list.iter()
            .find(|s| s["id"] == sid)
            .map(|s| (s["user_agent"].clone(), s["ip"].clone()))
    };
    eq(
        ua(&via_login),
        Some((json!("e2e-browser/3.0"), json!("198.51.100.4"))),
        "the session shows the same",
    )?;
    ensure(ua(&direct).is_some(), "the direct one is listed")?;
    let one = c.get(
        &format!("/admin/users/{user}/signins?limit=1"),
        Some(ADMIN_TOKEN),
    );
    eq(
        one.json()["signins"].as_array().map(Vec::len),
        Some(1),
        "limit",
    )?;
    for (path, token, status) in [
        (format!("/admin/users/{user}/signins"), token.as_str(), 403),
        (
            format!("/admin/users/{user}/signins?limit=0"),
            ADMIN_TOKEN,
            400,
        ),
        (
            "/admin/users/00000000-0000-4000-8000-000000000000/signins".to_owned(),
            ADMIN_TOKEN,
            404,
        ),
    ] {
        let r = c.get(&path, Some(token));
        ensure(
            r.status == status && r.json()["error"]["code"].is_string(),
            format!(
                "{path}: want a JSON {status}, got {} {}",
                r.status,
                r.text()
            ),
        )?;
    }
    Ok(())
}

fn main() {
    let mut options = StackOptions::default();
    options
        .vars
        .insert("SESSION_REFRESH_SECS".into(), REFRESH_SECS.to_string());
    e2e::suite::run(
        options,
        |_| {},
        e2e::cases![
            ten_sign_ins_at_once_all_work,
            sign_out_everywhere_racing_sign_ins,
            sign_out_of_one_session_leaves_the_others,
            list_and_revoke_by_id,
            another_users_session_is_a_404,
            a_token_past_its_refresh_time_gets_a_new_one,
            sign_ins_are_logged
        ],
    )
}
