//! The OpenAPI documents of the operator APIs and of CloudAPI, generated from their
//! route tables.
//!
//! `openapi/admin.json` and `openapi/cloudapi.json` in the repository are these
//! documents; a test regenerates them and fails when a checked-in copy differs (run
//! `UPDATE_OPENAPI=1 cargo test -p nereid-headnode openapi` after changing an endpoint).

use std::collections::BTreeMap;

use nereid_types::query::openapi_params;
use nereid_types::spec::{Usage, object_schema};
use serde_json::{Map, Value, json};

use crate::http::{Auth, BodyDoc, RespDoc, Route, routes};

fn error_schema() -> Value {
    json!({"type": "object", "required": ["code", "message"], "properties": {
        "code": {"type": "string"}, "message": {"type": "string"},
        "errors": {"type": "array", "items": {"type": "object", "properties": {
            "field": {"type": "string"}, "code": {"type": "string"}, "message": {"type": "string"}}}}}})
}

/// The `paths` object of a route table.
fn paths(routes: Vec<Route>) -> BTreeMap<String, Map<String, Value>> {
    let mut paths: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for r in routes {
        let d = r.doc;
        let mut op = json!({"operationId": d.id, "tags": [d.tag], "summary": d.summary});
        match r.auth {
            Auth::Admin => {}
            Auth::Server => op["security"] = json!([{"agentCertificate": []}]),
            Auth::Join => op["security"] = json!([{"joinToken": []}]),
            Auth::Signature => {}
            Auth::Public => op["security"] = json!([]),
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
            RespDoc::Text(f) => (200, Some(json!({"text/plain": {"schema": f()}}))),
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
    paths
}

/// The operator APIs' document.
pub fn admin_document() -> Value {
    let mut paths = paths(routes());
    // `sync=true` waits for the job and answers 200 with the VM as the job left it
    // (VMAPI's behaviour; http/vms.rs `finish`), instead of the 202.
    for op in paths.values_mut().flat_map(|ops| ops.values_mut()) {
        let has_sync = op["parameters"].as_array().is_some_and(|ps| ps.iter().any(|p| p["name"] == "sync"));
        if has_sync && op["responses"].get("202").is_some() {
            op["responses"]["200"] = json!({"description": "With sync=true: the job finished; the VM as it left it, with the job",
                "content": {"application/json": {"schema": {"type": "object", "required": ["uuid", "job_uuid", "job_execution"], "properties": {
                    "uuid": {"type": "string", "format": "uuid"}, "job_uuid": {"type": "string", "format": "uuid"},
                    "job_execution": {"type": "string", "enum": nereid_types::job::EXECUTIONS}}}}}});
        }
    }
    // Reads that ask a server's agent answer 503 when it cannot be called (unreachable, or
    // the server revoked): the dependency is unavailable, not the request wrong.
    for (path, method, when) in [("/servers/{uuid}/vms/{vm}", "get", ""), ("/vms/{uuid}", "get", " (with sync=true)")] {
        if let Some(op) = paths.get_mut(path).and_then(|ops| ops.get_mut(method)) {
            op["responses"]["503"] = json!({"description": format!("The server's agent cannot be called{when}: unreachable, or the server is revoked"),
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
        }
    }
    // NAPI answers a provision from a network with no free address 507 SubnetFull (naming
    // the network in `network_uuid`), as Triton does.
    for path in ["/nics", "/networks/{uuid}/nics"] {
        if let Some(op) = paths.get_mut(path).and_then(|ops| ops.get_mut("post")) {
            op["responses"]["507"] = json!({"description": "SubnetFull: the network has no free address left",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
        }
    }
    // Migrations: the watch is a stream of JSON lines, not one JSON body; ServerUpdate with
    // action=evacuate answers 202 with the evacuation.
    if let Some(op) = paths.get_mut("/migrations/{uuid}/watch").and_then(|ops| ops.get_mut("get")) {
        op["responses"]["200"] = json!({"description": "One JSON object per line: {type: progress, phase, state, current_progress, total_progress, …}, then {type: end, phase, state, message?}",
            "content": {"application/x-json-stream": {}}});
    }
    if let Some(op) = paths.get_mut("/servers/{uuid}").and_then(|ops| ops.get_mut("post")) {
        op["responses"]["202"] = json!({"description": "action=evacuate: the evacuation started (then GET /servers/{uuid}/evacuation)",
            "content": {"application/json": {"schema": {"type": "object", "required": ["server_uuid", "state", "vms"]}}}});
    }
    let mut doc = json!({
        "openapi": "3.0.3",
        "info": {"title": "Nereid operator APIs (PAPI, IMGAPI, NAPI, CNAPI, VMAPI)", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Triton-compatible operator APIs. Every request needs Authorization: Bearer <token> (DATA_DIR/admin.token)."},
        "servers": [{"url": "http://127.0.0.1:8080"}],
        "security": [{"bearer": []}],
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "The operator token (DATA_DIR/admin.token)."},
                "agentCertificate": {"type": "http", "scheme": "tls-client-certificate", "description": "Mutual TLS on the agent listener only: the server's client certificate from the headnode CA, with the key approved for the server in the path."},
                "joinToken": {"type": "http", "scheme": "bearer", "description": "The join token (DATA_DIR/join.token)."}
            },
            "schemas": {"Error": error_schema()}
        },
        "paths": paths,
    });
    openapi_3_0(&mut doc);
    doc
}

fn path_params(path: &str) -> Vec<Value> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
        .collect()
}

/// CloudAPI's document.
pub fn cloudapi_document() -> Value {
    let mut paths = paths(crate::cloudapi::routes());
    // A deleted machine: every machine endpoint answers 410 with the machine as it was
    // (sdc-cloudapi's behaviour, which the CLI relies on for `delete -w`).
    for (path, ops) in paths.iter_mut().filter(|(p, _)| p.starts_with("/{account}/machines/{id}")) {
        for op in ops.values_mut() {
            op["responses"]["410"] = json!({"description": format!("The machine was deleted ({path}): its last state"),
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Machine"}}}});
        }
    }
    // Migrate: action=watch streams JSON lines; finalize answers 200 without a body.
    if let Some(op) = paths.get_mut("/{account}/machines/{id}/migrate").and_then(|ops| ops.get_mut("post")) {
        op["responses"]["200"] = json!({"description": "action=watch: one JSON object per line, progress events then {type: end, phase, state, message?}; action=finalize: no body",
            "content": {"application/x-json-stream": {}}});
    }
    let mut doc = json!({
        "openapi": "3.0.3",
        "info": {"title": "Nereid CloudAPI (Triton CloudAPI 9)", "version": crate::cloudapi::VERSION,
                 "description": "Triton's tenant API, as the triton CLI 7.17.0 uses it. Every request but GET /--ping carries an HTTP Signature: Authorization: Signature keyId=\"/LOGIN/keys/MD5-FINGERPRINT\",algorithm=\"rsa-sha256|ecdsa-sha256|ecdsa-sha512|ed25519-sha512\",headers=\"(request-target) date\",signature=\"…\" over the raw request line and the Date header (±300 s). {account} is the caller's login or `my` (operators may name any account). Answers carry Server: cloudapi/9.20.0, Api-Version and Request-Id."},
        "servers": [{"url": "https://127.0.0.1:8443"}],
        "security": [{"httpSignature": []}],
        "components": {
            "securitySchemes": {
                "httpSignature": {"type": "apiKey", "in": "header", "name": "Authorization",
                                  "description": "HTTP Signature (draft-cavage) with an account's SSH key."}
            },
            "schemas": {"Error": error_schema(), "Machine": crate::cloudapi::machines::machine_schema()}
        },
        "paths": paths,
    });
    openapi_3_0(&mut doc);
    doc
}

/// Keeps a document in OpenAPI 3.0's schema dialect (JSON Schema draft 4 style): a
/// numeric `exclusiveMaximum`/`exclusiveMinimum` (the 3.1 form) becomes the bound plus
/// `true`, which is what 3.0 validators and generators understand.
fn openapi_3_0(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (bound, flag) in [("maximum", "exclusiveMaximum"), ("minimum", "exclusiveMinimum")] {
                if let Some(n) = m.get(flag).filter(|x| x.is_number()).cloned() {
                    m.insert(bound.into(), n);
                    m.insert(flag.into(), Value::Bool(true));
                }
            }
            m.values_mut().for_each(openapi_3_0);
        }
        Value::Array(a) => a.iter_mut().for_each(openapi_3_0),
        _ => {}
    }
}

fn text(doc: &Value) -> String {
    let mut s = serde_json::to_string_pretty(doc).unwrap_or_default();
    s.push('\n');
    s
}

/// The operator document as checked in: pretty JSON with a trailing newline.
pub fn admin_document_text() -> String {
    text(&admin_document())
}

/// CloudAPI's document as checked in.
pub fn cloudapi_document_text() -> String {
    text(&cloudapi_document())
}

#[cfg(test)]
mod tests {
    fn check(file: &str, want: String) {
        let path = format!("{}/../../openapi/{file}", env!("CARGO_MANIFEST_DIR"));
        if std::env::var_os("UPDATE_OPENAPI").is_some() {
            std::fs::write(&path, &want).unwrap();
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(have == want, "openapi/{file} is stale: run `UPDATE_OPENAPI=1 cargo test -p nereid-headnode openapi` and commit it");
    }

    #[test]
    fn checked_in_documents_match_the_code() {
        check("admin.json", super::admin_document_text());
        check("cloudapi.json", super::cloudapi_document_text());
    }

    #[test]
    fn every_cloudapi_operation_is_unique_and_signed() {
        let doc = super::cloudapi_document();
        let mut ids = std::collections::HashSet::new();
        for (path, ops) in doc["paths"].as_object().unwrap() {
            for (_, op) in ops.as_object().unwrap() {
                assert!(ids.insert(op["operationId"].as_str().unwrap().to_string()), "duplicate {}", op["operationId"]);
                // Only /--ping is open.
                assert_eq!(op.get("security").is_some(), path == "/--ping", "{path}");
            }
        }
        assert!(ids.len() >= 40, "{}", ids.len());
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
