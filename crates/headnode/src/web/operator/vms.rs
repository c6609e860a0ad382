//! The operator's VMs (VMAPI in the browser): the list with its filters, creating a VM
//! from image + package + network, and one VM's page with its actions, snapshots, tags,
//! metadata, NICs and jobs.
//!
//! ```text
//!   GET  /vms                      ListVms's filters as a form, a page of VMs
//!   GET  /vms/new, POST /vms/new   CreateVm             (create.rs)
//!   GET  /vms/{uuid}               GetVm + NICs + jobs  (show.rs)
//!   GET  /vms/{uuid}/status        the facts, for the live region
//!   GET  /vms/{uuid}/jobs          the jobs, for the live region
//!   GET  /vms/{uuid}/snapshots|tags|customer_metadata|nics   their tables, live too
//!   POST /vms/{uuid}/<action>      start, stop, reboot, resize, delete, snapshots,
//!                                  tags, metadata, NIC flags (actions.rs)
//! ```
//!
//! Every read and change is an operator API request ([`Web::admin`]); nothing here knows
//! the store.

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use axum::routing::get;
use maud::{Markup, html};
use serde_json::Value;
use uuid::Uuid;

use crate::web::Web;
use crate::web::form::Fields;
use crate::web::page::{self, badge, field, mib};
use crate::web::session::Operator;

mod actions;
mod create;
mod show;

/// VMs on one page of the list.
const PAGE: u64 = 100;

pub fn routes() -> Router<Web> {
    Router::new()
        .route("/vms", get(list))
        .route("/vms/new", get(create::form).post(create::submit))
        .route("/vms/{uuid}", get(show::vm_page))
        .route("/vms/{uuid}/status", get(show::status_fragment))
        .route("/vms/{uuid}/jobs", get(show::jobs_fragment))
        .merge(show::PARTS.iter().fold(Router::new(), |r, part| {
            r.route(
                &format!("/vms/{{uuid}}/{part}"),
                get(move |State(web): State<Web>, Operator(s): Operator, Path(uuid): Path<String>| show::part_fragment(web, part, s, uuid)),
            )
        }))
        .merge(actions::routes())
}

/// A VM's UUID from the address, or `None` (the page then answers 404).
fn parse_uuid(s: &str) -> Option<Uuid> {
    Uuid::parse_str(s).ok()
}

/// The filters of the list page: (form field = ListVms parameter, label).
const FILTERS: &[(&str, &str)] = &[
    ("alias", "Alias starts with"),
    ("owner_uuid", "Owner UUID"),
    ("server_uuid", "Server UUID"),
    ("image_uuid", "Image UUID"),
    ("billing_id", "Package UUID"),
];

/// The state filter's choices: "" is ListVms's `active` (AdminUI's default), `any` none.
const STATES: &[(&str, &str)] = &[
    ("", "active (not destroyed or failed)"),
    ("any", "any"),
    ("running", "running"),
    ("stopped", "stopped"),
    ("provisioning", "provisioning"),
    ("failed", "failed"),
    ("destroyed", "destroyed"),
];

/// The ListVms query for the list page's form fields.
fn list_query(f: &Fields, offset: u64) -> String {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    for (k, _) in FILTERS {
        if let Some(v) = f.get(k) {
            q.append_pair(k, v);
        }
    }
    if let Some(b) = f.get("brand") {
        q.append_pair("brand", b);
    }
    match f.get("state") {
        None => {
            q.append_pair("state", "active");
        }
        Some("any") => {}
        Some(s) => {
            q.append_pair("state", s);
        }
    }
    q.append_pair("limit", &PAGE.to_string());
    q.append_pair("offset", &offset.to_string());
    q.finish()
}

/// This list page's address with another offset (the filters kept).
fn page_link(f: &Fields, offset: u64) -> String {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in &f.0 {
        if k != "offset" && !v.trim().is_empty() {
            q.append_pair(k, v.trim());
        }
    }
    q.append_pair("offset", &offset.to_string());
    format!("/vms?{}", q.finish())
}

async fn list(State(web): State<Web>, Operator(s): Operator, RawQuery(raw): RawQuery) -> Response {
    let f = Fields::parse(raw.unwrap_or_default().as_bytes());
    let offset = f.number("offset").ok().flatten().unwrap_or(0);
    let reply = web.admin(axum::http::Method::GET, &format!("/vms?{}", list_query(&f, offset)), None).await;
    let (vms, total, error) = match reply {
        Ok(r) => {
            let total = r.header("x-joyent-resource-count").and_then(|t| t.parse::<u64>().ok());
            (r.body.as_array().cloned().unwrap_or_default(), total, None)
        }
        Err(e) => (Vec::new(), None, Some(e)),
    };
    let status = error.as_ref().map_or(axum::http::StatusCode::OK, |e| {
        axum::http::StatusCode::from_u16(e.status).unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR)
    });
    let body = html! {
        p.actions { a href="/vms/new" { "Create a VM" } }
        (filters_form(&f))
        @if let Some(e) = &error { (page::error_box(e)) }
        (vm_table(&vms))
        (pager(&f, offset, vms.len() as u64, total))
    };
    page::respond(status, Some(&s), "VMs", body)
}

/// The filters as a GET form (so a filtered list is a link one can share).
fn filters_form(f: &Fields) -> Markup {
    html! {
        form.filters method="get" action="/vms" role="search" aria-label="Filter VMs" {
            @for (k, label) in FILTERS {
                label for={ "f-" (k) } { (label) input id={ "f-" (k) } type="text" name=(k) value=(f.get(k).unwrap_or_default()); }
            }
            label for="f-state" {
                "State"
                select #f-state name="state" {
                    @for (v, label) in STATES {
                        option value=(v) selected[f.get("state").unwrap_or_default() == *v] { (label) }
                    }
                }
            }
            label for="f-brand" {
                "Brand"
                select #f-brand name="brand" {
                    @for b in ["", "bhyve", "kvm"] {
                        option value=(b) selected[f.get("brand").unwrap_or_default() == b] { (if b.is_empty() { "any" } else { b }) }
                    }
                }
            }
            button type="submit" { "Search" }
            a href="/vms" { "Clear" }
        }
    }
}

/// A VM's addresses, comma-separated.
pub fn ips(vm: &Value) -> String {
    vm.get("nics")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|n| n.get("ip").and_then(Value::as_str))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The VMs as a table.
pub fn vm_table(vms: &[Value]) -> Markup {
    let rows = vms
        .iter()
        .map(|vm| {
            let uuid = field(vm, "uuid");
            let owner = field(vm, "owner_uuid");
            let server = field(vm, "server_uuid");
            html! {
                tr {
                    td { (field(vm, "alias")) }
                    td { a href={ "/vms/" (uuid) } { (uuid) } }
                    td { (badge(&field(vm, "state"))) }
                    td { @if !owner.is_empty() { a href={ "/accounts/" (owner) } { (owner) } } }
                    td { @if !server.is_empty() { a href={ "/servers/" (server) } { (server) } } }
                    td { (vm.get("ram").and_then(Value::as_u64).map(mib).unwrap_or_default()) }
                    td { (ips(vm)) }
                }
            }
        })
        .collect();
    page::table("VMs", &["Alias", "UUID", "State", "Owner", "Server", "RAM", "IPs"], rows)
}

fn pager(f: &Fields, offset: u64, shown: u64, total: Option<u64>) -> Markup {
    let total = total.unwrap_or(offset + shown);
    html! {
        p.hint {
            @if shown == 0 { "No VM matches." } @else { "VMs " (offset + 1) "–" (offset + shown) " of " (total) "." }
            @if offset > 0 { " " a href=(page_link(f, offset.saturating_sub(PAGE))) { "Previous page" } }
            @if offset + shown < total { " " a href=(page_link(f, offset + PAGE)) { "Next page" } }
        }
    }
}

/// Options of a `select` from API objects: value = `uuid`, label from `label`.
fn options(items: &[Value], selected: Option<&str>, label: impl Fn(&Value) -> String) -> Markup {
    html! {
        @for it in items {
            @let id = field(it, "uuid");
            option value=(id) selected[selected == Some(id.as_str())] { (label(it)) }
        }
    }
}

/// A package as people choose it: name, version and sizes.
fn package_label(p: &Value) -> String {
    let ram = p.get("max_physical_memory").and_then(Value::as_u64).map(mib).unwrap_or_default();
    let quota = p.get("quota").and_then(Value::as_u64).map(mib).unwrap_or_default();
    format!("{} {} ({ram} RAM, {} vCPU, {quota} disk)", field(p, "name"), field(p, "version"), field(p, "vcpus"))
}
