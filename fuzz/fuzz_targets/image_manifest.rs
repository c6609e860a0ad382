//! cargo-fuzz entry point for the `image_manifest` target (crates/fuzz).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some(t) = nereid_fuzz::target("image_manifest") {
        (t.run)(data);
    }
});
