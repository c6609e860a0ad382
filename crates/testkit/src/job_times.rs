//! Where a provision's time goes, from the jobs' own records: for the benches.

use crate::Cloud;

/// The median milliseconds of each phase of the cloud's succeeded provision jobs: queued
/// (created until the first step starts), each step, the end (last step to the job's
/// end) and the total, as one line (`queued 6.0, reserve 5.0, …`).
pub async fn provision_medians(cloud: &Cloud) -> String {
    use nereid_types::time::parse_iso;
    let jobs = cloud.headnode.app.store.list("jobs", &nereid_store::ListQuery::all()).await.unwrap_or_default();
    let ms = |a: &Option<String>, b: &Option<String>| -> Option<f64> {
        let (a, b) = (parse_iso(a.as_deref()?).ok()?, parse_iso(b.as_deref()?).ok()?);
        Some((b - a).as_seconds_f64() * 1000.0)
    };
    let mut parts: Vec<(String, Vec<f64>)> = Vec::new();
    let mut add = |name: &str, v: Option<f64>| {
        let Some(v) = v else { return };
        match parts.iter_mut().find(|(n, _)| n == name) {
            Some((_, l)) => l.push(v),
            None => parts.push((name.to_string(), vec![v])),
        }
    };
    for o in jobs {
        let Ok(j) = serde_json::from_value::<nereid_types::job::Job>(o.value) else { continue };
        if j.task != "provision" || j.execution != "succeeded" {
            continue;
        }
        let first = j.chain_results.first().and_then(|r| r.started_at.clone());
        add("queued", ms(&Some(j.created_at.clone()), &first));
        for r in &j.chain_results {
            add(&r.name, ms(&r.started_at, &r.finished_at));
        }
        add("end", ms(&j.chain_results.last().and_then(|r| r.finished_at.clone()), &j.finished));
        add("total", ms(&Some(j.created_at.clone()), &j.finished));
    }
    let median = |l: &mut Vec<f64>| {
        l.sort_by(f64::total_cmp);
        l[l.len() / 2]
    };
    parts.iter_mut().map(|(n, l)| format!("{n} {:.1}", median(l))).collect::<Vec<_>>().join(", ")
}
