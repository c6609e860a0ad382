//! `nereid admin account limit list|add|remove`: an account's provisioning limits (Triton's
//! `capilimit`s, operator API `/accounts/{account}/limits`). CreateVm and resizes that would
//! go over one are refused with CloudAPI's 403 "Quota exceeded"; tenants see them with
//! `triton account limits`.

use anyhow::Result;
use clap::{Args, Subcommand};
use nereid_client::{Client, enc};
use serde_json::{Value, json};

use crate::output::{self, Column, text};

#[derive(Subcommand, Debug)]
pub enum LimitVerb {
    /// An account's limits
    List {
        /// Account UUID or login
        account: String,
    },
    /// Add a limit: --by machines|ram|quota --value N [--image NAME|UUID | --os OS | --brand BRAND]
    Add(LimitAddArgs),
    /// Remove a limit (its id, from `limit list`)
    Remove {
        /// Account UUID or login
        account: String,
        /// The limit's id
        id: String,
    },
}

#[derive(Args, Debug)]
pub struct LimitAddArgs {
    /// Account UUID or login
    pub account: String,
    /// What is counted: machines (instances), ram (MiB) or quota (disk, GiB)
    #[arg(long, default_value = "machines", value_name = "machines|ram|quota")]
    pub by: String,
    /// The limit: 0 is unlimited, -1 allows no provision
    #[arg(long, allow_hyphen_values = true, value_name = "N")]
    pub value: i64,
    /// Count only instances of this image (its name, or UUID)
    #[arg(long, conflicts_with_all = ["os", "brand"])]
    pub image: Option<String>,
    /// Count only instances of images of this os
    #[arg(long, conflicts_with = "brand")]
    pub os: Option<String>,
    /// Count only instances of this brand
    #[arg(long)]
    pub brand: Option<String>,
}

const COLUMNS: &[Column] = &[
    Column { header: "ID", get: |v| text(v, "id") },
    Column { header: "BY", get: |v| text(v, "by") },
    Column { header: "VALUE", get: |v| text(v, "value") },
    Column { header: "CHECK", get: check },
    Column { header: "CREATED", get: |v| text(v, "created") },
];

/// `image=ubuntu`, `os=linux`, `brand=bhyve`, or empty.
fn check(v: &Value) -> String {
    match v.get("check").and_then(Value::as_str) {
        Some(c) => format!("{c}={}", text(v, c)),
        None => String::new(),
    }
}

pub async fn run(c: &Client, v: LimitVerb, json: bool) -> Result<()> {
    match v {
        LimitVerb::List { account } => {
            let out = c.get(&format!("/accounts/{}/limits", enc(&account))).await?;
            if json {
                output::object(&out, true);
            } else {
                output::table(COLUMNS, out.as_array().map(Vec::as_slice).unwrap_or(&[]));
            }
        }
        LimitVerb::Add(a) => {
            let mut b = json!({"by": a.by, "value": a.value});
            for (k, v) in [("image", &a.image), ("os", &a.os), ("brand", &a.brand)] {
                if let Some(v) = v {
                    b[k] = json!(v);
                }
            }
            let out = c.post(&format!("/accounts/{}/limits", enc(&a.account)), &b).await?;
            if json {
                output::object(&out, true);
            } else {
                println!("limit {} of {}: {} {} {}", text(&out, "id"), a.account, text(&out, "by"), text(&out, "value"), check(&out));
            }
        }
        LimitVerb::Remove { account, id } => {
            c.delete(&format!("/accounts/{}/limits/{}", enc(&account), enc(&id))).await?;
            if !json {
                println!("removed limit {id} of {account}");
            }
        }
    }
    Ok(())
}
