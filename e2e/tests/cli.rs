//! The operators' CLI, the built `edgeline` binary, against the real local stack: every verb
//! once, `--help` of every verb, the exit codes (0 done, 1 problems found, 2 usage, 3 API error,
//! 4 unreachable, 130 interrupted), `--json` that parses, configuration from flags, the
//! environment and the config file, a token that never shows in any output, and a bulk replay
//! of 2,000 seeded dead letters over several pages (also interrupted with Ctrl-C between pages).
//!
//!     cargo xtask build && cargo test -p e2e --test cli
//!
//! Prints figures: the binary's size, its start time (`edgeline --version`) and the bulk
//! replay's wall time and pages.

use e2e::check::{ensure, eq};
use e2e::client::Client;
use e2e::stack::{free_port, root, Seed, Stack, StackOptions, ADMIN_TOKEN};
use e2e::tasks;
use libtest_mimic::Failed;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ACTOR: &str = "e2e-cli";
/// Seeded dead letters for the bulk replay.
const BULK: usize = 2000;
/// Seeded dead letters for the interrupted replay: 6 pages, so Ctrl-C after the first lands
/// well before the last (a local page takes about 0.1 s).
const INTERRUPTED: usize = 3000;
/// Completed without its settlement: the audit's violation.
const BROKEN: &str = "eeeeeeee-eeee-4eee-8eee-cccccccccccc";
const AUDIT_USER: &str = "33333333-3333-4333-8333-cccccccccccc";
const WAIT: Duration = Duration::from_secs(90);

fn seed(s: &Seed) -> Result<(), String> {
    let now = "CAST(strftime('%s','now') AS INTEGER)";
    // task.submit bodies for tasks that do not exist: replaying them is harmless (the consumer
    // finds nothing to claim)
    let letters = |prefix: &str, class: &str, tag: &str, n: usize| {
        format!(
            "INSERT INTO dead_letters (id, source_queue, message_id, message_type, body, attempts, error_class, error_text, first_failed_at, last_failed_at)
               WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {n})
               SELECT '{prefix}' || i, 'edgeline-tasks', 'm-{prefix}' || i, 'task.submit',
                      '{{\"v\":1,\"type\":\"task.submit\",\"task_id\":\"00000000-0000-4000-{tag}-' || substr('000000000000' || i, -12, 12) || '\",\"attempt\":3}}',
                      4, '{class}', 'seeded by the cli suite', {now} - 3600 - i, {now} - 3600 - i FROM n;"
        )
    };
    let sql = [
        letters("dl_bulk_", "cli_bulk", "8001", BULK),
        letters("dl_intr_", "cli_interrupt", "8002", INTERRUPTED),
        letters("dl_one_", "cli_one", "8003", 1),
        letters("dl_two_", "cli_two", "8004", 1),
        letters("dl_discard_", "cli_discard", "8005", 3),
        format!(
            "INSERT INTO users (id, email, name, credits, created_at, updated_at) VALUES ('{AUDIT_USER}', 'cli-audit@e2e.test', 'Audit', 0, 0, 0);
             INSERT INTO ai_tasks (id, task_no, user_id, status, input_params, external_provider, external_task_id, cost, deadline_at, created_at, updated_at)
               VALUES ('{BROKEN}', 'T-{BROKEN}', '{AUDIT_USER}', 'completed', '{{}}', 'kie_4o', 'x', 2, {now}, {now}, {now});
             INSERT INTO credit_records (id, user_id, amount, type, entity_type, entity_id, created_at)
               VALUES ('reserve:{BROKEN}', '{AUDIT_USER}', -2, 'reserve', 'task', '{BROKEN}', {now});
             INSERT INTO webhook_events (id, provider, event_id, event_type, payload, status, received_at)
               VALUES ('whe_cli_1', 'creem', 'evt_cli_1', 'checkout.completed', '{{}}', 'applied', {now} - 60);"
        ),
    ]
    .join("\n");
    s.d1(&sql)
}

fn bin() -> PathBuf {
    root().join("target/debug/edgeline")
}

/// A directory of this run's own: the CLI's working directory and config home, so neither a
/// `.dev.vars` nor a developer's config file is picked up.
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir()
        .join(format!("edgeline-cli-e2e-{}", std::process::id()))
        .join(name);
    let _ = std::fs::create_dir_all(&d);
    d
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
    fn json(&self) -> Result<Value, String> {
        serde_json::from_str(self.stdout.trim())
            .map_err(|e| format!("not JSON ({e}): {}", self.all()))
    }
    fn expect(&self, code: i32, what: &str) -> Result<&Self, String> {
        if self.code == code {
            Ok(self)
        } else {
            Err(format!(
                "{what}: exit {} (want {code})\n{}",
                self.code,
                self.all()
            ))
        }
    }
}

/// The CLI with nothing from the environment: no `EDGELINE_*`, an empty config home.
fn bare(args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.args(args)
        .env_remove("EDGELINE_URL")
        .env_remove("EDGELINE_ADMIN_TOKEN")
        .env_remove("EDGELINE_ACTOR")
        .env_remove("EDGELINE_CONFIG")
        .env("XDG_CONFIG_HOME", scratch("empty-config"))
        .current_dir(scratch("cwd"))
        .stdin(Stdio::null());
    c
}

/// Runs it; whatever it printed must not hold the admin token (nor `also_secret`).
fn run_checked(c: &mut Command, also_secret: Option<&str>) -> Result<Out, String> {
    let out = c.output().map_err(|e| format!("running edgeline: {e}"))?;
    let out = Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    for secret in [Some(ADMIN_TOKEN), also_secret].into_iter().flatten() {
        ensure(
            !out.all().contains(secret),
            format!("a token was printed by {c:?}:\n{}", out.all()),
        )?;
    }
    Ok(out)
}

fn run(c: &mut Command) -> Result<Out, String> {
    run_checked(c, None)
}

/// The CLI pointed at this stack by its flags (URL, admin token, actor), not yet run.
fn against(stack: &Stack, args: &[&str]) -> Command {
    let mut c = bare(args);
    c.args([
        "--url",
        &stack.api,
        "--token",
        ADMIN_TOKEN,
        "--actor",
        ACTOR,
    ]);
    c
}

/// The CLI against this stack, with the flags.
fn cli(stack: &Stack, args: &[&str]) -> Result<Out, String> {
    run(&mut against(stack, args))
}

/// How many dead letters match a list query, through the API.
fn count(c: &Client, q: &str) -> usize {
    c.all(
        &format!("/admin/dead-letters?{q}"),
        ADMIN_TOKEN,
        "dead_letters",
    )
    .len()
}

// ---------------------------------------------------------------------------------------------

const VERBS: [&str; 36] = [
    "dlq",
    "dlq list",
    "dlq show",
    "dlq replay",
    "dlq discard",
    "tasks",
    "tasks list",
    "tasks show",
    "tasks timeline",
    "tasks retry",
    "events",
    "events list",
    "orders",
    "orders list",
    "orders stats",
    "stats",
    "storage",
    "storage stats",
    "users",
    "users list",
    "users show",
    "users signins",
    "users create",
    "users grant",
    "token",
    "cron",
    "cron runs",
    "cron run",
    "audit",
    "audit-log",
    "catalog",
    "catalog show",
    "catalog set",
    "queue",
    "queue send",
    "completions",
];

fn help_on_every_verb_and_the_figures(_: &Stack) -> Result<(), Failed> {
    // every command the binary lists is covered here
    let top = run(&mut bare(&["--help"]))?;
    top.expect(0, "--help")?;
    for needle in ["Exit codes:", "EDGELINE_URL", "config.toml", "Examples:"] {
        ensure(
            top.stdout.contains(needle),
            format!("--help names {needle}: {}", top.stdout),
        )?;
    }
    let listed: Vec<String> = top
        .stdout
        .split("Commands:")
        .nth(1)
        .unwrap_or("")
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .filter(|v| v != "help")
        .collect();
    for v in &listed {
        ensure(
            VERBS.contains(&v.as_str()),
            format!("{v} has no help check here"),
        )?;
    }
    for verb in VERBS {
        let words: Vec<&str> = verb.split(' ').collect();
        let out = run(bare(&words)
            .arg("--help")
            .env("EDGELINE_ADMIN_TOKEN", ADMIN_TOKEN))?;
        out.expect(0, &format!("{verb} --help"))?;
        ensure(
            out.stdout.contains("Examples:") && out.stdout.contains(&format!("edgeline {verb}")),
            format!("{verb} --help has an example: {}", out.stdout),
        )?;
    }

    // figures: the binary's size and how long it takes to start
    let size = |p: PathBuf| std::fs::metadata(p).map(|m| m.len()).ok();
    let mut times: Vec<Duration> = (0..20)
        .map(|_| {
            let t = Instant::now();
            let _ = bare(&["--version"]).output();
            t.elapsed()
        })
        .collect();
    times.sort();
    let version = run(&mut bare(&["--version"]))?;
    version.expect(0, "--version")?;
    println!(
        "figure: {} debug binary {:.1} MiB; release binary {}; start (`edgeline --version`, 20 runs) min {:.1} ms, median {:.1} ms",
        version.stdout.trim(),
        size(bin()).unwrap_or(0) as f64 / 1_048_576.0,
        size(root().join("target/release/edgeline"))
            .map_or("not built (cargo build --release -p edgeline)".to_owned(), |s| format!("{:.2} MiB", s as f64 / 1_048_576.0)),
        times[0].as_secs_f64() * 1000.0,
        times[10].as_secs_f64() * 1000.0,
    );
    Ok(())
}

fn usage_errors_exit_2_and_name_the_argument(stack: &Stack) -> Result<(), Failed> {
    let cases: [(&[&str], &str); 7] = [
        (&["dlq", "list", "--bogus"], "--bogus"),
        (&["dlq", "list", "--limit", "999"], "--limit"),
        (&["tasks", "list", "--status", "nope"], "--status"),
        (&["dlq", "replay"], "--id"),
        (
            &["dlq", "replay", "--id", "dl_one_1", "--type", "task.submit"],
            "--id",
        ),
        (&["audit", "--stuck-secs", "5"], "--stuck-secs"),
        (
            &[
                "catalog",
                "set",
                "--file",
                "/nonexistent/catalog.json",
                "--expected-version",
                "1",
            ],
            "--file",
        ),
    ];
    for (args, names) in cases {
        let out = cli(stack, args)?;
        out.expect(2, &args.join(" "))?;
        ensure(
            out.stderr.contains(names),
            format!("{} names {names}: {}", args.join(" "), out.stderr),
        )?;
    }
    let out = run(&mut bare(&["completions", "tcsh"]))?;
    out.expect(2, "an unknown shell")?;
    Ok(())
}

fn unreachable_exits_4_and_a_wrong_token_3(stack: &Stack) -> Result<(), Failed> {
    let port = free_port()?;
    let out = run(bare(&["audit"]).args([
        "--url",
        &format!("http://127.0.0.1:{port}"),
        "--token",
        ADMIN_TOKEN,
    ]))?;
    out.expect(4, "nothing listening")?;
    ensure(out.stderr.contains("cannot reach"), out.stderr.clone())?;

    let wrong = "wrong-token-0123456789";
    for args in [
        &["dlq", "list"][..],
        &["orders", "stats", "--json"],
        &["dlq", "replay", "--filter", "--error-class", "cli_bulk"],
    ] {
        let out = run_checked(
            bare(args).args(["--url", &stack.api, "--token", wrong]),
            Some(wrong),
        )?;
        out.expect(3, &format!("a wrong token: {}", args.join(" ")))?;
        ensure(
            out.stderr.contains("401"),
            format!("says 401: {}", out.stderr),
        )?;
    }
    let out = cli(stack, &["dlq", "show", "no-such-letter"])?;
    out.expect(3, "no such letter")?;
    ensure(out.stderr.contains("404"), out.stderr.clone())?;
    Ok(())
}

/// One letter by id, the list, a discard by filter, and the audit log of it.
fn dead_letters_one_by_one(stack: &Stack) -> Result<(), Failed> {
    let out = cli(stack, &["dlq", "list", "--error-class", "cli_one"])?;
    out.expect(0, "dlq list")?;
    ensure(
        out.stdout.contains("QUEUE") && out.stdout.contains("dl_one_1"),
        out.stdout.clone(),
    )?;
    let out = cli(
        stack,
        &["dlq", "list", "--error-class", "cli_bulk", "--limit", "5"],
    )?;
    ensure(
        out.stdout.contains("more: --cursor"),
        format!("a next page: {}", out.stdout),
    )?;
    let page = cli(
        stack,
        &[
            "dlq",
            "list",
            "--error-class",
            "cli_bulk",
            "--limit",
            "5",
            "--json",
        ],
    )?
    .json()?;
    eq(
        page["dead_letters"].as_array().map(Vec::len),
        Some(5),
        "a page of 5",
    )?;
    let cursor = page["next_cursor"].as_str().unwrap_or_default().to_owned();
    let next = cli(
        stack,
        &[
            "dlq",
            "list",
            "--error-class",
            "cli_bulk",
            "--limit",
            "5",
            "--cursor",
            &cursor,
            "--json",
        ],
    )?
    .json()?;
    ensure(
        next["dead_letters"][0]["id"] != page["dead_letters"][0]["id"],
        "the cursor moves on",
    )?;

    let shown = cli(stack, &["dlq", "show", "dl_one_1"])?;
    shown.expect(0, "dlq show")?;
    ensure(
        shown.stdout.contains("task.submit") && shown.stdout.contains("\"history\""),
        shown.stdout.clone(),
    )?;
    let dry = cli(stack, &["dlq", "replay", "--id", "dl_one_1", "--dry-run"])?;
    ensure(
        dry.code == 0 && dry.stdout.contains("would replay dl_one_1"),
        dry.all(),
    )?;
    let out = cli(stack, &["dlq", "replay", "--id", "dl_one_1"])?;
    ensure(
        out.code == 0 && out.stdout.contains("dl_one_1: replayed"),
        out.all(),
    )?;
    let out = cli(stack, &["dlq", "replay", "--id", "dl_one_1"])?;
    ensure(out.code == 0 && out.stdout.contains("not sent"), out.all())?;
    let out = cli(stack, &["dlq", "discard", "--id", "dl_two_1", "--json"])?;
    eq(out.json()?["discarded"].as_bool(), Some(true), "discarded")?;

    let dry = cli(
        stack,
        &[
            "dlq",
            "discard",
            "--filter",
            "--error-class",
            "cli_discard",
            "--dry-run",
            "--json",
        ],
    )?
    .json()?;
    eq(dry["count"].as_u64(), Some(3), &format!("dry run: {dry}"))?;
    eq(
        count(&stack.client(), "error_class=cli_discard&status=dead"),
        3,
        "the dry run changed nothing",
    )?;
    let out = cli(
        stack,
        &["dlq", "discard", "--filter", "--error-class", "cli_discard"],
    )?;
    ensure(
        out.code == 0
            && out
                .stdout
                .contains("discarded 3 dead letter(s) in 1 page(s)"),
        out.all(),
    )?;
    let again = cli(
        stack,
        &[
            "dlq",
            "discard",
            "--filter",
            "--error-class",
            "cli_discard",
            "--json",
        ],
    )?
    .json()?;
    eq(again["count"].as_u64(), Some(0), "nothing left")?;

    let log = cli(stack, &["audit-log", "--target", "dl_one_1", "--json"])?.json()?;
    ensure(
        log["entries"].as_array().is_some_and(|e| {
            e.iter()
                .any(|x| x["action"] == "dead_letter.replay" && x["actor"] == ACTOR)
        }),
        format!("the replay is in the audit log, by {ACTOR}: {log}"),
    )?;
    let out = cli(
        stack,
        &[
            "audit-log",
            "--action",
            "dead_letter.discard",
            "--by",
            ACTOR,
        ],
    )?;
    ensure(out.code == 0 && out.stdout.contains("dl_two_1"), out.all())?;
    Ok(())
}

/// 2,000 dead letters replayed by filter over every page, then 3,000 interrupted with Ctrl-C
/// after the first page and finished by a second run.
fn bulk_replay_over_pages_and_ctrl_c(stack: &Stack) -> Result<(), Failed> {
    let c = stack.client();
    let dry = cli(
        stack,
        &[
            "dlq",
            "replay",
            "--filter",
            "--error-class",
            "cli_bulk",
            "--dry-run",
            "--json",
        ],
    )?;
    let dry = dry.json()?;
    eq(
        dry["count"].as_u64(),
        Some(BULK as u64),
        &format!("the dry run counts them all: {}", dry["count"]),
    )?;
    eq(dry["pages"].as_u64(), Some(4), "in 4 pages")?;
    let text = cli(
        stack,
        &[
            "dlq",
            "replay",
            "--filter",
            "--error-class",
            "cli_bulk",
            "--dry-run",
        ],
    )?;
    ensure(
        text.stdout
            .contains("would replay 2000 dead letter(s), in 4 page(s)"),
        text.all(),
    )?;
    eq(
        count(&c, "error_class=cli_bulk&status=dead"),
        BULK,
        "the dry runs changed nothing",
    )?;

    let started = Instant::now();
    let out = cli(
        stack,
        &[
            "dlq",
            "replay",
            "--filter",
            "--error-class",
            "cli_bulk",
            "--json",
        ],
    )?;
    let wall = started.elapsed();
    out.expect(0, "bulk replay")?;
    let done = out.json()?;
    let pages = done["pages"].as_u64().unwrap_or(0);
    println!(
        "figure: bulk replay of {BULK} dead letters: {:.2} s wall, {pages} pages (API {} ms)",
        wall.as_secs_f64(),
        done["ms"]
    );
    eq(
        done["count"].as_u64(),
        Some(BULK as u64),
        "every one replayed",
    )?;
    ensure(pages >= 4, format!("in at least 4 pages: {pages}"))?;
    let ids: std::collections::HashSet<&str> = done["ids"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    eq(ids.len(), BULK, "each once")?;
    eq(
        (done["more"].as_bool(), done["interrupted"].as_bool()),
        (Some(false), Some(false)),
        "finished",
    )?;
    eq(
        count(&c, "error_class=cli_bulk&status=dead"),
        0,
        "none left dead",
    )?;
    let all = cli(
        stack,
        &[
            "dlq",
            "list",
            "--error-class",
            "cli_bulk",
            "--status",
            "replayed",
            "--all",
            "--limit",
            "200",
            "--json",
        ],
    )?
    .json()?;
    eq(
        all["dead_letters"].as_array().map(Vec::len),
        Some(BULK),
        "--all lists every replayed one",
    )?;
    let again = cli(
        stack,
        &["dlq", "replay", "--filter", "--error-class", "cli_bulk"],
    )?;
    ensure(
        again.code == 0
            && again
                .stdout
                .contains("replayed 0 dead letter(s) in 1 page(s)"),
        again.all(),
    )?;

    // Ctrl-C after the first page: that page stays done, no other is cut, exit 130
    let mut child = against(
        stack,
        &[
            "dlq",
            "replay",
            "--filter",
            "--error-class",
            "cli_interrupt",
            "--json",
            "--verbose",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .map_err(|e| format!("spawning edgeline: {e}"))?;
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let mut stderr = BufReader::new(child.stderr.take().ok_or("no stderr")?);
    let mut log = String::new();
    let mut signalled = false;
    let mut line = String::new();
    while stderr.read_line(&mut line).unwrap_or(0) > 0 {
        log.push_str(&line);
        if !signalled && line.starts_with("page 1:") {
            let _ = Command::new("kill")
                .args(["-s", "INT", &child.id().to_string()])
                .status();
            signalled = true;
        }
        line.clear();
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    let stdout = reader.join().unwrap_or_default();
    ensure(signalled, format!("the first page was reported: {log}"))?;
    ensure(
        !log.contains(ADMIN_TOKEN) && !stdout.contains(ADMIN_TOKEN),
        "no token in the output",
    )?;
    eq(status.code(), Some(130), &format!("interrupted: {log}"))?;
    let first: Value = serde_json::from_str(stdout.trim()).map_err(|e| format!("{e}: {stdout}"))?;
    let n = usize::try_from(first["count"].as_u64().unwrap_or(0)).unwrap_or(0);
    ensure(
        first["interrupted"] == json!(true) && n > 0 && n < INTERRUPTED && n % 500 == 0,
        format!("stopped between pages, whole pages done: {first}"),
    )?;
    println!(
        "interrupted replay: Ctrl-C after page 1, stopped after page {} with {n} of {INTERRUPTED} replayed",
        first["pages"]
    );
    eq(
        count(&c, "error_class=cli_interrupt&status=replayed"),
        n,
        "exactly the pages reported are replayed",
    )?;
    eq(
        count(&c, "error_class=cli_interrupt&status=dead"),
        INTERRUPTED - n,
        "the rest untouched",
    )?;
    let rest = cli(
        stack,
        &[
            "dlq",
            "replay",
            "--filter",
            "--error-class",
            "cli_interrupt",
            "--json",
        ],
    )?
    .json()?;
    eq(
        rest["count"].as_u64(),
        Some((INTERRUPTED - n) as u64),
        "running it again finishes it",
    )?;
    eq(
        count(&c, "error_class=cli_interrupt&status=dead"),
        0,
        "none left",
    )?;
    Ok(())
}

fn users_tokens_and_tasks(stack: &Stack) -> Result<(), Failed> {
    let c = stack.client();
    let email = format!("cli-{}@e2e.test", std::process::id());
    let created = cli(
        stack,
        &[
            "users",
            "create",
            "--email",
            &email,
            "--name",
            "CLI",
            "--credits",
            "10",
            "--json",
        ],
    )?;
    created.expect(0, "users create")?;
    let user = created.json()?["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let out = cli(
        stack,
        &[
            "users",
            "grant",
            &user,
            "--credits",
            "5",
            "--reference",
            "cli-ref",
            "--note",
            "e2e",
            "--expires-at",
            "30d",
        ],
    )?;
    ensure(
        out.code == 0 && out.stdout.contains("granted 5 credits"),
        out.all(),
    )?;
    let out = cli(
        stack,
        &[
            "users",
            "grant",
            &user,
            "--credits",
            "5",
            "--reference",
            "cli-ref",
        ],
    )?;
    out.expect(3, "the same reference again")?;
    ensure(out.stderr.contains("409"), out.stderr.clone())?;
    let out = cli(stack, &["token", &user, "--ttl", "10m"])?;
    out.expect(0, "token")?;
    let token = out.stdout.trim().to_owned();
    eq(token.split('.').count(), 3, "a JWT")?;
    eq(c.balance(&token), 15, "the gift and the grant")?;
    let out = cli(stack, &["users", "list", "--search", &email])?;
    ensure(
        out.code == 0 && out.stdout.contains(&user) && out.stdout.contains("EMAIL"),
        out.all(),
    )?;
    let out = cli(stack, &["users", "show", &user])?;
    ensure(
        out.code == 0 && out.stdout.contains("balance: 15 credits"),
        out.all(),
    )?;
    let v = cli(stack, &["users", "show", &user, "--json"])?.json()?;
    ensure(
        v["ledger"].as_array().is_some_and(|l| l.len() >= 2),
        format!("the gift and the grant in the ledger: {v}"),
    )?;
    let v = cli(
        stack,
        &["users", "signins", &user, "--limit", "5", "--json"],
    )?
    .json()?;
    ensure(v["signins"].is_array(), format!("sign-ins: {v}"))?;

    let prompt = "a cli retry [sim:fail]";
    let r = tasks::submit(&c, &token, prompt, "kie_4o");
    eq(r.status, 202, &r.text())?;
    let id = tasks::id(&r);
    eq(
        c.wait_task(&token, &id, WAIT)["status"].as_str(),
        Some("failed"),
        "fails",
    )?;
    let out = cli(stack, &["tasks", "list", "--status", "failed"])?;
    ensure(
        out.code == 0 && out.stdout.contains(&id) && out.stdout.contains("REASON"),
        out.all(),
    )?;
    let listed = cli(
        stack,
        &[
            "tasks",
            "list",
            "--status",
            "failed",
            "--older-than",
            "0",
            "--all",
            "--json",
        ],
    )?
    .json()?;
    ensure(
        listed["tasks"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["id"] == id.as_str())),
        "listed as JSON",
    )?;
    let shown = cli(stack, &["tasks", "show", &id])?;
    ensure(
        shown.code == 0 && shown.stdout.contains("\"ledger\""),
        shown.all(),
    )?;
    stack.sim.heal(prompt);
    let out = cli(stack, &["tasks", "retry", &id])?;
    ensure(
        out.code == 0 && out.stdout.starts_with("created task "),
        out.all(),
    )?;
    let out = cli(stack, &["tasks", "retry", &id, "--json"])?;
    eq(
        out.json()?["created"].as_bool(),
        Some(false),
        "retried once",
    )?;
    let out = cli(stack, &["tasks", "timeline", &id])?;
    ensure(
        out.code == 0 && out.stdout.contains(&id) && out.stdout.contains("KIND"),
        out.all(),
    )?;
    cli(stack, &["tasks", "timeline", &id, "--json"])?.json()?;
    cli(stack, &["tasks", "show", "not-a-task-id"])?.expect(3, "a bad id")?;
    Ok(())
}

fn ops_views_cron_and_the_audit(stack: &Stack) -> Result<(), Failed> {
    let out = cli(stack, &["events", "list"])?;
    ensure(
        out.code == 0 && out.stdout.contains("PROVIDER") && out.stdout.contains("evt_cli_1"),
        out.all(),
    )?;
    let v = cli(
        stack,
        &[
            "webhook-events",
            "list",
            "--status",
            "applied",
            "--limit",
            "5",
            "--json",
        ],
    )?
    .json()?;
    ensure(v["webhook_events"].is_array(), format!("{v}"))?;
    let out = cli(stack, &["orders", "stats"])?;
    ensure(out.code == 0 && out.stdout.contains("order(s)"), out.all())?;
    cli(stack, &["orders", "stats", "--json"])?.json()?;
    let out = cli(stack, &["orders", "list", "--status", "pending"])?;
    ensure(out.code == 0 && out.stdout.contains("PRODUCT"), out.all())?;
    let v = cli(stack, &["orders", "list", "--all", "--json"])?.json()?;
    ensure(v["orders"].is_array(), format!("{v}"))?;
    let out = cli(stack, &["stats"])?;
    ensure(
        out.code == 0 && out.stdout.contains("tasks:") && out.stdout.contains("ERROR CLASS"),
        out.all(),
    )?;
    let v = cli(stack, &["stats", "--json"])?.json()?;
    ensure(v["tasks"]["total"].is_number(), format!("{v}"))?;
    let out = cli(stack, &["storage", "stats"])?;
    ensure(out.code == 0 && out.stdout.contains("object(s)"), out.all())?;
    let v = cli(stack, &["storage", "stats", "--prefix", "cache/", "--json"])?.json()?;
    eq(v["prefix"].as_str(), Some("cache/"), "prefix")?;

    let out = cli(stack, &["cron", "run", "expire_orders"])?;
    ensure(
        out.code == 0 && out.stdout.contains("expire_orders: examined"),
        out.all(),
    )?;
    let out = cli(stack, &["cron", "runs", "--job", "expire_orders"])?;
    ensure(
        out.code == 0 && out.stdout.contains("JOB") && out.stdout.contains("expire_orders"),
        out.all(),
    )?;
    let v = cli(stack, &["cron", "runs", "--limit", "3", "--json"])?.json()?;
    ensure(
        v["runs"].as_array().is_some_and(|r| !r.is_empty()),
        format!("{v}"),
    )?;
    cli(stack, &["cron", "run", "no_such_job"])?.expect(3, "an unknown job")?;

    let out = cli(stack, &["audit"])?;
    out.expect(1, "an audit with a violation")?;
    ensure(
        out.stdout.contains(BROKEN) && out.stderr.contains("violation"),
        out.all(),
    )?;
    let out = cli(stack, &["audit", "--stuck-secs", "600", "--json"])?;
    out.expect(1, "the same as JSON")?;
    eq(out.json()?["ok"].as_bool(), Some(false), "not ok")?;

    let v = cli(
        stack,
        &[
            "audit-log",
            "--action",
            "cron.run",
            "--by",
            ACTOR,
            "--limit",
            "200",
            "--json",
        ],
    )?
    .json()?;
    ensure(
        v["entries"].as_array().is_some_and(|e| !e.is_empty()),
        format!("the cron run is logged: {v}"),
    )?;
    Ok(())
}

fn catalog_show_and_set(stack: &Stack) -> Result<(), Failed> {
    let out = cli(stack, &["catalog", "show"])?;
    ensure(
        out.code == 0 && out.stdout.contains("KIND") && out.stdout.contains("version "),
        out.all(),
    )?;
    let shown = cli(stack, &["catalog", "show", "--json"])?.json()?;
    let version = shown["version"].as_i64().ok_or("a version")?;
    // what `catalog show --json` printed is a file `catalog set` takes
    let file = scratch("catalog").join("catalog.json");
    std::fs::write(&file, shown.to_string()).map_err(|e| e.to_string())?;
    let f = file.display().to_string();
    let v = version.to_string();
    let out = cli(
        stack,
        &["catalog", "set", "--file", &f, "--expected-version", &v],
    )?;
    ensure(
        out.code == 0
            && out
                .stdout
                .contains(&format!("version {} (was {version})", version + 1)),
        out.all(),
    )?;
    let out = cli(
        stack,
        &["catalog", "set", "--file", &f, "--expected-version", &v],
    )?;
    out.expect(3, "a stale version")?;
    ensure(
        out.stderr.contains("409") && out.stderr.contains("version_conflict"),
        out.stderr.clone(),
    )?;
    // the catalogue alone, from stdin
    let mut child = against(
        stack,
        &[
            "catalog",
            "set",
            "--file",
            "-",
            "--expected-version",
            &(version + 1).to_string(),
            "--json",
        ],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .map_err(|e| e.to_string())?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(shown["catalog"].to_string().as_bytes());
    }
    let done = child.wait_with_output().map_err(|e| e.to_string())?;
    eq(
        done.status.code(),
        Some(0),
        &String::from_utf8_lossy(&done.stderr),
    )?;
    let v: Value = serde_json::from_slice(&done.stdout).map_err(|e| e.to_string())?;
    eq(v["version"].as_i64(), Some(version + 2), "from stdin")?;
    let out = cli(stack, &["catalog", "show"])?;
    ensure(
        out.stdout.contains(&format!("version {}", version + 2)) && out.stdout.contains(ACTOR),
        out.all(),
    )?;
    Ok(())
}

fn queue_send_in_batches(stack: &Stack) -> Result<(), Failed> {
    let messages: Vec<Value> = (0..150)
        .map(|i| json!({"v": 1, "type": "task.submit", "task_id": format!("00000000-0000-4000-9000-{i:012}"), "attempt": 0}))
        .collect();
    let file = scratch("queue").join("messages.json");
    std::fs::write(&file, Value::Array(messages).to_string()).map_err(|e| e.to_string())?;
    let out = cli(
        stack,
        &[
            "queue",
            "send",
            "--queue",
            "tasks",
            "--file",
            &file.display().to_string(),
        ],
    )?;
    ensure(
        out.code == 0
            && out
                .stdout
                .contains("sent 150 message(s) to the tasks queue in 2 call(s)"),
        out.all(),
    )?;
    let bad = scratch("queue").join("bad.json");
    std::fs::write(&bad, "not json").map_err(|e| e.to_string())?;
    let out = cli(
        stack,
        &[
            "queue",
            "send",
            "--queue",
            "tasks",
            "--file",
            &bad.display().to_string(),
        ],
    )?;
    out.expect(2, "a file that is not JSON")?;
    ensure(out.stderr.contains("--file"), out.stderr.clone())?;
    let v = cli(
        stack,
        &[
            "audit-log",
            "--action",
            "queue.send",
            "--target",
            "tasks",
            "--json",
        ],
    )?
    .json()?;
    eq(
        v["entries"].as_array().map(Vec::len),
        Some(2),
        "two sends audited",
    )?;
    Ok(())
}

fn completions_for_every_shell(_: &Stack) -> Result<(), Failed> {
    for (shell, marker) in [
        ("bash", "_edgeline"),
        ("zsh", "#compdef edgeline"),
        ("fish", "complete -c edgeline"),
        ("powershell", "edgeline"),
        ("elvish", "edgeline"),
    ] {
        let out = run(&mut bare(&["completions", shell]))?;
        out.expect(0, shell)?;
        ensure(
            out.stdout.contains(marker) && out.stdout.contains("replay"),
            format!("{shell}: {}", &out.stdout[..out.stdout.len().min(300)]),
        )?;
    }
    Ok(())
}

/// The URL, token and actor from the environment and from the config file; the file's token is
/// not sent to another URL; a config file others can read is warned about.
fn configuration_from_env_and_file(stack: &Stack) -> Result<(), Failed> {
    let out = run(bare(&["cron", "run", "expire_orders"])
        .env("EDGELINE_URL", &stack.api)
        .env("EDGELINE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("EDGELINE_ACTOR", "e2e-env"))?;
    out.expect(0, "from the environment")?;

    let home = scratch("config-home");
    std::fs::create_dir_all(home.join("edgeline")).map_err(|e| e.to_string())?;
    let file = home.join("edgeline/config.toml");
    std::fs::write(
        &file,
        format!(
            "url = \"{}/\"\ntoken = \"{ADMIN_TOKEN}\"\nactor = \"e2e-file\"\n",
            stack.api
        ),
    )
    .map_err(|e| e.to_string())?;
    let _ = Command::new("chmod").arg("600").arg(&file).status();
    let out = run(bare(&["cron", "run", "expire_orders"]).env("XDG_CONFIG_HOME", &home))?;
    out.expect(0, "from $XDG_CONFIG_HOME/edgeline/config.toml")?;
    ensure(!out.stderr.contains("warning"), out.stderr.clone())?;
    let out =
        run(bare(&["audit-log", "--action", "cron.run", "--json"]).env("XDG_CONFIG_HOME", &home))?;
    let actors: Vec<String> = out.json()?["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["actor"].as_str().map(str::to_owned))
        .collect();
    ensure(
        actors.iter().any(|a| a == "e2e-file") && actors.iter().any(|a| a == "e2e-env"),
        format!("the actors from the file and the environment: {actors:?}"),
    )?;
    // another URL does not get the file's token
    let out = run(bare(&["orders", "stats"])
        .env("XDG_CONFIG_HOME", &home)
        .env("EDGELINE_URL", "https://elsewhere.example.com"))?;
    out.expect(2, "no token for another URL")?;
    ensure(out.stderr.contains("no admin token"), out.stderr.clone())?;
    // --config names a file; one others can read is warned about
    let other = scratch("config-other").join("edgeline.toml");
    std::fs::write(
        &other,
        format!("url = \"{}\"\ntoken = \"{ADMIN_TOKEN}\"\n", stack.api),
    )
    .map_err(|e| e.to_string())?;
    let _ = Command::new("chmod").arg("644").arg(&other).status();
    let out = run(&mut bare(&[
        "orders",
        "stats",
        "--config",
        &other.display().to_string(),
    ]))?;
    out.expect(0, "--config")?;
    ensure(
        out.stderr.contains("chmod 600"),
        format!("warned: {}", out.stderr),
    )?;
    let out = run(bare(&["orders", "stats"]).env("EDGELINE_CONFIG", &other))?;
    out.expect(0, "EDGELINE_CONFIG")?;
    // a broken file is named, its text is not shown
    let broken = scratch("config-broken").join("edgeline.toml");
    std::fs::write(
        &broken,
        format!("url = \"{}\"\ntoken = {ADMIN_TOKEN}\n", stack.api),
    )
    .map_err(|e| e.to_string())?;
    let out = run(&mut bare(&[
        "orders",
        "stats",
        "--config",
        &broken.display().to_string(),
    ]))?;
    out.expect(2, "a broken config file")?;
    ensure(out.stderr.contains("line 2"), out.stderr.clone())?;
    Ok(())
}

/// `cargo xtask admin …` is the same code.
fn xtask_admin_is_the_same_cli(stack: &Stack) -> Result<(), Failed> {
    let (ok, out) = stack.cli(&["orders", "stats"]);
    ensure(
        ok && out.contains("order(s)"),
        format!("xtask admin orders stats: {out}"),
    )?;
    let (ok, out) = stack.cli(&["dlq", "replay"]);
    ensure(
        !ok && out.contains("--id") && out.contains("cargo xtask admin dlq replay"),
        format!("usage: {out}"),
    )?;
    Ok(())
}

fn main() {
    // the binary under test, built now so it is this checkout's
    let built = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(root())
        .args(["build", "-q", "-p", "edgeline"])
        .status();
    if !built.is_ok_and(|s| s.success()) || !bin().exists() {
        eprintln!("could not build the edgeline binary (cargo build -p edgeline)");
        std::process::exit(1);
    }
    let options = StackOptions {
        seed: Some(seed.into()),
        ..StackOptions::default()
    };
    e2e::suite::run(
        options,
        |_| {},
        e2e::cases![
            bulk_replay_over_pages_and_ctrl_c,
            help_on_every_verb_and_the_figures,
            usage_errors_exit_2_and_name_the_argument,
            unreachable_exits_4_and_a_wrong_token_3,
            dead_letters_one_by_one,
            users_tokens_and_tasks,
            ops_views_cron_and_the_audit,
            catalog_show_and_set,
            queue_send_in_batches,
            completions_for_every_shell,
            configuration_from_env_and_file,
            xtask_admin_is_the_same_cli
        ],
    )
}
