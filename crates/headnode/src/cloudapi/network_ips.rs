//! CloudAPI network IPs: `GET /:a/networks/:id/ips` (`x-resource-count`),
//! `GET /:a/networks/:id/ips/:ip`, `PUT /:a/networks/:id/ips/:ip {reserved}` — what
//! `triton network ip list|get|update` use. Who sees and changes what is
//! `app::tenant_ips`'s; this file finds the network and translates.

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, Method, StatusCode};
use nereid_types::ApiError;
use nereid_types::account::Account;
use nereid_types::network::{Network, NetworkPool};
use nereid_types::query::{Param, QKind};
use serde_json::{Value, json};
use uuid::Uuid;

use super::{CloudError, CloudResult, Params, Scoped, invalid, ok};
use crate::app::tenant_ips::reserved_param;
use crate::buckets::{NETWORK_POOLS, NETWORKS};
use crate::http::{AppState, Auth, BodyDoc, Doc, RespDoc, Route};

const LIST_QUERY: &[Param] = &[
    Param::new("limit", QKind::Int { min: 1, max: 1000 }, "Page size (default and most 1000)."),
    Param::new("offset", QKind::Int { min: 0, max: i64::MAX }, "Items to skip."),
];

fn ip_schema() -> Value {
    json!({"type": "object", "properties": {
        "ip": {"type": "string", "format": "ipv4"}, "reserved": {"type": "boolean"},
        "managed": {"type": "boolean", "description": "Held by the cloud itself (e.g. a gateway) or an operator: not changeable here."},
        "owner_uuid": {"type": "string", "format": "uuid"},
        "belongs_to_uuid": {"type": "string", "format": "uuid", "description": "What holds it; shown only to its owner."},
        "belongs_to_type": {"type": "string"}}})
}

fn ip_list_schema() -> Value {
    json!({"type": "array", "items": ip_schema()})
}

fn update_schema() -> Value {
    json!({"type": "object", "required": ["reserved"], "properties": {"reserved": {"type": "boolean"}}})
}

fn doc(id: &'static str, summary: &'static str, query: &'static [Param], body: BodyDoc, response: RespDoc) -> Doc {
    Doc { id, tag: "CloudAPI", summary, query, body, response }
}

pub fn routes() -> Vec<Route> {
    vec![
        Route::new(
            Method::GET,
            "/{account}/networks/{id}/ips",
            doc(
                "ListNetworkIPs",
                "Held or reserved addresses of a network (on a public network, only the account's own); x-resource-count.",
                LIST_QUERY,
                BodyDoc::None,
                RespDoc::Schema(200, ip_list_schema),
            ),
            list,
        )
        .auth(Auth::Signature),
        Route::new(
            Method::GET,
            "/{account}/networks/{id}/ips/{ip}",
            doc("GetNetworkIP", "One address of a network.", &[], BodyDoc::None, RespDoc::Schema(200, ip_schema)),
            get,
        )
        .auth(Auth::Signature),
        Route::new(
            Method::PUT,
            "/{account}/networks/{id}/ips/{ip}",
            doc(
                "UpdateNetworkIP",
                "Reserve or unreserve an address (not on public networks, not managed ones, not another account's).",
                &[],
                BodyDoc::Schema(update_schema),
                RespDoc::Schema(200, ip_schema),
            ),
            update,
        )
        .auth(Auth::Signature),
    ]
}

/// The network `id` names, if the account may use it (404 otherwise; pools are refused).
async fn network_of(s: &AppState, acct: &Account, id: &str) -> Result<Network, CloudError> {
    let not_found = || CloudError(ApiError::new(404, "ResourceNotFound", format!("{id} not found")));
    let uuid = Uuid::parse_str(id).map_err(|_| not_found())?;
    if let Some((net, _)) = s.app.read::<Network>(NETWORKS.name, &uuid.to_string()).await?
        && net.provisionable_by(&acct.uuid)
    {
        return Ok(net);
    }
    if let Some((pool, _)) = s.app.read::<NetworkPool>(NETWORK_POOLS.name, &uuid.to_string()).await?
        && pool.owner_uuids.as_ref().is_none_or(|o| o.contains(&acct.uuid))
    {
        return Err(invalid("id", format!("cannot get IPs in a network pool: {uuid}")));
    }
    Err(not_found())
}

fn page_param(q: &serde_json::Map<String, Value>, k: &str, default: usize, min: usize, max: usize) -> Result<usize, CloudError> {
    match q.get(k).and_then(Value::as_str) {
        None => Ok(default),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(invalid(k, format!("must be an integer from {min} to {max} (got {v:?})"))),
        },
    }
}

async fn list(
    State(s): State<AppState>,
    Scoped(acct): Scoped,
    Path((_, id)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> CloudResult {
    let q = super::query_map(raw.as_deref());
    let limit = page_param(&q, "limit", 1000, 1, 1000)?;
    let offset = page_param(&q, "offset", 0, 0, usize::MAX)?;
    let net = network_of(&s, &acct, &id).await?;
    let ips = s.app.tenant_ips(&acct, &net, limit, offset).await?;
    let mut resp = super::reply(StatusCode::OK, &ips);
    resp.headers_mut().insert("x-resource-count", HeaderValue::from(ips.len()));
    resp.headers_mut().insert("x-query-limit", HeaderValue::from(limit));
    Ok(resp)
}

async fn get(State(s): State<AppState>, Scoped(acct): Scoped, Path((_, id, ip)): Path<(String, String, String)>) -> CloudResult {
    let net = network_of(&s, &acct, &id).await?;
    ok(&s.app.tenant_ip(&acct, &net, &ip).await?)
}

async fn update(
    State(s): State<AppState>,
    Scoped(acct): Scoped,
    Path((_, id, ip)): Path<(String, String, String)>,
    Params(p): Params,
) -> CloudResult {
    let net = network_of(&s, &acct, &id).await?;
    let reserved = reserved_param(&p)?;
    ok(&s.app.tenant_reserve_ip(&acct, &net, &ip, reserved).await?)
}
