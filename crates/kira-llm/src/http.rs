//! What the HTTP providers share: one client, sending a JSON body and
//! turning the answer (or its absence) into a value or an [`LlmError`].

use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;
use serde::de::DeserializeOwned;

use crate::LlmError;

/// At most this much of an error body is kept in an error.
const BODY_EXCERPT: usize = 500;

/// Builds the shared client. `timeout` bounds a whole request; the
/// resilient wrapper usually sets a shorter per-attempt limit.
pub(crate) fn client(timeout: Duration) -> Result<reqwest::Client, LlmError> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| LlmError::Config(format!("HTTP client: {e}")))
}

/// A base URL without its trailing slash, checked to be http(s).
pub(crate) fn base_url(base: &str) -> Result<String, LlmError> {
    let trimmed = base.trim().trim_end_matches('/');
    let parsed = reqwest::Url::parse(trimmed)
        .map_err(|e| LlmError::Config(format!("base URL {trimmed:?}: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(LlmError::Config(format!(
            "base URL {trimmed:?}: scheme must be http or https"
        )));
    }
    if parsed.scheme() == "https" && !cfg!(feature = "tls") {
        return Err(LlmError::Config(format!(
            "base URL {trimmed:?}: this build of kira-llm has no TLS (enable its `tls` feature)"
        )));
    }
    Ok(trimmed.to_string())
}

/// Sends `request`; a non-2xx answer becomes the error it stands for
/// (429 RateLimited, else Status, with Retry-After and the body's start
/// scrubbed of `secret`).
async fn send(
    provider: &str,
    request: reqwest::RequestBuilder,
    secret: Option<&str>,
    started: Instant,
) -> Result<reqwest::Response, LlmError> {
    let response = request
        .send()
        .await
        .map_err(|e| transport_error(provider, &e, started.elapsed()))?;
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let retry_after = retry_after(response.headers());
    let bytes = response
        .bytes()
        .await
        .map_err(|e| transport_error(provider, &e, started.elapsed()))?;
    let body = scrub(&String::from_utf8_lossy(&bytes), secret);
    Err(if status.as_u16() == 429 {
        LlmError::RateLimited {
            provider: provider.to_string(),
            retry_after,
            body,
        }
    } else {
        LlmError::Status {
            provider: provider.to_string(),
            status: status.as_u16(),
            retry_after,
            body,
        }
    })
}

/// Sends `request` and decodes a 2xx JSON body as `T`; returns it with the
/// time the call took. `secret` is scrubbed from anything kept of the body.
pub(crate) async fn send_json<T: DeserializeOwned>(
    provider: &str,
    request: reqwest::RequestBuilder,
    secret: Option<&str>,
) -> Result<(T, Duration), LlmError> {
    let started = Instant::now();
    let response = send(provider, request, secret, started).await?;
    let bytes = response
        .bytes()
        .await
        .map_err(|e| transport_error(provider, &e, started.elapsed()))?;
    let latency = started.elapsed();
    let value = serde_json::from_slice(&bytes).map_err(|e| LlmError::Decode {
        provider: provider.to_string(),
        message: format!(
            "{e} in {:?}",
            scrub(&String::from_utf8_lossy(&bytes), secret)
        ),
    })?;
    Ok((value, latency))
}

/// Sends `request` and hands each server-sent event's (event name, data)
/// to `on_event` as it arrives; returns the time the whole stream took.
/// `on_event` returns false to stop reading (the stream's own end marker).
pub(crate) async fn send_sse(
    provider: &str,
    request: reqwest::RequestBuilder,
    secret: Option<&str>,
    mut on_event: impl FnMut(&str, &str) -> Result<bool, LlmError>,
) -> Result<Duration, LlmError> {
    use eventsource_stream::Eventsource;
    use futures_util::StreamExt;
    let started = Instant::now();
    let response = send(provider, request, secret, started).await?;
    let mut events = response.bytes_stream().eventsource();
    while let Some(event) = events.next().await {
        let event = event.map_err(|e| match e {
            eventsource_stream::EventStreamError::Transport(t) => {
                transport_error(provider, &t, started.elapsed())
            }
            other => LlmError::Decode {
                provider: provider.to_string(),
                message: format!("event stream: {other}"),
            },
        })?;
        if !on_event(&event.event, &event.data)? {
            break;
        }
    }
    Ok(started.elapsed())
}

fn transport_error(provider: &str, e: &reqwest::Error, elapsed: Duration) -> LlmError {
    if e.is_timeout() {
        return LlmError::Timeout {
            provider: provider.to_string(),
            after: elapsed,
        };
    }
    // reqwest's message names the URL, never a header, so no key can leak;
    // the source chain says why (refused, reset, ...).
    let mut message = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    LlmError::Http {
        provider: provider.to_string(),
        message,
    }
}

/// The server's requested wait: OpenAI's `retry-after-ms`, else
/// `Retry-After` in seconds (integer or decimal). The HTTP-date form is not
/// read (it needs the wall clock); backoff applies instead.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let number = |name: &str| -> Option<f64> {
        let v: f64 = headers.get(name)?.to_str().ok()?.trim().parse().ok()?;
        (v.is_finite() && v >= 0.0).then_some(v)
    };
    if let Some(ms) = number("retry-after-ms") {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    number("retry-after").map(Duration::from_secs_f64)
}

/// The start of a body with `secret` replaced, so an echoing server cannot
/// put a key into an error.
fn scrub(body: &str, secret: Option<&str>) -> String {
    let body = match secret {
        Some(s) if !s.is_empty() => body.replace(s, "[redacted]"),
        _ => body.to_string(),
    };
    if body.len() <= BODY_EXCERPT {
        return body;
    }
    let mut end = BODY_EXCERPT;
    while !body.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &body[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn retry_after_reads_seconds_and_milliseconds() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert("retry-after", HeaderValue::from_static("3"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert("retry-after", HeaderValue::from_static("1.5"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(1500)));
        h.insert("retry-after-ms", HeaderValue::from_static("250"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(250)));
        let mut h = HeaderMap::new();
        h.insert(
            "retry-after",
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), None);
        h.insert("retry-after", HeaderValue::from_static("-1"));
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn scrub_hides_the_key_and_cuts_long_bodies() {
        assert_eq!(
            scrub("bad key sk-123 given", Some("sk-123")),
            "bad key [redacted] given"
        );
        assert_eq!(scrub("x", Some("")), "x");
        let long = "é".repeat(400);
        let cut = scrub(&long, None);
        assert!(cut.ends_with("...") && cut.len() <= BODY_EXCERPT + 3);
    }

    #[test]
    fn base_url_trims_and_checks_the_scheme() {
        assert_eq!(
            base_url("http://127.0.0.1:8080/v1/").expect("ok"),
            "http://127.0.0.1:8080/v1"
        );
        assert!(matches!(base_url("ftp://x"), Err(LlmError::Config(_))));
        assert!(matches!(base_url("not a url"), Err(LlmError::Config(_))));
    }

    #[test]
    fn https_needs_the_tls_feature() {
        let https = base_url("https://api.openai.com/v1");
        if cfg!(feature = "tls") {
            assert_eq!(https.expect("https"), "https://api.openai.com/v1");
        } else {
            let e = https.expect_err("no TLS compiled in");
            assert!(e.to_string().contains("`tls` feature"), "{e}");
        }
    }
}
