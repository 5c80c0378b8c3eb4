//! A byte budget: an async, single-threaded semaphore counted in bytes, so the messages of one
//! batch (handled concurrently) never hold more result bytes in memory at once than the isolate
//! can afford.
//!
//! A download [`ByteBudget::acquire`]s the bytes it may hold before it reads a body and keeps
//! the [`Permit`] until those bytes are written to R2 or dropped; dropping the permit gives the
//! bytes back and lets the next waiter in. Waiters are served first come, first served, so a
//! large result is not starved by a stream of small ones. A request larger than the whole budget
//! is cut to the whole budget: it proceeds alone, once nothing else is held, and never deadlocks.
//!
//! Pure and runtime-free (std's `Future` and `Waker` only; no timers, no threads): it works under
//! any executor, the Workers runtime's included, and is tested natively.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// Result bytes one batch may hold at once: 48 MiB.
///
/// An isolate has 128 MB for everything: its JS heap and its wasm memory, and wasm memory only
/// ever grows. The bytes a download holds live twice in the worst case: first in wasm memory
/// while the body is read and checked, then as the JS copy R2's `put` sends while the wasm pages
/// they used stay reserved. With a budget of B that is at most about 2B, plus the runtime's and
/// the program's own working set (some 15-20 MB). 48 MiB keeps 2B + working set under 128 MB
/// (64 MiB would not) and still lets two results at the 20 MiB cap (`MAX_RESULT_BYTES`), or many
/// ordinary ones, download at once.
pub const BATCH_BUDGET_BYTES: u64 = 48 * 1024 * 1024;

/// An async semaphore counted in bytes. Not `Sync`: one isolate runs on one thread.
pub struct ByteBudget {
    capacity: u64,
    state: RefCell<State>,
}

#[derive(Default)]
struct State {
    /// Bytes granted and not yet given back (permits, and grants not yet picked up).
    held: u64,
    next_ticket: u64,
    /// Waiters in arrival order. A granted waiter stays here until its future picks the grant up.
    queue: VecDeque<Waiter>,
}

struct Waiter {
    ticket: u64,
    bytes: u64,
    waker: Waker,
    granted: bool,
}

impl State {
    fn fits(&self, capacity: u64, bytes: u64) -> bool {
        self.held.saturating_add(bytes) <= capacity
    }

    /// Grants waiting requests in order while they fit; returns the wakers to wake once the
    /// state is no longer borrowed.
    fn grant_waiting(&mut self, capacity: u64) -> Vec<Waker> {
        let mut woken = Vec::new();
        for i in 0..self.queue.len() {
            let (granted, bytes) = (self.queue[i].granted, self.queue[i].bytes);
            if granted {
                continue;
            }
            if !self.fits(capacity, bytes) {
                // first come, first served: nobody overtakes the oldest waiter
                break;
            }
            self.held += bytes;
            self.queue[i].granted = true;
            woken.push(self.queue[i].waker.clone());
        }
        woken
    }

    fn give_back(&mut self, bytes: u64) {
        self.held = self.held.saturating_sub(bytes);
    }
}

fn wake_all(wakers: Vec<Waker>) {
    for w in wakers {
        w.wake();
    }
}

impl ByteBudget {
    /// A budget of `capacity` bytes (at least 1).
    pub fn new(capacity: u64) -> Self {
        ByteBudget {
            capacity: capacity.max(1),
            state: RefCell::new(State::default()),
        }
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Bytes held now.
    pub fn held(&self) -> u64 {
        self.state.borrow().held
    }

    /// Requests waiting for bytes now.
    pub fn waiting(&self) -> usize {
        self.state
            .borrow()
            .queue
            .iter()
            .filter(|w| !w.granted)
            .count()
    }

    /// Waits until `bytes` can be held, then holds them until the permit is dropped. A request
    /// over the capacity holds the whole capacity: it waits until nothing else is held, then
    /// proceeds alone.
    pub fn acquire(&self, bytes: u64) -> Acquire<'_> {
        Acquire {
            budget: self,
            bytes: bytes.min(self.capacity),
            ticket: None,
        }
    }

    fn release(&self, bytes: u64) {
        let woken = {
            let mut st = self.state.borrow_mut();
            st.give_back(bytes);
            st.grant_waiting(self.capacity)
        };
        wake_all(woken);
    }
}

impl fmt::Debug for ByteBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ByteBudget")
            .field("capacity", &self.capacity)
            .field("held", &self.held())
            .field("waiting", &self.waiting())
            .finish()
    }
}

/// The future [`ByteBudget::acquire`] returns. Dropping it while it waits gives up its place
/// (and any bytes granted to it but not yet picked up).
#[must_use = "bytes are only held once the acquire is awaited"]
pub struct Acquire<'a> {
    budget: &'a ByteBudget,
    bytes: u64,
    ticket: Option<u64>,
}

impl<'a> Future for Acquire<'a> {
    type Output = Permit<'a>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Permit<'a>> {
        let this = self.get_mut();
        let budget = this.budget;
        let bytes = this.bytes;
        let mut st = budget.state.borrow_mut();
        if let Some(ticket) = this.ticket {
            if let Some(i) = st.queue.iter().position(|w| w.ticket == ticket) {
                if st.queue[i].granted {
                    // the bytes were added to `held` when granted
                    st.queue.remove(i);
                    this.ticket = None;
                    return Poll::Ready(Permit { budget, bytes });
                }
                if !st.queue[i].waker.will_wake(cx.waker()) {
                    st.queue[i].waker = cx.waker().clone();
                }
                return Poll::Pending;
            }
            // not reachable (only this future removes its entry); ask again from scratch
            this.ticket = None;
        }
        let nobody_waiting = st.queue.iter().all(|w| w.granted);
        if nobody_waiting && st.fits(budget.capacity, bytes) {
            st.held += bytes;
            return Poll::Ready(Permit { budget, bytes });
        }
        let ticket = st.next_ticket;
        st.next_ticket += 1;
        st.queue.push_back(Waiter {
            ticket,
            bytes,
            waker: cx.waker().clone(),
            granted: false,
        });
        this.ticket = Some(ticket);
        Poll::Pending
    }
}

impl Drop for Acquire<'_> {
    fn drop(&mut self) {
        let Some(ticket) = self.ticket.take() else {
            return;
        };
        let woken = {
            let mut st = self.budget.state.borrow_mut();
            let Some(i) = st.queue.iter().position(|w| w.ticket == ticket) else {
                return;
            };
            if let Some(w) = st.queue.remove(i) {
                if w.granted {
                    st.give_back(w.bytes);
                }
            }
            // leaving the head of the queue may let the next ones in
            st.grant_waiting(self.budget.capacity)
        };
        wake_all(woken);
    }
}

/// Bytes held from a [`ByteBudget`]; given back when dropped.
#[must_use = "the bytes are given back as soon as the permit is dropped"]
pub struct Permit<'a> {
    budget: &'a ByteBudget,
    bytes: u64,
}

impl Permit<'_> {
    /// Bytes this permit holds.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Gives back what this permit holds beyond `bytes` (a body turned out smaller than was
    /// reserved for it). Never grows the permit.
    pub fn shrink_to(&mut self, bytes: u64) {
        if bytes < self.bytes {
            let excess = self.bytes - bytes;
            self.bytes = bytes;
            self.budget.release(excess);
        }
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

impl fmt::Debug for Permit<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("bytes", &self.bytes)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    const MIB: u64 = 1024 * 1024;

    /// A waker that counts its wakes.
    #[derive(Default)]
    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn waker() -> (Arc<Count>, Waker) {
        let c = Arc::new(Count::default());
        (c.clone(), Waker::from(c))
    }

    fn poll<'a>(f: &mut Acquire<'a>, w: &Waker) -> Option<Permit<'a>> {
        match Pin::new(f).poll(&mut Context::from_waker(w)) {
            Poll::Ready(p) => Some(p),
            Poll::Pending => None,
        }
    }

    #[test]
    fn within_capacity_is_granted_at_once_and_given_back_on_drop() {
        let b = ByteBudget::new(10);
        let (_, w) = waker();
        let p = poll(&mut b.acquire(4), &w).unwrap();
        let q = poll(&mut b.acquire(6), &w).unwrap();
        assert_eq!((p.bytes(), q.bytes(), b.held()), (4, 6, 10));
        drop(p);
        assert_eq!(b.held(), 6);
        drop(q);
        assert_eq!(b.held(), 0);
    }

    #[test]
    fn a_waiter_is_woken_and_granted_when_bytes_come_back() {
        let b = ByteBudget::new(10);
        let (count, w) = waker();
        let first = poll(&mut b.acquire(8), &w).unwrap();
        let mut second = b.acquire(5);
        assert!(poll(&mut second, &w).is_none());
        assert_eq!((b.waiting(), count.0.load(Ordering::SeqCst)), (1, 0));
        drop(first);
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "the waiter is woken");
        // granted on release: the bytes are reserved for it before it runs again
        assert_eq!(b.held(), 5);
        let p = poll(&mut second, &w).unwrap();
        assert_eq!((p.bytes(), b.held(), b.waiting()), (5, 5, 0));
    }

    #[test]
    fn a_request_larger_than_the_budget_proceeds_alone() {
        let b = ByteBudget::new(10);
        let (_, w) = waker();
        // nothing held: it goes at once, holding everything
        let big = poll(&mut b.acquire(25), &w).unwrap();
        assert_eq!((big.bytes(), b.held()), (10, 10));
        let mut small = b.acquire(1);
        assert!(poll(&mut small, &w).is_none(), "nothing runs beside it");
        drop(big);
        let s = poll(&mut small, &w).unwrap();

        // something held: it waits for it, then goes (no deadlock)
        let mut big = b.acquire(u64::MAX);
        assert!(poll(&mut big, &w).is_none());
        drop(s);
        let big = poll(&mut big, &w).unwrap();
        assert_eq!((big.bytes(), b.held()), (10, 10));
        drop(big);
        assert_eq!(b.held(), 0);
    }

    #[test]
    fn waiters_are_served_in_order_so_large_ones_are_not_starved() {
        let b = ByteBudget::new(10);
        let (_, w) = waker();
        let a = poll(&mut b.acquire(6), &w).unwrap();
        let mut large = b.acquire(9);
        assert!(poll(&mut large, &w).is_none());
        // 4 bytes are free, but the large request came first
        let mut small = b.acquire(2);
        assert!(poll(&mut small, &w).is_none());
        drop(a);
        let l = poll(&mut large, &w).unwrap();
        assert!(poll(&mut small, &w).is_none());
        drop(l);
        assert!(poll(&mut small, &w).is_some());
    }

    #[test]
    fn several_waiters_are_granted_together_when_they_fit() {
        let b = ByteBudget::new(10);
        let (count, w) = waker();
        let all = poll(&mut b.acquire(10), &w).unwrap();
        let mut x = b.acquire(3);
        let mut y = b.acquire(3);
        let mut z = b.acquire(5);
        assert!(poll(&mut x, &w).is_none());
        assert!(poll(&mut y, &w).is_none());
        assert!(poll(&mut z, &w).is_none());
        drop(all);
        assert_eq!(count.0.load(Ordering::SeqCst), 2, "x and y fit, z waits");
        let px = poll(&mut x, &w).unwrap();
        let py = poll(&mut y, &w).unwrap();
        assert!(poll(&mut z, &w).is_none());
        drop(py);
        let pz = poll(&mut z, &w).unwrap();
        assert_eq!(b.held(), 8);
        drop((px, pz));
    }

    #[test]
    fn a_dropped_waiter_gives_up_its_place_and_any_grant() {
        let b = ByteBudget::new(10);
        let (_, w) = waker();
        let a = poll(&mut b.acquire(10), &w).unwrap();
        let mut first = b.acquire(8);
        let mut second = b.acquire(8);
        assert!(poll(&mut first, &w).is_none());
        assert!(poll(&mut second, &w).is_none());
        // cancelled while waiting at the head: the next one moves up
        drop(first);
        assert_eq!(b.waiting(), 1);
        drop(a);
        assert_eq!(b.held(), 8, "granted to second");
        // cancelled after its grant, before picking it up: the bytes come back
        drop(second);
        assert_eq!((b.held(), b.waiting()), (0, 0));
        assert!(poll(&mut b.acquire(10), &w).is_some());
    }

    #[test]
    fn shrinking_a_permit_gives_back_the_excess() {
        let b = ByteBudget::new(10);
        let (_, w) = waker();
        let mut p = poll(&mut b.acquire(10), &w).unwrap();
        let mut q = b.acquire(7);
        assert!(poll(&mut q, &w).is_none());
        p.shrink_to(3);
        p.shrink_to(9); // never grows
        assert_eq!(p.bytes(), 3);
        let q = poll(&mut q, &w).unwrap();
        assert_eq!(b.held(), 10);
        drop((p, q));
        assert_eq!(b.held(), 0);
    }

    /// A future that is pending `n` times, waking itself each time: a stand-in for I/O.
    struct Yield(u32);
    impl Future for Yield {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if self.0 == 0 {
                return Poll::Ready(());
            }
            self.0 -= 1;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    /// Ten 20 MiB downloads at once, as ten messages of one batch would: the bytes held never
    /// pass the budget, and every download finishes.
    #[test]
    fn ten_concurrent_downloads_stay_within_the_budget_and_all_finish() {
        let b = ByteBudget::new(BATCH_BUDGET_BYTES);
        let peak = Rc::new(Cell::new(0u64));
        let done = Rc::new(Cell::new(0u32));
        let mut downloads: Vec<Pin<Box<dyn Future<Output = ()> + '_>>> = (0..10u32)
            .map(|n| {
                let (b, peak, done) = (&b, peak.clone(), done.clone());
                // some say their length, some do not (and hold the cap until read)
                let declared = if n % 3 == 0 { None } else { Some(20 * MIB) };
                Box::pin(async move {
                    Yield(n % 4).await; // headers arrive
                    let mut permit = b.acquire(declared.unwrap_or(20 * MIB)).await;
                    peak.set(peak.get().max(b.held()));
                    Yield(3).await; // the body is read
                    permit.shrink_to(18 * MIB);
                    Yield(2).await; // written to R2
                    drop(permit);
                    done.set(done.get() + 1);
                }) as Pin<Box<dyn Future<Output = ()>>>
            })
            .collect();
        let (_, w) = waker();
        let mut cx = Context::from_waker(&w);
        let mut finished = vec![false; downloads.len()];
        for _round in 0..1000 {
            for (f, fin) in downloads.iter_mut().zip(finished.iter_mut()) {
                if !*fin && f.as_mut().poll(&mut cx).is_ready() {
                    *fin = true;
                }
            }
            if finished.iter().all(|f| *f) {
                break;
            }
        }
        assert_eq!(done.get(), 10, "every download finishes");
        assert!(peak.get() <= BATCH_BUDGET_BYTES, "peak {}", peak.get());
        assert!(peak.get() >= 40 * MIB, "downloads do run side by side");
        assert_eq!(b.held(), 0);
    }
}
