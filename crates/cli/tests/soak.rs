//! Soak: 1,000 provision / resize / destroy cycles on simulated servers with failures
//! injected at random (create failing or hanging past its deadline, start failing, stop
//! failing, guests crashing) and the headnode restarted three times under them (its jobs
//! stopped where they stood, as in a crash), eight at a time; then the invariants every
//! operator relies on: no capacity held without a job in flight, no address on two NICs,
//! no job left running, no VM on a server without a live record, and `doctor` clean.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use common::*;
use nereid_agent::backend::sim::Delays;
use nereid_client::Client;
use nereid_testkit::Options;
use serde_json::{Value, json};

const CYCLES: usize = 1000;
const WORKERS: usize = 8;

/// Deterministic per-worker randomness (a failure reproduces).
fn next(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// A request, retried while the headnode cannot be reached (it is being restarted).
async fn call<F, Fut>(f: F) -> Result<Value, nereid_client::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Value, nereid_client::Error>>,
{
    call_retried(f).await.0
}

/// [`call`], and whether it had to send again: a headnode restarting under the request may
/// have done it and lost only the answer (the client cannot tell a reset before from one after).
async fn call_retried<F, Fut>(mut f: F) -> (Result<Value, nereid_client::Error>, bool)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Value, nereid_client::Error>>,
{
    for i in 0..600 {
        match f().await {
            Err(nereid_client::Error::Connect { .. }) => tokio::time::sleep(Duration::from_millis(100)).await,
            other => return (other, i > 0),
        }
    }
    (f().await, true)
}

/// The job's outcome, or `refused <code>` when the API refused the request.
async fn run_job(c: &Client, r: Result<Value, nereid_client::Error>) -> Option<String> {
    let r = match r {
        Ok(r) => r,
        Err(e) => return Some(format!("refused {}", e.code().unwrap_or("(no code)"))),
    };
    let job = r["job_uuid"].as_str()?.to_string();
    loop {
        let path = format!("/jobs/{job}/wait?timeout=2");
        let j = call(|| c.get(&path)).await.unwrap();
        if matches!(j["execution"].as_str(), Some("succeeded" | "failed")) {
            return j["execution"].as_str().map(str::to_string);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_cycles_with_injected_failures_leave_no_drift() {
    let mut o = Options::new(Backend::Sqlite);
    o.sim_servers = 4;
    o.sim_ram_mib = 64 * 1024;
    o.sim_delays = Delays {
        create: Duration::from_millis(5),
        start: Duration::from_millis(2),
        stop: Duration::from_millis(2),
        crash_after: Duration::from_millis(50),
    };
    o.app.provision_deadline = Duration::from_secs(1);
    o.app.step_deadline = Duration::from_secs(2);
    let mut cloud = Cloud::start_with(o).await.unwrap();
    let seed = cloud.seed_sized(256, 1024).await.unwrap();
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let (c, seed) = (cloud.client.clone(), seed.clone());
        tasks.push(tokio::spawn(async move {
            let c = &c;
            let mut rng = 0x2545_f491_4f6c_dd1d_u64 ^ (w as u64 + 1).wrapping_mul(0x9e37_79b9);
            let mut seen: BTreeMap<String, usize> = BTreeMap::new();
            for i in 0..CYCLES / WORKERS {
                let mut body = seed.vm_body(&format!("soak-{w}-{i}"));
                let fault = match next(&mut rng) % 20 {
                    0 => Some("fail-create"),
                    1 => Some("hang-create"),
                    2 => Some("fail-start"),
                    3 => Some("fail-stop"),
                    4 => Some("crash"),
                    _ => None,
                };
                if let Some(f) = fault {
                    body["internal_metadata"] = json!({"nereid:sim_fault": f});
                }
                let r = call(|| c.post("/vms", &body)).await;
                let vm = r.as_ref().ok().and_then(|v| v["vm_uuid"].as_str()).map(str::to_string);
                let outcome = run_job(c, r).await.unwrap_or_else(|| "refused".into());
                *seen.entry(format!("provision {outcome}")).or_default() += 1;
                let Some(vm) = vm else { continue };
                if outcome == "succeeded" && next(&mut rng).is_multiple_of(2) {
                    let ram = if next(&mut rng).is_multiple_of(2) { 512 } else { 384 };
                    let (path, body) = (format!("/vms/{vm}?action=update"), json!({"ram": ram}));
                    let r = call(|| c.post(&path, &body)).await;
                    let o = run_job(c, r).await.unwrap_or_else(|| "refused".into());
                    *seen.entry(format!("resize {o}")).or_default() += 1;
                }
                // A client retries what the API says to retry (503, a lost race).
                let mut o = String::new();
                for _ in 0..5 {
                    let path = format!("/vms/{vm}");
                    let (r, retried) = call_retried(|| c.delete(&path)).await;
                    o = run_job(c, r).await.unwrap_or_else(|| "refused".into());
                    if retried && o == "refused VmDestroyed" {
                        // The first DELETE was done; a restart lost its answer.
                        *seen.entry("destroy done, its answer lost in a restart".into()).or_default() += 1;
                        o = "succeeded".into();
                    }
                    if o != "refused ServiceUnavailable" && o != "refused ConcurrentModification" {
                        break;
                    }
                    *seen.entry(format!("destroy retried after {o}")).or_default() += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                *seen.entry(format!("destroy {o}")).or_default() += 1;
            }
            seen
        }));
    }
    // Three headnode restarts while the cycles run.
    let mut restarts = 0;
    while restarts < 3 && !tasks.iter().all(|t| t.is_finished()) {
        tokio::time::sleep(Duration::from_secs(15)).await;
        cloud.restart_headnode().await.unwrap();
        restarts += 1;
    }
    assert_eq!(restarts, 3, "the headnode was restarted under load");
    let mut totals: BTreeMap<String, usize> = BTreeMap::new();
    for t in tasks {
        for (k, n) in t.await.unwrap() {
            *totals.entry(k).or_default() += n;
        }
    }
    eprintln!("soak outcomes: {totals:?}");
    assert_eq!(totals.iter().filter(|(k, _)| k.starts_with("provision")).map(|(_, n)| n).sum::<usize>(), CYCLES);
    assert!(totals.get("provision failed").copied().unwrap_or(0) > 0, "failures were injected: {totals:?}");
    assert!(totals.get("provision succeeded").copied().unwrap_or(0) > CYCLES / 2, "{totals:?}");
    // Every VM can be deleted, whatever happened to it.
    assert_eq!(totals.get("destroy succeeded").copied().unwrap_or(0), CYCLES, "{totals:?}");

    // No job left running (past any deadline).
    let open = cloud.client.get("/jobs?execution=running").await.unwrap();
    assert_eq!(open, json!([]), "jobs still running");
    assert_eq!(cloud.client.get("/jobs?execution=queued").await.unwrap(), json!([]));
    // Capacity is held only for jobs in flight: none now.
    assert_eq!(cloud.headnode.app.store.count("reservations", &nereid_store::Filter::True).await.unwrap(), 0);
    // No address on two NICs, and no NIC of a VM that is gone.
    let nics = cloud.client.get("/nics?limit=1000").await.unwrap();
    let mut ips = HashSet::new();
    for n in nics.as_array().unwrap() {
        if let Some(ip) = n["ip"].as_str() {
            assert!(ips.insert(ip.to_string()), "address {ip} on two NICs");
        }
    }
    // No VM on any server without a live record (a server's inventory is at most a
    // heartbeat old: wait for one).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let live: HashSet<String> = cloud
        .client
        .get("/vms?state=active&limit=1000")
        .await
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["uuid"].as_str().map(str::to_string))
        .collect();
    for s in cloud.client.get("/servers").await.unwrap().as_array().unwrap() {
        let server = s["uuid"].as_str().unwrap();
        for v in cloud.client.get(&format!("/servers/{server}/vms")).await.unwrap().as_array().unwrap() {
            let id = v["uuid"].as_str().unwrap();
            assert!(v["state"] == "destroyed" || live.contains(id), "server {server} runs {id} with no live record: {v}");
        }
    }
    let report = cloud.client.get("/doctor").await.unwrap();
    assert_eq!(report["findings"], json!([]), "doctor: {report}");
}
