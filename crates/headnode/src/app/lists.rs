//! Big lists, read fast: objects decoded straight from the store's JSON text into their
//! types (no `serde_json::Value` tree per row, no clone of it), one query per page.
//!
//! The answers are those of [`App::list`], [`App::list_entries`] and [`App::list_vms`]:
//! the same records in the same order, a record that does not decode left out (logged) or
//! kept as damaged exactly as those say. Only the way from the row to the type differs: a
//! row that does not decode straight is decoded again the old way, so a damaged record's
//! error reads as before. The HTTP and CloudAPI list handlers use these; the older
//! functions stay for their other callers.

use nereid_store::{Kind, ListQuery, Path, RawObject};
use nereid_types::ApiError;
use nereid_types::damaged::{self, Stored};
use nereid_types::query::Query;
use nereid_types::vm::{self, Vm};
use serde::de::DeserializeOwned;

use super::{App, store_error};
use crate::buckets::VMS;

/// One row decoded: straight from its text, or (when that fails) through a `Value` as
/// [`damaged::decode`] does, for the same damaged record and error text.
pub fn decode_row<T: DeserializeOwned>(bucket: &str, row: RawObject) -> Stored<T> {
    match serde_json::from_str::<T>(&row.json) {
        Ok(t) => Stored::Ok(t),
        Err(_) => damaged::decode(bucket, &row.key, slow_value(&row)),
    }
}

/// A VM row decoded as [`vm::decode`] does (a record whose uuid is not its key is damaged).
pub fn decode_vm_row(row: RawObject) -> Stored<Vm> {
    match serde_json::from_str::<Vm>(&row.json) {
        Ok(v) if v.uuid.to_string() == row.key => Stored::Ok(v),
        _ => vm::decode(&row.key, slow_value(&row)),
    }
}

/// The row's value as a tree (the store only holds JSON, so this parses; a row that
/// somehow does not is kept as its text).
fn slow_value(row: &RawObject) -> serde_json::Value {
    serde_json::from_str(&row.json).unwrap_or_else(|_| serde_json::Value::String(row.json.clone()))
}

impl App {
    /// [`App::list`], decoding each row straight from its text.
    pub async fn list_fast<T: DeserializeOwned>(&self, bucket: &str, q: &ListQuery) -> Result<Vec<T>, ApiError> {
        let rows = self.store.list_raw(bucket, q).await.map_err(store_error)?;
        Ok(rows
            .into_iter()
            .filter_map(|r| match decode_row::<T>(bucket, r) {
                Stored::Ok(t) => Some(t),
                Stored::Damaged(d) => {
                    tracing::error!(bucket, key = %d.key, error = %d.error, "left a damaged record out of a list");
                    None
                }
            })
            .collect())
    }

    /// [`App::list_vms`] (VMAPI ListVms: a page and the total count), decoding each row
    /// straight from its text.
    pub async fn list_vms_fast(&self, q: &Query) -> Result<(Vec<Stored<Vm>>, i64), ApiError> {
        let filter = super::vms::list_filter(q).map_err(ApiError::validation_409)?;
        let (limit, offset) = (q.limit(1000), q.offset());
        let lq = ListQuery::filter(filter.clone()).sort(Path::field("create_timestamp"), Kind::Text, false).page(limit, offset);
        let rows = self.store.list_raw(VMS.name, &lq).await.map_err(store_error)?;
        let vms: Vec<Stored<Vm>> = rows.into_iter().map(decode_vm_row).collect();
        let total = match page_total(vms.len(), limit, offset) {
            Some(t) => t,
            None => self.store.count(VMS.name, &filter).await.map_err(store_error)?,
        };
        Ok((vms, total))
    }
}

/// The total a page tells by itself: a page shorter than its limit (and not empty past
/// the end) is the last one, so the total is its offset plus its length. `None`: count.
pub fn page_total(len: usize, limit: i64, offset: i64) -> Option<i64> {
    let len = i64::try_from(len).ok()?;
    (len < limit && (len > 0 || offset == 0)).then_some(offset + len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(key: &str, v: serde_json::Value) -> RawObject {
        RawObject { key: key.into(), json: v.to_string(), generation: 1, mtime: 0 }
    }

    #[test]
    fn rows_decode_as_the_value_path_does() {
        let u = uuid::Uuid::new_v4().to_string();
        let good = json!({"uuid": u, "alias": "a", "ram": 1024, "nics": [], "extra": {"x": 1}});
        assert_eq!(decode_vm_row(row(&u, good.clone())), vm::decode(&u, good.clone()));
        let other = uuid::Uuid::new_v4().to_string();
        assert_eq!(decode_vm_row(row(&other, good.clone())), vm::decode(&other, good));
        let bad = json!({"uuid": u, "ram": "lots"});
        let d = decode_vm_row(row(&u, bad.clone()));
        assert!(matches!(d, Stored::Damaged(_)));
        assert_eq!(d, vm::decode(&u, bad));
    }

    #[test]
    fn short_pages_tell_their_total() {
        assert_eq!(page_total(3, 1000, 0), Some(3));
        assert_eq!(page_total(0, 1000, 0), Some(0));
        assert_eq!(page_total(5, 10, 20), Some(25));
        assert_eq!(page_total(0, 10, 20), None, "past the end: count");
        assert_eq!(page_total(10, 10, 0), None, "a full page: count");
    }
}
