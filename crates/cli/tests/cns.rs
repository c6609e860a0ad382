//! Instance DNS (CNS) in a running cloud, as a resolver's user sees it: a headnode with
//! `--dns-listen` (testkit's `Options::dns`) and a simulated server; the real `dig`
//! (Debian's bind9-dnsutils, installed by scripts/test) asks it.
//!
//! alice switches CNS on with `nereid admin account update --cns-enabled true`; her VM
//! `web1` (a public NIC on 203.0.113.0/24, a private one on the seed's 10.77.0.0/16) is
//! tagged `triton.cns.services=web:80`. bob leaves CNS off.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use nereid_testkit::Options;
use nereid_testkit::cloudapi::{Client as Signed, Key};
use serde_json::{Value, json};

const PUBLIC: &str = "nereid-1.nereid.test";
const PRIVATE: &str = "nereid-1.cns.nereid.test";
/// How long a change may take to show in DNS.
const WITHIN: Duration = Duration::from_secs(10);

/// `dig @127.0.0.1 -p PORT +norec …`, its standard output.
async fn dig(cloud: &Cloud, args: &[&str]) -> String {
    let port = cloud.headnode.dns.expect("the cloud serves DNS").port().to_string();
    let out = tokio::process::Command::new("dig")
        .args(["@127.0.0.1", "-p", &port, "+norec", "+time=2", "+tries=1"])
        .args(args)
        .output()
        .await
        .expect("running dig (Debian package bind9-dnsutils; scripts/test installs it)");
    String::from_utf8(out.stdout).unwrap()
}

/// `dig +short TYPE NAME`, lines sorted.
async fn short(cloud: &Cloud, kind: &str, name: &str) -> Vec<String> {
    let mut lines: Vec<String> = dig(cloud, &["+short", kind, name]).await.lines().map(str::to_string).collect();
    lines.sort();
    lines
}

/// Polls `dig +short` until it answers `want`; panics with the last answer after [`WITHIN`].
async fn until(cloud: &Cloud, kind: &str, name: &str, want: &[String], why: &str) {
    let end = Instant::now() + WITHIN;
    loop {
        let got = short(cloud, kind, name).await;
        if got == want {
            return;
        }
        assert!(Instant::now() < end, "{why}: {kind} {name} answered {got:?}, not {want:?}, after {WITHIN:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The zone's SOA serial.
async fn serial(cloud: &Cloud, zone: &str) -> u32 {
    let soa = short(cloud, "SOA", zone).await;
    soa.first().and_then(|l| l.split_whitespace().nth(2)).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no SOA: {soa:?}"))
}

/// Runs a VMAPI action and waits for its job.
async fn act(cloud: &Cloud, vm: &str, action: &str, body: Value) {
    let r = cloud.client.post(&format!("/vms/{vm}?action={action}"), &body).await.unwrap();
    let job = r["job_uuid"].as_str().unwrap();
    assert_eq!(cloud.wait_job(job).await.unwrap()["execution"], "succeeded", "{action}");
}

fn ip_on(vm: &Value, network: &str) -> String {
    let nics = vm["nics"].as_array().unwrap();
    nics.iter().find(|n| n["network_uuid"] == network).unwrap_or_else(|| panic!("no NIC on {network}: {vm}"))["ip"]
        .as_str()
        .unwrap()
        .to_string()
}

both_backends!(dig_resolves_instances_and_services_and_follows_changes);

async fn dig_resolves_instances_and_services_and_follows_changes(backend: Backend) {
    let cloud = Cloud::start_with(Options { sim_servers: 1, ..Options::new(backend) }.cloudapi_http().dns("nereid.test")).await.unwrap();
    let seed = cloud.seed().await.unwrap();
    let public = cloud
        .client
        .post(
            "/networks",
            &json!({"name": "public", "nic_tag": "external", "vlan_id": 0, "subnet": "203.0.113.0/24",
            "provision_start_ip": "203.0.113.10", "provision_end_ip": "203.0.113.200", "gateway": "203.0.113.1"}),
        )
        .await
        .unwrap()["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let (alice, bob) = common::alice_and_bob(&cloud).await;
    // The admin API's switch, through `nereid admin account update`.
    let o = nereid_async(&cloud, &["admin", "--json", "account", "update", "alice", "--cns-enabled", "true"]).await;
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert_eq!(serde_json::from_str::<Value>(&stdout(&o)).unwrap()["triton_cns_enabled"], true, "{}", stdout(&o));

    // bob's VM first: once alice's names show, a build has seen it.
    let create = |owner: &str, alias: &str, tags: Value| {
        json!({"owner_uuid": owner, "brand": "bhyve", "billing_id": seed.package, "image_uuid": seed.image,
               "networks": [public, seed.network], "alias": alias, "tags": tags})
    };
    let (bobvm, job) = cloud.create_vm(&create(&bob, "bobvm", json!({"triton.cns.services": "web:80"}))).await.unwrap();
    assert_eq!(cloud.wait_job(&job).await.unwrap()["execution"], "succeeded");
    let (web1, job) = cloud.create_vm(&create(&alice, "web1", json!({"triton.cns.services": "web:80"}))).await.unwrap();
    assert_eq!(cloud.wait_job(&job).await.unwrap()["execution"], "succeeded");
    let record = cloud.client.get(&format!("/vms/{web1}")).await.unwrap();
    let (pub_ip, priv_ip) = (ip_on(&record, &public), ip_on(&record, &seed.network));

    // Names by alias and by uuid, in the zone of each address; the service with its port.
    let name = |host: &str, zone: &str| format!("{host}.inst.{alice}.{zone}");
    let svc = |zone: &str| format!("web.svc.{alice}.{zone}");
    // The service is waited for: a build during the provision already named the instance,
    // and the VM joins its service only in the build after it runs (a job's end wakes one,
    // at most once a second).
    until(&cloud, "A", &svc(PUBLIC), std::slice::from_ref(&pub_ip), "service").await;
    assert_eq!(short(&cloud, "A", &name("web1", PUBLIC)).await, std::slice::from_ref(&pub_ip), "alias, public zone");
    assert_eq!(short(&cloud, "A", &name(&web1, PUBLIC)).await, std::slice::from_ref(&pub_ip), "uuid, public zone");
    assert_eq!(short(&cloud, "A", &name("web1", PRIVATE)).await, std::slice::from_ref(&priv_ip), "alias, private zone");
    let srv = short(&cloud, "SRV", &svc(PUBLIC)).await;
    assert_eq!(srv.len(), 1, "{srv:?}");
    let f: Vec<&str> = srv[0].split_whitespace().collect();
    assert_eq!((f[2], f[3].trim_end_matches('.')), ("80", name("web1", PUBLIC).as_str()), "SRV port and target (the alias name): {srv:?}");
    let txt = short(&cloud, "TXT", &name("web1", PUBLIC)).await;
    assert_eq!(txt, [format!("\"{web1}\"")], "TXT names the VM");

    // bob's account has CNS off: nothing of his is published.
    let bob_answer = dig(&cloud, &["A", &format!("bobvm.inst.{bob}.{PUBLIC}")]).await;
    assert!(bob_answer.contains("status: NXDOMAIN"), "{bob_answer}");
    assert!(short(&cloud, "A", &format!("web.svc.{bob}.{PUBLIC}")).await.is_empty());

    // AXFR from loopback: the whole zone, between two SOAs; bob is not in it.
    let axfr = dig(&cloud, &["AXFR", PUBLIC]).await;
    let soas = axfr.lines().filter(|l| l.split_whitespace().nth(3) == Some("SOA")).count();
    assert_eq!(soas, 2, "{axfr}");
    assert!(axfr.contains(&format!("{}.", name("web1", PUBLIC))) && axfr.contains(&format!("{}.", svc(PUBLIC))), "{axfr}");
    assert!(!axfr.contains(&bob), "{axfr}");

    // dns_names: CloudAPI GetMachine (not ListMachines) and VMAPI's GET /vms/:uuid.
    let tenant = Signed::new(&cloud.headnode.cloudapi.as_ref().unwrap().url, "alice", Key::from_seed(1));
    let m = tenant.get(&format!("/alice/machines/{web1}")).await.unwrap();
    assert_eq!(m.status, 200, "{}", m.text);
    let names: Vec<&str> =
        m.body["dns_names"].as_array().unwrap_or_else(|| panic!("{}", m.text)).iter().filter_map(Value::as_str).collect();
    for n in [name("web1", PUBLIC), name(&web1, PUBLIC), name("web1", PRIVATE), svc(PUBLIC), svc(PRIVATE)] {
        assert!(names.contains(&n.as_str()), "{n} not in {names:?}");
    }
    let list = tenant.get("/alice/machines").await.unwrap();
    assert!(list.body[0].get("dns_names").is_none(), "ListMachines has no dns_names: {}", list.text);
    let mut listed = list.body[0].clone();
    listed["dns_names"] = m.body["dns_names"].clone();
    assert_eq!(listed, m.body, "ListMachines and GetMachine differ only by dns_names");
    assert_eq!(cloud.client.get(&format!("/vms/{web1}")).await.unwrap()["dns_names"], m.body["dns_names"]);
    assert_eq!(cloud.client.get(&format!("/vms/{bobvm}")).await.unwrap()["dns_names"], json!([]), "bob has CNS off");

    // Stopped, web1 leaves its service within seconds; its instance names stay; the serial grows.
    let before = serial(&cloud, PUBLIC).await;
    act(&cloud, &web1, "stop", json!({})).await;
    until(&cloud, "A", &svc(PUBLIC), &[], "stopped: out of the service").await;
    assert!(short(&cloud, "SRV", &svc(PUBLIC)).await.is_empty());
    assert_eq!(short(&cloud, "A", &name("web1", PUBLIC)).await, std::slice::from_ref(&pub_ip), "stopped: the instance name stays");
    let stopped = serial(&cloud, PUBLIC).await;
    assert!(stopped > before, "the serial grows: {before} -> {stopped}");

    // Running again: back in the service; tagged down: out again.
    act(&cloud, &web1, "start", json!({})).await;
    until(&cloud, "A", &svc(PUBLIC), std::slice::from_ref(&pub_ip), "started: back in the service").await;
    let started = serial(&cloud, PUBLIC).await;
    assert!(started > stopped, "the serial grows: {stopped} -> {started}");
    act(&cloud, &web1, "update", json!({"set_tags": {"triton.cns.status": "down"}})).await;
    until(&cloud, "A", &svc(PUBLIC), &[], "tagged down: out of the service").await;
    assert_eq!(short(&cloud, "A", &name("web1", PUBLIC)).await, std::slice::from_ref(&pub_ip), "tagged down: the instance name stays");
    assert!(serial(&cloud, PUBLIC).await > started);

    // alice switches CNS off: her names go.
    let o = nereid_async(&cloud, &["admin", "account", "update", "alice", "--cns-enabled", "false"]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    until(&cloud, "A", &name("web1", PUBLIC), &[], "CNS off: nothing published").await;
    assert_eq!(cloud.client.get(&format!("/vms/{web1}")).await.unwrap()["dns_names"], json!([]));
}

/// A `nereid headnode` process, killed when dropped; its data directory and standard
/// output (a closed pipe would fail its next print) live as long.
struct Headnode(std::process::Child, #[allow(dead_code)] (tempfile::TempDir, std::io::BufReader<std::process::ChildStdout>));

impl Drop for Headnode {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `nereid headnode` with the `--dns-*` flags: its printed DNS address answers for
/// `<--datacenter-name>.<--dns-suffix>` and refuses transfers to addresses outside
/// `--dns-allow-transfer`; bad flag values are usage errors naming the value.
#[test]
fn headnode_flags_configure_the_dns_server() {
    use std::io::BufRead as _;
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_nereid"))
        .args(["headnode", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--admin-listen", "127.0.0.1:0", "--no-cloudapi", "--no-web", "--datacenter-name", "DC9"])
        .args(["--dns-listen", "127.0.0.1:0", "--dns-suffix", "Example.TEST.", "--dns-allow-transfer", "192.0.2.0/24"])
        .env("NEREID_STORE", format!("sqlite:{}", dir.path().join("nereid.db").display()))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut printed = String::new();
    let mut port = None;
    loop {
        let mut line = String::new();
        if out.read_line(&mut line).unwrap() == 0 {
            break;
        }
        printed.push_str(&line);
        if let Some(rest) = line.trim_start().strip_prefix("instance DNS") {
            assert!(rest.contains("dc9.example.test (public)") && rest.contains("dc9.cns.example.test (private)"), "{line}");
            let addr: std::net::SocketAddr = rest.split_whitespace().next().unwrap().parse().unwrap();
            port = Some(addr.port().to_string());
        }
        if line.starts_with("Try:") {
            break;
        }
    }
    let headnode = Headnode(child, (dir, out));
    let port = port.unwrap_or_else(|| panic!("no instance DNS line in:\n{printed}"));
    let dig = |args: &[&str]| {
        let o = std::process::Command::new("dig")
            .args(["@127.0.0.1", "-p", &port, "+norec", "+time=2", "+tries=1"])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8(o.stdout).unwrap()
    };
    for zone in ["dc9.example.test", "dc9.cns.example.test"] {
        let soa = dig(&["SOA", zone]);
        assert!(soa.contains("status: NOERROR") && soa.contains(" SOA ") && soa.contains("flags: qr aa"), "{soa}");
    }
    let axfr = dig(&["AXFR", "dc9.example.test"]);
    assert!(axfr.contains("Transfer failed") || axfr.contains("REFUSED"), "loopback is not in --dns-allow-transfer: {axfr}");
    drop(headnode);

    for (flag, value) in [("--dns-allow-transfer", "10.0.0.0/33"), ("--dns-notify", "ns1.example.com"), ("--dns-suffix", "bad suffix")] {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_nereid")).args(["headnode", flag, value]).output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{flag} {value}");
        assert!(stderr(&o).contains(value), "{flag} {value}: {}", stderr(&o));
    }
}
