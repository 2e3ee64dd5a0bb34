//! Episodic memory (SEED 2.1): what an event in a company's memory is, what
//! a valid one looks like, and the pure rules over memories: the terms
//! filters match on, context layers ([`layer`]), search ranking ([`rank`]),
//! the times a text speaks of ([`when`]) and compaction strategies
//! ([`compaction`]). Storage, full-text search
//! and embeddings live in the store and the engine.

pub mod compaction;
pub mod layer;
pub mod rank;
pub mod retention;
pub mod when;

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{CompanyId, ValidationError};

pub use compaction::{
    Action, CompactionConfig, CompactionStrategy, action, due_action, summary_group,
};
pub use layer::{Layer, LayerConfig, layer};
pub use rank::{
    ScoreWeights, combined_score, episodes, fuse_rrf, normalise, rank_hits, recency,
    support_within_episodes,
};
pub use when::{TimeWindow, speaks_of, windows_in};

/// What kind of event a memory records.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    Decision,
    Meeting,
    Context,
    Person,
    Goal,
    Issue,
    Contract,
    Progress,
    /// The outcome of a task an agent ran.
    TaskResult,
    Note,
}

impl EventType {
    pub const ALL: [EventType; 10] = [
        EventType::Decision,
        EventType::Meeting,
        EventType::Context,
        EventType::Person,
        EventType::Goal,
        EventType::Issue,
        EventType::Contract,
        EventType::Progress,
        EventType::TaskResult,
        EventType::Note,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Decision => "decision",
            EventType::Meeting => "meeting",
            EventType::Context => "context",
            EventType::Person => "person",
            EventType::Goal => "goal",
            EventType::Issue => "issue",
            EventType::Contract => "contract",
            EventType::Progress => "progress",
            EventType::TaskResult => "task_result",
            EventType::Note => "note",
        }
    }

    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| {
                ValidationError::new(
                    "event_type",
                    format!("'{s}' is not one of {}", names(Self::ALL.map(Self::as_str))),
                )
            })
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventType {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// The line of work a memory belongs to; compaction strategies and context
/// packs key on it.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Workstream {
    Legal,
    Financial,
    Operational,
    Technical,
    Content,
    Research,
    /// What a memory is filed under when nobody says otherwise.
    #[default]
    General,
}

impl Workstream {
    pub const ALL: [Workstream; 7] = [
        Workstream::Legal,
        Workstream::Financial,
        Workstream::Operational,
        Workstream::Technical,
        Workstream::Content,
        Workstream::Research,
        Workstream::General,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Workstream::Legal => "legal",
            Workstream::Financial => "financial",
            Workstream::Operational => "operational",
            Workstream::Technical => "technical",
            Workstream::Content => "content",
            Workstream::Research => "research",
            Workstream::General => "general",
        }
    }

    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        Self::ALL
            .into_iter()
            .find(|w| w.as_str() == s)
            .ok_or_else(|| {
                ValidationError::new(
                    "workstream",
                    format!("'{s}' is not one of {}", names(Self::ALL.map(Self::as_str))),
                )
            })
    }
}

impl fmt::Display for Workstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Workstream {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

fn names<const N: usize>(all: [&str; N]) -> String {
    all.join(", ")
}

pub const DEFAULT_CATEGORY: &str = "general";
pub const DEFAULT_IMPORTANCE: i16 = 5;
pub const MIN_IMPORTANCE: i16 = 1;
pub const MAX_IMPORTANCE: i16 = 10;
pub const MAX_TEXT_CHARS: usize = 20_000;
/// The most `content` may take serialised as JSON: the text and whatever
/// structured data comes with it.
pub const MAX_CONTENT_BYTES: usize = 64 * 1024;
pub const MAX_INDEXED_TERMS: usize = 50;
pub const MAX_TERM_CHARS: usize = 64;
pub const MAX_CATEGORY_LEN: usize = 64;
pub const MAX_SOURCE_CHARS: usize = 200;
/// A name in `content.people` or `content.counterparties`.
pub const MAX_NAME_CHARS: usize = 200;

/// How far ahead of `now` an event may be dated: a day absorbs clock skew
/// and time zones mistaken for UTC; more than that is a wrong date, and a
/// future event would sit in the hot layer until it came.
pub fn max_future() -> TimeDelta {
    TimeDelta::days(1)
}

/// The body of an add request: one event as the operator or an agent
/// records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewMemory {
    /// When it happened (not when it was recorded).
    pub occurred_at: DateTime<Utc>,
    pub event_type: EventType,
    #[serde(default)]
    pub workstream: Workstream,
    /// What compaction keys on: key_decisions, precedents, deadlines,
    /// routine_reviews, draft_iterations, ... (lowercase letters, digits, `_`).
    #[serde(default = "default_category")]
    #[schema(example = "key_decisions")]
    pub category: String,
    /// A JSON object with a required non-empty `text`; optional `people` and
    /// `counterparties` (arrays of names), `amounts`, and anything else.
    #[schema(value_type = Object)]
    pub content: serde_json::Value,
    /// 1 (trivia) to 10 (must never be forgotten).
    #[serde(default = "default_importance")]
    pub importance: i16,
    /// Extra terms to filter on, besides the people and counterparties.
    #[serde(default)]
    pub indexed_terms: Vec<String>,
    /// Where it came from: a task id, an API key id, an import file.
    #[serde(default)]
    pub source: Option<String>,
}

fn default_category() -> String {
    DEFAULT_CATEGORY.to_owned()
}
fn default_importance() -> i16 {
    DEFAULT_IMPORTANCE
}

/// A checked [`NewMemory`]: only [`NewMemory::validate`] makes one, so one
/// in hand is valid (its content is an object with a non-empty `text`).
/// `non_exhaustive` is what keeps other crates from building one by hand.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ValidMemory {
    pub occurred_at: DateTime<Utc>,
    pub event_type: EventType,
    pub workstream: Workstream,
    pub category: String,
    pub content: serde_json::Value,
    pub importance: i16,
    pub indexed_terms: Vec<String>,
    pub source: Option<String>,
}

impl NewMemory {
    /// The memory as it will be stored: text trimmed with `\r\n` made `\n`,
    /// names and terms trimmed. Errors name the field as in the body, nested
    /// (`content.text`, `content.people.2`, `indexed_terms.0`).
    pub fn validate(self, now: DateTime<Utc>) -> Result<ValidMemory, ValidationError> {
        if self.occurred_at - now > max_future() {
            return Err(ValidationError::new(
                "occurred_at",
                "must not be more than 1 day in the future",
            ));
        }
        check_category(&self.category)?;
        if !(MIN_IMPORTANCE..=MAX_IMPORTANCE).contains(&self.importance) {
            return Err(ValidationError::new(
                "importance",
                format!("must be between {MIN_IMPORTANCE} and {MAX_IMPORTANCE}"),
            ));
        }
        let content = check_content(self.content)?;
        if self.indexed_terms.len() > MAX_INDEXED_TERMS {
            return Err(ValidationError::new(
                "indexed_terms",
                format!("at most {MAX_INDEXED_TERMS} terms"),
            ));
        }
        let indexed_terms = self
            .indexed_terms
            .iter()
            .enumerate()
            .map(|(i, t)| line(&i.to_string(), t, MAX_TERM_CHARS))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.under("indexed_terms"))?;
        let source = self
            .source
            .map(|s| line("source", &s, MAX_SOURCE_CHARS))
            .transpose()?;
        Ok(ValidMemory {
            occurred_at: self.occurred_at,
            event_type: self.event_type,
            workstream: self.workstream,
            category: self.category,
            content,
            importance: self.importance,
            indexed_terms,
            source,
        })
    }
}

/// A category: 1 to 64 lowercase letters, digits and `_`, so that
/// configuration can name it exactly (compaction matches it verbatim).
pub fn check_category(s: &str) -> Result<(), ValidationError> {
    if s.is_empty() || s.len() > MAX_CATEGORY_LEN {
        return Err(ValidationError::new(
            "category",
            format!("must be 1 to {MAX_CATEGORY_LEN} characters"),
        ));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(ValidationError::new(
            "category",
            "may contain only lowercase letters, digits and '_'",
        ));
    }
    Ok(())
}

fn check_content(mut content: serde_json::Value) -> Result<serde_json::Value, ValidationError> {
    crate::storable::check_json(&content, "content")?;
    let Some(obj) = content.as_object_mut() else {
        return Err(ValidationError::new("content", "must be a JSON object"));
    };
    let text = match obj.get("text") {
        None => return Err(ValidationError::new("content.text", "is required")),
        Some(serde_json::Value::String(s)) => check_text(s)?,
        Some(_) => return Err(ValidationError::new("content.text", "must be a string")),
    };
    obj.insert("text".to_owned(), serde_json::Value::String(text));
    for list in ["people", "counterparties"] {
        let Some(v) = obj.get_mut(list) else {
            continue;
        };
        let Some(items) = v.as_array_mut() else {
            return Err(ValidationError::new(
                format!("content.{list}"),
                "must be an array of names",
            ));
        };
        for (i, item) in items.iter_mut().enumerate() {
            let field = format!("content.{list}.{i}");
            let Some(name) = item.as_str() else {
                return Err(ValidationError::new(field, "must be a string"));
            };
            *item = serde_json::Value::String(line(&field, name, MAX_NAME_CHARS)?);
        }
    }
    // Measured after trimming, on what will be stored. serde_json cannot
    // fail to write a Value, so 0 is never reached in practice.
    let size = serde_json::to_vec(&content).map_or(0, |v| v.len());
    if size > MAX_CONTENT_BYTES {
        return Err(ValidationError::new(
            "content",
            format!("must be at most {MAX_CONTENT_BYTES} bytes as JSON (is {size})"),
        ));
    }
    Ok(content)
}

/// The event's text, as [`crate::task::check_task_text`] treats a task's:
/// pasted documents keep newlines and tabs, other control characters could
/// hide text from whoever reads the memory later.
fn check_text(s: &str) -> Result<String, ValidationError> {
    let text = s.trim().replace("\r\n", "\n");
    if text.is_empty() {
        return Err(ValidationError::new("content.text", "must not be empty"));
    }
    if text.chars().count() > MAX_TEXT_CHARS {
        return Err(ValidationError::new(
            "content.text",
            format!("must be at most {MAX_TEXT_CHARS} characters"),
        ));
    }
    if text
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(ValidationError::new(
            "content.text",
            "must not contain control characters other than newline and tab",
        ));
    }
    Ok(text)
}

/// A one-line string: trimmed, 1 to `max` characters, no control characters.
fn line(field: &str, value: &str, max: usize) -> Result<String, ValidationError> {
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

impl ValidMemory {
    /// The event's text (always present and non-empty).
    pub fn text(&self) -> &str {
        self.content
            .get("text")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
    }

    /// The memory as the store will keep it, with its terms for filters
    /// computed by [`index_terms`]. Links start empty: compaction sets them.
    pub fn into_memory(self, id: Uuid, company_id: CompanyId, created_at: DateTime<Utc>) -> Memory {
        let indexed_terms = index_terms(&self);
        Memory {
            id,
            company_id,
            occurred_at: self.occurred_at,
            event_type: self.event_type,
            workstream: self.workstream,
            category: self.category,
            content: self.content,
            importance: self.importance,
            indexed_terms,
            source: self.source,
            created_at,
            archived_at: None,
            compacted_from: Vec::new(),
            supersedes: None,
        }
    }
}

/// A memory as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Memory {
    /// UUID v7, so ids sort by creation time.
    pub id: Uuid,
    pub company_id: CompanyId,
    pub occurred_at: DateTime<Utc>,
    pub event_type: EventType,
    pub workstream: Workstream,
    pub category: String,
    #[schema(value_type = Object)]
    pub content: serde_json::Value,
    pub importance: i16,
    /// Lower-cased, sorted terms filters match exactly (see [`index_terms`]).
    pub indexed_terms: Vec<String>,
    pub source: Option<String>,
    pub created_at: DateTime<Utc>,
    /// Archived memories are left out of search and context until restored.
    pub archived_at: Option<DateTime<Utc>>,
    /// For a summary made by compaction: the memories it replaces.
    pub compacted_from: Vec<Uuid>,
    /// A memory this one corrects or replaces.
    pub supersedes: Option<Uuid>,
}

impl Memory {
    pub fn is_archived(&self) -> bool {
        self.archived_at.is_some()
    }

    /// The event's text; empty only for a row that bypassed validation.
    pub fn text(&self) -> &str {
        self.content
            .get("text")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
    }
}

/// A memory's id: UUID v7 from `created_at` (plus random bits), so that ids
/// sort by creation and cursors over them follow insertion order. Taking
/// the time as an argument keeps the clock out of this crate.
pub fn new_memory_id(created_at: DateTime<Utc>) -> Uuid {
    let secs = u64::try_from(created_at.timestamp()).unwrap_or(0);
    let ts = uuid::Timestamp::from_unix(uuid::NoContext, secs, created_at.timestamp_subsec_nanos());
    Uuid::new_v7(ts)
}

/// The terms a memory's filters match on: its `indexed_terms` plus the
/// names in `content.people` and `content.counterparties`, lower-cased,
/// deduplicated and sorted. Exact-match filters only; ranking full text is
/// the database's job.
pub fn index_terms(m: &ValidMemory) -> Vec<String> {
    let listed = ["people", "counterparties"].into_iter().flat_map(|list| {
        m.content
            .get(list)
            .and_then(serde_json::Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(serde_json::Value::as_str)
    });
    let terms: BTreeSet<String> = m
        .indexed_terms
        .iter()
        .map(String::as_str)
        .chain(listed)
        .map(str::to_lowercase)
        .collect();
    terms.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use serde_json::json;

    use super::*;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 1, 12, 0, 0)
            .single()
            .expect("valid time")
    }

    fn body(extra: serde_json::Value) -> NewMemory {
        let mut b = json!({
            "occurred_at": "2026-10-30T09:00:00Z",
            "event_type": "decision",
            "content": {"text": "Board approved the Series A term sheet."}
        });
        for (k, v) in extra.as_object().expect("object").clone() {
            b[k] = v;
        }
        serde_json::from_value(b).expect("valid json")
    }

    #[test]
    fn names_and_serde_agree() {
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Ok(t));
            assert_eq!(
                serde_json::to_value(t).expect("serialize"),
                json!(t.as_str())
            );
            assert_eq!(t.as_str().parse::<EventType>(), Ok(t));
        }
        assert_eq!(EventType::TaskResult.as_str(), "task_result");
        for w in Workstream::ALL {
            assert_eq!(Workstream::parse(w.as_str()), Ok(w));
            assert_eq!(
                serde_json::to_value(w).expect("serialize"),
                json!(w.as_str())
            );
        }
        assert_eq!(
            EventType::parse("Decision").expect_err("case").field,
            "event_type"
        );
        let e = Workstream::parse("hr").expect_err("unknown");
        assert_eq!(e.field, "workstream");
        assert!(e.message.contains("legal, financial"), "{}", e.message);
    }

    #[test]
    fn content_no_database_can_store_is_named() {
        let e = body(json!({"content": {"text": "ok", "extra": {"note": "a\u{0}"}}}))
            .validate(now())
            .expect_err("NUL");
        assert_eq!(e.field, "content.extra.note");
        let e = body(json!({"content": {"text": "ok", "due": "-262143-01-01T00:00:00Z"}}))
            .validate(now())
            .expect_err("far date");
        assert_eq!(e.field, "content.due");
    }

    #[test]
    fn defaults_apply() {
        let m = body(json!({})).validate(now()).expect("valid");
        assert_eq!(m.workstream, Workstream::General);
        assert_eq!(m.category, "general");
        assert_eq!(m.importance, 5);
        assert!(m.indexed_terms.is_empty());
        assert_eq!(m.source, None);
        assert_eq!(m.text(), "Board approved the Series A term sheet.");
    }

    #[test]
    fn text_and_names_are_trimmed_and_other_content_kept() {
        let m = body(json!({
            "content": {
                "text": "  Met Dana.\r\nAgreed terms. ",
                "people": [" Dana Ruiz "],
                "counterparties": ["Globex"],
                "amounts": [{"usd": 2_000_000}],
                "mood": "good"
            },
            "indexed_terms": [" Series-A "],
            "source": " acme_legal_001 "
        }))
        .validate(now())
        .expect("valid");
        assert_eq!(m.text(), "Met Dana.\nAgreed terms.");
        assert_eq!(m.content["people"], json!(["Dana Ruiz"]));
        assert_eq!(m.content["amounts"], json!([{"usd": 2_000_000}]));
        assert_eq!(m.content["mood"], "good");
        assert_eq!(m.indexed_terms, ["Series-A"]);
        assert_eq!(m.source.as_deref(), Some("acme_legal_001"));
    }

    #[test]
    fn each_bad_field_is_named() {
        let long_json = "x".repeat(MAX_CONTENT_BYTES);
        let cases = [
            (
                "occurred_at",
                json!({"occurred_at": "2026-11-02T12:00:01Z"}),
            ),
            ("category", json!({"category": ""})),
            ("category", json!({"category": "Key Decisions"})),
            ("category", json!({"category": "x".repeat(65)})),
            ("importance", json!({"importance": 0})),
            ("importance", json!({"importance": 11})),
            ("content", json!({"content": "just text"})),
            (
                "content",
                json!({"content": {"text": "a", "blob": long_json}}),
            ),
            ("content.text", json!({"content": {}})),
            ("content.text", json!({"content": {"text": " \n "}})),
            ("content.text", json!({"content": {"text": 42}})),
            (
                "content.text",
                json!({"content": {"text": "x".repeat(MAX_TEXT_CHARS + 1)}}),
            ),
            ("content.text", json!({"content": {"text": "bell\u{7}"}})),
            (
                "content.people",
                json!({"content": {"text": "a", "people": "Dana"}}),
            ),
            (
                "content.people.1",
                json!({"content": {"text": "a", "people": ["Dana", ""]}}),
            ),
            (
                "content.counterparties.0",
                json!({"content": {"text": "a", "counterparties": [7]}}),
            ),
            (
                "indexed_terms",
                json!({"indexed_terms": vec!["t"; MAX_INDEXED_TERMS + 1]}),
            ),
            ("indexed_terms.1", json!({"indexed_terms": ["ok", " "]})),
            (
                "indexed_terms.0",
                json!({"indexed_terms": ["x".repeat(MAX_TERM_CHARS + 1)]}),
            ),
            (
                "source",
                json!({"source": "x".repeat(MAX_SOURCE_CHARS + 1)}),
            ),
            ("source", json!({"source": ""})),
        ];
        for (field, extra) in cases {
            let e = body(extra.clone()).validate(now()).expect_err(field);
            assert_eq!(e.field, field, "{extra}: {e}");
        }
    }

    #[test]
    fn limits_are_inclusive() {
        let ok = [
            json!({"occurred_at": "2026-11-02T12:00:00Z"}),
            json!({"occurred_at": "1999-01-01T00:00:00Z"}),
            json!({"importance": 1}),
            json!({"importance": 10}),
            json!({"category": "x".repeat(64)}),
            json!({"content": {"text": "é".repeat(MAX_TEXT_CHARS)}}),
            json!({"indexed_terms": vec!["t"; MAX_INDEXED_TERMS]}),
            json!({"indexed_terms": ["x".repeat(MAX_TERM_CHARS)]}),
            json!({"source": "x".repeat(MAX_SOURCE_CHARS)}),
        ];
        for extra in ok {
            if let Err(e) = body(extra.clone()).validate(now()) {
                panic!("{extra}: {e}");
            }
        }
    }

    #[test]
    fn unknown_fields_and_values_are_rejected() {
        let r: Result<NewMemory, _> = serde_json::from_value(json!({
            "occurred_at": "2026-10-30T09:00:00Z", "event_type": "note",
            "content": {"text": "a"}, "importance_score": 5
        }));
        assert!(
            r.expect_err("unknown")
                .to_string()
                .contains("importance_score")
        );
        let r: Result<NewMemory, _> = serde_json::from_value(json!({
            "occurred_at": "2026-10-30T09:00:00Z", "event_type": "gossip",
            "content": {"text": "a"}
        }));
        assert!(r.is_err());
    }

    #[test]
    fn terms_merge_people_and_counterparties() {
        let m = body(json!({
            "content": {
                "text": "a",
                "people": ["Dana Ruiz", "Lee"],
                "counterparties": ["Globex Corp", "dana ruiz"]
            },
            "indexed_terms": ["Series_A", "lee", "globex corp"]
        }))
        .validate(now())
        .expect("valid");
        assert_eq!(
            index_terms(&m),
            ["dana ruiz", "globex corp", "lee", "series_a"]
        );
        let plain = body(json!({})).validate(now()).expect("valid");
        assert!(index_terms(&plain).is_empty());
    }

    #[test]
    fn stored_form() {
        let company = CompanyId::parse("acme").expect("valid");
        let v = body(json!({"content": {"text": "a", "people": ["Dana"]}}))
            .validate(now())
            .expect("valid");
        let id = new_memory_id(now());
        assert_eq!(id.get_version_num(), 7);
        let m = v.into_memory(id, company.clone(), now());
        assert_eq!(m.indexed_terms, ["dana"]);
        assert_eq!(m.text(), "a");
        assert!(!m.is_archived());
        assert!(m.compacted_from.is_empty() && m.supersedes.is_none());
        let json = serde_json::to_value(&m).expect("serialize");
        let back: Memory = serde_json::from_value(json).expect("deserialize");
        assert_eq!(back, m);
        // v7 ids sort by their time.
        let later = new_memory_id(now() + TimeDelta::milliseconds(1));
        assert!(id < later);
    }
}
