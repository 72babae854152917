//! Fuzz target `cfssl_answer`: see `certrotd::fuzzing::cfssl_answer`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    certrotd::fuzzing::cfssl_answer(data);
});
