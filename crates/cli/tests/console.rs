//! VM consoles end to end: `nereid admin vm console` and WebSocket clients → headnode →
//! agent (qemu backend, in-process) → the VM's console and VNC sockets.
//!
//! QEMU is a stand-in: a script that, run with `… -uuid U`, becomes a process whose command
//! line carries `-uuid U` (which, with no monitor socket, is all the agent checks to call
//! the VM running), and `qemu-img` one that succeeds. The test then binds
//! the VM's `console.sock` and `vnc.sock`, as QEMU's chardev and VNC server would, and
//! plays the guest. A simulated server beside it has a VM without consoles. (Consoles of
//! real guests are exercised by the QEMU end-to-end tests.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use nereid_agent::backend::qemu::accel::Choice;
use nereid_agent::{Agent, BackendKind, QemuOptions};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};

/// `qemu-system-x86_64 … -uuid U …`, as far as the agent can tell.
const FAKE_QEMU: &str = r#"#!/bin/sh
uuid=; prev=
for a in "$@"; do
    [ "$prev" = -uuid ] && uuid=$a
    prev=$a
done
[ -n "$uuid" ] || { echo "fake qemu: no -uuid" >&2; exit 1; }
# The "VM": a process with "-uuid U" in its command line, gone after 10 minutes at most.
exec sh -c 'i=0; while [ $i -lt 600 ]; do sleep 1; i=$((i+1)); done' fake-qemu -uuid "$uuid" </dev/null >/dev/null 2>&1
"#;

fn script(dir: &Path, name: &str, text: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// Kills the stand-in QEMU of a VM when the test ends, however it ends (by the pid in
/// its pidfile, and only if that process is still the VM's).
struct Reap {
    pidfile: PathBuf,
    vm: String,
}

impl Drop for Reap {
    fn drop(&mut self) {
        let Some(pid) = std::fs::read_to_string(&self.pidfile).ok().and_then(|s| s.trim().parse::<i32>().ok()) else { return };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&self.vm)
            && let Some(p) = rustix::process::Pid::from_raw(pid)
        {
            let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
        }
    }
}

struct Rig {
    cloud: Cloud,
    agent: Option<Agent>,
    /// The VM on the qemu-backend server, and its directory there.
    vm: String,
    vm_dir: PathBuf,
    /// A VM on the simulated server.
    sim_vm: String,
    _reap: Reap,
    /// Fields drop in order: the stand-in QEMU's cgroups go after it is killed, before the
    /// directory that lists them.
    _cgroups: nereid_testkit::qemu::VmCgroups,
    _dir: tempfile::TempDir,
}

impl Rig {
    async fn new() -> Rig {
        let cloud =
            Cloud::start_with(nereid_testkit::Options { sim_servers: 1, ..nereid_testkit::Options::new(Backend::Sqlite) }).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        // The stand-in runs as the VM's own unprivileged user: it must reach its script.
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let qemu = script(dir.path(), "fake-qemu", FAKE_QEMU);
        let qemu_img = script(dir.path(), "fake-qemu-img", "#!/bin/sh\nexit 0\n");
        let agent_dir = dir.path().join("cn");
        let agent = nereid_agent::start(nereid_agent::Config {
            headnode_url: cloud.headnode.agent_url.clone(),
            join_token: cloud.headnode.join_token_full.clone(),
            data_dir: agent_dir.clone(),
            backend: BackendKind::Qemu(QemuOptions {
                accel: Choice::Tcg,
                qemu,
                qemu_img,
                ovmf_code: None,
                ovmf_vars: None,
                stop_timeout: Duration::from_secs(1),
                ..QemuOptions::default()
            }),
            listen: "127.0.0.1:0".parse().unwrap(),
            advertise_url: None,
            heartbeat: Duration::from_millis(500),
            nic_tags: vec![("external".into(), nereid_agent::net::Uplink::Bridge("lo".into()))],
            migration_listen: None,
            no_exec: false,
        })
        .await
        .unwrap();
        cloud.wait_servers(2).await.unwrap();
        let server = agent.servers()[0].to_string();
        let servers = cloud.client.get("/servers").await.unwrap();
        let sim_server =
            servers.as_array().unwrap().iter().map(|s| s["uuid"].as_str().unwrap()).find(|u| *u != server).unwrap().to_string();
        let seed = cloud.seed_sized(256, 2048).await.unwrap();
        let mut vms = Vec::new();
        for (alias, on) in [("console-vm", &server), ("sim-vm", &sim_server)] {
            let mut body = seed.vm_body(alias);
            body["server_uuid"] = json!(on);
            let (vm, job) = cloud.create_vm(&body).await.unwrap();
            let j = cloud.wait_job(&job).await.unwrap();
            assert_eq!(j["execution"], "succeeded", "{alias}: {j}");
            vms.push(vm);
        }
        let [vm, sim_vm] = <[String; 2]>::try_from(vms).unwrap();
        let vm_dir = agent_dir.join("qemu").join(&vm);
        let reap = Reap { pidfile: vm_dir.join("qemu.pid"), vm: vm.clone() };
        let cgroups = nereid_testkit::qemu::VmCgroups(agent_dir.join("qemu"));
        Rig { cloud, agent: Some(agent), vm, vm_dir, sim_vm, _reap: reap, _cgroups: cgroups, _dir: dir }
    }

    /// Plays QEMU's console chardev: the agent's console keeper connects to it.
    async fn guest_console(&self) -> UnixStream {
        let listener = UnixListener::bind(self.vm_dir.join("console.sock")).unwrap();
        let (guest, _) =
            tokio::time::timeout(Duration::from_secs(10), listener.accept()).await.expect("the agent never connected").unwrap();
        guest
    }

    async fn stop(mut self) {
        if let Some(a) = self.agent.take() {
            a.shutdown().await;
        }
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a WebSocket to the headnode; Err is the refusal's (status, JSON body).
async fn ws(cloud: &Cloud, path: &str, token: Option<&str>) -> Result<Ws, (u16, Value)> {
    let url = cloud.headnode.admin_url.replace("http://", "ws://");
    let mut req = format!("{url}{path}").into_client_request().unwrap();
    if let Some(t) = token {
        req.headers_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
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

async fn refused(cloud: &Cloud, path: &str, token: Option<&str>) -> (u16, Value) {
    match ws(cloud, path, token).await {
        Ok(_) => panic!("{path}: the upgrade was accepted"),
        Err(r) => r,
    }
}

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

/// Reads until `want` has been seen; returns all that was read.
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

/// Runs `nereid` with `stdin` written to its standard input (then closed, unless `keep_open`).
async fn nereid_with_stdin(cloud: &Cloud, args: &[&str], stdin: &[u8], keep_open: bool) -> Output {
    let (url, token) = (cloud.headnode.admin_url.clone(), cloud.headnode.token.clone());
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let stdin = stdin.to_vec();
    tokio::task::spawn_blocking(move || {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_nereid"))
            .args(&args)
            .env("NEREID_URL", url)
            .env("NEREID_TOKEN", token)
            .env_remove("NEREID_DATA_DIR")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        input.write_all(&stdin).unwrap();
        // Closed here unless it is to stay open until the command ends.
        let held = keep_open.then_some(input);
        let out = child.wait_with_output().unwrap();
        drop(held);
        out
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_serial_console_through_the_headnode() {
    let rig = Rig::new().await;
    let cloud = &rig.cloud;
    let vm = rig.vm.clone();
    let mut guest = rig.guest_console().await;
    guest.write_all(b"Booting nereid-test\r\nlogin: ").await.unwrap();

    // The log, from the CLI (once the agent has written it).
    let mut log = String::new();
    for _ in 0..100 {
        let o = nereid_async(cloud, &["admin", "vm", "console", &vm, "--log"]).await;
        assert!(o.status.success(), "{}", stderr(&o));
        log = stdout(&o);
        if log.ends_with("login: ") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(log, "Booting nereid-test\r\nlogin: ");
    // And over HTTP, raw.
    let resp = cloud.client.request(reqwest::Method::GET, &format!("/vms/{vm}/console?log=true")).send().await.unwrap();
    assert_eq!((resp.status().as_u16(), resp.headers()["content-type"].to_str().unwrap()), (200, "application/octet-stream"));
    assert_eq!(&resp.bytes().await.unwrap()[..], b"Booting nereid-test\r\nlogin: ");

    // A first operator attaches: the backlog, then live output.
    let path = format!("/vms/{vm}/console");
    let token = cloud.headnode.token.clone();
    let mut a = ws(cloud, &path, Some(&token)).await.unwrap();
    read_until(&mut a, b"login: ").await;
    guest.write_all(b"\r\nlive 1\r\n").await.unwrap();
    read_until(&mut a, b"live 1\r\n").await;
    // A second one at the same time.
    let mut b = ws(cloud, &path, Some(&token)).await.unwrap();
    let backlog = read_until(&mut b, b"live 1\r\n").await;
    assert!(backlog.starts_with(b"Booting nereid-test\r\n"), "{}", String::from_utf8_lossy(&backlog));
    guest.write_all(b"live 2\r\n").await.unwrap();
    read_until(&mut a, b"live 2\r\n").await;
    read_until(&mut b, b"live 2\r\n").await;
    // Keystrokes from both reach the guest (binary and text messages alike).
    a.send(Message::binary(&b"root\n"[..])).await.unwrap();
    assert_eq!(read_exact(&mut guest, 5).await, b"root\n");
    b.send(Message::text("\x03ls\n")).await.unwrap();
    assert_eq!(read_exact(&mut guest, 4).await, b"\x03ls\n");
    a.close(None).await.unwrap();
    b.close(None).await.unwrap();

    // The CLI attached without a terminal: standard input goes to the guest, the guest's
    // answer comes out, and it ends once input has ended and the console is quiet.
    let guest_side = tokio::spawn(async move {
        assert_eq!(read_exact(&mut guest, 6).await, b"uname\n");
        guest.write_all(b"Linux\r\n").await.unwrap();
        guest
    });
    let o = nereid_with_stdin(cloud, &["admin", "vm", "console", &vm, "--idle", "3"], b"uname\n", false).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.starts_with("Booting nereid-test\r\n") && out.ends_with("Linux\r\n"), "{out:?}");
    assert!(!stderr(&o).contains("Ctrl-]"), "no terminal, no hint: {}", stderr(&o));
    let mut guest = guest_side.await.unwrap();
    // --timeout ends a session whose input never ends.
    let o = nereid_with_stdin(cloud, &["admin", "vm", "console", &vm, "--timeout", "1"], b"", true).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("--timeout reached"), "{}", stderr(&o));
    assert!(stdout(&o).contains("Linux\r\n"));
    guest.write_all(b"bye\r\n").await.unwrap();

    // The VM stops: its log stays readable.
    let r = cloud.client.post(&format!("/vms/{vm}?action=stop"), &json!({})).await.unwrap();
    assert_eq!(cloud.wait_job(r["job_uuid"].as_str().unwrap()).await.unwrap()["execution"], "succeeded");
    for _ in 0..100 {
        let o = nereid_async(cloud, &["admin", "vm", "console", &vm, "--log"]).await;
        assert!(o.status.success(), "{}", stderr(&o));
        if stdout(&o).ends_with("Linux\r\nbye\r\n") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let o = nereid_async(cloud, &["admin", "vm", "console", &vm, "--log"]).await;
    assert!(stdout(&o).ends_with("Linux\r\nbye\r\n"), "{}", stdout(&o));
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn vnc_and_refusals_through_the_headnode() {
    let rig = Rig::new().await;
    let cloud = &rig.cloud;
    let (vm, sim_vm) = (rig.vm.clone(), rig.sim_vm.clone());
    let token = cloud.headnode.token.clone();

    // VNC: bytes both ways, one connection to QEMU per client.
    let listener = UnixListener::bind(rig.vm_dir.join("vnc.sock")).unwrap();
    let mut a = ws(cloud, &format!("/vms/{vm}/vnc"), Some(&token)).await.unwrap();
    let (mut qemu_a, _) = listener.accept().await.unwrap();
    qemu_a.write_all(b"RFB 003.008\n").await.unwrap();
    assert_eq!(next_bytes(&mut a).await, b"RFB 003.008\n");
    a.send(Message::binary(&b"RFB 003.008\n"[..])).await.unwrap();
    assert_eq!(read_exact(&mut qemu_a, 12).await, b"RFB 003.008\n");
    let all: Vec<u8> = (0..=255u8).collect();
    a.send(Message::binary(all.clone())).await.unwrap();
    assert_eq!(read_exact(&mut qemu_a, 256).await, all);
    let mut b = ws(cloud, &format!("/vms/{vm}/vnc"), Some(&token)).await.unwrap();
    let (mut qemu_b, _) = listener.accept().await.unwrap();
    qemu_b.write_all(&[0, 0, 0, 1]).await.unwrap();
    assert_eq!(next_bytes(&mut b).await, [0, 0, 0, 1]);
    // A client leaving closes its own connection only.
    a.close(None).await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), qemu_a.read_to_end(&mut rest)).await.unwrap().unwrap();
    qemu_b.write_all(b"still here").await.unwrap();
    assert_eq!(next_bytes(&mut b).await, b"still here");
    // QEMU closing ends the session, with the reason passed on.
    drop(qemu_b);
    match tokio::time::timeout(Duration::from_secs(10), b.next()).await.unwrap() {
        Some(Ok(Message::Close(Some(f)))) => assert!(f.reason.contains("VNC server closed"), "{f:?}"),
        other => panic!("expected a close frame, got {other:?}"),
    }

    for kind in ["console", "vnc"] {
        let path = format!("/vms/{vm}/{kind}");
        // Authentication.
        let (s, body) = refused(cloud, &path, None).await;
        assert_eq!((s, body["code"].as_str()), (401, Some("Unauthorized")), "{body}");
        let (s, _) = refused(cloud, &path, Some("not-the-token")).await;
        assert_eq!(s, 401);
        // Unknown VM, bad UUID.
        let (s, body) = refused(cloud, &format!("/vms/{}/{kind}", uuid::Uuid::new_v4()), Some(&token)).await;
        assert_eq!((s, body["code"].as_str()), (404, Some("ResourceNotFound")), "{body}");
        let (s, body) = refused(cloud, &format!("/vms/nope/{kind}"), Some(&token)).await;
        assert_eq!((s, body["code"].as_str()), (409, Some("ValidationFailed")), "{body}");
        // A VM on a simulated server has no consoles.
        let (s, body) = refused(cloud, &format!("/vms/{sim_vm}/{kind}"), Some(&token)).await;
        assert_eq!((s, body["code"].as_str()), (409, Some("NoConsole")), "{body}");
        assert!(body["message"].as_str().unwrap().contains("simulated"), "{body}");
        // A plain GET is no WebSocket.
        let resp = cloud.client.request(reqwest::Method::GET, &path).send().await.unwrap();
        assert_eq!(resp.status(), 400);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["code"], "BadRequest");
        assert!(body["message"].as_str().unwrap().contains("needs a WebSocket upgrade"), "{body}");
    }
    let resp = cloud.client.request(reqwest::Method::GET, &format!("/vms/{sim_vm}/console?log=true")).send().await.unwrap();
    assert_eq!(resp.status(), 409);

    // The CLI says the same, for the log and for attaching.
    for extra in [&["--log"][..], &[][..]] {
        let unknown = uuid::Uuid::new_v4().to_string();
        let mut args = vec!["admin", "vm", "console", &unknown];
        args.extend(extra);
        let o = nereid_async(cloud, &args).await;
        assert!(!o.status.success());
        assert!(stderr(&o).contains("does not exist") && stderr(&o).contains("ResourceNotFound"), "{}", stderr(&o));
        let mut args = vec!["admin", "vm", "console", &sim_vm];
        args.extend(extra);
        let o = nereid_async(cloud, &args).await;
        assert!(!o.status.success());
        assert!(stderr(&o).contains("simulated") && stderr(&o).contains("NoConsole"), "{}", stderr(&o));
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_nereid"))
            .args(&args)
            .env("NEREID_URL", "http://127.0.0.1:1")
            .env("NEREID_TOKEN", "x")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!o.status.success());
        assert!(stderr(&o).contains("cannot reach the headnode at http://127.0.0.1:1"), "{}", stderr(&o));
    }

    // A stopped VM has no VNC console.
    let r = cloud.client.post(&format!("/vms/{vm}?action=stop"), &json!({})).await.unwrap();
    assert_eq!(cloud.wait_job(r["job_uuid"].as_str().unwrap()).await.unwrap()["execution"], "succeeded");
    let (s, body) = refused(cloud, &format!("/vms/{vm}/vnc"), Some(&token)).await;
    assert_eq!((s, body["code"].as_str()), (409, Some("VmNotRunning")), "{body}");
    assert!(body["message"].as_str().unwrap().contains("stopped"), "{body}");
    rig.stop().await;
}
