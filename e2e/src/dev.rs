//! `cargo xtask dev`: the whole stack on persistent local state in `.state/`, secrets from
//! `.dev.vars`, a demo user, and a curl to try.

use crate::stack::{root, Stack, StackOptions};
use serde_json::json;
use std::collections::BTreeMap;
use std::fs;

const API_PORT: u16 = 8787;
const SIM_PORT: u16 = 8790;

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

pub fn run(_args: &[String]) -> Result<(), String> {
    let mut vars = dev_vars()?;
    vars.insert(
        "KIE_BASE_URL".into(),
        format!("http://127.0.0.1:{SIM_PORT}"),
    );
    vars.insert(
        "PUBLIC_BASE_URL".into(),
        format!("http://127.0.0.1:{API_PORT}"),
    );
    vars.insert(
        "CREEM_BASE_URL".into(),
        format!("http://127.0.0.1:{SIM_PORT}"),
    );
    let admin = vars
        .get("ADMIN_TOKEN")
        .cloned()
        .ok_or(".dev.vars has no ADMIN_TOKEN")?;
    let state = root().join(".state");
    let mut stack = Stack::start(StackOptions {
        state_dir: Some(state.clone()),
        port: Some(API_PORT),
        sim_port: Some(SIM_PORT),
        vars,
        rate_limits: BTreeMap::new(),
        keep_state: true,
        expect_healthy: true,
        seed: None,
        cron_only: false,
        own_process_group: false,
    })?;
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
    println!(
        "\nedgeline is running on {api} (simulated kie.ai on http://127.0.0.1:{SIM_PORT}); state in .state/, logs in .state/wrangler.log\n\n\
         demo user {user}, token:\n  {token}\n\n\
         submit a task:\n  curl -s -X POST {api}/api/tasks -H 'authorization: Bearer {token}' -H 'content-type: application/json' \\\n    -d '{{\"prompt\":\"a lighthouse at dawn\",\"model\":\"kie_4o\"}}'\n\n\
         then: curl -s {api}/api/tasks -H 'authorization: Bearer {token}'\n       curl -s {api}/api/balance -H 'authorization: Bearer {token}'\n\n\
         Ctrl-C stops everything.",
        api = stack.api
    );
    stack.wait();
    Ok(())
}
