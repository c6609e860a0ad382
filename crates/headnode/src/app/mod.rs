//! The headnode's logic, callable without HTTP.
//!
//! One file per resource. Functions take validated input, read what they need from the
//! store, decide with the pure rules in `nereid_types`, and write with conditional
//! batches. A read-modify-write that loses a race (a generation conflict) is retried
//! from the read a few times before the caller is told to retry.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nereid_store::{Cond, ListQuery, Store, StoreError};
use nereid_types::ApiError;
use nereid_types::damaged::Stored;
use serde::Serialize;
use serde::de::DeserializeOwned;

pub mod accounts;
pub mod agent_targets;
pub mod agents;
pub mod allocation;
pub mod audit;
pub mod capacity;
pub mod cns;
pub mod consoles;
pub mod doctor;
pub mod evacuate;
pub mod fabrics;
pub mod fwrules;
pub mod image_create;
pub mod image_files;
pub mod image_sources;
pub mod images;
pub mod ip_cache;
pub mod limits;
pub mod lists;
pub mod liveness;
pub mod migrations;
pub mod netpolicy;
pub mod network_pools;
pub mod networks;
pub mod nic_tags;
pub mod nics;
pub mod oneachnode;
pub mod packages;
pub mod passwords;
pub mod prom_sd;
pub mod servers;
pub mod snapshots;
pub mod tenant_ips;
pub mod vm_cache;
pub mod vm_metadata;
pub mod vm_nics;
pub mod vms;
pub mod wakeups;
pub mod zvol_import;

/// How many times a read-modify-write is retried after losing a race.
pub const RETRIES: usize = 8;

/// Timeouts and knobs of the headnode's logic.
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// Identity of this headnode (job leases name it).
    pub headnode_id: String,
    /// Silence after which a server's status is `unknown` (Triton: 11 s).
    pub server_timeout: Duration,
    /// How often servers' deferred liveness is written (see [`liveness`]).
    pub liveness_flush: Duration,
    /// A server's heartbeat is written whole, its inventory checked against the store, at
    /// least this often (the others may be deferred, see [`liveness`]).
    pub liveness_recheck: Duration,
    /// How long a job lease lasts without renewal.
    pub job_lease: Duration,
    /// Deadline of waits for a VM to start, stop or be deleted.
    pub step_deadline: Duration,
    /// Deadline of the wait for a new VM to run.
    pub provision_deadline: Duration,
    /// Placement tunables.
    pub alloc: nereid_alloc::Config,
    /// How often the reconciler compares records with the servers (zero: never).
    pub reconcile_every: Duration,
    /// Image files, if not `<data dir>/images`: several headnodes of one cluster share a
    /// path they all mount, so an image uploaded through one provisions through any.
    pub images_dir: Option<PathBuf>,
    /// Fabrics (tenants' overlay networks).
    pub fabric: FabricConfig,
    /// Migrations (between servers).
    pub migration: MigrationConfig,
    /// Instance DNS (`--dns-listen`); `None`: no DNS served, no `dns_names`.
    pub cns: Option<cns::CnsConfig>,
    /// How long audit records are kept (`--audit-retention-days`); `None`: forever.
    pub audit_retention: Option<Duration>,
}

/// How VMs move between servers.
#[derive(Debug, Clone)]
pub struct MigrationConfig {
    /// Whether tenants may migrate their own instances through CloudAPI (Triton's SAPI
    /// `user_migration_allowed`, off by default); a VM's `internal_metadata`
    /// `user_migration_allowed` overrides it either way. Operators always may.
    pub user_migration_allowed: bool,
    /// The data rate cap of every migration (megabits per second), unless an operator
    /// gives one; `None`: uncapped (Triton's `migration_send_mbps_limit`).
    pub bandwidth_mbps: Option<u64>,
    /// How many VMs an evacuation moves at once, unless asked otherwise.
    pub evacuate_concurrency: usize,
}

impl Default for MigrationConfig {
    fn default() -> Self {
        MigrationConfig { user_migration_allowed: false, bandwidth_mbps: None, evacuate_concurrency: 3 }
    }
}

/// How fabrics are carried and what new accounts get.
#[derive(Debug, Clone)]
pub struct FabricConfig {
    /// The nic tag whose links carry the VXLAN traffic between compute nodes (fabric
    /// MTU = its MTU − [`nereid_types::fabric::VXLAN_OVERHEAD`]).
    pub underlay_tag: String,
    /// Whether every new account gets a default fabric VLAN and network (Triton's
    /// `fabric_cfg` default VLAN).
    pub default_for_new_accounts: bool,
}

impl Default for FabricConfig {
    fn default() -> Self {
        FabricConfig { underlay_tag: nereid_types::fabric::DEFAULT_UNDERLAY_TAG.into(), default_for_new_accounts: false }
    }
}

impl Default for AppConfig {
    fn default() -> Self {
        AppConfig {
            headnode_id: "headnode".into(),
            server_timeout: Duration::from_secs(11),
            liveness_flush: liveness::FLUSH_EVERY,
            liveness_recheck: liveness::RECHECK_EVERY,
            job_lease: Duration::from_secs(30),
            step_deadline: Duration::from_secs(300),
            provision_deadline: Duration::from_secs(1800),
            alloc: nereid_alloc::Config { filter_headnode: false, ..Default::default() },
            reconcile_every: Duration::from_secs(60),
            images_dir: None,
            fabric: FabricConfig::default(),
            migration: MigrationConfig::default(),
            cns: None,
            audit_retention: Some(Duration::from_secs(audit::DEFAULT_RETENTION_DAYS * 86400)),
        }
    }
}

/// Everything the operator APIs work on.
pub struct App {
    pub store: Arc<dyn Store>,
    pub files: image_files::ImageFiles,
    /// Serialises IP allocation per network inside this process (the store's conditional
    /// writes keep several headnodes correct; the lock keeps one from fighting itself).
    pub network_locks: KeyedLocks,
    /// Which addresses of each network have records ([`ip_cache`]): claims read them once.
    pub ip_cache: ip_cache::IpCache,
    /// Per-VM locks of this process: a migration's begin and any other job queued on the
    /// VM cannot pass each other (keyed by the VM's UUID).
    pub vm_locks: KeyedLocks,
    pub cfg: AppConfig,
    pub agents: agents::Agents,
    /// Serialises placement in this process (conditional claims keep several headnodes correct).
    pub alloc_lock: tokio::sync::Mutex<()>,
    /// Placement's view of every server, kept between decisions.
    pub capacity: capacity::Capacity,
    /// Wakes the job runner when a job is queued.
    pub jobs_notify: tokio::sync::Notify,
    /// Wakes the network policy push ([`netpolicy::run`]): firewall rules changed, a
    /// job (provision, destroy, tags, firewall_enabled) finished.
    pub netpolicy_notify: tokio::sync::Notify,
    /// Wakes the CNS zone builder ([`cns::run`]): a job finished, a VM record or an
    /// account changed.
    pub cns_notify: tokio::sync::Notify,
    /// The servers whose evacuation a task of this process drives.
    pub evacuations: std::sync::Mutex<std::collections::HashSet<uuid::Uuid>>,
    pub hooks: crate::jobs::Hooks,
    pub metrics: crate::metrics::Metrics,
    /// Servers' inventories as last read or written here (heartbeats; see [`servers::HeldInventories`]).
    pub held_inventories: servers::HeldInventories,
    /// Servers' liveness waiting to be written, and their verified keys (see [`liveness`]).
    pub liveness: liveness::Liveness,
    /// The nic tags' MTUs answered to heartbeats, recomputed every few seconds.
    pub mtus: servers::inventories::MtuCache,
    /// Rendered JSON of listed objects, by version ([`lists`]).
    pub renders: lists::RenderCache,
    /// Decoded VM records, by version, for placement ([`vm_cache`]).
    pub vm_cache: vm_cache::VmCache,
    /// The audit log's write-failure count ([`audit`]).
    pub audit: audit::AuditState,
    /// Waiters for a job's end ([`wakeups`]; woken by the job runner).
    pub job_waits: wakeups::Wakeups,
    /// Waiters for a VM's state on its server ([`wakeups`]; woken by the server's reports,
    /// each carrying the report and its server once this headnode applied it).
    pub vm_reports: wakeups::Wakeups<(uuid::Uuid, nereid_types::agent::VmStatus)>,
}

impl App {
    /// Sets up buckets and the image file area under `data_dir`.
    pub async fn new(store: Arc<dyn Store>, data_dir: PathBuf, cfg: AppConfig) -> anyhow::Result<Self> {
        for b in crate::buckets::ALL {
            store.ensure_bucket(b).await?;
        }
        let files = image_files::ImageFiles::open_as(cfg.images_dir.clone().unwrap_or_else(|| data_dir.join("images")), &cfg.headnode_id)?;
        let hooks = crate::jobs::Hooks::from_env(&data_dir);
        Ok(Self {
            // Writes made inside a job step are fenced by the step's lease.
            store: Arc::new(crate::fence::FencedStore(store)),
            files,
            network_locks: KeyedLocks::default(),
            ip_cache: ip_cache::IpCache::default(),
            vm_locks: KeyedLocks::default(),
            cfg,
            agents: agents::Agents::default(),
            alloc_lock: tokio::sync::Mutex::new(()),
            capacity: capacity::Capacity::default(),
            jobs_notify: tokio::sync::Notify::new(),
            netpolicy_notify: tokio::sync::Notify::new(),
            cns_notify: tokio::sync::Notify::new(),
            evacuations: Default::default(),
            hooks,
            metrics: crate::metrics::Metrics::default(),
            held_inventories: servers::HeldInventories::default(),
            liveness: liveness::Liveness::default(),
            mtus: servers::inventories::MtuCache::default(),
            renders: lists::RenderCache::default(),
            vm_cache: vm_cache::VmCache::default(),
            audit: audit::AuditState::default(),
            job_waits: wakeups::Wakeups::default(),
            vm_reports: wakeups::Wakeups::default(),
        })
    }

    /// Reads and decodes one object.
    pub async fn read<T: DeserializeOwned>(&self, bucket: &str, key: &str) -> Result<Option<(T, i64)>, ApiError> {
        match self.store.get(bucket, key).await.map_err(store_error)? {
            None => Ok(None),
            Some(o) => Ok(Some((decode(bucket, &o.key, o.value)?, o.generation))),
        }
    }

    /// Lists and decodes objects. One that does not decode is left out (and logged): one
    /// damaged record never fails a list for everyone. Paths that must show damaged
    /// records (VMAPI, placement, `doctor`) use [`list_entries`](Self::list_entries).
    pub async fn list<T: DeserializeOwned>(&self, bucket: &str, q: &ListQuery) -> Result<Vec<T>, ApiError> {
        Ok(self
            .list_entries(bucket, q)
            .await?
            .into_iter()
            .filter_map(|e| match e {
                Stored::Ok(t) => Some(t),
                Stored::Damaged(d) => {
                    tracing::error!(bucket, key = %d.key, error = %d.error, "left a damaged record out of a list");
                    None
                }
            })
            .collect())
    }

    /// Lists objects, each decoded on its own: damaged ones come back as such.
    pub async fn list_entries<T: DeserializeOwned>(&self, bucket: &str, q: &ListQuery) -> Result<Vec<Stored<T>>, ApiError> {
        let objs = self.store.list(bucket, q).await.map_err(store_error)?;
        Ok(objs.into_iter().map(|o| nereid_types::damaged::decode(bucket, &o.key, o.value)).collect())
    }

    /// Reads one object, damaged or not, with its generation.
    pub async fn read_entry<T: DeserializeOwned>(&self, bucket: &str, key: &str) -> Result<Option<(Stored<T>, i64)>, ApiError> {
        Ok(self
            .store
            .get(bucket, key)
            .await
            .map_err(store_error)?
            .map(|o| (nereid_types::damaged::decode(bucket, &o.key, o.value), o.generation)))
    }

    /// Writes one object.
    pub async fn write<T: Serialize>(&self, bucket: &str, key: &str, value: &T, cond: Cond) -> Result<i64, StoreError> {
        self.store.put(bucket, key, encode(value), cond).await
    }
}

/// Serializes a record for the store.
pub fn encode<T: Serialize>(value: &T) -> serde_json::Value {
    // Records are plain data structs; serializing them cannot fail.
    serde_json::to_value(value).unwrap_or(serde_json::Value::Null)
}

fn decode<T: DeserializeOwned>(bucket: &str, key: &str, v: serde_json::Value) -> Result<T, ApiError> {
    serde_json::from_value(v).map_err(|e| damaged(bucket, key, e))
}

/// [`decode`] of a record's JSON text.
fn decode_str<T: DeserializeOwned>(bucket: &str, key: &str, json: &str) -> Result<T, ApiError> {
    serde_json::from_str(json).map_err(|e| damaged(bucket, key, e))
}

/// A stored record that does not decode: logged, and refused as `DamagedRecord`.
fn damaged(bucket: &str, key: &str, e: serde_json::Error) -> ApiError {
    tracing::error!(bucket, key, error = %e, "stored object does not decode");
    ApiError::conflict("DamagedRecord", format!("stored {bucket} record {key} is damaged ({e}); an operator must repair or remove it"))
}

/// Maps a store failure that the caller did not handle itself.
pub fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::Conflict { .. } => {
            ApiError::conflict("ConcurrentModification", format!("{e}; another request changed it first, retry"))
        }
        StoreError::InvalidFilter(m) => ApiError::bad_request(format!("invalid filter: {m}")),
        other => {
            tracing::error!(error = %other, "store failure");
            ApiError::unavailable("the state store is unavailable; see the headnode log")
        }
    }
}

/// The filter for a `tag.<key>=<value>` query parameter: the value as a string, or as the
/// number or boolean it spells (tags keep their JSON types); `*` matches any value.
pub fn tag_filter(param: &str, value: &str) -> Result<nereid_store::Filter, nereid_types::FieldError> {
    use nereid_store::{Filter, Path};
    use serde_json::json;
    let key = param.strip_prefix("tag.").unwrap_or(param);
    if key.contains(['"', '\'', '\\', '{', '}', ',']) {
        return Err(nereid_types::FieldError::invalid(param, "tag names may not contain quotes, braces, commas or backslashes"));
    }
    let path = Path::keys(&["tags", key]);
    if value == "*" {
        return Ok(Filter::Present(path));
    }
    let mut alts = vec![Filter::Eq(path.clone(), json!(value))];
    if let Ok(n) = value.parse::<i64>() {
        alts.push(Filter::Eq(path.clone(), json!(n)));
    }
    if let Ok(b) = value.parse::<bool>() {
        alts.push(Filter::Eq(path, json!(b)));
    }
    Ok(Filter::Or(alts))
}

/// Per-key async mutexes, created on demand.
#[derive(Default)]
pub struct KeyedLocks {
    map: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl KeyedLocks {
    pub async fn lock(&self, key: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let m = {
            let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            if map.len() > 1024 {
                map.retain(|_, m| Arc::strong_count(m) > 1);
            }
            map.entry(key.to_string()).or_default().clone()
        };
        m.lock_owned().await
    }
}
