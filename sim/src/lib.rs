//! A kie.ai simulator: `POST .../generate`, `GET .../record-info` and result images, in the
//! shapes of kie.ai's API (GPT-4o image and Flux Kontext), so the pipeline runs offline and the
//! same worker code can point at the real service.
//!
//! Knobs ([`Knobs`], also `POST /_sim/knobs`) make it slow or flaky for everyone; directives in a
//! prompt make one task behave: `[sim:fail]` (generation fails), `[sim:refuse]` (create refused
//! as a content-policy violation), `[sim:stuck]` (never finishes), `[sim:forgotten]` (created,
//! then record-info answers kie.ai's 404 "task not found", as for an expired task), `[sim:slow=MS]`,
//! `[sim:flaky=N]` (N% of this task's calls answer 503, evenly spaced so runs are repeatable;
//! `heal` ends it). When a create names a `callBackUrl`, the simulator posts kie.ai's callback
//! there once the task ends, in the documented shape of its API, signed when `webhook_secret` is
//! set. `GET /_sim/stats` reports what was called.
//!
//! It is as strict as the real kie.ai: every create is checked against the documented schema
//! of its API (required fields, allowed values, types, no unknown fields), a record-info needs
//! its `taskId`, and every call needs a bearer token. What kie.ai would refuse is answered the
//! way kie.ai documents it (`{"code": 422 | 401, "msg": ..}`), printed on stderr and recorded
//! in [`Stats::refused`], so a test can assert that our code sent nothing the provider refuses.
//!
//! It also answers Creem's `POST /v1/checkouts`, as strictly: the body is checked against the
//! documented create-checkout request (the `creem` SDK's `CreateCheckoutRequest`: its fields,
//! types and documented limits, no unknown fields), `x-api-key` and a JSON content type are
//! required, and a refusal is Creem's documented error (`{trace_id, status, error, message: [..],
//! timestamp}`, HTTP 400; HTTP 403 for a missing key), recorded in [`Stats::refused`] under
//! `/v1/checkouts`.

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
    /// The kie.ai API key: when set, a bearer token other than this one is refused with code
    /// 401; when `None`, any non-empty bearer token is accepted.
    pub api_key: Option<String>,
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
            api_key: None,
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
    /// Accepted create calls per task of ours: the `task` parameter of the create's
    /// `callBackUrl` (`?task=<our task id>&token=...`). A task created at the provider twice
    /// shows up here as 2; creates without a callback URL are not counted here.
    pub creates_by_task: HashMap<String, u64>,
    /// Input image URLs received per prompt.
    pub inputs_by_prompt: HashMap<String, Vec<String>>,
    /// The size each accepted create asked for, per prompt: GPT-4o `size`, Flux Kontext
    /// `aspectRatio` (absent when the create named none).
    pub sizes_by_prompt: HashMap<String, String>,
    /// Callbacks posted, per prompt: (URL, body, HTTP status the API answered).
    pub callbacks_by_prompt: HashMap<String, Vec<(String, String, u16)>>,
    /// Calls that failed because of a `[sim:flaky=N]` directive, per prompt.
    pub flaky_failures_by_prompt: HashMap<String, u64>,
    /// Creem checkouts created: request id -> `{id, body}` (the checkout id and the create body).
    pub checkouts: HashMap<String, Value>,
    /// Requests refused because the real provider would refuse them: (path, reason), in order.
    /// kie.ai: a missing or wrong bearer token (code 401), a create body that breaks the
    /// documented schema, a record-info without `taskId` (code 422). Creem (`/v1/checkouts`): a
    /// missing `x-api-key` (HTTP 403), a body that is not JSON or breaks the documented
    /// create-checkout request (HTTP 400). Our code should cause none.
    pub refused: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
enum Behaviour {
    Normal,
    Fail,
    Stuck,
    /// Created, then unknown to record-info (kie.ai's 404).
    Forgotten,
    Slow(u64),
}

#[derive(Debug, Clone)]
struct Job {
    prompt: String,
    /// Created through the Flux Kontext API (its record-info does not know GPT-4o tasks).
    kontext: bool,
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

/// Decodes `%XX` escapes and `+` in a query component.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Our task id in a create's `callBackUrl`: its `task` query parameter.
fn callback_task(url: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    let query = query.split('#').next().unwrap_or(query);
    query.split('&').find_map(|kv| {
        kv.split_once('=')
            .filter(|(k, _)| *k == "task")
            .map(|(_, v)| percent_decode(v))
            .filter(|v| !v.is_empty())
    })
}

// ---------------------------------------------------------------------------------------------
// kie.ai's documented request schemas. Written from kie.ai's public docs, NOT from our code's
// constants (`shared::kie`): the point is that a request the real provider would refuse fails
// here too, so a wrong table in our code cannot make the simulator agree with it.
// ---------------------------------------------------------------------------------------------

/// GPT-4o image `size` (required).
const GPT4O_SIZES: [&str; 3] = ["1:1", "3:2", "2:3"];
/// GPT-4o image `nVariants`.
const GPT4O_VARIANTS: [u64; 3] = [1, 2, 4];
/// GPT-4o image `fallbackModel`.
const GPT4O_FALLBACK_MODELS: [&str; 2] = ["GPT_IMAGE_1", "FLUX_MAX"];
/// GPT-4o image `filesUrl`: at most this many.
const GPT4O_MAX_FILES: usize = 5;
/// Flux Kontext `aspectRatio` (not 3:2 or 2:3).
const KONTEXT_RATIOS: [&str; 6] = ["21:9", "16:9", "4:3", "1:1", "3:4", "9:16"];
/// Flux Kontext `outputFormat`.
const KONTEXT_FORMATS: [&str; 2] = ["jpeg", "png"];
/// Flux Kontext `model`.
const KONTEXT_MODELS: [&str; 2] = ["flux-kontext-pro", "flux-kontext-max"];

/// Every field the GPT-4o image create documents; anything else is refused.
const GPT4O_FIELDS: [&str; 11] = [
    "prompt",
    "size",
    "filesUrl",
    "fileUrl",
    "maskUrl",
    "nVariants",
    "callBackUrl",
    "isEnhance",
    "uploadCn",
    "enableFallback",
    "fallbackModel",
];
/// Every field the Flux Kontext create documents; anything else is refused.
const KONTEXT_FIELDS: [&str; 11] = [
    "prompt",
    "aspectRatio",
    "model",
    "outputFormat",
    "inputImage",
    "callBackUrl",
    "enableTranslation",
    "promptUpsampling",
    "safetyTolerance",
    "uploadCn",
    "watermark",
];

/// An absolute http(s) URL with a host and no whitespace.
fn is_url(s: &str) -> bool {
    let Some(rest) = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
    else {
        return false;
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    !host.is_empty() && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// Reads the optional fields of a create body by type; every mistake is a reason to refuse.
struct Fields<'a>(&'a serde_json::Map<String, Value>);

impl Fields<'_> {
    fn string(&self, name: &str) -> Result<Option<&str>, String> {
        match self.0.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(format!("{name} must be a string, got {other}")),
        }
    }

    fn one_of(&self, name: &str, allowed: &[&str]) -> Result<Option<&str>, String> {
        match self.string(name)? {
            Some(v) if !allowed.contains(&v) => Err(format!(
                "{name} {v:?} is not supported; expected one of {}",
                allowed.join(", ")
            )),
            v => Ok(v),
        }
    }

    fn url(&self, name: &str) -> Result<Option<&str>, String> {
        match self.string(name)? {
            Some(v) if !is_url(v) => Err(format!("{name} must be an http(s) URL, got {v:?}")),
            v => Ok(v),
        }
    }

    fn boolean(&self, name: &str) -> Result<(), String> {
        match self.0.get(name) {
            None | Some(Value::Bool(_)) => Ok(()),
            Some(other) => Err(format!("{name} must be a boolean, got {other}")),
        }
    }

    fn integer(&self, name: &str) -> Result<Option<u64>, String> {
        match self.0.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| format!("{name} must be a non-negative integer, got {v}")),
        }
    }
}

/// Checks a create body against kie.ai's documented schema for the model: the parsed body, or
/// why kie.ai would refuse it (answered as code 422).
fn check_create(kontext: bool, body: &str) -> Result<Value, String> {
    let parsed: Value =
        serde_json::from_str(body).map_err(|e| format!("body is not valid JSON: {e}"))?;
    let obj = parsed
        .as_object()
        .ok_or_else(|| "body must be a JSON object".to_owned())?;
    let known: &[&str] = if kontext {
        &KONTEXT_FIELDS
    } else {
        &GPT4O_FIELDS
    };
    if let Some(unknown) = obj.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(format!("unknown field {unknown}"));
    }
    let f = Fields(obj);
    f.url("callBackUrl")?;
    f.boolean("uploadCn")?;
    if kontext {
        match f.string("prompt")? {
            None => return Err("prompt is required".into()),
            Some(p) if p.trim().is_empty() => return Err("prompt must not be empty".into()),
            Some(_) => {}
        }
        f.one_of("aspectRatio", &KONTEXT_RATIOS)?;
        f.one_of("outputFormat", &KONTEXT_FORMATS)?;
        f.one_of("model", &KONTEXT_MODELS)?;
        let editing = f.url("inputImage")?.is_some();
        f.boolean("enableTranslation")?;
        f.boolean("promptUpsampling")?;
        f.string("watermark")?;
        // generation 0-6, editing 0-2
        let max = if editing { 2 } else { 6 };
        if let Some(t) = f.integer("safetyTolerance")? {
            if t > max {
                return Err(format!("safetyTolerance must be 0 to {max}, got {t}"));
            }
        }
    } else {
        match f.string("size")? {
            None => return Err("size is required".into()),
            Some(s) if !GPT4O_SIZES.contains(&s) => {
                return Err(format!(
                    "size {s:?} is not supported; expected one of {}",
                    GPT4O_SIZES.join(", ")
                ))
            }
            Some(_) => {}
        }
        let prompt = f.string("prompt")?.is_some_and(|p| !p.trim().is_empty());
        let files = match obj.get("filesUrl") {
            None => 0,
            Some(Value::Array(items)) => {
                if items.len() > GPT4O_MAX_FILES {
                    return Err(format!(
                        "filesUrl takes at most {GPT4O_MAX_FILES} URLs, got {}",
                        items.len()
                    ));
                }
                for (i, item) in items.iter().enumerate() {
                    if !item.as_str().is_some_and(is_url) {
                        return Err(format!("filesUrl[{i}] must be an http(s) URL, got {item}"));
                    }
                }
                items.len()
            }
            Some(other) => return Err(format!("filesUrl must be an array of URLs, got {other}")),
        };
        let file = f.url("fileUrl")?.is_some();
        if !prompt && files == 0 && !file {
            return Err("at least one of prompt or filesUrl is required".into());
        }
        f.url("maskUrl")?;
        if let Some(n) = f.integer("nVariants")? {
            if !GPT4O_VARIANTS.contains(&n) {
                return Err(format!("nVariants must be 1, 2 or 4, got {n}"));
            }
        }
        f.boolean("isEnhance")?;
        f.boolean("enableFallback")?;
        f.one_of("fallbackModel", &GPT4O_FALLBACK_MODELS)?;
    }
    Ok(parsed)
}

/// Every top-level field of Creem's create-checkout request (`CreateCheckoutRequest` in the
/// official `creem` SDK, 1.13.0); anything else is refused.
const CHECKOUT_FIELDS: [&str; 11] = [
    "request_id",
    "product_id",
    "units",
    "custom_price",
    "discount_code",
    "affiliate_code",
    "customer",
    "custom_fields",
    "custom_field",
    "success_url",
    "metadata",
];
/// `CustomerRequestEntity`.
const CHECKOUT_CUSTOMER_FIELDS: [&str; 3] = ["id", "email", "name"];
/// `CustomFieldRequestEntity`.
const CHECKOUT_CUSTOM_FIELD_FIELDS: [&str; 6] =
    ["type", "key", "label", "optional", "text", "checkbox"];
/// `CustomFieldRequestType`.
const CHECKOUT_CUSTOM_FIELD_TYPES: [&str; 2] = ["text", "checkbox"];
/// "Up to 3 fields are supported."
const CHECKOUT_MAX_CUSTOM_FIELDS: usize = 3;
/// `custom_price`: "between 100 (one whole unit of the currency) and 99999999".
const CHECKOUT_CUSTOM_PRICE: std::ops::RangeInclusive<i64> = 100..=99_999_999;

/// `local@domain.tld`, no whitespace: the shape any email validator accepts.
fn is_email(s: &str) -> bool {
    let Some((local, domain)) = s.rsplit_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && domain.contains('.')
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
        && !domain.contains('@')
}

fn unknown_key(
    obj: &serde_json::Map<String, Value>,
    known: &[&str],
    at: &str,
) -> Result<(), String> {
    match obj.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(format!("property {at}{k} should not exist")),
        None => Ok(()),
    }
}

fn number_field(obj: &serde_json::Map<String, Value>, name: &str, at: &str) -> Result<(), String> {
    match obj.get(name) {
        None | Some(Value::Number(_)) => Ok(()),
        Some(other) => Err(format!("{at}{name} must be a number, got {other}")),
    }
}

/// One `custom_fields[i]` (or `custom_field[i]`) entry, a `CustomFieldRequestEntity`.
fn check_custom_field(v: &Value, at: &str) -> Result<(), String> {
    let obj = v
        .as_object()
        .ok_or_else(|| format!("{at} must be an object, got {v}"))?;
    unknown_key(obj, &CHECKOUT_CUSTOM_FIELD_FIELDS, &format!("{at}."))?;
    let f = Fields(obj);
    let prefix = format!("{at}.");
    let with = |e: String| format!("{prefix}{e}");
    if f.one_of("type", &CHECKOUT_CUSTOM_FIELD_TYPES)
        .map_err(with)?
        .is_none()
    {
        return Err(format!("{at}.type is required"));
    }
    match f.string("key").map_err(with)? {
        None => return Err(format!("{at}.key is required")),
        Some(k)
            if k.is_empty() || k.len() > 200 || !k.chars().all(|c| c.is_ascii_alphanumeric()) =>
        {
            return Err(format!(
                "{at}.key must be alphanumeric, 1 to 200 characters, got {k:?}"
            ))
        }
        Some(_) => {}
    }
    match f.string("label").map_err(with)? {
        None => return Err(format!("{at}.label is required")),
        Some(l) if l.chars().count() > 50 => {
            return Err(format!("{at}.label must be at most 50 characters"))
        }
        Some(_) => {}
    }
    f.boolean("optional").map_err(with)?;
    match obj.get("text") {
        None => {}
        Some(Value::Object(text)) => {
            let at = format!("{at}.text.");
            unknown_key(text, &["max_length", "min_length"], &at)?;
            number_field(text, "max_length", &at)?;
            number_field(text, "min_length", &at)?;
        }
        Some(other) => return Err(format!("{at}.text must be an object, got {other}")),
    }
    match obj.get("checkbox") {
        None => {}
        Some(Value::Object(checkbox)) => {
            let at = format!("{at}.checkbox.");
            unknown_key(checkbox, &["label"], &at)?;
            Fields(checkbox)
                .string("label")
                .map_err(|e| format!("{at}{e}"))?;
        }
        Some(other) => return Err(format!("{at}.checkbox must be an object, got {other}")),
    }
    Ok(())
}

/// Checks a create-checkout body against Creem's documented request (`CreateCheckoutRequest`
/// of the official `creem` SDK, its field comments, and the API reference): the parsed body, or
/// why Creem would refuse it (answered as a 400).
fn check_checkout(body: &str) -> Result<Value, String> {
    let parsed: Value =
        serde_json::from_str(body).map_err(|e| format!("body is not valid JSON: {e}"))?;
    let obj = parsed
        .as_object()
        .ok_or_else(|| "body must be a JSON object".to_owned())?;
    unknown_key(obj, &CHECKOUT_FIELDS, "")?;
    let f = Fields(obj);
    match f.string("product_id")? {
        None => return Err("product_id is required".into()),
        Some(p) if p.trim().is_empty() => return Err("product_id must not be empty".into()),
        Some(_) => {}
    }
    f.string("request_id")?;
    match obj.get("units") {
        None => {}
        Some(v) if v.as_u64().is_some_and(|n| n >= 1) => {}
        Some(v) => return Err(format!("units must be a positive integer, got {v}")),
    }
    match obj.get("custom_price") {
        None => {}
        Some(v)
            if v.as_i64()
                .is_some_and(|n| CHECKOUT_CUSTOM_PRICE.contains(&n)) => {}
        Some(v) => {
            return Err(format!(
                "custom_price must be an integer from 100 to 99999999, got {v}"
            ))
        }
    }
    f.string("discount_code")?;
    f.string("affiliate_code")?;
    match obj.get("customer") {
        None => {}
        Some(Value::Object(customer)) => {
            unknown_key(customer, &CHECKOUT_CUSTOMER_FIELDS, "customer.")?;
            let c = Fields(customer);
            let with = |e: String| format!("customer.{e}");
            let id = c.string("id").map_err(with)?;
            let email = c.string("email").map_err(with)?;
            c.string("name").map_err(with)?;
            if let Some(e) = email {
                if !is_email(e) {
                    return Err(format!("customer.email must be an email, got {e:?}"));
                }
            }
            if id.is_some() && email.is_some() {
                return Err("customer: specify only one of id or email".into());
            }
        }
        Some(other) => return Err(format!("customer must be an object, got {other}")),
    }
    for name in ["custom_fields", "custom_field"] {
        match obj.get(name) {
            None => {}
            Some(Value::Array(items)) => {
                if items.len() > CHECKOUT_MAX_CUSTOM_FIELDS {
                    return Err(format!(
                        "{name} takes at most {CHECKOUT_MAX_CUSTOM_FIELDS} fields, got {}",
                        items.len()
                    ));
                }
                for (i, item) in items.iter().enumerate() {
                    check_custom_field(item, &format!("{name}[{i}]"))?;
                }
            }
            Some(other) => return Err(format!("{name} must be an array, got {other}")),
        }
    }
    f.url("success_url")?;
    match obj.get("metadata") {
        None => {}
        Some(Value::Object(meta)) => {
            if let Some((k, v)) = meta
                .iter()
                .find(|(_, v)| !matches!(v, Value::String(_) | Value::Number(_) | Value::Null))
            {
                return Err(format!(
                    "metadata.{k} must be a string, a number or null, got {v}"
                ));
            }
        }
        Some(other) => return Err(format!("metadata must be an object, got {other}")),
    }
    Ok(parsed)
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

/// kie.ai's callback body, in the documented shapes: GPT-4o `{code, msg, data: {taskId, info:
/// {result_urls: [..]}}}` (snake case), Flux Kontext `{code, msg, data: {taskId, info:
/// {originImageUrl, resultImageUrl}}}`. A failure is the documented minimal shape, `{code, msg,
/// data: {taskId}}`: `info` is only there on success. Failure codes are each API's own: GPT-4o
/// 500 (generation failed), Kontext 501 (generation task failed).
fn callback_body(id: &str, kontext: bool, failed: bool, result: &str) -> Value {
    match (failed, kontext) {
        (true, false) => json!({"code": 500, "msg": "Failed to generate image (simulated)",
                                "data": {"taskId": id}}),
        (true, true) => json!({"code": 501, "msg": "Image generation task failed (simulated)",
                               "data": {"taskId": id}}),
        (false, false) => json!({"code": 200, "msg": "Gpt4o-image generated successfully.",
                                 "data": {"taskId": id, "info": {"result_urls": [result]}}}),
        (false, true) => json!({"code": 200, "msg": "BFL image generated successfully.",
                                "data": {"taskId": id, "info": {"originImageUrl": result, "resultImageUrl": result}}}),
    }
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
    let body = callback_body(id, kontext, failed, &result);
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

/// Refuses a kie.ai request the way kie.ai documents it (an HTTP 200 carrying `{code, msg}`),
/// records why in [`Stats::refused`] and says so on stderr, so a test run shows every refusal.
fn refuse(req: Request, state: &Mutex<State>, path: &str, code: u16, reason: &str) {
    eprintln!("sim: refused {path}: code {code}: {reason}");
    lock(state)
        .stats
        .refused
        .push((path.to_owned(), reason.to_owned()));
    reply_json(req, 200, &json!({"code": code, "msg": reason}));
}

/// Refuses a Creem request the way Creem documents it (docs.creem.io, "Error Handling"): the HTTP
/// status with `{trace_id, status, error, message: [..], timestamp}` (403 Forbidden for a missing
/// or invalid API key, without `message`), records why in [`Stats::refused`] and says so on
/// stderr.
fn refuse_creem(req: Request, state: &Mutex<State>, path: &str, status: u16, reason: &str) {
    eprintln!("sim: refused {path}: HTTP {status}: {reason}");
    let trace = {
        let mut s = lock(state);
        s.stats.refused.push((path.to_owned(), reason.to_owned()));
        s.seq += 1;
        format!("00000000-0000-4000-8000-{:012x}", s.seq)
    };
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    let body = if status == 403 {
        json!({"trace_id": trace, "status": 403, "error": "Forbidden", "timestamp": timestamp})
    } else {
        json!({"trace_id": trace, "status": status, "error": "Bad Request", "message": [reason],
               "timestamp": timestamp})
    };
    reply_json(req, status, &body);
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
    let header_value = |name: &'static str| {
        req.headers()
            .iter()
            .find(|h| h.field.equiv(name))
            .map(|h| h.value.as_str().to_owned())
    };
    let bearer = header_value("authorization")
        .and_then(|v| v.strip_prefix("Bearer ").map(|t| t.trim().to_owned()))
        .filter(|t| !t.is_empty());
    let api_key = lock(state).knobs.api_key.clone();
    let authorized = match (&bearer, &api_key) {
        (None, _) => false,
        (Some(token), Some(key)) => token == key,
        (Some(_), None) => true,
    };
    let creem_keyed = header_value("x-api-key").is_some_and(|k| !k.trim().is_empty());
    let json_body = header_value("content-type").is_some_and(|ct| {
        ct.split(';')
            .next()
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
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
        // Creem: create a checkout session, checked against the documented request
        (Method::Post, "/v1/checkouts") => {
            if !creem_keyed {
                return refuse_creem(req, state, &path, 403, "missing or invalid x-api-key");
            }
            if !json_body {
                return refuse_creem(
                    req,
                    state,
                    &path,
                    400,
                    "the body must be sent as Content-Type: application/json",
                );
            }
            let parsed = match check_checkout(&body) {
                Ok(parsed) => parsed,
                Err(reason) => return refuse_creem(req, state, &path, 400, &reason),
            };
            let product = parsed
                .get("product_id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
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
                        "units": parsed.get("units").cloned().unwrap_or(json!(1)),
                        "request_id": request_id, "metadata": parsed.get("metadata"),
                        "checkout_url": format!("http://127.0.0.1:{port}/checkout/{id}")}),
            );
        }
        (Method::Post, "/api/v1/gpt4o-image/generate")
        | (Method::Post, "/api/v1/flux/kontext/generate") => {
            let kontext = path.contains("kontext");
            if !authorized {
                return refuse(req, state, &path, 401, "missing or invalid bearer token");
            }
            if !json_body {
                return refuse(
                    req,
                    state,
                    &path,
                    422,
                    "the body must be sent as Content-Type: application/json",
                );
            }
            let parsed = match check_create(kontext, &body) {
                Ok(parsed) => parsed,
                Err(reason) => return refuse(req, state, &path, 422, &reason),
            };
            // a GPT-4o create may go without a prompt (images only): its key in the stats is ""
            let prompt = parsed
                .get("prompt")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let mut s = lock(state);
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
            if let Some(task) = parsed
                .get("callBackUrl")
                .and_then(Value::as_str)
                .and_then(callback_task)
            {
                *s.stats.creates_by_task.entry(task).or_default() += 1;
            }
            s.stats.inputs_by_prompt.insert(prompt.clone(), inputs);
            if let Some(size) = parsed
                .get(if kontext { "aspectRatio" } else { "size" })
                .and_then(Value::as_str)
            {
                s.stats
                    .sizes_by_prompt
                    .insert(prompt.clone(), size.to_owned());
            }
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
            } else if prompt.contains("[sim:forgotten]") {
                Behaviour::Forgotten
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
            let will_finish =
                !s.knobs.stuck && !matches!(behaviour, Behaviour::Stuck | Behaviour::Forgotten);
            let send_callback = s.knobs.callbacks && will_finish;
            let failed = matches!(behaviour, Behaviour::Fail);
            s.jobs.insert(
                id.clone(),
                Job {
                    prompt: prompt.clone(),
                    kontext,
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
                return refuse(req, state, &path, 401, "missing or invalid bearer token");
            }
            let Some(id) = param("taskId")
                .map(|v| percent_decode(&v))
                .filter(|v| !v.is_empty())
            else {
                return refuse(req, state, &path, 422, "taskId is required");
            };
            let mut s = lock(state);
            s.stats.record_infos += 1;
            // each API knows only its own tasks
            let Some(job) = s
                .jobs
                .get(&id)
                .filter(|j| j.kontext == kontext && !matches!(j.behaviour, Behaviour::Forgotten))
                .cloned()
            else {
                drop(s);
                return reply_json(req, 200, &json!({"code": 404, "msg": "task not found"}));
            };
            let rate = s.knobs.api_fail_rate;
            if s.roll(rate) || s.flaky(&job.prompt) {
                drop(s);
                return reply_json(req, 503, &json!({"code": 503, "msg": "injected failure"}));
            }
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn the_task_comes_from_the_callback_url() {
        assert_eq!(
            callback_task("http://127.0.0.1:8787/webhooks/ai/kie?task=tsk_1&token=abc").as_deref(),
            Some("tsk_1")
        );
        assert_eq!(
            callback_task("http://h/webhooks/ai/kie?token=abc&task=t%5F2").as_deref(),
            Some("t_2")
        );
        assert_eq!(callback_task("http://h/webhooks/ai/kie?token=abc"), None);
        assert_eq!(
            callback_task("http://h/webhooks/ai/kie?task=&token=x"),
            None
        );
        assert_eq!(callback_task("http://h/webhooks/ai/kie"), None);
        assert_eq!(percent_decode("a%2Fb+c%"), "a/b c%");
    }

    fn create(sim: &Sim, path: &str, body: &Value) -> u16 {
        match ureq::post(&format!("{}{path}", sim.base_url()))
            .set("authorization", "Bearer k")
            .set("content-type", "application/json")
            .send_string(&body.to_string())
        {
            Ok(r) => r.status(),
            Err(ureq::Error::Status(code, _)) => code,
            Err(e) => panic!("sim unreachable: {e}"),
        }
    }

    #[test]
    fn accepted_creates_are_counted_per_task() {
        let sim = Sim::start(0).unwrap();
        sim.set_knobs(Knobs {
            callbacks: false,
            ..Knobs::default()
        });
        let cb = |task: &str| format!("http://127.0.0.1:1/webhooks/ai/kie?task={task}&token=t");
        let gen = "/api/v1/gpt4o-image/generate";
        let kontext = "/api/v1/flux/kontext/generate";
        assert_eq!(
            create(
                &sim,
                gen,
                &json!({"prompt": "a", "size": "1:1", "callBackUrl": cb("t1")})
            ),
            200
        );
        assert_eq!(
            create(
                &sim,
                gen,
                &json!({"prompt": "a", "size": "1:1", "callBackUrl": cb("t1")})
            ),
            200
        );
        assert_eq!(
            create(
                &sim,
                kontext,
                &json!({"prompt": "b", "callBackUrl": cb("t2")})
            ),
            200
        );
        // no callback: counted by prompt only
        assert_eq!(
            create(&sim, gen, &json!({"prompt": "c", "size": "3:2"})),
            200
        );
        // a create the provider refused (injected 503) did not create anything
        sim.set_knobs(Knobs {
            callbacks: false,
            api_fail_rate: 1.0,
            ..Knobs::default()
        });
        assert_eq!(
            create(
                &sim,
                gen,
                &json!({"prompt": "d", "size": "1:1", "callBackUrl": cb("t3")})
            ),
            503
        );
        let stats = sim.stats();
        assert_eq!(stats.creates, 4);
        assert_eq!(stats.creates_by_task.get("t1"), Some(&2));
        assert_eq!(stats.creates_by_task.get("t2"), Some(&1));
        assert_eq!(stats.creates_by_task.get("t3"), None);
        assert_eq!(stats.creates_by_task.len(), 2);
        assert!(stats.refused.is_empty(), "{:?}", stats.refused);
        // and the stats route reports it too
        let over_http: Stats = serde_json::from_str(
            &ureq::get(&format!("{}/_sim/stats", sim.base_url()))
                .call()
                .unwrap()
                .into_string()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(over_http.creates_by_task, stats.creates_by_task);
    }

    /// Sends a kie.ai call; returns the HTTP status and the JSON body.
    fn call(
        sim: &Sim,
        method: &str,
        path: &str,
        auth: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let mut req = ureq::request(method, &format!("{}{path}", sim.base_url()));
        if let Some(a) = auth {
            req = req.set("authorization", a);
        }
        let result = match body {
            Some(b) => req
                .set("content-type", "application/json")
                .send_string(&b.to_string()),
            None => req.call(),
        };
        let resp = match result {
            Ok(r) | Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("sim unreachable: {e}"),
        };
        let status = resp.status();
        (
            status,
            serde_json::from_str(&resp.into_string().unwrap()).unwrap(),
        )
    }

    const GEN: &str = "/api/v1/gpt4o-image/generate";
    const KONTEXT: &str = "/api/v1/flux/kontext/generate";

    fn quiet() -> Sim {
        let sim = Sim::start(0).unwrap();
        sim.set_knobs(Knobs {
            callbacks: false,
            ..Knobs::default()
        });
        sim
    }

    #[test]
    fn the_documented_examples_are_accepted() {
        let sim = quiet();
        let bodies = [
            // kie.ai's GPT-4o image example, every optional field included
            (
                GEN,
                json!({"filesUrl": ["https://example.com/image1.png", "https://example.com/image2.png"],
                         "prompt": "A beautiful sunset over the mountains", "size": "1:1",
                         "callBackUrl": "https://your-callback-url.com/callback", "isEnhance": false,
                         "uploadCn": false, "nVariants": 1, "enableFallback": false, "fallbackModel": "FLUX_MAX"}),
            ),
            // images only, no prompt
            (
                GEN,
                json!({"filesUrl": ["https://example.com/a.png"], "size": "2:3", "nVariants": 4}),
            ),
            (
                GEN,
                json!({"prompt": "x", "size": "3:2", "maskUrl": "https://example.com/m.png"}),
            ),
            // Flux Kontext: text to image, and editing
            (
                KONTEXT,
                json!({"prompt": "A serene mountain landscape", "aspectRatio": "16:9", "model": "flux-kontext-pro"}),
            ),
            (
                KONTEXT,
                json!({"prompt": "Add balloons", "inputImage": "https://example.com/landscape.jpg", "aspectRatio": "16:9"}),
            ),
            (
                KONTEXT,
                json!({"prompt": "p", "aspectRatio": "21:9", "model": "flux-kontext-max", "outputFormat": "jpeg",
                             "enableTranslation": false, "promptUpsampling": true, "safetyTolerance": 6, "uploadCn": true,
                             "watermark": "w", "callBackUrl": "http://127.0.0.1:1/cb?task=a&token=b"}),
            ),
        ];
        for (path, body) in &bodies {
            let (status, reply) = call(&sim, "POST", path, Some("Bearer k"), Some(body));
            assert_eq!(
                (status, reply["code"].as_i64()),
                (200, Some(200)),
                "{path} {body}: {reply}"
            );
            assert!(reply
                .pointer("/data/taskId")
                .and_then(Value::as_str)
                .is_some());
        }
        for ratio in KONTEXT_RATIOS {
            let body = json!({"prompt": "p", "aspectRatio": ratio});
            assert_eq!(
                call(&sim, "POST", KONTEXT, Some("Bearer k"), Some(&body)).1["code"],
                200,
                "{ratio}"
            );
        }
        assert!(sim.stats().refused.is_empty(), "{:?}", sim.stats().refused);
    }

    #[test]
    fn what_kie_refuses_the_simulator_refuses() {
        let sim = quiet();
        let cases = [
            // Flux Kontext has no 3:2 or 2:3
            (
                KONTEXT,
                json!({"prompt": "p", "aspectRatio": "3:2"}),
                "aspectRatio",
            ),
            (
                KONTEXT,
                json!({"prompt": "p", "aspectRatio": "2:3"}),
                "aspectRatio",
            ),
            (KONTEXT, json!({"aspectRatio": "1:1"}), "prompt is required"),
            (KONTEXT, json!({"prompt": "  "}), "prompt must not be empty"),
            (KONTEXT, json!({"prompt": 5}), "prompt must be a string"),
            (
                KONTEXT,
                json!({"prompt": "p", "model": "flux-pro"}),
                "model",
            ),
            (
                KONTEXT,
                json!({"prompt": "p", "outputFormat": "webp"}),
                "outputFormat",
            ),
            (
                KONTEXT,
                json!({"prompt": "p", "inputImage": "ftp://x/a.png"}),
                "inputImage",
            ),
            (
                KONTEXT,
                json!({"prompt": "p", "inputImage": "https://x/a.png", "safetyTolerance": 3}),
                "safetyTolerance",
            ),
            (
                KONTEXT,
                json!({"prompt": "p", "safetyTolerance": -1}),
                "safetyTolerance",
            ),
            (
                KONTEXT,
                json!({"prompt": "p", "size": "1:1"}),
                "unknown field size",
            ),
            (
                KONTEXT,
                json!({"prompt": "p", "enableTranslation": "yes"}),
                "enableTranslation",
            ),
            // GPT-4o image: size required, and one of three
            (GEN, json!({"prompt": "p"}), "size is required"),
            (GEN, json!({"prompt": "p", "size": "16:9"}), "size"),
            (
                GEN,
                json!({"prompt": "p", "size": null}),
                "size must be a string",
            ),
            (
                GEN,
                json!({"size": "1:1"}),
                "at least one of prompt or filesUrl",
            ),
            (
                GEN,
                json!({"size": "1:1", "filesUrl": []}),
                "at least one of prompt or filesUrl",
            ),
            (
                GEN,
                json!({"prompt": "p", "size": "1:1", "filesUrl": ["https://a/1", "https://a/2", "https://a/3", "https://a/4", "https://a/5", "https://a/6"]}),
                "at most 5",
            ),
            (
                GEN,
                json!({"prompt": "p", "size": "1:1", "filesUrl": ["/relative.png"]}),
                "filesUrl[0]",
            ),
            (
                GEN,
                json!({"prompt": "p", "size": "1:1", "filesUrl": "https://a/1"}),
                "filesUrl must be an array",
            ),
            (
                GEN,
                json!({"prompt": "p", "size": "1:1", "nVariants": 3}),
                "nVariants",
            ),
            (
                GEN,
                json!({"prompt": "p", "size": "1:1", "nVariants": "1"}),
                "nVariants",
            ),
            (
                GEN,
                json!({"prompt": "p", "size": "1:1", "callBackUrl": "/webhooks/ai/kie_4o"}),
                "callBackUrl",
            ),
            (
                GEN,
                json!({"prompt": "p", "size": "1:1", "fallbackModel": "DALL_E"}),
                "fallbackModel",
            ),
            (
                GEN,
                json!({"prompt": "p", "size": "1:1", "aspectRatio": "1:1"}),
                "unknown field aspectRatio",
            ),
            (
                GEN,
                json!({"prompt": "p", "size": "1:1", "isEnhance": 1}),
                "isEnhance",
            ),
            (GEN, json!(["p"]), "JSON object"),
        ];
        for (path, body, why) in &cases {
            let (status, reply) = call(&sim, "POST", path, Some("Bearer k"), Some(body));
            assert_eq!(
                (status, reply["code"].as_i64()),
                (200, Some(422)),
                "{path} {body}: {reply}"
            );
            let msg = reply["msg"].as_str().unwrap_or_default();
            assert!(msg.contains(why), "{body}: {msg:?} should say {why:?}");
        }
        // not JSON, or not sent as JSON
        let raw = ureq::post(&format!("{}{GEN}", sim.base_url()))
            .set("authorization", "Bearer k")
            .set("content-type", "application/json")
            .send_string("{\"prompt\":")
            .unwrap()
            .into_json::<Value>()
            .unwrap();
        assert_eq!(raw["code"], 422);
        let form = ureq::post(&format!("{}{GEN}", sim.base_url()))
            .set("authorization", "Bearer k")
            .send_string(&json!({"prompt": "p", "size": "1:1"}).to_string())
            .unwrap()
            .into_json::<Value>()
            .unwrap();
        assert_eq!(form["code"], 422, "{form}");

        let stats = sim.stats();
        assert_eq!(stats.refused.len(), cases.len() + 2);
        assert!(stats
            .refused
            .iter()
            .all(|(path, _)| path == GEN || path == KONTEXT));
        assert_eq!(stats.creates, 0, "nothing refused was created");
    }

    #[test]
    fn bearer_tokens_and_record_info_are_checked() {
        let sim = quiet();
        let ok = json!({"prompt": "p", "size": "1:1"});
        assert_eq!(call(&sim, "POST", GEN, None, Some(&ok)).1["code"], 401);
        assert_eq!(
            call(&sim, "POST", GEN, Some("Bearer "), Some(&ok)).1["code"],
            401
        );
        assert_eq!(
            call(&sim, "POST", GEN, Some("Basic abc"), Some(&ok)).1["code"],
            401
        );
        let id = call(&sim, "POST", GEN, Some("Bearer any"), Some(&ok)).1["data"]["taskId"]
            .as_str()
            .unwrap()
            .to_owned();
        sim.set_knobs(Knobs {
            callbacks: false,
            api_key: Some("right".into()),
            ..Knobs::default()
        });
        assert_eq!(
            call(&sim, "POST", GEN, Some("Bearer wrong"), Some(&ok)).1["code"],
            401
        );
        assert_eq!(
            call(&sim, "POST", GEN, Some("Bearer right"), Some(&ok)).1["code"],
            200
        );

        let record = "/api/v1/gpt4o-image/record-info";
        let kontext_record = "/api/v1/flux/kontext/record-info";
        assert_eq!(
            call(&sim, "GET", record, Some("Bearer right"), None).1["code"],
            422
        );
        assert_eq!(
            call(
                &sim,
                "GET",
                &format!("{record}?taskId="),
                Some("Bearer right"),
                None
            )
            .1["code"],
            422
        );
        assert_eq!(
            call(
                &sim,
                "GET",
                &format!("{record}?taskId={id}"),
                Some("Bearer wrong"),
                None
            )
            .1["code"],
            401
        );
        let found = call(
            &sim,
            "GET",
            &format!("{record}?taskId={id}"),
            Some("Bearer right"),
            None,
        )
        .1;
        assert_eq!(found["code"], 200, "{found}");
        // an unknown task, or another API's task: not found (not a refusal of the request)
        assert_eq!(
            call(
                &sim,
                "GET",
                &format!("{record}?taskId=nope"),
                Some("Bearer right"),
                None
            )
            .1["code"],
            404
        );
        assert_eq!(
            call(
                &sim,
                "GET",
                &format!("{kontext_record}?taskId={id}"),
                Some("Bearer right"),
                None
            )
            .1["code"],
            404
        );

        let refused = sim.stats().refused;
        let reasons: Vec<&str> = refused.iter().map(|(_, r)| r.as_str()).collect();
        assert_eq!(
            reasons.iter().filter(|r| r.contains("bearer")).count(),
            5,
            "{reasons:?}"
        );
        assert_eq!(
            reasons
                .iter()
                .filter(|r| **r == "taskId is required")
                .count(),
            2
        );
        assert_eq!(refused.len(), 7);
    }

    /// Everything our consumer can send (`shared::kie::create_body`, for every model, every size
    /// it accepts, with and without images) passes the documented schema.
    #[test]
    fn our_create_bodies_pass_the_documented_schema() {
        use shared::kie::{create_body, endpoints, sizes};
        use shared::model::Model;
        let cb = "http://127.0.0.1:8787/webhooks/ai/kie_4o?task=t&token=k";
        for model in Model::ALL {
            let kontext = endpoints(model).0.contains("kontext");
            let images: Vec<String> = (0..model.max_input_images())
                .map(|i| format!("http://127.0.0.1:8787/files/cache/u/{i}.png?exp=1&sig=ab"))
                .collect();
            for size in sizes(model) {
                for urls in [&images[..], &[]] {
                    for callback in [Some(cb), None] {
                        let body = create_body(model, "a prompt", size, urls, callback).to_string();
                        if let Err(why) = check_create(kontext, &body) {
                            panic!("{model} {size}: {body} refused: {why}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn callbacks_have_the_documented_shapes() {
        let ok_4o = callback_body("4o1", false, false, "https://r/0.png");
        assert_eq!(ok_4o["code"], 200);
        assert_eq!(
            ok_4o
                .pointer("/data/info/result_urls/0")
                .and_then(Value::as_str),
            Some("https://r/0.png")
        );
        let ok_kx = callback_body("kx1", true, false, "https://r/0.png");
        assert_eq!(
            ok_kx
                .pointer("/data/info/resultImageUrl")
                .and_then(Value::as_str),
            Some("https://r/0.png")
        );
        assert!(ok_kx.pointer("/data/info/originImageUrl").is_some());
        // failures: the minimal shape, no info
        let failed_4o = callback_body("4o2", false, true, "u");
        let failed_kx = callback_body("kx2", true, true, "u");
        assert_eq!(
            (failed_4o["code"].as_i64(), failed_kx["code"].as_i64()),
            (Some(500), Some(501))
        );
        for body in [&ok_4o, &ok_kx, &failed_4o, &failed_kx] {
            let data = body["data"].as_object().unwrap();
            assert!(body["msg"].is_string());
            assert!(data.keys().all(|k| k == "taskId" || k == "info"), "{body}");
            // our callback route reads all of them
            let id = shared::kie::parse_callback(body.to_string().as_bytes()).unwrap();
            assert_eq!(Some(id.as_str()), data["taskId"].as_str());
        }
        assert!(failed_4o["data"].get("info").is_none() && failed_kx["data"].get("info").is_none());
    }

    // ---------------------------------------------------------------------------------------------
    // Creem: POST /v1/checkouts against the documented create-checkout request
    // ---------------------------------------------------------------------------------------------

    const CHECKOUTS: &str = "/v1/checkouts";

    /// Posts a create-checkout: the HTTP status and the JSON body.
    fn checkout(sim: &Sim, key: Option<&str>, content_type: &str, body: &str) -> (u16, Value) {
        let mut req =
            ureq::post(&format!("{}{CHECKOUTS}", sim.base_url())).set("content-type", content_type);
        if let Some(k) = key {
            req = req.set("x-api-key", k);
        }
        let resp = match req.send_string(body) {
            Ok(r) | Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("sim unreachable: {e}"),
        };
        let status = resp.status();
        (
            status,
            serde_json::from_str(&resp.into_string().unwrap()).unwrap(),
        )
    }

    /// The documented create-checkout request, as `e2e/fixtures/creem/requests/` pins it (checked
    /// against the `creem` SDK's `CreateCheckoutRequest` by `check.mjs`).
    const CHECKOUT_FIXTURE: &str =
        include_str!("../../e2e/fixtures/creem/requests/checkouts.create.json");

    #[test]
    fn the_documented_checkout_request_is_accepted() {
        let sim = quiet();
        let fixture: Value = serde_json::from_str(CHECKOUT_FIXTURE).unwrap();
        let (status, reply) = checkout(
            &sim,
            Some("creem_test_k"),
            "application/json",
            CHECKOUT_FIXTURE,
        );
        assert_eq!(status, 200, "{reply}");
        assert_eq!(reply["object"], "checkout");
        assert_eq!(reply["request_id"], fixture["request_id"]);
        assert_eq!(reply["metadata"], fixture["metadata"]);
        assert!(reply["checkout_url"]
            .as_str()
            .unwrap()
            .contains("/checkout/ch_"));
        // every documented field at once, and the minimal request
        let every = json!({
            "request_id": "r1", "product_id": "prod_1", "units": 3, "custom_price": 1500,
            "discount_code": "LAUNCH", "affiliate_code": "aff1",
            "customer": {"id": "cust_1", "name": "Ada"},
            "custom_fields": [
                {"type": "text", "key": "company", "label": "Company", "optional": true,
                 "text": {"max_length": 100, "min_length": 2}},
                {"type": "checkbox", "key": "terms", "label": "Terms", "checkbox": {"label": "I agree to the [terms](https://x.example)"}}
            ],
            "custom_field": [{"type": "text", "key": "vat", "label": "VAT id"}],
            "success_url": "https://example.com/thanks?from=creem",
            "metadata": {"order": "o1", "n": 2, "gone": null}
        });
        let (status, reply) = checkout(
            &sim,
            Some("k"),
            "application/json; charset=utf-8",
            &every.to_string(),
        );
        assert_eq!(status, 200, "{reply}");
        assert_eq!(reply["units"], 3);
        let (status, reply) = checkout(
            &sim,
            Some("k"),
            "application/json",
            r#"{"product_id": "prod_1"}"#,
        );
        assert_eq!(status, 200, "{reply}");
        let stats = sim.stats();
        assert!(stats.refused.is_empty(), "{:?}", stats.refused);
        assert_eq!(stats.checkouts["ord_fx_pack"]["body"], fixture);
        assert_eq!(stats.checkouts.len(), 3);
    }

    #[test]
    fn what_creem_refuses_the_simulator_refuses() {
        let sim = quiet();
        let fixture: Value = serde_json::from_str(CHECKOUT_FIXTURE).unwrap();
        let with = |key: &str, value: Value| {
            let mut b = fixture.clone();
            b[key] = value;
            b
        };
        let without = |key: &str| {
            let mut b = fixture.clone();
            b.as_object_mut().unwrap().remove(key);
            b
        };
        let field = |f: Value| with("custom_fields", json!([f]));
        let cases: Vec<(Value, &str)> = vec![
            (without("product_id"), "product_id is required"),
            (with("product_id", json!(5)), "product_id must be a string"),
            (
                with("product_id", json!("")),
                "product_id must not be empty",
            ),
            (with("request_id", json!(7)), "request_id must be a string"),
            (with("units", json!(0)), "units must be a positive integer"),
            (
                with("units", json!(1.5)),
                "units must be a positive integer",
            ),
            (
                with("units", json!("2")),
                "units must be a positive integer",
            ),
            (with("custom_price", json!(99)), "custom_price"),
            (with("custom_price", json!(15.5)), "custom_price"),
            (
                with("discount_code", json!(10)),
                "discount_code must be a string",
            ),
            (
                with("affiliate_code", json!(false)),
                "affiliate_code must be a string",
            ),
            (
                with("customer", json!("buyer@example.com")),
                "customer must be an object",
            ),
            (
                with("customer", json!({"email": "not-an-email"})),
                "customer.email must be an email",
            ),
            (
                with("customer", json!({"email": "a b@example.com"})),
                "customer.email must be an email",
            ),
            (
                with("customer", json!({"email": 3})),
                "customer.email must be a string",
            ),
            (
                with("customer", json!({"id": "c1", "email": "a@example.com"})),
                "only one of id or email",
            ),
            (
                with("customer", json!({"email": "a@example.com", "phone": "1"})),
                "customer.phone should not exist",
            ),
            (
                with("custom_fields", json!({"type": "text"})),
                "custom_fields must be an array",
            ),
            (
                field(json!({"key": "k", "label": "L"})),
                "custom_fields[0].type is required",
            ),
            (
                field(json!({"type": "radio", "key": "k", "label": "L"})),
                "custom_fields[0].type",
            ),
            (
                field(json!({"type": "text", "label": "L"})),
                "custom_fields[0].key is required",
            ),
            (
                field(json!({"type": "text", "key": "a-b", "label": "L"})),
                "alphanumeric",
            ),
            (
                field(json!({"type": "text", "key": "k"})),
                "custom_fields[0].label is required",
            ),
            (
                field(json!({"type": "text", "key": "k", "label": "x".repeat(51)})),
                "at most 50",
            ),
            (
                field(json!({"type": "text", "key": "k", "label": "L", "optional": "yes"})),
                "optional must be a boolean",
            ),
            (
                field(json!({"type": "text", "key": "k", "label": "L", "text": {"maxLength": 3}})),
                "text.maxLength should not exist",
            ),
            (
                field(json!({"type": "text", "key": "k", "label": "L", "required": true})),
                "custom_fields[0].required should not exist",
            ),
            (
                with(
                    "custom_fields",
                    json!([
                    {"type": "text", "key": "a", "label": "A"}, {"type": "text", "key": "b", "label": "B"},
                    {"type": "text", "key": "c", "label": "C"}, {"type": "text", "key": "d", "label": "D"}]),
                ),
                "at most 3",
            ),
            (
                with("custom_field", json!([{"type": "text"}])),
                "custom_field[0].key is required",
            ),
            (
                with("success_url", json!("/paid")),
                "success_url must be an http(s) URL",
            ),
            (
                with("success_url", json!(1)),
                "success_url must be a string",
            ),
            (
                with("metadata", json!(["order_id"])),
                "metadata must be an object",
            ),
            (
                with("metadata", json!({"order": {"id": "o"}})),
                "metadata.order must be a string, a number or null",
            ),
            (
                with("metadata", json!({"paid": true})),
                "metadata.paid must be",
            ),
            // the SDK's camelCase names are not the wire names
            (
                with("productId", json!("prod_1")),
                "property productId should not exist",
            ),
            (
                with("successUrl", json!("https://example.com")),
                "property successUrl should not exist",
            ),
            (
                with("cancel_url", json!("https://example.com")),
                "property cancel_url should not exist",
            ),
            (json!(["prod_1"]), "body must be a JSON object"),
        ];
        for (body, why) in &cases {
            let (status, reply) = checkout(&sim, Some("k"), "application/json", &body.to_string());
            assert_eq!(status, 400, "{body}: {reply}");
            assert_eq!(reply["status"], 400);
            assert_eq!(reply["error"], "Bad Request");
            assert!(reply["trace_id"].as_str().is_some_and(|t| !t.is_empty()));
            assert!(reply["timestamp"].as_u64().is_some());
            let message = reply["message"][0].as_str().unwrap_or_default();
            assert!(message.contains(why), "{body}: wanted {why:?}, got {reply}");
        }
        // not JSON, or not declared JSON
        let (status, reply) = checkout(&sim, Some("k"), "application/json", "{product_id: 1");
        assert_eq!(
            (
                status,
                reply["message"][0]
                    .as_str()
                    .unwrap()
                    .contains("not valid JSON")
            ),
            (400, true)
        );
        let (status, reply) = checkout(&sim, Some("k"), "text/plain", CHECKOUT_FIXTURE);
        assert_eq!(
            (
                status,
                reply["message"][0]
                    .as_str()
                    .unwrap()
                    .contains("application/json")
            ),
            (400, true)
        );
        // no key, or an empty one: 403 Forbidden, without a message, as Creem documents
        for key in [None, Some(" ")] {
            let (status, reply) = checkout(&sim, key, "application/json", CHECKOUT_FIXTURE);
            assert_eq!(status, 403, "{reply}");
            assert_eq!(
                (reply["status"].as_u64(), reply["error"].as_str()),
                (Some(403), Some("Forbidden"))
            );
            assert!(reply.get("message").is_none());
        }
        let stats = sim.stats();
        assert_eq!(stats.refused.len(), cases.len() + 4);
        assert!(stats.refused.iter().all(|(path, _)| path == CHECKOUTS));
        assert!(stats.checkouts.is_empty(), "nothing refused was created");
    }
}
