//! Migration of a VM from one server to another (Triton's RFD 34, live under QEMU): the
//! record VMAPI and CloudAPI show, and the orders the headnode gives the two agents.
//!
//! ```text
//!   begin ──► sync (repeatable) ──► switch ──► finalize
//!     │          │  ▲                  │           (source copy deleted, record kept
//!     │          ▼  │ pause            │            as history: state successful)
//!     └──────► abort (target removed; the VM never left the source)
//! ```
//! Record states: `running` (an action's job is at work), `paused` (between actions),
//! `failed` (the last action failed and was unwound: the VM runs on the source, the
//! target is clean, nothing is reserved; `begin` starts over),
//! `successful` (switched; `finalize` removes the source's copy). `automatic` runs
//! begin, sync and switch in one job.
//!
//! # The agents' side
//!
//! The headnode drives both agents with [`Order`]s, `PUT /servers/{s}/vms/{vm}/migration`
//! (idempotent per migration and step; the answer is [`AgentProgress`], also at `GET` of
//! the same path; `DELETE` is [`Step::Abort`]). Data moves between the agents'
//! `--migration-address`es, never through the headnode: the source's agent connects to
//! `peer`, proves it holds the migration's `token` (a secret the headnode made for this
//! migration and gave to both), and the target's agent accepts only connections for a
//! migration it was told to expect, with that token.
//!
//! | step | source | target |
//! |---|---|---|
//! | `prepare` | remembers peer, token, cap | creates the VM stopped (disks on the image, taps, metadata); live: QEMU waiting for the incoming migration, its disks exported to the source's mirror |
//! | `sync` | live: mirrors every disk to the target while the guest runs, done once in step (the mirror keeps following the guest's writes); otherwise copies the disks' files | — |
//! | `pause` | stops syncing | — |
//! | `switch` | live: RAM, then the mirror's last blocks; done with the source paused (`pause_ms` measured). A guest that does not converge, or `live: false`: the VM is stopped, its disk files copied, done with `live: false` | — |
//! | `resume` | the source runs again (a switch the headnode could not commit) | the VM runs (live: continues where the source stopped); its slot is an ordinary VM of this server from now on |
//! | `release` | the VM now runs elsewhere: its stopped copy is kept, never started, until `finalize` deletes it (an ordinary DELETE of the VM on the source) | — |
//! | `abort` | stops whatever runs, forgets the migration; the VM keeps running here | removes the VM and everything made for it |

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::agent::Ensure;

/// Record phases and states (Triton's words).
pub const PHASES: &[&str] = &["begin", "sync", "switch", "abort"];
pub const STATES: &[&str] = &["running", "paused", "failed", "successful"];

/// The actions of `POST /vms/:uuid?action=migrate` (`migration_action`) and CloudAPI's
/// `POST /:login/machines/:id/migrate` (`action`; CloudAPI's `automatic` is VMAPI's
/// `begin` with `migration_automatic=true`).
pub const VMAPI_ACTIONS: &[&str] = &["begin", "sync", "switch", "pause", "abort", "finalize", "estimate"];
pub const CLOUDAPI_ACTIONS: &[&str] = &["begin", "sync", "switch", "automatic", "abort", "pause", "finalize"];

/// Triton's exact message when user migrations are off (tooling matches on it).
pub const USER_MIGRATION_NOT_ALLOWED: &str = "User migration on this VM not allowed";

/// One entry of `progress_history`, and the `progress` events of the watch stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProgressEntry {
    /// Always `progress` (the watch stream's last event is `end`, see [`end_event`]).
    #[serde(rename = "type", default = "progress_type")]
    pub kind: String,
    pub phase: String,
    /// `running`, `successful` or `failed` (Triton's entries also say `success`).
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Bytes (or percent, when `total_progress` is 100) done of `total_progress`.
    pub current_progress: u64,
    pub total_progress: u64,
    pub started_timestamp: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<i64>,
    /// Bytes per second, while data moves (the CLI prints it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer_bytes_second: Option<u64>,
}

fn progress_type() -> String {
    "progress".into()
}

/// VMAPI's migration record (`vmapi_vm_migrations`), as stored. One per migration; the
/// VM's latest is the one its actions work on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Migration {
    pub id: Uuid,
    pub vm_uuid: Uuid,
    pub owner_uuid: Uuid,
    pub source_server_uuid: Uuid,
    /// Set once `begin` has placed the VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_server_uuid: Option<Uuid>,
    /// The target's VM uuid (the VM's own: a migration keeps the uuid).
    pub target_vm_uuid: Uuid,
    pub automatic: bool,
    /// The action last asked for (Triton's `action`).
    pub action: String,
    pub phase: String,
    pub state: String,
    #[serde(default)]
    pub num_sync_phases: u32,
    pub created_timestamp: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub progress_history: Vec<ProgressEntry>,
    /// Nereid: `live` (QEMU moves the running guest) or `offline` (stop, copy, start).
    /// What the switch actually did is in its progress entry's message.
    #[serde(default = "live")]
    pub mechanism: String,
    /// Nereid: the job doing the current action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_uuid: Option<Uuid>,
    /// Nereid: who asked (`operator` or the account's login), for the audit of actions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
    /// Nereid: the allocator's explanation of the target (begin).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<serde_json::Value>,
    /// Nereid: the operator's bandwidth cap for this migration (megabits per second).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth_mbps: Option<u64>,
    /// Nereid: how long the guest was paused at switch (live), in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_ms: Option<u64>,
    /// Nereid: a failure whose unwinding could not clean the target up (its server did
    /// not answer): the migration still holds it, and `abort` tries again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleanup_error: Option<String>,
    /// Nereid: the secret both agents are given; never rendered by an API.
    #[serde(default)]
    pub token: String,
}

fn live() -> String {
    "live".into()
}

impl Migration {
    /// Whether the migration is not over: neither aborted nor finalized. (A failed one is
    /// not over, but holds nothing: a failure unwinds the target and the reservation.)
    pub fn is_open(&self) -> bool {
        !(self.is_finalized() || self.phase == "abort" && self.state == "successful")
    }

    /// Whether `finalize` ran (the source's copy is gone).
    pub fn is_finalized(&self) -> bool {
        self.action == "finalize" && self.state == "successful"
    }

    /// Triton's public form (VMAPI's `translateVmMigration`): the fields a client sees,
    /// each progress entry with its `duration_ms`, and the total `duration_ms`.
    pub fn public(&self, now_ms: i64) -> serde_json::Value {
        let history: Vec<serde_json::Value> = self
            .progress_history
            .iter()
            .map(|e| {
                let mut e = e.clone();
                if e.duration_ms.is_none() {
                    e.duration_ms = Some(entry_duration_ms(&e, now_ms));
                }
                serde_json::to_value(e).unwrap_or_default()
            })
            .collect();
        let total: i64 = history.iter().filter_map(|e| e.get("duration_ms").and_then(serde_json::Value::as_i64)).sum();
        let mut v = serde_json::json!({
            "automatic": self.automatic,
            "created_timestamp": self.created_timestamp,
            "duration_ms": total,
            "phase": self.phase,
            "state": self.state,
            "vm_uuid": self.vm_uuid,
            "progress_history": history,
        });
        for (k, val) in
            [("started_timestamp", &self.started_timestamp), ("finished_timestamp", &self.finished_timestamp), ("error", &self.error)]
        {
            if let Some(s) = val {
                v[k] = serde_json::Value::String(s.clone());
            }
        }
        v
    }
}

fn ms_of(ts: &str) -> Option<i64> {
    time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
}

/// An entry's duration: finished − started, or now − started while it runs.
pub fn entry_duration_ms(e: &ProgressEntry, now_ms: i64) -> i64 {
    let start = ms_of(&e.started_timestamp).unwrap_or(now_ms);
    let end = e.finished_timestamp.as_deref().and_then(ms_of).unwrap_or(now_ms);
    (end - start).max(0)
}

/// The watch stream's last line: `{type: end, phase, state, message}`.
pub fn end_event(m: &Migration) -> serde_json::Value {
    let mut v = serde_json::json!({"type": "end", "phase": m.phase, "state": m.state});
    if let Some(e) = &m.error {
        v["message"] = serde_json::Value::String(e.clone());
    }
    v
}

/// Which side of a migration an agent is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Source,
    Target,
}

/// What the headnode asks of an agent (see the module's table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Step {
    Prepare,
    Sync,
    Pause,
    Switch,
    Resume,
    Release,
    Abort,
}

/// An order for one agent (`PUT /servers/{s}/vms/{vm}/migration`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Order {
    pub migration: Uuid,
    pub role: Role,
    pub step: Step,
    /// The migration's secret (both sides; the target accepts data only with it).
    pub token: String,
    /// Whether to move the guest live (QEMU); `false`: stop, copy, start.
    pub live: bool,
    /// Target, `prepare`: the VM as it must exist on the target (state `stopped`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ensure: Option<Ensure>,
    /// Source: the target agent's migration address (`host:port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// Source: the target's server uuid (the target agent may host several servers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_server: Option<Uuid>,
    /// Source: a cap on the data rate, megabits per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth_mbps: Option<u64>,
}

/// How an agent's part of a migration goes (`GET`/`PUT …/migration`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentProgress {
    pub migration: Uuid,
    pub role: Role,
    /// The step last ordered.
    pub step: Step,
    /// `running`, `done` or `failed`.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What the step has to move, and has moved (bytes of disk or RAM).
    #[serde(default)]
    pub bytes_total: u64,
    #[serde(default)]
    pub bytes_done: u64,
    /// Bytes this side put on (source) or took off (target) the wire, over the migration.
    #[serde(default)]
    pub bytes_sent: u64,
    /// Bytes per second, lately.
    #[serde(default)]
    pub rate: u64,
    /// Source, `switch`: whether the guest moved live (`false`: it was stopped and copied).
    #[serde(default)]
    pub live: bool,
    /// Source, live `switch`: how long the guest was paused, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_ms: Option<u64>,
}

impl AgentProgress {
    pub fn is_done(&self) -> bool {
        self.state == "done"
    }
    pub fn is_failed(&self) -> bool {
        self.state == "failed"
    }
}

/// The sim backend's migration faults (`internal_metadata["nereid:sim_fault"]`): the
/// target's prepare fails; the transfer is cut halfway through sync; the target's guest
/// dies during switch.
pub const SIM_FAULT_PREPARE: &str = "fail-migrate-prepare";
pub const SIM_FAULT_TRANSFER: &str = "fail-migrate-transfer";
pub const SIM_FAULT_SWITCH: &str = "fail-migrate-switch";

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn sample() -> Migration {
        Migration {
            id: Uuid::nil(),
            vm_uuid: Uuid::nil(),
            owner_uuid: Uuid::nil(),
            source_server_uuid: Uuid::nil(),
            target_server_uuid: None,
            target_vm_uuid: Uuid::nil(),
            automatic: false,
            action: "begin".into(),
            phase: "begin".into(),
            state: "paused".into(),
            num_sync_phases: 0,
            created_timestamp: "2026-01-01T00:00:00.000Z".into(),
            started_timestamp: None,
            finished_timestamp: None,
            error: None,
            progress_history: vec![ProgressEntry {
                kind: "progress".into(),
                phase: "begin".into(),
                state: "successful".into(),
                message: Some("reserving instance".into()),
                error: None,
                current_progress: 100,
                total_progress: 100,
                started_timestamp: "2026-01-01T00:00:00.000Z".into(),
                finished_timestamp: Some("2026-01-01T00:00:01.500Z".into()),
                duration_ms: None,
                transfer_bytes_second: None,
            }],
            mechanism: "live".into(),
            job_uuid: None,
            requested_by: None,
            placement: None,
            bandwidth_mbps: None,
            pause_ms: None,
            cleanup_error: None,
            token: "secret".into(),
        }
    }

    #[test]
    fn the_public_form_has_triton_fields_durations_and_no_secret() {
        let v = sample().public(0);
        assert_eq!(v["progress_history"][0]["duration_ms"], 1500);
        assert_eq!(v["progress_history"][0]["type"], "progress");
        assert_eq!(v["duration_ms"], 1500);
        assert!(v.get("token").is_none());
        assert!(v.get("source_server_uuid").is_none());
        assert_eq!(v["state"], "paused");
    }

    #[test]
    fn open_and_finalized() {
        let mut m = sample();
        assert!(m.is_open());
        m.phase = "abort".into();
        m.state = "successful".into();
        assert!(!m.is_open());
        let mut m = sample();
        m.action = "finalize".into();
        m.state = "successful".into();
        assert!(m.is_finalized() && !m.is_open());
    }
}
