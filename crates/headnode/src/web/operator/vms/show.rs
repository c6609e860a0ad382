//! `/vms/{uuid}`: one VM. Its facts and its jobs are live regions (their own fragment
//! routes), so a provision, a resize or a delete shows without reloading; the forms
//! (power, resize, snapshots, tags, metadata, NIC switches) post to `actions.rs`, and a
//! refused one comes back here with the error next to the form and what was typed.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::{Markup, html};
use nereid_types::ApiError;
use nereid_types::vm::NIC_FLAGS;
use serde_json::Value;
use uuid::Uuid;

use super::{options, package_label, parse_uuid};
use crate::web::form::Fields;
use crate::web::operator::jobs::{JOB_COLUMNS, job_detail, job_row};
use crate::web::page::{self, badge, field, mib};
use crate::web::session::{Operator, Session};
use crate::web::{Web, api};

/// A form that was refused: which section it belongs to, why, and what was typed.
pub(super) struct Failed<'a> {
    pub section: &'static str,
    pub error: ApiError,
    pub fields: &'a Fields,
}

/// The jobs the page lists (newest first).
const JOBS_SHOWN: u32 = 20;

pub(super) async fn vm_page(State(web): State<Web>, Operator(s): Operator, Path(uuid): Path<String>) -> Response {
    match parse_uuid(&uuid) {
        Some(u) => vm_view(&web, &s, u, None).await,
        None => page::not_found(Some(&s)),
    }
}

pub(super) async fn status_fragment(State(web): State<Web>, Operator(_): Operator, Path(uuid): Path<String>) -> Response {
    let Some(u) = parse_uuid(&uuid) else { return page::fragment(html! { p { "No such VM." } }) };
    match web.admin_get(&format!("/vms/{u}")).await {
        Ok(vm) => page::fragment(facts(&vm)),
        Err(e) => page::fragment(page::error_box(&e)),
    }
}

pub(super) async fn jobs_fragment(State(web): State<Web>, Operator(_): Operator, Path(uuid): Path<String>) -> Response {
    let Some(u) = parse_uuid(&uuid) else { return page::fragment(html! { p { "No such VM." } }) };
    page::fragment(jobs_region(&web, u).await)
}

/// The whole page (with a refused form's error in its section).
pub(super) async fn vm_view(web: &Web, s: &Session, uuid: Uuid, failed: Option<Failed<'_>>) -> Response {
    let vm = match web.admin_get(&format!("/vms/{uuid}")).await {
        Ok(vm) => vm,
        Err(e) if e.status == 404 => return page::not_found(Some(s)),
        Err(e) => return page::api_error(Some(s), "VM", &e),
    };
    let nics = nics_of(web, uuid).await;
    let packages = web.admin_get("/packages?active=true").await.map(|v| v.as_array().cloned().unwrap_or_default()).unwrap_or_default();
    let jobs = jobs_region(web, uuid).await;
    let status =
        failed.as_ref().map_or(StatusCode::OK, |f| StatusCode::from_u16(f.error.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR));
    let alias = field(&vm, "alias");
    let title = if alias.is_empty() { format!("VM {uuid}") } else { format!("VM {alias}") };
    let brand = field(&vm, "brand");
    let packages: Vec<Value> = packages.into_iter().filter(|p| p.get("brand").and_then(Value::as_str).is_none_or(|b| b == brand)).collect();
    let body = html! {
        (page::live(&format!("/vms/{uuid}/status"), facts(&vm)))
        p.actions {
            a href={ "/vms/" (uuid) "/serial" } { "Serial console" }
            a href={ "/vms/" (uuid) "/vnc" } { "VNC console" }
        }
        @if field(&vm, "state") != "destroyed" {
            (power(s, uuid, &failed))
            (resize(s, uuid, &vm, &packages, &failed))
            (snapshots(s, uuid, &vm, &failed))
            (pairs(s, uuid, &vm, PairKind::Tags, &failed))
            (pairs(s, uuid, &vm, PairKind::Metadata, &failed))
            (nic_section(s, uuid, nics, &failed))
        }
        section aria-labelledby="jobs-h" {
            h2 #jobs-h { "Jobs" }
            (page::live(&format!("/vms/{uuid}/jobs"), jobs))
        }
    };
    page::respond(status, Some(s), &title, body)
}

/// The error box of a refused form, in its own section only.
fn error_in(section: &str, failed: &Option<Failed<'_>>) -> Markup {
    html! {
        @if let Some(f) = failed.as_ref().filter(|f| f.section == section) { (page::error_box(&f.error)) }
    }
}

/// What was typed into `name` of a refused form of `section` (empty otherwise).
fn typed<'a>(section: &str, name: &str, failed: &'a Option<Failed<'_>>) -> &'a str {
    failed.as_ref().filter(|f| f.section == section).and_then(|f| f.fields.get(name)).unwrap_or_default()
}

/// The VM's facts (the live region's content).
pub fn facts(vm: &Value) -> Markup {
    let link = |base: &str, id: String, label: String| {
        html! { @if !id.is_empty() { a href={ (base) (api::enc(&id)) } { (if label.is_empty() { id.clone() } else { label }) } } }
    };
    let num_mib = |k: &str| vm.get(k).and_then(Value::as_u64).map(mib).unwrap_or_default();
    let package = format!("{} {}", field(vm, "package_name"), field(vm, "package_version")).trim().to_string();
    let mut rows: Vec<(&str, Markup)> = vec![
        ("State", badge(&field(vm, "state"))),
        ("Alias", html! { (field(vm, "alias")) }),
        ("UUID", html! { (field(vm, "uuid")) }),
        ("Brand", html! { (field(vm, "brand")) }),
        ("Owner", link("/accounts/", field(vm, "owner_uuid"), String::new())),
        ("Server", link("/servers/", field(vm, "server_uuid"), String::new())),
        ("Package", link("/packages/", field(vm, "billing_id"), package)),
        ("Image", link("/images/", field(vm, "image_uuid"), String::new())),
        ("RAM", html! { (num_mib("ram")) }),
        ("vCPUs", html! { (field(vm, "vcpus")) }),
        ("Disk quota", html! { @if let Some(q) = vm.get("quota").and_then(Value::as_u64) { (q) " GiB" } }),
        ("CPU cap", html! { (field(vm, "cpu_cap")) }),
        ("IPs", html! { (super::ips(vm)) }),
        ("Created", html! { (field(vm, "create_timestamp")) }),
        ("Last modified", html! { (field(vm, "last_modified")) }),
    ];
    if vm.get("destroyed").is_some_and(|d| !d.is_null()) {
        rows.push(("Destroyed", html! { (field(vm, "destroyed")) }));
    }
    if let Some(e) = vm.get("error").and_then(Value::as_str) {
        rows.push(("Error", html! { span role="alert" { (e) } }));
    }
    page::facts(&rows)
}

async fn jobs_region(web: &Web, uuid: Uuid) -> Markup {
    match web.admin_get(&format!("/vms/{uuid}/jobs?limit={JOBS_SHOWN}")).await {
        Ok(v) => jobs_markup(page::items(&v)),
        Err(e) => page::error_box(&e),
    }
}

/// The VM's jobs, and every failed one in full (its steps and why).
pub fn jobs_markup(jobs: &[Value]) -> Markup {
    let failed: Vec<&Value> = jobs.iter().filter(|j| field(j, "execution") == "failed").collect();
    html! {
        (page::table("The VM's jobs, newest first", JOB_COLUMNS, jobs.iter().map(job_row).collect()))
        @for j in failed {
            section.failed-job {
                h3 { "Failed: " (field(j, "task")) " job " (field(j, "uuid")) }
                (job_detail(j))
            }
        }
    }
}

fn power(s: &Session, uuid: Uuid, failed: &Option<Failed<'_>>) -> Markup {
    let act = |a: &str| format!("/vms/{uuid}/{a}");
    html! {
        section aria-labelledby="actions-h" {
            h2 #actions-h { "Actions" }
            (error_in("actions", failed))
            div.actions {
                (page::post_button(s, &act("start"), "Start", None))
                (page::post_button(s, &act("stop"), "Stop", Some("Stop this VM?")))
                (page::post_button(s, &act("reboot"), "Reboot", Some("Reboot this VM?")))
                form.inline method="post" action=(act("delete")) data-confirm="Delete this VM and its disks? This cannot be undone." {
                    (page::csrf_field(s))
                    button.danger type="submit" { "Delete" }
                }
            }
        }
    }
}

fn resize(s: &Session, uuid: Uuid, vm: &Value, packages: &[Value], failed: &Option<Failed<'_>>) -> Markup {
    let t = |k| typed("resize", k, failed);
    html! {
        section aria-labelledby="resize-h" {
            h2 #resize-h { "Resize" }
            p.hint {
                "Choose another package, or give the new RAM, vCPUs or disk quota. "
                "The VM's server must have room (the disk only grows)."
            }
            (error_in("resize", failed))
            form.stack.vm-form method="post" action={ "/vms/" (uuid) "/resize" } {
                (page::csrf_field(s))
                label for="rs-billing_id" { "Package" }
                select #rs-billing_id name="billing_id" {
                    option value="" { "Keep the package (" (field(vm, "package_name")) ")" }
                    (options(packages, Some(t("billing_id")), package_label))
                }
                label for="rs-ram" { "RAM (MiB), now " (field(vm, "ram")) }
                input #rs-ram type="number" name="ram" min="64" value=(t("ram"));
                label for="rs-vcpus" { "vCPUs, now " (field(vm, "vcpus")) }
                input #rs-vcpus type="number" name="vcpus" min="1" value=(t("vcpus"));
                label for="rs-quota" { "Disk quota (GiB), now " (field(vm, "quota")) }
                input #rs-quota type="number" name="quota" min="1" value=(t("quota"));
                button type="submit" { "Resize" }
            }
        }
    }
}

/// The parts of the page that follow jobs (each its own live region and fragment route):
/// `(route segment, what it shows)`. Only tables live there, never a field one types in.
pub(super) const PARTS: &[&str] = &["snapshots", "tags", "customer_metadata", "nics"];

pub(super) async fn part_fragment(web: Web, part: &'static str, s: Session, uuid: String) -> Response {
    let Some(u) = parse_uuid(&uuid) else { return page::fragment(html! { p { "No such VM." } }) };
    if part == "nics" {
        return page::fragment(nics_table(&nics_of(&web, u).await));
    }
    match web.admin_get(&format!("/vms/{u}")).await {
        Ok(vm) => page::fragment(match part {
            "snapshots" => snapshots_table(&s, u, &vm),
            "tags" => pairs_table(&s, u, &vm, PairKind::Tags),
            _ => pairs_table(&s, u, &vm, PairKind::Metadata),
        }),
        Err(e) => page::fragment(page::error_box(&e)),
    }
}

async fn nics_of(web: &Web, uuid: Uuid) -> Result<Vec<Value>, ApiError> {
    web.admin_get(&format!("/nics?belongs_to_uuid={uuid}")).await.map(|v| v.as_array().cloned().unwrap_or_default())
}

fn snapshots_table(s: &Session, uuid: Uuid, vm: &Value) -> Markup {
    let list = vm.get("snapshots").and_then(Value::as_array).cloned().unwrap_or_default();
    let rows = list
        .iter()
        .map(|snap| {
            let name = field(snap, "name");
            html! {
                tr {
                    td { (name) }
                    td { (field(snap, "created_at")) }
                    td { (badge(snap.get("state").and_then(Value::as_str).unwrap_or("ready"))) }
                    td {
                        (named_button(s, &format!("/vms/{uuid}/rollback"), &name, "Roll back", &format!("Roll the VM back to snapshot {name}? Changes since are lost.")))
                        " "
                        (named_button(s, &format!("/vms/{uuid}/delete-snapshot"), &name, "Delete", &format!("Delete snapshot {name}?")))
                    }
                }
            }
        })
        .collect();
    page::table("Snapshots", &["Name", "Created", "State", "Actions"], rows)
}

fn snapshots(s: &Session, uuid: Uuid, vm: &Value, failed: &Option<Failed<'_>>) -> Markup {
    html! {
        section aria-labelledby="snap-h" {
            h2 #snap-h { "Snapshots" }
            (error_in("snapshots", failed))
            (page::live(&format!("/vms/{uuid}/snapshots"), snapshots_table(s, uuid, vm)))
            form.filters method="post" action={ "/vms/" (uuid) "/snapshot" } {
                (page::csrf_field(s))
                label for="snapshot_name" { "New snapshot's name" input #snapshot_name type="text" name="snapshot_name" value=(typed("snapshots", "snapshot_name", failed)); }
                button type="submit" { "Take snapshot" }
            }
        }
    }
}

/// A button posting one snapshot's name.
fn named_button(s: &Session, action: &str, name: &str, label: &str, confirm: &str) -> Markup {
    html! {
        form.inline method="post" action=(action) data-confirm=(confirm) {
            (page::csrf_field(s))
            input type="hidden" name="snapshot_name" value=(name);
            button.secondary type="submit" aria-label={ (label) " " (name) } { (label) }
        }
    }
}

/// Tags and customer metadata: the same key/value editing.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum PairKind {
    Tags,
    Metadata,
}

impl PairKind {
    /// (section, VM field, heading, set route, remove route, form field prefix)
    pub(super) fn names(self) -> (&'static str, &'static str, &'static str, &'static str, &'static str, &'static str) {
        match self {
            PairKind::Tags => ("tags", "tags", "Tags", "tag", "untag", "tag"),
            PairKind::Metadata => ("metadata", "customer_metadata", "Customer metadata", "metadata", "unmetadata", "metadata"),
        }
    }
}

fn pairs_table(s: &Session, uuid: Uuid, vm: &Value, kind: PairKind) -> Markup {
    let (_, key, heading, _, unset, prefix) = kind.names();
    let map = vm.get(key).and_then(Value::as_object).cloned().unwrap_or_default();
    let rows = map
        .iter()
        .map(|(k, v)| {
            html! {
                tr {
                    td { code { (k) } }
                    td { (page::text(v)) }
                    td {
                        form.inline method="post" action={ "/vms/" (uuid) "/" (unset) } data-confirm={ "Remove " (k) "?" } {
                            (page::csrf_field(s))
                            input type="hidden" name={ (prefix) "_key" } value=(k);
                            button.secondary type="submit" aria-label={ "Remove " (k) } { "Remove" }
                        }
                    }
                }
            }
        })
        .collect();
    page::table(heading, &["Key", "Value", ""], rows)
}

fn pairs(s: &Session, uuid: Uuid, vm: &Value, kind: PairKind, failed: &Option<Failed<'_>>) -> Markup {
    let (section, key, heading, set, _, prefix) = kind.names();
    let (kf, vf) = (format!("{prefix}_key"), format!("{prefix}_value"));
    html! {
        section aria-labelledby={ (section) "-h" } {
            h2 id={ (section) "-h" } { (heading) }
            (error_in(section, failed))
            (page::live(&format!("/vms/{uuid}/{key}"), pairs_table(s, uuid, vm, kind)))
            form.filters method="post" action={ "/vms/" (uuid) "/" (set) } {
                (page::csrf_field(s))
                label for=(kf) { "Key" input id=(kf) type="text" name=(kf) value=(typed(section, &kf, failed)); }
                label for=(vf) { "Value" input id=(vf) type="text" name=(vf) value=(typed(section, &vf, failed)); }
                button type="submit" { "Set" }
            }
        }
    }
}

/// A NIC's `allow_*` switches that are on.
fn flags_on(n: &Value) -> Vec<&'static str> {
    NIC_FLAGS.iter().copied().filter(|f| n.get(*f).and_then(Value::as_bool).unwrap_or(false)).collect()
}

fn nics_table(nics: &Result<Vec<Value>, ApiError>) -> Markup {
    let list = match nics {
        Ok(list) => list.as_slice(),
        Err(e) => return page::error_box(e),
    };
    let rows = list
        .iter()
        .map(|n| {
            let net = field(n, "network_uuid");
            let on = flags_on(n);
            html! {
                tr {
                    td { code { (field(n, "mac")) } }
                    td { (field(n, "ip")) }
                    td { @if !net.is_empty() { a href={ "/networks/" (net) } { (net) } } }
                    td { (if n.get("primary").and_then(Value::as_bool).unwrap_or(false) { "yes" } else { "no" }) }
                    td { @if on.is_empty() { "none" } @else { (on.join(", ")) } }
                }
            }
        })
        .collect();
    page::table("NICs", &["MAC", "IP", "Network", "Primary", "Switches on"], rows)
}

fn nic_section(s: &Session, uuid: Uuid, nics: Result<Vec<Value>, ApiError>, failed: &Option<Failed<'_>>) -> Markup {
    html! {
        section aria-labelledby="nics-h" {
            h2 #nics-h { "NICs" }
            (error_in("nics", failed))
            (page::live(&format!("/vms/{uuid}/nics"), nics_table(&nics)))
            p.hint { "The allow_* switches apply to the running VM without a restart." }
            @for n in nics.as_deref().unwrap_or_default() { (nic_form(s, uuid, n)) }
        }
    }
}

fn nic_form(s: &Session, uuid: Uuid, n: &Value) -> Markup {
    let mac = field(n, "mac");
    let id = mac.replace(':', "");
    html! {
        form.nic-flags method="post" action={ "/vms/" (uuid) "/nic" } {
            (page::csrf_field(s))
            input type="hidden" name="mac" value=(mac);
            fieldset {
                legend { "Switches of " code { (mac) } }
                @for flag in NIC_FLAGS {
                    @let fid = format!("nic-{id}-{flag}");
                    div {
                        input id=(fid) type="checkbox" name=(flag) checked[n.get(*flag).and_then(Value::as_bool).unwrap_or(false)];
                        " "
                        label for=(fid) { (flag) }
                    }
                }
                button type="submit" aria-label={ "Save the switches of " (mac) } { "Save" }
            }
        }
    }
}
