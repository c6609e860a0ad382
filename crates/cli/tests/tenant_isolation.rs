//! Tenants see only their own world: every CloudAPI answer tenant alice can provoke —
//! bad input on every route, other tenants' and operators' objects by id, a provision the
//! full fleet cannot place, a provision that fails on its server, chosen addresses that
//! are not hers to choose — is checked against a list of fleet identifiers: every server's
//! uuid and hostname, the other accounts (uuid, login, email), their machines (uuid, name,
//! addresses, MACs), networks, packages and images, and the operators' admin network. The
//! one fleet identifier a tenant is shown is, as in Triton, the `compute_node` of its own
//! machines. Operators keep the full explanation on VMAPI and in the job.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use nereid_testkit::cloudapi::{Answer, Client as Tenant, Key, Signing};
use nereid_testkit::{Backend, Cloud, Options};
use serde_json::{Map, Value, json};

/// Identifiers alice must never read, each with what it is.
struct Fleet {
    tokens: Vec<(String, String)>,
}

impl Fleet {
    fn add(&mut self, what: &str, v: &Value) {
        if let Some(s) = v.as_str().filter(|s| !s.is_empty()) {
            self.tokens.push((s.to_string(), what.to_string()));
        }
    }

    /// The fleet identifiers in `text` that the request itself did not name.
    fn leaks(&self, text: &str, request: &str) -> Vec<String> {
        self.tokens.iter().filter(|(t, _)| !has_token(request, t) && has_token(text, t)).map(|(t, what)| format!("{what} {t}")).collect()
    }
}

/// Whether `needle` occurs in `hay` as a whole token (an address does not match a longer one).
fn has_token(hay: &str, needle: &str) -> bool {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '.' || c == '_';
    let mut from = 0;
    while let Some(i) = hay[from..].find(needle) {
        let (s, e) = (from + i, from + i + needle.len());
        let before =
            hay[..s].chars().next_back().is_none_or(|c| !word(c) || (c == '.' && !needle.starts_with(|d: char| d.is_ascii_digit())));
        let after =
            hay[e..].chars().next().is_none_or(|c| !word(c) || (c == '.' && !hay[e + 1..].starts_with(|d: char| d.is_ascii_digit())));
        if before && after {
            return true;
        }
        from = s + 1;
    }
    false
}

/// The body with the `compute_node` of alice's own machines taken out (Triton shows it).
fn scrub(v: &Value, own: &[String]) -> Value {
    match v {
        Value::Object(o) => {
            let mine = o.get("id").and_then(Value::as_str).is_some_and(|id| own.iter().any(|m| m == id));
            Value::Object(
                o.iter().filter(|(k, _)| !(mine && k.as_str() == "compute_node")).map(|(k, v)| (k.clone(), scrub(v, own))).collect(),
            )
        }
        Value::Array(a) => Value::Array(a.iter().map(|x| scrub(x, own)).collect()),
        other => other.clone(),
    }
}

struct World {
    cloud: Cloud,
    seed: nereid_testkit::Seed,
    alice: Tenant,
    bob: Tenant,
    fleet: Fleet,
    /// Alice's machines (their compute_node is hers to see).
    own: Vec<String>,
    checked: usize,
}

impl World {
    /// Sends as `t`, waiting out a rate limit (429) if one answers.
    async fn send(t: &Tenant, method: &str, path: &str, body: Option<&Value>) -> Answer {
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            let a = t.send(method, path, body, Signing::Good).await.unwrap();
            if a.status != 429 || Instant::now() > end {
                return a;
            }
            let wait = a.headers.get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).unwrap_or(1);
            tokio::time::sleep(Duration::from_secs(wait)).await;
        }
    }

    /// Sends as alice and checks the answer: no 5xx, no fleet identifier.
    async fn ask(&mut self, method: &str, path: &str, body: Option<&Value>) -> Answer {
        let a = Self::send(&self.alice, method, path, body).await;
        self.check(method, path, body, &a);
        a
    }

    fn check(&mut self, method: &str, path: &str, body: Option<&Value>, a: &Answer) {
        assert!(a.status < 500, "{method} {path}: {} {}", a.status, a.text);
        if method == "POST" && path == "/my/machines" && a.status == 201 {
            self.own.push(a.body["id"].as_str().unwrap().to_string());
        }
        let text = if a.body.is_null() { a.text.clone() } else { scrub(&a.body, &self.own).to_string() };
        let request = format!("{path} {}", body.map(Value::to_string).unwrap_or_default());
        let leaks = self.fleet.leaks(&text, &request);
        assert!(leaks.is_empty(), "{method} {path} {request}: the answer ({}) leaks {leaks:?}: {}", a.status, a.text);
        // Headers too (Location, x-… counts).
        for (k, v) in &a.headers {
            let v = v.to_str().unwrap_or_default();
            assert!(self.fleet.leaks(v, &request).is_empty(), "{method} {path}: header {k}: {v}");
        }
        self.checked += 1;
    }
}

async fn admin(cloud: &Cloud, path: &str, body: Value) -> Value {
    cloud.client.post(path, &body).await.unwrap_or_else(|e| panic!("POST {path}: {e}"))
}

async fn wait_running(t: &Tenant, id: &str) -> Value {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let m = World::send(t, "GET", &format!("/my/machines/{id}"), None).await;
        if m.body["state"] == "running" {
            return m.body;
        }
        assert!(Instant::now() < end, "{id} never ran: {}", m.text);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn create(t: &Tenant, body: Value) -> Answer {
    World::send(t, "POST", "/my/machines", Some(&body)).await
}

/// Two servers, alice and bob with a machine each, an operator, networks of each kind.
async fn world(o: Options) -> World {
    let cloud = Cloud::start_with(o.cloudapi_http()).await.unwrap();
    let seed = cloud.seed().await.unwrap();
    let url = cloud.headnode.cloudapi.as_ref().unwrap().url.clone();
    let mut accounts = Map::new();
    for (login, seed_byte, operator) in [("alice", 1u8, false), ("bob", 2, false), ("root.op", 9, true)] {
        let key = Key::from_seed(seed_byte);
        let a = admin(
            &cloud,
            "/accounts",
            json!({"login": login, "email": format!("{login}@example.com"), "operator": operator, "keys": [{"key": key.openssh()}]}),
        )
        .await;
        accounts.insert(login.into(), a);
    }
    let id = |login: &str| accounts[login]["uuid"].as_str().unwrap().to_string();
    let (bob_id, op_id) = (id("bob"), id("root.op"));
    let alice = Tenant::new(&url, "alice", Key::from_seed(1));
    let bob = Tenant::new(&url, "bob", Key::from_seed(2));
    let mut fleet = Fleet { tokens: Vec::new() };

    for s in cloud.client.get("/servers").await.unwrap().as_array().unwrap() {
        fleet.add("server uuid", &s["uuid"]);
        fleet.add("server hostname", &s["hostname"]);
    }
    fleet.add("bob's uuid", &json!(bob_id));
    fleet.add("bob's login", &json!("bob"));
    fleet.add("bob's email", &json!("bob@example.com"));
    fleet.add("bob's key", &json!(Key::from_seed(2).md5()));
    fleet.add("the operator's uuid", &json!(op_id));
    fleet.add("the operator's login", &json!("root.op"));

    let _ = cloud.client.post("/nic_tags", &json!({"name": "admin"})).await;
    let admin_net = admin(
        &cloud,
        "/networks",
        json!({"name": "admin-net", "nic_tag": "admin", "vlan_id": 0, "subnet": "10.99.0.0/24", "provision_start_ip": "10.99.0.10",
               "provision_end_ip": "10.99.0.200", "gateway": "10.99.0.1", "resolvers": ["10.99.0.2"], "owner_uuids": [op_id]}),
    )
    .await;
    for k in ["uuid", "name", "subnet", "gateway"] {
        fleet.add(&format!("the admin network's {k}"), &admin_net[k]);
    }
    let bob_net = admin(
        &cloud,
        "/networks",
        json!({"name": "bob-net", "nic_tag": "external", "vlan_id": 4, "subnet": "10.89.0.0/24", "provision_start_ip": "10.89.0.10",
               "provision_end_ip": "10.89.0.20", "gateway": "10.89.0.1", "owner_uuids": [bob_id]}),
    )
    .await;
    for k in ["uuid", "name", "subnet", "gateway"] {
        fleet.add(&format!("bob's network's {k}"), &bob_net[k]);
    }
    let bob_pkg = admin(
        &cloud,
        "/packages",
        json!({"name": "bob-secret-pkg", "version": "1.0.0", "max_physical_memory": 512, "quota": 10240, "vcpus": 1, "brand": "bhyve", "owner_uuids": [bob_id]}),
    )
    .await;
    fleet.add("bob's package", &bob_pkg["uuid"]);
    fleet.add("bob's package name", &bob_pkg["name"]);
    let bob_img = admin(
        &cloud,
        "/images",
        json!({"owner": bob_id, "name": "bob-secret-image", "version": "1", "type": "zvol", "os": "linux", "public": false, "image_size": 1024,
               "nic_driver": "virtio", "disk_driver": "virtio", "cpu_type": "host"}),
    )
    .await;
    fleet.add("bob's image", &bob_img["uuid"]);
    fleet.add("bob's image name", &bob_img["name"]);

    let mut w = World { cloud, seed, alice, bob, fleet, own: Vec::new(), checked: 0 };
    let a = create(&w.alice, json!({"image": w.seed.image, "package": "sample", "name": "a-1"})).await;
    assert_eq!(a.status, 201, "{}", a.text);
    let a_id = a.body["id"].as_str().unwrap().to_string();
    w.own.push(a_id.clone());
    let b = create(&w.bob, json!({"image": w.seed.image, "package": "sample", "name": "bob-vm-1"})).await;
    assert_eq!(b.status, 201, "{}", b.text);
    let b_id = b.body["id"].as_str().unwrap().to_string();
    wait_running(&w.alice, &a_id).await;
    let bm = wait_running(&w.bob, &b_id).await;
    w.fleet.add("bob's machine", &bm["id"]);
    w.fleet.add("bob's machine name", &bm["name"]);
    for n in bm["nics"].as_array().unwrap() {
        w.fleet.add("bob's address", &n["ip"]);
        w.fleet.add("bob's MAC", &n["mac"]);
        w.fleet.add("bob's MAC", &json!(n["mac"].as_str().unwrap().replace(':', "")));
    }
    w
}

fn ids(w: &World, names: &[&str]) -> Vec<String> {
    let find = |what: &str| w.fleet.tokens.iter().find(|(_, k)| k == what).map(|(t, _)| t.clone()).unwrap();
    names.iter().map(|n| find(n)).collect()
}

/// Every route, as alice, with bad input and with other accounts' objects by id.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_cloudapi_answer_to_a_tenant_is_free_of_fleet_identifiers() {
    let mut w = world(Options { sim_servers: 2, ..Options::new(Backend::Sqlite) }).await;
    let [bob_vm, bob_mac, bob_ip, bob_net, admin_net, bob_pkg, bob_img] = ids(
        &w,
        &[
            "bob's machine",
            "bob's MAC",
            "bob's address",
            "bob's network's uuid",
            "the admin network's uuid",
            "bob's package",
            "bob's image",
        ],
    )
    .try_into()
    .unwrap();
    let bob_mac = bob_mac.replace(':', "");
    let mine = w.own[0].clone();
    let bad = json!({"action": "nope", "package": bob_pkg, "image": bob_img, "name": "!!bad", "network": bob_net, "networks": [admin_net],
                     "reserved": "maybe", "key": "junk", "default_network": admin_net, "email": "not-an-email", "role": "x"});
    let routes = nereid_headnode::cloudapi::routes();
    for r in &routes {
        if r.path == "/--ping" {
            continue;
        }
        let method = r.method.as_str();
        let fill = |id: &str, mac: &str, ip: &str| {
            r.path
                .replace("{account}", "my")
                .replace("{id}", id)
                .replace("{key}", "role")
                .replace("{name}", "snap1")
                .replace("{mac}", mac)
                .replace("{ip}", ip)
                .replace("{vlan_id}", "2")
        };
        // Other accounts' and the operators' objects, with bad bodies and none.
        let others: Vec<&str> =
            if r.path.contains("{id}") { vec![&bob_vm, &bob_net, &admin_net, &bob_pkg, &bob_img, "nope"] } else { vec![""] };
        for id in others {
            for body in [Some(&bad), Some(&json!({})), None] {
                let path = fill(id, &bob_mac, &bob_ip);
                let a = w.ask(method, &path, body).await;
                if r.path.contains("{id}") && id == bob_vm {
                    assert!(matches!(a.status, 404 | 409), "{method} {path}: bob's machine is not alice's: {}", a.text);
                }
            }
        }
        // Her own machine: reads with other accounts' NICs and addresses; changes only with
        // bad input (they must be refused, so the machine stays as it is).
        if r.path.contains("{id}") {
            if method == "GET" || method == "HEAD" {
                let path = fill(&mine, &bob_mac, &bob_ip);
                w.ask(method, &path, None).await;
            } else if method != "DELETE" {
                w.ask(method, &fill(&mine, &bob_mac, &bob_ip), Some(&json!({"action": "nope"}))).await;
            }
        }
    }
    // Her own views of the world, in full.
    for path in ["/my", "/my/machines", &format!("/my/machines/{mine}"), "/my/networks", "/my/packages", "/my/images", "/my/keys"] {
        let a = w.ask("GET", path, None).await;
        assert_eq!(a.status, 200, "{path}: {}", a.text);
    }
    let public = w.seed.network.clone();
    let a = w.ask("GET", &format!("/my/networks/{public}/ips"), None).await;
    assert_eq!(a.body.as_array().map(Vec::len), Some(1), "only her own address: {}", a.text);
    let a = w.ask("GET", &format!("/my/networks/{public}/ips/{bob_ip}"), None).await;
    assert_eq!(a.status, 404, "{}", a.text);
    assert!(w.checked > 400, "walked {} answers", w.checked);

    // Bob's machine was not touched by any of it.
    let bm = World::send(&w.bob, "GET", &format!("/my/machines/{bob_vm}"), None).await;
    assert_eq!((bm.body["state"].as_str(), bm.body["name"].as_str()), (Some("running"), Some("bob-vm-1")), "{}", bm.text);
}

/// A full fleet: alice reads CloudAPI's InsufficientCapacity; VMAPI keeps every server's
/// reason (hostnames and the machines — bob's — that fill them) for operators.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_placement_the_fleet_cannot_take_names_no_server_and_no_other_machine() {
    let mut w = world(Options { sim_servers: 2, sim_ram_mib: 4096, ..Options::new(Backend::Sqlite) }).await;
    // Bob fills the fleet.
    let mut filled = false;
    for i in 2..20 {
        let b = create(&w.bob, json!({"image": w.seed.image, "package": "sample", "name": format!("bob-vm-{i}")})).await;
        if b.status == 409 {
            filled = true;
            break;
        }
        assert_eq!(b.status, 201, "{}", b.text);
        w.fleet.add("bob's machine", &b.body["id"]);
    }
    assert!(filled, "bob never filled the fleet");
    let a = create(&w.alice, json!({"image": w.seed.image, "package": "sample", "name": "a-2"})).await;
    w.check("POST", "/my/machines", None, &a);
    assert_eq!(
        (a.status, a.body.clone()),
        (409, json!({"code": "InsufficientCapacity", "message": "No compute resources available"})),
        "{}",
        a.text
    );
    // The same request through VMAPI: the operator's answer carries what alice's must not.
    let alice_id = w.cloud.client.get("/accounts/alice").await.unwrap()["uuid"].clone();
    let body = json!({"owner_uuid": alice_id, "brand": "bhyve", "billing_id": w.seed.package, "image_uuid": w.seed.image, "networks": [w.seed.network]});
    let e = w.cloud.client.post("/vms", &body).await.unwrap_err();
    let nereid_client::Error::Api { status, code, message, .. } = &e else { panic!("{e}") };
    assert_eq!((*status, code.as_str()), (409, "NoAllocatableServersError"));
    let named = w.fleet.leaks(message, "");
    assert!(named.iter().any(|l| l.starts_with("server hostname")), "the operator's answer names servers: {message}");
    assert!(named.iter().any(|l| l.starts_with("bob's machine")), "and the machines filling them: {message}");
}

/// Choosing addresses: only free ones inside the provisioning range of a network of her
/// own; an address another tenant holds is refused without naming who holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenant_chooses_only_free_addresses_in_the_range_of_its_own_networks() {
    let mut w = world(Options { sim_servers: 1, ..Options::new(Backend::Sqlite) }).await;
    let c = w.cloud.client.clone();
    let alice_id = c.get("/accounts/alice").await.unwrap()["uuid"].as_str().unwrap().to_string();
    let bob_id = c.get("/accounts/bob").await.unwrap()["uuid"].as_str().unwrap().to_string();
    let mine = admin(
        &w.cloud,
        "/networks",
        json!({"name": "alice-net", "nic_tag": "external", "vlan_id": 3, "subnet": "10.88.0.0/24", "provision_start_ip": "10.88.0.10",
               "provision_end_ip": "10.88.0.20", "gateway": "10.88.0.1", "resolvers": ["10.88.0.12"], "owner_uuids": [alice_id]}),
    )
    .await["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let shared = admin(
        &w.cloud,
        "/networks",
        json!({"name": "shared-net", "nic_tag": "external", "vlan_id": 5, "subnet": "10.87.0.0/24", "provision_start_ip": "10.87.0.10",
               "provision_end_ip": "10.87.0.20", "owner_uuids": [alice_id, bob_id]}),
    )
    .await["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    // An operator reserves an address of alice's network (NAPI may: operators place anything).
    c.put(&format!("/networks/{mine}/ips/10.88.0.15"), &json!({"reserved": true})).await.unwrap();
    // Bob takes an address on the shared network.
    let bob_vm = ids(&w, &["bob's machine"]).pop().unwrap();
    let n = World::send(&w.bob, "POST", &format!("/my/machines/{bob_vm}/nics"), Some(&json!({"network": shared}))).await;
    assert_eq!(n.status, 201, "{}", n.text);
    let bob_shared_ip = n.body["ip"].as_str().unwrap().to_string();
    w.fleet.add("bob's address", &json!(bob_shared_ip));

    let refused = |a: &Answer, text: &str| {
        assert_eq!((a.status, a.body["code"].as_str()), (409, Some("InvalidArgument")), "{text}: {}", a.text);
        assert!(a.body["message"].as_str().unwrap().contains(text), "{text}: {}", a.text);
    };
    let public = w.seed.network.clone();
    let cases: Vec<(String, &str, &str)> = vec![
        (mine.clone(), "10.88.0.30", "is not in the provisioning range"),
        (mine.clone(), "10.88.0.255", "is not in the provisioning range"),
        (mine.clone(), "10.88.0.1", "is not in the provisioning range"),
        (mine.clone(), "10.88.0.12", "is a resolver"),
        (mine.clone(), "10.88.0.15", "IP 10.88.0.15 is reserved"),
        (shared.clone(), &bob_shared_ip, "is already in use"),
        (public.clone(), "10.77.0.200", "cannot specify IP on a public network"),
    ];
    let vm = w.own[0].clone();
    for (net, ip, why) in &cases {
        let body =
            json!({"image": w.seed.image, "package": "sample", "name": "pinned", "networks": [{"ipv4_uuid": net, "ipv4_ips": [ip]}]});
        let a = w.ask("POST", "/my/machines", Some(&body)).await;
        refused(&a, why);
        let body = json!({"network": {"ipv4_uuid": net, "ipv4_ips": [ip]}});
        let a = w.ask("POST", &format!("/my/machines/{vm}/nics"), Some(&body)).await;
        refused(&a, why);
    }
    let admin_net = ids(&w, &["the admin network's uuid"]).pop().unwrap();
    let body = json!({"network": {"ipv4_uuid": admin_net, "ipv4_ips": ["10.99.0.50"]}});
    let a = w.ask("POST", &format!("/my/machines/{vm}/nics"), Some(&body)).await;
    assert_eq!(a.status / 100, 4, "{}", a.text);
    // Nothing was written by any of it.
    let list = World::send(&w.alice, "GET", "/my/machines", None).await;
    assert_eq!(list.body.as_array().unwrap().len(), 1, "{}", list.text);
    assert_eq!(c.get(&format!("/networks/{mine}/ips/10.88.0.30")).await.unwrap()["free"], true);

    // A free address in the range of her own network: hers.
    let body = json!({"image": w.seed.image, "package": "sample", "name": "pinned", "networks": [{"ipv4_uuid": mine, "ipv4_ips": ["10.88.0.16"]}]});
    let a = w.ask("POST", "/my/machines", Some(&body)).await;
    assert_eq!(a.status, 201, "{}", a.text);
    let id = a.body["id"].as_str().unwrap().to_string();
    let m = wait_running(&w.alice, &id).await;
    assert_eq!(m["primaryIp"], "10.88.0.16", "{m}");
    // Operators keep the right to place any address (here: outside the range, via VMAPI).
    let body = json!({"owner_uuid": alice_id, "brand": "bhyve", "billing_id": w.seed.package, "image_uuid": w.seed.image,
                      "networks": [{"uuid": mine, "ip": "10.88.0.30"}]});
    let r = c.post("/vms", &body).await.unwrap();
    let job = w.cloud.wait_job(r["job_uuid"].as_str().unwrap()).await.unwrap();
    assert_eq!(job["execution"], "succeeded", "{job}");
}

/// A provision that fails on its server: alice sees a failed machine and CloudAPI's
/// codes; the reason (which server, at what address) stays in the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_provision_that_fails_on_its_server_tells_the_tenant_nothing_of_the_fleet() {
    let mut o = Options { sim_servers: 1, ..Options::new(Backend::Sqlite) };
    o.app.step_deadline = Duration::from_secs(3);
    o.app.provision_deadline = Duration::from_secs(3);
    let mut w = world(o).await;
    // The compute node goes away; the headnode does not know yet.
    w.cloud.agent.take().unwrap().shutdown().await;
    let a = w.ask("POST", "/my/machines", Some(&json!({"image": w.seed.image, "package": "sample", "name": "doomed"}))).await;
    assert_eq!(a.status, 201, "{}", a.text);
    let id = a.body["id"].as_str().unwrap().to_string();
    let end = Instant::now() + Duration::from_secs(90);
    loop {
        let m = w.ask("GET", &format!("/my/machines/{id}"), None).await;
        if m.body["state"] == "failed" {
            break;
        }
        assert!(Instant::now() < end, "the provision never failed: {}", m.text);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for action in ["start", "stop", "reboot", "rename"] {
        let a = w.ask("POST", &format!("/my/machines/{id}"), Some(&json!({"action": action, "package": "sample", "name": "x"}))).await;
        assert_eq!((a.status, a.body["code"].as_str()), (409, Some("InvalidState")), "{action}: {}", a.text);
    }
    let audit = w.ask("GET", &format!("/my/machines/{id}/audit"), None).await;
    assert_eq!((audit.body[0]["action"].as_str(), audit.body[0]["success"].as_str()), (Some("provision"), Some("no")), "{}", audit.text);
    for path in ["/my/machines", &format!("/my/machines/{id}/nics"), &format!("/my/machines/{id}/snapshots")] {
        w.ask("GET", path, None).await;
    }
    // The operator has the reason, with the server in it.
    let vm = w.cloud.client.get(&format!("/vms/{id}")).await.unwrap();
    let why = vm["error"].as_str().unwrap_or_default().to_string();
    assert!(!w.fleet.leaks(&why, "").is_empty() || why.contains("unreachable"), "the operator's record says why: {vm}");
}
