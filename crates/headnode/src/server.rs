//! Starting and stopping a headnode: data directory, store, listener.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::app::{App, AppConfig};
use crate::datadir::{self, Endpoints};
use crate::http::{self, AppState};

/// What `nereid headnode` is started with.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    /// `sqlite:PATH` or `postgres://…`; default: SQLite in the data directory.
    pub store_url: Option<String>,
    /// The operator API listener (default 127.0.0.1:8080; port 0 picks a free one).
    pub admin_listen: SocketAddr,
    /// Timeouts and knobs (the headnode id is filled in from the data directory).
    pub app: AppConfig,
}

impl Config {
    /// A config with default knobs.
    pub fn new(data_dir: PathBuf, store_url: Option<String>, admin_listen: SocketAddr) -> Self {
        Config { data_dir, store_url, admin_listen, app: AppConfig::default() }
    }
}

/// A running headnode.
pub struct Running {
    pub admin_addr: SocketAddr,
    /// `http://<admin_addr>`.
    pub admin_url: String,
    pub token: String,
    /// What compute nodes present to join.
    pub join_token: String,
    pub app: Arc<App>,
    server: JoinHandle<std::io::Result<()>>,
    runner: JoinHandle<()>,
    stop: oneshot::Sender<()>,
    _lock: std::fs::File,
}

/// The store URL a config means.
pub fn store_url(cfg: &Config) -> String {
    cfg.store_url.clone().unwrap_or_else(|| format!("sqlite:{}", cfg.data_dir.join("nereid.db").display()))
}

/// Starts a headnode: prepares the data directory, opens (and migrates) the store,
/// binds the listener and publishes it in `endpoints.json`.
pub async fn start(cfg: Config) -> Result<Running> {
    datadir::ensure_dir(&cfg.data_dir)?;
    let lock = datadir::lock(&cfg.data_dir)?;
    let token = datadir::admin_token(&cfg.data_dir)?;
    let join_token = datadir::join_token(&cfg.data_dir)?;
    let mut app_cfg = cfg.app.clone();
    app_cfg.headnode_id = datadir::headnode_id(&cfg.data_dir)?;
    let url = store_url(&cfg);
    let store = nereid_store::open(&url).await.with_context(|| format!("opening the store at {}", redact(&url)))?;
    let app = Arc::new(App::new(store, cfg.data_dir.clone(), app_cfg).await.context("preparing the store buckets")?);
    let listener = TcpListener::bind(cfg.admin_listen).await.with_context(|| format!("listening on {}", cfg.admin_listen))?;
    let admin_addr = listener.local_addr()?;
    if !admin_addr.ip().is_loopback() {
        tracing::warn!(%admin_addr, "the operator API listens beyond loopback: anyone who can reach it with the token controls this cloud");
    }
    let admin_url = format!("http://{admin_addr}");
    datadir::write_endpoints(&cfg.data_dir, &Endpoints { admin: admin_url.clone(), pid: std::process::id() })?;
    let state = AppState { app: app.clone(), token: Arc::from(token.as_str()), join_token: Arc::from(join_token.as_str()) };
    let router = http::router(state);
    let runner = tokio::spawn(crate::jobs::Runner::new(app.clone()).run());
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
    });
    tracing::info!(%admin_url, store = app.store.backend(), "headnode started");
    Ok(Running { admin_addr, admin_url, token, join_token, app, server, runner, stop, _lock: lock })
}

impl Running {
    /// Stops accepting requests and waits for in-flight ones.
    pub async fn shutdown(self) -> Result<()> {
        self.runner.abort();
        let _ = self.stop.send(());
        self.server.await??;
        Ok(())
    }

    /// Runs until the server stops on its own (it does not, short of an error).
    pub async fn wait(self) -> Result<()> {
        self.server.await??;
        Ok(())
    }
}

/// A store URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}
