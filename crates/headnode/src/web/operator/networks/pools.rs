//! Network pools (NAPI's `/network_pools`): the list, one pool with its networks in the
//! order they are tried, a create form and delete.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{Markup, html};
use nereid_types::{ApiError, FieldError};
use serde_json::{Map, Value, json};

use super::subnav;
use crate::web::Web;
use crate::web::api::enc;
use crate::web::form::{Fields, PostForm, invalid};
use crate::web::operator::packages::{joined, labelled, uuid_list};
use crate::web::page::{self, csrf_field, error_box, facts, field, post_button, table};
use crate::web::session::{Operator, Session};

pub fn routes() -> Router<Web> {
    Router::new()
        .route("/network_pools", get(list).post(create))
        .route("/network_pools/{uuid}", get(show))
        .route("/network_pools/{uuid}/delete", post(delete))
}

fn status_of(e: &ApiError) -> StatusCode {
    StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// A network's name by UUID, from the list of networks (the UUID when unknown).
fn network_name<'a>(networks: &'a [Value], uuid: &'a str) -> &'a str {
    networks
        .iter()
        .find(|n| n.get("uuid").and_then(Value::as_str) == Some(uuid))
        .and_then(|n| n.get("name"))
        .and_then(Value::as_str)
        .unwrap_or(uuid)
}

async fn list(State(web): State<Web>, Operator(s): Operator) -> Response {
    render_list(&web, &s, &Fields::default(), None).await
}

async fn render_list(web: &Web, s: &Session, typed: &Fields, problem: Option<&ApiError>) -> Response {
    let pools = match web.admin_get("/network_pools").await {
        Ok(v) => v,
        Err(e) => return page::api_error(Some(s), "Network pools", &e),
    };
    let networks = web.admin_get("/networks").await.unwrap_or(Value::Null);
    let pools = page::items(&pools);
    let networks = page::items(&networks);
    let status = problem.map(status_of).unwrap_or(StatusCode::OK);
    page::respond(status, Some(s), "Network pools", list_page(s, pools, networks, typed, problem))
}

fn list_page(s: &Session, pools: &[Value], networks: &[Value], typed: &Fields, problem: Option<&ApiError>) -> Markup {
    let rows = pools
        .iter()
        .map(|p| {
            let uuid = field(p, "uuid");
            let members: Vec<&str> = p
                .get("networks")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).map(|u| network_name(networks, u)).collect())
                .unwrap_or_default();
            html! {
                tr {
                    td { a href={ "/network_pools/" (enc(&uuid)) } { (field(p, "name")) } }
                    td { (members.join(", ")) }
                    td { (field(p, "nic_tag")) }
                    td { @if p.get("owner_uuids").is_some() { (joined(p, "owner_uuids")) } @else { "everyone" } }
                }
            }
        })
        .collect();
    let chosen = typed.all("networks");
    html! {
        (subnav())
        (table(&format!("Network pools: {}", pools.len()), &["Name", "Networks (in order)", "Nic tag", "Owners"], rows))
        h2 #create { "Create a pool" }
        @if let Some(e) = problem { (error_box(e)) }
        form.stack method="post" action="/network_pools" {
            (csrf_field(s))
            (labelled("name", "Name", "text", typed.get("name").unwrap_or_default(), true))
            (labelled("description", "Description", "text", typed.get("description").unwrap_or_default(), false))
            fieldset {
                legend { "Networks (tried in this order)" }
                @for n in networks {
                    @let uuid = field(n, "uuid");
                    label for={ "net-" (uuid) } {
                        input id={ "net-" (uuid) } type="checkbox" name="networks" value=(uuid) checked[chosen.contains(&uuid.as_str())];
                        " " (field(n, "name")) " (" (field(n, "subnet")) ")"
                    }
                    br;
                }
            }
            (labelled("owner_uuids", "Accounts that may use it (UUIDs, comma-separated; empty: everyone)", "text", typed.get("owner_uuids").unwrap_or_default(), false))
            button type="submit" { "Create pool" }
        }
    }
}

/// CreateNetworkPool's body from the form.
fn create_body(f: &Fields) -> Result<Map<String, Value>, ApiError> {
    let mut body = Map::new();
    let mut errors = Vec::new();
    match f.get("name") {
        Some(n) => {
            body.insert("name".into(), json!(n));
        }
        None => errors.push(FieldError::missing("name")),
    }
    if let Some(d) = f.get("description") {
        body.insert("description".into(), json!(d));
    }
    let nets = f.all("networks");
    if nets.is_empty() {
        errors.push(FieldError::invalid("networks", "choose at least one network"));
    }
    body.insert("networks".into(), json!(nets));
    match uuid_list(f, "owner_uuids") {
        Ok(Some(l)) => {
            body.insert("owner_uuids".into(), json!(l));
        }
        Ok(None) => {}
        Err(e) => errors.push(e),
    }
    if errors.is_empty() { Ok(body) } else { Err(invalid(errors)) }
}

async fn create(State(web): State<Web>, f: PostForm) -> Response {
    let s = &f.session;
    let result = match create_body(&f.fields) {
        Ok(body) => web.admin(Method::POST, "/network_pools", Some(&Value::Object(body))).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(r) => Redirect::to(&format!("/network_pools/{}", enc(&field(&r.body, "uuid")))).into_response(),
        Err(e) => render_list(&web, s, &f.fields, Some(&e)).await,
    }
}

async fn show(State(web): State<Web>, Operator(s): Operator, Path(uuid): Path<String>) -> Response {
    render_pool(&web, &s, &uuid, None).await
}

async fn render_pool(web: &Web, s: &Session, uuid: &str, problem: Option<&ApiError>) -> Response {
    let pool = match web.admin_get(&format!("/network_pools/{}", enc(uuid))).await {
        Ok(p) => p,
        Err(e) => return page::api_error(Some(s), "Network pool", &e),
    };
    let networks = web.admin_get("/networks").await.unwrap_or(Value::Null);
    let networks = page::items(&networks);
    let status = problem.map(status_of).unwrap_or(StatusCode::OK);
    page::respond(status, Some(s), &format!("Network pool {}", field(&pool, "name")), pool_page(s, &pool, networks, problem))
}

fn pool_page(s: &Session, pool: &Value, networks: &[Value], problem: Option<&ApiError>) -> Markup {
    let uuid = field(pool, "uuid");
    let members: Vec<String> =
        pool.get("networks").and_then(Value::as_array).map(|a| a.iter().map(page::text).collect()).unwrap_or_default();
    let rows = members
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let net = networks.iter().find(|n| n.get("uuid").and_then(Value::as_str) == Some(m.as_str()));
            html! {
                tr {
                    td { (i + 1) }
                    td { a href={ "/networks/" (enc(m)) } { (network_name(networks, m)) } }
                    td { @if let Some(n) = net { (field(n, "subnet")) } }
                    td { code { (m) } }
                }
            }
        })
        .collect();
    html! {
        (subnav())
        @if let Some(e) = problem { (error_box(e)) }
        (facts(&[
            ("UUID", html! { code { (uuid) } }),
            ("Name", html! { (field(pool, "name")) }),
            ("Description", html! { (field(pool, "description")) }),
            ("Nic tag", html! { (field(pool, "nic_tag")) }),
            ("Owners", html! { @if pool.get("owner_uuids").is_some() { (joined(pool, "owner_uuids")) } @else { "everyone" } }),
        ]))
        div.actions {
            (post_button(s, &format!("/network_pools/{}/delete", enc(&uuid)), "Delete", Some("Delete this network pool?")))
        }
        (table("Networks, in the order they are tried", &["#", "Network", "Subnet", "UUID"], rows))
    }
}

async fn delete(State(web): State<Web>, Path(uuid): Path<String>, f: PostForm) -> Response {
    let s = &f.session;
    match web.admin(Method::DELETE, &format!("/network_pools/{}", enc(&uuid)), None).await {
        Ok(_) => Redirect::to("/network_pools").into_response(),
        Err(e) => render_pool(&web, s, &uuid, Some(&e)).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_needs_a_name_and_networks() {
        let e = create_body(&Fields::parse(b"description=x")).unwrap_err();
        let fields: Vec<_> = e.errors.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(fields, ["name", "networks"]);
        let b = create_body(&Fields::parse(b"name=p&networks=n2&networks=n1")).unwrap();
        assert_eq!(b["networks"], json!(["n2", "n1"]));
    }
}
