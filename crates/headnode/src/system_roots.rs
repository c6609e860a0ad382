//! The host's CA roots for the headnode's outgoing HTTPS (image sources, the ACME
//! directory): the first readable bundle of `SSL_CERT_FILE` and the usual distribution
//! paths, so the operator's own added roots count as they do for curl.

/// Bundles looked for, in order (the first readable one is used).
const BUNDLES: [&str; 3] = ["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem"];

/// `b` trusting the host's CA roots (none added when no bundle can be read).
pub fn with_system_roots(mut b: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
    let env = std::env::var("SSL_CERT_FILE").ok().filter(|p| !p.is_empty());
    if let Some(pem) = env.iter().map(String::as_str).chain(BUNDLES).find_map(|p| std::fs::read(p).ok()) {
        for cert in reqwest::Certificate::from_pem_bundle(&pem).unwrap_or_default() {
            b = b.add_root_certificate(cert);
        }
    }
    b
}
