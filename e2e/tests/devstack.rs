//! The local stack behaves like production (`cargo xtask dev`, `e2e/src/dev.rs`):
//!
//! - crons fire on their own: the built `target/debug/xtask dev`, with a fast schedule
//!   (`EDGELINE_DEV_CRON_EVERY_SECS`), records runs of every job in `GET /admin/cron/runs`
//!   without the test calling any; with `--no-cron` none run;
//! - a clean stop: SIGTERM, SIGINT and SIGHUP sent to the dev command alone stop wrangler, its
//!   workerd and the simulator, and free the ports within a few seconds;
//! - recovery after a restart with crons firing: twenty tasks with a slow provider, the stack
//!   killed (SIGKILL) three seconds later and restarted on its state, the provider still running;
//!   with the dev command's cron firing (short lease) every task ends, completed or failed with its
//!   hold released, and nobody runs a job by hand. Prints the time to full recovery.

use e2e::check::{ensure, eq};
use e2e::dev::{schedules, Cadence, CronFirer, CRON_ACTOR, CRON_EVERY_ENV};
use e2e::recovery::{self, LEASE_SECS, TASKS};
use e2e::stack::{free_port, root, Stack, ADMIN_TOKEN};
use e2e::{tasks, Client};
use libtest_mimic::{Arguments, Failed, Trial};
use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The dev command as built: `cargo build -p xtask` first, so it is the code under test.
fn xtask() -> Result<PathBuf, Failed> {
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(root())
        .args(["build", "-q", "-p", "xtask"])
        .status()
        .map_err(|e| format!("cargo build: {e}"))?;
    ensure(status.success(), "xtask builds")?;
    Ok(root().join("target/debug/xtask"))
}

fn admin_token() -> Result<String, Failed> {
    let text = std::fs::read_to_string(root().join(".dev.vars"))
        .map_err(|e| format!("reading .dev.vars: {e}"))?;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("ADMIN_TOKEN="))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .next()
        .ok_or_else(|| ".dev.vars has no ADMIN_TOKEN".into())
}

/// A running `xtask dev` on its own ports and state.
struct Dev {
    child: Option<Child>,
    port: u16,
    sim_port: u16,
    out: PathBuf,
}

impl Dev {
    fn start(state: &Path, extra: &[&str], env: &[(&str, &str)]) -> Result<Dev, Failed> {
        let bin = xtask()?;
        let (port, sim_port) = (free_port()?, free_port()?);
        std::fs::create_dir_all(state).map_err(|e| e.to_string())?;
        let out = state.with_extension("out");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&out)
            .map_err(|e| e.to_string())?;
        let mut cmd = Command::new(bin);
        cmd.current_dir(root())
            .args([
                "dev",
                "--port",
                &port.to_string(),
                "--sim-port",
                &sim_port.to_string(),
                "--state",
            ])
            .arg(state)
            .args(extra)
            .env_remove(CRON_EVERY_ENV)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().map_err(|e| e.to_string())?))
            .stderr(Stdio::from(log));
        let child = cmd
            .spawn()
            .map_err(|e| format!("starting xtask dev: {e}"))?;
        let mut dev = Dev {
            child: Some(child),
            port,
            sim_port,
            out,
        };
        let started = Instant::now();
        let c = dev.client();
        loop {
            if c.get("/api/health", None).status == 200
                && std::fs::read_to_string(&dev.out)
                    .is_ok_and(|o| o.contains("edgeline is running"))
            {
                break;
            }
            if let Some(Ok(Some(status))) = dev.child.as_mut().map(Child::try_wait) {
                return Err(format!("xtask dev exited ({status}):\n{}", dev.output()).into());
            }
            if started.elapsed() > Duration::from_secs(300) {
                return Err(format!("xtask dev did not come up:\n{}", dev.output()).into());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        println!(
            "xtask dev up in {:.1} s on port {port}",
            started.elapsed().as_secs_f64()
        );
        Ok(dev)
    }

    fn client(&self) -> Client {
        Client::new(&format!("http://127.0.0.1:{}", self.port))
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Sends `signal` to the dev command alone and checks that everything it started stops and
    /// its ports are free within a few seconds. Returns the time that took.
    fn stop_with(&mut self, signal: &str) -> Result<Duration, Failed> {
        let spawned = descendants(self.pid());
        ensure(
            spawned.len() >= 3,
            format!("wrangler and its workerd run under xtask dev: {spawned:?}"),
        )?;
        let sent = Instant::now();
        let status = Command::new("kill")
            .args(["-s", signal, &self.pid().to_string()])
            .status()
            .map_err(|e| e.to_string())?;
        ensure(status.success(), format!("kill -s {signal}"))?;
        let limit = Duration::from_secs(15);
        let mut child = self.child.take().ok_or("not running")?;
        let exit = loop {
            if let Ok(Some(s)) = child.try_wait() {
                break s;
            }
            if sent.elapsed() > limit {
                let _ = child.kill();
                return Err(format!(
                    "xtask dev still runs {}s after {signal}:\n{}",
                    limit.as_secs(),
                    self.output()
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let exited = sent.elapsed();
        for port in [self.port, self.sim_port] {
            while TcpListener::bind(("127.0.0.1", port)).is_err() {
                ensure(
                    sent.elapsed() < limit,
                    format!("port {port} still held after {signal}"),
                )?;
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        while let Some(pid) = spawned.iter().find(|p| alive(**p)) {
            ensure(
                sent.elapsed() < limit,
                format!(
                    "process {pid} ({}) still runs after {signal}",
                    cmdline(*pid)
                ),
            )?;
            std::thread::sleep(Duration::from_millis(50));
        }
        let took = sent.elapsed();
        println!(
            "{signal}: xtask dev exited ({exit}) in {:.2} s; ports {} and {} free and its {} processes gone in {:.2} s",
            exited.as_secs_f64(),
            self.port,
            self.sim_port,
            spawned.len(),
            took.as_secs_f64()
        );
        ensure(
            took < Duration::from_secs(10),
            "stopped within a few seconds",
        )?;
        Ok(took)
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            for pid in descendants(c.id()) {
                let _ = Command::new("kill")
                    .args(["-s", "KILL", &pid.to_string()])
                    .status();
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Every process under `pid` (children, theirs, …).
fn descendants(pid: u32) -> BTreeSet<u32> {
    let mut found = BTreeSet::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        let out = Command::new("pgrep").args(["-P", &p.to_string()]).output();
        for child in out
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|s| s.parse::<u32>().ok())
        {
            if found.insert(child) {
                todo.push(child);
            }
        }
    }
    found
}

/// Alive and not a zombie.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

fn temp_state(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("edgeline-devstack-{}-{name}", std::process::id()))
}

fn cleanup(state: &Path) {
    let _ = std::fs::remove_dir_all(state);
    let _ = std::fs::remove_file(state.with_extension("out"));
}

fn crons_fire_on_their_own_and_sigterm_stops_everything() -> Result<(), Failed> {
    let state = temp_state("crons");
    let mut dev = Dev::start(&state, &[], &[(CRON_EVERY_ENV, "2")])?;
    let c = dev.client();
    let admin = admin_token()?;
    let every_job: BTreeSet<String> = schedules().into_iter().flat_map(|(_, jobs)| jobs).collect();
    let started = Instant::now();
    let runs = loop {
        let runs = c.get("/admin/cron/runs?limit=200", Some(&admin)).json()["runs"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let seen: BTreeSet<String> = runs
            .iter()
            .filter(|r| r["finished_at"].is_i64())
            .filter_map(|r| r["job"].as_str().map(str::to_owned))
            .collect();
        if seen == every_job {
            break runs;
        }
        ensure(
            started.elapsed() < Duration::from_secs(60),
            format!(
                "every job ran on its own within 60 s: {seen:?}\n{}",
                dev.output()
            ),
        )?;
        std::thread::sleep(Duration::from_millis(300));
    };
    println!(
        "crons fired on their own: {} runs of {} jobs in {:.1} s",
        runs.len(),
        every_job.len(),
        started.elapsed().as_secs_f64()
    );
    ensure(
        runs.iter().all(|r| r["errors"] == 0),
        format!("no job recorded an error: {runs:?}"),
    )?;
    let log = c
        .get(
            &format!("/admin/audit-log?actor={CRON_ACTOR}&action=cron.run&limit=200"),
            Some(&admin),
        )
        .json();
    ensure(
        log["entries"]
            .as_array()
            .is_some_and(|e| e.len() >= every_job.len()),
        format!("the runs are the dev command's ({CRON_ACTOR}) in the audit trail: {log}"),
    )?;
    ensure(
        dev.output().contains("dev-cron `*/5 * * * *`"),
        format!("each firing is reported:\n{}", dev.output()),
    )?;
    dev.stop_with("TERM")?;
    cleanup(&state);
    Ok(())
}

fn no_cron_fires_none_and_sigint_and_sighup_stop_everything() -> Result<(), Failed> {
    let state = temp_state("signals");
    let mut dev = Dev::start(&state, &["--no-cron"], &[(CRON_EVERY_ENV, "1")])?;
    let admin = admin_token()?;
    std::thread::sleep(Duration::from_secs(4));
    let runs = dev.client().get("/admin/cron/runs", Some(&admin)).json();
    eq(
        runs["runs"].as_array().map(Vec::len),
        Some(0),
        "--no-cron: nothing fired",
    )?;
    ensure(dev.output().contains("crons: off"), "it says so")?;
    dev.stop_with("INT")?;
    drop(dev);
    // again on the same state (its demo user is kept), stopped by a hang-up this time
    let mut dev = Dev::start(&state, &["--no-cron"], &[])?;
    ensure(
        std::fs::read_to_string(state.join("demo-user-id")).is_ok_and(|id| !id.trim().is_empty()),
        "the demo user is kept across runs",
    )?;
    dev.stop_with("HUP")?;
    cleanup(&state);
    Ok(())
}

const FIRE_EVERY_SECS: u64 = 3;

fn recovery_after_a_restart_with_crons_firing() -> Result<(), Failed> {
    let mut stack = Stack::start(recovery::options())?;
    // the dev command's cron firing, from the start and through the restart; the test only watches
    let firer = CronFirer::start(
        &stack.api,
        ADMIN_TOKEN,
        schedules(),
        Cadence::Every(Duration::from_secs(FIRE_EVERY_SECS)),
        |_| {},
    );
    let outcome = (|| -> Result<(), Failed> {
        let (token, ids, accepted_before) = recovery::work_in_flight(&stack);
        let fired_before = firer.fired();
        stack.restart(BTreeMap::new())?;
        let restarted = Instant::now();
        println!(
            "killed with {accepted_before} of {TASKS} tasks accepted by the provider; restarted in {:.1} s; crons fired every {FIRE_EVERY_SECS} s, lease {LEASE_SECS} s",
            stack.started_in.as_secs_f64()
        );
        let c = stack.client();
        let limit = Duration::from_secs(180);
        let statuses = loop {
            let statuses = tasks::states(&c, &token, &ids);
            if tasks::all_ended(&statuses) {
                break statuses;
            }
            ensure(
                restarted.elapsed() < limit,
                format!("every task ends within {}s: {statuses:?}", limit.as_secs()),
            )?;
            std::thread::sleep(Duration::from_millis(250));
        };
        let recovered_in = restarted.elapsed();
        ensure(
            firer.fired() > fired_before,
            "the crons kept firing through the restart",
        )?;
        let creates = stack.sim.stats().creates_by_task;
        let completed = statuses
            .iter()
            .filter(|t| t["status"] == "completed")
            .count();
        for (id, task) in ids.iter().zip(&statuses) {
            recovery::created_once(id, task, &creates)?;
            if task["status"] != "completed" {
                ensure(
                    task["failure_reason"]
                        .as_str()
                        .is_some_and(|r| !r.is_empty()),
                    format!("a failed task says why: {task}"),
                )?;
            }
        }
        recovery::settled(&c, &token, completed)?;
        let by_hand = c
            .get(
                "/admin/audit-log?action=cron.run&limit=200",
                Some(ADMIN_TOKEN),
            )
            .json()["entries"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e["actor"] != CRON_ACTOR)
            .count();
        eq(
            by_hand,
            0,
            "no job was run by anyone but the dev command's cron",
        )?;
        println!(
            "recovered in {:.1} s after the restart, without a hand on it: {completed} completed, {} failed, {} provider creates for {TASKS} tasks",
            recovered_in.as_secs_f64(),
            TASKS - completed,
            creates.values().sum::<u64>()
        );
        Ok(())
    })();
    firer.stop();
    if outcome.is_err() {
        stack.post_mortem(80);
    }
    outcome
}

fn main() {
    let wall = Instant::now();
    let mut args = Arguments::from_args();
    // each case runs a whole stack (or two): one at a time on a small machine
    args.test_threads = Some(1);
    type Case = fn() -> Result<(), Failed>;
    let cases: Vec<(&str, Case)> = e2e::cases![
        crons_fire_on_their_own_and_sigterm_stops_everything,
        no_cron_fires_none_and_sigint_and_sighup_stop_everything,
        recovery_after_a_restart_with_crons_firing,
    ];
    let trials = cases
        .into_iter()
        .map(|(name, case)| Trial::test(name, case))
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    println!(
        "devstack suite wall time: {:.1} s",
        wall.elapsed().as_secs_f64()
    );
    conclusion.exit()
}
