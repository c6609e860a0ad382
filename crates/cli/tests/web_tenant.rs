//! The web console's tenant side in a real headless Chromium (and reqwest where a browser
//! cannot say what it needs to): a tenant sees their machines and not another's; every
//! operator URL answers 403 and another tenant's machine 404, with nothing in the body;
//! cross-site and token-less form posts are refused and change nothing; five wrong
//! passwords slow a login down; a tenant creates, stops, protects, fails to delete,
//! unprotects and deletes a machine; SSH keys are added and deleted with CloudAPI's errors
//! shown. Screenshots under target/test-artifacts/screenshots/web_tenant/.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use nereid_testkit::web::{PASSWORD, csrf_token, http_client, post_login, sign_in_cookie};
use nereid_testkit::webdriver::{Browser, wait_until};
use nereid_testkit::{Backend, Cloud, Options, Seed};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const GROUP: &str = "web_tenant";
const LIMIT: Duration = Duration::from_secs(60);

/// A machine made for an account through the operator API.
struct Vm {
    uuid: String,
    alias: String,
    job: String,
}

struct World {
    cloud: Cloud,
    seed: Seed,
    base: String,
    http: reqwest::Client,
    alice: Value,
    bob: Value,
    alice_vm: Vm,
    bob_vm: Vm,
}

async fn vm_for(cloud: &Cloud, seed: &Seed, owner: &Value, alias: &str) -> Vm {
    let mut body = seed.vm_body(alias);
    body["owner_uuid"] = owner["uuid"].clone();
    let (uuid, job) = cloud.create_vm(&body).await.unwrap();
    let j = cloud.wait_job(&job).await.unwrap();
    assert_eq!(j["execution"], "succeeded", "{j}");
    Vm { uuid, alias: alias.to_string(), job }
}

/// Two tenants with one running machine each, on a one-server simulated cloud.
async fn world() -> World {
    let cloud = Cloud::start_with(Options { sim_servers: 1, ..Options::new(Backend::Sqlite) }.web_https()).await.unwrap();
    let seed = cloud.seed().await.unwrap();
    let alice = cloud.web_account("tenant_alice", false).await.unwrap();
    let bob = cloud.web_account("tenant_bob", false).await.unwrap();
    let alice_vm = vm_for(&cloud, &seed, &alice, "alice-web").await;
    let bob_vm = vm_for(&cloud, &seed, &bob, "bobs-secret-db").await;
    let base = cloud.web_url().unwrap();
    let http = http_client(&cloud).unwrap();
    World { cloud, seed, base, http, alice, bob, alice_vm, bob_vm }
}

async fn vm_state(cloud: &Cloud, uuid: &str) -> String {
    cloud.client.get(&format!("/vms/{uuid}")).await.unwrap()["state"].as_str().unwrap_or_default().to_string()
}

async fn wait_vm_state(cloud: &Cloud, uuid: &str, state: &str) {
    wait_until(LIMIT, &format!("vm {uuid} to become {state}"), async || Ok(vm_state(cloud, uuid).await), |s| s == state).await.unwrap();
}

/// Clicks what a selector names, again if a live region replaced it meanwhile.
async fn click(b: &Browser, css: &str) {
    let mut last = None;
    for _ in 0..5 {
        match b.click_on(css).await {
            Ok(()) => return,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    panic!("clicking {css}: {last:?}");
}

async fn body_text(b: &Browser) -> String {
    let body = b.find("body").await.unwrap();
    b.text(&body).await.unwrap()
}

/// ACCEPTANCE: a tenant sees their machines and not another tenant's; every operator URL
/// answers 403 and another tenant's machine 404, each with no data in the body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_sees_only_their_machines_and_nothing_of_operators_or_other_tenants() {
    let w = world().await;
    let b = Browser::start(GROUP, 1280).await.unwrap();
    b.sign_in(&w.base, "tenant_alice", PASSWORD).await.unwrap();
    let text = b.wait_text("alice-web", LIMIT).await.unwrap();
    assert!(b.url().await.unwrap().ends_with("/machines"), "a tenant lands on their machines");
    b.screenshot("isolation-01-machines").await.unwrap();
    assert!(!text.contains(&w.bob_vm.alias), "another tenant's machine is not listed:\n{text}");
    assert!(!text.contains("Dashboard") && !text.contains("Servers"), "no operator navigation for a tenant:\n{text}");
    b.resize(400, 900).await.unwrap();
    b.screenshot("isolation-02-machines-400px").await.unwrap();
    let wide: bool =
        b.execute("return document.documentElement.scrollWidth <= window.innerWidth + 1", vec![]).await.unwrap().as_bool().unwrap();
    assert!(wide, "the machine list fits 400 px (its table scrolls inside)");
    b.resize(1280, 900).await.unwrap();
    b.click_on(&format!("a[href='/machines/{}']", w.alice_vm.uuid)).await.unwrap();
    b.wait_text("Deletion protection", LIMIT).await.unwrap();
    b.screenshot("isolation-03-own-machine").await.unwrap();

    // The same with reqwest, reading status codes and bodies exactly.
    let cookie = sign_in_cookie(&w.http, &w.base, "tenant_alice", PASSWORD).await.unwrap();
    let servers: Vec<String> =
        w.cloud.client.get("/servers").await.unwrap().as_array().unwrap().iter().map(|s| s["uuid"].as_str().unwrap().to_string()).collect();
    assert!(!servers.is_empty());
    let bob_uuid = w.bob["uuid"].as_str().unwrap();
    let secrets: Vec<&str> = [w.bob_vm.uuid.as_str(), w.bob_vm.alias.as_str(), w.bob_vm.job.as_str(), "tenant_bob", bob_uuid]
        .into_iter()
        .chain(servers.iter().map(String::as_str))
        .collect();
    let get = |path: String| {
        let (http, base, cookie) = (w.http.clone(), w.base.clone(), cookie.clone());
        async move {
            let r = http.get(format!("{base}{path}")).header("cookie", cookie).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let operator_urls = [
        "/dashboard".to_string(),
        "/servers".into(),
        format!("/servers/{}", servers[0]),
        "/vms".into(),
        format!("/vms/{}", w.bob_vm.uuid),
        "/vms/new".into(),
        "/jobs".into(),
        format!("/jobs/{}", w.bob_vm.job),
        "/images".into(),
        "/images/upload".into(),
        "/packages".into(),
        "/networks".into(),
        "/accounts".into(),
        format!("/accounts/{bob_uuid}"),
    ];
    for path in operator_urls {
        let (status, body) = get(path.clone()).await;
        assert_eq!(status, 403, "{path} answers a tenant 403:\n{body}");
        for s in &secrets {
            assert!(!body.contains(s), "the 403 of {path} shows {s}:\n{body}");
        }
    }
    let bob_vm = &w.bob_vm.uuid;
    for path in [
        format!("/machines/{bob_vm}"),
        format!("/machines/{bob_vm}/serial"),
        format!("/machines/{bob_vm}/vnc"),
        format!("/machines/{bob_vm}/part/state"),
        format!("/machines/{bob_vm}/part/snapshots"),
        format!("/audit?machine={bob_vm}"),
    ] {
        let (status, body) = get(path.clone()).await;
        assert_eq!(status, 404, "another tenant's {path} answers 404 as CloudAPI does:\n{body}");
        for s in &secrets {
            assert!(!body.contains(s), "the 404 of {path} shows {s}:\n{body}");
        }
    }
    let (status, own) = get(format!("/machines/{}", w.alice_vm.uuid)).await;
    assert_eq!(status, 200);
    assert!(own.contains(&w.alice_vm.uuid) && own.contains("alice-web"));
    let (status, activity) = get("/audit".into()).await;
    assert_eq!(status, 200);
    assert!(activity.contains("alice-web") && activity.contains("provision"), "{activity}");
    for s in &secrets {
        assert!(!activity.contains(s), "the account's activity shows {s}");
    }

    // Changing another tenant's machine, even with a good token, is CloudAPI's 404 and does nothing.
    let csrf = csrf_token(&w.http, &w.base, &cookie).await.unwrap();
    let r = w
        .http
        .post(format!("{}/machines/{bob_vm}/stop", w.base))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(vm_state(&w.cloud, bob_vm).await, "running");
}

/// A page on another origin that posts a form to the console as soon as it loads.
async fn evil_site(target: String) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let html = format!(
        "<!doctype html><html><head><title>Win a prize</title></head><body>\
         <form id=f method=post action=\"{target}\"><input type=hidden name=action value=stop></form>\
         <script>document.getElementById('f').submit()</script></body></html>"
    );
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let html = html.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let _ = sock.read(&mut buf).await;
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{html}",
                    html.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}/")
}

/// ACCEPTANCE: a cross-site form post is refused; a post without the CSRF token, with a
/// wrong one or from another Origin answers 403; none of them changes anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_and_token_less_posts_are_refused_and_change_nothing() {
    let w = world().await;
    let vm = w.alice_vm.uuid.clone();
    let stop_url = format!("{}/machines/{vm}/stop", w.base);

    let b = Browser::start(GROUP, 1280).await.unwrap();
    b.sign_in(&w.base, "tenant_alice", PASSWORD).await.unwrap();
    b.wait_text("alice-web", LIMIT).await.unwrap();
    let evil = evil_site(stop_url.clone()).await;
    b.goto(&evil).await.unwrap();
    b.wait_until(LIMIT, "the other site's form to post", async || b.url().await, |u| u.starts_with(&stop_url)).await.unwrap();
    let text = body_text(&b).await;
    b.screenshot("csrf-01-cross-site-post-refused").await.unwrap();
    assert!(text.contains("Refused") || text.contains("Signed out"), "the console refused the cross-site post:\n{text}");
    assert_eq!(vm_state(&w.cloud, &vm).await, "running", "the cross-site post did not stop the machine");
    // The browser is still signed in: the refusal did not end the session either.
    b.goto(&format!("{}/machines", w.base)).await.unwrap();
    b.wait_text("alice-web", LIMIT).await.unwrap();

    let cookie = sign_in_cookie(&w.http, &w.base, "tenant_alice", PASSWORD).await.unwrap();
    let csrf = csrf_token(&w.http, &w.base, &cookie).await.unwrap();
    let post = |form: Vec<(&'static str, String)>, origin: Option<&'static str>| {
        let (http, url, cookie) = (w.http.clone(), stop_url.clone(), cookie.clone());
        async move {
            let mut r = http.post(url).header("cookie", cookie).form(&form);
            if let Some(o) = origin {
                r = r.header("origin", o);
            }
            let r = r.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (status, body) = post(vec![], None).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("no CSRF token"), "{body}");
    let (status, body) = post(vec![("csrf", "0".repeat(64))], None).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("not this session"), "{body}");
    let (status, body) = post(vec![("csrf", csrf.clone())], Some("https://evil.example")).await;
    assert_eq!(status, 403, "another Origin is refused even with the token:\n{body}");
    assert_eq!(vm_state(&w.cloud, &vm).await, "running", "no refused post stopped the machine");
    let jobs = w.cloud.client.get(&format!("/jobs?vm_uuid={vm}")).await.unwrap();
    assert!(!jobs.as_array().unwrap().iter().any(|j| j["task"] == "stop"), "no stop job was ever made: {jobs}");

    // The same post with the session's token does stop it (the refusals were the token's).
    let (status, _) = post(vec![("csrf", csrf)], None).await;
    assert_eq!(status, 303);
    wait_vm_state(&w.cloud, &vm, "stopped").await;
}

/// ACCEPTANCE: five wrong passwords for a login slow it down: the sixth attempt, even
/// with the right password, answers 429 with Retry-After and says to wait; another login
/// is not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_wrong_passwords_slow_a_login_down_and_only_that_login() {
    let cloud = Cloud::start_with(Options::new(Backend::Sqlite).web_https()).await.unwrap();
    cloud.web_account("tenant_alice", false).await.unwrap();
    cloud.web_account("tenant_bob", false).await.unwrap();
    let base = cloud.web_url().unwrap();
    let http = http_client(&cloud).unwrap();
    for i in 1..=5 {
        let r = post_login(&http, &base, "tenant_alice", "wrong password").await.unwrap();
        assert_eq!(r.status(), 401, "attempt {i} is only wrong");
    }
    let r = post_login(&http, &base, "tenant_alice", PASSWORD).await.unwrap();
    assert_eq!(r.status(), 429, "the sixth attempt waits, even with the right password");
    assert!(r.headers().get("set-cookie").is_none(), "and signs nobody in");
    let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry > 0, "Retry-After: {retry}");
    let body = r.text().await.unwrap();
    assert!(body.contains("Too many failed sign-ins") && body.contains(&format!("wait {retry} seconds")), "{body}");

    let other = post_login(&http, &base, "tenant_bob", PASSWORD).await.unwrap();
    assert_eq!(other.status(), 303, "another login signs in as usual");

    let b = Browser::start(GROUP, 400).await.unwrap();
    b.sign_in(&base, "tenant_alice", PASSWORD).await.unwrap();
    let text = b.wait_text("Too many failed sign-ins", LIMIT).await.unwrap();
    assert!(text.contains("seconds"), "{text}");
    b.screenshot("throttle-01-wait").await.unwrap();
    b.sign_in(&base, "tenant_bob", PASSWORD).await.unwrap();
    b.wait_text("Sign out", LIMIT).await.unwrap();
    b.screenshot("throttle-02-other-login-signs-in").await.unwrap();
}

/// ACCEPTANCE: a tenant creates a machine in the browser (a bad name first: the field is
/// named and what was typed kept), stops it, enables deletion protection, sees delete
/// refused with CloudAPI's message, disables it and deletes it; tags, metadata and
/// snapshots on the way; the activity page lists what was done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_runs_a_machine_from_create_to_delete_in_the_browser() {
    let w = world().await;
    let b = Browser::start(GROUP, 1280).await.unwrap();
    b.sign_in(&w.base, "tenant_alice", PASSWORD).await.unwrap();
    b.wait_text("alice-web", LIMIT).await.unwrap();
    click(&b, "a[href='/machines/new']").await;
    b.find("select#image").await.unwrap();
    b.screenshot("machine-01-create-form").await.unwrap();
    b.fill("input#name", "not a valid name!").await.unwrap();
    click(&b, &format!("select#image option[value='{}']", w.seed.image)).await;
    click(&b, &format!("select#package option[value='{}']", w.seed.package)).await;
    click(&b, &format!("input[name=networks][value='{}']", w.seed.network)).await;
    click(&b, "form[action='/machines'] button[type=submit]").await;
    let text = b.wait_text("name", LIMIT).await.unwrap();
    b.find(".error").await.unwrap();
    b.screenshot("machine-02-create-refused").await.unwrap();
    let err = b.text(&b.find(".error").await.unwrap()).await.unwrap();
    assert!(err.contains("name:"), "the error names the field:\n{err}\n{text}");
    let kept = b.attr(&b.find("input#name").await.unwrap(), "value").await.unwrap();
    assert_eq!(kept.as_deref(), Some("not a valid name!"), "what was typed is kept");
    let chosen = b.execute("return document.getElementById('image').value", vec![]).await.unwrap();
    assert_eq!(chosen, json!(w.seed.image));

    b.fill("input#name", "made-in-browser").await.unwrap();
    click(&b, "form[action='/machines'] button[type=submit]").await;
    b.wait_text("Deletion protection", LIMIT).await.unwrap();
    let url = b.url().await.unwrap();
    let id = url.rsplit('/').next().unwrap().to_string();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "after create: the machine's page, not {url}");
    let m = format!("/machines/{id}");
    assert_eq!(w.cloud.client.get(&format!("/vms/{id}")).await.unwrap()["owner_uuid"], w.alice["uuid"]);
    b.screenshot("machine-03-created").await.unwrap();
    b.wait_for(&format!("form[action='{m}/stop']"), LIMIT).await.unwrap();
    b.screenshot("machine-04-running").await.unwrap();

    // Tags, metadata, a snapshot.
    b.fill("input#tag_key", "role").await.unwrap();
    b.fill("input#tag_value", "web").await.unwrap();
    click(&b, &format!("form[action='{m}/tag'] button")).await;
    b.wait_for(&format!("form[action='{m}/tag/role/delete']"), LIMIT).await.unwrap();
    b.fill("input#metadata_key", "motd").await.unwrap();
    b.fill("input#metadata_value", "hello").await.unwrap();
    click(&b, &format!("form[action='{m}/metadata'] button")).await;
    b.wait_for(&format!("form[action='{m}/metadata/motd/delete']"), LIMIT).await.unwrap();
    b.fill("input#snapshot_name", "before-stop").await.unwrap();
    click(&b, &format!("form[action='{m}/snapshots'] button")).await;
    b.wait_for(&format!("form[action='{m}/snapshots/before-stop/delete']"), LIMIT).await.unwrap();
    b.screenshot("machine-05-tag-metadata-snapshot").await.unwrap();
    let vm = w.cloud.client.get(&format!("/vms/{id}")).await.unwrap();
    assert_eq!((vm["tags"]["role"].as_str(), vm["customer_metadata"]["motd"].as_str()), (Some("web"), Some("hello")), "{vm}");

    // Rename: a name another machine of the account has is refused, naming the field.
    b.fill("input#name", "alice-web").await.unwrap();
    click(&b, &format!("form[action='{m}/rename'] button")).await;
    let err = b.text(&b.find(".error").await.unwrap()).await.unwrap();
    assert!(err.contains("name") && err.contains("already the name"), "{err}");
    let kept = b.attr(&b.find("input#name").await.unwrap(), "value").await.unwrap();
    assert_eq!(kept.as_deref(), Some("alice-web"));
    b.screenshot("machine-05b-rename-refused").await.unwrap();
    b.fill("input#name", "renamed-in-browser").await.unwrap();
    click(&b, &format!("form[action='{m}/rename'] button")).await;
    let alias = async || Ok(w.cloud.client.get(&format!("/vms/{id}")).await?["alias"].clone());
    wait_until(LIMIT, "the rename", alias, |a| *a == "renamed-in-browser").await.unwrap();
    b.goto(&format!("{}{m}", w.base)).await.unwrap();
    b.wait_text("Machine renamed-in-browser", LIMIT).await.unwrap();

    // Stop; protect; delete is refused with CloudAPI's message.
    click(&b, &format!("form[action='{m}/stop'] button")).await;
    b.wait_for(&format!("form[action='{m}/start']"), LIMIT).await.unwrap();
    assert_eq!(vm_state(&w.cloud, &id).await, "stopped");
    b.screenshot("machine-06-stopped").await.unwrap();
    click(&b, &format!("form[action='{m}/protect'] button")).await;
    b.wait_for(&format!("form[action='{m}/unprotect']"), LIMIT).await.unwrap();
    b.screenshot("machine-07-protected").await.unwrap();
    click(&b, &format!("form[action='{m}/delete'] button")).await;
    b.accept_alert().await.unwrap();
    let text = b.wait_text("CannotDestroyMachineError", LIMIT).await.unwrap();
    assert!(text.contains("preventing deletion"), "CloudAPI's message is shown:\n{text}");
    b.screenshot("machine-08-delete-refused").await.unwrap();
    assert_eq!(vm_state(&w.cloud, &id).await, "stopped", "a protected machine is not deleted");

    // Unprotect; delete.
    click(&b, &format!("form[action='{m}/unprotect'] button")).await;
    b.wait_for(&format!("form[action='{m}/protect']"), LIMIT).await.unwrap();
    click(&b, &format!("form[action='{m}/delete'] button")).await;
    b.accept_alert().await.unwrap();
    b.wait_until(LIMIT, "delete to go back to the list", async || b.url().await, |u| u.ends_with("/machines")).await.unwrap();
    b.screenshot("machine-09-deleted").await.unwrap();
    wait_vm_state(&w.cloud, &id, "destroyed").await;
    b.goto(&format!("{}{m}", w.base)).await.unwrap();
    b.wait_text("deleted", LIMIT).await.unwrap();

    b.goto(&format!("{}/audit", w.base)).await.unwrap();
    let text = b.wait_text("renamed-in-browser", LIMIT).await.unwrap();
    for action in ["provision", "rename", "stop", "enable_deletion_protection", "disable_deletion_protection", "create_snapshot", "delete"]
    {
        assert!(text.contains(action), "the activity lists {action}:\n{text}");
    }
    assert!(!text.contains(&w.bob_vm.alias));
    b.screenshot("machine-10-activity").await.unwrap();
}

/// SSH keys: CloudAPI's validation error names the key field and keeps what was typed; a
/// good key is listed and can be deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_adds_and_deletes_ssh_keys() {
    let cloud = Cloud::start_with(Options::new(Backend::Sqlite).web_https()).await.unwrap();
    cloud.web_account("tenant_alice", false).await.unwrap();
    let base = cloud.web_url().unwrap();
    let b = Browser::start(GROUP, 400).await.unwrap();
    b.sign_in(&base, "tenant_alice", PASSWORD).await.unwrap();
    b.wait_text("Sign out", LIMIT).await.unwrap();
    b.goto(&format!("{base}/keys")).await.unwrap();
    b.fill("input#name", "laptop").await.unwrap();
    b.fill("textarea#key", "ssh-ed25519 not-base64").await.unwrap();
    click(&b, "form[action='/keys'] button[type=submit]").await;
    b.find(".error").await.unwrap();
    let err = b.text(&b.find(".error").await.unwrap()).await.unwrap();
    b.screenshot("keys-01-refused").await.unwrap();
    assert!(err.contains("key"), "{err}");
    let kept = b.execute("return document.getElementById('key').value", vec![]).await.unwrap();
    assert_eq!(kept, json!("ssh-ed25519 not-base64"));

    let key = nereid_testkit::cloudapi::Key::from_seed(7).openssh();
    b.fill("input#name", "laptop").await.unwrap();
    b.fill("textarea#key", &key).await.unwrap();
    click(&b, "form[action='/keys'] button[type=submit]").await;
    b.wait_for("form[action='/keys/laptop/delete']", LIMIT).await.unwrap();
    b.screenshot("keys-02-added").await.unwrap();
    click(&b, "form[action='/keys/laptop/delete'] button").await;
    b.accept_alert().await.unwrap();
    b.wait_text("None.", LIMIT).await.unwrap();
    b.screenshot("keys-03-deleted").await.unwrap();
}
