//! Benchmark: one placement decision among 1,000 servers with 20 VMs each (p50/p99).
//! Numbers are printed, never asserted. `cargo bench -p nereid-alloc --bench allocate`

use std::time::{Duration, Instant};

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

fn main() {
    let mut rng = StdRng::seed_from_u64(1);
    let servers = fleet(1000, 20, &mut rng);
    let cfg = Config::default();
    let mut times: Vec<Duration> = Vec::new();
    let mut placed = 0;
    for i in 0..300 {
        let req = Request {
            vm_uuid: Uuid::new_v4(),
            owner: Uuid::from_u128(rng.random_range(1..200)),
            ram_mib: 4096,
            disk_mib: 40_960,
            vcpus: 2,
            cpu_cap: None,
            traits: Map::new(),
            nic_tags: vec![vec!["external".into()]],
            locality: if i % 10 == 0 {
                Locality { strict: false, near: vec![], far: vec![Uuid::from_u128(5 << 32)] }
            } else {
                Locality::default()
            },
            server: None,
            spread: None,
        };
        let t = Instant::now();
        let r = allocate(&servers, &req, &cfg, &mut rng);
        times.push(t.elapsed());
        placed += usize::from(r.is_ok());
    }
    times.sort();
    let p = |q: f64| times[((times.len() - 1) as f64 * q) as usize].as_secs_f64() * 1000.0;
    println!(
        "allocation among 1000 servers x 20 VMs (300 decisions, {placed} placed): p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        p(0.5),
        p(0.99),
        p(1.0)
    );
}
