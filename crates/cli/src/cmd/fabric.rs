//! `nereid admin fabric vlan|network …`: every account's fabric VLANs and fabric networks
//! through the operator API (NAPI's `/fabrics/:owner_uuid/vlans…`, `/fabric_vlans`, and
//! `GET /networks?fabric=true`). `--owner` takes a login or a UUID.

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use nereid_client::{Client, enc};
use serde_json::Value;

use super::admin::body;
use crate::output::{self, Column, text};

#[derive(Subcommand, Debug)]
pub enum FabricVerb {
    /// Fabric VLANs (an account's private layer-2 segments, each carried by its own VXLAN id)
    Vlan {
        #[command(subcommand)]
        verb: VlanVerb,
    },
    /// Fabric networks (the subnets on fabric VLANs)
    Network {
        #[command(subcommand)]
        verb: NetworkVerb,
    },
}

#[derive(Subcommand, Debug)]
pub enum VlanVerb {
    /// List VLANs: every account's, or one account's with --owner
    List(OwnerOpt),
    /// Show one VLAN
    Get(VlanArg),
    /// Create a VLAN: vlan_id=N name=NAME [description=TEXT]
    Create(CreateArgs),
    /// Change a VLAN: name=… description=… (null removes the description)
    Update(VlanUpdateArgs),
    /// Delete a VLAN that has no networks
    Delete(VlanArg),
}

#[derive(Subcommand, Debug)]
pub enum NetworkVerb {
    /// List fabric networks: every account's, or one account's (--owner), on one VLAN (--vlan)
    List(NetworkListArgs),
    /// Show one fabric network
    Get(NetworkIdArg),
    /// Create a fabric network on a VLAN: name=… subnet=… provision_start_ip=… provision_end_ip=… [gateway=… resolvers=… routes=… internet_nat=false]
    Create(NetworkCreateArgs),
    /// Change a fabric network: name=… description=… provision_start_ip=… provision_end_ip=… resolvers=… routes=… internet_nat=…
    Update(NetworkUpdateArgs),
    /// Delete a fabric network no NIC uses
    Delete(NetworkIdArg),
}

#[derive(Args, Debug)]
pub struct OwnerOpt {
    /// The account (login or UUID)
    #[arg(long, value_name = "LOGIN|UUID")]
    pub owner: Option<String>,
}

#[derive(Args, Debug)]
pub struct VlanArg {
    /// The account (login or UUID)
    #[arg(long, value_name = "LOGIN|UUID")]
    pub owner: String,
    /// VLAN ID
    pub vlan_id: u16,
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// The account (login or UUID)
    #[arg(long, value_name = "LOGIN|UUID")]
    pub owner: String,
    /// FIELD=VALUE pairs
    #[arg(value_name = "FIELD=VALUE")]
    pub fields: Vec<String>,
}

#[derive(Args, Debug)]
pub struct VlanUpdateArgs {
    /// The account (login or UUID)
    #[arg(long, value_name = "LOGIN|UUID")]
    pub owner: String,
    /// VLAN ID
    pub vlan_id: u16,
    /// FIELD=VALUE pairs
    #[arg(value_name = "FIELD=VALUE")]
    pub fields: Vec<String>,
}

#[derive(Args, Debug)]
pub struct NetworkListArgs {
    /// The account (login or UUID)
    #[arg(long, value_name = "LOGIN|UUID")]
    pub owner: Option<String>,
    /// Only networks on this VLAN (needs --owner)
    #[arg(long, value_name = "VLAN_ID", requires = "owner")]
    pub vlan: Option<u16>,
}

#[derive(Args, Debug)]
pub struct NetworkIdArg {
    /// Network UUID
    pub id: String,
}

#[derive(Args, Debug)]
pub struct NetworkCreateArgs {
    /// The account (login or UUID)
    #[arg(long, value_name = "LOGIN|UUID")]
    pub owner: String,
    /// The VLAN the network is on
    #[arg(long, value_name = "VLAN_ID")]
    pub vlan: u16,
    /// FIELD=VALUE pairs
    #[arg(value_name = "FIELD=VALUE")]
    pub fields: Vec<String>,
}

#[derive(Args, Debug)]
pub struct NetworkUpdateArgs {
    /// Network UUID
    pub id: String,
    /// FIELD=VALUE pairs
    #[arg(value_name = "FIELD=VALUE")]
    pub fields: Vec<String>,
}

const VLAN_COLUMNS: &[Column] = &[
    Column { header: "OWNER", get: |v| text(v, "owner_uuid") },
    Column { header: "VLAN_ID", get: |v| text(v, "vlan_id") },
    Column { header: "NAME", get: |v| text(v, "name") },
    Column { header: "VNET_ID", get: |v| text(v, "vnet_id") },
    Column { header: "DESCRIPTION", get: |v| text(v, "description") },
];

const NETWORK_COLUMNS: &[Column] = &[
    Column { header: "UUID", get: |v| text(v, "uuid") },
    Column { header: "OWNER", get: |v| text(v, "owner_uuid") },
    Column { header: "VLAN", get: |v| text(v, "vlan_id") },
    Column { header: "NAME", get: |v| text(v, "name") },
    Column { header: "SUBNET", get: |v| text(v, "subnet") },
    Column { header: "GATEWAY", get: |v| text(v, "gateway") },
    Column { header: "NAT", get: |v| text(v, "internet_nat") },
    Column { header: "MTU", get: |v| text(v, "mtu") },
    Column { header: "VNET_ID", get: |v| text(v, "vnet_id") },
];

/// An account's UUID from its login or UUID.
async fn owner_uuid(c: &Client, owner: &str) -> Result<String> {
    let a = c.get(&format!("/accounts/{}", enc(owner))).await?;
    match a["uuid"].as_str() {
        Some(u) => Ok(u.to_string()),
        None => bail!("account {owner} has no uuid in {a}"),
    }
}

/// Where a fabric network lives: `/fabrics/<owner>/vlans/<vlan>/networks/<uuid>`.
async fn network_path(c: &Client, id: &str) -> Result<String> {
    let n = c.get(&format!("/networks/{}", enc(id))).await?;
    if n["fabric"] != Value::Bool(true) {
        bail!("network {id} is not a fabric network (see nereid admin network)");
    }
    Ok(format!("/fabrics/{}/vlans/{}/networks/{}", text(&n, "owner_uuid"), text(&n, "vlan_id"), enc(id)))
}

fn show_list(columns: &[Column], v: &Value, json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    } else {
        output::table(columns, v.as_array().map(Vec::as_slice).unwrap_or(&[]));
    }
}

pub async fn run(c: &Client, v: FabricVerb, json: bool) -> Result<()> {
    let vlan_fields = nereid_types::fabric::VLAN_FIELDS;
    let net_fields = nereid_types::fabric::NETWORK_FIELDS;
    match v {
        FabricVerb::Vlan { verb } => match verb {
            VlanVerb::List(a) => {
                let path = match &a.owner {
                    Some(o) => format!("/fabrics/{}/vlans", owner_uuid(c, o).await?),
                    None => "/fabric_vlans".to_string(),
                };
                show_list(VLAN_COLUMNS, &c.get(&path).await?, json);
            }
            VlanVerb::Get(a) => {
                let o = owner_uuid(c, &a.owner).await?;
                output::object(&c.get(&format!("/fabrics/{o}/vlans/{}", a.vlan_id)).await?, json);
            }
            VlanVerb::Create(a) => {
                let o = owner_uuid(c, &a.owner).await?;
                let b = body(vlan_fields, None, &a.fields)?;
                output::object(&c.post(&format!("/fabrics/{o}/vlans"), &Value::Object(b)).await?, json);
            }
            VlanVerb::Update(a) => {
                let o = owner_uuid(c, &a.owner).await?;
                let b = body(vlan_fields, None, &a.fields)?;
                output::object(&c.put(&format!("/fabrics/{o}/vlans/{}", a.vlan_id), &Value::Object(b)).await?, json);
            }
            VlanVerb::Delete(a) => {
                let o = owner_uuid(c, &a.owner).await?;
                c.delete(&format!("/fabrics/{o}/vlans/{}", a.vlan_id)).await?;
                if !json {
                    println!("deleted fabric VLAN {} of {}", a.vlan_id, a.owner);
                }
            }
        },
        FabricVerb::Network { verb } => match verb {
            NetworkVerb::List(a) => {
                let out = match (&a.owner, a.vlan) {
                    (Some(o), Some(vlan)) => c.get(&format!("/fabrics/{}/vlans/{vlan}/networks", owner_uuid(c, o).await?)).await?,
                    (Some(o), None) => c.get(&format!("/networks?fabric=true&owner_uuid={}", owner_uuid(c, o).await?)).await?,
                    _ => c.get("/networks?fabric=true").await?,
                };
                show_list(NETWORK_COLUMNS, &out, json);
            }
            NetworkVerb::Get(a) => output::object(&c.get(&network_path(c, &a.id).await?).await?, json),
            NetworkVerb::Create(a) => {
                let o = owner_uuid(c, &a.owner).await?;
                let b = body(net_fields, None, &a.fields)?;
                output::object(&c.post(&format!("/fabrics/{o}/vlans/{}/networks", a.vlan), &Value::Object(b)).await?, json);
            }
            NetworkVerb::Update(a) => {
                let b = body(net_fields, None, &a.fields)?;
                output::object(&c.put(&network_path(c, &a.id).await?, &Value::Object(b)).await?, json);
            }
            NetworkVerb::Delete(a) => {
                c.delete(&network_path(c, &a.id).await?).await?;
                if !json {
                    println!("deleted fabric network {}", a.id);
                }
            }
        },
    }
    Ok(())
}
