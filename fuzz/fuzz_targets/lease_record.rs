//! Fuzz target `lease_record`: see `certrotd::fuzzing::lease_record`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    certrotd::fuzzing::lease_record(data);
});
