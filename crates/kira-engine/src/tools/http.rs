//! Plain HTTP tools: a registered method, URL template, headers and
//! result pointer, called with the model's arguments (the template's
//! parameters percent-encoded into the path, the rest in the query for
//! GET and DELETE, else as a JSON body).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kira_core::outbound::OutboundPolicy;
use serde_json::{Map, Value};

/// A registered HTTP tool. Its headers may hold a company's credential:
/// it is never printed (no `Debug`).
#[derive(Clone, PartialEq)]
pub struct HttpTool {
    pub method: String,
    pub url: String,
    pub headers: BTreeMap<String, String>,
    pub result: Option<String>,
    /// The address policy its URL is held to (none: a trusted shared
    /// tool); the caller passes the client that applies it.
    pub guard: Option<Arc<OutboundPolicy>>,
}

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Ok,
    /// The endpoint answered with an error, or could not be reached.
    Failed,
    Timeout,
    /// The address policy forbade the URL.
    Refused,
}

/// At most this many redirects a call, every origin together.
const MAX_REDIRECTS: usize = 10;

/// What a call gave back: the text, and how it ended. `header` is one
/// more header of this call (the company's preferences).
///
/// Redirects: the client follows those within the URL's origin (with the
/// registration's headers, as a browser keeps a page's). One to another
/// origin is followed here without them: the registration's headers (a
/// credential kira put in, the preferences, any custom header) were given
/// for the registered host, and another host (a CDN, a storage bucket)
/// serves the redirected request without them, so the call still works
/// and nothing kira injected leaves the origin. Once a hop has left the
/// origin, the rest of the chain goes without them, even back to the
/// first origin: the other host chose that URL. Every hop is held to the
/// address policy, and a 301/302/303 turns a POST into a bodiless GET as
/// browsers do (307 and 308 keep the method and body).
pub async fn call(
    client: &reqwest::Client,
    tool: &HttpTool,
    args: &Value,
    header: Option<(&str, String)>,
    timeout: Duration,
) -> (String, Ended) {
    let empty = Map::new();
    let args = args.as_object().unwrap_or(&empty);
    let (url, rest) = match fill(&tool.url, args) {
        Ok(v) => v,
        Err(e) => return (e, Ended::Failed),
    };
    let mut method = match reqwest::Method::from_bytes(tool.method.as_bytes()) {
        Ok(m) => m,
        Err(_) => return (format!("method {} is not HTTP", tool.method), Ended::Failed),
    };
    let query_args = matches!(method, reqwest::Method::GET | reqwest::Method::DELETE);
    let mut url = match reqwest::Url::parse(&url) {
        Ok(u) => u,
        Err(e) => return (format!("the URL is not valid: {e}"), Ended::Failed),
    };
    if query_args && !rest.is_empty() {
        url.query_pairs_mut()
            .extend_pairs(rest.iter().map(|(k, v)| (k.clone(), plain(v))));
    }
    let mut body = (!query_args).then(|| Value::Object(rest));
    let mut own_headers = true;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut hops = 0;
    let resp = loop {
        // An address literal never reaches the client's resolver.
        if let Some(policy) = &tool.guard
            && let Err(e) = crate::outbound::check_url(policy, url.as_str())
        {
            return (e.to_string(), Ended::Refused);
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let mut req = client.request(method.clone(), url.clone()).timeout(left);
        if own_headers {
            for (k, v) in &tool.headers {
                req = req.header(k, v);
            }
            if let Some((k, v)) = &header {
                req = req.header(*k, v);
            }
        }
        if let Some(b) = &body {
            req = req.json(b);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) if e.is_timeout() => {
                return (
                    format!("no answer within {} ms", timeout.as_millis()),
                    Ended::Timeout,
                );
            }
            Err(e) => {
                if let Some(r) = crate::outbound::refusal(&e) {
                    return (r.to_string(), Ended::Refused);
                }
                return (
                    format!("request failed: {}", e.without_url()),
                    Ended::Failed,
                );
            }
        };
        // The client stopped at a redirect to another origin.
        let Some(next) = redirect(&resp) else {
            break resp;
        };
        hops += 1;
        if hops > MAX_REDIRECTS {
            return ("too many redirects".into(), Ended::Failed);
        }
        let status = resp.status().as_u16();
        let to_get = match status {
            303 => method != reqwest::Method::HEAD,
            301 | 302 => method == reqwest::Method::POST,
            _ => false,
        };
        if to_get {
            method = reqwest::Method::GET;
            body = None;
        }
        own_headers = false;
        url = next;
    };
    let status = resp.status();
    let body = match resp.text().await {
        Ok(b) => b,
        Err(e) => {
            return (
                format!("reading the answer failed: {}", e.without_url()),
                Ended::Failed,
            );
        }
    };
    if !status.is_success() {
        return (format!("HTTP {}: {body}", status.as_u16()), Ended::Failed);
    }
    match tool.result.as_deref() {
        None | Some("") => (body, Ended::Ok),
        Some(ptr) => match serde_json::from_str::<Value>(&body) {
            Ok(v) => match v.pointer(ptr) {
                Some(Value::String(s)) => (s.clone(), Ended::Ok),
                Some(other) => (other.to_string(), Ended::Ok),
                None => (format!("the answer has nothing at {ptr}"), Ended::Failed),
            },
            Err(_) => (
                format!("the answer is not JSON, so {ptr} cannot be read"),
                Ended::Failed,
            ),
        },
    }
}

/// Where a redirect the client did not follow leads: a 3xx with a
/// `Location` (relative to the answer's URL).
fn redirect(resp: &reqwest::Response) -> Option<reqwest::Url> {
    if !resp.status().is_redirection() {
        return None;
    }
    let location = resp
        .headers()
        .get(reqwest::header::LOCATION)?
        .to_str()
        .ok()?;
    resp.url().join(location).ok()
}

/// A JSON value as a path or query part: strings as they are.
fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The template with its parameters filled in (percent-encoded), and the
/// arguments it did not use.
fn fill(template: &str, args: &Map<String, Value>) -> Result<(String, Map<String, Value>), String> {
    let params = kira_core::tools::template_params(template)?;
    let mut url = template.to_owned();
    let mut rest = args.clone();
    for p in params {
        let v = rest
            .remove(&p)
            .ok_or_else(|| format!("missing argument '{p}'"))?;
        let encoded: String = form_urlencoded_path(&plain(&v));
        url = url.replace(&format!("{{{p}}}"), &encoded);
    }
    Ok((url, rest))
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
fn form_urlencoded_path(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn template_parameters_are_encoded_into_the_path_and_the_rest_is_kept() {
        let args = json!({"city": "São Paulo/../x", "units": "metric"});
        let (url, rest) = fill(
            "https://w.example/{city}/now",
            args.as_object().expect("obj"),
        )
        .expect("filled");
        assert_eq!(url, "https://w.example/S%C3%A3o%20Paulo%2F..%2Fx/now");
        assert_eq!(Value::Object(rest), json!({"units": "metric"}));
        let missing = fill("https://w.example/{city}", &Map::new());
        assert_eq!(missing.err().as_deref(), Some("missing argument 'city'"));
    }
}
