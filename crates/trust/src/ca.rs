//! The headnode CA and the keys and certificates it issues.
//!
//! The CA (ECDSA P-256, 20 years) is one per cluster, kept in the store; it is
//! reconstructed from its key as an issuer (its distinguished name and key identifier
//! are fixed, so certificates issued by any headnode chain to the one stored certificate).
//! Nodes' keys are ECDSA P-256 too; the CA signs a node's public key without ever seeing
//! its private key.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType, SerialNumber, SignatureAlgorithm,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use uuid::Uuid;

use crate::{AGENT_NAME, HEADNODE_NAME, sha256_hex};

/// The CA's common name (fixed: it is part of what issued certificates chain to).
const CA_COMMON_NAME: &str = "Nereid agent CA";
/// How long the CA is valid.
const CA_VALIDITY: time::Duration = time::Duration::days(20 * 365);
/// The DER prefix of an ECDSA P-256 SubjectPublicKeyInfo with an uncompressed point.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01,
    0x07, 0x03, 0x42, 0x00,
];

/// What a certificate is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// A headnode: its agent listener and its calls to agents.
    Headnode,
    /// A compute node's agent, for the server with this UUID.
    Server(Uuid),
}

fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    dn.push(DnType::OrganizationName, "Nereid");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + CA_VALIDITY;
    p
}

/// A cluster's CA: its certificate as stored, and the key that issues.
pub struct Ca {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: rcgen::Certificate,
    key: KeyPair,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").field("fingerprint", &self.fingerprint()).finish()
    }
}

impl Ca {
    /// A new CA: `(certificate PEM, private key PEM)`.
    pub fn generate() -> Result<(String, String)> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).context("generating the CA key")?;
        let cert = ca_params().self_signed(&key).context("making the CA certificate")?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// The CA from its stored certificate and key (checked to belong together).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca> {
        let key = KeyPair::from_pem(key_pem).context("the CA key is not a PEM private key")?;
        let cert_der = cert_der_from_pem(cert_pem)?;
        if spki_of(&cert_der)? != key.public_key_der() {
            bail!("the CA certificate and the CA key do not belong together");
        }
        let issuer = ca_params().self_signed(&key).context("preparing the CA as an issuer")?;
        Ok(Ca { cert_pem: cert_pem.to_string(), cert_der, issuer, key })
    }

    /// The CA certificate (PEM), as agents pin it.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.cert_der.clone()
    }

    /// SHA-256 of the CA certificate (DER), lower-case hex: what a full join token carries.
    pub fn fingerprint(&self) -> String {
        sha256_hex(&self.cert_der)
    }

    /// A certificate for the ECDSA P-256 public key `spki_der` (a DER SubjectPublicKeyInfo)
    /// in `role`, valid for `validity` from an hour ago (clock skew). Returns its PEM.
    pub fn issue(&self, spki_der: &[u8], role: &Role, validity: Duration) -> Result<String> {
        let public = ForeignKey::from_spki(spki_der)?;
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        let (cn, sans) = match role {
            Role::Headnode => ("headnode".to_string(), vec![HEADNODE_NAME.to_string()]),
            Role::Server(u) => (format!("server {u}"), vec![AGENT_NAME.to_string(), format!("{u}.server.nereid")]),
        };
        dn.push(DnType::CommonName, cn);
        p.distinguished_name = dn;
        p.subject_alt_names =
            sans.into_iter().map(|n| Ok(SanType::DnsName(n.try_into().context("a certificate name")?))).collect::<Result<_>>()?;
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        p.serial_number = Some(SerialNumber::from_slice(&rand::random::<[u8; 16]>()));
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::hours(1);
        p.not_after = now + time::Duration::try_from(validity).context("certificate validity")?;
        let cert = p.signed_by(&public, &self.issuer, &self.key).context("signing the certificate")?;
        Ok(cert.pem())
    }
}

/// A public key the CA signs (an ECDSA P-256 point).
struct ForeignKey {
    raw: Vec<u8>,
}

impl ForeignKey {
    fn from_spki(spki: &[u8]) -> Result<Self> {
        check_p256_spki(spki)?;
        Ok(ForeignKey { raw: spki[P256_SPKI_PREFIX.len()..].to_vec() })
    }
}

impl PublicKeyData for ForeignKey {
    fn der_bytes(&self) -> &[u8] {
        &self.raw
    }
    fn algorithm(&self) -> &SignatureAlgorithm {
        &PKCS_ECDSA_P256_SHA256
    }
}

/// Whether `spki` is an ECDSA P-256 public key (uncompressed point) as DER SubjectPublicKeyInfo.
pub fn check_p256_spki(spki: &[u8]) -> Result<()> {
    if spki.len() != P256_SPKI_PREFIX.len() + 65 || !spki.starts_with(&P256_SPKI_PREFIX) || spki[P256_SPKI_PREFIX.len()] != 0x04 {
        bail!("the public key must be an ECDSA P-256 key as a DER SubjectPublicKeyInfo ({} bytes given)", spki.len());
    }
    Ok(())
}

/// The SubjectPublicKeyInfo (DER) of a certificate.
pub fn spki_of(cert: &CertificateDer<'_>) -> Result<Vec<u8>> {
    let ee = webpki::EndEntityCert::try_from(cert).map_err(|e| anyhow::anyhow!("not a valid certificate: {e:?}"))?;
    Ok(ee.subject_public_key_info().as_ref().to_vec())
}

/// The key pin of a certificate: SHA-256 (hex) of its SubjectPublicKeyInfo.
pub fn key_pin(cert: &CertificateDer<'_>) -> Result<String> {
    Ok(sha256_hex(&spki_of(cert)?))
}

/// The first certificate of a PEM text.
pub fn cert_der_from_pem(pem: &str) -> Result<CertificateDer<'static>> {
    let mut r = std::io::BufReader::new(pem.as_bytes());
    match rustls_pemfile::certs(&mut r).next() {
        Some(c) => c.context("the certificate PEM does not parse"),
        None => bail!("no PEM certificate found"),
    }
}

/// A node's own key pair (a headnode's, or an agent's), made where it is used.
pub struct NodeKey {
    pair: KeyPair,
}

impl NodeKey {
    pub fn generate() -> Result<NodeKey> {
        Ok(NodeKey { pair: KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).context("generating a key")? })
    }

    pub fn from_pem(pem: &str) -> Result<NodeKey> {
        let pair = KeyPair::from_pem(pem).context("the key is not a PEM private key")?;
        check_p256_spki(&pair.public_key_der())?;
        Ok(NodeKey { pair })
    }

    pub fn pem(&self) -> String {
        self.pair.serialize_pem()
    }

    /// The public half as DER SubjectPublicKeyInfo: what is sent to be certified.
    pub fn spki_der(&self) -> Vec<u8> {
        self.pair.public_key_der()
    }

    /// SHA-256 (hex) of the public key: what the headnode pins.
    pub fn pin(&self) -> String {
        sha256_hex(&self.spki_der())
    }

    pub fn private_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.pair.serialize_der()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_pin_the_node_key() {
        let (cert, key) = Ca::generate().unwrap();
        let ca = Ca::from_pem(&cert, &key).unwrap();
        let again = Ca::from_pem(&cert, &key).unwrap();
        assert_eq!(ca.fingerprint(), again.fingerprint());
        let node = NodeKey::generate().unwrap();
        let u = Uuid::new_v4();
        let pem = again.issue(&node.spki_der(), &Role::Server(u), Duration::from_secs(3600)).unwrap();
        let der = cert_der_from_pem(&pem).unwrap();
        assert_eq!(key_pin(&der).unwrap(), node.pin(), "the pin is the node's key, whichever certificate carries it");
        let (_, other_key) = Ca::generate().unwrap();
        assert!(Ca::from_pem(&cert, &other_key).is_err(), "a key that is not the CA's is refused");
        assert!(ca.issue(b"not a key", &Role::Headnode, Duration::from_secs(60)).is_err());
    }
}
