//! Runs every fuzz target the way CI does: replay its corpus and saved artifacts, then
//! fuzz it from the corpus for a bounded time. `NEREID_FUZZ_SECS` (default 15) sets the
//! time per target, `NEREID_FUZZ_SEED` the seed (default: a fixed one per target, so a
//! CI failure reproduces; set it to explore further). A failure names the saved input.

#![allow(clippy::expect_used)]

use std::time::Duration;

use nereid_fuzz::driver::{self, PeakMeter};

#[global_allocator]
static ALLOC: nereid_fuzz::alloc::Counting = nereid_fuzz::alloc::Counting;

const METER: Option<PeakMeter> = Some(nereid_fuzz::alloc::peak_during);

fn budget() -> Duration {
    let secs = std::env::var("NEREID_FUZZ_SECS").ok().map(|s| s.parse::<f64>().expect("NEREID_FUZZ_SECS is a number of seconds"));
    Duration::from_secs_f64(secs.unwrap_or(15.0))
}

fn seed(name: &str) -> u64 {
    match std::env::var("NEREID_FUZZ_SEED") {
        Ok(s) => {
            let s = s.trim_start_matches("0x");
            u64::from_str_radix(s, 16).expect("NEREID_FUZZ_SEED is hex")
        }
        Err(_) => name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)),
    }
}

fn fuzz(name: &str) {
    let target = nereid_fuzz::target(name).expect("a known target");
    let root = nereid_fuzz::root();
    let replayed = driver::replay(&root, target, METER).unwrap_or_else(|e| panic!("replaying {name}: {e}"));
    let seed = seed(name);
    let before = nereid_fuzz::accepted();
    let report = driver::fuzz(&root, target, seed, budget(), METER).unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "{name}: replayed {replayed} inputs, then {} mutants in {:.1} s ({:.0}/s, {} accepted by the parser), seed {seed:#x}",
        report.iterations,
        report.elapsed.as_secs_f64(),
        report.iterations as f64 / report.elapsed.as_secs_f64().max(1e-9),
        nereid_fuzz::accepted() - before,
    );
}

#[test]
fn http_signature() {
    fuzz("http_signature");
}

#[test]
fn ssh_key_line() {
    fuzz("ssh_key_line");
}

#[test]
fn ssh_key_blob() {
    fuzz("ssh_key_blob");
}

#[test]
fn metadata_protocol() {
    fuzz("metadata_protocol");
}

#[test]
fn image_manifest() {
    fuzz("image_manifest");
}

#[test]
fn vm_payload() {
    fuzz("vm_payload");
}

#[test]
fn disk_image() {
    fuzz("disk_image");
}

#[test]
fn fwrule() {
    fuzz("fwrule");
}

#[test]
fn zfs_stream() {
    fuzz("zfs_stream");
}

#[test]
fn every_target_has_a_test_and_a_corpus() {
    let tests = [
        "http_signature",
        "ssh_key_line",
        "ssh_key_blob",
        "metadata_protocol",
        "image_manifest",
        "vm_payload",
        "disk_image",
        "fwrule",
        "zfs_stream",
    ];
    let names: Vec<&str> = nereid_fuzz::TARGETS.iter().map(|t| t.name).collect();
    assert_eq!(names, tests);
    for t in nereid_fuzz::TARGETS {
        let n = driver::corpus(&nereid_fuzz::root(), t.name).unwrap_or_default().len();
        assert!(n >= 3, "corpus/{} has {n} inputs; seed it from real ones", t.name);
    }
}
