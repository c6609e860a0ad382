//! Uploading a disk file from the browser: `GET /images/upload` is the form, and
//! `nereid.js` sends the file as the raw body of `PUT /images/upload?name=…&version=…`
//! (the CSRF token in `X-CSRF-Token`), showing the upload's progress. The handler does
//! what `nereid image create-from-disk` does, with the manifest built by the same
//! function ([`DiskImage::manifest`]):
//!
//! ```text
//!   body ──stream──► temporary file in the image area (never whole in memory; ≤ 20 GiB)
//!        inspect (format, compression, virtual size, sha1)
//!        CreateImage ─► AddImageFile (streamed from the file, sha1 checked) ─► ActivateImage
//!        any failure after CreateImage deletes the half-made image
//! ```
//!
//! Answers are JSON for the script: `{"location": "/images/<uuid>"}`, or the API error
//! (`code`, `message`, `errors` naming the field) with its status.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use axum::Json;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use maud::{Markup, html};
use nereid_types::image::{BOOTROMS, DiskImage, MAX_FILE_SIZE, OSES, Origin, check_create};
use nereid_types::{ApiError, FieldError};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::web::Web;
use crate::web::api::enc;
use crate::web::form::{check_header, invalid};
use crate::web::page;
use crate::web::session::{Operator, Session};

/// `GET /images/upload`: the form `nereid.js` sends.
pub async fn form(Operator(s): Operator) -> Response {
    page::page(&s, "Upload a disk image", form_markup())
}

fn form_markup() -> Markup {
    html! {
        noscript {
            div.error role="alert" {
                p { "Uploading from the browser needs JavaScript. Without it, use "
                    code { "nereid image create-from-disk FILE --name NAME --version VERSION" } " on a machine with the file." }
            }
        }
        p { "A raw or qcow2 disk (optionally gzip, bzip2, xz or zstd compressed, up to 20 GiB). "
            "The headnode checks it, creates the image, stores the file and activates it, "
            "as " code { "nereid image create-from-disk" } " does." }
        form.stack data-upload="/images/upload" {
            label for="file" { "Disk file" }
            input #file type="file" name="file" required;
            label for="name" { "Name (e.g. debian-12)" }
            input #name type="text" name="name" required pattern="[A-Za-z0-9._/ -]+";
            label for="version" { "Version (e.g. 20261125)" }
            input #version type="text" name="version" required pattern="[A-Za-z0-9._/+-]+";
            label for="os" { "Guest OS" }
            select #os name="os" {
                @for os in OSES { option value=(os) selected[*os == "linux"] { (os) } }
            }
            label for="description" { "Description" }
            input #description type="text" name="description";
            label for="bootrom" { "Firmware" }
            select #bootrom name="bootrom" {
                option value="" { "not required" }
                @for b in BOOTROMS { option value=(b) { (b) } }
            }
            label for="public" { input #public type="checkbox" name="public" value="true" checked; " Public (every account can use it)" }
            label for="progress" { "Upload progress" }
            progress #progress value="0" max="100" {}
            p data-upload-status aria-live="polite" {}
            button type="submit" { "Upload" }
        }
    }
}

/// The image the query string describes (every field checked before the file arrives).
fn disk_image(q: &HashMap<String, String>) -> Result<DiskImage, ApiError> {
    let get = |k: &str| q.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
    let mut errors = Vec::new();
    let name = get("name").unwrap_or_else(|| {
        errors.push(FieldError::missing("name"));
        ""
    });
    let version = get("version").unwrap_or_else(|| {
        errors.push(FieldError::missing("version"));
        ""
    });
    let mut d = DiskImage::new(name, version);
    if let Some(os) = get("os") {
        if OSES.contains(&os) {
            d.os = os.into();
        } else {
            errors.push(FieldError::invalid("os", format!("must be one of {}", OSES.join(", "))));
        }
    }
    if let Some(b) = get("bootrom") {
        if BOOTROMS.contains(&b) {
            d.bootrom = Some(b.into());
        } else {
            errors.push(FieldError::invalid("bootrom", "must be bios, uefi or empty"));
        }
    }
    d.description = get("description").map(str::to_string);
    d.public = get("public").is_some_and(|v| v != "false");
    if !errors.is_empty() {
        return Err(invalid(errors));
    }
    check_create(&d.manifest(1), Origin::Create)?;
    Ok(d)
}

fn json_error(e: &ApiError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(e.body())).into_response()
}

/// The file itself is the problem (the message says how; the field is `file`).
fn file_error(why: String) -> ApiError {
    ApiError::new(422, "ValidationFailed", "the file is not a disk image the headnode can use")
        .with_errors(vec![FieldError::invalid("file", why)])
}

fn too_large(n: u64) -> ApiError {
    ApiError::new(
        413,
        "RequestEntityTooLarge",
        format!(
            "the file has {n} bytes or more; images are at most {} GiB (IMGAPI's limit): compress it (e.g. zstd) or convert it to qcow2",
            MAX_FILE_SIZE >> 30
        ),
    )
    .with_errors(vec![FieldError::invalid("file", format!("is larger than {} GiB", MAX_FILE_SIZE >> 30))])
}

/// Reads what is left of a refused upload, so the browser gets the answer rather than a
/// reset connection (nothing is kept).
async fn drain(body: Body) {
    let mut stream = body.into_data_stream();
    let mut n = 0u64;
    while let Some(Ok(chunk)) = stream.next().await {
        n += chunk.len() as u64;
        if n > MAX_FILE_SIZE {
            break;
        }
    }
}

/// `PUT /images/upload`: the upload itself.
pub async fn receive(
    State(web): State<Web>,
    s: Session,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    body: Body,
) -> Response {
    if check_header(&s, &headers).is_err() {
        return json_error(&ApiError::new(
            403,
            "Forbidden",
            "the upload was refused: it carries no valid X-CSRF-Token header or comes from another site; reload the page and try again",
        ));
    }
    let length = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = length
        && n > MAX_FILE_SIZE
    {
        return json_error(&too_large(n));
    }
    let disk = match disk_image(&q) {
        Ok(d) => d,
        Err(e) => {
            drain(body).await;
            return json_error(&e);
        }
    };
    let filename = q.get("filename").map(String::as_str).filter(|f| !f.is_empty()).unwrap_or("the file").to_string();
    match create(&web, &s, &disk, &filename, body).await {
        Ok(uuid) => (StatusCode::CREATED, Json(json!({"location": format!("/images/{uuid}"), "uuid": uuid}))).into_response(),
        Err(e) => json_error(&e),
    }
}

/// Receives the body into a temporary file, then creates, fills and activates the image.
async fn create(web: &Web, s: &Session, disk: &DiskImage, filename: &str, body: Body) -> Result<String, ApiError> {
    // Uploads in progress go to this headnode's temporary directory of the image area
    // (cleared when the headnode starts, so a crash leaves nothing behind).
    let dir = web.app().files.tmp_dir();
    tokio::fs::create_dir_all(dir).await.map_err(|e| ApiError::internal(format!("preparing the upload area: {e}")))?;
    let tmp = TempFile(dir.join(format!("web-upload-{}", hex::encode(rand::random::<[u8; 16]>()))));
    let received = receive_into(tmp.path(), body).await?;
    if received == 0 {
        return Err(file_error(format!("{filename} is empty: choose the disk file itself")));
    }
    let path = tmp.path().to_path_buf();
    let found = tokio::task::spawn_blocking(move || nereid_diskimage::inspect(&path, &mut |_| {}))
        .await
        .map_err(|e| ApiError::internal(format!("inspecting the disk: {e}")))?
        .map_err(|e| ApiError::validation_422(vec![FieldError::invalid("file", format!("{filename} cannot be used as an image: {e}"))]))?;
    let manifest = disk.manifest(found.image_size_mib());
    let created = web.admin(Method::POST, "/images", Some(&Value::Object(manifest))).await?;
    let uuid = created
        .body
        .get("uuid")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| ApiError::internal("CreateImage answered without a uuid"))?;
    tracing::info!(image = %uuid, login = %s.account.login, file = filename, bytes = found.file_size, "web upload: image created");
    match fill_and_activate(web, &uuid, tmp.path(), &found).await {
        Ok(()) => Ok(uuid),
        Err(mut e) => {
            match web.admin(Method::DELETE, &format!("/images/{}", enc(&uuid)), None).await {
                Ok(_) => e.message = format!("{} (image {uuid} was not completed and has been deleted)", e.message),
                Err(d) if d.status == 404 => {}
                Err(d) => {
                    e.message = format!(
                        "{} (image {uuid} was not completed, and deleting it failed too: {}; delete it from its page or with `nereid admin image delete {uuid}`)",
                        e.message, d.message
                    )
                }
            }
            Err(e)
        }
    }
}

/// A file removed when dropped (whatever way the upload ends).
struct TempFile(PathBuf);

impl TempFile {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Streams the request body into `path`; the number of bytes.
async fn receive_into(path: &Path, body: Body) -> Result<u64, ApiError> {
    let write_err = |e: std::io::Error| ApiError::internal(format!("writing the upload on the headnode failed: {e}"));
    let mut file = tokio::fs::OpenOptions::new().write(true).create_new(true).open(path).await.map_err(write_err)?;
    let mut stream = body.into_data_stream();
    let mut n = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("the upload was interrupted: {e}")))?;
        n += chunk.len() as u64;
        if n > MAX_FILE_SIZE {
            return Err(too_large(n));
        }
        file.write_all(&chunk).await.map_err(write_err)?;
    }
    file.flush().await.map_err(write_err)?;
    Ok(n)
}

/// AddImageFile from the temporary file (sha1 checked by the server), then ActivateImage.
async fn fill_and_activate(web: &Web, uuid: &str, path: &Path, found: &nereid_diskimage::Inspection) -> Result<(), ApiError> {
    let f = tokio::fs::File::open(path).await.map_err(|e| ApiError::internal(format!("reopening the upload: {e}")))?;
    let stream = tokio_util::io::ReaderStream::with_capacity(f, 256 * 1024);
    let api = format!("/images/{}/file?compression={}&sha1={}", enc(uuid), found.compression.as_str(), found.sha1);
    let img = web.admin_stream(Method::PUT, &api, Some(found.file_size), Body::from_stream(stream)).await?.body;
    let stored = img.pointer("/files/0").cloned().unwrap_or(Value::Null);
    if stored.get("sha1").and_then(Value::as_str) != Some(found.sha1.as_str())
        || stored.get("size").and_then(Value::as_u64) != Some(found.file_size)
    {
        return Err(ApiError::internal(format!(
            "the headnode stored {} but the upload has sha1 {} and {} bytes",
            stored, found.sha1, found.file_size
        )));
    }
    web.admin(Method::POST, &format!("/images/{}?action=activate", enc(uuid)), Some(&json!({}))).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn the_query_names_every_bad_field_before_the_file_is_read() {
        let e = disk_image(&q(&[("os", "beos"), ("bootrom", "coreboot")])).unwrap_err();
        let fields: Vec<_> = e.errors.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(fields, ["name", "version", "os", "bootrom"]);
        let e = disk_image(&q(&[("name", "bad\"name"), ("version", "1")])).unwrap_err();
        assert_eq!(e.errors[0].field, "name");
        let d =
            disk_image(&q(&[("name", "debian-12"), ("version", "1"), ("bootrom", "uefi"), ("public", "true"), ("filename", "x")])).unwrap();
        assert_eq!((d.bootrom.as_deref(), d.public, d.os.as_str()), (Some("uefi"), true, "linux"));
        assert!(!disk_image(&q(&[("name", "a"), ("version", "1")])).unwrap().public, "an unchecked box is private");
    }

    #[test]
    fn the_form_has_what_nereid_js_needs() {
        let out = form_markup().into_string();
        for needle in [
            "data-upload=\"/images/upload\"",
            "type=\"file\" name=\"file\"",
            "<progress",
            "data-upload-status",
            "<noscript>",
            "create-from-disk",
        ] {
            assert!(out.contains(needle), "{needle} in {out}");
        }
    }
}
