//! IMGAPI over HTTP and the image commands: create-from-disk, import (with rollback),
//! the lifecycle, downloads, listing — on both stores.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use base64::Engine as _;
use common::*;
use serde_json::{Value, json};

both_backends!(
    create_from_raw_disk,
    create_from_zstd_qcow2,
    import_rolls_back_a_corrupt_file,
    import_keeps_uuid,
    image_lifecycle_and_files,
    list_filters_and_marker
);

const MIB: usize = 1 << 20;

async fn download(cloud: &Cloud, uuid: &str, range: Option<&str>) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let mut req = cloud.client.request(reqwest::Method::GET, &format!("/images/{uuid}/file"));
    if let Some(r) = range {
        req = req.header("range", r);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.headers().clone(), resp.bytes().await.unwrap().to_vec())
}

fn qemu_img(args: &[&str]) {
    let out =
        Command::new("qemu-img").args(args).output().expect("qemu-img is missing: install qemu-utils (the README's test command does)");
    assert!(out.status.success(), "qemu-img {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

async fn create_from_raw_disk(b: Backend) {
    let cloud = Cloud::start(b).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.raw");
    let data = noise(64 * MIB, 1);
    write(&disk, &data);
    let o = nereid_async(
        &cloud,
        &["image", "create-from-disk", disk.to_str().unwrap(), "--name", "raw-disk", "--version", "1.0", "--description", "a raw disk"],
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    let uuid = stdout(&o).trim().to_string();
    let img = cloud.client.get(&format!("/images/{uuid}")).await.unwrap();
    assert_eq!(img["state"], "active");
    assert_eq!(img["type"], "zvol");
    assert_eq!(img["image_size"], 64);
    assert_eq!(img["public"], true);
    assert_eq!(img["files"][0]["sha1"], sha1_hex(&data));
    assert_eq!(img["files"][0]["size"], 64 * MIB);
    assert_eq!(img["files"][0]["compression"], "none");
    assert!(img["published_at"].is_string());
    let (status, headers, body) = download(&cloud, &uuid, None).await;
    assert_eq!(status, 200);
    assert!(body == data, "download differs from the disk");
    assert_eq!(headers["etag"], sha1_hex(&data).as_str());
    assert_eq!(headers["content-length"], (64 * MIB).to_string().as_str());
    use md5::Digest;
    assert_eq!(headers["content-md5"], base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(&data)).as_str());
    let (status, headers, body) = download(&cloud, &uuid, Some("bytes=1000-1999")).await;
    assert_eq!((status, body.as_slice()), (206, &data[1000..2000]));
    assert_eq!(headers["content-range"], format!("bytes 1000-1999/{}", 64 * MIB).as_str());
    let (status, _, _) = download(&cloud, &uuid, Some("bytes=99999999999-")).await;
    assert_eq!(status, 416);
    let resp = cloud
        .client
        .request(reqwest::Method::GET, &format!("/images/{uuid}/file"))
        .header("if-none-match", sha1_hex(&data))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 304);
}

async fn create_from_zstd_qcow2(b: Backend) {
    let cloud = Cloud::start(b).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    let qcow = dir.path().join("disk.qcow2");
    write(&raw, &noise(8 * MIB, 2));
    qemu_img(&["convert", "-f", "raw", "-O", "qcow2", raw.to_str().unwrap(), qcow.to_str().unwrap()]);
    qemu_img(&["resize", "-f", "qcow2", qcow.to_str().unwrap(), "3G"]);
    let compressed =
        ruzstd::encoding::compress_to_vec(std::fs::read(&qcow).unwrap().as_slice(), ruzstd::encoding::CompressionLevel::Fastest);
    let zst = dir.path().join("disk.qcow2.zst");
    write(&zst, &compressed);
    let o = nereid_async(
        &cloud,
        &[
            "image",
            "create-from-disk",
            zst.to_str().unwrap(),
            "--name",
            "qcow",
            "--version",
            "2",
            "--bootrom",
            "uefi",
            "--private",
            "--json",
        ],
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("qcow2 disk, compression zstd, virtual size 3072 MiB"), "{}", stderr(&o));
    let img: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(img["image_size"], 3072);
    assert_eq!(img["public"], false);
    assert_eq!(img["requirements"], json!({"brand": "bhyve", "bootrom": "uefi"}));
    assert_eq!(img["files"][0]["compression"], "zstd");
    assert_eq!(img["files"][0]["sha1"], sha1_hex(&compressed));
    assert_eq!(img["files"][0]["size"], compressed.len());
    let (_, _, body) = download(&cloud, img["uuid"].as_str().unwrap(), None).await;
    assert!(body == compressed);
}

fn manifest(uuid: &str, sha1: &str, size: usize) -> Value {
    json!({"v": 2, "uuid": uuid, "owner": "00000000-0000-0000-0000-000000000000", "name": "imported", "version": "20261125",
        "state": "active", "disabled": false, "public": true, "published_at": "2026-01-02T03:04:05.000Z",
        "type": "zvol", "os": "linux", "nic_driver": "virtio", "disk_driver": "virtio", "cpu_type": "host", "image_size": 10240,
        "files": [{"sha1": sha1, "size": size, "compression": "gzip"}]})
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn files_on_disk(cloud: &Cloud) -> usize {
    let mut n = 0;
    for sub in ["sha1", "tmp"] {
        let root = cloud.data_dir.join("images").join(sub);
        for e in walk(&root) {
            if e.is_file() {
                n += 1;
            }
        }
    }
    n
}

fn walk(p: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let path = e.path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
    }
    out
}

async fn import_rolls_back_a_corrupt_file(b: Backend) {
    let cloud = Cloud::start(b).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = gzip(&noise(2 * MIB, 3));
    let f = dir.path().join("image.gz");
    write(&f, &file);
    let uuid = "0c4c3b36-7b68-4b3f-8b6a-4c1b8a6e2f10";
    let mut wrong = sha1_hex(&file);
    wrong.replace_range(0..4, "0000");
    let m = dir.path().join("manifest.json");
    write(&m, manifest(uuid, &wrong, file.len()).to_string().as_bytes());
    let o = nereid_async(&cloud, &["image", "import", "-m", m.to_str().unwrap(), "-f", f.to_str().unwrap()]).await;
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("sha1 mismatch") && err.contains("has been deleted"), "{err}");
    api_err(cloud.client.get(&format!("/images/{uuid}")).await, 404, "ResourceNotFound");
    assert_eq!(cloud.client.get("/images?state=all").await.unwrap(), json!([]));
    assert_eq!(files_on_disk(&cloud), 0, "no image file may be left behind");
}

async fn import_keeps_uuid(b: Backend) {
    let cloud = Cloud::start(b).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = gzip(&noise(MIB, 4));
    let f = dir.path().join("image.gz");
    write(&f, &file);
    let uuid = "1c4c3b36-7b68-4b3f-8b6a-4c1b8a6e2f10";
    let m = dir.path().join("manifest.json");
    write(&m, manifest(uuid, &sha1_hex(&file), file.len()).to_string().as_bytes());
    let o = nereid_async(&cloud, &["image", "import", "-m", m.to_str().unwrap(), "-f", f.to_str().unwrap()]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains(&format!("Imported image {uuid} (imported@20261125)")));
    let img = cloud.client.get(&format!("/images/{uuid}")).await.unwrap();
    assert_eq!((img["state"].as_str(), img["published_at"].as_str()), (Some("active"), Some("2026-01-02T03:04:05.000Z")));
    // Importing the same UUID again is ImageUuidAlreadyExists.
    api_err(cloud.client.post(&format!("/images/{uuid}?action=import"), &manifest(uuid, "x", 1)).await, 409, "ImageUuidAlreadyExists");
}

fn zvol(name: &str) -> Value {
    json!({"owner": "00000000-0000-0000-0000-000000000000", "name": name, "version": "1", "type": "zvol", "os": "linux",
        "nic_driver": "virtio", "disk_driver": "virtio", "cpu_type": "host", "image_size": 1024})
}

async fn put_file(cloud: &Cloud, uuid: &str, query: &str, data: Vec<u8>) -> Result<Value, nereid_client::Error> {
    cloud.client.send(cloud.client.request(reqwest::Method::PUT, &format!("/images/{uuid}/file?{query}")).body(data)).await
}

async fn image_lifecycle_and_files(b: Backend) {
    let cloud = Cloud::start(b).await.unwrap();
    let c = &cloud.client;
    let a = c.post("/images", &zvol("a")).await.unwrap();
    let ua = a["uuid"].as_str().unwrap().to_string();
    assert_eq!((a["state"].as_str(), a["files"].clone()), (Some("unactivated"), json!([])));
    // A uuid may not be chosen on CreateImage; unknown keys are InvalidParameter.
    let mut bad = zvol("b");
    bad["uuid"] = json!(ua);
    api_err(c.post("/images", &bad).await, 422, "ValidationFailed");
    let mut bad = zvol("b");
    bad["colour"] = json!("red");
    assert_eq!(api_err(c.post("/images", &bad).await, 422, "InvalidParameter")["message"], "invalid extra parameters: colour");
    // Activation needs a file.
    api_err(c.post(&format!("/images/{ua}?action=activate"), &json!({})).await, 422, "NoActivationNoFile");
    // The declared compression must match the bytes; an empty file is refused.
    let data = gzip(&noise(100_000, 5));
    let body = api_err(put_file(&cloud, &ua, "compression=none", data.clone()).await, 422, "InvalidParameter");
    assert!(body["errors"][0]["message"].as_str().unwrap().contains("gzip-compressed"));
    api_err(put_file(&cloud, &ua, "compression=gzip", vec![]).await, 400, "Upload");
    api_err(put_file(&cloud, &ua, "sha1=abc", data.clone()).await, 422, "InvalidParameter");
    let up = put_file(&cloud, &ua, "compression=gzip", data.clone()).await.unwrap();
    assert_eq!(up["files"][0]["sha1"], sha1_hex(&data));
    let act = c.post(&format!("/images/{ua}?action=activate"), &json!({})).await.unwrap();
    assert_eq!(act["state"], "active");
    api_err(put_file(&cloud, &ua, "compression=gzip", data.clone()).await, 422, "ImageFilesImmutable");
    api_err(c.post(&format!("/images/{ua}?action=activate"), &json!({})).await, 422, "ImageAlreadyActivated");
    // Disable / enable; update of mutable and immutable fields.
    assert_eq!(c.post(&format!("/images/{ua}?action=disable"), &json!({})).await.unwrap()["state"], "disabled");
    assert_eq!(c.post(&format!("/images/{ua}?action=enable"), &json!({})).await.unwrap()["state"], "active");
    assert_eq!(
        c.post(&format!("/images/{ua}?action=update"), &json!({"description": "hi", "tags": {"role": "os"}})).await.unwrap()["description"],
        "hi"
    );
    api_err(c.post(&format!("/images/{ua}?action=update"), &json!({"name": "renamed"})).await, 422, "ValidationFailed");
    // Two images with the same bytes share one stored file, removed with the last of them.
    let ub = c.post("/images", &zvol("b")).await.unwrap()["uuid"].as_str().unwrap().to_string();
    put_file(&cloud, &ub, "compression=gzip", data.clone()).await.unwrap();
    assert_eq!(files_on_disk(&cloud), 1);
    c.delete(&format!("/images/{ua}")).await.unwrap();
    assert_eq!(files_on_disk(&cloud), 1);
    assert_eq!(download(&cloud, &ub, None).await.2, data);
    c.delete(&format!("/images/{ub}")).await.unwrap();
    assert_eq!(files_on_disk(&cloud), 0);
    // Incremental images need an active origin and block its deletion.
    let base = c.post("/images", &zvol("base")).await.unwrap()["uuid"].as_str().unwrap().to_string();
    let mut inc = zvol("inc");
    inc["origin"] = json!(base);
    api_err(c.post("/images", &inc).await, 422, "OriginIsNotActive");
    put_file(&cloud, &base, "compression=gzip", data.clone()).await.unwrap();
    c.post(&format!("/images/{base}?action=activate"), &json!({})).await.unwrap();
    c.post("/images", &inc).await.unwrap();
    api_err(c.delete(&format!("/images/{base}")).await, 422, "ImageHasDependentImages");
}

async fn list_filters_and_marker(b: Backend) {
    let cloud = Cloud::start(b).await.unwrap();
    let c = &cloud.client;
    let data = gzip(b"tiny image");
    let mut ids = Vec::new();
    for i in 0..7 {
        let mut m = zvol(&format!("{}-{i}", if i % 2 == 0 { "ubuntu" } else { "debian" }));
        m["tags"] = json!({"role": if i < 3 { "os" } else { "db" }, "n": i});
        let id = c.post("/images", &m).await.unwrap()["uuid"].as_str().unwrap().to_string();
        put_file(&cloud, &id, "compression=gzip", data.clone()).await.unwrap();
        if i != 6 {
            c.post(&format!("/images/{id}?action=activate"), &json!({})).await.unwrap();
        }
        ids.push(id);
    }
    let names = |v: Value| v.as_array().unwrap().iter().map(|i| i["name"].as_str().unwrap().to_string()).collect::<Vec<_>>();
    assert_eq!(names(c.get("/images").await.unwrap()).len(), 6, "default is state=active");
    assert_eq!(names(c.get("/images?state=all").await.unwrap()).len(), 7);
    assert_eq!(names(c.get("/images?state=unactivated").await.unwrap()), ["ubuntu-6"]);
    assert_eq!(names(c.get("/images?name=~bunt").await.unwrap()), ["ubuntu-0", "ubuntu-2", "ubuntu-4"]);
    assert_eq!(names(c.get("/images?tag.role=os").await.unwrap()), ["ubuntu-0", "debian-1", "ubuntu-2"]);
    assert_eq!(names(c.get("/images?tag.n=4").await.unwrap()), ["ubuntu-4"]);
    assert_eq!(names(c.get("/images?type=!zvol").await.unwrap()), Vec::<String>::new());
    assert_eq!(names(c.get("/images?sort=published_at.desc&limit=2").await.unwrap()), ["debian-5", "ubuntu-4"]);
    // The marker is inclusive: paging with it yields every image once, plus the repeated marker.
    let mut seen = Vec::new();
    let mut marker: Option<String> = None;
    loop {
        let path = match &marker {
            None => "/images?limit=2".to_string(),
            Some(m) => format!("/images?limit=2&marker={m}"),
        };
        let page = c.get(&path).await.unwrap();
        let page = page.as_array().unwrap();
        let mut items: Vec<String> = page.iter().map(|i| i["uuid"].as_str().unwrap().to_string()).collect();
        if marker.is_some() {
            assert_eq!(items.first(), marker.as_ref(), "page starts with its marker");
            items.remove(0);
        }
        seen.extend(items.iter().cloned());
        if page.len() < 2 {
            break;
        }
        marker = Some(page.last().unwrap()["uuid"].as_str().unwrap().to_string());
    }
    assert_eq!(seen, ids[..6].to_vec());
    let body = api_err(c.get("/images?marker=nonsense").await, 422, "InvalidParameter");
    assert_eq!(body["errors"][0]["field"], "marker");
}
