//! The real `triton` CLI (npm `triton@7.17.0`, installed by scripts/test) against
//! Nereid's CloudAPI: every core command a Triton user types, for an RSA, an ECDSA P-256
//! and an Ed25519 key, over plain HTTP and over HTTPS with `insecure`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use nereid_testkit::Options;
use nereid_testkit::triton::{KeyType, Tenant, Triton};
use serde_json::{Value, json};

/// Runs the CLI off the async runtime (the cloud serves it from this process).
async fn tr(t: &Triton, args: &[&str]) -> String {
    let (t, args): (Triton, Vec<String>) = (t.clone(), args.iter().map(|s| s.to_string()).collect());
    tokio::task::spawn_blocking(move || {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        t.ok(&a).unwrap_or_else(|e| panic!("{e:#}"))
    })
    .await
    .unwrap()
}

/// Runs the CLI expecting failure; returns (exit code, stderr).
async fn tr_fail(t: &Triton, args: &[&str]) -> (Option<i32>, String) {
    let (t, args): (Triton, Vec<String>) = (t.clone(), args.iter().map(|s| s.to_string()).collect());
    tokio::task::spawn_blocking(move || {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = t.run(&a).unwrap();
        assert!(!out.success(), "{} should have failed: {}", out.command, out.stdout);
        (out.code, out.stderr)
    })
    .await
    .unwrap()
}

async fn tr_json(t: &Triton, args: &[&str]) -> Value {
    let out = tr(t, args).await;
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("triton {args:?} printed no JSON ({e}): {out}"))
}

struct Setup {
    cloud: Cloud,
    tenant: Tenant,
    triton: Triton,
}

async fn setup(kind: KeyType, https: bool) -> Setup {
    let opts = Options { sim_servers: 1, ..Options::new(Backend::Sqlite) };
    let opts = if https { opts.cloudapi_https() } else { opts.cloudapi_http() };
    let cloud = Cloud::start_with(opts).await.unwrap();
    cloud.seed().await.unwrap();
    cloud
        .client
        .post(
            "/packages",
            &json!({"name": "sample-2G", "version": "1.0.0", "max_physical_memory": 2048, "quota": 20480, "vcpus": 2, "brand": "bhyve"}),
        )
        .await
        .unwrap();
    let tenant = Tenant::new(kind).unwrap();
    cloud
        .client
        .post("/accounts", &json!({"login": "alice", "email": "alice@example.com", "keys": [{"key": tenant.public_key}]}))
        .await
        .unwrap();
    let url = cloud.headnode.cloudapi.as_ref().unwrap().url.clone();
    assert_eq!(url.starts_with("https://"), https);
    let triton = tenant.triton(&url, "alice", https).unwrap();
    Setup { cloud, tenant, triton }
}

/// Every core command, in the order a user would type them.
async fn whole_life(s: &Setup) {
    let t = &s.triton;
    let info = tr(t, &["info"]).await;
    assert!(info.contains("alice") && info.contains("instances: 0"), "{info}");
    let pkgs = tr(t, &["package", "list"]).await;
    assert!(pkgs.contains("sample") && pkgs.contains("sample-2G"), "{pkgs}");
    let imgs = tr(t, &["image", "list"]).await;
    assert!(imgs.contains("tiny"), "{imgs}");
    let nets = tr(t, &["network", "list"]).await;
    assert!(nets.contains("external"), "{nets}");

    let created = tr(t, &["instance", "create", "-w", "tiny", "sample", "--name", "web-1", "-m", "foo=bar", "-t", "role=web"]).await;
    assert!(created.contains("Creating instance web-1") && created.contains("Created instance web-1"), "{created}");
    let list = tr(t, &["instance", "list"]).await;
    assert!(list.contains("web-1") && list.contains("running") && list.contains("tiny@1"), "{list}");
    let m = tr_json(t, &["instance", "get", "web-1"]).await;
    assert_eq!((m["state"].as_str(), m["package"].as_str()), (Some("running"), Some("sample")), "{m}");
    assert_eq!(m["metadata"]["foo"], "bar");
    assert_eq!(m["tags"]["role"], "web");
    assert!(m["primaryIp"].as_str().unwrap().starts_with("10.77."), "{m}");
    let id = m["id"].as_str().unwrap().to_string();
    let ip = tr(t, &["instance", "ip", "web-1"]).await;
    assert_eq!(ip.trim(), m["primaryIp"].as_str().unwrap());
    let info = tr(t, &["info"]).await;
    assert!(info.contains("instances: 1") && info.contains("running: 1"), "{info}");

    let out = tr(t, &["instance", "stop", "-w", "web-1"]).await;
    assert!(out.contains("Stop instance web-1"), "{out}");
    assert_eq!(tr_json(t, &["instance", "get", "web-1"]).await["state"], "stopped");
    let out = tr(t, &["instance", "start", "-w", "web-1"]).await;
    assert!(out.contains("Start instance web-1"), "{out}");
    assert_eq!(tr_json(t, &["instance", "get", "web-1"]).await["state"], "running");
    let out = tr(t, &["instance", "reboot", "-w", "web-1"]).await;
    assert!(out.contains("Rebooted instance web-1"), "{out}");

    let out = tr(t, &["instance", "resize", "-w", "web-1", "sample-2G"]).await;
    assert!(out.contains("Resized instance web-1"), "{out}");
    let m = tr_json(t, &["instance", "get", "web-1"]).await;
    assert_eq!((m["package"].as_str(), m["memory"].as_u64()), (Some("sample-2G"), Some(2048)), "{m}");
    let out = tr(t, &["instance", "rename", "-w", "web-1", "web-2"]).await;
    assert!(out.contains("Renamed instance"), "{out}");
    assert_eq!(tr_json(t, &["instance", "get", id.as_str()]).await["name"], "web-2");

    tr(t, &["instance", "tag", "set", "-w", "web-2", "env=prod", "count=3"]).await;
    let tags = tr_json(t, &["instance", "tag", "list", "web-2"]).await;
    assert_eq!(tags, json!({"role": "web", "env": "prod", "count": 3}));
    assert_eq!(tr(t, &["instance", "tag", "get", "web-2", "env"]).await.trim(), "prod");
    tr(t, &["instance", "tag", "delete", "-w", "web-2", "env"]).await;
    assert_eq!(tr_json(t, &["instance", "tag", "list", "web-2"]).await, json!({"role": "web", "count": 3}));

    tr(t, &["instance", "metadata", "set", "-w", "web-2", "color=blue"]).await;
    let md = tr_json(t, &["instance", "metadata", "list", "web-2"]).await;
    assert_eq!((md["foo"].as_str(), md["color"].as_str()), (Some("bar"), Some("blue")), "{md}");
    assert_eq!(tr(t, &["instance", "metadata", "get", "web-2", "color"]).await.trim(), "blue");
    tr(t, &["instance", "metadata", "delete", "-f", "-w", "web-2", "color"]).await;
    assert!(tr_json(t, &["instance", "metadata", "list", "web-2"]).await.get("color").is_none());

    let out = tr(t, &["instance", "snapshot", "create", "-w", "--name", "before", "web-2"]).await;
    assert!(out.contains("Created snapshot \"before\""), "{out}");
    let snaps = tr(t, &["instance", "snapshot", "list", "web-2"]).await;
    assert!(snaps.contains("before") && snaps.contains("created"), "{snaps}");
    let out = tr(t, &["instance", "snapshot", "delete", "-f", "-w", "web-2", "before"]).await;
    assert!(out.contains("Deleted snapshot \"before\""), "{out}");
    let snaps = tr(t, &["instance", "snapshot", "list", "-j", "web-2"]).await;
    assert!(!snaps.contains("before"), "{snaps}");

    tr(t, &["instance", "enable-deletion-protection", "-w", "web-2"]).await;
    let (code, err) = tr_fail(t, &["instance", "delete", "-f", "-w", "web-2"]).await;
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("Instance has \"deletion_protection\" enabled, preventing deletion"), "{err}");
    tr(t, &["instance", "disable-deletion-protection", "-w", "web-2"]).await;
    let out = tr(t, &["instance", "delete", "-f", "-w", "web-2"]).await;
    assert!(out.contains("Delete instance web-2"), "{out}");
    let (code, err) = tr_fail(t, &["instance", "get", id.as_str()]).await;
    assert_eq!(code, Some(3), "a deleted instance is exit 3: {err}");
    let list = tr(t, &["instance", "list", "-H"]).await;
    assert!(list.trim().is_empty(), "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triton_cli_with_an_rsa_key_over_http() {
    let s = setup(KeyType::Rsa, false).await;
    whole_life(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triton_cli_with_an_ecdsa_p256_key_over_https_insecure() {
    let s = setup(KeyType::EcdsaP256, true).await;
    whole_life(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triton_cli_with_an_ed25519_key_over_http() {
    let s = setup(KeyType::Ed25519, false).await;
    whole_life(&s).await;
    // Keys through the CLI: add a second key, list, delete it.
    let (_, _, md5, _) = s.tenant.add_key(KeyType::EcdsaP256).unwrap();
    let pub_file = s.tenant.home.path().join(".ssh/id_ecdsa.pub");
    let out = tr(&s.triton, &["key", "add", "-n", "second", pub_file.to_str().unwrap()]).await;
    assert!(out.contains(&md5), "{out}");
    let keys = tr(&s.triton, &["key", "list"]).await;
    assert!(keys.contains("second") && keys.contains(&s.tenant.md5), "{keys}");
    tr(&s.triton, &["key", "delete", "-y", "second"]).await;
    assert!(!tr(&s.triton, &["key", "list"]).await.contains("second"));
    drop(s.cloud);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_without_insecure_is_refused_by_the_cli() {
    let s = setup(KeyType::Ed25519, true).await;
    let url = s.cloud.headnode.cloudapi.as_ref().unwrap().url.clone();
    let strict = s.tenant.triton(&url, "alice", false).unwrap();
    let (_, err) = tr_fail(&strict, &["info"]).await;
    assert!(err.contains("self-signed certificate") || err.contains("SELF_SIGNED"), "{err}");
    // -i makes the same profile work.
    assert!(tr(&strict, &["-i", "info"]).await.contains("alice"));
}
