//! The edgeline domain: everything the workers agree on, free of the Workers runtime so it is
//! tested natively (`cargo test -p shared`).
//!
//! - [`ids`]: parsed newtypes (`TaskId`, `UserId`, `IdempotencyKey`, `Credits`, ...).
//! - [`model`]: the models we sell and what they cost.
//! - [`task`]: the task state machine.
//! - [`sql`]: a statement and its bound values, as every module builds them.
//! - [`validation`]: the error every parser of client input returns.
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
//! - [`edge`] (feature `edge`): adapters over the Workers runtime used by every worker.

pub mod audit;
pub mod budget;
pub mod catalog;
pub mod cors;
pub mod history;
pub mod http;
pub mod ids;
pub mod keys;
pub mod kie;
pub mod ledger;
pub mod messages;
pub mod model;
pub mod payments;
pub mod retry;
pub mod schedule;
pub mod session;
pub mod sharing;
pub mod signing;
pub mod sql;
pub mod statement;
pub mod submit;
pub mod task;
pub mod validation;

#[cfg(feature = "edge")]
pub mod edge;
