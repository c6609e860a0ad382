//! The headnode's `/metrics` (Prometheus text format 0.0.4): requests and their latency by
//! route, job state changes, allocation time, and — computed when scraped — jobs by
//! execution, servers by status and VMs by state.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

const BOUNDS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

#[derive(Debug, Clone, Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, v: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; BOUNDS.len()];
        }
        for (i, b) in BOUNDS.iter().enumerate() {
            if v <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, b) in BOUNDS.iter().enumerate() {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {}", self.counts.get(i).copied().unwrap_or(0));
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", self.count);
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

#[derive(Default)]
struct Inner {
    requests: BTreeMap<(String, String, u16), u64>,
    latency: BTreeMap<String, Histogram>,
    jobs: BTreeMap<(String, String), u64>,
    allocation: Histogram,
    /// Findings of the last reconciliation pass, by kind (`None` before the first).
    drift: Option<BTreeMap<String, u64>>,
    /// Repairs the reconciler made, by kind.
    reconciled: BTreeMap<String, u64>,
}

/// A gauge computed at scrape time: name, help, and `(labels, value)` samples.
pub type Gauge<'a> = (&'a str, &'a str, Vec<(String, f64)>);

/// Counters and histograms kept in memory (per headnode process).
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', " ")
}

impl Metrics {
    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        f(&mut self.inner.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn observe_request(&self, method: &str, route: &str, status: u16, secs: f64) {
        self.with(|i| {
            *i.requests.entry((method.into(), route.into(), status)).or_default() += 1;
            i.latency.entry(route.into()).or_default().observe(secs);
        });
    }

    pub fn job_event(&self, task: &str, event: &str) {
        self.with(|i| *i.jobs.entry((task.into(), event.into())).or_default() += 1);
    }

    pub fn observe_allocation(&self, secs: f64) {
        self.with(|i| i.allocation.observe(secs));
    }

    /// What the last reconciliation pass found, by kind.
    pub fn set_drift(&self, counts: BTreeMap<String, u64>) {
        self.with(|i| i.drift = Some(counts));
    }

    pub fn reconciled(&self, kind: &str) {
        self.with(|i| *i.reconciled.entry(kind.into()).or_default() += 1);
    }

    /// The exposition, with gauges computed by the caller: `(metric, help, [(labels, value)])`.
    pub fn render(&self, gauges: &[Gauge<'_>]) -> String {
        let mut out = String::new();
        self.with(|i| {
            let _ = writeln!(out, "# HELP nereid_http_requests_total Requests answered, by method, route and status.\n# TYPE nereid_http_requests_total counter");
            for ((m, r, s), n) in &i.requests {
                let _ = writeln!(out, "nereid_http_requests_total{{method=\"{}\",route=\"{}\",status=\"{s}\"}} {n}", esc(m), esc(r));
            }
            let _ = writeln!(out, "# HELP nereid_http_request_duration_seconds Request latency by route.\n# TYPE nereid_http_request_duration_seconds histogram");
            for (r, h) in &i.latency {
                h.render(&mut out, "nereid_http_request_duration_seconds", &format!("route=\"{}\"", esc(r)));
            }
            let _ = writeln!(out, "# HELP nereid_job_events_total Job state changes seen by this headnode.\n# TYPE nereid_job_events_total counter");
            for ((t, e), n) in &i.jobs {
                let _ = writeln!(out, "nereid_job_events_total{{task=\"{}\",event=\"{}\"}} {n}", esc(t), esc(e));
            }
            let _ = writeln!(out, "# HELP nereid_allocation_duration_seconds Time to place a VM.\n# TYPE nereid_allocation_duration_seconds histogram");
            i.allocation.render(&mut out, "nereid_allocation_duration_seconds", "");
            if let Some(drift) = &i.drift {
                let _ = writeln!(out, "# HELP nereid_drift Inconsistencies the last reconciliation pass found, by kind (see nereid admin doctor).\n# TYPE nereid_drift gauge");
                for k in crate::app::doctor::KINDS {
                    let _ = writeln!(out, "nereid_drift{{kind=\"{k}\"}} {}", drift.get(*k).copied().unwrap_or(0));
                }
            }
            let _ = writeln!(out, "# HELP nereid_reconciled_total Repairs the reconciler made, by kind.\n# TYPE nereid_reconciled_total counter");
            for (k, n) in &i.reconciled {
                let _ = writeln!(out, "nereid_reconciled_total{{kind=\"{}\"}} {n}", esc(k));
            }
        });
        for (name, help, values) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for (labels, v) in values {
                if labels.is_empty() {
                    let _ = writeln!(out, "{name} {v}");
                } else {
                    let _ = writeln!(out, "{name}{{{labels}}} {v}");
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.observe_request("GET", "/vms/{uuid}", 200, 0.003);
        m.observe_request("GET", "/vms/{uuid}", 200, 0.2);
        m.job_event("provision", "succeeded");
        m.observe_allocation(0.01);
        let t = m.render(&[("nereid_servers", "Servers by status.", vec![("status=\"running\"".into(), 3.0)])]);
        assert!(t.contains("nereid_http_requests_total{method=\"GET\",route=\"/vms/{uuid}\",status=\"200\"} 2"), "{t}");
        assert!(t.contains("nereid_http_request_duration_seconds_bucket{route=\"/vms/{uuid}\",le=\"0.005\"} 1"));
        assert!(t.contains("nereid_http_request_duration_seconds_count{route=\"/vms/{uuid}\"} 2"));
        assert!(t.contains("nereid_job_events_total{task=\"provision\",event=\"succeeded\"} 1"));
        assert!(t.contains("nereid_allocation_duration_seconds_count 1"));
        assert!(t.contains("nereid_servers{status=\"running\"} 3"));
        for line in t.lines().filter(|l| !l.starts_with('#')) {
            let (_, v) = line.rsplit_once(' ').unwrap();
            v.parse::<f64>().unwrap_or_else(|_| panic!("bad sample line {line}"));
        }
    }
}
