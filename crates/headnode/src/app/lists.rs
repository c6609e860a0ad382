//! Big lists, read fast: objects decoded straight from the store's JSON text into their
//! types (no `serde_json::Value` tree per row, no clone of it), one query per page, and
//! the busiest lists (VMAPI ListVms, CloudAPI ListMachines and ListImages, IMGAPI
//! ListImages) answered from a cache of each object's rendered JSON bytes.
//!
//! The answers are those of [`App::list`], [`App::list_entries`] and [`App::list_vms`]:
//! the same records in the same order, a record that does not decode left out (logged) or
//! kept as damaged exactly as those say. Only the way from the row to the type differs: a
//! row that does not decode straight is decoded again the old way, so a damaged record's
//! error reads as before. The HTTP and CloudAPI list handlers use these; the older
//! functions stay for their other callers.
//!
//! ## The rendering cache ([`RenderCache`])
//!
//! ```text
//!   list the page's versions (key, generation, mtime, size of the value) ── no value read
//!        │
//!        ▼
//!   cache[(variant, key)] ── same version ──▶ the bytes rendered before
//!        │ absent or another version
//!        ▼
//!   fetch those rows by key (one query) ── decode + render once ──▶ cached
//!   (a damaged record: rendered, or left out, every time; a row gone by then: left out)
//! ```
//!
//! Reading only versions matters: copying each row's kilobytes of text out of the
//! database, through the driver and into a string was most of a list's time.
//!
//! A rendering is a pure function of the row and of its [`Variant`] (which API renders
//! it, and what else the renderer reads: CloudAPI's `credentials` flag, IMGAPI's
//! `inclAdminFields`, whether the CloudAPI viewer owns the image). None of these
//! renderings reads anything else (no server liveness, no packages, no clock), so a row
//! whose version is unchanged renders to the same bytes. The generation grows on every
//! write; the write's time and the value's size also tell apart a record deleted and
//! written again under the same key, whose generation restarts at 1 (only one deleted and
//! written again within the same millisecond, at the same size, would not be told apart:
//! records listed here are keyed by UUIDs, which are not reused so).
//!
//! Memory is bounded by bytes: entries live in a young and an old generation; a hit in
//! the old one moves the entry to the young one; when the young one holds half the
//! budget, the old one is dropped and the young one becomes old (an LRU, roughly, at the
//! cost of one map swap).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use nereid_store::{Kind, ListQuery, Path, RawObject, RowVersion};
use nereid_types::ApiError;
use nereid_types::damaged::{self, Stored};
use nereid_types::query::Query;
use nereid_types::vm::{self, Vm};
use serde::de::DeserializeOwned;
use uuid::Uuid;

use super::{App, store_error};
use crate::buckets::{IMAGES, VMS};

/// What a cached rendering depends on besides its row (and so which bucket it is of).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Variant {
    /// VMAPI's VM (`vm::Rendered`).
    Vm,
    /// CloudAPI's machine (`MachineView`), with or without `metadata.credentials`.
    Machine { credentials: bool },
    /// IMGAPI's image as ListImages lists it, with or without `inclAdminFields`.
    Image { admin: bool },
    /// CloudAPI's image: [`Cached::ByOwner`] (the owner sees the ACL, others do not).
    CloudImage,
}

impl Variant {
    pub fn bucket(self) -> &'static str {
        match self {
            Variant::Vm | Variant::Machine { .. } => VMS.name,
            Variant::Image { .. } | Variant::CloudImage => IMAGES.name,
        }
    }
}

/// One object's rendered JSON.
#[derive(Debug, Clone, PartialEq)]
pub enum Cached {
    /// The same for every viewer.
    One(Arc<[u8]>),
    /// `owner` sees `owner_view`; everyone else `others`.
    ByOwner { owner: uuid::Uuid, owner_view: Arc<[u8]>, others: Arc<[u8]> },
}

impl Cached {
    pub fn one(bytes: Vec<u8>) -> Self {
        Cached::One(bytes.into())
    }

    /// The bytes `viewer` sees.
    pub fn for_viewer(&self, viewer: uuid::Uuid) -> &[u8] {
        match self {
            Cached::One(b) => b,
            Cached::ByOwner { owner, owner_view, .. } if *owner == viewer => owner_view,
            Cached::ByOwner { others, .. } => others,
        }
    }

    /// The bytes of a rendering the same for every viewer.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Cached::One(b) => b,
            Cached::ByOwner { others, .. } => others,
        }
    }

    fn size(&self) -> usize {
        match self {
            Cached::One(b) => b.len(),
            Cached::ByOwner { owner_view, others, .. } => owner_view.len() + others.len(),
        }
    }
}

/// What a renderer made of a row the cache did not have.
#[derive(Debug)]
pub enum Made<T = Cached> {
    /// Listed, and cached for this version of the row.
    Keep(T),
    /// Listed, not cached (a damaged record: rendered the slow way, and logged, each time).
    Once(T),
    /// Left out of the list (a damaged record where the list leaves those out).
    Skip,
}

/// Joins listed versions, cache hits and fetched rows (by key) into the answer, in
/// listing order: a hit as it is, else what `render` made of the fetched row. Also answers
/// what to cache: a row `render` said to keep, when the fetched row is still the listed
/// write. A row not fetched (deleted since it was listed) is left out. Shared by the
/// render cache and [`super::vm_cache`].
pub(super) fn join_versions<T: Clone>(
    listed: Vec<RowVersion>,
    hits: Vec<Option<T>>,
    mut fetched: HashMap<String, RawObject>,
    mut render: impl FnMut(RawObject) -> Made<T>,
) -> (Vec<T>, Vec<(String, Version, T)>) {
    let mut out = Vec::with_capacity(listed.len());
    let mut made = Vec::new();
    for (v, hit) in listed.into_iter().zip(hits) {
        if let Some(c) = hit {
            out.push(c);
            continue;
        }
        let Some(row) = fetched.remove(&v.key) else { continue };
        let same = row.generation == v.generation && row.mtime == v.mtime;
        match render(row) {
            Made::Keep(c) => {
                if same {
                    made.push((v.key.clone(), Version::of(&v), c.clone()));
                }
                out.push(c);
            }
            Made::Once(c) => out.push(c),
            Made::Skip => {}
        }
    }
    (out, made)
}

/// Which write of a record a row is (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Version {
    generation: i64,
    mtime: i64,
    size: i64,
}

impl Version {
    pub(super) fn of(v: &RowVersion) -> Self {
        Version { generation: v.generation, mtime: v.mtime, size: v.size }
    }
}

struct Entry {
    version: Version,
    value: Cached,
}

/// Bytes an entry costs besides its renderings (key, map slot, `Arc` headers).
const ENTRY_OVERHEAD: usize = 128;

#[derive(Default)]
struct Generations {
    young: HashMap<Variant, HashMap<String, Entry>>,
    old: HashMap<Variant, HashMap<String, Entry>>,
    young_bytes: usize,
}

/// Rendered JSON bytes per (variant, key, version), bounded in bytes (see the module doc).
pub struct RenderCache {
    budget: usize,
    inner: Mutex<Generations>,
}

impl Default for RenderCache {
    /// 64 MiB: 20,000 VMs rendered by both VMAPI and CloudAPI (about 1.5 KB each).
    fn default() -> Self {
        Self::new(64 << 20)
    }
}

impl RenderCache {
    /// A cache holding at most about `budget` bytes of renderings.
    pub fn new(budget: usize) -> Self {
        RenderCache { budget, inner: Mutex::new(Generations::default()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Generations> {
        // A panic while holding the lock leaves maps that are still consistent (every
        // entry is a whole rendering of its version), so a poisoned lock is used as is.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The cached renderings of the listed rows (`None`: not cached at that version).
    pub fn lookup(&self, variant: Variant, listed: &[RowVersion]) -> Vec<Option<Cached>> {
        let mut g = self.lock();
        let g = &mut *g;
        let mut out = Vec::with_capacity(listed.len());
        for row in listed {
            let version = Version::of(row);
            let young = g.young.get(&variant).and_then(|m| m.get(row.key.as_str()));
            if let Some(e) = young {
                out.push((e.version == version).then(|| e.value.clone()));
                continue;
            }
            // An old entry still current moves to the young generation.
            match g.old.get_mut(&variant).and_then(|m| m.remove(row.key.as_str())) {
                Some(e) if e.version == version => {
                    out.push(Some(e.value.clone()));
                    Self::put(g, self.budget, variant, row.key.clone(), e);
                }
                _ => out.push(None),
            }
        }
        out
    }

    fn insert(&self, variant: Variant, made: Vec<(String, Version, Cached)>) {
        if made.is_empty() {
            return;
        }
        let mut g = self.lock();
        for (key, version, value) in made {
            if let Some(m) = g.old.get_mut(&variant) {
                m.remove(key.as_str());
            }
            Self::put(&mut g, self.budget, variant, key, Entry { version, value });
        }
    }

    fn put(g: &mut Generations, budget: usize, variant: Variant, key: String, e: Entry) {
        let cost = e.value.size() + key.len() + ENTRY_OVERHEAD;
        if cost > budget / 2 {
            return;
        }
        if g.young_bytes + cost > budget / 2 {
            g.old = std::mem::take(&mut g.young);
            g.young_bytes = 0;
        }
        g.young_bytes += cost;
        if let Some(prev) = g.young.entry(variant).or_default().insert(key.clone(), e) {
            g.young_bytes = g.young_bytes.saturating_sub(prev.value.size() + key.len() + ENTRY_OVERHEAD);
        }
    }

    /// Entries held (both generations), for tests.
    pub fn len(&self) -> usize {
        let g = self.lock();
        g.young.values().chain(g.old.values()).map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Each listed row's rendering, in order: `hits` (what [`RenderCache::lookup`]
    /// answered), else made by `render` from the row in `fetched` (and cached when it says
    /// so and the fetched row is still the listed write). A row not fetched (deleted since
    /// it was listed) is left out.
    pub fn complete(
        &self,
        variant: Variant,
        listed: Vec<RowVersion>,
        hits: Vec<Option<Cached>>,
        fetched: HashMap<String, RawObject>,
        render: impl FnMut(RawObject) -> Made,
    ) -> Vec<Cached> {
        let (out, made) = join_versions(listed, hits, fetched, render);
        self.insert(variant, made);
        out
    }

    /// [`RenderCache::complete`] of rows at hand (their text's length as their size): the
    /// unit tests' way in, without a store.
    #[cfg(test)]
    pub fn render_rows(&self, variant: Variant, rows: Vec<RawObject>, render: impl FnMut(RawObject) -> Made) -> Vec<Cached> {
        let listed: Vec<RowVersion> = rows
            .iter()
            .map(|r| RowVersion { key: r.key.clone(), generation: r.generation, mtime: r.mtime, size: r.json.len() as i64 })
            .collect();
        let hits = self.lookup(variant, &listed);
        let fetched = rows.into_iter().map(|r| (r.key.clone(), r)).collect();
        self.complete(variant, listed, hits, fetched, render)
    }
}

/// A JSON array of already-serialized JSON values (what `serde_json::to_vec` of a `Vec`
/// of them writes).
pub fn json_array<'a>(items: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let items = items.into_iter();
    let mut out = Vec::with_capacity(2 + items.size_hint().0 * 1024);
    out.push(b'[');
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(item);
    }
    out.push(b']');
    out
}

/// A row decoded as [`App::list`] does, or `None` (logged) for a damaged record, which
/// such lists leave out.
pub fn decode_or_log<T: DeserializeOwned>(bucket: &str, row: RawObject) -> Option<T> {
    match decode_row::<T>(bucket, row) {
        Stored::Ok(t) => Some(t),
        Stored::Damaged(d) => {
            tracing::error!(bucket, key = %d.key, error = %d.error, "left a damaged record out of a list");
            None
        }
    }
}

/// `value` serialized (a rendering that does not serialize renders as `null`, as
/// [`vm::render`] does).
pub fn to_bytes<T: serde::Serialize + ?Sized>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_else(|_| b"null".to_vec())
}

/// One row decoded: straight from its text, or (when that fails) through a `Value` as
/// [`damaged::decode`] does, for the same damaged record and error text.
pub fn decode_row<T: DeserializeOwned>(bucket: &str, row: RawObject) -> Stored<T> {
    match serde_json::from_str::<T>(&row.json) {
        Ok(t) => Stored::Ok(t),
        Err(_) => damaged::decode(bucket, &row.key, slow_value(&row)),
    }
}

/// A VM row decoded as [`vm::decode`] does (a record whose uuid is not its key is damaged).
pub fn decode_vm_row(row: RawObject) -> Stored<Vm> {
    match serde_json::from_str::<Vm>(&row.json) {
        Ok(v) if v.uuid.to_string() == row.key => Stored::Ok(v),
        _ => vm::decode(&row.key, slow_value(&row)),
    }
}

/// The row's value as a tree (the store only holds JSON, so this parses; a row that
/// somehow does not is kept as its text).
fn slow_value(row: &RawObject) -> serde_json::Value {
    serde_json::from_str(&row.json).unwrap_or_else(|_| serde_json::Value::String(row.json.clone()))
}

impl App {
    /// [`App::list`], decoding each row straight from its text.
    pub async fn list_fast<T: DeserializeOwned>(&self, bucket: &str, q: &ListQuery) -> Result<Vec<T>, ApiError> {
        let rows = self.store.list_raw(bucket, q).await.map_err(store_error)?;
        Ok(rows.into_iter().filter_map(|r| decode_or_log::<T>(bucket, r)).collect())
    }

    /// The rows `q` selects in `bucket` by their keys (UUIDs), each decoded straight from
    /// its text as `T` (which may be a few fields of the record); rows whose key is not a
    /// UUID or whose text does not decode are left out.
    pub async fn list_keyed<T: DeserializeOwned>(&self, bucket: &str, q: &ListQuery) -> Result<HashMap<Uuid, T>, ApiError> {
        let rows = self.store.list_raw(bucket, q).await.map_err(store_error)?;
        Ok(rows.into_iter().filter_map(|r| Some((Uuid::parse_str(&r.key).ok()?, serde_json::from_str(&r.json).ok()?))).collect())
    }

    /// The rows `q` selects in `variant`'s bucket, each rendered by `render` once per
    /// version of the row and then answered from [`App::renders`].
    pub async fn list_rendered(
        &self,
        variant: Variant,
        q: &ListQuery,
        render: impl FnMut(RawObject) -> Made,
    ) -> Result<Vec<Cached>, ApiError> {
        let bucket = variant.bucket();
        let listed = self.store.list_versions(bucket, q).await.map_err(store_error)?;
        let hits = self.renders.lookup(variant, &listed);
        let missing: Vec<String> = listed.iter().zip(&hits).filter(|(_, h)| h.is_none()).map(|(v, _)| v.key.clone()).collect();
        let fetched = if missing.is_empty() {
            HashMap::new()
        } else {
            self.store.get_raw_many(bucket, &missing).await.map_err(store_error)?.into_iter().map(|r| (r.key.clone(), r)).collect()
        };
        Ok(self.renders.complete(variant, listed, hits, fetched, render))
    }

    /// VMAPI ListVms (as [`App::list_vms`]: a page and the total count), as the body's
    /// JSON bytes: each VM rendered as `vm::Rendered` (cached), a damaged one as
    /// `vm::RenderedEntry` renders it.
    pub async fn list_vms_rendered(&self, q: &Query) -> Result<(Vec<u8>, i64), ApiError> {
        let filter = super::vms::list_filter(q).map_err(ApiError::validation_409)?;
        let (limit, offset) = (q.limit(1000), q.offset());
        let lq = ListQuery::filter(filter.clone()).sort(Path::field("create_timestamp"), Kind::Text, false).page(limit, offset);
        let page = self.list_rendered(Variant::Vm, &lq, render_vm_row).await?;
        let total = match page_total(page.len(), limit, offset) {
            Some(t) => t,
            None => self.store.count(VMS.name, &filter).await.map_err(store_error)?,
        };
        Ok((json_array(page.iter().map(Cached::bytes)), total))
    }
}

/// A VM row as VMAPI lists it: rendered and cached, or (damaged) its repair entry, not
/// cached.
pub fn render_vm_row(row: RawObject) -> Made {
    match decode_vm_row(row) {
        Stored::Ok(vm) => Made::Keep(Cached::one(to_bytes(&vm::Rendered(&vm)))),
        d @ Stored::Damaged(_) => Made::Once(Cached::one(to_bytes(&vm::RenderedEntry(&d)))),
    }
}

/// The total a page tells by itself: a page shorter than its limit (and not empty past
/// the end) is the last one, so the total is its offset plus its length. `None`: count.
pub fn page_total(len: usize, limit: i64, offset: i64) -> Option<i64> {
    let len = i64::try_from(len).ok()?;
    (len < limit && (len > 0 || offset == 0)).then_some(offset + len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(key: &str, v: serde_json::Value) -> RawObject {
        RawObject { key: key.into(), json: v.to_string(), generation: 1, mtime: 0 }
    }

    #[test]
    fn rows_decode_as_the_value_path_does() {
        let u = uuid::Uuid::new_v4().to_string();
        let good = json!({"uuid": u, "alias": "a", "ram": 1024, "nics": [], "extra": {"x": 1}});
        assert_eq!(decode_vm_row(row(&u, good.clone())), vm::decode(&u, good.clone()));
        let other = uuid::Uuid::new_v4().to_string();
        assert_eq!(decode_vm_row(row(&other, good.clone())), vm::decode(&other, good));
        let bad = json!({"uuid": u, "ram": "lots"});
        let d = decode_vm_row(row(&u, bad.clone()));
        assert!(matches!(d, Stored::Damaged(_)));
        assert_eq!(d, vm::decode(&u, bad));
    }

    #[test]
    fn short_pages_tell_their_total() {
        assert_eq!(page_total(3, 1000, 0), Some(3));
        assert_eq!(page_total(0, 1000, 0), Some(0));
        assert_eq!(page_total(5, 10, 20), Some(25));
        assert_eq!(page_total(0, 10, 20), None, "past the end: count");
        assert_eq!(page_total(10, 10, 0), None, "a full page: count");
    }

    fn raw(key: &str, json: &str, generation: i64) -> RawObject {
        RawObject { key: key.into(), json: json.into(), generation, mtime: 7 }
    }

    /// Renders a row as its own text, counting the renders.
    fn echo(count: &std::cell::Cell<usize>) -> impl FnMut(RawObject) -> Made + '_ {
        move |r| {
            count.set(count.get() + 1);
            Made::Keep(Cached::one(r.json.into_bytes()))
        }
    }

    #[test]
    fn a_row_renders_once_per_version() {
        let cache = RenderCache::default();
        let n = std::cell::Cell::new(0);
        let rows = || vec![raw("a", r#"{"x":1}"#, 1), raw("b", r#"{"x":2}"#, 1)];
        let first = cache.render_rows(Variant::Vm, rows(), echo(&n));
        let again = cache.render_rows(Variant::Vm, rows(), echo(&n));
        assert_eq!((first, n.get()), (again, 2), "the second list renders nothing");
        // Another variant of the same rows is another rendering.
        cache.render_rows(Variant::Machine { credentials: false }, rows(), echo(&n));
        assert_eq!(n.get(), 4);
        // A new generation renders again, and replaces the old rendering.
        let changed = cache.render_rows(Variant::Vm, vec![raw("a", r#"{"x":3}"#, 2)], echo(&n));
        assert_eq!((changed[0].bytes(), n.get()), (&br#"{"x":3}"#[..], 5));
        assert_eq!(cache.len(), 4);
        // Deleted and written again: the generation restarts at 1, the size or the write
        // time tells.
        let reborn = cache.render_rows(Variant::Vm, vec![raw("b", r#"{"x":19}"#, 1)], echo(&n));
        assert_eq!(reborn[0].bytes(), br#"{"x":19}"#);
        let later = RawObject { mtime: 8, ..raw("b", r#"{"x":18}"#, 1) };
        let same_len = cache.render_rows(Variant::Vm, vec![later], echo(&n));
        assert_eq!(same_len[0].bytes(), br#"{"x":18}"#);
    }

    #[test]
    fn a_row_changed_or_gone_after_it_was_listed_is_not_cached_as_listed() {
        let cache = RenderCache::default();
        let n = std::cell::Cell::new(0);
        let listed = vec![
            RowVersion { key: "a".into(), generation: 1, mtime: 7, size: 7 },
            RowVersion { key: "gone".into(), generation: 1, mtime: 7, size: 7 },
        ];
        // "a" was written again between the list and the fetch: its newer text is answered
        // but not cached under the listed version; "gone" was deleted: left out.
        let fetched = HashMap::from([("a".to_string(), raw("a", r#"{"x":2}"#, 2))]);
        let hits = cache.lookup(Variant::Vm, &listed);
        let out = cache.complete(Variant::Vm, listed.clone(), hits, fetched, echo(&n));
        assert_eq!(json_array(out.iter().map(Cached::bytes)), br#"[{"x":2}]"#);
        assert!(cache.lookup(Variant::Vm, &listed).iter().all(Option::is_none));
    }

    #[test]
    fn damaged_rows_are_never_cached() {
        let cache = RenderCache::default();
        let made = |r: RawObject| match r.key.as_str() {
            "skip" => Made::Skip,
            "once" => Made::Once(Cached::one(b"{\"damaged\":1}".to_vec())),
            _ => Made::Keep(Cached::one(r.json.into_bytes())),
        };
        let rows = vec![raw("a", "{}", 1), raw("skip", "[]", 1), raw("once", "[", 1)];
        let out = cache.render_rows(Variant::Vm, rows, made);
        assert_eq!(json_array(out.iter().map(Cached::bytes)), br#"[{},{"damaged":1}]"#);
        assert_eq!(cache.len(), 1);
        assert_eq!(json_array(std::iter::empty()), b"[]");
    }

    #[test]
    fn memory_stays_within_the_budget() {
        let cache = RenderCache::new(64 * 1024);
        let n = std::cell::Cell::new(0);
        let text = "x".repeat(1000);
        for i in 0..1000 {
            cache.render_rows(Variant::Vm, vec![raw(&format!("k{i}"), &text, 1)], echo(&n));
        }
        let held = cache.len();
        assert!(held > 0 && held * (1000 + ENTRY_OVERHEAD) <= 64 * 1024, "{held} entries");
        // The most recent rows are still there.
        cache.render_rows(Variant::Vm, vec![raw("k999", &text, 1)], echo(&n));
        assert_eq!(n.get(), 1000);
        // A row listed again moves to the young generation and outlives older ones.
        let hot = raw("k999", &text, 1);
        for i in 1000..1100 {
            cache.render_rows(Variant::Vm, vec![raw(&format!("k{i}"), &text, 1), hot.clone()], echo(&n));
        }
        assert_eq!(n.get(), 1100, "k999 stayed cached");
    }

    #[test]
    fn owners_see_their_view() {
        let (owner, other) = (uuid::Uuid::from_u128(1), uuid::Uuid::from_u128(2));
        let c = Cached::ByOwner { owner, owner_view: b"o".to_vec().into(), others: b"x".to_vec().into() };
        assert_eq!((c.for_viewer(owner), c.for_viewer(other)), (&b"o"[..], &b"x"[..]));
    }

    async fn app(dir: &std::path::Path) -> App {
        let store = nereid_store::open(&format!("sqlite:{}", dir.join("db").display())).await.unwrap();
        App::new(store, dir.to_path_buf(), super::super::AppConfig::default()).await.unwrap()
    }

    fn list_of(body: &[u8]) -> Vec<serde_json::Value> {
        serde_json::from_slice(body).unwrap()
    }

    /// CloudAPI's ListMachines page of every VM.
    async fn machines(app: &App) -> Vec<serde_json::Value> {
        let lq = ListQuery::all().sort(Path::field("create_timestamp"), Kind::Text, false);
        let variant = Variant::Machine { credentials: false };
        let page = app.list_rendered(variant, &lq, |row| crate::cloudapi::render::machine_row(row, false)).await.unwrap();
        list_of(&json_array(page.iter().map(Cached::bytes)))
    }

    /// Through a real store: a tags update and a state change replace the cached
    /// renderings; a damaged record lists as it did, uncached.
    #[tokio::test]
    async fn listed_vms_follow_their_records() {
        let dir = tempfile::tempdir().unwrap();
        let app = app(dir.path()).await;
        let u = uuid::Uuid::new_v4();
        let mut rec = json!({"uuid": u, "alias": "web", "brand": "bhyve", "state": "running", "ram": 1024,
            "create_timestamp": "2026-01-01T00:00:00.000Z", "tags": {"role": "web"}, "nics": []});
        app.store.put(VMS.name, &u.to_string(), rec.clone(), nereid_store::Cond::Any).await.unwrap();
        let bad = uuid::Uuid::new_v4();
        let bad_rec = json!({"uuid": bad, "ram": "lots", "create_timestamp": "2026-01-02T00:00:00.000Z"});
        app.store.put(VMS.name, &bad.to_string(), bad_rec.clone(), nereid_store::Cond::Any).await.unwrap();
        let q = Query::default();
        let vmapi = |body: &[u8]| list_of(body);
        let (body, total) = app.list_vms_rendered(&q).await.unwrap();
        let listed = vmapi(&body);
        assert_eq!(total, 2);
        assert_eq!(listed[0], vm::render(&serde_json::from_value(rec.clone()).unwrap()));
        assert_eq!(listed[1], vm::render_entry(&vm::decode(&bad.to_string(), bad_rec.clone())), "damaged, as before");
        assert_eq!(machines(&app).await.len(), 1, "CloudAPI leaves the damaged record out");
        assert_eq!(app.renders.len(), 2, "the good VM, once per variant; the damaged one never");
        let (again, _) = app.list_vms_rendered(&q).await.unwrap();
        assert_eq!(again, body, "answered from the cache");

        // A tags update and a state change, each seen by both lists.
        rec["tags"] = json!({"role": "db"});
        app.store.put(VMS.name, &u.to_string(), rec.clone(), nereid_store::Cond::Any).await.unwrap();
        assert_eq!(vmapi(&app.list_vms_rendered(&q).await.unwrap().0)[0]["tags"], json!({"role": "db"}));
        assert_eq!(machines(&app).await[0]["tags"], json!({"role": "db"}));
        rec["state"] = json!("stopped");
        app.store.put(VMS.name, &u.to_string(), rec.clone(), nereid_store::Cond::Any).await.unwrap();
        assert_eq!(vmapi(&app.list_vms_rendered(&q).await.unwrap().0)[0]["state"], "stopped");
        assert_eq!(machines(&app).await[0]["state"], "stopped");

        // Repaired, the damaged record lists rendered.
        let fixed = json!({"uuid": bad, "ram": 512, "create_timestamp": "2026-01-02T00:00:00.000Z"});
        app.store.put(VMS.name, &bad.to_string(), fixed.clone(), nereid_store::Cond::Any).await.unwrap();
        let listed = vmapi(&app.list_vms_rendered(&q).await.unwrap().0);
        assert_eq!(listed[1], vm::render(&serde_json::from_value(fixed).unwrap()));
        assert_eq!(machines(&app).await.len(), 2);
    }
}
