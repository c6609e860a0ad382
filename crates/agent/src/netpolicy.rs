//! The node's network policy (`PUT /servers/{server}/netpolicy`, see
//! [`nereid_types::netpolicy`]): kept in the node's data directory so a restarted agent
//! applies it again at once, handed whole to the backend, and its digest reported in
//! every heartbeat once applied.
//!
//! ```text
//!   PUT body ─► saved (DATA/netpolicy.json, 0600, atomic) ─► backend.apply_netpolicy
//!                                                          ok ─► digest = applied
//!                                                          err ─► logged, answered;
//!                                                                 the last applied digest
//!                                                                 stays (the headnode
//!                                                                 pushes again)
//!   agent start: the saved policy is applied before the first heartbeat
//! ```

use std::path::{Path, PathBuf};

use nereid_types::netpolicy::NetPolicy;

/// The file a node's policy is kept in.
pub const FILE: &str = "netpolicy.json";

/// One node's policy: the saved one and the digest of the one applied.
pub struct PolicyStore {
    file: PathBuf,
    /// Applies happen one at a time, each whole; holds the digest applied last.
    applied: tokio::sync::Mutex<Option<String>>,
    /// A copy of `applied` for the heartbeat (which must not wait on an apply).
    reported: std::sync::Mutex<Option<String>>,
}

impl PolicyStore {
    pub fn new(dir: &Path) -> Self {
        PolicyStore { file: dir.join(FILE), applied: tokio::sync::Mutex::new(None), reported: std::sync::Mutex::new(None) }
    }

    /// The saved policy, if there is one (a damaged file is logged and ignored).
    pub fn load(&self) -> Option<NetPolicy> {
        let bytes = std::fs::read(&self.file).ok()?;
        match serde_json::from_slice(&bytes) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!(path = %self.file.display(), error = %e, "ignoring a damaged network policy file");
                None
            }
        }
    }

    /// Saves `p` (owner-only, replacing the old file atomically).
    pub fn save(&self, p: &NetPolicy) -> Result<(), String> {
        let bytes = serde_json::to_vec_pretty(p).map_err(|e| format!("encoding the network policy: {e}"))?;
        crate::durable::write_atomic_private(&self.file, &bytes)
            .map_err(|e| format!("saving the network policy to {}: {e}", self.file.display()))
    }

    /// Saves `p` and applies it with `apply`; the digest applied is reported from then on.
    pub async fn put<F, Fut>(&self, p: &NetPolicy, apply: F) -> Result<(), String>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        let mut applied = self.applied.lock().await;
        self.save(p)?;
        apply().await?;
        *applied = Some(p.digest.clone());
        *self.reported.lock().unwrap_or_else(|e| e.into_inner()) = applied.clone();
        Ok(())
    }

    /// The digest of the policy applied last (`None` before any).
    pub fn digest(&self) -> Option<String> {
        self.reported.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_policy_is_kept_private_and_its_digest_reported_only_once_applied() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = PolicyStore::new(dir.path());
        assert_eq!((store.load(), store.digest()), (None, None));
        let mut p = NetPolicy { digest: "d1".into(), ..Default::default() };
        p.overlays.insert(7, vec!["192.0.2.2".into()]);
        store.put(&p, || async { Ok(()) }).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(store.digest().as_deref(), Some("d1"));
        let mode = std::fs::metadata(dir.path().join(FILE)).map(|m| m.permissions().mode() & 0o777).unwrap_or(0);
        assert_eq!(mode, 0o600);
        // A restarted agent finds it.
        assert_eq!(PolicyStore::new(dir.path()).load(), Some(p.clone()));
        // A failed apply is saved (retried at start) but not reported as applied.
        let p2 = NetPolicy { digest: "d2".into(), ..Default::default() };
        let e = store.put(&p2, || async { Err("no nft".to_string()) }).await;
        assert_eq!(e, Err("no nft".into()));
        assert_eq!(store.digest().as_deref(), Some("d1"));
        assert_eq!(store.load(), Some(p2));
        // A damaged file is ignored.
        std::fs::write(dir.path().join(FILE), b"{").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(store.load(), None);
    }
}
