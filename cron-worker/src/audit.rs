//! `audit_ledger`: the ledger auditor on a schedule (`shared::audit`). It only reads: one D1
//! batch runs every check, `examined` is the ledger's row count, `changed` is always 0, and the
//! report goes into `cron_runs.detail`. Violations are findings, not failures: `errors` counts
//! only an audit that could not run, and violations make the run's log line an error-level
//! `audit.violations` with their count.

use crate::jobs::JobCtx;
use crate::runner::{Budget, Summary};
use shared::audit::{self, DEFAULT_STUCK_SECS};
use shared::edge::number;

/// Most bytes of report stored per run; the whole report is one `GET /admin/audit` away, and
/// `cron_runs` keeps a month of runs every five minutes.
const MAX_DETAIL_BYTES: usize = 64 * 1024;

pub async fn audit_ledger(ctx: &JobCtx<'_>, budget: Budget, summary: &mut Summary) {
    // The jobs before it in the schedule may have spent the budget: the next run audits.
    if !budget.time_left() {
        summary.stopped_early = true;
        return;
    }
    let stuck_secs =
        number(ctx.env, "AUDIT_STUCK_SECS", DEFAULT_STUCK_SECS).unwrap_or(DEFAULT_STUCK_SECS);
    match audit::run(ctx.db, ctx.now, stuck_secs).await {
        Ok(report) => {
            summary.examined = u64::try_from(report.ledger_rows).unwrap_or(0);
            summary.changed = 0;
            summary.violations = u64::try_from(report.violation_count()).unwrap_or(u64::MAX);
            summary.detail = Some(report.to_json_capped(MAX_DETAIL_BYTES));
        }
        Err(e) => summary.failed(&e),
    }
}
