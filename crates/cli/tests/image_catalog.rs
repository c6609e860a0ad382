//! Image catalogues: one cloud publishes its public, active images on
//! `--image-catalog-listen` (IMGAPI's public endpoints, read-only, no authentication);
//! another adds it as an image source, lists it (`image avail`) and imports by UUID
//! (`image import-remote`: origin first, UUIDs kept, files byte-identical). An import cut
//! off halfway resumes with a Range request; a corrupted download is refused and leaves
//! nothing behind. The faults come from a small TCP proxy in front of the real catalogue.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use nereid_testkit::Options;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

both_backends!(publish_list_and_import_with_origin);

const MIB: usize = 1 << 20;

fn zvol(name: &str, extra: Value) -> Value {
    let mut m = json!({"owner": "00000000-0000-0000-0000-000000000000", "name": name, "version": "1.0", "type": "zvol", "os": "linux",
        "public": true, "nic_driver": "virtio", "disk_driver": "virtio", "cpu_type": "host", "image_size": 1024});
    for (k, v) in extra.as_object().unwrap() {
        m[k] = v.clone();
    }
    m
}

/// Creates an image with `data` as its file; activates it unless `activate` is false.
async fn make_image(cloud: &Cloud, body: Value, data: Option<&[u8]>, activate: bool) -> String {
    let c = &cloud.client;
    let uuid = c.post("/images", &body).await.unwrap()["uuid"].as_str().unwrap().to_string();
    if let Some(d) = data {
        c.send(c.request(reqwest::Method::PUT, &format!("/images/{uuid}/file?compression=none")).body(d.to_vec())).await.unwrap();
    }
    if activate {
        c.post(&format!("/images/{uuid}?action=activate"), &json!({})).await.unwrap();
    }
    uuid
}

async fn get(url: &str) -> (u16, Vec<u8>) {
    let r = reqwest::get(url).await.unwrap();
    (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
}

async fn get_json(url: &str) -> (u16, Value) {
    let (s, b) = get(url).await;
    (s, serde_json::from_slice(&b).unwrap_or_else(|e| panic!("{url}: not JSON ({e}): {}", String::from_utf8_lossy(&b))))
}

fn uuids(v: &Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|i| i["uuid"].as_str().unwrap().to_string()).collect()
}

async fn download(cloud: &Cloud, uuid: &str) -> Vec<u8> {
    let resp = cloud.client.request(reqwest::Method::GET, &format!("/images/{uuid}/file")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.bytes().await.unwrap().to_vec()
}

/// Every file under `dir` (recursively).
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() { out.extend(files_under(&p)) } else { out.push(p) }
        }
    }
    out
}

async fn publish_list_and_import_with_origin(b: Backend) {
    let publisher = Cloud::start_with(Options::new(b).image_catalog()).await.unwrap();
    let cat = publisher.image_catalog_url().unwrap();
    let base_data = noise(3 * MIB + 17, 11);
    let child_data = noise(2 * MIB + 5, 12);
    let base = make_image(&publisher, zvol("base", json!({"channels": ["release", "dev"]})), Some(&base_data), true).await;
    let child =
        make_image(&publisher, zvol("child", json!({"origin": base, "version": "2.0", "channels": ["dev"]})), Some(&child_data), true)
            .await;
    let private = make_image(&publisher, zvol("private", json!({"public": false})), Some(&noise(4096, 13)), true).await;
    let unactivated = make_image(&publisher, zvol("unactivated", json!({})), None, false).await;
    let disabled = make_image(&publisher, zvol("disabled", json!({})), Some(&noise(4096, 14)), true).await;
    publisher.client.post(&format!("/images/{disabled}?action=disable"), &json!({})).await.unwrap();

    // The catalogue: IMGAPI's public endpoints, public + active images only, no credentials.
    let (s, ping) = get_json(&format!("{cat}/ping")).await;
    assert_eq!((s, &ping["ping"], &ping["imgapi"]), (200, &json!("pong"), &json!(true)), "{ping}");
    let (s, list) = get_json(&format!("{cat}/images")).await;
    assert_eq!(s, 200, "{list}");
    assert_eq!(uuids(&list), vec![base.clone(), child.clone()], "only public, active images, oldest first: {list}");
    assert!(list[0]["files"][0].get("stor").is_none(), "no operator fields: {list}");
    for hidden in [&private, &unactivated, &disabled] {
        let (s, body) = get_json(&format!("{cat}/images/{hidden}")).await;
        assert_eq!((s, body["code"].as_str()), (404, Some("ResourceNotFound")), "{hidden}: {body}");
        let (s, _) = get(&format!("{cat}/images/{hidden}/file")).await;
        assert_eq!(s, 404);
    }
    let (s, one) = get_json(&format!("{cat}/images/{base}")).await;
    assert_eq!((s, one["uuid"].as_str()), (200, Some(base.as_str())));
    let (s, bytes) = get(&format!("{cat}/images/{base}/file")).await;
    assert!(s == 200 && bytes == base_data, "the catalogue serves the file as stored");
    // The marker is inclusive; limit pages.
    let (_, page) = get_json(&format!("{cat}/images?limit=1")).await;
    assert_eq!(uuids(&page), vec![base.clone()]);
    let (_, page) = get_json(&format!("{cat}/images?limit=1&marker={child}")).await;
    assert_eq!(uuids(&page), vec![child.clone()]);
    // A marker outside the catalogue is answered exactly as an unknown UUID: whether a
    // private, unactivated or disabled image exists (and when it was published) stays hidden.
    let unknown = "00000000-0000-4000-8000-00000000abcd";
    let (want_s, want) = get_json(&format!("{cat}/images?marker={unknown}")).await;
    assert_eq!((want_s, want["errors"][0]["field"].as_str()), (422, Some("marker")), "{want}");
    for hidden in [&private, &unactivated, &disabled] {
        let (s, got) = get_json(&format!("{cat}/images?marker={hidden}")).await;
        let got = serde_json::from_str::<Value>(&got.to_string().replace(hidden.as_str(), unknown)).unwrap();
        assert_eq!((s, &got), (want_s, &want), "marker {hidden}");
    }
    let (s, _) = get_json(&format!("{cat}/images?marker={child}&channel=release")).await;
    assert_eq!(s, want_s, "an image outside the channel is no marker in it");
    // Channels, as updates.tritondatacenter.com uses them.
    let (_, rel) = get_json(&format!("{cat}/images?channel=release")).await;
    assert_eq!(uuids(&rel), vec![base.clone()]);
    let (_, dev) = get_json(&format!("{cat}/images?channel=dev")).await;
    assert_eq!(uuids(&dev), vec![base.clone(), child.clone()]);
    let (_, star) = get_json(&format!("{cat}/images?channel=*")).await;
    assert_eq!(uuids(&star).len(), 2);
    let (s, e) = get_json(&format!("{cat}/images?channel=nope")).await;
    assert_eq!((s, e["code"].as_str(), e["errors"][0]["field"].as_str()), (422, Some("ValidationFailed"), Some("channel")), "{e}");
    assert!(e["message"].as_str().unwrap().contains("unknown channel: nope"), "{e}");
    let (s, _) = get_json(&format!("{cat}/images/{child}?channel=release")).await;
    assert_eq!(s, 404, "an image outside the channel is not there");
    let (_, chans) = get_json(&format!("{cat}/channels")).await;
    let names: Vec<&str> = chans.as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["dev", "release"]);
    // Read-only: every write is refused, and nothing of the operator API is here.
    let http = reqwest::Client::new();
    for (method, path) in [
        (reqwest::Method::POST, "/images".to_string()),
        (reqwest::Method::POST, format!("/images/{base}?action=disable")),
        (reqwest::Method::DELETE, format!("/images/{base}")),
        (reqwest::Method::PUT, format!("/images/{base}/file?compression=none")),
    ] {
        let r = http.request(method.clone(), format!("{cat}{path}")).body("{}").send().await.unwrap();
        assert_eq!(r.status(), 405, "{method} {path}");
        assert_eq!(r.headers()["allow"], "GET, HEAD");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["code"], "BadMethod", "{method} {path}: {body}");
    }
    let (s, _) = get_json(&format!("{cat}/packages")).await;
    assert_eq!(s, 404);
    assert_eq!(publisher.client.get(&format!("/images/{base}")).await.unwrap()["state"], "active");

    // Another cloud: add the catalogue as a source, list it, import the child by UUID.
    let importer = Cloud::start(b).await.unwrap();
    let o = nereid_async(&importer, &["admin", "image", "sources", "add", &cat]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let o = nereid_async(&importer, &["admin", "--json", "image", "sources", "list"]).await;
    let srcs: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(srcs, json!([{"url": cat, "type": "imgapi", "created_at": srcs[0]["created_at"]}]));
    let o = nereid_async(&importer, &["admin", "image", "avail"]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let header: Vec<&str> = out.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["UUID", "NAME", "VERSION", "OS", "TYPE", "PUB"], "{out}");
    assert!(out.lines().any(|l| l.starts_with(&base) && l.contains("base") && l.contains("zvol")), "{out}");
    assert!(out.lines().any(|l| l.starts_with(&child) && l.contains("child")), "{out}");
    assert_eq!(out.lines().count(), 3, "{out}");
    let o = nereid_async(&importer, &["admin", "--json", "image", "avail", "--source", &format!("{cat}?channel=release")]).await;
    let avail: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{}", stderr(&o)));
    assert_eq!(avail.as_array().unwrap().len(), 1, "{avail}");
    assert_eq!(
        (avail[0]["manifest"]["uuid"].as_str(), avail[0]["source"].as_str()),
        (Some(base.as_str()), Some(format!("{cat}?channel=release").as_str()))
    );

    let o = nereid_async(&importer, &["admin", "image", "import-remote", &child]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [format!("imported origin {base} from {cat}"), format!("imported image {child} from {cat}")]
    );
    for (id, data, name) in [(&base, &base_data, "base"), (&child, &child_data, "child")] {
        let img = importer.client.get(&format!("/images/{id}")).await.unwrap();
        let theirs = publisher.client.get(&format!("/images/{id}")).await.unwrap();
        assert_eq!((img["uuid"].as_str(), img["name"].as_str(), img["state"].as_str()), (Some(id.as_str()), Some(name), Some("active")));
        assert_eq!(img["published_at"], theirs["published_at"]);
        assert_eq!(img["files"][0]["sha1"], theirs["files"][0]["sha1"]);
        let mine = download(&importer, id).await;
        assert_eq!(sha1_hex(&mine), sha1_hex(&download(&publisher, id).await));
        assert!(mine == *data, "{name}: the imported file is byte-identical");
    }
    assert_eq!(importer.client.get(&format!("/images/{child}")).await.unwrap()["origin"], base.as_str());
    let status = importer.client.get(&format!("/image_imports/{child}")).await.unwrap();
    assert_eq!((status["state"].as_str(), &status["images"]), (Some("succeeded"), &json!([base, child])), "{status}");
    assert!(files_under(&importer.data_dir.join("images/partial")).is_empty(), "no partial files stay");
    // A second import of the same UUID is Triton's ImageUuidAlreadyExists.
    let o = nereid_async(&importer, &["admin", "image", "import-remote", &child]).await;
    assert!(!o.status.success() && stderr(&o).contains("ImageUuidAlreadyExists"), "{}", stderr(&o));
    // Removing the source; an import without sources names the field.
    let o = nereid_async(&importer, &["admin", "image", "sources", "remove", &cat]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(importer.client.get("/image_sources").await.unwrap(), json!([]));
    let e = api_err(importer.client.post(&format!("/images/{private}?action=import-remote"), &json!({})).await, 422, "InvalidParameter");
    assert_eq!(e["errors"][0]["field"], "source", "{e}");
    // A private image is not offered.
    let e = api_err(
        importer.client.post(&format!("/images/{private}?action=import-remote&source={cat}"), &json!({})).await,
        404,
        "ResourceNotFound",
    );
    assert!(e["message"].as_str().unwrap().contains(&cat), "{e}");
}

/// What the proxy does to the responses it relays.
#[derive(Default, Clone)]
struct Faults {
    /// Close each connection after relaying this many response bytes.
    cut_after: Option<u64>,
    /// Flip the byte at this offset of each connection's response stream.
    flip_at: Option<u64>,
}

/// A TCP proxy in front of `upstream` that applies `faults` and logs what clients sent.
async fn proxy(upstream: String, faults: Arc<Mutex<Faults>>, log: Arc<Mutex<Vec<u8>>>) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = l.accept().await else { return };
            let up = tokio::net::TcpStream::connect(&upstream).await.unwrap();
            let f = faults.lock().unwrap().clone();
            let log = log.clone();
            let (mut cr, mut cw) = client.into_split();
            let (mut ur, mut uw) = up.into_split();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n) = cr.read(&mut buf).await {
                    if n == 0 || uw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    log.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
            tokio::spawn(async move {
                let (mut buf, mut sent) = (vec![0u8; 16 * 1024], 0u64);
                loop {
                    let n = match ur.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let mut chunk = buf[..n].to_vec();
                    if let Some(at) = f.flip_at
                        && at >= sent
                        && at < sent + n as u64
                    {
                        chunk[(at - sent) as usize] ^= 0xff;
                    }
                    if let Some(cut) = f.cut_after
                        && sent + n as u64 >= cut
                    {
                        let _ = cw.write_all(&chunk[..(cut - sent) as usize]).await;
                        break;
                    }
                    if cw.write_all(&chunk).await.is_err() {
                        break;
                    }
                    sent += n as u64;
                }
                let _ = cw.shutdown().await;
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn interrupted_import_resumes_with_a_range_request() {
    let publisher = Cloud::start_with(Options::new(Backend::Sqlite).image_catalog()).await.unwrap();
    let data = noise(4 * MIB + 3, 21);
    let uuid = make_image(&publisher, zvol("big", json!({})), Some(&data), true).await;
    let faults = Arc::new(Mutex::new(Faults { cut_after: Some(MIB as u64), flip_at: None }));
    let log = Arc::new(Mutex::new(Vec::new()));
    let src = proxy(publisher.image_catalog_url().unwrap().trim_start_matches("http://").to_string(), faults.clone(), log.clone()).await;
    let mut importer = Cloud::start(Backend::Sqlite).await.unwrap();

    // Cut off after 1 MiB: the import fails, nothing is recorded, the bytes so far stay.
    let o = nereid_async(&importer, &["admin", "image", "import-remote", &uuid, "--source", &src]).await;
    assert!(!o.status.success(), "the cut-off import must fail: {}", stdout(&o));
    assert!(stderr(&o).contains("RemoteSourceError") && stderr(&o).contains("resumes"), "{}", stderr(&o));
    api_err(importer.client.get(&format!("/images/{uuid}")).await, 404, "ResourceNotFound");
    let status = importer.client.get(&format!("/image_imports/{uuid}")).await.unwrap();
    assert_eq!((status["state"].as_str(), status["error"]["code"].as_str()), (Some("failed"), Some("RemoteSourceError")), "{status}");
    let parts = files_under(&importer.data_dir.join("images/partial"));
    assert_eq!(parts.len(), 1, "{parts:?}");
    let have = std::fs::metadata(&parts[0]).unwrap().len();
    assert!(have > 0 && have < MIB as u64, "the partial file holds what arrived: {have}");
    assert_eq!(std::fs::read(&parts[0]).unwrap(), &data[..have as usize]);

    // The headnode restarts: the partial file stays. And the moment between recording an
    // image and activating it is left as a stop there would leave it: an unactivated record.
    importer.restart_headnode().await.unwrap();
    assert!(parts[0].exists(), "the partial file survives a restart");
    let manifest = publisher.client.get(&format!("/images/{uuid}")).await.unwrap();
    let left = importer.client.post(&format!("/images/{uuid}?action=import"), &manifest).await.unwrap();
    assert_eq!(left["state"], "unactivated");

    // The source works again: the retry asks only for the rest, and the result is whole.
    *faults.lock().unwrap() = Faults::default();
    log.lock().unwrap().clear();
    let o = nereid_async(&importer, &["admin", "image", "import-remote", &uuid, "--source", &src]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let sent = String::from_utf8_lossy(&log.lock().unwrap()).to_lowercase();
    assert!(sent.contains(&format!("range: bytes={have}-")), "the retry resumes at byte {have}: {sent}");
    let img = importer.client.get(&format!("/images/{uuid}")).await.unwrap();
    assert_eq!((img["state"].as_str(), img["files"][0]["size"].as_u64()), (Some("active"), Some(data.len() as u64)));
    assert!(download(&importer, &uuid).await == data, "the resumed file is byte-identical");
    assert!(files_under(&importer.data_dir.join("images/partial")).is_empty());

    // One source that cannot be read does not hide another's images: `image avail` lists
    // the good one and warns about the other (as imgadm does); only if every source fails
    // is it an error.
    let o = nereid_async(&importer, &["admin", "image", "sources", "add", &src]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let other = Cloud::start_with(Options::new(Backend::Sqlite).image_catalog()).await.unwrap();
    let theirs = make_image(&other, zvol("elsewhere", json!({})), Some(&b"elsewhere"[..]), true).await;
    let o = nereid_async(&importer, &["admin", "image", "sources", "add", &other.image_catalog_url().unwrap()]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    faults.lock().unwrap().cut_after = Some(10);
    let o = nereid_async(&importer, &["admin", "image", "avail"]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).lines().any(|l| l.starts_with(&theirs) && l.contains("elsewhere")), "{}", stdout(&o));
    assert!(!stdout(&o).contains(&uuid), "{}", stdout(&o));
    assert!(stderr(&o).contains(&format!("warning: image source {src} could not be listed")), "{}", stderr(&o));
    let listed = importer.client.get("/image_sources/images").await.unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");
    assert_eq!(listed[1]["source"], src.as_str(), "{listed}");
    assert_eq!(listed[1]["error"]["code"], "RemoteSourceError", "{listed}");
    let o = nereid_async(&importer, &["admin", "image", "avail", "--source", &src]).await;
    assert!(!o.status.success() && stderr(&o).contains("RemoteSourceError"), "a named source that fails is an error: {}", stderr(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn corrupted_download_is_refused_and_leaves_nothing() {
    let publisher = Cloud::start_with(Options::new(Backend::Sqlite).image_catalog()).await.unwrap();
    let base_data = noise(MIB, 31);
    let base = make_image(&publisher, zvol("base", json!({})), Some(&base_data), true).await;
    let data = noise(2 * MIB, 32);
    let uuid = make_image(&publisher, zvol("child", json!({"origin": base})), Some(&data), true).await;
    // Flip one byte well inside the file of the first image fetched (the origin).
    let faults = Arc::new(Mutex::new(Faults { cut_after: None, flip_at: Some(300_000) }));
    let src =
        proxy(publisher.image_catalog_url().unwrap().trim_start_matches("http://").to_string(), faults.clone(), Default::default()).await;
    let importer = Cloud::start(Backend::Sqlite).await.unwrap();
    // An unactivated image this cloud made itself is never taken for an import's leftover.
    let manifest = publisher.client.get(&format!("/images/{base}")).await.unwrap();
    importer.client.post(&format!("/images/{base}?action=import"), &manifest).await.unwrap();
    let e = api_err(
        importer.client.post(&format!("/images/{base}?action=import-remote&source={src}"), &json!({})).await,
        409,
        "ImageUuidAlreadyExists",
    );
    assert!(e["message"].as_str().unwrap().contains("unactivated"), "{e}");
    let e = api_err(
        importer.client.post(&format!("/images/{uuid}?action=import-remote&source={src}"), &json!({})).await,
        422,
        "OriginIsNotActive",
    );
    assert!(e["message"].as_str().unwrap().contains(&base), "{e}");
    importer.client.delete(&format!("/images/{base}")).await.unwrap();
    let before = files_under(&importer.data_dir.join("images"));

    let o = nereid_async(&importer, &["admin", "image", "import-remote", &uuid, "--source", &src]).await;
    assert!(!o.status.success(), "a corrupt file must be refused: {}", stdout(&o));
    let err = stderr(&o);
    assert!(err.contains("Download") && err.contains("corrupt") && err.contains(&base), "{err}");
    for id in [&base, &uuid] {
        api_err(importer.client.get(&format!("/images/{id}")).await, 404, "ResourceNotFound");
    }
    assert_eq!(files_under(&importer.data_dir.join("images")), before, "no file, partial or whole, stays behind");

    // The same import through an honest connection succeeds.
    *faults.lock().unwrap() = Faults::default();
    let o = nereid_async(&importer, &["admin", "image", "import-remote", &uuid, "--source", &src]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(download(&importer, &base).await == base_data);
    assert!(download(&importer, &uuid).await == data);
}
