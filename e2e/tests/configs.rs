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
