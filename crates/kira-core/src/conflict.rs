//! Conflict flags (SEED 2.3's conflict prevention): two companies whose
//! memories name the same counterparty are flagged for a human, and while
//! the flag is open nothing is shared between them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::CompanyId;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConflictStatus {
    Open,
    Resolved,
}

impl ConflictStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ConflictStatus::Open => "open",
            ConflictStatus::Resolved => "resolved",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "open" => Some(ConflictStatus::Open),
            "resolved" => Some(ConflictStatus::Resolved),
            _ => None,
        }
    }
}

/// One flag: a pair of companies (in canonical order, `company_a <
/// company_b`) and the counterparty both name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Conflict {
    pub id: Uuid,
    pub company_a: CompanyId,
    pub company_b: CompanyId,
    /// Normalised: trimmed, lower-cased, inner whitespace collapsed.
    pub counterparty: String,
    /// The memories (of either company) that named it.
    pub memory_ids: Vec<Uuid>,
    pub detected_at: DateTime<Utc>,
    pub status: ConflictStatus,
    pub resolved_at: Option<DateTime<Utc>>,
    pub resolved_by: Option<String>,
    pub note: Option<String>,
}

/// The pair in canonical order; None for a company and itself.
pub fn canonical_pair(a: &CompanyId, b: &CompanyId) -> Option<(CompanyId, CompanyId)> {
    match a.cmp(b) {
        std::cmp::Ordering::Less => Some((a.clone(), b.clone())),
        std::cmp::Ordering::Greater => Some((b.clone(), a.clone())),
        std::cmp::Ordering::Equal => None,
    }
}

/// A counterparty name as compared across companies: "  Globex   Corp " and
/// "globex corp" are one counterparty.
pub fn normalise_counterparty(name: &str) -> String {
    name.split_whitespace()
        .map(str::to_lowercase)
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_canonical_and_names_normalised() {
        let a = CompanyId::parse("acme").expect("id");
        let b = CompanyId::parse("beta").expect("id");
        assert_eq!(canonical_pair(&b, &a), Some((a.clone(), b.clone())));
        assert_eq!(canonical_pair(&a, &b), Some((a.clone(), b)));
        assert_eq!(canonical_pair(&a, &a), None);
        assert_eq!(normalise_counterparty("  Globex \t Corp "), "globex corp");
        assert_eq!(ConflictStatus::parse("open"), Some(ConflictStatus::Open));
        assert_eq!(
            ConflictStatus::parse(ConflictStatus::Resolved.as_str()),
            Some(ConflictStatus::Resolved)
        );
        assert_eq!(ConflictStatus::parse("x"), None);
    }
}
