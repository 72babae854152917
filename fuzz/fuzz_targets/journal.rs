//! Fuzz target `journal`: see `certrotd::fuzzing::journal`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    certrotd::fuzzing::journal(data);
});
