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

use crate::common::{Backend, fresh_store, t0};

/// What the receiver got: (path, body).
type Inbox = Arc<Mutex<Vec<(String, Value)>>>;

/// A webhook receiver on loopback; `/flaky` answers 503 to its first two
/// calls.
async fn receiver() -> (String, Inbox) {
    let inbox: Inbox = Arc::default();
    let flaky = Arc::new(Mutex::new(0u32));
    let app = axum::Router::new()
        .route(
            "/{name}",
            post(
                |State((inbox, flaky)): State<(Inbox, Arc<Mutex<u32>>)>,
                 Path(name): Path<String>,
                 axum::Json(body): axum::Json<Value>| async move {
                    if name == "flaky" {
                        let mut n = flaky.lock().expect("lock");
                        *n += 1;
                        if *n <= 2 {
                            return StatusCode::SERVICE_UNAVAILABLE;
                        }
                    }
                    inbox.lock().expect("lock").push((name, body));
                    StatusCode::OK
                },
            ),
        )
        .with_state((inbox.clone(), flaky));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(l, app).await });
    (format!("http://{addr}"), inbox)
}

struct Harness {
    engine: Engine,
    clock: Arc<ManualClock>,
    inbox: Inbox,
    _store: Arc<dyn Store>,
    _dir: Option<tempfile::TempDir>,
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
    let (store, dir) = fresh_store(backend).await;
    let clock = Arc::new(ManualClock::new(t0()));
    let (base, inbox) = receiver().await;
    let mut cfg = EngineConfig::default();
    let a = &mut cfg.alerts;
    a.rules = vec![Rule {
        name: "stuck_queue".into(),
        severity: Severity::Warning,
        for_duration: TimeDelta::minutes(5),
        labels: BTreeMap::new(),
        condition: Condition::StuckQueue {
            longer_than_seconds: 900,
        },
    }];
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
    let engine = Engine::new(store.clone(), clock.clone(), cfg);
    Harness {
        engine,
        clock,
        inbox,
        _store: store,
        _dir: dir,
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
        self.clock.advance(by);
        // Tests running beside this one on the same PostgreSQL server may
        // hold the evaluator's lock for a moment.
        let mut tries = 0;
        while self
            .engine
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
        let got: Vec<_> = self.inbox.lock().expect("lock").drain(..).collect();
        got.into_iter()
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
    a_contacts_webhook_rebound_to_a_forbidden_address_is_refused_at_delivery
);

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
    let (store, _dir) = fresh_store(backend).await;
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
    let url = format!("http://hooks.rebind.test:{}/hook", hook.port());
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
    let evaluate = async || {
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
    };

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

    let alerts = engine
        .alerts()
        .list(AlertReader::Admin(&admin()), &AlertFilter::default())
        .await
        .expect("list");
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let d = engine
        .alerts()
        .get(AlertReader::Admin(&admin()), alerts[0].id)
        .await
        .expect("get");
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
