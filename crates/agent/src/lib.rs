//! The compute-node agent: it owns reality on one host (or, with the `sim` backend, on
//! many simulated hosts in one process).
//!
//! ```text
//!   start: identity (pinned UUID) → sysinfo → key (made here, DATA/tls) → CA pinned
//!          (vouched for by the join token) → join (public key → certificate) → register
//!          → agent API on mutual TLS (headnodes' certificates only)
//!   then:  heartbeat every few seconds (usage + hardware temperatures + disks' health as
//!          last read by `smart`, every few minutes + the VM inventory,
//!          whole or as a delta against what the headnode acknowledged: `inventory`)
//!          per-VM supervisors converge what the headnode asks (`PUT/DELETE …/vms/{vm}`)
//!          every state change is pushed, with its generation, until acknowledged
//! ```
//!
//! A new backend goes in `backend/` and is chosen in [`BackendKind`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use nereid_types::agent::{Heartbeat, Problem, Register, Usage};
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

pub mod api;
pub mod backend;
pub mod console;
pub mod durable;
pub mod headnode;
pub mod identity;
pub mod images;
pub mod inventory;
pub mod metadata;
pub mod metrics;
pub mod migration;
pub mod net;
pub mod netpolicy;
pub mod smart;
pub mod supervisor;
pub mod sysinfo;
pub mod tls;
pub mod vm_stats;

use headnode::{CallError, Headnode};
use nereid_trust::token::JoinToken;
use nereid_types::agent::{JoinRequest, RenewRequest};
use supervisor::Node;

/// Which hypervisor runs the VMs.
#[derive(Debug, Clone, PartialEq)]
pub enum BackendKind {
    /// Simulated servers, `servers` of them, each with these sizes.
    Sim { servers: usize, cpus: u32, ram_mib: u64, disk_gib: u64, delays: backend::sim::Delays },
    /// Real VMs under QEMU on this host.
    Qemu(QemuOptions),
}

/// How the qemu backend runs.
#[derive(Debug, Clone, PartialEq)]
pub struct QemuOptions {
    pub accel: backend::qemu::accel::Choice,
    pub qemu: PathBuf,
    pub qemu_img: PathBuf,
    /// OVMF code and variable store; the distribution's when unset.
    pub ovmf_code: Option<PathBuf>,
    pub ovmf_vars: Option<PathBuf>,
    /// Seconds a guest has to power off after the ACPI button.
    pub stop_timeout: Duration,
    /// Directories whose files VMs may use as cdroms (`--iso-dir`).
    pub iso_dirs: Vec<PathBuf>,
    /// The first guest uid (each VM's QEMU runs as its own).
    pub guest_uid_base: u32,
    /// The nic tag whose link carries fabric (VXLAN) traffic (`--fabric-underlay-tag`, as
    /// the headnode's flag of that name).
    pub fabric_underlay_tag: String,
    /// The smartctl that reads the host's disks' health (`--smartctl`).
    pub smartctl: PathBuf,
    /// How often the disks are read (`--smart-interval-secs`); zero: never.
    pub smart_interval: Duration,
}

impl Default for QemuOptions {
    fn default() -> Self {
        QemuOptions {
            accel: backend::qemu::accel::Choice::Auto,
            qemu: "qemu-system-x86_64".into(),
            qemu_img: "qemu-img".into(),
            ovmf_code: None,
            ovmf_vars: None,
            stop_timeout: Duration::from_secs(60),
            iso_dirs: Vec::new(),
            guest_uid_base: backend::qemu::confine::DEFAULT_UID_BASE,
            fabric_underlay_tag: nereid_types::fabric::DEFAULT_UNDERLAY_TAG.into(),
            smartctl: "smartctl".into(),
            smart_interval: smart::DEFAULT_INTERVAL,
        }
    }
}

/// What `nereid agent` is started with.
#[derive(Debug, Clone)]
pub struct Config {
    pub headnode_url: String,
    pub join_token: String,
    pub data_dir: PathBuf,
    pub backend: BackendKind,
    /// The agent API listener (port 0 picks one).
    pub listen: SocketAddr,
    /// Base URL the headnode uses to reach this agent (default: `http://<listen address>`).
    pub advertise_url: Option<String>,
    pub heartbeat: Duration,
    /// `(nic tag, interface)` pairs this host provides.
    pub nic_tags: Vec<(String, net::Uplink)>,
    /// Where the other agents send migrations' data (`--migration-address`; default: the
    /// API listener's IP, a free port).
    pub migration_listen: Option<SocketAddr>,
    /// `--no-exec`: this agent runs no commands and moves no files for the operator
    /// (oneachnode; see [`api::exec`]).
    pub no_exec: bool,
}

/// One server this process runs.
pub struct NodeRuntime {
    pub uuid: Uuid,
    /// Where the server's UUID came from, for the operator.
    pub identity: String,
    pub node: Arc<Node>,
    /// Its VMs' migrations.
    pub migrations: Arc<migration::Migrations>,
    pub sysinfo: Map<String, Value>,
    paused: AtomicBool,
    ram_mib: u64,
    disk_mib: u64,
    /// Where its hardware temperatures are read ([`metrics::HWMON`] on a real host; none
    /// on a simulated one unless a test gives it a fixture directory).
    hwmon: std::sync::Mutex<Option<PathBuf>>,
    /// Its disks' health, read by a task of its own ([`smart::Monitor`]; nothing on a
    /// simulated server unless a test gives it a smartctl).
    pub smart: Arc<smart::Monitor>,
}

impl NodeRuntime {
    /// Reads this server's temperatures from `root` from now on (`None`: reports none).
    pub fn set_hwmon(&self, root: Option<PathBuf>) {
        *self.hwmon.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = root;
    }

    /// Reads this server's disks with `smartctl` from now on, at once (`None`: reads none).
    pub fn set_smartctl(&self, smartctl: Option<PathBuf>) {
        self.smart.set(smartctl.map(smart::Settings::new));
    }

    /// Its disks as `/metrics` shows them.
    pub fn disk_metrics(&self) -> metrics::ServerDisks {
        let last = self.smart.last();
        metrics::ServerDisks { server: self.uuid, enabled: self.smart.enabled(), scan_ok: last.error.is_none(), disks: last.disks }
    }

    /// The heartbeat to send now: usage, the full VM inventory, `problems`, temperatures.
    pub fn heartbeat(&self, problems: &[Problem]) -> Heartbeat {
        let vms = self.node.list();
        let mut hb = self.liveness(&vms, problems);
        hb.vms = Some(vms);
        hb
    }

    /// The heartbeat to send now, its inventory whole or as a delta against what the
    /// headnode acknowledged (`tracker` takes the statuses now).
    pub fn heartbeat_tracked(&self, problems: &[Problem], tracker: &mut inventory::Tracker) -> Heartbeat {
        let vms = self.node.list();
        let hb = self.liveness(&vms, problems);
        tracker.observe(vms);
        let r = tracker.report();
        Heartbeat { vms: r.vms, inventory_generation: Some(r.generation), delta: r.delta, ..hb }
    }

    /// A heartbeat without its inventory: usage, problems, temperatures, addresses.
    fn liveness(&self, vms: &[nereid_types::agent::VmStatus], problems: &[Problem]) -> Heartbeat {
        let ram_used = vms.iter().filter(|v| v.state != "destroyed").filter_map(|v| v.ram).sum();
        let disk_used = vms.iter().filter_map(|v| v.disk_mib).sum();
        let load1 = std::fs::read_to_string("/proc/loadavg").ok().and_then(|s| s.split_whitespace().next()?.parse().ok()).unwrap_or(0.0);
        let hwmon = self.hwmon.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        // The disks as last read (never read here: that takes seconds), and a problem for
        // each failing one beside the network's.
        let disks = self.smart.disks();
        let mut problems = problems.to_vec();
        problems.extend(smart::problems(&disks));
        Heartbeat {
            usage: Usage {
                ram_total_mib: self.ram_mib,
                ram_used_mib: ram_used,
                disk_total_mib: self.disk_mib,
                disk_used_mib: disk_used,
                load1,
            },
            vms: None,
            inventory_generation: None,
            delta: None,
            problems,
            temperatures: metrics::readings(hwmon.as_deref()),
            disks,
            nic_tag_addresses: self.node.nic_tag_addresses(),
            netpolicy_digest: self.node.netpolicy_digest(),
        }
    }
}

/// A running agent.
pub struct Agent {
    pub addr: SocketAddr,
    /// Where this agent takes migrations' data (what its servers' sysinfo reports).
    pub migration_addr: SocketAddr,
    /// Kept for its listener (dropped with the agent).
    _relay: Arc<migration::relay::Relay>,
    pub nodes: Arc<Vec<Arc<NodeRuntime>>>,
    /// The key, pinned CA and certificates (DATA/tls).
    pub credentials: Arc<tls::Credentials>,
    hn: Headnode,
    stop: oneshot::Sender<()>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Agent {
    pub fn servers(&self) -> Vec<Uuid> {
        self.nodes.iter().map(|n| n.uuid).collect()
    }

    /// Stops (or resumes) heartbeats, as if the network to the headnode went quiet.
    pub fn pause_heartbeats(&self, paused: bool) {
        for n in self.nodes.iter() {
            n.paused.store(paused, Ordering::SeqCst);
        }
    }

    /// Renews every server's certificate now (the heartbeat loop does when a third of its
    /// life is left).
    pub async fn renew_certificates(&self) -> Result<(), CallError> {
        for n in self.nodes.iter() {
            renew(&self.hn, &self.credentials, n.uuid).await?;
        }
        Ok(())
    }

    /// Stops the agent; VMs keep running, as real ones would.
    pub async fn shutdown(self) {
        for n in self.nodes.iter() {
            n.node.shutdown();
        }
        for t in &self.tasks {
            t.abort();
        }
        let _ = self.stop.send(());
        let _ = self.server.await;
    }
}

/// One server this process is about to run.
struct NodeSpec {
    dir: PathBuf,
    identity: identity::Identity,
    identity_line: String,
    facts: sysinfo::Facts,
    backend: BackendPlan,
}

/// A backend still to be built (the qemu one needs the server's credentials).
enum BackendPlan {
    Sim(backend::sim::Delays),
    Qemu(backend::qemu::Config),
}

fn sim_specs(
    cfg: &Config,
    addr: SocketAddr,
    servers: usize,
    cpus: u32,
    ram_mib: u64,
    disk_gib: u64,
    delays: backend::sim::Delays,
) -> Result<Vec<NodeSpec>> {
    let mut out = Vec::new();
    for i in 0..servers.max(1) {
        let dir = cfg.data_dir.join("sim").join(i.to_string());
        std::fs::create_dir_all(&dir)?;
        // Simulated servers have no hardware: their identity is a random UUID, pinned.
        let (id, line) =
            identity::load_or_pin(&dir, &identity::Probe { dmi_dir: &dir.join("no-dmi"), machine_id: &dir.join("no-machine-id") })?;
        let host = sysinfo::hostname();
        let facts = sysinfo::Facts {
            uuid: id.uuid,
            hostname: format!("{host}-sim{i}"),
            serial: Some(format!("SIM-{}", &id.uuid.to_string()[..8])),
            cpus,
            ram_mib,
            disk_gib,
            nics: vec![sysinfo::NicFact {
                name: "sim0".into(),
                mac: format!("02:00:00:00:{:02x}:{:02x}", (i >> 8) & 0xff, i & 0xff),
                ip: Some(addr.ip().to_string()),
                up: true,
                tags: if cfg.nic_tags.is_empty() {
                    vec!["admin".into(), "external".into()]
                } else {
                    cfg.nic_tags.iter().map(|(t, _)| t.clone()).collect()
                },
            }],
            boot_time: sysinfo::boot_time(),
            agent_port: addr.port(),
            backend: "sim".into(),
        };
        out.push(NodeSpec { dir, identity: id, identity_line: line, facts, backend: BackendPlan::Sim(delays) });
    }
    Ok(out)
}

async fn qemu_spec(cfg: &Config, addr: SocketAddr, o: &QemuOptions) -> Result<NodeSpec> {
    let dir = cfg.data_dir.clone();
    // An agent in a network namespace of its own is one of several servers on this machine
    // (two nodes of a test, a nested setup): the machine's UUID is not its own, so it takes
    // a random one (pinned like any other).
    let own_ns = identity::in_own_network_namespace();
    let probe = if own_ns {
        identity::Probe { dmi_dir: &dir.join("no-dmi"), machine_id: &dir.join("no-machine-id") }
    } else {
        identity::Probe { dmi_dir: std::path::Path::new("/sys/class/dmi/id"), machine_id: std::path::Path::new("/etc/machine-id") }
    };
    let (id, mut line) = identity::load_or_pin(&dir, &probe)?;
    if own_ns && id.source == "random" {
        line.push_str(" — the agent runs in a network namespace of its own, so not the machine's UUID");
    }
    let accel = backend::qemu::accel::resolve(o.accel, &o.qemu, &dir.join("tmp")).await.map_err(anyhow::Error::msg)?;
    let mut q = backend::qemu::Config::debian(dir.clone(), accel);
    q.qemu = o.qemu.clone();
    q.qemu_img = o.qemu_img.clone();
    q.stop_timeout = o.stop_timeout;
    q.nic_tags = cfg.nic_tags.clone();
    q.fabric_underlay_tag = o.fabric_underlay_tag.clone();
    q.iso_dirs = o.iso_dirs.iter().map(|d| std::path::absolute(d).unwrap_or_else(|_| d.clone())).collect();
    q.uid_base = o.guest_uid_base;
    match &q.cgroups {
        Some(h) => {
            tracing::info!(cgroups = %h.describe(), uid_base = q.uid_base, iso_dirs = ?q.iso_dirs, "guests confined: own uid, seccomp, a cgroup each")
        }
        None => {
            tracing::warn!("no usable cgroup hierarchy (v2 with cpu and memory, or v1 cpu): guests run without CPU, memory or I/O limits")
        }
    }
    if let Some(c) = &o.ovmf_code {
        q.ovmf_code = c.clone();
    }
    if let Some(v) = &o.ovmf_vars {
        q.ovmf_vars = v.clone();
    }
    let mut nics = sysinfo::host_nics(&cfg.nic_tags);
    if let Some(n) = nics.iter_mut().find(|n| n.name == "lo") {
        n.ip = Some(addr.ip().to_string());
    }
    let facts = sysinfo::Facts {
        uuid: id.uuid,
        hostname: sysinfo::hostname(),
        serial: id.serial.clone(),
        cpus: sysinfo::host_cpus(),
        ram_mib: sysinfo::host_ram_mib(),
        disk_gib: sysinfo::disk_gib(&dir),
        nics,
        boot_time: sysinfo::boot_time(),
        agent_port: addr.port(),
        backend: format!("qemu ({})", accel.as_str()),
    };
    Ok(NodeSpec { dir, identity: id, identity_line: line, facts, backend: BackendPlan::Qemu(q) })
}

/// Starts the agent: identities, join, API, heartbeats.
pub async fn start(mut cfg: Config) -> Result<Agent> {
    // Absolute from here on: QEMU resolves an overlay's relative backing path against the
    // overlay's own directory, so a relative data directory breaks every disk.
    cfg.data_dir = std::path::absolute(&cfg.data_dir).with_context(|| format!("resolving {}", cfg.data_dir.display()))?;
    std::fs::create_dir_all(&cfg.data_dir).with_context(|| format!("creating {}", cfg.data_dir.display()))?;
    let token = JoinToken::parse(&cfg.join_token).map_err(anyhow::Error::msg)?;
    let creds = tls::Credentials::open(&cfg.data_dir)?;
    let hn = Headnode::new(&cfg.headnode_url, creds.clone()).map_err(anyhow::Error::msg)?;
    let tcp = nereid_serve::bind(cfg.listen).with_context(|| format!("listening on {}", cfg.listen))?;
    let addr = tcp.local_addr()?;
    let agent_url = cfg.advertise_url.clone().unwrap_or_else(|| format!("https://{addr}"));
    let relay_at = cfg.migration_listen.unwrap_or_else(|| SocketAddr::new(addr.ip(), 0));
    let relay = migration::relay::Relay::bind(relay_at).await.with_context(|| format!("listening for migrations on {relay_at}"))?;
    let specs = match &cfg.backend {
        BackendKind::Sim { servers, cpus, ram_mib, disk_gib, delays } => {
            sim_specs(&cfg, addr, *servers, *cpus, *ram_mib, *disk_gib, *delays)?
        }
        BackendKind::Qemu(o) => vec![qemu_spec(&cfg, addr, o).await?],
    };
    let mut nodes = Vec::new();
    let mut tasks = Vec::new();
    for spec in specs {
        tracing::info!("{}", spec.identity_line);
        let uuid = spec.identity.uuid;
        let upstream = Arc::new(headnode::Upstream { hn: hn.clone(), server: uuid });
        // A simulated server has no sensors of its own: the host's are not its.
        let hwmon = match spec.backend {
            BackendPlan::Sim(_) => None,
            BackendPlan::Qemu(_) => Some(PathBuf::from(metrics::HWMON)),
        };
        // Nor disks: only a real host's are read.
        let smart = smart::Monitor::new(match (&spec.backend, &cfg.backend) {
            (BackendPlan::Qemu(_), BackendKind::Qemu(o)) if !o.smart_interval.is_zero() => {
                Some(smart::Settings { every: o.smart_interval, ..smart::Settings::new(o.smartctl.clone()) })
            }
            _ => None,
        });
        let (backend, ram_mib, disk_mib): (Arc<dyn backend::Backend>, u64, u64) = match spec.backend {
            BackendPlan::Sim(delays) => {
                let sim = backend::sim::Sim::open(spec.dir.join("sim-vms.json"), delays);
                // A simulated server's address on each of its tags is its (only) NIC's.
                sim.set_nic_tag_addresses(
                    spec.facts
                        .nics
                        .iter()
                        .filter_map(|n| {
                            Some((n.ip.clone().filter(|ip| ip.parse::<std::net::IpAddr>().is_ok_and(|a| !a.is_unspecified()))?, &n.tags))
                        })
                        .flat_map(|(ip, tags)| tags.iter().map(move |t| (t.clone(), ip.clone())))
                        .collect(),
                );
                (Arc::new(sim), spec.facts.ram_mib, spec.facts.disk_gib * 1024)
            }
            BackendPlan::Qemu(q) => {
                let images = Arc::new(images::ImageCache::new(spec.dir.join("images"), upstream.clone()));
                let q = Arc::new(backend::qemu::Qemu::new(q, images));
                // VMs that kept running while the agent was away get their taps, DHCP and
                // filters back; what is left of VMs that are gone is removed.
                q.adopt_network().await;
                (q, spec.facts.ram_mib, spec.facts.disk_gib * 1024)
            }
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let node = Node::open(uuid, backend, upstream, spec.dir.clone(), tx).await?;
        let migrations = migration::Migrations::open(node.clone())?;
        relay.register(uuid, &migrations);
        let mut si = sysinfo::sysinfo(&spec.facts);
        sysinfo::set_migration_address(&mut si, relay.addr, &spec.facts);
        let rt = Arc::new(NodeRuntime {
            uuid,
            identity: spec.identity_line,
            node,
            migrations,
            sysinfo: si,
            paused: AtomicBool::new(false),
            ram_mib,
            disk_mib,
            hwmon: std::sync::Mutex::new(hwmon),
            smart: smart.clone(),
        });
        tasks.push(tokio::spawn(smart.run(uuid)));
        join(&hn, &token, &creds, &rt, &agent_url).await?;
        tasks.push(tokio::spawn(headnode::pusher(hn.clone(), rt.uuid, rx)));
        let (hn3, rt3, every, token3, creds3, url3) =
            (hn.clone(), rt.clone(), cfg.heartbeat, token.clone(), creds.clone(), agent_url.clone());
        tasks.push(tokio::spawn(async move { heartbeats(hn3, rt3, every, token3, creds3, url3).await }));
        nodes.push(rt);
    }
    let nodes = Arc::new(nodes);
    let router = api::router(api::ApiState { nodes: nodes.clone(), hwmon: PathBuf::from(metrics::HWMON) })
        .merge(api::exec::router(nodes.clone(), !cfg.no_exec));
    // Timeouts and a connection limit on the agent API too (see nereid_serve); the TLS
    // handshake gets the header read timeout.
    let _ = nereid_serve::raise_fd_limit();
    let limits = nereid_serve::Limits::from_env()?;
    // Only headnodes' certificates from the pinned CA get through the handshake.
    let listener = nereid_trust::MtlsListener::with_handshake_timeout(tcp, creds.api_tls()?, limits.header_read_timeout)?;
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.await;
        };
        nereid_serve::serve(listener, router, limits, shutdown).await
    });
    tracing::info!(%agent_url, servers = nodes.len(), "agent started");
    let migration_addr = relay.addr;
    tracing::info!(%migration_addr, "taking migrations");
    Ok(Agent { addr, migration_addr, _relay: relay, nodes, credentials: creds, hn, stop, server, tasks })
}

/// Registers the server with its certificate, joining first when it has none the headnode
/// accepts: the CA is pinned at first contact (vouched for by the join token), the key
/// stays here, only its public half is sent. A join the headnode holds for the operator's
/// approval (another key for this UUID, a revoked server) is asked again until approved;
/// a join token the headnode refuses, or a CA it does not vouch for, ends the agent.
pub async fn join(hn: &Headnode, token: &JoinToken, creds: &tls::Credentials, rt: &NodeRuntime, agent_url: &str) -> Result<()> {
    let reg = Register { sysinfo: rt.sysinfo.clone(), agent_url: agent_url.to_string() };
    let mut backoff = Duration::from_millis(200);
    loop {
        match join_once(hn, token, creds, rt, &reg).await {
            Ok(()) => return Ok(()),
            Err(CallError::ApprovalRequired(m)) => {
                tracing::warn!(server = %rt.uuid, "{m}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(CallError::Unauthorized(m)) => {
                anyhow::bail!(
                    "the headnode refused to let server {} join: {m} (the join token is in join.token in the headnode's data directory)",
                    rt.uuid
                )
            }
            Err(e) => {
                tracing::warn!(server = %rt.uuid, error = %e, "joining failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

async fn join_once(hn: &Headnode, token: &JoinToken, creds: &tls::Credentials, rt: &NodeRuntime, reg: &Register) -> Result<(), CallError> {
    if creds.ca().is_none() {
        hn.discover_ca(token).await?;
    }
    if creds.cert(rt.uuid).is_some() {
        match hn.register(rt.uuid, reg).await {
            Ok(()) => return Ok(()),
            Err(CallError::Unauthorized(m)) => {
                tracing::warn!(server = %rt.uuid, "the headnode refuses this server's certificate ({m}); joining again")
            }
            Err(e) => return Err(e),
        }
    }
    let req = JoinRequest { sysinfo: reg.sysinfo.clone(), agent_url: reg.agent_url.clone(), public_key: creds.public_key_b64() };
    let j = hn.join(&token.secret, &req).await?;
    if j.server_uuid != rt.uuid {
        return Err(CallError::Network(format!("the headnode answered the join for {} with server UUID {}", rt.uuid, j.server_uuid)));
    }
    let pinned = creds.ca();
    if nereid_trust::ca::cert_der_from_pem(&j.ca).ok() != pinned {
        return Err(CallError::Network("the headnode's join answer names another CA than the pinned one".into()));
    }
    creds.set_cert(rt.uuid, &j.certificate, j.not_after).map_err(|e| CallError::Network(format!("{e:#}")))?;
    tracing::info!(server = %rt.uuid, "joined the headnode");
    // The agent URL and sysinfo, now over the authenticated channel.
    hn.register(rt.uuid, reg).await
}

/// Renews the server's certificate (same key) over its authenticated channel.
pub async fn renew(hn: &Headnode, creds: &tls::Credentials, server: Uuid) -> Result<(), CallError> {
    let j = hn.renew(server, &RenewRequest { public_key: creds.public_key_b64() }).await?;
    creds.set_cert(server, &j.certificate, j.not_after).map_err(|e| CallError::Network(format!("{e:#}")))?;
    tracing::info!(server = %server, "renewed the server's certificate");
    Ok(())
}

/// How often the nic tags' links are checked again when nothing changed.
const NETWORK_RECHECK: Duration = Duration::from_secs(300);

async fn heartbeats(
    hn: Headnode,
    rt: Arc<NodeRuntime>,
    every: Duration,
    token: JoinToken,
    creds: Arc<tls::Credentials>,
    agent_url: String,
) {
    // What the headnode last wanted the links to carry, what was wrong then, and when.
    let mut wanted = None;
    let mut problems = Vec::new();
    let mut checked = std::time::Instant::now();
    // The inventory as numbered here and as the headnode acknowledged it.
    let mut tracker = inventory::Tracker::default();
    loop {
        let mut again = false;
        if !rt.paused.load(Ordering::SeqCst) {
            rt.node.refresh_nic_tag_addresses().await;
            let hb = rt.heartbeat_tracked(&problems, &mut tracker);
            let sent = tracker.generation();
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
            if creds.cert(rt.uuid).is_some_and(|c| c.needs_renewal(now))
                && let Err(e) = renew(&hn, &creds, rt.uuid).await
            {
                tracing::warn!(server = %rt.uuid, error = %e, "renewing the certificate failed; will retry");
            }
            match hn.heartbeat(rt.uuid, &hb).await {
                Ok(reply) => {
                    tracker.reply(sent, &reply);
                    // A delta the headnode could not apply: the full inventory at once.
                    again = reply.send_full && hb.delta.is_some();
                    // At start, when the networks change, and every few minutes: the links
                    // must carry their networks' MTU. A change is reported at once.
                    if wanted.as_ref() != Some(&reply.nic_tag_mtus) || checked.elapsed() > NETWORK_RECHECK {
                        let now = rt.node.check_network(&reply.nic_tag_mtus).await;
                        again |= now != problems;
                        problems = now;
                        wanted = Some(reply.nic_tag_mtus);
                        checked = std::time::Instant::now();
                    }
                }
                Err(CallError::Unauthorized(m)) => {
                    // Revoked, or another key approved for this UUID: asking again waits
                    // for the operator's approval, it never takes the server back by itself.
                    tracing::warn!(server = %rt.uuid, "the headnode refuses this server's certificate ({m}); asking to join again");
                    tracker.forget();
                    if let Err(e) = join(&hn, &token, &creds, &rt, &agent_url).await {
                        tracing::error!(error = %e, "re-joining failed");
                    }
                }
                Err(e) => tracing::debug!(error = %e, "heartbeat failed"),
            }
        }
        if !again {
            tokio::time::sleep(every).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nereid_types::agent::{MetadataWrite, Temperature};

    struct NoHeadnode;

    #[async_trait::async_trait]
    impl supervisor::Upstream for NoHeadnode {
        async fn metadata_write(&self, _: Uuid, _: &MetadataWrite) -> Result<(), String> {
            Err("no headnode in this test".into())
        }
    }

    #[tokio::test]
    async fn a_heartbeat_carries_the_hwmon_temperatures_and_none_without_sensors() {
        let dir = tempfile::tempdir().unwrap();
        let chip = dir.path().join("hwmon").join("hwmon0");
        std::fs::create_dir_all(&chip).unwrap();
        std::fs::write(chip.join("name"), "coretemp\n").unwrap();
        std::fs::write(chip.join("temp1_input"), "45000\n").unwrap();
        std::fs::write(chip.join("temp1_label"), "Package id 0\n").unwrap();
        let sim = Arc::new(backend::sim::Sim::open(dir.path().join("sim.json"), backend::sim::Delays::default()));
        let (tx, _rx) = mpsc::unbounded_channel();
        let node = Node::open(Uuid::new_v4(), sim, Arc::new(NoHeadnode), dir.path().join("node"), tx).await.unwrap();
        let rt = NodeRuntime {
            uuid: node.uuid,
            identity: "test".into(),
            migrations: migration::Migrations::open(node.clone()).unwrap(),
            node,
            sysinfo: Map::new(),
            paused: AtomicBool::new(false),
            ram_mib: 2048,
            disk_mib: 4096,
            hwmon: std::sync::Mutex::new(None),
            smart: smart::Monitor::new(None),
        };
        // A simulated server has no sensors: nothing is sent, not even an empty list.
        let hb = rt.heartbeat(&[]);
        assert!(hb.temperatures.is_empty());
        assert!(serde_json::to_value(&hb).unwrap().get("temperatures").is_none());
        assert_eq!(hb.usage.ram_total_mib, 2048);

        rt.set_hwmon(Some(dir.path().join("hwmon")));
        let hb = rt.heartbeat(&[]);
        assert_eq!(hb.temperatures, vec![Temperature { sensor: "coretemp".into(), label: "Package id 0".into(), celsius: 45.0 }]);
        let sent = serde_json::to_value(&hb).unwrap();
        assert_eq!(sent["temperatures"], serde_json::json!([{"sensor": "coretemp", "label": "Package id 0", "celsius": 45.0}]));

        // A root with no monitors (a host without sensors) sends none either.
        rt.set_hwmon(Some(dir.path().join("empty")));
        assert!(rt.heartbeat(&[]).temperatures.is_empty());
    }
}
