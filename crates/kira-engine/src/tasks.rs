//! Tasks: submitting and cancelling them (the checks a submission must
//! pass, how its agent, id label and token estimate are chosen,
//! idempotency, the scheduler woken), and reading them, their events and
//! the trace of their runs.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use kira_core::ValidationError;
use kira_core::audit::AuditRecord;
use kira_core::auth::{CompanyScope, Role};
use kira_core::task::{
    Priority, Task, TaskEvent, TaskId, TaskRequest, check_task_text, check_task_type,
};
use kira_store::StoreError;
use kira_store::agents::Step;
use kira_store::work::{Idempotency, NewTask, Submitted, TaskFilter};
use sha2::{Digest, Sha256};

use crate::config::{EngineConfig, PRIMARY, TasksConfig};
use crate::scheduler::Scheduler;
use crate::{Ctx, EngineError};

/// Largest `parameters` object, serialised.
pub const MAX_PARAMETERS_BYTES: usize = 256 * 1024;
const MAX_IDEMPOTENCY_KEY: usize = 200;

/// Where a task of this request runs, and what its id says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub agent: String,
    pub label: String,
}

/// Routing, the primary agent's spawn decision (SEED 3.2): a specialist
/// the submitter names runs the task; else the type's specialist, when
/// the type spawns (a type with `spawn_above_chars` only for a document
/// longer than that); else any task estimated above
/// `primary.spawn_above_tokens` goes to a specialist (the type's, or
/// `primary.large_task_specialist`); else the primary agent answers
/// inline. The id names the specialist, or the type when the primary
/// answers. Deciding at submission lets the scheduler hold the right
/// agent's slot; the run records the primary's hand-off as SEED 1's task
/// message.
pub fn route(
    req: &TaskRequest,
    cfg: &EngineConfig,
    estimated_tokens: i64,
) -> Result<Route, ValidationError> {
    check_task_type(&req.task_type)?;
    let Some(t) = cfg.task_types.get(&req.task_type) else {
        let known: Vec<&str> = cfg.task_types.keys().map(String::as_str).collect();
        return Err(ValidationError::new(
            "type",
            format!(
                "unknown task type '{}'; configured: {}",
                req.task_type,
                known.join(", ")
            ),
        ));
    };
    let specialist = match &req.specialist {
        Some(s) if s == PRIMARY || !cfg.agents.contains_key(s) => {
            return Err(ValidationError::new(
                "specialist",
                format!("'{s}' is not a configured specialist"),
            ));
        }
        Some(s) => Some(s.clone()),
        None => match (&t.specialist, t.spawn_above_chars) {
            (Some(s), Some(above)) if document_chars(req) > above => Some(s.clone()),
            (_, Some(_)) => None,
            (s, None) => s.clone(),
        },
    };
    let specialist = specialist.or_else(|| {
        (estimated_tokens > cfg.primary.spawn_above_tokens).then(|| {
            t.specialist
                .clone()
                .unwrap_or_else(|| cfg.primary.large_task_specialist.clone())
        })
    });
    Ok(match specialist {
        Some(s) => Route {
            agent: s.clone(),
            label: s,
        },
        None => Route {
            agent: PRIMARY.to_owned(),
            label: req.task_type.clone(),
        },
    })
}

/// The size of the document a task is about: its `document` parameter
/// when it is text, else the task text, in characters.
pub fn document_chars(req: &TaskRequest) -> usize {
    req.parameters
        .as_ref()
        .and_then(|p| p.get("document"))
        .and_then(serde_json::Value::as_str)
        .unwrap_or(&req.task)
        .chars()
        .count()
}

/// The request's text and parameters, counted with cl100k.
fn input_tokens(req: &TaskRequest, params: &str) -> i64 {
    let count =
        crate::memory::pack::count_tokens(&req.task) + crate::memory::pack::count_tokens(params);
    i64::try_from(count).unwrap_or(i64::MAX / 2)
}

/// An upper bound of the tokens a run takes: the request's text and
/// parameters counted with cl100k, plus the type's output allowance.
pub fn estimate_tokens(req: &TaskRequest, params: &str, cfg: &EngineConfig) -> i64 {
    let input = input_tokens(req, params);
    let output = cfg
        .task_types
        .get(&req.task_type)
        .map_or(2_000, |t| t.max_output_tokens);
    input.saturating_add(output).max(1)
}

/// The hash an `Idempotency-Key` is bound to: the request as parsed, the
/// parameters' keys sorted, so formatting differences do not count as
/// another request. Sorted here, not by serde_json: a dependency turns on
/// its `preserve_order`, under which objects keep the order they came in.
pub fn request_hash(req: &TaskRequest) -> String {
    let mut req = req.clone();
    if let Some(p) = req.parameters.as_mut() {
        p.sort_all_objects();
    }
    let canonical = serde_json::to_string(&req).unwrap_or_default();
    hex::encode(Sha256::digest(canonical.as_bytes()))
}

fn check_key(key: &str) -> Result<(), ValidationError> {
    let ok = !key.is_empty()
        && key.len() <= MAX_IDEMPOTENCY_KEY
        && key.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new(
            "Idempotency-Key",
            format!("must be 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters"),
        ))
    }
}

/// How many unfinished tasks at `priority` a key of `role` may leave its
/// company with: emergency outranks every company's work, so a company
/// key gets `[tasks] max_emergency_open_per_company` of them (none at 0);
/// an admin, and every other level, no limit.
pub fn emergency_limit(
    priority: Priority,
    role: Role,
    cfg: &TasksConfig,
) -> Result<Option<u32>, EngineError> {
    if priority != Priority::Emergency || role == Role::Admin {
        return Ok(None);
    }
    match cfg.max_emergency_open_per_company {
        0 => Err(EngineError::Forbidden(ValidationError::new(
            "priority",
            "only an admin key may submit at emergency priority",
        ))),
        n => Ok(Some(n)),
    }
}

/// Checks a request and builds what the store keeps.
pub fn prepare(
    req: &TaskRequest,
    company: &kira_core::company::Company,
    idempotency_key: Option<&str>,
    cfg: &EngineConfig,
    now: DateTime<Utc>,
) -> Result<NewTask, ValidationError> {
    let task = check_task_text(&req.task)?;
    if let Some(d) = req.deadline
        && d <= now
    {
        return Err(ValidationError::new("deadline", "is in the past"));
    }
    let parameters = req
        .parameters
        .clone()
        .unwrap_or_else(|| serde_json::json!({}));
    if !parameters.is_object() {
        return Err(ValidationError::new("parameters", "must be a JSON object"));
    }
    kira_core::storable::check_json(&parameters, "parameters")?;
    let params = serde_json::to_string(&parameters).unwrap_or_default();
    let params_len = params.len();
    if params_len > MAX_PARAMETERS_BYTES {
        return Err(ValidationError::new(
            "parameters",
            format!("is {params_len} bytes; at most {MAX_PARAMETERS_BYTES}"),
        ));
    }
    // A type check first, so an unknown type is named before any estimate.
    route(req, cfg, 0)?;
    let estimated_tokens = estimate_tokens(req, if params == "{}" { "" } else { &params }, cfg);
    let route = route(req, cfg, estimated_tokens)?;
    let idempotency = idempotency_key
        .map(|k| {
            check_key(k)?;
            Ok::<_, ValidationError>(Idempotency {
                key: k.to_owned(),
                request_hash: request_hash(req),
            })
        })
        .transpose()?;
    let p = &company.profile;
    Ok(NewTask {
        label: route.label,
        company_context: serde_json::json!({
            "id": company.id,
            "name": p.name,
            "industry": p.industry,
            "jurisdiction": p.jurisdiction,
        }),
        estimated_tokens,
        task,
        task_type: req.task_type.clone(),
        priority: req.priority,
        deadline: req.deadline,
        parameters,
        specialist: req.specialist.clone(),
        agent: route.agent,
        max_attempts: cfg.scheduler.max_attempts,
        multiplier: p.priority_multiplier,
        idempotency,
        open_limit: None,
    })
}

/// Tasks as their submitters see them. No state of its own; a submission
/// asks the scheduler's executor what a run needs to start, and wakes the
/// scheduler.
pub struct Tasks {
    ctx: Arc<Ctx>,
    scheduler: Arc<Scheduler>,
}

impl Tasks {
    pub(crate) fn new(ctx: Arc<Ctx>, scheduler: Arc<Scheduler>) -> Self {
        Self { ctx, scheduler }
    }

    /// Submits a task for the scope's company.
    pub async fn submit(
        &self,
        scope: &CompanyScope,
        req: &TaskRequest,
        idempotency_key: Option<&str>,
        audit: AuditRecord,
    ) -> Result<Submitted, EngineError> {
        let now = self.ctx.clock.now();
        let company = self.ctx.store.get_company(scope).await?;
        if company.is_archived() {
            return Err(
                StoreError::Conflict(format!("company '{}' is archived", company.id)).into(),
            );
        }
        let mut new = prepare(req, &company, idempotency_key, &self.ctx.config, now)?;
        new.open_limit = emergency_limit(req.priority, scope.role(), &self.ctx.config.tasks)?;
        // The claim reserves the estimate: where the executor knows its
        // first call's bound, that, so the call needs no second reservation.
        if let Some(exec) = self.scheduler.executor() {
            let params = serde_json::to_string(&new.parameters).unwrap_or_default();
            let input = input_tokens(req, if params == "{}" { "" } else { &params });
            if let Some(n) = exec.first_call_tokens(&new.agent, &new.task_type, input) {
                new.estimated_tokens = n;
            }
        }
        let submitted = self.ctx.store.submit_task(scope, &new, now, audit).await?;
        if submitted.created {
            self.ctx.wake_scheduler();
        }
        Ok(submitted)
    }

    pub async fn cancel(
        &self,
        scope: &CompanyScope,
        id: &TaskId,
        audit: AuditRecord,
    ) -> Result<Task, EngineError> {
        let task = self
            .ctx
            .store
            .cancel_task(scope, id, self.ctx.clock.now(), audit)
            .await?;
        Ok(task)
    }

    /// One page of the scope's company's tasks, newest first.
    pub async fn list(
        &self,
        scope: &CompanyScope,
        filter: &TaskFilter,
    ) -> Result<Vec<Task>, EngineError> {
        Ok(self.ctx.store.list_tasks(scope, filter).await?)
    }

    pub async fn get(&self, scope: &CompanyScope, id: &TaskId) -> Result<Task, EngineError> {
        Ok(self.ctx.store.get_task(scope, id).await?)
    }

    /// The task's state changes after the event `after`, oldest first.
    pub async fn events(
        &self,
        scope: &CompanyScope,
        id: &TaskId,
        after: i64,
    ) -> Result<Vec<TaskEvent>, EngineError> {
        Ok(self.ctx.store.task_events(scope, id, after).await?)
    }

    /// The steps of the task's runs, by attempt, then order.
    pub async fn trace(&self, scope: &CompanyScope, id: &TaskId) -> Result<Vec<Step>, EngineError> {
        Ok(self.ctx.store.task_trace(scope, id).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn req(json: serde_json::Value) -> TaskRequest {
        serde_json::from_value(json).expect("request")
    }

    fn company() -> kira_core::company::Company {
        let (id, profile) = serde_json::from_value::<kira_core::company::NewCompany>(serde_json::json!({
            "id": "acme", "name": "Acme", "industry": "fintech", "jurisdiction": "US-DE", "priority_multiplier": 1.5
        }))
        .expect("json")
        .validate()
        .expect("valid");
        let at = Utc
            .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
            .single()
            .expect("time");
        kira_core::company::Company {
            id,
            profile,
            created_at: at,
            updated_at: at,
            archived_at: None,
        }
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0)
            .single()
            .expect("time")
    }

    #[test]
    fn emergency_from_a_company_key_is_limited() {
        let cfg = |n| TasksConfig {
            max_emergency_open_per_company: n,
        };
        for role in [Role::Operator, Role::Viewer] {
            assert_eq!(
                emergency_limit(Priority::Emergency, role, &cfg(2)).expect("limited"),
                Some(2)
            );
            let e = emergency_limit(Priority::Emergency, role, &cfg(0)).expect_err("refused");
            assert!(matches!(e, EngineError::Forbidden(v) if v.field == "priority"));
            assert_eq!(
                emergency_limit(Priority::High, role, &cfg(0)).expect("ok"),
                None
            );
        }
        assert_eq!(
            emergency_limit(Priority::Emergency, Role::Admin, &cfg(0)).expect("admin"),
            None
        );
    }

    #[test]
    fn routing_follows_the_type_then_the_request() {
        let cfg = EngineConfig::default();
        let r = |j| route(&req(j), &cfg, 100);
        assert_eq!(
            r(serde_json::json!({"task": "x", "type": "complex_legal_analysis"})).expect("ok"),
            Route {
                agent: "legal".into(),
                label: "legal".into()
            }
        );
        assert_eq!(
            r(serde_json::json!({"task": "x", "type": "quick_question_answer"})).expect("ok"),
            Route {
                agent: "primary".into(),
                label: "quick_question_answer".into()
            }
        );
        assert_eq!(
            r(serde_json::json!({"task": "x", "type": "quick_question_answer", "specialist": "financial"})).expect("ok"),
            Route { agent: "financial".into(), label: "financial".into() }
        );
        assert_eq!(
            r(serde_json::json!({"task": "x", "type": "astrology"}))
                .expect_err("bad")
                .field,
            "type"
        );
        assert_eq!(
            r(serde_json::json!({"task": "x", "type": "quick_question_answer", "specialist": "primary"})).expect_err("bad").field,
            "specialist"
        );
    }

    #[test]
    fn the_spawn_matrix_is_seeds() {
        let cfg = EngineConfig::default();
        let agent =
            |j: serde_json::Value, estimate| route(&req(j), &cfg, estimate).expect("ok").agent;
        let t = |ty: &str| serde_json::json!({"task": "x", "type": ty});
        // SEED 3.2: True / False per type.
        for (ty, who) in [
            ("new_company_onboarding", "research"),
            ("complex_legal_analysis", "legal"),
            ("financial_modeling", "financial"),
            ("routine_status_update", "primary"),
            ("quick_question_answer", "primary"),
        ] {
            assert_eq!(agent(t(ty), 100), who, "{ty}");
        }
        // document_review: lambda doc_size: doc_size > 10000.
        let doc = |n: usize| {
            serde_json::json!({"task": "Review it", "type": "document_review",
                "parameters": {"document": "a".repeat(n)}})
        };
        assert_eq!(agent(doc(10_000), 100), "primary");
        assert_eq!(agent(doc(10_001), 100), "legal");
        let long_text = serde_json::json!({"task": "b".repeat(10_001), "type": "document_review"});
        assert_eq!(agent(long_text, 100), "legal");
        // or estimate_tokens(task) > 50000.
        assert_eq!(agent(t("quick_question_answer"), 50_000), "primary");
        assert_eq!(agent(t("quick_question_answer"), 50_001), "research");
        assert_eq!(agent(doc(10), 50_001), "legal");
    }

    #[test]
    fn estimates_count_real_tokens() {
        let cfg = EngineConfig::default();
        let r = req(serde_json::json!({"task": "hello world", "type": "quick_question_answer"}));
        // "hello world" is two cl100k tokens; the type allows 1,000 out.
        assert_eq!(estimate_tokens(&r, "", &cfg), 1_002);
    }

    #[test]
    fn prepare_checks_every_field() {
        let cfg = EngineConfig::default();
        let c = company();
        let bad = |j: serde_json::Value, key: Option<&str>| {
            prepare(&req(j), &c, key, &cfg, now())
                .expect_err("bad")
                .field
        };
        assert_eq!(
            bad(
                serde_json::json!({"task": " ", "type": "quick_question_answer"}),
                None
            ),
            "task"
        );
        assert_eq!(
            bad(
                serde_json::json!({"task": "x", "type": "quick_question_answer", "deadline": "2026-05-01T00:00:00Z"}),
                None
            ),
            "deadline"
        );
        assert_eq!(
            bad(
                serde_json::json!({"task": "x", "type": "quick_question_answer", "parameters": [1]}),
                None
            ),
            "parameters"
        );
        // NUL, which PostgreSQL cannot store, named where it is, whatever
        // the transport (issue 17).
        assert_eq!(
            bad(
                serde_json::json!({"task": "x", "type": "quick_question_answer", "parameters": {"doc": {"pages": ["a", "b\u{0}"]}}}),
                None
            ),
            "parameters.doc.pages.1"
        );
        let huge = "x".repeat(MAX_PARAMETERS_BYTES + 1);
        assert_eq!(
            bad(
                serde_json::json!({"task": "x", "type": "quick_question_answer", "parameters": {"doc": huge}}),
                None
            ),
            "parameters"
        );
        assert_eq!(
            bad(
                serde_json::json!({"task": "x", "type": "quick_question_answer"}),
                Some("")
            ),
            "Idempotency-Key"
        );
        let ok = prepare(
            &req(serde_json::json!({"task": "Review the agreement", "type": "document_review", "priority": "high"})),
            &c,
            Some("k-1"),
            &cfg,
            now(),
        )
        .expect("valid");
        assert_eq!(ok.priority, Priority::High);
        // A short document: the primary agent reviews it inline.
        assert_eq!(ok.agent, "primary");
        assert_eq!(ok.multiplier, 1.5);
        assert_eq!(ok.company_context["jurisdiction"], "US-DE");
        assert!(ok.estimated_tokens > 3_000);
    }

    #[test]
    fn the_request_hash_ignores_formatting_but_not_content() {
        let a = req(serde_json::json!({"task": "x", "type": "t", "parameters": {"a": 1, "b": 2}}));
        let b: TaskRequest =
            serde_json::from_str(r#"{ "parameters": {"b": 2, "a": 1}, "type": "t", "task": "x" }"#)
                .expect("json");
        let c = req(serde_json::json!({"task": "y", "type": "t", "parameters": {"a": 1, "b": 2}}));
        assert_eq!(request_hash(&a), request_hash(&b));
        assert_ne!(request_hash(&a), request_hash(&c));
    }
}
