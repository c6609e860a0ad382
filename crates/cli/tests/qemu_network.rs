//! Guest networking end to end: `nereid up --backend qemu --demo` in a network namespace
//! the test makes (its managed bridge, taps, DHCP responders and nftables rules all live
//! there, and go with it), real guests from the test image that configure themselves by
//! DHCP, and `ping` — from the namespace (the host's view) and from the guests' consoles.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::process::{Child, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nereid_testkit::netns::NetNs;
use nereid_testkit::qemu::{Reaper, console_log, test_image, values, wait_boots};
use serde_json::Value;

const BOOT: Duration = Duration::from_secs(240);
const NEREID: &str = env!("CARGO_BIN_EXE_nereid");

/// `nereid up` running inside a namespace of its own.
struct Up {
    ns: Arc<NetNs>,
    data: PathBuf,
    image: PathBuf,
    child: Option<Child>,
    /// The banner's `vm create` example.
    create: String,
    _reaper: Reaper,
    _dir: tempfile::TempDir,
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Up {
    async fn start() -> (Up, String) {
        let image = tokio::task::spawn_blocking(test_image).await.unwrap().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let ns = Arc::new(NetNs::new("up").unwrap());
        let mut up = Up { ns, _reaper: Reaper(data.join("agent")), data, image, child: None, create: String::new(), _dir: dir };
        let banner = up.launch().await;
        (up, banner)
    }

    /// Starts (or restarts) `nereid up`; its banner.
    async fn launch(&mut self) -> String {
        let mut child = self
            .ns
            .cmd(NEREID)
            .args(["up", "--data-dir", self.data.to_str().unwrap(), "--admin-listen", "127.0.0.1:0", "--cloudapi-listen", "127.0.0.1:0"])
            .args(["--backend", "qemu", "--accel", "tcg", "--demo", "--demo-image", self.image.to_str().unwrap()])
            .env("HOME", self._dir.path())
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::OpenOptions::new().create(true).append(true).open(self._dir.path().join("up.log")).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        self.child = Some(child);
        let (text, create) = tokio::task::spawn_blocking(move || {
            let mut stdout = stdout;
            let banner = common::up_banner(&mut stdout);
            // Keep reading: `nereid up` says goodbye on stdout when it stops.
            std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
            banner
        })
        .await
        .unwrap();
        if let Some(c) = create {
            self.create = c;
        }
        assert!(text.contains("Ctrl-C"), "nereid up did not start:\n{text}\n{}", self.log());
        text
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("up.log")).unwrap_or_default()
    }

    /// Ctrl-C, as an operator stops it.
    fn stop(&mut self) {
        let mut c = self.child.take().unwrap();
        let _ = std::process::Command::new("kill").args(["-INT", &c.id().to_string()]).status();
        let status = c.wait().unwrap();
        assert!(status.success(), "nereid up did not stop cleanly: {status}\n{}", self.log());
    }

    fn admin(&self, args: &[&str]) -> Output {
        self.ns.cmd(NEREID).args(["admin", "--data-dir", self.data.to_str().unwrap()]).args(args).output().unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let out = self.admin(&a);
        assert!(out.status.success(), "nereid admin {args:?}: {}{}", common::stdout(&out), common::stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Provisions a VM like the banner's example, on `network`; its uuid.
    fn create(&self, alias: &str, network: Option<&str>) -> String {
        let mut cmd = self.create.replacen("nereid", NEREID, 1).replace("alias=web-1", &format!("alias={alias}"));
        if let Some(n) = network {
            let start = cmd.find("networks='").unwrap();
            let end = start + cmd[start..].find("]'").unwrap() + 2;
            cmd.replace_range(start..end, &format!("networks='[\"{n}\"]'"));
        }
        let out = self.ns.cmd("sh").arg("-c").arg(&cmd).output().unwrap();
        let printed = common::stdout(&out);
        assert!(out.status.success() && printed.contains("(provision) succeeded"), "{cmd}\n{printed}{}", common::stderr(&out));
        printed.split_whitespace().nth(1).unwrap().to_string()
    }

    fn ip(&self, vm: &str) -> String {
        self.json(&["vm", "get", vm])["nics"][0]["ip"].as_str().unwrap().to_string()
    }

    fn agent(&self) -> PathBuf {
        self.data.join("agent")
    }

    /// Types `input` on the VM's serial console; what came back.
    async fn console(&self, vm: &str, input: &str) -> String {
        let (ns, data, vm, input) = (self.ns.clone(), self.data.clone(), vm.to_string(), input.to_string());
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut c = ns
                .cmd(NEREID)
                .args(["admin", "--data-dir", data.to_str().unwrap(), "vm", "console", &vm, "--idle", "4", "--timeout", "90"])
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

    /// Whether the guest `vm` reaches `ip` with ping (run on its console).
    async fn guest_pings(&self, vm: &str, ip: &str) -> bool {
        let out = self.console(vm, &format!("ping -c 2 -W 2 {ip} >/dev/null 2>&1 && echo PING-OK-$((6*7)) || echo PING-FAILED-$((6*7))\n")).await;
        assert!(out.contains("PING-OK-42") || out.contains("PING-FAILED-42"), "no answer on {vm}'s console:\n{out}");
        out.contains("PING-OK-42")
    }
}

/// Waits until the namespace (the host) reaches `ip`; how long that took from `since`.
fn wait_ping(ns: &NetNs, ip: &str, since: Instant, within: Duration) -> Option<Duration> {
    while since.elapsed() < within {
        if ns.pings(ip, 1) {
            return Some(since.elapsed());
        }
    }
    None
}

fn dhcp_line(log: &str) -> String {
    values(log, "dhcp eth0 ip").last().cloned().unwrap_or_default()
}

/// A new user's first minute, with a network: the VM from the banner's command gets its
/// NAPI address by DHCP (no metadata help: the test image has no cloud-init) and answers
/// ping from the host; a clean stop removes the bridge and NAT that `nereid up` made,
/// and the next start makes them again while the VM keeps running and stays reachable.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nereid_up_demo_vm_gets_its_address_by_dhcp_and_answers_ping() {
    let (mut up, banner) = Up::start().await;
    assert!(banner.contains("bridge nereid0 (gateway 10.88.0.1/24); VMs get their addresses by DHCP"), "{banner}");
    let created = Instant::now();
    let vm = up.create("web-1", None);
    let ip = up.ip(&vm);
    let took = wait_ping(&up.ns, &ip, created, BOOT);
    let log = console_log(&up.agent(), &vm);
    let took = took.unwrap_or_else(|| panic!("{ip} never answered ping; console:\n{log}"));
    println!("CreateVm → the guest answers ping at {ip}: {:.1} s (TCG)", took.as_secs_f64());
    let log = wait_boots(&up.agent(), &vm, 1, BOOT).await.unwrap();
    assert_eq!(dhcp_line(&log), format!("{ip}/24 router=10.88.0.1 dns=10.88.0.1 mtu=1500 hostname=web-1 routes=-"), "{log}");
    // The guest reaches the host at its gateway.
    assert!(up.guest_pings(&vm, "10.88.0.1").await);

    up.stop();
    let gone = up.ns.sh("ip link show nereid0 2>&1 || true; nft list table ip nereid_nat 2>&1 || true").unwrap();
    assert!(gone.contains("does not exist") && gone.contains("No such file"), "the managed network outlived a clean stop:\n{gone}");
    assert!(!up.ns.pings(&ip, 1), "reachable without its bridge");

    // Started again: the bridge is back and the running VM's tap is plugged into it again.
    up.launch().await;
    assert!(wait_ping(&up.ns, &ip, Instant::now(), Duration::from_secs(30)).is_some(), "{ip} unreachable after a restart");
    assert!(up.guest_pings(&vm, "10.88.0.1").await);
}
