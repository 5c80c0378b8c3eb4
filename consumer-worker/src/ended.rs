//! The tasks this isolate knows have ended: those it ended itself, and those KV said had ended.
//! With callbacks on, the usual late message is the chain's first poll, due at the model's
//! typical generation time, of a task the callback's poll ended moments before, most often in
//! this same isolate: it stops here instead of paying a KV read to learn what the isolate
//! already knew (`store::known_ended` asks here first).
//!
//! Remembering is never wrong: `completed` and `failed` have no way out (`shared::task`), so a
//! task that ended stays ended. Forgetting is cheap: the oldest entry goes when the memory is
//! full, and a poll of a forgotten task reads KV as it would have anyway. The memory lives as
//! long as the isolate and is never the truth: D1 decides every transition whatever it says.

use shared::ids::TaskId;
use std::cell::RefCell;
use std::collections::{HashSet, VecDeque};

/// How many ended tasks an isolate remembers: well over what ends within one typical
/// generation time at the local pipeline's rate. Both collections are sized for it once: 16
/// bytes an id in the queue, and the set's table (id and control byte, 8,192 slots rounded up
/// to 16,384 buckets): under 400 KB.
const CAPACITY: usize = 8192;

/// The ids in the order they were remembered, and the same ids for lookups.
struct Memory {
    order: VecDeque<TaskId>,
    ids: HashSet<TaskId>,
    capacity: usize,
}

impl Memory {
    fn new(capacity: usize) -> Self {
        Memory {
            order: VecDeque::with_capacity(capacity),
            ids: HashSet::with_capacity(capacity),
            capacity,
        }
    }

    fn remember(&mut self, task: TaskId) {
        if self.ids.contains(&task) {
            return;
        }
        // make room first, so neither collection ever grows past its first size
        if self.order.len() >= self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.ids.remove(&oldest);
            }
        }
        self.ids.insert(task);
        self.order.push_back(task);
    }

    fn knows(&self, task: &TaskId) -> bool {
        self.ids.contains(task)
    }
}

thread_local! {
    static ENDED: RefCell<Memory> = RefCell::new(Memory::new(CAPACITY));
}

/// Notes that `task` ended: this isolate ended it, or KV said so.
pub fn remember(task: &TaskId) {
    ENDED.with(|m| m.borrow_mut().remember(*task));
}

/// Whether this isolate knows that `task` ended.
pub fn knows(task: &TaskId) -> bool {
    ENDED.with(|m| m.borrow().knows(task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ended_task_is_known_once_remembered() {
        let (a, b) = (TaskId::new(), TaskId::new());
        assert!(!knows(&a));
        remember(&a);
        remember(&a);
        assert!(knows(&a));
        assert!(!knows(&b));
    }

    #[test]
    fn the_oldest_is_forgotten_when_full() {
        let mut m = Memory::new(2);
        let sized = m.order.capacity();
        let ids = [TaskId::new(), TaskId::new(), TaskId::new()];
        for id in ids {
            m.remember(id);
        }
        assert!(!m.knows(&ids[0]), "the oldest made room");
        assert!(m.knows(&ids[1]) && m.knows(&ids[2]));
        assert_eq!((m.order.len(), m.ids.len()), (2, 2));
        assert_eq!(
            m.order.capacity(),
            sized,
            "room is made before a push, never by growing"
        );
        // remembering a known id again does not push it twice
        m.remember(ids[2]);
        assert_eq!(m.order.len(), 2);
    }
}
