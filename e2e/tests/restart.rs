//! A crash with work in flight: twenty tasks submitted to a slow provider, the stack killed hard
//! (SIGKILL, workerd included) a few seconds later and restarted on its state, while the provider
//! keeps running. The local queue loses the messages in flight; the reconciler finds every task
//! again. No task the provider accepted is created there a second time, every task ends (completed,
//! or failed with its hold released), and each is charged at most once.

use e2e::check::ensure;
use e2e::recovery::{self, LEASE_SECS, TASKS};
use e2e::stack::{Stack, ADMIN_TOKEN};
use e2e::tasks;
use libtest_mimic::{Arguments, Failed, Trial};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

fn crash_mid_flight_recovers_without_paying_twice(stack: &mut Stack) -> Result<(), Failed> {
    let (token, ids, accepted_before) = recovery::work_in_flight(stack);
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
        statuses = tasks::states(&c, &token, &ids);
        if tasks::all_ended(&statuses) {
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
        recovery::created_once(id, task, &creates)?;
    }
    recovery::settled(&c, &token, completed)?;
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
    let options = recovery::options();
    let trial = Trial::test(
        "crash_mid_flight_recovers_without_paying_twice",
        move || {
            let mut stack = Stack::start(options.clone())?;
            let outcome = crash_mid_flight_recovers_without_paying_twice(&mut stack);
            if outcome.is_err() {
                stack.post_mortem(80);
            }
            outcome
        },
    );
    libtest_mimic::run(&args, vec![trial]).exit()
}
