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
    b.goto(&format!("{base}/servers")).await.unwrap();
    assert!(b.url().await.unwrap().contains("/login?next=%2Fservers"), "{}", b.url().await.unwrap());
    b.screenshot("01-login").await.unwrap();
    b.fill("input[name=login]", "opal").await.unwrap();
    b.fill("input[name=password]", PASSWORD).await.unwrap();
    b.click_on("form[action='/login'] button[type=submit]").await.unwrap();
    let page = b.wait_text("Sign out", Duration::from_secs(30)).await.unwrap();
    assert!(b.url().await.unwrap().ends_with("/servers"), "sign-in goes on to the page that asked for it");
    let servers = cloud.client.get("/servers").await.unwrap();
    for s in servers.as_array().unwrap() {
        assert!(page.contains(s["uuid"].as_str().unwrap()), "server {} not on the page:\n{page}", s["uuid"]);
    }

    b.screenshot("02-signed-in").await.unwrap();
    b.click_on("form[action='/logout'] button").await.unwrap();
    b.find("input[name=password]").await.unwrap();
    b.goto(&format!("{base}/")).await.unwrap();
    let u = b.url().await.unwrap();
    b.screenshot("03-signed-out").await.unwrap();
    assert!(u.contains("/login"), "signed out: back to the sign-in form, not {u}");
}

fn set_cookie(r: &reqwest::Response) -> Option<String> {
    r.headers().get("set-cookie").and_then(|v| v.to_str().ok()).map(str::to_string)
}

fn location(r: &reqwest::Response) -> String {
    r.headers().get("location").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string()
}

/// Sessions: a Secure, HttpOnly, SameSite=Strict `__Host-` cookie under TLS; the store keeps
/// only the token's hash; a session outlives a headnode restart; sign-out needs the CSRF
/// token and ends it; a disabled account's session ends at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_strict_cookies_kept_hashed_that_survive_restarts_and_end_at_sign_out() {
    use nereid_testkit::web::{csrf_token, http_client, post_login};
    let mut cloud = Cloud::start_with(Options::new(Backend::Sqlite).web_https()).await.unwrap();
    let acct = cloud.web_account("opal", true).await.unwrap();
    let base = cloud.web_url().unwrap();
    let http = http_client(&cloud).unwrap();

    let wrong = post_login(&http, &base, "opal", "not the password").await.unwrap();
    assert_eq!(wrong.status(), 401);
    assert_eq!(set_cookie(&wrong), None);
    let unknown = post_login(&http, &base, "nobody", PASSWORD).await.unwrap();
    assert_eq!(unknown.status(), 401, "an unknown login reads like a wrong password");
    assert!(unknown.text().await.unwrap().contains("Wrong login or password"));

    let ok = post_login(&http, &base, "opal", PASSWORD).await.unwrap();
    assert_eq!(ok.status(), 303);
    assert_eq!(location(&ok), "/");
    let sc = set_cookie(&ok).unwrap();
    for attr in ["__Host-nereid_session=", "; Path=/", "; HttpOnly", "; SameSite=Strict", "; Secure", "; Max-Age="] {
        assert!(sc.contains(attr), "{attr} missing from {sc}");
    }
    let cookie = sc.split(';').next().unwrap().to_string();
    let token = cookie.split_once('=').unwrap().1.to_string();
    let stored = cloud.headnode.app.store.list("web_sessions", &nereid_store::ListQuery::all()).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert!(!stored[0].key.contains(&token) && !stored[0].value.to_string().contains(&token), "the store keeps only the token's hash");

    let home = http.get(format!("{base}/")).header("cookie", &cookie).send().await.unwrap();
    assert_eq!((home.status().as_u16(), location(&home)), (303, "/dashboard".to_string()));
    let anon = http.get(format!("{base}/")).send().await.unwrap();
    assert_eq!((anon.status().as_u16(), location(&anon)), (303, "/login?next=%2F".to_string()));

    // A restart keeps the session (it lives in the store).
    cloud.restart_headnode().await.unwrap();
    let base = cloud.web_url().unwrap();
    let http = http_client(&cloud).unwrap();
    let home = http.get(format!("{base}/")).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(location(&home), "/dashboard", "still signed in after a restart");

    // Sign-out without the token is refused and changes nothing; with it, the session ends.
    let refused = http.post(format!("{base}/logout")).header("cookie", &cookie).form(&[("x", "1")]).send().await.unwrap();
    assert_eq!(refused.status(), 403);
    let csrf = csrf_token(&http, &base, &cookie).await.unwrap();
    let still = http.get(format!("{base}/")).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(location(&still), "/dashboard");
    let out = http.post(format!("{base}/logout")).header("cookie", &cookie).form(&[("csrf", csrf.as_str())]).send().await.unwrap();
    assert_eq!((out.status().as_u16(), location(&out)), (303, "/login".to_string()));
    assert!(set_cookie(&out).unwrap().contains("Max-Age=0"), "sign-out clears the cookie");
    let after = http.get(format!("{base}/")).header("cookie", &cookie).send().await.unwrap();
    assert!(location(&after).starts_with("/login"), "the old cookie no longer signs in");
    assert!(cloud.headnode.app.store.list("web_sessions", &nereid_store::ListQuery::all()).await.unwrap().is_empty());

    // Disabling the account ends its sessions at once.
    let cookie = nereid_testkit::web::sign_in_cookie(&http, &base, "opal", PASSWORD).await.unwrap();
    let uuid = acct["uuid"].as_str().unwrap();
    cloud.client.put(&format!("/accounts/{uuid}"), &serde_json::json!({"disabled": true})).await.unwrap();
    let after = http.get(format!("{base}/")).header("cookie", &cookie).send().await.unwrap();
    assert!(location(&after).starts_with("/login"), "a disabled account is signed out");
    assert_eq!(post_login(&http, &base, "opal", PASSWORD).await.unwrap().status(), 401, "and cannot sign in");
}

/// Over plain HTTP (`--web-http`, for loopback) the cookie cannot be `Secure`, and is not
/// `__Host-` prefixed; an idle session ends after its idle time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_cookies_and_idle_sessions_expire() {
    use nereid_testkit::web::{http_client, post_login};
    let mut o = Options::new(Backend::Sqlite).web_http();
    if let Some(w) = o.web.as_mut() {
        w.session_idle = Duration::from_secs(1);
    }
    let cloud = Cloud::start_with(o).await.unwrap();
    cloud.web_account("tess", false).await.unwrap();
    let base = cloud.web_url().unwrap();
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");
    let http = http_client(&cloud).unwrap();
    let ok = post_login(&http, &base, "tess", PASSWORD).await.unwrap();
    let sc = set_cookie(&ok).unwrap();
    assert!(sc.starts_with("nereid_session=") && sc.contains("HttpOnly") && sc.contains("SameSite=Strict"), "{sc}");
    assert!(!sc.contains("Secure"), "{sc}");
    let cookie = sc.split(';').next().unwrap().to_string();
    let home = http.get(format!("{base}/")).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(location(&home), "/machines", "a tenant lands on their machines");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let later = http.get(format!("{base}/")).header("cookie", &cookie).send().await.unwrap();
    assert!(location(&later).starts_with("/login"), "idle for longer than its idle time: signed out");
}

/// A tenant holding a valid session and CSRF token still changes nothing through an
/// operator form: every operator route (posts and the upload too) sits behind one guard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_changes_nothing_through_operator_forms() {
    use nereid_testkit::web::{csrf_token, http_client, sign_in_cookie};
    let cloud = Cloud::start_with(Options { sim_servers: 1, ..Options::new(Backend::Sqlite) }.web_https()).await.unwrap();
    let seed = cloud.seed().await.unwrap();
    let tenant = cloud.web_account("tess", false).await.unwrap();
    let base = cloud.web_url().unwrap();
    let http = http_client(&cloud).unwrap();
    let cookie = sign_in_cookie(&http, &base, "tess", PASSWORD).await.unwrap();
    let csrf = csrf_token(&http, &base, &cookie).await.unwrap();
    let me = tenant["uuid"].as_str().unwrap();
    let (pkg, img, net) = (seed.package.as_str(), seed.image.as_str(), seed.network.as_str());
    let posts: Vec<(String, Vec<(&str, &str)>)> = vec![
        ("/packages".into(), vec![("name", "evil"), ("version", "1.0.0"), ("max_physical_memory", "128"), ("quota", "10240")]),
        (format!("/packages/{pkg}/deactivate"), vec![]),
        ("/accounts".into(), vec![("login", "mallory"), ("email", "m@example.com"), ("operator", "on"), ("password", "long enough pw")]),
        (format!("/accounts/{me}/password"), vec![("password", "another long pw")]),
        (format!("/images/{img}/disable"), vec![]),
        (format!("/networks/{net}/delete"), vec![]),
        ("/vms/new".into(), vec![("owner_uuid", me), ("image_uuid", img), ("billing_id", pkg), ("networks", net), ("alias", "sneaky")]),
    ];
    for (path, mut fields) in posts {
        fields.push(("csrf", csrf.as_str()));
        let r = http.post(format!("{base}{path}")).header("cookie", &cookie).form(&fields).send().await.unwrap();
        assert_eq!(r.status(), 403, "POST {path}");
        let body = r.text().await.unwrap();
        assert!(body.contains("This page is for operators") && !body.contains(pkg) && !body.contains(net), "POST {path}: {body}");
    }
    let up = http
        .put(format!("{base}/images/upload?name=evil&version=1"))
        .header("cookie", &cookie)
        .header("x-csrf-token", &csrf)
        .body(vec![1u8; 4096])
        .send()
        .await
        .unwrap();
    assert_eq!(up.status(), 403, "the upload too");
    // Nothing changed.
    let p = cloud.client.get(&format!("/packages/{pkg}")).await.unwrap();
    assert_eq!(p["active"], true);
    assert!(cloud.client.get("/packages?name=evil").await.unwrap().as_array().unwrap().is_empty());
    assert!(cloud.client.get("/accounts").await.unwrap().as_array().unwrap().iter().all(|a| a["login"] != "mallory"));
    assert_eq!(cloud.client.get(&format!("/images/{img}")).await.unwrap()["state"], "active");
    cloud.client.get(&format!("/networks/{net}")).await.unwrap();
    assert!(cloud.client.get("/vms").await.unwrap().as_array().unwrap().is_empty(), "no VM was made");
    assert!(cloud.client.get("/images").await.unwrap().as_array().unwrap().len() == 1, "no image was made");
}
