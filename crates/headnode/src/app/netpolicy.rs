//! Each compute node's network policy (see [`nereid_types::netpolicy`]): computed here
//! from the records, pushed to the nodes whose heartbeats report another digest.
//!
//! ```text
//!   recompute (when netpolicy_notify wakes it — at most once per EVERY, wake-ups
//!   in between coalesce —, when a server's underlay address or a new server shows in
//!   the heartbeats, on taking the singleton over, and every SAFETY_PERIOD):
//!     VMs (active) + running migrations + servers + heartbeats + firewall rules
//!       ──compute (pure)──► server → NetPolicy {digest, overlays, firewalls}   (cached)
//!   every EVERY (a tick; reads only the servers' liveness records):
//!     for each running server whose heartbeat's netpolicy_digest differs from the cached:
//!       PUT /servers/{server}/netpolicy   (not again for the same digest for a while;
//!                                          an agent without the endpoint: 404, quiet)
//! ```
//!
//! The cached policies go stale only through writes that do not wake the push (another
//! headnode's, a VM's state taken from its server's report): the safety period bounds
//! that. An agent that lost its policy (restarted) reports another digest and gets it back
//! at the next tick.
//!
//! `overlays`: for each VXLAN segment (vni) a server has a NIC on, the underlay addresses
//! (the heartbeat's `nic_tag_addresses[fabric.underlay_tag]`) of the other servers with
//! NICs on it. `firewalls`: [`fwrule::compile`]'s entries for the server's VMs whose
//! firewall is enabled (an enabled VM without rules is present with none: inbound blocked).
//! `digest`: hex SHA-256 of the canonical JSON of the two, what the agent echoes.
//!
//! One headnode of a cluster pushes at a time ([`crate::reconcile::Singleton`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nereid_store::ListQuery;
use nereid_types::ApiError;
use nereid_types::fwrule::{self, FwRule, FwVm};
use nereid_types::netpolicy::NetPolicy;
use nereid_types::vm::Vm;
use serde::Deserialize;
use uuid::Uuid;

use super::App;
use super::fwrules::{fw_vm, is_active};
use crate::buckets::{FWRULES, HEARTBEATS, SERVERS};

/// How often the servers' reported digests are compared with the cached policies, and the
/// least time between two recomputes (wake-ups in between coalesce; see `PushState::gap`
/// for big clouds).
pub const EVERY: Duration = Duration::from_secs(1);
/// How long a digest sent to a server is not sent again (its heartbeat reports it by then).
pub const RESEND_AFTER: Duration = Duration::from_secs(10);
/// How often the policies are recomputed without being woken: catches the writes that do
/// not wake the push (another headnode's, VM states from servers' reports).
pub const SAFETY_PERIOD: Duration = Duration::from_secs(30);

/// What [`compute`] found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Computed {
    /// Every given server's policy.
    pub policies: BTreeMap<Uuid, NetPolicy>,
    /// What was left out and why (a server with fabric NICs but no underlay address).
    pub warnings: Vec<String>,
}

/// The digest of a policy: hex SHA-256 of `{"overlays": …, "firewalls": …}` as JSON
/// (maps in key order, so equal policies have equal digests).
pub fn digest(p: &NetPolicy) -> String {
    use sha2::{Digest, Sha256};
    let canonical = serde_json::json!({"overlays": p.overlays, "firewalls": p.firewalls});
    hex::encode(Sha256::digest(serde_json::to_vec(&canonical).unwrap_or_default()))
}

/// The policies of `servers` (server → its underlay address, if it has one) from the VMs
/// and firewall rules (pure). VMs that are destroyed, failed or not placed count for nothing.
/// A VM may be listed twice, on two servers (a migration's source and target): each gets
/// its firewall.
pub fn compute(vms: &[Vm], servers: &BTreeMap<Uuid, Option<String>>, rules: &[FwRule]) -> Computed {
    let active: Vec<&Vm> = vms.iter().filter(|v| is_active(v) && v.server_uuid.is_some()).collect();
    // vni → the servers with a NIC on it.
    let mut segments: BTreeMap<u32, BTreeSet<Uuid>> = BTreeMap::new();
    for vm in &active {
        let Some(server) = vm.server_uuid else { continue };
        for vni in vm.nics.iter().flatten().filter_map(|n| n.vni) {
            segments.entry(vni).or_default().insert(server);
        }
    }
    let mut warnings = Vec::new();
    for (vni, members) in &segments {
        for s in members.iter().filter(|s| servers.get(s).is_none_or(Option::is_none)) {
            warnings.push(format!("server {s} has NICs on fabric segment {vni} but no underlay address: other servers leave it out"));
        }
    }
    let enabled_rules: Vec<FwRule> = rules.iter().filter(|r| r.enabled).cloned().collect();
    let fw_vms: Vec<FwVm> = active.iter().filter_map(|v| fw_vm(v)).collect();
    let compiled = fwrule::compile(&enabled_rules, &fw_vms);
    let mut policies = BTreeMap::new();
    for server in servers.keys() {
        let mut p = NetPolicy::default();
        for (vni, members) in &segments {
            if !members.contains(server) {
                continue;
            }
            let peers: BTreeSet<String> =
                members.iter().filter(|m| *m != server).filter_map(|m| servers.get(m).cloned().flatten()).collect();
            p.overlays.insert(*vni, peers.into_iter().collect());
        }
        for vm in active.iter().filter(|v| v.server_uuid == Some(*server) && v.firewall_enabled == Some(true)) {
            p.firewalls.insert(vm.uuid, compiled.get(&vm.uuid).cloned().unwrap_or_default());
        }
        p.digest = digest(&p);
        policies.insert(*server, p);
    }
    Computed { policies, warnings }
}

/// What the push needs of a server's last heartbeat, decoded alone from its liveness record.
#[derive(Debug, Clone, Default, Deserialize)]
struct Seen {
    at_ms: i64,
    #[serde(default)]
    nic_tag_addresses: BTreeMap<String, String>,
    #[serde(default)]
    netpolicy_digest: Option<String>,
}

impl App {
    /// Every server's policy now (one read each of VMs, migrations, servers, heartbeats
    /// and rules).
    pub async fn netpolicies(&self) -> Result<Computed, ApiError> {
        let seen = self.netpolicy_seen().await?;
        self.compute_netpolicies(&seen).await
    }

    /// Every server's last heartbeat as the push reads it.
    async fn netpolicy_seen(&self) -> Result<HashMap<Uuid, Seen>, ApiError> {
        let mut seen: HashMap<Uuid, Seen> = self.list_keyed(HEARTBEATS.name, &ListQuery::all()).await?;
        // Liveness this headnode has not written yet (addresses and digests never wait).
        for (u, s) in &mut seen {
            s.at_ms = self.liveness.newest_ms(*u, s.at_ms);
        }
        Ok(seen)
    }

    /// The policies from the records, with the underlay addresses of the heartbeats `seen`.
    async fn compute_netpolicies(&self, seen: &HashMap<Uuid, Seen>) -> Result<Computed, ApiError> {
        let mut vms = self.firewall_vms(None).await?;
        // A VM being migrated is on its target too (before the switch): its firewall and
        // overlays are in force there before the guest runs there.
        for state in ["running", "paused"] {
            let q = super::migrations::MigrationQuery { state: Some(state.into()), ..Default::default() };
            for m in self.list_migrations(&q).await? {
                let Some(target) = m.target_server_uuid else { continue };
                if let Some(mut shadow) = vms.iter().find(|v| v.uuid == m.vm_uuid && v.server_uuid != Some(target)).cloned() {
                    shadow.server_uuid = Some(target);
                    vms.push(shadow);
                }
            }
        }
        // The servers' UUIDs are their keys: their records (sysinfo) are not decoded.
        let servers = self.store.list_raw(SERVERS.name, &ListQuery::all()).await.map_err(super::store_error)?;
        let rules: Vec<FwRule> = self.list_fast(FWRULES.name, &ListQuery::all()).await?;
        let tag = &self.cfg.fabric.underlay_tag;
        let underlay: BTreeMap<Uuid, Option<String>> = servers
            .iter()
            .filter_map(|s| Uuid::parse_str(&s.key).ok())
            .map(|u| (u, seen.get(&u).and_then(|h| h.nic_tag_addresses.get(tag).cloned())))
            .collect();
        Ok(compute(&vms, &underlay, &rules))
    }

    /// One server's policy now (for operators: `GET /servers/{uuid}/netpolicy`).
    pub async fn server_netpolicy(&self, server: Uuid) -> Result<NetPolicy, ApiError> {
        self.get_server_record(server).await?;
        let mut c = self.netpolicies().await?;
        c.policies.remove(&server).ok_or_else(|| ApiError::not_found(format!("server {server} does not exist")))
    }
}

/// The policies last computed.
struct Cached {
    policies: BTreeMap<Uuid, NetPolicy>,
    /// Each heartbeat's underlay address then: another one (or another server) recomputes.
    underlay: HashMap<Uuid, Option<String>>,
    at: Instant,
}

/// What the push remembers between ticks.
#[derive(Default)]
struct PushState {
    cached: Option<Cached>,
    /// Per server: the digest last sent (or tried) and when.
    sent: HashMap<Uuid, (String, Instant)>,
    warnings: Vec<String>,
    /// How long the last recompute took (it reads and weighs every VM).
    cost: Duration,
}

impl PushState {
    /// The least time between two recomputes: [`EVERY`], or ten times what one costs
    /// when that is more (a big cloud whose VMs keep changing spends at most a tenth of
    /// a core on its policies; they follow a change that much later).
    fn gap(&self) -> Duration {
        EVERY.max(self.cost * 10)
    }
}

/// One tick: recomputes the policies when `woken`, when the heartbeats' underlay addresses
/// changed or when the cached ones are older than [`SAFETY_PERIOD`]; sends those the
/// running servers do not report.
async fn tick(app: &Arc<App>, st: &mut PushState, woken: bool) -> Result<(), ApiError> {
    let seen = app.netpolicy_seen().await?;
    let tag = &app.cfg.fabric.underlay_tag;
    let underlay: HashMap<Uuid, Option<String>> = seen.iter().map(|(u, h)| (*u, h.nic_tag_addresses.get(tag).cloned())).collect();
    let stale = st.cached.as_ref().is_none_or(|c| woken || c.at.elapsed() >= SAFETY_PERIOD || c.underlay != underlay);
    if stale {
        let started = Instant::now();
        let computed = app.compute_netpolicies(&seen).await?;
        st.cost = started.elapsed();
        if computed.warnings != st.warnings {
            for w in &computed.warnings {
                tracing::warn!("{w}");
            }
            st.warnings = computed.warnings;
        }
        st.cached = Some(Cached { policies: computed.policies, underlay, at: Instant::now() });
    }
    let Some(cached) = &st.cached else { return Ok(()) };
    let (now, timeout) = (nereid_types::time::now_ms(), app.cfg.server_timeout.as_millis() as i64);
    let mut sends = tokio::task::JoinSet::new();
    for (server, policy) in &cached.policies {
        let hb = seen.get(server);
        if nereid_types::server::status(hb.map(|h| h.at_ms), now, timeout).0 != "running"
            || hb.and_then(|h| h.netpolicy_digest.as_deref()) == Some(policy.digest.as_str())
        {
            continue;
        }
        if st.sent.get(server).is_some_and(|(d, at)| *d == policy.digest && at.elapsed() < RESEND_AFTER) {
            continue;
        }
        st.sent.insert(*server, (policy.digest.clone(), Instant::now()));
        let (app, server, policy) = (app.clone(), *server, policy.clone());
        sends.spawn(async move {
            match app.agent_netpolicy(server, &policy).await {
                Ok(()) => tracing::debug!(%server, digest = %policy.digest, "network policy sent"),
                Err(super::agents::AgentError::Status { status: 404, message, .. }) => {
                    tracing::debug!(%server, %message, "the agent has no network policy endpoint yet; asking again later")
                }
                Err(e) => tracing::warn!(%server, error = %e, "could not send the network policy; asking again later"),
            }
        });
    }
    while sends.join_next().await.is_some() {}
    st.sent.retain(|_, (_, at)| at.elapsed() < RESEND_AFTER * 6);
    Ok(())
}

/// The push loop: a tick every [`EVERY`]; woken, a tick that recomputes at once — or at
/// the next tick when the last recompute is less than [`EVERY`] old (a provisioning storm
/// wakes it at every job's end: those coalesce).
pub async fn run(app: Arc<App>) {
    let singleton = crate::reconcile::Singleton::new("netpolicy", EVERY * 5);
    let mut st = PushState::default();
    let mut woken = true;
    let mut next = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = app.netpolicy_notify.notified() => woken = true,
            _ = tokio::time::sleep_until(next) => {}
        }
        let at_once = woken && st.cached.as_ref().is_none_or(|c| c.at.elapsed() >= st.gap());
        if tokio::time::Instant::now() < next && !at_once {
            continue;
        }
        next = tokio::time::Instant::now() + st.gap();
        if !singleton.hold(&app).await {
            // Another headnode pushes: whatever is cached here goes stale meanwhile.
            st.cached = None;
            continue;
        }
        match tick(&app, &mut st, woken).await {
            Ok(()) => woken = false,
            Err(e) => tracing::warn!(error = %e.message, "network policy tick failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nereid_types::agent::NicDef;
    use serde_json::json;

    fn nic(ip: &str, vni: Option<u32>) -> NicDef {
        serde_json::from_value(json!({"mac": "90:b8:d0:00:00:01", "interface": "net0", "ip": ip, "vlan_id": 0,
            "nic_tag": "sdc_overlay", "mtu": 1450, "primary": true, "model": "virtio", "vni": vni}))
        .unwrap()
    }

    fn vm(server: Uuid, owner: Uuid, ip: &str, vni: Option<u32>, firewall: bool, tags: serde_json::Value) -> Vm {
        serde_json::from_value(json!({"uuid": Uuid::new_v4(), "owner_uuid": owner, "server_uuid": server, "state": "running",
            "firewall_enabled": firewall, "tags": tags, "nics": [nic(ip, vni)]}))
        .unwrap()
    }

    #[test]
    fn overlays_name_the_other_servers_on_each_segment() {
        let (a, b, c) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
        let owner = Uuid::new_v4();
        let vms = vec![
            vm(a, owner, "192.168.1.10", Some(7), false, json!({})),
            vm(a, owner, "192.168.1.11", Some(7), false, json!({})),
            vm(b, owner, "192.168.1.12", Some(7), false, json!({})),
            vm(b, owner, "192.168.2.12", Some(9), false, json!({})),
            vm(c, owner, "192.168.2.13", Some(9), false, json!({})),
            vm(c, owner, "10.0.0.5", None, false, json!({})),
        ];
        let servers: BTreeMap<Uuid, Option<String>> =
            [(a, Some("172.16.0.1".to_string())), (b, Some("172.16.0.2".to_string())), (c, None)].into_iter().collect();
        let got = compute(&vms, &servers, &[]);
        assert_eq!(got.policies[&a].overlays, BTreeMap::from([(7, vec!["172.16.0.2".to_string()])]));
        assert_eq!(got.policies[&b].overlays, BTreeMap::from([(7, vec!["172.16.0.1".to_string()]), (9, vec![])]));
        assert_eq!(got.policies[&c].overlays, BTreeMap::from([(9, vec!["172.16.0.2".to_string()])]), "no peer without an address");
        assert_eq!(got.warnings.len(), 1, "{:?}", got.warnings);
        assert!(got.warnings[0].contains(&c.to_string()), "{:?}", got.warnings);
        assert!(got.policies.values().all(|p| p.firewalls.is_empty()));
        // Destroyed VMs count for nothing; the digest follows the content.
        let mut gone = vms.clone();
        gone[2].state = Some("destroyed".into());
        let after = compute(&gone, &servers, &[]);
        assert_eq!(after.policies[&a].overlays, BTreeMap::from([(7, vec![])]));
        assert_ne!(after.policies[&a].digest, got.policies[&a].digest);
        assert_eq!(compute(&vms, &servers, &[]), got, "the same records make the same policies");
        assert_eq!(got.policies[&a].digest, digest(&got.policies[&a]));
        assert_eq!(got.policies[&a].digest.len(), 64);
    }

    fn rule(owner: Uuid, text: &str, enabled: bool) -> FwRule {
        FwRule {
            uuid: Uuid::new_v4(),
            owner_uuid: Some(owner),
            rule: fwrule::canonical(text).unwrap(),
            enabled,
            global: false,
            description: None,
            log: false,
            created: None,
            updated: None,
        }
    }

    #[test]
    fn firewalls_cover_the_enabled_vms_and_follow_the_rules() {
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let owner = Uuid::new_v4();
        let web = vm(a, owner, "10.0.0.10", None, true, json!({"role": "web"}));
        let plain = vm(a, owner, "10.0.0.11", None, false, json!({"role": "web"}));
        let other = vm(b, owner, "10.0.0.12", None, true, json!({"role": "db"}));
        let vms = vec![web.clone(), plain.clone(), other.clone()];
        let servers: BTreeMap<Uuid, Option<String>> = [(a, None), (b, None)].into_iter().collect();
        let r80 = rule(owner, r#"FROM any TO tag "role" = "web" ALLOW tcp PORT 80"#, true);
        let got = compute(&vms, &servers, std::slice::from_ref(&r80));
        let fa = &got.policies[&a].firewalls;
        assert_eq!(fa.keys().collect::<Vec<_>>(), vec![&web.uuid], "only the enabled VM has a firewall: {fa:?}");
        assert!(fa[&web.uuid].iter().any(|e| e.rule == r80.uuid && e.ports.iter().any(|p| p.start == 80 && p.end == 80)), "{fa:?}");
        let fb = &got.policies[&b].firewalls;
        assert_eq!(fb.keys().collect::<Vec<_>>(), vec![&other.uuid]);
        assert!(fb[&other.uuid].iter().all(|e| e.rule != r80.uuid), "the rule names web VMs only: {fb:?}");
        // Another port, or the rule disabled: another policy.
        let r81 = FwRule { rule: fwrule::canonical(r#"FROM any TO tag "role" = "web" ALLOW tcp PORT 81"#).unwrap(), ..r80.clone() };
        let changed = compute(&vms, &servers, std::slice::from_ref(&r81));
        assert_ne!(changed.policies[&a].digest, got.policies[&a].digest);
        let disabled = compute(&vms, &servers, &[FwRule { enabled: false, ..r80.clone() }]);
        assert_ne!(disabled.policies[&a].digest, got.policies[&a].digest);
        assert!(disabled.policies[&a].firewalls[&web.uuid].is_empty(), "enabled, without rules: inbound blocked");
        assert_eq!(changed.policies[&b].digest, got.policies[&b].digest, "server b's VMs are not named by either");
    }
}
