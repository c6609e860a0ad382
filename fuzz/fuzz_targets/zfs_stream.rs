//! cargo-fuzz entry point for the `zfs_stream` target (crates/fuzz).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some(t) = nereid_fuzz::target("zfs_stream") {
        (t.run)(data);
    }
});
