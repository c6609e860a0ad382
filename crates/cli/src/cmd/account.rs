//! `nereid admin account …`: accounts (tenants) and their SSH keys over the admin API's
//! `/accounts` endpoints.

use std::path::Path;

use anyhow::{Context, Result};
use nereid_client::{Client, enc};
use serde_json::{Map, Value, json};

use super::admin::body;
use crate::cli::{AccountCreateArgs, AccountVerb, KeyVerb, PasswdArgs};
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

/// The first line of a password file ("-": standard input), without its line ending.
fn read_password_file(path: &Path) -> Result<String> {
    let text = if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin()).context("reading the password from standard input")?
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading the password file {}", path.display()))?
    };
    Ok(text.lines().next().unwrap_or_default().to_string())
}

/// Reads a line from the terminal without echoing it.
fn prompt_hidden(prompt: &str) -> Result<String> {
    use std::io::{BufRead, Write};
    let stdin = std::io::stdin();
    let saved = rustix::termios::tcgetattr(&stdin).context("reading the terminal's settings")?;
    let mut quiet = saved.clone();
    quiet.local_modes.remove(rustix::termios::LocalModes::ECHO);
    eprint!("{prompt}");
    std::io::stderr().flush()?;
    rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &quiet)?;
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    let _ = rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &saved);
    eprintln!();
    read.context("reading the password")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

/// The new password: from `--password-file`, asked twice on a terminal, else one line of
/// standard input (for scripts: `echo "$PW" | nereid admin account passwd alice`).
fn new_password(a: &PasswdArgs) -> Result<String> {
    use std::io::IsTerminal;
    if let Some(f) = &a.password_file {
        return read_password_file(f);
    }
    if !std::io::stdin().is_terminal() {
        return read_password_file(Path::new("-"));
    }
    let first = prompt_hidden(&format!("new password for {}: ", a.account))?;
    let again = prompt_hidden("again: ")?;
    anyhow::ensure!(first == again, "the two passwords differ; nothing was changed");
    Ok(first)
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
    if let Some(f) = &a.password_file {
        b.insert("password".into(), json!(read_password_file(f)?));
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
            let mut b = body(nereid_types::account::FIELDS, a.update.file.as_deref(), &a.update.fields)?;
            if let Some(on) = a.cns_enabled {
                b.insert("triton_cns_enabled".into(), json!(on));
            }
            output::object(&c.put(&format!("/accounts/{}", enc(&a.update.id)), &Value::Object(b)).await?, json);
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
        AccountVerb::Passwd(a) => {
            let password = new_password(&a)?;
            c.put(&format!("/accounts/{}/password", enc(&a.account)), &json!({"password": password})).await?;
            if !json {
                println!("password of {} set", a.account);
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
        AccountVerb::Limit { verb } => super::limit::run(c, verb, json).await?,
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
