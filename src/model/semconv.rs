//! What redline reads of the OpenTelemetry semantic conventions: the attribute and metric names
//! that make a span a request of an endpoint (from `opentelemetry-semantic-conventions`), the
//! deprecated names older instrumentations still send, and HTTP request methods, normalised as
//! the conventions ask.

pub use opentelemetry_semantic_conventions::attribute::{
    ERROR_TYPE, HTTP_REQUEST_METHOD, HTTP_RESPONSE_STATUS_CODE, HTTP_ROUTE, SERVICE_INSTANCE_ID,
    SERVICE_NAME, URL_FULL, URL_PATH,
};
pub use opentelemetry_semantic_conventions::metric::HTTP_SERVER_REQUEST_DURATION;

/// Names the conventions have deprecated that instrumentations still send; redline reads each
/// where its replacement is missing.
#[allow(deprecated)]
pub mod deprecated {
    use opentelemetry_semantic_conventions::attribute as names;

    /// Replaced by `http.request.method`.
    pub const HTTP_METHOD: &str = names::HTTP_METHOD;
    /// Replaced by `http.response.status_code`.
    pub const HTTP_STATUS_CODE: &str = names::HTTP_STATUS_CODE;
    /// Split into `url.path` and `url.query`.
    pub const HTTP_TARGET: &str = names::HTTP_TARGET;
    /// Replaced by `url.full`.
    pub const HTTP_URL: &str = names::HTTP_URL;
    /// Replaced by `rpc.system.name`.
    pub const RPC_SYSTEM: &str = names::RPC_SYSTEM;
}

const KNOWN_METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "QUERY",
];

/// Normalises an HTTP method as the semantic conventions ask: unknown methods become `_OTHER`,
/// so a client cannot mint endpoints by sending made-up methods.
pub fn normalize_method(method: &str) -> String {
    known_method(method).to_string()
}

pub fn known_method(method: &str) -> &'static str {
    KNOWN_METHODS
        .iter()
        .find(|known| known.eq_ignore_ascii_case(method))
        .unwrap_or(&"_OTHER")
}
