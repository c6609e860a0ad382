//! Acknowledged writes survive a SIGKILL of the headnode process, on both stores.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use nereid_client::{Client, Target};
use serde_json::json;

both_backends!(acknowledged_writes_survive_sigkill);

fn spawn_headnode(data_dir: &Path, store: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_nereid"))
        .args(["headnode", "--data-dir", data_dir.to_str().unwrap(), "--store", store, "--admin-listen", "127.0.0.1:0"])
        .args(["--cloudapi-listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting nereid headnode")
}

/// Waits for the child's own endpoints.json (its pid), then returns a client for it.
async fn client_for(child: &Child, data_dir: &Path) -> Client {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(data_dir.join("endpoints.json")) {
            let ep: serde_json::Value = serde_json::from_str(&text).unwrap();
            if ep["pid"] == child.id() {
                let t = Target::from_data_dir(data_dir).unwrap();
                let c = Client::new(t);
                if c.get("/ping").await.is_ok() {
                    return c;
                }
            }
        }
        assert!(Instant::now() < deadline, "headnode did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn acknowledged_writes_survive_sigkill(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let store = b.fresh_url(dir.path()).await.unwrap();
    let mut child = spawn_headnode(&data_dir, &store);
    let c = client_for(&child, &data_dir).await;
    // Writes acknowledged one after another, then a burst of concurrent ones; the process
    // is killed while more are in flight.
    let mut acked = Vec::new();
    for i in 0..40 {
        acked.push(c.post("/packages", &package(&format!("p{i}"))).await.unwrap()["uuid"].as_str().unwrap().to_string());
    }
    let mut tasks = Vec::new();
    for i in 0..60 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move { c.post("/packages", &package(&format!("q{i}"))).await }));
    }
    for t in tasks.drain(..30) {
        acked.push(t.await.unwrap().unwrap()["uuid"].as_str().unwrap().to_string());
    }
    child.kill().unwrap();
    child.wait().unwrap();
    for t in tasks {
        if let Ok(Ok(p)) = t.await {
            acked.push(p["uuid"].as_str().unwrap().to_string());
        }
    }
    let updated = acked[0].clone();
    // Restart on the same data directory and store: everything acknowledged is there.
    let mut child = spawn_headnode(&data_dir, &store);
    let c = client_for(&child, &data_dir).await;
    for id in &acked {
        c.get(&format!("/packages/{id}")).await.unwrap_or_else(|e| panic!("acknowledged package {id} lost: {e}"));
    }
    // The restarted headnode keeps the token and takes writes again.
    c.put(&format!("/packages/{updated}"), &json!({"active": false})).await.unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let mut child = spawn_headnode(&data_dir, &store);
    let c = client_for(&child, &data_dir).await;
    assert_eq!(c.get(&format!("/packages/{updated}")).await.unwrap()["active"], false);
    child.kill().unwrap();
    child.wait().unwrap();
    println!("{} acknowledged writes survived", acked.len());
}
