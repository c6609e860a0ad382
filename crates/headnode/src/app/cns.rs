//! CNS in the headnode: the DNS names of instances (`nereid_cns`) built from the records
//! and served on `--dns-listen`.
//!
//! ```text
//!   woken (cns_notify: a job ended, a VM record changed, an account changed)
//!   or SAFETY_PERIOD passed ──► wait until EVERY since the last build (wake-ups coalesce)
//!     ──► read: accounts with triton_cns_enabled, their active placed VMs, networks,
//!               heartbeat times (server up?)
//!     ──► nereid_cns::build (pure) ──► same zones as last time? nothing
//!                                     otherwise publish (serials grow, IXFR diffs kept)
//!   nereid_cns::serve answers UDP and TCP from the published zones; NOTIFY to peers.
//! ```
//!
//! Nothing runs unless CNS is configured ([`CnsConfig`], `AppConfig::cns`). Every headnode
//! of a cluster builds from the shared store and serves the same names; a change written
//! through another headnode shows here at the next safety rebuild.
//!
//! A NIC's address is public (public zone `<dc>.<suffix>`) unless it is private
//! ([`is_private`]: RFC 1918, 100.64/10, link-local, loopback, ULA); private addresses go
//! to `<dc>.cns.<suffix>`. `dns_names` of GetMachine and GET /vms/:uuid come from the same
//! inputs through [`App::vm_dns_names`].
//!
//! ACME's DNS-01 challenges (`crate::acme`) put `_acme-challenge.<domain>` TXT records in
//! [`AcmeTxt`]; each build adds them to the zone holding the name, and tells the ACME
//! client once they are published.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use nereid_cns::{Account as CnsAccount, Instance, Nic, ZoneSet, Zones};
use nereid_store::{Filter, ListQuery, Path};
use nereid_types::ApiError;
use nereid_types::account::Account;
use nereid_types::vm::Vm;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use uuid::Uuid;

use super::{App, store_error};
use crate::buckets::{ACCOUNTS, HEARTBEATS, NETWORKS, VMS};

/// Least time between two builds (wake-ups in between coalesce).
pub const EVERY: Duration = Duration::from_secs(1);
/// How often the zones are rebuilt without being woken: catches what does not wake the
/// builder (another headnode's writes, a server going silent).
pub const SAFETY_PERIOD: Duration = Duration::from_secs(30);
/// The default DNS suffix: `.internal` is reserved for private use (ICANN, 2024), unlike
/// `.local`, which resolvers hand to multicast DNS.
pub const DEFAULT_SUFFIX: &str = "nereid.internal";
/// The login of the operator account whose services are also published directly under
/// the zone (Triton's `admin_uuid`): `nereid up --triton-profile` makes it.
pub const ADMIN_LOGIN: &str = "admin";

/// How CNS is served (`--dns-*` flags of `nereid headnode`).
#[derive(Debug, Clone)]
pub struct CnsConfig {
    /// UDP and TCP, same address (port 0 picks one free for both).
    pub listen: SocketAddr,
    /// Zones, transfers and peers; its `admin_uuid` is filled in at each build.
    pub dns: nereid_cns::Config,
    /// ACME DNS-01 challenge records, published beside the instances' names.
    pub acme_txt: Arc<AcmeTxt>,
}

/// TXT records an ACME order wants published (name → values), with a generation counter so
/// the order can wait until the DNS server answers with what it set.
#[derive(Debug)]
pub struct AcmeTxt {
    records: std::sync::Mutex<(u64, std::collections::BTreeMap<String, std::collections::BTreeSet<String>>)>,
    published: watch::Sender<u64>,
}

impl Default for AcmeTxt {
    fn default() -> Self {
        AcmeTxt { records: Default::default(), published: watch::Sender::new(0) }
    }
}

impl AcmeTxt {
    /// Publishes `value` at `name` (beside any value already there); the generation to wait for.
    pub fn add(&self, name: &str, value: &str) -> u64 {
        let mut r = self.records.lock().unwrap_or_else(|p| p.into_inner());
        r.0 += 1;
        r.1.entry(name.to_ascii_lowercase()).or_default().insert(value.to_string());
        r.0
    }

    /// Withdraws every value at `name`.
    pub fn remove(&self, name: &str) {
        let mut r = self.records.lock().unwrap_or_else(|p| p.into_inner());
        r.0 += 1;
        r.1.remove(&name.to_ascii_lowercase());
    }

    /// The current generation and records.
    pub fn snapshot(&self) -> (u64, std::collections::BTreeMap<String, std::collections::BTreeSet<String>>) {
        self.records.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The generation the DNS server now answers with.
    fn mark_published(&self, generation: u64) {
        self.published.send_if_modified(|g| {
            let newer = generation > *g;
            if newer {
                *g = generation;
            }
            newer
        });
    }

    /// Waits until the records of `generation` (or later) are published.
    pub async fn published(&self, generation: u64) {
        let mut rx = self.published.subscribe();
        let _ = rx.wait_for(|g| *g >= generation).await;
    }
}

/// Adds the ACME TXT records to the zones holding their names (names outside every zone are
/// left out: `crate::acme` refuses such domains at start).
pub fn add_acme_txt(zones: &mut Zones, txt: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>, ttl: u32) {
    for (name, values) in txt {
        let zone = zones.keys().find(|z| name == *z || name.ends_with(&format!(".{z}"))).cloned();
        let Some(records) = zone.and_then(|z| zones.get_mut(&z)) else { continue };
        for v in values {
            records.insert(nereid_cns::Record { name: name.clone(), ttl, data: nereid_cns::Data::Txt(v.clone()) });
        }
    }
}

impl CnsConfig {
    /// Triton's defaults for `datacenter` and `suffix`; transfers from loopback only.
    pub fn new(listen: SocketAddr, datacenter: &str, suffix: &str) -> Self {
        let mut dns = nereid_cns::Config::new(datacenter, suffix, Uuid::nil());
        dns.allow_transfer = loopback();
        CnsConfig { listen, dns, acme_txt: Arc::default() }
    }
}

/// 127.0.0.0/8 and ::1.
pub fn loopback() -> Vec<ipnet::IpNet> {
    vec![
        ipnet::IpNet::from(ipnet::Ipv4Net::new_assert([127, 0, 0, 0].into(), 8)),
        ipnet::IpNet::from(IpAddr::from(std::net::Ipv6Addr::LOCALHOST)),
    ]
}

/// `CIDR[,CIDR…]` (a bare address is a /32 or /128).
pub fn parse_cidrs(s: &str) -> Result<Vec<ipnet::IpNet>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<ipnet::IpNet>()
                .or_else(|_| p.parse::<IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| format!("{p:?} is not an address or CIDR block (10.0.0.0/8, 2001:db8::/32)"))
        })
        .collect()
}

/// `ADDR[,ADDR…]`: `IP` (port 53) or `IP:PORT` (`[IPv6]:PORT`).
pub fn parse_peers(s: &str) -> Result<Vec<SocketAddr>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<SocketAddr>()
                .or_else(|_| p.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                .map_err(|_| format!("{p:?} is not an address (192.0.2.1, 192.0.2.1:5353, [2001:db8::1]:53)"))
        })
        .collect()
}

/// Whether an address is private (its names go to the private zone): RFC 1918, shared
/// address space 100.64/10, link-local, loopback, unspecified, IPv6 ULA fc00::/7.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_private() || v4.is_loopback() || v4.is_link_local() || v4.is_unspecified() || (o[0] == 100 && (o[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_private(IpAddr::V4(v4)),
            None => {
                let s = v6.segments();
                v6.is_loopback() || v6.is_unspecified() || (s[0] & 0xfe00) == 0xfc00 || (s[0] & 0xffc0) == 0xfe80
            }
        },
    }
}

/// What CNS reads of a network.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct NetInfo {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub owner_uuids: Option<Vec<Uuid>>,
}

/// What CNS reads of a VM record.
#[derive(Debug, Clone, Deserialize)]
pub struct CnsVm {
    pub uuid: Uuid,
    #[serde(default)]
    pub alias: Option<String>,
    #[serde(default)]
    pub owner_uuid: Option<Uuid>,
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub server_uuid: Option<Uuid>,
    #[serde(default)]
    pub tags: Option<Map<String, Value>>,
    #[serde(default)]
    pub customer_metadata: Option<Map<String, Value>>,
    #[serde(default)]
    pub nics: Option<Vec<CnsNic>>,
}

/// What CNS reads of a VM's NIC.
#[derive(Debug, Clone, Deserialize)]
pub struct CnsNic {
    #[serde(default)]
    pub ip: Option<String>,
    #[serde(default)]
    pub network_uuid: Option<Uuid>,
}

impl CnsVm {
    /// The fields CNS uses of a full record.
    pub fn of(vm: &Vm) -> Self {
        CnsVm {
            uuid: vm.uuid,
            alias: vm.alias.clone(),
            owner_uuid: vm.owner_uuid,
            state: vm.state.clone(),
            server_uuid: vm.server_uuid,
            tags: vm.tags.clone(),
            customer_metadata: vm.customer_metadata.clone(),
            nics: vm.nics.as_ref().map(|ns| ns.iter().map(|n| CnsNic { ip: n.ip.clone(), network_uuid: n.network_uuid }).collect()),
        }
    }
}

/// The instance CNS publishes for a VM record (pure): `None` for a VM that is destroyed,
/// failed, not placed or without an owner. `up`: the servers whose heartbeats are recent.
pub fn instance(vm: &CnsVm, networks: &HashMap<Uuid, NetInfo>, up: &HashSet<Uuid>) -> Option<Instance> {
    let owner = vm.owner_uuid?;
    let server = vm.server_uuid?;
    if matches!(vm.state.as_deref(), Some("destroyed" | "failed")) {
        return None;
    }
    let nics = vm
        .nics
        .iter()
        .flatten()
        .filter_map(|n| {
            let ip: IpAddr = n.ip.as_deref()?.parse().ok()?;
            let net = n.network_uuid.and_then(|u| networks.get(&u));
            Some(Nic {
                ip,
                network_uuid: n.network_uuid.unwrap_or_default(),
                network_name: net.map(|n| n.name.clone()).unwrap_or_default(),
                public: !is_private(ip),
                owner_network: net.and_then(|n| n.owner_uuids.as_ref()).is_some_and(|o| o.contains(&owner)),
            })
        })
        .collect();
    Some(Instance {
        uuid: vm.uuid,
        alias: vm.alias.clone(),
        owner_uuid: owner,
        running: vm.state.as_deref() == Some("running"),
        server_up: up.contains(&server),
        tags: vm.tags.clone().unwrap_or_default(),
        customer_metadata: vm.customer_metadata.clone().unwrap_or_default(),
        nics,
    })
}

/// What CNS reads of an account.
#[derive(Debug, Clone, Deserialize)]
struct AccountInfo {
    login: String,
    #[serde(default)]
    triton_cns_enabled: bool,
}

/// A UDP socket and a TCP listener on the same address (port 0: one port free for both).
pub async fn bind(listen: SocketAddr) -> std::io::Result<(UdpSocket, TcpListener)> {
    if listen.port() != 0 {
        return Ok((UdpSocket::bind(listen).await?, TcpListener::bind(listen).await?));
    }
    let mut last = None;
    for _ in 0..50 {
        let udp = UdpSocket::bind(listen).await?;
        match TcpListener::bind(udp.local_addr()?).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no port free for both UDP and TCP")))
}

impl App {
    /// The DNS settings with the admin account's UUID, if CNS is on.
    fn cns_dns(&self, admin: Option<Uuid>) -> Option<nereid_cns::Config> {
        let mut dns = self.cfg.cns.as_ref()?.dns.clone();
        dns.admin_uuid = admin.unwrap_or_default();
        Some(dns)
    }

    /// Networks by UUID, as CNS reads them.
    async fn cns_networks(&self) -> Result<HashMap<Uuid, NetInfo>, ApiError> {
        self.list_keyed(NETWORKS.name, &ListQuery::all()).await
    }

    /// One VM's networks by UUID, as CNS reads them.
    async fn cns_networks_of(&self, vm: &CnsVm) -> Result<HashMap<Uuid, NetInfo>, ApiError> {
        let mut out = HashMap::new();
        for net in vm.nics.iter().flatten().filter_map(|n| n.network_uuid) {
            if out.contains_key(&net) {
                continue;
            }
            let found = self.store.get(NETWORKS.name, &net.to_string()).await.map_err(store_error)?;
            if let Some(info) = found.and_then(|o| serde_json::from_value::<NetInfo>(o.value).ok()) {
                out.insert(net, info);
            }
        }
        Ok(out)
    }

    /// `server` alone if its heartbeat is recent (what [`App::cns_servers_up`] answers of it).
    async fn cns_server_up(&self, server: Option<Uuid>) -> Result<HashSet<Uuid>, ApiError> {
        let Some(server) = server else { return Ok(HashSet::new()) };
        #[derive(Deserialize)]
        struct At {
            at_ms: i64,
        }
        let found = self.store.get(HEARTBEATS.name, &server.to_string()).await.map_err(store_error)?;
        let at = found.and_then(|o| serde_json::from_value::<At>(o.value).ok()).map(|a| self.liveness.newest_ms(server, a.at_ms));
        Ok(if self.server_is_up(at) { HashSet::from([server]) } else { HashSet::new() })
    }

    fn server_is_up(&self, at_ms: Option<i64>) -> bool {
        let (now, timeout) = (nereid_types::time::now_ms(), self.cfg.server_timeout.as_millis() as i64);
        nereid_types::server::status(at_ms, now, timeout).0 == "running"
    }

    /// The servers whose heartbeats are recent.
    async fn cns_servers_up(&self) -> Result<HashSet<Uuid>, ApiError> {
        let times = self.heartbeat_times().await?;
        Ok(times.into_iter().filter(|(_, at)| self.server_is_up(Some(*at))).map(|(u, _)| u).collect())
    }

    /// Every zone from the records now (`None` when CNS is off). Reads only the accounts
    /// with CNS on; nothing else when there are none.
    pub async fn cns_zones(&self) -> Result<Option<Zones>, ApiError> {
        if self.cfg.cns.is_none() {
            return Ok(None);
        }
        let q = ListQuery::filter(Filter::Eq(Path::field("triton_cns_enabled"), json!(true)));
        let enabled: HashMap<Uuid, AccountInfo> = self.list_keyed(ACCOUNTS.name, &q).await?;
        let admin = enabled.iter().find(|(_, a)| a.login == ADMIN_LOGIN).map(|(u, _)| *u);
        let Some(dns) = self.cns_dns(admin) else { return Ok(None) };
        let accounts: Vec<CnsAccount> =
            enabled.into_iter().map(|(uuid, a)| CnsAccount { uuid, login: a.login, cns_enabled: a.triton_cns_enabled }).collect();
        let mut instances = Vec::new();
        if !accounts.is_empty() {
            let owners: Vec<Value> = accounts.iter().map(|a| json!(a.uuid.to_string())).collect();
            let f = Filter::and(vec![
                Filter::Ne(Path::field("state"), Value::String("destroyed".into())),
                Filter::any_of("owner_uuid", owners),
            ]);
            let vms: Vec<CnsVm> = self.list_fast(VMS.name, &ListQuery::filter(f)).await?;
            let (networks, up) = (self.cns_networks().await?, self.cns_servers_up().await?);
            instances = vms.iter().filter_map(|v| instance(v, &networks, &up)).collect();
        }
        let mut zones = nereid_cns::build(&dns, &accounts, &instances);
        if let Some(c) = &self.cfg.cns {
            add_acme_txt(&mut zones, &c.acme_txt.snapshot().1, dns.ttl);
        }
        Ok(Some(zones))
    }

    /// A VM's `dns_names` (CloudAPI GetMachine, VMAPI GET /vms/:uuid): `None` when CNS is
    /// off; empty when its owner has CNS off or it is not published.
    pub async fn vm_dns_names(&self, vm: &Vm, owner: Option<&Account>) -> Result<Option<Vec<String>>, ApiError> {
        if self.cfg.cns.is_none() {
            return Ok(None);
        }
        let Some(owner_uuid) = vm.owner_uuid else { return Ok(Some(Vec::new())) };
        let owner = match owner {
            Some(a) if a.uuid == owner_uuid => a.clone(),
            _ => match self.find_account(&owner_uuid.to_string()).await {
                Ok((a, _)) => a,
                Err(e) if e.status == 404 => return Ok(Some(Vec::new())),
                Err(e) => return Err(e),
            },
        };
        if !owner.triton_cns_enabled {
            return Ok(Some(Vec::new()));
        }
        let vm = CnsVm::of(vm);
        let (networks, up) = (self.cns_networks_of(&vm).await?, self.cns_server_up(vm.server_uuid).await?);
        let Some(inst) = instance(&vm, &networks, &up) else { return Ok(Some(Vec::new())) };
        let admin = if owner.login == ADMIN_LOGIN { Some(owner.uuid) } else { self.cns_admin().await? };
        let Some(dns) = self.cns_dns(admin) else { return Ok(None) };
        let account = CnsAccount { uuid: owner.uuid, login: owner.login.clone(), cns_enabled: true };
        Ok(Some(nereid_cns::dns_names(&dns, &account, &inst)))
    }

    /// The admin account's UUID, if it exists.
    async fn cns_admin(&self) -> Result<Option<Uuid>, ApiError> {
        match self.find_account(ADMIN_LOGIN).await {
            Ok((a, _)) => Ok(Some(a.uuid)),
            Err(e) if e.status == 404 => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// The zone builder: builds when woken (at most once per [`EVERY`]) and every
/// [`SAFETY_PERIOD`]; publishes only zones that differ from the last built.
pub async fn run(app: Arc<App>, tx: watch::Sender<Arc<ZoneSet>>) {
    let mut last: Option<Zones> = None;
    let mut built_at: Option<tokio::time::Instant> = None;
    loop {
        if let Some(at) = built_at {
            tokio::select! {
                _ = app.cns_notify.notified() => {}
                _ = tokio::time::sleep_until(at + SAFETY_PERIOD) => {}
            }
            // Wake-ups within EVERY of the last build wait for it: they coalesce.
            tokio::time::sleep_until(at + EVERY).await;
        }
        built_at = Some(tokio::time::Instant::now());
        // The build reads the ACME records after this: it holds at least this generation.
        let acme_generation = app.cfg.cns.as_ref().map(|c| c.acme_txt.snapshot().0);
        match app.cns_zones().await {
            Ok(Some(zones)) => {
                if last.as_ref() != Some(&zones) {
                    let changed = nereid_cns::publish(&tx, zones.clone());
                    if !changed.is_empty() {
                        tracing::debug!(?changed, "cns: zones published");
                    }
                    last = Some(zones);
                }
                if let (Some(c), Some(g)) = (&app.cfg.cns, acme_generation) {
                    c.acme_txt.mark_published(g);
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e.message, "cns: building the zones failed; trying again when woken or in 30 s"),
        }
    }
}

/// Starts the builder and the DNS server on sockets from [`bind`]; returns the two tasks.
pub fn spawn(app: &Arc<App>, cfg: &CnsConfig, udp: UdpSocket, tcp: TcpListener) -> [tokio::task::JoinHandle<()>; 2] {
    let (tx, rx) = nereid_cns::channel();
    let builder = tokio::spawn(run(app.clone(), tx));
    let [public, private] = cfg.dns.zones();
    tracing::info!(addr = ?udp.local_addr().ok(), public, private, "CNS: serving instance DNS");
    let server = tokio::spawn(nereid_cns::serve(Arc::new(cfg.dns.clone()), udp, tcp, rx));
    [builder, server]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_addresses_are_the_reserved_ranges() {
        for ip in [
            "10.1.2.3",
            "172.16.0.1",
            "192.168.128.5",
            "100.64.0.1",
            "100.127.255.254",
            "169.254.1.1",
            "127.0.0.1",
            "fd00::1",
            "fe80::1",
            "::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(is_private(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["198.51.100.7", "8.8.8.8", "100.128.0.1", "100.63.255.255", "172.32.0.1", "2001:db8::1", "::ffff:203.0.113.9"] {
            assert!(!is_private(ip.parse().unwrap()), "{ip}");
        }
    }

    #[tokio::test]
    async fn acme_txt_records_go_to_their_zone_and_are_waited_for() {
        let txt = AcmeTxt::default();
        let g1 = txt.add("_acme-challenge.API.dc1.example.com", "v1");
        let g2 = txt.add("_acme-challenge.api.dc1.example.com", "v2");
        txt.add("_acme-challenge.other.example", "lost");
        assert!(g2 > g1);
        let mut zones: Zones = ["dc1.example.com", "dc1.cns.example.com"].iter().map(|z| (z.to_string(), Default::default())).collect();
        let (generation, records) = txt.snapshot();
        add_acme_txt(&mut zones, &records, 30);
        let names: Vec<_> = zones["dc1.example.com"].iter().map(|r| (r.name.as_str(), r.data.clone())).collect();
        let name = "_acme-challenge.api.dc1.example.com";
        assert_eq!(names, [(name, nereid_cns::Data::Txt("v1".into())), (name, nereid_cns::Data::Txt("v2".into()))]);
        assert!(zones["dc1.cns.example.com"].is_empty(), "a name outside every zone is left out");
        // Waiting ends once a build at that generation (or a later one) is published.
        let waiter = tokio::time::timeout(Duration::from_millis(50), txt.published(g2)).await;
        assert!(waiter.is_err(), "nothing published yet");
        txt.mark_published(generation);
        tokio::time::timeout(Duration::from_secs(5), txt.published(g2)).await.unwrap();
        txt.remove(name);
        assert!(!txt.snapshot().1.contains_key(name));
    }

    #[test]
    fn flags_parse_lists_of_blocks_and_peers() {
        let nets = parse_cidrs("10.0.0.0/8, 192.0.2.7,2001:db8::/32").unwrap();
        assert_eq!(nets.iter().map(ToString::to_string).collect::<Vec<_>>(), ["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32"]);
        assert!(parse_cidrs("10.0.0.0/33").unwrap_err().contains("10.0.0.0/33"));
        let peers = parse_peers("192.0.2.1,192.0.2.2:5353,[2001:db8::1]:53").unwrap();
        assert_eq!(peers.iter().map(ToString::to_string).collect::<Vec<_>>(), ["192.0.2.1:53", "192.0.2.2:5353", "[2001:db8::1]:53"]);
        assert!(parse_peers("ns1.example.com").is_err());
    }

    #[test]
    fn instances_come_from_active_placed_vms() {
        let (owner, server, fabric, ext) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3), Uuid::from_u128(4));
        let networks: HashMap<Uuid, NetInfo> = [
            (fabric, NetInfo { name: "My Net".into(), owner_uuids: Some(vec![owner]) }),
            (ext, NetInfo { name: "external".into(), owner_uuids: None }),
        ]
        .into_iter()
        .collect();
        let vm: CnsVm = serde_json::from_value(json!({"uuid": Uuid::from_u128(9), "alias": "web1", "owner_uuid": owner,
            "state": "running", "server_uuid": server, "tags": {"triton.cns.services": "web:80"},
            "nics": [{"ip": "192.168.1.5", "network_uuid": fabric}, {"ip": "203.0.113.5", "network_uuid": ext}, {"network_uuid": ext}]}))
        .unwrap();
        let up: HashSet<Uuid> = [server].into_iter().collect();
        let i = instance(&vm, &networks, &up).unwrap();
        assert!(i.running && i.server_up);
        assert_eq!(i.nics.len(), 2, "a NIC without an address has no names");
        assert_eq!((i.nics[0].public, i.nics[0].owner_network, i.nics[0].network_name.as_str()), (false, true, "My Net"));
        assert_eq!((i.nics[1].public, i.nics[1].owner_network), (true, false));
        assert!(!instance(&vm, &networks, &HashSet::new()).unwrap().server_up);
        let mut stopped = vm.clone();
        stopped.state = Some("stopped".into());
        assert!(!instance(&stopped, &networks, &up).unwrap().running);
        for (field, value) in
            [("state", json!("destroyed")), ("state", json!("failed")), ("server_uuid", Value::Null), ("owner_uuid", Value::Null)]
        {
            let mut v = serde_json::to_value(CnsVmJson::from(&vm)).unwrap();
            v[field] = value;
            let v: CnsVm = serde_json::from_value(v).unwrap();
            assert!(instance(&v, &networks, &up).is_none(), "{field}");
        }
    }

    /// A [`CnsVm`] back as JSON (for the table above).
    #[derive(serde::Serialize)]
    struct CnsVmJson {
        uuid: Uuid,
        owner_uuid: Option<Uuid>,
        state: Option<String>,
        server_uuid: Option<Uuid>,
    }

    impl From<&CnsVm> for CnsVmJson {
        fn from(v: &CnsVm) -> Self {
            CnsVmJson { uuid: v.uuid, owner_uuid: v.owner_uuid, state: v.state.clone(), server_uuid: v.server_uuid }
        }
    }
}
