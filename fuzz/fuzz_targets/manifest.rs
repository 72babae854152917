//! Fuzz target `manifest`: see `certrotd::fuzzing::manifest`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    certrotd::fuzzing::manifest(data);
});
