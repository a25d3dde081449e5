//! The demo's fault scenario fires the shipped `RecommendationsFailing` rule: the scenario, the
//! demo's instance start-up and load, and a real redline with the repository's `alerts.toml`
//! whose time constants (windows, `for`, evaluation and grouping intervals) are divided by
//! [`SCALE`] — the rules' logic stays the shipped one. The e-mails are read from redline's `.eml`
//! outbox: a firing one during the outage, a resolved one after the recovery.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use example_api::demo::{self, DemoTelemetry, eml_subject, start_instances};
use example_api::loadgen::{self, Options};
use example_api::sampling::Sampling;

use crate::helpers::{TestApp, export_config, test_config};
use crate::with_redline::start_redline_with;

/// The rules' time constants are divided by this: the 1 min window becomes 5 s.
const SCALE: u32 = 12;
const FAIL_AFTER: Duration = Duration::from_secs(6);
const FAIL_FOR: Duration = Duration::from_secs(15);
const SHIPPED_RULES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../alerts.toml");

/// `text` (`500ms`, `15s`, `1m`, `4h`, `1d`) in milliseconds.
fn millis(text: &str) -> u64 {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .expect("a duration has a unit");
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().expect("a whole number");
    number
        * match unit {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            other => panic!("unit {other:?} of {text:?}"),
        }
}

/// Divides the durations under `keys` of `table` by [`SCALE`].
fn shorten(table: &mut toml::Table, keys: &[&str]) {
    for key in keys {
        if let Some(toml::Value::String(text)) = table.get_mut(*key) {
            *text = format!("{}ms", (millis(text) / u64::from(SCALE)).max(1));
        }
    }
}

/// The shipped rules file with its time constants shortened.
fn shortened_rules() -> String {
    let text = std::fs::read_to_string(SHIPPED_RULES).expect("the shipped alerts.toml");
    let mut doc: toml::Table = toml::from_str(&text).expect("alerts.toml is TOML");
    if let Some(toml::Value::Table(global)) = doc.get_mut("global") {
        shorten(global, &["eval_interval"]);
    }
    if let Some(toml::Value::Table(route)) = doc.get_mut("route") {
        shorten(route, &["group_wait", "group_interval", "repeat_interval"]);
    }
    let Some(toml::Value::Array(rules)) = doc.get_mut("rule") else {
        panic!("alerts.toml has rules");
    };
    for rule in rules.iter_mut() {
        if let toml::Value::Table(rule) = rule {
            shorten(
                rule,
                &[
                    "window",
                    "for",
                    "keep_firing_for",
                    "offset",
                    "baseline_window",
                ],
            );
        }
    }
    toml::to_string(&doc).expect("TOML again")
}

#[test]
fn the_shortened_rules_keep_the_logic_and_divide_the_times() {
    let doc: toml::Table = toml::from_str(&shortened_rules()).unwrap();
    let rule = doc["rule"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"].as_str() == Some("RecommendationsFailing"))
        .expect("the shipped rules have RecommendationsFailing");
    assert_eq!(rule["window"].as_str(), Some("5000ms"));
    assert_eq!(rule["service"].as_str(), Some("recommendations"));
    assert_eq!(rule["stat"].as_str(), Some("error_rate"));
    assert_eq!(doc["global"]["eval_interval"].as_str(), Some("1250ms"));
}

/// Subjects of the `.eml` files in `dir`, with their files.
fn emails(dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "eml"))
        .filter_map(|p| {
            let text = std::fs::read_to_string(&p).ok()?;
            Some((eml_subject(&text)?.to_string(), p))
        })
        .collect()
}

/// Waits until `dir` holds an e-mail whose subject starts with `status` and names the rule;
/// returns the subject and when it was seen, or `None` at `deadline`.
async fn email_seen(dir: &Path, status: &str, deadline: Instant) -> Option<(String, Instant)> {
    loop {
        if let Some((subject, _)) = emails(dir)
            .into_iter()
            .find(|(s, _)| s.starts_with(status) && s.contains("RecommendationsFailing"))
        {
            return Some((subject, Instant::now()));
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_scenario_fires_recommendations_failing_and_resolves_it() {
    let rules = shortened_rules();
    let redline = start_redline_with(|layer, dir| {
        let path = dir.join("alerts.toml");
        std::fs::write(&path, &rules).unwrap();
        layer.alerts_file = Some(path);
        // Windows of 1 s, so that a 5 s rule window holds several.
        layer.window = Some("1s".into());
    })
    .await;
    let outbox = redline.dir.path().join("outbox");

    let export = export_config(
        format!("http://{}", redline.grpc),
        "grpc",
        Duration::from_secs(1),
        Sampling::default(),
    );
    let tel = DemoTelemetry::new(&export, 1).unwrap();
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut cfg = test_config(&dir);
    // The breaker's wait before probing, shortened like the rules' windows: the probes are
    // what the rule sees during the outage.
    cfg.breaker.open_wait /= SCALE;
    let mut apps = start_instances(&cfg, &tel).await.unwrap();
    assert_eq!(apps.len(), 1);
    let app = TestApp::run(apps.remove(0), dir);

    let (stop_load, load_stopped) = tokio::sync::oneshot::channel::<()>();
    let load = tokio::spawn(loadgen::run(
        Options::new(app.url(""), 40.0, Duration::from_secs(120)),
        async {
            let _ = load_stopped.await;
        },
    ));
    let start = Instant::now();
    let recovery = start + FAIL_AFTER + FAIL_FOR;
    tokio::spawn(demo::scenario(
        app.state.faults.clone(),
        FAIL_AFTER,
        FAIL_FOR,
    ));

    let firing = email_seen(&outbox, "[FIRING", recovery).await;
    let (subject, fired_at) = firing.unwrap_or_else(|| {
        panic!(
            "no firing RecommendationsFailing e-mail during the outage; the outbox: {:?}",
            emails(&outbox)
        )
    });
    assert!(
        fired_at >= start + FAIL_AFTER,
        "fired before the outage, {:?} after the start: {subject}",
        fired_at - start
    );
    assert!(subject.contains("recommendations"), "{subject}");

    let resolved = email_seen(&outbox, "[RESOLVED]", recovery + Duration::from_secs(30)).await;
    let (subject, resolved_at) = resolved.unwrap_or_else(|| {
        panic!(
            "no resolved RecommendationsFailing e-mail after the recovery; the outbox: {:?}",
            emails(&outbox)
        )
    });
    assert!(
        resolved_at >= recovery,
        "resolved during the outage, {:?} after the start: {subject}",
        resolved_at - start
    );

    let _ = stop_load.send(());
    load.await.unwrap().expect("the load generator ran");
    app.stop().await;
    tel.shutdown().await;
    redline.stop().await;
}
