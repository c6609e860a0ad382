//! HTTPS for CloudAPI: the certificate, the rustls server config, and a TLS listener for axum.
//!
//! ```text
//!   --tls-cert/--tls-key given ──► the operator's files (checked: PEM, key matches cert)
//!   otherwise                  ──► DIR/cloudapi-cert.pem (0644) + DIR/cloudapi-key.pem (0600),
//!                                  self-signed (ECDSA P-256, 10 years) at first start, reused later
//!
//!   TcpListener ─► accept loop ─► one task per handshake (10 s timeout) ─► channel ─► axum::serve
//! ```
//!
//! With ACME (`crate::acme`) both listeners serve from a [`CertSlot`] instead: the
//! self-signed (or last issued) certificate until a new one is swapped in.
//!
//! Handshakes run in their own tasks so a slow or silent client cannot hold up
//! the others; failed handshakes are logged at debug level and dropped.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rcgen::{CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose, SanType, SerialNumber};
use rustls::crypto::ring;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::ParsedCertificate;
use rustls::sign::CertifiedKey;
use rustls::{Error as TlsError, InconsistentKeys};
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::datadir;

/// The generated certificate, in the data directory.
pub const CERT_FILE: &str = "cloudapi-cert.pem";
/// The generated certificate's private key, in the data directory (mode 0600).
pub const KEY_FILE: &str = "cloudapi-key.pem";
/// The generated certificate's common name.
pub const COMMON_NAME: &str = "Nereid CloudAPI";
/// How long a generated certificate is valid.
const VALIDITY: time::Duration = time::Duration::days(3650);
/// How long a client has to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Completed handshakes waiting for axum to take them.
const ACCEPTED_QUEUE: usize = 64;
/// TLS handshakes in flight at most; a newcomer beyond it aborts the oldest one (silent
/// clients cannot lock out a fresh one, and each holds a file descriptor).
pub const MAX_HANDSHAKES: usize = 1024;

/// Where the certificate and key come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// True for the self-signed pair in the data directory, false for the operator's own files.
    pub generated: bool,
}

/// The certificate and key to serve CloudAPI with.
///
/// The operator's own files if both are given (an error if only one is, or if they are
/// unreadable, not PEM, or do not belong together); otherwise `DIR/cloudapi-cert.pem` and
/// `DIR/cloudapi-key.pem`, generated at first start (ECDSA P-256, valid 10 years, CN
/// "Nereid CloudAPI", names `localhost`, 127.0.0.1, ::1 and `extra_names`: host names, IP
/// addresses or socket addresses, e.g. the listen address; unspecified addresses such as
/// 0.0.0.0 are skipped) and reused on later starts.
pub fn ensure_certificate(data_dir: &Path, own_cert: Option<&Path>, own_key: Option<&Path>, extra_names: &[String]) -> Result<TlsFiles> {
    match (own_cert, own_key) {
        (Some(cert), Some(key)) => {
            let files = TlsFiles { cert: cert.to_path_buf(), key: key.to_path_buf(), generated: false };
            load(&files)?;
            warn_if_key_readable_by_others(&files.key);
            Ok(files)
        }
        (Some(cert), None) => bail!("a TLS certificate ({}) was given without its private key", cert.display()),
        (None, Some(key)) => bail!("a TLS private key ({}) was given without its certificate", key.display()),
        (None, None) => generated_certificate(data_dir, extra_names),
    }
}

/// A rustls server config (TLS 1.2 and 1.3, ring, ALPN `http/1.1`) serving the files' certificate.
pub fn server_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>> {
    let (certs, key) = load(files)?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .context("choosing TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .with_context(|| format!("using the certificate {} with the key {}", files.cert.display(), files.key.display()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A certificate that can be replaced while serving (ACME renewals): every new handshake
/// takes the current one; connections already open keep the one they were made with.
#[derive(Debug)]
pub struct CertSlot(std::sync::RwLock<Arc<CertifiedKey>>);

impl CertSlot {
    pub fn new(key: Arc<CertifiedKey>) -> Arc<Self> {
        Arc::new(CertSlot(std::sync::RwLock::new(key)))
    }

    /// What new handshakes get.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Serves `key` from the next handshake on.
    pub fn set(&self, key: Arc<CertifiedKey>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = key;
    }

    /// The SHA-256 fingerprint of the current certificate (as [`fingerprint`]).
    pub fn fingerprint(&self) -> Option<String> {
        self.current().cert.first().map(|c| colon_hex(&Sha256::digest(c.as_ref())))
    }
}

impl rustls::server::ResolvesServerCert for CertSlot {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// The files' chain and key, checked (as [`server_config`] does), ready to serve.
pub fn certified_key(files: &TlsFiles) -> Result<Arc<CertifiedKey>> {
    let (certs, key) = load(files)?;
    let signing_key = ring::default_provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| anyhow::anyhow!("the private key in {} is not usable: {e}", files.key.display()))?;
    Ok(Arc::new(CertifiedKey::new(certs, signing_key)))
}

/// A rustls server config as [`server_config`]'s, serving whatever `slot` holds.
pub fn server_config_resolving(slot: Arc<CertSlot>) -> Result<Arc<rustls::ServerConfig>> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .context("choosing TLS protocol versions")?
        .with_no_client_auth()
        .with_cert_resolver(slot);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The SHA-256 fingerprint of the (first) certificate, as `openssl x509 -fingerprint -sha256`
/// prints it: upper-case hex pairs joined by colons.
pub fn fingerprint(files: &TlsFiles) -> Result<String> {
    let certs = read_certs(&files.cert)?;
    let Some(cert) = certs.first() else { bail!("no PEM certificate in {}", files.cert.display()) };
    Ok(colon_hex(&Sha256::digest(cert.as_ref())))
}

fn colon_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

// ---- the generated pair ----

fn generated_certificate(data_dir: &Path, extra_names: &[String]) -> Result<TlsFiles> {
    let files = TlsFiles { cert: data_dir.join(CERT_FILE), key: data_dir.join(KEY_FILE), generated: true };
    let sans = subject_alt_names(extra_names)?;
    match (files.cert.exists(), files.key.exists()) {
        (true, true) => {
            let (certs, _) = load(&files).map_err(|e| {
                e.context(format!(
                    "the generated CloudAPI certificate is unusable; delete {} and {} to have a new pair generated",
                    files.cert.display(),
                    files.key.display()
                ))
            })?;
            tighten_key_mode(&files.key)?;
            warn_if_names_missing(&files, &certs, &sans);
            Ok(files)
        }
        (cert_exists, key_exists) => {
            if cert_exists || key_exists {
                let (present, missing) = if cert_exists { (&files.cert, &files.key) } else { (&files.key, &files.cert) };
                tracing::warn!(present = %present.display(), missing = %missing.display(), "half of the CloudAPI certificate pair is missing; generating a new pair");
            }
            // The old certificate goes first: a crash half way must not leave it next to a new key.
            remove_if_exists(&files.cert)?;
            let (cert_pem, key_pem) = generate(&sans)?;
            datadir::write_private(&files.key, key_pem.as_bytes())?;
            write_public(&files.cert, cert_pem.as_bytes())?;
            tracing::info!(cert = %files.cert.display(), key = %files.key.display(), "generated a self-signed CloudAPI certificate");
            Ok(files)
        }
    }
}

/// `localhost`, 127.0.0.1, ::1 and the extra names, without duplicates.
fn subject_alt_names(extra_names: &[String]) -> Result<Vec<SanType>> {
    let mut sans = vec![
        SanType::DnsName("localhost".try_into().context("\"localhost\" as a certificate name")?),
        SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)),
    ];
    for name in extra_names {
        let Some(san) = san_for(name)? else { continue };
        if !sans.contains(&san) {
            sans.push(san);
        }
    }
    Ok(sans)
}

/// A certificate name for a host name, IP address or socket address; None for nothing useful
/// (empty, or an unspecified address like 0.0.0.0).
fn san_for(name: &str) -> Result<Option<SanType>> {
    let name = name.trim().trim_end_matches('.');
    if name.is_empty() {
        return Ok(None);
    }
    let unbracketed = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')).unwrap_or(name);
    let ip = unbracketed.parse::<IpAddr>().ok().or_else(|| name.parse::<SocketAddr>().ok().map(|a| a.ip()));
    if let Some(ip) = ip {
        return Ok((!ip.is_unspecified()).then_some(SanType::IpAddress(ip)));
    }
    // host:port
    let host = match name.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.parse::<u16>().is_ok() => host,
        _ => name,
    };
    if host.is_empty() || !host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '*')) {
        bail!("{name:?} cannot be a certificate name: expected a host name or an IP address");
    }
    let host = host.to_ascii_lowercase();
    let dns = host.as_str().try_into().with_context(|| format!("{name:?} as a certificate name"))?;
    Ok(Some(SanType::DnsName(dns)))
}

/// A new self-signed certificate and its key, both PEM.
fn generate(sans: &[SanType]) -> Result<(String, String)> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).context("generating a P-256 key")?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, COMMON_NAME);
    params.distinguished_name = dn;
    params.subject_alt_names = sans.to_vec();
    let now = time::OffsetDateTime::now_utc();
    // A day of slack for clients whose clocks are a little behind.
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + VALIDITY;
    let mut serial: [u8; 16] = rand::random();
    serial[0] &= 0x7f; // a positive INTEGER
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.self_signed(&key).context("signing the CloudAPI certificate")?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Warns when the reused certificate does not name something it was asked to.
fn warn_if_names_missing(files: &TlsFiles, certs: &[CertificateDer<'static>], sans: &[SanType]) {
    let Some(Ok(parsed)) = certs.first().map(ParsedCertificate::try_from) else { return };
    for san in sans {
        let name = match san {
            SanType::DnsName(n) => ServerName::try_from(n.as_str().to_string()).ok(),
            SanType::IpAddress(ip) => Some(ServerName::IpAddress((*ip).into())),
            _ => None,
        };
        let Some(name) = name else { continue };
        if rustls::client::verify_server_name(&parsed, &name).is_err() {
            tracing::warn!(
                name = ?name,
                cert = %files.cert.display(),
                "the generated CloudAPI certificate does not name this host; delete it and {} to have a new one generated",
                files.key.display()
            );
        }
    }
}

// ---- reading and checking PEM files ----

/// Reads and checks a certificate chain and its key; errors name the file and what is wrong.
fn load(files: &TlsFiles) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let certs = read_certs(&files.cert)?;
    let Some(end_entity) = certs.first() else { bail!("no PEM certificate in {}", files.cert.display()) };
    ParsedCertificate::try_from(end_entity)
        .map_err(|e| anyhow::anyhow!("the certificate in {} is not a valid X.509 certificate: {e}", files.cert.display()))?;
    let key = read_key(&files.key)?;
    let provider = ring::default_provider();
    let signing_key = provider
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| anyhow::anyhow!("the private key in {} is not usable: {e}", files.key.display()))?;
    match CertifiedKey::new(certs.clone(), signing_key).keys_match() {
        Ok(()) => {}
        Err(TlsError::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            bail!("the key does not match the certificate: {} is not the key of {}", files.key.display(), files.cert.display())
        }
        // ring can always derive the public key, so this is not expected; rustls accepts such keys too.
        Err(TlsError::InconsistentKeys(InconsistentKeys::Unknown)) => {}
        Err(e) => bail!("checking the key {} against the certificate {}: {e}", files.key.display(), files.cert.display()),
    }
    Ok((certs, key))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = fs::read(path).with_context(|| format!("reading the TLS certificate {}", path.display()))?;
    rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<io::Result<Vec<_>>>()
        .with_context(|| format!("invalid PEM in the TLS certificate {}", path.display()))
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let pem = fs::read(path).with_context(|| format!("reading the TLS private key {}", path.display()))?;
    match rustls_pemfile::private_key(&mut pem.as_slice()) {
        Ok(Some(key)) => Ok(key),
        Ok(None) => bail!("no private key in {}", path.display()),
        Err(e) => Err(e).with_context(|| format!("invalid PEM in the TLS private key {}", path.display())),
    }
}

// ---- files ----

/// Writes a world-readable file (mode 0644) atomically (temp file + rename).
fn write_public(path: &Path, data: &[u8]) -> Result<()> {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".tmp{}", std::process::id()));
    let tmp = path.with_file_name(name);
    {
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o644)
            .open(&tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(data).with_context(|| format!("writing {}", tmp.display()))?;
        // The umask may have taken bits away; the certificate is public.
        f.set_permissions(fs::Permissions::from_mode(0o644))?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

fn remove_if_exists(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

/// The generated key is ours: put it back to 0600 if someone loosened it.
fn tighten_key_mode(path: &Path) -> Result<()> {
    let mode = fs::metadata(path).with_context(|| format!("reading {}", path.display()))?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "the CloudAPI private key is readable by others; setting mode 0600");
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).with_context(|| format!("setting the mode of {}", path.display()))?;
    }
    Ok(())
}

/// The operator's key is theirs to manage: only warn.
fn warn_if_key_readable_by_others(path: &Path) {
    if let Ok(meta) = fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "the CloudAPI private key is readable by others");
        }
    }
}

// ---- the listener ----

/// A TCP listener whose connections come out TLS-handshaken, for `axum::serve`.
///
/// A background task accepts TCP connections and runs each handshake in a task of its
/// own (bounded by [`HANDSHAKE_TIMEOUT`], at most [`MAX_HANDSHAKES`] at once: the oldest
/// makes room); finished handshakes are handed over through a channel. Accept errors
/// back off ([`nereid_serve::AcceptErrors`]). Dropping the listener stops the accept loop
/// and any handshakes in flight.
pub struct TlsListener {
    tcp: Arc<TcpListener>,
    accepted: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    accept_loop: JoinHandle<()>,
}

impl TlsListener {
    /// Starts accepting on `listener`. Must be called within a Tokio runtime.
    pub fn new(listener: TcpListener, config: Arc<rustls::ServerConfig>) -> Self {
        Self::with_handshake_timeout(listener, config, HANDSHAKE_TIMEOUT)
    }

    /// As [`TlsListener::new`], with another handshake timeout.
    pub fn with_handshake_timeout(listener: TcpListener, config: Arc<rustls::ServerConfig>, handshake_timeout: Duration) -> Self {
        let tcp = Arc::new(listener);
        let (tx, accepted) = mpsc::channel(ACCEPTED_QUEUE);
        let accept_loop = tokio::spawn(accept_loop(tcp.clone(), TlsAcceptor::from(config), tx, handshake_timeout));
        TlsListener { tcp, accepted, accept_loop }
    }

    /// The address the TCP listener is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        // Dropping the loop's JoinSet aborts the handshakes in flight too.
        self.accept_loop.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(conn) => conn,
            None => {
                // The loop only ends when this listener is dropped, so this means it panicked.
                tracing::error!("the CloudAPI TLS accept loop stopped; no more connections will be accepted");
                std::future::pending().await
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        TlsListener::local_addr(self)
    }
}

async fn accept_loop(
    tcp: Arc<TcpListener>,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
    handshake_timeout: Duration,
) {
    let mut handshakes = JoinSet::new();
    // Oldest first; finished ones are skipped when making room.
    let mut started = std::collections::VecDeque::<tokio::task::AbortHandle>::new();
    let mut errors = nereid_serve::AcceptErrors::new("CloudAPI");
    loop {
        tokio::select! {
            accepted = tcp.accept() => match accepted {
                Ok((stream, peer)) => {
                    errors.ok();
                    let _ = stream.set_nodelay(true);
                    started.retain(|h| !h.is_finished());
                    if started.len() >= MAX_HANDSHAKES
                        && let Some(oldest) = started.pop_front()
                    {
                        oldest.abort();
                    }
                    started.push_back(handshakes.spawn(handshake(acceptor.clone(), stream, peer, tx.clone(), handshake_timeout)));
                }
                Err(e) => errors.failed(e).await,
            },
            Some(done) = handshakes.join_next(), if !handshakes.is_empty() => {
                if let Err(e) = done
                    && e.is_panic()
                {
                    tracing::error!(error = %e, "a TLS handshake task panicked");
                }
            }
            () = tx.closed() => return,
        }
    }
}

async fn handshake(
    acceptor: TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    tx: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
    handshake_timeout: Duration,
) {
    match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => {
            // An error means the listener is gone, and the connection with it.
            let _ = tx.send((tls, peer)).await;
        }
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
        Err(_) => tracing::debug!(%peer, timeout = ?handshake_timeout, "TLS handshake timed out"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use axum::Router;
    use axum::routing::get;
    use rustls::pki_types::UnixTime;
    use rustls::{CertificateError, ClientConfig, RootCertStore};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::TlsConnector;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn parsed_cert(files: &TlsFiles) -> CertificateDer<'static> {
        read_certs(&files.cert).unwrap().remove(0)
    }

    #[test]
    fn generates_once_then_reuses() {
        let dir = tempfile::tempdir().unwrap();
        let files = ensure_certificate(dir.path(), None, None, &[]).unwrap();
        assert!(files.generated);
        assert_eq!(files.cert, dir.path().join(CERT_FILE));
        assert_eq!(files.key, dir.path().join(KEY_FILE));
        assert_eq!(mode(&files.key), 0o600);
        assert_eq!(mode(&files.cert), 0o644);
        // No temp files left behind.
        let mut entries: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        entries.sort();
        assert_eq!(entries, vec![CERT_FILE, KEY_FILE]);

        let fp = fingerprint(&files).unwrap();
        let again = ensure_certificate(dir.path(), None, None, &names(&["other.example"])).unwrap();
        assert_eq!(again, files);
        assert_eq!(fingerprint(&again).unwrap(), fp);

        // A loosened key goes back to 0600, still the same pair.
        fs::set_permissions(&files.key, fs::Permissions::from_mode(0o644)).unwrap();
        ensure_certificate(dir.path(), None, None, &[]).unwrap();
        assert_eq!(mode(&files.key), 0o600);
        assert_eq!(fingerprint(&files).unwrap(), fp);
    }

    #[test]
    fn generated_key_is_p256_and_matches() {
        let dir = tempfile::tempdir().unwrap();
        let files = ensure_certificate(dir.path(), None, None, &[]).unwrap();
        let key = KeyPair::from_pem(&fs::read_to_string(&files.key).unwrap()).unwrap();
        assert_eq!(key.algorithm(), &rcgen::PKCS_ECDSA_P256_SHA256);
        load(&files).unwrap();
        server_config(&files).unwrap();
    }

    #[test]
    fn generated_certificate_names_and_validity() {
        let dir = tempfile::tempdir().unwrap();
        let extra = names(&["Nereid.Example", "192.0.2.7", "0.0.0.0:8443", "[2001:db8::5]:8443", "api.nereid.example:443", ""]);
        let files = ensure_certificate(dir.path(), None, None, &extra).unwrap();
        let der = parsed_cert(&files);
        let cert = ParsedCertificate::try_from(&der).unwrap();
        for ok in ["localhost", "127.0.0.1", "::1", "nereid.example", "192.0.2.7", "2001:db8::5", "api.nereid.example"] {
            let name = ServerName::try_from(ok).unwrap();
            rustls::client::verify_server_name(&cert, &name).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in ["other.example", "0.0.0.0", "192.0.2.8"] {
            let name = ServerName::try_from(bad).unwrap();
            assert!(rustls::client::verify_server_name(&cert, &name).is_err(), "{bad} should not be named");
        }

        // Valid now and in 9 years, expired in 11, trusted as its own root.
        let mut roots = RootCertStore::empty();
        roots.add(der.clone()).unwrap();
        let algs = ring::default_provider().signature_verification_algorithms.all;
        let year = Duration::from_secs(365 * 24 * 3600);
        let at = |d: Duration| UnixTime::since_unix_epoch(Duration::from_secs(UnixTime::now().as_secs() + d.as_secs()));
        rustls::client::verify_server_cert_signed_by_trust_anchor(&cert, &roots, &[], at(Duration::ZERO), algs).unwrap();
        rustls::client::verify_server_cert_signed_by_trust_anchor(&cert, &roots, &[], at(year * 9), algs).unwrap();
        let err = rustls::client::verify_server_cert_signed_by_trust_anchor(&cert, &roots, &[], at(year * 11), algs).unwrap_err();
        assert!(
            matches!(err, TlsError::InvalidCertificate(CertificateError::Expired | CertificateError::ExpiredContext { .. })),
            "{err:?}"
        );
    }

    #[test]
    fn rejects_names_that_cannot_be_in_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let err = ensure_certificate(dir.path(), None, None, &names(&["not a host"])).unwrap_err().to_string();
        assert!(err.contains("\"not a host\" cannot be a certificate name"), "{err}");
        assert!(!dir.path().join(CERT_FILE).exists());
    }

    #[test]
    fn half_a_pair_is_regenerated() {
        let dir = tempfile::tempdir().unwrap();
        let files = ensure_certificate(dir.path(), None, None, &[]).unwrap();
        let fp = fingerprint(&files).unwrap();
        fs::remove_file(&files.key).unwrap();
        let again = ensure_certificate(dir.path(), None, None, &[]).unwrap();
        assert_ne!(fingerprint(&again).unwrap(), fp);
        load(&again).unwrap();
        assert_eq!(mode(&again.key), 0o600);

        let fp = fingerprint(&again).unwrap();
        fs::remove_file(&files.cert).unwrap();
        let third = ensure_certificate(dir.path(), None, None, &[]).unwrap();
        assert_ne!(fingerprint(&third).unwrap(), fp);
        load(&third).unwrap();
    }

    #[test]
    fn broken_generated_pair_is_an_error_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let files = ensure_certificate(dir.path(), None, None, &[]).unwrap();
        fs::write(&files.cert, "garbage\n").unwrap();
        let err = format!("{:#}", ensure_certificate(dir.path(), None, None, &[]).unwrap_err());
        assert!(err.contains("no PEM certificate in"), "{err}");
        assert!(err.contains(&format!("delete {}", files.cert.display())), "{err}");
        assert_eq!(fs::read_to_string(&files.cert).unwrap(), "garbage\n");
    }

    #[test]
    fn operator_files_are_used() {
        let theirs = tempfile::tempdir().unwrap();
        let made = ensure_certificate(theirs.path(), None, None, &[]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let files = ensure_certificate(dir.path(), Some(&made.cert), Some(&made.key), &[]).unwrap();
        assert_eq!(files, TlsFiles { cert: made.cert.clone(), key: made.key.clone(), generated: false });
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0, "nothing generated");
        assert_eq!(fingerprint(&files).unwrap(), fingerprint(&made).unwrap());
        server_config(&files).unwrap();
    }

    #[test]
    fn operator_files_errors() {
        let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let a = ensure_certificate(dir_a.path(), None, None, &[]).unwrap();
        let b = ensure_certificate(dir_b.path(), None, None, &[]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let err_of = |cert: Option<&Path>, key: Option<&Path>| format!("{:#}", ensure_certificate(dir.path(), cert, key, &[]).unwrap_err());

        let err = err_of(Some(&a.cert), None);
        assert!(err.contains("without its private key") && err.contains(&a.cert.display().to_string()), "{err}");
        let err = err_of(None, Some(&a.key));
        assert!(err.contains("without its certificate") && err.contains(&a.key.display().to_string()), "{err}");

        let err = err_of(Some(&a.cert), Some(&b.key));
        assert!(err.contains("the key does not match the certificate"), "{err}");
        assert!(err.contains(&b.key.display().to_string()) && err.contains(&a.cert.display().to_string()), "{err}");

        let err = err_of(Some(&a.key), Some(&a.key));
        assert_eq!(err, format!("no PEM certificate in {}", a.key.display()));
        let err = err_of(Some(&a.cert), Some(&a.cert));
        assert_eq!(err, format!("no private key in {}", a.cert.display()));

        let missing = dir.path().join("nope.pem");
        let err = err_of(Some(&missing), Some(&a.key));
        assert!(err.contains(&format!("reading the TLS certificate {}", missing.display())), "{err}");
        let err = err_of(Some(&a.cert), Some(&missing));
        assert!(err.contains(&format!("reading the TLS private key {}", missing.display())), "{err}");

        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0, "nothing generated on errors");
    }

    /// Made with `openssl req -x509 -newkey ec …`; the fingerprint is what
    /// `openssl x509 -noout -fingerprint -sha256` printed for it.
    const FIXTURE_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBkDCCATagAwIBAgITO2hc72prMP3fcm4NI6EtUO2n/DAKBggqhkjOPQQDAjAe
MRwwGgYDVQQDDBNmaW5nZXJwcmludCBmaXh0dXJlMB4XDTI2MTEyNTIxMDMyN1oX
DTM2MTEyMjIxMDMyN1owHjEcMBoGA1UEAwwTZmluZ2VycHJpbnQgZml4dHVyZTBZ
MBMGByqGSM49AgEGCCqGSM49AwEHA0IABB5TLu9z8/sXlxy2B4i1wbRhrByxbO2F
N1NqibZWSQtu4hGkCE6hxYqPEiCN6fms3B3nONUTbBwei73Xv31P/4CjUzBRMB0G
A1UdDgQWBBQWbdQUssqLrbxhbs/npCnfhAGvsTAfBgNVHSMEGDAWgBQWbdQUssqL
rbxhbs/npCnfhAGvsTAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0gAMEUC
IQDV6gJkMemfDhZSqjH7UNlpicHtXX+rP4RR7wHhEwA0aQIgHhjQ/R1rB6t47nwV
DrC7AgWhiEEHMIBr6yfOHWekYQw=
-----END CERTIFICATE-----
";
    const FIXTURE_FINGERPRINT: &str = "07:C8:B2:FB:A0:38:C8:0D:D4:CD:C2:37:C7:9E:5F:08:EC:0C:8F:89:D9:DB:BC:33:47:CF:53:7C:67:17:8D:0C";

    #[test]
    fn fingerprint_matches_openssl() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("c.pem");
        fs::write(&cert, FIXTURE_CERT).unwrap();
        let files = TlsFiles { cert, key: dir.path().join("unused.pem"), generated: false };
        assert_eq!(fingerprint(&files).unwrap(), FIXTURE_FINGERPRINT);
    }

    // ---- end to end ----

    struct Server {
        addr: SocketAddr,
        files: TlsFiles,
        _dir: tempfile::TempDir,
        task: tokio::task::JoinHandle<io::Result<()>>,
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn start_server(extra_names: &[&str], handshake_timeout: Duration) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let files = ensure_certificate(dir.path(), None, None, &names(extra_names)).unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let listener = TlsListener::with_handshake_timeout(tcp, server_config(&files).unwrap(), handshake_timeout);
        let addr = listener.local_addr().unwrap();
        let router = Router::new().route("/--ping", get(|| async { "pong" }));
        let task = tokio::spawn(async move { axum::serve(listener, router).await });
        Server { addr, files, _dir: dir, task }
    }

    fn client_config(trusted: Option<&TlsFiles>) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        if let Some(files) = trusted {
            for cert in read_certs(&files.cert).unwrap() {
                roots.add(cert).unwrap();
            }
        }
        let mut config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }

    /// GET /--ping over TLS; the raw response.
    async fn ping(addr: SocketAddr, config: Arc<ClientConfig>, server_name: &str) -> io::Result<String> {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from(server_name.to_string()).map_err(io::Error::other)?;
        let mut tls = TlsConnector::from(config).connect(name, tcp).await?;
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        tls.write_all(b"GET /--ping HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await?;
        let mut response = Vec::new();
        tls.read_to_end(&mut response).await?;
        Ok(String::from_utf8_lossy(&response).into_owned())
    }

    fn assert_pong(response: &str) {
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert!(response.ends_with("\r\n\r\npong"), "{response}");
    }

    async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(5), f).await.unwrap_or_else(|_| panic!("{what} took too long"))
    }

    #[tokio::test]
    async fn serves_axum_over_tls() {
        let server = start_server(&["nereid.example"], HANDSHAKE_TIMEOUT).await;
        let trusting = client_config(Some(&server.files));
        for name in ["localhost", "127.0.0.1", "nereid.example"] {
            assert_pong(&within("ping", ping(server.addr, trusting.clone(), name)).await.unwrap());
        }
        let err = within("ping", ping(server.addr, trusting.clone(), "other.example")).await.unwrap_err();
        let tls_err = err.get_ref().and_then(|e| e.downcast_ref::<TlsError>());
        assert!(
            matches!(
                tls_err,
                Some(TlsError::InvalidCertificate(CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }))
            ),
            "{err:?}"
        );
        assert_pong(&within("ping", ping(server.addr, trusting, "localhost")).await.unwrap());
    }

    #[tokio::test]
    async fn silent_client_does_not_block_others() {
        let server = start_server(&[], HANDSHAKE_TIMEOUT).await;
        let trusting = client_config(Some(&server.files));
        let mut silent = TcpStream::connect(server.addr).await.unwrap();
        let mut half = TcpStream::connect(server.addr).await.unwrap();
        half.write_all(&[0x16, 0x03, 0x01, 0x00]).await.unwrap(); // the start of a ClientHello, then nothing
        for _ in 0..3 {
            assert_pong(&within("ping next to a silent client", ping(server.addr, trusting.clone(), "localhost")).await.unwrap());
        }
        // Both are still waiting on their handshakes, not closed.
        let mut buf = [0u8; 1];
        assert!(tokio::time::timeout(Duration::from_millis(100), silent.read(&mut buf)).await.is_err());
        assert!(tokio::time::timeout(Duration::from_millis(100), half.read(&mut buf)).await.is_err());
    }

    #[tokio::test]
    async fn handshakes_time_out() {
        let server = start_server(&[], Duration::from_millis(300)).await;
        let mut silent = TcpStream::connect(server.addr).await.unwrap();
        let mut buf = [0u8; 1];
        let read = within("the server dropping a silent client", silent.read(&mut buf)).await;
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        assert_pong(&within("ping", ping(server.addr, client_config(Some(&server.files)), "localhost")).await.unwrap());
    }

    #[tokio::test]
    async fn untrusting_client_fails_and_server_keeps_serving() {
        let server = start_server(&[], HANDSHAKE_TIMEOUT).await;
        let err = within("untrusting ping", ping(server.addr, client_config(None), "localhost")).await.unwrap_err();
        let tls_err = err.get_ref().and_then(|e| e.downcast_ref::<TlsError>());
        assert!(matches!(tls_err, Some(TlsError::InvalidCertificate(CertificateError::UnknownIssuer))), "{err:?}");

        // Trusting some other certificate is no better.
        let other_dir = tempfile::tempdir().unwrap();
        let other = ensure_certificate(other_dir.path(), None, None, &[]).unwrap();
        let err = within("ping trusting another cert", ping(server.addr, client_config(Some(&other)), "localhost")).await.unwrap_err();
        let tls_err = err.get_ref().and_then(|e| e.downcast_ref::<TlsError>());
        assert!(matches!(tls_err, Some(TlsError::InvalidCertificate(_))), "{err:?}");

        assert_pong(&within("ping after failures", ping(server.addr, client_config(Some(&server.files)), "localhost")).await.unwrap());
    }
}
