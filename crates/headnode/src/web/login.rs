//! `/login` and `/logout`. The form's fields are `login` and `password`; a failure says
//! only "wrong login or password" (which of the two is not told), repeated failures are
//! slowed down by [`super::throttle`], and a success starts a session
//! ([`super::session`]) and goes on to the page that asked for it (`next`, this site only).

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use axum::Router;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{Markup, html};
use serde::Deserialize;

use super::form::{Fields, PostForm, csrf_refused, same_origin};
use super::session::{Session, clear_cookie, set_cookie, token_of};
use super::{Web, page};

pub fn routes() -> Router<Web> {
    Router::new().route("/login", get(form).post(sign_in)).route("/logout", post(sign_out))
}

#[derive(Deserialize)]
struct Next {
    next: Option<String>,
}

/// Only a path on this site (not `//host`, not a URL) may be where sign-in goes next.
pub fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.starts_with("/\\") && !n.contains(['\r', '\n']) => n.to_string(),
        _ => "/".into(),
    }
}

fn login_form(next: &str, login: &str, problem: Option<&str>) -> Markup {
    html! {
        @if let Some(p) = problem { div.error role="alert" { p { (p) } } }
        form.stack method="post" action="/login" {
            input type="hidden" name="next" value=(next);
            label for="login" { "Login" }
            input #login type="text" name="login" value=(login) autocomplete="username" required autofocus[login.is_empty()];
            label for="password" { "Password" }
            input #password type="password" name="password" autocomplete="current-password" required autofocus[!login.is_empty()];
            button type="submit" { "Sign in" }
        }
        p.hint { "An operator sets passwords with " code { "nereid admin account passwd LOGIN" } "." }
    }
}

async fn form(s: Option<Session>, Query(q): Query<Next>) -> Response {
    let next = safe_next(q.next.as_deref());
    if s.is_some() {
        return Redirect::to(&next).into_response();
    }
    page::respond(StatusCode::OK, None, "Sign in", login_form(&next, "", None))
}

fn peer(req: &Request) -> Option<IpAddr> {
    req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip())
}

async fn sign_in(State(web): State<Web>, req: Request) -> Response {
    let addr = peer(&req);
    let headers: HeaderMap = req.headers().clone();
    if let Err(why) = same_origin(&headers) {
        return csrf_refused(None, why);
    }
    let Ok(bytes) = axum::body::to_bytes(req.into_body(), super::form::FORM_LIMIT).await else {
        return page::message(StatusCode::PAYLOAD_TOO_LARGE, None, "Sign in", "This form is too large.");
    };
    let f = Fields::parse(&bytes);
    let next = safe_next(f.get("next"));
    let login = f.get("login").unwrap_or_default().to_string();
    let password = f.0.iter().find(|(k, _)| k == "password").map(|(_, v)| v.clone()).unwrap_or_default();
    if login.is_empty() || password.is_empty() {
        let problem = if login.is_empty() { "login: enter your login." } else { "password: enter your password." };
        return page::respond(StatusCode::UNPROCESSABLE_ENTITY, None, "Sign in", login_form(&next, &login, Some(problem)));
    }
    if let Some(wait) = web.throttle.wait(&login, addr, Instant::now()) {
        let secs = wait.as_secs().max(1);
        tracing::info!(%login, ?addr, secs, "web sign-in refused: too many failures");
        let problem = format!("Too many failed sign-ins: wait {secs} seconds, then try again.");
        let mut resp = page::respond(StatusCode::TOO_MANY_REQUESTS, None, "Sign in", login_form(&next, &login, Some(&problem)));
        if let Ok(v) = secs.to_string().parse() {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return resp;
    }
    let account = match web.app().check_account_password(&login, &password).await {
        Ok(a) => a,
        Err(e) => return page::api_error(None, "Sign in", &e),
    };
    let Some(account) = account else {
        web.throttle.failed(&login, addr, Instant::now());
        tracing::info!(%login, ?addr, "web sign-in failed");
        return page::respond(StatusCode::UNAUTHORIZED, None, "Sign in", login_form(&next, &login, Some("Wrong login or password.")));
    };
    web.throttle.succeeded(&login, addr);
    let token = match web.start_session(&account).await {
        Ok(t) => t,
        Err(e) => return page::api_error(None, "Sign in", &e),
    };
    tracing::info!(login = %account.login, ?addr, "web sign-in");
    if let Err(e) = web.purge_sessions().await {
        tracing::warn!(error = %e.message, "purging expired web console sessions");
    }
    let mut resp = Redirect::to(&next).into_response();
    if let Ok(v) = set_cookie(web.secure, &token, web.cfg.session_max).parse() {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

async fn sign_out(State(web): State<Web>, headers: HeaderMap, f: PostForm) -> Response {
    if let Some(token) = token_of(&headers, web.secure)
        && let Err(e) = web.end_session(&token).await
    {
        return page::api_error(Some(&f.session), "Sign out", &e);
    }
    tracing::info!(login = %f.session.account.login, "web sign-out");
    let mut resp = Redirect::to("/login").into_response();
    if let Ok(v) = clear_cookie(web.secure).parse() {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_in_goes_on_only_to_this_site() {
        assert_eq!(safe_next(Some("/vms/1?x=2")), "/vms/1?x=2");
        assert_eq!(safe_next(Some("//evil.example/")), "/");
        assert_eq!(safe_next(Some("https://evil.example/")), "/");
        assert_eq!(safe_next(Some("/\\evil.example")), "/");
        assert_eq!(safe_next(None), "/");
    }
}
