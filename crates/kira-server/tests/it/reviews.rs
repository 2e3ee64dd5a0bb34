//! Review through the API, on both backends: the review queue and its
//! cursor, a run's trace, reject then approve, ratings, and the approved
//! result in the company's memory.

use kira_core::CompanyId;
use kira_core::auth::{Access, Principal};
use kira_core::clock::{Clock, SystemClock};
use kira_core::task::TaskId;
use kira_store::agents::{Step, StepKind};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::{Backend, Server};

async fn review_story(backend: Backend) {
    let s = Server::start(backend).await;
    s.company("acme").await;
    s.company("other").await;
    let (_, viewer) = s.key("viewer", Some("acme")).await;
    let (_, operator) = s.key("operator", Some("acme")).await;
    let first = s.needs_review("acme").await;
    let second = s.needs_review("acme").await;
    let queued = s.task("acme").await;
    let theirs = s.needs_review("other").await;

    // The queue of reviews: newest first, a page at a time, this company's only.
    let (status, page) = s
        .call(
            Method::GET,
            "/v1/companies/acme/reviews?limit=1",
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["tasks"][0]["task_id"], second.as_str());
    assert_eq!(page["tasks"][0]["status"], "needs_review");
    let before = page["next_before"].as_i64().expect("a next page");
    let (_, page) = s
        .call(
            Method::GET,
            &format!("/v1/companies/acme/reviews?limit=1&before={before}"),
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(page["tasks"][0]["task_id"], first.as_str());
    let (_, all) = s
        .call(
            Method::GET,
            "/v1/companies/acme/reviews",
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(all["tasks"].as_array().map(Vec::len), Some(2), "{all}");
    assert_eq!(all["next_before"], json!(null));

    // The trace, as the worker recorded it.
    let scope = Principal::system()
        .scope(&CompanyId::parse("acme").expect("id"), Access::Write)
        .expect("scope");
    let tid = TaskId::parse(&first).expect("id");
    let step = |seq, kind, agent: &str, detail| Step {
        task_id: tid.clone(),
        attempt: 1,
        seq,
        agent: agent.into(),
        kind,
        prompt_tokens: 1200,
        completion_tokens: 300,
        latency_ms: 840,
        detail,
        at: SystemClock.now(),
    };
    s.store
        .record_steps(
            &scope,
            &[
                step(0, StepKind::TaskMessage, "primary", json!({"task": "Review the lease"})),
                step(1, StepKind::Llm, "legal", json!({"model": "m", "finish_reason": "stop", "content": "Looks fine", "tool_calls": []})),
                step(2, StepKind::ResponseMessage, "legal", json!({"status": "completed", "confidence": 0.42})),
            ],
        )
        .await
        .expect("steps");
    let (status, trace) = s
        .call(
            Method::GET,
            &format!("/v1/companies/acme/tasks/{first}/trace"),
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{trace}");
    let kinds: Vec<&str> = trace["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| s["kind"].as_str().expect("kind"))
        .collect();
    assert_eq!(kinds, ["task_message", "llm", "response_message"]);
    assert_eq!(trace["steps"][1]["prompt_tokens"], 1200);
    assert_eq!(trace["steps"][1]["detail"]["content"], "Looks fine");

    // A viewer reads but does not decide; another company's task is not here.
    let approve = json!({"decision": "approve", "rating": 4});
    let (status, _) = s
        .call(
            Method::POST,
            &format!("/v1/companies/acme/tasks/{first}/review"),
            Some(&viewer),
            Some(approve.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = s
        .call(
            Method::POST,
            &format!("/v1/companies/acme/tasks/{theirs}/review"),
            Some(&s.admin),
            Some(approve.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "a task id names its company");
    let (status, _) = s
        .call(
            Method::POST,
            &format!("/v1/companies/other/tasks/{theirs}/review"),
            Some(&operator),
            Some(approve.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Reject: back to the queue with the feedback; approve the rerun's result.
    let (status, task) = s
        .call(
            Method::POST,
            &format!("/v1/companies/acme/tasks/{first}/review"),
            Some(&operator),
            Some(json!({"decision": "reject", "feedback": "Check clause 4.", "rating": 2})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{task}");
    assert_eq!(task["status"], "queued");
    assert!(
        task["status_reason"]
            .as_str()
            .is_some_and(|r| r.contains("Check clause 4.")),
        "{task}"
    );
    let (status, again) = s
        .call(
            Method::POST,
            &format!("/v1/companies/acme/tasks/{first}/review"),
            Some(&operator),
            Some(approve.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{again}");

    let edited = json!({"summary": "Lease reviewed", "answer": "Sign, after clause 4 is struck."});
    let (status, task) = s
        .call(
            Method::POST,
            &format!("/v1/companies/acme/tasks/{second}/review"),
            Some(&operator),
            Some(json!({"decision": "approve", "result": edited, "rating": 5})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{task}");
    assert_eq!(task["status"], "completed");
    assert_eq!(task["result"], edited);
    assert_eq!(task["requires_human_review"], false);

    // The approved result is the company's memory now.
    let memories = s
        .admin_ok(
            Method::GET,
            "/v1/companies/acme/memory?event_type=task_result",
            None,
        )
        .await;
    let list = memories["memories"].as_array().expect("memories");
    assert_eq!(list.len(), 1, "{memories}");
    assert_eq!(list[0]["source"], second.as_str());
    assert_eq!(list[0]["category"], "task_results");
    assert_eq!(
        list[0]["content"]["text"],
        "Lease reviewed\n\nSign, after clause 4 is struck."
    );

    // Ratings: a completed task, many times; not a queued one.
    let (status, r) = s
        .call(
            Method::POST,
            &format!("/v1/companies/acme/tasks/{second}/rating"),
            Some(&operator),
            Some(json!({"rating": 3})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{r}");
    assert_eq!(
        (r["decision"].clone(), r["rating"].clone()),
        (json!("rated"), json!(3))
    );
    let (status, _) = s
        .call(
            Method::POST,
            &format!("/v1/companies/acme/tasks/{queued}/rating"),
            Some(&operator),
            Some(json!({"rating": 3})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);

    let (_, reviews) = s
        .call(
            Method::GET,
            &format!("/v1/companies/acme/tasks/{second}/reviews"),
            Some(&viewer),
            None,
        )
        .await;
    let rows: Vec<(String, Option<u64>)> = reviews["reviews"]
        .as_array()
        .expect("reviews")
        .iter()
        .map(|r| {
            (
                r["decision"].as_str().expect("decision").to_owned(),
                r["rating"].as_u64(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("approved".to_owned(), Some(5)),
            ("rated".to_owned(), Some(3))
        ]
    );
    assert_eq!(reviews["reviews"][0]["edited_result"], edited);
    assert!(
        reviews["reviews"][0]["reviewer"]
            .as_str()
            .is_some_and(|r| r.starts_with("key:")),
        "{reviews}"
    );
    let (_, left) = s
        .call(
            Method::GET,
            "/v1/companies/acme/reviews",
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(left["tasks"], json!([]), "nothing waits for review now");

    // Decisions and ratings are audited under the company.
    let audit = s.audit().await;
    let ok = |action: &str| {
        audit
            .iter()
            .filter(|e| e["action"] == action && e["outcome"] == "ok" && e["company_id"] == "acme")
            .count()
    };
    assert_eq!((ok("task.review"), ok("task.rate")), (2, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_review_story() {
    review_story(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_review_story() {
    review_story(Backend::Postgres).await;
}
