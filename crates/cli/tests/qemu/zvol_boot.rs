//! Issue 14, item 4, on real guests: Triton-style zvol images — `zfs send` streams made by
//! real OpenZFS (scripts/zfs-fixtures), a full one (gzip) and an incremental one on top of
//! it (gzip) — imported through AdminImportImage + AddImageFile, converted on import, and
//! each provisioned and booted under QEMU. The zvol's boot sector prints its sector 1 on
//! the serial console, which the two snapshots wrote differently, so each guest says which
//! disk it booted from.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{BOOT, Env};

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../diskimage/tests/fixtures/zfs").join(name)).unwrap()
}

fn sha1_hex(data: &[u8]) -> String {
    use sha1::Digest;
    hex::encode(sha1::Sha1::digest(data))
}

/// AdminImportImage of a Triton HVM manifest, AddImageFile of the stream, ActivateImage.
async fn import(env: &Env, uuid: &str, origin: Option<&str>, stream: Vec<u8>) -> Value {
    let mut m = json!({"v": 2, "uuid": uuid, "owner": "00000000-0000-0000-0000-000000000000", "name": "zvol-boot",
        "version": if origin.is_some() { "b" } else { "a" }, "state": "active", "disabled": false, "public": true,
        "published_at": "2026-01-02T03:04:05.000Z", "type": "zvol", "os": "other", "nic_driver": "virtio",
        "disk_driver": "virtio", "cpu_type": "host", "image_size": 4,
        "files": [{"sha1": sha1_hex(&stream), "size": stream.len(), "compression": "gzip"}]});
    if let Some(o) = origin {
        m["origin"] = json!(o);
    }
    let c = &env.cloud.client;
    c.post(&format!("/images/{uuid}?action=import"), &m).await.unwrap();
    let sha1 = sha1_hex(&stream);
    c.send(c.request(reqwest::Method::PUT, &format!("/images/{uuid}/file?compression=gzip&sha1={sha1}")).body(stream)).await.unwrap();
    c.post(&format!("/images/{uuid}?action=activate"), &json!({})).await.unwrap()
}

/// Waits for `line` on the VM's serial console.
async fn wait_console(env: &Env, vm: &str, line: &str) -> String {
    let start = Instant::now();
    loop {
        let log = env.console(vm);
        if log.contains(line) {
            return log;
        }
        assert!(
            start.elapsed() < BOOT,
            "no {line:?} on {vm}'s console after {} s:\n{log}\nagent log: {}",
            BOOT.as_secs(),
            std::fs::read_to_string(env.agent_log()).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn zvol_images_from_zfs_send_streams_boot() {
    let env = Env::new(&[], None).await;
    let full = "8b4d1c63-4f1f-4b68-ae4f-3b5f8d2cae01";
    let incr = "8b4d1c63-4f1f-4b68-ae4f-3b5f8d2cae02";
    let a = import(&env, full, None, fixture("full.zfs.gz")).await;
    assert_eq!((a["state"].as_str(), a["files"][0]["compression"].as_str()), (Some("active"), Some("none")), "{a}");
    let b = import(&env, incr, Some(full), fixture("incr.zfs.gz")).await;
    assert_eq!((b["state"].as_str(), b["origin"].as_str()), (Some("active"), Some(full)), "{b}");

    let (vm_a, j) = env.create(json!({"alias": "zvol-a", "image_uuid": full})).await;
    assert_eq!(j["execution"], "succeeded", "{j}");
    let (vm_b, j) = env.create(json!({"alias": "zvol-b", "image_uuid": incr})).await;
    assert_eq!(j["execution"], "succeeded", "{j}");

    let log = wait_console(&env, &vm_a, "nereid-zvol: snapshot a").await;
    assert!(!log.contains("snapshot b"), "{log}");
    let log = wait_console(&env, &vm_b, "nereid-zvol: snapshot b").await;
    assert!(!log.contains("snapshot a"), "the incremental's disk is @b, not its origin's @a: {log}");
    assert_eq!(env.vm(&vm_a).await["state"], "running");
    assert_eq!(env.vm(&vm_b).await["state"], "running");
}
