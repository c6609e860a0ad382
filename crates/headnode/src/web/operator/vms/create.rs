//! `/vms/new`: CreateVm from an image, a package and a network, for an owner chosen
//! among the accounts or typed as a UUID. A refusal re-renders the form with what was
//! typed and each field named; a failed placement lists why each server said no.

use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use nereid_types::{ApiError, FieldError};
use serde_json::{Map, Value, json};

use super::{options, package_label};
use crate::web::form::{Fields, PostForm, invalid};
use crate::web::page::{self, field};
use crate::web::session::{Operator, Session};
use crate::web::{Web, api};

/// What the form's selects offer.
#[derive(Default)]
struct Choices {
    images: Vec<Value>,
    packages: Vec<Value>,
    networks: Vec<Value>,
    accounts: Vec<Value>,
}

async fn choices(web: &Web) -> Result<Choices, ApiError> {
    let list = |v: Value| v.as_array().cloned().unwrap_or_default();
    Ok(Choices {
        images: list(web.admin_get("/images?state=active").await?),
        packages: list(web.admin_get("/packages?active=true").await?),
        networks: list(web.admin_get("/networks").await?),
        accounts: list(web.admin_get("/accounts").await?),
    })
}

pub(super) async fn form(State(web): State<Web>, Operator(s): Operator) -> Response {
    render(&web, &s, &Fields::default(), None).await
}

pub(super) async fn submit(State(web): State<Web>, PostForm { session: s, fields: f }: PostForm) -> Response {
    let result = match body_of(&web, &f).await {
        Ok(body) => web.admin(Method::POST, "/vms", Some(&body)).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(r) => Redirect::to(&format!("/vms/{}", api::enc(&field(&r.body, "vm_uuid")))).into_response(),
        Err(e) => render(&web, &s, &f, Some(&e)).await,
    }
}

/// `customer_metadata` typed as `key=value` lines.
pub(super) fn parse_pairs(name: &str, text: &str) -> Result<Map<String, Value>, FieldError> {
    let mut out = Map::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let Some((k, v)) = line.split_once('=') else {
            return Err(FieldError::invalid(name, format!("line {}: write key=value (got {:?})", i + 1, line.trim())));
        };
        if k.trim().is_empty() {
            return Err(FieldError::invalid(name, format!("line {}: the key before '=' is empty", i + 1)));
        }
        out.insert(k.trim().to_string(), json!(v.trim()));
    }
    Ok(out)
}

/// CreateVm's body from the form, or the form's own errors (each field named).
async fn body_of(web: &Web, f: &Fields) -> Result<Value, ApiError> {
    let mut errors = Vec::new();
    let owner = f.get("owner_uuid").or(f.get("owner_account"));
    if owner.is_none() {
        errors.push(FieldError::invalid("owner_uuid", "choose an account or type the owner's UUID"));
    }
    for (k, what) in [("image_uuid", "an image"), ("billing_id", "a package"), ("networks", "a network")] {
        if f.get(k).is_none() {
            errors.push(FieldError::invalid(k, format!("is required: choose {what}")));
        }
    }
    let metadata = match f.get("customer_metadata").map(|t| parse_pairs("customer_metadata", t)).transpose() {
        Ok(m) => m,
        Err(e) => {
            errors.push(e);
            None
        }
    };
    if !errors.is_empty() {
        return Err(invalid(errors));
    }
    let package = f.get("billing_id").unwrap_or_default();
    // The brand: as chosen, else the package's, else bhyve (Nereid's default).
    let brand = match f.get("brand") {
        Some(b) => b.to_string(),
        None => match web.admin_get(&format!("/packages/{}", api::enc(package))).await {
            Ok(p) => p.get("brand").and_then(Value::as_str).unwrap_or("bhyve").to_string(),
            Err(_) => "bhyve".into(),
        },
    };
    let mut body = json!({
        "owner_uuid": owner,
        "brand": brand,
        "billing_id": package,
        "image_uuid": f.get("image_uuid"),
        "networks": f.all("networks"),
    });
    if let Some(a) = f.get("alias") {
        body["alias"] = json!(a);
    }
    if let Some(m) = metadata.filter(|m| !m.is_empty()) {
        body["customer_metadata"] = Value::Object(m);
    }
    Ok(body)
}

async fn render(web: &Web, s: &Session, f: &Fields, error: Option<&ApiError>) -> Response {
    let (c, load_error) = match choices(web).await {
        Ok(c) => (c, None),
        Err(e) => (Choices::default(), Some(e)),
    };
    let status = error
        .or(load_error.as_ref())
        .map_or(StatusCode::OK, |e| StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR));
    let body = html! {
        @if let Some(e) = &load_error { (page::error_box(e)) }
        @if let Some(e) = error {
            @if let Some(m) = placement_refusals(e) {
                // The servers' reasons are the table's rows, not a list of "fields".
                (page::error_box(&ApiError::new(e.status, e.code.clone(), e.message.clone())))
                (m)
            } @else {
                (page::error_box(e))
            }
        }
        (create_form(s, &c, f))
    };
    page::respond(status, Some(s), "Create a VM", body)
}

/// For CreateVm's `NoAllocatableServersError` (each field error is a server: its UUID,
/// the placement step that refused it, "hostname: reason"), a table of the servers.
pub fn placement_refusals(e: &ApiError) -> Option<Markup> {
    if e.code != "NoAllocatableServersError" || e.errors.is_empty() {
        return None;
    }
    let rows = e
        .errors
        .iter()
        .map(|r| {
            let (host, reason) = r.message.split_once(": ").unwrap_or(("", r.message.as_str()));
            html! {
                tr {
                    td { a href={ "/servers/" (api::enc(&r.field)) } { (if host.is_empty() { r.field.as_str() } else { host }) } }
                    td { (r.code) }
                    td { (reason) }
                }
            }
        })
        .collect();
    Some(html! {
        h2 { "Why no server could take this VM" }
        (page::table("Servers refused by placement", &["Server", "Step", "Reason"], rows))
        p.hint { "Choose a smaller package, or make room: free capacity on a server or add one." }
    })
}

fn create_form(s: &Session, c: &Choices, f: &Fields) -> Markup {
    let image_label = |i: &Value| format!("{} {} ({})", field(i, "name"), field(i, "version"), field(i, "os"));
    let net_label = |n: &Value| format!("{} ({})", field(n, "name"), field(n, "subnet"));
    let account_label = |a: &Value| format!("{} ({})", field(a, "login"), field(a, "uuid"));
    html! {
        form.stack.vm-form method="post" action="/vms/new" {
            (page::csrf_field(s))
            label for="owner_account" { "Owner account" }
            select #owner_account name="owner_account" {
                option value="" { "Choose an account" }
                (options(&c.accounts, f.get("owner_account"), account_label))
            }
            label for="owner_uuid" { "or the owner's UUID" }
            input #owner_uuid type="text" name="owner_uuid" value=(f.get("owner_uuid").unwrap_or_default()) autocomplete="off";
            label for="image_uuid" { "Image" }
            select #image_uuid name="image_uuid" {
                option value="" { "Choose an image" }
                (options(&c.images, f.get("image_uuid"), image_label))
            }
            label for="billing_id" { "Package" }
            select #billing_id name="billing_id" {
                option value="" { "Choose a package" }
                (options(&c.packages, f.get("billing_id"), package_label))
            }
            label for="networks" { "Network" }
            select #networks name="networks" {
                option value="" { "Choose a network" }
                (options(&c.networks, f.get("networks"), net_label))
            }
            label for="brand" { "Brand" }
            select #brand name="brand" {
                @for (v, label) in [("", "the package's (else bhyve)"), ("bhyve", "bhyve"), ("kvm", "kvm")] {
                    option value=(v) selected[f.get("brand").unwrap_or_default() == v] { (label) }
                }
            }
            label for="alias" { "Alias (optional)" }
            input #alias type="text" name="alias" value=(f.get("alias").unwrap_or_default()) autocomplete="off";
            label for="customer_metadata" { "Customer metadata (optional; one key=value a line)" }
            textarea #customer_metadata name="customer_metadata" rows="3" { (f.get("customer_metadata").unwrap_or_default()) }
            button type="submit" { "Create VM" }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_lines_become_a_map_and_a_bad_line_is_named() {
        let m = parse_pairs("customer_metadata", "a=1\n\n b = two words \n").unwrap();
        assert_eq!(Value::Object(m), json!({"a": "1", "b": "two words"}));
        let e = parse_pairs("customer_metadata", "a=1\nnope").unwrap_err();
        assert_eq!(e.field, "customer_metadata");
        assert!(e.message.contains("line 2"), "{}", e.message);
    }

    #[test]
    fn a_failed_placement_lists_each_server_and_why() {
        let e = ApiError::conflict("NoAllocatableServersError", "no server").with_errors(vec![FieldError {
            field: "00000000-0000-0000-0000-000000000001".into(),
            code: "hard-filter".into(),
            message: "cn1: not enough RAM: needs 2048 MiB".into(),
        }]);
        let out = placement_refusals(&e).unwrap().into_string();
        assert!(out.contains("cn1") && out.contains("not enough RAM: needs 2048 MiB") && out.contains("/servers/00000000"), "{out}");
        assert!(placement_refusals(&ApiError::new(409, "ValidationFailed", "x")).is_none());
    }
}
