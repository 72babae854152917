//! Fuzz target `control`: see `certrotd::fuzzing::control`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    certrotd::fuzzing::control(data);
});
