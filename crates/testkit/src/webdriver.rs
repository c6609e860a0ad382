//! A headless Chromium driven through WebDriver, for the web console's browser tests.
//!
//! Debian's `chromium` and `chromium-driver` (`scripts/test` installs both): each
//! [`Browser`] starts its own `chromedriver` on a free loopback port and one session, and
//! ends both when dropped. The client speaks the W3C WebDriver protocol (JSON over HTTP)
//! with reqwest, which the tests already use: a handful of commands, so no WebDriver crate
//! and its dependency tree. Screenshots go to `target/test-artifacts/screenshots/`, which
//! CI keeps with the test output.
//!
//! Every wait in the browser tests is [`wait_until`] (or [`Browser::wait_until`], which
//! names the page too): it looks again every [`POLL`] until what it sees will do, and
//! when it gives up says what was awaited and what it saw last. Tests assert on what
//! they waited for, never on how long it took.

use std::fmt::Display;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use serde_json::{Value, json};

/// The W3C element reference key.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A running Chromium session.
pub struct Browser {
    driver: Child,
    http: reqwest::Client,
    base: String,
    /// Where this browser's screenshots go.
    pub shots: PathBuf,
}

/// An element of the page.
#[derive(Debug, Clone)]
pub struct Element(pub String);

/// How often a wait looks again.
pub const POLL: Duration = Duration::from_millis(250);

/// Looks with `look` until `done` holds for what it saw (every [`POLL`], up to `limit`);
/// what it saw then. A look that fails ends the wait with its error. Giving up, the error
/// says what was awaited (`what`, worded to follow "waited 60s for") and the last thing
/// seen, so `look` returns whatever would explain a failure (the page's text, a status).
///
/// ```ignore
/// let state = wait_until(LIMIT, "the VM to stop", async || vm_state(&cloud, &id).await, |s| s == "stopped").await?;
/// ```
pub async fn wait_until<S: Display>(
    limit: Duration,
    what: &str,
    look: impl AsyncFnMut() -> Result<S>,
    done: impl Fn(&S) -> bool,
) -> Result<S> {
    poll(limit, look, done).await?.map_err(|seen| anyhow!("waited {limit:?} for {what}; last seen:\n{seen}"))
}

/// What [`wait_until`] saw: `Ok` once `done` held, `Err` with the last look if it never did.
async fn poll<S>(limit: Duration, mut look: impl AsyncFnMut() -> Result<S>, done: impl Fn(&S) -> bool) -> Result<Result<S, S>> {
    let deadline = Instant::now() + limit;
    loop {
        let seen = look().await?;
        if done(&seen) {
            return Ok(Ok(seen));
        }
        if Instant::now() > deadline {
            return Ok(Err(seen));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Something a wait saw, with the page's status line then (a console's "Connected", an
/// upload's progress): both go into the failure if the wait gives up.
#[derive(Debug, Clone)]
pub struct WithStatus<T> {
    pub status: String,
    pub seen: T,
}

impl<T: Display> Display for WithStatus<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "(status: {:?})\n{}", self.status, self.seen)
    }
}

/// The elements a selector matched, as a failed [`Browser::wait_for`] reports them.
struct Matches(Vec<Element>);

impl Display for Matches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} matching element(s)", self.0.len())
    }
}

/// Where screenshots go: `<workspace>/target/test-artifacts/screenshots/<group>`.
pub fn screenshot_dir(group: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    target.join("test-artifacts").join("screenshots").join(group)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session (`width`×900 window) that
    /// accepts the console's self-signed certificate; screenshots under `group`.
    pub async fn start(group: &str, width: u32) -> Result<Browser> {
        let port = free_port()?;
        let driver = Command::new(std::env::var("NEREID_CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into()))
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting chromedriver (Debian's chromium-driver; scripts/test installs it)")?;
        let http = reqwest::Client::builder().timeout(Duration::from_secs(120)).build()?;
        let mut b = Browser { driver, http, base: format!("http://127.0.0.1:{port}"), shots: screenshot_dir(group) };
        // The status endpoint's answer, or why there was none (chromedriver still starting).
        let status = format!("{}/status", b.base);
        let answer = async || Ok(b.http.get(&status).send().await.map_or_else(|e| format!("no answer ({e})"), |r| r.status().to_string()));
        wait_until(Duration::from_secs(30), &format!("chromedriver to answer on port {port}"), answer, |a| a.starts_with('2')).await?;
        let binary = std::env::var("NEREID_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "acceptInsecureCerts": true,
            "goog:chromeOptions": {
                "binary": binary,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--no-first-run", "--disable-extensions", format!("--window-size={width},900")]
            }
        }}});
        let r = b.raw("POST", "/session", Some(caps)).await?;
        let id = r.pointer("/value/sessionId").and_then(Value::as_str).ok_or_else(|| anyhow!("no session id in {r}"))?;
        b.base = format!("{}/session/{id}", b.base);
        b.cmd("POST", "/timeouts", json!({"implicit": 0, "pageLoad": 120_000, "script": 60_000})).await?;
        b.viewport(width, 900).await?;
        std::fs::create_dir_all(&b.shots)?;
        Ok(b)
    }

    async fn raw(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        let req = match method {
            "GET" => self.http.get(&url),
            "DELETE" => self.http.delete(&url),
            _ => self.http.post(&url).json(&body.unwrap_or(json!({}))),
        };
        let resp = req.send().await.with_context(|| format!("WebDriver {method} {path}"))?;
        let status = resp.status();
        let v: Value = resp.json().await.with_context(|| format!("WebDriver {method} {path}: not JSON"))?;
        if !status.is_success() {
            bail!("WebDriver {method} {path}: {status}: {}", v.pointer("/value/message").and_then(Value::as_str).unwrap_or(&v.to_string()));
        }
        Ok(v)
    }

    async fn cmd(&self, method: &str, path: &str, body: Value) -> Result<Value> {
        Ok(self.raw(method, path, Some(body)).await?.get("value").cloned().unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> Result<Value> {
        Ok(self.raw("GET", path, None).await?.get("value").cloned().unwrap_or(Value::Null))
    }

    /// Loads a URL and waits for the page.
    pub async fn goto(&self, url: &str) -> Result<()> {
        self.cmd("POST", "/url", json!({"url": url})).await.map(|_| ())
    }

    pub async fn url(&self) -> Result<String> {
        Ok(self.get("/url").await?.as_str().unwrap_or_default().to_string())
    }

    pub async fn title(&self) -> Result<String> {
        Ok(self.get("/title").await?.as_str().unwrap_or_default().to_string())
    }

    /// The page's HTML as the browser has it now.
    pub async fn source(&self) -> Result<String> {
        Ok(self.get("/source").await?.as_str().unwrap_or_default().to_string())
    }

    /// The elements a CSS selector matches now.
    pub async fn find_all(&self, css: &str) -> Result<Vec<Element>> {
        let v = self.cmd("POST", "/elements", json!({"using": "css selector", "value": css})).await?;
        Ok(v.as_array().into_iter().flatten().filter_map(|e| e.get(ELEMENT).and_then(Value::as_str)).map(|s| Element(s.into())).collect())
    }

    /// The first element a selector matches, waiting up to 30 s for one.
    pub async fn find(&self, css: &str) -> Result<Element> {
        self.wait_for(css, Duration::from_secs(30)).await
    }

    /// The first element a selector matches, waiting up to `limit`.
    pub async fn wait_for(&self, css: &str, limit: Duration) -> Result<Element> {
        let what = format!("an element matching {css:?}");
        let found = self.wait_until(limit, &what, async || Ok(Matches(self.find_all(css).await?)), |m| !m.0.is_empty()).await?;
        found.0.into_iter().next().ok_or_else(|| anyhow!("{what}: found, then gone"))
    }

    /// [`wait_until`] for something on this browser's page: giving up, the error names the
    /// page it was on too.
    pub async fn wait_until<S: Display>(
        &self,
        limit: Duration,
        what: &str,
        look: impl AsyncFnMut() -> Result<S>,
        done: impl Fn(&S) -> bool,
    ) -> Result<S> {
        match poll(limit, look, done).await? {
            Ok(seen) => Ok(seen),
            Err(seen) => bail!("waited {limit:?} for {what} on {}; last seen:\n{seen}", self.url().await.unwrap_or_default()),
        }
    }

    /// The text of the first element `css` matches (waiting for one as [`Browser::find`]
    /// does); empty if the element went between finding and reading it (a live region
    /// replaced), which a wait simply looks at again.
    pub async fn text_of(&self, css: &str) -> Result<String> {
        let e = self.find(css).await?;
        Ok(self.text(&e).await.unwrap_or_default())
    }

    /// The text of the first element `css` matches now; empty if there is none.
    pub async fn text_if_any(&self, css: &str) -> Result<String> {
        Ok(match self.find_all(css).await?.first() {
            Some(e) => self.text(e).await.unwrap_or_default(),
            None => String::new(),
        })
    }

    /// Waits until the page's text contains `needle` (up to `limit`); the text then.
    pub async fn wait_text(&self, needle: &str, limit: Duration) -> Result<String> {
        self.wait_text_in("body", needle, limit).await
    }

    /// Waits until the text of the element `css` matches contains `needle` (up to
    /// `limit`); the text then.
    pub async fn wait_text_in(&self, css: &str, needle: &str, limit: Duration) -> Result<String> {
        self.wait_until(limit, &format!("{css} to show {needle:?}"), async || self.text_of(css).await, |t| t.contains(needle)).await
    }

    pub async fn click(&self, e: &Element) -> Result<()> {
        self.cmd("POST", &format!("/element/{}/click", e.0), json!({})).await.map(|_| ())
    }

    /// Types into an element (WebDriver key codes work too: `\u{E007}` is Enter).
    pub async fn send_keys(&self, e: &Element, text: &str) -> Result<()> {
        self.cmd("POST", &format!("/element/{}/value", e.0), json!({"text": text})).await.map(|_| ())
    }

    pub async fn clear(&self, e: &Element) -> Result<()> {
        self.cmd("POST", &format!("/element/{}/clear", e.0), json!({})).await.map(|_| ())
    }

    /// An element's rendered text.
    pub async fn text(&self, e: &Element) -> Result<String> {
        Ok(self.get(&format!("/element/{}/text", e.0)).await?.as_str().unwrap_or_default().to_string())
    }

    /// An element's attribute (or property).
    pub async fn attr(&self, e: &Element, name: &str) -> Result<Option<String>> {
        Ok(self.get(&format!("/element/{}/attribute/{name}", e.0)).await?.as_str().map(str::to_string))
    }

    /// Fills the field a selector names (clearing it first).
    pub async fn fill(&self, css: &str, text: &str) -> Result<()> {
        let e = self.find(css).await?;
        self.clear(&e).await?;
        self.send_keys(&e, text).await
    }

    /// Clicks what a selector names.
    pub async fn click_on(&self, css: &str) -> Result<()> {
        let e = self.find(css).await?;
        self.click(&e).await
    }

    /// Runs a script in the page (`arguments[i]` are `args`); its result.
    pub async fn execute(&self, script: &str, args: Vec<Value>) -> Result<Value> {
        self.cmd("POST", "/execute/sync", json!({"script": script, "args": args})).await
    }

    /// Runs an async script (it calls `arguments[arguments.length - 1]` with its result).
    pub async fn execute_async(&self, script: &str, args: Vec<Value>) -> Result<Value> {
        self.cmd("POST", "/execute/async", json!({"script": script, "args": args})).await
    }

    /// Accepts the page's `confirm()` dialog, if one is open.
    pub async fn accept_alert(&self) -> Result<()> {
        self.cmd("POST", "/alert/accept", json!({})).await.map(|_| ())
    }

    /// Saves a screenshot as `<shots>/<name>.png`; its path.
    pub async fn screenshot(&self, name: &str) -> Result<PathBuf> {
        let b64 = self.get("/screenshot").await?;
        let png = base64::engine::general_purpose::STANDARD.decode(b64.as_str().unwrap_or_default())?;
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, png)?;
        Ok(path)
    }

    /// Sets the window's size, and the page's viewport to exactly that (Chromium will not
    /// make a window narrower than 500 px, so narrower layouts are emulated through the
    /// DevTools protocol, as its device toolbar does).
    pub async fn resize(&self, width: u32, height: u32) -> Result<()> {
        self.cmd("POST", "/window/rect", json!({"width": width.max(500), "height": height})).await?;
        self.viewport(width, height).await
    }

    /// Makes the page's viewport `width`×`height` CSS pixels.
    async fn viewport(&self, width: u32, height: u32) -> Result<()> {
        let params = json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false});
        self.cmd("POST", "/goog/cdp/execute", json!({"cmd": "Emulation.setDeviceMetricsOverride", "params": params})).await.map(|_| ())
    }

    /// Signs in on the console at `base` (its `/login` form).
    pub async fn sign_in(&self, base: &str, login: &str, password: &str) -> Result<()> {
        self.goto(&format!("{base}/login")).await?;
        self.fill("input[name=login]", login).await?;
        self.fill("input[name=password]", password).await?;
        self.click_on("form[action='/login'] button[type=submit]").await
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // End the session (closes Chromium) without an async runtime: one plain HTTP
        // DELETE over a blocking socket, then chromedriver goes.
        if let Some((host, path)) = self.base.strip_prefix("http://").and_then(|r| r.split_once('/')) {
            use std::io::{Read, Write};
            if let Ok(mut s) = std::net::TcpStream::connect(host) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                let _ = write!(s, "DELETE /{path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                let _ = s.read_to_end(&mut Vec::new());
            }
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wait_ends_with_what_it_awaited_or_says_what_it_saw_last() {
        let mut n = 0u32;
        let count = async || {
            n += 1;
            Ok(n)
        };
        let seen = wait_until(Duration::from_secs(30), "the count to reach 3", count, |m| *m == 3).await;
        assert_eq!(seen.unwrap(), 3, "what was awaited, as soon as it is seen");

        let mut n = 0u32;
        let count = async || {
            n += 1;
            Ok(n)
        };
        let e = wait_until(Duration::from_millis(600), "the count to reach 100", count, |m| *m >= 100).await;
        let e = e.unwrap_err().to_string();
        assert!(e.starts_with("waited 600ms for the count to reach 100; last seen:\n"), "{e}");
        assert_eq!(e.rsplit('\n').next(), Some(n.to_string().as_str()), "the last look is shown: {e}");

        let status = WithStatus { status: "Connecting".into(), seen: "boot:" };
        assert_eq!(status.to_string(), "(status: \"Connecting\")\nboot:");
    }

    #[tokio::test]
    async fn a_look_that_fails_ends_the_wait_with_its_error() {
        let e = wait_until(Duration::from_secs(30), "anything", async || Err::<u32, _>(anyhow!("no browser")), |_| true).await;
        assert_eq!(e.unwrap_err().to_string(), "no browser");
    }
}
