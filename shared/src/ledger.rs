//! Credit ledger rules. Everything that moves credits is here, top to bottom.
//!
//! 1. The ledger is append-only rows in `credit_records`. Grants (`purchase`, `gift`,
//!    `subscription`) are positive and may carry `expires_at`.
//! 2. Submitting a task writes one `reserve` row of `-cost` (a hold) in the same D1 batch that
//!    inserts the task, and only if the balance covers the cost; otherwise nothing is written.
//! 3. A task ends its hold exactly once with a `release` row of `+cost`, written in the batch
//!    that moves the task to `completed` or `failed` and only if that move happened. On success the same
//!    batch adds one `consumption` row of `-cost` and allocates it to grants in
//!    `credit_consumptions` ([`allocate`], done in SQL by [`ALLOCATION_SQL`] inside that batch, so
//!    settling is one round trip and reads grants in the same transaction that draws on them): live grants earliest expiry first (grants without
//!    expiry last), then, if grants expired while the task ran, the most recently expired ones
//!    (the hold was good when taken). A unique index on `(entity_type, entity_id, type)` makes a
//!    second release, consumption or reserve for the same task fail, which aborts the whole batch:
//!    a replayed settlement changes nothing.
//! 4. The balance is the sum of all rows minus the unspent part of expired grants
//!    ([`balance`], [`BALANCE_SQL`]). A trigger stops any grant from being drawn beyond its amount.
//! 5. A refund claws back the refunded share of what a payment granted with one `clawback` row
//!    per grant, keyed by the grant's entity: at most the grant, and only ever grown by later
//!    refunds of the same payment, never added twice (see `payments::clawback`). What is left of
//!    a grant is its amount less its clawback less what consumptions drew from it
//!    ([`remaining`]): only that backs new consumptions ([`ALLOCATION_SQL`]), and only that lapses
//!    when the grant expires, so a wholly clawed-back grant neither backs nor lapses. What was
//!    already spent stays spent, so the balance may go below zero, and then no hold fits until
//!    credits are added.
//!
//! Statements are built here as data ([`Stmt`]) and bound by the workers, so the rule and the
//! SQL that enforces it sit side by side.

use crate::ids::{Credits, TaskId, UserId};
use crate::task::TaskStatus;
use serde::{Deserialize, Serialize};

/// The kind of a ledger row (`credit_records.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    Purchase,
    Gift,
    Subscription,
    Reserve,
    Release,
    Consumption,
    Clawback,
}

impl EntryKind {
    pub const GRANTS: [EntryKind; 3] = [
        EntryKind::Purchase,
        EntryKind::Gift,
        EntryKind::Subscription,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Purchase => "purchase",
            EntryKind::Gift => "gift",
            EntryKind::Subscription => "subscription",
            EntryKind::Reserve => "reserve",
            EntryKind::Release => "release",
            EntryKind::Consumption => "consumption",
            EntryKind::Clawback => "clawback",
        }
    }

    pub fn is_grant(self) -> bool {
        Self::GRANTS.contains(&self)
    }
}

use crate::sql::{Param, Stmt};

// ---------------------------------------------------------------------------------------------
// Balance
// ---------------------------------------------------------------------------------------------

/// A ledger row as far as the balance is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: String,
    pub kind: EntryKind,
    pub amount: i64,
    pub expires_at: Option<i64>,
    pub created_at: i64,
}

/// A grant with what is left of it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Grant {
    pub id: String,
    pub remaining: i64,
    pub expires_at: Option<i64>,
    pub created_at: i64,
}

fn expired(expires_at: Option<i64>, now: i64) -> bool {
    expires_at.is_some_and(|e| e <= now)
}

/// What is left of a grant of `amount` once `clawed_back` credits were taken back by a refund
/// and consumptions drew `used`: what it still backs, and what lapses when it expires. Never
/// below zero (what was spent before a refund stays spent).
pub fn remaining(amount: i64, clawed_back: i64, used: i64) -> i64 {
    (amount - clawed_back.max(0) - used).max(0)
}

/// The spendable balance: every row counts, except what is left unspent of expired grants.
/// `used(grant_id)` is how much of a grant consumptions have drawn.
pub fn balance(entries: &[Entry], used: impl Fn(&str) -> i64, now: i64) -> Credits {
    balance_with_clawbacks(entries, used, |_| 0, now)
}

/// [`balance`] where `clawed_back(grant_id)` is how many credits refunds took back from the grant
/// (0 when none did): an expired grant lapses only what is left of it ([`remaining`]).
pub fn balance_with_clawbacks(
    entries: &[Entry],
    used: impl Fn(&str) -> i64,
    clawed_back: impl Fn(&str) -> i64,
    now: i64,
) -> Credits {
    let total: i64 = entries.iter().map(|e| e.amount).sum();
    let lapsed: i64 = entries
        .iter()
        .filter(|e| e.kind.is_grant() && e.amount > 0 && expired(e.expires_at, now))
        .map(|e| remaining(e.amount, clawed_back(&e.id), used(&e.id)))
        .sum();
    Credits(total - lapsed)
}

/// The same rule in SQL. `?1` user id, `?2` now; a grant's clawback is its entity's `clawback`
/// row (negative). Used inside the reservation statement and by `GET /api/balance`.
pub const BALANCE_SQL: &str = "(COALESCE((SELECT SUM(amount) FROM credit_records WHERE user_id = ?1), 0)
 - COALESCE((SELECT SUM(MAX(0, g.amount + COALESCE((SELECT SUM(cb.amount) FROM credit_records cb WHERE cb.type = 'clawback'
                                                     AND cb.entity_type = g.entity_type AND cb.entity_id = g.entity_id), 0)
                              - COALESCE((SELECT SUM(c.amount) FROM credit_consumptions c WHERE c.from_record_id = g.id), 0)))
             FROM credit_records g
             WHERE g.user_id = ?1 AND g.amount > 0 AND g.type IN ('purchase','gift','subscription')
               AND g.expires_at IS NOT NULL AND g.expires_at <= ?2), 0))";

pub fn balance_query(user: &UserId, now: i64) -> Stmt {
    Stmt::new(
        format!("SELECT {BALANCE_SQL} AS balance"),
        vec![user.to_string().into(), now.into()],
    )
}

// ---------------------------------------------------------------------------------------------
// Grants
// ---------------------------------------------------------------------------------------------

/// A grant row. `entity` makes it idempotent: one grant per order, per subscription period, per
/// operator action.
pub struct NewGrant<'a> {
    pub id: String,
    pub user: &'a str,
    pub kind: EntryKind,
    pub amount: Credits,
    pub entity: (&'a str, &'a str),
    pub expires_at: Option<i64>,
    pub note: &'a str,
    pub now: i64,
}

pub fn grant(g: NewGrant<'_>) -> Stmt {
    grant_sql(g, "INSERT INTO", "")
}

/// The same grant, written at most once: a repeat (same id or same entity) does nothing. With
/// `guard` (an `AND …` condition) it is written only while the guard holds.
pub fn grant_once(g: NewGrant<'_>, guard: Option<&str>) -> Stmt {
    let tail = format!("{} ON CONFLICT DO NOTHING", guard.unwrap_or(""));
    grant_sql(g, "INSERT INTO", &tail)
}

fn grant_sql(g: NewGrant<'_>, insert: &str, tail: &str) -> Stmt {
    debug_assert!(g.kind.is_grant() && g.amount.get() > 0);
    Stmt::new(
        format!(
            "{insert} credit_records (id, user_id, amount, type, entity_type, entity_id, expires_at, note, created_at)
             SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9 WHERE 1 {tail}"
        ),
        vec![
            g.id.into(),
            g.user.into(),
            g.amount.get().into(),
            g.kind.as_str().into(),
            g.entity.0.into(),
            g.entity.1.into(),
            g.expires_at.into(),
            g.note.into(),
            g.now.into(),
        ],
    )
}

/// The starting gift of a user an operator created: `amount` credits that do not expire, once
/// per user.
pub fn signup_gift(user: &str, amount: Credits, now: i64) -> Stmt {
    grant(NewGrant {
        id: format!("gift:{user}:signup"),
        user,
        kind: EntryKind::Gift,
        amount,
        entity: ("signup", user),
        expires_at: None,
        note: "starting credits",
        now,
    })
}

/// The id of an operator's gift to `user` under `reference` ([`operator_gift`]).
pub fn operator_gift_id(user: &str, reference: &str) -> String {
    format!("gift:{user}:{reference}")
}

/// An operator's gift of `amount` credits to `user`, once per `reference`: a repeat fails on the
/// grant's id, and with it the batch it is in.
pub fn operator_gift(
    user: &str,
    reference: &str,
    amount: Credits,
    expires_at: Option<i64>,
    note: &str,
    now: i64,
) -> Stmt {
    grant(NewGrant {
        id: operator_gift_id(user, reference),
        user,
        kind: EntryKind::Gift,
        amount,
        entity: ("admin", &format!("{user}:{reference}")),
        expires_at,
        note,
        now,
    })
}

// ---------------------------------------------------------------------------------------------
// Holds
// ---------------------------------------------------------------------------------------------

/// The task row and its hold, inserted together only if the balance covers the cost; with an
/// idempotency key already used by this user, neither is written. Run both in one batch and look
/// at the first statement's `changes`: 0 means "short balance or repeated key".
pub struct NewTaskHold<'a> {
    pub task: &'a TaskId,
    pub task_no: &'a str,
    pub user: &'a UserId,
    pub model: &'a str,
    pub input_params: &'a str,
    pub idempotency_key: Option<&'a str>,
    pub cost: Credits,
    pub deadline_at: i64,
    /// The failed task this one retries, if any.
    pub retry_of: Option<&'a TaskId>,
    pub now: i64,
}

pub fn reserve_task(h: NewTaskHold<'_>) -> [Stmt; 2] {
    let insert_task = Stmt::new(
        format!(
            "INSERT INTO ai_tasks (id, task_no, user_id, status, input_params, external_provider,
                                   idempotency_key, cost, deadline_at, retry_of, created_at, updated_at)
             SELECT ?3, ?4, ?1, 'pending', ?5, ?6, ?7, ?8, ?9, ?10, ?2, ?2
             WHERE {BALANCE_SQL} >= ?8
             ON CONFLICT DO NOTHING"
        ),
        vec![
            h.user.to_string().into(),
            h.now.into(),
            h.task.to_string().into(),
            h.task_no.into(),
            h.input_params.into(),
            h.model.into(),
            h.idempotency_key.map(str::to_owned).into(),
            h.cost.get().into(),
            h.deadline_at.into(),
            h.retry_of.map(ToString::to_string).into(),
        ],
    );
    let hold = Stmt::new(
        "INSERT INTO credit_records (id, user_id, amount, type, entity_type, entity_id, note, created_at)
         SELECT ?1, user_id, -cost, 'reserve', 'task', id, 'hold for task', ?3
         FROM ai_tasks WHERE id = ?2",
        vec![entry_id("reserve", h.task).into(), h.task.to_string().into(), h.now.into()],
    );
    [insert_task, hold]
}

/// Deterministic ledger row ids, so the same logical write always has the same id.
fn entry_id(kind: &str, task: &TaskId) -> String {
    format!("{kind}:{task}")
}

/// The task row a settlement or release reads, guarded by the task having reached `status`:
/// who pays and how much always come from `ai_tasks` (`?4`), never from a message, and a task
/// that some other path already ended gets no rows.
fn task_row(status: TaskStatus) -> String {
    format!(
        "FROM ai_tasks t WHERE t.id = ?4 AND t.status = '{}'",
        status.as_str()
    )
}

/// Ends a task's hold (`+cost` of the task row), guarded by the task having reached
/// `ended_as`. A second release for the same task fails on the unique index and aborts its batch.
pub fn release(task: &TaskId, ended_as: TaskStatus, now: i64) -> Stmt {
    Stmt::new(
        format!(
            "INSERT INTO credit_records (id, user_id, amount, type, entity_type, entity_id, note, created_at)
             SELECT ?1, t.user_id, t.cost, 'release', 'task', t.id, 'hold ended', ?5 {}",
            task_row(ended_as)
        ),
        vec![
            entry_id("release", task).into(),
            Param::Null,
            Param::Null,
            task.to_string().into(),
            now.into(),
        ],
    )
}

// ---------------------------------------------------------------------------------------------
// Settlement
// ---------------------------------------------------------------------------------------------

/// How a consumption is spread over grants.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Allocation {
    /// (grant id, credits drawn), in drawing order.
    pub draws: Vec<(String, i64)>,
    /// What no grant could cover (only possible after a clawback); it still counts in the
    /// balance through the consumption row.
    pub unbacked: i64,
}

/// Spreads `cost` over grants: live ones earliest expiry first (no expiry last, then oldest
/// first), then expired ones, most recently expired first.
pub fn allocate(cost: Credits, grants: &[Grant], now: i64) -> Allocation {
    let mut live: Vec<&Grant> = grants
        .iter()
        .filter(|g| g.remaining > 0 && !expired(g.expires_at, now))
        .collect();
    live.sort_by_key(|g| {
        (
            g.expires_at.is_none(),
            g.expires_at,
            g.created_at,
            g.id.clone(),
        )
    });
    let mut lapsed: Vec<&Grant> = grants
        .iter()
        .filter(|g| g.remaining > 0 && expired(g.expires_at, now))
        .collect();
    lapsed.sort_by_key(|g| (std::cmp::Reverse(g.expires_at), g.created_at, g.id.clone()));

    let mut left = cost.get().max(0);
    let mut draws = Vec::new();
    for g in live.into_iter().chain(lapsed) {
        if left == 0 {
            break;
        }
        let take = left.min(g.remaining);
        draws.push((g.id.clone(), take));
        left -= take;
    }
    Allocation {
        draws,
        unbacked: left,
    }
}

/// [`allocate`] in SQL: draws completed task `?4`'s cost from its owner's grants at time `?3`,
/// one `credit_consumptions` row per grant drawn; owner and cost are read from the task row
/// (`t`), and a task that is not `completed` draws nothing. Grants are ranked as [`allocate`]
/// ranks them (live before lapsed; live by earliest expiry, no expiry last; lapsed most recently
/// expired first; then oldest, then id); each draws the smaller of what it has left and what the
/// grants before it did not cover. What a grant has left is [`remaining`]: its amount less its
/// clawback less what was drawn, so a partly clawed-back grant backs the rest of it and a wholly
/// clawed-back one nothing. What no grant covers stays unbacked.
pub const ALLOCATION_SQL: &str = "INSERT INTO credit_consumptions (id, user_id, amount, from_record_id, entity_type, entity_id, reason, created_at)
 SELECT ?4 || ':' || ranked.id, t.user_id, MIN(ranked.remaining, t.cost - ranked.drawn_before), ranked.id, 'task', ?4, 'generation', ?3
 FROM ai_tasks t,
      (SELECT id, remaining,
              COALESCE(SUM(remaining) OVER (ORDER BY lapsed, no_expiry, rank_expiry, created_at, id
                                            ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS drawn_before
       FROM (SELECT g.id AS id,
                    g.amount + COALESCE((SELECT SUM(cb.amount) FROM credit_records cb WHERE cb.type = 'clawback'
                                         AND cb.entity_type = g.entity_type AND cb.entity_id = g.entity_id), 0)
                      - COALESCE((SELECT SUM(c.amount) FROM credit_consumptions c WHERE c.from_record_id = g.id), 0) AS remaining,
                    (g.expires_at IS NOT NULL AND g.expires_at <= ?3) AS lapsed,
                    CASE WHEN g.expires_at IS NOT NULL AND g.expires_at <= ?3 THEN 0 ELSE g.expires_at IS NULL END AS no_expiry,
                    CASE WHEN g.expires_at IS NOT NULL AND g.expires_at <= ?3 THEN -g.expires_at ELSE g.expires_at END AS rank_expiry,
                    g.created_at AS created_at
             FROM credit_records g
             WHERE g.user_id = (SELECT user_id FROM ai_tasks WHERE id = ?4)
               AND g.amount > 0 AND g.type IN ('purchase','gift','subscription'))
       WHERE remaining > 0) AS ranked
 WHERE t.id = ?4 AND t.status = 'completed' AND ranked.drawn_before < t.cost";

/// The settlement of a successful task: ends the hold, records the consumption and allocates it
/// to grants ([`ALLOCATION_SQL`]), each reading owner and cost from the task row and guarded by
/// the task being `completed`. Put these after the UPDATE that completes the task, in the same
/// batch. If the task was already settled, the release fails on the unique index and the whole
/// batch (the UPDATE included) is rolled back.
pub fn settle(task: &TaskId, now: i64) -> [Stmt; 3] {
    [
        release(task, TaskStatus::Completed, now),
        Stmt::new(
            format!(
                "INSERT INTO credit_records (id, user_id, amount, type, entity_type, entity_id, note, created_at)
                 SELECT ?1, t.user_id, -t.cost, 'consumption', 'task', t.id, 'generation', ?5 {}",
                task_row(TaskStatus::Completed)
            ),
            vec![
                entry_id("consumption", task).into(),
                Param::Null,
                Param::Null,
                task.to_string().into(),
                now.into(),
            ],
        ),
        Stmt::new(
            ALLOCATION_SQL,
            vec![Param::Null, Param::Null, now.into(), task.to_string().into()],
        ),
    ]
}

/// The row a task transition `RETURNING user_id` gives back ([`fail_task`], the consumer's
/// completion): present only when that statement moved the task, and the owner the status
/// cache is written for.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TaskOwner {
    pub user_id: String,
}

/// The failure of a task: move it to `failed` (only from a live state) with its reason, and
/// release its hold under the guard. Used by the consumer and by the reconciler alike; the
/// first statement's `changes` says whether this call ended the task, and it returns the owner
/// (for the status cache).
pub fn fail_task(task: &TaskId, reason: &str, now: i64) -> [Stmt; 2] {
    failure(task, None, reason, now)
}

/// [`fail_task`] because the provider answered that task `external_id` failed: it applies only
/// to the task D1 knows under that id or whose id it does not know yet
/// (`task::FOR_ANSWER`), so an answer about another provider task fails nothing; a task whose id
/// D1 did not know takes it with its end.
pub fn fail_on_answer(task: &TaskId, external_id: &str, reason: &str, now: i64) -> [Stmt; 2] {
    failure(task, Some(external_id), reason, now)
}

fn failure(task: &TaskId, external_id: Option<&str>, reason: &str, now: i64) -> [Stmt; 2] {
    use crate::task::{Transition, FOR_ANSWER};
    let reason: String = reason.chars().take(500).collect();
    let set = "failure_reason = ?2, completed_at = ?3, updated_at = ?3";
    let mut update = Stmt::new(
        Transition::Fail.update_sql(set),
        vec![task.to_string().into(), reason.into(), now.into()],
    );
    if let Some(id) = external_id {
        // like `task::succeed`: the id D1 did not know yet is recorded with the end
        update.sql = Transition::Fail.update_sql(&format!(
            "{set}, external_task_id = COALESCE(external_task_id, ?4)"
        )) + &FOR_ANSWER.replace("?N", "?4");
        update.params.push(id.into());
    }
    update.sql.push_str(" RETURNING user_id");
    [update, release(task, TaskStatus::Failed, now)]
}

// ---------------------------------------------------------------------------------------------
// The ledger as operators read it
// ---------------------------------------------------------------------------------------------

/// A task's ledger rows (its hold, release and consumption), oldest first.
pub fn task_entries(task: &TaskId) -> Stmt {
    Stmt::new(
        "SELECT id, type, amount, created_at FROM credit_records WHERE entity_type = 'task' AND entity_id = ?1 ORDER BY created_at, id",
        vec![task.to_string().into()],
    )
}

/// Which grants a task's consumption drew on, and how much from each.
pub fn task_allocation(task: &TaskId) -> Stmt {
    Stmt::new(
        "SELECT from_record_id, amount FROM credit_consumptions WHERE entity_type = 'task' AND entity_id = ?1 ORDER BY id",
        vec![task.to_string().into()],
    )
}

/// The `limit` newest ledger rows of `user`, with what consumptions have drawn from each grant
/// (`drawn`; none for a row that is not a grant).
pub fn recent_entries(user: &UserId, limit: i64) -> Stmt {
    Stmt::new(
        "SELECT r.id, r.type, r.amount, r.entity_type, r.entity_id, r.expires_at, r.note, r.created_at,
                CASE WHEN r.amount > 0 THEN COALESCE((SELECT SUM(c.amount) FROM credit_consumptions c WHERE c.from_record_id = r.id), 0) END AS drawn
         FROM credit_records r WHERE r.user_id = ?1 ORDER BY r.created_at DESC, r.id DESC LIMIT ?2",
        vec![user.to_string().into(), Param::Int(limit)],
    )
}

/// What a failed settlement batch means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettleConflict {
    /// The hold was already released or settled: the effect is done, nothing to do.
    AlreadyResolved,
    /// Another settlement drew from the same grant first: read the grants again and retry.
    GrantRaced,
}

/// Reads a D1 error message for the constraint that stopped a ledger batch.
pub fn classify_conflict(message: &str) -> Option<SettleConflict> {
    if message.contains("grant_overdrawn") {
        Some(SettleConflict::GrantRaced)
    } else if message.contains("UNIQUE constraint failed")
        && (message.contains("credit_records") || message.contains("credit_consumptions"))
    {
        Some(SettleConflict::AlreadyResolved)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(id: &str, remaining: i64, expires_at: Option<i64>, created_at: i64) -> Grant {
        Grant {
            id: id.into(),
            remaining,
            expires_at,
            created_at,
        }
    }

    fn e(id: &str, kind: EntryKind, amount: i64, expires_at: Option<i64>) -> Entry {
        Entry {
            id: id.into(),
            kind,
            amount,
            expires_at,
            created_at: 0,
        }
    }

    #[test]
    fn allocation_draws_earliest_expiry_first_and_permanent_last() {
        let grants = [
            g("forever", 10, None, 1),
            g("late", 10, Some(500), 2),
            g("soon", 3, Some(200), 3),
        ];
        let a = allocate(Credits(8), &grants, 100);
        assert_eq!(a.draws, vec![("soon".into(), 3), ("late".into(), 5)]);
        assert_eq!(a.unbacked, 0);
    }

    #[test]
    fn allocation_is_exact_and_skips_empty_grants() {
        let grants = [g("a", 0, None, 1), g("b", 2, None, 2), g("c", 2, None, 3)];
        let a = allocate(Credits(4), &grants, 0);
        assert_eq!(a.draws.iter().map(|d| d.1).sum::<i64>(), 4);
        assert_eq!(a.draws, vec![("b".into(), 2), ("c".into(), 2)]);
        assert_eq!(allocate(Credits(0), &grants, 0), Allocation::default());
    }

    #[test]
    fn allocation_falls_back_to_recently_expired_grants_then_reports_shortfall() {
        let grants = [
            g("old", 5, Some(10), 1),
            g("recent", 1, Some(50), 2),
            g("live", 1, None, 3),
        ];
        let a = allocate(Credits(9), &grants, 100);
        assert_eq!(
            a.draws,
            vec![("live".into(), 1), ("recent".into(), 1), ("old".into(), 5)]
        );
        assert_eq!(a.unbacked, 2);
    }

    #[test]
    fn balance_counts_holds_and_drops_unspent_expired_grants() {
        let entries = [
            e("gift", EntryKind::Gift, 10, None),
            e("promo", EntryKind::Gift, 5, Some(50)),
            e("reserve:t", EntryKind::Reserve, -2, None),
        ];
        assert_eq!(balance(&entries, |_| 0, 10), Credits(13));
        // the promo lapses: its 5 unspent credits go
        assert_eq!(balance(&entries, |_| 0, 60), Credits(8));
        // ...but what was already drawn from it stays spent, not refunded
        assert_eq!(
            balance(&entries, |id| if id == "promo" { 2 } else { 0 }, 60),
            Credits(10)
        );
    }

    #[test]
    fn a_refund_after_spending_goes_negative_and_never_counts_twice() {
        let entries = [
            e("purchase:o1", EntryKind::Purchase, 100, Some(500)),
            e("consumption:t", EntryKind::Consumption, -30, None),
            e("clawback:o1", EntryKind::Clawback, -100, None),
        ];
        let used = |id: &str| if id == "purchase:o1" { 30 } else { 0 };
        let clawed = |id: &str| if id == "purchase:o1" { 100 } else { 0 };
        assert_eq!(
            balance_with_clawbacks(&entries, used, clawed, 10),
            Credits(-30)
        );
        // once the clawed-back grant expires it does not lapse a second time
        assert_eq!(
            balance_with_clawbacks(&entries, used, clawed, 600),
            Credits(-30)
        );
        let topped_up = [
            &entries[..],
            &[e("purchase:o2", EntryKind::Purchase, 50, None)],
        ]
        .concat();
        assert_eq!(
            balance_with_clawbacks(&topped_up, used, clawed, 10),
            Credits(20),
            "a new purchase restores service"
        );
    }

    #[test]
    fn a_partly_clawed_back_grant_backs_and_lapses_only_what_is_left() {
        assert_eq!(remaining(100, 30, 50), 20);
        assert_eq!(
            remaining(100, 30, 80),
            0,
            "spent before the refund stays spent"
        );
        assert_eq!(remaining(100, 100, 0), 0, "wholly clawed back");
        assert_eq!(remaining(100, 0, 40), 60);
        // 100 granted, 30 clawed back, 50 spent: 20 left, which lapses at expiry, nothing more
        let entries = [
            e("purchase:o1", EntryKind::Purchase, 100, Some(500)),
            e("consumption:t", EntryKind::Consumption, -50, None),
            e("clawback:o1", EntryKind::Clawback, -30, None),
            e("gift", EntryKind::Gift, 10, None),
        ];
        let used = |id: &str| if id == "purchase:o1" { 50 } else { 0 };
        let clawed = |id: &str| if id == "purchase:o1" { 30 } else { 0 };
        assert_eq!(
            balance_with_clawbacks(&entries, used, clawed, 10),
            Credits(30)
        );
        assert_eq!(
            balance_with_clawbacks(&entries, used, clawed, 600),
            Credits(10)
        );
        // spent beyond what the refund left: nothing lapses, the balance stays below the gift
        let spent = |id: &str| if id == "purchase:o1" { 80 } else { 0 };
        let more = [
            e("purchase:o1", EntryKind::Purchase, 100, Some(500)),
            e("consumption:t", EntryKind::Consumption, -80, None),
            e("clawback:o1", EntryKind::Clawback, -30, None),
        ];
        assert_eq!(
            balance_with_clawbacks(&more, spent, clawed, 600),
            Credits(-10)
        );
        // allocation: what is left of each grant, as `remaining` says, is what it backs
        let grants = [
            g("purchase:o1", remaining(100, 30, 50), Some(500), 1),
            g("gift", remaining(10, 0, 0), None, 2),
        ];
        let a = allocate(Credits(25), &grants, 10);
        assert_eq!(
            a.draws,
            vec![("purchase:o1".into(), 20), ("gift".into(), 5)]
        );
    }

    // The same rules in SQL, on the real schema (migrations applied to SQLite), for a user with a
    // grant partly clawed back, one wholly clawed back, and a permanent gift.
    mod sql {
        use super::super::*;
        use crate::audit::tests::{db, exec, user, value};
        use crate::history::tests::rows;
        use rusqlite::{params, params_from_iter, Connection};

        const U: &str = "11111111-1111-4111-8111-111111111111";

        fn row(
            conn: &Connection,
            id: &str,
            amount: i64,
            kind: &str,
            entity: &str,
            expires_at: Option<i64>,
        ) {
            conn.execute(
                "INSERT INTO credit_records (id, user_id, amount, type, entity_type, entity_id, expires_at, created_at)
                 VALUES (?1, ?2, ?3, ?4, 'order', ?5, ?6, 0)",
                params![id, U, amount, kind, entity, expires_at],
            )
            .unwrap();
        }

        fn drawn(conn: &Connection, grant: &str, amount: i64, task: &str) {
            conn.execute(
                "INSERT INTO credit_consumptions (id, user_id, amount, from_record_id, entity_type, entity_id)
                 VALUES (?1 || ':' || ?2, ?3, ?4, ?2, 'task', ?1)",
                params![task, grant, U, amount],
            )
            .unwrap();
        }

        fn balance_sql(conn: &Connection, now: i64) -> i64 {
            let q = balance_query(&UserId::parse(U).unwrap(), now);
            let mut st = conn.prepare(&q.sql).unwrap();
            st.query_row(params_from_iter(q.params.iter().map(value)), |r| r.get(0))
                .unwrap()
        }

        /// o1: 100, 30 clawed back, 50 spent, expires at 500. o2: 40, wholly clawed back, 10
        /// spent, expires at 500. gift: 20, permanent.
        fn ledger() -> Connection {
            let conn = db();
            user(&conn, U);
            row(&conn, "purchase:o1", 100, "purchase", "o1", Some(500));
            row(&conn, "clawback:o1", -30, "clawback", "o1", None);
            row(&conn, "purchase:o2", 40, "purchase", "o2", Some(500));
            row(&conn, "clawback:o2", -40, "clawback", "o2", None);
            conn.execute(
                "INSERT INTO credit_records (id, user_id, amount, type, entity_type, entity_id, created_at)
                 VALUES ('gift', ?1, 20, 'gift', 'admin_grant', 'g', 0)",
                [U],
            )
            .unwrap();
            row(&conn, "consumption:t0", -60, "consumption", "t0", None);
            drawn(&conn, "purchase:o1", 50, "t0");
            drawn(&conn, "purchase:o2", 10, "t0");
            conn
        }

        #[test]
        fn the_balance_lapses_only_what_is_left_of_a_partly_clawed_back_grant() {
            let conn = ledger();
            let entries = [
                Entry {
                    id: "purchase:o1".into(),
                    kind: EntryKind::Purchase,
                    amount: 100,
                    expires_at: Some(500),
                    created_at: 0,
                },
                Entry {
                    id: "clawback:o1".into(),
                    kind: EntryKind::Clawback,
                    amount: -30,
                    expires_at: None,
                    created_at: 0,
                },
                Entry {
                    id: "purchase:o2".into(),
                    kind: EntryKind::Purchase,
                    amount: 40,
                    expires_at: Some(500),
                    created_at: 0,
                },
                Entry {
                    id: "clawback:o2".into(),
                    kind: EntryKind::Clawback,
                    amount: -40,
                    expires_at: None,
                    created_at: 0,
                },
                Entry {
                    id: "gift".into(),
                    kind: EntryKind::Gift,
                    amount: 20,
                    expires_at: None,
                    created_at: 0,
                },
                Entry {
                    id: "consumption:t0".into(),
                    kind: EntryKind::Consumption,
                    amount: -60,
                    expires_at: None,
                    created_at: 0,
                },
            ];
            let used = |id: &str| match id {
                "purchase:o1" => 50,
                "purchase:o2" => 10,
                _ => 0,
            };
            let clawed = |id: &str| match id {
                "purchase:o1" => 30,
                "purchase:o2" => 40,
                _ => 0,
            };
            for (now, want) in [(10, 30), (600, 10)] {
                let rust = balance_with_clawbacks(&entries, used, clawed, now).get();
                assert_eq!((rust, balance_sql(&conn, now)), (want, want), "at {now}");
            }
        }

        #[test]
        fn settlement_draws_what_is_left_of_a_partly_clawed_back_grant() {
            let conn = ledger();
            let task = TaskId::new();
            for s in reserve_task(NewTaskHold {
                task: &task,
                task_no: "no-1",
                user: &UserId::parse(U).unwrap(),
                model: "kie_4o",
                input_params: "{}",
                idempotency_key: None,
                cost: Credits(25),
                deadline_at: 900,
                retry_of: None,
                now: 10,
            }) {
                assert_eq!(exec(&conn, &s), 1, "the balance of 30 covers 25: {}", s.sql);
            }
            conn.execute(
                "UPDATE ai_tasks SET status = 'completed' WHERE id = ?1",
                [task.to_string()],
            )
            .unwrap();
            for s in settle(&task, 20) {
                exec(&conn, &s);
            }
            let mut st = conn
                .prepare("SELECT from_record_id, amount FROM credit_consumptions WHERE entity_id = ?1 ORDER BY amount DESC")
                .unwrap();
            let draws: Vec<(String, i64)> = st
                .query_map([task.to_string()], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            // the Rust rule on the same grants: o1 has 20 left, o2 nothing, the gift 20
            let grants = [
                Grant {
                    id: "purchase:o1".into(),
                    remaining: remaining(100, 30, 50),
                    expires_at: Some(500),
                    created_at: 0,
                },
                Grant {
                    id: "purchase:o2".into(),
                    remaining: remaining(40, 40, 10),
                    expires_at: Some(500),
                    created_at: 0,
                },
                Grant {
                    id: "gift".into(),
                    remaining: remaining(20, 0, 0),
                    expires_at: None,
                    created_at: 0,
                },
            ];
            let rust = allocate(Credits(25), &grants, 20);
            assert_eq!(draws, rust.draws);
            assert_eq!(
                draws,
                vec![("purchase:o1".to_owned(), 20), ("gift".to_owned(), 5)]
            );
            assert_eq!(rust.unbacked, 0);
            // (`key`, amount) of each row of `s`
            let pairs = |s: &Stmt, key: &str| -> Vec<(String, i64)> {
                rows(&conn, s)
                    .into_iter()
                    .map(|r| {
                        (
                            r[key].as_str().unwrap().to_owned(),
                            r["amount"].as_i64().unwrap(),
                        )
                    })
                    .collect()
            };
            assert_eq!(
                pairs(&task_entries(&task), "type"),
                [
                    ("reserve".to_owned(), -25),
                    ("consumption".to_owned(), -25),
                    ("release".to_owned(), 25)
                ],
                "by time, then id"
            );
            let mut sorted = draws.clone();
            sorted.sort();
            assert_eq!(pairs(&task_allocation(&task), "from_record_id"), sorted);
        }

        #[test]
        fn gifts_are_made_once_per_reference_and_the_newest_rows_show_what_was_drawn() {
            let conn = ledger();
            let u = UserId::parse(U).unwrap();
            assert_eq!(exec(&conn, &signup_gift(U, Credits(5), 30)), 1);
            let gift = operator_gift(U, "r1", Credits(7), Some(900), "thanks", 31);
            assert_eq!(exec(&conn, &gift), 1);
            let again = operator_gift(U, "r1", Credits(3), None, "again", 32);
            let refused = conn
                .execute(&again.sql, params_from_iter(again.params.iter().map(value)))
                .unwrap_err();
            assert!(
                refused.to_string().contains("UNIQUE constraint failed"),
                "{refused}"
            );
            assert_eq!(operator_gift_id(U, "r1"), format!("gift:{U}:r1"));

            let newest = rows(&conn, &recent_entries(&u, 2));
            assert_eq!(newest.len(), 2, "bounded");
            assert_eq!(
                newest[0],
                serde_json::json!({"id": format!("gift:{U}:r1"), "type": "gift", "amount": 7, "entity_type": "admin",
                                   "entity_id": format!("{U}:r1"), "expires_at": 900, "note": "thanks",
                                   "created_at": 31, "drawn": 0})
            );
            assert_eq!(
                (
                    &newest[1]["id"],
                    &newest[1]["entity_type"],
                    &newest[1]["note"]
                ),
                (
                    &serde_json::json!(format!("gift:{U}:signup")),
                    &serde_json::json!("signup"),
                    &serde_json::json!("starting credits")
                )
            );
            let drawn = |id: &str| -> serde_json::Value {
                rows(&conn, &recent_entries(&u, 100))
                    .into_iter()
                    .find(|r| r["id"] == id)
                    .unwrap()["drawn"]
                    .clone()
            };
            assert_eq!(drawn("purchase:o1"), 50);
            assert_eq!(
                drawn("consumption:t0"),
                serde_json::Value::Null,
                "not a grant"
            );
        }
    }

    #[test]
    fn hold_then_release_or_settle_moves_the_balance_once() {
        let mut entries = vec![
            e("gift", EntryKind::Gift, 5, None),
            e("reserve:t", EntryKind::Reserve, -2, None),
        ];
        assert_eq!(balance(&entries, |_| 0, 0), Credits(3));
        // failure: the release gives it back
        let mut failed = entries.clone();
        failed.push(e("release:t", EntryKind::Release, 2, None));
        assert_eq!(balance(&failed, |_| 0, 0), Credits(5));
        // success: release + consumption spends exactly the cost
        entries.push(e("release:t", EntryKind::Release, 2, None));
        entries.push(e("consumption:t", EntryKind::Consumption, -2, None));
        assert_eq!(
            balance(&entries, |id| if id == "gift" { 2 } else { 0 }, 0),
            Credits(3)
        );
    }

    #[test]
    fn a_reservation_never_takes_the_balance_below_zero() {
        // the SQL guard is `balance >= cost`; mirror it
        let entries = [e("gift", EntryKind::Gift, 3, None)];
        let can_hold = |cost: i64| balance(&entries, |_| 0, 0).get() >= cost;
        assert!(can_hold(3));
        assert!(!can_hold(4));
    }

    #[test]
    fn settlement_statements_start_with_the_release_guard_and_use_stable_ids() {
        let task = TaskId::new();
        let stmts = settle(&task, 7);
        assert!(stmts[0].sql.contains("'release'"));
        assert_eq!(stmts[0].params[0], Param::Text(format!("release:{task}")));
        assert!(stmts[1].sql.contains("'consumption'"));
        assert!(
            stmts[2].sql.starts_with("INSERT INTO credit_consumptions")
                && stmts[2].sql.contains("?4 || ':' || ranked.id"),
            "allocation ids are task:grant"
        );
        assert_eq!(stmts[2].params[3], Param::Text(task.to_string()));
        assert!(
            stmts.iter().all(|s| s.sql.contains("status = 'completed'")),
            "every row is guarded"
        );
        let rel = release(&task, TaskStatus::Failed, 7);
        assert!(rel.sql.contains("status = 'failed'"));
        assert_eq!(settle(&task, 99), settle(&task, 99));
    }

    #[test]
    fn who_pays_and_how_much_come_from_the_task_row() {
        let task = TaskId::new();
        for stmt in settle(&task, 7)
            .iter()
            .chain(fail_task(&task, "x", 7).iter().skip(1))
        {
            assert!(
                stmt.sql.contains("t.user_id") && stmt.sql.contains("t.cost"),
                "{}",
                stmt.sql
            );
            // nothing but ids, the task and the time is bound: no amount, no user
            for p in &stmt.params {
                if let Param::Int(n) = p {
                    assert_eq!(*n, 7, "only the time is a number: {}", stmt.sql);
                }
            }
        }
    }

    #[test]
    fn failing_a_task_moves_it_and_releases_under_guard() {
        let [update, rel] = fail_task(&TaskId::new(), &"x".repeat(600), 9);
        assert!(update
            .sql
            .contains("status IN ('pending','submitted','processing')"));
        assert!(update.sql.ends_with("RETURNING user_id"));
        assert_eq!(
            update.params[1],
            Param::Text("x".repeat(500)),
            "reason capped"
        );
        assert!(rel.sql.contains("status = 'failed'") && rel.sql.contains("'release'"));
    }

    #[test]
    fn conflicts_are_read_from_constraint_errors() {
        assert_eq!(
            classify_conflict("D1_ERROR: UNIQUE constraint failed: credit_records.entity_type, credit_records.entity_id, credit_records.type: SQLITE_CONSTRAINT"),
            Some(SettleConflict::AlreadyResolved)
        );
        assert_eq!(
            classify_conflict("D1_ERROR: grant_overdrawn: SQLITE_CONSTRAINT"),
            Some(SettleConflict::GrantRaced)
        );
        assert_eq!(classify_conflict("D1_ERROR: no such table: x"), None);
    }
}
