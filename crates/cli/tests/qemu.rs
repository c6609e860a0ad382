//! Real VMs end to end: a headnode, `nereid agent --backend qemu` as its own process
//! (TCG: /dev/kvm may exist here without working), and guests booted from the in-repo
//! test image, whose init prints what it sees (`nereid-test: key=value`) on the serial
//! console, reads and writes its metadata over the metadata port, and counts its boots
//! on its disk.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "qemu/image_create.rs"]
mod image_create;
#[path = "qemu/migrate_backend.rs"]
mod migrate_backend;
#[path = "qemu/vm_metrics.rs"]
mod vm_metrics;
#[path = "qemu/web_consoles.rs"]
mod web_consoles;
#[path = "qemu/web_iso.rs"]
mod web_iso;
#[path = "qemu/zvol_boot.rs"]
mod zvol_boot;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Cloud;
use nereid_testkit::qemu::{Reaper, boots, console_log, import_image, qemus_under, test_image, values, vm_dir, wait_boots};
use nereid_testkit::{Backend, Options};
use serde_json::{Value, json};

const BOOT: Duration = Duration::from_secs(240);

struct Env {
    cloud: Cloud,
    agent: Option<Child>,
    agent_dir: PathBuf,
    agent_args: Vec<String>,
    image: String,
    package: String,
    network: String,
    owner: String,
    _reaper: Reaper,
    tmp: tempfile::TempDir,
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(mut c) = self.agent.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Env {
    /// A cloud with the test image, a 256 MiB / 1 GiB package, and a qemu agent
    /// (`extra` agent flags; its data directory may be given).
    async fn new(extra: &[&str], agent_dir: Option<PathBuf>) -> Env {
        Env::with(Options::new(Backend::Sqlite), extra, agent_dir).await
    }

    /// Like [`Env::new`] with the headnode started from `o` (the web console: `web_https`).
    async fn with(o: Options, extra: &[&str], agent_dir: Option<PathBuf>) -> Env {
        let image_file = tokio::task::spawn_blocking(test_image).await.unwrap().unwrap();
        let cloud = Cloud::start_with(o).await.unwrap();
        let seed = cloud.seed_sized(256, 1024).await.unwrap();
        let image = import_image(&cloud.client, &image_file, "nereid-test").await.unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let agent_dir = agent_dir.unwrap_or_else(|| tmp.path().join("agent"));
        // The only host files VMs may use (cdroms).
        let iso_dir = tmp.path().join("iso");
        std::fs::create_dir_all(&iso_dir).unwrap();
        let mut agent_args: Vec<String> = [
            "agent",
            "--headnode",
            &cloud.headnode.agent_url,
            "--join-token",
            &cloud.headnode.join_token_full,
            "--data-dir",
            agent_dir.to_str().unwrap(),
            "--backend",
            "qemu",
            "--accel",
            "tcg",
            "--listen",
            "127.0.0.1:0",
            "--heartbeat-secs",
            "1",
            "--nic-tag",
            "external=lo",
            "--stop-timeout-secs",
            "30",
            "--iso-dir",
            iso_dir.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        agent_args.extend(extra.iter().map(|s| s.to_string()));
        let mut env = Env {
            cloud,
            agent: None,
            agent_dir: agent_dir.clone(),
            agent_args,
            image,
            package: seed.package,
            network: seed.network,
            owner: seed.owner,
            _reaper: Reaper(agent_dir),
            tmp,
        };
        env.start_agent().await;
        env
    }

    fn agent_log(&self) -> PathBuf {
        self.tmp.path().join("agent.log")
    }

    async fn start_agent(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.agent_log()).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_nereid"))
            .args(&self.agent_args)
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        self.agent = Some(child);
        self.cloud.wait_servers(1).await.unwrap();
    }

    /// Kills the agent process (SIGKILL), as a crash would.
    fn kill_agent(&mut self) {
        let mut c = self.agent.take().expect("an agent runs");
        c.kill().unwrap();
        c.wait().unwrap();
    }

    fn body(&self, extra: Value) -> Value {
        let mut b = json!({"owner_uuid": self.owner, "brand": "bhyve", "billing_id": self.package, "image_uuid": self.image,
            "networks": [self.network]});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    }

    /// CreateVm and its job, finished.
    async fn create(&self, extra: Value) -> (String, Value) {
        let (vm, job) = self.cloud.create_vm(&self.body(extra)).await.unwrap();
        let j = self.cloud.wait_job(&job).await.unwrap();
        (vm, j)
    }

    /// A VM action (or DELETE for "destroy"), its job finished.
    async fn act(&self, vm: &str, action: &str, body: Value) -> Value {
        let r = if action == "destroy" {
            self.cloud.client.delete(&format!("/vms/{vm}")).await.unwrap()
        } else {
            self.cloud.client.post(&format!("/vms/{vm}?action={action}"), &body).await.unwrap()
        };
        self.cloud.wait_job(r["job_uuid"].as_str().unwrap()).await.unwrap()
    }

    async fn vm(&self, vm: &str) -> Value {
        self.cloud.vm(vm).await.unwrap()
    }

    fn console(&self, vm: &str) -> String {
        console_log(&self.agent_dir, vm)
    }

    async fn wait_boots(&self, vm: &str, n: usize) -> String {
        match wait_boots(&self.agent_dir, vm, n, BOOT).await {
            Ok(log) => log,
            Err(e) => panic!("{e}\nagent log: {}", std::fs::read_to_string(self.agent_log()).unwrap_or_default()),
        }
    }

    /// Waits until the VM's record says `state`.
    async fn wait_state(&self, vm: &str, state: &str, within: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let v = self.vm(vm).await;
            if v["state"] == state {
                return start.elapsed();
            }
            assert!(start.elapsed() < within, "VM {vm} is {} after {} s, not {state}: {v}", v["state"], within.as_secs());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn pid(&self, vm: &str) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(vm_dir(&self.agent_dir, vm).join("qemu.pid")).ok()?.trim().parse().ok()?;
        Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
    }

    /// Asserts nothing of the VM is left on the node: no directory (overlays, pidfile,
    /// sockets, logs) and no process.
    fn assert_gone(&self, vm: &str) {
        let dir = vm_dir(&self.agent_dir, vm);
        assert!(
            !dir.exists(),
            "{} still exists: {:?}",
            dir.display(),
            std::fs::read_dir(&dir).map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
        );
        let procs: Vec<u32> = qemus_under(&self.agent_dir)
            .into_iter()
            .filter(|p| std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains(vm)))
            .collect();
        assert!(procs.is_empty(), "QEMU processes of {vm} still run: {procs:?}");
    }
}

/// `nereid admin vm console` with `input` piped in; what it printed.
async fn console_session(env: &Env, vm: &str, input: &str) -> String {
    let (url, token, vm, input) =
        (env.cloud.headnode.admin_url.clone(), env.cloud.headnode.token.clone(), vm.to_string(), input.to_string());
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut c = Command::new(env!("CARGO_BIN_EXE_nereid"))
            .args(["admin", "vm", "console", &vm, "--idle", "3", "--timeout", "60"])
            .env("NEREID_URL", url)
            .env("NEREID_TOKEN", token)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        let out = c.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    })
    .await
    .unwrap()
}

fn last(log: &str, key: &str) -> String {
    values(log, key).last().cloned().unwrap_or_else(|| panic!("no {key}= line on the console:\n{log}"))
}

fn job_steps(j: &Value) -> String {
    j["chain_results"]
        .as_array()
        .map(|a| a.iter().map(|r| format!("{}: {}", r["name"], r["result"])).collect::<Vec<_>>().join("; "))
        .unwrap_or_default()
}

/// Create, metadata both ways, stop, start, reboot, resize while stopped, snapshot +
/// rollback, delete: the guest sees each.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_vm_lives_its_whole_life_under_qemu() {
    let env = Env::new(&[], None).await;
    let (vm, j) = env
        .create(json!({"alias": "life", "hostname": "vm-one", "bootrom": "uefi", "customer_metadata": {"test-message": "hello nereid"}}))
        .await;
    assert_eq!(j["execution"], "succeeded", "{j}");

    // Boot 1: the guest knows who it is, read its metadata and wrote some back.
    let log = env.wait_boots(&vm, 1).await;
    assert_eq!(last(&log, "uuid"), vm, "sdc:uuid over the metadata port");
    assert_eq!(last(&log, "product"), format!("SmartDC HVM serial={vm}"), "SMBIOS as Triton sets it");
    assert_eq!(last(&log, "hostname"), "vm-one");
    assert_eq!(last(&log, "message"), "hello nereid", "a customer_metadata key");
    assert_eq!(last(&log, "put"), "ok");
    assert_eq!(last(&log, "boots"), "0");
    let v = env.vm(&vm).await;
    assert_eq!(v["customer_metadata"]["test-reply"], "seen: hello nereid", "the guest's write is in VMAPI");
    assert_eq!(v["state"], "running");
    let mem1: u64 = last(&log, "mem_kib").parse().unwrap();
    vm_metrics::assert_running_guest_metrics(&env.cloud, &v).await;
    // The operator's view of the console: its log, and a shell on it.
    let out = common::nereid_async(&env.cloud, &["admin", "vm", "console", &vm, "--log"]).await;
    assert!(common::stdout(&out).contains(&format!("nereid-test: uuid={vm}")), "{}", common::stderr(&out));
    let out = console_session(&env, &vm, "echo answer-$((6 * 7))\n").await;
    assert!(out.contains("answer-42"), "the guest's shell ran what was typed: {out}");
    assert!(log.contains(&format!("nereid-test: disk vda bytes={}", 1024u64 << 20)), "the boot disk is the package's quota:\n{log}");

    // Stop: an ACPI power-off the guest acts on.
    let j = env.act(&vm, "stop", json!({})).await;
    assert_eq!(j["execution"], "succeeded", "{j}");
    assert_eq!(env.vm(&vm).await["state"], "stopped");
    assert!(env.pid(&vm).is_none(), "QEMU is gone");
    assert!(env.console(&vm).contains("nereid-test: powering off"), "the guest powered itself off");

    // Start, reboot: each a new boot that finds the disk as the last one left it.
    assert_eq!(env.act(&vm, "start", json!({})).await["execution"], "succeeded");
    let log = env.wait_boots(&vm, 2).await;
    assert_eq!(last(&log, "boots"), "1");
    assert_eq!(last(&log, "message"), "hello nereid");
    assert_eq!(env.act(&vm, "reboot", json!({})).await["execution"], "succeeded");
    let log = env.wait_boots(&vm, 3).await;
    assert_eq!(last(&log, "boots"), "2");

    // Resize while stopped: more RAM and a bigger disk, seen by the guest.
    assert_eq!(env.act(&vm, "stop", json!({})).await["execution"], "succeeded");
    let j = env.act(&vm, "update", json!({"ram": 512, "quota": 2})).await;
    assert_eq!(j["execution"], "succeeded", "{}", job_steps(&j));
    let v = env.vm(&vm).await;
    assert_eq!((v["ram"].as_u64(), v["disks"][0]["size"].as_u64(), v["state"].as_str()), (Some(512), Some(2048), Some("stopped")));
    let j = env.cloud.client.post(&format!("/vms/{vm}?action=update"), &json!({"quota": 1})).await.expect_err("shrinking is refused");
    assert!(j.to_string().contains("only grow"), "{j}");
    assert_eq!(env.act(&vm, "start", json!({})).await["execution"], "succeeded");
    let log = env.wait_boots(&vm, 4).await;
    let mem2: u64 = last(&log, "mem_kib").parse().unwrap();
    assert!(mem2 > mem1 + 200 * 1024, "the guest sees the new RAM: {mem1} KiB → {mem2} KiB");
    assert_eq!(values(&log, "disk vda bytes").last().unwrap(), &(2048u64 << 20).to_string(), "the guest sees the grown disk");
    assert_eq!(last(&log, "boots"), "3", "growing the disk kept its data");

    // Snapshot while running; one more boot; roll back: the boot counter goes back.
    let out = common::nereid_async(&env.cloud, &["admin", "vm", "snapshot", "create", &vm, "s1", "-w"]).await;
    assert!(common::stdout(&out).contains("(snapshot) succeeded"), "{}{}", common::stdout(&out), common::stderr(&out));
    let v = env.vm(&vm).await;
    assert_eq!(v["snapshots"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["snapshots"][0]["name"], "s1");
    assert!(v["snapshots"][0].get("state").is_none(), "{v}");
    assert_eq!(env.act(&vm, "reboot", json!({})).await["execution"], "succeeded");
    let log = env.wait_boots(&vm, 5).await;
    assert_eq!(last(&log, "boots"), "4");
    let j = env.act(&vm, "rollback_snapshot&snapshot_name=s1", json!({})).await;
    assert_eq!(j["execution"], "succeeded", "{}", job_steps(&j));
    let log = env.wait_boots(&vm, 6).await;
    assert_eq!(last(&log, "boots"), "4", "the disk is as it was at the snapshot");
    assert_eq!(env.vm(&vm).await["state"], "running", "a running VM runs again after its rollback");
    let j = env.act(&vm, "delete_snapshot&snapshot_name=s1", json!({})).await;
    assert_eq!(j["execution"], "succeeded", "{}", job_steps(&j));
    assert_eq!(env.vm(&vm).await["snapshots"], json!([]));

    // Delete: nothing of the VM is left on the node.
    let j = env.act(&vm, "destroy", json!({})).await;
    assert_eq!(j["execution"], "succeeded", "{j}");
    assert_eq!(env.vm(&vm).await["state"], "destroyed");
    env.assert_gone(&vm);
}

/// The agent dies (SIGKILL) while a VM runs: the VM keeps running and the restarted
/// agent adopts it. QEMU dies: the VM is reported stopped (or restarted with autoboot).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn vms_outlive_the_agent_and_dead_qemus_are_noticed() {
    let mut env = Env::new(&[], None).await;
    // BIOS this time, with a data disk on NVMe and an installer ISO on the AHCI controller.
    let iso = env.tmp.path().join("iso/installer.iso");
    std::fs::write(&iso, vec![0u8; 2 << 20]).unwrap();
    let disks = json!([{"image_uuid": env.image, "boot": true, "model": "virtio"}, {"size": 64, "model": "nvme"},
        {"media": "cdrom", "model": "ahci", "path": iso}]);
    let (vm, j) = env.create(json!({"alias": "survivor", "customer_metadata": {"test-message": "bios"}, "disks": disks})).await;
    assert_eq!(j["execution"], "succeeded", "{j}");
    let log = env.wait_boots(&vm, 1).await;
    assert_eq!(last(&log, "message"), "bios", "the BIOS boot path works too");
    assert!(log.contains(&format!("nereid-test: disk nvme0n1 bytes={}", 64u64 << 20)), "the guest sees the data disk:\n{log}");
    let pid = env.pid(&vm).unwrap();
    let cgroup = cgroup_dir(pid, "cpu");
    assert!(cgroup.ends_with(&vm), "{}", cgroup.display());

    env.kill_agent();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(env.pid(&vm), Some(pid), "the VM runs on without its agent");
    env.start_agent().await;
    // The restarted agent listens on a new port; the headnode learns it when it registers.
    let mut tries = 0;
    let v = loop {
        match env.cloud.client.get(&format!("/vms/{vm}?sync=true")).await {
            Ok(v) => break v,
            Err(e) if tries < 100 => {
                tries += 1;
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("the restarted agent never answered: {e}"),
        }
    };
    assert_eq!(v["state"], "running", "{v}");
    assert_eq!(env.pid(&vm), Some(pid), "adopted, not restarted");
    assert_eq!(cgroup_dir(pid, "cpu"), cgroup, "still in its own cgroup");
    assert!(std::fs::read_to_string(env.agent_log()).unwrap().contains("re-adopted VM"));
    // The restarted agent serves the console and the metadata port again.
    assert_eq!(env.act(&vm, "reboot", json!({})).await["execution"], "succeeded");
    let log = env.wait_boots(&vm, 2).await;
    assert_eq!((last(&log, "uuid"), last(&log, "put")), (vm.clone(), "ok".to_string()));

    // Without autoboot, a QEMU that dies leaves the VM stopped.
    let j = env.act(&vm, "update", json!({"autoboot": false})).await;
    assert_eq!(j["execution"], "succeeded", "{j}");
    let pid = env.pid(&vm).unwrap();
    Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
    let took = env.wait_state(&vm, "stopped", Duration::from_secs(30)).await;
    eprintln!("a killed QEMU was reported stopped after {:.1} s (heartbeat 1 s)", took.as_secs_f64());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(env.vm(&vm).await["state"], "stopped", "and stays stopped");
    assert!(env.pid(&vm).is_none());

    // With autoboot (start sets it), the agent starts it again.
    assert_eq!(env.act(&vm, "start", json!({})).await["execution"], "succeeded");
    env.wait_boots(&vm, 3).await;
    let pid = env.pid(&vm).unwrap();
    Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
    let log = env.wait_boots(&vm, 4).await;
    assert_eq!(last(&log, "boots"), "3");
    env.wait_state(&vm, "running", Duration::from_secs(30)).await;
    assert_ne!(env.pid(&vm), Some(pid));

    assert_eq!(env.act(&vm, "destroy", json!({})).await["execution"], "succeeded");
    env.assert_gone(&vm);
}

/// A failed provision names its cause, unwinds, and leaves nothing on the node.
async fn assert_failed_cleanly(env: &Env, vm: &str, j: &Value, cause: &str) {
    assert_eq!(j["execution"], "failed", "{j}");
    let err = j["error"].as_str().unwrap_or_default();
    assert!(err.contains(cause), "the job's error names the cause ({cause}): {err}");
    let undone: Vec<&str> = j["onerror_results"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert!(undone.contains(&"undo create") && undone.contains(&"undo reserve"), "{undone:?}");
    let v = env.vm(vm).await;
    assert_eq!(v["state"], "failed", "{v}");
    env.assert_gone(vm);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_corrupt_image_file_fails_the_provision_cleanly() {
    let env = Env::new(&[], None).await;
    let img = env.cloud.client.get(&format!("/images/{}", env.image)).await.unwrap();
    let sha1 = img["files"][0]["sha1"].as_str().unwrap().to_string();
    // Damage the stored file behind IMGAPI's back (a bad disk, a botched copy).
    let stored = env.cloud.data_dir.join("images/sha1").join(&sha1[..2]).join(&sha1);
    let mut bytes = std::fs::read(&stored).unwrap();
    bytes[100_000] ^= 0xff;
    std::fs::write(&stored, bytes).unwrap();
    let (vm, j) = env.create(json!({"alias": "corrupt"})).await;
    assert_failed_cleanly(&env, &vm, &j, "corrupt").await;
    assert!(j["error"].as_str().unwrap().contains(&sha1), "the error names the expected sha1: {j}");
    let cache = env.agent_dir.join("images").join(&env.image);
    let left: Vec<_> = std::fs::read_dir(&cache).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "nothing of the bad download is kept: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn qemu_failing_to_start_fails_the_provision_cleanly() {
    // A QEMU that cannot start, as a broken install would: the real binary, handed an
    // option it rejects.
    let dir = tempfile::tempdir().unwrap();
    // QEMU runs as the VM's own user: it must reach the wrapper.
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let wrapper = dir.path().join("qemu-broken");
    std::fs::write(&wrapper, "#!/bin/sh\nexec qemu-system-x86_64 \"$@\" -object no-such-object,id=x\n").unwrap();
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let env = Env::new(&["--qemu", wrapper.to_str().unwrap()], None).await;
    let (vm, j) = env.create(json!({"alias": "nostart"})).await;
    assert_failed_cleanly(&env, &vm, &j, "QEMU failed to start").await;
    assert!(j["error"].as_str().unwrap().contains("no-such-object"), "QEMU's own message is kept: {j}");
}

/// A tmpfs mounted for the test (and unmounted however it ends).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size_mib: u64) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs", at.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(st.success(), "mounting a tmpfs needs root (CI runs as root)");
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").args(["-l", self.0.to_str().unwrap()]).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_fails_the_provision_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("agent");
    // 1 GiB as the node sees it; VMs' disks are sparse overlays, so the filesystem can
    // fill up from other things while the allocator still sees room.
    let _fs = Tmpfs::mount(&mnt, 1024);
    let env = Env::new(&[], Some(mnt.clone())).await;
    // Disks are sparse qcow2 overlays: the operator overprovisions disk 8 times.
    let server = env.cloud.wait_servers(1).await.unwrap()[0]["uuid"].as_str().unwrap().to_string();
    env.cloud.client.post(&format!("/servers/{server}"), &json!({"overprovision_ratios": {"cpu": 4, "ram": 1, "disk": 8}})).await.unwrap();
    // A first VM installs the image (35 MiB) in the node's cache.
    let (first, j) = env.create(json!({"alias": "first", "autoboot": false})).await;
    assert_eq!(j["execution"], "succeeded", "{j}");
    // Then the node's disk fills up.
    let filler = mnt.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let chunk = vec![1u8; 1 << 16];
    while std::io::Write::write_all(&mut f, &chunk).is_ok() {}
    drop(f);
    let (vm, j) = env.create(json!({"alias": "second", "autoboot": false})).await;
    assert_failed_cleanly(&env, &vm, &j, "No space left on device").await;
    assert!(j["error"].as_str().unwrap().contains("creating disk 0"), "it says which step: {j}");
    // With space again, provisioning works.
    std::fs::remove_file(&filler).unwrap();
    let (third, j) = env.create(json!({"alias": "third", "autoboot": false})).await;
    assert_eq!(j["execution"], "succeeded", "{j}");
    for v in [first, third] {
        assert_eq!(env.act(&v, "destroy", json!({})).await["execution"], "succeeded");
    }
    assert!(boots(&env.console(&vm)) == 0);
}

/// `nereid up --backend qemu --demo`: a new user's first minute — the printed command
/// provisions a VM from the imported test image, and it boots and reads its metadata.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nereid_up_demo_boots_a_first_vm() {
    let image = tokio::task::spawn_blocking(test_image).await.unwrap().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let _reaper = Reaper(data.clone());
    let mut up = Command::new(env!("CARGO_BIN_EXE_nereid"))
        .args(["up", "--data-dir", data.to_str().unwrap(), "--admin-listen", "127.0.0.1:0", "--backend", "qemu", "--accel", "tcg"])
        .args(["--cloudapi-listen", "127.0.0.1:0"])
        .args(["--demo", "--demo-image", image.to_str().unwrap()])
        // In the host's namespace: no managed bridge (qemu_network.rs runs `up` with one, in a namespace).
        .arg("--no-managed-network")
        .env("HOME", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = up.stdout.take().unwrap();
    let (text, create) = tokio::task::spawn_blocking(move || common::up_banner(stdout)).await.unwrap();
    assert!(text.contains("this host, VMs run with qemu (tcg)"), "{text}");
    let cmd = create.unwrap_or_else(|| panic!("a vm create example:\n{text}")).replacen("nereid", env!("CARGO_BIN_EXE_nereid"), 1);
    assert!(cmd.contains("test-message"), "the example passes metadata the guest prints: {cmd}");
    let out = Command::new("sh").arg("-c").arg(&cmd).env_remove("NEREID_URL").env_remove("NEREID_TOKEN").output().unwrap();
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && printed.contains("(provision) succeeded"),
        "{cmd}\n{printed}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let vm = printed.split_whitespace().nth(1).unwrap().to_string();
    let log = wait_boots(&data.join("agent"), &vm, 1, BOOT).await.unwrap();
    let _ = Command::new("kill").args(["-INT", &up.id().to_string()]).status();
    let _ = up.wait();
    assert_eq!((last(&log, "uuid"), last(&log, "message")), (vm, "hello".to_string()));
}

/// The directory of `pid`'s cgroup for `controller` (cgroup v1), or its v2 cgroup.
fn cgroup_dir(pid: u32, controller: &str) -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    for line in own.lines() {
        let mut f = line.splitn(3, ':');
        let (_, ctrls, path) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
        if ctrls.split(',').any(|c| c == controller) {
            let mount = mounts
                .lines()
                .map(|l| l.split_whitespace().collect::<Vec<_>>())
                .find(|m| m[2] == "cgroup" && m[3].split(',').any(|o| o == controller))
                .unwrap_or_else(|| panic!("no v1 {controller} mount"));
            return Path::new(mount[1]).join(path.trim_start_matches('/'));
        }
    }
    let path = own.lines().find_map(|l| l.strip_prefix("0::")).expect("a v2 cgroup");
    let mount = mounts.lines().map(|l| l.split_whitespace().collect::<Vec<_>>()).find(|m| m[2] == "cgroup2").expect("a v2 mount");
    Path::new(mount[1]).join(path.trim_start_matches('/'))
}

/// Whether the VM's limits live in the v2 hierarchy (it has the cpu controller) or v1.
fn v2_has_cpu() -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    mounts.lines().map(|l| l.split_whitespace().collect::<Vec<_>>()).find(|m| m[2] == "cgroup2").is_some_and(|m| {
        std::fs::read_to_string(Path::new(m[1]).join("cgroup.controllers")).unwrap_or_default().split_whitespace().any(|c| c == "cpu")
    })
}

/// CPU time (µs) the cgroup has used: v2 `cpu.stat` usage_usec, v1 `cpuacct.usage`.
fn cpu_used_usec(pid: u32, v2: bool) -> u64 {
    if v2 {
        let stat = std::fs::read_to_string(cgroup_dir(pid, "cpu").join("cpu.stat")).unwrap();
        stat.lines().find_map(|l| l.strip_prefix("usage_usec ")).unwrap().trim().parse().unwrap()
    } else {
        let ns: u64 = std::fs::read_to_string(cgroup_dir(pid, "cpuacct").join("cpuacct.usage")).unwrap().trim().parse().unwrap();
        ns / 1000
    }
}

/// Guests are confined: QEMU runs as an unprivileged uid under seccomp, in a cgroup of
/// its own whose CPU limit is the package's `cpu_cap` — a guest spinning on both vCPUs of a
/// `cpu_cap: 50` package gets half a core — and a cdrom outside the agent's --iso-dir is
/// refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn guests_run_confined_and_cpu_cap_holds() {
    let env = Env::new(&[], None).await;

    // Host paths only from --iso-dir: /etc/shadow and another VM's disk are refused.
    // Host paths only from --iso-dir: /etc/shadow, and a symlink in the ISO directory that
    // leads out of it, fail the provision with the reason; a ".." is refused by VMAPI itself.
    let iso_dir = env.tmp.path().join("iso");
    std::os::unix::fs::symlink("/etc/shadow", iso_dir.join("innocent.iso")).unwrap();
    let cdrom = |path: String| json!([{"image_uuid": env.image, "boot": true, "model": "virtio"}, {"media": "cdrom", "model": "ahci", "path": path}]);
    for (alias, path, why) in [
        ("shadow", "/etc/shadow".to_string(), "outside the directories"),
        ("symlink", iso_dir.join("innocent.iso").display().to_string(), "resolves to /etc/shadow"),
    ] {
        let (vm, j) = env.create(json!({"alias": alias, "disks": cdrom(path)})).await;
        assert_eq!(j["execution"], "failed", "{j}");
        let e = j["error"].as_str().unwrap_or_default();
        assert!(e.contains("disks[1] (cdrom)") && e.contains(why), "{alias}: {e}");
        assert_eq!(env.vm(&vm).await["state"], "failed");
        env.assert_gone(&vm);
    }
    let escape = format!("{}/../agent/images/{}/base.raw", iso_dir.display(), env.image);
    let e = env.cloud.create_vm(&env.body(json!({"alias": "escape", "disks": cdrom(escape)}))).await.unwrap_err().to_string();
    assert!(e.contains("\"..\""), "{e}");

    let pkg = env
        .cloud
        .client
        .post(
            "/packages",
            &json!({"name": "capped", "version": "1.0.0", "max_physical_memory": 256, "quota": 1024, "vcpus": 2, "cpu_cap": 50, "brand": "bhyve"}),
        )
        .await
        .unwrap();
    let (vm, j) = env.create(json!({"alias": "capped", "billing_id": pkg["uuid"]})).await;
    assert_eq!(j["execution"], "succeeded", "{j}");
    let log = env.wait_boots(&vm, 1).await;
    assert_eq!(last(&log, "cpus"), "2", "{log}");
    let pid = env.pid(&vm).unwrap();

    // Not root, no capabilities, no new privileges, a seccomp filter.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(&format!("{name}:"))).unwrap().trim().to_string();
    let uids: Vec<u32> = field("Uid").split_whitespace().map(|u| u.parse().unwrap()).collect();
    assert!(uids.iter().all(|u| *u != 0), "QEMU runs as root: {uids:?}");
    assert!(uids[0] >= 2_000_000, "{uids:?}");
    assert_eq!(field("Seccomp"), "2", "QEMU's seccomp sandbox is on");
    assert_eq!(field("NoNewPrivs"), "1");
    assert_eq!(field("CapEff"), "0000000000000000");
    // Its own directory belongs to it, the image base does not.
    use std::os::unix::fs::MetadataExt;
    let dir = vm_dir(&env.agent_dir, &vm);
    assert_eq!(std::fs::metadata(&dir).unwrap().uid(), uids[0]);
    let base = std::fs::read_dir(&dir).unwrap().flatten().find(|e| e.file_name().to_string_lossy().starts_with("base0.")).unwrap();
    assert_eq!((base.metadata().unwrap().uid(), base.metadata().unwrap().mode() & 0o222), (0, 0), "the base is root's, read-only");
    // As the guest's user: its own disk (from its directory) yes, the agent's data no.
    let as_guest = |cwd: &Path, cmd: &str| {
        let u = uids[0].to_string();
        Command::new("setpriv")
            .args(["--reuid", &u, "--regid", &u, "--clear-groups", "--", "sh", "-c", cmd])
            .current_dir(cwd)
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    };
    assert!(as_guest(&dir, "test -r disk0.qcow2 && test -w disk0.qcow2 && test -r base0.* && ! test -w base0.*"));
    let image_cache = env.agent_dir.join("images").join(&env.image);
    assert!(image_cache.is_dir());
    for elsewhere in [image_cache.clone(), env.agent_dir.clone(), dir.clone()] {
        assert!(!as_guest(Path::new("/"), &format!("ls {}", elsewhere.display())), "the guest's user reaches {}", elsewhere.display());
    }

    // Its own cgroup, capped at half a core.
    let v2 = v2_has_cpu();
    let cg = cgroup_dir(pid, "cpu");
    assert!(cg.ends_with(&vm), "QEMU is in the VM's own cgroup: {}", cg.display());
    // Memory: the guest's 256 MiB + 384 MiB + 256/8 MiB for QEMU itself.
    let memory = ((256 + 384 + 32) << 20).to_string();
    if v2 {
        assert_eq!(std::fs::read_to_string(cg.join("cpu.max")).unwrap().trim(), "50000 100000");
        assert_eq!(std::fs::read_to_string(cg.join("memory.max")).unwrap().trim(), memory);
    } else {
        let quota: i64 = std::fs::read_to_string(cg.join("cpu.cfs_quota_us")).unwrap().trim().parse().unwrap();
        let period: i64 = std::fs::read_to_string(cg.join("cpu.cfs_period_us")).unwrap().trim().parse().unwrap();
        assert_eq!((quota, period), (50_000, 100_000), "cpu_cap 50 = half of one CPU");
        let mem = cgroup_dir(pid, "memory");
        assert!(mem.ends_with(&vm), "and its own memory cgroup: {}", mem.display());
        assert_eq!(std::fs::read_to_string(mem.join("memory.limit_in_bytes")).unwrap().trim(), memory);
    }

    // Spin on every vCPU, then measure for 10 s from the cgroup's accounting.
    let out = console_session(
        &env,
        &vm,
        "n=$(grep -c ^processor /proc/cpuinfo); i=0; while [ $i -lt $n ]; do sh -c 'while :; do :; done' & i=$((i+1)); done; echo \"nereid-test: spinning=$i\"\n",
    )
    .await;
    let end = Instant::now() + Duration::from_secs(60);
    while values(&env.console(&vm), "spinning").is_empty() {
        assert!(Instant::now() < end, "the guest never started spinning: {out}\n{}", env.console(&vm));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(last(&env.console(&vm), "spinning"), "2");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (t0, u0) = (Instant::now(), cpu_used_usec(pid, v2));
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (t1, u1) = (Instant::now(), cpu_used_usec(pid, v2));
    let cores = (u1 - u0) as f64 / (t1 - t0).as_micros() as f64;
    eprintln!(
        "a guest spinning on 2 vCPUs with cpu_cap 50 used {cores:.3} cores over {:.1} s (cgroup {})",
        (t1 - t0).as_secs_f64(),
        if v2 { "v2" } else { "v1" }
    );
    let (mem_dir, peak_file) = if v2 { (cg.clone(), "memory.peak") } else { (cgroup_dir(pid, "memory"), "memory.max_usage_in_bytes") };
    let peak: u64 = std::fs::read_to_string(mem_dir.join(peak_file)).map(|s| s.trim().parse().unwrap_or(0)).unwrap_or(0);
    eprintln!("its memory peaked at {} MiB of its {} MiB limit", peak >> 20, 256 + 384 + 32);
    assert!(cores <= 0.6, "cpu_cap 50 lets the guest use {cores:.3} cores");
    // (A floor well under the cap, as other work may share this machine's two cores.)
    assert!(cores >= 0.15, "the spinning guest used only {cores:.3} cores: is the accounting the VM's?");

    // A new cpu_cap reaches the running guest's cgroup.
    let j = env.act(&vm, "update", json!({"cpu_cap": 150})).await;
    assert_eq!(j["execution"], "succeeded", "{}", job_steps(&j));
    assert_eq!(env.pid(&vm), Some(pid), "applied to the running guest, without a restart");
    let quota = if v2 { "cpu.max" } else { "cpu.cfs_quota_us" };
    let want = if v2 { "150000 100000" } else { "150000" };
    assert_eq!(std::fs::read_to_string(cgroup_dir(pid, "cpu").join(quota)).unwrap().trim(), want);

    // Destroyed: its cgroup goes with it.
    let j = env.act(&vm, "destroy", json!({})).await;
    assert_eq!(j["execution"], "succeeded", "{j}");
    env.assert_gone(&vm);
    assert!(!cg.exists(), "{} is left behind", cg.display());
}
