//! The `qemu` backend: real hardware VMs (Triton's `bhyve` and `kvm` brands) as QEMU
//! processes on a Linux host.
//!
//! ```text
//!   <data>/qemu/<vm>/            one directory per VM, mode 0700, owned by the VM's own uid
//!       uid                      that uid (see `confine`)
//!       disk0.qcow2 …            copy-on-write overlays on base0.* …
//!       base0.raw|qcow2 …        read-only hard links to <data>/images/<image>/base.*
//!       ovmf-vars.fd             the VM's own UEFI variable store (bootrom uefi)
//!       qemu.pid  qmp.sock       the detached QEMU and its monitor
//!       qemu.log                 QEMU's stderr
//!       cgroup                   the VM's cgroup directories (see `cgroup`)
//!       console.sock console.log com1, and the agent's ring log of it (console.rs)
//!       metadata.sock            com2: the agent serves the metadata protocol on it
//!       vnc.sock                 the graphical console
//!       running.json             the definition QEMU was last started with
//! ```
//! QEMU runs detached (its own session), so VMs outlive the agent; a restarted agent finds
//! them again by pidfile (see `process`). Every QEMU is confined: its own unprivileged
//! user, seccomp, its own cgroup with the package's limits (see `confine`, `cgroup`), host
//! files only from the operator's `--iso-dir`s (see `hostpath`). Every operation is idempotent: the supervisor may repeat
//! one after a crash. Create undoes itself when it fails, so a failed provision leaves
//! nothing behind.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use nereid_types::agent::Definition;
use uuid::Uuid;

use super::{Backend, BackendError, IncomingSockets, MirrorStatus, RamOptions, RamOutcome, SnapshotOp};
use crate::images::ImageCache;
use crate::net::{self, Net};

pub mod accel;
pub mod argv;
pub mod cgroup;
pub mod confine;
pub mod disks;
pub mod hostpath;
pub mod migrate;
pub mod process;
pub mod qmp;
pub mod stats;

pub use argv::{Accel, Layout};

/// How the backend runs QEMU.
#[derive(Debug, Clone)]
pub struct Config {
    /// The agent's data directory (VMs under `qemu/`).
    pub dir: PathBuf,
    pub qemu: PathBuf,
    pub qemu_img: PathBuf,
    pub accel: Accel,
    /// OVMF's code and variable-store template (`bootrom: uefi`).
    pub ovmf_code: PathBuf,
    pub ovmf_vars: PathBuf,
    /// How long a guest has to power off after the ACPI button before it is killed.
    pub stop_timeout: Duration,
    /// SMBIOS version (`7.<platform buildstamp>`).
    pub smbios_version: String,
    /// Where each nic tag's NICs are plugged in.
    pub nic_tags: Vec<(String, crate::net::Uplink)>,
    /// The nic tag carrying fabric (VXLAN) traffic.
    pub fabric_underlay_tag: String,
    /// The directories whose files VMs may use as cdroms.
    pub iso_dirs: Vec<PathBuf>,
    /// Guests' uids start here (one per VM).
    pub uid_base: u32,
    /// Where VMs' cgroups go; `None` when the host has no usable hierarchy (no limits).
    pub cgroups: Option<Box<cgroup::Hierarchy>>,
}

impl Config {
    /// Defaults for a Debian/Ubuntu host (qemu-system-x86, qemu-utils and ovmf installed).
    pub fn debian(dir: PathBuf, accel: Accel) -> Self {
        Config {
            dir,
            qemu: "qemu-system-x86_64".into(),
            qemu_img: "qemu-img".into(),
            accel,
            ovmf_code: first_existing(&["/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_CODE.fd"]),
            ovmf_vars: first_existing(&["/usr/share/OVMF/OVMF_VARS_4M.fd", "/usr/share/OVMF/OVMF_VARS.fd"]),
            stop_timeout: Duration::from_secs(60),
            smbios_version: format!("7.{}", platform_stamp()),
            nic_tags: Vec::new(),
            fabric_underlay_tag: nereid_types::fabric::DEFAULT_UNDERLAY_TAG.into(),
            iso_dirs: Vec::new(),
            uid_base: confine::DEFAULT_UID_BASE,
            cgroups: cgroup::detect_host().map(Box::new),
        }
    }
}

fn first_existing(paths: &[&str]) -> PathBuf {
    paths.iter().map(PathBuf::from).find(|p| p.exists()).unwrap_or_else(|| PathBuf::from(paths[0]))
}

/// The platform buildstamp SmartOS would report: this build's version, as a timestamp-like tag.
fn platform_stamp() -> String {
    format!("nereid-{}", env!("CARGO_PKG_VERSION"))
}

pub struct Qemu {
    cfg: Config,
    images: Arc<ImageCache>,
    net: Arc<Net>,
    /// Guest uids are handed out one at a time.
    uids: std::sync::Mutex<()>,
    /// Whether the agent is root (and so can run each guest as its own user).
    root: bool,
}

fn err(msg: impl Into<String>) -> BackendError {
    BackendError(msg.into())
}

impl Qemu {
    pub fn new(cfg: Config, images: Arc<ImageCache>) -> Self {
        let net = Arc::new(Net::new(cfg.nic_tags.clone()).with_underlay_tag(&cfg.fabric_underlay_tag));
        match confine::make_private(&cfg.dir) {
            Ok(true) => tracing::info!(dir = %cfg.dir.display(), "made the agent's data directory 0700: guests reach nothing in it"),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "the agent's data directory stays reachable to guests' users"),
        }
        let root = rustix::process::geteuid().is_root();
        if !root {
            tracing::warn!(
                "the agent is not root: guests' QEMUs run as its own user (still under seccomp, without new privileges), not each as their own"
            );
        }
        Qemu { cfg, images, net, uids: std::sync::Mutex::new(()), root }
    }

    /// The host networking of this backend's VMs.
    pub fn net(&self) -> &Arc<Net> {
        &self.net
    }

    pub fn layout(&self, uuid: Uuid) -> Layout {
        Layout::new(self.cfg.dir.join("qemu").join(uuid.to_string()))
    }

    fn host(&self) -> argv::Host {
        argv::Host { accel: self.cfg.accel, ovmf_code: self.cfg.ovmf_code.clone(), smbios_version: self.cfg.smbios_version.clone() }
    }

    fn pid(&self, uuid: Uuid) -> Option<u32> {
        process::find(&self.layout(uuid).pidfile(), uuid)
    }

    /// Checks what can be checked before anything is made.
    fn preflight(&self, def: &Definition, layout: &Layout) -> Result<(), BackendError> {
        let nets = vec![argv::NetAttach::Isolated; def.nics.len()];
        argv::command(def, &self.host(), layout, &nets).map_err(|e| err(e.0))?;
        for s in layout.sockets() {
            // sun_path holds 108 bytes, the last a NUL.
            if s.as_os_str().len() > 107 {
                return Err(err(format!(
                    "the socket path {} is longer than 107 bytes: use a shorter --data-dir for the agent",
                    s.display()
                )));
            }
        }
        if def.bootrom.as_deref() == Some("uefi") {
            for f in [&self.cfg.ovmf_code, &self.cfg.ovmf_vars] {
                if !f.exists() {
                    return Err(err(format!("bootrom uefi needs OVMF, but {} does not exist (install the ovmf package)", f.display())));
                }
            }
        }
        self.host_files(def)?;
        Ok(())
    }

    /// The cdroms' files, each checked against the `--iso-dir`s: (descriptor, file).
    fn host_files(&self, def: &Definition) -> Result<Vec<(u8, PathBuf)>, BackendError> {
        argv::cdrom_fds(def)
            .into_iter()
            .map(|(i, fd)| {
                let p = def.disks[i].path.as_deref().unwrap_or_default();
                hostpath::allowed(p, &self.cfg.iso_dirs).map(|f| (fd, f)).map_err(|e| err(format!("disks[{i}] (cdrom): {e}")))
            })
            .collect()
    }

    /// The VM's uid, its directory and writable files handed to it (`None`: the agent is
    /// not root, QEMU keeps the agent's user).
    fn confine_files(&self, def: &Definition, layout: &Layout) -> Result<Option<u32>, BackendError> {
        if !self.root {
            return Ok(None);
        }
        let uid = {
            let _one_at_a_time = self.uids.lock().unwrap_or_else(|p| p.into_inner());
            confine::guest_uid(&self.cfg.dir.join("qemu"), &layout.dir, self.cfg.uid_base).map_err(err)?
        };
        let mut files: Vec<PathBuf> =
            def.disks.iter().enumerate().filter(|(_, d)| d.media != "cdrom").map(|(i, _)| layout.disk(i)).collect();
        files.push(layout.ovmf_vars());
        confine::hand_over(&layout.dir, uid, &files).map_err(err)?;
        Ok(Some(uid))
    }

    /// Makes the VM's cgroup with its limits; the `cgroup.procs` files QEMU joins.
    fn make_cgroup(&self, def: &Definition, layout: &Layout) -> Result<Vec<PathBuf>, BackendError> {
        let Some(h) = &self.cfg.cgroups else { return Ok(Vec::new()) };
        let vm = def.uuid.to_string();
        let dirs = h.dirs(&vm);
        let list: String = dirs.iter().map(|d| format!("{}\n", d.display())).collect();
        std::fs::write(layout.cgroups(), list).map_err(|e| err(format!("recording the VM's cgroup: {e}")))?;
        cgroup::create(h, &vm, &cgroup::limits(def)).map_err(err)
    }

    /// Removes the VM's cgroup (its QEMU has gone).
    async fn remove_cgroup(&self, layout: &Layout) {
        let dirs: Vec<PathBuf> = std::fs::read_to_string(layout.cgroups()).unwrap_or_default().lines().map(PathBuf::from).collect();
        if let Err(e) = cgroup::remove(&dirs).await {
            tracing::warn!(dir = %layout.dir.display(), error = %e, "removing the VM's cgroup");
        }
    }

    async fn make_disks(&self, def: &Definition, layout: &Layout) -> Result<(), BackendError> {
        for (i, d) in def.disks.iter().enumerate() {
            if d.media == "cdrom" {
                continue;
            }
            let path = layout.disk(i);
            match d.image_uuid {
                Some(image) => {
                    let base = self.images.get(image).await.map_err(err)?;
                    let want = d.size << 20;
                    if want < base.virtual_size {
                        return Err(err(format!(
                            "disks[{i}] has {} MiB but image {image} needs {} MiB: the disk must be at least as large as the image",
                            d.size,
                            base.virtual_size.div_ceil(1 << 20)
                        )));
                    }
                    // The guest's user reaches nothing outside its own directory: the base
                    // is linked in (read-only, shared with the cache) and named relatively.
                    let link = layout.base(i, &base.format);
                    disks::link_base(&base.path, &link).map_err(|e| err(format!("disks[{i}]: {e}")))?;
                    let rel = PathBuf::from(link.file_name().unwrap_or_default());
                    disks::create_overlay(&self.cfg.qemu_img, &path, &rel, &base.format, d.size)
                        .await
                        .map_err(|e| err(format!("creating disk {i} on image {image}: {e}")))?;
                }
                None => disks::create_empty(&self.cfg.qemu_img, &path, d.size)
                    .await
                    .map_err(|e| err(format!("creating disk {i} ({} MiB): {e}", d.size)))?,
            }
        }
        if def.bootrom.as_deref() == Some("uefi") && !layout.ovmf_vars().exists() {
            std::fs::copy(&self.cfg.ovmf_vars, layout.ovmf_vars())
                .map_err(|e| err(format!("copying the UEFI variable store {}: {e}", self.cfg.ovmf_vars.display())))?;
        }
        Ok(())
    }

    fn remove_dir(&self, layout: &Layout) -> Result<(), BackendError> {
        match std::fs::remove_dir_all(&layout.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(err(format!("removing {}: {e}", layout.dir.display()))),
        }
    }

    /// Starts QEMU for `def` (its disks, taps, cgroup, confinement), with `extra` arguments
    /// after the definition's own (an incoming migration's `-S -incoming defer`).
    async fn launch(&self, def: &Definition, extra: &[&str]) -> Result<(), BackendError> {
        let layout = self.layout(def.uuid);
        if !layout.dir.exists() {
            return Err(err(format!("VM {} has no disks on this server (was it created here?)", def.uuid)));
        }
        self.preflight(def, &layout)?;
        for s in layout.sockets() {
            let _ = std::fs::remove_file(s);
        }
        let host_files = self.host_files(def)?;
        // Disks made before guests were confined have no base linked in: link it now.
        let linked = |i: usize| ["raw", "qcow2"].iter().any(|f| layout.base(i, f).exists());
        for (i, _) in def.disks.iter().enumerate().filter(|(i, d)| d.image_uuid.is_some() && d.media != "cdrom" && !linked(*i)) {
            match disks::localise_backing(&self.cfg.qemu_img, &layout.disk(i), |f| {
                layout.base(i, f).file_name().unwrap_or_default().to_string_lossy().into_owned()
            })
            .await
            {
                Ok(true) => tracing::info!(vm = %def.uuid, disk = i, "the disk's image base is now linked into the VM's directory"),
                Ok(false) => {}
                Err(e) => return Err(err(format!("disks[{i}]: {e}"))),
            }
        }
        let uid = self.confine_files(def, &layout)?;
        let procs = match self.make_cgroup(def, &layout) {
            Ok(p) => p,
            Err(e) if !self.root => {
                tracing::warn!(vm = %def.uuid, error = %e, "the agent is not root and cannot make the VM's cgroup: it runs without limits");
                self.remove_cgroup(&layout).await;
                let _ = std::fs::remove_file(layout.cgroups());
                Vec::new()
            }
            Err(e) => {
                self.remove_cgroup(&layout).await;
                return Err(e);
            }
        };
        let nets = match self.net.attach_as(def, uid).await {
            Ok(a) => a.into_iter().map(|a| match a {
                net::Attach::Tap(t) => argv::NetAttach::Tap(t),
                net::Attach::Isolated => argv::NetAttach::Isolated,
            }),
            Err(e) => {
                self.net.detach(def.uuid, def.nics.len()).await;
                self.remove_cgroup(&layout).await;
                return Err(err(format!("plugging the VM's NICs in: {e}")));
            }
        }
        .collect::<Vec<_>>();
        let mut args = argv::command(def, &self.host(), &layout, &nets).map_err(|e| err(e.0))?;
        args.extend(extra.iter().map(|a| a.to_string()));
        let _ = std::fs::write(layout.running_definition(), serde_json::to_vec_pretty(def).unwrap_or_default());
        let script = confine::script(&confine::Launch { uid, cgroup_procs: &procs, fds: &host_files, qemu: &self.cfg.qemu, args: &args });
        match process::spawn(&script, &layout, def.uuid).await {
            Ok(pid) => {
                tracing::info!(vm = %def.uuid, pid, uid = ?uid, accel = self.cfg.accel.as_str(), "QEMU started");
                Ok(())
            }
            Err(e) => {
                self.net.detach(def.uuid, def.nics.len()).await;
                self.remove_cgroup(&layout).await;
                Err(err(e))
            }
        }
    }

    async fn snapshot_disks(&self, uuid: Uuid, def: &Definition, op: SnapshotOp, name: &str) -> Result<(), BackendError> {
        let layout = self.layout(uuid);
        let running = self.pid(uuid).is_some();
        let disks: Vec<usize> = def.disks.iter().enumerate().filter(|(_, d)| d.media != "cdrom").map(|(i, _)| i).collect();
        let mut done = Vec::new();
        for i in disks {
            let result = if running {
                match disks::snapshot_online(op, &format!("disk{i}"), name) {
                    Some((cmd, args)) => qmp::execute(&layout.qmp(), cmd, Some(args)).await.map(drop),
                    None => Err("the VM must be stopped to roll back to a snapshot".into()),
                }
            } else {
                disks::snapshot_offline(&self.cfg.qemu_img, &layout.disk(i), op, name).await
            };
            match result {
                Ok(()) => done.push(i),
                Err(e) => {
                    // All disks or none: undo a half-made snapshot.
                    if op == SnapshotOp::Create {
                        for j in done {
                            let _ = match disks::snapshot_online(SnapshotOp::Delete, &format!("disk{j}"), name) {
                                Some((cmd, args)) if running => qmp::execute(&layout.qmp(), cmd, Some(args)).await.map(drop),
                                _ => disks::snapshot_offline(&self.cfg.qemu_img, &layout.disk(j), SnapshotOp::Delete, name).await,
                            };
                        }
                    }
                    return Err(err(format!("snapshot {name:?} on disk {i}: {e}")));
                }
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Backend for Qemu {
    fn name(&self) -> &'static str {
        "qemu"
    }

    async fn create(&self, def: &Definition) -> Result<(), BackendError> {
        let layout = self.layout(def.uuid);
        self.preflight(def, &layout)?;
        std::fs::create_dir_all(&layout.dir).map_err(|e| err(format!("creating {}: {e}", layout.dir.display())))?;
        let _ = std::fs::set_permissions(&layout.dir, std::os::unix::fs::PermissionsExt::from_mode(0o700));
        if let Err(e) = self.make_disks(def, &layout).await {
            // Unwind: a failed create leaves nothing behind.
            let _ = self.remove_dir(&layout);
            return Err(e);
        }
        Ok(())
    }

    async fn start(&self, def: &Definition) -> Result<(), BackendError> {
        if self.pid(def.uuid).is_some() {
            return Ok(());
        }
        self.launch(def, &[]).await
    }

    async fn export_boot_disk(&self, uuid: Uuid) -> Result<PathBuf, BackendError> {
        if self.pid(uuid).is_some() {
            return Err(err(format!("VM {uuid} is running: its disk is exported only while it is stopped")));
        }
        let layout = self.layout(uuid);
        let disk = layout.disk(0);
        if !disk.exists() {
            return Err(err(format!("VM {uuid} has no boot disk on this server")));
        }
        // Beside the VM's disks (one filesystem, the agent's own directory), under a name
        // no other export of this VM uses at the same time. Exports of one VM come one at
        // a time (its jobs run in order), so any other export file is one a crash left.
        if let Ok(entries) = std::fs::read_dir(&layout.dir) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with("export-") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let out = layout.dir.join(format!("export-{}.qcow2", Uuid::new_v4()));
        disks::flatten(&self.cfg.qemu_img, &disk, &out).await.map_err(|e| err(format!("flattening the boot disk: {e}")))?;
        Ok(out)
    }

    async fn stop(&self, uuid: Uuid) -> Result<(), BackendError> {
        let Some(pid) = self.pid(uuid) else {
            // A QEMU that died on its own leaves its (empty) cgroup behind.
            self.remove_cgroup(&self.layout(uuid)).await;
            return Ok(());
        };
        // A QEMU with no running guest (paused after a migration, or a target that never
        // ran) would ignore the power button until the timeout: it is quit at once.
        let qmp = self.layout(uuid).qmp();
        let idle = qmp::execute(&qmp, "query-status", None).await.is_ok_and(|s| s["status"].as_str().is_some_and(migrate::is_idle_status));
        let how = if idle { process::quit(pid, &qmp).await } else { process::stop(pid, &qmp, self.cfg.stop_timeout).await }.map_err(err)?;
        tracing::info!(vm = %uuid, ?how, "VM stopped");
        self.net.detach(uuid, self.running_definition(uuid).map(|d| d.nics.len()).unwrap_or(0)).await;
        self.remove_cgroup(&self.layout(uuid)).await;
        Ok(())
    }

    async fn reboot(&self, def: &Definition) -> Result<(), BackendError> {
        self.stop(def.uuid).await?;
        self.start(def).await
    }

    async fn update(&self, old: &Definition, new: &Definition) -> Result<(), BackendError> {
        let layout = self.layout(new.uuid);
        let hardware =
            old.ram != new.ram || old.vcpus != new.vcpus || old.disks != new.disks || !net::only_live_changes(&old.nics, &new.nics);
        let running = self.pid(new.uuid).is_some();
        if hardware && running {
            return Err(err("ram, vcpus, disks and NICs change only while the VM is stopped"));
        }
        if running && cgroup::limits(old) != cgroup::limits(new) {
            // A new cpu_cap (or weight) applies at once: the cgroup's limits are rewritten.
            self.make_cgroup(new, &layout)?;
            tracing::info!(vm = %new.uuid, cpu_cap = ?new.cpu_cap, "cgroup limits updated");
        }
        if running && old.nics != new.nics {
            // Filters and DHCP answers follow at once; the guest keeps running.
            self.net.refresh(new).await.map_err(|e| err(format!("updating the NICs' filters: {e}")))?;
            let _ = std::fs::write(self.layout(new.uuid).running_definition(), serde_json::to_vec_pretty(new).unwrap_or_default());
        }
        for (i, (o, n)) in old.disks.iter().zip(&new.disks).enumerate() {
            if n.media == "cdrom" || o.media == "cdrom" || n.size == o.size {
                continue;
            }
            if n.size < o.size {
                return Err(err(format!("disk {i} cannot shrink from {} MiB to {} MiB: disks only grow", o.size, n.size)));
            }
            disks::grow(&self.cfg.qemu_img, &layout.disk(i), n.size).await.map_err(|e| err(format!("growing disk {i}: {e}")))?;
            tracing::info!(vm = %new.uuid, disk = i, from = o.size, to = n.size, "disk grown");
        }
        for (i, d) in new.disks.iter().enumerate().skip(old.disks.len()) {
            if d.media != "cdrom" && !layout.disk(i).exists() {
                disks::create_empty(&self.cfg.qemu_img, &layout.disk(i), d.size).await.map_err(|e| err(format!("adding disk {i}: {e}")))?;
            }
        }
        for i in new.disks.len()..old.disks.len() {
            let _ = std::fs::remove_file(layout.disk(i));
        }
        Ok(())
    }

    async fn delete(&self, uuid: Uuid) -> Result<(), BackendError> {
        if let Some(pid) = self.pid(uuid) {
            process::kill(pid).await.map_err(err)?;
        }
        self.net.detach(uuid, self.running_definition(uuid).map(|d| d.nics.len()).unwrap_or(0)).await;
        self.remove_cgroup(&self.layout(uuid)).await;
        self.remove_dir(&self.layout(uuid))
    }

    async fn is_running(&self, uuid: Uuid) -> bool {
        self.pid(uuid).is_some()
    }

    async fn exists(&self, uuid: Uuid) -> bool {
        self.layout(uuid).dir.exists()
    }

    async fn snapshot(&self, def: &Definition, op: SnapshotOp, name: &str) -> Result<(), BackendError> {
        self.snapshot_disks(def.uuid, def, op, name).await
    }

    fn can_migrate_live(&self) -> bool {
        true
    }

    async fn migration_files(&self, uuid: Uuid) -> Result<Vec<(String, PathBuf)>, BackendError> {
        self.mig_files(uuid).await
    }

    fn migration_file_path(&self, uuid: Uuid, name: &str) -> Result<PathBuf, BackendError> {
        self.mig_file_path(uuid, name)
    }

    async fn migrate_incoming(&self, def: &Definition) -> Result<IncomingSockets, BackendError> {
        self.mig_incoming(def).await
    }

    async fn migrate_mirror_start(&self, uuid: Uuid, nbd: &std::path::Path) -> Result<(), BackendError> {
        self.mig_mirror_start(uuid, nbd).await
    }

    async fn migrate_mirror_status(&self, uuid: Uuid) -> Result<MirrorStatus, BackendError> {
        self.mig_mirror_status(uuid).await
    }

    async fn migrate_mirror_cancel(&self, uuid: Uuid) -> Result<(), BackendError> {
        self.mig_mirror_cancel(uuid).await
    }

    async fn migrate_ram(&self, uuid: Uuid, ram: &std::path::Path, opts: &RamOptions) -> Result<RamOutcome, BackendError> {
        self.mig_ram(uuid, ram, opts).await
    }

    async fn migrate_resume_source(&self, uuid: Uuid) -> Result<(), BackendError> {
        self.mig_resume_source(uuid).await
    }

    async fn migrate_resume_target(&self, uuid: Uuid) -> Result<(), BackendError> {
        self.mig_resume_target(uuid).await
    }

    fn metadata_socket(&self, uuid: Uuid) -> Option<PathBuf> {
        Some(self.layout(uuid).metadata())
    }

    fn console_paths(&self, uuid: Uuid) -> Option<(PathBuf, PathBuf)> {
        let l = self.layout(uuid);
        Some((l.console(), l.console_log()))
    }

    fn vnc_socket(&self, uuid: Uuid) -> Option<PathBuf> {
        Some(self.layout(uuid).vnc())
    }

    async fn check_network(&self, wanted: &std::collections::BTreeMap<String, u32>) -> Vec<nereid_types::agent::Problem> {
        self.net.check_mtus(wanted).await
    }

    async fn apply_netpolicy(&self, policy: &nereid_types::netpolicy::NetPolicy) -> Result<(), String> {
        self.net.apply_policy(policy).await
    }

    async fn nic_tag_addresses(&self) -> std::collections::BTreeMap<String, String> {
        self.net.nic_tag_addresses().await
    }

    async fn vm_counters(&self, def: &Definition) -> Result<Option<crate::vm_stats::Counters>, BackendError> {
        self.counters(def).await
    }

    fn migration_socket_dir(&self, uuid: Uuid) -> Option<PathBuf> {
        Some(self.layout(uuid).dir)
    }
}

impl Qemu {
    /// Restores the host networking of the VMs that run (after an agent restart).
    pub async fn adopt_network(&self) {
        let mut running = Vec::new();
        for entry in std::fs::read_dir(self.cfg.dir.join("qemu")).into_iter().flatten().flatten() {
            let Some(uuid) = entry.file_name().to_str().and_then(|n| n.parse::<Uuid>().ok()) else { continue };
            if self.pid(uuid).is_some()
                && let Some(def) = self.running_definition(uuid)
            {
                running.push(def);
            }
        }
        self.net.adopt(&running).await;
    }

    fn running_definition(&self, uuid: Uuid) -> Option<Definition> {
        serde_json::from_slice(&std::fs::read(self.layout(uuid).running_definition()).ok()?).ok()
    }
}
