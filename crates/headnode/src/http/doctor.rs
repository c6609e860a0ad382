//! `/doctor`: every inconsistency between the records and reality (GET), and the safe
//! repairs applied (POST `?action=repair`). The logic is `app::doctor`.

use axum::extract::{RawQuery, State};
use axum::http::Method;
use nereid_types::query::{Param, QKind};
use serde_json::{Value, json};

use super::{Api, AppState, BodyDoc, Doc, HttpResult, RespDoc, Route, ok, parse_query};

const REPAIR_PARAMS: &[Param] = &[Param::new("action", QKind::Enum(&["repair"]), "repair (required): apply the safe repairs.")];

fn report_schema() -> Value {
    json!({
        "type": "object",
        "required": ["findings", "repairs", "checked"],
        "properties": {
            "findings": {"type": "array", "items": {"type": "object", "required": ["kind", "subject", "message", "repair"], "properties": {
                "kind": {"type": "string"},
                "subject": {"type": "string"},
                "vm_uuid": {"type": "string", "format": "uuid"},
                "message": {"type": "string"},
                "repair": {"type": "string", "description": "What --repair does, or what the operator must do."},
                "safe_repair": {"type": "object", "description": "Present when --repair applies it."}
            }}},
            "repairs": {"type": "array", "items": {"type": "object"}},
            "checked": {"type": "object"}
        }
    })
}

pub fn routes() -> Vec<Route> {
    let doc = |id, summary, query| Doc {
        id,
        tag: "Operations",
        summary,
        query,
        body: BodyDoc::None,
        response: RespDoc::Schema(200, report_schema),
    };
    vec![
        Route::new(
            Method::GET,
            "/doctor",
            doc(
                "Doctor",
                "Every inconsistency: damaged or half-empty VM records, VMs their server does not run or that run without a record, NICs, addresses and reservations owned by nothing, silent servers, missing or corrupt image files, stuck jobs — each with its repair.",
                &[],
            ),
            get,
        ),
        Route::new(
            Method::POST,
            "/doctor",
            doc(
                "DoctorRepair",
                "Applies the safe repairs (sync a VM, free what belongs to nothing), records each as a `repair` job, and answers what remains.",
                REPAIR_PARAMS,
            ),
            repair,
        ),
    ]
}

async fn get(State(s): State<AppState>) -> HttpResult {
    ok(&s.app.doctor(false).await?)
}

async fn repair(State(s): State<AppState>, RawQuery(raw): RawQuery) -> HttpResult {
    let q = parse_query(Api::Papi, REPAIR_PARAMS, raw.as_deref())?;
    if q.str("action") != Some("repair") {
        return Err(nereid_types::ApiError::validation_409(vec![nereid_types::FieldError::missing("action")]).into());
    }
    ok(&s.app.doctor(true).await?)
}
