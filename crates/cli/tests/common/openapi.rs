//! The OpenAPI documents as test oracles: their operations (with parameters and schemas,
//! `$ref`s inlined), matching a request to its operation, and judging an answer against
//! what the document says of it. Used by the property pass (`openapi_property.rs`);
//! include with `#[path = "common/openapi.rs"] mod openapi;`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use serde_json::{Value, json};

/// One documented parameter (`in: path` or `in: query`).
#[derive(Debug, Clone)]
pub struct Param {
    pub name: String,
    pub location: String,
    pub required: bool,
    pub schema: Value,
}

/// One documented operation.
#[derive(Debug, Clone)]
pub struct Op {
    pub api: &'static str,
    pub id: String,
    pub method: String,
    pub template: String,
    /// The success status (the first documented one).
    pub status: u16,
    /// Media type and (for JSON) the schema of the success answer.
    pub content: Option<(String, Option<Value>)>,
    /// The schema of a JSON request body.
    pub request: Option<Value>,
    /// Other documented answers: status → schema (Null when none).
    pub others: BTreeMap<u16, Value>,
    /// Whether errors are documented (`default`: Triton's `{code, message}`).
    pub has_default: bool,
    pub params: Vec<Param>,
    /// The document's tags (`Agent` marks a compute node's own calls).
    pub tags: Vec<String>,
}

/// A schema with its `#/components/...` references replaced by what they name.
pub fn inline_refs(v: &Value, doc: &Value) -> Value {
    match v {
        Value::Object(m) => match m.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix('#')) {
            Some(pointer) => inline_refs(doc.pointer(pointer).unwrap_or_else(|| panic!("dangling $ref {pointer}")), doc),
            None => Value::Object(m.iter().map(|(k, v)| (k.clone(), inline_refs(v, doc))).collect()),
        },
        Value::Array(a) => Value::Array(a.iter().map(|x| inline_refs(x, doc)).collect()),
        other => other.clone(),
    }
}

/// An OpenAPI 3.0 schema as JSON Schema draft 4: `nullable` becomes a `null` type.
pub fn draft4(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut out: serde_json::Map<String, Value> = m.iter().map(|(k, v)| (k.clone(), draft4(v))).collect();
            if out.remove("nullable") == Some(Value::Bool(true)) {
                if let Some(Value::String(t)) = out.get("type").cloned() {
                    out.insert("type".into(), json!([t, "null"]));
                }
                if let Some(Value::Array(e)) = out.get_mut("enum") {
                    e.push(Value::Null);
                }
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(draft4).collect()),
        other => other.clone(),
    }
}

/// Validates `instance` against an OpenAPI schema; the errors, shortened, joined.
pub fn validate(schema: &Value, instance: &Value) -> Result<(), String> {
    let v = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft4)
        .should_validate_formats(true)
        .build(&draft4(schema))
        .map_err(|e| format!("the schema does not compile: {e}"))?;
    let errs: Vec<String> = v
        .iter_errors(instance)
        .map(|e| {
            let text = e.to_string();
            let short = if text.len() > 200 {
                format!("{}…{}", &text[..text.floor_char_boundary(80)], &text[text.ceil_char_boundary(text.len() - 100)..])
            } else {
                text
            };
            format!("{short} at {}", e.instance_path())
        })
        .collect();
    if errs.is_empty() { Ok(()) } else { Err(errs.join("; ")) }
}

/// How many literal segments of `template` match `path` (None: no match).
pub fn segments_match(template: &str, path: &str) -> Option<usize> {
    let (t, p): (Vec<&str>, Vec<&str>) = (template.split('/').collect(), path.split('/').collect());
    if t.len() != p.len() {
        return None;
    }
    let mut literal = 0;
    for (t, p) in t.iter().zip(&p) {
        if t.starts_with('{') && t.ends_with('}') {
            if p.is_empty() {
                return None;
            }
        } else if t == p {
            literal += 1;
        } else {
            return None;
        }
    }
    Some(literal)
}

/// Every operation of the two documents, and the documents' `Error` schema.
pub fn operations() -> (Vec<Op>, Value) {
    let mut ops = Vec::new();
    let mut error_schema = Value::Null;
    for (api, doc) in [("admin", nereid_headnode::openapi::admin_document()), ("cloudapi", nereid_headnode::openapi::cloudapi_document())] {
        error_schema = doc["components"]["schemas"]["Error"].clone();
        for (template, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let responses = op["responses"].as_object().unwrap();
                // The first documented status is the usual answer (others, e.g. sync=true's 200, follow it).
                let (status, resp) = responses.iter().find(|(k, _)| *k != "default").unwrap();
                let others = responses
                    .iter()
                    .filter(|(k, _)| *k != "default" && *k != status)
                    .map(|(k, r)| {
                        let schema = r.pointer("/content/application~1json/schema").cloned().unwrap_or(Value::Null);
                        (k.parse().unwrap(), inline_refs(&schema, &doc))
                    })
                    .collect();
                let content = resp.get("content").and_then(Value::as_object).map(|c| {
                    let (media, m) = c.iter().next().unwrap();
                    (media.clone(), if media == "application/json" { Some(inline_refs(&m["schema"], &doc)) } else { None })
                });
                let params = op
                    .get("parameters")
                    .and_then(Value::as_array)
                    .map(|ps| {
                        ps.iter()
                            .map(|p| {
                                let p = inline_refs(p, &doc);
                                Param {
                                    name: p["name"].as_str().unwrap().to_string(),
                                    location: p["in"].as_str().unwrap().to_string(),
                                    required: p["required"].as_bool().unwrap_or(false),
                                    schema: p.get("schema").cloned().unwrap_or(json!({})),
                                }
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                ops.push(Op {
                    api,
                    id: op["operationId"].as_str().unwrap().to_string(),
                    method: method.to_ascii_uppercase(),
                    template: template.clone(),
                    status: status.parse().unwrap(),
                    content,
                    request: op.pointer("/requestBody/content/application~1json/schema").map(|r| inline_refs(r, &doc)),
                    others,
                    has_default: responses.contains_key("default"),
                    params,
                    tags: op["tags"].as_array().into_iter().flatten().filter_map(Value::as_str).map(str::to_string).collect(),
                });
            }
        }
    }
    (ops, error_schema)
}

/// The documented operation a request (`path` without its query) is, if any.
pub fn find<'a>(ops: &'a [Op], api: &str, method: &str, path: &str) -> Option<&'a Op> {
    ops.iter()
        .filter(|o| o.api == api && o.method == method)
        .filter_map(|o| segments_match(&o.template, path).map(|n| (n, o)))
        .max_by_key(|(n, _)| *n)
        .map(|(_, o)| o)
}

/// Judges one answer to `op`: the documented success status with its media type and body
/// schema, another documented status with its schema, or (with `default` documented) an
/// error status with Triton's error body. `Err` says what does not match.
pub fn check_answer(op: &Op, error_schema: &Value, status: u16, content_type: Option<&str>, body: &[u8]) -> Result<(), String> {
    let ct = content_type.unwrap_or_default();
    let json_body = || serde_json::from_slice::<Value>(body).map_err(|e| format!("the body is not JSON: {e}"));
    if status == op.status {
        match &op.content {
            None if !body.is_empty() && status != 101 => Err(format!("documented without a body, answered {} bytes", body.len())),
            None => Ok(()),
            Some((media, schema)) => {
                if !ct.starts_with(media.as_str()) {
                    return Err(format!("documented as {media}, answered content-type {ct:?}"));
                }
                match schema {
                    Some(schema) => validate(schema, &json_body()?).map_err(|e| format!("the body does not match the document: {e}")),
                    None if media.starts_with("text/") && std::str::from_utf8(body).is_err() => Err("text that is not UTF-8".into()),
                    None => Ok(()),
                }
            }
        }
    } else if let Some(schema) = op.others.get(&status) {
        if schema.is_null() {
            return Ok(());
        }
        validate(schema, &json_body()?).map_err(|e| format!("the body does not match the documented {status}: {e}"))
    } else if status >= 400 && op.has_default {
        if !ct.starts_with("application/json") {
            return Err(format!("an error with content-type {ct:?}"));
        }
        validate(error_schema, &json_body()?).map_err(|e| format!("the error body does not match Error: {e}"))
    } else {
        Err(format!("status {status} is not documented (documented: {}, {:?}, default: {})", op.status, op.others.keys(), op.has_default))
    }
}
