//! The headnode's data directory: the admin token, the published endpoints, the lock.
//!
//! ```text
//! DIR/               mode 0700
//!   admin.token      operator API bearer token (mode 0600), made at first start
//!   join.token       what a new compute node's agent presents to join (mode 0600)
//!   headnode.id      this headnode's identity, for job leases
//!   endpoints.json   where this headnode listens, for `nereid admin …` to find it
//!   headnode.lock    held while a headnode runs, so two never share one data dir
//!   nereid.db        the SQLite store, unless --store names another (mode 0600, and
//!                    its -wal/-shm: the store holds every server's agent secret)
//!   cloudapi-key.pem the generated CloudAPI TLS key (mode 0600)
//!   images/          image files, content-addressed by SHA-1
//! ```
//!
//! Modes are enforced at *every* start, not only the first: a directory or secret file
//! that another user can read (left by an older version, a restore, a careless `cp`) is
//! tightened, and the operator is told in the log which path was changed from what.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

pub const TOKEN_FILE: &str = "admin.token";
pub const JOIN_TOKEN_FILE: &str = "join.token";
pub const ID_FILE: &str = "headnode.id";
pub const ENDPOINTS_FILE: &str = "endpoints.json";
pub const LOCK_FILE: &str = "headnode.lock";

/// What `endpoints.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Endpoints {
    /// Base URL of the operator APIs, e.g. `http://127.0.0.1:8080`.
    pub admin: String,
    pub pid: u32,
}

/// Files of the data directory that hold secrets, kept mode 0600 (the SQLite store and
/// its WAL and shared-memory files hold every server's agent secret).
pub const SECRET_FILES: &[&str] =
    &[TOKEN_FILE, JOIN_TOKEN_FILE, "cloudapi-key.pem", "nereid.db", "nereid.db-wal", "nereid.db-shm", "nereid.db-journal"];

/// Creates `dir` if needed and, whatever existed before, makes it 0700 and every secret
/// file in it ([`SECRET_FILES`]) 0600.
pub fn ensure_dir(dir: &Path) -> Result<()> {
    if !dir.exists() {
        if let Some(parent) = dir.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        match fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("creating data directory {}", dir.display())),
        }
    }
    restrict(dir, 0o700)?;
    for name in SECRET_FILES {
        let path = dir.join(name);
        if path.exists() {
            restrict(&path, 0o600)?;
        }
    }
    Ok(())
}

/// The mode `path` should have: `current` without any bit `allowed` lacks (pure).
pub fn tightened(current: u32, allowed: u32) -> Option<u32> {
    let current = current & 0o7777;
    let want = current & allowed;
    (want != current).then_some(want)
}

/// Removes every permission bit of `path` beyond `allowed` (0700 or 0600), saying so in
/// the log; true when the mode changed.
pub fn restrict(path: &Path, allowed: u32) -> Result<bool> {
    let mode = fs::metadata(path).with_context(|| format!("reading the mode of {}", path.display()))?.permissions().mode();
    let Some(want) = tightened(mode, allowed) else { return Ok(false) };
    fs::set_permissions(path, fs::Permissions::from_mode(want)).with_context(|| format!("setting the mode of {}", path.display()))?;
    tracing::warn!(
        path = %path.display(),
        was = format!("{:o}", mode & 0o7777),
        now = format!("{want:o}"),
        "other users could read this part of the data directory; tightened its mode"
    );
    Ok(true)
}

/// Takes the data directory's lock for the life of the returned file.
pub fn lock(dir: &Path) -> Result<File> {
    let path = dir.join(LOCK_FILE);
    let file =
        OpenOptions::new().create(true).truncate(false).write(true).open(&path).with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(_) => bail!("another headnode is already running with data directory {} (it holds {})", dir.display(), path.display()),
    }
}

/// Reads the admin token, making a new random one (mode 0600) on first start.
pub fn admin_token(dir: &Path) -> Result<String> {
    secret_file(dir, TOKEN_FILE)
}

/// Reads the join token agents present, making one on first start.
pub fn join_token(dir: &Path) -> Result<String> {
    secret_file(dir, JOIN_TOKEN_FILE)
}

/// This headnode's stable identity (job leases name it).
pub fn headnode_id(dir: &Path) -> Result<String> {
    let path = dir.join(ID_FILE);
    match fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
        _ => {
            let id = uuid_like();
            write_private(&path, format!("{id}\n").as_bytes())?;
            Ok(id)
        }
    }
}

fn uuid_like() -> String {
    let b: [u8; 16] = rand::random();
    hex::encode(b)
}

/// A random secret kept in a 0600 file, made on first use.
fn secret_file(dir: &Path, name: &str) -> Result<String> {
    let path = dir.join(name);
    match fs::read_to_string(&path) {
        Ok(t) => {
            restrict(&path, 0o600)?;
            let t = t.trim().to_string();
            if t.len() < 16 {
                bail!("{} holds a token shorter than 16 characters; delete it to have a new one generated", path.display());
            }
            Ok(t)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let bytes: [u8; 32] = rand::random();
            let token = hex::encode(bytes);
            write_private(&path, format!("{token}\n").as_bytes())?;
            tracing::info!(path = %path.display(), "generated a token");
            Ok(token)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Writes a file only its owner can read, atomically (temp file + rename).
pub fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = tmp_path(path);
    {
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".tmp{}", std::process::id()));
    path.with_file_name(name)
}

/// Publishes where this headnode listens.
pub fn write_endpoints(dir: &Path, e: &Endpoints) -> Result<()> {
    let json = serde_json::to_vec_pretty(e)?;
    write_private(&dir.join(ENDPOINTS_FILE), &json)
}

/// Reads `endpoints.json`.
pub fn read_endpoints(dir: &Path) -> Result<Endpoints> {
    let path = dir.join(ENDPOINTS_FILE);
    let text = fs::read_to_string(&path)
        .with_context(|| format!("reading {} (is a headnode running with --data-dir {}?)", path.display(), dir.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let t1 = admin_token(dir.path()).unwrap();
        assert_eq!(t1.len(), 64);
        let mode = fs::metadata(dir.path().join(TOKEN_FILE)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(admin_token(dir.path()).unwrap(), t1);
        fs::set_permissions(dir.path().join(TOKEN_FILE), fs::Permissions::from_mode(0o644)).unwrap();
        admin_token(dir.path()).unwrap();
        let mode = fs::metadata(dir.path().join(TOKEN_FILE)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn modes_are_only_ever_tightened() {
        assert_eq!(tightened(0o644, 0o600), Some(0o600));
        assert_eq!(tightened(0o755, 0o700), Some(0o700));
        assert_eq!(tightened(0o600, 0o600), None);
        assert_eq!(tightened(0o400, 0o600), None, "a stricter mode stays");
        assert_eq!(tightened(0o4755, 0o700), Some(0o700), "setuid and friends go too");
        assert_eq!(tightened(0o100_644, 0o600), Some(0o600), "the file type bits are not a mode");
    }

    #[test]
    fn a_used_directory_and_its_secrets_are_tightened_at_every_start() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("data");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        for name in SECRET_FILES.iter().chain([&"images-not-secret"]) {
            fs::write(dir.join(name), "x".repeat(64)).unwrap();
            fs::set_permissions(dir.join(name), fs::Permissions::from_mode(0o644)).unwrap();
        }
        ensure_dir(&dir).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&dir), 0o700);
        for name in SECRET_FILES {
            assert_eq!(mode(&dir.join(name)), 0o600, "{name}");
        }
        assert_eq!(mode(&dir.join("images-not-secret")), 0o644, "only secrets are touched");
        let fresh = parent.path().join("fresh");
        ensure_dir(&fresh).unwrap();
        assert_eq!(mode(&fresh), 0o700);
    }

    #[test]
    fn lock_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock(dir.path()).unwrap();
        let err = lock(dir.path()).unwrap_err().to_string();
        assert!(err.contains("another headnode is already running"), "{err}");
        drop(held);
        lock(dir.path()).unwrap();
    }

    #[test]
    fn endpoints_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let e = Endpoints { admin: "http://127.0.0.1:8080".into(), pid: 1 };
        write_endpoints(dir.path(), &e).unwrap();
        assert_eq!(read_endpoints(dir.path()).unwrap(), e);
    }
}
