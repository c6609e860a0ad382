//! CloudAPI `CreateImageFromMachine` (`POST /:login/images`, `triton image create`): an
//! image of one of the account's own machines, private to the account.
//!
//! The body names the `machine` and the new image's `name`, `version` and optionally
//! `description`, `homepage`, `eula`, `acl`, `tags`; other members are ignored, as
//! sdc-cloudapi picks only those. The answer is 201 with the image in state `creating`;
//! the `create_image` job (see [`crate::jobs::image_create`]) makes it `active` or
//! `failed` (with `error.message`), which `triton image create -w` polls for.

use axum::extract::State;
use axum::http::{Method, StatusCode};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::{BodyParams, CloudResult, Scoped, invalid, missing, render, reply};
use crate::app::image_create::INPUTS;
use crate::http::{AppState, Auth, BodyDoc, Doc, RespDoc, Route};

fn body_schema() -> Value {
    json!({"type": "object", "required": ["machine", "name", "version"], "properties": {
        "machine": {"type": "string", "format": "uuid", "description": "The machine whose boot disk becomes the image (stopped for the copy, started again if it ran)."},
        "name": {"type": "string", "maxLength": 512}, "version": {"type": "string", "maxLength": 128},
        "description": {"type": "string"}, "homepage": {"type": "string"}, "eula": {"type": "string"},
        "acl": {"type": "array", "items": {"type": "string", "format": "uuid"}},
        "tags": {"type": "object"}}})
}

fn image_schema() -> Value {
    json!({"type": "object", "properties": {
        "id": {"type": "string", "format": "uuid"}, "name": {"type": "string"}, "version": {"type": "string"},
        "os": {"type": "string"}, "type": {"type": "string"}, "state": {"type": "string"}, "public": {"type": "boolean"},
        "owner": {"type": "string", "format": "uuid"}, "origin": {"type": "string", "format": "uuid"},
        "requirements": {"type": "object"}, "tags": {"type": "object"}, "files": {"type": "array", "items": {"type": "object"}}}})
}

pub fn routes() -> Vec<Route> {
    vec![
        Route::new(
            Method::POST,
            "/{account}/images",
            Doc {
                id: "CreateImageFromMachine",
                tag: "CloudAPI",
                summary: "Make a private image of a machine's boot disk (201, state creating; then active, or failed with error.message).",
                query: &[],
                body: BodyDoc::Schema(body_schema),
                response: RespDoc::Schema(201, image_schema),
            },
            create,
        )
        .auth(Auth::Signature),
    ]
}

/// The `machine` named in the body (pure).
pub fn machine(p: &Map<String, Value>) -> Result<Uuid, (&'static str, Option<String>)> {
    match p.get("machine") {
        None | Some(Value::Null) => Err(("machine", None)),
        Some(Value::String(s)) => Uuid::parse_str(s).map_err(|_| ("machine", Some(format!("{s:?} is not a machine UUID")))),
        Some(_) => Err(("machine", Some("must be a machine UUID (a string)".into()))),
    }
}

async fn create(State(s): State<AppState>, Scoped(acct): Scoped, BodyParams(p): BodyParams) -> CloudResult {
    let vm = machine(&p).map_err(|(f, m)| match m {
        None => missing(f),
        Some(m) => invalid(f, m),
    })?;
    let input: Map<String, Value> = p.into_iter().filter(|(k, _)| INPUTS.contains(&k.as_str())).collect();
    let (img, _job) = s.app.create_image_from_vm(vm, &input, Some(acct.uuid), None).await?;
    Ok(reply(StatusCode::CREATED, &render::image(&img)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_machine_must_be_a_uuid() {
        let u = Uuid::new_v4();
        let p = |v: Value| v.as_object().cloned().unwrap_or_default();
        assert_eq!(machine(&p(json!({"machine": u.to_string()}))), Ok(u));
        assert_eq!(machine(&p(json!({}))), Err(("machine", None)));
        assert!(machine(&p(json!({"machine": "web-1"}))).unwrap_err().1.unwrap().contains("not a machine UUID"));
        assert!(machine(&p(json!({"machine": 5}))).is_err());
    }
}
