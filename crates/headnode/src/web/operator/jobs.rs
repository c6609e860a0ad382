//! Jobs: the list (filters by execution, task and VM; running and failed one click away)
//! and one job with every step, its undo steps, its error and, for a provision, how
//! placement chose its server and why each other server was refused. A job still running
//! refreshes itself (`/jobs/{uuid}/fragment`). Shared renderings other views embed:
//! [`job_row`] with [`JOB_COLUMNS`], [`job_detail`], [`job_live`], and
//! [`placement_refusal`] for a CreateVm or resize that no server could take.
//!
//! Reads `GET /jobs` and `GET /jobs/{uuid}` of the operator API (VMAPI's job shape:
//! `chain`, `chain_results`, `onerror_results`, `params.placement`).

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use maud::{Markup, html};
use nereid_types::ApiError;
use nereid_types::job::{EXECUTIONS, TASKS};
use serde_json::Value;

use crate::web::Web;
use crate::web::api::enc;
use crate::web::page::{self, api_error, badge, error_box, facts, field, json_block, table};
use crate::web::session::Operator;

/// Jobs per page of the list.
const PAGE: usize = 100;

pub fn routes() -> Router<Web> {
    Router::new().route("/jobs", get(list)).route("/jobs/{uuid}", get(show)).route("/jobs/{uuid}/fragment", get(fragment))
}

/// The columns [`job_row`] fills.
pub const JOB_COLUMNS: &[&str] = &["Job", "Task", "State", "VM", "Created", "Error"];

/// At most `n` characters of `s`, with an ellipsis when cut.
fn short(s: &str, n: usize) -> String {
    if s.chars().count() <= n { s.to_string() } else { format!("{}…", s.chars().take(n).collect::<String>()) }
}

/// One job as a table row.
pub fn job_row(job: &Value) -> Markup {
    let uuid = field(job, "uuid");
    let vm = field(job, "vm_uuid");
    html! {
        tr {
            td { a href={ "/jobs/" (uuid) } { (uuid) } }
            td { (field(job, "task")) }
            td { (badge(&field(job, "execution"))) }
            td { @if !vm.is_empty() { a href={ "/vms/" (vm) } { (vm) } } }
            td { (field(job, "created_at")) }
            td { (short(&field(job, "error"), 160)) }
        }
    }
}

/// Whether a job has ended (succeeded, failed or canceled).
pub fn is_done(job: &Value) -> bool {
    matches!(field(job, "execution").as_str(), "succeeded" | "failed" | "canceled")
}

/// A time of day from an ISO timestamp (the date is the job's, shown above), the whole
/// timestamp in `datetime`.
fn clock(iso: &str) -> Markup {
    let shown = iso.split_once('T').map(|(_, t)| t.trim_end_matches('Z')).unwrap_or(iso);
    html! { @if !iso.is_empty() { time datetime=(iso) { (shown) } } }
}

/// A table of step results (`chain_results` or `onerror_results`); with `chain`, the
/// steps not run yet follow as pending (the next one as running while the job runs).
fn steps(caption: &str, results: &[Value], chain: &[String], running: bool) -> Markup {
    let mut rows: Vec<Markup> = results
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let error = field(r, "error");
            html! {
                tr {
                    td { (i + 1) }
                    td { (field(r, "name")) }
                    td { @if error.is_empty() { (badge("ok")) } @else { (badge("failed")) } }
                    td {
                        @if !error.is_empty() { strong.step-error { (error) } @if !field(r, "result").is_empty() { br; } }
                        (field(r, "result"))
                    }
                    td { (clock(&field(r, "started_at"))) }
                    td { (clock(&field(r, "finished_at"))) }
                }
            }
        })
        .collect();
    for (i, name) in chain.iter().enumerate().skip(results.len()) {
        let state = if running && i == results.len() { "running" } else { "pending" };
        rows.push(html! {
            tr { td { (i + 1) } td { (name) } td { (badge(state)) } td {} td {} td {} }
        });
    }
    html! { div.job-steps { (table(caption, &["#", "Step", "Outcome", "Result or error", "Started", "Finished"], rows)) } }
}

/// Rejected servers as a table: server → the placement step that dropped it, and why.
fn rejections(caption: &str, rejected: &[Value]) -> Markup {
    let rows = rejected
        .iter()
        .map(|r| {
            let server = field(r, "server");
            let host = field(r, "hostname");
            html! {
                tr {
                    td { a href={ "/servers/" (server) } { @if host.is_empty() { (server) } @else { (host) } } br; span.hint.uuid { (server) } }
                    td { code { (field(r, "step")) } }
                    td { (field(r, "reason")) }
                }
            }
        })
        .collect();
    table(caption, &["Server", "Refused at", "Why"], rows)
}

/// How placement chose the server (`params.placement` of a provision): the chosen server,
/// the servers left after each step, every refused server with its reason, and warnings
/// about records placement counted.
pub fn placement(p: &Value) -> Markup {
    let server = field(p, "server_uuid");
    let list = |k: &str| p.get(k).and_then(Value::as_array).cloned().unwrap_or_default();
    let (stepped, rejected, warnings) = (list("steps"), list("rejected"), list("warnings"));
    html! {
        section.placement aria-labelledby="placement" {
            h2 #placement { "Placement" }
            @if !server.is_empty() {
                p { "Placed on " a href={ "/servers/" (server) } { (server) } "." }
            }
            (rejections("Servers refused, and why", &rejected))
            @if !stepped.is_empty() {
                details {
                    summary { "Servers left after each of placement's " (stepped.len()) " steps" }
                    (table("Servers left after each step", &["Step", "Servers left"], stepped.iter().map(|s| html! {
                        tr { td { code { (field(s, "step")) } } td { (field(s, "remaining")) } }
                    }).collect()))
                }
            }
            @if !warnings.is_empty() {
                h3 { "Warnings" }
                ul { @for w in &warnings { li { (page::text(w)) } } }
            }
        }
    }
}

/// A placement that no server could take (CreateVm's or a resize's 409, whose field
/// errors name each server: field = server UUID, code = the step, message = "host:
/// reason"), as the error and a table server → reason. Other errors: the error box.
pub fn placement_refusal(e: &ApiError) -> Markup {
    if !matches!(e.code.as_str(), "NoAllocatableServersError" | "InsufficientCapacity") || e.errors.is_empty() {
        return error_box(e);
    }
    let rejected: Vec<Value> = e
        .errors
        .iter()
        .map(|f| {
            let (host, reason) = f.message.split_once(": ").unwrap_or(("", f.message.as_str()));
            serde_json::json!({"server": f.field, "hostname": host, "step": f.code, "reason": reason})
        })
        .collect();
    html! {
        div.error role="alert" {
            p { strong { (e.code) } ": no server can take this VM. Each server's reason follows." }
        }
        (rejections("Why each server was refused", &rejected))
    }
}

/// A job in full: its facts, its error, every step with its result and times, the undo
/// steps run after a failure, and for a provision how placement chose (and refused)
/// servers; then its parameters and data as JSON.
pub fn job_detail(job: &Value) -> Markup {
    let vm = field(job, "vm_uuid");
    let server = field(job, "server_uuid");
    let error = field(job, "error");
    let chain: Vec<String> =
        job.get("chain").and_then(Value::as_array).map(|c| c.iter().map(|s| field(s, "name")).collect()).unwrap_or_default();
    let list = |k: &str| job.get(k).and_then(Value::as_array).cloned().unwrap_or_default();
    let (results, undone) = (list("chain_results"), list("onerror_results"));
    let execution = field(job, "execution");
    let unwinding = !undone.is_empty() || !error.is_empty();
    let params = job.get("params");
    html! {
        (facts(&[
            ("Job", html! { (field(job, "uuid")) }),
            ("Task", html! { (field(job, "task")) " " span.hint { (field(job, "name")) } }),
            ("State", badge(&execution)),
            ("VM", html! { @if !vm.is_empty() { a href={ "/vms/" (vm) } { (vm) } } }),
            ("Server", html! { @if server.is_empty() { "none" } @else { a href={ "/servers/" (server) } { (server) } } }),
            ("Created", html! { (field(job, "created_at")) }),
            ("Started", html! { (field(job, "started")) }),
            ("Finished", html! { (field(job, "finished")) }),
            ("Elapsed", html! { @if let Some(s) = job.get("elapsed").and_then(Value::as_f64) { (format!("{s:.1} s")) } }),
        ]))
        @if !error.is_empty() {
            div.error role="alert" { p { strong { "The job failed" } ": " (error) } }
        }
        h2 #steps { "Steps" }
        (steps(&format!("{} of {} step(s) run", results.len(), chain.len()), &results, if unwinding { &[] } else { &chain }, execution == "running"))
        @if !undone.is_empty() || (unwinding && execution == "running") {
            h2 #undo { "Undo steps (onerror)" }
            p.hint { "After a failure the steps already done are undone, last first." }
            (steps(&format!("{} undo step(s) run", undone.len()), &undone, &[], false))
        }
        @if let Some(p) = params.and_then(|p| p.get("placement")).filter(|p| p.is_object()) {
            (placement(p))
        }
        details {
            summary { "Parameters and data" }
            @if let Some(p) = params { h3 { "Parameters" } (json_block(p)) }
            @if let Some(d) = job.get("data") { h3 { "Data" } (json_block(d)) }
        }
    }
}

/// [`job_detail`], refreshing itself every few seconds while the job has not ended.
pub fn job_live(job: &Value) -> Markup {
    if is_done(job) { job_detail(job) } else { page::live(&format!("/jobs/{}/fragment", enc(&field(job, "uuid"))), job_detail(job)) }
}

async fn show(State(web): State<Web>, Operator(s): Operator, Path(uuid): Path<String>) -> Response {
    match web.admin_get(&format!("/jobs/{}", enc(&uuid))).await {
        Ok(job) => page::page(&s, &format!("Job {}", field(&job, "task")), job_live(&job)),
        Err(e) => api_error(Some(&s), "Job", &e),
    }
}

async fn fragment(State(web): State<Web>, Operator(_): Operator, Path(uuid): Path<String>) -> Response {
    match web.admin_get(&format!("/jobs/{}", enc(&uuid))).await {
        Ok(job) => page::fragment(job_detail(&job)),
        Err(e) => {
            let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            (status, page::fragment(error_box(&e))).into_response()
        }
    }
}

/// The list's filters, as given.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filters {
    pub execution: String,
    pub task: String,
    pub vm_uuid: String,
    pub offset: usize,
}

impl Filters {
    pub fn parse(raw: Option<&str>) -> Self {
        let mut f = Filters::default();
        for (k, v) in url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
            let v = v.trim().to_string();
            match k.as_ref() {
                "execution" => f.execution = v,
                "task" => f.task = v,
                "vm_uuid" => f.vm_uuid = v,
                "offset" => f.offset = v.parse().unwrap_or(0),
                _ => {}
            }
        }
        f
    }

    /// The query string (without `?`) for these filters at `offset`.
    pub fn query(&self, offset: usize) -> String {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in [("execution", &self.execution), ("task", &self.task), ("vm_uuid", &self.vm_uuid)] {
            if !v.is_empty() {
                q.append_pair(k, v);
            }
        }
        if offset > 0 {
            q.append_pair("offset", &offset.to_string());
        }
        q.finish()
    }
}

fn select(name: &str, label: &str, choices: &[&str], current: &str) -> Markup {
    html! {
        label for=(name) {
            (label)
            select id=(name) name=(name) {
                option value="" selected[current.is_empty()] { "any" }
                @for c in choices { option value=(c) selected[*c == current] { (c) } }
            }
        }
    }
}

/// The list page: quick links, the filters form, the jobs and the next page's link.
pub fn render_list(f: &Filters, jobs: Result<&[Value], &ApiError>) -> Markup {
    html! {
        nav.actions aria-label="Job states" {
            a href="/jobs?execution=running" { "Running" }
            a href="/jobs?execution=queued" { "Queued" }
            a href="/jobs?execution=failed" { "Failed" }
            a href="/jobs" { "All" }
        }
        form.filters method="get" action="/jobs" {
            (select("execution", "State", EXECUTIONS, &f.execution))
            (select("task", "Task", TASKS, &f.task))
            label for="vm_uuid" { "VM UUID" input #vm_uuid type="text" name="vm_uuid" value=(f.vm_uuid) size="36"; }
            button type="submit" { "Filter" }
        }
        @match jobs {
            Ok(jobs) => {
                (table(&format!("Jobs {}–{}, newest first", f.offset + usize::from(!jobs.is_empty()), f.offset + jobs.len()), JOB_COLUMNS, jobs.iter().map(job_row).collect()))
                nav.actions aria-label="Pages" {
                    @if f.offset > 0 { a href={ "/jobs?" (f.query(f.offset.saturating_sub(PAGE))) } { "Newer jobs" } }
                    @if jobs.len() == PAGE { a href={ "/jobs?" (f.query(f.offset + PAGE)) } { "Older jobs" } }
                }
            }
            Err(e) => (error_box(e)),
        }
    }
}

async fn list(State(web): State<Web>, Operator(s): Operator, RawQuery(raw): RawQuery) -> Response {
    let f = Filters::parse(raw.as_deref());
    let mut q = f.query(f.offset);
    q.push_str(if q.is_empty() { "limit=" } else { "&limit=" });
    q.push_str(&PAGE.to_string());
    match web.admin_get(&format!("/jobs?{q}")).await {
        Ok(v) => {
            let jobs = v.as_array().cloned().unwrap_or_default();
            page::page(&s, "Jobs", render_list(&f, Ok(&jobs)))
        }
        Err(e) => {
            let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            page::respond(status, Some(&s), "Jobs", render_list(&f, Err(&e)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn failed_provision() -> Value {
        json!({"uuid": "j1", "name": "provision-nereid-1", "task": "provision", "execution": "failed", "vm_uuid": "v1", "server_uuid": "s1",
            "chain": [{"name": "reserve"}, {"name": "nics"}, {"name": "create"}],
            "chain_results": [{"name": "reserve", "result": "placed on cn1", "error": "", "started_at": "t0", "finished_at": "t1"},
                              {"name": "nics", "result": "1 NIC(s)", "error": ""},
                              {"name": "create", "result": "", "error": "simulated <failure>"}],
            "onerror_results": [{"name": "nics", "result": "1 NIC(s) deleted", "error": ""}],
            "error": "create: simulated <failure>",
            "params": {"placement": {"server_uuid": "s1", "steps": [{"step": "hard_filter_reserved", "remaining": 1}],
                "rejected": [{"server": "s2", "hostname": "cn2", "step": "hard_filter_reserved", "reason": "reserved by the operator"}], "warnings": []}}})
    }

    #[test]
    fn a_failed_job_shows_each_step_its_undo_steps_its_error_and_placement() {
        let out = job_detail(&failed_provision()).into_string();
        for want in [
            "placed on cn1",
            "simulated &lt;failure&gt;",
            "1 NIC(s) deleted",
            "Undo steps",
            "The job failed",
            "reserved by the operator",
            "href=\"/servers/s2\"",
            "cn2",
            "href=\"/vms/v1\"",
        ] {
            assert!(out.contains(want), "{want} in {out}");
        }
        assert!(!out.contains("pending"), "a failed job has no pending steps: {out}");
        assert!(!job_live(&failed_provision()).into_string().contains("data-live"), "an ended job does not refresh");
    }

    #[test]
    fn a_running_job_shows_what_is_left_and_refreshes() {
        let mut j = failed_provision();
        j["execution"] = json!("running");
        j["error"] = Value::Null;
        j["onerror_results"] = json!([]);
        j["chain_results"] = json!([{"name": "reserve", "result": "ok", "error": ""}]);
        let out = job_live(&j).into_string();
        assert!(out.contains("data-live=\"/jobs/j1/fragment\""), "{out}");
        assert!(out.contains("nics") && out.contains(">running<") && out.contains(">pending<"), "{out}");
    }

    #[test]
    fn a_refused_placement_names_every_server() {
        let mut e = ApiError::conflict("NoAllocatableServersError", "No compute resources available: …");
        e.errors = vec![nereid_types::FieldError {
            field: "s1".into(),
            code: "hard_filter_min_ram".into(),
            message: "cn1: needs 64 GiB, has 12 GiB".into(),
        }];
        let out = placement_refusal(&e).into_string();
        assert!(
            out.contains("href=\"/servers/s1\"")
                && out.contains("cn1")
                && out.contains("needs 64 GiB, has 12 GiB")
                && out.contains("hard_filter_min_ram"),
            "{out}"
        );
        assert!(placement_refusal(&ApiError::not_found("x")).into_string().contains("ResourceNotFound"));
    }

    #[test]
    fn filters_round_trip_and_page() {
        let f = Filters::parse(Some("execution=failed&task=&vm_uuid=+abc+&offset=100&junk=1"));
        assert_eq!(f, Filters { execution: "failed".into(), task: String::new(), vm_uuid: "abc".into(), offset: 100 });
        assert_eq!(f.query(0), "execution=failed&vm_uuid=abc");
        let jobs = vec![json!({"uuid": "j"}); PAGE];
        let out = render_list(&f, Ok(&jobs)).into_string();
        assert!(out.contains("Older jobs") && out.contains("Newer jobs") && out.contains("offset=200"), "{out}");
    }
}
