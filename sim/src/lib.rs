//! A kie.ai simulator: `POST .../generate`, `GET .../record-info` and result images, in the
//! shapes of kie.ai's API (GPT-4o image and Flux Kontext), so the pipeline runs offline and the
//! same worker code can point at the real service.
//!
//! Knobs ([`Knobs`], also `POST /_sim/knobs`) make it slow or flaky for everyone; directives in a
//! prompt make one task behave: `[sim:fail]` (generation fails), `[sim:refuse]` (create refused
//! as a content-policy violation), `[sim:stuck]` (never finishes), `[sim:slow=MS]`,
//! `[sim:flaky=N]` (N% of this task's calls answer 503, evenly spaced so runs are repeatable;
//! `heal` ends it). When a create names a `callBackUrl`, the simulator posts kie.ai's callback
//! there once the task ends, signed when `webhook_secret` is set. `GET /_sim/stats` reports
//! what was called.

mod png;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::Read;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tiny_http::{Header, Method, Request, Response, Server};

/// Behaviour for all tasks.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Knobs {
    /// How long a generation takes.
    pub generation_ms: u64,
    /// Share of API calls (create, record-info) answered with HTTP 503, from 0.0 to 1.0.
    pub api_fail_rate: f64,
    /// Share of result downloads answered with HTTP 503.
    pub download_fail_rate: f64,
    /// Extra time before a result download answers.
    pub download_delay_ms: u64,
    /// Every task stays GENERATING.
    pub stuck: bool,
    /// Post callbacks to `callBackUrl` when tasks end.
    pub callbacks: bool,
    /// Sign callbacks like kie.ai (`X-Webhook-Timestamp`, `X-Webhook-Signature`).
    pub webhook_secret: Option<String>,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            generation_ms: 1000,
            api_fail_rate: 0.0,
            download_fail_rate: 0.0,
            download_delay_ms: 0,
            stuck: false,
            callbacks: true,
            webhook_secret: None,
        }
    }
}

/// What the simulator was asked, for tests.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Stats {
    pub creates: u64,
    pub record_infos: u64,
    pub downloads: u64,
    pub injected_failures: u64,
    /// Create calls per prompt: a duplicate submission shows up here as 2.
    pub creates_by_prompt: HashMap<String, u64>,
    /// Input image URLs received per prompt.
    pub inputs_by_prompt: HashMap<String, Vec<String>>,
    /// Callbacks posted, per prompt: (URL, body, HTTP status the API answered).
    pub callbacks_by_prompt: HashMap<String, Vec<(String, String, u16)>>,
    /// Calls that failed because of a `[sim:flaky=N]` directive, per prompt.
    pub flaky_failures_by_prompt: HashMap<String, u64>,
    /// Creem checkouts created: request id -> `{id, body}` (the checkout id and the create body).
    pub checkouts: HashMap<String, Value>,
}

#[derive(Debug, Clone)]
enum Behaviour {
    Normal,
    Fail,
    Stuck,
    Slow(u64),
}

#[derive(Debug, Clone)]
struct Job {
    prompt: String,
    started: Instant,
    behaviour: Behaviour,
}

#[derive(Default)]
struct State {
    knobs: Knobs,
    stats: Stats,
    jobs: HashMap<String, Job>,
    seq: u64,
    rng: u64,
    /// Calls seen per flaky prompt, to space its failures evenly.
    flaky_calls: HashMap<String, u64>,
    healed: std::collections::HashSet<String>,
}

/// The N in a `[sim:flaky=N]` directive.
fn flaky_rate(prompt: &str) -> Option<u64> {
    prompt
        .split("[sim:flaky=")
        .nth(1)
        .and_then(|r| r.split(']').next())
        .and_then(|n| n.parse().ok())
}

impl State {
    /// Whether this call for a flaky prompt fails: call i fails when floor((i+1)N/100) grows,
    /// so N% of calls fail, spread evenly (50 fails every second call, 100 every call).
    fn flaky(&mut self, prompt: &str) -> bool {
        let Some(rate) = flaky_rate(prompt).filter(|_| !self.healed.contains(prompt)) else {
            return false;
        };
        let calls = self.flaky_calls.entry(prompt.to_owned()).or_default();
        let i = *calls;
        *calls += 1;
        let fails = (i + 1) * rate / 100 > i * rate / 100;
        if fails {
            *self
                .stats
                .flaky_failures_by_prompt
                .entry(prompt.to_owned())
                .or_default() += 1;
        }
        fails
    }

    /// Deterministic coin flips, so a run with the same calls fails the same calls.
    fn roll(&mut self, rate: f64) -> bool {
        if rate <= 0.0 {
            return false;
        }
        self.rng = self
            .rng
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let hit = ((self.rng >> 33) as f64 / f64::from(1u32 << 31)) < rate;
        if hit {
            self.stats.injected_failures += 1;
        }
        hit
    }
}

pub struct Sim {
    port: u16,
    state: Arc<Mutex<State>>,
}

/// The image the simulator serves as result `n` of a task with this prompt.
pub fn result_png(prompt: &str, n: usize) -> Vec<u8> {
    let mut seed: u64 = 1469598103934665603;
    for b in prompt.bytes().chain(n.to_le_bytes()) {
        seed = (seed ^ u64::from(b)).wrapping_mul(1_099_511_628_211);
    }
    png::png(seed, 16)
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Sim {
    /// Starts on 127.0.0.1:`port` (0 for any free port), serving from a few threads.
    pub fn start(port: u16) -> Result<Sim, String> {
        let server = Server::http(("127.0.0.1", port))
            .map_err(|e| format!("sim: cannot listen on {port}: {e}"))?;
        let port = server
            .server_addr()
            .to_ip()
            .map(|a| a.port())
            .ok_or("sim: no address")?;
        let server = Arc::new(server);
        let state = Arc::new(Mutex::new(State {
            rng: 0x5eed,
            ..State::default()
        }));
        for _ in 0..8 {
            let server = server.clone();
            let state = state.clone();
            std::thread::spawn(move || {
                while let Ok(req) = server.recv() {
                    handle(req, &state, port);
                }
            });
        }
        Ok(Sim { port, state })
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn stats(&self) -> Stats {
        lock(&self.state).stats.clone()
    }

    pub fn set_knobs(&self, knobs: Knobs) {
        lock(&self.state).knobs = knobs;
    }

    /// Fixes whatever fault a prompt's directives ask for: later calls for it behave normally.
    pub fn heal(&self, prompt: &str) {
        lock(&self.state).healed.insert(prompt.to_owned());
    }
}

/// Headers here are static ASCII, which tiny_http always accepts.
#[allow(clippy::expect_used)]
fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("static ASCII header")
}

fn reply_json(req: Request, status: u16, body: &Value) {
    let resp = Response::from_string(body.to_string())
        .with_status_code(status)
        .with_header(header("content-type", "application/json"));
    let _ = req.respond(resp);
}

/// Posts kie.ai's callback for a finished task after its generation time, as kie.ai does,
/// and records what the API answered.
#[allow(clippy::too_many_arguments)]
fn post_callback(
    state: &Arc<Mutex<State>>,
    port: u16,
    url: &str,
    id: &str,
    prompt: &str,
    kontext: bool,
    failed: bool,
    generation_ms: u64,
) {
    std::thread::sleep(Duration::from_millis(generation_ms + 50));
    let result = format!("http://127.0.0.1:{port}/results/{id}/0.png");
    let body = match (failed, kontext) {
        (true, _) => {
            json!({"code": 501, "msg": "generation failed (simulated)", "data": {"taskId": id, "info": null}})
        }
        (false, false) => {
            json!({"code": 200, "msg": "success", "data": {"taskId": id, "info": {"result_urls": [result]}}})
        }
        (false, true) => {
            json!({"code": 200, "msg": "success", "data": {"taskId": id, "info": {"resultImageUrl": result}}})
        }
    };
    let secret = lock(state).knobs.webhook_secret.clone();
    let mut req = ureq::post(url)
        .timeout(Duration::from_secs(10))
        .set("content-type", "application/json");
    if let Some(secret) = secret {
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
            .to_string();
        let sig = shared::signing::kie_callback_signature(secret.as_bytes(), id, &ts);
        req = req
            .set("x-webhook-timestamp", &ts)
            .set("x-webhook-signature", &sig);
    }
    let status = match req.send_string(&body.to_string()) {
        Ok(r) => r.status(),
        Err(ureq::Error::Status(code, _)) => code,
        Err(_) => 0,
    };
    lock(state)
        .stats
        .callbacks_by_prompt
        .entry(prompt.to_owned())
        .or_default()
        .push((url.to_owned(), body.to_string(), status));
}

fn handle(mut req: Request, state: &Arc<Mutex<State>>, port: u16) {
    let url = req.url().to_owned();
    let (path, query) = url.split_once('?').unwrap_or((&url, ""));
    let path = path.to_owned();
    let param = |name: &str| {
        query.split('&').find_map(|kv| {
            kv.split_once('=')
                .filter(|(k, _)| *k == name)
                .map(|(_, v)| v.to_owned())
        })
    };
    let method = req.method().clone();
    let authorized = req.headers().iter().any(|h| {
        h.field.equiv("authorization")
            && h.value.as_str().starts_with("Bearer ")
            && h.value.as_str().len() > 7
    });
    let mut body = String::new();
    let _ = req.as_reader().take(1 << 20).read_to_string(&mut body);

    match (method, path.as_str()) {
        (Method::Get, "/_sim/stats") => {
            let stats = lock(state).stats.clone();
            reply_json(
                req,
                200,
                &serde_json::to_value(stats).unwrap_or(Value::Null),
            );
        }
        (Method::Post, "/_sim/knobs") => match serde_json::from_str::<Knobs>(&body) {
            Ok(k) => {
                lock(state).knobs = k;
                reply_json(req, 200, &json!({"ok": true}));
            }
            Err(e) => reply_json(req, 400, &json!({"error": e.to_string()})),
        },
        // Creem: create a checkout session
        (Method::Post, "/v1/checkouts") => {
            let keyed = req
                .headers()
                .iter()
                .any(|h| h.field.equiv("x-api-key") && !h.value.as_str().is_empty());
            if !keyed {
                return reply_json(req, 401, &json!({"error": "missing x-api-key"}));
            }
            let parsed: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            let Some(product) = parsed
                .get("product_id")
                .and_then(Value::as_str)
                .map(str::to_owned)
            else {
                return reply_json(req, 400, &json!({"error": "product_id is required"}));
            };
            let mut s = lock(state);
            s.seq += 1;
            let id = format!("ch_{:08}", s.seq);
            let request_id = parsed
                .get("request_id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            s.stats
                .checkouts
                .insert(request_id.clone(), json!({"id": id, "body": parsed}));
            drop(s);
            reply_json(
                req,
                200,
                &json!({"id": id, "object": "checkout", "mode": "test", "status": "pending", "product": product,
                        "request_id": request_id, "metadata": parsed.get("metadata"),
                        "checkout_url": format!("http://127.0.0.1:{port}/checkout/{id}")}),
            );
        }
        (Method::Post, "/api/v1/gpt4o-image/generate")
        | (Method::Post, "/api/v1/flux/kontext/generate") => {
            let kontext = path.contains("kontext");
            if !authorized {
                return reply_json(
                    req,
                    200,
                    &json!({"code": 401, "msg": "You do not have access permissions"}),
                );
            }
            let mut s = lock(state);
            let parsed: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            let Some(prompt) = parsed
                .get("prompt")
                .and_then(Value::as_str)
                .map(str::to_owned)
            else {
                drop(s);
                return reply_json(req, 200, &json!({"code": 422, "msg": "prompt is required"}));
            };
            let rate = s.knobs.api_fail_rate;
            if s.roll(rate) || s.flaky(&prompt) {
                drop(s);
                return reply_json(req, 503, &json!({"code": 503, "msg": "injected failure"}));
            }
            let inputs: Vec<String> = if kontext {
                parsed
                    .get("inputImage")
                    .and_then(Value::as_str)
                    .map(|u| vec![u.to_owned()])
                    .unwrap_or_default()
            } else {
                parsed
                    .get("filesUrl")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default()
            };
            s.stats.creates += 1;
            *s.stats.creates_by_prompt.entry(prompt.clone()).or_default() += 1;
            s.stats.inputs_by_prompt.insert(prompt.clone(), inputs);
            // a healed prompt behaves normally: the fault it asked for is fixed
            let healed = s.healed.contains(&prompt);
            if prompt.contains("[sim:refuse]") && !healed {
                drop(s);
                return reply_json(
                    req,
                    200,
                    &json!({"code": 400, "msg": "The content violates our content policy"}),
                );
            }
            let behaviour = if healed {
                Behaviour::Normal
            } else if prompt.contains("[sim:fail]") {
                Behaviour::Fail
            } else if prompt.contains("[sim:stuck]") {
                Behaviour::Stuck
            } else if let Some(ms) = prompt
                .split("[sim:slow=")
                .nth(1)
                .and_then(|r| r.split(']').next())
                .and_then(|m| m.parse().ok())
            {
                Behaviour::Slow(ms)
            } else {
                Behaviour::Normal
            };
            s.seq += 1;
            let id = format!("{}{:08}", if kontext { "kx" } else { "4o" }, s.seq);
            let generation = match behaviour {
                Behaviour::Slow(ms) => ms,
                _ => s.knobs.generation_ms,
            };
            let callback = parsed
                .get("callBackUrl")
                .and_then(Value::as_str)
                .map(str::to_owned);
            let will_finish = !s.knobs.stuck && !matches!(behaviour, Behaviour::Stuck);
            let send_callback = s.knobs.callbacks && will_finish;
            let failed = matches!(behaviour, Behaviour::Fail);
            s.jobs.insert(
                id.clone(),
                Job {
                    prompt: prompt.clone(),
                    started: Instant::now(),
                    behaviour,
                },
            );
            drop(s);
            reply_json(
                req,
                200,
                &json!({"code": 200, "msg": "success", "data": {"taskId": id}}),
            );
            if let (true, Some(url)) = (send_callback, callback) {
                let state = Arc::clone(state);
                std::thread::spawn(move || {
                    post_callback(
                        &state, port, &url, &id, &prompt, kontext, failed, generation,
                    )
                });
            }
        }
        (Method::Get, "/api/v1/gpt4o-image/record-info")
        | (Method::Get, "/api/v1/flux/kontext/record-info") => {
            let kontext = path.contains("kontext");
            if !authorized {
                return reply_json(
                    req,
                    200,
                    &json!({"code": 401, "msg": "You do not have access permissions"}),
                );
            }
            let mut s = lock(state);
            s.stats.record_infos += 1;
            let Some(job) = param("taskId").and_then(|id| s.jobs.get(&id).cloned()) else {
                drop(s);
                return reply_json(req, 200, &json!({"code": 404, "msg": "task not found"}));
            };
            let rate = s.knobs.api_fail_rate;
            if s.roll(rate) || s.flaky(&job.prompt) {
                drop(s);
                return reply_json(req, 503, &json!({"code": 503, "msg": "injected failure"}));
            }
            let id = param("taskId").unwrap_or_default();
            let generation = Duration::from_millis(match job.behaviour {
                Behaviour::Slow(ms) => ms,
                _ => s.knobs.generation_ms,
            });
            let stuck = s.knobs.stuck || matches!(job.behaviour, Behaviour::Stuck);
            drop(s);
            let done = !stuck && job.started.elapsed() >= generation;
            let url = format!("http://127.0.0.1:{port}/results/{id}/0.png");
            let data = match (kontext, done, &job.behaviour) {
                (_, false, _) => {
                    if kontext {
                        json!({"taskId": id, "successFlag": 0})
                    } else {
                        json!({"taskId": id, "status": "GENERATING", "progress": "0.50"})
                    }
                }
                (false, true, Behaviour::Fail) => {
                    json!({"taskId": id, "status": "GENERATE_FAILED", "errorCode": 400, "errorMessage": "generation failed (simulated)"})
                }
                (true, true, Behaviour::Fail) => {
                    json!({"taskId": id, "successFlag": 3, "errorCode": 400, "errorMessage": "generation failed (simulated)"})
                }
                (false, true, _) => {
                    json!({"taskId": id, "status": "SUCCESS", "progress": "1.00", "successFlag": 1, "response": {"resultUrls": [url]}})
                }
                (true, true, _) => {
                    json!({"taskId": id, "successFlag": 1, "response": {"resultImageUrl": url, "originImageUrl": url}})
                }
            };
            reply_json(
                req,
                200,
                &json!({"code": 200, "msg": "success", "data": data}),
            );
        }
        (Method::Get, p) if p.starts_with("/results/") => {
            let mut parts = p.trim_start_matches("/results/").split('/');
            let (id, file) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let n: usize = file.trim_end_matches(".png").parse().unwrap_or(usize::MAX);
            let mut s = lock(state);
            s.stats.downloads += 1;
            let job = s.jobs.get(id).cloned();
            let rate = s.knobs.download_fail_rate;
            let flaky = match &job {
                Some(j) => s.flaky(&j.prompt),
                None => false,
            };
            if s.roll(rate) || flaky {
                drop(s);
                return reply_json(req, 503, &json!({"error": "injected failure"}));
            }
            let delay = s.knobs.download_delay_ms;
            drop(s);
            std::thread::sleep(Duration::from_millis(delay));
            match job {
                Some(job) if n == 0 => {
                    let resp = Response::from_data(result_png(&job.prompt, n))
                        .with_header(header("content-type", "image/png"));
                    let _ = req.respond(resp);
                }
                _ => reply_json(req, 404, &json!({"error": "no such result"})),
            }
        }
        _ => reply_json(req, 404, &json!({"code": 404, "msg": "not found"})),
    }
}
