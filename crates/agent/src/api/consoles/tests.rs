//! The console endpoints against a real supervisor `Node` whose backend puts each VM's
//! console and VNC sockets in a temporary directory: the test binds them, as QEMU would,
//! and plays the guest. A second server runs the simulated backend (no consoles).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::{SinkExt, StreamExt};
use nereid_types::agent::{Definition, Desired, Ensure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio_tungstenite::tungstenite::{self, Message, client::IntoClientRequest};
use uuid::Uuid;

use crate::backend::sim::{Delays, Sim};
use crate::backend::{Backend, BackendError, SnapshotOp};
use crate::metadata::MetadataWrite;
use crate::supervisor::{Node, Upstream};
use crate::{NodeRuntime, api};

/// A backend whose VMs are nothing but their console and VNC socket paths.
struct Guests {
    dir: PathBuf,
    running: Mutex<HashSet<Uuid>>,
}

impl Guests {
    fn console(&self, vm: Uuid) -> PathBuf {
        self.dir.join(format!("{vm}.console.sock"))
    }
    fn vnc(&self, vm: Uuid) -> PathBuf {
        self.dir.join(format!("{vm}.vnc.sock"))
    }
}

#[async_trait]
impl Backend for Guests {
    fn name(&self) -> &'static str {
        "guests"
    }
    async fn create(&self, _: &Definition) -> Result<(), BackendError> {
        Ok(())
    }
    async fn start(&self, def: &Definition) -> Result<(), BackendError> {
        self.running.lock().unwrap().insert(def.uuid);
        Ok(())
    }
    async fn stop(&self, uuid: Uuid) -> Result<(), BackendError> {
        self.running.lock().unwrap().remove(&uuid);
        Ok(())
    }
    async fn reboot(&self, _: &Definition) -> Result<(), BackendError> {
        Ok(())
    }
    async fn update(&self, _: &Definition, _: &Definition) -> Result<(), BackendError> {
        Ok(())
    }
    async fn delete(&self, uuid: Uuid) -> Result<(), BackendError> {
        self.running.lock().unwrap().remove(&uuid);
        Ok(())
    }
    async fn is_running(&self, uuid: Uuid) -> bool {
        self.running.lock().unwrap().contains(&uuid)
    }
    async fn exists(&self, _: Uuid) -> bool {
        true
    }
    async fn snapshot(&self, _: &Definition, _: SnapshotOp, _: &str) -> Result<(), BackendError> {
        Ok(())
    }
    fn console_paths(&self, uuid: Uuid) -> Option<(PathBuf, PathBuf)> {
        Some((self.console(uuid), self.dir.join(format!("{uuid}.console.log"))))
    }
    fn vnc_socket(&self, uuid: Uuid) -> Option<PathBuf> {
        Some(self.vnc(uuid))
    }
}

struct NoUpstream;

#[async_trait]
impl Upstream for NoUpstream {
    async fn metadata_write(&self, _: Uuid, _: &MetadataWrite) -> Result<(), String> {
        Err("no headnode in this test".into())
    }
}

struct Rig {
    url: String,
    guests: Arc<Guests>,
    /// The server with consoles, its secret and its VM.
    server: Uuid,
    secret: &'static str,
    vm: Uuid,
    node: Arc<Node>,
    /// The simulated server and its VM.
    sim_server: Uuid,
    sim_secret: &'static str,
    sim_vm: Uuid,
    _dir: tempfile::TempDir,
}

fn ensure(vm: Uuid, state: Desired, generation: i64) -> Ensure {
    let definition: Definition = serde_json::from_value(serde_json::json!({
        "uuid": vm, "brand": "bhyve", "owner_uuid": Uuid::nil(), "ram": 256, "vcpus": 1, "disks": [], "nics": []}))
    .unwrap();
    Ensure {
        state,
        definition,
        definition_generation: generation,
        reboot_generation: 0,
        snapshots: vec![],
        rollback_to: None,
        rollback_generation: 0,
    }
}

async fn wait_state(node: &Node, vm: Uuid, state: &str) {
    for _ in 0..200 {
        if node.get(vm).is_some_and(|s| s.state == state) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("VM {vm} never became {state}: {:?}", node.get(vm));
}

/// (Authentication is the TLS handshake's, see `crate::tls`; the router itself sees only
/// headnodes, so the "secrets" below are ignored bearer tokens.)
async fn runtime(node: Arc<Node>, _secret: &str, backend: &str) -> Arc<NodeRuntime> {
    let mut sysinfo = serde_json::Map::new();
    sysinfo.insert("Nereid Backend".into(), backend.into());
    Arc::new(NodeRuntime {
        uuid: node.uuid,
        identity: "test".into(),
        migrations: crate::migration::Migrations::open(node.clone()).unwrap(),
        node,
        sysinfo,
        paused: Default::default(),
        ram_mib: 1024,
        disk_mib: 1024,
        hwmon: Default::default(),
        smart: Default::default(),
    })
}

async fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let guests = Arc::new(Guests { dir: dir.path().to_path_buf(), running: Mutex::new(HashSet::new()) });
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::mem::forget(rx);
    let node = Node::open(Uuid::new_v4(), guests.clone(), Arc::new(NoUpstream), dir.path().join("node"), tx.clone()).await.unwrap();
    let sim =
        Arc::new(Sim::open(dir.path().join("sim.json"), Delays { create: Duration::ZERO, start: Duration::ZERO, ..Delays::default() }));
    let sim_node = Node::open(Uuid::new_v4(), sim, Arc::new(NoUpstream), dir.path().join("sim"), tx).await.unwrap();
    let (vm, sim_vm) = (Uuid::new_v4(), Uuid::new_v4());
    node.ensure(ensure(vm, Desired::Running, 1));
    sim_node.ensure(ensure(sim_vm, Desired::Running, 1));
    wait_state(&node, vm, "running").await;
    wait_state(&sim_node, sim_vm, "running").await;
    let (server, sim_server) = (node.uuid, sim_node.uuid);
    let nodes = vec![runtime(node.clone(), "secret-a", "guests").await, runtime(sim_node, "secret-b", "sim").await];
    let router = api::router(api::ApiState { nodes: Arc::new(nodes), hwmon: dir.path().join("no-hwmon") });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("127.0.0.1:{}", listener.local_addr().unwrap().port());
    tokio::spawn(async move { axum::serve(listener, router).await });
    Rig { url, guests, server, secret: "secret-a", vm, node, sim_server, sim_secret: "secret-b", sim_vm, _dir: dir }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a WebSocket; Err is the refusal's (status, body).
async fn ws(rig: &Rig, path: &str, secret: Option<&str>) -> Result<Ws, (u16, serde_json::Value)> {
    let mut req = format!("ws://{}{path}", rig.url).into_client_request().unwrap();
    if let Some(s) = secret {
        req.headers_mut().insert("authorization", format!("Bearer {s}").parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::Error::Http(resp)) => {
            let status = resp.status().as_u16();
            let body = resp.into_body().unwrap_or_default();
            Err((status, serde_json::from_slice(&body).unwrap_or_else(|_| String::from_utf8_lossy(&body).into())))
        }
        Err(e) => panic!("connecting to {path}: {e}"),
    }
}

/// The next data message's bytes.
async fn next_bytes(ws: &mut Ws) -> Vec<u8> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("no message within 10 s") {
            Some(Ok(Message::Binary(b))) => return b.to_vec(),
            Some(Ok(Message::Text(t))) => return t.as_bytes().to_vec(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected data, got {other:?}"),
        }
    }
}

/// Reads messages until `want` has been seen in the stream.
async fn read_until(ws: &mut Ws, want: &[u8]) -> Vec<u8> {
    let mut seen = Vec::new();
    while !seen.windows(want.len()).any(|w| w == want) {
        seen.extend(next_bytes(ws).await);
    }
    seen
}

async fn read_exact(guest: &mut UnixStream, n: usize) -> Vec<u8> {
    let mut got = vec![0u8; n];
    tokio::time::timeout(Duration::from_secs(10), guest.read_exact(&mut got)).await.expect("the guest got nothing").unwrap();
    got
}

fn http(rig: &Rig, path: &str, secret: Option<&str>) -> reqwest::RequestBuilder {
    let r = reqwest::Client::new().get(format!("http://{}{path}", rig.url));
    match secret {
        Some(s) => r.bearer_auth(s),
        None => r,
    }
}

#[tokio::test]
async fn the_serial_console_fans_out_and_takes_keystrokes() {
    let rig = rig().await;
    let path = format!("/servers/{}/vms/{}/console", rig.server, rig.vm);
    // QEMU's side of com1: the agent's console keeper connects to it.
    let listener = UnixListener::bind(rig.guests.console(rig.vm)).unwrap();
    let (mut guest, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept()).await.unwrap().unwrap();
    guest.write_all(b"Booting Debian\r\nlogin: ").await.unwrap();
    // The log, once the keeper has written it.
    let mut log = Vec::new();
    for _ in 0..200 {
        let resp = http(&rig, &format!("{path}?log=true"), Some(rig.secret)).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "application/octet-stream");
        log = resp.bytes().await.unwrap().to_vec();
        if log.ends_with(b"login: ") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(log, b"Booting Debian\r\nlogin: ");

    // A first client gets the backlog, then live output.
    let mut a = ws(&rig, &path, Some(rig.secret)).await.unwrap();
    assert_eq!(next_bytes(&mut a).await, b"Booting Debian\r\nlogin: ");
    guest.write_all(b"\r\nlive 1\r\n").await.unwrap();
    read_until(&mut a, b"live 1\r\n").await;
    // A second one at the same time: the backlog has everything so far; both see what follows.
    let mut b = ws(&rig, &path, Some(rig.secret)).await.unwrap();
    let backlog = read_until(&mut b, b"live 1\r\n").await;
    assert!(backlog.starts_with(b"Booting Debian\r\nlogin: "), "{}", String::from_utf8_lossy(&backlog));
    guest.write_all(b"live 2\r\n").await.unwrap();
    read_until(&mut a, b"live 2\r\n").await;
    read_until(&mut b, b"live 2\r\n").await;
    // Keystrokes from either reach the guest, binary or text.
    a.send(Message::binary(&b"root\n"[..])).await.unwrap();
    assert_eq!(read_exact(&mut guest, 5).await, b"root\n");
    b.send(Message::text("\x03exit\n")).await.unwrap();
    assert_eq!(read_exact(&mut guest, 6).await, b"\x03exit\n");
    // One client leaving does not disturb the other.
    a.close(None).await.unwrap();
    guest.write_all(b"after\r\n").await.unwrap();
    read_until(&mut b, b"after\r\n").await;

    // The VM is deleted: the session ends with a reason.
    rig.node.delete(rig.vm);
    loop {
        match tokio::time::timeout(Duration::from_secs(10), b.next()).await.expect("the session did not end") {
            Some(Ok(Message::Close(Some(f)))) => {
                assert!(f.reason.contains("gone"), "{f:?}");
                break;
            }
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn vnc_bytes_flow_both_ways_one_connection_per_client() {
    let rig = rig().await;
    let path = format!("/servers/{}/vms/{}/vnc", rig.server, rig.vm);
    let listener = UnixListener::bind(rig.guests.vnc(rig.vm)).unwrap();
    let mut a = ws(&rig, &path, Some(rig.secret)).await.unwrap();
    let (mut qemu_a, _) = listener.accept().await.unwrap();
    qemu_a.write_all(b"RFB 003.008\n").await.unwrap();
    assert_eq!(next_bytes(&mut a).await, b"RFB 003.008\n");
    a.send(Message::binary(&b"RFB 003.008\n"[..])).await.unwrap();
    assert_eq!(read_exact(&mut qemu_a, 12).await, b"RFB 003.008\n");
    // Binary data of every byte value passes unchanged.
    let all: Vec<u8> = (0..=255u8).collect();
    a.send(Message::binary(all.clone())).await.unwrap();
    assert_eq!(read_exact(&mut qemu_a, 256).await, all);
    // A second client has its own connection to QEMU.
    let mut b = ws(&rig, &path, Some(rig.secret)).await.unwrap();
    let (mut qemu_b, _) = listener.accept().await.unwrap();
    qemu_b.write_all(b"\x01\x02").await.unwrap();
    assert_eq!(next_bytes(&mut b).await, b"\x01\x02");
    // A client leaving closes its connection only.
    a.close(None).await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), qemu_a.read_to_end(&mut rest)).await.unwrap().unwrap();
    qemu_b.write_all(b"\x03").await.unwrap();
    assert_eq!(next_bytes(&mut b).await, b"\x03");
    // QEMU going away ends the session with a reason.
    drop(qemu_b);
    match tokio::time::timeout(Duration::from_secs(10), b.next()).await.unwrap() {
        Some(Ok(Message::Close(Some(f)))) => assert!(f.reason.contains("VNC server closed"), "{f:?}"),
        other => panic!("expected a close frame, got {other:?}"),
    }
    // A stopped VM has no VNC console.
    rig.node.ensure(ensure(rig.vm, Desired::Stopped, 1));
    wait_state(&rig.node, rig.vm, "stopped").await;
    let (status, body) = ws(&rig, &path, Some(rig.secret)).await.err().unwrap();
    assert_eq!((status, body["code"].as_str()), (409, Some("VmNotRunning")), "{body}");
    assert!(body["message"].as_str().unwrap().contains("stopped"), "{body}");
    // Its serial console log still answers.
    let resp = http(&rig, &format!("/servers/{}/vms/{}/console?log=true", rig.server, rig.vm), Some(rig.secret)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn consoles_refuse_clearly() {
    let rig = rig().await;
    let (s, vm) = (rig.server, rig.vm);
    for kind in ["console", "vnc"] {
        let path = format!("/servers/{s}/vms/{vm}/{kind}");
        // Unknown VM, unknown server, not a UUID.
        let (status, body) = ws(&rig, &format!("/servers/{s}/vms/{}/{kind}", Uuid::new_v4()), Some(rig.secret)).await.err().unwrap();
        assert_eq!((status, body["code"].as_str()), (404, Some("ResourceNotFound")));
        let (status, _) = ws(&rig, &format!("/servers/{}/vms/{vm}/{kind}", Uuid::new_v4()), Some(rig.secret)).await.err().unwrap();
        assert_eq!(status, 404, "a server this agent does not run");
        let (status, _) = ws(&rig, &format!("/servers/{s}/vms/nope/{kind}"), Some(rig.secret)).await.err().unwrap();
        assert_eq!(status, 422);
        // A simulated VM has no consoles.
        let (status, body) =
            ws(&rig, &format!("/servers/{}/vms/{}/{kind}", rig.sim_server, rig.sim_vm), Some(rig.sim_secret)).await.err().unwrap();
        assert_eq!((status, body["code"].as_str()), (409, Some("NoConsole")), "{body}");
        assert!(body["message"].as_str().unwrap().contains("simulated"), "{body}");
        // A plain GET is not a WebSocket.
        let resp = http(&rig, &path, Some(rig.secret)).send().await.unwrap();
        assert_eq!(resp.status(), 400);
        let body: serde_json::Value = resp.json().await.unwrap();
        assert!(body["message"].as_str().unwrap().contains("WebSocket upgrade"), "{body}");
        // Unknown parameters are named.
        let resp = http(&rig, &format!("{path}?zzz=1"), Some(rig.secret)).send().await.unwrap();
        assert_eq!(resp.status(), 422);
        assert!(resp.text().await.unwrap().contains("zzz"));
    }
    let resp =
        http(&rig, &format!("/servers/{}/vms/{}/console?log=true", rig.sim_server, rig.sim_vm), Some(rig.sim_secret)).send().await.unwrap();
    assert_eq!(resp.status(), 409);
    let resp = http(&rig, &format!("/servers/{s}/vms/{vm}/console?log=maybe"), Some(rig.secret)).send().await.unwrap();
    assert_eq!(resp.status(), 422);
    let resp = http(&rig, &format!("/servers/{s}/vms/{vm}/vnc?log=true"), Some(rig.secret)).send().await.unwrap();
    assert_eq!(resp.status(), 422, "the VNC console has no log");
}
