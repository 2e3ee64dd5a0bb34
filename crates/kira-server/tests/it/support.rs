//! A running server on a free loopback port, with an admin key, and the
//! companies and keys most tests want.

use std::sync::Arc;

use chrono::TimeDelta;
use kira_core::CompanyId;
use kira_core::auth::{Access, Principal};
use kira_core::clock::SystemClock;
use kira_core::task::TaskStatus;
use kira_server::{ServerConfig, router};
use kira_store::postgres::PgStore;
use kira_store::sqlite::SqliteStore;
use kira_store::{Store, testdb};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub struct Server {
    pub base: String,
    pub admin: String,
    /// The server's store, for what no route does (a worker's run ends).
    pub store: Arc<dyn Store>,

    pub db_url: String,
    /// The server's engine, for what runs beside the API (the alerts
    /// evaluator).
    pub engine: kira_engine::Engine,
    http: reqwest::Client,
    task: tokio::task::JoinHandle<()>,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn open_store(backend: Backend) -> (Arc<dyn Store>, String, Option<tempfile::TempDir>) {
    match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().expect("temp dir");
            let url = testdb::fresh_sqlite(dir.path()).await;
            (
                Arc::new(SqliteStore::open(&url).await.expect("sqlite")),
                url,
                Some(dir),
            )
        }
        Backend::Postgres => {
            let url = testdb::fresh_postgres().await;
            (
                Arc::new(PgStore::open(&url, None).await.expect("postgres")),
                url,
                None,
            )
        }
    }
}

/// Serves `store` on a free port; returns the base URL and the task.
pub async fn serve(
    store: Arc<dyn Store>,
    cfg: ServerConfig,
) -> (String, tokio::task::JoinHandle<()>) {
    serve_at(store, cfg, Arc::new(SystemClock)).await
}

/// [`serve`] with the server's clock given.
pub async fn serve_at(
    store: Arc<dyn Store>,
    cfg: ServerConfig,
    clock: Arc<dyn kira_core::clock::Clock>,
) -> (String, tokio::task::JoinHandle<()>) {
    serve_engine(store, cfg, clock, kira_engine::EngineConfig::default()).await
}

/// [`serve_at`] with the engine's configuration given.
pub async fn serve_engine(
    store: Arc<dyn Store>,
    cfg: ServerConfig,
    clock: Arc<dyn kira_core::clock::Clock>,
    engine_cfg: kira_engine::EngineConfig,
) -> (String, tokio::task::JoinHandle<()>) {
    let (base, task, _) = serve_engine_with(store, cfg, clock, engine_cfg).await;
    (base, task)
}

/// [`serve_engine`], and the engine it serves.
pub async fn serve_engine_with(
    store: Arc<dyn Store>,
    cfg: ServerConfig,
    clock: Arc<dyn kira_core::clock::Clock>,
    engine_cfg: kira_engine::EngineConfig,
) -> (String, tokio::task::JoinHandle<()>, kira_engine::Engine) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let engine = kira_engine::Engine::new(store, clock, engine_cfg);
    let app = router(engine.clone(), cfg);
    let task = tokio::spawn(async move {
        let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
        axum::serve(listener, app).await.expect("serve");
    });
    (format!("http://{addr}"), task, engine)
}

impl Server {
    pub async fn start(backend: Backend) -> Server {
        Self::start_with(backend, ServerConfig::default()).await
    }

    pub async fn start_with(backend: Backend, cfg: ServerConfig) -> Server {
        Self::start_at(backend, cfg, Arc::new(SystemClock)).await
    }

    /// A server whose clock is `clock` (a `ManualClock` in tests of time).
    pub async fn start_at(
        backend: Backend,
        cfg: ServerConfig,
        clock: Arc<dyn kira_core::clock::Clock>,
    ) -> Server {
        Self::start_engine(backend, cfg, clock, kira_engine::EngineConfig::default()).await
    }

    /// A server whose engine has `engine_cfg`.
    pub async fn start_engine(
        backend: Backend,
        cfg: ServerConfig,
        clock: Arc<dyn kira_core::clock::Clock>,
        engine_cfg: kira_engine::EngineConfig,
    ) -> Server {
        let (store, db_url, dir) = open_store(backend).await;
        let issued = kira_engine::keys::bootstrap_admin_key(store.as_ref(), &SystemClock)
            .await
            .expect("bootstrap")
            .expect("a fresh database gets an admin key");
        let (base, task, engine) = serve_engine_with(store.clone(), cfg, clock, engine_cfg).await;
        Server {
            base,
            admin: issued.token,
            store,
            db_url,
            engine,
            http: reqwest::Client::new(),
            task,
            _dir: dir,
        }
    }

    /// Sends a request; `token` None sends no Authorization header.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.expect("request");
        let status = res.status();
        let text = res.text().await.expect("body");
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, value)
    }

    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Vec<u8>,
    ) -> (StatusCode, Value) {
        let res = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request");
        let status = res.status();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    pub async fn admin_ok(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let (s, v) = self
            .call(method.clone(), path, Some(&self.admin), body)
            .await;
        assert!(s.is_success(), "{method} {path}: {s} {v}");
        v
    }

    pub async fn company(&self, id: &str) -> Value {
        self.admin_ok(Method::POST, "/v1/companies", Some(company_body(id)))
            .await
    }

    /// A key for `company` with `role`; returns (key id, token).
    pub async fn key(&self, role: &str, company: Option<&str>) -> (String, String) {
        let mut body = json!({"name": format!("{role} test key"), "role": role});
        if let Some(c) = company {
            body["company_id"] = json!(c);
        }
        let v = self.admin_ok(Method::POST, "/v1/keys", Some(body)).await;
        (
            v["key"]["id"].as_str().expect("id").to_owned(),
            v["token"].as_str().expect("token").to_owned(),
        )
    }

    /// A queued task of `company`; returns its id.
    pub async fn task(&self, company: &str) -> String {
        let v = self
            .admin_ok(
                Method::POST,
                &format!("/v1/companies/{company}/tasks"),
                Some(json!({"task": "Prepare the board pack", "type": "routine_status_update", "priority": "low"})),
            )
            .await;
        v["task_id"].as_str().expect("task id").to_owned()
    }

    /// A task of `company` waiting for review: submitted through the API,
    /// then claimed and finished with a low-confidence result through the
    /// store, as a worker whose executor asked for a human would (the test
    /// server runs no executor). Returns its id.
    pub async fn needs_review(&self, company: &str) -> String {
        use kira_core::clock::Clock;
        use kira_store::work::{ClaimOutcome, Finish};
        let id = self.task(company).await;
        let tid = kira_core::task::TaskId::parse(&id).expect("task id");
        let scope = Principal::system()
            .scope(&CompanyId::parse(company).expect("company"), Access::Write)
            .expect("scope");
        let now = SystemClock.now();
        let budget = kira_engine::EngineConfig::default().budget;
        let claimed = self
            .store
            .claim(
                &scope,
                &tid,
                "test-worker",
                now + TimeDelta::minutes(5),
                &budget,
                now,
            )
            .await
            .expect("claim");
        assert!(
            matches!(claimed, ClaimOutcome::Claimed { .. }),
            "{claimed:?}"
        );
        let finish = Finish {
            status: TaskStatus::NeedsReview,
            reason: "confidence below the threshold".into(),
            result: Some(
                json!({"summary": "Board pack drafted", "answer": "Ready for the meeting."}),
            ),
            confidence: Some(0.42),
            requires_human_review: true,
            error: None,
            retry_at: None,
        };
        self.store
            .finish(&scope, &tid, "test-worker", finish, now)
            .await
            .expect("finish");
        id
    }

    /// A memory of `company` recorded by the admin (archived if asked);
    /// returns its id.
    pub async fn memory(&self, company: &str, archived: bool) -> String {
        let v = self
            .admin_ok(
                Method::POST,
                &format!("/v1/companies/{company}/memory"),
                Some(json!({
                    "occurred_at": "2026-01-05T10:00:00Z",
                    "event_type": "decision",
                    "workstream": "legal",
                    "content": {"text": "Chose Delaware for the holding company."}
                })),
            )
            .await;
        let id = v["id"].as_str().expect("memory id").to_owned();
        if archived {
            self.admin_ok(
                Method::POST,
                &format!("/v1/companies/{company}/memory/{id}/archive"),
                None,
            )
            .await;
        }
        id
    }

    /// A knowledge entry made by the admin; returns its id.
    pub async fn knowledge(&self, domain: &str, key: &str) -> String {
        let v = self
            .admin_ok(
                Method::POST,
                "/v1/knowledge",
                Some(crate::knowledge::entry(domain, key)),
            )
            .await;
        v["entries"][0]["id"].as_str().expect("entry id").to_owned()
    }

    /// Every audit entry, as the admin sees them.
    pub async fn audit(&self) -> Vec<Value> {
        let mut out = Vec::new();
        let mut after = 0;
        loop {
            let v = self
                .admin_ok(
                    Method::GET,
                    &format!("/v1/audit?after={after}&limit=1000"),
                    None,
                )
                .await;
            let entries = v["entries"].as_array().expect("entries").clone();
            out.extend(entries);
            match v["next_after"].as_i64() {
                Some(n) => after = n,
                None => break,
            }
        }
        out
    }
}

pub fn company_body(id: &str) -> Value {
    json!({
        "id": id,
        "name": format!("{id} corp"),
        "industry": "fintech",
        "jurisdiction": "US-DE",
        "revenue_usd": 2_000_000,
        "contacts": [{"name": "Ada Lovelace", "email": "ada@example.com"}]
    })
}
