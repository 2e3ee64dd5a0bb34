//! Companies: the profile an operator keeps for each company, and the rules
//! that say what a valid profile is.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::Role;
use crate::{CompanyId, ValidationError};

pub const DEFAULT_PRIORITY_MULTIPLIER: f64 = 1.0;
pub const DEFAULT_SLA_RESPONSE_SECONDS: i32 = 30;
const MAX_CONTACTS: usize = 50;

/// Someone to tell about this company: alerts go to the email or webhook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Contact {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<String>,
}

/// A company's profile: everything but its id and timestamps. Only
/// [`NewCompany::validate`] and [`CompanyProfile::apply`] make one, so a
/// profile in hand is a valid one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CompanyProfile {
    pub name: String,
    pub industry: String,
    /// ISO 3166 country, optionally with a subdivision: `US-DE`, `GB`.
    pub jurisdiction: String,
    pub revenue_usd: i64,
    /// In [0, 1].
    pub complexity_score: f64,
    /// In [0, 1].
    pub activity_score: f64,
    /// In [0.1, 3.0]; scales the priority of this company's tasks.
    pub priority_multiplier: f64,
    pub sla_response_seconds: i32,
    pub contacts: Vec<Contact>,
    /// The old list of sharing scopes. It grants nothing: sharing needs
    /// consent records on both sides, which an admin sets per scope and
    /// partner (`PUT /v1/companies/{id}/sharing/consents`); migration 0017
    /// turned the scopes listed here then into consents with every partner.
    #[schema(value_type = Vec<String>)]
    pub sharing_consent: BTreeSet<String>,
}

/// A company as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Company {
    pub id: CompanyId,
    #[serde(flatten)]
    pub profile: CompanyProfile,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub archived_at: Option<DateTime<Utc>>,
}

impl Company {
    pub fn is_archived(&self) -> bool {
        self.archived_at.is_some()
    }
}

/// The body of a create request.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewCompany {
    #[schema(value_type = String, example = "acme")]
    pub id: String,
    pub name: String,
    pub industry: String,
    pub jurisdiction: String,
    #[serde(default)]
    pub revenue_usd: i64,
    #[serde(default = "half")]
    pub complexity_score: f64,
    #[serde(default = "half")]
    pub activity_score: f64,
    #[serde(default = "default_multiplier")]
    pub priority_multiplier: f64,
    #[serde(default = "default_sla")]
    pub sla_response_seconds: i32,
    #[serde(default)]
    pub contacts: Vec<Contact>,
    #[serde(default)]
    #[schema(value_type = Vec<String>)]
    pub sharing_consent: BTreeSet<String>,
}

fn half() -> f64 {
    0.5
}
fn default_multiplier() -> f64 {
    DEFAULT_PRIORITY_MULTIPLIER
}
fn default_sla() -> i32 {
    DEFAULT_SLA_RESPONSE_SECONDS
}

/// The body of an update request: every field optional, `id` not allowed.
/// The fields that decide across companies (sharing, budget shares,
/// priority) are the admin's alone: see [`writable_by`].
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompanyPatch {
    pub name: Option<String>,
    /// Admin only: decides which companies may share with this one.
    pub industry: Option<String>,
    /// Admin only: decides which companies may share with this one.
    pub jurisdiction: Option<String>,
    /// Admin only: a factor of every company's share of the base pool.
    pub revenue_usd: Option<i64>,
    /// Admin only: a factor of every company's share of the base pool.
    pub complexity_score: Option<f64>,
    /// Admin only: a factor of every company's share of the base pool.
    pub activity_score: Option<f64>,
    /// Admin only: ranks this company's tasks against every other's.
    pub priority_multiplier: Option<f64>,
    /// Admin only: what this company is promised against every other.
    pub sla_response_seconds: Option<i32>,
    pub contacts: Option<Vec<Contact>>,
    /// Admin only: the sharing scopes this company consents to.
    #[schema(value_type = Option<Vec<String>>)]
    pub sharing_consent: Option<BTreeSet<String>>,
}

/// The profile fields only an admin may change: they decide what crosses
/// between companies (sharing), each one's share of the base pool and the
/// rank of its tasks against others'. A company key setting them would
/// change other companies' data access and budgets.
pub const ADMIN_ONLY_FIELDS: [&str; 8] = [
    "industry",
    "jurisdiction",
    "sharing_consent",
    "revenue_usd",
    "complexity_score",
    "activity_score",
    "priority_multiplier",
    "sla_response_seconds",
];

/// Whether a key of `role` may write the profile field `field`: admins
/// every field, operators all but [`ADMIN_ONLY_FIELDS`], viewers none.
pub fn writable_by(role: Role, field: &str) -> bool {
    match role {
        Role::Admin => true,
        Role::Operator => !ADMIN_ONLY_FIELDS.contains(&field),
        Role::Viewer | Role::Metrics => false,
    }
}

impl CompanyPatch {
    pub fn is_empty(&self) -> bool {
        self.fields().is_empty()
    }

    /// The fields this patch sets, in declaration order.
    pub fn fields(&self) -> Vec<&'static str> {
        let set = [
            ("name", self.name.is_some()),
            ("industry", self.industry.is_some()),
            ("jurisdiction", self.jurisdiction.is_some()),
            ("revenue_usd", self.revenue_usd.is_some()),
            ("complexity_score", self.complexity_score.is_some()),
            ("activity_score", self.activity_score.is_some()),
            ("priority_multiplier", self.priority_multiplier.is_some()),
            ("sla_response_seconds", self.sla_response_seconds.is_some()),
            ("contacts", self.contacts.is_some()),
            ("sharing_consent", self.sharing_consent.is_some()),
        ];
        set.into_iter()
            .filter(|(_, s)| *s)
            .map(|(f, _)| f)
            .collect()
    }

    /// The first field this patch sets that `role` may not write.
    pub fn forbidden_for(&self, role: Role) -> Option<&'static str> {
        self.fields().into_iter().find(|f| !writable_by(role, f))
    }
}

impl NewCompany {
    pub fn validate(self) -> Result<(CompanyId, CompanyProfile), ValidationError> {
        let id = CompanyId::parse(&self.id)?;
        let profile = CompanyProfile {
            name: self.name,
            industry: self.industry,
            jurisdiction: self.jurisdiction,
            revenue_usd: self.revenue_usd,
            complexity_score: self.complexity_score,
            activity_score: self.activity_score,
            priority_multiplier: self.priority_multiplier,
            sla_response_seconds: self.sla_response_seconds,
            contacts: self.contacts,
            sharing_consent: self.sharing_consent,
        };
        Ok((id, profile.checked()?))
    }
}

impl CompanyProfile {
    /// The profile with the patch applied, if the result is valid.
    pub fn apply(&self, patch: CompanyPatch) -> Result<CompanyProfile, ValidationError> {
        let mut p = self.clone();
        if let Some(v) = patch.name {
            p.name = v;
        }
        if let Some(v) = patch.industry {
            p.industry = v;
        }
        if let Some(v) = patch.jurisdiction {
            p.jurisdiction = v;
        }
        if let Some(v) = patch.revenue_usd {
            p.revenue_usd = v;
        }
        if let Some(v) = patch.complexity_score {
            p.complexity_score = v;
        }
        if let Some(v) = patch.activity_score {
            p.activity_score = v;
        }
        if let Some(v) = patch.priority_multiplier {
            p.priority_multiplier = v;
        }
        if let Some(v) = patch.sla_response_seconds {
            p.sla_response_seconds = v;
        }
        if let Some(v) = patch.contacts {
            p.contacts = v;
        }
        if let Some(v) = patch.sharing_consent {
            p.sharing_consent = v;
        }
        p.checked()
    }

    fn checked(mut self) -> Result<Self, ValidationError> {
        self.name = text("name", &self.name, 200)?;
        self.industry = text("industry", &self.industry, 100)?;
        check_jurisdiction(&self.jurisdiction)?;
        if self.revenue_usd < 0 {
            return Err(ValidationError::new("revenue_usd", "must not be negative"));
        }
        unit("complexity_score", self.complexity_score)?;
        unit("activity_score", self.activity_score)?;
        if !(0.1..=3.0).contains(&self.priority_multiplier) {
            return Err(ValidationError::new(
                "priority_multiplier",
                "must be between 0.1 and 3.0",
            ));
        }
        if !(1..=7 * 86_400).contains(&self.sla_response_seconds) {
            return Err(ValidationError::new(
                "sla_response_seconds",
                "must be between 1 and 604800 (one week)",
            ));
        }
        if self.contacts.len() > MAX_CONTACTS {
            return Err(ValidationError::new(
                "contacts",
                format!("at most {MAX_CONTACTS} contacts"),
            ));
        }
        for (i, c) in self.contacts.iter_mut().enumerate() {
            c.check().map_err(|e| e.under(&format!("contacts.{i}")))?;
        }
        for scope in &self.sharing_consent {
            let ok = !scope.is_empty()
                && scope.len() <= 64
                && scope
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !ok {
                return Err(ValidationError::new(
                    "sharing_consent",
                    format!("'{scope}' is not a scope name (lowercase letters, digits, '_')"),
                ));
            }
        }
        Ok(self)
    }
}

impl Contact {
    fn check(&mut self) -> Result<(), ValidationError> {
        self.name = text("name", &self.name, 200)?;
        if let Some(email) = &self.email
            && !is_email(email)
        {
            return Err(ValidationError::new("email", "is not an email address"));
        }
        if let Some(url) = &self.webhook {
            let ok = (url.starts_with("https://") || url.starts_with("http://"))
                && url.len() <= 2000
                && url.len() > "https://".len()
                && !url.chars().any(char::is_whitespace);
            if !ok {
                return Err(ValidationError::new("webhook", "must be an http(s) URL"));
            }
        }
        Ok(())
    }
}

pub(crate) fn text(field: &str, value: &str, max: usize) -> Result<String, ValidationError> {
    let v = value.trim();
    if v.is_empty() {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    if v.chars().count() > max {
        return Err(ValidationError::new(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    if v.chars().any(char::is_control) {
        return Err(ValidationError::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(v.to_owned())
}

fn unit(field: &str, v: f64) -> Result<(), ValidationError> {
    if (0.0..=1.0).contains(&v) {
        Ok(())
    } else {
        Err(ValidationError::new(field, "must be between 0 and 1"))
    }
}

pub(crate) fn check_jurisdiction(j: &str) -> Result<(), ValidationError> {
    let (country, sub) = match j.split_once('-') {
        Some((c, s)) => (c, Some(s)),
        None => (j, None),
    };
    let country_ok = country.len() == 2 && country.bytes().all(|b| b.is_ascii_uppercase());
    let sub_ok = sub.is_none_or(|s| {
        (1..=3).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    });
    if country_ok && sub_ok {
        Ok(())
    } else {
        Err(ValidationError::new(
            "jurisdiction",
            "must be an ISO 3166 code such as US-DE or GB",
        ))
    }
}

fn is_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && s.len() <= 254
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains('@')
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(id: &str) -> NewCompany {
        serde_json::from_value(serde_json::json!({
            "id": id, "name": "Acme", "industry": "fintech", "jurisdiction": "US-DE"
        }))
        .expect("valid json")
    }

    #[test]
    fn defaults_apply() {
        let (id, p) = new("acme").validate().expect("valid");
        assert_eq!(id.as_str(), "acme");
        assert_eq!(p.priority_multiplier, 1.0);
        assert_eq!(p.sla_response_seconds, 30);
        assert!(p.contacts.is_empty());
    }

    #[test]
    fn each_bad_field_is_named() {
        type Mutation = Box<dyn Fn(&mut NewCompany)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("id", Box::new(|c| c.id = "A".into())),
            ("name", Box::new(|c| c.name = "  ".into())),
            ("jurisdiction", Box::new(|c| c.jurisdiction = "usa".into())),
            ("revenue_usd", Box::new(|c| c.revenue_usd = -1)),
            ("complexity_score", Box::new(|c| c.complexity_score = 1.5)),
            ("activity_score", Box::new(|c| c.activity_score = f64::NAN)),
            (
                "priority_multiplier",
                Box::new(|c| c.priority_multiplier = 3.1),
            ),
            (
                "priority_multiplier",
                Box::new(|c| c.priority_multiplier = 0.05),
            ),
            (
                "sla_response_seconds",
                Box::new(|c| c.sla_response_seconds = 0),
            ),
            (
                "contacts.0.email",
                Box::new(|c| {
                    c.contacts = vec![Contact {
                        name: "Jo".into(),
                        email: Some("not-an-email".into()),
                        webhook: None,
                    }]
                }),
            ),
            (
                "contacts.0.webhook",
                Box::new(|c| {
                    c.contacts = vec![Contact {
                        name: "Jo".into(),
                        email: None,
                        webhook: Some("ftp://x".into()),
                    }]
                }),
            ),
            (
                "sharing_consent",
                Box::new(|c| c.sharing_consent = ["Bad Scope".to_string()].into()),
            ),
        ];
        for (field, mutate) in cases {
            let mut c = new("acme");
            mutate(&mut c);
            let e = c.validate().expect_err(field);
            assert_eq!(e.field, field);
        }
    }

    #[test]
    fn jurisdictions() {
        for ok in ["US-DE", "GB", "DE-BY", "FR-75"] {
            assert!(check_jurisdiction(ok).is_ok(), "{ok}");
        }
        for bad in ["US-", "us-de", "USA", "US-DELA", ""] {
            assert!(check_jurisdiction(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn patch_is_validated_and_keeps_other_fields() {
        let (_, p) = new("acme").validate().expect("valid");
        let q = p
            .apply(CompanyPatch {
                revenue_usd: Some(5),
                ..Default::default()
            })
            .expect("valid");
        assert_eq!(q.revenue_usd, 5);
        assert_eq!(q.name, "Acme");
        let e = p
            .apply(CompanyPatch {
                activity_score: Some(-0.1),
                ..Default::default()
            })
            .expect_err("invalid");
        assert_eq!(e.field, "activity_score");
    }

    #[test]
    fn operators_write_only_name_and_contacts() {
        let every: CompanyPatch = serde_json::from_value(serde_json::json!({
            "name": "A", "industry": "x", "jurisdiction": "GB", "revenue_usd": 1,
            "complexity_score": 0.1, "activity_score": 0.1, "priority_multiplier": 1.0,
            "sla_response_seconds": 5, "contacts": [], "sharing_consent": []
        }))
        .expect("json");
        assert_eq!(every.fields().len(), 10);
        let operator: Vec<_> = every
            .fields()
            .into_iter()
            .filter(|f| writable_by(Role::Operator, f))
            .collect();
        assert_eq!(operator, ["name", "contacts"]);
        assert!(every.fields().iter().all(|f| writable_by(Role::Admin, f)));
        assert!(every.fields().iter().all(|f| !writable_by(Role::Viewer, f)));
        assert_eq!(every.forbidden_for(Role::Operator), Some("industry"));
        assert_eq!(every.forbidden_for(Role::Admin), None);
        for field in ADMIN_ONLY_FIELDS {
            let mut one = serde_json::Map::new();
            one.insert(field.to_owned(), every_value(field));
            let patch: CompanyPatch =
                serde_json::from_value(serde_json::Value::Object(one)).expect(field);
            assert_eq!(patch.forbidden_for(Role::Operator), Some(field));
        }
        let safe: CompanyPatch =
            serde_json::from_value(serde_json::json!({"name": "B", "contacts": []})).expect("json");
        assert_eq!(safe.forbidden_for(Role::Operator), None);
    }

    fn every_value(field: &str) -> serde_json::Value {
        match field {
            "industry" => "x".into(),
            "jurisdiction" => "GB".into(),
            "sharing_consent" => serde_json::json!([]),
            "revenue_usd" | "sla_response_seconds" => 5.into(),
            _ => 0.5.into(),
        }
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let r: Result<NewCompany, _> = serde_json::from_value(serde_json::json!({
            "id": "acme", "name": "A", "industry": "x", "jurisdiction": "US", "colour": "red"
        }));
        assert!(r.expect_err("unknown").to_string().contains("colour"));
    }
}
