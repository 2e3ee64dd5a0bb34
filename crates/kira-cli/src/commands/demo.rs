//! `kira demo`: three companies of different industries and jurisdictions,
//! their memories, a small shared knowledge base and a set of tasks, sent
//! to a running server through its API like any other client; then what
//! became of each task (its agent, tokens, cost, confidence, review).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use chrono::{DateTime, TimeDelta, Utc};
use clap::{Args, CommandFactory};
use kira_core::CompanyId;
use kira_core::clock::{Clock, SystemClock};
use kira_core::company::{Company, NewCompany};
use kira_core::knowledge::NewKnowledge;
use kira_core::memory::NewMemory;
use kira_core::task::{Priority, Task, TaskRequest, TaskStatus};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::time::Instant;

use super::Ctx;
use crate::client::{ApiError, decode};
use crate::output;

/// The demo's companies, memories, knowledge and tasks: written by hand,
/// compiled in, so the demo needs no file and no network.
const DATA: &str = include_str!("demo_data.json");

/// Every knowledge entry the demo writes carries this tag, so
/// `kira knowledge list --tag kira-demo` finds them.
const DEMO_TAG: &str = "kira-demo";

/// The `source` of every memory the demo records.
const DEMO_SOURCE: &str = "kira demo";

/// How often unfinished tasks are read again.
const POLL: Duration = Duration::from_secs(1);

/// When nothing has left the queue after this long, the server probably
/// runs no executor: say so rather than wait in silence.
const IDLE_HINT_AFTER: Duration = Duration::from_secs(30);

#[derive(Debug, Args)]
#[command(
    after_help = "Run `kira serve` in one terminal and `kira demo` in another. On the local \
model a task takes tens of seconds on a small machine, so the default wait is generous. \
Running the demo again with the same --prefix reuses its companies (their memories are \
not added twice) and submits a new set of tasks."
)]
pub struct DemoArgs {
    /// The demo's company ids are PREFIX-ledgerline, PREFIX-hofmann and
    /// PREFIX-brightdesk; its knowledge keys start with PREFIX.
    #[arg(long, default_value = "demo", value_name = "PREFIX")]
    pub prefix: String,
    /// How many of the demo's tasks to submit, in order (the first six
    /// cover every task type and priority from low to urgent).
    #[arg(long, default_value_t = 6, value_name = "N")]
    pub tasks: usize,
    /// Wait at most this long for every task to finish or wait for review.
    #[arg(
        long,
        default_value_t = 600,
        value_name = "SECONDS",
        conflicts_with = "no_wait"
    )]
    pub wait: u64,
    /// Submit the tasks, print their ids and return without waiting.
    #[arg(long)]
    pub no_wait: bool,
}

/// The data file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Data {
    companies: Vec<DataCompany>,
    knowledge: Vec<NewKnowledge>,
    tasks: Vec<DataTask>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DataCompany {
    /// The company id is `<prefix>-<suffix>`.
    suffix: String,
    /// A create request without its id.
    profile: Map<String, Value>,
    memories: Vec<DataMemory>,
}

/// A memory dated relative to the run, so the demo's memories fall in the
/// hot, warm and cold layers whenever it runs.
#[derive(Debug, Deserialize)]
struct DataMemory {
    days_ago: i64,
    #[serde(flatten)]
    fields: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DataTask {
    /// The company's suffix.
    company: String,
    #[serde(rename = "type")]
    task_type: String,
    priority: Priority,
    task: String,
    #[serde(default)]
    parameters: Option<Value>,
}

/// What one run sends, every request body typed and checked before the
/// first request, so a bad prefix or a broken data file changes nothing.
#[derive(Debug)]
struct Plan {
    companies: Vec<PlannedCompany>,
    knowledge: Vec<NewKnowledge>,
    tasks: Vec<(CompanyId, TaskRequest)>,
}

#[derive(Debug)]
struct PlannedCompany {
    id: CompanyId,
    body: NewCompany,
    memories: Vec<NewMemory>,
}

fn data() -> anyhow::Result<Data> {
    serde_json::from_str(DATA).context("the demo's built-in data is not valid")
}

fn plan(data: Data, prefix: &str, tasks: usize, now: DateTime<Utc>) -> anyhow::Result<Plan> {
    if !(1..=data.tasks.len()).contains(&tasks) {
        bail!(
            "--tasks must be between 1 and {} (the demo has {} tasks)",
            data.tasks.len(),
            data.tasks.len()
        );
    }
    let company_id = |suffix: &str| {
        CompanyId::parse(&format!("{prefix}-{suffix}")).map_err(|e| {
            anyhow::anyhow!(
                "--prefix '{prefix}' does not make a valid company id ({prefix}-{suffix}): \
                 the id {}",
                e.message
            )
        })
    };
    let mut companies = Vec::with_capacity(data.companies.len());
    for c in data.companies {
        let id = company_id(&c.suffix)?;
        let mut profile = c.profile;
        profile.insert("id".into(), json!(id));
        let body: NewCompany = serde_json::from_value(Value::Object(profile))
            .with_context(|| format!("the demo's company {} is not valid", c.suffix))?;
        let memories = c
            .memories
            .into_iter()
            .map(|m| {
                let mut fields = m.fields;
                fields.insert(
                    "occurred_at".into(),
                    json!(now - TimeDelta::days(m.days_ago)),
                );
                fields.insert("source".into(), json!(DEMO_SOURCE));
                serde_json::from_value::<NewMemory>(Value::Object(fields))
            })
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("a memory of the demo's company {} is not valid", c.suffix))?;
        companies.push(PlannedCompany { id, body, memories });
    }
    let knowledge = data
        .knowledge
        .into_iter()
        .map(|mut k| {
            // Prefixed, so the demo never overwrites an entry of the
            // operator's own under the same (domain, key).
            k.key = format!("{prefix}.{}", k.key);
            k.tags.push(DEMO_TAG.to_owned());
            k
        })
        .collect();
    let tasks = data
        .tasks
        .into_iter()
        .take(tasks)
        .map(|t| {
            let id = company_id(&t.company)?;
            Ok((
                id,
                TaskRequest {
                    task: t.task,
                    task_type: t.task_type,
                    priority: t.priority,
                    deadline: None,
                    parameters: t.parameters,
                    specialist: None,
                },
            ))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Plan {
        companies,
        knowledge,
        tasks,
    })
}

/// What the demo found or made for one company.
#[derive(Debug, Serialize)]
struct CompanySetup {
    id: String,
    name: String,
    industry: String,
    jurisdiction: String,
    /// False when a company of this id was already there (a rerun).
    created: bool,
    /// Memories recorded by this run: none when the company already had some.
    memories_imported: usize,
}

#[derive(Debug, Deserialize)]
struct Whoami {
    role: String,
    company_id: Option<String>,
}

#[derive(Debug, Deserialize)]
struct MemoryPage {
    memories: Vec<Value>,
}

#[derive(Debug, Deserialize)]
struct Entries {
    entries: Vec<Value>,
}

/// An error of one step, saying which step: the server's message alone
/// ("must be between 0 and 1") would not say what the demo was doing.
fn step(what: &str) -> impl FnOnce(anyhow::Error) -> anyhow::Error + '_ {
    move |e| match e.downcast_ref::<ApiError>() {
        Some(api) => anyhow::anyhow!("{what}: {api}"),
        None => e.context(what.to_owned()),
    }
}

pub async fn run(ctx: &Ctx, args: DemoArgs) -> anyhow::Result<ExitCode> {
    let plan = plan(data()?, &args.prefix, args.tasks, SystemClock.now())?;
    // Progress goes where it does not mix with --json's one document.
    let say = |line: &str| {
        if ctx.json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    };
    check_admin(ctx).await?;

    let mut companies = Vec::with_capacity(plan.companies.len());
    for c in &plan.companies {
        companies.push(set_up(ctx, c).await?);
    }
    say(&companies_table(&companies));

    let v = ctx
        .client
        .post(
            &["v1", "knowledge"],
            Some(&json!({ "entries": plan.knowledge })),
        )
        .await
        .map_err(step("adding the demo's knowledge base"))?;
    let knowledge = decode::<Entries>(v)?.entries.len();
    say(&format!(
        "\nknowledge base: {knowledge} entries written (kira knowledge list --tag {DEMO_TAG})"
    ));

    say("");
    let mut tasks = Vec::with_capacity(plan.tasks.len());
    for (company, req) in &plan.tasks {
        let v = ctx
            .client
            .post(
                &["v1", "companies", company.as_str(), "tasks"],
                Some(&json!(req)),
            )
            .await
            .map_err(step(&format!(
                "submitting a {} task to {company}",
                req.task_type
            )))?;
        let task: Task = decode(v)?;
        say(&format!(
            "submitted {} ({}, {}) to agent {}",
            task.task_id, task.task_type, task.priority, task.agent
        ));
        tasks.push(task);
    }

    let waited = if args.no_wait {
        None
    } else {
        let wait = Duration::from_secs(args.wait);
        say(&format!(
            "\nwaiting up to {} s for {} tasks (on the local model each takes tens of seconds)",
            args.wait,
            tasks.len()
        ));
        Some(follow(ctx, &mut tasks, wait, &say).await?)
    };

    let summary = Summary::of(&tasks);
    if ctx.json {
        output::print_json(&json!({
            "prefix": args.prefix,
            "companies": companies,
            "knowledge_entries": knowledge,
            "tasks": tasks,
            "summary": summary,
            "waited_seconds": waited.map(|d| d.as_secs()),
        }))?;
    } else {
        println!("\n{}", tasks_table(&tasks));
        println!("\n{}", summary.line(waited.is_some()));
        for t in &tasks {
            if t.status == TaskStatus::Failed {
                let why = t.last_error.as_deref().unwrap_or(&t.status_reason);
                println!("{} failed: {why}", t.task_id);
            }
        }
        println!("\n{}", hints(&tasks, &plan).join("\n"));
    }
    // The report is out either way; the exit status says whether the
    // demo worked, for scripts.
    if waited.is_some() && (summary.failed > 0 || summary.unfinished > 0) {
        bail!(
            "of {} tasks, {} failed and {} did not finish within {} s (--wait)",
            tasks.len(),
            summary.failed,
            summary.unfinished,
            args.wait
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The demo creates companies and writes the shared knowledge base: both
/// need an admin key, so a lesser one is refused before anything changes.
/// This is also the first request, so an unreachable server is named here.
async fn check_admin(ctx: &Ctx) -> anyhow::Result<()> {
    let v = match ctx.client.get(&["v1", "whoami"], &[]).await {
        Ok(v) => v,
        Err(e) if e.downcast_ref::<ApiError>().is_some() => return Err(e),
        Err(e) => {
            return Err(e.context(
                "kira demo needs a running server: start one with `kira serve` in another \
                 terminal, or point --url at yours",
            ));
        }
    };
    let w: Whoami = decode(v)?;
    if w.role != "admin" {
        let whose = w
            .company_id
            .map(|c| format!(" of company {c}"))
            .unwrap_or_default();
        bail!(
            "kira demo creates companies and knowledge, which needs an admin key; \
             this token is a {} key{whose}",
            w.role
        );
    }
    Ok(())
}

/// Creates the company, or finds it from an earlier run; records its
/// memories unless it already has some, so a rerun adds none twice (an
/// import is one transaction: a company has all of them or none).
async fn set_up(ctx: &Ctx, c: &PlannedCompany) -> anyhow::Result<CompanySetup> {
    let client = &ctx.client;
    let id = c.id.as_str();
    let (company, created) = match client
        .post(&["v1", "companies"], Some(&json!(c.body)))
        .await
    {
        Ok(v) => (decode::<Company>(v)?, true),
        Err(e)
            if e.downcast_ref::<ApiError>()
                .is_some_and(|a| a.status == 409) =>
        {
            let v = client
                .get(&["v1", "companies", id], &[])
                .await
                .map_err(step(&format!("reading company {id}")))?;
            (decode::<Company>(v)?, false)
        }
        Err(e) => return Err(step(&format!("creating company {id}"))(e)),
    };
    if company.is_archived() {
        bail!(
            "company {id} exists but is archived, so the demo cannot use it; \
             run with another --prefix"
        );
    }
    let existing = if created {
        0
    } else {
        let v = client
            .get(
                &["v1", "companies", id, "memory"],
                &[
                    ("limit", "1".to_owned()),
                    ("archived", "include".to_owned()),
                ],
            )
            .await
            .map_err(step(&format!("reading the memories of {id}")))?;
        decode::<MemoryPage>(v)?.memories.len()
    };
    let memories_imported = if existing == 0 {
        client
            .post(
                &["v1", "companies", id, "memory"],
                Some(&json!({ "memories": c.memories })),
            )
            .await
            .map_err(step(&format!("recording the memories of {id}")))?;
        c.memories.len()
    } else {
        0
    };
    let p = company.profile;
    Ok(CompanySetup {
        id: id.to_owned(),
        name: p.name,
        industry: p.industry,
        jurisdiction: p.jurisdiction,
        created,
        memories_imported,
    })
}

/// Where a task stops changing without a human: finished, waiting for a
/// reviewer, or waiting for someone to grant emergency tokens.
fn settled(s: TaskStatus) -> bool {
    s.is_final() || matches!(s, TaskStatus::NeedsReview | TaskStatus::AwaitingApproval)
}

/// Reads unsettled tasks again until all are settled or `wait` is over,
/// saying each status change as it is seen; how long it waited.
async fn follow(
    ctx: &Ctx,
    tasks: &mut [Task],
    wait: Duration,
    say: &impl Fn(&str),
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let mut started = false;
    let mut hinted = false;
    while tasks.iter().any(|t| !settled(t.status)) && start.elapsed() < wait {
        tokio::time::sleep(POLL.min(wait.saturating_sub(start.elapsed()))).await;
        for t in tasks.iter_mut().filter(|t| !settled(t.status)) {
            let v = ctx
                .client
                .get(
                    &[
                        "v1",
                        "companies",
                        t.company_id.as_str(),
                        "tasks",
                        t.task_id.as_str(),
                    ],
                    &[],
                )
                .await
                .map_err(step(&format!("reading task {}", t.task_id)))?;
            let now: Task = decode(v)?;
            if now.status != t.status {
                say(&format!(
                    "[{:>4} s] {}  {} -> {}",
                    start.elapsed().as_secs(),
                    now.task_id,
                    t.status,
                    now.status
                ));
            }
            *t = now;
        }
        started |= tasks.iter().any(|t| t.status != TaskStatus::Queued);
        if !started && !hinted && start.elapsed() >= IDLE_HINT_AFTER {
            hinted = true;
            say(&format!(
                "nothing has started after {} s: is the server configured to run tasks \
                 (an [executor] in its kira.toml)? Still waiting.",
                IDLE_HINT_AFTER.as_secs()
            ));
        }
    }
    Ok(start.elapsed())
}

/// How the submitted tasks ended up.
#[derive(Debug, Default, PartialEq, Eq, Serialize)]
struct Summary {
    completed: usize,
    needs_review: usize,
    awaiting_approval: usize,
    failed: usize,
    cancelled: usize,
    /// Queued, waiting for budget or running.
    unfinished: usize,
}

impl Summary {
    fn of(tasks: &[Task]) -> Summary {
        let mut s = Summary::default();
        for t in tasks {
            let n = match t.status {
                TaskStatus::Completed => &mut s.completed,
                TaskStatus::NeedsReview => &mut s.needs_review,
                TaskStatus::AwaitingApproval => &mut s.awaiting_approval,
                TaskStatus::Failed => &mut s.failed,
                TaskStatus::Cancelled => &mut s.cancelled,
                TaskStatus::Queued | TaskStatus::WaitingBudget | TaskStatus::Running => {
                    &mut s.unfinished
                }
            };
            *n += 1;
        }
        s
    }

    fn line(&self, waited: bool) -> String {
        let total = self.completed
            + self.needs_review
            + self.awaiting_approval
            + self.failed
            + self.cancelled
            + self.unfinished;
        let mut parts = vec![
            format!("{} completed", self.completed),
            format!("{} in review", self.needs_review),
            format!("{} failed", self.failed),
        ];
        if self.cancelled > 0 {
            parts.push(format!("{} cancelled", self.cancelled));
        }
        if self.awaiting_approval > 0 {
            parts.push(format!(
                "{} awaiting emergency tokens",
                self.awaiting_approval
            ));
        }
        parts.push(format!(
            "{} {}",
            self.unfinished,
            if waited {
                "still running"
            } else {
                "not finished yet"
            }
        ));
        format!("{total} tasks: {}", parts.join(", "))
    }
}

fn companies_table(list: &[CompanySetup]) -> String {
    let mut t = output::table(&["COMPANY", "NAME", "INDUSTRY", "JURISDICTION", "SET UP"]);
    for c in list {
        let setup = match (c.created, c.memories_imported) {
            (true, n) => format!("created, {n} memories"),
            (false, 0) => "already there, memories kept".to_owned(),
            (false, n) => format!("already there, {n} memories"),
        };
        t.add_row(vec![
            c.id.clone(),
            c.name.clone(),
            c.industry.clone(),
            c.jurisdiction.clone(),
            setup,
        ]);
    }
    t.to_string()
}

fn tasks_table(list: &[Task]) -> String {
    let mut t = output::table(&[
        "TASK",
        "COMPANY",
        "TYPE",
        "PRIORITY",
        "AGENT",
        "STATUS",
        "TOKENS (IN+OUT)",
        "COST",
        "CONFIDENCE",
        "HUMAN REVIEW",
    ]);
    for task in list {
        t.add_row(vec![
            task.task_id.to_string(),
            task.company_id.to_string(),
            task.task_type.clone(),
            task.priority.to_string(),
            task.agent.clone(),
            task.status.to_string(),
            format!("{}+{}", task.prompt_tokens, task.completion_tokens),
            output::usd(task.cost_usd),
            task.confidence
                .map(|c| format!("{c:.2}"))
                .unwrap_or_default(),
            if task.requires_human_review {
                "required"
            } else {
                "no"
            }
            .to_owned(),
        ]);
    }
    t.to_string()
}

/// Where to look next, a command and what it shows on each line. Only
/// commands this binary has are named, so the hints stay true as commands
/// are added.
fn hints(tasks: &[Task], plan: &Plan) -> Vec<String> {
    let cli = crate::cli::Cli::command();
    let has = |path: &[&str]| {
        let mut cmd = Some(&cli);
        for name in path {
            cmd = cmd.and_then(|c| c.find_subcommand(name));
        }
        cmd.is_some()
    };
    let mut pairs: Vec<(String, &str)> = Vec::new();
    if let Some(t) = tasks.iter().find(|t| !settled(t.status)) {
        pairs.push((
            format!("kira task watch {}", t.task_id),
            "follow a task that has not finished",
        ));
    }
    if let Some(t) = tasks.first() {
        if has(&["task", "trace"]) {
            pairs.push((
                format!("kira task trace {}", t.task_id),
                "how its agent ran it",
            ));
        }
        pairs.push((
            format!("kira task show {}", t.task_id),
            "its result, usage and timings",
        ));
    }
    if has(&["review", "list"]) {
        pairs.push(("kira review list".to_owned(), "results waiting for a human"));
    }
    if tasks
        .iter()
        .any(|t| t.status == TaskStatus::AwaitingApproval)
    {
        pairs.push((
            "kira budget requests".to_owned(),
            "emergency tokens waiting for a human",
        ));
    }
    if let Some(c) = plan.companies.first() {
        pairs.push((format!("kira memory list {}", c.id), "a company's memories"));
        pairs.push((
            format!("kira context {} --task-type legal", c.id),
            "the context pack an agent starts from",
        ));
    }
    pairs.push((
        "kira conflicts list".to_owned(),
        "two demo companies name the same counterparty",
    ));
    let width = pairs.iter().map(|(c, _)| c.len()).max().unwrap_or(0);
    let mut out = vec!["look deeper:".to_owned()];
    out.extend(
        pairs
            .iter()
            .map(|(cmd, what)| format!("  {cmd:<width$}   {what}")),
    );
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use kira_engine::config::EngineConfig;
    use uuid::Uuid;

    use super::*;

    fn now() -> DateTime<Utc> {
        "2026-03-01T12:00:00Z".parse().expect("valid time")
    }

    fn default_plan() -> Plan {
        plan(data().expect("the data parses"), "demo", 6, now()).expect("a plan")
    }

    #[test]
    fn the_data_is_what_the_server_accepts() {
        let all = data().expect("the data parses");
        let n_tasks = all.tasks.len();
        let p = plan(all, "demo", n_tasks, now()).expect("a plan");
        let mut industries = BTreeSet::new();
        let mut jurisdictions = BTreeSet::new();
        for c in &p.companies {
            let (id, profile) = c.body.clone().validate().expect("a valid company");
            assert_eq!(id, c.id);
            industries.insert(profile.industry);
            jurisdictions.insert(profile.jurisdiction);
            assert!(
                (8..=15).contains(&c.memories.len()),
                "{} has {} memories",
                c.id,
                c.memories.len()
            );
            let mut types = BTreeSet::new();
            let mut workstreams = BTreeSet::new();
            let mut with_counterparties = 0;
            for m in &c.memories {
                let m = m.clone().validate(now()).expect("a valid memory");
                assert!(m.occurred_at <= now());
                assert_eq!(m.source.as_deref(), Some(DEMO_SOURCE));
                types.insert(m.event_type);
                workstreams.insert(m.workstream);
                if m.content.get("counterparties").is_some() {
                    with_counterparties += 1;
                }
            }
            assert!(types.len() >= 5, "{}: varied event types", c.id);
            assert!(workstreams.len() >= 3, "{}: varied workstreams", c.id);
            assert!(with_counterparties >= 2, "{}: counterparties", c.id);
        }
        assert_eq!(p.companies.len(), 3);
        assert_eq!(industries.len(), 3, "{industries:?}");
        assert_eq!(jurisdictions.len(), 3, "{jurisdictions:?}");

        assert!((6..=10).contains(&p.knowledge.len()));
        let domains: BTreeSet<&str> = p.knowledge.iter().map(|k| k.domain.as_str()).collect();
        let configured = EngineConfig::default().knowledge_domains;
        assert_eq!(domains.len(), 3, "{domains:?}");
        for k in &p.knowledge {
            assert!(configured.contains(&k.domain), "{}", k.domain);
            assert!(k.key.starts_with("demo."), "{}", k.key);
            let e = k
                .clone()
                .validate(Uuid::nil(), now())
                .expect("a valid entry");
            assert!(e.tags.iter().any(|t| t == DEMO_TAG));
        }

        let types = EngineConfig::default().task_types;
        for (company, t) in &p.tasks {
            assert!(types.contains_key(&t.task_type), "{}", t.task_type);
            assert!(p.companies.iter().any(|c| &c.id == company), "{company}");
        }
    }

    #[test]
    fn the_default_tasks_show_every_type_priority_and_company() {
        let p = default_plan();
        assert_eq!(p.tasks.len(), 6);
        let types: BTreeSet<&str> = p.tasks.iter().map(|(_, t)| t.task_type.as_str()).collect();
        let all_types = EngineConfig::default().task_types;
        assert_eq!(
            types,
            all_types
                .keys()
                .map(String::as_str)
                .collect::<BTreeSet<_>>()
        );
        let priorities: BTreeSet<Priority> = p.tasks.iter().map(|(_, t)| t.priority).collect();
        for level in [
            Priority::Low,
            Priority::Medium,
            Priority::High,
            Priority::Urgent,
        ] {
            assert!(priorities.contains(&level), "{level} missing");
        }
        let companies: BTreeSet<&CompanyId> = p.tasks.iter().map(|(c, _)| c).collect();
        assert_eq!(companies.len(), 3);
    }

    #[test]
    fn the_prefix_and_task_count_are_checked_before_anything_is_sent() {
        let p = plan(data().expect("data"), "acme-2", 1, now()).expect("a plan");
        assert_eq!(p.companies[0].id.as_str(), "acme-2-ledgerline");
        assert_eq!(p.tasks.len(), 1);
        assert!(p.knowledge[0].key.starts_with("acme-2."));

        for bad in ["Demo", "demo_x", "", "-demo", &"x".repeat(45)] {
            let e = plan(data().expect("data"), bad, 6, now()).expect_err(bad);
            assert!(e.to_string().contains("--prefix"), "{e}");
        }
        for n in [0, 13] {
            let e = plan(data().expect("data"), "demo", n, now()).expect_err("out of range");
            assert!(e.to_string().contains("--tasks"), "{e}");
        }
    }

    fn task(id: &str, status: &str, agent: &str) -> Task {
        serde_json::from_value(json!({
            "task_id": id, "company_id": id.split('_').next(),
            "company_context": {}, "task": "t", "type": "document_review",
            "priority": "high", "deadline": null, "parameters": {},
            "specialist": null, "agent": agent, "status": status,
            "status_reason": "", "attempts": 1, "max_attempts": 3,
            "estimated_tokens": 3010, "result": null, "confidence": 0.42,
            "requires_human_review": status == "needs_review", "last_error": null,
            "prompt_tokens": 1500, "completion_tokens": 500, "cost_usd": 0.0125,
            "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:02Z",
            "started_at": null, "finished_at": null
        }))
        .expect("a task")
    }

    #[test]
    fn the_report_shows_each_task_with_its_agent_and_a_summary() {
        let tasks = [
            task("demo-hofmann_legal_001", "needs_review", "legal"),
            task("demo-brightdesk_primary_002", "completed", "primary"),
            task("demo-brightdesk_financial_003", "running", "financial"),
            task("demo-ledgerline_legal_004", "failed", "legal"),
        ];
        let table = tasks_table(&tasks);
        for s in [
            "demo-hofmann_legal_001",
            "demo-hofmann ",
            "needs_review",
            "primary",
            "financial",
            "1500+500",
            "$0.0125",
            "0.42",
            "required",
        ] {
            assert!(table.contains(s), "{s} missing from\n{table}");
        }
        let summary = Summary::of(&tasks);
        assert_eq!(
            summary.line(true),
            "4 tasks: 1 completed, 1 in review, 1 failed, 1 still running"
        );
        assert_eq!(
            Summary::of(&tasks[..2]).line(false),
            "2 tasks: 1 completed, 1 in review, 0 failed, 0 not finished yet"
        );
    }

    #[test]
    fn hints_name_only_commands_that_exist() {
        let p = default_plan();
        let tasks = [task("demo-hofmann_legal_001", "completed", "legal")];
        let hints = hints(&tasks, &p).join("\n");
        assert!(
            hints.contains("kira task show demo-hofmann_legal_001"),
            "{hints}"
        );
        let cli = crate::cli::Cli::command();
        for line in hints.lines().skip(1) {
            let words: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(words[0], "kira", "{line}");
            let sub = cli
                .find_subcommand(words[1])
                .unwrap_or_else(|| panic!("no command {}", words[1]));
            let is_group = sub.get_subcommands().next().is_some();
            if is_group {
                assert!(sub.find_subcommand(words[2]).is_some(), "{line}");
            }
        }
    }
}
