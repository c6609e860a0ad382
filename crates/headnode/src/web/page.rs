//! The console's page frame and the pieces every view is made of: the layout (title,
//! navigation by role, sign-out), error boxes that name each field, tables, key/value
//! lists, buttons that post with the CSRF token, and live regions that `nereid.js`
//! refreshes. All HTML is built with maud, which escapes every interpolated value.
//!
//! Pages are plain server-rendered HTML: they work without JavaScript (only the consoles,
//! uploads and live refreshes need it), with a screen reader, and at 400 px wide.

use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use nereid_types::ApiError;
use serde_json::Value;

use super::session::Session;

/// The operator's navigation (their own account's tenant pages follow).
const OPERATOR_NAV: &[(&str, &str)] = &[
    ("/dashboard", "Dashboard"),
    ("/servers", "Servers"),
    ("/vms", "VMs"),
    ("/jobs", "Jobs"),
    ("/images", "Images"),
    ("/packages", "Packages"),
    ("/networks", "Networks"),
    ("/accounts", "Accounts"),
];

/// Every account's navigation.
const TENANT_NAV: &[(&str, &str)] = &[("/machines", "Machines"), ("/keys", "SSH keys"), ("/audit", "Activity")];

/// A whole page: `title` is the document's title and its first heading.
pub fn layout(s: Option<&Session>, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if let Some(s) = s { meta name="csrf-token" content=(s.csrf); }
                title { (title) " · Nereid" }
                link rel="stylesheet" href="/assets/nereid.css";
                script src="/assets/nereid.js" defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/" { "Nereid" }
                    @if let Some(s) = s {
                        nav aria-label="Main" {
                            ul {
                                @if s.account.operator {
                                    @for (href, label) in OPERATOR_NAV { li { a href=(href) { (label) } } }
                                }
                                @for (href, label) in TENANT_NAV { li { a href=(href) { (label) } } }
                            }
                        }
                        form.signout method="post" action="/logout" {
                            (csrf_field(s))
                            span.who { (s.account.login) @if s.account.operator { " (operator)" } }
                            " "
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main #main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// A page answer.
pub fn page(s: &Session, title: &str, body: Markup) -> Response {
    respond(StatusCode::OK, Some(s), title, body)
}

/// A page answer with a status.
pub fn respond(status: StatusCode, s: Option<&Session>, title: &str, body: Markup) -> Response {
    (status, layout(s, title, body)).into_response()
}

/// A page with one paragraph.
pub fn message(status: StatusCode, s: Option<&Session>, title: &str, text: &str) -> Response {
    respond(status, s, title, html! { p role="alert" { (text) } })
}

/// 403 for a page this account may not see: nothing in it but the refusal.
pub fn forbidden(s: &Session) -> Response {
    message(StatusCode::FORBIDDEN, Some(s), "Not allowed", "This page is for operators.")
}

/// 404.
pub fn not_found(s: Option<&Session>) -> Response {
    message(StatusCode::NOT_FOUND, s, "Not found", "There is nothing at this address.")
}

/// An error box: the message, then each field with what is wrong with it.
pub fn error_box(e: &ApiError) -> Markup {
    html! {
        div.error role="alert" {
            p { strong { (e.code) } ": " (e.message) }
            @if !e.errors.is_empty() {
                ul {
                    @for f in &e.errors {
                        li { code { (f.field) } ": " (if f.message.is_empty() { f.code.as_str() } else { f.message.as_str() }) }
                    }
                }
            }
        }
    }
}

/// A page showing an API error with the API's status.
pub fn api_error(s: Option<&Session>, title: &str, e: &ApiError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    respond(status, s, title, error_box(e))
}

/// A list page: the list an API answered, as `render` shows it, or the API's error with
/// its status.
pub fn list_or_error(s: &Session, title: &str, answer: Result<Value, ApiError>, render: impl FnOnce(&[Value]) -> Markup) -> Response {
    match answer {
        Ok(list) => page(s, title, render(items(&list))),
        Err(e) => api_error(Some(s), title, &e),
    }
}

/// The items of a JSON array (none if it is not one).
pub fn items(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or_default()
}

/// The hidden CSRF field every changing form carries.
pub fn csrf_field(s: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(s.csrf); }
}

/// A one-button form posting to `action` (with `confirm`, the browser asks first).
pub fn post_button(s: &Session, action: &str, label: &str, confirm: Option<&str>) -> Markup {
    html! {
        form.inline method="post" action=(action) data-confirm=[confirm] {
            (csrf_field(s))
            button type="submit" { (label) }
        }
    }
}

/// A key/value list.
pub fn facts(rows: &[(&str, Markup)]) -> Markup {
    html! {
        dl.facts {
            @for (k, v) in rows { dt { (k) } dd { (v) } }
        }
    }
}

/// A table that scrolls sideways on narrow screens rather than overflowing the page.
pub fn table(caption: &str, headers: &[&str], rows: Vec<Markup>) -> Markup {
    html! {
        div.scroll {
            table {
                caption { (caption) }
                thead { tr { @for h in headers { th scope="col" { (h) } } } }
                tbody {
                    @if rows.is_empty() {
                        tr { td colspan=(headers.len()) { "None." } }
                    }
                    @for r in rows { (r) }
                }
            }
        }
    }
}

/// A region `nereid.js` reloads from `url` (an HTML fragment) every few seconds, so jobs
/// and states move without reloading the page. Without JavaScript it shows `content`.
pub fn live(url: &str, content: Markup) -> Markup {
    html! { div.live data-live=(url) aria-live="polite" { (content) } }
}

/// A fragment answer (for [`live`] regions), never cached.
pub fn fragment(m: Markup) -> Response {
    ([(header::CACHE_CONTROL, "no-store")], m).into_response()
}

/// A JSON value as text: strings bare, the rest as compact JSON.
pub fn text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A member of a JSON object as text.
pub fn field(v: &Value, k: &str) -> String {
    v.get(k).map(text).unwrap_or_default()
}

/// Pretty JSON in a `pre`.
pub fn json_block(v: &Value) -> Markup {
    html! { pre.json { (serde_json::to_string_pretty(v).unwrap_or_default()) } }
}

/// A state as a badge (`running`, `failed`, …) with its word, never colour alone.
pub fn badge(state: &str) -> Markup {
    let class = match state {
        "running" | "active" | "succeeded" | "ok" | "setup" => "ok",
        "failed" | "error" | "destroyed" | "unavailable" | "disabled" => "bad",
        "provisioning" | "queued" | "stopping" | "starting" | "creating" | "unactivated" => "busy",
        _ => "plain",
    };
    html! { span class={ "badge " (class) } { (state) } }
}

/// MiB as a size people read.
pub fn mib(n: u64) -> String {
    if n >= 1024 && n.is_multiple_of(1024) { format!("{} GiB", n / 1024) } else { format!("{n} MiB") }
}

/// Raw HTML known to be safe (only for fixed strings in the code).
pub fn raw(s: &'static str) -> PreEscaped<&'static str> {
    PreEscaped(s)
}

/// Headers on every answer: a Content-Security-Policy allowing only this console's own
/// scripts, no framing, no sniffing, no caching of pages, no referrers to elsewhere.
pub async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    let set = |h: &mut axum::http::HeaderMap, k: &'static str, v: &'static str| {
        if !h.contains_key(k) {
            h.insert(k, HeaderValue::from_static(v));
        }
    };
    set(
        h,
        "content-security-policy",
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'",
    );
    set(h, "x-content-type-options", "nosniff");
    set(h, "x-frame-options", "DENY");
    set(h, "referrer-policy", "same-origin");
    set(h, "cache-control", "no-store");
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_interpolated_is_escaped() {
        let e = ApiError::new(409, "Bad<code>", "<script>alert(1)</script>");
        let out = error_box(&e).into_string();
        assert!(!out.contains("<script>") && out.contains("&lt;script&gt;"), "{out}");
        assert!(out.contains("role=\"alert\""));
    }

    /// An answer's status and HTML.
    async fn read(r: Response) -> (StatusCode, String) {
        let status = r.status();
        let body = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn a_list_page_shows_the_list_or_the_api_error_with_its_status() {
        let account = serde_json::json!({"uuid": "00000000-0000-0000-0000-000000000001", "login": "op", "email": "op@x.example",
            "operator": true, "created": "2026-01-01T00:00:00Z", "updated": "2026-01-01T00:00:00Z"});
        let s = Session { account: serde_json::from_value(account).unwrap(), csrf: "t".into() };
        let names = |items: &[Value]| html! { @for i in items { p.thing { (field(i, "name")) } } };
        let (status, html) = read(list_or_error(&s, "Things", Ok(serde_json::json!([{"name": "one"}, {"name": "two"}])), names)).await;
        assert_eq!(status, StatusCode::OK);
        assert!(html.contains("<h1>Things</h1>") && html.contains("<p class=\"thing\">one</p><p class=\"thing\">two</p>"), "{html}");
        let e = ApiError::new(503, "ServiceUnavailable", "the store is away");
        let (status, html) = read(list_or_error(&s, "Things", Err(e), |_| html! { p.thing { "rendered" } })).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(html.contains("the store is away") && !html.contains("rendered"), "{html}");
        assert!(items(&serde_json::json!({"name": "one"})).is_empty(), "not a list: no items");
    }

    #[test]
    fn a_page_has_its_title_and_no_session_means_no_navigation() {
        let out = layout(None, "Sign in", html! { p { "x" } }).into_string();
        assert!(out.contains("<title>Sign in · Nereid</title>") && out.contains("<h1>Sign in</h1>"));
        assert!(out.contains("width=device-width") && !out.contains("Sign out"));
    }
}
