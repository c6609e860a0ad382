//! `/audit`: the account's activity. CloudAPI keeps an audit log per machine
//! (MachineAudit); this page asks it for every machine of the account, deleted ones too
//! (`tombstone`), and merges the entries newest first. `?machine=ID` shows one machine's.

use axum::Router;
use axum::extract::{Query, State};
use axum::response::Response;
use axum::routing::get;
use futures_util::future::join_all;
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::Value;

use super::machines::view::{enc, machine_url, when};
use crate::web::Web;
use crate::web::page::{self, field};
use crate::web::session::Session;

/// At most this many entries are shown (the newest).
pub const SHOWN: usize = 500;

pub fn routes() -> Router<Web> {
    Router::new().route("/audit", get(show))
}

/// One entry of the merged log.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub time: String,
    pub machine_id: String,
    pub machine_name: String,
    /// Whether the machine is deleted (no page to link to).
    pub deleted: bool,
    pub action: String,
    pub success: String,
}

/// Merges each machine's entries (with the machine), newest first, at most [`SHOWN`].
pub fn merge(per_machine: &[(Value, Vec<Value>)]) -> Vec<Entry> {
    let mut out: Vec<Entry> = per_machine
        .iter()
        .flat_map(|(m, entries)| {
            entries.iter().map(move |e| Entry {
                time: field(e, "time"),
                machine_id: field(m, "id"),
                machine_name: field(m, "name"),
                deleted: field(m, "state") == "deleted",
                action: field(e, "action"),
                success: field(e, "success"),
            })
        })
        .collect();
    out.sort_by(|a, b| b.time.cmp(&a.time));
    out.truncate(SHOWN);
    out
}

/// The activity table.
pub fn audit_table(entries: &[Entry]) -> Markup {
    let rows = entries
        .iter()
        .map(|e| {
            html! {
                tr {
                    td { (when(&e.time)) }
                    td {
                        @if e.deleted { (e.machine_name) " (deleted)" }
                        @else { a href=(machine_url(&e.machine_id)) { (e.machine_name) } }
                    }
                    td { (e.action) }
                    td { @if e.success == "yes" { (page::badge("succeeded")) } @else { (page::badge("failed")) } }
                }
            }
        })
        .collect();
    page::table("What was done to your machines, newest first", &["Time", "Machine", "Action", "Result"], rows)
}

#[derive(Deserialize)]
struct AuditQuery {
    machine: Option<String>,
}

async fn show(State(web): State<Web>, s: Session, Query(q): Query<AuditQuery>) -> Response {
    let machines = match &q.machine {
        Some(id) => match web.cloud_get(&s.account, &format!("/my/machines/{}", enc(id))).await {
            Ok(m) => vec![m],
            Err(e) if e.status == 404 => return page::not_found(Some(&s)),
            Err(e) => return page::api_error(Some(&s), "Activity", &e),
        },
        None => match web.cloud_get(&s.account, "/my/machines?tombstone=true").await {
            Ok(Value::Array(a)) => a,
            Ok(_) => Vec::new(),
            Err(e) => return page::api_error(Some(&s), "Activity", &e),
        },
    };
    let logs = join_all(machines.iter().map(|m| {
        let path = format!("/my/machines/{}/audit", enc(&field(m, "id")));
        let web = web.clone();
        let account = s.account.clone();
        async move { web.cloud_get(&account, &path).await }
    }))
    .await;
    let mut per_machine = Vec::with_capacity(machines.len());
    for (m, log) in machines.into_iter().zip(logs) {
        match log {
            Ok(Value::Array(a)) => per_machine.push((m, a)),
            Ok(_) => per_machine.push((m, Vec::new())),
            Err(e) => return page::api_error(Some(&s), "Activity", &e),
        }
    }
    let entries = merge(&per_machine);
    let title = match (&q.machine, per_machine.first()) {
        (Some(_), Some((m, _))) => format!("Activity of {}", field(m, "name")),
        _ => "Activity".to_string(),
    };
    page::page(
        &s,
        &title,
        html! {
            @if q.machine.is_some() { p { a href="/audit" { "All activity" } } }
            @if entries.len() == SHOWN { p.hint { "The newest " (SHOWN) " entries." } }
            (audit_table(&entries))
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn entries_of_all_machines_merge_newest_first() {
        let a = json!({"id": "a", "name": "web", "state": "running"});
        let b = json!({"id": "b", "name": "db", "state": "deleted"});
        let merged = merge(&[
            (
                a,
                vec![
                    json!({"time": "2026-01-01T10:05:00.000Z", "action": "stop", "success": "yes"}),
                    json!({"time": "2026-01-01T10:00:00.000Z", "action": "provision", "success": "yes"}),
                ],
            ),
            (b, vec![json!({"time": "2026-01-01T10:03:00.000Z", "action": "delete", "success": "no"})]),
        ]);
        let order: Vec<_> = merged.iter().map(|e| (e.machine_name.as_str(), e.action.as_str())).collect();
        assert_eq!(order, vec![("web", "stop"), ("db", "delete"), ("web", "provision")]);
        let out = audit_table(&merged).into_string();
        assert!(out.contains("db (deleted)") && out.contains("href=\"/machines/a\""), "{out}");
        assert!(out.contains("failed") && out.contains("2026-01-01 10:05:00 UTC"));
    }
}
