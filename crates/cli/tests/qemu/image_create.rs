//! Issue 14, item 1, on a real guest: `triton image create -w` of a running QEMU VM
//! booted from the test image. The guest counts its boots in a sector of its disk; the
//! image is made after its first boot, so a new instance from the image boots finding
//! the count the first guest wrote (1), not the test image's (0). The image is active
//! and private to the account; the source VM is started again; another tenant can
//! neither see nor use the image until `triton image share` names them.

use nereid_testkit::qemu::values;
use nereid_testkit::triton::KeyType;
use nereid_testkit::{Backend, Options};

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
