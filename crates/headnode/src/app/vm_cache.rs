//! Decoded VM records kept by version, for placement.
//!
//! Placement reads a server fresh before every decision ([`super::capacity`]): its VM
//! records included, each of which used to be parsed from JSON again every time — the
//! largest share of a provision's CPU once servers hold a few dozen VMs. Here the records
//! are listed as versions only (key, generation, mtime, size: [`nereid_store::RowVersion`],
//! as the render cache of [`super::lists`] does) and only those this headnode has not
//! decoded at that version are fetched and decoded.
//!
//! - A row written between the listing and the fetch is answered as fetched and not kept
//!   (its version is not the listed one); one deleted meanwhile is left out.
//! - The same version means the same record, except for one deleted and written again
//!   under the same UUID in the same millisecond at the same size (see [`super::lists`]).
//!   Placement may decide on a stale view anyway: its claim is checked in the store.
//! - Entries of VMs no longer listed go when the whole view is rebuilt
//!   ([`VmCache::retain`]); past [`MAX_ENTRIES`] the cache starts again empty.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use nereid_store::{ListQuery, RawObject, RowVersion};
use nereid_types::damaged::Stored;
use nereid_types::vm::Vm;

use super::lists::{Made, Version, decode_vm_row, join_versions};
use super::{App, store_error};
use crate::buckets::VMS;
use nereid_types::ApiError;

/// Entries past which the cache is emptied (a few hundred bytes to a few KiB each).
pub const MAX_ENTRIES: usize = 200_000;

/// A decoded record, shared by the cache and the answers it gave.
type Entry = Arc<Stored<Vm>>;
type Map = HashMap<String, (Version, Entry)>;

/// See the module doc.
#[derive(Default)]
pub struct VmCache {
    map: Mutex<Map>,
}

impl VmCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Map> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached record of each listed row at its listed version.
    fn lookup(&self, listed: &[RowVersion]) -> Vec<Option<Arc<Stored<Vm>>>> {
        let map = self.lock();
        listed.iter().map(|v| map.get(&v.key).filter(|(at, _)| *at == Version::of(v)).map(|(_, e)| e.clone())).collect()
    }

    fn insert(&self, made: Vec<(String, Version, Arc<Stored<Vm>>)>) {
        let mut map = self.lock();
        if map.len() + made.len() > MAX_ENTRIES {
            map.clear();
        }
        for (k, v, e) in made {
            map.insert(k, (v, e));
        }
    }

    /// Keeps only these records (what a whole-view rebuild listed).
    pub fn retain(&self, records: &[Arc<Stored<Vm>>]) {
        let keys: HashSet<String> = records
            .iter()
            .map(|r| match &**r {
                Stored::Ok(vm) => vm.uuid.to_string(),
                Stored::Damaged(d) => d.key.clone(),
            })
            .collect();
        self.lock().retain(|k, _| keys.contains(k));
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// [`join_versions`] with each fetched row decoded (a damaged one kept as damaged).
fn complete(
    listed: Vec<RowVersion>,
    hits: Vec<Option<Entry>>,
    fetched: HashMap<String, RawObject>,
) -> (Vec<Entry>, Vec<(String, Version, Entry)>) {
    join_versions(listed, hits, fetched, |row| Made::Keep(Arc::new(decode_vm_row(row))))
}

impl App {
    /// [`App::vm_entries`] through the cache of decoded records (see the module doc).
    pub async fn vm_entries_cached(&self, q: &ListQuery) -> Result<Vec<Arc<Stored<Vm>>>, ApiError> {
        let listed = self.store.list_versions(VMS.name, q).await.map_err(store_error)?;
        let hits = self.vm_cache.lookup(&listed);
        let missing: Vec<String> = listed.iter().zip(&hits).filter(|(_, h)| h.is_none()).map(|(v, _)| v.key.clone()).collect();
        let fetched = if missing.is_empty() {
            HashMap::new()
        } else {
            self.store.get_raw_many(VMS.name, &missing).await.map_err(store_error)?.into_iter().map(|r| (r.key.clone(), r)).collect()
        };
        let (out, made) = complete(listed, hits, fetched);
        self.vm_cache.insert(made);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm_json(uuid: &str, ram: u64) -> String {
        serde_json::json!({"uuid": uuid, "ram": ram, "state": "running"}).to_string()
    }

    fn listed(key: &str, generation: i64, size: i64) -> RowVersion {
        RowVersion { key: key.into(), generation, mtime: 7, size }
    }

    fn raw(key: &str, generation: i64, json: String) -> RawObject {
        RawObject { key: key.into(), json, generation, mtime: 7 }
    }

    const A: &str = "0a7e59f5-4ddc-4b39-9b1c-2d5d3e0d9a01";
    const B: &str = "0b7e59f5-4ddc-4b39-9b1c-2d5d3e0d9a01";

    fn ram(e: &Stored<Vm>) -> Option<u64> {
        match e {
            Stored::Ok(vm) => vm.ram,
            Stored::Damaged(_) => None,
        }
    }

    #[test]
    fn a_record_is_decoded_once_per_version_and_again_when_it_changes() {
        let cache = VmCache::default();
        let run = |l: Vec<RowVersion>, rows: Vec<RawObject>| {
            let hits = cache.lookup(&l);
            let fetched_keys: Vec<String> = l.iter().zip(&hits).filter(|(_, h)| h.is_none()).map(|(v, _)| v.key.clone()).collect();
            let fetched = rows.into_iter().filter(|r| fetched_keys.contains(&r.key)).map(|r| (r.key.clone(), r)).collect();
            let (out, made) = complete(l, hits, fetched);
            cache.insert(made);
            (out, fetched_keys)
        };
        let (out, fetched) = run(vec![listed(A, 1, 10), listed(B, 1, 10)], vec![raw(A, 1, vm_json(A, 512)), raw(B, 1, vm_json(B, 1024))]);
        assert_eq!(out.iter().map(|e| ram(e)).collect::<Vec<_>>(), vec![Some(512), Some(1024)]);
        assert_eq!(fetched.len(), 2);
        // Unchanged: nothing fetched, the same answer.
        let (out, fetched) = run(vec![listed(A, 1, 10), listed(B, 1, 10)], vec![]);
        assert!(fetched.is_empty());
        assert_eq!(out.iter().map(|e| ram(e)).collect::<Vec<_>>(), vec![Some(512), Some(1024)]);
        // A rewritten: fetched and decoded again; B still from the cache.
        let (out, fetched) = run(vec![listed(A, 2, 11), listed(B, 1, 10)], vec![raw(A, 2, vm_json(A, 2048))]);
        assert_eq!(fetched, vec![A.to_string()]);
        assert_eq!(ram(&out[0]), Some(2048));
        // Written again between listing and fetch: answered as fetched, not kept.
        let (out, _) = run(vec![listed(A, 3, 11)], vec![raw(A, 4, vm_json(A, 4096))]);
        assert_eq!(ram(&out[0]), Some(4096));
        assert!(cache.lookup(&[listed(A, 3, 11)])[0].is_none() && cache.lookup(&[listed(A, 4, 11)])[0].is_none());
        // Deleted between listing and fetch: left out.
        let (out, _) = run(vec![listed(A, 5, 11), listed(B, 1, 10)], vec![]);
        assert_eq!(out.len(), 1);
        // A damaged record is kept as damaged, never failing the others.
        let (out, _) = run(vec![listed(A, 6, 3)], vec![raw(A, 6, "{\"ram\": \"lots\"}".into())]);
        assert!(matches!(*out[0], Stored::Damaged(_)));
        // A rebuild drops what it no longer lists.
        let (kept, _) = run(vec![listed(B, 1, 10)], vec![]);
        cache.retain(&kept);
        assert_eq!(cache.len(), 1);
    }
}
