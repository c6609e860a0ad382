//! The operator's VM pages in a real headless Chromium: create a VM from the browser,
//! watch its job succeed without reloading, resize it, delete it; and a VM too large for
//! every server, whose refusal says why each server said no.
//! Screenshots of each step go to target/test-artifacts/screenshots/web_vms/.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use nereid_testkit::webdriver::Browser;
use nereid_testkit::{Backend, Cloud, Options, web::PASSWORD};
use serde_json::{Value, json};

const LIMIT: Duration = Duration::from_secs(60);

/// A cloud of two simulated servers whose VMs take a few seconds to create (so the VM
/// page is seen while its job still runs).
async fn cloud() -> Cloud {
    let mut o = Options { sim_servers: 2, ..Options::new(Backend::Sqlite) }.web_https();
    o.sim_delays.create = Duration::from_secs(3);
    Cloud::start_with(o).await.unwrap()
}

/// Marks the page; [`same_page`] then tells whether it was never reloaded.
async fn mark_page(b: &Browser) {
    b.execute("window.__web_vms_mark = 'kept'; return null;", vec![]).await.unwrap();
}

async fn same_page(b: &Browser) -> bool {
    b.execute("return window.__web_vms_mark || null;", vec![]).await.unwrap() == json!("kept")
}

/// Clicks a form's submit button and waits for the page the form goes to.
async fn submit(b: &Browser, form: &str, confirm: bool) {
    mark_page(b).await;
    b.click_on(&format!("{form} button[type=submit]")).await.unwrap();
    if confirm {
        b.accept_alert().await.unwrap();
    }
    let page = async || Ok(if same_page(b).await { "the page the form is on" } else { "another page" });
    b.wait_until(LIMIT, &format!("submitting {form} to load another page"), page, |p| *p == "another page").await.unwrap();
    b.find("body").await.unwrap();
}

async fn choose(b: &Browser, select: &str, value: &str) {
    b.click_on(&format!("select#{select} option[value='{value}']")).await.unwrap();
}

async fn fill_create_form(b: &Browser, owner: &str, image: &str, package: &str, network: &str, alias: &str) {
    choose(b, "owner_account", owner).await;
    if !image.is_empty() {
        choose(b, "image_uuid", image).await;
    }
    choose(b, "billing_id", package).await;
    choose(b, "networks", network).await;
    b.fill("#alias", alias).await.unwrap();
}

/// Whether the page is no wider than the window.
const FITS: &str = "return document.documentElement.scrollWidth <= window.innerWidth;";

const STATUS: &str = "[data-live$='/status']";
const JOBS: &str = "[data-live$='/jobs']";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_creates_a_vm_watches_its_job_resizes_and_deletes_it() {
    let cloud = cloud().await;
    let seed = cloud.seed().await.unwrap();
    cloud.web_account("opal", true).await.unwrap();
    let tenant = cloud.web_account("tess", false).await.unwrap();
    let tenant = tenant["uuid"].as_str().unwrap().to_string();
    let base = cloud.web_url().unwrap();
    let b = Browser::start("web_vms", 1280).await.unwrap();
    b.sign_in(&base, "opal", PASSWORD).await.unwrap();
    b.wait_text("Sign out", LIMIT).await.unwrap();

    // Create, from the form.
    b.goto(&format!("{base}/vms/new")).await.unwrap();
    b.screenshot("01-create-form").await.unwrap();
    fill_create_form(&b, &tenant, &seed.image, &seed.package, &seed.network, "web-1").await;
    b.fill("#customer_metadata", "role=web").await.unwrap();
    b.screenshot("02-create-filled").await.unwrap();
    submit(&b, "form[action='/vms/new']", false).await;
    b.wait_for(STATUS, LIMIT).await.unwrap();
    let url = b.url().await.unwrap();
    let vm = url.rsplit('/').next().unwrap().to_string();
    assert!(uuid::Uuid::parse_str(&vm).is_ok(), "the create form goes to the new VM's page, not {url}");
    mark_page(&b).await;
    b.screenshot("03-vm-provisioning").await.unwrap();

    // Its job succeeds and the VM runs, seen without reloading the page.
    let jobs = b.wait_text_in(JOBS, "succeeded", LIMIT).await.unwrap();
    assert!(jobs.contains("provision"), "{jobs}");
    let facts = b.wait_text_in(STATUS, "running", LIMIT).await.unwrap();
    assert!(facts.contains("web-1") && facts.contains(&tenant) && facts.contains("1 GiB"), "{facts}");
    assert!(same_page(&b).await, "the job's success showed through the live region, not a reload");
    let page = b.text(&b.find("main").await.unwrap()).await.unwrap();
    assert!(page.contains("role") && page.contains("web"), "the customer metadata is listed:\n{page}");
    b.resize(1280, 3000).await.unwrap();
    b.screenshot("04-vm-running").await.unwrap();

    // Resize: 1 GiB of RAM to 2 GiB.
    b.fill("#rs-ram", "2048").await.unwrap();
    b.screenshot("05-resize-filled").await.unwrap();
    submit(&b, &format!("form[action='/vms/{vm}/resize']"), false).await;
    mark_page(&b).await;
    let facts = b.wait_text_in(STATUS, "2 GiB", LIMIT).await.unwrap();
    assert!(facts.contains("running"), "{facts}");
    b.wait_text_in(JOBS, "update", LIMIT).await.unwrap();
    assert!(same_page(&b).await);
    let got = cloud.client.get(&format!("/vms/{vm}")).await.unwrap();
    assert_eq!(got["ram"], json!(2048), "{got}");
    b.screenshot("06-resized").await.unwrap();

    // A tag, a snapshot and a NIC switch, each shown by its live table once its job ran.
    b.fill("#tag_key", "role").await.unwrap();
    b.fill("#tag_value", "db").await.unwrap();
    submit(&b, &format!("form[action='/vms/{vm}/tag']"), false).await;
    b.wait_text_in("[data-live$='/tags']", "db", LIMIT).await.unwrap();
    b.fill("#snapshot_name", "before-delete").await.unwrap();
    submit(&b, &format!("form[action='/vms/{vm}/snapshot']"), false).await;
    let snaps = b.wait_text_in("[data-live$='/snapshots']", "before-delete", LIMIT).await.unwrap();
    assert!(!snaps.contains("None."), "{snaps}");
    b.click_on("form.nic-flags input[name=allow_dhcp_spoofing]").await.unwrap();
    submit(&b, &format!("form[action='/vms/{vm}/nic']"), false).await;
    b.wait_text_in("[data-live$='/nics']", "allow_dhcp_spoofing", LIMIT).await.unwrap();
    let checked = "return document.querySelector('form.nic-flags input[name=allow_dhcp_spoofing]').checked;";
    assert_eq!(b.execute(checked, vec![]).await.unwrap(), json!(true), "the form shows the switch as it now is");
    let got = cloud.client.get(&format!("/vms/{vm}")).await.unwrap();
    assert_eq!(got["tags"], json!({"role": "db"}), "{got}");
    assert_eq!(got["snapshots"][0]["name"], json!("before-delete"), "{got}");
    let nics = cloud.client.get(&format!("/nics?belongs_to_uuid={vm}")).await.unwrap();
    assert_eq!(nics[0]["allow_dhcp_spoofing"], json!(true), "{nics}");
    b.screenshot("07-tag-snapshot-nic").await.unwrap();
    // A live region is replaced only when what it shows changed (a keyboard user's focus
    // on one of its buttons stays): the browser's serialization is the server's fragment.
    let churn = "const done = arguments[arguments.length - 1]; \
        Promise.all([...document.querySelectorAll('[data-live]')].map((el) => \
          fetch(el.getAttribute('data-live')).then((r) => r.text()).then((t) => t === el.innerHTML ? null : el.getAttribute('data-live')))) \
        .then((r) => done(r.filter((x) => x)));";
    assert_eq!(b.execute_async(churn, vec![]).await.unwrap(), json!([]), "live regions whose markup the browser rewrites");
    b.resize(400, 3000).await.unwrap();
    b.screenshot("08-narrow").await.unwrap();
    assert_eq!(b.execute(FITS, vec![]).await.unwrap(), json!(true), "the VM page fits 400 px (tables scroll inside)");
    b.resize(1280, 3000).await.unwrap();

    // The list finds it by alias prefix and owner, with its state, RAM and address.
    b.goto(&format!("{base}/vms?alias=web&owner_uuid={tenant}")).await.unwrap();
    let row = b.text(&b.find(&format!("tr:has(a[href='/vms/{vm}'])")).await.unwrap()).await.unwrap();
    assert!(row.contains("web-1") && row.contains("running") && row.contains("2 GiB") && row.contains("10.77."), "{row}");
    b.screenshot("08b-list-filtered").await.unwrap();
    b.goto(&format!("{base}/vms?alias=nomatch")).await.unwrap();
    b.wait_text("No VM matches.", LIMIT).await.unwrap();
    b.goto(&format!("{base}/vms/{vm}")).await.unwrap();

    // Delete, after the browser's confirmation.
    submit(&b, &format!("form[action='/vms/{vm}/delete']"), true).await;
    b.wait_text_in(STATUS, "destroyed", LIMIT).await.unwrap();
    b.screenshot("09-deleted").await.unwrap();
    let got = cloud.client.get(&format!("/vms/{vm}")).await.unwrap();
    assert_eq!(got["state"], json!("destroyed"), "{got}");

    // The list shows it among the destroyed ones, and no more among the active.
    b.goto(&format!("{base}/vms?state=destroyed")).await.unwrap();
    b.wait_text(&vm, LIMIT).await.unwrap();
    b.goto(&format!("{base}/vms")).await.unwrap();
    let list = b.text(&b.find("main").await.unwrap()).await.unwrap();
    assert!(!list.contains(&vm), "{list}");
    b.screenshot("10-list").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_too_large_for_every_server_shows_why_each_server_refused() {
    let cloud = cloud().await;
    let seed = cloud.seed().await.unwrap();
    let huge = cloud
        .client
        .post(
            "/packages",
            &json!({"name": "huge", "version": "1.0.0", "max_physical_memory": 65_536, "quota": 10_240, "vcpus": 1, "brand": "bhyve"}),
        )
        .await
        .unwrap();
    let huge = huge["uuid"].as_str().unwrap().to_string();
    let opal = cloud.web_account("opal", true).await.unwrap();
    let base = cloud.web_url().unwrap();
    let b = Browser::start("web_vms", 1280).await.unwrap();
    b.sign_in(&base, "opal", PASSWORD).await.unwrap();
    b.wait_text("Sign out", LIMIT).await.unwrap();

    // Without an image, the form says which field is missing and keeps what was typed.
    b.goto(&format!("{base}/vms/new")).await.unwrap();
    fill_create_form(&b, opal["uuid"].as_str().unwrap(), "", &huge, &seed.network, "big-1").await;
    submit(&b, "form[action='/vms/new']", false).await;
    let text = b.wait_text("image_uuid", LIMIT).await.unwrap();
    assert!(text.contains("choose an image"), "{text}");
    let alias = b.find("#alias").await.unwrap();
    assert_eq!(b.attr(&alias, "value").await.unwrap().as_deref(), Some("big-1"));
    b.screenshot("11-missing-image").await.unwrap();

    // With one, placement refuses every server, and the page says why for each.
    choose(&b, "image_uuid", &seed.image).await;
    submit(&b, "form[action='/vms/new']", false).await;
    let text = b.wait_text("Why no server could take this VM", LIMIT).await.unwrap();
    b.screenshot("12-placement-refused").await.unwrap();
    let servers = cloud.client.get("/servers").await.unwrap();
    let servers = servers.as_array().unwrap();
    assert_eq!(servers.len(), 2);
    let table = b.text(&b.find("table").await.unwrap()).await.unwrap();
    for s in servers {
        let host = s["hostname"].as_str().unwrap();
        let line = table.lines().find(|l| l.contains(host)).unwrap_or_else(|| panic!("no row for {host}:\n{table}"));
        assert!(line.contains("not enough RAM: needs 65536 MiB"), "{line}");
    }
    assert!(text.contains("NoAllocatableServersError"), "{text}");
    // Nothing was made.
    let vms: Value = cloud.client.get("/vms?alias=big-1").await.unwrap();
    assert_eq!(vms, json!([]));
}
