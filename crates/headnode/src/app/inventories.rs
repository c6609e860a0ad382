//! Servers' VM inventories as heartbeats report them (bucket `inventories`, one object per
//! server: `{generation, vms}`), kept apart from the liveness record (`heartbeats`) so an
//! idle server's heartbeat writes only the small one. The protocol is in
//! [`nereid_types::agent`]; here is what the headnode does with a heartbeat's inventory
//! ([`take`], pure) and the cached answer to every heartbeat ([`MtuCache`]).
//!
//! ```text
//!   full {vms, gen}          → held := {gen, vms} (written when it differs); apply every VM
//!   delta {base = held.gen}  → held := held + changed − removed, gen (written when it
//!                              differs); apply the changed VMs
//!   delta {base ≠ held.gen}  → nothing written or applied; reply send_full
//!   neither (liveness only)  → nothing; send_full when none is held
//! ```

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nereid_types::agent::{Heartbeat, VmStatus};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A server's inventory as the headnode holds it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Inventory {
    /// The agent's number for it (0 from an agent older than deltas).
    #[serde(default)]
    pub generation: i64,
    /// By VM UUID.
    #[serde(default)]
    pub vms: Vec<VmStatus>,
}

/// What to do with a heartbeat's inventory.
#[derive(Debug, Clone, PartialEq)]
pub struct Taken {
    /// The inventory to write (conditionally on the held one's store generation); `None`
    /// when it did not change.
    pub write: Option<Inventory>,
    /// VM reports to apply to the records.
    pub apply: Vec<VmStatus>,
    /// The generation held afterwards (the agent's next base).
    pub ack: Option<i64>,
    /// Ask the agent for its full inventory.
    pub send_full: bool,
}

fn sorted(mut vms: Vec<VmStatus>) -> Vec<VmStatus> {
    vms.sort_by_key(|s| s.uuid);
    vms
}

/// What a heartbeat does to the held inventory (pure).
pub fn take(held: Option<&Inventory>, hb: &Heartbeat) -> Taken {
    let generation = hb.inventory_generation.unwrap_or(0);
    if let Some(vms) = &hb.vms {
        let next = Inventory { generation, vms: sorted(vms.clone()) };
        let write = (held != Some(&next)).then(|| next.clone());
        return Taken { write, apply: next.vms, ack: Some(generation), send_full: false };
    }
    let Some(held) = held else {
        return Taken { write: None, apply: Vec::new(), ack: None, send_full: true };
    };
    let Some(delta) = &hb.delta else {
        return Taken { write: None, apply: Vec::new(), ack: Some(held.generation), send_full: false };
    };
    if delta.base_generation != held.generation {
        return Taken { write: None, apply: Vec::new(), ack: Some(held.generation), send_full: true };
    }
    let mut by_uuid: BTreeMap<Uuid, VmStatus> = held.vms.iter().map(|s| (s.uuid, s.clone())).collect();
    for u in &delta.removed {
        by_uuid.remove(u);
    }
    let mut apply = Vec::new();
    for s in &delta.changed {
        if by_uuid.get(&s.uuid) != Some(s) {
            apply.push(s.clone());
        }
        by_uuid.insert(s.uuid, s.clone());
    }
    let next = Inventory { generation, vms: by_uuid.into_values().collect() };
    let write = (next != *held).then_some(next);
    Taken { write, apply, ack: Some(generation), send_full: false }
}

/// How long the nic tags' MTUs answered to heartbeats may be old (a network's MTU change
/// reaches the servers' links within this, plus a heartbeat).
pub const MTU_TTL: Duration = Duration::from_secs(3);

type Mtus = BTreeMap<String, u32>;

/// The nic tags' MTUs every heartbeat is answered with, computed at most every
/// [`MTU_TTL`] (an [`App`](super::App) field) instead of listing the networks per heartbeat.
#[derive(Default)]
pub struct MtuCache(Mutex<Option<(Instant, Mtus)>>);

impl MtuCache {
    /// The cached answer, when fresh.
    pub fn get(&self) -> Option<Mtus> {
        let e = self.0.lock().unwrap_or_else(|p| p.into_inner());
        e.as_ref().filter(|(at, _)| at.elapsed() < MTU_TTL).map(|(_, m)| m.clone())
    }

    /// Remembers the answer.
    pub fn put(&self, mtus: &Mtus) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), mtus.clone()));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use nereid_types::agent::InventoryDelta;

    fn delta(base: i64, generation: i64, changed: Vec<VmStatus>, removed: Vec<Uuid>) -> Heartbeat {
        Heartbeat {
            inventory_generation: Some(generation),
            delta: Some(InventoryDelta { base_generation: base, changed, removed }),
            ..Default::default()
        }
    }

    #[test]
    fn a_full_inventory_is_held_and_applied_whole_and_written_only_when_it_differs() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let vms = vec![VmStatus::new(b, "running", 2), VmStatus::new(a, "stopped", 1)];
        let hb = Heartbeat { vms: Some(vms.clone()), inventory_generation: Some(4), ..Default::default() };
        let t = take(None, &hb);
        let held = t.write.clone().unwrap();
        assert_eq!(held.generation, 4);
        assert_eq!(held.vms.iter().map(|s| s.uuid).collect::<Vec<_>>(), sorted(vms.clone()).iter().map(|s| s.uuid).collect::<Vec<_>>());
        assert_eq!((t.apply.len(), t.ack, t.send_full), (2, Some(4), false));
        // The same again (an agent older than deltas sends it every time): nothing written,
        // still all applied (as before deltas).
        let t = take(Some(&held), &hb);
        assert_eq!((t.write, t.apply.len(), t.ack), (None, 2, Some(4)));
        // An agent older than deltas: generation 0.
        let old: Heartbeat = serde_json::from_value(serde_json::json!({"usage": {}, "vms": []})).unwrap();
        let t = take(Some(&held), &old);
        assert_eq!(t.write, Some(Inventory { generation: 0, vms: Vec::new() }));
        assert_eq!(t.ack, Some(0));
    }

    #[test]
    fn a_delta_on_the_held_base_changes_only_what_it_names() {
        let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let held = Inventory { generation: 7, vms: sorted(vec![VmStatus::new(a, "running", 1), VmStatus::new(b, "running", 1)]) };
        // Nothing changed: nothing written, nothing applied.
        let t = take(Some(&held), &delta(7, 7, Vec::new(), Vec::new()));
        assert_eq!(t, Taken { write: None, apply: Vec::new(), ack: Some(7), send_full: false });
        let t = take(Some(&held), &delta(7, 8, vec![VmStatus::new(a, "stopped", 2), VmStatus::new(c, "provisioning", 1)], vec![b]));
        let w = t.write.unwrap();
        assert_eq!(w.generation, 8);
        let mut want = sorted(vec![VmStatus::new(a, "stopped", 2), VmStatus::new(c, "provisioning", 1)]);
        want.sort_by_key(|s| s.uuid);
        assert_eq!(w.vms, want);
        assert_eq!(t.apply.len(), 2);
        assert_eq!((t.ack, t.send_full), (Some(8), false));
    }

    #[test]
    fn a_delta_on_another_base_or_none_held_asks_for_the_full_inventory_and_applies_nothing() {
        let a = Uuid::new_v4();
        let held = Inventory { generation: 3, vms: vec![VmStatus::new(a, "running", 1)] };
        let t = take(Some(&held), &delta(2, 4, vec![VmStatus::new(a, "stopped", 2)], Vec::new()));
        assert_eq!(t, Taken { write: None, apply: Vec::new(), ack: Some(3), send_full: true });
        let t = take(None, &delta(3, 4, vec![VmStatus::new(a, "stopped", 2)], Vec::new()));
        assert_eq!(t, Taken { write: None, apply: Vec::new(), ack: None, send_full: true });
        // Liveness only (no inventory at all): nothing, unless none is held.
        let t = take(Some(&held), &Heartbeat::default());
        assert_eq!(t, Taken { write: None, apply: Vec::new(), ack: Some(3), send_full: false });
        assert!(take(None, &Heartbeat::default()).send_full);
    }
}
