//! The built-in tools of an agent: search the company's memory, record a
//! memory, search the shared knowledge base, and submit the result.
//!
//! Architecture invariant: no tool takes a company. Each runs with the
//! run's `CompanyScope` (the task's company), and arguments are parsed
//! strictly (`deny_unknown_fields`), so a model that names another company
//! gets an error back and nothing of that company.

use kira_core::audit::{AuditRecord, Outcome};
use kira_core::auth::CompanyScope;
use kira_core::memory::{EventType, NewMemory, Workstream};
use kira_llm::ToolSpec;
use kira_store::knowledge::KnowledgeFilter;
use kira_store::memory::MemoryFilter;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::Engine;
use crate::memory::render_memory;

pub const SEARCH_MEMORY: &str = "search_memory";
pub const RECORD_MEMORY: &str = "record_memory";
pub const SEARCH_KNOWLEDGE: &str = "search_knowledge";
pub const SUBMIT_RESULT: &str = "submit_result";

const MAX_HITS: u32 = 20;
const DEFAULT_HITS: u32 = 5;

/// The tools an agent with these domains is offered.
pub fn specs(domains: &[String]) -> Vec<ToolSpec> {
    let mut out = Vec::new();
    if domains.iter().any(|d| d == "memory") {
        out.push(ToolSpec {
            name: SEARCH_MEMORY.into(),
            description: "Search this company's memory (decisions, meetings, contracts, \
                          people, past task results). Returns the best matches, newest \
                          and most important first."
                .into(),
            parameters: json!({
                "type": "object",
                "properties": {
                    "query": {"type": "string", "description": "what to look for"},
                    "limit": {"type": "integer", "minimum": 1, "maximum": MAX_HITS},
                    "workstream": {"type": "string", "description": "legal, financial, operational, technical, content, research or general"},
                    "event_type": {"type": "string", "description": "decision, meeting, context, person, goal, issue, contract, progress, task_result or note"}
                },
                "required": ["query"],
                "additionalProperties": false
            }),
        });
        out.push(ToolSpec {
            name: RECORD_MEMORY.into(),
            description: "Record something this company should remember (a decision, a \
                          deadline, a commitment, a fact learned)."
                .into(),
            parameters: json!({
                "type": "object",
                "properties": {
                    "text": {"type": "string"},
                    "event_type": {"type": "string"},
                    "workstream": {"type": "string"},
                    "category": {"type": "string"},
                    "importance": {"type": "integer", "minimum": 1, "maximum": 10}
                },
                "required": ["text"],
                "additionalProperties": false
            }),
        });
    }
    if domains.iter().any(|d| d == "knowledge") {
        out.push(ToolSpec {
            name: SEARCH_KNOWLEDGE.into(),
            description: "Search the shared knowledge base (legal frameworks, business \
                          patterns, industry standards)."
                .into(),
            parameters: json!({
                "type": "object",
                "properties": {
                    "query": {"type": "string"},
                    "limit": {"type": "integer", "minimum": 1, "maximum": MAX_HITS},
                    "domain": {"type": "string"}
                },
                "required": ["query"],
                "additionalProperties": false
            }),
        });
    }
    out.push(ToolSpec {
        name: SUBMIT_RESULT.into(),
        description: "Submit the final result of the task. Call it once, at the end.".into(),
        parameters: super::result::schema(),
    });
    out
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchArgs {
    query: String,
    #[serde(default)]
    limit: Option<u32>,
    #[serde(default)]
    workstream: Option<String>,
    #[serde(default)]
    event_type: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordArgs {
    text: String,
    #[serde(default)]
    event_type: Option<String>,
    #[serde(default)]
    workstream: Option<String>,
    #[serde(default)]
    category: Option<String>,
    #[serde(default)]
    importance: Option<i16>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KnowledgeArgs {
    query: String,
    #[serde(default)]
    limit: Option<u32>,
    #[serde(default)]
    domain: Option<String>,
}

/// What a tool call gave back: the text the model sees, and whether it
/// was an error.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolOutput {
    pub content: String,
    pub error: bool,
}

impl ToolOutput {
    fn ok(content: String) -> Self {
        Self {
            content,
            error: false,
        }
    }
    fn err(content: impl Into<String>) -> Self {
        Self {
            content: format!("error: {}", content.into()),
            error: true,
        }
    }
}

fn parse<T: for<'de> Deserialize<'de>>(args: &Value) -> Result<T, ToolOutput> {
    serde_json::from_value(args.clone()).map_err(|e| ToolOutput::err(format!("bad arguments: {e}")))
}

fn limit(l: Option<u32>) -> u32 {
    l.unwrap_or(DEFAULT_HITS).clamp(1, MAX_HITS)
}

/// Runs one tool call for `scope`'s company. `allowed` are the agent's
/// domains; `source` names the task (for memories it records).
pub async fn call(
    engine: &Engine,
    scope: &CompanyScope,
    allowed: &[String],
    name: &str,
    args: &Value,
    source: &str,
    actor: &str,
) -> ToolOutput {
    let domain = match name {
        SEARCH_MEMORY | RECORD_MEMORY => "memory",
        SEARCH_KNOWLEDGE => "knowledge",
        other => return ToolOutput::err(format!("no tool named '{other}'")),
    };
    if !allowed.iter().any(|d| d == domain) {
        return ToolOutput::err(format!("this agent may not use {name}"));
    }
    let out = match name {
        SEARCH_MEMORY => search_memory(engine, scope, args).await,
        RECORD_MEMORY => record_memory(engine, scope, args, source, actor).await,
        _ => search_knowledge(engine, args).await,
    };
    out.unwrap_or_else(|e| e)
}

async fn search_memory(
    engine: &Engine,
    scope: &CompanyScope,
    args: &Value,
) -> Result<ToolOutput, ToolOutput> {
    let a: SearchArgs = parse(args)?;
    let filter = MemoryFilter {
        workstream: a
            .workstream
            .as_deref()
            .map(Workstream::parse)
            .transpose()
            .map_err(|e| ToolOutput::err(e.to_string()))?,
        event_type: a
            .event_type
            .as_deref()
            .map(EventType::parse)
            .transpose()
            .map_err(|e| ToolOutput::err(e.to_string()))?,
        ..MemoryFilter::default()
    };
    let hits = engine
        .memory()
        .search(scope, &a.query, &filter, limit(a.limit))
        .await
        .map_err(|e| ToolOutput::err(e.to_string()))?;
    if hits.is_empty() {
        return Ok(ToolOutput::ok("no matching memories".into()));
    }
    Ok(ToolOutput::ok(
        hits.iter()
            .map(|h| format!("- {}", render_memory(&h.memory)))
            .collect::<Vec<_>>()
            .join("\n"),
    ))
}

async fn record_memory(
    engine: &Engine,
    scope: &CompanyScope,
    args: &Value,
    source: &str,
    actor: &str,
) -> Result<ToolOutput, ToolOutput> {
    let a: RecordArgs = parse(args)?;
    let now = engine.clock().now();
    let bad = |e: kira_core::ValidationError| ToolOutput::err(e.to_string());
    let item = NewMemory {
        occurred_at: now,
        event_type: a
            .event_type
            .as_deref()
            .map_or(Ok(EventType::Note), EventType::parse)
            .map_err(bad)?,
        workstream: a
            .workstream
            .as_deref()
            .map_or(Ok(Workstream::default()), Workstream::parse)
            .map_err(bad)?,
        category: a.category.unwrap_or_else(|| "agent_notes".into()),
        content: json!({"text": a.text}),
        importance: a.importance.unwrap_or(5),
        indexed_terms: Vec::new(),
        source: Some(source.to_owned()),
    };
    let audit = AuditRecord {
        at: now,
        request_id: source.to_owned(),
        actor: actor.to_owned(),
        company_id: Some(scope.company().clone()),
        action: "memory.add".into(),
        target: source.to_owned(),
        outcome: Outcome::Ok,
        detail: "recorded by an agent".into(),
    };
    let stored = engine
        .memory()
        .add(scope, vec![item], false, audit)
        .await
        .map_err(|e| ToolOutput::err(e.to_string()))?;
    Ok(ToolOutput::ok(format!(
        "recorded memory {}",
        stored.first().map(|m| m.id.to_string()).unwrap_or_default()
    )))
}

async fn search_knowledge(engine: &Engine, args: &Value) -> Result<ToolOutput, ToolOutput> {
    let a: KnowledgeArgs = parse(args)?;
    let filter = KnowledgeFilter {
        domain: a.domain,
        ..KnowledgeFilter::default()
    };
    let hits = engine
        .knowledge()
        .search(&a.query, &filter, limit(a.limit))
        .await
        .map_err(|e| ToolOutput::err(e.to_string()))?;
    if hits.is_empty() {
        return Ok(ToolOutput::ok("no matching knowledge entries".into()));
    }
    Ok(ToolOutput::ok(
        hits.iter()
            .map(|h| format!("- [{}/{}] {}", h.entry.domain, h.entry.key, h.entry.text()))
            .collect::<Vec<_>>()
            .join("\n"),
    ))
}
