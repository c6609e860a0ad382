//! A network's addresses as CloudAPI shows them to an account (sdc-cloudapi's
//! ListNetworkIPs, GetNetworkIP, UpdateNetworkIP).
//!
//! The rules, as Triton has them:
//! - Only addresses that are held (`belongs_to_uuid`) or reserved are listed.
//! - On a public network (no `owner_uuids`) a tenant lists and reads only its own
//!   addresses, and may not reserve any; on a network it owns it sees every address.
//! - An address is *managed* when Triton itself holds it (`belongs_to_type: other`, e.g.
//!   a gateway) or an operator account owns it; its holder is not shown and it cannot be
//!   changed through CloudAPI.
//! - A tenant sees who holds an address (`belongs_to_uuid`) only when it owns it.
//!
//! Operator accounts see every address with its owner and holder (`belongs_to_type`
//! too) and may reserve addresses on public networks.
//!
//! Choosing an address (CreateMachine's `networks: [{ipv4_uuid, ipv4_ips}]`, AddNic's
//! `network: {ipv4_uuid, ipv4_ips}`) is for networks a tenant may use and, as in Triton,
//! not public ones nor pools; on its own network only inside the provisioning range, not
//! the gateway, the broadcast address or a resolver, not an address reserved by anyone
//! but the tenant, and not one in use ([`pin_check`]). Operators — operator accounts on
//! CloudAPI, and VMAPI/NAPI callers, which never come here — may place any address.

use std::net::Ipv4Addr;

use nereid_store::{Filter, ListQuery};
use nereid_types::account::Account;
use nereid_types::network::{Network, NetworkPool};
use nereid_types::nic::IpRecord;
use nereid_types::{ApiError, FieldError};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::App;
use super::networks::ip_key;
use crate::buckets::{IPS, NETWORK_POOLS, NETWORKS};

/// Who looks at a network's addresses, and what kind of network it is.
#[derive(Debug, Clone)]
pub struct IpView {
    pub account: Uuid,
    pub operator: bool,
    /// Usable by every account (no `owner_uuids`).
    pub public: bool,
    /// Operator accounts: addresses they own are managed.
    pub operators: Vec<Uuid>,
}

impl IpView {
    /// Triton's `managed`: held by Triton itself, or owned by an operator.
    pub fn managed(&self, ip: &IpRecord) -> bool {
        ip.belongs_to_type.as_deref() == Some("other") || ip.owner_uuid.is_some_and(|o| self.operators.contains(&o))
    }

    /// Whether the address shows in a list at all.
    pub fn lists(&self, ip: &IpRecord) -> bool {
        (ip.belongs_to_uuid.is_some() || ip.reserved) && self.reads(ip)
    }

    /// Whether the account may read the address.
    pub fn reads(&self, ip: &IpRecord) -> bool {
        self.operator || !self.public || ip.owner_uuid == Some(self.account)
    }

    /// The address as CloudAPI renders it: `{ip, reserved, managed, owner_uuid?, belongs_to_uuid?, belongs_to_type?}`.
    pub fn render(&self, ip: &IpRecord) -> Value {
        let mut o = Map::new();
        o.insert("ip".into(), json!(ip.ip));
        o.insert("reserved".into(), json!(ip.reserved));
        let managed = self.managed(ip);
        let own = ip.owner_uuid == Some(self.account);
        let show_owner = self.operator || !managed;
        let show_holder = self.operator || (!managed && own);
        if let (Some(owner), true) = (ip.owner_uuid, show_owner) {
            o.insert("owner_uuid".into(), json!(owner));
        }
        if let (Some(b), true) = (ip.belongs_to_uuid, show_holder) {
            o.insert("belongs_to_uuid".into(), json!(b));
            if let Some(t) = &ip.belongs_to_type {
                o.insert("belongs_to_type".into(), json!(t));
            }
        }
        o.insert("managed".into(), json!(managed));
        Value::Object(o)
    }
}

fn invalid_argument(message: impl Into<String>) -> ApiError {
    ApiError::new(409, "InvalidArgument", message)
}

impl App {
    /// How `account` sees the addresses of `net`.
    pub async fn ip_view(&self, account: &Account, net: &Network) -> Result<IpView, ApiError> {
        let operators = self.list_accounts(None, None).await?.into_iter().filter(|a| a.operator).map(|a| a.uuid).collect();
        Ok(IpView { account: account.uuid, operator: account.operator, public: net.owner_uuids.is_none(), operators })
    }

    /// ListNetworkIPs: a page of the addresses `account` may see, rendered.
    pub async fn tenant_ips(&self, account: &Account, net: &Network, limit: usize, offset: usize) -> Result<Vec<Value>, ApiError> {
        let view = self.ip_view(account, net).await?;
        let all: Vec<IpRecord> = self.list(IPS.name, &ListQuery::filter(Filter::eq("network_uuid", net.uuid.to_string()))).await?;
        let mut shown: Vec<(u32, Value)> = all
            .iter()
            .filter(|ip| view.lists(ip))
            .map(|ip| (ip.ip.parse::<Ipv4Addr>().map(u32::from).unwrap_or(0), view.render(ip)))
            .collect();
        shown.sort_by_key(|(n, _)| *n);
        Ok(shown.into_iter().skip(offset).take(limit).map(|(_, v)| v).collect())
    }

    /// GetNetworkIP: one address, 404 when a tenant asks for another's on a public network.
    pub async fn tenant_ip(&self, account: &Account, net: &Network, ip: &str) -> Result<Value, ApiError> {
        let view = self.ip_view(account, net).await?;
        let (rec, _) = self.get_ip(net.uuid, ip).await?;
        if !view.reads(&rec) {
            return Err(ApiError::not_found(format!("{ip} not found")));
        }
        Ok(view.render(&rec))
    }

    /// UpdateNetworkIP: reserve or unreserve an address of a network the account owns (or,
    /// for operators, any network); managed addresses and other accounts' are refused.
    pub async fn tenant_reserve_ip(&self, account: &Account, net: &Network, ip: &str, reserved: bool) -> Result<Value, ApiError> {
        let view = self.ip_view(account, net).await?;
        if view.public && !view.operator {
            return Err(invalid_argument(format!("cannot update an IP on a public network: {}", net.uuid)));
        }
        let (rec, _) = self.get_ip(net.uuid, ip).await?;
        if view.managed(&rec) {
            return Err(invalid_argument(format!("cannot update managed IP: {}", rec.ip)));
        }
        if rec.owner_uuid.is_some_and(|o| o != account.uuid) {
            return Err(invalid_argument(format!("IP {} on network {} is in use by another account", rec.ip, net.uuid)));
        }
        let mut input = Map::new();
        input.insert("reserved".into(), json!(reserved));
        let rec = self.update_ip(net.uuid, &rec.ip, &input).await?;
        Ok(view.render(&rec))
    }
}

/// Whether a tenant (`account`, not an operator) may have `ip` on `net`, whose record for
/// that address (if any) is `rec` (pure). Errors are CloudAPI's `InvalidArgument`s, worded
/// as Triton's, naming nothing but the tenant's own request.
pub fn pin_check(net: &Network, ip: &str, rec: Option<&IpRecord>, account: Uuid) -> Result<Ipv4Addr, ApiError> {
    if net.owner_uuids.is_none() {
        return Err(invalid_argument(format!("ipv4_uuid: {} cannot specify IP on a public network", net.uuid)));
    }
    let addr = nereid_types::ipv4::parse_addr(ip).map_err(|_| invalid_argument(format!("ipv4_ips: {ip} is not a valid IPv4 address")))?;
    let n = u32::from(addr);
    let (start, end) = net.range();
    if !net.subnet().is_host(addr) || n < start || n > end {
        return Err(invalid_argument(format!(
            "ipv4_ips: IP {addr} is not in the provisioning range of network {} ({} - {})",
            net.uuid, net.provision_start_ip, net.provision_end_ip
        )));
    }
    let is = |s: &str| nereid_types::ipv4::parse_addr(s).is_ok_and(|a| a == addr);
    if net.gateway.as_deref().is_some_and(is) {
        return Err(invalid_argument(format!("ipv4_ips: IP {addr} is the gateway of network {}", net.uuid)));
    }
    if net.resolvers.iter().any(|r| is(r)) {
        return Err(invalid_argument(format!("ipv4_ips: IP {addr} is a resolver of network {}", net.uuid)));
    }
    if let Some(r) = rec {
        if r.nic.is_some() || r.belongs_to_uuid.is_some() {
            return Err(invalid_argument(format!("ipv4_ips: IP {addr} is already in use")));
        }
        if r.reserved && r.owner_uuid != Some(account) {
            return Err(invalid_argument(format!("ipv4_ips: IP {addr} is reserved")));
        }
    }
    Ok(addr)
}

impl App {
    /// CreateMachine's and AddNic's chosen address, checked for `account` before anything
    /// is written (see [`pin_check`]; operator accounts may place any address, as on
    /// VMAPI). The NIC's own claim still decides a race for a free address.
    pub async fn check_tenant_pin(&self, account: &Account, network: Uuid, ip: &str) -> Result<(), ApiError> {
        if account.operator {
            return Ok(());
        }
        let not_found = || ApiError::new(404, "ResourceNotFound", format!("ipv4_uuid: network {network} not found"));
        let net = match self.read::<Network>(NETWORKS.name, &network.to_string()).await? {
            Some((n, _)) if n.provisionable_by(&account.uuid) => n,
            Some(_) => return Err(not_found()),
            None => match self.read::<NetworkPool>(NETWORK_POOLS.name, &network.to_string()).await? {
                Some((p, _)) if p.owner_uuids.as_ref().is_none_or(|o| o.contains(&account.uuid)) => {
                    return Err(invalid_argument(format!("ipv4_uuid: {network} cannot specify IP on a network pool")));
                }
                _ => return Err(not_found()),
            },
        };
        let rec = match nereid_types::ipv4::parse_addr(ip) {
            Ok(addr) => self.read::<IpRecord>(IPS.name, &ip_key(net.uuid, addr)).await?.map(|(r, _)| r),
            Err(_) => None,
        };
        pin_check(&net, ip, rec.as_ref(), account.uuid).map(|_| ())
    }
}

/// CloudAPI's `reserved`: a boolean, or the strings `true`/`false` (from a query or a form).
pub fn reserved_param(p: &Map<String, Value>) -> Result<bool, ApiError> {
    match p.get("reserved") {
        None => {
            Err(ApiError::new(409, "MissingParameter", "reserved is a required argument")
                .with_errors(vec![FieldError::missing("reserved")]))
        }
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if s == "true" => Ok(true),
        Some(Value::String(s)) if s == "false" => Ok(false),
        Some(_) => Err(invalid_argument("reserved must be set to true or false")
            .with_errors(vec![FieldError::invalid("reserved", "must be true or false")])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(owner: Option<Uuid>, holder: Option<Uuid>, kind: Option<&str>, reserved: bool) -> IpRecord {
        IpRecord {
            ip: "10.0.0.5".into(),
            network_uuid: Uuid::nil(),
            reserved,
            belongs_to_uuid: holder,
            belongs_to_type: kind.map(str::to_string),
            owner_uuid: owner,
            nic: None,
        }
    }

    #[test]
    fn tenants_see_their_own_holders_and_never_managed_ones() {
        let (me, other, op, vm) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let public = IpView { account: me, operator: false, public: true, operators: vec![op] };
        let mine = rec(Some(me), Some(vm), Some("zone"), false);
        assert!(public.lists(&mine));
        assert_eq!(
            public.render(&mine),
            json!({"ip": "10.0.0.5", "reserved": false, "managed": false, "owner_uuid": me, "belongs_to_uuid": vm, "belongs_to_type": "zone"})
        );
        let theirs = rec(Some(other), Some(vm), Some("zone"), false);
        assert!(!public.lists(&theirs) && !public.reads(&theirs), "another tenant's address on a public network is invisible");
        let private = IpView { public: false, ..public.clone() };
        assert!(private.lists(&theirs));
        assert_eq!(private.render(&theirs), json!({"ip": "10.0.0.5", "reserved": false, "managed": false, "owner_uuid": other}));
        let gateway = rec(None, Some(Uuid::nil()), Some("other"), true);
        assert_eq!(private.render(&gateway), json!({"ip": "10.0.0.5", "reserved": true, "managed": true}));
        let ops = rec(Some(op), Some(vm), Some("zone"), false);
        assert_eq!(private.render(&ops)["managed"], true);
        assert!(private.render(&ops).get("owner_uuid").is_none());
        assert!(!private.lists(&rec(None, None, None, false)), "free addresses are not listed");
        assert!(private.lists(&rec(None, None, None, true)), "reserved ones are");
        let operator = IpView { operator: true, ..public };
        assert!(operator.lists(&theirs));
        assert_eq!(operator.render(&gateway)["belongs_to_type"], "other", "operators see everything");
    }

    fn net(owners: Option<Vec<Uuid>>) -> Network {
        serde_json::from_value(json!({
            "uuid": "7d0c0000-0000-4000-8000-000000000001", "name": "mine", "nic_tag": "external", "vlan_id": 3,
            "subnet": "10.88.0.0/24", "netmask": "255.255.255.0", "family": "ipv4",
            "provision_start_ip": "10.88.0.10", "provision_end_ip": "10.88.0.20", "gateway": "10.88.0.11",
            "resolvers": ["10.88.0.12"], "owner_uuids": owners, "mtu": 1500, "fabric": false
        }))
        .unwrap()
    }

    #[test]
    fn tenants_pin_only_free_addresses_inside_the_provisioning_range_of_their_own_networks() {
        let (me, other) = (Uuid::new_v4(), Uuid::new_v4());
        let mine = net(Some(vec![me, other]));
        let msg = |r: Result<Ipv4Addr, ApiError>| {
            let e = r.unwrap_err();
            assert_eq!((e.status, e.code.as_str()), (409, "InvalidArgument"), "{e:?}");
            e.message
        };
        assert_eq!(pin_check(&mine, "10.88.0.15", None, me).unwrap(), Ipv4Addr::new(10, 88, 0, 15));
        assert_eq!(pin_check(&mine, "10.88.0.20", Some(&rec(None, None, None, false)), me).unwrap(), Ipv4Addr::new(10, 88, 0, 20));
        let public = net(None);
        assert_eq!(
            msg(pin_check(&public, "10.88.0.15", None, me)),
            "ipv4_uuid: 7d0c0000-0000-4000-8000-000000000001 cannot specify IP on a public network"
        );
        for outside in ["10.88.0.9", "10.88.0.21", "10.88.0.255", "10.88.0.0", "10.89.0.15"] {
            assert!(msg(pin_check(&mine, outside, None, me)).contains("is not in the provisioning range"), "{outside}");
        }
        assert_eq!(
            msg(pin_check(&mine, "10.88.0.21", None, me)),
            "ipv4_ips: IP 10.88.0.21 is not in the provisioning range of network 7d0c0000-0000-4000-8000-000000000001 (10.88.0.10 - 10.88.0.20)"
        );
        assert!(msg(pin_check(&mine, "10.88.0.11", None, me)).contains("is the gateway"));
        assert!(msg(pin_check(&mine, "10.88.0.12", None, me)).contains("is a resolver"));
        assert!(msg(pin_check(&mine, "nope", None, me)).contains("not a valid IPv4 address"));
        // Reserved: by an operator or another account (or nobody) no; by the tenant itself yes.
        assert_eq!(msg(pin_check(&mine, "10.88.0.15", Some(&rec(None, None, None, true)), me)), "ipv4_ips: IP 10.88.0.15 is reserved");
        assert!(msg(pin_check(&mine, "10.88.0.15", Some(&rec(Some(other), None, None, true)), me)).ends_with("is reserved"));
        assert!(pin_check(&mine, "10.88.0.15", Some(&rec(Some(me), None, None, true)), me).is_ok());
        // In use: the holder is not named.
        let held = rec(Some(other), Some(Uuid::new_v4()), Some("zone"), false);
        let m = msg(pin_check(&mine, "10.88.0.15", Some(&held), me));
        assert_eq!(m, "ipv4_ips: IP 10.88.0.15 is already in use");
    }

    #[test]
    fn reserved_takes_booleans_and_their_text() {
        let p = |v: Value| reserved_param(v.as_object().unwrap());
        assert!(p(json!({"reserved": true})).unwrap());
        assert!(!p(json!({"reserved": "false"})).unwrap());
        assert_eq!(p(json!({})).unwrap_err().code, "MissingParameter");
        assert_eq!(p(json!({"reserved": "yes"})).unwrap_err().code, "InvalidArgument");
    }
}
