//! Retrieval benchmarks on public long-term memory data (read from
//! `../shared/bench` at run time, never copied in):
//!
//! - LoCoMo: each conversation is one company's memory (each turn one
//!   event, dated by its session); each question is the task text of a
//!   context pack; the score is the fraction of the question's evidence
//!   turns that made it into the pack (LoCoMo's own recall), per category,
//!   at each token budget.
//! - LongMemEval: each question's haystack is one company's memory (user
//!   turns, as the official retrieval protocol indexes); sessions rank by
//!   their best search hit; recall_all@k says whether every answer session
//!   is in the top k.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use chrono::{DateTime, NaiveDateTime, TimeDelta, Utc};
use kira_core::CompanyId;
use kira_core::audit::{AuditRecord, Outcome};
use kira_core::auth::{Access, CompanyScope, Principal};
use kira_core::company::NewCompany;
use kira_core::memory::{EventType, NewMemory, Workstream};
use kira_store::memory::MemoryFilter;
use serde::{Deserialize, Serialize};

use crate::memory::ContextRequest;
use crate::{Engine, EngineError};

/// LoCoMo's question categories, by number.
pub const CATEGORIES: [(u8, &str); 5] = [
    (1, "multi-hop"),
    (2, "temporal"),
    (3, "open-domain"),
    (4, "single-hop"),
    (5, "adversarial"),
];

#[derive(Debug, Clone)]
pub struct Turn {
    pub dia_id: String,
    pub at: DateTime<Utc>,
    pub text: String,
}

#[derive(Debug, Clone)]
pub struct Question {
    pub question: String,
    pub category: u8,
    pub evidence: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Conversation {
    pub id: String,
    pub turns: Vec<Turn>,
    pub questions: Vec<Question>,
}

/// "1:56 pm on 8 May, 2023".
fn session_time(s: &str) -> Option<DateTime<Utc>> {
    NaiveDateTime::parse_from_str(s.trim(), "%I:%M %p on %d %B, %Y")
        .ok()
        .map(|n| n.and_utc())
}

/// Every `D:?(\d+):(\d+)` in an evidence string, normalised to `D<n>:<m>`.
pub fn evidence_ids(s: &str) -> Vec<String> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'D' {
            let mut j = i + 1;
            if j < b.len() && b[j] == b':' {
                j += 1;
            }
            let start = j;
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            if j > start && j < b.len() && b[j] == b':' {
                let sess = &s[start..j];
                let k0 = j + 1;
                let mut k = k0;
                while k < b.len() && b[k].is_ascii_digit() {
                    k += 1;
                }
                if k > k0 {
                    let (Ok(a), Ok(t)) = (sess.parse::<u32>(), s[k0..k].parse::<u32>()) else {
                        i += 1;
                        continue;
                    };
                    out.push(format!("D{a}:{t}"));
                    i = k;
                    continue;
                }
            }
        }
        i += 1;
    }
    out
}

/// Reads `locomo10.json`.
pub fn load_locomo(path: &Path) -> Result<Vec<Conversation>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let raw: Vec<serde_json::Value> = serde_json::from_str(&text)
        .map_err(|e| format!("{} is not LoCoMo JSON: {e}", path.display()))?;
    let mut out = Vec::new();
    for (ci, c) in raw.iter().enumerate() {
        let conv = &c["conversation"];
        let mut turns = Vec::new();
        for n in 1..=100 {
            let Some(session) = conv.get(format!("session_{n}")).and_then(|v| v.as_array()) else {
                continue;
            };
            let Some(at) = conv
                .get(format!("session_{n}_date_time"))
                .and_then(|v| v.as_str())
                .and_then(session_time)
            else {
                continue;
            };
            for (ti, t) in session.iter().enumerate() {
                let (Some(speaker), Some(dia), Some(body)) = (
                    t["speaker"].as_str(),
                    t["dia_id"].as_str(),
                    t["text"].as_str(),
                ) else {
                    continue;
                };
                let mut text = format!("{speaker}: {body}");
                if let Some(cap) = t.get("blip_caption").and_then(|v| v.as_str()) {
                    text.push_str(&format!(" [shares a photo: {cap}]"));
                }
                let Some(id) = evidence_ids(dia).into_iter().next() else {
                    continue;
                };
                turns.push(Turn {
                    dia_id: id,
                    // Turns keep their order within the session.
                    at: at + TimeDelta::seconds(ti as i64),
                    text,
                });
            }
        }
        let mut questions = Vec::new();
        for q in c["qa"].as_array().into_iter().flatten() {
            let evidence: Vec<String> = q["evidence"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e.as_str())
                .flat_map(evidence_ids)
                .collect();
            let (Some(question), Some(category)) = (q["question"].as_str(), q["category"].as_u64())
            else {
                continue;
            };
            if evidence.is_empty() {
                continue;
            }
            questions.push(Question {
                question: question.to_owned(),
                category: u8::try_from(category).unwrap_or(0),
                evidence,
            });
        }
        out.push(Conversation {
            id: format!("locomo-{ci}"),
            turns,
            questions,
        });
    }
    Ok(out)
}

fn record(company: &CompanyId, action: &str) -> AuditRecord {
    AuditRecord {
        at: DateTime::<Utc>::UNIX_EPOCH,
        request_id: "bench".into(),
        actor: "system".into(),
        company_id: Some(company.clone()),
        action: action.into(),
        target: "bench".into(),
        outcome: Outcome::Ok,
        detail: String::new(),
    }
}

fn scope(id: &CompanyId) -> CompanyScope {
    // The system principal is an admin: a scope is always granted.
    match Principal::system().scope(id, Access::Write) {
        Ok(s) => s,
        Err(_) => unreachable!("the system principal may act for every company"),
    }
}

/// How a benchmark's turns are filed: `general`/`conversation` notes, or
/// (to measure compaction) `operational`/`status_meetings`, a category the
/// default strategy summarises.
pub const AS_CONVERSATION: (Workstream, &str) = (Workstream::General, "conversation");
pub const AS_STATUS_MEETINGS: (Workstream, &str) = (Workstream::Operational, "status_meetings");

/// Creates the company and loads `items` (text, time, source) as its memory,
/// filed as `kind` (workstream, category), 1,000 per transaction. Returns
/// the company id.
pub async fn load_company(
    engine: &Engine,
    name: &str,
    items: &[(String, DateTime<Utc>, String)],
    kind: (Workstream, &str),
) -> Result<CompanyId, EngineError> {
    let (id, profile) = serde_json::from_value::<NewCompany>(serde_json::json!({
        "id": name, "name": name, "industry": "research", "jurisdiction": "US"
    }))
    .map_err(|e| kira_core::ValidationError::new("company", e.to_string()))?
    .validate()?;
    let sc = scope(&id);
    engine
        .store()
        .create_company(
            &sc,
            &profile,
            engine.clock().now(),
            record(&id, "bench.company"),
        )
        .await?;
    for chunk in items.chunks(kira_store::memory::MAX_BATCH) {
        let batch: Vec<NewMemory> = chunk
            .iter()
            .map(|(text, at, source)| NewMemory {
                occurred_at: *at,
                event_type: EventType::Note,
                workstream: kind.0,
                category: kind.1.into(),
                content: serde_json::json!({ "text": text }),
                importance: 5,
                indexed_terms: vec![],
                source: Some(source.clone()),
            })
            .collect();
        engine
            .add_memories(&sc, batch, true, record(&id, "bench.memory"))
            .await?;
    }
    Ok(id)
}

/// Compacts each company's memory now (what the daily job does); returns
/// the summaries written and the memories they replaced.
pub async fn compact_all(
    engine: &Engine,
    companies: &[CompanyId],
) -> Result<(usize, usize), EngineError> {
    let (mut summaries, mut sources) = (0, 0);
    for c in companies {
        let r = engine.compact_memory(&scope(c), false).await?;
        for g in r.groups.iter().filter(|g| g.summary_id.is_some()) {
            summaries += 1;
            sources += g.sources;
        }
    }
    Ok((summaries, sources))
}

/// Embeds every queued memory; returns how many.
pub async fn embed_all(engine: &Engine) -> Result<usize, EngineError> {
    let mut total = 0;
    loop {
        let n = engine.embed_pass().await?;
        if n == 0 {
            return Ok(total);
        }
        total += n;
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Recall {
    /// (sum of per-question recall, questions) per category number.
    pub by_category: BTreeMap<u8, (f64, usize)>,
}

impl Recall {
    fn add(&mut self, category: u8, r: f64) {
        let e = self.by_category.entry(category).or_default();
        e.0 += r;
        e.1 += 1;
    }

    /// Mean recall in % for one category.
    pub fn category(&self, c: u8) -> Option<f64> {
        self.by_category
            .get(&c)
            .filter(|(_, n)| *n > 0)
            .map(|(s, n)| 100.0 * s / *n as f64)
    }

    /// Mean recall in % over every question but the adversarial ones.
    pub fn all_but_adversarial(&self) -> f64 {
        let (s, n) = self
            .by_category
            .iter()
            .filter(|(c, _)| **c != 5)
            .fold((0.0, 0usize), |(s, n), (_, (a, b))| (s + a, n + b));
        if n == 0 { 0.0 } else { 100.0 * s / n as f64 }
    }
}

/// LoCoMo recall of context packs at each budget; also returns the pack
/// latencies in microseconds.
pub async fn score_locomo(
    engine: &Engine,
    convs: &[Conversation],
    companies: &[CompanyId],
    budgets: &[usize],
) -> Result<(BTreeMap<usize, Recall>, Vec<u64>), EngineError> {
    let mut out: BTreeMap<usize, Recall> = BTreeMap::new();
    let mut micros = Vec::new();
    for (conv, company) in convs.iter().zip(companies) {
        let sc = scope(company);
        // Memory id -> dia id, from the sources the load stored.
        let mut source_of: HashMap<String, String> = HashMap::new();
        let mut after = None;
        loop {
            // Archived too: the sources of compaction summaries.
            let page = engine
                .store()
                .list_memories(
                    &sc,
                    &MemoryFilter {
                        archived: kira_store::memory::Archived::Include,
                        ..MemoryFilter::default()
                    },
                    after,
                    1_000,
                )
                .await?;
            let Some(last) = page.last() else { break };
            after = Some(kira_store::memory::MemoryCursor::of(last));
            for m in &page {
                if let Some(s) = &m.source {
                    source_of.insert(m.id.to_string(), s.clone());
                }
            }
            if page.len() < 1_000 {
                break;
            }
        }
        let text_of: HashMap<&str, String> = conv
            .turns
            .iter()
            .map(|t| (t.dia_id.as_str(), t.text.replace('\n', " ")))
            .collect();
        for q in &conv.questions {
            for &budget in budgets {
                let started = std::time::Instant::now();
                let pack = engine
                    .load_context(
                        &sc,
                        &ContextRequest {
                            task_type: Some("general".into()),
                            query: q.question.clone(),
                            budget: Some(budget),
                        },
                    )
                    .await?;
                micros.push(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
                let got: HashSet<&str> = pack
                    .items
                    .iter()
                    .filter_map(|i| source_of.get(&i.id).map(String::as_str))
                    .collect();
                // A turn is in the pack as itself, or whole inside another
                // item (a compaction summary that kept it).
                let found = q
                    .evidence
                    .iter()
                    .filter(|e| {
                        got.contains(e.as_str())
                            || text_of.get(e.as_str()).is_some_and(|t| {
                                pack.items.iter().any(|i| i.text.contains(t.as_str()))
                            })
                    })
                    .count();
                out.entry(budget)
                    .or_default()
                    .add(q.category, found as f64 / q.evidence.len() as f64);
            }
        }
    }
    Ok((out, micros))
}

/// The clock time after a conversation's last turn.
pub fn after_last(turns: &[Turn]) -> DateTime<Utc> {
    turns
        .iter()
        .map(|t| t.at)
        .max()
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
        + TimeDelta::days(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evidence_ids_survive_the_malformed_ones() {
        assert_eq!(evidence_ids("D1:3"), vec!["D1:3"]);
        assert_eq!(evidence_ids("D8:6; D9:17"), vec!["D8:6", "D9:17"]);
        assert_eq!(evidence_ids("D:11:26"), vec!["D11:26"]);
        assert_eq!(evidence_ids("D30:05"), vec!["D30:5"]);
        assert!(evidence_ids("nothing").is_empty());
    }

    #[test]
    fn session_times_parse() {
        let t = session_time("1:56 pm on 8 May, 2023").expect("time");
        assert_eq!(t.to_rfc3339(), "2023-05-08T13:56:00+00:00");
    }
}

/// Words the scale benchmark writes its memories from.
const SCALE_WORDS: &[&str] = &[
    "contract",
    "renewal",
    "invoice",
    "board",
    "forecast",
    "hiring",
    "engineer",
    "audit",
    "compliance",
    "supplier",
    "customer",
    "churn",
    "revenue",
    "margin",
    "pricing",
    "roadmap",
    "release",
    "incident",
    "security",
    "review",
    "deadline",
    "budget",
    "expense",
    "payroll",
    "lawsuit",
    "patent",
    "trademark",
    "lease",
    "office",
    "migration",
    "database",
    "latency",
    "campaign",
    "launch",
    "partner",
    "investor",
    "term",
    "sheet",
    "valuation",
    "tax",
    "filing",
    "quarter",
    "metrics",
    "retention",
    "onboarding",
    "training",
    "policy",
    "vendor",
    "risk",
    "insurance",
    "claim",
    "warranty",
    "shipment",
    "inventory",
    "forecasting",
    "analysis",
    "meeting",
    "decision",
    "approval",
    "escalation",
    "support",
    "ticket",
    "outage",
    "backup",
];

/// What the scale benchmark searches for.
pub const SCALE_QUERY_WORDS: &[&str] = SCALE_WORDS;

/// A deterministic memory text for the scale benchmark: 12 to 40 words
/// drawn from a small business vocabulary, so searches hit many rows.
pub fn scale_text(rng: &mut impl rand::Rng, company: usize, i: usize) -> String {
    let n = rng.random_range(12..=40);
    let mut words: Vec<&str> = (0..n)
        .map(|_| SCALE_WORDS[rng.random_range(0..SCALE_WORDS.len())])
        .collect();
    words[0] = "Note";
    format!("{} (company {company}, item {i}).", words.join(" "))
}

/// One LongMemEval question with its haystack: (session id, date, user turns).
#[derive(Debug, Clone)]
pub struct LmeQuestion {
    pub id: String,
    pub question_type: String,
    pub question: String,
    pub sessions: Vec<(String, DateTime<Utc>, Vec<String>)>,
    pub answer_sessions: Vec<String>,
}

/// "2023/05/20 (Sat) 02:21".
fn lme_time(s: &str) -> Option<DateTime<Utc>> {
    let (date, rest) = s.trim().split_once(' ')?;
    let time = rest.rsplit(' ').next()?;
    NaiveDateTime::parse_from_str(&format!("{date} {time}"), "%Y/%m/%d %H:%M")
        .ok()
        .map(|n| n.and_utc())
}

/// Parses LongMemEval JSON; abstention questions (`_abs`) are left out, as
/// the official retrieval protocol does.
pub fn parse_longmemeval(text: &str) -> Result<Vec<LmeQuestion>, String> {
    let raw: Vec<serde_json::Value> =
        serde_json::from_str(text).map_err(|e| format!("not LongMemEval JSON: {e}"))?;
    let mut out = Vec::new();
    for q in raw {
        let id = q["question_id"].as_str().unwrap_or_default().to_owned();
        if id.ends_with("_abs") {
            continue;
        }
        let strs = |v: &serde_json::Value| -> Vec<String> {
            v.as_array()
                .into_iter()
                .flatten()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        };
        let ids = strs(&q["haystack_session_ids"]);
        let dates = strs(&q["haystack_dates"]);
        let mut sessions = Vec::new();
        for (i, turns) in q["haystack_sessions"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let (Some(sid), Some(at)) = (ids.get(i), dates.get(i).and_then(|d| lme_time(d))) else {
                continue;
            };
            let user: Vec<String> = turns
                .as_array()
                .into_iter()
                .flatten()
                .filter(|t| t["role"] == "user")
                .filter_map(|t| t["content"].as_str())
                .filter(|c| !c.trim().is_empty())
                .map(|c| {
                    // Memories refuse control characters but newline and tab.
                    c.chars()
                        .map(|ch| {
                            if ch.is_control() && ch != '\n' && ch != '\t' {
                                ' '
                            } else {
                                ch
                            }
                        })
                        .take(kira_core::memory::MAX_TEXT_CHARS)
                        .collect()
                })
                .collect();
            sessions.push((sid.clone(), at, user));
        }
        out.push(LmeQuestion {
            id,
            question_type: q["question_type"].as_str().unwrap_or_default().to_owned(),
            question: q["question"].as_str().unwrap_or_default().to_owned(),
            sessions,
            answer_sessions: strs(&q["answer_session_ids"]),
        });
    }
    Ok(out)
}

/// Session ids in the order of their best-ranked turn among `hits`.
pub fn rank_sessions(hit_sources: &[String]) -> Vec<String> {
    let mut seen = HashSet::new();
    hit_sources
        .iter()
        .filter(|s| seen.insert(s.as_str()))
        .cloned()
        .collect()
}

/// recall_all@k and recall_any@k of one question.
pub fn session_recall(ranked: &[String], answers: &[String], k: usize) -> (bool, bool) {
    let top: HashSet<&str> = ranked.iter().take(k).map(String::as_str).collect();
    (
        answers.iter().all(|a| top.contains(a.as_str())),
        answers.iter().any(|a| top.contains(a.as_str())),
    )
}

#[cfg(test)]
mod lme_tests {
    use super::*;

    #[test]
    fn sessions_rank_by_their_best_turn_and_recall_counts_all_or_any() {
        let hits: Vec<String> = ["s2", "s1", "s2", "s3"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        let ranked = rank_sessions(&hits);
        assert_eq!(ranked, ["s2", "s1", "s3"]);
        let answers = vec!["s1".to_owned(), "s3".to_owned()];
        assert_eq!(session_recall(&ranked, &answers, 2), (false, true));
        assert_eq!(session_recall(&ranked, &answers, 3), (true, true));
        assert_eq!(
            lme_time("2023/05/20 (Sat) 02:21").map(|t| t.to_rfc3339()),
            Some("2023-05-20T02:21:00+00:00".into())
        );
    }
}
