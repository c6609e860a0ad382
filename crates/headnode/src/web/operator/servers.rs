//! Servers (CNAPI): `/servers` lists every compute node with its status, capacity,
//! reservation, VM count and problems; `/servers/{uuid}` shows one with its sysinfo, its
//! VMs (records, and what the server itself reports), temperatures, traits and problems, with forms for
//! what ServerUpdate changes (reserved, reservoir, ratios, traits, notes).
//!
//! Everything comes from the operator API: `GET /servers?extras=sysinfo`,
//! `GET /servers/{uuid}?extras=vms`, `GET /servers/{uuid}/trust`, `GET /vms?state=active`,
//! and changes go through `POST /servers/{uuid}` (ServerUpdate).

use std::collections::HashMap;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{Markup, html};
use nereid_types::{ApiError, FieldError};
use serde_json::{Map, Value, json};

use crate::web::Web;
use crate::web::api::enc;
use crate::web::form::{Fields, PostForm, invalid};
use crate::web::page::{self, api_error, badge, csrf_field, error_box, facts, field, json_block, table};
use crate::web::session::{Operator, Session};

pub mod capacity;

pub fn routes() -> Router<Web> {
    Router::new()
        .route("/servers", get(list))
        .route("/servers/{uuid}", get(show))
        .route("/servers/{uuid}/settings", post(update_settings))
        .route("/servers/{uuid}/traits", post(update_traits))
}

/// Every active VM record (all pages of `GET /vms?state=active`).
pub(crate) async fn active_vms(web: &Web) -> Result<Vec<Value>, ApiError> {
    const PAGE: usize = 1000;
    let mut out = Vec::new();
    loop {
        let page = web.admin_get(&format!("/vms?state=active&limit={PAGE}&offset={}", out.len())).await?;
        let items = page.as_array().cloned().unwrap_or_default();
        let n = items.len();
        out.extend(items);
        if n < PAGE {
            return Ok(out);
        }
    }
}

/// Every server (with sysinfo) and the active VM records on each, by server UUID.
pub(crate) async fn overview(web: &Web) -> Result<(Vec<Value>, HashMap<String, Vec<Value>>), ApiError> {
    let servers = web.admin_get("/servers?extras=sysinfo").await?.as_array().cloned().unwrap_or_default();
    let mut by_server: HashMap<String, Vec<Value>> = HashMap::new();
    for vm in active_vms(web).await? {
        by_server.entry(field(&vm, "server_uuid")).or_default().push(vm);
    }
    Ok((servers, by_server))
}

/// The capacity of one server of an [`overview`].
pub(crate) fn capacity_of(server: &Value, by_server: &HashMap<String, Vec<Value>>) -> capacity::Capacity {
    let vms: Vec<&Value> = by_server.get(&field(server, "uuid")).map(|v| v.iter().collect()).unwrap_or_default();
    capacity::of(server, &vms)
}

/// A server's status: the badge, and why when it is not running.
pub(crate) fn status(server: &Value) -> Markup {
    let reason = field(server, "status_reason");
    html! {
        (badge(&field(server, "status")))
        @if !reason.is_empty() { " " span.hint { (reason) } }
    }
}

/// What the server says is wrong with it (its last heartbeat's problems).
pub(crate) fn problems(server: &Value) -> Markup {
    let list = server.get("problems").and_then(Value::as_array).cloned().unwrap_or_default();
    html! {
        @if list.is_empty() {
            "None"
        } @else {
            ul.problems {
                @for p in &list {
                    li {
                        strong { (field(p, "kind")) }
                        @let tag = field(p, "nic_tag");
                        @if !tag.is_empty() { " (nic tag " code { (tag) } ")" }
                        ": " (field(p, "message"))
                    }
                }
            }
        }
    }
}

/// One temperature a server reports.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Reading {
    /// What measured it: `Package id 0 (coretemp)`, or a sysinfo key.
    pub name: String,
    /// Degrees Celsius, when known as a number.
    pub celsius: Option<f64>,
    /// As shown: `45.0 °C`, or sysinfo's own text.
    pub value: String,
    /// When it was read (its heartbeat's time), if known.
    pub at: String,
}

/// The server's temperatures: its last heartbeat's hardware readings (`temperatures`),
/// else any sysinfo entry that is one; empty when it reports none.
pub(crate) fn temperatures(server: &Value) -> Vec<Reading> {
    let reported: Vec<Reading> = server
        .get("temperatures")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(|t| {
                    let celsius = t.get("celsius")?.as_f64()?;
                    Some(Reading {
                        name: format!("{} ({})", field(t, "label"), field(t, "sensor")),
                        celsius: Some(celsius),
                        value: format!("{celsius:.1} °C"),
                        at: field(t, "at"),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    if !reported.is_empty() {
        return reported;
    }
    server
        .get("sysinfo")
        .and_then(Value::as_object)
        .map(|si| {
            si.iter()
                .filter(|(k, _)| k.to_ascii_lowercase().contains("temp"))
                .map(|(k, v)| Reading { name: k.clone(), celsius: None, value: page::text(v), at: String::new() })
                .collect()
        })
        .unwrap_or_default()
}

/// The dashboard's cell: the hottest reading with its label (and how many there are), or
/// every entry when none is a number; "not reported" without any.
pub(crate) fn hottest_temperature(server: &Value) -> Markup {
    let temps = temperatures(server);
    let hottest =
        temps.iter().filter(|r| r.celsius.is_some()).max_by(|a, b| a.celsius.partial_cmp(&b.celsius).unwrap_or(std::cmp::Ordering::Equal));
    html! {
        @if temps.is_empty() {
            span.hint { "not reported" }
        } @else if let Some(r) = hottest {
            (r.name) ": " strong { (r.value) }
            @if temps.len() > 1 { " " span.hint { "(hottest of " (temps.len()) ")" } }
        } @else {
            @for r in &temps { (r.name) ": " (r.value) br; }
        }
    }
}

/// The server page's list: every reading, and when they were read.
fn all_temperatures(server: &Value) -> Markup {
    let temps = temperatures(server);
    let at = temps.iter().map(|r| r.at.as_str()).find(|a| !a.is_empty());
    html! {
        @if temps.is_empty() {
            span.hint { "not reported" }
        } @else {
            ul.temperatures {
                @for r in &temps { li { (r.name) ": " (r.value) } }
            }
            @if let Some(at) = at { span.hint { "read at " (at) } }
        }
    }
}

/// How placement treats the server: reserved, reservoir, headnode.
fn flags(server: &Value) -> Markup {
    let on = |k: &str| server.get(k).and_then(Value::as_bool).unwrap_or(false);
    let mut words = Vec::new();
    if on("reserved") {
        words.push("reserved");
    }
    if on("reservoir") {
        words.push("reservoir");
    }
    if on("headnode") {
        words.push("headnode");
    }
    if !on("setup") {
        words.push("not set up");
    }
    html! { @if words.is_empty() { "no" } @else { (words.join(", ")) } }
}

/// A link to a server by its host name, with its UUID.
pub(crate) fn server_link(server: &Value) -> Markup {
    let uuid = field(server, "uuid");
    let host = field(server, "hostname");
    html! {
        a href={ "/servers/" (uuid) } { @if host.is_empty() { (uuid) } @else { (host) } }
        br; span.hint.uuid { (uuid) }
    }
}

/// The list of servers.
pub fn render_list(servers: &[Value], by_server: &HashMap<String, Vec<Value>>) -> Markup {
    let rows = servers
        .iter()
        .map(|s| {
            let c = capacity_of(s, by_server);
            html! {
                tr {
                    td { (server_link(s)) }
                    td { (status(s)) }
                    td { (capacity::render(&c)) }
                    td { (flags(s)) }
                    td { (c.vms) }
                    td { (problems(s)) }
                }
            }
        })
        .collect();
    html! {
        p.hint { "Capacity is what placement may hand out (RAM less the reservation, times the overprovision ratios) against the active VM records on each server." }
        (table(&format!("{} server(s)", servers.len()), &["Server", "Status", "Capacity", "Reserved", "VMs", "Problems"], rows))
    }
}

async fn list(State(web): State<Web>, Operator(s): Operator) -> Response {
    match overview(&web).await {
        Ok((servers, by_server)) => page::page(&s, "Servers", render_list(&servers, &by_server)),
        Err(e) => api_error(Some(&s), "Servers", &e),
    }
}

/// Which form a failed post came from, with what was typed and what was wrong.
pub struct Edit {
    pub form: &'static str,
    pub fields: Fields,
    pub error: ApiError,
}

/// Everything one server's page shows.
pub struct ServerPage {
    pub server: Value,
    /// Active VM records on it.
    pub vms: Vec<Value>,
    /// `GET /servers/{uuid}/trust`, if it answered.
    pub trust: Option<Value>,
}

async fn load(web: &Web, uuid: &str) -> Result<ServerPage, ApiError> {
    let id = enc(uuid);
    let server = web.admin_get(&format!("/servers/{id}?extras=vms")).await?;
    let vms = web.admin_get(&format!("/vms?state=active&server_uuid={id}&limit=1000")).await?.as_array().cloned().unwrap_or_default();
    let trust = web.admin_get(&format!("/servers/{id}/trust")).await.ok();
    Ok(ServerPage { server, vms, trust })
}

fn title_of(server: &Value) -> String {
    let host = field(server, "hostname");
    format!("Server {}", if host.is_empty() { field(server, "uuid") } else { host })
}

async fn show(State(web): State<Web>, Operator(s): Operator, Path(uuid): Path<String>) -> Response {
    match load(&web, &uuid).await {
        Ok(p) => page::page(&s, &title_of(&p.server), render_server(&s, &p, None)),
        Err(e) => api_error(Some(&s), "Server", &e),
    }
}

/// The sysinfo most operators look for first, then all of it.
fn sysinfo_facts(server: &Value) -> Markup {
    let empty = Map::new();
    let si = server.get("sysinfo").and_then(Value::as_object).unwrap_or(&empty);
    let keys = [
        "Hostname",
        "UUID",
        "Serial Number",
        "System Type",
        "Live Image",
        "Boot Time",
        "CPU Total Cores",
        "CPU Online Count",
        "MiB of Memory",
        "Zpool Size in GiB",
        "Admin IP",
        "Nereid Backend",
        "Bhyve Capable",
    ];
    let rows: Vec<(&str, Markup)> = keys.iter().filter_map(|k| si.get(*k).map(|v| (*k, html! { (page::text(v)) }))).collect();
    let nics = si.get("Network Interfaces").and_then(Value::as_object).cloned().unwrap_or_default();
    html! {
        (facts(&rows))
        @if !nics.is_empty() {
            (table("Network interfaces", &["Name", "MAC", "Link", "Nic tags"], nics.iter().map(|(name, n)| html! {
                tr {
                    td { (name) }
                    td { (field(n, "MAC Address")) }
                    td { (field(n, "Link Status")) }
                    td { (n.get("NIC Names").and_then(Value::as_array).map(|t| t.iter().map(page::text).collect::<Vec<_>>().join(", ")).unwrap_or_default()) }
                }
            }).collect()))
        }
        details {
            summary { "All sysinfo" }
            (json_block(&Value::Object(si.clone())))
        }
    }
}

/// The VMs on the server: its active records, with what the server reports of each, then
/// what it reports without a record.
fn vms_section(server: &Value, vms: &[Value]) -> Markup {
    let reported = server.get("vms").and_then(Value::as_object).cloned().unwrap_or_default();
    let rows = vms
        .iter()
        .map(|vm| {
            let uuid = field(vm, "uuid");
            let rep = reported.get(&uuid).map(|r| field(r, "state"));
            html! {
                tr {
                    td { a href={ "/vms/" (uuid) } { (uuid) } }
                    td { (field(vm, "alias")) }
                    td { (badge(&field(vm, "state"))) }
                    td { (capacity::size(capacity::vm_ram_mib(vm) as f64)) }
                    td { (field(vm, "vcpus")) }
                    td { (capacity::size(capacity::vm_disk_mib(vm) as f64)) }
                    td { (field(vm, "owner_uuid")) }
                    td { @match rep { Some(st) => (badge(&st)), None => span.hint { "not reported" } } }
                }
            }
        })
        .collect();
    let known: std::collections::HashSet<String> = vms.iter().map(|v| field(v, "uuid")).collect();
    let stray: Vec<Markup> = reported
        .iter()
        .filter(|(id, _)| !known.contains(*id))
        .map(|(id, r)| {
            html! {
                tr {
                    td { a href={ "/vms/" (id) } { (id) } }
                    td { (badge(&field(r, "state"))) }
                    td { (r.get("ram").and_then(Value::as_u64).map(|m| capacity::size(m as f64)).unwrap_or_default()) }
                    td { (field(r, "owner_uuid")) }
                }
            }
        })
        .collect();
    html! {
        h2 #vms { "VMs" }
        (table(&format!("{} active VM record(s) on this server", vms.len()), &["VM", "Alias", "State", "RAM", "vCPUs", "Disk", "Owner", "Server reports"], rows))
        @if !stray.is_empty() {
            (table("Reported by the server without an active record", &["VM", "State", "RAM", "Owner"], stray))
        }
    }
}

/// A form's value: what was typed when this form failed, else the server's.
fn typed<'a>(edit: Option<&'a Edit>, form: &str, name: &str) -> Option<&'a str> {
    edit.filter(|e| e.form == form).map(|e| e.fields.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).unwrap_or(""))
}

fn settings_form(s: &Session, server: &Value, edit: Option<&Edit>) -> Markup {
    let uuid = field(server, "uuid");
    let failed = edit.filter(|e| e.form == "settings");
    let value = |name: &str, current: String| typed(edit, "settings", name).map(str::to_string).unwrap_or(current);
    let checked = |name: &str| match failed {
        Some(e) => e.fields.checked(name),
        None => server.get(name).and_then(Value::as_bool).unwrap_or(false),
    };
    let ratio = |k: &str| server.get("overprovision_ratios").and_then(|r| r.get(k)).map(page::text).unwrap_or_default();
    html! {
        h2 #settings { "Placement settings" }
        @if let Some(e) = failed { (error_box(&e.error)) }
        form.stack method="post" action={ "/servers/" (uuid) "/settings" } {
            (csrf_field(s))
            label for="reserved" {
                input #reserved type="checkbox" name="reserved" value="true" checked[checked("reserved")];
                " Reserved: keep the server out of placement"
            }
            label for="reservoir" {
                input #reservoir type="checkbox" name="reservoir" value="true" checked[checked("reservoir")];
                " Reservoir: use it only when nothing else fits"
            }
            label for="reservation_ratio" { "Reservation ratio (share of RAM held back for the host, 0 to below 1)" }
            input #reservation_ratio type="text" inputmode="decimal" name="reservation_ratio" value=(value("reservation_ratio", field(server, "reservation_ratio")));
            fieldset {
                legend { "Overprovision ratios" }
                @for (k, label) in [("cpu", "CPU"), ("ram", "RAM"), ("disk", "Disk")] {
                    @let name = format!("ratio_{k}");
                    label for=(name) { (label) }
                    " "
                    input id=(name) type="text" inputmode="decimal" size="6" name=(name) value=(value(&name, ratio(k)));
                    " "
                }
            }
            label for="rack_identifier" { "Rack" }
            input #rack_identifier type="text" name="rack_identifier" value=(value("rack_identifier", field(server, "rack_identifier")));
            label for="comments" { "Comments" }
            textarea #comments name="comments" rows="3" { (value("comments", field(server, "comments"))) }
            div { button type="submit" { "Save settings" } }
        }
    }
}

fn traits_form(s: &Session, server: &Value, edit: Option<&Edit>) -> Markup {
    let uuid = field(server, "uuid");
    let failed = edit.filter(|e| e.form == "traits");
    let current = server.get("traits").filter(|t| t.as_object().is_some_and(|o| !o.is_empty()));
    let text = typed(edit, "traits", "traits")
        .map(str::to_string)
        .unwrap_or_else(|| current.map(|t| serde_json::to_string_pretty(t).unwrap_or_default()).unwrap_or_default());
    html! {
        h2 #traits { "Traits" }
        @if let Some(e) = failed { (error_box(&e.error)) }
        form.stack method="post" action={ "/servers/" (uuid) "/traits" } {
            (csrf_field(s))
            label for="traits-json" { "Traits (a JSON object; placement matches VMs' and packages' traits against it; empty for none)" }
            textarea #traits-json name="traits" rows="4" spellcheck="false" { (text) }
            div { button type="submit" { "Save traits" } }
        }
    }
}

/// One server's page (`edit`: a form that failed, shown again with what was typed).
pub fn render_server(s: &Session, p: &ServerPage, edit: Option<&Edit>) -> Markup {
    let server = &p.server;
    let c = capacity::of(server, &p.vms.iter().collect::<Vec<_>>());
    let traits = server.get("traits").filter(|t| t.as_object().is_some_and(|o| !o.is_empty()));
    html! {
        @if let Some(e) = edit {
            div.error role="alert" {
                p { "Nothing was saved: " a href={ "#" (e.form) } { "the " (e.form) " form" } " says what to fix." }
            }
        }
        (facts(&[
            ("UUID", html! { (field(server, "uuid")) }),
            ("Host name", html! { (field(server, "hostname")) }),
            ("Status", status(server)),
            ("Last heartbeat", html! { (field(server, "last_heartbeat")) }),
            ("Capacity", capacity::render(&c)),
            ("Reserved", flags(server)),
            ("Traits", html! { @match traits { Some(t) => code { (t.to_string()) }, None => "none" } }),
            ("Agent trust", html! { @match &p.trust { Some(t) => (badge(&field(t, "state"))), None => "unknown" } }),
            ("Temperatures", all_temperatures(server)),
            ("Problems", problems(server)),
        ]))
        (vms_section(server, &p.vms))
        (settings_form(s, server, edit))
        (traits_form(s, server, edit))
        h2 #sysinfo { "Sysinfo" }
        (sysinfo_facts(server))
    }
}

fn ratio(f: &Fields, name: &str, errors: &mut Vec<FieldError>) -> Option<f64> {
    let v = f.get(name)?;
    match v.parse::<f64>() {
        Ok(x) => Some(x),
        Err(_) => {
            errors.push(FieldError::invalid(name, format!("{v:?} is not a number")));
            None
        }
    }
}

/// The ServerUpdate body of the settings form.
pub fn settings_body(f: &Fields) -> Result<Value, ApiError> {
    let mut errors = Vec::new();
    let mut body = json!({"reserved": f.checked("reserved"), "reservoir": f.checked("reservoir")});
    if let Some(r) = ratio(f, "reservation_ratio", &mut errors) {
        body["reservation_ratio"] = json!(r);
    }
    let mut ratios = Map::new();
    for k in ["cpu", "ram", "disk"] {
        if let Some(r) = ratio(f, &format!("ratio_{k}"), &mut errors) {
            ratios.insert(k.into(), json!(r));
        }
    }
    if !ratios.is_empty() {
        body["overprovision_ratios"] = Value::Object(ratios);
    }
    for k in ["rack_identifier", "comments"] {
        body[k] = f.get(k).map(|v| json!(v)).unwrap_or(Value::Null);
    }
    if errors.is_empty() { Ok(body) } else { Err(invalid(errors)) }
}

/// The ServerUpdate body of the traits form.
pub fn traits_body(f: &Fields) -> Result<Value, ApiError> {
    let Some(text) = f.get("traits") else { return Ok(json!({"traits": {}})) };
    match serde_json::from_str::<Value>(text) {
        Ok(v @ Value::Object(_)) => Ok(json!({"traits": v})),
        Ok(_) => Err(invalid(vec![FieldError::invalid("traits", "must be a JSON object, such as {\"ssd\": true}")])),
        Err(e) => {
            Err(invalid(vec![FieldError::invalid("traits", format!("is not JSON ({e}); write an object such as {{\"ssd\": true}}"))]))
        }
    }
}

async fn update(web: Web, f: PostForm, uuid: String, form: &'static str, body: Result<Value, ApiError>) -> Response {
    let s = &f.session;
    let result = match body {
        Ok(b) => web.admin(Method::POST, &format!("/servers/{}", enc(&uuid)), Some(&b)).await.map(|_| ()),
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => Redirect::to(&format!("/servers/{}#{form}", enc(&uuid))).into_response(),
        Err(error) => match load(&web, &uuid).await {
            Ok(p) => {
                let status = StatusCode::from_u16(error.status).unwrap_or(StatusCode::CONFLICT);
                let edit = Edit { form, fields: f.fields.clone(), error };
                page::respond(status, Some(s), &title_of(&p.server), render_server(s, &p, Some(&edit)))
            }
            Err(e) => api_error(Some(s), "Server", &e),
        },
    }
}

async fn update_settings(State(web): State<Web>, Path(uuid): Path<String>, f: PostForm) -> Response {
    let body = settings_body(&f.fields);
    update(web, f, uuid, "settings", body).await
}

async fn update_traits(State(web): State<Web>, Path(uuid): Path<String>, f: PostForm) -> Response {
    let body = traits_body(&f.fields);
    update(web, f, uuid, "traits", body).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_become_a_server_update_and_bad_numbers_are_named() {
        let f = Fields::parse(b"reserved=true&reservation_ratio=0.2&ratio_cpu=4&ratio_ram=1.5&ratio_disk=&rack_identifier=r1&comments=");
        let b = settings_body(&f).unwrap();
        assert_eq!(
            b,
            json!({"reserved": true, "reservoir": false, "reservation_ratio": 0.2, "overprovision_ratios": {"cpu": 4.0, "ram": 1.5}, "rack_identifier": "r1", "comments": null})
        );
        let e = settings_body(&Fields::parse(b"reservation_ratio=lots")).unwrap_err();
        assert_eq!((e.status, e.errors[0].field.as_str()), (409, "reservation_ratio"));
    }

    #[test]
    fn traits_must_be_a_json_object() {
        assert_eq!(traits_body(&Fields::parse(b"traits=")).unwrap(), json!({"traits": {}}));
        assert_eq!(traits_body(&Fields::parse(b"traits=%7B%22ssd%22%3Atrue%7D")).unwrap(), json!({"traits": {"ssd": true}}));
        assert_eq!(traits_body(&Fields::parse(b"traits=%5B1%5D")).unwrap_err().errors[0].field, "traits");
        assert_eq!(traits_body(&Fields::parse(b"traits=%7Bssd")).unwrap_err().errors[0].field, "traits");
    }

    #[test]
    fn the_list_shows_status_capacity_and_problems() {
        let servers = vec![
            json!({"uuid": "u1", "hostname": "cn1", "status": "unknown", "status_reason": "no heartbeat for 30 s", "ram": 2048,
            "reservation_ratio": 0.0, "reserved": true, "setup": true, "problems": [{"kind": "nic_tag_mtu", "nic_tag": "external", "message": "MTU <9000>"}]}),
        ];
        let by = HashMap::from([("u1".to_string(), vec![json!({"ram": 1024})])]);
        let out = render_list(&servers, &by).into_string();
        assert!(out.contains("href=\"/servers/u1\"") && out.contains("cn1") && out.contains("no heartbeat for 30 s"), "{out}");
        assert!(out.contains("1.0 GiB used, 1.0 GiB free of 2.0 GiB") && out.contains("reserved"), "{out}");
        assert!(out.contains("MTU &lt;9000&gt;") && out.contains("nic_tag_mtu"), "{out}");
    }

    #[test]
    fn the_server_page_shows_every_temperature_or_that_none_is_reported() {
        let s = Session {
            account: serde_json::from_value(json!({"uuid": "00000000-0000-0000-0000-000000000001", "login": "op", "email": "op@x.example",
                "operator": true, "created": "2026-01-01T00:00:00Z", "updated": "2026-01-01T00:00:00Z"}))
            .unwrap(),
            csrf: "t".into(),
        };
        let server = json!({"uuid": "u1", "hostname": "cn1", "status": "running", "ram": 2048, "problems": [], "temperatures": [
            {"sensor": "coretemp", "label": "Package id 0", "celsius": 45.0, "at": "2026-01-01T00:00:05.000Z"},
            {"sensor": "nvme", "label": "Composite", "celsius": 38.83, "at": "2026-01-01T00:00:05.000Z"}]});
        let out = render_server(&s, &ServerPage { server, vms: vec![], trust: None }, None).into_string();
        for want in ["Package id 0 (coretemp): 45.0 °C", "Composite (nvme): 38.8 °C", "read at 2026-01-01T00:00:05.000Z"] {
            assert!(out.contains(want), "{want} in {out}");
        }
        let server = json!({"uuid": "u2", "hostname": "cn2", "status": "running", "ram": 2048, "problems": [], "temperatures": []});
        let out = render_server(&s, &ServerPage { server, vms: vec![], trust: None }, None).into_string();
        assert!(out.contains("not reported"), "{out}");
    }
}
