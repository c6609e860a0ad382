//! Benchmark: one placement decision among 1,000 servers with 20 VMs each (p50/p99) by
//! [`allocate`], then by a kept [`Fleet`] among 1,000 and 10,000 servers, updated after each
//! decision by an upsert of the chosen server (as the headnode does), and one upsert's time.
//! Numbers are printed, never asserted. `cargo bench -p nereid-alloc --bench allocate`

use std::time::{Duration, Instant};

use nereid_alloc::Fleet;
use nereid_alloc::{Cap, Config, Locality, Ratios, Request, Server, Source, Status, VmUsage, allocate};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Map;
use uuid::Uuid;

fn fleet(servers: usize, vms: usize, rng: &mut StdRng) -> Vec<Server> {
    (0..servers)
        .map(|i| Server {
            uuid: Uuid::from_u128(i as u128 + 1),
            hostname: format!("cn{i}"),
            setup: true,
            status: if i % 97 == 0 { Status::Unknown { silent_secs: 30 } } else { Status::Running },
            reserved: i % 53 == 0,
            reservoir: false,
            headnode: false,
            traits: Map::new(),
            nic_tags: vec!["admin".into(), "external".into()],
            nic_tag_problems: Default::default(),
            cpus: 32,
            ram_mib: 262_144,
            disk_mib: 4_000_000,
            reservation_ratio: 0.15,
            ratios: Ratios::default(),
            vms: (0..vms)
                .map(|j| VmUsage {
                    uuid: Uuid::from_u128(((i * 1000 + j) as u128) << 32),
                    owner: Some(Uuid::from_u128(rng.random_range(1..200))),
                    ram_mib: Some([1024, 2048, 4096, 8192][rng.random_range(0..4)]),
                    disk_mib: Some(40_960),
                    cap: Cap::Uncapped,
                    source: Source::Record,
                    on_server: true,
                    suspect: false,
                    damaged: None,
                })
                .collect(),
        })
        .collect()
}

fn request(i: usize, rng: &mut StdRng) -> Request {
    Request {
        vm_uuid: Uuid::new_v4(),
        owner: Uuid::from_u128(rng.random_range(1..200)),
        ram_mib: 4096,
        disk_mib: 40_960,
        vcpus: 2,
        cpu_cap: None,
        traits: Map::new(),
        nic_tags: vec![vec!["external".into()]],
        locality: if i.is_multiple_of(10) {
            Locality { strict: false, near: vec![], far: vec![Uuid::from_u128(5 << 32)] }
        } else {
            Locality::default()
        },
        server: None,
        spread: None,
    }
}

/// p50, p99 and max in ms.
fn percentiles(times: &mut [Duration]) -> (f64, f64, f64) {
    times.sort();
    let p = |q| nereid_types::bench::percentile_ms(times, q);
    (p(0.5), p(0.99), p(1.0))
}

/// Decisions by a kept fleet, each followed by an upsert of the chosen server with the new
/// VM counted (a reservation). `with_hints`: every tenth request has a soft `far` hint (the
/// exact path over every server), as in the `allocate` run.
fn fleet_run(servers: usize, decisions: usize, with_hints: bool, rng: &mut StdRng) {
    let mut fleet = Fleet::from_servers(fleet(servers, 20, rng));
    let cfg = Config::default();
    let (mut times, mut upserts) = (Vec::new(), Vec::new());
    let mut placed = 0;
    for i in 0..decisions {
        let req = request(if with_hints { i } else { 1 }, rng);
        let t = Instant::now();
        let r = fleet.allocate(&req, &cfg, rng);
        times.push(t.elapsed());
        if let Ok(p) = r {
            placed += 1;
            let Some(mut s) = fleet.get(&p.server).cloned() else { continue };
            s.vms.push(VmUsage {
                uuid: req.vm_uuid,
                owner: Some(req.owner),
                ram_mib: Some(req.ram_mib),
                disk_mib: Some(req.disk_mib),
                cap: Cap::Uncapped,
                source: Source::Reservation,
                on_server: false,
                suspect: false,
                damaged: None,
            });
            let t = Instant::now();
            fleet.upsert(s);
            upserts.push(t.elapsed());
        }
    }
    let (p50, p99, max) = percentiles(&mut times);
    let (u50, u99, _) = percentiles(&mut upserts);
    let what = if with_hints { "1 in 10 with a far hint (exact path)" } else { "common case" };
    println!(
        "Fleet::allocate among {servers} servers x 20 VMs, {what} ({decisions} decisions, {placed} placed): p50 {p50:.3} ms  p99 {p99:.3} ms  max {max:.3} ms;  upsert p50 {u50:.4} ms  p99 {u99:.4} ms"
    );
}

fn main() {
    let mut rng = StdRng::seed_from_u64(1);
    let servers = fleet(1000, 20, &mut rng);
    let cfg = Config::default();
    let mut times: Vec<Duration> = Vec::new();
    let mut placed = 0;
    for i in 0..300 {
        let req = request(i, &mut rng);
        let t = Instant::now();
        let r = allocate(&servers, &req, &cfg, &mut rng);
        times.push(t.elapsed());
        placed += usize::from(r.is_ok());
    }
    let (p50, p99, max) = percentiles(&mut times);
    println!("allocation among 1000 servers x 20 VMs (300 decisions, {placed} placed): p50 {p50:.2} ms  p99 {p99:.2} ms  max {max:.2} ms");
    fleet_run(1000, 3000, false, &mut rng);
    fleet_run(10_000, 3000, false, &mut rng);
    fleet_run(10_000, 3000, true, &mut rng);
}
