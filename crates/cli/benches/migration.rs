//! Benchmark: live migration of a running guest with 512 MiB of RAM (128 MiB of it written
//! after boot) between two qemu backends on this machine, through a plain relay between
//! their UNIX sockets (the flow of the `qemu` test binary's `migrate_backend`): the time
//! from the disks' mirror start to the guest running on the target, the mirror's share,
//! the bytes sent, and the guest's pause at the switch. Guests run under TCG. Numbers are
//! printed, never asserted (the flow's own checks still hold: the guest kept running).
//!
//! `cargo bench -p nereid --bench migration` (`NEREID_BENCH_RAM_MIB`, `NEREID_BENCH_FILL_MIB`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/qemu/migrate_backend.rs"]
mod migrate_backend;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let (ram, fill) = (env("NEREID_BENCH_RAM_MIB", 512), env("NEREID_BENCH_FILL_MIB", 128));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap();
    let r = rt.block_on(migrate_backend::live_migration(ram, fill, false));
    println!("live migration of a running guest ({ram} MiB RAM, {fill} MiB written), TCG, one machine:");
    println!("  total (mirror start → running on the target): {:.2} s", r.total.as_secs_f64());
    println!("  disk mirror in step after:                    {:.2} s", r.mirror.as_secs_f64());
    println!("  RAM sent by QEMU:                             {} MiB", r.ram_bytes >> 20);
    println!("  bytes through the relay (disks + RAM):        {} MiB", r.relay_bytes >> 20);
    println!("  guest paused at the switch:                   {} ms", r.pause_ms);
}
