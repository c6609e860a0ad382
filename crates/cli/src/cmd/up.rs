//! `nereid up`: a headnode and a local agent in one process, seeded on first start.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nereid_headnode::app::App;
use nereid_headnode::{Config, start};
use serde_json::{Map, Value, json};

use crate::cli::{BackendArg, UpArgs};

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// What the seed made, for the next-steps text.
struct Seeded {
    network: String,
    packages: Vec<(String, String)>,
    image: Option<String>,
}

/// The default nic tag, network, packages and (for the sim backend) a placeholder image.
async fn seed(app: &App, sim: bool) -> Result<Option<Seeded>> {
    let (pkgs, _) = app.list_packages(&nereid_types::query::Query::default()).await?;
    let nets = app.list_networks(&nereid_types::query::Query::default()).await?;
    if !pkgs.is_empty() || !nets.is_empty() {
        return Ok(None);
    }
    app.create_nic_tag(&obj(json!({"name": "external"}))).await?;
    let net = app
        .create_network(&obj(json!({"name": "external", "nic_tag": "external", "vlan_id": 0, "subnet": "10.88.0.0/24",
            "provision_start_ip": "10.88.0.10", "provision_end_ip": "10.88.0.250", "gateway": "10.88.0.1", "resolvers": ["10.88.0.1"],
            "description": "created by nereid up"})))
        .await?;
    let mut packages = Vec::new();
    for (name, ram, quota, vcpus) in
        [("sample-512M", 512, 10_240, 1), ("sample-1G", 1024, 20_480, 1), ("sample-2G", 2048, 40_960, 2), ("sample-4G", 4096, 81_920, 2)]
    {
        let p = app
            .create_package(&obj(json!({"name": name, "version": "1.0.0", "brand": "bhyve", "max_physical_memory": ram, "quota": quota, "vcpus": vcpus, "description": "created by nereid up"})))
            .await?;
        packages.push((name.to_string(), p.uuid.to_string()));
    }
    let image = if sim {
        let img = app
            .create_image(
                &obj(json!({"owner": "00000000-0000-0000-0000-000000000000", "name": "sim-linux", "version": "1.0.0", "type": "zvol", "os": "linux", "public": true,
                    "description": "placeholder image for the sim backend (no real disk)", "nic_driver": "virtio", "disk_driver": "virtio", "cpu_type": "host", "image_size": 10_240})),
                None,
            )
            .await?;
        let bytes: Vec<Result<bytes::Bytes, std::io::Error>> = vec![Ok(bytes::Bytes::from(vec![0u8; 512]))];
        let add = nereid_headnode::app::images::AddFile { compression: "none".into(), ..Default::default() };
        app.add_image_file(img.uuid, add, futures_util::stream::iter(bytes)).await?;
        app.activate_image(img.uuid).await?;
        Some(img.uuid.to_string())
    } else {
        None
    };
    Ok(Some(Seeded { network: net.uuid.to_string(), packages, image }))
}

pub async fn run(a: UpArgs) -> Result<()> {
    if a.backend == BackendArg::Qemu {
        bail!("the qemu backend is not part of this build yet; run `nereid up --backend sim`");
    }
    let data_dir = a.data_dir.clone().unwrap_or_else(nereid_client::default_data_dir);
    let mut cfg = Config::new(data_dir.clone(), a.store.clone(), a.admin_listen);
    a.tuning.apply(&mut cfg.app);
    let running = start(cfg).await?;
    let seeded = if a.no_seed { None } else { seed(&running.app, true).await.context("seeding the store")? };
    let agent_cfg = nereid_agent::Config {
        headnode_url: running.admin_url.clone(),
        join_token: running.join_token.clone(),
        data_dir: data_dir.join("agent"),
        backend: super::agent::sim_backend(&a.sim),
        listen: "127.0.0.1:0".parse()?,
        advertise_url: None,
        heartbeat: Duration::from_secs(2),
        nic_tags: Vec::new(),
    };
    let agent = nereid_agent::start(agent_cfg).await?;
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let servers = running.app.list_servers(&nereid_types::query::Query::default()).await?;
        let up = servers
            .iter()
            .filter(|(s, hb)| agent.servers().contains(&s.uuid) && running.app.server_status(hb.as_ref()).0 == "running")
            .count();
        if up >= agent.nodes.len() {
            break;
        }
        if Instant::now() > end {
            bail!("the local agent's servers did not report in 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let abs = std::fs::canonicalize(&data_dir).unwrap_or(data_dir.clone());
    let dd = abs.display();
    println!("Nereid {} is up.", env!("CARGO_PKG_VERSION"));
    println!("  operator API  {}  (bearer token in {dd}/admin.token)", running.admin_url);
    println!("  join token    {dd}/join.token  (for `nereid agent` on other machines)");
    println!("  servers       {} simulated (sim backend)", agent.nodes.len());
    if let Some(s) = &seeded {
        println!(
            "  seeded        nic tag external, network external 10.88.0.0/24, packages {}",
            s.packages.iter().map(|p| p.0.as_str()).collect::<Vec<_>>().join(", ")
        );
        let pkg = s.packages.iter().find(|p| p.0 == "sample-1G").map(|p| p.1.clone()).unwrap_or_default();
        let owner = uuid::Uuid::new_v4();
        println!("\nProvision a VM:");
        println!(
            "  nereid admin --data-dir {dd} vm create owner_uuid={owner} brand=bhyve billing_id={pkg} image_uuid={} networks='[\"{}\"]' alias=web-1 -w",
            s.image.clone().unwrap_or_default(),
            s.network
        );
        println!("  nereid admin --data-dir {dd} vm list");
    } else {
        println!("\nTry: nereid admin --data-dir {dd} server list");
    }
    println!("\nCtrl-C stops the cloud (VM state is kept in {dd}).");
    super::headnode::wait_for_signal().await;
    println!("shutting down");
    agent.shutdown().await;
    running.shutdown().await
}
