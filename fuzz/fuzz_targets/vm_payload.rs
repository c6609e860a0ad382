//! cargo-fuzz entry point for the `vm_payload` target (crates/fuzz).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some(t) = nereid_fuzz::target("vm_payload") {
        (t.run)(data);
    }
});
