//! CloudAPI's images: what `triton image list|get|update|share|unshare|tag|clone|delete|wait`
//! send (`triton image create` is CreateImageFromMachine, in `image_create.rs`).
//!
//! ```text
//!   GET    /:a/images                  ListImages   the images the account may see, filtered
//!   GET    /:a/images/:id              GetImage     404 unless the account may see it
//!   POST   /:a/images/:id?action=update UpdateImage owner only; share/unshare/tag = new acl/tags
//!                        ?action=clone  CloneImage  a private copy of an image shared with you
//!   DELETE /:a/images/:id              DeleteImage  owner only
//! ```
//!
//! Who may do what is IMGAPI's (`sdc-imgapi`): an image the account may not see is a 404
//! `ResourceNotFound` whatever the operation; a visible image it does not own answers
//! 422 `NotImageOwner` to update and delete; clone needs the account on the image's ACL
//! (else 422 `ImageNotShared`), and copies no origin the account may not see. An image's
//! `acl` is rendered to its owner only: an account it is shared with does not learn who
//! else it is shared with. The logic lives in `app::images` and the pure checks in
//! `nereid_types::image`; these handlers parse, call and render.

use axum::extract::{Path, RawQuery, State};
use axum::http::{Method, StatusCode, header};
use axum::response::IntoResponse;
use nereid_store::{Filter, Kind, ListQuery};
use nereid_types::ApiError;
use nereid_types::image::{self, Image};
use nereid_types::query::{Param, QKind};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::{BodyParams, CloudError, CloudResult, Scoped, invalid, missing, ok, render};
use crate::app::lists::{Variant, json_array};
use crate::http::{AppState, Auth, BodyDoc, Doc, RespDoc, Route};

fn image_schema() -> Value {
    json!({"type": "object", "properties": {
        "id": {"type": "string", "format": "uuid"}, "name": {"type": "string"}, "version": {"type": "string"},
        "os": {"type": "string"}, "type": {"type": "string"}, "state": {"type": "string"}, "public": {"type": "boolean"},
        "owner": {"type": "string", "format": "uuid"}, "published_at": {"type": "string"}, "requirements": {"type": "object"},
        "acl": {"type": "array", "items": {"type": "string", "format": "uuid"}},
        "tags": {"type": "object"}, "files": {"type": "array", "items": {"type": "object"}}}})
}

fn list_schema() -> Value {
    json!({"type": "array", "items": image_schema()})
}

fn update_schema() -> Value {
    json!({"type": "object", "additionalProperties": false, "properties": {
        "name": {"type": "string", "maxLength": 512}, "version": {"type": "string", "maxLength": 128},
        "description": {"type": "string"}, "homepage": {"type": "string", "format": "uri"}, "eula": {"type": "string", "format": "uri"},
        "acl": {"type": "array", "items": {"type": "string", "format": "uuid"}, "description": "Accounts (UUIDs) the image is shared with."},
        "tags": {"type": "object"}}})
}

const LIST_QUERY: &[Param] = &[
    Param::new("state", QKind::Str { max: 32 }, "active (default), all, or one state (unactivated, disabled, creating, failed)."),
    Param::new("name", QKind::Str { max: 512 }, "Name (`*` wildcards; `~text` matches a substring)."),
    Param::new("version", QKind::Str { max: 128 }, "Version (`*` wildcards; `~text` matches a substring)."),
    Param::new("os", QKind::Str { max: 64 }, "OS."),
    Param::new("type", QKind::Str { max: 64 }, "Type (`!type` excludes one); docker images are left out unless asked for."),
    Param::new("public", QKind::Str { max: 8 }, "true or false."),
    Param::new("owner", QKind::Str { max: 64 }, "Owner account UUID."),
];

const ACTION_QUERY: &[Param] =
    &[Param::new("action", QKind::Str { max: 32 }, "update (UpdateImage: share, unshare and tag too) or clone (CloneImage).")];

fn doc(id: &'static str, summary: &'static str, query: &'static [Param], body: BodyDoc, response: RespDoc) -> Doc {
    Doc { id, tag: "CloudAPI", summary, query, body, response }
}

pub fn routes() -> Vec<Route> {
    vec![
        Route::new(
            Method::GET,
            "/{account}/images",
            doc(
                "ListImages",
                "Images the account may use (state=active unless state=all).",
                LIST_QUERY,
                BodyDoc::None,
                RespDoc::Schema(200, list_schema),
            ),
            list_images,
        )
        .auth(Auth::Signature),
        Route::new(
            Method::GET,
            "/{account}/images/{id}",
            doc("GetImage", "An image.", &[], BodyDoc::None, RespDoc::Schema(200, image_schema)),
            get_image,
        )
        .auth(Auth::Signature),
        Route::new(
            Method::POST,
            "/{account}/images/{id}",
            doc(
                "UpdateImage",
                "`?action=update`: change name, version, description, homepage, eula, acl or tags of an image the account \
                 owns. `?action=clone`: a private copy of an image shared with the account.",
                ACTION_QUERY,
                BodyDoc::Schema(update_schema),
                RespDoc::Schema(200, image_schema),
            ),
            image_action,
        )
        .auth(Auth::Signature),
        Route::new(
            Method::DELETE,
            "/{account}/images/{id}",
            doc("DeleteImage", "Delete an image the account owns.", &[], BodyDoc::None, RespDoc::Empty(204)),
            delete_image,
        )
        .auth(Auth::Signature),
    ]
}

/// ListImages' query, checked: a bad value is a 4xx naming its parameter.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ListFilter {
    /// `None` lists every state.
    pub state: Option<String>,
    pub name: Option<String>,
    pub version: Option<String>,
    pub os: Option<String>,
    /// `(type, excluded)`.
    pub kind: Option<(String, bool)>,
    pub public: Option<bool>,
    pub owner: Option<Uuid>,
}

/// Parses ListImages' query (unknown parameters are ignored, as CloudAPI does).
pub fn list_filter(q: &Map<String, Value>) -> Result<ListFilter, CloudError> {
    let get = |k: &str| q.get(k).and_then(Value::as_str).map(str::to_string);
    let mut f = ListFilter { name: get("name"), version: get("version"), ..ListFilter::default() };
    f.state = match get("state").as_deref() {
        None => Some("active".into()),
        Some("all") => None,
        Some(s) if image::STATES.contains(&s) => Some(s.to_string()),
        Some(s) => return Err(invalid("state", format!("{s:?} is not all or one of {}", image::STATES.join(", ")))),
    };
    if let Some(os) = get("os") {
        if !image::OSES.contains(&os.as_str()) {
            return Err(invalid("os", format!("{os:?} is not one of {}", image::OSES.join(", "))));
        }
        f.os = Some(os);
    }
    if let Some(t) = get("type") {
        let (name, excluded) = match t.strip_prefix('!') {
            Some(n) => (n.to_string(), true),
            None => (t.clone(), false),
        };
        if !image::TYPES.contains(&name.as_str()) {
            return Err(invalid("type", format!("{t:?} is not one of {} (or one of them after `!`)", image::TYPES.join(", "))));
        }
        f.kind = Some((name, excluded));
    } else {
        // sdc-cloudapi leaves docker images out unless asked for them.
        f.kind = Some(("docker".into(), true));
    }
    f.public = match get("public").as_deref() {
        None => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(p) => return Err(invalid("public", format!("must be true or false, not {p:?}"))),
    };
    if let Some(o) = get("owner") {
        f.owner = Some(Uuid::parse_str(&o).map_err(|_| invalid("owner", format!("{o:?} is not an account UUID")))?);
    }
    Ok(f)
}

/// A name or version filter: `~text` is a (case-sensitive) substring, else `*` wildcards.
fn text_matches(want: &str, have: &str) -> bool {
    match want.strip_prefix('~') {
        Some(sub) => have.contains(sub),
        None => render::glob(want, have),
    }
}

/// A name or version filter for the store, as [`text_matches`] matches.
fn text_filter(field: &str, want: &str) -> Filter {
    match want.strip_prefix('~') {
        Some(sub) => Filter::contains(field, sub),
        None if want.contains('*') => Filter::Glob(nereid_store::Path::field(field), want.split('*').map(str::to_string).collect()),
        None => Filter::eq(field, want),
    }
}

impl ListFilter {
    /// The store filter selecting what `viewer` may see ([`crate::app::images::visible_to`])
    /// and [`keeps`](Self::keeps).
    pub fn store_filter(&self, viewer: Uuid) -> Filter {
        let activated = Filter::Or(vec![Filter::eq("state", "active"), Filter::eq("state", "disabled")]);
        let shared = Filter::Or(vec![Filter::eq("public", true), Filter::has("acl", viewer.to_string())]);
        let mut parts = vec![Filter::Or(vec![Filter::eq("owner", viewer.to_string()), Filter::And(vec![activated, shared])])];
        if let Some(s) = &self.state {
            parts.push(Filter::eq("state", s.as_str()));
        }
        if let Some(n) = &self.name {
            parts.push(text_filter("name", n));
        }
        if let Some(v) = &self.version {
            parts.push(text_filter("version", v));
        }
        if let Some(o) = &self.os {
            parts.push(Filter::eq("os", o.as_str()));
        }
        match &self.kind {
            Some((t, true)) => parts.push(Filter::Ne(nereid_store::Path::field("type"), json!(t))),
            Some((t, false)) => parts.push(Filter::eq("type", t.as_str())),
            None => {}
        }
        if let Some(p) = self.public {
            parts.push(Filter::eq("public", p));
        }
        if let Some(o) = self.owner {
            parts.push(Filter::eq("owner", o.to_string()));
        }
        Filter::and(parts)
    }

    /// Whether an image the account may see is listed.
    pub fn keeps(&self, img: &Image) -> bool {
        self.state.as_ref().is_none_or(|s| *s == img.state)
            && self.name.as_ref().is_none_or(|n| text_matches(n, &img.name))
            && self.version.as_ref().is_none_or(|v| text_matches(v, &img.version))
            && self.os.as_ref().is_none_or(|o| *o == img.os)
            && self.kind.as_ref().is_none_or(|(t, excluded)| (*t == img.kind) != *excluded)
            && self.public.is_none_or(|p| p == img.public)
            && self.owner.is_none_or(|o| o == img.owner)
    }
}

fn not_found(id: &str) -> CloudError {
    CloudError(ApiError::new(404, "ResourceNotFound", format!("image {id} does not exist")))
}

/// The image id in the path; anything but a UUID names no image.
fn image_id(id: &str) -> Result<Uuid, CloudError> {
    Uuid::parse_str(id).map_err(|_| not_found(id))
}

/// An IMGAPI error as CloudAPI passes it on: a 404 keeps the path's id, the rest get
/// CloudAPI's codes.
fn passed_on(id: &str, e: ApiError) -> CloudError {
    if e.status == 404 { not_found(id) } else { e.into() }
}

async fn list_images(State(s): State<AppState>, Scoped(acct): Scoped, RawQuery(raw): RawQuery) -> CloudResult {
    let filter = list_filter(&super::query_map(raw.as_deref()))?;
    // Oldest first, unpublished ones before the rest, ties by UUID (the store's key).
    let q = ListQuery::filter(filter.store_filter(acct.uuid)).sort(nereid_store::Path::field("published_at"), Kind::Text, false);
    let page = s.app.list_rendered(Variant::CloudImage, &q, render::image_row).await?;
    let body = json_array(page.iter().map(|c| c.for_viewer(acct.uuid)));
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body).into_response())
}

async fn get_image(State(s): State<AppState>, Scoped(acct): Scoped, Path((_, id)): Path<(String, String)>) -> CloudResult {
    let uuid = image_id(&id)?;
    let (img, _) = s.app.get_image(uuid, Some(acct.uuid)).await.map_err(|e| passed_on(&id, e))?;
    ok(&render::image_for(&img, acct.uuid))
}

/// UpdateImage's actions. `action` may come in the query (the CLI's way) or the body.
async fn image_action(
    State(s): State<AppState>,
    Scoped(acct): Scoped,
    Path((_, id)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
    BodyParams(mut body): BodyParams,
) -> CloudResult {
    // As in sdc-cloudapi, the image is looked up first: one the account may not see is a
    // 404 whatever the action.
    let uuid = image_id(&id)?;
    s.app.get_image(uuid, Some(acct.uuid)).await.map_err(|e| passed_on(&id, e))?;
    let query = super::query_map(raw.as_deref());
    let action = match (query.get("action"), body.remove("action")) {
        (Some(Value::String(a)), _) => a.clone(),
        (None, Some(Value::String(a))) => a,
        (None, None) => return Err(missing("action")),
        (_, Some(other)) => return Err(invalid("action", format!("must be a string, not {other}"))),
        (Some(other), None) => return Err(invalid("action", format!("must be a string, not {other}"))),
    };
    let img = match action.as_str() {
        "update" => s.app.tenant_update_image(uuid, acct.uuid, &body).await,
        "clone" => s.app.clone_image(uuid, acct.uuid).await,
        "export" => {
            return Err(CloudError(ApiError::new(
                501,
                "NotImplemented",
                "ExportImage writes to Manta, which this cloud does not have; download the image with the operator's \
                 IMGAPI instead",
            )));
        }
        other => return Err(invalid("action", format!("{other} is not a valid argument (update or clone)"))),
    }
    .map_err(|e| passed_on(&id, e))?;
    ok(&render::image_for(&img, acct.uuid))
}

async fn delete_image(State(s): State<AppState>, Scoped(acct): Scoped, Path((_, id)): Path<(String, String)>) -> CloudResult {
    let uuid = image_id(&id)?;
    s.app.tenant_delete_image(uuid, acct.uuid).await.map_err(|e| passed_on(&id, e))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Map<String, Value> {
        pairs.iter().map(|(k, v)| (k.to_string(), json!(v))).collect()
    }

    fn img(name: &str, kind: &str, state: &str, public: bool) -> Image {
        serde_json::from_value(json!({"v": 2, "uuid": Uuid::new_v4(), "owner": Uuid::from_u128(1), "name": name, "version": "1.2.3",
            "state": state, "disabled": false, "public": public, "type": kind, "os": "linux", "files": []}))
        .unwrap()
    }

    #[test]
    fn lists_active_non_docker_images_by_default() {
        let f = list_filter(&q(&[])).unwrap();
        assert!(f.keeps(&img("a", "zvol", "active", true)));
        assert!(!f.keeps(&img("a", "zvol", "disabled", true)));
        assert!(!f.keeps(&img("a", "docker", "active", true)), "docker images are left out unless asked for");
        let all = list_filter(&q(&[("state", "all")])).unwrap();
        assert!(all.keeps(&img("a", "zvol", "unactivated", false)));
        assert!(list_filter(&q(&[("type", "docker")])).unwrap().keeps(&img("a", "docker", "active", true)));
    }

    #[test]
    fn name_substring_wildcards_and_exclusion() {
        let f = list_filter(&q(&[("name", "~bunt"), ("type", "!zone-dataset"), ("public", "false")])).unwrap();
        assert!(f.keeps(&img("ubuntu-24", "zvol", "active", false)));
        assert!(!f.keeps(&img("ubuntu-24", "zvol", "active", true)), "public=false");
        assert!(!f.keeps(&img("UBUNTU", "zvol", "active", false)), "substrings are case-sensitive");
        assert!(!f.keeps(&img("ubuntu-24", "zone-dataset", "active", false)));
        let f = list_filter(&q(&[("name", "deb*"), ("version", "~2.3")])).unwrap();
        assert!(f.keeps(&img("debian-12", "zvol", "active", true)));
        assert!(!f.keeps(&img("xdebian", "zvol", "active", true)));
        let o = Uuid::from_u128(1);
        assert!(list_filter(&q(&[("owner", &o.to_string())])).unwrap().keeps(&img("x", "zvol", "active", true)));
        assert!(!list_filter(&q(&[("owner", &Uuid::from_u128(2).to_string())])).unwrap().keeps(&img("x", "zvol", "active", true)));
    }

    #[test]
    fn rendered_requirements_carry_cloudapi_memory_names() {
        let mut i = img("a", "zvol", "active", true);
        i.rest.insert("requirements".into(), json!({"min_ram": 512, "max_ram": 4096, "brand": "bhyve"}));
        let r = render::image(&i);
        assert_eq!(r["requirements"], json!({"min_ram": 512, "min_memory": 512, "max_ram": 4096, "max_memory": 4096, "brand": "bhyve"}));
        assert_eq!(r["id"], json!(i.uuid));
    }

    #[test]
    fn only_the_owner_sees_the_acl() {
        let (owner, bob, carol) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
        let mut i = img("a", "zvol", "active", false);
        i.rest.insert("acl".into(), json!([bob, carol]));
        assert_eq!(render::image_for(&i, owner)["acl"], json!([bob, carol]));
        for viewer in [bob, carol] {
            let r = render::image_for(&i, viewer);
            assert!(r.get("acl").is_none(), "{viewer} must not learn who else the image is shared with: {r}");
            assert_eq!(r["id"], json!(i.uuid));
        }
    }

    #[test]
    fn bad_filters_name_their_parameter() {
        for (k, v) in [("state", "gone"), ("public", "yes"), ("owner", "bob"), ("type", "vm"), ("os", "plan9")] {
            let e = list_filter(&q(&[(k, v)])).unwrap_err().0;
            assert_eq!((e.status, e.code.as_str()), (409, "InvalidArgument"), "{k}");
            assert_eq!(e.errors[0].field, k);
        }
    }

    /// The store filter ListImages sends selects exactly what the account may see and
    /// [`ListFilter::keeps`] keeps.
    #[test]
    fn the_store_filter_is_visibility_and_keeps() {
        let (me, other) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let mut imgs = Vec::new();
        for (name, kind, state, public) in [
            ("ubuntu-24", "zvol", "active", true),
            ("debian-12", "zvol", "disabled", false),
            ("deb*x", "zone-dataset", "unactivated", false),
            ("alpine", "docker", "active", true),
            ("centos", "zvol", "failed", true),
        ] {
            for owner in [me, other] {
                for acl in [None, Some(json!([me])), Some(json!([Uuid::from_u128(3)]))] {
                    let mut i = img(name, kind, state, public);
                    i.owner = owner;
                    if let Some(a) = &acl {
                        i.rest.insert("acl".into(), a.clone());
                    }
                    imgs.push(i);
                }
            }
        }
        let queries: &[&[(&str, &str)]] = &[
            &[],
            &[("state", "all")],
            &[("state", "disabled"), ("public", "false")],
            &[("name", "deb*"), ("type", "!zvol"), ("state", "all")],
            &[("name", "~bunt"), ("version", "1.2*")],
            &[("name", "deb*x"), ("state", "all")],
            &[("version", "~.2."), ("os", "linux"), ("type", "docker")],
            &[("owner", "00000000-0000-0000-0000-000000000002"), ("state", "all")],
        ];
        for pairs in queries {
            let f = list_filter(&q(pairs)).unwrap();
            let sf = f.store_filter(me);
            for i in &imgs {
                let want = crate::app::images::visible_to(i, me) && f.keeps(i);
                assert_eq!(
                    sf.matches(&crate::app::encode(i)),
                    want,
                    "{pairs:?} {} {} {} {:?}",
                    i.name,
                    i.state,
                    i.owner,
                    i.rest.get("acl")
                );
            }
        }
    }
}
