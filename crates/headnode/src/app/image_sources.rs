//! Image sources: other IMGAPIs this cloud imports images from — another Nereid's public
//! catalogue (`--image-catalog-listen`), images.smartos.org, updates.tritondatacenter.com
//! with `?channel=` — what they offer (`imgadm avail`), and AdminImportRemoteImage.
//!
//! Sources are operator configuration in the store (bucket `image_sources`), so every
//! headnode of a cluster sees the same list. A source URL may carry `?channel=NAME`; it
//! is taken off the base URL and sent with every request, as Triton's clients do.
//!
//! Importing an image keeps its UUID and brings its origin chain first:
//!
//! ```text
//!  manifests: image ─► origin ─► origin's origin … (until one is here and active)
//!  for each, oldest first:
//!    download ──► DIR/images/partial/<uuid>-<sha1>.part    (a retry sends Range: bytes=<have>-)
//!       │ cut off: 503 RemoteSourceError; the bytes so far stay, the next attempt resumes
//!       ▼
//!    verify size + SHA-1 of the whole file ── mismatch ──► part deleted, 400 Download, no record
//!       ▼
//!    record (unactivated) ─► attach the verified file ─► activate
//!       └─ a failure here deletes the record and the part: nothing half-imported stays
//! ```
//!
//! A headnode that stops between recording an image and activating it leaves an
//! unactivated image; the next import of the same UUID (its `image_imports` record did
//! not succeed and lists that image) removes it and imports it again.
//!
//! Why not a durable job: jobs (`crate::jobs`) are VM sagas keyed and ordered per VM, with
//! step deadlines sized for VM operations; an image download of many GiB is neither. The
//! import is instead an idempotent operation whose progress is on disk: the partial file is
//! the only state, it survives restarts, and repeating the request continues it. Progress
//! is published in the `image_imports` bucket (`GET /image-imports/{uuid}`) for the CLI's
//! progress bar. The work runs in its own task, so a client that goes away does not stop it
//! halfway through committing.

use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use nereid_store::{Cond, Filter, ListQuery};
use nereid_types::image::{self, Image};
use nereid_types::query::Query;
use nereid_types::{ApiError, FieldError};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

use super::image_files::Received;
use super::images::AddFile;
use super::{App, KeyedLocks, store_error};
use crate::buckets::{IMAGE_IMPORTS, IMAGE_SOURCES, IMAGES};

/// IMGAPI's page size limit (ListImages `limit` ≤ 1000).
pub const PAGE: usize = 1000;
/// Largest JSON answer read from a source (a page of 1000 manifests stays well below it).
pub const MAX_JSON: usize = 64 << 20;
/// Deepest origin chain IMGAPI allows.
pub const MAX_ORIGIN_DEPTH: usize = 100;
/// Channel names, as IMGAPI's config accepts them (`*` means every channel).
fn valid_channel(c: &str) -> bool {
    c == "*"
        || (c.starts_with(|ch: char| ch.is_ascii_lowercase())
            && c.chars().all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_' || ch == '-'))
}

/// A source URL, split as Triton's clients split it: the base, and the channel sent with
/// every request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// `scheme://host[:port][/path]`, no trailing slash, no query.
    pub base: String,
    pub channel: Option<String>,
}

impl Source {
    /// Parses and normalises a source URL; `field` names it in errors.
    pub fn parse(s: &str, field: &str) -> Result<Source, FieldError> {
        let u = url::Url::parse(s.trim()).map_err(|e| FieldError::invalid(field, format!("is not a URL: {e}")))?;
        if u.scheme() != "http" && u.scheme() != "https" {
            return Err(FieldError::invalid(field, "must be an http:// or https:// URL"));
        }
        if !u.username().is_empty() || u.password().is_some() {
            return Err(FieldError::invalid(field, "may not carry credentials (image sources are read without authentication)"));
        }
        if u.host_str().is_none_or(str::is_empty) {
            return Err(FieldError::invalid(field, "must name a host"));
        }
        if u.fragment().is_some() {
            return Err(FieldError::invalid(field, "may not have a #fragment"));
        }
        let mut channel = None;
        for (k, v) in u.query_pairs() {
            match k.as_ref() {
                "channel" if valid_channel(&v) => channel = Some(v.into_owned()),
                "channel" => {
                    return Err(FieldError::invalid(field, format!("channel {v:?} is not a channel name ([a-z][a-z0-9_-]* or *)")));
                }
                other => return Err(FieldError::invalid(field, format!("may carry only ?channel=, not {other}"))),
            }
        }
        let mut base = u.clone();
        base.set_query(None);
        let base = base.as_str().trim_end_matches('/').to_string();
        Ok(Source { base, channel })
    }

    /// The URL as operators write it (and as it is stored).
    pub fn display(&self) -> String {
        match &self.channel {
            Some(c) => format!("{}?channel={c}", self.base),
            None => self.base.clone(),
        }
    }

    /// `base + path` with the channel and `query` pairs.
    pub fn url(&self, path: &str, query: &[(&str, &str)]) -> String {
        let mut pairs = url::form_urlencoded::Serializer::new(String::new());
        if let Some(c) = &self.channel {
            pairs.append_pair("channel", c);
        }
        for (k, v) in query {
            pairs.append_pair(k, v);
        }
        let q = pairs.finish();
        if q.is_empty() { format!("{}{path}", self.base) } else { format!("{}{path}?{q}", self.base) }
    }
}

/// A configured source, as stored and listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceRecord {
    pub url: String,
    /// Always `imgapi` (imgadm's source type).
    #[serde(rename = "type")]
    pub kind: String,
    pub created_at: String,
}

/// How an import is going, as `GET /image-imports/{uuid}` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImportRecord {
    /// The image asked for.
    pub uuid: Uuid,
    pub source: String,
    /// `running`, `succeeded` or `failed` (a failed import resumes when asked again).
    pub state: String,
    /// The images this import brings, oldest origin first.
    pub images: Vec<Uuid>,
    /// The image whose file is downloading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<Uuid>,
    /// Bytes of the current file on disk, and its size.
    pub downloaded: u64,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Value>,
    pub headnode: String,
    pub started_at: String,
    pub updated_at: String,
}

/// What a finished import brought.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImportOutcome {
    pub image_uuid: Uuid,
    pub source: String,
    /// Images imported by this request, oldest origin first (origins already here are not listed).
    pub imported: Vec<Uuid>,
}

/// One page of a remote ListImages: what it adds, and the marker of the next page (none
/// when the listing is complete). IMGAPI's marker is inclusive, so a page after the first
/// starts with the marker image itself, which is dropped; a short page or a page that does
/// not move past the marker ends the listing.
pub fn next_page(marker: Option<&str>, page: Vec<Value>, limit: usize) -> (Vec<Value>, Option<String>) {
    let full = page.len() >= limit;
    let mut items = page;
    if let Some(m) = marker
        && items.first().and_then(|i| i.get("uuid")).and_then(Value::as_str) == Some(m)
    {
        items.remove(0);
    }
    let last = items.last().and_then(|i| i.get("uuid")).and_then(Value::as_str).map(str::to_string);
    let next = match last {
        Some(l) if full && Some(l.as_str()) != marker => Some(l),
        _ => None,
    };
    (items, next)
}

/// Most pages one source's listing may take (100 000 images at IMGAPI's page size).
pub const MAX_PAGES: usize = 100;
/// Most manifests one source's listing may bring.
pub const MAX_AVAIL_ITEMS: usize = 100 * PAGE;

/// A remote listing in progress: what it has brought, and the markers it has used, so a
/// source that never ends its listing (markers that come round again, pages without end)
/// is refused rather than followed forever.
#[derive(Debug, Default)]
pub struct Listing {
    pub items: Vec<Value>,
    pub marker: Option<String>,
    seen: std::collections::HashSet<String>,
    pages: usize,
}

impl Listing {
    /// Takes one page; true when another page is to be fetched (from `self.marker`).
    pub fn take(&mut self, page: Vec<Value>, limit: usize) -> Result<bool, String> {
        self.pages += 1;
        let (items, next) = next_page(self.marker.as_deref(), page, limit);
        self.items.extend(items);
        if self.items.len() > MAX_AVAIL_ITEMS {
            return Err(format!("the listing goes on past {MAX_AVAIL_ITEMS} images; it is not read further"));
        }
        let Some(next) = next else { return Ok(false) };
        if self.pages >= MAX_PAGES {
            return Err(format!("the listing goes on past {MAX_PAGES} pages; it is not read further"));
        }
        if !self.seen.insert(next.clone()) {
            return Err(format!("the listing came back to marker {next}: it would never end"));
        }
        self.marker = Some(next);
        Ok(true)
    }
}

/// Each image of a chain is imported by one task of this process at a time.
static IMPORT_LOCKS: LazyLock<KeyedLocks> = LazyLock::new(KeyedLocks::default);

fn remote_error(src: &Source, what: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::new(503, "RemoteSourceError", format!("image source {}: {what}: {e}", src.display()))
}

/// An HTTP client for image sources: system CA roots (HTTPS sources such as
/// images.smartos.org), no redirects off the source, timeouts on connecting and on silence.
fn http_client() -> Result<reqwest::Client, ApiError> {
    let mut b = reqwest::Client::builder()
        .user_agent(concat!("nereid-headnode/", env!("CARGO_PKG_VERSION")))
        // A source's redirect is not followed: it could point at another host, or at an
        // address inside this network (the headnode would fetch it on the source's word).
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(15))
        .read_timeout(Duration::from_secs(60));
    b = crate::system_roots::with_system_roots(b);
    b.build().map_err(|e| ApiError::internal(format!("building the HTTP client for image sources: {e}")))
}

/// Reads a JSON answer from a source; a non-2xx answer becomes RemoteSourceError with the
/// source's own code and message.
async fn remote_json(src: &Source, what: &str, resp: reqwest::Response) -> Result<Value, ApiError> {
    let status = resp.status();
    let too_big = || remote_error(src, what, format!("the answer is larger than {MAX_JSON} bytes"));
    if resp.content_length().is_some_and(|n| n > MAX_JSON as u64) {
        return Err(too_big());
    }
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        body.extend_from_slice(&chunk.map_err(|e| remote_error(src, what, e))?);
        if body.len() > MAX_JSON {
            return Err(too_big());
        }
    }
    let v: Value = serde_json::from_slice(&body)
        .map_err(|e| remote_error(src, what, format!("answered {status} with a body that is not JSON ({e})")))?;
    if !status.is_success() {
        let code = v.get("code").and_then(Value::as_str).unwrap_or("");
        let msg = v.get("message").and_then(Value::as_str).unwrap_or("");
        return Err(remote_error(src, what, format!("{status} {code}: {msg}")));
    }
    Ok(v)
}

/// A remote image's manifest with its one file.
struct Remote {
    manifest: Map<String, Value>,
    uuid: Uuid,
    sha1: String,
    size: u64,
    compression: String,
    dataset_guid: Option<String>,
}

/// Checks what a manifest says about its file before anything is downloaded. The manifest
/// must be the image asked for (`want`): a source answering with another image's manifest
/// would otherwise have this cloud report `want` imported, or replace another image.
fn remote_image(src: &Source, want: Uuid, v: Value) -> Result<Remote, ApiError> {
    let Value::Object(manifest) = v else {
        return Err(remote_error(src, "GetImage", "the manifest is not a JSON object"));
    };
    let uuid = manifest.get("uuid").and_then(Value::as_str).and_then(|u| Uuid::parse_str(u).ok());
    let Some(uuid) = uuid else { return Err(remote_error(src, "GetImage", "the manifest has no valid uuid")) };
    if uuid != want {
        return Err(remote_error(src, "GetImage", format!("asked for image {want}, it answered with the manifest of image {uuid}")));
    }
    let file = manifest.get("files").and_then(|f| f.get(0)).cloned().unwrap_or(Value::Null);
    let sha1 = file.get("sha1").and_then(Value::as_str).unwrap_or("").to_ascii_lowercase();
    if sha1.len() != 40 || !sha1.bytes().all(|c| c.is_ascii_hexdigit()) {
        return Err(remote_error(src, "GetImage", format!("image {uuid} has no file with a SHA-1 (files[0].sha1)")));
    }
    let size = file.get("size").and_then(Value::as_u64).unwrap_or(0);
    if size == 0 || size > image::MAX_FILE_SIZE {
        return Err(remote_error(src, "GetImage", format!("image {uuid}'s file size {size} is not between 1 byte and 20 GiB")));
    }
    let compression = file.get("compression").and_then(Value::as_str).unwrap_or("none").to_string();
    let dataset_guid = file.get("dataset_guid").and_then(Value::as_str).map(str::to_string);
    Ok(Remote { manifest, uuid, sha1, size, compression, dataset_guid })
}

/// Whether a local image is what an import stopped between recording and activating left
/// (a headnode stopped in that moment): unactivated, and brought by an import of the same
/// UUID that did not succeed. Such an image is removed and imported again.
fn leftover(local: &Image, unfinished: &[Uuid]) -> bool {
    local.state == "unactivated" && unfinished.contains(&local.uuid)
}

fn io_error(e: std::io::Error) -> ApiError {
    tracing::error!(error = %e, "image import: local file");
    ApiError::new(503, "StorageIsDown", format!("could not store the downloaded file: {e}"))
}

/// What the public catalogue shows: public, active images, in `channel` unless it is
/// absent or `*` (pure; the rest of the filter comes from ListImages' query parameters).
pub fn catalog_filter(channel: Option<&str>) -> Filter {
    let mut parts = vec![Filter::eq("public", true), Filter::eq("state", "active")];
    if let Some(c) = channel.filter(|c| *c != "*") {
        parts.push(Filter::has("channels", c));
    }
    Filter::and(parts)
}

fn unknown_channel(c: &str) -> ApiError {
    ApiError::new(422, "ValidationFailed", format!("unknown channel: {c}"))
        .with_errors(vec![FieldError::invalid("channel", format!("unknown channel: {c}"))])
}

impl App {
    /// The catalogue's channels: those its public, active images are in.
    pub async fn catalog_channels(&self) -> Result<Vec<String>, ApiError> {
        let imgs: Vec<Image> = self.list(IMAGES.name, &ListQuery::filter(catalog_filter(None))).await?;
        let mut names: Vec<String> = imgs
            .iter()
            .filter_map(|i| i.rest.get("channels").and_then(Value::as_array))
            .flatten()
            .filter_map(|c| c.as_str().map(str::to_string))
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// A channel named in a catalogue request must be one its images are in.
    async fn check_catalog_channel(&self, channel: Option<&str>) -> Result<(), ApiError> {
        match channel {
            Some(c) if c != "*" => {
                let n = self.store.count(IMAGES.name, &catalog_filter(Some(c))).await.map_err(store_error)?;
                if n == 0 { Err(unknown_channel(c)) } else { Ok(()) }
            }
            _ => Ok(()),
        }
    }

    /// ListImages on the public catalogue: ListImages' filters, limit and inclusive
    /// marker, over the public, active images (of `channel`).
    pub async fn catalog_images(&self, q: &Query, channel: Option<&str>) -> Result<Vec<Image>, ApiError> {
        self.check_catalog_channel(channel).await?;
        let desc = super::images::sort_desc(q);
        let marker = self.image_marker(q, Some(&catalog_filter(channel))).await?;
        let filter = super::images::list_filter(q, marker.as_ref(), desc).map_err(ApiError::invalid_parameter)?;
        let lq = ListQuery::filter(Filter::and(vec![filter, catalog_filter(channel)]))
            .sort(nereid_store::Path::field("published_at"), nereid_store::Kind::Text, desc)
            .page(q.limit(PAGE as i64), 0);
        self.list(IMAGES.name, &lq).await
    }

    /// GetImage on the public catalogue: 404 unless public, active (and in `channel`).
    pub async fn catalog_image(&self, uuid: Uuid, channel: Option<&str>) -> Result<Image, ApiError> {
        self.check_catalog_channel(channel).await?;
        let missing = || ApiError::not_found(format!("image {uuid} does not exist"));
        let (img, _) = self.read::<Image>(IMAGES.name, &uuid.to_string()).await?.ok_or_else(missing)?;
        if !catalog_filter(channel).matches(&crate::app::encode(&img)) {
            return Err(missing());
        }
        Ok(img)
    }

    pub async fn list_image_sources(&self) -> Result<Vec<SourceRecord>, ApiError> {
        let mut all: Vec<SourceRecord> = self.list(IMAGE_SOURCES.name, &ListQuery::all()).await?;
        all.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.url.cmp(&b.url)));
        Ok(all)
    }

    /// Adds a source after checking it answers as an IMGAPI (`GET /ping` says `imgapi: true`).
    /// Adding a source that is already there changes nothing and answers it.
    pub async fn add_image_source(&self, url: &str) -> Result<SourceRecord, ApiError> {
        let src = Source::parse(url, "url").map_err(|e| ApiError::invalid_parameter(vec![e]))?;
        let key = src.display();
        if let Some((existing, _)) = self.read::<SourceRecord>(IMAGE_SOURCES.name, &key).await? {
            return Ok(existing);
        }
        let http = http_client()?;
        let resp = http.get(src.url("/ping", &[])).send().await.map_err(|e| remote_error(&src, "GET /ping", e))?;
        let ping = remote_json(&src, "GET /ping", resp).await?;
        if ping.get("imgapi") != Some(&Value::Bool(true)) {
            return Err(ApiError::invalid_parameter(vec![FieldError::invalid(
                "url",
                format!("{key} is not an IMGAPI: its GET /ping does not say imgapi: true"),
            )]));
        }
        let rec = SourceRecord { url: key.clone(), kind: "imgapi".into(), created_at: nereid_types::time::now_iso() };
        match self.write(IMAGE_SOURCES.name, &key, &rec, Cond::Absent).await {
            Ok(_) => Ok(rec),
            Err(e) if e.is_conflict() => Ok(self.read::<SourceRecord>(IMAGE_SOURCES.name, &key).await?.map(|(r, _)| r).unwrap_or(rec)),
            Err(e) => Err(store_error(e)),
        }
    }

    pub async fn remove_image_source(&self, url: &str) -> Result<(), ApiError> {
        let src = Source::parse(url, "url").map_err(|e| ApiError::invalid_parameter(vec![e]))?;
        let key = src.display();
        match self.store.delete(IMAGE_SOURCES.name, &key, Cond::Exists).await {
            Ok(()) => Ok(()),
            Err(e) if e.is_conflict() => Err(ApiError::not_found(format!("{key} is not an image source"))),
            Err(e) => Err(store_error(e)),
        }
    }

    /// The sources a request means: the one it names, else every configured one.
    async fn sources_for(&self, source: Option<&str>) -> Result<Vec<Source>, ApiError> {
        if let Some(s) = source {
            return Ok(vec![Source::parse(s, "source").map_err(|e| ApiError::invalid_parameter(vec![e]))?]);
        }
        let all = self.list_image_sources().await?;
        if all.is_empty() {
            return Err(ApiError::invalid_parameter(vec![FieldError::invalid(
                "source",
                "no image sources are configured: name one, or add one with `nereid admin image sources add URL`",
            )]));
        }
        all.iter().map(|r| Source::parse(&r.url, "source").map_err(|e| ApiError::invalid_parameter(vec![e]))).collect()
    }

    /// What the sources offer, as `imgadm avail -j` lists it: `[{manifest, source}]`, each
    /// UUID once (the first source that has it), oldest first per source. A source that
    /// cannot be read, among several, does not hide the others (as `imgadm avail` warns
    /// and goes on): it is listed as `{source, error: {code, message}}`. A named source
    /// that fails, or every configured source failing, is an error.
    pub async fn image_avail(&self, source: Option<&str>) -> Result<Vec<Value>, ApiError> {
        let http = http_client()?;
        let sources = self.sources_for(source).await?;
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        let mut failures = Vec::new();
        for src in &sources {
            match self.source_avail(&http, src).await {
                Ok(manifests) => {
                    for m in manifests {
                        let uuid = m.get("uuid").and_then(Value::as_str).unwrap_or("").to_string();
                        if seen.insert(uuid) {
                            out.push(json!({"manifest": m, "source": src.display()}));
                        }
                    }
                }
                Err(e) => failures.push((src.display(), e)),
            }
        }
        if failures.len() == sources.len()
            && let Some((_, e)) = failures.drain(..).next()
        {
            return Err(e);
        }
        for (source, e) in failures {
            tracing::warn!(%source, error = %e.message, "image source could not be listed");
            out.push(json!({"source": source, "error": {"code": e.code, "message": e.message}}));
        }
        Ok(out)
    }

    /// Every manifest one source lists, page by page (the marker is inclusive), within
    /// [`Listing`]'s bounds.
    async fn source_avail(&self, http: &reqwest::Client, src: &Source) -> Result<Vec<Value>, ApiError> {
        let mut listing = Listing::default();
        loop {
            let limit = PAGE.to_string();
            let mut q = vec![("limit", limit.as_str())];
            if let Some(m) = &listing.marker {
                q.push(("marker", m.as_str()));
            }
            let resp = http.get(src.url("/images", &q)).send().await.map_err(|e| remote_error(src, "ListImages", e))?;
            let Value::Array(page) = remote_json(src, "ListImages", resp).await? else {
                return Err(remote_error(src, "ListImages", "the answer is not a JSON array"));
            };
            if !listing.take(page, PAGE).map_err(|e| remote_error(src, "ListImages", e))? {
                return Ok(listing.items);
            }
        }
    }

    /// How the import of `uuid` is going (or went).
    pub async fn image_import(&self, uuid: Uuid) -> Result<ImportRecord, ApiError> {
        self.read::<ImportRecord>(IMAGE_IMPORTS.name, &uuid.to_string())
            .await?
            .map(|(r, _)| r)
            .ok_or_else(|| ApiError::not_found(format!("no import of image {uuid} has been started on this cloud")))
    }

    /// AdminImportRemoteImage: `uuid` and its origin chain from `source` (or the first
    /// configured source that has it), keeping UUIDs. Runs in its own task (see the module
    /// doc) and answers when it is done.
    pub async fn import_remote_image(self: &Arc<Self>, uuid: Uuid, source: Option<String>) -> Result<ImportOutcome, ApiError> {
        let app = self.clone();
        tokio::spawn(async move { app.run_import(uuid, source.as_deref()).await })
            .await
            .map_err(|e| ApiError::internal(format!("the import task ended abnormally: {e}")))?
    }

    async fn run_import(&self, uuid: Uuid, source: Option<&str>) -> Result<ImportOutcome, ApiError> {
        // Images an earlier, unfinished import of this UUID brought (see `leftover`).
        let unfinished: Vec<Uuid> = match self.read::<ImportRecord>(IMAGE_IMPORTS.name, &uuid.to_string()).await? {
            Some((prev, _)) if prev.state != "succeeded" => prev.images,
            _ => Vec::new(),
        };
        if let Some((img, _)) = self.read::<Image>(IMAGES.name, &uuid.to_string()).await?
            && !leftover(&img, &unfinished)
        {
            return Err(ApiError::conflict("ImageUuidAlreadyExists", format!("image {uuid} already exists here ({})", img.state)));
        }
        let http = http_client()?;
        // The source that has the image: the one named, else the first configured one.
        let mut found = None;
        let mut misses = Vec::new();
        for src in self.sources_for(source).await? {
            let resp = http.get(src.url(&format!("/images/{uuid}"), &[])).send().await.map_err(|e| remote_error(&src, "GetImage", e))?;
            if resp.status() == reqwest::StatusCode::NOT_FOUND {
                misses.push(src.display());
                continue;
            }
            let m = remote_json(&src, "GetImage", resp).await?;
            found = Some((src, m));
            break;
        }
        let Some((src, manifest)) = found else {
            return Err(ApiError::not_found(format!("image {uuid} is not offered by {}", misses.join(", "))));
        };
        let chain = self.remote_chain(&http, &src, remote_image(&src, uuid, manifest)?, &unfinished).await?;
        let now = nereid_types::time::now_iso();
        let mut rec = ImportRecord {
            uuid,
            source: src.display(),
            state: "running".into(),
            images: chain.iter().rev().map(|r| r.uuid).collect(),
            current: None,
            downloaded: 0,
            size: 0,
            error: None,
            headnode: self.cfg.headnode_id.clone(),
            started_at: now.clone(),
            updated_at: now,
        };
        self.save_import(&rec).await;
        let mut imported = Vec::new();
        let mut result = Ok(());
        for r in chain.into_iter().rev() {
            match self.import_one(&http, &src, &r, &mut rec, &unfinished).await {
                Ok(true) => imported.push(r.uuid),
                Ok(false) => {}
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        rec.current = None;
        rec.updated_at = nereid_types::time::now_iso();
        match result {
            Ok(()) => {
                rec.state = "succeeded".into();
                self.save_import(&rec).await;
                Ok(ImportOutcome { image_uuid: uuid, source: src.display(), imported })
            }
            Err(e) => {
                rec.state = "failed".into();
                rec.error = serde_json::to_value(e.body()).ok();
                self.save_import(&rec).await;
                Err(e)
            }
        }
    }

    /// The image and the origins this cloud lacks, newest first.
    async fn remote_chain(
        &self,
        http: &reqwest::Client,
        src: &Source,
        first: Remote,
        unfinished: &[Uuid],
    ) -> Result<Vec<Remote>, ApiError> {
        let mut chain = vec![first];
        while let Some(last) = chain.last() {
            let Some(origin) = last.manifest.get("origin").and_then(Value::as_str) else { break };
            let child = last.uuid;
            let origin = Uuid::parse_str(origin)
                .map_err(|_| remote_error(src, "GetImage", format!("image {child} has an origin that is not a UUID: {origin}")))?;
            if let Some((local, _)) = self.read::<Image>(IMAGES.name, &origin.to_string()).await? {
                if local.state == "active" || local.state == "disabled" {
                    break;
                }
                if !leftover(&local, unfinished) {
                    return Err(ApiError::new(
                        422,
                        "OriginIsNotActive",
                        format!("origin image {origin} of {child} is here but {}: activate or delete it first", local.state),
                    ));
                }
            }
            if chain.len() >= MAX_ORIGIN_DEPTH {
                return Err(ApiError::new(
                    422,
                    "OriginDoesNotExist",
                    format!("image {} has an origin chain deeper than {MAX_ORIGIN_DEPTH}", chain[0].uuid),
                ));
            }
            let resp = http.get(src.url(&format!("/images/{origin}"), &[])).send().await.map_err(|e| remote_error(src, "GetImage", e))?;
            if resp.status() == reqwest::StatusCode::NOT_FOUND {
                return Err(ApiError::new(
                    422,
                    "OriginDoesNotExist",
                    format!("origin image {origin} of {child} is neither here nor in {}", src.display()),
                ));
            }
            let m = remote_json(src, "GetImage", resp).await?;
            chain.push(remote_image(src, origin, m)?);
        }
        Ok(chain)
    }

    async fn save_import(&self, rec: &ImportRecord) {
        if let Err(e) = self.write(IMAGE_IMPORTS.name, &rec.uuid.to_string(), rec, Cond::Any).await {
            tracing::warn!(image = %rec.uuid, error = %e, "could not record the import's progress");
        }
    }

    /// Imports one image of a chain: false when it turned out to be here already (another
    /// import brought it meanwhile).
    async fn import_one(
        &self,
        http: &reqwest::Client,
        src: &Source,
        r: &Remote,
        rec: &mut ImportRecord,
        unfinished: &[Uuid],
    ) -> Result<bool, ApiError> {
        let _lock = IMPORT_LOCKS.lock(&r.uuid.to_string()).await;
        if let Some((local, _)) = self.read::<Image>(IMAGES.name, &r.uuid.to_string()).await? {
            if leftover(&local, unfinished) {
                tracing::warn!(image = %r.uuid, "removing the unactivated image an interrupted import left, to import it again");
                self.delete_image(r.uuid).await?;
            } else if r.uuid == rec.uuid {
                return Err(ApiError::conflict("ImageUuidAlreadyExists", format!("image {} already exists here", r.uuid)));
            } else {
                return Ok(false);
            }
        }
        // The manifest must be importable before its file is fetched.
        image::check_create(&r.manifest, image::Origin::Import(r.uuid))?;
        rec.current = Some(r.uuid);
        rec.size = r.size;
        let received = self.download(http, src, r, rec).await?;
        let add = AddFile {
            compression: r.compression.clone(),
            sha1: Some(r.sha1.clone()),
            dataset_guid: r.dataset_guid.clone(),
            content_length: Some(r.size),
        };
        if let Err(e) = self.import_image(r.uuid, &r.manifest).await {
            self.files.discard(&received).await;
            return Err(e);
        }
        let done = match self.attach_file(r.uuid, &add, &received).await {
            Ok(_) => self.activate_image(r.uuid).await.map(|_| ()),
            Err(e) => {
                self.files.discard(&received).await;
                Err(e)
            }
        };
        if let Err(e) = done {
            if let Err(d) = self.delete_image(r.uuid).await {
                tracing::error!(image = %r.uuid, error = %d.message, "could not remove a half-imported image");
            }
            return Err(e);
        }
        tracing::info!(image = %r.uuid, source = %src.display(), "imported image");
        Ok(true)
    }

    /// Fetches an image's file into its partial file (continuing what an earlier attempt
    /// left) and verifies size and SHA-1; a file that does not verify is deleted.
    async fn download(&self, http: &reqwest::Client, src: &Source, r: &Remote, rec: &mut ImportRecord) -> Result<Received, ApiError> {
        let path = self.files.partial_path(r.uuid, &r.sha1);
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir).await.map_err(io_error)?;
        }
        let mut have = tokio::fs::metadata(&path).await.map(|m| m.len()).unwrap_or(0);
        if have > r.size {
            let _ = tokio::fs::remove_file(&path).await;
            have = 0;
        }
        if have < r.size {
            let mut req = http.get(src.url(&format!("/images/{}/file", r.uuid), &[]));
            if have > 0 {
                req = req.header(reqwest::header::RANGE, format!("bytes={have}-"));
            }
            let resp = req.send().await.map_err(|e| remote_error(src, "GetImageFile", e))?;
            let status = resp.status();
            let resumed = status == reqwest::StatusCode::PARTIAL_CONTENT
                && resp
                    .headers()
                    .get(reqwest::header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.starts_with(&format!("bytes {have}-")));
            if !status.is_success() {
                return Err(remote_json(src, "GetImageFile", resp)
                    .await
                    .err()
                    .unwrap_or_else(|| remote_error(src, "GetImageFile", format!("answered {status} for image {}'s file", r.uuid))));
            }
            let mut opts = tokio::fs::OpenOptions::new();
            if resumed {
                opts.append(true);
            } else {
                opts.write(true).create(true).truncate(true);
                have = 0;
            }
            let mut f = opts.open(&path).await.map_err(io_error)?;
            let mut body = resp.bytes_stream();
            let mut last = Instant::now();
            let cut = loop {
                match body.next().await {
                    None => break None,
                    Some(Err(e)) => break Some(e.to_string()),
                    Some(Ok(chunk)) => {
                        have += chunk.len() as u64;
                        f.write_all(&chunk).await.map_err(io_error)?;
                        if have > r.size {
                            break None;
                        }
                        if last.elapsed() > Duration::from_millis(250) {
                            last = Instant::now();
                            rec.downloaded = have;
                            rec.updated_at = nereid_types::time::now_iso();
                            self.save_import(rec).await;
                        }
                    }
                }
            };
            f.flush().await.map_err(io_error)?;
            f.sync_all().await.map_err(io_error)?;
            rec.downloaded = have;
            self.save_import(rec).await;
            if let Some(e) = cut.filter(|_| have < r.size) {
                return Err(remote_error(
                    src,
                    "GetImageFile",
                    format!(
                        "the download of image {} stopped after {have} of {} bytes ({e}); the bytes so far are kept and importing again resumes",
                        r.uuid, r.size
                    ),
                ));
            }
        }
        let file = path.clone();
        let received = tokio::task::spawn_blocking(move || super::image_files::describe_file(&file))
            .await
            .map_err(|e| io_error(std::io::Error::other(e)))?
            .map_err(io_error)?;
        let (sha1, size) = (received.sha1.clone(), received.size);
        if size != r.size || sha1 != r.sha1 {
            let _ = tokio::fs::remove_file(&path).await;
            let why = if size != r.size {
                format!("{size} bytes arrived, the manifest says {}", r.size)
            } else {
                format!("the bytes hash to SHA-1 {sha1}, the manifest says {}", r.sha1)
            };
            return Err(ApiError::new(
                400,
                "Download",
                format!("the file of image {} from {} is corrupt: {why}; it was deleted and nothing was imported", r.uuid, src.display()),
            ));
        }
        Ok(received)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[test]
    fn source_urls_split_off_the_channel() {
        let s = Source::parse("https://updates.tritondatacenter.com/?channel=staging", "url").unwrap();
        assert_eq!(s.base, "https://updates.tritondatacenter.com");
        assert_eq!(s.channel.as_deref(), Some("staging"));
        assert_eq!(s.display(), "https://updates.tritondatacenter.com?channel=staging");
        assert_eq!(
            s.url("/images", &[("limit", "1000"), ("marker", "x")]),
            "https://updates.tritondatacenter.com/images?channel=staging&limit=1000&marker=x"
        );
        let p = Source::parse("http://127.0.0.1:9000/imgapi/", "url").unwrap();
        assert_eq!((p.display(), p.url("/ping", &[])), ("http://127.0.0.1:9000/imgapi".into(), "http://127.0.0.1:9000/imgapi/ping".into()));
        for bad in ["ftp://x", "not a url", "http://u:p@host", "http://h/?limit=3", "http://h/?channel=Bad!", "http://h/#x"] {
            let e = Source::parse(bad, "url").unwrap_err();
            assert_eq!(e.field, "url", "{bad}");
        }
        assert_eq!(Source::parse("http://h?channel=*", "url").unwrap().channel.as_deref(), Some("*"));
    }

    #[test]
    fn catalogue_shows_public_active_images_of_the_channel() {
        let img = |public: bool, state: &str, channels: Value| json!({"public": public, "state": state, "channels": channels});
        let all = catalog_filter(None);
        assert!(all.matches(&img(true, "active", json!(["dev"]))));
        assert!(all.matches(&json!({"public": true, "state": "active"})));
        assert!(!all.matches(&img(false, "active", json!([]))));
        assert!(!all.matches(&img(true, "disabled", json!([]))));
        assert!(!all.matches(&img(true, "unactivated", json!([]))));
        let dev = catalog_filter(Some("dev"));
        assert!(dev.matches(&img(true, "active", json!(["release", "dev"]))));
        assert!(!dev.matches(&img(true, "active", json!(["release"]))));
        assert!(!dev.matches(&json!({"public": true, "state": "active"})));
        assert!(catalog_filter(Some("*")).matches(&img(true, "active", json!(["release"]))));
    }

    fn imgs(ids: &[&str]) -> Vec<Value> {
        ids.iter().map(|i| json!({"uuid": i})).collect()
    }

    #[test]
    fn paging_drops_the_inclusive_marker_and_stops() {
        let (items, next) = next_page(None, imgs(&["a", "b"]), 2);
        assert_eq!((items.len(), next.as_deref()), (2, Some("b")));
        let (items, next) = next_page(Some("b"), imgs(&["b", "c"]), 2);
        assert_eq!((items, next.as_deref()), (imgs(&["c"]), Some("c")));
        // A short page ends the listing.
        let (items, next) = next_page(Some("c"), imgs(&["c"]), 2);
        assert_eq!((items, next), (vec![], None));
        // A full page that does not move past the marker ends it too.
        let (items, next) = next_page(Some("c"), imgs(&["c", "c"]), 2);
        assert_eq!((items.len(), next), (1, None));
    }

    #[test]
    fn a_listing_whose_markers_come_round_again_is_refused() {
        let mut l = Listing::default();
        assert_eq!(l.take(imgs(&["x", "a"]), 2), Ok(true));
        assert_eq!(l.take(imgs(&["a", "b"]), 2), Ok(true));
        let e = l.take(imgs(&["b", "a"]), 2).unwrap_err();
        assert!(e.contains("came back to marker a"), "{e}");
    }

    #[test]
    fn a_listing_without_end_is_refused_at_the_page_cap() {
        let mut l = Listing::default();
        let mut pages = 0;
        let e = loop {
            pages += 1;
            let page = vec![json!({"uuid": l.marker.clone().unwrap_or_default()}), json!({"uuid": format!("m{pages}")})];
            match l.take(page, 2) {
                Ok(true) => {}
                Ok(false) => panic!("the listing ended"),
                Err(e) => break e,
            }
        };
        assert_eq!(pages, MAX_PAGES);
        assert!(e.contains(&format!("past {MAX_PAGES} pages")), "{e}");
        // Items are capped too, whatever the page size.
        let mut l = Listing::default();
        let big: Vec<Value> = (0..=MAX_AVAIL_ITEMS).map(|i| json!({"uuid": i.to_string()})).collect();
        assert!(l.take(big, PAGE).unwrap_err().contains("images"));
        // An ordinary listing ends.
        let mut l = Listing::default();
        assert_eq!(l.take(imgs(&["a", "b"]), 2), Ok(true));
        assert_eq!(l.take(imgs(&["b"]), 2), Ok(false));
        assert_eq!(l.items, imgs(&["a", "b"]));
    }

    #[test]
    fn a_manifest_must_be_the_image_asked_for() {
        let src = Source::parse("http://127.0.0.1:9/", "url").unwrap();
        let (y, z) = (Uuid::from_u128(0x1111), Uuid::from_u128(0x2222));
        let m = |u: Uuid| json!({"uuid": u, "files": [{"sha1": "a".repeat(40), "size": 5}]});
        assert_eq!(remote_image(&src, y, m(y)).unwrap().uuid, y);
        let e = remote_image(&src, y, m(z)).err().unwrap();
        assert_eq!(e.code, "RemoteSourceError");
        assert!(e.message.contains(&y.to_string()) && e.message.contains(&z.to_string()), "{}", e.message);
    }

    /// A source answering 302 to another address: the client stops at the 302, and the
    /// other listener is never contacted.
    #[tokio::test]
    async fn redirects_off_a_source_are_not_followed() {
        use std::sync::atomic::{AtomicBool, Ordering};
        /// Answers one request on `l` with `head` and `body`.
        async fn answer(l: tokio::net::TcpListener, head: String, body: &'static str) {
            let (mut c, _) = l.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let _ = c.read(&mut buf).await.unwrap();
            let resp = format!("{head}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
            c.write_all(resp.as_bytes()).await.unwrap();
        }
        let target = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target_addr = target.local_addr().unwrap();
        let contacted = Arc::new(AtomicBool::new(false));
        let flag = contacted.clone();
        let target_task = tokio::spawn(async move {
            let (c, _) = target.accept().await.unwrap();
            flag.store(true, Ordering::SeqCst);
            drop(c);
        });
        let source = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let source_addr = source.local_addr().unwrap();
        let head = format!("HTTP/1.1 302 Found\r\nLocation: http://{target_addr}/images\r\n");
        tokio::spawn(answer(source, head, r#"{"code":"Moved","message":"elsewhere"}"#));
        let resp = http_client().unwrap().get(format!("http://{source_addr}/images")).send().await;
        assert_eq!(resp.as_ref().map(|r| r.status()).ok(), Some(reqwest::StatusCode::FOUND), "{resp:?}");
        let src = Source::parse(&format!("http://{source_addr}"), "url").unwrap();
        let e = remote_json(&src, "ListImages", resp.unwrap()).await.unwrap_err();
        assert_eq!(e.code, "RemoteSourceError");
        target_task.abort();
        let _ = target_task.await;
        assert!(!contacted.load(Ordering::SeqCst), "the redirect's target was contacted");
    }
}
