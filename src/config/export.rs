//! The settings of RED for Prometheus: the duration histogram's bounds, the external labels,
//! and the remote-write targets (`--remote-write-url`, and `[[remote_write]]` tables in the
//! file), checked into what [`crate::export`] runs with.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

use crate::aggregate::totals::{DEFAULT_BOUNDS_SECONDS, DurationBounds};
use crate::export::ExternalLabels;
use crate::export::remote_write::{
    DEFAULT_INTERVAL, DEFAULT_QUEUE_MAX_BYTES, RemoteWriteTarget, header_map,
};

/// One `[[remote_write]]` table of the file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RemoteWriteTable {
    pub url: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub basic_auth: Option<BasicAuthTable>,
    /// How often a sample of every series is pushed [default: 15s].
    pub interval: Option<String>,
    /// Compressed requests that may wait for this target, in bytes [default: 16 MiB].
    pub queue_max_bytes: Option<usize>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BasicAuthTable {
    pub username: String,
    pub password: String,
}

/// What RED for Prometheus runs with.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExportSettings {
    pub external_labels: ExternalLabels,
    pub remote_write: Vec<RemoteWriteTarget>,
}

/// The file's `external_labels = { host = "a" }` as the flags' `host=a`.
pub fn labels_from_table<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Vec<String>>, D::Error> {
    let table = Option::<BTreeMap<String, String>>::deserialize(deserializer)?;
    Ok(table.map(|t| t.into_iter().map(|(k, v)| format!("{k}={v}")).collect()))
}

/// The settings' raw values, as the layers merged them.
pub struct ExportLayer {
    pub bounds: Option<Vec<f64>>,
    pub external_labels: Option<Vec<String>>,
    pub urls: Option<Vec<String>>,
    pub interval: Option<String>,
    pub tables: Option<Vec<RemoteWriteTable>>,
}

pub fn resolve(layer: ExportLayer, problems: &mut Vec<String>) -> (DurationBounds, ExportSettings) {
    let bounds = layer
        .bounds
        .unwrap_or_else(|| DEFAULT_BOUNDS_SECONDS.to_vec());
    let bounds = DurationBounds::new(&bounds).unwrap_or_else(|e| {
        problems.push(format!("red_histogram_bounds: {e}"));
        DurationBounds::default()
    });
    let mut labels = Vec::new();
    for text in layer.external_labels.unwrap_or_default() {
        match text.split_once('=') {
            Some((name, value)) => labels.push((name.to_string(), value.to_string())),
            None => problems.push(format!("external_labels: {text:?} is not name=value")),
        }
    }
    let external_labels = ExternalLabels::new(labels).unwrap_or_else(|e| {
        problems.push(format!("external_labels: {e}"));
        ExternalLabels::default()
    });
    let flag_interval = interval(problems, "remote_write_interval", layer.interval);
    let mut tables: Vec<RemoteWriteTable> = layer
        .urls
        .unwrap_or_default()
        .into_iter()
        .map(|url| RemoteWriteTable {
            url,
            headers: BTreeMap::new(),
            basic_auth: None,
            interval: None,
            queue_max_bytes: None,
        })
        .collect();
    let flag_count = tables.len();
    tables.extend(layer.tables.unwrap_or_default());
    let mut remote_write = Vec::new();
    for (i, table) in tables.into_iter().enumerate() {
        let interval = if i < flag_count {
            flag_interval
        } else {
            interval(problems, "remote_write.interval", table.interval)
        };
        let url = match table.url.parse::<axum::http::Uri>() {
            Ok(url)
                if matches!(url.scheme_str(), Some("http" | "https"))
                    && url.host().is_some()
                    && !url.authority().is_some_and(|a| a.as_str().contains('@')) =>
            {
                url
            }
            _ => {
                problems.push(format!(
                    "remote_write: {:?} is not an http:// or https:// URL without \
                     credentials (basic_auth holds those)",
                    table.url
                ));
                continue;
            }
        };
        let headers: Vec<(String, String)> = table.headers.into_iter().collect();
        if let Err(e) = header_map(&headers) {
            problems.push(format!("remote_write.headers: {e}"));
        }
        let queue_max_bytes = table.queue_max_bytes.unwrap_or(DEFAULT_QUEUE_MAX_BYTES);
        if queue_max_bytes == 0 {
            problems.push("remote_write.queue_max_bytes: must be at least 1".into());
        }
        remote_write.push(RemoteWriteTarget {
            url,
            headers,
            basic_auth: table.basic_auth.map(|b| (b.username, b.password)),
            interval,
            queue_max_bytes,
        });
    }
    (
        bounds,
        ExportSettings {
            external_labels,
            remote_write,
        },
    )
}

fn interval(problems: &mut Vec<String>, name: &str, text: Option<String>) -> std::time::Duration {
    match text {
        None => DEFAULT_INTERVAL,
        Some(text) => match humantime::parse_duration(&text) {
            Ok(d) if !d.is_zero() => d,
            _ => {
                problems.push(format!("{name}: {text:?} is not a duration like 15s or 1m"));
                DEFAULT_INTERVAL
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Settings, SettingsLayer};

    #[test]
    fn the_file_and_the_flags_give_remote_write_targets_and_labels() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("redline.toml");
        std::fs::write(
            &path,
            r#"
red_histogram_bounds = [0.1, 0.5, 2]
external_labels = { host = "web-1" }

[[remote_write]]
url = "https://mimir.example/api/v1/push"
headers = { "X-Scope-OrgID" = "team-a" }
basic_auth = { username = "u", password = "p" }
interval = "30s"
"#,
        )
        .unwrap();
        let cli = SettingsLayer {
            remote_write_url: Some(vec!["http://127.0.0.1:9090/api/v1/write".into()]),
            remote_write_interval: Some("2s".into()),
            ..Default::default()
        };
        let settings = Settings::load(cli, Some(&path)).unwrap();
        assert_eq!(
            settings.aggregator.duration_bounds.seconds(),
            &[0.1, 0.5, 2.0]
        );
        let labels: Vec<_> = settings.export.external_labels.iter().collect();
        assert_eq!(labels, [("host", "web-1")]);
        let targets = &settings.export.remote_write;
        assert_eq!(targets.len(), 2);
        assert_eq!(targets[0].interval.as_secs(), 2);
        assert_eq!(targets[1].interval.as_secs(), 30);
        assert_eq!(targets[1].basic_auth, Some(("u".into(), "p".into())));
        assert_eq!(
            targets[1].headers,
            [("X-Scope-OrgID".to_string(), "team-a".to_string())]
        );
    }

    #[test]
    fn bad_values_are_reported() {
        let layer = SettingsLayer {
            red_histogram_bounds: Some(vec![1.0, 0.5]),
            external_labels: Some(vec!["route=x".into(), "novalue".into()]),
            remote_write_url: Some(vec![
                "ftp://x/".into(),
                "http://user:pw@host/api/v1/write".into(),
            ]),
            ..Default::default()
        };
        let message = Settings::resolve(layer).unwrap_err().to_string();
        for expected in [
            "red_histogram_bounds",
            "\"novalue\" is not name=value",
            "\"ftp://x/\"",
            "user:pw@host",
        ] {
            assert!(message.contains(expected), "{expected} in {message}");
        }
    }
}
