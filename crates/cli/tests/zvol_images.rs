//! Triton's zvol images: `zfs send` streams (made by real OpenZFS, see
//! scripts/zfs-fixtures) imported through `nereid image import` / AdminImportImage +
//! AddImageFile become disks (compact qcow2); an incremental one applies on its origin's
//! disk; a damaged stream is refused with the offset of the damage and leaves nothing
//! behind.
//! `zfs send -I` (a compound stream of several incrementals) imports the same way, and so
//! do Triton manifests + streams fetched from another IMGAPI (`image import-remote`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use common::*;
use serde_json::{Value, json};

both_backends!(
    full_and_incremental_streams_import_as_disks,
    damaged_streams_are_refused_with_their_offset,
    import_remote_converts_triton_streams,
    a_declared_dataset_guid_does_not_make_an_origin
);

const FULL: &str = "7a3c0c52-3f0e-4a57-9d3e-2a4f7c1b9e01";
const INCR: &str = "7a3c0c52-3f0e-4a57-9d3e-2a4f7c1b9e02";
const INCR_AC: &str = "7a3c0c52-3f0e-4a57-9d3e-2a4f7c1b9e03";
const VOLSIZE: u64 = 4 << 20;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../diskimage/tests/fixtures/zfs").join(name)
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap()
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data).read_to_end(&mut out).unwrap();
    out
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// SHA-1 of the zvol at snapshot `a` or `b`, as the generator read it from /dev/zd0.
fn disk_sha1(snap: &str) -> String {
    String::from_utf8(read(&format!("disk-{snap}.img.sha1"))).unwrap().trim().to_string()
}

/// A snapshot's guid as `zfs get guid` printed it.
fn guid(snap: &str) -> String {
    let info = String::from_utf8(read("info.txt")).unwrap();
    let prefix = format!("nereid/vol@{snap}\tguid\t");
    info.lines().find_map(|l| l.strip_prefix(&prefix)).unwrap().to_string()
}

/// A Triton HVM manifest for a stream file (files[0] describes the stream, as Triton's do).
fn manifest(uuid: &str, origin: Option<&str>, file: &[u8], compression: &str) -> Value {
    let mut m = json!({"v": 2, "uuid": uuid, "owner": "00000000-0000-0000-0000-000000000000", "name": "zvol-fixture",
        "version": &uuid[uuid.len() - 2..], "state": "active", "disabled": false, "public": true,
        "published_at": "2026-01-02T03:04:05.000Z", "type": "zvol", "os": "other", "nic_driver": "virtio",
        "disk_driver": "virtio", "cpu_type": "host", "image_size": 4,
        "files": [{"sha1": sha1_hex(file), "size": file.len(), "compression": compression}]});
    if let Some(o) = origin {
        m["origin"] = json!(o);
    }
    m
}

/// `nereid image import` of a manifest and a file.
async fn import(cloud: &Cloud, manifest: &Value, file: &[u8]) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let (m, f) = (dir.path().join("manifest.json"), dir.path().join("file"));
    write(&m, manifest.to_string().as_bytes());
    write(&f, file);
    nereid_async(cloud, &["image", "import", "-m", m.to_str().unwrap(), "-f", f.to_str().unwrap()]).await
}

async fn download(cloud: &Cloud, uuid: &str) -> Vec<u8> {
    let r = cloud.client.request(reqwest::Method::GET, &format!("/images/{uuid}/file")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap().to_vec()
}

/// Files in the image store (content-addressed files, uploads and remote downloads in progress).
fn files_on_disk(cloud: &Cloud) -> Vec<PathBuf> {
    fn walk(p: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
            let path = e.path();
            if path.is_dir() { walk(&path, out) } else { out.push(path) }
        }
    }
    let mut out = Vec::new();
    for sub in ["sha1", "tmp", "partial"] {
        walk(&cloud.data_dir.join("images").join(sub), &mut out);
    }
    out
}

/// The disk image `uuid` stores, expanded: its file is a qcow2 holding only the zvol's
/// data, and files[0] describes that file.
async fn stored_disk(cloud: &Cloud, uuid: &str) -> Vec<u8> {
    let img = cloud.client.get(&format!("/images/{uuid}")).await.unwrap();
    let f = &img["files"][0];
    let file = download(cloud, uuid).await;
    assert_eq!((f["compression"].as_str(), f["size"].as_u64()), (Some("none"), Some(file.len() as u64)), "{img}");
    assert_eq!(f["sha1"], sha1_hex(&file).as_str());
    assert!(file.starts_with(b"QFI\xfb"), "a qcow2 file: {img}");
    assert!((file.len() as u64) < VOLSIZE / 2, "only the zvol's data is stored: {} bytes", file.len());
    let dir = tempfile::tempdir().unwrap();
    let (q, raw) = (dir.path().join("disk.qcow2"), dir.path().join("disk.raw"));
    write(&q, &file);
    nereid_diskimage::zfs_qcow2::qcow2_to_raw(&q, &raw).unwrap();
    std::fs::read(&raw).unwrap()
}

async fn full_and_incremental_streams_import_as_disks(b: Backend) {
    let cloud = Cloud::start(b).await.unwrap();
    let full = read("full.zfs.gz");
    let o = import(&cloud, &manifest(FULL, None, &full, "gzip"), &full).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let img = cloud.client.get(&format!("/images/{FULL}")).await.unwrap();
    assert_eq!(img["state"], "active");
    assert_eq!(img["files"][0]["dataset_guid"], guid("a").as_str(), "dataset_guid is the snapshot's guid");
    let uploaded = (img["files"][0]["source_sha1"].as_str(), img["files"][0]["source_size"].as_u64());
    assert_eq!(uploaded, (Some(sha1_hex(&full).as_str()), Some(full.len() as u64)), "the stream as uploaded is remembered: {img}");
    assert_eq!(img["image_size"], 4);
    let disk = stored_disk(&cloud, FULL).await;
    assert_eq!(disk.len() as u64, VOLSIZE);
    assert_eq!(sha1_hex(&disk), disk_sha1("a"), "the disk is the zvol's contents at @a");
    assert!(disk[512..].starts_with(b"nereid-zvol: snapshot a"));

    // The incremental (bzip2, zfs send -c -e) applies on the full image's disk.
    let incr = read("incr-ce.zfs.bz2");
    let o = import(&cloud, &manifest(INCR, Some(FULL), &incr, "bzip2"), &incr).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let img = cloud.client.get(&format!("/images/{INCR}")).await.unwrap();
    assert_eq!(img["files"][0]["dataset_guid"], guid("b").as_str());
    assert_eq!(img["origin"], FULL);
    assert_eq!(sha1_hex(&stored_disk(&cloud, INCR).await), disk_sha1("b"), "the disk is the zvol's contents at @b");
    // zfs send -I @a vol@c (a compound stream: a→b, b→c) on the same origin.
    let compound = read("incr-ac.zfs.gz");
    let o = import(&cloud, &manifest(INCR_AC, Some(FULL), &compound, "gzip"), &compound).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let img = cloud.client.get(&format!("/images/{INCR_AC}")).await.unwrap();
    assert_eq!(img["files"][0]["dataset_guid"], guid("c").as_str(), "{img}");
    assert_eq!(sha1_hex(&stored_disk(&cloud, INCR_AC).await), disk_sha1("c"));
    // The origin is untouched, and only the three disks are stored: no stream, no temporary file.
    assert_eq!(sha1_hex(&stored_disk(&cloud, FULL).await), disk_sha1("a"));
    let files = files_on_disk(&cloud);
    assert_eq!(files.len(), 3, "{files:?}");
}

async fn damaged_streams_are_refused_with_their_offset(b: Backend) {
    let cloud = Cloud::start(b).await.unwrap();
    let stream = gunzip(&read("full.zfs.gz"));

    // Truncated (uncompressed, through the CLI): refused, rolled back, nothing stored.
    let cut = stream.len() / 2;
    let truncated = &stream[..cut];
    let o = import(&cloud, &manifest(FULL, None, truncated, "none"), truncated).await;
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains(&format!("ZFS send stream, byte {cut}")) && err.contains("truncated"), "{err}");
    api_err(cloud.client.get(&format!("/images/{FULL}")).await, 404, "ResourceNotFound");
    assert!(files_on_disk(&cloud).is_empty(), "{:?}", files_on_disk(&cloud));

    // A flipped byte (gzip, over HTTP): 422 naming the record whose checksum fails.
    let mut bad = stream.clone();
    bad[312 + 40] ^= 1;
    let bad = gzip(&bad);
    cloud.client.post(&format!("/images/{FULL}?action=import"), &manifest(FULL, None, &bad, "gzip")).await.unwrap();
    let r = cloud.client.send(cloud.client.request(reqwest::Method::PUT, &format!("/images/{FULL}/file?compression=gzip")).body(bad)).await;
    let body = api_err(r, 422, "ValidationFailed");
    let msg = body["message"].as_str().unwrap();
    assert!(msg.contains("ZFS send stream, byte 312") && msg.contains("checksum mismatch"), "{msg}");
    assert_eq!(body["errors"][0]["field"], "file");
    let img = cloud.client.get(&format!("/images/{FULL}")).await.unwrap();
    assert_eq!((img["state"].as_str(), img["files"].as_array().map(Vec::len)), (Some("unactivated"), Some(0)));
    assert!(files_on_disk(&cloud).is_empty(), "{:?}", files_on_disk(&cloud));

    // The intact stream then attaches to the same image.
    let good = read("full.zfs.gz");
    let r =
        cloud.client.send(cloud.client.request(reqwest::Method::PUT, &format!("/images/{FULL}/file?compression=gzip")).body(good)).await;
    assert_eq!(r.unwrap()["files"][0]["dataset_guid"], guid("a").as_str());
    assert_eq!(sha1_hex(&stored_disk(&cloud, FULL).await), disk_sha1("a"));

    cloud.client.post(&format!("/images/{FULL}?action=activate"), &json!({})).await.unwrap();

    // An incremental stream needs its origin: without one it is refused at BEGIN's fromguid.
    let incr = read("incr.zfs.gz");
    let o = import(&cloud, &manifest(INCR, None, &incr, "gzip"), &incr).await;
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("ZFS send stream, byte 48") && err.contains("incremental"), "{err}");
    // A dataset_guid the stream contradicts names the field.
    cloud.client.post(&format!("/images/{INCR}?action=import"), &manifest(INCR, Some(FULL), &incr, "gzip")).await.unwrap();
    let r = cloud
        .client
        .send(cloud.client.request(reqwest::Method::PUT, &format!("/images/{INCR}/file?compression=gzip&dataset_guid=123")).body(incr))
        .await;
    let body = api_err(r, 422, "InvalidParameter");
    assert_eq!(body["errors"][0]["field"], "dataset_guid", "{body}");
    assert_eq!(files_on_disk(&cloud).len(), 1, "only the full image's disk: {:?}", files_on_disk(&cloud));
}

/// A minimal IMGAPI serving Triton-style manifests and their ZFS streams, as
/// images.smartos.org does (GET /ping, /images/:uuid, /images/:uuid/file).
async fn fake_imgapi(images: Vec<(Value, Vec<u8>)>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let images = std::sync::Arc::new(images);
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else { return };
            let images = images.clone();
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&req).lines().next().unwrap_or_default().to_string();
                let path = line.split(' ').nth(1).unwrap_or("/").split('?').next().unwrap_or("/").to_string();
                let (status, ctype, body) = if path == "/ping" {
                    (200, "application/json", json!({"ping": "pong", "imgapi": true}).to_string().into_bytes())
                } else if let Some((m, _)) = images.iter().find(|(m, _)| path == format!("/images/{}", m["uuid"].as_str().unwrap())) {
                    (200, "application/json", m.to_string().into_bytes())
                } else if let Some((_, f)) = images.iter().find(|(m, _)| path == format!("/images/{}/file", m["uuid"].as_str().unwrap())) {
                    (200, "application/octet-stream", f.clone())
                } else {
                    (404, "application/json", json!({"code": "ResourceNotFound", "message": path}).to_string().into_bytes())
                };
                let head =
                    format!("HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(&body).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    url
}

async fn import_remote_converts_triton_streams(b: Backend) {
    let cloud = Cloud::start(b).await.unwrap();
    let (full, incr) = (read("full.zfs.gz"), read("incr.zfs.gz"));
    let mut m_full = manifest(FULL, None, &full, "gzip");
    m_full["files"][0]["dataset_guid"] = json!(guid("a"));
    let mut m_incr = manifest(INCR, Some(FULL), &incr, "gzip");
    m_incr["files"][0]["dataset_guid"] = json!(guid("b"));
    let url = fake_imgapi(vec![(m_full, full), (m_incr, incr)]).await;
    let o = nereid_async(&cloud, &["admin", "image", "sources", "add", &url]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    // The incremental image: its origin is imported first, both converted.
    let o = nereid_async(&cloud, &["admin", "image", "import-remote", INCR]).await;
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    for (uuid, snap) in [(FULL, "a"), (INCR, "b")] {
        let img = cloud.client.get(&format!("/images/{uuid}")).await.unwrap();
        assert_eq!(img["state"], "active", "{img}");
        assert_eq!(img["files"][0]["dataset_guid"], guid(snap).as_str(), "the manifest's dataset_guid is the stream's snapshot");
        assert_eq!(sha1_hex(&stored_disk(&cloud, uuid).await), disk_sha1(snap));
    }
    assert_eq!(files_on_disk(&cloud).len(), 2, "{:?}", files_on_disk(&cloud));
}

/// An origin whose file was uploaded as a disk (not converted from a stream here) is no
/// origin for a stream, whatever dataset_guid it declares: a crafted qcow2 or raw file is
/// never read as a converted disk.
async fn a_declared_dataset_guid_does_not_make_an_origin(b: Backend) {
    let cloud = Cloud::start(b).await.unwrap();
    let mut disk = vec![0u8; VOLSIZE as usize];
    disk[510..512].copy_from_slice(&[0x55, 0xaa]);
    cloud.client.post(&format!("/images/{FULL}?action=import"), &manifest(FULL, None, &disk, "none")).await.unwrap();
    let r = cloud
        .client
        .send(
            cloud
                .client
                .request(reqwest::Method::PUT, &format!("/images/{FULL}/file?compression=none&dataset_guid={}", guid("a")))
                .body(disk),
        )
        .await
        .unwrap();
    assert_eq!(r["files"][0]["dataset_guid"], guid("a").as_str(), "{r}");
    assert!(r["files"][0].get("source_sha1").is_none(), "{r}");
    cloud.client.post(&format!("/images/{FULL}?action=activate"), &json!({})).await.unwrap();
    let before = files_on_disk(&cloud);

    let incr = read("incr.zfs.gz");
    let o = import(&cloud, &manifest(INCR, Some(FULL), &incr, "gzip"), &incr).await;
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains(&format!("origin image {FULL}")) && err.contains("not imported from a ZFS send stream"), "{err}");
    api_err(cloud.client.get(&format!("/images/{INCR}")).await, 404, "ResourceNotFound");
    assert_eq!(files_on_disk(&cloud), before, "nothing left behind");
}
