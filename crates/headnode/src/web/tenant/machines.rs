//! A tenant's machines: `/machines` (list), `/machines/new` (create), `/machines/{id}`
//! (facts, start/stop/reboot, resize, rename, deletion protection, delete, snapshots,
//! tags, metadata, links to the consoles) and `/machines/{id}/part/{name}` (its live
//! regions: a change's job moves the page without a reload).
//!
//! Every read and change is CloudAPI's, called as the signed-in account: another
//! account's machine is CloudAPI's 404 here too, and a refused change shows CloudAPI's
//! error (each field named) above the page again, with what the user typed kept.

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use nereid_types::ApiError;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::web::form::{Fields, PostForm, invalid};
use crate::web::session::Session;
use crate::web::{Web, page};

pub mod view;

use view::{Choices, Detail, enc, machine_url};

/// The actions that are one button, by the last segment of their URL.
const BUTTONS: &[(&str, &str)] = &[
    ("start", "start"),
    ("stop", "stop"),
    ("reboot", "reboot"),
    ("protect", "enable_deletion_protection"),
    ("unprotect", "disable_deletion_protection"),
];

pub fn routes() -> Router<Web> {
    let mut r = Router::new()
        .route("/machines", get(list).post(create))
        .route("/machines/new", get(new_form))
        .route("/machines/{id}", get(show))
        .route("/machines/{id}/part/{part}", get(part))
        .route("/machines/{id}/rename", post(rename))
        .route("/machines/{id}/resize", post(resize))
        .route("/machines/{id}/delete", post(delete))
        .route("/machines/{id}/snapshots", post(snapshot))
        .route("/machines/{id}/snapshots/{name}/rollback", post(rollback))
        .route("/machines/{id}/snapshots/{name}/delete", post(delete_snapshot))
        .route("/machines/{id}/tag", post(set_tag))
        .route("/machines/{id}/tag/{key}/delete", post(remove_tag))
        .route("/machines/{id}/metadata", post(set_metadata))
        .route("/machines/{id}/metadata/{key}/delete", post(remove_metadata));
    for (segment, action) in BUTTONS {
        r = r.route(
            &format!("/machines/{{id}}/{segment}"),
            post(move |State(web): State<Web>, Path(id): Path<String>, f: PostForm| async move {
                let body = json!({ "action": action });
                let res = web.cloud(&f.session.account, Method::POST, &cloud_path(&id, ""), Some(&body)).await;
                finish(&web, &id, f, res.map(|_| ())).await
            }),
        );
    }
    r
}

/// CloudAPI's path of a machine (and something under it).
fn cloud_path(id: &str, rest: &str) -> String {
    format!("/my/machines/{}{rest}", enc(id))
}

fn list_body(v: Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a,
        _ => Vec::new(),
    }
}

#[derive(Deserialize)]
struct ListQuery {
    part: Option<String>,
}

async fn list(State(web): State<Web>, s: Session, Query(q): Query<ListQuery>) -> Response {
    let (machines, images) = tokio::join!(web.cloud_get(&s.account, "/my/machines"), web.cloud_get(&s.account, "/my/images?state=all"));
    let machines = match machines {
        Ok(m) => list_body(m),
        Err(e) => return page::api_error(Some(&s), "Machines", &e),
    };
    let images = view::image_names(&list_body(images.unwrap_or_default()));
    if q.part.as_deref() == Some("table") {
        return page::fragment(view::machine_table(&machines, &images));
    }
    page::page(&s, "Machines", view::list_page(&machines, &images))
}

async fn choices(web: &Web, s: &Session) -> Result<Choices, ApiError> {
    let (images, packages, networks) = tokio::join!(
        web.cloud_get(&s.account, "/my/images"),
        web.cloud_get(&s.account, "/my/packages"),
        web.cloud_get(&s.account, "/my/networks"),
    );
    Ok(Choices { images: list_body(images?), packages: list_body(packages?), networks: list_body(networks?) })
}

async fn new_form(State(web): State<Web>, s: Session) -> Response {
    match choices(&web, &s).await {
        Ok(c) => page::page(&s, "Create a machine", view::new_form(&s, &c, &Fields::default(), None)),
        Err(e) => page::api_error(Some(&s), "Create a machine", &e),
    }
}

/// CreateMachine's body from the form.
fn create_body(f: &Fields) -> Value {
    let mut b = Map::new();
    for k in ["name", "image", "package"] {
        if let Some(v) = f.get(k) {
            b.insert(k.into(), json!(v));
        }
    }
    let nets = f.all("networks");
    if !nets.is_empty() {
        b.insert("networks".into(), json!(nets));
    }
    Value::Object(b)
}

async fn create(State(web): State<Web>, f: PostForm) -> Response {
    let s = &f.session;
    let missing: Vec<_> = ["image", "package"].into_iter().filter_map(|k| f.fields.required(k).err()).collect();
    let res = if missing.is_empty() {
        web.cloud(&s.account, Method::POST, "/my/machines", Some(&create_body(&f.fields))).await
    } else {
        Err(invalid(missing))
    };
    match res {
        Ok(reply) => Redirect::to(&machine_url(&page::field(&reply.body, "id"))).into_response(),
        Err(e) => {
            let status = status_of(&e);
            match choices(&web, s).await {
                Ok(c) => page::respond(status, Some(s), "Create a machine", view::new_form(s, &c, &f.fields, Some(&e))),
                Err(e2) => page::api_error(Some(s), "Create a machine", &e2),
            }
        }
    }
}

fn status_of(e: &ApiError) -> StatusCode {
    StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// Everything a machine's page shows; `Err` is the whole answer (404, 410, an error).
async fn load(web: &Web, s: &Session, id: &str) -> Result<Detail, Response> {
    let machine = match web.cloud_get(&s.account, &cloud_path(id, "")).await {
        Ok(m) => m,
        Err(e) => return Err(machine_error(s, &e)),
    };
    let snapshots_path = cloud_path(id, "/snapshots");
    let (snapshots, packages, image) =
        tokio::join!(web.cloud_get(&s.account, &snapshots_path), web.cloud_get(&s.account, "/my/packages"), image_label(web, s, &machine),);
    Ok(Detail { machine, snapshots: list_body(snapshots.unwrap_or_default()), packages: list_body(packages.unwrap_or_default()), image })
}

/// A machine that cannot be shown: 404 says nothing but that (not even the id asked
/// for), 410 that it was deleted.
fn machine_error(s: &Session, e: &ApiError) -> Response {
    match e.status {
        404 => page::not_found(Some(s)),
        410 => page::message(StatusCode::GONE, Some(s), "Machine deleted", "This machine has been deleted."),
        _ => page::api_error(Some(s), "Machine", e),
    }
}

fn title(d: &Detail) -> String {
    format!("Machine {}", page::field(&d.machine, "name"))
}

async fn show(State(web): State<Web>, s: Session, Path(id): Path<String>) -> Response {
    match load(&web, &s, &id).await {
        Ok(d) => page::page(&s, &title(&d), view::detail(&s, &d, &Fields::default(), None)),
        Err(resp) => resp,
    }
}

/// A live region's fragment: only what that part shows is asked of CloudAPI.
async fn part(State(web): State<Web>, s: Session, Path((id, part)): Path<(String, String)>) -> Response {
    if part == "snapshots" {
        return match web.cloud_get(&s.account, &cloud_path(&id, "/snapshots")).await {
            Ok(snaps) => page::fragment(view::snapshot_table(&s, &id, &list_body(snaps))),
            Err(e) => machine_error(&s, &e),
        };
    }
    let m = match web.cloud_get(&s.account, &cloud_path(&id, "")).await {
        Ok(m) => m,
        Err(e) => return machine_error(&s, &e),
    };
    match part.as_str() {
        "state" => {
            let image = image_label(&web, &s, &m).await;
            page::fragment(view::state_part(&s, &m, &image))
        }
        "tags" => page::fragment(view::kv_table(&s, &m, "tag")),
        "metadata" => page::fragment(view::kv_table(&s, &m, "metadata")),
        _ => page::not_found(Some(&s)),
    }
}

/// The machine's image by name (its uuid if CloudAPI does not show it to the account).
async fn image_label(web: &Web, s: &Session, m: &Value) -> String {
    let id = page::field(m, "image");
    match web.cloud_get(&s.account, &format!("/my/images/{}", enc(&id))).await {
        Ok(i) => format!("{} {}", page::field(&i, "name"), page::field(&i, "version")),
        Err(_) => id,
    }
}

/// After a change: back to the machine's page (303), or the page again with the error.
async fn finish(web: &Web, id: &str, f: PostForm, res: Result<(), ApiError>) -> Response {
    match res {
        Ok(()) => Redirect::to(&machine_url(id)).into_response(),
        Err(e) if e.status == 404 || e.status == 410 => machine_error(&f.session, &e),
        Err(e) => match load(web, &f.session, id).await {
            Ok(d) => page::respond(status_of(&e), Some(&f.session), &title(&d), view::detail(&f.session, &d, &f.fields, Some(&e))),
            Err(resp) => resp,
        },
    }
}

/// A CloudAPI change as this form's account.
async fn change(web: &Web, f: &PostForm, method: Method, path: &str, body: Option<Value>) -> Result<(), ApiError> {
    web.cloud(&f.session.account, method, path, body.as_ref()).await.map(|_| ())
}

async fn rename(State(web): State<Web>, Path(id): Path<String>, f: PostForm) -> Response {
    let res = match f.fields.required("name") {
        Ok(name) => change(&web, &f, Method::POST, &cloud_path(&id, ""), Some(json!({"action": "rename", "name": name}))).await,
        Err(e) => Err(invalid(vec![e])),
    };
    finish(&web, &id, f, res).await
}

async fn resize(State(web): State<Web>, Path(id): Path<String>, f: PostForm) -> Response {
    let res = match f.fields.required("package") {
        Ok(p) => change(&web, &f, Method::POST, &cloud_path(&id, ""), Some(json!({"action": "resize", "package": p}))).await,
        Err(e) => Err(invalid(vec![e])),
    };
    finish(&web, &id, f, res).await
}

async fn delete(State(web): State<Web>, Path(id): Path<String>, f: PostForm) -> Response {
    match change(&web, &f, Method::DELETE, &cloud_path(&id, ""), None).await {
        Ok(()) => Redirect::to("/machines").into_response(),
        Err(e) => finish(&web, &id, f, Err(e)).await,
    }
}

async fn snapshot(State(web): State<Web>, Path(id): Path<String>, f: PostForm) -> Response {
    let body = match f.fields.get("snapshot_name") {
        Some(n) => json!({ "name": n }),
        None => json!({}),
    };
    let res = change(&web, &f, Method::POST, &cloud_path(&id, "/snapshots"), Some(body)).await;
    finish(&web, &id, f, res).await
}

async fn rollback(State(web): State<Web>, Path((id, name)): Path<(String, String)>, f: PostForm) -> Response {
    let path = cloud_path(&id, &format!("/snapshots/{}", enc(&name)));
    let res = change(&web, &f, Method::POST, &path, Some(json!({}))).await;
    finish(&web, &id, f, res).await
}

async fn delete_snapshot(State(web): State<Web>, Path((id, name)): Path<(String, String)>, f: PostForm) -> Response {
    let res = change(&web, &f, Method::DELETE, &cloud_path(&id, &format!("/snapshots/{}", enc(&name))), None).await;
    finish(&web, &id, f, res).await
}

/// A `{key: value}` body from the form's `<kind>_key` and `<kind>_value`.
fn pair(f: &Fields, kind: &str) -> Result<Value, ApiError> {
    let key = f.required(&format!("{kind}_key")).map_err(|e| invalid(vec![e]))?;
    let value = f.get(&format!("{kind}_value")).unwrap_or_default();
    let mut m = Map::new();
    m.insert(key.to_string(), json!(value));
    Ok(Value::Object(m))
}

async fn set_tag(State(web): State<Web>, Path(id): Path<String>, f: PostForm) -> Response {
    let res = match pair(&f.fields, "tag") {
        Ok(body) => change(&web, &f, Method::POST, &cloud_path(&id, "/tags"), Some(body)).await,
        Err(e) => Err(e),
    };
    finish(&web, &id, f, res).await
}

async fn remove_tag(State(web): State<Web>, Path((id, key)): Path<(String, String)>, f: PostForm) -> Response {
    let res = change(&web, &f, Method::DELETE, &cloud_path(&id, &format!("/tags/{}", enc(&key))), None).await;
    finish(&web, &id, f, res).await
}

async fn set_metadata(State(web): State<Web>, Path(id): Path<String>, f: PostForm) -> Response {
    let res = match pair(&f.fields, "metadata") {
        Ok(body) => change(&web, &f, Method::POST, &cloud_path(&id, "/metadata"), Some(body)).await,
        Err(e) => Err(e),
    };
    finish(&web, &id, f, res).await
}

async fn remove_metadata(State(web): State<Web>, Path((id, key)): Path<(String, String)>, f: PostForm) -> Response {
    let res = change(&web, &f, Method::DELETE, &cloud_path(&id, &format!("/metadata/{}", enc(&key))), None).await;
    finish(&web, &id, f, res).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_create_body_takes_only_what_was_given() {
        let f = Fields::parse(b"csrf=t&name=&image=i&package=p&networks=a&networks=b");
        assert_eq!(create_body(&f), json!({"image": "i", "package": "p", "networks": ["a", "b"]}));
        let f = Fields::parse(b"name=web&image=i&package=p");
        assert_eq!(create_body(&f), json!({"name": "web", "image": "i", "package": "p"}));
    }

    #[test]
    fn paths_are_encoded() {
        assert_eq!(cloud_path("a/../b", "/tags"), "/my/machines/a%2F..%2Fb/tags");
        assert_eq!(pair(&Fields::parse(b"tag_key=k&tag_value=v"), "tag").unwrap(), json!({"k": "v"}));
        assert_eq!(pair(&Fields::parse(b"tag_value=v"), "tag").unwrap_err().errors[0].field, "tag_key");
    }
}
