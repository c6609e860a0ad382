//! The QEMU test lock (`nereid_testkit::qemu::QemuLock`), which keeps the suite correct under
//! plain `cargo test` as under nextest: one test's guests at a time on the machine, across
//! threads (one test binary's tests) and processes (several binaries, `flock(1)` here).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nereid_testkit::qemu::{QemuLock, Reaper};

/// Whether another process can take the lock on `path` right now (`flock -n`).
fn free_for_another_process(path: &std::path::Path) -> bool {
    let status = Command::new("flock").arg("-n").arg(path).arg("true").status().expect("flock(1), from util-linux");
    status.success()
}

#[test]
fn threads_hold_the_lock_one_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lock");
    let spans = Arc::new(Mutex::new(Vec::new()));
    let holders = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (path, spans, holders) = (path.clone(), spans.clone(), holders.clone());
            std::thread::spawn(move || {
                let lock = QemuLock::acquire_at(&path).unwrap();
                assert_eq!(holders.fetch_add(1, Ordering::SeqCst), 0, "two threads hold the lock at once");
                let start = Instant::now();
                std::thread::sleep(Duration::from_millis(100));
                holders.fetch_sub(1, Ordering::SeqCst);
                let end = Instant::now();
                drop(lock);
                spans.lock().unwrap().push((start, end));
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut spans = spans.lock().unwrap().clone();
    spans.sort();
    assert_eq!(spans.len(), 4);
    for w in spans.windows(2) {
        assert!(w[0].1 <= w[1].0, "overlapping holds: {spans:?}");
    }
}

#[test]
fn another_process_waits_while_it_is_held() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lock");
    let lock = QemuLock::acquire_at(&path).unwrap();
    assert!(!free_for_another_process(&path), "another process took the lock while this one held it");
    drop(lock);
    assert!(free_for_another_process(&path), "the lock was not let go on drop");
}

#[test]
fn a_process_waits_for_another_process_to_let_go() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lock");
    let done = dir.path().join("done");
    // The other process writes `done` last thing before it lets go.
    let mut holder = Command::new("flock").arg(&path).args(["sh", "-c", r#"sleep 0.5; : > "$0""#]).arg(&done).spawn().unwrap();
    // Until the child holds it.
    while free_for_another_process(&path) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let _lock = QemuLock::acquire_at(&path).unwrap();
    assert!(done.exists(), "took the lock while another process held it");
    holder.wait().unwrap();
}

/// Every test that boots guests makes a `Reaper` first; it holds the machine-wide lock.
#[test]
fn a_reaper_holds_the_machine_wide_lock_until_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let reaper = Reaper(dir.path().to_path_buf());
    assert_eq!(reaper.dir(), dir.path());
    assert!(!free_for_another_process(&QemuLock::path()), "a Reaper does not hold {}", QemuLock::path().display());
    drop(reaper);
}

/// Waiting inside a test's multi-threaded runtime leaves its other tasks (an in-process
/// headnode, say) running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_in_a_runtime_lets_its_tasks_run() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lock");
    let mut holder = Command::new("flock").arg(&path).args(["sleep", "1"]).spawn().unwrap();
    while free_for_another_process(&path) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ticks = Arc::new(AtomicUsize::new(0));
    let t = ticks.clone();
    let ticker = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(10)).await;
            t.fetch_add(1, Ordering::SeqCst);
        }
    });
    let before = ticks.load(Ordering::SeqCst);
    let _lock = QemuLock::acquire_at(&path).unwrap();
    let during = ticks.load(Ordering::SeqCst) - before;
    ticker.abort();
    holder.wait().unwrap();
    assert!(during >= 5, "the runtime's tasks stalled while waiting for the lock ({during} ticks)");
}
