//! The dashboards, on both backends: the JSON in SEED 6.3's shape with the
//! exact figures of a scripted run (runs ended at known times with known
//! usage, a rating, a queued task, a running one, alerts of every kind);
//! a company key sees its own company's only (another's answers 404 and
//! is audited as denied), the executive view is the admin's; and the
//! `/ui/` pages: sign-in to a server-side session cookie (HttpOnly,
//! SameSite=Strict, never the key), the Content-Security-Policy on every
//! page, another company's page refused, forms refused without their
//! token or from another site, sign-out ending the session.

use std::sync::Arc;

use chrono::{DateTime, SubsecRound, TimeDelta, TimeZone, Utc};
use kira_core::CompanyId;
use kira_core::alerts::{Alert, AlertState, RuleKind, Severity, Subject};
use kira_core::auth::{Access, Principal};
use kira_core::clock::ManualClock;
use kira_core::metrics::Histogram;
use kira_core::task::{TaskId, TaskStatus};
use kira_server::ServerConfig;
use kira_store::work::{ClaimOutcome, Completed, Completion, Finish, RunRecords, Settlement};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::{Backend, Server};

/// The scripted run's "now" is `t0() + 30 s`: 2026-03-10 12:00:30, the
/// budget period March.
pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 10, 12, 0, 0)
        .single()
        .expect("valid")
}

pub fn at(seconds: i64) -> DateTime<Utc> {
    t0() + TimeDelta::seconds(seconds)
}

/// What the scripted run leaves.
pub struct Run {
    pub server: Server,
    pub clock: Arc<ManualClock>,
    pub acme_viewer: String,
    pub acme_operator: String,
    pub beta_viewer: String,
    /// The firing acme alert.
    pub acme_alert: Uuid,
}

fn scope(company: &str) -> kira_core::auth::CompanyScope {
    Principal::system()
        .scope(&CompanyId::parse(company).expect("id"), Access::Write)
        .expect("scope")
}

/// Submits a task of `company` at the clock's time through the API.
async fn submit(s: &Server, clock: &ManualClock, company: &str, when: DateTime<Utc>) -> TaskId {
    clock.set(when);
    TaskId::parse(&s.task(company).await).expect("task id")
}

/// Claims `id` at `claimed` for `worker` (its lease one scheduler lease
/// long), then, with `end`, ends it at that time with `status` settling
/// `usage`.
async fn claim_and_end(
    s: &Server,
    company: &str,
    id: &TaskId,
    worker: &str,
    claimed: DateTime<Utc>,
    end: Option<(DateTime<Utc>, TaskStatus, (i64, i64))>,
) {
    let cfg = kira_engine::EngineConfig::default();
    let reservation = match s
        .store
        .claim(
            &scope(company),
            id,
            worker,
            claimed + cfg.scheduler.lease,
            &cfg.budget,
            claimed,
        )
        .await
        .expect("claim")
    {
        ClaimOutcome::Claimed { reservation, .. } => reservation,
        o => panic!("not claimed: {o:?}"),
    };
    let Some((ended, status, (prompt, completion))) = end else {
        return;
    };
    let out = s
        .store
        .finish_batch(
            worker,
            vec![Completion {
                scope: scope(company),
                task_id: id.clone(),
                finish: Finish {
                    status,
                    reason: "scripted".into(),
                    result: Some(json!({"summary": "done"})),
                    confidence: Some(if status == TaskStatus::NeedsReview {
                        0.4
                    } else {
                        0.9
                    }),
                    requires_human_review: status == TaskStatus::NeedsReview,
                    error: (status == TaskStatus::Failed).then(|| "provider down".into()),
                    retry_at: None,
                },
                settle: Some(Settlement {
                    reservation_id: reservation.reservation_id,
                    prompt_tokens: prompt,
                    completion_tokens: completion,
                    cost_usd: 0.25,
                }),
                records: RunRecords::default(),
            }],
            ended,
        )
        .await
        .expect("finish");
    assert!(matches!(out[..], [Completed::Recorded]), "{out:?}");
}

fn alert(
    rule: &str,
    kind: RuleKind,
    severity: Severity,
    subject: Subject,
    state: AlertState,
    started: DateTime<Utc>,
    updated: DateTime<Utc>,
) -> Alert {
    let open = state != AlertState::Resolved;
    Alert {
        id: Uuid::now_v7(),
        rule: rule.into(),
        kind,
        severity,
        subject,
        labels: Default::default(),
        state,
        summary: format!("{rule} observed"),
        value: 1.0,
        started_at: started,
        fired_at: Some(started),
        acknowledged_at: None,
        acknowledged_by: None,
        escalated_at: None,
        last_notified_at: Some(started),
        resolved_at: (!open).then_some(updated),
        resolved_by: (!open).then(|| "evaluator".into()),
        updated_at: updated,
        version: 0,
    }
}

/// acme: A0 two days before t0 (completed, 30 s, 500 + 100 tokens); at t0
/// A1 completed after 10 s (300 + 100) and rated 4, A2 failed after 25 s
/// (100 + 50), A3 waiting for review after 20 s (200 + 0), A4 queued, A5
/// running on `node-1`. beta: B1 completed after 5 s (50 + 50). Alerts:
/// acme's firing one, acme's resolved an hour ago, acme's resolved three
/// days ago, beta's firing one, the system's critical one. The clock then
/// stays at t0 + 30 s.
pub async fn scripted_run(backend: Backend) -> Run {
    let clock = Arc::new(ManualClock::new(at(-3 * 86_400)));
    let s = Server::start_at(backend, ServerConfig::default(), clock.clone()).await;
    s.company("acme").await;
    s.company("beta").await;
    let (_, acme_viewer) = s.key("viewer", Some("acme")).await;
    let (_, acme_operator) = s.key("operator", Some("acme")).await;
    let (_, beta_viewer) = s.key("viewer", Some("beta")).await;

    let a0 = submit(&s, &clock, "acme", at(-2 * 86_400)).await;
    claim_and_end(
        &s,
        "acme",
        &a0,
        "w",
        at(-2 * 86_400 + 1),
        Some((at(-2 * 86_400 + 30), TaskStatus::Completed, (500, 100))),
    )
    .await;
    let a1 = submit(&s, &clock, "acme", t0()).await;
    let a2 = submit(&s, &clock, "acme", t0()).await;
    let a3 = submit(&s, &clock, "acme", t0()).await;
    let _a4 = submit(&s, &clock, "acme", t0()).await;
    let a5 = submit(&s, &clock, "acme", t0()).await;
    let b1 = submit(&s, &clock, "beta", t0()).await;
    claim_and_end(
        &s,
        "acme",
        &a1,
        "w",
        at(2),
        Some((at(10), TaskStatus::Completed, (300, 100))),
    )
    .await;
    claim_and_end(
        &s,
        "acme",
        &a2,
        "w",
        at(5),
        Some((at(25), TaskStatus::Failed, (100, 50))),
    )
    .await;
    claim_and_end(
        &s,
        "acme",
        &a3,
        "w",
        at(3),
        Some((at(20), TaskStatus::NeedsReview, (200, 0))),
    )
    .await;
    claim_and_end(&s, "acme", &a5, "node-1", t0(), None).await;
    claim_and_end(
        &s,
        "beta",
        &b1,
        "w",
        at(1),
        Some((at(5), TaskStatus::Completed, (50, 50))),
    )
    .await;

    clock.set(at(30));
    let (status, v) = s
        .call(
            Method::POST,
            &format!("/v1/companies/acme/tasks/{a1}/rating"),
            Some(&acme_operator),
            Some(json!({"rating": 4})),
        )
        .await;
    assert!(status.is_success(), "{status} {v}");

    let now = at(30).trunc_subsecs(6);
    let acme = || Subject::Company(CompanyId::parse("acme").expect("id"));
    let firing = alert(
        "sla_violation",
        RuleKind::SlaViolation,
        Severity::Warning,
        acme(),
        AlertState::Firing,
        now - TimeDelta::hours(1),
        now - TimeDelta::hours(1),
    );
    let alerts = [
        firing.clone(),
        alert(
            "error_rate",
            RuleKind::ErrorRate,
            Severity::Warning,
            acme(),
            AlertState::Resolved,
            now - TimeDelta::days(3),
            now - TimeDelta::hours(1),
        ),
        alert(
            "review_backlog",
            RuleKind::ReviewBacklog,
            Severity::Warning,
            acme(),
            AlertState::Resolved,
            now - TimeDelta::days(3),
            now - TimeDelta::days(3),
        ),
        alert(
            "error_rate",
            RuleKind::ErrorRate,
            Severity::Warning,
            Subject::Company(CompanyId::parse("beta").expect("id")),
            AlertState::Firing,
            now - TimeDelta::minutes(5),
            now - TimeDelta::minutes(5),
        ),
        alert(
            "stuck_queue",
            RuleKind::StuckQueue,
            Severity::Critical,
            Subject::System,
            AlertState::Firing,
            now - TimeDelta::minutes(2),
            now - TimeDelta::minutes(2),
        ),
    ];
    let written = s
        .store
        .write_alert_plan(&alerts, &[])
        .await
        .expect("alerts");
    assert_eq!(written.len(), 5);
    Run {
        server: s,
        clock,
        acme_viewer,
        acme_operator,
        beta_viewer,
        acme_alert: firing.id,
    }
}

/// The p95 (seconds) the response-time histogram gives for these runs.
fn p95(seconds: &[i64]) -> f64 {
    let mut h = Histogram::default();
    for s in seconds {
        h.observe(s * 1_000);
    }
    h.quantile(0.95).expect("runs") / 1_000.0
}

fn close(v: &Value, expected: f64) -> bool {
    v.as_f64().is_some_and(|x| (x - expected).abs() < 1e-9)
}

/// `used` at its rate from the period's start (March 1) to `now`, over
/// the whole of March.
fn projected(used: i64, now: DateTime<Utc>) -> i64 {
    let start = Utc
        .with_ymd_and_hms(2026, 3, 1, 0, 0, 0)
        .single()
        .expect("valid");
    let elapsed = i128::from((now - start).num_milliseconds());
    let length = i128::from(TimeDelta::days(31).num_milliseconds());
    (i128::from(used) * length / elapsed) as i64
}

async fn get(s: &Server, path: &str, token: &str) -> (StatusCode, Value) {
    s.call(Method::GET, path, Some(token), None).await
}

async fn company_dashboard_story(backend: Backend) {
    let run = scripted_run(backend).await;
    let s = &run.server;
    let (status, d) = get(s, "/v1/companies/acme/dashboard", &run.acme_viewer).await;
    assert_eq!(status, StatusCode::OK, "{d}");
    assert_eq!(d["company_id"], "acme");
    assert_eq!(d["name"], "acme corp");

    // Overview: the last 30 days.
    let o = &d["overview"];
    assert_eq!(o["days"], 30);
    assert_eq!(o["total_tasks"], 4, "{o}");
    assert_eq!(
        (o["completed"].clone(), o["failed"].clone()),
        (json!(2), json!(1))
    );
    assert!(close(&o["avg_response_time"], 21.25), "{o}");
    assert!(
        close(&o["p95_response_time"], p95(&[30, 10, 25, 20])),
        "{o}"
    );
    assert_eq!(o["sla_response_seconds"], 30);
    assert_eq!(o["success_rate"], 0.5);
    assert_eq!(o["automation_rate"], 0.5);
    assert_eq!(o["tokens"], 1_350);
    assert_eq!(o["token_efficiency"], 675.0, "tokens per completed task");
    assert_eq!(o["satisfaction"], 4.0);

    // Trends: the last seven days, oldest first.
    let t = &d["trends"];
    assert_eq!(t["days"][0], "2026-03-04T00:00:00Z");
    assert_eq!(t["days"][6], "2026-03-10T00:00:00Z");
    assert_eq!(t["task_volume"], json!([0, 0, 0, 0, 1, 0, 3]));
    let rt = t["response_times"].as_array().expect("array");
    assert_eq!(rt.len(), 7);
    assert!(rt[..4].iter().all(Value::is_null) && rt[5].is_null(), "{t}");
    assert!(close(&rt[4], 30.0) && close(&rt[6], 55.0 / 3.0), "{t}");
    assert_eq!(
        t["satisfaction"],
        json!([null, null, null, null, null, null, 4.0])
    );

    // Alerts: open now, and changed in the last day.
    let ids = |v: &Value| -> Vec<String> {
        v.as_array()
            .expect("alerts")
            .iter()
            .map(|a| {
                format!(
                    "{}:{}",
                    a["rule"].as_str().unwrap_or(""),
                    a["state"].as_str().unwrap_or("")
                )
            })
            .collect()
    };
    assert_eq!(ids(&d["alerts"]["active"]), ["sla_violation:firing"]);
    assert_eq!(
        ids(&d["alerts"]["recent"]),
        ["sla_violation:firing", "error_rate:resolved"]
    );

    // Resource usage: the period's tokens, as /v1/budget has them.
    let (_, b) = get(s, "/v1/budget", &run.acme_viewer).await;
    let line = &b["companies"][0];
    assert_eq!(line["company_id"], "acme");
    let r = &d["resource_usage"];
    assert_eq!(r["period_id"], "2026-03");
    assert_eq!(r["tokens_used"], 1_350);
    assert_eq!(r["allocation"], line["allocation"]);
    assert_eq!(r["tokens_reserved"], line["reserved"]);
    assert!(line["reserved"].as_i64().expect("n") > 0, "A5 holds tokens");
    assert_eq!(r["tokens_remaining"], line["remaining"]);
    assert_eq!(
        r["tokens_remaining"].as_i64(),
        Some(
            line["allocation"].as_i64().expect("n") - line["reserved"].as_i64().expect("n") - 1_350
        )
    );
    assert_eq!(r["projected_monthly"], projected(1_350, at(30)));
    assert_eq!(r["overdraft"], 0);

    // Its queue: A4 queued since t0, A5 running; A3 waits for review.
    let q = &d["queue"];
    assert_eq!(
        (
            q["depth"].clone(),
            q["queued"].clone(),
            q["running"].clone()
        ),
        (json!(2), json!(1), json!(1))
    );
    assert_eq!(q["oldest_runnable_wait_seconds"], 30.0);
    assert_eq!(d["review_backlog"], 1);

    // The admin reads it too; beta's keys get what any other company
    // route gives them: 404, audited as denied under beta and for the admin.
    let (status, _) = get(s, "/v1/companies/acme/dashboard", &s.admin).await;
    assert_eq!(status, StatusCode::OK);
    let (status, v) = get(s, "/v1/companies/acme/dashboard", &run.beta_viewer).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{v}");
    assert!(!v.to_string().contains("acme corp"));
    let denied: Vec<Value> = s
        .audit()
        .await
        .into_iter()
        .filter(|e| e["action"] == "dashboard.company" && e["outcome"] == "denied")
        .collect();
    assert_eq!(denied.len(), 2, "{denied:?}");
    assert_eq!(denied[0]["company_id"], "beta");
    assert_eq!(denied[0]["target"], "another company");
    assert_eq!(denied[1]["company_id"], Value::Null);
    assert_eq!(denied[1]["target"], "company:acme");
    // A malformed id names its field; an unknown company is 404.
    let (status, v) = get(s, "/v1/companies/NOT_AN_ID/dashboard", &s.admin).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["field"], "id");
    let (status, _) = get(s, "/v1/companies/nobody/dashboard", &s.admin).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = s
        .call(Method::GET, "/v1/companies/acme/dashboard", None, None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

/// Beats of two nodes: `serve-1` up from 2 h to 1 h before `t0()`, then
/// from 30 min before it to `t0()` (its last beat, within the grace at
/// the run's "now", `at(30)`); `worker-2` last beat 3 h before.
async fn beats(s: &Server) {
    use kira_core::nodes::NodeRole;
    let grace = TimeDelta::seconds(30);
    let beat = |node: &str, role, at: DateTime<Utc>| kira_store::nodes::NodeBeat {
        node_id: node.into(),
        role,
        version: "0.1.0".into(),
        started_at: t0() - TimeDelta::hours(3),
        at,
    };
    let mut times = Vec::new();
    let mut t = t0() - TimeDelta::hours(2);
    while t <= t0() - TimeDelta::hours(1) {
        times.push(t);
        t += TimeDelta::seconds(15);
    }
    let mut t = t0() - TimeDelta::minutes(30);
    while t <= t0() {
        times.push(t);
        t += TimeDelta::seconds(15);
    }
    for t in times {
        s.store
            .node_beat(&beat("serve-1", NodeRole::Serve, t), grace)
            .await
            .expect("beat");
    }
    s.store
        .node_beat(
            &beat("worker-2", NodeRole::Worker, t0() - TimeDelta::hours(3)),
            grace,
        )
        .await
        .expect("beat");
}

async fn executive_dashboard_story(backend: Backend) {
    let run = scripted_run(backend).await;
    let s = &run.server;
    beats(s).await;
    for key in [&run.acme_viewer, &run.acme_operator] {
        let (status, _) = get(s, "/v1/dashboard", key).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
    }
    let (status, d) = get(s, "/v1/dashboard", &s.admin).await;
    assert_eq!(status, StatusCode::OK, "{d}");

    let h = &d["system_health"];
    assert_eq!(h["queue"]["depth"], 2);
    assert_eq!(h["queue"]["queued"], 1);
    assert_eq!(h["queue"]["running"], 1);
    assert_eq!(h["queue"]["oldest_runnable_wait_seconds"], 30.0);
    assert_eq!(h["reviews_waiting"], 1);
    assert_eq!(
        h["workers"],
        json!([{"worker": "node-1", "running": 1, "last_heartbeat": "2026-03-10T12:00:00Z", "live": true}])
    );
    assert_eq!(h["providers"], json!([]), "this server called no provider");
    // Availability: up 1 h, down 30 min, up 30 min and the 30 s since the
    // last beat, over the 2 h 30 s since the first beat (the window starts
    // there, in both windows).
    let n = &h["nodes"];
    assert_eq!(n["serving"], 1);
    let share = (3_600.0 + 1_800.0 + 30.0) / 7_230.0;
    assert!(close(&n["availability_24h"], share), "{n}");
    assert!(close(&n["availability_30d"], share), "{n}");
    let nodes = n["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 2);
    assert_eq!(nodes[0]["node_id"], "serve-1");
    assert_eq!(nodes[0]["role"], "serve");
    assert_eq!(nodes[0]["live"], true);
    assert_eq!(nodes[0]["last_heartbeat"], "2026-03-10T12:00:00Z");
    assert_eq!(nodes[1]["node_id"], "worker-2");
    assert_eq!(nodes[1]["live"], false);
    // The same in the system metrics and the exposition.
    let (status, m) = get(s, "/v1/metrics/system", &s.admin).await;
    assert_eq!(status, StatusCode::OK, "{m}");
    assert_eq!(&m["health"], n);
    let (status, text) = s.call(Method::GET, "/metrics", Some(&s.admin), None).await;
    assert_eq!(status, StatusCode::OK);
    let text = text.as_str().expect("exposition").to_owned();
    assert!(
        text.contains("kira_nodes_live{role=\"serve\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("kira_nodes_live{role=\"worker\"} 0\n"),
        "{text}"
    );
    let ratio = text
        .lines()
        .find_map(|l| l.strip_prefix("kira_availability_ratio{window=\"24h\"} "))
        .and_then(|v| v.parse::<f64>().ok())
        .expect("availability in the exposition");
    assert!((ratio - share).abs() < 1e-6, "{ratio}");

    let companies = d["companies"].as_array().expect("companies");
    assert_eq!(companies.len(), 2);
    let (acme, beta) = (&companies[0], &companies[1]);
    assert_eq!(acme["company_id"], "acme");
    assert_eq!(acme["tasks"], 4);
    assert!(close(&acme["p95_response_seconds"], p95(&[30, 10, 25, 20])));
    assert_eq!(acme["sla_response_seconds"], 30);
    assert_eq!(acme["within_sla"], true);
    assert_eq!(acme["success_rate"], 0.5);
    assert_eq!(acme["tokens_used"], 1_350);
    assert_eq!(acme["tokens_projected"], projected(1_350, at(30)));
    assert_eq!(acme["satisfaction"], 4.0);
    assert_eq!(acme["open_alerts"], 1);
    assert_eq!(beta["tasks"], 1);
    assert!(close(&beta["p95_response_seconds"], p95(&[5])));
    assert_eq!(beta["success_rate"], 1.0);
    assert_eq!(beta["tokens_used"], 100);
    assert_eq!(beta["satisfaction"], Value::Null);
    assert_eq!(beta["open_alerts"], 1);
    let (_, b) = get(s, "/v1/budget", &s.admin).await;
    for (line, view) in [(acme, &b["companies"][0]), (beta, &b["companies"][1])] {
        assert_eq!(line["tokens_remaining"], view["remaining"], "{view}");
    }

    let r = &d["resource_utilization"];
    assert_eq!(r["period_id"], "2026-03");
    let pools: Vec<&str> = r["pools"]
        .as_array()
        .expect("pools")
        .iter()
        .filter_map(|p| p["pool"].as_str())
        .collect();
    assert_eq!(pools, ["base", "burst", "emergency"]);
    assert_eq!(r["pools"][0]["spent"], 1_450);
    assert_eq!(r["pools"][0]["projected"], projected(1_450, at(30)));
    assert_eq!(r["pools"][0]["reserved"], b["pools"][0]["reserved"]);
    let days = r["days"].as_array().expect("days");
    assert_eq!(days.len(), 10, "March 1 to 10");
    assert_eq!(r["daily_tokens"], json!([0, 0, 0, 0, 0, 0, 0, 600, 0, 850]));

    let a = &d["alert_summary"];
    assert_eq!(a["open"], 3);
    assert_eq!(a["by_state"], json!({"firing": 3}));
    assert_eq!(a["by_severity"], json!({"critical": 1, "warning": 2}));
    assert_eq!(
        a["by_rule"],
        json!({"error_rate": 1, "sla_violation": 1, "stuck_queue": 1})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_company_dashboard() {
    company_dashboard_story(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_company_dashboard() {
    company_dashboard_story(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_executive_dashboard() {
    executive_dashboard_story(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_executive_dashboard() {
    executive_dashboard_story(Backend::Postgres).await;
}

// ---- /ui/ over plain HTTP ----

/// A form body (reqwest here is built without its `form` feature).
trait FormBody {
    fn form_body(self, pairs: &[(&str, &str)]) -> Self;
}

impl FormBody for reqwest::RequestBuilder {
    fn form_body(self, pairs: &[(&str, &str)]) -> Self {
        self.header("content-type", "application/x-www-form-urlencoded")
            .body(serde_urlencoded::to_string(pairs).expect("form"))
    }
}

/// A client that follows no redirect and keeps no cookie: the test reads
/// each answer as it is.
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

fn location(r: &reqwest::Response) -> String {
    r.headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// Signs in with `key`; the session cookie's `name=value`.
pub async fn sign_in(base: &str, key: &str) -> String {
    let r = browser()
        .post(format!("{base}/ui/login"))
        .form_body(&[("key", key)])
        .send()
        .await
        .expect("sign in");
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&r), "/ui/");
    let set = r
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .expect("a cookie")
        .to_owned();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/ui"] {
        assert!(set.contains(attr), "{attr} in {set}");
    }
    assert!(!set.contains(key), "the cookie never holds the key");
    set.split(';').next().expect("pair").to_owned()
}

async fn page(base: &str, path: &str, cookie: Option<&str>) -> reqwest::Response {
    let mut req = browser().get(format!("{base}{path}"));
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    req.send().await.expect("page")
}

fn csrf_of(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").expect("a form token") + 19;
    html[at..].split('"').next().expect("token").to_owned()
}

async fn ui_story(backend: Backend) {
    let run = scripted_run(backend).await;
    let s = &run.server;
    let base = &s.base;

    // Signed out: every page sends to the sign-in page, which carries the
    // policy; the static files are there for it.
    let r = page(base, "/ui/", None).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&r), "/ui/login");
    let r = page(base, "/", None).await;
    assert_eq!(location(&r), "/ui/");
    let r = page(base, "/ui/login", None).await;
    assert_eq!(r.status(), StatusCode::OK);
    let csp = r
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .expect("a CSP")
        .to_owned();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"));
    let html = r.text().await.expect("html");
    assert!(!html.contains("<script>"), "no inline script");
    let r = page(base, "/ui/static/vendor/uplot/uPlot.iife.min.js", None).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .expect("type")
            .starts_with("text/javascript")
    );
    assert!(r.text().await.expect("js").contains("uPlot"));

    // A wrong key: the form again, 401, audited; no cookie.
    let r = browser()
        .post(format!("{base}/ui/login"))
        .form_body(&[(
            "key",
            "kira_aaaaaaaaaaaa_0000000000000000000000000000000000000000",
        )])
        .send()
        .await
        .expect("sign in");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.headers().get("set-cookie").is_none());
    assert!(
        r.text()
            .await
            .expect("html")
            .contains("not a valid API key")
    );

    // acme's viewer: its company's page, with the run's figures and the
    // charts' data points; beta's page refused as not found and audited.
    let viewer = sign_in(base, &run.acme_viewer).await;
    let r = page(base, "/ui/", Some(&viewer)).await;
    assert_eq!(location(&r), "/ui/companies/acme");
    let r = page(base, "/ui/companies/acme", Some(&viewer)).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers().contains_key("content-security-policy"));
    let html = r.text().await.expect("html");
    for part in [
        "id=\"total-tasks\">4<",
        "id=\"avg-response\">21.25 s<",
        "id=\"success-rate\">50.0%<",
        "id=\"token-efficiency\">675.0<",
        "id=\"tokens-used\">1350<",
        "id=\"review-backlog\">1<",
        "data-y=\"[0,0,0,0,1,0,3]\"",
        "data-expected-points=\"7\"",
        "sla_violation",
    ] {
        assert!(html.contains(part), "{part} in the company page");
    }
    assert!(
        !html.contains("review_backlog observed"),
        "an alert older than a day"
    );
    let r = page(base, "/ui/companies/beta", Some(&viewer)).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(!r.text().await.expect("html").contains("beta corp"));
    let r = page(base, "/ui/", Some(&viewer)).await;
    assert_eq!(
        r.status(),
        StatusCode::SEE_OTHER,
        "a viewer has no executive page"
    );
    let denied = s
        .audit()
        .await
        .into_iter()
        .filter(|e| {
            e["action"] == "dashboard.company"
                && e["outcome"] == "denied"
                && e["company_id"] == "acme"
        })
        .count();
    assert_eq!(denied, 1, "the refused page is audited under acme");

    // A viewer sees its alerts without the acknowledge button.
    let html = page(base, "/ui/alerts", Some(&viewer))
        .await
        .text()
        .await
        .expect("html");
    assert!(html.contains("sla_violation") && !html.contains("stuck_queue"));
    assert!(!html.contains("Acknowledge"));

    // acme's operator acknowledges through the page's form: only with the
    // session's form token and from this site.
    let operator = sign_in(base, &run.acme_operator).await;
    let html = page(base, "/ui/alerts", Some(&operator))
        .await
        .text()
        .await
        .expect("html");
    assert!(html.contains("Acknowledge"));
    let csrf = csrf_of(&html);
    let ack = format!("{base}/ui/alerts/{}/ack", run.acme_alert);
    let r = browser()
        .post(&ack)
        .header("cookie", &operator)
        .form_body(&[("csrf", "wrong")])
        .send()
        .await
        .expect("ack");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = browser()
        .post(&ack)
        .header("cookie", &operator)
        .header("sec-fetch-site", "cross-site")
        .form_body(&[("csrf", csrf.as_str())])
        .send()
        .await
        .expect("ack");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let (_, a) = s
        .call(
            Method::GET,
            &format!("/v1/alerts/{}", run.acme_alert),
            Some(&s.admin),
            None,
        )
        .await;
    assert_eq!(a["alert"]["state"], "firing", "nothing changed");
    let r = browser()
        .post(&ack)
        .header("cookie", &operator)
        .header("origin", base.as_str())
        .form_body(&[("csrf", csrf.as_str())])
        .send()
        .await
        .expect("ack");
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&r), "/ui/alerts");
    let (_, a) = s
        .call(
            Method::GET,
            &format!("/v1/alerts/{}", run.acme_alert),
            Some(&s.admin),
            None,
        )
        .await;
    assert_eq!(a["alert"]["state"], "acknowledged");
    assert!(
        a["alert"]["acknowledged_by"]
            .as_str()
            .is_some_and(|b| b.starts_with("key:")),
        "{a}"
    );

    // The admin's executive page.
    let admin = sign_in(base, &s.admin).await;
    let r = page(base, "/ui/", Some(&admin)).await;
    assert_eq!(r.status(), StatusCode::OK);
    let html = r.text().await.expect("html");
    for part in [
        "id=\"queue-depth\">2<",
        "id=\"open-alerts\">3<",
        "data-company=\"acme\"",
        "data-company=\"beta\"",
        "node-1",
        "data-expected-points=\"10\"",
    ] {
        assert!(html.contains(part), "{part} in the executive page");
    }

    // Sign-out ends the session: the cookie is cleared and the old one
    // no longer opens a page (the refusal audited).
    let html = page(base, "/ui/companies/acme", Some(&viewer))
        .await
        .text()
        .await
        .expect("html");
    let csrf = csrf_of(&html);
    let r = browser()
        .post(format!("{base}/ui/logout"))
        .header("cookie", &viewer)
        .form_body(&[("csrf", csrf.as_str())])
        .send()
        .await
        .expect("logout");
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(
        r.headers()["set-cookie"]
            .to_str()
            .expect("cookie")
            .contains("Max-Age=0")
    );
    let r = page(base, "/ui/companies/acme", Some(&viewer)).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&r), "/ui/login");
    // A revoked key's session ends with it.
    let (key_id, token) = s.key("viewer", Some("beta")).await;
    let cookie = sign_in(base, &token).await;
    assert_eq!(
        page(base, "/ui/companies/beta", Some(&cookie))
            .await
            .status(),
        StatusCode::OK
    );
    s.admin_ok(Method::POST, &format!("/v1/keys/{key_id}/revoke"), None)
        .await;
    assert_eq!(
        page(base, "/ui/companies/beta", Some(&cookie))
            .await
            .status(),
        StatusCode::SEE_OTHER
    );
    // And one past its 12 hours.
    run.clock.set(at(30) + TimeDelta::hours(12));
    assert_eq!(
        page(base, "/ui/companies/acme", Some(&operator))
            .await
            .status(),
        StatusCode::SEE_OTHER
    );
    let audit = s.audit().await;
    assert!(
        audit
            .iter()
            .any(|e| e["action"] == "ui.sign_in" && e["company_id"] == "acme")
    );
    assert!(audit.iter().any(|e| e["action"] == "ui.sign_out"));
    assert!(audit.iter().any(|e| {
        e["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("dashboard session:"))
    }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_ui_pages() {
    ui_story(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_ui_pages() {
    ui_story(Backend::Postgres).await;
}

fn cache_control(r: &reqwest::Response) -> String {
    r.headers()
        .get("cache-control")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// The static files a page names: cached for good under their content's
/// hash (another hash is not found), briefly under a plain name; every
/// page, signed in or not, `no-store`.
async fn static_files_are_cached_and_pages_not(backend: Backend) {
    let s = Server::start(backend).await;
    let base = &s.base;
    let r = page(base, "/ui/login", None).await;
    assert_eq!(cache_control(&r), "no-store");
    let html = r.text().await.expect("html");
    let urls: Vec<String> = html
        .split('"')
        .filter(|p| p.starts_with("/ui/static/"))
        .map(str::to_owned)
        .collect();
    assert_eq!(urls.len(), 5, "{urls:?}");
    for url in &urls {
        let hash = url
            .trim_start_matches("/ui/static/")
            .split('/')
            .next()
            .unwrap_or_default();
        assert!(
            hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
            "{url}"
        );
        let r = page(base, url, None).await;
        assert_eq!(r.status(), StatusCode::OK, "{url}");
        assert_eq!(
            cache_control(&r),
            "public, max-age=31536000, immutable",
            "{url}"
        );
    }
    let js = urls
        .iter()
        .find(|u| u.ends_with("/dashboard.js"))
        .expect("dashboard.js");
    let body = page(base, js, None).await.text().await.expect("js");
    // The same file by its plain name: cached five minutes.
    let r = page(base, "/ui/static/dashboard.js", None).await;
    assert_eq!(cache_control(&r), "public, max-age=300");
    assert_eq!(r.text().await.expect("js"), body);
    // A hash that is not this build's: not found, and not cached.
    let r = page(base, "/ui/static/0123456789abcdef/dashboard.js", None).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(cache_control(&r), "no-store");
    // Pages behind the sign-in too.
    let cookie = sign_in(base, &s.admin).await;
    for path in ["/ui/", "/ui/alerts"] {
        let r = page(base, path, Some(&cookie)).await;
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        assert_eq!(cache_control(&r), "no-store", "{path}");
    }
}

/// Signs in with `key` sending `headers`; the Set-Cookie header.
async fn set_cookie(base: &str, key: &str, headers: &[(&str, &str)]) -> String {
    let mut req = browser().post(format!("{base}/ui/login"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req
        .form_body(&[("key", key)])
        .send()
        .await
        .expect("sign in");
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    r.headers()["set-cookie"]
        .to_str()
        .expect("cookie")
        .to_owned()
}

/// The session cookie is `Secure` when kira is reached over https (a
/// proxy's `X-Forwarded-Proto` or `Forwarded`) or `[ui] secure_cookies`
/// says so; over plain HTTP by default it is not (a browser would drop a
/// Secure cookie there and sign-in would fail). Sign-out's clearing
/// cookie matches.
async fn the_session_cookie_is_secure_over_https(backend: Backend) {
    let s = Server::start(backend).await;
    let plain = set_cookie(&s.base, &s.admin, &[]).await;
    assert!(!plain.contains("Secure"), "{plain}");
    for proxy in [
        ("x-forwarded-proto", "https"),
        ("forwarded", "for=192.0.2.60;proto=https;by=203.0.113.43"),
    ] {
        let c = set_cookie(&s.base, &s.admin, &[proxy]).await;
        assert!(c.ends_with("; Secure"), "{proxy:?}: {c}");
        assert!(
            c.contains("HttpOnly") && c.contains("SameSite=Strict"),
            "{c}"
        );
    }
    let c = set_cookie(&s.base, &s.admin, &[("x-forwarded-proto", "http")]).await;
    assert!(!c.contains("Secure"), "{c}");

    let s = Server::start_with(
        backend,
        ServerConfig {
            secure_cookies: true,
            ..Default::default()
        },
    )
    .await;
    let c = set_cookie(&s.base, &s.admin, &[]).await;
    assert!(c.ends_with("; Secure"), "{c}");
    let cookie = c.split(';').next().expect("pair").to_owned();
    let html = page(&s.base, "/ui/alerts", Some(&cookie))
        .await
        .text()
        .await
        .expect("html");
    let r = browser()
        .post(format!("{}/ui/logout", s.base))
        .header("cookie", &cookie)
        .form_body(&[("csrf", csrf_of(&html).as_str())])
        .send()
        .await
        .expect("logout");
    let cleared = r.headers()["set-cookie"].to_str().expect("cookie");
    assert!(
        cleared.contains("Max-Age=0") && cleared.ends_with("; Secure"),
        "{cleared}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_static_files_are_cached_and_pages_not() {
    static_files_are_cached_and_pages_not(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_static_files_are_cached_and_pages_not() {
    static_files_are_cached_and_pages_not(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_the_session_cookie_is_secure_over_https() {
    the_session_cookie_is_secure_over_https(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_the_session_cookie_is_secure_over_https() {
    the_session_cookie_is_secure_over_https(Backend::Postgres).await;
}
