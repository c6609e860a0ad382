//! Per-VM metrics of a real guest (issue 17 item 7), checked inside a booted-guest test
//! rather than booting one more: the QEMU agent's `/metrics` (called as the headnode calls
//! agents, mutual TLS) has the running VM's CPU, memory, disk and — when it has a tap —
//! network series, its CPU seconds above zero, and promtool finds no problem in it.

use nereid_agent::metrics::promtool_problems;
use nereid_testkit::Cloud;
use serde_json::Value;
use uuid::Uuid;

/// The value of the one sample of `family` for `vm` (with `extra` in its labels).
fn value(text: &str, family: &str, vm: &str, extra: &str) -> f64 {
    let l = text
        .lines()
        .find(|l| l.starts_with(&format!("{family}{{")) && l.contains(&format!("vm_uuid=\"{vm}\"")) && l.contains(extra))
        .unwrap_or_else(|| panic!("no {family} sample for VM {vm} ({extra}):\n{text}"));
    l.rsplit_once(' ').unwrap().1.parse().unwrap()
}

/// Asserts the running guest `v` (its VMAPI object) has its series on its agent.
pub async fn assert_running_guest_metrics(cloud: &Cloud, v: &Value) {
    let vm = v["uuid"].as_str().unwrap();
    let server: Uuid = v["server_uuid"].as_str().unwrap().parse().unwrap();
    let s = cloud.client.get(&format!("/servers/{server}")).await.unwrap();
    let addr = s["agent_url"].as_str().unwrap().trim_end_matches('/').to_string();
    let pin = cloud.headnode.app.read_trust(server).await.unwrap().and_then(|(t, _)| t.pin).expect("the agent's approved key");
    let http = cloud.headnode.app.agents.client(server, &pin).unwrap();
    let text = http.get(format!("{addr}/metrics")).send().await.unwrap().text().await.unwrap();
    let owner = v["owner_uuid"].as_str().unwrap();
    let alias = v["alias"].as_str().unwrap_or("");
    let labels = format!("vm_uuid=\"{vm}\",owner_uuid=\"{owner}\",alias=\"{alias}\"");
    assert!(text.contains(&format!("nereid_vm_running{{server=\"{server}\",{labels},state=\"running\"}} 1\n")), "{text}");
    assert!(value(&text, "nereid_vm_cpu_seconds_total", vm, "") > 0.0, "a booted guest has used CPU:\n{text}");
    let rss = value(&text, "nereid_vm_memory_rss_bytes", vm, "");
    assert!(rss > (1u64 << 20) as f64, "QEMU holds more than a MiB resident: {rss}");
    assert_eq!(value(&text, "nereid_vm_memory_configured_bytes", vm, ""), v["ram"].as_f64().unwrap() * (1u64 << 20) as f64);
    assert!(value(&text, "nereid_vm_disk_read_bytes_total", vm, "device=\"disk0\"") > 0.0, "the guest booted from its disk:\n{text}");
    assert!(value(&text, "nereid_vm_disk_reads_total", vm, "device=\"disk0\"") > 0.0);
    value(&text, "nereid_vm_disk_written_bytes_total", vm, "device=\"disk0\"");
    // NIC 0's tap, when the host gave it one (an isolated NIC has none, and no series).
    let tap = std::path::Path::new("/sys/class/net").join(nereid_agent::net::tap_name(vm.parse().unwrap(), 0));
    if tap.exists() {
        value(&text, "nereid_vm_network_receive_bytes_total", vm, "nic=\"net0\"");
        value(&text, "nereid_vm_network_transmit_packets_total", vm, "nic=\"net0\"");
    }
    assert!(text.contains("\nnereid_vm_stats_errors_total 0\n"), "no read failed:\n{text}");
    assert_eq!(promtool_problems(&text), "", "promtool on the QEMU agent's /metrics:\n{text}");
}
