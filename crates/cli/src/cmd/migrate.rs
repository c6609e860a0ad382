//! `nereid admin vm migrate|migration`, `nereid admin server evacuate` and the migrations
//! part of `nereid admin server get`: moving VMs between servers from the operator side.
//!
//! ```text
//!   vm migrate UUID [-w]     POST /vms/UUID?action=migrate (automatic) ──► watch stream
//!                            (progress lines or a bar) ──► GET /migrations/UUID: the outcome
//!   server evacuate S [-w]   POST /servers/S?action=evacuate ──► GET /servers/S/evacuation
//!                            until done: each VM's outcome, the allocator's explanation of
//!                            the VMs no server would take
//! ```
//! The lines printed are made by pure functions (`progress_line`, `outcome`, `vm_outcome`),
//! tested below.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::Duration;

use anyhow::{Result, bail};
use nereid_client::{Client, enc};
use serde_json::{Map, Value, json};

use crate::cli::{EvacuateArgs, VmMigrateArgs};
use crate::output::{self, Column, text};

const MIGRATION_COLUMNS: &[Column] = &[
    Column { header: "VM", get: |v| text(v, "vm_uuid") },
    Column { header: "ROLE", get: |v| text(v, "role") },
    Column { header: "FROM", get: |v| text(v, "source_server_uuid") },
    Column { header: "TO", get: |v| text(v, "target_server_uuid") },
    Column { header: "PHASE", get: |v| text(v, "phase") },
    Column { header: "STATE", get: |v| text(v, "state") },
    Column { header: "PROGRESS", get: last_progress },
];

const HISTORY_COLUMNS: &[Column] = &[
    Column { header: "PHASE", get: |v| text(v, "phase") },
    Column { header: "STATE", get: |v| text(v, "state") },
    Column { header: "PROGRESS", get: |v| percent(v).map(|p| format!("{p}%")).unwrap_or_else(|| "-".into()) },
    Column { header: "STARTED", get: |v| text(v, "started_timestamp") },
    Column { header: "FINISHED", get: |v| text(v, "finished_timestamp") },
    Column { header: "MESSAGE", get: |v| v["error"].as_str().or(v["message"].as_str()).unwrap_or("-").to_string() },
];

/// A progress entry's percentage (none without a total).
fn percent(e: &Value) -> Option<u64> {
    let (cur, total) = (e["current_progress"].as_u64()?, e["total_progress"].as_u64()?);
    (total > 0).then(|| (cur.min(total) * 100) / total)
}

fn last_progress(m: &Value) -> String {
    m["progress_history"].as_array().and_then(|h| h.last()).and_then(percent).map(|p| format!("{p}%")).unwrap_or_else(|| "-".into())
}

/// Bytes as people read them (binary units).
pub fn human_bytes(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < units.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 { format!("{n} B") } else { format!("{v:.1} {}", units[i]) }
}

/// One line for a watch event: `sync     running   42%  1.2 GiB of 2.0 GiB at 110.0 MiB/s`
/// (pure). The `end` event says how the migration ended.
pub fn progress_line(e: &Value) -> String {
    if e["type"] == "end" {
        let msg = e["message"].as_str().map(|m| format!(": {m}")).unwrap_or_default();
        return format!("end: {} {}{msg}", text(e, "phase"), text(e, "state"));
    }
    let pct = percent(e).map(|p| format!("{p:>3}%")).unwrap_or_else(|| "   -".into());
    let mut detail = Vec::new();
    let total = e["total_progress"].as_u64().unwrap_or(0);
    if total > 100 {
        detail.push(format!("{} of {}", human_bytes(e["current_progress"].as_u64().unwrap_or(0)), human_bytes(total)));
    }
    if let Some(r) = e["transfer_bytes_second"].as_u64().filter(|r| *r > 0) {
        detail.push(format!("at {}/s", human_bytes(r)));
    }
    if let Some(m) = e["error"].as_str().or(e["message"].as_str()) {
        detail.push(m.to_string());
    }
    format!("{:<7} {:<10} {pct}  {}", text(e, "phase"), text(e, "state"), detail.join("  ")).trim_end().to_string()
}

/// How a migration ended, for people, and whether it succeeded (pure): an automatic
/// migration succeeded when its switch did.
pub fn outcome(m: &Value) -> (bool, String) {
    let vm = text(m, "vm_uuid");
    let (phase, state) = (text(m, "phase"), text(m, "state"));
    if state == "successful" && (phase == "switch" || m["action"] == "finalize") {
        let how = match (m["mechanism"].as_str(), m["pause_ms"].as_u64()) {
            (Some("offline"), _) => " (offline: stopped, copied, started)".to_string(),
            (_, Some(p)) => format!(" (live, paused {p} ms)"),
            _ => String::new(),
        };
        return (
            true,
            format!("VM {vm} migrated to server {}{how}; finalize it to remove the source's copy", text(m, "target_server_uuid")),
        );
    }
    if state == "failed" {
        let err = m["error"].as_str().unwrap_or("no reason was recorded");
        return (
            false,
            format!("migration of VM {vm} failed in phase {phase}: {err}. The VM stays on server {}", text(m, "source_server_uuid")),
        );
    }
    (false, format!("migration of VM {vm} ended in phase {phase}, state {state}"))
}

/// `nereid admin vm migrate`.
pub async fn vm_migrate(c: &Client, a: VmMigrateArgs, json: bool) -> Result<()> {
    if a.finalize {
        return finalize(c, &a.id, json).await;
    }
    let mut b = Map::new();
    b.insert("migration_action".into(), json!("begin"));
    b.insert("migration_automatic".into(), json!(true));
    if let Some(to) = &a.to {
        b.insert("override_server_uuid".into(), json!(to));
    }
    if a.offline {
        b.insert("migration_offline".into(), json!(true));
    }
    if let Some(bw) = a.bandwidth {
        b.insert("migration_bandwidth_mbps".into(), json!(bw));
    }
    let out = c.post(&format!("/vms/{}?action=migrate", enc(&a.id)), &Value::Object(b)).await?;
    if !a.wait {
        if json {
            output::object(&out, true);
        } else {
            let m = &out["migration"];
            println!("migration of VM {} started (job {}): {} {}", a.id, text(&out, "job_uuid"), text(m, "phase"), text(m, "state"));
            println!("follow it with `nereid admin vm migration {}`", a.id);
        }
        return Ok(());
    }
    watch(c, &a.id, json).await?;
    let m = settled(c, &a.id).await?;
    let (ok, line) = outcome(&m);
    if !ok {
        if json {
            output::object(&m, true);
            bail!("{line}");
        }
        println!("{line}");
        std::process::exit(1);
    }
    if a.keep_source {
        if json {
            output::object(&m, true);
        } else {
            println!("{line}");
        }
        return Ok(());
    }
    if !json {
        println!("{}", line.split("; finalize it").next().unwrap_or(&line));
    }
    finalize(c, &a.id, json).await
}

/// `nereid admin vm migrate --finalize` (and the end of `-w`): the source's stopped copy
/// is deleted; the record stays as history.
async fn finalize(c: &Client, vm: &str, json: bool) -> Result<()> {
    c.post(&format!("/vms/{}?action=migrate", enc(vm)), &json!({"migration_action": "finalize"})).await?;
    let m = c.get(&format!("/migrations/{}?format=raw", enc(vm))).await?;
    if json {
        output::object(&m, true);
    } else {
        println!("migration of VM {vm} finalized: server {} no longer keeps a copy", text(&m, "source_server_uuid"));
    }
    Ok(())
}

/// Follows `/migrations/{vm}/watch` to its end: JSON lines as they come with `--json`, a
/// bar on a terminal, else one line per change.
async fn watch(c: &Client, vm: &str, json: bool) -> Result<()> {
    let mut lines = c.get_lines(&format!("/migrations/{}/watch", enc(vm))).await?;
    let tty = !json && std::io::stderr().is_terminal();
    let bar = tty.then(|| {
        let b = indicatif::ProgressBar::new(100);
        b.set_style(
            indicatif::ProgressStyle::with_template("{prefix:<7} [{bar:30}] {pos:>3}% {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        b
    });
    let mut last = String::new();
    while let Some(line) = lines.next().await? {
        if json {
            println!("{line}");
            continue;
        }
        let Ok(e) = serde_json::from_str::<Value>(&line) else { continue };
        match &bar {
            Some(b) if e["type"] != "end" => {
                b.set_prefix(text(&e, "phase"));
                b.set_position(percent(&e).unwrap_or(0));
                b.set_message(progress_line(&e).split_once('%').map(|(_, r)| r.trim().to_string()).unwrap_or_default());
            }
            Some(b) => b.finish_and_clear(),
            None => {
                let l = progress_line(&e);
                if l != last {
                    println!("{l}");
                    last = l;
                }
            }
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(())
}

/// The VM's migration once no job works on it (the watch stream may end before the record
/// is written).
async fn settled(c: &Client, vm: &str) -> Result<Value> {
    loop {
        let m = c.get(&format!("/migrations/{}?format=raw", enc(vm))).await?;
        if m["state"] != "running" {
            return Ok(m);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `nereid admin vm migration UUID`.
pub async fn vm_migration(c: &Client, id: &str, json: bool) -> Result<()> {
    let m = c.get(&format!("/migrations/{}?format=raw", enc(id))).await?;
    if json {
        output::object(&m, true);
        return Ok(());
    }
    let mut head = m.clone();
    if let Some(o) = head.as_object_mut() {
        o.remove("progress_history");
        o.remove("placement");
    }
    output::object(&head, false);
    let history = m["progress_history"].as_array().cloned().unwrap_or_default();
    if !history.is_empty() {
        println!();
        output::table(HISTORY_COLUMNS, &history);
    }
    Ok(())
}

/// `nereid admin server get`: the server, its disks' health, then the migrations in
/// flight touching it.
pub async fn server_get(c: &Client, id: &str, json: bool) -> Result<()> {
    let s = c.get(&format!("/servers/{}", enc(id))).await?;
    if json {
        output::object(&s, true);
        return Ok(());
    }
    let mut head = s.clone();
    let migrations = head.as_object_mut().and_then(|o| o.remove("migrations")).and_then(|m| m.as_array().cloned()).unwrap_or_default();
    let disks = head.as_object_mut().and_then(|o| o.remove("disks")).and_then(|m| m.as_array().cloned()).unwrap_or_default();
    output::object(&head, false);
    println!();
    for line in disk_lines(&disks) {
        println!("{line}");
    }
    println!();
    if migrations.is_empty() {
        println!("no migrations in flight");
        return Ok(());
    }
    println!("migrations in flight:");
    let uuid = s["uuid"].as_str().unwrap_or(id);
    let rows: Vec<Value> = migrations.into_iter().map(|mut m| with_role(&mut m, uuid)).collect();
    output::table(MIGRATION_COLUMNS, &rows);
    Ok(())
}

/// The server's disks as `server get` shows them (pure): a table (health, temperature,
/// the counters that matter), then why each failing disk fails and why an unread one was
/// not read.
pub fn disk_lines(disks: &[Value]) -> Vec<String> {
    if disks.is_empty() {
        return vec!["disks: none read (the agent reads them with smartctl every few minutes; a simulated server has none)".into()];
    }
    let n = |d: &Value, k: &str| d.get(k).and_then(Value::as_u64).map(|x| x.to_string()).unwrap_or_else(|| "-".into());
    // An empty field (a disk that said nothing of itself) shows as absent.
    let t = |d: &Value, k: &str| Some(text(d, k)).filter(|x| !x.is_empty()).unwrap_or_else(|| "-".into());
    let health = |d: &Value| {
        let failing = d.get("failing").and_then(Value::as_array).is_some_and(|f| !f.is_empty());
        match (d.get("passed").and_then(Value::as_bool), failing, d.get("error").is_some_and(|e| !e.is_null())) {
            (_, true, _) => "FAILING",
            (Some(true), false, _) => "ok",
            (Some(false), false, _) => "FAILED",
            (None, false, true) => "unread",
            (None, false, false) => "unknown",
        }
    };
    let header = [
        "DEVICE",
        "PROTOCOL",
        "MODEL",
        "SERIAL",
        "HEALTH",
        "TEMP",
        "REALLOC",
        "PENDING",
        "UNCORR",
        "USED%",
        "MEDIA_ERR",
        "ERRORS",
        "HOURS",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for d in disks {
        rows.push(vec![
            t(d, "device"),
            t(d, "protocol"),
            t(d, "model"),
            t(d, "serial"),
            health(d).to_string(),
            d.get("temperature_celsius").and_then(Value::as_i64).map(|t| format!("{t}°C")).unwrap_or_else(|| "-".into()),
            n(d, "reallocated_sectors"),
            n(d, "pending_sectors"),
            n(d, "offline_uncorrectable"),
            n(d, "percentage_used"),
            n(d, "media_errors"),
            n(d, "error_count"),
            n(d, "power_on_hours"),
        ]);
    }
    let widths: Vec<usize> = (0..header.len()).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    let mut out = vec!["disks:".to_string()];
    for r in &rows {
        let cells: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push(format!("  {}", cells.join("  ").trim_end()));
    }
    for d in disks {
        for why in d.get("failing").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
            out.push(format!("  {} failing: {why}", text(d, "device")));
        }
        if let Some(e) = d.get("error").and_then(Value::as_str) {
            out.push(format!("  {} not read: {e}", text(d, "device")));
        }
    }
    out
}

/// A migration with `role`: whether the server is its source or its target (pure).
fn with_role(m: &mut Value, server: &str) -> Value {
    let role = if m["source_server_uuid"] == server { "source" } else { "target" };
    m["role"] = json!(role);
    m.take()
}

/// The allocator's explanation as indented lines (pure): a message, its servers' refusals
/// (`{field: server, code, message}`, as in a placement error), or `rejected` entries. The
/// server being emptied is left out (it is reserved, which says nothing new).
pub fn explanation_lines(e: &Value, drained: &str) -> Vec<String> {
    match e {
        Value::Null => Vec::new(),
        Value::String(s) => s.lines().map(|l| format!("    {l}")).collect(),
        Value::Object(o) if o.get("field").and_then(Value::as_str) == Some(drained) => Vec::new(),
        Value::Object(o) if o.contains_key("message") && !o.contains_key("rejected") => {
            vec![format!("    {}", text(e, "message"))]
        }
        Value::Object(o) if o.contains_key("rejected") => {
            let mut out: Vec<String> = o.get("message").and_then(Value::as_str).map(|m| vec![format!("    {m}")]).unwrap_or_default();
            for r in o["rejected"].as_array().into_iter().flatten() {
                let who = r["hostname"].as_str().or(r["server"].as_str()).unwrap_or("?");
                out.push(format!("    {who}: {} ({})", text(r, "reason"), text(r, "step")));
            }
            out
        }
        Value::Array(a) => a.iter().flat_map(|x| explanation_lines(x, drained)).collect(),
        other => vec![format!("    {other}")],
    }
}

/// One VM's line in an evacuation report (pure).
pub fn vm_outcome(v: &Value) -> String {
    let alias = v["alias"].as_str().map(|a| format!(" ({a})")).unwrap_or_default();
    let state = text(v, "state");
    let what = match state.as_str() {
        "migrated" => "migrated".to_string(),
        "migrating" => "migrating".to_string(),
        "pending" => "waiting its turn".to_string(),
        "unplaceable" => "stays: no other server can take it".to_string(),
        "failed" => format!("stays: the migration failed: {}", v["error"].as_str().unwrap_or("no reason was recorded")),
        other => other.to_string(),
    };
    format!("VM {}{alias}: {what}", text(v, "vm_uuid"))
}

/// The VMs of an evacuation that stayed on the server (pure).
pub fn stayed(ev: &Value) -> Vec<&Value> {
    ev["vms"].as_array().into_iter().flatten().filter(|v| matches!(v["state"].as_str(), Some("failed" | "unplaceable"))).collect()
}

/// `nereid admin server evacuate`.
pub async fn server_evacuate(c: &Client, a: EvacuateArgs, json: bool) -> Result<()> {
    let mut b = Map::new();
    if let Some(n) = a.concurrency {
        b.insert("concurrency".into(), json!(n));
    }
    if a.offline {
        b.insert("offline".into(), json!(true));
    }
    let path = format!("/servers/{}", enc(&a.id));
    let ev = c.post(&format!("{path}?action=evacuate"), &Value::Object(b)).await?;
    if !a.wait {
        if json {
            output::object(&ev, true);
        } else {
            let n = ev["vms"].as_array().map_or(0, Vec::len);
            println!("server {} reserved; evacuating {n} VM(s)", a.id);
            println!("follow it with `nereid admin server evacuate {} -w` or GET /servers/{}/evacuation", a.id, a.id);
        }
        return Ok(());
    }
    if !json {
        println!("server {} reserved; evacuating {} VM(s)", a.id, ev["vms"].as_array().map_or(0, Vec::len));
    }
    let mut seen: HashMap<String, String> = HashMap::new();
    let ev = loop {
        let ev = c.get(&format!("{path}/evacuation")).await?;
        if !json {
            for v in ev["vms"].as_array().into_iter().flatten() {
                let (id, state) = (text(v, "vm_uuid"), text(v, "state"));
                if state != "pending" && seen.get(&id) != Some(&state) {
                    println!("{}", vm_outcome(v));
                    seen.insert(id, state);
                }
            }
        }
        if ev["state"] == "done" {
            break ev;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let left = stayed(&ev);
    if json {
        output::object(&ev, true);
    } else {
        let total = ev["vms"].as_array().map_or(0, Vec::len);
        println!();
        println!("{} of {total} VM(s) moved off server {}", total - left.len(), a.id);
        for v in &left {
            println!("{}", vm_outcome(v));
            for l in explanation_lines(&v["explanation"], &a.id) {
                println!("{l}");
            }
        }
        if left.is_empty() {
            println!("server {} is empty and stays reserved", a.id);
        }
    }
    if !left.is_empty() {
        if json {
            bail!("{} VM(s) stayed on server {}", left.len(), a.id);
        }
        std::process::exit(1);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn disks_show_as_a_table_with_why_each_fails() {
        let disks = vec![
            json!({"device": "/dev/sda", "protocol": "ATA", "model": "QEMU HARDDISK", "serial": "QM00005", "passed": false,
                "temperature_celsius": 31, "reallocated_sectors": 1234, "pending_sectors": 8, "power_on_hours": 41234,
                "failing": ["SMART overall-health self-assessment: FAILED", "8 sector(s) pending reallocation (unreadable)"]}),
            json!({"device": "/dev/nvme0", "protocol": "NVMe", "model": "QEMU NVMe Ctrl", "serial": "N0", "passed": true,
                "temperature_celsius": 50, "percentage_used": 3, "media_errors": 0}),
            json!({"device": "/dev/sdz", "protocol": "", "error": "Smartctl open device: /dev/sdz [SAT] failed: No such device"}),
        ];
        let lines = disk_lines(&disks);
        assert_eq!(lines[0], "disks:");
        assert!(lines[1].starts_with("  DEVICE      PROTOCOL  MODEL"), "{lines:#?}");
        let cells = |i: usize| lines[i].split_whitespace().collect::<Vec<_>>();
        assert_eq!(
            cells(2),
            vec!["/dev/sda", "ATA", "QEMU", "HARDDISK", "QM00005", "FAILING", "31°C", "1234", "8", "-", "-", "-", "-", "41234"]
        );
        assert_eq!(cells(3), vec!["/dev/nvme0", "NVMe", "QEMU", "NVMe", "Ctrl", "N0", "ok", "50°C", "-", "-", "-", "3", "0", "-", "-"]);
        assert_eq!(cells(4), vec!["/dev/sdz", "-", "-", "-", "unread", "-", "-", "-", "-", "-", "-", "-", "-"]);
        assert_eq!(lines[5], "  /dev/sda failing: SMART overall-health self-assessment: FAILED");
        assert_eq!(lines[6], "  /dev/sda failing: 8 sector(s) pending reallocation (unreadable)");
        assert_eq!(lines[7], "  /dev/sdz not read: Smartctl open device: /dev/sdz [SAT] failed: No such device");
        assert_eq!(lines.len(), 8);
        assert!(disk_lines(&[])[0].starts_with("disks: none read"));
    }

    #[test]
    fn progress_lines_say_phase_state_and_amount() {
        let e = json!({"type": "progress", "phase": "sync", "state": "running", "current_progress": 512u64 << 20,
            "total_progress": 1u64 << 30, "transfer_bytes_second": 100u64 << 20});
        assert_eq!(progress_line(&e), "sync    running     50%  512.0 MiB of 1.0 GiB  at 100.0 MiB/s");
        let e = json!({"type": "progress", "phase": "begin", "state": "successful", "current_progress": 100, "total_progress": 100,
            "message": "reserving instance"});
        assert_eq!(progress_line(&e), "begin   successful 100%  reserving instance");
        let e = json!({"type": "end", "phase": "sync", "state": "failed", "message": "transfer cut"});
        assert_eq!(progress_line(&e), "end: sync failed: transfer cut");
    }

    #[test]
    fn outcomes() {
        let m = json!({"vm_uuid": "v", "phase": "switch", "state": "successful", "target_server_uuid": "t", "mechanism": "live", "pause_ms": 12});
        assert_eq!(outcome(&m), (true, "VM v migrated to server t (live, paused 12 ms); finalize it to remove the source's copy".into()));
        let m = json!({"vm_uuid": "v", "phase": "sync", "state": "failed", "source_server_uuid": "s", "error": "cut"});
        let (ok, line) = outcome(&m);
        assert!(!ok);
        assert_eq!(line, "migration of VM v failed in phase sync: cut. The VM stays on server s");
    }

    #[test]
    fn evacuation_lines_and_explanations() {
        let ev = json!({"vms": [
            {"vm_uuid": "a", "state": "migrated"},
            {"vm_uuid": "b", "alias": "big", "state": "unplaceable",
             "explanation": {"rejected": [{"hostname": "cn-2", "step": "ram", "reason": "needs 64 GiB, has 15 GiB free"}]}},
        ]});
        let left = stayed(&ev);
        assert_eq!(left.len(), 1);
        assert_eq!(vm_outcome(left[0]), "VM b (big): stays: no other server can take it");
        assert_eq!(explanation_lines(&left[0]["explanation"], "s"), ["    cn-2: needs 64 GiB, has 15 GiB free (ram)"]);
        assert_eq!(explanation_lines(&json!("no server has room\nnone"), "s"), ["    no server has room", "    none"]);
        let fields = json!([{"field": "s", "code": "reserved", "message": "cn-1: server is reserved"},
            {"field": "t", "code": "ram", "message": "cn-2: not enough RAM"}]);
        assert_eq!(explanation_lines(&fields, "s"), ["    cn-2: not enough RAM"]);
    }

    #[test]
    fn a_servers_migrations_name_its_role() {
        let mut m = json!({"source_server_uuid": "s", "target_server_uuid": "t"});
        assert_eq!(with_role(&mut m, "t")["role"], "target");
        let mut m = json!({"source_server_uuid": "s", "target_server_uuid": "t"});
        assert_eq!(with_role(&mut m, "s")["role"], "source");
    }
}
