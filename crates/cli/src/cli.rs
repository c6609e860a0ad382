//! The command line: every subcommand and flag, with the help texts operators read.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "nereid",
    version,
    about = "Nereid: a Triton-compatible private cloud on ordinary Linux hosts with QEMU",
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Run a whole cloud on this machine: a headnode plus a local agent, seeded on first start.
    Up(Box<UpArgs>),
    /// Run a headnode: Triton's operator APIs (PAPI, IMGAPI, NAPI, CNAPI, VMAPI) over the store.
    Headnode(HeadnodeArgs),
    /// Run a compute node's agent (joins a headnode, runs VMs).
    Agent(AgentArgs),
    /// Operator commands against a running headnode's admin API.
    Admin(AdminArgs),
    /// Turn disk files into images, or import image files with their manifests.
    Image(ImageArgs),
    /// Print a generated API document (OpenAPI 3).
    Openapi {
        #[arg(value_enum, default_value = "admin")]
        which: ApiDoc,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum ApiDoc {
    /// The operator APIs on --admin-listen.
    Admin,
    /// CloudAPI, the tenants' API on --cloudapi-listen.
    Cloudapi,
}

#[derive(Args, Debug)]
pub struct HeadnodeArgs {
    /// Directory for the store, image files, the admin token and endpoints.json [default: $NEREID_DATA_DIR or ./nereid-data]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// State store: sqlite:PATH or postgres://USER@HOST/DB[?schema=NAME] [default: SQLite in the data directory]
    #[arg(long, value_name = "URL", env = "NEREID_STORE")]
    pub store: Option<String>,
    /// Address of the operator API listener (port 0 picks a free port)
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub admin_listen: SocketAddr,
    /// Address of the agent listener: what compute nodes' agents call, mutual TLS only (port 0 picks a free port) [default: 127.0.0.1:8081, or a free port when --admin-listen has port 0]
    #[arg(long, value_name = "ADDR")]
    pub agent_listen: Option<SocketAddr>,
    /// Where image files live [default: DIR/images]. Several headnodes of one cluster (one PostgreSQL store) name one path they all mount, so an image uploaded through any of them provisions through every one
    #[arg(long, value_name = "DIR")]
    pub images_dir: Option<PathBuf>,
    /// Publish this cloud's public, active images on ADDR as a read-only IMGAPI catalogue (plain HTTP, no authentication: GET /ping, /images, /images/UUID, /images/UUID/file, /channels), as images.smartos.org does; other clouds import from it with `nereid admin image sources add`
    #[arg(long, value_name = "ADDR")]
    pub image_catalog_listen: Option<SocketAddr>,
    #[command(flatten)]
    pub cloudapi: CloudApiArgs,
    #[command(flatten)]
    pub web: WebArgs,
    #[command(flatten)]
    pub fabric: FabricArgs,
    #[command(flatten)]
    pub migration: MigrationArgs,
    #[command(flatten)]
    pub dns: DnsArgs,
    // Boxed: `Cmd`'s variants stay of a like size.
    #[command(flatten)]
    pub acme: Box<AcmeArgs>,
    #[command(flatten)]
    pub tuning: Tuning,
}

/// A certificate for CloudAPI and the web console from an ACME CA (Let's Encrypt).
#[derive(Args, Debug, Clone)]
pub struct AcmeArgs {
    /// Get CloudAPI's and the web console's certificate for NAME from an ACME CA, and renew it before it expires (repeat for more names; the first is the common name). Until it is issued the self-signed one is served; renewed ones are served from the next connection on, without a restart. Kept in DIR/acme (mode 0600) and reused across restarts
    #[arg(long, value_name = "NAME", value_parser = acme_domain, conflicts_with_all = ["cloudapi_cert", "cloudapi_key", "cloudapi_http", "no_cloudapi"])]
    pub acme_domain: Vec<String>,
    /// The ACME CA's directory URL
    #[arg(long, value_name = "URL", default_value = nereid_headnode::acme::LETS_ENCRYPT, requires = "acme_domain")]
    pub acme_directory: String,
    /// A contact address for the ACME account (the CA writes about expiring certificates and problems) [default: none]
    #[arg(long, value_name = "ADDR", requires = "acme_domain")]
    pub acme_email: Option<String>,
    /// How the CA checks that this headnode answers for the names: http-01 (a token served on --acme-http-listen; the CA connects to port 80 of each name) or dns-01 (a TXT record _acme-challenge.NAME served by this headnode's DNS server, --dns-listen: only for names inside its zones <datacenter>.<suffix> or <datacenter>.cns.<suffix>, delegated to it)
    #[arg(long, value_name = "http-01|dns-01", default_value = "http-01", value_parser = ["http-01", "dns-01"], requires = "acme_domain")]
    pub acme_challenge: String,
    /// Where HTTP-01 challenges are answered (plain HTTP, only /.well-known/acme-challenge/TOKEN; 404 otherwise); port 80 of every --acme-domain must reach it [default: 0.0.0.0:80]
    #[arg(long, value_name = "ADDR", requires = "acme_domain")]
    pub acme_http_listen: Option<SocketAddr>,
    /// CA certificates (PEM) trusted for the ACME directory's own HTTPS, besides the system's: a private CA, or pebble's in tests
    #[arg(long, value_name = "FILE", requires = "acme_domain")]
    pub acme_ca_cert: Option<PathBuf>,
    /// Renew when less than SECS of validity is left [default: a third of the certificate's lifetime; at most half of it]
    #[arg(long, value_name = "SECS", requires = "acme_domain")]
    pub acme_renew_before: Option<u64>,
}

fn acme_domain(s: &str) -> Result<String, String> {
    nereid_headnode::acme::domain(s)
}

impl AcmeArgs {
    /// The headnode's ACME settings (`None` without --acme-domain).
    pub fn config(&self) -> Result<Option<nereid_headnode::acme::AcmeConfig>, String> {
        use nereid_headnode::acme::{AcmeConfig, Challenge, DEFAULT_HTTP_LISTEN};
        if self.acme_domain.is_empty() {
            return Ok(None);
        }
        let challenge = match self.acme_challenge.as_str() {
            "dns-01" if self.acme_http_listen.is_some() => return Err("--acme-http-listen is for --acme-challenge http-01".into()),
            "dns-01" => Challenge::Dns01,
            _ => Challenge::Http01 {
                listen: self
                    .acme_http_listen
                    .unwrap_or_else(|| DEFAULT_HTTP_LISTEN.parse().unwrap_or(SocketAddr::from(([0, 0, 0, 0], 80)))),
            },
        };
        if !self.acme_directory.starts_with("https://") || self.acme_directory.len() <= "https://".len() {
            return Err(format!("--acme-directory {:?}: an ACME directory is an https:// URL", self.acme_directory));
        }
        if let Some(e) = &self.acme_email
            && (!e.contains('@') || e.contains(char::is_whitespace))
        {
            return Err(format!("--acme-email {e:?} is not an email address"));
        }
        // A name given twice is one identifier (a CA may refuse an order naming it twice).
        let mut domains: Vec<String> = Vec::new();
        for d in &self.acme_domain {
            if !domains.iter().any(|k| k.eq_ignore_ascii_case(d)) {
                domains.push(d.clone());
            }
        }
        let mut c = AcmeConfig::new(domains, &self.acme_directory, challenge);
        c.email = self.acme_email.clone();
        c.ca_cert = self.acme_ca_cert.clone();
        c.renew_before = self.acme_renew_before.map(std::time::Duration::from_secs);
        Ok(Some(c))
    }
}

/// Instance DNS (Triton's CNS): names for every instance of the accounts that switch it on.
#[derive(Args, Debug, Clone)]
pub struct DnsArgs {
    /// Serve instance DNS (Triton CNS) on ADDR, UDP and TCP (e.g. 0.0.0.0:53; port 0 picks a free port); off when absent. Zones: <datacenter>.<suffix> holds public addresses, <datacenter>.cns.<suffix> private ones (RFC 1918, 100.64/10, link-local, ULA); names are <alias|uuid>.inst.<account uuid>.<zone> and <service>.svc.<account uuid>.<zone> (tag triton.cns.services), for accounts with triton_cns_enabled (`nereid admin account update LOGIN --cns-enabled true`)
    #[arg(long, value_name = "ADDR")]
    pub dns_listen: Option<SocketAddr>,
    /// The DNS suffix under which the datacenter's zones are (--datacenter-name names the datacenter); delegate <datacenter>.<suffix> and <datacenter>.cns.<suffix> to --dns-listen
    #[arg(long, value_name = "SUFFIX", default_value = nereid_headnode::app::cns::DEFAULT_SUFFIX, value_parser = dns_suffix)]
    pub dns_suffix: String,
    /// Who may transfer the zones (AXFR, IXFR): addresses or CIDR blocks, comma-separated, e.g. a secondary BIND's [default: loopback only]
    #[arg(long, value_name = "CIDR[,CIDR…]", value_parser = checked(nereid_headnode::app::cns::parse_cidrs))]
    pub dns_allow_transfer: Option<String>,
    /// Secondaries told with a NOTIFY when a zone's serial changes: IP or IP:PORT (port 53 by default), comma-separated [default: none]
    #[arg(long, value_name = "ADDR[,ADDR…]", value_parser = checked(nereid_headnode::app::cns::parse_peers))]
    pub dns_notify: Option<String>,
}

/// A value parser that checks a list with `parse` and keeps the text.
fn checked<T>(parse: fn(&str) -> Result<Vec<T>, String>) -> impl Fn(&str) -> Result<String, String> + Clone + Send + Sync + 'static
where
    T: 'static,
{
    move |s: &str| parse(s).map(|_| s.to_string())
}

/// A DNS suffix: dot-separated labels of letters, digits and hyphens.
fn dns_suffix(s: &str) -> Result<String, String> {
    let t = s.trim_end_matches('.');
    let ok = !t.is_empty()
        && t.len() <= 200
        && t.split('.').all(|l| !l.is_empty() && l.len() <= 63 && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    if ok { Ok(t.to_ascii_lowercase()) } else { Err(format!("{s:?} is not a DNS suffix (e.g. example.com)")) }
}

impl DnsArgs {
    /// The headnode's CNS settings (`None` without --dns-listen); `datacenter` names the zones.
    pub fn config(&self, datacenter: &str) -> Result<Option<nereid_headnode::app::cns::CnsConfig>, String> {
        use nereid_headnode::app::cns;
        let Some(listen) = self.dns_listen else { return Ok(None) };
        let mut c = cns::CnsConfig::new(listen, datacenter, &self.dns_suffix);
        if let Some(a) = &self.dns_allow_transfer {
            c.dns.allow_transfer = cns::parse_cidrs(a)?;
        }
        if let Some(n) = &self.dns_notify {
            c.dns.notify_peers = cns::parse_peers(n)?;
        }
        Ok(Some(c))
    }
}

#[derive(Args, Debug, Clone)]
pub struct MigrationArgs {
    /// Let tenants migrate their own instances (`triton instance migration …`), as Triton's SAPI `user_migration_allowed` does; off by default, as in Triton. A VM's internal_metadata `user_migration_allowed` (true or false) overrides this either way; operators may always migrate
    #[arg(long)]
    pub allow_user_migration: bool,
    /// Cap every migration's data rate at MBPS megabits per second unless the operator gives another (`nereid admin vm migrate --bandwidth`); uncapped by default
    #[arg(long, value_name = "MBPS")]
    pub migration_bandwidth: Option<u64>,
    /// How many VMs `nereid admin server evacuate` moves at once unless told otherwise
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub evacuate_concurrency: usize,
}

impl MigrationArgs {
    pub fn apply(&self, cfg: &mut nereid_headnode::app::AppConfig) {
        cfg.migration.user_migration_allowed = self.allow_user_migration;
        cfg.migration.bandwidth_mbps = self.migration_bandwidth;
        cfg.migration.evacuate_concurrency = self.evacuate_concurrency.max(1);
    }
}

/// Fabrics: each account's private VLANs, carried between compute nodes over VXLAN.
#[derive(Args, Debug, Clone)]
pub struct FabricArgs {
    /// The nic tag whose links carry fabric (VXLAN) traffic between compute nodes; fabric networks get its MTU minus 50
    #[arg(long, value_name = "TAG", default_value = nereid_types::fabric::DEFAULT_UNDERLAY_TAG)]
    pub fabric_underlay_tag: String,
    /// Give every new account a default fabric VLAN (2, "default") and network (192.168.128.0/22 with NAT), as Triton's default fabric setup does
    #[arg(long)]
    pub fabric_default_network: bool,
}

impl FabricArgs {
    pub fn apply(&self, cfg: &mut nereid_headnode::app::AppConfig) {
        cfg.fabric.underlay_tag = self.fabric_underlay_tag.clone();
        cfg.fabric.default_for_new_accounts = self.fabric_default_network;
    }
}

/// The tenants' API (CloudAPI, for the `triton` CLI).
#[derive(Args, Debug, Clone)]
pub struct CloudApiArgs {
    /// Address of CloudAPI, the tenants' API the `triton` CLI uses (port 0 picks a free port)
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8443")]
    pub cloudapi_listen: SocketAddr,
    /// Serve CloudAPI over plain HTTP instead of HTTPS (for loopback and trusted networks only)
    #[arg(long)]
    pub cloudapi_http: bool,
    /// CloudAPI's TLS certificate (PEM, with its chain) [default: a self-signed one generated in the data directory]
    #[arg(long, value_name = "FILE", requires = "cloudapi_key")]
    pub cloudapi_cert: Option<PathBuf>,
    /// The certificate's private key (PEM)
    #[arg(long, value_name = "FILE", requires = "cloudapi_cert")]
    pub cloudapi_key: Option<PathBuf>,
    /// The URL tenants reach CloudAPI at, if not the listen address (behind a proxy or a DNS name)
    #[arg(long, value_name = "URL")]
    pub cloudapi_url: Option<String>,
    /// The datacenter name tenants see (`triton datacenters`)
    #[arg(long, value_name = "NAME", default_value = "nereid-1")]
    pub datacenter_name: String,
    /// Do not serve CloudAPI
    #[arg(long, conflicts_with_all = ["cloudapi_http", "cloudapi_cert"])]
    pub no_cloudapi: bool,
    /// CloudAPI requests a second per account (per source address when not authenticated); over it: 429 RequestThrottled with Retry-After
    #[arg(long, value_name = "N", default_value_t = nereid_headnode::cloudapi::ratelimit::RATE, value_parser = positive_rate)]
    pub cloudapi_rate_limit: f64,
    /// CloudAPI requests an account may send at once after a quiet spell
    #[arg(long, value_name = "N", default_value_t = nereid_headnode::cloudapi::ratelimit::BURST, value_parser = clap::value_parser!(u32).range(1..))]
    pub cloudapi_rate_burst: u32,
}

/// The web console (operators and tenants in a browser).
#[derive(Args, Debug, Clone)]
pub struct WebArgs {
    /// Address of the web console (port 0 picks a free port); it uses CloudAPI's certificate (--cloudapi-cert) or the self-signed one [default: 127.0.0.1:8090, or a free port when --admin-listen has port 0]
    #[arg(long, value_name = "ADDR")]
    pub web_listen: Option<SocketAddr>,
    /// Serve the web console over plain HTTP instead of HTTPS (for loopback only: passwords and session cookies travel unencrypted)
    #[arg(long)]
    pub web_http: bool,
    /// Where the console's browser libraries (xterm.js, noVNC) are: a node_modules directory, as scripts/up installs them [default: $NEREID_WEB_ASSETS]
    #[arg(long, value_name = "DIR")]
    pub web_assets: Option<PathBuf>,
    /// Minutes a console session lasts without use
    #[arg(long, value_name = "MIN", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub web_session_idle: u64,
    /// Do not serve the web console
    #[arg(long, conflicts_with_all = ["web_http", "web_assets"])]
    pub no_web: bool,
}

impl WebArgs {
    /// The headnode's web console settings.
    pub fn config(&self, admin_listen: SocketAddr) -> Option<nereid_headnode::web::WebConfig> {
        if self.no_web {
            return None;
        }
        let mut c =
            nereid_headnode::web::WebConfig::new(self.web_listen.unwrap_or_else(|| nereid_headnode::web::default_listen(admin_listen)));
        c.http = self.web_http;
        if let Some(d) = &self.web_assets {
            c.assets = Some(d.clone());
        }
        c.session_idle = std::time::Duration::from_secs(self.web_session_idle * 60);
        Some(c)
    }
}

/// A request rate: a positive number.
fn positive_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(n) if n.is_finite() && n > 0.0 => Ok(n),
        _ => Err(format!("{s:?} is not a positive number of requests a second")),
    }
}

impl CloudApiArgs {
    /// The headnode's CloudAPI settings.
    pub fn config(&self) -> Option<nereid_headnode::server::CloudApiConfig> {
        if self.no_cloudapi {
            return None;
        }
        let mut c = nereid_headnode::server::CloudApiConfig::new(self.cloudapi_listen);
        c.http = self.cloudapi_http;
        c.cert = self.cloudapi_cert.clone();
        c.key = self.cloudapi_key.clone();
        c.public_url = self.cloudapi_url.clone();
        c.datacenter = self.datacenter_name.clone();
        c.rate_limit =
            nereid_headnode::cloudapi::ratelimit::RateLimit { per_second: self.cloudapi_rate_limit, burst: self.cloudapi_rate_burst };
        Some(c)
    }
}

/// Timeouts of the headnode's logic.
#[derive(Args, Debug, Clone)]
pub struct Tuning {
    /// Seconds without a heartbeat after which a server's status is `unknown` (and placement skips it)
    #[arg(long, default_value_t = 11, value_name = "SECS")]
    pub server_timeout_secs: u64,
    /// Seconds a job lease lasts; another headnode takes over a job whose lease ran out
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    pub job_lease_secs: u64,
    /// Seconds between reconciliation passes (one headnode of the cluster compares the records with what servers run and repairs what is provable; 0 turns it off)
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    pub reconcile_every_secs: u64,
    /// Days audit records are kept (older ones are pruned hourly; 0 keeps them forever)
    #[arg(long, default_value_t = nereid_headnode::app::audit::DEFAULT_RETENTION_DAYS, value_name = "DAYS")]
    pub audit_retention_days: u64,
}

impl Tuning {
    /// Applies the flags to the headnode's knobs.
    pub fn apply(&self, cfg: &mut nereid_headnode::app::AppConfig) {
        cfg.server_timeout = std::time::Duration::from_secs(self.server_timeout_secs.max(1));
        cfg.job_lease = std::time::Duration::from_secs(self.job_lease_secs.max(3));
        cfg.reconcile_every = std::time::Duration::from_secs(self.reconcile_every_secs);
        cfg.audit_retention = (self.audit_retention_days > 0).then(|| std::time::Duration::from_secs(self.audit_retention_days * 86400));
    }
}

/// Hypervisor backends.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendArg {
    /// Simulated servers (for trying Nereid out, tests and scale runs).
    Sim,
    /// Real VMs with QEMU.
    Qemu,
}

/// Options of the simulated backend.
#[derive(Args, Debug, Clone)]
pub struct SimArgs {
    /// Simulated servers to run in this process
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub sim_servers: usize,
    /// CPUs of each simulated server
    #[arg(long, default_value_t = 16)]
    pub sim_cpus: u32,
    /// RAM of each simulated server (MiB)
    #[arg(long, default_value_t = 65_536)]
    pub sim_ram_mib: u64,
    /// Disk of each simulated server (GiB)
    #[arg(long, default_value_t = 2_000)]
    pub sim_disk_gib: u64,
    /// How long a simulated create takes (ms)
    #[arg(long, default_value_t = 300)]
    pub sim_create_ms: u64,
}

/// Options of the qemu backend.
#[derive(Args, Debug, Clone)]
pub struct QemuArgs {
    /// How guests execute: kvm, tcg (software emulation, slow) or auto (KVM if a probe guest boots under it, else TCG)
    #[arg(long, default_value = "auto", value_name = "auto|kvm|tcg")]
    pub accel: nereid_agent::backend::qemu::accel::Choice,
    /// The QEMU system emulator
    #[arg(long, value_name = "PATH", default_value = "qemu-system-x86_64")]
    pub qemu: PathBuf,
    /// qemu-img, for VM disks
    #[arg(long, value_name = "PATH", default_value = "qemu-img")]
    pub qemu_img: PathBuf,
    /// OVMF firmware code for UEFI guests [default: the distribution's, /usr/share/OVMF/OVMF_CODE_4M.fd]
    #[arg(long, value_name = "FILE")]
    pub ovmf_code: Option<PathBuf>,
    /// OVMF variable store template [default: the distribution's, /usr/share/OVMF/OVMF_VARS_4M.fd]
    #[arg(long, value_name = "FILE")]
    pub ovmf_vars: Option<PathBuf>,
    /// Seconds a guest has to power off after the ACPI power button before it is stopped hard
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    pub stop_timeout_secs: u64,
    /// A directory whose files VMs may use as cdroms (`media: cdrom` disks' `path`); repeatable. Without one, no VM may name a host file
    #[arg(long = "iso-dir", value_name = "DIR")]
    pub iso_dirs: Vec<PathBuf>,
    /// The uid of the first VM's QEMU; each VM runs as its own unprivileged uid from here (no /etc/passwd entry needed)
    #[arg(long, value_name = "UID", default_value_t = nereid_agent::backend::qemu::confine::DEFAULT_UID_BASE, value_parser = clap::value_parser!(u32).range(1..))]
    pub guest_uid_base: u32,
    /// smartctl (smartmontools), which reads the host's disks' SMART / NVMe health for the heartbeats, /metrics and server problems
    #[arg(long, value_name = "PATH", default_value = "smartctl")]
    pub smartctl: PathBuf,
    /// Seconds between two readings of the disks' health (0: never read them)
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    pub smart_interval_secs: u64,
}

impl QemuArgs {
    pub fn options(&self) -> nereid_agent::QemuOptions {
        nereid_agent::QemuOptions {
            accel: self.accel,
            qemu: self.qemu.clone(),
            qemu_img: self.qemu_img.clone(),
            ovmf_code: self.ovmf_code.clone(),
            ovmf_vars: self.ovmf_vars.clone(),
            stop_timeout: std::time::Duration::from_secs(self.stop_timeout_secs.max(1)),
            iso_dirs: self.iso_dirs.clone(),
            guest_uid_base: self.guest_uid_base,
            smartctl: self.smartctl.clone(),
            smart_interval: std::time::Duration::from_secs(self.smart_interval_secs),
            ..Default::default()
        }
    }
}

#[derive(Args, Debug)]
#[command(
    after_help = "On an empty store `nereid up` creates the nic tag `external`, a network `external` (10.88.0.0/24), a few packages and, with the sim backend, a placeholder image (with --backend qemu --demo, the bootable test image), then prints how to provision a VM."
)]
pub struct UpArgs {
    /// Directory for the store, image files, tokens and the agent [default: $NEREID_DATA_DIR or ./nereid-data]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// State store: sqlite:PATH or postgres://USER@HOST/DB[?schema=NAME] [default: SQLite in the data directory]
    #[arg(long, value_name = "URL", env = "NEREID_STORE")]
    pub store: Option<String>,
    /// Address of the operator API listener
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub admin_listen: SocketAddr,
    /// Address of the agent listener other compute nodes' agents call (mutual TLS only; port 0 picks a free port) [default: 127.0.0.1:8081, or a free port when --admin-listen has port 0]
    #[arg(long, value_name = "ADDR")]
    pub agent_listen: Option<SocketAddr>,
    /// Publish this cloud's public, active images on ADDR as a read-only IMGAPI catalogue (plain HTTP, no authentication), as images.smartos.org does
    #[arg(long, value_name = "ADDR")]
    pub image_catalog_listen: Option<SocketAddr>,
    /// Hypervisor backend of the local agent
    #[arg(long, value_enum, default_value = "sim")]
    pub backend: BackendArg,
    #[command(flatten)]
    pub sim: SimArgs,
    #[command(flatten)]
    pub qemu: QemuArgs,
    /// Do not create the default nic tag, network, packages and image
    #[arg(long)]
    pub no_seed: bool,
    /// With --backend qemu: import the test image (scripts/build-test-image) as a ready image, so a first VM boots in a minute
    #[arg(long)]
    pub demo: bool,
    /// The disk --demo imports [default: target/test-image/nereid-test.img]
    #[arg(long, value_name = "FILE", requires = "demo")]
    pub demo_image: Option<PathBuf>,
    /// With --backend qemu: where a nic tag's VM NICs plug in (repeatable): TAG=BRIDGE (an existing bridge, or one Nereid makes) or TAG=link:IFACE (Nereid bridges that link). A tag given here is not managed (see --managed-bridge)
    #[arg(long = "nic-tag", value_name = "TAG=BRIDGE|TAG=link:IFACE")]
    pub nic_tags: Vec<String>,
    /// With --backend qemu: the bridge Nereid makes and owns for the `external` nic tag, with each of its networks' gateway address on it and their traffic masqueraded out of the default route (like libvirt's default network); removed on a clean stop
    #[arg(long, value_name = "NAME", default_value = "nereid0")]
    pub managed_bridge: String,
    /// Do not make the managed bridge: `external` NICs are isolated unless --nic-tag external=… says where they go
    #[arg(long)]
    pub no_managed_network: bool,
    /// Keep the managed network's traffic on this host (no masquerading to the outside)
    #[arg(long)]
    pub no_nat: bool,
    /// Add this SSH key (a private key with its .pub beside it, or the .pub) to the operator account `admin` and write ~/.triton/profiles.d/nereid.json for the `triton` CLI
    #[arg(long, value_name = "KEYFILE")]
    pub triton_profile: Option<PathBuf>,
    #[command(flatten)]
    pub cloudapi: CloudApiArgs,
    #[command(flatten)]
    pub web: WebArgs,
    #[command(flatten)]
    pub fabric: FabricArgs,
    #[command(flatten)]
    pub migration: MigrationArgs,
    #[command(flatten)]
    pub tuning: Tuning,
}

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// The headnode's agent listener (its --agent-listen, TLS), e.g. https://10.0.0.1:8081 — or several headnodes of one cluster, comma-separated (the agent moves to the next when one cannot be reached)
    #[arg(long, value_name = "URL[,URL…]", env = "NEREID_HEADNODE")]
    pub headnode: String,
    /// The join token of any headnode of the cluster: SECRET:sha256:CAHASH as `nereid up`/`nereid headnode` print it (pins the headnode CA by its hash), or the bare SECRET in join.token in its data directory
    #[arg(long, value_name = "TOKEN", env = "NEREID_JOIN_TOKEN", conflicts_with = "join_token_file")]
    pub join_token: Option<String>,
    /// A file holding the join token
    #[arg(long, value_name = "FILE")]
    pub join_token_file: Option<PathBuf>,
    /// The agent's data directory (server identity, its key and certificates in tls/, VM state)
    #[arg(long, value_name = "DIR", default_value = "/var/lib/nereid-agent")]
    pub data_dir: PathBuf,
    /// Hypervisor backend
    #[arg(long, value_enum, default_value = "qemu")]
    pub backend: BackendArg,
    #[command(flatten)]
    pub sim: SimArgs,
    #[command(flatten)]
    pub qemu: QemuArgs,
    /// Address of the agent API (the headnode calls it)
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:5309")]
    pub listen: SocketAddr,
    /// URL the headnode uses to reach this agent [default: https://<listen address>]
    #[arg(long, value_name = "URL")]
    pub advertise_url: Option<String>,
    /// Where other agents send the data of VMs migrating here (TCP; each stream is authenticated by its migration's token) [default: the --listen IP, a free port]
    #[arg(long, value_name = "ADDR")]
    pub migration_address: Option<SocketAddr>,
    /// Run no commands and move no files for the operator (`nereid admin oneachnode` is refused here)
    #[arg(long)]
    pub no_exec: bool,
    /// Seconds between heartbeats
    #[arg(long, default_value_t = 5)]
    pub heartbeat_secs: u64,
    /// Nic tags this host provides (repeatable): TAG=BRIDGE (an existing bridge, or one Nereid makes, VLAN-filtering) or TAG=link:IFACE (Nereid makes a bridge for the tag and plugs IFACE into it as its uplink), e.g. external=br0, admin=link:eth1. A tag not given uses a bridge of the same name if there is one; otherwise its NICs are isolated
    #[arg(long = "nic-tag", value_name = "TAG=BRIDGE|TAG=link:IFACE")]
    pub nic_tags: Vec<String>,
    /// The nic tag whose link carries fabric (VXLAN) traffic to other compute nodes: the same as the headnode's --fabric-underlay-tag. Its link's first IPv4 address is this server's underlay address
    #[arg(long, value_name = "TAG", default_value = nereid_types::fabric::DEFAULT_UNDERLAY_TAG)]
    pub fabric_underlay_tag: String,
}

/// How client commands find the headnode.
#[derive(Args, Debug, Clone)]
pub struct ClientOpts {
    /// Data directory of the headnode to talk to (used unless NEREID_URL and NEREID_TOKEN are set) [default: $NEREID_DATA_DIR or ./nereid-data]
    #[arg(long, value_name = "DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// Print JSON instead of tables
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Args, Debug)]
#[command(
    after_help = "The headnode is found from NEREID_URL and NEREID_TOKEN, else --data-dir (endpoints.json, admin.token), else the default data directory."
)]
pub struct AdminArgs {
    #[command(flatten)]
    pub client: ClientOpts,
    #[command(subcommand)]
    pub noun: Noun,
}

#[derive(Subcommand, Debug)]
pub enum Noun {
    /// PAPI packages: the sizes VMs are provisioned with
    Package {
        #[command(subcommand)]
        verb: Verb,
    },
    /// IMGAPI images
    Image {
        #[command(subcommand)]
        verb: ImageVerb,
    },
    /// NAPI networks
    Network {
        #[command(subcommand)]
        verb: NetworkVerb,
    },
    /// NAPI network pools
    NetworkPool {
        #[command(subcommand)]
        verb: Verb,
    },
    /// NAPI nic tags
    NicTag {
        #[command(subcommand)]
        verb: Verb,
    },
    /// NAPI NICs (by MAC, with or without colons)
    Nic {
        #[command(subcommand)]
        verb: Verb,
    },
    /// CNAPI servers (compute nodes)
    Server {
        #[command(subcommand)]
        verb: ServerVerb,
    },
    /// VMAPI VMs
    Vm {
        #[command(subcommand)]
        verb: VmVerb,
    },
    /// Jobs (VM operations)
    Job {
        #[command(subcommand)]
        verb: JobVerb,
    },
    /// Accounts (tenants; Triton's UFDS) and their SSH keys, which sign CloudAPI requests
    Account {
        #[command(subcommand)]
        verb: AccountVerb,
    },
    /// NAPI fabrics: every account's fabric VLANs and the networks on them
    Fabric {
        #[command(subcommand)]
        verb: crate::cmd::fabric::FabricVerb,
    },
    /// FWAPI firewall rules: every account's, and global ones (read-only to tenants)
    Fwrule {
        #[command(subcommand)]
        verb: FwruleVerb,
    },
    /// The audit log: every change through the operator API, CloudAPI and the web console, and every failed sign-in (read-only)
    Audit {
        #[command(subcommand)]
        verb: crate::cmd::audit::AuditVerb,
    },
    /// Run a command, or put or get a file, on every running server or those named (Triton's sdc-oneachnode); exits 1 unless every server exited 0
    Oneachnode(crate::cmd::oneachnode::OnEachNodeArgs),
    /// Find every way the records drift from reality, each with its repair; exits 1 while problems remain
    #[command(long_about = "Find every way the records drift from reality: damaged or half-empty VM records, VMs their \
server does not run and VMs running without a record, NICs, addresses and reservations that belong to nothing, \
silent servers, missing or corrupt image files, and stuck jobs. Each finding names the exact repair.\n\n\
With --repair, the safe repairs are applied — a VM is synced (looked for on every server before anything is \
freed), and what provably belongs to nothing is freed — each recorded as a `repair` job (nereid admin job list \
task=repair). Damaged records, VMs without a record, silent servers and image files are never changed \
automatically: the finding says what to do.\n\nExit status: 0 when nothing is wrong, 1 when problems remain.")]
    Doctor {
        /// Apply the safe repairs, then report what remains
        #[arg(long)]
        repair: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum AccountVerb {
    /// Create an account, optionally with an SSH public key
    Create(AccountCreateArgs),
    /// List accounts
    List,
    /// Show one account (UUID or login) with its keys
    Get(IdArg),
    /// Change an account: email=… first_name=… last_name=… company_name=… phone=… operator=true (null clears)
    Update(AccountUpdateArgs),
    /// Disable an account: its keys stop working at once; its instances keep running
    Disable(IdArg),
    /// Enable a disabled account
    Enable(IdArg),
    /// Set an account's password for the web console (asked twice on a terminal, else one line from standard input)
    Passwd(PasswdArgs),
    /// An account's SSH keys
    Key {
        #[command(subcommand)]
        verb: KeyVerb,
    },
    /// An account's provisioning limits (Triton's `triton account limits`): instances, RAM or disk, optionally per image, os or brand
    Limit {
        #[command(subcommand)]
        verb: crate::cmd::limit::LimitVerb,
    },
}

#[derive(Args, Debug)]
pub struct AccountUpdateArgs {
    #[command(flatten)]
    pub update: UpdateArgs,
    /// Publish DNS names for the account's instances (Triton CNS's triton_cns_enabled; served with `nereid headnode --dns-listen`)
    #[arg(long, value_name = "true|false", action = clap::ArgAction::Set)]
    pub cns_enabled: Option<bool>,
}

#[derive(Args, Debug)]
pub struct AccountCreateArgs {
    /// Login: a letter, then letters, digits, _ . @ (3 to 32 characters)
    #[arg(long)]
    pub login: String,
    /// Email address
    #[arg(long)]
    pub email: String,
    /// An OpenSSH public key file (e.g. ~/.ssh/id_ed25519.pub) to add as the account's first key
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// Name of that key [default: the key's comment]
    #[arg(long, value_name = "NAME", requires = "key_file")]
    pub key_name: Option<String>,
    /// Make it an operator account: it sees and acts on every account through CloudAPI
    #[arg(long)]
    pub operator: bool,
    /// A file whose first line is the account's password for the web console (8 characters or more; "-" reads standard input)
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// More fields: first_name=… last_name=… company_name=… phone=…
    #[arg(value_name = "FIELD=VALUE")]
    pub fields: Vec<String>,
}

#[derive(Args, Debug)]
pub struct PasswdArgs {
    /// Account UUID or login
    pub account: String,
    /// Read the password from the first line of this file ("-": standard input) instead of asking
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum KeyVerb {
    /// Add an OpenSSH public key (rsa ≥ 2048 bits, ecdsa, ed25519) from a file ("-" reads standard input)
    Add {
        /// Account UUID or login
        account: String,
        /// The .pub file
        file: PathBuf,
        /// Key name [default: the key's comment, else its fingerprint]
        #[arg(long)]
        name: Option<String>,
    },
    /// List an account's keys with their MD5 and SHA256 fingerprints
    List {
        /// Account UUID or login
        account: String,
    },
    /// Remove a key by fingerprint (MD5 or SHA256:…) or name
    Remove {
        /// Account UUID or login
        account: String,
        /// Fingerprint or name
        key: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum FwruleVerb {
    /// List rules (all accounts', or one's with --owner, or the global ones with --global)
    List(FwruleListArgs),
    /// Show one rule
    Get(IdArg),
    /// Create a rule for an account (--owner) or a global one (--global), e.g. 'FROM any TO tag "role" = "web" ALLOW tcp PORT 80'
    Create(FwruleCreateArgs),
    /// Change a rule: rule='…' description=… log=true enabled=false (null clears the description)
    Update(UpdateArgs),
    /// Enable a rule
    Enable(IdArg),
    /// Disable a rule
    Disable(IdArg),
    /// Delete a rule
    Delete(IdArg),
    /// The VMs a rule affects
    Vms(IdArg),
}

#[derive(Args, Debug)]
pub struct FwruleOwner {
    /// The account (login or UUID)
    #[arg(long, value_name = "LOGIN|UUID", conflicts_with = "global")]
    pub owner: Option<String>,
    /// Global (operator-wide) rules
    #[arg(long)]
    pub global: bool,
}

#[derive(Args, Debug)]
pub struct FwruleListArgs {
    #[command(flatten)]
    pub who: FwruleOwner,
    /// Only enabled (true) or disabled (false) rules
    #[arg(long, value_name = "BOOL")]
    pub enabled: Option<bool>,
}

#[derive(Args, Debug)]
pub struct FwruleCreateArgs {
    /// The rule text (Triton's rule language)
    pub rule: String,
    #[command(flatten)]
    pub who: FwruleOwner,
    /// Create it disabled
    #[arg(long)]
    pub disabled: bool,
    /// A description
    #[arg(long, short = 'D')]
    pub description: Option<String>,
    /// Log the connections it matches
    #[arg(long)]
    pub log: bool,
}

#[derive(Subcommand, Debug)]
pub enum ServerVerb {
    /// List servers with their status
    List(ListArgs),
    /// Show one server (with sysinfo)
    Get(IdArg),
    /// ServerUpdate: reserved=true, traits='{"ssd":true}', overprovision_ratios='{"ram":1.5}', …
    Update(UpdateArgs),
    /// Forget a server (refused while VMs are counted on it)
    Delete(DeleteArgs),
    /// Show the server's agent trust: active, revoked or unapproved, its key, a join waiting for approval
    Trust(IdArg),
    /// Accept the join waiting for the server (another key for its UUID, or a revoked server)
    Approve(IdArg),
    /// Revoke the server's certificate at once: the headnode refuses its agent and stops calling it; its joins wait for approval
    Revoke(IdArg),
    /// Empty a server for maintenance: reserve it and migrate every VM off it, a few at a time
    #[command(long_about = "Empty a server for maintenance: the server is reserved at once (nothing new is placed on it, \
and it stays reserved afterwards: `nereid admin server update SERVER reserved=false` puts it back in service), then every \
VM on it is migrated to another server the allocator chooses, --concurrency at a time, each as `nereid admin vm migrate` \
would (live unless --offline).\n\nA VM no other server can take is reported with the allocator's explanation of each \
server's refusal, and stays where it is, running.\n\nWith -w: waits, prints each VM's outcome as it comes, and exits 1 if \
any VM is still on the server at the end.")]
    Evacuate(EvacuateArgs),
}

#[derive(Args, Debug)]
pub struct EvacuateArgs {
    /// The server to empty (UUID)
    pub id: String,
    /// How many VMs move at the same time
    #[arg(long, value_name = "N")]
    pub concurrency: Option<usize>,
    /// Move the VMs offline: stop, copy the disks, start on the target (no live migration)
    #[arg(long)]
    pub offline: bool,
    /// Wait until every VM has moved or failed, printing each outcome
    #[arg(short = 'w', long)]
    pub wait: bool,
}

#[derive(Subcommand, Debug)]
pub enum VmVerb {
    /// List VMs, optionally filtered (owner_uuid=…, state=running, tag.role=db, …)
    List(ListArgs),
    /// Show one VM (sync=true asks its server)
    Get(VmGetArgs),
    /// Create a VM: owner_uuid=… brand=bhyve billing_id=… image_uuid=… networks='["…"]'
    Create(VmCreateArgs),
    /// Start a stopped VM
    Start(VmActionArgs),
    /// Stop a running VM
    Stop(VmActionArgs),
    /// Reboot a running VM
    Reboot(VmActionArgs),
    /// Change a VM: ram=2048, quota=20, billing_id=…, alias=…, set_tags='{"a":"b"}'
    Update(VmUpdateArgs),
    /// Add NICs: networks='["<network uuid>"]' (or macs='["<existing NAPI NIC>"]'); a running VM restarts to see them
    AddNics(VmNicsArgs),
    /// Change NICs: nics='[{"mac": "…", "primary": true, "allow_ip_spoofing": true}]' (flags apply at once, without a restart)
    UpdateNics(VmNicsArgs),
    /// Remove NICs: macs='["90:b8:d0:…"]'; their addresses go back to NAPI
    RemoveNics(VmNicsArgs),
    /// Destroy a VM
    Delete(VmActionArgs),
    /// Attach to a VM's serial console (Ctrl-] detaches), or print its log with --log
    Console(VmConsoleArgs),
    /// Snapshots of every disk: create, rollback (stops the VM, starts it again if it ran) or delete
    Snapshot(VmSnapshotArgs),
    /// Move a VM to another server (begin, sync and switch in one go; live unless --offline)
    #[command(long_about = "Move a VM to another server: an automatic migration (Triton's begin, sync and switch in one \
job). The target is the allocator's choice, or --to. A running VM moves live: its disks are copied while it runs, \
then its memory, and it is paused only for the last moment (a guest that writes faster than the copy falls back to \
stop, copy, start). --offline stops it first. The VM keeps its UUID, MACs and IPs.\n\nAfterwards the source keeps \
a stopped copy until the migration is finalized (`triton instance migration finalize`, or VMAPI's \
migration_action=finalize); `nereid admin vm migration UUID` shows where it stands.\n\nWith -w: shows the progress \
and exits 0 only if the VM now runs on the target; a failed migration leaves it running on its server and says \
which phase failed and why.")]
    Migrate(VmMigrateArgs),
    /// Show a VM's latest migration: phase, state, progress, error
    Migration(IdArg),
}

#[derive(Args, Debug)]
pub struct VmMigrateArgs {
    /// The VM (UUID)
    pub id: String,
    /// The server to move it to (UUID); default: the allocator's choice
    #[arg(long, value_name = "SERVER")]
    pub to: Option<String>,
    /// Stop the VM, copy its disks, start it on the target (no live migration)
    #[arg(long)]
    pub offline: bool,
    /// Cap the data rate between the servers, in megabits per second
    #[arg(long, value_name = "MBPS")]
    pub bandwidth: Option<u64>,
    /// Wait for the migration, showing its progress, and report how it ended; once the VM runs on the target, finalize it (delete the stopped copy the source keeps) unless --keep-source
    #[arg(short = 'w', long)]
    pub wait: bool,
    /// With -w: keep the source's stopped copy after the switch (remove it later with --finalize)
    #[arg(long, requires = "wait")]
    pub keep_source: bool,
    /// Finalize the VM's switched migration instead of starting one: delete the stopped copy its source server keeps
    #[arg(long, conflicts_with_all = ["to", "offline", "bandwidth", "wait", "keep_source"])]
    pub finalize: bool,
}

#[derive(Args, Debug)]
pub struct VmSnapshotArgs {
    #[arg(value_enum)]
    pub op: SnapshotOp,
    pub id: String,
    /// The snapshot's name (letters, digits, '-', '_', '.')
    pub name: String,
    /// Wait for the job and show its outcome
    #[arg(short = 'w', long)]
    pub wait: bool,
}

/// What `vm snapshot` does.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotOp {
    Create,
    Rollback,
    Delete,
}

#[derive(Args, Debug)]
#[command(
    after_help = "Interactive on a terminal: keystrokes go to the guest (Ctrl-C included) until Ctrl-] detaches. With standard input from a pipe or file, its bytes are sent as they come, and the command ends once they have all been sent and the console has then been quiet for --idle seconds."
)]
pub struct VmConsoleArgs {
    pub id: String,
    /// Print the console log (the last 1 MiB of output) and exit
    #[arg(long)]
    pub log: bool,
    /// Without a terminal: after standard input ends, exit once no output came for this long
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    pub idle: f64,
    /// Give up after this long in any case (detaching)
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<f64>,
}

#[derive(Args, Debug)]
pub struct VmGetArgs {
    pub id: String,
    /// Ask the VM's server first (a VM it does not have is marked destroyed)
    #[arg(long)]
    pub sync: bool,
}

#[derive(Args, Debug)]
pub struct VmCreateArgs {
    #[arg(value_name = "FIELD=VALUE")]
    pub fields: Vec<String>,
    /// A JSON object with the fields ("-" reads standard input)
    #[arg(short = 'f', long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Wait for the provision job and show its outcome
    #[arg(short = 'w', long)]
    pub wait: bool,
}

#[derive(Args, Debug)]
pub struct VmActionArgs {
    pub id: String,
    /// Wait for the job and show its outcome
    #[arg(short = 'w', long)]
    pub wait: bool,
}

#[derive(Args, Debug)]
pub struct VmUpdateArgs {
    pub id: String,
    #[arg(value_name = "FIELD=VALUE")]
    pub fields: Vec<String>,
    /// Skip the capacity check of a resize
    #[arg(long)]
    pub force: bool,
    /// Wait for the job and show its outcome
    #[arg(short = 'w', long)]
    pub wait: bool,
}

#[derive(Args, Debug)]
pub struct VmNicsArgs {
    pub id: String,
    #[arg(value_name = "FIELD=VALUE")]
    pub fields: Vec<String>,
    /// Wait for the job and show its outcome
    #[arg(short = 'w', long)]
    pub wait: bool,
}

#[derive(Subcommand, Debug)]
pub enum JobVerb {
    /// List jobs (vm_uuid=…, execution=failed, task=provision)
    List(ListArgs),
    /// Show one job with each step's result
    Get(IdArg),
    /// Wait for a job to finish
    Wait(IdArg),
}

#[derive(Subcommand, Debug)]
pub enum Verb {
    /// List, optionally filtered: FIELD=VALUE query parameters
    List(ListArgs),
    /// Show one
    Get(IdArg),
    /// Create one from FIELD=VALUE pairs and/or a JSON file
    Create(CreateArgs),
    /// Change one: FIELD=VALUE pairs (VALUE null removes the field) and/or a JSON file
    Update(UpdateArgs),
    /// Delete one
    Delete(DeleteArgs),
}

#[derive(Subcommand, Debug)]
pub enum ImageVerb {
    #[command(flatten)]
    Common(Verb),
    /// Activate an unactivated image that has its file
    Activate(IdArg),
    /// Hide an image from provisioning
    Disable(IdArg),
    /// Make a disabled image provisionable again
    Enable(IdArg),
    /// The IMGAPIs images are imported from (another Nereid's catalogue, images.smartos.org, updates.tritondatacenter.com?channel=release)
    Sources {
        #[command(subcommand)]
        verb: SourcesVerb,
    },
    /// What the image sources offer, as `imgadm avail` lists it
    Avail(AvailArgs),
    /// Import an image and its origins from an image source, keeping its UUID (AdminImportRemoteImage); an interrupted import resumes when run again
    ImportRemote(ImportRemoteArgs),
}

#[derive(Subcommand, Debug)]
pub enum SourcesVerb {
    /// List the image sources
    List,
    /// Add an image source (it must answer GET /ping with imgapi: true); a URL may end in ?channel=NAME
    Add {
        /// e.g. https://images.smartos.org or http://10.0.0.5:8092?channel=release
        url: String,
    },
    /// Remove an image source
    Remove {
        /// The source as `sources list` shows it
        url: String,
    },
}

#[derive(Args, Debug)]
pub struct AvailArgs {
    /// Ask this IMGAPI instead of the configured sources
    #[arg(long, value_name = "URL")]
    pub source: Option<String>,
}

#[derive(Args, Debug)]
pub struct ImportRemoteArgs {
    /// The image's UUID (kept on import)
    pub uuid: String,
    /// Import from this IMGAPI instead of the first configured source that has the image
    #[arg(long, value_name = "URL")]
    pub source: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum NetworkVerb {
    #[command(flatten)]
    Common(Verb),
    /// List the IP records of a network
    Ips(IdArg),
    /// Show or change one address of a network: reserved=true, free=true, owner_uuid=…
    Ip {
        /// Network UUID
        network: String,
        /// Address
        ip: String,
        /// FIELD=VALUE changes (none: just show it)
        #[arg(value_name = "FIELD=VALUE")]
        fields: Vec<String>,
    },
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Filters, e.g. name=g1.small active=true (see `nereid openapi`)
    #[arg(value_name = "FIELD=VALUE")]
    pub filters: Vec<String>,
}

#[derive(Args, Debug)]
pub struct IdArg {
    /// UUID (name for nic tags, MAC for NICs)
    pub id: String,
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Fields, e.g. name=g1.small version=1.0.0 max_physical_memory=1024 quota=10240
    #[arg(value_name = "FIELD=VALUE")]
    pub fields: Vec<String>,
    /// A JSON object with the fields ("-" reads standard input); FIELD=VALUE pairs override it
    #[arg(short = 'f', long, value_name = "FILE")]
    pub file: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct UpdateArgs {
    /// UUID (name for nic tags, MAC for NICs)
    pub id: String,
    /// Fields to change; VALUE null removes a field
    #[arg(value_name = "FIELD=VALUE")]
    pub fields: Vec<String>,
    /// A JSON object with the changes ("-" reads standard input)
    #[arg(short = 'f', long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Packages: allow changing immutable fields
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug)]
pub struct DeleteArgs {
    /// UUID (name for nic tags, MAC for NICs)
    pub id: String,
    /// Packages: delete even though Triton keeps packages forever
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug)]
pub struct ImageArgs {
    #[command(flatten)]
    pub client: ClientOpts,
    #[command(subcommand)]
    pub cmd: ImageCmd,
}

#[derive(Subcommand, Debug)]
pub enum ImageCmd {
    /// Make an image from a raw or qcow2 disk (optionally .gz/.bz2/.xz/.zst): detect, size, hash, upload, activate
    #[command(
        disable_version_flag = true,
        long_about = "Make an image from a disk file in one step.\n\n\
        Replaces Triton's manual recipe (create a VM, dd the disk into its zvol, snapshot, zfs send, gzip, \
        hand-write a manifest, import). The file may be a raw or qcow2 disk, compressed with gzip, bzip2, xz or \
        zstd or not at all; the format and compression are detected from its bytes. image_size is the disk's \
        virtual size in MiB. The file is uploaded as it is, then the image is activated; on any failure the \
        half-created image is deleted. Prints the new image's UUID."
    )]
    CreateFromDisk(CreateFromDiskArgs),
    /// Import an image file with its manifest, as `sdc-imgadm import -m MANIFEST -f FILE` does
    Import(ImportArgs),
}

#[derive(Args, Debug)]
pub struct CreateFromDiskArgs {
    /// The disk file
    pub file: PathBuf,
    /// Image name, e.g. debian-12
    #[arg(long)]
    pub name: String,
    /// Image version, e.g. 20261125
    #[arg(long)]
    pub version: String,
    /// Guest OS
    #[arg(long, default_value = "linux", value_parser = ["linux", "bsd", "windows", "illumos", "smartos", "other"])]
    pub os: String,
    /// Firmware the image boots with (sets requirements.brand bhyve and requirements.bootrom)
    #[arg(long, value_parser = ["bios", "uefi"])]
    pub bootrom: Option<String>,
    /// Description shown in image lists
    #[arg(long)]
    pub description: Option<String>,
    /// Owning account [default: 00000000-0000-0000-0000-000000000000, i.e. the operator]
    #[arg(long, value_name = "UUID")]
    pub owner: Option<uuid::Uuid>,
    /// Make the image visible only to its owner (default: public)
    #[arg(long)]
    pub private: bool,
    /// NIC model the image expects
    #[arg(long, default_value = nereid_types::image::DEFAULT_DRIVER)]
    pub nic_driver: String,
    /// Disk model the image expects
    #[arg(long, default_value = nereid_types::image::DEFAULT_DRIVER)]
    pub disk_driver: String,
    /// CPU type: host or qemu64
    #[arg(long, default_value = nereid_types::image::DEFAULT_CPU_TYPE, value_parser = ["host", "qemu64"])]
    pub cpu_type: String,
}

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// The image manifest (JSON, with uuid)
    #[arg(short = 'm', long, value_name = "MANIFEST")]
    pub manifest: PathBuf,
    /// The image file
    #[arg(short = 'f', long, value_name = "FILE")]
    pub file: PathBuf,
}

/// The command with field lists added to the create/update help of each resource.
pub fn command() -> clap::Command {
    let mut cmd = Cli::command();
    cmd = cmd.mut_subcommand("admin", |admin| {
        let mut admin = admin;
        for r in crate::cmd::admin::RESOURCES.iter().filter(|r| r.noun != "vm" && r.noun != "server") {
            admin = admin.mut_subcommand(r.noun, |noun| {
                noun.mut_subcommand("create", |c| c.after_help(format!("Fields:\n{}", nereid_types::spec::describe(r.fields))))
                    .mut_subcommand("update", |c| c.after_help(format!("Fields:\n{}", nereid_types::spec::describe(r.update_fields))))
            });
        }
        admin
    });
    cmd
}

#[cfg(test)]
mod tests {
    fn paths(cmd: &clap::Command, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
        out.push(prefix.clone());
        for sub in cmd.get_subcommands() {
            let mut p = prefix.clone();
            p.push(sub.get_name().to_string());
            paths(sub, p, out);
        }
    }

    #[test]
    fn every_subcommand_builds_and_has_help() {
        super::command().debug_assert();
        let mut all = Vec::new();
        paths(&super::command(), vec![], &mut all);
        assert!(all.len() > 40, "{}", all.len());
        for p in all {
            let mut argv = vec!["nereid".to_string()];
            argv.extend(p.clone());
            argv.push("--help".into());
            let err = super::command().try_get_matches_from(argv).unwrap_err();
            assert_eq!(err.kind(), clap::error::ErrorKind::DisplayHelp, "{p:?}");
        }
    }
}
