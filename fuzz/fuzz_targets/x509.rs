//! Fuzz target `x509`: see `certrotd::fuzzing::x509`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    certrotd::fuzzing::x509(data);
});
