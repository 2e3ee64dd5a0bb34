//! `kira bench memory`: LoCoMo evidence recall of context packs, on the
//! public data in `../shared/bench` (read at run time, never copied in).
//! Each conversation is one company's memory (each turn one event, dated
//! by its session); each question is the task text of a context pack; the
//! score is the fraction of the question's evidence turns that made it
//! into the pack (LoCoMo's own recall), per category, at each token budget.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, NaiveDateTime, TimeDelta, Utc};
use kira_core::CompanyId;
use kira_core::clock::ManualClock;
use kira_engine::memory::ContextRequest;
use kira_engine::{Engine, EngineConfig, EngineError};
use kira_store::Store;
use kira_store::memory::MemoryFilter;
use serde::{Deserialize, Serialize};

use crate::memory::{AS_CONVERSATION, AS_STATUS_MEETINGS, scope};
use crate::report::{ms, print_json, table};
use crate::{BenchError, Scratch};

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
    /// LoCoMo's answer, as text (some are numbers); None for adversarial
    /// questions, which have none.
    pub answer: Option<String>,
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
            let answer = match &q["answer"] {
                serde_json::Value::String(a) => Some(a.clone()),
                serde_json::Value::Number(n) => Some(n.to_string()),
                _ => None,
            }
            .filter(|a| !a.trim().is_empty());
            questions.push(Question {
                question: question.to_owned(),
                category: u8::try_from(category).unwrap_or(0),
                evidence,
                answer,
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

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Recall {
    /// (sum of per-question recall, questions) per category number.
    pub by_category: BTreeMap<u8, (f64, usize)>,
    /// (questions whose answer is in the pack, questions with an answer)
    /// per category number.
    pub answers: BTreeMap<u8, (usize, usize)>,
}

impl Recall {
    fn add(&mut self, category: u8, r: f64) {
        let e = self.by_category.entry(category).or_default();
        e.0 += r;
        e.1 += 1;
    }

    fn add_answer(&mut self, category: u8, found: bool) {
        let e = self.answers.entry(category).or_default();
        e.0 += usize::from(found);
        e.1 += 1;
    }

    fn merge(&mut self, other: Recall) {
        for (cat, (s, n)) in other.by_category {
            let x = self.by_category.entry(cat).or_default();
            x.0 += s;
            x.1 += n;
        }
        for (cat, (f, n)) in other.answers {
            let x = self.answers.entry(cat).or_default();
            x.0 += f;
            x.1 += n;
        }
    }

    /// The share (%) of the questions but the adversarial ones whose
    /// answer is in the pack, word for word (case aside).
    pub fn answers_but_adversarial(&self) -> f64 {
        let (f, n) = self
            .answers
            .iter()
            .filter(|(c, _)| **c != 5)
            .fold((0, 0), |(f, n), (_, (a, b))| (f + a, n + b));
        if n == 0 {
            0.0
        } else {
            100.0 * f as f64 / n as f64
        }
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
                .memory()
                .list(
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
                    .memory()
                    .context(
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
                let r = out.entry(budget).or_default();
                r.add(q.category, found as f64 / q.evidence.len() as f64);
                if let Some(a) = &q.answer {
                    let shown = pack.render().to_lowercase();
                    r.add_answer(q.category, shown.contains(&a.to_lowercase()));
                }
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

#[derive(Debug, clap::Args)]
pub struct MemoryArgs {
    /// The benchmark data folder (holding locomo/locomo10.json).
    #[arg(long, default_value = "../shared/bench")]
    pub data: PathBuf,
    /// A database to run in (sqlite://FILE or postgres://...), kept
    /// afterwards: empty, it is filled; filled by an earlier run with the
    /// same conversations (and not `--compacted`), it is scored as it is,
    /// without loading or embedding again. Default: a new SQLite file in a
    /// temp directory, removed at the end.
    #[arg(long)]
    pub database_url: Option<String>,
    /// Token budgets to score, comma-separated.
    #[arg(long, default_value = "1000,2000,4000", value_delimiter = ',')]
    pub budgets: Vec<usize>,
    /// Use only the first N conversations (of 10).
    #[arg(long)]
    pub conversations: Option<usize>,
    /// Full text only: do not load the embedding model.
    #[arg(long)]
    pub no_embed: bool,
    /// Score pure retrieval (every memory cold, the whole budget to the
    /// question's search hits, no recency or importance) rather than the
    /// default configuration every `kira serve` runs.
    #[arg(long)]
    pub retrieval: bool,
    /// Retention after compaction: load the turns as operational
    /// status_meetings (a category the default strategy summarises), score,
    /// compact every company, score again.
    #[arg(long)]
    pub compacted: bool,
}

/// Recall per budget, before and (with `--compacted`) after compaction.
struct Scores {
    turns: usize,
    before: BTreeMap<usize, Recall>,
    after: Option<BTreeMap<usize, Recall>>,
    /// Context pack latencies before compaction, in microseconds.
    pack_micros: Vec<u64>,
}

/// `kira bench memory`: loads the conversations, scores every question at
/// every budget (again after compaction with `--compacted`) and prints the
/// recall.
pub async fn command(args: MemoryArgs, json: bool) -> Result<ExitCode, BenchError> {
    if args.budgets.is_empty() || args.budgets.contains(&0) {
        return Err(BenchError::Invalid(
            "--budgets must list token budgets above 0, such as 1000,2000,4000".into(),
        ));
    }
    let path = args.data.join("locomo").join("locomo10.json");
    let mut convs = load_locomo(&path).map_err(BenchError::Data)?;
    if let Some(n) = args.conversations {
        convs.truncate(n);
    }
    let db = Scratch::new(args.database_url.as_deref(), "kira-bench-memory")?;
    let store = db.open().await?;
    // By default the configuration `kira serve` starts with, through
    // `Memories::context`, the code behind GET /v1/companies/{id}/context.
    let cfg = if args.retrieval {
        crate::memory::retrieval_config()
    } else {
        EngineConfig::default()
    };
    let first = convs.first().map(|c| after_last(&c.turns));
    let clock = Arc::new(ManualClock::new(first.unwrap_or_default()));
    let engine = crate::memory::with_embedder(
        Engine::new(store.clone(), clock.clone(), cfg),
        args.no_embed,
    )?;
    let reused = if args.compacted {
        None
    } else {
        already_loaded(store.as_ref(), &convs).await?
    };
    let (companies, turns) = match reused {
        Some(loaded) => {
            let embedded = crate::memory::embed_all(&engine).await?;
            eprintln!(
                "reusing the {} conversations already there; embedded {embedded}",
                convs.len()
            );
            loaded
        }
        None => load_all(&engine, store.as_ref(), &clock, &convs, args.compacted).await?,
    };
    let (before, pack_micros) =
        score_all(&engine, &clock, &convs, &companies, &args.budgets).await?;
    let after = if args.compacted {
        Some(compact_and_score(&engine, &clock, &convs, &companies, &args.budgets).await?)
    } else {
        None
    };
    let scores = Scores {
        turns,
        before,
        after,
        pack_micros,
    };
    if json {
        print_json(&scores_json(&scores, &args))?;
    } else {
        print_tables(&scores, &args);
    }
    if args.database_url.is_none() {
        db.remove();
    }
    Ok(ExitCode::SUCCESS)
}

/// The companies and turns of an earlier run's conversations, when each
/// company holds as many live memories as its conversation has turns.
async fn already_loaded(
    store: &dyn Store,
    convs: &[Conversation],
) -> Result<Option<(Vec<CompanyId>, usize)>, BenchError> {
    let mut companies = Vec::with_capacity(convs.len());
    let mut turns = 0;
    for c in convs {
        let id = CompanyId::parse(&c.id)?;
        let live = match store.memory_stats(&scope(&id), "").await {
            Ok(stats) => stats.live,
            Err(_) => return Ok(None),
        };
        if live != c.turns.len() as u64 {
            return Ok(None);
        }
        turns += c.turns.len();
        companies.push(id);
    }
    Ok(Some((companies, turns)))
}

/// Loads each conversation as a company, the clock after its last turn;
/// returns the companies and the turns loaded.
async fn load_all(
    engine: &Engine,
    store: &dyn Store,
    clock: &ManualClock,
    convs: &[Conversation],
    compacted: bool,
) -> Result<(Vec<CompanyId>, usize), BenchError> {
    let load_start = Instant::now();
    let mut companies = Vec::new();
    let mut turns = 0usize;
    for c in convs {
        clock.set(after_last(&c.turns));
        let items: Vec<_> = c
            .turns
            .iter()
            .map(|t| (t.text.clone(), t.at, t.dia_id.clone()))
            .collect();
        turns += items.len();
        let kind = if compacted {
            AS_STATUS_MEETINGS
        } else {
            AS_CONVERSATION
        };
        companies.push(crate::memory::load_company(engine, store, &c.id, &items, kind).await?);
    }
    let loaded = load_start.elapsed();
    let embed_start = Instant::now();
    let embedded = crate::memory::embed_all(engine).await?;
    let embed_time = embed_start.elapsed();
    eprintln!(
        "loaded {turns} turns of {} conversations in {:.1}s; embedded {embedded} in {:.1}s",
        convs.len(),
        loaded.as_secs_f64(),
        embed_time.as_secs_f64()
    );
    Ok((companies, turns))
}

/// Compacts every company (the clock after its conversation), embeds the
/// summaries and scores again.
async fn compact_and_score(
    engine: &Engine,
    clock: &ManualClock,
    convs: &[Conversation],
    companies: &[CompanyId],
    budgets: &[usize],
) -> Result<BTreeMap<usize, Recall>, BenchError> {
    let mut summaries = (0, 0);
    for (c, id) in convs.iter().zip(companies) {
        clock.set(after_last(&c.turns));
        let (s, n) = crate::memory::compact_all(engine, std::slice::from_ref(id)).await?;
        summaries = (summaries.0 + s, summaries.1 + n);
    }
    let embedded = crate::memory::embed_all(engine).await?;
    eprintln!(
        "compacted: {} summaries replaced {} turns; embedded {embedded}",
        summaries.0, summaries.1
    );
    let (after, _) = score_all(engine, clock, convs, companies, budgets).await?;
    Ok(after)
}

/// Every conversation's questions at every budget, the clock set after
/// its last turn; recall per budget and the pack latencies.
async fn score_all(
    engine: &Engine,
    clock: &ManualClock,
    convs: &[Conversation],
    companies: &[CompanyId],
    budgets: &[usize],
) -> Result<(BTreeMap<usize, Recall>, Vec<u64>), BenchError> {
    let mut results: BTreeMap<usize, Recall> = BTreeMap::new();
    let mut micros = Vec::new();
    for (c, id) in convs.iter().zip(companies) {
        clock.set(after_last(&c.turns));
        let (r, m) = score_locomo(
            engine,
            std::slice::from_ref(c),
            std::slice::from_ref(id),
            budgets,
        )
        .await?;
        micros.extend(m);
        for (budget, recall) in r {
            results.entry(budget).or_default().merge(recall);
        }
    }
    Ok((results, micros))
}

/// Recall after as a share of recall before, in %.
fn retention(before: f64, after: f64) -> f64 {
    if before > 0.0 {
        100.0 * after / before
    } else {
        0.0
    }
}

fn mode(args: &MemoryArgs) -> &'static str {
    if args.retrieval {
        "retrieval"
    } else {
        "default"
    }
}

fn scores_json(scores: &Scores, args: &MemoryArgs) -> serde_json::Value {
    let rows: Vec<_> = scores
        .before
        .iter()
        .map(|(b, r)| {
            let mut row = serde_json::Map::new();
            row.insert("budget".into(), serde_json::json!(b));
            for (c, name) in CATEGORIES {
                row.insert(name.into(), serde_json::json!(r.category(c)));
            }
            row.insert(
                "all_but_adversarial".into(),
                serde_json::json!(r.all_but_adversarial()),
            );
            row.insert(
                "answers_percent".into(),
                serde_json::json!(r.answers_but_adversarial()),
            );
            serde_json::Value::Object(row)
        })
        .collect();
    let pack = ms(&scores.pack_micros);
    let mut out = serde_json::json!({
        "mode": mode(args), "semantic": !args.no_embed, "turns": scores.turns,
        "recall_percent": rows,
        "pack_ms": { "p50": pack.p50_ms, "p99": pack.p99_ms },
    });
    if let (Some(after), Some(obj)) = (&scores.after, out.as_object_mut()) {
        let rows: Vec<_> = after
            .iter()
            .map(|(b, r)| {
                let before = scores
                    .before
                    .get(b)
                    .map_or(0.0, |x| x.all_but_adversarial());
                let answers_before = scores
                    .before
                    .get(b)
                    .map_or(0.0, Recall::answers_but_adversarial);
                serde_json::json!({
                    "budget": b,
                    "all_but_adversarial": r.all_but_adversarial(),
                    "retention_percent": retention(before, r.all_but_adversarial()),
                    "answers_percent": r.answers_but_adversarial(),
                    "answers_retention_percent":
                        retention(answers_before, r.answers_but_adversarial()),
                })
            })
            .collect();
        obj.insert("after_compaction".into(), serde_json::json!(rows));
    }
    out
}

fn print_tables(scores: &Scores, args: &MemoryArgs) {
    println!(
        "LoCoMo evidence recall (%), {} packs, {}:",
        if args.retrieval {
            "retrieval-only"
        } else {
            "default-configuration"
        },
        if args.no_embed {
            "full text only"
        } else {
            "full text + embeddings"
        }
    );
    let mut t = table(&[
        "budget",
        "single-hop",
        "multi-hop",
        "temporal",
        "open-domain",
        "adversarial",
        "all but adversarial",
        "answer in pack",
    ]);
    for (b, r) in &scores.before {
        let f = |c| r.category(c).map_or("-".into(), |v| format!("{v:.1}"));
        t.add_row(vec![
            b.to_string(),
            f(4),
            f(1),
            f(2),
            f(3),
            f(5),
            format!("{:.1}", r.all_but_adversarial()),
            format!("{:.1}", r.answers_but_adversarial()),
        ]);
    }
    println!("{t}");
    if let Some(after) = &scores.after {
        println!("after compaction (all but adversarial, %):");
        let mut t = table(&[
            "budget",
            "evidence before",
            "after",
            "retention",
            "answers before",
            "after",
            "retention",
        ]);
        for (b, r) in after {
            let (before, answers_before) = scores.before.get(b).map_or((0.0, 0.0), |x| {
                (x.all_but_adversarial(), x.answers_but_adversarial())
            });
            t.add_row(vec![
                b.to_string(),
                format!("{before:.1}"),
                format!("{:.1}", r.all_but_adversarial()),
                format!("{:.1}", retention(before, r.all_but_adversarial())),
                format!("{answers_before:.1}"),
                format!("{:.1}", r.answers_but_adversarial()),
                format!(
                    "{:.1}",
                    retention(answers_before, r.answers_but_adversarial())
                ),
            ]);
        }
        println!("{t}");
    }
    let pack = ms(&scores.pack_micros);
    println!(
        "context pack latency: p50 {:.1} ms, p99 {:.1} ms ({} packs)",
        pack.p50_ms,
        pack.p99_ms,
        scores.pack_micros.len()
    );
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
