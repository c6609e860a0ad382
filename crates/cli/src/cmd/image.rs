//! `nereid image create-from-disk` and `nereid image import`.
//!
//! create-from-disk replaces Triton's 8-step recipe with one pass over the file
//! (inspect → manifest → CreateImage → AddImageFile → ActivateImage); import does what
//! `sdc-imgadm import -m MANIFEST -f FILE` does. Both delete the half-made image if any
//! step after its creation fails, so a failure never leaves an unusable image behind.

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use futures_util::TryStreamExt;
use nereid_client::{Client, enc};
use nereid_diskimage::{Compression, inspect};
use serde_json::{Map, Value, json};

use crate::cli::{CreateFromDiskArgs, ImageArgs, ImageCmd, ImportArgs};
use crate::output;
use crate::progress::Progress;

pub async fn run(a: ImageArgs) -> Result<()> {
    let c = super::client(&a.client)?;
    match a.cmd {
        ImageCmd::CreateFromDisk(x) => create_from_disk(&c, x, a.client.json).await,
        ImageCmd::Import(x) => import(&c, x, a.client.json).await,
    }
}

/// What the arguments say about the image (its manifest is built by
/// [`nereid_types::image::DiskImage::manifest`], the same as the web console's upload).
pub fn disk_image(a: &CreateFromDiskArgs) -> nereid_types::image::DiskImage {
    nereid_types::image::DiskImage {
        name: a.name.clone(),
        version: a.version.clone(),
        os: a.os.clone(),
        description: a.description.clone(),
        bootrom: a.bootrom.clone(),
        owner: a.owner,
        public: !a.private,
        nic_driver: a.nic_driver.clone(),
        disk_driver: a.disk_driver.clone(),
        cpu_type: a.cpu_type.clone(),
    }
}

async fn create_from_disk(c: &Client, a: CreateFromDiskArgs, json: bool) -> Result<()> {
    let size = std::fs::metadata(&a.file).with_context(|| format!("reading {}", a.file.display()))?.len();
    let prog = Progress::bytes(size, "reading disk");
    let (path, p) = (a.file.clone(), prog.clone());
    let found = tokio::task::spawn_blocking(move || inspect(&path, &mut |n| p.set(n)))
        .await?
        .with_context(|| format!("{} cannot be used as an image", a.file.display()))?;
    prog.finish();
    eprintln!(
        "{}: {} disk, compression {}, virtual size {} MiB, file {} bytes, sha1 {}",
        a.file.display(),
        found.format.as_str(),
        found.compression.as_str(),
        found.image_size_mib(),
        found.file_size,
        found.sha1
    );
    let m = disk_image(&a).manifest(found.image_size_mib());
    // The server validates too; checking here names problems before anything is created.
    nereid_types::image::check_create(&m, nereid_types::image::Origin::Create).map_err(|e| {
        anyhow!(nereid_client::Error::Api {
            status: e.status,
            code: e.code.clone(),
            message: e.message.clone(),
            errors: vec![],
            body: Box::new(Value::Null)
        })
    })?;
    let created = c.post("/images", &Value::Object(m)).await?;
    let uuid =
        created.get("uuid").and_then(Value::as_str).ok_or_else(|| anyhow!("CreateImage answered without a uuid: {created}"))?.to_string();
    match upload_and_activate(c, &uuid, &a.file, found.compression, Some(&found.sha1), found.file_size).await {
        Ok(img) => {
            if json {
                output::object(&img, true);
            } else {
                println!("{uuid}");
            }
            Ok(())
        }
        Err(e) => Err(rollback(c, &uuid, e).await),
    }
}

/// Uploads the file, checks what the server stored, activates.
async fn upload_and_activate(
    c: &Client,
    uuid: &str,
    file: &Path,
    compression: Compression,
    sha1: Option<&str>,
    size: u64,
) -> Result<Value> {
    let f = tokio::fs::File::open(file).await.with_context(|| format!("opening {}", file.display()))?;
    let prog = Progress::bytes(size, "uploading");
    let p = prog.clone();
    let stream = tokio_util::io::ReaderStream::with_capacity(f, 256 * 1024).inspect_ok(move |chunk| p.inc(chunk.len() as u64));
    let mut path = format!("/images/{}/file?compression={}", enc(uuid), compression.as_str());
    if let Some(s) = sha1 {
        path.push_str(&format!("&sha1={s}"));
    }
    let req = c
        .request(reqwest::Method::PUT, &path)
        .header(reqwest::header::CONTENT_LENGTH, size)
        .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
        .body(reqwest::Body::wrap_stream(stream));
    let img = c.send(req).await.context("uploading the image file")?;
    prog.finish();
    let stored = img.pointer("/files/0").cloned().unwrap_or(Value::Null);
    // A zvol image's ZFS send stream is stored converted into the disk it holds: files[0]
    // then describes the disk, and source_sha1/source_size the file as it was uploaded.
    let (sha1_key, size_key) = if stored.get("source_sha1").is_some() { ("source_sha1", "source_size") } else { ("sha1", "size") };
    if let Some(s) = sha1
        && stored.get(sha1_key).and_then(Value::as_str) != Some(s)
    {
        bail!("the headnode stored {sha1_key} {} but the file has {s}", stored.get(sha1_key).unwrap_or(&Value::Null));
    }
    if stored.get(size_key).and_then(Value::as_u64) != Some(size) {
        bail!("the headnode stored {} bytes ({size_key}) but the file has {size}", stored.get(size_key).unwrap_or(&Value::Null));
    }
    c.post(&format!("/images/{}?action=activate", enc(uuid)), &json!({})).await.context("activating the image")
}

/// Deletes a half-made image and says so in the error.
async fn rollback(c: &Client, uuid: &str, e: anyhow::Error) -> anyhow::Error {
    match c.delete(&format!("/images/{}", enc(uuid))).await {
        Ok(_) => e.context(format!("image {uuid} was not completed and has been deleted")),
        Err(d) if d.status() == Some(404) => e,
        Err(d) => e.context(format!(
            "image {uuid} was not completed, and deleting it failed too ({d}); delete it with `nereid admin image delete {uuid}`"
        )),
    }
}

async fn import(c: &Client, a: ImportArgs, json: bool) -> Result<()> {
    let text = std::fs::read_to_string(&a.manifest).with_context(|| format!("reading {}", a.manifest.display()))?;
    let manifest: Map<String, Value> = match serde_json::from_str(&text).with_context(|| format!("{} is not JSON", a.manifest.display()))? {
        Value::Object(m) => m,
        _ => bail!("{} must hold a JSON object (an image manifest)", a.manifest.display()),
    };
    let uuid = manifest
        .get("uuid")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("{} has no uuid; import keeps the manifest's UUID", a.manifest.display()))?
        .to_string();
    let meta = std::fs::metadata(&a.file).with_context(|| format!("reading {}", a.file.display()))?;
    let file0 = manifest.get("files").and_then(|f| f.get(0)).cloned().unwrap_or(Value::Null);
    let compression = match file0.get("compression").and_then(Value::as_str) {
        Some(s) => Compression::parse(s)
            .ok_or_else(|| anyhow!("the manifest's files[0].compression {s:?} is not one of none, gzip, bzip2, xz, zstd"))?,
        None => sniff(&a.file)?,
    };
    let sha1 = file0.get("sha1").and_then(Value::as_str).map(str::to_string);
    if let Some(want) = file0.get("size").and_then(Value::as_u64)
        && want != meta.len()
    {
        eprintln!("warning: the manifest says the file has {want} bytes, {} has {}", a.file.display(), meta.len());
    }
    c.post(&format!("/images/{}?action=import", enc(&uuid)), &Value::Object(manifest)).await?;
    match upload_and_activate(c, &uuid, &a.file, compression, sha1.as_deref(), meta.len()).await {
        Ok(img) => {
            if json {
                output::object(&img, true);
            } else {
                println!(
                    "Imported image {uuid} ({}@{})",
                    img.get("name").and_then(Value::as_str).unwrap_or("?"),
                    img.get("version").and_then(Value::as_str).unwrap_or("?")
                );
            }
            Ok(())
        }
        Err(e) => Err(rollback(c, &uuid, e).await),
    }
}

fn sniff(file: &Path) -> Result<Compression> {
    use std::io::Read;
    let mut head = [0u8; 16];
    let n = std::fs::File::open(file)?.read(&mut head)?;
    Ok(Compression::sniff(&head[..n]))
}
