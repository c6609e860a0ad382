//! Conversions between CNS records and `hickory-proto`'s wire types, and the zone's SOA and
//! NS records made from the configuration.

use hickory_proto::rr::rdata::{A, AAAA, NS, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record as WireRecord};

use crate::model::{Config, Data, Record};

/// SOA timers: refresh and retry (secondaries also get NOTIFY), expire (one week).
const REFRESH: i32 = 60;
const RETRY: i32 = 60;
const EXPIRE: i32 = 604_800;

/// An absolute name from our form (`a.b.c`, no trailing dot); `None` if it is no valid DNS
/// name (a label over 63 or a name over 255 octets).
pub fn name(s: &str) -> Option<Name> {
    Name::from_ascii(format!("{s}.")).ok()
}

/// A query name in our form: lowercase, without the trailing dot.
pub fn our_name(n: &Name) -> String {
    n.to_lowercase().to_ascii().trim_end_matches('.').to_string()
}

/// The wire record of a CNS record; `None` for names or targets that are not valid DNS.
pub fn record(r: &Record) -> Option<WireRecord> {
    let data = match &r.data {
        Data::A(a) => RData::A(A(*a)),
        Data::Aaaa(a) => RData::AAAA(AAAA(*a)),
        Data::Txt(t) => RData::TXT(TXT::new(vec![t.clone()])),
        Data::Srv { priority, weight, port, target } => RData::SRV(SRV::new(*priority, *weight, *port, name(target)?)),
    };
    Some(WireRecord::from_rdata(name(&r.name)?, r.ttl, data))
}

/// The zone's SOA with `serial`; `None` if the zone or configured names are not valid DNS.
pub fn soa(cfg: &Config, zone: &str, serial: u32) -> Option<WireRecord> {
    let rname = cfg.hostmaster.replacen('@', ".", 1);
    let data = SOA::new(name(&cfg.my_name)?, name(&rname)?, serial, REFRESH, RETRY, EXPIRE, cfg.ttl);
    Some(WireRecord::from_rdata(name(zone)?, cfg.ttl, RData::SOA(data)))
}

/// The zone's NS record: this server.
pub fn ns(cfg: &Config, zone: &str) -> Option<WireRecord> {
    Some(WireRecord::from_rdata(name(zone)?, cfg.ns_ttl, RData::NS(NS(name(&cfg.my_name)?))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn names_round_trip_and_bad_names_are_refused() {
        let n = name("web.inst.o.dc1.example.com").unwrap();
        assert_eq!(our_name(&n), "web.inst.o.dc1.example.com");
        assert_eq!(our_name(&Name::from_ascii("WeB.Example.COM.").unwrap()), "web.example.com");
        assert!(name(&format!("{}.example.com", "x".repeat(64))).is_none());
    }

    #[test]
    fn soa_takes_hostmaster_with_at() {
        let mut cfg = Config::new("dc1", "example.com", Uuid::nil());
        cfg.hostmaster = "ops@example.com".into();
        let soa = soa(&cfg, "dc1.example.com", 7).unwrap();
        let RData::SOA(data) = &soa.data else { panic!("not an SOA") };
        assert_eq!(data.rname.to_ascii(), "ops.example.com.");
        assert_eq!((data.serial, data.minimum, soa.ttl), (7, 30, 30));
    }
}
