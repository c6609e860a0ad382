//! Live migration of a QEMU guest between two servers: the disks by block mirror into
//! the target's NBD export, then RAM and device state by QEMU's own migration. The two
//! QEMUs only ever see local UNIX sockets; the agents relay between them.
//!
//! ```text
//!   target (created stopped)                        source (guest running)
//!   qemu … -S -incoming defer                       blockdev-add mig-nbd<i> (nbd client → relay)
//!   migrate-set-capabilities late-block-activate    blockdev-mirror mig-disk<i> → mig-nbd<i>
//!   migrate-incoming unix:migrate-in.sock   ◄─┐       (sync top: the target's overlay has the
//!   nbd-server-start unix:nbd.sock          ◄─┼──┐     same image base; full: disks without one)
//!   block-export-add disk<i> (writable)       │  │   … query-block-jobs until every job is ready
//!                                             │  └── mirror writes (relay: <nbd>)
//!                                             └───── migrate unix:<ram>  (auto-converge,
//!                                                    pause-before-switchover)
//!                                                    pre-switchover: guest paused; block-job-cancel
//!                                                    each ready mirror (target now identical),
//!                                                    blockdev-del mig-nbd<i>, migrate-continue
//!                                                    completed: source in postmigrate
//!   nbd-server-stop, cont (disks activated here)
//! ```
//! A guest that does not converge within the deadline is left running on the source
//! (`migrate_cancel`; its mirrors keep following it). Paths QEMU is given are relative to
//! its VM directory when they lie in it: QEMU runs there as the guest's own user, who
//! cannot reach the agent's (private) data directory by its absolute path.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nereid_types::agent::Definition;
use serde_json::{Value, json};
use uuid::Uuid;

use super::{Layout, Qemu, err, qmp};
use crate::backend::{BackendError, IncomingSockets, MirrorStatus, RamOptions, RamOutcome};

/// The target's socket for RAM and device state, in its VM directory.
pub const RAM_SOCKET: &str = "migrate-in.sock";
/// The target's NBD server, in its VM directory.
pub const NBD_SOCKET: &str = "nbd.sock";
/// What an incoming QEMU gets after its definition's arguments: paused (`-S`: it runs only
/// when the switch is committed) and waiting for `migrate-incoming`.
pub const INCOMING_ARGS: [&str; 3] = ["-S", "-incoming", "defer"];
/// Mirror copy granularity (the disks' qcow2 cluster size) and in-flight buffer.
const GRANULARITY: u64 = 64 << 10;
const BUF_SIZE: u64 = 16 << 20;
/// `max-bandwidth` when the migration has no cap (100 GiB/s: more than any link carries;
/// QEMU's own default would cap it at 128 MiB/s).
const UNLIMITED: u64 = 100 << 30;
/// How often QEMU is asked how far it is.
const POLL: Duration = Duration::from_millis(100);
/// How long finishing the mirrors at the switch, or a cancel, may take.
const JOB_END: Duration = Duration::from_secs(120);

/// The NBD export name of disk `i` (the contract's `disk0`, `disk1`, …).
pub fn export_name(i: usize) -> String {
    format!("disk{i}")
}

/// The mirror job of disk `i`.
pub fn job_id(i: usize) -> String {
    format!("mig-disk{i}")
}

/// The source's NBD client node for disk `i`.
pub fn nbd_node(i: usize) -> String {
    format!("mig-nbd{i}")
}

/// The disks that move (cdroms are host files, not the VM's).
pub fn moved_disks(def: &Definition) -> Vec<usize> {
    def.disks.iter().enumerate().filter(|(_, d)| d.media != "cdrom").map(|(i, _)| i).collect()
}

/// The mirror's sync mode for disk `i`: `top` for an overlay on an image (the target's
/// prepare made the same overlay on the same base, so only what the guest wrote moves),
/// `full` for a disk of its own.
pub fn sync_mode(def: &Definition, i: usize) -> &'static str {
    if def.disks.get(i).is_some_and(|d| d.image_uuid.is_some()) { "top" } else { "full" }
}

/// `p` as QEMU, started in the VM directory `dir`, reaches it.
pub fn qemu_path(dir: &Path, p: &Path) -> String {
    match p.strip_prefix(dir) {
        Ok(rel) if !rel.as_os_str().is_empty() => rel.to_string_lossy().into_owned(),
        _ => p.to_string_lossy().into_owned(),
    }
}

/// `blockdev-add` of the NBD client leading to the target's export of disk `i`.
pub fn nbd_client_args(i: usize, socket: &str) -> Value {
    json!({"driver": "nbd", "node-name": nbd_node(i), "server": {"type": "unix", "path": socket}, "export": export_name(i)})
}

/// `blockdev-mirror` of drive `disk<i>` into its NBD client node. Jobs are not dismissed
/// on their own, so a failure stays visible (with QEMU's reason) until it is read.
pub fn mirror_args(i: usize, sync: &str) -> Value {
    json!({"job-id": job_id(i), "device": format!("disk{i}"), "target": nbd_node(i), "sync": sync,
        "granularity": GRANULARITY, "buf-size": BUF_SIZE, "auto-dismiss": false})
}

/// `block-export-add` of the target's disk `i` (its block node `node`), writable.
pub fn export_args(i: usize, node: &str) -> Value {
    json!({"type": "nbd", "id": job_id(i), "node-name": node, "name": export_name(i), "writable": true})
}

/// `nbd-server-start` on the VM directory's `nbd.sock` (QMP's legacy socket address form).
pub fn nbd_server_args() -> Value {
    json!({"addr": {"type": "unix", "data": {"path": NBD_SOCKET}}})
}

/// The block node behind drive `device` in a `query-block` answer.
pub fn node_of(query_block: &Value, device: &str) -> Option<String> {
    query_block.as_array()?.iter().find(|b| b["device"] == device)?["inserted"]["node-name"].as_str().map(str::to_string)
}

/// One mirror job as `query-block-jobs` tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub disk: usize,
    pub status: String,
    pub offset: u64,
    pub len: u64,
    pub ready: bool,
    pub error: Option<String>,
}

/// The migration's jobs (`mig-disk<i>`) in a `query-block-jobs` answer.
pub fn parse_jobs(v: &Value) -> Vec<Job> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|j| {
            let disk = j["device"].as_str()?.strip_prefix("mig-disk")?.parse().ok()?;
            Some(Job {
                disk,
                status: j["status"].as_str().unwrap_or_default().to_string(),
                offset: j["offset"].as_u64().unwrap_or(0),
                len: j["len"].as_u64().unwrap_or(0),
                ready: j["ready"].as_bool().unwrap_or(false),
                error: j["error"].as_str().map(str::to_string),
            })
        })
        .collect()
}

/// How far the mirrors of `disks` are: their progress summed; in step when every one is
/// ready. A job that failed, or one that is missing, is an error naming the disk.
pub fn mirror_status(jobs: &[Job], disks: &[usize]) -> Result<MirrorStatus, String> {
    let mut st = MirrorStatus { done: 0, total: 0, ready: true };
    for &i in disks {
        let Some(j) = jobs.iter().find(|j| j.disk == i) else {
            return Err(format!("disk {i} is not being mirrored (no job {}): start the sync again", job_id(i)));
        };
        if let Some(e) = &j.error {
            return Err(format!("mirroring disk {i} to the target failed: {e}"));
        }
        if j.status == "concluded" || j.status == "null" {
            return Err(format!("the mirror of disk {i} ended before the switch: start the sync again"));
        }
        st.done += j.offset;
        st.total += j.len;
        st.ready &= j.ready;
    }
    Ok(st)
}

/// Where an outgoing migration is, from `query-migrate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Not started (no status), or `setup`/`active`/…: RAM bytes sent so far.
    Moving {
        ram_bytes: u64,
    },
    /// Paused before the switch-over: the guest is stopped, the mirrors must finish now.
    PreSwitchover,
    Completed {
        downtime_ms: u64,
        ram_bytes: u64,
    },
    Failed(String),
    Cancelled,
    None,
}

pub fn parse_migrate(v: &Value) -> Progress {
    let ram_bytes = v["ram"]["transferred"].as_u64().unwrap_or(0);
    match v["status"].as_str() {
        None | Some("none") => Progress::None,
        Some("completed") => Progress::Completed { downtime_ms: v["downtime"].as_u64().unwrap_or(0), ram_bytes },
        Some("pre-switchover") => Progress::PreSwitchover,
        Some("failed") => Progress::Failed(v["error-desc"].as_str().unwrap_or("QEMU gave no reason").to_string()),
        Some("cancelled") => Progress::Cancelled,
        Some(_) => Progress::Moving { ram_bytes },
    }
}

/// The source's capabilities for a live switch.
pub fn source_capabilities() -> Value {
    json!({"capabilities": [
        {"capability": "auto-converge", "state": true},
        {"capability": "pause-before-switchover", "state": true},
    ]})
}

/// The target's: its disks are taken over only when it is resumed (`cont`), after its NBD
/// export (which writes them) has ended.
pub fn target_capabilities() -> Value {
    json!({"capabilities": [{"capability": "late-block-activate", "state": true}]})
}

/// `migrate-set-parameters` for `opts`.
pub fn parameters(opts: &RamOptions) -> Value {
    json!({"max-bandwidth": opts.max_bandwidth.unwrap_or(UNLIMITED).clamp(1, UNLIMITED), "downtime-limit": opts.downtime_limit_ms.clamp(1, 2_000_000)})
}

/// Whether a QEMU in run state `status` has no running guest to power off (paused after
/// a migration, or never run): it is quit, not asked to shut down.
pub fn is_idle_status(status: &str) -> bool {
    matches!(status, "postmigrate" | "inmigrate" | "paused" | "prelaunch")
}

/// Whether `name` is a file an offline migration moves: a disk overlay or the UEFI store.
pub fn is_migration_file(name: &str) -> bool {
    if name == "ovmf-vars.fd" {
        return true;
    }
    name.strip_prefix("disk")
        .and_then(|n| n.strip_suffix(".qcow2"))
        .is_some_and(|n| !n.is_empty() && n.len() < 4 && n.bytes().all(|b| b.is_ascii_digit()))
}

async fn q(layout: &Layout, cmd: &str, args: Option<Value>) -> Result<Value, BackendError> {
    qmp::execute(&layout.qmp(), cmd, args).await.map_err(err)
}

impl Qemu {
    fn running_def(&self, uuid: Uuid) -> Result<Definition, BackendError> {
        self.running_definition(uuid).ok_or_else(|| err(format!("VM {uuid} does not run here (no QEMU started for it)")))
    }

    fn live_layout(&self, uuid: Uuid) -> Result<Layout, BackendError> {
        if self.pid(uuid).is_none() {
            return Err(err(format!("VM {uuid} is not running here")));
        }
        Ok(self.layout(uuid))
    }

    pub(super) async fn mig_incoming(&self, def: &Definition) -> Result<IncomingSockets, BackendError> {
        let layout = self.layout(def.uuid);
        let sockets = IncomingSockets { ram: layout.dir.join(RAM_SOCKET), nbd: layout.dir.join(NBD_SOCKET) };
        for s in [&sockets.ram, &sockets.nbd] {
            if s.as_os_str().len() > 107 {
                return Err(err(format!(
                    "the socket path {} is longer than 107 bytes: use a shorter --data-dir for the agent",
                    s.display()
                )));
            }
        }
        if self.pid(def.uuid).is_some() {
            let status = q(&layout, "query-status", None).await?;
            if status["status"] != "inmigrate" {
                return Err(err(format!(
                    "VM {} already runs here ({}): it cannot receive a migration",
                    def.uuid,
                    status["status"].as_str().unwrap_or("unknown state")
                )));
            }
        } else {
            for s in [&sockets.ram, &sockets.nbd] {
                let _ = std::fs::remove_file(s);
            }
            self.launch(def, &INCOMING_ARGS).await?;
        }
        if !sockets.ram.exists() {
            q(&layout, "migrate-set-capabilities", Some(target_capabilities())).await?;
            q(&layout, "migrate-incoming", Some(json!({"uri": format!("unix:{RAM_SOCKET}")}))).await?;
        }
        if !sockets.nbd.exists() {
            q(&layout, "nbd-server-start", Some(nbd_server_args())).await.map_err(|e| err(format!("exporting the disks: {e}")))?;
        }
        let exports = q(&layout, "query-block-exports", None).await?;
        let blocks = q(&layout, "query-block", None).await?;
        for i in moved_disks(def) {
            if exports.as_array().is_some_and(|a| a.iter().any(|e| e["id"] == job_id(i))) {
                continue;
            }
            let node = node_of(&blocks, &format!("disk{i}")).ok_or_else(|| err(format!("QEMU has no block node for disk {i}")))?;
            q(&layout, "block-export-add", Some(export_args(i, &node))).await.map_err(|e| err(format!("exporting disk {i}: {e}")))?;
        }
        tracing::info!(vm = %def.uuid, "waiting for an incoming live migration");
        Ok(sockets)
    }

    async fn jobs(&self, layout: &Layout) -> Result<Vec<Job>, BackendError> {
        Ok(parse_jobs(&q(layout, "query-block-jobs", None).await?))
    }

    async fn nbd_nodes(&self, layout: &Layout) -> Result<Vec<String>, BackendError> {
        let nodes = q(layout, "query-named-block-nodes", Some(json!({"flat": true}))).await?;
        Ok(nodes
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n["node-name"].as_str())
            .filter(|n| n.starts_with("mig-nbd"))
            .map(str::to_string)
            .collect())
    }

    pub(super) async fn mig_mirror_start(&self, uuid: Uuid, nbd: &Path) -> Result<(), BackendError> {
        let layout = self.live_layout(uuid)?;
        let def = self.running_def(uuid)?;
        let socket = qemu_path(&layout.dir, nbd);
        let jobs = self.jobs(&layout).await?;
        let nodes = self.nbd_nodes(&layout).await?;
        for i in moved_disks(&def) {
            match jobs.iter().find(|j| j.disk == i) {
                Some(j) if j.status != "concluded" && j.error.is_none() => continue,
                Some(_) => {
                    q(&layout, "job-dismiss", Some(json!({"id": job_id(i)}))).await?;
                }
                None => {}
            }
            if nodes.contains(&nbd_node(i)) {
                q(&layout, "blockdev-del", Some(json!({"node-name": nbd_node(i)}))).await?;
            }
            q(&layout, "blockdev-add", Some(nbd_client_args(i, &socket)))
                .await
                .map_err(|e| err(format!("connecting disk {i}'s mirror to the target: {e}")))?;
            q(&layout, "blockdev-mirror", Some(mirror_args(i, sync_mode(&def, i))))
                .await
                .map_err(|e| err(format!("mirroring disk {i} to the target: {e}")))?;
        }
        tracing::info!(vm = %uuid, "mirroring the disks to the migration's target");
        Ok(())
    }

    pub(super) async fn mig_mirror_status(&self, uuid: Uuid) -> Result<MirrorStatus, BackendError> {
        let layout = self.live_layout(uuid)?;
        let def = self.running_def(uuid)?;
        mirror_status(&self.jobs(&layout).await?, &moved_disks(&def)).map_err(err)
    }

    pub(super) async fn mig_mirror_cancel(&self, uuid: Uuid) -> Result<(), BackendError> {
        let Ok(layout) = self.live_layout(uuid) else { return Ok(()) };
        for j in self.jobs(&layout).await? {
            if j.status != "concluded" {
                let _ = q(&layout, "block-job-cancel", Some(json!({"device": job_id(j.disk), "force": true}))).await;
            }
        }
        self.finish_jobs(&layout, false).await?;
        self.remove_nbd_nodes(&layout).await
    }

    /// Waits until every mig-* job has concluded and dismisses it; with `must_succeed`, a
    /// job that ended in error is an error.
    async fn finish_jobs(&self, layout: &Layout, must_succeed: bool) -> Result<(), BackendError> {
        let end = Instant::now() + JOB_END;
        loop {
            let jobs = self.jobs(layout).await?;
            let mut failed = None;
            for j in jobs.iter().filter(|j| j.status == "concluded") {
                q(layout, "job-dismiss", Some(json!({"id": job_id(j.disk)}))).await?;
                if let Some(e) = &j.error {
                    failed.get_or_insert(format!("completing the mirror of disk {}: {e}", j.disk));
                }
            }
            if must_succeed && let Some(e) = failed {
                return Err(err(e));
            }
            if jobs.iter().all(|j| j.status == "concluded") {
                return Ok(());
            }
            if Instant::now() > end {
                return Err(err(format!("the disks' mirror jobs did not end within {} s", JOB_END.as_secs())));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn remove_nbd_nodes(&self, layout: &Layout) -> Result<(), BackendError> {
        for n in self.nbd_nodes(layout).await? {
            q(layout, "blockdev-del", Some(json!({"node-name": n}))).await?;
        }
        Ok(())
    }

    pub(super) async fn mig_ram(&self, uuid: Uuid, ram: &Path, opts: &RamOptions) -> Result<RamOutcome, BackendError> {
        let layout = self.live_layout(uuid)?;
        let def = self.running_def(uuid)?;
        let started = Instant::now();
        let mut block_ms = 0;
        let mut continued = false;
        // Idempotent: a migration under way (or done, the guest paused) is followed, not
        // started again; one that ended earlier while the guest runs on is a new one.
        let fresh = match parse_migrate(&q(&layout, "query-migrate", None).await?) {
            Progress::None | Progress::Cancelled | Progress::Failed(_) => true,
            Progress::Completed { .. } => q(&layout, "query-status", None).await?["status"] == "running",
            Progress::Moving { .. } | Progress::PreSwitchover => false,
        };
        if fresh {
            let st = mirror_status(&self.jobs(&layout).await?, &moved_disks(&def)).map_err(err)?;
            if !st.ready {
                return Err(err(format!(
                    "the disks' mirror is not in step with the guest yet ({} of {} bytes): the switch waits for the sync",
                    st.done, st.total
                )));
            }
            q(&layout, "migrate-set-capabilities", Some(source_capabilities())).await?;
            q(&layout, "migrate-set-parameters", Some(parameters(opts))).await?;
            q(&layout, "migrate", Some(json!({"uri": format!("unix:{}", qemu_path(&layout.dir, ram))})))
                .await
                .map_err(|e| err(format!("starting the RAM migration: {e}")))?;
            tracing::info!(vm = %uuid, "moving the guest's RAM to the migration's target");
        }
        loop {
            match parse_migrate(&q(&layout, "query-migrate", None).await?) {
                Progress::Completed { downtime_ms, ram_bytes } => {
                    self.remove_nbd_nodes(&layout).await?;
                    let pause_ms = downtime_ms.max(block_ms);
                    tracing::info!(vm = %uuid, pause_ms, ram_bytes, "the guest's RAM and disks are on the target; paused here");
                    return Ok(RamOutcome { converged: true, pause_ms, ram_bytes });
                }
                Progress::PreSwitchover if !continued => {
                    // The guest is paused: each ready mirror, cancelled, completes with the
                    // target identical to the source.
                    let t = Instant::now();
                    for j in self.jobs(&layout).await?.iter().filter(|j| j.status != "concluded") {
                        q(&layout, "block-job-cancel", Some(json!({"device": job_id(j.disk)}))).await?;
                    }
                    if let Err(e) = self.finish_jobs(&layout, true).await {
                        let _ = q(&layout, "migrate_cancel", None).await;
                        return Err(e);
                    }
                    self.remove_nbd_nodes(&layout).await?;
                    block_ms = t.elapsed().as_millis() as u64;
                    q(&layout, "migrate-continue", Some(json!({"state": "pre-switchover"}))).await?;
                    continued = true;
                }
                Progress::PreSwitchover => {}
                Progress::Failed(why) => return Err(err(format!("QEMU's migration failed: {why}"))),
                Progress::Cancelled | Progress::None => {
                    return Err(err("the RAM migration was cancelled before it completed"));
                }
                Progress::Moving { ram_bytes } => {
                    if started.elapsed() > opts.deadline {
                        q(&layout, "migrate_cancel", None).await?;
                        return self.after_cancel(&layout, uuid, opts, ram_bytes).await;
                    }
                }
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// After `migrate_cancel`: the guest runs on here (unless the migration finished in
    /// the meantime).
    async fn after_cancel(&self, layout: &Layout, uuid: Uuid, opts: &RamOptions, sent: u64) -> Result<RamOutcome, BackendError> {
        let end = Instant::now() + JOB_END;
        loop {
            match parse_migrate(&q(layout, "query-migrate", None).await?) {
                Progress::Completed { downtime_ms, ram_bytes } => {
                    self.remove_nbd_nodes(layout).await?;
                    return Ok(RamOutcome { converged: true, pause_ms: downtime_ms, ram_bytes });
                }
                Progress::Cancelled | Progress::Failed(_) | Progress::None => break,
                _ if Instant::now() > end => return Err(err("the RAM migration did not stop after it was cancelled")),
                _ => tokio::time::sleep(POLL).await,
            }
        }
        tracing::info!(vm = %uuid, deadline_s = opts.deadline.as_secs(), "the guest did not converge in time: it keeps running here");
        Ok(RamOutcome { converged: false, pause_ms: 0, ram_bytes: sent })
    }

    pub(super) async fn mig_resume_source(&self, uuid: Uuid) -> Result<(), BackendError> {
        let layout = self.live_layout(uuid)?;
        if q(&layout, "query-status", None).await?["status"] == "running" {
            return Ok(());
        }
        q(&layout, "cont", None).await.map_err(|e| err(format!("running the guest on the source again: {e}")))?;
        tracing::info!(vm = %uuid, "the guest runs on the source again");
        Ok(())
    }

    pub(super) async fn mig_resume_target(&self, uuid: Uuid) -> Result<(), BackendError> {
        let layout = self.live_layout(uuid)?;
        let status = q(&layout, "query-status", None).await?;
        match status["status"].as_str() {
            Some("running") => return Ok(()),
            Some("inmigrate") => return Err(err("the incoming migration has not completed: the guest cannot run here yet")),
            _ => {}
        }
        if let Err(e) = q(&layout, "nbd-server-stop", None).await
            && !e.0.contains("not running")
        {
            return Err(err(format!("ending the disks' export: {}", e.0)));
        }
        q(&layout, "cont", None).await.map_err(|e| err(format!("running the migrated guest: {}", e.0)))?;
        let status = q(&layout, "query-status", None).await?;
        if status["status"] != "running" {
            return Err(err(format!("the migrated guest does not run: QEMU says {}", status["status"])));
        }
        tracing::info!(vm = %uuid, "the migrated guest runs here");
        Ok(())
    }

    pub(super) async fn mig_files(&self, uuid: Uuid) -> Result<Vec<(String, PathBuf)>, BackendError> {
        if self.pid(uuid).is_some() {
            return Err(err(format!("VM {uuid} is running: its files are copied only while it is stopped")));
        }
        let layout = self.layout(uuid);
        let entries =
            std::fs::read_dir(&layout.dir).map_err(|e| err(format!("VM {uuid} has no files here ({}: {e})", layout.dir.display())))?;
        let mut files: Vec<(String, PathBuf)> = entries
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|n| is_migration_file(n))
            .map(|n| (n.clone(), layout.dir.join(n)))
            .collect();
        files.sort();
        Ok(files)
    }

    pub(super) fn mig_file_path(&self, uuid: Uuid, name: &str) -> Result<PathBuf, BackendError> {
        if !is_migration_file(name) {
            return Err(err(format!("{name:?} is not a file of a QEMU VM (disk<N>.qcow2 or ovmf-vars.fd)")));
        }
        Ok(self.layout(uuid).dir.join(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(disks: Value) -> Definition {
        serde_json::from_value(json!({
            "uuid": "6f3d3f1c-8a51-4e43-9b8c-2f0f5d7c9a10", "brand": "bhyve",
            "owner_uuid": "930896af-bf8c-48d4-885c-6573a94b1853", "ram": 1024, "vcpus": 2,
            "disks": disks, "nics": []
        }))
        .unwrap()
    }

    #[test]
    fn overlays_on_an_image_mirror_their_top_other_disks_whole_and_cdroms_stay() {
        let d = def(json!([
            {"image_uuid": "2f1dc1ec-8f29-4b33-9d4f-9a3e0c3e2f11", "size": 1024, "boot": true, "model": "virtio"},
            {"size": 0, "model": "ahci", "media": "cdrom", "path": "/iso/x.iso"},
            {"size": 64, "model": "nvme"},
        ]));
        assert_eq!(moved_disks(&d), [0, 2]);
        assert_eq!((sync_mode(&d, 0), sync_mode(&d, 2)), ("top", "full"));
        let m = mirror_args(2, "full");
        assert_eq!(
            (m["job-id"].as_str(), m["device"].as_str(), m["target"].as_str()),
            (Some("mig-disk2"), Some("disk2"), Some("mig-nbd2"))
        );
        assert_eq!(m["auto-dismiss"], false, "a failure stays to be read");
        let c = nbd_client_args(2, "mig-nbd.sock");
        assert_eq!(
            c,
            json!({"driver": "nbd", "node-name": "mig-nbd2", "server": {"type": "unix", "path": "mig-nbd.sock"}, "export": "disk2"})
        );
        assert_eq!(export_args(0, "#block123")["name"], "disk0");
        assert_eq!(export_args(0, "#block123")["writable"], true);
    }

    #[test]
    fn paths_in_the_vm_directory_are_given_to_qemu_relatively() {
        let dir = Path::new("/data/qemu/vm");
        assert_eq!(qemu_path(dir, Path::new("/data/qemu/vm/relay-nbd.sock")), "relay-nbd.sock");
        assert_eq!(qemu_path(dir, Path::new("/run/nereid/x.sock")), "/run/nereid/x.sock");
        assert_eq!(qemu_path(dir, dir), "/data/qemu/vm");
    }

    #[test]
    fn the_drive_s_node_is_found_in_query_block() {
        let v = json!([{"device": "disk0", "inserted": {"node-name": "#block152"}}, {"device": "disk1", "inserted": {"node-name": "#block391"}}]);
        assert_eq!(node_of(&v, "disk1").as_deref(), Some("#block391"));
        assert_eq!(node_of(&v, "disk2"), None);
    }

    fn job(disk: usize, status: &str, offset: u64, len: u64, ready: bool) -> Value {
        json!({"device": job_id(disk), "type": "mirror", "status": status, "offset": offset, "len": len, "ready": ready, "busy": false})
    }

    #[test]
    fn mirror_progress_sums_the_migration_s_jobs_and_is_ready_when_all_are() {
        let v = json!([job(0, "ready", 100, 100, true), job(2, "running", 30, 60, false),
            {"device": "backup-x", "status": "running", "offset": 5, "len": 9, "ready": false}]);
        let jobs = parse_jobs(&v);
        assert_eq!(jobs.len(), 2, "only mig-* jobs");
        assert_eq!(mirror_status(&jobs, &[0, 2]).unwrap(), MirrorStatus { done: 130, total: 160, ready: false });
        let jobs = parse_jobs(&json!([job(0, "ready", 100, 100, true), job(2, "ready", 60, 60, true)]));
        assert_eq!(mirror_status(&jobs, &[0, 2]).unwrap(), MirrorStatus { done: 160, total: 160, ready: true });
        let e = mirror_status(&jobs, &[0, 1, 2]).unwrap_err();
        assert!(e.contains("disk 1 is not being mirrored"), "{e}");
        let mut failed = job(0, "concluded", 10, 100, false);
        failed["error"] = json!("Connection reset by peer");
        let e = mirror_status(&parse_jobs(&json!([failed])), &[0]).unwrap_err();
        assert_eq!(e, "mirroring disk 0 to the target failed: Connection reset by peer");
        assert_eq!(mirror_status(&[], &[]).unwrap(), MirrorStatus { done: 0, total: 0, ready: true }, "no disks: nothing to wait for");
    }

    #[test]
    fn query_migrate_answers_are_understood() {
        assert_eq!(parse_migrate(&json!({})), Progress::None);
        assert_eq!(parse_migrate(&json!({"status": "active", "ram": {"transferred": 42}})), Progress::Moving { ram_bytes: 42 });
        assert_eq!(parse_migrate(&json!({"status": "pre-switchover"})), Progress::PreSwitchover);
        assert_eq!(
            parse_migrate(&json!({"status": "completed", "downtime": 37, "ram": {"transferred": 9000}})),
            Progress::Completed { downtime_ms: 37, ram_bytes: 9000 }
        );
        assert_eq!(
            parse_migrate(&json!({"status": "failed", "error-desc": "Unable to write to socket: Broken pipe"})),
            Progress::Failed("Unable to write to socket: Broken pipe".into())
        );
        assert_eq!(parse_migrate(&json!({"status": "cancelled"})), Progress::Cancelled);
    }

    #[test]
    fn parameters_carry_the_cap_and_downtime() {
        let o = RamOptions { max_bandwidth: Some(10 << 20), deadline: Duration::from_secs(60), downtime_limit_ms: 300 };
        assert_eq!(parameters(&o), json!({"max-bandwidth": 10 << 20, "downtime-limit": 300}));
        let o = RamOptions { max_bandwidth: None, ..o };
        assert_eq!(parameters(&o)["max-bandwidth"], UNLIMITED);
    }

    #[test]
    fn only_disk_overlays_and_the_uefi_store_are_migration_files() {
        for ok in ["disk0.qcow2", "disk12.qcow2", "ovmf-vars.fd"] {
            assert!(is_migration_file(ok), "{ok}");
        }
        for bad in ["disk.qcow2", "base0.raw", "../disk0.qcow2", "disk0.qcow2/x", "uid", "qemu.pid", "diskx.qcow2", "disk99999.qcow2"] {
            assert!(!is_migration_file(bad), "{bad}");
        }
        assert!(is_idle_status("postmigrate") && is_idle_status("inmigrate") && !is_idle_status("running"));
    }
}
