//! The web console: operators and tenants run the cloud from a browser.
//!
//! ```text
//!   browser ──► --web-listen (TLS like CloudAPI, or --web-http on loopback)
//!                  │
//!                  ▼
//!             session.rs     cookie → signed-in account (store bucket web_sessions);
//!                  │         every POST carries the session's CSRF token (PostForm)
//!                  ▼
//!             operator/*.rs  operator views ─► api.rs: the operator API in process
//!             tenant/*.rs    tenant views  ─► api.rs: CloudAPI in process, as the account
//!             consoles.rs    serial (xterm.js) and VNC (noVNC) pages and their WebSockets
//!                  │
//!                  ▼
//!             page.rs        the layout, tables, forms and error boxes (maud: escaped HTML)
//! ```
//!
//! Views never reach into the store or the jobs themselves: every read and every change
//! is a request to the operator API or to CloudAPI, made in process ([`api`]). A tenant's
//! pages therefore show exactly what CloudAPI's scope rules let the account see (one code
//! path), and an operator's buttons do exactly what `nereid admin` does.
//!
//! Where a new page goes: a file under `operator/` or `tenant/` with a `routes()` merged
//! in [`router`]; its links in the navigation of [`page`].

// Handlers and extractors fail with a whole page (`Response`), as axum's rejections do.
#![allow(clippy::result_large_err)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

use crate::http::AppState;

pub mod api;
pub mod assets;
pub mod consoles;
pub mod form;
pub mod login;
pub mod operator;
pub mod page;
pub mod session;
pub mod tenant;
pub mod throttle;

/// How the web console is served.
#[derive(Debug, Clone)]
pub struct WebConfig {
    /// Default 127.0.0.1:8090; port 0 picks a free one.
    pub listen: SocketAddr,
    /// Plain HTTP instead of HTTPS (meant for loopback): cookies are then not `Secure`.
    pub http: bool,
    /// The certificate and key (PEM); default: CloudAPI's (or the self-signed pair in the
    /// data directory).
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Where the third-party browser libraries are (xterm.js, noVNC: `scripts/lib.sh`
    /// installs them from npm at pinned versions); default: `$NEREID_WEB_ASSETS`.
    pub assets: Option<PathBuf>,
    /// How long a session lasts without use.
    pub session_idle: Duration,
    /// How long a session lasts at most.
    pub session_max: Duration,
}

/// The default listen address: 127.0.0.1:8090, or a free port when the operator API's
/// was asked for one (tests, several clouds on one machine).
pub fn default_listen(admin_listen: SocketAddr) -> SocketAddr {
    SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), if admin_listen.port() == 0 { 0 } else { 8090 })
}

impl WebConfig {
    /// HTTPS on `listen` with the default certificate and session lifetimes.
    pub fn new(listen: SocketAddr) -> Self {
        WebConfig {
            listen,
            http: false,
            cert: None,
            key: None,
            assets: default_assets(),
            session_idle: Duration::from_secs(30 * 60),
            session_max: Duration::from_secs(12 * 3600),
        }
    }
}

/// Where the browser libraries are when not configured: `$NEREID_WEB_ASSETS`, else the
/// newest `~/.cache/nereid/web-assets-*/node_modules` that `scripts/up` or `scripts/test`
/// installed.
pub fn default_assets() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("NEREID_WEB_ASSETS") {
        return Some(PathBuf::from(d));
    }
    let cache = std::env::var_os("NEREID_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/nereid")))?;
    std::fs::read_dir(cache)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("web-assets-"))
        .map(|e| e.path().join("node_modules"))
        .filter(|p| p.join("@xterm/xterm/lib/xterm.js").is_file())
        .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
}

/// What every web handler gets.
#[derive(Clone)]
pub struct Web {
    pub state: AppState,
    /// The operator API's router, called in process (see [`api`]).
    pub(crate) admin: Router,
    /// CloudAPI's router, called in process as the signed-in account.
    pub(crate) cloud: Router,
    /// Whether the console is served over TLS (cookies are `Secure` then).
    pub secure: bool,
    pub cfg: Arc<WebConfig>,
    pub throttle: Arc<throttle::Throttle>,
    /// When expired sessions were last purged (unix seconds).
    pub(crate) last_purge: Arc<std::sync::atomic::AtomicI64>,
}

impl Web {
    pub fn new(state: AppState, cfg: WebConfig) -> Self {
        let admin = crate::http::router(state.clone());
        let cloud = crate::cloudapi::router(state.clone());
        Web {
            secure: !cfg.http,
            state,
            admin,
            cloud,
            cfg: Arc::new(cfg),
            throttle: Arc::new(throttle::Throttle::default()),
            last_purge: Default::default(),
        }
    }

    pub fn app(&self) -> &crate::app::App {
        &self.state.app
    }
}

/// Every page of the console.
pub fn router(web: Web) -> Router {
    Router::new()
        .route("/", get(home))
        .merge(login::routes())
        .merge(assets::routes())
        // Every operator route behind one guard: its handlers do not check the account again.
        .merge(operator::routes().route_layer(axum::middleware::from_fn_with_state(web.clone(), session::require_operator)))
        .merge(tenant::routes())
        .merge(consoles::routes())
        .fallback(not_found)
        .layer(axum::middleware::from_fn(page::security_headers))
        .layer(axum::middleware::from_fn_with_state(web.clone(), crate::http::audit_layer::web))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(web)
}

/// `/`: operators land on the dashboard, tenants on their machines.
async fn home(s: session::Session) -> Response {
    if s.account.operator { Redirect::to("/dashboard").into_response() } else { Redirect::to("/machines").into_response() }
}

async fn not_found(s: Option<session::Session>) -> Response {
    page::not_found(s.as_ref())
}
