//! The read side of the fuzz run: every page and API read over what hostile exports left in
//! the store, and reads with hostile query parameters. A read may refuse (400, 404) but never
//! fail (5xx), hang, or break the connection.

use std::time::Duration;

use proptest::prelude::*;
use reqwest::Url;
use serde_json::Value;

use super::otlp::{SERVICES, hostile_text_up_to};

/// Longest hostile parameter: URLs over 64 KiB cannot be sent at all.
const LONGEST_PARAMETER: usize = 800;

/// How long one read may take before it counts as hung.
const READ_TIMEOUT: Duration = Duration::from_secs(20);

/// Reads `url` and returns its status and body, failing on a 5xx, a hang or a broken answer.
pub async fn read(client: &reqwest::Client, url: Url) -> Result<(u16, String), String> {
    let shown = url.as_str().chars().take(300).collect::<String>();
    let response = tokio::time::timeout(READ_TIMEOUT, client.get(url.clone()).send())
        .await
        .map_err(|_| format!("GET {shown} took over {READ_TIMEOUT:?}"))?
        .map_err(|e| format!("GET {shown}: {e:?}"))?;
    let status = response.status().as_u16();
    let body = response
        .text()
        .await
        .map_err(|e| format!("GET {shown}: body: {e}"))?;
    if status >= 500 {
        return Err(format!("GET {shown}: {status}: {body:.400}"));
    }
    Ok((status, body))
}

fn url(base: &Url, segments: &[&str], query: &[(&str, &str)]) -> Url {
    let mut url = base.clone();
    url.path_segments_mut()
        .expect("http base")
        .clear()
        .extend(segments);
    if !query.is_empty() {
        url.query_pairs_mut().extend_pairs(query);
    }
    url
}

/// Strings found under `key` anywhere in `value`, at most `limit`.
fn strings_under(value: &Value, key: &str, limit: usize, found: &mut Vec<String>) {
    if found.len() >= limit {
        return;
    }
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match v {
                    Value::String(s) if k == key && !found.contains(s) => found.push(s.clone()),
                    _ => strings_under(v, key, limit, found),
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                strings_under(item, key, limit, found);
            }
        }
        _ => {}
    }
}

/// Reads `url` and requires a 200: it names something the store listed.
async fn read_ok(client: &reqwest::Client, url: Url) -> Result<String, String> {
    let shown = url.as_str().chars().take(300).collect::<String>();
    match read(client, url).await? {
        (200, body) => Ok(body),
        (status, body) => Err(format!("GET {shown}: {status}: {body:.400}")),
    }
}

async fn json(client: &reqwest::Client, url: Url) -> Result<Value, String> {
    let shown = url.as_str().chars().take(300).collect::<String>();
    let body = read_ok(client, url).await?;
    serde_json::from_str(&body).map_err(|e| format!("GET {shown}: not JSON: {e}"))
}

/// The endpoint pages a service page links to, as written in its HTML.
fn endpoint_links(html: &str) -> impl Iterator<Item = String> + '_ {
    html.split("href=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .filter(|href| href.starts_with("/services/") && href.contains("/endpoints?"))
        .map(unescape_html)
}

/// An attribute value as the browser reads it: the entities askama writes, in one pass.
fn unescape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let entity = rest.find(';').map(|end| &rest[1..end]);
        let character = match entity {
            Some("amp" | "#38") => Some('&'),
            Some("quot" | "#34") => Some('"'),
            Some("#39" | "#x27") => Some('\''),
            Some("lt" | "#60") => Some('<'),
            Some("gt" | "#62") => Some('>'),
            _ => None,
        };
        match (character, entity) {
            (Some(character), Some(entity)) => {
                out.push(character);
                rest = &rest[entity.len() + 2..];
            }
            _ => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Reads every page and API answer for what is stored: the overview, each service the store
/// lists (the pool's first), its endpoints, metrics and kept traces, dashboards and alerts.
/// Everything listed must open (200). Returns the number of reads.
pub async fn visit_everything(client: &reqwest::Client, base: &Url) -> Result<usize, String> {
    let reads = std::cell::Cell::new(0);
    let open = async |url: Url| {
        reads.set(reads.get() + 1);
        read_ok(client, url).await
    };
    let page = async |segments: &[&str], query: &[(&str, &str)]| {
        open(url(base, segments, query)).await.map(|_| ())
    };
    let fixed: [&[&str]; 11] = [
        &[""],
        &["traces"],
        &["logs"],
        &["api", "v1", "logs"],
        &["metrics-explorer"],
        &["dashboards"],
        &["dashboards", "fuzz"],
        &["alerts"],
        &["metrics"],
        &["api", "v1", "alerts"],
        &["api", "v1", "alerts", "history"],
    ];
    for path in fixed {
        page(path, &[]).await?;
    }
    // Ready or not (a spent budget is a 503), it answers.
    read(client, url(base, &["readyz"], &[])).await?;

    let listed = json(
        client,
        url(base, &["api", "v1", "services"], &[("since", "7h")]),
    )
    .await?;
    let mut found = Vec::new();
    strings_under(&listed, "service", 64, &mut found);
    let (mut services, others): (Vec<String>, Vec<String>) = found
        .into_iter()
        .partition(|s| SERVICES.contains(&s.as_str()));
    services.extend(others.into_iter().take(8));
    for service in &services {
        let s = service.as_str();
        let service_page = open(url(base, &["services", s], &[])).await?;
        for link in endpoint_links(&service_page).take(6) {
            open(base.join(&link).map_err(|e| format!("{link}: {e}"))?).await?;
        }
        page(&["services", s], &[("range", "6h")]).await?;
        page(&["traces"], &[("service", s)]).await?;
        page(&["logs"], &[("service", s), ("severity_min", "WARN")]).await?;
        let logs = json(
            client,
            url(
                base,
                &["api", "v1", "logs"],
                &[("service", s), ("since", "7h"), ("limit", "20")],
            ),
        )
        .await?;
        let mut log_traces = Vec::new();
        strings_under(&logs, "trace_id", 3, &mut log_traces);
        for id in &log_traces {
            page(&["logs"], &[("trace_id", id)]).await?;
            let text = [("trace_id", id.as_str()), ("q", "<script>")];
            page(&["api", "v1", "logs"], &text).await?;
        }
        page(&["metrics-explorer"], &[("service", s)]).await?;
        let endpoints = json(
            client,
            url(
                base,
                &["api", "v1", "endpoints"],
                &[("service", s), ("since", "7h")],
            ),
        )
        .await?;
        let Some(list) = endpoints["endpoints"].as_array() else {
            return Err(format!("no endpoint list for {s:?}: {endpoints}"));
        };
        for endpoint in list.iter().take(6) {
            let method = endpoint["method"].as_str().unwrap_or_default();
            let route = endpoint["route"].as_str().unwrap_or_default();
            let filter = [("method", method), ("route", route)];
            page(&["services", s, "endpoints"], &filter).await?;
            for stat in ["p99", "error_rate", "rate"] {
                let query = [
                    ("service", s),
                    ("method", method),
                    ("route", route),
                    ("stat", stat),
                ];
                page(&["api", "v1", "series"], &query).await?;
            }
        }
        let metrics = json(
            client,
            url(base, &["api", "v1", "metrics"], &[("service", s)]),
        )
        .await?;
        let mut names = Vec::new();
        strings_under(&metrics, "name", 6, &mut names);
        for name in &names {
            page(&["metrics-explorer"], &[("service", s), ("name", name)]).await?;
            for agg in ["p99", "rate", "last"] {
                let query = [
                    ("service", s),
                    ("name", name),
                    ("agg", agg),
                    ("since", "7h"),
                ];
                page(&["api", "v1", "metrics", "query"], &query).await?;
            }
            let grouped = [("service", s), ("name", name), ("group_by", "http.route")];
            page(&["api", "v1", "metrics", "query"], &grouped).await?;
        }
        let traces = json(
            client,
            url(
                base,
                &["api", "v1", "traces"],
                &[("service", s), ("since", "7h")],
            ),
        )
        .await?;
        let mut ids = Vec::new();
        strings_under(&traces, "trace_id", 4, &mut ids);
        for id in &ids {
            page(&["traces", id], &[]).await?;
            page(&["api", "v1", "traces", id], &[]).await?;
        }
    }
    Ok(reads.get())
}

/// The pages and API reads, with the parameters each understands.
const READS: &[(&str, &[&str])] = &[
    ("/", &["range", "from", "to", "refresh", "sort", "dir"]),
    (
        "/services/checkout",
        &["range", "from", "to", "sort", "dir", "refresh"],
    ),
    (
        "/services/checkout/endpoints",
        &["method", "route", "range", "from", "to", "slowest"],
    ),
    (
        "/traces",
        &[
            "service", "method", "route", "error", "min_ms", "range", "from", "to", "sort", "limit",
        ],
    ),
    ("/traces/0123456789abcdef0123456789abcdef", &["range"]),
    (
        "/logs",
        &[
            "service",
            "severity_min",
            "trace_id",
            "q",
            "range",
            "from",
            "to",
            "refresh",
        ],
    ),
    (
        "/metrics-explorer",
        &[
            "service", "name", "agg", "group_by", "range", "from", "to", "step",
        ],
    ),
    ("/dashboards/fuzz", &["range", "from", "to", "refresh"]),
    ("/alerts", &["silence", "alertname", "severity", "filter"]),
    ("/api/v1/services", &["since", "from", "to"]),
    ("/api/v1/endpoints", &["service", "since", "from", "to"]),
    (
        "/api/v1/series",
        &[
            "service", "method", "route", "stat", "step", "since", "from", "to",
        ],
    ),
    ("/api/v1/metrics", &["service"]),
    (
        "/api/v1/metrics/query",
        &[
            "service",
            "name",
            "agg",
            "group_by",
            "step",
            "since",
            "from",
            "to",
            "attr.http.route",
        ],
    ),
    (
        "/api/v1/traces",
        &[
            "service",
            "method",
            "route",
            "error",
            "min_duration_ms",
            "limit",
            "sort",
            "since",
            "from",
            "to",
        ],
    ),
    (
        "/api/v1/logs",
        &[
            "service",
            "severity_min",
            "trace_id",
            "q",
            "limit",
            "since",
            "from",
            "to",
        ],
    ),
    (
        "/api/v1/alerts/history",
        &["since", "from", "to", "limit", "alertname"],
    ),
];

/// Values a query parameter could be given: numbers at and past every limit, durations from
/// nothing to longer than time, dates from before 1970 to after 9999, and hostile text.
fn parameter_value() -> BoxedStrategy<String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "", "0", "1", "-1", "5m", "1h", "7d", "0s", "1ns", "-5m", "1000000000y", "584542046y",
            "9223372036854775807", "-9223372036854775808", "18446744073709551616", "1e400",
            "NaN", "inf", "-inf", "0.5", "1e-300", "p99", "p0", "p100", "rate", "error_rate",
            "avg", "true", "false", "slowest", "newest", "asc", "desc", "1h,2h", "http.route,,",
            "GET", "/api/{id}", "checkout", "253402300800000", "-62135596800000", "WARN",
            "error", "24", "25", "0123456789abcdef0123456789ABCDEF", "01010101010101010101010101010101",
            "1970-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "10000-01-01T00:00:00Z",
        ]).prop_map(str::to_string),
        1 => any::<i64>().prop_map(|n| n.to_string()),
        1 => hostile_text_up_to(LONGEST_PARAMETER),
    ]
    .boxed()
}

/// One read with hostile parameters: a path, then (name, value) pairs mostly among the names
/// it understands, sometimes unknown or repeated.
pub fn hostile_read() -> BoxedStrategy<(String, Vec<(String, String)>)> {
    prop::sample::select(READS)
        .prop_flat_map(|(path, names)| {
            let name = prop_oneof![
                6 => prop::sample::select(names).prop_map(str::to_string),
                1 => hostile_text_up_to(LONGEST_PARAMETER),
            ];
            (
                Just(path.to_string()),
                prop::collection::vec((name, parameter_value()), 0..5),
            )
        })
        .boxed()
}

/// Reads `path` with `parameters` (percent-encoded as a browser would).
pub async fn read_with(
    client: &reqwest::Client,
    base: &Url,
    path: &str,
    parameters: &[(String, String)],
) -> Result<u16, String> {
    let mut url = base.join(path).expect("relative path");
    if !parameters.is_empty() {
        url.query_pairs_mut().extend_pairs(parameters);
    }
    read(client, url).await.map(|(status, _)| status)
}
