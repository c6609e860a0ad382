//! Accessibility smoke test of the web console, in Debian's headless Chromium at 400 px wide:
//! every page an operator or a tenant can reach (each list, one of each object's pages, each
//! form) has a title and a first-level heading, a label for every form field, and nothing
//! wider than the window (tables scroll inside their own box). Screenshots of every page go to
//! target/test-artifacts/screenshots/web_accessibility/.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use nereid_testkit::webdriver::Browser;
use nereid_testkit::{Backend, Cloud, Options, web::PASSWORD};
use serde_json::{Value, json};

/// How long a sign-in may take to land on the console (a loaded CI machine is slow).
const SIGNED_IN: Duration = Duration::from_secs(60);

/// What the page check finds wrong (empty: nothing).
const CHECK: &str = r##"
const problems = [];
if (!document.title.trim()) problems.push("no <title>");
if (!document.querySelector("h1")) problems.push("no <h1>");
if (document.documentElement.lang === "") problems.push("no lang on <html>");
for (const el of document.querySelectorAll("input, select, textarea")) {
  const type = (el.getAttribute("type") || "").toLowerCase();
  if (["hidden", "submit", "button", "reset"].includes(type)) continue;
  const named = (el.labels && el.labels.length > 0) || el.getAttribute("aria-label") || el.getAttribute("aria-labelledby") || el.getAttribute("title");
  if (!named) problems.push("unlabelled " + el.tagName.toLowerCase() + " name=" + el.getAttribute("name"));
}
for (const b of document.querySelectorAll("button")) {
  if (!b.textContent.trim() && !b.getAttribute("aria-label")) problems.push("a button without a name");
}
const width = document.documentElement.clientWidth;
if (document.documentElement.scrollWidth > width + 1) {
  // The outermost elements that stick out (inside a scrolling box is fine: it scrolls).
  const wide = [...document.querySelectorAll("body *")].filter((e) => e.getBoundingClientRect().right > width + 1 && !(e.parentElement && e.parentElement.closest(".scroll, pre")));
  problems.push("wider than the window (" + document.documentElement.scrollWidth + " > " + width + "): " + wide.slice(0, 4).map((e) => e.tagName.toLowerCase() + (e.id ? "#" + e.id : "") + "." + e.className).join(", "));
}
return problems;
"##;

/// Every console link on the page (same origin, not an asset, not a WebSocket).
const LINKS: &str = r#"
return [...document.querySelectorAll("a[href]")].map((a) => a.getAttribute("href")).filter((h) => h.startsWith("/") && !h.startsWith("/assets/") && !h.startsWith("//"));
"#;

/// One representative of each kind of page: a list's first detail link of each prefix.
fn pick(links: &[String], seen: &BTreeSet<String>) -> Vec<String> {
    let mut kinds = BTreeSet::new();
    let mut out = Vec::new();
    for l in links {
        let path = l.split(['?', '#']).next().unwrap_or(l).to_string();
        // /vms/UUID and /vms/UUID/serial are kinds of their own; uuids collapse.
        let kind: Vec<&str> = path.split('/').map(|seg| if seg.len() == 36 && seg.matches('-').count() == 4 { "*" } else { seg }).collect();
        let kind = kind.join("/");
        if kind.ends_with("/ws") || path == "/logout" {
            continue;
        }
        if !seen.contains(&path) && kinds.insert(kind) {
            out.push(path);
        }
    }
    out
}

async fn crawl(b: &Browser, base: &str, who: &str) -> Vec<String> {
    let mut seen = BTreeSet::new();
    let mut queue = vec!["/".to_string()];
    let mut problems = Vec::new();
    let mut n = 0;
    while let Some(path) = queue.pop() {
        if !seen.insert(path.clone()) || seen.len() > 60 {
            continue;
        }
        b.goto(&format!("{base}{path}")).await.unwrap();
        let url = b.url().await.unwrap();
        if url.contains("/login") {
            problems.push(format!("{who} {path}: sent to the sign-in page"));
            continue;
        }
        n += 1;
        let shot = format!("{who}-{n:02}-{}", path.trim_matches('/').replace('/', "_"));
        b.screenshot(&shot).await.unwrap();
        let found = b.execute(CHECK, vec![]).await.unwrap();
        for p in found.as_array().into_iter().flatten() {
            problems.push(format!("{who} {path}: {}", p.as_str().unwrap_or_default()));
        }
        let links: Vec<String> = b
            .execute(LINKS, vec![])
            .await
            .unwrap()
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect();
        queue.extend(pick(&links, &seen));
    }
    assert!(n >= 3, "{who}: only {n} pages reached: {seen:?}");
    eprintln!("{who}: checked {n} pages: {seen:?}");
    problems
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_has_a_title_labelled_fields_and_fits_400_px() {
    let cloud = Cloud::start_with(Options { sim_servers: 2, ..Options::new(Backend::Sqlite) }.web_https()).await.unwrap();
    let seed = cloud.seed().await.unwrap();
    let tenant = cloud.web_account("tina", false).await.unwrap();
    cloud.web_account("opal", true).await.unwrap();
    // Something in every list: a VM of the tenant's, so machine and VM pages exist too.
    let mut body = seed.vm_body("a11y-1");
    body["owner_uuid"] = json!(tenant["uuid"]);
    let (_, job) = cloud.create_vm(&body).await.unwrap();
    assert_eq!(cloud.wait_job(&job).await.unwrap()["execution"], "succeeded");
    let base = cloud.web_url().unwrap();

    let b = Browser::start("web_accessibility", 400).await.unwrap();
    let width = b.execute("return window.innerWidth", vec![]).await.unwrap();
    assert!(width.as_u64().unwrap() <= 400, "the window is {width} px wide, not 400");
    b.goto(&format!("{base}/login")).await.unwrap();
    b.screenshot("00-login").await.unwrap();
    let mut problems: Vec<String> =
        b.execute(CHECK, vec![]).await.unwrap().as_array().unwrap().iter().map(|p| format!("/login: {p}")).collect();
    b.sign_in(&base, "opal", PASSWORD).await.unwrap();
    // Signed in once the console answers (the crawl's first page would otherwise cancel
    // the sign-in's POST on a slow machine and land on the sign-in page).
    b.wait_text("Sign out", SIGNED_IN).await.unwrap();
    problems.extend(crawl(&b, &base, "operator").await);
    drop(b);
    let b = Browser::start("web_accessibility", 400).await.unwrap();
    b.sign_in(&base, "tina", PASSWORD).await.unwrap();
    b.wait_text("Sign out", SIGNED_IN).await.unwrap();
    problems.extend(crawl(&b, &base, "tenant").await);
    assert!(problems.is_empty(), "accessibility problems:\n{}", problems.join("\n"));
}
