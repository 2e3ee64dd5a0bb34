//! Conflict flags (SEED 2.3's conflict prevention): two companies whose
//! memories name the same counterparty are flagged for a human, and while
//! the flag is open nothing is shared between them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::CompanyId;
use crate::memory::{EventType, Memory};

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

/// A counterparty name as compared across companies: its runs of letters
/// and digits, lower-cased, joined by one space. "  Globex   Corp ",
/// "Globex Corp." and "globex corp" are one counterparty, and a contract's
/// text cut into words the same way ([`text_name_candidates`]) finds it.
pub fn normalise_counterparty(name: &str) -> String {
    name.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The lists of names a memory's content may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NameKind {
    Person,
    Counterparty,
}

impl NameKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NameKind::Person => "person",
            NameKind::Counterparty => "counterparty",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "person" => Some(NameKind::Person),
            "counterparty" => Some(NameKind::Counterparty),
            _ => None,
        }
    }
}

/// A name listed in a memory's `content.people` or `content.counterparties`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedName {
    pub kind: NameKind,
    /// As written (trimmed by validation).
    pub name: String,
    /// [`normalise_counterparty`] of the name; never empty.
    pub key: String,
}

/// The people and counterparties a memory's content lists, one per kind
/// and key, in the order given. Names with no letter or digit are left out.
pub fn listed_names(content: &serde_json::Value) -> Vec<ListedName> {
    let mut out: Vec<ListedName> = Vec::new();
    for (list, kind) in [
        ("people", NameKind::Person),
        ("counterparties", NameKind::Counterparty),
    ] {
        let names = content
            .get(list)
            .and_then(serde_json::Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(serde_json::Value::as_str);
        for name in names {
            let key = normalise_counterparty(name);
            if key.is_empty() || out.iter().any(|n| n.kind == kind && n.key == key) {
                continue;
            }
            out.push(ListedName {
                kind,
                name: name.to_owned(),
                key,
            });
        }
    }
    out
}

/// Whether a memory is about a contract or a deal, so that its text is
/// read for counterparties other companies know: a contract event, or a
/// category that names a contract or a deal (`deals`, `contract_reviews`).
pub fn is_contract_event(m: &Memory) -> bool {
    let category = m.category.to_lowercase();
    m.event_type == EventType::Contract
        || category.contains("contract")
        || category.contains("deal")
}

/// The longest counterparty name, in words, that a text match finds.
pub const MAX_NAME_WORDS: usize = 6;
/// Shorter candidates ("co", "ab") would match too much running text.
pub const MIN_TEXT_MATCH_CHARS: usize = 3;

/// Every run of 1..=[`MAX_NAME_WORDS`] consecutive words of `text`, as a
/// [`normalise_counterparty`] key, of at least [`MIN_TEXT_MATCH_CHARS`]
/// characters: the names the text could be naming. Calls `each` once per
/// run, repeats included (the caller keeps a set).
pub fn text_name_candidates(text: &str, mut each: impl FnMut(String)) {
    let words: Vec<String> = text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    for start in 0..words.len() {
        let mut key = String::new();
        for w in words.iter().skip(start).take(MAX_NAME_WORDS) {
            if !key.is_empty() {
                key.push(' ');
            }
            key.push_str(w);
            if key.chars().count() >= MIN_TEXT_MATCH_CHARS {
                each(key.clone());
            }
        }
    }
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
        assert_eq!(normalise_counterparty("Globex Corp."), "globex corp");
        assert_eq!(normalise_counterparty("O'Brien & Söhne"), "o brien söhne");
        assert_eq!(normalise_counterparty(" -- "), "");
        assert_eq!(ConflictStatus::parse("open"), Some(ConflictStatus::Open));
        assert_eq!(
            ConflictStatus::parse(ConflictStatus::Resolved.as_str()),
            Some(ConflictStatus::Resolved)
        );
        assert_eq!(ConflictStatus::parse("x"), None);
    }

    #[test]
    fn listed_names_are_keyed_and_deduplicated() {
        let content = serde_json::json!({
            "text": "x",
            "people": ["Dana Ruiz", "dana  ruiz", "--"],
            "counterparties": ["Globex Corp.", "Dana Ruiz"],
        });
        let names = listed_names(&content);
        let got: Vec<(NameKind, &str, &str)> = names
            .iter()
            .map(|n| (n.kind, n.name.as_str(), n.key.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (NameKind::Person, "Dana Ruiz", "dana ruiz"),
                (NameKind::Counterparty, "Globex Corp.", "globex corp"),
                (NameKind::Counterparty, "Dana Ruiz", "dana ruiz"),
            ]
        );
        assert!(listed_names(&serde_json::json!({"text": "x"})).is_empty());
    }

    #[test]
    fn text_candidates_are_word_runs() {
        let mut got = Vec::new();
        text_name_candidates("Signed with Globex Corp. today", |k| got.push(k));
        assert!(got.contains(&"globex corp".to_owned()));
        assert!(got.contains(&"with globex corp today".to_owned()));
        assert!(!got.iter().any(|k| k.chars().count() < MIN_TEXT_MATCH_CHARS));
        let long = "a1 b2 c3 d4 e5 f6 g7 h8";
        let mut max = 0;
        text_name_candidates(long, |k| max = max.max(k.split(' ').count()));
        assert_eq!(max, MAX_NAME_WORDS);
    }
}
