//! Metrics through the API, on both backends: runs that ended, reviews
//! and ratings counted exactly in a company's series, the system's and an
//! agent's, and in the Prometheus exposition; each key sees what its role
//! allows; bad windows are refused naming the field.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{Backend, Server};

async fn get(s: &Server, path: &str, token: &str) -> (StatusCode, Value) {
    s.call(Method::GET, path, Some(token), None).await
}

async fn metrics_story(backend: Backend) {
    let s = Server::start(backend).await;
    s.company("acme").await;
    s.company("beta").await;
    let (_, viewer) = s.key("viewer", Some("acme")).await;
    let (_, operator) = s.key("operator", Some("acme")).await;
    // acme: two results for review (one approved and rated), one cancel;
    // beta: one result for review.
    let first = s.needs_review("acme").await;
    s.needs_review("acme").await;
    let queued = s.task("acme").await;
    s.needs_review("beta").await;
    let (status, v) = s
        .call(
            Method::POST,
            &format!("/v1/companies/acme/tasks/{first}/review"),
            Some(&operator),
            Some(json!({"decision": "approve", "rating": 5})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let (status, v) = s
        .call(
            Method::POST,
            &format!("/v1/companies/acme/tasks/{queued}/cancel"),
            Some(&operator),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");

    // The company's series, as its viewer reads it.
    let (status, m) = get(&s, "/v1/companies/acme/metrics?step=60", &viewer).await;
    assert_eq!(status, StatusCode::OK, "{m}");
    let t = &m["totals"];
    assert_eq!(t["tasks_ended"], 3, "{m}");
    assert_eq!(t["needs_review"], 2);
    assert_eq!(t["cancelled"], 1);
    assert_eq!(t["completed"], 0);
    assert_eq!(t["reviews_approved"], 1);
    assert_eq!(t["ratings"], 1);
    assert_eq!(t["satisfaction"], 5.0);
    assert_eq!(t["automation_rate"], 0.0, "both results needed a human");
    assert_eq!(m["company_id"], "acme");
    assert_eq!(m["sla_response_seconds"], 30);
    assert_eq!(m["within_sla"], true);
    assert_eq!(m["resolution"], "minute");
    let points = m["points"].as_array().expect("points");
    // A day of minutes, and the one now unless now is on a minute.
    assert!(
        (24 * 60..=24 * 60 + 1).contains(&points.len()),
        "{}",
        points.len()
    );
    let ended: i64 = points
        .iter()
        .map(|p| p["tasks_ended"].as_i64().expect("n"))
        .sum();
    assert_eq!(ended, 3, "the points add up to the totals");

    // Another company's series is not there for acme's keys (and the try
    // is audited); the system's is the admin's.
    let (status, _) = get(&s, "/v1/companies/beta/metrics", &viewer).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = get(&s, "/v1/metrics/system", &operator).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, sys) = get(&s, "/v1/metrics/system", &s.admin).await;
    assert_eq!(status, StatusCode::OK, "{sys}");
    assert_eq!(sys["totals"]["tasks_ended"], 4);
    assert_eq!(sys["companies"]["acme"]["tasks_ended"], 3);
    assert_eq!(sys["companies"]["beta"]["needs_review"], 1);

    // An agent's series: a company key sees its own company's runs.
    let agent = sys["agents"]
        .as_object()
        .and_then(|a| a.keys().next().cloned())
        .expect("an agent ran");
    let (status, a) = get(&s, &format!("/v1/agents/{agent}/metrics"), &viewer).await;
    assert_eq!(status, StatusCode::OK, "{a}");
    assert_eq!(a["totals"]["tasks_ended"], 3);
    assert_eq!(a["companies"], json!({}));
    let (_, a) = get(&s, &format!("/v1/agents/{agent}/metrics"), &s.admin).await;
    assert_eq!(a["totals"]["tasks_ended"], 4);
    assert_eq!(a["companies"]["beta"]["tasks_ended"], 1);
    let (status, _) = get(&s, "/v1/agents/nobody/metrics", &s.admin).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Bad windows: 400 naming the field, nothing else.
    for (query, field) in [
        ("step=90", "step"),
        ("step=60&from=2020-01-01T00:00:00Z", "step"),
        ("from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z", "from"),
        ("from=yesterday", "from"),
        ("colour=red", "colour"),
    ] {
        let (status, v) = get(&s, &format!("/v1/companies/acme/metrics?{query}"), &viewer).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {v}");
        assert_eq!(v["error"]["field"], field, "{query}: {v}");
    }

    // Prometheus: the admin's; the same counts.
    let (status, _) = get(&s, "/metrics", &viewer).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = s.call(Method::GET, "/metrics", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, text) = get(&s, "/metrics", &s.admin).await;
    assert_eq!(status, StatusCode::OK);
    let text = text.as_str().expect("text").to_owned();
    for line in [
        "kira_tasks_ended_total{company=\"acme\",outcome=\"needs_review\"} 2".to_owned(),
        "kira_tasks_ended_total{company=\"acme\",outcome=\"cancelled\"} 1".to_owned(),
        "kira_tasks_ended_total{company=\"beta\",outcome=\"needs_review\"} 1".to_owned(),
        format!("kira_agent_tasks_ended_total{{agent=\"{agent}\",outcome=\"needs_review\"}} 3"),
        format!("kira_agent_tasks_ended_total{{agent=\"{agent}\",outcome=\"cancelled\"}} 1"),
        "kira_reviews_total{company=\"acme\",decision=\"approved\"} 1".to_owned(),
        "kira_task_response_seconds_count{company=\"acme\"} 3".to_owned(),
        "kira_ratings{company=\"acme\"} 1".to_owned(),
        "kira_rating_sum{company=\"acme\"} 5".to_owned(),
        "kira_reviews_waiting{company=\"acme\"} 1".to_owned(),
        "kira_company_sla_response_seconds{company=\"acme\"} 30".to_owned(),
        "kira_auth_failures_total 1".to_owned(),
        "kira_budget_pool_tokens{pool=\"base\",state=\"capacity\"}".to_owned(),
        "kira_http_requests_total{route=\"/v1/companies/{id}/metrics\",method=\"GET\",status=\"4xx\"}".to_owned(),
    ] {
        assert!(text.contains(&line), "{line} missing from\n{text}");
    }
    assert!(text.ends_with("# EOF\n"));
}

/// A child process killed and waited for when dropped, so it ends with
/// the test that started it, passing or failing: killed without the wait
/// (`kill_on_drop`), Prometheus took longer to exit than the test, and
/// nextest reported it as a leak.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A real Prometheus (Debian's `prometheus`, installed by `scripts/test`)
/// scrapes `/metrics` with a `metrics` key every second; its query API
/// answers with kira's series for the runs made here.
async fn prometheus_scrapes_kira(backend: Backend) {
    let s = Server::start(backend).await;
    s.company("acme").await;
    s.needs_review("acme").await;
    s.needs_review("acme").await;
    let (_, scraper) = s.key("metrics", None).await;

    let dir = tempfile::tempdir().expect("dir");
    let target = s.base.trim_start_matches("http://");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: kira\n    \
             authorization:\n      type: Bearer\n      credentials: {}\n    \
             static_configs:\n      - targets: ['{target}']\n",
            scraper
        ),
    )
    .expect("config");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let bin = std::env::var("KIRA_TEST_PROMETHEUS").unwrap_or("prometheus".into());
    let mut prometheus = Reaped(
        std::process::Command::new(&bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .spawn()
            .unwrap_or_else(|e| panic!("{bin} (scripts/test installs it): {e}")),
    );
    let query = |q: &str| {
        format!(
            "http://127.0.0.1:{port}/api/v1/query?query={}",
            q.replace('{', "%7B")
                .replace('}', "%7D")
                .replace('"', "%22")
                .replace('=', "%3D")
        )
    };
    let asked = query("kira_tasks_ended_total{company=\"acme\",outcome=\"needs_review\"}");
    let mut answer = Value::Null;
    // Prometheus starts, scrapes within a second, and answers.
    for _ in 0..300 {
        if let Ok(Some(status)) = prometheus.0.try_wait() {
            panic!("prometheus exited: {status}");
        }
        if let Ok(r) = reqwest::get(&asked).await
            && let Ok(v) = r.json::<Value>().await
            && v["data"]["result"]
                .as_array()
                .is_some_and(|r| !r.is_empty())
        {
            answer = v;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let result = &answer["data"]["result"];
    assert_eq!(result.as_array().map(Vec::len), Some(1), "{answer}");
    assert_eq!(result[0]["metric"]["job"], "kira");
    assert_eq!(result[0]["value"][1], "2", "{answer}");
    let up: Value = reqwest::get(query("up{job=\"kira\"}"))
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(up["data"]["result"][0]["value"][1], "1", "{up}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_prometheus_scrapes_kira() {
    prometheus_scrapes_kira(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_prometheus_scrapes_kira() {
    prometheus_scrapes_kira(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_metrics_story() {
    metrics_story(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_metrics_story() {
    metrics_story(Backend::Postgres).await;
}

/// Context retention through the API: old routine reviews compacted into
/// one summary; the company's metrics, its dashboard and `/metrics` show
/// the compaction's own check of what the summary kept, a viewer of
/// another company sees none of it.
async fn context_retention_story(backend: Backend) {
    let s = Server::start(backend).await;
    s.company("acme").await;
    s.company("beta").await;
    let texts = [
        "Reviewed the NDA with Initech. Renewal fee $4,000 due 30 April 2026.",
        "Second review of the Initech NDA; no changes needed.",
        "Third review: Globex asked for a liability cap of $250,000.",
    ];
    for (i, text) in texts.iter().enumerate() {
        s.admin_ok(
            Method::POST,
            "/v1/companies/acme/memory",
            Some(json!({
                "occurred_at": format!("2026-01-0{}T10:00:00Z", i + 5),
                "event_type": "note",
                "workstream": "legal",
                "category": "routine_reviews",
                "content": {"text": text},
                "importance": 5
            })),
        )
        .await;
    }
    let report = s
        .admin_ok(Method::POST, "/v1/companies/acme/memory/compact", None)
        .await;
    let groups = report["groups"].as_array().expect("groups");
    assert_eq!(groups.len(), 1, "{report}");
    let summary_id = groups[0]["summary_id"].as_str().expect("written");
    let (_, summary) = get(
        &s,
        &format!("/v1/companies/acme/memory/{summary_id}"),
        &s.admin,
    )
    .await;
    let text = summary["content"]["text"].as_str().expect("summary text");
    let expected = kira_core::memory::retention::check(texts, text);
    assert!(expected.facts > 0, "{expected:?}");
    assert_eq!(report["facts"]["facts"], expected.facts, "{report}");
    assert_eq!(report["facts"]["kept"], expected.kept, "{report}");

    let (_, viewer) = s.key("viewer", Some("acme")).await;
    let (_, m) = get(&s, "/v1/companies/acme/metrics", &viewer).await;
    let r = &m["context_retention"];
    assert_eq!(r["facts"], expected.facts, "{m}");
    assert_eq!(r["kept"], expected.kept, "{m}");
    let share = expected.share().expect("a share");
    assert!((r["share"].as_f64().expect("share") - share).abs() < 1e-9);
    let (_, d) = get(&s, "/v1/companies/acme/dashboard", &viewer).await;
    assert!(
        (d["overview"]["context_retention"].as_f64().expect("kpi") - share).abs() < 1e-9,
        "{d}"
    );
    // Another company's viewer: its own (nothing), never acme's.
    let (_, beta) = s.key("viewer", Some("beta")).await;
    let (_, m) = get(&s, "/v1/companies/beta/metrics", &beta).await;
    assert_eq!(
        m["context_retention"],
        json!({"facts": 0, "kept": 0, "share": null})
    );
    let (status, _) = get(&s, "/v1/companies/acme/metrics", &beta).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (_, text) = get(&s, "/metrics", &s.admin).await;
    let text = text.as_str().expect("exposition");
    for line in [
        format!(
            "kira_context_facts_total{{company=\"acme\",state=\"checked\"}} {}",
            expected.facts
        ),
        format!(
            "kira_context_facts_total{{company=\"acme\",state=\"kept\"}} {}",
            expected.kept
        ),
    ] {
        assert!(text.contains(&line), "{line} missing from\n{text}");
    }
    assert!(!text.contains("kira_context_facts_total{company=\"beta\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_context_retention() {
    context_retention_story(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_context_retention() {
    context_retention_story(Backend::Postgres).await;
}

/// A `metrics` key (issue 22: "scraping needs a key with a metrics
/// permission"): made by the admin with no company; it reads `/metrics`,
/// every company's series included, and nothing else: no API route (the
/// matrix in `auth_matrix.rs` tries every one), no dashboard sign-in. A
/// company's own keys never read the system-wide exposition.
async fn metrics_key_story(backend: Backend) {
    let s = Server::start(backend).await;
    s.company("acme").await;
    s.company("beta").await;
    s.needs_review("acme").await;
    s.needs_review("beta").await;

    // Refused requests change nothing and name the field.
    let (status, v) = s
        .call(
            Method::POST,
            "/v1/keys",
            Some(&s.admin),
            Some(json!({"name": "scraper", "role": "metrics", "company_id": "acme"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["error"]["field"], "company_id");
    let (status, v) = s
        .call(
            Method::POST,
            "/v1/keys",
            Some(&s.admin),
            Some(json!({"name": "scraper", "role": "scraper"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["field"], "role");
    let (_, keys) = get(&s, "/v1/keys", &s.admin).await;
    assert_eq!(keys["keys"].as_array().map(Vec::len), Some(1), "{keys}");
    // Only the admin makes one.
    let (_, operator) = s.key("operator", Some("acme")).await;
    let (status, _) = s
        .call(
            Method::POST,
            "/v1/keys",
            Some(&operator),
            Some(json!({"name": "scraper", "role": "metrics"})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let (id, scraper) = s.key("metrics", None).await;
    let (_, keys) = get(&s, "/v1/keys", &s.admin).await;
    let listed = keys["keys"]
        .as_array()
        .and_then(|k| k.iter().find(|k| k["id"] == id.as_str()))
        .expect("listed")
        .clone();
    assert_eq!(listed["role"], "metrics");
    assert_eq!(listed["company_id"], Value::Null);

    // It scrapes: every company's series.
    let (status, text) = get(&s, "/metrics", &scraper).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let text = text.as_str().expect("text");
    for line in [
        "kira_tasks_ended_total{company=\"acme\",outcome=\"needs_review\"} 1",
        "kira_tasks_ended_total{company=\"beta\",outcome=\"needs_review\"} 1",
    ] {
        assert!(text.contains(line), "{line} missing from\n{text}");
    }
    // And nothing else, not even who it is.
    for path in [
        "/v1/whoami",
        "/v1/companies",
        "/v1/companies/acme",
        "/v1/companies/acme/metrics",
        "/v1/metrics/system",
        "/v1/dashboard",
        "/v1/alerts",
        "/v1/audit",
    ] {
        let (status, v) = get(&s, path, &scraper).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {v}");
        assert_eq!(v["error"]["code"], "forbidden", "{path}: {v}");
        assert!(!v.to_string().contains("beta"), "{path}: {v}");
    }
    let audit = s.audit().await;
    let refused = audit
        .iter()
        .filter(|e| e["actor"] == format!("key:{id}").as_str() && e["outcome"] == "denied")
        .count();
    assert_eq!(refused, 8, "each refusal audited");

    // No dashboard session for it.
    let r = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
        .post(format!("{}/ui/login", s.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(serde_urlencoded::to_string([("key", scraper.as_str())]).expect("form"))
        .send()
        .await
        .expect("sign in");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(r.headers().get("set-cookie").is_none(), "no session");

    // A company's own keys never read every company's series.
    let (_, viewer) = s.key("viewer", Some("acme")).await;
    for token in [&viewer, &operator] {
        let (status, v) = get(&s, "/metrics", token).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{v}");
        assert!(!v.to_string().contains("beta"), "{v}");
    }

    // Revoked, it stops at once.
    s.admin_ok(Method::POST, &format!("/v1/keys/{id}/revoke"), None)
        .await;
    let (status, _) = get(&s, "/metrics", &scraper).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_metrics_key_scrapes_and_nothing_else() {
    metrics_key_story(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_metrics_key_scrapes_and_nothing_else() {
    metrics_key_story(Backend::Postgres).await;
}
