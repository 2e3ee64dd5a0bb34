//! A small client of kira's HTTP API: bearer auth, JSON in and out, the
//! server's error body turned into an [`ApiError`] the user can read, and
//! server-sent-event streams read as they arrive.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;
use serde_json::Value;

/// A refusal or failure as the server described it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub code: String,
    pub message: String,
    pub field: Option<String>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)?;
        if let Some(field) = &self.field {
            write!(f, " (field: {field})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiError {}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    code: String,
    message: String,
    #[serde(default)]
    field: Option<String>,
}

impl ApiError {
    /// Reads the server's `{"error": {...}}` body; anything else (a proxy's
    /// HTML page, an empty body) still gives a message naming the status.
    pub fn from_response(status: StatusCode, body: &[u8]) -> Self {
        match serde_json::from_slice::<ErrorBody>(body) {
            Ok(b) => ApiError {
                status: status.as_u16(),
                code: b.error.code,
                message: b.error.message,
                field: b.error.field,
            },
            Err(_) => {
                let text = String::from_utf8_lossy(body);
                let text = text.trim();
                let mut message = format!("the server answered {status}");
                if !text.is_empty() {
                    let snippet: String = text.chars().take(200).collect();
                    message.push_str(": ");
                    message.push_str(&snippet);
                }
                ApiError {
                    status: status.as_u16(),
                    code: "unexpected_response".to_owned(),
                    message,
                    field: None,
                }
            }
        }
    }
}

pub struct Client {
    http: reqwest::Client,
    /// For streams, which stay open as long as what they follow lasts: no
    /// limit on the whole request, only on connecting.
    streaming: reqwest::Client,
    base: Url,
    token: String,
}

impl Client {
    pub fn new(base: &str, token: String) -> anyhow::Result<Self> {
        let base = Url::parse(base).with_context(|| format!("--url '{base}' is not a URL"))?;
        if base.scheme() != "http" {
            bail!(
                "--url '{base}' must be an http:// URL (this client speaks plain HTTP; \
                 reach a remote server through a tunnel)"
            );
        }
        let builder = || {
            reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .user_agent(concat!("kira-cli/", env!("CARGO_PKG_VERSION")))
        };
        let http = builder()
            .timeout(Duration::from_secs(60))
            .build()
            .context("cannot set up the HTTP client")?;
        let streaming = builder()
            .tcp_keepalive(Duration::from_secs(30))
            .build()
            .context("cannot set up the HTTP client")?;
        Ok(Self {
            http,
            streaming,
            base,
            token,
        })
    }

    /// The URL of `segments` under the base URL, each segment escaped, so
    /// an id such as `a/b` cannot reach another route.
    pub fn url(&self, segments: &[&str], query: &[(&str, String)]) -> anyhow::Result<Url> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| anyhow::anyhow!("--url '{}' cannot have a path", self.base))?
            .pop_if_empty()
            .extend(segments);
        if !query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (k, v) in query {
                pairs.append_pair(k, v);
            }
        }
        Ok(url)
    }

    pub async fn get(&self, segments: &[&str], query: &[(&str, String)]) -> anyhow::Result<Value> {
        self.send(Method::GET, segments, query, None).await
    }

    pub async fn post(&self, segments: &[&str], body: Option<&Value>) -> anyhow::Result<Value> {
        self.send(Method::POST, segments, &[], body).await
    }

    pub async fn patch(&self, segments: &[&str], body: &Value) -> anyhow::Result<Value> {
        self.send(Method::PATCH, segments, &[], Some(body)).await
    }

    pub async fn delete(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
    ) -> anyhow::Result<Value> {
        self.send(Method::DELETE, segments, query, None).await
    }

    /// A POST with extra headers, such as `Idempotency-Key`.
    pub async fn post_with_headers(
        &self,
        segments: &[&str],
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Value> {
        self.send_with(Method::POST, segments, &[], body, headers)
            .await
    }

    /// One request. A non-2xx answer becomes an [`ApiError`]; a 2xx answer
    /// is its JSON body (null when empty).
    pub async fn send(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        self.send_with(method, segments, query, body, &[]).await
    }

    async fn send_with(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Value> {
        let url = self.url(segments, query)?;
        let mut req = self
            .http
            .request(method, url)
            .bearer_auth(&self.token)
            .header(reqwest::header::ACCEPT, "application/json");
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach the kira server at {}", self.base))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .with_context(|| format!("the kira server at {} broke off its answer", self.base))?;
        if !status.is_success() {
            return Err(ApiError::from_response(status, &bytes).into());
        }
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).context("the server's answer is not JSON")
    }
}

impl Client {
    /// Opens a server-sent-events stream with a GET. A refusal is an
    /// [`ApiError`] as for any request; an answer is read event by event.
    pub async fn stream(&self, segments: &[&str]) -> anyhow::Result<EventStream> {
        let url = self.url(segments, &[])?;
        let resp = self
            .streaming
            .get(url)
            .bearer_auth(&self.token)
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .send()
            .await
            .with_context(|| format!("cannot reach the kira server at {}", self.base))?;
        let status = resp.status();
        if !status.is_success() {
            let bytes = resp.bytes().await.unwrap_or_default();
            return Err(ApiError::from_response(status, &bytes).into());
        }
        Ok(EventStream {
            resp,
            parser: SseParser::default(),
            ended: false,
            base: self.base.clone(),
        })
    }
}

/// One server-sent event: its name (`message` when the server gave none)
/// and its data lines joined by newlines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: String,
    pub data: String,
}

/// An open event stream.
pub struct EventStream {
    resp: reqwest::Response,
    parser: SseParser,
    ended: bool,
    base: Url,
}

impl EventStream {
    /// The next event, as soon as it has arrived whole; None when the
    /// server ended the stream.
    pub async fn next(&mut self) -> anyhow::Result<Option<SseEvent>> {
        loop {
            if let Some(event) = self.parser.next_event() {
                return Ok(Some(event));
            }
            if self.ended {
                // An event cut off without its closing blank line is not
                // an event (the SSE rules): it is dropped.
                return Ok(None);
            }
            match self
                .resp
                .chunk()
                .await
                .with_context(|| format!("the kira server at {} broke off the stream", self.base))?
            {
                Some(bytes) => self.parser.push(&bytes),
                None => self.ended = true,
            }
        }
    }
}

/// Splits a byte stream into server-sent events: an event ends at a blank
/// line; `event:` names it, `data:` lines make its data, lines starting
/// with `:` are comments (keep-alives). Chunks may split anything,
/// including a UTF-8 character, so bytes wait until their event is whole.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
}

impl SseParser {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    pub fn next_event(&mut self) -> Option<SseEvent> {
        loop {
            let (end, sep) = blank_line(&self.buf)?;
            let block: Vec<u8> = self.buf.drain(..end + sep).take(end).collect();
            if let Some(event) = parse_event(&String::from_utf8_lossy(&block)) {
                return Some(event);
            }
        }
    }
}

/// Where the first blank line is: the event's length and the separator's.
fn blank_line(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    let crlf = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// One event's lines; None for a block of comments only.
fn parse_event(block: &str) -> Option<SseEvent> {
    let mut event = None;
    let mut data: Option<String> = None;
    for line in block.lines() {
        if line.is_empty() || line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => event = Some(value.to_owned()),
            "data" => match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => data = Some(value.to_owned()),
            },
            _ => {}
        }
    }
    if event.is_none() && data.is_none() {
        return None;
    }
    Some(SseEvent {
        event: event.unwrap_or_else(|| "message".to_owned()),
        data: data.unwrap_or_default(),
    })
}

/// Where a client finds the token when none is given: the file `kira serve`
/// writes for the first admin key.
pub fn admin_key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("admin.key")
}

/// `--token`/`KIRA_TOKEN` if given, else the contents of `admin.key` in the
/// data directory; surrounding whitespace trimmed either way.
pub fn resolve_token(given: Option<&str>, data_dir: &Path) -> anyhow::Result<String> {
    if let Some(t) = given {
        let t = t.trim();
        if t.is_empty() {
            bail!("the token given by --token or KIRA_TOKEN is empty");
        }
        return Ok(t.to_owned());
    }
    let path = admin_key_path(data_dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "no API token: pass --token or set KIRA_TOKEN (no {} found; `kira serve` writes the first admin key there)",
            path.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let t = text.trim();
    if t.is_empty() {
        bail!("{} is empty", path.display());
    }
    Ok(t.to_owned())
}

/// Decodes a JSON answer into the type the command shows.
pub fn decode<T: serde::de::DeserializeOwned>(v: Value) -> anyhow::Result<T> {
    serde_json::from_value(v).context("the server's answer does not have the expected shape")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_map_to_messages() {
        let e = ApiError::from_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            br#"{"error":{"code":"validation_failed","message":"must be 2 to 50 characters","field":"id"}}"#,
        );
        assert_eq!(e.status, 422);
        assert_eq!(e.code, "validation_failed");
        assert_eq!(e.to_string(), "must be 2 to 50 characters (field: id)");

        let e = ApiError::from_response(
            StatusCode::UNAUTHORIZED,
            br#"{"error":{"code":"unauthorized","message":"invalid token"}}"#,
        );
        assert_eq!(e.to_string(), "invalid token");

        let e = ApiError::from_response(StatusCode::BAD_GATEWAY, b"<html>bad gateway</html>");
        assert_eq!(
            e.to_string(),
            "the server answered 502 Bad Gateway: <html>bad gateway</html>"
        );
        let e = ApiError::from_response(StatusCode::NOT_FOUND, b"");
        assert_eq!(e.to_string(), "the server answered 404 Not Found");
    }

    #[test]
    fn path_segments_are_escaped() {
        let c = Client::new("http://127.0.0.1:9/", "t".into()).expect("client");
        let u = c
            .url(
                &["v1", "companies", "a/../b?x"],
                &[("force", "true".into())],
            )
            .expect("url");
        assert_eq!(
            u.as_str(),
            "http://127.0.0.1:9/v1/companies/a%2F..%2Fb%3Fx?force=true"
        );
        let c = Client::new("http://h:1/prefix", "t".into()).expect("client");
        assert_eq!(
            c.url(&["v1", "keys"], &[]).expect("url").as_str(),
            "http://h:1/prefix/v1/keys"
        );
    }

    #[test]
    fn server_sent_events_arrive_whole_whatever_the_chunks() {
        let stream = "event: status\ndata: {\"to_status\":\"running\"}\n\n\
                      : keep-alive\n\n\
                      event: status\r\ndata: é\r\ndata: two\r\n\r\n\
                      data: plain\n\n\
                      event: status\ndata: cut off";
        let bytes = stream.as_bytes();
        // Every split point, including inside "é" and inside "\r\n".
        for split in 0..bytes.len() {
            let mut p = SseParser::default();
            let mut got = Vec::new();
            for part in [&bytes[..split], &bytes[split..]] {
                p.push(part);
                while let Some(e) = p.next_event() {
                    got.push(e);
                }
            }
            let ev = |event: &str, data: &str| SseEvent {
                event: event.into(),
                data: data.into(),
            };
            assert_eq!(
                got,
                [
                    ev("status", "{\"to_status\":\"running\"}"),
                    ev("status", "é\ntwo"),
                    ev("message", "plain"),
                ],
                "split at {split}"
            );
        }
    }

    #[test]
    fn only_http_urls() {
        assert!(Client::new("https://h", "t".into()).is_err());
        assert!(Client::new("h:80", "t".into()).is_err());
        assert!(Client::new("not a url", "t".into()).is_err());
    }

    #[test]
    fn token_from_flag_or_admin_key_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert_eq!(
            resolve_token(Some("  kira_x \n"), dir.path()).expect("token"),
            "kira_x"
        );
        let e = resolve_token(None, dir.path()).expect_err("no file");
        assert!(e.to_string().contains("admin.key"), "{e}");
        std::fs::write(dir.path().join("admin.key"), "kira_file\n").expect("write");
        assert_eq!(resolve_token(None, dir.path()).expect("token"), "kira_file");
        assert!(resolve_token(Some(" "), dir.path()).is_err());
    }
}
