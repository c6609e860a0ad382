//! rustls configs for both ends of both directions, and a server certificate slot that
//! renewal swaps without restarting the listener.

use std::sync::{Arc, RwLock};

use anyhow::{Context, Result};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig};

use crate::provider;

/// A certificate chain and its key.
pub fn certified(cert_pem: &str, key: PrivateKeyDer<'static>) -> Result<Arc<CertifiedKey>> {
    let cert = crate::ca::cert_der_from_pem(cert_pem)?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key).context("the private key is not usable")?;
    Ok(Arc::new(CertifiedKey::new(vec![cert], signer)))
}

/// The certificate a listener serves; [`CertSlot::set`] swaps it for the next handshakes.
#[derive(Debug)]
pub struct CertSlot(RwLock<Arc<CertifiedKey>>);

impl CertSlot {
    pub fn new(ck: Arc<CertifiedKey>) -> Arc<Self> {
        Arc::new(CertSlot(RwLock::new(ck)))
    }
    pub fn set(&self, ck: Arc<CertifiedKey>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = ck;
    }
}

impl ResolvesServerCert for CertSlot {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

/// A TLS server (HTTP/1.1) with this client verifier.
pub fn server(slot: Arc<CertSlot>, clients: Arc<dyn rustls::server::danger::ClientCertVerifier>) -> Result<Arc<ServerConfig>> {
    let mut c = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_client_cert_verifier(clients)
        .with_cert_resolver(slot);
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(c))
}

/// A TLS client (HTTP/1.1) with this server verifier and, if given, a client certificate.
pub fn client(
    verifier: Arc<dyn rustls::client::danger::ServerCertVerifier>,
    identity: Option<(&str, PrivateKeyDer<'static>)>,
) -> Result<ClientConfig> {
    let b = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut c = match identity {
        Some((cert_pem, key)) => {
            let cert: Vec<CertificateDer<'static>> = vec![crate::ca::cert_der_from_pem(cert_pem)?];
            b.with_client_auth_cert(cert, key).context("the client certificate and key")?
        }
        None => b.with_no_client_auth(),
    };
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(c)
}
