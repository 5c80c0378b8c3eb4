//! Signatures and secrets: HMAC-SHA256, token digests, constant-time comparison.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length; this cannot fail.
    HmacSha256::new_from_slice(secret).unwrap_or_else(|_| unreachable_mac())
}

#[allow(clippy::expect_used)]
fn unreachable_mac() -> HmacSha256 {
    HmacSha256::new_from_slice(b"k").expect("HMAC takes any key length")
}

pub fn hmac_hex(secret: &[u8], message: &[u8]) -> String {
    let mut m = mac(secret);
    m.update(message);
    hex::encode(m.finalize().into_bytes())
}

/// Checks a hex HMAC in constant time.
pub fn verify_hmac_hex(secret: &[u8], message: &[u8], signature_hex: &str) -> bool {
    let Ok(sig) = hex::decode(signature_hex.trim()) else {
        return false;
    };
    let mut m = mac(secret);
    m.update(message);
    m.verify_slice(&sig).is_ok()
}

/// Equality that takes the same time wherever the inputs differ.
pub fn ct_eq(a: &str, b: &str) -> bool {
    // compare digests so the length of the secret does not leak either
    let da = Sha256::digest(a.as_bytes());
    let db = Sha256::digest(b.as_bytes());
    da.ct_eq(&db).into()
}

/// The SHA-256 of a string, hex: deterministic ids for rows keyed by outside identifiers.
pub fn token_digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The signature of a time-limited file URL: HMAC over the key and the expiry.
pub fn file_signature(secret: &[u8], key: &str, expires_at: i64) -> String {
    hmac_hex(secret, format!("{key}\n{expires_at}").as_bytes())
}

/// Checks a file URL: signature over exactly this key and expiry, and not expired.
pub fn verify_file_signature(
    secret: &[u8],
    key: &str,
    expires_at: i64,
    signature: &str,
    now: i64,
) -> bool {
    expires_at > now
        && verify_hmac_hex(secret, format!("{key}\n{expires_at}").as_bytes(), signature)
}

/// A time-limited URL for an R2 object served by the api worker's `/files/` route.
pub fn signed_file_url(base: &str, secret: &[u8], key: &str, expires_at: i64) -> String {
    format!(
        "{base}/files/{key}?exp={expires_at}&sig={}",
        file_signature(secret, key, expires_at)
    )
}

/// The per-task token in a provider callback URL: only we can make it, and it names one task,
/// its model and its deadline, so the callback learns all three from its URL and reads no D1 row.
pub fn callback_token(secret: &[u8], task_id: &str, model: &str, deadline_at: i64) -> String {
    hmac_hex(
        secret,
        callback_claims(task_id, model, deadline_at).as_bytes(),
    )
}

pub fn verify_callback_token(
    secret: &[u8],
    task_id: &str,
    model: &str,
    deadline_at: i64,
    token: &str,
) -> bool {
    verify_hmac_hex(
        secret,
        callback_claims(task_id, model, deadline_at).as_bytes(),
        token,
    )
}

fn callback_claims(task_id: &str, model: &str, deadline_at: i64) -> String {
    format!("callback\n{task_id}\n{model}\n{deadline_at}")
}

/// kie.ai's optional callback signature: base64(HMAC-SHA256(taskId + "." + timestamp)).
pub fn kie_callback_signature(secret: &[u8], provider_task_id: &str, timestamp: &str) -> String {
    use base64::engine::general_purpose::STANDARD;
    let mut m = mac(secret);
    m.update(format!("{provider_task_id}.{timestamp}").as_bytes());
    STANDARD.encode(m.finalize().into_bytes())
}

/// Checks kie.ai's callback signature in constant time.
pub fn verify_kie_callback(
    secret: &[u8],
    provider_task_id: &str,
    timestamp: &str,
    signature: &str,
) -> bool {
    use base64::engine::general_purpose::STANDARD;
    let Ok(sig) = STANDARD.decode(signature.trim()) else {
        return false;
    };
    let mut m = mac(secret);
    m.update(format!("{provider_task_id}.{timestamp}").as_bytes());
    m.verify_slice(&sig).is_ok()
}

/// The headers Creem's signature may come in, in the order the official `creem` SDK reads them
/// (`creem-signature`, else `x-creem-signature`).
pub const CREEM_SIGNATURE_HEADERS: [&str; 2] = ["creem-signature", "x-creem-signature"];

/// The hex digest of a Creem signature header: trimmed, without the `sha256=` prefix the SDK
/// also accepts (lowercase, as the SDK strips it).
pub fn creem_signature_hex(header: &str) -> &str {
    let trimmed = header.trim();
    trimmed.strip_prefix("sha256=").unwrap_or(trimmed)
}

/// Creem's signature (see [`CREEM_SIGNATURE_HEADERS`]): hex HMAC-SHA256 of the raw body, with or
/// without a `sha256=` prefix, in either case of hex. Any of `secrets` may have signed it
/// (rotation); each check is constant-time.
pub fn verify_creem(body: &[u8], signature: &str, secrets: &[String]) -> bool {
    let hex = creem_signature_hex(signature);
    secrets
        .iter()
        .any(|s| verify_hmac_hex(s.as_bytes(), body, hex))
}

/// Why a Standard Webhooks signature was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StandardWebhookError {
    Malformed,
    Stale,
    NoMatch,
}

/// Standard Webhooks: `webhook-signature` is a space-separated list of `v1,<base64>` over
/// `"{webhook-id}.{webhook-timestamp}.{body}"`, keyed by the base64 part of a `whsec_…` secret;
/// the timestamp must be within `tolerance_secs` of `now`.
pub fn verify_standard_webhook(
    id: &str,
    timestamp: &str,
    signatures: &str,
    body: &[u8],
    secrets: &[String],
    now: i64,
    tolerance_secs: i64,
) -> Result<(), StandardWebhookError> {
    use base64::engine::general_purpose::STANDARD;
    let ts: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| StandardWebhookError::Malformed)?;
    if id.is_empty() || id.len() > 256 {
        return Err(StandardWebhookError::Malformed);
    }
    if (now - ts).abs() > tolerance_secs {
        return Err(StandardWebhookError::Stale);
    }
    let mut signed = format!("{id}.{ts}.").into_bytes();
    signed.extend_from_slice(body);
    let candidates: Vec<Vec<u8>> = signatures
        .split_whitespace()
        .filter_map(|s| s.strip_prefix("v1,"))
        .filter_map(|b| STANDARD.decode(b).ok())
        .collect();
    if candidates.is_empty() {
        return Err(StandardWebhookError::Malformed);
    }
    for secret in secrets {
        let Ok(key) = STANDARD.decode(secret.strip_prefix("whsec_").unwrap_or(secret)) else {
            continue;
        };
        for sig in &candidates {
            let mut m = mac(&key);
            m.update(&signed);
            if m.verify_slice(sig).is_ok() {
                return Ok(());
            }
        }
    }
    Err(StandardWebhookError::NoMatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        assert_eq!(
            hmac_hex(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert!(verify_hmac_hex(
            b"Jefe",
            b"what do ya want for nothing?",
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        ));
        assert!(!verify_hmac_hex(
            b"Jefe",
            b"what do ya want for nothing!",
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        ));
        assert!(!verify_hmac_hex(b"Jefe", b"x", "not hex"));
    }

    #[test]
    fn file_urls_bind_key_and_expiry() {
        let sig = file_signature(b"s", "result/a.png", 100);
        assert!(verify_file_signature(b"s", "result/a.png", 100, &sig, 99));
        assert!(
            !verify_file_signature(b"s", "result/a.png", 100, &sig, 100),
            "expired"
        );
        assert!(
            !verify_file_signature(b"s", "result/b.png", 100, &sig, 0),
            "other key"
        );
        assert!(
            !verify_file_signature(b"s", "result/a.png", 101, &sig, 0),
            "other expiry"
        );
        assert!(
            !verify_file_signature(b"t", "result/a.png", 100, &sig, 0),
            "other secret"
        );
    }

    #[test]
    fn callback_tokens_and_kie_signatures() {
        let t = callback_token(b"k", "task-1", "kie_4o", 1000);
        assert!(verify_callback_token(b"k", "task-1", "kie_4o", 1000, &t));
        assert!(!verify_callback_token(b"k", "task-2", "kie_4o", 1000, &t));
        assert!(
            !verify_callback_token(b"k", "task-1", "kie_kontext", 1000, &t),
            "another model"
        );
        assert!(
            !verify_callback_token(b"k", "task-1", "kie_4o", 1001, &t),
            "another deadline"
        );
        assert!(!verify_callback_token(
            b"other", "task-1", "kie_4o", 1000, &t
        ));
        let sig = kie_callback_signature(b"whsec", "4o123", "1700000000");
        assert!(verify_kie_callback(b"whsec", "4o123", "1700000000", &sig));
        assert!(!verify_kie_callback(b"whsec", "4o123", "1700000001", &sig));
        assert!(!verify_kie_callback(b"whsec", "4o124", "1700000000", &sig));
        assert!(!verify_kie_callback(b"whsec", "4o123", "1700000000", "%%%"));
    }

    #[test]
    fn creem_signatures_accept_any_current_secret() {
        let body = br#"{"id":"evt_1"}"#;
        let sig = hmac_hex(b"new", body);
        let secrets = vec!["old".to_owned(), "new".to_owned()];
        assert!(verify_creem(body, &sig, &secrets));
        assert!(
            !verify_creem(br#"{"id":"evt_2"}"#, &sig, &secrets),
            "body changed after signing"
        );
        assert!(
            !verify_creem(body, &sig, &["other".to_owned()]),
            "another secret"
        );
        assert!(!verify_creem(body, "", &secrets));
    }

    /// What the official `creem` SDK accepts: either header, a `sha256=` prefix or none, hex in
    /// either case; nothing else.
    #[test]
    fn creem_signatures_take_the_sdks_forms() {
        let body = br#"{"id":"evt_1","eventType":"checkout.completed"}"#;
        let secrets = vec!["whsec".to_owned()];
        let sig = hmac_hex(b"whsec", body);
        for form in [
            sig.clone(),
            format!("sha256={sig}"),
            format!("  sha256={sig} "),
            sig.to_uppercase(),
            format!("sha256={}", sig.to_uppercase()),
        ] {
            assert!(verify_creem(body, &form, &secrets), "{form}");
        }
        for bad in [
            format!("SHA256={sig}"),
            format!("sha256:{sig}"),
            format!("sha1={sig}"),
            format!("sha256=sha256={sig}"),
            "sha256=".to_owned(),
            format!("v1,{sig}"),
        ] {
            assert!(!verify_creem(body, &bad, &secrets), "{bad}");
        }
        assert_eq!(creem_signature_hex(" sha256=ab "), "ab");
        assert_eq!(creem_signature_hex("ab"), "ab");
        assert_eq!(
            CREEM_SIGNATURE_HEADERS,
            ["creem-signature", "x-creem-signature"],
            "the SDK's order: creem-signature wins when both are sent"
        );
    }

    #[test]
    fn standard_webhooks_reference_vector() {
        // from the Standard Webhooks specification's test suite
        let secret = vec!["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_owned()];
        let body = br#"{"test": 2432232314}"#;
        let sig = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
        let id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
        assert_eq!(
            verify_standard_webhook(id, "1614265330", sig, body, &secret, 1_614_265_330, 300),
            Ok(())
        );
        assert_eq!(
            verify_standard_webhook(
                id,
                "1614265330",
                &format!("v1,bm9wZQ== {sig}"),
                body,
                &secret,
                1_614_265_400,
                300
            ),
            Ok(()),
            "one of several"
        );
        assert_eq!(
            verify_standard_webhook(id, "1614265330", sig, body, &secret, 1_614_266_000, 300),
            Err(StandardWebhookError::Stale)
        );
        assert_eq!(
            verify_standard_webhook(id, "1614265330", sig, b"{}", &secret, 1_614_265_330, 300),
            Err(StandardWebhookError::NoMatch)
        );
        assert_eq!(
            verify_standard_webhook(id, "soon", sig, body, &secret, 0, 300),
            Err(StandardWebhookError::Malformed)
        );
        assert_eq!(
            verify_standard_webhook(
                id,
                "1614265330",
                "v2,abc",
                body,
                &secret,
                1_614_265_330,
                300
            ),
            Err(StandardWebhookError::Malformed)
        );
    }

    #[test]
    fn tokens_and_comparison() {
        assert_eq!(token_digest("abc").len(), 64);
        assert!(ct_eq("same", "same"));
        assert!(!ct_eq("same", "Same"));
        assert!(!ct_eq("short", "shorter"));
    }
}
