//! NICs (NAPI's `/nics`): every NIC with its address, network, what it belongs to and its
//! `allow_*` switches, filtered by owner, by what it belongs to or by network.

use std::collections::HashMap;

use axum::Router;
use axum::extract::{Query, State};
use axum::response::Response;
use axum::routing::get;
use maud::{Markup, html};
use serde_json::Value;

use super::{belongs_to, subnav};
use crate::web::Web;
use crate::web::api::enc;
use crate::web::page::{self, badge, field, table};
use crate::web::session::Operator;

pub fn routes() -> Router<Web> {
    Router::new().route("/nics", get(list))
}

/// The filters the list takes, with their labels (each is a ListNics parameter).
const FILTERS: &[(&str, &str)] =
    &[("owner_uuid", "Owner (account UUID)"), ("belongs_to_uuid", "Belongs to (VM or server UUID)"), ("network_uuid", "Network UUID")];

/// The switches a NIC may have on.
const ALLOW: &[&str] =
    &["allow_dhcp_spoofing", "allow_ip_spoofing", "allow_mac_spoofing", "allow_restricted_traffic", "allow_unfiltered_promisc"];

/// ListNics' path for the filters given (empty ones left out).
fn api_path(q: &HashMap<String, String>) -> String {
    let parts: Vec<String> = FILTERS
        .iter()
        .filter_map(|(k, _)| q.get(*k).map(|v| v.trim()).filter(|v| !v.is_empty()).map(|v| format!("{k}={}", enc(v))))
        .collect();
    if parts.is_empty() { "/nics".into() } else { format!("/nics?{}", parts.join("&")) }
}

async fn list(State(web): State<Web>, Operator(s): Operator, Query(q): Query<HashMap<String, String>>) -> Response {
    let filters = filters_form(&q);
    page::list_or_error(&s, "NICs", web.admin_get(&api_path(&q)).await, |nics| html! { (subnav()) (filters) (nic_table(nics)) })
}

fn filters_form(q: &HashMap<String, String>) -> Markup {
    html! {
        form.filters method="get" action="/nics" role="search" aria-label="Filter NICs" {
            @for (k, label) in FILTERS {
                label for={ "f-" (k) } { (label) input id={ "f-" (k) } type="text" name=(k) value=(q.get(*k).map(String::as_str).unwrap_or_default()); }
            }
            button type="submit" { "Filter" }
        }
    }
}

fn nic_table(nics: &[Value]) -> Markup {
    let rows = nics
        .iter()
        .map(|n| {
            let net = field(n, "network_uuid");
            let on: Vec<&str> = ALLOW.iter().copied().filter(|k| n.get(*k).and_then(Value::as_bool).unwrap_or(false)).collect();
            html! {
                tr {
                    td { code { (field(n, "mac")) } }
                    td { code { (field(n, "ip")) } }
                    td { @if !net.is_empty() { a href={ "/networks/" (enc(&net)) } { code { (net) } } } }
                    td { (belongs_to(n)) }
                    td { @let o = field(n, "owner_uuid"); a href={ "/accounts/" (enc(&o)) } { code { (o) } } }
                    td { (badge(&field(n, "state"))) @if n.get("primary").and_then(Value::as_bool).unwrap_or(false) { " primary" } }
                    td { @if on.is_empty() { "none" } @else { (on.join(", ")) } }
                }
            }
        })
        .collect();
    table(&format!("NICs: {}", nics.len()), &["MAC", "Address", "Network", "Belongs to", "Owner", "State", "Allowed"], rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_become_list_parameters() {
        let q: HashMap<String, String> =
            [("owner_uuid".to_string(), "a b".to_string()), ("network_uuid".to_string(), " ".to_string())].into();
        assert_eq!(api_path(&q), "/nics?owner_uuid=a+b");
        assert_eq!(api_path(&HashMap::new()), "/nics");
    }
}
