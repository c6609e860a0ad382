//! Secrets at rest on the headnode: the data directory is 0700 and every secret in it —
//! the admin and join tokens, the CloudAPI TLS key, the SQLite store (which holds every
//! server's agent secret) and its `-wal`/`-shm` — is 0600, on a fresh data directory from
//! the first start, and on one whose files an older version or a careless copy left
//! readable at every start after, with the operator told in the log what was tightened.
//! The real `nereid headnode` binary is run, as an operator runs it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SECRETS: &[&str] = &["admin.token", "join.token", "cloudapi-key.pem", "nereid.db", "nereid.db-wal", "nereid.db-shm"];

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).permissions().mode() & 0o7777
}

/// A headnode on `dir`, running until it is dropped (killed, as a crash would stop it).
struct Headnode {
    child: Child,
    log: PathBuf,
}

impl Drop for Headnode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Headnode {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Starts `nereid headnode` on `dir` and waits until its operator API answers (the store is
/// open and written by then: migrations, the join token).
async fn start(dir: &Path, log: PathBuf) -> Headnode {
    let err = std::fs::File::create(&log).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_nereid"))
        .args(["headnode", "--data-dir", dir.to_str().unwrap(), "--admin-listen", "127.0.0.1:0", "--cloudapi-listen", "127.0.0.1:0"])
        .env_remove("NEREID_STORE")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .expect("running nereid headnode");
    let mut h = Headnode { child, log };
    let end = Instant::now() + Duration::from_secs(60);
    let pid = h.child.id();
    loop {
        if let Ok(text) = std::fs::read_to_string(dir.join("endpoints.json")) {
            let e: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            if e["pid"] == pid {
                let addr = e["admin"].as_str().unwrap().trim_start_matches("http://").to_string();
                if ping(&addr).await && dir.join("cloudapi-key.pem").exists() {
                    return h;
                }
            }
        }
        if let Some(status) = h.child.try_wait().unwrap() {
            panic!("the headnode exited ({status}): {}", h.log());
        }
        assert!(Instant::now() < end, "the headnode did not come up: {}", h.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether the operator API at `addr` answers HTTP (its answer to an unauthenticated ping).
async fn ping(addr: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else { return false };
    if s.write_all(b"GET /ping HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer).await;
    answer.starts_with("HTTP/1.1 ")
}

fn assert_private(dir: &Path, when: &str) {
    assert_eq!(mode(dir), 0o700, "{when}: the data directory");
    for name in SECRETS {
        assert_eq!(mode(&dir.join(name)), 0o600, "{when}: {name}");
    }
}

#[tokio::test]
async fn the_store_and_every_secret_are_private_whatever_existed_before() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");

    // A fresh data directory: private from the first start, the store's WAL included.
    let h = start(&dir, tmp.path().join("first.log")).await;
    assert_private(&dir, "first start");
    drop(h);

    // Everything loosened, as an older version (or `cp -r`, or a restore) leaves it.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    for name in SECRETS {
        let p = dir.join(name);
        if !p.exists() {
            std::fs::write(&p, b"").unwrap();
        }
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let h = start(&dir, tmp.path().join("second.log")).await;
    assert_private(&dir, "a start on a loosened data directory");
    let log = h.log();
    for name in ["admin.token", "join.token", "cloudapi-key.pem", "nereid.db"] {
        assert!(
            log.lines().any(|l| l.contains(&format!("{name}\"")) && l.contains("tightened")),
            "the log tells the operator that {name} was tightened:\n{log}"
        );
    }
    assert!(log.lines().any(|l| l.contains("tightened") && l.contains("\"755\"")), "and the directory:\n{log}");
    drop(h);

    // A data directory made by someone else with a loose umask, before any start.
    let made = tmp.path().join("made");
    std::fs::create_dir(&made).unwrap();
    std::fs::set_permissions(&made, std::fs::Permissions::from_mode(0o775)).unwrap();
    let h = start(&made, tmp.path().join("third.log")).await;
    assert_private(&made, "a pre-made directory");
    drop(h);
}
