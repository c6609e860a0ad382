//! A whole cloud in-process for integration tests: a headnode on a free loopback port
//! with a fresh store (SQLite in a temporary directory, or a fresh PostgreSQL schema), a
//! client already pointed at it, and optionally an agent running simulated servers.
//!
//! ```no_run
//! # async fn t() -> anyhow::Result<()> {
//! use nereid_testkit::{Backend, Cloud, Options};
//! let cloud = Cloud::start_with(Options { sim_servers: 3, ..Options::new(Backend::Sqlite) }).await?;
//! let seed = cloud.seed().await?;
//! let (vm, job) = cloud.create_vm(&seed.vm_body("web-1")).await?;
//! # Ok(()) }
//! ```

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use nereid_agent::backend::sim::Delays;
use nereid_agent::{Agent, BackendKind};
use nereid_client::{Client, Target};
use nereid_headnode::app::AppConfig;
use nereid_headnode::{Config, Running};
use serde_json::{Value, json};

pub mod cloudapi;
pub mod job_times;
pub mod netns;
pub mod qemu;
pub mod triton;
pub mod web;
pub mod webdriver;

/// Which store a test cloud uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub const ALL: [Backend; 2] = [Backend::Sqlite, Backend::Postgres];

    /// A store URL for a fresh, empty store of this kind.
    pub async fn fresh_url(self, dir: &std::path::Path) -> Result<String> {
        Ok(match self {
            Backend::Sqlite => format!("sqlite:{}", dir.join("nereid.db").display()),
            Backend::Postgres => nereid_store::testing::fresh_pg_url().await.map_err(anyhow::Error::msg)?,
        })
    }
}

/// How to start a test cloud.
#[derive(Debug, Clone)]
pub struct Options {
    pub backend: Backend,
    /// Simulated servers run by one in-process agent (0: no agent).
    pub sim_servers: usize,
    pub sim_cpus: u32,
    pub sim_ram_mib: u64,
    pub sim_disk_gib: u64,
    pub sim_delays: Delays,
    pub heartbeat: Duration,
    pub app: AppConfig,
    /// Use this store instead of a fresh one (several headnodes on one database).
    pub store_url: Option<String>,
    /// Serve CloudAPI (see [`Options::cloudapi_http`]); none by default.
    pub cloudapi: Option<nereid_headnode::server::CloudApiConfig>,
    /// Serve the web console (see [`Options::web_https`]); none by default.
    pub web: Option<nereid_headnode::web::WebConfig>,
    /// Serve the public image catalogue on a free loopback port (see
    /// [`Options::image_catalog`]); none by default.
    pub image_catalog: bool,
}

impl Options {
    pub fn new(backend: Backend) -> Self {
        Options {
            backend,
            sim_servers: 0,
            sim_cpus: 8,
            sim_ram_mib: 16_384,
            sim_disk_gib: 500,
            sim_delays: Delays {
                create: Duration::from_millis(50),
                start: Duration::from_millis(20),
                stop: Duration::from_millis(20),
                crash_after: Duration::from_millis(300),
            },
            heartbeat: Duration::from_millis(500),
            app: AppConfig {
                server_timeout: Duration::from_secs(11),
                // Tests' heartbeats come every few hundred ms: written and checked as often.
                liveness_flush: Duration::from_millis(100),
                liveness_recheck: Duration::from_secs(1),
                job_lease: Duration::from_secs(5),
                step_deadline: Duration::from_secs(30),
                provision_deadline: Duration::from_secs(30),
                ..AppConfig::default()
            },
            store_url: None,
            cloudapi: None,
            web: None,
            image_catalog: false,
        }
    }

    /// The public image catalogue (`--image-catalog-listen`) on a free loopback port; its
    /// URL is [`Cloud::image_catalog_url`].
    pub fn image_catalog(mut self) -> Self {
        self.image_catalog = true;
        self
    }

    /// The web console over HTTPS (self-signed, as `nereid up` serves it) on a free
    /// loopback port, with the browser libraries `scripts/test` installs
    /// (`$NEREID_WEB_ASSETS`).
    pub fn web_https(mut self) -> Self {
        self.web = Some(nereid_headnode::web::WebConfig::new(([127, 0, 0, 1], 0).into()));
        self
    }

    /// The web console over plain HTTP on a free loopback port.
    pub fn web_http(mut self) -> Self {
        let mut w = nereid_headnode::web::WebConfig::new(([127, 0, 0, 1], 0).into());
        w.http = true;
        self.web = Some(w);
        self
    }

    /// Instance DNS (`--dns-listen`, CNS) on a free loopback port (UDP and TCP,
    /// `Running::dns`): zones `nereid-1.<suffix>` and `nereid-1.cns.<suffix>`, transfers
    /// from loopback.
    pub fn dns(mut self, suffix: &str) -> Self {
        self.app.cns = Some(nereid_headnode::app::cns::CnsConfig::new(([127, 0, 0, 1], 0).into(), "nereid-1", suffix));
        self
    }

    /// CloudAPI over plain HTTP on a free loopback port.
    pub fn cloudapi_http(mut self) -> Self {
        let mut c = nereid_headnode::server::CloudApiConfig::new(([127, 0, 0, 1], 0).into());
        c.http = true;
        self.cloudapi = Some(c);
        self
    }

    /// CloudAPI over HTTPS (self-signed) on a free loopback port.
    pub fn cloudapi_https(mut self) -> Self {
        self.cloudapi = Some(nereid_headnode::server::CloudApiConfig::new(([127, 0, 0, 1], 0).into()));
        self
    }
}

/// A running test cloud; dropped at the end of the test.
pub struct Cloud {
    pub headnode: Running,
    pub client: Client,
    pub store_url: String,
    pub data_dir: PathBuf,
    pub agent: Option<Agent>,
    /// How the headnode was started (for [`Cloud::restart_headnode`]).
    cfg: Config,
    _dir: tempfile::TempDir,
}

/// IDs of what [`Cloud::seed`] made.
#[derive(Debug, Clone)]
pub struct Seed {
    pub package: String,
    pub image: String,
    pub network: String,
    pub owner: String,
}

impl Seed {
    /// A CreateVm body on the seeded package, image and network.
    pub fn vm_body(&self, alias: &str) -> Value {
        json!({"owner_uuid": self.owner, "brand": "bhyve", "billing_id": self.package, "image_uuid": self.image, "networks": [self.network], "alias": alias})
    }
}

impl Cloud {
    /// A headnode with an empty store and no compute nodes.
    pub async fn start(backend: Backend) -> Result<Self> {
        Self::start_with(Options::new(backend)).await
    }

    /// Another headnode on an existing store (several headnodes, one PostgreSQL).
    pub async fn start_on(store_url: &str) -> Result<Self> {
        Self::start_with(Options { store_url: Some(store_url.to_string()), ..Options::new(Backend::Postgres) }).await
    }

    pub async fn start_with(o: Options) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let data_dir = dir.path().join("data");
        let store_url = match &o.store_url {
            Some(u) => u.clone(),
            None => o.backend.fresh_url(dir.path()).await?,
        };
        let mut cfg = Config::new(data_dir.clone(), Some(store_url.clone()), "127.0.0.1:0".parse()?);
        cfg.app = o.app.clone();
        cfg.cloudapi = o.cloudapi.clone();
        cfg.web = o.web.clone();
        cfg.image_catalog = o.image_catalog.then(|| ([127, 0, 0, 1], 0).into());
        let headnode = nereid_headnode::start(cfg.clone()).await?;
        let client = Client::new(Target { url: headnode.admin_url.clone(), token: headnode.token.clone(), source: "testkit".into() });
        let mut cloud = Cloud { headnode, client, store_url, data_dir, agent: None, cfg, _dir: dir };
        if o.sim_servers > 0 {
            cloud.agent = Some(cloud.start_agent(&o).await?);
            cloud.wait_servers(o.sim_servers).await?;
        }
        Ok(cloud)
    }

    /// Restarts the headnode in this process, on the same data directory, store and
    /// address: its jobs stop where they stand (as in a crash) and the new one takes them
    /// back. Requests in flight may fail; clients retry.
    pub async fn restart_headnode(&mut self) -> Result<()> {
        self.headnode.halt().await?;
        let mut cfg = self.cfg.clone();
        cfg.admin_listen = self.headnode.admin_addr;
        cfg.agent_listen = self.headnode.agent_addr;
        if let (Some(w), Some(running)) = (cfg.web.as_mut(), self.headnode.web.as_ref()) {
            w.listen = running.addr;
        }
        if cfg.image_catalog.is_some() {
            cfg.image_catalog = self.headnode.image_catalog;
        }
        if let (Some(c), Some(addr)) = (cfg.app.cns.as_mut(), self.headnode.dns) {
            c.listen = addr;
        }
        self.headnode = nereid_headnode::start(cfg).await?;
        Ok(())
    }

    /// Starts an agent with simulated servers against this headnode.
    pub async fn start_agent(&self, o: &Options) -> Result<Agent> {
        let cfg = nereid_agent::Config {
            headnode_url: self.headnode.agent_url.clone(),
            join_token: self.headnode.join_token_full.clone(),
            data_dir: self._dir.path().join("agent"),
            backend: BackendKind::Sim {
                servers: o.sim_servers,
                cpus: o.sim_cpus,
                ram_mib: o.sim_ram_mib,
                disk_gib: o.sim_disk_gib,
                delays: o.sim_delays,
            },
            listen: "127.0.0.1:0".parse()?,
            advertise_url: None,
            heartbeat: o.heartbeat,
            nic_tags: Vec::new(),
            migration_listen: Some("127.0.0.1:0".parse()?),
            no_exec: false,
        };
        nereid_agent::start(cfg).await
    }

    /// Waits until `n` servers report running.
    pub async fn wait_servers(&self, n: usize) -> Result<Vec<Value>> {
        let end = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let servers = self.client.get("/servers").await?;
            let list = servers.as_array().cloned().unwrap_or_default();
            if list.iter().filter(|s| s["status"] == "running").count() >= n {
                return Ok(list);
            }
            if std::time::Instant::now() > end {
                bail!("only {} of {n} servers are running: {servers}", list.len());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `http://ADDR` of the public image catalogue ([`Options::image_catalog`]).
    pub fn image_catalog_url(&self) -> Result<String> {
        let addr = self.headnode.image_catalog.context("this cloud has no image catalogue listener (Options::image_catalog)")?;
        Ok(format!("http://{addr}"))
    }

    /// A client with another token (for authentication tests).
    pub fn client_with_token(&self, token: &str) -> Client {
        Client::new(Target { url: self.headnode.admin_url.clone(), token: token.into(), source: "testkit".into() })
    }

    /// A nic tag, a /24 network, a 1 GiB package and a tiny active image.
    pub async fn seed(&self) -> Result<Seed> {
        self.seed_sized(1024, 10_240).await
    }

    /// Like [`seed`](Self::seed) with the package's RAM and quota (MiB).
    pub async fn seed_sized(&self, ram: u64, quota: u64) -> Result<Seed> {
        let c = &self.client;
        let _ = c.post("/nic_tags", &json!({"name": "external"})).await;
        let network = c
            .post("/networks", &json!({"name": "external", "nic_tag": "external", "vlan_id": 0, "subnet": "10.77.0.0/16", "provision_start_ip": "10.77.0.10", "provision_end_ip": "10.77.250.250", "gateway": "10.77.0.1", "resolvers": ["10.77.0.1"]}))
            .await?["uuid"]
            .as_str()
            .context("network uuid")?
            .to_string();
        let package = c
            .post(
                "/packages",
                &json!({"name": "sample", "version": "1.0.0", "max_physical_memory": ram, "quota": quota, "vcpus": 1, "brand": "bhyve"}),
            )
            .await?["uuid"]
            .as_str()
            .context("package uuid")?
            .to_string();
        let image = c
            .post("/images", &json!({"owner": "00000000-0000-0000-0000-000000000000", "name": "tiny", "version": "1", "type": "zvol", "os": "linux", "public": true, "nic_driver": "virtio", "disk_driver": "virtio", "cpu_type": "host", "image_size": 1024}))
            .await?["uuid"]
            .as_str()
            .context("image uuid")?
            .to_string();
        c.send(c.request(reqwest::Method::PUT, &format!("/images/{image}/file?compression=none")).body(vec![0u8; 4096])).await?;
        c.post(&format!("/images/{image}?action=activate"), &json!({})).await?;
        Ok(Seed { package, image, network, owner: "930896af-bf8c-48d4-885c-6573a94b1853".into() })
    }

    /// A CloudAPI account `login` with one fresh `kind` key, and the real `triton` CLI set up
    /// for it against this cloud's CloudAPI (insecure when it serves HTTPS with its own
    /// certificate). Keep the [`triton::Tenant`]: its home holds the key.
    pub async fn triton_user(&self, login: &str, kind: triton::KeyType) -> Result<(triton::Tenant, triton::Triton)> {
        let tenant = triton::Tenant::new(kind)?;
        let email = format!("{login}@example.com");
        self.client.post("/accounts", &json!({"login": login, "email": email, "keys": [{"key": tenant.public_key}]})).await?;
        let url = self.headnode.cloudapi.as_ref().context("this cloud has no CloudAPI listener (Options::cloudapi_http)")?.url.clone();
        let t = tenant.triton(&url, login, url.starts_with("https://"))?;
        Ok((tenant, t))
    }

    /// CreateVm; returns (vm uuid, job uuid).
    pub async fn create_vm(&self, body: &Value) -> Result<(String, String), nereid_client::Error> {
        let r = self.client.post("/vms", body).await?;
        Ok((r["vm_uuid"].as_str().unwrap_or_default().to_string(), r["job_uuid"].as_str().unwrap_or_default().to_string()))
    }

    /// An operator-API `GET path` whose answer is read as bytes, not decoded: the status
    /// and the body's length (for benchmarks: decoding a 1 MB list is the client's time).
    pub async fn get_bytes(&self, path: &str) -> Result<(u16, usize)> {
        let resp = self.client.request(reqwest::Method::GET, path).send().await.with_context(|| format!("GET {path}"))?;
        let status = resp.status().as_u16();
        Ok((status, resp.bytes().await?.len()))
    }

    /// Waits for a job and returns it.
    pub async fn wait_job(&self, job: &str) -> Result<Value> {
        let j = self.client.get(&format!("/jobs/{job}/wait?timeout=120")).await?;
        if !matches!(j["execution"].as_str(), Some("succeeded" | "failed" | "canceled")) {
            bail!("job {job} did not finish: {j}");
        }
        Ok(j)
    }
}
