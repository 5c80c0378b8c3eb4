//! The edgeline domain: everything the workers agree on, free of the Workers runtime so it is
//! tested natively (`cargo test -p shared`).
//!
//! - [`ids`]: parsed newtypes (`TaskId`, `UserId`, `IdempotencyKey`, `Credits`, ...).
//! - [`model`]: the models we sell and what they cost.
//! - [`task`]: the task state machine, the statements that move a task, and the reconciler's
//!   reads of live tasks.
//! - [`task_rows`]: a task as the api reads it: the owner's, a provider callback's and the
//!   operators' reads.
//! - [`sql`]: a statement and its bound values, as every module builds them.
//! - [`validation`]: the error every parser of client input returns.
//! - [`page`]: a list's page (limit and cursor) read from the query, and the cursor codec.
//! - [`ledger`]: credit rules: balance, holds, settlement allocation, and their SQL.
//! - [`messages`]: the versioned bodies of every queue message.
//! - [`keys`]: R2 and KV key layout.
//! - [`retry`]: what to do after each step (ack, retry later, give up), and poll backoff.
//! - [`budget`]: the bytes a batch's concurrent result downloads may hold at once.
//! - [`kie`]: kie.ai request and response shapes.
//! - [`submit`]: validation of a task submission.
//! - [`cors`]: which browser origins may call the API, and the CORS headers of each answer.
//! - [`signing`]: HMAC signatures, token digests, constant-time comparison.
//! - [`audit`]: the ledger auditor's checks of the money invariants, and its report.
//! - [`history`]: deleting a user's tasks and syncing them across devices (tombstones, cursors).
//! - [`sharing`]: shares of results, their view counts, and lasting image links.
//! - [`statement`]: the user's own view: profile, counts and the ledger as a statement.
//! - [`webhook_events`]: stored payment events: storing a delivery once, loading one,
//!   reconciling those left `received`, the operators' listing.
//! - [`dead_letters`]: the dead-letter archive: archiving a message given up on, the operators'
//!   listing, replay and discard, and its expiry.
//! - [`orders`]: orders (created with their terms, their checkout, listed) and the current
//!   subscription.
//! - [`users`]: users as operators create and find them.
//! - [`admin_audit`]: who changed what: the row every operator change writes, read back.
//! - [`admin_views`]: the operator console's counts and the cron runs (read-only, no rule).
//! - [`retention`]: how long events, dead letters, sign-in logs and cron runs are kept.
//! - [`kv_deletes`]: KV deletes KV refused (one write per second per key), kept for the cron.
//! - [`edge`] (feature `edge`): adapters over the Workers runtime used by every worker.

pub mod admin_audit;
pub mod admin_views;
pub mod audit;
pub mod budget;
pub mod catalog;
pub mod cors;
pub mod dead_letters;
pub mod history;
pub mod http;
pub mod ids;
pub mod keys;
pub mod kie;
pub mod kv_deletes;
pub mod ledger;
pub mod messages;
pub mod model;
pub mod orders;
pub mod page;
pub mod payments;
pub mod retention;
pub mod retry;
pub mod schedule;
pub mod session;
pub mod sharing;
pub mod signing;
pub mod sql;
pub mod statement;
pub mod submit;
pub mod task;
pub mod task_rows;
pub mod users;
pub mod validation;
pub mod webhook_events;

#[cfg(feature = "edge")]
pub mod edge;
