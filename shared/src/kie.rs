//! kie.ai's API as the pipeline uses it: what we send and how we read what comes back.
//! Shapes follow kie.ai's public docs (see `../shared/PLATFORM.md`); the local simulator in
//! `sim/` speaks the same shapes.

use crate::model::Model;
use crate::retry::Failure;
use serde::Deserialize;
use serde_json::{json, Value};

/// Where to create a task and where to ask about it.
pub fn endpoints(model: Model) -> (&'static str, &'static str) {
    match model {
        Model::Kie4o => (
            "/api/v1/gpt4o-image/generate",
            "/api/v1/gpt4o-image/record-info",
        ),
        Model::KieKontext => (
            "/api/v1/flux/kontext/generate",
            "/api/v1/flux/kontext/record-info",
        ),
    }
}

/// The create-task body. `image_urls` are already URLs the provider can fetch.
pub fn create_body(
    model: Model,
    prompt: &str,
    size: &str,
    image_urls: &[String],
    callback: Option<&str>,
) -> Value {
    let mut body = match model {
        Model::Kie4o => {
            json!({ "prompt": prompt, "size": size, "nVariants": 1, "filesUrl": image_urls })
        }
        Model::KieKontext => json!({
            "prompt": prompt,
            "model": "flux-kontext-pro",
            "aspectRatio": size,
            "outputFormat": "png",
        }),
    };
    if let (Model::KieKontext, Some(first)) = (model, image_urls.first()) {
        body["inputImage"] = json!(first);
    }
    if let Some(url) = callback {
        body["callBackUrl"] = json!(url);
    }
    body
}

#[derive(Deserialize)]
struct Envelope {
    code: i64,
    #[serde(default)]
    msg: Option<String>,
    #[serde(default)]
    data: Option<Value>,
}

fn envelope(body: &[u8]) -> Result<(Value, String), Failure> {
    let env: Envelope = serde_json::from_slice(body).map_err(|e| {
        Failure::transient(
            "malformed_response",
            format!("unreadable provider response: {e}"),
        )
    })?;
    let msg = env.msg.unwrap_or_default();
    match env.code {
        200 => Ok((env.data.unwrap_or(Value::Null), msg)),
        // 429 too many requests, 455 service unavailable, 500 server error
        429 | 455 | 500..=599 if env.code != 501 && env.code != 505 => Err(Failure::transient(
            "provider_busy",
            format!("kie code {}: {msg}", env.code),
        )),
        code => Err(Failure::permanent(
            permanent_class(code, &msg),
            format!("kie code {code}: {msg}"),
        )),
    }
}

fn permanent_class(code: i64, msg: &str) -> &'static str {
    let lower = msg.to_ascii_lowercase();
    if code == 400
        && (lower.contains("policy") || lower.contains("sensitive") || lower.contains("violat"))
    {
        "content_policy"
    } else if code == 401 || code == 403 {
        "provider_auth"
    } else if code == 402 {
        "provider_credits"
    } else {
        "provider_rejected"
    }
}

/// Reads a create-task response into the provider's task id.
pub fn parse_created(body: &[u8]) -> Result<String, Failure> {
    let (data, _) = envelope(body)?;
    data.get("taskId")
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty() && id.len() <= 256)
        .map(str::to_owned)
        .ok_or_else(|| {
            Failure::transient("malformed_response", "create response has no data.taskId")
        })
}

/// Where a provider task stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    Generating,
    Succeeded { urls: Vec<String> },
    Failed { class: &'static str, reason: String },
}

/// Reads a record-info response.
pub fn parse_record(model: Model, body: &[u8]) -> Result<Progress, Failure> {
    let (data, _) = envelope(body)?;
    let error_text = || {
        let code = data
            .get("errorCode")
            .map(|c| c.to_string())
            .unwrap_or_default();
        let msg = data
            .get("errorMessage")
            .and_then(Value::as_str)
            .unwrap_or("no message");
        format!("{msg} (code {code})")
    };
    let malformed =
        |what: &str| Failure::transient("malformed_response", format!("record-info: {what}"));
    match model {
        Model::Kie4o => {
            let status = data
                .get("status")
                .and_then(Value::as_str)
                .ok_or_else(|| malformed("no data.status"))?;
            match status {
                "GENERATING" => Ok(Progress::Generating),
                "SUCCESS" => {
                    let urls = string_list(data.pointer("/response/resultUrls"));
                    if urls.is_empty() {
                        Err(malformed("SUCCESS without resultUrls"))
                    } else {
                        Ok(Progress::Succeeded { urls })
                    }
                }
                "CREATE_TASK_FAILED" => Ok(Progress::Failed {
                    class: "create_task_failed",
                    reason: error_text(),
                }),
                "GENERATE_FAILED" => Ok(Progress::Failed {
                    class: "generate_failed",
                    reason: error_text(),
                }),
                other => Err(malformed(&format!("unknown status {other:?}"))),
            }
        }
        Model::KieKontext => {
            let flag = data
                .get("successFlag")
                .and_then(Value::as_i64)
                .ok_or_else(|| malformed("no data.successFlag"))?;
            match flag {
                0 => Ok(Progress::Generating),
                1 => match data
                    .pointer("/response/resultImageUrl")
                    .and_then(Value::as_str)
                {
                    Some(url) if !url.is_empty() => Ok(Progress::Succeeded {
                        urls: vec![url.to_owned()],
                    }),
                    _ => Err(malformed("successFlag 1 without resultImageUrl")),
                },
                2 => Ok(Progress::Failed {
                    class: "create_task_failed",
                    reason: error_text(),
                }),
                3 => Ok(Progress::Failed {
                    class: "generate_failed",
                    reason: error_text(),
                }),
                other => Err(malformed(&format!("unknown successFlag {other}"))),
            }
        }
    }
}

fn string_list(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Where kie.ai should post when a task finishes: our webhook route with the task and its token.
/// record-info's URL for a provider task (the id percent-encoded: it is the provider's text).
pub fn record_url(base: &str, model: Model, external_id: &str) -> String {
    let mut id = String::with_capacity(external_id.len());
    for b in external_id.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            id.push(char::from(b));
        } else {
            id.push_str(&format!("%{b:02X}"));
        }
    }
    format!("{base}{}?taskId={id}", endpoints(model).1)
}

pub fn callback_url(base: &str, model: Model, task_id: &str, token: &str) -> String {
    format!(
        "{base}/webhooks/ai/{}?task={task_id}&token={token}",
        model.as_str()
    )
}

/// The provider's task id in a callback body (`{code, msg, data: {taskId, info: {...}}}`). The
/// results in it are never trusted: the callback only prompts a poll of record-info.
pub fn parse_callback(body: &[u8]) -> Result<String, String> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| format!("body is not valid JSON: {e}"))?;
    v.pointer("/data/taskId")
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty() && id.len() <= 256)
        .map(str::to_owned)
        .ok_or_else(|| "data.taskId is missing".to_owned())
}

#[cfg(test)]
mod tests {

    #[test]
    fn record_urls_encode_the_provider_id() {
        assert_eq!(record_url("http://k", Model::Kie4o, "4o-abc_1.2~x"), "http://k/api/v1/gpt4o-image/record-info?taskId=4o-abc_1.2~x");
        assert_eq!(record_url("http://k", Model::KieKontext, "a b&c=é"), "http://k/api/v1/flux/kontext/record-info?taskId=a%20b%26c%3D%C3%A9");
    }

    use super::*;

    #[test]
    fn create_bodies_match_each_api() {
        let urls = vec!["https://x/a.png".to_owned()];
        let b = create_body(Model::Kie4o, "a cat", "1:1", &urls, Some("https://cb"));
        assert_eq!(b["filesUrl"][0], "https://x/a.png");
        assert_eq!(b["callBackUrl"], "https://cb");
        let k = create_body(Model::KieKontext, "a cat", "16:9", &urls, None);
        assert_eq!(k["inputImage"], "https://x/a.png");
        assert_eq!(k["aspectRatio"], "16:9");
        assert!(k.get("callBackUrl").is_none());
    }

    #[test]
    fn created_and_refused() {
        assert_eq!(
            parse_created(br#"{"code":200,"msg":"success","data":{"taskId":"abc"}}"#).unwrap(),
            "abc"
        );
        assert_eq!(
            parse_created(br#"{"code":401,"msg":"bad key"}"#)
                .unwrap_err()
                .class(),
            "provider_auth"
        );
        assert_eq!(
            parse_created(br#"{"code":455,"msg":"busy"}"#)
                .unwrap_err()
                .class(),
            "provider_busy"
        );
        assert_eq!(
            parse_created(br#"{"code":400,"msg":"content policy violation"}"#)
                .unwrap_err()
                .class(),
            "content_policy"
        );
        assert!(matches!(
            parse_created(b"{\"code\":200,\"da"),
            Err(Failure::Transient { .. })
        ));
        assert!(matches!(
            parse_created(br#"{"code":200,"data":{}}"#),
            Err(Failure::Transient { .. })
        ));
    }

    #[test]
    fn gpt4o_records() {
        let gen = br#"{"code":200,"data":{"taskId":"t","status":"GENERATING","progress":"0.40"}}"#;
        assert_eq!(
            parse_record(Model::Kie4o, gen).unwrap(),
            Progress::Generating
        );
        let ok = br#"{"code":200,"data":{"taskId":"t","status":"SUCCESS","response":{"resultUrls":["u1","u2"]}}}"#;
        assert_eq!(
            parse_record(Model::Kie4o, ok).unwrap(),
            Progress::Succeeded {
                urls: vec!["u1".into(), "u2".into()]
            }
        );
        let failed = br#"{"code":200,"data":{"status":"GENERATE_FAILED","errorCode":400,"errorMessage":"nsfw"}}"#;
        assert!(matches!(
            parse_record(Model::Kie4o, failed).unwrap(),
            Progress::Failed {
                class: "generate_failed",
                ..
            }
        ));
    }

    #[test]
    fn callbacks() {
        assert_eq!(
            parse_callback(
                br#"{"code":200,"msg":"ok","data":{"taskId":"4o1","info":{"result_urls":["u"]}}}"#
            )
            .unwrap(),
            "4o1"
        );
        assert!(parse_callback(b"{").is_err());
        assert!(parse_callback(br#"{"code":200,"data":{}}"#).is_err());
        assert_eq!(
            callback_url("https://api", Model::Kie4o, "t1", "abc"),
            "https://api/webhooks/ai/kie_4o?task=t1&token=abc"
        );
    }

    #[test]
    fn kontext_records() {
        let ok = br#"{"code":200,"data":{"successFlag":1,"response":{"resultImageUrl":"u"}}}"#;
        assert_eq!(
            parse_record(Model::KieKontext, ok).unwrap(),
            Progress::Succeeded {
                urls: vec!["u".into()]
            }
        );
        let failed = br#"{"code":200,"data":{"successFlag":2,"errorMessage":"bad input"}}"#;
        assert!(matches!(
            parse_record(Model::KieKontext, failed).unwrap(),
            Progress::Failed {
                class: "create_task_failed",
                ..
            }
        ));
        assert!(parse_record(
            Model::KieKontext,
            br#"{"code":200,"data":{"successFlag":9}}"#
        )
        .is_err());
    }
}
