//! Fuzz target `pem`: see `certrotd::fuzzing::pem`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    certrotd::fuzzing::pem(data);
});
