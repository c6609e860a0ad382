//! Fencing job steps with their lease: a headnode that lost a job's lease (paused, cut
//! off, its renewal late) must not go on writing as if it still ran the job — another
//! headnode has taken it over.
//!
//! The job runner runs each step inside [`fenced`], which names the job and the lease
//! generation it holds (kept current by the lease keeper). [`FencedStore`] wraps the
//! store: every write batch made inside a fenced step carries a check that the lease is
//! still at that generation, in the same transaction, so a step's writes land only while
//! its headnode holds the lease. A lease known lost fails the write at once. Writes outside
//! a step (API requests, the keeper itself) are not fenced.

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use nereid_store::{BucketDef, Cond, Filter, ListQuery, Object, Op, RawObject, Result, Store, StoreError};
use tokio::sync::Mutex as AsyncMutex;
use uuid::Uuid;

use crate::buckets::JOB_LEASES;

/// The lease a running step writes under.
#[derive(Clone)]
pub struct Fence {
    pub job: Uuid,
    /// The lease's current generation; `None` once lost. The keeper renews it under this
    /// lock, so a write never races a renewal.
    pub lease: Arc<AsyncMutex<Option<i64>>>,
}

tokio::task_local! {
    static FENCE: Fence;
}

/// Runs `f` (a step) fenced by `fence`.
pub async fn fenced<F: Future>(fence: Fence, f: F) -> F::Output {
    FENCE.scope(fence, f).await
}

/// The store, with fenced writes inside job steps.
pub struct FencedStore(pub Arc<dyn Store>);

#[async_trait]
impl Store for FencedStore {
    fn backend(&self) -> &'static str {
        self.0.backend()
    }
    async fn ensure_bucket(&self, def: &BucketDef) -> Result<()> {
        self.0.ensure_bucket(def).await
    }
    async fn close(&self) {
        self.0.close().await
    }
    async fn get(&self, bucket: &str, key: &str) -> Result<Option<Object>> {
        self.0.get(bucket, key).await
    }
    async fn list(&self, bucket: &str, query: &ListQuery) -> Result<Vec<Object>> {
        self.0.list(bucket, query).await
    }
    async fn list_raw(&self, bucket: &str, query: &ListQuery) -> Result<Vec<RawObject>> {
        self.0.list_raw(bucket, query).await
    }
    async fn list_versions(&self, bucket: &str, query: &ListQuery) -> Result<Vec<nereid_store::RowVersion>> {
        self.0.list_versions(bucket, query).await
    }
    async fn get_raw_many(&self, bucket: &str, keys: &[String]) -> Result<Vec<RawObject>> {
        self.0.get_raw_many(bucket, keys).await
    }
    async fn count(&self, bucket: &str, filter: &Filter) -> Result<i64> {
        self.0.count(bucket, filter).await
    }
    async fn batch(&self, mut ops: Vec<Op>) -> Result<Vec<i64>> {
        let Ok(fence) = FENCE.try_with(Fence::clone) else { return self.0.batch(ops).await };
        let held = fence.lease.lock().await;
        let key = fence.job.to_string();
        let Some(generation) = *held else {
            return Err(StoreError::Conflict {
                bucket: JOB_LEASES.name.into(),
                key,
                expected: Cond::Exists,
                found: None,
                op_index: ops.len(),
            });
        };
        ops.push(Op::check(JOB_LEASES.name, key, Cond::Generation(generation)));
        let mut gens = self.0.batch(ops).await?;
        gens.pop();
        Ok(gens)
    }
}
