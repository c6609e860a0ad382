//! VM snapshots (VMAPI's `create_snapshot`, `rollback_snapshot`, `delete_snapshot`
//! actions): checked here, carried out by the `snapshot` job.
//!
//! The VM record lists its snapshots as `[{name, created_at}]`; an entry being made or
//! removed carries `state: creating | deleting` until the job records the outcome.

use nereid_types::{ApiError, FieldError};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::App;
use crate::jobs::new_job;

/// Most snapshots one VM may have.
pub const MAX_SNAPSHOTS: usize = 32;

/// Checks a snapshot name (pure).
pub fn check_name(name: Option<&str>) -> Result<&str, FieldError> {
    let name = name.ok_or_else(|| FieldError::missing("snapshot_name"))?;
    if name.is_empty() || name.len() > 64 || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) || name.starts_with('.')
    {
        return Err(FieldError::invalid("snapshot_name", "must be 1 to 64 letters, digits, '-', '_' or '.', not starting with '.'"));
    }
    Ok(name)
}

impl App {
    /// `create_snapshot`, `rollback_snapshot` or `delete_snapshot` as a `snapshot` job.
    pub async fn snapshot_vm(&self, uuid: Uuid, action: &str, name: Option<&str>) -> Result<nereid_types::job::Job, ApiError> {
        let name = check_name(name).map_err(|e| ApiError::validation_409(vec![e]))?;
        let (vm, _) = self.get_vm(uuid, None).await?;
        let server = Self::check_actionable(&vm)?;
        let existing = vm.snapshots.iter().flatten().find(|s| s.get("name").and_then(Value::as_str) == Some(name));
        let op = match action {
            "create_snapshot" => {
                if existing.is_some() {
                    return Err(ApiError::conflict("SnapshotExists", format!("VM {uuid} already has a snapshot named {name:?}")));
                }
                if vm.snapshots.as_ref().map_or(0, Vec::len) >= MAX_SNAPSHOTS {
                    return Err(ApiError::conflict(
                        "TooManySnapshots",
                        format!("VM {uuid} has {MAX_SNAPSHOTS} snapshots, the most a VM may have: delete one first"),
                    ));
                }
                "create"
            }
            "rollback_snapshot" | "delete_snapshot" => {
                let Some(s) = existing else {
                    return Err(ApiError::new(404, "SnapshotNotFound", format!("VM {uuid} has no snapshot named {name:?}")));
                };
                if let Some(state) = s.get("state").and_then(Value::as_str) {
                    return Err(ApiError::conflict("SnapshotBusy", format!("snapshot {name:?} is {state}")));
                }
                if action == "rollback_snapshot" { "rollback" } else { "delete" }
            }
            other => {
                return Err(ApiError::validation_409(vec![FieldError::invalid("action", format!("{other} is not a snapshot action"))]));
            }
        };
        let mut params = Map::new();
        params.insert("op".into(), json!(op));
        params.insert("name".into(), json!(name));
        self.queue(new_job("snapshot", uuid, Some(server), vm.owner_uuid, params), Vec::new()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(check_name(Some("before-upgrade_2.0")).unwrap(), "before-upgrade_2.0");
        for bad in [None, Some(""), Some(".hidden"), Some("a b"), Some("x/y")] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_name(Some(&"a".repeat(65))).is_err());
    }
}
