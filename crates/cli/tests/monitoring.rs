//! Monitoring end to end (issue 17 item 7): a simulated cloud of three servers and a VM.
//! `GET /metrics/targets` lists every agent (and the headnode) for Prometheus and refuses a
//! caller without the operator token; the agent's `/metrics` (over mutual TLS, as the
//! headnode calls it) has the VM's series labelled vm_uuid, owner_uuid and alias; and
//! the real `promtool check metrics` (Debian's `prometheus`, installed by scripts/test)
//! finds no problem in the agent's nor the headnode's exposition.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use nereid_agent::metrics::promtool_problems;
use nereid_testkit::{Cloud, Options};
use serde_json::Value;

async fn agent_metrics(cloud: &Cloud) -> String {
    let agent = cloud.agent.as_ref().unwrap();
    let node = &agent.nodes[0];
    let http = cloud.headnode.app.agents.client(node.uuid, &agent.credentials.key().pin()).unwrap();
    let resp = http.get(format!("https://{}/metrics", agent.addr)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.text().await.unwrap()
}

async fn the_cloud_is_listed_for_prometheus_and_its_metrics_pass_promtool(b: nereid_testkit::Backend) {
    let o = Options { sim_servers: 3, heartbeat: Duration::from_millis(200), ..Options::new(b) };
    let cloud = Cloud::start_with(o).await.unwrap();
    cloud.wait_servers(3).await.unwrap();
    let agent = cloud.agent.as_ref().unwrap();
    let seed = cloud.seed().await.unwrap();
    let (vm, job) = cloud.create_vm(&seed.vm_body("web-1")).await.unwrap();
    let j = cloud.wait_job(&job).await.unwrap();
    assert_eq!(j["execution"], "succeeded", "{j}");

    // Service discovery: every agent's server, once, and the headnode itself.
    let sd = cloud.client.get("/metrics/targets").await.unwrap();
    let groups = sd.as_array().unwrap();
    let agents: Vec<&Value> = groups.iter().filter(|g| g["labels"]["job"] == "nereid-agent").collect();
    assert_eq!(agents.len(), 1, "one agent process runs the three servers: {sd}");
    assert_eq!(agents[0]["targets"], serde_json::json!([agent.addr.to_string()]), "{sd}");
    assert_eq!((&agents[0]["labels"]["__scheme__"], &agents[0]["labels"]["__metrics_path__"]), (&"https".into(), &"/metrics".into()));
    let mut listed: Vec<String> = agents[0]["labels"]["server_uuid"].as_str().unwrap().split(',').map(str::to_string).collect();
    let mut want: Vec<String> = agent.nodes.iter().map(|n| n.uuid.to_string()).collect();
    listed.sort();
    want.sort();
    assert_eq!((listed.len(), &listed), (3, &want), "{sd}");
    let hn = groups.iter().find(|g| g["labels"]["job"] == "nereid-headnode").unwrap_or_else(|| panic!("no headnode target: {sd}"));
    let admin_host = cloud.headnode.admin_url.strip_prefix("http://").unwrap();
    assert_eq!((&hn["targets"][0], &hn["labels"]["__scheme__"]), (&admin_host.into(), &"http".into()), "{sd}");
    api_err(cloud.client_with_token("not-the-token").get("/metrics/targets").await, 401, "Unauthorized");

    // The VM's series on its agent, labelled with VM, owner and alias, once it runs.
    let end = Instant::now() + Duration::from_secs(30);
    let labels = format!("vm_uuid=\"{vm}\",owner_uuid=\"{}\",alias=\"web-1\"", seed.owner);
    let text = loop {
        let t = agent_metrics(&cloud).await;
        if t.lines().any(|l| l.starts_with("nereid_vm_running{") && l.contains(&labels) && l.ends_with("state=\"running\"} 1")) {
            break t;
        }
        assert!(Instant::now() < end, "the VM never showed running on /metrics:\n{t}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for family in [
        "nereid_vm_cpu_seconds_total",
        "nereid_vm_memory_rss_bytes",
        "nereid_vm_memory_configured_bytes",
        "nereid_vm_disk_read_bytes_total",
        "nereid_vm_disk_writes_total",
        "nereid_vm_network_receive_bytes_total",
        "nereid_vm_network_transmit_packets_total",
    ] {
        assert!(text.lines().any(|l| l.starts_with(&format!("{family}{{")) && l.contains(&labels)), "no {family} for the VM:\n{text}");
    }
    assert!(text.contains("nereid_vm_memory_configured_bytes{"), "{text}");
    assert!(text.contains("\nnereid_vm_stats_errors_total 0\n"), "no read failed:\n{text}");

    // promtool: no problems on the agent's nor the headnode's /metrics.
    assert_eq!(promtool_problems(&text), "", "promtool on the agent's /metrics:\n{text}");
    let resp = reqwest::Client::new()
        .get(format!("{}/metrics", cloud.headnode.admin_url))
        .bearer_auth(&cloud.headnode.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let hn_text = resp.text().await.unwrap();
    assert_eq!(promtool_problems(&hn_text), "", "promtool on the headnode's /metrics:\n{hn_text}");
    // And the check can fail: a counter without _total is a problem to it.
    assert_ne!(promtool_problems("# HELP x_bytes X.\n# TYPE x_bytes counter\nx_bytes 1\n"), "");
}

both_backends!(the_cloud_is_listed_for_prometheus_and_its_metrics_pass_promtool);

/// The metric names a PromQL expression uses (`nereid_…` words).
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("nereid_") {
        let word: String = rest[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        rest = &rest[i + word.len()..];
        out.push(word);
    }
    out
}

/// docs/grafana/nereid.json parses, every panel queries through the `datasource`
/// variable, and every metric its queries name is one the agent or headnode defines (their
/// metric definitions, test code left out; histograms' _bucket/_sum/_count included).
#[test]
fn the_grafana_dashboard_uses_only_metrics_nereid_exports() {
    let root = format!("{}/../..", env!("CARGO_MANIFEST_DIR"));
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(format!("{root}/docs/grafana/nereid.json")).unwrap()).unwrap();
    let vars = dash["templating"]["list"].as_array().unwrap();
    assert!(vars.iter().any(|v| v["name"] == "datasource" && v["type"] == "datasource" && v["query"] == "prometheus"), "{vars:?}");
    let mut defined = std::collections::BTreeSet::new();
    for f in [
        "crates/agent/src/metrics.rs",
        "crates/agent/src/vm_stats.rs",
        "crates/headnode/src/metrics.rs",
        "crates/headnode/src/http/metrics.rs",
    ] {
        let src = std::fs::read_to_string(format!("{root}/{f}")).unwrap();
        let code = src.split("#[cfg(test)]").next().unwrap();
        for n in metric_names(code) {
            for suffix in ["", "_bucket", "_sum", "_count"] {
                defined.insert(format!("{}{suffix}", n.trim_end_matches('_')));
            }
        }
    }
    assert!(defined.contains("nereid_vm_cpu_seconds_total") && defined.contains("nereid_http_requests_total"), "{defined:?}");
    let (mut used, mut panels) = (std::collections::BTreeSet::new(), 0);
    for p in dash["panels"].as_array().unwrap().iter().filter(|p| p["type"] != "row") {
        panels += 1;
        assert_eq!(p["datasource"]["uid"], "${datasource}", "panel {} has its own data source", p["title"]);
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {} queries nothing", p["title"]);
        for t in targets {
            let expr = t["expr"].as_str().unwrap();
            let names = metric_names(expr);
            assert!(!names.is_empty(), "{expr}: no Nereid metric");
            for n in names {
                assert!(defined.contains(&n), "panel {}: {n} is not a metric Nereid exports ({expr})", p["title"]);
                used.insert(n);
            }
        }
    }
    // Servers and VMs both: the families the issue names are on it.
    for want in [
        "nereid_host_load1",
        "nereid_host_memory_bytes",
        "nereid_hardware_temperature_celsius",
        "nereid_disk_health_ok",
        "nereid_vm_cpu_seconds_total",
        "nereid_vm_memory_rss_bytes",
        "nereid_vm_disk_read_bytes_total",
        "nereid_vm_network_receive_bytes_total",
    ] {
        assert!(used.contains(want), "the dashboard shows no {want}");
    }
    assert!(panels >= 10, "{panels} panels");
    assert!(!defined.contains("nereid_no_such_metric"), "the check can fail");
}
