//! cargo-fuzz entry point for the `disk_image` target (crates/fuzz).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some(t) = nereid_fuzz::target("disk_image") {
        (t.run)(data);
    }
});
