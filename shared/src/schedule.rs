//! Which jobs each cron expression runs. Two triggers in all (the free plan allows five per
//! account); `cron-worker/wrangler.toml`'s `triggers.crons` must list exactly these expressions
//! (the config test checks it).

/// How long a schedule's run may take: runs on intervals under an hour get 30 s of wall time,
/// hourly or longer 15 minutes; each gets a budget inside that.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cadence {
    Frequent,
    Daily,
}

pub const JOBS: [&str; 8] = [
    "expire_orders",
    "expire_subscriptions",
    "reconcile_tasks",
    "reconcile_events",
    "clear_kv_keys",
    "audit_ledger",
    "clean_r2_cache",
    "retention",
];

pub const SCHEDULES: [(&str, Cadence, &[&str]); 2] = [
    (
        "*/5 * * * *",
        Cadence::Frequent,
        // The auditor runs last, so it sees what the recovery jobs left.
        &[
            "expire_orders",
            "expire_subscriptions",
            "reconcile_tasks",
            "reconcile_events",
            "clear_kv_keys",
            "audit_ledger",
        ],
    ),
    (
        "17 3 * * *",
        Cadence::Daily,
        &["clean_r2_cache", "retention"],
    ),
];

pub fn for_schedule(cron: &str) -> Option<(Cadence, &'static [&'static str])> {
    SCHEDULES
        .iter()
        .find(|(c, _, _)| *c == cron)
        .map(|(_, cadence, jobs)| (*cadence, *jobs))
}

/// The cadence a job runs at (its manual runs get the same budget).
pub fn cadence_of(job: &str) -> Option<Cadence> {
    SCHEDULES
        .iter()
        .find(|(_, _, jobs)| jobs.contains(&job))
        .map(|(_, cadence, _)| *cadence)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_job_has_exactly_one_schedule() {
        for job in JOBS {
            let n = SCHEDULES
                .iter()
                .filter(|(_, _, jobs)| jobs.contains(&job))
                .count();
            assert_eq!(n, 1, "{job}");
        }
        assert_eq!(for_schedule("*/5 * * * *").map(|s| s.1.len()), Some(6));
        assert_eq!(
            for_schedule("*/5 * * * *").and_then(|s| s.1.last().copied()),
            Some("audit_ledger")
        );
        assert_eq!(cadence_of("audit_ledger"), Some(Cadence::Frequent));
        assert_eq!(cadence_of("clean_r2_cache"), Some(Cadence::Daily));
        assert_eq!(for_schedule("* * * * *"), None);
    }
}
