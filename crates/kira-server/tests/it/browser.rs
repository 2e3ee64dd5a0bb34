//! The `/ui/` pages in a real headless Chromium, driven over WebDriver
//! (chromedriver, installed by `scripts/test`; the test fails without it):
//! sign-in, each page loading with no console error (the browser's log,
//! which also reports what the Content-Security-Policy blocks), the
//! charts drawn by uPlot with the scripted run's data points, a viewer of
//! acme refused beta's page, an alert acknowledged from the page, and
//! sign-out. Screenshots go to `$CARGO_TARGET_TMPDIR/ui-screenshots/`.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use crate::dashboard::scripted_run;
use crate::support::Backend;

/// chromedriver on a free loopback port, ended with the test.
struct Driver {
    url: String,
    _child: tokio::process::Child,
}

async fn chromedriver() -> Driver {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("a free port")
        .local_addr()
        .expect("addr")
        .port();
    let child = tokio::process::Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("chromedriver (scripts/test installs chromium-driver)");
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    // The driver takes a moment to listen; waiting on a process's start
    // is the one wait here.
    for _ in 0..200 {
        if http
            .get(format!("{url}/status"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Driver { url, _child: child };
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("chromedriver did not start on {url}");
}

async fn browser(driver: &Driver) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,1600"]
        }),
    );
    caps.insert("goog:loggingPrefs".into(), json!({"browser": "ALL"}));
    ClientBuilder::rustls()
        .expect("tls")
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a Chromium session")
}

/// chromedriver's browser log since the last read (console messages,
/// uncaught errors, CSP violations, failed loads).
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/se/log",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _request_url: &url::Url) -> (http::Method, Option<String>) {
        (
            http::Method::POST,
            Some(json!({"type": "browser"}).to_string()),
        )
    }
}

/// Fails on any warning or error the browser logged while on `page`.
async fn no_console_errors(c: &Client, page: &str) {
    let log = c.issue_cmd(BrowserLog).await.expect("browser log");
    let bad: Vec<&Value> = log
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| matches!(e["level"].as_str(), Some("SEVERE" | "WARNING")))
        .collect();
    assert!(bad.is_empty(), "{page}: console errors {bad:#?}");
}

fn shots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot folder");
    dir
}

async fn screenshot(c: &Client, backend: Backend, name: &str) {
    let png = c.screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    std::fs::write(
        shots().join(format!("{backend:?}-{name}.png").to_lowercase()),
        png,
    )
    .expect("write screenshot");
}

async fn js(c: &Client, script: &str) -> Value {
    c.execute(script, vec![]).await.expect("script")
}

/// Every chart on the page: its id, whether uPlot drew it (a canvas), the
/// points it drew, and the points its data promised.
async fn charts(c: &Client) -> Vec<(String, bool, String, String)> {
    let v = js(
        c,
        "return Array.from(document.querySelectorAll('.chart')).map(function (e) {
           return [e.id, e.querySelector('canvas') !== null,
                   e.dataset.points || '', e.dataset.expectedPoints || ''];
         });",
    )
    .await;
    v.as_array()
        .expect("charts")
        .iter()
        .map(|c| {
            (
                c[0].as_str().unwrap_or_default().to_owned(),
                c[1].as_bool().unwrap_or(false),
                c[2].as_str().unwrap_or_default().to_owned(),
                c[3].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

async fn text(c: &Client, css: &str) -> String {
    c.find(Locator::Css(css))
        .await
        .expect(css)
        .text()
        .await
        .expect("text")
}

async fn sign_in(c: &Client, base: &str, key: &str) {
    c.goto(&format!("{base}/ui/login"))
        .await
        .expect("login page");
    c.find(Locator::Css("#key"))
        .await
        .expect("key field")
        .send_keys(key)
        .await
        .expect("type the key");
    c.find(Locator::Css("#sign-in"))
        .await
        .expect("button")
        .click()
        .await
        .expect("sign in");
}

async fn path(c: &Client) -> String {
    c.current_url().await.expect("url").path().to_owned()
}

/// Marks the page shown, so that [`lands_on`] waits for the next one even
/// when it has the same path (a form that posts back to its own page).
async fn mark_page(c: &Client) {
    js(c, "window.kiraLeftPage = true; return null;").await;
}

/// Waits for the navigation a click started to land on `expected` (the
/// browser loads the next page after the click returns), and, if the page
/// was marked with [`mark_page`], for a page that is not the marked one.
async fn lands_on(c: &Client, expected: &str) {
    for _ in 0..100 {
        if path(c).await == expected
            && js(
                c,
                "return window.kiraLeftPage === undefined && document.readyState === 'complete';",
            )
            .await
                == json!(true)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let html = c.source().await.unwrap_or_default();
    panic!("still on {} instead of {expected}:\n{html}", path(c).await);
}

async fn pages_in_chromium(backend: Backend) {
    let run = scripted_run(backend).await;
    let base = run.server.base.clone();
    let driver = chromedriver().await;
    let c = browser(&driver).await;

    c.goto(&format!("{base}/ui/companies/acme"))
        .await
        .expect("page");
    assert_eq!(path(&c).await, "/ui/login", "signed out: the sign-in page");
    no_console_errors(&c, "sign-in").await;
    screenshot(&c, backend, "login").await;

    // acme's viewer: its company's page, three charts of seven days.
    sign_in(&c, &base, &run.acme_viewer).await;
    lands_on(&c, "/ui/companies/acme").await;
    assert_eq!(text(&c, "#company-name").await, "acme corp");
    assert_eq!(text(&c, "#total-tasks").await, "4");
    assert_eq!(text(&c, "#avg-response").await, "21.25 s");
    let drawn = charts(&c).await;
    assert_eq!(drawn.len(), 3, "{drawn:?}");
    for (id, canvas, points, expected) in &drawn {
        assert!(*canvas, "{id} drawn on a canvas");
        assert_eq!((points.as_str(), expected.as_str()), ("7", "7"), "{id}");
    }
    // The task-volume chart holds the run's values, as uPlot read them.
    let volume = js(
        &c,
        "return JSON.parse(document.getElementById('chart-task-volume').dataset.y);",
    )
    .await;
    assert_eq!(volume, json!([0, 0, 0, 0, 1, 0, 3]));
    no_console_errors(&c, "company").await;
    screenshot(&c, backend, "company-acme").await;

    // beta's page is not there for acme's viewer.
    c.goto(&format!("{base}/ui/companies/beta"))
        .await
        .expect("page");
    assert_eq!(text(&c, "#error-status").await, "404");
    let html = c.source().await.expect("source");
    assert!(!html.contains("beta corp"));
    screenshot(&c, backend, "company-beta-refused").await;
    // (the 404 itself is logged as a failed load; nothing else may be)
    let _ = c.issue_cmd(BrowserLog).await;

    c.goto(&format!("{base}/ui/alerts")).await.expect("alerts");
    assert!(text(&c, "#alert-list").await.contains("sla_violation"));
    no_console_errors(&c, "alerts").await;

    // Sign-out: back to sign-in, and the pages are closed again.
    c.find(Locator::Css("#sign-out"))
        .await
        .expect("sign-out button")
        .click()
        .await
        .expect("sign out");
    lands_on(&c, "/ui/login").await;
    c.goto(&format!("{base}/ui/companies/acme"))
        .await
        .expect("page");
    assert_eq!(path(&c).await, "/ui/login");
    let cookies = js(&c, "return document.cookie;").await;
    assert_eq!(cookies, json!(""), "HttpOnly: no script sees the session");

    // The admin: the executive page with the period's daily tokens, and an
    // alert acknowledged from the alerts page.
    sign_in(&c, &base, &run.server.admin).await;
    lands_on(&c, "/ui/").await;
    assert_eq!(text(&c, "#queue-depth").await, "2");
    assert_eq!(text(&c, "#open-alerts").await, "3");
    let drawn = charts(&c).await;
    assert_eq!(
        drawn,
        [(
            "chart-daily-tokens".to_owned(),
            true,
            "10".to_owned(),
            "10".to_owned()
        )]
    );
    no_console_errors(&c, "executive").await;
    screenshot(&c, backend, "executive").await;

    c.goto(&format!("{base}/ui/alerts")).await.expect("alerts");
    let row = format!("tr[data-alert='{}']", run.acme_alert);
    // The form posts back to this page: an element found before the new
    // page replaces this one would be stale.
    mark_page(&c).await;
    c.find(Locator::Css(&format!("{row} button.ack")))
        .await
        .expect("acknowledge button")
        .click()
        .await
        .expect("acknowledge");
    lands_on(&c, "/ui/alerts").await;
    let state = c
        .find(Locator::Css(&row))
        .await
        .expect("row")
        .attr("data-state")
        .await
        .expect("state");
    assert_eq!(state.as_deref(), Some("acknowledged"));
    no_console_errors(&c, "alerts (admin)").await;
    screenshot(&c, backend, "alerts").await;

    c.close().await.expect("close the browser");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_pages_in_chromium() {
    pages_in_chromium(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_pages_in_chromium() {
    pages_in_chromium(Backend::Postgres).await;
}
