//! Certificate verifiers: the CA plus a role name, and for agents the pinned key.
//!
//! Host names in URLs play no part: a headnode is whoever holds a CA-issued
//! `headnode.nereid` certificate, a server's agent whoever holds the pinned key in a
//! CA-issued `agent.nereid` certificate.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, Error, RootCertStore, SignatureScheme};

use crate::{HEADNODE_NAME, provider};

fn roots(ca: &CertificateDer<'static>) -> Result<Arc<RootCertStore>, Error> {
    let mut r = RootCertStore::empty();
    r.add(ca.clone())?;
    Ok(Arc::new(r))
}

fn name(n: &str) -> Result<ServerName<'static>, Error> {
    ServerName::try_from(n.to_string()).map_err(|_| Error::General(format!("{n} is not a certificate name")))
}

/// A server certificate issued by the CA for `name`, and when `pin` is set, carrying
/// exactly that key (SHA-256 hex of its SubjectPublicKeyInfo).
#[derive(Debug)]
pub struct RoleServer {
    inner: Arc<WebPkiServerVerifier>,
    name: ServerName<'static>,
    pin: Option<String>,
}

impl RoleServer {
    pub fn new(ca: &CertificateDer<'static>, role_name: &str, pin: Option<String>) -> Result<Arc<Self>, Error> {
        let inner = WebPkiServerVerifier::builder_with_provider(roots(ca)?, provider())
            .build()
            .map_err(|e| Error::General(format!("building the verifier: {e}")))?;
        Ok(Arc::new(RoleServer { inner, name: name(role_name)?, pin }))
    }
}

impl ServerCertVerifier for RoleServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        self.inner.verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)?;
        if let Some(pin) = &self.pin {
            let got = crate::ca::key_pin(end_entity).map_err(|e| Error::General(e.to_string()))?;
            if &got != pin {
                return Err(Error::General(format!("the peer's key is not the one pinned for it ({got} is not {pin})")));
            }
        }
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(m, c, d)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(m, c, d)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Accepts any server certificate: only for fetching the CA certificate at first
/// contact, which is then checked against the join token (never for anything secret).
#[derive(Debug)]
pub struct Unverified;

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &provider().signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &provider().signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider().signature_verification_algorithms.supported_schemes()
    }
}

/// Client certificates issued by the CA; `mandatory` or not; with `role_name`, only
/// certificates for that role (agents accept only headnodes).
#[derive(Debug)]
pub struct RoleClient {
    inner: Arc<dyn ClientCertVerifier>,
    role: Option<ServerName<'static>>,
}

impl RoleClient {
    pub fn new(ca: &CertificateDer<'static>, mandatory: bool, role_name: Option<&str>) -> Result<Arc<Self>, Error> {
        let b = WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider());
        let b = if mandatory { b } else { b.allow_unauthenticated() };
        let inner = b.build().map_err(|e| Error::General(format!("building the client verifier: {e}")))?;
        Ok(Arc::new(RoleClient { inner, role: role_name.map(name).transpose()? }))
    }

    /// Agents' API: only headnodes, always with a certificate.
    pub fn headnodes(ca: &CertificateDer<'static>) -> Result<Arc<Self>, Error> {
        Self::new(ca, true, Some(HEADNODE_NAME))
    }
}

impl ClientCertVerifier for RoleClient {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.inner.verify_client_cert(end_entity, intermediates, now)?;
        if let Some(role) = &self.role {
            let ee = webpki::EndEntityCert::try_from(end_entity).map_err(|e| Error::General(format!("{e:?}")))?;
            ee.verify_is_valid_for_subject_name(role)
                .map_err(|_| Error::General(format!("the client certificate is not a {role:?} certificate")))?;
        }
        Ok(ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(m, c, d)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(m, c, d)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
