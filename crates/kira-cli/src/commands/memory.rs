//! `kira memory ...` and `kira context`: a company's episodic memory and
//! the context pack an agent would see.

use std::io::BufRead;
use std::process::ExitCode;

use anyhow::{Context, bail};
use kira_core::clock::{Clock, SystemClock};
use kira_core::memory::Memory;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::Ctx;
use crate::cli::{ContextArgs, MemoryAddArgs, MemoryCommand, MemoryFilterArgs};
use crate::client::decode;
use crate::output;

/// Memories per import request: the API's batch limit.
const IMPORT_BATCH: usize = 1_000;

#[derive(Debug, Deserialize)]
struct MemoryPage {
    memories: Vec<Memory>,
    next_cursor: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Hit {
    memory: Memory,
    score: f64,
    layer: String,
    text_rank: Option<usize>,
    vector_rank: Option<usize>,
}

#[derive(Debug, Deserialize)]
struct SearchResult {
    hits: Vec<Hit>,
    semantic: bool,
}

pub async fn run(ctx: &Ctx, cmd: MemoryCommand) -> anyhow::Result<ExitCode> {
    let c = &ctx.client;
    let (v, human) = match cmd {
        MemoryCommand::Add(a) => {
            let body = add_body(&a);
            let v = c
                .post(&["v1", "companies", &a.company, "memory"], Some(&body))
                .await?;
            let human = decode::<Memory>(v.clone()).map(|m| memories(&[m]));
            (v, human)
        }
        MemoryCommand::Import { company, file } => return import(ctx, &company, &file).await,
        MemoryCommand::List(a) => {
            let mut q = filter_query(&a.filter);
            if let Some(cursor) = &a.cursor {
                q.push(("cursor", cursor.clone()));
            }
            let v = c
                .get(&["v1", "companies", &a.company, "memory"], &q)
                .await?;
            let human = decode::<MemoryPage>(v.clone()).map(|p| {
                let mut out = memories(&p.memories);
                if let Some(next) = p.next_cursor {
                    out.push_str(&format!(
                        "\nmore: kira memory list {} --cursor {next}",
                        a.company
                    ));
                }
                out
            });
            (v, human)
        }
        MemoryCommand::Search(a) => {
            let mut q = filter_query(&a.filter);
            q.push(("q", a.query.clone()));
            let v = c
                .get(&["v1", "companies", &a.company, "memory", "search"], &q)
                .await?;
            let human = decode::<SearchResult>(v.clone()).map(|r| hits(&r));
            (v, human)
        }
        MemoryCommand::Show { company, memory_id } => {
            let v = c
                .get(&["v1", "companies", &company, "memory", &memory_id], &[])
                .await?;
            let human = decode::<Memory>(v.clone()).map(|m| memory(&m));
            (v, human)
        }
        MemoryCommand::Archive { company, memory_id } => {
            let v = c
                .post(
                    &["v1", "companies", &company, "memory", &memory_id, "archive"],
                    None,
                )
                .await?;
            let human = decode::<Memory>(v.clone()).map(|m| format!("archived {}", m.id));
            (v, human)
        }
        MemoryCommand::Restore { company, memory_id } => {
            let v = c
                .post(
                    &["v1", "companies", &company, "memory", &memory_id, "restore"],
                    None,
                )
                .await?;
            let human = decode::<Memory>(v.clone()).map(|m| format!("restored {}", m.id));
            (v, human)
        }
        MemoryCommand::Delete { company, memory_id } => {
            let v = c
                .delete(&["v1", "companies", &company, "memory", &memory_id], &[])
                .await?;
            (v, Ok(format!("deleted {memory_id}")))
        }
        MemoryCommand::Compact { company, dry_run } => {
            let v = c
                .post(
                    &["v1", "companies", &company, "memory", "compact"],
                    Some(&json!({ "dry_run": dry_run })),
                )
                .await?;
            let human = Ok(compaction(&v));
            (v, human)
        }
    };
    if ctx.json {
        output::print_json(&v)?;
    } else {
        println!("{}", human?);
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn context(ctx: &Ctx, a: ContextArgs) -> anyhow::Result<ExitCode> {
    let mut q = Vec::new();
    if let Some(t) = &a.task_type {
        q.push(("task_type", t.clone()));
    }
    if let Some(text) = &a.q {
        q.push(("q", text.clone()));
    }
    if let Some(b) = a.budget {
        q.push(("budget", b.to_string()));
    }
    let v = ctx
        .client
        .get(&["v1", "companies", &a.company, "context"], &q)
        .await?;
    if ctx.json {
        output::print_json(&v)?;
    } else {
        println!("{}", pack(&v));
    }
    Ok(ExitCode::SUCCESS)
}

fn add_body(a: &MemoryAddArgs) -> Value {
    let mut content = Map::new();
    content.insert("text".into(), json!(a.text));
    if !a.people.is_empty() {
        content.insert("people".into(), json!(a.people));
    }
    if !a.counterparties.is_empty() {
        content.insert("counterparties".into(), json!(a.counterparties));
    }
    let occurred_at = a.occurred_at.unwrap_or_else(|| SystemClock.now());
    let mut body = Map::new();
    body.insert("occurred_at".into(), json!(occurred_at));
    body.insert("event_type".into(), json!(a.event_type));
    body.insert("content".into(), Value::Object(content));
    if let Some(w) = &a.workstream {
        body.insert("workstream".into(), json!(w));
    }
    if let Some(c) = &a.category {
        body.insert("category".into(), json!(c));
    }
    if let Some(i) = a.importance {
        body.insert("importance".into(), json!(i));
    }
    if let Some(s) = &a.source {
        body.insert("source".into(), json!(s));
    }
    Value::Object(body)
}

fn filter_query(f: &MemoryFilterArgs) -> Vec<(&'static str, String)> {
    let mut q = Vec::new();
    let mut put = |k: &'static str, v: Option<String>| {
        if let Some(v) = v {
            q.push((k, v));
        }
    };
    put("event_type", f.event_type.clone());
    put("workstream", f.workstream.clone());
    put("category", f.category.clone());
    put("from", f.from.clone());
    put("until", f.until.clone());
    put("min_importance", f.min_importance.map(|i| i.to_string()));
    put("term", f.term.clone());
    put("archived", f.archived.clone());
    put("limit", f.limit.map(|l| l.to_string()));
    q
}

/// Reads the file and sends it in batches; each line must be a JSON
/// object. The whole file is checked for JSON before anything is sent, so
/// a typo on line 900 does not leave 899 memories behind.
async fn import(ctx: &Ctx, company: &str, file: &std::path::Path) -> anyhow::Result<ExitCode> {
    let reader: Box<dyn BufRead> = if file.as_os_str() == "-" {
        Box::new(std::io::BufReader::new(std::io::stdin()))
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(file).with_context(|| format!("cannot read {}", file.display()))?,
        ))
    };
    let mut items: Vec<Value> = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("cannot read {}", file.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(&line) {
            Ok(v @ Value::Object(_)) => items.push(v),
            Ok(_) => bail!(
                "{}:{}: each line must be a JSON object",
                file.display(),
                i + 1
            ),
            Err(e) => bail!("{}:{}: not valid JSON: {e}", file.display(), i + 1),
        }
    }
    if items.is_empty() {
        bail!("{} holds no memories", file.display());
    }
    let mut stored = 0usize;
    for (n, chunk) in items.chunks(IMPORT_BATCH).enumerate() {
        let body = json!({ "memories": chunk });
        ctx.client
            .post(&["v1", "companies", company, "memory"], Some(&body))
            .await
            .with_context(|| {
                format!(
                    "batch {} (lines of memories {}-{}) was refused; {stored} memories before it were stored",
                    n + 1,
                    n * IMPORT_BATCH + 1,
                    n * IMPORT_BATCH + chunk.len()
                )
            })?;
        stored += chunk.len();
    }
    if ctx.json {
        output::print_json(&json!({ "imported": stored }))?;
    } else {
        println!("imported {stored} memories into {company}");
    }
    Ok(ExitCode::SUCCESS)
}

fn short(text: &str, n: usize) -> String {
    let one_line = text.replace('\n', " ");
    if one_line.chars().count() <= n {
        one_line
    } else {
        let cut: String = one_line.chars().take(n.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}

fn memories(list: &[Memory]) -> String {
    if list.is_empty() {
        return "no memories".to_owned();
    }
    let mut t = output::table(&[
        "ID",
        "OCCURRED",
        "TYPE",
        "WORKSTREAM",
        "CATEGORY",
        "IMP",
        "TEXT",
    ]);
    for m in list {
        let mut text = short(m.text(), 60);
        if m.is_archived() {
            text = format!("(archived) {text}");
        }
        t.add_row(vec![
            m.id.to_string(),
            output::time(&m.occurred_at),
            m.event_type.to_string(),
            m.workstream.to_string(),
            m.category.clone(),
            m.importance.to_string(),
            text,
        ]);
    }
    t.to_string()
}

fn memory(m: &Memory) -> String {
    let mut out = format!(
        "id:          {}\noccurred:    {}\ntype:        {}\nworkstream:  {}\ncategory:    {}\nimportance:  {}\n",
        m.id,
        output::time(&m.occurred_at),
        m.event_type,
        m.workstream,
        m.category,
        m.importance
    );
    if let Some(s) = &m.source {
        out.push_str(&format!("source:      {s}\n"));
    }
    if let Some(a) = &m.archived_at {
        out.push_str(&format!("archived:    {}\n", output::time(a)));
    }
    if !m.indexed_terms.is_empty() {
        out.push_str(&format!("terms:       {}\n", m.indexed_terms.join(", ")));
    }
    if !m.compacted_from.is_empty() {
        out.push_str(&format!(
            "summary of:  {} memories\n",
            m.compacted_from.len()
        ));
    }
    out.push_str(&format!("\n{}", m.text()));
    let extra: Map<String, Value> = m
        .content
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(k, _)| k.as_str() != "text")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    if !extra.is_empty() {
        out.push_str(&format!(
            "\n\n{}",
            serde_json::to_string_pretty(&Value::Object(extra)).unwrap_or_default()
        ));
    }
    out
}

fn hits(r: &SearchResult) -> String {
    let mut out = String::new();
    if !r.semantic {
        out.push_str("(full text only: no embedding model is loaded)\n");
    }
    if r.hits.is_empty() {
        out.push_str("no matches");
        return out;
    }
    let mut t = output::table(&["SCORE", "LAYER", "WHY", "ID", "OCCURRED", "TEXT"]);
    for h in &r.hits {
        let why = match (h.text_rank, h.vector_rank) {
            (Some(a), Some(b)) => format!("words #{a}, meaning #{b}"),
            (Some(a), None) => format!("words #{a}"),
            (None, Some(b)) => format!("meaning #{b}"),
            (None, None) => String::new(),
        };
        t.add_row(vec![
            format!("{:.3}", h.score),
            h.layer.clone(),
            why,
            h.memory.id.to_string(),
            output::time(&h.memory.occurred_at),
            short(h.memory.text(), 50),
        ]);
    }
    out.push_str(&t.to_string());
    out
}

fn compaction(v: &Value) -> String {
    let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
    let mut out = format!(
        "{}{}: examined {}, preserved {}, discarded {}, purged {}; tokens {} -> {}\n",
        if v.get("dry_run").and_then(Value::as_bool) == Some(true) {
            "dry run, nothing changed. "
        } else {
            ""
        },
        v.get("company_id").and_then(Value::as_str).unwrap_or("?"),
        n("examined"),
        n("preserved"),
        n("discarded"),
        n("purged"),
        n("tokens_before"),
        n("tokens_after"),
    );
    for g in v
        .get("groups")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let s = |k: &str| g.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
        out.push_str(&format!(
            "  summarised {} {}/{} memories of {} into {}\n",
            g.get("sources").and_then(Value::as_u64).unwrap_or(0),
            s("workstream"),
            s("category"),
            s("month"),
            g.get("summary_id")
                .and_then(Value::as_str)
                .unwrap_or("(not written)")
        ));
    }
    out
}

/// An item's line as an agent reads it: under its group's line (a
/// memory's date and kind), if it has one.
fn pack_line(item: &Value) -> String {
    let text = item.get("text").and_then(Value::as_str).unwrap_or("");
    match item.get("group").and_then(Value::as_str) {
        Some(g) => format!("[{g}] {text}"),
        None => text.to_owned(),
    }
}

fn pack(v: &Value) -> String {
    let budget = v.get("budget").and_then(Value::as_u64).unwrap_or(0);
    let tokens = v.get("tokens").and_then(Value::as_u64).unwrap_or(0);
    let left = v.get("left_out").and_then(Value::as_u64).unwrap_or(0);
    let mut out = format!("{tokens} of {budget} tokens; {left} candidates left out\n");
    let mut section = String::new();
    for item in v
        .get("items")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let s = item
            .get("section")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        if s != section {
            out.push_str(&format!("\n[{s}]\n"));
            section = s;
        }
        out.push_str(&format!(
            "  {} score {:.3} {} tokens {}\n    {}\n",
            item.get("layer").and_then(Value::as_str).unwrap_or("-"),
            item.get("score").and_then(Value::as_f64).unwrap_or(0.0),
            item.get("tokens").and_then(Value::as_u64).unwrap_or(0),
            item.get("id").and_then(Value::as_str).unwrap_or(""),
            short(&pack_line(item), 100),
        ));
    }
    out
}
