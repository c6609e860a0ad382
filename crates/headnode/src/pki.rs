//! The headnode's side of the agent trust boundary: the cluster's CA (kept in the store,
//! made once by whichever headnode starts first) and this headnode's own certificate.
//!
//! ```text
//!   start ─► agent_ca/ca in the store? ─ no ─► generate, create with Cond::Absent
//!              │ yes (or another headnode won the race: read it again)
//!              ▼
//!            fresh headnode key (memory only) ─► certificate "headnode.nereid" from the CA
//!              ├─► served on the agent listener (agents check it against their pinned CA)
//!              └─► presented to agents as the client certificate of every call
//! ```
//! Nothing here is written to the data directory. The CA key is in the store (which is
//! 0600 and the cluster's root of trust anyway); rotating the CA is described in README.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use nereid_store::{Cond, Store};
use nereid_trust::{Ca, NodeKey, Role};
use rustls::pki_types::PrivateKeyDer;
use serde::{Deserialize, Serialize};

use crate::buckets::AGENT_CA;

/// The key of the CA object in [`AGENT_CA`].
const CA_KEY: &str = "ca";
/// How long a headnode's certificate is valid (a new one is made at every start).
pub const HEADNODE_CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// How long a server's certificate is valid; agents renew when a third is left.
pub const SERVER_CERT_VALIDITY: Duration = Duration::from_secs(30 * 24 * 3600);

#[derive(Serialize, Deserialize)]
struct StoredCa {
    cert: String,
    key: String,
}

/// The cluster's CA: read from the store, or made and stored now.
pub async fn cluster_ca(store: &Arc<dyn Store>) -> Result<Ca> {
    for _ in 0..5 {
        if let Some(o) = store.get(AGENT_CA.name, CA_KEY).await.context("reading the agent CA")? {
            let s: StoredCa = serde_json::from_value(o.value).context("the stored agent CA is damaged")?;
            return Ca::from_pem(&s.cert, &s.key);
        }
        let (cert, key) = Ca::generate()?;
        let value = serde_json::to_value(StoredCa { cert, key })?;
        match store.put(AGENT_CA.name, CA_KEY, value, Cond::Absent).await {
            Ok(_) => tracing::info!("made the cluster's agent CA"),
            // Another headnode made it first: use theirs.
            Err(e) if e.is_conflict() => {}
            Err(e) => return Err(anyhow::Error::new(e).context("storing the agent CA")),
        }
    }
    anyhow::bail!("the agent CA kept changing in the store")
}

/// This headnode's TLS identity for the agent channel.
pub struct Identity {
    pub ca: Ca,
    pub cert_pem: String,
    key: NodeKey,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").field("ca", &self.ca).finish_non_exhaustive()
    }
}

impl Identity {
    /// A fresh key and a certificate for it from the cluster's CA.
    pub fn new(ca: Ca) -> Result<Identity> {
        let key = NodeKey::generate()?;
        let cert_pem = ca.issue(&key.spki_der(), &Role::Headnode, HEADNODE_CERT_VALIDITY)?;
        Ok(Identity { ca, cert_pem, key })
    }

    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        self.key.private_der()
    }
}
