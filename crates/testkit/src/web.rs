//! The web console in tests: its URL, accounts that can sign in to it, and its console
//! pages as a browser sees them (the serial terminal's text, the VNC canvas's pixels).

use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use serde_json::{Value, json};

use crate::Cloud;
use crate::webdriver::{Browser, WithStatus};

/// The serial page's terminal: its whole buffer (scrollback and screen) as text, one line
/// per row (null before the terminal exists).
const TERMINAL_TEXT: &str = r##"
    const t = window.nereidTerminal;
    if (!t) return null;
    const b = t.buffer.active, rows = [];
    for (let i = 0; i < b.length; i++) rows.push(b.getLine(i).translateToString(true));
    return rows.join("\n");
"##;

/// What the VNC page's canvas shows: its size, how many distinct colours (up to 256) and
/// how many pixels are not (nearly) black (null before it has a size).
const CANVAS_PIXELS: &str = r##"
    const c = document.querySelector("#vnc-screen canvas");
    if (!c || !c.width || !c.height) return null;
    const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    const colours = new Set();
    let lit = 0;
    for (let i = 0; i < d.length; i += 4) {
        if (colours.size < 256) colours.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
        if (d[i] + d[i + 1] + d[i + 2] > 96) lit++;
    }
    return { width: c.width, height: c.height, colours: colours.size, lit: lit };
"##;

impl Browser {
    /// Waits until the serial page's terminal shows `needle`; its text then.
    pub async fn wait_terminal(&self, needle: &str, limit: Duration) -> Result<String> {
        let look = async || {
            let text = self.execute(TERMINAL_TEXT, vec![]).await?;
            let seen = text.as_str().unwrap_or_default().to_string();
            Ok(WithStatus { status: self.text_if_any("#console-status").await?, seen })
        };
        let what = format!("the terminal to show {needle:?}");
        Ok(self.wait_until(limit, &what, look, |t| t.seen.contains(needle)).await?.seen)
    }

    /// Waits until the VNC page's canvas has been drawn on (two colours or more, some of
    /// it lit); what it shows then (`width`, `height`, `colours`, `lit`).
    pub async fn wait_vnc_drawn(&self, limit: Duration) -> Result<Value> {
        let look =
            async || Ok(WithStatus { seen: self.execute(CANVAS_PIXELS, vec![]).await?, status: self.text_if_any("#vnc-status").await? });
        let drawn = |px: &WithStatus<Value>| px.seen["colours"].as_u64().unwrap_or(0) >= 2 && px.seen["lit"].as_u64().unwrap_or(0) > 0;
        Ok(self.wait_until(limit, "the VNC canvas to be drawn on", look, drawn).await?.seen)
    }
}

/// The password every [`Cloud::web_account`] gets.
pub const PASSWORD: &str = "correct horse battery staple";

impl Cloud {
    /// The web console's base URL (the cloud must have been started with
    /// [`crate::Options::web_https`] or `web_http`).
    pub fn web_url(&self) -> Result<String> {
        self.headnode.web.as_ref().map(|w| w.url.clone()).context("this test cloud serves no web console (Options::web_https)")
    }

    /// Creates an account with [`PASSWORD`] (an operator if `operator`); its record.
    pub async fn web_account(&self, login: &str, operator: bool) -> Result<Value> {
        let body = json!({"login": login, "email": format!("{login}@example.com"), "operator": operator, "password": PASSWORD});
        let a = self.client.post("/accounts", &body).await.map_err(|e| anyhow!("creating account {login}: {e}"))?;
        Ok(a)
    }
}

/// An HTTP client for the console without a browser: trusts its certificate, follows no
/// redirects (tests look at them), keeps no cookies (tests pass them).
pub fn http_client(cloud: &Cloud) -> Result<reqwest::Client> {
    let mut b = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).timeout(std::time::Duration::from_secs(60));
    if let Some(cert) = cloud.headnode.web.as_ref().and_then(|w| w.cert_path.as_ref()) {
        let pem = std::fs::read(cert)?;
        b = b.add_root_certificate(reqwest::Certificate::from_pem(&pem)?);
    }
    Ok(b.build()?)
}

/// Signs in with the `/login` form; the answer (a 303 with the session cookie on success).
pub async fn post_login(http: &reqwest::Client, base: &str, login: &str, password: &str) -> Result<reqwest::Response> {
    let form = [("login", login), ("password", password), ("next", "/")];
    Ok(http.post(format!("{base}/login")).form(&form).send().await?)
}

/// Signs in; the `Cookie` header value that carries the session.
pub async fn sign_in_cookie(http: &reqwest::Client, base: &str, login: &str, password: &str) -> Result<String> {
    let r = post_login(http, base, login, password).await?;
    let set = r
        .headers()
        .get(reqwest::header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| anyhow!("sign-in as {login} answered {} without a cookie", r.status()))?;
    Ok(set.split(';').next().unwrap_or_default().to_string())
}

/// The CSRF token a signed-in page carries (its `csrf-token` meta tag).
pub async fn csrf_token(http: &reqwest::Client, base: &str, cookie: &str) -> Result<String> {
    let html = http.get(format!("{base}/login?next=/")).header("cookie", cookie).send().await?;
    // /login redirects a signed-in session onwards: read the page it goes to.
    let next = html.headers().get("location").and_then(|v| v.to_str().ok()).unwrap_or("/").to_string();
    let mut url = format!("{base}{next}");
    for _ in 0..5 {
        let r = http.get(&url).header("cookie", cookie).send().await?;
        if let Some(loc) = r.headers().get("location").and_then(|v| v.to_str().ok()) {
            url = format!("{base}{loc}");
            continue;
        }
        let body = r.text().await?;
        let start = body.find("name=\"csrf-token\" content=\"").context("no csrf-token meta tag on the page")? + 27;
        let end = body[start..].find('"').context("unterminated csrf-token")?;
        return Ok(body[start..start + end].to_string());
    }
    Err(anyhow!("too many redirects looking for a page"))
}
