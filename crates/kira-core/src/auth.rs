//! Who is asking and what they may touch. A [`CompanyScope`] is the only way
//! to reach one company's data and an [`AdminScope`] the only way to read
//! across companies; both come from a [`Principal`], and a principal comes
//! only from a verified token (or is the server itself, for its own jobs).

use std::fmt;

use chrono::{DateTime, Utc};
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use utoipa::ToSchema;

use crate::ids::KeyId;
use crate::{CompanyId, ValidationError};

/// Every token starts with this, so a leaked one is easy to recognise.
pub const TOKEN_PREFIX: &str = "kira_";
const SECRET_LEN: usize = 40; // base62: ~238 bits

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Every company, read and write, and key management.
    Admin,
    /// One company, read and write.
    Operator,
    /// One company, read only.
    Viewer,
    /// No company and no API: only the system-wide Prometheus exposition
    /// (`GET /metrics`), for a scraper that should hold nothing more.
    Metrics,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Viewer => "viewer",
            Role::Metrics => "metrics",
        }
    }

    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        match s {
            "admin" => Ok(Role::Admin),
            "operator" => Ok(Role::Operator),
            "viewer" => Ok(Role::Viewer),
            "metrics" => Ok(Role::Metrics),
            _ => Err(ValidationError::new(
                "role",
                "must be one of admin, operator, viewer, metrics",
            )),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An API key as listed: never the token, never its hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ApiKey {
    pub id: KeyId,
    pub name: String,
    pub role: Role,
    pub company_id: Option<CompanyId>,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// An API key as stored: the listing plus the token's SHA-256.
#[derive(Debug, Clone)]
pub struct StoredKey {
    pub key: ApiKey,
    pub token_sha256: [u8; 32],
}

/// The body of a create-key request.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    pub name: String,
    pub role: Role,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub company_id: Option<String>,
}

/// A freshly made key: the record to store and the token to show once.
pub struct IssuedKey {
    pub stored: StoredKey,
    pub token: String,
}

impl fmt::Debug for IssuedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedKey")
            .field("key", &self.stored.key)
            .field("token", &"<redacted>")
            .finish()
    }
}

impl NewKey {
    /// Checks the request and makes the key, with a random token from `rng`.
    pub fn issue(
        self,
        rng: &mut impl Rng,
        now: DateTime<Utc>,
    ) -> Result<IssuedKey, ValidationError> {
        let name = self.name.trim();
        if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
            return Err(ValidationError::new(
                "name",
                "must be 1 to 100 printable characters",
            ));
        }
        let company_id = match (self.role, self.company_id) {
            (Role::Admin, None) => None,
            (Role::Admin, Some(_)) => {
                return Err(ValidationError::new(
                    "company_id",
                    "an admin key covers every company; leave company_id out",
                ));
            }
            (Role::Metrics, None) => None,
            (Role::Metrics, Some(_)) => {
                return Err(ValidationError::new(
                    "company_id",
                    "a metrics key reads the system-wide /metrics only; leave company_id out",
                ));
            }
            (_, None) => {
                return Err(ValidationError::new(
                    "company_id",
                    "operator and viewer keys belong to one company",
                ));
            }
            (_, Some(c)) => Some(
                CompanyId::parse(&c).map_err(|e| ValidationError::new("company_id", e.message))?,
            ),
        };
        let id = KeyId::parse(&random_alnum(rng, KeyId::LEN, LOWER_ALNUM))
            .map_err(|e| ValidationError::new("key_id", e.message))?;
        let secret = random_alnum(rng, SECRET_LEN, BASE62);
        let token = format!("{TOKEN_PREFIX}{id}_{secret}");
        Ok(IssuedKey {
            stored: StoredKey {
                key: ApiKey {
                    id,
                    name: name.to_owned(),
                    role: self.role,
                    company_id,
                    created_at: now,
                    revoked_at: None,
                },
                token_sha256: sha256(token.as_bytes()),
            },
            token,
        })
    }
}

const LOWER_ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
const BASE62: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

fn random_alnum(rng: &mut impl Rng, len: usize, alphabet: &[u8]) -> String {
    (0..len)
        .map(|_| alphabet[rng.random_range(0..alphabet.len())] as char)
        .collect()
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The key id a token names, if it looks like one of ours. Says nothing
/// about whether the token is valid.
pub fn token_key_id(token: &str) -> Option<KeyId> {
    let rest = token.strip_prefix(TOKEN_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    if secret.len() != SECRET_LEN {
        return None;
    }
    KeyId::parse(id).ok()
}

/// Every dashboard session token starts with this.
pub const SESSION_PREFIX: &str = "kira_s_";
const SESSION_ID_LEN: usize = 24;

/// A dashboard sign-in (issue 22): made when an API key signs in, kept
/// server-side, named by the browser's cookie. Only the secret's SHA-256
/// is stored; the session acts as its key and ends with it (revocation,
/// expiry or sign-out).
#[derive(Clone, PartialEq)]
pub struct StoredSession {
    pub id: String,
    pub key_id: KeyId,
    pub secret_sha256: [u8; 32],
    /// Sent back by the dashboard's forms: a request another site makes
    /// the browser send cannot know it.
    pub csrf: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

impl fmt::Debug for StoredSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredSession")
            .field("id", &self.id)
            .field("key_id", &self.key_id)
            .field("csrf", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// A session just made: the record to store and the cookie's token.
pub struct IssuedSession {
    pub stored: StoredSession,
    pub token: String,
}

impl fmt::Debug for IssuedSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedSession")
            .field("id", &self.stored.id)
            .field("token", &"<redacted>")
            .finish()
    }
}

impl StoredSession {
    /// A session for `key_id` from now for `ttl`, with random id, secret
    /// and form token from `rng`.
    pub fn issue(
        rng: &mut impl Rng,
        key_id: KeyId,
        now: DateTime<Utc>,
        ttl: chrono::TimeDelta,
    ) -> IssuedSession {
        let id = random_alnum(rng, SESSION_ID_LEN, LOWER_ALNUM);
        let secret = random_alnum(rng, SECRET_LEN, BASE62);
        let token = format!("{SESSION_PREFIX}{id}_{secret}");
        IssuedSession {
            stored: StoredSession {
                id,
                key_id,
                secret_sha256: sha256(secret.as_bytes()),
                csrf: random_alnum(rng, SECRET_LEN, BASE62),
                created_at: now,
                expires_at: now + ttl,
            },
            token,
        }
    }
}

/// The session id a session token names, if it looks like one of ours.
pub fn session_id(token: &str) -> Option<&str> {
    let rest = token.strip_prefix(SESSION_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let ok = id.len() == SESSION_ID_LEN
        && id.bytes().all(|b| LOWER_ALNUM.contains(&b))
        && secret.len() == SECRET_LEN;
    ok.then_some(id)
}

/// Who is acting, as the audit log names them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Actor {
    Key(KeyId),
    /// The server's own jobs.
    System,
    /// A request with no valid key.
    Anonymous,
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::Key(k) => write!(f, "key:{k}"),
            Actor::System => f.write_str("system"),
            Actor::Anonymous => f.write_str("anonymous"),
        }
    }
}

/// An authenticated caller. Fields are private: see [`Principal::authenticate`].
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    actor: Actor,
    role: Role,
    company: Option<CompanyId>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// Why a scope was refused. `NotFound` hides that another company exists.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("your role may not do this")]
    Forbidden,
    #[error("not found")]
    NotFound,
}

impl Principal {
    /// The caller behind `token`, if the stored key matches it and is live.
    /// The hash comparison takes the same time whatever the token.
    pub fn authenticate(token: &str, stored: &StoredKey) -> Option<Principal> {
        let presented = sha256(token.as_bytes());
        let same: bool = presented.ct_eq(&stored.token_sha256).into();
        if !same || stored.key.revoked_at.is_some() {
            return None;
        }
        Some(Principal {
            actor: Actor::Key(stored.key.id.clone()),
            role: stored.key.role,
            company: stored.key.company_id.clone(),
        })
    }

    /// The caller behind a dashboard session token: its secret matches
    /// the stored session, which has not expired and names `stored`, a
    /// live key. The hash comparison takes the same time whatever the token.
    pub fn authenticate_session(
        token: &str,
        session: &StoredSession,
        stored: &StoredKey,
        now: DateTime<Utc>,
    ) -> Option<Principal> {
        let secret = token
            .strip_prefix(SESSION_PREFIX)?
            .split_once('_')
            .map(|(_, s)| s)?;
        let same: bool = sha256(secret.as_bytes())
            .ct_eq(&session.secret_sha256)
            .into();
        if !same
            || now >= session.expires_at
            || session.key_id != stored.key.id
            || stored.key.revoked_at.is_some()
        {
            return None;
        }
        Some(Principal {
            actor: Actor::Key(stored.key.id.clone()),
            role: stored.key.role,
            company: stored.key.company_id.clone(),
        })
    }

    /// The server itself, for its own jobs (bootstrap, background work).
    /// Acts as an admin and is named `system` in the audit log.
    pub fn system() -> Principal {
        Principal {
            actor: Actor::System,
            role: Role::Admin,
            company: None,
        }
    }

    pub fn actor(&self) -> &Actor {
        &self.actor
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// The company a non-admin key belongs to.
    pub fn company(&self) -> Option<&CompanyId> {
        self.company.as_ref()
    }

    /// Whether this caller may use the API and the dashboards at all: a
    /// metrics key may only scrape ([`Principal::metrics`]).
    pub fn may_use_api(&self) -> bool {
        self.role != Role::Metrics
    }

    /// A scope for one company's data, if this caller may have it.
    pub fn scope(&self, company: &CompanyId, access: Access) -> Result<CompanyScope, Denied> {
        match self.role {
            Role::Admin => {}
            Role::Metrics => return Err(Denied::Forbidden),
            Role::Operator | Role::Viewer => {
                if self.company.as_ref() != Some(company) {
                    return Err(Denied::NotFound);
                }
                if self.role == Role::Viewer && access == Access::Write {
                    return Err(Denied::Forbidden);
                }
            }
        }
        Ok(CompanyScope {
            company: company.clone(),
            actor: self.actor.clone(),
            role: self.role,
            access,
        })
    }

    /// The cross-company path: admins only.
    pub fn admin(&self) -> Result<AdminScope, Denied> {
        match self.role {
            Role::Admin => Ok(AdminScope {
                actor: self.actor.clone(),
            }),
            _ => Err(Denied::Forbidden),
        }
    }

    /// Permission to read the system-wide Prometheus exposition, which
    /// shows every company's series: an admin's or a metrics key's, never
    /// a company key's.
    pub fn metrics(&self) -> Result<MetricsScope, Denied> {
        match self.role {
            Role::Admin | Role::Metrics => Ok(MetricsScope {
                actor: self.actor.clone(),
            }),
            Role::Operator | Role::Viewer => Err(Denied::Forbidden),
        }
    }
}

/// Permission to read the Prometheus exposition of every company's
/// series, and nothing else: made only by [`Principal::metrics`].
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsScope {
    actor: Actor,
}

impl MetricsScope {
    pub fn actor(&self) -> &Actor {
        &self.actor
    }
}

/// Permission to read (or write) one company's data. Every company-scoped
/// store method takes one and binds its company in every query.
#[derive(Debug, Clone, PartialEq)]
pub struct CompanyScope {
    company: CompanyId,
    actor: Actor,
    /// The role of the key behind it: some fields and levels are the
    /// admin's alone even within one company (see `company::writable_by`).
    role: Role,
    access: Access,
}

impl CompanyScope {
    pub fn company(&self) -> &CompanyId {
        &self.company
    }
    pub fn actor(&self) -> &Actor {
        &self.actor
    }
    pub fn access(&self) -> Access {
        self.access
    }
    pub fn role(&self) -> Role {
        self.role
    }
}

/// Permission to read across companies and manage keys. Using it is audited.
#[derive(Debug, Clone, PartialEq)]
pub struct AdminScope {
    actor: Actor,
}

impl AdminScope {
    pub fn actor(&self) -> &Actor {
        &self.actor
    }

    /// A scope for any company, including one being created.
    pub fn company(&self, company: &CompanyId, access: Access) -> CompanyScope {
        CompanyScope {
            company: company.clone(),
            actor: self.actor.clone(),
            role: Role::Admin,
            access,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;
    use rand::SeedableRng;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
            .single()
            .expect("valid time")
    }

    fn issue(role: Role, company: Option<&str>) -> IssuedKey {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        NewKey {
            name: "k".into(),
            role,
            company_id: company.map(str::to_owned),
        }
        .issue(&mut rng, now())
        .expect("valid key")
    }

    #[test]
    fn token_shape_and_verification() {
        let k = issue(Role::Operator, Some("acme"));
        assert!(k.token.starts_with("kira_"));
        assert_eq!(token_key_id(&k.token), Some(k.stored.key.id.clone()));
        assert!(Principal::authenticate(&k.token, &k.stored).is_some());
        let mut wrong = k.token.clone();
        wrong.pop();
        wrong.push('!');
        assert!(Principal::authenticate(&wrong, &k.stored).is_none());
        let mut revoked = k.stored.clone();
        revoked.key.revoked_at = Some(now());
        assert!(Principal::authenticate(&k.token, &revoked).is_none());
        assert!(!format!("{k:?}").contains(&k.token));
    }

    #[test]
    fn a_session_acts_as_its_live_key_until_it_expires() {
        let k = issue(Role::Viewer, Some("acme"));
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let ttl = chrono::TimeDelta::hours(1);
        let s = StoredSession::issue(&mut rng, k.stored.key.id.clone(), now(), ttl);
        assert_eq!(session_id(&s.token), Some(s.stored.id.as_str()));
        assert_eq!(session_id(&k.token), None, "an API key is not a session");
        let p = Principal::authenticate_session(&s.token, &s.stored, &k.stored, now())
            .expect("valid session");
        assert_eq!(p.role(), Role::Viewer);
        assert_eq!(p.company().map(CompanyId::as_str), Some("acme"));
        // Expired, wrong secret, another key, a revoked key: nobody.
        let at_end = now() + ttl;
        assert!(Principal::authenticate_session(&s.token, &s.stored, &k.stored, at_end).is_none());
        let mut wrong = s.token.clone();
        wrong.pop();
        wrong.push('x');
        assert!(Principal::authenticate_session(&wrong, &s.stored, &k.stored, now()).is_none());
        let other = issue(Role::Admin, None);
        let mut other_key = other.stored.clone();
        other_key.key.id = KeyId::parse("zzzzzzzzzzzz").expect("id");
        assert!(Principal::authenticate_session(&s.token, &s.stored, &other_key, now()).is_none());
        let mut revoked = k.stored.clone();
        revoked.key.revoked_at = Some(now());
        assert!(Principal::authenticate_session(&s.token, &s.stored, &revoked, now()).is_none());
        assert!(!format!("{s:?}").contains(&s.token));
    }

    #[test]
    fn key_requests_are_checked() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let bad = |role, company: Option<&str>| {
            NewKey {
                name: "k".into(),
                role,
                company_id: company.map(str::to_owned),
            }
            .issue(&mut rand::rngs::StdRng::seed_from_u64(1), now())
            .expect_err("invalid")
            .field
        };
        assert_eq!(bad(Role::Admin, Some("acme")), "company_id");
        assert_eq!(bad(Role::Viewer, None), "company_id");
        assert_eq!(bad(Role::Viewer, Some("A")), "company_id");
        let e = NewKey {
            name: " ".into(),
            role: Role::Admin,
            company_id: None,
        }
        .issue(&mut rng, now())
        .expect_err("invalid");
        assert_eq!(e.field, "name");
    }

    #[test]
    fn scope_matrix() {
        let acme = CompanyId::parse("acme").expect("valid");
        let other = CompanyId::parse("other").expect("valid");
        let p = |role, c: Option<&str>| {
            let k = issue(role, c);
            Principal::authenticate(&k.token, &k.stored).expect("valid")
        };
        let admin = p(Role::Admin, None);
        let op = p(Role::Operator, Some("acme"));
        let viewer = p(Role::Viewer, Some("acme"));
        for access in [Access::Read, Access::Write] {
            assert!(admin.scope(&other, access).is_ok());
            assert!(op.scope(&acme, access).is_ok());
            assert_eq!(op.scope(&other, access), Err(Denied::NotFound));
            assert_eq!(viewer.scope(&other, access), Err(Denied::NotFound));
        }
        assert!(viewer.scope(&acme, Access::Read).is_ok());
        assert_eq!(viewer.scope(&acme, Access::Write), Err(Denied::Forbidden));
        assert!(admin.admin().is_ok());
        assert_eq!(op.admin(), Err(Denied::Forbidden));
        assert_eq!(viewer.admin(), Err(Denied::Forbidden));
        // The exposition: the admin's and a metrics key's, never a company key's.
        assert!(admin.metrics().is_ok());
        assert_eq!(op.metrics(), Err(Denied::Forbidden));
        assert_eq!(viewer.metrics(), Err(Denied::Forbidden));
        assert!(admin.may_use_api() && op.may_use_api() && viewer.may_use_api());
    }

    #[test]
    fn a_metrics_key_may_scrape_and_nothing_else() {
        let k = issue(Role::Metrics, None);
        assert_eq!(k.stored.key.company_id, None);
        let p = Principal::authenticate(&k.token, &k.stored).expect("valid");
        assert!(p.metrics().is_ok());
        assert!(!p.may_use_api());
        assert_eq!(p.admin(), Err(Denied::Forbidden));
        let acme = CompanyId::parse("acme").expect("valid");
        for access in [Access::Read, Access::Write] {
            assert_eq!(p.scope(&acme, access), Err(Denied::Forbidden));
        }
        assert_eq!(Role::parse("metrics"), Ok(Role::Metrics));
        let e = NewKey {
            name: "k".into(),
            role: Role::Metrics,
            company_id: Some("acme".into()),
        }
        .issue(&mut rand::rngs::StdRng::seed_from_u64(1), now())
        .expect_err("a metrics key names no company");
        assert_eq!(e.field, "company_id");
    }

    proptest! {
        #[test]
        fn a_scope_only_ever_names_the_key_company(own in "[a-z]{2,8}", asked in "[a-z]{2,8}", write in any::<bool>()) {
            let k = issue(Role::Operator, Some(&own));
            let p = Principal::authenticate(&k.token, &k.stored).expect("valid");
            let access = if write { Access::Write } else { Access::Read };
            let asked = CompanyId::parse(&asked).expect("valid");
            match p.scope(&asked, access) {
                Ok(s) => prop_assert_eq!(s.company().as_str(), own.as_str()),
                Err(e) => { prop_assert_ne!(asked.as_str(), own.as_str()); prop_assert_eq!(e, Denied::NotFound); }
            }
        }

        #[test]
        fn tokens_never_parse_from_garbage(s in ".{0,80}") {
            if let Some(id) = token_key_id(&s) {
                prop_assert!(s.starts_with("kira_"));
                prop_assert!(s.contains(id.as_str()));
            }
        }
    }
}
