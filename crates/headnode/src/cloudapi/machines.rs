//! CloudAPI machines: list, create, get, actions, delete, audit.
//!
//! Every change goes through the same `app` calls (and so the same jobs) as VMAPI's;
//! this file only translates. What the CLI depends on: ListMachines' `x-resource-count`
//! (items in this page), 201 + `Location` on create, 410 with the body for a deleted
//! machine (on GET and on actions), actions in the JSON body answered 202 with a `Date`,
//! audit entries stamped when their job finished (reboot `-w` waits for one later than the
//! 202's `Date`).

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use nereid_store::{Filter, Kind, ListQuery};
use nereid_types::ApiError;
use nereid_types::account::Account;
use nereid_types::image::Image;
use nereid_types::job::Job;
use nereid_types::query::{Param, QKind};
use nereid_types::vm::Vm;

use crate::app::vms::CreateOptions;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::{CloudError, CloudResult, Params, Scoped, catalog, invalid, missing, ok, render};
use crate::buckets::VMS;
use crate::http::{AppState, Auth, BodyDoc, Doc, RespDoc, Route};

const LIST_QUERY: &[Param] = &[
    Param::new("limit", QKind::Int { min: 1, max: 1000 }, "Page size (default and most 1000)."),
    Param::new("offset", QKind::Int { min: 0, max: i64::MAX }, "Items to skip."),
    Param::new("name", QKind::Str { max: 189 }, "Name."),
    Param::new("state", QKind::Str { max: 32 }, "CloudAPI state (running, stopped, …)."),
    Param::new("image", QKind::Str { max: 64 }, "Image UUID."),
    Param::new("brand", QKind::Str { max: 32 }, "Brand."),
    Param::new("memory", QKind::Str { max: 32 }, "Memory (MiB)."),
    Param::new("type", QKind::Str { max: 32 }, "virtualmachine or smartmachine."),
    Param::new("docker", QKind::Str { max: 8 }, "true or false."),
    Param::new("tombstone", QKind::Str { max: 8 }, "Include deleted machines."),
    Param::new("credentials", QKind::Str { max: 8 }, "Include metadata.credentials."),
    Param::new("tags", QKind::Str { max: 8 }, "`*`: machines with any tag."),
    Param::prefix("tag.", "tag.KEY=VALUE: machines with that tag (`*` matches any value)."),
];

/// The machine object's schema (also the body of a 410 for a deleted machine).
pub fn machine_schema() -> Value {
    json!({"type": "object", "properties": {
        "id": {"type": "string", "format": "uuid"}, "name": {"type": "string"}, "type": {"type": "string"},
        "brand": {"type": "string"}, "state": {"type": "string"}, "image": {"type": "string"}, "memory": {"type": "integer"},
        "disk": {"type": "integer"}, "metadata": {"type": "object"}, "tags": {"type": "object"}, "created": {"type": "string"},
        "updated": {"type": "string"}, "docker": {"type": "boolean"}, "ips": {"type": "array", "items": {"type": "string"}},
        "networks": {"type": "array", "items": {"type": "string"}}, "nics": {"type": "array", "items": {"type": "object"}},
        "primaryIp": {"type": "string"}, "firewall_enabled": {"type": "boolean"}, "deletion_protection": {"type": "boolean"},
        "compute_node": {"type": "string"}, "package": {"type": "string", "description": "The package's name."},
        "dns_names": {"type": "array", "items": {"type": "string"}, "description": "The machine's CNS names: GetMachine only, when the headnode serves DNS (--dns-listen)."}}})
}

fn machine_list_schema() -> Value {
    json!({"type": "array", "items": machine_schema()})
}

fn create_schema() -> Value {
    json!({"type": "object", "required": ["image", "package"], "properties": {
        "name": {"type": "string"}, "image": {"type": "string", "format": "uuid"},
        "package": {"type": "string", "description": "Package UUID or name."},
        "networks": {"type": "array", "items": {"oneOf": [{"type": "string", "format": "uuid"}, {"type": "object", "properties": {
            "ipv4_uuid": {"type": "string"}, "ipv4_ips": {"type": "array", "items": {"type": "string"}}, "primary": {"type": "boolean"}}}]}},
        "affinity": {"type": "array", "items": {"type": "string"}, "example": ["instance!=web*"]},
        "firewall_enabled": {"type": "boolean"}, "deletion_protection": {"type": "boolean"}, "brand": {"type": "string"},
        "metadata.KEY": {"type": "string", "description": "Flattened metadata (also `metadata: {}`)."},
        "tag.KEY": {"description": "Flattened tags (also `tags: {}`)."}}})
}

fn action_schema() -> Value {
    json!({"type": "object", "required": ["action"], "properties": {
        "action": {"type": "string", "enum": ACTIONS},
        "package": {"type": "string", "description": "resize: package UUID or name."},
        "name": {"type": "string", "description": "rename: the new name."}}})
}

fn audit_schema() -> Value {
    json!({"type": "array", "items": {"type": "object", "properties": {
        "action": {"type": "string"}, "success": {"type": "string", "enum": ["yes", "no"]}, "time": {"type": "string"},
        "caller": {"type": "object"}}}})
}

/// The machine actions CloudAPI's UpdateMachine takes.
pub const ACTIONS: &[&str] = &[
    "start",
    "stop",
    "reboot",
    "resize",
    "rename",
    "enable_firewall",
    "disable_firewall",
    "enable_deletion_protection",
    "disable_deletion_protection",
];

fn doc(id: &'static str, summary: &'static str, query: &'static [Param], body: BodyDoc, response: RespDoc) -> Doc {
    Doc { id, tag: "CloudAPI", summary, query, body, response }
}

pub fn routes() -> Vec<Route> {
    vec![
        Route::new(
            Method::GET,
            "/{account}/machines",
            doc(
                "ListMachines",
                "The account's machines; x-resource-count is the number in this page (HEAD answers the headers only).",
                LIST_QUERY,
                BodyDoc::None,
                RespDoc::Schema(200, machine_list_schema),
            ),
            list,
        )
        .auth(Auth::Signature),
        Route::new(
            Method::POST,
            "/{account}/machines",
            doc(
                "CreateMachine",
                "Provision a machine (201, state provisioning, Location header).",
                &[],
                BodyDoc::Schema(create_schema),
                RespDoc::Schema(201, machine_schema),
            ),
            create,
        )
        .auth(Auth::Signature),
        Route::new(
            Method::GET,
            "/{account}/machines/{id}",
            doc("GetMachine", "A machine; 410 with the machine for a deleted one.", &[], BodyDoc::None, RespDoc::Schema(200, machine_schema)),
            get,
        )
        .auth(Auth::Signature),
        Route::new(
            Method::POST,
            "/{account}/machines/{id}",
            doc(
                "UpdateMachine",
                "An action (in the body or the query): start, stop, reboot, resize, rename, enable/disable_firewall, enable/disable_deletion_protection; 202.",
                &[],
                BodyDoc::Schema(action_schema),
                RespDoc::Empty(202),
            ),
            action,
        )
        .auth(Auth::Signature),
        Route::new(
            Method::DELETE,
            "/{account}/machines/{id}",
            doc("DeleteMachine", "Delete a machine (409 CannotDestroyMachineError under deletion protection).", &[], BodyDoc::None, RespDoc::Empty(204)),
            delete,
        )
        .auth(Auth::Signature),
        Route::new(
            Method::GET,
            "/{account}/machines/{id}/audit",
            doc("MachineAudit", "What was done to the machine, newest first.", &[], BodyDoc::None, RespDoc::Schema(200, audit_schema)),
            audit,
        )
        .auth(Auth::Signature),
    ]
}

fn not_found(id: &str) -> CloudError {
    CloudError(ApiError::new(404, "ResourceNotFound", format!("instance {id} does not exist")))
}

/// The account's machine `id` (404 for anything else, including other accounts' machines).
pub async fn machine_of(s: &AppState, acct: &Account, id: &str) -> Result<Vm, CloudError> {
    let uuid = Uuid::parse_str(id).map_err(|_| not_found(id))?;
    match s.app.get_vm(uuid, Some(acct.uuid)).await {
        Ok((vm, _)) => Ok(vm),
        Err(e) if e.status == 404 => Err(not_found(id)),
        Err(e) => Err(e.into()),
    }
}

/// Like [`machine_of`], but a deleted machine answers 410 with its body, as CloudAPI does.
pub async fn live_machine_of(s: &AppState, acct: &Account, id: &str) -> Result<Vm, Response> {
    let vm = machine_of(s, acct, id).await.map_err(IntoResponse::into_response)?;
    if vm.state.as_deref() == Some("destroyed") {
        return Err(super::reply(StatusCode::GONE, &render::machine(&vm, false)));
    }
    Ok(vm)
}

async fn list(State(s): State<AppState>, Scoped(acct): Scoped, RawQuery(raw): RawQuery) -> CloudResult {
    let q = super::query_map(raw.as_deref());
    let int = |k: &str, default: i64, max: i64| -> Result<i64, CloudError> {
        match q.get(k).and_then(Value::as_str) {
            None => Ok(default),
            Some(v) => match v.parse::<i64>() {
                Ok(n) if (0..=max).contains(&n) => Ok(n),
                _ => Err(invalid(k, format!("must be an integer from 0 to {max} (got {v:?})"))),
            },
        }
    };
    let limit = int("limit", 1000, 1000)?.max(1);
    let offset = int("offset", 0, i64::MAX)?;
    let mut parts = vec![Filter::eq("owner_uuid", acct.uuid.to_string())];
    if !super::flag(&q, "tombstone") {
        parts.push(Filter::Ne(nereid_store::Path::field("state"), json!("destroyed")));
    }
    if let Some(n) = q.get("name").and_then(Value::as_str) {
        parts.push(Filter::eq("alias", n));
    }
    for (k, v) in q.iter().filter(|(k, _)| k.starts_with("tag.")) {
        parts.push(crate::app::tag_filter(k, v.as_str().unwrap_or_default()).map_err(|e| invalid(&e.field, e.message))?);
    }
    if q.get("tags").and_then(Value::as_str) == Some("*") {
        parts.push(Filter::Present(nereid_store::Path::field("tags")));
    }
    // The remaining filters are on rendered values (state names, memory, type): applied
    // to the owner's machines before paging so pages stay consistent.
    let post: Vec<&str> = ["state", "image", "brand", "memory", "type", "docker"].into_iter().filter(|k| q.contains_key(*k)).collect();
    let credentials = super::flag(&q, "credentials");
    let sorted = ListQuery::filter(Filter::and(parts)).sort(nereid_store::Path::field("create_timestamp"), Kind::Text, false);
    let (mut resp, count) = if post.is_empty() {
        // The common case: each machine's JSON from the rendering cache, or decoded
        // straight from the store's text and serialized straight (then cached).
        let variant = crate::app::lists::Variant::Machine { credentials };
        let page = s.app.list_rendered(variant, &sorted.page(limit, offset), |row| render::machine_row(row, credentials)).await?;
        let body = crate::app::lists::json_array(page.iter().map(crate::app::lists::Cached::bytes));
        ((StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body).into_response(), page.len())
    } else {
        let vms: Vec<Vm> = s.app.list_fast(VMS.name, &sorted).await?;
        let page: Vec<Value> = vms
            .iter()
            .map(|v| render::machine(v, credentials))
            .filter(|m| catalog::matches(m, &q, &post))
            .skip(usize::try_from(offset).unwrap_or(usize::MAX))
            .take(usize::try_from(limit).unwrap_or(1000))
            .collect();
        (super::reply(StatusCode::OK, &page), page.len())
    };
    // Items in *this* page: the CLI pages until a page is shorter than its limit.
    resp.headers_mut().insert("x-resource-count", HeaderValue::from(count));
    resp.headers_mut().insert("x-query-limit", HeaderValue::from(limit));
    Ok(resp)
}

/// Whether another live machine of the account has this name.
async fn name_taken(s: &AppState, acct: &Account, name: &str, except: Option<Uuid>) -> Result<Option<Uuid>, CloudError> {
    let f = Filter::and(vec![
        Filter::eq("owner_uuid", acct.uuid.to_string()),
        Filter::eq("alias", name),
        Filter::Ne(nereid_store::Path::field("state"), json!("destroyed")),
    ]);
    let vms: Vec<Vm> = s.app.list(VMS.name, &ListQuery::filter(f)).await?;
    Ok(vms.into_iter().map(|v| v.uuid).find(|u| Some(*u) != except))
}

fn check_name(name: &str) -> Result<(), CloudError> {
    nereid_types::vm::check_alias(name).map_err(|m| invalid("name", m))
}

fn bool_param(p: &Map<String, Value>, k: &str) -> Result<Option<bool>, CloudError> {
    match p.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(Value::String(s)) if s == "true" => Ok(Some(true)),
        Some(Value::String(s)) if s == "false" => Ok(Some(false)),
        Some(_) => Err(invalid(k, "must be true or false")),
    }
}

/// The networks a new machine goes on when the request names none: the account's
/// `default_network`, else the package's networks, else the public network named
/// `external`, else the first public network.
async fn default_networks(s: &AppState, acct: &Account, pkg: &nereid_types::package::Package) -> Result<Vec<Value>, CloudError> {
    if let Some(n) = acct.default_network {
        return Ok(vec![json!({"uuid": n})]);
    }
    if let Some(nets) = pkg.networks.as_ref().filter(|n| !n.is_empty()) {
        return Ok(nets.iter().map(|n| json!({"uuid": n})).collect());
    }
    let visible = catalog::visible_networks(s, acct.uuid).await?;
    let public: Vec<&Value> = visible.iter().filter(|n| n["public"] == json!(true)).collect();
    let pick = public.iter().find(|n| n["name"] == "external").or(public.first());
    match pick {
        Some(n) => Ok(vec![json!({"uuid": n["id"]})]),
        None => {
            Err(invalid("networks", "no network was given and the account has no default network; name one with `networks` (triton: -N)"))
        }
    }
}

async fn create(State(s): State<AppState>, Scoped(acct): Scoped, Params(params): Params) -> CloudResult {
    let p = params;
    let image_id = p.get("image").and_then(Value::as_str).ok_or_else(|| missing("image"))?;
    let pkg_id = p.get("package").and_then(Value::as_str).ok_or_else(|| missing("package"))?;
    let image: Image = match Uuid::parse_str(image_id) {
        Ok(u) => s.app.get_image(u, Some(acct.uuid)).await.map(|(i, _)| i).ok(),
        Err(_) => None,
    }
    .ok_or_else(|| CloudError(ApiError::new(404, "ResourceNotFound", format!("image {image_id} does not exist"))))?;
    if image.state != "active" {
        return Err(invalid("image", format!("image {} is {}, not active", image.label(), image.state)));
    }
    let pkg = catalog::find_package(&s, acct.uuid, pkg_id).await?;
    let uuid = Uuid::new_v4();
    let short = uuid.to_string()[..8].to_string();
    let name = match p.get("name") {
        None | Some(Value::Null) => short.clone(),
        Some(Value::String(n)) => n.replace("{{shortId}}", &short),
        Some(_) => return Err(invalid("name", "must be a string")),
    };
    check_name(&name)?;
    if let Some(other) = name_taken(&s, &acct, &name, None).await? {
        return Err(invalid("name", format!("{name} is already the name of instance {other}")));
    }
    let (mut metadata, tags) = render::metadata_and_tags(&p).map_err(|(f, m)| invalid(&f, m))?;
    if !metadata.contains_key("root_authorized_keys") {
        // As Triton does: the account's keys let `triton ssh` in.
        let keys: Vec<String> = s.app.list_keys(acct.uuid).await?.into_iter().map(|k| k.key).collect();
        if !keys.is_empty() {
            metadata.insert("root_authorized_keys".into(), json!(keys.join("\n") + "\n"));
        }
    }
    let networks = match p.get("networks") {
        None | Some(Value::Null) => default_networks(&s, &acct, &pkg).await?,
        Some(v) => {
            let nets = render::networks(v).map_err(|m| invalid("networks", m))?;
            let visible = catalog::visible_networks(&s, acct.uuid).await?;
            for n in &nets {
                if !visible.iter().any(|v| v["id"] == n["uuid"]) {
                    return Err(CloudError(ApiError::new(
                        404,
                        "ResourceNotFound",
                        format!("network {} does not exist", n["uuid"].as_str().unwrap_or("")),
                    )));
                }
                // A chosen address: only where the tenant may have it (no reserved or
                // shared-network address, nothing outside the provisioning range).
                if let (Some(id), Some(ip)) = (n["uuid"].as_str().and_then(|u| Uuid::parse_str(u).ok()), n["ip"].as_str()) {
                    s.app.check_tenant_pin(&acct, id, ip).await?;
                }
            }
            nets
        }
    };
    let brand = p
        .get("brand")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| pkg.brand.clone())
        .or_else(|| image.rest.get("requirements").and_then(|r| r.get("brand")).and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| "bhyve".into());
    let mut input = Map::new();
    input.insert("uuid".into(), json!(uuid));
    input.insert("owner_uuid".into(), json!(acct.uuid));
    input.insert("brand".into(), json!(brand));
    input.insert("billing_id".into(), json!(pkg.uuid));
    input.insert("image_uuid".into(), json!(image.uuid));
    input.insert("alias".into(), json!(name));
    input.insert("networks".into(), Value::Array(networks));
    input.insert("customer_metadata".into(), Value::Object(metadata));
    input.insert("tags".into(), Value::Object(tags));
    for k in ["firewall_enabled", "deletion_protection"] {
        if let Some(b) = bool_param(&p, k)? {
            input.insert(k.into(), json!(b));
        }
    }
    // The name and the affinity rules are checked again inside the placement claim, from
    // the VMs the account has then, so two concurrent creates cannot both pass them.
    let rules = match p.get("affinity") {
        Some(r) => render::affinity_rules(r).map_err(|m| invalid("affinity", m))?,
        None => Vec::new(),
    };
    let locality = |vms: &[Vm]| render::locality(&rules, vms).map_err(|m| invalid("affinity", m).0);
    let opts = CreateOptions { unique_alias: true, locality: (!rules.is_empty()).then_some(&locality as _) };
    let created = s.app.create_vm_with(&input, &opts).await.map_err(|mut e| {
        // The RAM an image's requirements refuse is the package's here.
        for f in e.errors.iter_mut().filter(|f| f.field == "ram") {
            f.field = "package".into();
        }
        // CloudAPI's wording for a name taken in the meantime.
        match e.errors.iter().find(|f| f.field == "alias") {
            Some(f) => invalid("name", f.message.clone()),
            None => e.into(),
        }
    })?;
    let mut resp = super::reply(StatusCode::CREATED, &render::machine(&created.vm, false));
    if let Ok(v) = HeaderValue::from_str(&format!("/{}/machines/{}", acct.login, uuid)) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

async fn get(
    State(s): State<AppState>,
    Scoped(acct): Scoped,
    Path((_, id)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> CloudResult {
    let credentials = super::flag(&super::query_map(raw.as_deref()), "credentials");
    match live_machine_of(&s, &acct, &id).await {
        Ok(vm) => {
            let mut m = render::machine(&vm, credentials);
            // GetMachine only (not ListMachines), when CNS is on: compat §5.
            if let Some(names) = s.app.vm_dns_names(&vm, Some(&acct)).await? {
                m["dns_names"] = json!(names);
            }
            ok(&m)
        }
        Err(resp) => Ok(resp),
    }
}

/// A VMAPI update job audited as `action`; a change that changes nothing is done already.
pub async fn update(s: &AppState, vm: &Vm, action: &str, fields: Value) -> Result<(), CloudError> {
    match s.app.update_vm_as(vm.uuid, fields.as_object().unwrap_or(&Map::new()), Some(action)).await {
        Ok(_) => Ok(()),
        Err(e) if e.errors.iter().any(|f| f.field == "update" && f.message == "changes nothing") => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// 202 with no body (hyper adds `Date`, which the CLI's reboot wait reads).
fn accepted() -> Response {
    StatusCode::ACCEPTED.into_response()
}

async fn action(
    State(s): State<AppState>,
    Scoped(acct): Scoped,
    Path((_, id)): Path<(String, String)>,
    Params(params): Params,
) -> CloudResult {
    let p = params;
    let vm = match live_machine_of(&s, &acct, &id).await {
        Ok(vm) => vm,
        Err(resp) => return Ok(resp),
    };
    let action = p.get("action").and_then(Value::as_str).ok_or_else(|| missing("action"))?;
    match action {
        "start" | "stop" | "reboot" => {
            s.app.power_vm(vm.uuid, action).await?;
        }
        "resize" => {
            let pkg_id = p.get("package").and_then(Value::as_str).ok_or_else(|| missing("package"))?;
            let pkg = catalog::find_package(&s, acct.uuid, pkg_id).await?;
            if vm.billing_id == Some(pkg.uuid) {
                return Err(invalid("package", format!("instance {} already has package {}", vm.uuid, pkg.name)));
            }
            update(&s, &vm, action, json!({"billing_id": pkg.uuid})).await?;
        }
        "rename" => {
            let name = p.get("name").and_then(Value::as_str).ok_or_else(|| missing("name"))?;
            check_name(name)?;
            if let Some(other) = name_taken(&s, &acct, name, Some(vm.uuid)).await? {
                return Err(invalid("name", format!("{name} is already the name of instance {other}")));
            }
            update(&s, &vm, action, json!({"alias": name})).await?;
        }
        "enable_firewall" | "disable_firewall" => {
            update(&s, &vm, action, json!({"firewall_enabled": action == "enable_firewall"})).await?;
        }
        "enable_deletion_protection" | "disable_deletion_protection" => {
            update(&s, &vm, action, json!({"deletion_protection": action == "enable_deletion_protection"})).await?;
        }
        other => return Err(invalid("action", format!("{other} is not an action; use one of {}", ACTIONS.join(", ")))),
    }
    Ok(accepted())
}

async fn delete(State(s): State<AppState>, Scoped(acct): Scoped, Path((_, id)): Path<(String, String)>) -> CloudResult {
    let vm = match live_machine_of(&s, &acct, &id).await {
        Ok(vm) => vm,
        Err(resp) => return Ok(resp),
    };
    s.app.delete_vm(vm.uuid).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// CloudAPI's audit action for a finished job.
pub fn audit_action(job: &Job) -> String {
    match job.task.as_str() {
        "snapshot" => match job.params.get("op").and_then(Value::as_str) {
            Some("create") => "create_snapshot".into(),
            Some("rollback") => "rollback_snapshot".into(),
            Some("delete") => "delete_snapshot".into(),
            _ => "snapshot".into(),
        },
        "destroy" => "delete".into(),
        "update" => job.params.get("action").and_then(Value::as_str).unwrap_or("update").to_string(),
        other => other.to_string(),
    }
}

/// Audit entries for a machine's jobs, newest first; a job appears once it has finished,
/// stamped with its end (so "after the 202's Date" means "done after it").
pub fn audit_entries(jobs: &[Job]) -> Vec<Value> {
    let mut out: Vec<(String, Value)> = jobs
        .iter()
        .filter(|j| j.is_done())
        .map(|j| {
            let time = j.finished.clone().unwrap_or_else(|| j.created_at.clone());
            let entry = json!({
                "action": audit_action(j),
                "success": if j.execution == "succeeded" { "yes" } else { "no" },
                "time": time,
                "caller": {"type": "signature"},
            });
            (time, entry)
        })
        .collect();
    out.sort_by(|a, b| b.0.cmp(&a.0));
    out.into_iter().map(|(_, e)| e).collect()
}

async fn audit(State(s): State<AppState>, Scoped(acct): Scoped, Path((_, id)): Path<(String, String)>) -> CloudResult {
    let vm = machine_of(&s, &acct, &id).await?;
    let jobs = s.app.list_jobs(&nereid_types::query::Query::default(), Some(vm.uuid)).await?;
    ok(&audit_entries(&jobs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(task: &str, op: Option<&str>, execution: &str, finished: Option<&str>) -> Job {
        let mut params = Map::new();
        if let Some(o) = op {
            params.insert("op".into(), json!(o));
        }
        let mut j = crate::jobs::new_job(task, Uuid::new_v4(), None, None, params);
        j.execution = execution.into();
        j.finished = finished.map(str::to_string);
        j
    }

    #[test]
    fn audit_lists_finished_jobs_newest_first() {
        let jobs = vec![
            job("provision", None, "succeeded", Some("2026-11-25T10:00:00.000Z")),
            job("reboot", None, "succeeded", Some("2026-11-25T10:05:00.000Z")),
            job("snapshot", Some("delete"), "failed", Some("2026-11-25T10:06:00.000Z")),
            job("stop", None, "running", None),
        ];
        let a = audit_entries(&jobs);
        assert_eq!(a.len(), 3, "a running job is not in the audit yet: {a:?}");
        assert_eq!((a[0]["action"].as_str(), a[0]["success"].as_str()), (Some("delete_snapshot"), Some("no")));
        assert_eq!((a[1]["action"].as_str(), a[1]["success"].as_str()), (Some("reboot"), Some("yes")));
        assert_eq!(a[2]["action"], "provision");
    }
}
