//! Host files a VM may name (a `media: cdrom` disk's `path`): only regular files inside
//! the directories the operator allows (`nereid agent --iso-dir DIR`, repeatable).
//!
//! The path is refused if it is relative or has a `..` component, then resolved with every
//! symlink followed (`canonicalize`) and refused unless what it resolves to lies inside one
//! of the allowed directories (themselves resolved) and is a regular file. So `/etc/shadow`,
//! `<iso-dir>/../x`, a symlink in the ISO directory pointing elsewhere, and another VM's disk
//! are all refused, each with a message that says why and what is allowed. The agent opens
//! the file itself and hands QEMU the open descriptor: the guest's user needs no access
//! to it.

use std::path::{Component, Path, PathBuf};

/// The file `path` names, resolved, if the operator allows VMs to use it.
pub fn allowed(path: &str, dirs: &[PathBuf]) -> Result<PathBuf, String> {
    if dirs.is_empty() {
        return Err(format!(
            "{path} is a host file, and this compute node allows none: start its agent with --iso-dir DIR to let VMs use the ISOs in DIR"
        ));
    }
    let allowed_list = || dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ");
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(format!("{path:?} is not an absolute path (allowed: files in {})", allowed_list()));
    }
    if p.components().any(|c| c == Component::ParentDir) {
        return Err(format!("{path} has a \"..\" component: name the file directly (allowed: files in {})", allowed_list()));
    }
    let real = std::fs::canonicalize(p).map_err(|e| format!("cannot open {path}: {e}"))?;
    let inside = dirs.iter().filter_map(|d| std::fs::canonicalize(d).ok()).any(|d| real.starts_with(&d) && real != d);
    if !inside {
        let via = if real != p { format!(" (it resolves to {})", real.display()) } else { String::new() };
        return Err(format!("{path}{via} is outside the directories this compute node allows VMs to use: {}", allowed_list()));
    }
    let meta = std::fs::metadata(&real).map_err(|e| format!("cannot open {path}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{path} is not a regular file"));
    }
    Ok(real)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_inside_the_allowed_directories() {
        let t = tempfile::tempdir().unwrap();
        let iso = t.path().join("iso");
        std::fs::create_dir_all(iso.join("sub")).unwrap();
        std::fs::write(iso.join("debian.iso"), b"x").unwrap();
        std::fs::write(iso.join("sub/alpine.iso"), b"x").unwrap();
        // Another VM's disk, beside the ISO directory.
        let other = t.path().join("qemu/6f3d3f1c-8a51-4e43-9b8c-2f0f5d7c9a10");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join("disk0.qcow2"), b"secret").unwrap();
        std::os::unix::fs::symlink(other.join("disk0.qcow2"), iso.join("innocent.iso")).unwrap();
        std::os::unix::fs::symlink("/etc", iso.join("etc")).unwrap();
        std::os::unix::fs::symlink(iso.join("debian.iso"), iso.join("latest.iso")).unwrap();
        let dirs = vec![iso.clone()];
        let s = |p: &Path| p.to_str().unwrap().to_string();

        assert_eq!(allowed(&s(&iso.join("debian.iso")), &dirs).unwrap(), std::fs::canonicalize(iso.join("debian.iso")).unwrap());
        assert!(allowed(&s(&iso.join("sub/alpine.iso")), &dirs).is_ok(), "subdirectories are inside");
        assert!(allowed(&s(&iso.join("latest.iso")), &dirs).is_ok(), "a symlink that stays inside is fine");

        let refused = |p: &str, why: &str| {
            let e = allowed(p, &dirs).unwrap_err();
            assert!(e.contains(why), "{p}: {e}");
        };
        refused("/etc/shadow", "outside the directories");
        refused(&s(&other.join("disk0.qcow2")), "outside the directories");
        refused(&format!("{}/../qemu/6f3d3f1c-8a51-4e43-9b8c-2f0f5d7c9a10/disk0.qcow2", iso.display()), "\"..\"");
        refused(&s(&iso.join("innocent.iso")), "resolves to");
        refused(&s(&iso.join("etc/shadow")), "outside the directories");
        refused("debian.iso", "not an absolute path");
        refused(&s(&iso.join("missing.iso")), "cannot open");
        refused(&s(&iso.join("sub")), "not a regular file");
        refused(&s(&iso), "outside the directories");
        let e = allowed("/etc/shadow", &[]).unwrap_err();
        assert!(e.contains("--iso-dir"), "{e}");
    }
}
