//! Fuzz target `private_key`: see `certrotd::fuzzing::private_key`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    certrotd::fuzzing::private_key(data);
});
