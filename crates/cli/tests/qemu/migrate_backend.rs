//! Live migration at the backend level: two qemu backends on this machine (two data
//! directories standing for two compute nodes), no headnode and no agents. A plain relay
//! in the test copies bytes between the source's UNIX sockets and the target's, as the
//! agents' relay does between servers. The guest from the test image keeps running
//! through it: a counter it prints every second goes on from where it was, its uptime
//! keeps growing, it never boots again, and what it wrote to its disk during the mirror
//! is on the target. The benchmark `migration` runs the same flow with a bigger guest.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::BoxStream;
use nereid_agent::backend::qemu::{Accel, Config, Qemu};
use nereid_agent::backend::{Backend, RamOptions};
use nereid_agent::images::{Fetch, ImageCache};
use nereid_testkit::qemu::{Reaper, test_image, values};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use uuid::Uuid;

/// The image is installed in each node's cache beforehand: nothing is ever fetched.
struct Preinstalled;

type Fut<'a, T> = Pin<Box<dyn std::future::Future<Output = Result<T, String>> + Send + 'a>>;

impl Fetch for Preinstalled {
    fn manifest<'s, 'a>(&'s self, image: Uuid) -> Fut<'a, Value>
    where
        's: 'a,
        Self: 'a,
    {
        Box::pin(async move { Err(format!("image {image} should have been preinstalled")) })
    }
    fn file<'s, 'a>(&'s self, image: Uuid) -> Fut<'a, BoxStream<'static, Result<Bytes, String>>>
    where
        's: 'a,
        Self: 'a,
    {
        Box::pin(async move { Err(format!("image {image} should have been preinstalled")) })
    }
}

/// A qemu backend on `dir` with `image` (the test image, raw) in its cache.
fn node(dir: &Path, image: Uuid, file: &Path, uid_base: u32) -> Qemu {
    let cache = dir.join("images");
    let idir = cache.join(image.to_string());
    std::fs::create_dir_all(&idir).unwrap();
    let base = idir.join("base.raw");
    std::fs::copy(file, &base).unwrap();
    let size = std::fs::metadata(&base).unwrap().len();
    let json = json!({"path": base, "format": "raw", "virtual_size": size, "sha1": "preinstalled"});
    std::fs::write(idir.join("base.json"), json.to_string()).unwrap();
    let mut cfg = Config::debian(dir.to_path_buf(), Accel::Tcg);
    cfg.stop_timeout = Duration::from_secs(30);
    cfg.uid_base = uid_base;
    Qemu::new(cfg, Arc::new(ImageCache::new(cache, Arc::new(Preinstalled))))
}

/// Reads a VM's serial console (QEMU's socket) into a shared buffer; `type_line` types.
struct Console {
    text: Arc<Mutex<String>>,
    input: tokio::net::unix::OwnedWriteHalf,
}

impl Console {
    async fn connect(socket: PathBuf) -> Console {
        let end = Instant::now() + Duration::from_secs(30);
        let stream = loop {
            match UnixStream::connect(&socket).await {
                Ok(s) => break s,
                Err(e) if Instant::now() > end => panic!("console {}: {e}", socket.display()),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        let (mut r, input) = stream.into_split();
        let text = Arc::new(Mutex::new(String::new()));
        let t = text.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = r.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                t.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]).replace('\r', ""));
            }
        });
        Console { text, input }
    }

    fn text(&self) -> String {
        self.text.lock().unwrap().clone()
    }

    async fn type_line(&mut self, line: &str) {
        self.input.write_all(format!("{line}\n").as_bytes()).await.unwrap();
    }

    /// Waits until `pred` holds of what the console shows.
    async fn wait(&self, what: &str, within: Duration, pred: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + within;
        loop {
            let t = self.text();
            if pred(&t) {
                return t;
            }
            let tail: String = t.chars().rev().take(3000).collect::<Vec<_>>().into_iter().rev().collect();
            assert!(Instant::now() < end, "{what}: not within {} s; the console ends with:\n{tail}", within.as_secs());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Runs `cmd` in the guest's shell, which prints `nereid-test: <key>=<value>`; the value.
    async fn ask(&mut self, key: &str, cmd: &str) -> String {
        let before = values(&self.text(), key).len();
        // The key comes from a variable: the shell's echo of the typed line is no answer.
        self.type_line(&format!("k={key}; echo \"nereid-test: $k=$({cmd})\"")).await;
        let log = self.wait(key, Duration::from_secs(300), |t| values(t, key).len() > before).await;
        values(&log, key)[before].clone()
    }
}

/// Copies bytes both ways between connections to `listen` (made in the source's VM
/// directory, open to its QEMU's user) and new connections to `to`.
fn relay(listen: &Path, to: PathBuf, sent: Arc<std::sync::atomic::AtomicU64>) {
    let _ = std::fs::remove_file(listen);
    let l = UnixListener::bind(listen).unwrap();
    std::fs::set_permissions(listen, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    tokio::spawn(async move {
        while let Ok((mut a, _)) = l.accept().await {
            let to = to.clone();
            let sent = sent.clone();
            tokio::spawn(async move {
                let mut b = UnixStream::connect(&to).await.unwrap();
                if let Ok((up, _)) = tokio::io::copy_bidirectional(&mut a, &mut b).await {
                    sent.fetch_add(up, std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
    });
}

/// Waits until the source's mirror is in step.
async fn in_step(src: &Qemu, uuid: Uuid) -> nereid_agent::backend::MirrorStatus {
    let end = Instant::now() + Duration::from_secs(300);
    loop {
        let s = src.migrate_mirror_status(uuid).await.unwrap();
        if s.ready {
            return s;
        }
        assert!(Instant::now() < end, "the mirror did not get in step: {s:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn def(uuid: Uuid, image: Uuid, ram_mib: u64) -> nereid_types::agent::Definition {
    serde_json::from_value(json!({
        "uuid": uuid, "brand": "bhyve", "owner_uuid": Uuid::new_v4(), "ram": ram_mib, "vcpus": 1,
        "disks": [{"image_uuid": image, "size": 1024, "boot": true, "model": "virtio"}], "nics": []
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_running_guest_moves_live_between_two_qemu_backends() {
    let r = live_migration(256, 0, true).await;
    eprintln!("{r:?}");
}

/// What one live migration took.
#[derive(Debug, Clone, Copy)]
pub struct Report {
    /// From the mirror's start to the guest running on the target.
    pub total: Duration,
    /// Until the mirror was in step.
    pub mirror: Duration,
    /// RAM bytes QEMU sent, and bytes through the relay (disks and RAM).
    pub ram_bytes: u64,
    pub relay_bytes: u64,
    pub pause_ms: u64,
}

/// Boots a guest of `ram_mib` from the test image on one backend (`fill_mib` of its RAM
/// written after boot), moves it live to the other and checks it kept running there.
/// `give_up_first`: a first switch that cannot converge in time (no time at all) leaves
/// the guest running on the source, and the migration starts over (a new target QEMU, a
/// new mirror) before the real one.
pub async fn live_migration(ram_mib: u64, fill_mib: u64, give_up_first: bool) -> Report {
    let file = tokio::task::spawn_blocking(test_image).await.unwrap().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (tmp.path().join("a"), tmp.path().join("b"));
    let reaper = Reaper(a_dir.clone());
    let reaper_b = reaper.alongside(b_dir.clone());
    let image = Uuid::new_v4();
    let (src, dst) = (node(&a_dir, image, &file, 2_000_000), node(&b_dir, image, &file, 2_100_000));
    assert!(src.can_migrate_live());
    let uuid = Uuid::new_v4();
    let def = def(uuid, image, ram_mib);

    // The guest boots on the source (no metadata server: its reads time out, it goes on).
    src.create(&def).await.unwrap();
    src.start(&def).await.unwrap();
    let mut con = Console::connect(src.layout(uuid).console()).await;
    con.wait("the guest's boot", Duration::from_secs(300), |t| t.contains("nereid-test: ready")).await;
    assert_eq!(values(&con.text(), "boots"), ["0"]);
    con.type_line("(k=tick; i=0; while :; do i=$((i+1)); echo \"nereid-test: $k=$i\"; sleep 1; done) &").await;
    con.wait("ticks", Duration::from_secs(60), |t| values(t, "tick").len() >= 2).await;
    if fill_mib > 0 {
        let filled =
            con.ask("filled", &format!("dd if=/dev/zero bs=1048576 count={fill_mib} 2>/dev/null | tr '\\0' x > /fill && echo yes")).await;
        assert_eq!(filled, "yes");
    }

    // The target: created stopped, then waiting paused with its disk exported.
    dst.create(&def).await.unwrap();
    let sockets = dst.migrate_incoming(&def).await.unwrap();
    assert_eq!(dst.migrate_incoming(&def).await.unwrap(), sockets, "idempotent");
    let mut target_con = Console::connect(dst.layout(uuid).console()).await;

    // Disks: mirrored through the relay while the guest writes to its disk.
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let src_dir = src.layout(uuid).dir;
    relay(&src_dir.join("mig-nbd.sock"), sockets.nbd.clone(), sent.clone());
    relay(&src_dir.join("mig-ram.sock"), sockets.ram.clone(), sent.clone());
    let t0 = Instant::now();
    src.migrate_mirror_start(uuid, &src_dir.join("mig-nbd.sock")).await.unwrap();
    src.migrate_mirror_start(uuid, &src_dir.join("mig-nbd.sock")).await.unwrap();
    con.type_line("printf '%-512s' written-during-mirror | dd of=/dev/vda bs=512 seek=2001 count=1 conv=notrunc,fsync 2>/dev/null").await;
    let status = in_step(&src, uuid).await;
    let mut mirror = t0.elapsed();
    assert!(status.total > 0 && status.done == status.total, "{status:?}");
    if give_up_first {
        let hurry = RamOptions { max_bandwidth: Some(1 << 20), deadline: Duration::ZERO, downtime_limit_ms: 1 };
        let out = src.migrate_ram(uuid, &src_dir.join("mig-ram.sock"), &hurry).await.unwrap();
        assert!(!out.converged, "{out:?}");
        let n = values(&con.text(), "tick").len();
        con.wait("ticks on the source after the switch gave up", Duration::from_secs(60), |t| values(t, "tick").len() > n + 1).await;
        // Starting over: the mirror ends, the target's QEMU is replaced, a new mirror.
        src.migrate_mirror_cancel(uuid).await.unwrap();
        assert!(src.migrate_mirror_status(uuid).await.is_err(), "no mirror after its cancel");
        dst.stop(uuid).await.unwrap();
        assert_eq!(dst.migrate_incoming(&def).await.unwrap(), sockets);
        target_con = Console::connect(dst.layout(uuid).console()).await;
        src.migrate_mirror_start(uuid, &src_dir.join("mig-nbd.sock")).await.unwrap();
        in_step(&src, uuid).await;
        mirror = t0.elapsed();
    }
    let uptime_before: f64 = con.ask("uptime", "cut -d' ' -f1 /proc/uptime").await.parse().unwrap();
    let ticks_before = values(&con.text(), "tick").len();

    // RAM, and the mirrors completed with the guest paused.
    let opts = RamOptions { max_bandwidth: None, deadline: Duration::from_secs(300), downtime_limit_ms: 500 };
    let out = src.migrate_ram(uuid, &src_dir.join("mig-ram.sock"), &opts).await.unwrap();
    assert!(out.converged, "{out:?}");
    assert!(out.ram_bytes > 0, "{out:?}");
    assert!(src.migrate_mirror_status(uuid).await.is_err(), "no mirror left on the source");

    // The target runs the guest; the source's QEMU is quit (paused, it ignores no button).
    dst.migrate_resume_target(uuid).await.unwrap();
    let total = t0.elapsed();
    dst.migrate_resume_target(uuid).await.unwrap();
    src.stop(uuid).await.unwrap();
    assert!(!src.is_running(uuid).await, "the source's QEMU is gone");
    assert!(dst.is_running(uuid).await);
    let uptime_after: f64 = target_con.ask("uptime", "cut -d' ' -f1 /proc/uptime").await.parse().unwrap();
    assert!(uptime_after > uptime_before, "the guest's clock went on: {uptime_before} s → {uptime_after} s");
    let t = target_con.wait("ticks on the target", Duration::from_secs(60), |t| values(t, "tick").len() >= 2).await;
    let first: usize = values(&t, "tick")[0].parse().unwrap();
    assert!(first >= ticks_before, "the counter went on from {ticks_before}, not from 1: {first}");
    assert!(!t.contains("nereid-test: boot"), "the guest did not boot again on the target:\n{t}");
    let mark = target_con
        .ask("mark", "echo 3 > /proc/sys/vm/drop_caches; dd if=/dev/vda bs=512 skip=2001 count=1 2>/dev/null | tr -dc 'a-z-'")
        .await;
    assert_eq!(mark, "written-during-mirror", "the disk write made during the mirror is on the target's disk");

    // Stopped for good, the target's disk is the guest's; an offline copy names its files.
    dst.stop(uuid).await.unwrap();
    let files: Vec<String> = dst.migration_files(uuid).await.unwrap().into_iter().map(|(n, _)| n).collect();
    assert_eq!(files, ["disk0.qcow2"]);
    assert!(dst.migration_file_path(uuid, "../uid").is_err());
    for b in [&src, &dst] {
        b.delete(uuid).await.unwrap();
    }
    drop(reaper_b);
    drop(reaper);
    let relay_bytes = sent.load(std::sync::atomic::Ordering::Relaxed);
    Report { total, mirror, ram_bytes: out.ram_bytes, relay_bytes, pause_ms: out.pause_ms }
}
