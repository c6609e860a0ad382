//! Kill -9 the headnode at every step of the provision job (and in the middle of an
//! unwind): after a restart every job ends succeeded, or failed and unwound, and nothing
//! leaks. Real processes: `nereid headnode` and `nereid agent --backend sim`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{agent_port, free_port};

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nereid_client::{Client, Target};
use serde_json::{Value, json};

const STEPS: &[&str] = &["reserve", "nics", "definition", "create", "wait", "finish"];

fn headnode(data: &Path, port: u16, env: &[(&str, &str)]) -> Child {
    let mut c = Command::new(env!("CARGO_BIN_EXE_nereid"));
    // The agent listener on the next port: agents find it without reading anything.
    c.args(["headnode", "--data-dir", data.to_str().unwrap(), "--admin-listen", &format!("127.0.0.1:{port}")])
        .args(["--agent-listen", &format!("127.0.0.1:{}", agent_port(port))])
        // The web console on a free port, not its fixed default (other tests run beside this one).
        .args(["--web-listen", "127.0.0.1:0"])
        .args(["--cloudapi-listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c.env_remove("NEREID_TEST_PAUSE_AT").env_remove("NEREID_TEST_FAIL_AT");
    for (k, v) in env {
        c.env(k, v);
    }
    c.spawn().unwrap()
}

fn agent(data: &Path, headnode_data: &Path, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_nereid"))
        .args([
            "agent",
            "--headnode",
            &format!("https://127.0.0.1:{}", agent_port(port)),
            "--join-token-file",
            headnode_data.join("join.token").to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
            "--backend",
            "sim",
            "--sim-create-ms",
            "30",
            "--listen",
            "127.0.0.1:0",
            "--heartbeat-secs",
            "1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

async fn until<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn client(data: &Path, child: &Child) -> Client {
    let data = data.to_path_buf();
    let pid = child.id();
    until("the headnode", || {
        let data = data.clone();
        async move {
            let ep: Value = serde_json::from_str(&std::fs::read_to_string(data.join("endpoints.json")).ok()?).ok()?;
            if ep["pid"] != pid {
                return None;
            }
            let c = Client::new(Target::from_data_dir(&data).ok()?);
            c.get("/ping").await.ok().map(|_| c)
        }
    })
    .await
}

struct Rig {
    _dir: tempfile::TempDir,
    data: PathBuf,
    port: u16,
    headnode: Child,
    agent: Child,
    client: Client,
    network: String,
    body: Value,
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = self.headnode.kill();
        let _ = self.agent.kill();
        let _ = self.headnode.wait();
        let _ = self.agent.wait();
    }
}

async fn rig(env: &[(&str, &str)]) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("headnode");
    let port = free_port();
    let headnode = headnode(&data, port, env);
    let client = client(&data, &headnode).await;
    let agent = agent(&dir.path().join("agent"), &data, port);
    let c = client.clone();
    until("the server", || {
        let c = c.clone();
        async move { c.get("/servers").await.ok().filter(|s| s[0]["status"] == "running") }
    })
    .await;
    c.post("/nic_tags", &json!({"name": "external"})).await.unwrap();
    let network = c
        .post("/networks", &json!({"name": "external", "nic_tag": "external", "vlan_id": 0, "subnet": "10.66.0.0/24", "provision_start_ip": "10.66.0.10", "provision_end_ip": "10.66.0.200"}))
        .await
        .unwrap()["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let pkg =
        c.post("/packages", &json!({"name": "p1", "version": "1.0.0", "max_physical_memory": 512, "quota": 10240})).await.unwrap()["uuid"]
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
    let body = json!({"owner_uuid": "930896af-bf8c-48d4-885c-6573a94b1853", "brand": "bhyve", "billing_id": pkg, "image_uuid": img, "networks": [network]});
    Rig { _dir: dir, data, port, headnode, agent, client, network, body }
}

impl Rig {
    /// Creates a VM, waits for the pause marker, kills the headnode with SIGKILL and
    /// restarts it without hooks; returns (vm, job).
    async fn provision_and_crash(&mut self) -> (String, String) {
        let ids = self.provision_until_paused().await;
        self.crash_and_restart().await;
        ids
    }

    /// Creates a VM and waits for the pause marker; returns (vm, job).
    async fn provision_until_paused(&mut self) -> (String, String) {
        let r = self.client.post("/vms", &self.body).await.unwrap();
        let (vm, job) = (r["vm_uuid"].as_str().unwrap().to_string(), r["job_uuid"].as_str().unwrap().to_string());
        let marker = self.data.join("paused-at");
        until("the pause point", || {
            let m = marker.clone();
            async move { m.exists().then_some(()) }
        })
        .await;
        (vm, job)
    }

    /// Kills the headnode with SIGKILL and restarts it without hooks.
    async fn crash_and_restart(&mut self) {
        let marker = self.data.join("paused-at");
        self.headnode.kill().unwrap(); // SIGKILL
        self.headnode.wait().unwrap();
        std::fs::remove_file(&marker).unwrap();
        self.headnode = headnode(&self.data, self.port, &[]);
        self.client = client(&self.data, &self.headnode).await;
    }

    async fn finished(&self, job: &str) -> Value {
        let c = self.client.clone();
        let job = job.to_string();
        until("the job to end", || {
            let (c, job) = (c.clone(), job.clone());
            async move { c.get(&format!("/jobs/{job}")).await.ok().filter(|j| j["execution"] == "succeeded" || j["execution"] == "failed") }
        })
        .await
    }

    async fn server_has(&self, vm: &str) -> Option<Value> {
        let s = self.client.get("/servers").await.unwrap()[0]["uuid"].as_str().unwrap().to_string();
        self.client.get(&format!("/servers/{s}/vms/{vm}")).await.ok()
    }

    async fn leaks(&self, vm: &str) -> (usize, usize) {
        let nics = self.client.get(&format!("/nics?belongs_to_uuid={vm}")).await.unwrap().as_array().unwrap().len();
        let ips = self.client.get(&format!("/networks/{}/ips?belongs_to_uuid={vm}", self.network)).await.unwrap().as_array().unwrap().len();
        (nics, ips)
    }

    async fn reservations(&self) -> i64 {
        let store = nereid_store::open(&format!("sqlite:{}", self.data.join("nereid.db").display())).await.unwrap();
        store.count("reservations", &nereid_store::Filter::True).await.unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_headnode_killed_at_every_provision_step_finishes_the_job_after_restart() {
    for step in STEPS {
        for when in ["before", "after"] {
            let point = format!("provision:{step}:{when}");
            let mut rig = rig(&[("NEREID_TEST_PAUSE_AT", &point)]).await;
            let (vm, job) = rig.provision_and_crash().await;
            let j = rig.finished(&job).await;
            assert_eq!(j["execution"], "succeeded", "{point}: {j}");
            let v = rig.client.get(&format!("/vms/{vm}")).await.unwrap();
            assert_eq!(v["state"], "running", "{point}: {v}");
            assert_eq!(rig.server_has(&vm).await.unwrap()["state"], "running", "{point}");
            assert_eq!(rig.leaks(&vm).await, (1, 1), "{point}: exactly one NIC and one address");
            assert_eq!(v["nics"].as_array().unwrap().len(), 1, "{point}");
            assert_eq!(rig.reservations().await, 0, "{point}: reservation left");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_headnode_killed_while_unwinding_finishes_the_unwind_after_restart() {
    for undo in ["undo create", "undo nics"] {
        let point = format!("provision:{undo}:after");
        let mut rig = rig(&[("NEREID_TEST_PAUSE_AT", &point), ("NEREID_TEST_FAIL_AT", "provision:wait")]).await;
        let (vm, job) = rig.provision_and_crash().await;
        let j = rig.finished(&job).await;
        assert_eq!(j["execution"], "failed", "{point}: {j}");
        assert_eq!(j["onerror_results"].as_array().unwrap().last().unwrap()["name"], "undo reserve", "{point}: {j}");
        assert_eq!(rig.client.get(&format!("/vms/{vm}")).await.unwrap()["state"], "failed");
        assert!(rig.server_has(&vm).await.is_none(), "{point}: the server kept the VM");
        assert_eq!(rig.leaks(&vm).await, (0, 0), "{point}");
        assert_eq!(rig.reservations().await, 0, "{point}");
    }
}

/// A NIC's MAC is derived from its VM in 24 bits, so in a cloud of a few thousand NICs
/// some VM's first MAC is already another VM's NIC. The provision then takes the next
/// derived MAC, and the step re-run after a crash finds that NIC instead of making
/// another (it used to draw a random MAC, which a re-run could not find: two NICs and
/// two addresses) — also when the other VM's NIC is gone by then (`freed`), which frees
/// the first MAC for the re-run.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_vm_whose_derived_mac_is_taken_gets_one_nic_across_a_crash() {
    for freed in [false, true] {
        let mut rig = rig(&[("NEREID_TEST_PAUSE_AT", "provision:nics:after")]).await;
        let vm = uuid::Uuid::new_v4();
        let first = nereid_headnode::jobs::provision::nic_mac(vm, 0);
        let other = uuid::Uuid::new_v4();
        let owner = rig.body["owner_uuid"].clone();
        let squatter =
            json!({"mac": first, "owner_uuid": owner, "belongs_to_uuid": other, "belongs_to_type": "zone", "network_uuid": rig.network});
        assert_eq!(rig.client.post("/nics", &squatter).await.unwrap()["mac"], first.as_str());
        rig.body["uuid"] = json!(vm);
        let (created, job) = rig.provision_until_paused().await;
        assert_eq!(created, vm.to_string());
        let squatter_path = format!("/nics/{}", first.replace(':', ""));
        if freed {
            rig.client.delete(&squatter_path).await.unwrap();
        }
        rig.crash_and_restart().await;
        let j = rig.finished(&job).await;
        assert_eq!(j["execution"], "succeeded", "freed {freed}: {j}");
        assert_eq!(rig.leaks(&created).await, (1, 1), "freed {freed}: exactly one NIC and one address after the re-run");
        let v = rig.client.get(&format!("/vms/{vm}")).await.unwrap();
        let mac = v["nics"][0]["mac"].as_str().unwrap().to_string();
        assert!(mac.starts_with("90:b8:d0:") && mac != first, "freed {freed}: {v}");
        if !freed {
            let theirs = rig.client.get(&squatter_path).await.unwrap();
            assert_eq!(theirs["belongs_to_uuid"], other.to_string(), "the other VM's NIC is untouched: {theirs}");
        }
    }
}
