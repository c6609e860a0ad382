//! One cgroup per VM: what bounds a guest's CPU, memory and I/O on its compute node.
//!
//! ```text
//!   Definition ──limits()──► Limits ──► cgroup v2: <v2 mount>/nereid.slice/<vm>/
//!                                          cpu.max  cpu.weight  memory.max  io.weight
//!                                   └─► cgroup v1: <controller mount><agent's own path>/nereid/<vm>/
//!                                          cpu.cfs_quota_us/cfs_period_us  cpu.shares
//!                                          memory.limit_in_bytes  blkio.weight (when the
//!                                          I/O scheduler has it)
//! ```
//! Which one is chosen by [`detect`]: the unified (v2) hierarchy when it has the `cpu` and
//! `memory` controllers (modern systemd hosts), else the v1 controllers (hybrid hosts and
//! many containers). The cgroup is made and its limits written before QEMU joins it (the
//! launcher writes its own pid to each `cgroup.procs`, then execs QEMU), so a guest never
//! runs unbounded. The directories are recorded in the VM's directory (`cgroup`), so a
//! restarted agent finds them whatever its own cgroup is then, and removes them once the
//! VM stops or is destroyed.
//!
//! Triton's units: `cpu_cap` is percent of one CPU (100 = one core; absent or 0 =
//! uncapped); `cpu_shares` (the package's `fss`) is relative weight with 100 the default;
//! `zfs_io_priority` is a relative I/O weight with 100 the default. Memory:
//! `memory.max = ram + overhead`, overhead = 384 MiB + min(ram / 8, 1 GiB) — QEMU's own
//! code, device state, TCG's translation cache and the image's page cache (v1 counts it),
//! bounded whatever the guest does.

use std::path::{Path, PathBuf};

use nereid_types::agent::Definition;

/// The CFS period every cap is expressed in (µs).
pub const PERIOD_US: u64 = 100_000;

/// What one VM may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// CPU time per [`PERIOD_US`], µs; `None` = uncapped.
    pub cpu_quota_us: Option<u64>,
    /// Relative CPU weight, Triton's scale (100 = default).
    pub cpu_shares: u32,
    /// Bytes of memory (guest RAM plus QEMU's overhead).
    pub memory_bytes: u64,
    /// Relative I/O weight, Triton's scale (100 = default).
    pub io_priority: u32,
}

const MIB: u64 = 1 << 20;

/// QEMU's memory on top of the guest's RAM (MiB): see the module documentation.
pub fn overhead_mib(ram_mib: u64) -> u64 {
    384 + (ram_mib / 8).min(1024)
}

/// The limits `def` asks for.
pub fn limits(def: &Definition) -> Limits {
    Limits {
        cpu_quota_us: def.cpu_cap.filter(|c| *c > 0).map(|c| u64::from(c) * PERIOD_US / 100),
        cpu_shares: def.cpu_shares.filter(|s| *s > 0).unwrap_or(100),
        memory_bytes: (def.ram + overhead_mib(def.ram)) * MIB,
        io_priority: def.zfs_io_priority.unwrap_or(100),
    }
}

/// The cgroup hierarchy this host gives VMs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// The unified hierarchy: VMs under `parent` (`<mount>/nereid.slice`).
    V2 { parent: PathBuf },
    /// Per-controller hierarchies: the parent directory of VMs' cgroups in each (`cpu`
    /// is required; the others are used when mounted). Controllers mounted together
    /// (`cpu,cpuacct`) share a parent.
    V1 { cpu: PathBuf, cpuacct: Option<PathBuf>, memory: Option<PathBuf>, blkio: Option<PathBuf> },
}

impl Hierarchy {
    /// For logs and sysinfo: `cgroup v2 (/sys/fs/cgroup/nereid.slice)` or `cgroup v1 (…)`.
    pub fn describe(&self) -> String {
        match self {
            Hierarchy::V2 { parent } => format!("cgroup v2 ({})", parent.display()),
            Hierarchy::V1 { cpu, .. } => format!("cgroup v1 ({})", cpu.display()),
        }
    }

    /// The VM's cgroup directories (one per distinct hierarchy).
    pub fn dirs(&self, vm: &str) -> Vec<PathBuf> {
        match self {
            Hierarchy::V2 { parent } => vec![parent.join(vm)],
            Hierarchy::V1 { cpu, cpuacct, memory, blkio } => {
                let mut out: Vec<PathBuf> = Vec::new();
                for p in std::iter::once(cpu).chain(cpuacct).chain(memory).chain(blkio) {
                    let d = p.join(vm);
                    if !out.contains(&d) {
                        out.push(d);
                    }
                }
                out
            }
        }
    }
}

/// The hierarchy to use, from `/proc/self/mounts` and `/proc/self/cgroup`; `None` when
/// neither a usable v2 nor a v1 `cpu` controller is mounted. `controllers_of(mount)`
/// reads a v2 mount's `cgroup.controllers`.
pub fn detect(mounts: &str, self_cgroup: &str, controllers_of: impl Fn(&Path) -> String) -> Option<Hierarchy> {
    let mut v2 = None;
    let mut v1: Vec<(Vec<String>, PathBuf)> = Vec::new();
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 4 {
            continue;
        }
        match f[2] {
            "cgroup2" => v2 = Some(PathBuf::from(unescape(f[1]))),
            "cgroup" => v1.push((f[3].split(',').map(str::to_string).collect(), PathBuf::from(unescape(f[1])))),
            _ => {}
        }
    }
    if let Some(m) = &v2 {
        let have = controllers_of(m);
        let have: Vec<&str> = have.split_whitespace().collect();
        if have.contains(&"cpu") && have.contains(&"memory") {
            return Some(Hierarchy::V2 { parent: m.join("nereid.slice") });
        }
    }
    let parent = |ctrl: &str| -> Option<PathBuf> {
        let (names, mount) = v1.iter().find(|(opts, _)| opts.iter().any(|o| o == ctrl))?;
        // The agent's own cgroup in that hierarchy ("N:cpu,cpuacct:/path").
        let own = self_cgroup
            .lines()
            .filter_map(|l| l.split_once(':')?.1.split_once(':'))
            .find(|(cs, _)| cs.split(',').any(|c| names.iter().any(|n| n == c)))
            .map(|(_, p)| p.trim_start_matches('/').to_string())
            .unwrap_or_default();
        Some(mount.join(own).join("nereid"))
    };
    let cpu = parent("cpu")?;
    Some(Hierarchy::V1 { cpu, cpuacct: parent("cpuacct"), memory: parent("memory"), blkio: parent("blkio") })
}

/// `/proc/mounts` escapes spaces and the like as `\040`.
fn unescape(s: &str) -> String {
    s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")
}

/// This host's hierarchy, read from `/proc`.
pub fn detect_host() -> Option<Hierarchy> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    detect(&mounts, &own, |m| std::fs::read_to_string(m.join("cgroup.controllers")).unwrap_or_default())
}

fn write(dir: &Path, file: &str, value: &str) -> Result<(), String> {
    std::fs::write(dir.join(file), value).map_err(|e| format!("writing {value:?} to {}: {e}", dir.join(file).display()))
}

/// Writes `l` into a v2 cgroup directory (`io.weight` only where the io controller is on).
pub fn apply_v2(dir: &Path, l: &Limits) -> Result<(), String> {
    let quota = l.cpu_quota_us.map(|q| q.to_string()).unwrap_or_else(|| "max".into());
    write(dir, "cpu.max", &format!("{quota} {PERIOD_US}"))?;
    // Triton's default share (100) is cgroup v2's default weight (100).
    write(dir, "cpu.weight", &l.cpu_shares.clamp(1, 10_000).to_string())?;
    write(dir, "memory.max", &l.memory_bytes.to_string())?;
    if dir.join("io.weight").exists() {
        write(dir, "io.weight", &format!("default {}", l.io_priority.clamp(1, 10_000)))?;
    }
    Ok(())
}

/// Writes `l` into v1 cgroup directories (`None`: that controller is not mounted).
pub fn apply_v1(cpu: &Path, memory: Option<&Path>, blkio: Option<&Path>, l: &Limits) -> Result<(), String> {
    write(cpu, "cpu.cfs_period_us", &PERIOD_US.to_string())?;
    write(cpu, "cpu.cfs_quota_us", &l.cpu_quota_us.map(|q| q.to_string()).unwrap_or_else(|| "-1".into()))?;
    // v1's default share is 1024 for Triton's 100.
    write(cpu, "cpu.shares", &(u64::from(l.cpu_shares) * 1024 / 100).clamp(2, 262_144).to_string())?;
    if let Some(m) = memory {
        write(m, "memory.limit_in_bytes", &l.memory_bytes.to_string())?;
    }
    // blkio.weight exists only under the CFQ/BFQ I/O schedulers.
    if let Some(b) = blkio.filter(|b| b.join("blkio.weight").exists()) {
        write(b, "blkio.weight", &l.io_priority.clamp(10, 1000).to_string())?;
    }
    Ok(())
}

/// Makes the cgroup of VM `vm` with limits `l` (again, if it exists: limits are
/// rewritten); the `cgroup.procs` files a process writes its pid to, to join it.
pub fn create(h: &Hierarchy, vm: &str, l: &Limits) -> Result<Vec<PathBuf>, String> {
    let dirs = h.dirs(vm);
    if let Hierarchy::V2 { parent } = h {
        std::fs::create_dir_all(parent).map_err(|e| format!("creating {}: {e}", parent.display()))?;
        // The parent hands its controllers down (already so on most hosts; io may be absent).
        for ctrl in ["+cpu", "+memory", "+io"] {
            for d in [parent.parent().unwrap_or(parent), parent.as_path()] {
                let _ = std::fs::write(d.join("cgroup.subtree_control"), ctrl);
            }
        }
    }
    for d in &dirs {
        std::fs::create_dir_all(d).map_err(|e| format!("creating the VM's cgroup {}: {e}", d.display()))?;
    }
    match h {
        Hierarchy::V2 { .. } => apply_v2(&dirs[0], l)?,
        Hierarchy::V1 { cpu, memory, blkio, .. } => {
            let vm_dir = |p: &Path| p.join(vm);
            apply_v1(&vm_dir(cpu), memory.as_deref().map(vm_dir).as_deref(), blkio.as_deref().map(vm_dir).as_deref(), l)?
        }
    }
    Ok(dirs.iter().map(|d| d.join("cgroup.procs")).collect())
}

/// Removes cgroup directories whose processes are gone (missing ones are fine).
pub async fn remove(dirs: &[PathBuf]) -> Result<(), String> {
    for d in dirs {
        // The kernel lets go of exited tasks a moment after they are reaped.
        let mut tries = 0;
        loop {
            match std::fs::remove_dir(d) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => return Err(format!("removing the cgroup {}: {e}", d.display())),
            }
        }
    }
    Ok(())
}

/// CPU time the cgroup in `dir` has used, µs: v2's `cpu.stat` `usage_usec`, else v1's
/// `cpuacct.usage` (ns).
pub fn usage_usec(dir: &Path) -> Option<u64> {
    if let Ok(stat) = std::fs::read_to_string(dir.join("cpu.stat"))
        && let Some(v) = stat.lines().find_map(|l| l.strip_prefix("usage_usec "))
    {
        return v.trim().parse().ok();
    }
    std::fs::read_to_string(dir.join("cpuacct.usage")).ok()?.trim().parse::<u64>().ok().map(|ns| ns / 1000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn def(v: serde_json::Value) -> Definition {
        let mut base = json!({"uuid": "6f3d3f1c-8a51-4e43-9b8c-2f0f5d7c9a10", "brand": "bhyve",
            "owner_uuid": "930896af-bf8c-48d4-885c-6573a94b1853", "ram": 1024, "vcpus": 2, "disks": [], "nics": []});
        for (k, x) in v.as_object().unwrap() {
            base[k] = x.clone();
        }
        serde_json::from_value(base).unwrap()
    }

    #[test]
    fn limits_follow_tritons_units() {
        let l = limits(&def(json!({"cpu_cap": 50, "cpu_shares": 200, "zfs_io_priority": 30, "ram": 1024})));
        assert_eq!(l.cpu_quota_us, Some(50_000), "50% of one CPU");
        assert_eq!((l.cpu_shares, l.io_priority), (200, 30));
        assert_eq!(l.memory_bytes, (1024 + 384 + 128) * MIB);
        let l = limits(&def(json!({"cpu_cap": 400})));
        assert_eq!(l.cpu_quota_us, Some(400_000), "four cores");
        let l = limits(&def(json!({"ram": 65536})));
        assert_eq!((l.cpu_quota_us, l.cpu_shares, l.io_priority), (None, 100, 100), "uncapped, default weights");
        assert_eq!(l.memory_bytes, (65536 + 384 + 1024) * MIB, "the overhead is bounded");
    }

    /// Files the kernel would have in a fresh cgroup directory.
    fn fake(dir: &Path, files: &[&str]) {
        std::fs::create_dir_all(dir).unwrap();
        for f in files {
            std::fs::write(dir.join(f), "").unwrap();
        }
    }

    fn read(dir: &Path, f: &str) -> String {
        std::fs::read_to_string(dir.join(f)).unwrap()
    }

    #[test]
    fn v2_writer() {
        let t = tempfile::tempdir().unwrap();
        let parent = t.path().join("nereid.slice");
        let vm = parent.join("vm1");
        fake(&vm, &["cpu.max", "cpu.weight", "memory.max", "io.weight", "cgroup.procs"]);
        let h = Hierarchy::V2 { parent: parent.clone() };
        let l = limits(&def(json!({"cpu_cap": 50, "cpu_shares": 50, "zfs_io_priority": 16383, "ram": 256})));
        let procs = create(&h, "vm1", &l).unwrap();
        assert_eq!(procs, [vm.join("cgroup.procs")]);
        assert_eq!(read(&vm, "cpu.max"), "50000 100000");
        assert_eq!(read(&vm, "cpu.weight"), "50");
        assert_eq!(read(&vm, "memory.max"), ((256 + 384 + 32) * MIB).to_string());
        assert_eq!(read(&vm, "io.weight"), "default 10000", "clamped to v2's range");
        assert_eq!(read(&parent, "cgroup.subtree_control"), "+io", "controllers are handed down");
        apply_v2(&vm, &limits(&def(json!({})))).unwrap();
        assert_eq!(read(&vm, "cpu.max"), "max 100000", "uncapped");
        // Without the io controller there is no io.weight, and none is made.
        let bare = t.path().join("bare");
        fake(&bare, &["cpu.max", "cpu.weight", "memory.max"]);
        apply_v2(&bare, &l).unwrap();
        assert!(!bare.join("io.weight").exists());
        std::fs::write(vm.join("cpu.stat"), "usage_usec 1234567\nuser_usec 1\n").unwrap();
        assert_eq!(usage_usec(&vm), Some(1_234_567));
    }

    #[test]
    fn v1_writer() {
        let t = tempfile::tempdir().unwrap();
        let (cpu, acct, mem, blk) =
            (t.path().join("cpu/nereid"), t.path().join("cpuacct/nereid"), t.path().join("memory/x/nereid"), t.path().join("blkio/nereid"));
        fake(&cpu.join("vm1"), &["cpu.cfs_period_us", "cpu.cfs_quota_us", "cpu.shares", "cgroup.procs"]);
        fake(&mem.join("vm1"), &["memory.limit_in_bytes", "cgroup.procs"]);
        fake(&blk.join("vm1"), &["cgroup.procs"]);
        let h = Hierarchy::V1 { cpu: cpu.clone(), cpuacct: Some(acct.clone()), memory: Some(mem.clone()), blkio: Some(blk.clone()) };
        let l = limits(&def(json!({"cpu_cap": 50, "cpu_shares": 200, "ram": 1024})));
        let procs = create(&h, "vm1", &l).unwrap();
        assert_eq!(procs.len(), 4, "one per hierarchy: {procs:?}");
        assert!(acct.join("vm1").is_dir(), "made where it did not exist");
        assert_eq!(read(&cpu.join("vm1"), "cpu.cfs_quota_us"), "50000");
        assert_eq!(read(&cpu.join("vm1"), "cpu.cfs_period_us"), "100000");
        assert_eq!(read(&cpu.join("vm1"), "cpu.shares"), "2048");
        assert_eq!(read(&mem.join("vm1"), "memory.limit_in_bytes"), ((1024 + 384 + 128) * MIB).to_string());
        assert!(!blk.join("vm1/blkio.weight").exists(), "no weight file, no weight (no CFQ/BFQ)");
        std::fs::write(blk.join("vm1/blkio.weight"), "").unwrap();
        apply_v1(&cpu.join("vm1"), None, Some(&blk.join("vm1")), &limits(&def(json!({"zfs_io_priority": 1})))).unwrap();
        assert_eq!(read(&blk.join("vm1"), "blkio.weight"), "10", "clamped to v1's range");
        assert_eq!(read(&cpu.join("vm1"), "cpu.cfs_quota_us"), "-1", "uncapped");
        std::fs::write(acct.join("vm1/cpuacct.usage"), "2500000000\n").unwrap();
        assert_eq!(usage_usec(&acct.join("vm1")), Some(2_500_000));
        // Comounted controllers share one directory.
        let co = Hierarchy::V1 { cpu: cpu.clone(), cpuacct: Some(cpu.clone()), memory: None, blkio: None };
        assert_eq!(co.dirs("vm1"), [cpu.join("vm1")]);
    }

    #[tokio::test]
    async fn remove_takes_away_what_exists() {
        let t = tempfile::tempdir().unwrap();
        let a = t.path().join("a");
        std::fs::create_dir(&a).unwrap();
        remove(&[a.clone(), t.path().join("missing")]).await.unwrap();
        assert!(!a.exists());
    }

    const HYBRID_MOUNTS: &str = "tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/cpuacct cgroup rw,relatime,cpuacct 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup /sys/fs/cgroup/blkio cgroup rw,relatime,blkio 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
";

    #[test]
    fn detection_prefers_a_v2_hierarchy_with_controllers() {
        let own = "4:memory:/process_api/abc\n2:cpuacct:/\n1:cpu:/\n0::/\n";
        // Hybrid, the unified hierarchy without controllers: v1, under the agent's own cgroups.
        let h = detect(HYBRID_MOUNTS, own, |_| "hugetlb\n".into()).unwrap();
        assert_eq!(
            h,
            Hierarchy::V1 {
                cpu: "/sys/fs/cgroup/cpu/nereid".into(),
                cpuacct: Some("/sys/fs/cgroup/cpuacct/nereid".into()),
                memory: Some("/sys/fs/cgroup/memory/process_api/abc/nereid".into()),
                blkio: Some("/sys/fs/cgroup/blkio/nereid".into()),
            }
        );
        assert!(h.describe().starts_with("cgroup v1"));
        // Pure v2 (systemd): the unified hierarchy has cpu and memory.
        let v2 = "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime 0 0\n";
        let h = detect(v2, "0::/system.slice/nereid.service\n", |m| {
            assert_eq!(m, Path::new("/sys/fs/cgroup"));
            "cpuset cpu io memory pids\n".into()
        });
        assert_eq!(h, Some(Hierarchy::V2 { parent: "/sys/fs/cgroup/nereid.slice".into() }));
        // Comounted v1 controllers.
        let co = "cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,cpu,cpuacct 0 0\n";
        let h = detect(co, "3:cpu,cpuacct:/user.slice\n", |_| String::new()).unwrap();
        assert_eq!(h.dirs("vm"), [PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/user.slice/nereid/vm")]);
        // Nothing usable.
        assert_eq!(detect(v2, "0::/\n", |_| "pids\n".into()), None);
    }
}
