//! The dashboard in a real headless Chromium (Debian's `chromium`, driven through
//! `chromedriver` with fantoccini): every page loads without console errors, charts are drawn
//! at a real size, the range picker and sorting work, hostile telemetry stays inert (no dialog,
//! no injected element), and a screenshot of each page lands in `target/screenshots/`.
//!
//! Nothing is skipped: without Chromium or chromedriver these tests fail and say how to
//! install them (`scripts/test.sh` does it).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use crate::helpers::poll;
use crate::pages::{XSS_ROUTE, XSS_SERVICE, fill, start, urlencode};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A chromedriver process on a free port, killed on drop.
struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn require(path: &str) {
    assert!(
        Path::new(path).exists(),
        "{path} is missing: the browser tests need Debian's chromium and chromium-driver \
         (apt-get install -y chromium chromium-driver; scripts/test.sh installs them)"
    );
}

async fn driver() -> Driver {
    require(CHROMIUM);
    require(CHROMEDRIVER);
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let driver = Driver { child, port };
    let status = format!("http://127.0.0.1:{port}/status");
    let ready = poll(Duration::from_secs(20), || async {
        let response = reqwest::get(&status).await.ok()?;
        response.status().is_success().then_some(())
    })
    .await;
    assert!(
        ready.is_some(),
        "chromedriver did not answer on port {port}"
    );
    driver
}

/// A headless Chromium session with a fresh profile.
async fn browser(driver: &Driver, profile: &Path) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert("browserName".into(), json!("chrome"));
    caps.insert("unhandledPromptBehavior".into(), json!("ignore"));
    caps.insert("goog:loggingPrefs".into(), json!({ "browser": "ALL" }));
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": [
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                "--window-size=1400,1000",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a Chromium session")
}

/// Browser console messages since the last call (chromedriver's log endpoint).
async fn console(port: u16, client: &Client) -> Vec<Value> {
    let session = client.session_id().await.unwrap().expect("session id");
    let body: Value = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/session/{session}/se/log"))
        .json(&json!({ "type": "browser" }))
        .send()
        .await
        .expect("log request")
        .json()
        .await
        .expect("log JSON");
    body["value"].as_array().cloned().unwrap_or_default()
}

/// Emulates `prefers-color-scheme` through the DevTools protocol.
async fn color_scheme(port: u16, client: &Client, scheme: &str) {
    let session = client.session_id().await.unwrap().expect("session id");
    let response = reqwest::Client::new()
        .post(format!(
            "http://127.0.0.1:{port}/session/{session}/goog/cdp/execute"
        ))
        .json(&json!({
            "cmd": "Emulation.setEmulatedMedia",
            "params": { "features": [{ "name": "prefers-color-scheme", "value": scheme }] }
        }))
        .send()
        .await
        .expect("cdp request");
    assert!(
        response.status().is_success(),
        "{}",
        response.text().await.unwrap()
    );
}

fn screenshots_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&dir).expect("screenshots dir");
    dir
}

/// A full-page screenshot: the window grows to the document's height first.
async fn screenshot(client: &Client, name: &str) {
    let height = client
        .execute("return document.documentElement.scrollHeight", vec![])
        .await
        .unwrap()
        .as_u64()
        .unwrap_or(1000)
        .clamp(600, 6000);
    client
        .set_window_size(1400, height as u32 + 120)
        .await
        .unwrap();
    let png = client.screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    std::fs::write(screenshots_dir().join(format!("{name}.png")), png).unwrap();
    client.set_window_size(1400, 1000).await.unwrap();
}

/// What every page must satisfy: it loaded, no console error, no dialog, no injected element,
/// and every chart is drawn at a real size.
async fn check_page(port: u16, client: &Client, base: &str, path: &str, name: &str) {
    client
        .goto(&format!("{base}{path}"))
        .await
        .expect("navigates");
    let title = client.title().await.unwrap();
    assert!(title.ends_with("· redline"), "{path}: title {title:?}");
    assert!(
        client.get_alert_text().await.is_err(),
        "{path}: a dialog opened (injected script ran)"
    );
    let injected = client
        .execute(
            "return document.querySelectorAll('img[src=x], script:not([src]), [onerror]').length",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(injected, json!(0), "{path}: injected elements");
    let sizes = client
        .execute(
            "return Array.from(document.querySelectorAll('svg.rl-chart')).map(s => { \
               const r = s.getBoundingClientRect(); return [r.width, r.height]; })",
            vec![],
        )
        .await
        .unwrap();
    for size in sizes.as_array().unwrap() {
        let (w, h) = (size[0].as_f64().unwrap(), size[1].as_f64().unwrap());
        assert!(w >= 200.0 && h >= 80.0, "{path}: a chart of {w}×{h}");
    }
    let errors: Vec<Value> = console(port, client)
        .await
        .into_iter()
        .filter(|m| m["level"] == "SEVERE" || m["level"] == "WARNING")
        .collect();
    assert!(errors.is_empty(), "{path}: console errors {errors:#?}");
    screenshot(client, name).await;
}

async fn charts_on_page(client: &Client) -> usize {
    client
        .find_all(Locator::Css("svg.rl-chart"))
        .await
        .unwrap()
        .len()
}

async fn wait_for_url(client: &Client, fragment: &str) {
    let found = poll(Duration::from_secs(10), || async {
        let url = client.current_url().await.ok()?;
        url.as_str().contains(fragment).then_some(())
    })
    .await;
    assert!(found.is_some(), "URL never contained {fragment:?}");
}

async fn first_route(client: &Client) -> String {
    client
        .find(Locator::Css("#endpoints tbody tr td.name a"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_works_in_a_real_browser() {
    let driver = driver().await;
    let profile = tempfile::tempdir().unwrap();
    let client = browser(&driver, profile.path()).await;
    let redline = start().await;
    fill(&redline).await;
    // Run in a task so that the browser is closed even when an assertion fails.
    let task = tokio::spawn(run(driver.port, client.clone(), redline.url("")));
    let result = task.await;
    client.close().await.ok();
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}

async fn run(port: u16, client: Client, base: String) {
    let client = &client;
    let url = |path: &str| format!("{base}{path}");
    // Every page, in light mode, with a screenshot each.
    let evil_service = format!("/services/{}", urlencode(XSS_SERVICE));
    let evil_route = format!(
        "/services/checkout/endpoints?method=GET&route={}",
        urlencode(XSS_ROUTE)
    );
    let pages = [
        ("/", "overview"),
        ("/services/checkout", "service"),
        (
            "/services/checkout/endpoints?method=GET&route=%2Fproducts%2F%7Bid%7D",
            "endpoint",
        ),
        ("/traces", "traces"),
        ("/traces/00000000000000000000000000001000", "trace"),
        (
            "/metrics-explorer?service=checkout&name=db.client.connection.count",
            "metrics-explorer",
        ),
        ("/dashboards", "dashboards"),
        ("/dashboards/api-golden-signals", "dashboard-golden-signals"),
        (evil_service.as_str(), "xss-service"),
        (evil_route.as_str(), "xss-route"),
        ("/traces/00000000000000000000000000003000", "xss-trace"),
        ("/services/nobody", "empty-service"),
    ];
    for (path, name) in pages {
        check_page(port, client, &base, path, name).await;
    }

    // The hostile names are shown as text.
    client.goto(&url("/")).await.unwrap();
    let text = client
        .find(Locator::Css("main"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(XSS_SERVICE),
        "the service name is shown as text"
    );
    client
        .goto(&url("/traces/00000000000000000000000000003000"))
        .await
        .unwrap();
    let text = client
        .find(Locator::Css("#waterfall"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("<script>alert(1)</script>"), "{text}");

    // Charts on the service page.
    client.goto(&url("/services/checkout")).await.unwrap();
    assert_eq!(charts_on_page(client).await, 5);

    // The range picker: 6h becomes current and is in the URL (so bookmarkable).
    client
        .find(Locator::Css("a.preset[data-range='6h']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for_url(client, "range=6h").await;
    let current = client
        .find(Locator::Css("a.preset[aria-current='true']"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(current, "6h");
    assert_eq!(charts_on_page(client).await, 5, "charts redrawn for 6h");

    // Sorting: p99 descending puts the slow POST /orders first, ascending last.
    client
        .find(Locator::Css("#endpoints th a[data-sort='p99']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for_url(client, "sort=p99").await;
    assert!(
        client
            .current_url()
            .await
            .unwrap()
            .as_str()
            .contains("range=6h"),
        "the range is kept"
    );
    assert_eq!(first_route(client).await, "/orders");
    client
        .find(Locator::Css("#endpoints th a[data-sort='p99']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for_url(client, "dir=asc").await;
    assert_ne!(first_route(client).await, "/orders");

    // A custom range through the form.
    client.goto(&url("/")).await.unwrap();
    client
        .find(Locator::Css("#range-picker details summary"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    client
        .execute(
            "document.querySelector('#custom-range input[name=from]').value = '2026-01-01T00:00';\
             document.querySelector('#custom-range input[name=to]').value = '2026-01-01T06:00';",
            vec![],
        )
        .await
        .unwrap();
    client
        .find(Locator::Css("#custom-range button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for_url(client, "from=2026-01-01T00%3A00").await;
    let footer = client
        .find(Locator::Css("footer"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        footer.contains("2026-01-01 00:00:00 UTC – 2026-01-01 06:00:00 UTC"),
        "{footer}"
    );

    // Dark mode: the chart background follows the page.
    color_scheme(port, client, "dark").await;
    for (path, name) in [
        ("/", "dark-overview"),
        ("/services/checkout", "dark-service"),
        ("/dashboards/api-golden-signals", "dark-dashboard"),
    ] {
        check_page(port, client, &base, path, name).await;
    }
    let background = client
        .execute(
            "return getComputedStyle(document.querySelector('svg.rl-chart .rl-bg')).fill",
            vec![],
        )
        .await
        .unwrap();
    assert_ne!(background, json!("rgb(255, 255, 255)"), "dark charts");
}
