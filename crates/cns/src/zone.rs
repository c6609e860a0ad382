//! The published zones with their serials and recent diffs (for IXFR).
//!
//! [`ZoneSet::update`] takes freshly built zones and compares each with what is published:
//!
//! ```text
//!   new zone ──────────────► serial = max(1, now)
//!   content changed ───────► serial = max(previous + 1, now), diff kept (last N)
//!   content unchanged ─────► serial and history kept
//!   zone no longer built ──► dropped
//! ```
//!
//! Serials are unix seconds when the clock allows, so they also grow across restarts; two
//! changes within a second still get distinct, growing serials.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::model::{Record, Zones};

/// How many diffs a zone keeps for IXFR by default.
pub const DEFAULT_HISTORY: usize = 64;

/// The change from serial `from` to serial `to`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diff {
    pub from: u32,
    pub to: u32,
    pub removed: Vec<Record>,
    pub added: Vec<Record>,
}

/// One published zone.
#[derive(Clone, Debug, Default)]
pub struct Zone {
    serial: u32,
    records: BTreeSet<Record>,
    /// Records by owner name.
    by_name: BTreeMap<String, Vec<Record>>,
    /// Names that exist (have records, or records below them: empty non-terminals).
    existing: BTreeSet<String>,
    history: VecDeque<Diff>,
}

impl Zone {
    fn new(name: &str, serial: u32, records: BTreeSet<Record>) -> Self {
        let mut by_name: BTreeMap<String, Vec<Record>> = BTreeMap::new();
        let mut existing = BTreeSet::new();
        for r in &records {
            by_name.entry(r.name.clone()).or_default().push(r.clone());
            // The name and every ancestor down to (excluding) the apex exist.
            let mut n = r.name.as_str();
            while n.len() > name.len() && existing.insert(n.to_string()) {
                n = n.split_once('.').map_or("", |(_, rest)| rest);
            }
        }
        Self { serial, records, by_name, existing, history: VecDeque::new() }
    }

    pub fn serial(&self) -> u32 {
        self.serial
    }

    /// Every record, in order.
    pub fn records(&self) -> &BTreeSet<Record> {
        &self.records
    }

    /// The records at `name` (absolute, lowercase, no trailing dot).
    pub fn at(&self, name: &str) -> &[Record] {
        self.by_name.get(name).map_or(&[], Vec::as_slice)
    }

    /// Whether `name` exists below the apex (records at it or below it).
    pub fn exists(&self, name: &str) -> bool {
        self.existing.contains(name)
    }

    /// The diffs leading from serial `from` to the current one, oldest first; `None` when
    /// the history does not reach back to `from`.
    pub fn diffs_since(&self, from: u32) -> Option<Vec<&Diff>> {
        let start = self.history.iter().position(|d| d.from == from)?;
        Some(self.history.iter().skip(start).collect())
    }
}

/// All published zones.
#[derive(Clone, Debug)]
pub struct ZoneSet {
    zones: BTreeMap<String, Zone>,
    history_len: usize,
}

impl Default for ZoneSet {
    fn default() -> Self {
        Self::new(DEFAULT_HISTORY)
    }
}

impl ZoneSet {
    /// An empty set keeping `history_len` diffs per zone.
    pub fn new(history_len: usize) -> Self {
        Self { zones: BTreeMap::new(), history_len }
    }

    /// Publishes `new` at unix time `now` (seconds); returns the zones whose serial changed.
    pub fn update(&mut self, new: Zones, now: u32) -> Vec<String> {
        let mut changed = Vec::new();
        let mut zones = BTreeMap::new();
        for (name, records) in new {
            let zone = match self.zones.remove(&name) {
                Some(old) if old.records == records => old,
                Some(old) => {
                    let serial = now.max(old.serial.wrapping_add(1));
                    let mut zone = Zone::new(&name, serial, records);
                    zone.history = old.history;
                    zone.history.push_back(Diff {
                        from: old.serial,
                        to: serial,
                        removed: old.records.difference(&zone.records).cloned().collect(),
                        added: zone.records.difference(&old.records).cloned().collect(),
                    });
                    while zone.history.len() > self.history_len {
                        zone.history.pop_front();
                    }
                    changed.push(name.clone());
                    zone
                }
                None => {
                    changed.push(name.clone());
                    Zone::new(&name, now.max(1), records)
                }
            };
            zones.insert(name, zone);
        }
        self.zones = zones;
        changed
    }

    /// [`ZoneSet::update`] at the current time.
    pub fn update_now(&mut self, new: Zones) -> Vec<String> {
        self.update(new, unix_now())
    }

    pub fn zone(&self, name: &str) -> Option<&Zone> {
        self.zones.get(name)
    }

    /// Zone names with their serials.
    pub fn serials(&self) -> BTreeMap<String, u32> {
        self.zones.iter().map(|(n, z)| (n.clone(), z.serial)).collect()
    }

    /// The zone `name` belongs to (the longest matching zone), with the zone's name.
    pub fn zone_of(&self, name: &str) -> Option<(&str, &Zone)> {
        self.zones
            .iter()
            .filter(|(z, _)| name == z.as_str() || name.strip_suffix(z.as_str()).is_some_and(|head| head.ends_with('.')))
            .max_by_key(|(z, _)| z.len())
            .map(|(z, zone)| (z.as_str(), zone))
    }
}

/// Seconds since the epoch, as a DNS serial (saturating; the clock before 1970 gives 0).
pub fn unix_now() -> u32 {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    u32::try_from(secs).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Data;

    fn rec(name: &str, last: u8) -> Record {
        Record { name: name.into(), ttl: 30, data: Data::A([10, 0, 0, last].into()) }
    }
    fn zones(records: &[Record]) -> Zones {
        let mut z = Zones::new();
        z.insert("z.test".into(), records.iter().cloned().collect());
        z
    }

    #[test]
    fn serials_follow_the_clock_and_grow_on_change_only() {
        let mut zs = ZoneSet::default();
        assert_eq!(zs.update(zones(&[rec("a.z.test", 1)]), 1000), vec!["z.test"]);
        assert_eq!(zs.serials()["z.test"], 1000);
        // Unchanged: serial kept even later.
        assert!(zs.update(zones(&[rec("a.z.test", 1)]), 5000).is_empty());
        assert_eq!(zs.serials()["z.test"], 1000);
        // Changed: the clock.
        zs.update(zones(&[rec("a.z.test", 2)]), 5000);
        assert_eq!(zs.serials()["z.test"], 5000);
        // Changed twice in the same second, or with the clock behind: previous + 1.
        zs.update(zones(&[rec("a.z.test", 3)]), 5000);
        assert_eq!(zs.serials()["z.test"], 5001);
        zs.update(zones(&[rec("a.z.test", 4)]), 10);
        assert_eq!(zs.serials()["z.test"], 5002);
    }

    #[test]
    fn diffs_chain_from_a_serial_and_history_is_bounded() {
        let mut zs = ZoneSet::new(2);
        zs.update(zones(&[rec("a.z.test", 1)]), 100);
        zs.update(zones(&[rec("a.z.test", 1), rec("b.z.test", 2)]), 200);
        zs.update(zones(&[rec("b.z.test", 2)]), 300);
        let z = zs.zone("z.test").unwrap();
        let d = z.diffs_since(100).unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!((d[0].from, d[0].to), (100, 200));
        assert_eq!(d[0].added, vec![rec("b.z.test", 2)]);
        assert!(d[0].removed.is_empty());
        assert_eq!(d[1].removed, vec![rec("a.z.test", 1)]);
        assert_eq!(z.diffs_since(200).unwrap().len(), 1);
        assert!(z.diffs_since(300).is_none(), "current serial: no diff");
        zs.update(zones(&[]), 400);
        let z = zs.zone("z.test").unwrap();
        assert!(z.diffs_since(100).is_none(), "dropped from history");
        assert_eq!(z.diffs_since(200).unwrap().len(), 2);
    }

    #[test]
    fn names_existing_and_zone_lookup() {
        let mut zs = ZoneSet::default();
        let mut z = zones(&[rec("a.inst.o.z.test", 1)]);
        z.insert("cns.z.test".into(), BTreeSet::new());
        zs.update(z, 1);
        let (name, zone) = zs.zone_of("x.a.inst.o.z.test").unwrap();
        assert_eq!(name, "z.test");
        assert!(zone.exists("a.inst.o.z.test"));
        assert!(zone.exists("inst.o.z.test"), "empty non-terminal");
        assert!(!zone.exists("x.a.inst.o.z.test"));
        assert!(!zone.exists("z.test"), "the apex is not a record name");
        assert_eq!(zs.zone_of("q.cns.z.test").unwrap().0, "cns.z.test");
        assert_eq!(zs.zone_of("z.test").unwrap().0, "z.test");
        assert!(zs.zone_of("xz.test").is_none());
        assert!(zs.zone_of("other.example").is_none());
    }

    #[test]
    fn dropped_zones_disappear() {
        let mut zs = ZoneSet::default();
        zs.update(zones(&[]), 1);
        zs.update(Zones::new(), 2);
        assert!(zs.zone("z.test").is_none());
    }
}
