//! CloudAPI machine NICs: `GET/POST /:a/machines/:id/nics`, `GET/DELETE
//! /:a/machines/:id/nics/:mac` — what `triton instance nic create|list|get|delete` use.
//!
//! As sdc-cloudapi does: NICs are read from NAPI; AddNic makes the NAPI NIC at once
//! (state `provisioning`, which the CLI's `-w` polls until `running`) and queues the
//! `add_nics` job; a VM that already has a NIC on the network gets a 302 to it;
//! RemoveNic queues `remove_nics` and answers 204 (`-w` polls until 404). MACs in paths
//! have their colons removed.

use axum::extract::{Path, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use nereid_types::ApiError;
use nereid_types::account::Account;
use nereid_types::mac::Mac;
use nereid_types::nic::Nic;
use nereid_types::vm::Vm;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::machines::{live_machine_of, machine_of};
use super::{CloudError, CloudResult, Params, Scoped, catalog, invalid, missing, ok};
use crate::app::vm_nics::AddedNic;
use crate::http::{AppState, Auth, BodyDoc, Doc, RespDoc, Route};

fn nic_schema() -> Value {
    json!({"type": "object", "properties": {
        "mac": {"type": "string"}, "ip": {"type": "string", "format": "ipv4"}, "primary": {"type": "boolean"},
        "gateway": {"type": "string"}, "netmask": {"type": "string"},
        "state": {"type": "string", "enum": ["provisioning", "running", "stopped"]},
        "network": {"type": "string", "format": "uuid"}}})
}

fn nic_list_schema() -> Value {
    json!({"type": "array", "items": nic_schema()})
}

fn add_schema() -> Value {
    json!({"type": "object", "required": ["network"], "properties": {
        "network": {"oneOf": [{"type": "string", "format": "uuid"}, {"type": "object", "required": ["ipv4_uuid"], "properties": {
            "ipv4_uuid": {"type": "string", "format": "uuid"}, "ipv4_ips": {"type": "array", "maxItems": 1, "items": {"type": "string"}},
            "ipv4_count": {"type": "integer", "enum": [1]}}}]},
        "primary": {"type": "boolean", "description": "Make the new NIC the primary one."}}})
}

fn doc(id: &'static str, summary: &'static str, body: BodyDoc, response: RespDoc) -> Doc {
    Doc { id, tag: "CloudAPI", summary, query: &[], body, response }
}

pub fn routes() -> Vec<Route> {
    vec![
        Route::new(
            Method::GET,
            "/{account}/machines/{id}/nics",
            doc("ListNics", "The machine's NICs (x-resource-count).", BodyDoc::None, RespDoc::Schema(200, nic_list_schema)),
            list,
        )
        .auth(Auth::Signature),
        Route::new(
            Method::POST,
            "/{account}/machines/{id}/nics",
            doc(
                "AddNic",
                "Add a NIC on a network (201, state provisioning until the machine has it; the machine restarts); 302 to the NIC the machine already has on that network.",
                BodyDoc::Schema(add_schema),
                RespDoc::Schema(201, nic_schema),
            ),
            add,
        )
        .auth(Auth::Signature),
        Route::new(
            Method::GET,
            "/{account}/machines/{id}/nics/{mac}",
            doc("GetNic", "One NIC, by MAC without colons (12 hex digits).", BodyDoc::None, RespDoc::Schema(200, nic_schema)),
            get,
        )
        .auth(Auth::Signature),
        Route::new(
            Method::DELETE,
            "/{account}/machines/{id}/nics/{mac}",
            doc(
                "RemoveNic",
                "Remove a NIC (204; the machine restarts and the address is freed).",
                BodyDoc::None,
                RespDoc::Empty(204),
            ),
            remove,
        )
        .auth(Auth::Signature),
    ]
}

/// A NIC as CloudAPI shows it (sdc-cloudapi's `formatNic`).
pub fn format_nic(n: &Nic, net: Option<&nereid_types::network::Network>) -> Value {
    let mut v = json!({"mac": n.mac, "primary": n.primary, "state": n.state, "network": n.network_uuid});
    if let Some(ip) = &n.ip {
        v["ip"] = json!(ip);
    }
    if let Some(net) = net {
        v["netmask"] = json!(net.netmask);
        if let Some(g) = &net.gateway {
            v["gateway"] = json!(g);
        }
    }
    v
}

async fn render(s: &AppState, nics: &[Nic]) -> Result<Vec<Value>, CloudError> {
    let nets = s.app.networks_of(&nics.iter().collect::<Vec<_>>()).await?;
    Ok(nics.iter().map(|n| format_nic(n, n.network_uuid.and_then(|u| nets.get(&u)))).collect())
}

/// The path's MAC: 12 hex digits, no colons (as the CLI sends it).
fn path_mac(mac: &str) -> Result<Mac, CloudError> {
    if mac.len() != 12 || !mac.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid("mac", "mac has invalid format"));
    }
    Mac::parse(mac).map_err(|_| invalid("mac", "mac has invalid format"))
}

/// The machine's NIC `mac` (404 for any other NIC, including other accounts').
async fn nic_of(s: &AppState, acct: &Account, vm: &Vm, mac: &str) -> Result<Nic, CloudError> {
    let not_found = || CloudError(ApiError::new(404, "ResourceNotFound", "nic not found"));
    let mac = path_mac(mac)?;
    match s.app.get_nic(&mac.to_string()).await {
        Ok((n, _)) if n.owner_uuid == acct.uuid && n.belongs_to_uuid == vm.uuid => Ok(n),
        Ok(_) => Err(not_found()),
        Err(e) if e.status == 404 => Err(not_found()),
        Err(e) => Err(e.into()),
    }
}

fn nic_path(acct: &Account, vm: Uuid, mac: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!("/{}/machines/{vm}/nics/{}", acct.login, mac.replace(':', ""))).ok()
}

async fn list(State(s): State<AppState>, Scoped(acct): Scoped, Path((_, id)): Path<(String, String)>) -> CloudResult {
    let vm = machine_of(&s, &acct, &id).await?;
    let nics = render(&s, &s.app.vm_nics(&vm).await?).await?;
    let mut resp = super::reply(StatusCode::OK, &nics);
    resp.headers_mut().insert("x-resource-count", HeaderValue::from(nics.len()));
    Ok(resp)
}

/// AddNic's `network`: a UUID, or `{ipv4_uuid, ipv4_ips?: [one ip], ipv4_count?: 1}`.
fn network_arg(p: &Map<String, Value>) -> Result<(Uuid, Option<String>), CloudError> {
    let bad = || invalid("network", "network argument has invalid format");
    match p.get("network") {
        None | Some(Value::Null) => Err(missing("network")),
        Some(Value::String(s)) => Ok((Uuid::parse_str(s).map_err(|_| bad())?, None)),
        Some(Value::Object(o)) => {
            for k in o.keys() {
                if !["ipv4_uuid", "ipv4_ips", "ipv4_count", "primary"].contains(&k.as_str()) {
                    return Err(invalid("network", format!("unknown key {k:?} (ipv4_uuid, ipv4_ips, ipv4_count)")));
                }
            }
            let id = o.get("ipv4_uuid").and_then(Value::as_str).ok_or_else(|| invalid("network", "ipv4_uuid is required"))?;
            let id = Uuid::parse_str(id).map_err(|_| bad())?;
            if o.get("ipv4_count").is_some_and(|c| c.as_u64() != Some(1)) {
                return Err(invalid("network", "ipv4_count must be 1"));
            }
            let ip = match o.get("ipv4_ips") {
                None | Some(Value::Null) => None,
                Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => a[0].as_str().map(str::to_string),
                Some(_) => return Err(invalid("network", "ipv4_ips must hold exactly one IPv4 address")),
            };
            Ok((id, ip))
        }
        Some(_) => Err(invalid("network", "network argument must be a network object or string")),
    }
}

async fn add(State(s): State<AppState>, Scoped(acct): Scoped, Path((_, id)): Path<(String, String)>, Params(p): Params) -> CloudResult {
    let vm = match live_machine_of(&s, &acct, &id).await {
        Ok(vm) => vm,
        Err(resp) => return Ok(resp),
    };
    let (network, ip) = network_arg(&p)?;
    let primary = match p.get("primary") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::String(t)) if t == "true" || t == "false" => t == "true",
        Some(_) => return Err(invalid("primary", "must be true or false")),
    };
    let visible = catalog::visible_networks(&s, acct.uuid).await?;
    if !visible.iter().any(|n| n["id"] == json!(network)) {
        return Err(invalid("network", "network not found"));
    }
    if let Some(ip) = &ip {
        s.app.check_tenant_pin(&acct, network, ip).await?;
    }
    match s.app.add_nic_now(vm.uuid, network, ip.as_deref(), primary).await? {
        AddedNic::Exists(nic) => {
            let mut resp = StatusCode::FOUND.into_response();
            if let Some(l) = nic_path(&acct, vm.uuid, &nic.mac) {
                resp.headers_mut().insert(header::LOCATION, l);
            }
            Ok(resp)
        }
        AddedNic::Added(nic, _job) => {
            let body = render(&s, std::slice::from_ref(&*nic)).await?.pop().unwrap_or(Value::Null);
            let mut resp = super::reply(StatusCode::CREATED, &body);
            if let Some(l) = nic_path(&acct, vm.uuid, &nic.mac) {
                resp.headers_mut().insert(header::LOCATION, l);
            }
            Ok(resp)
        }
    }
}

async fn get(State(s): State<AppState>, Scoped(acct): Scoped, Path((_, id, mac)): Path<(String, String, String)>) -> CloudResult {
    let vm = machine_of(&s, &acct, &id).await?;
    let nic = nic_of(&s, &acct, &vm, &mac).await?;
    ok(&render(&s, std::slice::from_ref(&nic)).await?.pop().unwrap_or(Value::Null))
}

async fn remove(State(s): State<AppState>, Scoped(acct): Scoped, Path((_, id, mac)): Path<(String, String, String)>) -> CloudResult {
    let vm = match live_machine_of(&s, &acct, &id).await {
        Ok(vm) => vm,
        Err(resp) => return Ok(resp),
    };
    let nic = nic_of(&s, &acct, &vm, &mac).await?;
    s.app.remove_nic(vm.uuid, &nic.mac).await?;
    Ok(no_content())
}

fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}
