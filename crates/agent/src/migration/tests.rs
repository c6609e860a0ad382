//! A sim VM migrating between two nodes through the real relay; the handshake's refusals.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use nereid_types::agent::{Definition, Desired, Ensure, MetadataWrite};
use nereid_types::migration::{AgentProgress, Order, Role, Step};
use uuid::Uuid;

use super::relay::{Relay, Source};
use super::*;
use crate::backend::Backend;
use crate::backend::sim::{Delays, SIM_MIRROR_BYTES, Sim};
use crate::supervisor::Upstream;

struct NoHeadnode;

#[async_trait::async_trait]
impl Upstream for NoHeadnode {
    async fn metadata_write(&self, _: Uuid, _: &MetadataWrite) -> Result<(), String> {
        Err("no headnode in this test".into())
    }
}

struct Side {
    node: Arc<Node>,
    sim: Arc<Sim>,
    m: Arc<Migrations>,
}

async fn side(dir: &std::path::Path, relay: &Relay) -> Side {
    let fast =
        Delays { create: Duration::from_millis(10), start: Duration::ZERO, stop: Duration::ZERO, crash_after: Duration::from_secs(60) };
    std::fs::create_dir_all(dir).unwrap();
    let sim = Arc::new(Sim::open(dir.join("sim.json"), fast));
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::mem::forget(rx);
    let node = Node::open(Uuid::new_v4(), sim.clone(), Arc::new(NoHeadnode), dir.join("node"), tx).await.unwrap();
    let m = Migrations::open(node.clone()).unwrap();
    relay.register(node.uuid, &m);
    Side { node, sim, m }
}

fn ensure_with(vm: Uuid, state: Desired, fault: Option<&str>) -> Ensure {
    let mut definition: Definition = serde_json::from_value(serde_json::json!({
        "uuid": vm, "brand": "bhyve", "owner_uuid": Uuid::nil(), "ram": 64, "vcpus": 1, "disks": [], "nics": []
    }))
    .unwrap();
    if let Some(f) = fault {
        definition.internal_metadata.insert(nereid_types::agent::SIM_FAULT_KEY.into(), serde_json::json!(f));
    }
    Ensure {
        state,
        definition,
        definition_generation: 1,
        reboot_generation: 0,
        snapshots: vec![],
        rollback_to: None,
        rollback_generation: 0,
    }
}

async fn wait_vm(node: &Node, vm: Uuid, state: &str) {
    for _ in 0..200 {
        if node.get(vm).is_some_and(|s| s.state == state) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("VM {vm} never became {state}: {:?}", node.get(vm));
}

/// Gives the order and waits for its step to end; answers the final progress.
async fn step(m: &Arc<Migrations>, vm: Uuid, o: &Order, step: Step) -> AgentProgress {
    // As the headnode: the VM's definition goes with prepare only.
    let ensure = if step == Step::Prepare { o.ensure.clone() } else { None };
    let o = Order { step, ensure, ..o.clone() };
    let first = m.order(vm, o).unwrap();
    assert_eq!(first.step, step);
    for _ in 0..400 {
        let p = m.get(vm).unwrap();
        if p.state != "running" {
            return p;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("step {step:?} never ended: {:?}", m.get(vm));
}

struct Pair {
    _dir: tempfile::TempDir,
    relay: Arc<Relay>,
    src: Side,
    dst: Side,
    vm: Uuid,
    source: Order,
    target: Order,
}

async fn pair(live: bool) -> Pair {
    pair_with(live, None).await
}

async fn pair_with(live: bool, fault: Option<&str>) -> Pair {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let src = side(&dir.path().join("a"), &relay).await;
    let dst = side(&dir.path().join("b"), &relay).await;
    let vm = Uuid::new_v4();
    src.node.ensure(ensure_with(vm, Desired::Running, fault));
    wait_vm(&src.node, vm, "running").await;
    let migration = Uuid::new_v4();
    let target = Order {
        migration,
        role: Role::Target,
        step: Step::Prepare,
        token: "s3cret".into(),
        live,
        ensure: Some(ensure_with(vm, Desired::Stopped, fault)),
        peer: None,
        peer_server: None,
        bandwidth_mbps: None,
    };
    let source =
        Order { role: Role::Source, ensure: None, peer: Some(relay.addr.to_string()), peer_server: Some(dst.node.uuid), ..target.clone() };
    Pair { _dir: dir, relay, src, dst, vm, source, target }
}

#[tokio::test]
async fn a_running_vm_moves_live_prepare_sync_switch_resume_release() {
    let p = pair(true).await;
    let (vm, src, dst) = (p.vm, &p.src, &p.dst);

    let prep = step(&dst.m, vm, &p.target, Step::Prepare).await;
    assert!(prep.is_done(), "{prep:?}");
    assert_eq!(dst.node.get(vm).unwrap().state, "stopped", "the target waits stopped");
    assert!(step(&src.m, vm, &p.source, Step::Prepare).await.is_done());
    // The same order again answers the progress; it does not start anything new.
    assert!(dst.m.order(vm, p.target.clone()).unwrap().is_done());

    let sync = step(&src.m, vm, &p.source, Step::Sync).await;
    assert!(sync.is_done(), "{sync:?}");
    assert_eq!((sync.bytes_done, sync.bytes_total), (SIM_MIRROR_BYTES, SIM_MIRROR_BYTES));
    assert!(sync.bytes_sent >= SIM_MIRROR_BYTES, "{sync:?}");
    // The target's backend took every byte of the disk off the relay.
    for _ in 0..100 {
        if dst.sim.received(vm).0 == SIM_MIRROR_BYTES {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(dst.sim.received(vm).0, SIM_MIRROR_BYTES);

    let switch = step(&src.m, vm, &p.source, Step::Switch).await;
    assert!(switch.is_done() && switch.live, "{switch:?}");
    assert!(switch.pause_ms.is_some());
    for _ in 0..100 {
        if dst.sim.received(vm).1 == 64 * 1024 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(dst.sim.received(vm).1, 64 * 1024, "the guest's RAM arrived");
    assert!(dst.m.get(vm).unwrap().bytes_sent >= SIM_MIRROR_BYTES + 64 * 1024, "the target counts what it took off the wire");

    assert!(step(&dst.m, vm, &p.target, Step::Resume).await.is_done());
    assert_eq!(dst.node.get(vm).unwrap().state, "running", "the VM runs on the target");
    assert!(step(&src.m, vm, &p.source, Step::Release).await.is_done());
    assert_eq!(src.node.get(vm).unwrap().state, "stopped", "the source's copy is kept, stopped");

    // A restarted agent still answers, and a finished migration makes way for a new one.
    let again = Migrations::open(src.node.clone()).unwrap();
    let p2 = again.get(vm).unwrap();
    assert!(p2.is_done() && p2.step == Step::Release, "{p2:?}");
    let next = Order { migration: Uuid::new_v4(), ..p.source.clone() };
    assert!(again.order(vm, next).is_ok());
}

#[tokio::test]
async fn an_offline_move_stops_copies_the_files_and_starts_on_the_target() {
    let p = pair(false).await;
    let (vm, src, dst) = (p.vm, &p.src, &p.dst);
    assert!(step(&dst.m, vm, &p.target, Step::Prepare).await.is_done());
    let switch = step(&src.m, vm, &p.source, Step::Switch).await;
    assert!(switch.is_done() && !switch.live, "{switch:?}");
    assert_eq!(src.node.get(vm).unwrap().state, "stopped");
    let copied = std::fs::read(dst.node.backend().migration_file_path(vm, "disk0").unwrap()).unwrap();
    assert_eq!(copied, crate::backend::sim::sim_disk(vm), "the disk file arrived whole");
    assert_eq!(switch.bytes_done, crate::backend::sim::SIM_DISK_SIZE as u64);

    // The headnode could not commit: the source runs again.
    assert!(step(&src.m, vm, &p.source, Step::Resume).await.is_done());
    wait_vm(&src.node, vm, "running").await;
    // It switches again and this time the target takes it.
    assert!(step(&src.m, vm, &p.source, Step::Switch).await.is_done());
    assert!(step(&dst.m, vm, &p.target, Step::Resume).await.is_done());
    assert_eq!(dst.node.get(vm).unwrap().state, "running");
}

#[tokio::test]
async fn abort_on_the_target_removes_the_vm_and_another_migration_is_refused_meanwhile() {
    let p = pair(true).await;
    let (vm, dst) = (p.vm, &p.dst);
    assert!(step(&dst.m, vm, &p.target, Step::Prepare).await.is_done());
    let other = Order { migration: Uuid::new_v4(), ..p.target.clone() };
    match dst.m.order(vm, other) {
        Err(OrderError::Conflict(m)) => assert!(m.contains(&p.target.migration.to_string()), "{m}"),
        x => panic!("{x:?}"),
    }
    let abort = step(&dst.m, vm, &p.target, Step::Abort).await;
    assert!(abort.is_done(), "{abort:?}");
    assert!(dst.node.get(vm).is_none(), "the target's VM is gone");
    assert!(!dst.sim.exists(vm).await);
}

#[tokio::test]
async fn the_handshake_refuses_a_wrong_token_vm_or_migration() {
    let p = pair(true).await;
    let (vm, dst) = (p.vm, &p.dst);
    assert!(step(&dst.m, vm, &p.target, Step::Prepare).await.is_done());
    let source = |migration, vm, token: &str| Source {
        migration,
        server: dst.node.uuid,
        vm,
        token: token.into(),
        peer: p.relay.addr.to_string(),
        sent: Default::default(),
        bucket: None,
        error: Default::default(),
    };
    let id = p.target.migration;
    let e = source(id, vm, "wrong").connect("nbd").await.unwrap_err();
    assert!(e.contains("does not match its token"), "{e}");
    let e = source(id, Uuid::new_v4(), "s3cret").connect("nbd").await.unwrap_err();
    assert!(e.contains("no migration of VM"), "{e}");
    let e = source(Uuid::new_v4(), vm, "s3cret").connect("nbd").await.unwrap_err();
    assert!(e.contains("is not expected"), "{e}");
    let e = source(id, vm, "s3cret").connect("file:../../etc/passwd").await.unwrap_err();
    assert!(e.contains("no migration file"), "{e}");
    assert!(source(id, vm, "s3cret").connect("nbd").await.is_ok(), "the right token is admitted");
}

#[tokio::test]
async fn a_step_running_when_the_agent_died_reports_failed_after_a_restart() {
    let p = pair(true).await;
    let (vm, src) = (p.vm, &p.src);
    // The sync never ends: the peer takes no connection.
    let dead = Order { peer: Some("127.0.0.1:9".into()), ..p.source.clone() };
    let first = src.m.order(vm, Order { step: Step::Sync, ..dead }).unwrap();
    assert_eq!(first.state, "running");
    let again = Migrations::open(src.node.clone()).unwrap();
    let p2 = again.get(vm).unwrap();
    assert_eq!(p2.state, "failed");
    assert_eq!(p2.error.as_deref(), Some("the agent restarted during sync"));
}

#[tokio::test]
async fn the_sim_faults_fail_prepare_transfer_and_switch_with_the_reason() {
    use nereid_types::migration::{SIM_FAULT_PREPARE, SIM_FAULT_SWITCH, SIM_FAULT_TRANSFER};
    // Prepare: failed, and nothing is left on the target.
    let p = pair_with(true, Some(SIM_FAULT_PREPARE)).await;
    let prep = step(&p.dst.m, p.vm, &p.target, Step::Prepare).await;
    assert!(prep.is_failed() && prep.error.as_deref().unwrap_or("").contains(SIM_FAULT_PREPARE), "{prep:?}");
    assert!(p.dst.node.get(p.vm).is_none());
    // The failure was answered: the same order tries again (and fails again).
    assert_eq!(p.dst.m.order(p.vm, p.target.clone()).unwrap().state, "running");

    // Transfer: the sync fails saying why; the VM keeps running on the source.
    let p = pair_with(true, Some(SIM_FAULT_TRANSFER)).await;
    assert!(step(&p.dst.m, p.vm, &p.target, Step::Prepare).await.is_done());
    let sync = step(&p.src.m, p.vm, &p.source, Step::Sync).await;
    assert!(sync.is_failed() && sync.error.as_deref().unwrap_or("").contains("cut after"), "{sync:?}");
    assert_eq!(p.src.node.get(p.vm).unwrap().state, "running");

    // Switch: the target's guest dies as it is resumed; the source resumes.
    let p = pair_with(true, Some(SIM_FAULT_SWITCH)).await;
    assert!(step(&p.dst.m, p.vm, &p.target, Step::Prepare).await.is_done());
    assert!(step(&p.src.m, p.vm, &p.source, Step::Switch).await.is_done());
    let resume = step(&p.dst.m, p.vm, &p.target, Step::Resume).await;
    assert!(resume.is_failed() && resume.error.as_deref().unwrap_or("").contains(SIM_FAULT_SWITCH), "{resume:?}");
    assert_eq!(p.dst.node.get(p.vm).unwrap().state, "stopped");
    assert!(step(&p.src.m, p.vm, &p.source, Step::Resume).await.is_done());
    assert_eq!(p.src.node.get(p.vm).unwrap().state, "running");
    assert!(step(&p.dst.m, p.vm, &p.target, Step::Abort).await.is_done());
    assert!(p.dst.node.get(p.vm).is_none());
}

#[test]
fn orders_that_cannot_be_right_are_refused_and_later_orders_keep_what_they_leave_out() {
    let vm = Uuid::new_v4();
    let base = Order {
        migration: Uuid::new_v4(),
        role: Role::Target,
        step: Step::Sync,
        token: "t".into(),
        live: true,
        ensure: None,
        peer: None,
        peer_server: None,
        bandwidth_mbps: None,
    };
    assert!(matches!(check(vm, &base), Err(OrderError::Invalid(m)) if m.contains("no step sync")));
    let prep = Order { step: Step::Prepare, ..base.clone() };
    assert!(matches!(check(vm, &prep), Err(OrderError::Invalid(m)) if m.contains("needs `ensure`")));
    let other = Order { ensure: Some(ensure_with(Uuid::new_v4(), Desired::Stopped, None)), ..prep.clone() };
    assert!(matches!(check(vm, &other), Err(OrderError::Invalid(m)) if m.contains("is not VM")));
    let untokened = Order { role: Role::Source, token: String::new(), ..base.clone() };
    assert!(matches!(check(vm, &untokened), Err(OrderError::Invalid(_))));

    let mut cur = Order { role: Role::Source, step: Step::Prepare, peer: Some("10.0.0.2:7000".into()), bandwidth_mbps: Some(100), ..base };
    let next = Order { step: Step::Switch, peer: None, bandwidth_mbps: None, ..cur.clone() };
    merge(&mut cur, &next);
    assert_eq!((cur.step, cur.peer.as_deref(), cur.bandwidth_mbps), (Step::Switch, Some("10.0.0.2:7000"), Some(100)));
}

#[tokio::test]
async fn a_restarted_agent_leaves_a_held_target_to_its_migration() {
    let p = pair(true).await;
    let (vm, dst) = (p.vm, &p.dst);
    assert!(step(&dst.m, vm, &p.target, Step::Prepare).await.is_done());
    // The process waiting for the guest runs, as far as the backend can tell.
    dst.sim.migrate_resume_target(vm).await.unwrap();
    dst.node.shutdown();
    let dir = p._dir.path().join("b");
    let sim = Arc::new(Sim::open(dir.join("sim.json"), Delays::default()));
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::mem::forget(rx);
    let node = Node::open(dst.node.uuid, sim, Arc::new(NoHeadnode), dir.join("node"), tx).await.unwrap();
    let m = Migrations::open(node.clone()).unwrap();
    assert_eq!(node.get(vm).unwrap().state, "stopped", "not re-adopted as a VM that started by itself");
    assert!(m.get(vm).unwrap().is_done(), "the prepare stays done");
}
