//! A real browser for the dashboard tests: Debian's headless chromium driven over WebDriver
//! (its `chromedriver`, on a free port, one per test, with a fresh profile in a temp dir)
//! through fantoccini. Helpers go to a page, wait for what the page shows (polling a
//! JavaScript condition with a deadline, never a fixed sleep), read the errors the
//! dashboard recorded in `window.__dashboardErrors`, and save screenshots under
//! `target/screenshots/`.
//!
//! `scripts/test` installs `chromium` and `chromium-driver`; `CHROMEDRIVER` and `CHROMIUM`
//! name other binaries.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use crate::support::{poll_for, repo_dir, server_url, Server, DEADLINE};

/// The width and height of the window, pixels.
pub(crate) const DESKTOP: (u32, u32) = (1280, 900);

/// A browser session: chromedriver, the chromium it drives, and its profile directory.
/// Ended (and chromedriver killed) on drop.
pub(crate) struct Browser {
    client: Option<Client>,
    driver: Child,
    _profile: tempfile::TempDir,
}

fn find_binary(variable: &str, candidates: &[&str]) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(variable) {
        return Some(PathBuf::from(path));
    }
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|path| path.exists())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl Browser {
    /// Starts chromedriver and a headless chromium with a window of `size`.
    pub(crate) async fn start(size: (u32, u32)) -> Browser {
        let driver_path = find_binary(
            "CHROMEDRIVER",
            &["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"],
        )
        .expect("no chromedriver: scripts/test installs Debian's chromium and chromium-driver (or set CHROMEDRIVER)");
        // Debian's /usr/bin/chromium is a wrapper script; the browser itself is under lib.
        let chromium = find_binary(
            "CHROMIUM",
            &["/usr/lib/chromium/chromium", "/usr/bin/chromium"],
        )
        .expect("no chromium: scripts/test installs Debian's chromium (or set CHROMIUM)");
        let profile = tempfile::tempdir().expect("a profile directory");
        // The port is free a moment before chromedriver takes it; another process could win
        // that race, so a few tries.
        let mut last_error = String::new();
        for _ in 0..5 {
            let port = free_port();
            let mut driver = Command::new(&driver_path)
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", driver_path.display()));
            let base = format!("http://127.0.0.1:{port}");
            if !wait_ready(&base, &mut driver) {
                let _ = driver.kill();
                let _ = driver.wait();
                last_error = format!("chromedriver on port {port} never answered /status");
                continue;
            }
            let capabilities = json!({
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": chromium,
                    "args": [
                        "--headless",
                        "--no-sandbox",
                        "--disable-gpu",
                        "--disable-dev-shm-usage",
                        "--disable-background-networking",
                        "--disable-component-update",
                        "--disable-sync",
                        "--disable-extensions",
                        "--no-first-run",
                        "--no-default-browser-check",
                        "--password-store=basic",
                        format!("--user-data-dir={}", profile.path().display()),
                        format!("--window-size={},{}", size.0, size.1),
                    ],
                },
            });
            let Value::Object(capabilities) = capabilities else {
                unreachable!()
            };
            match ClientBuilder::native()
                .capabilities(capabilities)
                .connect(&base)
                .await
            {
                Ok(client) => {
                    let browser = Browser {
                        client: Some(client),
                        driver,
                        _profile: profile,
                    };
                    browser.resize(size).await;
                    return browser;
                }
                Err(err) => {
                    let _ = driver.kill();
                    let _ = driver.wait();
                    last_error = format!("no browser session: {err}");
                }
            }
        }
        panic!("cannot start the browser: {last_error}");
    }

    /// The WebDriver client.
    pub(crate) fn client(&self) -> &Client {
        self.client.as_ref().expect("a session")
    }

    /// Sets the window's size (the viewport is a little smaller: no chrome in headless).
    pub(crate) async fn resize(&self, (width, height): (u32, u32)) {
        self.client()
            .set_window_size(width, height)
            .await
            .expect("set the window size");
    }

    /// Opens `url` and waits for the dashboard's page `page` to be rendered (its section has
    /// `data-ready`).
    pub(crate) async fn open(&self, url: &str, page: &str) {
        self.client().goto(url).await.expect("go to the page");
        self.wait_ready(page).await;
    }

    /// Goes to a hash route of the dashboard already open (`#/runs/ID`) without reloading,
    /// and waits for `page` to be rendered.
    pub(crate) async fn route(&self, hash: &str, page: &str) {
        self.js(
            "document.querySelector('section.page')?.removeAttribute('data-ready'); location.hash = arguments[0];",
            vec![json!(hash)],
        )
        .await;
        self.wait_ready(page).await;
    }

    /// Waits for the page section of `page` to be rendered, successfully.
    pub(crate) async fn wait_ready(&self, page: &str) {
        let state = self
            .wait_for(
                &format!("page `{page}` to render"),
                "const s = document.querySelector(`section.page[data-page='${arguments[0]}'][data-ready]`); return s ? s.dataset.ready : null;",
                vec![json!(page)],
            )
            .await;
        if state != "true" {
            let text = self.text("main").await;
            panic!(
                "page `{page}` failed to render: {text}\nerrors: {:?}",
                self.errors().await
            );
        }
    }

    /// Runs a script (a function body: `arguments[i]`, `return ...`) in the page.
    pub(crate) async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.client()
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Polls `script` until it returns something other than null, undefined or false;
    /// fails after the deadline, naming `what` and the page's text.
    pub(crate) async fn wait_for(&self, what: &str, script: &str, args: Vec<Value>) -> Value {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let value = self.js(script, args.clone()).await;
            if !matches!(value, Value::Null | Value::Bool(false)) {
                return value;
            }
            if Instant::now() > deadline {
                let text = self.text("body").await;
                panic!(
                    "timed out waiting for {what}\n--- page text\n{text}\n--- errors\n{:?}",
                    self.errors().await
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for an element matching `css` whose text contains `text`; returns its text.
    pub(crate) async fn wait_text(&self, css: &str, text: &str) -> String {
        let found = self
            .wait_for(
                &format!("`{text}` in {css}"),
                "for (const e of document.querySelectorAll(arguments[0])) { if (e.textContent.includes(arguments[1])) return e.textContent; } return null;",
                vec![json!(css), json!(text)],
            )
            .await;
        found.as_str().unwrap_or_default().to_owned()
    }

    /// Waits for an element matching `css`.
    pub(crate) async fn wait_element(&self, css: &str) {
        self.wait_for(
            &format!("an element {css}"),
            "return document.querySelector(arguments[0]) !== null;",
            vec![json!(css)],
        )
        .await;
    }

    /// The text of the first element matching `css` (empty when there is none).
    pub(crate) async fn text(&self, css: &str) -> String {
        self.client()
            .execute(
                "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';",
                vec![json!(css)],
            )
            .await
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    /// Clicks the first element matching `css` (a real WebDriver click).
    pub(crate) async fn click(&self, css: &str) {
        self.wait_element(css).await;
        self.client()
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("cannot click {css}: {e}"));
    }

    /// Types into the first element matching `css`.
    pub(crate) async fn type_into(&self, css: &str, text: &str) {
        self.wait_element(css).await;
        self.client()
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"))
            .send_keys(text)
            .await
            .unwrap_or_else(|e| panic!("cannot type into {css}: {e}"));
    }

    /// What the dashboard recorded in `window.__dashboardErrors` (uncaught errors, unhandled
    /// rejections, failed resources, `console.error`).
    pub(crate) async fn errors(&self) -> Vec<Value> {
        self.client()
            .execute("return window.__dashboardErrors || null;", vec![])
            .await
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
    }

    /// Asserts that the dashboard recorded no error (and that its recorder is loaded).
    pub(crate) async fn assert_no_errors(&self, here: &str) {
        let recorder = self
            .js("return Array.isArray(window.__dashboardErrors);", vec![])
            .await;
        assert_eq!(
            recorder,
            json!(true),
            "{here}: the error recorder is not loaded"
        );
        let errors = self.errors().await;
        assert!(errors.is_empty(), "{here}: console errors: {errors:#?}");
    }

    /// Asserts no console error (`here` names the place) and saves a screenshot `shot`.
    pub(crate) async fn check(&self, here: &str, shot: &str) {
        self.assert_no_errors(here).await;
        self.screenshot(shot).await;
    }

    /// Clicks `css` after scrolling it to the middle of the window, away from the sticky
    /// top bar and from the corner where the toasts of earlier actions may still show.
    pub(crate) async fn press(&self, css: &str) {
        self.wait_element(css).await;
        self.js(
            "document.querySelector(arguments[0]).scrollIntoView({block: 'center'}); return true;",
            vec![json!(css)],
        )
        .await;
        self.click(css).await;
    }

    /// Saves a PNG of the window to `target/screenshots/<name>.png`; returns its path.
    pub(crate) async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client().screenshot().await.expect("a screenshot");
        assert!(png.starts_with(b"\x89PNG"), "{name}: not a PNG");
        let dir = screenshots_dir();
        std::fs::create_dir_all(&dir).expect("target/screenshots");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write the screenshot");
        path
    }

    /// Ends the session (also done, less politely, on drop).
    pub(crate) async fn close(mut self) {
        if let Some(client) = self.client.take() {
            let _ = client.close().await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Killing chromedriver ends the browser it started with it.
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Where screenshots go.
pub(crate) fn screenshots_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_dir().join("target"))
        .join("screenshots")
}

/// Polls chromedriver's `/status` until it says it is ready (false when it exits or the
/// deadline passes).
fn wait_ready(base: &str, driver: &mut Child) -> bool {
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(2)))
        .build()
        .new_agent();
    let ready = poll_for(DEADLINE, || {
        if matches!(driver.try_wait(), Ok(Some(_))) {
            return Some(false);
        }
        let mut response = agent.get(format!("{base}/status")).call().ok()?;
        let status: Value =
            serde_json::from_str(&response.body_mut().read_to_string().ok()?).ok()?;
        (status["value"]["ready"] == json!(true)).then_some(true)
    });
    ready == Some(true)
}

/// Starts `orchestrator start` in the project `dir`; returns the server (stopped on drop)
/// and its base URL.
pub(crate) fn serve(dir: &Path) -> (Server, String) {
    let server = Server::start(dir);
    let base = server_url(dir);
    (server, base)
}

/// A single-threaded tokio runtime to drive a [`Browser`] from a plain `#[test]`.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Replaces the text of a control by typing (real key events, so the page sees `input`).
pub(crate) async fn fill(browser: &Browser, css: &str, text: &str) {
    browser.wait_element(css).await;
    let element = browser
        .client()
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css}: {e}"));
    element.clear().await.expect("clear");
    element.send_keys(text).await.expect("type");
}

/// Asserts that `text` contains each of `expected`; `what` names the text in the message.
#[track_caller]
pub(crate) fn assert_contains_all(text: &str, expected: &[&str], what: &str) {
    for expected in expected {
        assert!(text.contains(expected), "{expected} not in {what}:\n{text}");
    }
}
