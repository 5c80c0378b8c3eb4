//! Starting and stopping the stack.

use std::collections::BTreeMap;
use std::fs;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ADMIN_TOKEN: &str = "e2e-admin-token-0123456789";
pub const FILES_SIGNING_KEY: &str = "e2e-files-signing-key-0123456789";
/// Signs users' session tokens (HS256).
pub const JWT_SECRET: &str = "e2e-jwt-secret-0123456789abcdef0123456789";
/// Creem webhook secrets the stack accepts (two, as during a rotation).
pub const CREEM_WEBHOOK_SECRET: &str = "e2e-creem-webhook-secret";
pub const CREEM_OLD_SECRET: &str = "e2e-creem-old-secret";
/// A Standard Webhooks secret (`whsec_` + base64).
pub const STANDARD_WEBHOOK_SECRET: &str = "whsec_ZTJlLXN0YW5kYXJkLXdlYmhvb2stc2VjcmV0";

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// A port nobody is listening on right now.
pub fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

type SeedFn = dyn Fn(&Seed) -> Result<(), String> + Send + Sync;

/// Writes fixtures into a stack's state before it starts.
#[derive(Clone)]
pub struct Seeder(std::sync::Arc<SeedFn>);

impl<F: Fn(&Seed) -> Result<(), String> + Send + Sync + 'static> From<F> for Seeder {
    fn from(f: F) -> Self {
        Seeder(std::sync::Arc::new(f))
    }
}

impl std::fmt::Debug for Seeder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Seeder")
    }
}

#[derive(Debug, Clone)]
pub struct StackOptions {
    /// Where state lives; a fresh temporary directory when `None`.
    pub state_dir: Option<PathBuf>,
    /// API port; a free one when `None`.
    pub port: Option<u16>,
    /// Simulator port; a free one when `None`.
    pub sim_port: Option<u16>,
    /// Extra or overriding variables for every worker.
    pub vars: BTreeMap<String, String>,
    /// Overrides of `[[ratelimits]]` limits by binding name (requests per period).
    pub rate_limits: BTreeMap<String, i64>,
    /// Keep the state directory after stopping.
    pub keep_state: bool,
    /// Wait for a healthy (200) answer before handing the stack over; off, any answer will do
    /// (for stacks that are broken on purpose).
    pub expect_healthy: bool,
    /// Run only the cron worker (first, so wrangler's `/__scheduled` reaches its `scheduled`
    /// handler); its health check is its own `GET /runs`.
    pub cron_only: bool,
    /// Fixtures written into the state before the workers start (D1 rows, R2 objects).
    pub seed: Option<Seeder>,
    /// Run wrangler in a process group of its own so stopping it stops workerd too (tests);
    /// `dev` leaves it in the terminal's group so Ctrl-C reaches it.
    pub own_process_group: bool,
}

impl Default for StackOptions {
    fn default() -> Self {
        let vars = [
            ("POLL_INITIAL_SECS", "1"),
            ("POLL_MAX_SECS", "2"),
            ("RETRY_INITIAL_SECS", "1"),
            ("RETRY_MAX_SECS", "2"),
        ];
        StackOptions {
            state_dir: None,
            port: None,
            sim_port: None,
            vars: vars
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            // generous, so suites that submit hundreds of tasks are not throttled; the limits
            // suite sets its own
            rate_limits: [
                "SUBMIT_LIMIT",
                "ORDER_LIMIT",
                "AUTH_FAILURE_LIMIT",
                "WEBHOOK_FAILURE_LIMIT",
            ]
            .iter()
            .map(|n| ((*n).to_owned(), 100_000))
            .collect(),
            keep_state: false,
            expect_healthy: true,
            cron_only: false,
            seed: None,
            own_process_group: true,
        }
    }
}

pub struct Stack {
    pub api: String,
    pub sim: sim::Sim,
    pub state_dir: PathBuf,
    /// From spawning `wrangler dev` to the first healthy answer.
    pub started_in: Duration,
    child: Option<Child>,
    keep_state: std::sync::atomic::AtomicBool,
    own_group: bool,
}

pub(crate) fn wrangler() -> PathBuf {
    root().join("node_modules/.bin/wrangler")
}

pub(crate) fn quiet(cmd: &mut Command) -> &mut Command {
    cmd.env("WRANGLER_SEND_METRICS", "false")
        .env("CI", "1")
        .env("NO_COLOR", "1")
        .env("FORCE_COLOR", "0")
}

/// Writes a copy of a committed wrangler config with absolute paths and the given variables, so
/// the stack runs the committed bindings against its own state, ports and simulator.
fn derive_config(
    source: &Path,
    dest: &Path,
    vars: &BTreeMap<String, String>,
    limits: &BTreeMap<String, i64>,
) -> Result<(), String> {
    let text =
        fs::read_to_string(source).map_err(|e| format!("reading {}: {e}", source.display()))?;
    let mut doc: toml::Table = text
        .parse()
        .map_err(|e| format!("parsing {}: {e}", source.display()))?;
    let dir = source.parent().unwrap_or(Path::new("."));
    let absolute = |v: &toml::Value| {
        v.as_str()
            .map(|p| toml::Value::String(dir.join(p).display().to_string()))
    };
    if let Some(main) = doc.get("main").and_then(absolute) {
        doc.insert("main".into(), main);
    }
    if let Some(toml::Value::Array(dbs)) = doc.get_mut("d1_databases") {
        for db in dbs.iter_mut().filter_map(toml::Value::as_table_mut) {
            if let Some(m) = db.get("migrations_dir").and_then(absolute) {
                db.insert("migrations_dir".into(), m);
            }
        }
    }
    if let Some(toml::Value::Array(rls)) = doc.get_mut("ratelimits") {
        for rl in rls.iter_mut().filter_map(toml::Value::as_table_mut) {
            let name = rl
                .get("name")
                .and_then(toml::Value::as_str)
                .unwrap_or_default()
                .to_owned();
            if let (Some(limit), Some(toml::Value::Table(simple))) =
                (limits.get(&name), rl.get_mut("simple"))
            {
                simple.insert("limit".into(), toml::Value::Integer(*limit));
            }
        }
    }
    let table = doc
        .entry("vars")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if let toml::Value::Table(t) = table {
        for (k, v) in vars {
            t.insert(k.clone(), toml::Value::String(v.clone()));
        }
    }
    fs::write(dest, toml::to_string(&doc).map_err(|e| e.to_string())?)
        .map_err(|e| format!("writing {}: {e}", dest.display()))
}

/// Writes fixtures into a stack's local state before it starts, with wrangler's own local
/// commands (the same D1 and R2 the workers then serve).
pub struct Seed {
    config: PathBuf,
    persist: PathBuf,
    dir: PathBuf,
}

impl Seed {
    fn wrangler(&self, args: &[&str]) -> Result<(), String> {
        let out = quiet(
            Command::new(wrangler()).current_dir(self.config.parent().unwrap_or(Path::new("."))),
        )
        .args(args)
        .arg("--local")
        .arg("--persist-to")
        .arg(&self.persist)
        .arg("-c")
        .arg(&self.config)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("starting wrangler: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "wrangler {}: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// Runs SQL against the local D1.
    pub fn d1(&self, sql: &str) -> Result<(), String> {
        fs::create_dir_all(&self.dir).map_err(|e| e.to_string())?;
        let file = self.dir.join(format!(
            "seed-{}.sql",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        fs::write(&file, sql).map_err(|e| e.to_string())?;
        self.wrangler(&[
            "d1",
            "execute",
            "edgeline",
            "--file",
            &file.display().to_string(),
        ])
    }

    /// Puts objects into the local R2 bucket, many at once.
    pub fn r2(&self, objects: &[(String, Vec<u8>)], content_type: &str) -> Result<(), String> {
        let files = self.dir.join(format!("r2-{}", objects.len()));
        fs::create_dir_all(&files).map_err(|e| e.to_string())?;
        let mut list = Vec::with_capacity(objects.len());
        for (i, (key, bytes)) in objects.iter().enumerate() {
            let f = files.join(format!("{i}.bin"));
            fs::write(&f, bytes).map_err(|e| e.to_string())?;
            list.push(serde_json::json!({"key": key, "file": f.display().to_string()}));
        }
        let list_file = files.join("list.json");
        fs::write(&list_file, serde_json::Value::Array(list).to_string())
            .map_err(|e| e.to_string())?;
        self.wrangler(&[
            "r2",
            "bulk",
            "put",
            "edgeline",
            "--filename",
            &list_file.display().to_string(),
            "--ct",
            content_type,
            "--force",
        ])
    }
}

impl Stack {
    pub fn start(opts: StackOptions) -> Result<Stack, String> {
        let root = root();
        for w in ["api-worker", "consumer-worker", "cron-worker"] {
            if !root.join(w).join("build/index.js").exists() {
                return Err(format!(
                    "{w} is not built; run `cargo xtask test` (or `cargo xtask build`) first"
                ));
            }
        }
        let sim = sim::Sim::start(opts.sim_port.unwrap_or(0))?;
        let port = match opts.port {
            Some(p) => p,
            None => free_port()?,
        };
        let inspector = free_port()?;
        let state_dir = match &opts.state_dir {
            Some(d) => d.clone(),
            None => {
                std::env::temp_dir().join(format!("edgeline-e2e-{}-{port}", std::process::id()))
            }
        };
        let config_dir = state_dir.join("config");
        fs::create_dir_all(&config_dir)
            .map_err(|e| format!("creating {}: {e}", config_dir.display()))?;

        let mut vars: BTreeMap<String, String> = [
            ("PUBLIC_BASE_URL", format!("http://127.0.0.1:{port}")),
            ("KIE_BASE_URL", sim.base_url()),
            ("KIE_API_KEY", "e2e-kie-key".to_owned()),
            ("ADMIN_TOKEN", ADMIN_TOKEN.to_owned()),
            ("FILES_SIGNING_KEY", FILES_SIGNING_KEY.to_owned()),
            ("JWT_SECRET", JWT_SECRET.to_owned()),
            ("CREEM_BASE_URL", sim.base_url()),
            ("CREEM_API_KEY", "e2e-creem-key".to_owned()),
            (
                "CREEM_WEBHOOK_SECRETS",
                format!("{CREEM_OLD_SECRET},{CREEM_WEBHOOK_SECRET}"),
            ),
            (
                "STANDARD_WEBHOOK_SECRETS",
                STANDARD_WEBHOOK_SECRET.to_owned(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        vars.extend(opts.vars.clone());
        let configs = [
            (root.join("wrangler.toml"), config_dir.join("api.toml")),
            (
                root.join("consumer-worker/wrangler.toml"),
                config_dir.join("consumer.toml"),
            ),
            (
                root.join("cron-worker/wrangler.toml"),
                config_dir.join("cron.toml"),
            ),
        ];
        for (src, dest) in &configs {
            derive_config(src, dest, &vars, &opts.rate_limits)?;
        }
        let persist = state_dir.join("wrangler");

        let migrate_log = state_dir.join("migrate.log");
        let status = quiet(Command::new(wrangler()).current_dir(&config_dir))
            .args([
                "d1",
                "migrations",
                "apply",
                "edgeline",
                "--local",
                "--persist-to",
            ])
            .arg(&persist)
            .arg("-c")
            .arg(&configs[0].1)
            .stdin(Stdio::null())
            .stdout(fs::File::create(&migrate_log).map_err(|e| e.to_string())?)
            .stderr(Stdio::from(
                fs::File::create(state_dir.join("migrate.err")).map_err(|e| e.to_string())?,
            ))
            .status()
            .map_err(|e| format!("starting wrangler: {e}"))?;
        if !status.success() {
            let err = fs::read_to_string(state_dir.join("migrate.err")).unwrap_or_default();
            return Err(format!("migrations failed ({status}):\n{err}"));
        }

        if let Some(Seeder(seed)) = &opts.seed {
            seed(&Seed {
                config: configs[0].1.clone(),
                persist: persist.clone(),
                dir: state_dir.join("seed"),
            })?;
        }

        let log = fs::File::create(state_dir.join("wrangler.log")).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(wrangler());
        quiet(&mut cmd)
            .current_dir(&config_dir)
            .arg("dev")
            .args(
                configs
                    .iter()
                    .filter(|(src, _)| {
                        !opts.cron_only || src.ends_with("cron-worker/wrangler.toml")
                    })
                    .flat_map(|(_, d)| [PathBuf::from("-c"), d.clone()]),
            )
            .args([
                "--ip",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--inspector-port",
                &inspector.to_string(),
            ])
            .arg("--persist-to")
            .arg(&persist)
            .args([
                "--test-scheduled",
                "--show-interactive-dev-session=false",
                "--log-level",
                "log",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().map_err(|e| e.to_string())?))
            .stderr(Stdio::from(log));
        if opts.own_process_group {
            cmd.process_group(0);
        }
        let spawned = Instant::now();
        let child = cmd
            .spawn()
            .map_err(|e| format!("starting wrangler dev: {e}"))?;
        let mut stack = Stack {
            api: format!("http://127.0.0.1:{port}"),
            sim,
            state_dir,
            started_in: Duration::ZERO,
            child: Some(child),
            keep_state: opts.keep_state.into(),
            own_group: opts.own_process_group,
        };
        stack.wait_healthy(
            if opts.cron_only {
                "/runs"
            } else {
                "/api/health"
            },
            opts.expect_healthy,
            Duration::from_secs(90),
        )?;
        stack.started_in = spawned.elapsed();
        Ok(stack)
    }

    fn wait_healthy(&mut self, path: &str, need_200: bool, limit: Duration) -> Result<(), String> {
        let started = Instant::now();
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(5))
            .build();
        while started.elapsed() < limit {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!(
                        "wrangler dev exited ({status}):\n{}",
                        self.log_tail(60)
                    ));
                }
            }
            match agent.get(&format!("{}{path}", self.api)).call() {
                Ok(resp) if resp.status() == 200 => return Ok(()),
                Err(ureq::Error::Status(_, _)) if !need_200 => return Ok(()),
                _ => {}
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err(format!(
            "the stack did not become healthy in {}s:\n{}",
            limit.as_secs(),
            self.log_tail(60)
        ))
    }

    /// The last lines wrangler printed (worker logs included), for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(self.state_dir.join("wrangler.log")).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Everything wrangler printed so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.state_dir.join("wrangler.log")).unwrap_or_default()
    }

    /// The structured lines the workers logged (`[edgeline-x] {json}`, or bare `{json}` when one
    /// worker runs alone), optionally of one event.
    pub fn events(&self, event: Option<&str>) -> Vec<serde_json::Value> {
        self.log()
            .lines()
            .filter_map(|l| {
                if l.starts_with('{') {
                    Some(l.to_owned())
                } else {
                    l.split_once("] {").map(|(_, rest)| format!("{{{rest}"))
                }
            })
            .filter_map(|j| serde_json::from_str::<serde_json::Value>(&j).ok())
            .filter(|v| event.is_none_or(|e| v["event"] == e))
            .collect()
    }

    /// Runs the operators' CLI (`cargo xtask admin …`) against this stack.
    pub fn cli(&self, args: &[&str]) -> (bool, String) {
        let bin = root().join("target/debug/xtask");
        if !bin.exists() {
            let _ = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .current_dir(root())
                .args(["build", "-q", "-p", "xtask"])
                .status();
        }
        match Command::new(bin)
            .arg("admin")
            .args(args)
            .args([
                "--url",
                &self.api,
                "--token",
                ADMIN_TOKEN,
                "--actor",
                "e2e-operator",
            ])
            .output()
        {
            Ok(out) => (
                out.status.success(),
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            ),
            Err(e) => (false, format!("the CLI did not run: {e}")),
        }
    }

    pub fn client(&self) -> crate::Client {
        crate::Client::new(&self.api)
    }

    /// Keeps the state directory (logs, D1, R2, KV) after the stack stops, for a post-mortem.
    pub fn keep_state(&self) {
        self.keep_state
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// wrangler's process id (the process group's, when it runs in a group of its own).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Blocks until wrangler exits (for `cargo xtask dev`).
    pub fn wait(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.wait();
        }
    }

    /// Stops wrangler and everything it started (workerd), by process group.
    pub fn stop(&mut self) {
        let Some(child) = self.child.take() else {
            return;
        };
        stop_process(child, self.own_group);
        if !self.keep_state.load(std::sync::atomic::Ordering::SeqCst) {
            let _ = fs::remove_dir_all(&self.state_dir);
        }
    }
}

/// Stops a `wrangler dev` and, when it leads its own process group, the workerd it started.
pub(crate) fn stop_process(mut child: Child, own_group: bool) {
    let group = if own_group {
        format!("-{}", child.id())
    } else {
        child.id().to_string()
    };
    let _ = Command::new("kill")
        .args(["-s", "TERM", "--", &group])
        .status();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = Command::new("kill")
        .args(["-s", "KILL", "--", &group])
        .status();
    let _ = child.wait();
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.stop();
    }
}
