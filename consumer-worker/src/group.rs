//! Writes the messages of one batch make at the same step, sent to D1 together: one round trip
//! (one transaction) for the batch instead of one per message. The queue hands the consumer up
//! to `max_batch_size` `task.submit` messages at once, and each claims its task and then records
//! the provider's id: two groups ([`SubmitWrites`]).
//!
//! Each message that may make the write holds a [`Ticket`], used once ([`Ticket::run`]) or
//! dropped unused (on any return path: it is a value the handler owns). The group sends the
//! waiting statements as soon as every live ticket is waiting, so no message waits for one that
//! will not write. The statements of a group are conditional updates of distinct rows; a failed
//! round trip fails each of them, and each message decides for itself as if it had written alone.

use futures::channel::oneshot;
use shared::edge::{Db, IoCounts, IoError};
use shared::sql::Stmt;
use std::cell::RefCell;
use std::rc::Rc;
use worker::wasm_bindgen_futures::spawn_local;
use worker::D1Result;

type Reply = Result<D1Result, IoError>;

/// One write step shared by the messages of a batch.
pub struct Group {
    what: &'static str,
    db: Db,
    state: RefCell<State>,
}

#[derive(Default)]
struct State {
    /// Tickets neither dropped nor sent yet.
    live: usize,
    waiting: Vec<Waiting>,
}

struct Waiting {
    stmt: Stmt,
    io: Rc<IoCounts>,
    reply: oneshot::Sender<Reply>,
}

/// A message's place in a [`Group`]: use it once, or drop it.
pub struct Ticket {
    group: Rc<Group>,
    used: bool,
}

impl Group {
    /// A group for `n` messages and their tickets.
    pub fn tickets(what: &'static str, db: Db, n: usize) -> Vec<Ticket> {
        let group = Rc::new(Group {
            what,
            db,
            state: RefCell::new(State {
                live: n,
                waiting: Vec::new(),
            }),
        });
        (0..n)
            .map(|_| Ticket {
                group: group.clone(),
                used: false,
            })
            .collect()
    }

    /// Sends what is waiting once every live ticket waits.
    fn send_when_ready(self: &Rc<Self>) {
        let batch = {
            let mut s = self.state.borrow_mut();
            if s.waiting.is_empty() || s.waiting.len() < s.live {
                return;
            }
            s.live -= s.waiting.len();
            std::mem::take(&mut s.waiting)
        };
        let group = self.clone();
        spawn_local(async move { group.send(batch).await });
    }

    async fn send(&self, batch: Vec<Waiting>) {
        let stmts: Vec<Stmt> = batch.iter().map(|w| w.stmt.clone()).collect();
        // the round trip and its rows are counted once, on the first message's log line
        let db = self.db.counting_into(batch[0].io.clone());
        match db.batch(self.what, &stmts).await {
            Ok(results) => {
                for (w, r) in batch.into_iter().zip(results) {
                    let _ = w.reply.send(Ok(r));
                }
            }
            Err(e) => {
                for w in batch {
                    let _ = w.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

impl Ticket {
    /// Runs `stmt` with the group's other statements; `io` is the message's counters.
    pub async fn run(mut self, stmt: Stmt, io: &Rc<IoCounts>) -> Reply {
        let (reply, answer) = oneshot::channel();
        self.used = true;
        self.group.state.borrow_mut().waiting.push(Waiting {
            stmt,
            io: io.clone(),
            reply,
        });
        self.group.send_when_ready();
        answer.await.unwrap_or_else(|_| {
            Err(IoError {
                step: "d1 grouped write".into(),
                cause: "the group ended without an answer".into(),
            })
        })
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.used {
            self.group.state.borrow_mut().live -= 1;
            self.group.send_when_ready();
        }
    }
}

/// The two writes of a `task.submit` message, grouped across the batch: the claim and the
/// provider's id.
pub struct SubmitWrites {
    pub claim: Ticket,
    pub accept: Ticket,
}

impl SubmitWrites {
    /// The writes of `n` `task.submit` messages of one batch.
    pub fn for_batch(db: &Db, n: usize) -> Vec<SubmitWrites> {
        let claims = Group::tickets("claim tasks", db.clone(), n);
        let accepts = Group::tickets("accept tasks", db.clone(), n);
        claims
            .into_iter()
            .zip(accepts)
            .map(|(claim, accept)| SubmitWrites { claim, accept })
            .collect()
    }
}
