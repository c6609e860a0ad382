//! The operator's images, packages and accounts pages in a real headless Chromium: a
//! 64 MiB disk uploaded from the browser becomes an active image with the right sha1 and
//! image_size (the same path as `nereid image create-from-disk`); a package created in the
//! browser is listed until it is deactivated; an account created in the browser with a
//! password signs in. Screenshots of each step go to
//! target/test-artifacts/screenshots/web_images/.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use nereid_testkit::webdriver::{Browser, WithStatus};
use nereid_testkit::{Backend, Cloud, Options, web::PASSWORD};
use sha1::Digest;

const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINmbMQOa2C1YnOv3rGEb92B+wDGNYIj/Yf6NIZdUQ9wO web-test";

async fn console() -> (Cloud, String) {
    let cloud = Cloud::start_with(Options::new(Backend::Sqlite).web_https()).await.unwrap();
    cloud.web_account("opal", true).await.unwrap();
    let base = cloud.web_url().unwrap();
    (cloud, base)
}

async fn signed_in(base: &str, width: u32) -> Browser {
    let b = Browser::start("web_images", width).await.unwrap();
    b.sign_in(base, "opal", PASSWORD).await.unwrap();
    b.wait_text("Sign out", Duration::from_secs(30)).await.unwrap();
    b
}

/// Waits until the browser is on a page whose path starts with `prefix` (and is not `not`).
async fn wait_path(b: &Browser, prefix: &str, not: &str) -> String {
    let path = |u: &str| u.split_once("://").and_then(|(_, r)| r.find('/').map(|i| r[i..].to_string())).unwrap_or_default();
    let look = async || Ok(WithStatus { status: b.text_if_any("[data-upload-status]").await?, seen: path(&b.url().await?) });
    let what = format!("a page under {prefix} (not {not})");
    let at = b.wait_until(Duration::from_secs(120), &what, look, |p| p.seen.starts_with(prefix) && !p.seen.starts_with(not)).await;
    at.unwrap().seen
}

/// A 64 MiB raw disk whose every block differs (not zeros: the sha1 means something).
fn disk_file(dir: &std::path::Path) -> (std::path::PathBuf, String, u64) {
    let size: u64 = 64 << 20;
    let mut data = Vec::with_capacity(size as usize);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while (data.len() as u64) < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    let path = dir.join("web-disk.raw");
    std::fs::write(&path, &data).unwrap();
    (path, hex::encode(sha1::Sha1::digest(&data)), size)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_uploaded_from_the_browser_becomes_an_active_image() {
    let (cloud, base) = console().await;
    let dir = tempfile::tempdir().unwrap();
    let (file, sha1, size) = disk_file(dir.path());
    let b = signed_in(&base, 1280).await;

    b.goto(&format!("{base}/images")).await.unwrap();
    b.click_on("a[href='/images/upload']").await.unwrap();
    b.find("form[data-upload='/images/upload'] input[type=file][name=file]").await.unwrap();
    b.screenshot("01-upload-form").await.unwrap();
    b.fill("#name", "web-disk").await.unwrap();
    b.fill("#version", "1.0").await.unwrap();
    b.fill("#description", "uploaded from a browser").await.unwrap();
    let input = b.find("input[type=file]").await.unwrap();
    b.send_keys(&input, file.to_str().unwrap()).await.unwrap();
    // Record every value the progress bar takes (the page navigates away at the end, so
    // into sessionStorage, which survives that in this tab).
    b.execute(
        "sessionStorage.setItem('progress', '[]');
         const bar = document.querySelector('progress');
         new MutationObserver(() => {
           const seen = JSON.parse(sessionStorage.getItem('progress'));
           seen.push([Number(bar.value), Number(bar.max)]);
           sessionStorage.setItem('progress', JSON.stringify(seen));
         }).observe(bar, {attributes: true, attributeFilter: ['value', 'max']});",
        vec![],
    )
    .await
    .unwrap();
    b.click_on("form[data-upload] button[type=submit]").await.unwrap();
    b.screenshot("02-uploading").await.unwrap();

    let path = wait_path(&b, "/images/", "/images/upload").await;
    b.wait_text("uploaded from a browser", Duration::from_secs(30)).await.unwrap();
    b.screenshot("03-image-page").await.unwrap();
    let uuid = path.trim_start_matches("/images/").to_string();

    let seen: Vec<(f64, f64)> = {
        let v = b.execute("return JSON.parse(sessionStorage.getItem('progress') || '[]');", vec![]).await.unwrap();
        v.as_array().unwrap().iter().map(|p| (p[0].as_f64().unwrap(), p[1].as_f64().unwrap())).collect()
    };
    eprintln!("progress bar values: {} updates, {:?}…", seen.len(), seen.iter().take(5).collect::<Vec<_>>());
    let uploaded: Vec<f64> = seen.iter().filter(|(_, max)| *max == size as f64).map(|(v, _)| *v).collect();
    assert!(!uploaded.is_empty(), "the progress bar never measured the {size}-byte upload: {seen:?}");
    assert!(uploaded.windows(2).all(|w| w[0] <= w[1]), "the progress bar went backwards: {uploaded:?}");
    assert_eq!(uploaded.last().copied(), Some(size as f64), "the bar ends full");

    let img = cloud.client.get(&format!("/images/{uuid}")).await.unwrap();
    assert_eq!(img["state"], "active", "{img}");
    assert_eq!(img["name"], "web-disk");
    assert_eq!(img["image_size"].as_u64(), Some(64), "64 MiB disk: {img}");
    assert_eq!(img["files"][0]["sha1"].as_str(), Some(sha1.as_str()), "{img}");
    assert_eq!(img["files"][0]["size"].as_u64(), Some(size), "{img}");
    assert_eq!(img["files"][0]["compression"], "none");
    assert_eq!(img["public"], true);
    let text = b.text(&b.find("main").await.unwrap()).await.unwrap();
    assert!(text.contains(&sha1) && text.contains("active"), "the image page shows its state and sha1:\n{text}");

    // Requirements change through IMGAPI's update: UEFI firmware.
    b.execute("document.querySelector('#bootrom').value = 'uefi';", vec![]).await.unwrap();
    b.click_on("form[action$='/update'] button[type=submit]").await.unwrap();
    b.wait_text("\"bootrom\":\"uefi\"", Duration::from_secs(30)).await.unwrap();
    b.screenshot("04-bootrom-uefi").await.unwrap();
    let img = cloud.client.get(&format!("/images/{uuid}")).await.unwrap();
    assert_eq!(img["requirements"]["bootrom"], "uefi", "{img}");
    assert_eq!(img["requirements"]["brand"], "bhyve", "a bootrom needs brand bhyve: {img}");

    // A bad upload is refused with the field named, and leaves no image behind.
    b.goto(&format!("{base}/images/upload")).await.unwrap();
    b.fill("#name", "not-a-disk").await.unwrap();
    b.fill("#version", "1").await.unwrap();
    let junk = dir.path().join("empty.raw");
    std::fs::write(&junk, b"").unwrap();
    let input = b.find("input[type=file]").await.unwrap();
    b.send_keys(&input, junk.to_str().unwrap()).await.unwrap();
    b.click_on("form[data-upload] button[type=submit]").await.unwrap();
    let t = b.wait_text("Upload failed", Duration::from_secs(60)).await.unwrap();
    b.screenshot("05-bad-upload").await.unwrap();
    assert!(t.contains("file:"), "the error names the file field:\n{t}");
    let all = cloud.client.get("/images?state=all&name=not-a-disk").await.unwrap();
    assert_eq!(all.as_array().map(Vec::len), Some(0), "{all}");

    // Disable from the image's page: it leaves the default (active) list.
    b.goto(&format!("{base}/images/{uuid}")).await.unwrap();
    b.click_on("form[action$='/disable'] button").await.unwrap();
    b.accept_alert().await.unwrap();
    b.wait_text("disabled", Duration::from_secs(30)).await.unwrap();
    assert_eq!(cloud.client.get(&format!("/images/{uuid}")).await.unwrap()["state"], "disabled");
    b.goto(&format!("{base}/images")).await.unwrap();
    let list = b.text(&b.find("main").await.unwrap()).await.unwrap();
    assert!(!list.contains("web-disk"), "a disabled image is not in the active list:\n{list}");
    b.screenshot("06-images-after-disable").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packages_and_accounts_made_in_the_browser_work() {
    let (cloud, base) = console().await;
    let seed = cloud.seed().await.unwrap();
    let b = signed_in(&base, 1280).await;

    // A package: a bad quota is named and what was typed stays; then it is created.
    b.goto(&format!("{base}/packages")).await.unwrap();
    b.click_on("a[href='/packages/new']").await.unwrap();
    b.fill("#name", "web.small").await.unwrap();
    b.fill("#version", "1.0.0").await.unwrap();
    b.fill("#max_physical_memory", "1024").await.unwrap();
    b.fill("#quota", "1000").await.unwrap();
    b.fill("#vcpus", "2").await.unwrap();
    b.click_on("form[action='/packages'] button[type=submit]").await.unwrap();
    let t = b.wait_text("quota", Duration::from_secs(30)).await.unwrap();
    b.screenshot("10-package-error").await.unwrap();
    let err = b.text(&b.find(".error").await.unwrap()).await.unwrap();
    assert!(err.contains("quota"), "the error names the quota field: {err}\n{t}");
    assert_eq!(b.attr(&b.find("#name").await.unwrap(), "value").await.unwrap().as_deref(), Some("web.small"));
    b.fill("#quota", "10240").await.unwrap();
    b.click_on("form[action='/packages'] button[type=submit]").await.unwrap();
    b.wait_text("Package web.small 1.0.0", Duration::from_secs(30)).await.unwrap();
    let package_page = b.url().await.unwrap();
    b.screenshot("11-package-created").await.unwrap();

    b.goto(&format!("{base}/packages")).await.unwrap();
    let list = b.text(&b.find("main").await.unwrap()).await.unwrap();
    assert!(list.contains("web.small"), "the new package is listed:\n{list}");
    b.goto(&package_page).await.unwrap();
    b.click_on("form[action$='/deactivate'] button").await.unwrap();
    b.accept_alert().await.unwrap();
    b.wait_text("inactive", Duration::from_secs(30)).await.unwrap();
    b.screenshot("12-package-deactivated").await.unwrap();
    b.goto(&format!("{base}/packages")).await.unwrap();
    let list = b.text(&b.find("main").await.unwrap()).await.unwrap();
    assert!(!list.contains("web.small"), "a deactivated package is not in the default list:\n{list}");
    b.screenshot("13-packages-default").await.unwrap();
    b.click_on("#f-inactive").await.unwrap();
    b.click_on("form.filters button").await.unwrap();
    let list = b.wait_text("web.small", Duration::from_secs(30)).await.unwrap();
    assert!(list.contains("inactive"), "{list}");
    b.screenshot("14-packages-with-inactive").await.unwrap();

    // An account with a password, and an SSH key.
    b.goto(&format!("{base}/accounts")).await.unwrap();
    b.click_on("a[href='/accounts/new']").await.unwrap();
    b.fill("#login", "tess").await.unwrap();
    b.fill("#email", "tess@example.com").await.unwrap();
    b.fill("#password", "tess-secret-password").await.unwrap();
    b.screenshot("20-account-form").await.unwrap();
    b.click_on("form[action='/accounts'] button[type=submit]").await.unwrap();
    b.wait_text("Account tess", Duration::from_secs(30)).await.unwrap();
    let tess_page = b.url().await.unwrap();
    b.fill("#key", KEY).await.unwrap();
    b.click_on("form[action$='/keys'] button[type=submit]").await.unwrap();
    let t = b.wait_text("web-test", Duration::from_secs(30)).await.unwrap();
    assert!(t.contains("SSH keys: 1"), "{t}");
    b.screenshot("21-account-with-key").await.unwrap();
    b.goto(&format!("{base}/accounts")).await.unwrap();
    assert!(b.text(&b.find("main").await.unwrap()).await.unwrap().contains("tess@example.com"));

    // Tess signs in from another browser, as a tenant.
    let t2 = Browser::start("web_images", 400).await.unwrap();
    t2.sign_in(&base, "tess", "tess-secret-password").await.unwrap();
    let t = t2.wait_text("Sign out", Duration::from_secs(30)).await.unwrap();
    assert!(t.contains("tess") && !t.contains("(operator)"), "{t}");
    t2.screenshot("22-tess-signed-in").await.unwrap();
    t2.goto(&format!("{base}/accounts")).await.unwrap();
    let t = t2.wait_text("Not allowed", Duration::from_secs(30)).await.unwrap();
    assert!(!t.contains("opal"), "a tenant sees no accounts: {t}");

    // Disabled, the account's session ends and it cannot sign in any more.
    b.goto(&tess_page).await.unwrap();
    b.click_on("form[action$='/disable'] button").await.unwrap();
    b.accept_alert().await.unwrap();
    b.wait_text("disabled", Duration::from_secs(30)).await.unwrap();
    b.screenshot("23-tess-disabled").await.unwrap();
    t2.goto(&format!("{base}/")).await.unwrap();
    t2.find("input[name=password]").await.unwrap();
    assert!(t2.url().await.unwrap().contains("/login"), "{}", t2.url().await.unwrap());

    // A network pool made of the seeded network.
    b.goto(&format!("{base}/networks")).await.unwrap();
    b.click_on("a[href='/network_pools']").await.unwrap();
    b.fill("#name", "web-pool").await.unwrap();
    b.click_on(&format!("#net-{}", seed.network)).await.unwrap();
    b.click_on("form[action='/network_pools'] button[type=submit]").await.unwrap();
    let t = b.wait_text("Network pool web-pool", Duration::from_secs(30)).await.unwrap();
    assert!(t.contains("external") && t.contains("10.77.0.0/16"), "the pool lists its network:\n{t}");
    b.screenshot("30-pool").await.unwrap();

    // Every page of this area at 400 px: a title, every field labelled, nothing wider
    // than the window (tables scroll inside their own box).
    b.resize(400, 900).await.unwrap();
    let tess = tess_page.split("/accounts/").nth(1).unwrap().to_string();
    let pages = [
        "/images".to_string(),
        "/images?state=all&name=tiny&os=linux".into(),
        format!("/images/{}", seed.image),
        "/images/upload".into(),
        "/packages".into(),
        "/packages/new".into(),
        format!("/packages/{}", seed.package),
        "/networks".into(),
        "/networks/new".into(),
        format!("/networks/{}", seed.network),
        "/network_pools".into(),
        "/nics".into(),
        "/accounts".into(),
        "/accounts/new".into(),
        format!("/accounts/{tess}"),
    ];
    for (i, p) in pages.iter().enumerate() {
        b.goto(&format!("{base}{p}")).await.unwrap();
        b.find("main h1").await.unwrap();
        let v = b
            .execute(
                "const fields = [...document.querySelectorAll('input:not([type=hidden]), select, textarea')];
                 const unlabelled = fields.filter(e => !(e.id && document.querySelector('label[for=\"' + e.id + '\"]'))
                   && !e.getAttribute('aria-label') && !e.closest('label')).map(e => e.name || e.outerHTML);
                 return {title: document.title, h1: document.querySelector('h1').textContent,
                   unlabelled, wide: document.documentElement.scrollWidth > window.innerWidth,
                   error: !!document.querySelector('.error')};",
                vec![],
            )
            .await
            .unwrap();
        b.screenshot(&format!("4{i:02}-narrow{}", p.replace(['/', '?', '&', '='], "-"))).await.unwrap();
        assert!(v["title"].as_str().unwrap().ends_with("· Nereid") && v["title"].as_str().unwrap().len() > 10, "{p}: {v}");
        assert_eq!(v["unlabelled"], serde_json::json!([]), "{p}: every field has a label");
        assert_eq!(v["wide"], false, "{p} is wider than 400 px");
        assert_eq!(v["error"], false, "{p} shows an error: {v}");
    }
}
