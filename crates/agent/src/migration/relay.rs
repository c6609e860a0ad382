//! The relay between two agents: the data of a migration goes from the source's agent to
//! the target's over TCP (`--migration-address`), one connection per stream.
//!
//! ```text
//!   source QEMU ─unix─► source agent ─TCP─► target agent ─unix─► target QEMU (nbd, ram)
//!                                                     └────────► file (offline copy)
//!   target: "<nonce hex>\n"
//!   source: {"migration","server","vm","channel","proof"}\n   proof = hex HMAC-SHA256(token, nonce ‖ channel)
//!   target: "ok\n" | "error: <why>\n"          then bytes both ways
//!   (file: the source closes its side at the end; the target answers "done <bytes>\n")
//! ```
//!
//! The target admits only a migration it was told to expect (prepared, for that VM on
//! that server) whose token the source proves it holds; anything else is refused and logged.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use uuid::Uuid;

use super::Migrations;
use super::bucket::Bucket;

/// How long a handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
/// The longest handshake line.
const MAX_LINE: usize = 4096;

/// The source's introduction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub migration: Uuid,
    /// The target server.
    pub server: Uuid,
    pub vm: Uuid,
    /// `nbd`, `ram` or `file:<name>`.
    pub channel: String,
    pub proof: String,
}

/// The proof that the sender holds `token`: hex HMAC-SHA256(token, nonce ‖ channel).
pub fn proof(token: &str, nonce: &str, channel: &str) -> String {
    hex::encode(mac(token, nonce, channel).finalize().into_bytes())
}

/// Whether `proof` proves `token` for this nonce and channel (compared in constant time).
pub fn verify(token: &str, nonce: &str, channel: &str, proof: &str) -> bool {
    let Ok(bytes) = hex::decode(proof) else { return false };
    mac(token, nonce, channel).verify_slice(&bytes).is_ok()
}

fn mac(token: &str, nonce: &str, channel: &str) -> Hmac<sha2::Sha256> {
    // HMAC takes keys of any length.
    let mut m = Hmac::<sha2::Sha256>::new_from_slice(token.as_bytes()).unwrap_or_else(|_| unreachable!());
    m.update(nonce.as_bytes());
    m.update(channel.as_bytes());
    m
}

/// Where an admitted stream goes on the target.
#[derive(Debug, Clone, PartialEq)]
pub enum Sink {
    /// The backend's incoming socket (nbd, ram).
    Socket(PathBuf),
    /// A file of an offline copy.
    File(PathBuf),
}

/// The agent's relay listener: one per process, for all its servers.
pub struct Relay {
    pub addr: SocketAddr,
    servers: Mutex<HashMap<Uuid, Weak<Migrations>>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(t) = self.task.lock().unwrap_or_else(|p| p.into_inner()).take() {
            t.abort();
        }
    }
}

impl Relay {
    /// Listens on `addr` (port 0: a free one).
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Arc<Relay>> {
        let listener = TcpListener::bind(addr).await?;
        let relay = Arc::new(Relay { addr: listener.local_addr()?, servers: Mutex::default(), task: Mutex::default() });
        let weak = Arc::downgrade(&relay);
        let task = tokio::spawn(async move {
            loop {
                let (conn, peer) = match listener.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of descriptors and the like: wait a little rather than spin.
                        tracing::warn!(error = %e, "migration relay: accepting a connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Some(relay) = weak.upgrade() else { return };
                tokio::spawn(async move {
                    if let Err(e) = relay.serve(conn).await {
                        tracing::warn!(%peer, "migration relay: {e}");
                    }
                });
            }
        });
        *relay.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
        Ok(relay)
    }

    /// Takes streams for `server`'s incoming migrations from now on.
    pub fn register(&self, server: Uuid, m: &Arc<Migrations>) {
        self.servers.lock().unwrap_or_else(|p| p.into_inner()).insert(server, Arc::downgrade(m));
    }

    fn admit(&self, hello: &Hello, nonce: &str) -> Result<(Sink, Arc<AtomicU64>), String> {
        let m = self.servers.lock().unwrap_or_else(|p| p.into_inner()).get(&hello.server).and_then(Weak::upgrade);
        let m = m.ok_or_else(|| format!("this agent does not run server {}", hello.server))?;
        m.admit(hello, nonce)
    }

    async fn serve(&self, mut conn: TcpStream) -> Result<(), String> {
        let nonce = hex::encode(rand::random::<[u8; 32]>());
        let hello = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
            conn.write_all(format!("{nonce}\n").as_bytes()).await.map_err(|e| format!("sending the nonce: {e}"))?;
            let line = read_line(&mut conn).await?;
            serde_json::from_str::<Hello>(&line).map_err(|e| format!("a handshake that does not parse ({e})"))
        })
        .await
        .map_err(|_| "the peer did not complete the handshake in time".to_string())??;
        let (sink, counter) = match self.admit(&hello, &nonce) {
            Ok(x) => x,
            Err(why) => {
                let _ = conn.write_all(format!("error: {why}\n").as_bytes()).await;
                return Err(format!("refused the {} stream of migration {} for VM {}: {why}", hello.channel, hello.migration, hello.vm));
            }
        };
        conn.write_all(b"ok\n").await.map_err(|e| format!("answering the handshake: {e}"))?;
        tracing::info!(migration = %hello.migration, vm = %hello.vm, channel = %hello.channel, "migration stream admitted");
        match sink {
            Sink::Socket(path) => {
                let local = tokio::net::UnixStream::connect(&path).await.map_err(|e| format!("connecting to {}: {e}", path.display()))?;
                let (lr, lw) = local.into_split();
                let (tr, tw) = conn.into_split();
                let none = Arc::new(AtomicU64::new(0));
                let (a, b) = tokio::join!(pump(tr, lw, &counter, None), pump(lr, tw, &none, None));
                a.and(b).map(|_| ()).map_err(|e| format!("relaying the {} stream of VM {}: {e}", hello.channel, hello.vm))
            }
            Sink::File(path) => {
                let n = receive_file(&mut conn, &path, &counter).await?;
                conn.write_all(format!("done {n}\n").as_bytes()).await.map_err(|e| format!("confirming {}: {e}", path.display()))
            }
        }
    }
}

/// Writes the stream to `path` durably: a temporary name, fsync, rename.
async fn receive_file(conn: &mut TcpStream, path: &Path, counter: &AtomicU64) -> Result<u64, String> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.migrating"));
    let result = async {
        let mut f = tokio::fs::File::create(&tmp).await.map_err(|e| format!("creating {}: {e}", tmp.display()))?;
        let n = pump_into(conn, &mut f, counter).await.map_err(|e| format!("receiving {}: {e}", path.display()))?;
        f.sync_all().await.map_err(|e| format!("flushing {}: {e}", tmp.display()))?;
        drop(f);
        tokio::fs::rename(&tmp, path).await.map_err(|e| format!("renaming {} to {}: {e}", tmp.display(), path.display()))?;
        if let Some(dir) = path.parent() {
            let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
        }
        Ok(n)
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    result
}

async fn pump_into<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(r: &mut R, w: &mut W, counter: &AtomicU64) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 64 << 10];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Ok(total);
        }
        w.write_all(&buf[..n]).await?;
        total += n as u64;
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Copies `r` to `w` until the end, counting into `counter`, paced by `bucket`; then
/// closes `w`'s direction.
async fn pump<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    mut r: R,
    mut w: W,
    counter: &AtomicU64,
    bucket: Option<&Mutex<Bucket>>,
) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 64 << 10];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        if let Some(b) = bucket {
            let wait = b.lock().unwrap_or_else(|p| p.into_inner()).take(n as u64, Instant::now());
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
        w.write_all(&buf[..n]).await?;
        total += n as u64;
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
    w.shutdown().await?;
    Ok(total)
}

/// Reads one `\n`-ended line a byte at a time (nothing after it is consumed).
async fn read_line<R: AsyncRead + Unpin>(r: &mut R) -> Result<String, String> {
    let mut line = Vec::new();
    loop {
        let mut b = [0u8; 1];
        let n = r.read(&mut b).await.map_err(|e| format!("reading the handshake: {e}"))?;
        if n == 0 {
            return Err("the connection closed during the handshake".into());
        }
        if b[0] == b'\n' {
            return String::from_utf8(line).map_err(|_| "a handshake line that is not UTF-8".into());
        }
        line.push(b[0]);
        if line.len() > MAX_LINE {
            return Err("a handshake line too long".into());
        }
    }
}

/// The source's side of one migration: where to send and how.
pub struct Source {
    pub migration: Uuid,
    pub server: Uuid,
    pub vm: Uuid,
    pub token: String,
    pub peer: String,
    /// Bytes put on the wire.
    pub sent: Arc<AtomicU64>,
    pub bucket: Option<Mutex<Bucket>>,
    /// Why the last stream failed (for the step's error).
    pub error: Mutex<Option<String>>,
}

impl Source {
    /// Opens a stream of `channel` to the target's agent: handshake done, admitted.
    pub async fn connect(&self, channel: &str) -> Result<TcpStream, String> {
        let peer = &self.peer;
        let mut conn = tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(peer))
            .await
            .map_err(|_| format!("connecting to the target agent at {peer} timed out"))?
            .map_err(|e| format!("connecting to the target agent at {peer}: {e}"))?;
        let _ = conn.set_nodelay(true);
        tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
            let nonce = read_line(&mut conn).await?;
            let hello = Hello {
                migration: self.migration,
                server: self.server,
                vm: self.vm,
                channel: channel.to_string(),
                proof: proof(&self.token, &nonce, channel),
            };
            let mut line = serde_json::to_vec(&hello).map_err(|e| e.to_string())?;
            line.push(b'\n');
            conn.write_all(&line).await.map_err(|e| format!("sending the handshake: {e}"))?;
            match read_line(&mut conn).await?.as_str() {
                "ok" => Ok(()),
                other => Err(format!("the target agent at {peer} refused the {channel} stream: {}", other.trim_start_matches("error: "))),
            }
        })
        .await
        .map_err(|_| format!("the handshake with the target agent at {peer} timed out"))??;
        Ok(conn)
    }

    /// Sends the file `path` as `name`; answers the bytes the target wrote.
    pub async fn send_file(&self, name: &str, path: &Path) -> Result<u64, String> {
        let mut conn = self.connect(&format!("file:{name}")).await?;
        let f = tokio::fs::File::open(path).await.map_err(|e| format!("opening {}: {e}", path.display()))?;
        let size = f.metadata().await.map(|m| m.len()).unwrap_or(0);
        let (mut r, w) = conn.split();
        pump(f, w, &self.sent, self.bucket.as_ref()).await.map_err(|e| format!("sending {}: {e}", path.display()))?;
        let answer = read_line(&mut r).await.map_err(|e| format!("waiting for the target to confirm {name}: {e}"))?;
        match answer.strip_prefix("done ").and_then(|n| n.parse::<u64>().ok()) {
            Some(n) if n == size => Ok(n),
            Some(n) => Err(format!("the target wrote {n} of the {size} bytes of {name}")),
            None => Err(format!("the target could not write {name}: {}", answer.trim_start_matches("error: "))),
        }
    }

    /// Listens on `path` (a UNIX socket the backend's process connects to) and relays each
    /// connection as a `channel` stream. `mode`: 0666 inside a directory only the VM's
    /// process (its own uid) can reach; 0600 in the agent's own.
    pub fn forward(self: &Arc<Self>, path: &Path, channel: &'static str, mode: u32) -> Result<tokio::task::JoinHandle<()>, String> {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::remove_file(path);
        let listener = tokio::net::UnixListener::bind(path).map_err(|e| format!("listening on {}: {e}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("opening {} to the VM's process: {e}", path.display()))?;
        let me = self.clone();
        Ok(tokio::spawn(async move {
            while let Ok((local, _)) = listener.accept().await {
                let me = me.clone();
                tokio::spawn(async move {
                    if let Err(e) = me.relay(local, channel).await {
                        tracing::warn!(vm = %me.vm, migration = %me.migration, "migration {channel} stream: {e}");
                        *me.error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                    }
                });
            }
        }))
    }

    async fn relay(&self, local: tokio::net::UnixStream, channel: &str) -> Result<(), String> {
        let remote = self.connect(channel).await?;
        let (lr, lw) = local.into_split();
        let (rr, rw) = remote.into_split();
        let none = AtomicU64::new(0);
        let (a, b) = tokio::join!(pump(lr, rw, &self.sent, self.bucket.as_ref()), pump(rr, lw, &none, None));
        a.and(b).map(|_| ()).map_err(|e| format!("relaying to {}: {e}", self.peer))
    }
}
