//! Human output: tables of companies, keys, audit entries, tasks and
//! budgets. No colours, so NO_COLOR and pipes need no special case; scripts
//! use `--json`.

use chrono::{DateTime, Utc};
use comfy_table::{ContentArrangement, Table};
use kira_core::audit::AuditEntry;
use kira_core::auth::ApiKey;
use kira_core::company::{Company, Contact};
use kira_core::task::{Task, TaskEvent};
use kira_store::agents::{Review, Step, StepKind};
use serde_json::Value;

use crate::commands::budget::{BudgetView, EmergencyRequestView};

/// The server's JSON, pretty, for `--json`.
pub fn print_json(v: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Columns and a line under the header, nothing else: easy to read and to
/// copy an id from.
const PLAIN: &str = "    ────           ";

pub fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(PLAIN)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header.to_vec());
    t
}

pub fn time(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%SZ").to_string()
}

fn opt_time(t: &Option<DateTime<Utc>>) -> String {
    t.as_ref().map(time).unwrap_or_default()
}

pub fn companies(list: &[Company]) -> String {
    if list.is_empty() {
        return "no companies".to_owned();
    }
    let mut t = table(&[
        "ID",
        "NAME",
        "INDUSTRY",
        "JURISDICTION",
        "PRIORITY",
        "SLA (s)",
        "STATUS",
    ]);
    for c in list {
        let p = &c.profile;
        t.add_row(vec![
            c.id.to_string(),
            p.name.clone(),
            p.industry.clone(),
            p.jurisdiction.clone(),
            format!("{}", p.priority_multiplier),
            p.sla_response_seconds.to_string(),
            if c.is_archived() {
                "archived"
            } else {
                "active"
            }
            .to_owned(),
        ]);
    }
    t.to_string()
}

fn contact(c: &Contact) -> String {
    let mut s = c.name.clone();
    if let Some(e) = &c.email {
        s.push_str(&format!(" <{e}>"));
    }
    if let Some(w) = &c.webhook {
        s.push_str(&format!(" webhook {w}"));
    }
    s
}

pub fn company(c: &Company) -> String {
    let p = &c.profile;
    let mut t = table(&["FIELD", "VALUE"]);
    let contacts: Vec<String> = p.contacts.iter().map(contact).collect();
    let consent: Vec<&str> = p.sharing_consent.iter().map(String::as_str).collect();
    let rows: [(&str, String); 14] = [
        ("id", c.id.to_string()),
        ("name", p.name.clone()),
        ("industry", p.industry.clone()),
        ("jurisdiction", p.jurisdiction.clone()),
        ("revenue (USD)", p.revenue_usd.to_string()),
        ("complexity", p.complexity_score.to_string()),
        ("activity", p.activity_score.to_string()),
        ("priority multiplier", p.priority_multiplier.to_string()),
        ("SLA response (s)", p.sla_response_seconds.to_string()),
        ("contacts", contacts.join("\n")),
        ("old sharing list (grants nothing)", consent.join(", ")),
        ("created", time(&c.created_at)),
        ("updated", time(&c.updated_at)),
        ("archived", opt_time(&c.archived_at)),
    ];
    for (k, v) in rows {
        t.add_row(vec![k.to_owned(), v]);
    }
    t.to_string()
}

pub fn keys(list: &[ApiKey]) -> String {
    if list.is_empty() {
        return "no keys".to_owned();
    }
    let mut t = table(&["ID", "NAME", "ROLE", "COMPANY", "CREATED", "REVOKED"]);
    for k in list {
        t.add_row(vec![
            k.id.to_string(),
            k.name.clone(),
            k.role.to_string(),
            k.company_id
                .as_ref()
                .map(|c| c.to_string())
                .unwrap_or_default(),
            time(&k.created_at),
            opt_time(&k.revoked_at),
        ]);
    }
    t.to_string()
}

pub fn audit(list: &[AuditEntry]) -> String {
    if list.is_empty() {
        return "no audit entries".to_owned();
    }
    let mut t = table(&[
        "SEQ", "AT", "ACTOR", "COMPANY", "ACTION", "TARGET", "OUTCOME", "DETAIL",
    ]);
    for e in list {
        t.add_row(vec![
            e.seq.to_string(),
            time(&e.at),
            e.actor.clone(),
            e.company_id
                .as_ref()
                .map(|c| c.to_string())
                .unwrap_or_default(),
            e.action.clone(),
            e.target.clone(),
            e.outcome.as_str().to_owned(),
            e.detail.clone(),
        ]);
    }
    t.to_string()
}

/// US dollars to a hundredth of a cent: task costs are often fractions of
/// a cent.
pub fn usd(v: f64) -> String {
    format!("${v:.4}")
}

fn tokens_used(t: &Task) -> i64 {
    t.prompt_tokens.saturating_add(t.completion_tokens)
}

pub fn tasks(list: &[Task]) -> String {
    if list.is_empty() {
        return "no tasks".to_owned();
    }
    let mut t = table(&[
        "ID", "TYPE", "PRIORITY", "STATUS", "AGENT", "TOKENS", "COST", "CREATED",
    ]);
    for task in list {
        t.add_row(vec![
            task.task_id.to_string(),
            task.task_type.clone(),
            task.priority.to_string(),
            task.status.to_string(),
            task.agent.clone(),
            tokens_used(task).to_string(),
            usd(task.cost_usd),
            time(&task.created_at),
        ]);
    }
    t.to_string()
}

/// A JSON value to read: a string as itself, anything else pretty-printed.
fn json_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        v => serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string()),
    }
}

/// Long parameters (a whole document) are cut; `--json` shows them all.
const PARAMETERS_SHOWN: usize = 300;

/// One task: first SEED 1's response, then what it used and when, then
/// the request as submitted.
pub fn task(task: &Task) -> String {
    let mut t = table(&["FIELD", "VALUE"]);
    let parameters = match &task.parameters {
        Value::Null => String::new(),
        Value::Object(m) if m.is_empty() => String::new(),
        v => {
            let text = v.to_string();
            if text.chars().count() > PARAMETERS_SHOWN {
                let cut: String = text.chars().take(PARAMETERS_SHOWN).collect();
                format!("{cut}... ({} bytes; see --json)", text.len())
            } else {
                text
            }
        }
    };
    let run_time = match (task.started_at, task.finished_at) {
        (Some(start), Some(end)) => {
            let ms = (end - start).num_milliseconds();
            format!("{}.{:03} s", ms / 1000, ms % 1000)
        }
        _ => String::new(),
    };
    let rows: Vec<(&str, String)> = vec![
        ("task_id", task.task_id.to_string()),
        ("status", task.status.to_string()),
        (
            "result",
            task.result.as_ref().map(json_text).unwrap_or_default(),
        ),
        (
            "confidence",
            task.confidence.map(|c| c.to_string()).unwrap_or_default(),
        ),
        (
            "requires_human_review",
            task.requires_human_review.to_string(),
        ),
        ("status reason", task.status_reason.clone()),
        ("last error", task.last_error.clone().unwrap_or_default()),
        (
            "tokens",
            format!(
                "{} (prompt {}, completion {})",
                tokens_used(task),
                task.prompt_tokens,
                task.completion_tokens
            ),
        ),
        ("estimated tokens", task.estimated_tokens.to_string()),
        ("cost", usd(task.cost_usd)),
        (
            "attempts",
            format!("{} of {}", task.attempts, task.max_attempts),
        ),
        ("created", time(&task.created_at)),
        ("started", opt_time(&task.started_at)),
        ("finished", opt_time(&task.finished_at)),
        ("run time", run_time),
        ("company", task.company_id.to_string()),
        ("task", task.task.clone()),
        ("type", task.task_type.clone()),
        ("priority", task.priority.to_string()),
        ("deadline", opt_time(&task.deadline)),
        ("specialist", task.specialist.clone().unwrap_or_default()),
        ("agent", task.agent.clone()),
        ("parameters", parameters),
    ];
    for (k, v) in rows {
        t.add_row(vec![k.to_owned(), v]);
    }
    t.to_string()
}

/// One status change, on one line: `kira task watch` prints these as they
/// come.
pub fn task_event(e: &TaskEvent) -> String {
    let change = match e.from_status {
        Some(from) => format!("{from} -> {}", e.to_status),
        None => e.to_status.to_string(),
    };
    let mut line = format!("{}  {}  {change}", time(&e.at), e.task_id);
    if !e.reason.is_empty() {
        line.push_str(&format!(": {}", e.reason));
    }
    line
}

fn percent(share: f64) -> String {
    format!("{:.1}%", share * 100.0)
}

/// The period, then its pools, each company's allocation and use, and
/// the emergency requests waiting for a decision.
pub fn budget(b: &BudgetView) -> String {
    let mut out = format!(
        "period {} ({} to {}): {} tokens\n\n",
        b.period_id,
        time(&b.starts_at),
        time(&b.ends_at),
        b.total_tokens
    );
    // A company key is shown no pools: their totals are every company's.
    if !b.pools.is_empty() {
        let mut pools = table(&[
            "POOL",
            "CAPACITY",
            "RESERVED",
            "SPENT",
            "REMAINING",
            "OVERDRAFT",
        ]);
        for p in &b.pools {
            pools.add_row(vec![
                p.pool.clone(),
                p.capacity.to_string(),
                p.reserved.to_string(),
                p.spent.to_string(),
                p.remaining.to_string(),
                p.overdraft.to_string(),
            ]);
        }
        out.push_str(&pools.to_string());
        out.push_str("\n\n");
    }
    if b.companies.is_empty() {
        out.push_str("no companies with an allocation");
    } else {
        let mut companies = table(&[
            "COMPANY",
            "FACTOR",
            "SHARE",
            "ALLOCATION",
            "RESERVED",
            "SPENT",
            "REMAINING",
            "OVERDRAFT",
            "ALL POOLS",
            "BURN/DAY",
            "PROJECTED",
            "COST",
        ]);
        for c in &b.companies {
            companies.add_row(vec![
                c.company_id.clone(),
                format!("{:.3}", c.factor),
                percent(c.share),
                c.allocation.to_string(),
                c.reserved.to_string(),
                c.spent.to_string(),
                c.remaining.to_string(),
                c.overdraft.to_string(),
                c.spent_all_pools.to_string(),
                format!("{:.0}", c.burn_rate_per_day),
                c.projected_period_use.to_string(),
                usd(c.cost_usd),
            ]);
        }
        out.push_str(&companies.to_string());
        for c in b.companies.iter().filter(|c| c.overdraft > 0) {
            out.push_str(&format!(
                "\n{} is overdrawn by {} tokens (the provider reported more than it had): \
                 its work waits for the next period or an approved emergency grant",
                c.company_id, c.overdraft
            ));
        }
    }
    out.push_str("\n\n");
    out.push_str(&emergency_requests(&b.pending_requests, true));
    out
}

/// Emergency token requests; `pending` says which were asked for, for the
/// empty message.
pub fn emergency_requests(list: &[EmergencyRequestView], pending: bool) -> String {
    if list.is_empty() {
        return if pending {
            "no pending emergency requests".to_owned()
        } else {
            "no emergency requests".to_owned()
        };
    }
    let mut t = table(&[
        "REQUEST",
        "COMPANY",
        "TASK",
        "AMOUNT",
        "STATUS",
        "REQUESTED",
        "REASON",
        "DECIDED",
        "BY",
        "NOTE",
    ]);
    for r in list {
        t.add_row(vec![
            r.request_id.clone(),
            r.company_id.clone(),
            r.task_id.clone(),
            r.amount.to_string(),
            r.status.clone(),
            time(&r.requested_at),
            r.reason.clone(),
            opt_time(&r.decided_at),
            r.decided_by.clone().unwrap_or_default(),
            r.decision.clone().unwrap_or_default(),
        ]);
    }
    t.to_string()
}

/// The widest a one-line summary of a step, a result or feedback gets in
/// a table; `--json` shows everything.
const LINE_SHOWN: usize = 80;

/// `s` on one line (whitespace runs made one space), cut to `max`
/// characters with an ellipsis.
pub fn one_line(s: &str, max: usize) -> String {
    let flat = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= max {
        return flat;
    }
    let cut: String = flat.chars().take(max.saturating_sub(1)).collect();
    format!("{}…", cut.trim_end())
}

/// A JSON value's text: a string as itself, anything else compact.
fn compact(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        v => v.to_string(),
    }
}

/// What one step did, in a line: the model's answer or the tools it
/// called, a tool's call and outcome, a message's gist, how a run ended.
pub fn step_summary(s: &Step) -> String {
    let d = &s.detail;
    let field = |k: &str| d.get(k).map(compact).unwrap_or_default();
    let text = match s.kind {
        StepKind::Llm => {
            let calls: Vec<String> = d
                .get("tool_calls")
                .and_then(Value::as_array)
                .map(|calls| {
                    calls
                        .iter()
                        .map(|c| c.get("name").map(compact).unwrap_or_default())
                        .collect()
                })
                .unwrap_or_default();
            let mut line = [field("model"), field("finish_reason")]
                .into_iter()
                .filter(|p| !p.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
            let said = if calls.is_empty() {
                field("content")
            } else {
                format!("calls {}", calls.join(", "))
            };
            if !said.is_empty() {
                if !line.is_empty() {
                    line.push_str(": ");
                }
                line.push_str(&said);
            }
            line
        }
        StepKind::Tool => {
            let outcome = match (d.get("error"), d.get("result")) {
                (Some(e), _) if !e.is_null() => format!("error: {}", compact(e)),
                (_, Some(r)) => format!("-> {}", compact(r)),
                _ => String::new(),
            };
            format!("{}({}) {outcome}", field("name"), field("arguments"))
        }
        StepKind::TaskMessage => match d.get("task") {
            Some(t) => compact(t),
            None => compact(d),
        },
        StepKind::ResponseMessage => {
            let summary = d
                .get("result")
                .and_then(|r| r.get("summary"))
                .map(compact)
                .unwrap_or_default();
            let mut parts = vec![field("status")];
            if let Some(c) = d.get("confidence").filter(|c| !c.is_null()) {
                parts.push(format!("confidence {}", compact(c)));
            }
            parts.push(summary);
            let line = parts
                .into_iter()
                .filter(|p| !p.is_empty())
                .collect::<Vec<_>>()
                .join(", ");
            if line.is_empty() { compact(d) } else { line }
        }
        StepKind::End => {
            let mut line = field("status");
            for (k, label) in [("reason", ""), ("limit", "limit ")] {
                let v = field(k);
                if !v.is_empty() {
                    line.push_str(&format!("; {label}{v}"));
                }
            }
            line
        }
    };
    one_line(&text, LINE_SHOWN)
}

/// A run's steps as a table, in order.
pub fn steps(list: &[Step]) -> String {
    if list.is_empty() {
        return "no steps recorded".to_owned();
    }
    let mut t = table(&[
        "ATTEMPT",
        "SEQ",
        "AGENT",
        "KIND",
        "TOKENS (in/out)",
        "LATENCY",
        "DETAIL",
    ]);
    for s in list {
        t.add_row(vec![
            s.attempt.to_string(),
            s.seq.to_string(),
            s.agent.clone(),
            s.kind.as_str().to_owned(),
            format!("{}/{}", s.prompt_tokens, s.completion_tokens),
            format!("{} ms", s.latency_ms),
            step_summary(s),
        ]);
    }
    let prompt: i64 = list.iter().map(|s| s.prompt_tokens).sum();
    let completion: i64 = list.iter().map(|s| s.completion_tokens).sum();
    let ms: i64 = list.iter().map(|s| s.latency_ms).sum();
    format!(
        "{t}\n{} steps, {prompt}/{completion} tokens, {ms} ms",
        list.len()
    )
}

/// The task and response messages among a run's steps (SEED 1's messages
/// between the primary agent and a specialist), each in full; None when
/// there are none.
pub fn messages(list: &[Step]) -> Option<String> {
    let shown: Vec<String> = list
        .iter()
        .filter(|s| matches!(s.kind, StepKind::TaskMessage | StepKind::ResponseMessage))
        .map(|s| {
            let what = match s.kind {
                StepKind::TaskMessage => "task message",
                _ => "response message",
            };
            format!(
                "attempt {}, step {}: {what} ({}, {})\n{}",
                s.attempt,
                s.seq,
                s.agent,
                time(&s.at),
                json_text(&s.detail)
            )
        })
        .collect();
    (!shown.is_empty()).then(|| shown.join("\n\n"))
}

/// A task's result in a line: its summary, else its answer, else the JSON.
pub fn result_line(result: Option<&Value>) -> String {
    let Some(r) = result else {
        return String::new();
    };
    let text = ["summary", "answer"]
        .iter()
        .find_map(|k| r.get(k).and_then(Value::as_str))
        .map_or_else(|| compact(r), str::to_owned);
    one_line(&text, LINE_SHOWN)
}

/// Tasks waiting for a reviewer.
pub fn review_queue(list: &[Task]) -> String {
    if list.is_empty() {
        return "no tasks wait for review".to_owned();
    }
    let mut t = table(&[
        "ID",
        "TYPE",
        "PRIORITY",
        "AGENT",
        "CONFIDENCE",
        "FINISHED",
        "RESULT",
    ]);
    for task in list {
        t.add_row(vec![
            task.task_id.to_string(),
            task.task_type.clone(),
            task.priority.to_string(),
            task.agent.clone(),
            task.confidence
                .map(|c| format!("{c:.2}"))
                .unwrap_or_default(),
            opt_time(&task.finished_at),
            result_line(task.result.as_ref()),
        ]);
    }
    t.to_string()
}

/// A task's reviews, oldest first.
pub fn reviews(list: &[Review]) -> String {
    if list.is_empty() {
        return "no reviews".to_owned();
    }
    let mut t = table(&[
        "AT",
        "DECISION",
        "RATING",
        "REVIEWER",
        "FEEDBACK",
        "EDITED RESULT",
    ]);
    for r in list {
        t.add_row(vec![
            time(&r.at),
            r.decision.clone(),
            r.rating.map(|n| n.to_string()).unwrap_or_default(),
            r.reviewer.clone(),
            r.feedback
                .as_deref()
                .map(|f| one_line(f, LINE_SHOWN))
                .unwrap_or_default(),
            result_line(r.edited_result.as_ref()),
        ]);
    }
    t.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_company_keys_budget_shows_no_pool_table() {
        let view = |pools: Value| -> crate::commands::budget::BudgetView {
            serde_json::from_value(serde_json::json!({
                "period_id": "2026-12", "starts_at": "2026-12-01T00:00:00Z",
                "ends_at": "2027-01-01T00:00:00Z", "total_tokens": 1000, "pools": pools,
                "companies": [{"company_id": "acme", "factor": 0.5, "share": 1.0,
                    "allocation": 700, "reserved": 0, "spent": 5, "remaining": 695,
                    "spent_all_pools": 5, "burn_rate_per_day": 1.0,
                    "projected_period_use": 30, "cost_usd": 0.0}],
                "pending_requests": []
            }))
            .expect("view")
        };
        let own = budget(&view(serde_json::json!([])));
        assert!(!own.contains("CAPACITY"), "{own}");
        assert!(own.contains("acme"), "{own}");
        let all = budget(&view(serde_json::json!([
            {"pool": "base", "capacity": 700, "reserved": 0, "spent": 5, "remaining": 695}
        ])));
        assert!(all.contains("CAPACITY") && all.contains("base"), "{all}");
        assert!(!all.contains("overdrawn"), "{all}");
    }

    #[test]
    fn an_overdrawn_company_is_named_with_its_overdraft() {
        let b: crate::commands::budget::BudgetView = serde_json::from_value(serde_json::json!({
            "period_id": "2026-12", "starts_at": "2026-12-01T00:00:00Z",
            "ends_at": "2027-01-01T00:00:00Z", "total_tokens": 1000, "pools": [],
            "companies": [{"company_id": "acme", "factor": 0.5, "share": 1.0,
                "allocation": 700, "reserved": 0, "spent": 740, "remaining": -40,
                "overdraft": 40, "spent_all_pools": 740, "burn_rate_per_day": 1.0,
                "projected_period_use": 30, "cost_usd": 0.0}],
            "pending_requests": []
        }))
        .expect("view");
        let shown = budget(&b);
        assert!(
            shown.contains("OVERDRAFT") && shown.contains("-40"),
            "{shown}"
        );
        assert!(shown.contains("acme is overdrawn by 40 tokens"), "{shown}");
    }

    fn step(kind: StepKind, detail: Value) -> Step {
        Step {
            task_id: kira_core::task::TaskId::parse("acme_legal_001").expect("id"),
            attempt: 1,
            seq: 0,
            agent: "legal".into(),
            kind,
            prompt_tokens: 0,
            completion_tokens: 0,
            latency_ms: 0,
            detail,
            at: DateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn each_step_kind_reads_as_one_line() {
        use serde_json::json;
        let cases = [
            (
                step(
                    StepKind::Llm,
                    json!({"model": "m", "finish_reason": "stop", "content": "Fine.\nReally.", "tool_calls": []}),
                ),
                "m stop: Fine. Really.",
            ),
            (
                step(
                    StepKind::Tool,
                    json!({"name": "fetch", "arguments": {"id": 1}, "error": "timeout"}),
                ),
                "fetch({\"id\":1}) error: timeout",
            ),
            (
                step(
                    StepKind::End,
                    json!({"status": "needs_review", "reason": "step limit", "limit": "max_steps"}),
                ),
                "needs_review; step limit; limit max_steps",
            ),
            (step(StepKind::TaskMessage, json!({"x": 1})), "{\"x\":1}"),
            (step(StepKind::ResponseMessage, json!({})), "{}"),
        ];
        for (s, want) in cases {
            assert_eq!(step_summary(&s), want);
        }
        let long = step(StepKind::Llm, json!({"content": "word ".repeat(100)}));
        let line = step_summary(&long);
        assert_eq!(line.chars().count(), LINE_SHOWN);
        assert!(
            line.starts_with("word word") && line.ends_with('…'),
            "{line}"
        );
    }

    fn sample_company() -> Company {
        serde_json::from_value(serde_json::json!({
            "id": "acme", "name": "Acme Corp", "industry": "fintech", "jurisdiction": "US-DE",
            "revenue_usd": 1000, "complexity_score": 0.5, "activity_score": 0.25,
            "priority_multiplier": 1.5, "sla_response_seconds": 30,
            "contacts": [{"name": "Jane Doe", "email": "jane@x.com"}],
            "sharing_consent": ["process_templates"],
            "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-02T00:00:00Z",
            "archived_at": null
        }))
        .expect("valid company")
    }

    #[test]
    fn company_tables_show_the_fields_an_operator_reads() {
        let c = sample_company();
        let list = companies(std::slice::from_ref(&c));
        for s in ["acme", "Acme Corp", "US-DE", "1.5", "active"] {
            assert!(list.contains(s), "{s} missing from\n{list}");
        }
        let one = company(&c);
        for s in [
            "Jane Doe <jane@x.com>",
            "process_templates",
            "2026-01-02 00:00:00Z",
        ] {
            assert!(one.contains(s), "{s} missing from\n{one}");
        }
        assert_eq!(companies(&[]), "no companies");
    }

    fn sample_task() -> Task {
        serde_json::from_value(serde_json::json!({
            "task_id": "acme_legal_001", "company_id": "acme",
            "company_context": {"id": "acme"}, "task": "Review the NDA",
            "type": "document_review", "priority": "high",
            "deadline": "2030-01-15T17:00:00Z", "parameters": {"pages": 3},
            "specialist": null, "agent": "legal", "status": "completed",
            "status_reason": "", "attempts": 1, "max_attempts": 3,
            "estimated_tokens": 3010,
            "result": {"simulated": true, "summary": "Simulated result"},
            "confidence": 0.9, "requires_human_review": false, "last_error": null,
            "prompt_tokens": 1500, "completion_tokens": 500, "cost_usd": 0.0125,
            "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:02Z",
            "started_at": "2026-01-01T00:00:01Z", "finished_at": "2026-01-01T00:00:02.250Z"
        }))
        .expect("valid task")
    }

    #[test]
    fn task_tables_show_response_usage_and_request() {
        let t = sample_task();
        let list = tasks(std::slice::from_ref(&t));
        for s in [
            "acme_legal_001",
            "document_review",
            "high",
            "completed",
            "legal",
            "2000",
            "$0.0125",
        ] {
            assert!(list.contains(s), "{s} missing from\n{list}");
        }
        let one = task(&t);
        for s in [
            "requires_human_review",
            "Simulated result",
            "2000 (prompt 1500, completion 500)",
            "1 of 3",
            "1.250 s",
            "Review the NDA",
            "2030-01-15 17:00:00Z",
            "{\"pages\":3}",
        ] {
            assert!(one.contains(s), "{s} missing from\n{one}");
        }
        assert_eq!(tasks(&[]), "no tasks");
    }

    #[test]
    fn events_are_one_line_each() {
        let e: TaskEvent = serde_json::from_value(serde_json::json!({
            "event_id": 4, "task_id": "acme_legal_001", "at": "2026-01-01T00:00:01Z",
            "from_status": "queued", "to_status": "running", "reason": "claimed by worker-1"
        }))
        .expect("valid event");
        assert_eq!(
            task_event(&e),
            "2026-01-01 00:00:01Z  acme_legal_001  queued -> running: claimed by worker-1"
        );
    }
}
