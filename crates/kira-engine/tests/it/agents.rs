//! The agent loop against a fake OpenAI-compatible server on loopback: tool
//! calls executed and fed back, the limits that stop a run and send it to
//! review, reservations before and settlements after every call, provider
//! failures, the primary/specialist messages and session, and isolation
//! through the model (nothing of one company in another's prompts).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::TimeDelta;
use kira_core::CompanyId;
use kira_core::audit::{AuditRecord, Outcome};
use kira_core::auth::{Access, CompanyScope, Principal};
use kira_core::clock::{Clock, ManualClock};
use kira_core::company::NewCompany;
use kira_core::memory::{EventType, NewMemory, Workstream};
use kira_core::task::{TaskId, TaskRequest, TaskStatus};
use kira_engine::agent::{AgentExecutor, ProviderHandle, Providers};
use kira_engine::{Engine, EngineConfig};
use kira_llm::{OpenAi, RetryPolicy, Sleeper};
use kira_store::Store;
use kira_store::agents::StepKind;
use serde_json::{Value, json};

use crate::common::{Backend, fresh_store_url, t0};

type Script = dyn Fn(usize, &Value) -> (u16, Value) + Send + Sync;

/// A fake chat-completions server: `script(n, request)` answers the n-th
/// request (from 0); every request body is recorded.
pub(crate) struct FakeLlm {
    base: String,
    seen: Arc<Mutex<Vec<Value>>>,
}

struct FakeState {
    script: Box<Script>,
    seen: Arc<Mutex<Vec<Value>>>,
    n: AtomicUsize,
    clock: Option<(Arc<ManualClock>, TimeDelta)>,
}

async fn answer(State(s): State<Arc<FakeState>>, body: Bytes) -> Response {
    let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    s.seen.lock().expect("lock").push(req.clone());
    let n = s.n.fetch_add(1, Ordering::SeqCst);
    if let Some((clock, step)) = &s.clock {
        clock.advance(*step);
    }
    let (status, body) = (s.script)(n, &req);
    (
        StatusCode::from_u16(status).expect("status"),
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

impl FakeLlm {
    pub(crate) async fn start(
        clock: Option<(Arc<ManualClock>, TimeDelta)>,
        script: impl Fn(usize, &Value) -> (u16, Value) + Send + Sync + 'static,
    ) -> FakeLlm {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let state = Arc::new(FakeState {
            script: Box::new(script),
            seen: seen.clone(),
            n: AtomicUsize::new(0),
            clock,
        });
        let app = axum::Router::new().fallback(answer).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
        FakeLlm {
            base: format!("http://{addr}/v1"),
            seen,
        }
    }

    pub(crate) fn seen(&self) -> Vec<Value> {
        self.seen.lock().expect("lock").clone()
    }
}

/// An OpenAI chat completion with `message` and usage.
pub(crate) fn completion(message: Value, prompt: u32, completion: u32) -> (u16, Value) {
    let finish = if message.get("tool_calls").is_some() {
        "tool_calls"
    } else {
        "stop"
    };
    (
        200,
        json!({
            "id": "c", "model": "fake-model",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
        }),
    )
}

pub(crate) fn tool_call(id: &str, name: &str, args: Value) -> Value {
    json!({"role": "assistant", "content": null, "tool_calls": [{
        "id": id, "type": "function",
        "function": {"name": name, "arguments": args.to_string()}
    }]})
}

pub(crate) fn submit(summary: &str, answer: &str, confidence: f64) -> Value {
    tool_call(
        "call_submit",
        "submit_result",
        json!({"summary": summary, "answer": answer, "confidence": confidence}),
    )
}

/// Backoff waits are recorded, not slept.
#[derive(Default)]
pub(crate) struct NoSleep(Mutex<Vec<Duration>>);

#[async_trait]
impl Sleeper for NoSleep {
    async fn sleep(&self, d: Duration) {
        self.0.lock().expect("lock").push(d);
    }
}

pub(crate) fn scope(c: &str) -> CompanyScope {
    Principal::system()
        .scope(&CompanyId::parse(c).expect("id"), Access::Write)
        .expect("scope")
}

pub(crate) fn audit(c: &str) -> AuditRecord {
    AuditRecord {
        at: t0(),
        request_id: String::new(),
        actor: "system".into(),
        company_id: CompanyId::parse(c).ok(),
        action: "test".into(),
        target: "test".into(),
        outcome: Outcome::Ok,
        detail: String::new(),
    }
}

pub(crate) struct Setup {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) clock: Arc<ManualClock>,
    /// The database's URL, for a test that reaches around the store.
    pub(crate) url: String,
    _dir: Option<tempfile::TempDir>,
}

pub(crate) async fn setup(backend: Backend) -> Setup {
    let (store, dir, url) = fresh_store_url(backend).await;
    let s = Setup {
        store,
        clock: Arc::new(ManualClock::new(t0())),
        url,
        _dir: dir,
    };
    for (id, name, industry, place) in [
        ("acme", "Acme Robotics", "fintech", "US-DE"),
        ("globex", "Globex Foods", "food", "DE-BE"),
    ] {
        let (cid, p) = serde_json::from_value::<NewCompany>(json!({
            "id": id, "name": name, "industry": industry, "jurisdiction": place
        }))
        .expect("json")
        .validate()
        .expect("valid");
        s.store
            .create_company(&scope(cid.as_str()), &p, t0(), audit(id))
            .await
            .expect("create");
    }
    s
}

pub(crate) fn engine_with(
    s: &Setup,
    fake: &FakeLlm,
    cfg: EngineConfig,
    sleeper: Arc<NoSleep>,
) -> Engine {
    engine_structured(s, fake, cfg, sleeper, true)
}

/// [`engine_with`], its provider's `structured_output` as given.
fn engine_structured(
    s: &Setup,
    fake: &FakeLlm,
    cfg: EngineConfig,
    sleeper: Arc<NoSleep>,
    structured_output: bool,
) -> Engine {
    let provider = OpenAi::new("openai", &fake.base, None, Duration::from_secs(10)).expect("p");
    let policy = RetryPolicy {
        max_retries: 1,
        ..RetryPolicy::default()
    };
    let handle = ProviderHandle::new("fake", Arc::new(provider), "fake-model", false, policy)
        .with_sleeper(sleeper)
        .with_structured_output(structured_output);
    let providers = Providers {
        named: Default::default(),
        default: Some(handle),
    };
    let exec = AgentExecutor::new(&cfg, &providers).expect("agents");
    Engine::with_executor(s.store.clone(), s.clock.clone(), cfg, Arc::new(exec))
}

async fn remember(e: &Engine, company: &str, text: &str, people: &[&str]) {
    e.memory()
        .add(
            &scope(company),
            vec![NewMemory {
                occurred_at: t0() - TimeDelta::days(1),
                event_type: EventType::Contract,
                workstream: Workstream::Legal,
                category: "key_decisions".into(),
                content: json!({"text": text, "people": people}),
                importance: 8,
                indexed_terms: vec![],
                source: None,
            }],
            false,
            audit(company),
        )
        .await
        .expect("memory");
}

pub(crate) async fn submit_task(e: &Engine, company: &str, text: &str, ty: &str) -> TaskId {
    let req: TaskRequest =
        serde_json::from_value(json!({"task": text, "type": ty, "priority": "high"}))
            .expect("request");
    e.tasks()
        .submit(&scope(company), &req, None, audit(company))
        .await
        .expect("submit")
        .task
        .task_id
}

/// Claims and runs everything runnable, to the end of the runs.
pub(crate) async fn run_all(e: &Engine) {
    let r = e.scheduler().tick().await.expect("tick");
    for h in r.runs {
        h.await.expect("run");
    }
}

pub(crate) fn messages_text(req: &Value) -> String {
    req["messages"].to_string()
}

async fn a_tool_call_is_executed_and_its_result_fed_back(b: Backend) {
    let s = setup(b).await;
    let fake = FakeLlm::start(None, |n, _req| match n {
        0 => completion(
            tool_call(
                "call_1",
                "search_memory",
                json!({"query": "renewal Initech"}),
            ),
            300,
            20,
        ),
        _ => completion(
            submit(
                "Renews 1 March.",
                "The Initech contract renews on 1 March 2027.",
                0.9,
            ),
            400,
            30,
        ),
    })
    .await;
    let e = engine_with(&s, &fake, EngineConfig::default(), Arc::default());
    remember(
        &e,
        "acme",
        "Initech services contract renews on 1 March 2027",
        &["Dana Whit"],
    )
    .await;
    let id = submit_task(
        &e,
        "acme",
        "When does the Initech contract renew?",
        "complex_legal_analysis",
    )
    .await;
    run_all(&e).await;

    let task = s.store.get_task(&scope("acme"), &id).await.expect("task");
    assert_eq!(task.status, TaskStatus::Completed, "{task:?}");
    assert_eq!(task.agent, "legal");
    assert_eq!(task.confidence, Some(0.9));
    let result = task.result.expect("result");
    assert_eq!(
        result["answer"],
        "The Initech contract renews on 1 March 2027."
    );
    assert_eq!(result["agent"], "legal");
    // Usage from the provider is what was charged.
    assert_eq!((task.prompt_tokens, task.completion_tokens), (700, 50));

    let seen = fake.seen();
    assert_eq!(seen.len(), 2);
    // The context pack came first: the memory is in the first prompt.
    assert!(messages_text(&seen[0]).contains("renews on 1 March 2027"));
    let tools: Vec<&str> = seen[0]["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .map(|t| t["function"]["name"].as_str().expect("name"))
        .collect();
    // The offer is by name; submitting is the loop's own, last.
    assert_eq!(
        tools,
        [
            "record_memory",
            "search_knowledge",
            "search_memory",
            "submit_result"
        ]
    );
    // The tool's answer went back to the model, tied to its call.
    let last = seen[1]["messages"]
        .as_array()
        .expect("messages")
        .last()
        .expect("last")
        .clone();
    assert_eq!(last["role"], "tool");
    assert_eq!(last["tool_call_id"], "call_1");
    let content = last["content"].as_str().expect("content");
    assert!(content.contains("Initech services contract"));
    assert!(
        content.starts_with("<tool_output tool=\"search_memory\">"),
        "fenced as the tool's data: {content}"
    );

    let trace = s
        .store
        .task_trace(&scope("acme"), &id)
        .await
        .expect("trace");
    let kinds: Vec<StepKind> = trace.iter().map(|st| st.kind).collect();
    assert_eq!(
        kinds,
        [
            StepKind::TaskMessage,
            StepKind::Llm,
            StepKind::Tool,
            StepKind::Llm,
            StepKind::Tool,
            StepKind::ResponseMessage,
            StepKind::End
        ]
    );
    assert_eq!(
        trace[0].detail["task"],
        "When does the Initech contract renew?"
    );
    assert_eq!(trace[0].detail["company_context"]["id"], "acme");
    assert_eq!(
        (trace[1].prompt_tokens, trace[1].completion_tokens),
        (300, 20)
    );
    assert_eq!(trace[2].detail["name"], "search_memory");
    assert_eq!(trace[5].detail["status"], "completed");
    assert_eq!(trace[5].detail["confidence"], 0.9);
    assert_eq!(trace[5].detail["requires_human_review"], false);

    // The primary agent's session took the task and its outcome.
    let session = s.store.load_session(&scope("acme")).await.expect("session");
    assert_eq!(session.turns.len(), 2);
    assert!(
        session.turns[1]["content"]
            .as_str()
            .expect("c")
            .contains("Renews 1 March.")
    );
    // The ledger still balances.
    let admin = Principal::system().admin().expect("admin");
    assert!(s.store.verify_ledger(&admin).await.expect("verify").ok);
}

#[tokio::test]
async fn a_tool_call_is_executed_and_its_result_fed_back_sqlite() {
    a_tool_call_is_executed_and_its_result_fed_back(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_tool_call_is_executed_and_its_result_fed_back_postgres() {
    a_tool_call_is_executed_and_its_result_fed_back(Backend::Postgres).await;
}

async fn nothing_of_one_company_reaches_anothers_prompts(b: Backend) {
    let s = setup(b).await;
    // Serving globex, the model tries to name acme in a tool call.
    let fake = FakeLlm::start(None, |_n, req| {
        let text = req["messages"].to_string();
        let tool_results = req["messages"]
            .as_array()
            .map_or(0, |m| m.iter().filter(|m| m["role"] == "tool").count());
        match tool_results {
            0 if text.contains("Globex") => completion(
                json!({"role": "assistant", "content": null, "tool_calls": [
                    {"id": "a", "type": "function", "function": {"name": "search_memory",
                        "arguments": json!({"query": "Initech contract", "company_id": "acme"}).to_string()}},
                    {"id": "b", "type": "function", "function": {"name": "search_memory",
                        "arguments": json!({"query": "Initech contract Dana Whit"}).to_string()}}
                ]}),
                100,
                10,
            ),
            _ => completion(submit("done", "done", 0.95), 100, 10),
        }
    })
    .await;
    let e = engine_with(&s, &fake, EngineConfig::default(), Arc::default());
    remember(
        &e,
        "acme",
        "Initech services contract renews on 1 March 2027, signed by Dana Whit",
        &["Dana Whit"],
    )
    .await;
    remember(&e, "globex", "Supplier audit scheduled for July", &[]).await;
    let a = submit_task(
        &e,
        "acme",
        "Summarise the Initech contract",
        "complex_legal_analysis",
    )
    .await;
    run_all(&e).await;
    let b_id = submit_task(
        &e,
        "globex",
        "Summarise the Initech contract",
        "complex_legal_analysis",
    )
    .await;
    run_all(&e).await;
    for (c, id) in [("acme", &a), ("globex", &b_id)] {
        let t = s.store.get_task(&scope(c), id).await.expect("task");
        assert_eq!(t.status, TaskStatus::Completed, "{c}: {t:?}");
    }
    let seen = fake.seen();
    let globex: Vec<String> = seen
        .iter()
        .map(|r| r.to_string())
        .filter(|r| r.contains("Globex"))
        .collect();
    assert!(globex.len() >= 2, "globex's run made its calls");
    // What kira sent (system, user and tool messages; the model's own
    // words are its own) holds nothing of acme.
    let sent: Vec<String> = seen
        .iter()
        .filter(|r| r.to_string().contains("Globex"))
        .flat_map(|r| r["messages"].as_array().cloned().unwrap_or_default())
        .filter(|m| m["role"] != "assistant")
        .map(|m| m.to_string())
        .collect();
    for leak in [
        "Acme",
        "acme",
        "Initech services",
        "Dana Whit",
        "1 March 2027",
        "US-DE",
    ] {
        for p in &sent {
            assert!(!p.contains(leak), "{leak} reached a globex prompt: {p}");
        }
    }
    // The call naming another company was refused, not served.
    let tool_msgs: Vec<Value> = seen
        .iter()
        .filter(|r| r.to_string().contains("Globex"))
        .flat_map(|r| r["messages"].as_array().cloned().unwrap_or_default())
        .filter(|m| m["role"] == "tool")
        .collect();
    assert!(tool_msgs.iter().any(|m| {
        m["tool_call_id"] == "a"
            && m["content"]
                .as_str()
                .is_some_and(|c| c.contains("unknown field `company_id`"))
    }));
}

#[tokio::test]
async fn nothing_of_one_company_reaches_anothers_prompts_sqlite() {
    nothing_of_one_company_reaches_anothers_prompts(Backend::Sqlite).await;
}

#[tokio::test]
async fn nothing_of_one_company_reaches_anothers_prompts_postgres() {
    nothing_of_one_company_reaches_anothers_prompts(Backend::Postgres).await;
}

/// A model that never stops searching.
fn searching(_n: usize, _req: &Value) -> (u16, Value) {
    completion(
        tool_call("s", "search_memory", json!({"query": "anything"})),
        200,
        10,
    )
}

/// A model that searches `searches` times, then writes `text` as its
/// answer (the result JSON, alone or with words around it).
fn searching_then_writing(
    searches: usize,
    text: &'static str,
) -> impl Fn(usize, &Value) -> (u16, Value) + Send + Sync + 'static {
    move |n, req| {
        if n < searches {
            searching(n, req)
        } else {
            completion(json!({"role": "assistant", "content": text}), 200, 10)
        }
    }
}

#[tokio::test]
async fn the_step_limit_stops_a_run_and_sends_it_to_review() {
    let s = setup(Backend::Sqlite).await;
    let fake = FakeLlm::start(None, searching).await;
    let mut cfg = EngineConfig::default();
    cfg.agents.get_mut("legal").expect("legal").max_steps = Some(3);
    let e = engine_with(&s, &fake, cfg, Arc::default());
    let id = submit_task(&e, "acme", "Loop forever", "complex_legal_analysis").await;
    run_all(&e).await;
    let t = s.store.get_task(&scope("acme"), &id).await.expect("task");
    assert_eq!(t.status, TaskStatus::NeedsReview);
    assert!(t.requires_human_review);
    assert_eq!(t.confidence, Some(0.0));
    let r = t.result.expect("result");
    assert_eq!(r["limit_hit"], "steps");
    assert_eq!(r["steps"], 3);
    assert_eq!(fake.seen().len(), 3);
    assert_eq!((t.prompt_tokens, t.completion_tokens), (600, 30));
}

#[tokio::test]
async fn each_call_asks_for_a_tool_call_and_the_last_one_for_the_result() {
    let s = setup(Backend::Sqlite).await;
    // A server that honours the output format: two searches, then (asked
    // for the result itself) the result as JSON text.
    let fake = FakeLlm::start(
        None,
        searching_then_writing(
            2,
            r#"{"summary": "Renews 1 March.", "answer": "1 March 2027.", "confidence": 0.8}"#,
        ),
    )
    .await;
    let mut cfg = EngineConfig::default();
    cfg.agents.get_mut("legal").expect("legal").max_steps = Some(3);
    let e = engine_with(&s, &fake, cfg, Arc::default());
    let id = submit_task(&e, "acme", "When does it renew?", "complex_legal_analysis").await;
    run_all(&e).await;
    let seen = fake.seen();
    assert_eq!(seen.len(), 3);
    for call in &seen[..2] {
        assert_eq!(call["tool_choice"], "required", "{call}");
        assert!(call.get("response_format").is_none(), "{call}");
    }
    let format = &seen[2]["response_format"];
    assert_eq!(format["type"], "json_schema", "{}", seen[2]);
    assert_eq!(format["json_schema"]["name"], "result");
    // The result's schema is closed: strict mode holds the answer to it.
    assert_eq!(format["json_schema"]["strict"], true, "{format}");
    let schema = &format["json_schema"]["schema"];
    assert_eq!(schema["properties"]["confidence"]["type"], "number");
    assert_eq!(schema["properties"]["confidence"]["minimum"], 0);
    assert_eq!(schema["properties"]["confidence"]["maximum"], 1);
    assert!(
        schema["required"]
            .as_array()
            .expect("required")
            .contains(&json!("confidence")),
        "{schema}"
    );
    assert!(seen[2].get("tool_choice").is_none(), "{}", seen[2]);
    // The stated confidence is kept, and the review policy judged it:
    // 0.8 is above the default threshold, and no limit was hit.
    let t = s.store.get_task(&scope("acme"), &id).await.expect("task");
    assert_eq!((t.status, t.confidence), (TaskStatus::Completed, Some(0.8)));
    let r = t.result.expect("result");
    assert_eq!(r["well_formed"], true);
    assert!(r["limit_hit"].is_null(), "{r}");
}

#[test]
fn the_local_model_answers_in_one_call_unless_the_agent_sets_its_steps() {
    let provider = OpenAi::new(
        "openai",
        "http://127.0.0.1:9/v1",
        None,
        Duration::from_secs(1),
    )
    .expect("p");
    let provider: Arc<dyn kira_llm::Provider> = Arc::new(provider);
    let steps = |local: bool, set: Option<u32>| {
        let mut cfg = EngineConfig::default();
        cfg.agents.get_mut("primary").expect("primary").max_steps = set;
        let handle = ProviderHandle::new("p", provider.clone(), "m", local, RetryPolicy::default());
        let providers = Providers {
            named: Default::default(),
            default: Some(handle),
        };
        let exec = AgentExecutor::new(&cfg, &providers).expect("agents");
        exec.agent("primary").expect("primary").max_steps
    };
    assert_eq!(steps(true, None), 1);
    assert_eq!(steps(false, None), 6);
    assert_eq!(steps(true, Some(4)), 4);
    assert_eq!(steps(false, Some(2)), 2);
}

#[tokio::test]
async fn with_structured_output_off_every_call_goes_free_and_its_answer_is_still_read() {
    let s = setup(Backend::Sqlite).await;
    // One search, then the result as JSON text the model chose to write.
    let fake = FakeLlm::start(
        None,
        searching_then_writing(
            1,
            r#"Here: {"summary": "Renews 1 March.", "answer": "1 March 2027.", "confidence": 0.9}"#,
        ),
    )
    .await;
    let mut cfg = EngineConfig::default();
    cfg.agents.get_mut("legal").expect("legal").max_steps = Some(3);
    let e = engine_structured(&s, &fake, cfg, Arc::default(), false);
    let id = submit_task(&e, "acme", "When does it renew?", "complex_legal_analysis").await;
    run_all(&e).await;
    let seen = fake.seen();
    assert_eq!(seen.len(), 2);
    for call in &seen {
        // Tools are offered, but no call is held to a format.
        assert!(
            call["tools"].as_array().is_some_and(|t| !t.is_empty()),
            "{call}"
        );
        assert!(call.get("response_format").is_none(), "{call}");
        assert!(
            call.get("tool_choice").is_none_or(|c| c == "auto"),
            "{call}"
        );
    }
    let t = s.store.get_task(&scope("acme"), &id).await.expect("task");
    assert_eq!((t.status, t.confidence), (TaskStatus::Completed, Some(0.9)));
    let r = t.result.expect("result");
    assert_eq!(r["answer"], "1 March 2027.");
    assert_eq!(r["well_formed"], true);
}

#[tokio::test]
async fn the_token_limit_stops_a_run_before_the_call_that_would_pass_it() {
    let s = setup(Backend::Sqlite).await;
    // Each call uses 1,210 tokens by the provider's count.
    let fake = FakeLlm::start(None, |_n, _req| {
        completion(
            tool_call("s", "search_memory", json!({"query": "anything"})),
            1_200,
            10,
        )
    })
    .await;
    let mut cfg = EngineConfig::default();
    let legal = cfg.agents.get_mut("legal").expect("legal");
    legal.max_tokens_per_run = 2_500;
    legal.max_output_tokens = Some(1_000);
    let e = engine_with(&s, &fake, cfg, Arc::default());
    let id = submit_task(&e, "acme", "Loop forever", "complex_legal_analysis").await;
    run_all(&e).await;
    let t = s.store.get_task(&scope("acme"), &id).await.expect("task");
    assert_eq!(t.status, TaskStatus::NeedsReview);
    assert_eq!(t.result.expect("result")["limit_hit"], "tokens");
    // The first call fits (its prompt, ~600 counted with the tools, plus
    // the margin and 1,000 out); the second would need as much on top of
    // the 1,210 used: past 2,500.
    assert_eq!(fake.seen().len(), 1);
    assert_eq!(t.prompt_tokens + t.completion_tokens, 1_210);
}

#[tokio::test]
async fn the_wall_time_limit_stops_a_run() {
    let s = setup(Backend::Sqlite).await;
    // Each call takes 40 s on the test's clock.
    let fake = FakeLlm::start(Some((s.clock.clone(), TimeDelta::seconds(40))), searching).await;
    let mut cfg = EngineConfig::default();
    cfg.agents.get_mut("legal").expect("legal").max_wall_seconds = 100;
    let e = engine_with(&s, &fake, cfg, Arc::default());
    let id = submit_task(&e, "acme", "Loop forever", "complex_legal_analysis").await;
    run_all(&e).await;
    let t = s.store.get_task(&scope("acme"), &id).await.expect("task");
    assert_eq!(t.status, TaskStatus::NeedsReview);
    assert_eq!(t.result.expect("result")["limit_hit"], "wall_time");
    assert_eq!(fake.seen().len(), 3);
}

#[tokio::test]
async fn low_confidence_and_always_reviewed_types_wait_for_a_human() {
    let s = setup(Backend::Sqlite).await;
    let fake = FakeLlm::start(None, |_n, req| {
        // The task's own section (last in the prompt): the primary's
        // session may already hold the other task's turn when this runs.
        let text = messages_text(req);
        let task = text.rsplit("# Task ").next().unwrap_or_default();
        if task.contains("unsure") {
            completion(submit("maybe", "maybe", 0.4), 10, 5)
        } else {
            completion(submit("sure", "sure", 0.95), 10, 5)
        }
    })
    .await;
    let mut cfg = EngineConfig::default();
    cfg.review.always.insert("financial_modeling".into());
    let e = engine_with(&s, &fake, cfg, Arc::default());
    let unsure = submit_task(&e, "acme", "I am unsure", "quick_question_answer").await;
    let sure = submit_task(&e, "acme", "Say hi", "quick_question_answer").await;
    let model = submit_task(&e, "acme", "Model it", "financial_modeling").await;
    run_all(&e).await;
    let st = |id: TaskId| {
        let store = s.store.clone();
        async move { store.get_task(&scope("acme"), &id).await.expect("task") }
    };
    let t = st(unsure).await;
    assert_eq!(
        (t.status, t.requires_human_review),
        (TaskStatus::NeedsReview, true)
    );
    let t = st(sure).await;
    assert_eq!(
        (t.status, t.requires_human_review),
        (TaskStatus::Completed, false)
    );
    // The primary answered inline: no hand-off messages.
    let trace = s
        .store
        .task_trace(&scope("acme"), &t.task_id)
        .await
        .expect("trace");
    assert!(trace.iter().all(|st| st.kind != StepKind::TaskMessage));
    assert_eq!(trace[0].agent, "primary");
    let t = st(model).await;
    assert_eq!(
        (t.status, t.confidence),
        (TaskStatus::NeedsReview, Some(0.95))
    );
}

#[tokio::test]
async fn an_answer_without_the_protocol_counts_as_zero_confidence() {
    let s = setup(Backend::Sqlite).await;
    let fake = FakeLlm::start(None, |_n, _req| {
        completion(
            json!({"role": "assistant", "content": "It renews in March, I think."}),
            10,
            5,
        )
    })
    .await;
    let e = engine_with(&s, &fake, EngineConfig::default(), Arc::default());
    let id = submit_task(&e, "acme", "When?", "quick_question_answer").await;
    run_all(&e).await;
    let t = s.store.get_task(&scope("acme"), &id).await.expect("task");
    assert_eq!(t.status, TaskStatus::NeedsReview);
    assert_eq!(t.confidence, Some(0.0));
    let r = t.result.expect("result");
    assert_eq!(r["answer"], "It renews in March, I think.");
    assert_eq!(r["well_formed"], false);
}

#[tokio::test]
async fn a_failing_provider_is_retried_then_the_task_fails_and_nothing_stays_reserved() {
    let s = setup(Backend::Sqlite).await;
    let fake = FakeLlm::start(None, |_n, _req| {
        (500, json!({"error": {"message": "boom"}}))
    })
    .await;
    let mut cfg = EngineConfig::default();
    cfg.scheduler.max_attempts = 2;
    cfg.scheduler.retry_backoff = TimeDelta::seconds(1);
    let sleeper = Arc::new(NoSleep::default());
    let e = engine_with(&s, &fake, cfg, sleeper.clone());
    let id = submit_task(&e, "acme", "Anything", "quick_question_answer").await;
    run_all(&e).await;
    let t = s.store.get_task(&scope("acme"), &id).await.expect("task");
    assert_eq!(t.status, TaskStatus::Queued, "{t:?}");
    // One call and one retry inside the provider wrapper, with a backoff.
    assert_eq!(fake.seen().len(), 2);
    assert_eq!(sleeper.0.lock().expect("lock").len(), 1);
    s.clock.advance(TimeDelta::seconds(5));
    run_all(&e).await;
    let t = s.store.get_task(&scope("acme"), &id).await.expect("task");
    assert_eq!(t.status, TaskStatus::Failed, "{t:?}");
    assert!(
        t.last_error.as_deref().is_some_and(|e| e.contains("500")),
        "{t:?}"
    );
    assert_eq!(fake.seen().len(), 4);
    // Two calls failed after their retries: both counted.
    let calls = e.metrics().provider_calls().await.expect("calls");
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].0, ("fake".to_owned(), "fake-model".to_owned()));
    assert_eq!((calls[0].1.ok, calls[0].1.errors), (0, 2));
    let b = s
        .store
        .company_budget(
            &scope("acme"),
            &EngineConfig::default().budget,
            s.clock.now(),
        )
        .await
        .expect("budget");
    let line = &b.companies[0];
    assert_eq!((line.reserved, line.spent), (0, 0));
    let admin = Principal::system().admin().expect("admin");
    assert!(s.store.verify_ledger(&admin).await.expect("verify").ok);
}

#[tokio::test]
async fn every_call_reserves_first_and_settles_its_real_usage() {
    let s = setup(Backend::Sqlite).await;
    let fake = FakeLlm::start(None, |n, _req| match n {
        0 | 1 => completion(
            tool_call("s", "search_knowledge", json!({"query": "GDPR"})),
            1_000,
            100,
        ),
        _ => completion(submit("ok", "ok", 0.9), 1_500, 200),
    })
    .await;
    let e = engine_with(&s, &fake, EngineConfig::default(), Arc::default());
    let id = submit_task(&e, "acme", "GDPR duties?", "complex_legal_analysis").await;
    run_all(&e).await;
    let t = s.store.get_task(&scope("acme"), &id).await.expect("task");
    assert_eq!(t.status, TaskStatus::Completed);
    assert_eq!((t.prompt_tokens, t.completion_tokens), (3_500, 400));
    let calls = e.metrics().provider_calls().await.expect("calls");
    assert_eq!((calls[0].1.ok, calls[0].1.errors), (3, 0), "{calls:?}");
    assert_eq!(calls[0].1.buckets.iter().sum::<u64>(), 3);
    let trace = s
        .store
        .task_trace(&scope("acme"), &id)
        .await
        .expect("trace");
    let llm: Vec<_> = trace.iter().filter(|st| st.kind == StepKind::Llm).collect();
    assert_eq!(llm.len(), 3);
    assert!(
        llm[0].detail["reserved"].as_i64().expect("reserved") >= t.estimated_tokens,
        "the claim holds only what the run needs to start; the first call takes its bound"
    );
    for st in &llm {
        // Reserved before the call: at least the output it could write.
        assert!(
            st.detail["reserved"].as_i64().expect("reserved") > 1_000,
            "{st:?}"
        );
    }
    let b = s
        .store
        .company_budget(
            &scope("acme"),
            &EngineConfig::default().budget,
            s.clock.now(),
        )
        .await
        .expect("budget");
    let line = &b.companies[0];
    assert_eq!((line.reserved, line.spent), (0, 3_900));
    let admin = Principal::system().admin().expect("admin");
    assert!(s.store.verify_ledger(&admin).await.expect("verify").ok);
}

/// Answers every call with a submitted result naming the task's text.
fn answering(_n: usize, req: &Value) -> (u16, Value) {
    let text = messages_text(req);
    let topic = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"]
        .into_iter()
        .rev()
        .find(|w| text.contains(&format!("Topic {w}")))
        .unwrap_or("none");
    completion(
        submit(&format!("Settled topic {topic}"), "done", 0.95),
        100,
        10,
    )
}

async fn concurrent_runs_of_a_company_keep_every_session_turn(b: Backend) {
    let s = setup(b).await;
    let fake = FakeLlm::start(None, answering).await;
    let e = engine_with(&s, &fake, EngineConfig::default(), Arc::default());
    let mut ids = Vec::new();
    for topic in ["alpha", "bravo", "charlie", "delta"] {
        ids.push(
            submit_task(
                &e,
                "acme",
                &format!("Topic {topic}: where are we?"),
                "quick_question_answer",
            )
            .await,
        );
    }
    // All four claimed in one pass and run at once.
    let r = e.scheduler().tick().await.expect("tick");
    assert_eq!(r.runs.len(), 4);
    for h in r.runs {
        h.await.expect("run");
    }
    let session = s.store.load_session(&scope("acme")).await.expect("session");
    assert_eq!(session.turns.len(), 8, "two turns per task, none lost");
    for id in &ids {
        let turns: Vec<&Value> = session
            .turns
            .iter()
            .filter(|t| t["task_id"] == json!(id))
            .collect();
        assert_eq!(turns.len(), 2);
        assert_eq!(turns[0]["role"], "user");
        assert_eq!(turns[1]["role"], "primary");
    }
    assert!(session.tokens > 0);
    let other = s
        .store
        .load_session(&scope("globex"))
        .await
        .expect("session");
    assert!(
        other.turns.is_empty(),
        "another company's session is untouched"
    );
}

#[tokio::test]
async fn concurrent_runs_of_a_company_keep_every_session_turn_sqlite() {
    concurrent_runs_of_a_company_keep_every_session_turn(Backend::Sqlite).await;
}

#[tokio::test]
async fn concurrent_runs_of_a_company_keep_every_session_turn_postgres() {
    concurrent_runs_of_a_company_keep_every_session_turn(Backend::Postgres).await;
}

/// Runs `topics` one after another for acme as quick questions.
async fn run_topics(e: &Engine, topics: &[&str]) {
    for topic in topics {
        submit_task(
            e,
            "acme",
            &format!("Topic {topic}: what was decided?"),
            "quick_question_answer",
        )
        .await;
        run_all(e).await;
    }
}

fn small_session() -> EngineConfig {
    let mut cfg = EngineConfig::default();
    cfg.primary.session_max_tokens = 60;
    cfg.primary.session_keep_turns = 2;
    cfg
}

async fn the_session_is_summarised_past_its_threshold(b: Backend) {
    let s = setup(b).await;
    let fake = FakeLlm::start(None, answering).await;
    let e = engine_with(&s, &fake, small_session(), Arc::default());
    run_topics(&e, &["alpha", "bravo", "charlie", "delta", "echo"]).await;
    let session = s.store.load_session(&scope("acme")).await.expect("session");
    assert!(
        session.turns.len() <= 4,
        "older turns folded away: {:?}",
        session.turns
    );
    let kept = serde_json::to_string(&session.turns).expect("json");
    assert!(
        ["alpha", "bravo", "charlie", "delta"]
            .iter()
            .any(|t| session.summary.contains(t) && !kept.contains(t)),
        "the summary holds a task folded out of the turns: {}",
        session.summary
    );
    let last = session.turns.last().expect("a turn");
    assert!(last["content"].as_str().unwrap_or("").contains("echo"));
    // The last prompt showed the summary before the recent turns.
    let seen = fake.seen();
    let prompt = messages_text(seen.last().expect("a call"));
    assert!(prompt.contains("Our conversation so far"), "{prompt}");
    assert!(prompt.contains("Earlier: "), "{prompt}");
}

#[tokio::test]
async fn the_session_is_summarised_past_its_threshold_sqlite() {
    the_session_is_summarised_past_its_threshold(Backend::Sqlite).await;
}

#[tokio::test]
async fn the_session_is_summarised_past_its_threshold_postgres() {
    the_session_is_summarised_past_its_threshold(Backend::Postgres).await;
}

#[tokio::test]
async fn the_llm_summariser_writes_the_session_summary_and_falls_back_on_failure() {
    use kira_engine::agent::summarize::LlmSummarizer;
    for fails in [false, true] {
        let s = setup(Backend::Sqlite).await;
        let agents = FakeLlm::start(None, answering).await;
        let summariser = FakeLlm::start(None, move |_, _| {
            if fails {
                (500, json!({"error": {"message": "down"}}))
            } else {
                completion(
                    json!({"role": "assistant", "content": "The LLM summary of alpha to charlie."}),
                    50,
                    9,
                )
            }
        })
        .await;
        let provider =
            OpenAi::new("openai", &summariser.base, None, Duration::from_secs(10)).expect("p");
        let e = engine_with(&s, &agents, small_session(), Arc::default()).with_summarizer(
            Arc::new(LlmSummarizer::new(Arc::new(provider), "summary-model", 120)),
        );
        run_topics(&e, &["alpha", "bravo", "charlie", "delta"]).await;
        let session = s.store.load_session(&scope("acme")).await.expect("session");
        let calls = summariser.seen();
        assert!(!calls.is_empty(), "compaction called the summariser");
        assert_eq!(calls[0]["model"], "summary-model");
        let asked = messages_text(&calls[0]);
        assert!(
            asked.contains("alpha"),
            "the old turns are summarised: {asked}"
        );
        if fails {
            assert!(
                !session.summary.contains("The LLM summary") && session.summary.contains("Topic"),
                "the extractive summary stands in: {}",
                session.summary
            );
        } else {
            assert!(
                session.summary.starts_with("The LLM summary"),
                "{}",
                session.summary
            );
        }
    }
}

#[tokio::test]
async fn a_rejected_result_runs_again_with_the_reviewers_feedback_in_its_prompt() {
    use kira_store::agents::{Decision, ReviewInput};
    let s = setup(Backend::Sqlite).await;
    // Unsure the first time, sure the second.
    let fake = FakeLlm::start(None, |n, _| {
        completion(
            submit("draft", "the answer", if n == 0 { 0.3 } else { 0.9 }),
            100,
            10,
        )
    })
    .await;
    let e = engine_with(&s, &fake, EngineConfig::default(), Arc::default());
    let id = submit_task(&e, "acme", "Review the NDA", "complex_legal_analysis").await;
    run_all(&e).await;
    let t = s.store.get_task(&scope("acme"), &id).await.expect("task");
    assert_eq!(t.status, TaskStatus::NeedsReview);
    let first = messages_text(&fake.seen()[0]);
    assert!(!first.contains("A reviewer rejected"), "{first}");
    let t = e
        .reviews()
        .apply(
            &scope("acme"),
            &id,
            ReviewInput {
                decision: Decision::Reject {
                    feedback: "Cite the renewal clause".into(),
                },
                rating: None,
                reviewer: "key:reviewer".into(),
            },
            s.clock.now(),
            audit("acme"),
        )
        .await
        .expect("review");
    assert_eq!(t.status, TaskStatus::Queued);
    run_all(&e).await;
    let seen = fake.seen();
    assert_eq!(seen.len(), 2);
    let second = messages_text(&seen[1]);
    assert!(second.contains("A reviewer rejected"), "{second}");
    assert!(second.contains("Cite the renewal clause"), "{second}");
    let t = s.store.get_task(&scope("acme"), &id).await.expect("task");
    assert_eq!(t.status, TaskStatus::Completed);
}

/// Issue 17, finding 1, through the model: even with globex's profile made
/// to match acme's, nothing of acme reaches globex's prompts until acme
/// published an item and both consented; then only its anonymised text.
async fn only_published_text_reaches_anothers_prompts(b: Backend) {
    let s = setup(b).await;
    let fake = FakeLlm::start(None, |_n, _req| {
        completion(submit("done", "done", 0.95), 100, 10)
    })
    .await;
    let e = engine_with(&s, &fake, EngineConfig::default(), Arc::default());
    // An admin makes globex look like acme.
    s.store
        .update_company(
            &scope("globex"),
            kira_core::company::CompanyPatch {
                industry: Some("fintech".into()),
                jurisdiction: Some("US-DE".into()),
                ..Default::default()
            },
            t0(),
            audit("globex"),
        )
        .await
        .expect("patch");
    remember(
        &e,
        "acme",
        "Settlement playbook quokkaplan: Gregor Vantongeren of Zephyrine Logistics GmbH \
         pays $1,250,000 into DE89 3704 0044 0532 0130 00, g.v@zephyrine.example.",
        &[],
    )
    .await;
    let never = [
        "Gregor",
        "Vantongeren",
        "Zephyrine",
        "1,250,000",
        "DE89",
        "3704",
        "zephyrine.example",
        "Acme",
    ];
    let task = "Summarise the settlement playbook quokkaplan";
    let globex_prompts = |from: usize| -> Vec<String> {
        fake.seen()
            .into_iter()
            .skip(from)
            .flat_map(|r| r["messages"].as_array().cloned().unwrap_or_default())
            .filter(|m| m["role"] != "assistant")
            .map(|m| m.to_string())
            .filter(|m| m.contains("Globex") || m.contains("quokkaplan"))
            .collect()
    };
    submit_task(&e, "globex", task, "complex_legal_analysis").await;
    run_all(&e).await;
    let sent = globex_prompts(0);
    assert!(!sent.is_empty(), "globex's run made its calls");
    for p in &sent {
        assert!(
            !p.contains("Settlement playbook quokkaplan:"),
            "{b:?}: unpublished: {p}"
        );
        for leak in never {
            assert!(!p.contains(leak), "{b:?}: {leak} reached globex: {p}");
        }
    }

    // Published, and both consent: the anonymised text, and nothing else.
    let admin = Principal::system().admin().expect("admin");
    let legal = kira_core::sharing::Consent {
        scope: "anonymized_legal_patterns".into(),
        partner: kira_core::sharing::Partner::Any,
    };
    for c in ["acme", "globex"] {
        e.sharing()
            .put_consent(
                &admin,
                &CompanyId::parse(c).expect("id"),
                &legal,
                "admin",
                audit(c),
            )
            .await
            .expect("consent");
    }
    let memories = s
        .store
        .list_memories(
            &scope("acme"),
            &kira_store::memory::MemoryFilter::default(),
            None,
            10,
        )
        .await
        .expect("list");
    let note = memories
        .iter()
        .find(|m| m.text().contains("quokkaplan"))
        .expect("acme's note");
    e.sharing()
        .publish(
            &scope("acme"),
            note.id,
            &legal.scope,
            "operator",
            audit("acme"),
        )
        .await
        .expect("publish");
    let before = fake.seen().len();
    submit_task(&e, "globex", task, "complex_legal_analysis").await;
    run_all(&e).await;
    let sent = globex_prompts(before);
    assert!(
        sent.iter().any(|p| p.contains("quokkaplan")),
        "{b:?}: the published item reached the prompt: {sent:?}"
    );
    for p in &sent {
        for leak in never {
            assert!(!p.contains(leak), "{b:?}: {leak} reached globex: {p}");
        }
    }
}

#[tokio::test]
async fn only_published_text_reaches_anothers_prompts_sqlite() {
    only_published_text_reaches_anothers_prompts(Backend::Sqlite).await;
}

#[tokio::test]
async fn only_published_text_reaches_anothers_prompts_postgres() {
    only_published_text_reaches_anothers_prompts(Backend::Postgres).await;
}

// Issue 19: budgets that count what the provider bills. The fake provider
// counts the prompt its own way (characters / 4 of the messages and tools
// it receives) times `factor`, or reports a fixed prompt size, and a
// completion of `completion` tokens (never above the request's max_tokens).

/// What the billing fake reported, in total and per company.
#[derive(Default)]
struct Billed {
    calls: AtomicUsize,
    tokens: std::sync::atomic::AtomicI64,
}

fn own_count(req: &Value) -> f64 {
    (req["messages"].to_string().len() + req["tools"].to_string().len()) as f64 / 4.0
}

async fn billing_fake(
    factor: f64,
    fixed_prompt: Option<u32>,
    written: u32,
    billed: Arc<Billed>,
) -> FakeLlm {
    FakeLlm::start(None, move |_n, req| {
        let prompt = fixed_prompt.unwrap_or_else(|| (own_count(req) * factor).ceil() as u32);
        let max = req["max_tokens"].as_u64().unwrap_or(u64::MAX) as u32;
        let c = written.min(max);
        billed.calls.fetch_add(1, Ordering::SeqCst);
        billed
            .tokens
            .fetch_add(i64::from(prompt + c), Ordering::SeqCst);
        completion(submit("ok", "ok", 0.9), prompt, c)
    })
    .await
}

fn fake_executor(fake: &FakeLlm, cfg: &EngineConfig) -> Arc<AgentExecutor> {
    let provider = OpenAi::new("openai", &fake.base, None, Duration::from_secs(10)).expect("p");
    let handle = ProviderHandle::new(
        "fake",
        Arc::new(provider),
        "fake-model",
        false,
        RetryPolicy {
            max_retries: 1,
            ..RetryPolicy::default()
        },
    )
    .with_sleeper(Arc::new(NoSleep::default()));
    let providers = Providers {
        named: Default::default(),
        default: Some(handle),
    };
    Arc::new(AgentExecutor::new(cfg, &providers).expect("agents"))
}

/// The legal agent writing at most 1,000 tokens per call.
fn probe_config(total_tokens: i64) -> EngineConfig {
    let mut cfg = EngineConfig::default();
    cfg.budget.total_tokens = total_tokens;
    if let Some(a) = cfg.agents.get_mut("legal") {
        a.max_output_tokens = Some(1_000);
    }
    if let Some(t) = cfg.task_types.get_mut("complex_legal_analysis") {
        t.max_output_tokens = 1_000;
    }
    cfg
}

async fn submit_medium(e: &Engine, company: &str, text: &str) -> TaskId {
    let req: TaskRequest = serde_json::from_value(
        json!({"task": text, "type": "complex_legal_analysis", "priority": "medium"}),
    )
    .expect("request");
    e.tasks()
        .submit(&scope(company), &req, None, audit(company))
        .await
        .expect("submit")
        .task
        .task_id
}

/// Runs the scheduler until nothing reaches the model for three rounds,
/// moving the clock past retries and budget rechecks between rounds.
async fn drain(e: &Engine, s: &Setup, billed: &Billed) {
    let mut quiet = 0;
    while quiet < 3 {
        let before = billed.calls.load(Ordering::SeqCst);
        run_all(e).await;
        s.clock.advance(TimeDelta::minutes(10));
        if billed.calls.load(Ordering::SeqCst) == before {
            quiet += 1;
        } else {
            quiet = 0;
        }
    }
}

fn company_line(b: &kira_store::work::BudgetState) -> kira_store::work::CompanyBudget {
    b.companies[0].clone()
}

struct Probe {
    admitted: usize,
    real: i64,
    budget: i64,
    ledger: i64,
    overdraft: i64,
}

/// The issue's probe: one company whose allocation holds exactly 10 calls
/// of real usage, 50 tasks submitted at once, max_tokens 1,000. The model
/// is calibrated first by one call of another company (same month) when
/// `warm` is set.
async fn probe(b: Backend, factor: f64, fixed_prompt: Option<u32>, warm: bool) -> Probe {
    probe_with(b, factor, fixed_prompt, warm, None).await.0
}

/// [`probe`], with the budget sized for 10 calls of `per_call` tokens
/// when given (instead of the measured call), and the setup and counts
/// handed back for more.
async fn probe_with(
    b: Backend,
    factor: f64,
    fixed_prompt: Option<u32>,
    warm: bool,
    per_call: Option<i64>,
) -> (Probe, Setup, Engine, Arc<Billed>) {
    let s = setup(b).await;
    let billed = Arc::new(Billed::default());
    let fake = billing_fake(factor, fixed_prompt, 200, billed.clone()).await;
    // One real call measures what a call of this shape costs (globex pays).
    let exec = fake_executor(&fake, &probe_config(2_000_000));
    let warmup = Engine::with_executor(
        s.store.clone(),
        s.clock.clone(),
        probe_config(2_000_000),
        exec.clone(),
    );
    submit_medium(
        &warmup,
        "globex",
        "Summarise the GDPR duties of a processor, task 0",
    )
    .await;
    drain(&warmup, &s, &billed).await;
    let per_call = per_call.unwrap_or(billed.tokens.load(Ordering::SeqCst));
    assert_eq!(billed.calls.load(Ordering::SeqCst), 1);
    // The probe's month: an allocation of exactly 10 such calls. The
    // allocation is the base share of the total, linear in it.
    let month = |n: u32| {
        t0().checked_add_months(chrono::Months::new(n))
            .expect("date")
    };
    let cfg0 = probe_config(1_000_000);
    s.store
        .refresh_allocations(&cfg0.budget, month(1))
        .await
        .expect("refresh");
    let a0 = company_line(
        &s.store
            .company_budget(&scope("acme"), &cfg0.budget, month(1))
            .await
            .expect("budget"),
    )
    .allocation;
    let want = 10 * per_call;
    let cfg = probe_config((1_000_000 * want + a0 - 1) / a0);
    s.clock.set(month(2));
    // A fresh engine and executor when not warm (uncalibrated); else the
    // same executor goes on (its calibration kept), with the new budget.
    let exec = if warm {
        exec
    } else {
        fake_executor(&fake, &cfg)
    };
    let e = Engine::with_executor(s.store.clone(), s.clock.clone(), cfg.clone(), exec);
    let budget = company_line(
        &s.store
            .company_budget(&scope("acme"), &cfg.budget, s.clock.now())
            .await
            .expect("budget"),
    )
    .allocation;
    let calls0 = billed.calls.load(Ordering::SeqCst);
    let tokens0 = billed.tokens.load(Ordering::SeqCst);
    for i in 0..50 {
        submit_medium(
            &e,
            "acme",
            &format!("Summarise the GDPR duties of a processor, task {}", i % 10),
        )
        .await;
    }
    drain(&e, &s, &billed).await;
    let line = company_line(
        &s.store
            .company_budget(&scope("acme"), &cfg.budget, s.clock.now())
            .await
            .expect("budget"),
    );
    let admin = Principal::system().admin().expect("admin");
    let report = s.store.verify_ledger(&admin).await.expect("verify");
    assert!(report.ok, "{report:?}");
    // A task denied its first call waits for budget; none fails for it.
    let tasks = s
        .store
        .list_tasks(
            &scope("acme"),
            &kira_store::work::TaskFilter {
                limit: 1000,
                ..Default::default()
            },
        )
        .await
        .expect("tasks");
    assert!(
        tasks.iter().all(|t| t.status != TaskStatus::Failed),
        "{:?}",
        tasks.iter().find(|t| t.status == TaskStatus::Failed)
    );
    let p = Probe {
        admitted: billed.calls.load(Ordering::SeqCst) - calls0,
        real: billed.tokens.load(Ordering::SeqCst) - tokens0,
        budget,
        ledger: line.spent_all_pools,
        overdraft: line.overdraft,
    };
    (p, s, e, billed)
}

/// The issue's table, factor by factor: calls admitted, real usage against
/// the budget, and the ledger equal to what the provider reported.
async fn the_probe_spends_what_the_provider_bills_within_the_budget(b: Backend) {
    for factor in [1.0, 1.3, 3.0] {
        let p = probe(b, factor, None, true).await;
        let ratio = p.real as f64 / p.budget as f64;
        eprintln!(
            "probe {b:?} factor {factor}: {} calls admitted, real {} / budget {} = {ratio:.3}, ledger {}",
            p.admitted, p.real, p.budget, p.ledger
        );
        assert_eq!(p.ledger, p.real, "every reported token is on the ledger");
        assert!(p.admitted >= 7, "factor {factor}: {} calls", p.admitted);
        assert!(p.admitted <= 10, "factor {factor}: {} calls", p.admitted);
        // Calibrated: at most the spread of the model's ratio above.
        assert!(ratio <= 1.05, "factor {factor}: {ratio}");
        if factor == 1.0 {
            assert!(ratio <= 1.0, "{ratio}");
            assert_eq!(p.overdraft, 0);
        }
    }
}

#[tokio::test]
async fn the_probe_spends_what_the_provider_bills_within_the_budget_sqlite() {
    the_probe_spends_what_the_provider_bills_within_the_budget(Backend::Sqlite).await;
}

#[tokio::test]
async fn the_probe_spends_what_the_provider_bills_within_the_budget_postgres() {
    the_probe_spends_what_the_provider_bills_within_the_budget(Backend::Postgres).await;
}

/// A provider reporting 20,000 prompt tokens a call, far above kira's
/// uncalibrated estimate, with a budget of 10 ordinary calls (2,000
/// tokens): every reported token is on the ledger, the overdraft comes only
/// from the calls in flight when the first one overdrew (at most the
/// company's slots), and the overdrawn company runs nothing more until the
/// next period.
async fn a_provider_counting_far_more_overdraws_and_stops_the_company(b: Backend) {
    let (p, s, e, billed) = probe_with(b, 1.0, Some(20_000), false, Some(2_000)).await;
    eprintln!(
        "probe {b:?} 20,000 prompt, budget of 10 x 2,000: {} calls admitted, real {} / budget {} = {:.3}, ledger {}, overdraft {}",
        p.admitted,
        p.real,
        p.budget,
        p.real as f64 / p.budget as f64,
        p.ledger,
        p.overdraft
    );
    assert_eq!(p.ledger, p.real, "every reported token is on the ledger");
    assert!(p.overdraft > 0);
    assert_eq!(p.overdraft, p.real - p.budget);
    let slots = EngineConfig::default().scheduler.per_company_concurrency as usize;
    assert!(
        (1..=slots).contains(&p.admitted),
        "only the calls in flight before the first overdraft: {}",
        p.admitted
    );
    // Overdrawn: a new task does not reach the model.
    let calls = billed.calls.load(Ordering::SeqCst);
    submit_medium(&e, "acme", "One more question").await;
    drain(&e, &s, &billed).await;
    assert_eq!(billed.calls.load(Ordering::SeqCst), calls);
    // The next period starts clear; but calibrated now, a call is known to
    // cost 21,000, more than the whole allocation, so none is sent.
    let next = s.clock.now() + TimeDelta::days(40);
    s.clock.set(next);
    submit_medium(&e, "acme", "A question of the next month").await;
    drain(&e, &s, &billed).await;
    assert_eq!(billed.calls.load(Ordering::SeqCst), calls);
    let line = company_line(
        &s.store
            .company_budget(&scope("acme"), &EngineConfig::default().budget, next)
            .await
            .expect("budget"),
    );
    assert_eq!((line.spent, line.overdraft), (0, 0));
}

#[tokio::test]
async fn a_provider_counting_far_more_overdraws_and_stops_the_company_sqlite() {
    a_provider_counting_far_more_overdraws_and_stops_the_company(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_provider_counting_far_more_overdraws_and_stops_the_company_postgres() {
    a_provider_counting_far_more_overdraws_and_stops_the_company(Backend::Postgres).await;
}

/// A one-call run reserves its prompt (as the provider counts it, once
/// calibrated) plus max_tokens, within 5%; and the claim held less.
async fn a_one_call_run_reserves_its_prompt_and_max_tokens(b: Backend) {
    let s = setup(b).await;
    let billed = Arc::new(Billed::default());
    let fake = billing_fake(1.3, None, 200, billed.clone()).await;
    let cfg = probe_config(2_000_000);
    let e = Engine::with_executor(
        s.store.clone(),
        s.clock.clone(),
        cfg.clone(),
        fake_executor(&fake, &cfg),
    );
    submit_medium(&e, "globex", "Summarise the GDPR duties of a processor").await;
    drain(&e, &s, &billed).await;
    let id = submit_medium(&e, "acme", "Summarise the GDPR duties of a controller").await;
    drain(&e, &s, &billed).await;
    let task = s.store.get_task(&scope("acme"), &id).await.expect("task");
    assert_eq!(task.status, TaskStatus::Completed, "{task:?}");
    let trace = s
        .store
        .task_trace(&scope("acme"), &id)
        .await
        .expect("trace");
    let llm: Vec<_> = trace.iter().filter(|st| st.kind == StepKind::Llm).collect();
    assert_eq!(llm.len(), 1);
    let reserved = llm[0].detail["reserved"].as_i64().expect("reserved");
    let need = llm[0].prompt_tokens + 1_000;
    let off = (reserved - need).abs() as f64 / need as f64;
    eprintln!(
        "reserved {reserved}, real prompt + max_tokens {need}: {:.2}% off",
        off * 100.0
    );
    assert!(off <= 0.05, "reserved {reserved} for {need}");
    assert!(
        task.estimated_tokens < reserved,
        "the claim held less: {}",
        task.estimated_tokens
    );
    assert_eq!(llm[0].detail["usage"], "reported by the provider");
    let admin = Principal::system().admin().expect("admin");
    assert!(s.store.verify_ledger(&admin).await.expect("verify").ok);
}

#[tokio::test]
async fn a_one_call_run_reserves_its_prompt_and_max_tokens_sqlite() {
    a_one_call_run_reserves_its_prompt_and_max_tokens(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_one_call_run_reserves_its_prompt_and_max_tokens_postgres() {
    a_one_call_run_reserves_its_prompt_and_max_tokens(Backend::Postgres).await;
}

/// A provider that reports no usage is charged the reservation, and the
/// trace says so.
#[tokio::test]
async fn a_call_without_usage_is_charged_its_reservation() {
    let s = setup(Backend::Sqlite).await;
    let fake = FakeLlm::start(None, |_n, _req| completion(submit("ok", "ok", 0.9), 0, 0)).await;
    let cfg = probe_config(2_000_000);
    let e = Engine::with_executor(
        s.store.clone(),
        s.clock.clone(),
        cfg.clone(),
        fake_executor(&fake, &cfg),
    );
    let id = submit_medium(&e, "acme", "GDPR duties?").await;
    run_all(&e).await;
    let t = s.store.get_task(&scope("acme"), &id).await.expect("task");
    let trace = s
        .store
        .task_trace(&scope("acme"), &id)
        .await
        .expect("trace");
    let llm: Vec<_> = trace.iter().filter(|st| st.kind == StepKind::Llm).collect();
    assert_eq!(
        llm[0].detail["usage"],
        "not reported: charged the reservation"
    );
    let reserved = llm[0].detail["reserved"].as_i64().expect("reserved");
    assert_eq!(t.prompt_tokens + t.completion_tokens, reserved);
    let line = company_line(
        &s.store
            .company_budget(&scope("acme"), &cfg.budget, s.clock.now())
            .await
            .expect("budget"),
    );
    assert_eq!((line.reserved, line.spent), (0, reserved));
}

/// Many concurrent runs of two companies whose model bills 1.0x, 1.3x or
/// 3.0x its own count (picked per round), on small budgets, uncalibrated at
/// first: each company's ledger equals what the provider reported for it,
/// to the token, and its overdraft is no more than its calls' usage above
/// their reservations.
async fn concurrent_runs_put_every_billed_token_on_the_ledger(b: Backend) {
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move |n: u64| {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) % n
    };
    for round in 0..6 {
        let s = setup(b).await;
        let factors = [
            [1.0, 1.3, 3.0][next(3) as usize],
            [1.0, 1.3, 3.0][next(3) as usize],
        ];
        // What the provider billed each company (known by its name in the prompt).
        let billed: Arc<Mutex<[i64; 2]>> = Arc::default();
        let fake = {
            let billed = billed.clone();
            FakeLlm::start(None, move |_n, req| {
                let acme = req["messages"].to_string().contains("Acme Robotics");
                let i = usize::from(!acme);
                let prompt = (own_count(req) * factors[i]).ceil() as u32;
                let max = req["max_tokens"].as_u64().unwrap_or(u64::MAX) as u32;
                let c = 200.min(max);
                billed.lock().expect("lock")[i] += i64::from(prompt + c);
                completion(submit("ok", "ok", 0.9), prompt, c)
            })
            .await
        };
        // Tight budgets too: a few calls fill an allocation, so calls in
        // flight before calibration overdraw it.
        let cfg = probe_config([8_000, 12_000, 40_000][next(3) as usize]);
        let e = Engine::with_executor(
            s.store.clone(),
            s.clock.clone(),
            cfg.clone(),
            fake_executor(&fake, &cfg),
        );
        let mut ids = Vec::new();
        for company in ["acme", "globex"] {
            for i in 0..(5 + next(20)) {
                let id = submit_medium(
                    &e,
                    company,
                    &format!("Question {i} on {}", "x".repeat(next(400) as usize)),
                )
                .await;
                ids.push((company, id));
            }
        }
        // Until ten passes in a row send nothing to the model: tasks that
        // have not learnt their first call's cost yet may each take a pass
        // being claimed and sent back to wait.
        let mut rounds = 0;
        let mut last = -1;
        while rounds < 10 {
            run_all(&e).await;
            s.clock.advance(TimeDelta::minutes(10));
            let now: i64 = billed.lock().expect("lock").iter().sum();
            if now == last {
                rounds += 1;
            } else {
                rounds = 0;
            }
            last = now;
        }
        let billed = *billed.lock().expect("lock");
        for (i, company) in ["acme", "globex"].into_iter().enumerate() {
            let line = company_line(
                &s.store
                    .company_budget(&scope(company), &cfg.budget, s.clock.now())
                    .await
                    .expect("budget"),
            );
            let mut excess = 0;
            for (_, id) in ids.iter().filter(|(c, _)| *c == company) {
                let trace = s
                    .store
                    .task_trace(&scope(company), id)
                    .await
                    .expect("trace");
                for st in trace.iter().filter(|st| st.kind == StepKind::Llm) {
                    let reserved = st.detail["reserved"].as_i64().expect("reserved");
                    excess += (st.prompt_tokens + st.completion_tokens - reserved).max(0);
                }
            }
            eprintln!(
                "round {round} {b:?} {company} x{}: billed {}, ledger {}, allocation {}, overdraft {}, excess {excess}",
                factors[i], billed[i], line.spent_all_pools, line.allocation, line.overdraft
            );
            assert_eq!(line.spent_all_pools, billed[i], "{company}: to the token");
            assert!(
                line.overdraft <= excess,
                "{company}: {} > {excess}",
                line.overdraft
            );
        }
        let admin = Principal::system().admin().expect("admin");
        let report = s.store.verify_ledger(&admin).await.expect("verify");
        assert!(report.ok, "{report:?}");
    }
}

#[tokio::test]
async fn concurrent_runs_put_every_billed_token_on_the_ledger_sqlite() {
    concurrent_runs_put_every_billed_token_on_the_ledger(Backend::Sqlite).await;
}

#[tokio::test]
async fn concurrent_runs_put_every_billed_token_on_the_ledger_postgres() {
    concurrent_runs_put_every_billed_token_on_the_ledger(Backend::Postgres).await;
}
