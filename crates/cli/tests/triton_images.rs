//! The real `triton` CLI's image commands against Nereid's CloudAPI, with two tenants:
//! list (with filters), get, update, share and unshare (visibility both ways), clone,
//! delete (owner only), wait; and an image's requirements refusing `triton instance
//! create` with a clear error that writes nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use nereid_testkit::Options;
use nereid_testkit::triton::{KeyType, Tenant, Triton};
use serde_json::{Value, json};

struct Setup {
    cloud: Cloud,
    _tenants: (Tenant, Tenant),
    alice: Triton,
    bob: Triton,
    alice_id: String,
    bob_id: String,
}

async fn setup() -> Setup {
    let cloud = Cloud::start_with(Options { sim_servers: 1, ..Options::new(Backend::Sqlite) }.cloudapi_http()).await.unwrap();
    cloud.seed().await.unwrap();
    let (ta, alice) = cloud.triton_user("alice", KeyType::Ed25519).await.unwrap();
    let (tb, bob) = cloud.triton_user("bob", KeyType::Ed25519).await.unwrap();
    let alice_id = alice.json_async(&["account", "get", "-j"]).await["id"].as_str().unwrap().to_string();
    let bob_id = bob.json_async(&["account", "get", "-j"]).await["id"].as_str().unwrap().to_string();
    Setup { cloud, _tenants: (ta, tb), alice, bob, alice_id, bob_id }
}

/// A zvol image owned by `owner` (made by the operator through IMGAPI), activated
/// unless `activate` is false.
async fn image_of(cloud: &Cloud, owner: &str, name: &str, extra: Value, activate: bool) -> String {
    let c = &cloud.client;
    let mut m = json!({"owner": owner, "name": name, "version": "1.0", "type": "zvol", "os": "linux", "public": false,
        "nic_driver": "virtio", "disk_driver": "virtio", "cpu_type": "host", "image_size": 1024});
    for (k, v) in extra.as_object().unwrap() {
        m[k] = v.clone();
    }
    let id = c.post("/images", &m).await.unwrap()["uuid"].as_str().unwrap().to_string();
    if activate {
        activate_image(cloud, &id).await;
    }
    id
}

async fn activate_image(cloud: &Cloud, id: &str) {
    let c = &cloud.client;
    c.send(c.request(reqwest::Method::PUT, &format!("/images/{id}/file?compression=none")).body(vec![7u8; 4096])).await.unwrap();
    c.post(&format!("/images/{id}?action=activate"), &json!({})).await.unwrap();
}

/// `triton <args>`'s `-j` list, off the async runtime.
async fn json_list(t: &Triton, args: &[&str]) -> Vec<Value> {
    let (t, args) = (t.clone(), args.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    tokio::task::spawn_blocking(move || t.json_list(&args.iter().map(String::as_str).collect::<Vec<_>>()))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// The names `triton image list -j <filters>` shows, sorted.
async fn names(t: &Triton, filters: &[&str]) -> Vec<String> {
    let mut args = vec!["image", "list", "-j"];
    args.extend_from_slice(filters);
    let list = json_list(t, &args).await;
    let mut n: Vec<String> = list.iter().map(|i| i["name"].as_str().unwrap().to_string()).collect();
    n.sort();
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn image_commands_across_two_tenants() {
    let s = setup().await;
    let (alice, bob) = (&s.alice, &s.bob);
    let app = image_of(&s.cloud, &s.alice_id, "alice-app", json!({"tags": {"role": "web"}}), true).await;
    let pending = image_of(&s.cloud, &s.alice_id, "alice-pending", json!({}), false).await;

    // Lists: each tenant sees public images and its own; filters as IMGAPI's.
    assert_eq!(names(alice, &[]).await, ["alice-app", "tiny"]);
    assert_eq!(names(bob, &[]).await, ["tiny"]);
    assert_eq!(names(alice, &["name=~lice"]).await, ["alice-app"]);
    assert_eq!(names(alice, &["public=true"]).await, ["tiny"]);
    assert_eq!(names(alice, &["public=false"]).await, ["alice-app"]);
    assert_eq!(names(alice, &[&format!("owner={}", s.alice_id)]).await, ["alice-app"]);
    assert_eq!(names(alice, &["-a", &format!("owner={}", s.alice_id)]).await, ["alice-app", "alice-pending"]);
    assert_eq!(names(alice, &["state=unactivated"]).await, ["alice-pending"]);
    assert_eq!(names(alice, &["type=zvol", "os=linux", "version=1.0"]).await, ["alice-app"]);
    assert!(names(alice, &["type=zone-dataset"]).await.is_empty());
    let (code, err) = alice.fail_async(&["image", "list", "state=gone"]).await;
    assert!(err.contains("InvalidArgument") && err.contains("state"), "{code:?} {err}");

    // Get: the owner sees it; the other tenant gets triton's "not found" (exit 3).
    let got = alice.json_async(&["image", "get", "alice-app"]).await;
    assert_eq!(
        (got["id"].as_str(), got["owner"].as_str(), got["tags"]["role"].as_str()),
        (Some(app.as_str()), Some(s.alice_id.as_str()), Some("web"))
    );
    let (code, err) = bob.fail_async(&["image", "get", &app]).await;
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("not found"), "{err}");
    // Nor may it be used before it is shared.
    let (code, err) = bob.fail_async(&["instance", "create", &app, "sample"]).await;
    assert_eq!(code, Some(3), "{err}");

    // Update: only the owner.
    let out = alice.ok_async(&["image", "update", &app, "description=The app", "name=alice-web"]).await;
    assert!(out.contains("Updated image"), "{out}");
    let got = alice.json_async(&["image", "get", &app]).await;
    assert_eq!(
        (got["name"].as_str(), got["description"].as_str(), got["version"].as_str()),
        (Some("alice-web"), Some("The app"), Some("1.0"))
    );
    let (code, _) = bob.fail_async(&["image", "update", &app, "description=mine"]).await;
    assert_eq!(code, Some(3), "an image bob cannot see is not found");
    // `triton image tag` replaces the tags (an UpdateImage of `tags`).
    let out = alice.ok_async(&["image", "tag", &app, "env=prod", "tier=2"]).await;
    assert!(out.contains("Updated image"), "{out}");
    assert_eq!(alice.json_async(&["image", "get", &app]).await["tags"], json!({"env": "prod", "tier": 2}));

    // UpdateImage's other actions: an unknown one, none, and export (no Manta here).
    for (query, want) in [
        ("?action=bogus", "action: bogus is not a valid argument (update or clone)"),
        ("", "action is required"),
        ("?action=export", "NotImplemented"),
    ] {
        let (t, path) = (alice.clone(), format!("/my/images/{app}{query}"));
        let out = tokio::task::spawn_blocking(move || t.run(&["cloudapi", "-X", "POST", "-d", "{}", &path])).await.unwrap().unwrap();
        assert!(out.stdout.contains(want) || out.stderr.contains(want), "{query}: {out}");
    }

    // Share by login is refused with a hint; by UUID it works (what `triton image share` sends
    // is an UpdateImage of `acl`).
    let (_, err) = alice.fail_async(&["image", "share", &app, "bob"]).await;
    assert!(err.contains("acl[0]") && err.contains("not an account UUID"), "{err}");
    let out = alice.ok_async(&["image", "share", "alice-web", &s.bob_id]).await;
    assert!(out.contains(&format!("Shared image alice-web with account {}", s.bob_id)), "{out}");
    assert_eq!(alice.json_async(&["image", "get", &app]).await["acl"], json!([s.bob_id]));
    let shown = alice.ok_async(&["image", "list"]).await;
    assert!(shown.lines().any(|l| l.contains("alice-web") && l.contains('+')), "the owner's list flags a shared image: {shown}");

    // Now bob sees it and may use it, but not change or delete it.
    assert_eq!(names(bob, &[]).await, ["alice-web", "tiny"]);
    assert_eq!(bob.json_async(&["image", "get", &app]).await["name"], "alice-web");
    let (_, err) = bob.fail_async(&["image", "update", &app, "description=mine"]).await;
    assert!(err.contains("NotImageOwner") && err.contains(&format!("account {} is not the owner of image {app}", s.bob_id)), "{err}");
    let (_, err) = bob.fail_async(&["image", "delete", "-f", &app]).await;
    assert!(err.contains("NotImageOwner"), "{err}");
    let (_, err) = bob.fail_async(&["image", "delete", "-f", "tiny"]).await;
    assert!(err.contains("NotImageOwner"), "an operator's public image is not a tenant's to delete: {err}");
    let created = bob.ok_async(&["instance", "create", "-w", &app, "sample", "--name", "on-shared"]).await;
    assert!(created.contains("Created instance on-shared"), "{created}");

    // Clone: a private copy for bob; an image's owner cannot clone it, nor a copy be cloned again.
    let clone = bob.json_async(&["image", "clone", "-j", &app]).await;
    let clone_id = clone["id"].as_str().unwrap().to_string();
    assert_ne!(clone_id, app);
    assert_eq!(
        (clone["owner"].as_str(), clone["name"].as_str(), clone["public"].as_bool()),
        (Some(s.bob_id.as_str()), Some("alice-web"), Some(false))
    );
    assert!(clone.get("acl").is_none(), "a clone shares with nobody: {clone}");
    // (`triton image clone` prints the message without the code, ImageNotShared.)
    let (_, err) = bob.fail_async(&["image", "clone", &clone_id]).await;
    assert!(err.contains(&format!("image {clone_id} is not shared with account {}", s.bob_id)), "{err}");
    let (_, err) = alice.fail_async(&["image", "clone", &app]).await;
    assert!(err.contains(&format!("image {app} is not shared with account {}", s.alice_id)), "{err}");
    let (code, _) = alice.fail_async(&["image", "get", &clone_id]).await;
    assert_eq!(code, Some(3), "bob's copy is private to bob");

    // Unshare: bob loses the original, keeps his copy.
    let out = alice.ok_async(&["image", "unshare", &app, &s.bob_id]).await;
    assert!(out.contains(&format!("Unshared image {app} with account {}", s.bob_id)), "{out}");
    let (code, _) = bob.fail_async(&["image", "get", &app]).await;
    assert_eq!(code, Some(3));
    assert!(alice.json_async(&["image", "get", &app]).await.get("acl").is_none(), "an empty ACL is no ACL");
    let bobs = json_list(bob, &["image", "list", "-j"]).await;
    assert_eq!(
        bobs.iter().filter(|i| i["name"] == "alice-web").map(|i| i["id"].as_str().unwrap()).collect::<Vec<_>>(),
        [clone_id.as_str()]
    );

    // Delete: the owner may, although bob's instance was made from it (as in Triton: the
    // instance keeps running, and bob's copy keeps the file they share).
    let out = alice.ok_async(&["image", "delete", "-f", &app]).await;
    assert!(out.contains(&format!("Deleted image {app}")), "{out}");
    let (code, _) = alice.fail_async(&["image", "get", &app]).await;
    assert_eq!(code, Some(3));
    assert_eq!(bob.json_async(&["instance", "get", "on-shared"]).await["state"], "running");
    let resp = s.cloud.client.request(reqwest::Method::GET, &format!("/images/{clone_id}/file")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.bytes().await.unwrap().to_vec(), vec![7u8; 4096], "the copy's file outlives the original");
    let created = bob.ok_async(&["instance", "create", "-w", &clone_id, "sample", "--name", "on-copy"]).await;
    assert!(created.contains("Created instance on-copy"), "{created}");

    // Wait: `triton image wait` polls until the image is active.
    let waiter = {
        let t = alice.clone();
        let id = pending.clone();
        tokio::task::spawn_blocking(move || t.run(&["image", "wait", &id]))
    };
    activate_image(&s.cloud, &pending).await;
    let out = waiter.await.unwrap().unwrap();
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stdout.contains("moved to state active") || out.stdout.contains("already active"), "{out}");
    assert_eq!(alice.json_async(&["image", "get", &pending]).await["state"], "active");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requirements_refuse_triton_instance_create() {
    let s = setup().await;
    let alice = &s.alice;
    let c = &s.cloud.client;
    let internal = c
        .post("/networks", &json!({"name": "internal", "nic_tag": "external", "vlan_id": 5, "subnet": "10.78.0.0/16", "provision_start_ip": "10.78.0.10", "provision_end_ip": "10.78.0.250"}))
        .await
        .unwrap()["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let big = image_of(&s.cloud, &s.alice_id, "big", json!({"requirements": {"min_ram": 2048}}), true).await;
    let small = image_of(&s.cloud, &s.alice_id, "small", json!({"requirements": {"max_ram": 512}}), true).await;
    let kvm = image_of(&s.cloud, &s.alice_id, "kvm-only", json!({"requirements": {"brand": "kvm"}}), true).await;
    let router = image_of(
        &s.cloud,
        &s.alice_id,
        "router",
        json!({"requirements": {"networks": [{"name": "net0", "description": "public"}, {"name": "net1", "description": "private"}]}}),
        true,
    )
    .await;

    let (_, err) = alice.fail_async(&["instance", "create", &big, "sample"]).await;
    assert!(
        err.contains("package: \"vm.ram\" (1024 MiB) is smaller than \"image.requirements.min_ram\" (2048 MiB) of image big@1.0"),
        "{err}"
    );
    let (_, err) = alice.fail_async(&["instance", "create", &small, "sample"]).await;
    assert!(err.contains("is larger than \"image.requirements.max_ram\" (512 MiB)"), "{err}");
    let (_, err) = alice.fail_async(&["instance", "create", &kvm, "sample"]).await;
    assert!(err.contains("brand: brand bhyve does not match \"image.requirements.brand\" (kvm) of image kvm-only@1.0"), "{err}");
    let (_, err) = alice.fail_async(&["instance", "create", &router, "sample"]).await;
    assert!(err.contains("networks: image router@1.0 requires at least 2 network interface(s)"), "{err}");

    // Nothing was written by the refusals.
    assert!(json_list(alice, &["instance", "list", "-j"]).await.is_empty());
    assert!(c.get("/vms").await.unwrap().as_array().unwrap().is_empty());

    // Meeting the requirement goes through: two networks for the router.
    let out = alice.ok_async(&["instance", "create", "-w", &router, "sample", "-N", "external", "-N", &internal, "--name", "gw"]).await;
    assert!(out.contains("Created instance gw"), "{out}");
    assert_eq!(alice.json_async(&["instance", "get", "gw"]).await["networks"].as_array().unwrap().len(), 2);

    // CloudAPI takes no bootrom from the tenant, so an image's required one is what the
    // machine gets (a differing one is refused through VMAPI: image_requirements.rs).
    let uefi = image_of(&s.cloud, &s.alice_id, "uefi", json!({"requirements": {"brand": "bhyve", "bootrom": "uefi"}}), true).await;
    alice.ok_async(&["instance", "create", "-w", &uefi, "sample", "--name", "fw"]).await;
    let id = alice.json_async(&["instance", "get", "fw"]).await["id"].as_str().unwrap().to_string();
    assert_eq!(c.get(&format!("/vms/{id}")).await.unwrap()["bootrom"], "uefi");
}

/// Cloning an incremental image copies its origins too, down to the operator's base
/// (IMGAPI's CloneImage), but never an origin the cloner may not see: bob is shared alice's
/// `top`, not her private `mid`, so his copy stands alone (every stored file is a whole
/// disk) and names no origin; alice stays free to delete her chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clone_copies_no_origin_the_cloner_cannot_see() {
    let s = setup().await;
    let nil = "00000000-0000-0000-0000-000000000000";
    let base = image_of(&s.cloud, nil, "base", json!({"public": true}), true).await;
    let mid = image_of(&s.cloud, &s.alice_id, "mid", json!({"origin": base}), true).await;
    let top = image_of(&s.cloud, &s.alice_id, "top", json!({"origin": mid}), true).await;
    s.alice.ok_async(&["image", "share", &top, &s.bob_id]).await;

    let clone = s.bob.json_async(&["image", "clone", "-j", &top]).await;
    let top2 = clone["id"].as_str().unwrap().to_string();
    assert!(clone.get("origin").is_none(), "the copy names no origin bob cannot see: {clone}");
    let bobs: Vec<Value> = s.cloud.client.get(&format!("/images?owner={}&state=all", s.bob_id)).await.unwrap().as_array().unwrap().clone();
    assert_eq!(bobs.len(), 1, "only the shared image is copied, not alice's private origin: {bobs:?}");
    assert_eq!((bobs[0]["uuid"].as_str(), bobs[0]["state"].as_str()), (Some(top2.as_str()), Some("active")));
    assert!(bobs[0].get("origin").is_none(), "{bobs:?}");
    // Shared with bob too, `mid` is copied (disabled, as an intermediate) and the chain
    // stops at the operator's base.
    s.alice.ok_async(&["image", "share", &mid, &s.bob_id]).await;
    let clone = s.bob.json_async(&["image", "clone", "-j", &top]).await;
    let top3 = clone["id"].as_str().unwrap().to_string();
    let bobs: Vec<Value> = s.cloud.client.get(&format!("/images?owner={}&state=all", s.bob_id)).await.unwrap().as_array().unwrap().clone();
    assert_eq!(bobs.len(), 3, "{bobs:?}");
    let top_copy = bobs.iter().find(|i| i["uuid"] == top3.as_str()).unwrap();
    let mid_copy = bobs.iter().find(|i| i["uuid"] != top3.as_str() && i["uuid"] != top2.as_str()).unwrap();
    assert_eq!(
        (mid_copy["name"].as_str(), mid_copy["state"].as_str()),
        (Some("mid"), Some("disabled")),
        "an intermediate copy is not offered for provisioning"
    );
    assert_eq!(mid_copy["origin"], base.as_str(), "the chain stops at the operator's base");
    assert_eq!(top_copy["origin"], mid_copy["uuid"], "the copy builds on the copy");
    assert_ne!(mid_copy["uuid"], mid.as_str());
    // Alice may now delete her chain: bob's copies do not depend on it.
    s.alice.ok_async(&["image", "unshare", &top, &s.bob_id]).await;
    s.alice.ok_async(&["image", "delete", "-f", &top]).await;
    s.alice.ok_async(&["image", "delete", "-f", &mid]).await;
    assert_eq!(s.bob.json_async(&["image", "get", &top2]).await["state"], "active");
    assert_eq!(s.bob.json_async(&["image", "get", &top3]).await["state"], "active");
}

/// Alice's private `s` is shared with bob; bob makes `t` from it (origin `s`) and shares
/// `t` with carol. Carol's clone of `t` brings no copy of `s` and names no origin, so she
/// cannot pass alice's image on; alice's refusal to delete `s` counts bob's image without
/// naming it; and only an image's owner sees whom it is shared with.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clone_never_hands_on_an_image_across_tenants() {
    let s = setup().await;
    let (_tc, carol) = s.cloud.triton_user("carol", KeyType::Ed25519).await.unwrap();
    let carol_id = carol.json_async(&["account", "get", "-j"]).await["id"].as_str().unwrap().to_string();
    let src = image_of(&s.cloud, &s.alice_id, "secret", json!({}), true).await;
    s.alice.ok_async(&["image", "share", &src, &s.bob_id]).await;
    let t = image_of(&s.cloud, &s.bob_id, "derived", json!({"origin": src}), true).await;
    s.bob.ok_async(&["image", "share", &t, &carol_id]).await;
    // Only the owner sees the ACL: bob does not learn about carol's access or the reverse.
    assert_eq!(s.alice.json_async(&["image", "get", &src]).await["acl"], json!([s.bob_id]));
    assert!(s.bob.json_async(&["image", "get", &src]).await.get("acl").is_none());
    assert_eq!(s.bob.json_async(&["image", "get", &t]).await["acl"], json!([carol_id]));
    assert!(carol.json_async(&["image", "get", &t]).await.get("acl").is_none());

    let clone = carol.json_async(&["image", "clone", "-j", &t]).await;
    assert!(clone.get("origin").is_none(), "{clone}");
    let carols: Vec<Value> = s.cloud.client.get(&format!("/images?owner={carol_id}&state=all")).await.unwrap().as_array().unwrap().clone();
    assert_eq!(carols.len(), 1, "no copy of alice's image: {carols:?}");
    assert_eq!(carols[0]["name"], "derived");
    carol.fail_async(&["image", "get", &src]).await;

    // Alice cannot delete `s` while bob's `t` builds on it, and is not told its UUID.
    let (_, err) = s.alice.fail_async(&["image", "delete", "-f", &src]).await;
    assert!(err.contains(&format!("image {src} is the origin of 1 image; delete those first")), "{err}");
    assert!(!err.contains(&t), "bob's image stays hidden from alice: {err}");
    // The operator, who sees every image, is told which.
    let c = &s.cloud.client;
    let resp = c.request(reqwest::Method::DELETE, &format!("/images/{src}")).send().await.unwrap();
    assert_eq!(resp.status(), 422);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "ImageHasDependentImages", "{body}");
    assert!(body["message"].as_str().unwrap().contains(&t), "the operator sees every dependent image: {body}");
}
