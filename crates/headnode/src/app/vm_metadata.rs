//! Guests writing their own metadata (`mdata-put`, `mdata-delete` over the metadata
//! port): the agent forwards each write here and answers the guest only once it is in the
//! VM's record, so a write the guest saw succeed is never lost.
//!
//! The same routing rules as the agent's (SmartOS's): keys ending in `_pw` and
//! `operator-script` are internal metadata; `sdc:` keys and internal namespaces are
//! read-only to guests; everything else is customer metadata.

use nereid_types::agent::MetadataWrite;
use nereid_types::{ApiError, FieldError};
use serde_json::Value;
use uuid::Uuid;

use super::App;

/// Longest value a guest may write (bytes).
const MAX_VALUE: usize = 1 << 20;

/// Why a guest's write is refused (pure).
pub fn check_write(w: &MetadataWrite, namespaces: &[String]) -> Result<(), FieldError> {
    let bad = |field: &str, msg: String| FieldError::invalid(field, msg);
    let protected = |k: &str| k.starts_with("sdc:") || k.split_once(':').is_some_and(|(ns, _)| namespaces.iter().any(|n| n == ns));
    let internal = |k: &str| k.ends_with("_pw") || k == "operator-script";
    if w.is_empty() {
        return Err(bad("body", "the write changes nothing".into()));
    }
    let keys = w
        .set_customer_metadata
        .keys()
        .map(|k| ("set_customer_metadata", k, false))
        .chain(w.remove_customer_metadata.iter().map(|k| ("remove_customer_metadata", k, false)))
        .chain(w.set_internal_metadata.keys().map(|k| ("set_internal_metadata", k, true)))
        .chain(w.remove_internal_metadata.iter().map(|k| ("remove_internal_metadata", k, true)));
    for (field, k, to_internal) in keys {
        if k.is_empty() || k.len() > 256 {
            return Err(bad(field, format!("key {:?} must have 1 to 256 characters", nereid_types::spec::truncate(k, 40))));
        }
        if protected(k) {
            return Err(bad(field, format!("{k} is read-only to the guest")));
        }
        if to_internal != internal(k) {
            let want = if internal(k) { "internal" } else { "customer" };
            return Err(bad(field, format!("{k} belongs to {want} metadata")));
        }
    }
    for (field, m) in [("set_customer_metadata", &w.set_customer_metadata), ("set_internal_metadata", &w.set_internal_metadata)] {
        for (k, v) in m {
            match v {
                Value::String(s) if s.len() <= MAX_VALUE => {}
                Value::String(_) => return Err(bad(field, format!("the value of {k} is longer than {MAX_VALUE} bytes"))),
                _ => return Err(bad(field, format!("the value of {k} must be a string"))),
            }
        }
    }
    Ok(())
}

impl App {
    /// Records a guest's metadata write on its VM (which must be on `server`).
    pub async fn guest_metadata_write(&self, server: Uuid, vm: Uuid, w: &MetadataWrite) -> Result<(), ApiError> {
        let (record, _) = self.get_vm(vm, None).await?;
        if record.server_uuid != Some(server) {
            return Err(ApiError::conflict("VmNotOnServer", format!("VM {vm} is not on server {server}")));
        }
        let namespaces: Vec<String> =
            record.rest.get("internal_metadata_namespaces").and_then(|v| serde_json::from_value(v.clone()).ok()).unwrap_or_default();
        check_write(w, &namespaces).map_err(|e| ApiError::invalid_parameters(vec![e]))?;
        let now = nereid_types::time::now_iso();
        self.modify_vm(vm, |v| {
            let mut customer = v.customer_metadata.take().unwrap_or_default();
            let mut internal = v.internal_metadata.take().unwrap_or_default();
            w.apply_to(&mut customer, &mut internal);
            nereid_types::vm::check_metadata_total(Some(&customer), Some(&internal), v.tags.as_ref()).map_err(|e| e.message)?;
            v.customer_metadata = Some(customer);
            v.internal_metadata = Some(internal);
            v.last_modified = Some(now.clone());
            Ok(())
        })
        .await?;
        tracing::info!(%vm, "the guest wrote its metadata");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn w(v: Value) -> MetadataWrite {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn guests_write_only_what_is_theirs() {
        let ns = vec!["ops".to_string()];
        assert!(check_write(&w(json!({"set_customer_metadata": {"a": "1"}, "remove_customer_metadata": ["b"]})), &ns).is_ok());
        assert!(check_write(&w(json!({"set_internal_metadata": {"root_pw": "x"}})), &ns).is_ok());
        let cases = [
            (json!({}), "changes nothing"),
            (json!({"set_customer_metadata": {"sdc:uuid": "x"}}), "read-only"),
            (json!({"remove_customer_metadata": ["ops:secret"]}), "read-only"),
            (json!({"set_customer_metadata": {"root_pw": "x"}}), "internal metadata"),
            (json!({"set_internal_metadata": {"colour": "x"}}), "customer metadata"),
            (json!({"set_customer_metadata": {"a": 1}}), "must be a string"),
            (json!({"set_customer_metadata": {"": "x"}}), "1 to 256"),
        ];
        for (v, why) in cases {
            let e = check_write(&w(v.clone()), &ns).unwrap_err();
            assert!(e.message.contains(why), "{v}: {}", e.message);
        }
    }
}
