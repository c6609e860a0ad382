//! What a heartbeat says about the VMs (pure): the agent's numbered inventory, the one the
//! headnode acknowledged, and whether to send it whole or as a delta (see the protocol in
//! [`nereid_types::agent`]).
//!
//! ```text
//!   observe(statuses) ── any differs from the current inventory? ──► generation + 1
//!   report()          ── no ack ──► full {vms, generation}
//!                     ── ack g  ──► delta {base g, changed, removed} (empty when equal)
//!   reply(answer)     ── ack = generation sent ──► that inventory is the base from now on
//!                     ── send_full / no ack / another ack ──► no base: the next is full
//! ```

use std::collections::BTreeMap;

use nereid_types::agent::{HeartbeatReply, InventoryDelta, VmStatus};
use uuid::Uuid;

/// One server's inventory as the agent numbers it and as the headnode acknowledged it.
#[derive(Debug, Default)]
pub struct Tracker {
    generation: i64,
    current: BTreeMap<Uuid, VmStatus>,
    /// The inventory the headnode holds (its generation and statuses), when it said so.
    acked: Option<(i64, BTreeMap<Uuid, VmStatus>)>,
}

/// What one heartbeat carries about the VMs.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub generation: i64,
    /// The full inventory (when nothing is acknowledged).
    pub vms: Option<Vec<VmStatus>>,
    /// Or the change since the acknowledged one.
    pub delta: Option<InventoryDelta>,
}

impl Tracker {
    /// The generation of the current inventory.
    pub fn generation(&self) -> i64 {
        self.generation
    }

    /// Takes the VMs' statuses now; the generation grows when any status differs from the
    /// current inventory's (or a VM came or went).
    pub fn observe(&mut self, vms: Vec<VmStatus>) {
        let next: BTreeMap<Uuid, VmStatus> = vms.into_iter().map(|s| (s.uuid, s)).collect();
        if next != self.current {
            self.generation += 1;
            self.current = next;
        }
    }

    /// What to send now: the full inventory without an acknowledged base, else the delta.
    pub fn report(&self) -> Report {
        match &self.acked {
            None => Report { generation: self.generation, vms: Some(self.current.values().cloned().collect()), delta: None },
            Some((base, acked)) => {
                let changed = self.current.values().filter(|s| acked.get(&s.uuid) != Some(*s)).cloned().collect();
                let removed = acked.keys().filter(|u| !self.current.contains_key(u)).copied().collect();
                Report { generation: self.generation, vms: None, delta: Some(InventoryDelta { base_generation: *base, changed, removed }) }
            }
        }
    }

    /// The headnode's answer to a heartbeat that carried `sent` (the generation then; the
    /// inventory has not been observed again since).
    pub fn reply(&mut self, sent: i64, reply: &HeartbeatReply) {
        match reply.inventory_ack {
            _ if reply.send_full => self.acked = None,
            Some(g) if g == sent && sent == self.generation => {
                if self.acked.as_ref().is_none_or(|(b, _)| *b != g) {
                    self.acked = Some((g, self.current.clone()));
                }
            }
            Some(g) if self.acked.as_ref().is_some_and(|(b, _)| *b == g) => {}
            // An older headnode (no ack), or an answer about something else.
            _ => self.acked = None,
        }
    }

    /// Forgets the acknowledgement: the next heartbeat carries the full inventory.
    pub fn forget(&mut self) {
        self.acked = None;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn ack(g: i64) -> HeartbeatReply {
        HeartbeatReply { inventory_ack: Some(g), ..Default::default() }
    }

    #[test]
    fn full_until_acknowledged_then_deltas_that_are_empty_while_nothing_changes() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let mut t = Tracker::default();
        t.observe(vec![VmStatus::new(a, "running", 3), VmStatus::new(b, "stopped", 1)]);
        let r = t.report();
        assert_eq!(r.generation, 1);
        assert_eq!(r.vms.as_ref().map(Vec::len), Some(2));
        assert!(r.delta.is_none());
        // No answer (a network error) or an older headnode's answer: full again.
        t.reply(1, &HeartbeatReply::default());
        assert!(t.report().vms.is_some());
        t.reply(1, &ack(1));
        // The same statuses observed again: same generation, an empty delta.
        t.observe(vec![VmStatus::new(b, "stopped", 1), VmStatus::new(a, "running", 3)]);
        let r = t.report();
        assert_eq!(r, Report { generation: 1, vms: None, delta: Some(InventoryDelta { base_generation: 1, ..Default::default() }) });
    }

    #[test]
    fn a_change_bumps_the_generation_and_the_delta_names_only_what_differs_from_the_ack() {
        let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let mut t = Tracker::default();
        t.observe(vec![VmStatus::new(a, "running", 3), VmStatus::new(b, "stopped", 1)]);
        t.reply(1, &ack(1));
        t.observe(vec![VmStatus::new(a, "stopped", 4), VmStatus::new(c, "provisioning", 1)]);
        assert_eq!(t.generation(), 2);
        let d = t.report().delta.unwrap();
        assert_eq!(d.base_generation, 1);
        assert_eq!(d.changed.iter().map(|s| (s.uuid, s.state.as_str())).collect::<Vec<_>>().len(), 2);
        assert!(d.changed.iter().any(|s| s.uuid == a && s.state == "stopped"));
        assert!(d.changed.iter().any(|s| s.uuid == c));
        assert_eq!(d.removed, vec![b]);
        // Not acknowledged yet (lost answer): the next delta is still against 1, and holds
        // what changed since, too.
        t.observe(vec![VmStatus::new(a, "stopped", 4), VmStatus::new(c, "running", 2)]);
        assert_eq!(t.generation(), 3);
        let d = t.report().delta.unwrap();
        assert_eq!(d.base_generation, 1);
        assert!(d.changed.iter().any(|s| s.uuid == c && s.state == "running"));
        t.reply(3, &ack(3));
        t.observe(vec![VmStatus::new(a, "stopped", 4), VmStatus::new(c, "running", 2)]);
        assert_eq!(t.report().delta, Some(InventoryDelta { base_generation: 3, ..Default::default() }));
    }

    #[test]
    fn asked_for_the_full_inventory_it_sends_it_and_deltas_resume_on_its_ack() {
        let a = Uuid::new_v4();
        let mut t = Tracker::default();
        t.observe(vec![VmStatus::new(a, "running", 1)]);
        t.reply(1, &ack(1));
        t.reply(1, &HeartbeatReply { send_full: true, ..Default::default() });
        let r = t.report();
        assert_eq!(r.vms, Some(vec![VmStatus::new(a, "running", 1)]));
        // An ack of something it never sent (another headnode's numbering): full again.
        t.reply(1, &ack(7));
        assert!(t.report().vms.is_some());
        t.reply(1, &ack(1));
        assert!(t.report().delta.is_some());
        t.forget();
        assert!(t.report().vms.is_some());
    }

    #[test]
    fn an_empty_server_sends_an_empty_full_inventory_first() {
        let mut t = Tracker::default();
        t.observe(Vec::new());
        assert_eq!(t.report(), Report { generation: 0, vms: Some(Vec::new()), delta: None });
    }
}
