//! A running guest's counters for `/metrics` ([`crate::vm_stats`]): CPU time and resident
//! memory of its QEMU process (`/proc/<pid>/stat`, `/proc/<pid>/status`), each drive's
//! I/O (one QMP `query-blockstats`) and each tap's traffic (`/sys/class/net/<tap>/
//! statistics`, turned round: what the host's tap transmits the guest receives).

use std::path::Path;

use nereid_types::agent::Definition;
use serde_json::Value;

use super::{Qemu, qmp};
use crate::backend::BackendError;
use crate::vm_stats::{Counters, DiskIo, NicIo};

/// Clock ticks per second in `/proc/<pid>/stat`: Linux reports USER_HZ, 100 on every
/// architecture it exports to user space (sysconf(_SC_CLK_TCK) says the same).
const USER_HZ: f64 = 100.0;

impl Qemu {
    /// The counters of the running VM `def`; `None` when it does not run.
    pub(super) async fn counters(&self, def: &Definition) -> Result<Option<Counters>, BackendError> {
        let Some(pid) = self.pid(def.uuid) else { return Ok(None) };
        let err = |e: String| BackendError(e);
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| err(format!("/proc/{pid}/stat: {e}")))?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| err(format!("/proc/{pid}/status: {e}")))?;
        let ticks = cpu_ticks(&stat).ok_or_else(|| err(format!("/proc/{pid}/stat: no utime/stime in {stat:?}")))?;
        let blockstats = qmp::execute(&self.layout(def.uuid).qmp(), "query-blockstats", None).await.map_err(err)?;
        let nics = (0..def.nics.len())
            .filter_map(|i| {
                let dir = Path::new("/sys/class/net").join(crate::net::tap_name(def.uuid, i)).join("statistics");
                dir.exists().then(|| tap_io(&dir, i))
            })
            .collect();
        Ok(Some(Counters {
            cpu_seconds: ticks as f64 / USER_HZ,
            rss_bytes: rss_bytes(&status).unwrap_or(0),
            disks: block_io(&blockstats),
            nics,
        }))
    }
}

/// utime + stime (clock ticks) from `/proc/<pid>/stat` (fields 14 and 15; the command in
/// field 2 may hold spaces and parentheses, so fields are counted after its last `)`).
pub fn cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14 → index 11.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// VmRSS from `/proc/<pid>/status`, bytes.
pub fn rss_bytes(status: &str) -> Option<u64> {
    let kb: u64 = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse().ok()?;
    Some(kb * 1024)
}

/// Each drive of a `query-blockstats` answer (named by its `-drive id`, else its qdev or node).
pub fn block_io(answer: &Value) -> Vec<DiskIo> {
    let n = |s: &Value, k: &str| s.get(k).and_then(Value::as_u64).unwrap_or(0);
    answer
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| {
            let name = ["device", "qdev", "node-name"].iter().find_map(|k| d.get(*k).and_then(Value::as_str).filter(|s| !s.is_empty()))?;
            let s = d.get("stats")?;
            Some(DiskIo {
                device: name.to_string(),
                read_bytes: n(s, "rd_bytes"),
                written_bytes: n(s, "wr_bytes"),
                reads: n(s, "rd_operations"),
                writes: n(s, "wr_operations"),
            })
        })
        .collect()
}

/// NIC `i`'s traffic from its tap's statistics directory, as the guest sees it.
fn tap_io(dir: &Path, i: usize) -> NicIo {
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
    NicIo {
        nic: format!("net{i}"),
        receive_bytes: read("tx_bytes"),
        transmit_bytes: read("rx_bytes"),
        receive_packets: read("tx_packets"),
        transmit_packets: read("rx_packets"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_proc_and_qmp_answers() {
        let stat = "4242 (qemu (x) y) S 1 4242 4242 0 -1 4194560 5000 0 0 0 250 50 0 0 20 0 5 0 100 0 0";
        assert_eq!(cpu_ticks(stat), Some(300));
        assert_eq!(cpu_ticks("garbage"), None);
        assert_eq!(rss_bytes("Name:\tqemu\nVmRSS:\t  123456 kB\n"), Some(123456 * 1024));
        let answer = serde_json::json!([
            {"device": "disk0", "qdev": "/machine/peripheral-anon/device[1]/virtio-backend", "stats": {"rd_bytes": 1000, "wr_bytes": 2000, "rd_operations": 3, "wr_operations": 4}},
            {"device": "", "node-name": "#block123", "stats": {"rd_bytes": 5}},
            {"device": "", "stats": {}}
        ]);
        assert_eq!(
            block_io(&answer),
            vec![
                DiskIo { device: "disk0".into(), read_bytes: 1000, written_bytes: 2000, reads: 3, writes: 4 },
                DiskIo { device: "#block123".into(), read_bytes: 5, ..Default::default() },
            ]
        );
    }

    #[test]
    fn a_taps_transmit_is_the_guests_receive() {
        let d = tempfile::tempdir().unwrap();
        for (f, v) in [("rx_bytes", 1), ("tx_bytes", 2), ("rx_packets", 3), ("tx_packets", 4)] {
            std::fs::write(d.path().join(f), format!("{v}\n")).unwrap();
        }
        assert_eq!(
            tap_io(d.path(), 1),
            NicIo { nic: "net1".into(), receive_bytes: 2, transmit_bytes: 1, receive_packets: 4, transmit_packets: 3 }
        );
    }
}
