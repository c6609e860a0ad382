//! The API error type and its one mapping to HTTP status and Triton's error body.
//!
//! Triton services answer errors as `{"code", "message", "errors": [{field, code,
//! message}]}`; the HTTP status that goes with a code differs between services
//! (validation failures are 409 in PAPI/VMAPI, 422 in IMGAPI and NAPI). Each
//! constructor below names the Triton code it produces and fixes its status, so a
//! handler never picks a status by hand.

use serde::Serialize;
use serde_json::{Map, Value};

/// One problem with one input field, as Triton lists them in `errors[]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub code: String,
    pub message: String,
}

impl FieldError {
    /// A value that is present but wrong.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), code: "Invalid".into(), message: message.into() }
    }
    /// A required value that is absent.
    pub fn missing(field: impl Into<String>) -> Self {
        Self { field: field.into(), code: "MissingParameter".into(), message: "is required".into() }
    }
    /// A value that must be unique and is already taken.
    pub fn duplicate(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), code: "Duplicate".into(), message: message.into() }
    }
    /// A key the resource does not have.
    pub fn unknown(field: impl Into<String>) -> Self {
        Self { field: field.into(), code: "UnknownParameter".into(), message: "is not a known parameter".into() }
    }
    /// A value that cannot change once set.
    pub fn immutable(field: impl Into<String>) -> Self {
        Self { field: field.into(), code: "Immutable".into(), message: "cannot be changed (use force=true to override)".into() }
    }
}

/// An error an API handler returns; rendered as Triton's JSON body with `status`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub status: u16,
    pub code: String,
    pub message: String,
    pub errors: Vec<FieldError>,
    /// Extra top-level body fields some errors carry (NAPI's `SubnetFull` names its `network_uuid`).
    pub extra: Option<Box<Map<String, Value>>>,
}

/// Triton's error body.
#[derive(Serialize)]
pub struct ErrorBody<'a> {
    pub code: &'a str,
    pub message: &'a str,
    #[serde(skip_serializing_if = "<[FieldError]>::is_empty")]
    pub errors: &'a [FieldError],
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub extra: Option<&'a Map<String, Value>>,
}

impl ApiError {
    pub fn new(status: u16, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self { status, code: code.into(), message: message.into(), errors: Vec::new(), extra: None }
    }

    /// Adds a top-level field to the body.
    pub fn with_extra(mut self, key: &str, value: Value) -> Self {
        self.extra.get_or_insert_with(Default::default).insert(key.to_string(), value);
        self
    }

    pub fn with_errors(mut self, errors: Vec<FieldError>) -> Self {
        self.errors = errors;
        self
    }

    /// The JSON body Triton clients parse.
    pub fn body(&self) -> ErrorBody<'_> {
        ErrorBody { code: &self.code, message: &self.message, errors: &self.errors, extra: self.extra.as_deref() }
    }

    /// PAPI/VMAPI validation failure: 409 `ValidationFailed`.
    pub fn validation_409(errors: Vec<FieldError>) -> Self {
        let message = summarize("Invalid parameters", &errors);
        Self::new(409, "ValidationFailed", message).with_errors(errors)
    }
    /// IMGAPI validation failure: 422 `ValidationFailed`.
    pub fn validation_422(errors: Vec<FieldError>) -> Self {
        let message = summarize("Invalid parameters", &errors);
        Self::new(422, "ValidationFailed", message).with_errors(errors)
    }
    /// IMGAPI's 422 `InvalidParameter` (bad or extra parameters).
    pub fn invalid_parameter(errors: Vec<FieldError>) -> Self {
        let message = summarize("Invalid parameters", &errors);
        Self::new(422, "InvalidParameter", message).with_errors(errors)
    }
    /// NAPI validation failure: 422 `InvalidParameters` (NAPI spells the field code `InvalidParameter`).
    pub fn invalid_parameters(mut errors: Vec<FieldError>) -> Self {
        for e in &mut errors {
            if e.code == "Invalid" {
                e.code = "InvalidParameter".into();
            }
        }
        let message = summarize("Invalid parameters", &errors);
        Self::new(422, "InvalidParameters", message).with_errors(errors)
    }
    /// 404 `ResourceNotFound`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, "ResourceNotFound", message)
    }
    /// 409 with a specific Triton code.
    pub fn conflict(code: &str, message: impl Into<String>) -> Self {
        Self::new(409, code, message)
    }
    /// 400 `BadRequest` (unparseable input).
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }
    /// 401 `Unauthorized`.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(401, "Unauthorized", message)
    }
    /// 405 `BadMethod`.
    pub fn bad_method(message: impl Into<String>) -> Self {
        Self::new(405, "BadMethod", message)
    }
    /// 413 `RequestEntityTooLarge`.
    pub fn too_large(limit: usize) -> Self {
        Self::new(413, "RequestEntityTooLarge", format!("request body is larger than the {limit}-byte limit"))
    }
    /// 500 `InternalError`. The message must not leak internals; the cause is logged where it happened.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message)
    }
    /// 503 `ServiceUnavailable`.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(503, "ServiceUnavailable", message)
    }
}

/// "Invalid parameters: ram: must be at least 64 (MiB); name: is required".
fn summarize(prefix: &str, errors: &[FieldError]) -> String {
    if errors.is_empty() {
        return prefix.to_string();
    }
    let parts: Vec<String> = errors.iter().map(|e| format!("{}: {}", e.field, e.message)).collect();
    format!("{prefix}: {}", parts.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_lists_field_errors_and_message_names_them() {
        let err =
            ApiError::validation_409(vec![FieldError::missing("name"), FieldError::invalid("quota", "must be a multiple of 1024 (MiB)")]);
        assert_eq!(err.status, 409);
        let body = serde_json::to_value(err.body()).unwrap();
        assert_eq!(body["code"], "ValidationFailed");
        assert_eq!(body["errors"][0]["field"], "name");
        assert_eq!(body["errors"][1]["code"], "Invalid");
        assert!(body["message"].as_str().unwrap().contains("quota: must be a multiple of 1024 (MiB)"));
    }

    #[test]
    fn body_without_field_errors_omits_errors() {
        let body = serde_json::to_value(ApiError::not_found("package x not found").body()).unwrap();
        assert!(body.get("errors").is_none());
        assert_eq!(body["code"], "ResourceNotFound");
    }
}
