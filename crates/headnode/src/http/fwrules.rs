//! FWAPI endpoints: `/fwrules` (every account's rules and the global ones), the VMs a
//! rule affects, the rules that affect a VM. Answers as FWAPI does: 202 with the rule for
//! a create or an update (the nodes get it in the next policy push), 422
//! `InvalidParameters` naming the field (a bad rule text: the parser's message).

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{Method, StatusCode};
use axum::response::IntoResponse;
use nereid_types::query::{LIMIT, OFFSET, Param, QKind};
use nereid_types::spec::{self, Mode, Usage};
use serde_json::{Value, json};
use uuid::Uuid;

use super::{Api, AppState, BodyDoc, Doc, HttpResult, RespDoc, Route, json as json_resp, ok, parse_query, path_uuid, read_object};
use crate::app::fwrules::{Actor, FIELDS, RuleFilter};

/// The service tag (answers as NAPI does: 422 `InvalidParameters`).
pub const TAG: &str = "FWAPI";

const LIST_PARAMS: &[Param] = &[
    Param::new("owner_uuid", QKind::Uuid, "Rules of this account."),
    Param::new("global", QKind::Bool, "Global (operator-wide) rules only, or none."),
    Param::new("enabled", QKind::Bool, "Enabled rules only, or disabled ones."),
    LIMIT,
    OFFSET,
];

fn vm_list_schema() -> Value {
    json!({"type": "array", "items": {"type": "object", "description": "A VM as GET /vms renders it."}})
}

pub fn routes() -> Vec<Route> {
    let doc = |id, summary, query, body, response| Doc { id, tag: TAG, summary, query, body, response };
    vec![
        Route::new(
            Method::GET,
            "/fwrules",
            doc("ListRules", "List firewall rules, oldest first.", LIST_PARAMS, BodyDoc::None, RespDoc::List(FIELDS)),
            list,
        ),
        Route::new(
            Method::POST,
            "/fwrules",
            doc(
                "CreateRule",
                "Create a firewall rule: owner_uuid, or global=true for an operator-wide one (202: the nodes follow).",
                &[],
                BodyDoc::Fields(FIELDS, Usage::Create),
                RespDoc::Object(202, FIELDS),
            ),
            create,
        ),
        Route::new(
            Method::GET,
            "/fwrules/{uuid}",
            doc("GetRule", "Get a firewall rule.", &[], BodyDoc::None, RespDoc::Object(200, FIELDS)),
            get,
        ),
        Route::new(
            Method::PUT,
            "/fwrules/{uuid}",
            doc(
                "UpdateRule",
                "Change a rule's text, enabled, description or log (202: the nodes follow).",
                &[],
                BodyDoc::Fields(FIELDS, Usage::Update),
                RespDoc::Object(202, FIELDS),
            ),
            update,
        ),
        Route::new(
            Method::DELETE,
            "/fwrules/{uuid}",
            doc("DeleteRule", "Delete a firewall rule.", &[], BodyDoc::None, RespDoc::Empty(204)),
            delete,
        ),
        Route::new(
            Method::GET,
            "/fwrules/{uuid}/vms",
            doc("ListRuleVms", "The VMs the rule affects.", &[], BodyDoc::None, RespDoc::Schema(200, vm_list_schema)),
            rule_vms,
        ),
        Route::new(
            Method::GET,
            "/firewalls/vms/{uuid}",
            doc("GetVmRules", "The rules that affect a VM (its owner's and global ones).", &[], BodyDoc::None, RespDoc::List(FIELDS)),
            vm_rules,
        ),
    ]
}

async fn list(State(s): State<AppState>, RawQuery(raw): RawQuery) -> HttpResult {
    let q = parse_query(Api::Napi, LIST_PARAMS, raw.as_deref())?;
    let f = RuleFilter {
        owner_uuid: q.str("owner_uuid").and_then(|o| Uuid::parse_str(o).ok()),
        global: q.bool("global"),
        enabled: q.bool("enabled"),
    };
    let rules = s.app.list_fwrules(Actor::Operator, &f).await?;
    let page: Vec<_> =
        rules.into_iter().skip(usize::try_from(q.offset()).unwrap_or(0)).take(usize::try_from(q.limit(1000)).unwrap_or(1000)).collect();
    ok(&page)
}

async fn create(State(s): State<AppState>, body: Body) -> HttpResult {
    let input = read_object(body).await?;
    Ok(json_resp(StatusCode::ACCEPTED, &s.app.create_fwrule(&input, Actor::Operator).await?))
}

async fn get(State(s): State<AppState>, Path(uuid): Path<String>) -> HttpResult {
    let uuid = path_uuid(Api::Napi, "uuid", &uuid)?;
    ok(&s.app.get_fwrule(uuid, Actor::Operator).await?.0)
}

async fn update(State(s): State<AppState>, Path(uuid): Path<String>, body: Body) -> HttpResult {
    let uuid = path_uuid(Api::Napi, "uuid", &uuid)?;
    let input = read_object(body).await?;
    // The body is judged before the rule is looked up (bad input is named either way).
    let errors = spec::check(FIELDS, &input, Mode::Update, &["uuid", "owner_uuid", "global"]);
    if !errors.is_empty() {
        return Err(Api::Napi.invalid(errors).into());
    }
    Ok(json_resp(StatusCode::ACCEPTED, &s.app.update_fwrule(uuid, &input, Actor::Operator).await?))
}

async fn delete(State(s): State<AppState>, Path(uuid): Path<String>) -> HttpResult {
    let uuid = path_uuid(Api::Napi, "uuid", &uuid)?;
    s.app.delete_fwrule(uuid, Actor::Operator).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn rule_vms(State(s): State<AppState>, Path(uuid): Path<String>) -> HttpResult {
    let uuid = path_uuid(Api::Napi, "uuid", &uuid)?;
    let (rule, _) = s.app.get_fwrule(uuid, Actor::Operator).await?;
    let vms = s.app.fwrule_vms(&rule, None).await?;
    ok(&vms.iter().map(nereid_types::vm::render).collect::<Vec<_>>())
}

async fn vm_rules(State(s): State<AppState>, Path(uuid): Path<String>) -> HttpResult {
    let uuid = path_uuid(Api::Napi, "uuid", &uuid)?;
    let (vm, _) = s.app.get_vm(uuid, None).await?;
    ok(&s.app.vm_fwrules(&vm).await?)
}
