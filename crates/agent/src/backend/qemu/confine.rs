//! Confined guests: each VM's QEMU runs as its own unprivileged user, with no capabilities,
//! `no_new_privs`, QEMU's seccomp sandbox (`-sandbox`, in the command line) and in the
//! VM's cgroup, from its own directory.
//!
//! ```text
//!   agent (root)                                   QEMU (uid U, gid U, no groups, no caps)
//!   ─ VM dir 0700 owned by U; disks, vars owned by U; image base hard-linked in, read-only
//!   ─ taps made with `ip tuntap add … user U`, on their bridges
//!   ─ cgroup made, limits written
//!   ─ sh -c: echo $$ > <cgroup>/cgroup.procs …      (joins before anything runs)
//!            cd <VM dir>; exec N< <allowed ISO>     (host files as open descriptors)
//!            exec setsid setpriv --reuid U … -- qemu <argv with relative paths>
//! ```
//! Per-VM users, not one shared `nereid-qemu` user: one guest that escapes QEMU still cannot
//! read or write another guest's disks, sockets or memory. The uid is `base + slot`
//! (default base 2,000,000; the lowest slot no other VM directory here holds), written in
//! the VM's directory (`uid`) so stops, agent restarts and upgrades keep it. The uids need
//! no `/etc/passwd` entry. An agent that is not root cannot change users (nor, usually, make
//! cgroups): it says so at start, and its QEMUs run as its own user, still under seccomp and
//! without new privileges.
//!
//! QEMU starts in its VM directory and names its files relatively, so the guest's user
//! needs no search permission on the agent's data directory (which is 0700); it can reach
//! nothing else there. (`-daemonize` and `-pidfile` are not used: the sandbox forbids the
//! fork of `-daemonize`, and `-pidfile` resolves its absolute path; the agent writes the
//! pidfile and `setsid` detaches QEMU instead.)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The first uid of guests unless the operator says otherwise (`--guest-uid-base`).
pub const DEFAULT_UID_BASE: u32 = 2_000_000;
/// How many VMs one compute node may hold uids for.
pub const SLOTS: u32 = 1_000_000;

/// The lowest uid from `base` that no VM in `used` has.
pub fn pick(used: &BTreeSet<u32>, base: u32) -> Option<u32> {
    (0..SLOTS).map(|n| base.saturating_add(n)).find(|u| !used.contains(u))
}

/// The file in a VM directory that records its guest uid.
pub fn uid_file(vm_dir: &Path) -> PathBuf {
    vm_dir.join("uid")
}

fn read_uid(vm_dir: &Path) -> Option<u32> {
    std::fs::read_to_string(uid_file(vm_dir)).ok()?.trim().parse().ok()
}

/// The guest uid of the VM in `vm_dir` (one of the directories under `vms`): the one it
/// has, else a new one, recorded. Callers allocate one at a time.
pub fn guest_uid(vms: &Path, vm_dir: &Path, base: u32) -> Result<u32, String> {
    if let Some(u) = read_uid(vm_dir) {
        return Ok(u);
    }
    let used: BTreeSet<u32> = std::fs::read_dir(vms).into_iter().flatten().flatten().filter_map(|e| read_uid(&e.path())).collect();
    let uid = pick(&used, base).ok_or_else(|| format!("no free guest uid from {base}: {SLOTS} VMs hold them all"))?;
    std::fs::write(uid_file(vm_dir), format!("{uid}\n")).map_err(|e| format!("recording the guest uid in {}: {e}", vm_dir.display()))?;
    Ok(uid)
}

/// Shell quoting: one single-quoted word.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// What the launcher does before it becomes QEMU.
#[derive(Debug, Clone)]
pub struct Launch<'a> {
    /// The guest's uid; `None` when the agent is not root (QEMU then runs as the agent's
    /// user, still without new privileges or capabilities, under seccomp).
    pub uid: Option<u32>,
    /// The `cgroup.procs` files of the VM's cgroup(s).
    pub cgroup_procs: &'a [PathBuf],
    /// Host files QEMU gets as open descriptors (read-only): (descriptor, file).
    pub fds: &'a [(u8, PathBuf)],
    pub qemu: &'a Path,
    pub args: &'a [String],
}

/// The `sh -c` script that starts a confined QEMU (run with the VM directory as its
/// working directory).
pub fn script(l: &Launch) -> String {
    let mut s = String::from("set -e\n");
    for p in l.cgroup_procs {
        s.push_str(&format!("echo $$ >{}\n", quote(&p.to_string_lossy())));
    }
    for (fd, p) in l.fds {
        s.push_str(&format!("exec {fd}<{}\n", quote(&p.to_string_lossy())));
    }
    let user = match l.uid {
        Some(u) => format!("--reuid={u} --regid={u} --clear-groups --no-new-privs --inh-caps=-all --bounding-set=-all"),
        None => "--no-new-privs --inh-caps=-all".to_string(),
    };
    s.push_str(&format!("exec setsid setpriv {user} -- {}", quote(&l.qemu.to_string_lossy())));
    for a in l.args {
        s.push(' ');
        s.push_str(&quote(a));
    }
    s.push('\n');
    s
}

/// Makes the agent's data directory private (0700): guests' users must reach nothing in it
/// (the image cache holds every tenant's images) — each QEMU starts inside its own VM
/// directory and needs no path through it. True if the mode changed.
pub fn make_private(dir: &Path) -> Result<bool, String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?.permissions().mode() & 0o7777;
    if mode & 0o077 == 0 {
        return Ok(false);
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode & 0o700))
        .map_err(|e| format!("making {} private: {e}", dir.display()))?;
    Ok(true)
}

/// Gives the VM's directory and the files QEMU writes (disks, UEFI variables) to its
/// user; the image base links stay root's and read-only.
pub fn hand_over(vm_dir: &Path, uid: u32, files: &[PathBuf]) -> Result<(), String> {
    let own = |p: &Path| std::os::unix::fs::chown(p, Some(uid), Some(uid)).map_err(|e| format!("giving {} to uid {uid}: {e}", p.display()));
    own(vm_dir)?;
    std::fs::set_permissions(vm_dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .map_err(|e| format!("making {} private: {e}", vm_dir.display()))?;
    for f in files.iter().filter(|f| f.exists()) {
        own(f)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_are_per_vm_recorded_and_reused() {
        assert_eq!(pick(&BTreeSet::new(), 2_000_000), Some(2_000_000));
        assert_eq!(pick(&[2_000_000, 2_000_002].into(), 2_000_000), Some(2_000_001));
        let t = tempfile::tempdir().unwrap();
        let vms = t.path();
        let (a, b) = (vms.join("a"), vms.join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        let ua = guest_uid(vms, &a, 5000).unwrap();
        let ub = guest_uid(vms, &b, 5000).unwrap();
        assert_eq!((ua, ub), (5000, 5001), "each VM its own");
        assert_eq!(guest_uid(vms, &a, 5000).unwrap(), 5000, "kept across starts");
        std::fs::remove_dir_all(&a).unwrap();
        let c = vms.join("c");
        std::fs::create_dir_all(&c).unwrap();
        assert_eq!(guest_uid(vms, &c, 5000).unwrap(), 5000, "a destroyed VM's uid is free again");
    }

    #[test]
    fn the_data_directory_is_made_private() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(make_private(t.path()).unwrap());
        assert_eq!(std::fs::metadata(t.path()).unwrap().permissions().mode() & 0o7777, 0o700);
        assert!(!make_private(t.path()).unwrap(), "already private");
    }

    #[test]
    fn the_launcher_joins_the_cgroup_opens_host_files_and_drops_everything() {
        let procs =
            [PathBuf::from("/sys/fs/cgroup/cpu/nereid/vm/cgroup.procs"), PathBuf::from("/sys/fs/cgroup/memory/nereid/vm/cgroup.procs")];
        let fds = [(3, PathBuf::from("/srv/iso/it's.iso"))];
        let args = ["-uuid".to_string(), "x y".to_string()];
        let s =
            script(&Launch { uid: Some(2_000_007), cgroup_procs: &procs, fds: &fds, qemu: Path::new("qemu-system-x86_64"), args: &args });
        assert_eq!(
            s,
            "set -e\n\
             echo $$ >'/sys/fs/cgroup/cpu/nereid/vm/cgroup.procs'\n\
             echo $$ >'/sys/fs/cgroup/memory/nereid/vm/cgroup.procs'\n\
             exec 3<'/srv/iso/it'\\''s.iso'\n\
             exec setsid setpriv --reuid=2000007 --regid=2000007 --clear-groups --no-new-privs --inh-caps=-all --bounding-set=-all -- 'qemu-system-x86_64' '-uuid' 'x y'\n"
        );
        // An agent that is not root cannot change users: QEMU keeps the agent's, confined otherwise.
        let s = script(&Launch { uid: None, cgroup_procs: &[], fds: &[], qemu: Path::new("qemu"), args: &[] });
        assert_eq!(s, "set -e\nexec setsid setpriv --no-new-privs --inh-caps=-all -- 'qemu'\n");
        // The quoting survives a real shell.
        let out = std::process::Command::new("sh").args(["-c", &format!("printf %s {}", quote("a'b \"$c\" `d`"))]).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "a'b \"$c\" `d`");
    }
}
