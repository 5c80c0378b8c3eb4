//! What happens after each step, as data: [`decide`] maps a step's outcome and attempt number
//! to ack, retry after a delay, or dead-letter. Delays come from the `backoff` crate's
//! exponential policy; the queue does the waiting (retry or send with `delay_seconds`), never
//! the isolate.

use backoff::backoff::Backoff;
use backoff::ExponentialBackoffBuilder;
use std::time::Duration;

/// How a step failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Worth trying again: network errors, timeouts, 5xx, 429, unreadable responses.
    Transient {
        class: &'static str,
        detail: String,
        retry_after: Option<u32>,
    },
    /// Trying again cannot help: the provider refused the task or failed it.
    Permanent { class: &'static str, detail: String },
}

impl Failure {
    pub fn transient(class: &'static str, detail: impl Into<String>) -> Self {
        Failure::Transient {
            class,
            detail: detail.into(),
            retry_after: None,
        }
    }
    pub fn permanent(class: &'static str, detail: impl Into<String>) -> Self {
        Failure::Permanent {
            class,
            detail: detail.into(),
        }
    }
    pub fn class(&self) -> &'static str {
        match self {
            Failure::Transient { class, .. } | Failure::Permanent { class, .. } => class,
        }
    }
    pub fn detail(&self) -> &str {
        match self {
            Failure::Transient { detail, .. } | Failure::Permanent { detail, .. } => detail,
        }
    }
}

/// What the queue handler does with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The step is done (or there is nothing left to do).
    Ack,
    /// Deliver this message again after `seconds`.
    RetryAfter { seconds: u32 },
    /// Give up on the message: archive it for an operator.
    DeadLetter { class: String, reason: String },
}

/// The longest delay Cloudflare Queues accepts (`delay_seconds`, for a send or a retry): 12 hours.
/// A longer delay is refused by the queue, so no delay asked of it may exceed this.
pub const QUEUE_MAX_DELAY_SECS: u32 = 43_200;

/// The exponential policy for one kind of wait.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    pub initial: Duration,
    pub multiplier: f64,
    pub max: Duration,
    pub jitter: f64,
    /// Attempts after which a transient failure is given up on.
    pub max_attempts: u32,
}

impl Policy {
    /// Polling a provider that is still generating.
    pub const POLL: Policy = Policy {
        initial: Duration::from_secs(2),
        multiplier: 1.5,
        max: Duration::from_secs(30),
        jitter: 0.3,
        max_attempts: u32::MAX,
    };
    /// Retrying a step that failed transiently.
    pub const TRANSIENT: Policy = Policy {
        initial: Duration::from_secs(2),
        multiplier: 2.0,
        max: Duration::from_secs(300),
        jitter: 0.3,
        max_attempts: 8,
    };

    /// The longest wait this policy asks of the queue, in whole seconds: `max`, at least 1 and
    /// never more than the queue accepts ([`QUEUE_MAX_DELAY_SECS`]).
    pub fn max_secs(&self) -> u32 {
        let secs = u32::try_from(self.max.as_secs()).unwrap_or(u32::MAX);
        secs.clamp(1, QUEUE_MAX_DELAY_SECS)
    }

    /// The wait before attempt `attempt + 1`, in whole seconds (the queue's unit), at least 1
    /// and at most [`Policy::max_secs`].
    pub fn delay_secs(&self, attempt: u32) -> u32 {
        let exponent = i32::try_from(attempt.min(64)).unwrap_or(64);
        let grown = self.initial.as_secs_f64() * self.multiplier.powi(exponent);
        let current = Duration::from_secs_f64(grown.min(self.max.as_secs_f64()));
        let mut backoff = ExponentialBackoffBuilder::new()
            .with_initial_interval(current)
            .with_randomization_factor(self.jitter)
            .with_multiplier(self.multiplier)
            .with_max_interval(self.max)
            .with_max_elapsed_time(None)
            .build();
        let delay = backoff.next_backoff().unwrap_or(self.max).min(self.max);
        let secs = delay.as_secs_f64().ceil();
        if secs < 1.0 {
            1
        } else {
            // bounded by `max` (minutes) and clamped to u32 first: the cast cannot truncate
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let whole = secs.min(f64::from(u32::MAX)) as u32;
            whole.min(self.max_secs())
        }
    }
}

/// The wait before a task's first poll: the model's typical generation time, then the poll
/// policy's first wait. The provider's callback is the way a result normally arrives, at about
/// the typical time, and its poll needs a moment; polling is the fallback for a lost callback,
/// so asking before then would only race the callback's poll with provider calls and queue
/// operations. With no typical time (0), the policy's first wait alone. Never more than the
/// queue accepts.
pub fn first_poll_delay(poll: &Policy, typical_generation_secs: u32) -> u32 {
    poll.delay_secs(0)
        .saturating_add(typical_generation_secs)
        .min(QUEUE_MAX_DELAY_SECS)
}

/// The decision for a failed step at `attempt` (0 for the first try).
pub fn decide(failure: &Failure, attempt: u32, policy: &Policy) -> Decision {
    match failure {
        Failure::Permanent { class, detail } => Decision::DeadLetter {
            class: (*class).to_owned(),
            reason: detail.clone(),
        },
        Failure::Transient { class, detail, .. } if attempt + 1 >= policy.max_attempts => {
            Decision::DeadLetter {
                class: (*class).to_owned(),
                reason: format!("gave up after {} attempts: {detail}", attempt + 1),
            }
        }
        Failure::Transient { retry_after, .. } => {
            // A provider's Retry-After is honoured when longer than our backoff, but only up to
            // the policy's max: a provider asking for a day must not park the task past its
            // deadline, nor ask the queue for a delay it refuses.
            let backoff = policy.delay_secs(attempt);
            Decision::RetryAfter {
                seconds: retry_after
                    .map_or(backoff, |r| r.max(backoff))
                    .min(policy.max_secs()),
            }
        }
    }
}

/// Classifies an HTTP status from a provider; `None` means success.
pub fn classify_status(status: u16, retry_after: Option<&str>) -> Option<Failure> {
    match status {
        200..=299 => None,
        408 => Some(Failure::transient("timeout", "408 from provider")),
        429 => Some(Failure::Transient {
            class: "rate_limited",
            detail: "429 from provider".into(),
            // seconds only (an HTTP-date falls back to our backoff); a huge number saturates and
            // is capped by `decide` like any other long wait
            retry_after: retry_after
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|secs| u32::try_from(secs).unwrap_or(u32::MAX)),
        }),
        500..=599 => Some(Failure::transient(
            "server_error",
            format!("{status} from provider"),
        )),
        _ => Some(Failure::permanent(
            "client_error",
            format!("{status} from provider"),
        )),
    }
}

/// Checks a result download's status and headers before reading its body. A failed or
/// non-image response is transient (result URLs are flaky and may come back); one declared
/// larger than the cap is permanent.
pub fn check_result_headers(
    status: u16,
    content_length: Option<u64>,
    content_type: &str,
    max_bytes: u64,
) -> Result<(), Failure> {
    if let Some(f) = classify_status(status, None) {
        return Err(Failure::transient("download_failed", f.detail().to_owned()));
    }
    if content_length.is_some_and(|n| n > max_bytes) {
        return Err(Failure::permanent(
            "result_too_large",
            format!("result is larger than {max_bytes} bytes"),
        ));
    }
    // A generic binary type (or none) says nothing either way: the bytes are sniffed after the
    // download. Only a type that names something else (an HTML error page) is refused early.
    let generic = matches!(
        content_type.split(';').next().map(str::trim).unwrap_or(""),
        "" | "application/octet-stream" | "binary/octet-stream"
    );
    if !generic && crate::keys::image_extension(content_type).is_none() {
        return Err(Failure::transient(
            "not_image",
            format!("result content type is {content_type:?}"),
        ));
    }
    Ok(())
}

/// Checks a downloaded result's bytes: not empty, within the cap, really an image. Returns the
/// content type the bytes are.
pub fn check_result_body(bytes: &[u8], max_bytes: u64) -> Result<&'static str, Failure> {
    if bytes.is_empty() {
        return Err(Failure::transient("empty_result", "result body is empty"));
    }
    if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > max_bytes {
        return Err(Failure::permanent(
            "result_too_large",
            format!("result is larger than {max_bytes} bytes"),
        ));
    }
    crate::keys::sniff_image(bytes)
        .ok_or_else(|| Failure::transient("not_image", "result bytes are not an image"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_stay_capped() {
        let p = Policy {
            jitter: 0.0,
            ..Policy::TRANSIENT
        };
        let d: Vec<u32> = (0..12).map(|a| p.delay_secs(a)).collect();
        assert_eq!(&d[..5], &[2, 4, 8, 16, 32]);
        assert!(d.iter().all(|&s| s <= 300));
        assert_eq!(d[11], 300);
        assert!(d.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn jitter_stays_within_its_factor() {
        let p = Policy::POLL;
        for attempt in 0..6 {
            let nominal = (2.0 * 1.5f64.powi(attempt as i32)).min(30.0);
            for _ in 0..50 {
                let s = f64::from(p.delay_secs(attempt));
                assert!(
                    s >= (nominal * 0.7).floor().max(1.0) && s <= (nominal * 1.3).ceil(),
                    "{attempt}: {s}"
                );
            }
        }
    }

    #[test]
    fn permanent_failures_give_up_at_once() {
        let f = Failure::permanent("client_error", "400");
        assert!(matches!(
            decide(&f, 0, &Policy::TRANSIENT),
            Decision::DeadLetter { .. }
        ));
    }

    #[test]
    fn transient_failures_retry_then_give_up() {
        let f = Failure::transient("server_error", "503");
        assert!(matches!(
            decide(&f, 0, &Policy::TRANSIENT),
            Decision::RetryAfter { .. }
        ));
        assert!(matches!(
            decide(&f, 7, &Policy::TRANSIENT),
            Decision::DeadLetter { .. }
        ));
    }

    #[test]
    fn retry_after_is_honoured_when_longer_than_backoff() {
        let f = classify_status(429, Some("120")).unwrap();
        assert_eq!(
            decide(&f, 0, &Policy::TRANSIENT),
            Decision::RetryAfter { seconds: 120 }
        );
    }

    #[test]
    fn retry_after_is_capped_at_the_policy_max() {
        // a day, from the header: the queue is asked for the policy's max, not a day
        let f = classify_status(429, Some("86400")).unwrap();
        assert_eq!(
            decide(&f, 0, &Policy::TRANSIENT),
            Decision::RetryAfter { seconds: 300 }
        );
        // beyond u32: saturates, then capped, rather than ignored
        let f = classify_status(429, Some("99999999999")).unwrap();
        assert_eq!(
            decide(&f, 0, &Policy::TRANSIENT),
            Decision::RetryAfter { seconds: 300 }
        );
        // a shorter policy caps it shorter
        let f = classify_status(429, Some("120")).unwrap();
        assert_eq!(
            decide(&f, 0, &Policy::POLL),
            Decision::RetryAfter { seconds: 30 }
        );
        // below the max it is still honoured as is
        let f = classify_status(429, Some("299")).unwrap();
        assert_eq!(
            decide(&f, 0, &Policy::TRANSIENT),
            Decision::RetryAfter { seconds: 299 }
        );
    }

    #[test]
    fn no_delay_exceeds_what_the_queue_accepts() {
        // a configured max beyond the queue's own limit (RETRY_MAX_SECS is an env var)
        let p = Policy {
            initial: Duration::from_secs(60),
            max: Duration::from_secs(7 * 24 * 3600),
            jitter: 0.0,
            ..Policy::TRANSIENT
        };
        assert_eq!(p.max_secs(), QUEUE_MAX_DELAY_SECS);
        assert!((0..40).all(|a| p.delay_secs(a) <= QUEUE_MAX_DELAY_SECS));
        assert_eq!(p.delay_secs(30), QUEUE_MAX_DELAY_SECS);
        let f = classify_status(429, Some("604800")).unwrap();
        assert_eq!(
            decide(&f, 0, &p),
            Decision::RetryAfter {
                seconds: QUEUE_MAX_DELAY_SECS
            }
        );
        // and a sub-second max still asks for the queue's unit, never 0
        let tiny = Policy {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(500),
            ..Policy::POLL
        };
        assert_eq!(tiny.max_secs(), 1);
        assert_eq!(tiny.delay_secs(5), 1);
    }

    #[test]
    fn result_downloads_are_classified() {
        assert_eq!(
            check_result_headers(200, Some(10), "image/png", 100),
            Ok(())
        );
        assert_eq!(
            check_result_headers(503, None, "image/png", 100)
                .unwrap_err()
                .class(),
            "download_failed"
        );
        assert!(matches!(
            check_result_headers(404, None, "image/png", 100),
            Err(Failure::Transient { .. })
        ));
        assert!(matches!(
            check_result_headers(200, Some(101), "image/png", 100),
            Err(Failure::Permanent { .. })
        ));
        assert_eq!(
            check_result_headers(200, None, "application/octet-stream", 100),
            Ok(()),
            "a generic type is sniffed after the download"
        );
        assert_eq!(
            check_result_headers(200, None, "text/html", 100)
                .unwrap_err()
                .class(),
            "not_image"
        );
        assert_eq!(
            check_result_body(b"", 100).unwrap_err().class(),
            "empty_result"
        );
        assert_eq!(
            check_result_body(b"<html>", 100).unwrap_err().class(),
            "not_image"
        );
        assert!(matches!(
            check_result_body(&[0u8; 101], 100),
            Err(Failure::Permanent { .. })
        ));
        assert_eq!(
            check_result_body(b"\x89PNG\r\n\x1a\n....", 100),
            Ok("image/png")
        );
    }

    #[test]
    fn statuses_are_classified() {
        assert_eq!(classify_status(200, None), None);
        assert_eq!(classify_status(503, None).unwrap().class(), "server_error");
        assert_eq!(classify_status(408, None).unwrap().class(), "timeout");
        assert!(matches!(
            classify_status(401, None),
            Some(Failure::Permanent { .. })
        ));
        assert!(matches!(
            classify_status(422, None),
            Some(Failure::Permanent { .. })
        ));
    }

    #[test]
    fn the_first_poll_waits_for_the_typical_generation_time() {
        let poll = Policy {
            jitter: 0.0,
            ..Policy::POLL
        };
        assert_eq!(
            first_poll_delay(&poll, 0),
            2,
            "no typical time: the policy's first wait"
        );
        assert_eq!(
            first_poll_delay(&poll, 9),
            11,
            "the typical time, then the first wait"
        );
        assert_eq!(
            first_poll_delay(&poll, u32::MAX),
            QUEUE_MAX_DELAY_SECS,
            "no longer than the queue accepts"
        );
    }
}
