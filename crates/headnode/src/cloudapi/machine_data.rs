//! CloudAPI machine sub-resources: tags, metadata, snapshots.
//!
//! Tag and metadata changes are VMAPI update jobs (the agent's copy of the metadata the
//! guest reads follows); the answer is the resulting map, which the CLI's `-w` then
//! polls for. Snapshots are the `snapshot` jobs; one being made shows as `creating`
//! until its job records it, so `snapshot create -w` can poll it from the first second.

use axum::extract::{Path, RawQuery, State};
use axum::http::{Method, StatusCode};
use axum::response::IntoResponse;
use nereid_types::ApiError;
use nereid_types::vm::Vm;
use serde_json::{Map, Value, json};

use super::machines::live_machine_of;
use super::{BodyParams, CloudError, CloudResult, Scoped, invalid, ok};
use crate::http::{AppState, Auth, BodyDoc, Doc, RespDoc, Route};

fn map_schema() -> Value {
    json!({"type": "object", "additionalProperties": {"oneOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}]}})
}
fn value_schema() -> Value {
    json!({"oneOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}]})
}
fn snapshot_schema() -> Value {
    json!({"type": "object", "properties": {"name": {"type": "string"}, "state": {"type": "string", "enum": ["creating", "created", "deleting"]},
        "created": {"type": "string"}, "updated": {"type": "string"}}})
}
fn snapshot_list_schema() -> Value {
    json!({"type": "array", "items": snapshot_schema()})
}
fn snapshot_create_schema() -> Value {
    json!({"type": "object", "properties": {"name": {"type": "string", "description": "Default: the current UTC time, e.g. 20261125T143000Z."}}})
}

fn doc(id: &'static str, summary: &'static str, body: BodyDoc, response: RespDoc) -> Doc {
    Doc { id, tag: "CloudAPI", summary, query: &[], body, response }
}

fn route<H, T>(method: Method, path: &'static str, d: Doc, handler: H) -> Route
where
    H: axum::handler::Handler<T, AppState>,
    T: 'static,
{
    Route::new(method, path, d, handler).auth(Auth::Signature)
}

pub fn routes() -> Vec<Route> {
    vec![
        route(
            Method::GET,
            "/{account}/machines/{id}/tags",
            doc("ListMachineTags", "The machine's tags.", BodyDoc::None, RespDoc::Schema(200, map_schema)),
            list_tags,
        ),
        route(
            Method::POST,
            "/{account}/machines/{id}/tags",
            doc("AddMachineTags", "Add or change tags (merged).", BodyDoc::Schema(map_schema), RespDoc::Schema(200, map_schema)),
            add_tags,
        ),
        route(
            Method::PUT,
            "/{account}/machines/{id}/tags",
            doc("ReplaceMachineTags", "Replace all tags.", BodyDoc::Schema(map_schema), RespDoc::Schema(200, map_schema)),
            replace_tags,
        ),
        route(
            Method::DELETE,
            "/{account}/machines/{id}/tags",
            doc("DeleteMachineTags", "Remove every tag.", BodyDoc::None, RespDoc::Empty(204)),
            delete_tags,
        ),
        route(
            Method::GET,
            "/{account}/machines/{id}/tags/{key}",
            doc("GetMachineTag", "One tag's value.", BodyDoc::None, RespDoc::Schema(200, value_schema)),
            get_tag,
        ),
        route(
            Method::DELETE,
            "/{account}/machines/{id}/tags/{key}",
            doc("DeleteMachineTag", "Remove one tag.", BodyDoc::None, RespDoc::Empty(204)),
            delete_tag,
        ),
        route(
            Method::GET,
            "/{account}/machines/{id}/metadata",
            doc(
                "ListMachineMetadata",
                "The machine's customer metadata (credentials only with ?credentials=true).",
                BodyDoc::None,
                RespDoc::Schema(200, map_schema),
            ),
            list_metadata,
        ),
        route(
            Method::POST,
            "/{account}/machines/{id}/metadata",
            doc(
                "AddMachineMetadata",
                "Add or change metadata keys (values become strings).",
                BodyDoc::Schema(map_schema),
                RespDoc::Schema(200, map_schema),
            ),
            add_metadata,
        ),
        route(
            Method::DELETE,
            "/{account}/machines/{id}/metadata",
            doc("DeleteAllMachineMetadata", "Remove every metadata key but credentials.", BodyDoc::None, RespDoc::Empty(204)),
            delete_all_metadata,
        ),
        route(
            Method::GET,
            "/{account}/machines/{id}/metadata/{key}",
            doc("GetMachineMetadata", "One metadata value (a JSON string).", BodyDoc::None, RespDoc::Schema(200, value_schema)),
            get_metadata,
        ),
        route(
            Method::DELETE,
            "/{account}/machines/{id}/metadata/{key}",
            doc("DeleteMachineMetadata", "Remove one metadata key.", BodyDoc::None, RespDoc::Empty(204)),
            delete_metadata,
        ),
        route(
            Method::POST,
            "/{account}/machines/{id}/snapshots",
            doc(
                "CreateMachineSnapshot",
                "Snapshot the machine (201, state creating).",
                BodyDoc::Schema(snapshot_create_schema),
                RespDoc::Schema(201, snapshot_schema),
            ),
            create_snapshot,
        ),
        route(
            Method::GET,
            "/{account}/machines/{id}/snapshots",
            doc("ListMachineSnapshots", "The machine's snapshots.", BodyDoc::None, RespDoc::Schema(200, snapshot_list_schema)),
            list_snapshots,
        ),
        route(
            Method::GET,
            "/{account}/machines/{id}/snapshots/{name}",
            doc("GetMachineSnapshot", "One snapshot.", BodyDoc::None, RespDoc::Schema(200, snapshot_schema)),
            get_snapshot,
        ),
        route(
            Method::POST,
            "/{account}/machines/{id}/snapshots/{name}",
            doc(
                "StartMachineFromSnapshot",
                "Roll the machine back to the snapshot and boot it (a running machine is stopped first); 202.",
                BodyDoc::Schema(snapshot_echo_schema),
                RespDoc::Empty(202),
            ),
            boot_snapshot,
        ),
        route(
            Method::DELETE,
            "/{account}/machines/{id}/snapshots/{name}",
            doc(
                "DeleteMachineSnapshot",
                "Delete a snapshot; 204, audited as delete_snapshot when done.",
                BodyDoc::None,
                RespDoc::Empty(204),
            ),
            delete_snapshot,
        ),
    ]
}

/// StartMachineFromSnapshot's body: the `triton` CLI echoes the machine and snapshot;
/// the path says which, so it is ignored.
fn snapshot_echo_schema() -> Value {
    json!({"type": "object", "description": "Ignored (the triton CLI echoes {id, name}).",
           "properties": {"id": {"type": "string"}, "name": {"type": "string"}}})
}

/// Runs a handler body that needs the live machine; a 410/404 answer passes through.
macro_rules! with_vm {
    ($s:expr, $c:expr, $id:expr) => {
        match live_machine_of(&$s, &$c, &$id).await {
            Ok(vm) => vm,
            Err(resp) => return Ok(resp),
        }
    };
}

/// Checks a tags/metadata body: a flat object of scalars (query parameters are not part
/// of it: the CLI sends stray ones like `?id=`).
fn flat_body(m: Map<String, Value>) -> Result<Map<String, Value>, CloudError> {
    for (k, v) in &m {
        if k.is_empty() || k.len() > 128 {
            return Err(invalid(k, "keys must be 1 to 128 characters"));
        }
        if !(v.is_string() || v.is_number() || v.is_boolean()) {
            return Err(invalid(k, "values must be strings, numbers or booleans"));
        }
    }
    Ok(m)
}

async fn update(s: &AppState, vm: &Vm, action: &str, fields: Value) -> Result<(), CloudError> {
    super::machines::update(s, vm, action, fields).await
}

fn tags_of(vm: &Vm) -> Map<String, Value> {
    vm.tags.clone().unwrap_or_default()
}

async fn list_tags(State(s): State<AppState>, Scoped(acct): Scoped, Path((_, id)): Path<(String, String)>) -> CloudResult {
    let vm = with_vm!(s, acct, id);
    ok(&tags_of(&vm))
}

async fn add_tags(
    State(s): State<AppState>,
    Scoped(acct): Scoped,
    Path((_, id)): Path<(String, String)>,
    BodyParams(body): BodyParams,
) -> CloudResult {
    let vm = with_vm!(s, acct, id);
    let add = flat_body(body)?;
    let mut tags = tags_of(&vm);
    tags.extend(add.clone());
    update(&s, &vm, "set_tags", json!({"set_tags": add})).await?;
    ok(&tags)
}

async fn replace_tags(
    State(s): State<AppState>,
    Scoped(acct): Scoped,
    Path((_, id)): Path<(String, String)>,
    BodyParams(body): BodyParams,
) -> CloudResult {
    let vm = with_vm!(s, acct, id);
    let tags = flat_body(body)?;
    update(&s, &vm, "replace_tags", json!({"tags": tags})).await?;
    ok(&tags)
}

async fn delete_tags(State(s): State<AppState>, Scoped(acct): Scoped, Path((_, id)): Path<(String, String)>) -> CloudResult {
    let vm = with_vm!(s, acct, id);
    update(&s, &vm, "replace_tags", json!({"tags": {}})).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn no_such(what: &str, key: &str) -> CloudError {
    CloudError(ApiError::new(404, "ResourceNotFound", format!("{what} {key} does not exist")))
}

async fn get_tag(State(s): State<AppState>, Scoped(acct): Scoped, Path((_, id, key)): Path<(String, String, String)>) -> CloudResult {
    let vm = with_vm!(s, acct, id);
    match tags_of(&vm).get(&key) {
        Some(v) => ok(v),
        None => Err(no_such("tag", &key)),
    }
}

async fn delete_tag(State(s): State<AppState>, Scoped(acct): Scoped, Path((_, id, key)): Path<(String, String, String)>) -> CloudResult {
    let vm = with_vm!(s, acct, id);
    if !tags_of(&vm).contains_key(&key) {
        return Err(no_such("tag", &key));
    }
    update(&s, &vm, "remove_tags", json!({"remove_tags": [key]})).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn metadata_of(vm: &Vm, credentials: bool) -> Map<String, Value> {
    let mut m = vm.customer_metadata.clone().unwrap_or_default();
    if !credentials {
        m.remove("credentials");
    }
    m
}

async fn list_metadata(
    State(s): State<AppState>,
    Scoped(acct): Scoped,
    Path((_, id)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> CloudResult {
    let vm = with_vm!(s, acct, id);
    let credentials = super::flag(&super::query_map(raw.as_deref()), "credentials");
    ok(&metadata_of(&vm, credentials))
}

async fn add_metadata(
    State(s): State<AppState>,
    Scoped(acct): Scoped,
    Path((_, id)): Path<(String, String)>,
    BodyParams(body): BodyParams,
) -> CloudResult {
    let vm = with_vm!(s, acct, id);
    let add: Map<String, Value> = flat_body(body)?
        .into_iter()
        .map(|(k, v)| match v {
            Value::String(s) => (k, Value::String(s)),
            other => (k, Value::String(other.to_string())),
        })
        .collect();
    let mut md = metadata_of(&vm, false);
    md.extend(add.clone());
    update(&s, &vm, "set_metadata", json!({"set_customer_metadata": add})).await?;
    ok(&md)
}

async fn delete_all_metadata(State(s): State<AppState>, Scoped(acct): Scoped, Path((_, id)): Path<(String, String)>) -> CloudResult {
    let vm = with_vm!(s, acct, id);
    let keys: Vec<String> = metadata_of(&vm, false).keys().cloned().collect();
    if !keys.is_empty() {
        update(&s, &vm, "replace_metadata", json!({"remove_customer_metadata": keys})).await?;
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn get_metadata(State(s): State<AppState>, Scoped(acct): Scoped, Path((_, id, key)): Path<(String, String, String)>) -> CloudResult {
    let vm = with_vm!(s, acct, id);
    match metadata_of(&vm, true).get(&key) {
        Some(Value::String(v)) => ok(v),
        Some(other) => ok(&other.to_string()),
        None => Err(no_such("metadata key", &key)),
    }
}

async fn delete_metadata(
    State(s): State<AppState>,
    Scoped(acct): Scoped,
    Path((_, id, key)): Path<(String, String, String)>,
) -> CloudResult {
    let vm = with_vm!(s, acct, id);
    if !metadata_of(&vm, true).contains_key(&key) {
        return Err(no_such("metadata key", &key));
    }
    update(&s, &vm, "remove_metadata", json!({"remove_customer_metadata": [key]})).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A snapshot as CloudAPI renders it.
pub fn render_snapshot(s: &Value) -> Value {
    let created = s.get("created_at").cloned().unwrap_or(Value::Null);
    json!({
        "name": s.get("name").cloned().unwrap_or(Value::Null),
        "state": s.get("state").and_then(Value::as_str).unwrap_or("created"),
        "created": created,
        "updated": created,
    })
}

/// The machine's snapshots, plus one named `pending` whose create job has not recorded
/// it yet.
async fn snapshots_of(s: &AppState, vm: &Vm) -> Result<Vec<Value>, CloudError> {
    let mut out: Vec<Value> = vm.snapshots.iter().flatten().map(render_snapshot).collect();
    for j in s.app.list_jobs(&nereid_types::query::Query::default(), Some(vm.uuid)).await? {
        if j.task == "snapshot" && !j.is_done() && j.params.get("op").and_then(Value::as_str) == Some("create") {
            let name = j.params.get("name").cloned().unwrap_or(Value::Null);
            if !out.iter().any(|o| o["name"] == name) {
                out.push(json!({"name": name, "state": "creating", "created": j.created_at, "updated": j.created_at}));
            }
        }
    }
    Ok(out)
}

async fn create_snapshot(
    State(s): State<AppState>,
    Scoped(acct): Scoped,
    Path((_, id)): Path<(String, String)>,
    BodyParams(body): BodyParams,
) -> CloudResult {
    let vm = with_vm!(s, acct, id);
    let p = body;
    let name = match p.get("name") {
        None | Some(Value::Null) => time::OffsetDateTime::now_utc()
            .format(time::macros::format_description!("[year][month][day]T[hour][minute][second]Z"))
            .map_err(|e| CloudError(ApiError::internal(e.to_string())))?,
        Some(Value::String(n)) => n.clone(),
        Some(_) => return Err(invalid("name", "must be a string")),
    };
    let job = s.app.snapshot_vm(vm.uuid, "create_snapshot", Some(&name)).await?;
    Ok(super::reply(StatusCode::CREATED, &json!({"name": name, "state": "creating", "created": job.created_at, "updated": job.created_at})))
}

async fn list_snapshots(State(s): State<AppState>, Scoped(acct): Scoped, Path((_, id)): Path<(String, String)>) -> CloudResult {
    let vm = with_vm!(s, acct, id);
    ok(&snapshots_of(&s, &vm).await?)
}

async fn get_snapshot(State(s): State<AppState>, Scoped(acct): Scoped, Path((_, id, name)): Path<(String, String, String)>) -> CloudResult {
    let vm = with_vm!(s, acct, id);
    match snapshots_of(&s, &vm).await?.into_iter().find(|x| x["name"] == json!(name)) {
        Some(x) => ok(&x),
        None => Err(no_such("snapshot", &name)),
    }
}

async fn delete_snapshot(
    State(s): State<AppState>,
    Scoped(acct): Scoped,
    Path((_, id, name)): Path<(String, String, String)>,
) -> CloudResult {
    let vm = with_vm!(s, acct, id);
    s.app.snapshot_vm(vm.uuid, "delete_snapshot", Some(&name)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn boot_snapshot(
    State(s): State<AppState>,
    Scoped(acct): Scoped,
    Path((_, id, name)): Path<(String, String, String)>,
) -> CloudResult {
    let vm = with_vm!(s, acct, id);
    // VMAPI's rollback_snapshot stops a running VM, rolls it back and boots it again (the
    // snapshot job asks the server for exactly that); a stopped one is rolled back and
    // then started here, which is what StartMachineFromSnapshot promises.
    let was_running = match vm.state.as_deref() {
        Some("running") => true,
        Some("stopped") => false,
        other => {
            return Err(CloudError(ApiError::new(
                409,
                "InvalidState",
                format!("instance {} is {}: it must be running or stopped to start from a snapshot", vm.uuid, other.unwrap_or("unknown")),
            )));
        }
    };
    let job = s.app.snapshot_vm(vm.uuid, "rollback_snapshot", Some(&name)).await?;
    if was_running {
        return Ok(StatusCode::ACCEPTED.into_response());
    }
    // Start once the rollback is done. Not durable across a headnode restart: the
    // rollback job is, and the machine then stays stopped at the snapshot.
    let app = s.app.clone();
    tokio::spawn(async move {
        match app.wait_job(job.uuid, std::time::Duration::from_secs(3600)).await {
            Ok(j) if j.execution == "succeeded" => {
                if let Err(e) = app.power_vm(j.vm_uuid, "start").await {
                    tracing::warn!(vm = %j.vm_uuid, error = %e, "starting from a snapshot: the rollback finished but start was refused");
                }
            }
            Ok(j) => tracing::warn!(vm = %j.vm_uuid, execution = %j.execution, "starting from a snapshot: the rollback did not succeed"),
            Err(e) => tracing::warn!(error = %e, "starting from a snapshot: lost track of the rollback job"),
        }
    });
    Ok(StatusCode::ACCEPTED.into_response())
}
