//! The fault campaign (issue 11): a seeded, reproducible run of the whole local stack under
//! faults, ended by recovery and an audit of the money.
//!
//! Random users buy packs, subscribe, renew, cancel and get refunds while submitting tasks. Every
//! signed Creem webhook is delivered one to three times, shuffled out of order, some of them late;
//! `task.submit` messages are duplicated by hand; the provider simulator fails, stalls and calls
//! back late; the stack is killed (SIGKILL) and restarted on its state mid-run, and once started
//! with a broken consumer configuration for a while, then fixed. The simulator keeps running
//! across restarts, as the real provider would.
//!
//! At the end the operators' recovery jobs run until every task is completed or failed and no
//! event is left `received`; then the auditor must report no violation, every user's balance must
//! equal the model this test keeps (every paid order granted once, every refund clawed back,
//! every completed task charged once), and the provider must have been asked to create each task
//! at most once (exactly once for every completed task).
//!
//! `CAMPAIGN_SEED=<u64>` replays a run (the seed is printed at the start and in every failure);
//! `CAMPAIGN_SCALE=large` runs five times as much. `E2E_KEEP_STATE=1` keeps the stack's state.

use e2e::client::{Client, Reply};
use e2e::creem;
use e2e::stack::{Stack, StackOptions, ADMIN_TOKEN, CREEM_WEBHOOK_SECRET};
use libtest_mimic::{Arguments, Failed, Trial};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

const DAY: i64 = 86_400;
const PERIOD: i64 = 30 * DAY;
const ACTOR: &str = "campaign";
/// How long the consumer runs with its broken configuration.
const BROKEN_WINDOW: Duration = Duration::from_secs(20);
/// How often the run plays the scheduler: `reconcile_tasks` and `reconcile_events`.
const TICK: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------------
// Seed and randomness
// ---------------------------------------------------------------------------------------------

/// SplitMix64: small, fast, and the same sequence for the same seed everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    fn below(&mut self, n: usize) -> usize {
        let n64 = u64::try_from(n).unwrap_or(u64::MAX);
        if n64 == 0 {
            return 0;
        }
        usize::try_from(self.next() % n64).unwrap_or(0)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    fn shuffle<T>(&mut self, xs: &mut [T]) {
        for i in (1..xs.len()).rev() {
            let j = self.below(i + 1);
            xs.swap(i, j);
        }
    }

    /// An index chosen with the given weights.
    fn weighted(&mut self, weights: &[u32]) -> usize {
        let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
        if total == 0 {
            return 0;
        }
        let mut roll = self.next() % total;
        for (i, w) in weights.iter().enumerate() {
            let w = u64::from(*w);
            if roll < w {
                return i;
            }
            roll -= w;
        }
        weights.len().saturating_sub(1)
    }

    fn millis(&mut self, lo: usize, hi: usize) -> Duration {
        Duration::from_millis(u64::try_from(self.range(lo, hi)).unwrap_or(0))
    }
}

fn seed_from_env() -> Result<u64, String> {
    match std::env::var("CAMPAIGN_SEED") {
        Ok(raw) => {
            let raw = raw.trim();
            let parsed = match raw.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => raw.parse(),
            };
            parsed.map_err(|e| format!("CAMPAIGN_SEED={raw:?} is not a u64: {e}"))
        }
        Err(_) => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let mut mix = Rng(u64::try_from(nanos % u128::from(u64::MAX)).unwrap_or(0)
                ^ u64::from(std::process::id()).rotate_left(32));
            // keep it short enough to type
            Ok(mix.next() % 1_000_000_000)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------------------------

struct Size {
    name: &'static str,
    users: usize,
    tasks: usize,
    events: usize,
    crashes: (usize, usize),
    recovery: Duration,
}

const SMALL: Size = Size {
    name: "small",
    users: 6,
    tasks: 30,
    events: 40,
    crashes: (1, 2),
    recovery: Duration::from_secs(6 * 60),
};

const LARGE: Size = Size {
    name: "large",
    users: 30,
    tasks: 150,
    events: 200,
    crashes: (2, 3),
    recovery: Duration::from_secs(15 * 60),
};

/// The catalogue as the migrations seed it (price in cents, credits per pack or per period).
struct Product {
    id: &'static str,
    creem: &'static str,
    price: i64,
    credits: i64,
    plan: bool,
}

const PACKS: [Product; 2] = [
    Product {
        id: "pack_starter",
        creem: "prod_pack_starter",
        price: 499,
        credits: 50,
        plan: false,
    },
    Product {
        id: "pack_large",
        creem: "prod_pack_large",
        price: 1999,
        credits: 250,
        plan: false,
    },
];

const PLANS: [Product; 2] = [
    Product {
        id: "pro_monthly",
        creem: "prod_pro_monthly",
        price: 1999,
        credits: 300,
        plan: true,
    },
    Product {
        id: "basic_monthly",
        creem: "prod_basic_monthly",
        price: 999,
        credits: 100,
        plan: true,
    },
];

struct User {
    id: String,
    token: String,
    start: i64,
    customer: String,
    sub: Option<usize>,
}

struct Order {
    user: usize,
    id: String,
    product: &'static Product,
    checkout: String,
    payment: Option<usize>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum PayKind {
    Pack,
    FirstPeriod,
    Renewal,
}

/// A payment the provider took: a pack's checkout, or one subscription period.
struct Payment {
    user: usize,
    order: usize,
    kind: PayKind,
    credits: i64,
    amount: i64,
    txn: String,
    provider_order: String,
    checkout: Option<String>,
    sub: Option<usize>,
    refunded: bool,
    /// The event that reports it paid (the one that grants).
    event: usize,
}

struct Sub {
    user: usize,
    order: usize,
    id: String,
    product: &'static Product,
    base: i64,
    /// (start, end, payment) per paid period, in order.
    periods: Vec<(i64, i64, usize)>,
    cancelled: bool,
}

struct Task {
    user: usize,
    id: String,
    model: &'static str,
    prompt: String,
    directive: &'static str,
    last: Value,
}

impl Task {
    fn status(&self) -> &str {
        self.last["status"].as_str().unwrap_or("")
    }
    fn done(&self) -> bool {
        matches!(self.status(), "completed" | "failed")
    }
}

/// One distinct webhook event.
struct Event {
    id: String,
    kind: &'static str,
    body: String,
    /// Successful deliveries so far.
    delivered: u32,
    /// For a refund: the event of the payment it refunds.
    refunds: Option<usize>,
}

/// One delivery still to make (an event has one to three).
#[derive(Clone, Copy)]
struct Delivery {
    event: usize,
    not_before: usize,
}

fn model_cost(model: &str) -> i64 {
    if model == "kie_kontext" {
        3
    } else {
        2
    }
}

/// ISO 8601 the way Creem writes it (milliseconds, UTC).
fn iso(secs: i64) -> String {
    format!("{}.000Z", shared::ids::iso8601(secs).trim_end_matches('Z'))
}

// ---------------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Fault {
    Crash,
    BrokenConsumer,
}

struct Campaign<'a> {
    stack: &'a mut Stack,
    c: Client,
    rng: Rng,
    size: &'static Size,
    run: String,
    seq: u64,
    users: Vec<User>,
    orders: Vec<Order>,
    payments: Vec<Payment>,
    subs: Vec<Sub>,
    tasks: Vec<Task>,
    submissions: usize,
    events: Vec<Event>,
    pool: Vec<Delivery>,
    step: usize,
    last_event_ms: i64,
    newest_delivered: Option<usize>,
    broken_until: Option<Instant>,
    last_tick: Instant,
    faults: BTreeMap<&'static str, u64>,
    actions: BTreeMap<&'static str, u64>,
    problems: Vec<String>,
}

impl Campaign<'_> {
    fn fault(&mut self, kind: &'static str, n: u64) {
        *self.faults.entry(kind).or_default() += n;
    }

    fn act(&mut self, kind: &'static str) {
        *self.actions.entry(kind).or_default() += 1;
    }

    fn id(&mut self, prefix: &str) -> String {
        self.seq += 1;
        format!("{prefix}_{}_{:05}", self.run, self.seq)
    }

    fn admin_post(&self, path: &str, body: &Value) -> Reply {
        self.c.send(
            "POST",
            path,
            Some(ADMIN_TOKEN),
            &[("x-actor", ACTOR)],
            Some(("application/json", body.to_string().as_bytes())),
        )
    }

    fn in_broken_window(&self) -> bool {
        self.broken_until.is_some()
    }

    fn progress(&self) -> f64 {
        let t = (self.submissions as f64 / self.size.tasks as f64).min(1.0);
        let e = (self.events.len() as f64 / self.size.events as f64).min(1.0);
        (t + e) / 2.0
    }

    fn targets_met(&self) -> bool {
        self.submissions >= self.size.tasks && self.events.len() >= self.size.events
    }

    // ----- users ---------------------------------------------------------------------------

    fn create_users(&mut self) {
        for i in 0..self.size.users {
            let start = i64::try_from(self.rng.range(10, 40)).unwrap_or(10);
            let (id, token) = self.c.new_user(ADMIN_TOKEN, start);
            let customer = format!("cust_{}_{i}", self.run);
            self.users.push(User {
                id,
                token,
                start,
                customer,
                sub: None,
            });
        }
    }

    // ----- tasks ---------------------------------------------------------------------------

    fn submit(&mut self, user: usize) -> Result<(), String> {
        let n = self.submissions;
        self.submissions += 1;
        let directive = match self.rng.weighted(&[60, 10, 15, 15]) {
            1 => "[sim:fail]",
            2 => "[sim:slow=4000]",
            3 => "[sim:flaky=30]",
            _ => "",
        };
        let model = if self.rng.chance(0.3) {
            "kie_kontext"
        } else {
            "kie_4o"
        };
        let prompt = format!(
            "campaign {} task {n}: a lighthouse at dawn {directive}",
            self.run
        )
        .trim_end()
        .to_owned();
        let key = format!("campaign-{}-{n}", self.run);
        let body = json!({"prompt": prompt, "model": model, "size": "1:1"}).to_string();
        if self.in_broken_window() {
            self.act("submissions_while_consumer_broken");
        }
        for _ in 0..6 {
            let r = self.c.send(
                "POST",
                "/api/tasks",
                Some(&self.users[user].token),
                &[("idempotency-key", &key)],
                Some(("application/json", body.as_bytes())),
            );
            match r.status {
                200..=202 => {
                    let id = r.json()["id"].as_str().unwrap_or_default().to_owned();
                    if id.is_empty() {
                        return Err(format!("submit answered without an id: {}", r.text()));
                    }
                    match directive {
                        "[sim:fail]" => self.fault("provider_generation_fails", 1),
                        "[sim:slow=4000]" => self.fault("provider_slow_4s", 1),
                        "[sim:flaky=30]" => self.fault("provider_flaky_30pct", 1),
                        _ => {}
                    }
                    self.act("tasks_accepted");
                    self.tasks.push(Task {
                        user,
                        id: id.clone(),
                        model,
                        prompt,
                        directive,
                        last: r.json(),
                    });
                    // sometimes the duplicate races the original message
                    if self.rng.chance(0.15) {
                        self.duplicate(&[id])?;
                    }
                    return Ok(());
                }
                402 => {
                    self.act("tasks_refused_402");
                    return Ok(());
                }
                0 | 429 | 500..=599 => {
                    self.act("submit_retried");
                    std::thread::sleep(Duration::from_secs(1));
                }
                s => return Err(format!("submit: {s} {}", r.text())),
            }
        }
        Err(format!("submit {key} kept failing"))
    }

    /// Sends `task.submit` again for tasks, as a duplicated queue delivery would.
    fn duplicate(&mut self, ids: &[String]) -> Result<(), String> {
        let messages: Vec<Value> = ids
            .iter()
            .map(|id| json!({"v": 1, "type": "task.submit", "task_id": id, "attempt": 0}))
            .collect();
        let r = self.admin_post(
            "/admin/queues/tasks/messages",
            &json!({"messages": messages}),
        );
        if r.status != 202 {
            return Err(format!(
                "duplicating task.submit: {} {}",
                r.status,
                r.text()
            ));
        }
        self.fault("queue_duplicate_task_submit", ids.len() as u64);
        Ok(())
    }

    fn duplicate_some(&mut self) -> Result<(), String> {
        let n = self.rng.range(1, 3).min(self.tasks.len());
        let mut ids = Vec::new();
        for _ in 0..n {
            let t = self.rng.below(self.tasks.len());
            ids.push(self.tasks[t].id.clone());
        }
        self.duplicate(&ids)
    }

    // ----- payments ------------------------------------------------------------------------

    /// A strictly later event time than any before it.
    fn event_time(&mut self) -> i64 {
        let t = i64::try_from(e2e::now_ms())
            .unwrap_or(0)
            .max(self.last_event_ms + 1);
        self.last_event_ms = t;
        t
    }

    /// Records an event and schedules its one to three deliveries, some of them late.
    fn emit(
        &mut self,
        kind: &'static str,
        created_ms: i64,
        object: Value,
        refunds: Option<usize>,
    ) -> usize {
        let id = self.id("evt");
        let body = creem::envelope(&id, kind, created_ms, object).to_string();
        let event = self.events.len();
        self.events.push(Event {
            id,
            kind,
            body,
            delivered: 0,
            refunds,
        });
        let copies = self.rng.range(1, 3);
        let first = if self.rng.chance(0.25) {
            self.fault("webhook_delayed", 1);
            self.step + self.rng.range(8, 25)
        } else {
            self.step
        };
        for k in 0..copies {
            let not_before = if k == 0 {
                first
            } else {
                first + self.rng.below(12)
            };
            self.pool.push(Delivery { event, not_before });
        }
        self.fault("webhook_extra_copies", copies as u64 - 1);
        event
    }

    fn create_order(&mut self, user: usize, product: &'static Product) -> Result<usize, String> {
        for _ in 0..4 {
            let r = self.c.post_json(
                "/api/orders",
                Some(&self.users[user].token),
                &json!({"product_id": product.id}),
            );
            match r.status {
                201 => {
                    let id = r.json()["order_id"].as_str().unwrap_or_default().to_owned();
                    let checkout = self
                        .stack
                        .sim
                        .stats()
                        .checkouts
                        .get(&id)
                        .and_then(|c| c["id"].as_str().map(str::to_owned))
                        .ok_or_else(|| format!("no checkout at the provider for order {id}"))?;
                    self.orders.push(Order {
                        user,
                        id,
                        product,
                        checkout,
                        payment: None,
                    });
                    self.act("orders_created");
                    return Ok(self.orders.len() - 1);
                }
                0 | 429 | 500..=599 => std::thread::sleep(Duration::from_secs(1)),
                s => return Err(format!("create order {}: {s} {}", product.id, r.text())),
            }
        }
        Err(format!("creating an order for {} kept failing", product.id))
    }

    /// The user pays at the provider's checkout: `checkout.completed`, and for a plan the
    /// first period's `subscription.paid`.
    fn pay(&mut self, order: usize) {
        let (user, product, order_id, checkout) = {
            let o = &self.orders[order];
            (o.user, o.product, o.id.clone(), o.checkout.clone())
        };
        let (user_id, customer) = (
            self.users[user].id.clone(),
            self.users[user].customer.clone(),
        );
        let txn = self.id("tran");
        let provider_order = self.id("ord_p");
        let t = self.event_time();
        let mut object = json!({
            "object": "checkout", "id": checkout, "request_id": order_id, "status": "completed",
            "order": {"object": "order", "id": provider_order, "transaction": txn, "amount": product.price,
                      "currency": "USD", "status": "paid", "type": if product.plan { "recurring" } else { "onetime" }},
            "product": {"id": product.creem, "billing_type": if product.plan { "recurring" } else { "onetime" }},
            "customer": {"id": customer, "email": "x@e2e.test"},
            "metadata": {"order_id": order_id, "user_id": user_id},
        });
        if !product.plan {
            let event = self.emit("checkout.completed", t, object, None);
            self.payments.push(Payment {
                user,
                order,
                kind: PayKind::Pack,
                credits: product.credits,
                amount: product.price,
                txn,
                provider_order,
                checkout: Some(checkout),
                sub: None,
                refunded: false,
                event,
            });
            self.orders[order].payment = Some(self.payments.len() - 1);
            self.act("packs_paid");
            return;
        }
        let sub_id = self.id("sub");
        object["subscription"] = json!({
            "object": "subscription", "id": sub_id, "status": "active", "product": product.creem,
            "customer": customer, "metadata": {"order_id": order_id, "user_id": user_id},
        });
        self.emit("checkout.completed", t, object, None);
        let base =
            e2e::now_secs() - i64::try_from(self.rng.range(3600, 2 * 86_400)).unwrap_or(3600);
        self.subs.push(Sub {
            user,
            order,
            id: sub_id,
            product,
            base,
            periods: Vec::new(),
            cancelled: false,
        });
        let sub = self.subs.len() - 1;
        self.users[user].sub = Some(sub);
        // Creem sends the first period's payment beside the checkout, sometimes in the same ms
        let t2 = if self.rng.chance(0.5) {
            self.fault("event_time_tie", 1);
            t
        } else {
            self.event_time()
        };
        let payment = self.period_paid(sub, t2, txn, provider_order, PayKind::FirstPeriod);
        self.orders[order].payment = Some(payment);
        self.act("subscriptions_paid");
    }

    fn sub_object(&self, sub: usize, status: &str, period: usize) -> Value {
        let s = &self.subs[sub];
        let (start, end, p) = s.periods[period];
        let pay = &self.payments[p];
        json!({
            "object": "subscription", "id": s.id, "status": status,
            "product": {"id": s.product.creem}, "customer": {"id": self.users[s.user].customer},
            "last_transaction_id": pay.txn,
            "last_transaction": {"object": "transaction", "id": pay.txn, "order": pay.provider_order,
                "amount": s.product.price, "currency": "USD", "type": "invoice", "status": "paid",
                "period_start": start * 1000, "period_end": end * 1000},
            "current_period_start_date": iso(start), "current_period_end_date": iso(end),
            "metadata": {"order_id": self.orders[s.order].id, "user_id": self.users[s.user].id},
        })
    }

    /// `subscription.paid` for the subscription's next period.
    fn period_paid(
        &mut self,
        sub: usize,
        t: i64,
        txn: String,
        provider_order: String,
        kind: PayKind,
    ) -> usize {
        let n = i64::try_from(self.subs[sub].periods.len()).unwrap_or(0);
        let start = self.subs[sub].base + n * PERIOD;
        let (user, order, product) = {
            let s = &self.subs[sub];
            (s.user, s.order, s.product)
        };
        self.payments.push(Payment {
            user,
            order,
            kind,
            credits: product.credits,
            amount: product.price,
            txn,
            provider_order,
            checkout: (kind == PayKind::FirstPeriod).then(|| self.orders[order].checkout.clone()),
            sub: Some(sub),
            refunded: false,
            event: usize::MAX,
        });
        let payment = self.payments.len() - 1;
        self.subs[sub]
            .periods
            .push((start, start + PERIOD, payment));
        let period = self.subs[sub].periods.len() - 1;
        let object = self.sub_object(sub, "active", period);
        let event = self.emit("subscription.paid", t, object, None);
        self.payments[payment].event = event;
        payment
    }

    fn renew(&mut self, sub: usize) {
        let txn = self.id("tran");
        let provider_order = self.id("ord_p");
        let t = self.event_time();
        self.period_paid(sub, t, txn, provider_order, PayKind::Renewal);
        self.act("renewals_paid");
    }

    fn cancel(&mut self, sub: usize) {
        let t = self.event_time();
        let last = self.subs[sub].periods.len() - 1;
        let mut object = self.sub_object(sub, "canceled", last);
        object["canceled_at"] = json!(iso(t / 1000));
        self.emit("subscription.canceled", t, object, None);
        self.subs[sub].cancelled = true;
        self.act("subscriptions_cancelled");
    }

    /// A full refund of one payment.
    fn refund(&mut self, payment: usize) {
        let t = self.event_time();
        let refund_id = self.id("ref");
        let p = &self.payments[payment];
        let mut object = json!({
            "object": "refund", "id": refund_id, "status": "succeeded",
            "refund_amount": p.amount, "refund_currency": "USD", "reason": "requested_by_customer",
            "transaction": {"object": "transaction", "id": p.txn, "order": p.provider_order,
                            "amount": p.amount, "currency": "USD", "status": "refunded"},
            "order": p.provider_order,
            "customer": self.users[p.user].customer,
        });
        if let Some(ch) = &p.checkout {
            object["checkout"] = json!(ch);
        }
        if let Some(s) = p.sub {
            object["subscription"] = json!(self.subs[s].id);
        }
        let granting = p.event;
        let kind = p.kind;
        self.emit("refund.created", t, object, Some(granting));
        self.payments[payment].refunded = true;
        self.act(match kind {
            PayKind::Pack => "refunds_of_packs",
            PayKind::FirstPeriod => "refunds_of_first_periods",
            PayKind::Renewal => "refunds_of_renewals",
        });
    }

    /// One business action that makes the provider send events.
    fn commerce(&mut self) -> Result<(), String> {
        let unpaid: Vec<usize> = (0..self.orders.len())
            .filter(|&o| self.orders[o].payment.is_none())
            .filter(|&o| {
                !self.orders[o].product.plan || self.users[self.orders[o].user].sub.is_none()
            })
            .collect();
        let free: Vec<usize> = (0..self.users.len())
            .filter(|&u| self.users[u].sub.is_none())
            .collect();
        let live: Vec<usize> = (0..self.subs.len())
            .filter(|&s| !self.subs[s].cancelled && self.subs[s].periods.len() < 4)
            .collect();
        let cancellable: Vec<usize> = (0..self.subs.len())
            // a subscription runs a couple of periods before it may be cancelled
            .filter(|&s| !self.subs[s].cancelled && self.subs[s].periods.len() >= 2)
            .collect();
        let refundable: Vec<usize> = (0..self.payments.len())
            .filter(|&p| !self.payments[p].refunded)
            .collect();
        let weights = [
            3,
            if unpaid.is_empty() { 0 } else { 4 },
            if free.is_empty() { 0 } else { 2 },
            if live.is_empty() { 0 } else { 3 },
            if cancellable.is_empty() { 0 } else { 1 },
            if refundable.is_empty() { 0 } else { 2 },
        ];
        match self.rng.weighted(&weights) {
            0 => {
                let user = self.rng.below(self.users.len());
                let product = &PACKS[self.rng.below(PACKS.len())];
                let order = self.create_order(user, product)?;
                if self.rng.chance(0.6) {
                    self.pay(order);
                }
            }
            1 => {
                let order = unpaid[self.rng.below(unpaid.len())];
                self.pay(order);
            }
            2 => {
                let user = free[self.rng.below(free.len())];
                let product = &PLANS[self.rng.below(PLANS.len())];
                let order = self.create_order(user, product)?;
                if self.rng.chance(0.7) {
                    self.pay(order);
                }
            }
            3 => {
                let sub = live[self.rng.below(live.len())];
                self.renew(sub);
            }
            4 => {
                let sub = cancellable[self.rng.below(cancellable.len())];
                self.cancel(sub);
            }
            _ => {
                // packs and renewals mostly; a plan's first (checkout) payment now and then
                let p = refundable[self.rng.below(refundable.len())];
                if self.payments[p].kind != PayKind::FirstPeriod || self.rng.chance(0.3) {
                    self.refund(p);
                }
            }
        }
        Ok(())
    }

    // ----- webhook deliveries --------------------------------------------------------------

    /// Delivers one copy; false when the provider would have to try again.
    fn deliver(&mut self, event: usize) -> Result<bool, String> {
        let r = creem::deliver_body(&self.c, &self.events[event].body, CREEM_WEBHOOK_SECRET);
        match r.status {
            200 => {
                if self.newest_delivered.is_some_and(|n| event < n) {
                    self.fault("webhook_out_of_order", 1);
                }
                self.newest_delivered = self.newest_delivered.max(Some(event));
                if let Some(paid) = self.events[event].refunds {
                    if self.events[event].delivered == 0 && self.events[paid].delivered == 0 {
                        self.fault("refund_before_its_payment", 1);
                    }
                }
                self.events[event].delivered += 1;
                if self.in_broken_window() {
                    self.act("deliveries_while_consumer_broken");
                }
                Ok(true)
            }
            0 | 429 | 500..=599 => {
                self.act("webhook_redelivered_after_error");
                Ok(false)
            }
            s => Err(format!(
                "webhook {} ({}) answered {s}: {}",
                self.events[event].id,
                self.events[event].kind,
                r.text()
            )),
        }
    }

    /// Delivers up to `max` of the deliveries that are due, in random order.
    fn deliver_some(&mut self, max: usize) -> Result<(), String> {
        let mut due: Vec<usize> = (0..self.pool.len())
            .filter(|&i| self.pool[i].not_before <= self.step)
            .collect();
        self.rng.shuffle(&mut due);
        due.truncate(max);
        let picked: Vec<Delivery> = due.iter().map(|&i| self.pool[i]).collect();
        due.sort_unstable_by(|a, b| b.cmp(a));
        for i in due {
            self.pool.swap_remove(i);
        }
        for d in picked {
            if !self.deliver(d.event)? {
                let later = self.step + self.rng.range(1, 4);
                self.pool.push(Delivery {
                    event: d.event,
                    not_before: later,
                });
            }
        }
        Ok(())
    }

    fn flush_deliveries(&mut self) -> Result<(), String> {
        for _ in 0..30 {
            if self.pool.is_empty() {
                return Ok(());
            }
            self.step += 1000;
            let n = self.pool.len();
            self.deliver_some(n)?;
            if !self.pool.is_empty() {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        Err(format!(
            "{} webhook deliveries still failing at the end",
            self.pool.len()
        ))
    }

    // ----- operators, scheduler, crashes ---------------------------------------------------

    fn cron(&self, job: &str) -> Result<Value, (u16, String)> {
        let r = self.admin_post(&format!("/admin/cron/{job}"), &json!({}));
        if r.status == 200 {
            Ok(r.json())
        } else {
            Err((
                r.status,
                format!("POST /admin/cron/{job}: {} {}", r.status, r.text()),
            ))
        }
    }

    /// What the five-minute cron does for recovery, played every `TICK` during the run.
    fn tick(&mut self) -> Result<(), String> {
        self.last_tick = Instant::now();
        for job in ["reconcile_tasks", "reconcile_events"] {
            match self.cron(job) {
                Ok(_) => self.act("cron_runs_during_the_run"),
                Err((404, e)) => return Err(format!("the job does not exist: {e}")),
                Err((0, _)) => self.act("cron_runs_unreachable"),
                Err((_, e)) => self.problems.push(format!("during the run: {e}")),
            }
        }
        Ok(())
    }

    /// Work in flight right before a kill: a few submissions and deliveries, then a pause so
    /// some of it is mid-create or mid-poll when the stack dies.
    fn put_work_in_flight(&mut self) -> Result<(), String> {
        for _ in 0..self.rng.range(2, 4) {
            let user = self.rng.below(self.users.len());
            self.submit(user)?;
        }
        self.deliver_some(3)?;
        std::thread::sleep(self.rng.millis(300, 2500));
        Ok(())
    }

    fn crash(&mut self) -> Result<(), String> {
        self.put_work_in_flight()?;
        let started = Instant::now();
        self.stack
            .restart(BTreeMap::new())
            .map_err(|e| format!("restarting after a crash: {e}"))?;
        self.fault("stack_crash_restart", 1);
        self.fault("stack_killed_sigkill", 1);
        println!(
            "  [{:>3.0}%] crash: stack killed and restarted on its state in {:.1}s",
            self.progress() * 100.0,
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }

    fn break_consumer(&mut self) -> Result<(), String> {
        self.put_work_in_flight()?;
        let started = Instant::now();
        let overrides: BTreeMap<String, String> =
            [("MAX_TRANSIENT_ATTEMPTS".to_owned(), "0".to_owned())].into();
        self.stack
            .restart(overrides)
            .map_err(|e| format!("restarting with a broken consumer: {e}"))?;
        self.fault("consumer_started_misconfigured", 1);
        self.fault("stack_killed_sigkill", 1);
        self.broken_until = Some(Instant::now() + BROKEN_WINDOW);
        println!(
            "  [{:>3.0}%] consumer restarted with MAX_TRANSIENT_ATTEMPTS=0 in {:.1}s; running {}s like that",
            self.progress() * 100.0,
            started.elapsed().as_secs_f64(),
            BROKEN_WINDOW.as_secs()
        );
        Ok(())
    }

    fn fix_consumer(&mut self) -> Result<(), String> {
        // evidence that the window was broken: the consumer's complaints since the restart
        let log = self.stack.log();
        let since = log.rfind("=== e2e: stack killed").map_or("", |i| &log[i..]);
        let complaints = since
            .lines()
            .skip(1)
            .filter(|l| l.contains("consumer.misconfigured"))
            .count();
        let started = Instant::now();
        self.stack
            .restart(BTreeMap::new())
            .map_err(|e| format!("restarting with the fixed consumer: {e}"))?;
        self.fault("stack_killed_sigkill", 1);
        self.broken_until = None;
        println!(
            "  [{:>3.0}%] consumer fixed and restarted in {:.1}s ({complaints} consumer.misconfigured log lines while broken{})",
            self.progress() * 100.0,
            started.elapsed().as_secs_f64(),
            if complaints == 0 { ": was it really broken?" } else { "" }
        );
        Ok(())
    }

    // ----- the run -------------------------------------------------------------------------

    fn drive(&mut self) -> Result<(), String> {
        let mut schedule: Vec<(f64, Fault)> = Vec::new();
        let crashes = self.rng.range(self.size.crashes.0, self.size.crashes.1);
        for _ in 0..crashes {
            schedule.push((0.12 + 0.78 * self.rng.unit(), Fault::Crash));
        }
        schedule.push((0.3 + 0.4 * self.rng.unit(), Fault::BrokenConsumer));
        schedule.sort_by(|a, b| a.0.total_cmp(&b.0));
        println!(
            "  schedule: {}",
            schedule
                .iter()
                .map(|(p, f)| format!("{f:?} at {:.0}%", p * 100.0))
                .collect::<Vec<_>>()
                .join(", ")
        );
        loop {
            self.step += 1;
            if self.last_tick.elapsed() >= TICK {
                self.tick()?;
            }
            match self.broken_until {
                Some(until) if Instant::now() >= until => self.fix_consumer()?,
                Some(_) => {}
                None => {
                    if schedule
                        .first()
                        .is_some_and(|(at, _)| self.progress() >= *at)
                    {
                        match schedule.remove(0).1 {
                            Fault::Crash => self.crash()?,
                            Fault::BrokenConsumer => self.break_consumer()?,
                        }
                    }
                }
            }
            if self.targets_met() && schedule.is_empty() && self.broken_until.is_none() {
                return Ok(());
            }
            let due = self.pool.iter().any(|d| d.not_before <= self.step);
            let weights = [
                if self.submissions < self.size.tasks {
                    4
                } else {
                    0
                },
                if self.events.len() < self.size.events {
                    3
                } else {
                    0
                },
                if due { 3 } else { 0 },
                if self.tasks.is_empty() { 0 } else { 1 },
                1,
            ];
            match self.rng.weighted(&weights) {
                0 => {
                    let user = self.rng.below(self.users.len());
                    self.submit(user)?;
                }
                1 => self.commerce()?,
                2 => {
                    let n = self.rng.range(1, 4);
                    self.deliver_some(n)?;
                }
                3 => self.duplicate_some()?,
                _ => self.act("idle_steps"),
            }
            std::thread::sleep(self.rng.millis(100, 700));
        }
    }

    fn refresh_tasks(&mut self) {
        for i in 0..self.tasks.len() {
            if self.tasks[i].done() {
                continue;
            }
            let r = self.c.get(
                &format!("/api/tasks/{}", self.tasks[i].id),
                Some(&self.users[self.tasks[i].user].token),
            );
            if r.status == 200 {
                self.tasks[i].last = r.json();
            }
        }
    }

    fn received_events(&self) -> Result<Vec<Value>, String> {
        let r = self.c.get(
            "/admin/webhook-events?status=received&limit=200",
            Some(ADMIN_TOKEN),
        );
        if r.status != 200 {
            return Err(format!(
                "listing received events: {} {}",
                r.status,
                r.text()
            ));
        }
        Ok(r.json()["webhook_events"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// Runs the recovery jobs until every task is final and no event is left `received`.
    fn recover(&mut self) -> Result<Duration, String> {
        let started = Instant::now();
        let mut last_print = Instant::now();
        loop {
            for job in ["reconcile_tasks", "reconcile_events"] {
                match self.cron(job) {
                    Ok(_) => self.act("cron_runs_in_recovery"),
                    Err((0, _)) => {}
                    Err((404, e)) => return Err(format!("the job does not exist: {e}")),
                    Err((_, e)) => {
                        let e = format!("in recovery: {e}");
                        if !self.problems.contains(&e) {
                            self.problems.push(e);
                        }
                    }
                }
            }
            self.refresh_tasks();
            let live: Vec<String> = self
                .tasks
                .iter()
                .filter(|t| !t.done())
                .map(|t| format!("{} ({})", t.id, t.status()))
                .collect();
            let received = self.received_events()?;
            if live.is_empty() && received.is_empty() {
                return Ok(started.elapsed());
            }
            if started.elapsed() > self.size.recovery {
                let events: Vec<String> = received
                    .iter()
                    .map(|e| {
                        format!(
                            "{} {} ({})",
                            e["event_id"].as_str().unwrap_or("?"),
                            e["event_type"].as_str().unwrap_or("?"),
                            e["error"].as_str().unwrap_or("")
                        )
                    })
                    .collect();
                return Err(format!(
                    "not recovered after {}s of recovery jobs: {} tasks not finished {live:?}; {} events still received {events:?}",
                    self.size.recovery.as_secs(),
                    live.len(),
                    received.len()
                ));
            }
            if last_print.elapsed() > Duration::from_secs(15) {
                println!(
                    "  recovering for {:.0}s: {} tasks live, {} events received",
                    started.elapsed().as_secs_f64(),
                    live.len(),
                    received.len()
                );
                last_print = Instant::now();
            }
            std::thread::sleep(Duration::from_secs(3));
        }
    }

    // ----- the verdict ---------------------------------------------------------------------

    fn expected_balance(&self, user: usize) -> i64 {
        let granted: i64 = self
            .payments
            .iter()
            .filter(|p| p.user == user && !p.refunded)
            .map(|p| p.credits)
            .sum();
        let spent: i64 = self
            .tasks
            .iter()
            .filter(|t| t.user == user && t.status() == "completed")
            .map(|t| t.last["cost"].as_i64().unwrap_or(0))
            .sum();
        self.users[user].start + granted - spent
    }

    fn breakdown(&self, user: usize) -> String {
        let pays: Vec<String> = self
            .payments
            .iter()
            .filter(|p| p.user == user)
            .map(|p| {
                format!(
                    "{:?} of order {} {} {}{} (event {})",
                    p.kind,
                    self.orders[p.order].id,
                    p.txn,
                    p.credits,
                    if p.refunded { " refunded" } else { "" },
                    self.events.get(p.event).map_or("?", |e| e.id.as_str())
                )
            })
            .collect();
        let tasks: Vec<String> = self
            .tasks
            .iter()
            .filter(|t| t.user == user)
            .map(|t| format!("{} {} {}", t.id, t.status(), t.last["cost"]))
            .collect();
        format!(
            "start {}; payments {pays:?}; tasks {tasks:?}",
            self.users[user].start
        )
    }

    fn check_balances(&mut self) {
        let mut wrong: Vec<(usize, i64, i64)> = Vec::new();
        let settle = Instant::now();
        loop {
            wrong.clear();
            for u in 0..self.users.len() {
                let want = self.expected_balance(u);
                let got = self.c.balance(&self.users[u].token);
                if got != want {
                    wrong.push((u, got, want));
                }
            }
            if wrong.is_empty() || settle.elapsed() > Duration::from_secs(15) {
                break;
            }
            std::thread::sleep(Duration::from_secs(2));
        }
        for (u, got, want) in wrong {
            let detail = self.breakdown(u);
            self.problems.push(format!(
                "user {} balance {got}, the model says {want}: {detail}",
                self.users[u].id
            ));
        }
    }

    fn check_tasks(&mut self) -> BTreeMap<u64, usize> {
        let creates = self.stack.sim.stats().creates_by_task;
        let mut histogram: BTreeMap<u64, usize> = BTreeMap::new();
        let ours: HashSet<&str> = self.tasks.iter().map(|t| t.id.as_str()).collect();
        let mut problems = Vec::new();
        for t in &self.tasks {
            let n = creates.get(&t.id).copied().unwrap_or(0);
            *histogram.entry(n).or_default() += 1;
            if n > 1 {
                problems.push(format!(
                    "task {} ({}, {:?}) was created at the provider {n} times",
                    t.id,
                    t.status(),
                    t.prompt
                ));
            }
            if t.status() == "completed" && n != 1 {
                problems.push(format!(
                    "completed task {} was created at the provider {n} times",
                    t.id
                ));
            }
            if t.status() == "completed" && t.last["cost"].as_i64() != Some(model_cost(t.model)) {
                problems.push(format!(
                    "completed task {} ({}) cost {}, want {}",
                    t.id,
                    t.model,
                    t.last["cost"],
                    model_cost(t.model)
                ));
            }
            if t.directive == "[sim:fail]" && t.status() != "failed" {
                problems.push(format!(
                    "task {} asked the provider to fail but ended {}",
                    t.id,
                    t.status()
                ));
            }
        }
        for (task, n) in &creates {
            if *n > 1 && !ours.contains(task.as_str()) {
                problems.push(format!(
                    "task {task} (not one of ours) was created {n} times"
                ));
            }
        }
        self.problems.extend(problems);
        histogram
    }

    fn check_orders_and_subscriptions(&mut self) {
        let mut problems = Vec::new();
        for o in &self.orders {
            // a refunded plan checkout: the order may say either (the README does not say)
            let want: &[&str] = match o.payment {
                None => &["pending"],
                Some(p) if self.payments[p].refunded && !o.product.plan => &["refunded"],
                Some(p) if self.payments[p].refunded => &["refunded", "completed"],
                Some(_) => &["completed"],
            };
            let r = self.c.get(
                &format!("/api/orders/{}", o.id),
                Some(&self.users[o.user].token),
            );
            let got = r.json()["status"].as_str().unwrap_or("").to_owned();
            if !want.contains(&got.as_str()) {
                problems.push(format!(
                    "order {} ({}) is {got:?}, want one of {want:?}: {}",
                    o.id,
                    o.product.id,
                    r.text()
                ));
            }
        }
        for s in &self.subs {
            let r = self
                .c
                .get("/api/subscription", Some(&self.users[s.user].token));
            let sub = &r.json()["subscription"];
            let want = if s.cancelled { "cancelled" } else { "active" };
            let end = s.periods.last().map(|p| p.1);
            if sub["status"].as_str() != Some(want) || sub["current_period_end"].as_i64() != end {
                problems.push(format!(
                    "subscription {} should be {want} until {end:?}: {}",
                    s.id,
                    r.text()
                ));
            }
        }
        let r = self.c.get(
            "/admin/webhook-events?status=rejected&limit=200",
            Some(ADMIN_TOKEN),
        );
        let ours: HashSet<&str> = self.events.iter().map(|e| e.id.as_str()).collect();
        for e in r.json()["webhook_events"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            if e["event_id"].as_str().is_some_and(|id| ours.contains(id)) {
                problems.push(format!("our event was rejected: {e}"));
            }
        }
        self.problems.extend(problems);
    }

    /// The auditor, through its route and as the scheduled job. Returns (ms, ledger rows).
    fn check_audit(&mut self) -> (Option<i64>, Option<i64>, Value) {
        let r = self.c.send(
            "GET",
            // the threshold the scheduled audit gets (AUDIT_STUCK_SECS)
            "/admin/audit?stuck_secs=60",
            Some(ADMIN_TOKEN),
            &[("x-actor", ACTOR)],
            None,
        );
        let report = r.json();
        let clean = r.status == 200
            && report["ok"] == json!(true)
            && report["violations"].as_array().is_some_and(Vec::is_empty);
        if !clean {
            self.problems.push(format!(
                "the auditor is not clean (HTTP {}):\n{}",
                r.status,
                serde_json::to_string_pretty(&report).unwrap_or_else(|_| r.text())
            ));
        }
        // the scheduled form: errors count an audit that could not run, violations its findings
        let job = match self.cron("audit_ledger") {
            Ok(v) => {
                let sum = &v["summary"];
                if sum["errors"].as_i64().is_some_and(|n| n > 0)
                    || sum["violations"].as_i64().is_some_and(|n| n > 0)
                    || sum["stopped_early"] == json!(true)
                {
                    self.problems
                        .push(format!("the audit_ledger job did not run clean: {v}"));
                }
                v
            }
            Err((_, e)) => {
                self.problems.push(e);
                Value::Null
            }
        };
        (report["ms"].as_i64(), report["ledger_rows"].as_i64(), job)
    }
}

fn campaign(stack: &mut Stack, seed: u64, size: &'static Size) -> Result<(), String> {
    let started = Instant::now();
    stack.sim.set_knobs(sim::Knobs {
        generation_ms: 1500,
        api_fail_rate: 0.1,
        download_fail_rate: 0.05,
        callbacks: true,
        ..sim::Knobs::default()
    });
    let c = stack.client();
    let mut run = Campaign {
        stack,
        c,
        rng: Rng(seed),
        size,
        run: format!("{seed:x}"),
        seq: 0,
        users: Vec::new(),
        orders: Vec::new(),
        payments: Vec::new(),
        subs: Vec::new(),
        tasks: Vec::new(),
        submissions: 0,
        events: Vec::new(),
        pool: Vec::new(),
        step: 0,
        last_event_ms: 0,
        newest_delivered: None,
        broken_until: None,
        last_tick: Instant::now(),
        faults: BTreeMap::new(),
        actions: BTreeMap::new(),
        problems: Vec::new(),
    };
    run.create_users();
    // the run, then recovery; a failure of either still gets the checks that can run and the
    // report, so a failing seed says as much as it can
    let mut fatal: Option<String> = None;
    let mut driven = None;
    let mut recovered = None;
    match run.drive().and_then(|()| run.flush_deliveries()) {
        Ok(()) => {
            driven = Some(started.elapsed());
            println!(
                "  driven in {:.0}s: {} submissions, {} events; recovering",
                started.elapsed().as_secs_f64(),
                run.submissions,
                run.events.len()
            );
            match run.recover() {
                Ok(d) => recovered = Some(d),
                Err(e) => fatal = Some(e),
            }
        }
        Err(e) => fatal = Some(e),
    }
    let mut audit = (None, None, Value::Null);
    let mut histogram = BTreeMap::new();
    if driven.is_some() {
        audit = run.check_audit();
        if recovered.is_some() {
            run.check_balances();
            histogram = run.check_tasks();
            run.check_orders_and_subscriptions();
        }
    }
    let (audit_ms, ledger_rows, audit_job) = audit;

    // what the provider went through, from the simulator's side
    let stats = run.stack.sim.stats();
    run.fault("provider_injected_503s", stats.injected_failures);
    run.fault(
        "provider_flaky_503s",
        stats.flaky_failures_by_prompt.values().sum(),
    );
    let callbacks: Vec<u16> = stats
        .callbacks_by_prompt
        .values()
        .flatten()
        .map(|c| c.2)
        .collect();
    run.fault(
        "provider_callbacks_not_accepted",
        callbacks.iter().filter(|s| **s != 200).count() as u64,
    );

    let completed = run
        .tasks
        .iter()
        .filter(|t| t.status() == "completed")
        .count();
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for t in run.tasks.iter().filter(|t| t.status() == "failed") {
        let reason = t.last["failure_reason"].as_str().unwrap_or("?").to_owned();
        *reasons.entry(reason).or_default() += 1;
    }
    println!("campaign seed {seed} ({}):", size.name);
    println!(
        "  size: {} users, {} submissions ({} accepted), {} events ({} deliveries), {} orders, {} payments ({} refunded), {} subscriptions",
        run.users.len(),
        run.submissions,
        run.tasks.len(),
        run.events.len(),
        run.events.iter().map(|e| u64::from(e.delivered)).sum::<u64>(),
        run.orders.len(),
        run.payments.len(),
        run.payments.iter().filter(|p| p.refunded).count(),
        run.subs.len()
    );
    println!("  faults by kind:");
    for (k, v) in &run.faults {
        println!("    {k}: {v}");
    }
    println!("  actions: {:?}", run.actions);
    println!(
        "  tasks: {completed} completed, {} failed {reasons:?}, {} not finished",
        reasons.values().sum::<usize>(),
        run.tasks.iter().filter(|t| !t.done()).count()
    );
    println!(
        "  provider creates per task (creates -> tasks): {histogram:?}; callbacks posted {}",
        callbacks.len()
    );
    let per_10k = match (audit_ms, ledger_rows) {
        (Some(ms), Some(rows)) if rows > 0 => format!(
            "{:.1} ms per 10,000 ledger rows",
            ms as f64 * 10_000.0 / rows as f64
        ),
        _ => "n/a".into(),
    };
    println!(
        "  auditor: {} ms over {} ledger rows ({per_10k}); audit_ledger job: {}",
        audit_ms.map_or("?".into(), |v| v.to_string()),
        ledger_rows.map_or("?".into(), |v| v.to_string()),
        audit_job["summary"]
    );
    let secs = |d: Option<Duration>| d.map_or("-".into(), |d| format!("{:.0}s", d.as_secs_f64()));
    println!(
        "  time: driven {}, recovered in {}, total {:.0}s",
        secs(driven),
        secs(recovered),
        started.elapsed().as_secs_f64()
    );
    let mut problems = run.problems.clone();
    if let Some(e) = fatal {
        problems.insert(0, e);
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} problems:\n  - {}",
            problems.len(),
            problems.join("\n  - ")
        ))
    }
}

fn run_campaign() -> Result<(), String> {
    let seed = seed_from_env()?;
    let size: &'static Size = match std::env::var("CAMPAIGN_SCALE").as_deref() {
        Ok("large") => &LARGE,
        Ok("small") | Ok("") | Err(_) => &SMALL,
        Ok(other) => return Err(format!("CAMPAIGN_SCALE={other:?}: small or large")),
    };
    let replay = format!(
        "CAMPAIGN_SEED={seed} CAMPAIGN_SCALE={} cargo test -p e2e --test campaign -- --nocapture",
        size.name
    );
    println!(
        "campaign: seed {seed}, scale {} (replay: {replay})",
        size.name
    );
    let mut options = StackOptions::default();
    for (k, v) in [
        ("TASK_LEASE_SECS", "20"),
        ("EVENT_LEASE_SECS", "20"),
        ("AUDIT_STUCK_SECS", "60"),
        ("TASK_DEADLINE_SECS", "240"),
    ] {
        options.vars.insert(k.into(), v.into());
    }
    let mut stack = Stack::start(options)
        .map_err(|e| format!("campaign seed {seed}: could not start the local stack: {e}"))?;
    if std::env::var_os("E2E_KEEP_STATE").is_some() {
        stack.keep_state();
        eprintln!("state kept in {}", stack.state_dir.display());
    }
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        campaign(&mut stack, seed, size)
    }));
    let failure = match outcome {
        Ok(Ok(())) => return Ok(()),
        Ok(Err(e)) => e,
        Err(panic) => format!(
            "panicked: {}",
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default()
        ),
    };
    stack.keep_state();
    eprintln!(
        "--- wrangler log (last 120 lines) ---\n{}\n--- the whole log and state are kept in {} ---",
        stack.log_tail(120),
        stack.state_dir.display()
    );
    Err(format!(
        "campaign seed {seed} ({}) failed: {failure}\nreplay: {replay}",
        size.name
    ))
}

fn main() {
    let args = Arguments::from_args();
    let trials = vec![Trial::test("campaign", || {
        run_campaign().map_err(Failed::from)
    })];
    libtest_mimic::run(&args, trials).exit()
}
