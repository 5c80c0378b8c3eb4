//! The cron worker's own `scheduled` entry point, reached the way Cloudflare reaches it: a
//! trigger for one of its cron expressions (`/__scheduled?cron=…` of `wrangler dev
//! --test-scheduled`, with the cron worker as the only worker, since wrangler routes it to the
//! first worker of a session). Each expression runs its jobs and records them.

use e2e::stack::{Seed, Stack, StackOptions};
use serde_json::Value;

fn seed(s: &Seed) -> Result<(), String> {
    s.d1(
        "INSERT INTO users (id, email, name, credits, created_at, updated_at) VALUES ('44444444-4444-4444-8444-444444444444', 'sched@e2e.test', 'S', 0, 0, 0);
         INSERT INTO orders (id, user_id, amount, currency, status, payment_provider, credits, product_id, created_at, updated_at)
         VALUES ('ord_sched_1', '44444444-4444-4444-8444-444444444444', 499, 'USD', 'pending', 'creem', 50, 'pack_starter', 1000, 1000),
                ('ord_sched_2', '44444444-4444-4444-8444-444444444444', 499, 'USD', 'pending', 'creem', 50, 'pack_starter', 1000, 1000);",
    )
}

fn runs(stack: &Stack) -> Vec<Value> {
    stack.client().get("/runs", None).json()["runs"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn each_cron_expression_runs_and_records_its_jobs() {
    let stack = Stack::start(StackOptions {
        cron_only: true,
        seed: Some(seed.into()),
        ..StackOptions::default()
    })
    .expect("the cron worker starts");
    let c = stack.client();
    for (cron, _, jobs) in shared::schedule::SCHEDULES {
        let r = c.get(
            &format!("/__scheduled?cron={}", cron.replace(' ', "+")),
            None,
        );
        assert_eq!(r.status, 200, "{cron}: {}", r.text());
        let recorded = runs(&stack);
        for job in jobs {
            let run = recorded
                .iter()
                .find(|r| r["job"] == *job && r["schedule"] == cron)
                .unwrap_or_else(|| panic!("{job} ran for {cron}: {recorded:?}"));
            assert_eq!(run["errors"], 0, "{job}: {run}");
            assert!(run["finished_at"].is_i64(), "{job} finished: {run}");
        }
    }
    let expired = runs(&stack)
        .into_iter()
        .find(|r| r["job"] == "expire_orders")
        .map(|r| r["changed"].clone());
    assert_eq!(
        expired,
        Some(Value::from(2)),
        "the scheduled run expired the two stale orders"
    );
    // an expression the worker does not know is logged, not lost
    assert_eq!(c.get("/__scheduled?cron=*+*+*+*+*", None).status, 200);
    let started = std::time::Instant::now();
    while !stack
        .events(Some("cron.unknown_schedule"))
        .iter()
        .any(|e| e["cron"] == "* * * * *")
    {
        if started.elapsed() > std::time::Duration::from_secs(5) {
            stack.keep_state();
            panic!(
                "unknown schedule not logged; state kept in {}",
                stack.state_dir.display()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
