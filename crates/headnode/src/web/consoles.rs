//! Consoles in the browser: a VM's serial console (xterm.js) and graphical console (noVNC),
//! for operators and for the VM's owner only.
//!
//! ```text
//!   operators        /vms/{uuid}/serial   /vms/{uuid}/vnc       (any VM: the operator API)
//!   the VM's owner   /machines/{id}/serial /machines/{id}/vnc   (CloudAPI decides: another
//!                                                                account's machine is 404)
//!   each page's      …/serial/ws  …/vnc/ws   WebSockets: session cookie, same Origin, the
//!                                            same ownership check, then app::consoles to the
//!                                            VM's agent and http::consoles::proxy both ways
//!                    …/serial/log            the whole console log as text (no JavaScript)
//! ```
//! Every refusal (signed out, not an operator, not the owner, another site's page opening
//! the WebSocket, a stopped VM's VNC, an unreachable server) is an HTTP error before the
//! upgrade. The pages' scripts are `serial.js` and `vnc.js` (files: the Content-Security-
//! Policy allows no inline script); the libraries come from `/assets/vendor/`.

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use maud::{Markup, html};
use nereid_types::ApiError;
use serde_json::Value;
use uuid::Uuid;

use super::session::{Operator, Session};
use super::{Web, form, page};
use crate::app::consoles::{AgentSocket, ConsoleKind};

const SERIAL_JS: &str = include_str!("../../web-assets/serial.js");
const VNC_JS: &str = include_str!("../../web-assets/vnc.js");

pub fn routes() -> Router<Web> {
    Router::new()
        .route("/assets/serial.js", get(|| async { script(SERIAL_JS) }))
        .route("/assets/vnc.js", get(|| async { script(VNC_JS) }))
        .route("/vms/{uuid}/serial", get(vm_serial))
        .route("/vms/{uuid}/serial/log", get(vm_serial_log))
        .route("/vms/{uuid}/serial/ws", get(vm_serial_ws))
        .route("/vms/{uuid}/vnc", get(vm_vnc))
        .route("/vms/{uuid}/vnc/ws", get(vm_vnc_ws))
        .route("/machines/{id}/serial", get(machine_serial))
        .route("/machines/{id}/serial/log", get(machine_serial_log))
        .route("/machines/{id}/serial/ws", get(machine_serial_ws))
        .route("/machines/{id}/vnc", get(machine_vnc))
        .route("/machines/{id}/vnc/ws", get(machine_vnc_ws))
}

fn script(body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

type Upgrade = Result<WebSocketUpgrade, WebSocketUpgradeRejection>;

async fn vm_serial(Operator(s): Operator, State(web): State<Web>, Path(uuid): Path<String>) -> Response {
    match Vm::for_operator(&web, &s, &uuid).await {
        Ok(vm) => serial_page(&s, &vm),
        Err(r) => r,
    }
}

async fn vm_serial_log(Operator(s): Operator, State(web): State<Web>, Path(uuid): Path<String>) -> Response {
    match Vm::for_operator(&web, &s, &uuid).await {
        Ok(vm) => serial_log(&web, &s, &vm).await,
        Err(r) => r,
    }
}

async fn vm_serial_ws(Operator(s): Operator, State(web): State<Web>, Path(uuid): Path<String>, h: HeaderMap, ws: Upgrade) -> Response {
    match Vm::for_operator(&web, &s, &uuid).await {
        Ok(vm) => socket(&web, &s, &vm, ConsoleKind::Serial, &h, ws).await,
        Err(r) => r,
    }
}

async fn vm_vnc(Operator(s): Operator, State(web): State<Web>, Path(uuid): Path<String>) -> Response {
    match Vm::for_operator(&web, &s, &uuid).await {
        Ok(vm) => vnc_page(&s, &vm),
        Err(r) => r,
    }
}

async fn vm_vnc_ws(Operator(s): Operator, State(web): State<Web>, Path(uuid): Path<String>, h: HeaderMap, ws: Upgrade) -> Response {
    match Vm::for_operator(&web, &s, &uuid).await {
        Ok(vm) => socket(&web, &s, &vm, ConsoleKind::Vnc, &h, ws).await,
        Err(r) => r,
    }
}

async fn machine_serial(s: Session, State(web): State<Web>, Path(id): Path<String>) -> Response {
    match Vm::for_owner(&web, &s, &id).await {
        Ok(vm) => serial_page(&s, &vm),
        Err(r) => r,
    }
}

async fn machine_serial_log(s: Session, State(web): State<Web>, Path(id): Path<String>) -> Response {
    match Vm::for_owner(&web, &s, &id).await {
        Ok(vm) => serial_log(&web, &s, &vm).await,
        Err(r) => r,
    }
}

async fn machine_serial_ws(s: Session, State(web): State<Web>, Path(id): Path<String>, h: HeaderMap, ws: Upgrade) -> Response {
    match Vm::for_owner(&web, &s, &id).await {
        Ok(vm) => socket(&web, &s, &vm, ConsoleKind::Serial, &h, ws).await,
        Err(r) => r,
    }
}

async fn machine_vnc(s: Session, State(web): State<Web>, Path(id): Path<String>) -> Response {
    match Vm::for_owner(&web, &s, &id).await {
        Ok(vm) => vnc_page(&s, &vm),
        Err(r) => r,
    }
}

async fn machine_vnc_ws(s: Session, State(web): State<Web>, Path(id): Path<String>, h: HeaderMap, ws: Upgrade) -> Response {
    match Vm::for_owner(&web, &s, &id).await {
        Ok(vm) => socket(&web, &s, &vm, ConsoleKind::Vnc, &h, ws).await,
        Err(r) => r,
    }
}

/// The VM a console is for, as the signed-in account may see it.
#[derive(Debug, Clone)]
struct Vm {
    uuid: Uuid,
    /// Its alias (name), else its uuid.
    name: String,
    state: String,
    /// Where its console pages are: `/vms/{uuid}` or `/machines/{id}`.
    base: String,
    /// Its own page.
    back: String,
}

impl Vm {
    /// Any VM, through the operator API.
    async fn for_operator(web: &Web, s: &Session, id: &str) -> Result<Vm, Response> {
        let Ok(uuid) = Uuid::parse_str(id) else { return Err(page::not_found(Some(s))) };
        let v = web.admin_get(&format!("/vms/{uuid}")).await.map_err(|e| refusal(s, &e))?;
        let base = format!("/vms/{uuid}");
        Ok(Vm::from_record(uuid, &v, "alias", base.clone(), base))
    }

    /// The signed-in account's own machine: CloudAPI answers as that account, so another
    /// account's machine is 404 with nothing of it in the page.
    async fn for_owner(web: &Web, s: &Session, id: &str) -> Result<Vm, Response> {
        let Ok(uuid) = Uuid::parse_str(id) else { return Err(page::not_found(Some(s))) };
        let m = web.cloud_get(&s.account, &format!("/my/machines/{uuid}")).await.map_err(|e| refusal(s, &e))?;
        let base = format!("/machines/{uuid}");
        Ok(Vm::from_record(uuid, &m, "name", base.clone(), base))
    }

    fn from_record(uuid: Uuid, v: &Value, name_key: &str, base: String, back: String) -> Vm {
        let name = Some(page::field(v, name_key)).filter(|n| !n.is_empty()).unwrap_or_else(|| uuid.to_string());
        Vm { uuid, name, state: page::field(v, "state"), base, back }
    }
}

/// An API's refusal as a page: a 404 is the plain "not found" page (no data at all).
fn refusal(s: &Session, e: &ApiError) -> Response {
    if e.status == 404 { page::not_found(Some(s)) } else { page::api_error(Some(s), "Console", e) }
}

/// Links between a VM's page and its consoles.
fn links(vm: &Vm) -> Markup {
    html! {
        nav.actions aria-label="Consoles" {
            a href=(vm.back) { "Back to " (vm.name) }
            " " (page::badge(&vm.state)) " "
            a href={ (vm.base) "/serial" } { "Serial console" }
            a href={ (vm.base) "/vnc" } { "Graphical console (VNC)" }
            a href={ (vm.base) "/serial/log" } { "Console log as text" }
        }
    }
}

fn serial_page(s: &Session, vm: &Vm) -> Response {
    if vm.state == "destroyed" {
        return page::message(StatusCode::NOT_FOUND, Some(s), "No console", &format!("VM {} is destroyed: it has no console.", vm.name));
    }
    let body = html! {
        (links(vm))
        link rel="stylesheet" href="/assets/vendor/@xterm/xterm/css/xterm.css";
        p.hint {
            "The recent output comes first, then what the guest prints now. What you type goes to the guest's first serial port (ttyS0, COM1); press Enter if no prompt shows."
        }
        p #console-status role="status" aria-live="polite" { "Connecting…" }
        section aria-label="Serial console" {
            div #terminal .console data-ws={ (vm.base) "/serial/ws" } data-vm-state=(vm.state) {}
        }
        noscript {
            p { "The serial console needs JavaScript. " a href={ (vm.base) "/serial/log" } { "Its log" } " is plain text." }
        }
        script src="/assets/vendor/@xterm/xterm/lib/xterm.js" defer {}
        script src="/assets/vendor/@xterm/addon-fit/lib/addon-fit.js" defer {}
        script src="/assets/serial.js" defer {}
    };
    page::page(s, &format!("Serial console: {}", vm.name), body)
}

fn vnc_page(s: &Session, vm: &Vm) -> Response {
    let title = format!("Graphical console: {}", vm.name);
    if vm.state != "running" {
        // The VNC server exists only while QEMU runs: say so instead of an empty screen.
        let body = html! {
            (links(vm))
            div.error role="alert" {
                p {
                    strong { "VmNotRunning" } ": VM " (vm.name) " is " (if vm.state.is_empty() { "not running" } else { vm.state.as_str() })
                    ": its graphical console exists only while it runs. Start it, then reload this page. The serial console keeps its log meanwhile."
                }
            }
        };
        return page::respond(StatusCode::CONFLICT, Some(s), &title, body);
    }
    let body = html! {
        (links(vm))
        div.actions {
            button #vnc-cad .secondary type="button" disabled { "Send Ctrl-Alt-Del" }
        }
        p #vnc-status role="status" aria-live="polite" { "Connecting…" }
        p.hint { "Click the screen to type into the guest." }
        section aria-label="Graphical console" {
            div #vnc-screen .console-screen data-ws={ (vm.base) "/vnc/ws" } {}
        }
        noscript { p { "The graphical console needs JavaScript." } }
        script type="module" src="/assets/vnc.js" {}
    };
    page::page(s, &title, body)
}

/// The whole serial console log (the last 1 MiB the guest printed), as text.
async fn serial_log(web: &Web, s: &Session, vm: &Vm) -> Response {
    let log = async {
        let t = web.app().console_target(vm.uuid).await?;
        web.app().console_log(&t).await
    };
    match log.await {
        Ok(bytes) => ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], String::from_utf8_lossy(&bytes).into_owned()).into_response(),
        Err(e) => page::api_error(Some(s), "Console log", &e),
    }
}

/// Refuses a WebSocket a page of another site opens with this console's cookie: browsers
/// always send the page's Origin with a WebSocket, and it must be this console's.
pub fn websocket_origin(headers: &HeaderMap) -> Result<(), &'static str> {
    if !headers.contains_key(header::ORIGIN) {
        return Err("a browser's WebSocket carries an Origin header, and this request has none");
    }
    form::same_origin(headers)
}

/// Opens the VM's console on its agent (refusals are HTTP errors), then upgrades and
/// pumps messages both ways as the operator API's console does.
async fn socket(web: &Web, s: &Session, vm: &Vm, kind: ConsoleKind, headers: &HeaderMap, ws: Upgrade) -> Response {
    if let Err(why) = websocket_origin(headers) {
        return page::message(StatusCode::FORBIDDEN, Some(s), "Refused", &format!("This console connection was refused: {why}."));
    }
    let Ok(ws) = ws else {
        return page::message(StatusCode::BAD_REQUEST, Some(s), "Not a WebSocket", "This address is the console page's WebSocket.");
    };
    let agent: Result<AgentSocket, ApiError> = async {
        let t = web.app().console_target(vm.uuid).await?;
        web.app().console_connect(&t, kind).await
    }
    .await;
    let agent = match agent {
        Ok(a) => a,
        Err(e) => return page::api_error(Some(s), "Console", &e),
    };
    let ws = if kind == ConsoleKind::Vnc { ws.protocols(["binary"]) } else { ws };
    ws.on_upgrade(move |client| crate::http::consoles::proxy(client, agent))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websockets_must_come_from_this_console() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "127.0.0.1:8090".parse().unwrap());
        assert!(websocket_origin(&h).is_err(), "no Origin: not a browser page of this console");
        h.insert(header::ORIGIN, "https://127.0.0.1:8090".parse().unwrap());
        assert!(websocket_origin(&h).is_ok());
        h.insert(header::ORIGIN, "https://evil.example".parse().unwrap());
        assert!(websocket_origin(&h).is_err());
    }

    #[test]
    fn a_console_page_names_the_vm_and_its_sockets() {
        let v = serde_json::json!({"alias": "web<1>", "state": "running"});
        let vm = Vm::from_record(Uuid::nil(), &v, "alias", "/vms/x".into(), "/vms/x".into());
        assert_eq!((vm.name.as_str(), vm.state.as_str()), ("web<1>", "running"));
        let out = links(&vm).into_string();
        assert!(out.contains("href=\"/vms/x/vnc\"") && out.contains("web&lt;1&gt;"), "{out}");
        let vm = Vm::from_record(Uuid::nil(), &serde_json::json!({}), "name", "/machines/x".into(), "/machines/x".into());
        assert_eq!(vm.name, Uuid::nil().to_string());
    }
}
