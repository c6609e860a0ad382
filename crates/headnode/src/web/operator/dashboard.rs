//! The operator's dashboard (`/dashboard`): every server with its status, capacity used
//! and free, its hottest temperature (from its last heartbeat, when it has sensors) and
//! problems; then the jobs running or queued and the latest failed ones, in a live region
//! (`/dashboard/jobs`) that moves without reloading.
//!
//! Reads `GET /servers?extras=sysinfo`, `GET /vms?state=active` (through
//! [`super::servers::overview`]) and `GET /jobs?execution=…` of the operator API.

use std::collections::HashMap;

use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use maud::{Markup, html};
use nereid_types::ApiError;
use serde_json::Value;

use super::jobs::{JOB_COLUMNS, job_row};
use super::servers::{self, capacity};
use crate::web::Web;
use crate::web::page::{self, error_box, field, live, table};
use crate::web::session::Operator;

/// Failed jobs shown.
const FAILED_SHOWN: usize = 10;
/// Running and queued jobs shown (each).
const ACTIVE_SHOWN: usize = 50;

pub fn routes() -> Router<Web> {
    Router::new().route("/dashboard", get(dashboard)).route("/dashboard/jobs", get(jobs_fragment))
}

/// The jobs the dashboard shows: running, queued, and the latest failed.
pub struct Jobs {
    pub running: Vec<Value>,
    pub queued: Vec<Value>,
    pub failed: Vec<Value>,
}

async fn load_jobs(web: &Web) -> Result<Jobs, ApiError> {
    let get = |execution: &'static str, limit: usize| async move {
        web.admin_get(&format!("/jobs?execution={execution}&limit={limit}")).await.map(|v| v.as_array().cloned().unwrap_or_default())
    };
    Ok(Jobs {
        running: get("running", ACTIVE_SHOWN).await?,
        queued: get("queued", ACTIVE_SHOWN).await?,
        failed: get("failed", FAILED_SHOWN).await?,
    })
}

/// The jobs part (what the live region reloads).
pub fn render_jobs(jobs: &Result<Jobs, ApiError>) -> Markup {
    match jobs {
        Err(e) => error_box(e),
        Ok(j) => {
            let active: Vec<Markup> = j.running.iter().chain(&j.queued).map(job_row).collect();
            html! {
                (table(&format!("Running and queued jobs ({})", active.len()), JOB_COLUMNS, active))
                (table(&format!("Latest failed jobs ({})", j.failed.len()), JOB_COLUMNS, j.failed.iter().map(job_row).collect()))
                p { a href="/jobs?execution=failed" { "All failed jobs" } " · " a href="/jobs" { "All jobs" } }
            }
        }
    }
}

/// The servers part: a summary line, then one row per server.
pub fn render_servers(servers: &[Value], by_server: &HashMap<String, Vec<Value>>) -> Markup {
    let running = servers.iter().filter(|s| field(s, "status") == "running").count();
    let caps: Vec<capacity::Capacity> = servers.iter().map(|s| servers::capacity_of(s, by_server)).collect();
    let ram_total: f64 = caps.iter().map(|c| c.ram_provisionable_mib).sum();
    let ram_used: u64 = caps.iter().map(|c| c.ram_used_mib).sum();
    let vms: usize = caps.iter().map(|c| c.vms).sum();
    let rows = servers
        .iter()
        .zip(&caps)
        .map(|(s, c)| {
            html! {
                tr {
                    td { (servers::server_link(s)) }
                    td { (servers::status(s)) }
                    td { (capacity::render(c)) }
                    td { (c.vms) }
                    td { (servers::hottest_temperature(s)) }
                    td { (servers::problems(s)) }
                }
            }
        })
        .collect();
    html! {
        p.summary {
            (servers.len()) " server(s): " (running) " running"
            @if running < servers.len() { ", " strong { (servers.len() - running) " not running" } }
            ". " (vms) " active VM(s) using " (capacity::size(ram_used as f64)) " of " (capacity::size(ram_total)) " provisionable RAM."
        }
        (table("Servers", &["Server", "Status", "Capacity", "VMs", "Temperatures", "Problems"], rows))
    }
}

async fn dashboard(State(web): State<Web>, Operator(s): Operator) -> Response {
    let servers_part = match servers::overview(&web).await {
        Ok((servers, by_server)) => render_servers(&servers, &by_server),
        Err(e) => error_box(&e),
    };
    let jobs = load_jobs(&web).await;
    page::page(
        &s,
        "Dashboard",
        html! {
            section aria-labelledby="servers-h" {
                h2 #servers-h { "Servers" }
                (servers_part)
                p { a href="/servers" { "All servers" } }
            }
            section aria-labelledby="jobs-h" {
                h2 #jobs-h { "Jobs" }
                (live("/dashboard/jobs", render_jobs(&jobs)))
            }
        },
    )
}

async fn jobs_fragment(State(web): State<Web>, Operator(_): Operator) -> Response {
    page::fragment(render_jobs(&load_jobs(&web).await))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_dashboard_names_each_server_and_the_failed_jobs() {
        let servers = vec![
            json!({"uuid": "u1", "hostname": "cn1", "status": "running", "ram": 4096, "reservation_ratio": 0.0, "problems": [],
                "sysinfo": {"CPU Online Count": 4, "Zpool Size in GiB": 10, "CPU Temperature": "41 C"}}),
            json!({"uuid": "u2", "hostname": "cn2", "status": "unknown", "ram": 4096, "problems": [{"kind": "nic_tag_link", "message": "link down"}]}),
            json!({"uuid": "u3", "hostname": "cn3", "status": "running", "ram": 4096, "problems": [], "temperatures": [
                {"sensor": "coretemp", "label": "Package id 0", "celsius": 45.0, "at": "2026-01-01T00:00:00.000Z"},
                {"sensor": "nvme", "label": "Composite", "celsius": 51.86, "at": "2026-01-01T00:00:00.000Z"},
                {"sensor": "coretemp", "label": "Core 0", "celsius": 44.0, "at": "2026-01-01T00:00:00.000Z"}]}),
        ];
        let by = HashMap::from([("u1".to_string(), vec![json!({"ram": 1024, "vcpus": 1, "quota": 1})])]);
        let out = render_servers(&servers, &by).into_string();
        for want in [
            "cn1",
            "cn2",
            "2 running",
            "1 not running",
            "1.0 GiB used, 3.0 GiB free of 4.0 GiB",
            "CPU Temperature: 41 C",
            "link down",
            "not reported",
            // The hottest reading, with its label, of a server that has sensors.
            "Composite (nvme): <strong>51.9 °C</strong> <span class=\"hint\">(hottest of 3)</span>",
        ] {
            assert!(out.contains(want), "{want} in {out}");
        }
        assert!(!out.contains("Package id 0"), "only the hottest on the dashboard: {out}");
        let jobs = Ok(Jobs {
            running: vec![],
            queued: vec![],
            failed: vec![json!({"uuid": "j9", "task": "provision", "execution": "failed", "error": "boom"})],
        });
        let out = render_jobs(&jobs).into_string();
        assert!(out.contains("href=\"/jobs/j9\"") && out.contains("boom") && out.contains("Latest failed jobs (1)"), "{out}");
    }
}
