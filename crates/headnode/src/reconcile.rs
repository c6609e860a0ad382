//! Reconciliation: a background pass, run by one headnode of the cluster at a time, that
//! compares the records with what the servers report and repairs what is provable.
//!
//! ```text
//!   every `reconcile_every`:  hold the cluster-wide singleton? ──no──► wait
//!                                   │ yes
//!                                   ▼
//!   doctor's snapshot ─► diagnose ─► drift counts (metrics: nereid_drift{kind})
//!                                   │
//!                                   ▼  provable ones only
//!   VM its server does not run, no live job ─► sync (looked for on every server; found
//!   nowhere → destroyed, NICs/IPs/capacity freed) · ghost record ─► sync ·
//!   reservation of a finished job ─► dropped        (each recorded as a `repair` job)
//! ```
//!
//! VMs running without a record are reported, never deleted; NICs and addresses owned by
//! nothing are left to `nereid admin doctor --repair` (an operator's decision); stuck jobs
//! and silent servers are counted.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nereid_store::Cond;
use serde::{Deserialize, Serialize};

use crate::app::doctor::{Repair, diagnose};
use crate::app::{App, encode};
use crate::buckets::JOB_LEASES;

/// The kinds of drift the reconciler repairs by itself.
pub const AUTO: &[&str] = &["vm_not_on_server", "incomplete_vm", "orphan_reservation"];

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Holder {
    owner: String,
}

/// A cluster-wide singleton: the headnode holding its lease object runs the task. Another
/// takes over once the lease has gone unrenewed for a whole period by its own clock.
pub struct Singleton {
    key: String,
    period: Duration,
    seen: std::sync::Mutex<Option<(i64, Instant)>>,
}

impl Singleton {
    pub fn new(name: &str, period: Duration) -> Self {
        Singleton { key: format!("singleton:{name}"), period, seen: std::sync::Mutex::new(None) }
    }

    /// Takes or renews the lease; whether this headnode holds it now.
    pub async fn hold(&self, app: &App) -> bool {
        let me = Holder { owner: app.cfg.headnode_id.clone() };
        let cond = match app.store.get(JOB_LEASES.name, &self.key).await {
            Err(_) => return false,
            Ok(None) => Cond::Absent,
            Ok(Some(o)) => {
                let ours = serde_json::from_value::<Holder>(o.value).is_ok_and(|h| h.owner == me.owner);
                if !ours {
                    let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
                    match *seen {
                        Some((g, since)) if g == o.generation && since.elapsed() >= self.period => {}
                        Some((g, _)) if g == o.generation => return false,
                        _ => {
                            *seen = Some((o.generation, Instant::now()));
                            return false;
                        }
                    }
                }
                Cond::Generation(o.generation)
            }
        };
        app.store.put(JOB_LEASES.name, &self.key, encode(&me), cond).await.is_ok()
    }
}

/// Runs reconciliation passes forever, every `every`.
pub async fn run(app: Arc<App>, every: Duration) {
    // Whoever stops renewing for three passes is replaced.
    let singleton = Singleton::new("reconciler", every * 3);
    loop {
        tokio::time::sleep(every).await;
        if !singleton.hold(&app).await {
            continue;
        }
        if let Err(e) = pass(&app).await {
            tracing::warn!(error = %e.message, "reconciliation pass failed");
        }
    }
}

/// One pass: counts drift, repairs the provable kinds; returns how many repairs it made.
pub async fn pass(app: &App) -> Result<usize, nereid_types::ApiError> {
    let snap = app.doctor_snapshot().await?;
    let findings = diagnose(&snap);
    let mut counts = BTreeMap::new();
    for f in &findings {
        *counts.entry(f.kind.to_string()).or_default() += 1;
    }
    app.metrics.set_drift(counts);
    let mut repaired = 0;
    for f in findings.iter().filter(|f| AUTO.contains(&f.kind)) {
        let Some(r) = &f.safe_repair else { continue };
        if !matches!(r, Repair::SyncVm { .. } | Repair::DeleteReservation { .. }) {
            continue;
        }
        let outcome = app.apply_repair(r).await;
        let (ok, result) = match &outcome {
            Ok(m) => (true, m.clone()),
            Err(e) => (false, e.message.clone()),
        };
        tracing::warn!(kind = f.kind, subject = %f.subject, ok, %result, "reconciler repaired drift");
        app.record_repair(f, ok, &result).await?;
        if ok {
            app.metrics.reconciled(f.kind);
            repaired += 1;
        }
    }
    Ok(repaired)
}
