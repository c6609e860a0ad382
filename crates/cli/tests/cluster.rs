//! Several headnodes on one PostgreSQL store, as real processes: every API answers from
//! any of them, an agent named with both fails over, a headnode killed with SIGKILL in the
//! middle of 50 provisions has its jobs taken over by the survivor, and an image uploaded
//! through one headnode provisions through the other (a shared --images-dir).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{agent_port, free_port};

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nereid_client::{Client, Target};
use serde_json::{Value, json};

fn headnode(data: &Path, port: u16, store: &str, images: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_nereid"))
        .args(["headnode", "--data-dir", data.to_str().unwrap(), "--admin-listen", &format!("127.0.0.1:{port}")])
        .args(["--agent-listen", &format!("127.0.0.1:{}", agent_port(port))])
        // The web console on a free port, not its fixed default (other tests run beside this one).
        .args(["--web-listen", "127.0.0.1:0"])
        .args(["--cloudapi-listen", "127.0.0.1:0", "--store", store, "--images-dir", images.to_str().unwrap()])
        .args(["--job-lease-secs", "3", "--reconcile-every-secs", "0"])
        .env_remove("NEREID_TEST_PAUSE_AT")
        .env_remove("NEREID_TEST_FAIL_AT")
        .stdout(Stdio::null())
        // Kept beside the data directory: a headnode that does not come up says why.
        .stderr(std::fs::File::create(log_of(data)).unwrap())
        .spawn()
        .unwrap()
}

fn log_of(data: &Path) -> std::path::PathBuf {
    data.with_extension("log")
}

async fn until<T, F, Fut>(what: &str, secs: u64, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn client(data: &Path) -> Client {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(t) = Target::from_data_dir(data) {
            let c = Client::new(t);
            if c.get("/ping").await.is_ok() {
                return c;
            }
        }
        if Instant::now() > end {
            let log = std::fs::read_to_string(log_of(data)).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            panic!(
                "the headnode in {} did not answer within 60 s; its last log lines:\n{}",
                data.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct Kill(Vec<Child>);

impl Drop for Kill {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn upload_image(c: &Client, name: &str, fill: u8) -> String {
    let img = c
        .post("/images", &json!({"owner": "00000000-0000-0000-0000-000000000000", "name": name, "version": "1", "type": "zvol", "os": "linux", "public": true, "nic_driver": "virtio", "disk_driver": "virtio", "cpu_type": "host", "image_size": 1024}))
        .await
        .unwrap()["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    c.send(c.request(reqwest::Method::PUT, &format!("/images/{img}/file?compression=none")).body(vec![fill; 4096])).await.unwrap();
    c.post(&format!("/images/{img}?action=activate"), &json!({})).await.unwrap();
    img
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_headnodes_survive_a_sigkill_in_the_middle_of_50_provisions() {
    let store = nereid_store::testing::fresh_pg_url().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("shared-images");
    let (a_data, b_data) = (dir.path().join("a"), dir.path().join("b"));
    let (a_port, b_port) = (free_port(), free_port());
    let mut procs = Kill(Vec::new());
    procs.0.push(headnode(&a_data, a_port, &store, &images));
    let a = client(&a_data).await;
    procs.0.push(headnode(&b_data, b_port, &store, &images));
    let b = client(&b_data).await;
    // One agent, told about both headnodes, joining with B's token through A.
    procs.0.push(
        Command::new(env!("CARGO_BIN_EXE_nereid"))
            .args(["agent", "--headnode", &format!("https://127.0.0.1:{},https://127.0.0.1:{}", agent_port(a_port), agent_port(b_port))])
            .args(["--join-token-file", b_data.join("join.token").to_str().unwrap()])
            .args(["--data-dir", dir.path().join("agent").to_str().unwrap(), "--backend", "sim", "--sim-servers", "2"])
            .args(["--sim-create-ms", "1500", "--listen", "127.0.0.1:0", "--heartbeat-secs", "1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let bc = b.clone();
    until("two servers", 60, || {
        let c = bc.clone();
        async move { c.get("/servers").await.ok().filter(|s| s.as_array().unwrap().iter().filter(|x| x["status"] == "running").count() == 2) }
    })
    .await;
    // Set up through A; B sees it all.
    a.post("/nic_tags", &json!({"name": "external"})).await.unwrap();
    let network = a
        .post("/networks", &json!({"name": "external", "nic_tag": "external", "vlan_id": 0, "subnet": "10.66.0.0/24", "provision_start_ip": "10.66.0.10", "provision_end_ip": "10.66.0.250"}))
        .await
        .unwrap()["uuid"]
        .clone();
    let pkg =
        a.post("/packages", &json!({"name": "p1", "version": "1.0.0", "max_physical_memory": 128, "quota": 1024})).await.unwrap()["uuid"]
            .clone();
    let first = upload_image(&a, "first", 1).await;
    let later = upload_image(&a, "later", 2).await;
    let body = |img: &str| json!({"owner_uuid": "930896af-bf8c-48d4-885c-6573a94b1853", "brand": "bhyve", "billing_id": pkg, "image_uuid": img, "networks": [network]});
    assert_eq!(b.get("/packages").await.unwrap().as_array().unwrap().len(), 1);

    // 50 provisions through both headnodes; A is killed after the 20th is accepted.
    let mut jobs = Vec::new();
    let mut a_child = Some(procs.0.remove(0));
    for i in 0..50 {
        let via = if i % 2 == 0 && a_child.is_some() { &a } else { &b };
        let r = match via.post("/vms", &body(&first)).await {
            Ok(r) => r,
            // The API stays up: what A cannot take, B does.
            Err(_) => b.post("/vms", &body(&first)).await.unwrap(),
        };
        jobs.push(r["job_uuid"].as_str().unwrap().to_string());
        if i == 20
            && let Some(mut child) = a_child.take()
        {
            let open = b.get("/jobs?execution=running").await.unwrap().as_array().unwrap().len();
            assert!(open > 0, "A dies with jobs in flight");
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
        }
    }
    // Every job ends — succeeded or cleanly failed — served by the survivor.
    let mut outcomes = std::collections::BTreeMap::new();
    for job in &jobs {
        let j = until("a job to end", 120, || {
            let (c, job) = (b.clone(), job.clone());
            async move { c.get(&format!("/jobs/{job}")).await.ok().filter(|j| j["execution"] == "succeeded" || j["execution"] == "failed") }
        })
        .await;
        *outcomes.entry(j["execution"].as_str().unwrap().to_string()).or_insert(0) += 1;
    }
    assert_eq!(outcomes.values().sum::<i32>(), 50, "{outcomes:?}");
    assert!(outcomes.get("succeeded").copied().unwrap_or(0) >= 45, "{outcomes:?}");
    // An image uploaded through A provisions through B once A is gone (the agent now
    // talks to B and fetches the file from it).
    let r = b.post("/vms", &body(&later)).await.unwrap();
    let j = b.get(&format!("/jobs/{}/wait?timeout=60", r["job_uuid"].as_str().unwrap())).await.unwrap();
    assert_eq!(j["execution"], "succeeded", "{j}");
    // Nothing leaked or drifted: no reservation left, no address on two NICs.
    let report = b.get("/doctor").await.unwrap();
    let findings: Vec<&Value> = report["findings"].as_array().unwrap().iter().filter(|f| f["kind"] != "server_unknown").collect();
    assert!(findings.is_empty(), "{findings:?}");
    let nics = b.get("/nics").await.unwrap();
    let mut ips: Vec<&str> = nics.as_array().unwrap().iter().filter_map(|n| n["ip"].as_str()).collect();
    let n = ips.len();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), n, "an address on two NICs");
}

/// Each headnode remembers which addresses of a network have records, so a claim does not
/// read the whole network. When the other headnode has claimed many addresses since (more
/// than one claim's attempts), the first conflict makes it read the network again: its
/// next claim succeeds at once instead of walking the other's addresses one by one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_headnode_whose_address_cache_is_far_behind_still_claims_at_once() {
    let store = nereid_store::testing::fresh_pg_url().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("shared-images");
    let (a_data, b_data) = (dir.path().join("a"), dir.path().join("b"));
    let (a_port, b_port) = (free_port(), free_port());
    // One after the other: the first sets the store up.
    let mut procs = Kill(vec![headnode(&a_data, a_port, &store, &images)]);
    let a = client(&a_data).await;
    procs.0.push(headnode(&b_data, b_port, &store, &images));
    let b = client(&b_data).await;
    a.post("/nic_tags", &json!({"name": "external"})).await.unwrap();
    let net = a
        .post("/networks", &json!({"name": "external", "nic_tag": "external", "vlan_id": 0, "subnet": "10.67.0.0/22", "provision_start_ip": "10.67.0.10", "provision_end_ip": "10.67.3.250"}))
        .await
        .unwrap()["uuid"]
        .clone();
    let owner = "930896af-bf8c-48d4-885c-6573a94b1853";
    let nic = |c: &Client| {
        let c = c.clone();
        let body = json!({"network_uuid": net, "owner_uuid": owner, "belongs_to_uuid": owner, "belongs_to_type": "zone"});
        async move { c.post("/nics", &body).await.map(|n| n["ip"].as_str().unwrap().to_string()) }
    };
    // A reads the network (and remembers it); then B claims 250 addresses, more than the
    // attempts one claim makes.
    let first = nic(&a).await.unwrap();
    let mut taken = vec![first];
    for chunk in 0..25 {
        let batch: Vec<_> = (0..10).map(|_| nic(&b)).collect();
        for r in futures_util::future::join_all(batch).await {
            taken.push(r.unwrap_or_else(|e| panic!("B's claim {chunk}: {e}")));
        }
    }
    // A, well within its cache's 10 s, claims again: it gets a fresh address.
    let ip = nic(&a).await.expect("A claims an address although its cache is 250 claims behind");
    assert!(!taken.contains(&ip), "{ip} was already B's");
    let all = b.get(&format!("/nics?network_uuid={}", net.as_str().unwrap())).await.unwrap();
    let mut ips: Vec<&str> = all.as_array().unwrap().iter().filter_map(|n| n["ip"].as_str()).collect();
    assert_eq!(ips.len(), 252);
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 252, "an address on two NICs");
}
