//! An agent cut off from its headnode (nftables drop, inside a network namespace the test
//! creates): shorter than the server timeout, nothing flaps; longer, the server turns
//! `unknown`, placement avoids it, its VMs are not declared destroyed, and after the
//! partition heals the agent — which kept its VMs running — catches up by itself.
//!
//! The headnode and the agent run as processes inside one namespace. The agent reaches
//! the headnode at 127.0.0.3 and listens on 127.0.0.2; the test talks to the headnode at
//! 127.0.0.1 through a port forwarded from the host's loopback, so the partition (drop
//! everything to 127.0.0.2 and 127.0.0.3) cuts the agent off and nothing else.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nereid_client::{Client, Target};
use nereid_testkit::netns::NetNs;
use serde_json::{Value, json};

/// Forwards a host-loopback port to `port` on the namespace's loopback.
async fn forward(ns: Arc<NetNs>, port: u16) -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let local = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = l.accept().await {
            let ns = ns.clone();
            tokio::spawn(async move {
                let out = tokio::task::spawn_blocking(move || ns.enter(|| std::net::TcpStream::connect(("127.0.0.1", port))))
                    .await
                    .ok()
                    .and_then(|r| r.ok())
                    .and_then(|r| r.ok());
                let Some(out) = out else { return };
                let _ = out.set_nonblocking(true);
                if let Ok(mut out) = tokio::net::TcpStream::from_std(out) {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                }
            });
        }
    });
    local
}

async fn status(c: &Client) -> String {
    c.get("/servers").await.map(|s| s[0]["status"].as_str().unwrap_or("").to_string()).unwrap_or_else(|e| format!("error {e}"))
}

async fn until(what: &str, secs: u64, mut f: impl AsyncFnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_partitioned_shorter_and_longer_than_the_timeout() {
    let ns = Arc::new(NetNs::new("partition").unwrap());
    let dir = tempfile::tempdir().unwrap();
    let hn_data = dir.path().join("headnode");
    let port = 18080;
    let mut hn = ns
        .cmd(env!("CARGO_BIN_EXE_nereid"))
        .args(["headnode", "--data-dir", hn_data.to_str().unwrap(), "--admin-listen", &format!("0.0.0.0:{port}")])
        .args(["--agent-listen", &format!("0.0.0.0:{}", port + 1)])
        // The web console on a free port, not its fixed default (other tests run beside this one).
        .args(["--web-listen", "127.0.0.1:0"])
        .args(["--cloudapi-listen", "127.0.0.1:0", "--server-timeout-secs", "4", "--reconcile-every-secs", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let fwd = forward(ns.clone(), port).await;
    let token = {
        let p = hn_data.join("admin.token");
        let mut t = String::new();
        for _ in 0..300 {
            if let Ok(s) = std::fs::read_to_string(&p) {
                t = s.trim().to_string();
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        t
    };
    let c = Client::new(Target { url: format!("http://127.0.0.1:{fwd}"), token, source: "test".into() });
    until("the headnode", 60, async || c.get("/ping").await.is_ok()).await;
    let mut agent = ns
        .cmd(env!("CARGO_BIN_EXE_nereid"))
        .args(["agent", "--headnode", &format!("https://127.0.0.3:{}", port + 1)])
        .args(["--join-token-file", hn_data.join("join.token").to_str().unwrap()])
        .args(["--data-dir", dir.path().join("agent").to_str().unwrap(), "--backend", "sim"])
        .args(["--listen", "127.0.0.2:0", "--heartbeat-secs", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    until("the server", 60, async || status(&c).await == "running").await;
    c.post("/nic_tags", &json!({"name": "external"})).await.unwrap();
    let net = c
        .post("/networks", &json!({"name": "external", "nic_tag": "external", "vlan_id": 0, "subnet": "10.66.0.0/24", "provision_start_ip": "10.66.0.10", "provision_end_ip": "10.66.0.200"}))
        .await
        .unwrap()["uuid"]
        .clone();
    let pkg = c.post("/packages", &json!({"name": "small", "version": "1.0.0", "max_physical_memory": 256, "quota": 1024})).await.unwrap()
        ["uuid"]
        .clone();
    let img = c
        .post("/images", &json!({"owner": "00000000-0000-0000-0000-000000000000", "name": "i", "version": "1", "type": "zvol", "os": "linux", "public": true, "nic_driver": "virtio", "disk_driver": "virtio", "cpu_type": "host", "image_size": 1024}))
        .await
        .unwrap()["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    c.send(c.request(reqwest::Method::PUT, &format!("/images/{img}/file?compression=none")).body(vec![1u8; 100])).await.unwrap();
    c.post(&format!("/images/{img}?action=activate"), &json!({})).await.unwrap();
    let body = json!({"owner_uuid": "930896af-bf8c-48d4-885c-6573a94b1853", "brand": "bhyve", "billing_id": pkg, "image_uuid": img, "networks": [net]});
    let r = c.post("/vms?sync=true", &body).await.unwrap();
    assert_eq!(r["state"], "running", "{r}");
    let vm = r["uuid"].as_str().unwrap().to_string();
    let server = r["server_uuid"].as_str().unwrap().to_string();

    let cut = "nft add table inet partition; \
               nft add chain inet partition out '{ type filter hook output priority 0; }'; \
               nft add rule inet partition out ip daddr '{ 127.0.0.2, 127.0.0.3 }' drop";
    let heal = "nft delete table inet partition";

    // Shorter than the timeout (4 s): the server never turns unknown.
    ns.sh(cut).unwrap();
    let end = Instant::now() + Duration::from_millis(1000);
    let mut seen = Vec::new();
    while Instant::now() < end {
        seen.push(status(&c).await);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    ns.sh(heal).unwrap();
    let end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < end {
        seen.push(status(&c).await);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert!(seen.iter().all(|s| s == "running"), "no flapping: {seen:?}");

    // Longer than the timeout: unknown, avoided by placement, its VM not destroyed.
    ns.sh(cut).unwrap();
    until("the server to turn unknown", 20, async || status(&c).await == "unknown").await;
    let e = c.post("/vms", &body).await.unwrap_err();
    let nereid_client::Error::Api { code, errors, .. } = &e else { panic!("{e}") };
    assert_eq!(code, "NoAllocatableServersError");
    assert!(errors[0].message.contains("server status is unknown"), "{errors:?}");
    let v: Value = c.get(&format!("/vms/{vm}")).await.unwrap();
    assert_eq!(v["state"], "running", "silence is not death: {v}");
    let sync = c.get(&format!("/vms/{vm}?sync=true")).await.unwrap_err();
    assert_eq!(sync.status(), Some(503), "a sync that cannot ask the server changes nothing: {sync}");
    assert_eq!(c.get(&format!("/vms/{vm}")).await.unwrap()["state"], "running");
    tokio::time::sleep(Duration::from_secs(2)).await;
    ns.sh(heal).unwrap();

    // Healed: the agent catches up by itself; its VM ran all along.
    until("the server to come back", 30, async || status(&c).await == "running").await;
    let on_server = c.get(&format!("/servers/{server}/vms/{vm}")).await.unwrap();
    assert_eq!(on_server["state"], "running", "{on_server}");
    let r = c.post("/vms?sync=true", &body).await.unwrap();
    assert_eq!(r["state"], "running", "placement uses it again: {r}");
    let _ = agent.kill();
    let _ = hn.kill();
    let _ = agent.wait();
    let _ = hn.wait();
}
