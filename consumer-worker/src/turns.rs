//! One poll of a task at a time in a batch. A batch can hold two polls of the same task: the
//! chain's poll due at the model's typical generation time and the poll the provider's callback
//! prompted at that same moment, or one message delivered twice. Run side by side, both would
//! find the task unknown to KV, ask the provider, download the result and put it in R2; only the
//! settlement's conditional update would notice. So the later one waits for the earlier to
//! finish (an await on it, not a sleep), then asks again whether the task ended
//! (`store::known_ended`: this isolate's memory, then KV).
//!
//! The turns belong to one batch (`batch::handle` makes them), so no invocation ever waits on,
//! or wakes, another's futures. Polls of one task in two batches can still both store, at the
//! cost this saves (a record-info call, a download, an R2 put); D1 still settles once.

use futures::channel::oneshot;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// The tasks of one batch with a poll in flight, and who waits for each.
#[derive(Default)]
pub struct Turns {
    in_flight: RefCell<HashMap<String, Vec<oneshot::Sender<()>>>>,
}

/// A poll's turn on its task, held while it works; dropping it lets the next one go.
pub struct Turn {
    turns: Rc<Turns>,
    task: String,
}

impl Turns {
    /// Waits until no other poll of `task` in this batch is in flight and takes the turn; says
    /// whether it had to wait (then what the other one did is known: `store::known_ended`).
    pub async fn take(self: &Rc<Self>, task: &str) -> (Turn, bool) {
        let mut waited = false;
        loop {
            let wait = {
                let mut in_flight = self.in_flight.borrow_mut();
                match in_flight.get_mut(task) {
                    None => {
                        in_flight.insert(task.to_owned(), Vec::new());
                        None
                    }
                    Some(waiting) => {
                        let (tx, rx) = oneshot::channel();
                        waiting.push(tx);
                        Some(rx)
                    }
                }
            };
            match wait {
                None => {
                    let turn = Turn {
                        turns: Rc::clone(self),
                        task: task.to_owned(),
                    };
                    return (turn, waited);
                }
                // woken when the holder's turn ends: go round and take it
                Some(rx) => {
                    waited = true;
                    let _ = rx.await;
                }
            }
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let waiting = self
            .turns
            .in_flight
            .borrow_mut()
            .remove(&self.task)
            .unwrap_or_default();
        for tx in waiting {
            let _ = tx.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;
    use futures::future::join3;

    /// Pending once, having asked to be polled again: lets the other futures run.
    async fn yield_now() {
        let mut yielded = false;
        futures::future::poll_fn(|cx| {
            if yielded {
                std::task::Poll::Ready(())
            } else {
                yielded = true;
                cx.waker().wake_by_ref();
                std::task::Poll::Pending
            }
        })
        .await;
    }

    /// The second poll of a task starts only once the first has ended; another task's poll
    /// does not wait.
    #[test]
    fn polls_of_one_task_take_turns() {
        let turns = Rc::new(Turns::default());
        let log = Rc::new(RefCell::new(Vec::new()));
        let poll = |task: &'static str, name: &'static str| {
            let (turns, log) = (turns.clone(), log.clone());
            async move {
                let (_turn, waited) = turns.take(task).await;
                log.borrow_mut()
                    .push(format!("{name} starts, waited {waited}"));
                yield_now().await;
                log.borrow_mut().push(format!("{name} ends"));
            }
        };
        block_on(join3(poll("t1", "a"), poll("t1", "b"), poll("t2", "c")));
        let log = log.borrow();
        let at = |line: &str| log.iter().position(|l| l == line).unwrap();
        assert!(at("b starts, waited true") > at("a ends"), "{log:?}");
        assert!(at("a starts, waited false") < at("a ends"), "{log:?}");
        assert!(at("c starts, waited false") < at("a ends"), "{log:?}");
        assert!(turns.in_flight.borrow().is_empty());
    }
}
