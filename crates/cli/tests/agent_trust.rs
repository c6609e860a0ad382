//! The agent trust boundary (issue 11): agents and headnodes talk over mutual TLS with
//! certificates from the headnode CA; a server UUID that already exists cannot be taken by
//! another key without the operator's approval; a revoked server stays revoked; and what
//! crosses the loopback between agent and headnode is TLS, never plaintext HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nereid_agent::{Agent, BackendKind};
use nereid_testkit::{Backend, Cloud, Options};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Runs `f` until it answers `Some`, for up to `secs`.
async fn eventually<T, F: std::future::Future<Output = Option<T>>>(secs: u64, what: &str, mut f: impl FnMut() -> F) -> T {
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn agent_config(cloud: &Cloud, dir: &Path, o: &Options) -> nereid_agent::Config {
    nereid_agent::Config {
        headnode_url: cloud.headnode.agent_url.clone(),
        join_token: cloud.headnode.join_token_full.clone(),
        data_dir: dir.to_path_buf(),
        backend: BackendKind::Sim { servers: 1, cpus: 8, ram_mib: 16_384, disk_gib: 100, delays: o.sim_delays },
        listen: "127.0.0.1:0".parse().unwrap(),
        advertise_url: None,
        heartbeat: Duration::from_millis(300),
        nic_tags: Vec::new(),
        migration_listen: None,
        no_exec: false,
    }
}

async fn trust(cloud: &Cloud, server: &str) -> Value {
    cloud.client.get(&format!("/servers/{server}/trust")).await.unwrap()
}

/// A client holding `cert` (a PEM certificate for `key`) that trusts `ca` for `role_name`.
fn mtls_client(
    ca: &rustls::pki_types::CertificateDer<'static>,
    role_name: &str,
    identity: Option<(&str, &nereid_trust::NodeKey)>,
) -> reqwest::Client {
    let verifier = nereid_trust::verify::RoleServer::new(ca, role_name, None).unwrap();
    let config = nereid_trust::configs::client(verifier, identity.map(|(c, k)| (c, k.private_der()))).unwrap();
    reqwest::Client::builder().use_preconfigured_tls(config).timeout(Duration::from_secs(10)).build().unwrap()
}

fn heartbeat_body() -> Value {
    json!({"usage": {"ram_total_mib": 1, "ram_used_mib": 0, "disk_total_mib": 1, "disk_used_mib": 0, "load1": 0.0}, "vms": []})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stolen_server_uuid_waits_for_approval_and_a_revoked_server_gets_nothing() {
    let o = Options { sim_servers: 1, ..Options::new(Backend::Sqlite) };
    let cloud = Cloud::start_with(o.clone()).await.unwrap();
    let seed = cloud.seed().await.unwrap();
    let real = cloud.agent.as_ref().unwrap();
    let uuid = real.nodes[0].uuid.to_string();
    let real_pin = real.credentials.key().pin();
    assert_eq!(trust(&cloud, &uuid).await["key_sha256"], real_pin.as_str());

    // The agent's key material: 0600 files in a 0700 directory.
    let tls = real.credentials.dir();
    assert_eq!(std::fs::metadata(tls).unwrap().permissions().mode() & 0o777, 0o700);
    for f in std::fs::read_dir(tls).unwrap() {
        let f = f.unwrap();
        assert_eq!(f.metadata().unwrap().permissions().mode() & 0o777, 0o600, "{}", f.path().display());
    }
    assert!(tls.join("agent-key.pem").exists() && tls.join("ca.pem").exists());

    // An impostor: a fresh data directory with a copy of the real server's identity.
    let server_generation = || async { cloud.headnode.app.store.get("servers", &uuid).await.unwrap().unwrap().generation };
    let registered = server_generation().await;
    let stolen = tempfile::tempdir().unwrap();
    let sim0 = stolen.path().join("sim/0");
    std::fs::create_dir_all(&sim0).unwrap();
    let real_dir = cloud.data_dir.parent().unwrap().join("agent/sim/0");
    std::fs::copy(real_dir.join("server.json"), sim0.join("server.json")).unwrap();
    let cfg = agent_config(&cloud, stolen.path(), &o);
    let impostor = tokio::spawn(nereid_agent::start(cfg));
    let pending = eventually(20, "the impostor's join to wait for approval", || async {
        let t = trust(&cloud, &uuid).await;
        (t["pending_join"]["key_sha256"].is_string()).then_some(t)
    })
    .await;
    assert_eq!(pending["state"], "active");
    assert_eq!(pending["key_sha256"], real_pin.as_str(), "the real server keeps its key: {pending}");
    assert_ne!(pending["pending_join"]["key_sha256"], real_pin.as_str());
    // The real server keeps working: it runs a new VM and reports in.
    let (vm, job) = cloud.create_vm(&seed.vm_body("kept")).await.unwrap();
    let j = cloud.wait_job(&job).await.unwrap();
    assert_eq!(j["execution"], "succeeded", "{j}");
    assert_eq!(cloud.client.get(&format!("/vms/{vm}")).await.unwrap()["server_uuid"], uuid.as_str());
    assert_eq!(cloud.client.get(&format!("/servers/{uuid}")).await.unwrap()["status"], "running");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!impostor.is_finished(), "the impostor got nothing by itself");
    // Its heartbeats were never refused meanwhile (the waiting join changed its trust
    // record, not its key): it never had to join and register again.
    assert_eq!(server_generation().await, registered, "the real server registered again");
    assert_eq!(trust(&cloud, &uuid).await["key_sha256"], real_pin.as_str());

    // The operator sees the waiting join and approves it (the CLI): the waiting agent gets
    // its certificate and the server is its.
    let o = common::nereid_async(&cloud, &["admin", "--json", "server", "trust", &uuid]).await;
    let shown: Value = serde_json::from_str(&common::stdout(&o)).unwrap();
    assert_eq!(shown["pending_join"]["key_sha256"], pending["pending_join"]["key_sha256"], "{shown}");
    let o = common::nereid_async(&cloud, &["admin", "--json", "server", "approve", &uuid]).await;
    assert!(o.status.success(), "{}", common::stderr(&o));
    let approved: Value = serde_json::from_str(&common::stdout(&o)).unwrap();
    assert_eq!(approved["state"], "active");
    let impostor: Agent = tokio::time::timeout(Duration::from_secs(20), impostor).await.expect("joined after approval").unwrap().unwrap();
    let new_pin = impostor.credentials.key().pin();
    assert_eq!(trust(&cloud, &uuid).await["key_sha256"], new_pin.as_str());
    // The previous holder's certificate no longer speaks for the server: its agent asks
    // to join again, and that waits for approval too.
    let waiting = eventually(20, "the displaced agent to ask again", || async {
        let t = trust(&cloud, &uuid).await;
        (t["pending_join"]["key_sha256"] == real_pin.as_str()).then_some(t)
    })
    .await;
    assert_eq!(waiting["key_sha256"], new_pin.as_str(), "{waiting}");

    // Revoked: the agent's calls are refused, the headnode calls it no more, and its
    // re-joins wait for approval whatever key they carry.
    let o = common::nereid_async(&cloud, &["admin", "--json", "server", "revoke", &uuid]).await;
    assert!(o.status.success(), "{}", common::stderr(&o));
    let revoked: Value = serde_json::from_str(&common::stdout(&o)).unwrap();
    assert_eq!(revoked["state"], "revoked");
    let ca = impostor.credentials.ca().unwrap();
    let cert = impostor.credentials.cert(impostor.nodes[0].uuid).unwrap();
    let client = mtls_client(&ca, nereid_trust::HEADNODE_NAME, Some((&cert.certificate, impostor.credentials.key())));
    let r =
        client.post(format!("{}/servers/{uuid}/events/heartbeat", cloud.headnode.agent_url)).json(&heartbeat_body()).send().await.unwrap();
    assert_eq!(r.status(), 403, "a revoked server's heartbeat");
    let r = client.get(format!("{}/servers/{uuid}/images/{}", cloud.headnode.agent_url, seed.image)).send().await.unwrap();
    assert_eq!(r.status(), 403, "a revoked server's image download");
    let e = cloud.headnode.app.agent_get(impostor.nodes[0].uuid, uuid::Uuid::parse_str(&vm).unwrap()).await.unwrap_err();
    assert!(e.to_string().contains("revoked"), "the headnode does not call a revoked server: {e}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let t = trust(&cloud, &uuid).await;
    assert_eq!(t["state"], "revoked", "re-joins do not undo a revocation: {t}");
    assert!(t["pending_join"].is_object(), "the agent's re-join waits for approval: {t}");
    let r =
        client.post(format!("{}/servers/{uuid}/events/heartbeat", cloud.headnode.agent_url)).json(&heartbeat_body()).send().await.unwrap();
    assert_eq!(r.status(), 403, "still refused after the agent asked again");
    impostor.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn both_listeners_demand_the_right_certificates() {
    let o = Options { sim_servers: 1, ..Options::new(Backend::Sqlite) };
    let cloud = Cloud::start_with(o).await.unwrap();
    let agent = cloud.agent.as_ref().unwrap();
    let uuid = agent.nodes[0].uuid;
    let creds = &agent.credentials;
    let ca = creds.ca().unwrap();
    let cert = creds.cert(uuid).unwrap().certificate;
    let hb = format!("{}/servers/{uuid}/events/heartbeat", cloud.headnode.agent_url);

    // The headnode's agent listener: the server's own certificate works.
    let good = mtls_client(&ca, nereid_trust::HEADNODE_NAME, Some((&cert, creds.key())));
    let r = good.post(&hb).json(&heartbeat_body()).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    // No client certificate: 401.
    let anon = mtls_client(&ca, nereid_trust::HEADNODE_NAME, None);
    let r = anon.post(&hb).json(&heartbeat_body()).send().await.unwrap();
    assert_eq!(r.status(), 401);
    // A certificate from another CA: the handshake is refused.
    let (other_pem, other_key) = nereid_trust::Ca::generate().unwrap();
    let other = nereid_trust::Ca::from_pem(&other_pem, &other_key).unwrap();
    let key = nereid_trust::NodeKey::generate().unwrap();
    let forged = other.issue(&key.spki_der(), &nereid_trust::Role::Server(uuid), Duration::from_secs(3600)).unwrap();
    let r = mtls_client(&ca, nereid_trust::HEADNODE_NAME, Some((&forged, &key))).post(&hb).json(&heartbeat_body()).send().await;
    assert!(r.is_err(), "a certificate the CA did not issue: {r:?}");
    // Plain HTTP: nothing.
    let r = reqwest::Client::new().post(hb.replace("https://", "http://")).json(&heartbeat_body()).send().await;
    assert!(r.is_err() || !r.as_ref().unwrap().status().is_success(), "{r:?}");
    // The operator listener serves no agent route.
    let e = cloud.client.post(&format!("/servers/{uuid}/events/heartbeat"), &heartbeat_body()).await.unwrap_err();
    assert_eq!(e.status(), Some(404), "{e}");

    // The agent's API: a headnode's certificate from the CA works...
    let vms = format!("https://{}/servers/{uuid}/vms", agent.addr);
    let pin = creds.key().pin();
    let hn = cloud.headnode.app.agents.client(uuid, &pin).unwrap();
    assert_eq!(hn.get(&vms).send().await.unwrap().status(), 200);
    // ...no certificate, a server's (not a headnode's) certificate from the same CA, or a
    // headnode certificate from another CA do not get through the handshake.
    let to_agent = |identity| mtls_client(&ca, nereid_trust::AGENT_NAME, identity);
    assert!(to_agent(None).get(&vms).send().await.is_err(), "no client certificate");
    assert!(to_agent(Some((&cert, creds.key()))).get(&vms).send().await.is_err(), "a server certificate is not a headnode's");
    let other_hn = other.issue(&key.spki_der(), &nereid_trust::Role::Headnode, Duration::from_secs(3600)).unwrap();
    assert!(to_agent(Some((&other_hn, &key))).get(&vms).send().await.is_err(), "a headnode certificate from another CA");
    // And the headnode only talks to the agent holding the pinned key.
    let wrong_pin = cloud.headnode.app.agents.client(uuid, &"0".repeat(64)).unwrap();
    assert!(wrong_pin.get(&vms).send().await.is_err(), "an agent whose key is not the pinned one");

    // Renewal over the authenticated channel: a new certificate for the same key.
    agent.renew_certificates().await.unwrap();
    let renewed = creds.cert(uuid).unwrap().certificate;
    assert_ne!(renewed, cert);
    let r = mtls_client(&ca, nereid_trust::HEADNODE_NAME, Some((&renewed, creds.key())))
        .post(&hb)
        .json(&heartbeat_body())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(hn.get(&vms).send().await.unwrap().status(), 200, "the agent serves the renewed certificate");

    // A join token whose CA hash is not this headnode's CA: the agent refuses to join.
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = agent_config(&cloud, dir.path(), &Options::new(Backend::Sqlite));
    cfg.join_token = nereid_trust::token::JoinToken::full(&cloud.headnode.join_token, &"ab".repeat(32));
    let e = nereid_agent::start(cfg).await.err().expect("a CA the token does not vouch for");
    assert!(format!("{e:#}").contains("does not vouch"), "{e:#}");
    // The bare join token (join.token) works: the headnode proves it knows it.
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = agent_config(&cloud, dir.path(), &Options::new(Backend::Sqlite));
    cfg.join_token = cloud.headnode.join_token.clone();
    let bare = nereid_agent::start(cfg).await.unwrap();
    assert_eq!(bare.credentials.ca().unwrap(), ca);
    // A wrong bare token: no proof matches, no join.
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = agent_config(&cloud, dir.path(), &Options::new(Backend::Sqlite));
    cfg.join_token = "not-the-token".into();
    assert!(nereid_agent::start(cfg).await.is_err());
    // The operator API is no agent listener.
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = agent_config(&cloud, dir.path(), &Options::new(Backend::Sqlite));
    cfg.headnode_url = cloud.headnode.admin_url.clone();
    let e = nereid_agent::start(cfg).await.err().expect("an http:// headnode URL");
    assert!(format!("{e:#}").contains("agent listener"), "{e:#}");
    bare.shutdown().await;
}

/// One proxied connection's bytes: (client → server, server → client).
type Streams = (Vec<u8>, Vec<u8>);

/// A TCP proxy to `target` that keeps every byte it forwards, per direction.
#[derive(Clone, Default)]
struct Recording {
    conns: Arc<Mutex<Vec<Streams>>>,
}

async fn recording_proxy(listen: SocketAddr, target: SocketAddr) -> (SocketAddr, Recording) {
    let l = tokio::net::TcpListener::bind(listen).await.unwrap();
    let addr = l.local_addr().unwrap();
    let rec = Recording::default();
    let r = rec.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = l.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(target).await else { continue };
            let i = {
                let mut all = r.conns.lock().unwrap();
                all.push((Vec::new(), Vec::new()));
                all.len() - 1
            };
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            let (r1, r2) = (r.clone(), r.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16384];
                while let Ok(n) = cr.read(&mut buf).await {
                    if n == 0 || sw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    r1.conns.lock().unwrap()[i].0.extend_from_slice(&buf[..n]);
                }
                let _ = sw.shutdown().await;
            });
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16384];
                while let Ok(n) = sr.read(&mut buf).await {
                    if n == 0 || cw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    r2.conns.lock().unwrap()[i].1.extend_from_slice(&buf[..n]);
                }
                let _ = cw.shutdown().await;
            });
        }
    });
    (addr, rec)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Every connection starts with a TLS handshake record both ways, and nothing of the
/// plaintext (HTTP, the JSON bodies' keys, the server's or VM's UUID) appears anywhere.
/// (Needles are long enough that ciphertext matches them by chance about never.)
fn assert_tls(what: &str, rec: &Recording, secrets: &[&str]) {
    let conns = rec.conns.lock().unwrap().clone();
    assert!(!conns.is_empty(), "{what}: no connection went through the proxy");
    let mut bytes = 0;
    for (i, (up, down)) in conns.iter().enumerate() {
        if up.is_empty() {
            continue;
        }
        assert_eq!(&up[..2], &[0x16, 0x03], "{what}: connection {i} does not open with a TLS handshake record");
        if !down.is_empty() {
            assert_eq!(&down[..2], &[0x16, 0x03], "{what}: connection {i}'s answer is not a TLS handshake record");
        }
        for stream in [up, down] {
            bytes += stream.len();
            for needle in
                ["HTTP/1.1 ", "POST /", "GET /", "PUT /", "\"usage\"", "\"state\"", "\"generation\"", "sysinfo", "application/json"]
                    .iter()
                    .chain(secrets)
            {
                assert!(!contains(stream, needle.as_bytes()), "{what}: connection {i} carries {needle:?} in plaintext");
            }
        }
    }
    // Handshakes alone are ~2 KB; the calls (ensure, get, heartbeats, reports) come on top.
    assert!(bytes > 4_000, "{what}: only {bytes} bytes went through the proxy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agent_traffic_captured_on_the_loopback_is_tls() {
    let o = Options::new(Backend::Sqlite);
    let cloud = Cloud::start_with(o.clone()).await.unwrap();
    let seed = cloud.seed().await.unwrap();
    // agent → proxy → headnode's agent listener.
    let (up_addr, up) = recording_proxy("127.0.0.1:0".parse().unwrap(), cloud.headnode.agent_addr).await;
    // headnode → proxy → the agent's API (a port chosen now, so the agent can advertise the proxy).
    let agent_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let agent_addr: SocketAddr = format!("127.0.0.1:{agent_port}").parse().unwrap();
    let (down_addr, down) = recording_proxy("127.0.0.1:0".parse().unwrap(), agent_addr).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = agent_config(&cloud, dir.path(), &o);
    cfg.headnode_url = format!("https://{up_addr}");
    cfg.listen = agent_addr;
    cfg.advertise_url = Some(format!("https://{down_addr}"));
    let agent = nereid_agent::start(cfg).await.unwrap();
    let server = agent.nodes[0].uuid.to_string();
    cloud.wait_servers(1).await.unwrap();
    let (vm, job) = cloud.create_vm(&seed.vm_body("captured")).await.unwrap();
    assert_eq!(cloud.wait_job(&job).await.unwrap()["execution"], "succeeded");
    let synced = cloud.client.get(&format!("/vms/{vm}?sync=true")).await.unwrap();
    assert_eq!(synced["state"], "running");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_tls("agent → headnode", &up, &[&server, &vm]);
    assert_tls("headnode → agent", &down, &[&server, &vm]);
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_server_secret_stays_in_the_store() {
    let cloud = Cloud::start_with(Options { sim_servers: 1, ..Options::new(Backend::Sqlite) }).await.unwrap();
    let agent = cloud.agent.as_ref().unwrap();
    let store = &cloud.headnode.app.store;
    // What the store keeps for a server: its key's hash, nothing that authenticates.
    let key = agent.nodes[0].uuid.to_string();
    let rec = store.get("server_secrets", &key).await.unwrap().unwrap().value;
    assert_eq!(rec, json!({"pin": agent.credentials.key().pin(), "revoked": false}));
    // A bearer secret an older version stored is dropped at start (and never accepted).
    let old = uuid::Uuid::new_v4().to_string();
    store.put("server_secrets", &old, json!({"secret": "0123abcd"}), nereid_store::Cond::Any).await.unwrap();
    assert_eq!(cloud.headnode.app.scrub_legacy_secrets().await.unwrap(), 1);
    let rec = store.get("server_secrets", &old).await.unwrap().unwrap().value;
    assert_eq!(rec, json!({}), "{rec}");
    assert_eq!(cloud.headnode.app.scrub_legacy_secrets().await.unwrap(), 0);
}
