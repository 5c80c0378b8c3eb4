//! Runtime settings, one source for every worker. D1's `settings` table is the truth (operators
//! change it through `PUT /admin/catalog`); KV `setting:config` holds a snapshot of it,
//! `{"version": n, "catalog": {…}}` (seed 004's layout), that expires after 300 s.
//!
//! Invariants:
//! - A catalogue is used only after `Catalog::parse` accepted it, whether it came from KV or D1.
//! - A missing or unreadable snapshot is never an error: D1 is read and the snapshot rewritten.
//!   Failing to write the snapshot is logged, never returned (the next request reads D1 again).
//! - An invalid catalogue in D1 is a server fault: 503 `misconfigured`, cause logged, not shown.
//! - A snapshot is at most 300 s behind D1 anywhere (its TTL); the isolate that writes a change
//!   rewrites it at once. KV has no compare-and-set, so a reader that loaded D1 just before a
//!   change may put the older version back; the TTL bounds that too.

use crate::context::App;
use crate::error::ApiError;
use serde_json::{json, Value};
use shared::catalog::{self, Catalog, StoredCatalog};
use shared::edge::{log, ConfigError, IoError, StepExt};

/// The KV key of the settings snapshot.
pub const SNAPSHOT_KEY: &str = "setting:config";
/// How long a snapshot may serve before D1 is read again.
pub const SNAPSHOT_TTL_SECS: u64 = 300;

/// The stored catalogue row, straight from D1 (the truth). An absent row is a deployment
/// without migration 0005: misconfigured.
pub async fn stored(app: &App) -> Result<StoredCatalog, ApiError> {
    app.db
        .first::<StoredCatalog>("settings catalog", &catalog::stored())
        .await?
        .ok_or_else(|| {
            ApiError::Misconfigured(ConfigError(
                "settings has no 'catalog' row (is migration 0005 applied?)".into(),
            ))
        })
}

/// What users can buy now, and the version of the settings it came from.
pub async fn catalog(app: &App) -> Result<(Catalog, i64), ApiError> {
    if let Some(hit) = from_snapshot(app).await {
        return Ok(hit);
    }
    let row = stored(app).await?;
    let parsed = Catalog::parse(&row.value).map_err(|e| {
        ApiError::Misconfigured(ConfigError(format!(
            "the stored catalogue (settings version {}) is invalid: {e}",
            row.version
        )))
    })?;
    // `value` parsed as a catalogue, so it is JSON
    let value: Value = serde_json::from_str(&row.value).unwrap_or(Value::Null);
    write_snapshot(app, row.version, &value).await;
    Ok((parsed, row.version))
}

/// The snapshot, if KV has one that reads as a valid catalogue. Anything else (a miss, a KV
/// failure, a body of another shape) falls through to D1, with a log line when it is not a miss.
async fn from_snapshot(app: &App) -> Option<(Catalog, i64)> {
    app.io.kv();
    let text = match app.kv() {
        Ok(kv) => kv.get(SNAPSHOT_KEY).text().await.step("kv get settings"),
        Err(e) => Err(e),
    };
    let text = match text {
        Ok(Some(t)) => t,
        Ok(None) => return None,
        Err(e) => {
            log(
                json!({"level": "warn", "event": "settings.snapshot_unreadable", "cause": e.to_string()}),
            );
            return None;
        }
    };
    let read = serde_json::from_str::<Value>(&text)
        .map_err(|e| e.to_string())
        .and_then(|v| {
            let version = v["version"]
                .as_i64()
                .filter(|n| *n > 0)
                .ok_or("no positive version")?;
            let catalog = v
                .get("catalog")
                .filter(|c| c.is_object())
                .ok_or("no catalog")?;
            Ok((Catalog::parse(&catalog.to_string())?, version))
        });
    match read {
        Ok(hit) => Some(hit),
        Err(cause) => {
            log(json!({"level": "warn", "event": "settings.snapshot_invalid", "cause": cause}));
            None
        }
    }
}

/// Writes the snapshot for `version`. A failure is logged: D1 still answers without it.
pub async fn write_snapshot(app: &App, version: i64, catalog: &Value) {
    app.io.kv();
    let body = json!({"version": version, "catalog": catalog}).to_string();
    let put: Result<(), IoError> = async {
        app.kv()?
            .put(SNAPSHOT_KEY, body)
            .step("kv put settings")?
            .expiration_ttl(SNAPSHOT_TTL_SECS)
            .execute()
            .await
            .step("kv put settings")
    }
    .await;
    if let Err(e) = put {
        log(
            json!({"level": "warn", "event": "settings.snapshot_write_failed", "version": version, "cause": e.to_string()}),
        );
    }
}
