//! The trust boundary between headnodes and compute nodes' agents: a headnode CA,
//! certificates issued at join, mutual TLS both ways, pinned keys.
//!
//! ```text
//!   store (cluster-wide, made once)      agent (key made on the node, never sent)
//!   ┌──────────────────┐                 ┌───────────────────────────────┐
//!   │ CA cert + CA key │  join: token +  │ node key (0600, dir 0700)     │
//!   └────────┬─────────┘  public key ──► │ CA pinned at first contact:   │
//!            │ issues                    │  the join token's CA hash, or │
//!            ▼                           │  an HMAC proof keyed by the   │
//!   headnode cert (SAN headnode.nereid)  │  join token                   │
//!   server cert  (SAN agent.nereid,      │ server cert (from the join)   │
//!                 <uuid>.server.nereid)  └───────────────────────────────┘
//!
//!   agent ──TLS, client cert = server cert──► headnode agent listener: the key must be the
//!                                             one pinned in the server's record
//!   headnode ──TLS, client cert = headnode cert──► agent API: the agent's key must be the
//!                                                  pinned one; the agent accepts only
//!                                                  CA-issued `headnode.nereid` certs
//! ```
//!
//! Names in certificates are roles, not host names: the address an agent or headnode is
//! reached at does not matter, the CA and the pinned key do.

pub mod ca;
pub mod configs;
pub mod listener;
pub mod token;
pub mod verify;

pub use ca::{Ca, NodeKey, Role};
pub use listener::{MtlsListener, Peer};

/// The name every headnode certificate carries (and agents require of headnodes).
pub const HEADNODE_NAME: &str = "headnode.nereid";
/// The name every server (agent) certificate carries.
pub const AGENT_NAME: &str = "agent.nereid";

/// Lower-case hex SHA-256 of some bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}

/// The ring crypto provider every config here uses.
pub fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}
