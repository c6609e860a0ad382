//! What a tenant may see of an error: the one place CloudAPI's answers lose operator
//! detail.
//!
//! The operator APIs explain themselves fully — a failed placement names every server
//! with its hostname, free RAM and the VMs (of any account) that fill it; an address
//! in use names what holds it; a failed provision keeps the step that broke; a store
//! outage names the database. Tenants share the fleet with strangers, so CloudAPI
//! answers as Triton's does: the code and a message about *their* request, nothing
//! about servers or other accounts. [`for_tenant`] is applied to every CloudAPI error
//! answer (in [`super::CloudError`]'s `IntoResponse`), after [`super::cloud_error`] has
//! given it CloudAPI's code; what it removes is logged there for operators, and stays in
//! VMAPI's answers and the job.
//!
//! ```text
//!   InsufficientCapacity  → "No compute resources available" (CNAPI's own words), no
//!                           per-server errors, no extra members
//!   InvalidState (failed) → "VM <own uuid> failed to provision; delete it" (the step's
//!                           reason stays in the job)
//!   field UsedBy          → "<ip> is already in use" (the holder stays in NAPI)
//!   500 / 503             → a generic message (the cause is logged)
//!   any                   → extra top-level members dropped (operator-only)
//! ```

use nereid_types::{ApiError, FieldError};

/// CNAPI's message for a placement that finds no server (what Triton's tenants read).
pub const NO_CAPACITY: &str = "No compute resources available";
/// The message of a 500 (the cause is in the headnode's log).
pub const INTERNAL: &str = "Internal error";
/// The message of a 503.
pub const UNAVAILABLE: &str = "The service is temporarily unavailable; retry later";

/// The error as a tenant may see it, and whether anything was taken out (pure).
pub fn for_tenant(e: ApiError) -> (ApiError, bool) {
    let before = e.body_text();
    let out = redact(e);
    let changed = out.body_text() != before;
    (out, changed)
}

fn redact(mut e: ApiError) -> ApiError {
    e.extra = None;
    match (e.status, e.code.as_str()) {
        (_, "InsufficientCapacity" | "NoAllocatableServersError") => return ApiError::new(409, "InsufficientCapacity", NO_CAPACITY),
        (500, _) => return ApiError::new(500, "InternalError", INTERNAL),
        (503, _) => return ApiError::new(503, "ServiceUnavailable", UNAVAILABLE),
        _ => {}
    }
    if let Some(at) = e.message.find(" failed to provision (") {
        e.message = format!("{} failed to provision; delete it", &e.message[..at]);
    }
    let mut used = false;
    for f in e.errors.iter_mut().filter(|f| f.code == "UsedBy") {
        f.message = in_use(&f.message);
        used = true;
    }
    if used {
        e.message = e.errors.iter().map(|f: &FieldError| format!("{}: {}", f.field, f.message)).collect::<Vec<_>>().join("; ");
    }
    e
}

/// "10.0.0.5 is in use by zone <uuid>" → "10.0.0.5 is already in use".
fn in_use(message: &str) -> String {
    match message.split_once(" is in use by ") {
        Some((ip, _)) => format!("{ip} is already in use"),
        None => "already in use".into(),
    }
}

trait BodyText {
    fn body_text(&self) -> String;
}

impl BodyText for ApiError {
    fn body_text(&self) -> String {
        serde_json::to_string(&self.body()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_placement_failure_names_no_server_and_no_other_vm() {
        let operator = ApiError::conflict(
            "NoAllocatableServersError",
            "No compute resources available: cn-7 (0b0e…): 512 MiB free; largest users: 4f2a… (bob) 8192 MiB",
        )
        .with_errors(vec![FieldError::invalid("0b0e7a4e-0000-4000-8000-000000000001", "cn-7: 512 MiB of RAM free")])
        .with_extra("servers", json!([{"hostname": "cn-7"}]))
        .with_extra("warnings", json!(["VM 4f2a… on cn-7 is suspect"]));
        for e in [operator.clone(), super::super::cloud_error(operator)] {
            let (t, changed) = for_tenant(e);
            assert!(changed);
            assert_eq!(
                serde_json::to_value(t.body()).unwrap(),
                json!({"code": "InsufficientCapacity", "message": "No compute resources available"})
            );
            assert_eq!(t.status, 409);
        }
    }

    #[test]
    fn a_failed_provision_keeps_its_reason_for_operators() {
        let e = ApiError::new(
            409,
            "InvalidState",
            "VM 11111111-2222-4333-8444-555555555555 failed to provision (ensure: server cn-7 refused); delete it",
        );
        let (t, changed) = for_tenant(e);
        assert!(changed);
        assert_eq!(t.message, "VM 11111111-2222-4333-8444-555555555555 failed to provision; delete it");
        assert_eq!(t.code, "InvalidState");
    }

    #[test]
    fn an_address_in_use_does_not_name_its_holder() {
        let e = ApiError::invalid_parameters(vec![FieldError {
            field: "ip".into(),
            code: "UsedBy".into(),
            message: "10.88.0.12 is in use by zone 4f2a0000-0000-4000-8000-000000000009".into(),
        }]);
        let (t, _) = for_tenant(super::super::cloud_error(e));
        let text = serde_json::to_string(&t.body()).unwrap();
        assert!(!text.contains("4f2a0000") && !text.contains("zone"), "{text}");
        assert_eq!(t.message, "ip: 10.88.0.12 is already in use");
        assert_eq!(t.code, "InvalidArgument");
    }

    #[test]
    fn internal_detail_stays_in_the_log() {
        let (t, changed) =
            for_tenant(ApiError::internal("store: error returned from database: disk I/O error at /var/lib/nereid/nereid.db"));
        assert!(changed);
        assert_eq!((t.status, t.code.as_str(), t.message.as_str()), (500, "InternalError", INTERNAL));
        let (t, _) = for_tenant(ApiError::unavailable("store unreachable: postgres://nereid@10.0.0.2/nereid"));
        assert_eq!((t.status, t.message.as_str()), (503, UNAVAILABLE));
    }

    #[tokio::test]
    async fn every_cloudapi_error_answer_is_redacted_however_it_was_made() {
        use axum::response::IntoResponse;
        let no_fit = || {
            ApiError::conflict("NoAllocatableServersError", "No compute resources available: cn-7 (0b0e7a4e): full")
                .with_extra("servers", json!([{"hostname": "cn-7"}]))
        };
        // Through the From conversion (cloud_error) and built directly alike.
        for e in [super::super::CloudError::from(no_fit()), super::super::CloudError(no_fit())] {
            let resp = e.into_response();
            assert_eq!(resp.status(), axum::http::StatusCode::CONFLICT);
            let body = axum::body::to_bytes(resp.into_body(), 1 << 16).await.unwrap();
            let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(body, json!({"code": "InsufficientCapacity", "message": NO_CAPACITY}));
        }
    }

    #[test]
    fn tenant_errors_pass_unchanged() {
        for e in [
            ApiError::new(404, "ResourceNotFound", "instance x does not exist"),
            ApiError::new(409, "InvalidArgument", "name: web-1 is already the name of instance y"),
            ApiError::new(403, "NotAuthorized", "alice is not allowed to act on account bob"),
            ApiError::new(429, "RequestThrottled", "slow down"),
            ApiError::new(501, "NotImplemented", "Volumes (GET /my/volumes) is not implemented by this cloud yet"),
        ] {
            let (t, changed) = for_tenant(e.clone());
            assert!(!changed, "{e:?}");
            assert_eq!((t.status, t.code, t.message), (e.status, e.code, e.message));
        }
    }
}
