//! Networks (NAPI through the operator API): the list, one network with its facts and the
//! addresses in use (NAPI's `/networks/{uuid}/ips`), the create form; network pools
//! ([`pools`]) and NICs ([`nics`]) are linked from the networks page (the main navigation
//! has only Networks).

use std::collections::HashMap;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{Markup, html};
use nereid_types::ApiError;
use serde_json::{Map, Value, json};

use super::packages::{joined, labelled, uuid_list};
use crate::web::Web;
use crate::web::api::enc;
use crate::web::form::{Fields, PostForm, invalid};
use crate::web::page::{self, csrf_field, error_box, facts, field, json_block, post_button, table};
use crate::web::session::{Operator, Session};

mod nics;
mod pools;

pub fn routes() -> Router<Web> {
    Router::new()
        .route("/networks", get(list).post(create))
        .route("/networks/new", get(new_form))
        .route("/networks/{uuid}", get(show))
        .route("/networks/{uuid}/delete", post(delete))
        .merge(pools::routes())
        .merge(nics::routes())
}

/// Where a NIC or an address belongs, as a link to its page.
pub(crate) fn belongs_to(v: &Value) -> Markup {
    let uuid = field(v, "belongs_to_uuid");
    let kind = field(v, "belongs_to_type");
    html! {
        @match kind.as_str() {
            "zone" => { "VM " a href={ "/vms/" (enc(&uuid)) } { code { (uuid) } } }
            "server" => { "server " a href={ "/servers/" (enc(&uuid)) } { code { (uuid) } } }
            "" => {}
            other => { (other) " " code { (uuid) } }
        }
    }
}

/// The links between the networking pages.
pub(crate) fn subnav() -> Markup {
    html! {
        nav.actions aria-label="Networking" {
            a href="/networks" { "Networks" }
            a href="/network_pools" { "Network pools" }
            a href="/nics" { "NICs" }
            a href="/networks/new" { "Create a network" }
        }
    }
}

async fn list(State(web): State<Web>, Operator(s): Operator, Query(q): Query<HashMap<String, String>>) -> Response {
    let name = q.get("name").map(|v| v.trim().to_string()).unwrap_or_default();
    let path = if name.is_empty() { "/networks".to_string() } else { format!("/networks?name={}", enc(&name)) };
    page::list_or_error(&s, "Networks", web.admin_get(&path).await, |networks| list_page(&name, networks))
}

fn list_page(name: &str, networks: &[Value]) -> Markup {
    let rows = networks
        .iter()
        .map(|n| {
            let uuid = field(n, "uuid");
            html! {
                tr {
                    td { a href={ "/networks/" (enc(&uuid)) } { (field(n, "name")) } }
                    td { (field(n, "subnet")) }
                    td { (field(n, "gateway")) }
                    td { (field(n, "provision_start_ip")) " – " (field(n, "provision_end_ip")) }
                    td { (field(n, "nic_tag")) }
                    td { (field(n, "vlan_id")) }
                    td { @if n.get("owner_uuids").is_some() { (joined(n, "owner_uuids")) } @else { "everyone" } }
                }
            }
        })
        .collect();
    html! {
        (subnav())
        form.filters method="get" action="/networks" role="search" aria-label="Find a network" {
            label for="f-name" { "Name" input #f-name type="text" name="name" value=(name); }
            button type="submit" { "Find" }
        }
        (table(&format!("Networks: {}", networks.len()), &["Name", "Subnet", "Gateway", "Provisioned range", "Nic tag", "VLAN", "Owners"], rows))
    }
}

async fn show(State(web): State<Web>, Operator(s): Operator, Path(uuid): Path<String>) -> Response {
    let path = format!("/networks/{}", enc(&uuid));
    let net = match web.admin_get(&path).await {
        Ok(n) => n,
        Err(e) => return page::api_error(Some(&s), "Network", &e),
    };
    let ips = web.admin_get(&format!("{path}/ips")).await;
    page::page(&s, &format!("Network {}", field(&net, "name")), detail(&s, &net, ips, None))
}

fn detail(s: &Session, net: &Value, ips: Result<Value, ApiError>, problem: Option<&ApiError>) -> Markup {
    let uuid = field(net, "uuid");
    html! {
        (subnav())
        @if let Some(e) = problem { (error_box(e)) }
        (facts(&[
            ("UUID", html! { code { (uuid) } }),
            ("Name", html! { (field(net, "name")) }),
            ("Description", html! { (field(net, "description")) }),
            ("Subnet", html! { (field(net, "subnet")) " (netmask " (field(net, "netmask")) ")" }),
            ("Gateway", html! { (field(net, "gateway")) }),
            ("Provisioned range", html! { (field(net, "provision_start_ip")) " – " (field(net, "provision_end_ip")) }),
            ("Resolvers", html! { (joined(net, "resolvers")) }),
            ("Routes", html! { @if let Some(r) = net.get("routes") { code { (r.to_string()) } } }),
            ("Nic tag", html! { (field(net, "nic_tag")) }),
            ("VLAN", html! { (field(net, "vlan_id")) }),
            ("MTU", html! { (field(net, "mtu")) }),
            ("Fabric", html! { (field(net, "fabric")) }),
            ("Owners", html! { @if net.get("owner_uuids").is_some() { (joined(net, "owner_uuids")) } @else { "everyone" } }),
        ]))
        div.actions {
            a href={ "/nics?network_uuid=" (enc(&uuid)) } { "NICs on this network" }
            (post_button(s, &format!("/networks/{}/delete", enc(&uuid)), "Delete", Some("Delete this network? Only a network no NIC or pool uses can be deleted.")))
        }
        h2 { "Addresses in use" }
        @match ips {
            Ok(v) => (ip_table(page::items(&v))),
            Err(e) => (error_box(&e)),
        }
        details {
            summary { "Network (JSON)" }
            (json_block(net))
        }
    }
}

fn ip_table(ips: &[Value]) -> Markup {
    let rows = ips
        .iter()
        .map(|ip| {
            let state = if ip.get("reserved").and_then(Value::as_bool).unwrap_or(false) {
                "reserved"
            } else if ip.get("free").and_then(Value::as_bool).unwrap_or(false) {
                "free"
            } else {
                "in use"
            };
            html! {
                tr {
                    td { code { (field(ip, "ip")) } }
                    td { (state) }
                    td { (belongs_to(ip)) }
                    td { @if let Some(o) = ip.get("owner_uuid") { a href={ "/accounts/" (enc(&page::text(o))) } { code { (page::text(o)) } } } }
                }
            }
        })
        .collect();
    table(&format!("Addresses: {}", ips.len()), &["Address", "State", "Belongs to", "Owner"], rows)
}

async fn delete(State(web): State<Web>, Path(uuid): Path<String>, f: PostForm) -> Response {
    let s = &f.session;
    let path = format!("/networks/{}", enc(&uuid));
    match web.admin(Method::DELETE, &path, None).await {
        Ok(_) => Redirect::to("/networks").into_response(),
        Err(e) => match web.admin_get(&path).await {
            Ok(net) => {
                let ips = web.admin_get(&format!("{path}/ips")).await;
                page::respond(status_of(&e), Some(s), &format!("Network {}", field(&net, "name")), detail(s, &net, ips, Some(&e)))
            }
            Err(_) => page::api_error(Some(s), "Network", &e),
        },
    }
}

fn status_of(e: &ApiError) -> StatusCode {
    StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// The create form's text fields: (name, label, required).
const CREATE_FIELDS: &[(&str, &str, bool)] = &[
    ("name", "Name (e.g. external)", true),
    ("subnet", "Subnet (e.g. 10.0.0.0/24)", true),
    ("provision_start_ip", "First address to hand out", true),
    ("provision_end_ip", "Last address to hand out", true),
    ("gateway", "Gateway (reserved, never given to a NIC)", false),
    ("resolvers", "DNS resolvers (comma-separated)", false),
    ("vlan_id", "VLAN ID (0 = untagged)", true),
    ("mtu", "MTU (default 1500)", false),
    ("description", "Description", false),
    ("owner_uuids", "Accounts that may use it (UUIDs, comma-separated; empty: everyone)", false),
];

fn create_form(s: &Session, tags: &[String], typed: &Fields, problem: Option<&ApiError>) -> Markup {
    let chosen = typed.get("nic_tag").unwrap_or("external");
    html! {
        (subnav())
        @if let Some(e) = problem { (error_box(e)) }
        form.stack method="post" action="/networks" {
            (csrf_field(s))
            @for (id, label, required) in CREATE_FIELDS {
                @let default = if *id == "vlan_id" { "0" } else { "" };
                (labelled(id, label, if matches!(*id, "vlan_id" | "mtu") { "number" } else { "text" }, typed.get(id).unwrap_or(if typed.0.is_empty() { default } else { "" }), *required))
            }
            label for="nic_tag" { "Nic tag (required)" }
            @if tags.is_empty() {
                input #nic_tag type="text" name="nic_tag" value=(chosen) required;
            } @else {
                select #nic_tag name="nic_tag" {
                    @for t in tags { option value=(t) selected[t == chosen] { (t) } }
                }
            }
            button type="submit" { "Create network" }
        }
    }
}

/// CreateNetwork's body from the form (NAPI checks addresses and ranges).
fn create_body(f: &Fields) -> Result<Map<String, Value>, ApiError> {
    let mut body = Map::new();
    let mut errors = Vec::new();
    for (id, _, _) in CREATE_FIELDS {
        match *id {
            "vlan_id" | "mtu" => match f.number(id) {
                Ok(Some(n)) => {
                    body.insert(id.to_string(), json!(n));
                }
                Ok(None) => {}
                Err(e) => errors.push(e),
            },
            "owner_uuids" => match uuid_list(f, id) {
                Ok(Some(l)) => {
                    body.insert(id.to_string(), json!(l));
                }
                Ok(None) => {}
                Err(e) => errors.push(e),
            },
            "resolvers" => {
                if let Some(v) = f.get(id) {
                    let list: Vec<&str> = v.split(|c: char| c == ',' || c.is_whitespace()).filter(|p| !p.is_empty()).collect();
                    body.insert(id.to_string(), json!(list));
                }
            }
            _ => {
                if let Some(v) = f.get(id) {
                    body.insert(id.to_string(), json!(v));
                }
            }
        }
    }
    if let Some(t) = f.get("nic_tag") {
        body.insert("nic_tag".into(), json!(t));
    }
    if errors.is_empty() { Ok(body) } else { Err(invalid(errors)) }
}

async fn nic_tags(web: &Web) -> Vec<String> {
    web.admin_get("/nic_tags")
        .await
        .ok()
        .and_then(|v| v.as_array().map(|a| a.iter().map(|t| field(t, "name")).filter(|n| !n.is_empty()).collect()))
        .unwrap_or_default()
}

async fn new_form(State(web): State<Web>, Operator(s): Operator) -> Response {
    let tags = nic_tags(&web).await;
    page::page(&s, "Create a network", create_form(&s, &tags, &Fields::default(), None))
}

async fn create(State(web): State<Web>, f: PostForm) -> Response {
    let s = &f.session;
    let result = match create_body(&f.fields) {
        Ok(body) => web.admin(Method::POST, "/networks", Some(&Value::Object(body))).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(r) => Redirect::to(&format!("/networks/{}", enc(&field(&r.body, "uuid")))).into_response(),
        Err(e) => {
            let tags = nic_tags(&web).await;
            page::respond(status_of(&e), Some(s), "Create a network", create_form(s, &tags, &f.fields, Some(&e)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_body_reads_lists_and_numbers() {
        let f = Fields::parse(b"name=ext&subnet=10.0.0.0%2F24&provision_start_ip=10.0.0.10&provision_end_ip=10.0.0.20&vlan_id=0&resolvers=8.8.8.8%2C+1.1.1.1&nic_tag=external&mtu=");
        let b = create_body(&f).unwrap();
        assert_eq!(b["resolvers"], json!(["8.8.8.8", "1.1.1.1"]));
        assert_eq!((b["vlan_id"].as_u64(), b.contains_key("mtu")), (Some(0), false));
        let e = create_body(&Fields::parse(b"vlan_id=x&owner_uuids=bob")).unwrap_err();
        let fields: Vec<_> = e.errors.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(fields, ["vlan_id", "owner_uuids"]);
    }

    #[test]
    fn addresses_link_to_what_they_belong_to() {
        let out = belongs_to(&json!({"belongs_to_type": "zone", "belongs_to_uuid": "u1"})).into_string();
        assert!(out.contains("href=\"/vms/u1\""), "{out}");
        let out = ip_table(&[json!({"ip": "10.0.0.1", "reserved": true})]).into_string();
        assert!(out.contains("reserved"), "{out}");
    }
}
