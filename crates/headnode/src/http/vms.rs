//! VMAPI endpoints: `/vms`, `/vms/{uuid}`, `/vms/{uuid}/jobs`.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::IntoResponse;
use nereid_types::query::{LIMIT, OFFSET, Param, QKind};
use nereid_types::spec::{Field, Kind, Usage};
use nereid_types::vm::{self, CREATE_FIELDS, UPDATE_FIELDS};
use nereid_types::{ApiError, FieldError};
use serde_json::{Value, json};
use uuid::Uuid;

use super::{Api, AppState, BodyDoc, Doc, HttpResult, RespDoc, Route, json as json_resp, ok, parse_query, path_uuid, read_object};

/// Fields of a rendered VM (for the API document).
const VM_FIELDS: &[Field] = &[
    Field::new("uuid", Kind::Uuid, "VM UUID.").read_only(),
    Field::new("alias", Kind::Str { max: 189, check: None }, "Display name.").read_only(),
    Field::new("brand", Kind::Str { max: 32, check: None }, "bhyve or kvm.").read_only(),
    Field::new("state", Kind::Str { max: 32, check: None }, "provisioning, running, stopping, stopped, failed, destroyed.").read_only(),
    Field::new("owner_uuid", Kind::Uuid, "Owner.").read_only(),
    Field::new("server_uuid", Kind::Uuid, "Server it runs on.").read_only(),
    Field::new("billing_id", Kind::Uuid, "Package.").read_only(),
    Field::new("ram", Kind::Int { min: 0, max: i64::MAX, multiple_of: None, unit: Some("MiB") }, "Guest RAM (MiB).").read_only(),
    Field::new("quota", Kind::Int { min: 0, max: i64::MAX, multiple_of: None, unit: Some("GiB") }, "Disk quota (GiB).").read_only(),
    Field::new("nics", super::ARRAY_OF_OBJECTS, "NICs.").read_only(),
    Field::new("disks", super::ARRAY_OF_OBJECTS, "Disks.").read_only(),
];

const LIST_PARAMS: &[Param] = &[
    Param::new("owner_uuid", QKind::Str { max: 4096 }, "Owner (comma-separated alternatives)."),
    Param::new("server_uuid", QKind::Str { max: 4096 }, "Server (comma-separated alternatives)."),
    Param::new(
        "state",
        QKind::Enum(vm::STATE_FILTERS),
        "running, stopped, active (not destroyed or failed), destroyed, provisioning, failed.",
    ),
    Param::new("alias", QKind::Str { max: 189 }, "Alias prefix."),
    Param::new("brand", QKind::Str { max: 64 }, "Brand (comma-separated alternatives)."),
    Param::new("billing_id", QKind::Str { max: 4096 }, "Package."),
    Param::new("image_uuid", QKind::Str { max: 4096 }, "Image."),
    Param::new("uuid", QKind::Str { max: 40_000 }, "VM UUIDs (comma-separated)."),
    Param::new("uuids", QKind::Str { max: 40_000 }, "VM UUIDs (comma-separated)."),
    Param::prefix("tag.", "tag.<key>=<value> (* = any value)."),
    LIMIT,
    OFFSET,
];
const GET_PARAMS: &[Param] = &[
    Param::new(
        "sync",
        QKind::Bool,
        "Ask the server; a VM it does not have is looked for on every other server: found, the record moves there; found nowhere, it is marked destroyed.",
    ),
    Param::new("owner_uuid", QKind::Uuid, "404 unless the VM is this owner's."),
];
const ACTION_PARAMS: &[Param] = &[
    Param::new(
        "action",
        QKind::Enum(vm::ACTIONS),
        "start, stop, reboot, update, create_snapshot, rollback_snapshot, delete_snapshot, add_nics, update_nics, remove_nics, create_image or migrate (required).",
    ),
    Param::new("snapshot_name", QKind::Str { max: 64 }, "The snapshot (snapshot actions)."),
    Param::new("sync", QKind::Bool, "Wait for the job before answering."),
    super::migrations::MIGRATE_PARAMS[0],
    super::migrations::MIGRATE_PARAMS[1],
    super::migrations::MIGRATE_PARAMS[2],
    super::migrations::MIGRATE_PARAMS[3],
    super::migrations::MIGRATE_PARAMS[4],
    super::migrations::MIGRATE_PARAMS[5],
];
const SYNC: &[Param] = &[Param::new("sync", QKind::Bool, "Wait for the job before answering.")];
const JOBS_PARAMS: &[Param] = &[
    Param::new("execution", QKind::Enum(nereid_types::job::EXECUTIONS), "Jobs in this state."),
    Param::new("task", QKind::Enum(nereid_types::job::TASKS), "Jobs of this kind."),
    LIMIT,
    OFFSET,
];

fn accepted_schema() -> Value {
    json!({"type": "object", "properties": {"vm_uuid": {"type": "string", "format": "uuid"}, "job_uuid": {"type": "string", "format": "uuid"}, "placement": {"type": "object"}}})
}
fn put_schema() -> Value {
    json!({"type": "object", "description": "Fields of the VM record to change (a patch). Send If-Match with the ETag GetVm answered. owner_uuid, billing_id, brand, ram and cpu_cap cannot be erased."})
}
fn jobs_schema() -> Value {
    json!({"type": "array", "items": {"type": "object"}})
}

pub fn routes() -> Vec<Route> {
    let doc = |id, summary, query, body, response| Doc { id, tag: "VMAPI", summary, query, body, response };
    vec![
        Route::new(
            Method::GET,
            "/vms",
            doc("ListVms", "List VMs; x-joyent-resource-count carries the total.", LIST_PARAMS, BodyDoc::None, RespDoc::List(VM_FIELDS)),
            list,
        ),
        Route::new(
            Method::POST,
            "/vms",
            doc(
                "CreateVm",
                "Validate, size, place and claim capacity in one step, then provision in a job (202). A placement failure answers 409 with every server's reason.",
                SYNC,
                BodyDoc::Fields(CREATE_FIELDS, Usage::Create),
                RespDoc::Schema(202, accepted_schema),
            ),
            create,
        ),
        Route::new(
            Method::GET,
            "/vms/{uuid}",
            doc("GetVm", "Get a VM (ETag = its record generation, for PutVm).", GET_PARAMS, BodyDoc::None, RespDoc::Object(200, VM_FIELDS)),
            get,
        ),
        Route::new(
            Method::POST,
            "/vms/{uuid}",
            doc(
                "VmAction",
                "start, stop, reboot, update (resize included), a snapshot action, a NIC action, or migrate (a migration action: 202 {job_uuid, migration}), as a job. \
                 The body documented is update's; add_nics takes {networks (as CreateVm's) | macs}, \
                 update_nics {nics: [{mac, primary?, allow_*?}]}, remove_nics {macs}.",
                ACTION_PARAMS,
                BodyDoc::Fields(UPDATE_FIELDS, Usage::Update),
                RespDoc::Schema(202, accepted_schema),
            ),
            action,
        ),
        Route::new(
            Method::DELETE,
            "/vms/{uuid}",
            doc("DeleteVm", "Destroy a VM (a job).", SYNC, BodyDoc::None, RespDoc::Schema(202, accepted_schema)),
            delete,
        ),
        Route::new(
            Method::PUT,
            "/vms/{uuid}",
            doc(
                "PutVm",
                "Operator repair: patch the record (a damaged one too), checked with If-Match; values that cannot be true are refused per field.",
                &[],
                BodyDoc::Schema(put_schema),
                RespDoc::Object(200, VM_FIELDS),
            ),
            put,
        ),
        Route::new(
            Method::GET,
            "/vms/{uuid}/jobs",
            doc("ListVmJobs", "The VM's jobs, newest first.", JOBS_PARAMS, BodyDoc::None, RespDoc::Schema(200, jobs_schema)),
            jobs,
        ),
    ]
}

fn accepted(vm: Uuid, job: Uuid, extra: Option<Value>) -> HttpResult {
    let mut body = json!({"vm_uuid": vm, "job_uuid": job});
    if let Some(e) = extra {
        body["placement"] = e;
    }
    let mut resp = json_resp(StatusCode::ACCEPTED, &body);
    if let Ok(v) = HeaderValue::from_str(&format!("/jobs/{job}")) {
        resp.headers_mut().insert("workflow-api", v);
    }
    Ok(resp)
}

async fn finish(s: &AppState, vm: Uuid, job: Uuid, sync: bool, extra: Option<Value>) -> HttpResult {
    if sync {
        let j = s.app.wait_job(job, Duration::from_secs(3600)).await?;
        let (v, _) = s.app.get_vm(vm, None).await?;
        let mut body = vm::render(&v);
        body["job_uuid"] = json!(job);
        body["job_execution"] = json!(j.execution);
        return ok(&body);
    }
    accepted(vm, job, extra)
}

async fn list(State(s): State<AppState>, RawQuery(raw): RawQuery) -> HttpResult {
    let q = parse_query(Api::Papi, LIST_PARAMS, raw.as_deref())?;
    let (body, total) = s.app.list_vms_rendered(&q).await?;
    let mut resp = (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body).into_response();
    if let Ok(v) = HeaderValue::from_str(&total.to_string()) {
        resp.headers_mut().insert("x-joyent-resource-count", v);
    }
    Ok(resp)
}

async fn create(State(s): State<AppState>, RawQuery(raw): RawQuery, body: Body) -> HttpResult {
    let q = parse_query(Api::Papi, SYNC, raw.as_deref())?;
    let input = read_object(body).await?;
    // `sync` may come either way; CreateVm validates the body's like any field.
    let sync = q.flag("sync") || input.get("sync").and_then(Value::as_bool).unwrap_or(false);
    let c = s.app.create_vm(&input).await?;
    finish(&s, c.vm.uuid, c.job.uuid, sync, Some(c.placement)).await
}

async fn get(State(s): State<AppState>, Path(uuid): Path<String>, RawQuery(raw): RawQuery) -> HttpResult {
    let q = parse_query(Api::Papi, GET_PARAMS, raw.as_deref())?;
    let uuid = path_uuid(Api::Papi, "uuid", &uuid)?;
    let owner = q.str("owner_uuid").and_then(|o| Uuid::parse_str(o).ok());
    if q.flag("sync") {
        s.app.get_vm_entry(uuid, owner).await?;
        s.app.sync_vm(uuid).await?;
    }
    let (v, generation) = s.app.get_vm_entry(uuid, owner).await?;
    let mut body = vm::render_entry(&v);
    if let nereid_types::damaged::Stored::Ok(record) = &v
        && let Some(names) = s.app.vm_dns_names(record, None).await?
    {
        body["dns_names"] = serde_json::json!(names);
    }
    let mut resp = json_resp(StatusCode::OK, &body);
    if let Ok(e) = HeaderValue::from_str(&format!("\"{generation}\"")) {
        resp.headers_mut().insert(header::ETAG, e);
    }
    Ok(resp)
}

async fn action(State(s): State<AppState>, Path(uuid): Path<String>, RawQuery(raw): RawQuery, body: Body) -> HttpResult {
    let q = parse_query(Api::Papi, ACTION_PARAMS, raw.as_deref())?;
    let uuid = path_uuid(Api::Papi, "uuid", &uuid)?;
    let input = read_object(body).await?;
    let Some(action) = q.str("action") else { return Err(ApiError::validation_409(vec![FieldError::missing("action")]).into()) };
    if action == "migrate" {
        return super::migrations::vm_migrate(&s, uuid, &q, &input).await;
    }
    if let Some(p) = super::migrations::MIGRATE_PARAMS.iter().find(|p| q.str(p.name).is_some()) {
        return Err(ApiError::validation_409(vec![FieldError::invalid(p.name, format!("action={action} takes no {}", p.name))]).into());
    }
    if q.str("snapshot_name").is_some() && !action.ends_with("_snapshot") {
        return Err(ApiError::validation_409(vec![FieldError::invalid(
            "snapshot_name",
            format!("action={action} takes no snapshot_name"),
        )])
        .into());
    }
    let job = match action {
        "update" => s.app.update_vm(uuid, &input).await?,
        "add_nics" => s.app.add_nics(uuid, &input).await?,
        "update_nics" => s.app.update_nics(uuid, &input).await?,
        "remove_nics" => s.app.remove_nics(uuid, &input).await?,
        // An image of the VM's boot disk: Triton's body ({manifest: {name, version,
        // description, homepage, eula, acl, tags}, image_uuid?, imgapi_url?, compression?,
        // incremental?}) or the manifest itself; the job's params name the new image.
        "create_image" => {
            let (input, image_uuid) = crate::app::image_create::vmapi_body(&input).map_err(ApiError::invalid_parameter)?;
            s.app.create_image_from_vm(uuid, &input, None, image_uuid).await?.1
        }
        snap @ ("create_snapshot" | "rollback_snapshot" | "delete_snapshot") => {
            if !input.is_empty() {
                return Err(ApiError::validation_409(vec![FieldError::invalid("body", format!("action={snap} takes no body"))]).into());
            }
            s.app.snapshot_vm(uuid, snap, q.str("snapshot_name")).await?
        }
        other => {
            if !input.is_empty() {
                return Err(ApiError::validation_409(vec![FieldError::invalid("body", format!("action={other} takes no body"))]).into());
            }
            s.app.power_vm(uuid, other).await?
        }
    };
    finish(&s, uuid, job.uuid, q.flag("sync"), None).await
}

async fn delete(State(s): State<AppState>, Path(uuid): Path<String>, RawQuery(raw): RawQuery) -> HttpResult {
    let q = parse_query(Api::Papi, SYNC, raw.as_deref())?;
    let uuid = path_uuid(Api::Papi, "uuid", &uuid)?;
    let job = s.app.delete_vm(uuid).await?;
    finish(&s, uuid, job.uuid, q.flag("sync"), None).await
}

async fn put(State(s): State<AppState>, Path(uuid): Path<String>, headers: HeaderMap, body: Body) -> HttpResult {
    let uuid = path_uuid(Api::Papi, "uuid", &uuid)?;
    let input = read_object(body).await?;
    let Some(tag) = headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok()) else {
        return Err(ApiError::new(
            428,
            "PreconditionRequired",
            "PutVm needs If-Match: <the ETag GetVm answered>, so a repair never overwrites a change it did not see",
        )
        .into());
    };
    let Ok(generation) = tag.trim().trim_start_matches("W/").trim_matches('"').parse::<i64>() else {
        return Err(ApiError::new(412, "PreconditionFailed", format!("If-Match {tag:?} is not an ETag GetVm answered")).into());
    };
    let (v, g) = s.app.put_vm(uuid, &input, generation).await?;
    let mut resp = json_resp(StatusCode::OK, &vm::render(&v));
    if let Ok(e) = HeaderValue::from_str(&format!("\"{g}\"")) {
        resp.headers_mut().insert(header::ETAG, e);
    }
    Ok(resp)
}

async fn jobs(State(s): State<AppState>, Path(uuid): Path<String>, RawQuery(raw): RawQuery) -> HttpResult {
    let q = parse_query(Api::Papi, JOBS_PARAMS, raw.as_deref())?;
    let uuid = path_uuid(Api::Papi, "uuid", &uuid)?;
    ok(&s.app.list_jobs(&q, Some(uuid)).await?.iter().map(nereid_types::job::render).collect::<Vec<_>>())
}
