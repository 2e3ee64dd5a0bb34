//! Workstream compaction strategies (SEED 3.3): for each workstream, which
//! categories are preserved, summarised or discarded, and what a compaction
//! run does to one memory. The run itself (archiving, writing summaries,
//! purging) is the engine's.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Memory, Workstream, check_category};
use crate::ValidationError;

/// The workstream whose strategy applies to workstreams without their own.
pub const FALLBACK_WORKSTREAM: Workstream = Workstream::Operational;

/// What to do with each category of one workstream's memories. A category
/// in none of the lists is left alone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompactionStrategy {
    #[serde(default)]
    pub preserve: Vec<String>,
    #[serde(default)]
    pub summarize: Vec<String>,
    #[serde(default)]
    pub discard: Vec<String>,
}

impl CompactionStrategy {
    fn of(preserve: &[&str], summarize: &[&str], discard: &[&str]) -> Self {
        let own = |l: &[&str]| l.iter().map(|s| (*s).to_owned()).collect();
        Self {
            preserve: own(preserve),
            summarize: own(summarize),
            discard: own(discard),
        }
    }
}

/// Strategies by workstream name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompactionConfig {
    pub strategies: BTreeMap<String, CompactionStrategy>,
}

impl Default for CompactionConfig {
    /// SEED 3.3's `COMPACTION_STRATEGIES`, exactly.
    fn default() -> Self {
        let strategies = [
            (
                "legal",
                CompactionStrategy::of(
                    &["key_decisions", "precedents", "deadlines"],
                    &["routine_reviews", "minor_updates"],
                    &["draft_iterations", "informal_notes"],
                ),
            ),
            (
                "financial",
                CompactionStrategy::of(
                    &["board_presentations", "metrics", "forecasts"],
                    &["monthly_reviews", "expense_reports"],
                    &["calculation_steps", "data_pulls"],
                ),
            ),
            (
                "operational",
                CompactionStrategy::of(
                    &["strategic_decisions", "process_changes"],
                    &["status_meetings", "progress_reports"],
                    &["routine_tasks", "system_logs"],
                ),
            ),
        ]
        .into_iter()
        .map(|(w, s)| (w.to_owned(), s))
        .collect();
        Self { strategies }
    }
}

impl CompactionConfig {
    pub fn validate(&self) -> Result<(), ValidationError> {
        if !self.strategies.contains_key(FALLBACK_WORKSTREAM.as_str()) {
            return Err(ValidationError::new(
                "compaction.strategies",
                "must have an operational strategy: workstreams without one use it",
            ));
        }
        for (workstream, s) in &self.strategies {
            let at = format!("compaction.strategies.{workstream}");
            // A typo in a workstream name would silently fall back to
            // operational's strategy, perhaps discarding what was meant to
            // be preserved.
            Workstream::parse(workstream).map_err(|e| ValidationError::new(&at, e.message))?;
            let mut seen = BTreeSet::new();
            for (list, cats) in [
                ("preserve", &s.preserve),
                ("summarize", &s.summarize),
                ("discard", &s.discard),
            ] {
                for (i, c) in cats.iter().enumerate() {
                    let field = format!("{at}.{list}.{i}");
                    check_category(c).map_err(|e| ValidationError::new(&field, e.message))?;
                    // In two lists the category's fate would hang on which
                    // list is read first.
                    if !seen.insert(c.as_str()) {
                        return Err(ValidationError::new(
                            field,
                            format!("'{c}' is in more than one list"),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// The strategy for `workstream`: its own, else operational's.
    pub fn strategy(&self, workstream: Workstream) -> Option<&CompactionStrategy> {
        self.strategies
            .get(workstream.as_str())
            .or_else(|| self.strategies.get(FALLBACK_WORKSTREAM.as_str()))
    }
}

/// What compaction does with a memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// A preserve category: never changed, whatever its age.
    Preserve,
    /// Grouped by [`summary_group`] into one summary event; the sources are
    /// archived.
    Summarize,
    /// Archived (restorable during the retention period, then purged).
    Discard,
    /// Left alone: no list names the category (or, from [`due_action`],
    /// it is not due this run).
    Keep,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Preserve => "preserve",
            Action::Summarize => "summarize",
            Action::Discard => "discard",
            Action::Keep => "keep",
        }
    }
}

/// The strategy's verdict on a category, regardless of age. A category in
/// several lists (which [`CompactionConfig::validate`] refuses) gets the
/// safest: preserve, then summarize, then discard.
pub fn action(cfg: &CompactionConfig, workstream: Workstream, category: &str) -> Action {
    let Some(s) = cfg.strategy(workstream) else {
        return Action::Keep;
    };
    let has = |l: &[String]| l.iter().any(|c| c == category);
    if has(&s.preserve) {
        Action::Preserve
    } else if has(&s.summarize) {
        Action::Summarize
    } else if has(&s.discard) {
        Action::Discard
    } else {
        Action::Keep
    }
}

/// What a compaction run at `now` does to `m`. Only memories older than
/// `hot_window` are summarised or discarded: the hot layer is what agents
/// work from. Archived memories are already out of the way, and summaries
/// (with `compacted_from`) are kept, so that a second run changes nothing.
pub fn due_action(
    cfg: &CompactionConfig,
    m: &Memory,
    now: DateTime<Utc>,
    hot_window: TimeDelta,
) -> Action {
    let a = action(cfg, m.workstream, &m.category);
    let settled = m.is_archived() || !m.compacted_from.is_empty();
    match a {
        Action::Summarize | Action::Discard if settled || now - m.occurred_at <= hot_window => {
            Action::Keep
        }
        a => a,
    }
}

/// The group a summarised memory joins: its workstream, category and the
/// UTC month it happened in (`YYYY-MM`). One summary replaces each group.
pub fn summary_group(m: &Memory) -> (Workstream, String, String) {
    (
        m.workstream,
        m.category.clone(),
        m.occurred_at.format("%Y-%m").to_string(),
    )
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use serde_json::json;

    use super::*;
    use crate::CompanyId;
    use crate::memory::{EventType, NewMemory};

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 1, 12, 0, 0)
            .single()
            .expect("valid time")
    }

    /// SEED 3.3's table, written out independently of `Default`.
    const SEED: [(&str, &str, Action); 21] = [
        ("legal", "key_decisions", Action::Preserve),
        ("legal", "precedents", Action::Preserve),
        ("legal", "deadlines", Action::Preserve),
        ("legal", "routine_reviews", Action::Summarize),
        ("legal", "minor_updates", Action::Summarize),
        ("legal", "draft_iterations", Action::Discard),
        ("legal", "informal_notes", Action::Discard),
        ("financial", "board_presentations", Action::Preserve),
        ("financial", "metrics", Action::Preserve),
        ("financial", "forecasts", Action::Preserve),
        ("financial", "monthly_reviews", Action::Summarize),
        ("financial", "expense_reports", Action::Summarize),
        ("financial", "calculation_steps", Action::Discard),
        ("financial", "data_pulls", Action::Discard),
        ("operational", "strategic_decisions", Action::Preserve),
        ("operational", "process_changes", Action::Preserve),
        ("operational", "status_meetings", Action::Summarize),
        ("operational", "progress_reports", Action::Summarize),
        ("operational", "routine_tasks", Action::Discard),
        ("operational", "system_logs", Action::Discard),
        ("operational", "general", Action::Keep),
    ];

    #[test]
    fn default_is_seeds_table() {
        let cfg = CompactionConfig::default();
        assert_eq!(cfg.validate(), Ok(()));
        assert_eq!(
            cfg.strategies.keys().collect::<Vec<_>>(),
            ["financial", "legal", "operational"]
        );
        let listed: usize = cfg
            .strategies
            .values()
            .map(|s| s.preserve.len() + s.summarize.len() + s.discard.len())
            .sum();
        assert_eq!(listed, SEED.len() - 1, "no category beyond SEED's");
        for (w, c, expected) in SEED {
            let w = Workstream::parse(w).expect("workstream");
            assert_eq!(action(&cfg, w, c), expected, "{w} {c}");
        }
    }

    #[test]
    fn unknown_workstreams_use_operational_and_unlisted_categories_are_kept() {
        let cfg = CompactionConfig::default();
        for w in [
            Workstream::Technical,
            Workstream::Content,
            Workstream::Research,
            Workstream::General,
        ] {
            assert_eq!(action(&cfg, w, "system_logs"), Action::Discard, "{w}");
            assert_eq!(action(&cfg, w, "status_meetings"), Action::Summarize);
            assert_eq!(action(&cfg, w, "process_changes"), Action::Preserve);
            assert_eq!(action(&cfg, w, "key_decisions"), Action::Keep, "legal's");
        }
        // Own strategies do not inherit operational's lists.
        assert_eq!(action(&cfg, Workstream::Legal, "system_logs"), Action::Keep);
        let empty = CompactionConfig {
            strategies: BTreeMap::new(),
        };
        assert_eq!(action(&empty, Workstream::Legal, "x"), Action::Keep);
    }

    #[test]
    fn config_is_checked() {
        let mut no_fallback = CompactionConfig::default();
        no_fallback.strategies.remove("operational");
        let mut typo = CompactionConfig::default();
        typo.strategies
            .insert("finance".into(), CompactionStrategy::default());
        let mut bad_cat = CompactionConfig::default();
        bad_cat
            .strategies
            .get_mut("legal")
            .expect("legal")
            .discard
            .push("Drafts".into());
        let mut twice = CompactionConfig::default();
        twice
            .strategies
            .get_mut("legal")
            .expect("legal")
            .discard
            .push("precedents".into());
        for (cfg, field) in [
            (no_fallback, "compaction.strategies"),
            (typo, "compaction.strategies.finance"),
            (bad_cat, "compaction.strategies.legal.discard.2"),
            (twice, "compaction.strategies.legal.discard.2"),
        ] {
            assert_eq!(cfg.validate().expect_err(field).field, field);
        }
        // Deserialises from configuration, refusing unknown keys.
        let cfg: CompactionConfig = serde_json::from_value(json!({
            "strategies": {"operational": {"discard": ["system_logs"]}}
        }))
        .expect("valid");
        assert_eq!(cfg.validate(), Ok(()));
        assert_eq!(
            action(&cfg, Workstream::Research, "system_logs"),
            Action::Discard
        );
        let r: Result<CompactionStrategy, _> = serde_json::from_value(json!({"summarise": ["x"]}));
        assert!(r.is_err());
    }

    fn memory(workstream: &str, category: &str, occurred_at: &str) -> Memory {
        let new: NewMemory = serde_json::from_value(json!({
            "occurred_at": occurred_at,
            "event_type": EventType::Note,
            "workstream": workstream,
            "category": category,
            "content": {"text": "x"},
        }))
        .expect("valid json");
        new.validate(now()).expect("valid").into_memory(
            uuid::Uuid::nil(),
            CompanyId::parse("acme").expect("valid"),
            now(),
        )
    }

    #[test]
    fn due_actions() {
        let cfg = CompactionConfig::default();
        let week = TimeDelta::days(7);
        let due = |m: &Memory| due_action(&cfg, m, now(), week);
        let old = "2026-09-01T00:00:00Z";
        let exactly_a_week = "2026-10-25T12:00:00Z";
        assert_eq!(due(&memory("legal", "precedents", old)), Action::Preserve);
        assert_eq!(
            due(&memory("legal", "precedents", "2026-11-01T00:00:00Z")),
            Action::Preserve
        );
        assert_eq!(
            due(&memory("legal", "draft_iterations", old)),
            Action::Discard
        );
        assert_eq!(
            due(&memory("legal", "draft_iterations", exactly_a_week)),
            Action::Keep,
            "still hot"
        );
        assert_eq!(
            due(&memory("legal", "draft_iterations", "2026-10-25T11:59:59Z")),
            Action::Discard
        );
        assert_eq!(
            due(&memory("legal", "minor_updates", old)),
            Action::Summarize
        );
        assert_eq!(due(&memory("legal", "general", old)), Action::Keep);
        let mut archived = memory("legal", "draft_iterations", old);
        archived.archived_at = Some(now());
        assert_eq!(due(&archived), Action::Keep);
        let mut summary = memory("legal", "minor_updates", old);
        summary.compacted_from = vec![uuid::Uuid::nil()];
        assert_eq!(
            due(&summary),
            Action::Keep,
            "summaries are not re-summarised"
        );
    }

    #[test]
    fn groups_by_workstream_category_and_utc_month() {
        let a = memory("legal", "minor_updates", "2026-09-30T23:59:59Z");
        let b = memory("legal", "minor_updates", "2026-09-01T00:00:00Z");
        let c = memory("legal", "minor_updates", "2026-10-01T00:00:00Z");
        let d = memory("financial", "minor_updates", "2026-09-15T00:00:00Z");
        assert_eq!(
            summary_group(&a),
            (Workstream::Legal, "minor_updates".into(), "2026-09".into())
        );
        assert_eq!(summary_group(&a), summary_group(&b));
        assert_ne!(summary_group(&a), summary_group(&c));
        assert_ne!(summary_group(&a), summary_group(&d));
        // A time given with an offset still groups by its UTC month.
        let e = memory("legal", "minor_updates", "2026-10-01T01:00:00+02:00");
        assert_eq!(summary_group(&e).2, "2026-09");
    }
}
