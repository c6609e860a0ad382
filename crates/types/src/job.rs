//! Jobs: the durable record of one VM operation, rendered as Triton's workflow jobs.
//!
//! A job is a chain of named steps (see the headnode's `jobs` module for how they run).
//! The record says where the chain is (`cursor`), which direction it is going (`phase`:
//! forward, or unwinding after a failure), what each step returned, and what the steps
//! left for later ones (`data`). It is rewritten after every step, so a headnode that dies
//! mid-job leaves enough for another to carry on.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::spec::{Field, Kind};

/// `queued`, `running`, `succeeded`, `failed`, `canceled`.
pub const EXECUTIONS: &[&str] = &["queued", "running", "succeeded", "failed", "canceled"];
/// Job kinds (`task`).
pub const TASKS: &[&str] = &[
    "provision",
    "start",
    "stop",
    "reboot",
    "update",
    "snapshot",
    "destroy",
    "add_nics",
    "update_nics",
    "remove_nics",
    "repair",
    "create_image",
    "migrate-begin",
    "migrate-sync",
    "migrate-switch",
    "migrate-automatic",
    "migrate-abort",
];

/// One step's outcome, as `chain_results` lists it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StepResult {
    pub name: String,
    pub result: String,
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
}

/// Which way the chain is being walked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Forward,
    /// A step failed: completed steps are being undone, last first.
    Unwinding,
}

/// A job record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub uuid: Uuid,
    /// `<task>-nereid-1`, in Triton's `provision-8.2.4` style.
    pub name: String,
    pub task: String,
    pub vm_uuid: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_uuid: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_uuid: Option<Uuid>,
    pub execution: String,
    pub phase: Phase,
    /// Forward: the next step to run. Unwinding: one past the next step to undo.
    pub cursor: usize,
    pub chain: Vec<String>,
    pub chain_results: Vec<StepResult>,
    pub onerror_results: Vec<StepResult>,
    /// What the job was asked to do.
    pub params: Map<String, Value>,
    /// What steps left for later steps (and for undo).
    pub data: Map<String, Value>,
    pub created_at: String,
    /// Milliseconds since the epoch, for ordering a VM's jobs.
    pub created_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<String>,
    /// The error that failed the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub timeout: u64,
}

impl Job {
    pub fn is_done(&self) -> bool {
        matches!(self.execution.as_str(), "succeeded" | "failed" | "canceled")
    }
}

/// The job as VMAPI's job endpoints render it (node-workflow's shape).
pub fn render(j: &Job) -> Value {
    let elapsed = match (&j.started, &j.finished) {
        (Some(s), Some(f)) => match (crate::time::parse_iso(s), crate::time::parse_iso(f)) {
            (Ok(a), Ok(b)) => json!((b - a).as_seconds_f64()),
            _ => Value::Null,
        },
        _ => Value::Null,
    };
    let mut params = j.params.clone();
    params.insert("task".into(), json!(j.task));
    params.insert("vm_uuid".into(), json!(j.vm_uuid));
    if let Some(s) = j.server_uuid {
        params.insert("server_uuid".into(), json!(s));
    }
    if let Some(o) = j.owner_uuid {
        params.insert("owner_uuid".into(), json!(o));
    }
    json!({
        "uuid": j.uuid,
        "name": j.name,
        "task": j.task,
        "execution": j.execution,
        "vm_uuid": j.vm_uuid,
        "server_uuid": j.server_uuid,
        "target": format!("/{}-{}", j.task, j.vm_uuid),
        "params": params,
        "chain": j.chain.iter().map(|n| json!({"name": n})).collect::<Vec<_>>(),
        "chain_results": j.chain_results,
        "onerror_results": j.onerror_results,
        "created_at": j.created_at,
        "started": j.started,
        "finished": j.finished,
        "elapsed": elapsed,
        "timeout": j.timeout,
        "error": j.error,
    })
}

/// A job's step results as rendered: `[{name, result, error, started_at, finished_at}]`.
const RESULTS: Kind = Kind::Custom { check: |_| Ok(()), schema: results_schema };

fn results_schema() -> Value {
    let s = json!({"type": "string"});
    json!({"type": "array", "items": {"type": "object", "properties": {
        "name": s, "result": s, "error": s, "started_at": s, "finished_at": s}}})
}

/// Fields of a rendered job (for the API document).
pub const FIELDS: &[Field] = &[
    Field::new("uuid", Kind::Uuid, "Job UUID.").read_only(),
    Field::new("name", Kind::Str { max: 64, check: None }, "Workflow name, e.g. provision-nereid-1.").read_only(),
    Field::new("task", Kind::Enum(TASKS), "What the job does.").read_only(),
    Field::new("execution", Kind::Enum(EXECUTIONS), "queued, running, succeeded, failed or canceled.").read_only(),
    Field::new("vm_uuid", Kind::Uuid, "The VM.").read_only(),
    Field::new("chain_results", RESULTS, "Each step's result or error, with times.").read_only(),
    Field::new("onerror_results", RESULTS, "Undo steps run after a failure.").read_only(),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_like_workflow_jobs() {
        let j = Job {
            uuid: Uuid::nil(),
            name: "provision-nereid-1".into(),
            task: "provision".into(),
            vm_uuid: Uuid::from_u128(5),
            server_uuid: None,
            owner_uuid: None,
            execution: "succeeded".into(),
            phase: Phase::Forward,
            cursor: 1,
            chain: vec!["reserve".into()],
            chain_results: vec![StepResult { name: "reserve".into(), result: "ok".into(), ..Default::default() }],
            onerror_results: vec![],
            params: Map::new(),
            data: Map::new(),
            created_at: "2026-01-01T00:00:00.000Z".into(),
            created_ms: 0,
            started: Some("2026-01-01T00:00:00.000Z".into()),
            finished: Some("2026-01-01T00:00:01.500Z".into()),
            error: None,
            timeout: 3600,
        };
        let r = render(&j);
        assert_eq!(r["elapsed"], json!(1.5));
        assert_eq!(r["target"], "/provision-00000000-0000-0000-0000-000000000005");
        assert_eq!(r["params"]["task"], "provision");
        assert_eq!(r["chain_results"][0]["name"], "reserve");
        assert!(j.is_done());
    }
}
