//! Packages (PAPI through the operator API): the list shows active packages by default,
//! as AdminUI's search does (a box includes inactive ones, a name search narrows it); one
//! package with its facts; the create form; deactivate/activate; and an edit form for the
//! fields PAPI lets change without `force` (RAM, disk and CPU stay as created, since VMs
//! were sized by them).
//!
//! [`labelled`] is the labelled input the operator forms here and in `networks.rs` and
//! `accounts.rs` share.

use std::collections::HashMap;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{Markup, html};
use nereid_types::package::BRANDS;
use nereid_types::{ApiError, FieldError};
use serde_json::{Map, Value, json};

use crate::web::Web;
use crate::web::api::enc;
use crate::web::form::{Fields, PostForm, invalid};
use crate::web::page::{self, badge, csrf_field, error_box, facts, field, json_block, post_button, table};
use crate::web::session::{Operator, Session};

pub fn routes() -> Router<Web> {
    Router::new()
        .route("/packages", get(list).post(create))
        .route("/packages/new", get(new_form))
        .route("/packages/{uuid}", get(show))
        .route("/packages/{uuid}/edit", post(edit))
        .route("/packages/{uuid}/deactivate", post(deactivate))
        .route("/packages/{uuid}/activate", post(activate))
}

/// A label and its input: `kind` is the input type (`text`, `number`, `email`,
/// `password`); the value is what the user typed or the object's.
pub fn labelled(id: &str, label: &str, kind: &str, value: &str, required: bool) -> Markup {
    html! {
        label for=(id) { (label) @if required { " (required)" } }
        input id=(id) type=(kind) name=(id) value=(value) required[required];
    }
}

/// A checkbox with its label.
pub fn checkbox(id: &str, label: &str, checked: bool) -> Markup {
    html! { label for=(id) { input id=(id) type="checkbox" name=(id) value="true" checked[checked]; " " (label) } }
}

/// A list of UUIDs typed with commas, spaces or newlines between them.
pub fn uuid_list(f: &Fields, name: &str) -> Result<Option<Vec<String>>, FieldError> {
    let Some(text) = f.get(name) else { return Ok(None) };
    let mut out = Vec::new();
    for part in text.split(|c: char| c == ',' || c.is_whitespace()).filter(|p| !p.is_empty()) {
        uuid::Uuid::parse_str(part)
            .map_err(|_| FieldError::invalid(name, format!("{part:?} is not a UUID (separate several with commas)")))?;
        out.push(part.to_string());
    }
    Ok(Some(out))
}

/// A JSON list of strings as the text a form field shows.
pub fn joined(v: &Value, k: &str) -> String {
    v.get(k).and_then(Value::as_array).map(|a| a.iter().map(page::text).collect::<Vec<_>>().join(", ")).unwrap_or_default()
}

/// The list's filters.
#[derive(Debug, Default, Clone)]
struct Filters {
    name: String,
    inactive: bool,
}

impl Filters {
    fn from_query(q: &HashMap<String, String>) -> Self {
        Filters { name: q.get("name").map(|v| v.trim().to_string()).unwrap_or_default(), inactive: q.contains_key("inactive") }
    }

    /// ListPackages' path: active only unless asked, the name as a `*substring*` glob.
    fn api_path(&self) -> String {
        let mut p = "/packages?sort=name&order=asc".to_string();
        if !self.inactive {
            p.push_str("&active=true");
        }
        if !self.name.is_empty() {
            p.push_str(&format!("&name={}", enc(&format!("*{}*", self.name))));
        }
        p
    }
}

async fn list(State(web): State<Web>, Operator(s): Operator, Query(q): Query<HashMap<String, String>>) -> Response {
    let f = Filters::from_query(&q);
    page::list_or_error(&s, "Packages", web.admin_get(&f.api_path()).await, |packages| list_page(&f, packages))
}

fn list_page(f: &Filters, packages: &[Value]) -> Markup {
    let rows = packages
        .iter()
        .map(|p| {
            let uuid = field(p, "uuid");
            let active = p.get("active").and_then(Value::as_bool).unwrap_or(true);
            html! {
                tr {
                    td { a href={ "/packages/" (uuid) } { (field(p, "name")) } }
                    td { (field(p, "version")) }
                    td { @if let Some(n) = p.get("max_physical_memory").and_then(Value::as_u64) { (page::mib(n)) } }
                    td { @if let Some(n) = p.get("quota").and_then(Value::as_u64) { (page::mib(n)) } }
                    td { (field(p, "vcpus")) }
                    td { (field(p, "brand")) }
                    td { (badge(if active { "active" } else { "inactive" })) }
                    td { (field(p, "group")) }
                }
            }
        })
        .collect();
    let caption = format!("{}: {}", if f.inactive { "Packages" } else { "Active packages" }, packages.len());
    html! {
        div.actions { a href="/packages/new" { "Create a package" } }
        form.filters method="get" action="/packages" role="search" aria-label="Search packages" {
            label for="f-name" { "Name contains" input #f-name type="text" name="name" value=(f.name); }
            label for="f-inactive" { input #f-inactive type="checkbox" name="inactive" value="1" checked[f.inactive]; " Include inactive" }
            button type="submit" { "Search" }
        }
        (table(&caption, &["Name", "Version", "RAM", "Disk", "vCPUs", "Brand", "State", "Group"], rows))
    }
}

/// What the create form holds.
const CREATE_FIELDS: &[(&str, &str, &str, bool)] = &[
    ("name", "Name (e.g. g1.small)", "text", true),
    ("version", "Version (e.g. 1.0.0)", "text", true),
    ("max_physical_memory", "RAM in MiB", "number", true),
    ("quota", "Disk in MiB (a multiple of 1024)", "number", true),
    ("vcpus", "vCPUs", "number", false),
    ("max_swap", "Swap in MiB (default twice the RAM)", "number", false),
    ("cpu_cap", "CPU cap in % of one CPU (empty: uncapped)", "number", false),
    ("os", "OS the image must have", "text", false),
    ("group", "Group", "text", false),
    ("common_name", "Display name", "text", false),
    ("description", "Description", "text", false),
    ("owner_uuids", "Accounts that may use it (UUIDs, comma-separated; empty: everyone)", "text", false),
];

const NUMBER_FIELDS: &[&str] = &["max_physical_memory", "quota", "vcpus", "max_swap", "cpu_cap"];

fn create_form(s: &Session, typed: &Fields, problem: Option<&ApiError>) -> Markup {
    let brand = typed.get("brand").unwrap_or("bhyve");
    html! {
        @if let Some(e) = problem { (error_box(e)) }
        form.stack method="post" action="/packages" {
            (csrf_field(s))
            @for (id, label, kind, required) in CREATE_FIELDS {
                (labelled(id, label, kind, typed.get(id).unwrap_or_default(), *required))
            }
            label for="brand" { "Brand" }
            select #brand name="brand" {
                @for b in BRANDS { option value=(b) selected[*b == brand] { (b) } }
            }
            (checkbox("active", "Active (can be provisioned)", typed.0.is_empty() || typed.checked("active")))
            button type="submit" { "Create package" }
        }
    }
}

/// CreatePackage's body from the form (numbers checked here, the rest by PAPI).
fn create_body(f: &Fields) -> Result<Map<String, Value>, ApiError> {
    let mut body = Map::new();
    let mut errors = Vec::new();
    for (id, _, _, _) in CREATE_FIELDS {
        if NUMBER_FIELDS.contains(id) {
            match f.number(id) {
                Ok(Some(n)) => {
                    body.insert(id.to_string(), json!(n));
                }
                Ok(None) => {}
                Err(e) => errors.push(e),
            }
        } else if *id == "owner_uuids" {
            match uuid_list(f, id) {
                Ok(Some(l)) => {
                    body.insert(id.to_string(), json!(l));
                }
                Ok(None) => {}
                Err(e) => errors.push(e),
            }
        } else if let Some(v) = f.get(id) {
            body.insert(id.to_string(), json!(v));
        }
    }
    if let Some(b) = f.get("brand") {
        body.insert("brand".into(), json!(b));
    }
    body.insert("active".into(), json!(f.checked("active")));
    if errors.is_empty() { Ok(body) } else { Err(invalid(errors)) }
}

async fn new_form(Operator(s): Operator) -> Response {
    page::page(&s, "Create a package", create_form(&s, &Fields::default(), None))
}

async fn create(State(web): State<Web>, f: PostForm) -> Response {
    let s = &f.session;
    let result = match create_body(&f.fields) {
        Ok(body) => web.admin(Method::POST, "/packages", Some(&Value::Object(body))).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(r) => Redirect::to(&format!("/packages/{}", enc(&field(&r.body, "uuid")))).into_response(),
        Err(e) => page::respond(status_of(&e), Some(s), "Create a package", create_form(s, &f.fields, Some(&e))),
    }
}

fn status_of(e: &ApiError) -> StatusCode {
    StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// The fields the edit form changes (PAPI changes them without `force`).
const EDIT_FIELDS: &[(&str, &str)] =
    &[("common_name", "Display name"), ("description", "Description"), ("group", "Group"), ("billing_tag", "Billing tag")];

/// The edit form's values: the package's, or what the user typed.
fn edit_values(pkg: &Value) -> Fields {
    let mut v: Vec<(String, String)> = EDIT_FIELDS.iter().map(|(k, _)| (k.to_string(), field(pkg, k))).collect();
    v.push(("owner_uuids".into(), joined(pkg, "owner_uuids")));
    if pkg.get("default").and_then(Value::as_bool).unwrap_or(false) {
        v.push(("default".into(), "true".into()));
    }
    Fields(v)
}

/// UpdatePackage's body: an emptied field is removed (null).
fn edit_body(f: &Fields) -> Result<Map<String, Value>, ApiError> {
    let mut body = Map::new();
    for (k, _) in EDIT_FIELDS {
        body.insert(k.to_string(), f.get(k).map(|v| json!(v)).unwrap_or(Value::Null));
    }
    let owners = uuid_list(f, "owner_uuids").map_err(|e| invalid(vec![e]))?;
    body.insert("owner_uuids".into(), owners.map(|l| json!(l)).unwrap_or(Value::Null));
    body.insert("default".into(), json!(f.checked("default")));
    Ok(body)
}

fn detail(s: &Session, pkg: &Value, typed: &Fields, problem: Option<&ApiError>) -> Markup {
    let uuid = field(pkg, "uuid");
    let base = format!("/packages/{uuid}");
    let active = pkg.get("active").and_then(Value::as_bool).unwrap_or(true);
    let mib = |k: &str| html! { @if let Some(n) = pkg.get(k).and_then(Value::as_u64) { (page::mib(n)) } };
    html! {
        @if let Some(e) = problem { (error_box(e)) }
        (facts(&[
            ("UUID", html! { code { (uuid) } }),
            ("State", badge(if active { "active" } else { "inactive" })),
            ("Name", html! { (field(pkg, "name")) }),
            ("Version", html! { (field(pkg, "version")) }),
            ("Brand", html! { (field(pkg, "brand")) }),
            ("RAM", mib("max_physical_memory")),
            ("Swap", mib("max_swap")),
            ("Disk (quota)", mib("quota")),
            ("vCPUs", html! { (field(pkg, "vcpus")) }),
            ("CPU cap", html! { (field(pkg, "cpu_cap")) }),
            ("OS", html! { (field(pkg, "os")) }),
            ("Group", html! { (field(pkg, "group")) }),
            ("Display name", html! { (field(pkg, "common_name")) }),
            ("Description", html! { (field(pkg, "description")) }),
            ("Owners", html! { @if pkg.get("owner_uuids").is_some() { (joined(pkg, "owner_uuids")) } @else { "everyone" } }),
            ("Created", html! { (field(pkg, "created_at")) }),
        ]))
        div.actions {
            @if active {
                (post_button(s, &format!("{base}/deactivate"), "Deactivate", Some("Deactivate this package? New VMs can no longer use it; existing ones keep it.")))
            } @else {
                (post_button(s, &format!("{base}/activate"), "Activate", None))
            }
        }
        h2 #edit { "Edit" }
        p.hint { "RAM, disk, CPU and the name stay as created: make a new package (or version) to change them." }
        form.stack method="post" action={ (base) "/edit" } {
            (csrf_field(s))
            @for (id, label) in EDIT_FIELDS { (labelled(id, label, "text", typed.get(id).unwrap_or_default(), false)) }
            (labelled("owner_uuids", "Accounts that may use it (UUIDs, comma-separated; empty: everyone)", "text", typed.get("owner_uuids").unwrap_or_default(), false))
            (checkbox("default", "Default package", typed.checked("default")))
            button type="submit" { "Save" }
        }
        details {
            summary { "Package (JSON)" }
            (json_block(pkg))
        }
    }
}

fn title(pkg: &Value) -> String {
    format!("Package {} {}", field(pkg, "name"), field(pkg, "version"))
}

async fn show(State(web): State<Web>, Operator(s): Operator, Path(uuid): Path<String>) -> Response {
    match web.admin_get(&format!("/packages/{}", enc(&uuid))).await {
        Ok(pkg) => page::page(&s, &title(&pkg), detail(&s, &pkg, &edit_values(&pkg), None)),
        Err(e) => page::api_error(Some(&s), "Package", &e),
    }
}

/// Applies an UpdatePackage; back to the package, or its page with the error.
async fn apply(web: &Web, s: &Session, uuid: &str, body: Result<Map<String, Value>, ApiError>, typed: Option<&Fields>) -> Response {
    let path = format!("/packages/{}", enc(uuid));
    let result = match body {
        Ok(b) => web.admin(Method::PUT, &path, Some(&Value::Object(b))).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(_) => Redirect::to(&path).into_response(),
        Err(e) => match web.admin_get(&path).await {
            Ok(pkg) => {
                let values = typed.cloned().unwrap_or_else(|| edit_values(&pkg));
                page::respond(status_of(&e), Some(s), &title(&pkg), detail(s, &pkg, &values, Some(&e)))
            }
            Err(_) => page::api_error(Some(s), "Package", &e),
        },
    }
}

async fn edit(State(web): State<Web>, Path(uuid): Path<String>, f: PostForm) -> Response {
    apply(&web, &f.session, &uuid, edit_body(&f.fields), Some(&f.fields)).await
}

async fn deactivate(State(web): State<Web>, Path(uuid): Path<String>, f: PostForm) -> Response {
    apply(&web, &f.session, &uuid, Ok(Map::from_iter([("active".to_string(), json!(false))])), None).await
}

async fn activate(State(web): State<Web>, Path(uuid): Path<String>, f: PostForm) -> Response {
    apply(&web, &f.session, &uuid, Ok(Map::from_iter([("active".to_string(), json!(true))])), None).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_list_is_active_packages() {
        assert_eq!(Filters::default().api_path(), "/packages?sort=name&order=asc&active=true");
        let f = Filters { name: "small".into(), inactive: true };
        assert_eq!(f.api_path(), "/packages?sort=name&order=asc&name=*small*");
    }

    #[test]
    fn create_names_each_bad_number_and_keeps_text() {
        let f = Fields::parse(b"name=g1&version=1.0.0&max_physical_memory=lots&quota=10240&vcpus=x&owner_uuids=&active=true");
        let e = create_body(&f).unwrap_err();
        let fields: Vec<_> = e.errors.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(fields, ["max_physical_memory", "vcpus"]);
        let f = Fields::parse(b"name=g1&version=1.0.0&max_physical_memory=1024&quota=10240&brand=bhyve");
        let b = create_body(&f).unwrap();
        assert_eq!(
            (b["max_physical_memory"].as_u64(), b["active"].as_bool(), b["brand"].as_str()),
            (Some(1024), Some(false), Some("bhyve"))
        );
        assert!(!b.contains_key("owner_uuids"));
    }

    #[test]
    fn owner_lists_are_checked_uuids() {
        let f = Fields::parse(b"o=00000000-0000-0000-0000-000000000001,+00000000-0000-0000-0000-000000000002");
        assert_eq!(uuid_list(&f, "o").unwrap().unwrap().len(), 2);
        assert_eq!(uuid_list(&Fields::parse(b"o=bob"), "o").unwrap_err().field, "o");
    }
}
