//! The ways an alert reaches people: the log, a webhook (kira's JSON or
//! Slack's), email over SMTP (`lettre`), and Prometheus Alertmanager's v2
//! API. Each [`Channel`] makes one attempt; the evaluator retries and
//! records every attempt on the alert.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use kira_core::ValidationError;
use kira_core::alerts::{Alert, NoticeKind};
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use serde::{Deserialize, Serialize};

use crate::config::within;

/// Where a team's notifications go.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ChannelSpec {
    /// The process's log (tracing, at warn).
    Log,
    /// An HTTP POST of JSON: kira's own body, or Slack's `{"text": ..}`.
    Webhook {
        url: String,
        #[serde(default)]
        format: WebhookFormat,
    },
    /// Email through `[alerts.smtp]`.
    Email { to: Vec<String> },
    /// A Prometheus Alertmanager (`url` is its base, e.g.
    /// `http://127.0.0.1:9093`; kira posts to `/api/v2/alerts`).
    Alertmanager { url: String },
}

impl ChannelSpec {
    /// Checks what the file says; `field` names this channel.
    pub(crate) fn validate(&self, field: &str, smtp: bool) -> Result<(), ValidationError> {
        let http = |url: &str| {
            if url.starts_with("http://") || url.starts_with("https://") {
                Ok(())
            } else {
                Err(ValidationError::new(
                    format!("{field}.url"),
                    "must be an http(s) URL",
                ))
            }
        };
        match self {
            ChannelSpec::Log => Ok(()),
            ChannelSpec::Webhook { url, .. } | ChannelSpec::Alertmanager { url } => http(url),
            ChannelSpec::Email { to } => {
                if !smtp {
                    return Err(ValidationError::new(
                        field.to_owned(),
                        "an email channel needs [alerts.smtp] (host and from)",
                    ));
                }
                if to.is_empty() {
                    return Err(ValidationError::new(
                        format!("{field}.to"),
                        "names no address",
                    ));
                }
                for (i, a) in to.iter().enumerate() {
                    mailbox(a, &format!("{field}.to.{i}"))?;
                }
                Ok(())
            }
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookFormat {
    #[default]
    Generic,
    Slack,
}

fn mailbox(s: &str, field: &str) -> Result<Mailbox, ValidationError> {
    s.parse::<Mailbox>().map_err(|e| {
        ValidationError::new(field.to_owned(), format!("is not an email address: {e}"))
    })
}

/// How the connection to the SMTP server is protected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SmtpSecurity {
    /// Plain connection upgraded with STARTTLS (required), port 587.
    #[default]
    Starttls,
    /// TLS from the first byte, port 465.
    Tls,
    /// No encryption: only for a relay on the same host or a test sink.
    None,
}

/// `[alerts.smtp]` as written. The password is never in the file: it is
/// read from the environment variable `password_env` names.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpSection {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub security: Option<SmtpSecurity>,
    /// `kira <alerts@example.com>`.
    pub from: Option<String>,
    pub username: Option<String>,
    pub password_env: Option<String>,
    pub timeout_seconds: Option<i64>,
}

/// The SMTP server alerts are sent through.
#[derive(Debug, Clone, PartialEq)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    pub security: SmtpSecurity,
    pub from: Mailbox,
    pub username: Option<String>,
    pub password_env: Option<String>,
    pub timeout: Duration,
}

impl SmtpSection {
    pub fn resolve(self) -> Result<Option<SmtpConfig>, ValidationError> {
        let f = |n: &str| format!("alerts.smtp.{n}");
        let Some(host) = self.host.filter(|h| !h.trim().is_empty()) else {
            if self.from.is_some() || self.port.is_some() || self.username.is_some() {
                return Err(ValidationError::new(f("host"), "is required"));
            }
            return Ok(None);
        };
        let from = mailbox(
            self.from
                .as_deref()
                .ok_or_else(|| ValidationError::new(f("from"), "is required"))?,
            &f("from"),
        )?;
        let security = self.security.unwrap_or_default();
        if self.username.is_some() != self.password_env.is_some() {
            return Err(ValidationError::new(
                f("password_env"),
                "username and password_env go together",
            ));
        }
        let timeout = within(
            "alerts.smtp.timeout_seconds",
            self.timeout_seconds.unwrap_or(10),
            1,
            300,
        )?;
        Ok(Some(SmtpConfig {
            host,
            port: self.port.unwrap_or(match security {
                SmtpSecurity::Starttls => 587,
                SmtpSecurity::Tls => 465,
                SmtpSecurity::None => 25,
            }),
            security,
            from,
            username: self.username,
            password_env: self.password_env,
            timeout: Duration::from_secs(timeout as u64),
        }))
    }
}

/// The transport for `smtp`, or why there is none.
pub(crate) fn smtp_transport(
    smtp: &SmtpConfig,
) -> Result<AsyncSmtpTransport<Tokio1Executor>, String> {
    let builder = match smtp.security {
        SmtpSecurity::None => {
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(smtp.host.as_str())
        }
        SmtpSecurity::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&smtp.host)
            .map_err(|e| e.to_string())?,
        SmtpSecurity::Tls => {
            AsyncSmtpTransport::<Tokio1Executor>::relay(&smtp.host).map_err(|e| e.to_string())?
        }
    };
    let mut builder = builder.port(smtp.port).timeout(Some(smtp.timeout));
    if let (Some(user), Some(var)) = (&smtp.username, &smtp.password_env) {
        let password = std::env::var(var)
            .ok()
            .filter(|p| !p.is_empty())
            .ok_or_else(|| format!("the SMTP password variable {var} is not set"))?;
        builder = builder.credentials(Credentials::new(user.clone(), password));
    }
    Ok(builder.build())
}

/// What a channel is handed: the alerts (one rule's, grouped), the notice
/// and whom it is for.
#[derive(Debug, Clone, Serialize)]
pub struct Message<'a> {
    pub notice: NoticeKind,
    /// `team:NAME` or `company_contact`.
    pub audience: String,
    /// The group's first alert (the only one when one subject fired).
    pub alert: &'a Alert,
    /// Every alert of the group: one rule's subjects that went out
    /// together, the first included.
    pub alerts: Vec<&'a Alert>,
    /// One line for people.
    pub text: String,
    /// When the evaluator sent it.
    #[serde(skip)]
    pub at: DateTime<Utc>,
    /// How long an alert stays active at a receiver that expires what is
    /// not sent again (Alertmanager): until the next repeat is due.
    #[serde(skip)]
    pub active_for: TimeDelta,
}

impl Message<'_> {
    pub(crate) fn line(alert: &Alert, notice: NoticeKind) -> String {
        format!(
            "[{}] {} {} ({}): {}",
            notice.as_str().to_uppercase(),
            alert.rule,
            alert.subject,
            alert.severity.as_str(),
            alert.summary
        )
    }

    /// The line of a group: its one alert's, or the rule, how many
    /// subjects and which.
    pub(crate) fn group_line(alerts: &[Alert], notice: NoticeKind) -> String {
        match alerts {
            [] => String::new(),
            [one] => Self::line(one, notice),
            [first, ..] => {
                let subjects: Vec<String> = alerts.iter().map(|a| a.subject.key()).collect();
                format!(
                    "[{}] {} ({}): {} subjects: {}",
                    notice.as_str().to_uppercase(),
                    first.rule,
                    first.severity.as_str(),
                    alerts.len(),
                    subjects.join(", ")
                )
            }
        }
    }

    /// The body of an email: the line, then each alert's particulars.
    fn details(&self) -> String {
        let mut out = format!("{}\n", self.text);
        for a in &self.alerts {
            out.push_str(&format!(
                "\nalert:     {}\nrule:      {}\nsubject:   {}\nseverity:  {}\nstate:     {}\nvalue:     {}\nstarted:   {}\n",
                a.id,
                a.rule,
                a.subject,
                a.severity.as_str(),
                a.state.as_str(),
                a.value,
                a.started_at.to_rfc3339_opts(SecondsFormat::Secs, true),
            ));
            if self.alerts.len() > 1 {
                out.push_str(&format!("summary:   {}\n", a.summary));
            }
            for (k, v) in &a.labels {
                out.push_str(&format!("label:     {k}={v}\n"));
            }
        }
        let ids: Vec<String> = self.alerts.iter().map(|a| a.id.to_string()).collect();
        out.push_str(&format!(
            "\nAcknowledge with `kira alerts ack {}` (sent to {}).\n",
            ids.join("` / `kira alerts ack "),
            self.audience
        ));
        out
    }
}

/// A way to reach people.
#[async_trait]
pub trait Channel: Send + Sync {
    /// `log`, `webhook`, `email`, `alertmanager`, ...
    fn kind(&self) -> &'static str;
    /// Where to, as recorded (no secret: a URL's password is hidden).
    fn target(&self) -> String;
    /// One attempt; the error says why it failed.
    async fn send(&self, m: &Message<'_>) -> Result<(), String>;
    /// Whether a failed attempt is worth another: false for a channel that
    /// cannot work in this process (it would fail the same way).
    fn retries(&self) -> bool {
        true
    }
}

/// The process's log; the team it stands for, if any, names its target.
pub struct LogChannel {
    pub team: Option<String>,
}

#[async_trait]
impl Channel for LogChannel {
    fn kind(&self) -> &'static str {
        "log"
    }
    fn target(&self) -> String {
        match &self.team {
            Some(t) => format!("log (team {t})"),
            None => "log".into(),
        }
    }
    async fn send(&self, m: &Message<'_>) -> Result<(), String> {
        tracing::warn!(alert = %m.alert.id, audience = %m.audience, "{}", m.text);
        Ok(())
    }
    fn retries(&self) -> bool {
        false
    }
}

/// An HTTP POST of the message as JSON; a 2xx answer is delivery.
pub struct WebhookChannel {
    client: reqwest::Client,
    url: String,
    format: WebhookFormat,
    /// A company's URL is held to the address policy (with a client
    /// whose resolver applies it).
    guard: Option<std::sync::Arc<kira_core::outbound::OutboundPolicy>>,
}

impl WebhookChannel {
    pub fn new(client: reqwest::Client, url: String, format: WebhookFormat) -> Self {
        Self {
            client,
            url,
            format,
            guard: None,
        }
    }

    /// A company's webhook: `client` must apply `policy` in its resolver
    /// (`crate::outbound::client`); the URL's address literal is checked
    /// here.
    pub fn company(
        client: reqwest::Client,
        url: String,
        policy: std::sync::Arc<kira_core::outbound::OutboundPolicy>,
    ) -> Self {
        Self {
            guard: Some(policy),
            ..Self::new(client, url, WebhookFormat::Generic)
        }
    }

    /// The body sent: kira's (`notice`, `audience`, `alert`, `text`) or
    /// Slack's incoming-webhook `{"text": ...}`.
    pub fn body(&self, m: &Message<'_>) -> serde_json::Value {
        match self.format {
            WebhookFormat::Generic => serde_json::to_value(m).unwrap_or_default(),
            WebhookFormat::Slack => serde_json::json!({ "text": m.text }),
        }
    }
}

async fn post_json(
    client: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
) -> Result<(), String> {
    answered(&send_json(client, url, body).await?)
}

async fn send_json(
    client: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
) -> Result<reqwest::Response, String> {
    client
        .post(url)
        .json(body)
        .send()
        .await
        .map_err(|e| match crate::outbound::refusal(&e) {
            Some(r) => r.to_string(),
            None => e.without_url().to_string(),
        })
}

/// A 2xx answer is delivery.
fn answered(r: &reqwest::Response) -> Result<(), String> {
    if r.status().is_success() {
        Ok(())
    } else {
        Err(format!("HTTP {}", r.status().as_u16()))
    }
}

/// Why a company webhook's redirect was not followed, naming the origin
/// it pointed to (never its path or query, which may carry a token).
fn cross_origin_redirect(
    status: reqwest::StatusCode,
    headers: &reqwest::header::HeaderMap,
    url: &str,
) -> String {
    let to = headers
        .get(reqwest::header::LOCATION)
        .and_then(|l| l.to_str().ok())
        .and_then(|l| reqwest::Url::parse(url).ok()?.join(l).ok())
        .map(|u| u.origin().ascii_serialization());
    format!(
        "HTTP {}: a redirect to another origin ({}), which kira does not follow for a company's webhook, so the alert was not sent there",
        status.as_u16(),
        to.as_deref().unwrap_or("no valid location")
    )
}

#[async_trait]
impl Channel for WebhookChannel {
    fn kind(&self) -> &'static str {
        "webhook"
    }
    fn target(&self) -> String {
        kira_core::url::redact_url(&self.url)
    }
    async fn send(&self, m: &Message<'_>) -> Result<(), String> {
        let Some(policy) = &self.guard else {
            return post_json(&self.client, &self.url, &self.body(m)).await;
        };
        crate::outbound::check_url(policy, &self.url).map_err(|e| e.to_string())?;
        // The company's client follows redirects within the URL's origin
        // only: one to another origin comes back as it is, and goes no
        // further with the alert's body.
        let r = send_json(&self.client, &self.url, &self.body(m)).await?;
        if r.status().is_redirection() {
            return Err(cross_origin_redirect(r.status(), r.headers(), &self.url));
        }
        answered(&r)
    }
}

/// One email to each address, through the configured SMTP server.
pub struct EmailChannel {
    pub(crate) transport: AsyncSmtpTransport<Tokio1Executor>,
    pub(crate) from: Mailbox,
    pub(crate) to: Vec<String>,
}

impl EmailChannel {
    /// The message as it is sent (headers and a plain-text body).
    pub fn message(&self, m: &Message<'_>) -> Result<lettre::Message, String> {
        let mut b = lettre::Message::builder()
            .from(self.from.clone())
            .subject(format!("kira: {}", m.text));
        for to in &self.to {
            b = b.to(to
                .parse::<Mailbox>()
                .map_err(|e| format!("{to:?} is not an address: {e}"))?);
        }
        b.header(lettre::message::header::ContentType::TEXT_PLAIN)
            .body(m.details())
            .map_err(|e| e.to_string())
    }
}

#[async_trait]
impl Channel for EmailChannel {
    fn kind(&self) -> &'static str {
        "email"
    }
    fn target(&self) -> String {
        self.to.join(", ")
    }
    async fn send(&self, m: &Message<'_>) -> Result<(), String> {
        let email = self.message(m)?;
        self.transport
            .send(email)
            .await
            .map(|_| ())
            .map_err(|e| format!("SMTP: {e}"))
    }
}

/// Prometheus Alertmanager's v2 API: the alert as one of its alerts,
/// labelled by rule (`alertname`), subject, severity and the rule's labels.
/// Alertmanager expires an alert that is not posted again by its `endsAt`:
/// kira sets it to the next repeat while the alert is open, and to the
/// resolution time on the resolve notice. (An acknowledged or silenced
/// alert is not repeated, so Alertmanager lets it lapse at that time.)
pub struct AlertmanagerChannel {
    client: reqwest::Client,
    base: String,
}

impl AlertmanagerChannel {
    pub fn new(client: reqwest::Client, base: String) -> Self {
        Self { client, base }
    }

    fn url(&self) -> String {
        format!("{}/api/v2/alerts", self.base.trim_end_matches('/'))
    }

    /// The `postableAlerts` body: every alert of the group.
    pub fn body(m: &Message<'_>) -> serde_json::Value {
        serde_json::Value::Array(m.alerts.iter().map(|a| Self::one(m, a)).collect())
    }

    fn one(m: &Message<'_>, a: &Alert) -> serde_json::Value {
        let mut labels = serde_json::Map::new();
        for (k, v) in &a.labels {
            labels.insert(k.clone(), v.clone().into());
        }
        labels.insert("alertname".into(), a.rule.clone().into());
        labels.insert("kira_subject".into(), a.subject.to_string().into());
        labels.insert("severity".into(), a.severity.as_str().into());
        if let Some(c) = a.company() {
            labels.insert("company".into(), c.to_string().into());
        }
        let ts = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Millis, true);
        let ends = match (m.notice, a.resolved_at) {
            (NoticeKind::Resolved, Some(t)) => t,
            (NoticeKind::Resolved, None) => m.at,
            _ => m.at + m.active_for,
        };
        serde_json::json!({
            "labels": labels,
            "annotations": {
                "summary": a.summary,
                "description": Message::line(a, m.notice),
                "kira_alert_id": a.id.to_string(),
                "kira_state": a.state.as_str(),
                "value": a.value.to_string(),
            },
            "startsAt": ts(a.fired_at.unwrap_or(a.started_at)),
            "endsAt": ts(ends),
        })
    }
}

#[async_trait]
impl Channel for AlertmanagerChannel {
    fn kind(&self) -> &'static str {
        "alertmanager"
    }
    fn target(&self) -> String {
        kira_core::url::redact_url(&self.base)
    }
    async fn send(&self, m: &Message<'_>) -> Result<(), String> {
        post_json(&self.client, &self.url(), &Self::body(m)).await
    }
}

/// A channel that cannot be reached from this process, recorded as a
/// failed attempt so the alert shows why.
pub(crate) struct Unavailable {
    pub kind: &'static str,
    pub target: String,
    pub why: String,
}

#[async_trait]
impl Channel for Unavailable {
    fn kind(&self) -> &'static str {
        self.kind
    }
    fn target(&self) -> String {
        self.target.clone()
    }
    async fn send(&self, _m: &Message<'_>) -> Result<(), String> {
        Err(self.why.clone())
    }
    fn retries(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smtp_section_needs_host_and_from_and_pairs_credentials() {
        assert_eq!(SmtpSection::default().resolve().expect("none"), None);
        let err = |s: SmtpSection| s.resolve().expect_err("refused").field;
        assert_eq!(
            err(SmtpSection {
                from: Some("a@b.c".into()),
                ..Default::default()
            }),
            "alerts.smtp.host"
        );
        assert_eq!(
            err(SmtpSection {
                host: Some("h".into()),
                ..Default::default()
            }),
            "alerts.smtp.from"
        );
        assert_eq!(
            err(SmtpSection {
                host: Some("h".into()),
                from: Some("not an address".into()),
                ..Default::default()
            }),
            "alerts.smtp.from"
        );
        assert_eq!(
            err(SmtpSection {
                host: Some("h".into()),
                from: Some("a@b.c".into()),
                username: Some("u".into()),
                ..Default::default()
            }),
            "alerts.smtp.password_env"
        );
        let ok = SmtpSection {
            host: Some("h".into()),
            from: Some("kira <a@b.c>".into()),
            security: Some(SmtpSecurity::Tls),
            ..Default::default()
        }
        .resolve()
        .expect("valid")
        .expect("configured");
        assert_eq!(ok.port, 465);
        assert_eq!(ok.from.email.to_string(), "a@b.c");
    }

    #[test]
    fn channel_specs_are_checked_field_by_field() {
        let f = |c: ChannelSpec, smtp| c.validate("ch", smtp).map_err(|e| e.field);
        assert_eq!(
            f(ChannelSpec::Email { to: vec![] }, true),
            Err("ch.to".into())
        );
        assert_eq!(
            f(
                ChannelSpec::Email {
                    to: vec!["ok@x.y".into(), "nope".into()]
                },
                true
            ),
            Err("ch.to.1".into())
        );
        assert_eq!(
            f(
                ChannelSpec::Email {
                    to: vec!["ok@x.y".into()]
                },
                false
            ),
            Err("ch".into())
        );
        assert_eq!(
            f(
                ChannelSpec::Alertmanager {
                    url: "127.0.0.1:9093".into()
                },
                true
            ),
            Err("ch.url".into())
        );
        assert_eq!(
            f(
                ChannelSpec::Alertmanager {
                    url: "http://127.0.0.1:9093".into()
                },
                false
            ),
            Ok(())
        );
    }
}
