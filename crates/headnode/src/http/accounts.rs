//! Operator endpoints for accounts and their SSH keys (Triton keeps these in UFDS):
//! `/accounts`, `/accounts/{account}`, `/accounts/{account}/password`,
//! `/accounts/{account}/keys[/{key}]`.
//!
//! `{account}` is a UUID or a login; `{key}` a fingerprint (MD5 or `SHA256:`) or a name.

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{Method, StatusCode};
use axum::response::IntoResponse;
use nereid_types::account::{AccountKey, FIELDS};
use nereid_types::query::{Param, QKind};
use nereid_types::spec::{Field, Kind, Usage};
use nereid_types::{ApiError, FieldError};
use serde_json::{Value, json};

use super::{Api, AppState, BodyDoc, Doc, HttpResult, RespDoc, Route, json, ok, parse_query, read_object};

const LIST_PARAMS: &[Param] =
    &[Param::new("login", QKind::Str { max: 32 }, "Only this login."), Param::new("email", QKind::Str { max: 256 }, "Only this email.")];

/// A key as the admin API renders it.
pub const KEY_FIELDS: &[Field] = &[
    Field::new("name", Kind::Str { max: 128, check: None }, "Key name, unique per account (default: the key's comment)."),
    Field::new("key", Kind::Str { max: 16384, check: None }, "OpenSSH public key line (rsa ≥ 2048 bits, ecdsa, ed25519).").required(),
    Field::new("fingerprint", Kind::Str { max: 64, check: None }, "MD5 fingerprint (colon hex), the form the triton CLI signs with.")
        .read_only(),
    Field::new("sha256", Kind::Str { max: 64, check: None }, "SHA256 fingerprint as ssh-keygen -l prints it.").read_only(),
    Field::new("type", Kind::Str { max: 16, check: None }, "rsa, ecdsa or ed25519.").read_only(),
    Field::new("bits", Kind::Int { min: 0, max: 65536, multiple_of: None, unit: None }, "Key size.").read_only(),
    Field::new("created", Kind::Str { max: 40, check: None }, "When it was added.").read_only(),
];

/// A password as a request carries it (never in an answer).
fn password_property() -> Value {
    json!({"type": "string", "minLength": 8, "maxLength": nereid_types::account::MAX_PASSWORD_BYTES, "writeOnly": true,
        "description": "Password for the web console's sign-in (8 characters or more); stored only as an argon2id hash."})
}

/// SetAccountPassword's body.
fn password_schema() -> Value {
    json!({"type": "object", "required": ["password"], "properties": {"password": password_property()}})
}

/// CreateAccount's body: the account's fields plus `keys`.
fn create_schema() -> Value {
    let mut schema = nereid_types::spec::object_schema(FIELDS, Usage::Create);
    schema["properties"]["keys"] = json!({"type": "array", "description": "SSH keys to add in the same write.",
        "items": nereid_types::spec::object_schema(&KEY_FIELDS[..2], Usage::Create)});
    schema["properties"]["password"] = password_property();
    schema
}

/// CreateAccount's answer: the account and the keys it was made with.
fn created_schema() -> Value {
    let mut schema = nereid_types::spec::object_schema(FIELDS, Usage::Output);
    schema["properties"]["keys"] = json!({"type": "array", "items": nereid_types::spec::object_schema(KEY_FIELDS, Usage::Output)});
    schema
}

fn doc(id: &'static str, summary: &'static str, query: &'static [Param], body: BodyDoc, response: RespDoc) -> Doc {
    Doc { id, tag: "UFDS", summary, query, body, response }
}

pub fn routes() -> Vec<Route> {
    vec![
        Route::new(
            Method::GET,
            "/accounts",
            doc("ListAccounts", "List accounts, by login.", LIST_PARAMS, BodyDoc::None, RespDoc::List(FIELDS)),
            list,
        ),
        Route::new(
            Method::POST,
            "/accounts",
            doc(
                "CreateAccount",
                "Create an account; `keys: [{name?, key}]` adds SSH keys in the same write.",
                &[],
                BodyDoc::Schema(create_schema),
                RespDoc::Schema(201, created_schema),
            ),
            create,
        ),
        Route::new(
            Method::GET,
            "/accounts/{account}",
            doc("GetAccount", "Get an account by UUID or login.", &[], BodyDoc::None, RespDoc::Object(200, FIELDS)),
            get,
        ),
        Route::new(
            Method::PUT,
            "/accounts/{account}",
            doc(
                "UpdateAccount",
                "Change an account (`disabled: true` disables it; null clears a field).",
                &[],
                BodyDoc::Fields(FIELDS, Usage::Update),
                RespDoc::Object(200, FIELDS),
            ),
            update,
        ),
        Route::new(
            Method::PUT,
            "/accounts/{account}/password",
            doc(
                "SetAccountPassword",
                "Set (or replace) the account's password for the web console; stored only as an argon2id hash.",
                &[],
                BodyDoc::Schema(password_schema),
                RespDoc::Empty(204),
            ),
            set_password,
        ),
        Route::new(
            Method::GET,
            "/accounts/{account}/keys",
            doc("ListKeys", "List an account's SSH keys.", &[], BodyDoc::None, RespDoc::List(KEY_FIELDS)),
            list_keys,
        ),
        Route::new(
            Method::POST,
            "/accounts/{account}/keys",
            doc("CreateKey", "Add an SSH public key.", &[], BodyDoc::Fields(KEY_FIELDS, Usage::Create), RespDoc::Object(201, KEY_FIELDS)),
            add_key,
        ),
        Route::new(
            Method::GET,
            "/accounts/{account}/keys/{key}",
            doc("GetKey", "Get a key by fingerprint or name.", &[], BodyDoc::None, RespDoc::Object(200, KEY_FIELDS)),
            get_key,
        ),
        Route::new(
            Method::DELETE,
            "/accounts/{account}/keys/{key}",
            doc("DeleteKey", "Remove a key (by fingerprint or name).", &[], BodyDoc::None, RespDoc::Empty(204)),
            delete_key,
        ),
    ]
}

/// A key as the admin API renders it.
pub fn render_key(k: &AccountKey) -> Value {
    json!({"name": k.name, "key": k.key, "fingerprint": k.fingerprint, "sha256": k.sha256, "type": k.kind, "bits": k.bits, "created": k.created})
}

async fn list(State(s): State<AppState>, RawQuery(raw): RawQuery) -> HttpResult {
    let q = parse_query(Api::Papi, LIST_PARAMS, raw.as_deref())?;
    ok(&s.app.list_accounts(q.str("login"), q.str("email")).await?)
}

async fn create(State(s): State<AppState>, body: Body) -> HttpResult {
    let input = read_object(body).await?;
    let (acct, keys) = s.app.create_account(&input).await?;
    let mut v = serde_json::to_value(&acct).unwrap_or_default();
    v["keys"] = keys.iter().map(render_key).collect();
    Ok(json(StatusCode::CREATED, &v))
}

async fn get(State(s): State<AppState>, Path(id): Path<String>) -> HttpResult {
    ok(&s.app.find_account(&id).await?.0)
}

async fn update(State(s): State<AppState>, Path(id): Path<String>, body: Body) -> HttpResult {
    let input = read_object(body).await?;
    ok(&s.app.update_account(&id, &input).await?)
}

async fn set_password(State(s): State<AppState>, Path(id): Path<String>, body: Body) -> HttpResult {
    let input = read_object(body).await?;
    let password = match input.get("password") {
        Some(Value::String(p)) => p.clone(),
        Some(_) => return Err(ApiError::validation_409(vec![FieldError::invalid("password", "must be a string")]).into()),
        None => return Err(ApiError::validation_409(vec![FieldError::missing("password")]).into()),
    };
    s.app.set_account_password(&id, &password).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list_keys(State(s): State<AppState>, Path(id): Path<String>) -> HttpResult {
    let (acct, _) = s.app.find_account(&id).await?;
    let keys: Vec<Value> = s.app.list_keys(acct.uuid).await?.iter().map(render_key).collect();
    ok(&keys)
}

async fn add_key(State(s): State<AppState>, Path(id): Path<String>, body: Body) -> HttpResult {
    let input = read_object(body).await?;
    let (acct, _) = s.app.find_account(&id).await?;
    let errors = nereid_types::spec::check(KEY_FIELDS, &input, nereid_types::spec::Mode::Create, &[]);
    if !errors.is_empty() {
        return Err(ApiError::validation_409(errors).into());
    }
    let text = input.get("key").and_then(Value::as_str).unwrap_or_default();
    let name = input.get("name").and_then(Value::as_str);
    let key = s.app.add_key(&acct, name, text).await?;
    Ok(json(StatusCode::CREATED, &render_key(&key)))
}

async fn get_key(State(s): State<AppState>, Path((id, key)): Path<(String, String)>) -> HttpResult {
    let (acct, _) = s.app.find_account(&id).await?;
    match s.app.get_key(acct.uuid, &key).await? {
        Some(k) => ok(&render_key(&k)),
        None => Err(ApiError::not_found(format!("account {} has no key {key}", acct.login)).into()),
    }
}

async fn delete_key(State(s): State<AppState>, Path((id, key)): Path<(String, String)>) -> HttpResult {
    let (acct, _) = s.app.find_account(&id).await?;
    s.app.delete_key(&acct, &key).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
