//! `cargo xtask dev`: the whole stack on persistent local state (`.state/` by default), secrets
//! from `.dev.vars`, a demo user, and a curl to try; like production in two more ways:
//!
//! - **Crons fire.** Local `wrangler dev` fires no cron trigger by itself, and its
//!   `/__scheduled` reaches only the first worker of a session (the api). So this command fires
//!   each expression of `shared::schedule::SCHEDULES` on its schedule (UTC, the next fire time
//!   computed from the expression) by running that expression's jobs in order through the api's
//!   `POST /admin/cron/{job}`, which runs them in the cron worker with the schedule's budget. The
//!   runs are recorded like an operator's (schedule `manual`, actor `dev-cron` in the audit
//!   trail). `--no-cron` turns it off; `EDGELINE_DEV_CRON_EVERY_SECS=N` fires every expression
//!   every N seconds instead (for tests and for watching recovery without waiting).
//! - **A clean stop.** wrangler runs in a process group of its own; SIGINT, SIGTERM and SIGHUP
//!   to this command all stop that group (wrangler and its workerd: TERM, then KILL after 5 s)
//!   and the simulator, and the command exits once the ports are free.
//!
//! Flags: `--port N` (api, default 8787), `--sim-port N` (kie.ai and Creem simulator, default
//! 8790), `--state DIR` (default `.state/`), `--no-cron`.

use crate::stack::{root, Stack, StackOptions};
use serde_json::json;
use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const API_PORT: u16 = 8787;
const SIM_PORT: u16 = 8790;
/// Fires every cron expression every N seconds instead of on its schedule.
pub const CRON_EVERY_ENV: &str = "EDGELINE_DEV_CRON_EVERY_SECS";
/// Who the fired jobs are recorded as, in `admin_audit`.
pub const CRON_ACTOR: &str = "dev-cron";

fn dev_vars() -> Result<BTreeMap<String, String>, String> {
    let root = root();
    let path = root.join(".dev.vars");
    if !path.exists() {
        fs::copy(root.join(".dev.vars.example"), &path)
            .map_err(|e| format!("creating .dev.vars: {e}"))?;
        eprintln!("dev: created .dev.vars from .dev.vars.example");
    }
    let text = fs::read_to_string(&path).map_err(|e| format!("reading .dev.vars: {e}"))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().trim_matches('"').to_owned()))
        .collect())
}

/// What `cargo xtask dev` was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevArgs {
    pub port: u16,
    pub sim_port: u16,
    pub state: PathBuf,
    pub cron: bool,
}

pub const USAGE: &str =
    "usage: cargo xtask dev [--port N] [--sim-port N] [--state DIR] [--no-cron]";

pub fn parse_args(args: &[String]) -> Result<DevArgs, String> {
    let mut out = DevArgs {
        port: API_PORT,
        sim_port: SIM_PORT,
        state: root().join(".state"),
        cron: true,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value\n{USAGE}"))
        };
        let port = |v: String, name: &str| {
            v.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("{name}: {v:?} is not a port\n{USAGE}"))
        };
        match a.as_str() {
            "--port" => out.port = port(value("--port")?, "--port")?,
            "--sim-port" => out.sim_port = port(value("--sim-port")?, "--sim-port")?,
            "--state" => out.state = PathBuf::from(value("--state")?),
            "--no-cron" => out.cron = false,
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    if out.port == out.sim_port {
        return Err(format!("--port and --sim-port must differ\n{USAGE}"));
    }
    Ok(out)
}

/// How often the dev stack fires its crons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cadence {
    /// Each expression on its schedule (UTC), as Cloudflare fires it.
    Schedule,
    /// Every expression every so often (tests).
    Every(Duration),
}

impl Cadence {
    /// `EDGELINE_DEV_CRON_EVERY_SECS` if set, else the schedule.
    pub fn from_env() -> Result<Cadence, String> {
        match std::env::var(CRON_EVERY_ENV) {
            Err(_) => Ok(Cadence::Schedule),
            Ok(v) => v
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|n| *n > 0)
                .map(|n| Cadence::Every(Duration::from_secs(n)))
                .ok_or_else(|| format!("{CRON_EVERY_ENV}={v:?}: expected a number of seconds")),
        }
    }
}

/// Every cron expression with its jobs, in order (`shared::schedule::SCHEDULES`).
pub fn schedules() -> Vec<(String, Vec<String>)> {
    shared::schedule::SCHEDULES
        .iter()
        .map(|(cron, _, jobs)| {
            (
                (*cron).to_owned(),
                jobs.iter().map(|j| (*j).to_owned()).collect(),
            )
        })
        .collect()
}

pub fn run(args: &[String]) -> Result<(), String> {
    let args = parse_args(args)?;
    let cadence = Cadence::from_env()?;
    // Any stop signal, from the first moment: before the stack is up the handler stops what was
    // spawned so far itself; after, the loop below stops the stack.
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let up = Arc::new(AtomicBool::new(false));
    {
        let up = up.clone();
        ctrlc::set_handler(move || {
            if up.load(Ordering::SeqCst) {
                let _ = stop_tx.send(());
            } else {
                eprintln!("\ndev: stopping while starting");
                kill_children();
                std::process::exit(1);
            }
        })
        .map_err(|e| format!("installing the signal handler: {e}"))?;
    }

    let mut vars = dev_vars()?;
    let sim = format!("http://127.0.0.1:{}", args.sim_port);
    let api = format!("http://127.0.0.1:{}", args.port);
    vars.insert("KIE_BASE_URL".into(), sim.clone());
    vars.insert("PUBLIC_BASE_URL".into(), api.clone());
    vars.insert("CREEM_BASE_URL".into(), sim);
    let admin = vars
        .get("ADMIN_TOKEN")
        .cloned()
        .ok_or(".dev.vars has no ADMIN_TOKEN")?;
    let state = args.state.clone();
    let mut stack = Stack::start(StackOptions {
        state_dir: Some(state.clone()),
        port: Some(args.port),
        sim_port: Some(args.sim_port),
        vars,
        rate_limits: BTreeMap::new(),
        keep_state: true,
        expect_healthy: true,
        seed: None,
        cron_only: false,
        // its own group, so one kill stops wrangler and its workerd, whatever signal we got
        own_process_group: true,
    })?;
    up.store(true, Ordering::SeqCst);
    let client = stack.client();

    // One demo user across runs: its id is kept beside the state.
    let id_file = state.join("demo-user-id");
    let user = match fs::read_to_string(&id_file) {
        Ok(id) if !id.trim().is_empty() => id.trim().to_owned(),
        _ => {
            let r = client.post_json(
                "/admin/users",
                Some(&admin),
                &json!({"email": "demo@edgeline.local", "name": "Demo", "credits": 100}),
            );
            if r.status != 201 {
                return Err(format!("creating the demo user: {} {}", r.status, r.text()));
            }
            let id = r.json()["id"].as_str().unwrap_or_default().to_owned();
            fs::write(&id_file, &id).map_err(|e| e.to_string())?;
            id
        }
    };
    let token = client.session(&admin, &user);
    let crons = match (args.cron, cadence) {
        (false, _) => "crons: off (--no-cron)".to_owned(),
        (true, Cadence::Schedule) => format!(
            "crons: {} fired on schedule (UTC) through POST /admin/cron/{{job}}; --no-cron turns them off",
            schedules()
                .iter()
                .map(|(c, _)| format!("`{c}`"))
                .collect::<Vec<_>>()
                .join(" and ")
        ),
        (true, Cadence::Every(d)) => format!(
            "crons: every expression every {} s ({CRON_EVERY_ENV})",
            d.as_secs()
        ),
    };
    println!(
        "\nedgeline is running on {api} (simulated kie.ai and Creem on http://127.0.0.1:{sim_port}); state in {state}, logs in {state}/wrangler.log\n\n\
         operator console: {api}/admin/console/ (admin token: ADMIN_TOKEN in .dev.vars)\n\
         {crons}\n\n\
         demo user {user}, token:\n  {token}\n\n\
         submit a task:\n  curl -s -X POST {api}/api/tasks -H 'authorization: Bearer {token}' -H 'content-type: application/json' \\\n    -d '{{\"prompt\":\"a lighthouse at dawn\",\"model\":\"kie_4o\"}}'\n\n\
         then: curl -s {api}/api/tasks -H 'authorization: Bearer {token}'\n       curl -s {api}/api/balance -H 'authorization: Bearer {token}'\n\n\
         Ctrl-C (or SIGTERM, SIGHUP) stops everything.",
        api = stack.api,
        sim_port = args.sim_port,
        state = state.display(),
    );

    let firer = args.cron.then(|| {
        CronFirer::start(&stack.api, &admin, schedules(), cadence, |line| {
            eprintln!("{line}")
        })
    });
    let outcome = loop {
        match stop_rx.recv_timeout(Duration::from_millis(250)) {
            Ok(()) => break Ok(()),
            Err(mpsc::RecvTimeoutError::Disconnected) => break Ok(()),
            Err(mpsc::RecvTimeoutError::Timeout) if stack.exited() => {
                break Err(format!(
                    "wrangler dev exited; the end of {}/wrangler.log:\n{}",
                    state.display(),
                    stack.log_tail(30)
                ))
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
    };
    eprintln!("\ndev: stopping");
    if let Some(f) = firer {
        f.stop();
    }
    let started = Instant::now();
    stack.stop();
    drop(stack);
    // wrangler's port; the simulator's is this process's own and goes with it
    crate::stack::wait_port_free(args.port, Duration::from_secs(10))?;
    eprintln!(
        "dev: stopped in {:.1} s; port {} is free",
        started.elapsed().as_secs_f64(),
        args.port,
    );
    outcome
}

/// Stops what this process has spawned so far (a stop signal during start-up): each child's
/// process group (wrangler leads its own, with its workerd), then the child itself.
fn kill_children() {
    let me = std::process::id().to_string();
    let Ok(out) = std::process::Command::new("pgrep")
        .args(["-P", &me])
        .output()
    else {
        return;
    };
    let pids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    for signal in ["TERM", "KILL"] {
        for pid in &pids {
            let _ = std::process::Command::new("kill")
                .args(["-s", signal, "--", &format!("-{pid}"), pid])
                .stderr(std::process::Stdio::null())
                .status();
        }
        if signal == "TERM" {
            std::thread::sleep(Duration::from_secs(2));
        }
    }
}

// -------------------------------------------------------------------------------------------------
// Firing crons
// -------------------------------------------------------------------------------------------------

/// Fires cron expressions against a running stack from a thread of its own: at each fire time,
/// the expression's jobs one after the other through `POST /admin/cron/{job}` (as `dev-cron`).
/// A failed call (the stack restarting, a job's error) is reported through `report` and the next
/// fire time comes as usual.
pub struct CronFirer {
    stop: Arc<AtomicBool>,
    fired: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl CronFirer {
    pub fn start(
        api: &str,
        admin_token: &str,
        schedules: Vec<(String, Vec<String>)>,
        cadence: Cadence,
        report: impl Fn(&str) + Send + 'static,
    ) -> CronFirer {
        let stop = Arc::new(AtomicBool::new(false));
        let fired = Arc::new(AtomicU64::new(0));
        let (api, token) = (api.to_owned(), admin_token.to_owned());
        let thread = {
            let (stop, fired) = (stop.clone(), fired.clone());
            std::thread::spawn(move || {
                fire_loop(&api, &token, &schedules, cadence, &stop, &fired, &report)
            })
        };
        CronFirer {
            stop,
            fired,
            thread: Some(thread),
        }
    }

    /// How many expressions have fired so far.
    pub fn fired(&self) -> u64 {
        self.fired.load(Ordering::SeqCst)
    }

    /// Stops firing. A job call under way is not waited for (a stop must not wait out a job's
    /// budget); its thread ends when the call returns.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        drop(self.thread.take());
    }
}

impl Drop for CronFirer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn unix_ms() -> i64 {
    i64::try_from(crate::now_ms()).unwrap_or(0)
}

fn fire_loop(
    api: &str,
    token: &str,
    schedules: &[(String, Vec<String>)],
    cadence: Cadence,
    stop: &AtomicBool,
    fired: &AtomicU64,
    report: &dyn Fn(&str),
) {
    let parsed: Vec<(String, Option<CronExpr>, &Vec<String>)> = schedules
        .iter()
        .map(|(c, jobs)| {
            let e = CronExpr::parse(c);
            if let Err(err) = &e {
                report(&format!(
                    "dev-cron: `{c}` is not a cron expression I can fire: {err}"
                ));
            }
            (c.clone(), e.ok(), jobs)
        })
        .collect();
    let next_time = |expr: &Option<CronExpr>, after_ms: i64| -> Option<i64> {
        match cadence {
            Cadence::Every(d) => Some(after_ms + i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            Cadence::Schedule => expr
                .as_ref()?
                .next_after(after_ms.div_euclid(1000))
                .map(|s| s * 1000),
        }
    };
    let start = unix_ms();
    let mut next: Vec<Option<i64>> = parsed.iter().map(|(_, e, _)| next_time(e, start)).collect();
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(120))
        .build();
    while !stop.load(Ordering::SeqCst) {
        let Some((i, due)) = next
            .iter()
            .enumerate()
            .filter_map(|(i, t)| t.map(|t| (i, t)))
            .min_by_key(|(_, t)| *t)
        else {
            return;
        };
        if unix_ms() < due {
            std::thread::sleep(Duration::from_millis(
                u64::try_from((due - unix_ms()).clamp(0, 200)).unwrap_or(200),
            ));
            continue;
        }
        let (cron, _, jobs) = &parsed[i];
        let mut parts = Vec::new();
        for job in jobs.iter() {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            let outcome = agent
                .post(&format!("{api}/admin/cron/{job}"))
                .set("authorization", &format!("Bearer {token}"))
                .set("x-actor", CRON_ACTOR)
                .send_json(json!({}));
            parts.push(match outcome {
                Ok(resp) => {
                    let v: serde_json::Value = resp.into_json().unwrap_or_default();
                    let s = &v["summary"];
                    let errors = s["errors"].as_u64().unwrap_or(0);
                    if errors > 0 {
                        format!(
                            "{job} ERRORS {errors}: {}",
                            s["error_text"].as_str().unwrap_or("?")
                        )
                    } else {
                        format!("{job} {}/{}", s["changed"], s["examined"])
                    }
                }
                Err(ureq::Error::Status(code, resp)) => {
                    format!(
                        "{job} FAILED {code} {}",
                        resp.into_string().unwrap_or_default()
                    )
                }
                Err(e) => format!("{job} FAILED: {e}"),
            });
        }
        fired.fetch_add(1, Ordering::SeqCst);
        report(&format!(
            "dev-cron `{cron}` (changed/examined): {}",
            parts.join(", ")
        ));
        next[i] = next_time(&parsed[i].1, due.max(unix_ms() - 1));
    }
}

// -------------------------------------------------------------------------------------------------
// Cron expressions (5 fields, UTC), enough for Cloudflare's syntax as this project uses it
// -------------------------------------------------------------------------------------------------

/// A parsed cron expression: minute, hour, day of month, month, day of week (0 or 7 = Sunday),
/// each `*`, `N`, `A-B`, with `/STEP`, in comma lists. When both day fields are restricted a day
/// matching either fires (classic cron).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronExpr {
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    days_any: bool,
    weekdays_any: bool,
}

fn field(text: &str, lo: u32, hi: u32) -> Result<u64, String> {
    let mut bits = 0u64;
    for item in text.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => (
                r,
                s.parse::<u32>()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| format!("bad step in {item:?}"))?,
            ),
            None => (item, 1),
        };
        let num = |s: &str| {
            s.parse::<u32>()
                .ok()
                .filter(|n| (lo..=hi).contains(n))
                .ok_or_else(|| format!("{s:?} is not in {lo}-{hi}"))
        };
        let (a, b) = if range == "*" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            (num(a)?, num(b)?)
        } else if item.contains('/') {
            (num(range)?, hi)
        } else {
            let n = num(range)?;
            (n, n)
        };
        if a > b {
            return Err(format!("empty range {range:?}"));
        }
        let mut v = a;
        while v <= b {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok(bits)
}

impl CronExpr {
    pub fn parse(text: &str) -> Result<CronExpr, String> {
        let f: Vec<&str> = text.split_whitespace().collect();
        let [m, h, dom, mon, dow] = f.as_slice() else {
            return Err(format!("{text:?} does not have 5 fields"));
        };
        let mut weekdays = field(dow, 0, 7)?;
        if weekdays & (1 << 7) != 0 {
            weekdays |= 1; // 7 is Sunday too
        }
        Ok(CronExpr {
            minutes: field(m, 0, 59)?,
            hours: field(h, 0, 23)?,
            days: field(dom, 1, 31)?,
            months: field(mon, 1, 12)?,
            weekdays,
            days_any: dom.starts_with('*'),
            weekdays_any: dow.starts_with('*'),
        })
    }

    fn matches(&self, unix_secs: i64) -> bool {
        let days = unix_secs.div_euclid(86_400);
        let secs = unix_secs.rem_euclid(86_400);
        let (_, month, day) = civil_from_days(days);
        let weekday = (days + 4).rem_euclid(7); // 1970-01-01 was a Thursday
        let bit = |mask: u64, v: i64| mask & (1u64 << v) != 0;
        let day_ok = match (self.days_any, self.weekdays_any) {
            (true, true) => true,
            (false, true) => bit(self.days, day),
            (true, false) => bit(self.weekdays, weekday),
            (false, false) => bit(self.days, day) || bit(self.weekdays, weekday),
        };
        bit(self.minutes, (secs / 60) % 60)
            && bit(self.hours, secs / 3600)
            && bit(self.months, month)
            && day_ok
    }

    /// The first fire time strictly after `unix_secs` (a whole minute), within a bit over a year.
    pub fn next_after(&self, unix_secs: i64) -> Option<i64> {
        let first = (unix_secs.div_euclid(60) + 1) * 60;
        (0..(367 * 24 * 60))
            .map(|i| first + i * 60)
            .find(|t| self.matches(*t))
    }
}

/// (year, month 1-12, day 1-31) of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-11-29 21:03:10 UTC, a Sunday
    const T: i64 = 1_795_986_190;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(T / 86_400), (2026, 11, 29));
        assert_eq!((T / 86_400 + 4).rem_euclid(7), 0, "a Sunday");
    }

    #[test]
    fn every_schedule_of_the_project_parses_and_fires() {
        for (cron, jobs) in schedules() {
            let e = CronExpr::parse(&cron).expect("parses");
            assert!(e.next_after(T).is_some(), "{cron}");
            assert!(!jobs.is_empty());
        }
    }

    #[test]
    fn next_fire_times() {
        let every5 = CronExpr::parse("*/5 * * * *").expect("parses");
        assert_eq!(every5.next_after(T), Some(T - 190 + 300), "21:05:00");
        assert_eq!(
            every5.next_after(T - 190 + 300),
            Some(T - 190 + 600),
            "strictly after"
        );
        let daily = CronExpr::parse("17 3 * * *").expect("parses");
        // the next 03:17 is on the 30th
        assert_eq!(
            daily.next_after(T),
            Some((T / 86_400 + 1) * 86_400 + 3 * 3600 + 17 * 60)
        );
        let mondays = CronExpr::parse("0 9 * * 1").expect("parses");
        assert_eq!(
            mondays.next_after(T),
            Some((T / 86_400 + 1) * 86_400 + 9 * 3600)
        );
        let sundays = CronExpr::parse("30 22 * * 7").expect("parses");
        assert_eq!(
            sundays.next_after(T),
            Some(T / 86_400 * 86_400 + 22 * 3600 + 30 * 60)
        );
        let list = CronExpr::parse("0,30 8-10/2 1 1,6 *").expect("parses");
        let next = list.next_after(T).expect("fires");
        assert_eq!(civil_from_days(next / 86_400), (2027, 1, 1));
        assert_eq!(next % 86_400, 8 * 3600);
        for bad in [
            "* * * *",
            "60 * * * *",
            "*/0 * * * *",
            "5-1 * * * *",
            "a * * * *",
        ] {
            assert!(CronExpr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn arguments() {
        let a = |v: &[&str]| parse_args(&v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>());
        let d = a(&[]).expect("defaults");
        assert_eq!((d.port, d.sim_port, d.cron), (8787, 8790, true));
        let d = a(&[
            "--port",
            "9000",
            "--sim-port",
            "9001",
            "--no-cron",
            "--state",
            "/tmp/x",
        ])
        .expect("flags");
        assert_eq!((d.port, d.sim_port, d.cron), (9000, 9001, false));
        assert_eq!(d.state, PathBuf::from("/tmp/x"));
        assert!(a(&["--port"]).is_err());
        assert!(a(&["--port", "x"]).is_err());
        assert!(a(&["--port", "9000", "--sim-port", "9000"]).is_err());
        assert!(a(&["--bogus"]).is_err());
    }
}
