//! Every worker's wrangler config bundles and validates for deployment (`wrangler deploy
//! --dry-run`, no network) and declares the bindings the code expects.

#![allow(clippy::expect_used)]

use std::process::Command;

fn dry_run(config: &str) -> String {
    let root = e2e::stack::root();
    let out_dir = std::env::temp_dir().join(format!(
        "edgeline-dry-run-{}-{}",
        std::process::id(),
        config.replace('/', "_")
    ));
    let out = Command::new(root.join("node_modules/.bin/wrangler"))
        .current_dir(&root)
        .args(["deploy", "--dry-run", "--outdir"])
        .arg(&out_dir)
        .args(["-c", config])
        .env("WRANGLER_SEND_METRICS", "false")
        .env("CI", "1")
        .env("NO_COLOR", "1")
        .output()
        .expect("wrangler runs");
    let _ = std::fs::remove_dir_all(&out_dir);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{config}: dry run failed:\n{text}");
    text
}

fn has_all(text: &str, config: &str, wanted: &[&str]) {
    for w in wanted {
        assert!(
            text.contains(w),
            "{config}: dry run does not list {w}:\n{text}"
        );
    }
}

#[test]
fn api_config_deploys() {
    let text = dry_run("wrangler.toml");
    has_all(
        &text,
        "api",
        &[
            "env.DB (edgeline)",
            "env.BUCKET (edgeline)",
            "env.KV",
            "env.TASKS (edgeline-tasks)",
            "env.EVENTS (edgeline-events)",
        ],
    );
}

#[test]
fn consumer_config_deploys() {
    let text = dry_run("consumer-worker/wrangler.toml");
    has_all(
        &text,
        "consumer",
        &[
            "env.DB (edgeline)",
            "env.BUCKET (edgeline)",
            "env.KV",
            "env.TASKS (edgeline-tasks)",
        ],
    );
}

#[test]
fn cron_config_deploys() {
    let text = dry_run("cron-worker/wrangler.toml");
    has_all(&text, "cron", &["env.DB (edgeline)"]);
}

#[test]
fn cron_triggers_match_the_schedule_table() {
    let text = std::fs::read_to_string(e2e::stack::root().join("cron-worker/wrangler.toml"))
        .expect("config");
    let doc: toml::Table = text.parse().expect("toml");
    let crons: Vec<String> = doc["triggers"]["crons"]
        .as_array()
        .expect("crons")
        .iter()
        .filter_map(|c| c.as_str().map(str::to_owned))
        .collect();
    let table: Vec<String> = shared::schedule::SCHEDULES
        .iter()
        .map(|(c, _, _)| (*c).to_owned())
        .collect();
    assert_eq!(
        crons, table,
        "triggers.crons and shared::schedule::SCHEDULES must list the same expressions"
    );
    assert!(
        crons.len() <= 5,
        "the free plan allows 5 cron triggers per account"
    );
}

#[test]
fn committed_configs_carry_no_account_ids() {
    for config in [
        "wrangler.toml",
        "consumer-worker/wrangler.toml",
        "cron-worker/wrangler.toml",
    ] {
        let text = std::fs::read_to_string(e2e::stack::root().join(config)).expect("config");
        let doc: toml::Table = text.parse().expect("toml");
        for (table, key) in [("d1_databases", "database_id"), ("kv_namespaces", "id")] {
            for entry in doc
                .get(table)
                .and_then(toml::Value::as_array)
                .into_iter()
                .flatten()
            {
                assert!(
                    entry.get(key).is_none(),
                    "{config}: {table}.{key} is an account's id; `cargo xtask deploy` finds it"
                );
            }
        }
    }
}

/// `cargo xtask deploy --dry-run`: every step that needs no account (build, `wrangler deploy
/// --dry-run` of each derived config, the migration listing), in the order a deploy takes.
#[test]
fn deploy_dry_run_needs_no_account() {
    let root = e2e::stack::root();
    let built = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(&root)
        .args(["build", "-q", "-p", "xtask"])
        .status()
        .expect("cargo runs");
    assert!(built.success(), "xtask builds");
    let out = Command::new(root.join("target/debug/xtask"))
        .current_dir(&root)
        .args(["deploy", "--dry-run"])
        // no account: a token in the environment must not be needed nor used
        .env_remove("CLOUDFLARE_API_TOKEN")
        .env_remove("CLOUDFLARE_ACCOUNT_ID")
        .output()
        .expect("xtask runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "deploy --dry-run failed:\n{text}");
    let at = |needle: &str| {
        text.find(needle)
            .unwrap_or_else(|| panic!("deploy --dry-run does not mention {needle}:\n{text}"))
    };
    assert!(
        at("edgeline-cron bundles") < at("edgeline-consumer bundles")
            && at("edgeline-consumer bundles") < at("edgeline-api bundles"),
        "the cron worker, which the api binds, comes first:\n{text}"
    );
    for needle in [
        "env.DB (edgeline)",
        "env.CRON (edgeline-cron)",
        "0001_init.sql",
        "secret ADMIN_TOKEN of edgeline-api",
        "secret KIE_API_KEY of edgeline-consumer",
        "/webhooks/creem",
    ] {
        at(needle);
    }
}
