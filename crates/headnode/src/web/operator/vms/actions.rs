//! The VM page's forms: each `POST /vms/{uuid}/<action>` becomes one operator API
//! request (VMAPI's actions, as `nereid admin vm` makes them), then goes back to the VM's
//! page (303), where the job shows in the live region. A refusal re-renders the page with
//! the error in the form's section.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::Method;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::post;
use nereid_types::vm::NIC_FLAGS;
use nereid_types::{ApiError, FieldError};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::parse_uuid;
use super::show::{Failed, PairKind, vm_view};
use crate::web::api::enc;
use crate::web::form::{Fields, PostForm, invalid};
use crate::web::{Web, page};

/// The actions, each its own route.
const ACTIONS: &[&str] = &[
    "start",
    "stop",
    "reboot",
    "delete",
    "resize",
    "snapshot",
    "rollback",
    "delete-snapshot",
    "tag",
    "untag",
    "metadata",
    "unmetadata",
    "nic",
];

pub(super) fn routes() -> Router<Web> {
    ACTIONS.iter().fold(Router::new(), |r, a| {
        r.route(
            &format!("/vms/{{uuid}}/{a}"),
            post(move |State(web): State<Web>, Path(uuid): Path<String>, form: PostForm| act(web, a, uuid, form)),
        )
    })
}

/// How long a NIC switch change is waited for before the page is shown again.
const NIC_WAIT_SECS: u32 = 5;

/// One operator API request, and the page section whose form asked for it.
#[derive(Debug, PartialEq)]
struct Call {
    method: Method,
    path: String,
    body: Option<Value>,
    section: &'static str,
}

async fn act(web: Web, action: &'static str, uuid: String, PostForm { session: s, fields: f }: PostForm) -> Response {
    let Some(uuid) = parse_uuid(&uuid) else { return page::not_found(Some(&s)) };
    let (section, result) = match call_for(uuid, action, &f) {
        Ok(c) => (c.section, web.admin(c.method, &c.path, c.body.as_ref()).await),
        Err((section, e)) => (section, Err(e)),
    };
    // NIC switches apply live in a moment: wait a little for their job, so the page that
    // follows shows the checkboxes as they now are (a slower job shows in the live regions).
    if action == "nic"
        && let Ok(r) = &result
    {
        let job = page::field(&r.body, "job_uuid");
        if !job.is_empty() {
            let _ = web.admin_get(&format!("/jobs/{}/wait?timeout={NIC_WAIT_SECS}", enc(&job))).await;
        }
    }
    let result = result.map(|_| ());
    match result {
        Ok(()) => Redirect::to(&format!("/vms/{uuid}")).into_response(),
        Err(error) => vm_view(&web, &s, uuid, Some(Failed { section, error, fields: &f })).await,
    }
}

/// The request a form makes, or the form's own error (with its section).
fn call_for(uuid: Uuid, action: &str, f: &Fields) -> Result<Call, (&'static str, ApiError)> {
    let vm_action =
        |a: &str, body: Value, section| Call { method: Method::POST, path: format!("/vms/{uuid}?action={a}"), body: Some(body), section };
    let snap = |a: &str| {
        let name = f.get("snapshot_name").unwrap_or_default();
        Call {
            method: Method::POST,
            path: format!("/vms/{uuid}?action={a}&snapshot_name={}", enc(name)),
            body: Some(json!({})),
            section: "snapshots",
        }
    };
    Ok(match action {
        "start" | "stop" | "reboot" => vm_action(action, json!({}), "actions"),
        "delete" => Call { method: Method::DELETE, path: format!("/vms/{uuid}"), body: None, section: "actions" },
        "resize" => vm_action("update", resize_body(f).map_err(|e| ("resize", e))?, "resize"),
        "snapshot" => snap("create_snapshot"),
        "rollback" => snap("rollback_snapshot"),
        "delete-snapshot" => snap("delete_snapshot"),
        "tag" | "metadata" => {
            let kind = if action == "tag" { PairKind::Tags } else { PairKind::Metadata };
            let (section, key, _, _, _, prefix) = kind.names();
            let k = f.required(&format!("{prefix}_key")).map_err(|e| (section, invalid(vec![e])))?;
            let v = f.get(&format!("{prefix}_value")).unwrap_or_default();
            vm_action("update", json!({ format!("set_{key}"): { k: v } }), section)
        }
        "untag" | "unmetadata" => {
            let kind = if action == "untag" { PairKind::Tags } else { PairKind::Metadata };
            let (section, key, _, _, _, prefix) = kind.names();
            let k = f.required(&format!("{prefix}_key")).map_err(|e| (section, invalid(vec![e])))?;
            vm_action("update", json!({ format!("remove_{key}"): [k] }), section)
        }
        "nic" => {
            let mac = f.required("mac").map_err(|e| ("nics", invalid(vec![e])))?;
            let mut nic = Map::new();
            nic.insert("mac".into(), json!(mac));
            for flag in NIC_FLAGS {
                nic.insert((*flag).into(), json!(f.checked(flag)));
            }
            vm_action("update_nics", json!({ "nics": [nic] }), "nics")
        }
        other => return Err(("actions", ApiError::new(404, "ResourceNotFound", format!("{other} is not a VM action")))),
    })
}

/// VMAPI's resize (`action=update`): a package, or ram / vcpus / quota.
fn resize_body(f: &Fields) -> Result<Value, ApiError> {
    let mut body = Map::new();
    let mut errors = Vec::new();
    if let Some(p) = f.get("billing_id") {
        body.insert("billing_id".into(), json!(p));
    }
    for k in ["ram", "vcpus", "quota"] {
        match f.number(k) {
            Ok(Some(n)) => {
                body.insert(k.into(), json!(n));
            }
            Ok(None) => {}
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() && body.is_empty() {
        errors.push(FieldError::invalid("billing_id", "choose a package, or give ram, vcpus or quota"));
    }
    if errors.is_empty() { Ok(Value::Object(body)) } else { Err(invalid(errors)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VM: Uuid = Uuid::from_u128(7);

    #[test]
    fn forms_become_vmapi_actions() {
        let c = call_for(VM, "resize", &Fields::parse(b"billing_id=&ram=2048&vcpus=&quota=")).unwrap();
        assert_eq!((c.path.as_str(), c.body), (format!("/vms/{VM}?action=update").as_str(), Some(json!({"ram": 2048}))));
        let c = call_for(VM, "tag", &Fields::parse(b"tag_key=role&tag_value=db")).unwrap();
        assert_eq!(c.body, Some(json!({"set_tags": {"role": "db"}})));
        let c = call_for(VM, "unmetadata", &Fields::parse(b"metadata_key=x")).unwrap();
        assert_eq!(c.body, Some(json!({"remove_customer_metadata": ["x"]})));
        let c = call_for(VM, "rollback", &Fields::parse(b"snapshot_name=before%20upgrade")).unwrap();
        assert!(c.path.ends_with("action=rollback_snapshot&snapshot_name=before+upgrade"), "{}", c.path);
        let c = call_for(VM, "nic", &Fields::parse(b"mac=90:b8:d0:00:00:01&allow_ip_spoofing=on")).unwrap();
        let nic = &c.body.unwrap()["nics"][0];
        assert_eq!((nic["allow_ip_spoofing"].as_bool(), nic["allow_mac_spoofing"].as_bool()), (Some(true), Some(false)));
        assert_eq!(call_for(VM, "delete", &Fields::default()).unwrap().method, Method::DELETE);
    }

    #[test]
    fn an_empty_or_bad_resize_names_the_field() {
        let (section, e) = call_for(VM, "resize", &Fields::default()).unwrap_err();
        assert_eq!((section, e.errors[0].field.as_str()), ("resize", "billing_id"));
        let (_, e) = call_for(VM, "resize", &Fields::parse(b"ram=lots")).unwrap_err();
        assert_eq!(e.errors[0].field, "ram");
        let (section, e) = call_for(VM, "tag", &Fields::parse(b"tag_value=x")).unwrap_err();
        assert_eq!((section, e.errors[0].field.as_str()), ("tags", "tag_key"));
    }
}
