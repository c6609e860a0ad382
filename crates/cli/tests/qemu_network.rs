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
    /// Flags beyond the defaults.
    extra: Vec<String>,
    /// The headnode's agent listener (where other agents join).
    agent_listen: String,
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
        Up::start_with(&[], "true").await
    }

    /// With `extra` flags, after `setup` ran in the namespace.
    async fn start_with(extra: &[&str], setup: &str) -> (Up, String) {
        let image = tokio::task::spawn_blocking(test_image).await.unwrap().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let ns = Arc::new(NetNs::new("up").unwrap());
        ns.sh(setup).unwrap();
        let extra = extra.iter().map(|s| s.to_string()).collect();
        let mut up = Up {
            ns,
            _reaper: Reaper(data.join("agent")),
            data,
            image,
            child: None,
            create: String::new(),
            extra,
            // The namespace is the test's own: the agent listener's usual port is free.
            agent_listen: "127.0.0.1:8081".into(),
            _dir: dir,
        };
        let banner = up.launch().await;
        (up, banner)
    }

    /// Starts (or restarts) `nereid up`; its banner.
    async fn launch(&mut self) -> String {
        let mut child = self
            .ns
            .cmd(NEREID)
            .args(["up", "--data-dir", self.data.to_str().unwrap(), "--admin-listen", "127.0.0.1:0", "--cloudapi-listen", "127.0.0.1:0"])
            .args(["--agent-listen", &self.agent_listen])
            .args(["--backend", "qemu", "--accel", "tcg", "--demo", "--demo-image", self.image.to_str().unwrap()])
            .args(&self.extra)
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
        let (out, cmd) = self.try_create(alias, network, "");
        let printed = common::stdout(&out);
        assert!(out.status.success() && printed.contains("(provision) succeeded"), "{cmd}\n{printed}{}", common::stderr(&out));
        printed.split_whitespace().nth(1).unwrap().to_string()
    }

    /// The banner's example with another alias, network and `extra` fields; its output.
    fn try_create(&self, alias: &str, network: Option<&str>, extra: &str) -> (Output, String) {
        let mut cmd = self.create.replacen("nereid", NEREID, 1).replace("alias=web-1", &format!("alias={alias}"));
        if let Some(n) = network {
            let start = cmd.find("networks='").unwrap();
            let end = start + cmd[start..].find("]'").unwrap() + 2;
            cmd.replace_range(start..end, &format!("networks='[\"{n}\"]'"));
        }
        let cmd = cmd.replacen(" -w", &format!(" {extra} -w"), 1);
        (self.ns.cmd("sh").arg("-c").arg(&cmd).output().unwrap(), cmd)
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
        self.guest_ok(vm, &format!("ping -c 2 -W 2 {ip} >/dev/null 2>&1")).await
    }

    /// Whether the shell command `cmd` succeeds on the guest `vm`'s console.
    async fn guest_ok(&self, vm: &str, cmd: &str) -> bool {
        // A number of its own per question: the console replays earlier output first, and the
        // typed command echoes `$((n*7))`, never its value.
        static ASKED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);
        let n = ASKED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let out = self.console(vm, &format!("{cmd} && echo CMD-OK-$(({n}*7)) || echo CMD-FAILED-$(({n}*7))\n")).await;
        let (ok, failed) = (format!("CMD-OK-{}", n * 7), format!("CMD-FAILED-{}", n * 7));
        assert!(out.contains(&ok) || out.contains(&failed), "no answer on {vm}'s console to {cmd:?}:\n{out}");
        out.contains(&ok)
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

    // A second NIC on a running VM: it restarts, and the guest configures it by DHCP too.
    let second = up.network(&[
        "name=second",
        "nic_tag=external",
        "vlan_id=5",
        "subnet=10.95.0.0/24",
        "provision_start_ip=10.95.0.10",
        "provision_end_ip=10.95.0.20",
    ]);
    let out = up.admin(&["vm", "add-nics", &vm, &format!("networks=[\"{second}\"]"), "-w"]);
    assert!(out.status.success(), "add-nics: {}{}", common::stdout(&out), common::stderr(&out));
    let rec = up.json(&["vm", "get", &vm]);
    let nic =
        rec["nics"].as_array().unwrap().iter().find(|n| n["network_uuid"] == second.as_str()).cloned().unwrap_or_else(|| panic!("{rec}"));
    let ip2 = nic["ip"].as_str().unwrap().to_string();
    let log = wait_boots(&up.agent(), &vm, 2, BOOT).await.unwrap();
    assert!(values(&log, "dhcp eth1 ip").iter().any(|l| l.starts_with(&format!("{ip2}/24 "))), "eth1 got no lease for {ip2}:\n{log}");
    assert!(wait_ping(&up.ns, &ip, Instant::now(), Duration::from_secs(60)).is_some(), "{ip} unreachable after add-nics");
    // And removed again: the guest comes back with one NIC, NAPI forgets the second.
    let mac2 = nic["mac"].as_str().unwrap().to_string();
    let out = up.admin(&["vm", "remove-nics", &vm, &format!("macs=[\"{mac2}\"]"), "-w"]);
    assert!(out.status.success(), "remove-nics: {}{}", common::stdout(&out), common::stderr(&out));
    let log = wait_boots(&up.agent(), &vm, 3, BOOT).await.unwrap();
    let third_boot = log.rsplit("nereid-test: boot").next().unwrap_or_default();
    assert!(!third_boot.contains("dhcp eth1"), "eth1 is still there:\n{third_boot}");
    assert!(!up.admin(&["nic", "get", &mac2]).status.success(), "the removed NIC is still in NAPI");
}

impl Up {
    /// An operator API call made from inside the namespace (where it listens).
    fn api(&self, method: &str, path: &str, body: &Value) -> Value {
        use std::io::{Read, Write};
        let endpoints: Value = serde_json::from_slice(&std::fs::read(self.data.join("endpoints.json")).unwrap()).unwrap();
        let addr = endpoints["admin"].as_str().unwrap().trim_start_matches("http://").to_string();
        let token = std::fs::read_to_string(self.data.join("admin.token")).unwrap();
        let mut s = self.ns.enter(|| std::net::TcpStream::connect(&addr).unwrap()).unwrap();
        let body = if body.is_null() { String::new() } else { body.to_string() };
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            token.trim(),
            body.len()
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let (head, payload) = out.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 2"), "{method} {path}: {out}");
        serde_json::from_str(payload.trim()).unwrap_or(Value::Null)
    }

    /// Changes NIC flags with `nereid admin vm update-nics` (VMAPI's `update_nics`), waiting.
    fn update_nic(&self, vm: &str, mac: &str, flags: Value) {
        let mut nic = flags;
        nic["mac"] = Value::String(mac.to_string());
        let nics = format!("nics={}", Value::Array(vec![nic]));
        let out = self.admin(&["vm", "update-nics", vm, &nics, "-w"]);
        assert!(out.status.success(), "update-nics: {}{}", common::stdout(&out), common::stderr(&out));
    }

    fn mac(&self, vm: &str) -> String {
        self.json(&["vm", "get", vm])["nics"][0]["mac"].as_str().unwrap().to_string()
    }

    fn network(&self, args: &[&str]) -> String {
        let mut a = vec!["network", "create"];
        a.extend_from_slice(args);
        self.json(&a)["uuid"].as_str().unwrap().to_string()
    }

    /// The filter table as the host has it, without counters.
    fn rules(&self) -> String {
        self.ns.sh("nft -s list table bridge nereid").unwrap()
    }

    fn tap(&self, vm: &str) -> String {
        format!("nt{}0", &vm.replace('-', "")[..8])
    }
}

/// Four guests on one host: two on the managed network reach each other, one on another
/// VLAN of the same nic tag (even with an overlapping subnet) reaches neither, one on a
/// second network reaches the first only through its gateway. Then what a guest may send:
/// a changed IP or MAC is cut off until the matching allow_* flag is set, a guest's DHCP
/// server reaches no other guest's client. An agent restart changes none of it, and a
/// deleted VM leaves no tap, rule, responder or NAPI address behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn qemu_guests_reach_each_other_only_as_networks_and_filters_allow() {
    let (mut up, _) = Up::start().await;
    let vlan7 = up.network(&[
        "name=vlan7",
        "nic_tag=external",
        "vlan_id=7",
        "subnet=10.88.0.0/24",
        "provision_start_ip=10.88.0.100",
        "provision_end_ip=10.88.0.150",
    ]);
    let vlan8 = up.network(&[
        "name=vlan8",
        "nic_tag=external",
        "vlan_id=8",
        "subnet=10.89.0.0/24",
        "gateway=10.89.0.1",
        "provision_start_ip=10.89.0.10",
        "provision_end_ip=10.89.0.50",
    ]);
    // The managed network learns the new gateway at its next start.
    up.stop();
    up.launch().await;
    let a = up.create("a", None);
    let b = up.create("b", None);
    let c = up.create("c", Some(&vlan7));
    let d = up.create("d", Some(&vlan8));
    let (ia, ib, ic) = (up.ip(&a), up.ip(&b), up.ip(&c));
    assert!(ic.starts_with("10.88.0.1"), "{ic}: C shares A's subnet on another VLAN");
    for vm in [&a, &b, &c, &d] {
        let log = wait_boots(&up.agent(), vm, 1, BOOT).await.unwrap();
        assert!(dhcp_line(&log).starts_with(&format!("{}/24", up.ip(vm))), "{vm}: {log}");
    }
    assert!(up.guest_pings(&a, &ib).await, "A reaches B on their network");
    assert!(!up.guest_pings(&c, &ia).await, "C, on VLAN 7, reaches A on VLAN 0");
    assert!(up.guest_pings(&d, &ia).await, "D reaches A through its gateway");
    let out = up.console(&d, "ip route del default && echo ROUTE-GONE-$((1+2))\n").await;
    assert!(out.contains("ROUTE-GONE-3"), "{out}");
    assert!(!up.guest_pings(&d, &ia).await, "D reaches A without its gateway");

    // A guest that takes another IP is cut off until allow_ip_spoofing.
    let added = up.console(&a, "ip addr add 10.88.0.200/24 dev eth0 && echo ADDED-$((2+2))\n").await;
    assert!(added.contains("ADDED-4"), "A did not take the second IP: {added}");
    assert!(!up.ns.pings("10.88.0.200", 3), "a spoofed IP answered");
    up.update_nic(&a, &up.mac(&a), serde_json::json!({"allow_ip_spoofing": true}));
    if !up.ns.pings("10.88.0.200", 10) {
        let guest = up.console(&a, "ip addr show eth0; ip neigh\n").await;
        let host = up.ns.sh("ip neigh; ip addr show nereid0").unwrap_or_default();
        panic!("allow_ip_spoofing did not let the second IP through\nrules:\n{}\nguest:\n{guest}\nhost:\n{host}", up.rules());
    }
    // A guest's DHCP server reaches no other guest's client: B keeps getting its NAPI lease.
    up.console(&a, "mkdir -p /var/lib/misc; touch /var/lib/misc/udhcpd.leases; printf 'start 10.88.0.210\\nend 10.88.0.220\\ninterface eth0\\nopt router 10.88.0.1\\n' >/tmp/u.conf; udhcpd /tmp/u.conf\n").await;
    let before = values(&console_log(&up.agent(), &b), "dhcp eth0 ip").len();
    for _ in 0..2 {
        up.console(&b, "udhcpc -i eth0 -n -q -t 3 -T 1 -s /etc/udhcpc.script\n").await;
    }
    let leases = values(&console_log(&up.agent(), &b), "dhcp eth0 ip");
    let new = &leases[before..];
    assert!(new.len() >= 2 && new.iter().all(|l| l.starts_with(&format!("{ib}/24 "))), "B's leases: {new:?}");
    let chain = up.ns.sh(&format!("nft list chain bridge nereid port_{}", up.tap(&a))).unwrap();
    let dropped = chain.lines().find(|l| l.contains("\"dhcp server\"")).unwrap_or_default().to_string();
    assert!(!dropped.contains("packets 0 "), "A's DHCP offers were not what the filter dropped: {chain}");

    // A guest that takes another MAC is cut off until allow_mac_spoofing.
    up.console(&b, "ip link set eth0 down; ip link set eth0 address 02:00:00:00:00:42; ip link set eth0 up\n").await;
    up.ns.sh("ip neigh flush dev nereid0").unwrap();
    assert!(!up.ns.pings(&ib, 3), "a spoofed MAC answered");
    up.update_nic(&b, &up.mac(&b), serde_json::json!({"allow_mac_spoofing": true}));
    up.ns.sh("ip neigh flush dev nereid0").unwrap();
    assert!(up.ns.pings(&ib, 10), "allow_mac_spoofing did not let the new MAC through");

    // Restarting the agent (with the headnode) changes nothing the guests see.
    let before = up.rules();
    up.stop();
    up.launch().await;
    assert_eq!(up.rules(), before, "the filter table after a restart");
    assert!(up.ns.pings(&ia, 10), "the host reaches A after a restart");
    // A still knows B by the MAC B had before it changed it.
    up.console(&a, "ip neigh flush dev eth0\n").await;
    assert!(up.guest_pings(&a, &ib).await, "A reaches B after a restart");

    // A deleted VM leaves nothing behind.
    let (tap_b, mac_b) = (up.tap(&b), up.mac(&b));
    let out = up.admin(&["vm", "delete", &b, "-w"]);
    assert!(out.status.success(), "{}{}", common::stdout(&out), common::stderr(&out));
    let left = up.ns.sh(&format!("ip link show {tap_b} 2>&1 || true")).unwrap();
    assert!(left.contains("does not exist"), "B's tap: {left}");
    assert!(!up.rules().contains(&tap_b), "B's rules outlived it:\n{}", up.rules());
    let packet_sockets = up.ns.sh("tail -n +2 /proc/net/packet | wc -l").unwrap();
    assert_eq!(packet_sockets.trim(), "3", "one DHCP responder per remaining VM");
    let nic = up.admin(&["nic", "get", &mac_b]);
    assert!(!nic.status.success(), "B's NIC is still in NAPI: {}", common::stdout(&nic));
    let ip = up.api(
        "GET",
        &format!("/networks/{}/ips/{ib}", up.json(&["vm", "get", &a])["nics"][0]["network_uuid"].as_str().unwrap()),
        &Value::Null,
    );
    assert!(ip["belongs_to_uuid"].is_null() && ip["free"] != false, "B's address is not free: {ip}");
}

/// A nic tag whose link refuses the MTU its networks need (a macvlan can never exceed its
/// parent's MTU) is a problem on the server record, named in placement's explanation;
/// another server takes the VM.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn qemu_server_whose_link_refuses_the_mtu_shows_a_problem_and_placement_goes_elsewhere() {
    let (up, _) = Up::start_with(
        &["--no-managed-network", "--nic-tag", "external=link:xm0"],
        "ip link add v0 type veth peer name v1; ip link set v0 up; ip link set v1 up; ip link add link v0 name xm0 type macvlan; ip link set xm0 up",
    )
    .await;
    let qemu_server = up.json(&["server", "list"])[0]["uuid"].as_str().unwrap().to_string();
    let out = up.admin(&["nic-tag", "update", "external", "mtu=9000"]);
    assert!(out.status.success(), "{}{}", common::stdout(&out), common::stderr(&out));
    let jumbo = up.network(&[
        "name=jumbo",
        "nic_tag=external",
        "vlan_id=0",
        "subnet=10.90.0.0/24",
        "provision_start_ip=10.90.0.10",
        "provision_end_ip=10.90.0.100",
        "mtu=9000",
    ]);
    // The agent hears of the new MTU with its next heartbeat, tries it and reports back.
    let end = Instant::now() + Duration::from_secs(30);
    let server = loop {
        let s = up.json(&["server", "get", &qemu_server]);
        if s["problems"].as_array().is_some_and(|p| !p.is_empty()) || Instant::now() > end {
            break s;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    let p = &server["problems"][0];
    assert_eq!(
        (p["kind"].as_str(), p["nic_tag"].as_str(), p["link"].as_str()),
        (Some("nic_tag_mtu"), Some("external"), Some("xm0")),
        "{server}"
    );
    assert_eq!((p["wanted_mtu"].as_u64(), p["actual_mtu"].as_u64()), (Some(9000), Some(1500)), "{server}");
    assert!(p["message"].as_str().unwrap().contains("xm0 refused MTU 9000"), "{server}");
    // The table view says it too.
    let table = common::stdout(&up.admin(&["server", "get", &qemu_server]));
    assert!(table.contains("xm0 refused MTU 9000"), "{table}");

    // Pinned to that server, the VM is refused with the reason.
    let (out, _) = up.try_create("pinned", Some(&jumbo), &format!("server_uuid={qemu_server}"));
    let said = common::stdout(&out) + &common::stderr(&out);
    assert!(!out.status.success() && said.contains("nic tag external: xm0 refused MTU 9000"), "{said}");

    // Another server (simulated, its links fine) takes it.
    let sim_dir = up._dir.path().join("sim");
    let mut sim = up
        .ns
        .cmd(NEREID)
        .args(["agent", "--headnode", "https://127.0.0.1:8081", "--join-token-file"])
        .arg(up.data.join("join.token"))
        .args(["--backend", "sim", "--sim-servers", "1", "--listen", "127.0.0.1:0", "--heartbeat-secs", "1", "--data-dir"])
        .arg(&sim_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(30);
    while up.json(&["server", "list"]).as_array().unwrap().len() < 2 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(200));
    }
    let vm = up.create("elsewhere", Some(&jumbo));
    let placed = up.json(&["vm", "get", &vm])["server_uuid"].as_str().unwrap().to_string();
    let _ = sim.kill();
    let _ = sim.wait();
    assert_ne!(placed, qemu_server, "the VM went to the server whose link cannot carry its network");
}

/// A second compute node for an `Up`: a QEMU agent in a namespace of its own, joined to
/// the headnode's namespace by `ul0` (a veth pair, 10.99.0.0/24), which is both how it
/// reaches the headnode and the fabric underlay.
struct NodeB {
    ns: Arc<NetNs>,
    child: Child,
    _reaper: Reaper,
}

impl Drop for NodeB {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Up {
    /// Provisions a VM of `owner` (default: the banner's) on `network`, on `server`; its uuid.
    fn create_on(&self, alias: &str, owner: Option<&str>, network: &str, server: &str, extra: &str) -> String {
        let (out, cmd) = match owner {
            None => self.try_create(alias, Some(network), &format!("server_uuid={server} {extra}")),
            Some(o) => {
                let mut c = self.create.replacen("nereid", NEREID, 1).replace("alias=web-1", &format!("alias={alias}"));
                let start = c.find("owner_uuid=").unwrap() + "owner_uuid=".len();
                c.replace_range(start..start + 36, o);
                let start = c.find("networks='").unwrap();
                let end = start + c[start..].find("]'").unwrap() + 2;
                c.replace_range(start..end, &format!("networks='[\"{network}\"]'"));
                let c = c.replacen(" -w", &format!(" server_uuid={server} {extra} -w"), 1);
                (self.ns.cmd("sh").arg("-c").arg(&c).output().unwrap(), c)
            }
        };
        let printed = common::stdout(&out);
        assert!(out.status.success() && printed.contains("(provision) succeeded"), "{cmd}\n{printed}{}", common::stderr(&out));
        printed.split_whitespace().nth(1).unwrap().to_string()
    }

    /// Starts a QEMU agent in `b` that joins this headnode over `ul0`.
    fn join_node_b(&self, b: Arc<NetNs>) -> NodeB {
        self.join_node_b_with(b, &[])
    }

    /// [`join_node_b`](Self::join_node_b) with more agent flags.
    fn join_node_b_with(&self, b: Arc<NetNs>, extra: &[&str]) -> NodeB {
        let dir = self._dir.path().join("node-b");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self._dir.path().join("node-b.log")).unwrap();
        let child = b
            .cmd(NEREID)
            .args(["agent", "--headnode", &format!("https://{}", self.agent_listen), "--join-token-file"])
            .arg(self.data.join("join.token"))
            .args(["--backend", "qemu", "--accel", "tcg", "--listen", "10.99.0.2:5309", "--heartbeat-secs", "1"])
            .args(["--nic-tag", "sdc_underlay=ul0", "--stop-timeout-secs", "30"])
            .args(extra)
            .arg("--data-dir")
            .arg(&dir)
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        NodeB { ns: b, child, _reaper: self._reaper.alongside(dir) }
    }

    /// The agent data directory of node B (its VMs' console logs).
    fn node_b_dir(&self) -> PathBuf {
        self._dir.path().join("node-b")
    }

    /// Whether `vm` fetches `http://ip:port/` within a few seconds.
    async fn guest_fetches(&self, vm: &str, ip: &str, port: u16) -> bool {
        // (busybox wget crashes in the test image; nc speaks enough HTTP.)
        self.guest_ok(vm, &format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {ip} {port} 2>/dev/null | grep -q nereid-www")).await
    }

    /// Polls `check` for up to `secs` seconds until it returns `want`; whether it did.
    async fn becomes(&self, secs: u64, want: bool, mut check: impl AsyncFnMut() -> bool) -> bool {
        let end = Instant::now() + Duration::from_secs(secs);
        loop {
            if check().await == want {
                return true;
            }
            if Instant::now() > end {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Issue 13's data plane over two compute nodes, each in its own namespace, joined by an
/// underlay link the test makes, with a third namespace standing in for the outside world:
/// guests of one account on one fabric network reach each other across the nodes over
/// VXLAN; a second account with the same VLAN id and subnet reaches none of them; with
/// `internet_nat` each node's own gateway takes its guests outside, without it nothing
/// does; a firewall rule lets port 80 of the tagged guest through and not 81, and follows
/// a retag and the rule being disabled within seconds. Deleting everything leaves no
/// VXLAN device, fabric bridge, gateway namespace, firewall table or NAPI record.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn qemu_fabric_across_two_nodes_isolated_natted_and_firewalled() {
    let b = Arc::new(NetNs::new("fab-b").unwrap());
    let outside = NetNs::new("fab-out").unwrap();
    let setup = format!(
        "ip link add ul0 type veth peer name ul0 netns {b}; ip addr add 10.99.0.1/24 dev ul0; ip link set ul0 up; \
         ip link add wan0 type veth peer name wan0 netns {out}; ip addr add 198.51.100.2/24 dev wan0; ip link set wan0 up; \
         ip route add default via 198.51.100.1; sysctl -qw net.ipv4.ip_forward=1",
        b = b.name,
        out = outside.name
    );
    b.sh("ip addr add 10.99.0.2/24 dev ul0 2>/dev/null || true").unwrap();
    let image = tokio::task::spawn_blocking(test_image).await.unwrap().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let ns = Arc::new(NetNs::new("up").unwrap());
    ns.sh(&setup).unwrap();
    b.sh("ip addr replace 10.99.0.2/24 dev ul0; ip link set ul0 up; ip route add default via 10.99.0.1").unwrap();
    outside.sh("ip addr add 198.51.100.1/24 dev wan0; ip link set wan0 up; ip route add 10.99.0.0/24 via 198.51.100.2").unwrap();
    let mut up = Up {
        ns,
        _reaper: Reaper(data.join("agent")),
        data,
        image,
        child: None,
        create: String::new(),
        extra: ["--nic-tag", "sdc_underlay=ul0"].iter().map(|s| s.to_string()).collect(),
        agent_listen: "10.99.0.1:8081".into(),
        _dir: dir,
    };
    up.launch().await;
    let srv_a = up.json(&["server", "list"])[0]["uuid"].as_str().unwrap().to_string();
    let node_b = up.join_node_b(b.clone());
    let end = Instant::now() + Duration::from_secs(60);
    while up.json(&["server", "list"]).as_array().unwrap().iter().filter(|s| s["status"] == "running").count() < 2 {
        assert!(
            Instant::now() < end,
            "node B never joined:\n{}",
            std::fs::read_to_string(up._dir.path().join("node-b.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let srv_b = up
        .json(&["server", "list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["uuid"].as_str().unwrap().to_string())
        .find(|u| *u != srv_a)
        .unwrap();

    // Two accounts, each with VLAN 42 and the same subnet on it.
    let mut owners = Vec::new();
    for login in ["tenant1", "tenant2"] {
        let out = up.admin(&["account", "create", "--login", login, "--email", &format!("{login}@example.com")]);
        assert!(out.status.success(), "{}{}", common::stdout(&out), common::stderr(&out));
        owners.push(up.json(&["account", "get", login])["uuid"].as_str().unwrap().to_string());
    }
    let (owner1, owner2) = (owners[0].clone(), owners[1].clone());
    // The underlay: fabric networks get its MTU less the VXLAN header.
    let out = up.admin(&["nic-tag", "create", "name=sdc_underlay", "mtu=1500"]);
    assert!(out.status.success(), "{}{}", common::stdout(&out), common::stderr(&out));
    let mut nets = Vec::new();
    for (owner, nat) in [(&owner1, true), (&owner2, false)] {
        up.api("POST", &format!("/fabrics/{owner}/vlans"), &serde_json::json!({"vlan_id": 42, "name": "blue"}));
        let net = up.api(
            "POST",
            &format!("/fabrics/{owner}/vlans/42/networks"),
            &serde_json::json!({"name": "blue-net", "subnet": "10.50.0.0/24", "gateway": "10.50.0.1",
                "provision_start_ip": "10.50.0.10", "provision_end_ip": "10.50.0.20", "internet_nat": nat}),
        );
        assert_eq!(net["mtu"], 1450, "fabric MTU over a 1500 underlay: {net}");
        nets.push(net["uuid"].as_str().unwrap().to_string());
    }
    let a1 = up.create_on("a1", Some(&owner1), &nets[0], &srv_a, "");
    let b1 = up.create_on("b1", Some(&owner1), &nets[0], &srv_b, "");
    let b2 = up.create_on("b2", Some(&owner2), &nets[1], &srv_b, "");
    let (ia1, ib1, ib2) = (up.ip(&a1), up.ip(&b1), up.ip(&b2));
    for (vm, dir) in [(&a1, up.agent()), (&b1, up.node_b_dir()), (&b2, up.node_b_dir())] {
        let log = wait_boots(&dir, vm, 1, BOOT).await.unwrap();
        assert!(dhcp_line(&log).starts_with(&format!("{}/24 ", up.ip(vm))) && dhcp_line(&log).contains("mtu=1450"), "{vm}: {log}");
    }
    assert_eq!(ib2, ia1, "account 2's first address overlaps account 1's");

    // One fabric across two nodes; another account's identical one is a world apart.
    assert!(up.guest_pings(&a1, &ib1).await, "a1 (node A) reaches b1 (node B) over the fabric");
    assert!(up.guest_pings(&b1, &ia1).await, "b1 (node B) reaches a1 (node A) over the fabric");
    assert!(!up.guest_pings(&b2, &ib1).await, "account 2's guest reaches account 1's b1");

    // internet_nat: each node's own gateway takes its guests outside; without it, nothing does.
    assert!(up.guest_pings(&a1, "198.51.100.1").await, "a1 reaches the outside through node A's gateway");
    assert!(up.guest_pings(&b1, "198.51.100.1").await, "b1 reaches the outside through node B's gateway");
    assert!(!up.guest_pings(&b2, "198.51.100.1").await, "b2 reaches the outside without internet_nat");

    // The firewall: port 80 of the tagged guest, not 81; a retag and disabling the rule follow.
    assert!(
        up.guest_ok(&a1, "mkdir -p /tmp/www && echo nereid-www >/tmp/www/index.html && httpd -p 80 -h /tmp/www && httpd -p 81 -h /tmp/www")
            .await
    );
    assert!(up.guest_fetches(&b1, &ia1, 81).await, "port 81 before any firewall");
    let rule = up.api(
        "POST",
        "/fwrules",
        &serde_json::json!({"owner_uuid": owner1, "rule": "FROM any TO tag \"role\" = \"web\" ALLOW tcp PORT 80", "enabled": true}),
    );
    let rule_id = rule["uuid"].as_str().unwrap().to_string();
    for update in ["tags={\"role\":\"web\"}", "firewall_enabled=true"] {
        let out = up.admin(&["vm", "update", &a1, update, "-w"]);
        assert!(out.status.success(), "{}{}", common::stdout(&out), common::stderr(&out));
    }
    assert!(up.becomes(20, false, async || up.guest_fetches(&b1, &ia1, 81).await).await, "port 81 still open with the firewall on");
    assert!(up.guest_fetches(&b1, &ia1, 80).await, "port 80 closed though the rule allows it");
    let out = up.admin(&["vm", "update", &a1, "tags={\"role\":\"db\"}", "-w"]);
    assert!(out.status.success(), "{}{}", common::stdout(&out), common::stderr(&out));
    assert!(up.becomes(20, false, async || up.guest_fetches(&b1, &ia1, 80).await).await, "port 80 open after the retag");
    let out = up.admin(&["vm", "update", &a1, "tags={\"role\":\"web\"}", "-w"]);
    assert!(out.status.success(), "{}{}", common::stdout(&out), common::stderr(&out));
    assert!(up.becomes(20, true, async || up.guest_fetches(&b1, &ia1, 80).await).await, "port 80 closed after tagging back");
    up.api("PUT", &format!("/fwrules/{rule_id}"), &serde_json::json!({"enabled": false}));
    assert!(up.becomes(20, false, async || up.guest_fetches(&b1, &ia1, 80).await).await, "port 80 open with the rule disabled");

    // Deleting everything leaves nothing behind on either node.
    for vm in [&a1, &b1, &b2] {
        let out = up.admin(&["vm", "delete", vm, "-w"]);
        assert!(out.status.success(), "{}{}", common::stdout(&out), common::stderr(&out));
    }
    up.api("DELETE", &format!("/fwrules/{rule_id}"), &Value::Null);
    for (owner, net) in [(&owner1, &nets[0]), (&owner2, &nets[1])] {
        up.api("DELETE", &format!("/fabrics/{owner}/vlans/42/networks/{net}"), &Value::Null);
        up.api("DELETE", &format!("/fabrics/{owner}/vlans/42"), &Value::Null);
    }
    for node in [&up.ns, &node_b.ns] {
        let left = node.sh("ip -br link; nft list tables").unwrap();
        for gone in ["nvx", "nfb", "ngh", "nereid_fw", "nereid_fab"] {
            assert!(!left.contains(gone), "{gone} left on {}:\n{left}", node.name);
        }
        let vx = node.sh("ip -br link show type vxlan").unwrap();
        assert!(vx.trim().is_empty(), "a VXLAN device outlived its fabric on {}: {vx}", node.name);
    }
    let gw = std::process::Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&gw.stdout).contains("nfgw"), "{}", String::from_utf8_lossy(&gw.stdout));
    for owner in [&owner1, &owner2] {
        let vlans = up.api("GET", &format!("/fabrics/{owner}/vlans"), &Value::Null);
        assert_eq!(vlans, serde_json::json!([]), "{vlans}");
    }
    let nics = up.api("GET", "/nics?nic_tag=sdc_overlay", &Value::Null);
    assert_eq!(nics, serde_json::json!([]), "{nics}");
    drop(node_b);
}

/// The running guest's uptime in whole seconds, read on its console.
async fn uptime(up: &Up, vm: &str) -> u64 {
    let out = up.console(vm, "echo UPT-$(cut -d. -f1 /proc/uptime)-END\n").await;
    out.split("UPT-")
        .filter_map(|rest| rest.split("-END").next()?.trim().parse::<u64>().ok())
        .last()
        .unwrap_or_else(|| panic!("no uptime on {vm}'s console:\n{out}"))
}

/// Issue 15, live migration between two compute nodes, each in its own network namespace:
/// node A (`nereid up`, its managed bridge and gateway) and node B (an agent joined over
/// an admin link, its own bridge for the external network, wired to A's). A running guest
/// from the test image moves from A to B while it runs: it answers ping before and after,
/// its uptime keeps growing and it never boots again (B's console has no boot; its
/// on-disk boot counter still says one boot), its console and metadata answer on B; after
/// finalize, A has no QEMU, VM directory, tap or firewall rule of it left.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn qemu_guest_migrates_live_between_nodes_without_rebooting() {
    let b = Arc::new(NetNs::new("mig-b").unwrap());
    let image = tokio::task::spawn_blocking(test_image).await.unwrap().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let ns = Arc::new(NetNs::new("mig-a").unwrap());
    ns.sh(&format!("ip link add ul0 type veth peer name ul0 netns {}; ip addr add 10.99.0.1/24 dev ul0; ip link set ul0 up", b.name))
        .unwrap();
    b.sh("ip addr add 10.99.0.2/24 dev ul0; ip link set ul0 up").unwrap();
    let mut up = Up {
        ns,
        _reaper: Reaper(data.join("agent")),
        data,
        image,
        child: None,
        create: String::new(),
        extra: Vec::new(),
        agent_listen: "10.99.0.1:8081".into(),
        _dir: dir,
    };
    up.launch().await;
    // The external network reaches node B too: a veth from A's bridge to a bridge in B.
    up.ns
        .sh(&format!("ip link add ext0 type veth peer name ext0 netns {}; ip link set ext0 master nereid0; ip link set ext0 up", b.name))
        .unwrap();
    // (Up before the agent starts: its sysinfo says which nic tags are up.)
    b.sh("ip link add extb type bridge; ip link set ext0 master extb; ip link set ext0 up; ip link set extb up; \
         for i in $(seq 100); do [ \"$(cat /sys/class/net/extb/operstate)\" = up ] && break; sleep 0.1; done")
        .unwrap();
    let srv_a = up.json(&["server", "list"])[0]["uuid"].as_str().unwrap().to_string();
    let node_b = up.join_node_b_with(b.clone(), &["--nic-tag", "external=extb"]);
    let end = Instant::now() + Duration::from_secs(60);
    while up.json(&["server", "list"]).as_array().unwrap().iter().filter(|s| s["status"] == "running").count() < 2 {
        assert!(
            Instant::now() < end,
            "node B never joined:\n{}",
            std::fs::read_to_string(up.node_b_dir().join("../node-b.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let srv_b = up
        .json(&["server", "list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["uuid"].as_str().unwrap().to_string())
        .find(|u| *u != srv_a)
        .unwrap();

    let (out, cmd) = up.try_create("mover", None, &format!("server_uuid={srv_a}"));
    let printed = common::stdout(&out);
    assert!(out.status.success() && printed.contains("(provision) succeeded"), "{cmd}\n{printed}{}", common::stderr(&out));
    let vm = printed.split_whitespace().nth(1).unwrap().to_string();
    let ip = up.ip(&vm);
    let log = wait_boots(&up.agent(), &vm, 1, BOOT).await.unwrap();
    assert_eq!(values(&log, "boots"), vec!["0".to_string()], "{log}");
    assert!(wait_ping(&up.ns, &ip, Instant::now(), Duration::from_secs(60)).is_some(), "{ip} does not answer ping on node A");
    let before = uptime(&up, &vm).await;

    // Live: begin, sync and switch in one go, to node B.
    let started = Instant::now();
    up.api(
        "POST",
        &format!("/vms/{vm}?action=migrate"),
        &serde_json::json!({"migration_action": "begin", "migration_automatic": true, "override_server_uuid": srv_b}),
    );
    let m = loop {
        let m = up.api("GET", &format!("/migrations/{vm}?format=raw"), &Value::Null);
        if m["state"] != "running" {
            break m;
        }
        assert!(started.elapsed() < Duration::from_secs(600), "the migration is still running: {m}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert_eq!(m["state"], "successful", "{m}\n{}", up.log());
    assert_eq!(m["mechanism"], "live", "{m}");
    println!("live migration of a running TCG guest: {:.1} s, paused {} ms", started.elapsed().as_secs_f64(), m["pause_ms"]);
    let rec = up.json(&["vm", "get", &vm]);
    assert_eq!(rec["server_uuid"], srv_b.as_str(), "{rec}");
    assert_eq!(rec["state"], "running", "{rec}");
    assert_eq!(rec["nics"][0]["ip"], ip.as_str(), "{rec}");
    let nic = up.api("GET", &format!("/nics/{}", rec["nics"][0]["mac"].as_str().unwrap().replace(':', "")), &Value::Null);
    assert_eq!(nic["cn_uuid"], srv_b.as_str(), "the NIC moved with the VM: {nic}");

    // The same guest, still running, on node B.
    assert!(wait_ping(&up.ns, &ip, Instant::now(), Duration::from_secs(60)).is_some(), "{ip} does not answer ping after the migration");
    let after = uptime(&up, &vm).await;
    assert!(after > before, "uptime went from {before} s to {after} s: the guest rebooted");
    let on_b = console_log(&up.node_b_dir(), &vm);
    assert!(!on_b.contains("nereid-test: boot"), "the guest booted on node B:\n{on_b}");
    assert!(
        up.guest_ok(&vm, "test \"$(dd if=/dev/vda bs=512 skip=2000 count=1 2>/dev/null | tr -dc 0-9)\" = 1").await,
        "the disk's boot counter did not come along"
    );
    assert!(up.guest_ok(&vm, &format!("test \"$(mdata get sdc:uuid)\" = {vm}")).await, "metadata does not answer on node B");

    // Finalize: nothing of the VM is left on node A.
    up.api("POST", &format!("/vms/{vm}?action=migrate"), &serde_json::json!({"migration_action": "finalize"}));
    let tap = format!("nt{}", &vm.replace('-', "")[..8]);
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let qemus = nereid_testkit::qemu::qemus_under(&up.agent()).len();
        let dir_left = nereid_testkit::qemu::vm_dir(&up.agent(), &vm).exists();
        let links = up.ns.sh("ip -br link").unwrap();
        let rules = up.ns.sh("nft list ruleset").unwrap();
        if qemus == 0 && !dir_left && !links.contains(&tap) && !rules.contains(&tap) {
            break;
        }
        assert!(
            Instant::now() < end,
            "node A still has the VM: {qemus} QEMU(s), directory left: {dir_left}\n{links}\n{}",
            rules.lines().filter(|l| l.contains(&tap)).collect::<Vec<_>>().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(wait_ping(&up.ns, &ip, Instant::now(), Duration::from_secs(30)).is_some(), "{ip} unreachable after finalize");
    drop(node_b);
}
