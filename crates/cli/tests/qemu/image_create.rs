//! Issue 14, item 1, on a real guest: `triton image create -w` of a running QEMU VM
//! booted from the test image. The guest counts its boots in a sector of its disk; the
//! image is made after its first boot, so a new instance from the image boots finding
//! the count the first guest wrote (1), not the test image's (0). The image is active
//! and private to the account; the source VM is started again; another tenant can
//! neither see nor use the image until `triton image share` names them. And an operator's
//! `create_image` with a prepare-image script: the guest runs it as its
//! `sdc:operator-script` and powers off, and the image is the prepared disk.

use nereid_testkit::qemu::values;
use nereid_testkit::triton::KeyType;
use nereid_testkit::{Backend, Options};
use serde_json::json;

use super::{Env, last};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_image_of_a_guest_boots_with_what_the_guest_wrote() {
    let env = Env::with(Options::new(Backend::Sqlite).cloudapi_http(), &[], None).await;
    let (_a, alice) = env.cloud.triton_user("alice", KeyType::Ed25519).await.unwrap();
    let (_b, bob) = env.cloud.triton_user("bob", KeyType::Ed25519).await.unwrap();

    alice.ok_async(&["instance", "create", "-w", "nereid-test@1.0.0", "sample", "--name", "src"]).await;
    let src = alice.json_async(&["instance", "get", "src"]).await["id"].as_str().unwrap().to_string();
    let log = env.wait_boots(&src, 1).await;
    assert_eq!(last(&log, "boots"), "0", "a fresh disk from the test image");

    let out = alice.ok_async(&["image", "create", "-w", "src", "mine", "1.0.0", "-d", "src after one boot"]).await;
    assert!(out.contains("mine"), "{out}");
    let img = alice.json_async(&["image", "get", "mine@1.0.0"]).await;
    let me = alice.json_async(&["account", "get", "-j"]).await;
    assert_eq!((img["state"].as_str(), img["public"].as_bool()), (Some("active"), Some(false)), "{img}");
    assert_eq!(img["owner"], me["id"]);
    assert_eq!(img["origin"], env.image.as_str());
    assert_eq!(img["type"], "zvol");
    assert_eq!(img["files"][0]["compression"], "none", "a compressed qcow2, stored as it came: {img}");
    let id = img["id"].as_str().unwrap().to_string();

    // The source was running: it was stopped for the copy and booted again.
    let log = env.wait_boots(&src, 2).await;
    assert_eq!(values(&log, "boots"), ["0", "1"], "{log}");
    assert_eq!(alice.json_async(&["instance", "get", "src"]).await["state"], "running");

    // A new instance from the image boots and finds what the first guest wrote.
    alice.ok_async(&["instance", "create", "-w", "mine@1.0.0", "sample", "--name", "child"]).await;
    let child = alice.json_async(&["instance", "get", "child"]).await;
    assert_eq!(child["image"], id.as_str());
    let child = child["id"].as_str().unwrap().to_string();
    let log = env.wait_boots(&child, 1).await;
    assert_eq!(last(&log, "uuid"), child, "the guest is the new instance");
    assert_eq!(last(&log, "boots"), "1", "the image carries the count src wrote before it was made");

    // Bob cannot see or use it, until Alice shares it with him.
    let (_, err) = bob.fail_async(&["image", "get", &id]).await;
    assert!(err.contains("ResourceNotFound") || err.contains("not found"), "{err}");
    let (_, err) = bob.fail_async(&["instance", "create", &id, "sample", "--name", "borrowed"]).await;
    assert!(err.contains("ResourceNotFound") || err.contains("not found"), "{err}");
    let bob_id = bob.json_async(&["account", "get", "-j"]).await["id"].as_str().unwrap().to_string();
    alice.ok_async(&["image", "share", "mine@1.0.0", &bob_id]).await;
    assert_eq!(bob.json_async(&["image", "get", &id]).await["id"], id.as_str());
    bob.ok_async(&["instance", "create", "-w", &id, "sample", "--name", "borrowed"]).await;
    assert_eq!(bob.json_async(&["instance", "get", "borrowed"]).await["state"], "running");
}

/// The guest's prepare-image script, as an operator passes it to VMAPI: says it runs,
/// leaves its mark in sector 2001 of the disk, says it succeeded and powers off.
const PREPARE: &str = "mdata put prepare-image:state running
printf '%-512s' prepared | dd of=/dev/vda bs=512 seek=2001 count=1 conv=notrunc,fsync 2>/dev/null
mdata put prepare-image:state success
sync
poweroff -f
";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_guest_prepares_itself_before_its_disk_becomes_an_image() {
    let env = Env::new(&[], None).await;
    let (src, j) = env.create(json!({"alias": "prep-src"})).await;
    assert_eq!(j["execution"], "succeeded", "{j}");
    let log = env.wait_boots(&src, 1).await;
    assert_eq!(last(&log, "mark"), "", "no mark before the preparation");
    assert!(!log.contains("operator-script="), "no operator-script before: {log}");

    let j = env.act(&src, "create_image", json!({"name": "prepped", "version": "1", "prepare_image_script": PREPARE})).await;
    assert_eq!(j["execution"], "succeeded", "{}", super::job_steps(&j));
    let id = j["params"]["image_uuid"].as_str().unwrap().to_string();
    let img = env.cloud.client.get(&format!("/images/{id}")).await.unwrap();
    assert_eq!(img["state"], "active", "{img}");
    // The preparation boot ran the script and powered off before it was ready (so it
    // counts no boot); then the source was started again, without the script.
    let log = env.wait_boots(&src, 2).await;
    assert_eq!(log.matches("nereid-test: operator-script=start").count(), 1, "{log}");
    assert_eq!(last(&log, "mark"), "prepared");
    let v = env.vm(&src).await;
    assert!(v["internal_metadata"].get("operator-script").is_none(), "{v}");
    assert_eq!(v["customer_metadata"].get("prepare-image:state"), None, "{v}");

    // The image is the prepared disk.
    let (child, j) = env.create(json!({"alias": "prep-child", "image_uuid": id})).await;
    assert_eq!(j["execution"], "succeeded", "{j}");
    let log = env.wait_boots(&child, 1).await;
    assert_eq!(last(&log, "mark"), "prepared", "{log}");
    assert_eq!(last(&log, "boots"), "2", "the count as the preparation boot left it");
    assert!(!log.contains("operator-script="), "{log}");
}
