//! Creem webhooks as Creem sends them: an event in its envelope, signed with `creem-signature`
//! (hex HMAC-SHA256 of the raw body), posted to `/webhooks/creem`.

use crate::client::{Client, Reply};
use serde_json::{json, Value};

/// An event of `kind` about `object`, in Creem's envelope.
pub fn envelope(id: &str, kind: &str, created_ms: i64, object: Value) -> Value {
    json!({"id": id, "eventType": kind, "created_at": created_ms, "object": object})
}

/// Posts `body` (JSON) to the webhook route with `headers`, signed or not.
pub fn post(c: &Client, headers: &[(&str, &str)], body: &str) -> Reply {
    c.send(
        "POST",
        "/webhooks/creem",
        None,
        headers,
        Some(("application/json", body.as_bytes())),
    )
}

/// Delivers a raw body the way Creem does: `creem-signature` = hex HMAC-SHA256 of the body.
pub fn deliver_body(c: &Client, body: &str, secret: &str) -> Reply {
    let sig = shared::signing::hmac_hex(secret.as_bytes(), body.as_bytes());
    post(c, &[("creem-signature", &sig)], body)
}

/// Delivers an event the way Creem does.
pub fn deliver(c: &Client, event: &Value, secret: &str) -> Reply {
    deliver_body(c, &event.to_string(), secret)
}
