//! Identifiers and quantities, parsed once at the boundary so the rest of the code can trust them.

use serde::{Deserialize, Serialize};
use std::fmt;
use thiserror::Error;
use uuid::Uuid;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum IdError {
    #[error("`{0}` is not a valid id (expected a UUID)")]
    NotUuid(String),
    #[error("idempotency key must be 1 to 255 printable ASCII characters")]
    BadIdempotencyKey,
}

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            pub fn new() -> Self {
                Self(Uuid::new_v4())
            }
            pub fn parse(raw: &str) -> Result<Self, IdError> {
                Uuid::parse_str(raw)
                    .map(Self)
                    .map_err(|_| IdError::NotUuid(raw.chars().take(64).collect()))
            }
            pub fn as_uuid(&self) -> &Uuid {
                &self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }
    };
}

uuid_id!(
    /// A generation task (`ai_tasks.id`).
    TaskId
);
uuid_id!(
    /// An end user (`users.id`).
    UserId
);
uuid_id!(
    /// An uploaded input image.
    UploadId
);

impl TaskId {
    /// The human-facing task number: the creation day and 12 hex digits of the id, so it is
    /// unique whenever the id is and needs no counter.
    pub fn task_no(&self, unix_secs: i64) -> String {
        let days = unix_secs.div_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        let hex = self.0.simple().to_string();
        format!("T{y:04}{m:02}{d:02}-{}", hex[..12].to_ascii_uppercase())
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` for unix seconds (UTC), without a clock or time-zone database.
pub fn iso8601(unix_secs: i64) -> String {
    let (y, m, d) = civil_from_days(unix_secs.div_euclid(86_400));
    let rem = unix_secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Gregorian date from days since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    (
        y,
        u32::try_from(m).unwrap_or(1),
        u32::try_from(d).unwrap_or(1),
    )
}

/// A client-chosen key that makes a submission safe to repeat.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn parse(raw: &str) -> Result<Self, IdError> {
        let ok =
            !raw.is_empty() && raw.len() <= 255 && raw.bytes().all(|b| (0x21..=0x7e).contains(&b));
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(IdError::BadIdempotencyKey)
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A whole number of credits. Credits are never fractional and never floats.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(transparent)]
pub struct Credits(pub i64);

impl Credits {
    pub const ZERO: Credits = Credits(0);
    pub fn get(self) -> i64 {
        self.0
    }
}

impl fmt::Display for Credits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_reject_garbage() {
        let id = TaskId::new();
        assert_eq!(TaskId::parse(&id.to_string()), Ok(id));
        assert!(TaskId::parse("not-a-uuid").is_err());
        assert!(TaskId::parse("").is_err());
        assert!(UserId::parse("../../etc/passwd").is_err());
    }

    #[test]
    fn task_no_has_date_and_is_stable() {
        let id = TaskId::parse("0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d").unwrap();
        // 2026-11-21T00:00:00Z
        assert_eq!(id.task_no(1_795_219_200), "T20261121-0A1B2C3D4E5F");
        assert_eq!(id.task_no(0), "T19700101-0A1B2C3D4E5F");
        assert_eq!(id.task_no(951_782_400), "T20000229-0A1B2C3D4E5F");
    }

    #[test]
    fn iso_dates() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(1_795_219_200 + 3661), "2026-11-21T01:01:01Z");
        assert_eq!(iso8601(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn idempotency_keys_are_bounded_printable_ascii() {
        assert!(IdempotencyKey::parse("order-42_retry").is_ok());
        assert!(IdempotencyKey::parse("").is_err());
        assert!(IdempotencyKey::parse("has space").is_err());
        assert!(IdempotencyKey::parse(&"k".repeat(256)).is_err());
        assert!(IdempotencyKey::parse("ключ").is_err());
    }
}
