//! Operator endpoints for provisioning limits (Triton's per-account `capilimit`s):
//! `GET/POST /accounts/{account}/limits`, `PUT/DELETE /accounts/{account}/limits/{id}`.
//! `{account}` is a UUID or a login. The checks and the enforcement are in `app::limits`.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use axum::response::IntoResponse;
use serde_json::{Value, json};

use super::{AppState, BodyDoc, Doc, HttpResult, RespDoc, Route, json, ok, read_object};

pub fn routes() -> Vec<Route> {
    let doc = |id, summary, body, response| Doc { id, tag: "UFDS", summary, query: &[], body, response };
    vec![
        Route::new(
            Method::GET,
            "/accounts/{account}/limits",
            doc("ListAccountLimits", "An account's provisioning limits, oldest first.", BodyDoc::None, RespDoc::Schema(200, list_schema)),
            list,
        ),
        Route::new(
            Method::POST,
            "/accounts/{account}/limits",
            doc(
                "CreateAccountLimit",
                "Add a provisioning limit: CreateVm and resizes that would go over it are refused with CloudAPI's 403 \
                 NotAuthorized \"Quota exceeded\".",
                BodyDoc::Schema(body_schema),
                RespDoc::Schema(201, limit_schema),
            ),
            create,
        ),
        Route::new(
            Method::PUT,
            "/accounts/{account}/limits/{id}",
            doc(
                "UpdateAccountLimit",
                "Change a limit (the fields given).",
                BodyDoc::Schema(body_schema),
                RespDoc::Schema(200, limit_schema),
            ),
            update,
        ),
        Route::new(
            Method::DELETE,
            "/accounts/{account}/limits/{id}",
            doc("DeleteAccountLimit", "Remove a limit.", BodyDoc::None, RespDoc::Empty(204)),
            delete,
        ),
    ]
}

fn body_schema() -> Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "by": {"type": "string", "enum": ["machines", "ram", "quota"], "description": "What is counted: instances, RAM (MiB) or disk quota (GiB). Default machines."},
            "value": {"type": "integer", "minimum": -1, "description": "The limit: 0 is unlimited, -1 allows no provision."},
            "check": {"type": "string", "enum": ["image", "os", "brand"], "description": "Implied by the one of image, os or brand given."},
            "image": {"type": "string", "description": "Count only instances of this image (name or UUID)."},
            "os": {"type": "string", "description": "Count only instances of images of this os."},
            "brand": {"type": "string", "description": "Count only instances of this brand."},
        },
    })
}

fn limit_schema() -> Value {
    let mut s = body_schema();
    s["additionalProperties"] = json!(false);
    s["required"] = json!(["id", "account_uuid", "by", "value", "created"]);
    s["properties"]["id"] = json!({"type": "string", "format": "uuid"});
    s["properties"]["account_uuid"] = json!({"type": "string", "format": "uuid"});
    s["properties"]["created"] = json!({"type": "string"});
    s
}

fn list_schema() -> Value {
    json!({"type": "array", "items": limit_schema()})
}

async fn list(State(s): State<AppState>, Path(account): Path<String>) -> HttpResult {
    let (acct, _) = s.app.find_account(&account).await?;
    ok(&s.app.account_limits(acct.uuid).await?)
}

async fn create(State(s): State<AppState>, Path(account): Path<String>, body: Body) -> HttpResult {
    let input = read_object(body).await?;
    Ok(json(StatusCode::CREATED, &s.app.add_limit(&account, &input).await?))
}

async fn update(State(s): State<AppState>, Path((account, id)): Path<(String, String)>, body: Body) -> HttpResult {
    let input = read_object(body).await?;
    ok(&s.app.update_limit(&account, &id, &input).await?)
}

async fn delete(State(s): State<AppState>, Path((account, id)): Path<(String, String)>) -> HttpResult {
    s.app.delete_limit(&account, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
