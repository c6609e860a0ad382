//! Answering one DNS request from the published zones, pure: packet in, packets out.
//!
//! * A packet that does not decode gets FORMERR (when it has a query header), never an error;
//!   responses and header-less junk get nothing.
//! * Opcodes other than QUERY: NOTIMP. Not exactly one question: FORMERR.
//! * Names outside our zones: SERVFAIL without AA (as Triton CNS answers).
//! * In a zone (AA set): the records of the asked type; at the apex also SOA and NS. A name
//!   that exists (records, or records below it) without that type: NODATA (NOERROR, SOA in
//!   authority); otherwise NXDOMAIN with the SOA in authority. ANY gets one RRset (RFC 8482's
//!   minimal answer). SRV answers carry their targets' addresses as additional records.
//! * AXFR (TCP) and IXFR: only for `allow_transfer` peers (REFUSED otherwise). AXFR is
//!   SOA, NS, records…, SOA in chunks; IXFR gives the diffs since the client's serial
//!   (RFC 1995), the AXFR form when the history does not reach back, one SOA when the client
//!   is current or asks over UDP.
//! * Over UDP an answer longer than 512 octets, or the client's EDNS size, is sent empty with
//!   TC set (the client retries over TCP).

use std::net::IpAddr;

use hickory_proto::op::{Edns, Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, RData, Record as WireRecord, RecordType};

use crate::model::{Config, Data};
use crate::wire::{self, our_name};
use crate::zone::{Zone, ZoneSet};

/// How the request came.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// The EDNS payload size we advertise (the DNS flag day 2020 value).
const OUR_PAYLOAD: u16 = 1232;
/// Records per message of a zone transfer (well under 64 KiB).
const XFR_CHUNK: usize = 100;

/// Answers one request packet from `peer`: the encoded replies (several for a zone transfer
/// over TCP), none when the packet gets no answer.
pub fn respond(cfg: &Config, zones: &ZoneSet, packet: &[u8], transport: Transport, peer: IpAddr) -> Vec<Vec<u8>> {
    let req = match Message::from_vec(packet) {
        Ok(m) => m,
        Err(_) => return formerr(packet).into_iter().collect(),
    };
    if req.metadata.message_type != MessageType::Query {
        return Vec::new();
    }
    answer(cfg, zones, &req, transport, peer).into_iter().filter_map(|m| encode(m, &req, transport)).collect()
}

/// FORMERR for an undecodable query, built from its header bytes.
fn formerr(packet: &[u8]) -> Option<Vec<u8>> {
    if packet.len() < 12 || packet[2] & 0x80 != 0 {
        return None;
    }
    let id = u16::from_be_bytes([packet[0], packet[1]]);
    let op = OpCode::from_u8((packet[2] >> 3) & 0x0f);
    Message::error_msg(id, op, ResponseCode::FormErr).to_vec().ok()
}

/// Encodes a reply; over UDP one too big for the client goes out empty with TC.
fn encode(msg: Message, req: &Message, transport: Transport) -> Option<Vec<u8>> {
    let limit = match transport {
        Transport::Udp => req.edns.as_ref().map_or(512, |e| e.max_payload().clamp(512, 4096)),
        Transport::Tcp => u16::MAX,
    };
    match msg.to_vec() {
        Ok(bytes) if bytes.len() <= usize::from(limit) => Some(bytes),
        Ok(_) if transport == Transport::Udp => msg.truncate().to_vec().ok(),
        _ => {
            tracing::warn!(id = req.metadata.id, "cns: reply does not encode; SERVFAIL");
            let mut m = Message::error_msg(req.metadata.id, req.metadata.op_code, ResponseCode::ServFail);
            m.add_queries(req.queries.iter().cloned());
            m.to_vec().ok()
        }
    }
}

fn answer(cfg: &Config, zones: &ZoneSet, req: &Message, transport: Transport, peer: IpAddr) -> Vec<Message> {
    let mut resp = Message::response(req.metadata.id, req.metadata.op_code);
    resp.metadata = Metadata::response_from_request(&req.metadata);
    resp.add_queries(req.queries.iter().cloned());
    if req.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(OUR_PAYLOAD);
        resp.set_edns(edns);
    }
    let fail = |mut m: Message, code| {
        m.metadata.response_code = code;
        vec![m]
    };
    if req.metadata.op_code != OpCode::Query {
        return fail(resp, ResponseCode::NotImp);
    }
    let [query] = req.queries.as_slice() else {
        return fail(resp, ResponseCode::FormErr);
    };
    let qname = our_name(&query.name);
    let Some((zname, zone)) = zones.zone_of(&qname) else {
        return fail(resp, ResponseCode::ServFail);
    };
    let qtype = query.query_type;
    let transfer = matches!(qtype, RecordType::AXFR | RecordType::IXFR);
    if query.query_class != DNSClass::IN && !(transfer && query.query_class == DNSClass::ANY) {
        return fail(resp, ResponseCode::Refused);
    }
    if transfer {
        if !cfg.may_transfer(peer) {
            tracing::debug!(%peer, zone = zname, "cns: zone transfer refused");
            return fail(resp, ResponseCode::Refused);
        }
        if qname != zname {
            return fail(resp, ResponseCode::NotAuth);
        }
        let records = match (qtype, transport) {
            (RecordType::AXFR, Transport::Udp) => return fail(resp, ResponseCode::FormErr),
            (RecordType::AXFR, Transport::Tcp) => axfr(cfg, zname, zone),
            (_, _) => {
                let Some(client) = client_serial(req) else {
                    return fail(resp, ResponseCode::FormErr);
                };
                if transport == Transport::Udp {
                    wire::soa(cfg, zname, zone.serial()).into_iter().collect()
                } else {
                    ixfr(cfg, zname, zone, client)
                }
            }
        };
        resp.metadata.authoritative = true;
        return records
            .chunks(XFR_CHUNK)
            .map(|chunk| {
                let mut m = resp.clone();
                m.add_answers(chunk.iter().cloned());
                m
            })
            .collect();
    }
    resp.metadata.authoritative = true;
    lookup(cfg, zname, zone, &qname, qtype, &mut resp);
    vec![resp]
}

/// Fills in the answer (or the negative answer) for `qname`/`qtype` in `zone`.
fn lookup(cfg: &Config, zname: &str, zone: &Zone, qname: &str, qtype: RecordType, resp: &mut Message) {
    let apex = qname == zname;
    let mut answers = Vec::new();
    if apex && matches!(qtype, RecordType::SOA | RecordType::ANY) {
        answers.extend(wire::soa(cfg, zname, zone.serial()));
    }
    if apex && matches!(qtype, RecordType::NS | RecordType::ANY) {
        answers.extend(wire::ns(cfg, zname));
    }
    answers.extend(zone.at(qname).iter().filter(|r| type_matches(qtype, &r.data)).filter_map(wire::record));
    if qtype == RecordType::ANY
        && let Some(first) = answers.first().map(WireRecord::record_type)
    {
        answers.retain(|r| r.record_type() == first);
    }
    if answers.is_empty() {
        if !apex && !zone.exists(qname) {
            resp.metadata.response_code = ResponseCode::NXDomain;
        }
        resp.add_authorities(wire::soa(cfg, zname, zone.serial()));
        return;
    }
    let additionals: Vec<WireRecord> = answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(srv) => Some(our_name(&srv.target)),
            _ => None,
        })
        .flat_map(|target| zone.at(&target).to_vec())
        .filter(|r| matches!(r.data, Data::A(_) | Data::Aaaa(_)))
        .filter_map(|r| wire::record(&r))
        .collect();
    resp.add_answers(answers);
    resp.add_additionals(additionals);
}

fn type_matches(qtype: RecordType, data: &Data) -> bool {
    matches!(
        (qtype, data),
        (RecordType::ANY, _)
            | (RecordType::A, Data::A(_))
            | (RecordType::AAAA, Data::Aaaa(_))
            | (RecordType::TXT, Data::Txt(_))
            | (RecordType::SRV, Data::Srv { .. })
    )
}

/// The serial an IXFR client has: the SOA in the request's authority section.
fn client_serial(req: &Message) -> Option<u32> {
    req.authorities.iter().find_map(|r| match &r.data {
        RData::SOA(soa) => Some(soa.serial),
        _ => None,
    })
}

/// The whole zone: SOA, NS, records…, SOA.
fn axfr(cfg: &Config, zname: &str, zone: &Zone) -> Vec<WireRecord> {
    let soa = wire::soa(cfg, zname, zone.serial());
    soa.iter().cloned().chain(wire::ns(cfg, zname)).chain(zone.records().iter().filter_map(wire::record)).chain(soa.clone()).collect()
}

/// RFC 1995: one SOA when the client is current (or ahead); the diffs since its serial
/// (SOA new, then per diff: SOA old, removed…, SOA new, added…, then SOA new); else AXFR form.
fn ixfr(cfg: &Config, zname: &str, zone: &Zone, client: u32) -> Vec<WireRecord> {
    let current = zone.serial();
    let soa = |serial| wire::soa(cfg, zname, serial);
    // RFC 1982 serial arithmetic: client >= current.
    if client.wrapping_sub(current) < 1 << 31 {
        return soa(current).into_iter().collect();
    }
    let Some(diffs) = zone.diffs_since(client) else {
        return axfr(cfg, zname, zone);
    };
    let mut v: Vec<WireRecord> = soa(current).into_iter().collect();
    for d in diffs {
        v.extend(soa(d.from));
        v.extend(d.removed.iter().filter_map(wire::record));
        v.extend(soa(d.to));
        v.extend(d.added.iter().filter_map(wire::record));
    }
    v.extend(soa(current));
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Record, Zones};
    use hickory_proto::op::Query;
    use hickory_proto::rr::rdata::SOA;
    use uuid::Uuid;

    const ZONE: &str = "dc1.example.com";
    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn setup() -> (Config, ZoneSet) {
        let mut cfg = Config::new("dc1", "example.com", Uuid::nil());
        cfg.allow_transfer = vec!["127.0.0.0/8".parse().unwrap()];
        let mut zones = ZoneSet::default();
        zones.update(z(&[("a.inst.o.dc1.example.com", 1)]), 100);
        (cfg, zones)
    }
    fn z(records: &[(&str, u8)]) -> Zones {
        let mut z = Zones::new();
        z.insert(
            ZONE.into(),
            records.iter().map(|(n, last)| Record { name: (*n).into(), ttl: 30, data: Data::A([10, 0, 0, *last].into()) }).collect(),
        );
        z
    }
    fn ask(cfg: &Config, zones: &ZoneSet, name: &str, t: RecordType, tr: Transport) -> Vec<Message> {
        let mut q = Message::query();
        q.add_query(Query::query(wire::name(name).unwrap(), t));
        respond(cfg, zones, &q.to_vec().unwrap(), tr, LOCAL).iter().map(|b| Message::from_vec(b).unwrap()).collect()
    }

    #[test]
    fn bad_packets_get_formerr_or_nothing() {
        let (cfg, zones) = setup();
        let mut junk = vec![0x12, 0x34, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        junk.extend([0xff; 5]);
        let out = respond(&cfg, &zones, &junk, Transport::Udp, LOCAL);
        let m = Message::from_vec(&out[0]).unwrap();
        assert_eq!((m.metadata.id, m.metadata.response_code), (0x1234, ResponseCode::FormErr));
        assert!(respond(&cfg, &zones, &[1, 2, 3], Transport::Udp, LOCAL).is_empty());
        junk[2] = 0x80; // a response: never answered
        assert!(respond(&cfg, &zones, &junk, Transport::Udp, LOCAL).is_empty());
    }

    #[test]
    fn answers_nodata_nxdomain_and_outside() {
        let (cfg, zones) = setup();
        let a = &ask(&cfg, &zones, "A.inst.o.dc1.example.com", RecordType::A, Transport::Udp)[0];
        assert!(a.metadata.authoritative);
        assert_eq!(a.answers.len(), 1);
        let nodata = &ask(&cfg, &zones, "inst.o.dc1.example.com", RecordType::A, Transport::Udp)[0];
        assert_eq!(nodata.metadata.response_code, ResponseCode::NoError);
        assert!(nodata.answers.is_empty());
        assert_eq!(nodata.authorities[0].record_type(), RecordType::SOA);
        let nx = &ask(&cfg, &zones, "b.inst.o.dc1.example.com", RecordType::A, Transport::Udp)[0];
        assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(nx.authorities[0].record_type(), RecordType::SOA);
        let out = &ask(&cfg, &zones, "example.org", RecordType::A, Transport::Udp)[0];
        assert_eq!(out.metadata.response_code, ResponseCode::ServFail);
        assert!(!out.metadata.authoritative);
        let ns = &ask(&cfg, &zones, ZONE, RecordType::NS, Transport::Udp)[0];
        assert_eq!(ns.answers[0].record_type(), RecordType::NS);
    }

    #[test]
    fn big_udp_answers_are_truncated() {
        let (cfg, mut zones) = setup();
        let many: Vec<(&str, u8)> = (1..=60).map(|i| ("big.dc1.example.com", i)).collect();
        zones.update(z(&many), 200);
        let udp = &ask(&cfg, &zones, "big.dc1.example.com", RecordType::A, Transport::Udp)[0];
        assert!(udp.metadata.truncation && udp.answers.is_empty());
        let tcp = &ask(&cfg, &zones, "big.dc1.example.com", RecordType::A, Transport::Tcp)[0];
        assert!(!tcp.metadata.truncation);
        assert_eq!(tcp.answers.len(), 60);
    }

    #[test]
    fn ixfr_forms() {
        let (cfg, mut zones) = setup();
        zones.update(z(&[("a.inst.o.dc1.example.com", 2)]), 200);
        let ixfr = |serial: u32| {
            let mut q = Message::query();
            q.add_query(Query::query(wire::name(ZONE).unwrap(), RecordType::IXFR));
            let mut soa = wire::soa(&cfg, ZONE, serial).unwrap();
            if let RData::SOA(SOA { serial: s, .. }) = &mut soa.data {
                *s = serial;
            }
            q.add_authority(soa);
            respond(&cfg, &zones, &q.to_vec().unwrap(), Transport::Tcp, LOCAL)
                .iter()
                .flat_map(|b| Message::from_vec(b).unwrap().answers)
                .map(|r| r.record_type())
                .collect::<Vec<_>>()
        };
        use RecordType::{A, NS, SOA as S};
        assert_eq!(ixfr(100), vec![S, S, A, S, A, S]);
        assert_eq!(ixfr(200), vec![S]);
        assert_eq!(ixfr(50), vec![S, NS, A, S], "unknown serial: AXFR form");
    }
}
