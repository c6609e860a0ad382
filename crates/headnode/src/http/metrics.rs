//! `GET /metrics`: Prometheus text.

use axum::extract::State;
use axum::http::{Method, StatusCode, header};
use axum::response::IntoResponse;
use nereid_store::{Filter, ListQuery};
use serde_json::{Value, json};

use super::{AppState, BodyDoc, Doc, HttpResult, RespDoc, Route};
use crate::app::store_error;

fn text_schema() -> Value {
    json!({"type": "string", "description": "Prometheus text exposition format 0.0.4"})
}

pub fn routes() -> Vec<Route> {
    vec![Route::new(
        Method::GET,
        "/metrics",
        Doc {
            id: "Metrics",
            tag: "Common",
            summary: "Prometheus metrics: requests, latencies, jobs by state, servers by status, VMs by state, allocation time.",
            query: &[],
            body: BodyDoc::None,
            response: RespDoc::Text(text_schema),
        },
        metrics,
    )]
}

async fn metrics(State(s): State<AppState>) -> HttpResult {
    let app = &s.app;
    let mut jobs = Vec::new();
    for e in nereid_types::job::EXECUTIONS {
        let n = app.store.count(crate::buckets::JOBS.name, &Filter::eq("execution", *e)).await.map_err(store_error)?;
        jobs.push((format!("execution=\"{e}\""), n as f64));
    }
    // The servers' UUIDs (their keys) and heartbeat times: no record or inventory decoded.
    let servers = app.store.list_raw(crate::buckets::SERVERS.name, &ListQuery::all()).await.map_err(store_error)?;
    let times = app.heartbeat_times().await?;
    let (now, timeout) = (nereid_types::time::now_ms(), app.cfg.server_timeout.as_millis() as i64);
    let (mut running, mut unknown) = (0.0, 0.0);
    for srv in &servers {
        let at = uuid::Uuid::parse_str(&srv.key).ok().and_then(|u| times.get(&u).copied());
        if nereid_types::server::status(at, now, timeout).0 == "running" {
            running += 1.0;
        } else {
            unknown += 1.0;
        }
    }
    let vms: Vec<(String, f64)> = app.vm_state_counts().await?.into_iter().map(|(k, v)| (format!("state=\"{k}\""), v as f64)).collect();
    let text = app.metrics.render(&[
        ("nereid_jobs", "Jobs by execution state.", jobs),
        (
            "nereid_servers",
            "Compute nodes by status.",
            vec![("status=\"running\"".into(), running), ("status=\"unknown\"".into(), unknown)],
        ),
        ("nereid_vms", "VM records by state.", vms),
        (
            "nereid_audit_write_failures",
            "Audit records this headnode could not write since it started.",
            vec![(String::new(), app.audit.write_failures.load(std::sync::atomic::Ordering::Relaxed) as f64)],
        ),
    ]);
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}
