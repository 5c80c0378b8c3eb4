//! `cargo xtask admin …`: the operators' CLI over the admin API.
//!
//! ```text
//! cargo xtask admin dlq list [--queue Q] [--type T] [--error-class C] [--status S] [--since T] [--until T] [--limit N] [--cursor C]
//! cargo xtask admin dlq show ID
//! cargo xtask admin dlq replay --id ID [--force]
//! cargo xtask admin dlq replay --filter [--queue Q] [--type T] [--error-class C] [--since T] [--until T] [--dry-run] [--force]
//! cargo xtask admin dlq discard --id ID | --filter [filters] [--dry-run]
//! cargo xtask admin tasks list [--status S] [--older-than SECS] [--limit N] [--cursor C]
//! cargo xtask admin tasks show ID
//! cargo xtask admin tasks retry ID
//! cargo xtask admin token USER_ID [--ttl SECS]      (a session token for a user, as the login would)
//! cargo xtask admin cron runs [--job J] [--limit N]
//! cargo xtask admin cron run JOB
//! ```
//! Global: `--url` (or EDGELINE_URL, default http://127.0.0.1:8787), `--token` (or
//! EDGELINE_ADMIN_TOKEN, else ADMIN_TOKEN from .dev.vars), `--actor` (default $USER), `--json`.
//! Exits non-zero when the API answers with an error.

use crate::{root, Result};
use e2e::client::{Client, Reply};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

struct Args {
    positional: Vec<String>,
    flags: BTreeMap<String, String>,
    switches: Vec<String>,
}

const SWITCHES: [&str; 4] = ["json", "force", "dry-run", "filter"];

fn parse(args: &[String]) -> Result<Args> {
    let mut out = Args {
        positional: vec![],
        flags: BTreeMap::new(),
        switches: vec![],
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if let Some(name) = a.strip_prefix("--") {
            if SWITCHES.contains(&name) {
                out.switches.push(name.to_owned());
            } else {
                let v = it.next().ok_or_else(|| format!("--{name} needs a value"))?;
                out.flags.insert(name.to_owned(), v.clone());
            }
        } else {
            out.positional.push(a.clone());
        }
    }
    Ok(out)
}

impl Args {
    fn has(&self, s: &str) -> bool {
        self.switches.iter().any(|x| x == s)
    }
    fn flag(&self, f: &str) -> Option<&str> {
        self.flags.get(f).map(String::as_str)
    }
}

fn admin_token(args: &Args) -> Result<String> {
    if let Some(t) = args
        .flag("token")
        .map(str::to_owned)
        .or_else(|| std::env::var("EDGELINE_ADMIN_TOKEN").ok())
    {
        return Ok(t);
    }
    let vars = std::fs::read_to_string(root().join(".dev.vars")).unwrap_or_default();
    vars.lines()
        .filter_map(|l| l.trim().strip_prefix("ADMIN_TOKEN="))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .next()
        .ok_or_else(|| "no admin token: pass --token or set EDGELINE_ADMIN_TOKEN".into())
}

/// `2026-11-21 23:40:05` from unix seconds.
fn utc(secs: i64) -> String {
    shared::ids::iso8601(secs)
        .replace('T', " ")
        .trim_end_matches('Z')
        .to_owned()
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A plain text table, columns as wide as their widest cell.
fn table(rows: &[Value], columns: &[(&str, &str)]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            columns
                .iter()
                .map(|(key, _)| match (*key, &r[*key]) {
                    (k, Value::Number(n)) if k.ends_with("_at") => {
                        n.as_i64().map(utc).unwrap_or_default()
                    }
                    (_, v) => {
                        let s = cell(v);
                        if s.chars().count() > 60 {
                            format!("{}…", s.chars().take(59).collect::<String>())
                        } else {
                            s
                        }
                    }
                })
                .collect()
        })
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, (_, title))| {
            cells
                .iter()
                .map(|r| r[i].chars().count())
                .chain([title.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |values: Vec<String>| {
        values
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let mut out = vec![line(columns.iter().map(|(_, t)| (*t).to_owned()).collect())];
    out.extend(cells.into_iter().map(line));
    out.join("\n")
}

fn check(reply: Reply) -> Result<Value> {
    if (200..300).contains(&reply.status) {
        return Ok(reply.json());
    }
    let body = reply.json();
    let message = body
        .pointer("/error/message")
        .and_then(Value::as_str)
        .map_or_else(|| reply.text(), str::to_owned);
    let code = body
        .pointer("/error/code")
        .and_then(Value::as_str)
        .unwrap_or("error")
        .to_owned();
    Err(if reply.status == 0 {
        format!("cannot reach the API: {message}")
    } else {
        format!("{} {code}: {message}", reply.status)
    })
}

fn query(args: &Args, names: &[(&str, &str)]) -> String {
    let parts: Vec<String> = names
        .iter()
        .filter_map(|(flag, param)| args.flag(flag).map(|v| format!("{param}={v}")))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

fn filter_body(args: &Args) -> Value {
    let mut m = Map::new();
    for (flag, key) in [
        ("queue", "queue"),
        ("type", "type"),
        ("error-class", "error_class"),
        ("status", "status"),
    ] {
        if let Some(v) = args.flag(flag) {
            m.insert(key.into(), json!(v));
        }
    }
    for (flag, key) in [("since", "since"), ("until", "until")] {
        if let Some(v) = args.flag(flag).and_then(|v| v.parse::<i64>().ok()) {
            m.insert(key.into(), json!(v));
        }
    }
    m.insert("dry_run".into(), json!(args.has("dry-run")));
    m.insert("force".into(), json!(args.has("force")));
    Value::Object(m)
}

const DLQ_FILTERS: [(&str, &str); 8] = [
    ("queue", "queue"),
    ("type", "type"),
    ("error-class", "error_class"),
    ("status", "status"),
    ("since", "since"),
    ("until", "until"),
    ("limit", "limit"),
    ("cursor", "cursor"),
];

pub fn run(raw: &[String]) -> Result<()> {
    let args = parse(raw)?;
    let url = args
        .flag("url")
        .map(str::to_owned)
        .or_else(|| std::env::var("EDGELINE_URL").ok())
        .unwrap_or_else(|| "http://127.0.0.1:8787".into());
    let token = admin_token(&args)?;
    let actor = args
        .flag("actor")
        .map(str::to_owned)
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "cli".into());
    let client = Client::new(&url);
    let get =
        |path: &str| check(client.send("GET", path, Some(&token), &[("x-actor", &actor)], None));
    let post = |path: &str, body: &Value| {
        check(client.send(
            "POST",
            path,
            Some(&token),
            &[("x-actor", &actor)],
            Some(("application/json", body.to_string().as_bytes())),
        ))
    };
    let words: Vec<&str> = args.positional.iter().map(String::as_str).collect();
    let as_json = args.has("json");
    let out = match words.as_slice() {
        ["dlq", "list"] => {
            let v = get(&format!("/admin/dead-letters{}", query(&args, &DLQ_FILTERS)))?;
            let rows = v["dead_letters"].as_array().cloned().unwrap_or_default();
            let cols = [("id", "ID"), ("source_queue", "QUEUE"), ("message_type", "TYPE"), ("error_class", "ERROR"), ("attempts", "ATTEMPTS"), ("last_failed_at", "LAST FAILED (UTC)"), ("status", "STATUS")];
            (v.clone(), format!("{}{}", table(&rows, &cols), v["next_cursor"].as_str().map(|c| format!("\nmore: --cursor {c}")).unwrap_or_default()))
        }
        ["dlq", "show", id] => {
            let v = get(&format!("/admin/dead-letters/{id}"))?;
            let text = serde_json::to_string_pretty(&v).unwrap_or_default();
            (v, text)
        }
        ["dlq", verb @ ("replay" | "discard")] => {
            let v = if let Some(id) = args.flag("id") {
                let force = if args.has("force") && *verb == "replay" { "?force=true" } else { "" };
                post(&format!("/admin/dead-letters/{id}/{verb}{force}"), &json!({}))?
            } else if args.has("filter") {
                post(&format!("/admin/dead-letters/{verb}"), &filter_body(&args))?
            } else {
                return Err(format!("dlq {verb} needs --id ID or --filter"));
            };
            let text = if v.get("count").is_some() {
                let ids: Vec<String> = v["ids"].as_array().map(|a| a.iter().map(cell).collect()).unwrap_or_default();
                format!(
                    "{} {} dead letter(s){}{}",
                    if v["dry_run"] == json!(true) { "would" } else { "did" },
                    if *verb == "replay" { format!("replay {}", v["count"]) } else { format!("discard {}", v["count"]) },
                    if ids.is_empty() { String::new() } else { format!(":\n  {}", ids.join("\n  ")) },
                    if v["more"] == json!(true) { "\nmore match: run again" } else { "" }
                )
            } else if *verb == "replay" {
                format!("{}: {}", v["id"].as_str().unwrap_or(""), if v["sent"] == json!(true) { "replayed" } else { "not sent (already replayed; --force to send again)" })
            } else {
                format!("{}: {}", v["id"].as_str().unwrap_or(""), if v["discarded"] == json!(true) { "discarded" } else { "not discarded (not dead)" })
            };
            (v, text)
        }
        ["tasks", "list"] => {
            let v = get(&format!("/admin/tasks{}", query(&args, &[("status", "status"), ("older-than", "older_than_secs"), ("limit", "limit"), ("cursor", "cursor")])))?;
            let rows = v["tasks"].as_array().cloned().unwrap_or_default();
            let cols = [("id", "ID"), ("task_no", "TASK NO"), ("status", "STATUS"), ("model", "MODEL"), ("user_id", "USER"), ("created_at", "CREATED (UTC)"), ("failure_reason", "REASON")];
            (v.clone(), format!("{}{}", table(&rows, &cols), v["next_cursor"].as_str().map(|c| format!("\nmore: --cursor {c}")).unwrap_or_default()))
        }
        ["tasks", "show", id] => {
            let v = get(&format!("/admin/tasks/{id}"))?;
            let text = serde_json::to_string_pretty(&v).unwrap_or_default();
            (v, text)
        }
        ["tasks", "retry", id] => {
            let v = post(&format!("/admin/tasks/{id}/retry"), &json!({}))?;
            let text = format!(
                "{} task {} for {id}",
                if v["created"] == json!(true) { "created" } else { "already retried as" },
                v.pointer("/task/id").and_then(Value::as_str).unwrap_or("")
            );
            (v, text)
        }
        ["token", user] => {
            let mut body = json!({});
            if let Some(ttl) = args.flag("ttl").and_then(|t| t.parse::<i64>().ok()) {
                body["ttl_secs"] = json!(ttl);
            }
            let v = post(&format!("/admin/users/{user}/sessions"), &body)?;
            let text = v["token"].as_str().unwrap_or_default().to_owned();
            (v, text)
        }
        ["cron", "runs"] => {
            let v = get(&format!("/admin/cron/runs{}", query(&args, &[("job", "job"), ("limit", "limit")])))?;
            let rows = v["runs"].as_array().cloned().unwrap_or_default();
            let rows: Vec<Value> = rows
                .into_iter()
                .map(|mut r| {
                    let ms = r["finished_at"].as_i64().zip(r["started_at"].as_i64()).map(|(f, s)| f - s);
                    r["took_ms"] = json!(ms);
                    r["started"] = json!(r["started_at"].as_i64().map(|s| utc(s / 1000)));
                    r
                })
                .collect();
            let cols = [("job", "JOB"), ("schedule", "SCHEDULE"), ("started", "STARTED (UTC)"), ("took_ms", "MS"), ("examined", "EXAMINED"), ("changed", "CHANGED"), ("errors", "ERRORS"), ("stopped_early", "STOPPED EARLY")];
            (v, table(&rows, &cols))
        }
        ["cron", "run", job] => {
            let v = post(&format!("/admin/cron/{job}"), &json!({}))?;
            let s = &v["summary"];
            let text = format!(
                "{job}: examined {}, changed {}, errors {}{} in {} ms",
                s["examined"], s["changed"], s["errors"],
                if s["stopped_early"] == json!(true) { ", stopped early (the next run continues)" } else { "" },
                v["ms"]
            );
            (v, text)
        }
        _ => return Err("usage: cargo xtask admin <dlq list|show|replay|discard | tasks list|show|retry | cron runs|run> … (see xtask/src/admin.rs)".into()),
    };
    println!("{}", if as_json { out.0.to_string() } else { out.1 });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_tables() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(1_795_219_200 + 3661), "2026-11-21 01:01:01");
        let t = table(
            &[json!({"id": "a", "n": 10})],
            &[("id", "ID"), ("n", "COUNT")],
        );
        assert_eq!(t, "ID  COUNT\na   10");
    }

    #[test]
    fn arguments() {
        let a = parse(&[
            "dlq".into(),
            "list".into(),
            "--queue".into(),
            "q".into(),
            "--json".into(),
        ])
        .unwrap();
        assert_eq!(a.positional, vec!["dlq", "list"]);
        assert_eq!(a.flag("queue"), Some("q"));
        assert!(a.has("json"));
        assert!(parse(&["--queue".into()]).is_err());
        assert_eq!(
            query(&a, &[("queue", "queue"), ("type", "type")]),
            "?queue=q"
        );
    }
}
