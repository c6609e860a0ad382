//! The agent's side of the trust boundary: its key, the CA it pinned and the certificates
//! its servers were issued, all under `DATA/tls/` (directory 0700, files 0600).
//!
//! ```text
//!   DATA/tls/agent-key.pem           the agent's ECDSA P-256 key, made here at first start;
//!                                    only its public half is ever sent (one key per agent
//!                                    process: every server it runs is certified for it)
//!   DATA/tls/ca.pem                  the headnode CA, pinned at first contact
//!   DATA/tls/server-<uuid>.json      the server's certificate and when it expires
//! ```
//! The headnode is reached over TLS verified against the pinned CA (the certificate must
//! name `headnode.nereid`), with a server certificate as the client certificate; the
//! agent's own API serves a server certificate and accepts only CA-issued headnode
//! certificates.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use anyhow::{Context, Result};
use nereid_trust::NodeKey;
use nereid_trust::configs::CertSlot;
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

const KEY_FILE: &str = "agent-key.pem";
const CA_FILE: &str = "ca.pem";

/// A server's certificate as issued.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerCert {
    pub certificate: String,
    /// Unix seconds.
    pub not_after: i64,
    /// Unix seconds, when it was received.
    #[serde(default)]
    pub received: i64,
}

impl ServerCert {
    /// Whether to renew now: less than a third of its life left (pure).
    pub fn needs_renewal(&self, now: i64) -> bool {
        let life = (self.not_after - self.received).max(1);
        self.not_after - now < life / 3
    }
}

/// The agent's key, pinned CA and servers' certificates.
pub struct Credentials {
    dir: PathBuf,
    key: NodeKey,
    ca: RwLock<Option<(String, CertificateDer<'static>)>>,
    certs: RwLock<BTreeMap<Uuid, ServerCert>>,
    /// Bumped whenever the CA or a certificate changes (clients are rebuilt).
    version: AtomicU64,
    /// What the agent API serves, once there is a certificate.
    slot: RwLock<Option<Arc<CertSlot>>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("dir", &self.dir).field("key", &self.key.pin()).finish_non_exhaustive()
    }
}

/// Makes `dir` with mode 0700 (tightening an existing one).
pub fn private_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).with_context(|| format!("chmod 0700 {}", dir.display()))
}

/// Writes a file mode 0600 (durably: temporary file, fsync, rename).
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    if let Some(parent) = path.parent()
        && let Ok(d) = std::fs::File::open(parent)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

impl Credentials {
    /// Loads `DATA/tls`, making the directory and the key at first start.
    pub fn open(data_dir: &Path) -> Result<Arc<Credentials>> {
        let dir = data_dir.join("tls");
        private_dir(&dir)?;
        let key_path = dir.join(KEY_FILE);
        let key = match std::fs::read_to_string(&key_path) {
            Ok(pem) => {
                std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600))?;
                NodeKey::from_pem(&pem)
                    .with_context(|| format!("{} is damaged; remove it (the server then needs approval)", key_path.display()))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let k = NodeKey::generate()?;
                write_private(&key_path, k.pem().as_bytes())?;
                tracing::info!(key = %key_path.display(), "made this agent's key");
                k
            }
            Err(e) => return Err(anyhow::Error::new(e).context(format!("reading {}", key_path.display()))),
        };
        let ca = match std::fs::read_to_string(dir.join(CA_FILE)) {
            Ok(pem) => Some((pem.clone(), nereid_trust::ca::cert_der_from_pem(&pem).context("the pinned CA (tls/ca.pem) is damaged")?)),
            Err(_) => None,
        };
        let mut certs = BTreeMap::new();
        for e in std::fs::read_dir(&dir)?.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let Some(u) = name.strip_prefix("server-").and_then(|n| n.strip_suffix(".json")).and_then(|u| Uuid::parse_str(u).ok()) else {
                continue;
            };
            if let Ok(c) = std::fs::read(e.path()).map_err(anyhow::Error::from).and_then(|b| Ok(serde_json::from_slice::<ServerCert>(&b)?))
            {
                certs.insert(u, c);
            }
        }
        Ok(Arc::new(Credentials {
            dir,
            key,
            ca: RwLock::new(ca),
            certs: RwLock::new(certs),
            version: AtomicU64::new(1),
            slot: RwLock::new(None),
        }))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn key(&self) -> &NodeKey {
        &self.key
    }

    /// The public key to be certified, base64 DER.
    pub fn public_key_b64(&self) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(self.key.spki_der())
    }

    pub fn version(&self) -> u64 {
        self.version.load(Ordering::SeqCst)
    }

    /// The pinned CA (DER), if any.
    pub fn ca(&self) -> Option<CertificateDer<'static>> {
        self.ca.read().unwrap_or_else(|p| p.into_inner()).as_ref().map(|(_, d)| d.clone())
    }

    /// Pins the CA (at first contact). Certificates of another CA (a rotated one) are
    /// dropped: the server joins again with the same key, which the headnode still pins.
    pub fn pin_ca(&self, pem: &str) -> Result<()> {
        let der = nereid_trust::ca::cert_der_from_pem(pem)?;
        let mut certs = self.certs.write().unwrap_or_else(|p| p.into_inner());
        if !certs.is_empty() {
            tracing::warn!("a new headnode CA: this agent's certificates from the previous one are dropped");
            for u in certs.keys() {
                let _ = std::fs::remove_file(self.dir.join(format!("server-{u}.json")));
            }
            certs.clear();
        }
        drop(certs);
        write_private(&self.dir.join(CA_FILE), pem.as_bytes())?;
        *self.ca.write().unwrap_or_else(|p| p.into_inner()) = Some((pem.to_string(), der));
        self.version.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    pub fn cert(&self, server: Uuid) -> Option<ServerCert> {
        self.certs.read().unwrap_or_else(|p| p.into_inner()).get(&server).cloned()
    }

    /// Keeps a server's new certificate (and serves it on the agent API from now on).
    pub fn set_cert(&self, server: Uuid, certificate: &str, not_after: i64) -> Result<()> {
        let c = ServerCert { certificate: certificate.to_string(), not_after, received: now() };
        // Checked before it replaces anything.
        let ck = nereid_trust::configs::certified(certificate, self.key.private_der())?;
        write_private(&self.dir.join(format!("server-{server}.json")), &serde_json::to_vec_pretty(&c)?)?;
        self.certs.write().unwrap_or_else(|p| p.into_inner()).insert(server, c);
        if let Some(slot) = self.slot.read().unwrap_or_else(|p| p.into_inner()).as_ref() {
            slot.set(ck);
        }
        self.version.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// A certificate to present to the headnode: any of this agent's (they all carry its key).
    pub fn client_cert(&self) -> Option<String> {
        self.certs.read().unwrap_or_else(|p| p.into_inner()).values().next().map(|c| c.certificate.clone())
    }

    /// A TLS config for calls to the headnode: the pinned CA, and with `with_cert` this
    /// agent's certificate as the client's. `None` before the CA is pinned.
    pub fn headnode_tls(&self, with_cert: bool) -> Result<Option<rustls::ClientConfig>> {
        let Some(ca) = self.ca() else { return Ok(None) };
        let verifier = nereid_trust::verify::RoleServer::new(&ca, nereid_trust::HEADNODE_NAME, None)?;
        let cert = if with_cert { self.client_cert() } else { None };
        let identity = cert.as_deref().map(|c| (c, self.key.private_der()));
        Ok(Some(nereid_trust::configs::client(verifier, identity)?))
    }

    /// The agent API's TLS config: a server certificate of this agent, and only
    /// headnodes' client certificates from the pinned CA.
    pub fn api_tls(&self) -> Result<Arc<rustls::ServerConfig>> {
        let ca = self.ca().context("no CA pinned yet")?;
        let cert = self.client_cert().context("no certificate yet")?;
        let slot = CertSlot::new(nereid_trust::configs::certified(&cert, self.key.private_der())?);
        *self.slot.write().unwrap_or_else(|p| p.into_inner()) = Some(slot.clone());
        nereid_trust::configs::server(slot, nereid_trust::verify::RoleClient::headnodes(&ca)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_are_private() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("tls")).unwrap();
        std::fs::set_permissions(d.path().join("tls"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let c = Credentials::open(d.path()).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&d.path().join("tls")), 0o700, "an existing directory is tightened");
        assert_eq!(mode(&d.path().join("tls/agent-key.pem")), 0o600);
        let again = Credentials::open(d.path()).unwrap();
        assert_eq!(c.key().pin(), again.key().pin(), "the key is kept across starts");
        let (ca_pem, ca_key) = nereid_trust::Ca::generate().unwrap();
        let ca = nereid_trust::Ca::from_pem(&ca_pem, &ca_key).unwrap();
        c.pin_ca(ca.cert_pem()).unwrap();
        let u = Uuid::new_v4();
        let cert = ca.issue(&c.key().spki_der(), &nereid_trust::Role::Server(u), std::time::Duration::from_secs(60)).unwrap();
        c.set_cert(u, &cert, now() + 60).unwrap();
        for f in ["tls/ca.pem", &format!("tls/server-{u}.json")] {
            assert_eq!(mode(&d.path().join(f)), 0o600, "{f}");
        }
        let again = Credentials::open(d.path()).unwrap();
        assert_eq!(again.cert(u).unwrap().certificate, cert);
        assert!(again.ca().is_some() && again.api_tls().is_ok() && again.headnode_tls(true).unwrap().is_some());
    }

    #[test]
    fn renewal_when_a_third_is_left() {
        let c = ServerCert { certificate: String::new(), received: 0, not_after: 300 };
        assert!(!c.needs_renewal(150));
        assert!(c.needs_renewal(201));
        assert!(c.needs_renewal(400));
    }
}
