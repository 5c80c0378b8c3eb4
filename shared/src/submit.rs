//! A task submission, parsed: whatever the client sent either becomes a [`TaskInput`] or a
//! [`FieldError`] naming the field and the problem.

use crate::kie;
use crate::model::Model;
use crate::validation::{only_fields, Expected, FieldError};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const MAX_PROMPT_CHARS: usize = 4000;
pub const MAX_URL_LEN: usize = 2048;
const FIELDS: [&str; 4] = ["prompt", "model", "size", "images"];

fn err(field: &str, code: &'static str, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.to_owned(),
        code,
        message: message.into(),
    }
}

/// An input image: a URL the provider can fetch, or an upload we stored in R2.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageRef {
    Url(String),
    Upload(String),
}

/// A valid submission. Serialized as `ai_tasks.input_params`; equal inputs serialize equally,
/// which is how a repeated idempotency key with a different body is detected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskInput {
    pub prompt: String,
    pub model: Model,
    pub size: String,
    pub images: Vec<ImageRef>,
}

impl TaskInput {
    pub fn to_params(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Parses the JSON fields of a submission; `uploads` are R2 keys of images that came in the same
/// multipart request.
pub fn parse(body: &Value, uploads: Vec<String>) -> Result<TaskInput, FieldError> {
    let obj = body
        .as_object()
        .ok_or_else(|| err("body", "invalid_body", "expected a JSON object"))?;
    only_fields(body, &FIELDS, Expected::OneOf)?;

    let prompt = match obj.get("prompt") {
        None | Some(Value::Null) => return Err(err("prompt", "required", "is required")),
        Some(Value::String(s)) => s.trim().to_owned(),
        Some(_) => return Err(err("prompt", "invalid_type", "must be a string")),
    };
    if prompt.is_empty() {
        return Err(err("prompt", "empty", "must not be empty"));
    }
    if prompt.chars().count() > MAX_PROMPT_CHARS {
        return Err(err(
            "prompt",
            "too_long",
            format!("must be at most {MAX_PROMPT_CHARS} characters"),
        ));
    }
    if prompt
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(err(
            "prompt",
            "invalid_characters",
            "must not contain control characters",
        ));
    }

    let model = match obj.get("model") {
        None | Some(Value::Null) => return Err(err("model", "required", "is required")),
        Some(Value::String(s)) => Model::parse(s).ok_or_else(|| {
            let known: Vec<&str> = Model::ALL.iter().map(|m| m.as_str()).collect();
            err(
                "model",
                "unknown_model",
                format!("unknown model; expected one of {}", known.join(", ")),
            )
        })?,
        Some(_) => return Err(err("model", "invalid_type", "must be a string")),
    };

    // each model's own sizes (`kie::sizes`); one it does not accept is refused, never changed
    let accepted = kie::sizes(model);
    let size = match obj.get("size") {
        None | Some(Value::Null) => kie::default_size(model).to_owned(),
        Some(Value::String(s)) if accepted.contains(&s.as_str()) => s.clone(),
        Some(other) => {
            return Err(err(
                "size",
                "invalid_value",
                format!(
                    "{model} accepts the sizes {}; got {other}",
                    accepted.join(", ")
                ),
            ))
        }
    };

    let mut images = Vec::new();
    match obj.get("images") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let field = format!("images[{i}]");
                let url = item
                    .as_str()
                    .ok_or_else(|| err(&field, "invalid_type", "must be a URL string"))?;
                if url.len() > MAX_URL_LEN {
                    return Err(err(
                        &field,
                        "too_long",
                        format!("must be at most {MAX_URL_LEN} bytes"),
                    ));
                }
                if !is_http_url(url) {
                    return Err(err(
                        &field,
                        "invalid_url",
                        "must be an absolute http(s) URL",
                    ));
                }
                images.push(ImageRef::Url(url.to_owned()));
            }
        }
        Some(_) => return Err(err("images", "invalid_type", "must be an array of URLs")),
    }
    images.extend(uploads.into_iter().map(ImageRef::Upload));
    if images.len() > model.max_input_images() {
        return Err(err(
            "images",
            "too_many",
            format!(
                "{} accepts at most {} input images",
                model,
                model.max_input_images()
            ),
        ));
    }

    Ok(TaskInput {
        prompt,
        model,
        size,
        images,
    })
}

fn is_http_url(s: &str) -> bool {
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"));
    match rest {
        Some(r) => {
            let host = r.split(['/', '?', '#']).next().unwrap_or("");
            !host.is_empty() && !s.chars().any(|c| c.is_whitespace() || c.is_control())
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn field(v: Value) -> String {
        parse(&v, vec![]).unwrap_err().field
    }

    #[test]
    fn a_good_submission_parses_with_defaults() {
        let t = parse(&json!({"prompt": "  a cat  ", "model": "kie_4o"}), vec![]).unwrap();
        assert_eq!(t.prompt, "a cat");
        assert_eq!(t.size, "1:1");
        assert!(t.images.is_empty());
        let with = parse(
            &json!({"prompt": "x", "model": "kie_4o", "images": ["https://a/b.png"]}),
            vec!["cache/u/1.png".into()],
        )
        .unwrap();
        assert_eq!(
            with.images,
            vec![
                ImageRef::Url("https://a/b.png".into()),
                ImageRef::Upload("cache/u/1.png".into())
            ]
        );
    }

    #[test]
    fn each_problem_names_its_field() {
        assert_eq!(field(json!([])), "body");
        assert_eq!(field(json!({"model": "kie_4o"})), "prompt");
        assert_eq!(field(json!({"prompt": "   ", "model": "kie_4o"})), "prompt");
        assert_eq!(field(json!({"prompt": 5, "model": "kie_4o"})), "prompt");
        assert_eq!(
            field(json!({"prompt": "x".repeat(4001), "model": "kie_4o"})),
            "prompt"
        );
        assert_eq!(field(json!({"prompt": "x"})), "model");
        assert_eq!(
            field(json!({"prompt": "x", "model": "midjourney"})),
            "model"
        );
        assert_eq!(
            field(json!({"prompt": "x", "model": "kie_4o", "size": "9:9"})),
            "size"
        );
        assert_eq!(
            field(json!({"prompt": "x", "model": "kie_4o", "size": 1})),
            "size"
        );
        assert_eq!(
            field(json!({"prompt": "x", "model": "kie_4o", "images": ["ftp://a"]})),
            "images[0]"
        );
        assert_eq!(
            field(json!({"prompt": "x", "model": "kie_4o", "images": "https://a"})),
            "images"
        );
        assert_eq!(
            field(json!({"prompt": "x", "model": "kie_4o", "extra": 1})),
            "extra"
        );
        assert_eq!(
            field(
                json!({"prompt": "x", "model": "kie_kontext", "images": ["https://a/1", "https://a/2"]})
            ),
            "images"
        );
        assert_eq!(
            parse(&json!({"prompt": "x", "model": "nope"}), vec![])
                .unwrap_err()
                .code,
            "unknown_model"
        );
    }

    #[test]
    fn sizes_are_each_models_own() {
        // every size a model accepts is kept as it is
        for model in Model::ALL {
            for size in kie::sizes(model) {
                let t = parse(
                    &json!({"prompt": "x", "model": model.as_str(), "size": size}),
                    vec![],
                )
                .unwrap();
                assert_eq!(t.size, *size);
            }
            // and the default is one of them
            let t = parse(&json!({"prompt": "x", "model": model.as_str()}), vec![]).unwrap();
            assert!(
                kie::sizes(model).contains(&t.size.as_str()),
                "{model}: {}",
                t.size
            );
        }
        // Flux Kontext has no 3:2 or 2:3; GPT-4o none of Kontext's others
        for (model, size, listed) in [
            ("kie_kontext", "3:2", "21:9, 16:9, 4:3, 1:1, 3:4, 9:16"),
            ("kie_kontext", "2:3", "21:9, 16:9, 4:3, 1:1, 3:4, 9:16"),
            ("kie_4o", "16:9", "1:1, 3:2, 2:3"),
            ("kie_4o", "9:16", "1:1, 3:2, 2:3"),
        ] {
            let e = parse(
                &json!({"prompt": "x", "model": model, "size": size}),
                vec![],
            )
            .unwrap_err();
            assert_eq!((e.field.as_str(), e.code), ("size", "invalid_value"));
            assert!(
                e.message.contains(model) && e.message.contains(listed) && e.message.contains(size),
                "{e}"
            );
        }
    }

    #[test]
    fn params_are_canonical() {
        let a = parse(&json!({"model": "kie_4o", "prompt": "x"}), vec![]).unwrap();
        let b = parse(
            &json!({"prompt": "x ", "model": "kie_4o", "size": "1:1"}),
            vec![],
        )
        .unwrap();
        assert_eq!(a.to_params(), b.to_params());
        let back: TaskInput = serde_json::from_str(&a.to_params()).unwrap();
        assert_eq!(back, a);
    }
}
