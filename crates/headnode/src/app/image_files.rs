//! Image files on disk, content-addressed by SHA-1.
//!
//! ```text
//! DIR/images/tmp/<headnode>/<random> an upload in progress (removed on failure or restart)
//! DIR/images/sha1/<ab>/<abcdef…>     a received file, named by the SHA-1 of its bytes
//! DIR/images/partial/<uuid>-<sha1>.part  an import from another IMGAPI, kept between
//!                                    attempts so a retry resumes (see app::image_sources)
//! ```
//!
//! An upload streams to a temporary file while SHA-1, MD5 and the size are computed, so
//! a file of any size costs one buffer of memory. Only a complete, verified upload is
//! renamed into place (after fsync), so a crash never leaves a half file under a hash
//! name. Images sharing bytes share one file; it is removed when no image refers to it.

use std::io;
use std::path::{Path, PathBuf};

use base64::Engine;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use md5::Md5;
use sha1::{Digest, Sha1};
use tokio::io::AsyncWriteExt;

/// A finished upload waiting to be committed or discarded.
#[derive(Debug)]
pub struct Received {
    pub tmp: PathBuf,
    pub sha1: String,
    /// Base64 MD5, as `Content-MD5` carries it.
    pub md5: String,
    pub size: u64,
    /// The first bytes, to check the declared compression.
    pub head: Vec<u8>,
}

/// What IMGAPI records of a file — SHA-1, base64 MD5, size and first bytes — gathered as
/// its bytes go by.
#[derive(Default)]
pub struct Digests {
    sha1: Sha1,
    md5: Md5,
    size: u64,
    head: Vec<u8>,
}

impl Digests {
    pub fn update(&mut self, chunk: &[u8]) {
        if self.head.len() < 64 {
            self.head.extend_from_slice(&chunk[..chunk.len().min(64 - self.head.len())]);
        }
        self.sha1.update(chunk);
        self.md5.update(chunk);
        self.size += chunk.len() as u64;
    }

    /// Bytes seen so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The file at `tmp`, described by what went by.
    pub fn finish(self, tmp: PathBuf) -> Received {
        Received {
            tmp,
            sha1: hex::encode(self.sha1.finalize()),
            md5: base64::engine::general_purpose::STANDARD.encode(self.md5.finalize()),
            size: self.size,
            head: self.head,
        }
    }
}

/// A whole file read and described as an upload's [`Received`] (blocking I/O).
pub fn describe_file(path: &Path) -> io::Result<Received> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let (mut d, mut buf) = (Digests::default(), vec![0u8; 1 << 20]);
    loop {
        match f.read(&mut buf) {
            Ok(0) => return Ok(d.finish(path.to_path_buf())),
            Ok(n) => d.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Why an upload stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    #[error("the file is larger than the {0}-byte limit")]
    TooLarge(u64),
    #[error("the upload was interrupted: {0}")]
    Body(String),
    #[error("writing the file failed: {0}")]
    Io(#[from] io::Error),
}

pub struct ImageFiles {
    root: PathBuf,
    /// Where this headnode's uploads in progress go.
    tmp: PathBuf,
    /// Serialises "link a file + point a record at it" against "drop a record + remove
    /// an unreferenced file", so a shared file is never removed under a new reference.
    pub refs: tokio::sync::Mutex<()>,
}

impl ImageFiles {
    /// Opens (creating) the file area and removes uploads a crash left behind.
    pub fn open(root: PathBuf) -> io::Result<Self> {
        Self::open_as(root, "")
    }

    /// Opens a file area several headnodes may share (a path they all mount): each keeps
    /// its uploads in progress under `tmp/<headnode>` and clears only its own.
    pub fn open_as(root: PathBuf, headnode: &str) -> io::Result<Self> {
        let tmp = if headnode.is_empty() { root.join("tmp") } else { root.join("tmp").join(headnode) };
        std::fs::create_dir_all(&tmp)?;
        std::fs::create_dir_all(root.join("sha1"))?;
        for entry in std::fs::read_dir(&tmp)?.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_file()) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(Self { root, tmp, refs: tokio::sync::Mutex::new(()) })
    }

    /// This headnode's directory for uploads in progress (cleared at every start, so an
    /// upload a crash interrupted leaves nothing behind).
    pub fn tmp_dir(&self) -> &Path {
        &self.tmp
    }

    /// Where the file with this SHA-1 lives.
    pub fn path_of(&self, sha1: &str) -> PathBuf {
        let prefix = sha1.get(..2).unwrap_or("00");
        self.root.join("sha1").join(prefix).join(sha1)
    }

    /// Where the download of image `image`'s file (expected SHA-1 `sha1`) from another
    /// IMGAPI collects between attempts. Not cleared at start: an interrupted import resumes.
    pub fn partial_path(&self, image: uuid::Uuid, sha1: &str) -> PathBuf {
        self.root.join("partial").join(format!("{image}-{sha1}.part"))
    }

    /// Streams `body` to a temporary file, hashing as it goes; at most `max` bytes.
    pub async fn receive<S, E>(&self, mut body: S, max: u64) -> Result<Received, ReceiveError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let tmp = self.tmp.join(format!("{}", uuid::Uuid::new_v4()));
        let result = async {
            let mut file = tokio::fs::File::create(&tmp).await?;
            let mut digests = Digests::default();
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| ReceiveError::Body(e.to_string()))?;
                if digests.size() + chunk.len() as u64 > max {
                    return Err(ReceiveError::TooLarge(max));
                }
                digests.update(&chunk);
                file.write_all(&chunk).await?;
            }
            file.flush().await?;
            file.sync_all().await?;
            Ok(digests.finish(tmp.clone()))
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }

    /// Moves a verified upload to its content address. Call with `refs` held.
    pub async fn commit(&self, r: &Received) -> io::Result<PathBuf> {
        let dest = self.path_of(&r.sha1);
        let dir = dest.parent().map(Path::to_path_buf).unwrap_or_else(|| self.root.clone());
        tokio::fs::create_dir_all(&dir).await?;
        tokio::fs::rename(&r.tmp, &dest).await?;
        tokio::fs::File::open(&dir).await?.sync_all().await?;
        Ok(dest)
    }

    /// Why the file with this SHA-1 is not what its manifest says (missing, another size,
    /// other bytes), or `None` when it is. Reads the whole file.
    pub async fn verify(&self, sha1: &str, size: u64) -> Option<String> {
        let path = self.path_of(sha1);
        let mut f = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) => return Some(format!("its file {} cannot be read: {e}", path.display())),
        };
        let (mut h, mut n, mut buf) = (Sha1::new(), 0u64, vec![0u8; 1 << 20]);
        loop {
            match tokio::io::AsyncReadExt::read(&mut f, &mut buf).await {
                Ok(0) => break,
                Ok(k) => {
                    h.update(&buf[..k]);
                    n += k as u64;
                }
                Err(e) => return Some(format!("its file {} cannot be read: {e}", path.display())),
            }
        }
        let got = hex::encode(h.finalize());
        if n != size {
            Some(format!("its file {} has {n} bytes, the manifest says {size}", path.display()))
        } else if got != sha1 {
            Some(format!("its file {} is corrupt: its SHA-1 is {got}, the manifest says {sha1}", path.display()))
        } else {
            None
        }
    }

    /// Drops an upload that will not be used.
    pub async fn discard(&self, r: &Received) {
        let _ = tokio::fs::remove_file(&r.tmp).await;
    }

    /// Removes a file no image refers to any more. Call with `refs` held.
    pub async fn remove(&self, sha1: &str) {
        match tokio::fs::remove_file(self.path_of(sha1)).await {
            Ok(()) => tracing::info!(sha1, "removed unreferenced image file"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(sha1, error = %e, "could not remove unreferenced image file"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn streams_hashes_and_commits() {
        let dir = tempfile::tempdir().unwrap();
        let files = ImageFiles::open(dir.path().to_path_buf()).unwrap();
        let chunks: Vec<Result<Bytes, String>> = vec![Ok(Bytes::from_static(b"hello ")), Ok(Bytes::from_static(b"world"))];
        let r = files.receive(futures_util::stream::iter(chunks), 100).await.unwrap();
        assert_eq!(r.sha1, "2aae6c35c94fcfb415dbe95f408b9ce91ee846ed");
        assert_eq!(r.md5, "XrY7u+Ae7tCTyyK7j1rNww==");
        assert_eq!((r.size, r.head.as_slice()), (11, &b"hello world"[..]));
        let path = files.commit(&r).await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"hello world");
        assert!(path.ends_with("sha1/2a/2aae6c35c94fcfb415dbe95f408b9ce91ee846ed"));
        files.remove(&r.sha1).await;
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn oversize_and_broken_uploads_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let files = ImageFiles::open(dir.path().to_path_buf()).unwrap();
        let big: Vec<Result<Bytes, String>> = vec![Ok(Bytes::from(vec![0u8; 64])), Ok(Bytes::from(vec![0u8; 64]))];
        assert!(matches!(files.receive(futures_util::stream::iter(big), 100).await, Err(ReceiveError::TooLarge(100))));
        let broken: Vec<Result<Bytes, String>> = vec![Ok(Bytes::from_static(b"x")), Err("connection reset".into())];
        assert!(matches!(files.receive(futures_util::stream::iter(broken), 100).await, Err(ReceiveError::Body(_))));
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }
}
