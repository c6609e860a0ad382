//! The OpenAPI document of the operator APIs, generated from the route table.
//!
//! `openapi/admin.json` in the repository is this document; a test regenerates it and
//! fails when the checked-in copy differs (run `nereid openapi admin > openapi/admin.json`
//! after changing an endpoint).

use std::collections::BTreeMap;

use nereid_types::query::openapi_params;
use nereid_types::spec::{Usage, object_schema};
use serde_json::{Map, Value, json};

use crate::http::{Auth, BodyDoc, RespDoc, routes};

fn error_schema() -> Value {
    json!({"type": "object", "required": ["code", "message"], "properties": {
        "code": {"type": "string"}, "message": {"type": "string"},
        "errors": {"type": "array", "items": {"type": "object", "properties": {
            "field": {"type": "string"}, "code": {"type": "string"}, "message": {"type": "string"}}}}}})
}

/// The whole document.
pub fn admin_document() -> Value {
    let mut paths: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for r in routes() {
        let d = r.doc;
        let mut op = json!({"operationId": d.id, "tags": [d.tag], "summary": d.summary});
        match r.auth {
            Auth::Admin => {}
            Auth::Server => op["security"] = json!([{"serverSecret": []}, {"bearer": []}]),
            Auth::Join => op["security"] = json!([{"joinToken": []}]),
        }
        let mut params: Vec<Value> = path_params(r.path);
        params.extend(openapi_params(d.query));
        if !params.is_empty() {
            op["parameters"] = Value::Array(params);
        }
        match d.body {
            BodyDoc::None => {}
            BodyDoc::Fields(fields, usage) => {
                op["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": object_schema(fields, usage)}}})
            }
            BodyDoc::Binary => {
                op["requestBody"] =
                    json!({"required": true, "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}})
            }
            BodyDoc::Schema(f) => op["requestBody"] = json!({"content": {"application/json": {"schema": f()}}}),
        }
        let (status, content) = match d.response {
            RespDoc::Empty(s) => (s, None),
            RespDoc::Object(s, fields) => (s, Some(json!({"application/json": {"schema": object_schema(fields, Usage::Output)}}))),
            RespDoc::List(fields) => {
                (200, Some(json!({"application/json": {"schema": {"type": "array", "items": object_schema(fields, Usage::Output)}}})))
            }
            RespDoc::Binary => (200, Some(json!({"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}))),
            RespDoc::Schema(s, f) => (s, Some(json!({"application/json": {"schema": f()}}))),
        };
        let mut ok = json!({"description": "Success"});
        if let Some(c) = content {
            ok["content"] = c;
        }
        op["responses"] = json!({
            status.to_string(): ok,
            "default": {"description": "Triton error body", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
        });
        paths.entry(r.path.to_string()).or_default().insert(r.method.as_str().to_ascii_lowercase(), op);
    }
    json!({
        "openapi": "3.0.3",
        "info": {"title": "Nereid operator APIs (PAPI, IMGAPI, NAPI, CNAPI, VMAPI)", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Triton-compatible operator APIs. Every request needs Authorization: Bearer <token> (DATA_DIR/admin.token)."},
        "servers": [{"url": "http://127.0.0.1:8080"}],
        "security": [{"bearer": []}],
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "The operator token (DATA_DIR/admin.token)."},
                "serverSecret": {"type": "http", "scheme": "bearer", "description": "The secret a compute node received when it joined."},
                "joinToken": {"type": "http", "scheme": "bearer", "description": "The join token (DATA_DIR/join.token)."}
            },
            "schemas": {"Error": error_schema()}
        },
        "paths": paths,
    })
}

fn path_params(path: &str) -> Vec<Value> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
        .collect()
}

/// The document as checked in: pretty JSON with a trailing newline.
pub fn admin_document_text() -> String {
    let mut s = serde_json::to_string_pretty(&admin_document()).unwrap_or_default();
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn checked_in_document_matches_the_code() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../openapi/admin.json");
        let want = super::admin_document_text();
        if std::env::var_os("UPDATE_OPENAPI").is_some() {
            std::fs::write(path, &want).unwrap();
        }
        let have = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            have == want,
            "openapi/admin.json is stale: run `UPDATE_OPENAPI=1 cargo test -p nereid-headnode openapi` (or `nereid openapi admin > openapi/admin.json`) and commit it"
        );
    }

    #[test]
    fn every_operation_is_unique_and_documented() {
        let doc = super::admin_document();
        let mut ids = std::collections::HashSet::new();
        for (_, ops) in doc["paths"].as_object().unwrap() {
            for (_, op) in ops.as_object().unwrap() {
                assert!(ids.insert(op["operationId"].as_str().unwrap().to_string()), "duplicate {}", op["operationId"]);
                assert!(!op["summary"].as_str().unwrap().is_empty());
            }
        }
        assert!(ids.len() >= 30, "{}", ids.len());
    }
}
