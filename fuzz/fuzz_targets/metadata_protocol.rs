//! cargo-fuzz entry point for the `metadata_protocol` target (crates/fuzz).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some(t) = nereid_fuzz::target("metadata_protocol") {
        (t.run)(data);
    }
});
