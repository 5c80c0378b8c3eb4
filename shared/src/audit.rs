//! The ledger auditor: the money invariants, checked over D1, each violation reported with the
//! rows involved. Run by the cron job `audit_ledger`, by `GET /admin/audit` and by
//! `cargo xtask admin audit`; a healthy system reports none.
//!
//! Invariants (the conventions of [`crate::ledger`] and [`crate::payments`]):
//!
//! - Every check is one `SELECT` of the violating rows as `subject` (TEXT: the order, task,
//!   grant, clawback or event) and `detail` (TEXT: a JSON object naming the rows and amounts
//!   involved), bounded by a final `LIMIT 100` so a badly broken ledger still answers quickly.
//! - A check binds nothing but `?1` = now (unix seconds) and `?2` = how long something may stay
//!   unfinished before it counts as stuck (seconds); [`Check::stmt`] binds exactly the
//!   parameters a check uses, since D1 refuses a statement bound with more than it has.
//! - Checks only read; all of them (and the ledger row count) run in one D1 batch, which is one
//!   transaction, so they see one consistent state. Every write they check is made in one batch
//!   with the status it belongs to (a task's settlement with its `completed`, an order's grant
//!   with its `completed`, a clawback with its `refunded`), so no in-flight state is a violation.
//! - Each check walks an index: orders and tasks by status, events by (status, type) or
//!   (status, received_at), ledger rows by (entity_type, entity_id), allocations by grant.
//!   `one_provider_submission` has no index on its column and scans `ai_tasks`. The refund
//!   checks also scan their own intermediate results (refund events grouped per payment), never
//!   a table.
//! - Refunds claw back proportionally (`payments::Share`): the refund checks recompute, from the
//!   stored refund events, the clawback each grant of a refunded payment owes, and judge a
//!   payment only once none of its refund events is still `received`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::sql::{Param, Stmt};

/// One invariant and the SQL that finds its violations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub description: &'static str,
    pub sql: &'static str,
}

/// Most violations a check reports per run (its SQL ends with `LIMIT 100`).
pub const MAX_VIOLATIONS_PER_CHECK: usize = 100;

/// The default for "stuck": one hour.
pub const DEFAULT_STUCK_SECS: i64 = 3600;
/// What `stuck_secs` may be: a minute to a week.
pub const STUCK_SECS_RANGE: std::ops::RangeInclusive<i64> = 60..=604_800;

/// The payments settled refunds name, as `payments::refunded_share` reads them, for the two
/// refund checks: a CTE `payments` with one row per payment (`payment`: the Creem transaction,
/// else `'order:' || ` Creem's order, as `payments::subject_lookups` keys it) holding its keys
/// (`tx`, `provider_order`, `checkout`), `refunded` (the larger of the newest cumulative
/// `refunded_amount` and the sum of `refund_amount` over distinct refunds in the payment's
/// currency), `paid` (`amount_paid`, else `amount`), `has_amount`, and `pending`: how many of its
/// refund events are still `received` (such a payment is in flight and not judged: the consumer
/// counts received refunds too, and `no_event_stuck` reports one that stays). The payload is read
/// only where it is valid JSON, so a broken payload cannot fail the audit.
macro_rules! refunded_payments {
    () => {
        "WITH refund_events AS (
  SELECT e.id AS event_row, e.event_id AS event_id, e.status AS status,
         CASE WHEN json_valid(e.payload) THEN e.payload END AS p
  FROM webhook_events e
  WHERE e.status IN ('applied', 'received') AND e.event_type = 'refund.created'),
refunds AS (
  SELECT event_row, event_id, status,
         COALESCE(json_extract(p, '$.object.transaction.id'),
                  CASE WHEN json_type(p, '$.object.transaction') = 'text' THEN json_extract(p, '$.object.transaction') END) AS tx,
         COALESCE(json_extract(p, '$.object.order.id'),
                  CASE WHEN json_type(p, '$.object.order') = 'text' THEN json_extract(p, '$.object.order') END,
                  json_extract(p, '$.object.transaction.order.id'),
                  CASE WHEN json_type(p, '$.object.transaction.order') = 'text' THEN json_extract(p, '$.object.transaction.order') END) AS provider_order,
         COALESCE(json_extract(p, '$.object.checkout.id'),
                  CASE WHEN json_type(p, '$.object.checkout') = 'text' THEN json_extract(p, '$.object.checkout') END) AS checkout,
         CASE WHEN json_type(p, '$.object.id') = 'text' AND json_extract(p, '$.object.id') != ''
              THEN json_extract(p, '$.object.id') ELSE event_id END AS refund_id,
         CASE WHEN json_type(p, '$.object.refund_amount') = 'integer'
                   AND (json_type(p, '$.object.refund_currency') IS NOT 'text'
                        OR json_type(p, '$.object.transaction.currency') IS NOT 'text'
                        OR upper(json_extract(p, '$.object.refund_currency')) = upper(json_extract(p, '$.object.transaction.currency')))
              THEN json_extract(p, '$.object.refund_amount') END AS refund_amount,
         CASE WHEN json_type(p, '$.object.transaction.refunded_amount') = 'integer'
              THEN json_extract(p, '$.object.transaction.refunded_amount') END AS refunded_total,
         COALESCE(CASE WHEN json_type(p, '$.object.transaction.amount_paid') = 'integer'
                       THEN json_extract(p, '$.object.transaction.amount_paid') END,
                  CASE WHEN json_type(p, '$.object.transaction.amount') = 'integer'
                       THEN json_extract(p, '$.object.transaction.amount') END) AS paid
  FROM refund_events),
per_refund AS (
  SELECT COALESCE(tx, 'order:' || provider_order) AS payment, refund_id,
         MAX(tx) AS tx, MAX(provider_order) AS provider_order, MAX(checkout) AS checkout,
         MAX(refund_amount) AS refund_amount, MAX(refunded_total) AS refunded_total, MAX(paid) AS paid,
         SUM(status = 'received') AS pending, MIN(event_row) AS event_row, MIN(event_id) AS event_id
  FROM refunds
  WHERE COALESCE(tx, provider_order) IS NOT NULL
  GROUP BY 1, 2),
payments AS (
  SELECT payment, MAX(tx) AS tx, MAX(provider_order) AS provider_order, MAX(checkout) AS checkout,
         SUM(pending) AS pending, MIN(event_row) AS event_row, MIN(event_id) AS event_id, MAX(paid) AS paid,
         MAX(COALESCE(MAX(refunded_total), 0), COALESCE(SUM(refund_amount), 0)) AS refunded,
         COUNT(refund_amount) + COUNT(refunded_total) > 0 AS has_amount
  FROM per_refund
  GROUP BY payment)"
    };
}

/// The clawback a payment `p` of the `payments` CTE owes a grant of `$grant` credits, as
/// `payments::Share::of` computes it: `round(grant × refunded / paid)`, half up, at most the
/// grant; the whole grant when the refunds say no amount or nothing paid (refunds applied before
/// clawbacks were proportional).
macro_rules! clawback_sql {
    ($grant:literal) => {
        concat!(
            "CASE WHEN p.has_amount = 0 OR p.paid IS NULL OR p.paid <= 0 THEN ",
            $grant,
            " ELSE MIN(",
            $grant,
            ", (2 * ",
            $grant,
            " * MIN(p.refunded, p.paid) + p.paid) / (2 * p.paid)) END"
        )
    };
}

/// Every check, in report order.
pub const CHECKS: [Check; 10] = [
    Check {
        name: "completed_pack_orders_granted",
        description: "every completed pack order has exactly one purchase grant of its credits",
        sql: "SELECT o.id AS subject,
       json_object('order_id', o.id, 'user_id', o.user_id, 'credits', o.credits,
                   'purchase_rows', json((SELECT json_group_array(json_object('id', g.id, 'amount', g.amount))
                                          FROM credit_records g
                                          WHERE g.entity_type = 'order' AND g.entity_id = o.id AND g.type = 'purchase'))) AS detail
FROM orders o
WHERE o.status = 'completed' AND o.product_kind = 'pack'
  AND (SELECT COUNT(*) = 1 AND SUM(g.amount) = o.credits
       FROM credit_records g
       WHERE g.entity_type = 'order' AND g.entity_id = o.id AND g.type = 'purchase') IS NOT 1
LIMIT 100",
    },
    Check {
        name: "refunded_orders_clawed_back",
        description: "every pack order a settled refund names, and every refunded one, has exactly one clawback of the refunded share of its grant (round(grant × refunded / paid), at most the grant; the whole grant for a refunded order no refund event names)",
        sql: concat!(
            refunded_payments!(),
            ",
named AS (
  SELECT o.id AS order_id, p.payment AS payment
  FROM payments p
  CROSS JOIN orders o ON o.provider_transaction_id = p.tx OR o.provider_order_id = p.provider_order OR o.payment_id = p.checkout
  UNION
  SELECT o.id, NULL FROM orders o WHERE o.status = 'refunded'),
checked AS (
  SELECT o.id AS order_id, o.user_id AS user_id, o.status AS status, g.id AS grant_id, g.amount AS amount,
         p.payment AS payment, p.event_row AS event_row, p.event_id AS event_id, p.refunded AS refunded, p.paid AS paid,
         CASE WHEN p.payment IS NULL THEN g.amount ELSE ",
            clawback_sql!("g.amount"),
            " END AS expected
  FROM (SELECT order_id, MAX(payment) AS payment FROM named GROUP BY order_id) k
  JOIN orders o ON o.id = k.order_id
  CROSS JOIN credit_records g ON g.entity_type = 'order' AND g.entity_id = o.id AND g.type = 'purchase'
  LEFT JOIN payments p ON p.payment = k.payment
  WHERE COALESCE(p.pending, 0) = 0)
SELECT x.order_id AS subject,
       json_object('order_id', x.order_id, 'user_id', x.user_id, 'status', x.status,
                   'payment', x.payment, 'event_row', x.event_row, 'event_id', x.event_id,
                   'refunded', x.refunded, 'paid', x.paid,
                   'grant', json_object('id', x.grant_id, 'amount', x.amount),
                   'expected_clawback', -x.expected,
                   'clawback_rows', json((SELECT json_group_array(json_object('id', r.id, 'amount', r.amount))
                                          FROM credit_records r
                                          WHERE r.entity_type = 'order' AND r.entity_id = x.order_id AND r.type = 'clawback'))) AS detail
FROM checked x
WHERE (SELECT COUNT(*) = (x.expected > 0) AND COALESCE(SUM(r.amount), 0) = -x.expected
       FROM credit_records r
       WHERE r.entity_type = 'order' AND r.entity_id = x.order_id AND r.type = 'clawback') IS NOT 1
LIMIT 100"
        ),
    },
    Check {
        name: "refunded_payments_clawed_back",
        description: "every subscription payment a settled refund names that granted a period has exactly one clawback of the refunded share of that grant (round(grant × refunded / paid), at most the grant)",
        sql: concat!(
            refunded_payments!(),
            ",
checked AS (
  SELECT g.entity_id AS entity_id, g.id AS grant_id, g.user_id AS user_id, g.amount AS amount,
         p.tx AS tx, p.provider_order AS provider_order, p.event_row AS event_row, p.event_id AS event_id,
         p.refunded AS refunded, p.paid AS paid, ",
            clawback_sql!("g.amount"),
            " AS expected
  FROM payments p
  CROSS JOIN credit_records g ON g.entity_type = 'subscription_payment' AND g.type = 'subscription'
                             AND g.entity_id IN (p.tx, 'order:' || p.provider_order)
  WHERE p.pending = 0)
SELECT x.entity_id AS subject,
       json_object('payment', x.entity_id, 'transaction_id', x.tx, 'provider_order_id', x.provider_order,
                   'event_row', x.event_row, 'event_id', x.event_id, 'user_id', x.user_id,
                   'refunded', x.refunded, 'paid', x.paid,
                   'grant', json_object('id', x.grant_id, 'amount', x.amount),
                   'expected_clawback', -x.expected,
                   'clawback_rows', json((SELECT json_group_array(json_object('id', r.id, 'amount', r.amount))
                                          FROM credit_records r
                                          WHERE r.entity_type = 'subscription_payment' AND r.entity_id = x.entity_id
                                            AND r.type = 'clawback'))) AS detail
FROM checked x
WHERE (SELECT COUNT(*) = (x.expected > 0) AND COALESCE(SUM(r.amount), 0) = -x.expected
       FROM credit_records r
       WHERE r.entity_type = 'subscription_payment' AND r.entity_id = x.entity_id AND r.type = 'clawback') IS NOT 1
LIMIT 100"
        ),
    },
    Check {
        name: "completed_tasks_settled",
        description: "every completed task has one reserve (-cost), one release (+cost), one consumption (-cost), and allocations of at most its cost",
        // One lookup of the task's ledger rows answers all three: SUM of a boolean counts rows.
        sql: "SELECT t.id AS subject,
       json_object('task_id', t.id, 'user_id', t.user_id, 'cost', t.cost,
                   'ledger_rows', json((SELECT json_group_array(json_object('id', r.id, 'type', r.type, 'amount', r.amount))
                                        FROM credit_records r WHERE r.entity_type = 'task' AND r.entity_id = t.id)),
                   'allocated', (SELECT COALESCE(SUM(c.amount), 0) FROM credit_consumptions c
                                 WHERE c.entity_type = 'task' AND c.entity_id = t.id)) AS detail
FROM ai_tasks t
WHERE t.status = 'completed'
  AND ((SELECT SUM(r.type = 'reserve') = 1 AND SUM(r.type = 'reserve' AND r.amount = -t.cost) = 1
           AND SUM(r.type = 'release') = 1 AND SUM(r.type = 'release' AND r.amount = t.cost) = 1
           AND SUM(r.type = 'consumption') = 1 AND SUM(r.type = 'consumption' AND r.amount = -t.cost) = 1
        FROM credit_records r WHERE r.entity_type = 'task' AND r.entity_id = t.id) IS NOT 1
       OR (SELECT SUM(c.amount) FROM credit_consumptions c
           WHERE c.entity_type = 'task' AND c.entity_id = t.id) > t.cost)
LIMIT 100",
    },
    Check {
        name: "failed_tasks_released",
        description: "every failed task has one reserve (-cost) and one release (+cost), and no consumption or allocation",
        sql: "SELECT t.id AS subject,
       json_object('task_id', t.id, 'user_id', t.user_id, 'cost', t.cost, 'failure_reason', t.failure_reason,
                   'ledger_rows', json((SELECT json_group_array(json_object('id', r.id, 'type', r.type, 'amount', r.amount))
                                        FROM credit_records r WHERE r.entity_type = 'task' AND r.entity_id = t.id)),
                   'allocated', (SELECT COALESCE(SUM(c.amount), 0) FROM credit_consumptions c
                                 WHERE c.entity_type = 'task' AND c.entity_id = t.id)) AS detail
FROM ai_tasks t
WHERE t.status = 'failed'
  AND ((SELECT SUM(r.type = 'reserve') = 1 AND SUM(r.type = 'reserve' AND r.amount = -t.cost) = 1
           AND SUM(r.type = 'release') = 1 AND SUM(r.type = 'release' AND r.amount = t.cost) = 1
           AND SUM(r.type = 'consumption') = 0
        FROM credit_records r WHERE r.entity_type = 'task' AND r.entity_id = t.id) IS NOT 1
       OR EXISTS (SELECT 1 FROM credit_consumptions c WHERE c.entity_type = 'task' AND c.entity_id = t.id))
LIMIT 100",
    },
    Check {
        name: "no_hold_outlives_its_task",
        description: "no live task (pending, submitted, processing) is past its deadline by more than the stuck threshold: the reconciler should have failed it and released its hold",
        sql: "SELECT t.id AS subject,
       json_object('task_id', t.id, 'user_id', t.user_id, 'status', t.status, 'cost', t.cost,
                   'deadline_at', t.deadline_at, 'overdue_secs', ?1 - t.deadline_at,
                   'hold', (SELECT r.amount FROM credit_records r
                            WHERE r.entity_type = 'task' AND r.entity_id = t.id AND r.type = 'reserve')) AS detail
FROM ai_tasks t
WHERE t.completed_at IS NULL AND t.status IN ('pending','submitted','processing') AND t.deadline_at < ?1 - ?2
LIMIT 100",
    },
    Check {
        name: "grants_not_overdrawn",
        description: "no grant (purchase, gift, subscription) backs allocations summing to more than its amount",
        sql: "SELECT g.id AS subject,
       json_object('grant_id', g.id, 'user_id', g.user_id, 'type', g.type, 'amount', g.amount,
                   'drawn', (SELECT SUM(c.amount) FROM credit_consumptions c WHERE c.from_record_id = g.id),
                   'allocations', json((SELECT json_group_array(json_object('id', a.id, 'task_id', a.entity_id, 'amount', a.amount))
                                        FROM (SELECT c.id, c.entity_id, c.amount FROM credit_consumptions c
                                              WHERE c.from_record_id = g.id LIMIT 20) a))) AS detail
FROM credit_records g
WHERE g.type IN ('purchase','gift','subscription')
  AND (SELECT SUM(c.amount) FROM credit_consumptions c WHERE c.from_record_id = g.id) > g.amount
LIMIT 100",
    },
    Check {
        name: "clawbacks_match_grants",
        description: "every clawback is negative and takes back at most a grant of the same entity",
        sql: "SELECT c.id AS subject,
       json_object('clawback_id', c.id, 'user_id', c.user_id, 'amount', c.amount,
                   'entity_type', c.entity_type, 'entity_id', c.entity_id,
                   'grants', json((SELECT json_group_array(json_object('id', g.id, 'type', g.type, 'amount', g.amount))
                                   FROM credit_records g
                                   WHERE g.entity_type = c.entity_type AND g.entity_id = c.entity_id
                                     AND g.type IN ('purchase','gift','subscription')))) AS detail
FROM credit_records c
WHERE c.type = 'clawback'
  AND (c.amount >= 0
       OR NOT EXISTS (SELECT 1 FROM credit_records g
                      WHERE g.entity_type = c.entity_type AND g.entity_id = c.entity_id
                        AND g.type IN ('purchase','gift','subscription') AND -c.amount <= g.amount))
LIMIT 100",
    },
    Check {
        name: "no_event_stuck",
        description: "no webhook event has stayed 'received' (not applied, ignored or rejected) longer than the stuck threshold",
        sql: "SELECT e.id AS subject,
       json_object('event_row', e.id, 'provider', e.provider, 'event_id', e.event_id, 'event_type', e.event_type,
                   'received_at', e.received_at, 'age_secs', ?1 - e.received_at, 'error', e.error) AS detail
FROM webhook_events e
WHERE e.status = 'received' AND e.received_at < ?1 - ?2
LIMIT 100",
    },
    Check {
        name: "one_provider_submission",
        description: "no task was created at the provider more than once",
        sql: "SELECT t.id AS subject,
       json_object('task_id', t.id, 'user_id', t.user_id, 'status', t.status,
                   'provider_submissions', t.provider_submissions,
                   'external_provider', t.external_provider, 'external_task_id', t.external_task_id) AS detail
FROM ai_tasks t
WHERE t.provider_submissions > 1
LIMIT 100",
    },
];

/// How many ledger rows there are (the size of what was audited).
pub const LEDGER_ROWS_SQL: &str = "SELECT COUNT(*) AS n FROM credit_records";

/// The `?N` placeholders of a statement, in order of appearance (`None` for a bare `?`).
fn placeholders(sql: &str) -> Vec<Option<usize>> {
    let bytes = sql.as_bytes();
    let mut out = Vec::new();
    for (i, b) in bytes.iter().enumerate() {
        if *b != b'?' {
            continue;
        }
        let digits: String = bytes[i + 1..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .map(|c| char::from(*c))
            .collect();
        out.push(digits.parse().ok());
    }
    out
}

impl Check {
    /// How many parameters the statement has: its highest `?N`.
    pub fn arity(&self) -> usize {
        placeholders(self.sql)
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(0)
    }

    /// The check bound to `now` and `stuck_secs`: exactly as many parameters as it has.
    pub fn stmt(&self, now: i64, stuck_secs: i64) -> Stmt {
        let params: Vec<Param> = [now, stuck_secs]
            .into_iter()
            .take(self.arity())
            .map(Param::Int)
            .collect();
        Stmt::new(self.sql, params)
    }
}

/// Every check, then the ledger row count: the one batch an audit runs.
pub fn statements(now: i64, stuck_secs: i64) -> Vec<Stmt> {
    CHECKS
        .iter()
        .map(|c| c.stmt(now, stuck_secs))
        .chain([Stmt::new(LEDGER_ROWS_SQL, vec![])])
        .collect()
}

/// `stuck_secs` from a query string value: absent is the default, else an integer in
/// [`STUCK_SECS_RANGE`].
pub fn parse_stuck_secs(raw: Option<&str>) -> Result<i64, String> {
    let Some(raw) = raw else {
        return Ok(DEFAULT_STUCK_SECS);
    };
    raw.trim()
        .parse::<i64>()
        .ok()
        .filter(|n| STUCK_SECS_RANGE.contains(n))
        .ok_or_else(|| {
            format!(
                "stuck_secs must be an integer from {} to {}",
                STUCK_SECS_RANGE.start(),
                STUCK_SECS_RANGE.end()
            )
        })
}

/// One row a check returned.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Row {
    pub subject: Option<String>,
    pub detail: Option<String>,
}

/// A check's outcome in a report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckResult {
    pub name: &'static str,
    pub description: &'static str,
    pub violations: usize,
    /// The check stopped at [`MAX_VIOLATIONS_PER_CHECK`]: there may be more.
    pub capped: bool,
}

/// One violating subject and the rows involved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Violation {
    pub check: &'static str,
    pub subject: String,
    pub detail: Value,
}

/// What an audit found. `ok` is true when no check found anything.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub ok: bool,
    pub checks: Vec<CheckResult>,
    pub violations: Vec<Violation>,
    /// Rows in `credit_records` when the audit ran.
    pub ledger_rows: i64,
    /// How long the audit took, in milliseconds.
    pub ms: u64,
}

impl Report {
    /// The report from each check's rows, in the order given.
    pub fn build(per_check: Vec<(&Check, Vec<Row>)>, ledger_rows: i64, ms: u64) -> Report {
        let mut checks = Vec::with_capacity(per_check.len());
        let mut violations = Vec::new();
        for (check, rows) in per_check {
            checks.push(CheckResult {
                name: check.name,
                description: check.description,
                violations: rows.len(),
                capped: rows.len() >= MAX_VIOLATIONS_PER_CHECK,
            });
            violations.extend(rows.into_iter().map(|r| Violation {
                check: check.name,
                subject: r.subject.unwrap_or_default(),
                // detail is JSON built in SQL; should it ever not parse, keep the text
                detail: r.detail.map_or(Value::Null, |d| {
                    serde_json::from_str(&d).unwrap_or(Value::String(d))
                }),
            }));
        }
        Report {
            ok: violations.is_empty(),
            checks,
            violations,
            ledger_rows,
            ms,
        }
    }

    /// How many violations were found (each check counts at most
    /// [`MAX_VIOLATIONS_PER_CHECK`]).
    pub fn violation_count(&self) -> usize {
        self.violations.len()
    }

    /// The report as JSON of at most about `max_bytes`, for storing (`cron_runs.detail`): when
    /// the whole report is larger, violations are kept in order while they fit and the rest
    /// are counted in `violations_omitted` (the per-check counts always stay).
    pub fn to_json_capped(&self, max_bytes: usize) -> String {
        let mut value = serde_json::to_value(self).unwrap_or(Value::Null);
        let whole = value.to_string();
        if whole.len() <= max_bytes {
            return whole;
        }
        let all = value
            .get_mut("violations")
            .and_then(Value::as_array_mut)
            .map(std::mem::take)
            .unwrap_or_default();
        let mut used = value.to_string().len() + "\"violations_omitted\":,".len() + 20;
        let mut kept = Vec::new();
        for v in all.iter() {
            let size = v.to_string().len() + 1;
            if used + size > max_bytes {
                break;
            }
            used += size;
            kept.push(v.clone());
        }
        let omitted = all.len() - kept.len();
        value["violations"] = Value::Array(kept);
        value["violations_omitted"] = omitted.into();
        value.to_string()
    }
}

/// Runs every check and the ledger count in one D1 batch (one transaction, one round trip).
#[cfg(feature = "edge")]
pub async fn run(
    db: &crate::edge::Db,
    now: i64,
    stuck_secs: i64,
) -> Result<Report, crate::edge::IoError> {
    use crate::edge::{now_ms, rows, IoError};

    #[derive(Deserialize)]
    struct Count {
        n: i64,
    }

    let started = now_ms();
    let stmts = statements(now, stuck_secs);
    let results = db.batch("ledger audit", &stmts).await?;
    if results.len() != stmts.len() {
        return Err(IoError {
            step: "ledger audit".into(),
            cause: format!("{} results for {} statements", results.len(), stmts.len()),
        });
    }
    let mut per_check = Vec::with_capacity(CHECKS.len());
    for (check, result) in CHECKS.iter().zip(&results) {
        per_check.push((check, rows::<Row>(result)?));
    }
    let ledger_rows = match results.last() {
        Some(r) => rows::<Count>(r)?.first().map_or(0, |c| c.n),
        None => 0,
    };
    Ok(Report::build(
        per_check,
        ledger_rows,
        now_ms().saturating_sub(started),
    ))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::ids::{Credits, TaskId, UserId};
    use crate::ledger::{self, EntryKind, NewGrant, NewTaskHold};
    use rusqlite::{params, params_from_iter, Connection};
    use std::collections::{BTreeMap, BTreeSet};

    const NOW: i64 = 1_000_000;
    const STUCK: i64 = 3600;

    // -----------------------------------------------------------------------------------------
    // The table itself
    // -----------------------------------------------------------------------------------------

    #[test]
    fn every_check_binds_only_now_and_the_threshold_and_is_bounded() {
        let mut names = BTreeSet::new();
        for c in CHECKS {
            assert!(names.insert(c.name), "{} is named twice", c.name);
            assert!(!c.description.is_empty(), "{}", c.name);
            for p in placeholders(c.sql) {
                assert!(
                    matches!(p, Some(1 | 2)),
                    "{}: only ?1 and ?2 may appear, found {p:?}",
                    c.name
                );
            }
            assert!(
                c.sql.trim_end().ends_with("LIMIT 100"),
                "{} ends with LIMIT 100",
                c.name
            );
            assert!(c.sql.contains(" AS subject") && c.sql.contains(" AS detail"));
            assert!(c.sql.trim_start().starts_with("SELECT") || c.sql.starts_with("WITH"));
            let stmt = c.stmt(NOW, STUCK);
            assert_eq!(stmt.params.len(), c.arity(), "{}", c.name);
            assert_eq!(
                stmt.params,
                [Param::Int(NOW), Param::Int(STUCK)][..c.arity()].to_vec()
            );
        }
        assert_eq!(MAX_VIOLATIONS_PER_CHECK, 100);
        let all = statements(NOW, STUCK);
        assert_eq!(all.len(), CHECKS.len() + 1);
        assert_eq!(all[CHECKS.len()].sql, LEDGER_ROWS_SQL);
        // the thresholds are where the time-bound checks say they are
        let stuck = CHECKS.iter().find(|c| c.name == "no_event_stuck").unwrap();
        assert_eq!(stuck.arity(), 2);
        let plain = CHECKS
            .iter()
            .find(|c| c.name == "completed_tasks_settled")
            .unwrap();
        assert_eq!(plain.stmt(NOW, STUCK).params, vec![]);
        assert_eq!(
            placeholders("a ?12 b ? c ?1"),
            vec![Some(12), None, Some(1)]
        );
    }

    #[test]
    fn stuck_secs_is_a_bounded_integer() {
        assert_eq!(parse_stuck_secs(None), Ok(3600));
        assert_eq!(parse_stuck_secs(Some("60")), Ok(60));
        assert_eq!(parse_stuck_secs(Some("604800")), Ok(604_800));
        for bad in ["59", "604801", "-1", "1h", "", "1e3"] {
            assert!(parse_stuck_secs(Some(bad)).is_err(), "{bad}");
        }
    }

    fn row(subject: &str, detail: &str) -> Row {
        Row {
            subject: Some(subject.into()),
            detail: Some(detail.into()),
        }
    }

    #[test]
    fn a_report_lists_every_check_and_each_violation_with_its_rows() {
        let clean = Report::build(CHECKS.iter().map(|c| (c, vec![])).collect(), 42, 7);
        assert!(clean.ok);
        assert_eq!(clean.checks.len(), CHECKS.len());
        assert!(clean.checks.iter().all(|c| c.violations == 0 && !c.capped));
        assert_eq!((clean.ledger_rows, clean.ms), (42, 7));

        let many: Vec<Row> = (0..100).map(|i| row(&format!("e{i}"), "{}")).collect();
        let report = Report::build(
            vec![
                (
                    &CHECKS[0],
                    vec![row("ord_1", r#"{"order_id":"ord_1","purchase_rows":[]}"#)],
                ),
                (&CHECKS[1], vec![]),
                (&CHECKS[8], many),
                (
                    &CHECKS[9],
                    vec![Row {
                        subject: None,
                        detail: Some("not json".into()),
                    }],
                ),
            ],
            10,
            3,
        );
        assert!(!report.ok);
        assert_eq!(report.violation_count(), 102);
        assert_eq!(
            report
                .checks
                .iter()
                .map(|c| (c.name, c.violations, c.capped))
                .collect::<Vec<_>>(),
            vec![
                (CHECKS[0].name, 1, false),
                (CHECKS[1].name, 0, false),
                (CHECKS[8].name, 100, true),
                (CHECKS[9].name, 1, false),
            ]
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["ok"], false);
        assert_eq!(
            json["violations"][0],
            serde_json::json!({"check": CHECKS[0].name, "subject": "ord_1",
                               "detail": {"order_id": "ord_1", "purchase_rows": []}})
        );
        assert_eq!(json["checks"][0]["description"], CHECKS[0].description);
        assert_eq!(json["violations"][101]["subject"], "");
        assert_eq!(json["violations"][101]["detail"], "not json");
        assert_eq!(
            (json["ledger_rows"].as_i64(), json["ms"].as_u64()),
            (Some(10), Some(3))
        );

        // stored capped: per-check counts stay, violations are kept while they fit
        let whole = report.to_json_capped(1 << 20);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&whole).unwrap(),
            json
        );
        let small = report.to_json_capped(2_000);
        assert!(small.len() <= 2_000, "{}", small.len());
        let small: serde_json::Value = serde_json::from_str(&small).unwrap();
        let kept = small["violations"].as_array().unwrap().len();
        assert!(kept > 0 && kept < 102, "{kept}");
        assert_eq!(small["violations_omitted"], 102 - kept);
        assert_eq!(small["checks"], json["checks"]);
        assert_eq!(small["violations"][0], json["violations"][0]);
    }

    // -----------------------------------------------------------------------------------------
    // The SQL, on the real schema
    // -----------------------------------------------------------------------------------------

    /// An in-memory database with every migration applied in order, foreign keys on (as D1).
    pub(crate) fn db() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("PRAGMA foreign_keys = ON;").unwrap();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "sql"))
            .collect();
        files.sort();
        assert!(files.len() >= 5, "migrations found: {files:?}");
        for f in files {
            conn.execute_batch(&std::fs::read_to_string(&f).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        }
        conn
    }

    pub(crate) fn value(p: &Param) -> rusqlite::types::Value {
        match p {
            Param::Text(s) => rusqlite::types::Value::Text(s.clone()),
            Param::Int(n) => rusqlite::types::Value::Integer(*n),
            Param::Null => rusqlite::types::Value::Null,
        }
    }

    /// Runs one of the workers' statements as D1 would bind it; returns rows changed.
    pub(crate) fn exec(conn: &Connection, s: &Stmt) -> u64 {
        let mut st = conn
            .prepare(&s.sql)
            .unwrap_or_else(|e| panic!("{e}: {}", s.sql));
        assert_eq!(st.parameter_count(), s.params.len(), "{}", s.sql);
        let mut rows = st
            .query(params_from_iter(s.params.iter().map(value)))
            .unwrap();
        while rows.next().unwrap().is_some() {}
        drop(rows);
        conn.changes()
    }

    /// Runs the audit as `run` does, on SQLite: each check bound as it will be on D1.
    pub(crate) fn audit(conn: &Connection, now: i64, stuck: i64) -> Report {
        let per_check = CHECKS
            .iter()
            .map(|c| {
                let stmt = c.stmt(now, stuck);
                let mut st = conn
                    .prepare(&stmt.sql)
                    .unwrap_or_else(|e| panic!("{}: {e}", c.name));
                assert_eq!(st.parameter_count(), stmt.params.len(), "{}", c.name);
                assert_eq!(
                    st.column_names().collect::<Vec<_>>(),
                    vec!["subject", "detail"],
                    "{}",
                    c.name
                );
                let rows = st
                    .query_map(params_from_iter(stmt.params.iter().map(value)), |r| {
                        Ok(Row {
                            subject: r.get(0)?,
                            detail: r.get(1)?,
                        })
                    })
                    .unwrap()
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap_or_else(|e| panic!("{}: {e}", c.name));
                (c, rows)
            })
            .collect();
        let n: i64 = conn.query_row(LEDGER_ROWS_SQL, [], |r| r.get("n")).unwrap();
        Report::build(per_check, n, 0)
    }

    pub(crate) fn found(report: &Report) -> BTreeMap<&'static str, BTreeSet<String>> {
        let mut out: BTreeMap<&'static str, BTreeSet<String>> = BTreeMap::new();
        for v in &report.violations {
            out.entry(v.check).or_default().insert(v.subject.clone());
        }
        out
    }

    pub(crate) fn user(conn: &Connection, id: &str) {
        conn.execute(
            "INSERT INTO users (id, email, name) VALUES (?1, ?1 || '@audit.test', 'a')",
            [id],
        )
        .unwrap();
    }

    pub(crate) fn record(
        conn: &Connection,
        id: &str,
        amount: i64,
        kind: &str,
        entity: (&str, &str),
    ) {
        conn.execute(
            "INSERT INTO credit_records (id, user_id, amount, type, entity_type, entity_id, created_at)
             VALUES (?1, 'u', ?2, ?3, ?4, ?5, 0)",
            params![id, amount, kind, entity.0, entity.1],
        )
        .unwrap();
    }

    fn allocation(conn: &Connection, task: &str, grant: &str, amount: i64) {
        conn.execute(
            "INSERT INTO credit_consumptions (id, user_id, amount, from_record_id, entity_type, entity_id)
             VALUES (?1 || ':' || ?2, 'u', ?3, ?2, 'task', ?1)",
            params![task, grant, amount],
        )
        .unwrap();
    }

    fn task(conn: &Connection, id: &str, status: &str, cost: i64, deadline_at: i64) {
        conn.execute(
            "INSERT INTO ai_tasks (id, task_no, user_id, status, input_params, cost, deadline_at)
             VALUES (?1, 'no-' || ?1, 'u', ?2, '{}', ?3, ?4)",
            params![id, status, cost, deadline_at],
        )
        .unwrap();
    }

    /// A task's ledger rows: reserve, and optionally release and consumption, of `amounts`.
    fn task_rows(
        conn: &Connection,
        id: &str,
        reserve: Option<i64>,
        release: Option<i64>,
        consumption: Option<i64>,
    ) {
        for (kind, amount) in [
            ("reserve", reserve),
            ("release", release),
            ("consumption", consumption),
        ] {
            if let Some(a) = amount {
                record(conn, &format!("{kind}:{id}"), a, kind, ("task", id));
            }
        }
    }

    pub(crate) fn order(
        conn: &Connection,
        id: &str,
        status: &str,
        kind: Option<&str>,
        credits: i64,
    ) {
        conn.execute(
            "INSERT INTO orders (id, user_id, amount, status, credits, product_kind) VALUES (?1, 'u', 499, ?2, ?3, ?4)",
            params![id, status, credits, kind],
        )
        .unwrap();
    }

    pub(crate) fn event(
        conn: &Connection,
        id: &str,
        kind: &str,
        status: &str,
        payload: &str,
        received_at: i64,
    ) {
        conn.execute(
            "INSERT INTO webhook_events (id, provider, event_id, event_type, payload, status, received_at)
             VALUES (?1, 'creem', 'evt_' || ?1, ?2, ?3, ?4, ?5)",
            params![id, kind, payload, status, received_at],
        )
        .unwrap();
    }

    fn refund_payload(transaction: &serde_json::Value) -> String {
        serde_json::json!({"id": "evt", "eventType": "refund.created", "created_at": 1,
                           "object": {"object": "refund", "id": "re_1", "transaction": transaction}})
        .to_string()
    }

    /// A ledger written by the workers' own statements (`ledger::reserve_task`, `settle`,
    /// `fail_task`, `grant`), plus payment rows as the payment code writes them: the auditor
    /// finds nothing in it.
    #[test]
    fn a_ledger_the_workers_wrote_has_no_violations() {
        let conn = db();
        let u = UserId::new();
        user(&conn, &u.to_string());
        let us = u.to_string();
        exec(
            &conn,
            &ledger::grant(NewGrant {
                id: "gift:start".into(),
                user: &us,
                kind: EntryKind::Gift,
                amount: Credits(100),
                entity: ("admin_grant", "start"),
                expires_at: None,
                note: "start",
                now: NOW - 100,
            }),
        );
        let hold = |t: &TaskId, deadline_at: i64| {
            for s in ledger::reserve_task(NewTaskHold {
                task: t,
                task_no: &format!("no-{t}"),
                user: &u,
                model: "kie_4o",
                input_params: "{}",
                idempotency_key: None,
                cost: Credits(7),
                deadline_at,
                retry_of: None,
                now: NOW - 50,
            }) {
                assert_eq!(exec(&conn, &s), 1, "{}", s.sql);
            }
        };
        // completed and settled
        let done = TaskId::new();
        hold(&done, NOW + 900);
        conn.execute(
            "UPDATE ai_tasks SET status = 'completed', provider_submissions = 1 WHERE id = ?1",
            [done.to_string()],
        )
        .unwrap();
        for s in ledger::settle(&done, NOW) {
            assert!(exec(&conn, &s) >= 1, "{}", s.sql);
        }
        // failed and released
        let failed = TaskId::new();
        hold(&failed, NOW + 900);
        for s in ledger::fail_task(&failed, "provider refused", NOW) {
            assert_eq!(exec(&conn, &s), 1, "{}", s.sql);
        }
        // live within its deadline, and live past it by less than the threshold
        hold(&TaskId::new(), NOW + 900);
        hold(&TaskId::new(), NOW - STUCK + 1);

        // a pack order completed with its grant; a refunded one with grant and clawback; a
        // refunded one that never granted (the refund came first)
        user(&conn, "u");
        order(&conn, "ord_done", "completed", Some("pack"), 50);
        record(
            &conn,
            "purchase:ord_done",
            50,
            "purchase",
            ("order", "ord_done"),
        );
        order(&conn, "ord_refunded", "refunded", Some("pack"), 50);
        record(
            &conn,
            "purchase:ord_refunded",
            50,
            "purchase",
            ("order", "ord_refunded"),
        );
        record(
            &conn,
            "clawback:ord_refunded",
            -50,
            "clawback",
            ("order", "ord_refunded"),
        );
        order(&conn, "ord_refund_first", "refunded", Some("pack"), 50);
        order(&conn, "ord_plan", "completed", Some("plan"), 300);
        // a subscription payment granted, refunded and clawed back
        record(
            &conn,
            "subscription:tx_1",
            300,
            "subscription",
            ("subscription_payment", "tx_1"),
        );
        record(
            &conn,
            "clawback:tx_1",
            -300,
            "clawback",
            ("subscription_payment", "tx_1"),
        );
        event(
            &conn,
            "we_1",
            "refund.created",
            "applied",
            &refund_payload(&serde_json::json!({"id": "tx_1"})),
            NOW - 10,
        );
        // events handled, or received within the threshold
        event(
            &conn,
            "we_2",
            "checkout.completed",
            "applied",
            "{}",
            NOW - 10 * STUCK,
        );
        event(
            &conn,
            "we_3",
            "subscription.paid",
            "received",
            "{}",
            NOW - STUCK + 1,
        );

        let report = audit(&conn, NOW, STUCK);
        assert_eq!(found(&report), BTreeMap::new(), "{report:#?}");
        assert!(report.ok);
        assert_eq!(report.checks.len(), CHECKS.len());
        // gift, 4 reserves, release + consumption, release, 2 purchases, clawback, grant, clawback
        assert_eq!(report.ledger_rows, 13);
    }

    /// Every check finds exactly the rows that break it, next to rows that nearly do.
    #[test]
    fn each_check_finds_exactly_the_violating_rows() {
        let conn = db();
        user(&conn, "u");
        // grants to allocate from
        record(&conn, "g_big", 1_000, "gift", ("admin_grant", "big"));

        // completed_pack_orders_granted
        order(&conn, "o_pack_ok", "completed", Some("pack"), 50);
        record(
            &conn,
            "purchase:o_pack_ok",
            50,
            "purchase",
            ("order", "o_pack_ok"),
        );
        order(&conn, "o_pack_missing", "completed", Some("pack"), 50);
        order(&conn, "o_pack_wrong", "completed", Some("pack"), 50);
        record(
            &conn,
            "purchase:o_pack_wrong",
            40,
            "purchase",
            ("order", "o_pack_wrong"),
        );
        order(&conn, "o_plan", "completed", Some("plan"), 300);
        order(&conn, "o_pending", "pending", Some("pack"), 50);
        order(&conn, "o_before_0005", "completed", None, 50);

        // refunded_orders_clawed_back
        order(&conn, "o_ref_ok", "refunded", Some("pack"), 50);
        record(
            &conn,
            "purchase:o_ref_ok",
            50,
            "purchase",
            ("order", "o_ref_ok"),
        );
        record(
            &conn,
            "clawback:o_ref_ok",
            -50,
            "clawback",
            ("order", "o_ref_ok"),
        );
        order(&conn, "o_ref_missing", "refunded", Some("pack"), 50);
        record(
            &conn,
            "purchase:o_ref_missing",
            50,
            "purchase",
            ("order", "o_ref_missing"),
        );
        order(&conn, "o_ref_partial", "refunded", Some("pack"), 50);
        record(
            &conn,
            "purchase:o_ref_partial",
            50,
            "purchase",
            ("order", "o_ref_partial"),
        );
        record(
            &conn,
            "clawback:o_ref_partial",
            -20,
            "clawback",
            ("order", "o_ref_partial"),
        );
        order(&conn, "o_ref_never_granted", "refunded", Some("pack"), 50);

        // refunded_payments_clawed_back
        let tx = |id: &str| serde_json::json!({"id": id, "object": "transaction"});
        record(
            &conn,
            "sub:tx_ok",
            300,
            "subscription",
            ("subscription_payment", "tx_ok"),
        );
        record(
            &conn,
            "clawback:tx_ok",
            -300,
            "clawback",
            ("subscription_payment", "tx_ok"),
        );
        event(
            &conn,
            "we_ok",
            "refund.created",
            "applied",
            &refund_payload(&tx("tx_ok")),
            NOW - 5,
        );
        record(
            &conn,
            "sub:tx_missing",
            300,
            "subscription",
            ("subscription_payment", "tx_missing"),
        );
        event(
            &conn,
            "we_missing",
            "refund.created",
            "applied",
            &refund_payload(&"tx_missing".into()),
            NOW - 5,
        );
        record(
            &conn,
            "sub:tx_pending",
            300,
            "subscription",
            ("subscription_payment", "tx_pending"),
        );
        event(
            &conn,
            "we_pending",
            "refund.created",
            "received",
            &refund_payload(&tx("tx_pending")),
            NOW - 5,
        );
        event(
            &conn,
            "we_pack",
            "refund.created",
            "applied",
            &refund_payload(&tx("tx_pack")),
            NOW - 5,
        );
        // periods granted under Creem's order id (no transaction id when they were granted)
        record(
            &conn,
            "sub:or_1",
            300,
            "subscription",
            ("subscription_payment", "order:or_1"),
        );
        let by_order = serde_json::json!({"id": "tx_other", "order": "or_1"});
        event(
            &conn,
            "we_by_order",
            "refund.created",
            "applied",
            &refund_payload(&by_order),
            NOW - 5,
        );
        record(
            &conn,
            "sub:or_2",
            300,
            "subscription",
            ("subscription_payment", "order:or_2"),
        );
        record(
            &conn,
            "clawback:or_2",
            -300,
            "clawback",
            ("subscription_payment", "order:or_2"),
        );
        let by_order = serde_json::json!({"id": "tx_2", "order": {"id": "or_2"}});
        event(
            &conn,
            "we_by_order_ok",
            "refund.created",
            "applied",
            &refund_payload(&by_order),
            NOW - 5,
        );
        event(
            &conn,
            "we_no_tx",
            "refund.created",
            "applied",
            r#"{"object":{"object":"refund"}}"#,
            NOW - 5,
        );
        event(
            &conn,
            "we_garbage",
            "refund.created",
            "applied",
            "not json",
            NOW - 5,
        );

        // completed_tasks_settled
        task(&conn, "t_done_ok", "completed", 5, NOW - 10 * STUCK);
        task_rows(&conn, "t_done_ok", Some(-5), Some(5), Some(-5));
        allocation(&conn, "t_done_ok", "g_big", 5);
        task(&conn, "t_done_unreleased", "completed", 5, NOW + 900);
        task_rows(&conn, "t_done_unreleased", Some(-5), None, Some(-5));
        task(&conn, "t_done_wrong", "completed", 5, NOW + 900);
        task_rows(&conn, "t_done_wrong", Some(-5), Some(5), Some(-4));
        task(&conn, "t_done_overallocated", "completed", 5, NOW + 900);
        task_rows(&conn, "t_done_overallocated", Some(-5), Some(5), Some(-5));
        allocation(&conn, "t_done_overallocated", "g_big", 6);
        task(&conn, "t_done_unbacked", "completed", 5, NOW + 900);
        task_rows(&conn, "t_done_unbacked", Some(-5), Some(5), Some(-5));
        allocation(&conn, "t_done_unbacked", "g_big", 3);

        // failed_tasks_released
        task(&conn, "t_fail_ok", "failed", 5, NOW - 10 * STUCK);
        task_rows(&conn, "t_fail_ok", Some(-5), Some(5), None);
        task(&conn, "t_fail_held", "failed", 5, NOW + 900);
        task_rows(&conn, "t_fail_held", Some(-5), None, None);
        task(&conn, "t_fail_consumed", "failed", 5, NOW + 900);
        task_rows(&conn, "t_fail_consumed", Some(-5), Some(5), Some(-5));
        task(&conn, "t_fail_allocated", "failed", 5, NOW + 900);
        task_rows(&conn, "t_fail_allocated", Some(-5), Some(5), None);
        allocation(&conn, "t_fail_allocated", "g_big", 2);

        // no_hold_outlives_its_task
        for (id, status, deadline) in [
            ("t_live_stuck", "processing", NOW - STUCK - 1),
            ("t_live_pending_stuck", "pending", NOW - 5 * STUCK),
            ("t_live_late", "submitted", NOW - STUCK + 1),
            ("t_live_at_threshold", "processing", NOW - STUCK),
            ("t_live_ok", "pending", NOW + 900),
        ] {
            task(&conn, id, status, 5, deadline);
            task_rows(&conn, id, Some(-5), None, None);
        }

        // grants_not_overdrawn: the trigger stops overdrawing on insert, so corrupt the amount
        record(&conn, "g_over", 10, "gift", ("admin_grant", "over"));
        allocation(&conn, "t_elsewhere", "g_over", 8);
        conn.execute(
            "UPDATE credit_records SET amount = 5 WHERE id = 'g_over'",
            [],
        )
        .unwrap();
        record(&conn, "g_full", 10, "gift", ("admin_grant", "full"));
        allocation(&conn, "t_elsewhere", "g_full", 10);

        // clawbacks_match_grants
        record(&conn, "c_orphan", -10, "clawback", ("order", "o_unknown"));
        record(&conn, "g_small", 10, "gift", ("admin_grant", "small"));
        record(
            &conn,
            "c_too_big",
            -15,
            "clawback",
            ("admin_grant", "small"),
        );
        record(&conn, "g_other", 10, "gift", ("admin_grant", "other"));
        record(&conn, "c_positive", 5, "clawback", ("admin_grant", "other"));
        record(&conn, "g_exact", 10, "gift", ("admin_grant", "exact"));
        record(&conn, "c_exact", -10, "clawback", ("admin_grant", "exact"));

        // no_event_stuck
        event(
            &conn,
            "we_stuck",
            "subscription.paid",
            "received",
            "{}",
            NOW - STUCK - 1,
        );
        event(
            &conn,
            "we_at_threshold",
            "subscription.paid",
            "received",
            "{}",
            NOW - STUCK,
        );
        event(
            &conn,
            "we_old_applied",
            "subscription.paid",
            "applied",
            "{}",
            NOW - 100 * STUCK,
        );
        event(
            &conn,
            "we_old_rejected",
            "x",
            "rejected",
            "garbage",
            NOW - 100 * STUCK,
        );

        // one_provider_submission
        task(&conn, "t_twice", "processing", 5, NOW + 900);
        task_rows(&conn, "t_twice", Some(-5), None, None);
        conn.execute(
            "UPDATE ai_tasks SET provider_submissions = 2 WHERE id = 't_twice'",
            [],
        )
        .unwrap();
        conn.execute(
            "UPDATE ai_tasks SET provider_submissions = 1 WHERE id = 't_done_ok'",
            [],
        )
        .unwrap();

        let report = audit(&conn, NOW, STUCK);
        let set = |ids: &[&str]| ids.iter().map(|s| (*s).to_owned()).collect::<BTreeSet<_>>();
        let expected: BTreeMap<&'static str, BTreeSet<String>> = [
            (
                "completed_pack_orders_granted",
                set(&["o_pack_missing", "o_pack_wrong"]),
            ),
            (
                "refunded_orders_clawed_back",
                set(&["o_ref_missing", "o_ref_partial"]),
            ),
            (
                "refunded_payments_clawed_back",
                set(&["tx_missing", "order:or_1"]),
            ),
            (
                "completed_tasks_settled",
                set(&["t_done_unreleased", "t_done_wrong", "t_done_overallocated"]),
            ),
            (
                "failed_tasks_released",
                set(&["t_fail_held", "t_fail_consumed", "t_fail_allocated"]),
            ),
            (
                "no_hold_outlives_its_task",
                set(&["t_live_stuck", "t_live_pending_stuck"]),
            ),
            ("grants_not_overdrawn", set(&["g_over"])),
            (
                "clawbacks_match_grants",
                set(&["c_orphan", "c_too_big", "c_positive"]),
            ),
            ("no_event_stuck", set(&["we_stuck"])),
            ("one_provider_submission", set(&["t_twice"])),
        ]
        .into_iter()
        .collect();
        assert_eq!(found(&report), expected);
        assert_eq!(
            expected.len(),
            CHECKS.len(),
            "every check has a case that breaks it"
        );
        assert!(!report.ok);
        assert!(report.checks.iter().all(|c| c.violations > 0 && !c.capped));

        // the detail names the rows involved, as JSON (nested arrays, not strings)
        let detail = |check: &str, subject: &str| {
            report
                .violations
                .iter()
                .find(|v| v.check == check && v.subject == subject)
                .map(|v| v.detail.clone())
                .unwrap()
        };
        let d = detail("completed_tasks_settled", "t_done_unreleased");
        assert_eq!(d["cost"], 5);
        let kinds: BTreeSet<&str> = d["ledger_rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["type"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["consumption", "reserve"].into_iter().collect());
        assert_eq!(
            detail("completed_tasks_settled", "t_done_overallocated")["allocated"],
            6
        );
        assert_eq!(
            detail("completed_pack_orders_granted", "o_pack_wrong")["purchase_rows"],
            serde_json::json!([{"id": "purchase:o_pack_wrong", "amount": 40}])
        );
        assert_eq!(
            detail("completed_pack_orders_granted", "o_pack_missing")["purchase_rows"],
            serde_json::json!([])
        );
        assert_eq!(
            detail("refunded_orders_clawed_back", "o_ref_partial")["clawback_rows"],
            serde_json::json!([{"id": "clawback:o_ref_partial", "amount": -20}])
        );
        let d = detail("refunded_payments_clawed_back", "tx_missing");
        assert_eq!(
            (d["event_row"].as_str(), d["grant"]["amount"].as_i64()),
            (Some("we_missing"), Some(300))
        );
        assert_eq!(
            detail("no_hold_outlives_its_task", "t_live_stuck")["overdue_secs"],
            STUCK + 1
        );
        assert_eq!(
            detail("no_hold_outlives_its_task", "t_live_stuck")["hold"],
            -5
        );
        let d = detail("grants_not_overdrawn", "g_over");
        assert_eq!(
            (d["amount"].as_i64(), d["drawn"].as_i64()),
            (Some(5), Some(8))
        );
        assert_eq!(d["allocations"][0]["task_id"], "t_elsewhere");
        assert_eq!(
            detail("clawbacks_match_grants", "c_orphan")["grants"],
            serde_json::json!([])
        );
        assert_eq!(detail("no_event_stuck", "we_stuck")["age_secs"], STUCK + 1);
        assert_eq!(
            detail("one_provider_submission", "t_twice")["provider_submissions"],
            2
        );

        // a longer threshold forgives what is merely late
        let lenient = audit(&conn, NOW, 100 * STUCK);
        let lenient = found(&lenient);
        assert!(!lenient.contains_key("no_event_stuck"));
        assert!(
            !lenient.contains_key("no_hold_outlives_its_task"),
            "{lenient:?}"
        );
    }

    /// A ledger broken everywhere still answers: each check stops at 100 and says so.
    #[test]
    fn checks_stop_at_their_limit() {
        let conn = db();
        for i in 0..150 {
            event(
                &conn,
                &format!("we_{i}"),
                "x",
                "received",
                "{}",
                NOW - 2 * STUCK,
            );
        }
        let report = audit(&conn, NOW, STUCK);
        let c = report
            .checks
            .iter()
            .find(|c| c.name == "no_event_stuck")
            .unwrap();
        assert_eq!((c.violations, c.capped), (100, true));
        assert_eq!(report.violation_count(), 100);
    }

    /// How long an audit takes on SQLite per 10,000 ledger rows (indicative only: D1 adds its
    /// round trip). `cargo test -p shared --release audit_time -- --ignored --nocapture`
    #[test]
    #[ignore = "a measurement, not a check"]
    fn audit_time_per_ledger_rows() {
        let conn = db();
        user(&conn, "u");
        conn.execute_batch("BEGIN").unwrap();
        record(
            &conn,
            "g_big",
            1_000_000_000,
            "gift",
            ("admin_grant", "big"),
        );
        let tasks = 10_000;
        for i in 0..tasks {
            let id = format!("t{i}");
            task(&conn, &id, "completed", 5, NOW - 100);
            task_rows(&conn, &id, Some(-5), Some(5), Some(-5));
            allocation(&conn, &id, "g_big", 5);
        }
        for i in 0..tasks / 10 {
            let id = format!("o{i}");
            order(&conn, &id, "completed", Some("pack"), 50);
            record(
                &conn,
                &format!("purchase:{id}"),
                50,
                "purchase",
                ("order", &id),
            );
        }
        conn.execute_batch("COMMIT").unwrap();
        let started = std::time::Instant::now();
        let report = audit(&conn, NOW, STUCK);
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        assert!(report.ok, "{:?}", found(&report));
        #[allow(clippy::cast_precision_loss)]
        let per_10k = ms * 10_000.0 / report.ledger_rows as f64;
        eprintln!(
            "audit of {} ledger rows: {ms:.1} ms ({per_10k:.1} ms per 10,000 rows)",
            report.ledger_rows
        );
    }

    /// The checks walk indexes: no check reads all of `credit_records`, `credit_consumptions`,
    /// `orders` or `webhook_events` (only `one_provider_submission` reads all of `ai_tasks`, and
    /// `completed_tasks_settled` the completed ones, nearly all of it: the table costs fewer rows
    /// read than an index of them would); the refund checks scan only what they derived from
    /// indexed reads.
    #[test]
    fn checks_use_the_indexes() {
        let conn = db();
        for c in CHECKS {
            let stmt = c.stmt(NOW, STUCK);
            let mut st = conn
                .prepare(&format!("EXPLAIN QUERY PLAN {}", stmt.sql))
                .unwrap();
            let plan: Vec<String> = st
                .query_map(params_from_iter(stmt.params.iter().map(value)), |r| {
                    r.get::<_, String>(3)
                })
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            for line in &plan {
                let Some(rest) = line.strip_prefix("SCAN ") else {
                    continue;
                };
                let table = rest.split_whitespace().next().unwrap_or_default();
                // a walk of a partial index reads only the rows its condition holds for
                let partial = rest.split_once("INDEX ").is_some_and(|(_, index)| {
                    conn.query_row(
                        "SELECT sql LIKE '% WHERE %' FROM sqlite_master WHERE name = ?1",
                        [index.split_whitespace().next().unwrap_or_default()],
                        |r| r.get::<_, bool>(0),
                    )
                    .unwrap_or(false)
                });
                if partial {
                    continue;
                }
                // `a`: the at most 20 allocations a detail lists; the refund checks' own
                // intermediate results (refund events, which an index found, grouped per refund
                // and per payment, and the orders or grants they name)
                let intermediate = ["per_refund", "p", "named", "k", "x"];
                let allowed = ["one_provider_submission", "completed_tasks_settled"]
                    .contains(&c.name)
                    && table == "t"
                    || table == "a"
                    || c.name.starts_with("refunded_") && intermediate.contains(&table);
                assert!(
                    allowed,
                    "{}: full scan `{line}` in\n{}",
                    c.name,
                    plan.join("\n")
                );
            }
        }
    }
}
