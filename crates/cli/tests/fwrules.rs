//! Firewall rules' control plane: the admin API (`/fwrules`, FWAPI's shapes) and
//! `nereid admin fwrule`, CloudAPI's `/:login/fwrules` through a signed client (tenant
//! isolation, read-only global rules, Triton's errors), the real `triton` CLI
//! (`fwrule …`, `instance fwrules`, `instance enable-firewall`), and the policy each
//! server is computed (`GET /servers/:uuid/netpolicy`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use nereid_testkit::Options;
use nereid_testkit::cloudapi::{Client as Signed, Key};
use nereid_testkit::triton::KeyType;
use serde_json::{Value, json};

const WEB80: &str = r#"FROM any TO tag "role" = "web" ALLOW tcp PORT 80"#;

/// A cloud with one simulated server, CloudAPI over HTTP, the seed, and accounts alice
/// and bob (signing keys from seeds 1 and 2); returns alice's and bob's UUIDs.
async fn cloud(backend: Backend) -> (Cloud, nereid_testkit::Seed, String, String) {
    let cloud = Cloud::start_with(Options { sim_servers: 1, ..Options::new(backend) }.cloudapi_http()).await.unwrap();
    let seed = cloud.seed().await.unwrap();
    let (alice, bob) = common::alice_and_bob(&cloud).await;
    (cloud, seed, alice, bob)
}

/// A VM of `owner` with `tags`, running.
async fn vm(cloud: &Cloud, seed: &nereid_testkit::Seed, owner: &str, alias: &str, tags: Value) -> String {
    let body = json!({"owner_uuid": owner, "brand": "bhyve", "billing_id": seed.package, "image_uuid": seed.image,
                      "networks": [seed.network], "alias": alias, "tags": tags});
    let (vm, job) = cloud.create_vm(&body).await.unwrap();
    assert_eq!(cloud.wait_job(&job).await.unwrap()["execution"], "succeeded");
    vm
}

fn json_out(o: &std::process::Output) -> Value {
    assert!(o.status.success(), "nereid failed: {}{}", stdout(o), stderr(o));
    serde_json::from_str(&stdout(o)).unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(o)))
}

both_backends!(operators_manage_every_accounts_rules_and_global_ones, tenants_see_their_own_rules_and_global_ones_read_only);

async fn operators_manage_every_accounts_rules_and_global_ones(backend: Backend) {
    let (cloud, seed, alice, _bob) = cloud(backend).await;
    let web = vm(&cloud, &seed, &alice, "web-1", json!({"role": "web"})).await;
    let db = vm(&cloud, &seed, &alice, "db-1", json!({"role": "db"})).await;

    // nereid admin fwrule create: for an account by login, and a global one.
    let r = json_out(&nereid_async(&cloud, &["admin", "--json", "fwrule", "create", "--owner", "alice", "-D", "web", WEB80]).await);
    let id = r["uuid"].as_str().unwrap().to_string();
    assert_eq!((r["owner_uuid"].as_str(), r["enabled"].as_bool(), r["global"].as_bool()), (Some(alice.as_str()), Some(true), Some(false)));
    assert_eq!((r["description"].as_str(), r["log"].as_bool()), (Some("web"), Some(false)));
    assert!(r["rule"].as_str().unwrap().contains("PORT 80"), "{r}");
    let g = json_out(
        &nereid_async(&cloud, &["admin", "--json", "fwrule", "create", "--global", "--disabled", "FROM any TO all vms ALLOW tcp PORT 22"])
            .await,
    );
    let gid = g["uuid"].as_str().unwrap().to_string();
    assert_eq!((g["global"].as_bool(), g["enabled"].as_bool(), g.get("owner_uuid")), (Some(true), Some(false), None), "{g}");
    let o = nereid_async(&cloud, &["admin", "fwrule", "create", WEB80]).await;
    assert!(!o.status.success() && stderr(&o).contains("--owner"), "{}", stderr(&o));

    // Lists, as a table and filtered.
    let o = nereid_async(&cloud, &["admin", "fwrule", "list"]).await;
    let table = stdout(&o);
    assert!(o.status.success() && table.contains("RULE") && table.contains(&id) && table.contains(&gid), "{table}{}", stderr(&o));
    let mine = json_out(&nereid_async(&cloud, &["admin", "--json", "fwrule", "list", "--owner", &alice]).await);
    assert_eq!(mine.as_array().unwrap().iter().map(|r| r["uuid"].as_str().unwrap()).collect::<Vec<_>>(), vec![id.as_str()]);
    let globals = json_out(&nereid_async(&cloud, &["admin", "--json", "fwrule", "list", "--global"]).await);
    assert_eq!(globals.as_array().unwrap().iter().map(|r| r["uuid"].as_str().unwrap()).collect::<Vec<_>>(), vec![gid.as_str()]);
    let disabled = cloud.client.get("/fwrules?enabled=false").await.unwrap();
    assert_eq!(disabled.as_array().unwrap().len(), 1, "{disabled}");

    // Get, update, disable, enable.
    assert_eq!(json_out(&nereid_async(&cloud, &["admin", "--json", "fwrule", "get", &id]).await)["uuid"], json!(id));
    let u = json_out(&nereid_async(&cloud, &["admin", "--json", "fwrule", "update", &id, "description=front end", "log=true"]).await);
    assert_eq!((u["description"].as_str(), u["log"].as_bool()), (Some("front end"), Some(true)), "{u}");
    let d = json_out(&nereid_async(&cloud, &["admin", "--json", "fwrule", "disable", &id]).await);
    assert_eq!(d["enabled"], false);
    let e = json_out(&nereid_async(&cloud, &["admin", "--json", "fwrule", "enable", &id]).await);
    assert_eq!(e["enabled"], true);
    let bad = api_err(cloud.client.put(&format!("/fwrules/{id}"), &json!({"owner_uuid": _bob})).await, 422, "InvalidParameters");
    assert_eq!(bad["errors"][0]["field"], "owner_uuid", "{bad}");

    // The VMs a rule names, the rules that name a VM.
    let o = nereid_async(&cloud, &["admin", "fwrule", "vms", &id]).await;
    let vms = stdout(&o);
    assert!(o.status.success() && vms.contains(&web) && !vms.contains(&db), "{vms}{}", stderr(&o));
    let of_web = cloud.client.get(&format!("/firewalls/vms/{web}")).await.unwrap();
    assert!(of_web.as_array().unwrap().iter().any(|r| r["uuid"] == json!(id)), "{of_web}");
    let of_db = cloud.client.get(&format!("/firewalls/vms/{db}")).await.unwrap();
    assert!(!of_db.as_array().unwrap().iter().any(|r| r["uuid"] == json!(id)), "{of_db}");

    // Bad input names the field; a bad rule text carries the parser's message.
    let bad = api_err(
        cloud.client.post("/fwrules", &json!({"owner_uuid": alice, "rule": "FROM any TO nowhere ALLOW tcp PORT 80"})).await,
        422,
        "InvalidParameters",
    );
    assert_eq!(bad["errors"][0]["field"], "rule", "{bad}");
    assert!(!bad["errors"][0]["message"].as_str().unwrap().is_empty(), "{bad}");
    let bad = api_err(cloud.client.post("/fwrules", &json!({"rule": WEB80})).await, 422, "InvalidParameters");
    assert_eq!(bad["errors"][0]["field"], "owner_uuid", "{bad}");
    let bad =
        api_err(cloud.client.post("/fwrules", &json!({"owner_uuid": uuid::Uuid::new_v4(), "rule": WEB80})).await, 422, "InvalidParameters");
    assert!(bad["errors"][0]["message"].as_str().unwrap().contains("does not exist"), "{bad}");
    let before = cloud.client.get("/fwrules").await.unwrap();
    assert_eq!(before.as_array().unwrap().len(), 2, "nothing was written on refused requests: {before}");

    // The policy the server is computed: web-1 has no firewall until it is enabled.
    let server = cloud.client.get(&format!("/vms/{web}")).await.unwrap()["server_uuid"].as_str().unwrap().to_string();
    let p = cloud.client.get(&format!("/servers/{server}/netpolicy")).await.unwrap();
    assert_eq!(p["digest"].as_str().unwrap().len(), 64, "{p}");
    assert!(p["firewalls"].get(&web).is_none(), "{p}");
    let j = cloud.client.post(&format!("/vms/{web}?action=update"), &json!({"firewall_enabled": true})).await.unwrap();
    cloud.wait_job(j["job_uuid"].as_str().unwrap()).await.unwrap();
    let q = cloud.client.get(&format!("/servers/{server}/netpolicy")).await.unwrap();
    let entries = q["firewalls"][&web].as_array().unwrap_or_else(|| panic!("web-1's firewall: {q}"));
    assert!(entries.iter().any(|e| e["rule"] == json!(id)), "{q}");
    assert!(q["firewalls"].get(&db).is_none(), "db-1's firewall is off: {q}");
    assert_ne!(p["digest"], q["digest"]);

    // Delete.
    let o = nereid_async(&cloud, &["admin", "fwrule", "delete", &id]).await;
    assert!(o.status.success() && stdout(&o).contains(&format!("deleted fwrule {id}")), "{}{}", stdout(&o), stderr(&o));
    api_err(cloud.client.get(&format!("/fwrules/{id}")).await, 404, "ResourceNotFound");
    let r = cloud.client.get(&format!("/servers/{server}/netpolicy")).await.unwrap();
    assert!(r["firewalls"][&web].as_array().unwrap().iter().all(|e| e["rule"] != json!(id)), "{r}");
}

async fn tenants_see_their_own_rules_and_global_ones_read_only(backend: Backend) {
    let (cloud, seed, alice_id, _) = cloud(backend).await;
    let url = cloud.headnode.cloudapi.as_ref().unwrap().url.clone();
    let (alice, bob) = (Signed::new(&url, "alice", Key::from_seed(1)), Signed::new(&url, "bob", Key::from_seed(2)));
    let web = vm(&cloud, &seed, &alice_id, "web-1", json!({"role": "web"})).await;
    let db = vm(&cloud, &seed, &alice_id, "db-1", json!({"role": "db"})).await;

    let c = alice.post("/my/fwrules", &json!({"rule": WEB80, "enabled": true, "description": "web"})).await.unwrap();
    assert_eq!(c.status, 201, "{}", c.text);
    let id = c.body["id"].as_str().unwrap().to_string();
    assert_eq!(
        (c.body["enabled"].as_bool(), c.body["log"].as_bool(), c.body["description"].as_str()),
        (Some(true), Some(false), Some("web"))
    );
    assert!(c.body.get("global").is_none() && c.body.get("owner_uuid").is_none(), "{}", c.body);
    let keys: Vec<&String> = c.body.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 5, "id, enabled, rule, log, description: {keys:?}");
    // The CLI's defaults: enabled is false unless given.
    let off = alice.post("/my/fwrules", &json!({"rule": "FROM any TO all vms ALLOW tcp PORT 443"})).await.unwrap();
    assert_eq!((off.status, off.body["enabled"].as_bool()), (201, Some(false)), "{}", off.text);
    let off_id = off.body["id"].as_str().unwrap().to_string();

    // An operator's global rule.
    let g = cloud
        .client
        .post("/fwrules", &json!({"global": true, "enabled": true, "rule": "FROM any TO all vms ALLOW icmp TYPE 8 CODE 0"}))
        .await
        .unwrap();
    let gid = g["uuid"].as_str().unwrap().to_string();

    let list = alice.get("/my/fwrules").await.unwrap();
    let ids: Vec<&str> = list.body.as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert!(ids.contains(&id.as_str()) && ids.contains(&off_id.as_str()) && ids.contains(&gid.as_str()), "{}", list.text);
    let blist = bob.get("/my/fwrules").await.unwrap();
    let bids: Vec<&str> = blist.body.as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(bids, vec![gid.as_str()], "bob sees the global rule only: {}", blist.text);
    assert_eq!(blist.body[0]["global"], true);

    // Bob cannot see or change alice's rule: 404, as if it did not exist.
    let base = format!("/my/fwrules/{id}");
    for (m, p, b) in [
        ("GET", base.clone(), None),
        ("POST", base.clone(), Some(json!({"description": "mine now"}))),
        ("POST", format!("{base}/enable"), Some(json!({}))),
        ("POST", format!("{base}/disable"), Some(json!({}))),
        ("GET", format!("{base}/machines"), None),
        ("DELETE", base.clone(), None),
    ] {
        let a = bob.send(m, &p, b.as_ref(), nereid_testkit::cloudapi::Signing::Good).await.unwrap();
        assert_eq!((a.status, a.body["code"].as_str()), (404, Some("ResourceNotFound")), "bob {m} {p}: {}", a.text);
    }
    let a = bob.get(&format!("/my/machines/{web}/fwrules")).await.unwrap();
    assert_eq!(a.status, 404, "{}", a.text);
    assert_eq!(alice.get(&base).await.unwrap().body["description"], "web", "unchanged");
    let a = bob.get("/alice/fwrules").await.unwrap();
    assert_eq!(a.status, 403, "{}", a.text);

    // The global rule is read-only to tenants.
    let gbase = format!("/my/fwrules/{gid}");
    assert_eq!(alice.get(&gbase).await.unwrap().body["global"], true);
    for (m, p, b) in [
        ("POST", gbase.clone(), Some(json!({"description": "mine"}))),
        ("POST", format!("{gbase}/disable"), Some(json!({}))),
        ("DELETE", gbase.clone(), None),
    ] {
        let a = alice.send(m, &p, b.as_ref(), nereid_testkit::cloudapi::Signing::Good).await.unwrap();
        assert_eq!((a.status, a.body["code"].as_str()), (409, Some("InvalidArgument")), "alice {m} {p}: {}", a.text);
        assert!(a.body["message"].as_str().unwrap().contains("global rules cannot be modified"), "{}", a.text);
    }
    assert_eq!(cloud.client.get(&format!("/fwrules/{gid}")).await.unwrap()["enabled"], true);

    // Update, enable, disable.
    let u = alice.post(&base, &json!({"rule": "FROM any TO tag \"role\" = \"web\" ALLOW tcp PORT 8080", "log": true})).await.unwrap();
    assert_eq!(u.status, 200, "{}", u.text);
    assert!(u.body["rule"].as_str().unwrap().contains("8080") && u.body["log"] == true, "{}", u.text);
    let d = alice.post(&format!("{base}/disable"), &json!({})).await.unwrap();
    assert_eq!((d.status, d.body["enabled"].as_bool()), (200, Some(false)), "{}", d.text);
    let e = alice.post(&format!("{base}/enable"), &json!({})).await.unwrap();
    assert_eq!((e.status, e.body["enabled"].as_bool()), (200, Some(true)), "{}", e.text);

    // Machines a rule affects, rules that affect a machine.
    let ms = alice.get(&format!("{base}/machines")).await.unwrap();
    let names: Vec<&str> = ms.body.as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["web-1"], "{}", ms.text);
    assert_eq!(ms.body[0]["id"], json!(web));
    assert_eq!(ms.body[0]["tags"]["role"], "web", "rendered as the machine list renders it");
    let rs = alice.get(&format!("/my/machines/{web}/fwrules")).await.unwrap();
    assert!(rs.body.as_array().unwrap().iter().any(|r| r["id"] == json!(id)), "{}", rs.text);
    let rs = alice.get(&format!("/my/machines/{db}/fwrules")).await.unwrap();
    assert!(!rs.body.as_array().unwrap().iter().any(|r| r["id"] == json!(id)), "{}", rs.text);

    // Triton's errors.
    let a = alice.post("/my/fwrules", &json!({"rule": "FROM any TO nowhere ALLOW tcp PORT 80", "enabled": true})).await.unwrap();
    assert_eq!((a.status, a.body["code"].as_str()), (409, Some("InvalidArgument")), "{}", a.text);
    assert!(a.body["message"].as_str().unwrap().starts_with("rule: "), "{}", a.text);
    let a = alice.post("/my/fwrules", &json!({"enabled": true})).await.unwrap();
    assert_eq!((a.status, a.body["code"].as_str()), (409, Some("MissingParameter")), "{}", a.text);
    let a = alice.post("/my/fwrules", &json!({"rule": WEB80, "enabled": "maybe"})).await.unwrap();
    assert_eq!((a.status, a.body["code"].as_str()), (409, Some("InvalidArgument")), "{}", a.text);
    let a = alice.get("/my/fwrules/not-a-uuid").await.unwrap();
    assert_eq!(a.status, 404, "{}", a.text);
    assert_eq!(alice.get("/my/fwrules").await.unwrap().body.as_array().unwrap().len(), 3, "nothing was written on refused requests");

    let a = alice.send("DELETE", &base, None, nereid_testkit::cloudapi::Signing::Good).await.unwrap();
    assert_eq!(a.status, 204, "{}", a.text);
    assert_eq!(alice.get(&base).await.unwrap().status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_triton_cli_manages_rules_and_instance_firewalls() {
    let cloud = Cloud::start_with(Options { sim_servers: 1, ..Options::new(Backend::Sqlite) }.cloudapi_http()).await.unwrap();
    cloud.seed().await.unwrap();
    let (_tenant, t) = cloud.triton_user("alice", KeyType::Ed25519).await.unwrap();
    t.ok_async(&["instance", "create", "-w", "tiny", "sample", "--name", "web-1", "-t", "role=web"]).await;
    t.ok_async(&["instance", "create", "-w", "tiny", "sample", "--name", "db-1", "-t", "role=db"]).await;

    let out = t.ok_async(&["fwrule", "create", WEB80]).await;
    assert!(out.starts_with("Created firewall rule ") && !out.contains("disabled"), "{out}");
    let id = out.trim().trim_start_matches("Created firewall rule ").to_string();
    let short = &id[..8];
    let list = t.ok_async(&["fwrule", "list"]).await;
    assert!(list.contains("SHORTID") && list.contains(short) && list.contains("PORT 80"), "{list}");
    let r = t.json_async(&["fwrule", "get", &id]).await;
    assert_eq!((r["id"].as_str(), r["enabled"].as_bool(), r["log"].as_bool()), (Some(id.as_str()), Some(true), Some(false)), "{r}");

    let out = t.ok_async(&["fwrule", "update", &id, "description=front end"]).await;
    assert!(out.contains(&format!("Updated firewall rule {id}")), "{out}");
    assert_eq!(t.json_async(&["fwrule", "get", short]).await["description"], "front end");
    let out = t.ok_async(&["fwrule", "disable", &id]).await;
    assert!(out.contains(&format!("Disabled firewall rule {id}")), "{out}");
    assert_eq!(t.json_async(&["fwrule", "get", &id]).await["enabled"], false);
    let out = t.ok_async(&["fwrule", "enable", &id]).await;
    assert!(out.contains(&format!("Enabled firewall rule {id}")), "{out}");
    assert_eq!(t.json_async(&["fwrule", "get", &id]).await["enabled"], true);

    let inst = t.ok_async(&["fwrule", "instances", &id]).await;
    assert!(inst.contains("web-1") && !inst.contains("db-1"), "{inst}");
    let rules = t.ok_async(&["instance", "fwrules", "web-1"]).await;
    assert!(rules.contains(short), "{rules}");
    let rules = t.ok_async(&["instance", "fwrules", "db-1"]).await;
    assert!(!rules.contains(short), "{rules}");

    assert_eq!(t.json_async(&["instance", "get", "web-1"]).await["firewall_enabled"], false);
    let out = t.ok_async(&["instance", "enable-firewall", "-w", "web-1"]).await;
    assert!(out.contains("Enabled firewall for instance \"web-1\""), "{out}");
    assert_eq!(t.json_async(&["instance", "get", "web-1"]).await["firewall_enabled"], true);
    let out = t.ok_async(&["instance", "disable-firewall", "-w", "web-1"]).await;
    assert!(out.contains("Disabled firewall for instance \"web-1\""), "{out}");
    assert_eq!(t.json_async(&["instance", "get", "web-1"]).await["firewall_enabled"], false);

    let (code, err) = t.fail_async(&["fwrule", "create", "FROM any TO nowhere ALLOW tcp PORT 80"]).await;
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("error (InvalidArgument): rule: "), "{err}");

    let out = t.ok_async(&["fwrule", "delete", "-f", &id]).await;
    assert!(out.contains(&format!("Deleted rule {id}")), "{out}");
    let (code, err) = t.fail_async(&["fwrule", "get", &id]).await;
    assert_eq!(code, Some(3), "{err}");
}

/// Waits until the server reports (in its heartbeat) the digest of the policy the
/// headnode computes for it now, and returns that policy.
async fn converged(cloud: &Cloud, server: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let want = cloud.client.get(&format!("/servers/{server}/netpolicy")).await.unwrap();
        let got = cloud.client.get(&format!("/servers/{server}")).await.unwrap();
        if done(&want) && got["netpolicy_digest"] == want["digest"] {
            return want;
        }
        assert!(
            std::time::Instant::now() < end,
            "server {server} never applied {what}: it reports {}, the headnode computes {want}",
            got["netpolicy_digest"]
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn servers_apply_the_policy_the_headnode_computes() {
    let cloud = Cloud::start_with(Options { sim_servers: 1, ..Options::new(Backend::Sqlite) }.cloudapi_http()).await.unwrap();
    cloud.seed().await.unwrap();
    let (_tenant, t) = cloud.triton_user("alice", KeyType::Ed25519).await.unwrap();
    t.ok_async(&["instance", "create", "-w", "tiny", "sample", "--name", "web-1", "-t", "role=web"]).await;
    let m = t.json_async(&["instance", "get", "web-1"]).await;
    let (vm, server) = (m["id"].as_str().unwrap().to_string(), m["compute_node"].as_str().unwrap().to_string());
    let first = converged(&cloud, &server, "the first policy", |_| true).await;
    assert!(first["firewalls"].get(&vm).is_none(), "{first}");

    t.ok_async(&["instance", "enable-firewall", "-w", "web-1"]).await;
    let p = converged(&cloud, &server, "web-1's firewall", |p| p["firewalls"].get(&vm).is_some()).await;
    assert_eq!(p["firewalls"][&vm], json!([]), "no rule yet: inbound blocked, nothing allowed: {p}");

    let out = t.ok_async(&["fwrule", "create", WEB80]).await;
    let id = out.trim().trim_start_matches("Created firewall rule ").to_string();
    let has_rule = |p: &Value| p["firewalls"][&vm].as_array().is_some_and(|es| es.iter().any(|e| e["rule"] == json!(id)));
    let p = converged(&cloud, &server, "the new rule", has_rule).await;
    let e = p["firewalls"][&vm].as_array().unwrap().iter().find(|e| e["rule"] == json!(id)).unwrap().clone();
    assert_eq!((e["direction"].as_str(), e["action"].as_str(), e["protocol"].as_str()), (Some("in"), Some("allow"), Some("tcp")), "{e}");
    assert_eq!(e["ports"], json!([{"start": 80, "end": 80}]), "{e}");

    // Retagged, the VM is no longer named; disabled, neither.
    t.ok_async(&["instance", "tag", "set", "-w", "web-1", "role=db"]).await;
    converged(&cloud, &server, "the retagged VM's policy", |p| !has_rule(p)).await;
    t.ok_async(&["instance", "tag", "set", "-w", "web-1", "role=web"]).await;
    converged(&cloud, &server, "the tag back", has_rule).await;
    t.ok_async(&["fwrule", "disable", &id]).await;
    converged(&cloud, &server, "the disabled rule", |p| !has_rule(p)).await;
    t.ok_async(&["instance", "disable-firewall", "-w", "web-1"]).await;
    converged(&cloud, &server, "no firewall", |p| p["firewalls"].get(&vm).is_none()).await;
}
