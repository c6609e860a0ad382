//! Images (IMGAPI through the operator API): the list with state, name and OS filters;
//! one image with its manifest and files; activate, disable/enable, update (description,
//! public, requirements such as `bootrom`), delete; and the browser upload of a disk file
//! ([`upload`]), the same path as `nereid image create-from-disk`.

use std::collections::HashMap;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{Markup, html};
use nereid_types::ApiError;
use nereid_types::image::{BOOTROMS, OSES};
use serde_json::{Map, Value, json};

use crate::web::Web;
use crate::web::api::enc;
use crate::web::form::{Fields, PostForm, invalid};
use crate::web::page::{self, badge, error_box, facts, field, json_block, post_button, table};
use crate::web::session::{Operator, Session};

mod upload;

pub fn routes() -> Router<Web> {
    Router::new()
        .route("/images", get(list))
        .route("/images/upload", get(upload::form).put(upload::receive))
        .route("/images/{uuid}", get(show))
        .route("/images/{uuid}/activate", post(activate))
        .route("/images/{uuid}/disable", post(disable))
        .route("/images/{uuid}/enable", post(enable))
        .route("/images/{uuid}/update", post(update))
        .route("/images/{uuid}/delete", post(delete))
}

/// The states the list filters by (`all` shows every one).
const STATES: &[&str] = &["active", "unactivated", "disabled", "all"];

/// The list's filters, as the query string carries them.
#[derive(Debug, Default, Clone)]
struct Filters {
    state: String,
    name: String,
    os: String,
}

impl Filters {
    fn from_query(q: &HashMap<String, String>) -> Self {
        let get = |k: &str| q.get(k).map(|v| v.trim().to_string()).unwrap_or_default();
        let state = get("state");
        Filters { state: if STATES.contains(&state.as_str()) { state } else { "active".into() }, name: get("name"), os: get("os") }
    }

    /// ListImages' path: the name matches as a substring (IMGAPI's `~name`).
    fn api_path(&self) -> String {
        let mut p = format!("/images?state={}", enc(&self.state));
        if !self.name.is_empty() {
            p.push_str(&format!("&name={}", enc(&format!("~{}", self.name))));
        }
        if !self.os.is_empty() {
            p.push_str(&format!("&os={}", enc(&self.os)));
        }
        p
    }
}

async fn list(State(web): State<Web>, Operator(s): Operator, Query(q): Query<HashMap<String, String>>) -> Response {
    let f = Filters::from_query(&q);
    match web.admin_get(&f.api_path()).await {
        Ok(v) => page::page(&s, "Images", list_page(&f, page::items(&v))),
        Err(e) => page::respond(
            StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            Some(&s),
            "Images",
            html! { (filters_form(&f)) (error_box(&e)) },
        ),
    }
}

fn filters_form(f: &Filters) -> Markup {
    html! {
        form.filters method="get" action="/images" role="search" aria-label="Filter images" {
            label for="f-state" { "State"
                select #f-state name="state" {
                    @for st in STATES { option value=(st) selected[*st == f.state] { (st) } }
                }
            }
            label for="f-name" { "Name contains" input #f-name type="text" name="name" value=(f.name); }
            label for="f-os" { "OS"
                select #f-os name="os" {
                    option value="" selected[f.os.is_empty()] { "any" }
                    @for os in OSES { option value=(os) selected[*os == f.os] { (os) } }
                }
            }
            button type="submit" { "Filter" }
        }
    }
}

/// The list page.
fn list_page(f: &Filters, images: &[Value]) -> Markup {
    let rows = images.iter().map(image_row).collect();
    html! {
        div.actions { a href="/images/upload" { "Upload a disk image" } }
        (filters_form(f))
        (table(&format!("Images, {}: {}", f.state, images.len()), &["Name", "Version", "OS", "State", "Type", "Disk", "Published", "UUID"], rows))
    }
}

fn image_row(img: &Value) -> Markup {
    let uuid = field(img, "uuid");
    html! {
        tr {
            td { a href={ "/images/" (uuid) } { (field(img, "name")) } }
            td { (field(img, "version")) }
            td { (field(img, "os")) }
            td { (badge(&field(img, "state"))) }
            td { (field(img, "type")) }
            td { @if let Some(n) = img.get("image_size").and_then(Value::as_u64) { (page::mib(n)) } }
            td { (field(img, "published_at")) }
            td { code { (uuid) } }
        }
    }
}

async fn show(State(web): State<Web>, Operator(s): Operator, Path(uuid): Path<String>) -> Response {
    match web.admin_get(&format!("/images/{}", enc(&uuid))).await {
        Ok(img) => page::page(&s, &title(&img), detail(&s, &img, &UpdateForm::of(&img), None)),
        Err(e) => page::api_error(Some(&s), "Image", &e),
    }
}

fn title(img: &Value) -> String {
    format!("Image {}@{}", field(img, "name"), field(img, "version"))
}

/// What the update form holds (the image's values, or what the user typed).
#[derive(Debug, Clone, Default)]
struct UpdateForm {
    description: String,
    public: bool,
    bootrom: String,
    min_ram: String,
    max_ram: String,
}

impl UpdateForm {
    fn of(img: &Value) -> Self {
        let req = img.get("requirements").cloned().unwrap_or(Value::Null);
        UpdateForm {
            description: field(img, "description"),
            public: img.get("public").and_then(Value::as_bool).unwrap_or(false),
            bootrom: field(&req, "bootrom"),
            min_ram: field(&req, "min_ram"),
            max_ram: field(&req, "max_ram"),
        }
    }

    fn from_fields(f: &Fields) -> Self {
        let text = |k: &str| f.get(k).unwrap_or_default().to_string();
        UpdateForm {
            description: text("description"),
            public: f.checked("public"),
            bootrom: text("bootrom"),
            min_ram: text("min_ram"),
            max_ram: text("max_ram"),
        }
    }

    /// UpdateImage's body: the image's requirements with bootrom, min_ram and max_ram
    /// replaced (a bootrom needs brand bhyve); an emptied field is removed (null).
    fn body(&self, img: &Value) -> Result<Map<String, Value>, ApiError> {
        let mut errors = Vec::new();
        let mut req = img.get("requirements").and_then(Value::as_object).cloned().unwrap_or_default();
        if self.bootrom.is_empty() {
            req.remove("bootrom");
        } else if BOOTROMS.contains(&self.bootrom.as_str()) {
            req.insert("bootrom".into(), json!(self.bootrom));
            req.insert("brand".into(), json!("bhyve"));
        } else {
            errors.push(nereid_types::FieldError::invalid("bootrom", "must be bios, uefi or none"));
        }
        for (k, v) in [("min_ram", &self.min_ram), ("max_ram", &self.max_ram)] {
            if v.is_empty() {
                req.remove(k);
            } else {
                match v.parse::<u64>() {
                    Ok(n) => {
                        req.insert(k.into(), json!(n));
                    }
                    Err(_) => errors.push(nereid_types::FieldError::invalid(k, format!("{v:?} is not a whole number of MiB"))),
                }
            }
        }
        if !errors.is_empty() {
            return Err(invalid(errors));
        }
        let mut body = Map::new();
        body.insert("description".into(), if self.description.is_empty() { Value::Null } else { json!(self.description) });
        body.insert("public".into(), json!(self.public));
        body.insert("requirements".into(), if req.is_empty() { Value::Null } else { Value::Object(req) });
        Ok(body)
    }
}

/// One image: facts, files, the buttons its state allows, the update form.
fn detail(s: &Session, img: &Value, form: &UpdateForm, problem: Option<&ApiError>) -> Markup {
    let uuid = field(img, "uuid");
    let state = field(img, "state");
    let base = format!("/images/{uuid}");
    let files = img.get("files").and_then(Value::as_array).cloned().unwrap_or_default();
    let file_rows = files
        .iter()
        .map(|f| {
            html! {
                tr {
                    td { code { (field(f, "sha1")) } }
                    td { (field(f, "size")) " bytes" }
                    td { (field(f, "compression")) }
                }
            }
        })
        .collect();
    html! {
        @if let Some(e) = problem { (error_box(e)) }
        (facts(&[
            ("UUID", html! { code { (uuid) } }),
            ("State", badge(&state)),
            ("Name", html! { (field(img, "name")) }),
            ("Version", html! { (field(img, "version")) }),
            ("OS", html! { (field(img, "os")) }),
            ("Type", html! { (field(img, "type")) }),
            ("Disk (image_size)", html! { @if let Some(n) = img.get("image_size").and_then(Value::as_u64) { (page::mib(n)) } }),
            ("Public", html! { (field(img, "public")) }),
            ("Owner", html! { code { (field(img, "owner")) } }),
            ("Description", html! { (field(img, "description")) }),
            ("Requirements", html! { @if let Some(r) = img.get("requirements") { code { (r.to_string()) } } @else { "none" } }),
            ("Published", html! { (field(img, "published_at")) }),
        ]))
        div.actions {
            @if state == "unactivated" { (post_button(s, &format!("{base}/activate"), "Activate", None)) }
            @if state == "active" { (post_button(s, &format!("{base}/disable"), "Disable", Some("Disable this image? New VMs can no longer be created from it."))) }
            @if state == "disabled" { (post_button(s, &format!("{base}/enable"), "Enable", None)) }
            (post_button(s, &format!("{base}/delete"), "Delete", Some("Delete this image? This cannot be undone.")))
        }
        (table("Files", &["SHA-1", "Size", "Compression"], file_rows))
        h2 #update { "Update" }
        form.stack method="post" action={ (base) "/update" } {
            (page::csrf_field(s))
            label for="description" { "Description" }
            input #description type="text" name="description" value=(form.description);
            label for="public" { input #public type="checkbox" name="public" value="true" checked[form.public]; " Public (every account can use it)" }
            label for="bootrom" { "Firmware (requirements.bootrom)" }
            select #bootrom name="bootrom" {
                option value="" selected[form.bootrom.is_empty()] { "none required" }
                @for b in BOOTROMS { option value=(b) selected[form.bootrom == *b] { (b) } }
            }
            label for="min_ram" { "Minimum RAM in MiB (requirements.min_ram)" }
            input #min_ram type="number" min="0" name="min_ram" value=(form.min_ram);
            label for="max_ram" { "Maximum RAM in MiB (requirements.max_ram)" }
            input #max_ram type="number" min="0" name="max_ram" value=(form.max_ram);
            button type="submit" { "Save" }
        }
        details {
            summary { "Manifest (JSON)" }
            (json_block(img))
        }
    }
}

/// Runs an image action and goes back to the image (or shows why it failed there).
async fn act(web: &Web, s: &Session, uuid: &str, action: &str) -> Response {
    let path = format!("/images/{}?action={action}", enc(uuid));
    match web.admin(Method::POST, &path, None).await {
        Ok(_) => Redirect::to(&format!("/images/{}", enc(uuid))).into_response(),
        Err(e) => redisplay(web, s, uuid, None, &e).await,
    }
}

/// The image page again with an error (and the update form as typed).
async fn redisplay(web: &Web, s: &Session, uuid: &str, typed: Option<UpdateForm>, e: &ApiError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    match web.admin_get(&format!("/images/{}", enc(uuid))).await {
        Ok(img) => {
            let form = typed.unwrap_or_else(|| UpdateForm::of(&img));
            page::respond(status, Some(s), &title(&img), detail(s, &img, &form, Some(e)))
        }
        Err(_) => page::api_error(Some(s), "Image", e),
    }
}

async fn activate(State(web): State<Web>, Path(uuid): Path<String>, f: PostForm) -> Response {
    act(&web, &f.session, &uuid, "activate").await
}

async fn disable(State(web): State<Web>, Path(uuid): Path<String>, f: PostForm) -> Response {
    act(&web, &f.session, &uuid, "disable").await
}

async fn enable(State(web): State<Web>, Path(uuid): Path<String>, f: PostForm) -> Response {
    act(&web, &f.session, &uuid, "enable").await
}

async fn update(State(web): State<Web>, Path(uuid): Path<String>, f: PostForm) -> Response {
    let s = &f.session;
    let typed = UpdateForm::from_fields(&f.fields);
    let img = match web.admin_get(&format!("/images/{}", enc(&uuid))).await {
        Ok(img) => img,
        Err(e) => return page::api_error(Some(s), "Image", &e),
    };
    let result = match typed.body(&img) {
        Ok(body) => web.admin(Method::POST, &format!("/images/{}?action=update", enc(&uuid)), Some(&Value::Object(body))).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(_) => Redirect::to(&format!("/images/{}", enc(&uuid))).into_response(),
        Err(e) => redisplay(&web, s, &uuid, Some(typed), &e).await,
    }
}

async fn delete(State(web): State<Web>, Path(uuid): Path<String>, f: PostForm) -> Response {
    let s = &f.session;
    match web.admin(Method::DELETE, &format!("/images/{}", enc(&uuid)), None).await {
        Ok(_) => Redirect::to("/images?state=all").into_response(),
        Err(e) => redisplay(&web, s, &uuid, None, &e).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_name_substrings_and_default_to_active() {
        let q: HashMap<String, String> = [("name".to_string(), "deb ian".to_string()), ("state".to_string(), "bogus".to_string())].into();
        let f = Filters::from_query(&q);
        assert_eq!(f.api_path(), "/images?state=active&name=%7Edeb+ian");
    }

    #[test]
    fn update_sets_bootrom_with_brand_and_clears_emptied_fields() {
        let img = json!({"requirements": {"min_ram": 512, "networks": []}, "description": "x"});
        let form = UpdateForm { bootrom: "uefi".into(), ..Default::default() };
        let body = form.body(&img).unwrap();
        assert_eq!(body["requirements"], json!({"bootrom": "uefi", "brand": "bhyve", "networks": []}));
        assert_eq!(body["description"], Value::Null);
        let bad = UpdateForm { min_ram: "lots".into(), ..Default::default() }.body(&img).unwrap_err();
        assert_eq!(bad.errors[0].field, "min_ram");
    }
}
