//! One function per verb: each calls the API and returns its answer twice, as JSON for
//! `--json` and as text (tables) for people.

use crate::api::Api;
use crate::args::{
    Catalog, Cli, Command, Cron, Discard, Dlq, DlqFilter, DlqList, Events, Orders, Page, Queue,
    Replay, Storage, Tasks, Users, Which,
};
use crate::bulk::{self, Action};
use crate::config;
use crate::output::{bytes, cell, table, utc};
use crate::Error;
use clap::CommandFactory;
use serde_json::{json, Value};
use std::io::{IsTerminal, Read, Write};
use std::path::Path;

/// How to show things.
pub struct Ui {
    pub json: bool,
    /// Progress bars on stderr: a terminal, and not --json.
    pub progress: bool,
    pub verbose: bool,
}

/// What a verb did: its JSON, its text, and, for a verb that printed its result and still
/// fails (an audit with violations, an interrupted or broken-off bulk run), the failure.
pub struct Done {
    pub json: Value,
    pub text: String,
    pub then: Option<Error>,
}

impl Done {
    pub fn new(json: Value, text: impl Into<String>) -> Done {
        Done {
            json,
            text: text.into(),
            then: None,
        }
    }
    pub fn then(mut self, e: Error) -> Done {
        self.then = Some(e);
        self
    }
}

/// Prints a line, keeping the token out whatever happens, and survives a closed pipe
/// (`edgeline dlq list | head`).
fn print(out: &mut dyn Write, text: &str, token: Option<&str>) {
    let text = match token {
        Some(t) if t.len() >= 8 && text.contains(t) => text.replace(t, "[redacted]"),
        _ => text.to_owned(),
    };
    let _ = writeln!(out, "{text}");
}

/// Runs a parsed command line; returns the exit code.
pub fn main(cli: Cli, prefix: &str) -> u8 {
    let Cli { global, command } = cli;
    if let Command::Completions { shell } = command {
        let mut cmd = Cli::command();
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut cmd, "edgeline", &mut script);
        // a closed pipe (`| head`) is not an error worth a panic
        let _ = std::io::stdout().lock().write_all(&script);
        return crate::exit::OK;
    }
    let target = match config::resolve(&global) {
        Ok(t) => t,
        Err(e) => {
            print(&mut std::io::stderr(), &format!("{prefix}: {e}"), None);
            return e.exit_code();
        }
    };
    let token_from = target.token_from.clone();
    let api = Api::new(target, global.timeout, global.verbose);
    let ui = Ui {
        json: global.json,
        progress: !global.json && std::io::stderr().is_terminal(),
        verbose: global.verbose,
    };
    let token = api.token().expose().to_owned();
    let token = Some(token.as_str());
    let result = dispatch(&api, &ui, command);
    let failure = match result {
        Ok(done) => {
            let shown = if ui.json {
                done.json.to_string()
            } else {
                done.text
            };
            if !shown.is_empty() {
                print(&mut std::io::stdout().lock(), &shown, token);
            }
            done.then
        }
        Err(e) => Some(e),
    };
    match failure {
        None => crate::exit::OK,
        Some(e) => {
            let hint = match &e {
                Error::Api { status: 401, .. } => format!(" [token from {token_from}]"),
                _ => String::new(),
            };
            print(
                &mut std::io::stderr(),
                &format!("{prefix}: {e}{hint}"),
                token,
            );
            e.exit_code()
        }
    }
}

/// A URL path segment or query value, percent-encoded.
pub fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `?a=1&b=2` from the pairs that have a value, or nothing.
pub fn query(pairs: &[(&str, Option<String>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", enc(v))))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

fn dispatch(api: &Api, ui: &Ui, command: Command) -> Result<Done, Error> {
    match command {
        Command::Dlq(Dlq::List(a)) => dlq_list(api, &a),
        Command::Dlq(Dlq::Show { id }) => {
            pretty(api.get(&format!("/admin/dead-letters/{}", enc(&id)))?)
        }
        Command::Dlq(Dlq::Replay(a)) => replay(api, ui, &a),
        Command::Dlq(Dlq::Discard(a)) => discard(api, ui, &a),
        Command::Tasks(Tasks::List(a)) => {
            let q = vec![
                ("status", a.status.map(|s| s.as_str().to_owned())),
                ("older_than_secs", a.older_than.map(|s| s.to_string())),
            ];
            let v = list(api, "/admin/tasks", q, "tasks", &a.page)?;
            let cols = [
                ("id", "ID"),
                ("task_no", "TASK NO"),
                ("status", "STATUS"),
                ("model", "MODEL"),
                ("user_id", "USER"),
                ("created_at", "CREATED (UTC)"),
                ("failure_reason", "REASON"),
            ];
            Ok(listed(v, "tasks", &cols))
        }
        Command::Tasks(Tasks::Show { id }) => {
            pretty(api.get(&format!("/admin/tasks/{}", enc(&id)))?)
        }
        Command::Tasks(Tasks::Retry { id }) => {
            let v = api.post(&format!("/admin/tasks/{}/retry", enc(&id)), &json!({}))?;
            let text = format!(
                "{} task {} for {id}",
                if v["created"] == json!(true) {
                    "created"
                } else {
                    "already retried as"
                },
                v.pointer("/task/id").and_then(Value::as_str).unwrap_or("")
            );
            Ok(Done::new(v, text))
        }
        Command::Events(Events::List {
            status,
            event_type,
            limit,
        }) => {
            let q = query(&[
                ("status", status),
                ("type", event_type),
                ("limit", limit.map(|l| l.to_string())),
            ]);
            let v = api.get(&format!("/admin/webhook-events{q}"))?;
            let rows = v["webhook_events"].as_array().cloned().unwrap_or_default();
            let cols = [
                ("id", "ID"),
                ("provider", "PROVIDER"),
                ("event_id", "EVENT"),
                ("event_type", "TYPE"),
                ("status", "STATUS"),
                ("received_at", "RECEIVED (UTC)"),
                ("processed_at", "PROCESSED (UTC)"),
                ("error", "ERROR"),
            ];
            let text = table(&rows, &cols);
            Ok(Done::new(v, text))
        }
        Command::Tasks(Tasks::Timeline { id }) => {
            let v = api.get(&format!("/admin/tasks/{}/timeline", enc(&id)))?;
            let text = timeline_text(&v);
            Ok(Done::new(v, text))
        }
        Command::Orders(Orders::List { status, user, page }) => {
            let q = vec![
                ("status", status.map(|s| s.as_str().to_owned())),
                ("user_id", user),
            ];
            let v = list(api, "/admin/orders", q, "orders", &page)?;
            let cols = [
                ("id", "ID"),
                ("user_id", "USER"),
                ("status", "STATUS"),
                ("product_id", "PRODUCT"),
                ("amount", "AMOUNT (MINOR)"),
                ("currency", "CURRENCY"),
                ("credits", "CREDITS"),
                ("created_at", "CREATED (UTC)"),
            ];
            Ok(listed(v, "orders", &cols))
        }
        Command::Stats => {
            let v = api.get("/admin/stats")?;
            let text = stats_text(&v);
            Ok(Done::new(v, text))
        }
        Command::Users(Users::List { search, page }) => {
            let v = list(api, "/admin/users", vec![("q", search)], "users", &page)?;
            let cols = [
                ("id", "ID"),
                ("email", "EMAIL"),
                ("name", "NAME"),
                ("created_at", "CREATED (UTC)"),
            ];
            Ok(listed(v, "users", &cols))
        }
        Command::Users(Users::Show { user_id }) => {
            let v = api.get(&format!("/admin/users/{}", enc(&user_id)))?;
            let text = user_text(&v);
            Ok(Done::new(v, text))
        }
        Command::Users(Users::Signins { user_id, limit }) => {
            let q = query(&[("limit", limit.map(|l| l.to_string()))]);
            let v = api.get(&format!("/admin/users/{}/signins{q}", enc(&user_id)))?;
            let rows = v["signins"].as_array().cloned().unwrap_or_default();
            let text = table(
                &rows,
                &[
                    ("created_at", "AT (UTC)"),
                    ("ip", "IP"),
                    ("user_agent", "USER AGENT"),
                ],
            );
            Ok(Done::new(v, text))
        }
        Command::Orders(Orders::Stats) => {
            let v = api.get("/admin/orders/stats")?;
            let counts = v["orders"].as_object().cloned().unwrap_or_default();
            let total: i64 = counts.values().filter_map(Value::as_i64).sum();
            let rows: Vec<Value> = counts
                .iter()
                .map(|(s, n)| json!({"status": s, "n": n}))
                .collect();
            let text = format!(
                "{}\n{total} order(s)",
                table(&rows, &[("status", "STATUS"), ("n", "ORDERS")])
            );
            Ok(Done::new(v, text))
        }
        Command::Storage(Storage::Stats { prefix }) => {
            let q = query(&[("prefix", prefix.map(|p| p.as_str().to_owned()))]);
            let v = api.get(&format!("/admin/storage{q}"))?;
            let n = v["bytes"].as_u64().unwrap_or(0);
            let text = format!(
                "{} object(s), {} ({n} bytes) {}{}",
                v["objects"],
                bytes(n),
                match v["prefix"].as_str() {
                    Some(p) if !p.is_empty() => format!("under {p}"),
                    _ => "in the bucket".into(),
                },
                if v["truncated"] == json!(true) {
                    "; counted the first 20,000, there are more"
                } else {
                    ""
                }
            );
            Ok(Done::new(v, text))
        }
        Command::Users(Users::Create {
            email,
            name,
            credits,
        }) => {
            let mut body = json!({"email": email, "name": name});
            if let Some(c) = credits {
                body["credits"] = json!(c);
            }
            let v = api.post("/admin/users", &body)?;
            let text = format!(
                "created user {} ({}){}",
                cell(&v["id"]),
                cell(&v["email"]),
                match v["credits"].as_i64() {
                    Some(c) if c > 0 => format!(" with {c} credits"),
                    _ => String::new(),
                }
            );
            Ok(Done::new(v, text))
        }
        Command::Users(Users::Grant {
            user_id,
            credits,
            reference,
            note,
            expires_at,
        }) => {
            let mut body = json!({"credits": credits, "reference": reference});
            if let Some(n) = note {
                body["note"] = json!(n);
            }
            if let Some(at) = expires_at {
                body["expires_at"] = json!(at);
            }
            let v = api.post(&format!("/admin/users/{}/grants", enc(&user_id)), &body)?;
            let text = format!(
                "granted {} credits to {} (grant {}){}",
                v["credits"],
                cell(&v["user_id"]),
                cell(&v["id"]),
                v["expires_at"]
                    .as_i64()
                    .map(|at| format!(", expiring {} UTC", utc(at)))
                    .unwrap_or_default()
            );
            Ok(Done::new(v, text))
        }
        Command::Token(a) => {
            let mut body = json!({});
            if let Some(ttl) = a.ttl {
                body["ttl_secs"] = json!(ttl);
            }
            let v = api.post(&format!("/admin/users/{}/sessions", enc(&a.user_id)), &body)?;
            let text = v["token"].as_str().unwrap_or_default().to_owned();
            Ok(Done::new(v, text))
        }
        Command::Cron(Cron::Runs { job, limit }) => {
            let q = query(&[("job", job), ("limit", limit.map(|l| l.to_string()))]);
            let v = api.get(&format!("/admin/cron/runs{q}"))?;
            let rows: Vec<Value> = v["runs"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|mut r| {
                    let ms = r["finished_at"]
                        .as_i64()
                        .zip(r["started_at"].as_i64())
                        .map(|(f, s)| f - s);
                    r["took_ms"] = json!(ms);
                    r["started"] = json!(r["started_at"].as_i64().map(|s| utc(s / 1000)));
                    r
                })
                .collect();
            let cols = [
                ("job", "JOB"),
                ("schedule", "SCHEDULE"),
                ("started", "STARTED (UTC)"),
                ("took_ms", "MS"),
                ("examined", "EXAMINED"),
                ("changed", "CHANGED"),
                ("errors", "ERRORS"),
                ("stopped_early", "STOPPED EARLY"),
            ];
            let text = table(&rows, &cols);
            Ok(Done::new(v, text))
        }
        Command::Cron(Cron::Run { job }) => {
            let v = api.post(&format!("/admin/cron/{}", enc(&job)), &json!({}))?;
            let s = &v["summary"];
            let text = format!(
                "{job}: examined {}, changed {}, errors {}{} in {} ms",
                s["examined"],
                s["changed"],
                s["errors"],
                if s["stopped_early"] == json!(true) {
                    ", stopped early (the next run continues)"
                } else {
                    ""
                },
                v["ms"]
            );
            Ok(Done::new(v, text))
        }
        Command::Audit(a) => {
            let q = query(&[("stuck_secs", a.stuck_secs.map(|s| s.to_string()))]);
            let v = api.get(&format!("/admin/audit{q}"))?;
            let text = audit_text(&v);
            let violations = v["violations"].as_array().map_or(0, Vec::len);
            let clean = v["ok"] == json!(true);
            let done = Done::new(v, text);
            Ok(if clean {
                done
            } else {
                done.then(Error::Problems(format!(
                    "the ledger audit found {violations} violation(s)"
                )))
            })
        }
        Command::AuditLog(a) => {
            let q = query(&[
                ("target", a.target),
                ("action", a.action),
                ("actor", a.by),
                ("limit", a.limit.map(|l| l.to_string())),
            ]);
            let v = api.get(&format!("/admin/audit-log{q}"))?;
            let rows: Vec<Value> = v["entries"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|mut r| {
                    r["detail_text"] = json!(match &r["detail"] {
                        Value::Null => "-".to_owned(),
                        d => d.to_string(),
                    });
                    r
                })
                .collect();
            let cols = [
                ("created_at", "AT (UTC)"),
                ("actor", "ACTOR"),
                ("action", "ACTION"),
                ("target", "TARGET"),
                ("detail_text", "DETAIL"),
            ];
            let text = table(&rows, &cols);
            Ok(Done::new(v, text))
        }
        Command::Catalog(Catalog::Show) => {
            let v = api.get("/admin/catalog")?;
            let text = catalog_text(&v);
            Ok(Done::new(v, text))
        }
        Command::Catalog(Catalog::Set {
            file,
            expected_version,
        }) => {
            let doc = read_json(&file)?;
            let catalog = match doc.get("catalog") {
                Some(c) if c.is_object() => c.clone(),
                _ => doc,
            };
            if !catalog.is_object() {
                return Err(Error::Usage(format!(
                    "--file {}: the catalogue must be a JSON object ({{\"packs\": [...], \"plans\": [...]}})",
                    file.display()
                )));
            }
            let v = api.put(
                "/admin/catalog",
                &json!({"catalog": catalog, "expected_version": expected_version}),
            )?;
            let text = format!(
                "the catalogue is now at version {} (was {expected_version}), changed by {}",
                v["version"],
                cell(&v["updated_by"])
            );
            Ok(Done::new(v, text))
        }
        Command::Queue(Queue::Send { queue, file, delay }) => {
            queue_send(api, ui, queue.as_str(), &file, delay)
        }
        Command::Completions { .. } => Ok(Done::new(Value::Null, "")),
    }
}

/// A JSON answer shown as indented JSON.
fn pretty(v: Value) -> Result<Done, Error> {
    let text = serde_json::to_string_pretty(&v).unwrap_or_default();
    Ok(Done::new(v, text))
}

/// A list route, one page or (`--all`) every page, as `{key: [...], next_cursor}`.
fn list(
    api: &Api,
    path: &str,
    mut params: Vec<(&str, Option<String>)>,
    key: &str,
    page: &Page,
) -> Result<Value, Error> {
    params.push(("limit", page.limit.map(|l| l.to_string())));
    let mut cursor = page.cursor.clone();
    let mut items: Vec<Value> = vec![];
    loop {
        let mut p = params.clone();
        p.push(("cursor", cursor.take()));
        let v = api.get(&format!("{path}{}", query(&p)))?;
        let next = v["next_cursor"].as_str().map(str::to_owned);
        if !page.all {
            return Ok(v);
        }
        items.extend(v[key].as_array().cloned().unwrap_or_default());
        match next {
            Some(c) => cursor = Some(c),
            None => return Ok(json!({key: items, "next_cursor": null})),
        }
    }
}

/// A listed page as a table, with how to get the next one.
fn listed(v: Value, key: &str, cols: &[(&str, &str)]) -> Done {
    let rows = v[key].as_array().cloned().unwrap_or_default();
    let more = v["next_cursor"]
        .as_str()
        .map(|c| format!("\nmore: --cursor {c} (or --all)"))
        .unwrap_or_default();
    let text = format!("{}{more}", table(&rows, cols));
    Done::new(v, text)
}

fn dlq_list(api: &Api, a: &DlqList) -> Result<Done, Error> {
    let f = &a.filter;
    let q = vec![
        ("queue", f.queue.clone()),
        ("type", f.message_type.clone()),
        ("error_class", f.error_class.clone()),
        ("status", f.status.map(|s| s.as_str().to_owned())),
        ("since", f.since.map(|v| v.to_string())),
        ("until", f.until.map(|v| v.to_string())),
    ];
    let v = list(api, "/admin/dead-letters", q, "dead_letters", &a.page)?;
    let cols = [
        ("id", "ID"),
        ("source_queue", "QUEUE"),
        ("message_type", "TYPE"),
        ("error_class", "ERROR"),
        ("attempts", "ATTEMPTS"),
        ("last_failed_at", "LAST FAILED (UTC)"),
        ("status", "STATUS"),
    ];
    Ok(listed(v, "dead_letters", &cols))
}

/// `--id` acts on one letter; the filter flags are for `--filter`.
fn one_or_filter<'a>(which: &'a Which, f: &DlqFilter) -> Result<Option<&'a str>, Error> {
    match &which.id {
        Some(id) if !f.is_empty() => Err(Error::Usage(format!(
            "--id {id} acts on that letter only; --queue, --type, --error-class, --status, --since and --until go with --filter"
        ))),
        Some(id) => Ok(Some(id)),
        None => Ok(None),
    }
}

/// `--dry-run --id`: the letter and whether the action would change it.
fn dry_run_one(api: &Api, action: Action, id: &str, force: bool) -> Result<Done, Error> {
    let v = api.get(&format!("/admin/dead-letters/{}", enc(id)))?;
    let status = v["status"].as_str().unwrap_or("");
    let would = status == "dead" || (action == Action::Replay && force);
    let text = if would {
        format!(
            "would {} {id} ({}, {status})",
            action.verb(),
            cell(&v["message_type"])
        )
    } else {
        format!(
            "would not {} {id}: it is {status}{}",
            action.verb(),
            if action == Action::Replay {
                " (--force to send it again)"
            } else {
                ""
            }
        )
    };
    Ok(Done::new(
        json!({"dry_run": true, "id": id, "status": status, "would": would}),
        text,
    ))
}

fn replay(api: &Api, ui: &Ui, a: &Replay) -> Result<Done, Error> {
    match one_or_filter(&a.which, &a.filter)? {
        Some(id) if a.dry_run => dry_run_one(api, Action::Replay, id, a.force),
        Some(id) => {
            let force = if a.force { "?force=true" } else { "" };
            let v = api.post(
                &format!("/admin/dead-letters/{}/replay{force}", enc(id)),
                &json!({}),
            )?;
            let text = format!(
                "{id}: {}",
                if v["sent"] == json!(true) {
                    "replayed"
                } else {
                    "not sent (already replayed or discarded; --force to send again)"
                }
            );
            Ok(Done::new(v, text))
        }
        None if a.dry_run => bulk::dry_run(api, Action::Replay, &a.filter, a.force),
        None => bulk::run(ui, api, Action::Replay, &a.filter, a.force),
    }
}

fn discard(api: &Api, ui: &Ui, a: &Discard) -> Result<Done, Error> {
    match one_or_filter(&a.which, &a.filter)? {
        Some(id) if a.dry_run => dry_run_one(api, Action::Discard, id, false),
        Some(id) => {
            let v = api.post(
                &format!("/admin/dead-letters/{}/discard", enc(id)),
                &json!({}),
            )?;
            let text = format!(
                "{id}: {}",
                if v["discarded"] == json!(true) {
                    "discarded"
                } else {
                    "not discarded (not dead)"
                }
            );
            Ok(Done::new(v, text))
        }
        None if a.dry_run => bulk::dry_run(api, Action::Discard, &a.filter, false),
        None => bulk::run(ui, api, Action::Discard, &a.filter, false),
    }
}

/// A JSON file, or stdin for `-`.
fn read_json(file: &Path) -> Result<Value, Error> {
    let text = if file == Path::new("-") {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| Error::Usage(format!("--file -: cannot read stdin: {e}")))?;
        s
    } else {
        std::fs::read_to_string(file)
            .map_err(|e| Error::Usage(format!("--file {}: {e}", file.display())))?
    };
    serde_json::from_str(&text)
        .map_err(|e| Error::Usage(format!("--file {}: not JSON: {e}", file.display())))
}

/// Most messages one call sends (the API's bound).
const QUEUE_BATCH: usize = 100;

fn queue_send(
    api: &Api,
    ui: &Ui,
    queue: &str,
    file: &Path,
    delay: Option<u32>,
) -> Result<Done, Error> {
    let doc = read_json(file)?;
    let messages = match doc {
        Value::Array(a) => a,
        Value::Object(mut o) => match o.remove("messages") {
            Some(Value::Array(a)) => a,
            _ => {
                return Err(Error::Usage(format!(
                    "--file {}: expected a JSON array of messages or {{\"messages\": [...]}}",
                    file.display()
                )))
            }
        },
        _ => {
            return Err(Error::Usage(format!(
                "--file {}: expected a JSON array of messages",
                file.display()
            )))
        }
    };
    if messages.is_empty() {
        return Err(Error::Usage(format!(
            "--file {}: no messages",
            file.display()
        )));
    }
    let pb = if ui.progress && messages.len() > QUEUE_BATCH {
        indicatif::ProgressBar::new(u64::try_from(messages.len()).unwrap_or(0))
    } else {
        indicatif::ProgressBar::hidden()
    };
    let (mut sent, mut calls) = (0usize, 0usize);
    for chunk in messages.chunks(QUEUE_BATCH) {
        let mut body = json!({"messages": chunk});
        if let Some(d) = delay {
            body["delay_seconds"] = json!(d);
        }
        match api.post(&format!("/admin/queues/{queue}/messages"), &body) {
            Ok(v) => {
                sent += usize::try_from(v["sent"].as_u64().unwrap_or(0)).unwrap_or(0);
                calls += 1;
                pb.inc(u64::try_from(chunk.len()).unwrap_or(0));
            }
            Err(e) if sent > 0 => {
                pb.finish_and_clear();
                return Ok(Done::new(
                    json!({"sent": sent, "calls": calls}),
                    format!("sent {sent} message(s) to the {queue} queue before the error"),
                )
                .then(e));
            }
            Err(e) => return Err(e),
        }
    }
    pb.finish_and_clear();
    Ok(Done::new(
        json!({"sent": sent, "calls": calls}),
        format!("sent {sent} message(s) to the {queue} queue in {calls} call(s)"),
    ))
}

/// `pending 1 · failed 2` from `{"pending": 1, "failed": 2}`.
fn counts(v: &Value) -> String {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(" · ")
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "none".into())
}

/// The dashboard's figures as text.
fn stats_text(v: &Value) -> String {
    let mut out = vec![format!(
        "tasks: {} (total {})",
        counts(&v["tasks"]["by_status"]),
        v["tasks"]["total"]
    )];
    if let Some(windows) = v["throughput"].as_object() {
        for (name, w) in windows {
            out.push(format!(
                "last {name} ({} s buckets): created {}, completed {}, failed {}",
                w["bucket_secs"], w["created"], w["completed"], w["failed"]
            ));
        }
    }
    out.push(format!(
        "webhook events: {}",
        counts(&v["webhook_events"]["by_status"])
    ));
    let classes = v["dead_letters"]["by_class"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    out.push(format!(
        "dead letters ({} dead):\n{}",
        v["dead_letters"]["dead"],
        table(
            &classes,
            &[
                ("error_class", "ERROR CLASS"),
                ("dead", "DEAD"),
                ("replayed", "REPLAYED"),
                ("discarded", "DISCARDED"),
                ("total", "TOTAL"),
            ]
        )
    ));
    if let Some(note) = v["queue_backlog_note"].as_str() {
        out.push(format!("queue backlog: {note}"));
    }
    out.join("\n")
}

/// A task's timeline as a table of events.
fn timeline_text(v: &Value) -> String {
    let rows: Vec<Value> = v["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|mut e| {
            e["when"] = json!(e["at"].as_i64().map(utc));
            e
        })
        .collect();
    format!(
        "task {}: {}, provider task {}, {} provider submission(s), {} dead-letter attempt(s)\n{}",
        cell(&v["task_id"]),
        cell(&v["status"]),
        cell(&v["external_task_id"]),
        v["provider_submissions"],
        v["dead_letter_attempts"],
        table(
            &rows,
            &[("when", "AT (UTC)"), ("kind", "KIND"), ("text", "WHAT")]
        )
    )
}

/// A user as text: who, balance, ledger, subscriptions.
fn user_text(v: &Value) -> String {
    let ledger = v["ledger"].as_array().cloned().unwrap_or_default();
    let subs = v["subscriptions"].as_array().cloned().unwrap_or_default();
    let mut out = vec![
        format!(
            "{} {} ({})",
            cell(&v["id"]),
            cell(&v["email"]),
            cell(&v["name"])
        ),
        format!("balance: {} credits", v["balance"]),
        format!("tasks: {}", counts(&v["tasks_by_status"])),
        format!("orders: {}", counts(&v["orders_by_status"])),
        format!(
            "ledger, newest first{}:\n{}",
            if v["ledger_more"] == json!(true) {
                " (more: --json shows the newest 200)"
            } else {
                ""
            },
            table(
                &ledger,
                &[
                    ("created_at", "AT (UTC)"),
                    ("type", "TYPE"),
                    ("amount", "AMOUNT"),
                    ("drawn", "DRAWN"),
                    ("entity_id", "FOR"),
                    ("expires_at", "EXPIRES (UTC)"),
                    ("note", "NOTE"),
                ]
            )
        ),
    ];
    if !subs.is_empty() {
        out.push(format!(
            "subscriptions:\n{}",
            table(
                &subs,
                &[
                    ("id", "ID"),
                    ("plan_type", "PLAN"),
                    ("billing_cycle", "CYCLE"),
                    ("status", "STATUS"),
                    ("expires_at", "EXPIRES (UTC)"),
                ]
            )
        ));
    }
    out.join("\n")
}

/// The catalogue as a table of products, then its version.
fn catalog_text(v: &Value) -> String {
    let c = &v["catalog"];
    let mut rows: Vec<Value> = vec![];
    for p in c["packs"].as_array().into_iter().flatten() {
        rows.push(json!({
            "kind": "pack", "id": p["id"], "price": p["price"], "currency": p["currency"],
            "credits": p["credits"], "terms": p["expires_in_days"].as_i64().map_or("never expire".to_owned(), |d| format!("expire after {d} days")),
            "product": p["creem_product_id"],
        }));
    }
    for p in c["plans"].as_array().into_iter().flatten() {
        rows.push(json!({
            "kind": "plan", "id": p["id"], "price": p["price"], "currency": p["currency"],
            "credits": p["credits_per_period"], "terms": format!("{} {}", cell(&p["plan"]), cell(&p["cycle"])),
            "product": p["creem_product_id"],
        }));
    }
    let mut out = if c.is_object() {
        table(
            &rows,
            &[
                ("kind", "KIND"),
                ("id", "ID"),
                ("price", "PRICE (MINOR UNITS)"),
                ("currency", "CURRENCY"),
                ("credits", "CREDITS"),
                ("terms", "TERMS"),
                ("product", "PROVIDER PRODUCT"),
            ],
        )
    } else {
        format!("stored as: {}", cell(c))
    };
    out.push_str(&format!(
        "\nversion {}{}{}",
        v["version"],
        v["updated_at"]
            .as_i64()
            .map(|at| format!(", changed {} UTC", utc(at)))
            .unwrap_or_default(),
        v["updated_by"]
            .as_str()
            .map(|b| format!(" by {b}"))
            .unwrap_or_default(),
    ));
    if v["valid"] == json!(false) {
        out.push_str(&format!("\nINVALID: {}", cell(&v["problem"])));
    }
    out
}

/// The audit report as text: every check with its count, then each violation with its rows.
pub fn audit_text(v: &Value) -> String {
    let rows: Vec<Value> = v["checks"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|mut c| {
            if c["capped"] == json!(true) {
                c["violations"] = json!(format!("{}+", c["violations"]));
            }
            c
        })
        .collect();
    let mut out = table(&rows, &[("name", "CHECK"), ("violations", "VIOLATIONS")]);
    let violations = v["violations"].as_array().cloned().unwrap_or_default();
    for x in &violations {
        out.push_str(&format!(
            "\n{} {}: {}",
            cell(&x["check"]),
            cell(&x["subject"]),
            x["detail"]
        ));
    }
    out.push_str(&format!(
        "\n{} in {} ledger rows, {} ms",
        if violations.is_empty() {
            "no violations".to_owned()
        } else {
            format!("{} violation(s)", violations.len())
        },
        v["ledger_rows"],
        v["ms"]
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_reports_read_as_a_table_then_each_violation() {
        let v = json!({"ok": false, "ledger_rows": 12, "ms": 4,
            "checks": [{"name": "grants_not_overdrawn", "violations": 1, "capped": false},
                       {"name": "no_event_stuck", "violations": 100, "capped": true},
                       {"name": "one_provider_submission", "violations": 0, "capped": false}],
            "violations": [{"check": "grants_not_overdrawn", "subject": "g1", "detail": {"amount": 5, "drawn": 8}}]});
        assert_eq!(
            audit_text(&v),
            "CHECK                    VIOLATIONS\n\
             grants_not_overdrawn     1\n\
             no_event_stuck           100+\n\
             one_provider_submission  0\n\
             grants_not_overdrawn g1: {\"amount\":5,\"drawn\":8}\n\
             1 violation(s) in 12 ledger rows, 4 ms"
        );
        let clean = json!({"ok": true, "ledger_rows": 3, "ms": 1, "checks": [], "violations": []});
        assert!(audit_text(&clean).ends_with("no violations in 3 ledger rows, 1 ms"));
    }

    #[test]
    fn queries_are_encoded() {
        assert_eq!(
            query(&[
                ("type", Some("task.submit".into())),
                ("x", None),
                ("q", Some("a b&c".into()))
            ]),
            "?type=task.submit&q=a%20b%26c"
        );
        assert_eq!(query(&[("x", None)]), "");
        assert_eq!(enc("dl_1/../x"), "dl_1%2F..%2Fx");
    }

    #[test]
    fn the_token_is_never_printed() {
        let mut out = Vec::new();
        print(
            &mut out,
            "echo: secret-token-123 here",
            Some("secret-token-123"),
        );
        assert_eq!(String::from_utf8(out).unwrap(), "echo: [redacted] here\n");
    }

    #[test]
    fn catalogues_read_as_products() {
        let v = json!({"version": 3, "updated_at": 0, "updated_by": "alice", "valid": true,
            "catalog": {"packs": [{"id": "starter", "creem_product_id": "prod_1", "price": 499, "currency": "USD", "credits": 50}],
                        "plans": [{"id": "pro_m", "plan": "pro", "cycle": "monthly", "creem_product_id": "prod_2", "price": 999, "currency": "USD", "credits_per_period": 200}]}});
        let t = catalog_text(&v);
        assert!(t.contains("pack  starter"), "{t}");
        assert!(t.contains("pro monthly"), "{t}");
        assert!(
            t.ends_with("version 3, changed 1970-01-01 00:00:00 UTC by alice"),
            "{t}"
        );
    }
}
