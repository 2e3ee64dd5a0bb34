//! `kira knowledge ...`: the shared knowledge base every company reads.
//! Admins add, import and delete; any key lists, searches and shows.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use kira_core::knowledge::KnowledgeEntry;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::Ctx;
use crate::client::decode;
use crate::output;

/// Entries sent per request by `import` (the API's batch limit).
const IMPORT_BATCH: usize = 1_000;

#[derive(Debug, Subcommand)]
pub enum KnowledgeCommand {
    /// Add an entry, or update the one with the same domain and key (admin).
    Add(AddArgs),
    /// Add or update entries from a JSON Lines file, one entry object per
    /// line, 1,000 per transaction (admin).
    Import {
        /// Each line: {"domain", "key", "title", "body", "tags"?, "jurisdiction"?, "industry"?}.
        file: PathBuf,
    },
    /// List entries in (domain, key) order.
    List(ListArgs),
    /// Search entries by full text; any word matches.
    Search(SearchArgs),
    /// Show one entry.
    Show { entry_id: String },
    /// Delete an entry (admin).
    Delete { entry_id: String },
}

#[derive(Debug, Args)]
pub struct AddArgs {
    /// A configured domain: legal_frameworks, business_patterns, industry_standards, ...
    #[arg(long)]
    pub domain: String,
    /// Unique within the domain: lowercase letters, digits, '-', '_', '.'.
    #[arg(long)]
    pub key: String,
    #[arg(long)]
    pub title: String,
    /// The text; or use --body-file.
    #[arg(
        long,
        conflicts_with = "body_file",
        required_unless_present = "body_file"
    )]
    pub body: Option<String>,
    /// Read the text from a file.
    #[arg(long, value_name = "FILE")]
    pub body_file: Option<PathBuf>,
    /// A tag (repeat for more).
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// ISO 3166 code such as US-DE.
    #[arg(long)]
    pub jurisdiction: Option<String>,
    #[arg(long)]
    pub industry: Option<String>,
}

#[derive(Debug, Args, Default)]
pub struct Filters {
    #[arg(long)]
    pub domain: Option<String>,
    #[arg(long)]
    pub tag: Option<String>,
    #[arg(long)]
    pub jurisdiction: Option<String>,
    #[arg(long)]
    pub industry: Option<String>,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub filters: Filters,
    /// The cursor a previous page printed.
    #[arg(long)]
    pub after: Option<String>,
    /// 1-500 [default: 50].
    #[arg(long)]
    pub limit: Option<u32>,
}

#[derive(Debug, Args)]
pub struct SearchArgs {
    pub query: String,
    #[command(flatten)]
    pub filters: Filters,
    /// 1-100 [default: 10].
    #[arg(long)]
    pub limit: Option<u32>,
}

#[derive(Debug, Deserialize)]
struct Entries {
    entries: Vec<KnowledgeEntry>,
}

#[derive(Debug, Deserialize)]
struct Page {
    entries: Vec<KnowledgeEntry>,
    next_after: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Hit {
    entry: KnowledgeEntry,
    relevance: f64,
}

#[derive(Debug, Deserialize)]
struct Hits {
    hits: Vec<Hit>,
}

fn filter_query(f: &Filters) -> Vec<(&'static str, String)> {
    let mut q = Vec::new();
    for (k, v) in [
        ("domain", &f.domain),
        ("tag", &f.tag),
        ("jurisdiction", &f.jurisdiction),
        ("industry", &f.industry),
    ] {
        if let Some(v) = v {
            q.push((k, v.clone()));
        }
    }
    q
}

fn add_body(a: AddArgs) -> anyhow::Result<Value> {
    let body = match (a.body, a.body_file) {
        (Some(b), _) => b,
        (None, Some(path)) => std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?,
        (None, None) => bail!("give --body or --body-file"),
    };
    let mut m = Map::new();
    m.insert("domain".into(), json!(a.domain));
    m.insert("key".into(), json!(a.key));
    m.insert("title".into(), json!(a.title));
    m.insert("body".into(), json!(body));
    m.insert("tags".into(), json!(a.tags));
    if let Some(j) = a.jurisdiction {
        m.insert("jurisdiction".into(), json!(j));
    }
    if let Some(i) = a.industry {
        m.insert("industry".into(), json!(i));
    }
    Ok(Value::Object(m))
}

/// The entries of a JSON Lines file; blank lines are skipped, and an error
/// names the line.
fn read_jsonl(text: &str) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value =
            serde_json::from_str(line).with_context(|| format!("line {}: not JSON", i + 1))?;
        if !v.is_object() {
            bail!("line {}: an entry is a JSON object", i + 1);
        }
        out.push(v);
    }
    Ok(out)
}

pub async fn run(ctx: &Ctx, cmd: KnowledgeCommand) -> anyhow::Result<ExitCode> {
    let c = &ctx.client;
    let (v, human) = match cmd {
        KnowledgeCommand::Add(a) => {
            let v = c.post(&["v1", "knowledge"], Some(&add_body(a)?)).await?;
            let human = decode::<Entries>(v.clone()).map(|e| entries(&e.entries));
            (v, human)
        }
        KnowledgeCommand::Import { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let lines = read_jsonl(&text)?;
            if lines.is_empty() {
                bail!("{} holds no entries", file.display());
            }
            let mut stored = Vec::new();
            for (n, chunk) in lines.chunks(IMPORT_BATCH).enumerate() {
                let v = c
                    .post(&["v1", "knowledge"], Some(&json!({"entries": chunk})))
                    .await
                    .with_context(|| {
                        format!(
                            "batch {} (lines {} to {}); earlier batches are stored",
                            n + 1,
                            n * IMPORT_BATCH + 1,
                            n * IMPORT_BATCH + chunk.len()
                        )
                    })?;
                stored.extend(decode::<Entries>(v)?.entries);
            }
            let n = stored.len();
            let v = json!({ "imported": n });
            (
                v,
                Ok(format!("imported {n} entries from {}", file.display())),
            )
        }
        KnowledgeCommand::List(a) => {
            let mut q = filter_query(&a.filters);
            if let Some(after) = &a.after {
                q.push(("after", after.clone()));
            }
            if let Some(l) = a.limit {
                q.push(("limit", l.to_string()));
            }
            let v = c.get(&["v1", "knowledge"], &q).await?;
            let human = decode::<Page>(v.clone()).map(|p| {
                let mut out = entries(&p.entries);
                if let Some(after) = p.next_after {
                    out.push_str(&format!("\nmore entries: --after {after}"));
                }
                out
            });
            (v, human)
        }
        KnowledgeCommand::Search(a) => {
            let mut q = filter_query(&a.filters);
            q.push(("q", a.query.clone()));
            if let Some(l) = a.limit {
                q.push(("limit", l.to_string()));
            }
            let v = c.get(&["v1", "knowledge", "search"], &q).await?;
            let human = decode::<Hits>(v.clone()).map(|h| hits(&h.hits));
            (v, human)
        }
        KnowledgeCommand::Show { entry_id } => {
            let v = c.get(&["v1", "knowledge", &entry_id], &[]).await?;
            let human = decode::<KnowledgeEntry>(v.clone()).map(|e| entry(&e));
            (v, human)
        }
        KnowledgeCommand::Delete { entry_id } => {
            c.delete(&["v1", "knowledge", &entry_id], &[]).await?;
            let v = json!({ "deleted": entry_id });
            (v, Ok(format!("deleted knowledge entry {entry_id}")))
        }
    };
    if ctx.json {
        output::print_json(&v)?;
    } else {
        println!("{}", human?);
    }
    Ok(ExitCode::SUCCESS)
}

fn entries(list: &[KnowledgeEntry]) -> String {
    if list.is_empty() {
        return "no knowledge entries".to_owned();
    }
    let mut t = output::table(&[
        "ID",
        "DOMAIN",
        "KEY",
        "TITLE",
        "TAGS",
        "JURISDICTION",
        "INDUSTRY",
    ]);
    for e in list {
        t.add_row(vec![
            e.id.to_string(),
            e.domain.clone(),
            e.key.clone(),
            e.title.clone(),
            e.tags.join(", "),
            e.jurisdiction.clone().unwrap_or_default(),
            e.industry.clone().unwrap_or_default(),
        ]);
    }
    t.to_string()
}

fn hits(list: &[Hit]) -> String {
    if list.is_empty() {
        return "no matches".to_owned();
    }
    let mut t = output::table(&["RELEVANCE", "ID", "DOMAIN", "KEY", "TITLE"]);
    for h in list {
        t.add_row(vec![
            format!("{:.3}", h.relevance),
            h.entry.id.to_string(),
            h.entry.domain.clone(),
            h.entry.key.clone(),
            h.entry.title.clone(),
        ]);
    }
    t.to_string()
}

fn entry(e: &KnowledgeEntry) -> String {
    let mut out = format!("{}\n{}/{}  (id {})\n", e.title, e.domain, e.key, e.id);
    if !e.tags.is_empty() {
        out.push_str(&format!("tags: {}\n", e.tags.join(", ")));
    }
    if let Some(j) = &e.jurisdiction {
        out.push_str(&format!("jurisdiction: {j}\n"));
    }
    if let Some(i) = &e.industry {
        out.push_str(&format!("industry: {i}\n"));
    }
    out.push_str(&format!(
        "updated {} (created {})\n\n{}",
        output::time(&e.updated_at),
        output::time(&e.created_at),
        e.body
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_skips_blank_lines_and_names_bad_ones() {
        let v = read_jsonl("{\"a\":1}\n\n  \n{\"b\":2}\n").expect("valid");
        assert_eq!(v.len(), 2);
        let e = read_jsonl("{\"a\":1}\nnope\n").expect_err("bad line");
        assert!(format!("{e:#}").starts_with("line 2"), "{e:#}");
        let e = read_jsonl("[1]").expect_err("not an object");
        assert!(e.to_string().contains("line 1"), "{e}");
    }
}
