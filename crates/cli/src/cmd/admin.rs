//! `nereid admin <noun> <verb>`: generic list/get/create/update/delete over the operator APIs.
//!
//! Each resource is one [`Resource`] entry: where it lives, its field tables (which turn
//! `FIELD=VALUE` arguments into typed JSON and write the `--help` field lists) and its
//! table columns. A new resource is a new entry here and a noun in `cli.rs`.

use std::path::Path;

use anyhow::{Context, Result, bail};
use nereid_client::{Client, enc};
use nereid_types::spec::{Field, Kind};
use serde_json::{Map, Value};

use crate::cli::{AdminArgs, ImageVerb, JobVerb, NetworkVerb, Noun, ServerVerb, SnapshotOp, Verb, VmVerb};
use crate::output::{self, Column, text};

/// How a resource is changed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum UpdateStyle {
    /// `PUT <path>/<id>`.
    Put,
    /// `POST <path>/<id>?action=update` (IMGAPI, VMAPI).
    PostAction,
    /// `POST <path>/<id>` (CNAPI ServerUpdate).
    Post,
}

pub struct Resource {
    pub noun: &'static str,
    pub path: &'static str,
    pub fields: &'static [Field],
    pub update_fields: &'static [Field],
    pub columns: &'static [Column],
    pub update: UpdateStyle,
}

pub const PACKAGE: Resource = Resource {
    noun: "package",
    path: "/packages",
    fields: nereid_types::package::FIELDS,
    update_fields: nereid_types::package::FIELDS,
    update: UpdateStyle::Put,
    columns: &[
        Column { header: "UUID", get: |v| text(v, "uuid") },
        Column { header: "NAME", get: |v| text(v, "name") },
        Column { header: "VERSION", get: |v| text(v, "version") },
        Column { header: "RAM(MiB)", get: |v| text(v, "max_physical_memory") },
        Column { header: "DISK(MiB)", get: |v| text(v, "quota") },
        Column { header: "VCPUS", get: |v| text(v, "vcpus") },
        Column { header: "CPU_CAP", get: |v| text(v, "cpu_cap") },
        Column { header: "BRAND", get: |v| text(v, "brand") },
        Column { header: "ACTIVE", get: |v| text(v, "active") },
    ],
};

pub const IMAGE: Resource = Resource {
    noun: "image",
    path: "/images",
    fields: nereid_types::image::FIELDS,
    update_fields: nereid_types::image::FIELDS,
    update: UpdateStyle::PostAction,
    columns: &[
        Column { header: "UUID", get: |v| text(v, "uuid") },
        Column { header: "NAME", get: |v| text(v, "name") },
        Column { header: "VERSION", get: |v| text(v, "version") },
        Column { header: "OS", get: |v| text(v, "os") },
        Column { header: "TYPE", get: |v| text(v, "type") },
        Column { header: "STATE", get: |v| text(v, "state") },
        Column { header: "SIZE(MiB)", get: |v| text(v, "image_size") },
        Column { header: "PUBLISHED", get: |v| text(v, "published_at") },
    ],
};

pub const NETWORK: Resource = Resource {
    noun: "network",
    path: "/networks",
    fields: nereid_types::network::FIELDS,
    update_fields: nereid_types::network::FIELDS,
    update: UpdateStyle::Put,
    columns: &[
        Column { header: "UUID", get: |v| text(v, "uuid") },
        Column { header: "NAME", get: |v| text(v, "name") },
        Column { header: "SUBNET", get: |v| text(v, "subnet") },
        Column { header: "GATEWAY", get: |v| text(v, "gateway") },
        Column { header: "RANGE", get: |v| format!("{}-{}", text(v, "provision_start_ip"), text(v, "provision_end_ip")) },
        Column { header: "VLAN", get: |v| text(v, "vlan_id") },
        Column { header: "NIC_TAG", get: |v| text(v, "nic_tag") },
        Column { header: "MTU", get: |v| text(v, "mtu") },
    ],
};

pub const NETWORK_POOL: Resource = Resource {
    noun: "network-pool",
    path: "/network_pools",
    fields: nereid_types::network::POOL_FIELDS,
    update_fields: nereid_types::network::POOL_FIELDS,
    update: UpdateStyle::Put,
    columns: &[
        Column { header: "UUID", get: |v| text(v, "uuid") },
        Column { header: "NAME", get: |v| text(v, "name") },
        Column { header: "NIC_TAG", get: |v| text(v, "nic_tag") },
        Column { header: "NETWORKS", get: |v| text(v, "networks") },
    ],
};

pub const NIC_TAG: Resource = Resource {
    noun: "nic-tag",
    path: "/nic_tags",
    fields: nereid_types::nic_tag::FIELDS,
    update_fields: nereid_types::nic_tag::FIELDS,
    update: UpdateStyle::Put,
    columns: &[
        Column { header: "NAME", get: |v| text(v, "name") },
        Column { header: "MTU", get: |v| text(v, "mtu") },
        Column { header: "UUID", get: |v| text(v, "uuid") },
    ],
};

pub const NIC: Resource = Resource {
    noun: "nic",
    path: "/nics",
    fields: nereid_types::nic::FIELDS,
    update_fields: nereid_types::nic::UPDATE_FIELDS,
    update: UpdateStyle::Put,
    columns: &[
        Column { header: "MAC", get: |v| text(v, "mac") },
        Column { header: "IP", get: |v| text(v, "ip") },
        Column { header: "NETWORK", get: |v| text(v, "network_uuid") },
        Column { header: "BELONGS_TO", get: |v| text(v, "belongs_to_uuid") },
        Column { header: "TYPE", get: |v| text(v, "belongs_to_type") },
        Column { header: "STATE", get: |v| text(v, "state") },
        Column { header: "PRIMARY", get: |v| text(v, "primary") },
    ],
};

const IP_COLUMNS: &[Column] = &[
    Column { header: "IP", get: |v| text(v, "ip") },
    Column { header: "RESERVED", get: |v| text(v, "reserved") },
    Column { header: "FREE", get: |v| text(v, "free") },
    Column { header: "BELONGS_TO", get: |v| text(v, "belongs_to_uuid") },
    Column { header: "TYPE", get: |v| text(v, "belongs_to_type") },
    Column { header: "OWNER", get: |v| text(v, "owner_uuid") },
];

pub const SERVER: Resource = Resource {
    noun: "server",
    path: "/servers",
    fields: nereid_types::server::UPDATE_FIELDS,
    update_fields: nereid_types::server::UPDATE_FIELDS,
    update: UpdateStyle::Post,
    columns: &[
        Column { header: "UUID", get: |v| text(v, "uuid") },
        Column { header: "HOSTNAME", get: |v| text(v, "hostname") },
        Column { header: "STATUS", get: |v| text(v, "status") },
        Column { header: "RAM(MiB)", get: |v| text(v, "ram") },
        Column { header: "RESERVED", get: |v| text(v, "reserved") },
        Column { header: "LAST_HEARTBEAT", get: |v| text(v, "last_heartbeat") },
    ],
};

pub const VM: Resource = Resource {
    noun: "vm",
    path: "/vms",
    fields: nereid_types::vm::CREATE_FIELDS,
    update_fields: nereid_types::vm::UPDATE_FIELDS,
    update: UpdateStyle::PostAction,
    columns: &[
        Column { header: "UUID", get: |v| text(v, "uuid") },
        Column { header: "ALIAS", get: |v| text(v, "alias") },
        Column { header: "STATE", get: |v| text(v, "state") },
        Column { header: "RAM(MiB)", get: |v| text(v, "ram") },
        Column { header: "IP", get: |v| v.pointer("/nics/0/ip").and_then(Value::as_str).unwrap_or("-").to_string() },
        Column { header: "SERVER", get: |v| text(v, "server_uuid") },
        Column { header: "OWNER", get: |v| text(v, "owner_uuid") },
    ],
};

const JOB_COLUMNS: &[Column] = &[
    Column { header: "UUID", get: |v| text(v, "uuid") },
    Column { header: "TASK", get: |v| text(v, "task") },
    Column { header: "EXECUTION", get: |v| text(v, "execution") },
    Column { header: "VM", get: |v| text(v, "vm_uuid") },
    Column { header: "CREATED", get: |v| text(v, "created_at") },
    Column { header: "ERROR", get: |v| text(v, "error") },
];

pub const RESOURCES: &[&Resource] = &[&PACKAGE, &IMAGE, &NETWORK, &NETWORK_POOL, &NIC_TAG, &NIC, &SERVER, &VM];

/// Turns `FIELD=VALUE` into a typed JSON value using the field's kind.
pub fn coerce(fields: &[Field], key: &str, raw: &str) -> Result<Value, String> {
    if raw == "null" {
        return Ok(Value::Null);
    }
    let Some(f) = fields.iter().find(|f| f.name == key) else {
        // Unknown to this client: pass JSON through, else a string (the server names the problem).
        return Ok(serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string())));
    };
    match f.kind {
        Kind::Str { .. } | Kind::Uuid | Kind::Enum(_) | Kind::Ipv4 | Kind::Cidr => Ok(Value::String(raw.to_string())),
        Kind::Int { .. } => raw.parse::<i64>().map(Value::from).map_err(|_| format!("{key} takes an integer, not {raw:?}")),
        Kind::Bool => match raw {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            _ => Err(format!("{key} takes true or false, not {raw:?}")),
        },
        Kind::UuidList | Kind::StrList { .. } | Kind::Ipv4List => {
            if raw.trim_start().starts_with('[') {
                serde_json::from_str(raw).map_err(|e| format!("{key}: {e}"))
            } else if raw.is_empty() {
                Ok(Value::Array(Vec::new()))
            } else {
                Ok(Value::Array(raw.split(',').map(|s| Value::String(s.trim().to_string())).collect()))
            }
        }
        Kind::Object | Kind::Custom { .. } => {
            serde_json::from_str(raw).map_err(|e| format!("{key} takes JSON (e.g. {key}='{{\"a\": 1}}'): {e}"))
        }
    }
}

/// Builds a request body from a JSON file and `FIELD=VALUE` pairs.
pub fn body(fields: &[Field], file: Option<&Path>, pairs: &[String]) -> Result<Map<String, Value>> {
    let mut obj = match file {
        None => Map::new(),
        Some(p) => {
            let text = if p == Path::new("-") {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?
            };
            match serde_json::from_str::<Value>(&text).with_context(|| format!("{} is not JSON", p.display()))? {
                Value::Object(m) => m,
                _ => bail!("{} must hold a JSON object", p.display()),
            }
        }
    };
    for pair in pairs {
        let Some((k, v)) = pair.split_once('=') else { bail!("{pair:?} is not FIELD=VALUE") };
        obj.insert(k.to_string(), coerce(fields, k, v).map_err(anyhow::Error::msg)?);
    }
    Ok(obj)
}

/// `FIELD=VALUE` pairs as a query string.
pub fn query(pairs: &[String]) -> Result<String> {
    let mut parts = Vec::new();
    for pair in pairs {
        let Some((k, v)) = pair.split_once('=') else { bail!("{pair:?} is not FIELD=VALUE") };
        parts.push(format!("{}={}", enc(k), enc(v)));
    }
    Ok(if parts.is_empty() { String::new() } else { format!("?{}", parts.join("&")) })
}

fn show_list(columns: &[Column], v: &Value, json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    } else {
        output::table(columns, v.as_array().map(Vec::as_slice).unwrap_or(&[]));
    }
}

async fn verb(c: &Client, r: &Resource, v: Verb, json: bool) -> Result<()> {
    match v {
        Verb::List(a) => {
            let out = c.get(&format!("{}{}", r.path, query(&a.filters)?)).await?;
            show_list(r.columns, &out, json);
        }
        Verb::Get(a) => output::object(&c.get(&format!("{}/{}", r.path, enc(&a.id))).await?, json),
        Verb::Create(a) => {
            let b = body(r.fields, a.file.as_deref(), &a.fields)?;
            output::object(&c.post(r.path, &Value::Object(b)).await?, json);
        }
        Verb::Update(a) => {
            let b = Value::Object(body(r.update_fields, a.file.as_deref(), &a.fields)?);
            let id = enc(&a.id);
            let out = match r.update {
                UpdateStyle::Put if a.force => c.put(&format!("{}/{id}?force=true", r.path), &b).await?,
                UpdateStyle::Put => c.put(&format!("{}/{id}", r.path), &b).await?,
                UpdateStyle::PostAction => c.post(&format!("{}/{id}?action=update", r.path), &b).await?,
                UpdateStyle::Post => {
                    c.post(&format!("{}/{id}", r.path), &b).await?;
                    c.get(&format!("{}/{id}", r.path)).await?
                }
            };
            output::object(&out, json);
        }
        Verb::Delete(a) => {
            let force = if a.force { "?force=true" } else { "" };
            c.delete(&format!("{}/{}{force}", r.path, enc(&a.id))).await?;
            if !json {
                println!("deleted {} {}", r.noun, a.id);
            }
        }
    }
    Ok(())
}

pub async fn run(a: AdminArgs) -> Result<()> {
    let c = super::client(&a.client)?;
    let json = a.client.json;
    match a.noun {
        Noun::Package { verb: v } => verb(&c, &PACKAGE, v, json).await,
        Noun::NetworkPool { verb: v } => verb(&c, &NETWORK_POOL, v, json).await,
        Noun::NicTag { verb: v } => verb(&c, &NIC_TAG, v, json).await,
        Noun::Nic { verb: v } => verb(&c, &NIC, v, json).await,
        Noun::Image { verb: ImageVerb::Common(v) } => verb(&c, &IMAGE, v, json).await,
        Noun::Image { verb: ImageVerb::Activate(id) } => image_action(&c, &id.id, "activate", json).await,
        Noun::Image { verb: ImageVerb::Disable(id) } => image_action(&c, &id.id, "disable", json).await,
        Noun::Image { verb: ImageVerb::Enable(id) } => image_action(&c, &id.id, "enable", json).await,
        Noun::Image { verb: ImageVerb::Sources { verb: v } } => super::image_remote::sources(&c, v, json).await,
        Noun::Image { verb: ImageVerb::Avail(a) } => super::image_remote::avail(&c, a, json).await,
        Noun::Image { verb: ImageVerb::ImportRemote(a) } => super::image_remote::import_remote(&c, a, json).await,
        Noun::Network { verb: NetworkVerb::Common(v) } => verb(&c, &NETWORK, v, json).await,
        Noun::Server { verb: ServerVerb::List(a) } => verb(&c, &SERVER, Verb::List(a), json).await,
        Noun::Server { verb: ServerVerb::Get(a) } => super::migrate::server_get(&c, &a.id, json).await,
        Noun::Server { verb: ServerVerb::Evacuate(a) } => super::migrate::server_evacuate(&c, a, json).await,
        Noun::Server { verb: ServerVerb::Update(a) } => verb(&c, &SERVER, Verb::Update(a), json).await,
        Noun::Server { verb: ServerVerb::Delete(a) } => verb(&c, &SERVER, Verb::Delete(a), json).await,
        Noun::Server { verb: ServerVerb::Trust(id) } => {
            output::object(&c.get(&format!("/servers/{}/trust", enc(&id.id))).await?, json);
            Ok(())
        }
        Noun::Server { verb: ServerVerb::Approve(id) } => {
            output::object(&c.post(&format!("/servers/{}/approve", enc(&id.id)), &serde_json::json!({})).await?, json);
            Ok(())
        }
        Noun::Server { verb: ServerVerb::Revoke(id) } => {
            output::object(&c.post(&format!("/servers/{}/revoke", enc(&id.id)), &serde_json::json!({})).await?, json);
            Ok(())
        }
        Noun::Vm { verb: v } => vm(&c, v, json).await,
        Noun::Account { verb: v } => super::account::run(&c, v, json).await,
        Noun::Fabric { verb: v } => super::fabric::run(&c, v, json).await,
        Noun::Fwrule { verb: v } => super::fwrule::run(&c, v, json).await,
        Noun::Audit { verb: v } => super::audit::run(&c, v, json).await,
        Noun::Oneachnode(o) => super::oneachnode::run(&c, o, json).await,
        Noun::Doctor { repair } => doctor(&c, repair, json).await,
        Noun::Job { verb: JobVerb::List(a) } => {
            let out = c.get(&format!("/jobs{}", query(&a.filters)?)).await?;
            show_list(JOB_COLUMNS, &out, json);
            Ok(())
        }
        Noun::Job { verb: JobVerb::Get(id) } => {
            output::object(&c.get(&format!("/jobs/{}", enc(&id.id))).await?, json);
            Ok(())
        }
        Noun::Job { verb: JobVerb::Wait(id) } => report_job(&c, &id.id, json).await,
        Noun::Network { verb: NetworkVerb::Ips(id) } => {
            let out = c.get(&format!("/networks/{}/ips", enc(&id.id))).await?;
            show_list(IP_COLUMNS, &out, json);
            Ok(())
        }
        Noun::Network { verb: NetworkVerb::Ip { network, ip, fields } } => {
            let path = format!("/networks/{}/ips/{}", enc(&network), enc(&ip));
            let out = if fields.is_empty() {
                c.get(&path).await?
            } else {
                c.put(&path, &Value::Object(body(nereid_types::nic::IP_UPDATE_FIELDS, None, &fields)?)).await?
            };
            output::object(&out, json);
            Ok(())
        }
    }
}

/// Waits for a job and says how it ended; a failed job is an error.
async fn report_job(c: &Client, job: &str, json: bool) -> Result<()> {
    let j = loop {
        let j = c.get(&format!("/jobs/{}/wait?timeout=60", enc(job))).await?;
        if matches!(j["execution"].as_str(), Some("succeeded" | "failed" | "canceled")) {
            break j;
        }
    };
    if json {
        output::object(&j, true);
    } else {
        for r in j["chain_results"].as_array().into_iter().flatten() {
            let (res, err) = (text(r, "result"), r["error"].as_str().unwrap_or(""));
            println!("  {:<14} {}", text(r, "name"), if err.is_empty() { res } else { format!("FAILED: {err}") });
        }
        for r in j["onerror_results"].as_array().into_iter().flatten() {
            println!(
                "  {:<14} {}",
                text(r, "name"),
                if r["error"].as_str().unwrap_or("").is_empty() { text(r, "result") } else { format!("FAILED: {}", text(r, "error")) }
            );
        }
        println!("job {} ({}) {}", text(&j, "uuid"), text(&j, "task"), text(&j, "execution"));
    }
    if j["execution"] != "succeeded" {
        bail!("job {} {}: {}", text(&j, "uuid"), text(&j, "execution"), text(&j, "error"));
    }
    Ok(())
}

async fn vm(c: &Client, v: VmVerb, json: bool) -> Result<()> {
    let accepted = |out: &Value| -> Result<String> {
        let job =
            out["job_uuid"].as_str().map(str::to_string).ok_or_else(|| anyhow::anyhow!("the headnode answered without a job: {out}"))?;
        Ok(job)
    };
    let (out, wait) = match v {
        VmVerb::List(a) => {
            let out = c.get(&format!("/vms{}", query(&a.filters)?)).await?;
            show_list(VM.columns, &out, json);
            return Ok(());
        }
        VmVerb::Get(a) => {
            let sync = if a.sync { "?sync=true" } else { "" };
            output::object(&c.get(&format!("/vms/{}{sync}", enc(&a.id))).await?, json);
            return Ok(());
        }
        VmVerb::Create(a) => (c.post("/vms", &Value::Object(body(VM.fields, a.file.as_deref(), &a.fields)?)).await?, a.wait),
        VmVerb::Start(a) => (c.post(&format!("/vms/{}?action=start", enc(&a.id)), &Value::Object(Map::new())).await?, a.wait),
        VmVerb::Stop(a) => (c.post(&format!("/vms/{}?action=stop", enc(&a.id)), &Value::Object(Map::new())).await?, a.wait),
        VmVerb::Reboot(a) => (c.post(&format!("/vms/{}?action=reboot", enc(&a.id)), &Value::Object(Map::new())).await?, a.wait),
        VmVerb::Update(a) => {
            let mut b = body(VM.update_fields, None, &a.fields)?;
            if a.force {
                b.insert("force".into(), Value::Bool(true));
            }
            (c.post(&format!("/vms/{}?action=update", enc(&a.id)), &Value::Object(b)).await?, a.wait)
        }
        VmVerb::AddNics(a) => nics_action(c, &a, "add_nics", nereid_types::vm::ADD_NICS_FIELDS).await?,
        VmVerb::UpdateNics(a) => nics_action(c, &a, "update_nics", nereid_types::vm::UPDATE_NICS_FIELDS).await?,
        VmVerb::RemoveNics(a) => nics_action(c, &a, "remove_nics", nereid_types::vm::REMOVE_NICS_FIELDS).await?,
        VmVerb::Delete(a) => (c.delete(&format!("/vms/{}", enc(&a.id))).await?, a.wait),
        VmVerb::Console(a) => return super::console::run(c, &a).await,
        VmVerb::Migrate(a) => return super::migrate::vm_migrate(c, a, json).await,
        VmVerb::Migration(a) => return super::migrate::vm_migration(c, &a.id, json).await,
        VmVerb::Snapshot(a) => {
            let action = match a.op {
                SnapshotOp::Create => "create_snapshot",
                SnapshotOp::Rollback => "rollback_snapshot",
                SnapshotOp::Delete => "delete_snapshot",
            };
            let path = format!("/vms/{}?action={action}&snapshot_name={}", enc(&a.id), enc(&a.name));
            (c.post(&path, &Value::Object(Map::new())).await?, a.wait)
        }
    };
    let job = accepted(&out)?;
    if !json {
        println!("VM {} job {job}", text(&out, "vm_uuid"));
        for w in out.pointer("/placement/warnings").and_then(Value::as_array).into_iter().flatten() {
            println!("warning: {}", w.as_str().unwrap_or_default());
        }
    }
    if wait {
        report_job(c, &job, json).await
    } else {
        if json {
            output::object(&out, true);
        }
        Ok(())
    }
}

async fn image_action(c: &Client, id: &str, action: &str, json: bool) -> Result<()> {
    let out = c.post(&format!("/images/{}?action={action}", enc(id)), &Value::Object(Map::new())).await?;
    output::object(&out, json);
    Ok(())
}

/// `POST /vms/:uuid?action=add_nics|update_nics|remove_nics`: the job, and whether to wait for it.
async fn nics_action(c: &Client, a: &crate::cli::VmNicsArgs, action: &str, fields: &[Field]) -> Result<(Value, bool)> {
    let b = body(fields, None, &a.fields)?;
    Ok((c.post(&format!("/vms/{}?action={action}", enc(&a.id)), &Value::Object(b)).await?, a.wait))
}

/// `nereid admin doctor [--repair]`: prints the findings (and repairs); exits 1 while any remain.
async fn doctor(c: &Client, repair: bool, json: bool) -> Result<()> {
    let report = if repair { c.post("/doctor?action=repair", &Value::Object(Map::new())).await? } else { c.get("/doctor").await? };
    let findings = report["findings"].as_array().cloned().unwrap_or_default();
    if json {
        output::object(&report, true);
    } else {
        for r in report["repairs"].as_array().into_iter().flatten() {
            let mark = if r["ok"] == Value::Bool(true) { "repaired" } else { "FAILED to repair" };
            println!("{mark} {} ({}): {}", text(r, "subject"), text(r, "kind"), text(r, "result"));
        }
        if !report["repairs"].as_array().is_none_or(Vec::is_empty) {
            println!();
        }
        for f in &findings {
            println!("{}  {}", text(f, "kind"), text(f, "subject"));
            println!("    {}", text(f, "message"));
            let how = if f.get("safe_repair").is_some() { "repair (--repair does it)" } else { "repair (by hand)" };
            println!("    {how}: {}", text(f, "repair"));
        }
        let safe = findings.iter().filter(|f| f.get("safe_repair").is_some()).count();
        let checked: Vec<String> = report["checked"].as_object().into_iter().flatten().map(|(k, v)| format!("{v} {k}")).collect();
        match (findings.len(), safe) {
            (0, _) => println!("no problems found (checked {})", checked.join(", ")),
            (n, 0) => println!("{n} problem(s); none can be repaired automatically"),
            (n, s) => println!("{n} problem(s); {s} can be repaired with --repair"),
        }
    }
    if !findings.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coerces_by_field_kind() {
        let f = nereid_types::package::FIELDS;
        assert_eq!(coerce(f, "name", "1.0").unwrap(), Value::String("1.0".into()));
        assert_eq!(coerce(f, "quota", "10240").unwrap(), Value::from(10240));
        assert_eq!(coerce(f, "active", "false").unwrap(), Value::Bool(false));
        assert!(coerce(f, "quota", "lots").unwrap_err().contains("integer"));
        assert_eq!(coerce(f, "owner_uuids", "a,b").unwrap(), serde_json::json!(["a", "b"]));
        assert_eq!(coerce(f, "traits", r#"{"ssd": true}"#).unwrap(), serde_json::json!({"ssd": true}));
        assert_eq!(coerce(f, "description", "null").unwrap(), Value::Null);
        let n = nereid_types::network::FIELDS;
        assert_eq!(coerce(n, "resolvers", "8.8.8.8, 1.1.1.1").unwrap(), serde_json::json!(["8.8.8.8", "1.1.1.1"]));
        assert_eq!(query(&["name=a b".into(), "tag.role=os".into()]).unwrap(), "?name=a+b&tag.role=os");
    }
}
