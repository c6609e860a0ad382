//! Group commit for the SQLite backend: concurrent write batches share one transaction
//! and so one fsync.
//!
//! With `synchronous=FULL` every COMMIT waits for an fsync of the WAL, and SQLite has one
//! writer at a time, so batches committed one by one queue behind each other's fsyncs.
//! Here a batch is queued instead, and whoever holds the writer lock commits everything
//! queued at once:
//!
//! ```text
//!   batch(ops) ──► queue ──► wait for (my answer | the writer lock)
//!                                 │answer              │lock: I lead
//!                                 ▼                    ▼
//!                              return        take ≤ 64 batches (≤ 4096 ops) off the queue,
//!                                            spawn the group's run (it keeps the lock),
//!                                            wait again
//!
//!   the group's run:  BEGIN IMMEDIATE
//!                     for each batch (in queue order; one whose caller is gone is skipped):
//!                         SAVEPOINT; its ops (`now` taken as it starts); RELEASE
//!                         ── it fails: ROLLBACK TO the savepoint; that batch's answer is its error
//!                         (no savepoint for a batch whose failure cannot have written anything,
//!                         see `needs_savepoint`)
//!                     COMMIT (one fsync) ── or ROLLBACK when no batch succeeded
//!                     answer every batch, then release the writer lock
//! ```
//!
//! Each caller sees exactly what a transaction of its own would give: its batch is atomic
//! (the savepoint undoes a failed batch's earlier ops and nothing else), later batches see
//! earlier ones as if they had committed first (generations and conditions as in a serial
//! order, the queue's), and an `Ok` is only answered after the COMMIT holding the batch
//! returned. If the COMMIT fails, every batch that would have landed gets that error (a
//! batch that had already failed keeps its own). If the transaction itself breaks midway
//! (SQLite rolls it back on I/O errors or a full disk, so its savepoint is gone), the
//! batches run so far get the error and those not yet run go back to the head of the
//! queue for the next group. A batch run without a savepoint that fails with an error of
//! the database gets that error alone: nothing of the transaction lands, and every other
//! batch of the group goes back to the head of the queue. A group of one batch runs
//! without a savepoint: it is its own transaction, as before.
//!
//! The group runs in its own task, on the store's writer thread (its statements wait for
//! nothing but each other), so a caller that is cancelled (its future dropped) cannot cut
//! a group short: a batch whose caller left before the group started is skipped (as a
//! caller cancelled while waiting for the writer never wrote), one already running
//! completes unless the store itself is dropped meanwhile (then it is rolled back, as in a
//! crash). Every caller with a batch still queued keeps waiting for the writer lock, so a
//! queued batch is always taken by some leader.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};

use sqlx::{Connection, SqliteConnection};
use tokio::sync::{Mutex, oneshot};

use crate::ops::{self, Exec};
use crate::sql::{Dialect, Sql};
use crate::sqlite_conns::Conns;
use crate::{Op, Result, StoreError};

/// At most this many batches share a transaction…
const MAX_BATCHES: usize = 64;
/// …and at most this many ops (a lone bigger batch still runs, alone).
const MAX_OPS: usize = 4096;

/// A batch waiting for a group, and where its answer goes.
struct Pending {
    ops: Vec<Op>,
    reply: oneshot::Sender<Result<Vec<i64>>>,
}

type Queue = Arc<StdMutex<VecDeque<Pending>>>;

/// The SQLite writer: queues batches and commits them in groups.
pub(crate) struct GroupCommit {
    conns: Arc<Conns>,
    /// Held by the group being run, and by DDL (migrations, indexes).
    writer: Arc<Mutex<()>>,
    queue: Queue,
    /// Transactions committed (for tests).
    commits: Arc<AtomicU64>,
    /// Where groups run (see [`WriterThread`]).
    thread: WriterThread,
}

/// A thread of its own that runs the groups. A group is a chain of statements, each a
/// round trip to the connection's worker thread; run as a task of the caller's runtime,
/// every step of that chain waited behind whatever else was ready there (request
/// handlers, rendering), and the one writer everybody waits for went at the pace of the
/// busiest runtime. Here it waits only for its own statements.
struct WriterThread {
    handle: tokio::runtime::Handle,
    /// Dropped with the store: the thread's runtime ends (a group under way is dropped
    /// with it, as in a crash; its callers get no answer and fail).
    _stop: oneshot::Sender<()>,
}

impl WriterThread {
    fn start() -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        let (tx, rx) = std::sync::mpsc::channel();
        // The runtime is made, run and dropped on the thread (a runtime dropped where the
        // store is opened, inside another runtime, would panic).
        let spawned = std::thread::Builder::new().name("sqlite-writer".into()).spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            if tx.send(rt.handle().clone()).is_ok() {
                rt.block_on(async {
                    let _ = stopped.await;
                });
            }
        });
        // Without a thread of its own (the system refuses one, or its runtime), groups run
        // on the caller's runtime.
        let handle = spawned.ok().and_then(|_| rx.recv().ok()).unwrap_or_else(tokio::runtime::Handle::current);
        Self { handle, _stop: stop }
    }
}

impl GroupCommit {
    pub(crate) fn new(conns: Arc<Conns>, writer: Arc<Mutex<()>>) -> Self {
        Self { conns, writer, queue: Arc::default(), commits: Arc::default(), thread: WriterThread::start() }
    }

    /// Runs `ops` atomically in the next group; returns each put's new generation (0 for
    /// other ops) once the group's COMMIT returned.
    pub(crate) async fn batch(&self, ops: Vec<Op>) -> Result<Vec<i64>> {
        let (reply, mut answer) = oneshot::channel();
        lock(&self.queue).push_back(Pending { ops, reply });
        loop {
            tokio::select! {
                biased;
                r = &mut answer => {
                    // The group's task only drops an answer unsent if it panicked or its
                    // runtime is shutting down.
                    return r.unwrap_or_else(|_| Err(StoreError::Backend(sqlx::Error::WorkerCrashed)));
                }
                guard = self.writer.clone().lock_owned() => {
                    let group = take_group(&self.queue);
                    if group.is_empty() {
                        // Our batch is in a group that another leader already ran.
                        continue;
                    }
                    let (conns, queue, commits) = (self.conns.clone(), self.queue.clone(), self.commits.clone());
                    self.thread.handle.spawn(async move {
                        run_group(conns, group, &queue, &commits).await;
                        drop(guard);
                    });
                }
            }
        }
    }

    #[cfg(test)]
    fn queued(&self) -> usize {
        lock(&self.queue).len()
    }
}

/// The queue's lock; a panic elsewhere while holding it leaves a consistent queue (every
/// change is one push or pop), so a poisoned lock is taken as is.
fn lock(queue: &Queue) -> std::sync::MutexGuard<'_, VecDeque<Pending>> {
    queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Takes the next group off the queue, dropping batches whose callers have gone.
fn take_group(queue: &Queue) -> Vec<Pending> {
    let mut q = lock(queue);
    let mut group = Vec::new();
    let mut ops = 0;
    while let Some(p) = q.front() {
        if p.reply.is_closed() {
            q.pop_front();
            continue;
        }
        if !group.is_empty() && (group.len() == MAX_BATCHES || ops + p.ops.len() > MAX_OPS) {
            break;
        }
        ops += p.ops.len();
        group.extend(q.pop_front());
    }
    group
}

/// The same failure for every batch of a group (sqlx errors cannot be cloned).
fn shared(e: &StoreError) -> StoreError {
    StoreError::Backend(sqlx::Error::Io(std::io::Error::other(format!("the transaction holding this batch failed: {e}"))))
}

/// How one batch of a group ended.
enum Step {
    Done(Vec<i64>),
    /// The batch failed and was rolled back to its savepoint; the group goes on.
    Failed(StoreError),
    /// The batch failed and took the transaction with it.
    Broken(StoreError),
    /// The batch, run without a savepoint, failed with an error of the database: it is
    /// answered alone, and the others of the group run again in the next one.
    Alone(StoreError),
}

async fn run_group(conns: Arc<Conns>, group: Vec<Pending>, queue: &Queue, commits: &AtomicU64) {
    let mut conn = match conns.acquire().await {
        Ok(c) => c,
        Err(e) => return fail_all(group, e),
    };
    let result = {
        let mut tx = match conn.begin_with("BEGIN IMMEDIATE").await {
            Ok(tx) => tx,
            Err(e) => return fail_all(group, StoreError::from(e)),
        };
        let alone = group.len() == 1;
        let mut answers: Vec<(Pending, Result<Vec<i64>>)> = Vec::with_capacity(group.len());
        let mut rest = group.into_iter();
        let mut broken = None;
        let mut lone = None;
        for p in rest.by_ref() {
            if p.reply.is_closed() {
                continue;
            }
            match run_one(&mut tx, &p.ops, alone).await {
                Step::Done(gens) => answers.push((p, Ok(gens))),
                Step::Failed(e) => answers.push((p, Err(e))),
                Step::Broken(e) => {
                    broken = Some(shared(&e));
                    answers.push((p, Err(e)));
                    break;
                }
                Step::Alone(e) => {
                    lone = Some((p, e));
                    break;
                }
            }
        }
        if let Some((bad, e)) = lone {
            // Nothing of this transaction lands. Every other batch of it, run or not (its
            // outcome may have depended on what now does not land), goes back to the queue
            // in the same order; only the failing one is answered. The connection's
            // transaction state is unknown: it is closed.
            let mut q = lock(queue);
            for p in rest.rev().chain(answers.into_iter().rev().map(|(p, _)| p)) {
                q.push_front(p);
            }
            drop(q);
            drop(tx);
            Ok((vec![(bad, Err(e))], false))
        } else if let Some(e) = broken {
            // Nothing of this transaction lands: the batches that had succeeded get the
            // error, those not run yet go first in the next group.
            let mut q = lock(queue);
            for p in rest.rev() {
                q.push_front(p);
            }
            drop(q);
            drop(tx);
            Err((answers, e))
        } else if answers.iter().all(|(_, r)| r.is_err()) {
            // Nothing to keep (a lone batch's partial writes included).
            let healthy = tx.rollback().await.is_ok();
            Ok((answers, healthy))
        } else {
            match tx.commit().await {
                Ok(()) => {
                    commits.fetch_add(1, Ordering::Relaxed);
                    Ok((answers, true))
                }
                Err(e) => Err((answers, StoreError::from(e))),
            }
        }
    };
    match result {
        Ok((answers, healthy)) => {
            // An unhealthy connection is dropped unreleased: closed, never lent again.
            if healthy {
                conn.release();
            }
            for (p, r) in answers {
                let _ = p.reply.send(r);
            }
        }
        Err((answers, e)) => {
            // The connection's transaction state is unknown: dropped unreleased, closed.
            drop(conn);
            for (p, r) in answers {
                let _ = p.reply.send(if r.is_ok() { Err(shared(&e)) } else { r });
            }
        }
    }
}

fn fail_all(group: Vec<Pending>, e: StoreError) {
    for p in group {
        let _ = p.reply.send(Err(shared(&e)));
    }
}

/// Whether a failure of `batch` may leave something of it written, and so needs a
/// savepoint to undo: only when an op that writes comes before the last, or the last op
/// writes even as it fails (a delete conditioned on absence deletes, then finds the row
/// was there). A put or delete that fails its condition matches no row and writes
/// nothing; a check never writes.
fn needs_savepoint(batch: &[Op]) -> bool {
    let Some((last, before)) = batch.split_last() else { return false };
    before.iter().any(|op| !matches!(op, Op::Check { .. })) || matches!(last, Op::Delete { cond: crate::Cond::Absent, .. })
}

/// Runs one batch inside the group's transaction: under a savepoint unless it is alone
/// or its failure cannot have written anything (most batches: a single put, or a check
/// and a put). Without a savepoint, a failed condition leaves the transaction as it was;
/// an error of the database may have taken the transaction with it, so that batch is
/// answered with it and the rest of the group runs again.
async fn run_one(tx: &mut SqliteConnection, batch: &[Op], alone: bool) -> Step {
    let now = crate::now_ms();
    if alone {
        return match ops::batch(&mut *tx, Dialect::Sqlite, batch, now).await {
            Ok(gens) => Step::Done(gens),
            // The group rolls back: nothing of this batch lands.
            Err(e) => Step::Failed(e),
        };
    }
    if !needs_savepoint(batch) {
        return match ops::batch(&mut *tx, Dialect::Sqlite, batch, now).await {
            Ok(gens) => Step::Done(gens),
            // The database's own error may have rolled the transaction back.
            Err(e @ StoreError::Backend(_)) => Step::Alone(e),
            // A failed condition (or a request refused before any SQL ran) wrote nothing.
            Err(e) => Step::Failed(e),
        };
    }
    // Through `Exec` (boxed futures): sqlx's own would not be `Send` for every lifetime,
    // as the group's spawned task needs.
    let stmt = |text: &str| Sql::new(Dialect::Sqlite, text);
    if let Err(e) = tx.exec(&stmt("SAVEPOINT nereid_batch")).await {
        return Step::Broken(e.into());
    }
    match ops::batch(&mut *tx, Dialect::Sqlite, batch, now).await {
        Ok(gens) => match tx.exec(&stmt("RELEASE nereid_batch")).await {
            Ok(_) => Step::Done(gens),
            Err(e) => Step::Broken(e.into()),
        },
        Err(e) => match tx.script("ROLLBACK TO nereid_batch;\nRELEASE nereid_batch").await {
            Ok(_) => Step::Failed(e),
            // SQLite already rolled the whole transaction back (I/O error, full disk).
            Err(_) => Step::Broken(e),
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use serde_json::json;

    use crate::sqlite::SqliteStore;
    use crate::{Cond, ListQuery, Op, Store};

    use super::*;

    async fn store() -> (tempfile::TempDir, Arc<SqliteStore>) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("g.db")).await.unwrap();
        (dir, Arc::new(store))
    }

    /// Holds the writer while `batches` are queued, then lets them go as one group.
    async fn one_group(store: &Arc<SqliteStore>, batches: Vec<Vec<Op>>) -> Vec<tokio::task::JoinHandle<Result<Vec<i64>>>> {
        let guard = store.group.writer.clone().lock_owned().await;
        let mut handles = Vec::new();
        for ops in batches {
            let s = store.clone();
            handles.push(tokio::spawn(async move { s.batch(ops).await }));
            // In order: the queue is the group's serial order.
            wait_queued(store, handles.len()).await;
        }
        drop(guard);
        handles
    }

    async fn wait_queued(store: &SqliteStore, n: usize) {
        while store.group.queued() < n {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn many_concurrent_batches_all_land() {
        let (_dir, store) = store().await;
        let mut handles = Vec::new();
        for i in 0..300 {
            let s = store.clone();
            handles.push(tokio::spawn(async move {
                s.batch(vec![
                    Op::put("b", format!("k{i}"), json!({"i": i}), Cond::Absent),
                    Op::put("c", format!("k{i}"), json!(i), Cond::Any),
                ])
                .await
            }));
        }
        for h in handles {
            assert_eq!(h.await.unwrap().unwrap(), vec![1, 1]);
        }
        let all = store.list("b", &ListQuery::all()).await.unwrap();
        assert_eq!(all.len(), 300);
        assert_eq!(store.list("c", &ListQuery::all()).await.unwrap().len(), 300);
        for o in all {
            assert_eq!(o.key, format!("k{}", o.value["i"]));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn queued_batches_commit_as_one_group() {
        let (_dir, store) = store().await;
        let before = store.group.commits.load(Ordering::Relaxed);
        let handles = one_group(&store, (0..20).map(|i| vec![Op::put("b", format!("k{i}"), json!(i), Cond::Absent)]).collect()).await;
        for h in handles {
            assert_eq!(h.await.unwrap().unwrap(), vec![1]);
        }
        assert_eq!(store.group.commits.load(Ordering::Relaxed) - before, 1, "20 queued batches, one COMMIT");
        assert_eq!(store.list("b", &ListQuery::all()).await.unwrap().len(), 20);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_conflicting_batch_fails_alone_and_leaves_nothing() {
        let (_dir, store) = store().await;
        store.put("b", "taken", json!("old"), Cond::Any).await.unwrap();
        let before = store.group.commits.load(Ordering::Relaxed);
        let handles = one_group(
            &store,
            vec![
                vec![Op::put("b", "a", json!(1), Cond::Absent)],
                // Its first op would succeed; its second conflicts: the savepoint undoes both.
                vec![Op::put("b", "partial", json!(2), Cond::Absent), Op::put("b", "taken", json!("new"), Cond::Absent)],
                // Sees the first batch's write, as if it had committed before.
                vec![Op::put("b", "a", json!(3), Cond::Generation(1)), Op::check("b", "partial", Cond::Absent)],
            ],
        )
        .await;
        let mut results = Vec::new();
        for h in handles {
            results.push(h.await.unwrap());
        }
        assert_eq!(results[0].as_ref().unwrap(), &vec![1]);
        match &results[1] {
            Err(StoreError::Conflict { key, op_index: 1, found: Some(1), .. }) => assert_eq!(key, "taken"),
            other => panic!("expected the second op's conflict, got {other:?}"),
        }
        assert_eq!(results[2].as_ref().unwrap(), &vec![2, 0]);
        assert_eq!(store.group.commits.load(Ordering::Relaxed) - before, 1);
        assert!(store.get("b", "partial").await.unwrap().is_none());
        assert_eq!(store.get("b", "taken").await.unwrap().unwrap().value, json!("old"));
        assert_eq!(store.get("b", "a").await.unwrap().unwrap().value, json!(3));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn batches_run_without_a_savepoint_fail_alone_and_write_nothing() {
        let (_dir, store) = store().await;
        store.put("b", "x", json!("old"), Cond::Any).await.unwrap();
        store.put("b", "lease", json!("held"), Cond::Any).await.unwrap();
        let batches = vec![
            // A stale put: no savepoint, fails its condition.
            vec![Op::put("b", "x", json!("stale"), Cond::Generation(7))],
            // A check that fails before the put it guards.
            vec![Op::check("b", "lease", Cond::Generation(9)), Op::put("b", "job", json!("run"), Cond::Any)],
            // A delete conditioned on absence deletes before it fails: this one has one.
            vec![Op::delete("b", "lease", Cond::Absent)],
            vec![Op::put("b", "y", json!("new"), Cond::Absent)],
        ];
        assert!(!needs_savepoint(&batches[0]) && !needs_savepoint(&batches[1]) && !needs_savepoint(&batches[3]));
        assert!(needs_savepoint(&batches[2]));
        assert!(needs_savepoint(&[Op::put("b", "p", json!(1), Cond::Any), Op::check("b", "q", Cond::Absent)]));
        let before = store.group.commits.load(Ordering::Relaxed);
        let handles = one_group(&store, batches).await;
        let mut results = Vec::new();
        for h in handles {
            results.push(h.await.unwrap());
        }
        assert!(matches!(&results[0], Err(StoreError::Conflict { op_index: 0, found: Some(1), .. })), "{:?}", results[0]);
        assert!(matches!(&results[1], Err(StoreError::Conflict { op_index: 0, found: Some(1), .. })), "{:?}", results[1]);
        assert!(matches!(&results[2], Err(StoreError::Conflict { op_index: 0, .. })), "{:?}", results[2]);
        assert_eq!(results[3].as_ref().unwrap(), &vec![1]);
        assert_eq!(store.group.commits.load(Ordering::Relaxed) - before, 1);
        assert_eq!(store.get("b", "x").await.unwrap().unwrap().value, json!("old"));
        assert!(store.get("b", "job").await.unwrap().is_none());
        assert_eq!(store.get("b", "lease").await.unwrap().unwrap().value, json!("held"));
        assert_eq!(store.get("b", "y").await.unwrap().unwrap().value, json!("new"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn each_caller_gets_its_own_generations() {
        let (_dir, store) = store().await;
        // k{i} stands at generation i.
        for i in 1..=8_i64 {
            for _ in 0..i {
                store.put("b", &format!("k{i}"), json!(i), Cond::Any).await.unwrap();
            }
        }
        let handles = one_group(
            &store,
            (1..=8_i64)
                .map(|i| {
                    let mut ops = vec![Op::put("b", format!("k{i}"), json!(-i), Cond::Generation(i))];
                    // Different lengths, so a mixed-up answer shows.
                    for j in 0..i {
                        ops.push(Op::put("b", format!("new{i}-{j}"), json!(j), Cond::Absent));
                    }
                    ops
                })
                .collect(),
        )
        .await;
        for (i, h) in (1..=8_i64).zip(handles) {
            let gens = h.await.unwrap().unwrap();
            let mut want = vec![i + 1];
            want.extend(std::iter::repeat_n(1, i as usize));
            assert_eq!(gens, want, "batch {i}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_caller_cancelled_while_queued_does_not_break_the_group() {
        let (_dir, store) = store().await;
        let guard = store.group.writer.clone().lock_owned().await;
        let mut handles = Vec::new();
        for key in ["first", "cancelled", "last"] {
            let s = store.clone();
            handles.push(tokio::spawn(async move { s.batch(vec![Op::put("b", key, json!(key), Cond::Absent)]).await }));
            wait_queued(&store, handles.len()).await;
        }
        handles[1].abort();
        assert!(handles.remove(1).await.unwrap_err().is_cancelled());
        drop(guard);
        for h in handles {
            assert_eq!(h.await.unwrap().unwrap(), vec![1]);
        }
        assert!(store.get("b", "first").await.unwrap().is_some());
        assert!(store.get("b", "last").await.unwrap().is_some());
        assert!(store.get("b", "cancelled").await.unwrap().is_none(), "a batch whose caller left before its group ran is not written");
        // The store goes on writing.
        assert_eq!(store.put("b", "after", json!(1), Cond::Absent).await.unwrap(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn groups_are_bounded_and_a_long_queue_drains() {
        let (_dir, store) = store().await;
        let before = store.group.commits.load(Ordering::Relaxed);
        let n = MAX_BATCHES * 2 + 5;
        let handles = one_group(&store, (0..n).map(|i| vec![Op::put("b", format!("k{i}"), json!(i), Cond::Absent)]).collect()).await;
        for h in handles {
            assert_eq!(h.await.unwrap().unwrap(), vec![1]);
        }
        let commits = store.group.commits.load(Ordering::Relaxed) - before;
        assert!(commits >= 3, "{n} batches need at least 3 groups of {MAX_BATCHES}, got {commits}");
        assert_eq!(store.list("b", &ListQuery::all()).await.unwrap().len(), n);
    }

    #[tokio::test]
    async fn a_lone_failing_batch_writes_nothing() {
        let (_dir, store) = store().await;
        store.put("b", "x", json!(1), Cond::Any).await.unwrap();
        let e = store.batch(vec![Op::put("b", "y", json!(1), Cond::Absent), Op::delete("b", "x", Cond::Generation(9))]).await.unwrap_err();
        assert!(matches!(e, StoreError::Conflict { op_index: 1, .. }), "{e}");
        assert!(store.get("b", "y").await.unwrap().is_none());
        assert!(store.get("b", "x").await.unwrap().is_some());
    }
}
