//! User sessions: HS256 JWTs that name a session, and where sessions live.
//!
//! D1 `sessions` is the truth: one row per session (created, last used, expiry, revocation, user
//! agent, ip), and `users.sessions_revoked_before` marks sign-out-everywhere: a session created
//! before its user's mark is never live ([`is_live`]). KV is a cache of live sessions, one key
//! per session (`session:{id}`, [`CachedSession`]) that expires with it; the hot path reads that
//! one key, and D1 only when this location has no copy.
//!
//! Nothing reads, changes and writes back a shared value, so concurrent sign-ins cannot drop each
//! other; and the cache is written in an order that never brings a revoked session back:
//! - opening a session puts its key *before* the D1 insert that makes it real, and the insert
//!   is refused when the user's mark is newer than the session: any revoke of it comes after
//!   its put, and a sign-out-everywhere that overtook it leaves nothing behind;
//! - revoking (one session, everywhere, or the oldest beyond [`MAX_SESSIONS`]) writes D1 first,
//!   then deletes the keys;
//! - a renewal (a compare-and-set in D1) and a refill after a cache miss put the key, then read
//!   D1 again and delete the key if the session was revoked in between.
//!
//! Sliding renewal: a token used after its session's refresh time ([`renewal`]) gets a new one
//! for the same session (the old one stays valid until its own expiry), written once per
//! session per refresh period by the compare-and-set; `last_used_at` is written with it.
//!
//! Verification rejects anything but HS256 (so `alg: none` too), a wrong signature, a wrong
//! issuer, and expiry.

use chrono::{DateTime, TimeZone, Utc};
use jwt_compact::alg::{Hs256, Hs256Key};
use jwt_compact::{AlgorithmExt, Claims, Header, TimeOptions, UntrustedToken};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::ids::UserId;
use crate::sql::{Param, Stmt};

/// What our tokens carry besides the standard times.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionClaims {
    pub sub: String,
    pub sid: String,
    pub iss: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TokenError {
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the token's signature or algorithm is not valid")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token was not issued by this service")]
    WrongIssuer,
}

fn at(unix: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(unix, 0).single().unwrap_or_default()
}

/// A signed token for `user`'s session `sid`, valid until `expires_at`.
pub fn mint(
    secret: &[u8],
    issuer: &str,
    user: &UserId,
    sid: &str,
    now: i64,
    expires_at: i64,
) -> Result<String, TokenError> {
    let key = Hs256Key::new(secret);
    let mut claims = Claims::new(SessionClaims {
        sub: user.to_string(),
        sid: sid.to_owned(),
        iss: issuer.to_owned(),
    });
    claims.issued_at = Some(at(now));
    claims.expiration = Some(at(expires_at));
    Hs256
        .token(&Header::empty().with_token_type("JWT"), &claims, &key)
        .map_err(|_| TokenError::Malformed)
}

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub user: UserId,
    pub sid: String,
    /// When this token was issued (`iat`): what renewal goes by.
    pub issued_at: i64,
    pub expires_at: i64,
}

/// What a token says, if it is ours, intact and not expired.
pub fn verify_token(
    secret: &[u8],
    issuer: &str,
    token: &str,
    now: i64,
) -> Result<Verified, TokenError> {
    let untrusted = UntrustedToken::new(token).map_err(|_| TokenError::Malformed)?;
    let key = Hs256Key::new(secret);
    let token = Hs256
        .validator::<SessionClaims>(&key)
        .validate(&untrusted)
        .map_err(|_| TokenError::BadSignature)?;
    let claims = token.claims();
    let clock = TimeOptions::new(chrono::Duration::seconds(0), move || at(now));
    claims
        .validate_expiration(&clock)
        .map_err(|_| TokenError::Expired)?;
    if claims.custom.iss != issuer {
        return Err(TokenError::WrongIssuer);
    }
    let user = UserId::parse(&claims.custom.sub).map_err(|_| TokenError::Malformed)?;
    Ok(Verified {
        user,
        sid: claims.custom.sid.clone(),
        issued_at: claims.issued_at.map_or(0, |t| t.timestamp()),
        expires_at: claims.expiration.map_or(0, |t| t.timestamp()),
    })
}

/// The user and session a token names, if it is ours, intact and not expired.
pub fn verify(
    secret: &[u8],
    issuer: &str,
    token: &str,
    now: i64,
) -> Result<(UserId, String), TokenError> {
    verify_token(secret, issuer, token, now).map(|v| (v.user, v.sid))
}

// ---------------------------------------------------------------------------------------------
// The rules
// ---------------------------------------------------------------------------------------------

/// How many live sessions a user keeps; opening one more ends the oldest.
pub const MAX_SESSIONS: i64 = 20;

/// Default of `SESSION_REFRESH_SECS`: a token older than this is renewed when used (the seeds'
/// daily refresh).
pub const DEFAULT_REFRESH_SECS: i64 = 24 * 3600;

/// KV refuses expirations less than 60 s ahead.
pub const KV_MIN_TTL_SECS: i64 = 60;

/// A session missing from this location's KV for longer than this after it was opened is put
/// back; younger ones may simply not have reached this location yet.
pub const REFILL_AFTER_SECS: i64 = 60;

/// A sign-out-everywhere also deletes again the keys of sessions revoked this recently (so a
/// retry after a KV failure clears what the first attempt could not) ...
pub const RECLEAR_SECS: i64 = 3600;
/// ... at most this many per call.
pub const MAX_KEYS_CLEARED: i64 = 50;

/// Longest user agent and ip we keep.
pub const MAX_USER_AGENT_CHARS: usize = 512;
pub const MAX_IP_CHARS: usize = 64;

/// KV key of one session.
pub fn session_key(sid: &str) -> String {
    format!("session:{sid}")
}

/// Whether `s` has the shape of our session ids (32 lowercase hex digits).
pub fn is_session_id(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Whether a session is live: not revoked, not created before its user's sign-out-everywhere
/// mark (`revoked_before`; a session created in the mark's second after the sign-out is live, one
/// created in it before is revoked by the same sign-out), and not expired.
pub fn is_live(
    created_at: i64,
    expires_at: i64,
    revoked_at: Option<i64>,
    revoked_before: i64,
    now: i64,
) -> bool {
    revoked_at.is_none() && created_at >= revoked_before && expires_at > now
}

/// A live session as KV caches it under [`session_key`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedSession {
    pub user: String,
    pub created_at: i64,
    /// When the session's newest token was issued (its `iat`).
    pub refreshed_at: i64,
    /// When the session's newest token expires.
    pub expires_at: i64,
}

impl CachedSession {
    /// When the KV entry goes: with the session, but at least [`KV_MIN_TTL_SECS`] ahead.
    pub fn kv_expiration(&self, now: i64) -> i64 {
        self.expires_at.max(now + KV_MIN_TTL_SECS + 1)
    }
}

/// A session as D1 has it, with its user's mark.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SessionRow {
    pub id: String,
    pub user_id: String,
    pub created_at: i64,
    pub last_used_at: i64,
    pub refreshed_at: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
    /// The user's `sessions_revoked_before`.
    pub revoked_before: i64,
    pub user_agent: Option<String>,
    pub ip: Option<String>,
}

impl SessionRow {
    pub fn is_live(&self, now: i64) -> bool {
        is_live(
            self.created_at,
            self.expires_at,
            self.revoked_at,
            self.revoked_before,
            now,
        )
    }

    pub fn cached(&self) -> CachedSession {
        CachedSession {
            user: self.user_id.clone(),
            created_at: self.created_at,
            refreshed_at: self.refreshed_at,
            expires_at: self.expires_at,
        }
    }
}

/// What to do about renewal when a token of a live session is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// Nothing: the token is the session's newest (as far as this location knows) and not due.
    Keep,
    /// The session has a newer token than the one presented: hand that one over again. Tokens
    /// are deterministic (same claims, same signature), so this is the token the renewal gave
    /// out, and it costs no write.
    Newer { issued_at: i64, expires_at: i64 },
    /// The session's newest token is past its refresh time: renew, by a compare-and-set on the
    /// newest token's issue time, so one request per refresh period writes.
    Due { newest: i64 },
}

/// Renewal for a token issued at `token_issued_at`, of a session whose newest token was issued
/// at `newest` and expires at `newest_expires_at`, with refresh after `refresh_secs`.
pub fn renewal(
    token_issued_at: i64,
    newest: i64,
    newest_expires_at: i64,
    now: i64,
    refresh_secs: i64,
) -> Renewal {
    if token_issued_at > newest {
        // this location's copy is behind a renewal made elsewhere: the token is the newest
        Renewal::Keep
    } else if now - newest >= refresh_secs {
        Renewal::Due { newest }
    } else if newest > token_issued_at && newest_expires_at > now {
        Renewal::Newer {
            issued_at: newest,
            expires_at: newest_expires_at,
        }
    } else {
        Renewal::Keep
    }
}

// ---------------------------------------------------------------------------------------------
// The SQL
// ---------------------------------------------------------------------------------------------

/// Part of the error D1 gives when [`insert`] is refused (user gone, or signed out everywhere
/// after the session's creation time).
pub const REFUSED: &str = "NOT NULL constraint failed: sessions.user_id";

/// A session being opened.
#[derive(Debug, Clone)]
pub struct NewSession<'a> {
    pub id: &'a str,
    pub user: &'a UserId,
    pub now: i64,
    pub ttl_secs: i64,
    pub user_agent: Option<&'a str>,
    pub ip: Option<&'a str>,
}

fn text(s: Option<&str>) -> Param {
    s.map_or(Param::Null, Param::from)
}

/// Inserts the session, or fails the whole batch with [`REFUSED`] when the user does not exist
/// or signed out everywhere after `now`: the user id is taken from `users` only when the mark
/// allows it, and the column is NOT NULL.
pub fn insert(s: &NewSession<'_>) -> Stmt {
    Stmt::new(
        "INSERT INTO sessions (id, user_id, created_at, last_used_at, refreshed_at, expires_at, ttl_secs, user_agent, ip) \
         SELECT ?1, (SELECT id FROM users WHERE id = ?2 AND sessions_revoked_before <= ?3), ?3, ?3, ?3, ?3 + ?4, ?4, ?5, ?6",
        vec![
            s.id.into(),
            s.user.to_string().into(),
            s.now.into(),
            s.ttl_secs.into(),
            text(s.user_agent),
            text(s.ip),
        ],
    )
}

/// The `signin_logs` row of a session opened.
pub fn signin_log(s: &NewSession<'_>, log_id: &str) -> Stmt {
    Stmt::new(
        "INSERT INTO signin_logs (id, user_id, ip_address, user_agent, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        vec![
            log_id.into(),
            s.user.to_string().into(),
            text(s.ip),
            text(s.user_agent),
            s.now.into(),
        ],
    )
}

/// Ends the user's oldest live sessions beyond [`MAX_SESSIONS`], never `keep` (the one being
/// opened); returns their ids (`id`), whose keys are then deleted.
pub fn evict(user: &UserId, keep: &str, now: i64) -> Stmt {
    Stmt::new(
        "UPDATE sessions SET revoked_at = ?2 \
         WHERE user_id = ?1 AND revoked_at IS NULL AND expires_at > ?2 AND id <> ?3 \
           AND id NOT IN (SELECT id FROM sessions \
                          WHERE user_id = ?1 AND revoked_at IS NULL AND expires_at > ?2 AND id <> ?3 \
                          ORDER BY created_at DESC, id DESC LIMIT ?4) \
         RETURNING id",
        vec![
            user.to_string().into(),
            now.into(),
            keep.into(),
            (MAX_SESSIONS - 1).into(),
        ],
    )
}

const COLUMNS: &str = "s.id, s.user_id, s.created_at, s.last_used_at, s.refreshed_at, s.expires_at, \
                       s.revoked_at, u.sessions_revoked_before AS revoked_before, s.user_agent, s.ip";

/// One session with its user's mark ([`SessionRow`]).
pub fn lookup(sid: &str) -> Stmt {
    Stmt::new(
        format!(
            "SELECT {COLUMNS} FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.id = ?1"
        ),
        vec![sid.into()],
    )
}

/// The user's live sessions, newest first ([`SessionRow`]).
pub fn list(user: &UserId, now: i64) -> Stmt {
    Stmt::new(
        format!(
            "SELECT {COLUMNS} FROM sessions s JOIN users u ON u.id = s.user_id \
             WHERE s.user_id = ?1 AND s.revoked_at IS NULL AND s.expires_at > ?2 \
               AND s.created_at >= u.sessions_revoked_before \
             ORDER BY s.created_at DESC, s.id DESC LIMIT 100"
        ),
        vec![user.to_string().into(), now.into()],
    )
}

/// Renews a session: a compare-and-set on its newest token's issue time `newest`, only while it
/// is live and past its refresh time, so one request per refresh period wins. Its tokens then run
/// `ttl_secs` from `now`, and `last_used_at` is `now`. Returns `created_at, expires_at` when it
/// won, nothing otherwise.
pub fn renew(sid: &str, user: &UserId, newest: i64, now: i64, refresh_secs: i64) -> Stmt {
    Stmt::new(
        "UPDATE sessions SET refreshed_at = ?3, last_used_at = ?3, expires_at = ?3 + ttl_secs \
         WHERE id = ?1 AND user_id = ?2 AND refreshed_at = ?4 AND refreshed_at <= ?3 - ?5 \
           AND revoked_at IS NULL AND expires_at > ?3 \
           AND created_at >= (SELECT sessions_revoked_before FROM users WHERE id = ?2) \
         RETURNING created_at, expires_at",
        vec![
            sid.into(),
            user.to_string().into(),
            now.into(),
            newest.into(),
            refresh_secs.into(),
        ],
    )
}

/// Revokes one of the user's sessions (changes nothing for another user's, or a revoked one).
pub fn revoke(sid: &str, user: &UserId, now: i64) -> Stmt {
    Stmt::new(
        "UPDATE sessions SET revoked_at = ?3 WHERE id = ?1 AND user_id = ?2 AND revoked_at IS NULL",
        vec![sid.into(), user.to_string().into(), now.into()],
    )
}

/// The session if it is the user's (`id`, `expires_at`), revoked or not.
pub fn owned(sid: &str, user: &UserId) -> Stmt {
    Stmt::new(
        "SELECT id, expires_at FROM sessions WHERE id = ?1 AND user_id = ?2",
        vec![sid.into(), user.to_string().into()],
    )
}

/// Sign-out-everywhere, one batch: raises the user's mark to `now`, revokes every live session
/// (its `changes` is how many ended), and lists the keys to delete (`id`): those just revoked and
/// those revoked in the last [`RECLEAR_SECS`] that have not expired.
pub fn revoke_all(user: &UserId, now: i64) -> Vec<Stmt> {
    let uid = user.to_string();
    vec![
        Stmt::new(
            "UPDATE users SET sessions_revoked_before = MAX(sessions_revoked_before, ?2) WHERE id = ?1",
            vec![uid.clone().into(), now.into()],
        ),
        Stmt::new(
            "UPDATE sessions SET revoked_at = ?2 WHERE user_id = ?1 AND revoked_at IS NULL AND expires_at > ?2",
            vec![uid.clone().into(), now.into()],
        ),
        Stmt::new(
            "SELECT id FROM sessions WHERE user_id = ?1 AND revoked_at >= ?2 - ?3 AND expires_at > ?2 \
             ORDER BY revoked_at DESC, id LIMIT ?4",
            vec![
                uid.into(),
                now.into(),
                RECLEAR_SECS.into(),
                MAX_KEYS_CLEARED.into(),
            ],
        ),
    ]
}

/// The user's sign-ins, newest first (`id, ip, user_agent, created_at`).
pub fn signins(user: &UserId, limit: i64) -> Stmt {
    Stmt::new(
        "SELECT id, ip_address AS ip, user_agent, created_at FROM signin_logs WHERE user_id = ?1 \
         ORDER BY created_at DESC, id DESC LIMIT ?2",
        vec![user.to_string().into(), limit.into()],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn a_minted_token_verifies_until_it_expires() {
        let user = UserId::new();
        let t = mint(SECRET, "edgeline", &user, "s1", 1_000, 2_000).unwrap();
        assert_eq!(
            verify(SECRET, "edgeline", &t, 1_500),
            Ok((user, "s1".to_owned()))
        );
        assert_eq!(
            verify(SECRET, "edgeline", &t, 2_001),
            Err(TokenError::Expired)
        );
        assert_eq!(
            verify(SECRET, "other", &t, 1_500),
            Err(TokenError::WrongIssuer)
        );
        assert_eq!(
            verify(b"another-secret-another-secret-xx", "edgeline", &t, 1_500),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn forgeries_are_refused() {
        let user = UserId::new();
        let t = mint(SECRET, "edgeline", &user, "s1", 1_000, 2_000).unwrap();
        let parts: Vec<&str> = t.split('.').collect();
        // alg: none with the same claims and no signature
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
            parts[1]
        );
        assert!(verify(SECRET, "edgeline", &none, 1_500).is_err());
        // claims changed after signing
        let evil = URL_SAFE_NO_PAD.encode(format!(
            r#"{{"sub":"{}","sid":"s1","iss":"edgeline","exp":9999999999}}"#,
            UserId::new()
        ));
        assert_eq!(
            verify(
                SECRET,
                "edgeline",
                &format!("{}.{evil}.{}", parts[0], parts[2]),
                1_500
            ),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            verify(SECRET, "edgeline", "not a jwt", 0),
            Err(TokenError::Malformed)
        );
        assert_eq!(
            verify(SECRET, "edgeline", "", 0),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn verified_tokens_carry_their_times() {
        let user = UserId::new();
        let t = mint(SECRET, "edgeline", &user, "s1", 1_000, 2_000).unwrap();
        assert_eq!(
            verify_token(SECRET, "edgeline", &t, 1_500),
            Ok(Verified {
                user,
                sid: "s1".into(),
                issued_at: 1_000,
                expires_at: 2_000
            })
        );
        // deterministic: a renewal's token can be handed over again without a write
        assert_eq!(
            t,
            mint(SECRET, "edgeline", &user, "s1", 1_000, 2_000).unwrap()
        );
    }

    #[test]
    fn session_ids_have_one_shape() {
        assert!(is_session_id("0123456789abcdef0123456789abcdef"));
        assert!(!is_session_id("0123456789ABCDEF0123456789abcdef"));
        assert!(!is_session_id("0123456789abcdef"));
        assert!(!is_session_id("../0123456789abcdef0123456789abc"));
        assert_eq!(session_key("ab"), "session:ab");
    }

    #[test]
    fn the_revocation_mark_beats_an_older_session() {
        // created before the user's sign-out-everywhere: never live, whatever else it says
        assert!(!is_live(99, 1_000, None, 100, 500));
        // created in the mark's second, after the sign-out (the sign-out revoked the ones before)
        assert!(is_live(100, 1_000, None, 100, 500));
        assert!(is_live(101, 1_000, None, 100, 500));
        assert!(is_live(101, 1_000, None, 0, 500), "no mark");
        assert!(!is_live(101, 1_000, Some(400), 0, 500), "revoked");
        assert!(!is_live(101, 500, None, 0, 500), "expired");
        let row = SessionRow {
            id: "s".into(),
            user_id: "u".into(),
            created_at: 10,
            last_used_at: 10,
            refreshed_at: 20,
            expires_at: 1_000,
            revoked_at: None,
            revoked_before: 11,
            user_agent: None,
            ip: None,
        };
        assert!(!row.is_live(50));
        assert_eq!(
            row.cached(),
            CachedSession {
                user: "u".into(),
                created_at: 10,
                refreshed_at: 20,
                expires_at: 1_000
            }
        );
    }

    #[test]
    fn renewal_is_due_after_the_refresh_time_once() {
        const DAY: i64 = 86_400;
        // a fresh token: nothing
        assert_eq!(
            renewal(1_000, 1_000, 9_000, 1_000 + DAY - 1, DAY),
            Renewal::Keep
        );
        // past its refresh time: renew, with a compare-and-set on the newest token's time
        assert_eq!(
            renewal(1_000, 1_000, 9_000, 1_000 + DAY, DAY),
            Renewal::Due { newest: 1_000 }
        );
        // renewed since: the old token gets the newer one again, no write
        assert_eq!(
            renewal(1_000, 1_000 + DAY, 5 * DAY, 1_000 + DAY + 5, DAY),
            Renewal::Newer {
                issued_at: 1_000 + DAY,
                expires_at: 5 * DAY
            }
        );
        // the new token itself: nothing until its own refresh time
        assert_eq!(
            renewal(1_000 + DAY, 1_000 + DAY, 5 * DAY, 1_000 + DAY + 5, DAY),
            Renewal::Keep
        );
        // an old token when even the newest is due: renew (the newest is what is compared)
        assert_eq!(
            renewal(1_000, 1_000 + DAY, 5 * DAY, 1_000 + 2 * DAY, DAY),
            Renewal::Due {
                newest: 1_000 + DAY
            }
        );
        // a newer token that has expired meanwhile is not handed over
        assert_eq!(renewal(1_000, 1_050, 1_100, 1_100, DAY), Renewal::Keep);
        // this location's KV copy is behind a renewal made elsewhere: the token is the newest
        assert_eq!(
            renewal(1_000 + DAY, 1_000, 9_000, 1_000 + DAY + 5, DAY),
            Renewal::Keep
        );
    }

    #[test]
    fn kv_copies_expire_with_the_session_but_at_least_a_minute_ahead() {
        let c = CachedSession {
            user: "u".into(),
            created_at: 0,
            refreshed_at: 0,
            expires_at: 10_000,
        };
        assert_eq!(c.kv_expiration(100), 10_000);
        assert_eq!(c.kv_expiration(9_990), 9_990 + KV_MIN_TTL_SECS + 1);
    }

    // -----------------------------------------------------------------------------------------
    // The SQL, on the real schema (every migration, in an in-memory SQLite as D1 runs)
    // -----------------------------------------------------------------------------------------

    use rusqlite::{params_from_iter, Connection};

    fn db() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("PRAGMA foreign_keys = ON;").unwrap();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "sql"))
            .collect();
        files.sort();
        for f in files {
            conn.execute_batch(&std::fs::read_to_string(&f).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        }
        conn
    }

    fn bind(p: &Param) -> rusqlite::types::Value {
        match p {
            Param::Text(s) => rusqlite::types::Value::Text(s.clone()),
            Param::Int(n) => rusqlite::types::Value::Integer(*n),
            Param::Null => rusqlite::types::Value::Null,
        }
    }

    /// Runs a statement; its first column of every row returned, and the rows it changed.
    fn run(conn: &Connection, s: &Stmt) -> Result<(Vec<String>, u64), rusqlite::Error> {
        let mut st = conn.prepare(&s.sql)?;
        assert_eq!(st.parameter_count(), s.params.len(), "{}", s.sql);
        let before = conn.total_changes();
        let mut rows = st.query(params_from_iter(s.params.iter().map(bind)))?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let v: rusqlite::types::Value = r.get(0)?;
            out.push(match v {
                rusqlite::types::Value::Text(t) => t,
                rusqlite::types::Value::Integer(n) => n.to_string(),
                other => format!("{other:?}"),
            });
        }
        drop(rows);
        Ok((out, conn.total_changes() - before))
    }

    /// A batch as D1 runs it: all or nothing.
    fn batch(conn: &Connection, stmts: &[Stmt]) -> Result<Vec<(Vec<String>, u64)>, String> {
        conn.execute_batch("BEGIN").unwrap();
        let mut out = Vec::new();
        for s in stmts {
            match run(conn, s) {
                Ok(r) => out.push(r),
                Err(e) => {
                    conn.execute_batch("ROLLBACK").unwrap();
                    return Err(e.to_string());
                }
            }
        }
        conn.execute_batch("COMMIT").unwrap();
        Ok(out)
    }

    fn user(conn: &Connection) -> UserId {
        let u = UserId::new();
        conn.execute(
            "INSERT INTO users (id, email, name) VALUES (?1, ?2, 'U')",
            [u.to_string(), format!("{u}@test")],
        )
        .unwrap();
        u
    }

    fn sid(n: usize) -> String {
        format!("{n:032x}")
    }

    fn open(conn: &Connection, u: &UserId, id: &str, now: i64) -> Result<Vec<String>, String> {
        let s = NewSession {
            id,
            user: u,
            now,
            ttl_secs: 1_000,
            user_agent: Some("agent"),
            ip: Some("203.0.113.7"),
        };
        let r = batch(
            conn,
            &[
                insert(&s),
                signin_log(&s, &format!("log-{id}")),
                evict(u, id, now),
            ],
        )?;
        Ok(r[2].0.clone())
    }

    fn live(conn: &Connection, u: &UserId, now: i64) -> Vec<String> {
        run(conn, &list(u, now)).unwrap().0
    }

    fn row(conn: &Connection, id: &str) -> SessionRow {
        let s = lookup(id);
        let mut st = conn.prepare(&s.sql).unwrap();
        st.query_row(params_from_iter(s.params.iter().map(bind)), |r| {
            Ok(SessionRow {
                id: r.get(0)?,
                user_id: r.get(1)?,
                created_at: r.get(2)?,
                last_used_at: r.get(3)?,
                refreshed_at: r.get(4)?,
                expires_at: r.get(5)?,
                revoked_at: r.get(6)?,
                revoked_before: r.get(7)?,
                user_agent: r.get(8)?,
                ip: r.get(9)?,
            })
        })
        .unwrap()
    }

    #[test]
    fn sign_ins_never_drop_each_other_and_log_each() {
        let conn = db();
        let u = user(&conn);
        for i in 0..10 {
            assert_eq!(open(&conn, &u, &sid(i), 100).unwrap(), Vec::<String>::new());
        }
        let mut ids = live(&conn, &u, 100);
        ids.sort();
        assert_eq!(ids, (0..10).map(sid).collect::<Vec<_>>());
        let logs = run(&conn, &signins(&u, 50)).unwrap().0;
        assert_eq!(logs.len(), 10, "one signin_logs row per session");
        let r = row(&conn, &sid(3));
        assert_eq!(
            (r.created_at, r.last_used_at, r.refreshed_at, r.expires_at),
            (100, 100, 100, 1_100)
        );
        assert_eq!(
            (r.user_agent.as_deref(), r.ip.as_deref()),
            (Some("agent"), Some("203.0.113.7"))
        );
        assert!(r.is_live(100));
    }

    #[test]
    fn beyond_the_cap_the_oldest_go_never_the_new_one() {
        let conn = db();
        let u = user(&conn);
        let cap = usize::try_from(MAX_SESSIONS).unwrap();
        for i in 0..cap {
            // all in one second: ties are broken by id, and the new one is never evicted
            open(&conn, &u, &sid(100 - i), 50).unwrap();
        }
        let evicted = open(&conn, &u, &sid(1), 50).unwrap();
        assert_eq!(
            evicted,
            vec![sid(100 - cap + 1)],
            "the smallest id of the tie"
        );
        assert!(live(&conn, &u, 50).contains(&sid(1)));
        assert_eq!(live(&conn, &u, 50).len(), cap);
        let evicted = open(&conn, &u, &sid(2), 60).unwrap();
        assert_eq!(evicted.len(), 1);
        assert!(live(&conn, &u, 60).contains(&sid(2)));
    }

    #[test]
    fn sign_out_everywhere_ends_all_and_refuses_older_sign_ins() {
        let conn = db();
        let u = user(&conn);
        let other = user(&conn);
        open(&conn, &u, &sid(1), 100).unwrap();
        open(&conn, &u, &sid(2), 150).unwrap();
        open(&conn, &other, &sid(3), 100).unwrap();
        let r = batch(&conn, &revoke_all(&u, 200)).unwrap();
        assert_eq!(r[1].1, 2, "two sessions ended");
        let mut keys = r[2].0.clone();
        keys.sort();
        assert_eq!(keys, vec![sid(1), sid(2)], "their keys to delete");
        assert!(live(&conn, &u, 200).is_empty());
        assert_eq!(
            live(&conn, &other, 200),
            vec![sid(3)],
            "other users keep theirs"
        );
        // a sign-in that began before the sign-out (its time is older) but lands after: refused
        let late = open(&conn, &u, &sid(4), 199).unwrap_err();
        assert!(late.contains(REFUSED), "{late}");
        assert_eq!(
            run(&conn, &signins(&u, 50)).unwrap().0.len(),
            2,
            "and logged nothing"
        );
        // one in the mark's second after it, or later: live
        open(&conn, &u, &sid(5), 200).unwrap();
        open(&conn, &u, &sid(6), 201).unwrap();
        let mut ids = live(&conn, &u, 201);
        ids.sort();
        assert_eq!(ids, vec![sid(5), sid(6)]);
        // a retry clears the keys of the recent revocations again; the mark never goes back
        let r = batch(&conn, &revoke_all(&u, 190)).unwrap();
        assert_eq!(row(&conn, &sid(5)).revoked_before, 200);
        assert_eq!(r[1].1, 2);
        // a session of an unknown user is refused the same way
        let ghost = UserId::new();
        assert!(open(&conn, &ghost, &sid(9), 300)
            .unwrap_err()
            .contains(REFUSED));
    }

    #[test]
    fn revoking_one_needs_the_owner() {
        let conn = db();
        let u = user(&conn);
        let other = user(&conn);
        open(&conn, &u, &sid(1), 100).unwrap();
        open(&conn, &u, &sid(2), 100).unwrap();
        let theirs = batch(
            &conn,
            &[revoke(&sid(1), &other, 150), owned(&sid(1), &other)],
        )
        .unwrap();
        assert_eq!(
            (theirs[0].1, theirs[1].0.len()),
            (0, 0),
            "another user's: nothing, not found"
        );
        let mine = batch(&conn, &[revoke(&sid(1), &u, 150), owned(&sid(1), &u)]).unwrap();
        assert_eq!((mine[0].1, mine[1].0.clone()), (1, vec![sid(1)]));
        let again = batch(&conn, &[revoke(&sid(1), &u, 160), owned(&sid(1), &u)]).unwrap();
        assert_eq!((again[0].1, again[1].0.len()), (0, 1), "idempotent");
        assert_eq!(
            live(&conn, &u, 160),
            vec![sid(2)],
            "the other session stays"
        );
        assert_eq!(row(&conn, &sid(1)).revoked_at, Some(150));
    }

    #[test]
    fn renewal_writes_once_per_period_and_never_for_a_revoked_session() {
        let conn = db();
        let u = user(&conn);
        open(&conn, &u, &sid(1), 100).unwrap();
        // not yet due
        assert_eq!(run(&conn, &renew(&sid(1), &u, 100, 150, 60)).unwrap().1, 0);
        // due: the first request wins, the ones racing it (same expected time) do not
        let won = run(&conn, &renew(&sid(1), &u, 100, 170, 60)).unwrap();
        assert_eq!(won, (vec!["100".to_owned()], 1), "returns created_at");
        assert_eq!(run(&conn, &renew(&sid(1), &u, 100, 171, 60)).unwrap().1, 0);
        let r = row(&conn, &sid(1));
        assert_eq!(
            (r.refreshed_at, r.last_used_at, r.expires_at),
            (170, 170, 1_170),
            "slides: ttl from the renewal"
        );
        // next period
        assert_eq!(run(&conn, &renew(&sid(1), &u, 170, 229, 60)).unwrap().1, 0);
        assert_eq!(run(&conn, &renew(&sid(1), &u, 170, 230, 60)).unwrap().1, 1);
        // another user's id, a revoked session, one older than the mark: never
        open(&conn, &u, &sid(2), 100).unwrap();
        assert_eq!(
            run(&conn, &renew(&sid(2), &UserId::new(), 100, 300, 60))
                .unwrap()
                .1,
            0
        );
        batch(&conn, &[revoke(&sid(2), &u, 250)]).unwrap();
        assert_eq!(run(&conn, &renew(&sid(2), &u, 100, 300, 60)).unwrap().1, 0);
        conn.execute(
            "UPDATE users SET sessions_revoked_before = 500 WHERE id = ?1",
            [u.to_string()],
        )
        .unwrap();
        assert_eq!(run(&conn, &renew(&sid(1), &u, 230, 400, 60)).unwrap().1, 0);
        assert!(!row(&conn, &sid(1)).is_live(400), "the mark beats it");
        // expired: never
        let v = user(&conn);
        open(&conn, &v, &sid(7), 100).unwrap();
        assert_eq!(
            run(&conn, &renew(&sid(7), &v, 100, 1_100, 60)).unwrap().1,
            0
        );
    }
}
