//! A crash with work in flight: twenty tasks submitted to a slow provider, the stack killed hard
//! (SIGKILL, workerd included) a few seconds later and restarted on its state, while the provider
//! keeps running. The local queue loses the messages in flight; the reconciler finds every task
//! again. No task the provider accepted is created there a second time, every task ends (completed,
//! or failed with its hold released), and each is charged at most once.

use e2e::check::{ensure, eq};
use e2e::stack::{Stack, StackOptions, ADMIN_TOKEN};
use libtest_mimic::{Arguments, Failed, Trial};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const TASKS: usize = 20;
const LEASE_SECS: u64 = 6;

fn crash_mid_flight_recovers_without_paying_twice(stack: &mut Stack) -> Result<(), Failed> {
    let c = stack.client();
    let (_, token) = c.new_user(ADMIN_TOKEN, 100);
    let ids: Vec<String> = (0..TASKS)
        .map(|i| {
            let r = c.post_json(
                "/api/tasks",
                Some(&token),
                &json!({"prompt": format!("in flight {i} [sim:slow=8000]"), "model": "kie_4o"}),
            );
            assert_eq!(r.status, 202, "submit: {}", r.text());
            r.json()["id"].as_str().unwrap_or_default().to_owned()
        })
        .collect();
    std::thread::sleep(Duration::from_secs(3));
    let accepted_before = stack.sim.stats().creates_by_task.len();
    stack.restart(BTreeMap::new())?;
    let restarted = Instant::now();
    println!(
        "killed with {accepted_before} of {TASKS} tasks accepted by the provider; restarted in {:.1} s",
        stack.started_in.as_secs_f64()
    );

    // recovery as the cron would run it: every lease, until every task has ended
    let c = stack.client();
    let limit = Duration::from_secs(180);
    let mut statuses: Vec<Value>;
    loop {
        std::thread::sleep(Duration::from_secs(LEASE_SECS));
        stack
            .client()
            .run_cron_job(ADMIN_TOKEN, "reconcile_tasks")?;
        statuses = ids
            .iter()
            .map(|id| c.get(&format!("/api/tasks/{id}"), Some(&token)).json())
            .collect();
        if statuses
            .iter()
            .all(|t| matches!(t["status"].as_str(), Some("completed" | "failed")))
        {
            break;
        }
        ensure(
            restarted.elapsed() < limit,
            format!("every task ends within {}s: {statuses:?}", limit.as_secs()),
        )?;
    }
    let recovered_in = restarted.elapsed();
    let creates = stack.sim.stats().creates_by_task;
    let completed = statuses
        .iter()
        .filter(|t| t["status"] == "completed")
        .count();
    for (id, task) in ids.iter().zip(&statuses) {
        let n = creates.get(id).copied().unwrap_or(0);
        ensure(
            n <= 1,
            format!("task {id} created at the provider {n} times"),
        )?;
        if task["status"] == "completed" {
            eq(n, 1, &format!("completed task {id} was created once"))?;
        }
    }
    eq(
        c.balance(&token),
        100 - 2 * i64::try_from(completed).unwrap_or(0),
        "completed tasks charged once, failed ones released",
    )?;
    let audit = c
        .get("/admin/audit?stuck_secs=60", Some(ADMIN_TOKEN))
        .json();
    eq(
        audit["ok"].as_bool(),
        Some(true),
        &format!("the auditor finds nothing: {audit}"),
    )?;
    println!(
        "recovered in {:.1} s after the restart: {completed} completed, {} failed, {} provider creates for {TASKS} tasks",
        recovered_in.as_secs_f64(),
        TASKS - completed,
        creates.values().sum::<u64>()
    );
    Ok(())
}

fn main() {
    let args = Arguments::from_args();
    let mut options = StackOptions::default();
    options
        .vars
        .insert("TASK_LEASE_SECS".into(), LEASE_SECS.to_string());
    options
        .vars
        .insert("TASK_DEADLINE_SECS".into(), "150".into());
    let trial = Trial::test(
        "crash_mid_flight_recovers_without_paying_twice",
        move || {
            let mut stack = Stack::start(options.clone())?;
            let outcome = crash_mid_flight_recovers_without_paying_twice(&mut stack);
            if outcome.is_err() {
                stack.keep_state();
                eprintln!(
                    "--- wrangler log (last 80 lines) ---\n{}\n--- state kept in {} ---",
                    stack.log_tail(80),
                    stack.state_dir.display()
                );
            }
            outcome
        },
    );
    libtest_mimic::run(&args, vec![trial]).exit()
}
