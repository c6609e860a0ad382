//! Real VMs for tests and benchmarks: the in-repo test image (`scripts/build-test-image`:
//! a Debian kernel and busybox whose init prints `nereid-test: key=value` lines on the
//! serial console), a qemu-backend agent, reading a guest's console, and a reaper that
//! kills the test's QEMU processes however the test ends (they are daemonised, so they
//! would outlive it).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nereid_agent::{Agent, BackendKind, QemuOptions};
use nereid_client::Client;
use serde_json::{Value, json};

use crate::Cloud;

/// The repository's root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The test image, built (once, cached by the script) if needed.
pub fn test_image() -> Result<PathBuf> {
    static BUILT: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let script = workspace_root().join("scripts/build-test-image");
            let out = std::process::Command::new("bash")
                .arg(&script)
                .arg(workspace_root().join("target/test-image"))
                .stderr(std::process::Stdio::inherit())
                .output()
                .map_err(|e| format!("running {}: {e}", script.display()))?;
            if !out.status.success() {
                return Err(format!("{} failed ({}); see its output above", script.display(), out.status));
            }
            let path = String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default().trim().to_string();
            Ok(PathBuf::from(path))
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// Imports a disk file as an active image (what `nereid image create-from-disk` does).
pub async fn import_image(client: &Client, file: &Path, name: &str) -> Result<String> {
    let f = file.to_path_buf();
    let found = tokio::task::spawn_blocking(move || nereid_diskimage::inspect(&f, &mut |_| {})).await??;
    let img = client
        .post(
            "/images",
            &json!({"owner": "00000000-0000-0000-0000-000000000000", "name": name, "version": "1.0.0", "type": "zvol", "os": "linux",
                "public": true, "nic_driver": "virtio", "disk_driver": "virtio", "cpu_type": "host", "image_size": found.image_size_mib()}),
        )
        .await?;
    let uuid = img["uuid"].as_str().context("image uuid")?.to_string();
    let bytes = tokio::fs::read(file).await?;
    let path = format!("/images/{uuid}/file?compression={}&sha1={}", found.compression.as_str(), found.sha1);
    client.send(client.request(reqwest::Method::PUT, &path).body(bytes)).await?;
    client.post(&format!("/images/{uuid}?action=activate"), &json!({})).await?;
    Ok(uuid)
}

/// Pids of QEMU processes started under `dir`: running in a VM directory under it (QEMU
/// runs in its VM's directory and names its files relative to it), or whose command line
/// mentions it.
pub fn qemus_under(dir: &Path) -> Vec<u32> {
    let needle = dir.to_string_lossy().into_owned();
    let Ok(rd) = std::fs::read_dir("/proc") else { return Vec::new() };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let c = String::from_utf8_lossy(&c);
                let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
                c.starts_with("qemu-system") && (cwd.starts_with(dir) || c.contains(&needle))
            })
        })
        .collect()
}

/// Kills every QEMU started under its directory when dropped, and holds the [`QemuLock`]
/// until then: every test that boots guests makes one, before its first guest boots.
pub struct Reaper {
    dir: PathBuf,
    _lock: Option<QemuLock>,
}

/// A [`Reaper`] for `dir`, made once no other test on this machine holds the [`QemuLock`]
/// (a function named like the type, so `Reaper(dir)` reads as it did when it was a tuple).
#[allow(non_snake_case)]
pub fn Reaper(dir: PathBuf) -> Reaper {
    Reaper { dir, _lock: Some(QemuLock::acquire()) }
}

impl Reaper {
    /// A reaper for another agent's directory in the same test (a second compute node),
    /// under the lock `self` holds: taking the [`QemuLock`] again in one process would wait
    /// for itself. Drop it before `self`.
    pub fn alongside(&self, dir: PathBuf) -> Reaper {
        Reaper { dir, _lock: None }
    }

    /// The directory whose QEMUs it kills.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        for pid in qemus_under(&self.dir) {
            let _ = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        // The cgroups of the VMs left running, once their QEMUs are gone.
        for vms in [self.dir.join("qemu"), self.dir.join("agent/qemu")] {
            drop(VmCgroups(vms));
        }
    }
}

/// Removes, when dropped, the cgroups of every VM directory under an agent's `qemu/`
/// directory ([`remove_vm_cgroups`]): for tests that run the qemu backend with a stand-in
/// QEMU and no [`Reaper`]. Declare it before the agent, so it is dropped after.
pub struct VmCgroups(pub PathBuf);

impl Drop for VmCgroups {
    fn drop(&mut self) {
        for vm in std::fs::read_dir(&self.0).into_iter().flatten().flatten() {
            remove_vm_cgroups(&vm.path());
        }
    }
}

/// Removes the cgroups a VM directory lists (its `cgroup` file, one path per line),
/// killing whatever still runs in them first: the agent removes a VM's cgroups when it
/// destroys the VM, but a test that ends with VMs running (or a stand-in QEMU) must not
/// leave them on the machine.
pub fn remove_vm_cgroups(vm_dir: &Path) {
    let listed = std::fs::read_to_string(vm_dir.join("cgroup")).unwrap_or_default();
    for dir in listed.lines().filter(|l| !l.trim().is_empty()).map(PathBuf::from) {
        for _ in 0..50 {
            for pid in std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default().lines() {
                let _ = std::process::Command::new("kill").args(["-9", pid.trim()]).status();
            }
            if std::fs::remove_dir(&dir).is_ok() || !dir.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// One test's guests at a time on this machine, whatever runs the tests: nextest's `qemu`
/// test group (`.config/nextest.toml`) already does this, but plain `cargo test` runs a
/// binary's tests on several threads and several binaries at once, and TCG guests booting
/// together on two cores starve each other into timeouts. An exclusive `flock` on
/// [`QemuLock::path`], let go on drop or when the process dies.
pub struct QemuLock {
    _file: std::fs::File,
}

impl QemuLock {
    /// The lock file every test shares: `nereid-qemu-tests.lock` in the temp directory.
    pub fn path() -> PathBuf {
        std::env::temp_dir().join("nereid-qemu-tests.lock")
    }

    /// Waits for the lock at [`QemuLock::path`] (panics if its file cannot be opened).
    pub fn acquire() -> QemuLock {
        let path = QemuLock::path();
        QemuLock::acquire_at(&path).unwrap_or_else(|e| panic!("the QEMU test lock {}: {e:#}", path.display()))
    }

    /// Waits for the lock on `path`, creating the file if need be. Inside a multi-threaded
    /// tokio runtime the wait lets the runtime's other tasks (an in-process headnode) run.
    pub fn acquire_at(path: &Path) -> Result<QemuLock> {
        let file = match std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(path) {
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => std::fs::File::open(path),
            r => r,
        }
        .with_context(|| format!("opening {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => return Ok(QemuLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => {}
            Err(std::fs::TryLockError::Error(e)) => return Err(e).with_context(|| format!("locking {}", path.display())),
        }
        eprintln!("waiting for another test's QEMU guests to finish (lock {})", path.display());
        let wait = || file.lock();
        let multi_thread =
            tokio::runtime::Handle::try_current().is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if multi_thread { tokio::task::block_in_place(wait) } else { wait() }.with_context(|| format!("locking {}", path.display()))?;
        Ok(QemuLock { _file: file })
    }
}

/// The directory of a VM under a qemu agent's data directory.
pub fn vm_dir(agent_dir: &Path, vm: &str) -> PathBuf {
    agent_dir.join("qemu").join(vm)
}

/// What the guest has printed so far (the agent's ring log of its serial console).
pub fn console_log(agent_dir: &Path, vm: &str) -> String {
    String::from_utf8_lossy(&std::fs::read(vm_dir(agent_dir, vm).join("console.log")).unwrap_or_default()).replace('\r', "")
}

/// The values of the test image's `nereid-test: <key>=<value>` lines, in order.
pub fn values(log: &str, key: &str) -> Vec<String> {
    let prefix = format!("nereid-test: {key}=");
    log.lines().filter_map(|l| l.find(&prefix).map(|i| l[i + prefix.len()..].trim_end().to_string())).collect()
}

/// How many times the guest said `nereid-test: ready` (one per boot).
pub fn boots(log: &str) -> usize {
    log.lines().filter(|l| l.trim_end().ends_with("nereid-test: ready")).count()
}

/// Waits until the guest has finished booting `n` times; returns the console.
pub async fn wait_boots(agent_dir: &Path, vm: &str, n: usize, timeout: Duration) -> Result<String> {
    let end = Instant::now() + timeout;
    loop {
        let log = console_log(agent_dir, vm);
        if boots(&log) >= n {
            return Ok(log);
        }
        if Instant::now() > end {
            let tail: String = log.chars().rev().take(3000).collect::<Vec<_>>().into_iter().rev().collect();
            bail!("VM {vm} did not finish boot {n} within {} s; its console ends with:\n{tail}", timeout.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// QEMU options for tests: TCG (KVM may exist here without working), short stops.
pub fn test_options() -> QemuOptions {
    QemuOptions { accel: nereid_agent::backend::qemu::accel::Choice::Tcg, stop_timeout: Duration::from_secs(30), ..QemuOptions::default() }
}

impl Cloud {
    /// Starts an in-process agent running real VMs under `dir`; the nic tag `external`
    /// has no bridge, so VMs' NICs are isolated.
    pub async fn start_qemu_agent(&self, dir: &Path, o: QemuOptions) -> Result<Agent> {
        let cfg = nereid_agent::Config {
            headnode_url: self.headnode.agent_url.clone(),
            join_token: self.headnode.join_token_full.clone(),
            data_dir: dir.to_path_buf(),
            backend: BackendKind::Qemu(o),
            listen: "127.0.0.1:0".parse()?,
            advertise_url: None,
            heartbeat: Duration::from_secs(1),
            nic_tags: vec![("external".into(), nereid_agent::net::Uplink::Bridge("lo".into()))],
            migration_listen: Some("127.0.0.1:0".parse()?),
            no_exec: false,
        };
        nereid_agent::start(cfg).await
    }

    /// A VM's record.
    pub async fn vm(&self, uuid: &str) -> Result<Value> {
        Ok(self.client.get(&format!("/vms/{uuid}")).await?)
    }
}
