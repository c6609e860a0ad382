//! The store buckets the headnode uses and the fields each is queried by.

use nereid_store::{BucketDef, Index, Kind};

const fn text(path: &'static [&'static str]) -> Index {
    Index { path, kind: Kind::Text }
}
const fn num(path: &'static [&'static str]) -> Index {
    Index { path, kind: Kind::Number }
}

/// PAPI packages, keyed by UUID.
pub const PACKAGES: BucketDef =
    BucketDef { name: "packages", indexes: &[text(&["name"]), text(&["version"]), num(&["active"]), num(&["max_physical_memory"])] };
/// IMGAPI images, keyed by UUID; indexed on the fields ListImages filters and sorts by.
pub const IMAGES: BucketDef = BucketDef {
    name: "images",
    indexes: &[
        text(&["owner"]),
        text(&["state"]),
        text(&["name"]),
        text(&["published_at"]),
        text(&["origin"]),
        text(&["os"]),
        text(&["type"]),
    ],
};
/// Image sources (other IMGAPIs to import from), keyed by their URL (with `?channel=`).
pub const IMAGE_SOURCES: BucketDef = BucketDef { name: "image_sources", indexes: &[] };
/// Imports from image sources and how far they got, keyed by the image UUID asked for.
pub const IMAGE_IMPORTS: BucketDef = BucketDef { name: "image_imports", indexes: &[] };
/// NAPI nic tags, keyed by name.
pub const NIC_TAGS: BucketDef = BucketDef { name: "nic_tags", indexes: &[] };
/// NAPI networks, keyed by UUID.
pub const NETWORKS: BucketDef = BucketDef { name: "networks", indexes: &[text(&["name"]), text(&["nic_tag"])] };
/// NAPI network pools, keyed by UUID.
pub const NETWORK_POOLS: BucketDef = BucketDef { name: "network_pools", indexes: &[text(&["name"])] };
/// Names shared by networks and pools (a VM's `networks: [{name}]` may name either), keyed by name.
pub const NETWORK_NAMES: BucketDef = BucketDef { name: "network_names", indexes: &[] };
/// NAPI NICs, keyed by MAC as 12 hex digits.
pub const NICS: BucketDef =
    BucketDef { name: "nics", indexes: &[text(&["belongs_to_uuid"]), text(&["network_uuid"]), text(&["owner_uuid"])] };
/// NAPI IP records, keyed by `<network uuid>/<address as a 10-digit number>` so a
/// network's addresses list in numeric order.
pub const IPS: BucketDef = BucketDef { name: "ips", indexes: &[text(&["network_uuid"]), text(&["belongs_to_uuid"])] };
/// Fabric VLANs, keyed by `<owner uuid>/<vlan id, 4 digits>`.
pub const FABRIC_VLANS: BucketDef = BucketDef { name: "fabric_vlans", indexes: &[text(&["owner_uuid"]), num(&["vlan_id"])] };
/// VXLAN segment claims (one per fabric VLAN, unique in the cloud), keyed by the VNI
/// (8 digits); the value names the VLAN.
pub const FABRIC_VNIS: BucketDef = BucketDef { name: "fabric_vnis", indexes: &[] };
/// Fabric network name claims (unique per account), keyed by `<owner uuid>/<name>`; and
/// each account's fabric stamp `<owner uuid>/`, rewritten with every fabric network
/// change so two headnodes cannot both pass the overlap check.
pub const FABRIC_NETWORK_NAMES: BucketDef = BucketDef { name: "fabric_network_names", indexes: &[] };

/// CNAPI servers, keyed by UUID.
pub const SERVERS: BucketDef = BucketDef { name: "servers", indexes: &[text(&["hostname"])] };
/// Each server's trust record (its pinned public key, revoked, a join waiting for
/// approval), keyed by server UUID (never rendered).
pub const SERVER_SECRETS: BucketDef = BucketDef { name: "server_secrets", indexes: &[] };
/// Every headnode's join token (SHA-256), keyed by headnode id: a compute node may join
/// with the token of any headnode of the cluster.
pub const JOIN_TOKENS: BucketDef = BucketDef { name: "join_tokens", indexes: &[] };
/// The cluster's agent CA (certificate and key), key `ca`: made once by whichever headnode
/// starts first (a conditional create), shared by all (see `pki`).
pub const AGENT_CA: BucketDef = BucketDef { name: "agent_ca", indexes: &[] };
/// The last heartbeat of each server (time, usage, VM inventory), keyed by server UUID.
pub const HEARTBEATS: BucketDef = BucketDef { name: "heartbeats", indexes: &[] };
/// Capacity claims: bumped in the same transaction as every placement on a server, so two
/// placements decided from the same view of it cannot both commit. Keyed by server UUID.
pub const SERVER_CLAIMS: BucketDef = BucketDef { name: "server_claims", indexes: &[] };
/// Capacity held for in-flight provisions and resizes, keyed by job UUID.
/// Each server's last reported VM inventory (the `vms` of its heartbeats), written only
/// when it changes; keyed by server UUID.
pub const INVENTORIES: BucketDef = BucketDef { name: "inventories", indexes: &[] };
pub const RESERVATIONS: BucketDef =
    BucketDef { name: "reservations", indexes: &[text(&["server_uuid"]), text(&["vm_uuid"]), text(&["owner_uuid"])] };
/// VMAPI's migration records (`vmapi_vm_migrations`), keyed by migration id.
pub const MIGRATIONS: BucketDef = BucketDef {
    name: "migrations",
    indexes: &[
        text(&["vm_uuid"]),
        text(&["owner_uuid"]),
        text(&["state"]),
        text(&["source_server_uuid"]),
        text(&["target_server_uuid"]),
        text(&["created_timestamp"]),
    ],
};
/// Server evacuations (`nereid admin server evacuate`), keyed by server UUID.
pub const EVACUATIONS: BucketDef = BucketDef { name: "evacuations", indexes: &[] };
/// VMAPI VMs, keyed by UUID; indexed on the fields ListVms and ListMachines filter and
/// sort by (tags are not: a tag filter narrows an owner's VMs).
pub const VMS: BucketDef = BucketDef {
    name: "vms",
    indexes: &[
        text(&["owner_uuid"]),
        text(&["server_uuid"]),
        text(&["state"]),
        text(&["alias"]),
        text(&["create_timestamp"]),
        text(&["image_uuid"]),
        text(&["brand"]),
        text(&["billing_id"]),
    ],
};
/// Jobs, keyed by UUID.
pub const JOBS: BucketDef = BucketDef { name: "jobs", indexes: &[text(&["vm_uuid"]), text(&["execution"]), num(&["created_ms"])] };
/// Who runs a job, until when; keyed by job UUID.
pub const JOB_LEASES: BucketDef = BucketDef { name: "job_leases", indexes: &[] };

/// Accounts (UFDS), keyed by UUID.
pub const ACCOUNTS: BucketDef = BucketDef { name: "accounts", indexes: &[text(&["login"]), text(&["email"])] };
/// Login claims (unique logins), keyed by login; the value names the account.
pub const ACCOUNT_LOGINS: BucketDef = BucketDef { name: "account_logins", indexes: &[] };
/// Accounts' SSH keys, keyed by `<account uuid>/<MD5 fingerprint>`.
pub const ACCOUNT_KEYS: BucketDef = BucketDef { name: "account_keys", indexes: &[text(&["account_uuid"]), text(&["name"])] };
/// Key name claims (unique per account), keyed by `<account uuid>/<name>`.
pub const ACCOUNT_KEY_NAMES: BucketDef = BucketDef { name: "account_key_names", indexes: &[] };
/// Accounts' password hashes (argon2id, PHC strings), by account UUID: apart from the
/// account record, so no rendering of an account can carry one.
pub const ACCOUNT_PASSWORDS: BucketDef = BucketDef { name: "account_passwords", indexes: &[] };

/// FWAPI firewall rules, keyed by UUID (global rules have no `owner_uuid`).
pub const FWRULES: BucketDef = BucketDef { name: "fwrules", indexes: &[text(&["owner_uuid"])] };

/// The web console's sessions, by the SHA-256 of their cookie token (the token itself is
/// never stored): account, CSRF token, times.
pub const WEB_SESSIONS: BucketDef = BucketDef { name: "web_sessions", indexes: &[] };

/// The audit log (see `app::audit`), keyed by record id (time-ordered); append-only.
pub const AUDIT: BucketDef = BucketDef { name: "audit", indexes: &[text(&["id"]), text(&["account"])] };

/// Provisioning limits (see `app::limits`), keyed by `<account uuid>/<limit id>`; and each account's usage stamp, keyed by account UUID, rewritten with every limited provision.
pub const ACCOUNT_LIMITS: BucketDef = BucketDef { name: "account_limits", indexes: &[text(&["account_uuid"])] };
pub const ACCOUNT_USAGE: BucketDef = BucketDef { name: "account_usage", indexes: &[] };

pub const ALL: &[BucketDef] = &[
    ACCOUNTS,
    ACCOUNT_LOGINS,
    ACCOUNT_KEYS,
    ACCOUNT_KEY_NAMES,
    ACCOUNT_PASSWORDS,
    WEB_SESSIONS,
    PACKAGES,
    IMAGES,
    IMAGE_SOURCES,
    IMAGE_IMPORTS,
    NIC_TAGS,
    NETWORKS,
    NETWORK_POOLS,
    NETWORK_NAMES,
    FABRIC_VLANS,
    FABRIC_VNIS,
    FABRIC_NETWORK_NAMES,
    NICS,
    IPS,
    SERVERS,
    SERVER_SECRETS,
    JOIN_TOKENS,
    AGENT_CA,
    HEARTBEATS,
    SERVER_CLAIMS,
    RESERVATIONS,
    INVENTORIES,
    MIGRATIONS,
    EVACUATIONS,
    VMS,
    JOBS,
    JOB_LEASES,
    FWRULES,
    AUDIT,
    ACCOUNT_LIMITS,
    ACCOUNT_USAGE,
];
