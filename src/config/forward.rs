//! The settings of OTLP forwarding (`forward_otlp_endpoint`, `forward_otlp_protocol`,
//! `forward_otlp_headers`, `forward_signals`, `forward_queue_max_bytes`), checked into what
//! [`crate::forward`] runs with.

use crate::export::remote_write::header_map;
use crate::forward::{DEFAULT_QUEUE_MAX_BYTES, ForwardSettings, Protocol};
use crate::self_metrics::Signal;

/// The settings' raw values, as the layers merged them.
pub struct ForwardLayer {
    pub endpoint: Option<String>,
    pub protocol: Option<String>,
    pub headers: Option<Vec<String>>,
    pub signals: Option<Vec<String>>,
    pub queue_max_bytes: Option<usize>,
}

pub fn resolve(layer: ForwardLayer, problems: &mut Vec<String>) -> Option<ForwardSettings> {
    let Some(endpoint) = layer.endpoint.filter(|e| !e.is_empty()) else {
        let given = [
            ("forward_otlp_protocol", layer.protocol.is_some()),
            ("forward_otlp_headers", layer.headers.is_some()),
            ("forward_signals", layer.signals.is_some()),
            ("forward_queue_max_bytes", layer.queue_max_bytes.is_some()),
        ];
        for (name, _) in given.iter().filter(|(_, given)| *given) {
            problems.push(format!("{name}: needs forward_otlp_endpoint"));
        }
        return None;
    };
    let endpoint = match endpoint.parse::<axum::http::Uri>() {
        Ok(url)
            if matches!(url.scheme_str(), Some("http" | "https"))
                && url.host().is_some()
                && url.query().is_none()
                && !url.authority().is_some_and(|a| a.as_str().contains('@')) =>
        {
            url
        }
        _ => {
            problems.push(format!(
                "forward_otlp_endpoint: {endpoint:?} is not an http:// or https:// URL without \
                 credentials or query (forward_otlp_headers holds credentials)"
            ));
            return None;
        }
    };
    let protocol = match layer.protocol.as_deref() {
        None => Protocol::Grpc,
        Some(text) => Protocol::parse(text).unwrap_or_else(|| {
            problems.push(format!(
                "forward_otlp_protocol: {text:?} is not grpc or http/protobuf"
            ));
            Protocol::Grpc
        }),
    };
    let mut headers = Vec::new();
    for text in layer.headers.unwrap_or_default() {
        match text.split_once('=') {
            Some((name, value)) => headers.push((name.trim().to_string(), value.to_string())),
            None => problems.push(format!("forward_otlp_headers: {text:?} is not name=value")),
        }
    }
    if let Err(e) = header_map(&headers) {
        problems.push(format!("forward_otlp_headers: {e}"));
    }
    let signals = match layer.signals {
        None => Signal::ALL.to_vec(),
        Some(names) => {
            let mut signals = Vec::new();
            for name in names {
                match Signal::ALL.into_iter().find(|s| s.name() == name.trim()) {
                    Some(signal) if !signals.contains(&signal) => signals.push(signal),
                    Some(_) => {}
                    None => problems.push(format!(
                        "forward_signals: {name:?} is not traces, metrics or logs"
                    )),
                }
            }
            if signals.is_empty() {
                problems.push("forward_signals: names no signal".into());
            }
            signals
        }
    };
    let queue_max_bytes = layer.queue_max_bytes.unwrap_or(DEFAULT_QUEUE_MAX_BYTES);
    if queue_max_bytes == 0 {
        problems.push("forward_queue_max_bytes: must be at least 1".into());
    }
    Some(ForwardSettings {
        endpoint,
        protocol,
        headers,
        signals,
        queue_max_bytes,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::{Settings, SettingsLayer};
    use crate::forward::Protocol;
    use crate::self_metrics::Signal;

    #[test]
    fn the_file_and_the_flags_give_the_upstream() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("redline.toml");
        std::fs::write(
            &path,
            r#"
forward_otlp_endpoint = "https://collector.example:4318/otlp"
forward_otlp_protocol = "http/protobuf"
forward_otlp_headers = { "x-otlp-api-key" = "k-1234567890abcdef", "X-Scope-OrgID" = "team-a" }
forward_signals = ["traces"]
forward_queue_max_bytes = 1000000
"#,
        )
        .unwrap();
        let settings = Settings::load(SettingsLayer::default(), Some(&path)).unwrap();
        let forward = settings.forward.expect("forwarding set");
        assert_eq!(forward.protocol, Protocol::HttpProtobuf);
        assert_eq!(forward.signals, [Signal::Traces]);
        assert_eq!(forward.queue_max_bytes, 1_000_000);
        assert_eq!(
            forward.headers,
            [
                ("X-Scope-OrgID".to_string(), "team-a".to_string()),
                (
                    "x-otlp-api-key".to_string(),
                    "k-1234567890abcdef".to_string()
                )
            ]
        );
        assert_eq!(
            forward.display_name(),
            "https://collector.example:4318/otlp"
        );
        // Flags win over the file; the defaults fill what neither says.
        let cli = SettingsLayer {
            forward_otlp_endpoint: Some("http://127.0.0.1:4317".into()),
            forward_otlp_protocol: Some("grpc".into()),
            forward_signals: Some(vec!["metrics".into(), "logs".into()]),
            ..Default::default()
        };
        let forward = Settings::load(cli, Some(&path)).unwrap().forward.unwrap();
        assert_eq!(forward.protocol, Protocol::Grpc);
        assert_eq!(forward.signals, [Signal::Metrics, Signal::Logs]);
        assert_eq!(forward.queue_max_bytes, 1_000_000);
        let layer = SettingsLayer {
            forward_otlp_endpoint: Some("http://127.0.0.1:4317".into()),
            ..Default::default()
        };
        let forward = Settings::resolve(layer).unwrap().forward.unwrap();
        assert_eq!(forward.protocol, Protocol::Grpc);
        assert_eq!(forward.signals, Signal::ALL);
        assert!(
            Settings::resolve(SettingsLayer::default())
                .unwrap()
                .forward
                .is_none()
        );
    }

    #[test]
    fn bad_values_are_reported() {
        let layer = SettingsLayer {
            forward_otlp_endpoint: Some("ftp://x:21".into()),
            ..Default::default()
        };
        let message = Settings::resolve(layer).unwrap_err().to_string();
        assert!(message.contains("\"ftp://x:21\""), "{message}");
        let layer = SettingsLayer {
            forward_otlp_endpoint: Some("http://user:pw@x:4317".into()),
            ..Default::default()
        };
        assert!(Settings::resolve(layer).is_err());
        let layer = SettingsLayer {
            forward_otlp_endpoint: Some("http://x:4317".into()),
            forward_otlp_protocol: Some("http/json".into()),
            forward_otlp_headers: Some(vec!["novalue".into(), "bad name=v".into()]),
            forward_signals: Some(vec!["spans".into()]),
            forward_queue_max_bytes: Some(0),
            ..Default::default()
        };
        let message = Settings::resolve(layer).unwrap_err().to_string();
        for expected in [
            "\"http/json\" is not grpc or http/protobuf",
            "\"novalue\" is not name=value",
            "\"bad name\" is not a valid HTTP header",
            "\"spans\" is not traces, metrics or logs",
            "forward_queue_max_bytes: must be at least 1",
        ] {
            assert!(message.contains(expected), "{expected} in {message}");
        }
        let layer = SettingsLayer {
            forward_signals: Some(vec!["traces".into()]),
            ..Default::default()
        };
        let message = Settings::resolve(layer).unwrap_err().to_string();
        assert!(
            message.contains("forward_signals: needs forward_otlp_endpoint"),
            "{message}"
        );
    }
}
