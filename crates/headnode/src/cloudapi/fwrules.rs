//! CloudAPI firewall rules: `/:login/fwrules[/:id]` (list, create, get, update, delete),
//! `/:id/enable` and `/:id/disable`, the machines a rule affects, and a machine's rules.
//!
//! A tenant sees its own rules and the global ones; it changes only its own (a global
//! rule answers `InvalidArgument` "global rules cannot be modified", another account's
//! `ResourceNotFound`). A rule renders as `{id, enabled, rule, global?, description?,
//! log}`. Bad rule text is `InvalidArgument` (409) with the parser's message, which the
//! `triton` CLI prints as `error (InvalidArgument): rule: …` and exits 1.

use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use axum::response::IntoResponse;
use nereid_types::ApiError;
use nereid_types::fwrule::FwRule;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::{BodyParams, CloudError, CloudResult, Scoped, invalid, missing, ok, render};
use crate::app::fwrules::{Actor, RuleFilter};
use crate::http::{AppState, Auth, BodyDoc, Doc, RespDoc, Route};

/// A rule as CloudAPI renders it.
pub fn rule(r: &FwRule) -> Value {
    let mut v = json!({"id": r.uuid, "enabled": r.enabled, "rule": r.rule, "log": r.log});
    if r.global {
        v["global"] = json!(true);
    }
    if let Some(d) = &r.description {
        v["description"] = json!(d);
    }
    v
}

fn rule_schema() -> Value {
    json!({"type": "object", "required": ["id", "enabled", "rule"], "properties": {
        "id": {"type": "string", "format": "uuid"}, "enabled": {"type": "boolean"}, "rule": {"type": "string"},
        "global": {"type": "boolean", "description": "An operator-wide rule: read-only."},
        "description": {"type": "string"}, "log": {"type": "boolean"}}})
}

fn rule_list_schema() -> Value {
    json!({"type": "array", "items": rule_schema()})
}

fn machine_list_schema() -> Value {
    json!({"type": "array", "items": super::machines::machine_schema()})
}

fn create_schema() -> Value {
    json!({"type": "object", "required": ["rule"], "properties": {
        "rule": {"type": "string", "example": "FROM any TO tag \"role\" = \"web\" ALLOW tcp PORT 80"},
        "enabled": {"type": "boolean", "description": "Default false (the triton CLI always sends it)."},
        "description": {"type": "string"}, "log": {"type": "boolean"}}})
}

fn update_schema() -> Value {
    json!({"type": "object", "properties": {
        "rule": {"type": "string"}, "enabled": {"type": "boolean"}, "description": {"type": "string"}, "log": {"type": "boolean"}}})
}

fn doc(id: &'static str, summary: &'static str, body: BodyDoc, response: RespDoc) -> Doc {
    Doc { id, tag: "CloudAPI", summary, query: &[], body, response }
}

pub fn routes() -> Vec<Route> {
    vec![
        Route::new(
            Method::GET,
            "/{account}/fwrules",
            doc("ListFirewallRules", "The account's rules and the global ones.", BodyDoc::None, RespDoc::Schema(200, rule_list_schema)),
            list,
        )
        .auth(Auth::Signature),
        Route::new(
            Method::POST,
            "/{account}/fwrules",
            doc(
                "CreateFirewallRule",
                "Create a rule (201); bad rule text is InvalidArgument with the parser's message.",
                BodyDoc::Schema(create_schema),
                RespDoc::Schema(201, rule_schema),
            ),
            create,
        )
        .auth(Auth::Signature),
        Route::new(
            Method::GET,
            "/{account}/fwrules/{id}",
            doc("GetFirewallRule", "A rule.", BodyDoc::None, RespDoc::Schema(200, rule_schema)),
            get_one,
        )
        .auth(Auth::Signature),
        Route::new(
            Method::POST,
            "/{account}/fwrules/{id}",
            doc(
                "UpdateFirewallRule",
                "Change a rule's text, enabled, description or log (global rules: InvalidArgument).",
                BodyDoc::Schema(update_schema),
                RespDoc::Schema(200, rule_schema),
            ),
            update,
        )
        .auth(Auth::Signature),
        Route::new(
            Method::DELETE,
            "/{account}/fwrules/{id}",
            doc("DeleteFirewallRule", "Delete a rule.", BodyDoc::None, RespDoc::Empty(204)),
            delete,
        )
        .auth(Auth::Signature),
        Route::new(
            Method::POST,
            "/{account}/fwrules/{id}/enable",
            doc("EnableFirewallRule", "Enable a rule.", BodyDoc::None, RespDoc::Schema(200, rule_schema)),
            enable,
        )
        .auth(Auth::Signature),
        Route::new(
            Method::POST,
            "/{account}/fwrules/{id}/disable",
            doc("DisableFirewallRule", "Disable a rule.", BodyDoc::None, RespDoc::Schema(200, rule_schema)),
            disable,
        )
        .auth(Auth::Signature),
        Route::new(
            Method::GET,
            "/{account}/fwrules/{id}/machines",
            doc(
                "ListFirewallRuleMachines",
                "The account's machines the rule affects.",
                BodyDoc::None,
                RespDoc::Schema(200, machine_list_schema),
            ),
            machines,
        )
        .auth(Auth::Signature),
        Route::new(
            Method::GET,
            "/{account}/machines/{id}/fwrules",
            doc("ListMachineFirewallRules", "The rules that affect the machine.", BodyDoc::None, RespDoc::Schema(200, rule_list_schema)),
            machine_rules,
        )
        .auth(Auth::Signature),
    ]
}

fn rule_id(id: &str) -> Result<Uuid, CloudError> {
    Uuid::parse_str(id).map_err(|_| CloudError(ApiError::new(404, "ResourceNotFound", format!("firewall rule {id} does not exist"))))
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

/// The fields CloudAPI takes (others are ignored, as CloudAPI does), typed.
fn input(p: &Map<String, Value>) -> Result<Map<String, Value>, CloudError> {
    let mut out = Map::new();
    match p.get("rule") {
        None | Some(Value::Null) => {}
        Some(Value::String(r)) => {
            out.insert("rule".into(), json!(r));
        }
        Some(_) => return Err(invalid("rule", "must be a string")),
    }
    match p.get("description") {
        None => {}
        Some(Value::Null) => {
            out.insert("description".into(), Value::Null);
        }
        Some(Value::String(d)) => {
            out.insert("description".into(), if d.is_empty() { Value::Null } else { json!(d) });
        }
        Some(_) => return Err(invalid("description", "must be a string")),
    }
    for k in ["enabled", "log"] {
        if let Some(b) = bool_param(p, k)? {
            out.insert(k.into(), json!(b));
        }
    }
    Ok(out)
}

async fn list(State(s): State<AppState>, Scoped(acct): Scoped) -> CloudResult {
    let rules = s.app.list_fwrules(Actor::Tenant(acct.uuid), &RuleFilter::default()).await?;
    ok(&rules.iter().map(rule).collect::<Vec<_>>())
}

async fn create(State(s): State<AppState>, Scoped(acct): Scoped, BodyParams(p): BodyParams) -> CloudResult {
    let mut body = input(&p)?;
    if body.get("rule").and_then(Value::as_str).is_none_or(|r| r.trim().is_empty()) {
        return Err(missing("rule"));
    }
    body.retain(|_, v| !v.is_null());
    body.insert("owner_uuid".into(), json!(acct.uuid));
    let r = s.app.create_fwrule(&body, Actor::Tenant(acct.uuid)).await?;
    Ok(super::reply(StatusCode::CREATED, &rule(&r)))
}

async fn get_one(State(s): State<AppState>, Scoped(acct): Scoped, Path((_, id)): Path<(String, String)>) -> CloudResult {
    let (r, _) = s.app.get_fwrule(rule_id(&id)?, Actor::Tenant(acct.uuid)).await?;
    ok(&rule(&r))
}

async fn update(
    State(s): State<AppState>,
    Scoped(acct): Scoped,
    Path((_, id)): Path<(String, String)>,
    BodyParams(p): BodyParams,
) -> CloudResult {
    let body = input(&p)?;
    if body.get("rule").is_some_and(|r| r.as_str().is_none_or(|r| r.trim().is_empty())) {
        return Err(invalid("rule", "must not be empty"));
    }
    let r = s.app.update_fwrule(rule_id(&id)?, &body, Actor::Tenant(acct.uuid)).await?;
    ok(&rule(&r))
}

async fn set_enabled(s: &AppState, acct: Uuid, id: &str, enabled: bool) -> CloudResult {
    let body = json!({"enabled": enabled});
    let r = s.app.update_fwrule(rule_id(id)?, body.as_object().unwrap_or(&Map::new()), Actor::Tenant(acct)).await?;
    ok(&rule(&r))
}

async fn enable(State(s): State<AppState>, Scoped(acct): Scoped, Path((_, id)): Path<(String, String)>) -> CloudResult {
    set_enabled(&s, acct.uuid, &id, true).await
}

async fn disable(State(s): State<AppState>, Scoped(acct): Scoped, Path((_, id)): Path<(String, String)>) -> CloudResult {
    set_enabled(&s, acct.uuid, &id, false).await
}

async fn delete(State(s): State<AppState>, Scoped(acct): Scoped, Path((_, id)): Path<(String, String)>) -> CloudResult {
    s.app.delete_fwrule(rule_id(&id)?, Actor::Tenant(acct.uuid)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn machines(State(s): State<AppState>, Scoped(acct): Scoped, Path((_, id)): Path<(String, String)>) -> CloudResult {
    let (r, _) = s.app.get_fwrule(rule_id(&id)?, Actor::Tenant(acct.uuid)).await?;
    let vms = s.app.fwrule_vms(&r, Some(acct.uuid)).await?;
    ok(&vms.iter().map(|v| render::machine(v, false)).collect::<Vec<_>>())
}

async fn machine_rules(State(s): State<AppState>, Scoped(acct): Scoped, Path((_, id)): Path<(String, String)>) -> CloudResult {
    let vm = super::machines::machine_of(&s, &acct, &id).await?;
    let rules = s.app.vm_fwrules(&vm).await?;
    ok(&rules.iter().map(rule).collect::<Vec<_>>())
}
