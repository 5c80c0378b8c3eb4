//! The benchmark's load generator: a fixed number of requests from `concurrency` client threads
//! over loopback, each thread on one keep-alive connection, every latency recorded.

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

/// One request: when it was sent (ms after the run started) and, if asked for, the body.
pub struct Sample {
    pub offset_ms: u64,
    pub body: Option<String>,
}

/// What one load run measured.
pub struct Load {
    /// Latencies in milliseconds, sorted.
    pub latencies_ms: Vec<f64>,
    pub samples: Vec<Sample>,
    /// Responses whose status was not the expected one (or no response).
    pub errors: usize,
    pub wall: Duration,
    /// When the first request was sent (ms since the epoch, this machine's clock).
    pub started_ms: u64,
}

impl Load {
    pub fn percentile(&self, p: f64) -> f64 {
        percentile(&self.latencies_ms, p)
    }
    pub fn per_second(&self) -> f64 {
        self.latencies_ms.len() as f64 / self.wall.as_secs_f64().max(1e-9)
    }
}

/// Nearest-rank percentile of sorted values.
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

/// Sends `total` requests (`make(i)` builds the i-th) from `concurrency` threads; a response
/// other than `expect` counts as an error. Bounded by `limit` overall. `keep_bodies` keeps every
/// response body in the samples.
pub fn run(
    concurrency: usize,
    total: usize,
    expect: u16,
    limit: Duration,
    make: &(dyn Fn(usize) -> Request + Sync),
    keep_bodies: bool,
) -> Load {
    let next = AtomicUsize::new(0);
    let results = Mutex::new((Vec::with_capacity(total), Vec::with_capacity(total), 0usize));
    let started_ms = e2e::now_ms();
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..concurrency.max(1) {
            scope.spawn(|| {
                let agent = ureq::AgentBuilder::new()
                    .timeout(Duration::from_secs(30))
                    .max_idle_connections_per_host(1)
                    .build();
                let (mut mine, mut samples, mut errors) = (Vec::new(), Vec::new(), 0);
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= total || started.elapsed() > limit {
                        break;
                    }
                    let r = make(i);
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
                    mine.push(sent.elapsed().as_secs_f64() * 1000.0);
                    let offset_ms =
                        u64::try_from(sent.duration_since(started).as_millis()).unwrap_or(0);
                    samples.push(Sample {
                        offset_ms,
                        body: keep_bodies.then_some(body),
                    });
                    if status != expect {
                        errors += 1;
                    }
                }
                let mut all = results
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                all.0.extend(mine);
                all.1.extend(samples);
                all.2 += errors;
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
