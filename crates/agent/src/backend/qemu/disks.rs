//! A VM's disks as qcow2 files, through `qemu-img`: copy-on-write overlays on a cached
//! image base (O(1) whatever the image's size), empty disks, growth, and snapshots.
//!
//! ```text
//!   images/<image>/base.raw|qcow2   (read-only, shared)  ◄── backing file ── qemu/<vm>/disk0.qcow2
//!                                                                         qemu/<vm>/disk1.qcow2 (empty)
//! ```
//! Snapshots are qcow2 internal snapshots, taken on every disk under one name: with
//! `qemu-img` while the VM is stopped, through QMP while it runs.

use std::path::Path;

use serde_json::{Value, json};

pub use crate::backend::SnapshotOp;

const MIB: u64 = 1 << 20;

/// Runs `qemu-img args…`; the error carries qemu-img's own message. Dropped before it
/// finishes (an export whose headnode gave up), qemu-img is killed and reaped by the
/// runtime rather than left holding the disk's lock, which would keep the VM from
/// starting again until a long conversion ended.
async fn qemu_img(bin: &Path, args: &[&str]) -> Result<String, String> {
    let out = tokio::process::Command::new(bin)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("could not run {}: {e}", bin.display()))?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let err = err.trim().trim_start_matches("qemu-img: ");
    Err(if err.is_empty() { format!("qemu-img {} failed ({})", args.first().unwrap_or(&""), out.status) } else { err.to_string() })
}

/// A copy-on-write disk of `size_mib` on `base` (whose format is `base_format`).
pub async fn create_overlay(bin: &Path, disk: &Path, base: &Path, base_format: &str, size_mib: u64) -> Result<(), String> {
    let size = format!("{}", size_mib * MIB);
    let backing = format!("backing_file={},backing_fmt={base_format}", base.display().to_string().replace(',', ",,"));
    let disk_s = disk.to_string_lossy();
    qemu_img(bin, &["create", "-q", "-f", "qcow2", "-o", &backing, &disk_s, &size]).await.map(drop)
}

/// Makes `link` a hard link to the image base `base` (again if it exists), read-only to
/// everyone: the guest's user reads its base without any access to the image cache.
pub fn link_base(base: &Path, link: &Path) -> Result<(), String> {
    let _ = std::fs::remove_file(link);
    std::fs::hard_link(base, link).map_err(|e| {
        format!(
            "linking the image base {} into the VM's directory (the image cache and the VMs must share one filesystem): {e}",
            base.display()
        )
    })?;
    std::fs::set_permissions(link, std::os::unix::fs::PermissionsExt::from_mode(0o444))
        .map_err(|e| format!("making {} read-only: {e}", link.display()))
}

/// Makes an overlay made before guests were confined (its backing file an absolute path
/// into the image cache, which the guest's user cannot reach) use a base linked into its
/// own directory as `link_name` instead. Overlays already so, and disks without a backing
/// file, are left alone; true when it changed the disk.
pub async fn localise_backing(bin: &Path, disk: &Path, link_name: impl Fn(&str) -> String) -> Result<bool, String> {
    let out = qemu_img(bin, &["info", "-U", "--output=json", &disk.to_string_lossy()]).await?;
    let v: Value = serde_json::from_str(&out).map_err(|e| format!("qemu-img info: {e}"))?;
    let Some(backing) = v.get("backing-filename").and_then(Value::as_str) else { return Ok(false) };
    if !Path::new(backing).is_absolute() {
        return Ok(false);
    }
    let format = v.get("backing-filename-format").and_then(Value::as_str).unwrap_or("raw").to_string();
    let name = link_name(&format);
    let dir = disk.parent().unwrap_or(Path::new("."));
    link_base(Path::new(backing), &dir.join(&name))?;
    qemu_img(bin, &["rebase", "-u", "-F", &format, "-b", &name, &disk.to_string_lossy()]).await?;
    Ok(true)
}

/// An empty disk of `size_mib`.
pub async fn create_empty(bin: &Path, disk: &Path, size_mib: u64) -> Result<(), String> {
    let size = format!("{}", size_mib * MIB);
    qemu_img(bin, &["create", "-q", "-f", "qcow2", &disk.to_string_lossy(), &size]).await.map(drop)
}

/// The disk's virtual size in bytes.
pub async fn virtual_size(bin: &Path, disk: &Path) -> Result<u64, String> {
    let out = qemu_img(bin, &["info", "-U", "--output=json", &disk.to_string_lossy()]).await?;
    let v: Value = serde_json::from_str(&out).map_err(|e| format!("qemu-img info: {e}"))?;
    v.get("virtual-size").and_then(Value::as_u64).ok_or_else(|| "qemu-img info gave no virtual-size".to_string())
}

/// Grows the disk to `size_mib` (never shrinks: the caller refuses that first).
pub async fn grow(bin: &Path, disk: &Path, size_mib: u64) -> Result<(), String> {
    let size = format!("{}", size_mib * MIB);
    qemu_img(bin, &["resize", "-q", "-f", "qcow2", &disk.to_string_lossy(), &size]).await.map(drop)
}

/// Flattens `disk` (an overlay and its base, or a standalone disk) into `out`: one
/// standalone qcow2 with compressed clusters. The agent's image cache uses a qcow2 base
/// as it is, so an image made this way needs no decompression on the servers that run
/// it, and clusters the guest never wrote stay absent rather than costing zeros. A
/// failed conversion leaves no `out` behind. The VM must be stopped: qemu-img takes the
/// disk's lock, so it refuses a disk a running QEMU holds.
pub async fn flatten(bin: &Path, disk: &Path, out: &Path) -> Result<(), String> {
    let r = qemu_img(bin, &["convert", "-q", "-c", "-O", "qcow2", &disk.to_string_lossy(), &out.to_string_lossy()]).await;
    if r.is_err() {
        let _ = std::fs::remove_file(out);
    }
    r.map(drop)
}

/// Snapshot names a disk has.
pub async fn snapshots(bin: &Path, disk: &Path) -> Result<Vec<String>, String> {
    let out = qemu_img(bin, &["info", "-U", "--output=json", &disk.to_string_lossy()]).await?;
    let v: Value = serde_json::from_str(&out).map_err(|e| format!("qemu-img info: {e}"))?;
    Ok(v.get("snapshots")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|s| s.get("name").and_then(Value::as_str).map(str::to_string)).collect())
        .unwrap_or_default())
}

/// A snapshot operation on a stopped VM's disk.
pub async fn snapshot_offline(bin: &Path, disk: &Path, op: SnapshotOp, name: &str) -> Result<(), String> {
    let flag = match op {
        SnapshotOp::Create => "-c",
        SnapshotOp::Rollback => "-a",
        SnapshotOp::Delete => "-d",
    };
    qemu_img(bin, &["snapshot", "-q", flag, name, &disk.to_string_lossy()]).await.map(drop)
}

/// The QMP command and arguments for a snapshot of a running VM's drive `disk<i>`.
pub fn snapshot_online(op: SnapshotOp, device: &str, name: &str) -> Option<(&'static str, Value)> {
    match op {
        SnapshotOp::Create => Some(("blockdev-snapshot-internal-sync", json!({"device": device, "name": name}))),
        SnapshotOp::Delete => Some(("blockdev-snapshot-delete-internal-sync", json!({"device": device, "name": name}))),
        // Rolling back under a running guest would corrupt it.
        SnapshotOp::Rollback => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qemu_img_bin() -> std::path::PathBuf {
        "qemu-img".into()
    }

    #[tokio::test]
    async fn overlays_grow_and_snapshot() {
        let d = tempfile::tempdir().unwrap();
        let bin = qemu_img_bin();
        let base = d.path().join("base.raw");
        std::fs::write(&base, vec![7u8; 3 * MIB as usize]).unwrap();
        let disk = d.path().join("disk0.qcow2");
        create_overlay(&bin, &disk, &base, "raw", 8).await.unwrap();
        assert_eq!(virtual_size(&bin, &disk).await.unwrap(), 8 * MIB);
        assert!(std::fs::metadata(&disk).unwrap().len() < MIB, "an overlay copies nothing");
        grow(&bin, &disk, 16).await.unwrap();
        assert_eq!(virtual_size(&bin, &disk).await.unwrap(), 16 * MIB);
        snapshot_offline(&bin, &disk, SnapshotOp::Create, "before").await.unwrap();
        assert_eq!(snapshots(&bin, &disk).await.unwrap(), ["before"]);
        snapshot_offline(&bin, &disk, SnapshotOp::Rollback, "before").await.unwrap();
        snapshot_offline(&bin, &disk, SnapshotOp::Delete, "before").await.unwrap();
        assert!(snapshots(&bin, &disk).await.unwrap().is_empty());
        let e = snapshot_offline(&bin, &disk, SnapshotOp::Rollback, "nope").await.unwrap_err();
        assert!(e.contains("nope"), "qemu-img's message names the snapshot: {e}");
        let empty = d.path().join("disk1.qcow2");
        create_empty(&bin, &empty, 4).await.unwrap();
        assert_eq!(virtual_size(&bin, &empty).await.unwrap(), 4 * MIB);
        // A base linked in and named relatively, as VMs' disks have it.
        let vm = d.path().join("vm");
        std::fs::create_dir(&vm).unwrap();
        link_base(&base, &vm.join("base0.raw")).unwrap();
        link_base(&base, &vm.join("base0.raw")).unwrap();
        create_overlay(&bin, &vm.join("disk0.qcow2"), Path::new("base0.raw"), "raw", 8).await.unwrap();
        assert_eq!(virtual_size(&bin, &vm.join("disk0.qcow2")).await.unwrap(), 8 * MIB);
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(vm.join("base0.raw")).unwrap();
        assert_eq!((m.mode() & 0o777, m.ino()), (0o444, std::fs::metadata(&base).unwrap().ino()), "a read-only link, not a copy");
        assert!(!localise_backing(&bin, &vm.join("disk0.qcow2"), |f| format!("base0.{f}")).await.unwrap(), "already local");
        // An overlay from before confinement: its base by absolute path, linked in and renamed.
        let old = vm.join("disk1.qcow2");
        create_overlay(&bin, &old, &base, "raw", 8).await.unwrap();
        assert!(localise_backing(&bin, &old, |f| format!("base1.{f}")).await.unwrap());
        let info = qemu_img(&bin, &["info", "--output=json", &old.to_string_lossy()]).await.unwrap();
        assert!(info.contains("\"backing-filename\": \"base1.raw\""), "{info}");
        assert_eq!(std::fs::metadata(vm.join("base1.raw")).unwrap().ino(), std::fs::metadata(&base).unwrap().ino());
        assert!(!localise_backing(&bin, &vm.join("missing.qcow2"), |f| f.to_string()).await.is_ok_and(|x| x));
        let e = create_overlay(&bin, &d.path().join("x.qcow2"), &d.path().join("missing.raw"), "raw", 8).await.unwrap_err();
        assert!(e.contains("missing.raw"), "{e}");
    }

    #[tokio::test]
    async fn flatten_makes_one_standalone_compressed_disk_of_base_and_overlay() {
        let d = tempfile::tempdir().unwrap();
        let bin = qemu_img_bin();
        let base = d.path().join("base.raw");
        let mut bytes = vec![0u8; 4 * MIB as usize];
        bytes[..10].copy_from_slice(b"from-base!");
        std::fs::write(&base, &bytes).unwrap();
        let disk = d.path().join("disk0.qcow2");
        create_overlay(&bin, &disk, &base, "raw", 8).await.unwrap();
        let out = d.path().join("export.qcow2");
        flatten(&bin, &disk, &out).await.unwrap();
        let info: Value = serde_json::from_str(&qemu_img(&bin, &["info", "--output=json", &out.to_string_lossy()]).await.unwrap()).unwrap();
        assert_eq!(info["format"], "qcow2");
        assert!(info.get("backing-filename").is_none(), "standalone: {info}");
        assert_eq!(info["virtual-size"], 8 * MIB);
        // Reading it back as raw shows the base's bytes (and the size the overlay had).
        let raw = d.path().join("back.raw");
        qemu_img(&bin, &["convert", "-O", "raw", &out.to_string_lossy(), &raw.to_string_lossy()]).await.unwrap();
        let back = std::fs::read(&raw).unwrap();
        assert_eq!(&back[..10], b"from-base!");
        assert_eq!(back.len() as u64, 8 * MIB);
        // A failure leaves nothing behind and says why.
        let gone = d.path().join("gone.qcow2");
        let e = flatten(&bin, &d.path().join("missing.qcow2"), &gone).await.unwrap_err();
        assert!(e.contains("missing.qcow2"), "{e}");
        assert!(!gone.exists());
    }

    /// Whether process `pid` still runs (gone, or a zombie awaiting its reaper, is not).
    fn alive(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
            .unwrap_or(false)
    }

    #[tokio::test]
    async fn an_abandoned_flatten_kills_qemu_img() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        // A qemu-img that takes as long as a huge conversion, saying who it is.
        let bin = d.path().join("slow-qemu-img");
        let pidfile = d.path().join("pid");
        std::fs::write(&bin, format!("#!/bin/sh\necho $$ > {}\nexec sleep 600\n", pidfile.display())).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let (disk, out) = (d.path().join("disk0.qcow2"), d.path().join("export.qcow2"));
        let task = tokio::spawn(async move { flatten(&bin, &disk, &out).await });
        let pid = loop {
            if let Some(p) = std::fs::read_to_string(&pidfile).ok().and_then(|s| s.trim().parse::<u32>().ok()) {
                break p;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        assert!(alive(pid));
        // The export's handler is dropped (its headnode went away).
        task.abort();
        let _ = task.await;
        for _ in 0..500 {
            if !alive(pid) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("qemu-img (pid {pid}) still runs after its export was dropped");
    }
}
