#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Property-style tests of [`Fleet`] against [`allocate`] (the exact reference) over many
//! random fleets; each case's seed is printed when it fails.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use super::*;

fn id(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

fn random_vm(rng: &mut StdRng, n: u128, capped: bool) -> VmUsage {
    let damaged = rng.random_ratio(1, 30).then(|| "params is not an object".to_string());
    let ghost = rng.random_ratio(1, 30);
    VmUsage {
        uuid: id(n),
        owner: if ghost { None } else { Some(id(rng.random_range(1..6))) },
        ram_mib: if ghost { None } else { Some([512, 1024, 2048, 4096, 8192][rng.random_range(0..5)]) },
        disk_mib: if ghost { None } else { Some(rng.random_range(0..50_000)) },
        cap: if ghost {
            Cap::Unknown
        } else if capped {
            Cap::Capped([50, 100, 200][rng.random_range(0..3)])
        } else {
            Cap::Uncapped
        },
        source: [Source::Record, Source::Record, Source::Record, Source::Reservation, Source::ServerOnly][rng.random_range(0..5)],
        on_server: rng.random_bool(0.8),
        suspect: rng.random_ratio(1, 20),
        damaged,
    }
}

fn random_server(rng: &mut StdRng, n: u128) -> Server {
    let capped = rng.random_bool(0.3);
    let vms = (0..rng.random_range(0..12)).map(|j| random_vm(rng, (n << 16) + j, capped)).collect();
    let mut nic_tags = vec!["admin".to_string()];
    if rng.random_bool(0.85) {
        nic_tags.push("external".into());
    }
    let mut nic_tag_problems = std::collections::BTreeMap::new();
    if rng.random_ratio(1, 20) {
        nic_tag_problems.insert("external".to_string(), "link refused MTU 9000".to_string());
    }
    Server {
        uuid: id(n),
        hostname: format!("cn{n}"),
        setup: rng.random_ratio(19, 20),
        status: if rng.random_ratio(1, 15) { Status::Unknown { silent_secs: 90 } } else { Status::Running },
        reserved: rng.random_ratio(1, 15),
        reservoir: rng.random_ratio(1, 5),
        headnode: rng.random_ratio(1, 40),
        traits: if rng.random_ratio(1, 8) { json!({"ssd": true}).as_object().unwrap().clone() } else { Map::new() },
        nic_tags,
        nic_tag_problems,
        cpus: [2, 8, 32][rng.random_range(0..3)],
        ram_mib: [8192, 16_384, 65_536, 262_144][rng.random_range(0..4)],
        disk_mib: [100_000, 500_000][rng.random_range(0..2)],
        reservation_ratio: [0.0, 0.15][rng.random_range(0..2)],
        ratios: Ratios::default(),
        vms,
    }
}

fn random_fleet(rng: &mut StdRng) -> Vec<Server> {
    let n = rng.random_range(0..60u128);
    (1..=n).map(|i| random_server(rng, i)).collect()
}

/// A request the index walk decides.
fn common_request(rng: &mut StdRng) -> Request {
    Request {
        vm_uuid: id(1 << 100),
        owner: id(rng.random_range(1..6)),
        ram_mib: [256, 1024, 4096, 16_384, 100_000][rng.random_range(0..5)],
        disk_mib: [1024, 10_240, 200_000][rng.random_range(0..3)],
        vcpus: [1, 4][rng.random_range(0..2)],
        cpu_cap: if rng.random_bool(0.3) { Some(100) } else { None },
        traits: if rng.random_ratio(1, 8) { json!({"ssd": true}).as_object().unwrap().clone() } else { Map::new() },
        nic_tags: if rng.random_bool(0.8) { vec![vec!["external".into()]] } else { vec![] },
        locality: Locality { strict: rng.random_ratio(1, 5), near: vec![], far: vec![] },
        server: None,
        spread: if rng.random_bool(0.3) { Some(Spread::MinRam) } else { None },
    }
}

fn config(rng: &mut StdRng) -> Config {
    Config { vm_limit: [224, 6][rng.random_range(0..2)], filter_large_servers: rng.random_bool(0.8), ..Config::default() }
}

/// The reference over the fleet's servers in its order (by UUID).
fn reference(fleet: &Fleet, req: &Request, cfg: &Config, seed: u64) -> Result<Placement, NoFit> {
    let servers: Vec<Server> = fleet.servers().cloned().collect();
    allocate(&servers, req, cfg, &mut StdRng::seed_from_u64(seed))
}

#[test]
fn the_index_walk_places_where_allocate_does_and_fails_exactly_as_it_does() {
    let (mut placed, mut failed) = (0, 0);
    for seed in 0..600u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let fleet = Fleet::from_servers(random_fleet(&mut rng));
        let cfg = config(&mut rng);
        for k in 0..4u64 {
            let req = common_request(&mut rng);
            let want = reference(&fleet, &req, &cfg, seed * 10 + k);
            let got = fleet.allocate(&req, &cfg, &mut StdRng::seed_from_u64(seed * 10 + k));
            match (want, got) {
                (Ok(_), Ok(p)) => {
                    placed += 1;
                    let chosen = fleet.get(&p.server).unwrap();
                    assert_eq!(fleet.check(chosen, &req, &cfg), Ok(()), "seed {seed}/{k}: the chosen server fails a hard filter");
                    let non_reservoir_fits = fleet.servers().any(|s| !s.reservoir && fleet.check(s, &req, &cfg).is_ok());
                    assert!(!(chosen.reservoir && non_reservoir_fits), "seed {seed}/{k}: a reservoir server while another fits");
                    for w in server_warnings(chosen) {
                        assert!(p.warnings.contains(&w), "seed {seed}/{k}: the chosen server's warning {w:?} is missing");
                    }
                    assert_eq!(p.steps.first().map(|s| s.step), Some("received"), "seed {seed}/{k}");
                    assert_eq!(p.steps.last().map(|s| s.step), Some("pick"), "seed {seed}/{k}");
                    for r in &p.rejected {
                        let s = fleet.get(&r.server).unwrap();
                        assert_eq!(fleet.check(s, &req, &cfg).unwrap_err(), *r, "seed {seed}/{k}: a rejection that is not the server's");
                    }
                }
                (Err(want), Err(got)) => {
                    failed += 1;
                    assert_eq!(want, got, "seed {seed}/{k}: NoFit differs");
                }
                (want, got) => panic!("seed {seed}/{k}: allocate gave {want:?}, the fleet {got:?}"),
            }
        }
    }
    // The generator exercises both outcomes.
    assert!(placed > 300 && failed > 100, "placed {placed}, failed {failed}");
}

#[test]
fn uncommon_requests_give_exactly_allocates_result() {
    for seed in 0..300u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let servers = random_fleet(&mut rng);
        let fleet = Fleet::from_servers(servers.clone());
        let cfg = config(&mut rng);
        let mut req = common_request(&mut rng);
        let some_vm = servers.iter().flat_map(|s| s.vms.iter()).map(|v| v.uuid).next().unwrap_or(id(3));
        match seed % 5 {
            0 => req.server = Some(id(rng.random_range(1..40))),
            1 => req.locality.near = vec![some_vm],
            2 => req.locality.far = vec![some_vm],
            3 => req.spread = Some(Spread::Random),
            _ => req.spread = Some(Spread::MinOwner),
        }
        let want = reference(&fleet, &req, &cfg, seed);
        let got = fleet.allocate(&req, &cfg, &mut StdRng::seed_from_u64(seed));
        assert_eq!(want, got, "seed {seed}");
    }
}

#[test]
fn after_upserts_removes_and_status_changes_the_fleet_is_as_if_built_from_scratch() {
    for seed in 0..200u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut fleet = Fleet::from_servers(random_fleet(&mut rng));
        for step in 0..30u128 {
            let n = rng.random_range(1..70u128);
            match rng.random_range(0..4) {
                0 => fleet.upsert(random_server(&mut rng, n)),
                1 => {
                    fleet.remove(&id(n));
                }
                2 => fleet.set_status(&id(n), Status::Unknown { silent_secs: 60 }),
                _ => fleet.set_status(&id(n), Status::Running),
            }
            // As the headnode does: the chosen server comes back with the new VM counted.
            let req = common_request(&mut rng);
            let cfg = Config::default();
            if let Ok(p) = fleet.allocate(&req, &cfg, &mut rng) {
                let mut s = fleet.get(&p.server).unwrap().clone();
                s.vms.push(VmUsage {
                    uuid: id((1 << 90) + step),
                    owner: Some(req.owner),
                    ram_mib: Some(req.ram_mib),
                    disk_mib: Some(req.disk_mib),
                    cap: req.cpu_cap.map_or(Cap::Uncapped, Cap::Capped),
                    source: Source::Reservation,
                    on_server: false,
                    suspect: false,
                    damaged: None,
                });
                fleet.upsert(s);
            }
        }
        let fresh = Fleet::from_servers(fleet.servers().cloned().collect());
        assert_eq!(fleet.placeable, fresh.placeable, "seed {seed}: the index differs");
        for k in 0..10u64 {
            let req = common_request(&mut rng);
            let cfg = config(&mut rng);
            let a = fleet.allocate(&req, &cfg, &mut StdRng::seed_from_u64(k));
            let b = fresh.allocate(&req, &cfg, &mut StdRng::seed_from_u64(k));
            assert_eq!(a, b, "seed {seed}/{k}");
        }
    }
}

#[test]
fn the_walk_prefers_the_tightest_servers_and_sets_the_emptiest_aside() {
    // 20 equal servers with different loads: packing picks among the tightest that fit.
    let servers: Vec<Server> = (1..=20u128)
        .map(|i| {
            let mut s = random_server(&mut StdRng::seed_from_u64(0), i);
            (s.setup, s.status, s.reserved, s.reservoir, s.headnode) = (true, Status::Running, false, false, false);
            s.traits = Map::new();
            s.nic_tags = vec!["external".into()];
            s.nic_tag_problems.clear();
            s.ram_mib = 65_536;
            s.reservation_ratio = 0.0;
            s.vms = vec![VmUsage {
                uuid: id(1000 + i),
                owner: Some(id(99)),
                ram_mib: Some(3000 * i as u64),
                disk_mib: Some(0),
                cap: Cap::Uncapped,
                source: Source::Record,
                on_server: true,
                suspect: false,
                damaged: None,
            }];
            s
        })
        .collect();
    let fleet = Fleet::from_servers(servers);
    let mut req = common_request(&mut StdRng::seed_from_u64(1));
    (req.ram_mib, req.disk_mib, req.cpu_cap, req.traits, req.locality) = (10_000, 1024, None, Map::new(), Locality::default());
    req.nic_tags = vec![vec!["external".into()]];
    let p = fleet.allocate(&req, &Config::default(), &mut StdRng::seed_from_u64(2)).unwrap();
    // 65,536 − 3000·i ≥ 10,000 ⇔ i ≤ 18: server 18 is the tightest that fits.
    assert_eq!(p.server, id(18));
    let examined = p.steps.iter().find(|s| s.step == "examined").unwrap().remaining;
    // Servers 18 down to 4: the walk stops at the emptiest 15 % (servers 1–3, set aside),
    // having found candidates below them.
    assert_eq!(examined, 15, "{:?}", p.steps);
    assert_eq!(p.steps.iter().find(|s| s.step == "large servers").unwrap().remaining, 15, "{:?}", p.steps);
    // A request only the emptiest fit goes there all the same.
    req.ram_mib = 60_000;
    assert_eq!(fleet.allocate(&req, &Config::default(), &mut StdRng::seed_from_u64(2)).unwrap().server, id(1));
    // check() sees a fresh copy without the fleet's help.
    let mut full = fleet.get(&id(18)).unwrap().clone();
    full.vms[0].ram_mib = Some(60_000);
    assert_eq!(fleet.check(&full, &req, &Config::default()).unwrap_err().step, "ram");
}
