//! The outbound address policy: which addresses kira may connect to for a
//! URL a company chose (its HTTP tools, its MCP servers over streamable
//! HTTP, its contact's webhook). Without the operator's leave, such a URL
//! never reaches loopback, private (RFC 1918, fc00::/7), shared (RFC
//! 6598), link-local (169.254/16 with the cloud metadata address,
//! fe80::/10), unspecified, multicast or broadcast addresses, so a company
//! cannot make kira call kira itself, its database, or the host's
//! neighbours. The rule is checked on every address a name resolves to,
//! each time kira connects (the engine's resolver), not on the URL's text.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use crate::ValidationError;

/// What the operator allows beyond the public internet (`[tools]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboundPolicy {
    /// Every address allowed (a deployment whose tools live on a private
    /// network, or tests against loopback peers).
    pub allow_private_networks: bool,
    /// Host names (lowercase) whose addresses are not checked.
    pub allow_hosts: BTreeSet<String>,
    /// Networks allowed although in a forbidden range.
    pub allow_nets: Vec<IpNet>,
    /// The admin's infrastructure and domain tools are not checked.
    pub trust_shared_tools: bool,
}

/// An IP network: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// `10.0.0.0/8`, `fd00::/8`, or one address (`192.168.1.7`).
    pub fn parse(s: &str) -> Option<IpNet> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().ok()?, p.parse::<u8>().ok()?),
            None => {
                let a = s.parse::<IpAddr>().ok()?;
                (a, if a.is_ipv4() { 32 } else { 128 })
            }
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(IpNet { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// An IPv4 address written as IPv6 (`::ffff:127.0.0.1`, `::127.0.0.1`) as
/// the IPv4 address it reaches.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                // IPv4-compatible (deprecated, still routed by some stacks);
                // `::` and `::1` are themselves.
                if s[..6].iter().all(|x| *x == 0) && u128::from(v6) > 1 {
                    IpAddr::V4(Ipv4Addr::from(u32::try_from(u128::from(v6)).unwrap_or(0)))
                } else {
                    ip
                }
            }
        },
        v4 => v4,
    }
}

/// The forbidden range `ip` is in, named for a message; None: public.
pub fn forbidden_range(ip: IpAddr) -> Option<&'static str> {
    match canonical(ip) {
        IpAddr::V4(a) => {
            let o = a.octets();
            if a.is_loopback() {
                Some("a loopback address")
            } else if a.is_private() {
                Some("a private address (RFC 1918)")
            } else if a.is_link_local() {
                Some("a link-local address (169.254.0.0/16, the cloud metadata service's)")
            } else if o[0] == 0 {
                Some("an unspecified address (0.0.0.0/8)")
            } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
                Some("a shared address (100.64.0.0/10, RFC 6598)")
            } else if a.is_multicast() || a.is_broadcast() || o[0] >= 240 {
                Some("a multicast, broadcast or reserved address")
            } else {
                None
            }
        }
        IpAddr::V6(a) => {
            let first = a.segments()[0];
            if a.is_loopback() {
                Some("a loopback address")
            } else if a.is_unspecified() {
                Some("an unspecified address")
            } else if (first & 0xfe00) == 0xfc00 {
                Some("a private address (fc00::/7)")
            } else if (first & 0xffc0) == 0xfe80 {
                Some("a link-local address (fe80::/10)")
            } else if a.is_multicast() {
                Some("a multicast address")
            } else if first == 0x64 && a.segments()[1] == 0xff9b {
                // NAT64 reaches the IPv4 address in the last 32 bits.
                let low = u32::try_from(u128::from(a) & 0xffff_ffff).unwrap_or(0);
                forbidden_range(IpAddr::V4(Ipv4Addr::from(low)))
            } else {
                None
            }
        }
    }
}

impl OutboundPolicy {
    /// Whether `host` (a name as in a URL) is allowed by name.
    pub fn allows_host(&self, host: &str) -> bool {
        self.allow_private_networks
            || self
                .allow_hosts
                .contains(host.trim_end_matches('.').to_ascii_lowercase().as_str())
    }

    /// Ok when kira may connect to `ip` for `host`; else why not.
    pub fn check(&self, host: &str, ip: IpAddr) -> Result<(), String> {
        if self.allows_host(host) || self.allow_nets.iter().any(|n| n.contains(ip)) {
            return Ok(());
        }
        match forbidden_range(ip) {
            None => Ok(()),
            Some(range) => Err(if host.parse::<IpAddr>().is_ok() || host.starts_with('[') {
                format!(
                    "{ip} is {range}, which a company's URL may not reach \
                     (the operator may allow it: [tools] allow_private_networks or allow_outbound)"
                )
            } else {
                format!(
                    "{host} resolves to {ip}, {range}, which a company's URL may not reach \
                     (the operator may allow it: [tools] allow_private_networks or allow_outbound)"
                )
            }),
        }
    }

    /// `[tools] allow_outbound`'s entries: networks (`10.0.0.0/8`, one
    /// address) or host names.
    pub fn with_allowed(
        mut self,
        field: &str,
        entries: &[String],
    ) -> Result<Self, ValidationError> {
        for (i, e) in entries.iter().enumerate() {
            let e = e.trim();
            if let Some(net) = IpNet::parse(e) {
                self.allow_nets.push(net);
            } else if !e.is_empty()
                && !e.contains('/')
                && e.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            {
                self.allow_hosts
                    .insert(e.trim_end_matches('.').to_ascii_lowercase());
            } else {
                return Err(ValidationError::new(
                    format!("{field}.{i}"),
                    "must be a network (10.0.0.0/8), an address or a host name",
                ));
            }
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn the_forbidden_ranges_and_their_ipv6_spellings() {
        for a in [
            "127.0.0.1",
            "127.8.9.10",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "febf::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "::10.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "ff02::1",
        ] {
            assert!(forbidden_range(ip(a)).is_some(), "{a} is forbidden");
        }
        for a in [
            "8.8.8.8",
            "172.32.0.1",
            "172.15.255.255",
            "100.128.0.1",
            "169.255.0.1",
            "2606:4700::1111",
            "fec0::1",
            "::ffff:8.8.8.8",
        ] {
            assert_eq!(forbidden_range(ip(a)), None, "{a} is public");
        }
    }

    #[test]
    fn the_operator_allows_networks_hosts_or_everything() {
        let strict = OutboundPolicy::default();
        let e = strict
            .check("localhost", ip("127.0.0.1"))
            .expect_err("refused");
        assert!(
            e.contains("localhost resolves to 127.0.0.1, a loopback address"),
            "{e}"
        );
        let e = strict
            .check("169.254.169.254", ip("169.254.169.254"))
            .expect_err("refused");
        assert!(e.starts_with("169.254.169.254 is a link-local"), "{e}");
        assert!(strict.check("example.com", ip("93.184.216.34")).is_ok());

        let p = OutboundPolicy::default()
            .with_allowed(
                "tools.allow_outbound",
                &[
                    "10.20.0.0/16".into(),
                    "Tools.Internal.".into(),
                    "fd00::7".into(),
                ],
            )
            .expect("valid");
        assert!(p.check("a", ip("10.20.3.4")).is_ok());
        assert!(p.check("a", ip("::ffff:10.20.3.4")).is_ok());
        assert!(p.check("a", ip("10.21.0.1")).is_err());
        assert!(p.check("tools.internal", ip("127.0.0.1")).is_ok());
        assert!(p.check("a", ip("fd00::7")).is_ok());
        assert!(p.check("a", ip("fd00::8")).is_err());
        let bad = OutboundPolicy::default()
            .with_allowed(
                "tools.allow_outbound",
                &["ok.example".into(), "10.0.0.0/33".into()],
            )
            .expect_err("refused");
        assert_eq!(bad.field, "tools.allow_outbound.1");

        let open = OutboundPolicy {
            allow_private_networks: true,
            ..OutboundPolicy::default()
        };
        assert!(open.check("localhost", ip("127.0.0.1")).is_ok());
    }

    #[test]
    fn a_network_contains_exactly_its_addresses() {
        let n = IpNet::parse("192.168.4.0/22").expect("net");
        assert!(n.contains(ip("192.168.7.255")));
        assert!(!n.contains(ip("192.168.8.0")));
        assert!(
            IpNet::parse("0.0.0.0/0")
                .expect("net")
                .contains(ip("1.2.3.4"))
        );
        assert!(!IpNet::parse("::/0").expect("net").contains(ip("1.2.3.4")));
        assert_eq!(IpNet::parse("1.2.3.4/40"), None);
        assert_eq!(IpNet::parse("nope/8"), None);
    }
}
