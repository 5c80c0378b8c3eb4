//! A crash with work in flight (the `restart` and `devstack` suites): twenty tasks on a slow
//! provider, a stack whose leases expire soon after the crash, and what must hold once every
//! task has ended.

use crate::check::{ensure, eq, Check};
use crate::client::Client;
use crate::stack::{Stack, StackOptions, ADMIN_TOKEN};
use crate::tasks::submitted;
use std::collections::HashMap;
use std::time::Duration;

/// Tasks in flight when the stack dies.
pub const TASKS: usize = 20;
pub const LEASE_SECS: u64 = 6;
/// The credits of the user whose tasks are in flight.
const CREDITS: i64 = 100;

/// Short leases, so recovery starts soon after the crash; deadlines far enough off for it.
pub fn options() -> StackOptions {
    let mut options = StackOptions::default();
    options
        .vars
        .insert("TASK_LEASE_SECS".into(), LEASE_SECS.to_string());
    options
        .vars
        .insert("TASK_DEADLINE_SECS".into(), "150".into());
    options
}

/// A new user's `TASKS` tasks, submitted to a slow provider, then three seconds for some of
/// them to reach it: (the user's token, the task ids, how many the provider has accepted).
pub fn work_in_flight(stack: &Stack) -> (String, Vec<String>, usize) {
    let c = stack.client();
    let (_, token) = c.new_user(ADMIN_TOKEN, CREDITS);
    let ids = (0..TASKS)
        .map(|i| {
            submitted(
                &c,
                &token,
                &format!("in flight {i} [sim:slow=8000]"),
                "kie_4o",
            )
        })
        .collect();
    std::thread::sleep(Duration::from_secs(3));
    let accepted = stack.sim.stats().creates_by_task.len();
    (token, ids, accepted)
}

/// An ended task was created at the provider at most once, and exactly once if it completed
/// (`creates`: the simulator's creates by task).
pub fn created_once(id: &str, task: &serde_json::Value, creates: &HashMap<String, u64>) -> Check {
    let n = creates.get(id).copied().unwrap_or(0);
    ensure(
        n <= 1,
        format!("task {id} created at the provider {n} times"),
    )?;
    if task["status"] == "completed" {
        eq(n, 1, &format!("completed task {id} was created once"))?;
    }
    Ok(())
}

/// The user paid for the `completed` tasks once each and got the failed ones' holds back, and
/// the auditor finds nothing.
pub fn settled(c: &Client, token: &str, completed: usize) -> Check {
    eq(
        c.balance(token),
        CREDITS - 2 * i64::try_from(completed).unwrap_or(0),
        "completed tasks charged once, failed ones released",
    )?;
    let audit = c
        .get("/admin/audit?stuck_secs=60", Some(ADMIN_TOKEN))
        .json();
    eq(
        audit["ok"].as_bool(),
        Some(true),
        &format!("the auditor finds nothing: {audit}"),
    )
}
