//! What redline reads from the OpenTelemetry semantic conventions beyond attribute names: HTTP
//! request methods, normalised as the conventions ask.

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
