//! IMGAPI: image manifests and their files.

use bytes::Bytes;
use futures_util::Stream;
use nereid_store::{Cond, Filter, Kind, ListQuery, Op, Path};
use nereid_types::account::Account;
use nereid_types::image::{self, Image, ImageFile, Origin};
use nereid_types::query::Query;
use nereid_types::{ApiError, FieldError};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::image_files::{ReceiveError, Received};
use super::{App, RETRIES, encode, lists, store_error};
use crate::buckets::{ACCOUNTS, IMAGES};

/// The longest origin chain CloneImage follows (a bound against a corrupt, cyclic chain).
const MAX_ORIGIN_DEPTH: usize = 100;

/// What `AddImageFile` was told about the file.
#[derive(Debug, Clone, Default)]
pub struct AddFile {
    pub compression: String,
    pub sha1: Option<String>,
    pub dataset_guid: Option<String>,
    /// `Content-Length` of the upload, if the client sent one.
    pub content_length: Option<u64>,
}

/// Where `ListImages` starts (inclusive).
#[derive(Debug, Clone, PartialEq)]
pub enum Marker {
    /// Images published at or after this image (ties broken by UUID).
    Image { published_at: Option<String>, uuid: Uuid },
    /// Images published at or after this time.
    Date(String),
}

/// The store filter for `ListImages`, from validated query parameters.
pub fn list_filter(q: &Query, marker: Option<&Marker>, desc: bool) -> Result<Filter, Vec<FieldError>> {
    let mut parts = Vec::new();
    let mut errors = Vec::new();
    match q.str("state").unwrap_or("active") {
        "all" => {}
        s => parts.push(Filter::eq("state", s)),
    }
    for field in ["owner", "os"] {
        if let Some(v) = q.str(field) {
            parts.push(Filter::eq(field, v));
        }
    }
    for field in ["name", "version"] {
        match q.str(field) {
            Some(v) if v.starts_with('~') => parts.push(Filter::contains(field, &v[1..])),
            Some(v) => parts.push(Filter::eq(field, v)),
            None => {}
        }
    }
    if let Some(t) = q.str("type") {
        match t.strip_prefix('!') {
            Some(not) => parts.push(Filter::Ne(Path::field("type"), json!(not))),
            None => parts.push(Filter::eq("type", t)),
        }
    }
    if let Some(p) = q.bool("public") {
        parts.push(Filter::eq("public", p));
    }
    if let Some(account) = q.str("account") {
        // As [`visible_to`]: its own images; others' once activated, public or shared with it.
        let activated = Filter::Or(vec![Filter::eq("state", "active"), Filter::eq("state", "disabled")]);
        let others = Filter::And(vec![activated, Filter::Or(vec![Filter::eq("public", true), Filter::has("acl", account)])]);
        parts.push(Filter::Or(vec![Filter::eq("owner", account), others]));
    }
    if let Some(b) = q.str("billing_tag") {
        parts.push(Filter::has("billing_tags", b));
    }
    for (name, value) in q.prefixed.iter().filter(|(n, _)| n.starts_with("tag.")) {
        match super::tag_filter(name, value) {
            Ok(f) => parts.push(f),
            Err(e) => errors.push(e),
        }
    }
    if let Some(m) = marker {
        let pa = Path::field("published_at");
        let after: fn(Path, Value) -> Filter = if desc { Filter::Lt } else { Filter::Gt };
        match m {
            Marker::Date(d) => parts.push(if desc { Filter::Le(pa, json!(d)) } else { Filter::Ge(pa, json!(d)) }),
            Marker::Image { published_at: Some(p), uuid } => parts.push(Filter::Or(vec![
                after(pa.clone(), json!(p)),
                Filter::And(vec![Filter::eq("published_at", p.as_str()), Filter::Ge(Path::field("uuid"), json!(uuid))]),
            ])),
            Marker::Image { published_at: None, uuid } => {
                // Unpublished images sort first (ascending) / last (descending).
                let same = Filter::And(vec![Filter::Absent(pa.clone()), Filter::Ge(Path::field("uuid"), json!(uuid))]);
                parts.push(if desc { same } else { Filter::Or(vec![same, Filter::Present(pa)]) });
            }
        }
    }
    if errors.is_empty() { Ok(Filter::and(parts)) } else { Err(errors) }
}

/// `sort=published_at[.asc|.desc]`: true when descending.
pub fn sort_desc(q: &Query) -> bool {
    q.str("sort").is_some_and(|s| s.ends_with(".desc"))
}

fn not_found(uuid: Uuid) -> ApiError {
    ApiError::not_found(format!("image {uuid} does not exist"))
}

/// Whether `account` may see `img`: its own images in any state; others' only once
/// activated (IMGAPI's rule), and then when public or when `account` is on the ACL.
pub fn visible_to(img: &Image, account: Uuid) -> bool {
    img.owner == account || (image::activated(img) && (img.public || image::acl(img).contains(&account)))
}

/// DeleteImage's refusal while `total` images name `uuid` as their origin, naming only
/// `visible` (those the caller may see).
fn dependents_error(uuid: Uuid, total: i64, visible: &[Uuid]) -> ApiError {
    let images = if total == 1 { "1 image".to_string() } else { format!("{total} images") };
    let named = if visible.is_empty() {
        String::new()
    } else {
        format!(" (among them {})", visible.iter().map(Uuid::to_string).collect::<Vec<_>>().join(", "))
    };
    ApiError::new(422, "ImageHasDependentImages", format!("image {uuid} is the origin of {images}{named}; delete those first"))
}

impl App {
    pub async fn list_images(&self, q: &Query) -> Result<Vec<Image>, ApiError> {
        let lq = self.list_images_query(q).await?;
        self.list_fast(IMAGES.name, &lq).await
    }

    /// IMGAPI ListImages' body: [`list_images`](Self::list_images)' images as
    /// [`for_listing`] renders them, each rendered once per version of its record (see
    /// [`super::lists`]).
    pub async fn list_images_rendered(&self, q: &Query, incl_admin_fields: bool) -> Result<Vec<u8>, ApiError> {
        let lq = self.list_images_query(q).await?;
        let variant = lists::Variant::Image { admin: incl_admin_fields };
        let page = self
            .list_rendered(variant, &lq, |row| match lists::decode_or_log::<Image>(IMAGES.name, row) {
                Some(img) => lists::Made::Keep(lists::Cached::one(lists::to_bytes(&for_listing(img, incl_admin_fields)))),
                None => lists::Made::Skip,
            })
            .await?;
        Ok(lists::json_array(page.iter().map(lists::Cached::bytes)))
    }

    async fn list_images_query(&self, q: &Query) -> Result<ListQuery, ApiError> {
        let desc = sort_desc(q);
        let marker = self.image_marker(q, None).await?;
        let filter = list_filter(q, marker.as_ref(), desc).map_err(ApiError::invalid_parameter)?;
        Ok(ListQuery::filter(filter).sort(Path::field("published_at"), Kind::Text, desc).page(q.limit(1000), 0))
    }

    /// The `marker` query parameter of ListImages: an image UUID or a date. With `scope`,
    /// an image outside it is answered exactly as an unknown UUID (the public catalogue
    /// must not tell whether a private or unactivated image exists, nor when it was
    /// published).
    pub async fn image_marker(&self, q: &Query, scope: Option<&Filter>) -> Result<Option<Marker>, ApiError> {
        Ok(match q.str("marker") {
            None => None,
            Some(m) => Some(match Uuid::parse_str(m) {
                Ok(u) => {
                    let unknown = || ApiError::invalid_parameter(vec![FieldError::invalid("marker", format!("image {u} does not exist"))]);
                    let img = self
                        .read::<Image>(IMAGES.name, &u.to_string())
                        .await?
                        .map(|(img, _)| img)
                        .filter(|img| scope.is_none_or(|f| f.matches(&encode(img))))
                        .ok_or_else(unknown)?;
                    Marker::Image { published_at: img.published_at().map(str::to_string), uuid: u }
                }
                Err(_) => {
                    nereid_types::time::parse_iso(m).map_err(|e| {
                        ApiError::invalid_parameter(vec![FieldError::invalid(
                            "marker",
                            format!("is neither an image UUID nor a date: {e}"),
                        )])
                    })?;
                    Marker::Date(m.to_string())
                }
            }),
        })
    }

    /// An image; with `account`, 404 unless that account may see it.
    pub async fn get_image(&self, uuid: Uuid, account: Option<Uuid>) -> Result<(Image, i64), ApiError> {
        let (img, generation) = self.read::<Image>(IMAGES.name, &uuid.to_string()).await?.ok_or_else(|| not_found(uuid))?;
        if let Some(a) = account
            && !visible_to(&img, a)
        {
            return Err(not_found(uuid));
        }
        Ok((img, generation))
    }

    /// An image a compute node installs for a VM: it must have its file (active, or
    /// disabled since the VM was provisioned).
    pub async fn image_for_server(&self, uuid: Uuid) -> Result<Image, ApiError> {
        let (img, _) = self.get_image(uuid, None).await?;
        if img.state != "active" && img.state != "disabled" {
            return Err(ApiError::new(
                422,
                "ImageNotActive",
                format!("image {uuid} is {}: only an activated image can be installed on a server", img.state),
            ));
        }
        Ok(img)
    }

    async fn check_origin(&self, img: &Image) -> Result<(), ApiError> {
        let Some(origin) = img.origin() else { return Ok(()) };
        let id = Uuid::parse_str(origin).map_err(|_| ApiError::validation_422(vec![FieldError::invalid("origin", "must be a UUID")]))?;
        match self.read::<Image>(IMAGES.name, &id.to_string()).await? {
            None => Err(ApiError::new(422, "OriginDoesNotExist", format!("origin image {id} does not exist"))),
            Some((o, _)) if o.state != "active" => {
                Err(ApiError::new(422, "OriginIsNotActive", format!("origin image {id} is {}, not active", o.state)))
            }
            Some(_) => Ok(()),
        }
    }

    /// CreateImage: a new unactivated image; `account` creates it on behalf of that account.
    pub async fn create_image(&self, input: &Map<String, Value>, account: Option<Uuid>) -> Result<Image, ApiError> {
        let mut input = input.clone();
        if let Some(a) = account {
            match input.get("owner").and_then(Value::as_str) {
                None => {
                    input.insert("owner".into(), json!(a));
                }
                Some(o) if !o.eq_ignore_ascii_case(&a.to_string()) => {
                    return Err(ApiError::invalid_parameter(vec![FieldError::invalid(
                        "owner",
                        format!("must be the account creating the image ({a})"),
                    )]));
                }
                Some(_) => {}
            }
        }
        let img = image::check_create(&input, Origin::Create)?;
        self.check_origin(&img).await?;
        self.write(IMAGES.name, &img.uuid.to_string(), &img, Cond::Absent).await.map_err(store_error)?;
        Ok(img)
    }

    /// AdminImportImage: the manifest keeps its UUID (and `published_at`).
    pub async fn import_image(&self, uuid: Uuid, input: &Map<String, Value>) -> Result<Image, ApiError> {
        let img = image::check_create(input, Origin::Import(uuid))?;
        self.check_origin(&img).await?;
        match self.write(IMAGES.name, &uuid.to_string(), &img, Cond::Absent).await {
            Ok(_) => Ok(img),
            Err(e) if e.is_conflict() => Err(ApiError::conflict("ImageUuidAlreadyExists", format!("image {uuid} already exists"))),
            Err(e) => Err(store_error(e)),
        }
    }

    /// AddImageFile: streams the body to disk, verifies it, and attaches it.
    pub async fn add_image_file<S, E>(&self, uuid: Uuid, add: AddFile, body: S) -> Result<Image, ApiError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let (img, _) = self.get_image(uuid, None).await?;
        image::check_can_add_file(&img)?;
        let received = self.files.receive(body, image::MAX_FILE_SIZE).await.map_err(|e| match e {
            ReceiveError::TooLarge(n) => {
                ApiError::new(413, "RequestEntityTooLarge", format!("image files may be at most {n} bytes (20 GiB)"))
            }
            ReceiveError::Body(m) => ApiError::new(400, "Upload", format!("the upload was interrupted: {m}")),
            ReceiveError::Io(e) => {
                tracing::error!(error = %e, "writing image file");
                ApiError::new(503, "StorageIsDown", format!("could not store the file: {e}"))
            }
        })?;
        let result = self.attach_file(uuid, &add, &received).await;
        if result.is_err() {
            self.files.discard(&received).await;
        }
        result
    }

    pub(crate) async fn attach_file(&self, uuid: Uuid, add: &AddFile, r: &Received) -> Result<Image, ApiError> {
        if r.size == 0 {
            return Err(ApiError::new(400, "Upload", "the file is empty"));
        }
        if let Some(len) = add.content_length
            && len != r.size
        {
            return Err(ApiError::new(
                400,
                "Upload",
                format!("received {} bytes but Content-Length said {len}: the upload is incomplete", r.size),
            ));
        }
        if let Some(want) = &add.sha1
            && !want.eq_ignore_ascii_case(&r.sha1)
        {
            return Err(ApiError::new(
                400,
                "Upload",
                format!("sha1 mismatch: the request says {want}, the uploaded bytes hash to {}", r.sha1),
            ));
        }
        let zvol = super::zvol_import::convert(self, uuid, add, r).await?; // a zfs send stream → its raw disk
        let uploaded = zvol.as_ref().map(|_| (r.sha1.clone(), r.size));
        let (add, r) = zvol.as_ref().map_or((add, r), |z| (&z.add, &z.received));
        image::check_compression(&add.compression, &r.head).map_err(|e| ApiError::invalid_parameter(vec![e]))?;
        let file = ImageFile {
            sha1: r.sha1.clone(),
            size: r.size,
            compression: add.compression.clone(),
            dataset_guid: add.dataset_guid.clone(),
            stor: Some("local".into()),
            content_md5: Some(r.md5.clone()),
            source_sha1: uploaded.as_ref().map(|(sha1, _)| sha1.clone()),
            source_size: uploaded.map(|(_, size)| size),
        };
        let _refs = self.files.refs.lock().await;
        self.files.commit(r).await.map_err(|e| ApiError::new(503, "StorageIsDown", format!("could not store the file: {e}")))?;
        for _ in 0..RETRIES {
            let (mut img, generation) = self.get_image(uuid, None).await?;
            image::check_can_add_file(&img)?;
            let old = img.files.first().map(|f| f.sha1.clone());
            img.files = vec![file.clone()];
            match self.store.put(IMAGES.name, &uuid.to_string(), encode(&img), Cond::Generation(generation)).await {
                Ok(_) => {
                    if let Some(old) = old.filter(|o| *o != file.sha1) {
                        self.gc_file(&old).await?;
                    }
                    return Ok(img);
                }
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(store_error(e)),
            }
        }
        Err(ApiError::conflict("ConcurrentModification", format!("image {uuid} kept changing; retry")))
    }

    /// Removes a file once no image refers to it. Call with `files.refs` held.
    async fn gc_file(&self, sha1: &str) -> Result<(), ApiError> {
        let users = self
            .store
            .count(IMAGES.name, &Filter::Eq(Path::field("files").index(0).key("sha1"), json!(sha1)))
            .await
            .map_err(store_error)?;
        if users == 0 {
            self.files.remove(sha1).await;
        }
        Ok(())
    }

    /// Applies `f` to the image, retrying on concurrent change.
    async fn modify_image(&self, uuid: Uuid, f: impl Fn(&Image) -> Result<Image, ApiError>) -> Result<Image, ApiError> {
        for _ in 0..RETRIES {
            let (img, generation) = self.get_image(uuid, None).await?;
            let next = f(&img)?;
            match self.store.put(IMAGES.name, &uuid.to_string(), encode(&next), Cond::Generation(generation)).await {
                Ok(_) => return Ok(next),
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(store_error(e)),
            }
        }
        Err(ApiError::conflict("ConcurrentModification", format!("image {uuid} kept changing; retry")))
    }

    pub async fn activate_image(&self, uuid: Uuid) -> Result<Image, ApiError> {
        let now = nereid_types::time::now_iso();
        self.modify_image(uuid, |img| image::activate(img, &now)).await
    }

    pub async fn update_image(&self, uuid: Uuid, input: &Map<String, Value>) -> Result<Image, ApiError> {
        self.modify_image(uuid, |img| image::check_update(img, input)).await
    }

    pub async fn set_image_disabled(&self, uuid: Uuid, disabled: bool) -> Result<Image, ApiError> {
        self.modify_image(uuid, |img| Ok(image::set_disabled(img, disabled))).await
    }

    /// DeleteImage: refused while incremental images build on it.
    pub async fn delete_image(&self, uuid: Uuid) -> Result<(), ApiError> {
        self.delete_image_as(uuid, None).await
    }

    /// DeleteImage on behalf of `viewer` (None: the operator, who sees every image). The
    /// refusal while images name this one as their origin says how many there are, and
    /// names only those the viewer may see.
    async fn delete_image_as(&self, uuid: Uuid, viewer: Option<Uuid>) -> Result<(), ApiError> {
        let (img, generation) = self.get_image(uuid, None).await?;
        let of_it = Filter::eq("origin", uuid.to_string());
        let total = self.store.count(IMAGES.name, &of_it).await.map_err(store_error)?;
        if total > 0 {
            let children = self.list::<Image>(IMAGES.name, &ListQuery::filter(of_it).page(10, 0)).await?;
            let named: Vec<Uuid> = children.iter().filter(|c| viewer.is_none_or(|v| visible_to(c, v))).map(|c| c.uuid).collect();
            return Err(dependents_error(uuid, total, &named));
        }
        let _refs = self.files.refs.lock().await;
        match self.store.delete(IMAGES.name, &uuid.to_string(), Cond::Generation(generation)).await {
            Ok(()) => {}
            Err(e) if e.is_conflict() => {
                return Err(ApiError::conflict("ConcurrentModification", format!("image {uuid} changed while being deleted; retry")));
            }
            Err(e) => return Err(store_error(e)),
        }
        if let Some(f) = img.files.first() {
            self.gc_file(&f.sha1).await?;
        }
        Ok(())
    }

    /// CloudAPI's UpdateImage on behalf of `account`: 404 unless it may see the image,
    /// `NotImageOwner` unless it owns it (IMGAPI's order).
    pub async fn tenant_update_image(&self, uuid: Uuid, account: Uuid, input: &Map<String, Value>) -> Result<Image, ApiError> {
        self.modify_image(uuid, |img| {
            if !visible_to(img, account) {
                return Err(not_found(uuid));
            }
            if img.owner != account {
                return Err(image::not_owner(account, img));
            }
            image::check_tenant_update(img, input)
        })
        .await
    }

    /// CloudAPI's DeleteImage on behalf of `account`: 404 unless it may see the image,
    /// `NotImageOwner` unless it owns it (so operator and shared images stay), then
    /// [`delete_image`](Self::delete_image)'s rules. Instances provisioned from the image
    /// keep running (as in Triton, IMGAPI does not track them): their servers hold the
    /// image, and their records keep its UUID.
    pub async fn tenant_delete_image(&self, uuid: Uuid, account: Uuid) -> Result<(), ApiError> {
        let (img, _) = self.get_image(uuid, Some(account)).await?;
        if img.owner != account {
            return Err(image::not_owner(account, &img));
        }
        self.delete_image_as(uuid, Some(account)).await
    }

    /// CloudAPI's CloneImage: a private copy, owned by `account`, of an image shared with
    /// it. An incremental image's origins are copied too, down to the first one owned by
    /// the operator (IMGAPI's rule), the intermediate copies disabled; all copies are
    /// written in one transaction, so a failure leaves none.
    ///
    /// The walk never copies, nor names, an origin `account` may not see: it stops there
    /// and the oldest copy has no origin. Every stored file is a whole disk (a qcow2 with
    /// a backing file is refused, ZFS incrementals are converted to full disks), so the
    /// copy is usable without it — and a shared image made from another account's private
    /// image does not hand that image on. An origin the account owns, or the operator's,
    /// stays the copy's origin without being copied.
    pub async fn clone_image(&self, uuid: Uuid, account: Uuid) -> Result<Image, ApiError> {
        let (img, generation) = self.get_image(uuid, Some(account)).await?;
        image::check_clone(&img, account)?;
        // The chain to copy, base first: the image, then its origins up to an operator's.
        let mut chain = vec![(img.clone(), generation)];
        let mut base_origin: Option<Uuid> = None;
        let mut next = img.origin().and_then(|o| Uuid::parse_str(o).ok());
        while let Some(o) = next {
            if chain.len() >= MAX_ORIGIN_DEPTH {
                return Err(ApiError::internal(format!("image {uuid}: origin chain longer than {MAX_ORIGIN_DEPTH} images")));
            }
            let Some((origin, g)) = self.read::<Image>(IMAGES.name, &o.to_string()).await? else { break };
            if !visible_to(&origin, account) {
                break;
            }
            if origin.owner == account || self.is_operator_owned(&origin).await? {
                base_origin = Some(origin.uuid);
                break;
            }
            next = origin.origin().and_then(|o| Uuid::parse_str(o).ok());
            chain.push((origin, g));
        }
        chain.reverse();
        let now = nereid_types::time::now_iso();
        let mut ops = Vec::new();
        let mut origin = base_origin;
        let mut last = None;
        let n = chain.len();
        for (i, (src, g)) in chain.into_iter().enumerate() {
            let copy = image::cloned(&src, account, Uuid::new_v4(), origin, i + 1 < n, &now);
            // The sources must not change while they are copied.
            ops.push(Op::Check { bucket: IMAGES.name.into(), key: src.uuid.to_string(), cond: Cond::Generation(g) });
            ops.push(Op::put(IMAGES.name, copy.uuid.to_string(), encode(&copy), Cond::Absent));
            origin = Some(copy.uuid);
            last = Some(copy);
        }
        let _refs = self.files.refs.lock().await;
        match self.store.batch(ops).await {
            Ok(_) => {}
            Err(e) if e.is_conflict() => {
                return Err(ApiError::conflict("ConcurrentModification", format!("image {uuid} changed while being cloned; retry")));
            }
            Err(e) => return Err(store_error(e)),
        }
        last.ok_or_else(|| ApiError::internal("clone made no image"))
    }

    /// Whether an image belongs to the operator (unset owner or an operator account).
    async fn is_operator_owned(&self, img: &Image) -> Result<bool, ApiError> {
        if img.owner == image::NIL_OWNER {
            return Ok(true);
        }
        Ok(self.read::<Account>(ACCOUNTS.name, &img.owner.to_string()).await?.is_some_and(|(a, _)| a.operator))
    }

    /// The file of an image, for download.
    pub async fn image_file(&self, uuid: Uuid, account: Option<Uuid>) -> Result<(Image, ImageFile, std::path::PathBuf), ApiError> {
        let (img, _) = self.get_image(uuid, account).await?;
        let file = img.files.first().cloned().ok_or_else(|| ApiError::not_found(format!("image {uuid} has no file yet")))?;
        let path = self.files.path_of(&file.sha1);
        Ok((img, file, path))
    }
}

/// An image as ListImages streams it: [`Image::render`]'s object, the file fields clients
/// never see taken off the owned image instead of copying it into a `Value` tree.
pub fn for_listing(mut img: Image, incl_admin_fields: bool) -> Image {
    for f in &mut img.files {
        f.content_md5 = None;
        if !incl_admin_fields {
            f.stor = None;
        }
    }
    img
}

#[cfg(test)]
mod tests {
    use super::*;
    use nereid_types::query::{Param, QKind, parse};

    #[test]
    fn listed_images_are_rendered_images() {
        let img: Image = serde_json::from_value(json!({
            "v": 2, "uuid": "3c9c1b5f-8e37-4c2d-9a6f-1b2c3d4e5f60", "owner": "3c9c1b5f-8e37-4c2d-9a6f-1b2c3d4e5f61",
            "name": "n", "version": "1", "state": "active", "disabled": false, "public": true, "type": "zvol", "os": "linux",
            "files": [{"sha1": "a", "size": 1, "compression": "none", "stor": "local", "contentMD5": "m"}],
            "published_at": "2026-01-01T00:00:00.000Z", "tags": {"a": 1}, "requirements": {"min_ram": 512},
        }))
        .unwrap();
        for admin in [false, true] {
            let want = serde_json::to_string(&img.render(admin)).unwrap();
            assert_eq!(serde_json::to_string(&for_listing(img.clone(), admin)).unwrap(), want);
        }
    }

    fn q(pairs: &[(&str, &str)]) -> Query {
        let params = [
            Param::new("state", QKind::Str { max: 20 }, ""),
            Param::new("name", QKind::Str { max: 99 }, ""),
            Param::new("type", QKind::Str { max: 99 }, ""),
            Param::new("account", QKind::Str { max: 99 }, ""),
            Param::prefix("tag.", ""),
        ];
        parse(&params, &pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn default_lists_active_images() {
        let f = list_filter(&q(&[]), None, false).unwrap();
        assert!(f.matches(&json!({"state": "active"})));
        assert!(!f.matches(&json!({"state": "disabled"})));
        assert!(list_filter(&q(&[("state", "all")]), None, false).unwrap().matches(&json!({"state": "unactivated"})));
    }

    #[test]
    fn name_substring_type_exclusion_and_tags() {
        let f = list_filter(
            &q(&[("state", "all"), ("name", "~bun"), ("type", "!zone-dataset"), ("tag.role", "os"), ("tag.n", "5")]),
            None,
            false,
        )
        .unwrap();
        assert!(f.matches(&json!({"name": "ubuntu", "type": "zvol", "tags": {"role": "os", "n": 5}})));
        assert!(!f.matches(&json!({"name": "ubuntu", "type": "zone-dataset", "tags": {"role": "os", "n": 5}})));
        assert!(!f.matches(&json!({"name": "debian", "type": "zvol", "tags": {"role": "os", "n": 5}})));
        assert!(list_filter(&q(&[("tag.a'b", "x")]), None, false).is_err());
    }

    #[test]
    fn an_account_sees_its_own_images_and_others_activated_public_or_shared_ones() {
        let me = Uuid::from_u128(1).to_string();
        let other = Uuid::from_u128(2).to_string();
        let f = list_filter(&q(&[("state", "all"), ("account", &me)]), None, false).unwrap();
        let img =
            |owner: &str, state: &str, public: bool, acl: &[&str]| json!({"owner": owner, "state": state, "public": public, "acl": acl});
        assert!(f.matches(&img(&me, "unactivated", false, &[])));
        assert!(f.matches(&img(&other, "active", true, &[])));
        assert!(f.matches(&img(&other, "disabled", false, &[&me])));
        assert!(!f.matches(&img(&other, "active", false, &[])));
        assert!(!f.matches(&img(&other, "unactivated", true, &[])), "others' unactivated images stay hidden");
        assert!(!f.matches(&img(&other, "creating", false, &[&me])));
        for (v, want) in [
            (img(&me, "failed", false, &[]), true),
            (img(&other, "active", true, &[]), true),
            (img(&other, "unactivated", false, &[&me]), false),
        ] {
            let i: Image = serde_json::from_value(json!({"v": 2, "uuid": Uuid::new_v4(), "name": "n", "version": "1", "disabled": false,
                "type": "zvol", "os": "linux", "files": [], "owner": v["owner"], "state": v["state"], "public": v["public"], "acl": v["acl"]}))
            .unwrap();
            assert_eq!(visible_to(&i, Uuid::from_u128(1)), want, "{v}");
            assert_eq!(f.matches(&v), want, "the store filter and visible_to agree: {v}");
        }
    }

    #[test]
    fn dependent_images_are_counted_and_only_visible_ones_named() {
        let (me, hidden, shown) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
        let e = dependents_error(me, 1, &[]);
        assert_eq!((e.status, e.code.as_str()), (422, "ImageHasDependentImages"));
        assert_eq!(e.message, format!("image {me} is the origin of 1 image; delete those first"));
        assert!(!e.message.contains(&hidden.to_string()));
        let e = dependents_error(me, 2, &[shown]);
        assert_eq!(e.message, format!("image {me} is the origin of 2 images (among them {shown}); delete those first"));
    }

    #[test]
    fn marker_is_inclusive_and_breaks_ties_by_uuid() {
        let m = Marker::Image { published_at: Some("2026-01-02T00:00:00.000Z".into()), uuid: Uuid::from_u128(5) };
        let f = list_filter(&q(&[]), Some(&m), false).unwrap();
        let img = |pa: &str, u: u128| json!({"state": "active", "published_at": pa, "uuid": Uuid::from_u128(u)});
        assert!(f.matches(&img("2026-01-02T00:00:00.000Z", 5)));
        assert!(f.matches(&img("2026-01-02T00:00:00.000Z", 6)));
        assert!(!f.matches(&img("2026-01-02T00:00:00.000Z", 4)));
        assert!(f.matches(&img("2026-01-03T00:00:00.000Z", 1)));
        assert!(!f.matches(&img("2026-01-01T00:00:00.000Z", 9)));
        let d = list_filter(&q(&[]), Some(&Marker::Date("2026-01-02T00:00:00.000Z".into())), false).unwrap();
        assert!(d.matches(&img("2026-01-02T00:00:00.000Z", 1)));
    }
}
