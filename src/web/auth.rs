//! Access control of the web address: a bearer token and/or HTTP basic auth (required when
//! the dashboard listens beyond loopback), and the CSRF guard every write goes through.
//!
//! CSRF: browsers send `Sec-Fetch-Site` (and `Origin`) with every POST. [`csrf_guard`] refuses
//! an unsafe method (POST, PUT, PATCH, DELETE) unless the request comes from the dashboard's
//! own origin. Requests with neither header are not from a browser (curl, scripts), so no
//! browser can be tricked into sending them with the user's credentials.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;

/// Credentials the web address accepts. Neither set: no authentication (loopback only).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WebAuth {
    /// `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// `Authorization: Basic …` with this user and password (browsers prompt for it).
    pub basic: Option<(String, String)>,
}

/// Paths open without credentials: probes must work for orchestrators.
const OPEN_PATHS: [&str; 2] = ["/healthz", "/readyz"];

impl WebAuth {
    pub fn is_enabled(&self) -> bool {
        self.token.is_some() || self.basic.is_some()
    }

    /// `user:password` as given in settings.
    pub fn parse_basic(text: &str) -> Option<(String, String)> {
        let (user, password) = text.split_once(':')?;
        (!user.is_empty() && !password.is_empty()).then(|| (user.to_string(), password.to_string()))
    }

    /// Whether the request's `Authorization` header carries accepted credentials.
    pub fn allows(&self, headers: &HeaderMap) -> bool {
        if !self.is_enabled() {
            return true;
        }
        let Some(value) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            return false;
        };
        let (scheme, credentials) = value.split_once(' ').unwrap_or((value, ""));
        let credentials = credentials.trim();
        if scheme.eq_ignore_ascii_case("bearer")
            && let Some(token) = &self.token
        {
            return constant_time_eq(credentials.as_bytes(), token.as_bytes());
        }
        if scheme.eq_ignore_ascii_case("basic")
            && let Some((user, password)) = &self.basic
        {
            let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(credentials) else {
                return false;
            };
            let expected = format!("{user}:{password}");
            return constant_time_eq(&decoded, expected.as_bytes());
        }
        false
    }
}

/// Compares without an early exit, so timing does not reveal how much of a secret matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u8 | u8::from(a.len() != b.len());
    for (i, x) in a.iter().enumerate() {
        diff |= x ^ b.get(i % b.len().max(1)).copied().unwrap_or(0);
    }
    diff == 0
}

/// Middleware: 401 unless the request carries accepted credentials (probes excepted).
pub async fn require_auth(
    State(auth): State<Arc<WebAuth>>,
    request: Request,
    next: Next,
) -> Response {
    if !auth.is_enabled()
        || OPEN_PATHS.contains(&request.uri().path())
        || auth.allows(request.headers())
    {
        return next.run(request).await;
    }
    crate::self_metrics::web_refused("auth");
    let challenge = if auth.basic.is_some() {
        "Basic realm=\"redline\", charset=\"UTF-8\""
    } else {
        "Bearer realm=\"redline\""
    };
    (
        StatusCode::UNAUTHORIZED,
        [(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        )],
        "authentication required\n",
    )
        .into_response()
}

/// Whether an unsafe request comes from the dashboard's own origin. Safe methods always pass.
pub fn same_origin(method: &Method, headers: &HeaderMap) -> Result<(), &'static str> {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = get("sec-fetch-site") {
        return match site {
            "same-origin" | "none" => Ok(()),
            _ => Err("cross-site request refused (Sec-Fetch-Site)"),
        };
    }
    match (get("origin"), get("host")) {
        (Some(origin), Some(host)) => {
            let origin_host = origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"))
                .unwrap_or("");
            if origin_host.eq_ignore_ascii_case(host) {
                Ok(())
            } else {
                Err("cross-origin request refused (Origin does not match Host)")
            }
        }
        (Some(_), None) => Err("request without Host refused"),
        // No browser header at all: not a browser, so not a forged request.
        (None, _) => Ok(()),
    }
}

/// Middleware: 403 for unsafe methods from another origin (CSRF).
pub async fn csrf_guard(request: Request, next: Next) -> Response {
    match same_origin(request.method(), request.headers()) {
        Ok(()) => next.run(request).await,
        Err(reason) => {
            crate::self_metrics::web_refused("csrf");
            (StatusCode::FORBIDDEN, format!("{reason}\n")).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        map
    }

    #[test]
    fn tokens_and_basic_credentials_are_checked() {
        let auth = WebAuth {
            token: Some("s3cret".into()),
            basic: Some(("ops".into(), "pa:ss".into())),
        };
        assert!(auth.allows(&headers(&[("authorization", "Bearer s3cret")])));
        assert!(!auth.allows(&headers(&[("authorization", "Bearer s3cre")])));
        assert!(!auth.allows(&headers(&[("authorization", "Bearer s3cret2")])));
        // ops:pa:ss
        assert!(auth.allows(&headers(&[("authorization", "Basic b3BzOnBhOnNz")])));
        assert!(!auth.allows(&headers(&[("authorization", "Basic b3BzOnBhc3M=")])));
        assert!(!auth.allows(&headers(&[("authorization", "Basic !!!")])));
        assert!(!auth.allows(&HeaderMap::new()));
        assert!(WebAuth::default().allows(&HeaderMap::new()));
    }

    #[test]
    fn basic_settings_need_a_user_and_a_password() {
        assert_eq!(
            WebAuth::parse_basic("ops:pa:ss"),
            Some(("ops".into(), "pa:ss".into()))
        );
        assert_eq!(WebAuth::parse_basic("ops"), None);
        assert_eq!(WebAuth::parse_basic(":x"), None);
    }

    #[test]
    fn cross_site_writes_are_refused() {
        let post = Method::POST;
        assert!(same_origin(&post, &headers(&[("sec-fetch-site", "same-origin")])).is_ok());
        assert!(same_origin(&post, &headers(&[("sec-fetch-site", "cross-site")])).is_err());
        assert!(same_origin(&post, &headers(&[("sec-fetch-site", "same-site")])).is_err());
        let same = headers(&[
            ("origin", "http://127.0.0.1:9900"),
            ("host", "127.0.0.1:9900"),
        ]);
        assert!(same_origin(&post, &same).is_ok());
        let evil = headers(&[
            ("origin", "http://evil.example"),
            ("host", "127.0.0.1:9900"),
        ]);
        assert!(same_origin(&post, &evil).is_err());
        assert!(same_origin(&Method::DELETE, &evil).is_err());
        assert!(same_origin(&Method::GET, &evil).is_ok());
        assert!(same_origin(&post, &headers(&[("origin", "null"), ("host", "a")])).is_err());
        // curl and scripts send neither header.
        assert!(same_origin(&post, &HeaderMap::new()).is_ok());
    }
}
