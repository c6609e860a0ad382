//! Join tokens and how an agent pins the CA at first contact.
//!
//! A full join token is `SECRET:sha256:CAHASH` (kubeadm's discovery-token-ca-cert-hash):
//! the agent accepts only a CA certificate with that SHA-256. A bare `SECRET` (the
//! headnode's `join.token`) works too: the headnode answers its CA certificate with an
//! HMAC-SHA256 over it keyed by the SHA-256 of each join token of the cluster, and the
//! agent accepts the CA only if one of them is keyed by its own token — only a headnode
//! that knows the token can make it. Either way the token itself is sent only over TLS
//! verified against the pinned CA.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// A join token as given to the agent.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub secret: String,
    /// SHA-256 (lower-case hex) of the CA certificate, when the token carries it.
    pub ca_hash: Option<String>,
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinToken").field("ca_hash", &self.ca_hash).finish_non_exhaustive()
    }
}

impl JoinToken {
    /// Parses `SECRET` or `SECRET:sha256:HEX`.
    pub fn parse(s: &str) -> Result<JoinToken, String> {
        let s = s.trim();
        let (secret, ca_hash) = match s.split_once(":sha256:") {
            Some((sec, h)) => {
                let h = h.trim().to_ascii_lowercase();
                if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err("the join token's CA hash (after \":sha256:\") must be 64 hex digits".into());
                }
                (sec, Some(h))
            }
            None => (s, None),
        };
        if secret.is_empty() || secret.contains(char::is_whitespace) || secret.contains(':') {
            return Err("the join token is empty or malformed (expected SECRET or SECRET:sha256:CAHASH)".into());
        }
        Ok(JoinToken { secret: secret.to_string(), ca_hash })
    }

    /// The full token for a secret and a CA fingerprint.
    pub fn full(secret: &str, ca_fingerprint: &str) -> String {
        format!("{secret}:sha256:{ca_fingerprint}")
    }

    /// SHA-256 (hex) of the secret: what the store keeps and the proof's key.
    pub fn secret_hash(&self) -> String {
        crate::sha256_hex(self.secret.as_bytes())
    }

    /// Whether `ca_der` is the CA this token trusts: by its hash, or by one of `proofs`.
    pub fn accepts(&self, ca_der: &[u8], proofs: &[String]) -> bool {
        match &self.ca_hash {
            Some(h) => constant_eq(crate::sha256_hex(ca_der).as_bytes(), h.as_bytes()),
            None => {
                let want = proof(&self.secret_hash(), ca_der);
                proofs.iter().any(|p| constant_eq(p.as_bytes(), want.as_bytes()))
            }
        }
    }
}

/// HMAC-SHA256 (hex) of the CA certificate keyed by a join token's SHA-256 (hex).
pub fn proof(token_hash: &str, ca_der: &[u8]) -> String {
    // HMAC takes keys of any length.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(token_hash.as_bytes()) else { return String::new() };
    mac.update(ca_der);
    hex::encode(mac.finalize().into_bytes())
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_pin_the_ca() {
        let ca = b"the CA certificate";
        let bare = JoinToken::parse(" abc123 \n").unwrap();
        assert_eq!((bare.secret.as_str(), bare.ca_hash.as_deref()), ("abc123", None));
        let full = JoinToken::parse(&JoinToken::full("abc123", &crate::sha256_hex(ca))).unwrap();
        assert!(full.accepts(ca, &[]));
        assert!(!full.accepts(b"another CA", &[]), "the hash pins one CA");
        assert!(bare.accepts(ca, &["x".into(), proof(&bare.secret_hash(), ca)]));
        assert!(!bare.accepts(ca, &[proof(&crate::sha256_hex(b"other token"), ca)]), "a proof keyed by another token");
        assert!(!bare.accepts(b"another CA", &[proof(&bare.secret_hash(), ca)]));
        assert!(!format!("{bare:?}").contains("abc123"), "the secret stays out of logs");
        for bad in ["", "a:sha256:12", "a b", ":sha256:"] {
            assert!(JoinToken::parse(bad).is_err(), "{bad:?}");
        }
    }
}
