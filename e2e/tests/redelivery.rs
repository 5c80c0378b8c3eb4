//! At-least-once delivery and provider callbacks, end to end. Every queue message is sent twice
//! (the workers' chaos knob), polling is slow (12 s) so signed callbacks from the simulator drive
//! completion, and duplicates must change nothing twice.

use e2e::check::{ensure, eq, wait_until};
use e2e::client::Client;
use e2e::now_secs;
use e2e::stack::{Stack, StackOptions, ADMIN_TOKEN, FILES_SIGNING_KEY};
use e2e::tasks::{self, polls_of, submitted};
use libtest_mimic::Failed;
use serde_json::{json, Value};
use shared::signing::{callback_token, kie_callback_signature};
use std::collections::HashSet;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);
/// How long replayed messages may take to be handled (delivered in the queue's next batch).
const REPLAY_WAIT: Duration = Duration::from_secs(30);
/// The attempt the replayed poll carries, so its log line is its own.
const REPLAYED_POLL_ATTEMPT: u64 = 100;
const WEBHOOK_SECRET: &str = "e2e-kie-webhook-secret";

fn count(stack: &Stack, event: &str, task: &str) -> usize {
    stack
        .events(Some(event))
        .iter()
        .filter(|e| e["task_id"] == task)
        .count()
}

/// The ids of every queue message handled so far.
fn message_ids(stack: &Stack) -> HashSet<String> {
    stack
        .events(Some("message"))
        .iter()
        .filter_map(|m| m["message_id"].as_str().map(str::to_owned))
        .collect()
}

/// Posts a kie.ai callback the way kie.ai signs it.
fn post_callback(c: &Client, url: &str, body: &str, provider_task: &str) -> e2e::client::Reply {
    let ts = now_secs().to_string();
    let sig = kie_callback_signature(WEBHOOK_SECRET.as_bytes(), provider_task, &ts);
    c.send(
        "POST",
        url,
        None,
        &[("x-webhook-timestamp", &ts), ("x-webhook-signature", &sig)],
        Some(("application/json", body.as_bytes())),
    )
}

fn duplicates_change_nothing_twice(stack: &Stack) -> Result<(), Failed> {
    let c = stack.client();
    let (_, token) = c.new_user(ADMIN_TOKEN, 20);
    let tasks = [
        (
            submitted(&c, &token, "duplicated one", "kie_4o"),
            "duplicated one",
            2,
        ),
        (
            submitted(&c, &token, "duplicated two", "kie_kontext"),
            "duplicated two",
            3,
        ),
        (
            submitted(&c, &token, "duplicated three", "kie_4o"),
            "duplicated three",
            2,
        ),
    ];
    for (id, prompt, cost) in &tasks {
        eq(
            c.wait_task(&token, id, WAIT)["status"].as_str(),
            Some("completed"),
            id,
        )?;
        let submits = stack
            .events(Some("message"))
            .iter()
            .filter(|m| m["task_id"] == id.as_str() && m["type"] == "task.submit")
            .count();
        ensure(
            submits >= 2,
            format!("{id}: the submit really was delivered twice ({submits})"),
        )?;
        eq(
            stack.provider_creates(prompt),
            Some(1),
            "one provider submission",
        )?;
        let detail = c
            .get(&format!("/admin/tasks/{id}"), Some(ADMIN_TOKEN))
            .json();
        eq(
            detail["objects"].as_array().map(Vec::len),
            Some(1),
            "one set of R2 objects",
        )?;
        let mut kinds: Vec<String> = detail["ledger"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|r| r["type"].as_str().map(str::to_owned))
            .collect();
        kinds.sort();
        eq(
            kinds,
            vec!["consumption".to_owned(), "release".into(), "reserve".into()],
            "one hold, one settlement",
        )?;
        let drawn: i64 = detail["consumptions"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|r| r["amount"].as_i64())
            .sum();
        eq(drawn, *cost, "allocation equals the cost")?;
    }
    std::thread::sleep(Duration::from_secs(2));
    for (id, _, _) in &tasks {
        eq(
            count(stack, "task.final_status_cached", id),
            1,
            "one KV write of the final status",
        )?;
    }
    eq(c.balance(&token), 20 - 7, "charged exactly once per task")?;

    // the same messages again, twice in one batch, after their effect is done
    let (id, prompt, _) = &tasks[0];
    let detail = c
        .get(&format!("/admin/tasks/{id}"), Some(ADMIN_TOKEN))
        .json();
    // The replayed polls carry an attempt no poll of the task's own chain reaches (it completed
    // by callback, before its first 12 s poll), so their log lines are told apart from a late
    // poll of that chain; the replayed submits are the only submits handled from here on.
    // (A poll carries no user and no cost: those come from the task row.)
    let poll = json!({"v": 1, "type": "task.poll", "task_id": id, "model": "kie_4o",
        "external_id": detail["external_task_id"], "deadline_at": now_secs() + 600, "attempt": REPLAYED_POLL_ATTEMPT});
    let submit_again = json!({"v": 1, "type": "task.submit", "task_id": id, "attempt": 0});
    let handled_before = message_ids(stack);
    let r = c.post_json(
        "/admin/queues/tasks/messages",
        Some(ADMIN_TOKEN),
        &json!({"messages": [submit_again, submit_again, poll, poll]}),
    );
    eq(r.status, 202, "inject")?;
    // every replayed message handled (its log line is written once it is acked) before the
    // balance is compared: otherwise "charged nothing" holds just as well if nothing ran
    let replayed = |kind: &str| -> usize {
        stack
            .events(Some("message"))
            .iter()
            .filter(|m| {
                m["task_id"] == id.as_str()
                    && m["type"] == kind
                    && m["message_id"]
                        .as_str()
                        .is_some_and(|mid| !handled_before.contains(mid))
                    && (kind != "task.poll" || m["attempt"] == REPLAYED_POLL_ATTEMPT)
            })
            .count()
    };
    wait_until(REPLAY_WAIT, || {
        replayed("task.submit") >= 2 && replayed("task.poll") >= 2
    });
    let (submits, polls) = (replayed("task.submit"), replayed("task.poll"));
    if submits < 2 || polls < 2 {
        // what did happen to the messages handled since: a replay that does not parse is
        // dead-lettered without a task id
        let since: Vec<String> = stack
            .events(Some("message"))
            .iter()
            .filter(|m| {
                m["message_id"]
                    .as_str()
                    .is_some_and(|mid| !handled_before.contains(mid))
            })
            .map(|m| {
                format!(
                    "{} {} attempt {} -> {} {}",
                    m["type"], m["task_id"], m["attempt"], m["decision"], m["error"]
                )
            })
            .collect();
        return Err(format!(
            "replayed messages handled within {REPLAY_WAIT:?}: {submits} of 2 submits, {polls} of 2 polls; handled since: {since:#?}"
        )
        .into());
    }
    eq(c.balance(&token), 13, "replayed messages charged nothing")?;
    eq(
        stack.provider_creates(prompt),
        Some(1),
        "nor submitted again",
    )?;
    eq(
        count(stack, "task.final_status_cached", id),
        1,
        "nor rewrote the status",
    )?;
    Ok(())
}

fn callback_beats_polling(stack: &Stack) -> Result<(), Failed> {
    let c = stack.client();
    let (_, token) = c.new_user(ADMIN_TOKEN, 5);
    let prompt = "finished by callback";
    let started = Instant::now();
    let id = submitted(&c, &token, prompt, "kie_4o");
    let task = c.wait_task(&token, &id, WAIT);
    eq(task["status"].as_str(), Some("completed"), "completed")?;
    // the first poll is 12 s (±30%) away; only the callback can have finished it this soon
    ensure(
        started.elapsed() < Duration::from_secs(8),
        format!("completed in {:?}", started.elapsed()),
    )?;
    let posted = stack
        .sim
        .stats()
        .callbacks_by_prompt
        .get(prompt)
        .cloned()
        .unwrap_or_default();
    eq(posted.len(), 1, "one callback posted")?;
    eq(posted[0].2, 200, "accepted")?;
    eq(c.balance(&token), 3, "charged once")?;
    Ok(())
}

fn forged_callbacks_are_rejected(stack: &Stack) -> Result<(), Failed> {
    let c = stack.client();
    let (_, token) = c.new_user(ADMIN_TOKEN, 5);
    let id = submitted(&c, &token, "waits forever [sim:stuck]", "kie_4o");
    // processing once the first poll (12 s ±30% away) finds it generating
    tasks::wait_status(
        &c,
        &token,
        &id,
        "processing",
        Duration::from_secs(40),
        "the provider accepted the task",
    )?;
    let detail = c
        .get(&format!("/admin/tasks/{id}"), Some(ADMIN_TOKEN))
        .json();
    let real_external = detail["external_task_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    ensure(
        !real_external.is_empty(),
        "the task was accepted by the provider",
    )?;
    let deadline = detail["deadline_at"]
        .as_i64()
        .ok_or("the task has a deadline")?;
    let good_token = callback_token(FILES_SIGNING_KEY.as_bytes(), &id, "kie_4o", deadline);
    let body = json!({"code": 200, "msg": "success", "data": {"taskId": "4o-forged", "info": {"result_urls": ["http://evil/x.png"]}}}).to_string();
    let url = format!("/webhooks/ai/kie_4o?task={id}&deadline={deadline}&token={good_token}");

    let bad_token = post_callback(
        &c,
        &format!("/webhooks/ai/kie_4o?task={id}&deadline={deadline}&token=deadbeef"),
        &body,
        "4o-forged",
    );
    eq(
        (bad_token.status, bad_token.code()),
        (401, "unauthorized".into()),
        "forged token",
    )?;
    // the token signs the model and the deadline too: neither can be changed in the URL
    for (forged, what) in [
        (
            format!("/webhooks/ai/kie_kontext?task={id}&deadline={deadline}&token={good_token}"),
            "another model",
        ),
        (
            format!(
                "/webhooks/ai/kie_4o?task={id}&deadline={}&token={good_token}",
                deadline + 3600
            ),
            "a later deadline",
        ),
        (
            format!("/webhooks/ai/kie_4o?task={id}&token={good_token}"),
            "no deadline",
        ),
    ] {
        eq(
            post_callback(&c, &forged, &body, "4o-forged").status,
            401,
            what,
        )?;
    }
    let unsigned = c.send(
        "POST",
        &url,
        None,
        &[],
        Some(("application/json", body.as_bytes())),
    );
    eq(unsigned.status, 401, "valid token but no signature")?;
    let wrong_sig = c.send(
        "POST",
        &url,
        None,
        &[
            ("x-webhook-timestamp", &now_secs().to_string()),
            ("x-webhook-signature", "AAAA"),
        ],
        Some(("application/json", body.as_bytes())),
    );
    eq(wrong_sig.status, 401, "bad signature")?;
    let stale = {
        let ts = (now_secs() - 3600).to_string();
        let sig = kie_callback_signature(WEBHOOK_SECRET.as_bytes(), "4o-forged", &ts);
        c.send(
            "POST",
            &url,
            None,
            &[("x-webhook-timestamp", &ts), ("x-webhook-signature", &sig)],
            Some(("application/json", body.as_bytes())),
        )
    };
    eq(stale.status, 401, "replayed old signature")?;
    eq(
        post_callback(&c, &url, "{not json", "4o-forged").status,
        400,
        "malformed body",
    )?;
    eq(
        post_callback(
            &c,
            &format!("/webhooks/ai/midjourney?task={id}&token={good_token}"),
            &body,
            "4o-forged",
        )
        .status,
        404,
        "unknown provider",
    )?;
    // A callback whose token is good but whose body names another provider task is taken (the
    // callback reads no row to compare them), and the poll it prompts changes nothing: the
    // provider does not know that task, and its answer would apply only to the task D1 knows
    // under that id. The poll tries to fail the task, a D1 round trip that changes no row, and
    // ends (acked); the chain's polls of this stuck task go on (sent): that is the poll waited for.
    let answered = || {
        polls_of(stack, &id)
            .iter()
            .filter(|m| m["decision"] == "ack" && m["io"]["d1_round_trips"] == 1)
            .count()
    };
    let before = answered();
    eq(
        post_callback(&c, &url, &body, "4o-forged").status,
        200,
        "a callback for another provider task is taken",
    )?;
    wait_until(REPLAY_WAIT, || answered() != before);
    ensure(
        answered() > before,
        "the poll the mismatched callback prompted was handled",
    )?;
    let after = c
        .get(&format!("/admin/tasks/{id}"), Some(ADMIN_TOKEN))
        .json();
    eq(
        (after["status"].as_str(), after["external_task_id"].as_str()),
        (Some("processing"), Some(real_external.as_str())),
        "an answer about another provider task changes nothing",
    )?;

    // the log is written as requests finish: give the last lines a moment to land
    let rejections = || -> Vec<Value> {
        tasks::callback_lines(stack)
            .into_iter()
            .filter(|e| e["status"].as_u64().is_some_and(|s| s >= 400))
            .collect()
    };
    wait_until(Duration::from_secs(5), || rejections().len() >= 9);
    let rejected = rejections();
    ensure(
        rejected.len() >= 9,
        format!("rejections logged: {}", rejected.len()),
    )?;
    ensure(
        rejected.iter().all(|e| e["io"]["queue_sends"] == 0),
        "a rejected callback enqueues nothing",
    )?;
    eq(
        c.get(&format!("/api/tasks/{id}"), Some(&token)).json()["status"].as_str(),
        Some("processing"),
        "the task is untouched",
    )?;
    Ok(())
}

fn duplicate_callbacks_are_harmless(stack: &Stack) -> Result<(), Failed> {
    let c = stack.client();
    let (_, token) = c.new_user(ADMIN_TOKEN, 5);
    let prompt = "called back twice";
    let id = submitted(&c, &token, prompt, "kie_kontext");
    eq(
        c.wait_task(&token, &id, WAIT)["status"].as_str(),
        Some("completed"),
        "completed",
    )?;
    let (url, body, _) = stack
        .sim
        .stats()
        .callbacks_by_prompt
        .get(prompt)
        .and_then(|v| v.first().cloned())
        .ok_or("a callback was posted")?;
    let provider_task = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|b| b["data"]["taskId"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let repeated_at = e2e::now_ms();
    for _ in 0..2 {
        let r = post_callback(&c, &url, &body, &provider_task);
        eq(r.status, 200, &format!("repeat callback: {}", r.text()))?;
    }
    // each repeat prompts a poll (sent twice here); KV knows the task ended, so none of them
    // asks the provider again
    let later_polls = || -> Vec<Value> {
        polls_of(stack, &id)
            .into_iter()
            .filter(|m| m["at_ms"].as_u64().is_some_and(|t| t >= repeated_at))
            .collect()
    };
    wait_until(REPLAY_WAIT, || later_polls().len() >= 2);
    let polls = later_polls();
    ensure(
        polls.len() >= 2,
        format!("the repeats' polls were handled: {}", polls.len()),
    )?;
    ensure(
        polls
            .iter()
            .all(|m| m["io"]["fetch"] == 0 && m["decision"] == "ack"),
        format!("no repeat's poll asks the provider: {polls:?}"),
    )?;
    eq(c.balance(&token), 2, "charged once")?;
    eq(
        count(stack, "task.final_status_cached", &id),
        1,
        "status written once",
    )?;
    // the signed URL carries what the callback needs: no callback reads D1
    let callbacks = tasks::callback_lines(stack);
    ensure(
        callbacks.len() >= 3,
        format!("the callbacks were logged: {}", callbacks.len()),
    )?;
    ensure(
        callbacks.iter().all(|e| e["io"]["d1_round_trips"] == 0),
        "no callback makes a D1 round trip",
    )?;
    Ok(())
}

fn main() {
    let mut options = StackOptions::default();
    for (k, v) in [
        ("CHAOS_DUPLICATE_SENDS", "true"),
        ("POLL_INITIAL_SECS", "12"),
        ("POLL_MAX_SECS", "12"),
        ("KIE_WEBHOOK_SECRET", WEBHOOK_SECRET),
    ] {
        options.vars.insert(k.into(), v.into());
    }
    e2e::suite::run(
        options,
        |stack| {
            stack.sim.set_knobs(sim::Knobs {
                webhook_secret: Some(WEBHOOK_SECRET.into()),
                ..sim::Knobs::default()
            })
        },
        e2e::cases![
            duplicates_change_nothing_twice,
            callback_beats_polling,
            forged_callbacks_are_rejected,
            duplicate_callbacks_are_harmless
        ],
    )
}
