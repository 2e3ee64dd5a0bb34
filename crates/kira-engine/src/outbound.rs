//! Outbound HTTP to URLs a company chose, under the operator's address
//! policy (`kira_core::outbound`): a client whose resolver refuses a name
//! that resolves to a forbidden address, whose redirects are checked hop
//! by hop, and the check of a URL whose host is an address literal (which
//! no resolver sees). The resolver runs on every new connection, so a name
//! that answered a public address at registration and a loopback one now
//! (DNS rebinding) is refused now.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use kira_core::outbound::OutboundPolicy;
use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Why kira did not connect: the policy forbade the address.
#[derive(Debug, Clone, thiserror::Error)]
#[error("refused by kira's outbound address policy: {0}")]
pub struct Refused(pub String);

/// A name's answer, as a test gives it.
type Lookup = dyn Fn(&str) -> std::io::Result<Vec<IpAddr>> + Send + Sync;

/// How the names of company URLs become addresses: the system's resolver,
/// or a function (tests: a name that answers one address at registration
/// and another at call time, which no real DNS does on demand).
#[derive(Clone, Default)]
pub enum Resolver {
    #[default]
    System,
    Fixed(Arc<Lookup>),
}

impl Resolver {
    /// A resolver answering with `lookup` (for tests).
    pub fn from_fn(
        lookup: impl Fn(&str) -> std::io::Result<Vec<IpAddr>> + Send + Sync + 'static,
    ) -> Self {
        Resolver::Fixed(Arc::new(lookup))
    }

    /// `host`'s addresses now.
    pub async fn lookup(&self, host: &str) -> std::io::Result<Vec<IpAddr>> {
        match self {
            Resolver::System => Ok(tokio::net::lookup_host((host, 0))
                .await?
                .map(|a| a.ip())
                .collect()),
            Resolver::Fixed(f) => f(host),
        }
    }
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Resolver::System => "Resolver::System",
            Resolver::Fixed(_) => "Resolver::Fixed",
        })
    }
}

impl PartialEq for Resolver {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Resolver::System, Resolver::System) => true,
            (Resolver::Fixed(a), Resolver::Fixed(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Eq for Resolver {}

/// The resolver of a guarded client.
struct Guard {
    policy: Arc<OutboundPolicy>,
    resolver: Resolver,
}

impl Resolve for Guard {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        let resolver = self.resolver.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let ips = resolver.lookup(&host).await?;
            // One forbidden address refuses the name: a public answer next
            // to a private one is how a rebinding attack hedges.
            for ip in &ips {
                policy.check(&host, *ip).map_err(Refused)?;
            }
            let addrs: Addrs = Box::new(ips.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

/// `url`'s host checked where no resolver will see it: an address literal
/// (`127.0.0.1`, `[::1]`, and `2130706433` or `0177.0.0.1`, which URL
/// parsing reads as 127.0.0.1). A name is left to the resolver.
pub fn check_url(policy: &OutboundPolicy, url: &str) -> Result<(), Refused> {
    let parsed = Url::parse(url).map_err(|e| Refused(format!("the URL is not valid: {e}")))?;
    check_parsed(policy, &parsed)
}

/// `url` checked before kira connects to it: an address literal as in
/// [`check_url`], a name on every address it resolves to now. For a
/// clear message where a transport hides its causes (rmcp's); the
/// client's resolver still checks every connection after.
pub async fn preflight(
    policy: &OutboundPolicy,
    resolver: &Resolver,
    url: &str,
) -> Result<(), Refused> {
    let parsed = Url::parse(url).map_err(|e| Refused(format!("the URL is not valid: {e}")))?;
    check_parsed(policy, &parsed)?;
    if let Some(url::Host::Domain(host)) = parsed.host() {
        let ips = resolver
            .lookup(host)
            .await
            .map_err(|e| Refused(format!("{host} does not resolve: {e}")))?;
        for ip in ips {
            policy.check(host, ip).map_err(Refused)?;
        }
    }
    Ok(())
}

/// Why `url` is refused when it is written to a registration or a
/// profile: its host is an address literal the policy forbids. A URL that
/// does not parse, or names a host, is left to the call (its name is
/// checked on what it resolves to then).
pub fn forbidden_literal(policy: &OutboundPolicy, url: &str) -> Option<String> {
    let parsed = Url::parse(url).ok()?;
    check_parsed(policy, &parsed).err().map(|e| e.0)
}

fn check_parsed(policy: &OutboundPolicy, url: &Url) -> Result<(), Refused> {
    let ip = match url.host() {
        Some(url::Host::Ipv4(a)) => IpAddr::V4(a),
        Some(url::Host::Ipv6(a)) => IpAddr::V6(a),
        Some(url::Host::Domain(_)) => return Ok(()),
        None => return Err(Refused("the URL has no host".into())),
    };
    policy.check(&ip.to_string(), ip).map_err(Refused)
}

/// A client for company URLs under `policy` (none: trusted URLs): the
/// guarded resolver (names answered by `resolver`) and no proxy (a proxy
/// would resolve the names where kira cannot check them); at most 10
/// redirects, each checked, and with `same_origin` only within the first
/// URL's origin: a redirect to another origin is then returned as it is
/// (a 3xx), for the caller to refuse (MCP: its session and headers never
/// go to another host) or to follow without its headers (HTTP tools,
/// [`crate::tools::http`]).
pub fn client(
    policy: Option<Arc<OutboundPolicy>>,
    resolver: &Resolver,
    builder: reqwest::ClientBuilder,
    same_origin: bool,
) -> reqwest::Client {
    let redirects = policy.clone();
    let mut builder = builder.redirect(reqwest::redirect::Policy::custom(move |attempt| {
        let first = attempt.previous().first().map(Url::origin);
        if attempt.previous().len() >= 10 {
            return attempt.error("too many redirects");
        }
        if same_origin && first.is_some_and(|o| o != attempt.url().origin()) {
            return attempt.stop();
        }
        match redirects.as_deref().map(|p| check_parsed(p, attempt.url())) {
            Some(Err(e)) => attempt.error(e),
            _ => attempt.follow(),
        }
    }));
    if let Some(policy) = policy {
        builder = builder
            .dns_resolver(Arc::new(Guard {
                policy,
                resolver: resolver.clone(),
            }))
            .no_proxy();
    }
    match builder.build() {
        Ok(c) => c,
        Err(e) => {
            // Building fails only when TLS cannot start: say so, and reach
            // nothing rather than something unchecked.
            tracing::error!(error = %e, "could not build the outbound HTTP client");
            refusing_client()
        }
    }
}

/// A client whose resolver refuses every name (and which follows no
/// redirect): what a caller gets when the guarded client cannot be built.
/// An address literal never reaches a resolver; every caller checks those
/// with [`check_url`] before sending.
fn refusing_client() -> reqwest::Client {
    let refuse = Resolver::from_fn(|host| {
        Err(std::io::Error::other(format!(
            "the outbound HTTP client could not start, so {host} is not reached"
        )))
    });
    reqwest::Client::builder()
        .dns_resolver(Arc::new(Guard {
            policy: Arc::new(OutboundPolicy::default()),
            resolver: refuse,
        }))
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_default()
}

/// The policy's refusal somewhere in `err`'s chain of causes.
pub fn refusal(err: &(dyn std::error::Error + 'static)) -> Option<Refused> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(r) = e.downcast_ref::<Refused>() {
            return Some(r.clone());
        }
        cur = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_fallback_client_reaches_no_name() {
        let err = refusing_client()
            .get("http://localhost:9/")
            .send()
            .await
            .expect_err("refused");
        let mut text = err.to_string();
        let mut cause = std::error::Error::source(&err);
        while let Some(c) = cause {
            text.push_str(&format!(": {c}"));
            cause = c.source();
        }
        assert!(
            text.contains("could not start, so localhost is not reached"),
            "{text}"
        );
    }

    #[test]
    fn address_literals_in_every_spelling_are_checked() {
        let p = OutboundPolicy::default();
        for u in [
            "http://127.0.0.1:8080/v1/tools",
            "http://2130706433/",
            "http://0177.0.0.1/",
            "http://0x7f.1/",
            "http://127.1/",
            "http://[::1]:9/",
            "http://[::ffff:7f00:1]/",
            "http://169.254.169.254/latest/meta-data/",
            "http://0.0.0.0:3000/",
            "http://[fe80::1]/",
            "http://10.0.0.1/",
        ] {
            let e = check_url(&p, u).expect_err(u);
            assert!(e.to_string().contains("may not reach"), "{u}: {e}");
        }
        for u in [
            "https://example.com/x",
            "http://localhost:1/",
            "http://8.8.8.8/",
        ] {
            assert!(check_url(&p, u).is_ok(), "{u}");
        }
    }
}
