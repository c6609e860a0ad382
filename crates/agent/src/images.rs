//! The compute node's image cache: one installed base per image, pulled from IMGAPI (via
//! the headnode) on first use, verified, unpacked, and shared read-only by every VM's
//! copy-on-write disk.
//!
//! ```text
//!   get(image) ─ cached? ─yes─► base
//!        │ no (one download per image, however many VMs ask at once)
//!        ▼
//!   manifest (files[0]: sha1, size, compression)
//!   stream the file → <image>/download.part, hashing as it goes
//!   size and sha1 match? ─no─► error naming both sums; nothing kept
//!   decompress → base.tmp → detect raw/qcow2 → base.<format> (read-only) + base.json
//! ```
//! A crash leaves only `*.part`/`*.tmp` files, which the next attempt replaces.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use nereid_diskimage::{Compression, Format};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha1::{Digest, Sha1};
use uuid::Uuid;

/// Where image manifests and files come from (the headnode's IMGAPI).
#[async_trait]
pub trait Fetch: Send + Sync + 'static {
    async fn manifest(&self, image: Uuid) -> Result<Value, String>;
    async fn file(&self, image: Uuid) -> Result<BoxStream<'static, Result<Bytes, String>>, String>;
}

/// An installed image disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Base {
    pub path: PathBuf,
    /// `raw` or `qcow2`.
    pub format: String,
    /// Bytes the guest sees.
    pub virtual_size: u64,
    pub sha1: String,
}

pub struct ImageCache {
    dir: PathBuf,
    fetch: Arc<dyn Fetch>,
    locks: Mutex<HashMap<Uuid, Arc<tokio::sync::Mutex<()>>>>,
}

/// The facts of `files[0]` a download is checked against.
struct FileFacts {
    sha1: String,
    size: u64,
    compression: Compression,
}

fn file_facts(image: Uuid, manifest: &Value) -> Result<FileFacts, String> {
    let f = manifest.get("files").and_then(|f| f.get(0)).ok_or_else(|| format!("image {image} has no file (is it active?)"))?;
    let sha1 = f.get("sha1").and_then(Value::as_str).ok_or_else(|| format!("image {image}'s file has no sha1"))?.to_string();
    let size = f.get("size").and_then(Value::as_u64).ok_or_else(|| format!("image {image}'s file has no size"))?;
    let c = f.get("compression").and_then(Value::as_str).unwrap_or("none");
    let compression = Compression::parse(c).ok_or_else(|| format!("image {image}'s file has unknown compression {c:?}"))?;
    Ok(FileFacts { sha1, size, compression })
}

impl ImageCache {
    pub fn new(dir: PathBuf, fetch: Arc<dyn Fetch>) -> Self {
        ImageCache { dir, fetch, locks: Mutex::new(HashMap::new()) }
    }

    fn image_dir(&self, image: Uuid) -> PathBuf {
        self.dir.join(image.to_string())
    }

    /// The installed base, if there is one.
    pub fn cached(&self, image: Uuid) -> Option<Base> {
        let b: Base = serde_json::from_slice(&std::fs::read(self.image_dir(image).join("base.json")).ok()?).ok()?;
        b.path.exists().then_some(b)
    }

    /// The image's base, downloading and installing it first if needed.
    pub async fn get(&self, image: Uuid) -> Result<Base, String> {
        if let Some(b) = self.cached(image) {
            return Ok(b);
        }
        let lock = self.locks.lock().unwrap_or_else(|p| p.into_inner()).entry(image).or_default().clone();
        let _held = lock.lock().await;
        if let Some(b) = self.cached(image) {
            return Ok(b);
        }
        let started = Instant::now();
        let result = self.install(image).await;
        match &result {
            Ok(b) => {
                tracing::info!(%image, format = %b.format, virtual_size = b.virtual_size, secs = started.elapsed().as_secs_f32(), "image installed")
            }
            Err(e) => tracing::warn!(%image, error = %e, "installing the image failed"),
        }
        result
    }

    async fn install(&self, image: Uuid) -> Result<Base, String> {
        let dir = self.image_dir(image);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let manifest = self.fetch.manifest(image).await?;
        let facts = file_facts(image, &manifest)?;
        let part = dir.join("download.part");
        let outcome = self.download(image, &part, &facts).await;
        if let Err(e) = outcome {
            let _ = std::fs::remove_file(&part);
            return Err(e);
        }
        let tmp = dir.join("base.tmp");
        let (p2, t2, c) = (part.clone(), tmp.clone(), facts.compression);
        let unpacked = tokio::task::spawn_blocking(move || unpack(&p2, &t2, c)).await.map_err(|e| e.to_string())?;
        let _ = std::fs::remove_file(&part);
        let (format, virtual_size) = match unpacked {
            Ok(x) => x,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(format!("image {image}: unpacking its file failed: {e}"));
            }
        };
        let path = dir.join(format!("base.{}", format.as_str()));
        std::fs::rename(&tmp, &path).map_err(|e| format!("{}: {e}", path.display()))?;
        // Shared by every VM's overlay: nothing may write it.
        let _ = std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o444));
        let base = Base { path, format: format.as_str().into(), virtual_size, sha1: facts.sha1 };
        let json = dir.join("base.json");
        let bytes = serde_json::to_vec_pretty(&base).map_err(|e| e.to_string())?;
        write_synced(&json, &bytes).map_err(|e| format!("{}: {e}", json.display()))?;
        Ok(base)
    }

    async fn download(&self, image: Uuid, part: &Path, facts: &FileFacts) -> Result<(), String> {
        let mut stream = self.fetch.file(image).await?;
        let mut out = std::fs::File::create(part).map_err(|e| format!("image {image}: {}: {e}", part.display()))?;
        let mut sha = Sha1::new();
        let mut got: u64 = 0;
        let mut last_log = Instant::now();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| format!("image {image}: downloading its file failed: {e}"))?;
            sha.update(&chunk);
            got += chunk.len() as u64;
            if got > facts.size {
                return Err(format!("image {image}: the server sent more than the manifest's {} bytes", facts.size));
            }
            out.write_all(&chunk).map_err(|e| format!("image {image}: writing {}: {e}", part.display()))?;
            if last_log.elapsed() > Duration::from_secs(5) {
                tracing::info!(%image, "downloading: {} of {} MiB", got >> 20, facts.size >> 20);
                last_log = Instant::now();
            }
        }
        out.sync_all().map_err(|e| format!("image {image}: writing {}: {e}", part.display()))?;
        if got != facts.size {
            return Err(format!("image {image}: the download ended after {got} of {} bytes", facts.size));
        }
        let sum = hex::encode(sha.finalize());
        if sum != facts.sha1 {
            return Err(format!(
                "image {image}'s file is corrupt: its sha1 is {sum} but the manifest says {} (nothing was installed)",
                facts.sha1
            ));
        }
        Ok(())
    }
}

/// Decompresses `from` into `to`; returns the disk format and virtual size.
fn unpack(from: &Path, to: &Path, c: Compression) -> Result<(Format, u64), String> {
    let n = if c == Compression::None {
        std::fs::rename(from, to).map_err(|e| format!("{}: {e}", to.display()))?;
        std::fs::metadata(to).map_err(|e| e.to_string())?.len()
    } else {
        let input = std::fs::File::open(from).map_err(|e| format!("{}: {e}", from.display()))?;
        let mut out = std::fs::File::create(to).map_err(|e| format!("{}: {e}", to.display()))?;
        let n = nereid_diskimage::decompress(c, input, &mut out).map_err(|e| e.to_string())?;
        out.sync_all().map_err(|e| format!("{}: {e}", to.display()))?;
        n
    };
    let mut head = vec![0u8; 512];
    let got = std::io::Read::read(&mut std::fs::File::open(to).map_err(|e| e.to_string())?, &mut head).map_err(|e| e.to_string())?;
    match nereid_diskimage::qcow2_header(&head[..got]).map_err(|e| e.to_string())? {
        Some(q) => Ok((Format::Qcow2, q.virtual_size)),
        None if n == 0 => Err("the image's disk is empty".into()),
        None => Ok((Format::Raw, n)),
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Fake {
        file: Vec<u8>,
        manifest: Value,
        downloads: AtomicUsize,
    }

    #[async_trait]
    impl Fetch for Fake {
        async fn manifest(&self, _: Uuid) -> Result<Value, String> {
            Ok(self.manifest.clone())
        }
        async fn file(&self, _: Uuid) -> Result<BoxStream<'static, Result<Bytes, String>>, String> {
            self.downloads.fetch_add(1, Ordering::SeqCst);
            let chunks: Vec<Result<Bytes, String>> = self.file.chunks(1000).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
            Ok(futures_util::stream::iter(chunks)
                .then(|c| async move {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    c
                })
                .boxed())
        }
    }

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn fake(file: Vec<u8>, sha1: Option<&str>, compression: &str) -> Arc<Fake> {
        let sum = sha1.map(str::to_string).unwrap_or_else(|| hex::encode(Sha1::digest(&file)));
        let manifest = json!({"files": [{"sha1": sum, "size": file.len(), "compression": compression}]});
        Arc::new(Fake { file, manifest, downloads: AtomicUsize::new(0) })
    }

    #[tokio::test]
    async fn installs_once_even_when_asked_concurrently() {
        let d = tempfile::tempdir().unwrap();
        let disk = vec![42u8; 64 * 1024];
        let f = fake(gz(&disk), None, "gzip");
        let cache = Arc::new(ImageCache::new(d.path().to_path_buf(), f.clone()));
        let image = Uuid::new_v4();
        let (a, b) = tokio::join!(cache.get(image), cache.get(image));
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(a, b);
        assert_eq!((a.format.as_str(), a.virtual_size), ("raw", disk.len() as u64));
        assert_eq!(std::fs::read(&a.path).unwrap(), disk, "decompressed");
        assert_eq!(f.downloads.load(Ordering::SeqCst), 1);
        cache.get(image).await.unwrap();
        assert_eq!(f.downloads.load(Ordering::SeqCst), 1, "cached");
        assert!(std::fs::metadata(&a.path).unwrap().permissions().readonly());
    }

    #[tokio::test]
    async fn a_corrupt_file_is_refused_naming_both_sums_and_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let wrong = "0000000000000000000000000000000000000000";
        let cache = ImageCache::new(d.path().to_path_buf(), fake(vec![1u8; 5000], Some(wrong), "none"));
        let image = Uuid::new_v4();
        let e = cache.get(image).await.unwrap_err();
        assert!(e.contains("corrupt") && e.contains(wrong) && e.contains(&image.to_string()), "{e}");
        let left: Vec<_> = std::fs::read_dir(d.path().join(image.to_string())).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
        assert!(cache.cached(image).is_none());
    }

    #[tokio::test]
    async fn damaged_compression_and_missing_files_are_explained() {
        let d = tempfile::tempdir().unwrap();
        let mut bad = gz(&[9u8; 10_000]);
        let n = bad.len();
        bad[n / 2] ^= 0xff;
        let cache = ImageCache::new(d.path().to_path_buf(), fake(bad, None, "gzip"));
        let e = cache.get(Uuid::new_v4()).await.unwrap_err();
        assert!(e.contains("unpacking"), "{e}");
        let nofile = Arc::new(Fake { file: vec![], manifest: json!({"state": "unactivated"}), downloads: AtomicUsize::new(0) });
        let e = ImageCache::new(d.path().to_path_buf(), nofile).get(Uuid::new_v4()).await.unwrap_err();
        assert!(e.contains("has no file"), "{e}");
    }
}
