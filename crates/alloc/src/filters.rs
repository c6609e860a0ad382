//! The pipeline's filters. Hard filters drop a server with a reason; soft filters say which
//! servers to prefer and are ignored when they would leave none.

use serde_json::Value;

use crate::{Cap, Config, Request, Seen, Server, Status, Summary, hosts_owner, top_users};

/// A hard filter: `Err(reason)` drops the server. It sees only that server (and its
/// [`Summary`]), so a [`crate::Fleet`] can run it on one server alone.
pub type Hard = fn(&Server, &Summary, &Request, &Config) -> Result<(), String>;
/// A soft filter: the servers it prefers (ignored when it prefers none).
pub type Soft = for<'a> fn(&[Seen<'a>], &Request, &Config) -> Vec<Seen<'a>>;

pub const HARD: &[(&str, Hard)] = &[
    ("setup", setup),
    ("running", running),
    ("reserved", reserved),
    ("headnode", headnode),
    ("pinned", pinned),
    ("nic tags", nic_tags),
    ("traits", traits),
    ("vcpus", vcpus),
    ("capness", capness),
    ("vm count", vm_count),
    ("ram", ram),
    ("cpu", cpu),
    ("disk", disk),
    ("locality", strict_locality),
];

pub const SOFT: &[(&str, Soft)] = &[("reservoir", not_reservoir), ("large servers", not_largest), ("spread", soft_locality)];

fn setup(s: &Server, _: &Summary, _: &Request, _: &Config) -> Result<(), String> {
    if s.setup { Ok(()) } else { Err("server is not set up".into()) }
}

fn running(s: &Server, _: &Summary, _: &Request, _: &Config) -> Result<(), String> {
    match s.status {
        Status::Running => Ok(()),
        Status::Unknown { silent_secs } => Err(format!("server status is unknown: no heartbeat for {silent_secs} s")),
    }
}

fn reserved(s: &Server, _: &Summary, _: &Request, _: &Config) -> Result<(), String> {
    if s.reserved { Err("server is reserved (set reserved=false with ServerUpdate to use it)".into()) } else { Ok(()) }
}

fn headnode(s: &Server, _: &Summary, _: &Request, c: &Config) -> Result<(), String> {
    if c.filter_headnode && s.headnode { Err("headnodes are excluded from placement".into()) } else { Ok(()) }
}

fn pinned(s: &Server, _: &Summary, r: &Request, _: &Config) -> Result<(), String> {
    match r.server {
        Some(u) if u != s.uuid => Err(format!("the request is pinned to server {u}")),
        _ => Ok(()),
    }
}

fn nic_tags(s: &Server, _: &Summary, r: &Request, c: &Config) -> Result<(), String> {
    for group in &r.nic_tags {
        if !group.iter().any(|t| s.nic_tags.contains(t)) {
            let has = if s.nic_tags.is_empty() { "none".to_string() } else { s.nic_tags.join(", ") };
            if let [t] = group.as_slice()
                && c.underlay_tag.as_ref() == Some(t)
            {
                return Err(format!("has no underlay nic tag {t}, which fabric networks are carried over (it has: {has})"));
            }
            return Err(format!("has no NIC with nic tag {} (it has: {has})", group.join(" or ")));
        }
        // A tag the server has but whose link cannot carry its networks (wrong MTU…).
        if group.iter().all(|t| !s.nic_tags.contains(t) || s.nic_tag_problems.contains_key(t)) {
            let why: Vec<String> = group.iter().filter_map(|t| s.nic_tag_problems.get(t).map(|p| format!("nic tag {t}: {p}"))).collect();
            return Err(why.join("; "));
        }
    }
    Ok(())
}

/// §5.7: no requested traits ⇒ only traitless servers; otherwise exactly the same keys,
/// and every value matching.
fn traits(s: &Server, _: &Summary, r: &Request, _: &Config) -> Result<(), String> {
    let want = &r.traits;
    let has = &s.traits;
    if want.is_empty() {
        return if has.is_empty() {
            Ok(())
        } else {
            Err(format!("server has traits {} but the request asks for none", Value::Object(has.clone())))
        };
    }
    let wk: Vec<&String> = want.keys().collect();
    let hk: Vec<&String> = has.keys().collect();
    let (mut wk_sorted, mut hk_sorted) = (wk.clone(), hk.clone());
    wk_sorted.sort();
    hk_sorted.sort();
    if wk_sorted != hk_sorted {
        return Err(format!("the request requires traits {} but server has {}", Value::Object(want.clone()), Value::Object(has.clone())));
    }
    for (k, w) in want {
        let h = &has[k];
        let ok = match (w, h) {
            (Value::Bool(a), Value::Bool(b)) => a == b,
            (Value::String(a), Value::String(b)) => a == b,
            (Value::String(a), Value::Array(b)) => b.iter().any(|x| x.as_str() == Some(a)),
            (Value::Array(a), Value::Array(b)) => a.iter().any(|x| b.contains(x)),
            (Value::Array(a), Value::String(b)) => a.iter().any(|x| x.as_str() == Some(b)),
            _ => false,
        };
        if !ok {
            return Err(format!("{k} comparison failed: the request wants {w}, server has {h}"));
        }
    }
    Ok(())
}

fn vcpus(s: &Server, _: &Summary, r: &Request, _: &Config) -> Result<(), String> {
    if r.vcpus > s.cpus { Err(format!("needs {} vCPUs, server has {} CPUs", r.vcpus, s.cpus)) } else { Ok(()) }
}

/// Capped and uncapped VMs never share a server; VMs whose cap is unknown never decide it.
fn capness(_: &Server, sum: &Summary, r: &Request, c: &Config) -> Result<(), String> {
    if !c.filter_capness {
        return Ok(());
    }
    match (r.cpu_cap.is_some(), sum.first_uncapped, sum.first_capped) {
        (true, Some(v), _) => Err(format!("VM {v} has no cpu_cap, while the request is capped")),
        (false, _, Some(v)) => Err(format!("VM {v} has a cpu_cap, while the request is not capped")),
        _ => Ok(()),
    }
}

fn vm_count(_: &Server, sum: &Summary, _: &Request, c: &Config) -> Result<(), String> {
    let n = sum.vm_count;
    if n >= c.vm_limit { Err(format!("has {n} VMs, the limit is {}", c.vm_limit)) } else { Ok(()) }
}

fn ram(s: &Server, sum: &Summary, r: &Request, _: &Config) -> Result<(), String> {
    let u = sum.free;
    if u.ram_mib < r.ram_mib as f64 {
        Err(format!(
            "not enough RAM: needs {} MiB, {:.0} MiB unreserved of {} MiB{}",
            r.ram_mib,
            u.ram_mib.max(0.0),
            s.ram_mib,
            top_users(s, |v| v.ram_mib.map(|m| m as f64), "MiB")
        ))
    } else {
        Ok(())
    }
}

fn cpu(s: &Server, sum: &Summary, r: &Request, _: &Config) -> Result<(), String> {
    let Some(cap) = r.cpu_cap else { return Ok(()) };
    let u = sum.free;
    let need = f64::from(cap) / s.ratios.cpu;
    if u.cpu < need {
        Err(format!(
            "not enough CPU: needs {need:.0} centi-CPUs (cpu_cap {cap} at ratio {}), {:.0} unreserved{}",
            s.ratios.cpu,
            u.cpu.max(0.0),
            top_users(s, |v| if let Cap::Capped(c) = v.cap { Some(f64::from(c)) } else { None }, "% cpu_cap")
        ))
    } else {
        Ok(())
    }
}

fn disk(s: &Server, sum: &Summary, r: &Request, _: &Config) -> Result<(), String> {
    let u = sum.free;
    if u.disk_mib < r.disk_mib as f64 {
        Err(format!(
            "not enough disk: needs {} MiB, {:.0} MiB unreserved of {} MiB{}",
            r.disk_mib,
            u.disk_mib.max(0.0),
            s.disk_mib,
            top_users(s, |v| v.disk_mib.map(|m| m as f64), "MiB of disk")
        ))
    } else {
        Ok(())
    }
}

fn strict_locality(s: &Server, _: &Summary, r: &Request, _: &Config) -> Result<(), String> {
    if !r.locality.strict {
        return Ok(());
    }
    let here: Vec<uuid::Uuid> = s.vms.iter().filter(|v| v.owner == Some(r.owner)).map(|v| v.uuid).collect();
    if let Some(v) = r.locality.far.iter().find(|v| here.contains(v)) {
        return Err(format!("hosts VM {v}, which the request must be far from"));
    }
    // Only the server hosting the first `near` VM can qualify, and it must host them all.
    if let Some(missing) = r.locality.near.iter().find(|v| !here.contains(v)) {
        return Err(format!("does not host VM {missing}, which the request must be near"));
    }
    Ok(())
}

fn not_reservoir<'a>(set: &[Seen<'a>], _: &Request, _: &Config) -> Vec<Seen<'a>> {
    set.iter().copied().filter(|(s, _)| !s.reservoir).collect()
}

/// Sets aside the emptiest 15 % (by unreserved RAM) when there are at least 7 servers.
fn not_largest<'a>(set: &[Seen<'a>], _: &Request, c: &Config) -> Vec<Seen<'a>> {
    let drop = set.len() * 15 / 100;
    if !c.filter_large_servers || set.len() < 7 || drop == 0 {
        return set.to_vec();
    }
    // A stable sort: equal servers keep their order, so the same ones are set aside.
    let mut by_free: Vec<(f64, usize)> = set.iter().enumerate().map(|(i, (_, sum))| (sum.free.ram_mib, i)).collect();
    by_free.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
    let mut keep = vec![false; set.len()];
    for &(_, i) in &by_free[..set.len() - drop] {
        keep[i] = true;
    }
    set.iter().zip(keep).filter(|(_, k)| *k).map(|(s, _)| *s).collect()
}

/// Non-strict near/far, or (without hints) servers without this owner's VMs.
fn soft_locality<'a>(set: &[Seen<'a>], r: &Request, _: &Config) -> Vec<Seen<'a>> {
    let l = &r.locality;
    if l.strict {
        return set.to_vec();
    }
    set.iter()
        .copied()
        .filter(|(s, _)| {
            if l.near.is_empty() && l.far.is_empty() {
                return !hosts_owner(s, &r.owner);
            }
            let mine: Vec<uuid::Uuid> = s.vms.iter().filter(|v| v.owner == Some(r.owner)).map(|v| v.uuid).collect();
            let far_ok = !l.far.iter().any(|v| mine.contains(v));
            let near_ok = l.near.is_empty() || l.near.iter().any(|v| mine.contains(v));
            far_ok && near_ok
        })
        .collect()
}
