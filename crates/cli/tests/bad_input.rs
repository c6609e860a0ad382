//! Bad input on every operator API endpoint: each gets a 4xx JSON error naming the
//! problem, nothing is written, and no request makes the headnode fail (5xx) or panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use nereid_headnode::http::{BodyDoc, routes};
use nereid_store::ListQuery;
use reqwest::Method;
use serde_json::{Value, json};

both_backends!(every_endpoint_refuses_bad_input_without_writing);

/// Every object in every bucket, with its generation.
async fn snapshot(cloud: &Cloud) -> Vec<(String, String, i64)> {
    let mut out = Vec::new();
    // The audit log records refused requests too (that is its job).
    for b in nereid_headnode::buckets::ALL.iter().filter(|b| b.name != "heartbeats" && b.name != "job_leases" && b.name != "audit") {
        for o in cloud.headnode.app.store.list(b.name, &ListQuery::all()).await.unwrap() {
            out.push((b.name.to_string(), o.key, o.generation));
        }
    }
    out
}

struct Ids {
    package: String,
    image: String,
    network: String,
    pool: String,
    nic: String,
    server: String,
    vm: String,
    job: String,
    key: String,
    /// An account with fabric VLAN 2 (the fabric routes' `{owner_uuid}` and `{vlan_id}`).
    owner: String,
    /// A fabric network on that VLAN.
    fabric_net: String,
}

async fn seed(cloud: &Cloud) -> Ids {
    let c = &cloud.client;
    let s = cloud.seed().await.unwrap();
    let (vm, job) = cloud.create_vm(&s.vm_body("bad-input")).await.unwrap();
    assert_eq!(cloud.wait_job(&job).await.unwrap()["execution"], "succeeded");
    let server = c.get("/servers").await.unwrap()[0]["uuid"].as_str().unwrap().to_string();
    // Quiet, so that nothing but the requests under test could write.
    cloud.agent.as_ref().unwrap().pause_heartbeats(true);
    let package = c.post("/packages", &package("seed")).await.unwrap()["uuid"].as_str().unwrap().to_string();
    let image = c
        .post("/images", &json!({"owner": "00000000-0000-0000-0000-000000000000", "name": "seed", "version": "1", "type": "zvol", "os": "linux", "nic_driver": "virtio", "disk_driver": "virtio", "cpu_type": "host", "image_size": 1024}))
        .await
        .unwrap()["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let network = c.post("/networks", &json!({"name": "seed", "nic_tag": "external", "vlan_id": 0, "subnet": "10.9.0.0/24", "provision_start_ip": "10.9.0.10", "provision_end_ip": "10.9.0.20", "gateway": "10.9.0.1"})).await.unwrap()["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let pool =
        c.post("/network_pools", &json!({"name": "seedpool", "networks": [network]})).await.unwrap()["uuid"].as_str().unwrap().to_string();
    let nic = c
        .post(&format!("/networks/{network}/nics"), &json!({"owner_uuid": network, "belongs_to_uuid": network, "belongs_to_type": "other"}))
        .await
        .unwrap()["mac"]
        .as_str()
        .unwrap()
        .to_string();
    let key = nereid_testkit::cloudapi::Key::from_seed(3);
    let owner = c
        .post("/accounts", &json!({"login": "seeded", "email": "seeded@example.com", "keys": [{"key": key.openssh()}]}))
        .await
        .unwrap()["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    c.post(&format!("/fabrics/{owner}/vlans"), &json!({"vlan_id": 2, "name": "seeded"})).await.unwrap();
    c.post("/nic_tags", &json!({"name": "sdc_underlay", "mtu": 1500})).await.unwrap();
    let fabric_net = c
        .post(
            &format!("/fabrics/{owner}/vlans/2/networks"),
            &json!({"name": "seeded", "subnet": "10.60.0.0/24", "gateway": "10.60.0.1", "provision_start_ip": "10.60.0.10", "provision_end_ip": "10.60.0.20"}),
        )
        .await
        .unwrap()["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    Ids { package, image, network, pool, nic, server, vm, job, key: key.md5(), owner, fabric_net }
}

/// The path with real IDs, so validation (not lookup) is what answers.
fn real_path(path: &str, ids: &Ids) -> String {
    let id = if path.starts_with("/packages") {
        &ids.package
    } else if path.starts_with("/images") {
        &ids.image
    } else if path.starts_with("/nics") {
        &ids.nic
    } else if path.starts_with("/network_pools") {
        &ids.pool
    } else if path.starts_with("/servers") {
        &ids.server
    } else if path.starts_with("/vms") {
        &ids.vm
    } else if path.starts_with("/jobs") {
        &ids.job
    } else if path.starts_with("/fabrics") {
        &ids.fabric_net
    } else {
        &ids.network
    };
    path.replace("{uuid}", id)
        .replace("{mac}", id)
        .replace("{name}", "external")
        .replace("{ip}", "10.9.0.15")
        .replace("{vm}", &ids.vm)
        .replace("{account}", "seeded")
        .replace("{key}", &ids.key)
        .replace("{owner_uuid}", &ids.owner)
        .replace("{vlan_id}", "2")
}

/// The path with any query parameter the endpoint cannot do without.
fn full_path(method: &Method, path: &str, ids: &Ids) -> String {
    let p = real_path(path, ids);
    if *method == Method::POST && path == "/vms/{uuid}" { format!("{p}?action=update") } else { p }
}

fn with_query(path: &str, q: &str) -> String {
    if path.contains('?') { format!("{path}&{q}") } else { format!("{path}?{q}") }
}

async fn expect_4xx(
    cloud: &Cloud,
    method: &Method,
    path: &str,
    body: Option<Vec<u8>>,
    token: Option<&str>,
    names: Option<&str>,
) -> (u16, Value) {
    let c = &cloud.client;
    let mut req = reqwest::Client::new().request(method.clone(), c.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    assert!((400..500).contains(&status), "{method} {path}: status {status}: {text}");
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{method} {path}: not JSON: {text:?}"));
    assert!(v["code"].is_string() && v["message"].is_string(), "{method} {path}: {v}");
    if let Some(n) = names {
        assert!(text.contains(n), "{method} {path}: the error does not name {n:?}: {text}");
    }
    (status, v)
}

async fn every_endpoint_refuses_bad_input_without_writing(b: Backend) {
    let cloud = Cloud::start_with(nereid_testkit::Options { sim_servers: 1, ..nereid_testkit::Options::new(b) }).await.unwrap();

    let ids = seed(&cloud).await;
    let admin_token = cloud.headnode.token.clone();
    let before = snapshot(&cloud).await;
    // The operator API's routes (the agents' are on the agent listener: tests/agent_trust.rs).
    let table: Vec<_> = routes().into_iter().filter(|r| !nereid_headnode::http::is_agent_route(r)).collect();
    assert!(table.len() >= 30);
    let mut checked = 0;
    for r in &table {
        let token = if r.auth == nereid_headnode::http::Auth::Join { cloud.headnode.join_token.clone() } else { admin_token.clone() };
        let m = &r.method;
        let path = full_path(&r.method, r.path, &ids);
        // Authentication.
        let (s, v) = expect_4xx(&cloud, m, &path, None, None, Some("Authorization")).await;
        assert_eq!((s, v["code"].as_str()), (401, Some("Unauthorized")));
        let (s, _) = expect_4xx(&cloud, m, &path, None, Some("not-the-token"), None).await;
        assert_eq!(s, 401);
        // Unknown query parameters are named.
        expect_4xx(&cloud, m, &with_query(&path, "zzz_unknown=1"), None, Some(&token), Some("zzz_unknown")).await;
        // Bad identifiers in the path.
        if r.path.contains("{uuid}") {
            let bad = r
                .path
                .replace("{uuid}", "not-a-uuid")
                .replace("{mac}", "x")
                .replace("{name}", "external")
                .replace("{ip}", "10.9.0.15")
                .replace("{vm}", &ids.vm);
            expect_4xx(&cloud, m, &bad, None, Some(&token), None).await;
        }
        if r.path.contains("{mac}") {
            expect_4xx(&cloud, m, &r.path.replace("{mac}", "zz:zz"), None, Some(&token), Some("MAC")).await;
        }
        if r.path.contains("{ip}") {
            expect_4xx(&cloud, m, &real_path(r.path, &ids).replace("10.9.0.15", "300.1.1.1"), None, Some(&token), Some("IPv4")).await;
        }
        if let BodyDoc::Fields(fields, _) = r.doc.body {
            // Malformed JSON, a non-object, an unknown field, oversize bodies.
            let (s, v) = expect_4xx(&cloud, m, &path, Some(b"{\"name\": ".to_vec()), Some(&token), Some("not valid JSON")).await;
            assert_eq!((s, v["code"].as_str()), (400, Some("InvalidContent")));
            expect_4xx(&cloud, m, &path, Some(b"[1,2]".to_vec()), Some(&token), Some("JSON object")).await;
            expect_4xx(&cloud, m, &path, Some(br#"{"zzz_field": 1}"#.to_vec()), Some(&token), Some("zzz_field")).await;
            let big = format!("{{\"description\": \"{}\"}}", "x".repeat(2 << 20));
            let (s, _) = expect_4xx(&cloud, m, &path, Some(big.into_bytes()), Some(&token), Some("limit")).await;
            assert_eq!(s, 413);
            // Each field with a value of the wrong type is named.
            for f in fields.iter().filter(|f| !f.read_only) {
                let wrong = match f.kind {
                    nereid_types::spec::Kind::Bool => json!("yes"),
                    nereid_types::spec::Kind::Object => json!(42),
                    // A custom kind is wrong as the opposite of what its schema takes (an
                    // object for a number, like a VLAN id; a number for an object, like routes).
                    nereid_types::spec::Kind::Custom { schema, .. } if schema()["type"] == "object" => json!(42),
                    _ => json!({"wrong": ["type"]}),
                };
                expect_4xx(&cloud, m, &path, Some(json!({f.name: wrong}).to_string().into_bytes()), Some(&token), Some(f.name)).await;
            }
            checked += 1;
        }
    }
    assert!(checked >= 12, "{checked} endpoints with bodies");
    // Arbitrary bytes and query strings never break the headnode.
    let junk: Vec<Vec<u8>> = vec![
        vec![0xff, 0xfe, 0x00],
        b"null".to_vec(),
        b"{\"a\":{\"b\":{\"c\":[[[[[[]]]]]]}}}".to_vec(),
        br#"{"name": null}"#.to_vec(),
        br#"{"description": "a\u0000b"}"#.to_vec(),
        noise(4096, 9),
        "{\"name\": \"\u{1F600}\"}".as_bytes().to_vec(),
    ];
    let queries = [
        "?limit=-1",
        "?limit=99999999999999999999",
        "?offset=x",
        "?state=%ff",
        "?name=%00",
        "?tag.=x",
        "?marker=2026-13-99",
        "?sort=;drop",
    ];
    for r in &table {
        if r.method == Method::DELETE {
            continue;
        }
        let path = full_path(&r.method, r.path, &ids);
        for q in queries {
            let resp = cloud.client.request(r.method.clone(), &with_query(&path, q.trim_start_matches('?'))).send().await.unwrap();
            assert!(resp.status().as_u16() < 500, "{} {path}{q}: {}", r.method, resp.status());
        }
        if matches!(r.doc.body, BodyDoc::None) || r.method == Method::GET {
            continue;
        }
        for body in &junk {
            let resp = cloud.client.request(r.method.clone(), &path).body(body.clone()).send().await.unwrap();
            let status = resp.status().as_u16();
            assert!(status < 500, "{} {path}: {status}: {}", r.method, resp.text().await.unwrap());
        }
    }
    // Nothing was written by any rejected request (the image upload of junk bytes
    // with no compression parameter was refused before reading).
    assert_eq!(snapshot(&cloud).await, before);
    // Unknown routes and methods are JSON too.
    let (s, v) = expect_4xx(&cloud, &Method::GET, "/nope", None, Some(&admin_token), Some("/nope")).await;
    assert_eq!((s, v["code"].as_str()), (404, Some("ResourceNotFound")));
    let (s, v) = expect_4xx(&cloud, &Method::PATCH, "/packages", None, Some(&admin_token), None).await;
    assert_eq!((s, v["code"].as_str()), (405, Some("BadMethod")));
    // And the headnode still answers.
    assert_eq!(cloud.client.get("/ping").await.unwrap()["ping"], "pong");
}
