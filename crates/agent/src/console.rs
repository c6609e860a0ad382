//! A VM's serial console, kept by the agent: one connection to QEMU's console socket per
//! VM, everything the guest prints appended to a ring log (`console.log`, at most
//! [`RING_MAX`] bytes), and any number of attached operators who see the output live and
//! whose keystrokes reach the guest.
//!
//! ```text
//!   QEMU com1 ── console.sock ──► console task ──► console.log (ring)
//!                     ▲                       └──► broadcast ──► attached consoles
//!                     └──────────── input ◄──────────────────── attached consoles
//! ```
//! QEMU's socket exists only while the VM runs; the task reconnects whenever it
//! reappears (start, reboot, agent restart).

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{broadcast, mpsc};

/// The ring log never grows past this; when it does, the older half is dropped.
pub const RING_MAX: u64 = 1 << 20;
/// How much recent output a new attachment is shown first.
pub const BACKLOG: u64 = 16 << 10;

/// One VM's console.
pub struct Console {
    log: PathBuf,
    output: broadcast::Sender<Bytes>,
    input: mpsc::Sender<Bytes>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console").field("log", &self.log).finish()
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Console {
    /// Starts keeping the console of the VM whose QEMU listens on `socket`.
    pub fn spawn(socket: PathBuf, log: PathBuf) -> Console {
        let (output, _) = broadcast::channel(256);
        let (input, rx) = mpsc::channel(64);
        let task = tokio::spawn(run(socket, log.clone(), output.clone(), rx));
        Console { log, output, input, task }
    }

    /// Recent output, then a live feed.
    pub fn attach(&self) -> (Vec<u8>, broadcast::Receiver<Bytes>) {
        let rx = self.output.subscribe();
        (tail(&self.log, BACKLOG), rx)
    }

    /// Sends keystrokes to the guest (dropped while the VM is not running).
    pub async fn send(&self, bytes: Bytes) {
        let _ = self.input.send(bytes).await;
    }

    /// The whole ring log.
    pub fn log(&self) -> Vec<u8> {
        tail(&self.log, RING_MAX)
    }
}

/// The last `n` bytes of `path`.
pub fn tail(path: &Path, n: u64) -> Vec<u8> {
    let Ok(mut f) = std::fs::File::open(path) else { return Vec::new() };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(n)));
    let mut out = Vec::new();
    let _ = f.read_to_end(&mut out);
    out
}

/// Appends to the ring log, dropping the older half when it outgrows [`RING_MAX`].
fn append(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path)?;
    f.write_all(bytes)?;
    if f.metadata()?.len() > RING_MAX {
        let keep = tail(path, RING_MAX / 2);
        let tmp = path.with_extension("log.tmp");
        let mut t = std::fs::OpenOptions::new().create(true).truncate(true).write(true).mode(0o600).open(&tmp)?;
        t.write_all(&keep)?;
        std::fs::rename(&tmp, path)?;
    }
    Ok(())
}

async fn run(socket: PathBuf, log: PathBuf, output: broadcast::Sender<Bytes>, mut input: mpsc::Receiver<Bytes>) {
    loop {
        let stream = match UnixStream::connect(&socket).await {
            Ok(s) => s,
            Err(_) => {
                // Not running: drop keystrokes meant for a console that is not there.
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                    k = input.recv() => if k.is_none() { return },
                }
                continue;
            }
        };
        tracing::debug!(socket = %socket.display(), "console attached");
        let (mut r, mut w) = stream.into_split();
        let mut buf = vec![0u8; 16 << 10];
        loop {
            tokio::select! {
                n = r.read(&mut buf) => match n {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if let Err(e) = append(&log, &buf[..n]) {
                            tracing::warn!(log = %log.display(), error = %e, "cannot write the console log");
                        }
                        let _ = output.send(Bytes::copy_from_slice(&buf[..n]));
                    }
                },
                k = input.recv() => match k {
                    Some(k) => if w.write_all(&k).await.is_err() { break },
                    None => return,
                },
            }
        }
        tracing::debug!(socket = %socket.display(), "console detached");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    #[tokio::test]
    async fn logs_broadcasts_takes_input_and_reconnects() {
        let d = tempfile::tempdir().unwrap();
        let (sock, log) = (d.path().join("console.sock"), d.path().join("console.log"));
        let console = Console::spawn(sock.clone(), log.clone());
        let (_, mut live) = console.attach();
        // The VM starts a moment later.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let listener = UnixListener::bind(&sock).unwrap();
        let (mut guest, _) = listener.accept().await.unwrap();
        guest.write_all(b"login: ").await.unwrap();
        assert_eq!(&live.recv().await.unwrap()[..], b"login: ");
        console.send(Bytes::from_static(b"root\n")).await;
        let mut got = [0u8; 5];
        guest.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"root\n");
        // The VM restarts: a new QEMU, a new socket.
        drop(guest);
        drop(listener);
        std::fs::remove_file(&sock).unwrap();
        let listener = UnixListener::bind(&sock).unwrap();
        let (mut guest, _) = listener.accept().await.unwrap();
        guest.write_all(b"booted again\n").await.unwrap();
        assert_eq!(&live.recv().await.unwrap()[..], b"booted again\n");
        let (backlog, _) = console.attach();
        assert_eq!(backlog, b"login: booted again\n");
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&log).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600, "console output may hold secrets");
    }

    #[test]
    fn the_ring_log_stays_bounded_and_keeps_the_newest() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("console.log");
        let chunk = vec![b'x'; 100 << 10];
        for _ in 0..30 {
            append(&log, &chunk).unwrap();
        }
        append(&log, b"the end").unwrap();
        let len = std::fs::metadata(&log).unwrap().len();
        assert!(len <= RING_MAX, "{len}");
        assert!(tail(&log, 7) == b"the end");
    }
}
