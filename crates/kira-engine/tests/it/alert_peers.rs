//! The alert channels against real receivers on loopback: an SMTP sink
//! (`aiosmtpd`, Debian's `python3-aiosmtpd`) receives the firing and the
//! resolve notices as email, and a real Prometheus Alertmanager (Debian's
//! `prometheus-alertmanager`) holds kira's alert while it fires and lets it
//! go when kira resolves it, checked through Alertmanager's own v2 API.
//! `scripts/test` installs both; without them these tests fail.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{SubsecRound, TimeDelta, Utc};
use kira_core::alerts::{Audience, Condition, NoticeKind, Route, Rule, RuleKind, Severity};
use kira_core::clock::ManualClock;
use kira_core::company::NewCompany;
use kira_core::task::{Priority, TaskId, TaskRequest};
use kira_engine::alerts::{ChannelSpec, SmtpSection, SmtpSecurity};
use kira_engine::{Engine, EngineConfig};
use kira_store::Store;
use kira_store::alerts::{AlertFilter, AlertReader, Delivery};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

use crate::alerts::{acme, admin, audit};
use crate::common::{Backend, fresh_store};

/// The wall clock: Alertmanager judges an alert's `startsAt`/`endsAt` by
/// its own, so the test's manual clock starts from it.
#[allow(clippy::disallowed_methods)]
fn wall_now() -> chrono::DateTime<Utc> {
    Utc::now().trunc_subsecs(0)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port()
}

/// Waits (up to 20 s) until `ready` holds; the peer is a real process.
async fn wait_for(what: &str, child: &mut Child, mut ready: impl AsyncFnMut() -> bool) {
    for _ in 0..400 {
        if ready().await {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited at start: {status}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} did not become ready");
}

/// `aiosmtpd` writing what it receives into a Maildir under `dir`.
async fn smtp_sink(dir: &Path) -> (Child, u16) {
    let python = std::env::var("KIRA_TEST_SMTPD_PYTHON").unwrap_or("/usr/bin/python3".into());
    let port = free_port();
    let mut child = Command::new(&python)
        .args(["-m", "aiosmtpd", "-n", "-l"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["-c", "aiosmtpd.handlers.Mailbox"])
        .arg(dir)
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("{python} -m aiosmtpd (scripts/test installs it): {e}"));
    wait_for("aiosmtpd", &mut child, async || {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
    (child, port)
}

/// A real Alertmanager with one receiver that goes nowhere.
async fn alertmanager(dir: &Path) -> (Child, String) {
    let bin = std::env::var("KIRA_TEST_ALERTMANAGER").unwrap_or("prometheus-alertmanager".into());
    let config = dir.join("alertmanager.yml");
    std::fs::write(
        &config,
        "route:\n  receiver: nowhere\nreceivers:\n  - name: nowhere\n",
    )
    .expect("config");
    let port = free_port();
    let mut child = Command::new(&bin)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--cluster.listen-address=")
        .arg("--log.level=warn")
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("{bin} (scripts/test installs it): {e}"));
    let base = format!("http://127.0.0.1:{port}");
    let ready = format!("{base}/-/ready");
    wait_for("alertmanager", &mut child, async || {
        reqwest::get(&ready)
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    (child, base)
}

/// The alerts Alertmanager holds as active, as its API answers.
async fn active_in(base: &str) -> Vec<Value> {
    reqwest::get(format!("{base}/api/v2/alerts?active=true&silenced=true"))
        .await
        .expect("get")
        .json::<Vec<Value>>()
        .await
        .expect("json")
        .into_iter()
        .filter(|a| a["status"]["state"] == "active")
        .collect()
}

/// Quoted-printable undone (soft line breaks and `=XX` escapes).
fn unquote(s: &str) -> String {
    let s = s.replace("=\n", "");
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match (b[i], hex) {
            (b'=', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The messages in the sink's Maildir, headers unfolded, bodies decoded.
fn mails(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir.join("new")) else {
        return vec![];
    };
    let mut out: Vec<String> = entries
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .map(|m| unquote(&m.replace("\r\n", "\n").replace("\n ", " ")))
        .collect();
    out.sort_by_key(|m| !m.contains("[FIRING]"));
    out
}

/// `rule` alone, routed to the operator team's `channels` (email through
/// `smtp`), retried after 1 ms; an engine on a manual clock from `start`
/// over a store holding acme, with one task of acme's waiting.
struct Harness {
    engine: Engine,
    clock: Arc<ManualClock>,
    task: TaskId,
    _store: Arc<dyn Store>,
    _dir: Option<tempfile::TempDir>,
}

impl Harness {
    async fn start(
        backend: Backend,
        start: chrono::DateTime<Utc>,
        rule: Rule,
        smtp: SmtpSection,
        channels: Vec<ChannelSpec>,
    ) -> Harness {
        let (store, dir) = fresh_store(backend).await;
        let clock = Arc::new(ManualClock::new(start));
        let mut cfg = EngineConfig::default();
        let a = &mut cfg.alerts;
        a.rules = vec![rule];
        a.routing.0.insert(
            RuleKind::StuckQueue,
            Route {
                immediate: vec![Audience::Team("operator".into())],
                escalation: vec![],
                escalation_delay: None,
            },
        );
        a.retry_backoff = Duration::from_millis(1);
        a.smtp = smtp.resolve().expect("smtp");
        a.teams.insert("operator".into(), channels);
        let (_, p) = serde_json::from_value::<NewCompany>(json!({
            "id": "acme", "name": "Acme", "industry": "fintech", "jurisdiction": "US-DE"
        }))
        .expect("json")
        .validate()
        .expect("valid");
        store
            .create_company(&acme(), &p, start, audit("company.create"))
            .await
            .expect("create");
        let engine = Engine::new(store.clone(), clock.clone(), cfg);
        let req = TaskRequest {
            task: "a question nobody takes".into(),
            task_type: "quick_question_answer".into(),
            priority: Priority::Low,
            deadline: None,
            parameters: None,
            specialist: None,
        };
        let task = engine
            .tasks()
            .submit(&acme(), &req, None, audit("task.submit"))
            .await
            .expect("submit")
            .task
            .task_id;
        Harness {
            engine,
            clock,
            task,
            _store: store,
            _dir: dir,
        }
    }

    /// Moves the clock on by `by` and evaluates (waiting for the
    /// evaluator's lock, which tests beside this one may hold a moment).
    async fn evaluate(&self, by: TimeDelta) {
        self.clock.advance(by);
        for _ in 0..500 {
            if self
                .engine
                .alerts()
                .evaluate()
                .await
                .expect("evaluate")
                .is_some()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the evaluator's lock stays taken");
    }
}

async fn email_and_alertmanager_receive_firing_and_resolved(backend: Backend) {
    let peers = tempfile::tempdir().expect("dir");
    let maildir = peers.path().join("mail");
    let (_smtp, smtp_port) = smtp_sink(&maildir).await;
    let (_am, am) = alertmanager(peers.path()).await;

    // An hour back from now: Alertmanager judges startsAt/endsAt by its
    // own clock, so the test's times must be in its past.
    let h = Harness::start(
        backend,
        wall_now() - TimeDelta::hours(1),
        Rule {
            name: "stuck_queue".into(),
            severity: Severity::Critical,
            for_duration: TimeDelta::minutes(5),
            labels: BTreeMap::from([("team".into(), "ops".into())]),
            condition: Condition::StuckQueue {
                longer_than_seconds: 900,
            },
        },
        SmtpSection {
            host: Some("127.0.0.1".into()),
            port: Some(smtp_port),
            security: Some(SmtpSecurity::None),
            from: Some("kira <alerts@kira.test>".into()),
            ..Default::default()
        },
        vec![
            ChannelSpec::Email {
                to: vec!["ops@kira.test".into(), "oncall@kira.test".into()],
            },
            ChannelSpec::Alertmanager { url: am.clone() },
        ],
    )
    .await;
    let (engine, task) = (&h.engine, &h.task);
    h.evaluate(TimeDelta::seconds(901)).await;
    assert!(mails(&maildir).is_empty(), "pending: nothing sent yet");
    assert!(active_in(&am).await.is_empty());
    h.evaluate(TimeDelta::minutes(5)).await;

    // Fired: one email to both addresses, and the alert in Alertmanager.
    let got = mails(&maildir);
    assert_eq!(got.len(), 1, "{got:?}");
    let m = &got[0];
    assert!(m.contains("From: kira <alerts@kira.test>"), "{m}");
    assert!(
        m.contains("ops@kira.test") && m.contains("oncall@kira.test"),
        "{m}"
    );
    assert!(
        m.contains("Subject: kira: [FIRING] stuck_queue system (critical)"),
        "{m}"
    );
    assert!(m.contains("label:     team=ops"), "{m}");
    let held = active_in(&am).await;
    assert_eq!(held.len(), 1, "{held:?}");
    let labels = &held[0]["labels"];
    assert_eq!(labels["alertname"], "stuck_queue");
    assert_eq!(labels["severity"], "critical");
    assert_eq!(labels["kira_subject"], "system");
    assert_eq!(labels["team"], "ops");

    // The task leaves the queue: resolved, by email and in Alertmanager.
    engine
        .tasks()
        .cancel(&acme(), task, audit("task.cancel"))
        .await
        .expect("cancel");
    h.evaluate(TimeDelta::minutes(1)).await;
    let got = mails(&maildir);
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(
        got[1].contains("Subject: kira: [RESOLVED] stuck_queue system"),
        "{}",
        got[1]
    );
    assert!(active_in(&am).await.is_empty(), "Alertmanager let it go");

    let alert = engine
        .alerts()
        .list(AlertReader::Admin(&admin()), &AlertFilter::default())
        .await
        .expect("list")
        .remove(0);
    let detail = engine
        .alerts()
        .get(AlertReader::Admin(&admin()), alert.id)
        .await
        .expect("get");
    let attempts: Vec<_> = detail
        .notifications
        .iter()
        .map(|n| (n.notice, n.channel.as_str(), n.outcome))
        .collect();
    assert_eq!(
        attempts,
        [
            (NoticeKind::Firing, "email", Delivery::Sent),
            (NoticeKind::Firing, "alertmanager", Delivery::Sent),
            (NoticeKind::Resolved, "email", Delivery::Sent),
            (NoticeKind::Resolved, "alertmanager", Delivery::Sent),
        ]
    );
    assert_eq!(
        detail.notifications[0].target,
        "ops@kira.test, oncall@kira.test"
    );
}

/// A sink that is not there: every attempt is recorded as failed, with
/// the SMTP error, and retried as configured.
async fn an_unreachable_smtp_server_is_retried_and_recorded(backend: Backend) {
    let h = Harness::start(
        backend,
        wall_now(),
        Rule {
            name: "stuck_queue".into(),
            severity: Severity::Warning,
            for_duration: TimeDelta::zero(),
            labels: BTreeMap::new(),
            condition: Condition::StuckQueue {
                longer_than_seconds: 60,
            },
        },
        SmtpSection {
            host: Some("127.0.0.1".into()),
            port: Some(free_port()),
            security: Some(SmtpSecurity::None),
            from: Some("alerts@kira.test".into()),
            ..Default::default()
        },
        vec![ChannelSpec::Email {
            to: vec!["ops@kira.test".into()],
        }],
    )
    .await;
    h.evaluate(TimeDelta::minutes(2)).await;
    let engine = &h.engine;
    let alert = engine
        .alerts()
        .list(AlertReader::Admin(&admin()), &AlertFilter::default())
        .await
        .expect("list")
        .remove(0);
    let d = engine
        .alerts()
        .get(AlertReader::Admin(&admin()), alert.id)
        .await
        .expect("get");
    assert_eq!(d.notifications.len(), 3, "{:?}", d.notifications);
    for (i, n) in d.notifications.iter().enumerate() {
        assert_eq!(n.attempt, i as i32 + 1);
        assert_eq!(n.outcome, Delivery::Failed);
        assert!(
            n.error.as_deref().is_some_and(|e| e.starts_with("SMTP:")),
            "{n:?}"
        );
    }
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
    email_and_alertmanager_receive_firing_and_resolved,
    an_unreachable_smtp_server_is_retried_and_recorded
);
