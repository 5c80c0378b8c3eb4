//! Starting and stopping the stack.

use std::collections::BTreeMap;
use std::fs;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The TOML reader the stack derives the committed wrangler configs with (`cargo xtask deploy`
/// reads the same configs).
pub use toml;

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
            // the simulator generates at once: tests do not wait for a real model's time
            ("TYPICAL_GENERATION_SECS", "0"),
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
    launch: Launch,
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

/// Ids for the bindings the committed configs leave without one: they carry no account's ids.
/// Locally any fixed value works as long as all three workers name the same one; a deploy
/// (`cargo xtask deploy`) puts the account's ids here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingIds {
    /// `database_id` of the `[[d1_databases]]` entries.
    pub d1: String,
    /// `id` of the `[[kv_namespaces]]` entries.
    pub kv: String,
}

impl BindingIds {
    /// The ids local state is kept under: the placeholders the configs carried before they lost
    /// their ids, so a `.state/` made before keeps its data.
    pub fn local() -> Self {
        BindingIds {
            d1: "6f1c2b0e-4d0a-4c4e-9f59-6c1f0e2d7a11".into(),
            kv: "3b1f6a0c9d2e4f5a8b7c6d5e4f3a2b1c".into(),
        }
    }
}

/// Writes a copy of a committed wrangler config with absolute paths (`main`, `migrations_dir`,
/// `assets.directory`), the given variables and rate limits, and `ids` for the D1 and KV bindings
/// that have none, so wrangler runs the committed bindings from anywhere: the stack against its
/// own state, ports and simulator, a deploy against the account's resources.
pub fn derive_config(
    source: &Path,
    dest: &Path,
    vars: &BTreeMap<String, String>,
    limits: &BTreeMap<String, i64>,
    ids: &BindingIds,
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
            db.entry("database_id")
                .or_insert_with(|| toml::Value::String(ids.d1.clone()));
        }
    }
    if let Some(toml::Value::Array(kvs)) = doc.get_mut("kv_namespaces") {
        for kv in kvs.iter_mut().filter_map(toml::Value::as_table_mut) {
            kv.entry("id")
                .or_insert_with(|| toml::Value::String(ids.kv.clone()));
        }
    }
    if let Some(toml::Value::Table(assets)) = doc.get_mut("assets") {
        if let Some(d) = assets.get("directory").and_then(absolute) {
            assets.insert("directory".into(), d);
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

/// Points a derived config's `main` at a copy of its worker's build, made beside the config
/// the first time (a restart keeps it): wrangler dev reloads when the file it serves changes,
/// and a `cargo xtask build` running meanwhile (another suite, an editor) would otherwise swap
/// the workers under a running stack, or crash it with a half-written wasm.
fn snapshot_main(config: &Path) -> Result<(), String> {
    let text =
        fs::read_to_string(config).map_err(|e| format!("reading {}: {e}", config.display()))?;
    let mut doc: toml::Table = text
        .parse()
        .map_err(|e| format!("parsing {}: {e}", config.display()))?;
    let Some(main) = doc
        .get("main")
        .and_then(toml::Value::as_str)
        .map(PathBuf::from)
    else {
        return Ok(());
    };
    let (Some(build), Some(file)) = (main.parent(), main.file_name()) else {
        return Ok(());
    };
    let stem = config
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let copy = config.with_file_name(format!("{stem}-build"));
    if !copy.exists() {
        let partial = config.with_file_name(format!("{stem}-build.partial"));
        let _ = fs::remove_dir_all(&partial);
        copy_dir(build, &partial)?;
        fs::rename(&partial, &copy).map_err(|e| format!("renaming {}: {e}", partial.display()))?;
    }
    doc.insert(
        "main".into(),
        toml::Value::String(copy.join(file).display().to_string()),
    );
    fs::write(config, toml::to_string(&doc).map_err(|e| e.to_string())?)
        .map_err(|e| format!("writing {}: {e}", config.display()))
}

fn copy_dir(from: &Path, to: &Path) -> Result<(), String> {
    fs::create_dir_all(to).map_err(|e| format!("creating {}: {e}", to.display()))?;
    for entry in fs::read_dir(from).map_err(|e| format!("reading {}: {e}", from.display()))? {
        let entry = entry.map_err(|e| e.to_string())?;
        let target = to.join(entry.file_name());
        if entry.file_type().map_err(|e| e.to_string())?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            fs::copy(entry.path(), &target)
                .map_err(|e| format!("copying {}: {e}", entry.path().display()))?;
        }
    }
    Ok(())
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

    /// Puts a value under `key` in the local KV namespace bound as `KV`.
    pub fn kv(&self, key: &str, value: &str) -> Result<(), String> {
        self.wrangler(&["kv", "key", "put", key, value, "--binding", "KV"])
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

/// Everything needed to (re)spawn `wrangler dev` on one stack's state, ports and configs.
#[derive(Debug, Clone)]
struct Launch {
    state_dir: PathBuf,
    config_dir: PathBuf,
    persist: PathBuf,
    port: u16,
    inspector: u16,
    /// The variables every start derives the configs with (before a restart's overrides).
    vars: BTreeMap<String, String>,
    rate_limits: BTreeMap<String, i64>,
    cron_only: bool,
    expect_healthy: bool,
    own_group: bool,
}

impl Launch {
    /// (committed config, derived copy) for the api, consumer and cron workers.
    fn configs(&self) -> [(PathBuf, PathBuf); 3] {
        let root = root();
        [
            (root.join("wrangler.toml"), self.config_dir.join("api.toml")),
            (
                root.join("consumer-worker/wrangler.toml"),
                self.config_dir.join("consumer.toml"),
            ),
            (
                root.join("cron-worker/wrangler.toml"),
                self.config_dir.join("cron.toml"),
            ),
        ]
    }

    /// Writes the derived configs: the base variables, then `overrides` on top.
    fn derive(&self, overrides: &BTreeMap<String, String>) -> Result<(), String> {
        let mut vars = self.vars.clone();
        vars.extend(overrides.iter().map(|(k, v)| (k.clone(), v.clone())));
        for (src, dest) in &self.configs() {
            derive_config(src, dest, &vars, &self.rate_limits, &BindingIds::local())?;
            snapshot_main(dest)?;
        }
        Ok(())
    }

    fn health_path(&self) -> &'static str {
        if self.cron_only {
            "/runs"
        } else {
            "/api/health"
        }
    }

    /// Spawns `wrangler dev` on the derived configs; its output goes to `wrangler.log` (appended
    /// to on a restart, so the log keeps every run of the stack).
    fn spawn(&self, append_log: bool) -> Result<Child, String> {
        let log_path = self.state_dir.join("wrangler.log");
        let log = fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append_log)
            .truncate(!append_log)
            .open(&log_path)
            .map_err(|e| format!("opening {}: {e}", log_path.display()))?;
        let mut cmd = Command::new(wrangler());
        quiet(&mut cmd)
            .current_dir(&self.config_dir)
            .arg("dev")
            .args(
                self.configs()
                    .iter()
                    .filter(|(src, _)| {
                        !self.cron_only || src.ends_with("cron-worker/wrangler.toml")
                    })
                    .flat_map(|(_, d)| [PathBuf::from("-c"), d.clone()]),
            )
            .args([
                "--ip",
                "127.0.0.1",
                "--port",
                &self.port.to_string(),
                "--inspector-port",
                &self.inspector.to_string(),
            ])
            .arg("--persist-to")
            .arg(&self.persist)
            .args([
                "--test-scheduled",
                "--show-interactive-dev-session=false",
                "--log-level",
                "log",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().map_err(|e| e.to_string())?))
            .stderr(Stdio::from(log));
        if self.own_group {
            cmd.process_group(0);
        }
        cmd.spawn()
            .map_err(|e| format!("starting wrangler dev: {e}"))
    }
}

/// Waits until nothing listens on `port` any more (a killed workerd lets go of it at once, but
/// its children may take a moment to die).
pub fn wait_port_free(port: u16, limit: Duration) -> Result<(), String> {
    let started = Instant::now();
    loop {
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if started.elapsed() > limit {
            return Err(format!(
                "port {port} is still in use {}s after the stack was killed",
                limit.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
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
        let launch = Launch {
            persist: state_dir.join("wrangler"),
            state_dir: state_dir.clone(),
            config_dir: config_dir.clone(),
            port,
            inspector,
            vars,
            rate_limits: opts.rate_limits.clone(),
            cron_only: opts.cron_only,
            expect_healthy: opts.expect_healthy,
            own_group: opts.own_process_group,
        };
        launch.derive(&BTreeMap::new())?;
        let configs = launch.configs();
        let persist = launch.persist.clone();

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

        let spawned = Instant::now();
        let child = launch.spawn(false)?;
        let mut stack = Stack {
            api: format!("http://127.0.0.1:{port}"),
            sim,
            state_dir,
            started_in: Duration::ZERO,
            child: Some(child),
            keep_state: opts.keep_state.into(),
            own_group: opts.own_process_group,
            launch,
        };
        stack.wait_healthy(
            stack.launch.health_path(),
            stack.launch.expect_healthy,
            Duration::from_secs(90),
        )?;
        stack.started_in = spawned.elapsed();
        Ok(stack)
    }

    /// Crashes the stack and starts it again: wrangler and its workerd are killed with SIGKILL
    /// (no clean shutdown: in-flight requests, batches and queued messages are cut off), then
    /// `wrangler dev` starts again on the same state directory, ports and configs, re-derived
    /// with `overrides` on top of the variables the stack started with (an empty map restores
    /// them), and is waited for like at the start. Migrations and seeds are not run again. The
    /// simulator keeps running: the provider does not restart when we do. `started_in` becomes
    /// the time from this spawn to healthy.
    pub fn restart(&mut self, overrides: BTreeMap<String, String>) -> Result<(), String> {
        if !self.own_group {
            return Err("restart needs a stack in a process group of its own".into());
        }
        if let Some(child) = self.child.take() {
            kill_process(child, true);
        }
        wait_port_free(self.launch.port, Duration::from_secs(20))?;
        wait_port_free(self.launch.inspector, Duration::from_secs(20))?;
        self.launch.derive(&overrides)?;
        {
            use std::io::Write;
            let mut log = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.state_dir.join("wrangler.log"))
                .map_err(|e| e.to_string())?;
            let _ = writeln!(
                log,
                "=== e2e: stack killed (SIGKILL) and restarted with overrides {overrides:?} ==="
            );
        }
        let spawned = Instant::now();
        self.child = Some(self.launch.spawn(true)?);
        self.wait_healthy(
            self.launch.health_path(),
            self.launch.expect_healthy,
            Duration::from_secs(90),
        )?;
        self.started_in = spawned.elapsed();
        Ok(())
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

    /// After a failure: keeps the state and prints the last `lines` of the log and where the
    /// state is kept.
    pub fn post_mortem(&self, lines: usize) {
        self.keep_state();
        eprintln!(
            "--- wrangler log (last {lines} lines) ---\n{}\n--- state kept in {} ---",
            self.log_tail(lines),
            self.state_dir.display()
        );
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

    /// How many times the provider was asked to create a task for `prompt` (`None`: never).
    pub fn provider_creates(&self, prompt: &str) -> Option<u64> {
        self.sim.stats().creates_by_prompt.get(prompt).copied()
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

    /// Whether wrangler has exited (`cargo xtask dev` watches it).
    pub fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|c| !matches!(c.try_wait(), Ok(None)))
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

/// Kills a `wrangler dev` at once (SIGKILL), with the workerd it started when it leads its own
/// process group: a crash, not a clean stop.
pub(crate) fn kill_process(mut child: Child, own_group: bool) {
    let group = if own_group {
        format!("-{}", child.id())
    } else {
        child.id().to_string()
    };
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
