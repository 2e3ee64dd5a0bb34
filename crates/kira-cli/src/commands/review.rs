//! `kira review ...`: the tasks waiting for a human, one task's result and
//! reviews, approving (with an edited result if need be), rejecting with
//! feedback, and rating. A task id names its company (`acme_legal_001`),
//! so no command but `list` asks for one.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use kira_core::task::{Task, TaskStatus};
use kira_store::agents::Review;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::Ctx;
use super::task::parse_id;
use crate::client::{Client, decode};
use crate::output;

#[derive(Debug, Subcommand)]
pub enum ReviewCommand {
    /// List the tasks waiting for review, newest first: one company's, or
    /// every company the key can see.
    List {
        /// Only this company [default: the key's company; for an admin
        /// key, every company].
        #[arg(long, value_name = "ID")]
        company: Option<String>,
    },
    /// Show a task's result, confidence and status, and its reviews.
    Show {
        /// Such as acme_legal_001.
        task_id: String,
    },
    /// Accept a task's result: it completes, and the result is remembered
    /// in the company's memory.
    Approve(ApproveArgs),
    /// Send a task back with what to change: it runs again, or fails when
    /// it was already rejected as often as [review] max_requeues allows.
    Reject(RejectArgs),
    /// Rate a completed task (or one in review) from 1 to 5; a later
    /// rating adds to the record, and the latest counts.
    Rate {
        /// Such as acme_legal_001.
        task_id: String,
        /// 1 (poor) to 5 (excellent).
        #[arg(value_parser = clap::value_parser!(u8).range(1..=5))]
        rating: u8,
    },
}

#[derive(Debug, Args)]
pub struct ApproveArgs {
    /// Such as acme_legal_001.
    pub task_id: String,
    /// A JSON object to keep as the result instead of the agent's.
    #[arg(long, value_name = "FILE.json")]
    pub result: Option<PathBuf>,
    /// Rate the result too, 1 (poor) to 5 (excellent).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..=5))]
    pub rating: Option<u8>,
}

#[derive(Debug, Args)]
pub struct RejectArgs {
    /// Such as acme_legal_001.
    pub task_id: String,
    /// What to change; the next run is given it.
    #[arg(long, value_name = "TEXT")]
    pub feedback: String,
    /// Rate the result too, 1 (poor) to 5 (excellent).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..=5))]
    pub rating: Option<u8>,
}

#[derive(Debug, Deserialize)]
struct TaskPage {
    tasks: Vec<Task>,
    next_before: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct ReviewList {
    reviews: Vec<Review>,
}

#[derive(Debug, Deserialize)]
struct Whoami {
    company_id: Option<String>,
}

#[derive(Debug, Deserialize)]
struct CompanyList {
    companies: Vec<CompanyEntry>,
}

#[derive(Debug, Deserialize)]
struct CompanyEntry {
    id: String,
}

pub async fn run(ctx: &Ctx, cmd: ReviewCommand) -> anyhow::Result<ExitCode> {
    let c = &ctx.client;
    let (v, human) = match cmd {
        ReviewCommand::List { company } => {
            let tasks = waiting(c, company).await?;
            let human = output::review_queue(&tasks);
            (json!({ "tasks": tasks }), human)
        }
        ReviewCommand::Show { task_id } => {
            let id = parse_id(&task_id)?;
            let route = ["v1", "companies", id.company_part(), "tasks", id.as_str()];
            let task = c.get(&route, &[]).await?;
            let reviews = c.get(&[&route[..], &["reviews"]].concat(), &[]).await?;
            let t: Task = decode(task.clone())?;
            let r: ReviewList = decode(reviews.clone())?;
            let human = show(&t, &r.reviews);
            (json!({"task": task, "reviews": reviews["reviews"]}), human)
        }
        ReviewCommand::Approve(a) => {
            let mut body = Map::new();
            body.insert("decision".into(), json!("approve"));
            if let Some(path) = &a.result {
                body.insert("result".into(), Value::Object(read_result(path)?));
            }
            if let Some(r) = a.rating {
                body.insert("rating".into(), json!(r));
            }
            decide(c, &a.task_id, Value::Object(body)).await?
        }
        ReviewCommand::Reject(a) => {
            if a.feedback.trim().is_empty() {
                bail!("--feedback must say what to change");
            }
            let mut body = Map::new();
            body.insert("decision".into(), json!("reject"));
            body.insert("feedback".into(), json!(a.feedback));
            if let Some(r) = a.rating {
                body.insert("rating".into(), json!(r));
            }
            decide(c, &a.task_id, Value::Object(body)).await?
        }
        ReviewCommand::Rate { task_id, rating } => {
            let id = parse_id(&task_id)?;
            let v = c
                .post(
                    &[
                        "v1",
                        "companies",
                        id.company_part(),
                        "tasks",
                        id.as_str(),
                        "rating",
                    ],
                    Some(&json!({ "rating": rating })),
                )
                .await?;
            let human = format!("rated task {id}: {rating} of 5");
            (v, human)
        }
    };
    if ctx.json {
        output::print_json(&v)?;
    } else {
        println!("{human}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Every task waiting for review in `company`, or in each company the key
/// sees: its own company, or every company for an admin. Newest first.
async fn waiting(c: &Client, company: Option<String>) -> anyhow::Result<Vec<Task>> {
    let companies = match company {
        Some(id) => vec![id],
        None => {
            let who: Whoami = decode(c.get(&["v1", "whoami"], &[]).await?)?;
            match who.company_id {
                Some(id) => vec![id],
                None => {
                    let query = [("include_archived", "true".to_owned())];
                    let list: CompanyList = decode(c.get(&["v1", "companies"], &query).await?)?;
                    list.companies.into_iter().map(|e| e.id).collect()
                }
            }
        }
    };
    let mut tasks = Vec::new();
    for company in &companies {
        let mut before: Option<i64> = None;
        loop {
            let mut query = vec![("limit", "500".to_owned())];
            if let Some(b) = before {
                query.push(("before", b.to_string()));
            }
            let page: TaskPage = decode(
                c.get(&["v1", "companies", company, "reviews"], &query)
                    .await?,
            )?;
            tasks.extend(page.tasks);
            match page.next_before {
                Some(b) => before = Some(b),
                None => break,
            }
        }
    }
    // Across companies too: the newest result first.
    tasks.sort_by(|a, b| {
        (b.finished_at, b.created_at, &b.task_id).cmp(&(a.finished_at, a.created_at, &a.task_id))
    });
    Ok(tasks)
}

/// Sends a decision; the task as it is after it, and what became of it.
async fn decide(c: &Client, task_id: &str, body: Value) -> anyhow::Result<(Value, String)> {
    let id = parse_id(task_id)?;
    let v = c
        .post(
            &[
                "v1",
                "companies",
                id.company_part(),
                "tasks",
                id.as_str(),
                "review",
            ],
            Some(&body),
        )
        .await?;
    let t: Task = decode(v.clone())?;
    let human = match t.status {
        TaskStatus::Completed => format!("approved task {}: completed", t.task_id),
        TaskStatus::Queued => format!(
            "rejected task {}: queued to run again ({})",
            t.task_id, t.status_reason
        ),
        TaskStatus::Failed => format!("rejected task {}: failed ({})", t.task_id, t.status_reason),
        s => format!("task {} is {s}", t.task_id),
    };
    Ok((v, human))
}

/// The edited result: a JSON object from a file.
fn read_result(path: &Path) -> anyhow::Result<Map<String, Value>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read --result {}", path.display()))?;
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => bail!(
            "--result {} must hold a JSON object, such as {{\"summary\": \"...\", \"answer\": \"...\"}}",
            path.display()
        ),
        Err(e) => Err(e).with_context(|| format!("--result {} is not valid JSON", path.display())),
    }
}

/// What a reviewer needs to decide: the task and its result, then what was
/// decided before.
fn show(t: &Task, reviews: &[Review]) -> String {
    let mut table = output::table(&["FIELD", "VALUE"]);
    let result = t
        .result
        .as_ref()
        .map(|r| serde_json::to_string_pretty(r).unwrap_or_else(|_| r.to_string()))
        .unwrap_or_default();
    let rows: [(&str, String); 9] = [
        ("task_id", t.task_id.to_string()),
        ("status", t.status.to_string()),
        ("status reason", t.status_reason.clone()),
        ("type", t.task_type.clone()),
        ("priority", t.priority.to_string()),
        ("agent", t.agent.clone()),
        ("task", t.task.clone()),
        ("result", result),
        (
            "confidence",
            t.confidence.map(|c| c.to_string()).unwrap_or_default(),
        ),
    ];
    for (k, v) in rows {
        table.add_row(vec![k.to_owned(), v]);
    }
    format!("{table}\n\nreviews:\n{}", output::reviews(reviews))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn parse(args: &[&str]) -> Result<ReviewCommand, clap::Error> {
        let mut all = vec!["kira", "review"];
        all.extend_from_slice(args);
        let cli = Cli::try_parse_from(all)?;
        match cli.command {
            Command::Review(r) => Ok(r),
            other => panic!("not review: {other:?}"),
        }
    }

    #[test]
    fn ratings_are_one_to_five() {
        assert!(matches!(
            parse(&["rate", "acme_legal_001", "5"]),
            Ok(ReviewCommand::Rate { rating: 5, .. })
        ));
        for bad in ["0", "6", "x"] {
            assert!(parse(&["rate", "acme_legal_001", bad]).is_err(), "{bad}");
            assert!(
                parse(&["approve", "acme_legal_001", "--rating", bad]).is_err(),
                "{bad}"
            );
        }
        assert!(
            parse(&["reject", "acme_legal_001"]).is_err(),
            "a rejection needs --feedback"
        );
    }

    #[test]
    fn an_edited_result_is_a_json_object() {
        let dir = tempfile::tempdir().expect("temp dir");
        let ok = dir.path().join("ok.json");
        std::fs::write(&ok, r#"{"summary": "s", "answer": "a"}"#).expect("write");
        assert_eq!(read_result(&ok).expect("object").len(), 2);
        let list = dir.path().join("list.json");
        std::fs::write(&list, "[1]").expect("write");
        let e = read_result(&list).expect_err("not an object");
        assert!(e.to_string().contains("JSON object"), "{e}");
        let e = read_result(&dir.path().join("missing.json")).expect_err("missing");
        assert!(e.to_string().contains("cannot read --result"), "{e}");
    }
}
