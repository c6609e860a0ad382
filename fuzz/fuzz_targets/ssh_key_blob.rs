//! cargo-fuzz entry point for the `ssh_key_blob` target (crates/fuzz).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some(t) = nereid_fuzz::target("ssh_key_blob") {
        (t.run)(data);
    }
});
