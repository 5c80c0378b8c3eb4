//! Cron scaling: one stack per size, seeded before it starts.

use super::*;

pub(super) fn seed_cron(s: &Seed, factor: u64) -> std::result::Result<(), String> {
    let (orders, objects) = (BASE_ORDERS * factor, BASE_CACHE_OBJECTS * factor);
    s.d1(&format!(
        "INSERT INTO users (id, email, name, credits, created_at, updated_at) VALUES ('44444444-4444-4444-8444-444444444444', 'bench@e2e.test', 'Bench', 0, 0, 0);
         INSERT INTO orders (id, user_id, amount, currency, status, payment_provider, credits, product_id, created_at, updated_at)
           WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {orders})
           SELECT 'ord_bench_' || i, '44444444-4444-4444-8444-444444444444', 499, 'USD', 'pending', 'creem', 50, 'pack_starter',
                  CAST(strftime('%s','now') AS INTEGER) - 7200, 0 FROM n;"
    ))?;
    let png = sim::result_png("cached", 0);
    let old: Vec<(String, Vec<u8>)> = (0..objects)
        .map(|i| (format!("cache/bench/old-{i}.png"), png.clone()))
        .collect();
    s.r2(&old, "image/png")
}

pub(super) fn run_job(stack: &Stack, job: &str) -> Result<(u64, u64)> {
    let c = stack.client();
    let (mut changed, mut ms) = (0, 0);
    for _ in 0..20 {
        let r = c.post_json(&format!("/admin/cron/{job}"), Some(ADMIN_TOKEN), &json!({}));
        if r.status != 200 {
            return Err(format!("{job}: {} {}", r.status, r.text()));
        }
        let v = r.json();
        changed += v["summary"]["changed"].as_u64().unwrap_or(0);
        ms += v["ms"].as_u64().unwrap_or(0);
        if v["summary"]["errors"].as_u64().unwrap_or(0) > 0 {
            return Err(format!("{job} failed: {v}"));
        }
        if v["summary"]["stopped_early"] == false {
            return Ok((changed, ms));
        }
    }
    Err(format!("{job} did not finish in 20 runs"))
}

pub(super) fn cron_scaling() -> Result<Value> {
    let mut rows = Vec::new();
    for factor in [1u64, 10, 100] {
        eprintln!("bench: cron scaling at {factor}x");
        let mut options = StackOptions::default();
        for (k, v) in [
            ("CRON_MAX_ITEMS", "10000000"),
            ("CRON_BUDGET_MS", "25000"),
            ("CACHE_MAX_AGE_SECS", &CACHE_MAX_AGE_SECS.to_string()),
        ] {
            options.vars.insert(k.to_owned(), v.to_owned());
        }
        options.seed = Some((move |s: &Seed| seed_cron(s, factor)).into());
        let stack = Stack::start(options)?;
        // the seeded objects (uploaded before the stack started) must be older than the cache age;
        // the cleaner compares whole seconds
        std::thread::sleep(Duration::from_secs(CACHE_MAX_AGE_SECS + 2));
        for (job, items) in [
            ("expire_orders", BASE_ORDERS * factor),
            ("clean_r2_cache", BASE_CACHE_OBJECTS * factor),
        ] {
            let (changed, ms) = run_job(&stack, job)?;
            if changed != items {
                return Err(format!(
                    "{job} at {factor}x changed {changed} of {items} seeded items"
                ));
            }
            rows.push(json!({"job": job, "factor": factor, "items": items, "changed": changed, "ms": ms,
                "us_per_item": per(ms as f64 * 1000.0, usize::try_from(changed).unwrap_or(0), job)?}));
        }
    }
    Ok(Value::Array(rows))
}
