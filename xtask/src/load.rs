//! The benchmark's load generator: requests from `concurrency` client threads over loopback,
//! each thread on one keep-alive connection, every latency recorded. Error responses are counted
//! apart (by status) and never mixed into the latencies. Several targets can be driven at once
//! ([`together`]) so that they are measured under the same conditions: each keeps sending until
//! every target has sent its share.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct Request {
    pub method: &'static str,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
}

impl Request {
    pub fn get(url: String) -> Self {
        Request {
            method: "GET",
            url,
            headers: vec![],
            body: None,
        }
    }
}

/// One request: when it was sent (ms after the run started), its status and, if asked for, the
/// body.
pub struct Sample {
    pub offset_ms: u64,
    pub status: u16,
    pub body: Option<String>,
}

/// What one load run measured.
pub struct Load {
    /// Latencies in milliseconds of the responses with the expected status, sorted.
    pub latencies_ms: Vec<f64>,
    pub samples: Vec<Sample>,
    /// Responses whose status was not the expected one, by status (0: no response).
    pub errors: BTreeMap<u16, usize>,
    pub wall: Duration,
    /// When the first request was sent (ms since the epoch, this machine's clock).
    pub started_ms: u64,
}

impl Load {
    pub fn error_count(&self) -> usize {
        self.errors.values().sum()
    }

    /// A percentile of the successful latencies; an error when there are none.
    pub fn percentile(&self, p: f64) -> Result<f64, String> {
        if self.latencies_ms.is_empty() {
            return Err(format!(
                "no successful responses to take a percentile of ({} errors: {:?})",
                self.error_count(),
                self.errors
            ));
        }
        Ok(percentile(&self.latencies_ms, p))
    }

    /// Successful responses per second of wall time.
    pub fn per_second(&self) -> f64 {
        self.latencies_ms.len() as f64 / self.wall.as_secs_f64().max(1e-9)
    }
}

/// Nearest-rank percentile of sorted values (NaN for none: callers check first).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    // the smallest value with at least p of all values at or below it
    let n = sorted.len();
    let rank = (0..n)
        .find(|i| (i + 1) as f64 >= p * n as f64)
        .unwrap_or(n - 1);
    sorted[rank]
}

/// One target of a load run.
pub struct Target<'a> {
    pub concurrency: usize,
    /// At least this many requests.
    pub total: usize,
    pub expect: u16,
    pub make: &'a (dyn Fn(usize) -> Request + Sync),
    pub keep_bodies: bool,
}

/// Sends `total` requests (`make(i)` builds the i-th) from `concurrency` threads; a response
/// other than `expect` counts as an error. Bounded by `limit` overall.
pub fn run(
    concurrency: usize,
    total: usize,
    expect: u16,
    limit: Duration,
    make: &(dyn Fn(usize) -> Request + Sync),
    keep_bodies: bool,
) -> Load {
    together(
        &[Target {
            concurrency,
            total,
            expect,
            make,
            keep_bodies,
        }],
        limit,
    )
    .pop()
    .unwrap_or_else(|| Load {
        latencies_ms: vec![],
        samples: vec![],
        errors: BTreeMap::from([(0, total)]),
        wall: Duration::ZERO,
        started_ms: e2e::now_ms(),
    })
}

/// Drives every target at the same time, each with its own client threads. A target that has
/// sent its `total` keeps sending until every target has, so all of them are measured beside
/// the same load for the whole run. Bounded by `limit` overall.
pub fn together(targets: &[Target<'_>], limit: Duration) -> Vec<Load> {
    let finished = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let handles: Vec<_> = targets
            .iter()
            .map(|t| {
                let finished = &finished;
                scope.spawn(move || drive(t, limit, finished, targets.len()))
            })
            .collect();
        handles.into_iter().filter_map(|h| h.join().ok()).collect()
    })
}

fn drive(t: &Target<'_>, limit: Duration, finished: &AtomicUsize, targets: usize) -> Load {
    let next = AtomicUsize::new(0);
    let reached = std::sync::atomic::AtomicBool::new(false);
    let results = Mutex::new((Vec::new(), Vec::new(), BTreeMap::new()));
    let started_ms = e2e::now_ms();
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..t.concurrency.max(1) {
            scope.spawn(|| {
                let agent = ureq::AgentBuilder::new()
                    .timeout(Duration::from_secs(30))
                    .max_idle_connections_per_host(1)
                    .build();
                let (mut mine, mut samples, mut errors) = (Vec::new(), Vec::new(), BTreeMap::new());
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= t.total && !reached.swap(true, Ordering::SeqCst) {
                        finished.fetch_add(1, Ordering::SeqCst);
                    }
                    if (i >= t.total && finished.load(Ordering::SeqCst) >= targets)
                        || started.elapsed() > limit
                    {
                        break;
                    }
                    let r = (t.make)(i);
                    let mut req = agent.request(r.method, &r.url);
                    for (k, v) in &r.headers {
                        req = req.set(k, v);
                    }
                    let sent = Instant::now();
                    // the body is read either way, so the connection is reused
                    let (status, body) = match match r.body {
                        Some(b) => req.send_bytes(&b),
                        None => req.call(),
                    } {
                        Ok(resp) | Err(ureq::Error::Status(_, resp)) => {
                            (resp.status(), resp.into_string().unwrap_or_default())
                        }
                        Err(ureq::Error::Transport(_)) => (0, String::new()),
                    };
                    let took = sent.elapsed().as_secs_f64() * 1000.0;
                    if status == t.expect {
                        mine.push(took);
                    } else {
                        *errors.entry(status).or_insert(0usize) += 1;
                    }
                    samples.push(Sample {
                        offset_ms: u64::try_from(sent.duration_since(started).as_millis())
                            .unwrap_or(0),
                        status,
                        body: t.keep_bodies.then_some(body),
                    });
                }
                let mut all = results
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                all.0.extend(mine);
                all.1.extend(samples);
                for (s, n) in errors {
                    *all.2.entry(s).or_insert(0) += n;
                }
            });
        }
    });
    let wall = started.elapsed();
    let (mut latencies_ms, samples, errors) = results
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    latencies_ms.sort_by(f64::total_cmp);
    Load {
        latencies_ms,
        samples,
        errors,
        wall,
        started_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v, 1.0), 100.0);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
        assert!(percentile(&[], 0.5).is_nan());
    }
}
