//! The alerts evaluator with the clock in the test's hands, on both
//! backends, notifying a real webhook receiver on loopback: an alert fires
//! only after its rule's `for`, escalates at exactly its route's delay and
//! not once acknowledged, repeats every repeat interval, stays silent
//! (but open) under a silence, tells who heard it when it resolves, and
//! every delivery attempt (retries of a failing receiver included) is
//! recorded on the alert.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use chrono::TimeDelta;
use kira_core::CompanyId;
use kira_core::alerts::{
    Audience, Condition, Matcher, NoticeKind, Route, Rule, RuleKind, Severity,
};
use kira_core::audit::{AuditRecord, Outcome};
use kira_core::auth::{Access, AdminScope, CompanyScope, Principal};
use kira_core::clock::ManualClock;
use kira_core::company::NewCompany;
use kira_core::task::TaskRequest;
use kira_core::task::{Priority, TaskId};
use kira_engine::alerts::{ChannelSpec, NewSilence, WebhookFormat};
use kira_engine::{Engine, EngineConfig};
use kira_store::Store;
use kira_store::alerts::{AlertFilter, AlertReader, Delivery};
use serde_json::{Value, json};

use crate::common::{Backend, fresh_store, fresh_store_url, t0};

/// What the receiver got: (path, body).
type Inbox = Arc<Mutex<Vec<(String, Value)>>>;

/// What the receiver's handlers share: the inbox, `/flaky`'s calls, and
/// `/stall`'s (rung when its first call arrives).
type ReceiverState = (Inbox, Arc<Mutex<u32>>, Arc<tokio::sync::Notify>);

/// A webhook receiver on loopback; `/flaky` answers 503 to its first two
/// calls; `/stall` never answers its first call (and rings the notify
/// returned when it has it), then answers.
async fn receiver() -> (String, Inbox, Arc<tokio::sync::Notify>) {
    let inbox: Inbox = Arc::default();
    let calls = Arc::new(Mutex::new(0u32));
    let stalled = Arc::new(tokio::sync::Notify::new());
    let app = axum::Router::new()
        .route(
            "/{name}",
            post(
                |State((inbox, calls, stalled)): State<ReceiverState>,
                 Path(name): Path<String>,
                 axum::Json(body): axum::Json<Value>| async move {
                    if name == "flaky" || name == "stall" {
                        let n = {
                            let mut n = calls.lock().expect("lock");
                            *n += 1;
                            *n
                        };
                        if name == "flaky" && n <= 2 {
                            return StatusCode::SERVICE_UNAVAILABLE;
                        }
                        if name == "stall" && n == 1 {
                            stalled.notify_one();
                            std::future::pending::<()>().await;
                        }
                    }
                    inbox.lock().expect("lock").push((name, body));
                    StatusCode::OK
                },
            ),
        )
        .with_state((inbox.clone(), calls, stalled.clone()));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(l, app).await });
    (format!("http://{addr}"), inbox, stalled)
}

struct Harness {
    engine: Engine,
    clock: Arc<ManualClock>,
    inbox: Inbox,
    /// Rung when `/stall` has its first call (which it never answers).
    stalled: Arc<tokio::sync::Notify>,
    _store: Arc<dyn Store>,
    _dir: Option<tempfile::TempDir>,
    /// The database's URL, to tamper with it.
    url: String,
    /// The engine's configuration, for another process's engine.
    config: EngineConfig,
}

pub(crate) fn acme() -> CompanyScope {
    Principal::system()
        .scope(&CompanyId::parse("acme").expect("id"), Access::Write)
        .expect("scope")
}

pub(crate) fn admin() -> AdminScope {
    Principal::system().admin().expect("admin")
}

pub(crate) fn audit(action: &str) -> AuditRecord {
    AuditRecord {
        at: t0(),
        request_id: String::new(),
        actor: "test".into(),
        company_id: None,
        action: action.into(),
        target: "test".into(),
        outcome: Outcome::Ok,
        detail: String::new(),
    }
}

/// The stuck-queue rule alone (waiting over 15 minutes, for 5 minutes),
/// routed to the operators' webhook and escalated to the executives'
/// (Slack's body) after 30 minutes; `operator` names its endpoint.
async fn harness(backend: Backend, operator: &str) -> Harness {
    let stuck = Rule {
        name: "stuck_queue".into(),
        severity: Severity::Warning,
        for_duration: TimeDelta::minutes(5),
        labels: BTreeMap::new(),
        condition: Condition::StuckQueue {
            longer_than_seconds: 900,
        },
    };
    harness_with(backend, operator, vec![stuck]).await
}

/// A harness evaluating `rules`; the security, error-rate and
/// provider-failing kinds go to the operators' webhook alone, with no
/// escalation.
async fn harness_with(backend: Backend, operator: &str, rules: Vec<Rule>) -> Harness {
    harness_cfg(backend, operator, rules, |_| {}).await
}

/// [`harness_with`], the alerts' configuration changed by `tweak` last.
async fn harness_cfg(
    backend: Backend,
    operator: &str,
    rules: Vec<Rule>,
    tweak: impl FnOnce(&mut kira_engine::alerts::AlertsConfig),
) -> Harness {
    let (store, dir, url) = fresh_store_url(backend).await;
    let clock = Arc::new(ManualClock::new(t0()));
    let (base, inbox, stalled) = receiver().await;
    let mut cfg = EngineConfig::default();
    let a = &mut cfg.alerts;
    a.rules = rules;
    for kind in [
        RuleKind::Security,
        RuleKind::ErrorRate,
        RuleKind::ProviderFailing,
    ] {
        a.routing.0.insert(
            kind,
            Route {
                immediate: vec![Audience::Team("operator".into())],
                escalation: vec![],
                escalation_delay: None,
            },
        );
    }
    a.routing.0.insert(
        RuleKind::StuckQueue,
        Route {
            immediate: vec![Audience::Team("operator".into())],
            escalation: vec![Audience::Team("executive".into())],
            escalation_delay: Some(TimeDelta::minutes(30)),
        },
    );
    a.teams.insert(
        "operator".into(),
        vec![ChannelSpec::Webhook {
            url: format!("{base}/{operator}"),
            format: WebhookFormat::Generic,
        }],
    );
    a.teams.insert(
        "executive".into(),
        vec![
            ChannelSpec::Webhook {
                url: format!("{base}/exec"),
                format: WebhookFormat::Slack,
            },
            ChannelSpec::Log,
        ],
    );
    a.retry_backoff = Duration::from_millis(1);
    tweak(a);
    let (_, p) = serde_json::from_value::<NewCompany>(json!({
        "id": "acme", "name": "Acme", "industry": "fintech", "jurisdiction": "US-DE"
    }))
    .expect("json")
    .validate()
    .expect("valid");
    store
        .create_company(&acme(), &p, t0(), audit("company.create"))
        .await
        .expect("create");
    let engine = Engine::new(store.clone(), clock.clone(), cfg.clone());
    Harness {
        engine,
        clock,
        inbox,
        stalled,
        _store: store,
        _dir: dir,
        url,
        config: cfg,
    }
}

impl Harness {
    async fn submit(&self) -> TaskId {
        let req = TaskRequest {
            task: "a question nobody takes".into(),
            task_type: "quick_question_answer".into(),
            priority: Priority::Low,
            deadline: None,
            parameters: None,
            specialist: None,
        };
        self.engine
            .tasks()
            .submit(&acme(), &req, None, audit("task.submit"))
            .await
            .expect("submit")
            .task
            .task_id
    }

    /// Moves the clock on by `by` and evaluates; the notices the receiver
    /// got since the last call, as (path, notice or Slack text).
    async fn at(&self, by: TimeDelta) -> Vec<(String, String)> {
        self.at_bodies(by)
            .await
            .into_iter()
            .map(|(path, body)| {
                let what = body
                    .get("notice")
                    .or_else(|| body.get("text"))
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                (path, what)
            })
            .collect()
    }

    /// [`Harness::at`], the bodies as received. The scheduled
    /// verifications' job runs first, as `kira serve` runs it beside the
    /// evaluator.
    async fn at_bodies(&self, by: TimeDelta) -> Vec<(String, Value)> {
        self.clock.advance(by);
        verify_until_locked(&self.engine).await;
        // Tests running beside this one on the same PostgreSQL server may
        // hold the evaluator's lock for a moment.
        evaluate_until_locked(&self.engine).await;
        self.inbox.lock().expect("lock").drain(..).collect()
    }

    /// [`Harness::at`] with no verification job: the evaluation alone.
    async fn evaluate_only(&self, by: TimeDelta) -> Vec<(String, String)> {
        self.clock.advance(by);
        evaluate_until_locked(&self.engine).await;
        self.inbox
            .lock()
            .expect("lock")
            .drain(..)
            .map(|(path, body)| (path, body["notice"].as_str().unwrap_or_default().into()))
            .collect()
    }

    /// Moves the clock on by `by` and runs the verification job alone:
    /// the verifications it ran.
    async fn verify(&self, by: TimeDelta) -> usize {
        self.clock.advance(by);
        verify_until_locked(&self.engine).await
    }

    /// The audit log's entries of `action`, as (seq, ...) in order.
    async fn entries_of(&self, action: &str) -> Vec<i64> {
        self.engine
            .audit()
            .list_all(
                &admin(),
                None,
                kira_store::AuditPage {
                    after_seq: 0,
                    limit: 1_000,
                },
                audit("audit.list"),
            )
            .await
            .expect("audit")
            .into_iter()
            .filter(|e| e.action == action)
            .map(|e| e.seq)
            .collect()
    }

    /// [`Harness::at`], evaluated by `engine` (another process's).
    async fn at_by(&self, engine: &Engine, by: TimeDelta) -> Vec<(String, String)> {
        self.clock.advance(by);
        verify_until_locked(engine).await;
        evaluate_until_locked(engine).await;
        self.inbox
            .lock()
            .expect("lock")
            .drain(..)
            .map(|(path, body)| (path, body["notice"].as_str().unwrap_or_default().into()))
            .collect()
    }

    /// Another kira process on the same database: its own store and
    /// engine, the same configuration and clock.
    async fn other_process(&self) -> Engine {
        let store: Arc<dyn Store> = if self.url.starts_with("sqlite:") {
            Arc::new(
                kira_store::sqlite::SqliteStore::open(&self.url)
                    .await
                    .expect("sqlite"),
            )
        } else {
            Arc::new(
                kira_store::postgres::PgStore::open(&self.url, None)
                    .await
                    .expect("pg"),
            )
        };
        Engine::new(store, self.clock.clone(), self.config.clone())
    }

    /// The alert of `subject` still open, or the latest.
    async fn alert_of(&self, subject: &str) -> kira_core::alerts::Alert {
        self.engine
            .alerts()
            .list(AlertReader::Admin(&admin()), &AlertFilter::default())
            .await
            .expect("list")
            .into_iter()
            .find(|a| a.subject.key() == subject)
            .unwrap_or_else(|| panic!("no alert of {subject}"))
    }

    /// Each delivery attempt recorded on the alert `id`.
    async fn attempts(&self, id: uuid::Uuid) -> Vec<(NoticeKind, Delivery)> {
        self.engine
            .alerts()
            .get(AlertReader::Admin(&admin()), id)
            .await
            .expect("get")
            .notifications
            .iter()
            .map(|n| (n.notice, n.outcome))
            .collect()
    }

    async fn the_alert(&self) -> kira_core::alerts::Alert {
        let all = self
            .engine
            .alerts()
            .list(AlertReader::Admin(&admin()), &AlertFilter::default())
            .await
            .expect("list");
        assert_eq!(all.len(), 1, "one alert for the rule and subject: {all:?}");
        all[0].clone()
    }
}

impl Harness {
    /// Every alert, as (rule, subject, state, summary), in that order.
    async fn alerts(&self) -> Vec<(String, String, String, String)> {
        let mut all: Vec<_> = self
            .engine
            .alerts()
            .list(AlertReader::Admin(&admin()), &AlertFilter::default())
            .await
            .expect("list")
            .into_iter()
            .map(|a| {
                (
                    a.rule,
                    a.subject.key(),
                    a.state.as_str().to_owned(),
                    a.summary,
                )
            })
            .collect();
        all.sort();
        all
    }

    /// Runs `sql` on the database, around the store.
    /// Alters the audit log with `sql`, as someone holding the database
    /// file or its owner's login could: on SQLite the trigger refusing
    /// updates goes first.
    async fn tamper_audit(&self, sql: &'static str) {
        if self.url.starts_with("sqlite:") {
            self.tamper("DROP TRIGGER IF EXISTS audit_log_no_update")
                .await;
        }
        self.tamper(sql).await;
    }

    async fn tamper(&self, sql: &'static str) {
        use sqlx::Connection;
        if self.url.starts_with("sqlite:") {
            let mut c = sqlx::SqliteConnection::connect(&self.url)
                .await
                .expect("connect");
            sqlx::raw_sql(sql).execute(&mut c).await.expect("tamper");
        } else {
            // The owner (a superuser here) can; the app role cannot.
            let mut c = sqlx::PgConnection::connect(&self.url)
                .await
                .expect("connect");
            sqlx::raw_sql(sql).execute(&mut c).await.expect("tamper");
        }
    }
}

fn rule(name: &str, severity: Severity, for_seconds: i64, condition: Condition) -> Rule {
    Rule::new(name, severity, for_seconds, condition)
}

fn sent(path: &str, what: &str) -> (String, String) {
    (path.to_owned(), what.to_owned())
}

async fn fires_after_for_escalates_at_the_delay_and_resolves(backend: Backend) {
    let h = harness(backend, "ops").await;
    let task = h.submit().await;
    assert!(h.at(TimeDelta::zero()).await.is_empty());
    // Waiting 15 minutes and a second: the condition holds, pending.
    assert!(h.at(TimeDelta::seconds(901)).await.is_empty());
    assert_eq!(h.the_alert().await.state.as_str(), "pending");
    assert!(h.at(TimeDelta::seconds(299)).await.is_empty());
    assert_eq!(h.at(TimeDelta::seconds(1)).await, [sent("ops", "firing")]);
    let fired = h.the_alert().await;
    assert_eq!(fired.state.as_str(), "firing");
    // Escalated at exactly 30 minutes after firing, once.
    assert!(
        h.at(TimeDelta::minutes(30) - TimeDelta::seconds(1))
            .await
            .is_empty()
    );
    let escalated = h.at(TimeDelta::seconds(1)).await;
    assert_eq!(escalated.len(), 1);
    assert_eq!(escalated[0].0, "exec");
    assert!(
        escalated[0]
            .1
            .starts_with("[ESCALATION] stuck_queue system"),
        "{escalated:?}"
    );
    assert!(h.at(TimeDelta::minutes(10)).await.is_empty());
    // The task leaves the queue: both teams hear it is resolved.
    h.engine
        .tasks()
        .cancel(&acme(), &task, audit("task.cancel"))
        .await
        .expect("cancel");
    let mut resolved = h.at(TimeDelta::minutes(1)).await;
    resolved.sort();
    assert_eq!(resolved[0].0, "exec");
    assert!(resolved[0].1.starts_with("[RESOLVED]"));
    assert_eq!(resolved[1], sent("ops", "resolved"));
    let detail = h
        .engine
        .alerts()
        .get(AlertReader::Admin(&admin()), fired.id)
        .await
        .expect("get");
    assert_eq!(detail.alert.state.as_str(), "resolved");
    assert_eq!(detail.alert.resolved_by.as_deref(), Some("evaluator"));
    let kinds: Vec<_> = detail
        .notifications
        .iter()
        .map(|n| (n.notice, n.channel.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            (NoticeKind::Firing, "webhook"),
            (NoticeKind::Escalation, "webhook"),
            (NoticeKind::Escalation, "log"),
            // The executives' channels, then the operators'.
            (NoticeKind::Resolved, "webhook"),
            (NoticeKind::Resolved, "log"),
            (NoticeKind::Resolved, "webhook"),
        ]
    );
    assert!(
        detail
            .notifications
            .iter()
            .all(|n| n.outcome == Delivery::Sent)
    );
    // A company key sees none of the system's alerts.
    let own = h
        .engine
        .alerts()
        .list(AlertReader::Company(&acme()), &AlertFilter::default())
        .await
        .expect("list");
    assert!(own.is_empty());
}

async fn an_acknowledged_alert_neither_escalates_nor_repeats(backend: Backend) {
    let h = harness(backend, "ops").await;
    h.submit().await;
    h.at(TimeDelta::seconds(901)).await;
    assert_eq!(h.at(TimeDelta::minutes(5)).await, [sent("ops", "firing")]);
    let id = h.the_alert().await.id;
    h.clock.advance(TimeDelta::minutes(29));
    h.engine
        .alerts()
        .acknowledge(
            AlertReader::Admin(&admin()),
            id,
            "admin",
            audit("alert.ack"),
        )
        .await
        .expect("ack");
    for step in [
        TimeDelta::minutes(1),
        TimeDelta::hours(1),
        TimeDelta::hours(4),
    ] {
        assert!(h.at(step).await.is_empty());
    }
    let a = h.the_alert().await;
    assert_eq!(a.state.as_str(), "acknowledged");
    assert_eq!(a.escalated_at, None);
    // Acknowledged again: refused, the alert as it was.
    let again = h
        .engine
        .alerts()
        .acknowledge(
            AlertReader::Admin(&admin()),
            id,
            "admin",
            audit("alert.ack"),
        )
        .await;
    assert!(again.is_err());
}

async fn a_silence_holds_notices_back_and_the_repeat_interval_holds(backend: Backend) {
    let h = harness(backend, "ops").await;
    let silence = h
        .engine
        .alerts()
        .silence(
            &admin(),
            NewSilence {
                matchers: vec![Matcher {
                    name: "rule".into(),
                    value: "stuck_queue".into(),
                }],
                starts_at: None,
                ends_at: t0() + TimeDelta::hours(1),
                comment: "queue maintenance".into(),
            },
            "admin",
            audit("alert.silence"),
        )
        .await
        .expect("silence");
    h.submit().await;
    h.at(TimeDelta::seconds(901)).await;
    assert!(h.at(TimeDelta::minutes(5)).await.is_empty());
    let a = h.the_alert().await;
    assert_eq!(
        a.state.as_str(),
        "firing",
        "silenced, the alert still fires"
    );
    assert_eq!(a.last_notified_at, None);
    h.clock.advance(TimeDelta::minutes(1));
    h.engine
        .alerts()
        .unsilence(&admin(), silence.id, audit("alert.unsilence"))
        .await
        .expect("unsilence");
    // What was held back goes out at the next evaluation.
    assert_eq!(h.at(TimeDelta::seconds(10)).await, [sent("ops", "firing")]);
    // The escalation's executive team hears it at 30 minutes; then every
    // four hours both teams hear it again.
    let e = h.at(TimeDelta::minutes(30)).await;
    assert_eq!(e.len(), 1);
    assert!(
        h.at(TimeDelta::hours(4) - TimeDelta::minutes(1))
            .await
            .is_empty()
    );
    let mut repeat = h.at(TimeDelta::minutes(1)).await;
    repeat.sort();
    assert_eq!(repeat.len(), 2, "{repeat:?}");
    assert_eq!(repeat[1], sent("ops", "repeat"));
    assert!(h.at(TimeDelta::hours(1)).await.is_empty());
}

async fn a_failing_webhook_is_retried_and_every_attempt_recorded(backend: Backend) {
    let h = harness(backend, "flaky").await;
    h.submit().await;
    h.at(TimeDelta::seconds(901)).await;
    assert_eq!(h.at(TimeDelta::minutes(5)).await, [sent("flaky", "firing")]);
    let a = h.the_alert().await;
    let d = h
        .engine
        .alerts()
        .get(AlertReader::Admin(&admin()), a.id)
        .await
        .expect("get");
    let tries: Vec<_> = d
        .notifications
        .iter()
        .map(|n| (n.attempt, n.outcome, n.error.clone()))
        .collect();
    assert_eq!(
        tries,
        [
            (1, Delivery::Failed, Some("HTTP 503".into())),
            (2, Delivery::Failed, Some("HTTP 503".into())),
            (3, Delivery::Sent, None),
        ]
    );
    assert!(d.notifications.iter().all(|n| n.target.ends_with("/flaky")));
}

/// A burst of authentication failures for one key id and from one
/// address: an alert for each, pending for the rule's `for`, then firing,
/// resolved once the window has passed them; fewer than the threshold, or
/// another address's few, open nothing.
async fn a_burst_of_auth_failures_per_key_and_address(backend: Backend) {
    let h = harness_with(
        backend,
        "ops",
        vec![rule(
            "auth_failures",
            Severity::Critical,
            30,
            Condition::AuthFailures {
                above: 3,
                window_seconds: 60,
            },
        )],
    )
    .await;
    let key = kira_core::ids::KeyId::parse("k3v9x2m4q8ab").expect("id");
    let attacker: std::net::IpAddr = "203.0.113.9".parse().expect("ip");
    let other: std::net::IpAddr = "198.51.100.1".parse().expect("ip");
    for _ in 0..3 {
        h.engine.alerts().auth_failed(Some(&key), attacker);
    }
    h.engine.alerts().auth_failed(None, other);
    assert!(h.at(TimeDelta::zero()).await.is_empty());
    assert!(h.alerts().await.is_empty(), "3 is not above 3");
    h.engine.alerts().auth_failed(Some(&key), attacker);
    h.engine.alerts().auth_failed(None, other);
    assert!(h.at(TimeDelta::seconds(1)).await.is_empty());
    let pending = h.alerts().await;
    let states: Vec<_> = pending
        .iter()
        .map(|a| (a.1.as_str(), a.2.as_str()))
        .collect();
    assert_eq!(
        states,
        [
            ("address:203.0.113.9", "pending"),
            ("key:k3v9x2m4q8ab", "pending")
        ]
    );
    assert!(h.at(TimeDelta::seconds(29)).await.is_empty());
    // Both subjects of the rule in one notice (grouping by rule).
    assert_eq!(h.at(TimeDelta::seconds(1)).await, [sent("ops", "firing")]);
    let firing = h.alerts().await;
    assert!(firing.iter().all(|a| a.2 == "firing"), "{firing:?}");
    assert_eq!(
        firing[1].3,
        "4 authentication failures for key:k3v9x2m4q8ab in 60s"
    );
    // A minute after the last failure, the window holds none.
    assert!(h.at(TimeDelta::seconds(28)).await.is_empty());
    assert_eq!(h.at(TimeDelta::seconds(2)).await, [sent("ops", "resolved")]);
    assert!(h.alerts().await.iter().all(|a| a.2 == "resolved"));
}

/// `audit verify` and `budget verify`, run by the evaluator at most every
/// ten minutes: a tampered entry or balance is a critical alert naming
/// what failed, found at the next run (not before), and resolved by the
/// first run after it was put right.
async fn a_failing_verify_is_a_critical_alert(backend: Backend) {
    let h = harness_with(
        backend,
        "ops",
        vec![
            rule(
                "audit_verify",
                Severity::Critical,
                0,
                Condition::AuditVerify { every_minutes: 10 },
            ),
            rule(
                "budget_verify",
                Severity::Critical,
                0,
                Condition::BudgetVerify { every_minutes: 10 },
            ),
        ],
    )
    .await;
    assert!(h.at(TimeDelta::zero()).await.is_empty());
    assert!(h.alerts().await.is_empty(), "both verify");
    h.tamper_audit("UPDATE audit_log SET outcome = 'denied' WHERE seq = 1")
        .await;
    // Not due yet: the last run was five minutes ago.
    assert!(h.at(TimeDelta::minutes(5)).await.is_empty());
    assert!(h.alerts().await.is_empty());
    assert_eq!(h.at(TimeDelta::minutes(5)).await, [sent("ops", "firing")]);
    let a = h.alerts().await;
    assert_eq!(a.len(), 1);
    assert_eq!(
        (a[0].0.as_str(), a[0].1.as_str()),
        ("audit_verify", "system")
    );
    assert!(
        a[0].3.starts_with("audit verify failed: entry 1: "),
        "{}",
        a[0].3
    );
    // Each run is audited under the system.
    let runs = h
        .engine
        .audit()
        .list_all(
            &admin(),
            None,
            kira_store::AuditPage {
                after_seq: 0,
                limit: 1_000,
            },
            audit("audit.list"),
        )
        .await
        .expect("audit")
        .into_iter()
        .filter(|e| e.action == "audit.verify")
        .count();
    assert_eq!(runs, 2);

    h.tamper("UPDATE audit_log SET outcome = 'ok' WHERE seq = 1")
        .await;
    h.tamper("UPDATE budget_pools SET spent = spent + 7 WHERE pool = 'base'")
        .await;
    let mut got = h.at(TimeDelta::minutes(10)).await;
    got.sort();
    assert_eq!(got, [sent("ops", "firing"), sent("ops", "resolved")]);
    let a = h.alerts().await;
    assert_eq!(a[0].0, "audit_verify");
    assert_eq!(a[0].2, "resolved");
    assert_eq!(a[1].0, "budget_verify");
    assert_eq!(a[1].2, "firing");
    assert!(a[1].3.starts_with("budget verify failed: "), "{}", a[1].3);
    assert!(a[1].3.contains("base"), "names the pool: {}", a[1].3);

    h.tamper("UPDATE budget_pools SET spent = spent - 7 WHERE pool = 'base'")
        .await;
    assert_eq!(
        h.at(TimeDelta::minutes(10)).await,
        [sent("ops", "resolved")]
    );
    assert!(h.alerts().await.iter().all(|a| a.2 == "resolved"));
}

/// The scheduled verifications are a job of their own, whose latest
/// outcome the evaluator reads: an evaluation runs none (so waits for
/// none), even when one is due; the job runs each on its schedule, and
/// the audit check walks what was appended since its checkpoint, so an
/// entry tampered after it is found at the job's next run (its sweep of
/// the older entries, one a run here, is nowhere near it).
async fn the_scheduled_verification_is_a_job_the_evaluation_only_reads(backend: Backend) {
    let h = harness_cfg(
        backend,
        "ops",
        vec![rule(
            "audit_verify",
            Severity::Critical,
            0,
            Condition::AuditVerify { every_minutes: 10 },
        )],
        |a| a.audit_sweep = 1,
    )
    .await;
    assert!(h.evaluate_only(TimeDelta::zero()).await.is_empty());
    assert!(
        h.entries_of("audit.verify").await.is_empty(),
        "the evaluation ran no verification"
    );
    assert_eq!(h.verify(TimeDelta::zero()).await, 1);
    assert!(h.evaluate_only(TimeDelta::zero()).await.is_empty());
    // Appended after the checkpoint, then altered.
    h.submit().await;
    let seq = *h.entries_of("task.submit").await.last().expect("submitted");
    h.tamper_audit(
        "UPDATE audit_log SET detail = 'forged' WHERE seq = \
         (SELECT max(seq) FROM audit_log WHERE action = 'task.submit')",
    )
    .await;
    // Not due for ten minutes; then due, but the evaluation does not run it.
    assert_eq!(h.verify(TimeDelta::minutes(9)).await, 0);
    assert!(h.evaluate_only(TimeDelta::minutes(1)).await.is_empty());
    assert_eq!(h.entries_of("audit.verify").await.len(), 1);
    assert!(h.alerts().await.is_empty());
    // The job's run finds it; the next evaluation fires.
    assert_eq!(h.verify(TimeDelta::zero()).await, 1);
    assert_eq!(
        h.evaluate_only(TimeDelta::zero()).await,
        [sent("ops", "firing")]
    );
    let a = h.alerts().await;
    assert_eq!(a.len(), 1);
    assert!(
        a[0].3.starts_with(&format!(
            "audit verify failed: entry {seq}: contents do not match"
        )),
        "{}",
        a[0].3
    );
}

/// Each scheduled audit check also walks a slice of the entries older
/// than its checkpoint (`audit_sweep` of them, from where the last slice
/// ended, round and round), so an old entry altered after it was verified
/// is found when the sweep reaches it, and not before: two entries a run
/// here.
async fn the_audit_sweep_finds_an_old_altered_entry_in_turn(backend: Backend) {
    let h = harness_cfg(
        backend,
        "ops",
        vec![rule(
            "audit_verify",
            Severity::Critical,
            0,
            Condition::AuditVerify { every_minutes: 10 },
        )],
        |a| a.audit_sweep = 2,
    )
    .await;
    for _ in 0..3 {
        h.submit().await;
    }
    // The first run walks every entry: the checkpoint is the head.
    assert!(h.at(TimeDelta::zero()).await.is_empty());
    h.tamper_audit("UPDATE audit_log SET detail = 'forged' WHERE seq = 3")
        .await;
    // The next sweeps entries 1 and 2 (and what is new): nothing found.
    assert!(h.at(TimeDelta::minutes(10)).await.is_empty());
    assert!(h.alerts().await.is_empty());
    // Then 3 and 4.
    assert_eq!(h.at(TimeDelta::minutes(10)).await, [sent("ops", "firing")]);
    let a = h.alerts().await;
    assert!(
        a[0].3
            .starts_with("audit verify failed: entry 3: contents do not match"),
        "{}",
        a[0].3
    );
    // Put right, the next run (the same slice, the checkpoint unmoved)
    // resolves it.
    h.tamper("UPDATE audit_log SET detail = '' WHERE seq = 3")
        .await;
    assert_eq!(
        h.at(TimeDelta::minutes(10)).await,
        [sent("ops", "resolved")]
    );
}

/// At least once: a process that took a group out of the outbox and died
/// before its channel answered (the evaluation dropped while the webhook
/// hangs) leaves the group marked as being sent; no one sends it while
/// the mark's lease holds, the next evaluator sends it once the lease
/// has run out, and once its delivery is recorded it is not sent again.
async fn a_notice_taken_by_a_process_that_died_is_sent_after_its_lease(backend: Backend) {
    let mut h = harness_cfg(
        backend,
        "stall",
        vec![rule(
            "auth_failures",
            Severity::Critical,
            0,
            Condition::AuthFailures {
                above: 1,
                window_seconds: 3_600,
            },
        )],
        |a| a.delivery_lease = TimeDelta::minutes(2),
    )
    .await;
    fail(&h.engine, Some("k3v9x2m4q8ab"), "203.0.113.9");
    // The webhook takes the notice and never answers: the process dies.
    loop {
        tokio::select! {
            r = h.engine.alerts().evaluate() => {
                assert!(r.expect("evaluate").is_none(), "sent, yet the webhook never answered");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            () = h.stalled.notified() => break,
        }
    }
    let next = h.other_process().await;
    drop(std::mem::replace(&mut h.engine, next));
    let alert = h.alert_of("key:k3v9x2m4q8ab").await;
    assert_eq!(alert.state.as_str(), "firing");
    assert!(h.attempts(alert.id).await.is_empty());
    // Being sent: not again while the lease holds.
    assert!(
        h.at(TimeDelta::minutes(2) - TimeDelta::seconds(1))
            .await
            .is_empty()
    );
    // The lease ran out: the next evaluator sends it, once.
    assert_eq!(h.at(TimeDelta::seconds(1)).await, [sent("stall", "firing")]);
    assert_eq!(
        h.attempts(alert.id).await,
        [(NoticeKind::Firing, Delivery::Sent)]
    );
    for by in [TimeDelta::minutes(2), TimeDelta::minutes(10)] {
        assert!(h.at(by).await.is_empty());
    }
    assert_eq!(h.attempts(alert.id).await.len(), 1);
}

/// A provider's error rate over a window, and a provider failing (its
/// last calls all errors), from the calls the agent loop reports, with
/// `Provider(name)` as the subject.
async fn provider_error_rate_and_failing(backend: Backend) {
    let h = harness_with(
        backend,
        "ops",
        vec![
            rule(
                "provider_failing",
                Severity::Critical,
                0,
                Condition::ProviderFailing { errors_in_a_row: 3 },
            ),
            rule(
                "provider_error_rate",
                Severity::Warning,
                60,
                Condition::ProviderErrorRate {
                    above: 0.5,
                    window_seconds: 600,
                    min_calls: 4,
                },
            ),
        ],
    )
    .await;
    let m = h.engine.metrics();
    let ok = Some(Duration::from_millis(300));
    m.provider_call("openai", "gpt-4o", ok);
    // Three failures in a row, across two models of one provider.
    m.provider_call("flaky", "a", None);
    m.provider_call("flaky", "b", None);
    assert!(h.at(TimeDelta::zero()).await.is_empty());
    m.provider_call("flaky", "a", None);
    assert_eq!(h.at(TimeDelta::seconds(10)).await, [sent("ops", "firing")]);
    let a = h.alerts().await;
    assert_eq!(
        (a[0].0.as_str(), a[0].1.as_str(), a[0].3.as_str()),
        (
            "provider_failing",
            "provider:flaky",
            "the last 3 calls to flaky all failed"
        )
    );
    // One answer ends the streak; 5 of the 6 calls in the window failed:
    // the error rate is pending for a minute.
    m.provider_call("flaky", "b", None);
    m.provider_call("flaky", "b", None);
    m.provider_call("flaky", "a", ok);
    assert_eq!(
        h.at(TimeDelta::seconds(10)).await,
        [sent("ops", "resolved")]
    );
    let a = h.alerts().await;
    assert_eq!(
        (a[0].0.as_str(), a[0].1.as_str(), a[0].2.as_str()),
        ("provider_error_rate", "provider:flaky", "pending")
    );
    assert_eq!(a[0].3, "83% of 6 calls to flaky failed in 600s");
    assert_eq!(h.at(TimeDelta::seconds(60)).await, [sent("ops", "firing")]);
    // Ten minutes with no failure: the window holds none.
    assert_eq!(
        h.at(TimeDelta::minutes(10)).await,
        [sent("ops", "resolved")]
    );
    let a = h.alerts().await;
    assert!(a.iter().all(|a| a.2 == "resolved"), "{a:?}");
    assert!(a.iter().all(|a| a.1 == "provider:flaky"), "openai is fine");
}

/// Grouping by rule (Alertmanager's group_wait and group_interval): the
/// subjects of one rule that fire within the wait go out as one notice
/// listing them all; one that fires after the group went out waits for
/// the interval; every alert stays its own, with its attempts recorded.
async fn one_rules_subjects_go_out_as_one_notice(backend: Backend) {
    let h = harness_cfg(
        backend,
        "ops",
        vec![rule(
            "auth_failures",
            Severity::Critical,
            0,
            Condition::AuthFailures {
                above: 1,
                window_seconds: 3_600,
            },
        )],
        |a| {
            a.grouping = kira_core::alerts::Grouping {
                wait: TimeDelta::seconds(30),
                interval: TimeDelta::minutes(5),
            };
        },
    )
    .await;
    let fail = |key: Option<&str>, ip: &str| {
        let key = key.map(|k| kira_core::ids::KeyId::parse(k).expect("id"));
        let ip: std::net::IpAddr = ip.parse().expect("ip");
        for _ in 0..2 {
            h.engine.alerts().auth_failed(key.as_ref(), ip);
        }
    };
    fail(Some("k3v9x2m4q8ab"), "203.0.113.9");
    // Two subjects fire; their notice waits 30 s for others.
    assert!(h.at(TimeDelta::zero()).await.is_empty());
    fail(None, "198.51.100.1");
    assert!(h.at(TimeDelta::seconds(10)).await.is_empty());
    assert_eq!(h.alerts().await.len(), 3, "one alert per subject");
    assert!(h.at(TimeDelta::seconds(19)).await.is_empty());
    let got = h.at_bodies(TimeDelta::seconds(1)).await;
    assert_eq!(got.len(), 1, "{got:?}");
    let (path, body) = &got[0];
    assert_eq!(path, "ops");
    assert_eq!(body["notice"], "firing");
    let mut subjects: Vec<&str> = body["alerts"]
        .as_array()
        .expect("alerts")
        .iter()
        .filter_map(|a| a["subject"].as_str())
        .collect();
    subjects.sort_unstable();
    assert_eq!(
        subjects,
        [
            "address:198.51.100.1",
            "address:203.0.113.9",
            "key:k3v9x2m4q8ab"
        ]
    );
    assert!(
        body["text"]
            .as_str()
            .is_some_and(|t| t.starts_with("[FIRING] auth_failures (critical): 3 subjects: ")),
        "{body}"
    );
    // Another subject a minute later waits for the group's interval.
    fail(None, "192.0.2.7");
    assert!(h.at(TimeDelta::minutes(1)).await.is_empty());
    assert!(
        h.at(TimeDelta::minutes(4) - TimeDelta::seconds(1))
            .await
            .is_empty()
    );
    let got = h.at_bodies(TimeDelta::seconds(1)).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].1["alerts"].as_array().map(Vec::len), Some(1));
    assert_eq!(got[0].1["alert"]["subject"], "address:192.0.2.7");
    // Every alert shows the one attempt that told of it.
    let all = h
        .engine
        .alerts()
        .list(AlertReader::Admin(&admin()), &AlertFilter::default())
        .await
        .expect("list");
    assert_eq!(all.len(), 4);
    for a in all {
        let d = h
            .engine
            .alerts()
            .get(AlertReader::Admin(&admin()), a.id)
            .await
            .expect("get");
        let tries: Vec<_> = d
            .notifications
            .iter()
            .map(|n| (n.notice, n.outcome))
            .collect();
        assert_eq!(
            tries,
            [(NoticeKind::Firing, Delivery::Sent)],
            "{}",
            a.subject
        );
    }
}

/// The auth-failures rule (above 1 in an hour, no `for`), grouped with no
/// wait and Alertmanager's 5-minute interval: a subject firing within 5
/// minutes of the rule's last notice is held for the group.
async fn held_harness(backend: Backend) -> Harness {
    harness_cfg(
        backend,
        "ops",
        vec![rule(
            "auth_failures",
            Severity::Critical,
            0,
            Condition::AuthFailures {
                above: 1,
                window_seconds: 3_600,
            },
        )],
        |a| {
            a.grouping = kira_core::alerts::Grouping {
                wait: TimeDelta::zero(),
                interval: TimeDelta::minutes(5),
            };
        },
    )
    .await
}

/// Two refused requests from `ip` (with `key`'s id when given), counted
/// by `engine`'s process.
fn fail(engine: &Engine, key: Option<&str>, ip: &str) {
    let key = key.map(|k| kira_core::ids::KeyId::parse(k).expect("id"));
    let ip: std::net::IpAddr = ip.parse().expect("ip");
    for _ in 0..2 {
        engine.alerts().auth_failed(key.as_ref(), ip);
    }
}

/// A notice held for its group is in the database, not in the process
/// that evaluated it: when that process stops, the next one to evaluate
/// sends it when the group is due, once.
async fn a_held_notice_is_sent_by_the_next_evaluator_once(backend: Backend) {
    let mut h = held_harness(backend).await;
    fail(&h.engine, Some("k3v9x2m4q8ab"), "203.0.113.9");
    assert_eq!(h.at(TimeDelta::zero()).await, [sent("ops", "firing")]);
    fail(&h.engine, None, "198.51.100.1");
    assert!(h.at(TimeDelta::minutes(1)).await.is_empty(), "held");
    // The first process stops; another evaluates from now on.
    let next = h.other_process().await;
    drop(std::mem::replace(&mut h.engine, next));
    assert!(
        h.at(TimeDelta::minutes(4) - TimeDelta::seconds(1))
            .await
            .is_empty()
    );
    let got = h.at_bodies(TimeDelta::seconds(1)).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].1["notice"], "firing");
    assert_eq!(got[0].1["alert"]["subject"], "address:198.51.100.1");
    assert_eq!(got[0].1["alerts"].as_array().map(Vec::len), Some(1));
    for by in [TimeDelta::minutes(5), TimeDelta::minutes(10)] {
        assert!(h.at(by).await.is_empty());
    }
    let held = h.alert_of("address:198.51.100.1").await;
    assert_eq!(
        h.attempts(held.id).await,
        [(NoticeKind::Firing, Delivery::Sent)]
    );
}

/// Two processes on one database evaluating in turn: a notice one of
/// them held goes out once, from whichever evaluates when its group is
/// due, and the other never sends it again.
async fn two_evaluators_in_turn_send_a_held_notice_once(backend: Backend) {
    let h = held_harness(backend).await;
    let b = h.other_process().await;
    fail(&h.engine, Some("k3v9x2m4q8ab"), "203.0.113.9");
    assert_eq!(h.at(TimeDelta::zero()).await, [sent("ops", "firing")]);
    // B counts the next subject's failures and holds its notice.
    fail(&b, None, "198.51.100.1");
    assert!(h.at_by(&b, TimeDelta::minutes(1)).await.is_empty());
    assert!(h.at(TimeDelta::minutes(1)).await.is_empty());
    assert!(h.at_by(&b, TimeDelta::minutes(1)).await.is_empty());
    // Due at 5 minutes: A evaluates first and sends it.
    assert_eq!(h.at(TimeDelta::minutes(2)).await, [sent("ops", "firing")]);
    assert!(h.at_by(&b, TimeDelta::seconds(1)).await.is_empty());
    for by in [TimeDelta::minutes(5), TimeDelta::minutes(5)] {
        assert!(h.at(by).await.is_empty());
        assert!(h.at_by(&b, TimeDelta::seconds(1)).await.is_empty());
    }
    let held = h.alert_of("address:198.51.100.1").await;
    assert_eq!(
        h.attempts(held.id).await,
        [(NoticeKind::Firing, Delivery::Sent)]
    );
}

/// What happened to an alert while its notice was held counts when the
/// group goes out: an acknowledged alert is not announced any more (someone
/// is on it), a resolved one neither, a silenced one is held back by the
/// silence; the rest of the group goes out.
async fn a_held_notice_obeys_ack_resolve_and_silence_when_due(backend: Backend) {
    let h = held_harness(backend).await;
    fail(&h.engine, Some("k3v9x2m4q8ab"), "203.0.113.9");
    assert_eq!(h.at(TimeDelta::zero()).await, [sent("ops", "firing")]);
    for ip in [
        "198.51.100.1",
        "198.51.100.2",
        "198.51.100.3",
        "198.51.100.4",
    ] {
        fail(&h.engine, None, ip);
    }
    assert!(h.at(TimeDelta::minutes(1)).await.is_empty(), "held");
    let acked = h.alert_of("address:198.51.100.1").await;
    let resolved = h.alert_of("address:198.51.100.2").await;
    let silenced = h.alert_of("address:198.51.100.3").await;
    let alerts = h.engine.alerts();
    alerts
        .acknowledge(
            AlertReader::Admin(&admin()),
            acked.id,
            "admin",
            audit("alert.ack"),
        )
        .await
        .expect("ack");
    alerts
        .resolve(
            AlertReader::Admin(&admin()),
            resolved.id,
            "admin",
            audit("alert.resolve"),
        )
        .await
        .expect("resolve");
    alerts
        .silence(
            &admin(),
            NewSilence {
                matchers: vec![Matcher {
                    name: "subject".into(),
                    value: "address:198.51.100.3".into(),
                }],
                starts_at: None,
                ends_at: t0() + TimeDelta::hours(1),
                comment: "a known scanner".into(),
            },
            "admin",
            audit("alert.silence"),
        )
        .await
        .expect("silence");
    // Due: the fourth subject's notice goes out, and the alert reopened
    // for the second (its condition still holds), which is a new one.
    let got = h.at_bodies(TimeDelta::minutes(4)).await;
    assert_eq!(got.len(), 1, "{got:?}");
    let mut told: Vec<(String, String)> = got[0].1["alerts"]
        .as_array()
        .expect("alerts")
        .iter()
        .map(|a| {
            (
                a["subject"].as_str().unwrap_or_default().to_owned(),
                a["state"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    told.sort();
    assert_eq!(
        told,
        [
            ("address:198.51.100.2".to_owned(), "firing".to_owned()),
            ("address:198.51.100.4".to_owned(), "firing".to_owned()),
        ]
    );
    let reopened = h.alert_of("address:198.51.100.2").await;
    assert_ne!(reopened.id, resolved.id);
    for a in [&acked, &resolved, &silenced] {
        assert!(h.attempts(a.id).await.is_empty(), "{}", a.subject);
    }
    assert!(h.at(TimeDelta::minutes(10)).await.is_empty());
}

/// Where no process evaluates alerts, the per-second counts do not pile
/// up: the metrics job's retention deletes those older than the longest
/// rule window and 5 minutes (65 minutes here), as the evaluator does.
async fn the_metrics_retention_prunes_the_counts(backend: Backend) {
    let h = held_harness(backend).await;
    let counted = async || {
        h.engine.metrics().flush_counts().await.expect("written");
        h._store
            .counts_since(&admin(), t0() - TimeDelta::days(1))
            .await
            .expect("counts")
            .into_iter()
            .map(|(k, _)| k.detail)
            .collect::<Vec<_>>()
    };
    fail(&h.engine, None, "198.51.100.1");
    h.clock.advance(TimeDelta::minutes(30));
    fail(&h.engine, None, "198.51.100.2");
    assert_eq!(counted().await, ["198.51.100.1", "198.51.100.2"]);
    h.clock.advance(TimeDelta::minutes(35));
    let prune = async || {
        for _ in 0..500 {
            if let Some(n) = h.engine.metrics().prune().await.expect("prune") {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the retention's lock stays taken");
    };
    prune().await;
    assert_eq!(
        counted().await,
        ["198.51.100.1", "198.51.100.2"],
        "65 minutes kept"
    );
    h.clock.advance(TimeDelta::seconds(1));
    prune().await;
    assert_eq!(counted().await, ["198.51.100.2"]);
}

macro_rules! both {
    ($($name:ident),*) => {
        mod sqlite {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name(crate::common::Backend::Sqlite).await } )*
        }
        mod postgres {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name(crate::common::Backend::Postgres).await } )*
        }
    };
}

both!(
    fires_after_for_escalates_at_the_delay_and_resolves,
    an_acknowledged_alert_neither_escalates_nor_repeats,
    a_silence_holds_notices_back_and_the_repeat_interval_holds,
    a_failing_webhook_is_retried_and_every_attempt_recorded,
    a_burst_of_auth_failures_per_key_and_address,
    a_failing_verify_is_a_critical_alert,
    provider_error_rate_and_failing,
    one_rules_subjects_go_out_as_one_notice,
    a_contacts_webhook_rebound_to_a_forbidden_address_is_refused_at_delivery,
    a_contacts_webhook_redirecting_to_another_origin_sends_nothing_there,
    two_processes_counts_are_seen_once_by_the_evaluator_and_metrics,
    a_held_notice_is_sent_by_the_next_evaluator_once,
    two_evaluators_in_turn_send_a_held_notice_once,
    a_held_notice_obeys_ack_resolve_and_silence_when_due,
    the_metrics_retention_prunes_the_counts,
    the_scheduled_verification_is_a_job_the_evaluation_only_reads,
    the_audit_sweep_finds_an_old_altered_entry_in_turn,
    a_notice_taken_by_a_process_that_died_is_sent_after_its_lease,
    a_job_can_run_again_as_soon_as_it_ends
);

/// Each periodic job gives its lock back as it ends, not when its
/// session closes some time later: the evaluation, the verification
/// job, the metrics prune, the compaction and the budget's periodic job
/// each run back to back, in this process and then in another, never
/// finding their lock still held.
async fn a_job_can_run_again_as_soon_as_it_ends(backend: Backend) {
    let h = harness(backend, "ops").await;
    let other = h.other_process().await;
    for e in [&h.engine, &h.engine, &other, &h.engine] {
        assert!(e.alerts().evaluate().await.expect("evaluate").is_some());
        assert!(e.alerts().verify_due().await.expect("verify").is_some());
        assert!(e.metrics().prune().await.expect("prune").is_some());
        assert!(e.memory().compact_all().await.expect("compact").is_some());
        assert!(e.scheduler().periodic().await.expect("periodic"));
    }
}

/// A company contact's webhook is checked when written (an address
/// literal) and, as a name, on what it resolves to at every delivery: a
/// name that answered an allowed address for the first notice and a
/// forbidden one for the repeat is refused then, each try recorded as a
/// failed attempt with the reason and retried as any failed delivery,
/// and nothing connects to the forbidden address.
async fn a_contacts_webhook_rebound_to_a_forbidden_address_is_refused_at_delivery(
    backend: Backend,
) {
    use crate::common::{answer, rebinding_pair, untouched};
    use std::sync::atomic::{AtomicBool, Ordering};
    let (hook, hook_wire, hook_loopback) = rebinding_pair(answer("200 OK", &[], "")).await;
    let rebound = Arc::new(AtomicBool::new(false));
    let resolver = {
        let rebound = rebound.clone();
        kira_engine::outbound::Resolver::from_fn(move |host| match host {
            "hooks.rebind.test" if rebound.load(Ordering::SeqCst) => {
                Ok(vec![[127, 0, 0, 1].into()])
            }
            "hooks.rebind.test" => Ok(vec![[127, 0, 0, 2].into()]),
            other => Err(std::io::Error::other(format!("{other} is not a test name"))),
        })
    };
    let url = format!("http://hooks.rebind.test:{}/hook", hook.port());
    let c = contact_engine(backend, &url, resolver).await;
    let (engine, clock, repeat) = (&c.engine, &c.clock, c.repeat);
    let evaluate = async || evaluate_until_locked(engine).await;

    evaluate().await;
    assert_eq!(hook_wire.requests(), 1, "the firing notice is delivered");
    assert!(
        hook_wire.text().starts_with("POST /hook "),
        "{}",
        hook_wire.text()
    );

    rebound.store(true, Ordering::SeqCst);
    clock.advance(repeat);
    evaluate().await;
    assert_eq!(hook_wire.requests(), 1, "the repeat went nowhere");
    assert!(untouched(&hook_loopback), "nothing connected to 127.0.0.1");

    let d = only_alert(engine).await;
    let tries: Vec<_> = d
        .notifications
        .iter()
        .map(|n| (n.notice, n.channel.as_str(), n.attempt, n.outcome))
        .collect();
    assert_eq!(
        tries,
        [
            (NoticeKind::Firing, "webhook", 1, Delivery::Sent),
            (NoticeKind::Repeat, "webhook", 1, Delivery::Failed),
            (NoticeKind::Repeat, "webhook", 2, Delivery::Failed),
            (NoticeKind::Repeat, "webhook", 3, Delivery::Failed),
        ]
    );
    for n in &d.notifications[1..] {
        let why = n.error.as_deref().unwrap_or_default();
        assert!(
            why.contains("refused by kira's outbound address policy") && why.contains("127.0.0.1"),
            "{why}"
        );
        assert_eq!(n.target, url);
    }
}

/// An engine whose one rule (spending anything) fires at once for acme,
/// routed to the company's contact, whose webhook is `url`; company URLs
/// may reach 127.0.0.2 (and nothing else private), names resolved by
/// `resolver`.
struct ContactEngine {
    engine: Engine,
    clock: Arc<ManualClock>,
    repeat: TimeDelta,
    _store: Arc<dyn Store>,
    _dir: Option<tempfile::TempDir>,
}

/// The one alert there is, with its notifications.
async fn only_alert(engine: &Engine) -> kira_store::alerts::AlertDetail {
    let alerts = engine
        .alerts()
        .list(AlertReader::Admin(&admin()), &AlertFilter::default())
        .await
        .expect("list");
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    engine
        .alerts()
        .get(AlertReader::Admin(&admin()), alerts[0].id)
        .await
        .expect("get")
}

async fn contact_engine(
    backend: Backend,
    url: &str,
    resolver: kira_engine::outbound::Resolver,
) -> ContactEngine {
    let (store, dir) = fresh_store(backend).await;
    let clock = Arc::new(ManualClock::new(t0()));
    let mut cfg = EngineConfig::default();
    cfg.tools.outbound = Arc::new(
        kira_core::outbound::OutboundPolicy::default()
            .with_allowed("tools.allow_outbound", &["127.0.0.2".into()])
            .expect("policy"),
    );
    cfg.tools.resolver = resolver;
    let a = &mut cfg.alerts;
    a.rules = vec![Rule {
        name: "spending".into(),
        severity: Severity::Warning,
        for_duration: TimeDelta::zero(),
        labels: BTreeMap::new(),
        condition: Condition::AllocationUsed { fraction: 0.0 },
    }];
    a.routing.0.insert(
        RuleKind::Budget,
        Route {
            immediate: vec![Audience::CompanyContact],
            escalation: vec![],
            escalation_delay: None,
        },
    );
    a.retry_backoff = Duration::from_millis(1);
    let (_, p) = serde_json::from_value::<NewCompany>(json!({
        "id": "acme", "name": "Acme", "industry": "fintech", "jurisdiction": "US-DE",
        "contacts": [{"name": "ops", "webhook": url}]
    }))
    .expect("json")
    .validate()
    .expect("valid");
    store
        .create_company(&acme(), &p, t0(), audit("company.create"))
        .await
        .expect("create");
    let repeat = cfg.alerts.repeat_interval;
    let engine = Engine::new(store.clone(), clock.clone(), cfg);
    ContactEngine {
        engine,
        clock,
        repeat,
        _store: store,
        _dir: dir,
    }
}

/// One evaluation, waiting while a test beside this one holds the lock.
/// Runs the scheduled verifications' job (waiting for its lock like
/// [`evaluate_until_locked`]): the verifications it ran.
async fn verify_until_locked(engine: &Engine) -> usize {
    let mut tries = 0;
    loop {
        if let Some(ran) = engine.alerts().verify_due().await.expect("verify") {
            return ran.len();
        }
        tries += 1;
        assert!(tries < 500, "the verification job's lock stays taken");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn evaluate_until_locked(engine: &Engine) {
    let mut tries = 0;
    while engine
        .alerts()
        .evaluate()
        .await
        .expect("evaluate")
        .is_none()
    {
        tries += 1;
        assert!(tries < 500, "the evaluator's lock stays taken");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A company's contact webhook that answers with a redirect to another
/// origin does not hand the alert on: kira follows no such redirect for
/// a company's URL (its body would go wherever the company's server
/// points), and records every try as failed with the reason, naming the
/// other origin only.
async fn a_contacts_webhook_redirecting_to_another_origin_sends_nothing_there(backend: Backend) {
    use crate::common::{answer, wire_server};
    let (other, other_wire) =
        wire_server(([127, 0, 0, 2], 0).into(), answer("200 OK", &[], "")).await;
    let (hook, hook_wire) = wire_server(
        ([127, 0, 0, 2], 0).into(),
        answer(
            "307 Temporary Redirect",
            &[format!("location: http://{other}/landing?token=kept-out")],
            "",
        ),
    )
    .await;
    let url = format!("http://{hook}/hook");
    let c = contact_engine(backend, &url, kira_engine::outbound::Resolver::System).await;
    evaluate_until_locked(&c.engine).await;

    assert_eq!(other_wire.requests(), 0, "{}", other_wire.text());
    assert_eq!(hook_wire.requests(), 3, "each try reached the hook");
    assert!(
        hook_wire.text().contains("\"notice\":\"firing\""),
        "{}",
        hook_wire.text()
    );
    let d = only_alert(&c.engine).await;
    let tries: Vec<_> = d
        .notifications
        .iter()
        .map(|n| (n.notice, n.channel.as_str(), n.attempt, n.outcome))
        .collect();
    assert_eq!(
        tries,
        [
            (NoticeKind::Firing, "webhook", 1, Delivery::Failed),
            (NoticeKind::Firing, "webhook", 2, Delivery::Failed),
            (NoticeKind::Firing, "webhook", 3, Delivery::Failed),
        ]
    );
    for n in &d.notifications {
        let why = n.error.as_deref().unwrap_or_default();
        assert!(
            why.contains("HTTP 307")
                && why.contains(&format!("another origin (http://{other})"))
                && !why.contains("kept-out"),
            "{why}"
        );
        assert_eq!(n.target, url);
    }
}

/// Authentication failures, denied cross-company reads and provider calls
/// made in two kira processes on one database (two engines, each with its
/// own store on the same URL): whichever process evaluates sees both
/// processes' counts, each once, however often it evaluates; a burst
/// spread over the two opens the alert one process alone would not; a
/// provider failing in both is failing; `/metrics` of either process
/// shows the same totals.
async fn two_processes_counts_are_seen_once_by_the_evaluator_and_metrics(backend: Backend) {
    let h = harness_with(
        backend,
        "ops",
        vec![
            rule(
                "auth_failures",
                Severity::Critical,
                0,
                Condition::AuthFailures {
                    above: 3,
                    window_seconds: 60,
                },
            ),
            rule(
                "provider_failing",
                Severity::Critical,
                0,
                Condition::ProviderFailing { errors_in_a_row: 3 },
            ),
        ],
    )
    .await;
    let second: Arc<dyn Store> = if h.url.starts_with("sqlite:") {
        Arc::new(
            kira_store::sqlite::SqliteStore::open(&h.url)
                .await
                .expect("sqlite"),
        )
    } else {
        Arc::new(
            kira_store::postgres::PgStore::open(&h.url, None)
                .await
                .expect("pg"),
        )
    };
    let other = Engine::new(second, h.clock.clone(), EngineConfig::default());
    let key = kira_core::ids::KeyId::parse("k3v9x2m4q8ab").expect("id");
    let attacker: std::net::IpAddr = "203.0.113.9".parse().expect("ip");
    let ok = Some(Duration::from_millis(300));

    // Two failures here, two there: four for the key, above 3 only together.
    for e in [&h.engine, &other] {
        e.alerts().auth_failed(Some(&key), attacker);
        e.alerts().auth_failed(Some(&key), attacker);
        e.sharing().count_denied_read();
    }
    // The provider's last three calls failed: one here after two there.
    other.metrics().provider_call("flaky", "a", ok);
    other.metrics().provider_call("flaky", "a", None);
    other.metrics().provider_call("flaky", "b", None);
    other.metrics().flush_counts().await.expect("written");
    h.engine.metrics().provider_call("flaky", "a", None);
    h.engine.metrics().provider_call("steady", "m", ok);

    // One notice per rule.
    assert_eq!(
        h.at(TimeDelta::seconds(1)).await,
        [sent("ops", "firing"), sent("ops", "firing")]
    );
    let firing = h.alerts().await;
    let seen: Vec<_> = firing
        .iter()
        .map(|a| (a.1.as_str(), a.2.as_str(), a.3.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            (
                "address:203.0.113.9",
                "firing",
                "4 authentication failures for address:203.0.113.9 in 60s"
            ),
            (
                "key:k3v9x2m4q8ab",
                "firing",
                "4 authentication failures for key:k3v9x2m4q8ab in 60s"
            ),
            (
                "provider:flaky",
                "firing",
                "the last 3 calls to flaky all failed"
            ),
        ]
    );
    // Evaluated again, by either process: counted once still.
    for _ in 0..2 {
        assert!(h.at(TimeDelta::seconds(1)).await.is_empty());
    }
    let again = h.alerts().await;
    assert_eq!(
        again[1].3,
        "4 authentication failures for key:k3v9x2m4q8ab in 60s"
    );

    let metrics = Principal::system().metrics().expect("metrics");
    for e in [&h.engine, &other] {
        let s = e.metrics().scrape(&metrics).await.expect("scrape");
        assert_eq!(s.auth_failures, 4);
        assert_eq!(s.denied_cross_company_reads, 2);
        let calls: Vec<_> = s
            .providers
            .iter()
            .map(|((p, m), c)| {
                (
                    p.as_str(),
                    m.as_str(),
                    c.ok,
                    c.errors,
                    c.buckets.iter().sum::<u64>(),
                )
            })
            .collect();
        assert_eq!(
            calls,
            [
                ("flaky", "a", 1, 2, 1),
                ("flaky", "b", 0, 1, 0),
                ("steady", "m", 1, 0, 1)
            ]
        );
    }
    let admin = admin();
    assert_eq!(
        other.sharing().denied_reads(&admin).await.expect("denied"),
        2
    );

    // An answer in the other process ends the streak for both.
    other.metrics().provider_call("flaky", "b", ok);
    other.metrics().flush_counts().await.expect("written");
    assert_eq!(h.at(TimeDelta::seconds(1)).await, [sent("ops", "resolved")]);
}
