//! Fuzz target `duration`: see `certrotd::fuzzing::duration`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    certrotd::fuzzing::duration(data);
});
