//! Per-VM metrics on the agent's `/metrics`: each VM's state, configured size, and — while
//! it runs — its CPU time, memory, disk and network I/O, labelled `server`, `vm_uuid`,
//! `owner_uuid` and `alias`.
//!
//! ```text
//!   scrape → collect: every VM of every server at once, each backend read bounded by
//!            STATS_TIMEOUT (QEMU: /proc/<pid>/stat and status, one QMP query-blockstats,
//!            /sys/class/net/<tap>/statistics; sim: synthetic zeros)
//!          → render (pure): the families, one after another
//! ```
//! Read at scrape time, never by the heartbeat. A VM whose counters cannot be read (QEMU
//! busy, gone between the list and the read) keeps its state series, loses its counters
//! for this scrape and counts in `nereid_vm_stats_errors_total`. Network counters are the
//! guest's view: what the host's tap transmits the guest receives.

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nereid_types::agent::{Definition, VmStatus};
use uuid::Uuid;

/// How long one VM's counters may take to read.
pub const STATS_TIMEOUT: Duration = Duration::from_secs(2);

/// Reads of VM counters that failed or timed out, since the agent started.
static ERRORS: AtomicU64 = AtomicU64::new(0);

/// A running VM's resource counters as its backend reads them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counters {
    /// User + system CPU time of the VM's process, seconds.
    pub cpu_seconds: f64,
    /// Resident memory of the VM's process, bytes.
    pub rss_bytes: u64,
    pub disks: Vec<DiskIo>,
    pub nics: Vec<NicIo>,
}

/// One disk's I/O since the VM started.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DiskIo {
    /// The backend's name for it (QEMU: the drive id, `disk0`, …).
    pub device: String,
    pub read_bytes: u64,
    pub written_bytes: u64,
    pub reads: u64,
    pub writes: u64,
}

/// One NIC's traffic as the guest sees it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NicIo {
    /// `net0`, `net1`, … by NIC index.
    pub nic: String,
    pub receive_bytes: u64,
    pub transmit_bytes: u64,
    pub receive_packets: u64,
    pub transmit_packets: u64,
}

/// One VM as `/metrics` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub server: Uuid,
    pub vm: Uuid,
    pub owner: Option<Uuid>,
    pub alias: Option<String>,
    pub state: String,
    pub ram_bytes: Option<u64>,
    pub vcpus: Option<u32>,
    /// Its counters; `None` while it does not run or when they could not be read.
    pub counters: Option<Counters>,
}

/// The per-VM families of `nodes`, read now (what the agent's `/metrics` appends).
pub async fn exposition(nodes: &[Arc<crate::NodeRuntime>]) -> String {
    let synthetic = nodes.iter().any(|n| n.node.backend().name() == "sim");
    render(&collect(nodes).await, errors(), synthetic)
}

/// Every VM of `nodes` with its counters, read at once (bounded by [`STATS_TIMEOUT`] each).
pub async fn collect(nodes: &[Arc<crate::NodeRuntime>]) -> Vec<Sample> {
    let mut reads = Vec::new();
    for n in nodes {
        for (status, def) in n.node.list_defined() {
            let backend = n.node.backend().clone();
            let server = n.uuid;
            reads.push(async move {
                let counters = match (&def, status.state.as_str()) {
                    (Some(def), "running") => read(backend.as_ref(), def).await,
                    _ => None,
                };
                sample(server, &status, def.as_ref(), counters)
            });
        }
    }
    let mut out = futures_util::future::join_all(reads).await;
    out.sort_by_key(|s| (s.server, s.vm));
    out
}

async fn read(backend: &dyn crate::backend::Backend, def: &Definition) -> Option<Counters> {
    match tokio::time::timeout(STATS_TIMEOUT, backend.vm_counters(def)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            ERRORS.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(vm = %def.uuid, error = %e, "reading the VM's counters failed");
            None
        }
        Err(_) => {
            ERRORS.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(vm = %def.uuid, "reading the VM's counters took longer than {STATS_TIMEOUT:?}");
            None
        }
    }
}

/// One VM's [`Sample`] from its status and definition.
pub fn sample(server: Uuid, status: &VmStatus, def: Option<&Definition>, counters: Option<Counters>) -> Sample {
    Sample {
        server,
        vm: status.uuid,
        owner: status.owner_uuid.or(def.map(|d| d.owner_uuid)),
        alias: def.and_then(|d| d.alias.clone()),
        state: status.state.clone(),
        ram_bytes: status.ram.or(def.map(|d| d.ram)).map(|mib| mib << 20),
        vcpus: status.vcpus.or(def.map(|d| d.vcpus)),
        counters,
    }
}

/// Failed counter reads so far (for [`render`]).
pub fn errors() -> u64 {
    ERRORS.load(Ordering::Relaxed)
}

/// A Prometheus label value: backslash, double quote and newline escaped.
pub fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn labels(s: &Sample) -> String {
    format!(
        "server=\"{}\",vm_uuid=\"{}\",owner_uuid=\"{}\",alias=\"{}\"",
        s.server,
        s.vm,
        s.owner.map(|o| o.to_string()).unwrap_or_default(),
        escape(s.alias.as_deref().unwrap_or(""))
    )
}

/// The per-VM families (Prometheus text). `synthetic`: the counters are a simulated
/// backend's (said in their HELP).
pub fn render(samples: &[Sample], errors: u64, synthetic: bool) -> String {
    let mut out = String::new();
    let sim = if synthetic { " Synthetic on simulated servers (zero)." } else { "" };
    let family = |out: &mut String, name: &str, kind: &str, help: &str, lines: Vec<String>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for l in lines {
            let _ = writeln!(out, "{name}{l}");
        }
    };
    family(
        &mut out,
        "nereid_vm_running",
        "gauge",
        "1 while the VM runs, 0 otherwise; its state in the state label.",
        samples.iter().map(|s| format!("{{{},state=\"{}\"}} {}", labels(s), escape(&s.state), u8::from(s.state == "running"))).collect(),
    );
    family(
        &mut out,
        "nereid_vm_memory_configured_bytes",
        "gauge",
        "RAM the VM is given.",
        samples.iter().filter_map(|s| Some(format!("{{{}}} {}", labels(s), s.ram_bytes?))).collect(),
    );
    family(
        &mut out,
        "nereid_vm_vcpus",
        "gauge",
        "Virtual CPUs the VM is given.",
        samples.iter().filter_map(|s| Some(format!("{{{}}} {}", labels(s), s.vcpus?))).collect(),
    );
    let running: Vec<(&Sample, &Counters)> = samples.iter().filter_map(|s| Some((s, s.counters.as_ref()?))).collect();
    family(
        &mut out,
        "nereid_vm_cpu_seconds_total",
        "counter",
        &format!("CPU time (user + system) of the running VM's process.{sim}"),
        running.iter().map(|(s, c)| format!("{{{}}} {}", labels(s), c.cpu_seconds)).collect(),
    );
    family(
        &mut out,
        "nereid_vm_memory_rss_bytes",
        "gauge",
        &format!(
            "Resident memory of the running VM's process.{}",
            if synthetic { " The configured RAM on simulated servers." } else { "" }
        ),
        running.iter().map(|(s, c)| format!("{{{}}} {}", labels(s), c.rss_bytes)).collect(),
    );
    type DiskGet = fn(&DiskIo) -> u64;
    let disk: [(&str, &str, DiskGet); 4] = [
        ("nereid_vm_disk_read_bytes_total", "Bytes the guest read from the disk.", |d| d.read_bytes),
        ("nereid_vm_disk_written_bytes_total", "Bytes the guest wrote to the disk.", |d| d.written_bytes),
        ("nereid_vm_disk_reads_total", "Read operations of the guest on the disk.", |d| d.reads),
        ("nereid_vm_disk_writes_total", "Write operations of the guest on the disk.", |d| d.writes),
    ];
    for (name, help, get) in disk {
        let lines = running
            .iter()
            .flat_map(|(s, c)| c.disks.iter().map(move |d| format!("{{{},device=\"{}\"}} {}", labels(s), escape(&d.device), get(d))))
            .collect();
        family(&mut out, name, "counter", &format!("{help}{sim}"), lines);
    }
    type NicGet = fn(&NicIo) -> u64;
    let net: [(&str, &str, NicGet); 4] = [
        ("nereid_vm_network_receive_bytes_total", "Bytes the guest received on the NIC.", |n| n.receive_bytes),
        ("nereid_vm_network_transmit_bytes_total", "Bytes the guest sent on the NIC.", |n| n.transmit_bytes),
        ("nereid_vm_network_receive_packets_total", "Packets the guest received on the NIC.", |n| n.receive_packets),
        ("nereid_vm_network_transmit_packets_total", "Packets the guest sent on the NIC.", |n| n.transmit_packets),
    ];
    for (name, help, get) in net {
        let lines = running
            .iter()
            .flat_map(|(s, c)| c.nics.iter().map(move |n| format!("{{{},nic=\"{}\"}} {}", labels(s), escape(&n.nic), get(n))))
            .collect();
        family(&mut out, name, "counter", &format!("{help}{sim}"), lines);
    }
    family(
        &mut out,
        "nereid_vm_stats_errors_total",
        "counter",
        "Reads of a running VM's counters that failed or timed out (that VM's counters were left out of the scrape).",
        vec![format!(" {errors}")],
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(state: &str, alias: &str, counters: Option<Counters>) -> Sample {
        Sample {
            server: Uuid::nil(),
            vm: Uuid::from_u128(7),
            owner: Some(Uuid::from_u128(9)),
            alias: Some(alias.into()),
            state: state.into(),
            ram_bytes: Some(512 << 20),
            vcpus: Some(2),
            counters,
        }
    }

    #[test]
    fn renders_every_family_with_escaped_labels() {
        let c = Counters {
            cpu_seconds: 1.5,
            rss_bytes: 4096,
            disks: vec![DiskIo { device: "disk0".into(), read_bytes: 10, written_bytes: 20, reads: 1, writes: 2 }],
            nics: vec![NicIo { nic: "net0".into(), receive_bytes: 5, transmit_bytes: 6, receive_packets: 7, transmit_packets: 8 }],
        };
        let text = render(&[vm("running", "a\"b\\c\nd", Some(c))], 3, false);
        let l = format!(
            "server=\"{}\",vm_uuid=\"{}\",owner_uuid=\"{}\",alias=\"a\\\"b\\\\c\\nd\"",
            Uuid::nil(),
            Uuid::from_u128(7),
            Uuid::from_u128(9)
        );
        for want in [
            format!("nereid_vm_running{{{l},state=\"running\"}} 1"),
            format!("nereid_vm_memory_configured_bytes{{{l}}} 536870912"),
            format!("nereid_vm_vcpus{{{l}}} 2"),
            format!("nereid_vm_cpu_seconds_total{{{l}}} 1.5"),
            format!("nereid_vm_memory_rss_bytes{{{l}}} 4096"),
            format!("nereid_vm_disk_read_bytes_total{{{l},device=\"disk0\"}} 10"),
            format!("nereid_vm_disk_written_bytes_total{{{l},device=\"disk0\"}} 20"),
            format!("nereid_vm_disk_reads_total{{{l},device=\"disk0\"}} 1"),
            format!("nereid_vm_disk_writes_total{{{l},device=\"disk0\"}} 2"),
            format!("nereid_vm_network_receive_bytes_total{{{l},nic=\"net0\"}} 5"),
            format!("nereid_vm_network_transmit_bytes_total{{{l},nic=\"net0\"}} 6"),
            format!("nereid_vm_network_receive_packets_total{{{l},nic=\"net0\"}} 7"),
            format!("nereid_vm_network_transmit_packets_total{{{l},nic=\"net0\"}} 8"),
            "nereid_vm_stats_errors_total 3".to_string(),
        ] {
            assert!(text.contains(&format!("{want}\n")), "{want} missing from\n{text}");
        }
        assert!(!text.contains("Synthetic"), "real counters are not called synthetic");
        // Debian's promtool (scripts/test installs it): no problem, lint included.
        assert_eq!(crate::metrics::promtool_problems(&text), "", "{text}");
    }

    #[test]
    fn a_vm_without_counters_keeps_its_state_but_no_counter_series() {
        let text = render(&[vm("stopped", "x", None)], 0, true);
        assert!(text.contains("state=\"stopped\"} 0\n"), "{text}");
        assert!(text.contains("Synthetic on simulated servers"), "{text}");
        for name in ["nereid_vm_cpu_seconds_total{", "nereid_vm_memory_rss_bytes{", "nereid_vm_disk_reads_total{", "nereid_vm_network_"] {
            assert!(!text.lines().any(|l| l.starts_with(name)), "{name} has a sample for a stopped VM:\n{text}");
        }
    }

    #[test]
    fn the_sample_takes_owner_alias_and_size_from_the_definition() {
        let mut status = VmStatus::new(Uuid::from_u128(7), "running", 1);
        status.ram = None;
        let def: Definition = serde_json::from_value(serde_json::json!({
            "uuid": Uuid::from_u128(7), "owner_uuid": Uuid::from_u128(9), "alias": "web", "ram": 256, "vcpus": 1,
            "brand": "kvm", "disks": [], "nics": []
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        let s = sample(Uuid::nil(), &status, Some(&def), None);
        assert_eq!((s.owner, s.alias.as_deref(), s.ram_bytes, s.vcpus), (Some(Uuid::from_u128(9)), Some("web"), Some(256 << 20), Some(1)));
    }
}
