//! `nereid admin fwrule …`: firewall rules over the admin API's `/fwrules` (FWAPI), for
//! any account (`--owner LOGIN|UUID`, resolved through `/accounts`) or global ones.

use anyhow::{Result, bail};
use nereid_client::{Client, enc};
use serde_json::{Map, Value, json};

use super::admin::body;
use crate::cli::{FwruleOwner, FwruleVerb};
use crate::output::{self, Column, text};

const COLUMNS: &[Column] = &[
    Column { header: "UUID", get: |v| text(v, "uuid") },
    Column { header: "ENABLED", get: |v| text(v, "enabled") },
    Column { header: "GLOBAL", get: |v| text(v, "global") },
    Column { header: "OWNER", get: |v| text(v, "owner_uuid") },
    Column { header: "RULE", get: |v| text(v, "rule") },
];

/// The owner's UUID (a login is looked up).
async fn owner_uuid(c: &Client, who: &str) -> Result<String> {
    let a = c.get(&format!("/accounts/{}", enc(who))).await?;
    Ok(text(&a, "uuid"))
}

fn show_list(v: &Value, json: bool) {
    if json {
        output::object(v, true);
    } else {
        output::table(COLUMNS, v.as_array().map(Vec::as_slice).unwrap_or(&[]));
    }
}

async fn who(c: &Client, w: &FwruleOwner, b: &mut Map<String, Value>) -> Result<()> {
    if let Some(o) = &w.owner {
        b.insert("owner_uuid".into(), json!(owner_uuid(c, o).await?));
    }
    if w.global {
        b.insert("global".into(), json!(true));
    }
    Ok(())
}

pub async fn run(c: &Client, v: FwruleVerb, json: bool) -> Result<()> {
    let fields = nereid_headnode::app::fwrules::FIELDS;
    match v {
        FwruleVerb::List(a) => {
            let mut q = Vec::new();
            if let Some(o) = &a.who.owner {
                q.push(format!("owner_uuid={}", enc(&owner_uuid(c, o).await?)));
            }
            if a.who.global {
                q.push("global=true".into());
            }
            if let Some(e) = a.enabled {
                q.push(format!("enabled={e}"));
            }
            let query = if q.is_empty() { String::new() } else { format!("?{}", q.join("&")) };
            show_list(&c.get(&format!("/fwrules{query}")).await?, json);
        }
        FwruleVerb::Get(id) => output::object(&c.get(&format!("/fwrules/{}", enc(&id.id))).await?, json),
        FwruleVerb::Create(a) => {
            if a.who.owner.is_none() && !a.who.global {
                bail!("give the rule's account with --owner LOGIN|UUID, or --global for an operator-wide rule");
            }
            let mut b = Map::new();
            b.insert("rule".into(), json!(a.rule));
            b.insert("enabled".into(), json!(!a.disabled));
            if let Some(d) = &a.description {
                b.insert("description".into(), json!(d));
            }
            if a.log {
                b.insert("log".into(), json!(true));
            }
            who(c, &a.who, &mut b).await?;
            output::object(&c.post("/fwrules", &Value::Object(b)).await?, json);
        }
        FwruleVerb::Update(a) => {
            let b = body(fields, a.file.as_deref(), &a.fields)?;
            output::object(&c.put(&format!("/fwrules/{}", enc(&a.id)), &Value::Object(b)).await?, json);
        }
        FwruleVerb::Enable(id) => output::object(&c.put(&format!("/fwrules/{}", enc(&id.id)), &json!({"enabled": true})).await?, json),
        FwruleVerb::Disable(id) => output::object(&c.put(&format!("/fwrules/{}", enc(&id.id)), &json!({"enabled": false})).await?, json),
        FwruleVerb::Delete(id) => {
            c.delete(&format!("/fwrules/{}", enc(&id.id))).await?;
            if !json {
                println!("deleted fwrule {}", id.id);
            }
        }
        FwruleVerb::Vms(id) => {
            let out = c.get(&format!("/fwrules/{}/vms", enc(&id.id))).await?;
            if json {
                output::object(&out, true);
            } else {
                output::table(super::admin::VM.columns, out.as_array().map(Vec::as_slice).unwrap_or(&[]));
            }
        }
    }
    Ok(())
}
