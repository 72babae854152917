//! Fuzz target `window`: see `certrotd::fuzzing::window`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    certrotd::fuzzing::window(data);
});
