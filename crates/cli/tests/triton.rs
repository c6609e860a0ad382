//! The real `triton` CLI (npm `triton@7.17.0`, installed by scripts/test) against
//! Nereid's CloudAPI: every core command a Triton user types, for an RSA, an ECDSA P-256
//! and an Ed25519 key, over plain HTTP and over HTTPS with `insecure`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use nereid_testkit::Options;
use nereid_testkit::triton::{KeyType, Tenant, Triton};
use serde_json::{Value, json};

struct Setup {
    cloud: Cloud,
    tenant: Tenant,
    triton: Triton,
}

async fn setup(kind: KeyType, https: bool) -> Setup {
    let opts = Options { sim_servers: 1, ..Options::new(Backend::Sqlite) };
    let opts = if https { opts.cloudapi_https() } else { opts.cloudapi_http() };
    let cloud = Cloud::start_with(opts).await.unwrap();
    cloud.seed().await.unwrap();
    cloud
        .client
        .post(
            "/packages",
            &json!({"name": "sample-2G", "version": "1.0.0", "max_physical_memory": 2048, "quota": 20480, "vcpus": 2, "brand": "bhyve"}),
        )
        .await
        .unwrap();
    let tenant = Tenant::new(kind).unwrap();
    cloud
        .client
        .post("/accounts", &json!({"login": "alice", "email": "alice@example.com", "keys": [{"key": tenant.public_key}]}))
        .await
        .unwrap();
    let url = cloud.headnode.cloudapi.as_ref().unwrap().url.clone();
    assert_eq!(url.starts_with("https://"), https);
    let triton = tenant.triton(&url, "alice", https).unwrap();
    Setup { cloud, tenant, triton }
}

/// Every core command, in the order a user would type them.
async fn whole_life(s: &Setup) {
    let t = &s.triton;
    let info = t.ok_async(&["info"]).await;
    assert!(info.contains("alice") && info.contains("instances: 0"), "{info}");
    let pkgs = t.ok_async(&["package", "list"]).await;
    assert!(pkgs.contains("sample") && pkgs.contains("sample-2G"), "{pkgs}");
    let imgs = t.ok_async(&["image", "list"]).await;
    assert!(imgs.contains("tiny"), "{imgs}");
    let nets = t.ok_async(&["network", "list"]).await;
    assert!(nets.contains("external"), "{nets}");

    let created = t.ok_async(&["instance", "create", "-w", "tiny", "sample", "--name", "web-1", "-m", "foo=bar", "-t", "role=web"]).await;
    assert!(created.contains("Creating instance web-1") && created.contains("Created instance web-1"), "{created}");
    let list = t.ok_async(&["instance", "list"]).await;
    assert!(list.contains("web-1") && list.contains("running") && list.contains("tiny@1"), "{list}");
    let m = t.json_async(&["instance", "get", "web-1"]).await;
    assert_eq!((m["state"].as_str(), m["package"].as_str()), (Some("running"), Some("sample")), "{m}");
    assert_eq!(m["metadata"]["foo"], "bar");
    assert_eq!(m["tags"]["role"], "web");
    assert!(m["primaryIp"].as_str().unwrap().starts_with("10.77."), "{m}");
    let id = m["id"].as_str().unwrap().to_string();
    let ip = t.ok_async(&["instance", "ip", "web-1"]).await;
    assert_eq!(ip.trim(), m["primaryIp"].as_str().unwrap());
    let info = t.ok_async(&["info"]).await;
    assert!(info.contains("instances: 1") && info.contains("running: 1"), "{info}");

    let out = t.ok_async(&["instance", "stop", "-w", "web-1"]).await;
    assert!(out.contains("Stop instance web-1"), "{out}");
    assert_eq!(t.json_async(&["instance", "get", "web-1"]).await["state"], "stopped");
    let out = t.ok_async(&["instance", "start", "-w", "web-1"]).await;
    assert!(out.contains("Start instance web-1"), "{out}");
    assert_eq!(t.json_async(&["instance", "get", "web-1"]).await["state"], "running");
    let out = t.ok_async(&["instance", "reboot", "-w", "web-1"]).await;
    assert!(out.contains("Rebooted instance web-1"), "{out}");

    let out = t.ok_async(&["instance", "resize", "-w", "web-1", "sample-2G"]).await;
    assert!(out.contains("Resized instance web-1"), "{out}");
    let m = t.json_async(&["instance", "get", "web-1"]).await;
    assert_eq!((m["package"].as_str(), m["memory"].as_u64()), (Some("sample-2G"), Some(2048)), "{m}");
    let out = t.ok_async(&["instance", "rename", "-w", "web-1", "web-2"]).await;
    assert!(out.contains("Renamed instance"), "{out}");
    assert_eq!(t.json_async(&["instance", "get", id.as_str()]).await["name"], "web-2");

    t.ok_async(&["instance", "tag", "set", "-w", "web-2", "env=prod", "count=3"]).await;
    let tags = t.json_async(&["instance", "tag", "list", "web-2"]).await;
    assert_eq!(tags, json!({"role": "web", "env": "prod", "count": 3}));
    assert_eq!(t.ok_async(&["instance", "tag", "get", "web-2", "env"]).await.trim(), "prod");
    t.ok_async(&["instance", "tag", "delete", "-w", "web-2", "env"]).await;
    assert_eq!(t.json_async(&["instance", "tag", "list", "web-2"]).await, json!({"role": "web", "count": 3}));

    t.ok_async(&["instance", "metadata", "set", "-w", "web-2", "color=blue"]).await;
    let md = t.json_async(&["instance", "metadata", "list", "web-2"]).await;
    assert_eq!((md["foo"].as_str(), md["color"].as_str()), (Some("bar"), Some("blue")), "{md}");
    assert_eq!(t.ok_async(&["instance", "metadata", "get", "web-2", "color"]).await.trim(), "blue");
    t.ok_async(&["instance", "metadata", "delete", "-f", "-w", "web-2", "color"]).await;
    assert!(t.json_async(&["instance", "metadata", "list", "web-2"]).await.get("color").is_none());

    let out = t.ok_async(&["instance", "snapshot", "create", "-w", "--name", "before", "web-2"]).await;
    assert!(out.contains("Created snapshot \"before\""), "{out}");
    let snaps = t.ok_async(&["instance", "snapshot", "list", "web-2"]).await;
    assert!(snaps.contains("before") && snaps.contains("created"), "{snaps}");
    let out = t.ok_async(&["instance", "snapshot", "delete", "-f", "-w", "web-2", "before"]).await;
    assert!(out.contains("Deleted snapshot \"before\""), "{out}");
    let snaps = t.ok_async(&["instance", "snapshot", "list", "-j", "web-2"]).await;
    assert!(!snaps.contains("before"), "{snaps}");

    t.ok_async(&["instance", "enable-deletion-protection", "-w", "web-2"]).await;
    let (code, err) = t.fail_async(&["instance", "delete", "-f", "-w", "web-2"]).await;
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("Instance has \"deletion_protection\" enabled, preventing deletion"), "{err}");
    t.ok_async(&["instance", "disable-deletion-protection", "-w", "web-2"]).await;
    let out = t.ok_async(&["instance", "delete", "-f", "-w", "web-2"]).await;
    assert!(out.contains("Delete instance web-2"), "{out}");
    let (code, err) = t.fail_async(&["instance", "get", id.as_str()]).await;
    assert_eq!(code, Some(3), "a deleted instance is exit 3: {err}");
    let list = t.ok_async(&["instance", "list", "-H"]).await;
    assert!(list.trim().is_empty(), "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triton_cli_with_an_rsa_key_over_http() {
    let s = setup(KeyType::Rsa, false).await;
    whole_life(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triton_cli_with_an_ecdsa_p256_key_over_https_insecure() {
    let s = setup(KeyType::EcdsaP256, true).await;
    whole_life(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triton_cli_with_an_ed25519_key_over_http() {
    let s = setup(KeyType::Ed25519, false).await;
    whole_life(&s).await;
    // Keys through the CLI: add a second key, list, delete it.
    let (_, _, md5, _) = s.tenant.add_key(KeyType::EcdsaP256).unwrap();
    let pub_file = s.tenant.home.path().join(".ssh/id_ecdsa.pub");
    let out = s.triton.ok_async(&["key", "add", "-n", "second", pub_file.to_str().unwrap()]).await;
    assert!(out.contains(&md5), "{out}");
    let keys = s.triton.ok_async(&["key", "list"]).await;
    assert!(keys.contains("second") && keys.contains(&s.tenant.md5), "{keys}");
    s.triton.ok_async(&["key", "delete", "-y", "second"]).await;
    assert!(!s.triton.ok_async(&["key", "list"]).await.contains("second"));
    drop(s.cloud);
}

/// `triton instance nic create|list|get|delete` on a running instance, with NAPI, VMAPI
/// and CloudAPI agreeing after each; `triton instance ip`; `triton network ip
/// list|get|update` on the tenant's own network and refused on the public one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triton_cli_manages_nics_and_network_ips() {
    let s = setup(KeyType::Ed25519, false).await;
    let (t, c) = (&s.triton, &s.cloud.client);
    let alice = c.get("/accounts/alice").await.unwrap()["uuid"].clone();
    let net = c
        .post(
            "/networks",
            &json!({"name": "alice-net", "nic_tag": "external", "vlan_id": 3, "subnet": "10.88.0.0/24",
            "provision_start_ip": "10.88.0.10", "provision_end_ip": "10.88.0.20", "gateway": "10.88.0.1", "owner_uuids": [alice]}),
        )
        .await
        .unwrap()["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    t.ok_async(&["instance", "create", "-w", "tiny", "sample", "--name", "web-1"]).await;
    let m = t.json_async(&["instance", "get", "web-1"]).await;
    let id = m["id"].as_str().unwrap().to_string();
    let first_ip = m["primaryIp"].as_str().unwrap().to_string();

    // NAPI, VMAPI and CloudAPI name the same NICs with the same addresses and primary.
    let agree = |want: usize| {
        let (t, c, id) = (t.clone(), c.clone(), id.clone());
        async move {
            let key = |n: &Value| (n["mac"].as_str().unwrap().to_string(), n["ip"].as_str().unwrap().to_string(), n["primary"] == true);
            let cloud = t.ok_async(&["instance", "nic", "list", "-j", "web-1"]).await;
            let cloud: Vec<Value> = cloud.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
            let napi = c.get(&format!("/nics?belongs_to_uuid={id}")).await.unwrap();
            let vmapi = c.get(&format!("/vms/{id}")).await.unwrap()["nics"].clone();
            let a: std::collections::BTreeSet<_> = cloud.iter().map(key).collect();
            let b: std::collections::BTreeSet<_> = napi.as_array().unwrap().iter().map(key).collect();
            let v: std::collections::BTreeSet<_> = vmapi.as_array().unwrap().iter().map(key).collect();
            assert_eq!((a.len(), &a, &a), (want, &b, &v), "CloudAPI, NAPI and VMAPI disagree");
            assert!(cloud.iter().all(|n| n["state"] == "running"), "{cloud:?}");
            cloud
        }
    };
    agree(1).await;

    let out = t.ok_async(&["instance", "nic", "create", "-w", "web-1", "alice-net"]).await;
    assert!(out.contains("Creating NIC") && out.contains("Created NIC"), "{out}");
    let mac = out.lines().last().unwrap().trim_start_matches("Created NIC ").trim().to_string();
    let nics = agree(2).await;
    let added = nics.iter().find(|n| n["mac"] == json!(mac)).unwrap();
    assert_eq!((added["ip"].as_str(), added["network"].as_str()), (Some("10.88.0.10"), Some(net.as_str())), "{added}");
    let got = t.json_async(&["instance", "nic", "get", "web-1", &mac]).await;
    assert_eq!(&got, added);
    let table = t.ok_async(&["instance", "nic", "list", "web-1"]).await;
    assert!(table.contains("10.88.0.10") && table.contains(&first_ip), "{table}");
    assert_eq!(t.ok_async(&["instance", "ip", "web-1"]).await.trim(), first_ip, "the primary NIC stays the first");
    assert_eq!(t.json_async(&["instance", "get", "web-1"]).await["state"], "running");
    let (code, err) = t.fail_async(&["instance", "nic", "create", "web-1", "alice-net"]).await;
    assert_eq!(code, Some(1));
    assert!(err.contains("Instance already has a NIC on that network"), "{err}");
    // A chosen address, in the NICOPT form.
    let net_b = c
        .post(
            "/networks",
            &json!({"name": "alice-b", "nic_tag": "external", "vlan_id": 4, "subnet": "10.89.0.0/24",
            "provision_start_ip": "10.89.0.10", "provision_end_ip": "10.89.0.20", "owner_uuids": [alice]}),
        )
        .await
        .unwrap()["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let out = t.ok_async(&["instance", "nic", "create", "-w", "web-1", &format!("ipv4_uuid={net_b}"), "ipv4_ips=10.89.0.15"]).await;
    let mac3 = out.lines().last().unwrap().trim_start_matches("Created NIC ").trim().to_string();
    assert!(agree(3).await.iter().any(|n| n["ip"] == "10.89.0.15"));

    // Network IPs: the tenant's own network shows its NIC, and takes reservations.
    let ips = t.ok_async(&["network", "ip", "list", "-j", "alice-net"]).await;
    let ips: Vec<Value> = ips.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let held = ips.iter().find(|i| i["ip"] == "10.88.0.10").unwrap_or_else(|| panic!("{ips:?}"));
    assert_eq!((held["belongs_to_uuid"].as_str(), held["managed"].as_bool()), (Some(id.as_str()), Some(false)), "{held}");
    assert!(ips.iter().any(|i| i["ip"] == "10.88.0.1" && i["managed"] == true), "the gateway: {ips:?}");
    let ip = t.json_async(&["network", "ip", "get", "alice-net", "10.88.0.10"]).await;
    assert_eq!(&ip, held);
    let out = t.ok_async(&["network", "ip", "update", "alice-net", "10.88.0.15", "reserved=true"]).await;
    assert!(out.contains("Updated network") && out.contains("10.88.0.15"), "{out}");
    assert_eq!(t.json_async(&["network", "ip", "get", "alice-net", "10.88.0.15"]).await["reserved"], true);
    assert_eq!(c.get(&format!("/networks/{net}/ips/10.88.0.15")).await.unwrap()["reserved"], true, "NAPI agrees");
    let table = t.ok_async(&["network", "ip", "list", "alice-net"]).await;
    assert!(table.contains("10.88.0.15") && table.contains("MANAGED"), "{table}");
    let (code, err) = t.fail_async(&["network", "ip", "update", "external", "10.77.0.201", "reserved=true"]).await;
    assert_eq!(code, Some(1));
    assert!(err.contains("cannot update an IP on a public network"), "{err}");
    let (code, err) = t.fail_async(&["network", "ip", "get", "external", "10.77.0.250"]).await;
    assert_eq!(code, Some(3), "another's (or nobody's) address on a public network does not exist for a tenant: {err}");

    // Delete the NICs (this CLI's nic delete has no -w; poll as -w would, until 404).
    for m in [&mac, &mac3] {
        let out = t.ok_async(&["instance", "nic", "delete", "-f", "web-1", m]).await;
        assert!(out.contains(&format!("Deleted NIC {m}")), "{out}");
    }
    let end = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (t2, mac2) = (t.clone(), mac3.clone());
        let out = tokio::task::spawn_blocking(move || t2.run(&["instance", "nic", "get", "web-1", &mac2]).unwrap()).await.unwrap();
        // 404: this CLI prints `error (ResourceNotFound): nic not found` (and exits 1 here).
        if !out.success() && out.stderr.contains("(ResourceNotFound): nic not found") {
            break;
        }
        assert!(std::time::Instant::now() < end, "{out}");
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    let end = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while c.get(&format!("/vms/{id}")).await.unwrap()["nics"].as_array().unwrap().len() != 1
        || t.json_async(&["instance", "get", "web-1"]).await["state"] != "running"
    {
        assert!(std::time::Instant::now() < end);
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    agree(1).await;
    assert_eq!(t.ok_async(&["instance", "ip", "web-1"]).await.trim(), first_ip);
    assert_eq!(c.get(&format!("/networks/{net}/ips/10.88.0.10")).await.unwrap()["free"], true, "the address is free again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_without_insecure_is_refused_by_the_cli() {
    let s = setup(KeyType::Ed25519, true).await;
    let url = s.cloud.headnode.cloudapi.as_ref().unwrap().url.clone();
    let strict = s.tenant.triton(&url, "alice", false).unwrap();
    let (_, err) = strict.fail_async(&["info"]).await;
    assert!(err.contains("self-signed certificate") || err.contains("SELF_SIGNED"), "{err}");
    // -i makes the same profile work.
    assert!(strict.ok_async(&["-i", "info"]).await.contains("alice"));
}

/// The CLI against real VMs: `triton instance create` boots the test image under QEMU
/// (TCG), the guest prints the uuid and the `-m` metadata it read over the metadata port,
/// and stop, start and delete act on the real guest.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn triton_cli_drives_real_vms_under_qemu() {
    use nereid_testkit::qemu::{Reaper, import_image, qemus_under, test_image, test_options, values, vm_dir, wait_boots};
    let image_file = tokio::task::spawn_blocking(test_image).await.unwrap().unwrap();
    let cloud = Cloud::start_with(Options::new(Backend::Sqlite).cloudapi_http()).await.unwrap();
    cloud.seed_sized(256, 1024).await.unwrap();
    import_image(&cloud.client, &image_file, "nereid-test").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let agent_dir = dir.path().join("agent");
    let _reaper = Reaper(agent_dir.clone());
    let agent = cloud.start_qemu_agent(&agent_dir, test_options()).await.unwrap();
    cloud.wait_servers(1).await.unwrap();
    let (_tenant, t) = cloud.triton_user("alice", KeyType::Ed25519).await.unwrap();

    let (tc, args) =
        (t.clone(), ["instance", "create", "-w", "nereid-test", "sample", "--name", "real-1", "-m", "test-message=hello from triton"]);
    let out = tokio::task::spawn_blocking(move || tc.run(&args).unwrap()).await.unwrap();
    if !out.success() {
        let vms = cloud.client.get("/vms").await.unwrap();
        panic!("{}\n{}\nVMAPI: {vms}", out.stdout, out.stderr);
    }
    assert!(out.stdout.contains("Created instance real-1"), "{}", out.stdout);
    let m = t.json_async(&["instance", "get", "real-1"]).await;
    let id = m["id"].as_str().unwrap().to_string();
    assert_eq!(m["state"], "running");
    let log = wait_boots(&agent_dir, &id, 1, std::time::Duration::from_secs(240)).await.unwrap();
    assert_eq!(values(&log, "uuid").last().unwrap(), &id, "the guest read sdc:uuid");
    assert_eq!(values(&log, "message").last().unwrap(), "hello from triton", "the guest read the -m metadata");

    t.ok_async(&["instance", "stop", "-w", "real-1"]).await;
    assert!(std::fs::read_to_string(vm_dir(&agent_dir, &id).join("qemu.pid")).is_err() || qemus_under(&agent_dir).is_empty());
    t.ok_async(&["instance", "start", "-w", "real-1"]).await;
    wait_boots(&agent_dir, &id, 2, std::time::Duration::from_secs(240)).await.unwrap();
    t.ok_async(&["instance", "delete", "-f", "-w", "real-1"]).await;
    assert!(!vm_dir(&agent_dir, &id).exists(), "delete leaves nothing of the VM on the node");
    assert!(qemus_under(&agent_dir).is_empty());
    agent.shutdown().await;
}

/// Reads `nereid up`'s banner (until "Ctrl-C") off the runtime.
async fn up(home: &std::path::Path, data: &std::path::Path, extra: &[&str]) -> (std::process::Child, String) {
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_nereid"))
        .args(["up", "--data-dir", data.to_str().unwrap(), "--admin-listen", "127.0.0.1:0", "--cloudapi-listen", "127.0.0.1:0"])
        .args(["--sim-servers", "1", "--sim-create-ms", "20"])
        .args(extra)
        .env("HOME", home)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (text, _) = tokio::task::spawn_blocking(move || common::up_banner(stdout)).await.unwrap();
    (child, text)
}

/// `nereid up` on an empty store makes the operator account with the user's key and
/// says what `triton profile create` needs; with `--triton-profile` it writes a profile
/// the real CLI uses as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nereid_up_sets_up_the_triton_cli() {
    let tenant = Tenant::new(KeyType::Ed25519).unwrap();
    let home = tenant.home.path();
    let data = home.join("nereid-data");
    let (mut child, text) = up(home, &data, &[]).await;
    let _ = child.kill();
    let _ = child.wait();
    assert!(text.contains("operator      account admin created"), "{text}");
    assert!(text.contains(&format!("account admin · key {}", tenant.md5)), "the user's default key is the operator's: {text}");
    assert!(text.contains("CloudAPI      https://127.0.0.1:"), "{text}");
    assert!(!home.join(".triton/profiles.d/nereid.json").exists(), "no profile unless asked");

    // Again on the same store, asked to write the profile for the same key.
    let (mut child, text) = up(home, &data, &["--triton-profile", tenant.key_path.to_str().unwrap()]).await;
    assert!(!text.contains("account admin created"), "the operator account is made once: {text}");
    assert!(text.contains("profile written to"), "{text}");
    let t = Triton {
        bin: nereid_testkit::triton::triton_bin().unwrap(),
        home: home.to_path_buf(),
        profile: "nereid".into(),
        timeout: std::time::Duration::from_secs(120),
        env: Vec::new(),
    };
    let info = t.ok_async(&["-p", "nereid", "info"]).await;
    let created = t.ok_async(&["-p", "nereid", "instance", "create", "-w", "sim-linux", "sample-512M", "--name", "first"]).await;
    let _ = child.kill();
    let _ = child.wait();
    assert!(info.contains("login: admin"), "{info}");
    assert!(created.contains("Created instance first"), "{created}");
}

/// Runs the CLI, whatever its exit status (off the runtime).
async fn tr_run(t: &Triton, args: &[&str]) -> nereid_testkit::triton::Out {
    let (t, args): (Triton, Vec<String>) = (t.clone(), args.iter().map(|s| s.to_string()).collect());
    tokio::task::spawn_blocking(move || {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        t.run(&a).unwrap()
    })
    .await
    .unwrap()
}

/// Where a JSON value holds a `null`, as a path (`.nics[0].gateway`).
fn nulls(v: &Value, at: &str, out: &mut Vec<String>) {
    match v {
        Value::Null => out.push(at.to_string()),
        Value::Array(a) => a.iter().enumerate().for_each(|(i, x)| nulls(x, &format!("{at}[{i}]"), out)),
        Value::Object(m) => m.iter().for_each(|(k, x)| nulls(x, &format!("{at}.{k}"), out)),
        _ => {}
    }
}

fn assert_no_nulls(what: &str, v: &Value) {
    let mut found = Vec::new();
    nulls(v, "", &mut found);
    assert!(found.is_empty(), "{what} renders unset fields as null at {found:?}: {v}");
}

/// `triton account update FIELD=` (an empty value) is what Triton's CloudAPI ignores: the
/// answer is success and the field keeps its value. And `triton account get` on a fresh
/// account prints no `null` lines; no CloudAPI object the CLI shows carries a `null`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triton_account_update_ignores_empty_values_and_nothing_renders_null() {
    let s = setup(KeyType::Ed25519, false).await;
    let t = &s.triton;
    let fresh = t.ok_async(&["account", "get"]).await;
    assert!(fresh.contains("login: alice"), "{fresh}");
    assert!(!fresh.contains("null"), "a fresh account's unset fields are left out, not printed as null:\n{fresh}");
    assert_no_nulls("GetAccount", &t.json_async(&["account", "get", "-j"]).await);

    let out = t.ok_async(&["account", "update", "companyName=ACME", "firstName=Alice", "city=Lisbon"]).await;
    assert!(out.contains("Updated account"), "{out}");
    // Empty values: Triton's CloudAPI copies only fields that are set, so these change nothing.
    let out = tr_run(t, &["account", "update", "companyName=", "city="]).await;
    assert!(out.success(), "an empty value is ignored, as Triton ignores it: {out}");
    let a = t.json_async(&["account", "get", "-j"]).await;
    assert_eq!(
        (a["companyName"].as_str(), a["firstName"].as_str(), a["city"].as_str()),
        (Some("ACME"), Some("Alice"), Some("Lisbon")),
        "{a}"
    );
    assert!(a.get("lastName").is_none() && a.get("phone").is_none(), "{a}");
    assert_no_nulls("UpdateAccount's account", &a);

    // Every other object the CLI shows, for a machine with a NIC, a snapshot, tags and metadata.
    t.ok_async(&["instance", "create", "-w", "tiny", "sample", "--name", "web-1", "-m", "foo=bar", "-t", "role=web"]).await;
    t.ok_async(&["instance", "snapshot", "create", "-w", "--name", "snap1", "web-1"]).await;
    for args in [
        &["instance", "get", "-j", "web-1"][..],
        &["instance", "list", "-j"],
        &["instance", "nic", "list", "-j", "web-1"],
        &["instance", "snapshot", "list", "-j", "web-1"],
        &["instance", "snapshot", "get", "web-1", "snap1"],
        &["instance", "audit", "-j", "web-1"],
        &["instance", "tag", "list", "web-1"],
        &["instance", "metadata", "list", "web-1"],
        &["package", "list", "-j"],
        &["package", "get", "sample"],
        &["image", "list", "-j"],
        &["image", "get", "tiny"],
        &["network", "list", "-j"],
        &["network", "get", "external"],
        &["network", "ip", "list", "-j", "external"],
        &["key", "list", "-j"],
        &["datacenters", "-j"],
        &["services", "-j"],
        &["account", "limits", "-j"],
    ] {
        let out = t.ok_async(args).await;
        let values: Vec<Value> = serde_json::Deserializer::from_str(&out).into_iter::<Value>().map(Result::unwrap).collect();
        assert!(!values.is_empty(), "triton {args:?} printed nothing");
        for v in &values {
            assert_no_nulls(&format!("triton {args:?}"), v);
        }
    }
    let table = t.ok_async(&["package", "get", "sample"]).await;
    assert!(!table.contains("\"group\": \"\""), "an unset group is left out, as in Triton: {table}");
}

/// `triton instance start --snapshot NAME` on a running instance: as in Triton, the
/// rollback stops it, rolls it back and boots it (no "must be stopped" 409).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triton_instance_start_from_a_snapshot_while_running() {
    let s = setup(KeyType::Ed25519, false).await;
    let (t, c) = (&s.triton, &s.cloud.client);
    t.ok_async(&["instance", "create", "-w", "tiny", "sample", "--name", "web-1"]).await;
    let id = t.json_async(&["instance", "get", "web-1"]).await["id"].as_str().unwrap().to_string();
    t.ok_async(&["instance", "snapshot", "create", "-w", "--name", "before", "web-1"]).await;
    assert_eq!(t.json_async(&["instance", "get", "web-1"]).await["state"], "running");

    let out = tr_run(t, &["instance", "start", "-w", "--snapshot", "before", "web-1"]).await;
    assert!(out.success(), "starting a running instance from a snapshot rolls it back: {out}");
    assert!(out.stdout.contains("Start instance web-1"), "{out}");
    // The rollback job runs to the end and leaves the instance running at the snapshot.
    let end = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let jobs = c.get(&format!("/vms/{id}/jobs")).await.unwrap();
        let rollback = jobs.as_array().unwrap().iter().find(|j| j["task"] == "snapshot" && j["params"]["op"] == "rollback").cloned();
        let state = t.json_async(&["instance", "get", "web-1"]).await["state"].clone();
        match rollback {
            Some(j) if j["execution"] == "succeeded" && state == "running" => break,
            Some(j) => assert!(j["execution"] != "failed", "{j}"),
            None => panic!("no rollback job: {jobs}"),
        }
        assert!(std::time::Instant::now() < end, "the rollback did not finish with the instance running");
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    assert_eq!(c.get(&format!("/vms/{id}")).await.unwrap()["state"], "running");
    // And a stopped instance is rolled back and started.
    t.ok_async(&["instance", "stop", "-w", "web-1"]).await;
    let out = t.ok_async(&["instance", "start", "-w", "--snapshot", "before", "web-1"]).await;
    assert!(out.contains("Start instance web-1"), "{out}");
    assert_eq!(t.json_async(&["instance", "get", "web-1"]).await["state"], "running");
}

/// A CloudAPI operation this cloud does not implement yet answers 501 `NotImplemented`,
/// so the CLI does not report an existing instance as "not found" (exit 3); network IPs,
/// whose 404 the CLI once turned into "network … was not found", are there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triton_unimplemented_operations_do_not_claim_resources_are_missing() {
    let s = setup(KeyType::Ed25519, false).await;
    let t = &s.triton;
    t.ok_async(&["instance", "create", "-w", "tiny", "sample", "--name", "web-1"]).await;
    for args in [&["instance", "disks", "web-1"][..], &["volume", "list"], &["rbac", "users"]] {
        let out = tr_run(t, args).await;
        assert!(!out.success(), "{out}");
        assert_ne!(out.code, Some(3), "exit 3 means 'not found' to scripts: {out}");
        assert!(out.stderr.contains("NotImplemented") && out.stderr.contains("not implemented"), "{out}");
        assert!(!out.stderr.contains("not found") && !out.stderr.contains("does not exist"), "{out}");
    }
    let ips = t.ok_async(&["network", "ip", "list", "external"]).await;
    assert!(ips.contains("10.77.0."), "{ips}");
    // A missing resource is still a missing resource.
    let (code, err) = t.fail_async(&["instance", "get", "nope"]).await;
    assert_eq!(code, Some(3), "{err}");
}

/// Every error is Triton's `{code, message}` JSON, whichever layer answers: a URI too long
/// for hyper (what the CLI sends for a huge filter), headers too large, a request hyper
/// cannot parse, invalid UTF-8 in a path variable (operator API and CloudAPI), a method a
/// CloudAPI path does not take.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triton_sees_json_errors_from_every_layer() {
    use std::io::{Read, Write};
    let s = setup(KeyType::Ed25519, false).await;
    let t = &s.triton;
    let long = format!("name={}", "x".repeat(70_000));
    let out = tr_run(t, &["instance", "list", &long]).await;
    assert!(!out.success(), "{out}");
    assert!(out.stderr.contains("(RequestUriTooLarge)") && out.stderr.contains("the request URI is too long"), "{out}");

    let cloud_url = s.cloud.headnode.cloudapi.as_ref().unwrap().url.clone();
    let admin_url = s.cloud.headnode.admin_url.clone();
    // Raw requests, for what no client library sends.
    let raw = |url: &str, request: Vec<u8>| {
        let addr = url.trim_start_matches("http://").to_string();
        std::thread::spawn(move || {
            let mut c = std::net::TcpStream::connect(addr).unwrap();
            c.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
            let _ = c.write_all(&request);
            let mut out = Vec::new();
            let _ = c.read_to_end(&mut out);
            String::from_utf8_lossy(&out).into_owned()
        })
        .join()
        .unwrap()
    };
    let check = |what: &str, answer: &str, status: &str, code: &str| {
        let (head, body) = answer.split_once("\r\n\r\n").unwrap_or_else(|| panic!("{what}: no answer: {answer:?}"));
        assert!(head.starts_with(&format!("HTTP/1.1 {status} ")), "{what}: {head}");
        assert!(head.to_ascii_lowercase().contains("content-type: application/json"), "{what}: {head}");
        let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{what}: body is not JSON ({e}): {body:?}"));
        assert_eq!(v["code"], code, "{what}: {v}");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{what}: {v}");
    };
    for url in [&cloud_url, &admin_url] {
        let big = format!("GET /--ping HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n", "y".repeat(600_000));
        check(&format!("{url} 431"), &raw(url, big.into_bytes()), "431", "RequestHeaderFieldsTooLarge");
        check(&format!("{url} 400"), &raw(url, b"GET / HTTP/1.1\r\nbad header\r\n\r\n".to_vec()), "400", "BadRequest");
        let long = format!("GET /{} HTTP/1.1\r\nhost: x\r\n\r\n", "z".repeat(70_000));
        check(&format!("{url} 414"), &raw(url, long.into_bytes()), "414", "RequestUriTooLarge");
    }
    let token = s.cloud.headnode.token.clone();
    let req = format!("GET /packages/%ff%fe HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\nconnection: close\r\n\r\n");
    check("admin invalid UTF-8", &raw(&admin_url, req.into_bytes()), "400", "BadRequest");

    // CloudAPI, signed.
    let key = nereid_testkit::cloudapi::Key::from_seed(7);
    s.cloud.client.post("/accounts/alice/keys", &json!({"key": key.openssh(), "name": "raw"})).await.unwrap();
    let capi = nereid_testkit::cloudapi::Client::new(&cloud_url, "alice", key);
    let a = capi.get("/alice/machines/%ff%fe/tags").await.unwrap();
    assert_eq!(a.status, 400, "{}", a.text);
    assert_eq!(a.headers["content-type"], "application/json");
    assert_eq!(a.body["code"], "BadRequest", "{}", a.text);
    let a = capi.send("DELETE", "/alice/packages/sample", None, nereid_testkit::cloudapi::Signing::Good).await.unwrap();
    assert_eq!((a.status, a.body["code"].as_str()), (405, Some("MethodNotAllowed")), "{}", a.text);
    assert_eq!(a.headers["content-type"], "application/json");
}

/// The README's CloudAPI claims hold: what it lists as there works through the CLI, and
/// every command in its "Not there yet" list answers `NotImplemented` (so the list names
/// exactly what is missing, and a new entry needs a command here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_not_there_yet_list_is_true() {
    let readme = include_str!("../../../README.md");
    let start = readme.find("Not there yet (the CLI gets `NotImplemented`").expect("README has its 'Not there yet' list");
    let para = &readme[start..readme[start..].find("\n\n").map_or(readme.len(), |e| start + e)];
    let para = para.replace('\n', " ");
    let commands: Vec<&str> = para.split('`').skip(1).step_by(2).filter(|c| c.starts_with("triton ")).collect();
    assert!(commands.len() >= 3, "{para}");
    let s = setup(KeyType::Ed25519, false).await;
    let t = &s.triton;
    t.ok_async(&["instance", "create", "-w", "tiny", "sample", "--name", "web-1"]).await;
    for c in commands {
        let args: &[&str] = match c {
            "triton volume" => &["volume", "list"],
            "triton rbac" => &["rbac", "users"],
            "triton instance disks" => &["instance", "disks", "web-1"],
            other => panic!("README lists `{other}` as not there yet: add the command that shows it here"),
        };
        let out = tr_run(t, args).await;
        assert!(!out.success() && out.stderr.contains("is not implemented by this cloud yet"), "README says `{c}` is not there yet: {out}");
    }
    // What it says is there.
    let nics = t.ok_async(&["instance", "nic", "list", "-j", "web-1"]).await;
    assert!(nics.contains("\"primary\":true"), "{nics}");
    let ips = t.ok_async(&["network", "ip", "list", "external"]).await;
    assert!(ips.contains("10.77.0."), "{ips}");
    assert_eq!(t.json_async(&["account", "limits", "-j"]).await, json!([]), "no limits are configured");
}
