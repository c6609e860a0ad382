//! `nereid up`: a headnode and a local agent in one process, seeded on first start.

use std::path::{Path, PathBuf};
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

/// The demo image: the test image from `scripts/build-test-image`, imported once.
async fn demo_image(app: &App, file: &Path) -> Result<String> {
    let existing = app.list_images(&nereid_types::query::Query::default()).await?;
    if let Some(img) = existing.iter().find(|i| i.name == DEMO_IMAGE && i.state == "active") {
        return Ok(img.uuid.to_string());
    }
    let path = file.to_path_buf();
    let found = tokio::task::spawn_blocking(move || nereid_diskimage::inspect(&path, &mut |_| {}))
        .await?
        .with_context(|| format!("{} cannot be used as an image", file.display()))?;
    let img = app
        .create_image(
            &obj(json!({"owner": "00000000-0000-0000-0000-000000000000", "name": DEMO_IMAGE, "version": env!("CARGO_PKG_VERSION"),
                "type": "zvol", "os": "linux", "public": true, "nic_driver": "virtio", "disk_driver": "virtio", "cpu_type": "host",
                "image_size": found.image_size_mib(),
                "description": "Nereid's test image: a Debian kernel and busybox that print their metadata on the console (UEFI or BIOS)"})),
            None,
        )
        .await?;
    let f = tokio::fs::File::open(file).await.with_context(|| format!("opening {}", file.display()))?;
    let add = nereid_headnode::app::images::AddFile {
        compression: found.compression.as_str().into(),
        sha1: Some(found.sha1.clone()),
        content_length: Some(found.file_size),
        ..Default::default()
    };
    app.add_image_file(img.uuid, add, tokio_util::io::ReaderStream::new(f)).await?;
    app.activate_image(img.uuid).await?;
    Ok(img.uuid.to_string())
}

const DEMO_IMAGE: &str = "nereid-test";

/// How a CloudAPI certificate is described at start.
pub fn cert_note(c: &nereid_headnode::server::CloudApiRunning) -> String {
    match (&c.cert_path, &c.cert_fingerprint) {
        (Some(p), Some(f)) => format!("  (certificate {}, SHA-256 {f})", p.display()),
        _ => "  (plain HTTP)".into(),
    }
}

/// What a tenant types to use the `triton` CLI against this cloud, or the profile written.
fn triton_hints(
    c: &nereid_headnode::server::CloudApiRunning,
    op: Option<&super::operator::Operator>,
    write: bool,
    ddq: &str,
) -> Result<()> {
    let Some(op) = op else { return Ok(()) };
    let login = &op.account.login;
    if op.created {
        println!("  operator      account {login} created (an operator: it sees every account)");
    }
    let insecure = c.cert_path.is_some();
    match &op.key {
        Some((fp, file)) if write => {
            let home = std::env::var_os("HOME").map(PathBuf::from).context("HOME is not set: cannot write the triton profile")?;
            let profile = super::operator::profile(&c.url, login, fp, insecure);
            let path = super::operator::write_profile(&home, "nereid", &profile)?;
            println!("  triton        profile written to {} (key {})", path.display(), file.display());
            println!("                try: triton -p nereid info");
        }
        Some((fp, file)) => {
            println!("  triton        `triton profile create` answers: URL {} · account {login} · key {fp} ({})", c.url, file.display());
            if insecure {
                println!("                the certificate is self-signed: use `triton -i`, or \"insecure\": true in the profile");
            }
        }
        None => {
            println!(
                "  triton        account {login} has no SSH key yet: nereid admin --data-dir {ddq} account key add {login} ~/.ssh/id_ed25519.pub"
            );
            println!("                (or restart with --triton-profile ~/.ssh/id_ed25519 to add it and write a triton profile)");
        }
    }
    Ok(())
}

pub async fn run(a: UpArgs) -> Result<()> {
    if a.demo && a.backend != BackendArg::Qemu {
        bail!("--demo boots a real VM image: use it with --backend qemu");
    }
    let demo_file = a.demo_image.clone().unwrap_or_else(|| PathBuf::from("target/test-image/nereid-test.img"));
    if a.demo && !demo_file.exists() {
        bail!("{} does not exist: build it with scripts/build-test-image (or pass --demo-image FILE)", demo_file.display());
    }
    let data_dir = a.data_dir.clone().unwrap_or_else(nereid_client::default_data_dir);
    let mut cfg = Config::new(data_dir.clone(), a.store.clone(), a.admin_listen);
    if let Some(l) = a.agent_listen {
        cfg.agent_listen = l;
    }
    a.tuning.apply(&mut cfg.app);
    a.fabric.apply(&mut cfg.app);
    a.migration.apply(&mut cfg.app);
    cfg.cloudapi = a.cloudapi.config();
    cfg.web = a.web.config(cfg.admin_listen);
    cfg.image_catalog = a.image_catalog_listen;
    let running = start(cfg).await?;
    let operator = super::operator::ensure(&running.app, a.triton_profile.as_deref()).await.context("the operator account")?;
    let sim = a.backend == BackendArg::Sim;
    let mut seeded = if a.no_seed { None } else { seed(&running.app, sim).await.context("seeding the store")? };
    if a.demo {
        let image = demo_image(&running.app, &demo_file).await.context("importing the demo image")?;
        match seeded.as_mut() {
            Some(s) => s.image = Some(image),
            None => println!("demo image {DEMO_IMAGE}: {image}"),
        }
    }
    let mut nic_tags = if sim { Vec::new() } else { super::agent::nic_tags(&a.nic_tags)? };
    let managed = if sim || a.no_managed_network || nic_tags.iter().any(|(t, _)| t == MANAGED_TAG) {
        None
    } else {
        let m = managed_network(&running.app, &a.managed_bridge, !a.no_nat).await?;
        let report = nereid_agent::net::managed::up(&m)
            .await
            .map_err(|e| anyhow::anyhow!("making the managed network on bridge {}: {e} (or start with --no-managed-network)", m.bridge))?;
        nic_tags.push((MANAGED_TAG.into(), nereid_agent::net::Uplink::Local(m.bridge.clone())));
        Some((m, report))
    };
    if managed.is_none() && !sim && !nic_tags.iter().any(|(t, _)| t == MANAGED_TAG) {
        // No bridge for the seeded tag: the server still offers it, its NICs are isolated
        // (`lo` is no bridge; the agent says so when it plugs a NIC in).
        nic_tags.push((MANAGED_TAG.into(), nereid_agent::net::Uplink::Bridge("lo".into())));
    }
    let backend = match a.backend {
        BackendArg::Sim => super::agent::sim_backend(&a.sim),
        // The local agent's underlay is the headnode's.
        BackendArg::Qemu => nereid_agent::BackendKind::Qemu(nereid_agent::QemuOptions {
            fabric_underlay_tag: a.fabric.fabric_underlay_tag.clone(),
            ..a.qemu.options()
        }),
    };
    let agent_cfg = nereid_agent::Config {
        headnode_url: running.agent_url.clone(),
        join_token: running.join_token_full.clone(),
        data_dir: data_dir.join("agent"),
        backend,
        listen: "127.0.0.1:0".parse()?,
        advertise_url: None,
        heartbeat: Duration::from_secs(2),
        nic_tags: nic_tags.clone(),
        migration_listen: None,
        no_exec: false,
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
    // The data directory as the printed commands carry it, quoted if a shell would split it.
    let ddq = shell_word(&abs.to_string_lossy());
    println!("Nereid {} is up.", env!("CARGO_PKG_VERSION"));
    println!("  operator API  {}  (bearer token in {dd}/admin.token)", running.admin_url);
    println!("  agent API     {}  (mutual TLS; what other compute nodes' agents call)", running.agent_url);
    println!("  join token    {}", running.join_token_full);
    println!(
        "                other machines join with: nereid agent --headnode {} --join-token {}  (pins this headnode's CA; bare token in {dd}/join.token)",
        running.agent_url, running.join_token_full
    );
    match a.backend {
        BackendArg::Sim => println!("  servers       {} simulated (sim backend)", agent.nodes.len()),
        BackendArg::Qemu => {
            let how = agent.nodes.first().and_then(|n| n.sysinfo.get("Nereid Backend")).and_then(Value::as_str).unwrap_or("qemu");
            println!("  server        this host, VMs run with {how}");
        }
    }
    if let Some((m, report)) = &managed {
        let gws: Vec<String> = m.networks.iter().map(|n| n.gateway.to_string()).collect();
        let nat =
            if report.nat { "traffic to the outside is masqueraded" } else { "no default route: VMs reach this host and each other only" };
        println!("  network       bridge {} (gateway {}); VMs get their addresses by DHCP; {nat}", m.bridge, gws.join(", "));
        println!("                reach a VM from this host at its IP: `nereid admin --data-dir {ddq} vm get <uuid>` shows it (nics[].ip)");
    } else if !sim {
        for (t, u) in &nic_tags {
            println!("  network       nic tag {t} on {}", u.name());
        }
    }
    if let Some(c) = &running.cloudapi {
        println!("  CloudAPI      {}{}", c.url, cert_note(c));
        triton_hints(c, operator.as_ref(), a.triton_profile.is_some(), &ddq)?;
    }
    if let Some(w) = &running.web {
        println!("  web console   {}{}", w.url, cert_note(w));
        let login = operator.as_ref().map(|o| o.account.login.as_str()).unwrap_or(super::operator::OPERATOR_LOGIN);
        println!("                give {login} a password to sign in with: nereid admin --data-dir {ddq} account passwd {login}");
    }
    if let Some(addr) = running.image_catalog {
        println!("  images        http://{addr}  (public image catalogue, read-only, no authentication)");
    }
    if let Some(s) = &seeded {
        println!(
            "  seeded        nic tag external, network external 10.88.0.0/24, packages {}",
            s.packages.iter().map(|p| p.0.as_str()).collect::<Vec<_>>().join(", ")
        );
        let pkg = s.packages.iter().find(|p| p.0 == "sample-1G").map(|p| p.1.clone()).unwrap_or_default();
        let owner = uuid::Uuid::new_v4();
        match &s.image {
            Some(image) => {
                let pkg = if a.demo { s.packages.iter().find(|p| p.0 == "sample-512M").map(|p| p.1.clone()).unwrap_or(pkg) } else { pkg };
                let meta = if a.demo { " customer_metadata='{\"test-message\":\"hello\"}'" } else { "" };
                println!("\nProvision a VM:");
                println!(
                    "  nereid admin --data-dir {ddq} vm create owner_uuid={owner} brand=bhyve billing_id={pkg} image_uuid={image} networks='[\"{}\"]' alias=web-1{meta} -w",
                    s.network
                );
                println!("  nereid admin --data-dir {ddq} vm list");
                if a.demo {
                    println!(
                        "  nereid admin --data-dir {ddq} vm console <vm uuid>    (the guest prints its uuid and the metadata it read)"
                    );
                }
            }
            None => {
                println!("\nImport an image, then provision a VM:");
                println!("  nereid image --data-dir {ddq} create-from-disk DISK.qcow2 --name NAME --version 1.0");
                println!("  (or restart with --demo to import Nereid's small test image)");
            }
        }
    } else {
        println!("\nTry: nereid admin --data-dir {ddq} server list");
    }
    if let Some(exe) = not_on_path() {
        println!("\n`nereid` above is {}, which a shell does not find on this PATH:", exe.display());
        println!("  link it into a directory on the PATH (scripts/up does), or type its full path");
    }
    println!("\nCtrl-C stops the cloud (VM state is kept in {dd}).");
    super::headnode::wait_for_signal().await;
    println!("shutting down");
    agent.shutdown().await;
    if let Some((m, _)) = &managed {
        nereid_agent::net::managed::down(m).await;
    }
    running.shutdown().await
}

/// `s` as one shell word: as it is if it is plain, else in single quotes.
fn shell_word(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+:,@=%".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// This binary, if `nereid` typed in a shell with this process's PATH runs something else
/// (or nothing): then the banner's `nereid …` commands would not run as printed.
fn not_on_path() -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let me = std::env::current_exe().ok()?;
    let me = std::fs::canonicalize(&me).unwrap_or(me);
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .map(|d| d.join("nereid"))
        .find(|f| std::fs::metadata(f).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0));
    match found.and_then(|f| std::fs::canonicalize(f).ok()) {
        Some(f) if f == me => None,
        _ => Some(me),
    }
}

/// The nic tag `nereid up` manages a bridge for.
const MANAGED_TAG: &str = "external";

/// The managed bridge's networks: every network on the `external` tag with a gateway.
async fn managed_network(app: &App, bridge: &str, nat: bool) -> Result<nereid_agent::net::managed::Managed> {
    use nereid_agent::net::managed::{GatewayNet, Managed, gateway_net};
    let nets = app.list_networks(&nereid_types::query::Query::default()).await?;
    let networks = nets
        .iter()
        .filter(|n| n.nic_tag == MANAGED_TAG)
        .filter_map(|n| Some(GatewayNet { vlan_id: n.vlan_id, gateway: gateway_net(n.gateway.as_deref()?, &n.subnet)? }))
        .collect();
    Ok(Managed { bridge: bridge.to_string(), networks, nat })
}
