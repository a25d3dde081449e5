//! The JSON query API under `/api/v1`. Every handler checks its parameters (an unknown or bad
//! one is a 400 naming it) and asks [`Query`] for the answer.

use std::collections::BTreeMap;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query as QueryString, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use crate::model::log_record::Severity;
use crate::query::{MetricAggregation, MetricQuery, Query, RedStat};
use crate::store::StoreError;
use crate::vocab::{LogFilter, RedFilter, TimeRange, TraceFilter, duration_ms, now_ms};

pub fn router(query: Query) -> Router {
    Router::new()
        .route("/api/v1/services", get(services))
        .route("/api/v1/endpoints", get(endpoints))
        .route("/api/v1/series", get(series))
        .route("/api/v1/metrics", get(metrics))
        .route("/api/v1/metrics/query", get(metric_query))
        .route("/api/v1/traces", get(traces))
        .route("/api/v1/traces/{trace_id}", get(trace))
        .route("/api/v1/logs", get(logs))
        .with_state(query)
}

/// An API error: a status and a JSON body naming the offending parameter, if any.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    parameter: Option<String>,
    message: String,
}

impl ApiError {
    fn bad(parameter: &str, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            parameter: Some(parameter.to_string()),
            message: message.into(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        tracing::error!(%error, "query failed");
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            parameter: None,
            message: "the query failed; see redline's log".into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = match self.parameter {
            Some(parameter) => json!({"error": self.message, "parameter": parameter}),
            None => json!({"error": self.message}),
        };
        (self.status, Json(body)).into_response()
    }
}

type Pairs = QueryString<Vec<(String, String)>>;

/// Query-string parameters, checked against the names a handler accepts.
struct Params(BTreeMap<String, String>);

const RANGE: [&str; 3] = ["since", "from", "to"];

impl Params {
    /// `allowed` names plus `prefix`-ed names (attribute filters) are accepted.
    fn parse(
        QueryString(pairs): Pairs,
        allowed: &[&str],
        prefix: Option<&str>,
    ) -> Result<Params, ApiError> {
        let mut map = BTreeMap::new();
        for (name, value) in pairs {
            let known = allowed.contains(&name.as_str())
                || RANGE.contains(&name.as_str())
                || prefix.is_some_and(|p| name.starts_with(p));
            if !known {
                return Err(ApiError::bad(&name, format!("unknown parameter {name:?}")));
            }
            if map.insert(name.clone(), value).is_some() {
                return Err(ApiError::bad(
                    &name,
                    format!("parameter {name:?} given twice"),
                ));
            }
        }
        Ok(Params(map))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    fn required(&self, name: &str) -> Result<&str, ApiError> {
        self.get(name)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| ApiError::bad(name, format!("parameter {name:?} is required")))
    }

    fn owned(&self, name: &str) -> Option<String> {
        self.get(name).map(str::to_string)
    }

    fn range(&self) -> Result<TimeRange, ApiError> {
        let since = self.get("since");
        let from = self.get("from").map(|v| parse_ms("from", v)).transpose()?;
        let to = self.get("to").map(|v| parse_ms("to", v)).transpose()?;
        if since.is_some() && from.is_some() {
            return Err(ApiError::bad(
                "since",
                "give either since or from/to, not both",
            ));
        }
        let to_ms = to.unwrap_or_else(now_ms);
        let from_ms = match (since, from) {
            (Some(since), None) => {
                TimeRange::before(to_ms, parse_duration("since", since)?).from_ms
            }
            (None, Some(from)) => from,
            _ => TimeRange::before(to_ms, 60 * 60 * 1000).from_ms,
        };
        TimeRange::checked(from_ms, to_ms).map_err(|e| ApiError::bad(e.parameter(), e.to_string()))
    }

    /// `step`, or one that gives about 120 points, rounded to whole 10 s windows.
    fn step(&self, range: TimeRange) -> Result<i64, ApiError> {
        match self.get("step") {
            Some(text) => {
                let step = parse_duration("step", text)?;
                if (range.to_ms - range.from_ms) / step > 11_000 {
                    return Err(ApiError::bad(
                        "step",
                        "step is too small for the range (over 11,000 points)",
                    ));
                }
                Ok(step)
            }
            None => Ok(auto_step(range)),
        }
    }

    /// `limit`: 1 to 1000, `default` when not given.
    fn limit(&self, default: usize) -> Result<usize, ApiError> {
        match self.get("limit") {
            Some(text) => text
                .parse::<usize>()
                .ok()
                .filter(|l| (1..=1000).contains(l))
                .ok_or_else(|| {
                    ApiError::bad("limit", "limit must be a whole number from 1 to 1000")
                }),
            None => Ok(default),
        }
    }

    fn flag(&self, name: &str) -> Result<bool, ApiError> {
        match self.get(name) {
            None | Some("false") | Some("0") => Ok(false),
            Some("true") | Some("1") => Ok(true),
            Some(other) => Err(ApiError::bad(
                name,
                format!("{other:?} is not true or false"),
            )),
        }
    }
}

/// A step giving about 120 points, rounded up to a whole number of 10 s windows.
pub fn auto_step(range: TimeRange) -> i64 {
    let raw = (range.to_ms - range.from_ms) / 120;
    (raw.div_euclid(10_000) + 1) * 10_000
}

fn parse_ms(name: &str, value: &str) -> Result<i64, ApiError> {
    value
        .parse::<i64>()
        .ok()
        .filter(|v| *v >= 0)
        .ok_or_else(|| {
            ApiError::bad(
                name,
                format!("{value:?} is not a unix time in milliseconds"),
            )
        })
}

fn parse_duration(name: &str, value: &str) -> Result<i64, ApiError> {
    humantime::parse_duration(value)
        .ok()
        .map(duration_ms)
        .filter(|ms| *ms > 0)
        .ok_or_else(|| {
            ApiError::bad(
                name,
                format!("{value:?} is not a duration like 30s, 5m, 1h or 7d"),
            )
        })
}

async fn services(State(query): State<Query>, pairs: Pairs) -> Result<Json<Value>, ApiError> {
    let params = Params::parse(pairs, &[], None)?;
    let range = params.range()?;
    let services = query.services(range).await?;
    Ok(Json(json!(services)))
}

async fn endpoints(State(query): State<Query>, pairs: Pairs) -> Result<Json<Value>, ApiError> {
    let params = Params::parse(pairs, &["service"], None)?;
    let service = params.required("service")?;
    let range = params.range()?;
    let endpoints = query.endpoints(service, range).await?;
    Ok(Json(json!({
        "service": service,
        "from": range.from_ms,
        "to": range.to_ms,
        "endpoints": endpoints,
    })))
}

async fn series(State(query): State<Query>, pairs: Pairs) -> Result<Json<Value>, ApiError> {
    let params = Params::parse(pairs, &["service", "method", "route", "stat", "step"], None)?;
    let service = params.required("service")?.to_string();
    let stat_name = params.required("stat")?;
    let stat = RedStat::parse(stat_name).ok_or_else(|| {
        ApiError::bad(
            "stat",
            "stat must be one of p50, p90, p95, p99, rate, error_rate, requests, errors, mean, max",
        )
    })?;
    let range = params.range()?;
    let step = params.step(range)?;
    let filter = RedFilter {
        service: Some(service.clone()),
        method: params.owned("method"),
        route: params.owned("route"),
    };
    let points = query.series(filter, stat, range, step).await?;
    Ok(Json(json!({
        "service": service,
        "method": params.get("method"),
        "route": params.get("route"),
        "stat": stat_name,
        "step_ms": step,
        "from": range.from_ms,
        "to": range.to_ms,
        "points": points,
    })))
}

async fn metrics(State(query): State<Query>, pairs: Pairs) -> Result<Json<Value>, ApiError> {
    let params = Params::parse(pairs, &["service"], None)?;
    let metrics = query.metrics(params.get("service")).await?;
    Ok(Json(
        json!({ "service": params.get("service"), "metrics": metrics }),
    ))
}

const ATTRIBUTE_PREFIX: &str = "attr.";

async fn metric_query(State(query): State<Query>, pairs: Pairs) -> Result<Json<Value>, ApiError> {
    let params = Params::parse(
        pairs,
        &["service", "name", "step", "agg", "group_by"],
        Some(ATTRIBUTE_PREFIX),
    )?;
    let service = params.required("service")?;
    let name = params.required("name")?;
    let range = params.range()?;
    let step_ms = params.step(range)?;
    let aggregation = params
        .get("agg")
        .map(|a| {
            MetricAggregation::parse(a).ok_or_else(|| {
                ApiError::bad(
                    "agg",
                    "agg must be one of avg, min, max, last, sum, rate, count, p50, p90, p95, p99",
                )
            })
        })
        .transpose()?;
    let filter = params
        .0
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix(ATTRIBUTE_PREFIX)
                .map(|k| (k.to_string(), v.clone()))
        })
        .collect();
    let group_by = params.get("group_by").map(|g| {
        g.split(',')
            .filter(|k| !k.is_empty())
            .map(str::to_string)
            .collect()
    });
    let (info, series) = query
        .metric_series(
            service,
            name,
            MetricQuery {
                range,
                step_ms,
                aggregation,
                filter,
                group_by,
            },
        )
        .await?;
    let chosen = aggregation.or_else(|| {
        info.as_ref()
            .map(|i| MetricAggregation::default_for(i.kind))
    });
    Ok(Json(json!({
        "service": service,
        "name": name,
        "type": info.as_ref().map(|i| i.kind),
        "unit": info.as_ref().map(|i| i.unit.clone()),
        "agg": chosen.map(|a| format!("{a:?}").to_lowercase()),
        "step_ms": step_ms,
        "from": range.from_ms,
        "to": range.to_ms,
        "series": series,
    })))
}

async fn traces(State(query): State<Query>, pairs: Pairs) -> Result<Json<Value>, ApiError> {
    let params = Params::parse(
        pairs,
        &[
            "service",
            "method",
            "route",
            "error",
            "min_duration_ms",
            "limit",
            "sort",
        ],
        None,
    )?;
    let range = params.range()?;
    let limit = params.limit(50)?;
    let min_duration_ms = params
        .get("min_duration_ms")
        .map(|text| {
            text.parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| {
                    ApiError::bad("min_duration_ms", "min_duration_ms must be a number ≥ 0")
                })
        })
        .transpose()?;
    let slowest_first = match params.get("sort") {
        None | Some("newest") => false,
        Some("slowest") => true,
        Some(_) => return Err(ApiError::bad("sort", "sort must be newest or slowest")),
    };
    let filter = TraceFilter {
        service: params.owned("service"),
        method: params.owned("method"),
        route: params.owned("route"),
        errors_only: params.flag("error")?,
        min_duration_ms,
        from_ms: range.from_ms,
        to_ms: range.to_ms,
        limit,
        slowest_first,
    };
    let traces = query.traces(filter).await?;
    Ok(Json(
        json!({ "from": range.from_ms, "to": range.to_ms, "traces": traces }),
    ))
}

async fn trace(
    State(query): State<Query>,
    Path(trace_id): Path<String>,
    pairs: Pairs,
) -> Result<Json<Value>, ApiError> {
    Params::parse(pairs, &[], None)?;
    let valid = trace_id.len() == 32 && trace_id.bytes().all(|b| b.is_ascii_hexdigit());
    if !valid {
        return Err(ApiError::bad("trace_id", "a trace id is 32 hex digits"));
    }
    let trace_id = trace_id.to_ascii_lowercase();
    let spans = query.trace(&trace_id).await?;
    if spans.is_empty() {
        return Err(ApiError {
            status: StatusCode::NOT_FOUND,
            parameter: None,
            message: format!("trace {trace_id} is not stored (only sampled traces are kept)"),
        });
    }
    let spans: Vec<Value> = spans
        .into_iter()
        .map(|s| {
            let duration_ms = s.duration_ms();
            json!({
                "span_id": s.span_id,
                "parent_span_id": s.parent_span_id,
                "service": s.service,
                "name": s.name,
                "kind": s.kind,
                "start_unix_ns": s.start_unix_ns.to_string(),
                "end_unix_ns": s.end_unix_ns.to_string(),
                "duration_ms": duration_ms,
                "status": s.status,
                "status_message": s.status_message,
                "error": s.is_error,
                "attributes": s.attributes,
                "events": s.events,
            })
        })
        .collect();
    Ok(Json(json!({ "trace_id": trace_id, "spans": spans })))
}

/// The longest `q` a log search takes.
pub const MAX_LOG_QUERY_BYTES: usize = 1024;

async fn logs(State(query): State<Query>, pairs: Pairs) -> Result<Json<Value>, ApiError> {
    let params = Params::parse(
        pairs,
        &["service", "severity_min", "trace_id", "q", "limit"],
        None,
    )?;
    let range = params.range()?;
    let min_severity = match params.get("severity_min") {
        Some(text) => Severity::parse_min(text).ok_or_else(|| {
            ApiError::bad(
                "severity_min",
                "severity_min must be TRACE, DEBUG, INFO, WARN, ERROR, FATAL or a number 0-24",
            )
        })?,
        None => 0,
    };
    let trace_id = match params.get("trace_id") {
        Some(id) if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Some(id.to_ascii_lowercase())
        }
        Some(_) => return Err(ApiError::bad("trace_id", "a trace id is 32 hex digits")),
        None => None,
    };
    let text = params.get("q").filter(|q| !q.is_empty());
    if text.is_some_and(|q| q.len() > MAX_LOG_QUERY_BYTES) {
        return Err(ApiError::bad(
            "q",
            format!("q must be at most {MAX_LOG_QUERY_BYTES} bytes"),
        ));
    }
    let filter = LogFilter {
        service: params.owned("service").filter(|s| !s.is_empty()),
        min_severity,
        trace_id,
        trace_ids: None,
        text: text.map(str::to_string),
        from_ms: range.from_ms,
        to_ms: range.to_ms,
        limit: params.limit(100)?,
    };
    let logs: Vec<Value> = query
        .logs(filter)
        .await?
        .into_iter()
        .map(|r| {
            json!({
                "time_ms": r.time_ms(),
                "service": r.service,
                "severity_text": r.severity_label(),
                "severity_number": r.severity_number,
                "body": r.body,
                "trace_id": r.trace_id,
                "span_id": r.span_id,
                "attributes": r.attributes,
            })
        })
        .collect();
    Ok(Json(
        json!({ "from": range.from_ms, "to": range.to_ms, "logs": logs }),
    ))
}
