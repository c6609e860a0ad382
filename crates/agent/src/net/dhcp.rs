//! DHCP answers for one NIC, computed (pure) from its NAPI record.
//!
//! Triton's DHCP serves only guests that run its guest agent; everything else configures
//! itself from `sdc:nics` or spends a second address on an outside DHCP server. Nereid's
//! agent answers every guest, but only with what NAPI already assigned: one responder per
//! tap, one [`Lease`] per NIC, no pool. A request from any other MAC, or for any other
//! address, gets no address (a request for another address is refused with a NAK, so the
//! client starts over and gets the right one).
//!
//! ```text
//!   DISCOVER ─► OFFER  (yiaddr = the NIC's IP, with mask, router, DNS, routes, MTU, hostname)
//!   REQUEST  ─► ACK    when it asks for that IP (from us, or from no server in particular)
//!            ─► NAK    when it asks for another IP
//!            ─► —      when it chose another server
//!   INFORM   ─► ACK    (options only)
//!   RELEASE, DECLINE ─► —
//! ```
//! The codec is `dhcproto`'s; framing (Ethernet/IPv4/UDP) lives in `packet`.

use std::net::Ipv4Addr;

use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode};
use ipnet::Ipv4Net;
use nereid_types::agent::{Definition, NicDef};
use serde_json::Value;

/// How long a lease lasts. A NIC keeps its address for its whole life, so this only bounds
/// how late a guest learns of a change NAPI made (renewals come at half of it).
pub const LEASE_SECS: u32 = 3600;

/// The server identifier when the network has no gateway: a link-local address, never a
/// guest's. Guests renew by unicast to it; the responder sees every frame the guest sends,
/// whatever its destination, so renewals still reach it.
pub const NO_GATEWAY_SERVER_ID: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

/// Everything one NIC is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub mac: [u8; 6],
    pub ip: Ipv4Addr,
    pub prefix: u8,
    /// The default route (primary NIC only).
    pub router: Option<Ipv4Addr>,
    pub server_id: Ipv4Addr,
    pub resolvers: Vec<Ipv4Addr>,
    /// Static routes (option 121): destination → gateway (`0.0.0.0` = on this link).
    pub routes: Vec<(Ipv4Net, Ipv4Addr)>,
    pub mtu: u16,
    pub hostname: Option<String>,
    pub lease_secs: u32,
}

/// Parses `aa:bb:cc:dd:ee:ff` (or without colons).
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let hex: String = s.chars().filter(|c| *c != ':' && *c != '-').collect();
    if hex.len() != 12 {
        return None;
    }
    let mut out = [0u8; 6];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn prefix_of(netmask: &str) -> Option<u8> {
    let m = u32::from(netmask.parse::<Ipv4Addr>().ok()?);
    // A netmask is ones then zeros.
    (m.leading_ones() + m.trailing_zeros() == 32).then_some(m.leading_ones() as u8)
}

/// The lease a NIC gets, or why it gets none (no IPv4 address, `dhcp`, a bad netmask…).
pub fn lease_for(def: &Definition, nic: &NicDef) -> Result<Lease, String> {
    let mac = parse_mac(&nic.mac).ok_or_else(|| format!("NIC MAC {:?} is not a MAC address", nic.mac))?;
    let ip: Ipv4Addr = match nic.ip.as_deref() {
        None | Some("dhcp") | Some("") => return Err(format!("NIC {} has no address of its own", nic.mac)),
        Some(s) => s.parse().map_err(|_| format!("NIC {} address {s:?} is not IPv4", nic.mac))?,
    };
    let prefix = match nic.netmask.as_deref() {
        Some(m) => prefix_of(m).ok_or_else(|| format!("NIC {} netmask {m:?} is not a netmask", nic.mac))?,
        None => 32,
    };
    let net = Ipv4Net::new(ip, prefix).map_err(|e| e.to_string())?.trunc();
    let gateway = nic.gateway.as_deref().and_then(|g| g.parse::<Ipv4Addr>().ok()).filter(|g| net.contains(g) && *g != ip);
    let router = gateway.filter(|_| nic.primary || def.nics.len() == 1);
    let resolvers = nic.resolvers.iter().chain(def.resolvers.iter()).filter_map(|r| r.parse().ok()).fold(Vec::new(), |mut v, r| {
        if !v.contains(&r) && v.len() < 4 {
            v.push(r);
        }
        v
    });
    let mut routes = Vec::new();
    for (dst, via) in nic.routes.iter().flatten().chain(def.routes.iter().flatten()) {
        let Some(dst) = route_destination(dst) else { continue };
        let Some(via) = route_gateway(via, nic, net) else { continue };
        if !routes.iter().any(|(d, _)| *d == dst) {
            routes.push((dst, via));
        }
    }
    // A client that gets option 121 ignores option 3 (RFC 3442): carry the default route too.
    if let (Some(r), false) = (router, routes.is_empty()) {
        routes.push((Ipv4Net::default(), r));
    }
    let hostname = def.hostname.clone().or_else(|| def.alias.clone()).filter(|h| !h.is_empty() && (nic.primary || def.nics.len() == 1));
    Ok(Lease {
        mac,
        ip,
        prefix,
        router,
        server_id: gateway.unwrap_or(NO_GATEWAY_SERVER_ID),
        resolvers,
        routes,
        mtu: u16::try_from(nic.mtu).unwrap_or(u16::MAX).max(576),
        hostname,
        lease_secs: LEASE_SECS,
    })
}

fn route_destination(dst: &str) -> Option<Ipv4Net> {
    if let Ok(n) = dst.parse::<Ipv4Net>() {
        return Some(n.trunc());
    }
    dst.parse::<Ipv4Addr>().ok().map(Ipv4Net::from)
}

/// A route's gateway as this NIC sees it: an address on its subnet, or `0.0.0.0` for a
/// link-local route through this very NIC (`nics[N]`, `macs[MAC]`); other NICs' routes
/// are not this NIC's to announce.
fn route_gateway(via: &Value, nic: &NicDef, net: Ipv4Net) -> Option<Ipv4Addr> {
    let via = via.as_str()?;
    if let Some(m) = via.strip_prefix("macs[").and_then(|s| s.strip_suffix(']')) {
        return (parse_mac(m)? == parse_mac(&nic.mac)?).then_some(Ipv4Addr::UNSPECIFIED);
    }
    if let Some(n) = via.strip_prefix("nics[").and_then(|s| s.strip_suffix(']')) {
        return (format!("net{n}") == nic.interface).then_some(Ipv4Addr::UNSPECIFIED);
    }
    via.parse::<Ipv4Addr>().ok().filter(|g| net.contains(g))
}

/// Where a reply goes at the IP layer (RFC 2131 4.1): back to `ciaddr` if the client has
/// one, else broadcast if it asked for it, else to the address being handed out.
pub fn reply_destination(req: &Message, reply: &Message) -> Ipv4Addr {
    if !req.ciaddr().is_unspecified() {
        req.ciaddr()
    } else if req.flags().broadcast() || reply.opts().msg_type() == Some(MessageType::Nak) {
        Ipv4Addr::BROADCAST
    } else {
        reply.yiaddr()
    }
}

/// The answer to one request, or `None` when it gets none.
pub fn answer(lease: &Lease, req: &Message) -> Option<Message> {
    if req.opcode() != Opcode::BootRequest || req.chaddr().get(..6) != Some(&lease.mac[..]) {
        return None;
    }
    let kind = req.opts().msg_type()?;
    let (reply_type, with_address) = match kind {
        MessageType::Discover => (MessageType::Offer, true),
        MessageType::Request => {
            let ours = match req.opts().get(OptionCode::ServerIdentifier) {
                Some(DhcpOption::ServerIdentifier(s)) => *s == lease.server_id,
                _ => true,
            };
            if !ours {
                return None;
            }
            let wanted = match req.opts().get(OptionCode::RequestedIpAddress) {
                Some(DhcpOption::RequestedIpAddress(ip)) => *ip,
                _ => req.ciaddr(),
            };
            if wanted == lease.ip { (MessageType::Ack, true) } else { (MessageType::Nak, false) }
        }
        MessageType::Inform => (MessageType::Ack, false),
        _ => return None,
    };
    let yiaddr = if with_address { lease.ip } else { Ipv4Addr::UNSPECIFIED };
    let mut m = Message::new_with_id(req.xid(), req.ciaddr(), yiaddr, Ipv4Addr::UNSPECIFIED, req.giaddr(), &lease.mac);
    m.set_opcode(Opcode::BootReply).set_flags(Flags::new(u16::from(req.flags()))).set_htype(req.htype());
    if reply_type == MessageType::Nak {
        m.set_ciaddr(Ipv4Addr::UNSPECIFIED);
    }
    let o = m.opts_mut();
    o.insert(DhcpOption::MessageType(reply_type));
    o.insert(DhcpOption::ServerIdentifier(lease.server_id));
    if reply_type == MessageType::Nak {
        return Some(m);
    }
    if with_address {
        o.insert(DhcpOption::AddressLeaseTime(lease.lease_secs));
        o.insert(DhcpOption::Renewal(lease.lease_secs / 2));
        o.insert(DhcpOption::Rebinding(lease.lease_secs / 8 * 7));
    }
    o.insert(DhcpOption::SubnetMask(Ipv4Net::new(lease.ip, lease.prefix).map(|n| n.netmask()).unwrap_or(Ipv4Addr::BROADCAST)));
    if let Some(r) = lease.router {
        o.insert(DhcpOption::Router(vec![r]));
    }
    if !lease.resolvers.is_empty() {
        o.insert(DhcpOption::DomainNameServer(lease.resolvers.clone()));
    }
    if !lease.routes.is_empty() {
        o.insert(DhcpOption::ClasslessStaticRoute(lease.routes.clone()));
    }
    o.insert(DhcpOption::InterfaceMtu(lease.mtu));
    if let Some(h) = &lease.hostname {
        o.insert(DhcpOption::Hostname(h.clone()));
    }
    Some(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dhcproto::{Decodable, Decoder, Encodable};
    use serde_json::json;

    fn def(nics: Value) -> Definition {
        serde_json::from_value(json!({
            "uuid": "6f3d3f1c-8a51-4e43-9b8c-2f0f5d7c9a10", "brand": "bhyve", "owner_uuid": uuid::Uuid::nil(), "hostname": "web-1",
            "ram": 1, "vcpus": 1, "disks": [], "nics": nics, "resolvers": ["10.88.0.1", "1.1.1.1"]}))
        .unwrap()
    }

    fn nic(extra: Value) -> Value {
        let mut n = json!({"mac": "90:b8:d0:11:22:33", "interface": "net0", "ip": "10.88.0.10", "netmask": "255.255.255.0",
            "gateway": "10.88.0.1", "vlan_id": 0, "nic_tag": "external", "mtu": 1500, "primary": true, "model": "virtio",
            "resolvers": ["10.88.0.1"]});
        for (k, v) in extra.as_object().unwrap() {
            n[k] = v.clone();
        }
        n
    }

    fn request(kind: MessageType, mac: [u8; 6], extra: &[DhcpOption]) -> Message {
        let z = Ipv4Addr::UNSPECIFIED;
        let mut m = Message::new_with_id(0x1234_5678, z, z, z, z, &mac);
        m.opts_mut().insert(DhcpOption::MessageType(kind));
        for o in extra {
            m.opts_mut().insert(o.clone());
        }
        // Through the wire format and back, as the responder sees it.
        let bytes = m.to_vec().unwrap();
        Message::decode(&mut Decoder::new(&bytes)).unwrap()
    }

    const MAC: [u8; 6] = [0x90, 0xb8, 0xd0, 0x11, 0x22, 0x33];

    #[test]
    fn the_nic_gets_exactly_its_napi_address_and_options() {
        let d = def(json!([nic(json!({"mtu": 9000}))]));
        let lease = lease_for(&d, &d.nics[0]).unwrap();
        let offer = answer(&lease, &request(MessageType::Discover, MAC, &[])).unwrap();
        assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
        assert_eq!((offer.yiaddr(), offer.xid(), offer.opcode()), ("10.88.0.10".parse().unwrap(), 0x1234_5678, Opcode::BootReply));
        let o = offer.opts();
        assert_eq!(o.get(OptionCode::SubnetMask), Some(&DhcpOption::SubnetMask("255.255.255.0".parse().unwrap())));
        assert_eq!(o.get(OptionCode::Router), Some(&DhcpOption::Router(vec!["10.88.0.1".parse().unwrap()])));
        assert_eq!(
            o.get(OptionCode::DomainNameServer),
            Some(&DhcpOption::DomainNameServer(vec!["10.88.0.1".parse().unwrap(), "1.1.1.1".parse().unwrap()]))
        );
        assert_eq!(o.get(OptionCode::InterfaceMtu), Some(&DhcpOption::InterfaceMtu(9000)));
        assert_eq!(o.get(OptionCode::Hostname), Some(&DhcpOption::Hostname("web-1".into())));
        assert_eq!(o.get(OptionCode::AddressLeaseTime), Some(&DhcpOption::AddressLeaseTime(LEASE_SECS)));
        assert_eq!(o.get(OptionCode::ServerIdentifier), Some(&DhcpOption::ServerIdentifier("10.88.0.1".parse().unwrap())));
        assert!(o.get(OptionCode::ClasslessStaticRoute).is_none());
        // The reply survives the codec.
        let bytes = offer.to_vec().unwrap();
        assert_eq!(Message::decode(&mut Decoder::new(&bytes)).unwrap(), offer);
        let ack = answer(&lease, &request(MessageType::Request, MAC, &[DhcpOption::RequestedIpAddress(lease.ip)])).unwrap();
        assert_eq!((ack.opts().msg_type(), ack.yiaddr()), (Some(MessageType::Ack), lease.ip));
    }

    #[test]
    fn other_macs_other_addresses_and_other_servers_get_nothing_of_ours() {
        let d = def(json!([nic(json!({}))]));
        let lease = lease_for(&d, &d.nics[0]).unwrap();
        let stranger = [0x02, 0, 0, 0, 0, 1];
        assert!(answer(&lease, &request(MessageType::Discover, stranger, &[])).is_none());
        let wrong = request(MessageType::Request, MAC, &[DhcpOption::RequestedIpAddress("10.88.0.99".parse().unwrap())]);
        let nak = answer(&lease, &wrong).unwrap();
        assert_eq!((nak.opts().msg_type(), nak.yiaddr()), (Some(MessageType::Nak), Ipv4Addr::UNSPECIFIED));
        assert_eq!(reply_destination(&wrong, &nak), Ipv4Addr::BROADCAST);
        let elsewhere = request(
            MessageType::Request,
            MAC,
            &[DhcpOption::RequestedIpAddress(lease.ip), DhcpOption::ServerIdentifier("10.88.0.254".parse().unwrap())],
        );
        assert!(answer(&lease, &elsewhere).is_none());
        assert!(answer(&lease, &request(MessageType::Release, MAC, &[])).is_none());
        let inform = answer(&lease, &request(MessageType::Inform, MAC, &[])).unwrap();
        assert_eq!((inform.opts().msg_type(), inform.yiaddr()), (Some(MessageType::Ack), Ipv4Addr::UNSPECIFIED));
        assert!(inform.opts().get(OptionCode::AddressLeaseTime).is_none());
    }

    #[test]
    fn routes_carry_the_default_route_and_only_this_nics_link_local_ones() {
        let d = def(json!([
            nic(json!({"routes": {"10.99.0.0/16": "10.88.0.254", "10.77.0.0/16": "nics[0]", "10.66.0.0/16": "nics[1]",
                "172.16.0.0/12": "192.168.0.1", "10.55.0.5": "macs[90:b8:d0:11:22:33]"}})),
            nic(json!({"mac": "90:b8:d0:44:55:66", "interface": "net1", "ip": "10.89.0.10", "gateway": "10.89.0.1", "primary": false}))
        ]));
        let lease = lease_for(&d, &d.nics[0]).unwrap();
        let r = |s: &str, g: &str| (s.parse::<Ipv4Net>().unwrap(), g.parse::<Ipv4Addr>().unwrap());
        assert_eq!(
            lease.routes,
            vec![r("10.99.0.0/16", "10.88.0.254"), r("10.77.0.0/16", "0.0.0.0"), r("10.55.0.5/32", "0.0.0.0"), r("0.0.0.0/0", "10.88.0.1")]
        );
        // The second NIC: no default route, no hostname (the primary has them).
        let second = lease_for(&d, &d.nics[1]).unwrap();
        assert_eq!((second.router, second.hostname.as_deref(), second.server_id), (None, None, "10.89.0.1".parse().unwrap()));
    }

    #[test]
    fn nics_without_an_address_of_their_own_get_no_lease() {
        for extra in [json!({"ip": "dhcp"}), json!({"ip": null}), json!({"ip": "fd00::1"}), json!({"netmask": "255.0.255.0"})] {
            let d = def(json!([nic(extra.clone())]));
            assert!(lease_for(&d, &d.nics[0]).is_err(), "{extra}");
        }
        let d = def(json!([nic(json!({"gateway": null}))]));
        let lease = lease_for(&d, &d.nics[0]).unwrap();
        assert_eq!((lease.router, lease.server_id), (None, NO_GATEWAY_SERVER_ID));
        assert_eq!(parse_mac("90b8d0112233"), Some(MAC));
        assert_eq!(parse_mac("90:b8:d0:11:22"), None);
    }
}
