//! `nereid agent`: a compute node's agent, until SIGINT/SIGTERM.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use nereid_agent::backend::sim::Delays;
use nereid_agent::{BackendKind, Config};

use crate::cli::{AgentArgs, BackendArg, SimArgs};

/// The sim backend as the flags describe it.
pub fn sim_backend(s: &SimArgs) -> BackendKind {
    BackendKind::Sim {
        servers: s.sim_servers.max(1),
        cpus: s.sim_cpus,
        ram_mib: s.sim_ram_mib,
        disk_gib: s.sim_disk_gib,
        delays: Delays { create: Duration::from_millis(s.sim_create_ms), ..Delays::default() },
    }
}

/// `--nic-tag TAG=BRIDGE` / `TAG=link:IFACE` flags.
pub fn nic_tags(pairs: &[String]) -> Result<Vec<(String, nereid_agent::net::Uplink)>> {
    pairs.iter().map(|p| nereid_agent::net::parse_nic_tag(p).map_err(anyhow::Error::msg)).collect()
}

pub async fn run(a: AgentArgs) -> Result<()> {
    let token = match (&a.join_token, &a.join_token_file) {
        (Some(t), _) => t.trim().to_string(),
        (None, Some(f)) => std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?.trim().to_string(),
        (None, None) => bail!(
            "the agent needs the headnode's join token: --join-token, --join-token-file or NEREID_JOIN_TOKEN (it is join.token in the headnode's data directory)"
        ),
    };
    let backend = match a.backend {
        BackendArg::Sim => sim_backend(&a.sim),
        BackendArg::Qemu => {
            BackendKind::Qemu(nereid_agent::QemuOptions { fabric_underlay_tag: a.fabric_underlay_tag.clone(), ..a.qemu.options() })
        }
    };
    let cfg = Config {
        headnode_url: a.headnode.clone(),
        join_token: token,
        data_dir: a.data_dir.clone(),
        backend,
        listen: a.listen,
        advertise_url: a.advertise_url.clone(),
        heartbeat: Duration::from_secs(a.heartbeat_secs.max(1)),
        nic_tags: nic_tags(&a.nic_tags)?,
        migration_listen: a.migration_address,
        no_exec: a.no_exec,
    };
    let agent = nereid_agent::start(cfg).await?;
    println!(
        "nereid agent {} is running ({} server(s), API on {}, migrations on {})",
        env!("CARGO_PKG_VERSION"),
        agent.nodes.len(),
        agent.addr,
        agent.migration_addr
    );
    for n in agent.nodes.iter() {
        println!("  {}", n.identity);
    }
    super::headnode::wait_for_signal().await;
    println!("shutting down (VMs keep running)");
    agent.shutdown().await;
    Ok(())
}
