//! CloudAPI's account endpoints: ping, the account, its keys, datacenters, services,
//! config, limits.

use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use axum::response::IntoResponse;
use nereid_types::ApiError;
use nereid_types::account::{self, TENANT_UPDATABLE, render_cloudapi, render_key_cloudapi};
use nereid_types::spec::{Field, Kind, Usage};
use serde_json::{Map, Value, json};

use super::{CloudError, CloudResult, Params, Scoped, invalid, missing, ok};
use crate::http::{AppState, Auth, BodyDoc, Doc, RespDoc, Route};

const ACCOUNT: &[Field] = &[
    Field::new("id", Kind::Uuid, "Account UUID."),
    Field::new("login", Kind::Str { max: 32, check: None }, "Login."),
    Field::new("email", Kind::Str { max: 256, check: None }, "Email."),
    Field::new("companyName", Kind::Str { max: 256, check: None }, "Company."),
    Field::new("firstName", Kind::Str { max: 128, check: None }, "Given name."),
    Field::new("lastName", Kind::Str { max: 128, check: None }, "Surname."),
    Field::new("address", Kind::Str { max: 512, check: None }, "Postal address."),
    Field::new("postalCode", Kind::Str { max: 32, check: None }, "Postal code."),
    Field::new("city", Kind::Str { max: 128, check: None }, "City."),
    Field::new("state", Kind::Str { max: 128, check: None }, "State."),
    Field::new("country", Kind::Str { max: 128, check: None }, "Country."),
    Field::new("phone", Kind::Str { max: 64, check: None }, "Phone."),
    Field::new("triton_cns_enabled", Kind::Bool, "CNS publishes DNS names for the account's instances."),
    Field::new("created", Kind::Str { max: 40, check: None }, "Creation time.").read_only(),
    Field::new("updated", Kind::Str { max: 40, check: None }, "Last update.").read_only(),
];

const KEY: &[Field] = &[
    Field::new("name", Kind::Str { max: 128, check: None }, "Key name (default: the key's comment, else its fingerprint)."),
    Field::new("key", Kind::Str { max: 16384, check: None }, "OpenSSH public key (rsa ≥ 2048 bits, ecdsa, ed25519).").required(),
    Field::new("fingerprint", Kind::Str { max: 64, check: None }, "MD5 fingerprint, colon hex.").read_only(),
];

const CONFIG: &[Field] = &[Field::new("default_network", Kind::Uuid, "Network new instances go on when none is named.")];

const LIMIT: &[Field] = &[
    Field::new("by", Kind::Str { max: 16, check: None }, "ram, quota or machines."),
    Field::new("value", Kind::Int { min: -1, max: i64::MAX, multiple_of: None, unit: None }, "The limit (0: unlimited, -1: none allowed)."),
    Field::new("used", Kind::Int { min: 0, max: i64::MAX, multiple_of: None, unit: None }, "What is used."),
    Field::new("check", Kind::Str { max: 16, check: None }, "image, os or brand: the limit counts only those instances."),
    Field::new("image", Kind::Str { max: 256, check: None }, "The image name (or UUID) counted."),
    Field::new("os", Kind::Str { max: 256, check: None }, "The image os counted."),
    Field::new("brand", Kind::Str { max: 256, check: None }, "The brand counted."),
];

fn ping_schema() -> Value {
    json!({"type": "object", "properties": {"ping": {"type": "string"}, "cloudapi": {"type": "object"}}})
}

/// UpdateAccount's body: the account's fields, where an empty string (or null) is allowed
/// and leaves the field as it is (see [`update_account`]).
fn update_schema() -> Value {
    let mut schema = nereid_types::spec::object_schema(ACCOUNT, Usage::Update);
    if let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) {
        for p in props.values_mut().filter(|p| p["type"] == "string") {
            if let Some(o) = p.as_object_mut() {
                o.remove("minLength");
                o.insert("nullable".into(), json!(true));
                let doc = o.get("description").and_then(Value::as_str).unwrap_or_default().to_string();
                o.insert("description".into(), json!(format!("{doc} Empty or null: left as it is.")));
            }
        }
    }
    // Unknown fields are ignored, as sdc-cloudapi ignores them.
    schema.as_object_mut().map(|o| o.remove("additionalProperties"));
    schema
}

fn map_schema() -> Value {
    json!({"type": "object", "additionalProperties": {"type": "string"}})
}

fn doc(id: &'static str, summary: &'static str, body: BodyDoc, response: RespDoc) -> Doc {
    Doc { id, tag: "CloudAPI", summary, query: &[], body, response }
}

pub fn routes() -> Vec<Route> {
    vec![
        Route::new(
            Method::GET,
            "/--ping",
            doc("Ping", "Liveness; needs no signature.", BodyDoc::None, RespDoc::Schema(200, ping_schema)),
            ping,
        )
        .auth(Auth::Public),
        Route::new(Method::GET, "/{account}", doc("GetAccount", "The account.", BodyDoc::None, RespDoc::Object(200, ACCOUNT)), get_account)
            .auth(Auth::Signature),
        Route::new(
            Method::POST,
            "/{account}",
            doc("UpdateAccount", "Change the account's contact details.", BodyDoc::Schema(update_schema), RespDoc::Object(200, ACCOUNT)),
            update_account,
        )
        .auth(Auth::Signature),
        Route::new(
            Method::GET,
            "/{account}/keys",
            doc("ListKeys", "The account's SSH keys.", BodyDoc::None, RespDoc::List(KEY)),
            list_keys,
        )
        .auth(Auth::Signature),
        Route::new(
            Method::POST,
            "/{account}/keys",
            doc("CreateKey", "Add an SSH public key.", BodyDoc::Fields(KEY, Usage::Create), RespDoc::Object(201, KEY)),
            create_key,
        )
        .auth(Auth::Signature),
        Route::new(
            Method::GET,
            "/{account}/keys/{key}",
            doc("GetKey", "A key by MD5 fingerprint or name.", BodyDoc::None, RespDoc::Object(200, KEY)),
            get_key,
        )
        .auth(Auth::Signature),
        Route::new(
            Method::DELETE,
            "/{account}/keys/{key}",
            doc("DeleteKey", "Remove a key (by MD5 fingerprint or name).", BodyDoc::None, RespDoc::Empty(204)),
            delete_key,
        )
        .auth(Auth::Signature),
        Route::new(
            Method::GET,
            "/{account}/datacenters",
            doc("ListDatacenters", "Datacenter name → CloudAPI URL.", BodyDoc::None, RespDoc::Schema(200, map_schema)),
            datacenters,
        )
        .auth(Auth::Signature),
        Route::new(
            Method::GET,
            "/{account}/services",
            doc("ListServices", "Service name → URL (only cloudapi: no docker endpoint).", BodyDoc::None, RespDoc::Schema(200, map_schema)),
            services,
        )
        .auth(Auth::Signature),
        Route::new(
            Method::GET,
            "/{account}/config",
            doc("GetConfig", "Account configuration.", BodyDoc::None, RespDoc::Object(200, CONFIG)),
            get_config,
        )
        .auth(Auth::Signature),
        Route::new(
            Method::PUT,
            "/{account}/config",
            doc("UpdateConfig", "Set the default network.", BodyDoc::Fields(CONFIG, Usage::Update), RespDoc::Object(200, CONFIG)),
            update_config,
        )
        .auth(Auth::Signature),
        Route::new(
            Method::GET,
            "/{account}/limits",
            doc(
                "ListLimits",
                "Provisioning limits set by operators, with what the account's instances use of each (see `app::limits`).",
                BodyDoc::None,
                RespDoc::List(LIMIT),
            ),
            limits,
        )
        .auth(Auth::Signature),
    ]
}

async fn ping() -> CloudResult {
    ok(&json!({"ping": "pong", "cloudapi": {"versions": ["7.0.0", "7.1.0", "7.2.0", "7.3.0", "8.0.0", "9.0.0", super::VERSION]}}))
}

async fn get_account(Scoped(acct): Scoped) -> CloudResult {
    ok(&render_cloudapi(&acct))
}

/// UpdateAccount. As in sdc-cloudapi, only fields given a value are copied: an empty
/// string (what `triton account update companyName=` sends) or `null` leaves the field as
/// it is and the answer is 200 with the account; unknown fields are ignored.
async fn update_account(State(s): State<AppState>, Scoped(acct): Scoped, Params(params): Params) -> CloudResult {
    let mut input = Map::new();
    for (k, v) in params {
        if TENANT_UPDATABLE.contains(&k.as_str()) {
            let v = match (k.as_str(), v) {
                (_, Value::Null) => continue,
                (_, Value::String(s)) if s.is_empty() => continue,
                // Form-encoded and query input arrives as strings.
                ("triton_cns_enabled", Value::String(b)) => match b.as_str() {
                    "true" => Value::Bool(true),
                    "false" => Value::Bool(false),
                    _ => return Err(invalid("triton_cns_enabled", "must be true or false")),
                },
                (_, v) => v,
            };
            input.insert(account::stored_name(&k).to_string(), v);
        }
    }
    let updated = s.app.update_account(&acct.uuid.to_string(), &input).await?;
    ok(&render_cloudapi(&updated))
}

async fn list_keys(State(s): State<AppState>, Scoped(acct): Scoped) -> CloudResult {
    let keys: Vec<Value> = s.app.list_keys(acct.uuid).await?.iter().map(render_key_cloudapi).collect();
    ok(&keys)
}

async fn create_key(State(s): State<AppState>, Scoped(acct): Scoped, Params(params): Params) -> CloudResult {
    let Some(text) = params.get("key").and_then(Value::as_str).filter(|k| !k.trim().is_empty()) else {
        return Err(missing("key"));
    };
    let name = params.get("name").and_then(Value::as_str);
    let key = s.app.add_key(&acct, name, text).await?;
    Ok(super::reply(StatusCode::CREATED, &render_key_cloudapi(&key)))
}

async fn get_key(State(s): State<AppState>, Scoped(acct): Scoped, Path((_, k)): Path<(String, String)>) -> CloudResult {
    match s.app.get_key(acct.uuid, &k).await? {
        Some(key) => ok(&render_key_cloudapi(&key)),
        None => Err(CloudError(ApiError::new(404, "ResourceNotFound", format!("key {k} does not exist")))),
    }
}

async fn delete_key(State(s): State<AppState>, Scoped(acct): Scoped, Path((_, k)): Path<(String, String)>) -> CloudResult {
    s.app.delete_key(&acct, &k).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn datacenters(State(s): State<AppState>, _: Scoped) -> CloudResult {
    let mut m = Map::new();
    m.insert(s.cloud.datacenter.clone(), json!(s.cloud.url));
    ok(&m)
}

async fn services(State(s): State<AppState>, _: Scoped) -> CloudResult {
    // No `docker` entry: the CLI's profile setup would try to set up Docker certificates.
    ok(&json!({"cloudapi": s.cloud.url}))
}

fn render_config(a: &nereid_types::account::Account) -> Value {
    match a.default_network {
        Some(n) => json!({"default_network": n}),
        None => json!({}),
    }
}

async fn get_config(Scoped(acct): Scoped) -> CloudResult {
    ok(&render_config(&acct))
}

async fn update_config(State(s): State<AppState>, Scoped(acct): Scoped, Params(params): Params) -> CloudResult {
    let Some(net) = params.get("default_network").and_then(Value::as_str) else {
        return Err(missing("default_network"));
    };
    let uuid = uuid::Uuid::parse_str(net).map_err(|_| invalid("default_network", format!("{net:?} is not a network UUID")))?;
    let visible = super::catalog::visible_networks(&s, acct.uuid).await?;
    if !visible.iter().any(|n| n["id"] == json!(uuid)) {
        return Err(invalid("default_network", format!("network {uuid} does not exist")));
    }
    let updated = s.app.update_account(&acct.uuid.to_string(), json!({"default_network": uuid}).as_object().unwrap_or(&Map::new())).await?;
    ok(&render_config(&updated))
}

async fn limits(State(s): State<AppState>, Scoped(acct): Scoped) -> CloudResult {
    ok(&s.app.limits_used(acct.uuid).await?)
}
