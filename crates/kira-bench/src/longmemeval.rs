//! `kira bench longmemeval`: session recall on LongMemEval, on the public
//! data in `../shared/bench` (read at run time, never copied in). Each
//! question's haystack is one company's memory (user turns, as the official
//! retrieval protocol indexes); sessions rank by their best search hit;
//! recall_all@k says whether every answer session is in the top k.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, NaiveDateTime, Utc};
use kira_core::clock::ManualClock;
use kira_engine::Engine;
use kira_store::Store;
use kira_store::memory::MemoryFilter;

use crate::memory::{AS_CONVERSATION, embed_all, load_company, retrieval_config, with_embedder};
use crate::report::{micros, ms, print_json};
use crate::{BenchError, Scratch};

/// One LongMemEval question with its haystack: (session id, date, user turns).
#[derive(Debug, Clone)]
pub struct LmeQuestion {
    pub id: String,
    pub question_type: String,
    pub question: String,
    /// When the question is asked: what its relative dates ("two weeks
    /// ago") are resolved against.
    pub asked_at: Option<DateTime<Utc>>,
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
            asked_at: q["question_date"].as_str().and_then(lme_time),
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LongmemevalFile {
    /// longmemeval_s_sample100.json.xz: 101 questions, ~48 sessions each.
    S,
    /// longmemeval_oracle.json.gz: 500 questions, only their evidence sessions.
    Oracle,
}

impl LongmemevalFile {
    /// The file's name under `longmemeval/`, and what the report calls it.
    fn name_and_label(self) -> (&'static str, &'static str) {
        match self {
            LongmemevalFile::S => ("longmemeval_s_sample100.json.xz", "LongMemEval_S"),
            LongmemevalFile::Oracle => ("longmemeval_oracle.json.gz", "LongMemEval oracle"),
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct LongmemevalArgs {
    /// The benchmark data folder (holding longmemeval/).
    #[arg(long, default_value = "../shared/bench")]
    pub data: PathBuf,
    /// Which of the two files.
    #[arg(long, value_enum, default_value = "s")]
    pub file: LongmemevalFile,
    /// Use only the first N questions.
    #[arg(long)]
    pub questions: Option<usize>,
    /// Full text only: do not load the embedding model.
    #[arg(long)]
    pub no_embed: bool,
    /// Search with the retrieval-only settings (no recency or importance,
    /// 400 candidates) rather than the default configuration every
    /// `kira serve` searches with (`GET .../memory?q=`).
    #[arg(long)]
    pub retrieval: bool,
    /// A database to run in (sqlite://FILE or postgres://...), kept
    /// afterwards: empty, it is filled; filled by an earlier run with the
    /// same questions, it is searched as it is (no loading, no embedding
    /// but what is still queued). Default: a new SQLite file in a temp
    /// directory, removed at the end.
    #[arg(long)]
    pub database_url: Option<String>,
    /// Writes one JSON line per question to FILE: its type, answer
    /// sessions, where each ranked and the sessions ranked above them.
    #[arg(long)]
    pub details: Option<PathBuf>,
}

/// How many questions had every (all) or some (any) answer session in the
/// top 5 and top 10 of their search.
#[derive(Debug, Default)]
struct SessionRecall {
    all5: usize,
    all10: usize,
    any5: usize,
    any10: usize,
    /// Search latencies in microseconds.
    micros: Vec<u64>,
}

/// `kira bench longmemeval`: loads each question's haystack as a company
/// (in a new SQLite file), searches it with the question and prints the
/// session recall.
pub async fn command(args: LongmemevalArgs, json: bool) -> Result<ExitCode, BenchError> {
    let (name, label) = args.file.name_and_label();
    let mut questions = read_questions(&args.data.join("longmemeval").join(name), args.file)?;
    if let Some(n) = args.questions {
        questions.truncate(n);
    }
    let db = Scratch::new(args.database_url.as_deref(), "kira-bench-lme")?;
    let store = db.open().await?;
    let latest = questions
        .iter()
        .flat_map(|q| q.sessions.iter().map(|s| s.1))
        .max()
        .unwrap_or_default()
        + chrono::TimeDelta::days(1);
    let clock = Arc::new(ManualClock::new(latest));
    // By default the configuration `kira serve` starts with, so the
    // figure is what `GET .../memory?q=` finds.
    let cfg = if args.retrieval {
        retrieval_config()
    } else {
        kira_engine::EngineConfig::default()
    };
    let engine = with_embedder(
        Engine::new(store.clone(), clock.clone(), cfg),
        args.no_embed,
    )?;
    let started = Instant::now();
    let companies = match already_loaded(store.as_ref(), &questions).await? {
        Some(companies) => {
            eprintln!(
                "reusing the haystacks of {} questions already there",
                questions.len()
            );
            companies
        }
        None => {
            let (companies, turns) = load_haystacks(&engine, store.as_ref(), &questions).await?;
            eprintln!("loaded {turns} user turns of {} questions", questions.len());
            companies
        }
    };
    let embedded = embed_all(&engine).await?;
    eprintln!(
        "embedded {embedded}; ready in {:.0}s",
        started.elapsed().as_secs_f64()
    );
    let mut details = match &args.details {
        Some(path) => Some(std::io::BufWriter::new(
            std::fs::File::create(path)
                .map_err(|e| BenchError::during(format!("cannot write {}", path.display()), e))?,
        )),
        None => None,
    };
    let recall = score(&engine, &clock, &questions, &companies, details.as_mut()).await?;
    print(&recall, questions.len(), name, label, &args, json)?;
    if args.database_url.is_none() {
        db.remove();
    }
    Ok(ExitCode::SUCCESS)
}

/// The questions of `path`, decompressed as `file` is.
fn read_questions(path: &Path, file: LongmemevalFile) -> Result<Vec<LmeQuestion>, BenchError> {
    let mut reader = std::io::BufReader::new(
        std::fs::File::open(path)
            .map_err(|e| BenchError::during(format!("cannot read {}", path.display()), e))?,
    );
    let mut raw = Vec::new();
    match file {
        LongmemevalFile::S => lzma_rs::xz_decompress(&mut reader, &mut raw)
            .map_err(|e| BenchError::Data(format!("{} is not xz: {e:?}", path.display())))?,
        LongmemevalFile::Oracle => {
            use std::io::Read;
            flate2::read::GzDecoder::new(reader)
                .read_to_end(&mut raw)
                .map_err(|e| BenchError::during(format!("{} is not gzip", path.display()), e))?;
        }
    }
    let text =
        String::from_utf8(raw).map_err(|e| BenchError::during("LongMemEval is not UTF-8", e))?;
    parse_longmemeval(&text).map_err(BenchError::Data)
}

/// The id of the company holding question `i`'s haystack.
fn haystack_company(i: usize) -> Result<kira_core::CompanyId, BenchError> {
    Ok(kira_core::CompanyId::parse(&format!("lme-{i:03}"))?)
}

/// The companies of an earlier run's haystacks, when each holds as many
/// live memories as its question has user turns.
async fn already_loaded(
    store: &dyn Store,
    questions: &[LmeQuestion],
) -> Result<Option<Vec<kira_core::CompanyId>>, BenchError> {
    let system = kira_core::auth::Principal::system();
    let mut companies = Vec::with_capacity(questions.len());
    for (i, q) in questions.iter().enumerate() {
        let id = haystack_company(i)?;
        let scope = system.scope(&id, kira_core::auth::Access::Read)?;
        let turns: usize = q.sessions.iter().map(|s| s.2.len()).sum();
        let live = match store.memory_stats(&scope, "").await {
            Ok(stats) => stats.live,
            Err(_) => return Ok(None),
        };
        if live != turns as u64 {
            return Ok(None);
        }
        companies.push(id);
    }
    Ok(Some(companies))
}

/// Each question's haystack as one company's memory; returns the companies
/// and the turns loaded.
async fn load_haystacks(
    engine: &Engine,
    store: &dyn Store,
    questions: &[LmeQuestion],
) -> Result<(Vec<kira_core::CompanyId>, usize), BenchError> {
    let mut companies = Vec::new();
    let mut turns = 0;
    for (i, q) in questions.iter().enumerate() {
        let items: Vec<_> = q
            .sessions
            .iter()
            .flat_map(|(sid, at, user)| {
                user.iter().enumerate().map(move |(t, text)| {
                    (
                        text.clone(),
                        *at + chrono::TimeDelta::seconds(t as i64),
                        sid.clone(),
                    )
                })
            })
            .collect();
        turns += items.len();
        companies.push(
            load_company(
                engine,
                store,
                haystack_company(i)?.as_str(),
                &items,
                AS_CONVERSATION,
            )
            .await?,
        );
    }
    Ok((companies, turns))
}

/// Searches each question's company with the question, asked when the
/// data says it was, and counts where its answer sessions rank.
async fn score(
    engine: &Engine,
    clock: &ManualClock,
    questions: &[LmeQuestion],
    companies: &[kira_core::CompanyId],
    mut details: Option<&mut std::io::BufWriter<std::fs::File>>,
) -> Result<SessionRecall, BenchError> {
    let system = kira_core::auth::Principal::system();
    let mut r = SessionRecall::default();
    for (q, id) in questions.iter().zip(companies) {
        let scope = system.scope(id, kira_core::auth::Access::Read)?;
        if let Some(at) = q.asked_at {
            clock.set(at);
        }
        let t = Instant::now();
        let hits = engine
            .memory()
            .search(&scope, &q.question, &MemoryFilter::default(), 200)
            .await?;
        r.micros.push(micros(t.elapsed()));
        let sources: Vec<String> = hits
            .iter()
            .filter_map(|h| h.memory.source.clone())
            .collect();
        let ranked = rank_sessions(&sources);
        let (a5, y5) = session_recall(&ranked, &q.answer_sessions, 5);
        let (a10, y10) = session_recall(&ranked, &q.answer_sessions, 10);
        r.all5 += usize::from(a5);
        r.any5 += usize::from(y5);
        r.all10 += usize::from(a10);
        r.any10 += usize::from(y10);
        if let Some(out) = details.as_mut() {
            write_details(out, q, &ranked, &hits)?;
        }
    }
    Ok(r)
}

/// One question's line of `--details`: where its answer sessions ranked
/// (1-based, null when not found) and every hit in order, with its
/// session, date, score and ranks in each retriever's list.
fn write_details(
    out: &mut impl std::io::Write,
    q: &LmeQuestion,
    ranked: &[String],
    hits: &[kira_engine::memory::SearchHit],
) -> Result<(), BenchError> {
    let rank_of = |s: &String| ranked.iter().position(|r| r == s).map(|p| p + 1);
    let line = serde_json::json!({
        "id": q.id,
        "type": q.question_type,
        "question": q.question,
        "asked_at": q.asked_at,
        "answers": q.answer_sessions.iter().map(|a| serde_json::json!({
            "session": a, "rank": rank_of(a),
        })).collect::<Vec<_>>(),
        "sessions": ranked.iter().take(20).collect::<Vec<_>>(),
        "hits": hits.iter().map(|h| serde_json::json!({
            "session": h.memory.source,
            "at": h.memory.occurred_at,
            "score": h.score,
            "text_rank": h.text_rank,
            "vector_rank": h.vector_rank,
        })).collect::<Vec<_>>(),
    });
    writeln!(out, "{line}").map_err(|e| BenchError::during("writing --details", e))
}

fn print(
    r: &SessionRecall,
    questions: usize,
    name: &str,
    label: &str,
    args: &LongmemevalArgs,
    json: bool,
) -> Result<(), BenchError> {
    let n = questions.max(1) as f64;
    let f = |x: usize| x as f64 / n;
    let search = ms(&r.micros);
    if json {
        print_json(&serde_json::json!({
            "file": name, "questions": questions, "semantic": !args.no_embed,
            "configuration": if args.retrieval { "retrieval" } else { "default" },
            "recall_all_at_5": f(r.all5), "recall_all_at_10": f(r.all10),
            "recall_any_at_5": f(r.any5), "recall_any_at_10": f(r.any10),
            "search_ms": {"p50": search.p50_ms, "p99": search.p99_ms},
        }))?;
        return Ok(());
    }
    println!(
        "{label} session recall over {questions} questions ({}, {} configuration):",
        if args.no_embed {
            "full text only"
        } else {
            "full text + embeddings"
        },
        if args.retrieval {
            "retrieval-only"
        } else {
            "default"
        }
    );
    println!(
        "  recall_all@5  {:.3}   recall_all@10 {:.3}",
        f(r.all5),
        f(r.all10)
    );
    println!(
        "  recall_any@5  {:.3}   recall_any@10 {:.3}",
        f(r.any5),
        f(r.any10)
    );
    println!(
        "  search p50 {:.1} ms, p99 {:.1} ms",
        search.p50_ms, search.p99_ms
    );
    Ok(())
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
