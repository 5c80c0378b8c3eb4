//! `cargo xtask deploy [--dry-run]`: edgeline to a Cloudflare account in one command.
//!
//! 1. Build the three workers (as `cargo xtask build`).
//! 2. Find the account's resources by name, creating what is missing: the D1 database and KV
//!    namespace (`wrangler d1 list --json` / `create`, `wrangler kv namespace list` / `create`),
//!    the R2 bucket and the queues (`wrangler r2 bucket info` / `create`, `wrangler queues info` /
//!    `create`). The committed configs carry no account ids: wrangler 4.86's automatic
//!    provisioning would find D1 and R2 by name, but it names a KV namespace after each worker,
//!    which would give the three workers three namespaces, so the ids are found here.
//! 3. Write a copy of each committed config with the ids into `target/deploy/`
//!    (`e2e::stack::derive_config`, the one the local stack uses).
//! 4. Apply the D1 migrations remotely (`wrangler d1 migrations apply edgeline --remote`).
//! 5. Deploy in dependency order: the cron worker (the api binds it as the `CRON` service), the
//!    consumer (the queues' consumer), then the api.
//! 6. Print what is still missing: secrets per worker (`wrangler secret list`), vars still at
//!    their example values, the webhook registration at Creem.
//!
//! `--dry-run` runs every step that needs no account: the build, `wrangler deploy --dry-run
//! --outdir target/deploy/<worker>` of each derived config (placeholder ids), and the migration
//! listing; then prints the account steps it would take and the checklist.

use crate::{root, toolchain, Result};
use e2e::stack::{derive_config, BindingIds};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A worker to deploy: its name, its committed config, and the secrets it needs (required,
/// optional).
pub struct Worker {
    pub key: &'static str,
    pub name: &'static str,
    pub config: &'static str,
    pub secrets: &'static [&'static str],
    pub optional_secrets: &'static [&'static str],
}

/// The workers in the order they deploy: a service a worker binds deploys before it.
pub const ORDER: [Worker; 3] = [
    Worker {
        key: "cron",
        name: "edgeline-cron",
        config: "cron-worker/wrangler.toml",
        secrets: &[],
        optional_secrets: &[],
    },
    Worker {
        key: "consumer",
        name: "edgeline-consumer",
        config: "consumer-worker/wrangler.toml",
        secrets: &["KIE_API_KEY", "FILES_SIGNING_KEY"],
        optional_secrets: &[],
    },
    Worker {
        key: "api",
        name: "edgeline-api",
        config: "wrangler.toml",
        secrets: &[
            "ADMIN_TOKEN",
            "FILES_SIGNING_KEY",
            "JWT_SECRET",
            "CREEM_API_KEY",
            "CREEM_WEBHOOK_SECRETS",
        ],
        optional_secrets: &["STANDARD_WEBHOOK_SECRETS", "KIE_WEBHOOK_SECRET"],
    },
];

/// The placeholder ids a dry run validates the derived configs with.
fn dry_run_ids() -> BindingIds {
    BindingIds {
        d1: "00000000-0000-4000-8000-000000000000".into(),
        kv: "00000000000000000000000000000000".into(),
    }
}

pub const USAGE: &str = "usage: cargo xtask deploy [--dry-run]";

pub fn run(args: &[String]) -> Result<()> {
    let dry_run = match args {
        [] => false,
        [a] if a == "--dry-run" => true,
        _ => return Err(USAGE.into()),
    };
    let t = toolchain::ensure()?;
    step("build");
    toolchain::build_workers(&t)?;
    let out = root().join("target/deploy");
    std::fs::create_dir_all(&out).map_err(|e| format!("creating {}: {e}", out.display()))?;
    let names = resource_names()?;
    if dry_run {
        return dry(&out, &names);
    }
    real(&out, &names)
}

fn step(what: &str) {
    eprintln!("\ndeploy: {what}");
}

/// What the committed configs bind, by name (the same in all three; checked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    pub d1: String,
    pub bucket: String,
    pub queues: Vec<String>,
    /// The KV namespace's title: KV bindings have no name, so it is the D1 database's.
    pub kv_title: String,
}

fn read_config(path: &Path) -> Result<toml_like::Doc> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    toml_like::Doc::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

pub fn resource_names() -> Result<Names> {
    let mut found: Option<Names> = None;
    let mut queues = std::collections::BTreeSet::new();
    for w in &ORDER {
        let doc = read_config(&root().join(w.config))?;
        for id_key in ["d1_databases.database_id", "kv_namespaces.id"] {
            if doc.get_all(id_key).iter().any(|v| !v.is_empty()) {
                return Err(format!(
                    "{}: {id_key} is set; the committed configs carry no account ids (deploy finds them)",
                    w.config
                ));
            }
        }
        let names = Names {
            d1: doc.first("d1_databases.database_name").unwrap_or_default(),
            bucket: doc.first("r2_buckets.bucket_name").unwrap_or_default(),
            queues: vec![],
            kv_title: doc.first("d1_databases.database_name").unwrap_or_default(),
        };
        queues.extend(doc.get_all("queues.producers.queue"));
        queues.extend(doc.get_all("queues.consumers.queue"));
        queues.extend(doc.get_all("queues.consumers.dead_letter_queue"));
        match &found {
            None => found = Some(names),
            Some(f) if *f == names => {}
            Some(f) => {
                return Err(format!(
                    "{} binds {names:?}, the others {f:?}: the three workers must share one database, bucket and namespace",
                    w.config
                ))
            }
        }
    }
    let mut names = found.ok_or("no configs")?;
    if names.d1.is_empty() || names.bucket.is_empty() {
        return Err("the configs name no D1 database or R2 bucket".into());
    }
    names.queues = queues.into_iter().filter(|q| !q.is_empty()).collect();
    Ok(names)
}

fn wrangler(args: &[&str], config: Option<&Path>) -> Command {
    let mut cmd = Command::new(root().join("node_modules/.bin/wrangler"));
    cmd.current_dir(root())
        .args(args)
        .env("WRANGLER_SEND_METRICS", "false")
        .env("NO_COLOR", "1")
        .env("FORCE_COLOR", "0")
        .stdin(Stdio::null());
    if let Some(c) = config {
        cmd.arg("-c").arg(c);
    }
    cmd
}

/// Runs wrangler and returns its stdout; fails with its output.
fn capture(args: &[&str], config: Option<&Path>) -> Result<String> {
    let out = wrangler(args, config)
        // never wait on a prompt: wrangler answers its confirmations itself when not interactive
        .env("CI", "1")
        .output()
        .map_err(|e| format!("starting wrangler: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "wrangler {} failed ({}):\n{stdout}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn succeeds(args: &[&str]) -> bool {
    wrangler(args, None)
        .env("CI", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Derived configs, one per worker, into `out/<key>.toml`.
fn derive_all(out: &Path, ids: &BindingIds) -> Result<Vec<(&'static Worker, PathBuf)>> {
    ORDER
        .iter()
        .map(|w| {
            let dest = out.join(format!("{}.toml", w.key));
            derive_config(
                &root().join(w.config),
                &dest,
                &BTreeMap::new(),
                &BTreeMap::new(),
                ids,
            )?;
            Ok((w, dest))
        })
        .collect()
}

fn migrations() -> Result<Vec<String>> {
    let dir = root().join("migrations");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .map_err(|e| format!("reading {}: {e}", dir.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|f| f.ends_with(".sql"))
        .collect();
    files.sort();
    Ok(files)
}

fn dry(out: &Path, names: &Names) -> Result<()> {
    let configs = derive_all(out, &dry_run_ids())?;
    for (w, config) in &configs {
        step(&format!(
            "wrangler deploy --dry-run: {} ({})",
            w.name, w.config
        ));
        let dir = out.join(w.key);
        let text = capture(
            &[
                "deploy",
                "--dry-run",
                "--outdir",
                &dir.display().to_string(),
            ],
            Some(config),
        )?;
        let bindings: Vec<&str> = text
            .lines()
            .filter(|l| l.trim_start().starts_with("env.") && !l.contains("Environment Variable"))
            .map(str::trim)
            .collect();
        println!("{} bundles into {}; bindings:", w.name, dir.display());
        for b in bindings {
            println!("  {b}");
        }
    }
    step("migrations");
    for m in migrations()? {
        println!("  {m}");
    }
    println!(
        "\ndry run: everything that needs no account passed. With an account, `cargo xtask deploy` would:\n\
         - find or create D1 database `{d1}`, KV namespace `{kv}`, R2 bucket `{bucket}`, queues {queues}\n\
         - apply the migrations above to `{d1}` (remote; wrangler skips those already applied)\n\
         - deploy {order}, in that order",
        d1 = names.d1,
        kv = names.kv_title,
        bucket = names.bucket,
        queues = names.queues.join(", "),
        order = ORDER.iter().map(|w| w.name).collect::<Vec<_>>().join(", then "),
    );
    checklist(None, None);
    Ok(())
}

fn real(out: &Path, names: &Names) -> Result<()> {
    step("account");
    let who = capture(&["whoami"], None)?;
    if who.contains("You are not authenticated") || who.contains("not logged in") {
        return Err(
            "not signed in to Cloudflare: run `npx wrangler login`, or set CLOUDFLARE_API_TOKEN (and CLOUDFLARE_ACCOUNT_ID)"
                .into(),
        );
    }
    step(&format!("D1 database {}", names.d1));
    let d1 = match find_d1(&capture(&["d1", "list", "--json"], None)?, &names.d1)? {
        Some(id) => id,
        None => {
            capture(&["d1", "create", &names.d1], None)?;
            find_d1(&capture(&["d1", "list", "--json"], None)?, &names.d1)?
                .ok_or("created the D1 database but cannot find it")?
        }
    };
    println!("  {d1}");
    step(&format!("KV namespace {}", names.kv_title));
    let kv = match find_kv(
        &capture(&["kv", "namespace", "list"], None)?,
        &names.kv_title,
    )? {
        Some(id) => id,
        None => {
            capture(&["kv", "namespace", "create", &names.kv_title], None)?;
            find_kv(
                &capture(&["kv", "namespace", "list"], None)?,
                &names.kv_title,
            )?
            .ok_or("created the KV namespace but cannot find it")?
        }
    };
    println!("  {kv}");
    step(&format!("R2 bucket {}", names.bucket));
    if succeeds(&["r2", "bucket", "info", &names.bucket]) {
        println!("  exists");
    } else {
        capture(&["r2", "bucket", "create", &names.bucket], None)?;
        println!("  created");
    }
    step("queues");
    for q in &names.queues {
        if succeeds(&["queues", "info", q]) {
            println!("  {q} exists");
        } else {
            capture(&["queues", "create", q], None)?;
            println!("  {q} created");
        }
    }
    let configs = derive_all(out, &BindingIds { d1, kv })?;
    let api_config = configs
        .iter()
        .find(|(w, _)| w.key == "api")
        .map(|(_, c)| c.clone())
        .ok_or("no api config")?;
    step("migrations (remote)");
    print!(
        "{}",
        capture(
            &["d1", "migrations", "apply", &names.d1, "--remote"],
            Some(&api_config)
        )?
    );
    let mut url = None;
    for (w, config) in &configs {
        step(&format!("deploy {}", w.name));
        let text = capture(&["deploy"], Some(config))?;
        print!("{text}");
        if w.key == "api" {
            url = workers_dev_url(&text);
        }
    }
    let mut missing = BTreeMap::new();
    for (w, config) in &configs {
        let listed = capture(&["secret", "list", "--format", "json"], Some(config))?;
        let have: Vec<String> = serde_json::from_str::<Value>(&listed)
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|s| s["name"].as_str().map(str::to_owned))
            .collect();
        let lacking: Vec<&str> = w
            .secrets
            .iter()
            .filter(|s| !have.iter().any(|h| h == *s))
            .copied()
            .collect();
        missing.insert(w.key, lacking);
    }
    println!(
        "\ndeployed {}",
        ORDER.iter().map(|w| w.name).collect::<Vec<_>>().join(", ")
    );
    checklist(Some(&missing), url.as_deref());
    Ok(())
}

/// The uuid of the D1 database named `name` in `wrangler d1 list --json`.
pub fn find_d1(listing: &str, name: &str) -> Result<Option<String>> {
    let v: Value = serde_json::from_str(listing.trim())
        .map_err(|e| format!("wrangler d1 list --json printed something else ({e}): {listing}"))?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .find(|d| d["name"] == name)
        .and_then(|d| d["uuid"].as_str().map(str::to_owned)))
}

/// The id of the KV namespace titled `title` in `wrangler kv namespace list` (JSON).
pub fn find_kv(listing: &str, title: &str) -> Result<Option<String>> {
    let start = listing
        .find('[')
        .ok_or_else(|| format!("no JSON list in: {listing}"))?;
    let v: Value = serde_json::from_str(listing[start..].trim()).map_err(|e| {
        format!("wrangler kv namespace list printed something else ({e}): {listing}")
    })?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .find(|n| n["title"] == title)
        .and_then(|n| n["id"].as_str().map(str::to_owned)))
}

/// The `https://….workers.dev` URL `wrangler deploy` printed, if any.
pub fn workers_dev_url(text: &str) -> Option<String> {
    text.split_whitespace()
        .find(|w| w.starts_with("https://") && w.contains(".workers.dev"))
        .map(|w| w.trim_end_matches(['.', ',', ')']).to_owned())
}

/// What a deploy cannot do by itself. `missing`: the secrets each worker lacks (None: unknown,
/// a dry run); `url`: the api's workers.dev URL.
fn checklist(missing: Option<&BTreeMap<&str, Vec<&str>>>, url: Option<&str>) {
    let api = url.unwrap_or("https://<your api>");
    println!("\nstill to do by hand:");
    for w in &ORDER {
        let lacking: Vec<&str> = match missing {
            Some(m) => m.get(w.key).cloned().unwrap_or_default(),
            None => w.secrets.to_vec(),
        };
        for s in lacking {
            println!(
                "- secret {s} of {}: wrangler secret put {s} -c {}{}",
                w.name,
                w.config,
                if s == "FILES_SIGNING_KEY" {
                    " (the same value for the api and the consumer)"
                } else {
                    ""
                }
            );
        }
        for s in w.optional_secrets {
            println!(
                "- optional secret {s} of {}: wrangler secret put {s} -c {}",
                w.name, w.config
            );
        }
    }
    if missing.is_some_and(|m| m.values().all(Vec::is_empty)) {
        println!("- (every required secret is set)");
    }
    println!(
        "- PUBLIC_BASE_URL in [vars] of wrangler.toml and consumer-worker/wrangler.toml: {api} (then deploy again)\n\
         - register {api}/webhooks/creem as the webhook endpoint in Creem's dashboard, with the secret in CREEM_WEBHOOK_SECRETS\n\
         - set the catalogue's creem_product_id values to your Creem products: PUT {api}/admin/catalog\n\
         - CORS_ALLOWED_ORIGINS in wrangler.toml: your app's origins\n\
         - the operator console: {api}/admin/console/"
    );
}

/// Reads the few things deploy needs from a wrangler TOML config (with the `toml` crate the
/// stack reads the same configs with, re-exported by `e2e::stack`).
mod toml_like {
    use e2e::stack::toml;

    pub struct Doc(toml::Table);

    impl Doc {
        pub fn parse(text: &str) -> Result<Doc, String> {
            text.parse::<toml::Table>()
                .map(Doc)
                .map_err(|e| e.to_string())
        }

        /// Every string at a dotted path, through arrays of tables (`queues.producers.queue`).
        pub fn get_all(&self, path: &str) -> Vec<String> {
            let mut values: Vec<&toml::Value> = vec![];
            let parts: Vec<&str> = path.split('.').collect();
            collect(&self.0, &parts, &mut values);
            values
                .into_iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        }

        pub fn first(&self, path: &str) -> Option<String> {
            self.get_all(path).into_iter().next()
        }
    }

    fn collect<'a>(table: &'a toml::Table, parts: &[&str], out: &mut Vec<&'a toml::Value>) {
        let Some((head, rest)) = parts.split_first() else {
            return;
        };
        let Some(v) = table.get(*head) else {
            return;
        };
        let mut visit = |v: &'a toml::Value| match v {
            toml::Value::Table(t) if !rest.is_empty() => collect(t, rest, out),
            other if rest.is_empty() => out.push(other),
            _ => {}
        };
        match v {
            toml::Value::Array(items) => items.iter().for_each(&mut visit),
            other => visit(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_configs_carry_no_account_ids_and_share_their_resources() {
        let names = resource_names().expect("configs read");
        assert_eq!(names.d1, "edgeline");
        assert_eq!(names.bucket, "edgeline");
        for q in ["edgeline-tasks", "edgeline-events", "edgeline-dead-letters"] {
            assert!(
                names.queues.iter().any(|n| n == q),
                "{q} in {:?}",
                names.queues
            );
        }
    }

    #[test]
    fn services_deploy_before_the_workers_that_bind_them() {
        let pos = |k: &str| ORDER.iter().position(|w| w.key == k).expect("listed");
        assert!(pos("cron") < pos("api"), "the api binds CRON");
        for w in &ORDER {
            let doc = read_config(&root().join(w.config)).expect("config");
            for service in doc.get_all("services.service") {
                let bound = ORDER
                    .iter()
                    .position(|o| o.name == service)
                    .expect("a worker of ours");
                assert!(
                    bound < pos(w.key),
                    "{} binds {service}, which must deploy first",
                    w.name
                );
            }
            assert_eq!(doc.first("name").as_deref(), Some(w.name));
        }
    }

    #[test]
    fn derived_configs_carry_the_ids_and_absolute_paths() {
        let dir = std::env::temp_dir().join(format!("edgeline-deploy-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let ids = BindingIds {
            d1: "d1-id".into(),
            kv: "kv-id".into(),
        };
        for (w, path) in derive_all(&dir, &ids).expect("derived") {
            let doc = read_config(&path).expect("derived config");
            assert_eq!(
                doc.get_all("d1_databases.database_id"),
                vec!["d1-id"],
                "{}",
                w.key
            );
            assert_eq!(doc.get_all("kv_namespaces.id"), vec!["kv-id"], "{}", w.key);
            let main = doc.first("main").expect("main");
            assert!(Path::new(&main).is_absolute(), "{main}");
            for m in doc.get_all("d1_databases.migrations_dir") {
                assert!(Path::new(&m).is_dir(), "{m}");
            }
            for a in doc.get_all("assets.directory") {
                assert!(
                    Path::new(&a).join("admin/console/index.html").exists(),
                    "{a}"
                );
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn reads_what_wrangler_lists() {
        let d1 =
            r#"[{"uuid":"u-1","name":"other"},{"uuid":"u-2","name":"edgeline","created_at":"x"}]"#;
        assert_eq!(find_d1(d1, "edgeline").expect("json"), Some("u-2".into()));
        assert_eq!(find_d1("[]", "edgeline").expect("json"), None);
        assert!(find_d1("not json", "edgeline").is_err());
        let kv = "[\n  {\n    \"id\": \"k-1\",\n    \"title\": \"edgeline\",\n    \"supports_url_encoding\": true\n  }\n]";
        assert_eq!(find_kv(kv, "edgeline").expect("json"), Some("k-1".into()));
        assert_eq!(find_kv(kv, "edgeline-api-kv").expect("json"), None);
        let deployed = "Uploaded edgeline-api (3.1 sec)\nDeployed edgeline-api triggers (0.5 sec)\n  https://edgeline-api.acme.workers.dev\nCurrent Version ID: x";
        assert_eq!(
            workers_dev_url(deployed).as_deref(),
            Some("https://edgeline-api.acme.workers.dev")
        );
    }
}
