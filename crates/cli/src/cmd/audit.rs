//! `nereid admin audit list`: the audit log (`GET /audit`), newest first: who changed
//! what through the operator API, CloudAPI or the web console, and every failed sign-in.

use anyhow::Result;
use clap::{Args, Subcommand};
use nereid_client::{Client, enc};
use serde_json::Value;

use crate::output::{self, Column, text};

#[derive(Subcommand, Debug)]
pub enum AuditVerb {
    /// Records newest first (the operator API, CloudAPI and the web console)
    List(AuditListArgs),
}

#[derive(Args, Debug)]
pub struct AuditListArgs {
    /// Records made at or after this: an RFC 3339 time (2026-12-06T12:00:00Z) or an age (30m, 2h, 7d)
    #[arg(long, value_name = "T")]
    pub since: Option<String>,
    /// Records of this account login (its CloudAPI requests, web console session and sign-ins)
    #[arg(long, value_name = "LOGIN")]
    pub account: Option<String>,
    /// At most this many records (1-1000)
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub limit: u32,
}

const COLUMNS: &[Column] = &[
    Column { header: "TIME", get: |v| text(v, "time") },
    Column { header: "API", get: |v| text(v, "api") },
    Column { header: "ACTOR", get: actor },
    Column { header: "METHOD", get: |v| text(v, "method") },
    Column { header: "PATH", get: |v| text(v, "path") },
    Column { header: "STATUS", get: status },
    Column { header: "JOB", get: |v| text(v, "job_uuid") },
];

/// `operator sha256:…`, `account alice key`, `web_session alice`, `anonymous`.
fn actor(v: &Value) -> String {
    let a = v.get("actor").cloned().unwrap_or(Value::Null);
    [a.get("kind"), a.get("name"), a.get("key")].into_iter().flatten().filter_map(Value::as_str).collect::<Vec<_>>().join(" ")
}

/// `204`, or `401 InvalidCredentials`.
fn status(v: &Value) -> String {
    match v.get("result").and_then(Value::as_str) {
        Some("ok") | None => text(v, "status"),
        Some(code) => format!("{} {code}", text(v, "status")),
    }
}

pub async fn run(c: &Client, v: AuditVerb, json: bool) -> Result<()> {
    match v {
        AuditVerb::List(a) => {
            let mut q = vec![format!("limit={}", a.limit)];
            if let Some(s) = &a.since {
                q.push(format!("since={}", enc(s)));
            }
            if let Some(l) = &a.account {
                q.push(format!("account={}", enc(l)));
            }
            let out = c.get(&format!("/audit?{}", q.join("&"))).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
            } else {
                output::table(COLUMNS, out.as_array().map(Vec::as_slice).unwrap_or(&[]));
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_name_the_actor_and_result() {
        let v =
            serde_json::json!({"actor": {"kind": "account", "name": "alice", "key": "k1"}, "status": 401, "result": "InvalidCredentials"});
        assert_eq!(actor(&v), "account alice k1");
        assert_eq!(status(&v), "401 InvalidCredentials");
        assert_eq!(status(&serde_json::json!({"status": 204, "result": "ok"})), "204");
    }
}
