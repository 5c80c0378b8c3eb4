//! User sessions: HS256 JWTs that name a session, and the per-user list of live sessions kept in
//! KV (`auth-uid:{userId}`, as in the seeds). A token is accepted only while its session is in
//! that list, so signing out (one session or all) revokes it at once, within KV's consistency
//! window. Verification rejects anything but HS256 (so `alg: none` too), a wrong signature, a
//! wrong issuer, and expiry.

use chrono::{DateTime, TimeZone, Utc};
use jwt_compact::alg::{Hs256, Hs256Key};
use jwt_compact::{AlgorithmExt, Claims, Header, TimeOptions, UntrustedToken};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::ids::UserId;

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

/// The user and session a token names, if it is ours, intact and not expired.
pub fn verify(
    secret: &[u8],
    issuer: &str,
    token: &str,
    now: i64,
) -> Result<(UserId, String), TokenError> {
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
    Ok((user, claims.custom.sid.clone()))
}

/// KV key of a user's live sessions (the seeds' `auth-uid:{userId}`).
pub fn sessions_key(user: &UserId) -> String {
    format!("auth-uid:{user}")
}

/// A user's live sessions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionList {
    pub sessions: Vec<SessionEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionEntry {
    pub sid: String,
    pub expires_at: i64,
}

/// How many sessions a user keeps; the oldest go first.
pub const MAX_SESSIONS: usize = 20;

impl SessionList {
    /// Adds a session, dropping expired ones and the oldest beyond [`MAX_SESSIONS`].
    pub fn add(&mut self, sid: &str, expires_at: i64, now: i64) {
        self.sessions.retain(|s| s.expires_at > now && s.sid != sid);
        self.sessions.push(SessionEntry {
            sid: sid.to_owned(),
            expires_at,
        });
        let excess = self.sessions.len().saturating_sub(MAX_SESSIONS);
        self.sessions.drain(..excess);
    }

    pub fn remove(&mut self, sid: &str) {
        self.sessions.retain(|s| s.sid != sid);
    }

    pub fn is_live(&self, sid: &str, now: i64) -> bool {
        self.sessions
            .iter()
            .any(|s| s.sid == sid && s.expires_at > now)
    }

    /// When the KV entry may expire: with its last session.
    pub fn expires_at(&self) -> Option<i64> {
        self.sessions.iter().map(|s| s.expires_at).max()
    }
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
    fn session_lists_add_remove_and_prune() {
        let mut l = SessionList::default();
        l.add("a", 100, 0);
        l.add("b", 50, 0);
        assert!(l.is_live("a", 10) && l.is_live("b", 10));
        assert!(!l.is_live("b", 50), "expired");
        l.remove("a");
        assert!(!l.is_live("a", 10));
        l.add("c", 200, 60); // drops the expired b
        assert_eq!(
            l.sessions
                .iter()
                .map(|s| s.sid.as_str())
                .collect::<Vec<_>>(),
            vec!["c"]
        );
        for i in 0..30 {
            l.add(&format!("s{i}"), 1_000, 60);
        }
        assert_eq!(l.sessions.len(), MAX_SESSIONS);
        assert!(!l.is_live("c", 61), "the oldest went first");
        assert_eq!(l.expires_at(), Some(1_000));
    }
}
