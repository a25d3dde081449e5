//! A real Prometheus (Debian's `prometheus` package, installed by `scripts/test.sh`) started by
//! a test on a free loopback port with a temporary data directory, and its query API.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::helpers::poll;

pub struct TestPrometheus {
    pub addr: std::net::SocketAddr,
    child: Child,
    client: reqwest::Client,
    dir: tempfile::TempDir,
}

impl TestPrometheus {
    /// Starts Prometheus with `config` (its YAML) and the remote-write receiver on, and waits
    /// until `/-/ready` says it is ready.
    pub async fn start(config: &str) -> TestPrometheus {
        let client = reqwest::Client::new();
        // A port another process takes between our probe and Prometheus' bind fails the start;
        // then a new port is tried.
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("temp dir");
            let config_path = dir.path().join("prometheus.yml");
            std::fs::write(&config_path, config).expect("write config");
            let addr = free_port();
            let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
            let child = Command::new("prometheus")
                .arg(format!("--config.file={}", config_path.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                .arg("--web.enable-remote-write-receiver")
                .arg("--log.level=warn")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("prometheus starts (apt-get install prometheus; scripts/test.sh does)");
            let mut prometheus = TestPrometheus {
                addr,
                child,
                client: client.clone(),
                dir,
            };
            let ready = poll(Duration::from_secs(30), || {
                let exited = matches!(prometheus.child.try_wait(), Ok(Some(_)));
                let request = prometheus
                    .client
                    .get(format!("http://{addr}/-/ready"))
                    .send();
                async move {
                    if exited {
                        return Some(false);
                    }
                    match request.await {
                        Ok(r) if r.status().is_success() => Some(true),
                        _ => None,
                    }
                }
            })
            .await;
            if ready == Some(true) {
                return prometheus;
            }
            eprintln!("prometheus did not start on {addr}:\n{}", prometheus.log());
        }
        panic!("prometheus did not become ready");
    }

    pub fn write_url(&self) -> String {
        format!("http://{}/api/v1/write", self.addr)
    }

    /// The result vector of an instant PromQL query: each sample's labels and value.
    pub async fn query(&self, promql: &str) -> Vec<(Value, f64)> {
        let response = self
            .client
            .post(format!("http://{}/api/v1/query", self.addr))
            .form(&[("query", promql)])
            .send()
            .await
            .expect("query");
        let status = response.status();
        let body: Value = response.json().await.expect("JSON");
        assert!(status.is_success(), "{promql}: {status} {body}");
        body["data"]["result"]
            .as_array()
            .map(|samples| {
                samples
                    .iter()
                    .map(|s| {
                        let value = s["value"][1]
                            .as_str()
                            .and_then(|v| v.parse::<f64>().ok())
                            .unwrap_or(f64::NAN);
                        (s["metric"].clone(), value)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Polls `promql` until its single value satisfies `done`; returns it, or panics with the
    /// last answer and Prometheus' log after `deadline`.
    pub async fn wait_for_value(
        &self,
        promql: &str,
        deadline: Duration,
        done: impl Fn(f64) -> bool,
    ) -> f64 {
        let found = poll(deadline, || async {
            let result = self.query(promql).await;
            (result.len() == 1)
                .then(|| result[0].1)
                .filter(|v| done(*v))
        })
        .await;
        match found {
            Some(value) => value,
            None => panic!(
                "{promql} did not reach the expected value in {deadline:?}; last: {:?}\n{}",
                self.query(promql).await,
                self.log()
            ),
        }
    }

    /// The values of `label` over the series `selector` matches.
    pub async fn label_values(&self, label: &str, selector: &str) -> Vec<String> {
        let body: Value = self
            .client
            .get(format!(
                "http://{}/api/v1/label/{label}/values?match[]={}",
                self.addr,
                percent_encoding::utf8_percent_encode(selector, percent_encoding::NON_ALPHANUMERIC)
            ))
            .send()
            .await
            .expect("label values")
            .json()
            .await
            .expect("JSON");
        body["data"]
            .as_array()
            .map(|values| {
                values
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for TestPrometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}
