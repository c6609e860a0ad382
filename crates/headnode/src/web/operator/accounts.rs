//! Accounts (UFDS-like, through the operator API): the list, one account with its facts,
//! its SSH keys and a link to its VMs; create (login, email, operator, password), set the
//! web console password, enable/disable, add and remove SSH keys.

use std::collections::HashMap;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{Markup, html};
use nereid_types::{ApiError, FieldError};
use serde_json::{Map, Value, json};

use super::packages::{checkbox, labelled};
use crate::web::Web;
use crate::web::api::enc;
use crate::web::form::{Fields, PostForm, invalid};
use crate::web::page::{self, badge, csrf_field, error_box, facts, field, post_button, table};
use crate::web::session::{Operator, Session};

pub fn routes() -> Router<Web> {
    Router::new()
        .route("/accounts", get(list).post(create))
        .route("/accounts/new", get(new_form))
        .route("/accounts/{account}", get(show))
        .route("/accounts/{account}/password", post(set_password))
        .route("/accounts/{account}/disable", post(disable))
        .route("/accounts/{account}/enable", post(enable))
        .route("/accounts/{account}/keys", post(add_key))
        .route("/accounts/{account}/keys/{key}/delete", post(remove_key))
}

fn status_of(e: &ApiError) -> StatusCode {
    StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

fn flag(v: &Value, k: &str) -> bool {
    v.get(k).and_then(Value::as_bool).unwrap_or(false)
}

async fn list(State(web): State<Web>, Operator(s): Operator, Query(q): Query<HashMap<String, String>>) -> Response {
    let login = q.get("login").map(|v| v.trim().to_string()).unwrap_or_default();
    let path = if login.is_empty() { "/accounts".to_string() } else { format!("/accounts?login={}", enc(&login)) };
    page::list_or_error(&s, "Accounts", web.admin_get(&path).await, |accounts| list_page(&login, accounts))
}

fn list_page(login: &str, accounts: &[Value]) -> Markup {
    let rows = accounts
        .iter()
        .map(|a| {
            let uuid = field(a, "uuid");
            html! {
                tr {
                    td { a href={ "/accounts/" (enc(&uuid)) } { (field(a, "login")) } }
                    td { (field(a, "email")) }
                    td { (field(a, "first_name")) " " (field(a, "last_name")) }
                    td { @if flag(a, "operator") { "operator" } @else { "tenant" } }
                    td { (badge(if flag(a, "disabled") { "disabled" } else { "active" })) }
                    td { code { (uuid) } }
                }
            }
        })
        .collect();
    html! {
        div.actions { a href="/accounts/new" { "Create an account" } }
        form.filters method="get" action="/accounts" role="search" aria-label="Find an account" {
            label for="f-login" { "Login" input #f-login type="text" name="login" value=(login); }
            button type="submit" { "Find" }
        }
        (table(&format!("Accounts: {}", accounts.len()), &["Login", "Email", "Name", "Role", "State", "UUID"], rows))
    }
}

/// The create form's text fields: (name, label, input type, required).
const CREATE_FIELDS: &[(&str, &str, &str, bool)] = &[
    ("login", "Login (a letter, then letters, digits, _ . @; 3–32)", "text", true),
    ("email", "Email", "email", true),
    ("first_name", "Given name", "text", false),
    ("last_name", "Surname", "text", false),
    ("company_name", "Company", "text", false),
];

fn create_form(s: &Session, typed: &Fields, problem: Option<&ApiError>) -> Markup {
    html! {
        @if let Some(e) = problem { (error_box(e)) }
        form.stack method="post" action="/accounts" {
            (csrf_field(s))
            @for (id, label, kind, required) in CREATE_FIELDS {
                (labelled(id, label, kind, typed.get(id).unwrap_or_default(), *required))
            }
            label for="password" { "Password for the web console (8 characters or more; empty: none yet)" }
            input #password type="password" name="password" autocomplete="new-password";
            (checkbox("operator", "Operator (sees and runs the whole cloud)", typed.checked("operator")))
            button type="submit" { "Create account" }
        }
    }
}

/// CreateAccount's body from the form.
fn create_body(f: &Fields) -> Map<String, Value> {
    let mut body = Map::new();
    for (id, _, _, _) in CREATE_FIELDS {
        if let Some(v) = f.get(id) {
            body.insert(id.to_string(), json!(v));
        }
    }
    // A password is taken as typed: spaces at either end are part of it.
    if let Some((_, p)) = f.0.iter().find(|(k, v)| k == "password" && !v.is_empty()) {
        body.insert("password".into(), json!(p));
    }
    body.insert("operator".into(), json!(f.checked("operator")));
    body
}

async fn new_form(Operator(s): Operator) -> Response {
    page::page(&s, "Create an account", create_form(&s, &Fields::default(), None))
}

async fn create(State(web): State<Web>, f: PostForm) -> Response {
    let s = &f.session;
    match web.admin(Method::POST, "/accounts", Some(&Value::Object(create_body(&f.fields)))).await {
        Ok(r) => Redirect::to(&format!("/accounts/{}", enc(&field(&r.body, "uuid")))).into_response(),
        Err(e) => page::respond(status_of(&e), Some(s), "Create an account", create_form(s, &f.fields, Some(&e))),
    }
}

/// Which form of the account page an error (and what was typed) belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Top,
    Password,
    Keys,
}

/// The account page: facts, buttons, password form, keys.
fn detail(s: &Session, a: &Value, keys: Result<Value, ApiError>, typed: &Fields, problem: Option<(Part, &ApiError)>) -> Markup {
    let uuid = field(a, "uuid");
    let base = format!("/accounts/{}", enc(&uuid));
    let disabled = flag(a, "disabled");
    let err = |p: Part| problem.filter(|(q, _)| *q == p).map(|(_, e)| error_box(e));
    html! {
        @if let Some(m) = err(Part::Top) { (m) }
        (facts(&[
            ("UUID", html! { code { (uuid) } }),
            ("Login", html! { (field(a, "login")) }),
            ("Email", html! { (field(a, "email")) }),
            ("Name", html! { (field(a, "first_name")) " " (field(a, "last_name")) }),
            ("Company", html! { (field(a, "company_name")) }),
            ("Role", html! { @if flag(a, "operator") { "operator" } @else { "tenant" } }),
            ("State", badge(if disabled { "disabled" } else { "active" })),
            ("Created", html! { (field(a, "created")) }),
        ]))
        div.actions {
            a href={ "/vms?owner_uuid=" (enc(&uuid)) } { "Its VMs" }
            a href={ "/nics?owner_uuid=" (enc(&uuid)) } { "Its NICs" }
            @if disabled {
                (post_button(s, &format!("{base}/enable"), "Enable", None))
            } @else {
                (post_button(s, &format!("{base}/disable"), "Disable", Some("Disable this account? It can no longer sign in or use the APIs; its VMs keep running.")))
            }
        }
        h2 #password { "Web console password" }
        @if let Some(m) = err(Part::Password) { (m) }
        form.stack method="post" action={ (base) "/password" } {
            (csrf_field(s))
            label for="new-password" { "New password (8 characters or more)" }
            input #new-password type="password" name="password" autocomplete="new-password" required;
            button type="submit" { "Set password" }
        }
        h2 #keys { "SSH keys" }
        @if let Some(m) = err(Part::Keys) { (m) }
        @match keys {
            Ok(k) => (key_table(s, &base, page::items(&k))),
            Err(e) => (error_box(&e)),
        }
        form.stack method="post" action={ (base) "/keys" } {
            (csrf_field(s))
            (labelled("name", "Key name (default: the key's comment)", "text", typed.get("name").unwrap_or_default(), false))
            label for="key" { "Public key (one OpenSSH line: ssh-ed25519 AAAA… comment)" }
            textarea #key name="key" rows="3" required { (typed.get("key").unwrap_or_default()) }
            button type="submit" { "Add key" }
        }
    }
}

fn key_table(s: &Session, base: &str, keys: &[Value]) -> Markup {
    let rows = keys
        .iter()
        .map(|k| {
            let fp = field(k, "fingerprint");
            html! {
                tr {
                    td { (field(k, "name")) }
                    td { code { (fp) } }
                    td { code { (field(k, "sha256")) } }
                    td { (post_button(s, &format!("{base}/keys/{}/delete", enc(&fp)), "Remove", Some("Remove this SSH key?"))) }
                }
            }
        })
        .collect();
    table(&format!("SSH keys: {}", keys.len()), &["Name", "Fingerprint (MD5)", "SHA256", "Remove"], rows)
}

/// Renders the account page (with an error in the part it belongs to, if any).
async fn render(web: &Web, s: &Session, id: &str, typed: &Fields, problem: Option<(Part, &ApiError)>) -> Response {
    let path = format!("/accounts/{}", enc(id));
    let a = match web.admin_get(&path).await {
        Ok(a) => a,
        Err(e) => return page::api_error(Some(s), "Account", &e),
    };
    let keys = web.admin_get(&format!("{path}/keys")).await;
    let status = problem.map(|(_, e)| status_of(e)).unwrap_or(StatusCode::OK);
    page::respond(status, Some(s), &format!("Account {}", field(&a, "login")), detail(s, &a, keys, typed, problem))
}

async fn show(State(web): State<Web>, Operator(s): Operator, Path(id): Path<String>) -> Response {
    render(&web, &s, &id, &Fields::default(), None).await
}

/// Runs one change, then back to the account page (or the page with the error).
async fn change(web: &Web, f: &PostForm, id: &str, part: Part, method: Method, api: String, body: Result<Value, ApiError>) -> Response {
    let s = &f.session;
    let result = match body {
        Ok(b) => web.admin(method, &api, if b.is_null() { None } else { Some(&b) }).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(_) => {
            let anchor = match part {
                Part::Top => "",
                Part::Password => "#password",
                Part::Keys => "#keys",
            };
            Redirect::to(&format!("/accounts/{}{anchor}", enc(id))).into_response()
        }
        Err(e) => {
            // A password is never echoed back into the page.
            let typed = if part == Part::Keys { f.fields.clone() } else { Fields::default() };
            render(web, s, id, &typed, Some((part, &e))).await
        }
    }
}

async fn set_password(State(web): State<Web>, Path(id): Path<String>, f: PostForm) -> Response {
    let body = match f.fields.0.iter().find(|(k, v)| k == "password" && !v.is_empty()) {
        Some((_, p)) => Ok(json!({ "password": p })),
        None => Err(invalid(vec![FieldError::missing("password")])),
    };
    change(&web, &f, &id, Part::Password, Method::PUT, format!("/accounts/{}/password", enc(&id)), body).await
}

async fn disable(State(web): State<Web>, Path(id): Path<String>, f: PostForm) -> Response {
    change(&web, &f, &id, Part::Top, Method::PUT, format!("/accounts/{}", enc(&id)), Ok(json!({"disabled": true}))).await
}

async fn enable(State(web): State<Web>, Path(id): Path<String>, f: PostForm) -> Response {
    change(&web, &f, &id, Part::Top, Method::PUT, format!("/accounts/{}", enc(&id)), Ok(json!({"disabled": false}))).await
}

async fn add_key(State(web): State<Web>, Path(id): Path<String>, f: PostForm) -> Response {
    let body = match f.fields.get("key") {
        Some(k) => {
            let mut b = json!({ "key": k });
            if let Some(n) = f.fields.get("name") {
                b["name"] = json!(n);
            }
            Ok(b)
        }
        None => Err(invalid(vec![FieldError::missing("key")])),
    };
    change(&web, &f, &id, Part::Keys, Method::POST, format!("/accounts/{}/keys", enc(&id)), body).await
}

async fn remove_key(State(web): State<Web>, Path((id, key)): Path<(String, String)>, f: PostForm) -> Response {
    change(&web, &f, &id, Part::Keys, Method::DELETE, format!("/accounts/{}/keys/{}", enc(&id), enc(&key)), Ok(Value::Null)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_keeps_the_password_as_typed_and_the_operator_box() {
        let b = create_body(&Fields::parse(b"login=ann&email=a%40x.example&password=+pass+word+&first_name=&operator=true"));
        assert_eq!((b["login"].as_str(), b["password"].as_str(), b["operator"].as_bool()), (Some("ann"), Some(" pass word "), Some(true)));
        assert!(!b.contains_key("first_name"));
        let b = create_body(&Fields::parse(b"login=ann&email=a%40x.example&password="));
        assert!(!b.contains_key("password") && b["operator"] == json!(false));
    }

    #[test]
    fn the_create_form_never_shows_a_password_back() {
        let s = Session { account: serde_json::from_value(json!({"uuid": "00000000-0000-0000-0000-000000000001", "login": "op", "email": "op@x.example", "operator": true, "created": "2026-01-01T00:00:00Z", "updated": "2026-01-01T00:00:00Z"})).unwrap(), csrf: "t".into() };
        let out = create_form(&s, &Fields::parse(b"login=ann&password=secret123"), None).into_string();
        assert!(out.contains("value=\"ann\"") && !out.contains("secret123"), "{out}");
    }
}
