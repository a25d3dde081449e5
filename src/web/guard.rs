//! What every request and response of the web address goes through before any route: the Host
//! allowlist (against DNS rebinding) and the security headers (against framing, MIME sniffing
//! and injected markup).
//!
//! DNS rebinding: a page on `evil.example` re-points its name at 127.0.0.1 and then reads the
//! dashboard as its own origin; the browser still sends `Host: evil.example`. So a request is
//! served only when its Host names this server: an IP address (a rebinding attack needs a DNS
//! name, and a page whose origin is an IP address can only be ours), `localhost`, the
//! `public_url` host, or a name in `allowed_hosts`. The name decides; the port does not (SSH
//! tunnels and proxies change it, an attacker cannot choose it to pass).

use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::uri::Authority;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::self_metrics;

/// One entry of `allowed_hosts`: `*` (any Host), a name (`redline.example.com`), a name and a
/// port (`redline.example.com:8443`), or a domain and its subdomains (`.example.com`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostRule {
    Any,
    Name { name: String, port: Option<u16> },
    Domain { domain: String, port: Option<u16> },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{entry:?} is not a host name like redline.example.com, redline.example.com:8443, .example.com or *"
)]
pub struct HostRuleError {
    pub entry: String,
}

impl FromStr for HostRule {
    type Err = HostRuleError;

    fn from_str(text: &str) -> Result<HostRule, HostRuleError> {
        let entry = text.trim();
        if entry == "*" {
            return Ok(HostRule::Any);
        }
        let error = || HostRuleError {
            entry: text.to_string(),
        };
        let (domain, rest) = match entry.strip_prefix('.') {
            Some(rest) => (true, rest),
            None => (false, entry),
        };
        let host = HostValue::parse(rest).ok_or_else(error)?;
        match (host.name, domain) {
            (HostName::Name(name), false) => Ok(HostRule::Name {
                name,
                port: host.port,
            }),
            (HostName::Name(domain), true) => Ok(HostRule::Domain {
                domain,
                port: host.port,
            }),
            // IP addresses always pass; listing one is a mistake worth pointing out.
            (HostName::Ip(_), _) => Err(error()),
        }
    }
}

impl HostRule {
    fn allows(&self, name: &str, port: Option<u16>) -> bool {
        let port_ok = |wanted: &Option<u16>| wanted.is_none() || *wanted == port;
        match self {
            HostRule::Any => true,
            HostRule::Name { name: n, port: p } => n == name && port_ok(p),
            HostRule::Domain { domain: d, port: p } => {
                let sub = name
                    .strip_suffix(d.as_str())
                    .is_some_and(|head| head.is_empty() || head.ends_with('.'));
                sub && port_ok(p)
            }
        }
    }
}

/// The Host names the web address answers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHosts {
    rules: Vec<HostRule>,
}

impl AllowedHosts {
    /// `localhost`, the host of `public_url` and `configured`.
    pub fn new(configured: &[HostRule], public_url: Option<&str>) -> AllowedHosts {
        let mut rules = vec![HostRule::Name {
            name: "localhost".into(),
            port: None,
        }];
        if let Some(name) = public_url.and_then(url_host) {
            rules.push(HostRule::Name { name, port: None });
        }
        rules.extend(configured.iter().cloned());
        AllowedHosts { rules }
    }

    /// Whether a request with this Host header value may be served.
    pub fn allows(&self, host: &str) -> bool {
        let Some(host) = HostValue::parse(host) else {
            return self.rules.contains(&HostRule::Any);
        };
        match host.name {
            HostName::Ip(_) => true,
            HostName::Name(name) => self.rules.iter().any(|rule| rule.allows(&name, host.port)),
        }
    }
}

/// The host of an `http(s)://host[:port]/…` URL (a name lower-cased, or an IP address);
/// `None` for a value that is not such a URL.
pub fn url_host(url: &str) -> Option<String> {
    let uri: axum::http::Uri = url.parse().ok()?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return None;
    }
    Some(match HostValue::parse(uri.authority()?.as_str())?.name {
        HostName::Name(name) => name,
        HostName::Ip(ip) => ip.to_string(),
    })
}

enum HostName {
    Ip(IpAddr),
    /// Lower-cased, without a trailing dot.
    Name(String),
}

/// A Host header value (`name`, `name:port`, `[v6]:port`), parsed.
struct HostValue {
    name: HostName,
    port: Option<u16>,
}

impl HostValue {
    fn parse(text: &str) -> Option<HostValue> {
        if text.is_empty() || text.contains(['@', '/', '?', '#']) {
            return None;
        }
        let authority = Authority::from_str(text).ok()?;
        let host = authority.host();
        let port = match authority.as_str().strip_prefix(host)? {
            "" => None,
            rest => Some(rest.strip_prefix(':')?.parse::<u16>().ok()?),
        };
        let bare = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Some(HostValue {
                name: HostName::Ip(ip),
                port,
            });
        }
        let name = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        let valid = !name.is_empty()
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        valid.then_some(HostValue {
            name: HostName::Name(name),
            port,
        })
    }
}

/// Middleware: 421 Misdirected Request unless every Host the request names (the header, and
/// the URI's authority in absolute form or HTTP/2) is allowed; 400 without any Host.
pub async fn check_host(
    State(hosts): State<Arc<AllowedHosts>>,
    request: Request,
    next: Next,
) -> Response {
    let header_host = request.headers().get(header::HOST);
    let uri_host = request.uri().authority().map(Authority::as_str);
    if header_host.is_none() && uri_host.is_none() {
        self_metrics::web_refused("no_host");
        return refusal(
            StatusCode::BAD_REQUEST,
            "a Host header is required\n".into(),
        );
    }
    let header_host = header_host.map(|v| v.to_str().unwrap_or("\u{fffd}"));
    let refused = [header_host, uri_host]
        .into_iter()
        .flatten()
        .find(|host| !hosts.allows(host));
    match refused {
        None => next.run(request).await,
        Some(host) => {
            self_metrics::web_refused("host");
            let shown: String = host.chars().take(100).collect();
            refusal(
                StatusCode::MISDIRECTED_REQUEST,
                format!(
                    "redline does not answer to the host {shown:?} (a defence against DNS \
                     rebinding); if this is how you reach it, add the name to allowed_hosts \
                     (--allowed-hosts) or set public_url\n"
                ),
            )
        }
    }
}

fn refusal(status: StatusCode, message: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        message,
    )
        .into_response()
}

/// The security headers of every response, unless a handler set its own.
const SECURITY_HEADERS: [(header::HeaderName, &str); 7] = [
    (
        header::CONTENT_SECURITY_POLICY,
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
         img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; \
         form-action 'self'",
    ),
    (header::X_FRAME_OPTIONS, "DENY"),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::REFERRER_POLICY, "same-origin"),
    (
        header::HeaderName::from_static("cross-origin-opener-policy"),
        "same-origin",
    ),
    (
        header::HeaderName::from_static("cross-origin-resource-policy"),
        "same-origin",
    ),
    (
        header::HeaderName::from_static("permissions-policy"),
        "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
    ),
];

/// Middleware: headers that keep injected markup inert even if escaping ever failed (no inline
/// or foreign scripts), forbid framing (clickjacking) and MIME sniffing, and keep other sites
/// from reading or embedding any answer — on pages, the API, assets, errors and refusals alike.
pub async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in SECURITY_HEADERS {
        headers
            .entry(name)
            .or_insert(HeaderValue::from_static(value));
    }
    response
}

/// Middleware for a web address served over TLS: browsers that reached it once over https keep
/// to https for a year, so a network attacker cannot downgrade a later visit to clear text.
pub async fn strict_transport_security(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    response
        .headers_mut()
        .entry(header::STRICT_TRANSPORT_SECURITY)
        .or_insert(HeaderValue::from_static("max-age=31536000"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(entries: &[&str]) -> Vec<HostRule> {
        entries.iter().map(|e| e.parse().unwrap()).collect()
    }

    #[test]
    fn defaults_allow_loopback_names_addresses_and_the_public_host() {
        let hosts = AllowedHosts::new(&[], Some("https://Redline.Example.com/base"));
        for ok in [
            "localhost",
            "localhost:9900",
            "LOCALHOST.:8080",
            "127.0.0.1:9900",
            "[::1]:9900",
            "10.1.2.3",
            "redline.example.com",
            "redline.example.com:443",
        ] {
            assert!(hosts.allows(ok), "{ok}");
        }
        for refused in [
            "evil.example",
            "evil.example:9900",
            "localhost.evil.example",
            "redline.example.com.evil.example",
            "sub.redline.example.com",
            "",
            "user@localhost",
            "localhost:99999",
            "local host",
        ] {
            assert!(!hosts.allows(refused), "{refused}");
        }
    }

    #[test]
    fn configured_names_ports_domains_and_any() {
        let hosts = AllowedHosts::new(
            &rules(&["dash.internal:8443", ".corp.example", "Plain.Example"]),
            None,
        );
        assert!(hosts.allows("dash.internal:8443"));
        assert!(!hosts.allows("dash.internal:9900"));
        assert!(!hosts.allows("dash.internal"));
        assert!(hosts.allows("corp.example"));
        assert!(hosts.allows("a.b.corp.example:1"));
        assert!(!hosts.allows("evilcorp.example"));
        assert!(hosts.allows("plain.example:1234"));
        let any = AllowedHosts::new(&rules(&["*"]), None);
        assert!(any.allows("whatever.example"));
        assert!(any.allows("not a host"));
    }

    #[test]
    fn bad_entries_are_named() {
        for bad in ["", "a b", "127.0.0.1", "[::1]:1", "x:port", "http://x", "."] {
            let error = bad.parse::<HostRule>().unwrap_err();
            assert!(error.to_string().contains("is not a host name"), "{bad}");
        }
    }

    #[test]
    fn public_url_hosts() {
        assert_eq!(
            url_host("http://Dash.Example:8080/").as_deref(),
            Some("dash.example")
        );
        assert_eq!(url_host("http://[::1]:9900").as_deref(), Some("::1"));
        assert_eq!(url_host("dash.example"), None);
        assert_eq!(url_host("ftp://dash.example"), None);
    }
}
