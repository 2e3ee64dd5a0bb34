//! `kira task ...`: submit, list, show, cancel and watch tasks, and read
//! the trace of their runs.

use std::process::ExitCode;

use anyhow::{Context, bail};
use kira_core::task::{Task, TaskEvent, TaskId, TaskStatus};
use kira_store::agents::Step;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::Ctx;
use crate::cli::{SubmitArgs, TaskCommand, TaskListArgs};
use crate::client::decode;
use crate::output;

#[derive(Debug, Deserialize)]
struct Trace {
    steps: Vec<Step>,
}

#[derive(Debug, Deserialize)]
struct TaskPage {
    tasks: Vec<Task>,
    next_before: Option<i64>,
}

pub async fn run(ctx: &Ctx, cmd: TaskCommand) -> anyhow::Result<ExitCode> {
    let c = &ctx.client;
    let (v, human) = match cmd {
        TaskCommand::Submit(a) => {
            let body = submit_body(&a)?;
            let headers: Vec<(&str, &str)> = a
                .idempotency_key
                .as_deref()
                .map(|k| ("Idempotency-Key", k))
                .into_iter()
                .collect();
            let v = c
                .post_with_headers(
                    &["v1", "companies", &a.company, "tasks"],
                    Some(&body),
                    &headers,
                )
                .await?;
            let human = decode::<Task>(v.clone()).map(|t| output::tasks(&[t]));
            (v, human)
        }
        TaskCommand::List(a) => {
            let v = c
                .get(&["v1", "companies", &a.company, "tasks"], &list_query(&a))
                .await?;
            let human = decode::<TaskPage>(v.clone()).map(|page| {
                let mut out = output::tasks(&page.tasks);
                if let Some(before) = page.next_before {
                    out.push_str(&format!("\nmore tasks: {}", next_page(&a, before)));
                }
                out
            });
            (v, human)
        }
        TaskCommand::Show { task_id } => {
            let id = parse_id(&task_id)?;
            let route = ["v1", "companies", id.company_part(), "tasks", id.as_str()];
            let v = c.get(&route, &[]).await?;
            if ctx.json {
                output::print_json(&v)?;
                return Ok(ExitCode::SUCCESS);
            }
            let mut human = output::task(&decode::<Task>(v.clone())?);
            // SEED 1's messages between the primary agent and a specialist,
            // from the run's trace, when the task has any.
            let trace: Trace = decode(c.get(&[&route[..], &["trace"]].concat(), &[]).await?)?;
            if let Some(messages) = output::messages(&trace.steps) {
                human.push_str("\n\nmessages:\n");
                human.push_str(&messages);
            }
            (v, Ok(human))
        }
        TaskCommand::Trace { task_id } => {
            let id = parse_id(&task_id)?;
            let v = c
                .get(
                    &[
                        "v1",
                        "companies",
                        id.company_part(),
                        "tasks",
                        id.as_str(),
                        "trace",
                    ],
                    &[],
                )
                .await?;
            let human = decode::<Trace>(v.clone()).map(|t| output::steps(&t.steps));
            (v, human)
        }
        TaskCommand::Cancel { task_id } => {
            let id = parse_id(&task_id)?;
            let v = c
                .post(
                    &[
                        "v1",
                        "companies",
                        id.company_part(),
                        "tasks",
                        id.as_str(),
                        "cancel",
                    ],
                    None,
                )
                .await?;
            let human = decode::<Task>(v.clone()).map(|t| cancelled(&t));
            (v, human)
        }
        TaskCommand::Watch { task_id } => return watch(ctx, &task_id).await,
    };
    if ctx.json {
        output::print_json(&v)?;
    } else {
        println!("{}", human?);
    }
    Ok(ExitCode::SUCCESS)
}

/// A task id, checked before anything is sent: its company (the part before
/// the first `_`) says which company's route to use.
pub(crate) fn parse_id(s: &str) -> anyhow::Result<TaskId> {
    TaskId::parse(s.trim()).map_err(|e| anyhow::anyhow!("{} (field: {})", e.message, e.field))
}

/// The submission as the API takes it: only what was given, so the server
/// applies its own defaults to the rest.
fn submit_body(a: &SubmitArgs) -> anyhow::Result<Value> {
    let mut body = Map::new();
    body.insert("task".into(), json!(a.text));
    body.insert("type".into(), json!(a.task_type));
    body.insert("priority".into(), json!(a.priority));
    if let Some(deadline) = a.deadline {
        body.insert("deadline".into(), json!(deadline));
    }
    if let Some(specialist) = &a.specialist {
        body.insert("specialist".into(), json!(specialist));
    }
    let mut parameters = match &a.parameters_file {
        Some(path) => read_parameters(path)?,
        None => Map::new(),
    };
    for (key, value) in &a.params {
        parameters.insert(key.clone(), value.clone());
    }
    if !parameters.is_empty() || a.parameters_file.is_some() {
        body.insert("parameters".into(), Value::Object(parameters));
    }
    Ok(Value::Object(body))
}

fn read_parameters(path: &std::path::Path) -> anyhow::Result<Map<String, Value>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read --parameters-file {}", path.display()))?;
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => bail!(
            "--parameters-file {} must hold a JSON object, such as {{\"document\": \"...\"}}",
            path.display()
        ),
        Err(e) => Err(e)
            .with_context(|| format!("--parameters-file {} is not valid JSON", path.display())),
    }
}

fn list_query(a: &TaskListArgs) -> Vec<(&'static str, String)> {
    let mut query = Vec::new();
    if let Some(s) = a.status {
        query.push(("status", s.as_str().to_owned()));
    }
    if let Some(p) = a.priority {
        query.push(("priority", p.as_str().to_owned()));
    }
    if let Some(t) = &a.task_type {
        query.push(("type", t.clone()));
    }
    if let Some(t) = a.since {
        query.push(("since", t.to_rfc3339()));
    }
    if let Some(t) = a.until {
        query.push(("until", t.to_rfc3339()));
    }
    if let Some(n) = a.limit {
        query.push(("limit", n.to_string()));
    }
    if let Some(n) = a.before {
        query.push(("before", n.to_string()));
    }
    query
}

/// The command that lists the next page: the same filters, older tasks.
fn next_page(a: &TaskListArgs, before: i64) -> String {
    let mut cmd = format!("kira task list {}", a.company);
    for (key, value) in list_query(a) {
        if key != "before" {
            cmd.push_str(&format!(" --{key} {value}"));
        }
    }
    cmd.push_str(&format!(" --before {before}"));
    cmd
}

fn cancelled(t: &Task) -> String {
    match t.status {
        TaskStatus::Cancelled => format!("cancelled task {}", t.task_id),
        status => format!(
            "asked task {} to stop; it is {status} until its worker stops it \
             (follow it with `kira task watch {}`)",
            t.task_id, t.task_id
        ),
    }
}

/// Follows a task's status changes, one line each (one JSON object each
/// with `--json`), until the server ends the stream. A stream that ends
/// without saying the task finished (the server stopped) is checked
/// against the task itself, so the exit status can be trusted: 0 when the
/// task finished or waits for review, 1 otherwise.
async fn watch(ctx: &Ctx, task_id: &str) -> anyhow::Result<ExitCode> {
    let id = parse_id(task_id)?;
    let c = &ctx.client;
    let route = [
        "v1",
        "companies",
        id.company_part(),
        "tasks",
        id.as_str(),
        "watch",
    ];
    let mut stream = c.stream(&route).await?;
    let mut last: Option<TaskStatus> = None;
    while let Some(event) = stream.next().await? {
        if event.event != "status" {
            continue;
        }
        let e: TaskEvent = serde_json::from_str(&event.data).with_context(|| {
            format!(
                "the server sent a status event that is not one: {}",
                event.data
            )
        })?;
        if ctx.json {
            println!("{}", serde_json::to_string(&e)?);
        } else {
            println!("{}", output::task_event(&e));
        }
        last = Some(e.to_status);
    }
    let finished = |s: TaskStatus| s.is_final() || s == TaskStatus::NeedsReview;
    if last.is_some_and(finished) {
        return Ok(ExitCode::SUCCESS);
    }
    let v = c
        .get(
            &["v1", "companies", id.company_part(), "tasks", id.as_str()],
            &[],
        )
        .await?;
    let task: Task = decode(v)?;
    if finished(task.status) {
        if last != Some(task.status) && !ctx.json {
            println!("task {} is {}", task.task_id, task.status);
        }
        return Ok(ExitCode::SUCCESS);
    }
    bail!(
        "the server ended the stream while task {} is {}; run `kira task watch {}` again",
        task.task_id,
        task.status,
        task.task_id
    )
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn submit(args: &[&str]) -> SubmitArgs {
        let mut all = vec!["kira", "task", "submit"];
        all.extend_from_slice(args);
        let cli = Cli::try_parse_from(all).expect("valid args");
        let Command::Task(TaskCommand::Submit(a)) = cli.command else {
            panic!("not task submit");
        };
        a
    }

    #[test]
    fn submission_sends_what_was_given() {
        let a = submit(&["acme", "Review the NDA", "--type", "document_review"]);
        assert_eq!(
            submit_body(&a).expect("body"),
            json!({"task": "Review the NDA", "type": "document_review", "priority": "medium"})
        );

        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("p.json");
        std::fs::write(&file, r#"{"document": "NDA text", "pages": 1}"#).expect("write");
        let file = file.to_str().expect("utf-8");
        let a = submit(&[
            "acme",
            "Review",
            "--type",
            "document_review",
            "--priority",
            "urgent",
            "--deadline",
            "2030-01-15T18:00:00+01:00",
            "--specialist",
            "legal",
            "--parameters-file",
            file,
            "--param",
            "pages:=3",
            "--param",
            "lang=en",
        ]);
        assert_eq!(
            submit_body(&a).expect("body"),
            json!({
                "task": "Review", "type": "document_review", "priority": "urgent",
                "deadline": "2030-01-15T17:00:00Z", "specialist": "legal",
                "parameters": {"document": "NDA text", "pages": 3, "lang": "en"},
            })
        );

        std::fs::write(dir.path().join("list.json"), "[1]").expect("write");
        let list = dir.path().join("list.json");
        let a = submit(&[
            "acme",
            "x",
            "--type",
            "t",
            "--parameters-file",
            list.to_str().expect("utf-8"),
        ]);
        let e = submit_body(&a).expect_err("not an object");
        assert!(e.to_string().contains("JSON object"), "{e}");
    }

    #[test]
    fn the_next_page_keeps_the_filters() {
        let cli = Cli::try_parse_from([
            "kira",
            "task",
            "list",
            "acme",
            "--status",
            "queued",
            "--type",
            "document_review",
            "--limit",
            "2",
            "--before",
            "9",
        ])
        .expect("valid");
        let Command::Task(TaskCommand::List(a)) = cli.command else {
            panic!("not task list");
        };
        assert_eq!(
            next_page(&a, 7),
            "kira task list acme --status queued --type document_review --limit 2 --before 7"
        );
    }

    #[test]
    fn task_ids_are_checked_before_sending() {
        assert_eq!(
            parse_id("acme_legal_001").expect("valid").company_part(),
            "acme"
        );
        let e = parse_id("acme").expect_err("not an id");
        assert!(e.to_string().contains("task_id"), "{e}");
    }
}
