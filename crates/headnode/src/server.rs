//! Starting and stopping a headnode: data directory, store, listener.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
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
    /// The agent listener (mutual TLS; see [`crate::agent_listener`]).
    pub agent_listen: SocketAddr,
    /// Timeouts and knobs (the headnode id is filled in from the data directory).
    pub app: AppConfig,
    /// The tenants' API; `None` serves none.
    pub cloudapi: Option<CloudApiConfig>,
    /// The web console; `None` serves none.
    pub web: Option<crate::web::WebConfig>,
    /// The public image catalogue (plain HTTP, no authentication, read-only; see
    /// [`crate::http::image_catalog`]); `None` serves none.
    pub image_catalog: Option<SocketAddr>,
    /// CloudAPI's and the web console's certificate from an ACME CA (see [`crate::acme`]).
    pub acme: Option<crate::acme::AcmeConfig>,
}

/// How CloudAPI is served.
#[derive(Debug, Clone)]
pub struct CloudApiConfig {
    /// Default 127.0.0.1:8443; port 0 picks a free one.
    pub listen: SocketAddr,
    /// Plain HTTP instead of HTTPS (meant for loopback).
    pub http: bool,
    /// The operator's certificate and key (PEM); default: a self-signed pair generated
    /// under the data directory at first start.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// The datacenter name tenants see.
    pub datacenter: String,
    /// The URL tenants use, when it is not the listen address (a proxy, a DNS name).
    pub public_url: Option<String>,
    /// Requests a second (and burst) per account, and per address unauthenticated.
    pub rate_limit: crate::cloudapi::ratelimit::RateLimit,
}

impl CloudApiConfig {
    /// HTTPS on `listen` with a self-signed certificate.
    pub fn new(listen: SocketAddr) -> Self {
        CloudApiConfig {
            listen,
            http: false,
            cert: None,
            key: None,
            datacenter: "nereid-1".into(),
            public_url: None,
            rate_limit: Default::default(),
        }
    }
}

impl Config {
    /// A config with default knobs and no CloudAPI.
    pub fn new(data_dir: PathBuf, store_url: Option<String>, admin_listen: SocketAddr) -> Self {
        let agent_listen = crate::agent_listener::default_listen(admin_listen);
        Config {
            data_dir,
            store_url,
            admin_listen,
            agent_listen,
            app: AppConfig::default(),
            cloudapi: None,
            web: None,
            image_catalog: None,
            acme: None,
        }
    }
}

/// A running CloudAPI listener.
#[derive(Debug, Clone)]
pub struct CloudApiRunning {
    pub addr: SocketAddr,
    /// `http(s)://<addr>` (or the configured public URL).
    pub url: String,
    /// SHA-256 fingerprint of the certificate (HTTPS only).
    pub cert_fingerprint: Option<String>,
    pub cert_path: Option<PathBuf>,
}

/// A running headnode.
pub struct Running {
    pub admin_addr: SocketAddr,
    /// `http://<admin_addr>`.
    pub admin_url: String,
    pub token: String,
    /// What compute nodes present to join.
    pub join_token: String,
    /// The agent listener's address and `https://` URL (what agents get as `--headnode`).
    pub agent_addr: SocketAddr,
    pub agent_url: String,
    /// The join token with the CA's hash, `SECRET:sha256:HEX` (what to give agents).
    pub join_token_full: String,
    pub app: Arc<App>,
    pub cloudapi: Option<CloudApiRunning>,
    /// The web console's address and URL (`fingerprint`, `cert_path` as CloudAPI's).
    pub web: Option<CloudApiRunning>,
    /// The public image catalogue's address (`http://` it), if one is served.
    pub image_catalog: Option<SocketAddr>,
    /// The DNS server's address (UDP and TCP), if CNS is on (see [`crate::app::cns`]).
    pub dns: Option<SocketAddr>,
    /// The ACME HTTP-01 responder's address, if it runs (see [`crate::acme`]).
    pub acme_http: Option<SocketAddr>,
    server: JoinHandle<std::io::Result<()>>,
    cloud_server: Option<JoinHandle<std::io::Result<()>>>,
    web_server: Option<JoinHandle<std::io::Result<()>>>,
    catalog_server: Option<JoinHandle<std::io::Result<()>>>,
    agent_server: JoinHandle<std::io::Result<()>>,
    runner: JoinHandle<()>,
    reconciler: Option<JoinHandle<()>>,
    /// The network policy push (see [`crate::app::netpolicy`]).
    netpolicy: JoinHandle<()>,
    /// The capacity view's background rebuild (see [`crate::app::capacity`]).
    capacity: JoinHandle<()>,
    /// Writes servers' pending liveness (see [`crate::app::liveness`]).
    liveness: JoinHandle<()>,
    /// The CNS zone builder and DNS server.
    cns: Vec<JoinHandle<()>>,
    /// The audit log's retention pruner (see [`crate::app::audit`]).
    audit_pruner: Option<JoinHandle<()>>,
    /// The ACME renewer and HTTP-01 responder.
    acme: Vec<JoinHandle<()>>,
    stop: broadcast::Sender<()>,
    /// The data directory's lock (released by [`Running::halt`]).
    lock: Option<std::fs::File>,
}

/// The store URL a config means.
pub fn store_url(cfg: &Config) -> String {
    cfg.store_url.clone().unwrap_or_else(|| format!("sqlite:{}", cfg.data_dir.join("nereid.db").display()))
}

/// Starts a headnode: prepares the data directory, opens (and migrates) the store,
/// binds the listener and publishes it in `endpoints.json`.
pub async fn start(cfg: Config) -> Result<Running> {
    // Every listener's timeouts and connection limit (see nereid_serve), under an fd
    // limit raised as far as the system allows.
    let fds = nereid_serve::raise_fd_limit().context("raising the open-files limit")?;
    let limits = nereid_serve::Limits::from_env()?;
    tracing::debug!(?fds, ?limits, "listener limits");
    datadir::ensure_dir(&cfg.data_dir)?;
    let lock = datadir::lock(&cfg.data_dir)?;
    let token = datadir::admin_token(&cfg.data_dir)?;
    let join_token = datadir::join_token(&cfg.data_dir)?;
    let mut app_cfg = cfg.app.clone();
    app_cfg.headnode_id = datadir::headnode_id(&cfg.data_dir)?;
    let url = store_url(&cfg);
    let store = nereid_store::open(&url).await.with_context(|| format!("opening the store at {}", redact(&url)))?;
    let app = Arc::new(App::new(store, cfg.data_dir.clone(), app_cfg).await.context("preparing the store buckets")?);
    app.publish_join_token(&join_token).await.map_err(|e| anyhow::anyhow!("publishing the join token: {}", e.message))?;
    let agent_bound = crate::agent_listener::bind(&app, cfg.agent_listen, &join_token).await?;
    let listener = nereid_serve::bind(cfg.admin_listen).with_context(|| format!("listening on {}", cfg.admin_listen))?;
    let admin_addr = listener.local_addr()?;
    if !admin_addr.ip().is_loopback() {
        tracing::warn!(%admin_addr, "the operator API listens beyond loopback: anyone who can reach it with the token controls this cloud");
    }
    let admin_url = format!("http://{admin_addr}");
    datadir::write_endpoints(&cfg.data_dir, &Endpoints { admin: admin_url.clone(), pid: std::process::id() })?;
    // ACME's certificate (or the self-signed stand-in) goes to both HTTPS listeners.
    let acme = match (&cfg.acme, &cfg.cloudapi) {
        (None, _) => None,
        (Some(a), Some(c)) if !c.http && c.cert.is_none() && c.key.is_none() => {
            let zones = app.cfg.cns.as_ref().map(|c| c.dns.zones());
            Some(crate::acme::prepare(&cfg.data_dir, a, zones, &[c.listen.ip().to_string()])?)
        }
        (Some(_), _) => anyhow::bail!(
            "--acme-domain is a certificate for CloudAPI over HTTPS: it cannot go with --no-cloudapi, --cloudapi-http or --cloudapi-cert/--cloudapi-key"
        ),
    };
    let slot = acme.as_ref().map(|p| p.slot.clone());
    let acme_http = acme.as_ref().and_then(crate::acme::http01_addr);
    // CloudAPI first: its URL is part of what tenants are told.
    let (cloud_listener, cloud_info, cloudapi) = match &cfg.cloudapi {
        None => (None, crate::cloudapi::CloudInfo::default(), None),
        Some(c) => {
            let (listener, running) = bind_cloudapi(&cfg.data_dir, c, slot.clone(), limits.header_read_timeout).await?;
            let info = crate::cloudapi::CloudInfo { datacenter: c.datacenter.clone(), url: running.url.clone() };
            (Some(listener), info, Some(running))
        }
    };
    let (web_listener, web) = match &cfg.web {
        None => (None, None),
        Some(w) => {
            // The same certificate setup as CloudAPI: its files if it was given some.
            let (cert, key) = match (&w.cert, &w.key, &cfg.cloudapi) {
                (Some(c), Some(k), _) => (Some(c.clone()), Some(k.clone())),
                (_, _, Some(c)) => (c.cert.clone(), c.key.clone()),
                _ => (None, None),
            };
            // ACME's certificate unless the console has files of its own.
            let slot = if cert.is_none() { slot.clone() } else { None };
            let (l, r) = bind_tls_or_http(
                &cfg.data_dir,
                w.listen,
                w.http,
                cert.as_deref(),
                key.as_deref(),
                slot,
                None,
                "web console",
                limits.header_read_timeout,
            )
            .await?;
            (Some(l), Some(r))
        }
    };
    let catalog_listener = match cfg.image_catalog {
        None => None,
        Some(addr) => {
            let l = nereid_serve::bind(addr).with_context(|| format!("image catalogue: listening on {addr}"))?;
            let bound = l.local_addr()?;
            if !bound.ip().is_loopback() {
                tracing::info!(addr = %bound, "the image catalogue serves this cloud's public images to anyone who can reach it");
            }
            Some(l)
        }
    };
    let image_catalog = catalog_listener.as_ref().and_then(|l| l.local_addr().ok());
    let dns_sockets = match &app.cfg.cns {
        None => None,
        Some(c) => {
            Some(crate::app::cns::bind(c.listen).await.with_context(|| format!("instance DNS: listening on {} (UDP and TCP)", c.listen))?)
        }
    };
    let dns = dns_sockets.as_ref().map(|(udp, _)| udp.local_addr()).transpose()?;
    let state = AppState {
        app: app.clone(),
        token: Arc::from(token.as_str()),
        join_token: Arc::from(join_token.as_str()),
        cloud: Arc::new(cloud_info),
    };
    let router = http::router(state.clone());
    let runner = tokio::spawn(crate::jobs::Runner::new(app.clone()).run());
    let reconciler =
        (!app.cfg.reconcile_every.is_zero()).then(|| tokio::spawn(crate::reconcile::run(app.clone(), app.cfg.reconcile_every)));
    let netpolicy = tokio::spawn(crate::app::netpolicy::run(app.clone()));
    let capacity = tokio::spawn(crate::app::capacity::run(app.clone()));
    let liveness = tokio::spawn(crate::app::liveness::run(app.clone()));
    let cns = match (&app.cfg.cns, dns_sockets) {
        (Some(c), Some((udp, tcp))) => crate::app::cns::spawn(&app, c, udp, tcp).into(),
        _ => Vec::new(),
    };
    let audit_pruner = app.cfg.audit_retention.map(|r| tokio::spawn(crate::app::audit::run_pruner(app.clone(), r)));
    let acme = match (acme, &cfg.acme) {
        (Some(p), Some(a)) => crate::acme::spawn(app.clone(), cfg.data_dir.clone(), a.clone(), p),
        _ => Vec::new(),
    };
    let (stop, _) = broadcast::channel::<()>(1);
    let mut stopped = stop.subscribe();
    let server = tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.recv().await;
        };
        nereid_serve::serve(JsonErrorsListener(nereid_serve::Tcp::new(listener, "admin")), router, limits, shutdown).await
    });
    let (agent_addr, agent_url, join_token_full) = (agent_bound.addr, agent_bound.url.clone(), agent_bound.join_token_full.clone());
    let agent_server = {
        let agent_router = http::agent_router(state.clone());
        let mut stopped = stop.subscribe();
        // nereid_serve hands each connection's Peer (its client key) to the handlers as
        // their ConnectInfo.
        let l = JsonErrorsListener(agent_bound.listener);
        tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.recv().await;
            };
            nereid_serve::serve(l, agent_router, limits, shutdown).await
        })
    };
    let catalog_server = catalog_listener.map(|l| {
        let catalog_router = http::image_catalog::router(state.clone());
        let mut stopped = stop.subscribe();
        tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.recv().await;
            };
            nereid_serve::serve(JsonErrorsListener(nereid_serve::Tcp::new(l, "image catalogue")), catalog_router, limits, shutdown).await
        })
    });
    let state_for_web = state.clone();
    let cloud_server = cloud_listener.map(|l| {
        let limiter =
            Arc::new(crate::cloudapi::ratelimit::RateLimiter::new(cfg.cloudapi.as_ref().map(|c| c.rate_limit).unwrap_or_default()));
        let cloud_router = crate::cloudapi::router(state).layer(axum::Extension(limiter));
        let mut stopped = stop.subscribe();
        tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.recv().await;
            };
            match l {
                CloudListener::Http(l) => {
                    nereid_serve::serve(JsonErrorsListener(nereid_serve::Tcp::new(l, "CloudAPI")), cloud_router, limits, shutdown).await
                }
                CloudListener::Https(l) => nereid_serve::serve(JsonErrorsListener(l), cloud_router, limits, shutdown).await,
            }
        })
    });
    let web_server = match (web_listener, &cfg.web) {
        (Some(l), Some(w)) => {
            let web_router = crate::web::router(crate::web::Web::new(state_for_web, w.clone()));
            let mut stopped = stop.subscribe();
            Some(tokio::spawn(async move {
                let shutdown = async move {
                    let _ = stopped.recv().await;
                };
                match l {
                    CloudListener::Http(l) => {
                        nereid_serve::serve(nereid_serve::Tcp::new(l, "web console"), web_router, limits, shutdown).await
                    }
                    CloudListener::Https(l) => nereid_serve::serve(l, web_router, limits, shutdown).await,
                }
            }))
        }
        _ => None,
    };
    tracing::info!(web = web.as_ref().map(|w| w.url.as_str()), "web console");
    tracing::info!(%admin_url, %agent_url, cloudapi = cloudapi.as_ref().map(|c| c.url.as_str()), store = app.store.backend(), "headnode started");
    Ok(Running {
        admin_addr,
        admin_url,
        token,
        join_token,
        agent_addr,
        agent_url,
        join_token_full,
        app,
        cloudapi,
        web,
        image_catalog,
        dns,
        acme_http,
        server,
        cloud_server,
        web_server,
        catalog_server,
        agent_server,
        runner,
        reconciler,
        netpolicy,
        capacity,
        liveness,
        cns,
        audit_pruner,
        acme,
        stop,
        lock: Some(lock),
    })
}

impl Running {
    /// Stops accepting requests and waits for in-flight ones.
    pub async fn shutdown(mut self) -> Result<()> {
        self.halt().await
    }

    /// Stops everything this headnode runs — jobs are dropped where they stand, as a crash
    /// would leave them, for another headnode (or this one restarted) to take over — and
    /// releases the data directory, so a new headnode can start on it in this process.
    pub async fn halt(&mut self) -> Result<()> {
        self.runner.abort();
        if let Some(r) = &self.reconciler {
            r.abort();
        }
        self.netpolicy.abort();
        self.capacity.abort();
        {
            // Not in the middle of a flush (it holds this while it writes): what it took
            // stays taken by nobody otherwise. The last flush is below.
            let _between_flushes = self.app.liveness.writes.write().await;
            self.liveness.abort();
        }
        if let Some(p) = &self.audit_pruner {
            p.abort();
        }
        for t in &mut self.acme {
            t.abort();
            // The HTTP-01 listener closes once its task is dropped: a restart may bind it again.
            let _ = t.await;
        }
        for t in &mut self.cns {
            t.abort();
            // Its sockets are closed once it is dropped: a restart may bind them again.
            let _ = t.await;
        }
        let _ = (&mut self.runner).await;
        let _ = self.stop.send(());
        (&mut self.server).await??;
        (&mut self.agent_server).await??;
        if let Some(c) = &mut self.cloud_server {
            c.await??;
        }
        if let Some(w) = &mut self.web_server {
            w.await??;
        }
        if let Some(c) = &mut self.catalog_server {
            c.await??;
        }
        // The audit records of the last requests are queued, and servers' liveness:
        // written before the store goes.
        self.app.audit_flush().await;
        self.app.flush_liveness().await;
        self.app.store.close().await;
        self.lock = None;
        Ok(())
    }

    /// Runs until the server stops on its own (it does not, short of an error).
    pub async fn wait(self) -> Result<()> {
        self.server.await??;
        Ok(())
    }
}

enum CloudListener {
    Http(TcpListener),
    Https(crate::cloudapi::tls::TlsListener),
}

/// Binds CloudAPI's listener (generating the self-signed certificate at first start).
async fn bind_cloudapi(
    data_dir: &std::path::Path,
    c: &CloudApiConfig,
    slot: Option<Arc<crate::cloudapi::tls::CertSlot>>,
    handshake_timeout: std::time::Duration,
) -> Result<(CloudListener, CloudApiRunning)> {
    bind_tls_or_http(
        data_dir,
        c.listen,
        c.http,
        c.cert.as_deref(),
        c.key.as_deref(),
        slot,
        c.public_url.clone(),
        "CloudAPI",
        handshake_timeout,
    )
    .await
}

/// Binds a listener that serves HTTPS (the operator's certificate, or the self-signed one
/// in the data directory, or ACME's from `slot`) or, with `http`, plain HTTP: CloudAPI's and
/// the web console's.
///
/// A TLS handshake gets the header read timeout: it is the first part of reading a request.
#[allow(clippy::too_many_arguments)]
async fn bind_tls_or_http(
    data_dir: &std::path::Path,
    listen: SocketAddr,
    http: bool,
    cert: Option<&std::path::Path>,
    key: Option<&std::path::Path>,
    slot: Option<Arc<crate::cloudapi::tls::CertSlot>>,
    public_url: Option<String>,
    what: &str,
    handshake_timeout: std::time::Duration,
) -> Result<(CloudListener, CloudApiRunning)> {
    let tcp = nereid_serve::bind(listen).with_context(|| format!("{what}: listening on {listen}"))?;
    let addr = tcp.local_addr()?;
    if !addr.ip().is_loopback() {
        tracing::info!(%addr, "{what} listens beyond loopback");
        if http {
            tracing::warn!(%addr, "{what} serves plain HTTP beyond loopback: requests and answers travel unencrypted");
        }
    }
    let host = if addr.ip().is_unspecified() { "127.0.0.1".to_string() } else { addr.ip().to_string() };
    let host = if addr.is_ipv6() { format!("[{host}]") } else { host };
    if http {
        let url = public_url.unwrap_or_else(|| format!("http://{host}:{}", addr.port()));
        return Ok((CloudListener::Http(tcp), CloudApiRunning { addr, url, cert_fingerprint: None, cert_path: None }));
    }
    let (config, fingerprint, cert_path) = match slot {
        Some(slot) => {
            let fingerprint = slot.fingerprint().unwrap_or_default();
            (
                crate::cloudapi::tls::server_config_resolving(slot)?,
                fingerprint,
                data_dir.join(crate::acme::DIR).join(crate::acme::CERT_FILE),
            )
        }
        None => {
            let names = vec![addr.ip().to_string()];
            let files = crate::cloudapi::tls::ensure_certificate(data_dir, cert, key, &names)?;
            (crate::cloudapi::tls::server_config(&files)?, crate::cloudapi::tls::fingerprint(&files)?, files.cert)
        }
    };
    let url = public_url.unwrap_or_else(|| format!("https://{host}:{}", addr.port()));
    Ok((
        CloudListener::Https(crate::cloudapi::tls::TlsListener::with_handshake_timeout(tcp, config, handshake_timeout)),
        CloudApiRunning { addr, url, cert_fingerprint: Some(fingerprint), cert_path: Some(cert_path) },
    ))
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

/// A listener whose connections answer hyper's own errors as Triton JSON (see [`JsonErrorsIo`]).
pub struct JsonErrorsListener<L>(pub L);

impl<L: axum::serve::Listener> axum::serve::Listener for JsonErrorsListener<L> {
    type Io = JsonErrorsIo<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (io, addr) = self.0.accept().await;
        (JsonErrorsIo { inner: io, pending: Vec::new() }, addr)
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// A connection's byte stream with one rewrite: the bodiless answer hyper writes by itself
/// when a request head cannot be parsed (400), its URI is too long (414) or its headers
/// are too large (431) — no handler, so no middleware, ever sees those requests — is
/// replaced by the same status with a `{code, message}` JSON body. Every answer the
/// routers make carries a `content-type`, so they are never touched.
pub struct JsonErrorsIo<T> {
    inner: T,
    /// Bytes of a replacement answer not yet written to `inner`.
    pending: Vec<u8>,
}

/// The JSON answer standing in for hyper's own, if `head` is one: a whole response head,
/// nothing after it, status 400, 414 or 431, no content type.
pub fn replace_bare_error(head: &[u8]) -> Option<Vec<u8>> {
    let rest = head.strip_prefix(b"HTTP/1.1 ").or_else(|| head.strip_prefix(b"HTTP/1.0 "))?;
    let end = head.windows(4).position(|w| w == b"\r\n\r\n")?;
    if end + 4 != head.len() {
        return None;
    }
    let text = std::str::from_utf8(&head[..end]).ok()?;
    if text.lines().skip(1).any(|l| l.to_ascii_lowercase().starts_with("content-type:")) {
        return None;
    }
    let (status, code, message) = match rest.get(..4)? {
        b"400 " => (400, "BadRequest", "the request is not valid HTTP/1.1 (its method, URI, a header or the version could not be parsed)"),
        b"414 " => (414, "RequestUriTooLarge", "the request URI is too long"),
        b"431 " => (431, "RequestHeaderFieldsTooLarge", "the request's headers are too large or too many"),
        _ => return None,
    };
    let body = serde_json::to_vec(&nereid_types::ApiError::new(status, code, message).body()).ok()?;
    let reason = axum::http::StatusCode::from_u16(status).ok()?.canonical_reason().unwrap_or("");
    let date = text.lines().find(|l| l.to_ascii_lowercase().starts_with("date:")).map(|l| format!("{l}\r\n")).unwrap_or_default();
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n{date}\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    Some(out)
}

impl<T: tokio::io::AsyncWrite + Unpin> JsonErrorsIo<T> {
    /// Writes what is left of a replacement answer.
    fn poll_pending(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        while !self.pending.is_empty() {
            match std::pin::Pin::new(&mut self.inner).poll_write(cx, &self.pending) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    self.pending.drain(..n);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for JsonErrorsIo<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for JsonErrorsIo<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::task::Poll;
        match self.poll_pending(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
        if let Some(answer) = replace_bare_error(buf) {
            self.pending = answer;
            // The caller's bytes count as written: the replacement goes out in their place
            // (here if it can, else on the next write, flush or shutdown).
            if let Poll::Ready(Err(e)) = self.poll_pending(cx) {
                return Poll::Ready(Err(e));
            }
            return Poll::Ready(Ok(buf.len()));
        }
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        // A response head without a body comes as one slice; anything else passes as it is.
        let mut full = bufs.iter().filter(|b| !b.is_empty());
        if let (Some(only), None) = (full.next(), full.next()) {
            return self.poll_write(cx, only);
        }
        match self.poll_pending(cx) {
            std::task::Poll::Ready(Ok(())) => std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs),
            std::task::Poll::Ready(Err(e)) => std::task::Poll::Ready(Err(e)),
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        match self.poll_pending(cx) {
            std::task::Poll::Ready(Ok(())) => std::pin::Pin::new(&mut self.inner).poll_flush(cx),
            other => other,
        }
    }

    fn poll_shutdown(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        match self.poll_pending(cx) {
            std::task::Poll::Ready(Ok(())) => std::pin::Pin::new(&mut self.inner).poll_shutdown(cx),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hyper_bare_errors_become_json() {
        let out = replace_bare_error(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Sat, 05 Dec 2026 06:00:00 GMT\r\n\r\n",
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.starts_with("HTTP/1.1 431 ") && head.contains("content-type: application/json") && head.contains("date: Sat"),
            "{head}"
        );
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["code"], "RequestHeaderFieldsTooLarge");
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert!(replace_bare_error(b"HTTP/1.1 414 URI Too Long\r\n\r\n").is_some());
        // The routers' own answers, and anything with a body, pass as they are.
        assert!(replace_bare_error(b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n").is_none());
        assert!(replace_bare_error(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\n\r\n{}").is_none());
        assert!(replace_bare_error(b"HTTP/1.1 404 Not Found\r\n\r\n").is_none());
        assert!(replace_bare_error(b"HTTP/1.1 200 OK\r\n\r\n").is_none());
    }
}
