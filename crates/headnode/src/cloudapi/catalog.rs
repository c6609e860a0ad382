//! CloudAPI's read-only catalog: packages and networks an account may use (images are
//! in `images.rs`).
//!
//! Lists are complete (the CLI resolves names client-side from them) and filtered on the
//! rendered objects, so a filter means exactly what the CLI shows.

use axum::extract::{Path, RawQuery, State};
use axum::http::Method;
use nereid_store::{Filter, ListQuery};
use nereid_types::ApiError;
use nereid_types::network::{Network, NetworkPool};
use nereid_types::package::Package;
use nereid_types::spec::{Field, Kind};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::{CloudError, CloudResult, Scoped, ok, render};
use crate::buckets::{NETWORK_POOLS, NETWORKS, PACKAGES};
use crate::http::{AppState, Auth, BodyDoc, Doc, RespDoc, Route};

const PACKAGE: &[Field] = &[
    Field::new("id", Kind::Uuid, "Package UUID."),
    Field::new("name", Kind::Str { max: 128, check: None }, "Name."),
    Field::new("memory", Kind::Int { min: 0, max: i64::MAX, multiple_of: None, unit: Some("MiB") }, "RAM (MiB)."),
    Field::new("disk", Kind::Int { min: 0, max: i64::MAX, multiple_of: None, unit: Some("MiB") }, "Disk (MiB)."),
    Field::new("swap", Kind::Int { min: 0, max: i64::MAX, multiple_of: None, unit: Some("MiB") }, "Swap (MiB)."),
    Field::new("lwps", Kind::Int { min: 0, max: i64::MAX, multiple_of: None, unit: None }, "Thread limit."),
    Field::new("vcpus", Kind::Int { min: 0, max: i64::MAX, multiple_of: None, unit: None }, "vCPUs (0 = unset)."),
    Field::new("version", Kind::Str { max: 64, check: None }, "Version."),
    Field::new("group", Kind::Str { max: 128, check: None }, "Group."),
    Field::new("description", Kind::Str { max: 1024, check: None }, "Description."),
    Field::new("default", Kind::Bool, "Deprecated default flag."),
    Field::new("brand", Kind::Str { max: 32, check: None }, "Brand the package is for."),
];

const NETWORK: &[Field] = &[
    Field::new("id", Kind::Uuid, "Network UUID."),
    Field::new("name", Kind::Str { max: 128, check: None }, "Name."),
    Field::new("public", Kind::Bool, "Usable by every account."),
    Field::new("fabric", Kind::Bool, "A fabric (overlay) network."),
    Field::new("description", Kind::Str { max: 1024, check: None }, "Description."),
    Field::new("subnet", Kind::Str { max: 64, check: None }, "Subnet (CIDR)."),
    Field::new("gateway", Kind::Str { max: 64, check: None }, "Gateway."),
    Field::new("provision_start_ip", Kind::Str { max: 64, check: None }, "First address handed out."),
    Field::new("provision_end_ip", Kind::Str { max: 64, check: None }, "Last address handed out."),
];

fn doc(id: &'static str, summary: &'static str, query: &'static [nereid_types::query::Param], response: RespDoc) -> Doc {
    Doc { id, tag: "CloudAPI", summary, query, body: BodyDoc::None, response }
}

pub fn routes() -> Vec<Route> {
    vec![
        Route::new(
            Method::GET,
            "/{account}/packages",
            doc("ListPackages", "Active packages the account may use; query fields filter (`*` wildcards).", &[], RespDoc::List(PACKAGE)),
            list_packages,
        )
        .auth(Auth::Signature),
        Route::new(
            Method::GET,
            "/{account}/packages/{id}",
            doc("GetPackage", "A package by UUID or name.", &[], RespDoc::Object(200, PACKAGE)),
            get_package,
        )
        .auth(Auth::Signature),
        Route::new(
            Method::GET,
            "/{account}/networks",
            doc("ListNetworks", "Networks (and pools) the account may use.", &[], RespDoc::List(NETWORK)),
            list_networks,
        )
        .auth(Auth::Signature),
        Route::new(
            Method::GET,
            "/{account}/networks/{id}",
            doc("GetNetwork", "A network.", &[], RespDoc::Object(200, NETWORK)),
            get_network,
        )
        .auth(Auth::Signature),
    ]
}

/// Whether a rendered object matches every `field=value` filter that names one of `fields`
/// (`*` wildcards; numbers and booleans compare as their text). Other parameters are
/// ignored, as CloudAPI ignores unknown query parameters.
pub fn matches(obj: &Value, q: &Map<String, Value>, fields: &[&str]) -> bool {
    q.iter().filter(|(k, _)| fields.contains(&k.as_str())).all(|(k, want)| {
        let want = want.as_str().unwrap_or_default();
        let have = match obj.get(k) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => String::new(),
            Some(other) => other.to_string(),
        };
        render::glob(want, &have)
    })
}

/// Active packages `account` may use.
pub async fn packages_of(s: &AppState, account: Uuid) -> Result<Vec<Package>, CloudError> {
    let all: Vec<Package> = s.app.list(PACKAGES.name, &ListQuery::filter(Filter::eq("active", true))).await?;
    Ok(all.into_iter().filter(|p| p.owner_uuids.as_ref().is_none_or(|o| o.contains(&account))).collect())
}

/// A package by UUID or name (the newest version of that name) that `account` may use.
pub async fn find_package(s: &AppState, account: Uuid, id: &str) -> Result<Package, CloudError> {
    let pkgs = packages_of(s, account).await?;
    let by_id = Uuid::parse_str(id).ok().and_then(|u| pkgs.iter().find(|p| p.uuid == u).cloned());
    by_id
        .or_else(|| pkgs.into_iter().filter(|p| p.name == id).max_by(|a, b| a.created_at.cmp(&b.created_at)))
        .ok_or_else(|| CloudError(ApiError::new(404, "ResourceNotFound", format!("package {id} does not exist"))))
}

async fn list_packages(State(s): State<AppState>, Scoped(acct): Scoped, RawQuery(raw): RawQuery) -> CloudResult {
    let q = super::query_map(raw.as_deref());
    let mut pkgs = packages_of(&s, acct.uuid).await?;
    pkgs.sort_by(|x, y| (x.max_physical_memory, &x.name).cmp(&(y.max_physical_memory, &y.name)));
    let out: Vec<Value> = pkgs
        .iter()
        .map(render::package)
        .filter(|v| matches(v, &q, &["name", "memory", "disk", "swap", "lwps", "vcpus", "version", "group", "flexible_disk", "brand"]))
        .collect();
    ok(&out)
}

async fn get_package(State(s): State<AppState>, Scoped(acct): Scoped, Path((_, id)): Path<(String, String)>) -> CloudResult {
    ok(&render::package(&find_package(&s, acct.uuid, &id).await?))
}

/// Networks and pools `account` may provision on, rendered.
pub async fn visible_networks(s: &AppState, account: Uuid) -> Result<Vec<Value>, CloudError> {
    let nets: Vec<Network> = s.app.list(NETWORKS.name, &ListQuery::all()).await?;
    let pools: Vec<NetworkPool> = s.app.list(NETWORK_POOLS.name, &ListQuery::all()).await?;
    let mut out: Vec<Value> = nets.iter().filter(|n| n.provisionable_by(&account)).map(render::network).collect();
    out.extend(pools.iter().filter(|p| p.owner_uuids.as_ref().is_none_or(|o| o.contains(&account))).map(render::network_pool));
    Ok(out)
}

async fn list_networks(State(s): State<AppState>, Scoped(acct): Scoped, RawQuery(raw): RawQuery) -> CloudResult {
    let mut all = visible_networks(&s, acct.uuid).await?;
    // sdc-cloudapi's `?fabric=true`: fabric networks only.
    if super::flag(&super::query_map(raw.as_deref()), "fabric") {
        all.retain(|n| n["fabric"] == Value::Bool(true));
    }
    ok(&all)
}

async fn get_network(State(s): State<AppState>, Scoped(acct): Scoped, Path((_, id)): Path<(String, String)>) -> CloudResult {
    let all = visible_networks(&s, acct.uuid).await?;
    match all.into_iter().find(|n| n["id"].as_str() == Some(id.as_str()) || n["name"].as_str() == Some(id.as_str())) {
        Some(n) => ok(&n),
        None => Err(CloudError(ApiError::new(404, "ResourceNotFound", format!("network {id} does not exist")))),
    }
}
