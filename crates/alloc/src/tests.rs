use rand::SeedableRng;
use rand::rngs::StdRng;
use serde_json::json;

use super::*;

fn id(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

fn server(n: u128, ram_mib: u64) -> Server {
    Server {
        uuid: id(n),
        hostname: format!("cn{n}"),
        setup: true,
        status: Status::Running,
        reserved: false,
        reservoir: false,
        headnode: false,
        traits: Map::new(),
        nic_tags: vec!["external".into()],
        nic_tag_problems: Default::default(),
        cpus: 8,
        ram_mib,
        disk_mib: 500_000,
        reservation_ratio: 0.0,
        ratios: Ratios::default(),
        vms: Vec::new(),
    }
}

fn vm(n: u128, owner: u128, ram: u64, cap: Cap) -> VmUsage {
    VmUsage {
        uuid: id(n),
        owner: Some(id(owner)),
        ram_mib: Some(ram),
        disk_mib: Some(10_240),
        cap,
        source: Source::Record,
        on_server: true,
        suspect: false,
        damaged: None,
    }
}

fn req(ram: u64) -> Request {
    Request {
        vm_uuid: id(999),
        owner: id(7),
        ram_mib: ram,
        disk_mib: 10_240,
        vcpus: 1,
        cpu_cap: None,
        traits: Map::new(),
        nic_tags: vec![vec!["external".into()]],
        locality: Locality::default(),
        server: None,
        spread: None,
    }
}

fn rng() -> StdRng {
    StdRng::seed_from_u64(7)
}

#[test]
fn packs_onto_the_fullest_server_that_fits() {
    let mut a = server(1, 16_384);
    a.vms.push(vm(10, 1, 12_000, Cap::Uncapped));
    let mut b = server(2, 16_384);
    b.vms.push(vm(11, 1, 4_000, Cap::Uncapped));
    let c = server(3, 16_384);
    let p = allocate(&[a, b, c], &req(2048), &Config::default(), &mut rng()).unwrap();
    assert_eq!(p.server, id(1));
    assert_eq!(p.steps.first().unwrap().step, "received");
    assert!(p.warnings.is_empty());
}

#[test]
fn no_fit_names_every_server_and_the_step_that_rejected_it() {
    let mut full = server(1, 4096);
    full.vms.push(vm(10, 1, 4096, Cap::Uncapped));
    let mut silent = server(2, 65_536);
    silent.status = Status::Unknown { silent_secs: 42 };
    let mut reserved = server(3, 65_536);
    reserved.reserved = true;
    let mut wrong_tag = server(4, 65_536);
    wrong_tag.nic_tags = vec!["internal".into()];
    let mut small_disk = server(5, 65_536);
    small_disk.disk_mib = 1024;
    let err = allocate(&[full, silent, reserved, wrong_tag, small_disk], &req(2048), &Config::default(), &mut rng()).unwrap_err();
    let by: Vec<(String, &str)> = err.rejected.iter().map(|r| (r.hostname.clone(), r.step)).collect();
    assert_eq!(
        by,
        [("cn2".into(), "running"), ("cn3".into(), "reserved"), ("cn4".into(), "nic tags"), ("cn1".into(), "ram"), ("cn5".into(), "disk")]
    );
    let msg = err.message();
    assert!(msg.starts_with("No compute resources available: "), "{msg}");
    assert!(msg.contains("cn2 (00000000-0000-0000-0000-000000000002): server status is unknown: no heartbeat for 42 s"), "{msg}");
    assert!(
        msg.contains("cn1 (00000000-0000-0000-0000-000000000001): not enough RAM: needs 2048 MiB, 0 MiB unreserved of 4096 MiB"),
        "{msg}"
    );
    assert!(msg.contains("has no NIC with nic tag external (it has: internal)"), "{msg}");
    assert!(msg.contains("not enough disk"), "{msg}");
}

#[test]
fn a_nic_tag_whose_link_cannot_carry_the_network_keeps_vms_off_and_says_why() {
    let mut broken = server(1, 65_536);
    broken.nic_tag_problems.insert("external".into(), "link xm0 refused MTU 9000 (it has 1500)".into());
    let fine = server(2, 16_384);
    // Packing would prefer neither; the broken one is out whatever its room.
    let p = allocate(&[broken.clone(), fine], &req(2048), &Config::default(), &mut rng()).unwrap();
    assert_eq!(p.server, id(2));
    let err = allocate(&[broken.clone()], &req(2048), &Config::default(), &mut rng()).unwrap_err();
    assert_eq!(err.rejected[0].step, "nic tags");
    assert!(err.message().contains("nic tag external: link xm0 refused MTU 9000 (it has 1500)"), "{}", err.message());
    // A request that may use another tag the server carries well still fits.
    broken.nic_tags.push("admin".into());
    let mut r = req(2048);
    r.nic_tags = vec![vec!["external".into(), "admin".into()]];
    assert_eq!(allocate(&[broken], &r, &Config::default(), &mut rng()).unwrap().server, id(1));
}

#[test]
fn a_ghost_record_never_blocks_placement_and_is_named() {
    // Triton's migration ghost: {uuid, server_uuid}, everything else null.
    let mut s = server(1, 16_384);
    s.vms.push(VmUsage {
        uuid: id(66),
        owner: None,
        ram_mib: None,
        disk_mib: None,
        cap: Cap::Unknown,
        source: Source::Record,
        on_server: false,
        suspect: false,
        damaged: None,
    });
    let mut capped = req(2048);
    capped.cpu_cap = Some(100);
    let p = allocate(std::slice::from_ref(&s), &capped, &Config::default(), &mut rng()).unwrap();
    assert_eq!(p.server, id(1));
    assert_eq!(p.warnings.len(), 1);
    let w = &p.warnings[0].message;
    assert!(
        w.contains("00000000-0000-0000-0000-000000000042") && w.contains("no owner_uuid, no RAM, no cpu_cap") && w.contains("sync=true"),
        "{w}"
    );
    // Uncapped requests too.
    assert_eq!(allocate(&[s], &req(2048), &Config::default(), &mut rng()).unwrap().server, id(1));
}

#[test]
fn real_capness_mismatch_still_separates() {
    let mut s = server(1, 16_384);
    s.vms.push(vm(10, 1, 1024, Cap::Uncapped));
    let mut capped = req(1024);
    capped.cpu_cap = Some(100);
    let err = allocate(std::slice::from_ref(&s), &capped, &Config::default(), &mut rng()).unwrap_err();
    assert_eq!(err.rejected[0].step, "capness");
    assert!(err.rejected[0].reason.contains("has no cpu_cap, while the request is capped"));
    let cfg = Config { filter_capness: false, ..Config::default() };
    assert!(allocate(&[s], &capped, &cfg, &mut rng()).is_ok());
}

#[test]
fn cpu_and_overprovision_ratios() {
    let mut s = server(1, 1 << 20);
    s.cpus = 2;
    for i in 0..7 {
        s.vms.push(vm(10 + i, 1, 100, Cap::Capped(100)));
    }
    let mut r = req(100);
    r.cpu_cap = Some(100);
    // 2 CPUs × 100 × ratio 4 = 800 % of caps; 700 % used; 100 more fits, 200 does not.
    assert!(allocate(std::slice::from_ref(&s), &r, &Config::default(), &mut rng()).is_ok());
    r.cpu_cap = Some(200);
    assert_eq!(allocate(std::slice::from_ref(&s), &r, &Config::default(), &mut rng()).unwrap_err().rejected[0].step, "cpu");
    let mut s = server(2, 1024);
    assert_eq!(allocate(std::slice::from_ref(&s), &req(1500), &Config::default(), &mut rng()).unwrap_err().rejected[0].step, "ram");
    s.ratios.ram = 2.0;
    assert!(allocate(&[s], &req(1500), &Config::default(), &mut rng()).is_ok(), "RAM overprovisioned 2x");
}

#[test]
fn reservation_ratio_and_reservations_count() {
    let mut s = server(1, 10_000);
    s.reservation_ratio = 0.15;
    s.vms.push(VmUsage {
        uuid: id(5),
        owner: Some(id(1)),
        ram_mib: Some(6000),
        disk_mib: Some(0),
        cap: Cap::Uncapped,
        source: Source::Reservation,
        on_server: false,
        suspect: false,
        damaged: None,
    });
    assert!(allocate(std::slice::from_ref(&s), &req(2500), &Config::default(), &mut rng()).is_ok());
    assert_eq!(allocate(&[s], &req(2501), &Config::default(), &mut rng()).unwrap_err().rejected[0].step, "ram");
}

#[test]
fn traits_need_the_exact_key_set() {
    let mut s = server(1, 16_384);
    s.traits = json!({"ssd": true, "rack": ["a", "b"]}).as_object().unwrap().clone();
    let mut r = req(1024);
    assert_eq!(allocate(std::slice::from_ref(&s), &r, &Config::default(), &mut rng()).unwrap_err().rejected[0].step, "traits");
    r.traits = json!({"ssd": true}).as_object().unwrap().clone();
    assert!(
        allocate(std::slice::from_ref(&s), &r, &Config::default(), &mut rng()).unwrap_err().rejected[0].reason.contains("requires traits")
    );
    r.traits = json!({"ssd": true, "rack": "b"}).as_object().unwrap().clone();
    assert!(allocate(std::slice::from_ref(&s), &r, &Config::default(), &mut rng()).is_ok());
    r.traits = json!({"ssd": false, "rack": "b"}).as_object().unwrap().clone();
    assert!(allocate(&[s], &r, &Config::default(), &mut rng()).unwrap_err().rejected[0].reason.contains("ssd comparison failed"));
}

#[test]
fn pinned_servers_still_pass_hard_filters() {
    let mut a = server(1, 1024);
    a.vms.push(vm(10, 1, 1024, Cap::Uncapped));
    let b = server(2, 16_384);
    let mut r = req(512);
    r.server = Some(id(1));
    let err = allocate(&[a.clone(), b.clone()], &r, &Config::default(), &mut rng()).unwrap_err();
    assert_eq!((err.rejected[0].step, err.rejected[1].step), ("pinned", "ram"));
    r.server = Some(id(2));
    assert_eq!(allocate(&[a, b], &r, &Config::default(), &mut rng()).unwrap().server, id(2));
}

#[test]
fn locality_strict_and_soft() {
    let mut a = server(1, 16_384);
    a.vms.push(vm(100, 7, 1024, Cap::Uncapped));
    let mut b = server(2, 16_384);
    b.vms.push(vm(200, 7, 1024, Cap::Uncapped));
    let c = server(3, 16_384);
    let servers = [a, b, c];
    let mut r = req(1024);
    r.locality = Locality { strict: true, near: vec![id(200)], far: vec![] };
    assert_eq!(allocate(&servers, &r, &Config::default(), &mut rng()).unwrap().server, id(2));
    r.locality = Locality { strict: true, near: vec![], far: vec![id(100), id(200)] };
    assert_eq!(allocate(&servers, &r, &Config::default(), &mut rng()).unwrap().server, id(3));
    // Without hints, an owner's VMs spread over servers that have none of theirs yet.
    let r = req(1024);
    assert_eq!(allocate(&servers, &r, &Config::default(), &mut rng()).unwrap().server, id(3));
    // Soft far that cannot be honoured is ignored rather than failing.
    let mut r = req(1024);
    r.locality = Locality { strict: false, near: vec![], far: vec![id(100)] };
    assert!(allocate(&servers[..1], &r, &Config::default(), &mut rng()).is_ok());
}

#[test]
fn vm_limit_and_headnode_and_setup() {
    let mut s = server(1, 1 << 20);
    for i in 0..3 {
        s.vms.push(vm(10 + i, 7, 1, Cap::Uncapped));
    }
    let cfg = Config { vm_limit: 3, ..Config::default() };
    assert_eq!(allocate(std::slice::from_ref(&s), &req(1), &cfg, &mut rng()).unwrap_err().rejected[0].step, "vm count");
    let mut h = server(2, 1 << 20);
    h.headnode = true;
    assert_eq!(allocate(std::slice::from_ref(&h), &req(1), &Config::default(), &mut rng()).unwrap_err().rejected[0].step, "headnode");
    let cfg = Config { filter_headnode: false, ..Config::default() };
    assert!(allocate(&[h], &req(1), &cfg, &mut rng()).is_ok());
}

#[test]
fn randomness_spreads_ties() {
    let servers: Vec<Server> = (1..=4).map(|i| server(i, 16_384)).collect();
    let mut seen = std::collections::BTreeSet::new();
    let mut rng = rng();
    for _ in 0..200 {
        seen.insert(allocate(&servers, &req(1024), &Config::default(), &mut rng).unwrap().server);
    }
    assert_eq!(seen.len(), 4, "equal servers are all used");
}
