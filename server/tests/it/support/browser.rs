//! A real headless Chromium driven over WebDriver: Debian's `chromium` and
//! `chromedriver` (installed by `.ci/chromium.sh`), one chromedriver per browser on a
//! free loopback port, and fantoccini as the client. Screenshots go to
//! `<target>/screenshots/`, so a person can look at every main page.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use super::poll::poll_until;
use super::process::free_port;

/// A browser window (desktop size unless resized) and the chromedriver behind it.
pub struct Browser {
    pub client: Client,
    driver: Child,
}

impl Browser {
    pub async fn start() -> Browser {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (bash .ci/chromium.sh installs it)");
        let caps: serde_json::Map<String, Value> = serde_json::from_value(json!({
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu",
                    "--disable-dev-shm-usage", "--window-size=1280,900",
                    "--enable-precise-memory-info",
                ],
            }
        }))
        .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = poll_until(Duration::from_secs(20), || {
            let url = url.clone();
            let caps = caps.clone();
            let connector = connector.clone();
            async move {
                ClientBuilder::new(connector)
                    .capabilities(caps)
                    .connect(&url)
                    .await
                    .map_err(|e| e.to_string())
            }
        })
        .await
        .unwrap_or_else(|t| panic!("chromedriver did not answer: {}", t.state));
        Browser { client, driver }
    }

    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap();
    }

    /// `act` on the element `css` finds; found again (bounded) if a live page replaced
    /// the element between the find and the act (a stale element reference).
    async fn on_element<T, F, Fut>(&self, css: &str, what: &str, act: F) -> T
    where
        F: Fn(Element) -> Fut,
        Fut: std::future::Future<Output = Result<T, fantoccini::error::CmdError>>,
    {
        poll_until(Duration::from_secs(10), || async {
            let e = self
                .client
                .find(Locator::Css(css))
                .await
                .map_err(|e| format!("no `{css}`: {e}"))?;
            act(e).await.map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|t| panic!("{what} `{css}`: {}", t.state))
    }

    pub async fn text(&self, css: &str) -> String {
        self.on_element(css, "the text of", |e| async move { e.text().await })
            .await
    }

    pub async fn has(&self, css: &str) -> bool {
        !self
            .client
            .find_all(Locator::Css(css))
            .await
            .unwrap()
            .is_empty()
    }

    /// Waits (bounded) until `css` matches and its text contains `needle`.
    pub async fn wait_text(&self, css: &str, needle: &str, within: Duration) -> String {
        poll_until(within, || async {
            match self.client.find(Locator::Css(css)).await {
                Ok(e) => {
                    let t = e.text().await.unwrap_or_default();
                    if t.contains(needle) { Ok(t) } else { Err(t) }
                }
                Err(e) => Err(e.to_string()),
            }
        })
        .await
        .unwrap_or_else(|t| panic!("`{css}` never showed {needle:?}: last {}", t.state))
    }

    pub async fn fill(&self, css: &str, value: &str) {
        let e = self.client.find(Locator::Css(css)).await.unwrap();
        e.clear().await.unwrap();
        e.send_keys(value).await.unwrap();
    }

    /// A real click on `css`; found again (bounded) if a live page replaced the element
    /// between the find and the click.
    pub async fn click(&self, css: &str) {
        self.on_element(css, "click on", |e| async move { e.click().await })
            .await;
    }

    /// Clicks a form's submit button and returns once the page the form leads to has
    /// loaded. WebDriver's click may return before a form's navigation starts, so a
    /// mark set on the old document tells the two apart.
    pub async fn submit(&self, css: &str) {
        self.js("window.__beforeSubmit = true; return null").await;
        self.click(css).await;
        poll_until(Duration::from_secs(20), || async {
            let state = self
                .client
                .execute(
                    "return window.__beforeSubmit ? 'old' : document.readyState",
                    vec![],
                )
                .await
                .map_err(|e| e.to_string())?;
            if state == "complete" {
                Ok(())
            } else {
                Err(format!("document {state}"))
            }
        })
        .await
        .unwrap_or_else(|t| panic!("submit with `{css}`: {}", t.state));
    }

    /// The rendered text (`innerText`) of `css`, read in one script — a live page is
    /// never patched during a script, so the element cannot go stale half-way.
    /// `(missing)` when nothing matches.
    pub async fn read(&self, css: &str) -> String {
        let css = serde_json::to_string(css).unwrap();
        let script = format!(
            "const e = document.querySelector({css}); return e ? e.innerText : '(missing)'"
        );
        self.js(&script)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub async fn js(&self, script: &str) -> Value {
        self.client.execute(script, vec![]).await.unwrap()
    }

    /// Signs in through the sign-in page.
    pub async fn sign_in(&self, base: &str, name: &str, password: &str) {
        self.goto(&format!("{base}/login")).await;
        self.fill("input[name=name]", name).await;
        self.fill("input[name=password]", password).await;
        self.click("form button[type=submit]").await;
        self.wait_text("header.top .who", name, Duration::from_secs(10))
            .await;
    }

    pub async fn resize(&self, width: u32, height: u32) {
        self.client.set_window_size(width, height).await.unwrap();
    }

    /// Saves a screenshot as `<target>/screenshots/<name>.png`.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.unwrap();
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }

    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// `<target dir>/screenshots`: next to the test binary's own target directory.
pub fn screenshot_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/it-<hash> → target/
    exe.ancestors()
        .nth(3)
        .map_or_else(|| PathBuf::from("target"), PathBuf::from)
        .join("screenshots")
}
