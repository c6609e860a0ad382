//! The HTTP-01 responder (`--acme-http-listen`): plain HTTP answering
//! `GET /.well-known/acme-challenge/<token>` with the token's key authorization while an
//! order waits for it; 404 for every other path and token.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::Tokens;

/// Connections the responder serves at once (beyond it the longest-idle one is closed).
const MAX_CONNECTIONS: usize = 64;

/// The responder's routes.
pub fn router(tokens: Tokens) -> Router {
    Router::new().route("/.well-known/acme-challenge/{token}", get(answer)).with_state(tokens)
}

async fn answer(State(tokens): State<Tokens>, Path(token): Path<String>) -> Response {
    let found = tokens.read().unwrap_or_else(|p| p.into_inner()).get(&token).cloned();
    match found {
        Some(key_auth) => ([(header::CONTENT_TYPE, "application/octet-stream")], key_auth).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// Serves the responder until the task is dropped, with the same timeouts as every other
/// listener (a client that opens connections and sends nothing cannot hold them) and few
/// connections: a CA's validators need a handful, and this port is open to the world.
pub async fn serve(listener: tokio::net::TcpListener, tokens: Tokens) {
    let limits = nereid_serve::Limits { max_connections: MAX_CONNECTIONS, ..nereid_serve::Limits::default() };
    let tcp = nereid_serve::Tcp::new(listener, "ACME HTTP-01");
    if let Err(e) = nereid_serve::serve(tcp, router(tokens), limits, std::future::pending()).await {
        tracing::error!(error = %e, "ACME: the HTTP-01 responder stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn get_status(tokens: &Tokens, path: &str) -> (StatusCode, String) {
        let resp = router(tokens.clone()).oneshot(Request::get(path).body(Body::empty()).unwrap()).await.unwrap();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16).await.unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn answers_only_pending_tokens() {
        let tokens = Tokens::default();
        tokens.write().unwrap().insert("tok1".into(), "tok1.thumb".into());
        assert_eq!(get_status(&tokens, "/.well-known/acme-challenge/tok1").await, (StatusCode::OK, "tok1.thumb".into()));
        assert_eq!(get_status(&tokens, "/.well-known/acme-challenge/other").await.0, StatusCode::NOT_FOUND);
        assert_eq!(get_status(&tokens, "/").await.0, StatusCode::NOT_FOUND);
        assert_eq!(get_status(&tokens, "/--ping").await.0, StatusCode::NOT_FOUND);
    }
}
