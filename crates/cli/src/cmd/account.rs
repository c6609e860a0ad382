//! `nereid admin account …`: accounts (tenants) and their SSH keys over the admin API's
//! `/accounts` endpoints.

use std::path::Path;

use anyhow::{Context, Result};
use nereid_client::{Client, enc};
use serde_json::{Map, Value, json};

use super::admin::body;
use crate::cli::{AccountCreateArgs, AccountVerb, KeyVerb};
use crate::output::{self, Column, text};

const ACCOUNT_COLUMNS: &[Column] = &[
    Column { header: "UUID", get: |v| text(v, "uuid") },
    Column { header: "LOGIN", get: |v| text(v, "login") },
    Column { header: "EMAIL", get: |v| text(v, "email") },
    Column { header: "OPERATOR", get: |v| text(v, "operator") },
    Column { header: "DISABLED", get: |v| text(v, "disabled") },
    Column { header: "CREATED", get: |v| text(v, "created") },
];

const KEY_COLUMNS: &[Column] = &[
    Column { header: "NAME", get: |v| text(v, "name") },
    Column { header: "TYPE", get: |v| format!("{}-{}", text(v, "type"), text(v, "bits")) },
    Column { header: "FINGERPRINT(MD5)", get: |v| text(v, "fingerprint") },
    Column { header: "SHA256", get: |v| text(v, "sha256") },
];

/// Reads a public key file ("-": standard input).
fn read_key(path: &Path) -> Result<String> {
    if path == Path::new("-") {
        return Ok(std::io::read_to_string(std::io::stdin())?);
    }
    std::fs::read_to_string(path).with_context(|| format!("reading the public key {}", path.display()))
}

fn create_body(a: &AccountCreateArgs) -> Result<Value> {
    let mut b: Map<String, Value> = body(nereid_types::account::FIELDS, None, &a.fields)?;
    b.insert("login".into(), json!(a.login));
    b.insert("email".into(), json!(a.email));
    if a.operator {
        b.insert("operator".into(), json!(true));
    }
    if let Some(f) = &a.key_file {
        let mut k = json!({"key": read_key(f)?});
        if let Some(n) = &a.key_name {
            k["name"] = json!(n);
        }
        b.insert("keys".into(), json!([k]));
    }
    Ok(Value::Object(b))
}

pub async fn run(c: &Client, v: AccountVerb, json: bool) -> Result<()> {
    match v {
        AccountVerb::Create(a) => {
            let out = c.post("/accounts", &create_body(&a)?).await?;
            if json {
                output::object(&out, true);
            } else {
                println!("account {} ({})", text(&out, "login"), text(&out, "uuid"));
                for k in out["keys"].as_array().into_iter().flatten() {
                    println!("key {} {}", text(k, "name"), text(k, "fingerprint"));
                }
            }
        }
        AccountVerb::List => {
            let out = c.get("/accounts").await?;
            if json {
                output::object(&out, true);
            } else {
                output::table(ACCOUNT_COLUMNS, out.as_array().map(Vec::as_slice).unwrap_or(&[]));
            }
        }
        AccountVerb::Get(id) => {
            let mut out = c.get(&format!("/accounts/{}", enc(&id.id))).await?;
            out["keys"] = c.get(&format!("/accounts/{}/keys", enc(&id.id))).await?;
            output::object(&out, json);
        }
        AccountVerb::Update(a) => {
            let b = body(nereid_types::account::FIELDS, a.file.as_deref(), &a.fields)?;
            output::object(&c.put(&format!("/accounts/{}", enc(&a.id)), &Value::Object(b)).await?, json);
        }
        AccountVerb::Disable(id) => {
            let out = c.put(&format!("/accounts/{}", enc(&id.id)), &json!({"disabled": true})).await?;
            if json {
                output::object(&out, true);
            } else {
                println!("account {} disabled: its keys no longer authenticate", text(&out, "login"));
            }
        }
        AccountVerb::Enable(id) => {
            let out = c.put(&format!("/accounts/{}", enc(&id.id)), &json!({"disabled": false})).await?;
            if json {
                output::object(&out, true);
            } else {
                println!("account {} enabled", text(&out, "login"));
            }
        }
        AccountVerb::Key { verb: KeyVerb::Add { account, file, name } } => {
            let mut b = json!({"key": read_key(&file)?});
            if let Some(n) = name {
                b["name"] = json!(n);
            }
            let out = c.post(&format!("/accounts/{}/keys", enc(&account)), &b).await?;
            if json {
                output::object(&out, true);
            } else {
                println!("key {} {} ({})", text(&out, "name"), text(&out, "fingerprint"), text(&out, "sha256"));
            }
        }
        AccountVerb::Key { verb: KeyVerb::List { account } } => {
            let out = c.get(&format!("/accounts/{}/keys", enc(&account))).await?;
            if json {
                output::object(&out, true);
            } else {
                output::table(KEY_COLUMNS, out.as_array().map(Vec::as_slice).unwrap_or(&[]));
            }
        }
        AccountVerb::Key { verb: KeyVerb::Remove { account, key } } => {
            c.delete(&format!("/accounts/{}/keys/{}", enc(&account), enc(&key))).await?;
            if !json {
                println!("removed key {key} of {account}");
            }
        }
    }
    Ok(())
}
