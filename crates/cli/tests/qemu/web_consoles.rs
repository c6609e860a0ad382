//! The web console's serial and VNC pages on a real guest (TCG) in a real headless
//! Chromium: the operator's pages show the guest's console and screen and take its
//! keystrokes; the VM's owner has them under /machines; another tenant gets 404.
//! Screenshots of each step go to target/test-artifacts/screenshots/web_consoles_qemu/.

use std::time::Duration;

use nereid_testkit::webdriver::Browser;
use nereid_testkit::{Backend, Options, web::PASSWORD};
use serde_json::json;

use super::Env;

/// Opens a WebSocket from the page and says whether it opened.
const TRY_SOCKET: &str = r##"
    const done = arguments[arguments.length - 1];
    const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + arguments[0]);
    let opened = false;
    ws.onopen = () => { opened = true; ws.close(); };
    ws.onclose = (e) => done({ opened: opened, code: e.code });
"##;

async fn sign_out(b: &Browser) {
    b.click_on("form[action='/logout'] button").await.unwrap();
    b.find("input[name=password]").await.unwrap();
}

async fn sign_in(b: &Browser, base: &str, login: &str) {
    b.sign_in(base, login, PASSWORD).await.unwrap();
    b.wait_text("Sign out", Duration::from_secs(30)).await.unwrap();
}

/// ACCEPTANCE (issue 12, consoles): on the qemu backend, the serial console page shows the
/// test image's uuid line and the guest answers what is typed into it; the VNC page draws
/// the guest's screen; the owner has both under /machines; another tenant gets 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_browser_consoles_show_a_real_guest() {
    let env = Env::with(Options::new(Backend::Sqlite).web_https(), &[], None).await;
    env.cloud.web_account("opal", true).await.unwrap();
    let tina = env.cloud.web_account("tina", false).await.unwrap();
    env.cloud.web_account("tom", false).await.unwrap();
    let (vm, j) = env.create(json!({"alias": "webcon", "owner_uuid": tina["uuid"]})).await;
    assert_eq!(j["execution"], "succeeded", "{j}");
    env.wait_boots(&vm, 1).await;
    let base = env.cloud.web_url().unwrap();
    let b = Browser::start("web_consoles_qemu", 1280).await.unwrap();

    // The operator's serial console: the recent output first (the boot's uuid line).
    sign_in(&b, &base, "opal").await;
    b.goto(&format!("{base}/vms/{vm}/serial")).await.unwrap();
    assert_eq!(b.title().await.unwrap(), "Serial console: webcon · Nereid");
    b.wait_terminal(&format!("nereid-test: uuid={vm}"), Duration::from_secs(60)).await.unwrap();
    b.wait_text("Connected", Duration::from_secs(30)).await.unwrap();
    b.screenshot("01-operator-serial").await.unwrap();

    // Typed into the terminal (real key events on xterm's input), answered by the guest's shell.
    let token = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let input = b.find(".xterm-helper-textarea").await.unwrap();
    b.send_keys(&input, &format!("echo web-$((6 * 7))-{token}\u{E007}")).await.unwrap();
    b.wait_terminal(&format!("web-42-{token}"), Duration::from_secs(60)).await.unwrap();
    let screen = b.find(".xterm-rows").await.unwrap();
    let shown = b.text(&screen).await.unwrap();
    assert!(shown.contains(&format!("web-42-{token}")), "the answer is on the terminal's screen: {shown}");
    b.screenshot("02-operator-serial-typed").await.unwrap();

    // The VNC page: noVNC connects and draws the guest's screen.
    b.goto(&format!("{base}/vms/{vm}/vnc")).await.unwrap();
    assert_eq!(b.title().await.unwrap(), "Graphical console: webcon · Nereid");
    b.wait_text("Connected", Duration::from_secs(60)).await.unwrap();
    let px = b.wait_vnc_drawn(Duration::from_secs(60)).await.unwrap();
    assert!(px["width"].as_u64().unwrap() >= 640 && px["height"].as_u64().unwrap() >= 400, "the guest's screen size: {px}");
    b.screenshot("03-operator-vnc").await.unwrap();
    let cad = b.find("#vnc-cad").await.unwrap();
    assert_eq!(b.attr(&cad, "disabled").await.unwrap(), None, "Ctrl-Alt-Del is offered once connected");
    sign_out(&b).await;

    // The owner: the same consoles under /machines.
    sign_in(&b, &base, "tina").await;
    b.goto(&format!("{base}/machines/{vm}/serial")).await.unwrap();
    b.wait_terminal(&format!("nereid-test: uuid={vm}"), Duration::from_secs(60)).await.unwrap();
    b.screenshot("04-owner-serial").await.unwrap();
    b.goto(&format!("{base}/machines/{vm}/vnc")).await.unwrap();
    b.wait_text("Connected", Duration::from_secs(60)).await.unwrap();
    b.wait_vnc_drawn(Duration::from_secs(60)).await.unwrap();
    b.screenshot("05-owner-vnc").await.unwrap();
    b.goto(&format!("{base}/vms/{vm}/serial")).await.unwrap();
    assert_eq!(b.title().await.unwrap(), "Not allowed · Nereid", "the operator's console pages are for operators");
    sign_out(&b).await;

    // Another tenant: 404 with nothing of the VM, page and WebSocket alike.
    sign_in(&b, &base, "tom").await;
    for path in [format!("/machines/{vm}/serial"), format!("/machines/{vm}/vnc"), format!("/machines/{vm}/serial/log")] {
        b.goto(&format!("{base}{path}")).await.unwrap();
        assert_eq!(b.title().await.unwrap(), "Not found · Nereid", "{path}");
        let body = b.text(&b.find("main").await.unwrap()).await.unwrap();
        assert!(!body.contains("webcon") && !body.contains(&vm), "{path} shows nothing of the VM: {body}");
    }
    b.screenshot("06-other-tenant-404").await.unwrap();
    let r = b.execute_async(TRY_SOCKET, vec![json!(format!("/machines/{vm}/serial/ws"))]).await.unwrap();
    assert_eq!(r["opened"], false, "another tenant's WebSocket is refused before the upgrade: {r}");
    sign_out(&b).await;

    // A stopped VM: the VNC page says so (no canvas); the serial page still shows the log.
    assert_eq!(env.act(&vm, "stop", json!({})).await["execution"], "succeeded");
    sign_in(&b, &base, "opal").await;
    b.goto(&format!("{base}/vms/{vm}/vnc")).await.unwrap();
    let text = b.wait_text("VmNotRunning", Duration::from_secs(30)).await.unwrap();
    assert!(text.contains("is stopped"), "{text}");
    assert!(b.find_all("#vnc-screen").await.unwrap().is_empty(), "no screen for a VM that does not run");
    b.screenshot("07-stopped-vnc").await.unwrap();
    b.goto(&format!("{base}/vms/{vm}/serial")).await.unwrap();
    b.wait_terminal("nereid-test: powering off", Duration::from_secs(60)).await.unwrap();
    b.screenshot("08-stopped-serial").await.unwrap();
}
