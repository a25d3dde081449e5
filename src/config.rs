//! Settings: `redline.toml` (`--config`), overridden by `REDLINE_*` environment variables,
//! overridden by flags. One struct of optional values is all three layers; resolving it checks
//! every value and reports every problem at once.

pub mod export;
pub mod forward;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::aggregate::AggregatorConfig;
use crate::aggregate::cardinality::Limits;
use crate::aggregate::logs::LogKeeperConfig;
use crate::aggregate::sampler::SamplerConfig;
use crate::ingest::auth::ApiKeys;
use crate::store::Retention;
use crate::tls::TlsFiles;
use crate::web::auth::WebAuth;
use crate::web::guard::{HostRule, url_host};

/// Every setting, each optional so that layers can be merged. Field names are the TOML keys;
/// flags are the same in kebab-case, environment variables the same in upper case.
#[derive(Debug, Default, Clone, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsLayer {
    /// OTLP/gRPC listen address [default: 127.0.0.1:4317]
    #[arg(long, env = "REDLINE_OTLP_GRPC_ADDR", value_name = "ADDR")]
    pub otlp_grpc_addr: Option<String>,
    /// OTLP/HTTP listen address [default: 127.0.0.1:4318]
    #[arg(long, env = "REDLINE_OTLP_HTTP_ADDR", value_name = "ADDR")]
    pub otlp_http_addr: Option<String>,
    /// Dashboard, query API, /healthz and /metrics listen address [default: 127.0.0.1:9900]
    #[arg(long, env = "REDLINE_WEB_ADDR", value_name = "ADDR")]
    pub web_addr: Option<String>,
    /// Directory of the database file redline.db [default: ./data]
    #[arg(long, env = "REDLINE_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Largest accepted OTLP request body, after decompression, in bytes [default: 16777216]
    #[arg(long, env = "REDLINE_MAX_BODY_BYTES", value_name = "BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Origins allowed to export OTLP/HTTP from a browser (CORS), comma-separated; "*" for any [default: none]
    #[arg(
        long,
        env = "REDLINE_CORS_ALLOWED_ORIGINS",
        value_name = "ORIGINS",
        value_delimiter = ','
    )]
    pub cors_allowed_origins: Option<Vec<String>>,
    /// Spans and data points that may wait for the aggregator; beyond it exports get 503/UNAVAILABLE [default: 20000]
    #[arg(long, env = "REDLINE_QUEUE_CAPACITY", value_name = "ITEMS")]
    pub queue_capacity: Option<usize>,
    /// Bytes the waiting spans and points may hold; beyond it exports get 503/UNAVAILABLE; never below max_body_bytes [default: 67108864]
    #[arg(long, env = "REDLINE_QUEUE_MAX_BYTES", value_name = "BYTES")]
    pub queue_max_bytes: Option<usize>,
    /// Bytes everything between the sockets and SQLite may hold (request bodies, queue, aggregator, trace buffers, unwritten flushes); beyond it exports get 503/UNAVAILABLE [default: 268435456]
    #[arg(long, env = "REDLINE_MEMORY_LIMIT", value_name = "BYTES")]
    pub memory_limit: Option<usize>,
    /// Acknowledged spans and points that may wait to be stored; beyond it exports get 503/UNAVAILABLE, so a `kill -9` loses at most this many [default: 1000000]
    #[arg(long, env = "REDLINE_MAX_UNFLUSHED_ITEMS", value_name = "N")]
    pub max_unflushed_items: Option<u64>,
    /// Spans kept for the trace views per second at most (error, slow and sampled traces alike); the rest are dropped and counted [default: 2000]
    #[arg(long, env = "REDLINE_TRACE_KEEP_SPANS_PER_SECOND", value_name = "N")]
    pub trace_keep_spans_per_second: Option<u32>,
    /// Bytes of spans kept for the trace views per second at most [default: 4194304]
    #[arg(
        long,
        env = "REDLINE_TRACE_KEEP_BYTES_PER_SECOND",
        value_name = "BYTES"
    )]
    pub trace_keep_bytes_per_second: Option<usize>,
    /// Width of the finest aggregation window [default: 10s]
    #[arg(long, env = "REDLINE_WINDOW", value_name = "DURATION")]
    pub window: Option<String>,
    /// How often aggregated data is written to SQLite; the most a `kill -9` can lose [default: 1s]
    #[arg(long, env = "REDLINE_FLUSH_INTERVAL", value_name = "DURATION")]
    pub flush_interval: Option<String>,
    /// Most services tracked; others go to the `__overflow__` service [default: 200]
    #[arg(long, env = "REDLINE_MAX_SERVICES", value_name = "N")]
    pub max_services: Option<usize>,
    /// Most endpoints per service; others go to route `__overflow__` [default: 2000]
    #[arg(long, env = "REDLINE_MAX_ENDPOINTS_PER_SERVICE", value_name = "N")]
    pub max_endpoints_per_service: Option<usize>,
    /// Most OTLP metric series; others go to a per-service `__overflow__` series [default: 20000]
    #[arg(long, env = "REDLINE_MAX_METRIC_SERIES", value_name = "N")]
    pub max_metric_series: Option<usize>,
    /// Keep 10-second windows this long [default: 6h]
    #[arg(long, env = "REDLINE_RETENTION_10S", value_name = "DURATION")]
    pub retention_10s: Option<String>,
    /// Keep 1-minute windows this long [default: 7d]
    #[arg(long, env = "REDLINE_RETENTION_1M", value_name = "DURATION")]
    pub retention_1m: Option<String>,
    /// Keep 1-hour windows this long [default: 90d]
    #[arg(long, env = "REDLINE_RETENTION_1H", value_name = "DURATION")]
    pub retention_1h: Option<String>,
    /// Keep sampled traces this long [default: 3d]
    #[arg(long, env = "REDLINE_TRACE_RETENTION", value_name = "DURATION")]
    pub trace_retention: Option<String>,
    /// Delete the oldest traces beyond this many stored spans [default: 1000000]
    #[arg(long, env = "REDLINE_TRACE_MAX_SPANS", value_name = "N")]
    pub trace_max_spans: Option<u64>,
    /// Keep log records (WARN and above, and those of kept traces) this long [default: 3d]
    #[arg(long, env = "REDLINE_LOG_RETENTION", value_name = "DURATION")]
    pub log_retention: Option<String>,
    /// Delete the oldest kept log records beyond this many stored bytes [default: 268435456]
    #[arg(long, env = "REDLINE_LOG_MAX_BYTES", value_name = "BYTES")]
    pub log_max_bytes: Option<u64>,
    /// Bytes of log records kept per second at most; the rest are dropped and counted (all are still counted by severity) [default: 1048576]
    #[arg(long, env = "REDLINE_LOG_KEEP_BYTES_PER_SECOND", value_name = "BYTES")]
    pub log_keep_bytes_per_second: Option<usize>,
    /// Fraction of traces kept at random, besides error and slowest traces [default: 0.01]
    #[arg(long, env = "REDLINE_TRACE_SAMPLE_RATIO", value_name = "RATIO")]
    pub trace_sample_ratio: Option<f64>,
    /// Slowest requests kept per endpoint per minute [default: 3]
    #[arg(long, env = "REDLINE_TRACE_SLOWEST_PER_MINUTE", value_name = "N")]
    pub trace_slowest_per_minute: Option<usize>,
    /// Bearer token the web address requires (dashboard and API; not /healthz, /readyz) [default: none]
    #[arg(
        long,
        env = "REDLINE_WEB_AUTH_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub web_auth_token: Option<String>,
    /// HTTP basic auth `user:password` the web address requires; browsers prompt for it [default: none]
    #[arg(
        long,
        env = "REDLINE_WEB_BASIC_AUTH",
        value_name = "USER:PASSWORD",
        hide_env_values = true
    )]
    pub web_basic_auth: Option<String>,
    /// Directory of the custom dashboards (`*.toml`) [default: ./dashboards]
    #[arg(long, env = "REDLINE_DASHBOARDS_DIR", value_name = "DIR")]
    pub dashboards_dir: Option<PathBuf>,
    /// Alert rules, routes and receivers; reloaded on SIGHUP and on change [default: ./alerts.toml]
    #[arg(long, env = "REDLINE_ALERTS_FILE", value_name = "FILE")]
    pub alerts_file: Option<PathBuf>,
    /// The dashboard's address as users reach it, for links in alert e-mails; its host is allowed on the web address [default: http://WEB_ADDR, https:// with TLS]
    #[arg(long, env = "REDLINE_PUBLIC_URL", value_name = "URL")]
    pub public_url: Option<String>,
    /// More host names the web address answers to, comma-separated: `name`, `name:port`, `.domain` (and its subdomains), or `*` for any; other names get 421 (DNS rebinding) [default: IP addresses, localhost and the public_url host]
    #[arg(
        long,
        env = "REDLINE_ALLOWED_HOSTS",
        value_name = "HOSTS",
        value_delimiter = ','
    )]
    pub allowed_hosts: Option<Vec<String>>,
    /// OTLP API keys as NAME=KEY pairs, comma-separated: exporters must send one in the x-otlp-api-key header (OTEL_EXPORTER_OTLP_HEADERS=x-otlp-api-key=KEY) or as Authorization: Bearer KEY; what each name sends is counted. Keys are 16-256 characters of letters, digits and . _ ~ + / - (in the TOML file also a table, name = "key"); reloaded on SIGHUP [default: none]
    #[arg(
        long,
        env = "REDLINE_OTLP_API_KEYS",
        value_name = "NAME=KEY,...",
        value_delimiter = ',',
        hide_env_values = true
    )]
    #[serde(default, deserialize_with = "pairs_table_or_list")]
    pub otlp_api_keys: Option<Vec<String>>,
    /// File of more OTLP API keys, one NAME=KEY a line (# comments), kept out of the command line and environment; re-read on SIGHUP [default: none]
    #[arg(long, env = "REDLINE_OTLP_API_KEYS_FILE", value_name = "FILE")]
    pub otlp_api_keys_file: Option<PathBuf>,
    /// PEM certificate chain: OTLP/gRPC, OTLP/HTTP and the web address serve TLS with it (needs tls_key); re-read on SIGHUP [default: none]
    #[arg(long, env = "REDLINE_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of tls_cert (PKCS#8, PKCS#1 or SEC1); re-read on SIGHUP [default: none]
    #[arg(long, env = "REDLINE_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificates: OTLP exporters must present a client certificate issued by one of them (mTLS; needs tls_cert); re-read on SIGHUP [default: none]
    #[arg(long, env = "REDLINE_OTLP_CLIENT_CA", value_name = "FILE")]
    pub otlp_client_ca: Option<PathBuf>,
    /// Upper bounds in seconds of the `redline_request_duration_seconds` histogram on /metrics/red and remote write, comma-separated, increasing, at most 40 [default: 0.005,0.01,0.025,0.05,0.075,0.1,0.25,0.5,0.75,1,2.5,5,7.5,10]
    #[arg(
        long,
        env = "REDLINE_RED_HISTOGRAM_BOUNDS",
        value_name = "SECONDS",
        value_delimiter = ','
    )]
    pub red_histogram_bounds: Option<Vec<f64>>,
    /// A label added to every series of /metrics/red and remote write, e.g. host=web-1, so that several redlines' series do not collide; repeatable (file: `external_labels = { host = "web-1" }`) [default: none]
    #[arg(
        long = "external-label",
        env = "REDLINE_EXTERNAL_LABELS",
        value_name = "NAME=VALUE",
        value_delimiter = ','
    )]
    #[serde(default, deserialize_with = "export::labels_from_table")]
    pub external_labels: Option<Vec<String>>,
    /// Push the RED series to this Prometheus remote-write URL (e.g. http://prometheus:9090/api/v1/write); repeatable (file: `[[remote_write]]` tables with url, headers, basic_auth, interval, queue_max_bytes) [default: none]
    #[arg(
        long = "remote-write-url",
        env = "REDLINE_REMOTE_WRITE_URLS",
        value_name = "URL",
        value_delimiter = ','
    )]
    #[serde(skip)]
    pub remote_write_url: Option<Vec<String>>,
    /// How often the --remote-write-url targets are pushed a sample of every series [default: 15s]
    #[arg(long, env = "REDLINE_REMOTE_WRITE_INTERVAL", value_name = "DURATION")]
    #[serde(skip)]
    pub remote_write_interval: Option<String>,
    /// `[[remote_write]]` tables of the file.
    #[arg(skip)]
    pub remote_write: Option<Vec<export::RemoteWriteTable>>,
    /// Forward every accepted OTLP export (traces, metrics, logs), as received, to this OTLP endpoint: a Collector, Tempo, Jaeger or another redline, e.g. http://collector:4317 for grpc, http://collector:4318 for http/protobuf (which appends /v1/traces, /v1/metrics, /v1/logs); https:// verifies against the system's roots. Requests wait in a queue bounded by forward_queue_max_bytes; when it is full they are dropped and counted, ingest never waits [default: none]
    #[arg(long, env = "REDLINE_FORWARD_OTLP_ENDPOINT", value_name = "URL")]
    pub forward_otlp_endpoint: Option<String>,
    /// How requests are forwarded: grpc or http/protobuf (JSON exports are sent as protobuf) [default: grpc]
    #[arg(
        long,
        env = "REDLINE_FORWARD_OTLP_PROTOCOL",
        value_name = "grpc|http/protobuf"
    )]
    pub forward_otlp_protocol: Option<String>,
    /// Headers (gRPC metadata) sent with every forwarded request, as NAME=VALUE pairs, comma-separated, e.g. x-otlp-api-key=KEY or authorization=Bearer TOKEN (in the TOML file also a table, name = "value") [default: none]
    #[arg(
        long,
        env = "REDLINE_FORWARD_OTLP_HEADERS",
        value_name = "NAME=VALUE,...",
        value_delimiter = ',',
        hide_env_values = true
    )]
    #[serde(default, deserialize_with = "pairs_table_or_list")]
    pub forward_otlp_headers: Option<Vec<String>>,
    /// Signals forwarded, comma-separated: traces, metrics, logs [default: traces,metrics,logs]
    #[arg(
        long,
        env = "REDLINE_FORWARD_SIGNALS",
        value_name = "SIGNALS",
        value_delimiter = ','
    )]
    pub forward_signals: Option<Vec<String>>,
    /// Bytes of accepted requests that may wait for the upstream (or be retried); beyond it new requests are not forwarded and are counted as dropped [default: 67108864]
    #[arg(long, env = "REDLINE_FORWARD_QUEUE_MAX_BYTES", value_name = "BYTES")]
    pub forward_queue_max_bytes: Option<usize>,
}

/// `otlp_api_keys` and `forward_otlp_headers` in the TOML file: a table `{ name = "value" }`
/// or a list of `"name=value"`.
fn pairs_table_or_list<'de, D>(deserializer: D) -> Result<Option<Vec<String>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Keys {
        Table(std::collections::BTreeMap<String, String>),
        List(Vec<String>),
    }
    Ok(Some(match Keys::deserialize(deserializer)? {
        Keys::Table(table) => table
            .into_iter()
            .map(|(name, key)| format!("{name}={key}"))
            .collect(),
        Keys::List(list) => list,
    }))
}

impl SettingsLayer {
    /// `self` where set, else `lower`.
    fn over(self, lower: SettingsLayer) -> SettingsLayer {
        macro_rules! pick {
            ($($field:ident),*) => { SettingsLayer { $($field: self.$field.or(lower.$field)),* } };
        }
        pick!(
            otlp_grpc_addr,
            otlp_http_addr,
            web_addr,
            data_dir,
            max_body_bytes,
            cors_allowed_origins,
            queue_capacity,
            queue_max_bytes,
            memory_limit,
            max_unflushed_items,
            trace_keep_spans_per_second,
            trace_keep_bytes_per_second,
            window,
            flush_interval,
            max_services,
            max_endpoints_per_service,
            max_metric_series,
            retention_10s,
            retention_1m,
            retention_1h,
            web_auth_token,
            web_basic_auth,
            dashboards_dir,
            trace_retention,
            trace_max_spans,
            trace_sample_ratio,
            trace_slowest_per_minute,
            log_retention,
            log_max_bytes,
            log_keep_bytes_per_second,
            alerts_file,
            public_url,
            allowed_hosts,
            otlp_api_keys,
            otlp_api_keys_file,
            tls_cert,
            tls_key,
            otlp_client_ca,
            red_histogram_bounds,
            external_labels,
            remote_write_url,
            remote_write_interval,
            remote_write,
            forward_otlp_endpoint,
            forward_otlp_protocol,
            forward_otlp_headers,
            forward_signals,
            forward_queue_max_bytes
        )
    }
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub otlp_grpc_addr: SocketAddr,
    pub otlp_http_addr: SocketAddr,
    pub web_addr: SocketAddr,
    pub data_dir: PathBuf,
    pub max_body_bytes: usize,
    pub cors_allowed_origins: Vec<String>,
    pub queue_capacity: usize,
    /// At least `max_body_bytes`, so that any accepted body fits.
    pub queue_max_bytes: usize,
    /// The memory budget of everything between the sockets and SQLite.
    pub memory_limit: usize,
    /// Acknowledged spans and points that may wait to be stored.
    pub max_unflushed_items: u64,
    pub flush_interval: Duration,
    pub aggregator: AggregatorConfig,
    pub retention: Retention,
    /// Credentials the web address requires (required beyond loopback).
    pub web_auth: WebAuth,
    pub dashboards_dir: PathBuf,
    pub alerts_file: PathBuf,
    /// Base URL of the dashboard for links, without a trailing slash; `None`: the bound
    /// web address.
    pub public_url: Option<String>,
    /// Host names the web address answers to besides IP addresses, `localhost` and the
    /// `public_url` host.
    pub allowed_hosts: Vec<HostRule>,
    /// The keys OTLP exporters must present (none: no key required); from `otlp_api_keys`
    /// and `otlp_api_keys_file`.
    pub otlp_api_keys: ApiKeys,
    /// TLS on every listener, and client certificates on the OTLP ones.
    pub tls: Option<TlsFiles>,
    /// RED for Prometheus: external labels and remote-write targets.
    pub export: export::ExportSettings,
    /// The OTLP upstream accepted exports are forwarded to, if any.
    pub forward: Option<crate::forward::ForwardSettings>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("invalid settings:\n{}", .0.join("\n"))]
    Invalid(Vec<String>),
}

impl Settings {
    /// Merges flags/env (`cli`) over the file named by `config_file`, then validates.
    pub fn load(cli: SettingsLayer, config_file: Option<&Path>) -> Result<Settings, ConfigError> {
        let file = match config_file {
            Some(path) => read_file(path)?,
            None => SettingsLayer::default(),
        };
        Settings::resolve(cli.over(file))
    }

    pub fn resolve(layer: SettingsLayer) -> Result<Settings, ConfigError> {
        let mut problems = Vec::new();
        let mut addr = |name: &str, value: Option<String>, default: &str| {
            let text = value.unwrap_or_else(|| default.to_string());
            text.parse::<SocketAddr>().unwrap_or_else(|_| {
                problems.push(format!(
                    "{name}: {text:?} is not an address like 127.0.0.1:4317"
                ));
                SocketAddr::from(([127, 0, 0, 1], 0))
            })
        };
        let otlp_grpc_addr = addr("otlp_grpc_addr", layer.otlp_grpc_addr, "127.0.0.1:4317");
        let otlp_http_addr = addr("otlp_http_addr", layer.otlp_http_addr, "127.0.0.1:4318");
        let web_addr = addr("web_addr", layer.web_addr, "127.0.0.1:9900");
        let mut duration = |name: &str, value: Option<String>, default: &str| {
            let text = value.unwrap_or_else(|| default.to_string());
            match humantime::parse_duration(&text) {
                Ok(d) if !d.is_zero() => d,
                _ => {
                    problems.push(format!(
                        "{name}: {text:?} is not a duration like 10s, 5m, 6h or 7d"
                    ));
                    Duration::from_secs(1)
                }
            }
        };
        let window = duration("window", layer.window, "10s");
        let flush_interval = duration("flush_interval", layer.flush_interval, "1s");
        let retention = Retention {
            ten_seconds: duration("retention_10s", layer.retention_10s, "6h"),
            one_minute: duration("retention_1m", layer.retention_1m, "7d"),
            one_hour: duration("retention_1h", layer.retention_1h, "90d"),
            traces: duration("trace_retention", layer.trace_retention, "3d"),
            max_spans: layer.trace_max_spans.unwrap_or(1_000_000),
            logs: duration("log_retention", layer.log_retention, "3d"),
            max_log_bytes: layer.log_max_bytes.unwrap_or(256 << 20),
        };
        let window_ms = window.as_millis() as i64;
        if window_ms > 0 && 60_000 % window_ms != 0 {
            problems.push(format!(
                "window: {window:?} must divide one minute evenly (1s, 5s, 10s, 30s, 1m)"
            ));
        }
        let ratio = layer.trace_sample_ratio.unwrap_or(0.01);
        if !(0.0..=1.0).contains(&ratio) {
            problems.push(format!(
                "trace_sample_ratio: {ratio} must be between 0 and 1"
            ));
        }
        let positive =
            |problems: &mut Vec<String>, name: &str, value: Option<usize>, default: usize| {
                let v = value.unwrap_or(default);
                if v == 0 {
                    problems.push(format!("{name}: must be at least 1"));
                }
                v.max(1)
            };
        let max_body_bytes = positive(
            &mut problems,
            "max_body_bytes",
            layer.max_body_bytes,
            16 << 20,
        );
        let queue_capacity = positive(
            &mut problems,
            "queue_capacity",
            layer.queue_capacity,
            20_000,
        );
        let queue_max_bytes = positive(
            &mut problems,
            "queue_max_bytes",
            layer.queue_max_bytes,
            64 << 20,
        )
        .max(max_body_bytes);
        let memory_limit = positive(&mut problems, "memory_limit", layer.memory_limit, 256 << 20);
        if memory_limit < 4 * max_body_bytes {
            problems.push(format!(
                "memory_limit: {memory_limit} bytes must hold at least four requests of \
                 max_body_bytes ({max_body_bytes}); raise it or lower max_body_bytes"
            ));
        }
        let max_unflushed_items = layer.max_unflushed_items.unwrap_or(1_000_000);
        if max_unflushed_items == 0 {
            problems.push("max_unflushed_items: must be at least 1".into());
        }
        let sampler_defaults = SamplerConfig::default();
        let keep_spans = layer
            .trace_keep_spans_per_second
            .unwrap_or(sampler_defaults.max_kept_spans_per_second);
        let keep_bytes = layer
            .trace_keep_bytes_per_second
            .unwrap_or(sampler_defaults.max_kept_bytes_per_second);
        let limits = Limits {
            max_services: positive(&mut problems, "max_services", layer.max_services, 200),
            max_endpoints_per_service: positive(
                &mut problems,
                "max_endpoints_per_service",
                layer.max_endpoints_per_service,
                2_000,
            ),
            max_metric_series: positive(
                &mut problems,
                "max_metric_series",
                layer.max_metric_series,
                20_000,
            ),
            max_key_bytes: crate::budget::share(memory_limit),
            ..Limits::default()
        };
        let web_auth = WebAuth {
            token: layer.web_auth_token.filter(|t| !t.is_empty()),
            basic: layer.web_basic_auth.as_deref().and_then(|text| {
                let parsed = WebAuth::parse_basic(text);
                if parsed.is_none() {
                    problems.push("web_basic_auth: must be user:password".into());
                }
                parsed
            }),
        };
        if !web_addr.ip().is_loopback() && !web_auth.is_enabled() {
            problems.push(format!(
                "web_addr: {web_addr} is reachable beyond this machine; set web_auth_token or \
                 web_basic_auth so the dashboard and API require credentials"
            ));
        }
        let allowed_hosts = layer
            .allowed_hosts
            .unwrap_or_default()
            .iter()
            .filter_map(|entry| {
                entry
                    .parse::<HostRule>()
                    .map_err(|e| problems.push(format!("allowed_hosts: {e}")))
                    .ok()
            })
            .collect();
        if let Some(url) = &layer.public_url
            && url_host(url).is_none()
        {
            problems.push(format!(
                "public_url: {url:?} is not a URL like https://redline.example.com"
            ));
        }
        let otlp_api_keys = api_keys(
            &mut problems,
            layer.otlp_api_keys.as_deref().unwrap_or_default(),
            layer.otlp_api_keys_file.as_deref(),
        );
        let tls = match (layer.tls_cert, layer.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert,
                key,
                client_ca: layer.otlp_client_ca.clone(),
            }),
            (None, None) => None,
            (Some(_), None) => {
                problems.push("tls_cert: needs tls_key, the certificate's private key".into());
                None
            }
            (None, Some(_)) => {
                problems.push("tls_key: needs tls_cert, the certificate it belongs to".into());
                None
            }
        };
        if layer.otlp_client_ca.is_some() && tls.is_none() {
            problems.push(
                "otlp_client_ca: client certificates need TLS; set tls_cert and tls_key".into(),
            );
        }
        let client_certificates = tls.as_ref().is_some_and(|t| t.client_ca.is_some());
        for (name, addr) in [
            ("otlp_grpc_addr", otlp_grpc_addr),
            ("otlp_http_addr", otlp_http_addr),
        ] {
            if !addr.ip().is_loopback() && otlp_api_keys.is_empty() && !client_certificates {
                problems.push(format!(
                    "{name}: {addr} is reachable beyond this machine; set otlp_api_keys or \
                     otlp_api_keys_file so exporters must present a key (and tls_cert and \
                     tls_key so it travels encrypted), or otlp_client_ca so they must present \
                     a client certificate"
                ));
            }
        }
        let (duration_bounds, export) = export::resolve(
            export::ExportLayer {
                bounds: layer.red_histogram_bounds,
                external_labels: layer.external_labels,
                urls: layer.remote_write_url,
                interval: layer.remote_write_interval,
                tables: layer.remote_write,
            },
            &mut problems,
        );
        let forward = forward::resolve(
            forward::ForwardLayer {
                endpoint: layer.forward_otlp_endpoint,
                protocol: layer.forward_otlp_protocol,
                headers: layer.forward_otlp_headers,
                signals: layer.forward_signals,
                queue_max_bytes: layer.forward_queue_max_bytes,
            },
            &mut problems,
        );
        if !problems.is_empty() {
            return Err(ConfigError::Invalid(problems));
        }
        Ok(Settings {
            otlp_grpc_addr,
            otlp_http_addr,
            web_addr,
            data_dir: layer.data_dir.unwrap_or_else(|| PathBuf::from("./data")),
            max_body_bytes,
            cors_allowed_origins: layer.cors_allowed_origins.unwrap_or_default(),
            queue_capacity,
            queue_max_bytes,
            memory_limit,
            max_unflushed_items,
            flush_interval,
            aggregator: AggregatorConfig {
                window_ms,
                limits,
                sampler: SamplerConfig {
                    uniform_ratio: ratio,
                    slowest_per_minute: layer.trace_slowest_per_minute.unwrap_or(3),
                    buffer_bytes: crate::budget::share(memory_limit),
                    max_pending_bytes: crate::budget::share(memory_limit),
                    max_kept_spans_per_second: keep_spans,
                    max_kept_bytes_per_second: keep_bytes,
                    ..sampler_defaults
                },
                logs: LogKeeperConfig {
                    max_kept_bytes_per_second: layer
                        .log_keep_bytes_per_second
                        .unwrap_or(LogKeeperConfig::default().max_kept_bytes_per_second),
                    buffer_bytes: crate::budget::share(memory_limit) / 4,
                    max_pending_bytes: crate::budget::share(memory_limit) / 2,
                    ..LogKeeperConfig::default()
                },
                duration_bounds,
                ..AggregatorConfig::default()
            },
            retention,
            web_auth,
            dashboards_dir: layer
                .dashboards_dir
                .unwrap_or_else(|| PathBuf::from("./dashboards")),
            alerts_file: layer
                .alerts_file
                .unwrap_or_else(|| PathBuf::from("./alerts.toml")),
            public_url: layer
                .public_url
                .map(|u| u.trim_end_matches('/').to_string()),
            allowed_hosts,
            otlp_api_keys,
            tls,
            export,
            forward,
        })
    }
}

/// The keys of `otlp_api_keys` and of the file `otlp_api_keys_file`, checked together (a name
/// or key given twice is a problem). Reads the file (blocking).
fn api_keys(problems: &mut Vec<String>, listed: &[String], file: Option<&Path>) -> ApiKeys {
    let text = match file {
        None => String::new(),
        Some(path) => std::fs::read_to_string(path).unwrap_or_else(|e| {
            problems.push(format!("otlp_api_keys_file: {}: {e}", path.display()));
            String::new()
        }),
    };
    let listed = listed
        .iter()
        .enumerate()
        .map(|(i, entry)| (format!("otlp_api_keys entry {}", i + 1), entry.as_str()));
    let from_file = ApiKeys::file_entries(&text).map(|(line, entry)| {
        let path = file.map(|p| p.display().to_string()).unwrap_or_default();
        (format!("otlp_api_keys_file {path}:{line}"), entry)
    });
    ApiKeys::parse(listed.chain(from_file)).unwrap_or_else(|errors| {
        problems.extend(errors.iter().map(ToString::to_string));
        ApiKeys::default()
    })
}

fn read_file(path: &Path) -> Result<SettingsLayer, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    toml::from_str(&text).map_err(|e| {
        let position = e
            .span()
            .map(|span| {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                format!(":{line}:{column}")
            })
            .unwrap_or_default();
        ConfigError::File {
            path: PathBuf::from(format!("{}{position}", path.display())),
            message: e.message().to_string(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_ones() {
        let settings = Settings::resolve(SettingsLayer::default()).unwrap();
        assert_eq!(settings.otlp_grpc_addr.to_string(), "127.0.0.1:4317");
        assert_eq!(settings.otlp_http_addr.to_string(), "127.0.0.1:4318");
        assert_eq!(settings.web_addr.to_string(), "127.0.0.1:9900");
        assert_eq!(settings.max_body_bytes, 16 << 20);
        assert_eq!(settings.aggregator.window_ms, 10_000);
        assert_eq!(
            settings.retention.one_minute,
            Duration::from_secs(7 * 86_400)
        );
    }

    #[test]
    fn flags_win_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("redline.toml");
        std::fs::write(&path, "web_addr = \"127.0.0.1:1\"\nwindow = \"5s\"\n").unwrap();
        let cli = SettingsLayer {
            web_addr: Some("127.0.0.1:2".into()),
            ..Default::default()
        };
        let settings = Settings::load(cli, Some(&path)).unwrap();
        assert_eq!(settings.web_addr.port(), 2);
        assert_eq!(settings.aggregator.window_ms, 5_000);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let layer = SettingsLayer {
            web_addr: Some("nowhere".into()),
            window: Some("7s".into()),
            trace_sample_ratio: Some(2.0),
            ..Default::default()
        };
        let ConfigError::Invalid(problems) = Settings::resolve(layer).unwrap_err() else {
            panic!("expected validation errors");
        };
        assert_eq!(problems.len(), 3, "{problems:?}");
    }

    #[test]
    fn the_web_address_beyond_loopback_requires_credentials() {
        let open = SettingsLayer {
            web_addr: Some("0.0.0.0:9900".into()),
            ..Default::default()
        };
        let message = Settings::resolve(open.clone()).unwrap_err().to_string();
        assert!(message.contains("web_auth_token"), "{message}");
        let with_token = SettingsLayer {
            web_auth_token: Some("s3cret".into()),
            ..open.clone()
        };
        assert!(Settings::resolve(with_token).unwrap().web_auth.is_enabled());
        let bad_basic = SettingsLayer {
            web_basic_auth: Some("nopassword".into()),
            ..open
        };
        let message = Settings::resolve(bad_basic).unwrap_err().to_string();
        assert!(
            message.contains("web_basic_auth: must be user:password"),
            "{message}"
        );
        assert!(
            !Settings::resolve(SettingsLayer::default())
                .unwrap()
                .web_auth
                .is_enabled()
        );
    }

    const KEY: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn otlp_beyond_loopback_requires_keys_or_client_certificates() {
        let open = SettingsLayer {
            otlp_grpc_addr: Some("0.0.0.0:4317".into()),
            otlp_http_addr: Some("[::]:4318".into()),
            ..Default::default()
        };
        let ConfigError::Invalid(problems) = Settings::resolve(open.clone()).unwrap_err() else {
            panic!("expected validation errors");
        };
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].starts_with("otlp_grpc_addr: 0.0.0.0:4317 is reachable"));
        assert!(problems[1].contains("set otlp_api_keys"), "{}", problems[1]);
        let with_keys = SettingsLayer {
            otlp_api_keys: Some(vec![format!("ops={KEY}")]),
            ..open.clone()
        };
        let settings = Settings::resolve(with_keys).unwrap();
        assert_eq!(settings.otlp_api_keys.names().collect::<Vec<_>>(), ["ops"]);
        let with_client_ca = SettingsLayer {
            tls_cert: Some("cert.pem".into()),
            tls_key: Some("key.pem".into()),
            otlp_client_ca: Some("ca.pem".into()),
            ..open
        };
        assert!(Settings::resolve(with_client_ca).is_ok());
    }

    #[test]
    fn keys_come_from_the_file_table_flag_and_keys_file_together() {
        let dir = tempfile::tempdir().unwrap();
        let keys_file = dir.path().join("keys");
        std::fs::write(&keys_file, format!("# ops\nops={KEY}x\n")).unwrap();
        let path = dir.path().join("redline.toml");
        std::fs::write(
            &path,
            format!("otlp_api_keys_file = {keys_file:?}\n[otlp_api_keys]\nweb = \"{KEY}\"\n"),
        )
        .unwrap();
        let settings = Settings::load(SettingsLayer::default(), Some(&path)).unwrap();
        assert_eq!(
            settings.otlp_api_keys.names().collect::<Vec<_>>(),
            ["web", "ops"]
        );
        // The flag replaces the file's list; the keys file still adds to it.
        let cli = SettingsLayer {
            otlp_api_keys: Some(vec![format!("web={KEY}")]),
            ..Default::default()
        };
        let settings = Settings::load(cli, Some(&path)).unwrap();
        assert_eq!(settings.otlp_api_keys.names().count(), 2);
        // A name in both is a problem, and no key is echoed.
        std::fs::write(&keys_file, format!("web={KEY}y\n")).unwrap();
        let message = Settings::load(SettingsLayer::default(), Some(&path))
            .unwrap_err()
            .to_string();
        assert!(
            message.contains(":1 (web): the name is given twice"),
            "{message}"
        );
        assert!(!message.contains(KEY), "{message}");
    }

    #[test]
    fn tls_needs_both_files_and_client_certificates_need_tls() {
        let layer = SettingsLayer {
            tls_cert: Some("cert.pem".into()),
            otlp_client_ca: Some("ca.pem".into()),
            ..Default::default()
        };
        let message = Settings::resolve(layer).unwrap_err().to_string();
        assert!(message.contains("tls_cert: needs tls_key"), "{message}");
        assert!(message.contains("otlp_client_ca: client certificates need TLS"));
    }

    #[test]
    fn unknown_keys_in_the_file_name_their_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("redline.toml");
        std::fs::write(&path, "window = \"10s\"\nwindw = \"5s\"\n").unwrap();
        let message = Settings::load(SettingsLayer::default(), Some(&path))
            .unwrap_err()
            .to_string();
        assert!(message.contains("redline.toml:2:1"), "{message}");
        assert!(message.contains("windw"), "{message}");
    }
}
