//! Guest networking on a compute node: which bridge carries each nic tag, a tap per VM
//! NIC on it, a DHCP responder per tap, and the anti-spoofing filter — all derived from
//! the definitions of the VMs that run here.
//!
//! ```text
//!   --nic-tag TAG=BRIDGE      NICs of TAG go on BRIDGE (made if missing)
//!   --nic-tag TAG=link:ETH    Nereid makes a bridge for TAG and plugs ETH into it
//!   nereid up's managed tag   a bridge on this host alone (no uplink)
//!   (tag not listed)          a bridge named like the tag if there is one, else isolated
//!   VLAN N of a tag           a bridge of its own (`links::vlan_bridge`), uplinked through
//!                             an 802.1Q interface on the tag's link or bridge
//!
//!   VM start:  taps (links) ─► responders (responder, dhcp, packet) ─► filter table (filter)
//!   VM stop:   responders stop, taps go, filter table rewritten without them
//!   agent start: `adopt` the running VMs — taps re-plugged, responders and filters
//!                restored, taps and rules of VMs that no longer run removed
//! ```
//! The host state is always recomputed from the set of plugged NICs, so every operation
//! can be repeated and a restart converges instead of duplicating.
//! `managed` is the bridge with a gateway address and NAT that `nereid up` owns.
//!
//! Fabrics (NICs with a `vni`, nic tag `sdc_overlay`): a bridge and VXLAN device per
//! segment over the underlay nic tag (`overlay`), a NAT gateway per segment with an
//! `internet_nat` network (`fabric_gw`); both follow the plugged NICs. The headnode's
//! [`NetPolicy`] ([`Net::apply_policy`]) gives each segment's peers and the VMs'
//! firewalls (`firewall`, a table of its own beside the anti-spoofing one).
//!
//! ```text
//!   every change (attach, refresh, detach, adopt, policy) ─► converge, one at a time:
//!     anti-spoofing table, firewall table, NAT gateways, segments nobody uses removed
//! ```

pub mod dhcp;
pub mod fabric_gw;
pub mod filter;
pub mod firewall;
pub mod links;
pub mod managed;
pub mod overlay;
pub mod packet;
pub mod responder;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use nereid_types::agent::{Definition, NicDef, Problem};
use nereid_types::netpolicy::NetPolicy;
use uuid::Uuid;

use filter::Port;
use responder::{Counters, Responder};

/// Where a nic tag's NICs go on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Uplink {
    /// A bridge (the operator's, or one Nereid makes if it does not exist).
    Bridge(String),
    /// A physical (or any) link that Nereid bridges: a bridge named [`link_bridge`] with
    /// the link as its trunk port.
    Link(String),
    /// A bridge on this host alone (`nereid up`'s managed bridge): its VLANs go nowhere else.
    Local(String),
}

impl Uplink {
    /// The interface named on the command line.
    pub fn name(&self) -> &str {
        match self {
            Uplink::Bridge(n) | Uplink::Link(n) | Uplink::Local(n) => n,
        }
    }
}

/// Parses `TAG=BRIDGE` or `TAG=link:IFACE`.
pub fn parse_nic_tag(s: &str) -> Result<(String, Uplink), String> {
    let (tag, what) = s.split_once('=').ok_or_else(|| format!("--nic-tag {s:?}: expected TAG=BRIDGE or TAG=link:IFACE"))?;
    if tag.is_empty() || !tag.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return Err(format!("--nic-tag {s:?}: {tag:?} is not a nic tag name (letters, digits, _ and -)"));
    }
    let uplink = match what.strip_prefix("link:") {
        Some(link) => Uplink::Link(link.to_string()),
        None => Uplink::Bridge(what.to_string()),
    };
    let name = uplink.name();
    if !links::valid_name(name) {
        return Err(format!("--nic-tag {s:?}: {name:?} is not an interface name (1-15 characters, no / or spaces)"));
    }
    Ok((tag.to_string(), uplink))
}

/// The bridge Nereid makes for `--nic-tag TAG=link:IFACE`.
pub fn link_bridge(tag: &str) -> String {
    let mut b = format!("nb-{tag}");
    b.truncate(15);
    b
}

/// The tap device of NIC `i` of a VM (≤ 15 characters, as Linux requires).
pub fn tap_name(vm: Uuid, i: usize) -> String {
    format!("nt{}{i:x}", &vm.simple().to_string()[..8])
}

/// The prefix of every tap Nereid makes.
pub const TAP_PREFIX: &str = "nt";

/// How a NIC is wired into the VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attach {
    /// A tap on the tag's bridge.
    Tap(String),
    /// No bridge for the tag here: the guest sees a link with nothing behind it.
    Isolated,
}

/// The networking of one compute node.
pub struct Net {
    tags: Vec<(String, Uplink)>,
    /// Per VM: the ports plugged for it.
    plugged: Mutex<BTreeMap<Uuid, Vec<Port>>>,
    responders: Mutex<BTreeMap<String, Responder>>,
    /// Changes one at a time (plugging, policies, rewrites), each from the latest state.
    apply: tokio::sync::Mutex<Written>,
    /// The nic tag whose link carries the fabrics' VXLAN traffic.
    underlay_tag: String,
    /// Keeps this node's gateway namespaces apart from another agent's on the machine.
    node_suffix: String,
    /// While `adopt` re-plugs the running VMs one by one, the segments and gateways of
    /// those not re-plugged yet stay (they are pruned once all are).
    adopting: std::sync::atomic::AtomicBool,
    /// The network policy the headnode pushed last (overlay peers, firewalls).
    policy: Mutex<NetPolicy>,
    pub counters: Arc<Counters>,
}

/// Which of the agent's tables were written (a host whose VMs never had a tap, a firewall
/// or a gateway is left untouched).
#[derive(Debug, Default)]
struct Written {
    filter: bool,
    firewall: bool,
    gateways: bool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Net {
    pub fn new(tags: Vec<(String, Uplink)>) -> Self {
        Net {
            tags,
            plugged: Mutex::new(BTreeMap::new()),
            responders: Mutex::new(BTreeMap::new()),
            apply: tokio::sync::Mutex::new(Written::default()),
            underlay_tag: overlay::DEFAULT_UNDERLAY_TAG.to_string(),
            node_suffix: fabric_gw::node_suffix(),
            adopting: std::sync::atomic::AtomicBool::new(false),
            policy: Mutex::new(NetPolicy::default()),
            counters: Arc::default(),
        }
    }

    /// The nic tag whose link carries the fabrics' VXLAN traffic (default
    /// [`overlay::DEFAULT_UNDERLAY_TAG`]; `--fabric-underlay-tag`).
    pub fn with_underlay_tag(mut self, tag: &str) -> Self {
        self.underlay_tag = tag.to_string();
        self
    }

    /// Where this node's VXLAN traffic goes out: the underlay tag's bridge or link with
    /// its first IPv4 address (never made here: the operator's link keeps its address).
    pub async fn underlay(&self) -> Result<overlay::Underlay, String> {
        let tag = &self.underlay_tag;
        let Some((_, uplink)) = self.tags.iter().find(|(t, _)| t == tag) else {
            return Err(format!(
                "fabric NICs need the underlay nic tag {tag:?} (--fabric-underlay-tag), which this server does not have (add --nic-tag {tag}=IFACE)"
            ));
        };
        let candidates = match uplink {
            Uplink::Link(l) => vec![link_bridge(tag), l.clone()],
            Uplink::Bridge(b) | Uplink::Local(b) => vec![b.clone()],
        };
        for c in candidates.iter().filter(|c| links::exists(c)) {
            if let Some(local) = links::ipv4_address(c).await {
                return Ok(overlay::Underlay { dev: c.clone(), local });
            }
        }
        Err(format!("the underlay nic tag {tag:?} ({}) has no IPv4 address on this server", uplink.name()))
    }

    /// The bridge that carries VLAN `vlan_id` of `tag` here, made ready; `None` when the
    /// tag has none (NICs on it are isolated).
    async fn bridge_for(&self, tag: &str, vlan_id: u16) -> Result<Option<String>, String> {
        let (base, uplink) = match self.tags.iter().find(|(t, _)| t == tag).map(|(_, u)| u) {
            Some(Uplink::Bridge(b)) if links::exists(b) && !links::is_bridge(b) => {
                tracing::warn!(tag, iface = %b, "nic tag {tag:?} is on {b:?}, which is not a bridge: its NICs are isolated (use {tag}=link:{b} to bridge it)");
                return Ok(None);
            }
            Some(Uplink::Bridge(b)) => (b.clone(), Some(b.clone())),
            Some(Uplink::Local(b)) => (b.clone(), None),
            Some(Uplink::Link(l)) => {
                if !links::exists(l) {
                    return Err(format!("nic tag {tag:?}: link {l} does not exist on this server"));
                }
                let b = link_bridge(tag);
                links::ensure_bridge(&b).await?;
                if links::master(l).as_deref() != Some(b.as_str()) {
                    links::run("ip", &["link", "set", "dev", l, "master", &b]).await?;
                }
                links::run("ip", &["link", "set", "dev", l, "up"]).await?;
                (b, Some(l.clone()))
            }
            None if links::is_bridge(tag) => (tag.to_string(), Some(tag.to_string())),
            None => return Ok(None),
        };
        links::ensure_bridge(&base).await?;
        if vlan_id == 0 {
            return Ok(Some(base));
        }
        let vb = links::vlan_bridge(&base, vlan_id);
        links::ensure_bridge(&vb).await?;
        if let Some(up) = uplink {
            links::ensure_vlan_port(&up, vlan_id, &vb).await.map_err(|e| format!("VLAN {vlan_id} of nic tag {tag:?}: {e}"))?;
        }
        Ok(Some(vb))
    }

    /// Makes the host side of every NIC of `def` (taps, DHCP, filters); how each attaches,
    /// in `def.nics` order. Existing taps are re-plugged, not re-made (an adopted VM's).
    pub async fn attach(&self, def: &Definition) -> Result<Vec<Attach>, String> {
        self.attach_as(def, None).await
    }

    /// [`Net::attach`], with taps that belong to `owner` (the uid of the VM's QEMU, which
    /// then opens them without `CAP_NET_ADMIN`); `None` keeps existing taps as they are.
    pub async fn attach_as(&self, def: &Definition, owner: Option<u32>) -> Result<Vec<Attach>, String> {
        let mut written = self.apply.lock().await;
        let mut out = Vec::new();
        let mut ports = Vec::new();
        for (i, n) in def.nics.iter().enumerate() {
            let bridge = match n.vni {
                Some(vni) => {
                    let u = self.underlay().await.map_err(|e| format!("NIC {} on fabric segment {vni}: {e}", n.mac))?;
                    let peers = lock(&self.policy).overlays.get(&vni).cloned().unwrap_or_default();
                    Some(overlay::ensure(vni, &u, n.mtu, &peers).await?)
                }
                None => self.bridge_for(&n.nic_tag, n.vlan_id).await?,
            };
            let Some(bridge) = bridge else {
                tracing::warn!(vm = %def.uuid, nic = %n.mac, tag = %n.nic_tag, "nic tag {:?} has no bridge here: the NIC is isolated", n.nic_tag);
                out.push(Attach::Isolated);
                continue;
            };
            let tap = tap_name(def.uuid, i);
            if owner.is_some() {
                links::open_tun_to_owners()?;
            }
            links::ensure_tap(&tap, &bridge, n.mtu, owner).await?;
            ports.push(Port { tap: tap.clone(), nic: n.clone() });
            out.push(Attach::Tap(tap));
        }
        self.set_ports(def, ports, &mut written).await?;
        Ok(out)
    }

    /// Applies changes that need no restart (`allow_*` flags, leases) to a VM whose taps exist.
    pub async fn refresh(&self, def: &Definition) -> Result<(), String> {
        let mut written = self.apply.lock().await;
        let taps: Vec<String> = lock(&self.plugged).get(&def.uuid).map(|p| p.iter().map(|p| p.tap.clone()).collect()).unwrap_or_default();
        let ports = def
            .nics
            .iter()
            .enumerate()
            .map(|(i, n)| Port { tap: tap_name(def.uuid, i), nic: n.clone() })
            .filter(|p| taps.contains(&p.tap))
            .collect();
        self.set_ports(def, ports, &mut written).await
    }

    async fn set_ports(&self, def: &Definition, ports: Vec<Port>, written: &mut Written) -> Result<(), String> {
        self.set_responders(def, &ports);
        lock(&self.plugged).insert(def.uuid, ports);
        self.converge(written).await
    }

    fn set_responders(&self, def: &Definition, ports: &[Port]) {
        let mut rs = lock(&self.responders);
        let prefix = &tap_name(def.uuid, 0)[..10];
        let mine: Vec<String> = rs.keys().filter(|t| t.starts_with(prefix)).cloned().collect();
        let mut keep = Vec::new();
        for p in ports {
            if !p.nic.dhcp_server || p.nic.allow_dhcp_spoofing {
                continue;
            }
            let lease = match dhcp::lease_for(def, &p.nic) {
                Ok(l) => l,
                Err(why) => {
                    tracing::info!(vm = %def.uuid, nic = %p.nic.mac, "no DHCP for this NIC: {why}");
                    continue;
                }
            };
            keep.push(p.tap.clone());
            match rs.get(&p.tap) {
                Some(r) if !r.is_finished() => r.set_lease(lease),
                _ => match Responder::start(&p.tap, lease, self.counters.clone()) {
                    Ok(r) => {
                        rs.insert(p.tap.clone(), r);
                    }
                    Err(e) => tracing::warn!(vm = %def.uuid, tap = %p.tap, error = %e, "the DHCP responder could not start"),
                },
            }
        }
        for t in mine.into_iter().filter(|t| !keep.contains(t)) {
            rs.remove(&t);
        }
    }

    /// Makes the host's tables, gateways and segments match the plugged NICs and the
    /// policy; every part is tried, the errors are collected.
    async fn converge(&self, written: &mut Written) -> Result<(), String> {
        let plugged: Vec<(Uuid, Port)> = lock(&self.plugged).iter().flat_map(|(vm, ps)| ps.iter().map(move |p| (*vm, p.clone()))).collect();
        let ports: Vec<Port> = plugged.iter().map(|(_, p)| p.clone()).collect();
        let firewalls = lock(&self.policy).firewalls.clone();
        let mut errors = Vec::new();
        if !ports.is_empty() || written.filter || filter::exists().await {
            match filter::apply(&ports).await {
                Ok(()) => written.filter = true,
                Err(e) => errors.push(e),
            }
        }
        let firewalled = plugged.iter().any(|(vm, _)| firewalls.contains_key(vm));
        if firewalled || written.firewall {
            match firewall::apply(&plugged, &firewalls).await {
                Ok(()) => written.firewall = firewalled,
                Err(e) => errors.push(e),
            }
        }
        let prune = !self.adopting.load(std::sync::atomic::Ordering::SeqCst);
        let gws = fabric_gw::wanted(ports.iter().map(|p| &p.nic));
        let had_gateways = written.gateways || !fabric_gw::present(&self.node_suffix).is_empty();
        match fabric_gw::sync(&gws, &self.node_suffix, had_gateways, prune).await {
            Ok(w) => written.gateways = w,
            Err(e) => errors.push(e),
        }
        let used: std::collections::BTreeSet<u32> = ports.iter().filter_map(|p| p.nic.vni).collect();
        for vni in overlay::present().into_iter().filter(|v| prune && !used.contains(v)) {
            tracing::info!(vni, "removing fabric segment devices no NIC here uses any more");
            overlay::remove(vni).await;
        }
        if errors.is_empty() { Ok(()) } else { Err(errors.join("; ")) }
    }

    /// Removes the host side of a VM's NICs: responders, filters, taps.
    pub async fn detach(&self, vm: Uuid, nics: usize) {
        let mut written = self.apply.lock().await;
        let ports = lock(&self.plugged).remove(&vm).unwrap_or_default();
        {
            let mut rs = lock(&self.responders);
            for p in &ports {
                rs.remove(&p.tap);
            }
        }
        for i in 0..nics.max(ports.len()) {
            links::delete(&tap_name(vm, i)).await;
        }
        if let Err(e) = self.converge(&mut written).await {
            tracing::warn!(vm = %vm, error = %e, "rewriting the host networking");
        }
    }

    /// At agent start: restores the host side of the VMs that run (`running`) and removes
    /// what is left of any other (stale taps, rules, responders).
    pub async fn adopt(&self, running: &[Definition]) {
        let keep: Vec<String> = running.iter().flat_map(|d| (0..d.nics.len()).map(|i| tap_name(d.uuid, i))).collect();
        for tap in links::named_like(TAP_PREFIX) {
            if !keep.contains(&tap) && tap.len() == 11 && tap[2..10].chars().all(|c| c.is_ascii_hexdigit()) {
                tracing::info!(tap, "removing the tap of a VM that no longer runs here");
                links::delete(&tap).await;
            }
        }
        lock(&self.plugged).retain(|vm, _| running.iter().any(|d| d.uuid == *vm));
        self.adopting.store(true, std::sync::atomic::Ordering::SeqCst);
        for def in running {
            match self.attach(def).await {
                Ok(_) => tracing::info!(vm = %def.uuid, nics = def.nics.len(), "VM networking restored"),
                Err(e) => tracing::warn!(vm = %def.uuid, error = %e, "restoring the VM's networking"),
            }
        }
        self.adopting.store(false, std::sync::atomic::Ordering::SeqCst);
        // Segments, gateways and tables of VMs that no longer run go now.
        let mut written = self.apply.lock().await;
        if let Err(e) = self.converge(&mut written).await {
            tracing::warn!(error = %e, "rewriting the host networking");
        }
    }

    /// Makes each nic tag's link (and bridge) carry at least the MTU its networks need
    /// (`wanted`, per tag), reading it back: a link that refuses, or silently keeps another
    /// MTU, is a problem for the server record — never a half-made VM later.
    /// The underlay tag must carry the largest fabric MTU (the headnode's for
    /// `sdc_overlay`, or of a fabric NIC plugged here) plus the VXLAN header.
    pub async fn check_mtus(&self, wanted: &BTreeMap<String, u32>) -> Vec<Problem> {
        let wanted = with_underlay(
            wanted,
            &self.underlay_tag,
            lock(&self.plugged).values().flatten().filter(|p| p.nic.vni.is_some()).map(|p| p.nic.mtu),
        );
        let mut out = Vec::new();
        for (tag, uplink) in &self.tags {
            let Some(&want) = wanted.get(tag) else { continue };
            let carriers: Vec<String> = match uplink {
                Uplink::Link(l) if !links::exists(l) => {
                    out.push(problem("nic_tag_link", tag, l, Some(want), None, format!("link {l} does not exist on this server")));
                    continue;
                }
                Uplink::Link(l) => vec![l.clone(), link_bridge(tag)],
                Uplink::Bridge(b) | Uplink::Local(b) => vec![b.clone()],
            };
            for link in carriers.iter().filter(|l| links::exists(l)) {
                if links::mtu(link).is_some_and(|m| m >= want) {
                    continue;
                }
                if let Err(e) = links::set_mtu(link, want).await {
                    let max = links::max_mtu(link).await.map(|m| format!(" (its driver's maximum is {m})")).unwrap_or_default();
                    tracing::warn!(tag, link, want, "{e}");
                    out.push(problem("nic_tag_mtu", tag, link, Some(want), links::mtu(link), format!("{e}{max}")));
                    break;
                }
                tracing::info!(tag, link, mtu = want, "link MTU raised for the nic tag's networks");
            }
        }
        out
    }

    /// Applies the node's network policy whole: it is kept for NICs plugged later too.
    pub async fn apply_policy(&self, p: &NetPolicy) -> Result<(), String> {
        let mut written = self.apply.lock().await;
        *lock(&self.policy) = p.clone();
        let mut errors = Vec::new();
        let used: std::collections::BTreeSet<u32> = lock(&self.plugged).values().flatten().filter_map(|p| p.nic.vni).collect();
        if !used.is_empty() {
            match self.underlay().await {
                Ok(u) => {
                    for vni in used {
                        let peers = p.overlays.get(&vni).cloned().unwrap_or_default();
                        if let Err(e) = overlay::set_peers(vni, &u.local.to_string(), &peers).await {
                            errors.push(format!("fabric segment {vni}: {e}"));
                        }
                    }
                }
                Err(e) => errors.push(e),
            }
        }
        if let Err(e) = self.converge(&mut written).await {
            errors.push(e);
        }
        if errors.is_empty() { Ok(()) } else { Err(errors.join("; ")) }
    }

    /// Per nic tag: the first global IPv4 address of its bridge or link (tags without one
    /// are left out).
    pub async fn nic_tag_addresses(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for (tag, uplink) in &self.tags {
            let candidates = match uplink {
                Uplink::Link(l) => vec![link_bridge(tag), l.clone()],
                Uplink::Bridge(b) | Uplink::Local(b) => vec![b.clone()],
            };
            for c in candidates.iter().filter(|c| links::exists(c)) {
                if let Some(a) = links::ipv4_address(c).await {
                    out.insert(tag.clone(), a.to_string());
                    break;
                }
            }
        }
        out
    }

    /// The taps plugged for a VM (tests, diagnostics).
    pub fn ports(&self, vm: Uuid) -> Vec<Port> {
        lock(&self.plugged).get(&vm).cloned().unwrap_or_default()
    }
}

/// `wanted` with the underlay tag's MTU raised to carry the largest fabric MTU (the
/// overlay tag's, or `fabric_mtus`) plus [`overlay::VXLAN_OVERHEAD`].
pub fn with_underlay(wanted: &BTreeMap<String, u32>, underlay: &str, fabric_mtus: impl Iterator<Item = u32>) -> BTreeMap<String, u32> {
    let mut out = wanted.clone();
    let fabric = wanted.get(overlay::OVERLAY_TAG).copied().into_iter().chain(fabric_mtus).max();
    if let Some(m) = fabric {
        let need = m + overlay::VXLAN_OVERHEAD;
        let e = out.entry(underlay.to_string()).or_insert(need);
        *e = (*e).max(need);
    }
    out
}

fn problem(kind: &str, tag: &str, link: &str, wanted: Option<u32>, actual: Option<u32>, message: String) -> Problem {
    Problem { kind: kind.into(), nic_tag: tag.into(), link: link.into(), wanted_mtu: wanted, actual_mtu: actual, message }
}

/// Whether two NIC lists differ only in what can change while the VM runs (filters, DHCP).
pub fn only_live_changes(old: &[NicDef], new: &[NicDef]) -> bool {
    let wiring = |n: &NicDef| (n.mac.clone(), n.nic_tag.clone(), n.vlan_id, n.mtu, n.model.clone(), n.interface.clone());
    old.len() == new.len() && old.iter().zip(new).all(|(a, b)| wiring(a) == wiring(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nic_tag_flags_parse_with_clear_errors() {
        assert_eq!(parse_nic_tag("external=nereid0").unwrap(), ("external".into(), Uplink::Bridge("nereid0".into())));
        assert_eq!(parse_nic_tag("admin=link:eth1").unwrap(), ("admin".into(), Uplink::Link("eth1".into())));
        for bad in ["external", "=br0", "ext ernal=br0", "external=", "external=link:", "external=a/b", "x=sixteen-chars-xx"] {
            assert!(parse_nic_tag(bad).is_err(), "{bad}");
        }
        assert_eq!(link_bridge("a-very-long-tag-name"), "nb-a-very-long-");
        let vm: Uuid = "6f3d3f1c-8a51-4e43-9b8c-2f0f5d7c9a10".parse().unwrap();
        assert_eq!(tap_name(vm, 11), "nt6f3d3f1cb");
        assert!(tap_name(vm, 15).len() <= 15);
    }

    #[test]
    fn the_underlay_must_carry_the_largest_fabric_mtu_and_the_vxlan_header() {
        let mut w = BTreeMap::new();
        w.insert("external".to_string(), 1500);
        assert_eq!(with_underlay(&w, "sdc_underlay", std::iter::empty()), w, "no fabric, no underlay requirement");
        w.insert("sdc_overlay".to_string(), 8950);
        let got = with_underlay(&w, "sdc_underlay", [1400].into_iter());
        assert_eq!(got.get("sdc_underlay"), Some(&9000));
        assert_eq!(with_underlay(&w, "external", [9000].into_iter()).get("external"), Some(&9050), "the largest wins");
        w.insert("sdc_underlay".to_string(), 9100);
        assert_eq!(with_underlay(&w, "sdc_underlay", std::iter::empty()).get("sdc_underlay"), Some(&9100));
    }
}
