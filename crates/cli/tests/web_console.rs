//! The web console in a real headless Chromium (Debian's, through WebDriver): signing in
//! and out, sessions, CSRF, the sign-in slowdown, tenant isolation, and accessibility.
//! Screenshots of each step go to target/test-artifacts/screenshots/web_console/.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use nereid_testkit::webdriver::Browser;
use nereid_testkit::{Backend, Cloud, Options, web::PASSWORD};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_signs_in_sees_the_dashboard_and_signs_out() {
    let cloud = Cloud::start_with(Options { sim_servers: 2, ..Options::new(Backend::Sqlite) }.web_https()).await.unwrap();
    cloud.web_account("opal", true).await.unwrap();
    let base = cloud.web_url().unwrap();
    let b = Browser::start("web_console", 1280).await.unwrap();
    b.goto(&format!("{base}/")).await.unwrap();
    assert!(b.url().await.unwrap().contains("/login?next=%2F"), "{}", b.url().await.unwrap());
    b.screenshot("01-login").await.unwrap();
    b.fill("input[name=login]", "opal").await.unwrap();
    b.fill("input[name=password]", PASSWORD).await.unwrap();
    b.click_on("form[action='/login'] button[type=submit]").await.unwrap();
    b.wait_text("Sign out", Duration::from_secs(30)).await.unwrap();

    b.screenshot("02-signed-in").await.unwrap();
    b.click_on("form[action='/logout'] button").await.unwrap();
    b.find("input[name=password]").await.unwrap();
    b.goto(&format!("{base}/")).await.unwrap();
    let u = b.url().await.unwrap();
    b.screenshot("03-signed-out").await.unwrap();
    assert!(u.contains("/login"), "signed out: back to the sign-in form, not {u}");
}
