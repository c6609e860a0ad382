//! cargo-fuzz entry point for the `http_signature` target (crates/fuzz).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some(t) = nereid_fuzz::target("http_signature") {
        (t.run)(data);
    }
});
