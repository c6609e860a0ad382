//! Fuzz targets for the parsers and validators that take input from outside Nereid —
//! tenants' HTTP Signature headers and SSH keys, guests' metadata-protocol lines, image
//! manifests, VM payloads, uploaded disk images, firewall rules — and the driver that runs them.
//!
//! Each target is a plain `fn(&[u8])` that must not panic on any input and asserts the
//! invariants worth asserting (round-trips where a parser has an encoder, accepted input
//! re-validating, no 5xx-class error from a validator). Two runners call the same functions:
//!
//! * [`driver`]: a stable, seeded, in-process mutational fuzzer. `tests/fuzz.rs` replays
//!   each target's corpus (`corpus/<target>/`) and saved crashes (`artifacts/`), then
//!   fuzzes it for a bounded time (`NEREID_FUZZ_SECS`, default 15 s). This is what CI runs.
//! * `fuzz/` at the repository root: cargo-fuzz (libFuzzer, coverage-guided) wrappers for
//!   longer local runs; see its README. Not part of CI.

pub mod alloc;
pub mod driver;
pub mod targets;

/// A fuzz target: its name (the corpus folder), the function, and tokens the mutator
/// splices in (field names, keywords, magic numbers).
#[derive(Clone, Copy)]
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
    pub dictionary: &'static [&'static [u8]],
    /// Inputs are JSON: half the mutations are made on the parsed document.
    pub json: bool,
}

/// Every target, in the order CI runs them.
pub const TARGETS: &[Target] = &[
    Target { name: "http_signature", run: targets::signature::run, dictionary: targets::signature::DICTIONARY, json: false },
    Target { name: "ssh_key_line", run: targets::sshkey::run_line, dictionary: targets::sshkey::DICTIONARY, json: false },
    Target { name: "ssh_key_blob", run: targets::sshkey::run_blob, dictionary: targets::sshkey::BLOB_DICTIONARY, json: false },
    Target { name: "metadata_protocol", run: targets::metadata::run, dictionary: targets::metadata::DICTIONARY, json: false },
    Target { name: "image_manifest", run: targets::image::run, dictionary: targets::image::DICTIONARY, json: true },
    Target { name: "vm_payload", run: targets::vm::run, dictionary: targets::vm::DICTIONARY, json: true },
    Target { name: "disk_image", run: targets::diskimage::run, dictionary: targets::diskimage::DICTIONARY, json: false },
    Target { name: "fwrule", run: targets::fwrule::run, dictionary: targets::fwrule::DICTIONARY, json: false },
    Target { name: "zfs_stream", run: targets::zfs_stream::run, dictionary: targets::zfs_stream::DICTIONARY, json: false },
];

thread_local! {
    static ACCEPTED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Targets call this when an input got past the parser (accepted, round-tripped), so a run
/// can report how deep its mutants reach.
pub fn note_accepted() {
    ACCEPTED.with(|a| a.set(a.get() + 1));
}

/// Inputs accepted so far on this thread (see [`note_accepted`]).
pub fn accepted() -> u64 {
    ACCEPTED.with(std::cell::Cell::get)
}

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// Where `corpus/` and `artifacts/` live (this crate's directory).
pub fn root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}
