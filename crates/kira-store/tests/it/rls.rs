//! PostgreSQL row-level security, checked with raw SQL as the app role:
//! even a statement that forgets its WHERE, or tries to write another
//! company's rows, sees and touches one company only, and the audit log
//! cannot be rewritten. Memories and their vectors, run traces, reviews,
//! primary sessions, published items and sharing consents are company
//! tables too.

use kira_core::CompanyId;
use kira_core::audit::{AuditRecord, Outcome};
use kira_core::auth::{Access, Principal};
use kira_core::company::{CompanyPatch, NewCompany};
use kira_store::agents::{AgentStore, Decision, ReviewInput, Session, Step, StepKind};
use kira_store::memory::{MemoryStore, MemoryVector};
use kira_store::metrics::MetricsStore;
use kira_store::postgres::{APP_ROLE, PgStore};
use kira_store::sharing::SharingStore;
use kira_store::testdb::fresh_postgres;
use kira_store::tools::ToolStore;
use kira_store::work::{ClaimOutcome, Finish, TaskStore};
use kira_store::{AuditStore, CompanyStore};
use sqlx::postgres::PgQueryResult;
use sqlx::{Connection, Executor, PgConnection, Row};

const A: &str = "comp-a";
const B: &str = "comp-b";
/// The tables holding company data, each under row-level security.
const COMPANY_TABLES: [&str; 21] = [
    "companies",
    "audit_log",
    "memories",
    "memory_vectors",
    "memory_names",
    "task_steps",
    "task_reviews",
    "agent_sessions",
    "shared_items",
    "sharing_consents",
    "metric_events",
    "metric_rollups",
    "metric_totals",
    "alerts",
    "alert_notifications",
    "alert_groups",
    "alert_held_notices",
    "alert_sending_notices",
    "tool_registrations",
    "tool_configs",
    "tool_listings",
];

fn record(company: Option<&CompanyId>, action: &str) -> AuditRecord {
    AuditRecord {
        at: crate::support::t0(),
        request_id: "rls-test".into(),
        actor: "system".into(),
        company_id: company.cloned(),
        action: action.into(),
        target: company.map_or_else(|| "system".into(), |c| format!("company:{c}")),
        outcome: Outcome::Ok,
        detail: String::new(),
    }
}

/// A fresh database with companies A and B, each with audit entries, plus an
/// entry that concerns no company. Returns the store and the database URL.
async fn setup() -> (PgStore, String) {
    let url = fresh_postgres().await;
    let store = PgStore::open(&url, None).await.expect("open store");
    let admin = Principal::system().admin().expect("system is admin");
    for id in [A, B] {
        let (id, profile) = NewCompany {
            id: id.into(),
            name: format!("Company {id}"),
            industry: "fintech".into(),
            jurisdiction: "US-DE".into(),
            revenue_usd: 1,
            complexity_score: 0.5,
            activity_score: 0.5,
            priority_multiplier: 1.0,
            sla_response_seconds: 30,
            contacts: vec![],
            sharing_consent: Default::default(),
        }
        .validate()
        .expect("valid company");
        let scope = admin.company(&id, Access::Write);
        store
            .create_company(
                &scope,
                &profile,
                crate::support::t0(),
                record(Some(&id), "company.create"),
            )
            .await
            .expect("create company");
        let patch = CompanyPatch {
            revenue_usd: Some(2),
            ..Default::default()
        };
        store
            .update_company(
                &scope,
                patch,
                crate::support::t0(),
                record(Some(&id), "company.update"),
            )
            .await
            .expect("update company");
        let memory = kira_core::memory::Memory {
            id: uuid::Uuid::now_v7(),
            company_id: id.clone(),
            occurred_at: crate::support::t0(),
            event_type: kira_core::memory::EventType::Note,
            workstream: kira_core::memory::Workstream::General,
            category: "general".into(),
            content: serde_json::json!({
                "text": format!("{id}'s secret"),
                "people": [format!("{id} person")],
                "counterparties": [format!("{id} supplier")],
            }),
            importance: 5,
            indexed_terms: vec![],
            source: None,
            created_at: crate::support::t0(),
            archived_at: None,
            compacted_from: vec![],
            supersedes: None,
        };
        store
            .insert_memories(
                &scope,
                std::slice::from_ref(&memory),
                record(Some(&id), "memory.add"),
            )
            .await
            .expect("insert memory");
        store
            .put_vectors(
                &scope,
                "m",
                &[MemoryVector {
                    memory_id: memory.id,
                    vector: vec![1.0, 2.0],
                }],
            )
            .await
            .expect("put vector");
        let item = kira_store::sharing::SharedItem {
            id: uuid::Uuid::now_v7(),
            scope: "process_templates".into(),
            memory_id: memory.id,
            text: format!("{id}'s published item"),
            published_by: "system".into(),
            published_at: crate::support::t0(),
            withdrawn_by: None,
            withdrawn_at: None,
        };
        store
            .publish_item(&scope, &item, record(Some(&id), "sharing.publish"))
            .await
            .expect("publish");
        let consent = kira_core::sharing::Consent {
            scope: "process_templates".into(),
            partner: kira_core::sharing::Partner::Any,
        };
        store
            .put_consent(
                &scope,
                &consent,
                "system",
                crate::support::t0(),
                record(Some(&id), "sharing.consent"),
            )
            .await
            .expect("consent");
        let tool = kira_core::tools::ToolEntry {
            name: "crm".into(),
            layer: kira_core::tools::Layer::Company,
            domain: None,
            company_id: Some(id.clone()),
            description: format!("{id}'s crm"),
            source: kira_core::tools::ToolSource::McpStdio {
                command: "/bin/true".into(),
                args: vec![],
                env: Default::default(),
            },
            timeout_ms: None,
            created_by: "system".into(),
            created_at: Some(crate::support::t0()),
        };
        store
            .add_tool(
                kira_store::tools::ToolWriter::Company(&scope),
                &tool,
                record(Some(&id), "tool.add"),
            )
            .await
            .expect("tool");
        store
            .put_tool_listing(
                kira_store::tools::ToolWriter::Company(&scope),
                &kira_store::tools::ToolListing {
                    slot: format!("company:{id}"),
                    name: "crm".into(),
                    company_id: Some(id.clone()),
                    source_digest: "d".into(),
                    tools: serde_json::json!([{"name": "lookup"}]),
                    listed_at: crate::support::t0(),
                },
            )
            .await
            .expect("tool listing");
        store
            .put_tool_config(
                &scope,
                "crm.lookup",
                Some(&serde_json::json!({"defaults": {"region": "eu"}})),
                "system",
                crate::support::t0(),
                record(Some(&id), "tool.configure"),
            )
            .await
            .expect("tool config");
    }
    // Once both exist, so the budget period allocates to both.
    for id in [A, B] {
        let id = CompanyId::parse(id).expect("valid id");
        agent_rows(&store, &admin.company(&id, Access::Write)).await;
    }
    // The runs' ends and reviews rolled up into series rows; then a cancel
    // each, recorded and not yet rolled up.
    store.roll_up_metrics(1_000).await.expect("roll up");
    for id in [A, B] {
        let id = CompanyId::parse(id).expect("valid id");
        let scope = admin.company(&id, Access::Write);
        let t0 = crate::support::t0();
        let task = store
            .submit_task(
                &scope,
                &crate::work::new_task("legal", kira_core::task::Priority::Low, 100),
                t0,
                record(Some(&id), "task.submit"),
            )
            .await
            .expect("submit")
            .task
            .task_id;
        store
            .cancel_task(&scope, &task, t0, record(Some(&id), "task.cancel"))
            .await
            .expect("cancel");
    }
    alert_rows(&store).await;
    store
        .append_audit(record(None, "server.start"))
        .await
        .expect("append system entry");
    (store, url)
}

/// An alert of each company with a notification attempt, and one of the
/// system's (no company: no company sees it), as the evaluator writes them;
/// one rule's notices held, another's taken out and being sent.
async fn alert_rows(store: &PgStore) {
    use kira_core::alerts::{
        Alert, AlertState, Audience, GroupKey, Grouping, Held, NoticeKind, RuleKind, Severity,
        Subject,
    };
    use kira_store::alerts::{AlertStore, Delivery, NotificationAttempt};
    let t0 = crate::support::t0();
    let alert = |rule: &str, subject: Subject| Alert {
        id: uuid::Uuid::now_v7(),
        rule: rule.into(),
        kind: RuleKind::SlaViolation,
        severity: Severity::Warning,
        subject,
        labels: Default::default(),
        state: AlertState::Firing,
        summary: "slow".into(),
        value: 1.0,
        started_at: t0,
        fired_at: Some(t0),
        acknowledged_at: None,
        acknowledged_by: None,
        escalated_at: None,
        last_notified_at: Some(t0),
        resolved_at: None,
        resolved_by: None,
        updated_at: t0,
        version: 0,
    };
    let of_rule = |rule: &str| {
        [
            alert(rule, Subject::Company(CompanyId::parse(A).expect("id"))),
            alert(rule, Subject::Company(CompanyId::parse(B).expect("id"))),
            alert(rule, Subject::System),
        ]
    };
    // Each alert's notice held for the operators and, for a company's,
    // for its contact too: the contact's group is the company's.
    let hold = |alerts: &[Alert]| {
        let mut held = Vec::new();
        for a in alerts {
            let mut audiences = vec![Audience::Team("operator".into())];
            if a.company().is_some() {
                audiences.push(Audience::CompanyContact);
            }
            for who in &audiences {
                held.push((GroupKey::of(a, NoticeKind::Firing, who), Held::from(a)));
            }
        }
        held
    };
    let (alerts, later) = (of_rule("sla_violation"), of_rule("review_backlog"));
    store
        .write_evaluation(&alerts, &[], &hold(&alerts), t0)
        .await
        .expect("alerts");
    let due = Grouping {
        wait: chrono::TimeDelta::zero(),
        interval: chrono::TimeDelta::minutes(5),
    };
    let (taken, _) = store
        .take_due_notices(t0, due, chrono::TimeDelta::minutes(5))
        .await
        .expect("take");
    assert_eq!(taken.len(), 3, "the operators' group and each contact's");
    store
        .write_evaluation(&later, &[], &hold(&later), t0)
        .await
        .expect("alerts");
    let attempts: Vec<NotificationAttempt> = alerts
        .iter()
        .map(|a| NotificationAttempt {
            alert_id: a.id,
            company_id: a.company().cloned(),
            notice: NoticeKind::Firing,
            channel: "log".into(),
            target: "log".into(),
            attempt: 1,
            at: t0,
            outcome: Delivery::Sent,
            error: None,
        })
        .collect();
    store
        .record_notifications(&attempts)
        .await
        .expect("notifications");
}

/// A task of the scope's company taken through review (a step, an
/// approval) and a saved primary session: a row in each agents table.
async fn agent_rows(store: &PgStore, scope: &kira_core::auth::CompanyScope) {
    let t0 = crate::support::t0();
    let company = scope.company();
    let submitted = store
        .submit_task(
            scope,
            &crate::work::new_task("legal", kira_core::task::Priority::Medium, 100),
            t0,
            record(Some(company), "task.submit"),
        )
        .await
        .expect("submit");
    let id = submitted.task.task_id;
    let claimed = store
        .claim(
            scope,
            &id,
            "w1",
            t0 + chrono::TimeDelta::minutes(1),
            &crate::work::small_budget(),
            t0,
        )
        .await
        .expect("claim");
    assert!(
        matches!(claimed, ClaimOutcome::Claimed { .. }),
        "{claimed:?}"
    );
    let finish = Finish {
        status: kira_core::task::TaskStatus::NeedsReview,
        reason: "low confidence".into(),
        result: Some(serde_json::json!({"answer": format!("{company}'s secret answer")})),
        confidence: Some(0.3),
        requires_human_review: true,
        error: None,
        retry_at: None,
    };
    store
        .finish(scope, &id, "w1", finish, t0)
        .await
        .expect("finish");
    let step = Step {
        task_id: id.clone(),
        attempt: 1,
        seq: 0,
        agent: "primary".into(),
        kind: StepKind::Llm,
        prompt_tokens: 1,
        completion_tokens: 1,
        latency_ms: 1,
        detail: serde_json::json!({"content": format!("{company}'s secret prompt")}),
        at: t0,
    };
    store.record_steps(scope, &[step]).await.expect("steps");
    let input = ReviewInput {
        decision: Decision::Approve { result: None },
        rating: Some(4),
        reviewer: "system".into(),
    };
    store
        .review_task(
            scope,
            &id,
            &input,
            1,
            t0,
            record(Some(company), "task.review"),
        )
        .await
        .expect("review");
    let session = Session {
        summary: format!("{company}'s secret session"),
        ..Session::default()
    };
    store
        .save_session(scope, &session, t0)
        .await
        .expect("session");
}

/// A raw connection to `url` acting as the app role, no company named.
async fn app_connection(url: &str) -> PgConnection {
    let mut conn = PgConnection::connect(url).await.expect("connect");
    conn.execute("SET ROLE kira_app").await.expect("set role");
    conn
}

async fn count(conn: &mut PgConnection, table: &str) -> i64 {
    // `table` is one of this file's constants.
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
        .fetch_one(conn)
        .await
        .expect("count")
}

async fn name_company(conn: &mut PgConnection, company: &str) {
    sqlx::query("SELECT set_config('app.current_company_id', $1, false)")
        .bind(company)
        .execute(conn)
        .await
        .expect("set company");
}

/// Asserts the statement failed with SQLSTATE 42501 (insufficient
/// privilege) and a message containing `needle`, which tells an RLS
/// violation from a missing privilege.
#[track_caller]
fn assert_refused(r: Result<PgQueryResult, sqlx::Error>, needle: &str) {
    match r {
        Err(sqlx::Error::Database(e)) => {
            assert_eq!(e.code().as_deref(), Some("42501"), "{e}");
            assert!(
                e.message().contains(needle),
                "expected {needle:?}, got {:?}",
                e.message()
            );
        }
        other => panic!("expected a refusal ({needle}), got {other:?}"),
    }
}

const RLS_VIOLATION: &str = "violates row-level security policy";

#[tokio::test]
async fn app_role_sees_only_the_named_company() {
    let (_store, url) = setup().await;

    // The superuser bypasses the policies: both companies' rows, and the
    // entry without a company, are there to be hidden.
    let mut su = PgConnection::connect(&url).await.expect("connect");
    assert_eq!(count(&mut su, "companies").await, 2);
    let audit_companies: Vec<Option<String>> =
        sqlx::query_scalar("SELECT DISTINCT company_id FROM audit_log ORDER BY company_id")
            .fetch_all(&mut su)
            .await
            .expect("audit companies");
    assert_eq!(audit_companies, [Some(A.into()), Some(B.into()), None]);

    let mut app = app_connection(&url).await;
    for table in COMPANY_TABLES {
        assert_eq!(
            count(&mut app, table).await,
            0,
            "{table} with no company named"
        );
    }

    name_company(&mut app, A).await;
    for table in COMPANY_TABLES {
        let sql = format!("SELECT company_id FROM {table}");
        let seen: Vec<Option<String>> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_all(&mut app)
            .await
            .expect("select");
        assert!(!seen.is_empty(), "{table}: company {A} sees its own rows");
        assert!(
            seen.iter().all(|c| c.as_deref() == Some(A)),
            "{table}: company {A} sees {seen:?}"
        );
    }
    assert_eq!(
        count(&mut app, "audit_log").await,
        11,
        "A's create, update, memory insert, publication, consent, tool registration and \
         configuration, task submission and review, and a second task's submission and cancel"
    );
    // The full-text path is filtered like any other read.
    let found: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM memories WHERE search @@ to_tsquery('english', 'secret')",
    )
    .fetch_one(&mut app)
    .await
    .expect("search");
    assert_eq!(found, 1, "only A's memory matches");

    // Naming a company nobody has hides everything again.
    name_company(&mut app, "nobody").await;
    for table in COMPANY_TABLES {
        assert_eq!(
            count(&mut app, table).await,
            0,
            "{table} for an unknown company"
        );
    }
}

#[tokio::test]
async fn app_role_cannot_write_another_company_or_rewrite_the_audit_log() {
    let (_store, url) = setup().await;
    let mut app = app_connection(&url).await;
    name_company(&mut app, A).await;

    let insert_company = sqlx::query(
        "INSERT INTO companies (company_id, name, industry, jurisdiction, revenue_usd, complexity_score, \
         activity_score, priority_multiplier, sla_response_seconds, contacts, sharing_consent, created_at, updated_at) \
         VALUES ($1, 'x', 'x', 'GB', 0, 0.5, 0.5, 1.0, 30, '[]', '[]', now(), now())",
    );
    assert_refused(
        insert_company.bind(B).execute(&mut app).await,
        RLS_VIOLATION,
    );

    let insert_entry = sqlx::query(
        "INSERT INTO audit_log (seq, at, request_id, actor, company_id, action, target, outcome, detail, prev_hash, hash) \
         VALUES (1000, now(), 'r', 'system', $1, 'forged', 't', 'ok', '', 'x', 'y')",
    );
    assert_refused(insert_entry.bind(B).execute(&mut app).await, RLS_VIOLATION);

    let insert_memory = sqlx::query(
        "INSERT INTO memories (id, company_id, occurred_at, event_type, workstream, category, content, \
         importance, indexed_terms, created_at) \
         VALUES (gen_random_uuid(), $1, now(), 'note', 'general', 'general', '{\"text\": \"x\"}', 5, '{}', now())",
    );
    assert_refused(insert_memory.bind(B).execute(&mut app).await, RLS_VIOLATION);
    // An alert filed under B, or under no company, from A's transaction.
    for company in [Some(B), None] {
        let insert_alert = sqlx::query(
            "INSERT INTO alerts (alert_id, company_id, rule, kind, severity, subject, state, summary, \
             value, started_at, updated_at) VALUES (gen_random_uuid(), $1, 'forged', 'budget', 'info', \
             'system', 'firing', 'x', 0, now(), now())",
        );
        assert_refused(
            insert_alert.bind(company).execute(&mut app).await,
            RLS_VIOLATION,
        );
    }
    // A's own memory given a vector filed under B.
    let insert_vector = sqlx::query(
        "INSERT INTO memory_vectors (memory_id, company_id, model, vector) \
         SELECT id, $1, 'forged', '\\x00000000' FROM memories",
    );
    assert_refused(insert_vector.bind(B).execute(&mut app).await, RLS_VIOLATION);
    // A's own task given a step, a review or a session filed under B.
    for sql in [
        "INSERT INTO task_steps (company_id, task_id, attempt, seq, agent, kind, prompt_tokens, \
         completion_tokens, latency_ms, detail, at) \
         SELECT $1, task_id, 9, 0, 'primary', 'llm', 0, 0, 0, '{}', now() FROM task_steps",
        "INSERT INTO task_reviews (company_id, task_id, decision, reviewer, at) \
         SELECT $1, task_id, 'rated', 'forged', now() FROM task_reviews",
        "INSERT INTO agent_sessions (company_id, summary, turns, tokens, version, updated_at) \
         VALUES ($1, 'forged', '[]', 0, 1, now())",
    ] {
        assert_refused(
            sqlx::query(sql).bind(B).execute(&mut app).await,
            RLS_VIOLATION,
        );
    }
    assert_refused(
        sqlx::query("UPDATE agent_sessions SET company_id = $1")
            .bind(B)
            .execute(&mut app)
            .await,
        RLS_VIOLATION,
    );
    // Steps and reviews are written once: the app role cannot rewrite them.
    for sql in [
        "UPDATE task_steps SET detail = '{}'",
        "UPDATE task_reviews SET rating = 5",
    ] {
        assert_refused(
            sqlx::query(sql).execute(&mut app).await,
            "permission denied",
        );
    }
    for table in ["memories", "memory_vectors"] {
        let sql = format!("UPDATE {table} SET company_id = $1");
        assert_refused(
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(B)
                .execute(&mut app)
                .await,
            RLS_VIOLATION,
        );
    }

    // Moving one's own row to another company is the same write.
    assert_refused(
        sqlx::query("UPDATE companies SET company_id = $1 WHERE company_id = $2")
            .bind(B)
            .bind(A)
            .execute(&mut app)
            .await,
        RLS_VIOLATION,
    );

    // Another company's rows are simply not there to change, even with the
    // admin read switched on: it opens SELECT only.
    sqlx::query("SELECT set_config('app.admin_read', 'on', false)")
        .execute(&mut app)
        .await
        .expect("admin read");
    assert_eq!(
        count(&mut app, "companies").await,
        2,
        "admin read sees both"
    );
    for sql in [
        "UPDATE companies SET name = 'taken over' WHERE company_id = $1",
        "DELETE FROM companies WHERE company_id = $1",
        "UPDATE memories SET archived_at = now() WHERE company_id = $1",
        "DELETE FROM memories WHERE company_id = $1",
        "DELETE FROM memory_vectors WHERE company_id = $1",
        "DELETE FROM task_steps WHERE company_id = $1",
        "DELETE FROM task_reviews WHERE company_id = $1",
        "UPDATE agent_sessions SET summary = 'taken over' WHERE company_id = $1",
        "DELETE FROM agent_sessions WHERE company_id = $1",
        "UPDATE shared_items SET text = 'taken over' WHERE company_id = $1",
        "DELETE FROM shared_items WHERE company_id = $1",
        "DELETE FROM sharing_consents WHERE company_id = $1",
    ] {
        let r = sqlx::query(sql).bind(B).execute(&mut app).await.expect(sql);
        assert_eq!(r.rows_affected(), 0, "{sql}");
    }

    // The audit log is append-only by privilege, whichever company is named.
    for sql in [
        "UPDATE audit_log SET detail = 'rewritten'",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
        "DELETE FROM audit_head",
        "INSERT INTO audit_head (id, seq, hash) VALUES (2, 0, '')",
    ] {
        assert_refused(
            sqlx::query(sql).execute(&mut app).await,
            "permission denied",
        );
    }

    let mut su = PgConnection::connect(&url).await.expect("connect");
    for table in [
        "memories",
        "memory_vectors",
        "task_steps",
        "task_reviews",
        "agent_sessions",
        "shared_items",
        "sharing_consents",
    ] {
        let sql = format!("SELECT company_id FROM {table} ORDER BY company_id");
        let owners: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_all(&mut su)
            .await
            .expect("owners");
        assert_eq!(owners, [A, B], "{table} untouched");
    }
    let names: Vec<String> = sqlx::query_scalar("SELECT name FROM companies ORDER BY company_id")
        .fetch_all(&mut su)
        .await
        .expect("names");
    assert_eq!(names, [format!("Company {A}"), format!("Company {B}")]);
}

#[tokio::test]
async fn app_role_has_no_way_around_the_policies() {
    let (_store, url) = setup().await;
    let mut su = PgConnection::connect(&url).await.expect("connect");

    let role =
        sqlx::query("SELECT rolsuper, rolbypassrls, rolcanlogin FROM pg_roles WHERE rolname = $1")
            .bind(APP_ROLE)
            .fetch_one(&mut su)
            .await
            .expect("the app role exists");
    for attr in ["rolsuper", "rolbypassrls", "rolcanlogin"] {
        assert!(!role.get::<bool, _>(attr), "{APP_ROLE} has {attr}");
    }
    let owned: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_tables WHERE tableowner = $1")
        .bind(APP_ROLE)
        .fetch_one(&mut su)
        .await
        .expect("owned tables");
    assert_eq!(owned, 0, "{APP_ROLE} owns tables");
    for table in COMPANY_TABLES {
        let (enabled, forced): (bool, bool) = sqlx::query_as(
            "SELECT relrowsecurity, relforcerowsecurity FROM pg_class \
             WHERE oid = ('public.' || $1)::regclass",
        )
        .bind(table)
        .fetch_one(&mut su)
        .await
        .expect("pg_class");
        assert!(
            enabled && forced,
            "{table}: row security enabled {enabled}, forced {forced}"
        );
    }

    // Turning row security off makes queries fail rather than see more, and
    // only an owner may disable the policies.
    let mut app = app_connection(&url).await;
    app.execute("SET row_security = off")
        .await
        .expect("set row_security");
    assert_refused(
        sqlx::query("SELECT count(*) FROM companies")
            .execute(&mut app)
            .await,
        "row-level security",
    );
    app.execute("RESET row_security")
        .await
        .expect("reset row_security");
    assert_refused(
        sqlx::query("ALTER TABLE companies DISABLE ROW LEVEL SECURITY")
            .execute(&mut app)
            .await,
        "must be owner",
    );
}

#[tokio::test]
async fn company_setting_ends_with_its_transaction() {
    let (store, _url) = setup().await;
    let mut conn = store.pool().acquire().await.expect("pooled connection");
    let user: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(&mut *conn)
        .await
        .expect("current_user");
    assert_eq!(user, APP_ROLE, "the store works as the app role");

    let mut tx = conn.begin().await.expect("begin");
    sqlx::query("SELECT set_config('app.current_company_id', $1, true)")
        .bind(A)
        .execute(&mut *tx)
        .await
        .expect("set company");
    assert_eq!(
        count(&mut tx, "companies").await,
        1,
        "inside the transaction"
    );
    tx.commit().await.expect("commit");

    // Same connection, next statement: the setting is gone.
    for table in COMPANY_TABLES {
        assert_eq!(count(&mut conn, table).await, 0, "{table} after commit");
    }
}

/// The conflict scan's policies: with the admin read on, the name index's
/// counterparty rows of every company show, its people do not, and nothing
/// in it can be written; of memories only contract and deal events show
/// (their texts are scanned for counterparties), and none can be written.
#[tokio::test]
async fn admin_read_sees_counterparty_names_only() {
    let (store, url) = setup().await;
    let b = CompanyId::parse(B).expect("id");
    let scope_b = Principal::system().scope(&b, Access::Write).expect("scope");
    let contract = kira_core::memory::Memory {
        id: uuid::Uuid::now_v7(),
        company_id: b.clone(),
        occurred_at: crate::support::t0(),
        event_type: kira_core::memory::EventType::Contract,
        workstream: kira_core::memory::Workstream::Legal,
        category: "general".into(),
        content: serde_json::json!({"text": "Signed with a supplier."}),
        importance: 5,
        indexed_terms: vec![],
        source: None,
        created_at: crate::support::t0(),
        archived_at: None,
        compacted_from: vec![],
        supersedes: None,
    };
    store
        .insert_memories(
            &scope_b,
            std::slice::from_ref(&contract),
            record(Some(&b), "memory.add"),
        )
        .await
        .expect("insert contract");
    let mut app = app_connection(&url).await;
    sqlx::query("SELECT set_config('app.admin_read', 'on', false)")
        .execute(&mut app)
        .await
        .expect("admin read");
    let rows: Vec<(String, String, String)> =
        sqlx::query_as("SELECT kind, key, company_id FROM memory_names ORDER BY company_id")
            .fetch_all(&mut app)
            .await
            .expect("names");
    assert_eq!(
        rows,
        [
            ("counterparty".into(), "comp a supplier".into(), A.into()),
            ("counterparty".into(), "comp b supplier".into(), B.into()),
        ]
    );
    for table in ["task_steps", "task_reviews", "agent_sessions"] {
        assert_eq!(count(&mut app, table).await, 0, "{table} has no admin read");
    }
    let seen: Vec<(String, String)> = sqlx::query_as("SELECT company_id, event_type FROM memories")
        .fetch_all(&mut app)
        .await
        .expect("memories");
    assert_eq!(
        seen,
        [(B.to_owned(), "contract".to_owned())],
        "only contract and deal events show to the admin read"
    );
    let r = sqlx::query("UPDATE memories SET archived_at = now()")
        .execute(&mut app)
        .await
        .expect("update");
    assert_eq!(r.rows_affected(), 0, "and none can be changed");
    let r = sqlx::query("DELETE FROM memory_names")
        .execute(&mut app)
        .await
        .expect("delete");
    assert_eq!(r.rows_affected(), 0);
    assert_refused(
        sqlx::query(
            "INSERT INTO memory_names (kind, key, company_id, memory_id, name) \
             SELECT 'counterparty', 'forged', $1, memory_id, 'forged' FROM memory_names",
        )
        .bind(B)
        .execute(&mut app)
        .await,
        RLS_VIOLATION,
    );
}
