//! VMAPI on simulated servers: the lifecycle, resize, capacity races, ghosts, silence.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use nereid_testkit::Options;
use serde_json::{Value, json};

async fn sim(backend: Backend, servers: usize) -> Cloud {
    Cloud::start_with(Options { sim_servers: servers, ..Options::new(backend) }).await.unwrap()
}

async fn vm(cloud: &Cloud, uuid: &str) -> Value {
    cloud.client.get(&format!("/vms/{uuid}")).await.unwrap()
}

async fn agent_view(cloud: &Cloud, vm: &Value) -> Option<Value> {
    let server = vm["server_uuid"].as_str()?;
    cloud.client.get(&format!("/servers/{server}/vms/{}", vm["uuid"].as_str()?)).await.ok()
}

async fn act(cloud: &Cloud, uuid: &str, action: &str, body: Value) -> Value {
    let r = cloud.client.post(&format!("/vms/{uuid}?action={action}"), &body).await.unwrap();
    let j = cloud.wait_job(r["job_uuid"].as_str().unwrap()).await.unwrap();
    assert_eq!(j["execution"], "succeeded", "{action}: {j}");
    j
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lifecycle_on_three_simulated_servers() {
    let cloud = sim(Backend::Sqlite, 3).await;
    let seed = cloud.seed().await.unwrap();
    let (uuid, job) = cloud.create_vm(&seed.vm_body("web-1")).await.unwrap();
    let j = cloud.wait_job(&job).await.unwrap();
    assert_eq!(j["execution"], "succeeded", "{j}");
    let names: Vec<&str> = j["chain_results"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["reserve", "nics", "definition", "create", "wait", "finish"]);
    let v = vm(&cloud, &uuid).await;
    assert_eq!(v["state"], "running");
    let ip = v["nics"][0]["ip"].as_str().unwrap().to_string();
    assert!(ip.starts_with("10.77."), "{v}");
    assert_eq!(agent_view(&cloud, &v).await.unwrap()["state"], "running");
    // No reservation is left once the VM runs.
    assert_eq!(cloud.headnode.app.store.count("reservations", &nereid_store::Filter::True).await.unwrap(), 0);

    act(&cloud, &uuid, "stop", json!({})).await;
    assert_eq!(vm(&cloud, &uuid).await["state"], "stopped");
    assert_eq!(agent_view(&cloud, &vm(&cloud, &uuid).await).await.unwrap()["state"], "stopped");
    act(&cloud, &uuid, "start", json!({})).await;
    assert_eq!(vm(&cloud, &uuid).await["state"], "running");
    let before = agent_view(&cloud, &vm(&cloud, &uuid).await).await.unwrap();
    act(&cloud, &uuid, "reboot", json!({})).await;
    let after = agent_view(&cloud, &vm(&cloud, &uuid).await).await.unwrap();
    assert_eq!(after["state"], "running");
    assert!(after["reboot_generation"].as_i64() > before["reboot_generation"].as_i64());

    // Resize while running: stopped, applied, started again.
    let j = act(&cloud, &uuid, "update", json!({"ram": 2048, "quota": 20})).await;
    let steps: Vec<String> = j["chain_results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| format!("{}: {}", r["name"].as_str().unwrap(), r["result"].as_str().unwrap()))
        .collect();
    assert!(steps.iter().any(|s| s == "stop: VM stopped for the resize"), "{steps:?}");
    let v = vm(&cloud, &uuid).await;
    assert_eq!(
        (v["state"].as_str(), v["ram"].as_u64(), v["quota"].as_u64(), v["disks"][0]["size"].as_u64()),
        (Some("running"), Some(2048), Some(20), Some(20480))
    );
    let a = agent_view(&cloud, &v).await.unwrap();
    assert_eq!((a["ram"].as_u64(), a["state"].as_str()), (Some(2048), Some("running")));
    // Resize while stopped stays stopped.
    act(&cloud, &uuid, "stop", json!({})).await;
    act(&cloud, &uuid, "update", json!({"vcpus": 2})).await;
    let v = vm(&cloud, &uuid).await;
    assert_eq!((v["state"].as_str(), v["vcpus"].as_u64()), (Some("stopped"), Some(2)));
    assert_eq!(agent_view(&cloud, &v).await.unwrap()["vcpus"], 2);
    // Disks never shrink.
    let e = cloud.client.post(&format!("/vms/{uuid}?action=update"), &json!({"quota": 5})).await.unwrap_err();
    assert!(e.to_string().contains("disks can only grow"), "{e}");
    // Metadata changes apply without a restart.
    act(&cloud, &uuid, "start", json!({})).await;
    act(&cloud, &uuid, "update", json!({"set_customer_metadata": {"k": "v"}, "alias": "web-2"})).await;
    let v = vm(&cloud, &uuid).await;
    assert_eq!(
        (v["alias"].as_str(), v["customer_metadata"]["k"].as_str(), v["state"].as_str()),
        (Some("web-2"), Some("v"), Some("running"))
    );

    // Destroy frees the IP and the capacity.
    let r = cloud.client.delete(&format!("/vms/{uuid}")).await.unwrap();
    assert_eq!(cloud.wait_job(r["job_uuid"].as_str().unwrap()).await.unwrap()["execution"], "succeeded");
    let v = vm(&cloud, &uuid).await;
    assert_eq!(v["state"], "destroyed");
    assert!(v["destroyed"].is_string());
    assert!(agent_view(&cloud, &v).await.is_none());
    let ipobj = cloud.client.get(&format!("/networks/{}/ips/{ip}", seed.network)).await.unwrap();
    assert_eq!(ipobj["free"], true, "{ipobj}");
    assert_eq!(cloud.client.get(&format!("/nics?belongs_to_uuid={uuid}")).await.unwrap(), json!([]));
    let jobs = cloud.client.get(&format!("/vms/{uuid}/jobs")).await.unwrap();
    let tasks: Vec<&str> = jobs.as_array().unwrap().iter().map(|j| j["task"].as_str().unwrap()).collect();
    assert_eq!(tasks, ["destroy", "update", "start", "update", "stop", "update", "reboot", "start", "stop", "provision"]);
    assert!(jobs.as_array().unwrap().iter().all(|j| j["execution"] == "succeeded"));
}

both_backends!(fifty_concurrent_provisions_against_room_for_ten);

/// 3 servers with room for exactly 10 VMs of the package (4 + 3 + 3).
async fn room_for_ten(cloud: &Cloud) -> Vec<String> {
    let servers = cloud.client.get("/servers").await.unwrap();
    let ids: Vec<String> = servers.as_array().unwrap().iter().map(|s| s["uuid"].as_str().unwrap().to_string()).collect();
    for (i, id) in ids.iter().enumerate() {
        let mut body = json!({"reservation_ratio": 0});
        if i == 0 {
            body["overprovision_ratios"] = json!({"ram": 4.0 / 3.0 + 1e-9});
        }
        cloud.client.post(&format!("/servers/{id}"), &body).await.unwrap();
    }
    ids
}

async fn fifty_concurrent_provisions_against_room_for_ten(b: Backend) {
    let cloud = Cloud::start_with(Options { sim_servers: 3, sim_ram_mib: 3072, ..Options::new(b) }).await.unwrap();
    let seed = cloud.seed().await.unwrap();
    let ids = room_for_ten(&cloud).await;
    // On PostgreSQL a second headnode on the same database takes half of the requests, so
    // the store's conditional claims (not one process's lock) must prevent over-commit.
    let second = if b == Backend::Postgres { Some(Cloud::start_on(&cloud.store_url).await.unwrap()) } else { None };
    let mut tasks = Vec::new();
    for i in 0..50 {
        let c = match &second {
            Some(s) if i % 2 == 1 => s.client.clone(),
            _ => cloud.client.clone(),
        };
        let body = seed.vm_body(&format!("race-{i}"));
        tasks.push(tokio::spawn(async move { c.post("/vms", &body).await }));
    }
    let (mut jobs, mut refused) = (Vec::new(), Vec::new());
    for t in tasks {
        match t.await.unwrap() {
            Ok(r) => jobs.push(r["job_uuid"].as_str().unwrap().to_string()),
            Err(e) => refused.push(e),
        }
    }
    if jobs.len() != 10 {
        for j in &jobs {
            let job = cloud.wait_job(j).await.unwrap();
            eprintln!("job {} vm {} server {} exec {}", j, job["vm_uuid"], job["server_uuid"], job["execution"]);
        }
        eprintln!("servers: {}", cloud.client.get("/servers").await.unwrap());
    }
    assert_eq!((jobs.len(), refused.len()), (10, 40));
    for e in &refused {
        let nereid_client::Error::Api { status, code, errors, message, .. } = e else { panic!("{e}") };
        assert_eq!((*status, code.as_str()), (409, "NoAllocatableServersError"));
        assert!(message.starts_with("No compute resources available: "), "{message}");
        // Every server is named with the step that rejected it and why.
        assert_eq!(errors.len(), 3, "{errors:?}");
        for fe in errors {
            assert!(ids.contains(&fe.field), "{fe:?}");
            assert_eq!(fe.code, "ram");
            assert!(fe.message.contains("not enough RAM: needs 1024 MiB"), "{fe:?}");
        }
    }
    for j in &jobs {
        assert_eq!(cloud.wait_job(j).await.unwrap()["execution"], "succeeded");
    }
    let running = cloud.client.get("/vms?state=running").await.unwrap();
    let running = running.as_array().unwrap();
    assert_eq!(running.len(), 10);
    let mut per_server = std::collections::HashMap::new();
    for v in running {
        *per_server.entry(v["server_uuid"].as_str().unwrap().to_string()).or_insert(0) += 1;
    }
    assert_eq!(per_server.get(&ids[0]).copied().unwrap_or(0), 4, "{per_server:?}");
    assert_eq!(per_server.get(&ids[1]).copied().unwrap_or(0), 3, "{per_server:?}");
    assert_eq!(per_server.get(&ids[2]).copied().unwrap_or(0), 3, "{per_server:?}");
    // Nothing was written for the refused requests.
    assert_eq!(cloud.client.get("/vms").await.unwrap().as_array().unwrap().len(), 10);
    assert_eq!(cloud.client.get("/jobs?task=provision").await.unwrap().as_array().unwrap().len(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_ghost_record_never_blocks_placement_and_sync_clears_it() {
    let cloud = sim(Backend::Sqlite, 1).await;
    let seed = cloud.seed().await.unwrap();
    let server = cloud.client.get("/servers").await.unwrap()[0]["uuid"].as_str().unwrap().to_string();
    // Triton's migration ghost: {uuid, server_uuid}, everything else null.
    let ghost = "6a7e59f5-4ddc-4b39-9b1c-2d5d3e0d9a01";
    cloud.headnode.app.store.put("vms", ghost, json!({"uuid": ghost, "server_uuid": server}), nereid_store::Cond::Absent).await.unwrap();
    // A capped package: in Triton the ghost's null cpu_cap zeroes the server's CPU and fails capness.
    let capped = cloud
        .client
        .post(
            "/packages",
            &json!({"name": "capped", "version": "1.0.0", "max_physical_memory": 1024, "quota": 10240, "cpu_cap": 100, "brand": "bhyve"}),
        )
        .await
        .unwrap();
    let mut body = seed.vm_body("capped-1");
    body["billing_id"] = capped["uuid"].clone();
    let r = cloud.client.post("/vms", &body).await.unwrap();
    assert_eq!(r["placement"]["server_uuid"], server.as_str());
    let warnings = r["placement"]["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1, "{r}");
    let w = warnings[0].as_str().unwrap();
    assert!(w.contains(ghost) && w.contains("no owner_uuid, no RAM, no cpu_cap") && w.contains("sync=true"), "{w}");
    let j = cloud.wait_job(r["job_uuid"].as_str().unwrap()).await.unwrap();
    assert_eq!(j["execution"], "succeeded", "{j}");
    assert!(j["chain_results"][0]["result"].as_str().unwrap().contains("1 warning(s)"), "{j}");
    // The ghost shows in listings like any active record, with its gaps filled.
    let g = cloud.client.get(&format!("/vms/{ghost}")).await.unwrap();
    assert_eq!((g["state"].clone(), g["customer_metadata"].clone()), (Value::Null, json!({})));
    // sync asks the server, which does not have it: the ghost is marked destroyed.
    let g = cloud.client.get(&format!("/vms/{ghost}?sync=true")).await.unwrap();
    assert_eq!(g["state"], "destroyed");
    let mut body = seed.vm_body("after");
    body["billing_id"] = capped["uuid"].clone();
    let r = cloud.client.post("/vms", &body).await.unwrap();
    assert_eq!(r["placement"]["warnings"], json!([]), "the repaired record no longer warns");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_silent_server_turns_unknown_is_skipped_and_keeps_its_vms() {
    let mut o = Options::new(Backend::Sqlite);
    o.sim_servers = 1;
    o.heartbeat = Duration::from_millis(200);
    o.app.server_timeout = Duration::from_millis(1500);
    let cloud = Cloud::start_with(o).await.unwrap();
    let seed = cloud.seed().await.unwrap();
    let (uuid, job) = cloud.create_vm(&seed.vm_body("quiet")).await.unwrap();
    assert_eq!(cloud.wait_job(&job).await.unwrap()["execution"], "succeeded");
    let server = cloud.client.get("/servers").await.unwrap()[0]["uuid"].as_str().unwrap().to_string();
    cloud.agent.as_ref().unwrap().pause_heartbeats(true);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let s = cloud.client.get(&format!("/servers/{server}")).await.unwrap();
    assert_eq!(s["status"], "unknown", "{s}");
    assert!(s["last_heartbeat"].is_string());
    assert!(s["status_reason"].as_str().unwrap().starts_with("no heartbeat for"), "{s}");
    let e = cloud.client.post("/vms", &seed.vm_body("nowhere")).await.unwrap_err();
    let nereid_client::Error::Api { code, errors, .. } = &e else { panic!("{e}") };
    assert_eq!(code, "NoAllocatableServersError");
    assert_eq!(errors[0].code, "running");
    assert!(errors[0].message.contains("server status is unknown: no heartbeat for"), "{errors:?}");
    // Silence is not death: the VM is still running as far as its record goes.
    assert_eq!(vm(&cloud, &uuid).await["state"], "running");
    cloud.agent.as_ref().unwrap().pause_heartbeats(false);
    cloud.wait_servers(1).await.unwrap();
    assert_eq!(cloud.client.get(&format!("/servers/{server}")).await.unwrap()["status"], "running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_servers_heartbeat_temperatures_show_on_the_server_and_simulated_ones_report_none() {
    let mut o = Options::new(Backend::Sqlite);
    o.sim_servers = 2;
    o.heartbeat = Duration::from_millis(200);
    let cloud = Cloud::start_with(o).await.unwrap();
    let agent = cloud.agent.as_ref().unwrap();
    let (hot, cold) = (agent.nodes[0].uuid, agent.nodes[1].uuid);
    assert_eq!(cloud.client.get(&format!("/servers/{hot}")).await.unwrap()["temperatures"], json!([]), "a simulated server has no sensors");

    let dir = tempfile::tempdir().unwrap();
    let chip = dir.path().join("hwmon1");
    std::fs::create_dir_all(&chip).unwrap();
    std::fs::write(chip.join("name"), "coretemp\n").unwrap();
    std::fs::write(chip.join("temp1_input"), "45000\n").unwrap();
    std::fs::write(chip.join("temp1_label"), "Package id 0\n").unwrap();
    agent.nodes[0].set_hwmon(Some(dir.path().to_path_buf()));
    let end = std::time::Instant::now() + Duration::from_secs(30);
    let s = loop {
        let s = cloud.client.get(&format!("/servers/{hot}")).await.unwrap();
        if s["temperatures"].as_array().is_some_and(|t| !t.is_empty()) {
            break s;
        }
        assert!(std::time::Instant::now() < end, "the readings never reached the server: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let t = &s["temperatures"][0];
    assert_eq!((&t["sensor"], &t["label"], &t["celsius"]), (&json!("coretemp"), &json!("Package id 0"), &json!(45.0)), "{s}");
    assert_eq!(t["at"], s["last_heartbeat"], "read with the heartbeat that carried them");
    assert_eq!(s["temperatures"].as_array().unwrap().len(), 1);
    // The list shows them too; the other server still reports none.
    let all = cloud.client.get("/servers").await.unwrap();
    let listed =
        |u: uuid::Uuid| all.as_array().unwrap().iter().find(|x| x["uuid"] == json!(u.to_string())).unwrap()["temperatures"].clone();
    assert_eq!(listed(hot)[0]["label"], "Package id 0");
    assert_eq!(listed(cold), json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn simulated_faults_fail_jobs_cleanly() {
    let mut o = Options::new(Backend::Sqlite);
    o.sim_servers = 1;
    o.app.provision_deadline = Duration::from_secs(2);
    let cloud = Cloud::start_with(o).await.unwrap();
    let seed = cloud.seed().await.unwrap();
    for (fault, why) in [
        ("fail-create", "simulated failure creating the VM"),
        ("hang-create", "did not finish within its deadline"),
        ("fail-start", "simulated failure starting"),
    ] {
        let mut body = seed.vm_body(fault);
        body["internal_metadata"] = json!({"nereid:sim_fault": fault});
        let (uuid, job) = cloud.create_vm(&body).await.unwrap();
        let j = cloud.wait_job(&job).await.unwrap();
        assert_eq!(j["execution"], "failed", "{j}");
        assert!(j["error"].as_str().unwrap().contains(why), "{fault}: {j}");
        let undone: Vec<&str> = j["onerror_results"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
        assert_eq!(undone.last(), Some(&"undo reserve"), "{j}");
        let v = vm(&cloud, &uuid).await;
        assert_eq!(v["state"], "failed");
        assert!(v["error"].as_str().unwrap().contains(why), "{v}");
        assert!(agent_view(&cloud, &v).await.is_none(), "{fault}: the server must not keep the VM");
        assert_eq!(cloud.client.get(&format!("/nics?belongs_to_uuid={uuid}")).await.unwrap(), json!([]));
    }
    assert_eq!(cloud.headnode.app.store.count("reservations", &nereid_store::Filter::True).await.unwrap(), 0);
    let ips = cloud.client.get(&format!("/networks/{}/ips", seed.network)).await.unwrap();
    assert!(ips.as_array().unwrap().iter().all(|ip| ip["free"] == true || ip["reserved"] == true), "{ips}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn put_vm_is_a_checked_patch() {
    let cloud = sim(Backend::Sqlite, 1).await;
    let seed = cloud.seed().await.unwrap();
    let (uuid, job) = cloud.create_vm(&seed.vm_body("repair")).await.unwrap();
    cloud.wait_job(&job).await.unwrap();
    let resp = cloud.client.request(reqwest::Method::GET, &format!("/vms/{uuid}")).send().await.unwrap();
    let etag = resp.headers()["etag"].to_str().unwrap().to_string();
    let put = |tag: Option<String>, body: Value| {
        let mut req = cloud.client.request(reqwest::Method::PUT, &format!("/vms/{uuid}")).json(&body);
        if let Some(t) = tag {
            req = req.header("if-match", t);
        }
        cloud.client.send(req)
    };
    api_err(put(None, json!({"alias": "x"})).await, 428, "PreconditionRequired");
    let body = api_err(put(Some(etag.clone()), json!({"owner_uuid": null, "ram": null})).await, 409, "ValidationFailed");
    assert_eq!(body["errors"].as_array().unwrap().len(), 2);
    let fixed = put(Some(etag.clone()), json!({"alias": "fixed", "tags": {"repaired": true}})).await.unwrap();
    assert_eq!(
        (fixed["alias"].as_str(), fixed["owner_uuid"].as_str(), fixed["ram"].as_u64()),
        (Some("fixed"), Some(seed.owner.as_str()), Some(1024)),
        "a patch keeps the rest"
    );
    // The old ETag is stale now.
    api_err(put(Some(etag), json!({"alias": "again"})).await, 412, "PreconditionFailed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cnapi_servers_and_server_update() {
    let cloud = sim(Backend::Sqlite, 2).await;
    let seed = cloud.seed().await.unwrap();
    let servers = cloud.client.get("/servers?extras=sysinfo").await.unwrap();
    let s0 = &servers[0];
    for k in
        ["UUID", "Hostname", "CPU Total Cores", "MiB of Memory", "Network Interfaces", "Boot Time", "Serial Number", "Zpool Size in GiB"]
    {
        assert!(s0["sysinfo"].get(k).is_some(), "sysinfo lacks {k}: {}", s0["sysinfo"]);
    }
    assert_eq!((s0["status"].as_str(), s0["setup"].as_bool(), s0["system_type"].as_str()), (Some("running"), Some(true), Some("Linux")));
    let (a, b) = (s0["uuid"].as_str().unwrap().to_string(), servers[1]["uuid"].as_str().unwrap().to_string());
    // ServerUpdate persists what Triton drops, and placement obeys it.
    cloud
        .client
        .post(&format!("/servers/{a}"), &json!({"reserved": true, "overprovision_ratios": {"ram": 2.0}, "traits": {}}))
        .await
        .unwrap();
    let got = cloud.client.get(&format!("/servers/{a}")).await.unwrap();
    assert_eq!(
        (got["reserved"].as_bool(), got["overprovision_ratios"]["ram"].as_f64(), got["overprovision_ratios"]["cpu"].as_f64()),
        (Some(true), Some(2.0), Some(4.0))
    );
    for i in 0..3 {
        let r = cloud.client.post("/vms", &seed.vm_body(&format!("r{i}"))).await.unwrap();
        assert_eq!(r["placement"]["server_uuid"], b.as_str(), "reserved servers are skipped");
        let rejected = r["placement"]["rejected"].as_array().unwrap();
        assert!(rejected.iter().any(|x| x["server"] == a.as_str() && x["step"] == "reserved"), "{r}");
    }
    let e = cloud.client.post(&format!("/servers/{a}"), &json!({"hostname": "x"})).await.unwrap_err();
    assert_eq!(e.status(), Some(422));
    // A server's reported VMs, and one VM as the server sees it.
    let vms = cloud.client.get(&format!("/servers/{b}/vms")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let vms2 = cloud.client.get(&format!("/servers/{b}/vms")).await.unwrap();
    assert!(vms2.as_array().unwrap().len() >= vms.as_array().unwrap().len());
    // A server with VMs cannot be forgotten.
    api_err(cloud.client.delete(&format!("/servers/{b}")).await, 409, "ServerInUse");
    // The operator API refuses a wrong token, and serves none of the agents' endpoints
    // (they are on the agent listener, mutual TLS only).
    let e = cloud.client_with_token("nope").get("/servers").await.unwrap_err();
    assert_eq!(e.status(), Some(401));
    let e = cloud
        .client_with_token("nope")
        .post(&format!("/servers/{b}/events/heartbeat"), &json!({"usage": {}, "vms": []}))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(401));
    let e = cloud.client.post("/servers/join", &json!({"sysinfo": {}, "agent_url": "http://x"})).await.unwrap_err();
    // (`/servers/join` reads as ServerUpdate of a server named "join" there.)
    assert_eq!(e.status(), Some(422), "joins are not served on the operator API: {e}");
    let e = cloud.client.post(&format!("/servers/{b}/events/heartbeat"), &json!({"usage": {}, "vms": []})).await.unwrap_err();
    assert_eq!(e.status(), Some(404), "heartbeats are not served on the operator API: {e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_in_prometheus_format() {
    let cloud = sim(Backend::Sqlite, 1).await;
    let seed = cloud.seed().await.unwrap();
    let (_, job) = cloud.create_vm(&seed.vm_body("m")).await.unwrap();
    cloud.wait_job(&job).await.unwrap();
    let text = cloud.client.request(reqwest::Method::GET, "/metrics").send().await.unwrap().text().await.unwrap();
    for needle in [
        "nereid_http_requests_total{method=\"POST\",route=\"/vms\",status=\"202\"} 1",
        "nereid_http_request_duration_seconds_bucket{route=\"/vms\"",
        "nereid_jobs{execution=\"succeeded\"} 1",
        "nereid_servers{status=\"running\"} 1",
        "nereid_vms{state=\"running\"} 1",
        "nereid_allocation_duration_seconds_count 1",
        "nereid_job_events_total{task=\"provision\",event=\"succeeded\"} 1",
    ] {
        assert!(text.contains(needle), "missing {needle} in:\n{text}");
    }
    // The agent's metrics: host, VMs, temperatures (where the host has sensors).
    let agent = cloud.agent.as_ref().unwrap();
    let node = &agent.nodes[0];
    // Over mutual TLS, as the headnode calls agents.
    let http = cloud.headnode.app.agents.client(node.uuid, &agent.credentials.key().pin()).unwrap();
    let resp = http.get(format!("https://{}/metrics", agent.addr)).send().await.unwrap();
    let t = resp.text().await.unwrap();
    assert!(
        t.contains("nereid_host_memory_bytes{kind=\"total\"}")
            && t.contains(&format!("nereid_vms{{server=\"{}\",state=\"running\"}} 1", node.uuid)),
        "{t}"
    );
    assert!(t.contains("# TYPE nereid_hardware_temperature_celsius gauge"));
    let plain = reqwest::Client::new().get(format!("http://{}/metrics", agent.addr)).send().await;
    assert!(plain.is_err(), "the agent API speaks TLS only: {plain:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn create_vm_refuses_what_cannot_work_and_lists_filter() {
    let cloud = sim(Backend::Sqlite, 1).await;
    let seed = cloud.seed().await.unwrap();
    // A package quota smaller than the image: Triton accepts it and fails much later.
    let big = cloud
        .client
        .post("/images", &json!({"owner": "00000000-0000-0000-0000-000000000000", "name": "big", "version": "1", "type": "zvol", "os": "linux", "public": true, "nic_driver": "virtio", "disk_driver": "virtio", "cpu_type": "host", "image_size": 20480}))
        .await
        .unwrap()["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    cloud
        .client
        .send(cloud.client.request(reqwest::Method::PUT, &format!("/images/{big}/file?compression=none")).body(vec![1u8; 64]))
        .await
        .unwrap();
    cloud.client.post(&format!("/images/{big}?action=activate"), &json!({})).await.unwrap();
    let mut body = seed.vm_body("too-small");
    body["image_uuid"] = json!(big);
    let e = api_err(cloud.client.post("/vms", &body).await, 409, "ValidationFailed");
    let msg = e["errors"][0]["message"].as_str().unwrap();
    assert_eq!((e["errors"][0]["field"].as_str(), e["errors"][0]["code"].as_str()), (Some("quota"), Some("InsufficientCapacity")));
    assert!(msg.contains("needs image_size 20480 MiB") && msg.contains("at least 20480 MiB"), "{msg}");
    // Other brands, unknown packages, bad networks: refused, nothing written.
    let mut b = seed.vm_body("x");
    b["brand"] = json!("joyent");
    api_err(cloud.client.post("/vms", &b).await, 409, "BrandNotSupported");
    let mut b = seed.vm_body("x");
    b["billing_id"] = json!("11111111-1111-4111-8111-111111111111");
    assert_eq!(api_err(cloud.client.post("/vms", &b).await, 409, "ValidationFailed")["errors"][0]["field"], "billing_id");
    let mut b = seed.vm_body("x");
    b["networks"] = json!([{"name": "nope"}]);
    assert!(
        api_err(cloud.client.post("/vms", &b).await, 409, "ValidationFailed")["message"]
            .as_str()
            .unwrap()
            .contains("no network or pool is named")
    );
    let mut b = seed.vm_body("x");
    b["ram"] = json!(32);
    api_err(cloud.client.post("/vms", &b).await, 409, "ValidationFailed");
    assert_eq!(cloud.client.get("/vms").await.unwrap(), json!([]));
    // Listing filters.
    for (alias, tag) in [("web-1", "web"), ("web-2", "web"), ("db-1", "db")] {
        let mut b = seed.vm_body(alias);
        b["tags"] = json!({"role": tag});
        let (_, job) = cloud.create_vm(&b).await.unwrap();
        cloud.wait_job(&job).await.unwrap();
    }
    let aliases = |v: Value| {
        let mut a: Vec<String> = v.as_array().unwrap().iter().map(|x| x["alias"].as_str().unwrap().to_string()).collect();
        a.sort();
        a
    };
    assert_eq!(aliases(cloud.client.get("/vms?tag.role=web").await.unwrap()), ["web-1", "web-2"]);
    assert_eq!(aliases(cloud.client.get("/vms?alias=db").await.unwrap()), ["db-1"]);
    assert_eq!(aliases(cloud.client.get(&format!("/vms?owner_uuid={}&state=running", seed.owner)).await.unwrap()).len(), 3);
    let resp = cloud.client.request(reqwest::Method::GET, "/vms?limit=2").send().await.unwrap();
    assert_eq!(resp.headers()["x-joyent-resource-count"], "3");
    assert_eq!(resp.json::<Value>().await.unwrap().as_array().unwrap().len(), 2);
    let jobs = cloud.client.get("/jobs?task=provision&execution=succeeded").await.unwrap();
    assert_eq!(jobs.as_array().unwrap().len(), 3);
    api_err(cloud.client.get("/vms?state=sleeping").await, 409, "ValidationFailed");
}

#[test]
fn nereid_up_starts_a_cloud_and_says_how_to_provision() {
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut up = Command::new(env!("CARGO_BIN_EXE_nereid"))
        .args(["up", "--data-dir", data.to_str().unwrap(), "--admin-listen", "127.0.0.1:0", "--sim-servers", "2", "--sim-create-ms", "20"])
        .args(["--cloudapi-listen", "127.0.0.1:0"])
        .env("HOME", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (text, create) = common::up_banner(up.stdout.take().unwrap());
    assert!(text.contains("servers       2 simulated"), "{text}");
    assert!(text.contains("packages sample-512M, sample-1G, sample-2G, sample-4G"), "{text}");
    // Run the printed command as a user would (the shell quoting included).
    let cmd = create.expect("a vm create example").replacen("nereid", env!("CARGO_BIN_EXE_nereid"), 1);
    let out = Command::new("sh").arg("-c").arg(&cmd).env_remove("NEREID_URL").env_remove("NEREID_TOKEN").output().unwrap();
    let _ = up.kill();
    let _ = up.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{cmd}\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("(provision) succeeded"), "{stdout}");
    assert!(stdout.contains("wait           VM is running"), "{stdout}");
}
