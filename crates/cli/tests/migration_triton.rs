//! `triton instance migration …` (the real CLI, unchanged) against Nereid's CloudAPI on two
//! simulated servers: begin, sync, switch (each with -w), get, list and finalize move an
//! instance to the other server, where it runs; automatic does it in one go; abort after
//! begin leaves everything as it was (the VM where it was, running; nothing on the target,
//! no capacity held there); the wrong order, an unknown action and another tenant's
//! machine are refused as Triton refuses them; and a cloud that does not allow user
//! migration (Triton's default) says so in Triton's words.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use nereid_store::Filter;
use nereid_testkit::Options;
use nereid_testkit::cloudapi::{Client as SignedClient, Key};
use nereid_testkit::triton::{KeyType, Tenant, Triton};
use serde_json::{Value, json};
use uuid::Uuid;

struct Setup {
    cloud: Cloud,
    _tenants: Vec<Tenant>,
    alice: Triton,
}

async fn setup(backend: Backend, user_migration: bool) -> Setup {
    let mut o = Options { sim_servers: 2, ..Options::new(backend) }.cloudapi_http();
    o.app.migration.user_migration_allowed = user_migration;
    let cloud = Cloud::start_with(o).await.unwrap();
    cloud.seed().await.unwrap();
    let (t, alice) = cloud.triton_user("alice", KeyType::Ed25519).await.unwrap();
    Setup { cloud, _tenants: vec![t], alice }
}

/// `triton instance create -w`: the new instance's uuid.
async fn instance(t: &Triton, name: &str) -> String {
    t.ok_async(&["instance", "create", "-w", "tiny", "sample", "--name", name]).await;
    t.json_async(&["instance", "get", "-j", name]).await["id"].as_str().unwrap().to_string()
}

/// VMAPI's view of the VM.
async fn vm(cloud: &Cloud, id: &str) -> Value {
    cloud.client.get(&format!("/vms/{id}")).await.unwrap()
}

/// The state of the VM in its server's agent, if the agent has it.
fn on_agent(cloud: &Cloud, server: &str, id: &str) -> Option<String> {
    let agent = cloud.agent.as_ref().unwrap();
    let node = agent.nodes.iter().find(|n| n.uuid.to_string() == server).expect("a server of the agent");
    node.node.get(id.parse().unwrap()).map(|s| s.state).filter(|s| s != "destroyed")
}

/// Capacity held for the VM on a server.
async fn reservations(cloud: &Cloud, server: &str, id: &str) -> i64 {
    let f = Filter::and(vec![Filter::eq("server_uuid", server), Filter::eq("vm_uuid", id)]);
    cloud.headnode.app.store.count("reservations", &f).await.unwrap()
}

/// The other simulated server.
fn other_server(cloud: &Cloud, server: &str) -> String {
    cloud.agent.as_ref().unwrap().servers().iter().map(Uuid::to_string).find(|s| s != server).unwrap()
}

/// Waits until the agent of `server` no longer has the VM (a removal is converged by the
/// agent after the job that asked for it).
async fn gone_from(cloud: &Cloud, server: &str, id: &str) -> bool {
    for _ in 0..200 {
        if on_agent(cloud, server, id).is_none() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// A `-w` run's output ends with the CLI's `Done - <phase> finished in N seconds`.
fn done(out: &str, phase: &str) {
    assert!(out.lines().any(|l| l.starts_with(&format!("Done - {phase} finished in "))), "{out}");
}

async fn begin_sync_switch_finalize(backend: Backend) {
    let s = setup(backend, true).await;
    let (cloud, alice) = (&s.cloud, &s.alice);
    let id = instance(alice, "web-1").await;
    let source = vm(cloud, &id).await["server_uuid"].as_str().unwrap().to_string();
    let target = other_server(cloud, &source);

    let out = alice.ok_async(&["instance", "migration", "begin", "-w", &id]).await;
    done(&out, "begin");
    let m = alice.json_async(&["instance", "migration", "get", "-j", &id]).await;
    assert_eq!(
        (m["machine"].as_str(), m["phase"].as_str(), m["state"].as_str()),
        (Some(id.as_str()), Some("begin"), Some("paused")),
        "{m}"
    );
    assert!(m.get("vm_uuid").is_none() && m.get("token").is_none(), "CloudAPI's form: {m}");
    assert_eq!(reservations(cloud, &target, &id).await, 1, "begin claims the capacity on the target");

    let out = alice.ok_async(&["instance", "migration", "sync", "-w", &id]).await;
    done(&out, "sync");
    let m = alice.json_async(&["instance", "migration", "get", "-j", &id]).await;
    assert_eq!((m["phase"].as_str(), m["state"].as_str()), (Some("sync"), Some("paused")), "{m}");
    assert_eq!(vm(cloud, &id).await["server_uuid"].as_str(), Some(source.as_str()), "sync leaves the VM where it runs");

    let out = alice.ok_async(&["instance", "migration", "switch", "-w", &id]).await;
    done(&out, "switch");
    let v = vm(cloud, &id).await;
    assert_eq!((v["server_uuid"].as_str(), v["state"].as_str()), (Some(target.as_str()), Some("running")), "{v}");
    assert_eq!(on_agent(cloud, &target, &id).as_deref(), Some("running"));
    let inst = alice.json_async(&["instance", "get", "-j", &id]).await;
    assert_eq!(inst["state"], "running", "{inst}");

    // get (human) and list show the finished switch.
    let out = alice.ok_async(&["instance", "migration", "get", &id]).await;
    assert!(out.contains("State:") && out.contains("successful") && out.contains("Phases:"), "{out}");
    let list = alice.json_async(&["instance", "migration", "list", "-j"]).await;
    let list = match list {
        Value::Array(a) => a,
        one => vec![one],
    };
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!((list[0]["machine"].as_str(), list[0]["phase"].as_str()), (Some(id.as_str()), Some("switch")));
    let out = alice.ok_async(&["instance", "migration", "list"]).await;
    assert!(out.contains(&id[..8]) && out.contains("switch") && out.contains("successful"), "{out}");

    // finalize: the source's copy goes; the instance stays on the target, running.
    let out = alice.ok_async(&["instance", "migration", "finalize", &id]).await;
    assert!(out.contains("Done - the migration is finalized"), "{out}");
    assert!(gone_from(cloud, &source, &id).await, "the source's copy is removed");
    let v = vm(cloud, &id).await;
    assert_eq!((v["server_uuid"].as_str(), v["state"].as_str()), (Some(target.as_str()), Some("running")), "{v}");
    assert_eq!(reservations(cloud, &source, &id).await, 0, "no capacity left held on the source");
}

async fn automatic_and_abort(backend: Backend) {
    let s = setup(backend, true).await;
    let (cloud, alice) = (&s.cloud, &s.alice);

    // automatic -w: begin, sync and switch in one go.
    let auto = instance(alice, "auto-1").await;
    let source = vm(cloud, &auto).await["server_uuid"].as_str().unwrap().to_string();
    let out = alice.ok_async(&["instance", "migration", "automatic", "-w", &auto]).await;
    assert!(out.contains("Done - "), "{out}");
    let v = vm(cloud, &auto).await;
    assert_eq!((v["server_uuid"].as_str(), v["state"].as_str()), (Some(other_server(cloud, &source).as_str()), Some("running")), "{v}");
    let m = alice.json_async(&["instance", "migration", "get", "-j", &auto]).await;
    assert_eq!(
        (m["automatic"].as_bool(), m["phase"].as_str(), m["state"].as_str()),
        (Some(true), Some("switch"), Some("successful")),
        "{m}"
    );

    // abort after begin: as before.
    let id = instance(alice, "stay-1").await;
    let before = vm(cloud, &id).await;
    let source = before["server_uuid"].as_str().unwrap().to_string();
    let target = other_server(cloud, &source);
    done(&alice.ok_async(&["instance", "migration", "begin", "-w", &id]).await, "begin");
    alice.ok_async(&["instance", "migration", "abort", "-w", &id]).await;
    let m = alice.json_async(&["instance", "migration", "get", "-j", &id]).await;
    assert_eq!((m["phase"].as_str(), m["state"].as_str()), (Some("abort"), Some("successful")), "{m}");
    let after = vm(cloud, &id).await;
    assert_eq!((after["server_uuid"].as_str(), after["state"].as_str()), (Some(source.as_str()), Some("running")), "{after}");
    assert_eq!(after["nics"], before["nics"], "the NICs are untouched");
    assert_eq!(on_agent(cloud, &source, &id).as_deref(), Some("running"));
    assert!(gone_from(cloud, &target, &id).await, "nothing left on the target's agent");
    assert_eq!(reservations(cloud, &target, &id).await, 0, "no capacity held on the target");
}

both_backends!(begin_sync_switch_finalize, automatic_and_abort);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_requests_are_refused_as_triton_refuses_them() {
    let s = setup(Backend::Sqlite, true).await;
    let (cloud, alice) = (&s.cloud, &s.alice);
    let id = instance(alice, "web-1").await;

    // Nothing to act on yet.
    let (code, err) = alice.fail_async(&["instance", "migration", "get", &id]).await;
    assert_ne!(code, Some(0));
    assert!(err.contains("ResourceNotFound") || err.contains("not found"), "{err}");
    let (_, err) = alice.fail_async(&["instance", "migration", "sync", &id]).await;
    assert!(!err.is_empty(), "sync before begin is refused");

    done(&alice.ok_async(&["instance", "migration", "begin", "-w", &id]).await, "begin");
    let (code, err) = alice.fail_async(&["instance", "migration", "switch", &id]).await;
    assert_ne!(code, Some(0), "{err}");
    assert!(err.to_lowercase().contains("sync"), "switch before sync names the missing sync: {err}");
    let (code, err) = alice.fail_async(&["instance", "migration", "finalize", &id]).await;
    assert_ne!(code, Some(0), "{err}");
    assert!(err.contains("Finalize only works on a successful migration"), "finalize before switch, in VMAPI's words: {err}");
    let v = vm(cloud, &id).await;
    assert_eq!(v["state"], "running", "refusals change nothing: {v}");

    // CloudAPI itself (the CLI refuses unknown actions before sending them).
    let key = Key::from_seed(9);
    cloud.client.post("/accounts/alice/keys", &json!({"key": key.openssh(), "name": "raw"})).await.unwrap();
    let raw = SignedClient::new(&cloud.headnode.cloudapi.as_ref().unwrap().url, "alice", key);
    let path = format!("/alice/machines/{id}/migrate");
    let a = raw.post(&path, &json!({"action": "teleport"})).await.unwrap();
    assert_eq!(
        (a.status, a.body["code"].as_str(), a.body["message"].as_str()),
        (409, Some("InvalidArgument"), Some("teleport is not a valid migration action")),
        "{}",
        a.text
    );
    let a = raw.post(&path, &json!({})).await.unwrap();
    assert_eq!(
        (a.status, a.body["code"].as_str(), a.body["message"].as_str()),
        (409, Some("MissingParameter"), Some("\"action\" must be specified")),
        "{}",
        a.text
    );

    // Another tenant sees none of it and can do nothing to it.
    let (_tb, bob) = cloud.triton_user("bob", KeyType::Ed25519).await.unwrap();
    let (code, err) = bob.fail_async(&["instance", "migration", "get", &id]).await;
    assert_ne!(code, Some(0));
    assert!(err.contains("VM not found") || err.contains("not found"), "{err}");
    let (code, err) = bob.fail_async(&["instance", "migration", "abort", &id]).await;
    assert_ne!(code, Some(0));
    assert!(err.contains("ResourceNotFound") || err.contains("does not exist") || err.contains("not found"), "{err}");
    let list = bob.ok_async(&["instance", "migration", "list", "-j"]).await;
    assert!(list.trim().is_empty() || list.trim() == "[]", "bob has no migrations: {list}");
    let m = alice.json_async(&["instance", "migration", "get", "-j", &id]).await;
    assert_eq!((m["phase"].as_str(), m["state"].as_str()), (Some("begin"), Some("paused")), "bob's abort did nothing: {m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn user_migration_is_off_unless_the_cloud_allows_it() {
    let s = setup(Backend::Sqlite, false).await;
    let (cloud, alice) = (&s.cloud, &s.alice);
    let id = instance(alice, "web-1").await;
    let source = vm(cloud, &id).await["server_uuid"].as_str().unwrap().to_string();
    let (code, err) = alice.fail_async(&["instance", "migration", "begin", &id]).await;
    assert_ne!(code, Some(0));
    assert!(err.contains(nereid_types::migration::USER_MIGRATION_NOT_ALLOWED), "{err}");
    let v = vm(cloud, &id).await;
    assert_eq!((v["server_uuid"].as_str(), v["state"].as_str()), (Some(source.as_str()), Some("running")), "{v}");
    assert_eq!(reservations(cloud, &other_server(cloud, &source), &id).await, 0);
}

/// Affinity rules (CloudAPI's `affinity`; triton 7.17.0's `-a` is not sent by the CLI, so
/// they are posted here as a client that sends them would) choose the target as they choose
/// a new instance's server; a rule no other server satisfies leaves the VM where it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn affinity_rules_choose_or_refuse_the_target() {
    let s = setup(Backend::Sqlite, true).await;
    let (cloud, alice) = (&s.cloud, &s.alice);
    let a = instance(alice, "db-1").await;
    let b = instance(alice, "web-1").await;
    let (sa, sb) = (
        vm(cloud, &a).await["server_uuid"].as_str().unwrap().to_string(),
        vm(cloud, &b).await["server_uuid"].as_str().unwrap().to_string(),
    );
    let key = Key::from_seed(11);
    cloud.client.post("/accounts/alice/keys", &json!({"key": key.openssh(), "name": "raw"})).await.unwrap();
    let raw = SignedClient::new(&cloud.headnode.cloudapi.as_ref().unwrap().url, "alice", key);
    let path = format!("/alice/machines/{b}/migrate");
    // With db-1 on web-1's server, "==" leaves nowhere to go; apart, "!=" does.
    let refused = if sa == sb { "instance==db-1" } else { "instance!=db-1" };
    let r = raw.post(&path, &json!({"action": "automatic", "affinity": [refused]})).await.unwrap();
    if r.status == 201 {
        alice.ok_async(&["instance", "migration", "get", &b]).await;
        let end = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let m = alice.json_async(&["instance", "migration", "get", "-j", &b]).await;
            if m["state"] != "running" {
                assert_eq!(m["state"], "failed", "{m}");
                break;
            }
            assert!(std::time::Instant::now() < end, "{m}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    } else {
        assert_eq!((r.status, r.body["code"].as_str()), (409, Some("InsufficientCapacity")), "{}", r.text);
    }
    let v = vm(cloud, &b).await;
    assert_eq!((v["server_uuid"].as_str(), v["state"].as_str()), (Some(sb.as_str()), Some("running")), "{v}");
    assert_eq!(reservations(cloud, &other_server(cloud, &sb), &b).await, 0, "no capacity held for a refused migration");
    if sa != sb {
        // Apart: "==" sends web-1 to db-1's server.
        let r = raw.post(&path, &json!({"action": "automatic", "affinity": "instance==db-1"})).await.unwrap();
        assert_eq!(r.status, 201, "{}", r.text);
        let out = alice.ok_async(&["instance", "migration", "get", &b]).await;
        assert!(out.contains("State:"), "{out}");
        let end = std::time::Instant::now() + Duration::from_secs(60);
        while vm(cloud, &b).await["server_uuid"].as_str() != Some(sa.as_str()) {
            assert!(std::time::Instant::now() < end, "web-1 never joined db-1");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
