//! cargo-fuzz entry point for the `fwrule` target (crates/fuzz).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some(t) = nereid_fuzz::target("fwrule") {
        (t.run)(data);
    }
});
