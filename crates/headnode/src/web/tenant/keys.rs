//! `/keys`: the account's SSH keys (CloudAPI's ListKeys), adding one (CreateKey: its
//! validation errors shown with what was typed kept) and deleting one (DeleteKey).

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{Markup, html};
use nereid_types::ApiError;
use serde_json::{Map, Value, json};

use super::machines::view::enc;
use crate::web::Web;
use crate::web::form::{Fields, PostForm, invalid};
use crate::web::page::{self, csrf_field, error_box, field, post_button};
use crate::web::session::Session;

pub fn routes() -> Router<Web> {
    Router::new().route("/keys", get(list).post(add)).route("/keys/{name}/delete", post(delete))
}

/// The keys page: the list, then the form to add one.
pub fn keys_page(s: &Session, keys: &[Value], typed: &Fields, problem: Option<&ApiError>) -> Markup {
    let rows = keys
        .iter()
        .map(|k| {
            let name = field(k, "name");
            let text = field(k, "key");
            let short: String = text.chars().take(48).collect();
            html! {
                tr {
                    td { (name) }
                    td { code { (field(k, "fingerprint")) } }
                    td { code title=(text) { (short) @if text.chars().count() > 48 { "…" } } }
                    td { (post_button(s, &format!("/keys/{}/delete", enc(&name)), "Delete", Some(&format!("Delete key {name}? Machines created later will not get it.")))) }
                }
            }
        })
        .collect();
    html! {
        @if let Some(e) = problem { (error_box(e)) }
        p.hint { "New machines get these keys (as root's authorized keys), as Triton gives them." }
        (page::table("Your SSH keys", &["Name", "Fingerprint", "Key", ""], rows))
        h2 { "Add a key" }
        form.stack method="post" action="/keys" {
            (csrf_field(s))
            label for="name" { "Name" }
            input #name type="text" name="name" value=(typed.get("name").unwrap_or_default()) aria-describedby="name-hint";
            p.hint #name-hint { "Empty: the key's fingerprint." }
            label for="key" { "Public key" }
            textarea #key name="key" rows="4" required aria-describedby="key-hint" { (typed.get("key").unwrap_or_default()) }
            p.hint #key-hint { "One OpenSSH public key line, such as the contents of ~/.ssh/id_ed25519.pub." }
            button type="submit" { "Add key" }
        }
    }
}

async fn keys_of(web: &Web, s: &Session) -> Result<Vec<Value>, ApiError> {
    match web.cloud_get(&s.account, "/my/keys").await? {
        Value::Array(a) => Ok(a),
        _ => Ok(Vec::new()),
    }
}

async fn list(State(web): State<Web>, s: Session) -> Response {
    match keys_of(&web, &s).await {
        Ok(keys) => page::page(&s, "SSH keys", keys_page(&s, &keys, &Fields::default(), None)),
        Err(e) => page::api_error(Some(&s), "SSH keys", &e),
    }
}

/// The keys page again with an error (its status) and what was typed.
async fn refused(web: &Web, f: &PostForm, e: &ApiError) -> Response {
    match keys_of(web, &f.session).await {
        Ok(keys) => {
            let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            page::respond(status, Some(&f.session), "SSH keys", keys_page(&f.session, &keys, &f.fields, Some(e)))
        }
        Err(e2) => page::api_error(Some(&f.session), "SSH keys", &e2),
    }
}

/// CreateKey's body from the form.
fn key_body(f: &Fields) -> Result<Value, ApiError> {
    let key = f.required("key").map_err(|e| invalid(vec![e]))?;
    let mut b = Map::new();
    b.insert("key".into(), json!(key));
    if let Some(n) = f.get("name") {
        b.insert("name".into(), json!(n));
    }
    Ok(Value::Object(b))
}

async fn add(State(web): State<Web>, f: PostForm) -> Response {
    let res = match key_body(&f.fields) {
        Ok(body) => web.cloud(&f.session.account, Method::POST, "/my/keys", Some(&body)).await.map(|_| ()),
        Err(e) => Err(e),
    };
    match res {
        Ok(()) => Redirect::to("/keys").into_response(),
        Err(e) => refused(&web, &f, &e).await,
    }
}

async fn delete(State(web): State<Web>, Path(name): Path<String>, f: PostForm) -> Response {
    match web.cloud(&f.session.account, Method::DELETE, &format!("/my/keys/{}", enc(&name)), None).await {
        Ok(_) => Redirect::to("/keys").into_response(),
        Err(e) => refused(&web, &f, &e).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_form_keeps_the_key_and_names_the_field() {
        let account: nereid_types::account::Account =
            serde_json::from_value(json!({"uuid": "930896af-bf8c-48d4-885c-6573a94b1853", "login": "alice", "email": "a@example.com", "created": "2026-01-01T00:00:00.000Z", "updated": "2026-01-01T00:00:00.000Z"}))
                .unwrap();
        let s = Session { account, csrf: "tok".into() };
        let typed = Fields::parse(b"name=laptop&key=ssh-rsa+garbage");
        let e = ApiError::validation_409(vec![nereid_types::FieldError::invalid("key", "not an OpenSSH public key")]);
        let out =
            keys_page(&s, &[json!({"name": "old", "fingerprint": "aa:bb", "key": "ssh-ed25519 AAAA"})], &typed, Some(&e)).into_string();
        assert!(out.contains(">ssh-rsa garbage</textarea>") && out.contains("value=\"laptop\""), "{out}");
        assert!(out.contains("<code>key</code>: not an OpenSSH public key"));
        assert!(out.contains("/keys/old/delete") && out.contains("<label for=\"key\">"));
        assert_eq!(key_body(&Fields::parse(b"name=")).unwrap_err().errors[0].field, "key");
    }
}
