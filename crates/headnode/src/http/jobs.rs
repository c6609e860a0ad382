//! Job endpoints: `/jobs`, `/jobs/{uuid}`, `/jobs/{uuid}/wait`.

use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::http::Method;
use nereid_types::job::{EXECUTIONS, FIELDS, TASKS, render};
use nereid_types::query::{LIMIT, OFFSET, Param, QKind};

use super::{Api, AppState, BodyDoc, Doc, HttpResult, RespDoc, Route, ok, parse_query, path_uuid};

const LIST_PARAMS: &[Param] = &[
    Param::new("vm_uuid", QKind::Uuid, "Jobs of this VM."),
    Param::new("execution", QKind::Enum(EXECUTIONS), "Jobs in this state."),
    Param::new("task", QKind::Enum(TASKS), "Jobs of this kind."),
    LIMIT,
    OFFSET,
];
const WAIT_PARAMS: &[Param] = &[Param::new("timeout", QKind::Int { min: 1, max: 3600 }, "Seconds to wait at most (default 60).")];

pub fn routes() -> Vec<Route> {
    let doc = |id, summary, query, response| Doc { id, tag: "VMAPI", summary, query, body: BodyDoc::None, response };
    vec![
        Route::new(Method::GET, "/jobs", doc("ListJobs", "Jobs, newest first.", LIST_PARAMS, RespDoc::List(FIELDS)), list),
        Route::new(Method::GET, "/jobs/{uuid}", doc("GetJob", "One job with each step's result.", &[], RespDoc::Object(200, FIELDS)), get),
        Route::new(
            Method::GET,
            "/jobs/{uuid}/wait",
            doc("WaitJob", "Answers when the job is done (or at the timeout).", WAIT_PARAMS, RespDoc::Object(200, FIELDS)),
            wait,
        ),
    ]
}

async fn list(State(s): State<AppState>, RawQuery(raw): RawQuery) -> HttpResult {
    let q = parse_query(Api::Papi, LIST_PARAMS, raw.as_deref())?;
    ok(&s.app.list_jobs(&q, None).await?.iter().map(render).collect::<Vec<_>>())
}

async fn get(State(s): State<AppState>, Path(uuid): Path<String>) -> HttpResult {
    let uuid = path_uuid(Api::Papi, "uuid", &uuid)?;
    ok(&render(&s.app.get_job(uuid).await?))
}

async fn wait(State(s): State<AppState>, Path(uuid): Path<String>, RawQuery(raw): RawQuery) -> HttpResult {
    let q = parse_query(Api::Papi, WAIT_PARAMS, raw.as_deref())?;
    let uuid = path_uuid(Api::Papi, "uuid", &uuid)?;
    let secs = q.int("timeout").unwrap_or(60) as u64;
    ok(&render(&s.app.wait_job(uuid, Duration::from_secs(secs)).await?))
}
