//! The capacity race at scale (issue 16): 1,000 simulated servers with room for exactly
//! one VM of the package each, and half as many more CreateVm requests than room racing
//! for it, many in flight. Exactly `room` win; every other gets the 409
//! NoAllocatableServersError naming every server and why; no server holds more than its
//! capacity, by its VM records or by what it reports; nothing stays reserved.
//! `vms.rs` has the same race on three servers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use nereid_testkit::Options;
use serde_json::Value;

const SERVERS: usize = 1000;
/// 2048 MiB less the default 15% reservation leaves 1740 MiB: one 1 GiB VM, not two.
const SERVER_RAM_MIB: u64 = 2048;
const VM_RAM_MIB: u64 = 1024;
const ROOM: usize = SERVERS;
const REQUESTS: usize = ROOM * 3 / 2;
const IN_FLIGHT: usize = 96;

both_backends!(fifteen_hundred_provisions_race_for_room_for_a_thousand_on_a_thousand_servers);

/// A cloud of `SERVERS` simulated servers that heartbeat as a real agent does (5 s).
/// Servers count as silent only after two minutes: on a shared 2-core machine the race
/// delays heartbeats past the product's 11 s, and this test is about capacity, not
/// liveness (a silent server would be refused for `running`, not `ram`).
/// Both headnodes' configuration: servers are judged silent only after 120 s.
fn race_config() -> nereid_headnode::app::AppConfig {
    nereid_headnode::app::AppConfig { server_timeout: Duration::from_secs(120), ..Default::default() }
}

async fn thousand_servers(b: Backend) -> Cloud {
    let o = Options { sim_ram_mib: SERVER_RAM_MIB, heartbeat: Duration::from_secs(5), app: race_config(), ..Options::new(b) };
    let mut cloud = Cloud::start_with(o.clone()).await.unwrap();
    cloud.agent = Some(cloud.start_agent(&Options { sim_servers: SERVERS, ..o }).await.unwrap());
    let end = Instant::now() + Duration::from_secs(120);
    loop {
        let list = servers(&cloud).await;
        if list.iter().filter(|s| s["status"] == "running").count() == SERVERS {
            return cloud;
        }
        assert!(Instant::now() < end, "only {} of {SERVERS} servers running", list.len());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn servers(cloud: &Cloud) -> Vec<Value> {
    cloud.client.get(&format!("/servers?limit={SERVERS}&extras=vms")).await.unwrap().as_array().cloned().unwrap()
}

/// Every VM record, a page of 1,000 at a time.
async fn all_vms(cloud: &Cloud) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        let page = cloud.client.get(&format!("/vms?limit=1000&offset={}", out.len())).await.unwrap();
        let page = page.as_array().unwrap();
        out.extend(page.iter().cloned());
        if page.len() < 1000 {
            return out;
        }
    }
}

async fn fifteen_hundred_provisions_race_for_room_for_a_thousand_on_a_thousand_servers(b: Backend) {
    let cloud = thousand_servers(b).await;
    let seed = cloud.seed().await.unwrap();
    let ids: HashSet<String> = servers(&cloud).await.iter().map(|s| s["uuid"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids.len(), SERVERS);
    // On PostgreSQL a second headnode on the same database takes half of the requests, so
    // the store's conditional claims (not one process's lock) must prevent over-commit.
    // It judges liveness as the first does (servers count as silent only after 120 s: a
    // thousand agents' heartbeats run late on a loaded 2-core machine, and this test is
    // about claims, not liveness).
    let second = if b == Backend::Postgres {
        let o = Options { store_url: Some(cloud.store_url.clone()), app: race_config(), ..Options::new(b) };
        Some(Cloud::start_with(o).await.unwrap())
    } else {
        None
    };
    let sem = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let mut tasks = Vec::new();
    for i in 0..REQUESTS {
        let c = match &second {
            Some(s) if i % 2 == 1 => s.client.clone(),
            _ => cloud.client.clone(),
        };
        let body = seed.vm_body(&format!("race-{i}"));
        let sem = sem.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await.unwrap();
            c.post("/vms", &body).await
        }));
    }
    let (mut jobs, mut refused) = (Vec::new(), Vec::new());
    for t in tasks {
        match t.await.unwrap() {
            Ok(r) => jobs.push(r["job_uuid"].as_str().unwrap().to_string()),
            Err(e) => refused.push(e),
        }
    }
    assert_eq!((jobs.len(), refused.len()), (ROOM, REQUESTS - ROOM));
    for e in &refused {
        let nereid_client::Error::Api { status, code, errors, message, .. } = e else { panic!("{e}") };
        assert_eq!((*status, code.as_str()), (409, "NoAllocatableServersError"), "{message}");
        assert!(message.starts_with("No compute resources available: "), "{}", &message[..message.len().min(300)]);
        // Every server is named, once, with the step that rejected it and why.
        assert_eq!(errors.len(), SERVERS);
        let named: HashSet<&str> = errors.iter().map(|fe| fe.field.as_str()).collect();
        assert_eq!(named.len(), SERVERS);
        for fe in errors {
            assert!(ids.contains(&fe.field), "{fe:?}");
            assert_eq!(fe.code, "ram", "{fe:?}");
            assert!(fe.message.contains(&format!("not enough RAM: needs {VM_RAM_MIB} MiB")), "{fe:?}");
        }
    }
    for j in &jobs {
        let job = cloud.wait_job(j).await.unwrap();
        assert_eq!(job["execution"], "succeeded", "{job}");
    }

    // No server over-committed, by the VM records: exactly one VM each.
    let vms = all_vms(&cloud).await;
    assert_eq!(vms.len(), ROOM, "nothing is written for a refused request");
    let mut by_records: HashMap<String, Vec<u64>> = HashMap::new();
    for v in &vms {
        assert_eq!(v["state"], "running", "{v}");
        by_records.entry(v["server_uuid"].as_str().unwrap().to_string()).or_default().push(v["ram"].as_u64().unwrap());
    }
    // And by what each server reports (its next heartbeat carries the last VM).
    let end = Instant::now() + Duration::from_secs(30);
    let list = loop {
        let list = servers(&cloud).await;
        let reported: usize = list.iter().map(|s| s["vms"].as_object().map_or(0, |m| m.len())).sum();
        if reported == ROOM || Instant::now() > end {
            break list;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    for s in &list {
        let id = s["uuid"].as_str().unwrap();
        let capacity = s["memory_total_bytes"].as_u64().unwrap() as f64 / 1048576.0 * (1.0 - s["reservation_ratio"].as_f64().unwrap());
        let recorded: u64 = by_records.get(id).map_or(0, |r| r.iter().sum());
        let inventory = s["vms"].as_object().unwrap();
        let reported: u64 = inventory.values().map(|v| v["ram"].as_u64().unwrap_or(0)).sum();
        assert!(
            recorded as f64 <= capacity && reported as f64 <= capacity,
            "server {id} over-committed: records {recorded} MiB, reports {reported} MiB, capacity {capacity:.0} MiB"
        );
        assert_eq!((by_records.get(id).map_or(0, Vec::len), inventory.len()), (1, 1), "server {id}: one VM of room, one VM placed");
    }
    assert_eq!(cloud.headnode.app.store.count("jobs", &nereid_store::Filter::eq("task", "provision")).await.unwrap(), ROOM as i64);
    assert_eq!(cloud.headnode.app.store.count("reservations", &nereid_store::Filter::True).await.unwrap(), 0);
}
