//! The client address of an HTTP request, for the admin API and the MCP
//! endpoint alike. `X-Forwarded-For` is ignored unless the TCP peer is a
//! trusted proxy (`gatehouse serve --trusted-proxy CIDR`); then the client is
//! the right-most entry that is not itself a trusted proxy. Anyone can write
//! that header, so trusting it from anywhere else would let a caller pick the
//! address that token CIDRs and policies check.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;
use ipnet::IpNet;

/// The address a request is attributed to (token CIDRs, policies, audit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

impl std::fmt::Display for ClientIp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Networks whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Arc<Vec<IpNet>>);

impl TrustedProxies {
    pub fn new(nets: Vec<IpNet>) -> Self {
        Self(Arc::new(nets))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|n| n.contains(&ip))
    }

    /// The client address of a request that arrived from `peer`.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let mut addr = canonical(peer);
        if !self.trusts(addr) {
            return addr;
        }
        let entries: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        // Walk from the nearest hop outwards while the hop we stand on is a
        // trusted proxy; an unreadable entry stops the walk.
        for entry in entries.iter().rev() {
            if !self.trusts(addr) {
                break;
            }
            match parse_entry(entry) {
                Some(ip) => addr = ip,
                None => break,
            }
        }
        addr
    }
}

/// `::ffff:a.b.c.d` is `a.b.c.d`.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`, `[2001:db8::1]:443`.
fn parse_entry(s: &str) -> Option<IpAddr> {
    if s.len() > 64 {
        return None;
    }
    s.parse::<IpAddr>().ok().or_else(|| s.parse::<SocketAddr>().ok().map(|a| a.ip())).map(canonical)
}

/// Middleware: compute the client address once and put it in the request's
/// extensions, where [`ClientIp`] is extracted from.
pub async fn resolve(
    State(trusted): State<TrustedProxies>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut req: Request,
    next: Next,
) -> Response {
    let ip = trusted.client_ip(peer.ip(), req.headers());
    req.extensions_mut().insert(ClientIp(ip));
    next.run(req).await
}

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        if let Some(ip) = parts.extensions.get::<ClientIp>() {
            return Ok(*ip);
        }
        // Without the middleware (tests of a bare router): the TCP peer.
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| canonical(c.0.ip()));
        Ok(ClientIp(peer.unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xff(v: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for x in v {
            h.append("x-forwarded-for", x.parse().unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_only_from_trusted_proxies() {
        let none = TrustedProxies::default();
        assert_eq!(none.client_ip(ip("127.0.0.1"), &xff(&["10.9.9.9"])), ip("127.0.0.1"));
        let lo = TrustedProxies::new(vec!["127.0.0.1/32".parse().unwrap(), "10.0.0.0/8".parse().unwrap()]);
        assert_eq!(lo.client_ip(ip("127.0.0.1"), &xff(&["203.0.113.7"])), ip("203.0.113.7"));
        // right-most entry that is not a trusted proxy; spoofed left entries ignored
        assert_eq!(lo.client_ip(ip("127.0.0.1"), &xff(&["1.1.1.1, 203.0.113.7, 10.1.2.3"])), ip("203.0.113.7"));
        assert_eq!(lo.client_ip(ip("127.0.0.1"), &xff(&["1.1.1.1", "203.0.113.7:5555"])), ip("203.0.113.7"));
        // all trusted: the left-most
        assert_eq!(lo.client_ip(ip("127.0.0.1"), &xff(&["10.9.9.9"])), ip("10.9.9.9"));
        // garbage stops the walk at the last hop we trust
        assert_eq!(lo.client_ip(ip("127.0.0.1"), &xff(&["1.1.1.1, garbage"])), ip("127.0.0.1"));
        // no header
        assert_eq!(lo.client_ip(ip("127.0.0.1"), &HeaderMap::new()), ip("127.0.0.1"));
        // an untrusted peer's header is ignored
        assert_eq!(lo.client_ip(ip("192.0.2.1"), &xff(&["10.9.9.9"])), ip("192.0.2.1"));
        // IPv4-mapped peers count as IPv4
        assert_eq!(lo.client_ip(ip("::ffff:127.0.0.1"), &xff(&["[2001:db8::1]:443"])), ip("2001:db8::1"));
    }
}
