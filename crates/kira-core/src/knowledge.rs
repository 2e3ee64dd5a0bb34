//! The shared knowledge base (SEED 2.2): entries every company may read
//! (legal frameworks, business patterns, industry standards), written by
//! admins. Not company data: no entry belongs to a company.
//!
//! An entry is keyed by (domain, key); writing the same pair again updates
//! it. Which domains exist is configuration, checked by the engine; here a
//! domain only has to be a well-formed name.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::ValidationError;
use crate::company::{check_jurisdiction, text};

/// SEED 2.2's domains, the default configuration.
pub const DEFAULT_DOMAINS: [&str; 3] = [
    "legal_frameworks",
    "business_patterns",
    "industry_standards",
];

pub const MAX_DOMAIN_LEN: usize = 64;
pub const MAX_KEY_LEN: usize = 100;
pub const MAX_TITLE_CHARS: usize = 200;
/// Bytes of UTF-8: an entry is a reference page, not a document store.
pub const MAX_BODY_BYTES: usize = 32 * 1024;
pub const MAX_TAGS: usize = 20;
pub const MAX_TAG_CHARS: usize = 50;
const MAX_INDUSTRY_CHARS: usize = 100;

/// A stored entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct KnowledgeEntry {
    pub id: Uuid,
    pub domain: String,
    pub key: String,
    pub title: String,
    pub body: String,
    pub tags: Vec<String>,
    pub jurisdiction: Option<String>,
    pub industry: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl KnowledgeEntry {
    /// The text an embedding or a context pack uses: title, body and tags.
    pub fn text(&self) -> String {
        if self.tags.is_empty() {
            format!("{}: {}", self.title, self.body)
        } else {
            format!("{}: {} ({})", self.title, self.body, self.tags.join(", "))
        }
    }
}

/// The body of a write: one entry, as an operator writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKnowledge {
    #[schema(example = "legal_frameworks")]
    pub domain: String,
    /// Unique within the domain: lowercase letters, digits, `-`, `_`, `.`.
    #[schema(example = "delaware_corp")]
    pub key: String,
    pub title: String,
    pub body: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub jurisdiction: Option<String>,
    #[serde(default)]
    pub industry: Option<String>,
}

impl NewKnowledge {
    /// The entry this write stores, with `id` and times for a new entry (an
    /// update keeps the stored id and creation time). Text is trimmed, tags
    /// lower-cased and de-duplicated in order, the industry lower-cased.
    pub fn validate(self, id: Uuid, now: DateTime<Utc>) -> Result<KnowledgeEntry, ValidationError> {
        check_domain(&self.domain)?;
        check_key(&self.key)?;
        let title = text("title", &self.title, MAX_TITLE_CHARS)?;
        let body = self.body.trim();
        if body.is_empty() {
            return Err(ValidationError::new("body", "must not be empty"));
        }
        if body.len() > MAX_BODY_BYTES {
            return Err(ValidationError::new(
                "body",
                format!("must be at most {MAX_BODY_BYTES} bytes"),
            ));
        }
        if body
            .chars()
            .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
        {
            return Err(ValidationError::new(
                "body",
                "must not contain control characters other than newlines and tabs",
            ));
        }
        if self.tags.len() > MAX_TAGS {
            return Err(ValidationError::new(
                "tags",
                format!("at most {MAX_TAGS} tags"),
            ));
        }
        let mut tags: Vec<String> = Vec::with_capacity(self.tags.len());
        for (i, t) in self.tags.iter().enumerate() {
            let t = text(&format!("tags.{i}"), t, MAX_TAG_CHARS)?.to_lowercase();
            if !tags.contains(&t) {
                tags.push(t);
            }
        }
        let jurisdiction = match self.jurisdiction {
            Some(j) => {
                let j = j.trim().to_owned();
                check_jurisdiction(&j)?;
                Some(j)
            }
            None => None,
        };
        let industry = self
            .industry
            .map(|i| text("industry", &i, MAX_INDUSTRY_CHARS).map(|i| i.to_lowercase()))
            .transpose()?;
        Ok(KnowledgeEntry {
            id,
            domain: self.domain,
            key: self.key,
            title,
            body: body.to_owned(),
            tags,
            jurisdiction,
            industry,
            created_at: now,
            updated_at: now,
        })
    }
}

/// A domain name: 1 to 64 lowercase letters, digits or `_`.
pub fn check_domain(d: &str) -> Result<(), ValidationError> {
    let ok = !d.is_empty()
        && d.len() <= MAX_DOMAIN_LEN
        && d.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new(
            "domain",
            format!("must be 1 to {MAX_DOMAIN_LEN} lowercase letters, digits or '_'"),
        ))
    }
}

/// A key: 1 to 100 lowercase letters, digits, `-`, `_` or `.`, starting
/// with a letter or digit (so it reads as a slug and never as a path).
pub fn check_key(k: &str) -> Result<(), ValidationError> {
    let ok = k.len() <= MAX_KEY_LEN
        && k.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && k.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
        });
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new(
            "key",
            format!(
                "must be 1 to {MAX_KEY_LEN} lowercase letters, digits, '-', '_' or '.', \
                 starting with a letter or digit"
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> NewKnowledge {
        NewKnowledge {
            domain: "legal_frameworks".into(),
            key: "delaware_corp".into(),
            title: "  Delaware corporations ".into(),
            body: "Board duties under the DGCL.\n\tFiduciary duty of care and loyalty.".into(),
            tags: vec!["Corporate".into(), "corporate".into(), "DGCL".into()],
            jurisdiction: Some("US-DE".into()),
            industry: Some("FinTech".into()),
        }
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-03-01T09:30:00Z")
            .expect("time")
            .with_timezone(&Utc)
    }

    #[test]
    fn a_valid_entry_is_normalised() {
        let e = good().validate(Uuid::nil(), now()).expect("valid");
        assert_eq!(e.title, "Delaware corporations");
        assert_eq!(e.tags, ["corporate", "dgcl"]);
        assert_eq!(e.industry.as_deref(), Some("fintech"));
        assert_eq!(e.jurisdiction.as_deref(), Some("US-DE"));
        assert!(e.body.contains('\n'));
        assert_eq!(
            e.text(),
            format!("Delaware corporations: {} (corporate, dgcl)", e.body)
        );
    }

    #[test]
    fn errors_name_the_field() {
        let cases: Vec<(&str, NewKnowledge)> = vec![
            (
                "domain",
                NewKnowledge {
                    domain: "Legal".into(),
                    ..good()
                },
            ),
            (
                "domain",
                NewKnowledge {
                    domain: String::new(),
                    ..good()
                },
            ),
            (
                "key",
                NewKnowledge {
                    key: String::new(),
                    ..good()
                },
            ),
            (
                "key",
                NewKnowledge {
                    key: "-lead".into(),
                    ..good()
                },
            ),
            (
                "key",
                NewKnowledge {
                    key: "has space".into(),
                    ..good()
                },
            ),
            (
                "key",
                NewKnowledge {
                    key: "a/b".into(),
                    ..good()
                },
            ),
            (
                "key",
                NewKnowledge {
                    key: "k".repeat(MAX_KEY_LEN + 1),
                    ..good()
                },
            ),
            (
                "title",
                NewKnowledge {
                    title: " ".into(),
                    ..good()
                },
            ),
            (
                "title",
                NewKnowledge {
                    title: "t".repeat(MAX_TITLE_CHARS + 1),
                    ..good()
                },
            ),
            (
                "body",
                NewKnowledge {
                    body: "\n ".into(),
                    ..good()
                },
            ),
            (
                "body",
                NewKnowledge {
                    body: "b".repeat(MAX_BODY_BYTES + 1),
                    ..good()
                },
            ),
            (
                "body",
                NewKnowledge {
                    body: "bell\u{7}".into(),
                    ..good()
                },
            ),
            (
                "tags",
                NewKnowledge {
                    tags: vec!["t".into(); MAX_TAGS + 1],
                    ..good()
                },
            ),
            (
                "tags.1",
                NewKnowledge {
                    tags: vec!["ok".into(), " ".into()],
                    ..good()
                },
            ),
            (
                "jurisdiction",
                NewKnowledge {
                    jurisdiction: Some("Delaware".into()),
                    ..good()
                },
            ),
            (
                "industry",
                NewKnowledge {
                    industry: Some(String::new()),
                    ..good()
                },
            ),
        ];
        for (field, k) in cases {
            let e = k.clone().validate(Uuid::nil(), now()).expect_err(field);
            assert_eq!(e.field, field, "{k:?}: {e}");
        }
        let k = NewKnowledge {
            key: "a.b-c_9".into(),
            ..good()
        };
        k.validate(Uuid::nil(), now())
            .expect("a key may hold . - _");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let r = serde_json::from_value::<NewKnowledge>(serde_json::json!({
            "domain": "d", "key": "k", "title": "t", "body": "b", "colour": 1
        }));
        assert!(r.expect_err("unknown").to_string().contains("colour"));
    }
}
