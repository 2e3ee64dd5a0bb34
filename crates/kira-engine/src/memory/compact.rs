//! Compaction (SEED 3.3) of one company's memory. Preserve categories are
//! never touched; discard categories older than the hot window are archived
//! (restorable until the retention period ends, then purged); summarise
//! categories older than the hot window are grouped by (workstream,
//! category, month) and each group of two or more is replaced by one
//! summary that links to its sources, which are archived.
//!
//! Each group is its own transaction, so a run that stops half way leaves a
//! consistent memory and the next run finishes the rest; a second run
//! finds nothing to do (summaries are kept, sources are archived).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use kira_core::audit::{AuditRecord, Outcome};
use kira_core::auth::CompanyScope;
use kira_core::memory::retention::{self, FactCheck};
use kira_core::memory::{Action, Memory, Workstream, due_action, new_memory_id, summary_group};
use kira_store::StoreError;
use kira_store::memory::{Archived, MemoryCursor, MemoryFilter};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::Memories;
use super::pack::count_tokens;
use crate::EngineError;

/// Pages read while planning.
const PAGE: u32 = 1_000;

#[derive(Debug, Clone, Default, PartialEq, Serialize, ToSchema)]
pub struct CompactionReport {
    pub company_id: String,
    pub dry_run: bool,
    /// Live memories looked at.
    pub examined: usize,
    /// Memories in preserve categories (never changed).
    pub preserved: usize,
    /// Discard-category memories archived.
    pub discarded: usize,
    pub groups: Vec<GroupReport>,
    /// Archived memories past retention, hard-deleted.
    pub purged: u64,
    /// Tokens (cl100k) of the live memories' texts before and after.
    pub tokens_before: usize,
    pub tokens_after: usize,
    /// What the summaries kept of their sources' facts, all groups
    /// together (the context-retention KPI); share None with no fact.
    pub facts: FactCheck,
    pub retention: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct GroupReport {
    pub workstream: Workstream,
    pub category: String,
    pub month: String,
    pub sources: usize,
    /// What the summary kept of the sources' facts.
    pub facts: FactCheck,
    /// The summary written (None on a dry run, or when another run had
    /// already compacted the group).
    pub summary_id: Option<Uuid>,
}

fn record(scope: &CompanyScope, at: DateTime<Utc>, action: &str, target: String) -> AuditRecord {
    AuditRecord {
        at,
        request_id: format!("compaction-{}", at.timestamp_millis()),
        actor: "system".into(),
        company_id: Some(scope.company().clone()),
        action: action.into(),
        target,
        outcome: Outcome::Ok,
        detail: String::new(),
    }
}

impl Memories {
    /// Compacts the scope's company's memory now; with `dry_run`, reports
    /// what it would do and writes nothing.
    pub async fn compact(
        &self,
        scope: &CompanyScope,
        dry_run: bool,
    ) -> Result<CompactionReport, EngineError> {
        let now = self.ctx.clock.now();
        let mut report = CompactionReport {
            company_id: scope.company().to_string(),
            dry_run,
            ..CompactionReport::default()
        };
        let (discard, groups) = self.plan_compaction(scope, now, &mut report).await?;
        report.discarded = discard.len();
        if !dry_run && !discard.is_empty() {
            self.archive_discarded(scope, &discard, now).await?;
        }
        for (key, members) in groups {
            if members.len() < 2 {
                // One memory is its own summary.
                report.tokens_after += members
                    .iter()
                    .map(|m| count_tokens(m.text()))
                    .sum::<usize>();
                continue;
            }
            let g = self
                .summarize_group(scope, key, members, dry_run, now, &mut report)
                .await?;
            report.facts.add(g.facts);
            report.groups.push(g);
        }
        report.retention = report.facts.share();
        if let Some(before) = now.checked_sub_signed(self.ctx.config.memory.retention) {
            report.purged = self.purge_archived(scope, before, dry_run, now).await?;
        }
        Ok(report)
    }

    /// Reads every live memory and sorts it by what is due: counted if
    /// preserved or kept, listed to discard, or put in its summary group.
    async fn plan_compaction(
        &self,
        scope: &CompanyScope,
        now: DateTime<Utc>,
        report: &mut CompactionReport,
    ) -> Result<(Vec<Uuid>, SummaryGroups), EngineError> {
        let cfg = &self.ctx.config.memory;
        let hot = cfg.layers.hot_window();
        let mut discard: Vec<Uuid> = Vec::new();
        let mut groups = SummaryGroups::new();
        let mut after: Option<MemoryCursor> = None;
        loop {
            let page = self
                .ctx
                .store
                .list_memories(scope, &MemoryFilter::default(), after, PAGE)
                .await?;
            let Some(last) = page.last() else { break };
            after = Some(MemoryCursor::of(last));
            let full = page.len() == PAGE as usize;
            for m in page {
                report.examined += 1;
                let tokens = count_tokens(m.text());
                report.tokens_before += tokens;
                match due_action(&cfg.compaction, &m, now, hot) {
                    Action::Preserve => {
                        report.preserved += 1;
                        report.tokens_after += tokens;
                    }
                    Action::Discard => discard.push(m.id),
                    Action::Summarize => groups.entry(summary_group(&m)).or_default().push(m),
                    Action::Keep => report.tokens_after += tokens,
                }
            }
            if !full {
                break;
            }
        }
        Ok((discard, groups))
    }

    /// Archives the discarded memories, a batch per transaction.
    async fn archive_discarded(
        &self,
        scope: &CompanyScope,
        discard: &[Uuid],
        now: DateTime<Utc>,
    ) -> Result<(), EngineError> {
        for chunk in discard.chunks(kira_store::memory::MAX_BATCH) {
            self.ctx
                .store
                .set_archived(
                    scope,
                    chunk,
                    Some(now),
                    record(
                        scope,
                        now,
                        "memory.compact.discard",
                        format!("{} memories", chunk.len()),
                    ),
                )
                .await?;
        }
        Ok(())
    }

    /// Summarises one group of two or more memories and, unless `dry_run`,
    /// replaces them with the summary in one transaction.
    async fn summarize_group(
        &self,
        scope: &CompanyScope,
        (workstream, category, month): (Workstream, String, String),
        mut members: Vec<Memory>,
        dry_run: bool,
        now: DateTime<Utc>,
        report: &mut CompactionReport,
    ) -> Result<GroupReport, EngineError> {
        members.sort_by_key(|m| (m.occurred_at, m.id));
        let text = self
            .summarizer()
            .summarize(&members)
            .await
            .map_err(EngineError::Summarize)?;
        report.tokens_after += count_tokens(&text);
        let facts = retention::check(members.iter().map(Memory::text), &text);
        let summary = summary_of(scope, &members, text, workstream, &category, &month, now);
        let mut g = GroupReport {
            workstream,
            category: category.clone(),
            month: month.clone(),
            sources: members.len(),
            facts,
            summary_id: None,
        };
        if dry_run {
            return Ok(g);
        }
        let audit = record(
            scope,
            now,
            "memory.compact.summarize",
            format!(
                "{workstream}/{category}/{month}: {} memories",
                members.len()
            ),
        );
        match self
            .ctx
            .store
            .replace_with_summary(scope, &summary, facts, now, audit)
            .await
        {
            Ok(()) => g.summary_id = Some(summary.id),
            // Another run compacted (part of) this group first.
            Err(StoreError::Conflict(_)) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(g)
    }

    /// Purges the memories archived before `before`; with `dry_run`, only
    /// counts them.
    async fn purge_archived(
        &self,
        scope: &CompanyScope,
        before: DateTime<Utc>,
        dry_run: bool,
        now: DateTime<Utc>,
    ) -> Result<u64, EngineError> {
        if !dry_run {
            return Ok(self
                .ctx
                .store
                .purge_archived(
                    scope,
                    before,
                    record(
                        scope,
                        now,
                        "memory.compact.purge",
                        format!("archived before {before}"),
                    ),
                )
                .await?);
        }
        let f = MemoryFilter {
            archived: Archived::Only,
            ..MemoryFilter::default()
        };
        let mut purged = 0;
        let mut after = None;
        loop {
            let page = self.ctx.store.list_memories(scope, &f, after, PAGE).await?;
            let Some(last) = page.last() else { break };
            after = Some(MemoryCursor::of(last));
            purged += page
                .iter()
                .filter(|m| m.archived_at.is_some_and(|a| a < before))
                .count() as u64;
            if page.len() < PAGE as usize {
                break;
            }
        }
        Ok(purged)
    }
}

/// Memories to summarise by (workstream, category, month).
type SummaryGroups = BTreeMap<(Workstream, String, String), Vec<Memory>>;

/// The summary event replacing `members` (oldest first): their workstream
/// and category, dated at the last of them, as important as the most
/// important, carrying the union of their people and counterparties.
fn summary_of(
    scope: &CompanyScope,
    members: &[Memory],
    text: String,
    workstream: Workstream,
    category: &str,
    month: &str,
    now: DateTime<Utc>,
) -> Memory {
    let mut names: BTreeMap<&str, std::collections::BTreeSet<String>> = BTreeMap::new();
    for key in ["people", "counterparties"] {
        let set = names.entry(key).or_default();
        for m in members {
            if let Some(list) = m.content.get(key).and_then(serde_json::Value::as_array) {
                set.extend(list.iter().filter_map(|v| v.as_str().map(str::to_owned)));
            }
        }
    }
    let mut content = serde_json::json!({
        "text": text,
        "summary_of": members.len(),
        "period": month,
    });
    if let Some(obj) = content.as_object_mut() {
        for (k, set) in names {
            if !set.is_empty() {
                obj.insert(k.to_owned(), serde_json::json!(set));
            }
        }
    }
    let last = members.last().map(|m| m.occurred_at).unwrap_or(now);
    let mut terms: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    for m in members {
        terms.extend(m.indexed_terms.iter().cloned());
    }
    // The most common event type among the sources.
    let mut counts: BTreeMap<_, usize> = BTreeMap::new();
    for m in members {
        *counts.entry(m.event_type).or_default() += 1;
    }
    let event_type = counts
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .map(|(t, _)| t)
        .unwrap_or(kira_core::memory::EventType::Note);
    Memory {
        id: new_memory_id(now),
        company_id: scope.company().clone(),
        occurred_at: last,
        event_type,
        workstream,
        category: category.to_owned(),
        content,
        importance: members.iter().map(|m| m.importance).max().unwrap_or(5),
        indexed_terms: terms
            .into_iter()
            .take(kira_core::memory::MAX_INDEXED_TERMS)
            .collect(),
        source: Some("compaction".into()),
        created_at: now,
        archived_at: None,
        compacted_from: members.iter().map(|m| m.id).collect(),
        supersedes: None,
    }
}
