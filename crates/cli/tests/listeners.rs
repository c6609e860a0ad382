//! Listener hygiene (issue 11): every listener of a real `nereid up` process — the
//! operator API, CloudAPI over TLS, the agent API — held under 500 slow connections
//! (request heads trickled a byte at a time, bodies that stall) and 20,000 idle ones
//! still answers a fresh `/ping` in under a second; the server closes the slow and idle
//! ones after their timeouts (short ones, set through `NEREID_*_TIMEOUT`); its memory
//! stays bounded. And CloudAPI's own edges: 413 for oversize bodies with a clean close
//! (`Expect: 100-continue` included), 429 `RequestThrottled` with `Retry-After`.
//!
//! The idle connections are held by child processes (this binary again, running the
//! ignored `hold_idle_connections` helper): 20,000 of them would not fit beside the rest
//! in this process's file descriptors. Their source addresses are spread over 127.0.0.x
//! so ephemeral ports last.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};

/// The short timeouts the servers under test run with.
const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
const BODY_TIMEOUT: Duration = Duration::from_secs(3);
const IDLE_TIMEOUT: Duration = Duration::from_secs(4);
/// The acceptance bound for a fresh `/ping` under load.
const PING_BOUND: Duration = Duration::from_secs(1);
/// The bound on the server's resident memory under load.
const RSS_BOUND_KIB: u64 = 300 * 1024;
const IDLE: usize = 20_000;
const SLOW: usize = 500;
/// Idle connections per helper process.
const PER_HELPER: usize = 10_000;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A `nereid up` (sim backend) child process.
struct Up {
    child: Child,
    dir: tempfile::TempDir,
    admin: SocketAddr,
    cloudapi: SocketAddr,
    /// The agent's own API (mutual TLS: only headnodes get through).
    agent: SocketAddr,
    /// The headnode's listener for agents (mutual TLS: only agents get through).
    agent_listener: SocketAddr,
    /// The web console (TLS, CloudAPI's certificate).
    web: SocketAddr,
    token: String,
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Up {
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("test.log")).unwrap_or_default()
    }

    /// Resident memory (KiB).
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    fn cert(&self) -> PathBuf {
        self.dir.path().join("data/cloudapi-cert.pem")
    }

    /// The sim agent's key and certificate (PEM), once it has joined.
    fn agent_credentials(&self) -> Option<(String, String)> {
        let tls = self.dir.path().join("data/agent/tls");
        let key = std::fs::read_to_string(tls.join("agent-key.pem")).ok()?;
        for e in std::fs::read_dir(&tls).ok()? {
            let path = e.ok()?.path();
            if path.file_name()?.to_str()?.starts_with("server-") {
                let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).ok()?).ok()?;
                return Some((key, v["certificate"].as_str()?.to_string()));
            }
        }
        None
    }
}

/// The TCP ports process `pid` listens on.
fn listening_ports(pid: u32) -> HashSet<u16> {
    let inodes: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| l.to_str()?.strip_prefix("socket:[")?.strip_suffix(']').map(str::to_string))
        .collect();
    let mut ports = HashSet::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 9 && f[3] == "0A" && inodes.contains(f[9]) {
                let port = f[1].rsplit(':').next().unwrap();
                ports.insert(u16::from_str_radix(port, 16).unwrap());
            }
        }
    }
    ports
}

/// Starts `nereid up` with the short timeouts and `extra` arguments; waits until its
/// operator API, CloudAPI and agent listen.
async fn up(extra: &[&str]) -> Up {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (admin, cloudapi, agent_listener, web) = (free_port(), free_port(), free_port(), free_port());
    let log = std::fs::File::create(dir.path().join("test.log")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_nereid"))
        .args(["up", "--backend", "sim", "--sim-servers", "1", "--data-dir", data.to_str().unwrap()])
        // The web console on a known free port, not its fixed default (other tests run beside
        // this one), so the one port left over below is the agent's.
        .args(["--web-listen", &format!("127.0.0.1:{web}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin}"), "--cloudapi-listen", &format!("127.0.0.1:{cloudapi}")])
        .args(["--agent-listen", &format!("127.0.0.1:{agent_listener}")])
        .args(extra)
        .env_remove("NEREID_STORE")
        .env("HOME", dir.path())
        .env("RUST_LOG", "info")
        .env("NEREID_HEADER_READ_TIMEOUT", HEADER_TIMEOUT.as_secs().to_string())
        .env("NEREID_BODY_READ_TIMEOUT", BODY_TIMEOUT.as_secs().to_string())
        .env("NEREID_IDLE_TIMEOUT", IDLE_TIMEOUT.as_secs().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("running nereid up");
    let pid = child.id();
    let mut up = Up {
        child,
        admin: SocketAddr::from((Ipv4Addr::LOCALHOST, admin)),
        cloudapi: SocketAddr::from((Ipv4Addr::LOCALHOST, cloudapi)),
        agent: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        agent_listener: SocketAddr::from((Ipv4Addr::LOCALHOST, agent_listener)),
        web: SocketAddr::from((Ipv4Addr::LOCALHOST, web)),
        dir,
        token: String::new(),
    };
    let end = Instant::now() + Duration::from_secs(90);
    loop {
        let ports = listening_ports(pid);
        // Ports the extra arguments name (e.g. --image-catalog-listen) are not the agent's.
        let mut named: Vec<u16> = extra.iter().filter_map(|a| a.rsplit_once(':').and_then(|(_, p)| p.parse().ok())).collect();
        // Nor is the agent's migration relay (it logs where it listens).
        let relay: Option<u16> = up
            .log()
            .lines()
            .filter(|l| l.contains("taking migrations"))
            .find_map(|l| l.split("\"migration_addr\":\"").nth(1)?.split('"').next()?.rsplit_once(':')?.1.parse().ok());
        named.extend(relay);
        let others: Vec<u16> =
            ports.iter().copied().filter(|p| ![admin, cloudapi, agent_listener, web].contains(p) && !named.contains(p)).collect();
        if relay.is_some()
            && ports.contains(&admin)
            && ports.contains(&cloudapi)
            && ports.contains(&agent_listener)
            && ports.contains(&web)
            && !others.is_empty()
            && up.cert().exists()
            && up.agent_credentials().is_some()
        {
            up.agent.set_port(others[0]);
            up.token = std::fs::read_to_string(data.join("admin.token")).unwrap().trim().to_string();
            return up;
        }
        if let Ok(Some(status)) = up.child.try_wait() {
            panic!("nereid up exited ({status}): {}", up.log());
        }
        assert!(Instant::now() < end, "nereid up did not come up: {}", up.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How to reach one listener.
#[derive(Clone)]
struct Target {
    name: &'static str,
    addr: SocketAddr,
    tls: Option<TlsConnector>,
    ping: &'static str,
    /// A request whose body the server reads (or refuses) — sent without its last bytes.
    stalled_body: String,
    /// The listener wants a client certificate this test cannot present: its answer to a
    /// fresh client is the TLS alert refusing it, not HTTP.
    refuses_us: bool,
    /// Extra header lines for `/ping` (the operator API's needs the token).
    ping_headers: String,
    /// The status line `/ping` must get (when not refused).
    ping_status: &'static str,
}

impl Target {
    /// Whether `status` (from [`Target::ping`]) is this listener answering.
    fn answered(&self, status: &str) -> bool {
        // A listener that refuses us answers with the TLS alert; under TLS 1.3 our request
        // may cross that alert on the wire, and the kernel then resets the connection
        // before the alert is read: a refusal all the same, and just as prompt.
        if self.refuses_us {
            status.contains("CertificateRequired") || status.contains("Connection reset by peer")
        } else {
            status.starts_with(self.ping_status)
        }
    }

    /// A connection from source address 127.0.0.`src`.
    async fn connect(&self, src: u8) -> std::io::Result<Box<dyn Io>> {
        let sock = TcpSocket::new_v4()?;
        sock.bind(SocketAddr::from((Ipv4Addr::new(127, 0, 0, src), 0)))?;
        let tcp = sock.connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        match &self.tls {
            None => Ok(Box::new(tcp)),
            Some(c) => Ok(Box::new(c.connect(ServerName::try_from("localhost").unwrap(), tcp).await?)),
        }
    }

    /// A fresh `GET /ping`: its status line and how long the whole answer took.
    async fn ping(&self) -> (String, Duration) {
        let t = Instant::now();
        let answer = tokio::time::timeout(Duration::from_secs(10), async {
            let mut c = self.connect(1).await?;
            let request = format!("GET {} HTTP/1.1\r\nHost: localhost\r\n{}Connection: close\r\n\r\n", self.ping, self.ping_headers);
            c.write_all(request.as_bytes()).await?;
            let mut out = Vec::new();
            // A TLS peer may end without close_notify once the answer is complete; a
            // refusal (a TLS alert) is the answer when nothing came before it.
            let read = c.read_to_end(&mut out).await;
            match read {
                Err(e) if out.is_empty() => Err(e),
                _ => std::io::Result::Ok(String::from_utf8_lossy(&out).lines().next().unwrap_or_default().to_string()),
            }
        })
        .await;
        let status = match answer {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => format!("error: {e}"),
            Err(_) => "no answer in 10 s".into(),
        };
        (status, t.elapsed())
    }
}

fn tls_connector(cert: &Path) -> TlsConnector {
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(cert).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsConnector::from(Arc::new(config))
}

/// A test client's verifier that takes any server certificate (the agent-facing
/// listeners' certificates come from the cloud's own CA; what is under test here is the
/// listener, not the trust chain, which the agent trust tests cover).
#[derive(Debug)]
struct AnyServer(Arc<tokio_rustls::rustls::crypto::CryptoProvider>);

impl tokio_rustls::rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: tokio_rustls::rustls::pki_types::UnixTime,
    ) -> Result<tokio_rustls::rustls::client::danger::ServerCertVerified, tokio_rustls::rustls::Error> {
        Ok(tokio_rustls::rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &tokio_rustls::rustls::DigitallySignedStruct,
    ) -> Result<tokio_rustls::rustls::client::danger::HandshakeSignatureValid, tokio_rustls::rustls::Error> {
        tokio_rustls::rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &tokio_rustls::rustls::DigitallySignedStruct,
    ) -> Result<tokio_rustls::rustls::client::danger::HandshakeSignatureValid, tokio_rustls::rustls::Error> {
        tokio_rustls::rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<tokio_rustls::rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS client for the agent-facing listeners, presenting `client` (key, certificate PEM).
fn mtls_connector(client: Option<(String, String)>) -> TlsConnector {
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let builder = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)));
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some((key, cert)) => {
            let key = tokio_rustls::rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
            let cert = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
            builder.with_client_auth_cert(vec![cert], key).unwrap()
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsConnector::from(Arc::new(config))
}

/// What became of a slow connection.
#[derive(Debug)]
struct SlowEnd {
    /// Since the connection was opened, until the server closed it (`None`: never, within the wait).
    closed_after: Option<Duration>,
    /// What the server sent before closing.
    answer: String,
}

/// A request head trickled one byte every 250 ms, never finished.
async fn slow_head(t: Target, src: u8, give_up: Duration) -> SlowEnd {
    let start = Instant::now();
    let Ok(mut c) = t.connect(src).await else { return SlowEnd { closed_after: Some(start.elapsed()), answer: "connect failed".into() } };
    let head =
        b"GET /ping HTTP/1.1\r\nHost: localhost\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut buf = [0u8; 1024];
    let mut answer = Vec::new();
    for byte in head.iter().cycle() {
        if start.elapsed() > give_up {
            return SlowEnd { closed_after: None, answer: String::from_utf8_lossy(&answer).into() };
        }
        if c.write_all(&[*byte]).await.is_err() {
            break;
        }
        match tokio::time::timeout(Duration::from_millis(250), c.read(&mut buf)).await {
            Err(_) => {}
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
        }
    }
    SlowEnd { closed_after: Some(start.elapsed()), answer: String::from_utf8_lossy(&answer).into() }
}

/// A request whose body stops half way.
async fn stalled_body(t: Target, src: u8, give_up: Duration) -> SlowEnd {
    let start = Instant::now();
    let Ok(mut c) = t.connect(src).await else { return SlowEnd { closed_after: Some(start.elapsed()), answer: "connect failed".into() } };
    if c.write_all(t.stalled_body.as_bytes()).await.is_err() {
        return SlowEnd { closed_after: Some(start.elapsed()), answer: "write failed".into() };
    }
    let mut answer = Vec::new();
    let read = tokio::time::timeout(give_up, c.read_to_end(&mut answer)).await;
    SlowEnd { closed_after: read.is_ok().then(|| start.elapsed()), answer: String::from_utf8_lossy(&answer).into() }
}

/// A helper process holding idle connections.
struct Holder {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Holder {
    /// Starts holding `count` idle connections to `addr` from 127.0.0.`first_src`…
    fn start(addr: SocketAddr, count: usize, first_src: u8) -> Holder {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "hold_idle_connections", "--ignored", "--nocapture", "--test-threads", "1"])
            .env("LISTENERS_HOLD", format!("{addr} {count} {first_src}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Holder { child, stdin, stdout }
    }

    /// The next line starting with `prefix`, its number.
    fn expect(&mut self, prefix: &str) -> usize {
        let mut line = String::new();
        loop {
            line.clear();
            assert!(self.stdout.read_line(&mut line).unwrap() > 0, "the helper ended before saying {prefix}");
            // libtest prints "test hold_idle_connections ... " before the helper's first line.
            if let Some((_, n)) = line.trim().split_once(prefix) {
                return n.trim().parse().unwrap();
            }
        }
    }

    /// How many of its connections the server has closed.
    fn closed(&mut self) -> usize {
        writeln!(self.stdin, "check").unwrap();
        self.stdin.flush().unwrap();
        self.expect("CLOSED")
    }
}

/// The child side of [`Holder`]: opens the connections (plain TCP, nothing sent), says
/// `HELD n`, then answers each `check` line with `CLOSED m` (the server's closes seen).
#[test]
#[ignore = "a helper: the listener tests run it in a child process to hold idle connections"]
fn hold_idle_connections() {
    let spec = std::env::var("LISTENERS_HOLD").expect("run by the listener tests, with LISTENERS_HOLD set");
    let mut f = spec.split_whitespace();
    let addr: SocketAddr = f.next().unwrap().parse().unwrap();
    let count: usize = f.next().unwrap().parse().unwrap();
    let first: u8 = f.next().unwrap().parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let streams: Vec<std::net::TcpStream> = rt.block_on(async {
        let mut out = Vec::with_capacity(count);
        let mut i = 0;
        while out.len() < count {
            let batch: Vec<_> = (0..256.min(count - out.len()))
                .map(|_| {
                    i += 1;
                    let src = Ipv4Addr::new(127, 0, 0, first + (i % 8) as u8);
                    async move {
                        let sock = TcpSocket::new_v4()?;
                        sock.bind(SocketAddr::from((src, 0)))?;
                        sock.connect(addr).await
                    }
                })
                .collect();
            for s in futures_util::future::join_all(batch).await {
                let s = s.expect("opening an idle connection");
                out.push(s.into_std().unwrap());
            }
        }
        out
    });
    println!("HELD {}", streams.len());
    std::io::stdout().flush().unwrap();
    for line in std::io::stdin().lines() {
        if line.unwrap().trim() != "check" {
            continue;
        }
        let closed = streams
            .iter()
            .filter(|s| {
                let mut b = [0u8; 64];
                !matches!((&**s).read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
            })
            .count();
        println!("CLOSED {closed}");
        std::io::stdout().flush().unwrap();
    }
}

/// The acceptance run against one listener: 500 slow connections (half trickling a
/// head, half stalling a body), then 20,000 idle ones from helper processes; `/ping`
/// measured all along (under [`PING_BOUND`] once they are held; under the head timeout
/// while the helpers are still connecting); everything closed by the server after its
/// timeouts; RSS bounded.
async fn hold_against(up: &Up, t: Target) {
    let (status, took) = t.ping().await;
    assert!(t.answered(&status), "{}: {status}\n{}", t.name, up.log());
    let baseline = took;
    let rss_before = up.rss_kib();
    let give_up = Duration::from_secs(30);
    let started = Instant::now();
    let mut slow = Vec::new();
    for i in 0..SLOW {
        let src = 10 + (i % 8) as u8;
        // Opened over a second: this process's own TLS handshakes would otherwise take the
        // CPU the server is measured on.
        let (t, stagger) = (t.clone(), Duration::from_millis(2 * i as u64));
        slow.push(tokio::spawn(async move {
            tokio::time::sleep(stagger).await;
            if i % 2 == 0 { slow_head(t, src, give_up).await } else { stalled_body(t, src, give_up).await }
        }));
    }
    // The idle ones, from two processes.
    eprintln!("{}: {SLOW} slow connections started; opening {IDLE} idle ones", t.name);
    let mut holders: Vec<Holder> = (0..IDLE / PER_HELPER).map(|k| Holder::start(t.addr, PER_HELPER, 20 + 8 * k as u8)).collect();
    let mut storm_pings = Vec::new();
    let mut held = 0;
    for h in &mut holders {
        // Pings while the helpers connect.
        storm_pings.push(t.ping().await);
        held += h.expect("HELD");
    }
    assert_eq!(held, IDLE);
    eprintln!("{}: {IDLE} idle connections open after {:?}", t.name, started.elapsed());
    let all_held = started.elapsed();
    let mut max_rss = up.rss_kib();
    let mut held_pings = Vec::new();
    for _ in 0..5 {
        held_pings.push(t.ping().await);
        max_rss = max_rss.max(up.rss_kib());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (status, _) in storm_pings.iter().chain(&held_pings) {
        assert!(t.answered(status), "{}: a fresh /ping under load got {status:?}\n{}", t.name, up.log());
    }
    // The acceptance bound holds while the connections are held. While 20,000 are being
    // opened (two helper processes doing their TLS handshakes on the same cores) a ping
    // queues behind theirs: it must still come before a slow client's head would be cut
    // off, i.e. without waiting for a timeout to make room.
    for (_, took) in &held_pings {
        assert!(*took < PING_BOUND, "{}: a fresh /ping with the connections held took {took:?}", t.name);
    }
    for (_, took) in &storm_pings {
        assert!(*took < HEADER_TIMEOUT, "{}: a fresh /ping while connections were opened took {took:?}", t.name);
    }
    // Every idle connection is closed once the idle timeout has passed (most far earlier:
    // the connection limit makes room for newcomers by closing the longest idle).
    tokio::time::sleep(IDLE_TIMEOUT + Duration::from_secs(2)).await;
    let closed: usize = holders.iter_mut().map(Holder::closed).sum();
    max_rss = max_rss.max(up.rss_kib());
    assert_eq!(closed, IDLE, "{}: idle connections the server closed after {IDLE_TIMEOUT:?}", t.name);
    let mut slowest = Duration::ZERO;
    for s in slow {
        let end = s.await.unwrap();
        let after = end.closed_after.unwrap_or_else(|| panic!("{}: a slow connection was never closed: {end:?}", t.name));
        slowest = slowest.max(after);
    }
    let bound = HEADER_TIMEOUT.max(BODY_TIMEOUT) + IDLE_TIMEOUT + Duration::from_secs(8);
    assert!(slowest < bound, "{}: slow connections closed after at most {slowest:?}", t.name);
    let (status, took) = t.ping().await;
    assert!(t.answered(&status) && took < PING_BOUND, "{}: after the load: {status} in {took:?}", t.name);
    assert!(max_rss < RSS_BOUND_KIB, "{}: RSS reached {max_rss} KiB", t.name);
    let worst = |p: &[(String, Duration)]| p.iter().map(|(_, d)| *d).max().unwrap_or_default();
    let (worst_storm, worst_held) = (worst(&storm_pings), worst(&held_pings));
    eprintln!(
        "{}: ping {baseline:?} idle, worst {worst_storm:?} while connecting and {worst_held:?} with {SLOW} slow + {IDLE} idle connections held (all open after {all_held:?}); \
         slow ones closed within {slowest:?}; RSS {rss_before} KiB before, {max_rss} KiB at most",
        t.name
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_listener_holds_up() {
    let up = up(&[]).await;
    let body = format!(
        "POST /packages HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"name\":",
        up.token
    );
    let t = Target {
        name: "admin",
        addr: up.admin,
        tls: None,
        ping: "/ping",
        stalled_body: body,
        refuses_us: false,
        ping_headers: format!("Authorization: Bearer {}\r\n", up.token),
        ping_status: "HTTP/1.1 200 ",
    };
    hold_against(&up, t.clone()).await;
    // The stalled body got a 408 saying so, and the connection closed after it.
    let end = stalled_body(t, 2, Duration::from_secs(20)).await;
    assert!(end.answer.starts_with("HTTP/1.1 408"), "{end:?}");
    assert!(end.answer.to_ascii_lowercase().contains("connection: close"), "{end:?}");
    assert!(end.answer.contains("\"code\":\"RequestTimeout\""), "{end:?}");
    let after = end.closed_after.unwrap();
    assert!(after >= BODY_TIMEOUT && after < BODY_TIMEOUT + Duration::from_secs(4), "{after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudapi_listener_holds_up() {
    let up = up(&[]).await;
    let stalled =
        "POST /my/machines HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"name\":"
            .to_string();
    let t = Target {
        name: "CloudAPI (TLS)",
        addr: up.cloudapi,
        tls: Some(tls_connector(&up.cert())),
        ping: "/--ping",
        stalled_body: stalled,
        refuses_us: false,
        ping_headers: String::new(),
        ping_status: "HTTP/1.1 200 ",
    };
    hold_against(&up, t).await;
}

/// The web console: TLS with CloudAPI's certificate, the same timeouts and limits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_console_listener_holds_up() {
    let up = up(&[]).await;
    let stalled =
        "POST /login HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\nlogin="
            .to_string();
    let t = Target {
        name: "web console (TLS)",
        addr: up.web,
        tls: Some(tls_connector(&up.cert())),
        ping: "/login",
        stalled_body: stalled,
        refuses_us: false,
        ping_headers: String::new(),
        ping_status: "HTTP/1.1 200 ",
    };
    hold_against(&up, t).await;
}

/// The public image catalogue (`--image-catalog-listen`): no authentication, so anyone
/// may hold connections to it; the same timeouts and limits keep it answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_catalogue_listener_holds_up() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let up = up(&["--image-catalog-listen", &addr]).await;
    let end = Instant::now() + Duration::from_secs(30);
    while !listening_ports(up.child.id()).contains(&port) {
        assert!(Instant::now() < end, "the catalogue never listened on {addr}: {}", up.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stalled =
        "POST /images HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"name\":".to_string();
    let t = Target {
        name: "image catalogue",
        addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        tls: None,
        ping: "/ping",
        stalled_body: stalled,
        refuses_us: false,
        ping_headers: String::new(),
        ping_status: "HTTP/1.1 200 ",
    };
    hold_against(&up, t).await;
}

/// The agent's API: mutual TLS that only headnodes' certificates pass, which this test
/// does not have — a fresh client's answer is the handshake's refusal, in under a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_api_listener_holds_up() {
    let up = up(&[]).await;
    let stalled =
        "POST /vms HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"uuid\":".to_string();
    let t = Target {
        name: "agent API (mTLS)",
        addr: up.agent,
        tls: Some(mtls_connector(None)),
        ping: "/ping",
        stalled_body: stalled,
        refuses_us: true,
        ping_headers: String::new(),
        ping_status: "",
    };
    hold_against(&up, t).await;
}

/// The headnode's listener for agents, reached with the sim agent's own certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headnode_agent_listener_holds_up() {
    let up = up(&[]).await;
    let stalled =
        "POST /servers HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"uuid\":".to_string();
    let t = Target {
        name: "headnode agent listener (mTLS)",
        addr: up.agent_listener,
        tls: Some(mtls_connector(up.agent_credentials())),
        ping: "/ping",
        stalled_body: stalled,
        refuses_us: false,
        ping_headers: String::new(),
        // It serves the agents' routes only: its answer to /ping is a JSON 404.
        ping_status: "HTTP/1.1 404 ",
    };
    hold_against(&up, t).await;
}

/// Sends `head` (and `body` alongside, while reading), returns the whole answer and
/// whether the read ended cleanly (EOF, TLS close_notify) and the body write completed.
async fn exchange(t: &Target, head: String, body: Vec<u8>) -> (String, std::io::Result<usize>, std::io::Result<()>) {
    let c = t.connect(3).await.unwrap();
    let (mut r, mut w) = tokio::io::split(c);
    let writer = tokio::spawn(async move {
        w.write_all(head.as_bytes()).await?;
        w.write_all(&body).await?;
        w.flush().await?;
        // Hold the write side open until the reader is done.
        tokio::time::sleep(Duration::from_secs(5)).await;
        std::io::Result::Ok(())
    });
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), r.read_to_end(&mut out)).await.expect("the answer in 20 s");
    let wrote = match tokio::time::timeout(Duration::from_millis(10), writer).await {
        Ok(w) => w.unwrap(),
        Err(_) => Ok(()), // still sleeping: everything was written
    };
    (String::from_utf8_lossy(&out).into_owned(), read, wrote)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_cloudapi_bodies_get_413_and_a_clean_close() {
    let up = up(&[]).await;
    let t = Target {
        name: "CloudAPI",
        addr: up.cloudapi,
        tls: Some(tls_connector(&up.cert())),
        ping: "/--ping",
        stalled_body: String::new(),
        refuses_us: false,
        ping_headers: String::new(),
        ping_status: "HTTP/1.1 200 ",
    };
    let big = 2 << 20;
    // A keep-alive client sends the whole body: it reads the 413 to a clean end, its
    // write is not cut off by a reset.
    let head = format!("POST /my/machines HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {big}\r\n\r\n");
    let (answer, read, wrote) = exchange(&t, head, vec![b' '; big]).await;
    let lower = answer.to_ascii_lowercase();
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    assert!(lower.contains("\r\nconnection: close\r\n"), "{answer}");
    assert!(lower.contains("content-type: application/json"), "{answer}");
    let body: serde_json::Value = serde_json::from_str(answer.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert_eq!(body["code"], "RequestEntityTooLarge", "{answer}");
    assert!(body["message"].as_str().unwrap().contains("1048576"), "{answer}");
    read.expect("the connection closed cleanly after the answer");
    wrote.expect("the body was taken (and discarded), not cut off by a reset");

    // With Expect: 100-continue the client gets the 413 instead of a 100 and a broken pipe.
    let head = format!("PUT /my/machines/x/metadata HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\nContent-Length: {big}\r\n\r\n");
    let (answer, read, _) = exchange(&t, head, Vec::new()).await;
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    assert!(!answer.contains("100 Continue"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("\r\nconnection: close\r\n"), "{answer}");
    read.expect("a clean close after the 413");

    // The client's next request, on a new connection, is served.
    let (status, _) = t.ping().await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudapi_rate_limit_answers_429_with_retry_after() {
    let up = up(&["--cloudapi-rate-limit", "1", "--cloudapi-rate-burst", "3"]).await;
    let t = Target {
        name: "CloudAPI",
        addr: up.cloudapi,
        tls: Some(tls_connector(&up.cert())),
        ping: "/--ping",
        stalled_body: String::new(),
        refuses_us: false,
        ping_headers: String::new(),
        ping_status: "HTTP/1.1 200 ",
    };
    let get = || "GET /my/machines HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".to_string();
    // Unauthenticated requests are limited per source address: the burst passes (to
    // their 401), the next is throttled.
    for _ in 0..3 {
        let (answer, _, _) = exchange(&t, get(), Vec::new()).await;
        assert!(answer.starts_with("HTTP/1.1 401 "), "{answer}");
    }
    let (answer, _, _) = exchange(&t, get(), Vec::new()).await;
    assert!(answer.starts_with("HTTP/1.1 429 "), "{answer}");
    let lower = answer.to_ascii_lowercase();
    assert!(lower.contains("\r\nretry-after: 1\r\n"), "{answer}");
    let body: serde_json::Value = serde_json::from_str(answer.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert_eq!(body["code"], "RequestThrottled", "{answer}");
    assert!(body["message"].as_str().unwrap().contains("request rate exceeded"), "{answer}");
    // The health endpoint is not limited.
    for _ in 0..5 {
        let (status, _) = t.ping().await;
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    }
    // After Retry-After, requests pass again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (answer, _, _) = exchange(&t, get(), Vec::new()).await;
    assert!(answer.starts_with("HTTP/1.1 401 "), "{answer}");
}

/// Signed requests are limited per account: one account over its rate gets 429
/// `RequestThrottled` with `Retry-After`, another account is not held back by it, and
/// the first passes again after the wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_account_has_its_own_request_rate() {
    use nereid_testkit::cloudapi::{Client as Tenant, Key};
    let mut options = nereid_testkit::Options::new(nereid_testkit::Backend::Sqlite).cloudapi_http();
    options.cloudapi.as_mut().unwrap().rate_limit = nereid_headnode::cloudapi::ratelimit::RateLimit { per_second: 1.0, burst: 3 };
    let cloud = nereid_testkit::Cloud::start_with(options).await.unwrap();
    let url = cloud.headnode.cloudapi.as_ref().unwrap().url.clone();
    let mut tenants = Vec::new();
    for (login, seed) in [("alice", 1u8), ("bob", 2)] {
        let key = Key::from_seed(seed);
        let body = serde_json::json!({"login": login, "email": format!("{login}@example.com"), "keys": [{"key": key.openssh()}]});
        cloud.client.post("/accounts", &body).await.unwrap();
        tenants.push(Tenant::new(&url, login, key));
    }
    let (alice, bob) = (&tenants[0], &tenants[1]);
    for _ in 0..3 {
        let a = alice.get("/my").await.unwrap();
        assert_eq!(a.status, 200, "{}", a.text);
    }
    let a = alice.get("/my").await.unwrap();
    assert_eq!(a.status, 429, "{}", a.text);
    assert_eq!(a.body["code"], "RequestThrottled", "{}", a.text);
    assert!(a.body["message"].as_str().unwrap().starts_with("alice request rate exceeded"), "{}", a.text);
    assert_eq!(a.headers["retry-after"], "1");
    let b = bob.get("/my").await.unwrap();
    assert_eq!(b.status, 200, "bob has his own bucket: {}", b.text);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let a = alice.get("/my").await.unwrap();
    assert_eq!(a.status, 200, "after Retry-After: {}", a.text);
}
